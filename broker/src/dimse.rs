//! DICOM over TLS (DIMSE C-STORE / C-ECHO) into the same ingest pipeline as STOW-RS.
//!
//! `cleave-dimse` runs the association state machine; this module is the broker's side of
//! its [`StoreSink`] contract.
//!
//! Authority is the same as for STOW-RS: a macaroon, verified by [`authz::authorize_presented`]
//! with `Need(Op::Append, Store::Clinical)` against the association's facts (the TLS peer
//! certificate for the `cert` caveat, the peer address, the time), under a live grant, with
//! the role ceiling on top. Where the macaroon comes from:
//!
//! * a user identity of type 2 (username and passcode, PS3.7 D.3.3.7) in the A-ASSOCIATE-RQ:
//!   the passcode is the token (a device token from `/api/v1/device/token`); the username is
//!   not a credential and is ignored;
//! * no user identity: the device's own append-only token, minted here under the device's
//!   current grant ([`Accounts::device_grant`](crate::accounts::Accounts::device_grant)),
//!   bound to its certificate, with the caveats `/api/v1/device/token` would give it. Revoking
//!   that grant or the device ends DIMSE access, as it ends STOW-RS access.
//!
//! Other identity types (username alone, Kerberos, SAML, JWT) carry nothing this broker can
//! verify; a peer that offers one expects it to be checked, so the association is refused
//! rather than the identity ignored. Before any token, the association must name our AE
//! title (`dicom_ae_title`), come from an enrolled, unrevoked device certificate, and use
//! the calling AE title that device was enrolled with.
//!
//! Every decision is one audit entry: the token check writes the same `access` entry as for
//! STOW-RS (route `dimse:c-store`), a refusal before it writes an equivalent `access` deny,
//! and each C-STORE writes the same `ingest` entry as a STOW-RS part.
use std::io::Read;

use cleave_dimse::{PeerInfo, Refusal, StoreFailure, StoreRequest, StoreSink, UserIdentityKind};
use cleave_tokens::{Op, Store};

use crate::audit::AuditEvent;
use crate::authz::{self, Caller, Need, Presented};
use crate::ingest::IngestError;
use crate::pki::CertFingerprint;
use crate::roles::Role;
use crate::server::{ConnInfo, ListenerKind};
use crate::state::AppState;
use crate::{tokens_adapter, Error};

/// The route template recorded for DIMSE decisions (never a concrete address or UID).
const ROUTE: &str = "dimse:c-store";

/// The broker's [`StoreSink`]: device accounts and their macaroons decide who may
/// associate; the ingest pipeline stores what they send.
pub(crate) struct DimseSink {
    state: AppState,
}

impl DimseSink {
    pub(crate) fn new(state: AppState) -> Self {
        DimseSink { state }
    }
}

/// An authorized device on one association. Only [`DimseSink::authorize`] makes one, from
/// a passing token check.
pub(crate) struct DeviceAssociation {
    caller: Caller,
    fingerprint: CertFingerprint,
}

/// Where the association's token comes from.
enum TokenSource {
    /// The passcode of a type-2 user identity.
    Passcode,
    /// The device's own token, minted under its current grant.
    Device,
}

fn actor(fp: &CertFingerprint) -> String {
    format!("device:{}", fp.hex().get(..16).unwrap_or(fp.hex()))
}

impl DimseSink {
    /// The checks before any token: our AE title, an enrolled device, its AE title.
    fn check_peer(&self, peer: &PeerInfo, fp: &CertFingerprint) -> Result<(), (Refusal, &'static str)> {
        // AE titles are compared exactly (both already trimmed of DICOM padding).
        if peer.called_ae_title() != self.state.config.dicom_ae_title.trim() {
            return Err((Refusal::CalledAeTitleNotRecognized, "called-ae-title"));
        }
        let device = match self.state.accounts.active_device(fp.hex()) {
            Ok(Some(d)) => d,
            Ok(None) => return Err((Refusal::NoReasonGiven, "unknown-or-revoked-device")),
            Err(_) => return Err((Refusal::TemporarilyUnavailable, "account-store-unavailable")),
        };
        if device.ae_title.trim() != peer.calling_ae_title() {
            return Err((Refusal::CallingAeTitleNotRecognized, "calling-ae-title"));
        }
        match peer.user_identity().map(|u| u.kind()) {
            None | Some(UserIdentityKind::UsernamePasscode) => Ok(()),
            Some(_) => Err((Refusal::UserIdentityNotAuthorized, "user-identity-type")),
        }
    }

    /// Records a refusal decided before the token check, as the token check would.
    fn refuse(&self, fp: &CertFingerprint, refusal: Refusal, why: &'static str) -> Refusal {
        let mut event = AuditEvent::new("access", "deny");
        event.actor = Some(actor(fp));
        event.op = Some(Op::Append.as_str());
        event.store = Some(Store::Clinical.as_str());
        event.route = Some(ROUTE.to_owned());
        event.cert_sha256 = Some(fp.hex().to_owned());
        event.reason = Some(why.to_owned());
        tracing::info!(reason = why, "DIMSE association refused");
        // A decision that cannot be recorded is not made; a refusal still refuses.
        if let Err(e) = self.state.audit.record(&event) {
            tracing::error!(error = %e, "DIMSE association refused: the audit log cannot record it");
            return Refusal::TemporarilyUnavailable;
        }
        refusal
    }

    /// The token this association is judged by.
    fn presented(&self, peer: &PeerInfo, fp: &CertFingerprint) -> (TokenSource, Result<Presented, Error>) {
        if let Some(identity) = peer.user_identity() {
            let token = identity
                .secondary_str()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| Presented { token: t.to_owned(), discharges: Vec::new() })
                .ok_or_else(|| Error::unauthorized("the user identity passcode is not a token; put the device token in the passcode"));
            return (TokenSource::Passcode, token);
        }
        let lifetime = time::OffsetDateTime::now_utc() + self.state.config.device_token_lifetime();
        let minted = self.state.accounts.device_grant(fp.hex(), lifetime.unix_timestamp()).and_then(|grant| {
            let grant = grant.ok_or_else(|| {
                Error::unauthorized("the device's grant has been revoked: fetch a new device token (POST /api/v1/device/token)")
            })?;
            let expires = time::OffsetDateTime::from_unix_timestamp(grant.expires)
                .map_err(|_| Error::Database("a grant has an impossible expiry time; the database was altered".into()))?;
            let token = tokens_adapter::mint(&grant.root_key, &grant.grant_id, Role::Modality, fp, expires)?;
            Ok(Presented { token, discharges: Vec::new() })
        });
        (TokenSource::Device, minted)
    }
}

impl StoreSink for DimseSink {
    type Principal = DeviceAssociation;

    fn authorize(&self, peer: &PeerInfo) -> Result<DeviceAssociation, Refusal> {
        let fp = CertFingerprint(hex::encode(peer.client_cert_sha256()));
        let decided = self.decide(peer, fp);
        self.state.metrics.association(if decided.is_ok() { "accepted" } else { "refused" });
        decided
    }

    fn store(&self, principal: &DeviceAssociation, object: StoreRequest, data: Box<dyn Read + Send>) -> Result<(), StoreFailure> {
        let (outcome, result) = self.store_counted(principal, object, data);
        self.state.metrics.ingested("dimse", outcome);
        result
    }
}

impl DimseSink {
    /// `authorize`, before it is counted.
    fn decide(&self, peer: &PeerInfo, fp: CertFingerprint) -> Result<DeviceAssociation, Refusal> {
        if let Err((refusal, why)) = self.check_peer(peer, &fp) {
            return Err(self.refuse(&fp, refusal, why));
        }
        let (source, presented) = self.presented(peer, &fp);
        let conn = ConnInfo { listener: ListenerKind::Mtls, peer: peer.peer_addr(), client_cert: Some(fp.clone()), local_port: None };
        // The same check and the same audit entry as a STOW-RS request.
        match authz::authorize_presented(&self.state, &conn, presented, Need::new(Op::Append, Store::Clinical, ROUTE)) {
            Ok(caller) => Ok(DeviceAssociation { caller, fingerprint: fp }),
            Err(e) => {
                // The message names a caveat kind or a state, never the token.
                tracing::info!(error = %e, "DIMSE association refused by the token check");
                Err(match (e, source) {
                    (Error::Unauthorized(_) | Error::Forbidden(_), TokenSource::Passcode) => Refusal::UserIdentityNotAuthorized,
                    (Error::Unauthorized(_) | Error::Forbidden(_), TokenSource::Device) => Refusal::NoReasonGiven,
                    _ => Refusal::TemporarilyUnavailable,
                })
            }
        }
    }

    /// `store`, with the outcome it is counted under.
    fn store_counted(&self, principal: &DeviceAssociation, _object: StoreRequest, mut data: Box<dyn Read + Send>) -> (&'static str, Result<(), StoreFailure>) {
        // A device or grant revoked while its association is open stores nothing more.
        let live = self.state.accounts.grant_is_live(&principal.caller.grant_id).and_then(|live| {
            Ok(live && self.state.accounts.active_device(principal.fingerprint.hex())?.is_some())
        });
        match live {
            Ok(true) => {}
            Ok(false) => return ("not-authorized", Err(StoreFailure::NotAuthorized)),
            Err(_) => return ("storage-failure", Err(StoreFailure::OutOfResources)),
        }
        let mut outcome = "stored";
        let mut timings = None;
        let (mut event, failure) = match self.state.pipeline.ingest(&mut data) {
            Ok(done) => {
                timings = Some(done.timings);
                let mut e = principal.caller.event("ingest", "allow");
                e.patients = vec![done.pseudonym.clone()];
                e.study = Some(done.study_uid.clone());
                if let Some(flag) = done.flagged {
                    tracing::info!(flag, "arrival flagged for patient-matching review");
                }
                (e, None)
            }
            Err(err) => {
                let (failure, kind) = match &err {
                    IngestError::BadObject(_) => (StoreFailure::CannotUnderstand, "bad-object"),
                    IngestError::Storage(_) => (StoreFailure::OutOfResources, "storage-failure"),
                };
                outcome = kind;
                // The message names what was wrong, never a value from the object.
                tracing::warn!(error = %err, "DIMSE C-STORE refused");
                let mut e = principal.caller.event("ingest", "error");
                e.reason = Some(kind.into());
                (e, Some(failure))
            }
        };
        // Which device sent it, over which service: STOW-RS knows the route from the request.
        event.cert_sha256 = Some(principal.fingerprint.hex().to_owned());
        event.route = Some(ROUTE.to_owned());
        // The peer hears "success" only once the audit entry is durable too.
        let began = std::time::Instant::now();
        if let Err(e) = self.state.audit.record(&event) {
            tracing::error!(error = %e, "DIMSE C-STORE: the audit log cannot record the ingest");
            return ("storage-failure", Err(StoreFailure::OutOfResources));
        }
        if let Some(t) = timings {
            self.state.metrics.ingest_phases("dimse", &t, began.elapsed());
        }
        (outcome, failure.map_or(Ok(()), Err))
    }
}
