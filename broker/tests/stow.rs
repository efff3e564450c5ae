//! STOW-RS through the real broker over mutual TLS, the way a modality sends: real DICOM
//! files (pydicom's bundled CT and MR samples) in a multipart/related body. Each instance
//! is split: its patient lands in the identity vault (found by name), a de-identified
//! object in the clinical store (found by QIDO under the pseudonym), nothing identifying
//! in clear on disk. Re-sending is idempotent; a malformed or non-DICOM part is refused
//! with nothing stored.
mod common;

use std::sync::Arc;

use common::*;
use rustls::ClientConfig;

const BOUNDARY: &str = "cleave-test-boundary-7d1f";

fn multipart(parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (ct, bytes) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Type: {ct}\r\n\r\n").as_bytes());
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn stow(b: &Broker, cfg: Arc<ClientConfig>, token: &str, parts: &[(&str, &[u8])]) -> Answer {
    let auth = format!("Bearer {token}");
    let ct = format!("multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}");
    request(b.addr(), cfg, "POST", "/dicomweb/studies", &[("Authorization", &auth), ("Content-Type", &ct)], &multipart(parts))
        .await
        .unwrap()
}

/// The patient ids the test files are given. pydicom's samples carry 4-byte ids (`1CT1`,
/// `4MR1`), and the de-identified index makes those bytes on its own: a `series_study`
/// index record is a study id (hex), the modality and a series id (hex), so a study id
/// ending in `1` next to `CT` and a series id starting with `1` reads `1CT1`, about one
/// run in 256 (captured once: `...72693f1CT10b838...`). Sixteen-byte canaries cannot be
/// made that way.
const CT_ID: &str = "PIDCT1CANARY7f3a";
const MR_ID: &str = "PIDMR1CANARY2b9d";

/// `name` from pydicom's samples with `id` as its Patient ID and Study ID (which the CT
/// sample also set to its patient id).
fn sample_with_id(name: &str, id: &str, dir: &std::path::Path) -> Vec<u8> {
    let out = dir.join(name);
    let script = "import pydicom, sys\nds = pydicom.dcmread(sys.argv[1])\nds.PatientID = sys.argv[3]\nds.StudyID = sys.argv[3]\nds.save_as(sys.argv[2])";
    let done = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(pydicom_file(name))
        .arg(&out)
        .arg(id)
        .status()
        .expect("python3 with pydicom (run .ci/run)");
    assert!(done.success(), "pydicom could not rewrite {name}");
    std::fs::read(out).unwrap()
}

fn studies(a: &Answer) -> Vec<serde_json::Value> {
    assert_eq!(a.status, 200, "{}", a.body);
    a.json().as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_modality_stores_real_dicom_and_it_is_split_between_the_stores() {
    let b = start(TEST_CONFIG, false).await;
    let (dev_cfg, dev) = device_login(&b, "ct-scanner").await;
    let (nurse_cfg, nurse) = staff_login(&b, "nurse1", broker::Role::Nurse).await;
    let files = tempfile::tempdir().unwrap();
    let ct = sample_with_id("CT_small.dcm", CT_ID, files.path());
    let mr = sample_with_id("MR_small.dcm", MR_ID, files.path());
    for (file, id) in [(&ct, CT_ID), (&mr, MR_ID)] {
        assert!(file.windows(id.len()).any(|w| w == id.as_bytes()), "the rewritten sample holds {id}: the scan below looks for it");
    }

    // Two real instances in one request.
    let r = stow(&b, dev_cfg.clone(), &dev, &[("application/dicom", &ct), ("application/dicom", &mr)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type").as_deref(), Some("application/dicom+json"));
    let stored = r.json()["00081199"]["Value"].as_array().cloned().unwrap();
    assert_eq!(stored.len(), 2, "{}", r.body);
    for item in &stored {
        let uid = item["00081155"]["Value"][0].as_str().unwrap();
        assert!(uid.starts_with("2.25."), "SOP instance UIDs are replaced by keyed ones");
    }

    // The nurse finds both studies by QIDO, under pseudonyms, with nothing identifying.
    let found = studies(&get(b.addr(), nurse_cfg.clone(), "/dicomweb/studies", Some(&nurse)).await);
    assert_eq!(found.len(), 2, "{found:?}");
    let text = serde_json::to_string(&found).unwrap();
    for phi in ["CompressedSamples", CT_ID, MR_ID] {
        assert!(!text.contains(phi), "QIDO answer holds {phi}");
    }
    let pseudonyms: Vec<String> =
        found.iter().map(|s| s["00100020"]["Value"][0].as_str().unwrap_or_default().to_owned()).collect();
    assert!(pseudonyms.iter().all(|p| p.starts_with("P1-")), "{pseudonyms:?}");

    // The CT's patient is in the vault, found by name, and its pseudonym is the study's.
    let r = get(b.addr(), nurse_cfg.clone(), "/api/v1/identity/patients?name=CompressedSamples%5ECT1", Some(&nurse)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let patients = r.json()["patients"].as_array().cloned().unwrap();
    assert_eq!(patients.len(), 1, "{}", r.body);
    let theirs: Vec<String> =
        patients[0]["pseudonyms"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_owned()).collect();
    assert!(theirs.iter().any(|p| pseudonyms.contains(p)), "vault pseudonym {theirs:?} not among {pseudonyms:?}");

    // Sending the CT again is idempotent.
    let r = stow(&b, dev_cfg.clone(), &dev, &[("application/dicom", &ct)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(studies(&get(b.addr(), nurse_cfg.clone(), "/dicomweb/studies", Some(&nurse)).await).len(), 2);

    // A truncated instance and a non-DICOM part: refused with the standard's reason, nothing stored.
    let truncated = &ct[..ct.len() - 1000];
    let r = stow(&b, dev_cfg.clone(), &dev, &[("application/dicom", truncated), ("text/plain", b"hello")]).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let failed = r.json()["00081198"]["Value"].as_array().cloned().unwrap();
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().all(|f| f["00081197"]["Value"][0] == 0xC000), "{}", r.body);
    assert!(!r.body.contains("CompressedSamples"), "error answers carry no PHI");
    assert_eq!(studies(&get(b.addr(), nurse_cfg.clone(), "/dicomweb/studies", Some(&nurse)).await).len(), 2);
    // A truncated copy of a new patient's file must not leave that patient in the vault.
    let mut other = mr.clone();
    let at = other.windows(MR_ID.len()).position(|w| w == MR_ID.as_bytes()).expect("the MR holds its patient id");
    other[at..at + MR_ID.len()].copy_from_slice(b"PIDZZ9CANARY0000");
    let r = stow(&b, dev_cfg.clone(), &dev, &[("application/dicom", &other[..other.len() - 500])]).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = get(b.addr(), nurse_cfg.clone(), "/api/v1/identity/patients?patient_id=PIDZZ9CANARY0000", Some(&nurse)).await;
    assert_eq!(r.json()["patients"].as_array().map(Vec::len), Some(0), "{}", r.body);

    // Not a multipart body at all.
    let auth = format!("Bearer {dev}");
    let r = request(b.addr(), dev_cfg.clone(), "POST", "/dicomweb/studies", &[("Authorization", &auth), ("Content-Type", "application/dicom")], &ct)
        .await
        .unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (415, "unsupported_media_type"));

    // A modality appends but never reads, and a nurse cannot append.
    assert_eq!(get(b.addr(), dev_cfg.clone(), "/dicomweb/studies", Some(&dev)).await.status, 403);
    assert_eq!(stow(&b, nurse_cfg.clone(), &nurse, &[("application/dicom", &ct)]).await.status, 403);

    // Nothing identifying in clear anywhere in the data directory.
    for f in files_under(b.data()) {
        let name = f.to_string_lossy();
        if name.contains("bootstrap") || name.contains("test-certs") {
            continue;
        }
        let bytes = std::fs::read(&f).unwrap();
        for phi in [&b"CompressedSamples"[..], CT_ID.as_bytes(), MR_ID.as_bytes()] {
            assert!(!bytes.windows(phi.len()).any(|w| w == phi), "{} holds {}", name, String::from_utf8_lossy(phi));
        }
    }
}
