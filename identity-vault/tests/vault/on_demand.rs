//! The vault is closed between requests: it opens on demand and closes after the idle TTL,
//! dropping its keys; it reopens transparently.
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use cleave_keys::OnDemandStats;
use identity_vault::{Query, Vault};

use crate::{jane, Env};

#[test]
fn closes_after_idle_ttl_and_reopens_transparently() {
    let env = Env::new();
    let ring = Arc::new(RwLock::new(env.ring));
    let store = Vault::on_demand(env.db.clone(), ring.clone(), Duration::from_millis(100));
    assert_eq!(store.stats(), OnDemandStats { opens: 0, closes: 0, is_open: false }, "closed by default");
    let id = store.with(|v| v.create(&jane())).unwrap().unwrap();
    assert!(store.is_open());
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.is_open() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Closed: the Vault, its connection and its keys were dropped (Key32 zeroizes on drop).
    assert_eq!(store.stats(), OnDemandStats { opens: 1, closes: 1, is_open: false });
    let found = store.with(|v| v.search(&Query::new().full_name("DOE^JANE"))).unwrap().unwrap();
    assert_eq!(found, vec![id]);
    assert_eq!(store.stats().opens, 2);

    // With the keyring rotated while closed, the next open picks the new link key up.
    store.close();
    ring.write().unwrap().rotate(cleave_keys::KeyPurpose::Link).unwrap();
    let p = store.with(|v| v.pseudonym(&id)).unwrap().unwrap();
    assert_eq!(p.version(), 2);
}

#[test]
fn zero_ttl_closes_after_every_request() {
    let env = Env::new();
    let ring = Arc::new(RwLock::new(env.ring));
    let store = Vault::on_demand(env.db.clone(), ring, Duration::ZERO);
    let id = store.with(|v| v.create(&jane())).unwrap().unwrap();
    assert!(!store.is_open());
    let name = store.with(|v| v.get(&id).map(|r| r.demographics.family_name.clone())).unwrap().unwrap();
    assert_eq!(name.as_deref(), Some("Doe"));
    assert_eq!(store.stats(), OnDemandStats { opens: 2, closes: 2, is_open: false });
}

#[test]
fn a_failing_open_leaves_it_closed_with_the_error() {
    let env = Env::new();
    let store = Vault::on_demand_with(env.db.clone(), Duration::from_secs(1), || {
        Err(identity_vault::Error::MissingKey("link"))
    });
    let err = store.with(|_| ()).unwrap_err();
    assert!(matches!(err, identity_vault::Error::MissingKey("link")));
    assert!(!store.is_open());
}
