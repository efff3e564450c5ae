//! The one error type of this crate.
//!
//! No variant carries an entry's contents, a resource reference, a key or a signature: an
//! error names a file, a leaf index, a checkpoint number or a field, and says what to do.
use std::path::PathBuf;

/// What went wrong while writing, reading, proving or verifying the audit log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file of the log could not be read or written.
    #[error("{action} {path}: {source}; check the disk and the permissions of the audit directory")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the log's lock.
    #[error("the audit log in {0} is already open in another process; stop it before opening the log here")]
    Locked(PathBuf),
    /// An entry handed to `append` breaks a rule of the entry format (for example a name with
    /// characters outside the allowed set). The value itself is never echoed.
    #[error("audit entry field `{field}` is invalid: {rule}; fix the caller")]
    InvalidEntry { field: &'static str, rule: &'static str },
    /// Stored entry bytes are not a canonical entry of a known format version.
    #[error("audit entry {index} is not a canonical entry of a known format version; the log may have been altered: run the auditor's verification")]
    MalformedEntry { index: u64 },
    /// A record of a log file is damaged below the newest signed checkpoint, or in the middle
    /// of the file: this is not a crash artefact, and the log refuses to open.
    #[error("the audit {file} file is damaged at record {index} ({what}); it was altered or the disk is failing: keep a copy and run the auditor's verification")]
    Corrupt { file: &'static str, index: u64, what: &'static str },
    /// A stored checkpoint does not match the entries or carries no valid signature.
    #[error("stored checkpoint {seq} does not verify against the log ({what}); the log was altered: keep a copy and run the auditor's verification")]
    CheckpointMismatch { seq: u64, what: &'static str },
    /// Text that should be a C2SP signed checkpoint is not one.
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(&'static str),
    /// A checkpoint's signature line is missing, from an unknown key, or does not verify.
    #[error("the checkpoint is not validly signed by the trusted audit key ({0}); do not trust it")]
    BadSignature(&'static str),
    /// A verifier key string is not `<name>+<hex key id>+<base64(0x01 || public key)>`.
    #[error("malformed verifier key: {0}; copy it again from the broker's `audit key` output")]
    MalformedVerifierKey(&'static str),
    /// The log origin or key name is unusable.
    #[error("invalid log origin: {0}")]
    InvalidOrigin(&'static str),
    /// A proof or range was asked for sizes or indexes the tree does not have.
    #[error("no such {what}: asked for {asked}, the tree has {size} entries")]
    OutOfRange { what: &'static str, asked: u64, size: u64 },
    /// A proof does not lead to the expected root.
    #[error("the {0} proof does not verify: the log or the proof was altered")]
    ProofFailed(&'static str),
    /// The log's writer thread stopped after an I/O failure; nothing more can be appended.
    #[error("the audit log writer stopped after a write failure; restart the broker after checking the disk (entries not acknowledged were not written)")]
    WriterStopped,
    /// The log file set belongs to another origin than the one configured.
    #[error("the audit directory {0} belongs to another log origin; point the broker at the right directory")]
    OriginMismatch(PathBuf),
    /// A restore from a copy was refused before anything changed; the text says why and
    /// what to do (it names folders and files, never entry contents).
    #[error("the audit log was not restored: {0}")]
    Restore(String),
    /// A file of the log has a format header this build does not know.
    #[error("the audit file {0} has an unknown format header; upgrade Cleave or restore the directory")]
    UnknownFormat(PathBuf),
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io { action, path: path.to_owned(), source }
    }
}
