//! The two files of a log directory and their record framing (see `FORMAT.md`).
//!
//! `entries.log`: a header line, then one record per leaf:
//! `u32be len | u64be leaf index | entry bytes | SHA-256(0x00 || entry bytes)`.
//! The trailing hash is the Merkle leaf hash itself, so a record checks its own integrity
//! and the tree is rebuilt without hashing twice.
//!
//! `checkpoints.log`: a header line, then one record per checkpoint:
//! `u32be len | u64be sequence number | signed note | SHA-256(u64be seq || note)`.
//!
//! Both the log (on open) and the auditor (verifying a directory) read files with the
//! same [`RecordReader`], which stops at the first record that is not intact and says why.
use std::io::{BufReader, Read};

use sha2::{Digest, Sha256};

use crate::merkle::{leaf_hash, Hash};

pub(crate) const ENTRIES_FILE: &str = "entries.log";
pub(crate) const CHECKPOINTS_FILE: &str = "checkpoints.log";
pub(crate) const META_FILE: &str = "log.json";
pub(crate) const LOCK_FILE: &str = "LOCK";
pub(crate) const ENTRIES_HEADER: &[u8] = b"CLEAVE-AUDIT-ENTRIES/1\n";
pub(crate) const CHECKPOINTS_HEADER: &[u8] = b"CLEAVE-AUDIT-CHECKPOINTS/1\n";
pub(crate) const RECORD_OVERHEAD: u64 = 4 + 8 + 32;
pub(crate) const MAX_RECORD_PAYLOAD: u32 = 64 * 1024;

/// Which file a reader reads; decides the trailing hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    Entries,
    Checkpoints,
}

impl FileKind {
    pub(crate) fn header(self) -> &'static [u8] {
        match self {
            FileKind::Entries => ENTRIES_HEADER,
            FileKind::Checkpoints => CHECKPOINTS_HEADER,
        }
    }

    pub(crate) fn record_hash(self, seq: u64, payload: &[u8]) -> Hash {
        match self {
            FileKind::Entries => leaf_hash(payload),
            FileKind::Checkpoints => {
                let mut h = Sha256::new();
                h.update(seq.to_be_bytes());
                h.update(payload);
                h.finalize().into()
            }
        }
    }
}

/// Encode one record.
pub(crate) fn encode_record(kind: FileKind, seq: u64, payload: &[u8], out: &mut Vec<u8>) -> Hash {
    let hash = kind.record_hash(seq, payload);
    encode_record_hashed(seq, payload, &hash, out);
    hash
}

/// Encode one record whose trailing hash the caller already computed (entries: the leaf
/// hash, which appenders compute on their own threads so the writer only copies bytes).
pub(crate) fn encode_record_hashed(seq: u64, payload: &[u8], hash: &Hash, out: &mut Vec<u8>) {
    // Invariant: payloads are checked against MAX_RECORD_PAYLOAD (64 KiB) before encoding.
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(hash);
}

/// One intact record.
#[derive(Debug)]
pub(crate) struct Record {
    /// Byte offset of the record in the file.
    pub offset: u64,
    pub seq: u64,
    pub payload: Vec<u8>,
    pub hash: Hash,
}

/// Why reading stopped before the end of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Damage {
    /// The file ends inside this record: a torn write, or a truncation.
    Incomplete,
    /// The record is complete but its hash does not match its bytes.
    HashMismatch,
    /// The record's sequence number is not the next one: a record was removed or moved.
    WrongSequence { found: u64 },
    /// The length field is impossible.
    BadLength,
}

impl Damage {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Damage::Incomplete => "the file ends inside the record",
            Damage::HashMismatch => "the record's bytes do not match its hash",
            Damage::WrongSequence { .. } => "the record is out of sequence",
            Damage::BadLength => "the record's length field is impossible",
        }
    }
}

/// A stop: where and why, and whether the damaged record is the last thing in the file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stop {
    pub seq: u64,
    pub offset: u64,
    pub damage: Damage,
    /// True when nothing follows the damaged record (the shape a crash leaves).
    pub at_end: bool,
}

impl Stop {
    /// The error for a stop that is not a torn tail to cut: `file` names the file read.
    pub(crate) fn corrupt(&self, file: &'static str) -> crate::Error {
        crate::Error::Corrupt { file, index: self.seq, what: self.damage.describe() }
    }
}

/// Streams records of one file, checking framing, sequence and hash.
pub(crate) struct RecordReader<R: Read> {
    inner: BufReader<R>,
    kind: FileKind,
    offset: u64,
    next_seq: u64,
    stopped: bool,
}

/// Read exactly `buf.len()` bytes or report how many were available before EOF.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

pub(crate) enum Next {
    Record(Record),
    Stop(Stop),
    End,
}

impl<R: Read> RecordReader<R> {
    /// Start after checking the header; `Ok(None)` when the header is not ours.
    pub(crate) fn new(reader: R, kind: FileKind) -> std::io::Result<Option<Self>> {
        let mut inner = BufReader::with_capacity(1 << 16, reader);
        let header = kind.header();
        let mut buf = vec![0u8; header.len()];
        let n = read_full(&mut inner, &mut buf)?;
        if n != header.len() || buf != header {
            return Ok(None);
        }
        Ok(Some(RecordReader { inner, kind, offset: header.len() as u64, next_seq: 0, stopped: false }))
    }

    /// Start at byte `offset`, expecting record `seq` there (the header is not read again).
    pub(crate) fn resume(mut reader: R, kind: FileKind, offset: u64, seq: u64) -> std::io::Result<Self>
    where
        R: std::io::Seek,
    {
        reader.seek(std::io::SeekFrom::Start(offset))?;
        Ok(RecordReader { inner: BufReader::with_capacity(1 << 16, reader), kind, offset, next_seq: seq, stopped: false })
    }

    pub(crate) fn next_record(&mut self) -> std::io::Result<Next> {
        if self.stopped {
            return Ok(Next::End);
        }
        let seq = self.next_seq;
        let offset = self.offset;
        let stop = |me: &mut Self, damage: Damage, at_end: bool| {
            me.stopped = true;
            Ok(Next::Stop(Stop { seq, offset, damage, at_end }))
        };
        let mut head = [0u8; 12];
        let n = read_full(&mut self.inner, &mut head)?;
        if n == 0 {
            self.stopped = true;
            return Ok(Next::End);
        }
        if n < head.len() {
            return stop(self, Damage::Incomplete, true);
        }
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let found = u64::from_be_bytes([head[4], head[5], head[6], head[7], head[8], head[9], head[10], head[11]]);
        if len > MAX_RECORD_PAYLOAD {
            let at_end = !self.more_peek()?;
            return stop(self, Damage::BadLength, at_end);
        }
        let mut body = vec![0u8; len as usize + 32];
        let got = read_full(&mut self.inner, &mut body)?;
        if got < body.len() {
            return stop(self, Damage::Incomplete, true);
        }
        let at_end = !self.more_peek()?;
        let mut stored = [0u8; 32];
        stored.copy_from_slice(&body[len as usize..]);
        body.truncate(len as usize);
        if self.kind.record_hash(found, &body) != stored {
            return stop(self, Damage::HashMismatch, at_end);
        }
        if found != seq {
            return stop(self, Damage::WrongSequence { found }, at_end);
        }
        self.offset += RECORD_OVERHEAD + u64::from(len);
        self.next_seq += 1;
        Ok(Next::Record(Record { offset, seq, payload: body, hash: stored }))
    }

    /// Whether more bytes follow, without consuming them.
    fn more_peek(&mut self) -> std::io::Result<bool> {
        use std::io::BufRead;
        Ok(!self.inner.fill_buf()?.is_empty())
    }
}
