//! DICOM over TLS through the real broker, with dcmtk as the modality: an enrolled device
//! (client certificate + AE title) stores pydicom's CT_small.dcm with storescu; the nurse
//! then finds the study by QIDO and the patient by name, exactly as after STOW-RS. A wrong
//! calling AE title, an unknown certificate and a revoked device are refused at association
//! time; echoscu (C-ECHO) works for an enrolled device.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use common::*;
use rustls::ClientConfig;

/// The shared test configuration plus a DICOM TLS listener on an ephemeral port (a
/// top-level key, so it goes before the config's `[login]` table).
fn config() -> String {
    format!("dicom_listen = \"127.0.0.1:0\"{TEST_CONFIG}")
}

const AE: &str = "CT_DIMSE";

fn dcmtk(tool: &str) -> PathBuf {
    // Full path: pynetdicom installs Python scripts with the same names earlier on PATH.
    let p = PathBuf::from("/usr/bin").join(tool);
    assert!(p.exists(), "{} is missing: install the Debian package dcmtk (apt-get install dcmtk)", p.display());
    p
}

fn pydicom_file(name: &str) -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", &format!("from pydicom.data import get_testdata_file; print(get_testdata_file({name:?}))")])
        .output()
        .expect("python3 is needed: run .ci/run or install python3");
    assert!(
        out.status.success(),
        "pydicom is needed for real DICOM samples: pip install pydicom (or run .ci/run): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Runs a dcmtk tool with TCP_NODELAY=1 (dcmtk reads it) off the async runtime.
async fn run(mut cmd: Command) -> Output {
    cmd.env("TCP_NODELAY", "1");
    tokio::task::spawn_blocking(move || cmd.output().expect("cannot start the dcmtk process")).await.unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

struct Pair {
    cert: PathBuf,
    key: PathBuf,
}

fn dcmtk_cmd(b: &Broker, tool: &str, pair: &Pair, calling: &str) -> Command {
    let mut cmd = Command::new(dcmtk(tool));
    cmd.arg("+tls").arg(&pair.key).arg(&pair.cert).arg("+cf").arg(b.ca_pem());
    let port = b.running.dicom_addr.expect("the broker was started with dicom_listen").port();
    cmd.args(["-to", "10", "-aet", calling, "-aec", "CLEAVE", "127.0.0.1", &port.to_string()]);
    cmd
}

/// A certificate issued by the broker's CA; enrolled as a device with `ae` if given.
fn certificate(b: &Broker, label: &str, ae: Option<&str>) -> Pair {
    let opened = broker::open(b.data(), broker::MasterKeySource::KeyFile).unwrap();
    let issued = broker::issue_client_cert(b.data(), label, 30).unwrap();
    let (cert, key) = broker::write_pair(&b.data().join("test-certs"), label, &issued).unwrap();
    if let Some(ae) = ae {
        opened.accounts.add_device(issued.fingerprint.hex(), label, ae, "test").unwrap();
    }
    Pair { cert, key }
}

async fn studies(b: &Broker, cfg: &Arc<ClientConfig>, token: &str) -> Vec<serde_json::Value> {
    let a = get(b.addr(), cfg.clone(), "/dicomweb/studies", Some(token)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.json().as_array().cloned().unwrap_or_default()
}

fn audit_has(b: &Broker, needle: &str) -> bool {
    // The audit log's files are binary-framed JSON; a byte search is enough to see that an
    // entry with this outcome kind was written.
    fn walk(p: &Path, needle: &[u8]) -> bool {
        std::fs::read_dir(p).unwrap().any(|e| {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, needle)
            } else {
                std::fs::read(&p).map(|d| d.windows(needle.len()).any(|w| w == needle)).unwrap_or(false)
            }
        })
    }
    walk(&b.data().join("audit"), needle.as_bytes())
}

#[tokio::test]
async fn storescu_over_tls_stores_a_ct_that_the_nurse_then_finds() {
    let b = start(&config(), false).await;
    assert!(b.running.dicom_addr.is_some(), "dicom_listen in the config must start the DIMSE listener");
    let device = certificate(&b, "ct-dimse", Some(AE));
    let (nurse_cfg, nurse) = staff_login(&b, "nurse1", broker::Role::Nurse).await;
    assert!(studies(&b, &nurse_cfg, &nurse).await.is_empty());

    // C-ECHO from the enrolled device.
    let out = run(dcmtk_cmd(&b, "echoscu", &device, AE)).await;
    assert!(out.status.success(), "echoscu failed: {}", text(&out));

    // C-STORE of a real CT.
    let ct = pydicom_file("CT_small.dcm");
    let mut cmd = dcmtk_cmd(&b, "storescu", &device, AE);
    cmd.arg(&ct);
    let out = run(cmd).await;
    assert!(out.status.success(), "storescu failed: {}", text(&out));
    assert!(!text(&out).to_lowercase().contains("error"), "storescu reported an error: {}", text(&out));

    // The nurse finds the study under a pseudonym, with nothing identifying.
    let found = studies(&b, &nurse_cfg, &nurse).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let json = serde_json::to_string(&found).unwrap();
    for phi in ["CompressedSamples", "1CT1"] {
        assert!(!json.contains(phi), "QIDO answer holds {phi}");
    }
    let pseudonym = found[0]["00100020"]["Value"][0].as_str().unwrap_or_default().to_owned();
    assert!(pseudonym.starts_with("P1-"), "{pseudonym}");

    // The patient is in the vault, found by name, under the study's pseudonym.
    let r = get(b.addr(), nurse_cfg.clone(), "/api/v1/identity/patients?name=CompressedSamples%5ECT1", Some(&nurse)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let patients = r.json()["patients"].as_array().cloned().unwrap();
    assert_eq!(patients.len(), 1, "{}", r.body);
    let theirs: Vec<&str> = patients[0]["pseudonyms"].as_array().unwrap().iter().filter_map(|p| p.as_str()).collect();
    assert!(theirs.contains(&pseudonym.as_str()), "vault pseudonyms {theirs:?} do not include {pseudonym}");

    // Sending it again is idempotent.
    let mut cmd = dcmtk_cmd(&b, "storescu", &device, AE);
    cmd.arg(&ct);
    let out = run(cmd).await;
    assert!(out.status.success(), "storescu (again) failed: {}", text(&out));
    assert_eq!(studies(&b, &nurse_cfg, &nurse).await.len(), 1);

    // Both C-STOREs are in the audit log as ingests by the device, under the patient's
    // keyed reference, like STOW-RS.
    let (aud_cfg, auditor) = staff_login(&b, "auditor1", broker::Role::Auditor).await;
    let r = get(b.addr(), aud_cfg, &format!("/api/v1/audit/entries?patient={pseudonym}"), Some(&auditor)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ingests: Vec<serde_json::Value> = r.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["op"] == "ingest")
        .cloned()
        .collect();
    assert_eq!(ingests.len(), 2, "{}", r.body);
    for e in &ingests {
        assert_eq!(e["actor"]["kind"], "device", "{e}");
        assert_eq!(e["outcome"]["result"], "allowed", "{e}");
        assert!(e["actor"]["cert_sha256"].as_str().is_some_and(|h| h.len() == 64), "{e}");
    }
}

#[tokio::test]
async fn wrong_ae_title_unknown_certificate_and_revoked_device_are_refused() {
    let b = start(&config(), false).await;
    let device = certificate(&b, "ct-dimse", Some(AE));
    let stranger = certificate(&b, "not-enrolled", None);
    let (nurse_cfg, nurse) = staff_login(&b, "nurse1", broker::Role::Nurse).await;
    let ct = pydicom_file("CT_small.dcm");

    // The right device works (so the refusals below are about what changed).
    let out = run(dcmtk_cmd(&b, "echoscu", &device, AE)).await;
    assert!(out.status.success(), "echoscu failed: {}", text(&out));

    // The enrolled certificate with another calling AE title.
    let mut cmd = dcmtk_cmd(&b, "storescu", &device, "INTRUDER");
    cmd.arg(&ct);
    let out = run(cmd).await;
    assert!(!out.status.success(), "a wrong AE title was accepted: {}", text(&out));
    assert!(text(&out).to_lowercase().contains("calling ae title not recognized"), "{}", text(&out));
    assert!(audit_has(&b, "calling-ae-title"), "the refusal is not in the audit log");

    // A certificate from the broker's CA that is not an enrolled device.
    let out = run(dcmtk_cmd(&b, "echoscu", &stranger, AE)).await;
    assert!(!out.status.success(), "an unenrolled certificate was accepted: {}", text(&out));

    // A revoked device.
    let opened = broker::open(b.data(), broker::MasterKeySource::KeyFile).unwrap();
    opened.accounts.revoke_device("ct-dimse").unwrap();
    let mut cmd = dcmtk_cmd(&b, "storescu", &device, AE);
    cmd.arg(&ct);
    let out = run(cmd).await;
    assert!(!out.status.success(), "a revoked device was accepted: {}", text(&out));
    let out = run(dcmtk_cmd(&b, "echoscu", &device, AE)).await;
    assert!(!out.status.success(), "a revoked device could echo: {}", text(&out));

    // Nothing was stored by any of them.
    assert!(studies(&b, &nurse_cfg, &nurse).await.is_empty());
}
