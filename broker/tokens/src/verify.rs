//! The authorization decision: a token, its discharges and a request in; an [`Authorized`]
//! proof or a [`Denial`] out.
//!
//! Order: size limits, caveat grammar (token and discharges), each caveat against the
//! request, then the HMAC chain with the discharges, ending in one constant-time comparison.
//! Caveats are checked first because it is cheap and gives the precise denial; the chain
//! still has to pass, so a forged token never gets further than a denial.

use std::net::IpAddr;
use std::time::SystemTime;

use ipnet::IpNet;
use subtle::ConstantTimeEq;

use crate::caveat::{Caveat, Op, OpSet, Pseudonym, ShareId, Store, StoreSet, StudyUid};
use crate::crypto::{self, RootKey, Sig};
use crate::error::{Denial, Result};
use crate::macaroon::Macaroon;

/// Most discharges sent with one token.
pub const MAX_DISCHARGES: usize = 16;
/// Deepest nesting of discharges (a discharge that itself has third-party caveats).
pub const MAX_DISCHARGE_DEPTH: usize = 4;

/// What the broker knows about the request a token is presented for.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RequestContext {
    /// The broker's clock when the request arrived.
    pub now: SystemTime,
    /// The one operation the request performs.
    pub op: Op,
    /// The one store the request touches.
    pub store: Store,
    /// The patient the request concerns, if it concerns exactly one. A token with a
    /// `patient` caveat is refused for requests that do not.
    pub patient: Option<Pseudonym>,
    /// The study the request concerns, if it concerns exactly one.
    pub study: Option<StudyUid>,
    /// SHA-256 of the client certificate (DER) presented in the TLS handshake.
    pub client_cert_sha256: Option<[u8; 32]>,
    /// The peer's address as the listener saw it.
    pub peer_ip: IpAddr,
}

impl RequestContext {
    /// A request for `op` on `store` from `peer_ip` at `now`, about no single patient or study.
    pub fn new(now: SystemTime, op: Op, store: Store, peer_ip: IpAddr) -> RequestContext {
        RequestContext { now, op, store, patient: None, study: None, client_cert_sha256: None, peer_ip }
    }
    /// The request concerns this patient.
    pub fn with_patient(mut self, patient: Pseudonym) -> RequestContext {
        self.patient = Some(patient);
        self
    }
    /// The request concerns this study.
    pub fn with_study(mut self, study: StudyUid) -> RequestContext {
        self.study = Some(study);
        self
    }
    /// The client presented a certificate with this SHA-256 (of its DER encoding).
    pub fn with_client_cert(mut self, sha256: [u8; 32]) -> RequestContext {
        self.client_cert_sha256 = Some(sha256);
        self
    }
}

/// What a token allows once every caveat (its own and its discharges') is intersected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    ops: OpSet,
    stores: StoreSet,
    patient: Option<Pseudonym>,
    study: Option<StudyUid>,
    expires: Option<SystemTime>,
    cert: Option<[u8; 32]>,
    nets: Vec<IpNet>,
}

impl Scope {
    fn of<'a>(caveats: impl Iterator<Item = &'a Caveat>) -> Scope {
        let mut s = Scope {
            ops: OpSet::ALL,
            stores: StoreSet::ALL,
            patient: None,
            study: None,
            expires: None,
            cert: None,
            nets: Vec::new(),
        };
        for c in caveats {
            match c {
                Caveat::Ops(o) => s.ops = s.ops.intersect(*o),
                Caveat::Stores(st) => s.stores = s.stores.intersect(*st),
                // All patient (study, cert) caveats matched the same request value, so they agree.
                Caveat::Patient(p) => s.patient = Some(p.clone()),
                Caveat::Study(u) => s.study = Some(u.clone()),
                Caveat::Expires(t) => s.expires = Some(s.expires.map_or(*t, |e| e.min(*t))),
                Caveat::Cert(h) => s.cert = Some(*h),
                Caveat::Net(n) => s.nets.push(*n),
                Caveat::Share(_) | Caveat::Note(_) => {}
            }
        }
        s
    }
    /// Operations the token allows.
    pub fn ops(&self) -> OpSet {
        self.ops
    }
    /// Stores the token allows.
    pub fn stores(&self) -> StoreSet {
        self.stores
    }
    /// The one patient the token is limited to, if any.
    pub fn patient(&self) -> Option<&Pseudonym> {
        self.patient.as_ref()
    }
    /// The one study the token is limited to, if any.
    pub fn study(&self) -> Option<&StudyUid> {
        self.study.as_ref()
    }
    /// The earliest `expires` time, if any.
    pub fn expires(&self) -> Option<SystemTime> {
        self.expires
    }
    /// The certificate hash the token is bound to, if any.
    pub fn cert(&self) -> Option<&[u8; 32]> {
        self.cert.as_ref()
    }
    /// Networks the peer must be in (all of them).
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }
}

/// Proof that a token authorizes one request. Only [`Macaroon::verify`] can make one (the
/// field `_proof` is private), so code that must only run for authorized requests takes it
/// as an argument.
#[derive(Debug)]
pub struct Authorized {
    identifier: Vec<u8>,
    op: Op,
    store: Store,
    patient: Option<Pseudonym>,
    share_ids: Vec<ShareId>,
    effective: Scope,
    _proof: (),
}

impl Authorized {
    /// The grant id (the token's identifier).
    pub fn identifier(&self) -> &[u8] {
        &self.identifier
    }
    /// The operation this proof was issued for.
    pub fn op(&self) -> Op {
        self.op
    }
    /// The store this proof was issued for.
    pub fn store(&self) -> Store {
        self.store
    }
    /// The patient this proof was issued for, if the request named one.
    pub fn patient(&self) -> Option<&Pseudonym> {
        self.patient.as_ref()
    }
    /// Share ids named by `share` caveats. The broker must refuse the request if any of
    /// them is revoked: that check needs the share registry, which this crate does not have.
    pub fn share_ids(&self) -> &[ShareId] {
        &self.share_ids
    }
    /// Everything the token allows, all caveats intersected.
    pub fn effective(&self) -> &Scope {
        &self.effective
    }
}

impl Macaroon {
    /// Decide whether this token, with `discharges` (each bound to it with
    /// [`Macaroon::bind_discharge`]), authorizes the request `ctx`. `root_key` is the key of
    /// the grant named by [`Macaroon::identifier`].
    pub fn verify(&self, root_key: &RootKey, discharges: &[Macaroon], ctx: &RequestContext) -> Result<Authorized> {
        self.verify_keeping_caveats(root_key, discharges, ctx).map(|(authorized, _)| authorized)
    }

    /// [`Macaroon::verify`], also handing back the typed caveats (the token's and its
    /// discharges'), which a [`crate::VerifiedTokens`] cache keeps.
    pub(crate) fn verify_keeping_caveats(
        &self,
        root_key: &RootKey,
        discharges: &[Macaroon],
        ctx: &RequestContext,
    ) -> Result<(Authorized, Vec<Caveat>)> {
        if discharges.len() > MAX_DISCHARGES {
            return Err(Denial::TooLarge("discharge count"));
        }
        // Grammar first, for the token and every discharge, then the request.
        let mut typed = Vec::with_capacity(self.caveats.len());
        for m in std::iter::once(self).chain(discharges) {
            for c in m.caveats.iter().filter(|c| c.vid.is_none()) {
                typed.push(Caveat::parse_bytes(&c.id)?);
            }
        }
        for c in &typed {
            c.check(ctx)?;
        }

        let mut used = [false; MAX_DISCHARGES];
        let start = root_key.initial(&self.identifier);
        let computed = chain(self, start, &self.signature, discharges, &mut used, 0)?;
        if !bool::from(computed.ct_eq(&*self.signature)) {
            return Err(Denial::SignatureInvalid);
        }
        if used.iter().take(discharges.len()).any(|u| !u) {
            return Err(Denial::DischargeUnused);
        }
        Ok((authorized(&self.identifier, &typed, ctx), typed))
    }
}

/// The proof for `ctx`, once every caveat in `typed` has been checked against it and the
/// chain that carries them has been verified. Only this crate calls it.
pub(crate) fn authorized(identifier: &[u8], typed: &[Caveat], ctx: &RequestContext) -> Authorized {
    let share_ids = typed
        .iter()
        .filter_map(|c| match c {
            Caveat::Share(id) => Some(id.clone()),
            _ => None,
        })
        .collect();
    Authorized {
        identifier: identifier.to_vec(),
        op: ctx.op,
        store: ctx.store,
        patient: ctx.patient.clone(),
        share_ids,
        effective: Scope::of(typed.iter()),
        _proof: (),
    }
}

/// Recompute `m`'s chain from `sig`, verifying each third-party caveat's discharge on the
/// way (bound to `root_sig`, the signature of the token presented). Each discharge is used
/// at most once, which also ends any cycle of discharges naming each other.
fn chain(
    m: &Macaroon,
    mut sig: Sig,
    root_sig: &[u8; 32],
    discharges: &[Macaroon],
    used: &mut [bool; MAX_DISCHARGES],
    depth: usize,
) -> Result<Sig> {
    for c in &m.caveats {
        let Some(vid) = &c.vid else {
            sig = crypto::hmac(&*sig, &c.id);
            continue;
        };
        // A wrong chain so far (altered token, wrong root key) shows here first.
        let caveat_key = crypto::open_vid(&sig, vid)?;
        if depth >= MAX_DISCHARGE_DEPTH {
            return Err(Denial::TooLarge("discharge depth"));
        }
        let index = discharges
            .iter()
            .enumerate()
            .position(|(i, d)| !used[i] && d.identifier == c.id)
            .ok_or(Denial::DischargeMissing)?;
        used[index] = true;
        let discharge = &discharges[index];
        let start = crypto::hmac(&*caveat_key, &discharge.identifier);
        let own = chain(discharge, start, root_sig, discharges, used, depth + 1)?;
        let bound = crypto::bind(root_sig, &own);
        if !bool::from(bound.ct_eq(&*discharge.signature)) {
            return Err(Denial::DischargeNotBound);
        }
        sig = crypto::hmac2(&sig, vid, &c.id);
    }
    Ok(sig)
}
