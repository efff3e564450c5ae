//! Study links: idempotent on re-send, found by the accession number the RIS shows.
use identity_vault::{Error, StudyLink, StudyLinkOutcome};

use crate::{jane, Env};

#[test]
fn link_find_resend_and_conflict() {
    let env = Env::new();
    let mut v = env.open();
    let a = v.create(&jane()).unwrap();
    let b = v.create(&crate::full("X")).unwrap();
    let link = StudyLink {
        accession_number: Some("ACC-2024-0001"),
        original_study_uid: "1.2.840.113619.2.55.3.1",
        clinical_study_uid: "2.25.1234567890",
        original_series_uids: &["1.2.840.113619.2.55.3.1.1"],
        original_instance_uids: &["1.2.840.113619.2.55.3.1.1.1"],
    };
    assert_eq!(v.link_study(&a, &link).unwrap(), StudyLinkOutcome::Linked);
    assert_eq!(v.link_study(&a, &link).unwrap(), StudyLinkOutcome::AlreadyLinked);
    let more = StudyLink { original_instance_uids: &["1.2.840.113619.2.55.3.1.1.2"], ..link };
    assert_eq!(v.link_study(&a, &more).unwrap(), StudyLinkOutcome::Extended);
    assert_eq!(v.link_study(&a, &more).unwrap(), StudyLinkOutcome::AlreadyLinked);

    let found = v.find_studies_by_accession("acc 2024 0001").unwrap();
    assert_eq!(found.len(), 1);
    let s = &found[0];
    assert_eq!(s.identity, a);
    assert_eq!(s.clinical_study_uid.as_str(), "2.25.1234567890");
    assert_eq!(s.original_study_uid.as_str(), "1.2.840.113619.2.55.3.1");
    assert_eq!(*s.original_instance_uids, ["1.2.840.113619.2.55.3.1.1.1", "1.2.840.113619.2.55.3.1.1.2"]);
    assert!(!format!("{s:?}").contains("1.2.840"));
    assert!(v.find_studies_by_accession("ACC-2024-0002").unwrap().is_empty());
    assert_eq!(v.studies_of(&a).unwrap().len(), 1);
    assert!(v.studies_of(&b).unwrap().is_empty());

    // The same original study for another patient, or with another derived UID: refused.
    assert!(matches!(v.link_study(&b, &link), Err(Error::StudyConflict)));
    let other_uid = StudyLink { clinical_study_uid: "2.25.999", ..link };
    assert!(matches!(v.link_study(&a, &other_uid), Err(Error::StudyConflict)));
    assert!(matches!(
        v.link_study(&a, &StudyLink { original_study_uid: "", ..link }),
        Err(Error::InvalidInput { .. })
    ));
}

/// A CT study arrives one instance at a time: each link adds one row, a re-sent instance
/// changes nothing, and the study reads back whole. Member rows swapped on disk (each one's
/// sealed UID put in the other's place) are refused, not misread.
#[test]
fn a_big_study_links_instance_by_instance_and_refuses_swapped_members() {
    let env = Env::new();
    let mut v = env.open();
    let a = v.create(&jane()).unwrap();
    let uids: Vec<String> = (0..1500).map(|i| format!("1.2.840.113619.2.55.3.7.{i}")).collect();
    let base = StudyLink {
        accession_number: Some("ACC-BIG"),
        original_study_uid: "1.2.840.113619.2.55.3.7",
        clinical_study_uid: "2.25.77",
        original_series_uids: &["1.2.840.113619.2.55.3.7.0"],
        original_instance_uids: &[],
    };
    for (i, uid) in uids.iter().enumerate() {
        let one = [uid.as_str()];
        let want = if i == 0 { StudyLinkOutcome::Linked } else { StudyLinkOutcome::Extended };
        assert_eq!(v.link_study(&a, &StudyLink { original_instance_uids: &one, ..base }).unwrap(), want, "instance {i}");
    }
    let resent = [uids[700].as_str()];
    assert_eq!(v.link_study(&a, &StudyLink { original_instance_uids: &resent, ..base }).unwrap(), StudyLinkOutcome::AlreadyLinked);
    let s = &v.find_studies_by_accession("ACC-BIG").unwrap()[0];
    let mut want = uids.clone();
    want.sort();
    assert_eq!(*s.original_instance_uids, want);
    assert_eq!(*s.original_series_uids, ["1.2.840.113619.2.55.3.7.0"]);
    drop(v);

    let raw = env.raw();
    let rows: Vec<(Vec<u8>, Vec<u8>)> =
        raw.prepare("SELECT term, uid FROM study_member WHERE kind = 2 LIMIT 2").unwrap().query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
    raw.execute("UPDATE study_member SET uid = ?1 WHERE term = ?2", rusqlite::params![rows[1].1, rows[0].0]).unwrap();
    raw.execute("UPDATE study_member SET uid = ?1 WHERE term = ?2", rusqlite::params![rows[0].1, rows[1].0]).unwrap();
    drop(raw);
    assert!(matches!(env.open().find_studies_by_accession("ACC-BIG"), Err(Error::Tampered { .. })));
}

/// Modalities in the field send UIDs longer than PS3.5's 64 characters. The vault links
/// them as it always did; refusing one would fail the whole instance.
#[test]
fn an_overlong_original_uid_is_linked_and_read_back() {
    let env = Env::new();
    let mut v = env.open();
    let a = v.create(&jane()).unwrap();
    let long = format!("1.2.840.113619.2.55.3.{}", "1234567890".repeat(5));
    assert!(long.len() > 64);
    let one = [long.as_str()];
    let link = StudyLink { original_study_uid: "1.2.9", clinical_study_uid: "2.25.9", original_instance_uids: &one, ..Default::default() };
    assert_eq!(v.link_study(&a, &link).unwrap(), StudyLinkOutcome::Linked);
    assert_eq!(*v.studies_of(&a).unwrap()[0].original_instance_uids, [long.clone()]);
}
