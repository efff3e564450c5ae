//! Identity REST through the broker over real mutual TLS: registration registers and
//! corrects patients, nurses find them through the vault's blind indexes, modalities and
//! researchers cannot, and each access is in the audit log under the patient's keyed
//! reference, while the vault file holds no name in clear.
mod common;

use std::sync::Arc;

use common::*;
use rustls::ClientConfig;

async fn patch(b: &Broker, cfg: Arc<ClientConfig>, path: &str, token: &str, body: &serde_json::Value) -> Answer {
    let auth = format!("Bearer {token}");
    request(b.addr(), cfg, "PATCH", path, &[("Authorization", &auth), ("Content-Type", "application/json")], body.to_string().as_bytes())
        .await
        .unwrap()
}

#[tokio::test]
async fn registration_registers_nurses_find_and_every_access_is_audited_by_patient() {
    let b = start(TEST_CONFIG, false).await;
    let (reg_cfg, reg) = staff_login(&b, "registrar", broker::Role::Registration).await;
    let (nurse_cfg, nurse) = staff_login(&b, "nurse1", broker::Role::Nurse).await;
    let (res_cfg, researcher) = staff_login(&b, "researcher1", broker::Role::Researcher).await;
    let (aud_cfg, auditor) = staff_login(&b, "auditor1", broker::Role::Auditor).await;

    let jane = serde_json::json!({
        "family_name": "Zyxwvutson", "given_name": "Janeqx", "birth_date": "19700304", "sex": "F",
        "issuer": "HOSP", "patient_id": "MRN-4471", "address": "12 Quiet Lane", "phones": ["+44 20 7946 0001"]
    });
    let r = post_json(b.addr(), reg_cfg.clone(), "/api/v1/identity/patients", Some(&reg), &jane).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.json()["identity_id"].as_str().unwrap().to_owned();
    let pseudonym = r.json()["pseudonym"].as_str().unwrap().to_owned();
    assert!(pseudonym.starts_with("P1-"), "{pseudonym}");
    let other = serde_json::json!({"family_name": "Abelard", "given_name": "Tom", "birth_date": "19811111", "sex": "M"});
    assert_eq!(post_json(b.addr(), reg_cfg.clone(), "/api/v1/identity/patients", Some(&reg), &other).await.status, 200);

    // Search through blind indexes, by several criteria; accents and case do not matter.
    for q in ["family=zyxwvutson", "name=Zyxwvutson%5EJaneqx", "birth_date=19700304", "patient_id=MRN-4471&issuer=HOSP", "family=ZYXWVUTSON&given=janeqx"] {
        let r = get(b.addr(), nurse_cfg.clone(), &format!("/api/v1/identity/patients?{q}"), Some(&nurse)).await;
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        let found = r.json()["patients"].as_array().unwrap().clone();
        assert_eq!(found.len(), 1, "{q}: {found:?}");
        assert_eq!(found[0]["identity_id"], id.as_str());
        assert_eq!(found[0]["pseudonyms"][0], pseudonym.as_str());
        assert_eq!(found[0]["patient_ids"][0]["id"], "MRN-4471");
        assert!(found[0].get("address").is_none(), "search results carry no address");
    }
    let r = get(b.addr(), nurse_cfg.clone(), "/api/v1/identity/patients?family=Nobody", Some(&nurse)).await;
    assert_eq!(r.json()["patients"].as_array().unwrap().len(), 0);
    let r = get(b.addr(), nurse_cfg.clone(), "/api/v1/identity/patients", Some(&nurse)).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_request"));
    let r = get(b.addr(), nurse_cfg.clone(), "/api/v1/identity/patients?surname=x", Some(&nurse)).await;
    assert_eq!(r.status, 400);

    // Read one, with every field; correct it; unknown fields and ids fail.
    let path = format!("/api/v1/identity/patients/{id}");
    let r = get(b.addr(), nurse_cfg.clone(), &path, Some(&nurse)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["address"], "12 Quiet Lane");
    assert_eq!(r.json()["phones"][0], "+44 20 7946 0001");
    let r = patch(&b, reg_cfg.clone(), &path, &reg, &serde_json::json!({"address": "3 New Road"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["address"], "3 New Road");
    assert_eq!(r.json()["family_name"], "Zyxwvutson");
    assert_eq!(patch(&b, reg_cfg.clone(), &path, &reg, &serde_json::json!({"shoe_size": "9"})).await.status, 400);
    assert_eq!(patch(&b, nurse_cfg.clone(), &path, &nurse, &serde_json::json!({"address": "x"})).await.status, 403);
    let r = get(b.addr(), nurse_cfg.clone(), "/api/v1/identity/patients/00112233445566778899aabbccddeeff", Some(&nurse)).await;
    assert_eq!(r.status, 404);
    assert_eq!(get(b.addr(), res_cfg.clone(), "/api/v1/identity/patients?family=zyxwvutson", Some(&researcher)).await.status, 403);

    // The audit log names the patient by keyed reference of the pseudonym, whichever side.
    let r = get(b.addr(), aud_cfg.clone(), &format!("/api/v1/audit/entries?patient={pseudonym}"), Some(&auditor)).await;
    let seen: Vec<(String, String)> = r.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["actor"]["name"].as_str().unwrap().to_owned(), e["op"].as_str().unwrap().to_owned()))
        .collect();
    for want in [("registrar", "identity-write"), ("nurse1", "identity-search"), ("nurse1", "identity-read")] {
        assert!(seen.contains(&(want.0.into(), want.1.into())), "{want:?} missing from {seen:?}");
    }

    // A second registration with another MRN but the same person's details is flagged;
    // the IT administrator merges it, and the merge is audited under both patients.
    let (adm_cfg, admin) = staff_login(&b, "itadmin1", broker::Role::ItAdmin).await;
    let mut dup = jane.clone();
    dup["patient_id"] = serde_json::json!("MRN-9999");
    dup["address"] = serde_json::json!("3 New Road");
    let r = post_json(b.addr(), reg_cfg.clone(), "/api/v1/identity/patients", Some(&reg), &dup).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let dup_id = r.json()["identity_id"].as_str().unwrap().to_owned();
    let dup_pseudonym = r.json()["pseudonym"].as_str().unwrap().to_owned();
    let item = r.json()["review_item"].as_str().expect("flagged as a possible duplicate").to_owned();
    assert_ne!(dup_id, id);
    assert_eq!(get(b.addr(), nurse_cfg.clone(), "/api/v1/admin/review-queue", Some(&nurse)).await.status, 403);
    let r = get(b.addr(), adm_cfg.clone(), "/api/v1/admin/review-queue", Some(&admin)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let items = r.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["item_id"], item.as_str());
    assert!(!r.body.contains("Zyxwvutson"), "review items carry no values");
    let resolve = format!("/api/v1/admin/review-queue/{item}/resolve");
    let r = post_json(b.addr(), adm_cfg.clone(), &resolve, Some(&admin), &serde_json::json!({"action": "merge"})).await;
    assert_eq!(r.status, 400, "merge needs keep");
    let r = post_json(b.addr(), adm_cfg.clone(), &resolve, Some(&admin), &serde_json::json!({"action": "merge", "keep": id})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["decision"], "merged");
    let r = get(b.addr(), adm_cfg.clone(), "/api/v1/admin/review-queue", Some(&admin)).await;
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 0);
    let r = post_json(b.addr(), adm_cfg.clone(), &resolve, Some(&admin), &serde_json::json!({"action": "confirm"})).await;
    assert_eq!(r.status, 404, "resolved items are gone");
    // Both pseudonyms now belong to the kept identity.
    let r = get(b.addr(), nurse_cfg.clone(), &format!("/api/v1/identity/patients/{id}"), Some(&nurse)).await;
    let ps: Vec<String> = r.json()["pseudonyms"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_owned()).collect();
    assert!(ps.contains(&pseudonym) && ps.contains(&dup_pseudonym), "{ps:?}");
    for who in [&pseudonym, &dup_pseudonym] {
        let r = get(b.addr(), aud_cfg.clone(), &format!("/api/v1/audit/entries?patient={who}&operation=merge"), Some(&auditor)).await;
        let merges = r.json()["entries"].as_array().unwrap().clone();
        assert_eq!(merges.len(), 1, "{merges:?}");
        assert_eq!(merges[0]["actor"]["name"], "itadmin1");
    }

    // Nothing identifying in clear on disk: not in the vault, not in the audit log.
    drop(b.running);
    let mut disk = Vec::new();
    for sub in ["identity", "audit"] {
        for f in std::fs::read_dir(b.dir.path().join(sub)).unwrap() {
            disk.extend(std::fs::read(f.unwrap().path()).unwrap());
        }
    }
    let text = String::from_utf8_lossy(&disk).to_lowercase();
    assert!(!disk.is_empty());
    for phi in ["zyxwvutson", "janeqx", "19700304", "mrn-4471", "quiet lane", "new road", &pseudonym.to_lowercase()] {
        assert!(!text.contains(phi), "something identifying is stored in clear");
    }
}
