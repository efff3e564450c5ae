//! The auditor's verification: recompute the tree from the entries, check every checkpoint
//! signature and root, check consistency with the checkpoint the auditor saw last, and
//! name the first bad leaf index or checkpoint.
//!
//! It needs only the entries and checkpoints (as served by the broker, or read from a log
//! directory with [`verify_dir`]) and the trusted public key: nothing of the running log.
//!
//! What it can pin down: a record damaged on disk (its own hash no longer matches) is named
//! exactly; so is a removed or reordered record (leaf indexes are in every record) and a
//! removed checkpoint (checkpoints are numbered). An entry rewritten together with a
//! recomputed record hash is caught by the first signed checkpoint covering it, and the
//! report gives the range between the last good checkpoint and that one: no signature
//! covers single entries, so no verifier can narrow it further. Entries after the newest
//! checkpoint are reported as unsigned; the broker issues checkpoints every few seconds.
use std::fs::File;
use std::path::Path;

use crate::checkpoint::{Checkpoint, CheckpointVerifier};
use crate::entry::Entry;
use crate::log::{RawCheckpoint, RawEntry};
use crate::merkle::{verify_consistency, Tree};
use crate::store::{self, FileKind, Next, RecordReader};
use crate::Error;

/// One thing found wrong. Indexes are leaf indexes; `seq` numbers checkpoints from 0.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The entry's stored bytes are damaged, torn or not a canonical entry.
    EntryDamaged { index: u64, what: &'static str },
    /// The entry with this index is not in its place: removed, moved later, or cut off.
    EntryMissing { index: u64 },
    /// An earlier entry stands where this index should be (moved or copied here).
    EntryOutOfOrder { index: u64, found: u64 },
    /// At least one entry in `[from, to)` was changed: checkpoint `seq` (size `to`) does
    /// not match the recomputed root, while everything up to `from` is vouched for.
    RootMismatch { seq: u64, from: u64, to: u64 },
    /// Checkpoint `seq` vouches for entries from `first_missing` on, which are not there.
    EntriesMissingUnderCheckpoint { seq: u64, first_missing: u64 },
    /// Checkpoint `seq` is missing from the sequence.
    CheckpointMissing { seq: u64 },
    /// Checkpoint `seq` is damaged on disk or out of place.
    CheckpointDamaged { seq: u64, what: &'static str },
    /// Checkpoint `seq` is not validly signed by the trusted key (edited or forged).
    CheckpointBadSignature { seq: u64 },
    /// Checkpoint `seq` has a smaller tree than an earlier one.
    CheckpointShrank { seq: u64 },
    /// The checkpoint the auditor saw last is not validly signed by the trusted key.
    LastSeenInvalid,
    /// The auditor saw a checkpoint of a larger tree than the log now has: the log was
    /// rolled back or its newest checkpoints were removed.
    LastSeenAhead { size: u64 },
    /// The auditor's last checkpoint is not a prefix of the log now: history was rewritten.
    LastSeenInconsistent { size: u64 },
}

impl Problem {
    /// The leaf index (or start of the leaf range) where the log first goes wrong, when
    /// the problem is about entries; `None` for problems about checkpoints only.
    pub fn leaf_index(&self) -> Option<u64> {
        match *self {
            Problem::EntryDamaged { index, .. }
            | Problem::EntryMissing { index }
            | Problem::EntryOutOfOrder { index, .. } => Some(index),
            Problem::RootMismatch { from, .. } => Some(from),
            Problem::EntriesMissingUnderCheckpoint { first_missing, .. } => Some(first_missing),
            _ => None,
        }
    }

    /// The checkpoint this problem is about, if any.
    pub fn checkpoint_seq(&self) -> Option<u64> {
        match *self {
            Problem::RootMismatch { seq, .. }
            | Problem::EntriesMissingUnderCheckpoint { seq, .. }
            | Problem::CheckpointMissing { seq }
            | Problem::CheckpointDamaged { seq, .. }
            | Problem::CheckpointBadSignature { seq }
            | Problem::CheckpointShrank { seq } => Some(seq),
            _ => None,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::EntryDamaged { index, what } => write!(f, "entry {index} is damaged: {what}"),
            Problem::EntryMissing { index } => write!(f, "entry {index} is missing"),
            Problem::EntryOutOfOrder { index, found } => write!(f, "entry {found} stands where entry {index} should be"),
            Problem::RootMismatch { seq, from, to } => write!(
                f,
                "checkpoint {seq} does not match the entries: an entry in {from}..{to} was changed"
            ),
            Problem::EntriesMissingUnderCheckpoint { seq, first_missing } => {
                write!(f, "checkpoint {seq} covers entries from {first_missing} on, which are missing")
            }
            Problem::CheckpointMissing { seq } => write!(f, "checkpoint {seq} is missing"),
            Problem::CheckpointDamaged { seq, what } => write!(f, "checkpoint {seq} is damaged: {what}"),
            Problem::CheckpointBadSignature { seq } => {
                write!(f, "checkpoint {seq} is not validly signed by the trusted key (edited or forged)")
            }
            Problem::CheckpointShrank { seq } => write!(f, "checkpoint {seq} has a smaller tree than an earlier one"),
            Problem::LastSeenInvalid => write!(f, "the last checkpoint you saw is not signed by the trusted key"),
            Problem::LastSeenAhead { size } => write!(
                f,
                "you saw a checkpoint of {size} entries but the log is now smaller: it was rolled back"
            ),
            Problem::LastSeenInconsistent { size } => write!(
                f,
                "the log is not an extension of the checkpoint of {size} entries you saw: history was rewritten"
            ),
        }
    }
}

/// What a successful verification established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries read and recomputed.
    pub entries: u64,
    /// Checkpoints whose signature and root verified.
    pub checkpoints: u64,
    /// The newest verified checkpoint: remember its note as "last seen" for next time.
    pub newest: Option<Checkpoint>,
    /// Entries after the newest checkpoint: present, but not yet vouched for by a signature.
    pub unsigned_tail: u64,
}

/// Verification failed; `problems` are ordered so that the first is the earliest point
/// where the log goes wrong (checkpoint-only problems first, then by leaf index).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyFailure {
    pub problems: Vec<Problem>,
}

impl VerifyFailure {
    /// The first problem: the one to report.
    pub fn first(&self) -> &Problem {
        // Invariant: a failure is only built with at least one problem.
        &self.problems[0]
    }
}

impl std::fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the audit log does not verify: {}", self.first())?;
        if self.problems.len() > 1 {
            write!(f, " (and {} more problems)", self.problems.len() - 1)?;
        }
        Ok(())
    }
}

impl std::error::Error for VerifyFailure {}

/// Verification input errors that are not findings about the log.
#[derive(Debug)]
pub enum VerifyError {
    /// The log is not intact; the failure names where.
    Failed(VerifyFailure),
    /// The files could not be read at all.
    Unreadable(Error),
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyError::Failed(x) => x.fmt(f),
            VerifyError::Unreadable(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for VerifyError {}

impl VerifyError {
    /// The failure, if verification ran and found problems.
    pub fn failure(&self) -> Option<&VerifyFailure> {
        match self {
            VerifyError::Failed(f) => Some(f),
            VerifyError::Unreadable(_) => None,
        }
    }
}

struct Verifier<'a> {
    trusted: &'a CheckpointVerifier,
    tree: Tree,
    entry_problem: Option<Problem>,
    problems: Vec<Problem>,
}

impl<'a> Verifier<'a> {
    fn new(trusted: &'a CheckpointVerifier) -> Self {
        Verifier { trusted, tree: Tree::new(), entry_problem: None, problems: Vec::new() }
    }

    /// Feed the next entry; returns false once entries stopped making sense.
    fn entry(&mut self, raw: &RawEntry) -> bool {
        if self.entry_problem.is_some() {
            return false;
        }
        let expected = self.tree.size();
        if raw.index != expected {
            self.entry_problem = Some(if raw.index > expected {
                Problem::EntryMissing { index: expected }
            } else {
                Problem::EntryOutOfOrder { index: expected, found: raw.index }
            });
            return false;
        }
        if Entry::from_canonical_bytes(&raw.bytes, raw.index).is_err() {
            self.entry_problem = Some(Problem::EntryDamaged { index: expected, what: "not a canonical entry" });
            return false;
        }
        self.tree.push_leaf_hash(crate::merkle::leaf_hash(&raw.bytes));
        true
    }

    fn entry_damage(&mut self, p: Problem) {
        if self.entry_problem.is_none() {
            self.entry_problem = Some(p);
        }
    }

    fn finish(
        mut self,
        checkpoints: &[RawCheckpoint],
        checkpoint_damage: Option<Problem>,
        last_seen: Option<&str>,
    ) -> Result<VerifyReport, VerifyFailure> {
        let mut expected_seq = 0u64;
        let mut good_size = 0u64;
        let mut newest: Option<Checkpoint> = None;
        let mut verified = 0u64;
        for raw in checkpoints {
            if raw.seq != expected_seq {
                if raw.seq > expected_seq {
                    self.problems.push(Problem::CheckpointMissing { seq: expected_seq });
                } else {
                    self.problems.push(Problem::CheckpointDamaged { seq: expected_seq, what: "out of sequence" });
                }
            }
            expected_seq = raw.seq + 1;
            let seq = raw.seq;
            let Ok(cp) = self.trusted.verify(&raw.note) else {
                self.problems.push(Problem::CheckpointBadSignature { seq });
                continue;
            };
            if cp.size < good_size {
                self.problems.push(Problem::CheckpointShrank { seq });
                continue;
            }
            match self.tree.root(cp.size) {
                None => {
                    if self.entry_problem.is_none() {
                        self.problems.push(Problem::EntriesMissingUnderCheckpoint { seq, first_missing: self.tree.size() });
                    }
                }
                Some(root) if root != cp.root => {
                    self.problems.push(Problem::RootMismatch { seq, from: good_size, to: cp.size });
                }
                Some(_) => {
                    good_size = cp.size;
                    verified += 1;
                    newest = Some(cp);
                }
            }
        }
        if let Some(p) = checkpoint_damage {
            self.problems.push(p);
        }
        if let Some(note) = last_seen {
            match self.trusted.verify(note) {
                Err(_) => self.problems.push(Problem::LastSeenInvalid),
                Ok(last) => {
                    let newest_size = newest.as_ref().map_or(0, |c| c.size);
                    if last.size > newest_size {
                        self.problems.push(Problem::LastSeenAhead { size: last.size });
                    } else if let Some(n) = &newest {
                        let proof = self.tree.consistency_proof(last.size, n.size).unwrap_or_default();
                        if !verify_consistency(last.size, n.size, &last.root, &n.root, &proof) {
                            self.problems.push(Problem::LastSeenInconsistent { size: last.size });
                        }
                    }
                }
            }
        }
        if let Some(p) = self.entry_problem.take() {
            self.problems.push(p);
        }
        if self.problems.is_empty() {
            let entries = self.tree.size();
            let signed = newest.as_ref().map_or(0, |c| c.size);
            return Ok(VerifyReport { entries, checkpoints: verified, newest, unsigned_tail: entries - signed });
        }
        self.problems.sort_by_key(|p| p.leaf_index().map_or((0, 0), |i| (1, i)));
        Err(VerifyFailure { problems: self.problems })
    }
}

/// Verify entries and checkpoints obtained from the broker. `entries` must be every entry
/// from index 0, in order; `checkpoints` every stored checkpoint, in order; `last_seen`
/// is the signed note of the newest checkpoint the auditor verified before, if any.
pub fn verify_log<I: IntoIterator<Item = RawEntry>>(
    entries: I,
    checkpoints: &[RawCheckpoint],
    trusted: &CheckpointVerifier,
    last_seen: Option<&str>,
) -> Result<VerifyReport, VerifyFailure> {
    let mut v = Verifier::new(trusted);
    for raw in entries {
        if !v.entry(&raw) {
            break;
        }
    }
    v.finish(checkpoints, None, last_seen)
}

/// Verify a log directory as it is on disk (a copy, or a log not open in a broker: a
/// broker appending meanwhile may leave a half-written tail, reported as damage). Every
/// byte is checked: a record that is torn, altered, moved or missing is named.
pub fn verify_dir(dir: &Path, trusted: &CheckpointVerifier, last_seen: Option<&str>) -> Result<VerifyReport, VerifyError> {
    let open = |name: &str, kind: FileKind| -> Result<RecordReader<File>, VerifyError> {
        let path = dir.join(name);
        let f = File::open(&path).map_err(|e| VerifyError::Unreadable(Error::io("open", &path, e)))?;
        RecordReader::new(f, kind)
            .map_err(|e| VerifyError::Unreadable(Error::io("read", &path, e)))?
            .ok_or(VerifyError::Unreadable(Error::UnknownFormat(path)))
    };
    let read_err = |name: &str, e: std::io::Error| VerifyError::Unreadable(Error::io("read", &dir.join(name), e));

    let mut checkpoints = Vec::new();
    let mut checkpoint_damage = None;
    let mut r = open(store::CHECKPOINTS_FILE, FileKind::Checkpoints)?;
    loop {
        match r.next_record().map_err(|e| read_err(store::CHECKPOINTS_FILE, e))? {
            Next::Record(rec) => match String::from_utf8(rec.payload) {
                Ok(note) => checkpoints.push(RawCheckpoint { seq: rec.seq, note }),
                Err(_) => {
                    checkpoint_damage = Some(Problem::CheckpointDamaged { seq: rec.seq, what: "not UTF-8" });
                    break;
                }
            },
            Next::Stop(s) => {
                checkpoint_damage = Some(match s.damage {
                    store::Damage::WrongSequence { found } if found > s.seq => Problem::CheckpointMissing { seq: s.seq },
                    d => Problem::CheckpointDamaged { seq: s.seq, what: d.describe() },
                });
                break;
            }
            Next::End => break,
        }
    }

    let mut v = Verifier::new(trusted);
    let mut r = open(store::ENTRIES_FILE, FileKind::Entries)?;
    loop {
        match r.next_record().map_err(|e| read_err(store::ENTRIES_FILE, e))? {
            Next::Record(rec) => {
                if !v.entry(&RawEntry { index: rec.seq, bytes: rec.payload }) {
                    break;
                }
            }
            Next::Stop(s) => {
                v.entry_damage(match s.damage {
                    store::Damage::WrongSequence { found } if found > s.seq => Problem::EntryMissing { index: s.seq },
                    store::Damage::WrongSequence { found } => Problem::EntryOutOfOrder { index: s.seq, found },
                    d => Problem::EntryDamaged { index: s.seq, what: d.describe() },
                });
                break;
            }
            Next::End => break,
        }
    }
    v.finish(&checkpoints, checkpoint_damage, last_seen).map_err(VerifyError::Failed)
}
