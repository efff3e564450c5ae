//! The broker's only contact with the macaroon library (`cleave-tokens`): minting tokens
//! with role-derived caveats, reading the grant id a token names, and verifying a token
//! and its discharges against a request's facts.
//!
//! Kept in one file so the caveat vocabulary the broker relies on is visible in one place:
//! a minted token carries `cert = sha256:<hex>`, `expires < <end of shift>`, `ops = ...`
//! and `stores = ...`; its identifier is the grant id (32 hex characters).
use cleave_keys::Key32;
use cleave_tokens::{Authorized, Caveat, Denial, Macaroon, OpSet, RequestContext, RootKey, StoreSet, VerifiedTokens};

use crate::authz::RequestFacts;
use crate::pki::CertFingerprint;
use crate::roles::Role;
use crate::server::ListenerKind;
use crate::Error;

/// The location field of every token this broker mints.
const LOCATION: &str = "cleave-broker";

fn mint_error(d: Denial) -> Error {
    Error::Config(format!("a token could not be minted ({d})"))
}

/// Mint a token for a grant: bound to `cert`, valid until `expires`, allowing what `role` may.
pub(crate) fn mint(
    root: &Key32,
    grant_id: &str,
    role: Role,
    cert: &CertFingerprint,
    expires: time::OffsetDateTime,
) -> Result<String, Error> {
    let mut m = Macaroon::mint(root, grant_id.as_bytes(), LOCATION).map_err(mint_error)?;
    let caveats = [
        Caveat::Cert(cert.bytes()),
        Caveat::Expires(expires.into()),
        Caveat::Ops(OpSet::of(&role.ops())),
        Caveat::Stores(StoreSet::of(&role.stores())),
    ];
    for c in &caveats {
        m.add_first_party(c).map_err(mint_error)?;
    }
    Ok(m.serialize())
}

/// Mint the base a doctor's client narrows offline to make shares: the same grant, not
/// bound to a certificate (the consultant has another one, or none), read only, on the
/// stores the role may share. The broker accepts a token without a certificate binding
/// only if it also carries a `share` caveat, so this base is useless until narrowed into
/// a share, and every share of it dies with the grant.
pub(crate) fn mint_share_base(root: &Key32, grant_id: &str, role: Role, expires: time::OffsetDateTime) -> Result<String, Error> {
    let stores: Vec<_> = role.stores().into_iter().filter(|s| role.allows(cleave_tokens::Op::Share, *s)).collect();
    let mut m = Macaroon::mint(root, grant_id.as_bytes(), LOCATION).map_err(mint_error)?;
    let caveats = [
        Caveat::Expires(expires.into()),
        Caveat::Ops(OpSet::of(&[cleave_tokens::Op::Read])),
        Caveat::Stores(StoreSet::of(&stores)),
    ];
    for c in &caveats {
        m.add_first_party(c).map_err(mint_error)?;
    }
    Ok(m.serialize())
}

/// The grant id a token names (its macaroon identifier), without verifying it.
pub(crate) fn grant_id(token: &str) -> Result<String, Error> {
    let m = Macaroon::parse(token).map_err(|d| Error::unauthorized(d.to_string()))?;
    let id = std::str::from_utf8(m.identifier())
        .ok()
        .filter(|s| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| Error::unauthorized("the token was not issued by this server; log in for a new one"))?;
    Ok(id.to_owned())
}

/// Verify `token` with its `discharges` under `root` for a request with `facts`. A token
/// whose chain has verified before (`verified`) only has its caveats checked again.
pub(crate) fn verify(
    verified: &VerifiedTokens,
    token: &str,
    discharges: &[String],
    root: &Key32,
    facts: &RequestFacts,
    listener: ListenerKind,
) -> Result<Authorized, Error> {
    let mut ctx = RequestContext::new(facts.now.into(), facts.op, facts.store, facts.peer_ip);
    if let Some(p) = &facts.patient {
        ctx = ctx.with_patient(p.clone());
    }
    if let Some(s) = &facts.study {
        ctx = ctx.with_study(s.clone());
    }
    if let Some(c) = &facts.client_cert {
        ctx = ctx.with_client_cert(c.bytes());
    }
    let ds: Vec<&str> = discharges.iter().map(String::as_str).collect();
    if let Some(hit) = verified.get(token, &ds) {
        return hit.authorize(&ctx).map_err(|d| denial(d, listener));
    }
    verified.verify(token, &ds, &RootKey::new(root), &ctx).map_err(|d| match d {
        // Which text was malformed: a discharge or the token (the token was parsed once
        // already, by `grant_id`, so a parse failure here is a discharge's).
        d @ (Denial::Malformed(_) | Denial::TooLarge(_) | Denial::UnsupportedFormat) if !ds.is_empty() && Macaroon::parse(token).is_ok() => {
            Error::unauthorized(format!("a discharge: {d}"))
        }
        d => denial(d, listener),
    })
}

/// 401 when the token itself is no good (malformed, forged, expired): get a new one.
/// 403 when a valid token's caveat refuses this request.
fn denial(d: Denial, listener: ListenerKind) -> Error {
    match d {
        Denial::CertMismatch if listener == ListenerKind::Consultant => Error::forbidden(format!(
            "{d} (this listener has no client certificate, so a token bound to a certificate works only on the mutual-TLS listener)"
        )),
        Denial::Malformed(_)
        | Denial::TooLarge(_)
        | Denial::UnsupportedFormat
        | Denial::SignatureInvalid
        | Denial::Expired
        | Denial::DischargeMissing
        | Denial::DischargeNotBound
        | Denial::DischargeUnused => Error::unauthorized(d.to_string()),
        other => Error::forbidden(other),
    }
}
