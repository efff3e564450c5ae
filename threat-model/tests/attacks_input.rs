//! T9: SQL injection and path traversal through every text input the broker has today:
//! login fields, path segments (patient, share id, username, device fingerprint, study),
//! and the admin's account fields. Each must get a clean 4xx in the one error format,
//! store nothing, leave the account database as it was, touch no file outside the data
//! directory, and leave the server healthy.
mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

/// Payloads as they would appear once decoded.
const PAYLOADS: &[&str] = &[
    "' OR 1=1 --",
    "admin' --",
    "admin'/*",
    "\" OR \"\"=\"",
    "'; DROP TABLE staff; --",
    "1; DELETE FROM grants",
    "../../etc/passwd",
    "..\\..\\windows\\win.ini",
    "/etc/passwd",
    "..",
    "admin\0",
    "%00",
    "x' UNION SELECT password_hash FROM staff --",
];

/// Percent-encoded forms for path segments (raw `..`, `%2e%2e`, `%2f`, NUL, quotes).
const SEGMENTS: &[&str] = &[
    "..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%2e%2e",
    "..",
    "%00",
    "P1-00112233445566778899aabbccddeeff%00",
    "'%20OR%201=1%20--",
    "%27%3B%20DROP%20TABLE%20staff%3B%20--",
    "..%5c..%5cwindows",
    "%252e%252e%252f",
    "P1-00112233445566778899aabbccddeeff'",
    "admin%27%20--",
];

/// Every table's row count and content digest in the broker's database, read raw.
fn db_snapshot(data: &Path) -> BTreeMap<String, (i64, String)> {
    let db = rusqlite::Connection::open_with_flags(data.join("broker/broker.sqlite"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .or_else(|_| rusqlite::Connection::open_with_flags(find_db(data), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY))
        .unwrap();
    let tables: Vec<String> = {
        let mut st = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").unwrap();
        st.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
    };
    assert!(!tables.is_empty(), "the broker database has no tables");
    let mut out = BTreeMap::new();
    for t in tables {
        let n: i64 = db.query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| r.get(0)).unwrap();
        let mut st = db.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let cols = st.column_count();
        let mut rows: Vec<String> = st
            .query_map([], |r| {
                let mut s = String::new();
                for i in 0..cols {
                    s.push_str(&format!("{:?}|", r.get_ref(i)?));
                }
                Ok(s)
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.sort();
        out.insert(t, (n, rows.join("\n")));
    }
    out
}

fn find_db(data: &Path) -> std::path::PathBuf {
    files_under(data).into_iter().find(|p| p.extension().is_some_and(|e| e == "sqlite")).expect("a SQLite file in the data dir")
}

fn clean_4xx(what: &str, a: &Answer) {
    assert!((400..500).contains(&a.status), "{what}: answered {} {}", a.status, a.body);
    a.error_code();
    assert!(!a.body.contains("etc/passwd") && !a.body.contains("root:"), "{what}: the answer echoes the payload: {}", a.body);
    assert!(!a.body.to_ascii_lowercase().contains("sqlite") && !a.body.contains("syntax"), "{what}: a database error leaked: {}", a.body);
}

#[tokio::test]
async fn injection_and_traversal_inputs_are_inert() {
    // A sibling of the data directory that a traversal would reach.
    let outside = tempfile::tempdir().unwrap();
    let b = start(TEST_CONFIG, false).await;
    let victim = outside.path().join("victim.txt");
    std::fs::write(&victim, b"untouched").unwrap();
    let admin_cfg = b.admin_client();
    let doctor = person(&b, "doctor", broker::Role::Doctor).await;
    let creds = b.data().join("bootstrap/admin-credentials.txt");
    let admin_pw = credential(&creds, "password");
    let admin_seed = credential(&creds, "totp_secret_base32");
    let admin = post_json(b.addr(), admin_cfg.clone(), "/api/v1/login", None, &serde_json::json!({"username": "admin", "password": admin_pw, "totp": totp(&admin_seed, 0)})).await;
    assert_eq!(admin.status, 200, "{}", admin.body);
    let admin_token = admin.json()["token"].as_str().unwrap().to_owned();

    // Oracle: each route used below reaches its handler with good input.
    assert!(allowed(&call(b.addr(), doctor.cfg.clone(), "GET", &format!("/api/v1/clinical/patients/{PATIENT}/notes"), &doctor.token).await));
    assert!(allowed(&call(b.addr(), doctor.cfg.clone(), "GET", "/dicomweb/studies/1.2.3", &doctor.token).await));
    assert_eq!(call(b.addr(), admin_cfg.clone(), "GET", "/api/v1/admin/users", &admin_token).await.status, 200);
    // And the database snapshot sees a change when one happens (a new account).
    let before_add = db_snapshot(b.data());
    let a = post_json(b.addr(), admin_cfg.clone(), "/api/v1/admin/users", Some(&admin_token), &serde_json::json!({"username": "nurse1", "role": "nurse", "department": "w"})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_ne!(db_snapshot(b.data()), before_add, "the database snapshot is blind to changes");

    let outside_before = files_under(outside.path());
    let mut before = db_snapshot(b.data());
    let mut sent = 0;

    // Login fields.
    for p in PAYLOADS {
        for body in [
            serde_json::json!({"username": p, "password": "x", "totp": "000000"}),
            serde_json::json!({"username": "admin", "password": p, "totp": "000000"}),
            serde_json::json!({"username": "admin", "password": p, "totp": p}),
        ] {
            let a = post_json(b.addr(), admin_cfg.clone(), "/api/v1/login", None, &body).await;
            clean_4xx(&format!("login {body}"), &a);
            sent += 1;
        }
    }
    // Path segments, percent-encoded and raw, on every route with a path parameter.
    for s in SEGMENTS.iter().copied().chain(["../../etc/passwd", "..%2F..%2F..%2F..%2Fetc%2Fpasswd"]) {
        let routes = [
            (doctor.cfg.clone(), &doctor.token, "GET", format!("/api/v1/clinical/patients/{s}/notes")),
            (doctor.cfg.clone(), &doctor.token, "POST", format!("/api/v1/clinical/patients/{s}/notes")),
            (doctor.cfg.clone(), &doctor.token, "GET", format!("/api/v1/identity/patients/{s}")),
            (doctor.cfg.clone(), &doctor.token, "POST", format!("/api/v1/shares/{s}/revoke")),
            (doctor.cfg.clone(), &doctor.token, "GET", format!("/dicomweb/studies/{s}")),
            (admin_cfg.clone(), &admin_token, "POST", format!("/api/v1/admin/users/{s}/disable")),
            (admin_cfg.clone(), &admin_token, "POST", format!("/api/v1/admin/devices/{s}/revoke")),
            (admin_cfg.clone(), &admin_token, "GET", format!("/{s}")),
            (admin_cfg.clone(), &admin_token, "GET", format!("/api/v1/{s}/openapi.json")),
        ];
        for (cfg, token, method, path) in routes {
            let a = call(b.addr(), cfg, method, &path, token).await;
            clean_4xx(&format!("{method} {path}"), &a);
            sent += 1;
        }
    }
    // Account fields the administrator sends (`..` alone is a valid account name under the
    // documented grammar, and harmless: account names never become paths).
    for p in PAYLOADS.iter().filter(|p| **p != "..") {
        for body in [
            serde_json::json!({"username": p, "role": "nurse", "department": "w"}),
            serde_json::json!({"username": "n2", "role": p, "department": "w"}),
        ] {
            let a = post_json(b.addr(), admin_cfg.clone(), "/api/v1/admin/users", Some(&admin_token), &body).await;
            clean_4xx(&format!("add user {body}"), &a);
            sent += 1;
        }
    }
    // Search parameters of the identity search, now wired to the vault: one patient is
    // registered; no payload may return it (an `' OR 1=1` that matched would) or fail
    // with a server error. An empty result or a 4xx is inert.
    let reg = person(&b, "reg1", broker::Role::Registration).await;
    let new = serde_json::json!({"family_name": "Inertfamily", "given_name": "Ann", "birth_date": "19800101", "sex": "F", "issuer": "HOSP-A", "patient_id": "MRN-INERT-1"});
    let r = post_json(b.addr(), reg.cfg.clone(), "/api/v1/identity/patients", Some(&reg.token), &new).await;
    assert!(r.status == 200 || r.status == 201, "registering a patient: {} {}", r.status, r.body);
    {
        let found = get(b.addr(), doctor.cfg.clone(), "/api/v1/identity/patients?family=Inertfamily", Some(&doctor.token)).await;
        assert_eq!(found.status, 200, "{}", found.body);
        assert_eq!(found.json()["patients"].as_array().map(Vec::len), Some(1), "the oracle search finds the patient");
        let enc = |p: &str| p.bytes().map(|c| if c.is_ascii_alphanumeric() { (c as char).to_string() } else { format!("%{c:02X}") }).collect::<String>();
        for p in PAYLOADS {
            for param in ["name", "family", "given", "birth_date", "patient_id", "national_id", "accession"] {
                let path = format!("/api/v1/identity/patients?{param}={}", enc(p));
                let a = get(b.addr(), doctor.cfg.clone(), &path, Some(&doctor.token)).await;
                if a.status == 200 {
                    assert_eq!(a.json()["patients"].as_array().map(Vec::len), Some(0), "{path} returned patients");
                } else {
                    clean_4xx(&path, &a);
                }
                sent += 1;
            }
        }
    }

    // A bearer token that is itself an injection payload.
    for p in PAYLOADS.iter().filter(|p| !p.contains('\0')) {
        let a = call(b.addr(), doctor.cfg.clone(), "GET", &format!("/api/v1/clinical/patients/{PATIENT}/notes"), p).await;
        clean_4xx(&format!("token {p:?}"), &a);
        sent += 1;
    }
    assert!(sent > 150, "only {sent} payloads sent");

    // Nothing stored or changed, nothing outside the data directory touched (the
    // registration clerk's account and grant, made on purpose above, excepted).
    let after = db_snapshot(b.data());
    for t in ["staff", "grants"] {
        if let (Some(a), Some(bf)) = (after.get(t), before.get_mut(t)) {
            if a.0 == bf.0 + 1 {
                *bf = a.clone();
            }
        }
    }
    for (t, v) in &before {
        // The audit-free tables must be identical; `login` failures may be counted in memory only.
        assert_eq!(after.get(t), Some(v), "table {t} changed under injection payloads");
    }
    assert_eq!(after.len(), before.len(), "tables appeared or vanished");
    assert_eq!(files_under(outside.path()), outside_before);
    assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
    assert!(std::fs::read_dir(outside.path()).unwrap().count() == 1);
    // Healthy: everyone still works, every account still enabled.
    assert!(allowed(&call(b.addr(), doctor.cfg.clone(), "POST", &format!("/api/v1/clinical/patients/{PATIENT}/notes"), &doctor.token).await));
    let users = call(b.addr(), admin_cfg.clone(), "GET", "/api/v1/admin/users", &admin_token).await.json();
    let users = users.as_array().unwrap();
    assert_eq!(users.len(), 4);
    assert!(users.iter().all(|u| u["disabled"] == false), "{users:?}");
}
