//! `cleave push`: send a file or a directory tree of DICOM files, resumably.
//!
//! A journal in the profile's state directory (`push-journal.json`, 0600, rewritten
//! atomically after every file) records each file that reached a final outcome with its
//! size, modification time and BLAKE3 hash. A re-run skips a file only if all three still
//! match, so an edited or replaced file is sent again. `--restart` ignores the journal.
//! The journal holds local paths and hashes, never file contents.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dicomweb::StowOutcome;
use crate::error::{Error, Result};
use crate::http::Client;
use crate::profile::write_private;

/// One file as the journal knows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JournalEntry {
    pub size: u64,
    pub mtime_ns: i128,
    pub blake3: String,
    pub outcome: String,
}

/// The push journal.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    pub version: u32,
    pub files: BTreeMap<PathBuf, JournalEntry>,
}

/// What happened to one file in this run.
#[derive(Clone, Debug, Serialize)]
pub struct FileReport {
    pub path: PathBuf,
    #[serde(flatten)]
    pub outcome: PushOutcome,
}

/// A file's outcome in this run.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum PushOutcome {
    /// Sent before (journal matches); not sent again.
    Skipped,
    Stored,
    AlreadyStored,
    Rejected { reason: String },
}

/// All regular files under `root` (or `root` itself), sorted, symlinks not followed.
pub fn collect_files(root: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::symlink_metadata(root).map_err(|e| Error::io("reading", root, e))?;
    if meta.is_file() {
        return Ok(vec![root.to_owned()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("listing", &dir, e))?;
            let ft = entry.file_type().map_err(|e| Error::io("reading", &entry.path(), e))?;
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

fn journal_path(state_dir: &Path) -> PathBuf {
    state_dir.join("push-journal.json")
}

/// Load the journal (empty if absent or `restart`).
pub fn load_journal(state_dir: &Path, restart: bool) -> Result<Journal> {
    let path = journal_path(state_dir);
    if restart {
        return Ok(Journal { version: 1, ..Journal::default() });
    }
    match std::fs::read(&path) {
        Ok(b) => {
            let j: Journal = serde_json::from_slice(&b)
                .map_err(|_| Error::Profile(format!("{} is damaged; run `cleave push --restart` to start over", path.display())))?;
            if j.version != 1 {
                return Err(Error::Profile(format!("{} has an unknown version; run `cleave push --restart`", path.display())));
            }
            Ok(j)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal { version: 1, ..Journal::default() }),
        Err(e) => Err(Error::io("reading", &path, e)),
    }
}

fn save_journal(state_dir: &Path, j: &Journal) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(j).map_err(|e| Error::Profile(format!("cannot encode the push journal: {e}")))?;
    write_private(&journal_path(state_dir), &bytes)
}

fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// Push `files`, calling `progress` after each; the journal is saved after every file so
/// a kill loses at most the file in flight (which the server then reports as already
/// stored on the next run).
pub fn push(
    client: &Client,
    state_dir: &Path,
    files: &[PathBuf],
    restart: bool,
    mut progress: impl FnMut(&FileReport, u64),
) -> Result<Vec<FileReport>> {
    let mut journal = load_journal(state_dir, restart)?;
    let mut reports = Vec::with_capacity(files.len());
    for path in files {
        let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
        let meta = std::fs::metadata(path).map_err(|e| Error::io("reading", path, e))?;
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        let entry = JournalEntry {
            size: bytes.len() as u64,
            mtime_ns: mtime_ns(&meta),
            blake3: blake3::hash(&bytes).to_hex().to_string(),
            outcome: String::new(),
        };
        let seen = journal.files.get(&key).is_some_and(|j| j.size == entry.size && j.mtime_ns == entry.mtime_ns && j.blake3 == entry.blake3);
        let size = entry.size;
        let outcome = if seen {
            PushOutcome::Skipped
        } else {
            let o = match client.stow_one(bytes.into())? {
                StowOutcome::Stored => PushOutcome::Stored,
                StowOutcome::AlreadyStored => PushOutcome::AlreadyStored,
                StowOutcome::Rejected { reason } => PushOutcome::Rejected { reason },
            };
            // A rejected file is not journaled: fixing it and pushing again must send it.
            if !matches!(o, PushOutcome::Rejected { .. }) {
                let mut e = entry;
                e.outcome = if o == PushOutcome::Stored { "stored".into() } else { "already-stored".into() };
                journal.files.insert(key, e);
                save_journal(state_dir, &journal)?;
            }
            o
        };
        let report = FileReport { path: path.clone(), outcome };
        progress(&report, size);
        reports.push(report);
    }
    if restart {
        save_journal(state_dir, &journal)?;
    }
    Ok(reports)
}
