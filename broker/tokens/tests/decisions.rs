//! Decisions a broker makes every day: tokens that must pass, and every way a holder might
//! try to widen or misuse one, each with the denial it must get.

mod common;

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, UNIX_EPOCH};

use cleave_tokens::{attenuate, Caveat, Denial, Macaroon, Op, OpSet, Pseudonym, RootKey, Store, StoreSet, StudyUid};
use common::*;

const GRANT: &[u8] = b"grant-0001";

/// A token with the six first-party caveats a typical clinician share carries.
fn six_caveat_token() -> Macaroon {
    let mut m = Macaroon::mint(&key(7), GRANT, "https://cleave.example").unwrap();
    for p in [
        "ops = read,write".to_string(),
        "stores = clinical".to_string(),
        format!("patient = {PATIENT}"),
        "expires < 2030-01-01T00:00:00Z".to_string(),
        format!("cert = sha256:{CERT_HEX}"),
        "net = 10.0.0.0/8".to_string(),
    ] {
        m.add_first_party_predicate(&p).unwrap();
    }
    m
}

fn verify_text(token: &str) -> Result<cleave_tokens::Authorized, Denial> {
    Macaroon::parse(token)?.verify(&RootKey::new(&key(7)), &[], &ctx())
}

#[test]
fn a_valid_token_authorizes_and_reports_its_scope() {
    let token = six_caveat_token().serialize();
    let auth = verify_text(&token).unwrap();
    assert_eq!(auth.identifier(), GRANT);
    assert_eq!(auth.op(), Op::Read);
    let scope = auth.effective();
    assert_eq!(scope.ops(), OpSet::of(&[Op::Read, Op::Write]));
    assert_eq!(scope.stores(), StoreSet::of(&[Store::Clinical]));
    assert_eq!(scope.patient().map(|p| p.as_str()), Some(PATIENT));
    assert_eq!(scope.expires(), Some(UNIX_EPOCH + Duration::from_secs(1_893_456_000)));
    assert_eq!(scope.cert(), Some(&cert()));
    assert_eq!(scope.nets().len(), 1);
}

#[test]
fn each_request_field_is_enforced() {
    let m = six_caveat_token();
    let rk = RootKey::new(&key(7));
    let check = |c: cleave_tokens::RequestContext| m.verify(&rk, &[], &c).map(|_| ());

    let mut c = ctx();
    c.op = Op::Admin;
    assert_eq!(check(c), Err(Denial::OpNotAllowed(Op::Admin)));
    let mut c = ctx();
    c.store = Store::Identity;
    assert_eq!(check(c), Err(Denial::StoreNotAllowed(Store::Identity)));
    let mut c = ctx();
    c.patient = Some(Pseudonym::parse(OTHER_PATIENT).unwrap());
    assert_eq!(check(c), Err(Denial::PatientNotCovered));
    let mut c = ctx();
    c.patient = None;
    assert_eq!(check(c), Err(Denial::PatientNotCovered), "a patient token must not list all patients");
    let mut c = ctx();
    c.now = UNIX_EPOCH + Duration::from_secs(1_893_456_000);
    assert_eq!(check(c), Err(Denial::Expired), "expiry is exclusive");
    let mut c = ctx();
    c.client_cert_sha256 = Some([0u8; 32]);
    assert_eq!(check(c), Err(Denial::CertMismatch));
    let mut c = ctx();
    c.client_cert_sha256 = None;
    assert_eq!(check(c), Err(Denial::CertMismatch));
    let mut c = ctx();
    c.peer_ip = "192.168.1.1".parse().unwrap();
    assert_eq!(check(c), Err(Denial::NetNotAllowed));
    // An IPv4 client seen through a dual-stack listener is still in 10.0.0.0/8.
    let mut c = ctx();
    c.peer_ip = IpAddr::V6("::ffff:10.9.9.9".parse::<Ipv6Addr>().unwrap());
    assert!(check(c).is_ok());
    let mut c = ctx();
    c.op = Op::Write;
    assert!(check(c).is_ok());
}

#[test]
fn study_caveat_limits_to_one_study() {
    let mut m = Macaroon::mint(&key(7), GRANT, "").unwrap();
    m.add_first_party(&Caveat::Study(StudyUid::parse(STUDY).unwrap())).unwrap();
    let rk = RootKey::new(&key(7));
    assert!(m.verify(&rk, &[], &ctx()).is_ok());
    let mut c = ctx();
    c.study = Some(StudyUid::parse("1.2.3").unwrap());
    assert_eq!(m.verify(&rk, &[], &c).unwrap_err(), Denial::StudyNotCovered);
    let mut c = ctx();
    c.study = None;
    assert_eq!(m.verify(&rk, &[], &c).unwrap_err(), Denial::StudyNotCovered);
}

#[test]
fn wrong_root_key_is_signature_invalid() {
    let m = six_caveat_token();
    assert_eq!(m.verify(&RootKey::new(&key(8)), &[], &ctx()).unwrap_err(), Denial::SignatureInvalid);
}

#[test]
fn removing_a_caveat_is_refused() {
    let m = six_caveat_token();
    let bytes = m.to_bytes();
    // Rebuild the token with one caveat left out but the same signature.
    for skip in 0..m.caveats().len() {
        let mut forged = Macaroon::mint(&key(99), GRANT, "https://cleave.example").unwrap();
        for (i, c) in m.caveats().enumerate() {
            if let cleave_tokens::CaveatEntry::FirstParty(p) = c {
                if i != skip {
                    forged.add_first_party_predicate(std::str::from_utf8(p).unwrap()).unwrap();
                }
            }
        }
        let mut fb = forged.to_bytes();
        let n = fb.len();
        fb[n - 32..].copy_from_slice(&bytes[bytes.len() - 32..]);
        let forged = Macaroon::from_bytes(&fb).unwrap();
        assert_eq!(forged.caveats().len(), 5);
        assert_eq!(forged.verify(&RootKey::new(&key(7)), &[], &ctx()).unwrap_err(), Denial::SignatureInvalid);
    }
}

#[test]
fn reordering_caveats_is_refused() {
    let m = six_caveat_token();
    let preds: Vec<String> = m
        .caveats()
        .map(|c| match c {
            cleave_tokens::CaveatEntry::FirstParty(p) => String::from_utf8(p.to_vec()).unwrap(),
            _ => unreachable!(),
        })
        .collect();
    let mut forged = Macaroon::mint(&key(99), GRANT, "https://cleave.example").unwrap();
    for p in preds.iter().rev() {
        forged.add_first_party_predicate(p).unwrap();
    }
    let mut fb = forged.to_bytes();
    let n = fb.len();
    let orig = m.to_bytes();
    fb[n - 32..].copy_from_slice(&orig[orig.len() - 32..]);
    let forged = Macaroon::from_bytes(&fb).unwrap();
    assert_eq!(forged.verify(&RootKey::new(&key(7)), &[], &ctx()).unwrap_err(), Denial::SignatureInvalid);
}

#[test]
fn replacing_a_caveat_value_is_refused() {
    let orig = six_caveat_token().to_bytes();
    // Same length, so the structure stays valid: widen "ops = read,write" to "ops = read,admin".
    let at = orig.windows(5).position(|w| w == b"write").unwrap();
    let mut forged = orig.clone();
    forged[at..at + 5].copy_from_slice(b"admin");
    let forged = Macaroon::from_bytes(&forged).unwrap();
    let mut c = ctx();
    c.op = Op::Admin;
    assert_eq!(forged.verify(&RootKey::new(&key(7)), &[], &c).unwrap_err(), Denial::SignatureInvalid);
    // And widening the network.
    let at = orig.windows(4).position(|w| w == b"0/8\0").unwrap();
    let mut forged = orig.clone();
    forged[at..at + 3].copy_from_slice(b"0/0");
    let forged = Macaroon::from_bytes(&forged).unwrap();
    let _ = forged.verify(&RootKey::new(&key(7)), &[], &ctx()).unwrap_err();
}

#[test]
fn appending_a_wider_ops_caveat_does_not_widen() {
    let token = six_caveat_token().serialize();
    let wider = attenuate(&token, &[Caveat::Ops(OpSet::ALL)]).unwrap();
    let m = Macaroon::parse(&wider).unwrap();
    let rk = RootKey::new(&key(7));
    let mut c = ctx();
    c.op = Op::Admin;
    assert_eq!(m.verify(&rk, &[], &c).unwrap_err(), Denial::OpNotAllowed(Op::Admin));
    let auth = m.verify(&rk, &[], &ctx()).unwrap();
    assert_eq!(auth.effective().ops(), OpSet::of(&[Op::Read, Op::Write]));
    // A later expiry does not extend an earlier one.
    let later = attenuate(&token, &[Caveat::parse("expires < 2099-01-01T00:00:00Z").unwrap()]).unwrap();
    let auth = Macaroon::parse(&later).unwrap().verify(&rk, &[], &ctx()).unwrap();
    assert_eq!(auth.effective().expires(), Some(UNIX_EPOCH + Duration::from_secs(1_893_456_000)));
}

#[test]
fn attenuation_narrows_without_a_key() {
    let token = six_caveat_token().serialize();
    let narrowed = attenuate(&token, &[Caveat::Ops(OpSet::of(&[Op::Read]))]).unwrap();
    let rk = RootKey::new(&key(7));
    let m = Macaroon::parse(&narrowed).unwrap();
    assert!(m.verify(&rk, &[], &ctx()).is_ok());
    let mut c = ctx();
    c.op = Op::Write;
    assert_eq!(m.verify(&rk, &[], &c).unwrap_err(), Denial::OpNotAllowed(Op::Write));
    // The original still allows write.
    assert!(Macaroon::parse(&token).unwrap().verify(&rk, &[], &c).is_ok());
}

#[test]
fn two_different_patients_cover_nobody() {
    let mut m = Macaroon::mint(&key(7), GRANT, "").unwrap();
    m.add_first_party(&Caveat::Patient(Pseudonym::parse(PATIENT).unwrap())).unwrap();
    m.add_first_party(&Caveat::Patient(Pseudonym::parse(OTHER_PATIENT).unwrap())).unwrap();
    let rk = RootKey::new(&key(7));
    assert_eq!(m.verify(&rk, &[], &ctx()).unwrap_err(), Denial::PatientNotCovered);
    let mut c = ctx();
    c.patient = Some(Pseudonym::parse(OTHER_PATIENT).unwrap());
    assert_eq!(m.verify(&rk, &[], &c).unwrap_err(), Denial::PatientNotCovered);
}

#[test]
fn two_disjoint_ops_caveats_allow_nothing() {
    let mut m = Macaroon::mint(&key(7), GRANT, "").unwrap();
    m.add_first_party_predicate("ops = read").unwrap();
    m.add_first_party_predicate("ops = write").unwrap();
    let rk = RootKey::new(&key(7));
    for op in [Op::Read, Op::Write, Op::Admin] {
        let mut c = ctx();
        c.op = op;
        assert_eq!(m.verify(&rk, &[], &c).unwrap_err(), Denial::OpNotAllowed(op));
    }
}

#[test]
fn tampered_signature_is_refused() {
    let mut bytes = six_caveat_token().to_bytes();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    let m = Macaroon::from_bytes(&bytes).unwrap();
    assert_eq!(m.verify(&RootKey::new(&key(7)), &[], &ctx()).unwrap_err(), Denial::SignatureInvalid);
}

#[test]
fn unknown_and_malformed_caveats_fail_closed_with_distinct_denials() {
    let rk = RootKey::new(&key(7));
    let with = |p: &str| {
        let mut m = Macaroon::mint(&key(7), GRANT, "").unwrap();
        m.add_first_party_predicate(p).unwrap();
        m.verify(&rk, &[], &ctx()).map(|_| ())
    };
    assert_eq!(with("time < 2030-01-01T00:00:00Z"), Err(Denial::UnknownCaveat));
    assert_eq!(with("role = admin"), Err(Denial::UnknownCaveat));
    assert_eq!(with("ops = read,delete"), Err(Denial::MalformedCaveat(cleave_tokens::CaveatKind::Ops)));
    assert_eq!(with("ops=read"), Err(Denial::MalformedCaveat(cleave_tokens::CaveatKind::Ops)));
    assert_eq!(with("expires < tomorrow"), Err(Denial::MalformedCaveat(cleave_tokens::CaveatKind::Expires)));
    assert_eq!(with("expires = 2030-01-01T00:00:00Z"), Err(Denial::MalformedCaveat(cleave_tokens::CaveatKind::Expires)));
    assert_eq!(with("net = 10.0.0.1/8"), Err(Denial::MalformedCaveat(cleave_tokens::CaveatKind::Net)));
    assert_eq!(with("patient = P1-00112233445566778899AABBCCDDEEFF"), Err(Denial::MalformedCaveat(cleave_tokens::CaveatKind::Patient)));
    assert_eq!(with("study = 1.02.3"), Err(Denial::MalformedCaveat(cleave_tokens::CaveatKind::Study)));
    assert_eq!(with("note = ok"), Ok(()));
    assert_eq!(with("share = 00112233445566778899aabbccddeeff"), Ok(()));
}

#[test]
fn share_ids_are_reported_for_revocation_checks() {
    let mut m = Macaroon::mint(&key(7), GRANT, "").unwrap();
    m.add_first_party_predicate("share = 00112233445566778899aabbccddeeff").unwrap();
    m.add_first_party_predicate("note = for the tumour board").unwrap();
    let auth = m.verify(&RootKey::new(&key(7)), &[], &ctx()).unwrap();
    let ids: Vec<&str> = auth.share_ids().iter().map(|s| s.as_str()).collect();
    assert_eq!(ids, ["00112233445566778899aabbccddeeff"]);
}

#[test]
fn denials_never_carry_token_content() {
    let secret_note = "note = Canary Smith 1970-01-01";
    let mut m = Macaroon::mint(&key(7), b"grant-canary", "").unwrap();
    m.add_first_party_predicate(secret_note).unwrap();
    m.add_first_party_predicate(&format!("patient = {OTHER_PATIENT}")).unwrap();
    let d = m.verify(&RootKey::new(&key(7)), &[], &ctx()).unwrap_err();
    let shown = format!("{d} {d:?} {m:?}");
    for needle in ["Canary", "canary", &OTHER_PATIENT[3..], "ffeedd"] {
        assert!(!shown.contains(needle), "{shown}");
    }
    assert!(shown.contains("patient not covered"), "{shown}");
}

#[test]
fn typed_caveats_round_trip_through_their_canonical_text() {
    for text in [
        "ops = read,append,write,share,admin,audit,export",
        "stores = identity,clinical,audit",
        &format!("patient = {PATIENT}"),
        &format!("study = {STUDY}"),
        "expires < 2030-01-01T00:00:00Z",
        &format!("cert = sha256:{CERT_HEX}"),
        "net = 10.0.0.0/8",
        "net = 2001:db8::/32",
        "share = 00112233445566778899aabbccddeeff",
        "note = shared with Dr. Who for the board",
    ] {
        let c = Caveat::parse(text).unwrap();
        assert_eq!(c.to_predicate().unwrap(), text);
    }
}
