//! T2: a thief holding both stores' files (and no keys) tries to join them: by a value the
//! two share (an id, a hash, a timestamp, in any encoding), or by row order (both written
//! in the same order as patients arrive). 1000 patients go in through the identity vault's
//! and the clinical store's library APIs (the broker does not write them yet), then both
//! SQLite files are opened raw and every column of every table is read.
mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use clinical_store::{ClinicalStore, NewNote, StoreKeys};
use identity_vault::{Demographics, Vault, VaultKeys};
use rusqlite::types::ValueRef;

const PATIENTS: usize = 1000;

/// Every value of every column of every table, as bytes (blobs also as lowercase hex,
/// numbers as their decimal text), with where it came from. Values under 6 bytes (sex
/// codes, flags, small counters) carry no linking power and are left out.
fn all_values(db: &Path) -> HashMap<Vec<u8>, String> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let tables: Vec<String> = {
        let mut st = c.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").unwrap();
        st.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
    };
    let mut out = HashMap::new();
    for t in tables {
        let mut st = c.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let names: Vec<String> = st.column_names().iter().map(|s| s.to_string()).collect();
        let mut rows = st.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            for (i, col) in names.iter().enumerate() {
                let mut forms = Vec::new();
                match r.get_ref(i).unwrap() {
                    ValueRef::Null => {}
                    ValueRef::Integer(n) => forms.push(n.to_string().into_bytes()),
                    ValueRef::Real(x) => forms.push(x.to_string().into_bytes()),
                    ValueRef::Text(s) => forms.push(s.to_ascii_lowercase()),
                    ValueRef::Blob(b) => {
                        forms.push(b.to_vec());
                        forms.push(b.iter().map(|x| format!("{x:02x}")).collect::<String>().into_bytes());
                    }
                }
                for f in forms.into_iter().filter(|f| f.len() >= 6) {
                    out.insert(f, format!("{t}.{col}"));
                }
            }
        }
    }
    out
}

/// Values present in both stores, with their columns.
fn shared_values(a: &Path, b: &Path) -> Vec<(String, String)> {
    let va = all_values(a);
    let vb = all_values(b);
    va.iter().filter_map(|(k, ca)| vb.get(k).map(|cb| (ca.clone(), cb.clone()))).collect()
}

/// The order in which `sql` (one column) returns its keys, as key → rank.
fn ranks(db: &Path, sql: &str) -> HashMap<String, usize> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut st = c.prepare(sql).unwrap();
    let keys: Vec<String> = st
        .query_map([], |r| {
            Ok(match r.get_ref(0)? {
                ValueRef::Blob(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
                ValueRef::Text(s) => String::from_utf8_lossy(s).into_owned(),
                other => format!("{other:?}"),
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    keys.into_iter().enumerate().map(|(i, k)| (k, i)).collect()
}

/// Spearman's rho between two rank lists of the same patients (no ties).
fn spearman(pairs: &[(usize, usize)]) -> f64 {
    let mut a: Vec<usize> = (0..pairs.len()).collect();
    let mut b = a.clone();
    a.sort_by_key(|&i| pairs[i].0);
    b.sort_by_key(|&i| pairs[i].1);
    let mut ra = vec![0usize; pairs.len()];
    let mut rb = vec![0usize; pairs.len()];
    for (r, &i) in a.iter().enumerate() {
        ra[i] = r;
    }
    for (r, &i) in b.iter().enumerate() {
        rb[i] = r;
    }
    let n = pairs.len() as f64;
    let d2: f64 = ra.iter().zip(&rb).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}

/// Rank correlation of the same patients' rows in the two stores.
fn join_by_order(vault_db: &Path, vault_sql: &str, clin_db: &Path, clin_sql: &str, link: &[(String, String)]) -> f64 {
    let rv = ranks(vault_db, vault_sql);
    let rc = ranks(clin_db, clin_sql);
    let pairs: Vec<(usize, usize)> = link.iter().map(|(id, p)| (rv[id], rc[p])).collect();
    spearman(&pairs)
}

#[test]
fn stolen_stores_cannot_be_joined() {
    let data = tempfile::tempdir().unwrap();
    let keyring = broker::open(data.path(), broker::MasterKeySource::KeyFile).unwrap().keyring;
    let vault_db = data.path().join("identity/vault.sqlite");
    let clin_dir = data.path().join("clinical");
    let mut vault = Vault::open(&vault_db, VaultKeys::unwrap(&keyring).unwrap()).unwrap();
    let mut clin = ClinicalStore::open(&clin_dir, StoreKeys::unwrap(&keyring).unwrap()).unwrap();

    // Patients arrive one after another: identity, pseudonym, then a clinical note.
    let people: Vec<Demographics> = (0..PATIENTS)
        .map(|i| {
            let mut d = Demographics::default();
            d.family_name = Some(format!("Family{i:04}"));
            d.given_name = Some("Given".into());
            d.birth_date = Some(format!("19{:02}0{}1{}", i % 100, 1 + i % 9, i % 10));
            d.sex = Some(if i % 2 == 0 { "F" } else { "M" }.into());
            d.issuer = Some("HOSP-A".into());
            d.patient_id = Some(format!("MRN{i:06}"));
            d
        })
        .collect();
    let ids = vault.import(people.iter()).unwrap();
    // (identity id hex, pseudonym): what a thief must not recover.
    let mut link = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let p = vault.pseudonym(id).unwrap();
        clin.add_note(NewNote {
            pseudonym: p.as_str().to_owned(),
            study_uid: None,
            author: "doctor".into(),
            written_at: format!("2026-11-22T03:{:02}:{:02}Z", (i / 60) % 60, i % 60),
            text: zeroize::Zeroizing::new(format!("note {i}")),
        })
        .unwrap();
        link.push((id.to_hex(), p.as_str().to_owned()));
    }
    drop(vault);
    drop(clin);
    let clin_db = clin_dir.join("index.sqlite");
    assert_eq!(link.iter().map(|l| &l.1).collect::<HashSet<_>>().len(), PATIENTS);

    // The checks can see a join: a weakened copy of each store with a table that keeps an
    // insertion counter and a clear shared patient number is caught by both.
    let weak = tempfile::tempdir().unwrap();
    let (wv, wc) = (weak.path().join("vault.sqlite"), weak.path().join("index.sqlite"));
    std::fs::copy(&vault_db, &wv).unwrap();
    std::fs::copy(&clin_db, &wc).unwrap();
    for (db, key) in [(&wv, 0), (&wc, 1)] {
        let c = rusqlite::Connection::open(db).unwrap();
        c.execute_batch("CREATE TABLE leak (seq INTEGER PRIMARY KEY, k TEXT, shared TEXT)").unwrap();
        for (i, l) in link.iter().enumerate() {
            let k = if key == 0 { &l.0 } else { &l.1 };
            c.execute("INSERT INTO leak (k, shared) VALUES (?1, ?2)", rusqlite::params![k, format!("patient-{i:06}")]).unwrap();
        }
    }
    let weak_shared = shared_values(&wv, &wc);
    assert!(weak_shared.iter().any(|(a, b)| a == "leak.shared" && b == "leak.shared"), "the value check is blind: {weak_shared:?}");
    let weak_rho = join_by_order(&wv, "SELECT k FROM leak", &wc, "SELECT k FROM leak", &link);
    assert!(weak_rho > 0.99, "the order check is blind: rho = {weak_rho}");

    // The real stores: no value in common, in any column, in any encoding.
    let shared = shared_values(&vault_db, &clin_db);
    assert!(shared.is_empty(), "values shared by the two stores: {:?}", &shared[..shared.len().min(10)]);
    // Row order: the identity table and the clinical patients and notes tables, each
    // against the other and against arrival order. With n = 1000, |rho| has a standard
    // deviation of about 0.032 when there is no relation; 0.15 is over 4.5 of them.
    let v_sql = "SELECT id FROM identity";
    let by_arrival: Vec<(usize, usize)> = {
        let rv = ranks(&vault_db, v_sql);
        link.iter().enumerate().map(|(i, (id, _))| (i, rv[id])).collect()
    };
    let rho_vault_arrival = spearman(&by_arrival);
    let by_arrival: Vec<(usize, usize)> = {
        let rc = ranks(&clin_db, "SELECT pseudonym FROM patients");
        link.iter().enumerate().map(|(i, (_, p))| (i, rc[p])).collect()
    };
    let rho_clin_arrival = spearman(&by_arrival);
    let rho_patients = join_by_order(&vault_db, v_sql, &clin_db, "SELECT pseudonym FROM patients", &link);
    let rho_notes = join_by_order(
        &vault_db,
        v_sql,
        &clin_db,
        "SELECT p.pseudonym FROM notes n JOIN patients p ON p.id = n.patient_id ORDER BY n.id",
        &link,
    );
    eprintln!("rho: vault~arrival {rho_vault_arrival:.3}, clinical~arrival {rho_clin_arrival:.3}, vault~patients {rho_patients:.3}, vault~notes {rho_notes:.3}");
    for (what, rho) in [
        ("vault rows vs arrival", rho_vault_arrival),
        ("clinical patients vs arrival", rho_clin_arrival),
        ("vault vs clinical patients", rho_patients),
        ("vault vs clinical notes", rho_notes),
    ] {
        assert!(rho.abs() < 0.15, "{what}: row order predicts the other store (rho = {rho:.3})");
    }
}
