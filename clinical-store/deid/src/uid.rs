//! Deterministic UID replacement: the same original UID always maps to the same new one
//! under one key, so re-sending an instance is idempotent and the images of one study that
//! arrive weeks apart still land in one study.
//!
//! `new = "2.25." + decimal(u128 from the first 16 bytes, big-endian, of
//! BLAKE3-keyed(uid_key, original))` where `original` is the UID without its padding.
//! Without the key the mapping cannot be reversed or recomputed from a guessed UID.
use cleave_keys::Key32;

/// Maps original UIDs to derived ones under the UID key (`KeyPurpose` `uid`).
pub struct UidMapper {
    key: Key32,
}

impl std::fmt::Debug for UidMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UidMapper(<key redacted>)")
    }
}

impl UidMapper {
    /// A mapper under `key`. Use one key for a whole deployment: a new key starts a new,
    /// unrelated set of UIDs.
    pub fn new(key: Key32) -> Self {
        UidMapper { key }
    }

    /// The derived UID for `original` (padding already stripped).
    pub fn map(&self, original: &str) -> String {
        let h = cleave_keys::keyed_hash(&self.key, original.as_bytes());
        let mut first = [0u8; 16];
        first.copy_from_slice(&h[..16]);
        format!("2.25.{}", u128::from_be_bytes(first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapper(b: u8) -> UidMapper {
        let mut k = [b; 32];
        UidMapper::new(Key32::from_bytes(&mut k))
    }

    /// The vectors of FORMAT.md, computed independently with the reference BLAKE3 (Python
    /// `blake3`).
    #[test]
    fn format_test_vectors() {
        let m = mapper(0x42);
        for (orig, want) in crate::uid::tests::VECTORS {
            assert_eq!(m.map(orig), *want, "{orig}");
        }
    }

    #[test]
    fn derived_uids_are_valid_and_key_dependent() {
        let a = mapper(1).map("1.2.3.4");
        assert!(a.len() <= 64 && a.starts_with("2.25.") && !a[5..].starts_with('0'));
        assert!(a.bytes().all(|b| b == b'.' || b.is_ascii_digit()));
        assert_ne!(a, mapper(2).map("1.2.3.4"));
        assert_eq!(a, mapper(1).map("1.2.3.4"));
        assert_ne!(a, mapper(1).map("1.2.3.5"));
    }

    pub(crate) const VECTORS: &[(&str, &str)] = &[
        ("1.2.840.113619.2.55.3.604688119.971.1191335025.614", "2.25.296739403402115978441747397548198387378"),
        ("1.3.6.1.4.1.5962.1.2.1.20040119072730.12322", "2.25.280054978737848996512204198438715654574"),
        ("2.25.0", "2.25.321817625483133492469755326879698191080"),
    ];
}
