//! The keyring file: every per-purpose key, wrapped under the master key, versioned.
//!
//! It lives apart from both stores, so a thief of a store's directory does not get the
//! wrapped keys, and a thief of the keyring does not get the master key (a separate file,
//! or nowhere on disk at all when a passphrase is used). Format: `keys/FORMAT.md`.
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::master::{KeySource, MasterKey, PassphraseParams};
use crate::{durable, Error, Key32};

const FORMAT: &str = "cleave-keyring/1";

/// What a key is for. Each purpose has its own independent random key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum KeyPurpose {
    /// Seals identity-vault fields.
    IdentityData,
    /// Keys the identity-vault blind indexes.
    IdentityBlindIndex,
    /// Turns an identity id into its pseudonym. Only the identity vault unwraps it.
    Link,
    /// Seals clinical-store blobs and sensitive clinical metadata.
    ClinicalData,
    /// Derives replacement DICOM UIDs.
    Uid,
    /// Keys the audit log's per-patient resource references.
    AuditReference,
    /// Seeds the audit log's Ed25519 checkpoint signing key.
    AuditSigning,
    /// Wraps the macaroon root keys in the broker's database.
    MacaroonRootKek,
    /// Seals secrets in the broker's account database (TOTP seeds).
    BrokerData,
}

impl KeyPurpose {
    pub const ALL: [KeyPurpose; 9] = [
        KeyPurpose::IdentityData,
        KeyPurpose::IdentityBlindIndex,
        KeyPurpose::Link,
        KeyPurpose::ClinicalData,
        KeyPurpose::Uid,
        KeyPurpose::AuditReference,
        KeyPurpose::AuditSigning,
        KeyPurpose::MacaroonRootKek,
        KeyPurpose::BrokerData,
    ];

    /// The stable name used in the keyring file and in associated data.
    pub fn name(self) -> &'static str {
        match self {
            KeyPurpose::IdentityData => "identity-data",
            KeyPurpose::IdentityBlindIndex => "identity-blind-index",
            KeyPurpose::Link => "link",
            KeyPurpose::ClinicalData => "clinical-data",
            KeyPurpose::Uid => "uid",
            KeyPurpose::AuditReference => "audit-reference",
            KeyPurpose::AuditSigning => "audit-signing",
            KeyPurpose::MacaroonRootKek => "macaroon-root-kek",
            KeyPurpose::BrokerData => "broker-data",
        }
    }
}

/// An unwrapped key and its version. The version travels with everything it seals.
#[derive(Debug)]
pub struct VersionedKey {
    pub version: u32,
    pub key: Key32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    format: String,
    master: MasterKind,
    /// A known value sealed under the master key: tells a wrong key from a tampered file.
    check: String,
    keys: Vec<WrappedKey>,
}

#[derive(Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
enum MasterKind {
    KeyFile,
    Passphrase { argon2id: PassphraseParams },
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct WrappedKey {
    purpose: KeyPurpose,
    version: u32,
    /// hex(nonce[24] || ciphertext || tag)
    wrapped: String,
}

/// The opened keyring: the master key plus the wrapped per-purpose keys.
pub struct Keyring {
    path: PathBuf,
    master: MasterKey,
    file: KeyringFile,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({})", self.path.display())
    }
}

fn wrap_ad(purpose: &str, version: u32) -> Vec<u8> {
    let mut ad = Vec::with_capacity(64);
    ad.extend_from_slice(FORMAT.as_bytes());
    ad.push(0);
    ad.extend_from_slice(purpose.as_bytes());
    ad.push(0);
    ad.extend_from_slice(&version.to_be_bytes());
    ad
}

fn seal_with(key: &Key32, ad: &[u8], plaintext: &[u8]) -> String {
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    let mut nonce = [0u8; 24];
    crate::random_bytes(&mut nonce);
    let ct = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: ad })
        // Encryption only fails for messages over 256 GiB; these are 32 bytes.
        .expect("XChaCha20-Poly1305 encryption of a 32-byte key cannot fail");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    hex::encode(out)
}

fn open_with(key: &Key32, ad: &[u8], sealed_hex: &str) -> Option<Zeroizing<Vec<u8>>> {
    let raw = hex::decode(sealed_hex).ok()?;
    if raw.len() < 24 + 16 {
        return None;
    }
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    cipher
        .decrypt(XNonce::from_slice(&raw[..24]), Payload { msg: &raw[24..], aad: ad })
        .ok()
        .map(Zeroizing::new)
}

impl Keyring {
    /// Open the keyring at `path`, or create it (with every purpose at version 1) if it does
    /// not exist. A keyring written by an older build that lacks a purpose gains it.
    pub fn open_or_create(path: &Path, source: KeySource) -> Result<Keyring, Error> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let file: KeyringFile =
                    serde_json::from_slice(&bytes).map_err(|_| Error::MalformedKeyring(path.into()))?;
                if file.format != FORMAT {
                    return Err(Error::MalformedKeyring(path.into()));
                }
                let master = match (&file.master, source) {
                    (MasterKind::KeyFile, KeySource::KeyFile(p)) => MasterKey::from_key_file(&p)?,
                    (MasterKind::Passphrase { argon2id }, KeySource::Passphrase(pw)) => {
                        MasterKey::from_passphrase(&pw, argon2id)?
                    }
                    (MasterKind::KeyFile, KeySource::Passphrase(_)) => {
                        return Err(Error::KeySourceMismatch { expected: "a key file", given: "a passphrase" })
                    }
                    (MasterKind::Passphrase { .. }, KeySource::KeyFile(_)) => {
                        return Err(Error::KeySourceMismatch { expected: "a passphrase", given: "a key file" })
                    }
                };
                if open_with(&master.0, &wrap_ad("check", 0), &file.check).is_none() {
                    return Err(Error::WrongMasterKey);
                }
                let mut ring = Keyring { path: path.into(), master, file };
                let missing: Vec<KeyPurpose> = KeyPurpose::ALL
                    .into_iter()
                    .filter(|p| !ring.file.keys.iter().any(|k| k.purpose == *p))
                    .collect();
                if !missing.is_empty() {
                    for p in missing {
                        ring.add_version(p, 1);
                    }
                    ring.save()?;
                }
                Ok(ring)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (master, kind) = match source {
                    KeySource::KeyFile(p) => (MasterKey::from_key_file(&p)?, MasterKind::KeyFile),
                    KeySource::Passphrase(pw) => {
                        let params = PassphraseParams::new_random();
                        (MasterKey::from_passphrase(&pw, &params)?, MasterKind::Passphrase { argon2id: params })
                    }
                };
                let check = seal_with(&master.0, &wrap_ad("check", 0), &[0u8; 32]);
                let file = KeyringFile { format: FORMAT.into(), master: kind, check, keys: Vec::new() };
                let mut ring = Keyring { path: path.into(), master, file };
                for p in KeyPurpose::ALL {
                    ring.add_version(p, 1);
                }
                if let Some(dir) = path.parent() {
                    durable::create_private_dir(dir).map_err(|e| Error::io("creating", dir, e))?;
                }
                ring.save()?;
                Ok(ring)
            }
            Err(e) => Err(Error::io("reading", path, e)),
        }
    }

    fn add_version(&mut self, purpose: KeyPurpose, version: u32) {
        let key = Key32::generate();
        let wrapped = seal_with(&self.master.0, &wrap_ad(purpose.name(), version), key.expose());
        self.file.keys.push(WrappedKey { purpose, version, wrapped });
    }

    fn save(&self) -> Result<(), Error> {
        let json = serde_json::to_vec_pretty(&self.file).expect("keyring serialises");
        durable::write_atomic(&self.path, &json, 0o600).map_err(|e| Error::io("writing", &self.path, e))
    }

    /// The versions held for a purpose, oldest first.
    pub fn versions(&self, purpose: KeyPurpose) -> Vec<u32> {
        let mut v: Vec<u32> =
            self.file.keys.iter().filter(|k| k.purpose == purpose).map(|k| k.version).collect();
        v.sort_unstable();
        v
    }

    /// The newest version of a purpose's key.
    pub fn current_version(&self, purpose: KeyPurpose) -> u32 {
        self.versions(purpose).last().copied().unwrap_or(0)
    }

    /// Unwrap one version of a purpose's key.
    pub fn unwrap(&self, purpose: KeyPurpose, version: u32) -> Result<VersionedKey, Error> {
        let w = self
            .file
            .keys
            .iter()
            .find(|k| k.purpose == purpose && k.version == version)
            .ok_or(Error::UnknownKeyVersion { purpose: purpose.name(), version })?;
        let raw = open_with(&self.master.0, &wrap_ad(purpose.name(), version), &w.wrapped)
            .ok_or(Error::KeyringTampered { purpose: purpose.name(), version })?;
        let mut bytes: [u8; 32] =
            raw.as_slice().try_into().map_err(|_| Error::KeyringTampered { purpose: purpose.name(), version })?;
        Ok(VersionedKey { version, key: Key32::from_bytes(&mut bytes) })
    }

    /// Unwrap the newest version of a purpose's key.
    pub fn unwrap_current(&self, purpose: KeyPurpose) -> Result<VersionedKey, Error> {
        self.unwrap(purpose, self.current_version(purpose))
    }

    /// Unwrap every version of a purpose's key (newest last), for stores that must still
    /// open values sealed before a rotation.
    pub fn unwrap_all(&self, purpose: KeyPurpose) -> Result<Vec<VersionedKey>, Error> {
        self.versions(purpose).into_iter().map(|v| self.unwrap(purpose, v)).collect()
    }

    /// Add a new version of a purpose's key; new data is sealed under it from now on.
    pub fn rotate(&mut self, purpose: KeyPurpose) -> Result<u32, Error> {
        let next = self.current_version(purpose) + 1;
        self.add_version(purpose, next);
        self.save()?;
        Ok(next)
    }

    /// Where the keyring lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_reopen_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let kf = dir.path().join("keys/master.key");
        let rp = dir.path().join("keys/keyring.json");
        let ring = Keyring::open_or_create(&rp, KeySource::KeyFile(kf.clone())).unwrap();
        let k1 = ring.unwrap_current(KeyPurpose::Link).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&kf).unwrap().permissions().mode() & 0o777, 0o600);
            assert_eq!(std::fs::metadata(&rp).unwrap().permissions().mode() & 0o777, 0o600);
        }
        drop(ring);
        let mut ring = Keyring::open_or_create(&rp, KeySource::KeyFile(kf.clone())).unwrap();
        assert_eq!(ring.unwrap_current(KeyPurpose::Link).unwrap().key, k1.key);
        assert_eq!(ring.rotate(KeyPurpose::Link).unwrap(), 2);
        let ring = Keyring::open_or_create(&rp, KeySource::KeyFile(kf)).unwrap();
        assert_eq!(ring.versions(KeyPurpose::Link), vec![1, 2]);
        assert_ne!(ring.unwrap_current(KeyPurpose::Link).unwrap().key, k1.key);
        assert_eq!(ring.unwrap(KeyPurpose::Link, 1).unwrap().key, k1.key);
        // Every purpose has its own key.
        assert_ne!(
            ring.unwrap_current(KeyPurpose::IdentityData).unwrap().key,
            ring.unwrap_current(KeyPurpose::ClinicalData).unwrap().key
        );
    }

    #[test]
    fn wrong_master_key_and_tampering_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let kf = dir.path().join("master.key");
        let rp = dir.path().join("keyring.json");
        Keyring::open_or_create(&rp, KeySource::KeyFile(kf.clone())).unwrap();
        let other = dir.path().join("other.key");
        assert!(matches!(
            Keyring::open_or_create(&rp, KeySource::KeyFile(other)),
            Err(Error::WrongMasterKey)
        ));
        // Flip one hex digit of a wrapped key.
        let text = std::fs::read_to_string(&rp).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let w = json["keys"][2]["wrapped"].as_str().unwrap().to_owned();
        let flipped = format!("{}{}", &w[..w.len() - 1], if w.ends_with('0') { '1' } else { '0' });
        json["keys"][2]["wrapped"] = serde_json::Value::String(flipped);
        std::fs::write(&rp, serde_json::to_vec(&json).unwrap()).unwrap();
        let ring = Keyring::open_or_create(&rp, KeySource::KeyFile(kf.clone())).unwrap();
        assert!(matches!(ring.unwrap_current(KeyPurpose::Link), Err(Error::KeyringTampered { .. })));
        // Unknown format version fails closed.
        json["format"] = "cleave-keyring/2".into();
        std::fs::write(&rp, serde_json::to_vec(&json).unwrap()).unwrap();
        assert!(matches!(Keyring::open_or_create(&rp, KeySource::KeyFile(kf)), Err(Error::MalformedKeyring(_))));
    }

    #[test]
    fn passphrase_master_key() {
        let dir = tempfile::tempdir().unwrap();
        let rp = dir.path().join("keyring.json");
        let pw = || KeySource::Passphrase(Zeroizing::new("correct horse battery staple".into()));
        let k = Keyring::open_or_create(&rp, pw()).unwrap().unwrap_current(KeyPurpose::Uid).unwrap();
        let again = Keyring::open_or_create(&rp, pw()).unwrap().unwrap_current(KeyPurpose::Uid).unwrap();
        assert_eq!(k.key, again.key);
        let wrong = KeySource::Passphrase(Zeroizing::new("incorrect horse battery".into()));
        assert!(matches!(Keyring::open_or_create(&rp, wrong), Err(Error::WrongMasterKey)));
        let kf = KeySource::KeyFile(dir.path().join("m.key"));
        assert!(matches!(Keyring::open_or_create(&rp, kf), Err(Error::KeySourceMismatch { .. })));
    }
}
