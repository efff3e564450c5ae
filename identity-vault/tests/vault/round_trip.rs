//! Create, find through every index, read back, update, follow the pseudonym back.
use identity_vault::{Error, IdentityId, Query, Vault, VaultKeys};

use crate::{full, jane, Env};

fn ids(v: &Vault, q: Query) -> Vec<IdentityId> {
    let mut r = v.search(&q).unwrap();
    r.sort();
    r
}

#[test]
fn create_search_read_update_and_follow_pseudonym() {
    let env = Env::new();
    let mut v = env.open();
    let mut d = full("CANARY");
    d.family_name = Some("Müller-Lüdenscheidt".into());
    d.given_name = Some("Zoë Anne".into());
    let a = v.create(&d).unwrap();
    let b = v.create(&jane()).unwrap();
    let mut jane2 = jane();
    jane2.birth_date = Some("19900101".into());
    jane2.patient_id = Some("PID-0002".into());
    let c = v.create(&jane2).unwrap();

    // Read back: every field as written.
    let got = v.get(&a).unwrap();
    assert_eq!(got.demographics, d);
    assert_eq!(got.merged_into, None);

    // Exact full name, normalised: case, accents, separators.
    assert_eq!(ids(&v, Query::new().full_name("MULLER LUDENSCHEIDT^zoe anne^canarymid")), vec![a]);
    assert!(ids(&v, Query::new().full_name("Muller^Zoe")).is_empty(), "exact: the middle name is part of it");
    let mut both = vec![b, c];
    both.sort();
    assert_eq!(ids(&v, Query::new().full_name("doe^jane")), both);
    // Tokens of any component.
    assert_eq!(ids(&v, Query::new().name_token("lüdenscheidt")), vec![a]);
    assert_eq!(ids(&v, Query::new().name_token("ZOE")), vec![a]);
    assert_eq!(ids(&v, Query::new().name_token("jane")), both);
    // Combined: token AND birth date.
    assert_eq!(ids(&v, Query::new().name_token("jane").birth_date("19900101")), vec![c]);
    assert!(ids(&v, Query::new().name_token("zoe").birth_date("19900101")).is_empty());
    assert_eq!(ids(&v, Query::new().birth_date("19700704")), vec![a]);
    // Identifiers ignore layout and case.
    assert_eq!(ids(&v, Query::new().national_id("canary natid")), vec![a]);
    assert_eq!(ids(&v, Query::new().patient_id("hosp-a", "pid 0001")), vec![b]);
    assert!(ids(&v, Query::new().patient_id("HOSP-B", "PID-0001")).is_empty(), "the issuer is part of the id");
    assert_eq!(ids(&v, Query::new().patient_id("CANARYOISS", "CANARYOID")), vec![a], "other ids are found too");
    assert_eq!(v.search(&Query::new().name_token("jane").limit(1)).unwrap().len(), 1);
    assert_eq!(v.find(&Query::new().national_id("CANARYNATID")).unwrap()[0].demographics, d);

    // Update: the old terms go, the new ones come.
    let mut moved = jane();
    moved.family_name = Some("Roe".into());
    v.update(&b, &moved).unwrap();
    assert_eq!(ids(&v, Query::new().name_token("doe")), vec![c]);
    assert_eq!(ids(&v, Query::new().full_name("ROE^JANE")), vec![b]);
    assert_eq!(v.get(&b).unwrap().demographics.family_name.as_deref(), Some("Roe"));
    assert!(matches!(v.update(&IdentityId::from_hex(&"0".repeat(32)).unwrap(), &moved), Err(Error::NoSuchIdentity)));

    // Pseudonym out and back, also after closing and reopening.
    let p = v.pseudonym(&a).unwrap();
    assert!(p.as_str().starts_with("P1-") && p.as_str().len() == 35);
    assert_eq!(v.pseudonym(&a).unwrap(), p, "stable");
    assert_ne!(v.pseudonym(&b).unwrap(), p);
    drop(v);
    let v = env.open();
    let owner = v.resolve_pseudonym(p.as_str()).unwrap().unwrap();
    assert_eq!((owner.issued_to, owner.current), (a, a));
    assert_eq!(v.resolve_pseudonym("P1-00000000000000000000000000000000").unwrap(), None);
    assert!(matches!(v.resolve_pseudonym("P1-XYZ"), Err(Error::MalformedPseudonym)));
    assert_eq!(v.pseudonyms_of(&a).unwrap(), vec![p]);
}

#[test]
fn records_print_redacted_and_serialise_only_through_the_view() {
    let env = Env::new();
    let mut v = env.open();
    let id = v.create(&full("CANARYDBG")).unwrap();
    let r = v.get(&id).unwrap();
    let dbg = format!("{r:?} {:?}", v.pseudonym(&id).unwrap());
    assert!(!dbg.contains("CANARYDBG"), "{dbg}");
    assert!(!dbg.contains(&v.pseudonym(&id).unwrap().as_str()[3..]), "{dbg}");
    let json = serde_json::to_value(r.view()).unwrap();
    assert_eq!(json["family_name"], "CANARYDBGFAM");
    assert_eq!(json["id"], id.to_hex());
    assert_eq!(json["other_ids"][0]["id"], "CANARYDBGOID");
}

#[test]
fn link_key_rotation_keeps_old_pseudonyms_resolving() {
    let mut env = Env::new();
    let mut v = env.open();
    let id = v.create(&jane()).unwrap();
    let p1 = v.pseudonym(&id).unwrap();
    drop(v);
    let mut ring = cleave_keys::Keyring::open_or_create(
        &env.dir.path().join("keys/keyring.json"),
        cleave_keys::KeySource::KeyFile(env.dir.path().join("keys/master.key")),
    )
    .unwrap();
    assert_eq!(ring.rotate(cleave_keys::KeyPurpose::Link).unwrap(), 2);
    drop(ring);
    env.reload_ring();
    let mut v = env.open();
    let p2 = v.pseudonym(&id).unwrap();
    assert_eq!(p2.version(), 2);
    assert_ne!(p1, p2);
    for p in [&p1, &p2] {
        assert_eq!(v.resolve_pseudonym(p.as_str()).unwrap().unwrap().current, id);
    }
    let mut all = v.pseudonyms_of(&id).unwrap();
    all.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let mut want = vec![p1, p2];
    want.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(all, want);
    // A new identity gets the new version from the start.
    let other = v.create(&crate::named("Roe")).unwrap();
    assert_eq!(v.pseudonyms_of(&other).unwrap()[0].version(), 2);
}

#[test]
fn wrong_keys_and_unknown_formats_fail_closed() {
    let env = Env::new();
    drop(env.open());
    let other = Env::new();
    let err = Vault::open(&env.db, VaultKeys::unwrap(&other.ring).unwrap()).unwrap_err();
    assert!(matches!(err, Error::WrongKeys), "{err}");

    env.raw().execute("UPDATE meta SET value = CAST('cleave-vault/3' AS BLOB) WHERE name = 'format'", []).unwrap();
    let err = Vault::open(&env.db, VaultKeys::unwrap(&env.ring).unwrap()).unwrap_err();
    assert!(matches!(err, Error::UnknownFormat(_)), "{err}");

    let junk = env.dir.path().join("junk.sqlite");
    std::fs::write(&junk, vec![0x55u8; 8192]).unwrap();
    let err = Vault::open(&junk, VaultKeys::unwrap(&env.ring).unwrap()).unwrap_err();
    assert!(matches!(err, Error::UnknownFormat(_)), "{err}");

    // Another application's SQLite database is never written into.
    let foreign = env.dir.path().join("foreign.sqlite");
    rusqlite::Connection::open(&foreign).unwrap().execute_batch("CREATE TABLE t (x)").unwrap();
    let err = Vault::open(&foreign, VaultKeys::unwrap(&env.ring).unwrap()).unwrap_err();
    assert!(matches!(err, Error::UnknownFormat(_)), "{err}");
}

#[test]
fn bad_input_is_refused_with_a_message_free_of_the_value() {
    let env = Env::new();
    let mut v = env.open();
    assert!(matches!(v.search(&Query::new()), Err(Error::EmptyQuery)));
    let err = v.search(&Query::new().birth_date("1980-01-31")).unwrap_err();
    assert!(matches!(err, Error::InvalidInput { field: "birth date", .. }));
    assert!(!err.to_string().contains("1980"));
    let mut d = jane();
    d.birth_date = Some("19800230".into());
    assert!(matches!(v.create(&d), Err(Error::InvalidInput { field: "birth date", .. })));
    let mut d = jane();
    d.sex = Some("X".into());
    assert!(matches!(v.match_or_create(&d), Err(Error::InvalidInput { field: "sex", .. })));
}

#[cfg(unix)]
#[test]
fn vault_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let mut v = env.open();
    v.create(&jane()).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(env.db.parent().unwrap()), 0o700);
    assert_eq!(mode(&env.db), 0o600);
    assert_eq!(mode(&env.db.with_extension("sqlite-wal")), 0o600);
}
