//! The one error type of this crate. No variant ever carries key bytes or plaintext.
use std::path::PathBuf;

/// What went wrong with a key, a keyring or a sealed value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The key file exists but is not 64 hex characters. Restore it from backup; a new one
    /// would not open the existing keyring.
    #[error("the master key file {0} is malformed: expected 64 hexadecimal characters")]
    MalformedKeyFile(PathBuf),
    /// The key file is readable by group or others.
    #[error("the master key file {0} must be readable by its owner only: run `chmod 600` on it")]
    KeyFilePermissions(PathBuf),
    /// The master key does not open the keyring: wrong key file or passphrase.
    #[error("the master key does not open the keyring: wrong key file or passphrase")]
    WrongMasterKey,
    /// The keyring is of a format this build does not know; it fails closed.
    #[error("the keyring {0} is malformed or of an unknown format version; restore it from backup")]
    MalformedKeyring(PathBuf),
    /// The keyring was made from a passphrase but a key file was given, or the reverse.
    #[error("the keyring expects a master key from {expected}, not from {given}")]
    KeySourceMismatch { expected: &'static str, given: &'static str },
    /// A wrapped key failed authentication: the keyring was tampered with.
    #[error("the wrapped {purpose} key, version {version}, failed authentication: the keyring has been altered")]
    KeyringTampered { purpose: &'static str, version: u32 },
    /// A key version that the keyring does not hold was asked for.
    #[error("no {purpose} key of version {version} in the keyring")]
    UnknownKeyVersion { purpose: &'static str, version: u32 },
    /// A sealed value is not in the sealed-field format (or of an unknown format version).
    #[error("sealed value is malformed or of an unknown format")]
    MalformedSealed,
    /// A sealed value failed authentication: it was altered, or moved from another place.
    #[error("sealed value failed authentication: it was altered or does not belong here")]
    SealBroken,
    /// The operator passphrase is unusable.
    #[error("the passphrase is too short: use at least 12 characters")]
    WeakPassphrase,
    /// Argon2 rejected its parameters.
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io { action, path: path.to_owned(), source }
    }
}
