//! `cleave audit verify`: check that the broker's audit log only ever grows.
//!
//! The first run pins the log's verifier key (C2SP vkey) and its signed checkpoint in the
//! profile's state directory. Every later run checks the new checkpoint's signature with
//! the pinned key (not with whatever key the server now offers), then asks for a
//! consistency proof from the saved tree size to the new one and checks it with
//! `cleave_audit::merkle::verify_consistency`. A smaller tree, a different root at the
//! same size, a bad signature or a bad proof is a failure, and the saved checkpoint is
//! kept so the evidence survives.
use std::path::Path;

use cleave_audit::{Checkpoint, CheckpointVerifier};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::http::Client;
use crate::profile::write_private;

/// The outcome of a successful verification.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditVerified {
    /// The tree size saved before this run (`None` on first use).
    pub previous_size: Option<u64>,
    /// The tree size now verified and saved.
    pub size: u64,
    /// Whether this run pinned the verifier key (first use).
    pub pinned_key: bool,
}

/// Verify and advance the saved checkpoint kept in `state_dir`.
pub fn verify(client: &Client, state_dir: &Path) -> Result<AuditVerified> {
    let vkey_path = state_dir.join("audit-vkey");
    let cp_path = state_dir.join("audit-checkpoint");
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
    if let Some(old) = &previous {
        check_growth(client, old, &new)?;
    }
    if pinned_key {
        write_private(&vkey_path, vkey.as_bytes())?;
    }
    write_private(&cp_path, note.as_bytes())?;
    Ok(AuditVerified { previous_size: previous.map(|p| p.size), size: new.size, pinned_key })
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
