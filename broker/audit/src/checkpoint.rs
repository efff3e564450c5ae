//! Signed checkpoints: C2SP `tlog-checkpoint` notes signed per C2SP `signed-note` (Ed25519).
//!
//! A checkpoint commits to the log's first `size` entries through the root hash. The note
//! text is exactly three lines (origin, decimal size, base64 root); this build writes no
//! extension lines and, failing closed, accepts none. The signature line is
//! `— <key name> base64(key id || signature)` with
//! `key id = SHA-256(key name || 0x0A || 0x01 || public key)[:4]`; the key name is the
//! log's origin. The Ed25519 seed is derived from the `audit-signing` key, so the broker
//! needs no second secret and a rotated `audit-signing` key gives a new checkpoint key.
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;
use crate::Error;

/// Context of the BLAKE3 derivation from the `audit-signing` key to the Ed25519 seed.
pub const SIGNING_SEED_CONTEXT: &str = "cleave-audit/1 checkpoint signing ed25519 seed";
const MAX_NOTE_BYTES: usize = 8 * 1024;
const ED25519_TYPE: u8 = 0x01;

/// The unsigned content of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

/// Key names (and so origins) are non-empty, without spaces, `+` or control characters.
pub(crate) fn check_origin(origin: &str) -> Result<(), Error> {
    if origin.is_empty() || origin.len() > 256 {
        return Err(Error::InvalidOrigin("it must be 1-256 characters"));
    }
    if origin.chars().any(|c| c.is_whitespace() || c == '+' || c.is_control()) {
        return Err(Error::InvalidOrigin("it must not contain spaces, '+' or control characters"));
    }
    Ok(())
}

impl Checkpoint {
    /// The note text: `origin\nsize\nbase64(root)\n`.
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root))
    }

    /// Parse a note text of exactly three lines.
    pub fn parse_body(text: &str) -> Result<Checkpoint, Error> {
        let Some(body) = text.strip_suffix('\n') else {
            return Err(Error::MalformedCheckpoint("the note text must end in a newline"));
        };
        let lines: Vec<&str> = body.split('\n').collect();
        let [origin, size, root] = lines[..] else {
            return Err(Error::MalformedCheckpoint("expected exactly origin, size and root lines"));
        };
        check_origin(origin).map_err(|_| Error::MalformedCheckpoint("bad origin line"))?;
        let size_ok = !size.is_empty()
            && size.bytes().all(|b| b.is_ascii_digit())
            && (size == "0" || !size.starts_with('0'));
        let size: u64 = match size.parse() {
            Ok(s) if size_ok => s,
            _ => return Err(Error::MalformedCheckpoint("the size line is not a canonical decimal")),
        };
        let raw = B64.decode(root).map_err(|_| Error::MalformedCheckpoint("the root line is not base64"))?;
        let root: Hash = raw.try_into().map_err(|_| Error::MalformedCheckpoint("the root is not 32 bytes"))?;
        let cp = Checkpoint { origin: origin.to_owned(), size, root };
        if cp.body() != text {
            return Err(Error::MalformedCheckpoint("the note text is not in canonical form"));
        }
        Ok(cp)
    }
}

/// The note text of a signed note: everything up to and including the newline before the
/// last blank line.
pub(crate) fn note_text(note: &str) -> Option<&str> {
    note.rfind("\n\n").map(|i| &note[..i + 1])
}

/// A checkpoint together with its full signed-note text (as stored and served).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    /// The complete signed note: body, blank line, signature line.
    pub note: String,
}

fn key_id(name: &str, public: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0x0A, ED25519_TYPE]);
    h.update(public.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// Signs checkpoints. Holds the Ed25519 key (zeroized on drop by ed25519-dalek).
pub struct CheckpointSigner {
    name: String,
    key: SigningKey,
    id: [u8; 4],
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointSigner({}, <redacted>)", self.name)
    }
}

impl CheckpointSigner {
    /// The signer of log `origin`, from the `KeyPurpose::AuditSigning` key.
    pub fn from_audit_signing_key(origin: &str, key: &cleave_keys::Key32) -> Result<Self, Error> {
        check_origin(origin)?;
        let seed = key.derive(SIGNING_SEED_CONTEXT);
        let key = SigningKey::from_bytes(seed.expose());
        let id = key_id(origin, &key.verifying_key());
        Ok(CheckpointSigner { name: origin.to_owned(), key, id })
    }

    /// Sign a checkpoint of this signer's origin.
    pub fn sign(&self, cp: &Checkpoint) -> SignedCheckpoint {
        let body = cp.body();
        let sig = self.key.sign(body.as_bytes());
        let mut blob = Vec::with_capacity(68);
        blob.extend_from_slice(&self.id);
        blob.extend_from_slice(&sig.to_bytes());
        let note = format!("{body}\n\u{2014} {} {}\n", self.name, B64.encode(blob));
        SignedCheckpoint { checkpoint: cp.clone(), note }
    }

    /// The matching public verifier, to hand to auditors.
    pub fn verifier(&self) -> CheckpointVerifier {
        CheckpointVerifier { name: self.name.clone(), public: self.key.verifying_key(), id: self.id }
    }
}

/// Verifies checkpoints against one trusted public key. Usable without the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointVerifier {
    name: String,
    public: VerifyingKey,
    id: [u8; 4],
}

impl CheckpointVerifier {
    /// The verifier for `name` (the log origin) and a 32-byte Ed25519 public key.
    pub fn new(name: &str, public_key: &[u8; 32]) -> Result<Self, Error> {
        check_origin(name)?;
        let public = VerifyingKey::from_bytes(public_key)
            .map_err(|_| Error::MalformedVerifierKey("not a valid Ed25519 public key"))?;
        Ok(CheckpointVerifier { name: name.to_owned(), id: key_id(name, &public), public })
    }

    /// The key's name, which is the log origin.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The raw Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    /// The verifier key string of Go's `note` package and C2SP tooling:
    /// `<name>+<8 hex key id>+<base64(0x01 || public key)>`.
    pub fn to_vkey(&self) -> String {
        let mut k = vec![ED25519_TYPE];
        k.extend_from_slice(self.public.as_bytes());
        format!("{}+{}+{}", self.name, hex::encode(self.id), B64.encode(k))
    }

    /// Parse a verifier key string (see [`CheckpointVerifier::to_vkey`]).
    pub fn from_vkey(vkey: &str) -> Result<Self, Error> {
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id), Some(k)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Error::MalformedVerifierKey("expected name+keyid+key"));
        };
        let raw = B64.decode(k).map_err(|_| Error::MalformedVerifierKey("the key is not base64"))?;
        let Some((&ED25519_TYPE, public)) = raw.split_first() else {
            return Err(Error::MalformedVerifierKey("not an Ed25519 (type 0x01) key"));
        };
        let public: [u8; 32] =
            public.try_into().map_err(|_| Error::MalformedVerifierKey("the key is not 32 bytes"))?;
        let v = CheckpointVerifier::new(name, &public)?;
        if hex::encode(v.id) != id {
            return Err(Error::MalformedVerifierKey("the key id does not match the key"));
        }
        Ok(v)
    }

    /// Verify a signed note and return its checkpoint. Signatures of other keys are ignored
    /// (as the spec requires); at least one signature must be ours, and every one claiming
    /// to be ours must verify. The origin must be the key name.
    pub fn verify(&self, note: &str) -> Result<Checkpoint, Error> {
        if note.len() > MAX_NOTE_BYTES {
            return Err(Error::MalformedCheckpoint("the note is too large"));
        }
        if note.chars().any(|c| c.is_control() && c != '\n') {
            return Err(Error::MalformedCheckpoint("the note contains control characters"));
        }
        let Some(split) = note.rfind("\n\n") else {
            return Err(Error::MalformedCheckpoint("no blank line before the signatures"));
        };
        let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
        let Some(sigs) = sigs.strip_suffix('\n') else {
            return Err(Error::MalformedCheckpoint("the signature block must end in a newline"));
        };
        let mut ours = 0usize;
        for line in sigs.split('\n') {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(Error::MalformedCheckpoint("a signature line must start with an em dash"));
            };
            let Some((name, b64)) = rest.split_once(' ') else {
                return Err(Error::MalformedCheckpoint("a signature line needs a key name and a signature"));
            };
            let blob = B64.decode(b64).map_err(|_| Error::MalformedCheckpoint("a signature is not base64"))?;
            if blob.len() < 4 {
                return Err(Error::MalformedCheckpoint("a signature is shorter than its key id"));
            }
            if name != self.name || blob[..4] != self.id {
                continue;
            }
            let sig = ed25519_dalek::Signature::from_slice(&blob[4..])
                .map_err(|_| Error::BadSignature("the signature is not 64 bytes"))?;
            self.public
                .verify(text.as_bytes(), &sig)
                .map_err(|_| Error::BadSignature("the signature does not verify"))?;
            ours += 1;
        }
        if ours == 0 {
            return Err(Error::BadSignature("no signature from the trusted key"));
        }
        let cp = Checkpoint::parse_body(text)?;
        if cp.origin != self.name {
            return Err(Error::BadSignature("the origin is not the trusted key's log"));
        }
        Ok(cp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> CheckpointSigner {
        CheckpointSigner::from_audit_signing_key("cleave.test/audit", &cleave_keys::Key32::from_bytes(&mut [0x42; 32]))
            .unwrap()
    }

    #[test]
    fn sign_verify_and_vkey_round_trip() {
        let s = signer();
        let cp = Checkpoint { origin: "cleave.test/audit".into(), size: 7, root: [9; 32] };
        let signed = s.sign(&cp);
        assert!(signed.note.starts_with("cleave.test/audit\n7\nCQkJ"));
        assert!(signed.note.contains("\n\n\u{2014} cleave.test/audit "));
        // Try key seeds until the base64 of the public key contains a '+', which a naive
        // right-to-left split of the verifier key string gets wrong.
        let vkey = s.verifier().to_vkey();
        let v = CheckpointVerifier::from_vkey(&vkey).unwrap();
        for seed in 0u8..=255 {
            let k = CheckpointSigner::from_audit_signing_key("o.test/x", &cleave_keys::Key32::from_bytes(&mut [seed; 32]))
                .unwrap()
                .verifier();
            let text = k.to_vkey();
            if text.matches('+').count() > 2 {
                assert_eq!(CheckpointVerifier::from_vkey(&text).unwrap(), k);
                break;
            }
        }
        assert_eq!(v.verify(&signed.note).unwrap(), cp);
    }

    #[test]
    fn altered_or_foreign_notes_fail() {
        let s = signer();
        let v = s.verifier();
        let note = s.sign(&Checkpoint { origin: "cleave.test/audit".into(), size: 7, root: [9; 32] }).note;
        assert!(v.verify(&note.replacen("\n7\n", "\n8\n", 1)).is_err());
        let other = CheckpointSigner::from_audit_signing_key("cleave.test/audit", &cleave_keys::Key32::from_bytes(&mut [1; 32])).unwrap();
        let forged = other.sign(&Checkpoint { origin: "cleave.test/audit".into(), size: 7, root: [9; 32] });
        assert!(matches!(v.verify(&forged.note), Err(Error::BadSignature(_))));
        // An unknown extension line fails closed even when validly signed.
        let ext = Checkpoint::parse_body("cleave.test/audit\n7\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\nextra\n");
        assert!(ext.is_err());
        assert!(Checkpoint::parse_body("cleave.test/audit\n07\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\n").is_err());
    }
}
