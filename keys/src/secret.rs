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

    /// Derive a subkey for a named use with BLAKE3's key derivation mode (the hasher,
    /// which holds this key as its input, is wiped afterwards).
    pub fn derive(&self, context: &str) -> Key32 {
        crate::KeyedHasher::derive(context).update(&self.0).finalize_key()
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

/// A plaintext work buffer for bulk data (blob chunks): a `Vec<u8>` whose whole
/// allocation, spare capacity included, is wiped when it is dropped.
///
/// Why not `Zeroizing<Vec<u8>>`: the zeroize crate wipes a `Vec<u8>` with one volatile
/// store per byte, which the compiler may neither remove nor merge. For the 64 KiB chunk
/// buffers of every stored instance that was 6% of the broker's CPU in the C-STORE
/// benchmark. [`wipe`] keeps the guarantee (volatile stores, through `zeroize`) with one
/// store per eight bytes.
///
/// Like `Zeroizing<Vec<u8>>`, it cannot wipe an allocation the vector leaves behind when it
/// grows past its capacity: create it with the capacity it needs (the broker's allocator
/// wipes every freed block as well, see `broker/src/memory.rs`).
#[derive(Default)]
pub struct WipedBuf(Vec<u8>);

impl WipedBuf {
    /// An empty buffer holding `capacity` bytes without reallocating.
    pub fn with_capacity(capacity: usize) -> Self {
        WipedBuf(Vec::with_capacity(capacity))
    }
    /// Takes ownership of `v`, which will be wiped on drop.
    pub fn from_vec(v: Vec<u8>) -> Self {
        WipedBuf(v)
    }
}

impl std::ops::Deref for WipedBuf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for WipedBuf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for WipedBuf {
    fn drop(&mut self) {
        // Make the spare capacity part of the slice (no reallocation: len only grows to
        // capacity), then wipe it all.
        let cap = self.0.capacity();
        self.0.resize(cap, 0);
        wipe(&mut self.0);
    }
}

impl std::fmt::Debug for WipedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WipedBuf(<{} bytes redacted>)", self.0.len())
    }
}

/// Overwrites `bytes` with zeros by volatile stores that the compiler cannot elide: the
/// eight-byte-aligned middle as `u64`s, the ends byte by byte.
pub fn wipe(bytes: &mut [u8]) {
    let (head, middle, tail) = bytemuck::pod_align_to_mut::<u8, u64>(bytes);
    head.zeroize();
    middle.zeroize();
    tail.zeroize();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wipe_clears_every_byte_at_any_alignment() {
        let mut v = vec![0xA5u8; 1000];
        for start in 0..9 {
            for end in [start, start + 1, start + 7, start + 8, 500, 991, 1000] {
                v.fill(0xA5);
                wipe(&mut v[start..end]);
                assert!(v[start..end].iter().all(|&b| b == 0), "{start}..{end}");
                assert!(v[..start].iter().chain(&v[end..]).all(|&b| b == 0xA5), "outside {start}..{end}");
            }
        }
    }

    #[test]
    fn wiped_buf_is_a_vec_and_redacts_debug() {
        let mut b = WipedBuf::with_capacity(64);
        b.extend_from_slice(b"Canary Smith");
        assert_eq!(&b[..], b"Canary Smith");
        b.drain(..7);
        assert_eq!(&b[..], b"Smith");
        assert!(!format!("{b:?}").contains("Smith"));
        assert_eq!(b.capacity(), 64);
    }

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
