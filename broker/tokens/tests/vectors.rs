//! The test vectors of FORMAT.md: every `ok_*` token verifies and is minted byte for byte by
//! this crate; every `fail_*` token is refused with the denial the vector names; and the
//! vectors still match what pymacaroons computes.

mod common;

use cleave_tokens::{CaveatEntry, Macaroon, RootKey};
use common::*;

const FORMAT_MD: &str = include_str!("../FORMAT.md");

fn vector_block() -> &'static str {
    let start = FORMAT_MD.find("```vectors\n").expect("FORMAT.md has a ```vectors block") + "```vectors\n".len();
    let len = FORMAT_MD[start..].find("```").expect("vectors block is closed");
    &FORMAT_MD[start..start + len]
}

fn vectors() -> Vec<(&'static str, &'static str, &'static str)> {
    vector_block()
        .lines()
        .map(|l| {
            let parts: Vec<&str> = l.split(" | ").collect();
            assert_eq!(parts.len(), 3, "bad vector line {l}");
            (parts[0], parts[1], parts[2])
        })
        .collect()
}

#[test]
fn every_vector_has_its_declared_outcome() {
    let rk = RootKey::new(&key(7));
    let vs = vectors();
    assert!(vs.iter().filter(|v| v.0.starts_with("fail_")).count() >= 10);
    assert!(vs.iter().filter(|v| v.0.starts_with("ok_")).count() >= 3);
    for (name, expect, token) in vs {
        let outcome = Macaroon::parse(token).and_then(|m| m.verify(&rk, &[], &ctx()));
        match (name.starts_with("ok_"), outcome) {
            (true, Ok(auth)) => assert_eq!(auth.identifier(), b"grant-0001", "{name}"),
            (true, Err(d)) => panic!("{name} must verify, got: {d}"),
            (false, Ok(_)) => panic!("{name} must fail ({expect}) but verified"),
            (false, Err(d)) => {
                assert!(name.starts_with("fail_"), "vector names start with ok_ or fail_: {name}");
                assert!(d.to_string().starts_with(expect), "{name}: expected '{expect}', got '{d}'");
            }
        }
    }
}

#[test]
fn ok_vectors_are_minted_byte_for_byte() {
    for (name, _, token) in vectors().into_iter().filter(|v| v.0.starts_with("ok_")) {
        let parsed = Macaroon::parse(token).unwrap();
        let mut ours = Macaroon::mint(&key(7), parsed.identifier(), parsed.location()).unwrap();
        for c in parsed.caveats() {
            let CaveatEntry::FirstParty(p) = c else { panic!("{name}: vectors are first-party only") };
            ours.add_first_party_predicate(std::str::from_utf8(p).unwrap()).unwrap();
        }
        assert_eq!(ours.serialize(), token, "{name}");
        assert_eq!(Macaroon::parse(token).unwrap().serialize(), token, "{name}: parse/serialize round trip");
    }
}

#[test]
fn vectors_match_pymacaroons() {
    let script = include_str!("data/gen_vectors.py");
    let fresh = python(script, &[]);
    assert_eq!(fresh.trim(), vector_block().trim(), "FORMAT.md vectors differ from pymacaroons' output");
}
