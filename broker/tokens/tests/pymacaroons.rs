//! Interoperability with pymacaroons, an independent libmacaroons V2 implementation, in
//! both directions: first-party caveats, attenuation by pymacaroons, third-party caveats and
//! bound discharges.

mod common;

use cleave_tokens::{attenuate, Caveat, Denial, Macaroon, Op, OpSet, RootKey};
use common::*;

const ROOT_HEX: &str = "0707070707070707070707070707070707070707070707070707070707070707";
const CAVEAT_KEY_HEX: &str = "0909090909090909090909090909090909090909090909090909090909090909";

const PY_PRELUDE: &str = r#"
import sys
from pymacaroons import Macaroon, Verifier, MACAROON_V2
ROOT = bytes.fromhex("0707070707070707070707070707070707070707070707070707070707070707")
CKEY = bytes.fromhex("0909090909090909090909090909090909090909090909090909090909090909")
"#;

fn our_token() -> Macaroon {
    let mut m = Macaroon::mint(&key(7), b"grant-py", "https://cleave.example").unwrap();
    m.add_first_party_predicate("ops = read,write").unwrap();
    m.add_first_party_predicate("stores = clinical").unwrap();
    m.add_first_party_predicate(&format!("patient = {PATIENT}")).unwrap();
    m
}

#[test]
fn pymacaroons_verifies_a_token_we_mint() {
    assert_eq!(ROOT_HEX.len(), 64);
    let token = our_token().serialize();
    let script = format!(
        "{PY_PRELUDE}
m = Macaroon.deserialize(sys.argv[1])
v = Verifier()
for p in ['ops = read,write', 'stores = clinical', 'patient = {PATIENT}']:
    v.satisfy_exact(p)
print('ok' if v.verify(m, ROOT) else 'no')
bad = Verifier()
bad.satisfy_exact('ops = read,write')
try:
    bad.verify(m, ROOT)
    print('unexpected')
except Exception:
    print('refused')
"
    );
    assert_eq!(python(&script, &[&token]), "ok\nrefused");
}

#[test]
fn we_verify_a_token_pymacaroons_mints() {
    let script = format!(
        "{PY_PRELUDE}
m = Macaroon(location='py', identifier=b'grant-from-py', key=ROOT, version=MACAROON_V2)
m.add_first_party_caveat('ops = read')
m.add_first_party_caveat('stores = clinical,identity')
print(m.serialize())
"
    );
    let token = python(&script, &[]);
    let m = Macaroon::parse(&token).unwrap();
    let rk = RootKey::new(&key(7));
    let auth = m.verify(&rk, &[], &ctx()).unwrap();
    assert_eq!(auth.identifier(), b"grant-from-py");
    let mut c = ctx();
    c.op = Op::Write;
    assert_eq!(m.verify(&rk, &[], &c).unwrap_err(), Denial::OpNotAllowed(Op::Write));
    assert_eq!(m.verify(&RootKey::new(&key(8)), &[], &ctx()).unwrap_err(), Denial::SignatureInvalid);
}

#[test]
fn a_token_narrowed_by_pymacaroons_is_enforced_by_us() {
    let token = our_token().serialize();
    let script = format!(
        "{PY_PRELUDE}
m = Macaroon.deserialize(sys.argv[1])
m.add_first_party_caveat('ops = read')
print(m.serialize())
"
    );
    let narrowed = python(&script, &[&token]);
    let m = Macaroon::parse(&narrowed).unwrap();
    assert_eq!(m.caveats().len(), 4);
    let rk = RootKey::new(&key(7));
    assert!(m.verify(&rk, &[], &ctx()).is_ok());
    let mut c = ctx();
    c.op = Op::Write;
    assert_eq!(m.verify(&rk, &[], &c).unwrap_err(), Denial::OpNotAllowed(Op::Write));
    // And the other way: our key-less attenuation is accepted by pymacaroons.
    let ours = attenuate(&token, &[Caveat::Ops(OpSet::of(&[Op::Read]))]).unwrap();
    let script = format!(
        "{PY_PRELUDE}
m = Macaroon.deserialize(sys.argv[1])
v = Verifier()
for p in ['ops = read,write', 'stores = clinical', 'patient = {PATIENT}', 'ops = read']:
    v.satisfy_exact(p)
print(v.verify(m, ROOT))
"
    );
    assert_eq!(python(&script, &[&ours]), "True");
}

/// pymacaroons mints a root token with a third-party caveat and the third party's discharge
/// (with its own caveat), binds it; prints root, bound discharge, unbound discharge.
fn pymacaroons_third_party(discharge_caveat: &str) -> (String, String, String) {
    let script = format!(
        "{PY_PRELUDE}
m = Macaroon(location='cleave', identifier=b'grant-3p', key=ROOT, version=MACAROON_V2)
m.add_first_party_caveat('stores = clinical')
m.add_third_party_caveat('https://idp.example', CKEY, b'check-mfa-7')
m.add_first_party_caveat('ops = read')
d = Macaroon(location='https://idp.example', identifier=b'check-mfa-7', key=CKEY, version=MACAROON_V2)
d.add_first_party_caveat(sys.argv[1])
print(m.serialize())
print(m.prepare_for_request(d).serialize())
print(d.serialize())
"
    );
    let out = python(&script, &[discharge_caveat]);
    let lines: Vec<&str> = out.lines().collect();
    (lines[0].to_owned(), lines[1].to_owned(), lines[2].to_owned())
}

#[test]
fn we_verify_pymacaroons_third_party_caveats_and_discharges() {
    let (root, bound, unbound) = pymacaroons_third_party("expires < 2030-01-01T00:00:00Z");
    let m = Macaroon::parse(&root).unwrap();
    let rk = RootKey::new(&key(7));
    let bound = Macaroon::parse(&bound).unwrap();
    assert!(m.verify(&rk, std::slice::from_ref(&bound), &ctx()).is_ok());
    assert_eq!(m.verify(&rk, &[], &ctx()).unwrap_err(), Denial::DischargeMissing);
    let unbound = Macaroon::parse(&unbound).unwrap();
    assert_eq!(m.verify(&rk, &[unbound], &ctx()).unwrap_err(), Denial::DischargeNotBound);
    // A discharge bound to another token (same grant, different caveats) is refused.
    let mut other = m.clone();
    other.add_first_party_predicate("note = another token").unwrap();
    let (_, _, unbound) = pymacaroons_third_party("expires < 2030-01-01T00:00:00Z");
    let rebound = other.bind_discharge(&Macaroon::parse(&unbound).unwrap());
    assert!(other.verify(&rk, std::slice::from_ref(&rebound), &ctx()).is_ok());
    assert_eq!(m.verify(&rk, &[rebound], &ctx()).unwrap_err(), Denial::DischargeNotBound);
    // A discharge whose own caveat fails is refused with that caveat's denial.
    let (root, bound, _) = pymacaroons_third_party("expires < 2020-01-01T00:00:00Z");
    let m = Macaroon::parse(&root).unwrap();
    assert_eq!(m.verify(&rk, &[Macaroon::parse(&bound).unwrap()], &ctx()).unwrap_err(), Denial::Expired);
    // The same discharge sent twice: the second is not asked for.
    let (root, bound, _) = pymacaroons_third_party("ops = read");
    let m = Macaroon::parse(&root).unwrap();
    let d = Macaroon::parse(&bound).unwrap();
    assert_eq!(m.verify(&rk, &[d.clone(), d], &ctx()).unwrap_err(), Denial::DischargeUnused);
}

#[test]
fn pymacaroons_verifies_our_third_party_caveats_and_discharges() {
    let mut m = Macaroon::mint(&key(7), b"grant-3p-ours", "cleave").unwrap();
    m.add_first_party_predicate("stores = clinical").unwrap();
    m.add_third_party("https://idp.example", &key(9), b"check-mfa-ours").unwrap();
    let mut d = Macaroon::mint(&key(9), b"check-mfa-ours", "https://idp.example").unwrap();
    d.add_first_party_predicate("ops = read").unwrap();
    let bound = m.bind_discharge(&d);
    // Ours accepts it.
    let rk = RootKey::new(&key(7));
    assert!(m.verify(&rk, std::slice::from_ref(&bound), &ctx()).is_ok());
    let mut c = ctx();
    c.op = Op::Write;
    assert_eq!(m.verify(&rk, std::slice::from_ref(&bound), &c).unwrap_err(), Denial::OpNotAllowed(Op::Write));
    let script = format!(
        "{PY_PRELUDE}
m = Macaroon.deserialize(sys.argv[1])
d = Macaroon.deserialize(sys.argv[2])
v = Verifier()
v.satisfy_exact('stores = clinical')
v.satisfy_exact('ops = read')
print(v.verify(m, ROOT, discharge_macaroons=[d]))
# Our binding equals pymacaroons' binding of the unbound discharge.
u = Macaroon.deserialize(sys.argv[3])
print(m.prepare_for_request(u).signature == d.signature)
"
    );
    let out = python(&script, &[&m.serialize(), &bound.serialize(), &d.serialize()]);
    assert_eq!(out, "True\nTrue");
    assert_eq!(CAVEAT_KEY_HEX.len(), 64);
}
