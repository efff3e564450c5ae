//! The audit log through the broker: every request leaves a signed, verifiable entry with
//! no PHI; auditors list, filter and prove entries over real mutual TLS, and each of their
//! reads is itself recorded.
mod common;


use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use cleave_audit::{merkle, CheckpointVerifier};
use common::*;

const PATIENT: &str = "P1-00112233445566778899aabbccddeeff";

fn b64_32(v: &serde_json::Value) -> [u8; 32] {
    B64.decode(v.as_str().unwrap()).unwrap().try_into().unwrap()
}

#[tokio::test]
async fn requests_leave_verifiable_entries_without_phi_and_auditors_can_prove_them() {
    let b = start(TEST_CONFIG, false).await;
    let (nurse_cfg, nurse) = staff_login(&b, "nurse1", broker::Role::Nurse).await;
    let (aud_cfg, auditor) = staff_login(&b, "auditor1", broker::Role::Auditor).await;

    // A failed login whose "username" is PHI typed into the wrong field.
    let phi_name = "Jane Q Patient 19700101";
    let r = post_json(b.addr(), nurse_cfg.clone(), "/api/v1/login", None, &serde_json::json!({"username": phi_name, "password": "x", "totp": "000000"})).await;
    assert_eq!(r.status, 401);
    // An allowed read of one patient, and a denied audit read.
    let notes = format!("/api/v1/clinical/patients/{PATIENT}/notes");
    let r = get(b.addr(), nurse_cfg.clone(), &notes, Some(&nurse)).await;
    assert_ne!(r.status, 403, "{}", r.body);
    assert_eq!(get(b.addr(), nurse_cfg.clone(), "/api/v1/audit/checkpoint", Some(&nurse)).await.status, 403);

    // The key, pinned by the auditor, and a first checkpoint.
    let k = get(b.addr(), aud_cfg.clone(), "/api/v1/audit/public-key", Some(&auditor)).await;
    assert_eq!(k.status, 200, "{}", k.body);
    let kj = k.json();
    let verifier = CheckpointVerifier::from_vkey(kj["verifier_key"].as_str().unwrap()).unwrap();
    assert_eq!(verifier.public_key(), b64_32(&kj["public_key"]));
    assert_eq!(kj["name"], broker::AUDIT_ORIGIN);
    let c1 = get(b.addr(), aud_cfg.clone(), "/api/v1/audit/checkpoint", Some(&auditor)).await;
    assert_eq!(c1.status, 200, "{}", c1.body);
    assert!(c1.header("content-type").unwrap().starts_with("text/plain"));
    let cp1 = verifier.verify(&c1.body).expect("the checkpoint is signed by the published key");

    // Who touched this patient: the nurse's read, found by keyed reference of the pseudonym.
    let r = get(b.addr(), aud_cfg.clone(), &format!("/api/v1/audit/entries?patient={PATIENT}"), Some(&auditor)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let page = r.json();
    let ops: Vec<(String, String)> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["actor"]["name"].as_str().unwrap().to_owned(), e["op"].as_str().unwrap().to_owned()))
        .collect();
    assert!(ops.contains(&("nurse1".into(), "clinical-read".into())), "{ops:?}");
    assert!(ops.contains(&("auditor1".into(), "audit-read".into())), "the lookup itself is recorded: {ops:?}");
    assert_eq!(ops.len(), 2, "only entries about this patient: {ops:?}");

    // Logins, failed logins, denials.
    let r = get(b.addr(), aud_cfg.clone(), "/api/v1/audit/entries?operation=login-failed", Some(&auditor)).await;
    let failed = r.json()["entries"].as_array().unwrap().clone();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["actor"]["name"], "unknown-account");
    let r = get(b.addr(), aud_cfg.clone(), "/api/v1/audit/entries?outcome=denied&account=nurse1", Some(&auditor)).await;
    let denied = r.json()["entries"].as_array().unwrap().clone();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["op"], "audit-read");
    assert!(denied[0]["actor"]["cert_sha256"].as_str().is_some_and(|h| h.len() == 64));
    let r = get(b.addr(), aud_cfg.clone(), "/api/v1/audit/entries?operation=login", Some(&auditor)).await;
    assert_eq!(r.json()["entries"].as_array().unwrap().len(), 2);

    // Malformed filters: 400 in the one error format, after being recorded.
    let r = get(b.addr(), aud_cfg.clone(), "/api/v1/audit/entries?operation=peek", Some(&auditor)).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_request"));
    let r = get(b.addr(), aud_cfg.clone(), "/api/v1/audit/entries?limit=x", Some(&auditor)).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_request"));

    // Inclusion of the nurse's read in a new checkpoint, and consistency with the first.
    let c2 = get(b.addr(), aud_cfg.clone(), "/api/v1/audit/checkpoint", Some(&auditor)).await;
    let cp2 = verifier.verify(&c2.body).unwrap();
    assert!(cp2.size > cp1.size);
    let r = get(b.addr(), aud_cfg.clone(), "/api/v1/audit/entries?operation=clinical-read", Some(&auditor)).await;
    let read = r.json()["entries"][0].clone();
    let index = read["index"].as_u64().unwrap();
    let leaf = merkle::leaf_hash(&B64.decode(read["canonical"].as_str().unwrap()).unwrap());
    let proof_of = |j: serde_json::Value| -> Vec<[u8; 32]> { j["hashes"].as_array().unwrap().iter().map(b64_32).collect() };
    let r = get(b.addr(), aud_cfg.clone(), &format!("/api/v1/audit/proofs/inclusion?index={index}&size={}", cp2.size), Some(&auditor)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let proof = proof_of(r.json());
    assert!(merkle::verify_inclusion(&leaf, index, cp2.size, &proof, &cp2.root));
    let mut forged = leaf;
    forged[0] ^= 1;
    assert!(!merkle::verify_inclusion(&forged, index, cp2.size, &proof, &cp2.root), "the proof must bind the entry");
    let r = get(b.addr(), aud_cfg.clone(), &format!("/api/v1/audit/proofs/consistency?from={}&to={}", cp1.size, cp2.size), Some(&auditor)).await;
    assert!(merkle::verify_consistency(cp1.size, cp2.size, &cp1.root, &cp2.root, &proof_of(r.json())));
    let r = get(b.addr(), aud_cfg.clone(), "/api/v1/audit/proofs/inclusion?index=5&size=99999", Some(&auditor)).await;
    assert_eq!(r.status, 400);

    // Neither the pseudonym, the PHI-looking username nor any token reaches the log files.
    drop(b.running);
    let dir = b.dir.path().join("audit");
    let mut all = Vec::new();
    for f in std::fs::read_dir(&dir).unwrap() {
        all.extend(std::fs::read(f.unwrap().path()).unwrap());
    }
    let text = String::from_utf8_lossy(&all);
    for secret in [PATIENT, phi_name, &nurse, &auditor] {
        assert!(!text.contains(secret), "the audit log holds something it must not");
    }
    assert!(text.contains("nurse1"), "the scan reads the entries");

    // The whole directory verifies against the pinned key, from the checkpoint seen.
    let report = cleave_audit::verify_dir(&dir, &verifier, Some(&c2.body)).expect("the log verifies");
    assert!(report.entries >= cp2.size);
}
