//! Checking a request's token: the one path every authenticated route goes through.
//!
//! The broker finds the grant the token names, refuses a revoked or expired grant, builds
//! the request's facts (operation, store, patient, study, client certificate, peer
//! address, time) and hands token, discharges and facts to the token verifier. Only a
//! passing check yields a [`Caller`], which carries the verifier's proof value; data-path
//! code takes that proof, so a store cannot be reached without the check.
use std::net::IpAddr;

use axum::http::HeaderMap;

use cleave_tokens::{Authorized, Op, Pseudonym, Store, StudyUid};

use crate::accounts::Subject;
use crate::audit::AuditEvent;
use crate::pki::CertFingerprint;
use crate::roles::Role;
use crate::server::{ConnInfo, ListenerKind};
use crate::state::AppState;
use crate::tokens_adapter;
use crate::Error;

/// What a route needs from a token.
#[derive(Clone, Debug)]
pub struct Need {
    pub op: Op,
    pub store: Store,
    /// The patient the request is about (a pseudonym), when the route names one.
    pub patient: Option<Pseudonym>,
    pub study: Option<StudyUid>,
    /// The route template, for the audit log.
    pub route: &'static str,
}

impl Need {
    pub fn new(op: Op, store: Store, route: &'static str) -> Self {
        Need { op, store, patient: None, study: None, route }
    }
    /// The request concerns this patient; 404 if the text is not a pseudonym (it cannot
    /// name a stored patient, and the answer must not echo it).
    pub fn patient(mut self, p: &str) -> Result<Self, Error> {
        self.patient = Some(Pseudonym::parse(p).map_err(|_| Error::not_found("patient"))?);
        Ok(self)
    }
    /// The request concerns this study; 404 if the text is not a DICOM UID.
    pub fn study(mut self, s: &str) -> Result<Self, Error> {
        self.study = Some(StudyUid::parse(s).map_err(|_| Error::not_found("study"))?);
        Ok(self)
    }
}

/// The facts about a request that caveats are checked against.
#[derive(Clone, Debug)]
pub struct RequestFacts {
    pub op: Op,
    pub store: Store,
    pub patient: Option<Pseudonym>,
    pub study: Option<StudyUid>,
    pub client_cert: Option<CertFingerprint>,
    pub peer_ip: IpAddr,
    pub now: time::OffsetDateTime,
}

/// An authorized caller. Only [`authorize`] makes one.
pub struct Caller {
    pub grant_id: String,
    pub subject: Subject,
    pub share_id: Option<String>,
    /// The verifier's proof that this request's caveats were all satisfied. Store access
    /// takes it by reference.
    pub proof: Authorized,
}

/// The bearer token and discharges of a request.
pub(crate) struct Presented {
    pub token: String,
    pub discharges: Vec<String>,
}

/// `Authorization: Bearer <token>` plus any number of `Cleave-Discharge: <token>`.
pub(crate) fn presented(headers: &HeaderMap) -> Result<Presented, Error> {
    let mut auth = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    let value = auth
        .next()
        .ok_or_else(|| Error::unauthorized("no token: send `Authorization: Bearer <token>` (log in at /api/v1/login)"))?;
    if auth.next().is_some() {
        return Err(Error::unauthorized("more than one Authorization header; send exactly one bearer token"));
    }
    let value = value.to_str().map_err(|_| Error::unauthorized("the Authorization header is not a bearer token"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::unauthorized("the Authorization header is not a bearer token"))?;
    let mut discharges = Vec::new();
    for d in headers.get_all("cleave-discharge") {
        let d = d.to_str().map_err(|_| Error::unauthorized("a Cleave-Discharge header is not a token"))?;
        discharges.push(d.trim().to_owned());
    }
    if discharges.len() > 16 {
        return Err(Error::unauthorized("too many discharge tokens (at most 16)"));
    }
    Ok(Presented { token: token.to_owned(), discharges })
}

/// Check the request's token against `need`. Every outcome is recorded in the audit log.
pub(crate) fn authorize(state: &AppState, conn: &ConnInfo, headers: &HeaderMap, need: Need) -> Result<Caller, Error> {
    authorize_presented(state, conn, presented(headers), need)
}

/// [`authorize`] for a token that did not come in HTTP headers (DIMSE: the user identity
/// passcode of an association, or the device's own token). The same checks, the same
/// audit entry.
pub(crate) fn authorize_presented(state: &AppState, conn: &ConnInfo, presented: Result<Presented, Error>, need: Need) -> Result<Caller, Error> {
    let mut event = AuditEvent::new("access", "deny");
    event.op = Some(need.op.as_str());
    event.store = Some(need.store.as_str());
    event.route = Some(need.route.to_owned());
    // Only for the keyed references the audit trail makes of them; never serialized.
    event.patients = need.patient.iter().map(|p| p.as_str().to_owned()).collect();
    event.study = need.study.as_ref().map(|s| s.as_str().to_owned());
    event.cert_sha256 = conn.client_cert.as_ref().map(|c| c.hex().to_owned());
    let result = check(state, conn, presented, need, &mut event);
    if let Err(e) = &result {
        event.reason = Some(e.to_string());
    } else {
        event.outcome = "allow";
    }
    state.audit.record(&event)?;
    result
}

/// Whether the caller's token would also pass `need`, checked the way [`authorize`] checks
/// but without an audit entry: for a route that widens its answer when the token allows
/// more (WADO-RS restoring identity when the token may also read the identity vault), a
/// "no" is not a refused request and must not be logged as a denial. What the route then
/// does with a "yes" is recorded by the route itself.
pub(crate) fn also_allows(state: &AppState, conn: &ConnInfo, headers: &HeaderMap, need: Need) -> bool {
    let mut scratch = AuditEvent::new("access", "deny");
    check(state, conn, presented(headers), need, &mut scratch).is_ok()
}

/// Whether the request's bearer token names a live grant (no signature or caveat check):
/// a cheap gate before work that only a real token holder should be able to cause.
pub(crate) fn names_live_grant(state: &AppState, headers: &HeaderMap) -> bool {
    let Ok(p) = presented(headers) else { return false };
    let Ok(grant_id) = tokens_adapter::grant_id(&p.token) else { return false };
    matches!(state.accounts.live_grant(&grant_id), Ok(Some(_)))
}

fn check(state: &AppState, conn: &ConnInfo, presented: Result<Presented, Error>, need: Need, event: &mut AuditEvent) -> Result<Caller, Error> {
    let p = presented?;
    let grant_id = tokens_adapter::grant_id(&p.token)?;
    event.grant_id = Some(grant_id.clone());
    let grant = state.accounts.live_grant(&grant_id)?.ok_or_else(|| {
        Error::unauthorized("the token's grant has been revoked or has expired: log in again for a new token")
    })?;
    event.actor = Some(actor_name(&grant.subject));
    let facts = RequestFacts {
        op: need.op,
        store: need.store,
        patient: need.patient,
        study: need.study,
        client_cert: conn.client_cert.clone(),
        peer_ip: conn.peer.ip(),
        now: time::OffsetDateTime::now_utc(),
    };
    let proof = tokens_adapter::verify(&state.verified, &p.token, &p.discharges, &grant.root_key, &facts, conn.listener)?;
    let shares: Vec<String> = proof.share_ids().iter().map(|s| s.as_str().to_owned()).collect();
    event.share_id = shares.first().cloned();
    if proof.effective().cert().is_none() && shares.is_empty() {
        return Err(Error::forbidden(
            "a token not bound to a certificate is accepted only as a share: narrow it with a share caveat",
        ));
    }
    if conn.listener == ListenerKind::Consultant && shares.is_empty() {
        return Err(Error::forbidden(
            "this listener accepts only shared tokens (with a share caveat); staff use the mutual-TLS listener",
        ));
    }
    // The role's row is a ceiling on top of the caveats: ops × stores cannot say "write
    // clinical but not identity" (see roles.rs).
    let role = match &grant.subject {
        Subject::Staff(u) => state.accounts.staff_role(u)?,
        Subject::Device(_) => Some(Role::Modality),
    };
    if !role.is_some_and(|r| r.allows(facts.op, facts.store)) {
        return Err(Error::forbidden(format!(
            "operation not allowed: {} on {} is outside the token holder's role",
            facts.op, facts.store
        )));
    }
    for share in &shares {
        if !state.accounts.touch_share(&grant_id, share)? {
            return Err(Error::forbidden("this share has been revoked by the person who made it"));
        }
    }
    Ok(Caller { grant_id, subject: grant.subject, share_id: shares.into_iter().next(), proof })
}

fn actor_name(subject: &Subject) -> String {
    match subject {
        Subject::Staff(u) => u.clone(),
        Subject::Device(fp) => format!("device:{}", fp.get(..16).unwrap_or(fp)),
    }
}

impl Caller {
    /// An audit event for something this caller did after authorization (the data-path
    /// follow-up that names the patients a store answered with).
    pub(crate) fn event(&self, action: &'static str, outcome: &'static str) -> AuditEvent {
        let mut e = AuditEvent::new(action, outcome);
        e.actor = Some(actor_name(&self.subject));
        e.grant_id = Some(self.grant_id.clone());
        e.share_id = self.share_id.clone();
        e
    }
}

/// Check a token for an action on its own grant (revoking it). There is no store involved,
/// so the token must pass for one of the operations its subject's role allows; a token
/// narrowed so far that it allows none of them cannot revoke.
pub(crate) fn authorize_own_grant(state: &AppState, conn: &ConnInfo, headers: &HeaderMap) -> Result<Caller, Error> {
    let p = presented(headers)?;
    let grant_id = tokens_adapter::grant_id(&p.token)?;
    let grant = state.accounts.live_grant(&grant_id)?.ok_or_else(|| {
        Error::unauthorized("the token's grant has been revoked or has expired: log in again for a new token")
    })?;
    let role = match &grant.subject {
        Subject::Staff(u) => state.accounts.staff_role(u)?.ok_or_else(|| Error::forbidden("the account is disabled"))?,
        Subject::Device(_) => Role::Modality,
    };
    let mut last = Error::forbidden("the token allows no operation");
    for (op, store) in role.permissions() {
        let need = Need::new(*op, *store, "/api/v1/grants/current/revoke");
        match authorize(state, conn, headers, need) {
            Ok(c) => return Ok(c),
            Err(e) => last = e,
        }
    }
    Err(last)
}
