//! Every audit entry also reaches an ATNA collector over syslog/TLS (RFC 5425 octet
//! counting, RFC 5424 header, the PS3.15 A.5 AuditMessage), here a local TLS listener with
//! its own certificate: the broker authenticates it, frames each message exactly, names
//! the leaf, and sends no PHI, no pseudonym and no token.
mod common;

use std::io::Read;
use std::net::TcpListener;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::*;

const PATIENT: &str = "P1-00112233445566778899aabbccddeeff";

/// A one-connection-at-a-time TLS collector; sends each decoded message on the channel.
fn collector(dir: &std::path::Path) -> (std::net::SocketAddr, std::path::PathBuf, mpsc::Receiver<String>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let ca = dir.join("collector.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let mut s = rustls::StreamOwned::new(rustls::ServerConnection::new(cfg.clone()).unwrap(), tcp);
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                let n = match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                // RFC 5425: MSG-LEN SP SYSLOG-MSG, repeated.
                while let Some(sp) = buf.iter().position(|b| *b == b' ') {
                    let len: usize = std::str::from_utf8(&buf[..sp]).unwrap().parse().expect("octet count");
                    if buf.len() < sp + 1 + len {
                        break;
                    }
                    let msg = String::from_utf8(buf[sp + 1..sp + 1 + len].to_vec()).unwrap();
                    buf.drain(..sp + 1 + len);
                    let _ = tx.send(msg);
                }
            }
        }
    });
    (addr, ca, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_reaches_the_collector_framed_and_without_phi() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, ca, rx) = collector(tmp.path());
    let config = format!(
        "{TEST_CONFIG}\n[audit_syslog]\naddress = \"{addr}\"\nserver_name = \"localhost\"\nca = \"{}\"\nhostname = \"cleave-test\"\n",
        ca.display()
    );
    let b = start(&config, false).await;
    let (cfg, nurse) = staff_login(&b, "nurse1", broker::Role::Nurse).await;
    let phi_name = "Jane Q Patient 19700101";
    let r = post_json(b.addr(), cfg.clone(), "/api/v1/login", None, &serde_json::json!({"username": phi_name, "password": "x", "totp": "000000"})).await;
    assert_eq!(r.status, 401);
    let r = get(b.addr(), cfg.clone(), &format!("/api/v1/clinical/patients/{PATIENT}/notes"), Some(&nurse)).await;
    assert_ne!(r.status, 403, "{}", r.body);

    // Everything up to the clinical read (the last decision made), in log order.
    let mut got: Vec<String> = Vec::new();
    while !got.last().is_some_and(|m| m.contains("110103")) {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(m) => got.push(m),
            Err(_) => panic!("the collector got {} entries and not the clinical read", got.len()),
        }
    }
    let heads: Vec<&str> = got.iter().map(|m| m.get(..60).unwrap_or(m)).collect();
    assert_eq!(got.len(), 4, "the bootstrap, the login, the failed login and the read: {heads:#?}");
    for (i, m) in got.iter().enumerate() {
        assert!(m.starts_with("<8") && m.contains(" cleave-test cleave-broker - DICOM+RFC3881 - <?xml"), "{m}");
        assert!(m.contains(&format!("{}#{i}", broker::AUDIT_ORIGIN)), "message {i} names its leaf: {m}");
        for secret in [PATIENT, phi_name, nurse.as_str()] {
            assert!(!m.contains(secret), "a syslog message holds something it must not");
        }
    }
    assert!(got.iter().any(|m| m.starts_with("<84>1 ") && m.contains("110122")), "the failed login, as a warning");
    assert!(got.iter().any(|m| m.starts_with("<85>1 ") && m.contains("110103") && m.contains("patient-ref")), "the clinical read");
}
