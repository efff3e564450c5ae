//! Re-sending an instance gives the same bytes; instances of one study get one study UID.
mod common;

use cleave_deid::{split, Limits, Options};
use common::*;

fn run(f: &[u8]) -> (Vec<u8>, cleave_deid::SplitOutcome) {
    let mut out = Vec::new();
    let o = split(f, &mut out, &Options::care(), &mapper(), "PSEUDO-7", &Limits::default()).expect("split");
    (out, o)
}

#[test]
fn the_same_instance_twice_gives_identical_bytes() {
    let f = Instance { rows: 16, columns: 16, ..Default::default() }.file();
    let (a, oa) = run(&f);
    let (b, ob) = run(&f);
    assert_eq!(a, b);
    assert_eq!(oa.summary, ob.summary);
}

#[test]
fn two_instances_of_one_study_share_the_derived_study_uid() {
    let one = Instance { rows: 16, columns: 16, ..Default::default() };
    let two = Instance { sop: "1.2.826.0.1.3680043.10.543.1.1.2", ..one };
    let other_series = Instance { series: "1.2.826.0.1.3680043.10.543.1.2", sop: "1.2.826.0.1.3680043.10.543.1.2.1", ..one };
    let (_, a) = run(&one.file());
    let (_, b) = run(&two.file());
    let (_, c) = run(&other_series.file());
    assert_eq!(a.summary.study_instance_uid, b.summary.study_instance_uid);
    assert_eq!(a.summary.study_instance_uid, c.summary.study_instance_uid);
    assert_eq!(a.summary.series_instance_uid, b.summary.series_instance_uid);
    assert_ne!(a.summary.series_instance_uid, c.summary.series_instance_uid);
    assert_ne!(a.summary.sop_instance_uid, b.summary.sop_instance_uid);
    assert_ne!(a.summary.study_instance_uid, one.study, "the study UID must be replaced");
    assert_eq!(a.identity.study_instance_uid.as_str(), one.study, "the original goes to the identity side");
}

#[test]
fn summary_reports_what_the_clinical_side_keeps() {
    let f = Instance { rows: 16, columns: 8, frames: 2, ..Default::default() }.file();
    let (out, o) = run(&f);
    let s = &o.summary;
    assert_eq!((s.rows, s.columns, s.number_of_frames), (Some(16), Some(8), Some(2)));
    assert_eq!(s.modality.as_deref(), Some("CT"));
    assert_eq!(s.sex.as_deref(), Some("F"));
    assert_eq!(s.age_years, Some(61), "born 1962-07-04, studied 2024-01-05");
    assert_eq!(s.study_date.as_deref(), Some("20240105"));
    assert_eq!(s.study_description.as_deref(), Some("CT HEAD"), "cleaned description");
    assert!(s.descriptions_cleaned, "CANARYDESC was dropped by cleaning");
    assert!(!s.not_for_research);
    assert_eq!(o.identity.patient_name.as_deref().map(String::as_str), Some("CANARY^NAME"));
    assert_eq!(o.identity.accession_number.as_deref().map(String::as_str), Some("CANARYACC"));
    // Pixel data pass through unchanged at the end of the output.
    let n = f.len() - (16 * 8 * 2 * 2);
    assert_eq!(&out[out.len() - (16 * 8 * 2 * 2)..], &f[n..]);
    assert!(!out.windows(6).any(|w| w == b"CANARY"));
}
