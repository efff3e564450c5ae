//! The verified-token cache gives the same decision as full verification: a hit still
//! checks every caveat against the request, and anything but the exact verified bytes
//! misses and is verified in full.

mod common;

use std::time::Duration;

use cleave_tokens::{attenuate, Caveat, Denial, Macaroon, Op, RootKey, VerifiedTokens};
use common::*;

const GRANT: &[u8] = b"grant-cache-1";

fn token() -> String {
    let mut m = Macaroon::mint(&key(7), GRANT, "https://cleave.example").unwrap();
    for p in ["ops = read", "stores = clinical", "expires < 2030-01-01T00:00:00Z", "net = 10.0.0.0/8"] {
        m.add_first_party_predicate(p).unwrap();
    }
    m.serialize()
}

#[test]
fn a_hit_is_only_for_the_exact_text_that_verified() {
    let cache = VerifiedTokens::new(16);
    let t = token();
    assert!(cache.get(&t, &[]).is_none(), "nothing verified yet");
    cache.verify(&t, &[], &RootKey::new(&key(7)), &ctx()).unwrap();
    let hit = cache.get(&t, &[]).expect("verified once, found after");
    assert_eq!(hit.identifier(), GRANT);
    assert_eq!(hit.authorize(&ctx()).unwrap().identifier(), GRANT);

    // A narrower token from the same one is another text: it misses, and verifies in full.
    let narrowed = attenuate(&t, &[Caveat::parse("ops = read").unwrap()]).unwrap();
    assert!(cache.get(&narrowed, &[]).is_none());
    // The same bytes with a discharge list attached are another entry.
    assert!(cache.get(&t, &["x"]).is_none());
    // A flipped signature byte misses, and full verification refuses it.
    let mut bytes = Macaroon::parse(&t).unwrap().to_bytes();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let forged = Macaroon::from_bytes(&bytes).unwrap().serialize();
    assert!(cache.get(&forged, &[]).is_none());
    assert_eq!(cache.verify(&forged, &[], &RootKey::new(&key(7)), &ctx()).unwrap_err(), Denial::SignatureInvalid);
    assert!(cache.get(&forged, &[]).is_none(), "a refused token is never cached");
    // Under another grant key it fails too, and stays out.
    let other = VerifiedTokens::new(16);
    assert_eq!(other.verify(&t, &[], &RootKey::new(&key(8)), &ctx()).unwrap_err(), Denial::SignatureInvalid);
    assert!(other.get(&t, &[]).is_none());
}

#[test]
fn a_hit_still_checks_every_caveat_against_the_request() {
    let cache = VerifiedTokens::new(16);
    let t = token();
    cache.verify(&t, &[], &RootKey::new(&key(7)), &ctx()).unwrap();
    let hit = cache.get(&t, &[]).unwrap();

    let mut c = ctx();
    c.op = Op::Write;
    assert_eq!(hit.authorize(&c).unwrap_err(), Denial::OpNotAllowed(Op::Write));
    let mut c = ctx();
    c.now = std::time::UNIX_EPOCH + Duration::from_secs(1_893_456_001);
    assert_eq!(hit.authorize(&c).unwrap_err(), Denial::Expired);
    let mut c = ctx();
    c.peer_ip = "192.168.1.1".parse().unwrap();
    assert_eq!(hit.authorize(&c).unwrap_err(), Denial::NetNotAllowed);
    // The same decisions as full verification, request by request.
    let m = Macaroon::parse(&t).unwrap();
    let mut c = ctx();
    c.op = Op::Write;
    assert_eq!(m.verify(&RootKey::new(&key(7)), &[], &c).unwrap_err(), hit.authorize(&c).unwrap_err());
}

#[test]
fn a_request_refused_by_a_caveat_does_not_cache_the_token() {
    let cache = VerifiedTokens::new(16);
    let t = token();
    let mut c = ctx();
    c.op = Op::Write;
    assert!(cache.verify(&t, &[], &RootKey::new(&key(7)), &c).is_err());
    assert!(cache.get(&t, &[]).is_none());
}

#[test]
fn the_cache_stays_within_its_capacity() {
    let cache = VerifiedTokens::new(3);
    let base = token();
    let mut texts = Vec::new();
    for i in 0..4 {
        let t = attenuate(&base, &[Caveat::parse(&format!("note = n{i}")).unwrap()]).unwrap();
        cache.verify(&t, &[], &RootKey::new(&key(7)), &ctx()).unwrap();
        texts.push(t);
    }
    let held = texts.iter().filter(|t| cache.get(t, &[]).is_some()).count();
    assert!((1..=3).contains(&held), "held {held} of 4 with capacity 3");
    assert!(cache.get(&texts[3], &[]).is_some(), "the newest entry is kept");
}
