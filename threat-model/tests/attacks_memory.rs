//! T3: memory disclosure after the requests are over. A broker runs as a child process
//! (this test binary re-invoked, running `broker::start`, the code `cleave-broker serve`
//! runs) with a 1 s store idle TTL. Identities with canary values are registered and read
//! back over mutual TLS; once the TTL has passed, every readable private mapping of the
//! child is read through /proc/<pid>/mem and searched for the canaries.
mod common;

// The allocator `cleave-broker` runs on (broker/src/main.rs): the child below is this test
// binary, so it must run on the same one for the attack to test what ships.
#[global_allocator]
static ALLOC: broker::ZeroingAllocator = broker::zeroing_allocator();

use std::time::Duration;

use common::*;

const FAMILY: &str = "Zqxwvortexmem";
const ADDRESS: &str = "17 Quillfeather Lane Memtown";
const NATIONAL_ID: &str = "QZ9988MEM77";
const ENV_CANARY: &str = "EnvCanaryQuillfeatherMem77";

/// The child: serve until killed. It is this test binary re-invoked for the attack test
/// below with `THREAT_MODEL_CHILD_DATA` set, so it runs on the same allocator.
async fn serve_as_child(dir: String) {
    let mut opts = broker::ServeOptions::new(&dir);
    opts.listen = Some("127.0.0.1:0".parse().unwrap());
    let running = broker::start(opts).await.unwrap();
    std::fs::write(format!("{dir}/child-addr.txt"), running.addr.to_string()).unwrap();
    // Killed by the parent; the sleep only bounds an orphan's life.
    tokio::time::sleep(Duration::from_secs(600)).await;
}

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn idle_server_memory_holds_no_canary() {
    if let Ok(dir) = std::env::var("THREAT_MODEL_CHILD_DATA") {
        return serve_as_child(dir).await;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(broker::CONFIG_FILE), "store_idle_secs = 1\nheader_read_timeout_secs = 2\n").unwrap();
    let opened = broker::open(dir.path(), broker::MasterKeySource::KeyFile).unwrap();
    let mut people = Vec::new();
    for (name, role) in [("reg1", broker::Role::Registration), ("nurse1", broker::Role::Nurse)] {
        let creds = opened.accounts.add_staff(name, role, "w").unwrap();
        let issued = broker::issue_client_cert(dir.path(), name, 30).unwrap();
        let (cert, key) = broker::write_pair(&dir.path().join("certs"), name, &issued).unwrap();
        people.push((name, creds, cert, key));
    }
    drop(opened);
    let child = Child(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "idle_server_memory_holds_no_canary", "--nocapture"])
            .env("THREAT_MODEL_CHILD_DATA", dir.path())
            .env("THREAT_MODEL_ENV_CANARY", ENV_CANARY)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr_file = dir.path().join("child-addr.txt");
    for _ in 0..400 {
        if addr_file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr: std::net::SocketAddr = std::fs::read_to_string(&addr_file).expect("the child broker started").parse().unwrap();
    let ca = dir.path().join("pki/ca.pem");
    let mut tokens = Vec::new();
    for (name, creds, cert, key) in &people {
        let cfg = client_config(&ca, Some((cert, key)));
        let body = serde_json::json!({"username": name, "password": creds.password.as_str(), "totp": totp(&creds.totp_base32, 0)});
        let r = post_json(addr, cfg.clone(), "/api/v1/login", None, &body).await;
        assert_eq!(r.status, 200, "{}", r.body);
        tokens.push((cfg, r.json()["token"].as_str().unwrap().to_owned()));
    }
    let (reg_cfg, reg) = &tokens[0];
    let (nurse_cfg, nurse) = &tokens[1];
    let patient = serde_json::json!({
        "family_name": FAMILY, "given_name": "Quillamina", "birth_date": "19230817", "sex": "F",
        "issuer": "HOSP-A", "patient_id": "MRN-MEM-55123", "address": ADDRESS, "national_id": NATIONAL_ID,
    });
    let r = post_json(addr, reg_cfg.clone(), "/api/v1/identity/patients", Some(reg), &patient).await;
    assert!(r.status == 200 || r.status == 201, "{} {}", r.status, r.body);
    let id = r.json()["identity_id"].as_str().unwrap().to_owned();
    let r = get(addr, nurse_cfg.clone(), &format!("/api/v1/identity/patients/{id}"), Some(nurse)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(ADDRESS), "the read decrypted the canary");
    let r = get(addr, nurse_cfg.clone(), &format!("/api/v1/identity/patients?family={FAMILY}"), Some(nurse)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Some unrelated traffic after, as an idle hospital server would see.
    for _ in 0..3 {
        get(addr, nurse_cfg.clone(), "/api/v1/openapi.json", None).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;

    let mut needles: Vec<(&str, Vec<u8>)> = vec![("env canary", ENV_CANARY.as_bytes().to_vec())];
    for (what, c) in [("family name", FAMILY), ("address", ADDRESS), ("national id", NATIONAL_ID)] {
        for v in variants(c) {
            needles.push((what, v));
        }
    }
    let hits = scan_process_memory(child.0.id(), &needles);
    drop(child);
    // The scanner sees what is there: the canary in the child's environment.
    assert!(hits.iter().any(|h| h.starts_with("env canary")), "the memory scanner is blind: {hits:?}");
    let phi: Vec<_> = hits.iter().filter(|h| !h.starts_with("env canary")).collect();
    assert!(phi.is_empty(), "identity canaries in the idle broker's memory:\n{}", phi.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"));
}
