//! We speak libmacaroons V2: pymacaroons (an independent implementation, from PyPI) reads
//! and verifies a token the broker minted at login with the grant's root key, and a token
//! pymacaroons narrowed is accepted by the broker over mutual TLS, within its narrowing.
mod common;
// The pymacaroons runner of cleave-tokens' own tests: one way to drive python3 for both.
#[path = "../tokens/tests/common/mod.rs"]
mod tokens_common;

use common::*;
use tokens_common::python;

const VERIFY_AND_NARROW: &str = r#"
import sys
from pymacaroons import Macaroon, Verifier
token, key = sys.argv[1], bytes.fromhex(sys.argv[2])
m = Macaroon.deserialize(token)
# The broker's caveat grammar, as a third party reads it: every caveat is `name = value`
# or `expires < time` with a known name.
known = {'ops', 'stores', 'expires', 'cert', 'net', 'patient', 'study', 'share', 'note'}
def grammar(c):
    name = c.split(' ', 1)[0]
    return name in known
v = Verifier()
v.satisfy_general(grammar)
print('verified' if v.verify(m, key) else 'no')
wrong = Verifier()
wrong.satisfy_general(grammar)
try:
    wrong.verify(m, bytes(32))
    print('unexpected')
except Exception:
    print('wrong-key-refused')
print(m.identifier if isinstance(m.identifier, str) else m.identifier.decode())
narrow = m.copy()
narrow.add_first_party_caveat('stores = identity')
narrow.add_first_party_caveat('ops = read')
print(narrow.serialize())
odd = m.copy()
odd.add_first_party_caveat('colour = red')
print(odd.serialize())
"#;

#[tokio::test]
async fn pymacaroons_reads_our_tokens_and_we_accept_its_narrowing() {
    let b = start(TEST_CONFIG, false).await;
    let (cfg, token) = staff_login(&b, "nurse-py", broker::Role::Nurse).await;
    let grant_id = String::from_utf8(cleave_tokens::Macaroon::parse(&token).unwrap().identifier().to_vec()).unwrap();
    let opened = broker::open(b.data(), broker::MasterKeySource::KeyFile).unwrap();
    let grant = opened.accounts.live_grant(&grant_id).unwrap().expect("the login's grant is live");
    let key_hex = hex::encode(grant.root_key.expose());

    let out = python(VERIFY_AND_NARROW, &[&token, &key_hex]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert_eq!(lines[0], "verified", "pymacaroons verifies the broker's chain with the grant's key");
    assert_eq!(lines[1], "wrong-key-refused");
    assert_eq!(lines[2], grant_id, "the identifier names the grant");
    let (narrowed, odd) = (lines[3], lines[4]);
    assert_ne!(narrowed, token);

    // Controls: the nurse's own token reads both sides.
    let search = "/api/v1/identity/patients?family=Nobody";
    assert_eq!(get(b.addr(), cfg.clone(), search, Some(&token)).await.status, 200);
    assert_eq!(get(b.addr(), cfg.clone(), "/dicomweb/studies", Some(&token)).await.status, 200);
    // Narrowed by pymacaroons to reading identity: accepted there, refused for clinical.
    let r = get(b.addr(), cfg.clone(), search, Some(narrowed)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get(b.addr(), cfg.clone(), "/dicomweb/studies", Some(narrowed)).await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "forbidden"), "{}", r.body);
    assert!(r.body.contains("store not allowed"), "{}", r.body);
    // A caveat the broker does not know fails closed.
    let r = get(b.addr(), cfg.clone(), search, Some(odd)).await;
    assert!(r.status == 401 || r.status == 403, "an unknown caveat was accepted: {} {}", r.status, r.body);
    assert!(r.body.contains("unknown caveat"), "{}", r.body);
}
