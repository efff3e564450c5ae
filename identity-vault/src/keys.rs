//! The vault's keys and the pseudonym they derive.
//!
//! [`VaultKeys`] holds the three purposes only the vault may use: `identity-data` (seals
//! fields), `identity-blind-index` (search terms and match fingerprints) and `link` (turns
//! an identity id into its pseudonym). No function returns a key: the link key in
//! particular never leaves this crate, which is what keeps the clinical store from
//! re-identifying anyone on its own. Dropping a `VaultKeys` zeroizes every key.
use cleave_keys::{BlindIndexer, FieldSealer, KeyPurpose, Keyring, VersionedKey};
use subtle::ConstantTimeEq;

use crate::{Error, IdentityId, Result};

const PSEUDONYM_LABEL: &[u8] = b"cleave.pseudonym/1";

/// Every key version the vault needs, unwrapped from the keyring.
pub struct VaultKeys {
    pub(crate) data: FieldSealer,
    pub(crate) blind: Vec<BlindIndexer>,
    pub(crate) link: Vec<VersionedKey>,
}

impl std::fmt::Debug for VaultKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VaultKeys(data {:?}, blind versions {:?}, link versions {:?})",
            self.data,
            self.blind.iter().map(|b| b.version()).collect::<Vec<_>>(),
            self.link.iter().map(|k| k.version).collect::<Vec<_>>()
        )
    }
}

impl VaultKeys {
    /// Unwrap every version of the vault's three keys (older versions still open old data
    /// and resolve old pseudonyms).
    pub fn unwrap(keyring: &Keyring) -> Result<VaultKeys> {
        let data = keyring.unwrap_all(KeyPurpose::IdentityData).map_err(Error::Keys)?;
        let blind = keyring.unwrap_all(KeyPurpose::IdentityBlindIndex).map_err(Error::Keys)?;
        let link = keyring.unwrap_all(KeyPurpose::Link).map_err(Error::Keys)?;
        Self::from_versions(data, blind, link)
    }

    /// Build from already unwrapped keys (any order); each list must hold at least one.
    pub fn from_versions(data: Vec<VersionedKey>, blind: Vec<VersionedKey>, mut link: Vec<VersionedKey>) -> Result<VaultKeys> {
        if data.is_empty() {
            return Err(Error::MissingKey("identity-data"));
        }
        if blind.is_empty() {
            return Err(Error::MissingKey("identity-blind-index"));
        }
        if link.is_empty() {
            return Err(Error::MissingKey("link"));
        }
        link.sort_by_key(|k| k.version);
        let mut blind: Vec<BlindIndexer> = blind.into_iter().map(|k| BlindIndexer::new(k.key, k.version)).collect();
        blind.sort_by_key(|b| b.version());
        Ok(VaultKeys { data: FieldSealer::new(data), blind, link })
    }

    pub(crate) fn newest_blind(&self) -> &BlindIndexer {
        // from_versions refuses an empty list.
        self.blind.last().expect("at least one blind-index key by construction")
    }

    pub(crate) fn current_link_version(&self) -> u32 {
        self.link.last().map(|k| k.version).unwrap_or(0)
    }

    /// The pseudonym of `id` under link key `version`, if the keyring holds that version.
    pub(crate) fn pseudonym(&self, id: &IdentityId, version: u32) -> Option<Pseudonym> {
        let k = self.link.iter().find(|k| k.version == version)?;
        let digest = cleave_keys::KeyedHasher::new(&k.key).update(PSEUDONYM_LABEL).update(&[0]).update(id.as_bytes()).finalize();
        let mut text = format!("P{version}-");
        text.push_str(&hex::encode(&digest[..16]));
        Some(Pseudonym { text, version })
    }
}

/// A pseudonym: `P<link key version>-<32 lowercase hex>` (FORMAT.md, "Pseudonym").
///
/// It is what the clinical store files records under, in clear. It identifies a patient
/// across the clinical store, so it is treated as sensitive: `Debug` shows only the version.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pseudonym {
    text: String,
    version: u32,
}

impl Pseudonym {
    /// Parse a pseudonym, strictly: `P`, a decimal version without leading zeros (1 or
    /// more), `-`, exactly 32 lowercase hex digits. Anything else fails closed.
    pub fn parse(s: &str) -> Result<Pseudonym> {
        let rest = s.strip_prefix('P').ok_or(Error::MalformedPseudonym)?;
        let (v, h) = rest.split_once('-').ok_or(Error::MalformedPseudonym)?;
        if v.is_empty() || v.len() > 10 || v.starts_with('0') || !v.bytes().all(|c| c.is_ascii_digit()) {
            return Err(Error::MalformedPseudonym);
        }
        let version: u32 = v.parse().map_err(|_| Error::MalformedPseudonym)?;
        if h.len() != 32 || !h.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
            return Err(Error::MalformedPseudonym);
        }
        Ok(Pseudonym { text: s.to_owned(), version })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The link key version that made it.
    pub fn version(&self) -> u32 {
        self.version
    }

    pub(crate) fn ct_eq(&self, other: &Pseudonym) -> bool {
        self.text.as_bytes().ct_eq(other.text.as_bytes()).into()
    }
}

impl std::fmt::Debug for Pseudonym {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pseudonym(P{}-<redacted>)", self.version)
    }
}

impl std::fmt::Display for Pseudonym {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for Pseudonym {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cleave_keys::Key32;

    fn key(b: u8, version: u32) -> VersionedKey {
        let mut raw = [b; 32];
        VersionedKey { version, key: Key32::from_bytes(&mut raw) }
    }

    /// The pseudonym test vector in FORMAT.md, computed independently with Python's
    /// reference `blake3` package.
    #[test]
    fn pseudonym_format_test_vector() {
        let keys = VaultKeys::from_versions(vec![key(1, 1)], vec![key(2, 1)], vec![key(0x42, 1)]).unwrap();
        let id = IdentityId::from_hex("00112233445566778899aabbccddeeff").unwrap();
        let p = keys.pseudonym(&id, 1).unwrap();
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/FORMAT.md")).unwrap();
        let line = format!("pseudonym: {p}");
        assert!(doc.contains(&line), "FORMAT.md must carry the vector `{line}`");
        assert_eq!(Pseudonym::parse(p.as_str()).unwrap(), p);
        assert!(keys.pseudonym(&id, 2).is_none(), "no key of version 2");
    }

    #[test]
    fn pseudonym_parsing_fails_closed() {
        let good = "P1-0123456789abcdef0123456789abcdef";
        assert_eq!(Pseudonym::parse(good).unwrap().version(), 1);
        assert_eq!(Pseudonym::parse("P12-0123456789abcdef0123456789abcdef").unwrap().version(), 12);
        for bad in [
            "",
            "P-0123456789abcdef0123456789abcdef",
            "P01-0123456789abcdef0123456789abcdef",
            "P0-0123456789abcdef0123456789abcdef",
            "p1-0123456789abcdef0123456789abcdef",
            "P1-0123456789ABCDEF0123456789abcdef",
            "P1-0123456789abcdef0123456789abcde",
            "P1-0123456789abcdef0123456789abcdef0",
            "P1_0123456789abcdef0123456789abcdef",
            "P+1-0123456789abcdef0123456789abcdef",
            "P99999999999-0123456789abcdef0123456789abcdef",
        ] {
            assert!(matches!(Pseudonym::parse(bad), Err(Error::MalformedPseudonym)), "{bad:?} parsed");
        }
        // A version of zero is refused by the leading-zero rule; check it does not parse.
        assert!(!format!("{:?}", Pseudonym::parse(good).unwrap()).contains("0123"));
    }
}
