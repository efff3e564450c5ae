//! No pseudonym, UID or other identifier handed to the broker reaches the audit directory:
//! only keyed references do.
mod common;

use cleave_audit::*;
use common::*;

const PSEUDONYM: &str = "CANARY-PSEUDONYM-7f3a9c";
const STUDY_UID: &str = "1.2.826.0.1.3680043.99.424242.1";

fn all_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            out.extend(std::fs::read(&p).unwrap());
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn canary_identifiers_never_reach_the_audit_directory() {
    let dir = tempfile::tempdir().unwrap();
    let refs = reference_key();
    let patient = refs.patient_ref(PSEUDONYM);
    let study = refs.study_ref(STUDY_UID);
    {
        let mut options = LogOptions::new(ORIGIN);
        options.checkpoint_every_entries = Some(10);
        let log = AuditLog::open(dir.path(), options, &signing_key()).unwrap();
        for op in Operation::ALL {
            let e = Entry::new(Actor::new(ActorKind::Staff, "nurse.joy"), *op, Outcome::Allowed)
                .with_resource(refs.patient_ref(PSEUDONYM))
                .with_resource(refs.study_ref(STUDY_UID));
            log.append(&e).unwrap();
        }
        // The auditor's question "who accessed this patient", as the broker answers it.
        let page = log.list(&Query { resource: Some(patient), ..Query::default() }).unwrap();
        assert_eq!(page.entries.len(), Operation::ALL.len());
        // An ATNA export carries the reference, not the identifier.
        let xml = atna::to_audit_message(
            0,
            &page.entries[0].1,
            &atna::AuditSource { source_id: "cleave-broker".into(), enterprise_site_id: None, log_origin: ORIGIN.into() },
        );
        assert!(!xml.contains(PSEUDONYM) && !xml.contains(STUDY_UID));
        assert!(xml.contains(&hex::encode(patient.digest)));
    }
    let bytes = all_bytes(dir.path());
    // Positive control: the entries are really there, by reference.
    assert!(contains(&bytes, hex::encode(patient.digest).as_bytes()));
    assert!(contains(&bytes, hex::encode(study.digest).as_bytes()));
    for canary in [PSEUDONYM, STUDY_UID, "424242", "7f3a9c"] {
        assert!(!contains(&bytes, canary.as_bytes()), "{canary} leaked into the audit directory");
        assert!(!contains(&bytes, canary.to_lowercase().as_bytes()));
        assert!(!contains(&bytes, hex::encode(canary).as_bytes()));
    }
}
