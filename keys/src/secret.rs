//! Types that hold secrets: zeroized on drop, compared in constant time, never printed.
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// A 256-bit secret key. Zeroized on drop; `Debug` prints only that it is redacted; no
/// `Display`, no `Clone` (copying a key must be a visible decision: [`Key32::duplicate`]).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Key32([u8; 32]);

impl Key32 {
    /// A new random key from the OS CSPRNG.
    pub fn generate() -> Self {
        let mut k = Key32([0u8; 32]);
        crate::random_bytes(&mut k.0);
        k
    }

    /// Take ownership of key bytes; the caller's copy is zeroized.
    pub fn from_bytes(bytes: &mut [u8; 32]) -> Self {
        let k = Key32(*bytes);
        bytes.zeroize();
        k
    }

    /// Borrow the key bytes, for handing to a cipher.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// An explicit copy, for the rare owner that must hand a key to a second holder.
    pub fn duplicate(&self) -> Self {
        Key32(self.0)
    }

    /// Derive a subkey for a named use with BLAKE3's key derivation mode.
    pub fn derive(&self, context: &str) -> Key32 {
        let mut out = blake3::derive_key(context, &self.0);
        Key32::from_bytes(&mut out)
    }
}

impl PartialEq for Key32 {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for Key32 {}

impl std::fmt::Debug for Key32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key32(<redacted>)")
    }
}

/// Decrypted bytes: zeroized when dropped, redacted in `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(v: Vec<u8>) -> Self {
        SecretBytes(Zeroizing::new(v))
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    /// The bytes as UTF-8 text, if they are.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_key_bytes() {
        let mut raw = [0xABu8; 32];
        let k = Key32::from_bytes(&mut raw);
        assert_eq!(raw, [0u8; 32], "caller's copy must be zeroized");
        let printed = format!("{k:?}");
        assert!(!printed.to_lowercase().contains("ab"), "{printed}");
        assert!(!format!("{:?}", SecretBytes::new(b"Canary Smith".to_vec())).contains("Canary"));
    }

    #[test]
    fn derived_keys_differ_by_context() {
        let k = Key32::generate();
        assert_ne!(k.derive("a"), k.derive("b"));
        assert_eq!(k.derive("a"), k.derive("a"));
    }
}
