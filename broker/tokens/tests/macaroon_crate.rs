//! Interoperability with the `macaroon` crate (0.3), the one this crate replaces: tokens
//! cross in both directions, including a third-party caveat and its bound discharge.

mod common;

use cleave_tokens::{Denial, Macaroon, Op, RootKey};
use common::*;
use macaroon::{ByteString, Format, MacaroonKey, Verifier};

const PREDICATES: [&str; 2] = ["ops = read", "stores = clinical"];

#[test]
fn macaroon_crate_verifies_our_token() {
    macaroon::initialize().unwrap();
    let mut m = Macaroon::mint(&key(7), b"grant-rs", "cleave").unwrap();
    for p in PREDICATES {
        m.add_first_party_predicate(p).unwrap();
    }
    let theirs = macaroon::Macaroon::deserialize(m.serialize()).unwrap();
    let mut v = Verifier::default();
    for p in PREDICATES {
        v.satisfy_exact(ByteString::from(p));
    }
    // The macaroon crate takes the derived key; ours derives from the root key itself.
    let derived = MacaroonKey::generate(&[7u8; 32]);
    v.verify(&theirs, &derived, vec![]).unwrap();
    assert!(v.verify(&theirs, &MacaroonKey::generate(&[8u8; 32]), vec![]).is_err());
}

#[test]
fn we_verify_the_macaroon_crates_token_and_discharge() {
    macaroon::initialize().unwrap();
    let derived = MacaroonKey::generate(&[7u8; 32]);
    let mut m = macaroon::Macaroon::create(Some("rs".into()), &derived, ByteString::from("grant-from-rs")).unwrap();
    m.add_first_party_caveat(ByteString::from("ops = read"));
    let caveat_key = MacaroonKey::generate(&[9u8; 32]);
    m.add_third_party_caveat("https://idp.example", &caveat_key, ByteString::from("mfa-rs"));
    let mut d = macaroon::Macaroon::create(None, &caveat_key, ByteString::from("mfa-rs")).unwrap();
    d.add_first_party_caveat(ByteString::from("stores = clinical"));
    m.bind(&mut d);
    // Padded URL-safe base64, as that crate writes it.
    let ours = Macaroon::parse(&m.serialize(Format::V2).unwrap()).unwrap();
    let discharge = Macaroon::parse(&d.serialize(Format::V2).unwrap()).unwrap();
    let rk = RootKey::new(&key(7));
    let auth = ours.verify(&rk, std::slice::from_ref(&discharge), &ctx()).unwrap();
    assert_eq!(auth.identifier(), b"grant-from-rs");
    let mut c = ctx();
    c.op = Op::Write;
    assert_eq!(ours.verify(&rk, std::slice::from_ref(&discharge), &c).unwrap_err(), Denial::OpNotAllowed(Op::Write));
    assert_eq!(ours.verify(&rk, &[], &ctx()).unwrap_err(), Denial::DischargeMissing);
}
