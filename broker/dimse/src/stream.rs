//! The bridge between the async PDU loop and the sink's blocking `store`: a bounded channel of
//! P-DATA fragments, read through `std::io::Read` on tokio's blocking pool.
//!
//! The channel's depth is what bounds memory: the PDU loop stops reading the socket while the
//! sink is behind, so a 2 GB instance costs a few PDUs of RAM, not 2 GB. The end of an instance
//! is an explicit message; a channel that closes without it means the association broke off,
//! and the reader reports an error so the sink cannot mistake a truncated instance for a whole one.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::pdata::Fragment;

/// One message from the PDU loop to the reader.
pub(crate) enum Chunk {
    /// A data set fragment, still in its PDU buffer (dropping it returns the buffer).
    Data(Fragment),
    /// The last fragment has been sent: the instance is complete.
    End,
}

/// Creates the feeding side and the `Read` side. `first` (the PS3.10 header) is read before
/// any fragment. The flag turns true once the reader has returned end-of-stream after `End`.
pub(crate) fn channel(first: Vec<u8>, depth: usize) -> (mpsc::Sender<Chunk>, ChunkReader, Arc<AtomicBool>) {
    let (tx, rx) = mpsc::channel(depth.max(1));
    let finished = Arc::new(AtomicBool::new(false));
    let reader = ChunkReader { rx, current: Piece::Header(first), pos: 0, ended: false, finished: finished.clone() };
    (tx, reader, finished)
}

/// What the reader is reading: the header it was made with, then each fragment in turn.
enum Piece {
    Header(Vec<u8>),
    Fragment(Fragment),
}

impl Piece {
    fn as_slice(&self) -> &[u8] {
        match self {
            Piece::Header(h) => h,
            Piece::Fragment(f) => f.as_slice(),
        }
    }
}

/// `Read` over the fragments of one instance. Must only be read from a blocking thread.
pub(crate) struct ChunkReader {
    rx: mpsc::Receiver<Chunk>,
    current: Piece,
    pos: usize,
    ended: bool,
    finished: Arc<AtomicBool>,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let available = self.current.as_slice().get(self.pos..).unwrap_or_default();
            if !available.is_empty() {
                let n = available.len().min(buf.len());
                buf[..n].copy_from_slice(&available[..n]);
                self.pos += n;
                return Ok(n);
            }
            if self.ended {
                self.finished.store(true, Ordering::Release);
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Chunk::Data(data)) => {
                    self.current = Piece::Fragment(data);
                    self.pos = 0;
                }
                Some(Chunk::End) => self.ended = true,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the DICOM association ended before the instance was complete; discard it",
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_header_then_fragments_then_reports_completion() {
        let (tx, mut reader, finished) = channel(b"HEAD".to_vec(), 2);
        let feeder = std::thread::spawn(move || {
            for part in [&b"ab"[..], b"", b"cde"] {
                tx.blocking_send(Chunk::Data(Fragment::of(part))).unwrap();
            }
            tx.blocking_send(Chunk::End).unwrap();
        });
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        feeder.join().unwrap();
        assert_eq!(out, b"HEADabcde");
        assert!(finished.load(Ordering::Acquire));
    }

    #[test]
    fn fail_a_stream_cut_off_before_its_end_is_an_error() {
        let (tx, mut reader, finished) = channel(b"HEAD".to_vec(), 2);
        tx.blocking_send(Chunk::Data(Fragment::of(b"partial"))).unwrap();
        drop(tx);
        let mut out = Vec::new();
        let err = reader.read_to_end(&mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(!finished.load(Ordering::Acquire));
    }
}
