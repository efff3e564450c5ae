//! Tokens whose HMAC chain has already been verified, so a token used all shift long pays
//! for its chain once.
//!
//! A token's validity depends on three things: its bytes (identifier, caveats, signature),
//! its discharges' bytes, and the grant's root key. A grant's root key never changes (a
//! grant is revoked, never re-keyed), so once exactly these bytes have verified, they
//! always will; what changes from one request to the next is the request, and every caveat
//! is still checked against it on each use (so `expires` still expires). The broker still
//! looks the grant up on each request, so revocation holds from the next request.
//!
//! Entries are keyed by a BLAKE3 keyed hash of the presented text under a random key of
//! this process: the map reveals nothing about tokens to a reader of its keys, and an
//! attacker cannot aim at an entry without already holding the exact token. A token that
//! differs in any byte (another caveat, a truncated chain, a swapped signature) misses and
//! takes the full path. The map holds at most `capacity` entries and is emptied when full:
//! simple, bounded, and the cost of a miss is only a full verification.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};


use crate::caveat::Caveat;
use crate::error::Result;
use crate::macaroon::Macaroon;
use crate::verify::{authorized, Authorized, RequestContext};
use crate::RootKey;

/// A token (with its discharges) whose chain has verified. Only [`VerifiedTokens`] makes
/// one; [`VerifiedToken::authorize`] checks its caveats against each new request.
pub struct VerifiedToken {
    identifier: Vec<u8>,
    caveats: Vec<Caveat>,
}

impl VerifiedToken {
    /// The grant id the token names: look the grant up (is it revoked?) before
    /// [`VerifiedToken::authorize`].
    pub fn identifier(&self) -> &[u8] {
        &self.identifier
    }

    /// Check every caveat against `ctx`: the same decision as [`Macaroon::verify`] for
    /// the same token, without recomputing the chain.
    pub fn authorize(&self, ctx: &RequestContext) -> Result<Authorized> {
        for c in &self.caveats {
            c.check(ctx)?;
        }
        Ok(authorized(&self.identifier, &self.caveats, ctx))
    }
}

impl std::fmt::Debug for VerifiedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Caveats can name a patient; only their count is shown.
        f.debug_struct("VerifiedToken").field("caveats", &self.caveats.len()).finish_non_exhaustive()
    }
}

/// The cache of verified tokens. Share one per broker.
pub struct VerifiedTokens {
    key: cleave_keys::Key32,
    capacity: usize,
    map: Mutex<HashMap<[u8; 32], Arc<VerifiedToken>>>,
}

impl std::fmt::Debug for VerifiedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedTokens").field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

impl VerifiedTokens {
    /// An empty cache holding at most `capacity` tokens (at least 1).
    pub fn new(capacity: usize) -> VerifiedTokens {
        VerifiedTokens { key: cleave_keys::Key32::generate(), capacity: capacity.max(1), map: Mutex::new(HashMap::new()) }
    }

    fn digest(&self, token: &str, discharges: &[&str]) -> [u8; 32] {
        let mut h = cleave_keys::KeyedHasher::new(&self.key);
        // Length-prefixed, so no two different lists of texts hash the same input.
        for part in std::iter::once(&token).chain(discharges) {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize()
    }

    /// The verified token for exactly this text and these discharges, if it has verified
    /// before.
    pub fn get(&self, token: &str, discharges: &[&str]) -> Option<Arc<VerifiedToken>> {
        let d = self.digest(token, discharges);
        let map = self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        map.get(&d).cloned()
    }

    /// Full verification of `token_text` with `discharge_texts` (bound discharges) under
    /// `root_key`, the key of the grant the token names; on success the token is
    /// remembered, so the next [`VerifiedTokens::get`] for the same texts finds it. The
    /// texts are parsed here, so what is cached is exactly what was verified.
    pub fn verify(&self, token_text: &str, discharge_texts: &[&str], root_key: &RootKey, ctx: &RequestContext) -> Result<Authorized> {
        let token = Macaroon::parse(token_text)?;
        let discharges = discharge_texts.iter().map(|t| Macaroon::parse(t)).collect::<Result<Vec<_>>>()?;
        let (ok, caveats) = token.verify_keeping_caveats(root_key, &discharges, ctx)?;
        let d = self.digest(token_text, discharge_texts);
        let entry = Arc::new(VerifiedToken { identifier: token.identifier().to_vec(), caveats });
        let mut map = self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(d, entry);
        Ok(ok)
    }
}
