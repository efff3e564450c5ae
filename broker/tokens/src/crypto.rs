//! The macaroon signature chain, exactly as libmacaroons and pymacaroons compute it.
//!
//! * root: `sig0 = HMAC(HMAC("macaroons-key-generator", root_key), identifier)`
//! * first-party caveat: `sig = HMAC(sig, caveat_id)`
//! * third-party caveat: `sig = HMAC(sig, HMAC(sig, vid) || HMAC(sig, caveat_id))`
//! * discharge binding: `bound = HMAC(0^32, HMAC(0^32, root_sig) || HMAC(0^32, discharge_sig))`
//! * verification id: `nonce24 || secretbox(key = sig, derive(caveat_root_key))`
//!
//! Every intermediate signature is as powerful as a token with fewer caveats, so they are
//! held in `Zeroizing` buffers and never leave this module except as the final value.

use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use ring::hmac as ring_hmac;
use zeroize::Zeroizing;

use cleave_keys::Key32;

use crate::error::{Denial, Result};
use crate::wire::VID_LEN;

/// A 32-byte chain value (a signature at some point of the chain).
pub(crate) type Sig = Zeroizing<[u8; 32]>;

const KEY_GENERATOR: &[u8] = b"macaroons-key-generator";

/// HMAC-SHA256 with ring: its SHA-256 is hand-written assembly with AVX2/SHA-NI paths,
/// and a decision is ~26 SHA-256 blocks, so this is where a decision's time goes.
pub(crate) fn hmac(key: &[u8], data: &[u8]) -> Sig {
    tag_to_sig(ring_hmac::sign(&ring_hmac::Key::new(ring_hmac::HMAC_SHA256, key), data))
}

fn tag_to_sig(tag: ring_hmac::Tag) -> Sig {
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(tag.as_ref());
    out
}

/// pymacaroons' `hmac_concat`: `HMAC(k, HMAC(k, a) || HMAC(k, b))`.
pub(crate) fn hmac2(key: &[u8; 32], a: &[u8], b: &[u8]) -> Sig {
    let mut both = Zeroizing::new([0u8; 64]);
    both[..32].copy_from_slice(&*hmac(key, a));
    both[32..].copy_from_slice(&*hmac(key, b));
    hmac(key, &*both)
}

/// The libmacaroons key derivation applied to every root key (and caveat root key).
pub(crate) fn derive(root_key: &[u8]) -> Sig {
    hmac(KEY_GENERATOR, root_key)
}

/// A root key made ready for verifying: the derived key's HMAC state is computed once, so
/// each decision starts the chain with one HMAC block instead of a derivation and a key
/// schedule. Hold one per grant key in the broker; not printable.
#[derive(Clone)]
pub struct RootKey {
    keyed: ring_hmac::Key,
}

impl RootKey {
    /// Prepare `root_key` (the grant's 32-byte root key) for minting and verifying.
    pub fn new(root_key: &Key32) -> RootKey {
        let derived = derive(root_key.expose());
        RootKey { keyed: ring_hmac::Key::new(ring_hmac::HMAC_SHA256, &*derived) }
    }

    /// The first chain value: `HMAC(derived_key, identifier)`.
    pub(crate) fn initial(&self, identifier: &[u8]) -> Sig {
        tag_to_sig(ring_hmac::sign(&self.keyed, identifier))
    }
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey(<redacted>)")
    }
}

/// Seal the derived caveat root key under the current signature: the verification id.
pub(crate) fn seal_vid(sig: &[u8; 32], caveat_root_key: &Key32) -> Vec<u8> {
    let derived = derive(caveat_root_key.expose());
    let mut nonce = [0u8; 24];
    cleave_keys::random_bytes(&mut nonce);
    let cipher = XSalsa20Poly1305::new(sig.into());
    // Encryption of 32 bytes into a Vec cannot fail (no length limit is reached).
    let sealed = cipher.encrypt(&nonce.into(), &derived[..]).expect("secretbox encrypts any short message");
    let mut vid = Vec::with_capacity(VID_LEN);
    vid.extend_from_slice(&nonce);
    vid.extend_from_slice(&sealed);
    vid
}

/// Open a verification id with the signature that preceded its caveat, giving the
/// (derived) key the discharge's chain starts from.
pub(crate) fn open_vid(sig: &[u8; 32], vid: &[u8]) -> Result<Sig> {
    if vid.len() != VID_LEN {
        return Err(Denial::SignatureInvalid);
    }
    let (nonce, sealed) = vid.split_at(24);
    let cipher = XSalsa20Poly1305::new(sig.into());
    let plain = Zeroizing::new(
        cipher
            .decrypt(crypto_secretbox::Nonce::from_slice(nonce), sealed)
            .map_err(|_| Denial::SignatureInvalid)?,
    );
    let key: [u8; 32] = plain.as_slice().try_into().map_err(|_| Denial::SignatureInvalid)?;
    Ok(Zeroizing::new(key))
}

/// pymacaroons' `HashSignaturesBinder.bind_signature` with its default zero key.
pub(crate) fn bind(root_sig: &[u8; 32], discharge_sig: &[u8; 32]) -> Sig {
    hmac2(&[0u8; 32], root_sig, discharge_sig)
}
