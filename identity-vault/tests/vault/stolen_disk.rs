//! A thief copies the vault directory: no value written appears in any byte of it, with
//! the WAL still holding the data (before checkpoint) and after closing.
use identity_vault::{Resolution, StudyLink};

use crate::{full, Env};

/// Every needle found in any file of `dir`. One pass per file: an 8-byte prefix set
/// narrows the candidates, then the whole needle is compared (all needles are ≥ 8 bytes).
fn scan(dir: &std::path::Path, needles: &[Vec<u8>]) -> Vec<String> {
    use std::collections::HashSet;
    assert!(needles.iter().all(|n| n.len() >= 8));
    let prefixes: HashSet<&[u8]> = needles.iter().map(|n| &n[..8]).collect();
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        for (i, w) in bytes.windows(8).enumerate() {
            if !prefixes.contains(w) {
                continue;
            }
            for n in needles.iter().filter(|n| bytes[i..].starts_with(n)) {
                found.push(format!("{} in {}", String::from_utf8_lossy(n), path.display()));
            }
        }
    }
    found
}

#[test]
fn no_canary_in_any_byte_of_the_vault_directory() {
    let env = Env::new();
    let mut v = env.open();
    let mut needles: Vec<Vec<u8>> = Vec::new();
    let mut pseudonyms = Vec::new();
    for i in 0..20 {
        let tag = format!("CANARY{i:04}");
        let id = v.create(&full(&tag)).unwrap();
        let p = v.pseudonym(&id).unwrap();
        let series = format!("1.2.826.0.1.3680043.99.{i}.2");
        let instance = format!("1.2.826.0.1.3680043.99.{i}.3");
        v.link_study(
            &id,
            &StudyLink {
                accession_number: Some(&format!("CANARYACC{i:04}")),
                original_study_uid: &format!("1.2.826.0.1.3680043.99.{i}.1"),
                clinical_study_uid: &format!("2.25.99999{i:04}"),
                original_series_uids: &[&series],
                original_instance_uids: &[&instance],
            },
        )
        .unwrap();
        for suffix in ["FAM", "GIV", "MID", "PRE", "SUF", "ADDR", "PHONE1", "PHONE2", "NATID", "ISSUER", "PID", "OISS", "OID", "ETHNIC", "NOTE"] {
            let s = format!("{tag}{suffix}");
            needles.push(s.to_lowercase().into_bytes());
            needles.push(s.into_bytes());
        }
        needles.push(format!("CANARYACC{i:04}").into_bytes());
        needles.push(format!("1.2.826.0.1.3680043.99.{i}.").into_bytes());
        needles.push(format!("2.25.99999{i:04}").into_bytes());
        needles.push(p.as_str().as_bytes().to_vec());
        needles.push(p.as_str()[3..].as_bytes().to_vec());
        needles.push(hex::decode(&p.as_str()[3..]).unwrap());
        pseudonyms.push(p);
    }
    // A review item carries the arrival's demographics, sealed.
    let mut typo = full("CANARY0000");
    typo.given_name = Some("CANARYTYPOGIV".into());
    needles.push(b"CANARYTYPOGIV".to_vec());
    let outcome = v.match_or_create(&typo).unwrap();
    assert!(matches!(outcome, identity_vault::MatchOutcome::AttachedForReview { .. }), "{outcome:?}");
    needles.push(b"19700704".to_vec());

    let dir = env.db.parent().unwrap();
    let wal = env.db.with_extension("sqlite-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0, "the WAL must still hold the writes for this check");
    let found = scan(dir, &needles);
    assert!(found.is_empty(), "plaintext on disk with the WAL present: {found:?}");

    // The data really is there: a sanity check that the scan could find something.
    assert!(!scan(dir, &[b"cleave-vault/2".to_vec()]).is_empty());

    let item = v.review_queue().unwrap()[0].id;
    v.resolve(&item, Resolution::KeepApart).unwrap();
    drop(v);
    let found = scan(dir, &needles);
    assert!(found.is_empty(), "plaintext on disk after close: {found:?}");
    assert_eq!(pseudonyms.len(), 20);
}
