//! The one error type of the identity vault.
//!
//! No variant carries a value from the vault: no name, date, identifier, pseudonym, UID or
//! key. Where it helps the operator, a variant names the *kind* of field involved (a column
//! name such as `family_name`), which is part of the schema and not patient data.
use std::path::PathBuf;

/// What went wrong in the identity vault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database could not be read or written (disk full, permissions, locked file).
    #[error("the identity vault database failed during {action}: {source}; check disk space and permissions of the vault directory")]
    Database {
        action: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// The vault directory or file could not be created.
    #[error("could not {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A key could not be unwrapped from the keyring.
    #[error("the identity vault's keys could not be unwrapped: {0}")]
    Keys(#[source] cleave_keys::Error),
    /// The keyring lacks a key the vault needs.
    #[error("the keyring holds no {0} key; open it with a keyring created by this version of Cleave")]
    MissingKey(&'static str),
    /// The keys given do not belong to this vault (another keyring, or a restored one that
    /// predates this vault).
    #[error("the keys given do not open this identity vault: use the keyring it was created with")]
    WrongKeys,
    /// The file is not a vault, or one of a format version this build does not know.
    #[error("{0} is not an identity vault of a format this build knows (expected cleave-vault/2, or cleave-vault/1, which it upgrades); it fails closed: upgrade Cleave or restore the right file")]
    UnknownFormat(PathBuf),
    /// A sealed value failed authentication: it was altered on disk or moved from another
    /// row or column. The value is never returned.
    #[error("the sealed {column} of a {table} record failed authentication: the vault file was altered or the value was moved from another record; restore the vault from backup and investigate")]
    Tampered { table: &'static str, column: &'static str },
    /// A stored value is structurally impossible (wrong length, bad encoding).
    #[error("a stored {table} record is malformed in {column}: the vault file is damaged; restore it from backup")]
    Corrupt { table: &'static str, column: &'static str },
    /// The caller gave an unusable value for a field.
    #[error("invalid {field}: {expected}")]
    InvalidInput { field: &'static str, expected: &'static str },
    /// A search with no criteria was asked for; it would list the whole vault.
    #[error("a search needs at least one criterion (name, name token, birth date, national id or issuer + patient id)")]
    EmptyQuery,
    /// No identity with that id exists.
    #[error("no such identity in the vault; it may have been created in another vault")]
    NoSuchIdentity,
    /// The pseudonym is not of the `P<version>-<32 hex>` form.
    #[error("malformed pseudonym: expected `P<key version>-<32 lowercase hex digits>`")]
    MalformedPseudonym,
    /// No review item with that id exists, or it has already been resolved.
    #[error("no open review item with that id; it may already have been resolved")]
    NoSuchReviewItem,
    /// The resolution does not fit the review item.
    #[error("this resolution does not apply to the review item: {0}")]
    BadResolution(&'static str),
    /// The same original study was linked before with a different patient or derived UID.
    #[error("this study was already linked to a different identity or derived study UID; refusing to relink it silently: resolve the conflict by hand")]
    StudyConflict,
}

impl Error {
    pub(crate) fn db(action: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
        move |source| Error::Database { action, source }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
