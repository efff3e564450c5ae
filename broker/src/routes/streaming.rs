//! Response bodies written by blocking code (WADO-RS retrieves, research exports): a
//! bounded channel between a [`ChannelWriter`] on a blocking task and the response body.
//!
//! Why a channel with a small depth: a slow client then slows the producer (decryption,
//! re-identification, the research split) instead of the response growing in memory.
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use tokio::sync::mpsc;

/// Bytes gathered before a chunk goes to the client.
pub(super) const CHUNK: usize = 64 * 1024;

/// A body and the writer that feeds it; at most `depth` chunks wait between them.
pub(super) fn channel(depth: usize) -> (ChannelWriter, Body) {
    let (tx, rx) = mpsc::channel(depth.max(1));
    (ChannelWriter { tx, buf: Vec::with_capacity(CHUNK) }, Body::from_stream(ChannelBody(rx)))
}

/// The receiving end of a streamed response.
struct ChannelBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures_core::Stream for ChannelBody {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// The sending end, for blocking code: gathers writes into [`CHUNK`]s and waits for room
/// in the channel. Must only be used from a blocking thread.
pub(super) struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client closed the connection"))
    }

    /// The client has gone: nothing written will reach it.
    pub(super) fn client_gone(&self) -> bool {
        self.tx.is_closed()
    }

    /// End the body with an error: the client sees an aborted response, not a short one.
    /// `message` ends up in the server's connection error, never sent as content.
    pub(super) fn abort(self, message: &'static str) {
        let _ = self.tx.blocking_send(Err(std::io::Error::other(message)));
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        // Take at most what fills the current chunk, so no chunk exceeds CHUNK however
        // large the caller's write.
        let room = CHUNK.saturating_sub(self.buf.len()).max(1);
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_channel_writer_chunks_and_reports_a_closed_peer() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut w = ChannelWriter { tx, buf: Vec::new() };
        w.write_all(&vec![7u8; CHUNK * 2 + 10]).unwrap();
        w.flush().unwrap();
        let mut sizes = Vec::new();
        while let Ok(Ok(b)) = rx.try_recv() {
            sizes.push(b.len());
        }
        assert_eq!(sizes, vec![CHUNK, CHUNK, 10]);
        assert!(!w.client_gone());
        drop(rx);
        assert!(w.client_gone());
        w.write_all(&vec![1u8; CHUNK]).expect_err("the peer is gone");
    }
}
