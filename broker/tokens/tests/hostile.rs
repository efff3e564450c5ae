//! Hostile input: random bytes, truncations, bit flips, huge varints, and tokens stuffed
//! with caveats or discharges. None of it may panic; all of it must be refused cheaply.

mod common;

use cleave_tokens::{Denial, Macaroon, RootKey, MAX_CAVEATS, MAX_DISCHARGES};
use common::*;
use rand::{Rng, SeedableRng};

fn sample() -> Macaroon {
    let mut m = Macaroon::mint(&key(7), b"grant-h", "https://cleave.example").unwrap();
    m.add_first_party_predicate("ops = read").unwrap();
    m.add_third_party("https://idp.example", &key(9), b"cid").unwrap();
    m.add_first_party_predicate(&format!("patient = {PATIENT}")).unwrap();
    m
}

fn decide(text: &str) -> Result<(), Denial> {
    let rk = RootKey::new(&key(7));
    Macaroon::parse(text)?.verify(&rk, &[], &ctx()).map(|_| ())
}

#[test]
fn random_bytes_never_panic_and_never_verify() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xC1EA7E);
    for _ in 0..5_000 {
        let len = rng.gen_range(0..300);
        let mut b: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if rng.gen_bool(0.7) && !b.is_empty() {
            b[0] = 2;
        }
        if let Ok(m) = Macaroon::from_bytes(&b) {
            assert!(m.verify(&RootKey::new(&key(7)), &[], &ctx()).is_err());
        }
        let text: String = (0..len).map(|_| rng.gen_range(32u8..127) as char).collect();
        assert!(decide(&text).is_err());
    }
}

#[test]
fn every_truncation_and_bit_flip_is_refused() {
    let bytes = sample().to_bytes();
    for n in 0..bytes.len() {
        assert!(Macaroon::from_bytes(&bytes[..n]).is_err(), "truncated to {n} bytes parsed");
    }
    let rk = RootKey::new(&key(7));
    let d = Macaroon::mint(&key(9), b"cid", "").unwrap();
    let good = sample();
    let bound = good.bind_discharge(&d);
    assert!(good.verify(&rk, std::slice::from_ref(&bound), &ctx()).is_ok());
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            if let Ok(m) = Macaroon::from_bytes(&b) {
                // Only a flip in the unsigned location hint may still verify.
                let ok = m.verify(&rk, std::slice::from_ref(&bound), &ctx()).is_ok();
                assert!(!ok || m.location() != good.location(), "flip at byte {i} bit {bit} verified");
            }
        }
    }
}

#[test]
fn huge_varints_and_lengths_are_refused_cheaply() {
    let mut b = vec![2u8, 2];
    b.extend_from_slice(&[0xff; 9]);
    b.push(0x01);
    assert!(matches!(Macaroon::from_bytes(&b).unwrap_err(), Denial::TooLarge(_)));
    let mut b = vec![2u8, 2];
    b.extend_from_slice(&[0xff; 20]);
    assert!(matches!(Macaroon::from_bytes(&b).unwrap_err(), Denial::TooLarge(_)));
    // A length of 2^40 is refused before anything is allocated.
    let b = vec![2u8, 2, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20, b'x'];
    assert_eq!(Macaroon::from_bytes(&b).unwrap_err(), Denial::TooLarge("field"));
    let big = "A".repeat(20_000);
    assert_eq!(decide(&big).unwrap_err(), Denial::TooLarge("token text"));
}

#[test]
fn too_many_caveats_or_discharges_are_refused() {
    let mut m = Macaroon::mint(&key(7), b"grant-many", "").unwrap();
    for _ in 0..MAX_CAVEATS {
        m.add_first_party_predicate("ops = read").unwrap();
    }
    assert_eq!(m.add_first_party_predicate("ops = read").unwrap_err(), Denial::TooLarge("caveat count"));
    assert!(m.verify(&RootKey::new(&key(7)), &[], &ctx()).is_ok());
    // A hand-built token with one caveat more than the limit.
    let mut b = m.to_bytes();
    let sig_at = b.len() - 35; // EOS, SIGNATURE type, length, 32 bytes
    b.splice(sig_at..sig_at, [2u8, 1, b'x', 0]);
    assert_eq!(Macaroon::from_bytes(&b).unwrap_err(), Denial::TooLarge("caveat count"));

    let small = sample();
    let ds: Vec<Macaroon> = (0..=MAX_DISCHARGES).map(|_| Macaroon::mint(&key(9), b"cid", "").unwrap()).collect();
    assert_eq!(
        small.verify(&RootKey::new(&key(7)), &ds, &ctx()).unwrap_err(),
        Denial::TooLarge("discharge count")
    );
}

#[test]
fn discharge_cycles_end() {
    // A discharge that itself asks for a discharge with its own identifier.
    let mut m = Macaroon::mint(&key(7), b"grant-cycle", "").unwrap();
    m.add_third_party("loop", &key(9), b"a").unwrap();
    let mut d = Macaroon::mint(&key(9), b"a", "").unwrap();
    d.add_third_party("loop", &key(9), b"a").unwrap();
    let bound = m.bind_discharge(&d);
    let err = m.verify(&RootKey::new(&key(7)), &[bound.clone(), bound], &ctx()).unwrap_err();
    assert!(matches!(err, Denial::DischargeNotBound | Denial::DischargeMissing), "{err}");
    // Nesting deeper than the limit is refused.
    let mut m = Macaroon::mint(&key(7), b"grant-deep", "").unwrap();
    m.add_third_party("x", &key(10), b"d0").unwrap();
    let mut chain = Vec::new();
    for i in 0..6u8 {
        let mut d = Macaroon::mint(&key(10 + i), format!("d{i}").as_bytes(), "").unwrap();
        d.add_third_party("x", &key(11 + i), format!("d{}", i + 1).as_bytes()).unwrap();
        chain.push(d);
    }
    let bound: Vec<Macaroon> = chain.iter().map(|d| m.bind_discharge(d)).collect();
    assert_eq!(m.verify(&RootKey::new(&key(7)), &bound, &ctx()).unwrap_err(), Denial::TooLarge("discharge depth"));
}

#[test]
fn base64_variants_are_accepted_and_mixtures_refused() {
    let m = sample();
    let bytes = m.to_bytes();
    use base64::Engine;
    let std_padded = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let url_padded = base64::engine::general_purpose::URL_SAFE.encode(&bytes);
    for t in [&std_padded, &url_padded, &m.serialize()] {
        assert_eq!(Macaroon::parse(t).unwrap().to_bytes(), bytes);
    }
    assert_eq!(Macaroon::parse("ab-/").unwrap_err(), Denial::Malformed("mixed base64 alphabets"));
    assert_eq!(Macaroon::parse("{\"i\":\"x\"}").unwrap_err(), Denial::UnsupportedFormat);
}
