//! The audit log on disk: group-committed appends, signed checkpoints, reading and proofs.
//!
//! One writer thread owns the entries file. `append` hands it the encoded entry and waits;
//! the thread takes every request that queued while the previous batch was being synced,
//! writes them with one `write`, makes them durable with one `fdatasync`, publishes them
//! to readers, and only then answers each caller with its leaf index. So many concurrent
//! appenders share one fsync, and an index returned by `append` survives `kill -9` and
//! power loss. Readers never see an entry that is not yet durable.
//!
//! Crash recovery on open (the rule, also in `FORMAT.md`): reading stops at the first
//! record that is not intact. If that record lies below the newest signed checkpoint, the
//! log refuses to open: a signed entry was lost or altered and an auditor must look. If it
//! lies after the newest checkpoint, the file is cut at that record. Under the crash model
//! (the kernel keeps completed writes on `kill -9`; fsync'd bytes survive power loss) that
//! record and everything after it belong to the one batch whose fsync had not returned, so
//! none was acknowledged. The cut is itself recorded as a `log-recovery` entry.
//!
//! Opening reads only the entries after the tree files' mark (`nodes.rs`); a background
//! thread then checks everything before it, and a history found altered stops the log.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cleave_keys::{durable, Key32};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{check_origin, note_text, Checkpoint, CheckpointSigner, CheckpointVerifier, SignedCheckpoint};
use crate::entry::{Actor, ActorKind, Entry, Operation, Outcome, OutcomeClass, ResourceRef, Timestamp};
use crate::index::{self, IndexReader, RefIndex};
use crate::merkle::{consistency_proof_of, inclusion_proof_of, root_of, Hash};
use crate::nodes::{Mark, Peaks, Streams, Syncer, TreeFiles};
use crate::pending::{Completion, PendingAppend, Responder};
use crate::store::{self, encode_record, encode_record_hashed, Damage, FileKind, Next, RecordReader, RECORD_OVERHEAD};
use crate::Error;

const META_FORMAT: &str = "cleave-audit/1";
/// A batch never holds more bytes than this, so the unsynced tail is bounded.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// A listing examines at most this many entries per call, then returns a cursor.
const MAX_SCAN: u64 = 100_000;
/// Page size when a query does not say, and the most a page holds.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// The most entries one `append_batch` call may carry.
const MAX_BATCH_CALL: usize = 65_536;

/// How a log is opened.
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// The log's origin, e.g. `hospital.example/cleave-audit`: the first line of every
    /// checkpoint and the name of the signing key. Fixed for a directory.
    pub origin: String,
    /// Issue a checkpoint this often when there are new entries (`None`: only on demand).
    pub checkpoint_interval: Option<Duration>,
    /// Also issue one whenever this many entries arrived since the last.
    pub checkpoint_every_entries: Option<u64>,
    /// At most this many entries share one fsync.
    pub max_batch: usize,
}

impl LogOptions {
    /// Defaults: a checkpoint every 10 seconds when something was appended, and every
    /// 10 000 entries; batches of up to 4096 entries.
    pub fn new(origin: impl Into<String>) -> Self {
        LogOptions {
            origin: origin.into(),
            checkpoint_interval: Some(Duration::from_secs(10)),
            checkpoint_every_entries: Some(10_000),
            max_batch: 4096,
        }
    }
}

/// What opening the log had to repair after a crash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// `"entries"` or `"checkpoints"`.
    pub file: &'static str,
    /// The first record cut (leaf index or checkpoint number).
    pub first_dropped: u64,
    /// Bytes cut from the end of the file.
    pub dropped_bytes: u64,
}

/// An entry as stored: its leaf index and canonical bytes (what auditors verify).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEntry {
    pub index: u64,
    pub bytes: Vec<u8>,
}

/// A stored checkpoint: its sequence number in the checkpoints file and its signed note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawCheckpoint {
    pub seq: u64,
    pub note: String,
}

/// A filter over the log. Every set field must match; `start` is the leaf index to scan
/// from (a cursor from a previous [`Page`]).
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub start: u64,
    /// Page size; 0 means 100, and more than 1000 is read as 1000.
    pub limit: usize,
    /// Entries at or after this time.
    pub since: Option<Timestamp>,
    /// Entries strictly before this time.
    pub until: Option<Timestamp>,
    /// The actor's account or device name.
    pub account: Option<String>,
    pub actor_kind: Option<ActorKind>,
    pub operation: Option<Operation>,
    pub outcome: Option<OutcomeClass>,
    /// Entries touching this resource.
    pub resource: Option<ResourceRef>,
}

impl Query {
    fn matches(&self, e: &Entry) -> bool {
        self.since.is_none_or(|t| e.time >= t)
            && self.until.is_none_or(|t| e.time < t)
            && self.account.as_ref().is_none_or(|a| *a == e.actor.name)
            && self.actor_kind.is_none_or(|k| k == e.actor.kind)
            && self.operation.is_none_or(|o| o == e.operation)
            && self.outcome.is_none_or(|o| o == e.outcome.class())
            && self.resource.as_ref().is_none_or(|r| e.resources.contains(r))
    }
}

/// One page of a listing.
#[derive(Clone, Debug)]
pub struct Page {
    /// Matching entries with their leaf indexes, in log order.
    pub entries: Vec<(u64, Entry)>,
    /// Where to continue (`Query::start`), or `None` when the scan reached the end.
    pub next: Option<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    format: String,
    origin: String,
}

struct State {
    /// The tree, on disk; memory holds its right edge only (`nodes.rs`).
    tree: TreeFiles,
    /// The newest checkpoint, and how many there are; the others are read from
    /// `checkpoints.log` through the index in the tree files when asked for.
    latest: Option<SignedCheckpoint>,
    checkpoint_count: u64,
}

/// Why the log stopped taking entries after it opened: the background check of its
/// history found it altered or damaged. Kept as parts so every caller gets the same error.
#[derive(Clone, Debug)]
enum Halt {
    Corrupt { file: &'static str, index: u64, what: &'static str },
    CheckpointMismatch { seq: u64, what: &'static str },
    Io { path: PathBuf, message: String },
}

impl Halt {
    fn error(&self) -> Error {
        match self {
            Halt::Corrupt { file, index, what } => Error::Corrupt { file, index: *index, what },
            Halt::CheckpointMismatch { seq, what } => Error::CheckpointMismatch { seq: *seq, what },
            Halt::Io { path, message } => Error::io("read", path, std::io::Error::other(message.clone())),
        }
    }

    fn of(e: Error, path: &Path) -> Halt {
        match e {
            Error::Corrupt { file, index, what } => Halt::Corrupt { file, index, what },
            Error::CheckpointMismatch { seq, what } => Halt::CheckpointMismatch { seq, what },
            other => Halt::Io { path: path.to_owned(), message: other.to_string() },
        }
    }
}

/// Where the background check of the history stands.
#[derive(Clone, Debug)]
enum Checked {
    Running,
    Passed,
    Failed(Halt),
}

struct CheckpointFile {
    file: File,
    path: PathBuf,
    next_seq: u64,
    /// Byte offset just after the last record.
    end: u64,
}

struct Shared {
    entries_path: PathBuf,
    origin: String,
    signer: CheckpointSigner,
    state: RwLock<State>,
    reader: File,
    checkpoint_file: Mutex<CheckpointFile>,
    /// `checkpoints.log`, for reading stored checkpoints without the writer's lock.
    checkpoints_path: PathBuf,
    /// Makes the tree files durable when a checkpoint is issued.
    tree_sync: Syncer,
    failed: AtomicBool,
    /// The background check of the history, and its end (see [`AuditLog::open`]).
    checked: Mutex<Checked>,
    checked_cv: std::sync::Condvar,
    /// Asks the background check to stop (the log is closing).
    closing: AtomicBool,
    /// The reference index (`index.rs`): the directory holding it; how many leading leaves
    /// it holds, once it may be used (built or checked in this process, else 0); the
    /// listing side's connection; and what wakes the thread that keeps it.
    dir: PathBuf,
    index_usable: std::sync::atomic::AtomicU64,
    /// Moves on each time the index file is replaced, so the listing side reopens it.
    index_generation: std::sync::atomic::AtomicU64,
    index_reader: Mutex<Option<(u64, IndexReader)>>,
    index_wake: Mutex<()>,
    index_cv: std::sync::Condvar,
    /// Held for the lifetime of the log: the flock on `LOCK`.
    _lock: File,
}

/// One caller's entries, kept together: they get consecutive leaf indexes in one batch.
struct Request {
    /// Canonical entry bytes with their leaf hash, computed by the appending thread.
    payloads: Vec<(Vec<u8>, Hash)>,
    bytes: usize,
    reply: Responder,
}

/// An open audit log. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct AuditLog {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    checker: Option<JoinHandle<()>>,
    indexer: Option<JoinHandle<()>>,
    recovery: Vec<Recovery>,
    read_on_open: u64,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditLog({}, {} entries)", self.shared.origin, self.size())
    }
}

/// Stored entries from leaf `start`, at most `limit`, checked against their leaf hashes.
fn raw_entries(shared: &Shared, start: u64, limit: usize) -> Result<Vec<RawEntry>, Error> {
    let (offsets, leaves) = {
        let st = read_state(shared);
        let n = st.tree.size();
        let end = start.saturating_add(limit as u64).min(n);
        if start >= end {
            return Ok(Vec::new());
        }
        (st.tree.record_offsets(start, end)?, st.tree.leaves(start, end)?)
    };
    // Offsets come from a file: bound them before allocating what they span.
    let most = (leaves.len() as u64).saturating_mul(RECORD_OVERHEAD + u64::from(store::MAX_RECORD_PAYLOAD));
    if offsets.len() != leaves.len() + 1
        || offsets.windows(2).any(|w| w[1] < w[0] + RECORD_OVERHEAD)
        || offsets[offsets.len() - 1] - offsets[0] > most
    {
        return Err(Error::Corrupt { file: "tree", index: start, what: "the stored record offsets are impossible" });
    }
    let first = offsets[0];
    let last = offsets[offsets.len() - 1];
    let mut buf = vec![0u8; (last - first) as usize];
    shared
        .reader
        .read_exact_at(&mut buf, first)
        .map_err(|e| Error::io("read", &shared.entries_path, e))?;
    let mut out = Vec::with_capacity(leaves.len());
    for (i, w) in offsets.windows(2).enumerate() {
        let index = start + i as u64;
        let rec = &buf[(w[0] - first) as usize..(w[1] - first) as usize];
        let damaged = Error::Corrupt { file: "entries", index, what: "the record changed on disk since it was written" };
        if rec.len() < RECORD_OVERHEAD as usize {
            return Err(damaged);
        }
        let payload = &rec[12..rec.len() - 32];
        if crate::merkle::leaf_hash(payload) != leaves[i] {
            return Err(damaged);
        }
        out.push(RawEntry { index, bytes: payload.to_vec() });
    }
    Ok(out)
}

/// A read-only handle on an [`AuditLog`] for a reader on its own thread (the broker's
/// syslog forwarder reads the entries it has not sent yet): the size and the stored
/// entries, nothing that writes. It keeps the log's files open, and its lock held, for as
/// long as it lives.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogReader({})", self.shared.origin)
    }
}

impl LogReader {
    /// Entries in the log now.
    pub fn size(&self) -> u64 {
        read_state(&self.shared).tree.size()
    }

    /// As [`AuditLog::raw_entries`].
    pub fn raw_entries(&self, start: u64, limit: usize) -> Result<Vec<RawEntry>, Error> {
        raw_entries(&self.shared, start, limit)
    }
}

fn read_state(s: &Shared) -> RwLockReadGuard<'_, State> {
    // A poisoned lock means a reader panicked mid-read; the state itself is only changed
    // by the writer in whole steps, so it is still consistent.
    s.state.read().unwrap_or_else(|p| p.into_inner())
}

fn write_state(s: &Shared) -> RwLockWriteGuard<'_, State> {
    s.state.write().unwrap_or_else(|p| p.into_inner())
}

fn lock_cp(s: &Shared) -> MutexGuard<'_, CheckpointFile> {
    s.checkpoint_file.lock().unwrap_or_else(|p| p.into_inner())
}

fn open_or_create(path: &Path, kind: FileKind) -> Result<File, Error> {
    if !path.exists() {
        let mut f = durable::create_new_with_mode(path, 0o600).map_err(|e| Error::io("create", path, e))?;
        f.write_all(kind.header()).map_err(|e| Error::io("write", path, e))?;
        f.sync_all().map_err(|e| Error::io("sync", path, e))?;
        if let Some(dir) = path.parent() {
            durable::fsync_dir(dir).map_err(|e| Error::io("sync directory", dir, e))?;
        }
    }
    OpenOptions::new().read(true).append(true).open(path).map_err(|e| Error::io("open", path, e))
}

fn truncate(file: &File, path: &Path, len: u64) -> Result<(), Error> {
    file.set_len(len).map_err(|e| Error::io("truncate", path, e))?;
    file.sync_all().map_err(|e| Error::io("sync", path, e))
}

/// The checkpoints as opening reads them.
struct CheckpointsRead {
    /// The mark's last checkpoint, when reading started there (after checking that its
    /// record is where the index says, intact, ends where the mark says and is of the
    /// mark's size); `None` when reading started at the first checkpoint.
    base: Option<SignedCheckpoint>,
    /// (sequence number, size, root) of each checkpoint read after `base` (or of all).
    read: Vec<(u64, u64, Hash)>,
    latest: Option<SignedCheckpoint>,
    count: u64,
    /// Byte offset just after the last record.
    end: u64,
}

fn parse_checkpoint(seq: u64, payload: Vec<u8>, origin: &str) -> Result<SignedCheckpoint, Error> {
    let note = String::from_utf8(payload).map_err(|_| Error::CheckpointMismatch { seq, what: "not UTF-8" })?;
    let checkpoint = note_text(&note)
        .and_then(|t| Checkpoint::parse_body(t).ok())
        .ok_or(Error::CheckpointMismatch { seq, what: "malformed" })?;
    if checkpoint.origin != origin {
        return Err(Error::CheckpointMismatch { seq, what: "the root does not match the entries" });
    }
    Ok(SignedCheckpoint { checkpoint, note })
}

/// Reads `checkpoints.log` from the mark's last checkpoint if it holds up, else from the
/// first, indexing every checkpoint read in the tree files and cutting a torn last record.
/// Only the newest checkpoint, and the (sequence, size, root) of those read, are kept.
fn read_checkpoints(
    file: &File,
    path: &Path,
    origin: &str,
    tree: &TreeFiles,
    mark: Option<Mark>,
    recovery: &mut Vec<Recovery>,
) -> Result<CheckpointsRead, Error> {
    let io = |e: std::io::Error| Error::io("read", path, e);
    let mut start = None;
    if let Some(m) = mark.filter(|m| m.checkpoints > 0) {
        if tree.holds_checkpoints(m.checkpoints)? {
            let seq = m.checkpoints - 1;
            let mut r = RecordReader::resume(file, FileKind::Checkpoints, tree.checkpoint_offset(seq)?, seq).map_err(io)?;
            if let Next::Record(rec) = r.next_record().map_err(io)? {
                let ends = rec.offset + RECORD_OVERHEAD + rec.payload.len() as u64;
                match parse_checkpoint(seq, rec.payload, origin) {
                    Ok(cp) if ends == m.checkpoints_end && cp.checkpoint.size == m.size => start = Some((r, cp, m)),
                    _ => {}
                }
            }
        }
    }
    let (mut reader, base, mut count, mut end) = match start {
        Some((r, cp, m)) => {
            tree.reset_checkpoints(m.checkpoints)?;
            (r, Some(cp), m.checkpoints, m.checkpoints_end)
        }
        None => {
            tree.reset_checkpoints(0)?;
            // The handle may have been moved by the attempt above.
            std::io::Seek::seek(&mut &*file, std::io::SeekFrom::Start(0)).map_err(io)?;
            let r = RecordReader::new(file, FileKind::Checkpoints).map_err(io)?.ok_or_else(|| Error::UnknownFormat(path.to_owned()))?;
            (r, None, 0, store::CHECKPOINTS_HEADER.len() as u64)
        }
    };
    // Index offsets are written in runs, not one `pwrite` per checkpoint.
    let (mut run, mut run_from) = (Vec::new(), count);
    let mut read = Vec::new();
    let mut latest = base.clone();
    loop {
        match reader.next_record().map_err(io)? {
            Next::Record(r) => {
                let (seq, offset) = (r.seq, r.offset);
                end = offset + RECORD_OVERHEAD + r.payload.len() as u64;
                let cp = parse_checkpoint(seq, r.payload, origin)?;
                read.push((seq, cp.checkpoint.size, cp.checkpoint.root));
                latest = Some(cp);
                run.extend_from_slice(&offset.to_be_bytes());
                count = seq + 1;
                if run.len() >= 1 << 19 {
                    tree.put_checkpoints(run_from, &run)?;
                    (run_from, run) = (count, Vec::new());
                }
            }
            Next::Stop(s) => {
                let torn = s.at_end && matches!(s.damage, Damage::Incomplete | Damage::HashMismatch);
                if !torn {
                    return Err(s.corrupt("checkpoints"));
                }
                let len = file.metadata().map_err(|e| Error::io("stat", path, e))?.len();
                truncate(file, path, s.offset)?;
                recovery.push(Recovery { file: "checkpoints", first_dropped: s.seq, dropped_bytes: len - s.offset });
                break;
            }
            Next::End => break,
        }
    }
    tree.put_checkpoints(run_from, &run)?;
    Ok(CheckpointsRead { base, read, latest, count, end })
}

/// The tree files' mark, if they can be trusted up to it: they give `signed_root`, the root
/// of the mark's own checkpoint (found and checked by `read_checkpoints`), and the last
/// record they point at is intact, is the leaf they hold, and ends where the mark says.
/// Leaves `tree` at the mark's size.
fn usable_mark(
    tree: &mut TreeFiles,
    mark: Mark,
    signed_root: &Hash,
    entries: &File,
    entries_path: &Path,
) -> Result<Option<Mark>, Error> {
    let len = entries.metadata().map_err(|e| Error::io("stat", entries_path, e))?.len();
    if mark.size == 0 || mark.end > len || !tree.holds(mark.size)? {
        return Ok(None);
    }
    tree.reset_to(mark.size, mark.end)?;
    if tree.current_root() != *signed_root {
        return Ok(None);
    }
    let last = mark.size - 1;
    let at = tree.record_offsets(last, mark.size)?;
    let leaf = tree.leaves(last, mark.size)?;
    let mut reader = RecordReader::resume(entries, FileKind::Entries, at[0], last).map_err(|e| Error::io("read", entries_path, e))?;
    Ok(match reader.next_record().map_err(|e| Error::io("read", entries_path, e))? {
        Next::Record(r) if Some(&r.hash) == leaf.first() && r.offset + RECORD_OVERHEAD + r.payload.len() as u64 == mark.end => Some(mark),
        _ => None,
    })
}

/// The first `count` checkpoints read front to back for the background check, each record
/// checked, compared with the index, parsed, and held to a size that never shrinks.
struct CheckpointStream<'a> {
    reader: RecordReader<File>,
    index: &'a mut std::io::BufReader<File>,
    origin: &'a str,
    left: u64,
    /// The sequence number expected next.
    seq: u64,
    size: u64,
    /// The first checkpoint whose indexed place differs from where it is.
    index_differs: Option<u64>,
}

impl CheckpointStream<'_> {
    /// The next checkpoint as (sequence number, size, root), `None` after `count`.
    fn next(&mut self, path: &Path) -> Result<Option<(u64, u64, Hash)>, Error> {
        use std::io::Read;
        if self.left == 0 {
            return Ok(None);
        }
        let r = match self.reader.next_record().map_err(|e| Error::io("read", path, e))? {
            Next::Record(r) => r,
            Next::Stop(s) => return Err(s.corrupt("checkpoints")),
            Next::End => return Err(Error::Corrupt { file: "checkpoints", index: self.seq, what: "checkpoints the mark covers are missing" }),
        };
        let mut at = [0u8; 8];
        if (self.index.read_exact(&mut at).is_err() || u64::from_be_bytes(at) != r.offset) && self.index_differs.is_none() {
            self.index_differs = Some(r.seq);
        }
        let cp = parse_checkpoint(r.seq, r.payload, self.origin)?;
        if cp.checkpoint.size < self.size {
            return Err(Error::CheckpointMismatch { seq: r.seq, what: "the tree shrank" });
        }
        self.size = cp.checkpoint.size;
        self.left -= 1;
        self.seq += 1;
        Ok(Some((r.seq, cp.checkpoint.size, cp.checkpoint.root)))
    }
}

/// The background check: re-derives the tree, the record offsets and the checkpoint index
/// from every entry up to `size` and the first `checkpoints` checkpoints, compares them with
/// the tree files read in the same order, and checks each checkpoint's root on the way. On
/// any difference the log stops taking entries and the mark is withdrawn, so the next open
/// reads everything and names the damage itself.
fn check_history(shared: Arc<Shared>, mut streams: Streams, size: u64, checkpoints: u64) {
    use std::io::Read;
    let started = Instant::now();
    let mut run = || -> Result<bool, Error> {
        let path = &shared.entries_path;
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let mut reader = RecordReader::new(file, FileKind::Entries)
            .map_err(|e| Error::io("read", path, e))?
            .ok_or_else(|| Error::UnknownFormat(path.clone()))?;
        let cp_path = &shared.checkpoints_path;
        let cp_file = File::open(cp_path).map_err(|e| Error::io("open", cp_path, e))?;
        let mut cps = CheckpointStream {
            reader: RecordReader::new(cp_file, FileKind::Checkpoints)
                .map_err(|e| Error::io("read", cp_path, e))?
                .ok_or_else(|| Error::UnknownFormat(cp_path.clone()))?,
            index: &mut streams.checkpoints,
            origin: &shared.origin,
            left: checkpoints,
            seq: 0,
            size: 0,
            index_differs: None,
        };
        let mut next_cp = cps.next(cp_path)?;
        let mut peaks = Peaks::default();
        // A checkpoint of the empty log.
        while let Some((seq, 0, root)) = next_cp {
            if root != crate::merkle::empty_root() {
                return Err(Error::CheckpointMismatch { seq, what: "the root does not match the entries" });
            }
            next_cp = cps.next(cp_path)?;
        }
        // The first leaf at which the tree files differ from the entries. Which of the two
        // is wrong shows at the next signed root: the entries, if they no longer give it.
        let mut files_differ: Option<u64> = None;
        let (mut stored, mut off) = ([0u8; 32], [0u8; 8]);
        for index in 0..size {
            if index % 4096 == 0 && shared.closing.load(Ordering::SeqCst) {
                return Ok(false);
            }
            let r = match reader.next_record().map_err(|e| Error::io("read", path, e))? {
                Next::Record(r) => r,
                Next::Stop(s) => return Err(s.corrupt("entries")),
                Next::End => return Err(Error::Corrupt { file: "entries", index, what: "entries covered by a signed checkpoint are missing" }),
            };
            let mut same = streams.offsets.read_exact(&mut off).is_ok() && u64::from_be_bytes(off) == r.offset;
            peaks.push(r.hash, |h| same &= streams.nodes.read_exact(&mut stored).is_ok() && stored == *h);
            if !same && files_differ.is_none() {
                files_differ = Some(index);
            }
            while let Some((seq, cp_size, root)) = next_cp {
                if cp_size != index + 1 {
                    break;
                }
                if peaks.root() != root {
                    return Err(Error::CheckpointMismatch { seq, what: "the root does not match the entries" });
                }
                next_cp = cps.next(cp_path)?;
            }
        }
        if let Some((seq, _, _)) = next_cp {
            return Err(Error::CheckpointMismatch { seq, what: "the checkpoint is larger than the tree files' mark" });
        }
        if let Some(index) = files_differ {
            return Err(Error::Corrupt { file: "tree", index, what: "the tree files differ from the entries; the next open rebuilds them" });
        }
        if let Some(seq) = cps.index_differs {
            return Err(Error::Corrupt { file: "tree", index: seq, what: "the checkpoint index differs from the checkpoints; the next open rebuilds it" });
        }
        Ok(true)
    };
    let outcome = run();
    let mut checked = shared.checked.lock().unwrap_or_else(|p| p.into_inner());
    match outcome {
        Ok(true) => {
            tracing::info!(entries = size, checkpoints, seconds = started.elapsed().as_secs(), "audit log: history checked");
            *checked = Checked::Passed;
        }
        Ok(false) => {}
        Err(e) => {
            tracing::error!(error = %e, "audit log: the history check failed; the log takes no more entries");
            if let Err(u) = shared.tree_sync.unmark() {
                tracing::error!(error = %u, "audit log: could not withdraw the tree files' mark");
            }
            *checked = Checked::Failed(Halt::of(e, &shared.entries_path));
        }
    }
    shared.checked_cv.notify_all();
}

type IndexError = Box<dyn std::error::Error + Send + Sync>;

/// The thread that keeps the reference index (`index.rs`) up to date with the log, for as
/// long as the log is open.
///
/// An index file found on opening is used only once it is checked: the digest of its
/// postings must be the one stored with this log's tag (a missing posting would hide an
/// entry from a listing). Until then, and whenever it cannot keep up, listings read the
/// log. An index of another log, or of leaves this log no longer has, and one that fails
/// the check, are emptied and rebuilt.
fn keep_index(shared: Arc<Shared>, tag_key: Key32) {
    let open = || RefIndex::open(&shared.dir, &shared.origin, &tag_key);
    // A new, empty file in place of one that cannot be used; `None` (and listings scan for
    // as long as the log is open) if even that fails.
    let replace = || {
        index::remove(&shared.dir.join(index::INDEX_FILE));
        open()
            .map_err(|e| tracing::error!(error = %e, "audit log: the reference index cannot be rebuilt; listings by patient or account read the whole log"))
            .ok()
    };
    let mut ix = match open() {
        Ok(ix) => ix,
        Err(e) => {
            tracing::error!(error = %e, "audit log: the reference index cannot be opened; listings by patient or account read the whole log");
            return;
        }
    };
    let ours = ix.progress().ok().is_some_and(|p| p.indexed == 0 || leaf_at(&shared, p.indexed - 1) == p.last_leaf);
    let mut unchecked = true;
    if !ours {
        tracing::warn!("audit log: the reference index belongs to another log, is ahead of this one or is unreadable; rebuilding it");
        if ix.clear().is_err() {
            drop(ix);
            let Some(new) = replace() else { return };
            ix = new;
        }
        unchecked = false;
    }
    let publish = |ix: &RefIndex| {
        if let Ok(p) = ix.progress() {
            shared.index_usable.store(p.indexed, Ordering::Release);
        }
    };
    let mut idle = false;
    while !shared.closing.load(Ordering::SeqCst) {
        if idle {
            // `closing` is set under this lock before the wake-up (`Drop`), so it is never
            // missed here.
            let g = shared.index_wake.lock().unwrap_or_else(|p| p.into_inner());
            if shared.closing.load(Ordering::SeqCst) {
                break;
            }
            let _ = shared.index_cv.wait_timeout(g, Duration::from_secs(1));
        }
        let step: Result<bool, IndexError> = if unchecked {
            ix.check().map_err(IndexError::from).and_then(|ok| {
                if ok {
                    tracing::info!("audit log: reference index checked");
                } else {
                    tracing::error!("audit log: the reference index does not hold what this log's broker wrote into it (altered or damaged); rebuilding it");
                    ix.clear()?;
                }
                unchecked = false;
                Ok(true)
            })
        } else {
            index_more(&shared, &mut ix)
        };
        match step {
            Ok(worked) => {
                if !unchecked {
                    publish(&ix);
                }
                idle = !worked;
            }
            Err(e) if shared.closing.load(Ordering::SeqCst) => {
                tracing::debug!(error = %e, "audit log: reference index stopped by closing");
                break;
            }
            Err(e) if e.is::<rusqlite::Error>() => {
                // The file itself fails (damaged, disk full): listings stop using it, and it
                // is replaced by a new one built from the first entry.
                tracing::warn!(error = %e, "audit log: the reference index failed; rebuilding it");
                shared.index_usable.store(0, Ordering::Release);
                shared.index_generation.fetch_add(1, Ordering::AcqRel);
                drop(ix);
                let Some(new) = replace() else { return };
                ix = new;
                unchecked = false;
                idle = true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "audit log: the reference index could not be brought up to date; retrying");
                idle = true;
            }
        }
    }
}

/// Indexes the next entries the index has not reached; `false` when there were none.
fn index_more(shared: &Shared, ix: &mut RefIndex) -> Result<bool, IndexError> {
    let p = ix.progress()?;
    let size = read_state(shared).tree.size();
    if p.indexed >= size {
        return Ok(false);
    }
    // `raw_entries` checked each record against its stored leaf hash; the last one is read
    // back from the tree files rather than hashed again.
    let raws = raw_entries(shared, p.indexed, (size - p.indexed).min(4096) as usize)?;
    let batch = raws.iter().map(|r| Entry::from_canonical_bytes(&r.bytes, r.index)).collect::<Result<Vec<_>, _>>()?;
    let last = p.indexed + batch.len() as u64 - 1;
    let last_leaf = leaf_at(shared, last).ok_or("the log is shorter than the entries just read")?;
    ix.add(p.indexed, &batch, last_leaf)?;
    Ok(true)
}

/// The stored leaf hash of leaf `i`; `None` beyond the log or if it cannot be read.
fn leaf_at(shared: &Shared, i: u64) -> Option<Hash> {
    let st = read_state(shared);
    if i >= st.tree.size() {
        return None;
    }
    st.tree.leaves(i, i + 1).ok().and_then(|v| v.first().copied())
}

impl AuditLog {
    /// Open (or create) the log in `dir`, a directory of its own apart from both stores.
    /// `signing_key` is the `KeyPurpose::AuditSigning` key. Repairs a crash tail (see the
    /// module documentation).
    ///
    /// Opening reads only the entries after the tree files' mark (`nodes.rs`), after checking
    /// that the files give the signed root of that size; with no usable mark it reads and
    /// checks every entry, as before. Everything up to the mark is then re-read and checked
    /// against the files and every checkpoint by a background thread; if it finds the
    /// history altered or damaged, the log refuses every later append with that error
    /// (the broker then refuses requests), and the next open reads every entry again.
    /// [`wait_checked`](Self::wait_checked) waits for it.
    pub fn open(dir: &Path, options: LogOptions, signing_key: &Key32) -> Result<AuditLog, Error> {
        check_origin(&options.origin)?;
        durable::create_private_dir(dir).map_err(|e| Error::io("create", dir, e))?;
        let DirLock(lock) = AuditLog::lock_dir(dir)?;

        let meta_path = dir.join(store::META_FILE);
        match std::fs::read(&meta_path) {
            Ok(bytes) => {
                let meta: Meta =
                    serde_json::from_slice(&bytes).map_err(|_| Error::UnknownFormat(meta_path.clone()))?;
                if meta.format != META_FORMAT {
                    return Err(Error::UnknownFormat(meta_path));
                }
                if meta.origin != options.origin {
                    return Err(Error::OriginMismatch(dir.to_owned()));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let meta = Meta { format: META_FORMAT.into(), origin: options.origin.clone() };
                let bytes = serde_json::to_vec_pretty(&meta).map_err(|_| Error::UnknownFormat(meta_path.clone()))?;
                durable::write_atomic(&meta_path, &bytes, 0o600).map_err(|e| Error::io("write", &meta_path, e))?;
            }
            Err(e) => return Err(Error::io("read", &meta_path, e)),
        }

        let signer = CheckpointSigner::from_audit_signing_key(&options.origin, signing_key)?;
        let verifier = signer.verifier();
        let mut recovery = Vec::new();

        // Checkpoints first: they decide how much of the entries file may be cut. Read from
        // the tree files' mark when it holds up (see `read_checkpoints`).
        let cp_path = dir.join(store::CHECKPOINTS_FILE);
        let cp_file = open_or_create(&cp_path, FileKind::Checkpoints)?;
        let (mut tree, mark) = TreeFiles::open(dir)?;
        let mut cps = read_checkpoints(&cp_file, &cp_path, &options.origin, &tree, mark, &mut recovery)?;

        let entries_path = dir.join(store::ENTRIES_FILE);
        let entries_file = open_or_create(&entries_path, FileKind::Entries)?;
        if RecordReader::new(&entries_file, FileKind::Entries).map_err(|e| Error::io("read", &entries_path, e))?.is_none() {
            return Err(Error::UnknownFormat(entries_path));
        }

        // The tree files, trusted up to their mark if it checks out; otherwise rebuilt from
        // the first entry (the mark is only a shortcut: nothing is lost without it).
        let trusted = match (mark, &cps.base) {
            (Some(m), Some(base)) => usable_mark(&mut tree, m, &base.checkpoint.root, &entries_file, &entries_path)?,
            _ => None,
        };
        if trusted.is_none() && cps.base.is_some() {
            // Every entry is read, so every checkpoint's root must be checked against them.
            cps = read_checkpoints(&cp_file, &cp_path, &options.origin, &tree, None, &mut recovery)?;
        }
        // Checking every signature of a long-lived log would make opening slow; the newest
        // one vouches for all the others through the roots checked below, and the auditor's
        // verification checks them all.
        if let Some(last) = &cps.latest {
            if verifier.verify(&last.note).ok().as_ref() != Some(&last.checkpoint) {
                return Err(Error::CheckpointMismatch { seq: cps.count - 1, what: "not signed by this log's key" });
            }
        }
        let signed_size = cps.latest.as_ref().map_or(0, |c| c.checkpoint.size);
        let mut prev = cps.base.as_ref().map_or(0, |b| b.checkpoint.size);
        for (seq, size, _) in &cps.read {
            if *size < prev {
                return Err(Error::CheckpointMismatch { seq: *seq, what: "the tree shrank" });
            }
            prev = *size;
        }
        let from = trusted.unwrap_or(Mark { size: 0, end: store::ENTRIES_HEADER.len() as u64, checkpoints: 0, checkpoints_end: 0 });
        if trusted.is_none() && mark.is_some() {
            tracing::warn!("audit log: the tree files do not match the entries; rebuilding them from every entry");
        }
        tree.reset_to(from.size, from.end)?;

        // Read the entries after the mark: all of them when there is none.
        let mut reader = RecordReader::resume(&entries_file, FileKind::Entries, from.end, from.size)
            .map_err(|e| Error::io("read", &entries_path, e))?;
        let mut read: Vec<(Hash, u64)> = Vec::new();
        let mut end = from.end;
        let add = |tree: &mut TreeFiles, read: &mut Vec<(Hash, u64)>, end: u64| -> Result<(), Error> {
            let planned = tree.plan(read, end);
            tree.write(&planned)?;
            tree.publish(planned);
            read.clear();
            Ok(())
        };
        loop {
            match reader.next_record().map_err(|e| Error::io("read", &entries_path, e))? {
                Next::Record(r) => {
                    read.push((r.hash, r.offset));
                    end = r.offset + RECORD_OVERHEAD + r.payload.len() as u64;
                    if read.len() == 1 << 16 {
                        add(&mut tree, &mut read, end)?;
                    }
                }
                Next::Stop(s) => {
                    if s.seq < signed_size {
                        return Err(s.corrupt("entries"));
                    }
                    let len = entries_file.metadata().map_err(|e| Error::io("stat", &entries_path, e))?.len();
                    truncate(&entries_file, &entries_path, s.offset)?;
                    recovery.push(Recovery { file: "entries", first_dropped: s.seq, dropped_bytes: len - s.offset });
                    break;
                }
                Next::End => break,
            }
        }
        add(&mut tree, &mut read, end)?;
        drop(reader);
        if tree.size() < signed_size {
            return Err(Error::Corrupt { file: "entries", index: tree.size(), what: "entries covered by a signed checkpoint are missing" });
        }
        // Checkpoints past the mark are checked now; those up to it by the background check.
        for (seq, size, signed_root) in &cps.read {
            if from.size > 0 && *size <= from.size {
                continue;
            }
            let root = root_of(&tree, *size)?;
            if root.as_ref() != Some(signed_root) {
                return Err(Error::CheckpointMismatch { seq: *seq, what: "the root does not match the entries" });
            }
        }
        let history_checkpoints = trusted.map_or(0, |m| m.checkpoints);

        let reader = File::open(&entries_path).map_err(|e| Error::io("open", &entries_path, e))?;
        let (next_seq, cp_end) = (cps.count, cps.end);
        let tree_sync = tree.syncer();
        let streams = if from.size > 0 { Some(tree.stream()?) } else { None };
        let shared = Arc::new(Shared {
            entries_path,
            origin: options.origin.clone(),
            signer,
            state: RwLock::new(State { tree, latest: cps.latest, checkpoint_count: cps.count }),
            reader,
            checkpoint_file: Mutex::new(CheckpointFile { file: cp_file, path: cp_path.clone(), next_seq, end: cp_end }),
            checkpoints_path: cp_path,
            tree_sync,
            failed: AtomicBool::new(false),
            checked: Mutex::new(if from.size > 0 { Checked::Running } else { Checked::Passed }),
            checked_cv: std::sync::Condvar::new(),
            closing: AtomicBool::new(false),
            dir: dir.to_owned(),
            index_usable: std::sync::atomic::AtomicU64::new(0),
            index_generation: std::sync::atomic::AtomicU64::new(0),
            index_reader: Mutex::new(None),
            index_wake: Mutex::new(()),
            index_cv: std::sync::Condvar::new(),
            _lock: lock,
        });
        // Everything up to the mark was taken on trust from the tree files (checked only
        // against the signed root of that size). Re-derive it from every record, off the
        // opening path: if the history was altered, the log stops taking entries (see
        // `check_history`).
        let checker = match streams {
            Some(streams) => {
                let s = Arc::clone(&shared);
                Some(
                    std::thread::Builder::new()
                        .name("cleave-audit-check".into())
                        .spawn(move || check_history(s, streams, from.size, history_checkpoints))
                        .map_err(|e| Error::io("start the history check for", dir, e))?,
                )
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel();
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("cleave-audit-writer".into())
            .spawn(move || writer_loop(writer_shared, entries_file, rx, options))
            .map_err(|e| Error::io("start writer thread for", dir, e))?;
        let index_shared = Arc::clone(&shared);
        let tag_key = signing_key.derive(index::TAG_CONTEXT);
        let indexer = std::thread::Builder::new()
            .name("cleave-audit-index".into())
            .spawn(move || keep_index(index_shared, tag_key))
            .map_err(|e| Error::io("start the reference index thread for", dir, e))?;
        let read_on_open = read_state(&shared).tree.size() - from.size;
        tracing::info!(entries = from.size + read_on_open, read = read_on_open, "audit log: opened");
        let log = AuditLog { shared, tx: Some(tx), writer: Some(writer), checker, indexer: Some(indexer), recovery, read_on_open };
        if let Some(r) = log.recovery.iter().find(|r| r.file == "entries") {
            tracing::warn!(first_dropped = r.first_dropped, bytes = r.dropped_bytes, "audit log: cut a torn tail after a crash");
            log.append(&Entry::new(
                Actor::new(ActorKind::System, "cleave-audit"),
                Operation::LogRecovery,
                Outcome::error("torn-tail-truncated"),
            ))?;
        }
        Ok(log)
    }

    /// Blocks until the background check of the log's history (see [`open`](Self::open))
    /// has finished, and returns its result: `Ok` when every entry up to the tree files'
    /// mark was read and agrees with them and with every signed checkpoint; otherwise the
    /// error that also stopped the log taking entries. Returns at once when opening read
    /// every entry itself.
    pub fn wait_checked(&self) -> Result<(), Error> {
        let mut c = self.shared.checked.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match &*c {
                Checked::Running => c = self.shared.checked_cv.wait(c).unwrap_or_else(|p| p.into_inner()),
                Checked::Passed => return Ok(()),
                Checked::Failed(h) => return Err(h.error()),
            }
        }
    }

    /// How many entries opening read: those after the tree files' mark, or all of them.
    pub fn entries_read_on_open(&self) -> u64 {
        self.read_on_open
    }

    /// What opening had to repair (empty after a clean shutdown).
    pub fn recovery(&self) -> &[Recovery] {
        &self.recovery
    }

    /// Append an entry; returns its leaf index once it is durable on disk.
    /// Blocks the calling thread: from async code, `.await` [`submit`](Self::submit) instead.
    pub fn append(&self, entry: &Entry) -> Result<u64, Error> {
        self.submit(entry)?.wait()
    }

    /// Queue an entry and return at once. The entry is checked and encoded now (an invalid
    /// one is refused here); the returned [`PendingAppend`] yields its leaf index once it is
    /// durable, by `.wait()` or `.await`. Many appends in flight share one `fdatasync`:
    /// this is how an async server reaches high append rates without a thread per append.
    pub fn submit(&self, entry: &Entry) -> Result<PendingAppend, Error> {
        let payload = entry.to_canonical_bytes()?;
        self.enqueue(vec![payload])
    }

    /// Append several entries as one unit: they get consecutive leaf indexes, become
    /// durable with one `fdatasync`, and the range of their indexes is returned. All are
    /// checked before any is queued, so either all are appended or none. An empty slice
    /// appends nothing. At most 65 536 entries per call.
    pub fn append_batch(&self, entries: &[Entry]) -> Result<std::ops::Range<u64>, Error> {
        if entries.is_empty() {
            let n = self.size();
            return Ok(n..n);
        }
        if entries.len() > MAX_BATCH_CALL {
            return Err(Error::InvalidEntry { field: "entries", rule: "at most 65536 entries per append_batch call" });
        }
        let payloads = entries.iter().map(Entry::to_canonical_bytes).collect::<Result<Vec<_>, _>>()?;
        let n = payloads.len() as u64;
        let first = self.enqueue(payloads)?.wait()?;
        Ok(first..first + n)
    }

    fn enqueue(&self, payloads: Vec<Vec<u8>>) -> Result<PendingAppend, Error> {
        let completion = std::sync::Arc::new(Completion::default());
        let bytes = payloads.iter().map(Vec::len).sum();
        // Hash here, on the caller's thread: the one writer thread then only frames and
        // writes, and many appenders hash in parallel while it waits for the disk.
        let payloads = payloads
            .into_iter()
            .map(|p| {
                let hash = crate::merkle::leaf_hash(&p);
                (p, hash)
            })
            .collect();
        let tx = self.tx.as_ref().ok_or(Error::WriterStopped)?;
        tx.send(Request { payloads, bytes, reply: Responder(completion.clone()) }).map_err(|_| Error::WriterStopped)?;
        Ok(PendingAppend { completion })
    }

    /// Number of durable entries.
    pub fn size(&self) -> u64 {
        read_state(&self.shared).tree.size()
    }

    /// The log's origin.
    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    /// The public key auditors must trust.
    pub fn verifier(&self) -> CheckpointVerifier {
        self.shared.signer.verifier()
    }

    /// Sign a checkpoint of the current tree now (or return the newest one if nothing was
    /// appended since), durably stored before it is returned.
    pub fn checkpoint(&self) -> Result<SignedCheckpoint, Error> {
        issue_checkpoint(&self.shared)
    }

    /// The newest checkpoint, if any was issued.
    pub fn latest_checkpoint(&self) -> Option<SignedCheckpoint> {
        read_state(&self.shared).latest.clone()
    }

    /// Stored checkpoints from sequence number `start`, at most `limit`.
    /// Read from `checkpoints.log` through the tree files' index; each record is checked.
    pub fn checkpoints(&self, start: u64, limit: usize) -> Result<Vec<RawCheckpoint>, Error> {
        let (end, first) = {
            let st = read_state(&self.shared);
            let end = start.saturating_add(limit as u64).min(st.checkpoint_count);
            if start >= end {
                return Ok(Vec::new());
            }
            (end, st.tree.checkpoint_offset(start)?)
        };
        let path = &self.shared.checkpoints_path;
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let mut reader = RecordReader::resume(file, FileKind::Checkpoints, first, start).map_err(|e| Error::io("read", path, e))?;
        let mut out = Vec::with_capacity((end - start) as usize);
        for seq in start..end {
            match reader.next_record().map_err(|e| Error::io("read", path, e))? {
                Next::Record(r) => {
                    let note = String::from_utf8(r.payload).map_err(|_| Error::CheckpointMismatch { seq, what: "not UTF-8" })?;
                    out.push(RawCheckpoint { seq, note });
                }
                Next::Stop(s) => return Err(s.corrupt("checkpoints")),
                Next::End => return Err(Error::Corrupt { file: "checkpoints", index: seq, what: "the file ends before the checkpoint" }),
            }
        }
        Ok(out)
    }

    /// The root hash of the first `size` entries.
    pub fn root(&self, size: u64) -> Result<Hash, Error> {
        let st = read_state(&self.shared);
        root_of(&st.tree, size)?
            .ok_or(Error::OutOfRange { what: "tree size", asked: size, size: st.tree.size() })
    }

    /// The RFC 9162 inclusion proof of entry `index` in the tree of `size` entries.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, Error> {
        let st = read_state(&self.shared);
        inclusion_proof_of(&st.tree, index, size)?
            .ok_or(Error::OutOfRange { what: "leaf index or tree size", asked: index.max(size), size: st.tree.size() })
    }

    /// The RFC 9162 consistency proof between the trees of `old` and `new` entries.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, Error> {
        let st = read_state(&self.shared);
        consistency_proof_of(&st.tree, old, new)?
            .ok_or(Error::OutOfRange { what: "tree size", asked: old.max(new), size: st.tree.size() })
    }

    /// Stored entries from leaf `start`, at most `limit`, as bytes (for auditors and proofs).
    pub fn raw_entries(&self, start: u64, limit: usize) -> Result<Vec<RawEntry>, Error> {
        raw_entries(&self.shared, start, limit)
    }

    /// A read-only handle on this log for another thread.
    pub fn reader(&self) -> LogReader {
        LogReader { shared: self.shared.clone() }
    }

    /// List entries matching `query`, one page at a time. Examines at most 100 000 entries
    /// per call; `Page::next` continues the scan. A query by resource or account reads
    /// the reference index (`index.rs`) for the leaves it has reached, and examines only
    /// the entries it names there.
    pub fn list(&self, query: &Query) -> Result<Page, Error> {
        let limit = match query.limit {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        };
        let key = match (&query.resource, &query.account) {
            (Some(r), _) => Some(index::resource_key(r)),
            (None, Some(a)) => Some(index::account_key(a)),
            (None, None) => None,
        };
        if let Some(key) = key {
            if let Some(page) = self.list_indexed(query, &key, limit)? {
                return Ok(page);
            }
        }
        self.scan(query, query.start, limit, Vec::new())
    }

    /// The entries the index names under `key`, from `query.start`, then a scan of what it
    /// has not reached. `None` when the index cannot be used (the caller scans everything).
    fn list_indexed(&self, query: &Query, key: &[u8], limit: usize) -> Result<Option<Page>, Error> {
        const BATCH: usize = 256;
        let usable = self.shared.index_usable.load(Ordering::Acquire);
        if usable == 0 {
            return Ok(None);
        }
        let size = self.size();
        let mut entries = Vec::new();
        let mut cursor = query.start;
        let generation = self.shared.index_generation.load(Ordering::Acquire);
        let mut reader = self.shared.index_reader.lock().unwrap_or_else(|p| p.into_inner());
        if reader.as_ref().is_none_or(|(g, _)| *g != generation) {
            *reader = IndexReader::open(&self.shared.dir).map(|r| (generation, r));
        }
        let Some((_, r)) = reader.as_mut() else { return Ok(None) };
        // As with the scan, a bounded amount of work per call: a common account's postings
        // with a rare operation asked for could otherwise mean reading millions of entries.
        let mut examined = 0u64;
        loop {
            let (progress, leaves) = match r.postings(key, cursor, BATCH) {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(error = %e, "audit log: the reference index could not be read; scanning instead");
                    *reader = None;
                    return Ok(None);
                }
            };
            // Only as far as this process has built or checked it.
            let reached = progress.indexed.min(usable).min(size);
            for &leaf in leaves.iter().filter(|&&l| l < reached) {
                if examined == MAX_SCAN {
                    return Ok(Some(Page { entries, next: (cursor < size).then_some(cursor) }));
                }
                let Some(raw) = self.raw_entries(leaf, 1)?.pop() else { continue };
                let e = Entry::from_canonical_bytes(&raw.bytes, raw.index)?;
                cursor = leaf + 1;
                examined += 1;
                if query.matches(&e) {
                    entries.push((leaf, e));
                    if entries.len() == limit {
                        return Ok(Some(Page { entries, next: (cursor < size).then_some(cursor) }));
                    }
                }
            }
            if leaves.len() < BATCH || leaves.last().is_some_and(|&l| l >= reached) {
                // Every posting below `reached` is read: scan what the index has not reached.
                cursor = cursor.max(reached);
                break;
            }
        }
        drop(reader);
        self.scan(query, cursor, limit, entries).map(Some)
    }

    /// Reads entries from leaf `from` (at most 100 000) and adds those matching `query` to
    /// `entries` until it holds `limit`.
    fn scan(&self, query: &Query, from: u64, limit: usize, mut entries: Vec<(u64, Entry)>) -> Result<Page, Error> {
        let size = self.size();
        let stop = from.saturating_add(MAX_SCAN).min(size);
        let mut cursor = from;
        while cursor < stop && entries.len() < limit {
            let chunk = self.raw_entries(cursor, 512.min((stop - cursor) as usize))?;
            for raw in chunk {
                cursor = raw.index + 1;
                let e = Entry::from_canonical_bytes(&raw.bytes, raw.index)?;
                if query.matches(&e) {
                    entries.push((raw.index, e));
                    if entries.len() == limit {
                        break;
                    }
                }
            }
        }
        let next = if cursor < size { Some(cursor) } else { None };
        Ok(Page { entries, next })
    }

    /// Waits at most `timeout` until the reference index may be used for every entry
    /// appended before this call (for tests and benchmarks: listings never wait for it,
    /// they scan what it has not reached). `false` if it did not get there.
    pub fn wait_indexed(&self, timeout: Duration) -> bool {
        let target = self.size();
        let give_up = Instant::now() + timeout;
        loop {
            if target == 0 || self.shared.index_usable.load(Ordering::Acquire) >= target {
                return true;
            }
            if Instant::now() >= give_up || self.indexer.as_ref().is_none_or(|h| h.is_finished()) {
                return false;
            }
            {
                let _g = self.shared.index_wake.lock().unwrap_or_else(|p| p.into_inner());
                self.shared.index_cv.notify_all();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The lock [`AuditLog::open`] holds on a log folder, held without opening the log.
#[derive(Debug)]
pub struct DirLock(File);

impl AuditLog {
    /// Takes the lock an open log holds on `dir` (an existing log folder), without reading
    /// the log: for work on the folder's files that no broker may run beside, such as
    /// [`restore`](crate::restore). `Error::Locked` if a process has the log open.
    pub fn lock_dir(dir: &Path) -> Result<DirLock, Error> {
        let lock_path = dir.join(store::LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("open", &lock_path, e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| Error::Locked(dir.to_owned()))?;
        Ok(DirLock(lock))
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // Closing the channel stops the writer after it has answered everything queued.
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        {
            let _g = self.shared.index_wake.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.closing.store(true, Ordering::SeqCst);
            self.shared.index_cv.notify_all();
        }
        if let Some(c) = self.checker.take() {
            let _ = c.join();
        }
        if let Some(i) = self.indexer.take() {
            let _ = i.join();
        }
    }
}

fn issue_checkpoint(shared: &Shared) -> Result<SignedCheckpoint, Error> {
    let mut cpf = lock_cp(shared);
    // Nothing more is signed over a history found altered.
    if let Checked::Failed(h) = &*shared.checked.lock().unwrap_or_else(|p| p.into_inner()) {
        return Err(h.error());
    }
    let (size, root, end, latest) = {
        let st = read_state(shared);
        (st.tree.size(), st.tree.current_root(), st.tree.end(), st.latest.clone())
    };
    if let Some(l) = latest {
        if l.checkpoint.size == size {
            return Ok(l);
        }
    }
    let signed = shared.signer.sign(&Checkpoint { origin: shared.origin.clone(), size, root });
    let mut buf = Vec::with_capacity(signed.note.len() + 44);
    encode_record(FileKind::Checkpoints, cpf.next_seq, signed.note.as_bytes(), &mut buf);
    let path = cpf.path.clone();
    cpf.file.write_all(&buf).map_err(|e| Error::io("write", &path, e))?;
    cpf.file.sync_data().map_err(|e| Error::io("sync", &path, e))?;
    let (seq, at) = (cpf.next_seq, cpf.end);
    cpf.next_seq += 1;
    cpf.end += buf.len() as u64;
    let indexed = {
        let mut st = write_state(shared);
        st.latest = Some(signed.clone());
        st.checkpoint_count = cpf.next_seq;
        st.tree.put_checkpoint(seq, at)
    };
    if let Err(e) = indexed {
        // The checkpoint is stored; only its place in the index is not. Listing it fails
        // (the record found there is checked) until the next open rebuilds the index.
        tracing::error!(error = %e, "audit log: could not index a checkpoint; the next open rebuilds the index");
        if let Err(u) = shared.tree_sync.unmark() {
            tracing::error!(error = %u, "audit log: could not withdraw the tree files' mark");
        }
        return Ok(signed);
    }
    // The tree files are now good up to this signed size. Failing to record that costs only
    // a longer next open, so it is logged, not returned: the checkpoint itself is stored.
    // While the history check is running or has failed, the old mark stays (it is what that
    // check vouches for) or is gone (the next open must read everything).
    let checked = matches!(*shared.checked.lock().unwrap_or_else(|p| p.into_inner()), Checked::Passed);
    if checked {
        if let Err(e) = shared.tree_sync.sync_and_mark(Mark { size, end, checkpoints: cpf.next_seq, checkpoints_end: cpf.end }) {
            tracing::warn!(error = %e, "audit log: could not record the tree files' durable size; the next open reads more entries");
        }
    }
    Ok(signed)
}

fn writer_loop(shared: Arc<Shared>, mut file: File, rx: mpsc::Receiver<Request>, options: LogOptions) {
    let max_batch = options.max_batch.max(1);
    let mut last_tick = Instant::now();
    let mut since_checkpoint = 0u64;
    let mut batch: Vec<Request> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let first = match options.checkpoint_interval {
            Some(every) => match rx.recv_timeout(every.saturating_sub(last_tick.elapsed())) {
                Ok(r) => Some(r),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            },
            None => match rx.recv() {
                Ok(r) => Some(r),
                Err(_) => break,
            },
        };
        if let Some(first) = first {
            let mut bytes = first.bytes;
            let mut count = first.payloads.len();
            batch.push(first);
            while count < max_batch && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(r) => {
                        bytes += r.bytes;
                        count += r.payloads.len();
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
            let halted = match &*shared.checked.lock().unwrap_or_else(|p| p.into_inner()) {
                Checked::Failed(h) => Some(h.clone()),
                _ => None,
            };
            if let Some(h) = halted {
                for r in batch.drain(..) {
                    r.reply.send(Err(h.error()));
                }
                continue;
            }
            let (start, mut offset) = {
                let st = read_state(&shared);
                (st.tree.size(), st.tree.end())
            };
            buf.clear();
            let mut added = Vec::with_capacity(count);
            let mut firsts = Vec::with_capacity(batch.len());
            let mut index = start;
            for r in &batch {
                firsts.push(index);
                for (p, hash) in &r.payloads {
                    encode_record_hashed(index, p, hash, &mut buf);
                    added.push((*hash, offset));
                    offset += RECORD_OVERHEAD + p.len() as u64;
                    index += 1;
                }
            }
            // The tree files first: if they cannot be written, nothing of the batch is.
            let written = {
                let st = read_state(&shared);
                let planned = st.tree.plan(&added, offset);
                st.tree.write(&planned).map(|()| planned).map_err(|e| std::io::Error::other(e.to_string()))
            }
            .and_then(|planned| file.write_all(&buf).and_then(|()| file.sync_data()).map(|()| planned));
            let planned = match written {
                Ok(planned) => planned,
                Err(e) => {
                    // The file may now end in part of this batch; nothing more may follow it.
                    // Reopening cuts it (none of it was acknowledged).
                    tracing::error!(error = %e, "audit log: write failed; the writer stops");
                    shared.failed.store(true, Ordering::SeqCst);
                    for r in batch.drain(..) {
                        r.reply.send(Err(Error::io("append to", &shared.entries_path, std::io::Error::new(e.kind(), e.to_string()))));
                    }
                    break;
                }
            };
            write_state(&shared).tree.publish(planned);
            since_checkpoint += count as u64;
            for (r, first_index) in batch.drain(..).zip(firsts) {
                r.reply.send(Ok(first_index));
            }
        }
        let due_by_count = options.checkpoint_every_entries.is_some_and(|n| since_checkpoint >= n);
        let due_by_time = options.checkpoint_interval.is_some_and(|d| last_tick.elapsed() >= d);
        if due_by_count || due_by_time {
            last_tick = Instant::now();
            if since_checkpoint > 0 {
                since_checkpoint = 0;
                if let Err(e) = issue_checkpoint(&shared) {
                    tracing::error!(error = %e, "audit log: could not issue a checkpoint");
                }
            }
        }
    }
    // On a clean shutdown, sign what is there, so the tail is covered.
    if !shared.failed.load(Ordering::SeqCst)
        && (options.checkpoint_interval.is_some() || options.checkpoint_every_entries.is_some())
    {
        if let Err(e) = issue_checkpoint(&shared) {
            tracing::error!(error = %e, "audit log: could not issue the closing checkpoint");
        }
    }
}
