//! The one error type of the clinical store.
//!
//! No variant carries PHI: never a pseudonym, a UID, a date, a sealed value's plaintext or a
//! caller's input. Where input is refused, the variant names the field and the rule it broke,
//! not the value. Paths name the store directory and random blob ids only.
use std::path::PathBuf;

/// Everything that can go wrong in the clinical store. Each message says what happened and
/// what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory could not be read, written or synced.
    #[error("{action} {path}: {source}; check that the store directory exists, is writable and the disk is not full")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The keyring could not produce the clinical-data key.
    #[error("the clinical-data key could not be unwrapped: {0}")]
    Keys(#[source] cleave_keys::Error),
    /// The SQLite index reported an error.
    #[error("the clinical index database failed while {action}: {source}; check the disk, then restore the index from backup if it persists")]
    Database {
        action: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// The index was written by a build with another schema; this build fails closed.
    #[error("the clinical index in {0} has an unknown schema version; open it with the Cleave release that wrote it")]
    UnknownSchema(PathBuf),
    /// A blob does not start with the blob magic, or its format version is unknown.
    #[error("a blob is not in a blob format this build knows (bad magic or unknown version); it was not read")]
    BlobUnknownFormat,
    /// A blob's header is inconsistent (too short, chunk size out of range).
    #[error("a blob header is malformed ({0}); the blob is damaged: restore it from backup")]
    BlobMalformed(&'static str),
    /// A blob was sealed under a key version the keyring does not hold.
    #[error("a blob was sealed under clinical-data key version {0}, which the keyring does not hold; restore the keyring that has it")]
    UnknownKeyVersion(u32),
    /// A chunk failed authentication: altered, reordered, spliced from another blob, or the
    /// blob was moved to another id. No plaintext of this chunk was returned.
    #[error("chunk {chunk} of a blob failed authentication: the blob was altered, reordered or moved; restore it from backup")]
    BlobCorrupt { chunk: u64 },
    /// The blob ends without its final chunk: it was truncated.
    #[error("a blob ends after chunk {last_chunk} without its final chunk: it was truncated; restore it from backup")]
    BlobTruncated { last_chunk: u64 },
    /// Bytes follow the final chunk: the blob was extended.
    #[error("a blob has data after its final chunk (chunk {final_chunk}): it was extended; restore it from backup")]
    BlobTrailingData { final_chunk: u64 },
    /// The index record at the end of a blob failed authentication (altered, or the blob's
    /// end was cut or extended).
    #[error("the index record at the end of a blob failed authentication: the blob was altered or cut; restore it from backup")]
    BlobRecordCorrupt,
    /// A blob would exceed the format's 2^32 chunks.
    #[error("a blob exceeds the format's maximum of 2^32 chunks; store the payload in parts")]
    BlobTooLarge,
    /// A blob writer was used after one of its writes failed.
    #[error("a blob writer was used after a failed write; start the object again")]
    WriterPoisoned,
    /// A sealed field of the index failed authentication.
    #[error("a sealed value in {table}.{column} failed authentication: it was altered or moved from another row; restore the index from backup")]
    SealBroken { table: &'static str, column: &'static str },
    /// A value handed in by the caller breaks a rule. The value itself is never echoed.
    #[error("invalid {field}: {rule}")]
    InvalidInput { field: &'static str, rule: &'static str },
    /// A record that was asked for does not exist.
    #[error("no {0} with that identifier is stored")]
    NotFound(&'static str),
    /// The input contradicts what the index already holds (for example a study UID
    /// already filed under another pseudonym).
    #[error("{0}; check the de-identification mapping before retrying")]
    Conflict(&'static str),
    /// The caller's producer of a blob's content failed; nothing was stored.
    #[error("the object being stored could not be produced; nothing was stored")]
    Producer(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io { action, path: path.to_owned(), source }
    }

    pub(crate) fn db(action: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
        move |source| Error::Database { action, source }
    }
}

impl From<Error> for std::io::Error {
    /// Lets a [`crate::BlobReader`] report blob errors through `std::io::Read`; the original
    /// error is kept as the source (`std::io::Error::get_ref` / `downcast`).
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::Io { source, .. } => source.kind(),
            _ => std::io::ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, e)
    }
}
