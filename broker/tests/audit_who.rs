//! "Who accessed this patient?" answered from the audit log through the broker: exactly the
//! accesses this test makes, on the identity side and the clinical side, including a
//! refused one and the auditor's own lookup; none of another patient's. And after a
//! PHI-laden DICOM ingest, no canary of it, no pseudonym and no UID is in the bytes of the
//! audit directory.
mod common;

use std::sync::Arc;

use common::*;
use rustls::ClientConfig;

/// Canaries written into a real DICOM file (pydicom's CT sample) by pydicom itself.
const FAMILY: &str = "CANARYFAMILYQX";
const GIVEN: &str = "CANARYGIVENQX";
const MRN: &str = "CANARY-MRN-5521";
const BIRTH: &str = "19440229";
const ADDRESS: &str = "77 Canaryquill Lane";
const ACCESSION: &str = "CANACC99173";
const STUDY_UID: &str = "1.2.826.0.1.3680043.8.498.42424242";
const PHYSICIAN: &str = "CANARYDOCTORQX";

fn canary_dicom(dir: &std::path::Path) -> Vec<u8> {
    let out = dir.join("canary.dcm");
    let script = format!(
        "import pydicom\nfrom pydicom.data import get_testdata_file\n\
         ds = pydicom.dcmread(get_testdata_file('CT_small.dcm'))\n\
         ds.PatientName = '{FAMILY}^{GIVEN}'\nds.PatientID = '{MRN}'\nds.PatientBirthDate = '{BIRTH}'\n\
         ds.PatientAddress = '{ADDRESS}'\nds.AccessionNumber = '{ACCESSION}'\nds.StudyInstanceUID = '{STUDY_UID}'\n\
         ds.ReferringPhysicianName = '{PHYSICIAN}'\nds.save_as({:?})\n",
        out.to_str().unwrap()
    );
    let o = std::process::Command::new("python3").args(["-c", &script]).output().expect("python3 is needed: run .ci/run");
    assert!(o.status.success(), "pydicom is needed: pip install pydicom (or run .ci/run): {}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(out).unwrap()
}

fn pydicom_sample(name: &str) -> Vec<u8> {
    let o = std::process::Command::new("python3")
        .args(["-c", &format!("from pydicom.data import get_testdata_file; print(get_testdata_file({name:?}))")])
        .output()
        .expect("python3 is needed: run .ci/run");
    assert!(o.status.success(), "pydicom is needed: pip install pydicom (or run .ci/run)");
    std::fs::read(String::from_utf8(o.stdout).unwrap().trim()).unwrap()
}

const BOUNDARY: &str = "cleave-audit-who-boundary";

async fn stow(b: &Broker, cfg: Arc<ClientConfig>, token: &str, dcm: &[u8]) -> Answer {
    let mut body = format!("--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").into_bytes();
    body.extend_from_slice(dcm);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    let auth = format!("Bearer {token}");
    let ct = format!("multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}");
    request(b.addr(), cfg, "POST", "/dicomweb/studies", &[("Authorization", &auth), ("Content-Type", &ct)], &body).await.unwrap()
}

fn pairs(page: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut v: Vec<(String, String, String)> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            // A device is named by its certificate fingerprint; its kind is what is stable.
            let name = e["actor"]["name"].as_str().unwrap();
            let name = if e["actor"]["kind"] == "device" { "(device)" } else { name };
            (
                name.to_owned(),
                e["op"].as_str().unwrap().to_owned(),
                e["outcome"]["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn who_accessed_is_exactly_the_accesses_made_and_the_log_holds_no_phi() {
    let b = start(TEST_CONFIG, false).await;
    let tmp = tempfile::tempdir().unwrap();
    let (dev_cfg, dev) = device_login(&b, "ct-canary").await;
    let (nurse_cfg, nurse) = staff_login(&b, "nurse1", broker::Role::Nurse).await;
    let (doc_cfg, doc) = staff_login(&b, "drcanary", broker::Role::Doctor).await;
    let (desk_cfg, desk) = staff_login(&b, "desk1", broker::Role::Registration).await;
    let (aud_cfg, aud) = staff_login(&b, "auditor1", broker::Role::Auditor).await;

    // Ingest: the canary patient, and another patient (MR sample) as background noise.
    let r = stow(&b, dev_cfg.clone(), &dev, &canary_dicom(tmp.path())).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let new_uids: Vec<String> = r.json()["00081199"]["Value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["00081155"]["Value"][0].as_str().unwrap().to_owned())
        .collect();
    let r = stow(&b, dev_cfg.clone(), &dev, &pydicom_sample("MR_small.dcm")).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Identity side: the nurse searches by name, the doctor reads the record.
    let r = get(b.addr(), nurse_cfg.clone(), &format!("/api/v1/identity/patients?name={FAMILY}%5E{GIVEN}"), Some(&nurse)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let p = r.json()["patients"][0].clone();
    let identity_id = p["identity_id"].as_str().unwrap().to_owned();
    let pseudonym = p["pseudonyms"][0].as_str().unwrap().to_owned();
    let r = get(b.addr(), doc_cfg.clone(), &format!("/api/v1/identity/patients/{identity_id}"), Some(&doc)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Clinical side: the doctor writes a note, the nurse reads the notes; registration is
    // refused the clinical side (a refused attempt is an access attempt too).
    let notes = format!("/api/v1/clinical/patients/{pseudonym}/notes");
    let r = post_json(b.addr(), doc_cfg.clone(), &notes, Some(&doc), &serde_json::json!({"text": "canary note"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get(b.addr(), nurse_cfg.clone(), &notes, Some(&nurse)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(get(b.addr(), desk_cfg.clone(), &notes, Some(&desk)).await.status, 403);
    // Noise: the other patient's notes, read by the same nurse.
    let r = get(b.addr(), nurse_cfg.clone(), "/api/v1/identity/patients?name=CompressedSamples%5EMR1", Some(&nurse)).await;
    let other = r.json()["patients"][0]["pseudonyms"][0].as_str().unwrap().to_owned();
    assert_ne!(other, pseudonym);
    assert_eq!(get(b.addr(), nurse_cfg.clone(), &format!("/api/v1/clinical/patients/{other}/notes"), Some(&nurse)).await.status, 200);

    let r = get(b.addr(), aud_cfg.clone(), &format!("/api/v1/audit/entries?patient={pseudonym}&limit=1000"), Some(&aud)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s = |a: &str, o: &str, r: &str| (a.to_owned(), o.to_owned(), r.to_owned());
    let mut want = vec![
        s("(device)", "ingest", "allowed"),
        s("nurse1", "identity-search", "allowed"),
        s("drcanary", "identity-read", "allowed"),
        s("drcanary", "note-write", "allowed"),
        s("nurse1", "clinical-read", "allowed"),
        s("desk1", "clinical-read", "denied"),
        s("auditor1", "audit-read", "allowed"),
    ];
    want.sort();
    assert_eq!(pairs(&r.json()), want, "who accessed the canary patient");
    // The other patient's accesses are its own.
    let r = get(b.addr(), aud_cfg.clone(), &format!("/api/v1/audit/entries?patient={other}&limit=1000"), Some(&aud)).await;
    let theirs = pairs(&r.json());
    assert!(theirs.contains(&s("nurse1", "clinical-read", "allowed")) && !theirs.iter().any(|(a, _, _)| a == "drcanary"), "{theirs:?}");

    // The bytes of the audit directory: no canary, no pseudonym, no identity id, no UID.
    drop(b.running);
    let mut bytes = Vec::new();
    for f in std::fs::read_dir(b.dir.path().join("audit")).unwrap() {
        let p = f.unwrap().path();
        if p.is_file() {
            bytes.extend(std::fs::read(p).unwrap());
        }
    }
    assert!(bytes.len() > 4000, "the scan reads a real log");
    let mut canaries: Vec<String> =
        [FAMILY, GIVEN, MRN, BIRTH, ADDRESS, ACCESSION, STUDY_UID, PHYSICIAN, "canary note", "CompressedSamples"].map(str::to_owned).to_vec();
    canaries.extend([pseudonym.clone(), other.clone(), identity_id.clone(), dev.clone(), nurse.clone()]);
    canaries.extend(new_uids);
    for c in &canaries {
        assert!(!bytes.windows(c.len()).any(|w| w == c.as_bytes()), "the audit directory holds a canary ({} bytes long)", c.len());
    }
    // The check can fail: the account names the log must hold are found.
    assert!(bytes.windows(8).any(|w| w == b"drcanary"));
}
