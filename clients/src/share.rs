//! The share button: narrow a doctor's share base offline into a token for a consultant.
//!
//! Nothing is sent to the server. The share base (received at login) is already read-only
//! and unbound to a certificate; a share adds `expires`, `ops = read`, `stores`, exactly
//! one `patient` or `study`, optionally `cert`, and `share = <random id>`, the id the
//! doctor later revokes by. Caveats only narrow, so a share can never do more than its
//! base; the broker refuses a certificate-less token that lacks a `share` caveat.
use std::path::Path;
use std::time::{Duration, SystemTime};

use cleave_tokens::{attenuate, Caveat, Op, OpSet, Pseudonym, ShareId, Store, StoreSet, StudyUid};
use sha2::Digest;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// What a share is about: one patient (all their clinical data) or one study.
#[derive(Clone, Debug)]
pub enum ShareTarget {
    Patient(Pseudonym),
    Study(StudyUid),
}

impl ShareTarget {
    /// `--patient <pseudonym>`.
    pub fn patient(p: &str) -> Result<Self> {
        Ok(ShareTarget::Patient(
            Pseudonym::parse(p).map_err(|_| Error::Usage("--patient takes a pseudonym (P<digits>-<32 hex>), not a name or patient id; find it with `cleave lookup`".into()))?,
        ))
    }
    /// `--study <uid>`.
    pub fn study(s: &str) -> Result<Self> {
        Ok(ShareTarget::Study(StudyUid::parse(s).map_err(|_| Error::Usage("--study takes a DICOM study instance UID (digits and dots)".into()))?))
    }
}

/// How to narrow.
#[derive(Clone, Debug)]
pub struct ShareRequest {
    pub target: ShareTarget,
    /// How long the share lives (capped by the base token's own expiry).
    pub lifetime: Duration,
    /// Also allow reading the identity store (the patient's name and ids).
    pub include_identity: bool,
    /// Bind to this consultant certificate (PEM): the share then works only on the
    /// mutual-TLS listener with that certificate.
    pub bind_cert_sha256: Option<[u8; 32]>,
}

/// A made share: its id (to revoke by), the token and when it expires.
pub struct Share {
    pub share_id: String,
    pub token: Zeroizing<String>,
    pub expires: SystemTime,
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Share {{ share_id: {}, token: <redacted> }}", self.share_id)
    }
}

/// Parse `48h`, `30m`, `7d`, `90s`.
pub fn parse_lifetime(s: &str) -> Result<Duration> {
    let bad = || Error::Usage("--expires takes a number and a unit: 90s, 30m, 48h or 7d".into());
    let (num, unit) = s.split_at(s.len().checked_sub(1).ok_or_else(bad)?);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.checked_mul(3600).ok_or_else(bad)?,
        "d" => n.checked_mul(86_400).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    if secs == 0 || secs > 30 * 86_400 {
        return Err(Error::Usage("a share lives between 1 second and 30 days".into()));
    }
    Ok(Duration::from_secs(secs))
}

/// SHA-256 of the first certificate in a PEM file: what a `cert` caveat names.
pub fn cert_sha256(pem: &Path) -> Result<[u8; 32]> {
    let bytes = std::fs::read(pem).map_err(|e| Error::io("reading", pem, e))?;
    let der = rustls_pemfile::certs(&mut bytes.as_slice())
        .next()
        .and_then(|c| c.ok())
        .ok_or_else(|| Error::Usage(format!("{} holds no PEM certificate; give the consultant's certificate file", pem.display())))?;
    Ok(sha2::Sha256::digest(der.as_ref()).into())
}

/// Narrow `share_base` into a share. Offline.
pub fn make_share(share_base: &str, req: &ShareRequest, now: SystemTime) -> Result<Share> {
    let share_id = cleave_keys::random_id128();
    let id = ShareId::parse(&share_id).map_err(|_| Error::Token("a fresh share id was malformed".into()))?;
    let expires = now + req.lifetime;
    let stores = if req.include_identity { vec![Store::Identity, Store::Clinical] } else { vec![Store::Clinical] };
    let mut caveats = vec![
        Caveat::Expires(expires),
        Caveat::Ops(OpSet::of(&[Op::Read])),
        Caveat::Stores(StoreSet::of(&stores)),
        match &req.target {
            ShareTarget::Patient(p) => Caveat::Patient(p.clone()),
            ShareTarget::Study(s) => Caveat::Study(s.clone()),
        },
    ];
    if let Some(c) = req.bind_cert_sha256 {
        caveats.push(Caveat::Cert(c));
    }
    caveats.push(Caveat::Share(id));
    let token = attenuate(share_base, &caveats)
        .map_err(|d| Error::Token(format!("the stored share base could not be narrowed ({d}); log in again")))?;
    Ok(Share { share_id, token: Zeroizing::new(token), expires })
}

/// The link a consultant opens: the token in the fragment, which browsers never send to
/// the server, so it stays out of request lines and access logs.
pub fn share_url(consultant_base: &str, token: &str) -> String {
    format!("{}/consult#token={}", consultant_base.trim_end_matches('/'), token)
}

/// The token as a QR code drawn with Unicode half blocks (two modules per character
/// row), for a phone to scan off the screen.
pub fn qr_text(data: &str) -> Result<String> {
    let code = qrcode::QrCode::with_error_correction_level(data.as_bytes(), qrcode::EcLevel::L)
        .map_err(|_| Error::Token("the token is too long for a QR code; send the text or the link instead".into()))?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_parse() {
        assert_eq!(parse_lifetime("48h").unwrap(), Duration::from_secs(48 * 3600));
        assert_eq!(parse_lifetime("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_lifetime("7d").unwrap(), Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn fail_bad_lifetimes() {
        for bad in ["", "h", "0h", "48", "48x", "-1h", "31d", "99999999999999999999d", "1.5h"] {
            assert!(parse_lifetime(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn fail_targets_that_are_not_pseudonyms_or_uids() {
        assert!(ShareTarget::patient("Doe^John").is_err());
        assert!(ShareTarget::patient("P1-0123").is_err());
        assert!(ShareTarget::study("1.2.03").is_err());
        assert!(ShareTarget::study("1.2.840.10008").is_ok());
    }

    #[test]
    fn the_link_carries_the_token_in_the_fragment_only() {
        let u = share_url("https://c.example:8444/", "TOKEN");
        assert_eq!(u, "https://c.example:8444/consult#token=TOKEN");
    }
}
