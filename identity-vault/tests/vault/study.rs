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
