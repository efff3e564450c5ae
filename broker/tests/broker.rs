//! The broker driven as its users drive it: a real server on 127.0.0.1:0, real TLS.
mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[cfg(unix)]
fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn first_run_creates_keys_ca_server_cert_and_admin_and_second_run_reuses_them() {
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("cleave-data");
    let first = broker::open(&data, broker::MasterKeySource::KeyFile).unwrap();
    let boot = first.bootstrap.clone().expect("first run makes a bootstrap admin");
    let pki = broker::LocalPkiPaths::new(&data);
    for f in [&data.join("keys/master.key"), &data.join("keys/keyring.json"), &pki.ca_key, &pki.server_key, &boot.credentials, &boot.key, &boot.cert] {
        assert!(f.exists(), "{} missing", f.display());
        #[cfg(unix)]
        assert_eq!(mode(f), 0o600, "{} must be 0600", f.display());
    }
    #[cfg(unix)]
    assert_eq!(mode(&data), 0o700);
    assert!(data.join(broker::CONFIG_FILE).exists());
    assert_eq!(credential(&boot.credentials, "username"), "admin");
    assert_eq!(credential(&boot.credentials, "password").len(), 20);
    let staff = first.accounts.list_staff().unwrap();
    assert_eq!(staff.len(), 1);
    assert_eq!((staff[0].username.as_str(), staff[0].role.as_str()), ("admin", "it-admin"));
    let ca = std::fs::read(&pki.ca_cert).unwrap();
    let master = std::fs::read(data.join("keys/master.key")).unwrap();
    let creds = std::fs::read(&boot.credentials).unwrap();
    drop(first);

    let second = broker::open(&data, broker::MasterKeySource::KeyFile).unwrap();
    assert!(second.bootstrap.is_none(), "second run must not make another admin");
    assert_eq!(std::fs::read(&pki.ca_cert).unwrap(), ca, "CA reused");
    assert_eq!(std::fs::read(data.join("keys/master.key")).unwrap(), master, "master key reused");
    assert_eq!(std::fs::read(&boot.credentials).unwrap(), creds);
    assert_eq!(second.accounts.list_staff().unwrap().len(), 1);
}

#[tokio::test]
async fn handshake_refuses_missing_or_foreign_client_certificates() {
    let b = start(TEST_CONFIG, false).await;
    // The admin's certificate works.
    let ok = get(b.addr(), b.admin_client(), "/api/v1/openapi.json", None).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["openapi"], "3.1.0");
    // No client certificate: the server refuses during the handshake, so no HTTP answer.
    let none = request(b.addr(), b.client(None), "GET", "/api/v1/openapi.json", &[], b"").await;
    assert!(none.is_err(), "answered without a client certificate: {none:?}");
    // A certificate from another CA.
    let other = tempfile::tempdir().unwrap();
    broker::open(other.path(), broker::MasterKeySource::KeyFile).unwrap();
    let ob = other.path().join("bootstrap");
    let foreign = common::client_config(&b.ca_pem(), Some((&ob.join("admin.pem"), &ob.join("admin.key"))));
    let r = request(b.addr(), foreign, "GET", "/api/v1/openapi.json", &[], b"").await;
    assert!(r.is_err(), "answered a certificate from another CA: {r:?}");
}

#[tokio::test]
async fn plaintext_http_to_the_tls_port_gets_no_http_answer() {
    let b = start(TEST_CONFIG, false).await;
    let mut tcp = tokio::net::TcpStream::connect(b.addr()).await.unwrap();
    tcp.write_all(b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    assert!(!out.starts_with(b"HTTP/"), "plaintext HTTP was answered");
    assert!(!String::from_utf8_lossy(&out).contains("openapi"));
}

/// A TLS 1.1 ClientHello (legacy version 0x0302, no supported_versions extension, CBC and
/// GCM suites): the server must answer with an alert, never a ServerHello.
#[tokio::test]
async fn tls_1_1_and_lower_are_refused() {
    let b = start(TEST_CONFIG, false).await;
    let mut body = Vec::new();
    body.extend_from_slice(&[0x03, 0x02]); // client_version TLS 1.1
    body.extend_from_slice(&[0x11; 32]); // random
    body.push(0); // session id
    let suites: [u16; 4] = [0xc02f, 0xc013, 0x002f, 0x0035];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // null compression
    // extensions: supported_groups (x25519, secp256r1), ec_point_formats
    let ext: Vec<u8> = vec![0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x0b, 0x00, 0x02, 0x01, 0x00];
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    let mut tcp = tokio::net::TcpStream::connect(b.addr()).await.unwrap();
    tcp.write_all(&rec).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    assert!(!out.is_empty(), "expected an alert");
    assert_eq!(out[0], 0x15, "expected a TLS alert record, got {:02x?}", &out[..out.len().min(8)]);
    // A fatal alert: protocol_version (70) or handshake_failure (40, what rustls sends when
    // no offered version is enabled).
    assert_eq!(out.get(5), Some(&2), "fatal alert level");
    assert!(matches!(out.get(6), Some(&70) | Some(&40)), "alert {:02x?}", &out[..out.len().min(8)]);
}

#[tokio::test]
async fn login_checks_password_and_totp_and_rate_limits() {
    let b = start(TEST_CONFIG, false).await;
    let creds = b.data().join("bootstrap/admin-credentials.txt");
    let password = credential(&creds, "password");
    let seed = credential(&creds, "totp_secret_base32");
    let admin = b.admin_client();
    let attempt = |pw: String, code: String| {
        let admin = admin.clone();
        let addr = b.addr();
        async move {
            post_json(addr, admin, "/api/v1/login", None, &serde_json::json!({"username": "admin", "password": pw, "totp": code})).await
        }
    };
    let wrong_pw = attempt("not-the-password".into(), totp(&seed, 0)).await;
    assert_eq!((wrong_pw.status, wrong_pw.error_code().as_str()), (401, "unauthorized"));
    assert!(!wrong_pw.body.contains(&password));
    let wrong_code = attempt(password.clone(), "000000".into()).await;
    assert_eq!(wrong_code.status, 401);
    let unknown = post_json(b.addr(), admin.clone(), "/api/v1/login", None, &serde_json::json!({"username": "nobody", "password": "x", "totp": "123456"})).await;
    assert_eq!(unknown.status, 401);
    assert_eq!(unknown.body, wrong_pw.body, "an unknown user must look like a wrong password");
    let ok = attempt(password.clone(), totp(&seed, 0)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.json()["token"].as_str().unwrap().len() > 64);
    assert_eq!(ok.json()["role"], "it-admin");
    // The same one-time code cannot be used twice.
    let replay = attempt(password.clone(), totp(&seed, 0)).await;
    assert_eq!(replay.status, 401);
    // A success cleared the earlier failures; the replay counted as one. Two more reach
    // the limit of three: the next attempt is 429 even with the right password and code.
    for _ in 0..2 {
        assert_eq!(attempt("still-wrong".into(), totp(&seed, 1)).await.status, 401);
    }
    let limited = attempt(password.clone(), totp(&seed, 1)).await;
    assert_eq!((limited.status, limited.error_code().as_str()), (429, "too_many_requests"));
    let retry: u64 = limited.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=900).contains(&retry), "{retry}");
}

#[tokio::test]
async fn bodies_errors_and_unknown_routes_use_one_json_format() {
    let b = start(TEST_CONFIG, false).await;
    let admin = b.admin_client();
    let big = vec![b'a'; 10_000];
    let r = request(b.addr(), admin.clone(), "POST", "/api/v1/login", &[("Content-Type", "application/json")], &big).await.unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (413, "payload_too_large"));
    let r = request(b.addr(), admin.clone(), "POST", "/api/v1/login", &[("Content-Type", "application/json")], b"{\"username\": ").await.unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_request"));
    let r = post_json(b.addr(), admin.clone(), "/api/v1/login", None, &serde_json::json!({"username": "a", "password": "b", "totp": "c", "extra": 1})).await;
    assert_eq!(r.status, 400, "unknown fields fail closed");
    let r = get(b.addr(), admin.clone(), "/no/such/route", None).await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    let r = request(b.addr(), admin.clone(), "DELETE", "/api/v1/login", &[], b"").await.unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (405, "method_not_allowed"));
    for (method, path) in [("GET", "/dicomweb/studies"), ("POST", "/dicomweb/studies"), ("GET", "/api/v1/shares")] {
        let r = request(b.addr(), admin.clone(), method, path, &[], b"").await.unwrap();
        assert_eq!((r.status, r.error_code().as_str()), (401, "unauthorized"), "{method} {path}");
        assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
    }
    let r = request(b.addr(), admin, "GET", "/dicomweb/studies", &[("Authorization", "Basic YTpi")], b"").await.unwrap();
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn slow_loris_is_cut_off() {
    let b = start(TEST_CONFIG, false).await;
    let cfg = b.admin_client();
    let tcp = tokio::net::TcpStream::connect(b.addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let head = b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        for byte in head.iter() {
            if wr.write_all(&[*byte]).await.is_err() || wr.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut out)).await;
    let elapsed = started.elapsed();
    writer.abort();
    assert!(r.is_ok(), "the connection was still open after 20 s");
    assert!(elapsed < Duration::from_secs(10), "cut off only after {elapsed:?} (header timeout is 2 s)");
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains("200 OK"), "a slow request head was served: {text}");
}

#[tokio::test]
async fn consultant_listener_needs_no_client_certificate_but_a_token() {
    let b = start(TEST_CONFIG, true).await;
    let anon = b.client(None);
    let r = get(b.consultant(), anon.clone(), "/dicomweb/studies", None).await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "unauthorized"));
    // Login is refused on this listener: tokens are issued only over mutual TLS.
    let r = post_json(b.consultant(), anon, "/api/v1/login", None, &serde_json::json!({"username": "admin", "password": "x", "totp": "1"})).await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn every_path_in_the_openapi_document_is_routed() {
    let b = start(TEST_CONFIG, false).await;
    let admin = b.admin_client();
    let served = get(b.addr(), admin.clone(), "/api/v1/openapi.json", None).await;
    assert_eq!(served.json(), serde_json::from_str::<serde_json::Value>(broker::OPENAPI_JSON).unwrap());
    let doc = served.json();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 15);
    for (path, item) in paths {
        let concrete = path.replace("{id}", "s1").replace("{username}", "u1").replace("{fingerprint}", "f1").replace("{patient}", "P1-00112233445566778899aabbccddeeff").replace("{study}", "1.2.3").replace("{item_id}", "00112233445566778899aabbccddeeff");
        for method in item.as_object().unwrap().keys() {
            let r = request(b.addr(), admin.clone(), &method.to_uppercase(), &concrete, &[("Content-Type", "application/json")], b"{}").await.unwrap();
            assert!(r.status != 404 && r.status != 405, "{method} {path} is documented but not routed ({})", r.status);
        }
    }
}
