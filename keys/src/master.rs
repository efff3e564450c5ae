//! The master key: from a 0600 key file, or from an operator passphrase via Argon2id.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{durable, Error, Key32};

/// Where the master key comes from.
pub enum KeySource {
    /// A file of 64 hex characters, created with mode 0600 on first run if missing.
    KeyFile(PathBuf),
    /// An operator passphrase (read from a file or a prompt by the caller).
    Passphrase(Zeroizing<String>),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::KeyFile(p) => write!(f, "KeyFile({})", p.display()),
            KeySource::Passphrase(_) => f.write_str("Passphrase(<redacted>)"),
        }
    }
}

/// Argon2id cost parameters, stored in the keyring so the same passphrase always derives
/// the same key. The defaults follow OWASP's 2023 guidance (19 MiB, 2 passes) raised to
/// 64 MiB and 3 passes: the derivation runs once per server start, not per request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PassphraseParams {
    pub salt: String,
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl PassphraseParams {
    pub fn new_random() -> Self {
        let mut salt = [0u8; 16];
        crate::random_bytes(&mut salt);
        PassphraseParams { salt: hex::encode(salt), m_kib: 64 * 1024, t: 3, p: 1 }
    }
}

/// The root of the key hierarchy. It only wraps and unwraps per-purpose keys.
#[derive(Debug)]
pub struct MasterKey(pub(crate) Key32);

impl MasterKey {
    /// Read the key file, creating it (mode 0600, durably) if it does not exist.
    pub fn from_key_file(path: &Path) -> Result<Self, Error> {
        match std::fs::read(path) {
            Ok(bytes) => {
                check_private(path)?;
                let bytes = Zeroizing::new(bytes);
                let text = std::str::from_utf8(&bytes).map_err(|_| Error::MalformedKeyFile(path.into()))?;
                let mut raw = Zeroizing::new([0u8; 32]);
                hex::decode_to_slice(text.trim(), &mut raw[..])
                    .map_err(|_| Error::MalformedKeyFile(path.into()))?;
                Ok(MasterKey(Key32::from_bytes(&mut raw)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    durable::create_private_dir(dir).map_err(|e| Error::io("creating", dir, e))?;
                }
                let key = Key32::generate();
                let mut text = Zeroizing::new(hex::encode(key.expose()));
                text.push('\n');
                durable::write_atomic(path, text.as_bytes(), 0o600)
                    .map_err(|e| Error::io("writing", path, e))?;
                Ok(MasterKey(key))
            }
            Err(e) => Err(Error::io("reading", path, e)),
        }
    }

    /// Derive the master key from a passphrase with Argon2id.
    pub fn from_passphrase(passphrase: &str, params: &PassphraseParams) -> Result<Self, Error> {
        if passphrase.chars().count() < 12 {
            return Err(Error::WeakPassphrase);
        }
        let salt = hex::decode(&params.salt).map_err(|_| Error::Kdf("salt is not hex".into()))?;
        let p = argon2::Params::new(params.m_kib, params.t, params.p, Some(32))
            .map_err(|e| Error::Kdf(e.to_string()))?;
        let a2 = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
        let mut out = Zeroizing::new([0u8; 32]);
        a2.hash_password_into(passphrase.as_bytes(), &salt, &mut out[..])
            .map_err(|e| Error::Kdf(e.to_string()))?;
        Ok(MasterKey(Key32::from_bytes(&mut out)))
    }
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| Error::io("reading", path, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::KeyFilePermissions(path.into()));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path) -> Result<(), Error> {
    Ok(())
}
