//! Ids are random: neither their values nor the file's physical order follow insertion.
use identity_vault::{Demographics, IdentityId};

use crate::Env;

/// Spearman's rank correlation of two permutations of 0..n given as rank vectors.
fn spearman(ranks: &[usize]) -> f64 {
    let n = ranks.len() as f64;
    let d2: f64 = ranks.iter().enumerate().map(|(i, &r)| (i as f64 - r as f64).powi(2)).sum();
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}

fn ranks_of(order: &[IdentityId], inserted: &[IdentityId]) -> Vec<usize> {
    // For each identity in insertion order, its position in `order`.
    inserted.iter().map(|id| order.iter().position(|o| o == id).unwrap()).collect()
}

#[test]
fn ids_and_physical_order_do_not_follow_insertion() {
    let env = Env::new();
    let mut v = env.open();
    let people: Vec<Demographics> = (0..1000).map(|i| crate::named(&format!("Person{i}"))).collect();
    let mut inserted = Vec::new();
    for chunk in people.chunks(100) {
        inserted.extend(v.import(chunk).unwrap());
    }
    drop(v);

    let mut by_value = inserted.clone();
    by_value.sort();
    let rho = spearman(&ranks_of(&by_value, &inserted));
    assert!(rho.abs() < 0.1, "ids correlate with insertion order: rho = {rho}");

    // The file's own order (a scan without ORDER BY) is the B-tree order of the random
    // ids, and there is no implicit rowid to expose insertion order.
    let raw = env.raw();
    let mut stmt = raw.prepare("SELECT id FROM identity").unwrap();
    let physical: Vec<IdentityId> = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|b| IdentityId::from_hex(&hex::encode(b.unwrap())).unwrap())
        .collect();
    assert_eq!(physical, by_value);
    let rho = spearman(&ranks_of(&physical, &inserted));
    assert!(rho.abs() < 0.1, "physical order follows insertion: rho = {rho}");
    for table in ["identity", "blind_index", "pseudonym", "study", "review", "meta"] {
        let err = raw.prepare(&format!("SELECT rowid FROM {table}")).err();
        assert!(err.is_some(), "{table} has a rowid");
    }
    // No column anywhere holds a time.
    let cols: Vec<String> = raw
        .prepare("SELECT name FROM pragma_table_info(?1)")
        .and_then(|mut s| {
            ["identity", "blind_index", "pseudonym", "study", "review", "meta"]
                .iter()
                .flat_map(|t| s.query_map([t], |r| r.get::<_, String>(0)).unwrap().collect::<Vec<_>>())
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap();
    assert!(cols.len() > 20);
    assert!(!cols.iter().any(|c| c.contains("time") || c.contains("created") || c.ends_with("_at")), "{cols:?}");
}
