//! DICOM over TLS (DIMSE C-STORE / C-ECHO) into the same ingest pipeline as STOW-RS.
//!
//! `cleave-dimse` runs the association state machine; this module is the broker's side of
//! its [`StoreSink`] contract. An association is allowed only for an enrolled, unrevoked
//! device whose client certificate (already verified against the broker's CA by rustls)
//! matches and whose calling AE title is the one it was enrolled with. Each received
//! instance goes through [`Pipeline::ingest`] and is audited exactly like a STOW-RS part.
//!
//! Authority: DIMSE carries no bearer token, so no macaroon is verified here. The device's
//! authority is checked with the same role ceiling STOW-RS applies on top of the caveats
//! (`Role::Modality` must allow append on the clinical store); the certificate binding that
//! the macaroon's cert caveat gives STOW is given here by the TLS handshake itself.
use std::io::Read;

use cleave_dimse::{PeerInfo, Refusal, StoreFailure, StoreRequest, StoreSink};
use cleave_tokens::{Op, Store};

use crate::audit::AuditEvent;
use crate::ingest::IngestError;
use crate::roles::Role;
use crate::state::AppState;

/// The route template recorded for DIMSE decisions (never a concrete address or UID).
const ROUTE: &str = "dimse:c-store";

/// The broker's [`StoreSink`]: device accounts decide who may associate; the ingest
/// pipeline stores what they send.
pub(crate) struct DimseSink {
    state: AppState,
}

impl DimseSink {
    pub(crate) fn new(state: AppState) -> Self {
        DimseSink { state }
    }
}

/// An authorized device on one association. Only [`DimseSink::authorize`] makes one.
pub(crate) struct DeviceAssociation {
    fingerprint: String,
}

impl DeviceAssociation {
    fn actor(&self) -> String {
        format!("device:{}", self.fingerprint.get(..16).unwrap_or(&self.fingerprint))
    }
}

impl DimseSink {
    fn decide(&self, peer: &PeerInfo, fingerprint: &str) -> Result<(), (Refusal, &'static str)> {
        let device = match self.state.accounts.active_device(fingerprint) {
            Ok(Some(d)) => d,
            Ok(None) => return Err((Refusal::NoReasonGiven, "unknown-or-revoked-device")),
            Err(_) => return Err((Refusal::TemporarilyUnavailable, "account-store-unavailable")),
        };
        // AE titles are compared exactly (both already trimmed of DICOM padding).
        if device.ae_title != peer.calling_ae_title() {
            return Err((Refusal::CallingAeTitleNotRecognized, "calling-ae-title"));
        }
        if !Role::Modality.allows(Op::Append, Store::Clinical) {
            return Err((Refusal::NoReasonGiven, "role"));
        }
        Ok(())
    }

    fn still_active(&self, fingerprint: &str) -> Result<bool, crate::Error> {
        Ok(self.state.accounts.active_device(fingerprint)?.is_some())
    }
}

impl StoreSink for DimseSink {
    type Principal = DeviceAssociation;

    fn authorize(&self, peer: &PeerInfo) -> Result<DeviceAssociation, Refusal> {
        let fingerprint = hex::encode(peer.client_cert_sha256());
        let principal = DeviceAssociation { fingerprint };
        let mut event = AuditEvent::new("access", "deny");
        event.actor = Some(principal.actor());
        event.op = Some(Op::Append.as_str());
        event.store = Some(Store::Clinical.as_str());
        event.route = Some(ROUTE.to_owned());
        event.cert_sha256 = Some(principal.fingerprint.clone());
        let decision = self.decide(peer, &principal.fingerprint);
        match &decision {
            Ok(()) => event.outcome = "allow",
            Err((_, why)) => event.reason = Some((*why).to_owned()),
        }
        // A decision that cannot be recorded is not made.
        if let Err(e) = self.state.audit.record(&event) {
            tracing::error!(error = %e, "DIMSE association refused: the audit log cannot record it");
            return Err(Refusal::TemporarilyUnavailable);
        }
        match decision {
            Ok(()) => Ok(principal),
            Err((refusal, why)) => {
                tracing::info!(reason = why, "DIMSE association refused");
                Err(refusal)
            }
        }
    }

    fn store(&self, principal: &DeviceAssociation, _object: StoreRequest, mut data: Box<dyn Read + Send>) -> Result<(), StoreFailure> {
        // A device revoked while its association is open stores nothing more.
        match self.still_active(&principal.fingerprint) {
            Ok(true) => {}
            Ok(false) => return Err(StoreFailure::NotAuthorized),
            Err(_) => return Err(StoreFailure::OutOfResources),
        }
        let mut event;
        let result = self.state.pipeline.ingest(&mut data);
        let failure = match result {
            Ok(done) => {
                event = AuditEvent::new("ingest", "allow");
                event.patients = vec![done.pseudonym.clone()];
                event.study = Some(done.study_uid.clone());
                if let Some(flag) = done.flagged {
                    tracing::info!(flag, "arrival flagged for patient-matching review");
                }
                None
            }
            Err(err) => {
                let (failure, kind) = match &err {
                    IngestError::BadObject(_) => (StoreFailure::CannotUnderstand, "bad-object"),
                    IngestError::Storage(_) => (StoreFailure::OutOfResources, "storage-failure"),
                };
                // The message names what was wrong, never a value from the object.
                tracing::warn!(error = %err, "DIMSE C-STORE refused");
                event = AuditEvent::new("ingest", "error");
                event.reason = Some(kind.into());
                Some(failure)
            }
        };
        event.actor = Some(principal.actor());
        event.cert_sha256 = Some(principal.fingerprint.clone());
        event.route = Some(ROUTE.to_owned());
        // The peer hears "success" only once the audit entry is durable too.
        if let Err(e) = self.state.audit.record(&event) {
            tracing::error!(error = %e, "DIMSE C-STORE: the audit log cannot record the ingest");
            return Err(StoreFailure::OutOfResources);
        }
        failure.map_or(Ok(()), Err)
    }
}
