//! The four matching scenarios on arrival, unknown fields, and resolution through the
//! review queue (including a merge that keeps both records readable).
use identity_vault::{Decision, Error, FieldKind, MatchOutcome, Resolution, ReviewKind};

use crate::{jane, Env};

#[test]
fn four_scenarios_and_their_resolution() {
    let env = Env::new();
    let mut v = env.open();

    // First arrival: nobody like this.
    let MatchOutcome::Created { identity: base } = v.match_or_create(&jane()).unwrap() else { panic!() };
    // Same id, same demographics (spelt differently): the same identity, nothing to review.
    let mut same = jane();
    same.family_name = Some("DOE".into());
    same.given_name = Some(" jane ".into());
    same.issuer = Some("hosp a".into());
    assert_eq!(v.match_or_create(&same).unwrap(), MatchOutcome::Existing { identity: base });
    // Missing fields are unknown, not mismatches.
    let mut sparse = crate::named("Doe");
    sparse.issuer = jane().issuer.clone();
    sparse.patient_id = jane().patient_id.clone();
    assert_eq!(v.match_or_create(&sparse).unwrap(), MatchOutcome::Existing { identity: base });
    assert!(v.review_queue().unwrap().is_empty());

    // Same id, one field differs (a typo): attached, flagged.
    let mut typo = jane();
    typo.given_name = Some("Jnae".into());
    let out = v.match_or_create(&typo).unwrap();
    let MatchOutcome::AttachedForReview { identity, differing: FieldKind::GivenName, review: typo_item } = out else { panic!("{out:?}") };
    assert_eq!(identity, base);

    // Same id, two fields differ: a new identity, flagged as an id collision.
    let mut other_person = jane();
    other_person.given_name = Some("John".into());
    other_person.sex = Some("M".into());
    let out = v.match_or_create(&other_person).unwrap();
    let MatchOutcome::IdCollision { identity: collided, colliding_with, differing, review: collision_item } = out else { panic!("{out:?}") };
    assert_ne!(collided, base);
    assert_eq!(colliding_with, vec![base]);
    assert_eq!(differing, vec![FieldKind::GivenName, FieldKind::Sex]);

    // Other id, identical demographics: a new identity, flagged as a possible duplicate.
    let mut elsewhere = jane();
    elsewhere.issuer = Some("HOSP-B".into());
    elsewhere.patient_id = Some("B-77".into());
    let out = v.match_or_create(&elsewhere).unwrap();
    let MatchOutcome::PossibleDuplicate { identity: dup, duplicate_of, review: dup_item } = out else { panic!("{out:?}") };
    assert_ne!(dup, base);
    assert_eq!(duplicate_of, vec![base]);
    // No id and incomplete demographics: simply new.
    let mut no_id = crate::named("Doe");
    no_id.given_name = Some("Jane".into());
    assert!(matches!(v.match_or_create(&no_id).unwrap(), MatchOutcome::Created { .. }));

    // The queue lists kinds and field kinds, never values.
    let mut queue = v.review_queue().unwrap();
    queue.sort_by_key(|i| format!("{:?}", i.kind));
    assert_eq!(queue.len(), 3);
    let kinds: Vec<ReviewKind> = queue.iter().map(|i| i.kind).collect();
    assert_eq!(kinds, [ReviewKind::FieldMismatch, ReviewKind::IdCollision, ReviewKind::PossibleDuplicate]);
    assert_eq!(queue[0].identities, vec![base]);
    assert_eq!(queue[0].differing, vec![FieldKind::GivenName]);
    assert_eq!(queue[1].identities, vec![collided, base]);
    assert_eq!(queue[2].identities, vec![dup, base]);
    let json = serde_json::to_string(&queue).unwrap();
    for phi in ["Doe", "Jane", "Jnae", "John", "1980", "PID", "HOSP"] {
        assert!(!json.contains(phi), "{phi} in {json}");
    }

    // A merge does not apply to a single-identity item.
    assert!(matches!(v.resolve(&typo_item, Resolution::Merge { keep: base, absorb: dup }), Err(Error::BadResolution(_))));
    // Confirm the typo: attach stands; the item leaves the queue and cannot be resolved twice.
    let r = v.resolve(&typo_item, Resolution::Confirm).unwrap();
    assert_eq!((r.kind, r.decision, r.created), (ReviewKind::FieldMismatch, Decision::Confirmed, None));
    assert!(matches!(v.resolve(&typo_item, Resolution::Confirm), Err(Error::NoSuchReviewItem)));

    // Keep the collision apart.
    let r = v.resolve(&collision_item, Resolution::KeepApart).unwrap();
    assert_eq!(r.decision, Decision::KeptApart);
    assert_eq!(v.current_identity(&collided).unwrap(), collided);

    // Merge the duplicate into the base record.
    let p_base = v.pseudonym(&base).unwrap();
    let p_dup = v.pseudonym(&dup).unwrap();
    assert!(matches!(
        v.resolve(&dup_item, Resolution::Merge { keep: base, absorb: collided }),
        Err(Error::BadResolution(_))
    ));
    let r = v.resolve(&dup_item, Resolution::Merge { keep: base, absorb: dup }).unwrap();
    assert_eq!((r.decision, r.kept, r.absorbed), (Decision::Merged, Some(base), Some(dup)));
    let audit = serde_json::to_string(&r).unwrap();
    assert!(audit.contains("merged") && !audit.contains("Doe"), "{audit}");
    assert!(v.review_queue().unwrap().is_empty());

    // Both records stay readable; the absorbed one points to the kept one.
    let kept = v.get(&base).unwrap();
    let absorbed = v.get(&dup).unwrap();
    assert_eq!(kept.merged_into, None);
    assert_eq!(absorbed.merged_into, Some(base));
    assert_eq!(absorbed.demographics.patient_id.as_deref(), Some("B-77"));
    // Both pseudonyms resolve to the kept identity, and either identity lists both.
    let owner = v.resolve_pseudonym(p_dup.as_str()).unwrap().unwrap();
    assert_eq!((owner.issued_to, owner.current), (dup, base));
    for who in [base, dup] {
        let mut ps: Vec<String> = v.pseudonyms_of(&who).unwrap().iter().map(|p| p.to_string()).collect();
        ps.sort();
        let mut want = vec![p_base.to_string(), p_dup.to_string()];
        want.sort();
        assert_eq!(ps, want);
    }
    // A later arrival with the absorbed id lands on the kept identity.
    assert_eq!(v.match_or_create(&elsewhere).unwrap(), MatchOutcome::Existing { identity: base });
}

#[test]
fn keeping_a_field_mismatch_apart_creates_the_arrival() {
    let env = Env::new();
    let mut v = env.open();
    let base = v.match_or_create(&jane()).unwrap().identity();
    let mut twin = jane();
    twin.given_name = Some("Joan".into());
    let MatchOutcome::AttachedForReview { review, .. } = v.match_or_create(&twin).unwrap() else { panic!() };
    let r = v.resolve(&review, Resolution::KeepApart).unwrap();
    let created = r.created.expect("a new identity for the arrival");
    assert_ne!(created, base);
    assert_eq!(v.get(&created).unwrap().demographics, twin);
    assert_eq!(v.get(&base).unwrap().demographics, jane(), "the existing record is untouched");
}
