//! Someone with write access edits the file: a flipped bit, a ciphertext moved to another
//! row or column. Each is refused with a clear error, never wrong plaintext.
use identity_vault::{Error, IdentityId, Resolution, StudyLink, Vault};
use rusqlite::params;

use crate::{full, jane, Env};

fn blob(env: &Env, table: &str, col: &str, id: &IdentityId) -> Vec<u8> {
    env.raw()
        .query_row(&format!("SELECT {col} FROM {table} WHERE id = ?1"), [&id.as_bytes()[..]], |r| r.get(0))
        .unwrap()
}

fn set(env: &Env, table: &str, col: &str, id: &IdentityId, v: &[u8]) {
    let n = env
        .raw()
        .execute(&format!("UPDATE {table} SET {col} = ?2 WHERE id = ?1"), params![&id.as_bytes()[..], v])
        .unwrap();
    assert_eq!(n, 1);
}

fn assert_tampered(v: &Vault, id: &IdentityId, column: &str) {
    let err = v.get(id).unwrap_err();
    match &err {
        Error::Tampered { table: "identity", column: c } if *c == column => {}
        other => panic!("expected tampering in {column}, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(column) && msg.contains("restore"), "{msg}");
    assert!(!msg.contains("CANARY") && !msg.contains(&id.to_hex()), "{msg}");
}

#[test]
fn flipped_bits_and_moved_ciphertexts_are_refused() {
    let env = Env::new();
    let (a, b) = {
        let mut v = env.open();
        (v.create(&full("CANARYA")).unwrap(), v.create(&full("CANARYB")).unwrap())
    };
    let fam_a = blob(&env, "identity", "family_name", &a);
    let fam_b = blob(&env, "identity", "family_name", &b);
    let giv_a = blob(&env, "identity", "given_name", &a);

    // One bit flipped in the ciphertext body, then in the key-version header.
    for byte in [40, 2] {
        let mut bad = fam_a.clone();
        bad[byte] ^= 0x10;
        set(&env, "identity", "family_name", &a, &bad);
        assert_tampered(&env.open(), &a, "family_name");
    }
    set(&env, "identity", "family_name", &a, &fam_a);
    assert_eq!(env.open().get(&a).unwrap().demographics.family_name.as_deref(), Some("CANARYAFAM"));

    // Swapped between two rows.
    set(&env, "identity", "family_name", &a, &fam_b);
    set(&env, "identity", "family_name", &b, &fam_a);
    let v = env.open();
    assert_tampered(&v, &a, "family_name");
    assert_tampered(&v, &b, "family_name");
    drop(v);
    set(&env, "identity", "family_name", &a, &fam_a);
    set(&env, "identity", "family_name", &b, &fam_b);

    // Swapped between two columns of one row.
    set(&env, "identity", "family_name", &a, &giv_a);
    set(&env, "identity", "given_name", &a, &fam_a);
    assert_tampered(&env.open(), &a, "family_name");
    set(&env, "identity", "family_name", &a, &fam_a);
    set(&env, "identity", "given_name", &a, &giv_a);

    // Lists too.
    let mut phones = blob(&env, "identity", "phones", &a);
    let last = phones.len() - 1;
    phones[last] ^= 1;
    set(&env, "identity", "phones", &a, &phones);
    assert_tampered(&env.open(), &a, "phones");
}

#[test]
fn clear_link_columns_are_authenticated() {
    let env = Env::new();
    let (a, b, c, p_a, item) = {
        let mut v = env.open();
        let a = v.create(&jane()).unwrap();
        let mut dup = jane();
        dup.patient_id = Some("OTHER-7".into());
        let out = v.match_or_create(&dup).unwrap();
        let identity_vault::MatchOutcome::PossibleDuplicate { identity: b, review, .. } = out else { panic!("{out:?}") };
        let c = v.create(&full("CANARYC")).unwrap();
        v.link_study(&a, &StudyLink { original_study_uid: "1.2.3", clinical_study_uid: "2.25.1", ..Default::default() }).unwrap();
        (a, b, c, v.pseudonym(&a).unwrap(), review)
    };
    // Redirect a pseudonym to another identity.
    let term: Vec<u8> = env
        .raw()
        .query_row("SELECT term FROM pseudonym WHERE identity = ?1", [&a.as_bytes()[..]], |r| r.get(0))
        .unwrap();
    env.raw().execute("UPDATE pseudonym SET identity = ?2 WHERE term = ?1", params![term, &c.as_bytes()[..]]).unwrap();
    assert!(matches!(env.open().resolve_pseudonym(p_a.as_str()), Err(Error::Tampered { table: "pseudonym", .. })));
    env.raw().execute("UPDATE pseudonym SET identity = ?2 WHERE term = ?1", params![term, &a.as_bytes()[..]]).unwrap();

    // Point a study at another identity.
    env.raw().execute("UPDATE study SET identity = ?1", [&c.as_bytes()[..]]).unwrap();
    assert!(matches!(env.open().studies_of(&c), Err(Error::Tampered { table: "study", column: "identity" })));
    env.raw().execute("UPDATE study SET identity = ?1", [&a.as_bytes()[..]]).unwrap();

    // Re-point a merge.
    env.open().resolve(&item, Resolution::Merge { keep: a, absorb: b }).unwrap();
    set(&env, "identity", "merged_into", &b, c.as_bytes());
    assert_tampered(&env.open(), &b, "merged_into");
    set(&env, "identity", "merged_into", &b, a.as_bytes());
    assert_eq!(env.open().get(&b).unwrap().merged_into, Some(a));

    // The resolved item has left the queue.
    let v = env.open();
    assert!(v.review_queue().unwrap().is_empty());
}
