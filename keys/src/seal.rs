//! Sealing one field: XChaCha20-Poly1305 with the field's location as associated data.
//!
//! Format (`keys/FORMAT.md`, "Sealed field"):
//! `0x01 | key_version: u32 BE | nonce: 24 bytes | ciphertext || tag: 16 bytes`.
//! Associated data binds the value to the format, the key version, and the
//! [`SealContext`] (table, column, row id), each length-prefixed so no two contexts
//! serialise alike. A ciphertext copied to another row or column fails to open.
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::{Error, SecretBytes, VersionedKey};

/// The first byte of every sealed field of this format version.
pub const SEALED_FIELD_FORMAT: u8 = 0x01;
const HEADER: usize = 1 + 4 + 24;
const AD_LABEL: &[u8] = b"cleave.field/1";

/// Where a sealed value lives. Everything here is bound into the ciphertext.
#[derive(Clone, Copy, Debug)]
pub struct SealContext<'a> {
    pub table: &'a str,
    pub column: &'a str,
    pub row: &'a str,
}

impl<'a> SealContext<'a> {
    pub fn new(table: &'a str, column: &'a str, row: &'a str) -> Self {
        SealContext { table, column, row }
    }

    fn associated_data(&self, version: u32) -> Vec<u8> {
        let mut ad = Vec::with_capacity(64);
        ad.extend_from_slice(AD_LABEL);
        ad.extend_from_slice(&version.to_be_bytes());
        for part in [self.table, self.column, self.row] {
            ad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            ad.extend_from_slice(part.as_bytes());
        }
        ad
    }
}

/// Seals and opens fields under one purpose's keys: the newest version seals, any held
/// version opens (so values sealed before a rotation still read).
pub struct FieldSealer {
    keys: Vec<VersionedKey>,
}

impl std::fmt::Debug for FieldSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FieldSealer(versions: {:?})", self.keys.iter().map(|k| k.version).collect::<Vec<_>>())
    }
}

impl FieldSealer {
    /// `keys` must not be empty; the highest version seals.
    pub fn new(mut keys: Vec<VersionedKey>) -> Self {
        keys.sort_by_key(|k| k.version);
        assert!(!keys.is_empty(), "FieldSealer needs at least one key");
        FieldSealer { keys }
    }

    /// The key version new values are sealed under.
    pub fn current_version(&self) -> u32 {
        self.keys.last().map(|k| k.version).unwrap_or(0)
    }

    /// Seal `plaintext` for the place `ctx` names.
    pub fn seal(&self, ctx: SealContext<'_>, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        crate::random_bytes(&mut nonce);
        self.seal_with_nonce(ctx, plaintext, nonce)
    }

    pub(crate) fn seal_with_nonce(&self, ctx: SealContext<'_>, plaintext: &[u8], nonce: [u8; 24]) -> Vec<u8> {
        let k = self.keys.last().expect("non-empty by construction");
        let cipher = XChaCha20Poly1305::new(k.key.expose().into());
        let ad = ctx.associated_data(k.version);
        let ct = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: &ad })
            // Only fails past 256 GiB per message; fields are small.
            .expect("field encryption cannot fail below 256 GiB");
        let mut out = Vec::with_capacity(HEADER + ct.len());
        out.push(SEALED_FIELD_FORMAT);
        out.extend_from_slice(&k.version.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Open a sealed value, checking that it belongs at `ctx`.
    pub fn open(&self, ctx: SealContext<'_>, sealed: &[u8]) -> Result<SecretBytes, Error> {
        if sealed.len() < HEADER + 16 || sealed[0] != SEALED_FIELD_FORMAT {
            return Err(Error::MalformedSealed);
        }
        let version = u32::from_be_bytes(sealed[1..5].try_into().expect("4 bytes"));
        let k = self.keys.iter().find(|k| k.version == version).ok_or(Error::SealBroken)?;
        let cipher = XChaCha20Poly1305::new(k.key.expose().into());
        let ad = ctx.associated_data(version);
        cipher
            .decrypt(XNonce::from_slice(&sealed[5..HEADER]), Payload { msg: &sealed[HEADER..], aad: &ad })
            .map(SecretBytes::new)
            .map_err(|_| Error::SealBroken)
    }

    /// Seal a UTF-8 string.
    pub fn seal_str(&self, ctx: SealContext<'_>, s: &str) -> Vec<u8> {
        self.seal(ctx, s.as_bytes())
    }

    /// Open a value sealed with [`FieldSealer::seal_str`].
    pub fn open_string(&self, ctx: SealContext<'_>, sealed: &[u8]) -> Result<zeroize::Zeroizing<String>, Error> {
        let b = self.open(ctx, sealed)?;
        let s = b.as_str().ok_or(Error::SealBroken)?;
        Ok(zeroize::Zeroizing::new(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Key32;

    fn sealer(byte: u8, version: u32) -> FieldSealer {
        let mut raw = [byte; 32];
        FieldSealer::new(vec![VersionedKey { version, key: Key32::from_bytes(&mut raw) }])
    }

    #[test]
    fn round_trip_and_binding() {
        let s = sealer(7, 1);
        let ctx = SealContext::new("identity", "family_name", "row-a");
        let c = s.seal(ctx, b"Canary");
        assert_eq!(s.open(ctx, &c).unwrap().expose(), b"Canary");
        for other in [
            SealContext::new("identity", "family_name", "row-b"),
            SealContext::new("identity", "given_name", "row-a"),
            SealContext::new("other", "family_name", "row-a"),
        ] {
            assert!(matches!(s.open(other, &c), Err(Error::SealBroken)));
        }
        for i in 0..c.len() {
            let mut bad = c.clone();
            bad[i] ^= 0x01;
            assert!(s.open(ctx, &bad).is_err(), "bit flip at byte {i} went unnoticed");
        }
        assert!(matches!(s.open(ctx, &c[..20]), Err(Error::MalformedSealed)));
        assert!(s.open(ctx, &sealer(8, 1).seal(ctx, b"x")).is_err());
    }

    #[test]
    fn older_versions_still_open_after_rotation() {
        let old = sealer(1, 1);
        let ctx = SealContext::new("t", "c", "r");
        let c = old.seal(ctx, b"v");
        let mut a = [1u8; 32];
        let mut b = [2u8; 32];
        let both = FieldSealer::new(vec![
            VersionedKey { version: 2, key: Key32::from_bytes(&mut b) },
            VersionedKey { version: 1, key: Key32::from_bytes(&mut a) },
        ]);
        assert_eq!(both.current_version(), 2);
        assert_eq!(both.open(ctx, &c).unwrap().expose(), b"v");
        assert_eq!(both.seal(ctx, b"w")[1..5], 2u32.to_be_bytes());
    }

    /// The test vectors in keys/FORMAT.md.
    #[test]
    fn format_test_vectors() {
        let vectors = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/FORMAT.md")).unwrap();
        let s = sealer(0x42, 1);
        let ctx = SealContext::new("identity", "family_name", "00112233445566778899aabbccddeeff");
        let c = s.seal_with_nonce(ctx, b"DOE^JANE", [0x24; 24]);
        let line = format!("sealed: {}", hex::encode(&c));
        assert!(vectors.contains(&line), "FORMAT.md must carry the vector `{line}`");
        let b = crate::BlindIndexer::new({
            let mut raw = [0x42u8; 32];
            Key32::from_bytes(&mut raw)
        }, 1);
        let line = format!("blind: {}", hex::encode(b.index("family_name", "doe")));
        assert!(vectors.contains(&line), "FORMAT.md must carry the vector `{line}`");
    }
}
