//! Blind indexes: BLAKE3 keyed hashes of normalised search terms.
//!
//! A store keeps `index(domain, term)` beside a sealed value and searches by computing the
//! same hash for the query. Without the key the hashes reveal nothing beyond equality
//! within one domain; the domain (for example `family_name`) is hashed in, length-prefixed,
//! so equal values in different columns do not collide.
use crate::Key32;

/// Computes blind index values under one key version.
pub struct BlindIndexer {
    key: Key32,
    version: u32,
}

impl std::fmt::Debug for BlindIndexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlindIndexer(version {})", self.version)
    }
}

impl BlindIndexer {
    pub fn new(key: Key32, version: u32) -> Self {
        BlindIndexer { key, version }
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// The 32-byte index value of an already-normalised `term` in `domain`.
    pub fn index(&self, domain: &str, term: &str) -> [u8; 32] {
        crate::KeyedHasher::new(&self.key)
            .update(&(domain.len() as u32).to_be_bytes())
            .update(domain.as_bytes())
            .update(term.as_bytes())
            .finalize()
    }
}
