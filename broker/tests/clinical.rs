//! Clinical REST through the broker over real mutual TLS: doctors write notes and
//! observations under a pseudonym, nurses read them back in the patient summary, roles
//! without clinical read are refused, and nothing written is stored in clear.
mod common;


use common::*;

#[tokio::test]
async fn doctors_write_notes_and_observations_nurses_read_them_and_nothing_is_in_clear() {
    let b = start(TEST_CONFIG, false).await;
    let (reg_cfg, reg) = staff_login(&b, "registrar", broker::Role::Registration).await;
    let (doc_cfg, doc) = staff_login(&b, "doctor1", broker::Role::Doctor).await;
    let (nurse_cfg, nurse) = staff_login(&b, "nurse1", broker::Role::Nurse).await;
    let (res_cfg, researcher) = staff_login(&b, "researcher1", broker::Role::Researcher).await;
    let r = post_json(b.addr(), reg_cfg, "/api/v1/identity/patients", Some(&reg), &serde_json::json!({"family_name": "Quill", "birth_date": "19500101"})).await;
    let p = r.json()["pseudonym"].as_str().unwrap().to_owned();

    let base = format!("/api/v1/clinical/patients/{p}");
    let note_text = "Complains of xylophonic tinnitus since Tuesday";
    let r = post_json(b.addr(), doc_cfg.clone(), &format!("{base}/notes"), Some(&doc), &serde_json::json!({"text": note_text})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let note_id = r.json()["note_id"].as_str().unwrap().to_owned();
    for (value, unit) in [(serde_json::json!(120), Some("mmHg")), (serde_json::json!({"value": 71.5, "unit": "kg"}), None), (serde_json::json!({"date": "2026-01-02"}), None), (serde_json::json!(true), None)] {
        let mut body = serde_json::json!({"code": "8480-6", "value": value});
        if let Some(u) = unit {
            body["unit"] = serde_json::json!(u);
        }
        let r = post_json(b.addr(), doc_cfg.clone(), &format!("{base}/observations"), Some(&doc), &body).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.json()["observation_id"].is_string());
    }
    let r = post_json(b.addr(), doc_cfg.clone(), &format!("{base}/observations"), Some(&doc), &serde_json::json!({"code": "x", "value": [1]})).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_request"));
    let r = post_json(b.addr(), doc_cfg.clone(), &format!("{base}/notes"), Some(&doc), &serde_json::json!({"txt": "typo"})).await;
    assert_eq!(r.status, 400);
    // A nurse reads but does not write.
    let r = post_json(b.addr(), nurse_cfg.clone(), &format!("{base}/notes"), Some(&nurse), &serde_json::json!({"text": "x"})).await;
    assert_eq!(r.status, 403);

    let r = get(b.addr(), nurse_cfg.clone(), &base, Some(&nurse)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert_eq!(j["pseudonym"], p.as_str());
    assert_eq!(j["notes"][0]["note_id"], note_id.as_str());
    assert_eq!(j["notes"][0]["text"], note_text);
    assert_eq!(j["notes"][0]["author"], "doctor1");
    let obs = j["observations"].as_array().unwrap();
    assert_eq!(obs.len(), 4);
    assert!(obs.iter().any(|o| o["value"] == serde_json::json!({"value": 120.0, "unit": "mmHg"})), "{obs:?}");
    assert!(obs.iter().any(|o| o["value"] == serde_json::json!({"date": "2026-01-02"})), "{obs:?}");
    let r = get(b.addr(), nurse_cfg.clone(), &format!("{base}/observations"), Some(&nurse)).await;
    assert_eq!(r.json()["observations"].as_array().unwrap().len(), 4);
    let r = get(b.addr(), nurse_cfg.clone(), &format!("{base}/notes"), Some(&nurse)).await;
    assert_eq!(r.json()["notes"][0]["text"], note_text);

    // QIDO-RS: no study stored yet for this patient; malformed keys are refused.
    let r = get(b.addr(), nurse_cfg.clone(), &format!("/dicomweb/studies?PatientID={p}&StudyDate=20200101-"), Some(&nurse)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type").as_deref(), Some("application/dicom+json"));
    assert_eq!(r.json(), serde_json::json!([]));
    let r = get(b.addr(), nurse_cfg.clone(), "/dicomweb/studies?StudyDate=2026", Some(&nurse)).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_request"));
    assert_eq!(get(b.addr(), nurse_cfg.clone(), "/dicomweb/studies?PatientID=not-a-pseudonym", Some(&nurse)).await.status, 404);

    // Unknown patients and studies; researchers have no clinical read.
    let r = get(b.addr(), nurse_cfg.clone(), "/api/v1/clinical/patients/P1-00000000000000000000000000000000", Some(&nurse)).await;
    assert_eq!(r.status, 404);
    assert_eq!(get(b.addr(), nurse_cfg.clone(), "/api/v1/clinical/studies/1.2.3.4", Some(&nurse)).await.status, 404);
    assert_eq!(get(b.addr(), res_cfg, &base, Some(&researcher)).await.status, 403);

    drop(b.running);
    let mut disk = Vec::new();
    let mut stack = vec![b.dir.path().join("clinical")];
    while let Some(d) = stack.pop() {
        for f in std::fs::read_dir(d).unwrap() {
            let f = f.unwrap().path();
            if f.is_dir() { stack.push(f) } else { disk.extend(std::fs::read(f).unwrap()) }
        }
    }
    assert!(!disk.is_empty());
    assert!(!String::from_utf8_lossy(&disk).contains("xylophonic"), "the note is sealed on disk");
}
