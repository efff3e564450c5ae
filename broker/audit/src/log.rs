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
use crate::merkle::{Hash, Tree};
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
    tree: Tree,
    /// Byte offset of each record in the entries file, plus the end offset.
    offsets: Vec<u64>,
    checkpoints: Vec<SignedCheckpoint>,
}

struct CheckpointFile {
    file: File,
    path: PathBuf,
    next_seq: u64,
}

struct Shared {
    entries_path: PathBuf,
    origin: String,
    signer: CheckpointSigner,
    state: RwLock<State>,
    reader: File,
    checkpoint_file: Mutex<CheckpointFile>,
    failed: AtomicBool,
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
    recovery: Vec<Recovery>,
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
        let offs: Vec<u64> = st.offsets[start as usize..=end as usize].to_vec();
        let leaves: Vec<Hash> = (start..end).filter_map(|i| st.tree.leaf(i)).collect();
        (offs, leaves)
    };
    if offsets.len() < 2 {
        return Ok(Vec::new());
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

impl AuditLog {
    /// Open (or create) the log in `dir`, a directory of its own apart from both stores.
    /// `signing_key` is the `KeyPurpose::AuditSigning` key. Repairs a crash tail (see the
    /// module documentation) and checks every stored checkpoint against the entries.
    pub fn open(dir: &Path, options: LogOptions, signing_key: &Key32) -> Result<AuditLog, Error> {
        check_origin(&options.origin)?;
        durable::create_private_dir(dir).map_err(|e| Error::io("create", dir, e))?;
        let lock_path = dir.join(store::LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("open", &lock_path, e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| Error::Locked(dir.to_owned()))?;

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

        // Checkpoints first: they decide how much of the entries file may be cut.
        let cp_path = dir.join(store::CHECKPOINTS_FILE);
        let cp_file = open_or_create(&cp_path, FileKind::Checkpoints)?;
        let mut checkpoints: Vec<SignedCheckpoint> = Vec::new();
        let mut reader = RecordReader::new(&cp_file, FileKind::Checkpoints)
            .map_err(|e| Error::io("read", &cp_path, e))?
            .ok_or_else(|| Error::UnknownFormat(cp_path.clone()))?;
        loop {
            match reader.next_record().map_err(|e| Error::io("read", &cp_path, e))? {
                Next::Record(r) => {
                    let note = String::from_utf8(r.payload)
                        .map_err(|_| Error::CheckpointMismatch { seq: r.seq, what: "not UTF-8" })?;
                    let checkpoint = note_text(&note)
                        .and_then(|t| Checkpoint::parse_body(t).ok())
                        .ok_or(Error::CheckpointMismatch { seq: r.seq, what: "malformed" })?;
                    checkpoints.push(SignedCheckpoint { checkpoint, note });
                }
                Next::Stop(s) => {
                    let torn = s.at_end && matches!(s.damage, Damage::Incomplete | Damage::HashMismatch);
                    if !torn {
                        return Err(Error::Corrupt { file: "checkpoints", index: s.seq, what: s.damage.describe() });
                    }
                    let len = cp_file.metadata().map_err(|e| Error::io("stat", &cp_path, e))?.len();
                    truncate(&cp_file, &cp_path, s.offset)?;
                    recovery.push(Recovery { file: "checkpoints", first_dropped: s.seq, dropped_bytes: len - s.offset });
                    break;
                }
                Next::End => break,
            }
        }
        // Checking every signature of a long-lived log would make opening slow; the newest
        // one vouches for all the others through the roots checked below, and the auditor's
        // verification checks them all.
        if let Some(last) = checkpoints.last() {
            let seq = checkpoints.len() as u64 - 1;
            if verifier.verify(&last.note).ok().as_ref() != Some(&last.checkpoint) {
                return Err(Error::CheckpointMismatch { seq, what: "not signed by this log's key" });
            }
        }
        let signed_size = checkpoints.last().map_or(0, |c| c.checkpoint.size);

        let entries_path = dir.join(store::ENTRIES_FILE);
        let entries_file = open_or_create(&entries_path, FileKind::Entries)?;
        let mut tree = Tree::new();
        let mut offsets = Vec::new();
        let mut reader = RecordReader::new(&entries_file, FileKind::Entries)
            .map_err(|e| Error::io("read", &entries_path, e))?
            .ok_or_else(|| Error::UnknownFormat(entries_path.clone()))?;
        let mut end = store::ENTRIES_HEADER.len() as u64;
        loop {
            match reader.next_record().map_err(|e| Error::io("read", &entries_path, e))? {
                Next::Record(r) => {
                    tree.push_leaf_hash(r.hash);
                    offsets.push(r.offset);
                    end = r.offset + RECORD_OVERHEAD + r.payload.len() as u64;
                }
                Next::Stop(s) => {
                    if s.seq < signed_size {
                        return Err(Error::Corrupt { file: "entries", index: s.seq, what: s.damage.describe() });
                    }
                    let len = entries_file.metadata().map_err(|e| Error::io("stat", &entries_path, e))?.len();
                    truncate(&entries_file, &entries_path, s.offset)?;
                    recovery.push(Recovery { file: "entries", first_dropped: s.seq, dropped_bytes: len - s.offset });
                    end = s.offset;
                    break;
                }
                Next::End => break,
            }
        }
        if tree.size() < signed_size {
            return Err(Error::Corrupt { file: "entries", index: tree.size(), what: "entries covered by a signed checkpoint are missing" });
        }
        let mut prev = 0;
        for (seq, c) in checkpoints.iter().enumerate() {
            if c.checkpoint.size < prev {
                return Err(Error::CheckpointMismatch { seq: seq as u64, what: "the tree shrank" });
            }
            prev = c.checkpoint.size;
            if c.checkpoint.origin != options.origin || tree.root(c.checkpoint.size) != Some(c.checkpoint.root) {
                return Err(Error::CheckpointMismatch { seq: seq as u64, what: "the root does not match the entries" });
            }
        }
        offsets.push(end);

        let reader = File::open(&entries_path).map_err(|e| Error::io("open", &entries_path, e))?;
        let next_seq = checkpoints.len() as u64;
        let shared = Arc::new(Shared {
            entries_path,
            origin: options.origin.clone(),
            signer,
            state: RwLock::new(State { tree, offsets, checkpoints }),
            reader,
            checkpoint_file: Mutex::new(CheckpointFile { file: cp_file, path: cp_path, next_seq }),
            failed: AtomicBool::new(false),
            _lock: lock,
        });
        let (tx, rx) = mpsc::channel();
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("cleave-audit-writer".into())
            .spawn(move || writer_loop(writer_shared, entries_file, rx, options))
            .map_err(|e| Error::io("start writer thread for", dir, e))?;
        let log = AuditLog { shared, tx: Some(tx), writer: Some(writer), recovery };
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
        read_state(&self.shared).checkpoints.last().cloned()
    }

    /// Stored checkpoints from sequence number `start`, at most `limit`.
    pub fn checkpoints(&self, start: u64, limit: usize) -> Vec<RawCheckpoint> {
        let st = read_state(&self.shared);
        st.checkpoints
            .iter()
            .enumerate()
            .skip(usize::try_from(start).unwrap_or(usize::MAX))
            .take(limit)
            .map(|(seq, c)| RawCheckpoint { seq: seq as u64, note: c.note.clone() })
            .collect()
    }

    /// The root hash of the first `size` entries.
    pub fn root(&self, size: u64) -> Result<Hash, Error> {
        let st = read_state(&self.shared);
        st.tree.root(size).ok_or(Error::OutOfRange { what: "tree size", asked: size, size: st.tree.size() })
    }

    /// The RFC 9162 inclusion proof of entry `index` in the tree of `size` entries.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, Error> {
        let st = read_state(&self.shared);
        st.tree
            .inclusion_proof(index, size)
            .ok_or(Error::OutOfRange { what: "leaf index or tree size", asked: index.max(size), size: st.tree.size() })
    }

    /// The RFC 9162 consistency proof between the trees of `old` and `new` entries.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, Error> {
        let st = read_state(&self.shared);
        st.tree
            .consistency_proof(old, new)
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
    /// per call; `Page::next` continues the scan.
    pub fn list(&self, query: &Query) -> Result<Page, Error> {
        let limit = match query.limit {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        };
        let size = self.size();
        let stop = query.start.saturating_add(MAX_SCAN).min(size);
        let mut entries = Vec::new();
        let mut cursor = query.start;
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
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // Closing the channel stops the writer after it has answered everything queued.
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn issue_checkpoint(shared: &Shared) -> Result<SignedCheckpoint, Error> {
    let mut cpf = lock_cp(shared);
    let (size, root, latest) = {
        let st = read_state(shared);
        let size = st.tree.size();
        // Invariant: the root of the tree's own size always exists.
        let root = st.tree.root(size).unwrap_or_default();
        (size, root, st.checkpoints.last().cloned())
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
    cpf.next_seq += 1;
    write_state(shared).checkpoints.push(signed.clone());
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
            let (start, mut offset) = {
                let st = read_state(&shared);
                (st.tree.size(), st.offsets.last().copied().unwrap_or(0))
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
            let written = file.write_all(&buf).and_then(|()| file.sync_data());
            if let Err(e) = written {
                // The file may now end in part of this batch; nothing more may follow it.
                // Reopening cuts it (none of it was acknowledged).
                tracing::error!(error = %e, "audit log: write failed; the writer stops");
                shared.failed.store(true, Ordering::SeqCst);
                for r in batch.drain(..) {
                    r.reply.send(Err(Error::io("append to", &shared.entries_path, std::io::Error::new(e.kind(), e.to_string()))));
                }
                break;
            }
            {
                let mut st = write_state(&shared);
                st.offsets.pop();
                for (hash, off) in &added {
                    st.tree.push_leaf_hash(*hash);
                    st.offsets.push(*off);
                }
                st.offsets.push(offset);
            }
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
