//! pydicom's bundled test files, filled with canaries by tests/corpus.py, split and
//! checked: no canary survives in the output bytes, the identity canaries land in
//! ExtractedIdentity, pixel data are byte-identical (checked by pydicom), and the output
//! opens in pydicom and in dcmtk's dcmdump.
mod common;

use cleave_deid::{split, Limits, Options};
use std::path::{Path, PathBuf};
use std::process::Command;

fn table_json() -> PathBuf {
    std::env::var_os("CLEAVE_PS315_TABLE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/dicom/ps3.15-table-E.1-1.json"))
}

fn python(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}): install Python 3 and `pip install pydicom`"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "corpus.py {args:?} failed (is pydicom installed? `pip install pydicom`):\n{text}"
    );
    text
}

/// corpus.py makes canary UIDs as 1.2.826.0.1.3680043.10.543.9nnnnn.
const CANARY_UID_ROOT: &[u8] = b"1.2.826.0.1.3680043.10.543.9";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

struct Entry {
    name: String,
    canaries: Vec<String>,
    identity: serde_json::Map<String, serde_json::Value>,
}

fn make_corpus(dir: &Path) -> Vec<Entry> {
    python(&["make", table_json().to_str().expect("utf-8 path"), dir.to_str().expect("utf-8 path")]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest")).expect("json");
    manifest
        .as_array()
        .expect("array")
        .iter()
        .map(|e| Entry {
            name: e["name"].as_str().expect("name").to_string(),
            canaries: e["canaries"].as_array().expect("canaries").iter().map(|c| c.as_str().expect("str").to_string()).collect(),
            identity: e["identity"].as_object().expect("identity").clone(),
        })
        .collect()
}

fn field<'a>(id: &'a cleave_deid::ExtractedIdentity, name: &str) -> Option<&'a str> {
    let s = |o: &'a Option<cleave_deid::Secret>| o.as_ref().map(|s| s.as_str());
    match name {
        "patient_name" => s(&id.patient_name),
        "patient_id" => s(&id.patient_id),
        "issuer_of_patient_id" => s(&id.issuer_of_patient_id),
        "birth_date" => s(&id.birth_date),
        "address" => s(&id.address),
        "telephone_numbers" => s(&id.telephone_numbers),
        "ethnic_group" => s(&id.ethnic_group),
        "mother_birth_name" => s(&id.mother_birth_name),
        "military_rank" => s(&id.military_rank),
        "country_of_residence" => s(&id.country_of_residence),
        "region_of_residence" => s(&id.region_of_residence),
        "birth_name" => s(&id.birth_name),
        "accession_number" => s(&id.accession_number),
        "study" => Some(id.study_instance_uid.as_str()),
        "series" => Some(id.series_instance_uid.as_str()),
        "sop" => Some(id.sop_instance_uid.as_str()),
        other => panic!("test does not know identity field {other}"),
    }
}

#[test]
fn canaries_never_reach_the_deidentified_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let corpus = make_corpus(dir.path());
    assert!(corpus.len() >= 15, "expected at least 15 bundled pydicom files, got {}", corpus.len());
    let uids = common::mapper();
    let mut leaks = Vec::new();
    for entry in &corpus {
        let input = std::fs::read(dir.path().join(format!("{}.in.dcm", entry.name))).expect("input");
        let mut out = Vec::new();
        let outcome = split(input.as_slice(), &mut out, &Options::research(), &uids, "PSEUDO-0001", &Limits::default())
            .unwrap_or_else(|e| panic!("{}: split failed: {e}", entry.name));
        assert_eq!(outcome.bytes_written, out.len() as u64, "{}", entry.name);
        std::fs::write(dir.path().join(format!("{}.out.dcm", entry.name)), &out).expect("write output");

        // Every text canary starts with CANARY and every UID canary with CANARY_UID_ROOT:
        // two searches cover them all; the per-canary search only runs to name a leak.
        if contains(&out, b"CANARY") || contains(&out, CANARY_UID_ROOT) {
            for c in &entry.canaries {
                if contains(&out, c.as_bytes()) {
                    leaks.push(format!("{}: {c}", entry.name));
                }
            }
            leaks.push(format!("{}: a canary prefix survived", entry.name));
        }
        for (key, want) in &entry.identity {
            let want = want.as_str().expect("string");
            if key == "study_date" {
                continue;
            }
            if key == "other_patient_id" {
                assert!(outcome.identity.other_patient_ids.iter().any(|o| o.id.as_str() == want), "{}: other patient id", entry.name);
                continue;
            }
            assert_eq!(field(&outcome.identity, key), Some(want), "{}: identity field {key}", entry.name);
        }
        let s = &outcome.summary;
        for u in [&s.study_instance_uid, &s.series_instance_uid, &s.sop_instance_uid] {
            assert!(u.starts_with("2.25."), "{}: UID not derived", entry.name);
        }
        assert!(contains(&out, b"PSEUDO-0001"), "{}: pseudonym not written as Patient ID", entry.name);
        assert!(!format!("{:?}", outcome.identity).contains("CANARY"), "Debug of identity leaks");
    }
    assert!(leaks.is_empty(), "canaries leaked:\n{}", leaks.join("\n"));

    // pydicom: every output opens, every element parses, pixel data are byte-identical.
    python(&["verify", dir.path().to_str().expect("utf-8 path")]);

    // dcmtk: every output opens without error.
    let dcmdump = Path::new("/usr/bin/dcmdump");
    assert!(dcmdump.exists(), "dcmtk's /usr/bin/dcmdump is missing: apt-get install dcmtk");
    for entry in &corpus {
        let path = dir.path().join(format!("{}.out.dcm", entry.name));
        let run = Command::new(dcmdump).arg("-q").arg(&path).output().expect("run dcmdump");
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success() && !err.contains("E:"), "{}: dcmdump rejected the output: {err}", entry.name);
        let dump = String::from_utf8_lossy(&run.stdout);
        assert!(dump.contains("(0012,0062) CS [YES]"), "{}: dcmdump does not see PatientIdentityRemoved", entry.name);
        assert!(!dump.contains("CANARY"), "{}", entry.name);
    }
}

#[test]
fn care_options_keep_dates_and_characteristics_but_not_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let corpus = make_corpus(dir.path());
    let entry = corpus.iter().find(|e| e.name == "CT_small").expect("CT_small in corpus");
    let input = std::fs::read(dir.path().join("CT_small.in.dcm")).expect("input");
    let mut out = Vec::new();
    let outcome = split(input.as_slice(), &mut out, &Options::care(), &common::mapper(), "PSEUDO-0002", &Limits::default())
        .expect("split");
    let study_date = entry.identity["study_date"].as_str().expect("study date canary");
    assert!(contains(&out, study_date.as_bytes()), "care options must retain the Study Date");
    assert_eq!(outcome.summary.study_date.as_deref(), Some(study_date));
    for (key, v) in &entry.identity {
        // Ethnic Group is a patient characteristic the standard lets care retain.
        if key != "study_date" && key != "ethnic_group" {
            assert!(!contains(&out, v.as_str().expect("str").as_bytes()), "identity attribute {key} kept under care options");
        }
    }
}
