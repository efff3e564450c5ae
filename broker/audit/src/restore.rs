//! Putting a log back from a copy, after the live one was found altered or damaged.
//!
//! An operator in an incident should not have to get a sequence of copies and renames right
//! by hand, where one slip overwrites the evidence or installs a copy nobody checked.
//! [`restore`] does it in an order that a crash at any point leaves recoverable:
//!
//! 1. Take the live log's lock: a running broker holds it, and the restore is refused.
//! 2. Verify the copy offline (every entry against every signed checkpoint, under the same
//!    key), and refuse it if it does not verify: nothing has been changed yet.
//! 3. Copy its files into a staging folder beside the live one, each fsync'd; not the
//!    derived files (`tree.*`, `refs.sqlite*`), which the log rebuilds from the entries.
//! 4. Open the staged log, which reads and checks every entry again, append the caller's
//!    recovery entry (so the log itself says it was restored, and by whom) and close it,
//!    which signs a checkpoint covering it.
//! 5. Swap the staged folder and the live one in one atomic `renameat2(RENAME_EXCHANGE)`,
//!    then rename the old log to `<live>-evidence-<UTC time>`. It is never deleted.
//!
//! A crash before step 5 leaves the live log as it was and the staging folder, which the
//! next run refuses to touch (the operator moves it aside). A crash between the swap and
//! the rename leaves the restored log live and the old one in the staging folder's name.
use std::fs;
use std::path::{Path, PathBuf};

use cleave_keys::Key32;

use crate::checkpoint::CheckpointSigner;
use crate::entry::Entry;
use crate::error::Error;
use crate::log::{AuditLog, LogOptions};
use crate::verify::{verify_dir, VerifyError};
use crate::{index, nodes, store};

/// What [`restore`] did.
#[derive(Debug)]
#[non_exhaustive]
pub struct Restored {
    /// Entries in the restored log, the recovery entry included.
    pub entries: u64,
    /// The leaf index of the recovery entry.
    pub recovery_leaf: u64,
    /// Where the log it replaced now is (none if there was no live log).
    pub evidence: Option<PathBuf>,
}

/// Why a restore did not happen. Nothing was changed in any of these cases.
#[derive(Debug)]
#[non_exhaustive]
pub enum RestoreError {
    /// The copy does not verify under this log's key; it is not installed.
    CopyDoesNotVerify(VerifyError),
    /// Anything else: a running broker holds the log, an interrupted restore's staging
    /// folder is in the way, the copy holds something an audit folder does not, a disk error.
    Refused(Error),
}

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreError::CopyDoesNotVerify(e) => write!(f, "the copy does not verify either, so it was not restored ({e})"),
            RestoreError::Refused(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for RestoreError {}

impl From<Error> for RestoreError {
    fn from(e: Error) -> Self {
        RestoreError::Refused(e)
    }
}

/// Replaces the log in `live` by the verified copy in `copy`, appending `recovery` to it,
/// and keeps the replaced log as evidence beside it. See the module documentation for the
/// order of steps and what a crash leaves.
pub fn restore(live: &Path, copy: &Path, options: LogOptions, signing_key: &Key32, recovery: &Entry) -> Result<Restored, RestoreError> {
    let refuse = |why: String| RestoreError::Refused(Error::Restore(why));
    let (Some(parent), Some(name)) = (live.parent(), live.file_name().and_then(|n| n.to_str())) else {
        return Err(refuse(format!("{} is not a folder path with a name", live.display())));
    };
    let copy = fs::canonicalize(copy).map_err(|e| Error::io("open the copy", copy, e))?;
    if !copy.is_dir() {
        return Err(refuse(format!("{} is not a folder", copy.display())));
    }
    let live_exists = live.is_dir();
    if live_exists {
        let live_abs = fs::canonicalize(live).map_err(|e| Error::io("open", live, e))?;
        if copy.starts_with(&live_abs) {
            return Err(refuse(format!("{} is inside the live log; restore from a copy kept elsewhere", copy.display())));
        }
    }
    // 1. The live log's lock, held to the end (it moves with the folder it is in).
    let _held = if live_exists { Some(AuditLog::lock_dir(live)?) } else { None };
    let staging = parent.join(format!("{name}.restoring"));
    if staging.exists() {
        return Err(refuse(format!(
            "{} exists: an earlier restore was interrupted, and it may hold the log that restore replaced; move it somewhere safe and run again",
            staging.display()
        )));
    }

    // 2. The copy verifies, under the same key, or nothing happens.
    let verifier = CheckpointSigner::from_audit_signing_key(&options.origin, signing_key)?.verifier();
    verify_dir(&copy, &verifier, None).map_err(RestoreError::CopyDoesNotVerify)?;

    // 3. Staged beside the live log (same filesystem, so the swap is one rename).
    let files = files_to_copy(&copy)?;
    cleave_keys::durable::create_private_dir(&staging).map_err(|e| Error::io("create", &staging, e))?;
    let staged = (|| -> Result<(u64, u64), Error> {
        for f in &files {
            // Streamed: an entries file of years can be gigabytes.
            let (from, to) = (copy.join(f), staging.join(f));
            let mut src = fs::File::open(&from).map_err(|e| Error::io("read", &from, e))?;
            let mut dst = cleave_keys::durable::create_new_with_mode(&to, 0o600).map_err(|e| Error::io("create", &to, e))?;
            std::io::copy(&mut src, &mut dst).map_err(|e| Error::io("copy into", &to, e))?;
            dst.sync_all().map_err(|e| Error::io("sync", &to, e))?;
        }
        cleave_keys::durable::fsync_dir(&staging).map_err(|e| Error::io("sync", &staging, e))?;
        // 4. The staged log opens (checking every entry), records the restore, and signs a
        // checkpoint over it when dropped here.
        let log = AuditLog::open(&staging, options, signing_key)?;
        let leaf = log.append(recovery)?;
        Ok((log.size(), leaf))
    })();
    let (entries, recovery_leaf) = staged.inspect_err(|_| {
        let _ = fs::remove_dir_all(&staging);
    })?;

    // 5. Swap, then name the old log as evidence.
    let evidence = if live_exists {
        rustix::fs::renameat_with(rustix::fs::CWD, &staging, rustix::fs::CWD, live, rustix::fs::RenameFlags::EXCHANGE)
            .map_err(|e| Error::io("swap the restored log into", live, e.into()))?;
        let evidence = evidence_name(parent, name);
        fs::rename(&staging, &evidence).map_err(|e| Error::io("rename the replaced log to", &evidence, e))?;
        Some(evidence)
    } else {
        fs::rename(&staging, live).map_err(|e| Error::io("rename the restored log to", live, e))?;
        None
    };
    cleave_keys::durable::fsync_dir(parent).map_err(|e| Error::io("sync", parent, e))?;
    Ok(Restored { entries, recovery_leaf, evidence })
}

/// The names to copy from an audit folder: its own files, not the derived ones nor the lock.
/// Anything that is not a plain file is refused rather than skipped: a copy with folders or
/// links in it is not what the log wrote.
fn files_to_copy(copy: &Path) -> Result<Vec<String>, Error> {
    let mut names = Vec::new();
    for e in fs::read_dir(copy).map_err(|e| Error::io("list", copy, e))? {
        let e = e.map_err(|e| Error::io("list", copy, e))?;
        let name = e.file_name().into_string().map_err(|_| Error::Restore(format!("{} holds a file whose name is not UTF-8", copy.display())))?;
        let kind = e.file_type().map_err(|err| Error::io("inspect", &e.path(), err))?;
        if !kind.is_file() {
            return Err(Error::Restore(format!("{} holds {name}, which is not a plain file; an audit folder holds only files", copy.display())));
        }
        let derived = name.starts_with(index::INDEX_FILE) || [nodes::NODES_FILE, nodes::OFFSETS_FILE, nodes::CHECKPOINT_INDEX_FILE, nodes::TREE_META_FILE].contains(&name.as_str());
        if name != store::LOCK_FILE && !derived {
            names.push(name);
        }
    }
    if !names.iter().any(|n| n == store::ENTRIES_FILE) {
        return Err(Error::Restore(format!("{} holds no {}; it is not a copy of an audit folder", copy.display(), store::ENTRIES_FILE)));
    }
    names.sort();
    Ok(names)
}

/// `<parent>/<name>-evidence-<UTC time>`, with a counter if that exists already.
fn evidence_name(parent: &Path, name: &str) -> PathBuf {
    let t = time::OffsetDateTime::now_utc();
    let stamp = format!("{:04}{:02}{:02}T{:02}{:02}{:02}Z", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second());
    let mut path = parent.join(format!("{name}-evidence-{stamp}"));
    let mut n = 2;
    while path.exists() {
        path = parent.join(format!("{name}-evidence-{stamp}-{n}"));
        n += 1;
    }
    path
}
