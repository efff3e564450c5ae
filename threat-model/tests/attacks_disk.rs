//! T1: a thief copies the whole data directory (no master key passphrase prompt needed:
//! they have the files) and searches every byte for the identities put in through the
//! real APIs. Canaries are searched as UTF-8 and UTF-16LE, as given, upper and lower case.
//!
//! Identities go in through the identity vault's library API, opened on the broker's own
//! data directory and keyring, because the broker's identity endpoints are not wired yet.
mod common;

use std::path::Path;

use common::*;
use identity_vault::{Demographics, Vault, VaultKeys};

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

fn canary_patient(n: usize) -> Demographics {
    let mut d = Demographics::default();
    d.family_name = Some(format!("{}{}", CANARIES[0], if n == 0 { String::new() } else { n.to_string() }));
    d.given_name = Some(CANARIES[1].into());
    d.birth_date = Some(CANARIES[2].into());
    d.sex = Some("F".into());
    d.address = Some(CANARIES[3].into());
    d.phones = vec![CANARIES[4].into()];
    d.national_id = Some(CANARIES[5].into());
    d.issuer = Some("HOSP-A".into());
    d.patient_id = Some(format!("{}{}", CANARIES[6], if n == 0 { String::new() } else { format!("-{n}") }));
    d.free_text = Some(CANARIES[7].into());
    d
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
    let b = start(TEST_CONFIG, false).await;
    // Some real traffic first, so the broker's own files are in their working state.
    let _nurse = person(&b, "nurse", broker::Role::Nurse).await;
    let keyring = broker::open(b.data(), broker::MasterKeySource::KeyFile).unwrap().keyring;
    let vault_path = b.data().join("identity/vault.sqlite");
    let mut vault = Vault::open(&vault_path, VaultKeys::unwrap(&keyring).unwrap()).unwrap();
    let mut ids = Vec::new();
    for n in 0..50 {
        let id = vault.create(&canary_patient(n)).unwrap();
        vault.pseudonym(&id).unwrap();
        ids.push(id);
    }
    // An update leaves old versions behind in SQLite's free pages and WAL unless sealed.
    let mut moved = canary_patient(0);
    moved.address = Some(format!("{} flat 2", CANARIES[3]));
    vault.update(&ids[0], &moved).unwrap();
    // The vault really holds the canaries (this is what the thief is after).
    assert_eq!(vault.get(&ids[0]).unwrap().demographics.family_name.as_deref(), Some(CANARIES[0]));

    // Scan while the vault is open (the -wal and -shm exist), then after it closed.
    let files = files_under(b.data());
    assert!(files.iter().any(|f| f.to_string_lossy().ends_with("vault.sqlite-wal")), "expected a WAL to scan: {files:?}");
    let open_hits = scan_dir(b.data());
    drop(vault);
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
