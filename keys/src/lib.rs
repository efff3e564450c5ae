//! Cleave's key hierarchy and the two primitives both stores are built on.
//!
//! * A [`MasterKey`] comes from a 0600 key file created on first run, or from an operator
//!   passphrase through Argon2id. It never encrypts data itself: it only wraps the
//!   per-purpose keys held in the [`Keyring`] file, which lives apart from both stores.
//! * Each [`KeyPurpose`] has its own random 256-bit key, versioned for rotation. Unwrapping
//!   yields a [`VersionedKey`]; key bytes live in [`Key32`], which zeroizes on drop and has
//!   no `Debug`/`Display` that could print them.
//! * [`FieldSealer`] seals one value with XChaCha20-Poly1305, binding it to where it lives
//!   ([`SealContext`]: table, column, row, key version) so a ciphertext moved elsewhere fails.
//! * [`BlindIndexer`] turns a normalised search term into a BLAKE3 keyed hash, so a store
//!   can be searched without being decrypted.
//! * [`KeyedHasher`] and [`keyed_hash`] are BLAKE3's keyed and key-derivation modes with
//!   the hasher wiped on drop; every keyed BLAKE3 in Cleave goes through them.
//! * [`durable`] writes files so that an acknowledged write survives a crash.
//! * [`WipedBox`] holds a foreign type's key (ring's) and zeroes its memory on drop.
//!
//! The formats are specified in `keys/FORMAT.md`.
// `deny`, not `forbid`: `wiped_box` alone allows unsafe code, for the reason it gives.
#![deny(unsafe_code)]

mod blind;
pub mod durable;
mod error;
mod keyed_hash;
mod keyring;
pub mod ondemand;
mod master;
mod seal;
mod secret;
mod wiped_box;

pub use blind::BlindIndexer;
pub use error::Error;
pub use ondemand::{OnDemand, OnDemandStats};
pub use keyed_hash::{keyed_hash, KeyedHasher};
pub use keyring::{KeyPurpose, Keyring, VersionedKey};
pub use master::{KeySource, MasterKey, PassphraseParams};
pub use seal::{FieldSealer, SealContext, SEALED_FIELD_FORMAT};
pub use secret::{wipe, Key32, SecretBytes, WipedBuf};
pub use wiped_box::WipedBox;

/// Fill `buf` with bytes from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) {
    use rand::RngCore;
    rand::rngs::OsRng.fill_bytes(buf);
}

/// A random 128-bit identifier, hex encoded. Used for row ids on both sides, which must
/// not be ordered by time or insertion (see the design's "nothing joins the stores").
pub fn random_id128() -> String {
    let mut b = [0u8; 16];
    random_bytes(&mut b);
    hex::encode(b)
}
