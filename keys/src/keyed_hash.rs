//! BLAKE3 in its keyed and key-derivation modes, with the hasher's state wiped on drop.
//!
//! Why not `blake3::Hasher` directly: in keyed mode it holds the key's words, and in every
//! mode its chaining values and its 64-byte input block, which in derivation mode is the
//! key material itself. It is freed like any value, leaving all of that in the memory it
//! occupied. blake3's `zeroize` feature gives it a `Zeroize` impl but nothing calls it;
//! [`KeyedHasher`] does, on drop. The one-shot `blake3::keyed_hash` and `blake3::derive_key`
//! build such a hasher internally and drop it unwiped, so Cleave calls [`keyed_hash`] and
//! [`Key32::derive`] instead.
//!
//! Outputs are exactly BLAKE3's: no stored format changes (tests below).
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::Key32;

/// A BLAKE3 hasher whose key, chaining values and buffered input are zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct KeyedHasher(blake3::Hasher);

impl KeyedHasher {
    /// BLAKE3's keyed mode (a MAC or PRF under `key`).
    pub fn new(key: &Key32) -> KeyedHasher {
        KeyedHasher(blake3::Hasher::new_keyed(key.expose()))
    }

    /// BLAKE3's key-derivation mode for `context`, a hardcoded, globally unique string
    /// naming the use. Feed it the key material with [`KeyedHasher::update`] and take the
    /// result with [`KeyedHasher::finalize_key`].
    pub fn derive(context: &str) -> KeyedHasher {
        KeyedHasher(blake3::Hasher::new_derive_key(context))
    }

    /// Hash more input.
    pub fn update(&mut self, input: &[u8]) -> &mut KeyedHasher {
        self.0.update(input);
        self
    }

    /// The 32-byte output for a value that is not itself secret (a blind index, a tag, a
    /// pseudonym's digest). The hasher is left as it was.
    pub fn finalize(&self) -> [u8; 32] {
        let mut hash = self.0.finalize();
        let out = *hash.as_bytes();
        hash.zeroize();
        out
    }

    /// The 32-byte output as a key, for derivations.
    pub fn finalize_key(&self) -> Key32 {
        let mut hash = self.0.finalize();
        let mut out = *hash.as_bytes();
        hash.zeroize();
        Key32::from_bytes(&mut out)
    }
}

impl std::fmt::Debug for KeyedHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // blake3's own Debug prints the chaining values, from which the key's use can be
        // continued; print nothing of the state.
        f.write_str("KeyedHasher(<redacted>)")
    }
}

/// `BLAKE3-keyed(key, input)`, wiping the hasher afterwards.
pub fn keyed_hash(key: &Key32, input: &[u8]) -> [u8; 32] {
    KeyedHasher::new(key).update(input).finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key32 {
        let mut b = [0x5au8; 32];
        b[0] = 1;
        Key32::from_bytes(&mut b)
    }

    #[test]
    fn outputs_are_blake3s_own() {
        let k = key();
        assert_eq!(keyed_hash(&k, b"cleave"), *blake3::keyed_hash(k.expose(), b"cleave").as_bytes());
        let mut h = KeyedHasher::new(&k);
        h.update(b"clea").update(b"ve");
        assert_eq!(h.finalize(), *blake3::keyed_hash(k.expose(), b"cleave").as_bytes());
        let derived = KeyedHasher::derive("cleave test 2026-11 context").update(k.expose()).finalize_key();
        assert_eq!(derived.expose(), &blake3::derive_key("cleave test 2026-11 context", k.expose()));
        assert_eq!(k.derive("cleave test 2026-11 context").expose(), derived.expose());
    }

    #[test]
    fn zeroizing_forgets_the_key_and_the_input() {
        // What drop does (derived `ZeroizeOnDrop`): afterwards the state no longer depends
        // on the key or the input. A wiped hasher finalizes to the same value as any other
        // wiped hasher, whatever it held.
        let wiped = |mut h: KeyedHasher| {
            h.zeroize();
            h.finalize()
        };
        let mut a = KeyedHasher::new(&key());
        a.update(b"first secret");
        let mut b = KeyedHasher::derive("another context");
        b.update(&[0xee; 200]);
        let before = a.finalize();
        let (a, b) = (wiped(a), wiped(b));
        assert_eq!(a, b);
        assert_ne!(a, before);
        let mut reference = blake3::Hasher::new();
        reference.zeroize();
        assert_eq!(a, *reference.finalize().as_bytes());
        // And drop does it: the derive that implements this marker also implements `Drop`
        // by zeroizing (a hand-written `Drop` without the marker would not compile here).
        fn wiped_on_drop<T: ZeroizeOnDrop>() {}
        wiped_on_drop::<KeyedHasher>();
    }

    #[test]
    fn debug_prints_no_state() {
        let h = KeyedHasher::new(&key());
        assert_eq!(format!("{h:?}"), "KeyedHasher(<redacted>)");
    }
}
