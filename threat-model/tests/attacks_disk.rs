//! T1: a thief copies the whole data directory (no master key passphrase prompt needed:
//! they have the files) and searches every byte for the identities put in through the
//! real APIs. Canaries are searched as UTF-8 and UTF-16LE, as given, upper and lower case.
//!
//! Everything goes in the way the hospital puts it in: identities registered and updated
//! over the broker's REST API, and a real CT whose header carries the same canaries sent
//! by a modality over STOW-RS (its identity split into the vault, the rest de-identified
//! into the clinical store), then read back by a nurse.
mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// Values no file would hold by chance.
const CANARIES: &[&str] = &[
    "Zqxwvortex",            // family name
    "Quillamina",            // given name
    "19230817",              // birth date
    "17 Quillfeather Lane",  // address
    "+44 7700 900123",       // phone
    "QZ998877A",             // national id
    "MRN-CANARY-55123",      // patient id
    "allergic to zorblatt",  // free text
];

fn canary_patient(n: usize) -> serde_json::Value {
    serde_json::json!({
        "family_name": format!("{}{}", CANARIES[0], if n == 0 { String::new() } else { n.to_string() }),
        "given_name": CANARIES[1],
        "birth_date": CANARIES[2],
        "sex": "F",
        "address": CANARIES[3],
        "phones": [CANARIES[4]],
        "national_id": CANARIES[5],
        "issuer": "HOSP-A",
        "patient_id": format!("{}{}", CANARIES[6], if n == 0 { String::new() } else { format!("-{n}") }),
        "free_text": CANARIES[7],
    })
}

/// pydicom's CT_small with the canaries in its patient module and a study description.
fn canary_ct() -> Vec<u8> {
    let out = tempfile::NamedTempFile::new().unwrap();
    let code = format!(
        "import pydicom; d = pydicom.dcmread({src:?}); d.PatientName = '{fam}^{given}'; d.PatientBirthDate = '{birth}'; \
         d.PatientAddress = '{addr}'; d.PatientTelephoneNumbers = '{phone}'; d.PatientID = '{pid}-CT'; \
         d.OtherPatientIDs = '{nid}'; d.PatientComments = '{text}'; d.save_as({out:?})",
        src = pydicom_file("CT_small.dcm").to_str().unwrap(),
        fam = CANARIES[0],
        given = CANARIES[1],
        birth = CANARIES[2],
        addr = CANARIES[3],
        phone = CANARIES[4],
        pid = CANARIES[6],
        nid = CANARIES[5],
        text = CANARIES[7],
        out = out.path().to_str().unwrap(),
    );
    let r = std::process::Command::new("python3").args(["-c", &code]).output().expect("python3 with pydicom: run .ci/run");
    assert!(r.status.success(), "pydicom is needed: {}", String::from_utf8_lossy(&r.stderr));
    std::fs::read(out.path()).unwrap()
}

/// Scan every file under `dir`; return (file, canary) hits.
fn scan_dir(dir: &Path) -> Vec<(String, &'static str)> {
    let needles: Vec<_> = CANARIES.iter().map(|c| variants(c)).collect();
    let mut hits = Vec::new();
    for f in files_under(dir) {
        let bytes = std::fs::read(&f).unwrap();
        for i in scan_bytes(&bytes, &needles) {
            hits.push((f.strip_prefix(dir).unwrap().display().to_string(), CANARIES[i]));
        }
    }
    hits
}

#[tokio::test]
async fn stolen_data_directory_holds_no_canary() {
    // Stores close 2 s after their last use, so the scan sees them open and closed.
    let config = TEST_CONFIG.replace("max_body_bytes = 4096\n", "max_body_bytes = 1048576\nstore_idle_secs = 2\n");
    assert!(config.contains("store_idle_secs = 2"), "TEST_CONFIG changed shape");
    let b = start(&config, false).await;
    let desk = person(&b, "desk", broker::Role::Registration).await;
    let nurse = person(&b, "nurse", broker::Role::Nurse).await;
    let modality = device(&b, "ct-disk").await;
    let mut ids = Vec::new();
    for n in 0..50 {
        let r = post_json(b.addr(), desk.cfg.clone(), "/api/v1/identity/patients", Some(&desk.token), &canary_patient(n)).await;
        assert!(r.status == 200 || r.status == 201, "registration: {} {}", r.status, r.body);
        ids.push(r.json()["identity_id"].as_str().unwrap().to_owned());
    }
    // An update leaves old versions behind in SQLite's free pages and WAL unless sealed.
    let patch = serde_json::json!({"address": format!("{} flat 2", CANARIES[3])});
    let r = request(
        b.addr(),
        desk.cfg.clone(),
        "PATCH",
        &format!("/api/v1/identity/patients/{}", ids[0]),
        &[("Content-Type", "application/json"), ("Authorization", &format!("Bearer {}", desk.token))],
        patch.to_string().as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "update: {}", r.body);
    // A modality sends a CT carrying the same values in its header.
    let boundary = "disk-attack-boundary-41";
    let mut body = format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").into_bytes();
    body.extend_from_slice(&canary_ct());
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/related; type=\"application/dicom\"; boundary={boundary}");
    let auth = format!("Bearer {}", modality.token);
    let r = request(b.addr(), modality.cfg.clone(), "POST", "/dicomweb/studies", &[("Content-Type", &ct), ("Authorization", &auth)], &body).await.unwrap();
    assert_eq!(r.status, 200, "STOW-RS: {}", r.body);
    // The broker really holds the canaries (this is what the thief is after): the nurse
    // reads them back, from the registration and from the CT's header.
    let r = get(b.addr(), nurse.cfg.clone(), &format!("/api/v1/identity/patients?family={}", CANARIES[0]), Some(&nurse.token)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(CANARIES[2]), "the vault answers with the canaries: {}", r.body);
    let r = get(b.addr(), nurse.cfg.clone(), &format!("/api/v1/identity/patients?patient_id={}-CT", CANARIES[6]), Some(&nurse.token)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(CANARIES[0]), "the CT's patient is in the vault: {}", r.body);

    // Scan while the vault is open (the -wal and -shm exist), then after it closed.
    let files = files_under(b.data());
    assert!(files.iter().any(|f| f.to_string_lossy().ends_with("vault.db-wal")), "expected a WAL to scan: {files:?}");
    let open_hits = scan_dir(b.data());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let closed_hits = scan_dir(b.data());

    // The scanner is not blind: a copy of the directory with the same values in a plain
    // SQLite table, and in files as UTF-16LE and upper case, is caught on every canary.
    let weak = tempfile::tempdir().unwrap();
    for f in files_under(b.data()) {
        let rel = f.strip_prefix(b.data()).unwrap();
        std::fs::create_dir_all(weak.path().join(rel).parent().unwrap()).unwrap();
        std::fs::copy(&f, weak.path().join(rel)).unwrap();
    }
    let plain = rusqlite::Connection::open(weak.path().join("identity/unsealed.sqlite")).unwrap();
    plain.execute_batch("CREATE TABLE p (family, given, birth, address, phone, nid, pid)").unwrap();
    plain.execute("INSERT INTO p VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)", rusqlite::params![CANARIES[0], CANARIES[1], CANARIES[2], CANARIES[3], CANARIES[4], CANARIES[5], CANARIES[6]]).unwrap();
    drop(plain);
    let utf16: Vec<u8> = CANARIES[7].encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
    std::fs::write(weak.path().join("clinical-note.bin"), [b"\x00\x01".as_slice(), &utf16].concat()).unwrap();
    let weak_hits = scan_dir(weak.path());
    for c in CANARIES {
        assert!(weak_hits.iter().any(|(_, h)| h == c), "the scanner missed planted canary {c:?}: {weak_hits:?}");
    }
    assert!(scan_dir(weak.path()).iter().all(|(f, _)| f == "identity/unsealed.sqlite" || f == "clinical-note.bin"));

    assert!(open_hits.is_empty(), "canaries readable in the stolen directory (vault open): {open_hits:?}");
    assert!(closed_hits.is_empty(), "canaries readable in the stolen directory (vault closed): {closed_hits:?}");
}
