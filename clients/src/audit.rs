//! `cleave audit verify`: check that the broker's audit log only ever grows, and name the
//! first entry that changed when it did not.
//!
//! The first run pins the log's verifier key (C2SP vkey) in the profile's state directory.
//! Every run then:
//!
//! 1. checks the new signed checkpoint with the pinned key (not whatever key the server
//!    now offers);
//! 2. asks for an RFC 9162 consistency proof from the saved checkpoint to the new one and
//!    checks it (`cleave_audit::merkle::verify_consistency`);
//! 3. downloads the entries added since the last visit, hashes them into the tree of the
//!    entries it verified before (`audit-leaves`: one 32-byte leaf hash per entry), and
//!    checks that the result is exactly the new signed root.
//!
//! Keeping the leaf hashes (32 bytes per entry, 32 MB per million) is what lets a failure
//! name an index: when the proof fails, the client downloads the old range again and
//! reports the first entry whose hash differs from the one it verified, or the first one
//! missing. A smaller tree, a different root at the same size, a bad signature or a bad
//! proof is a failure, and the saved state is kept so the evidence survives.
use std::path::Path;

use cleave_audit::merkle::{leaf_hash, Tree};
use cleave_audit::{Checkpoint, CheckpointVerifier, Hash};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::http::Client;
use crate::profile::write_private;

/// Entries asked for per request (the broker's page limit).
const PAGE: u64 = 1000;

/// The outcome of a successful verification.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditVerified {
    /// The tree size saved before this run (`None` on first use).
    pub previous_size: Option<u64>,
    /// The tree size now verified and saved.
    pub size: u64,
    /// Whether this run pinned the verifier key (first use).
    pub pinned_key: bool,
    /// Entries downloaded and hashed into the tree in this run.
    pub entries_checked: u64,
}

/// Verify and advance the saved checkpoint kept in `state_dir`.
pub fn verify(client: &Client, state_dir: &Path) -> Result<AuditVerified> {
    let vkey_path = state_dir.join("audit-vkey");
    let cp_path = state_dir.join("audit-checkpoint");
    let leaves_path = state_dir.join("audit-leaves");
    let (vkey, pinned_key) = match std::fs::read_to_string(&vkey_path) {
        Ok(v) => (v.trim().to_owned(), false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let pk: Value = client.audit_public_key()?;
            let v = pk["verifier_key"]
                .as_str()
                .ok_or_else(|| Error::Protocol("the public-key answer has no verifier_key".into()))?
                .to_owned();
            (v, true)
        }
        Err(e) => return Err(Error::io("reading", &vkey_path, e)),
    };
    let verifier = CheckpointVerifier::from_vkey(&vkey)
        .map_err(|e| Error::AuditInconsistent(format!("the verifier key is not usable ({e})")))?;
    let note = client.audit_checkpoint()?;
    let new = verifier
        .verify(&note)
        .map_err(|e| Error::AuditInconsistent(format!("the checkpoint's signature does not verify with the pinned key ({e})")))?;
    let previous = match std::fs::read_to_string(&cp_path) {
        Ok(old_note) => Some(
            verifier
                .verify(&old_note)
                .map_err(|e| Error::AuditInconsistent(format!("the saved checkpoint no longer verifies ({e})")))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("reading", &cp_path, e)),
    };
    let saved = load_leaves(&leaves_path)?;
    let mut tree = Tree::from_leaf_hashes(saved.iter().copied());
    let old_size = previous.as_ref().map_or(0, |p| p.size);
    // The saved hashes must be the tree the saved checkpoint signed; otherwise the local
    // state was damaged (or predates this version) and cannot name anything.
    let local_ok = tree.size() == old_size && previous.as_ref().is_none_or(|p| tree.root(p.size) == Some(p.root));
    if let Some(old) = &previous {
        if let Err(e) = check_growth(client, old, &new) {
            return Err(if local_ok { name_first_change(client, &saved, e)? } else { e });
        }
    }
    if !local_ok {
        // Start the mirror again from the whole log; the checks above still pinned growth.
        tree = Tree::new();
    }
    let from = tree.size();
    let mut fresh = Vec::new();
    for raw in fetch_entries(client, from, new.size)? {
        tree.push_leaf_hash(raw);
        fresh.push(raw);
    }
    if tree.root(new.size) != Some(new.root) {
        return Err(Error::AuditInconsistent(format!(
            "the entries served for indexes {from}..{} do not hash to the signed root of {} entries: an entry in that range was altered",
            new.size, new.size
        )));
    }
    let mut all = if local_ok { saved } else { Vec::new() };
    all.extend(fresh.iter().copied());
    write_private(&leaves_path, &all.concat())?;
    if pinned_key {
        write_private(&vkey_path, vkey.as_bytes())?;
    }
    write_private(&cp_path, note.as_bytes())?;
    Ok(AuditVerified { previous_size: previous.map(|p| p.size), size: new.size, pinned_key, entries_checked: fresh.len() as u64 })
}

fn load_leaves(path: &Path) -> Result<Vec<Hash>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("reading", path, e)),
    };
    Ok(bytes.chunks_exact(32).filter_map(|c| <Hash>::try_from(c).ok()).collect())
}

/// Leaf hashes of entries `[from, to)` as the server serves them now, checking that each
/// comes with the index asked for. Fewer are returned if the server has fewer.
fn fetch_entries(client: &Client, from: u64, to: u64) -> Result<Vec<Hash>> {
    use base64::Engine;
    let mut out = Vec::new();
    let mut next = from;
    while next < to {
        let mut filters = vec![("limit", PAGE.min(to - next).to_string())];
        if next > 0 {
            filters.push(("after", (next - 1).to_string()));
        }
        let page = client.audit_entries(&filters)?;
        let entries = page["entries"].as_array().ok_or_else(|| Error::Protocol("the entries answer has no list".into()))?;
        if entries.is_empty() {
            break;
        }
        for e in entries {
            if next >= to {
                break;
            }
            let index = e["index"].as_u64().ok_or_else(|| Error::Protocol("an entry has no index".into()))?;
            if index != next {
                return Err(Error::AuditInconsistent(format!("the server skipped or moved entry {next} (it sent {index} in its place)")));
            }
            let bytes = e["canonical"]
                .as_str()
                .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
                .ok_or_else(|| Error::Protocol("an entry has no canonical bytes".into()))?;
            out.push(leaf_hash(&bytes));
            next += 1;
        }
    }
    Ok(out)
}

/// The proof failed: find the first entry that differs from what this profile verified.
fn name_first_change(client: &Client, saved: &[Hash], failure: Error) -> Result<Error> {
    let now = match fetch_entries(client, 0, saved.len() as u64) {
        Ok(now) => now,
        Err(Error::AuditInconsistent(m)) => return Ok(Error::AuditInconsistent(m)),
        Err(_) => return Ok(failure),
    };
    let why = match failure {
        Error::AuditInconsistent(m) => m,
        other => other.to_string(),
    };
    let first = saved.iter().zip(&now).position(|(a, b)| a != b);
    Ok(Error::AuditInconsistent(match first {
        Some(i) => format!("entry {i} differs from the entry this profile verified before: the log was rewritten ({why})"),
        None if now.len() < saved.len() => {
            format!("entry {} and later, verified before, are missing: the log was cut ({why})", now.len())
        }
        None => why,
    }))
}

fn check_growth(client: &Client, old: &Checkpoint, new: &Checkpoint) -> Result<()> {
    if old.origin != new.origin {
        return Err(Error::AuditInconsistent("the log's origin changed".into()));
    }
    if new.size < old.size {
        return Err(Error::AuditInconsistent(format!("the log shrank from {} to {} entries", old.size, new.size)));
    }
    if new.size == old.size {
        return if new.root == old.root {
            Ok(())
        } else {
            Err(Error::AuditInconsistent(format!("two different trees of {} entries were signed", new.size)))
        };
    }
    if old.size == 0 {
        return Ok(());
    }
    let proof = client.audit_consistency(old.size, new.size)?;
    if cleave_audit::merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &proof) {
        Ok(())
    } else {
        Err(Error::AuditInconsistent(format!(
            "the tree of {} entries is not an extension of the saved tree of {} entries",
            new.size, old.size
        )))
    }
}
