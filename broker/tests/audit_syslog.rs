//! Every audit entry also reaches an ATNA collector over syslog/TLS (RFC 5425 octet
//! counting, RFC 5424 header, the PS3.15 A.5 AuditMessage), here a local TLS listener with
//! its own certificate that also requires ours (mutual TLS, as IHE ATNA asks): the broker
//! authenticates it, frames each message exactly, names the leaf, and sends no PHI, no
//! pseudonym and no token. Entries made while the collector is away, or refuses us, are
//! sent when it is back, none lost.
mod common;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};

const PATIENT: &str = "P1-00112233445566778899aabbccddeeff";

/// The collector's certificate, and the CA that issues the broker's client certificate.
struct CollectorPki {
    /// What the broker trusts for the collector.
    ca: PathBuf,
    /// The broker's client certificate and key, issued by the client CA.
    client_cert: PathBuf,
    client_key: PathBuf,
    server: Arc<rustls::ServerConfig>,
}

fn collector_pki(dir: &Path) -> CollectorPki {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let ca = dir.join("collector.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name.push(DnType::CommonName, "ATNA client CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().unwrap();
    let client_ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "cleave-broker");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let (client_cert, client_key) = (dir.join("broker-client.pem"), dir.join("broker-client.key"));
    std::fs::write(&client_cert, leaf_cert.pem()).unwrap();
    std::fs::write(&client_key, leaf_key.serialize_pem()).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client_ca.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let server = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap(),
    );
    CollectorPki { ca, client_cert, client_key, server }
}

/// A one-connection-at-a-time TLS collector on `listener`; sends each decoded message on
/// the channel.
fn collector(listener: TcpListener, cfg: Arc<rustls::ServerConfig>) -> mpsc::Receiver<String> {
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
    rx
}

fn syslog_config(addr: std::net::SocketAddr, pki: &CollectorPki, with_client_cert: bool) -> String {
    let client = if with_client_cert {
        format!("client_cert = \"{}\"\nclient_key = \"{}\"\n", pki.client_cert.display(), pki.client_key.display())
    } else {
        String::new()
    };
    format!(
        "{TEST_CONFIG}\n[audit_syslog]\naddress = \"{addr}\"\nserver_name = \"localhost\"\nca = \"{}\"\nhostname = \"cleave-test\"\n{client}",
        pki.ca.display()
    )
}

/// The leaf index a message names (`origin#index`).
fn leaf_of(m: &str) -> u64 {
    let tag = format!("{}#", broker::AUDIT_ORIGIN);
    let at = m.find(&tag).unwrap_or_else(|| panic!("the message names no leaf: {m}")) + tag.len();
    m[at..].chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().unwrap()
}

/// Receives until the message for leaf `last` has arrived; every leaf from 0 must arrive
/// once, in order (this collector never drops a connection, so nothing is repeated).
fn receive_through(rx: &mpsc::Receiver<String>, last: u64) -> Vec<String> {
    let mut got: Vec<String> = Vec::new();
    while got.last().map(|m| leaf_of(m)) != Some(last) {
        // Longer than the forwarder's longest pause between attempts (30 s, `syslog.rs`):
        // a collector that comes back just after an attempt is reached at the next one.
        match rx.recv_timeout(Duration::from_secs(45)) {
            Ok(m) => {
                assert_eq!(leaf_of(&m), got.len() as u64, "entries out of order or missing");
                got.push(m);
            }
            Err(_) => panic!("the collector got {} entries, not through leaf {last}", got.len()),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_reaches_the_collector_framed_and_without_phi() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = collector_pki(tmp.path());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let rx = collector(listener, pki.server.clone());
    let b = start(&syslog_config(addr, &pki, true), false).await;
    let (cfg, nurse) = staff_login(&b, "nurse1", broker::Role::Nurse).await;
    let phi_name = "Jane Q Patient 19700101";
    let r = post_json(b.addr(), cfg.clone(), "/api/v1/login", None, &serde_json::json!({"username": phi_name, "password": "x", "totp": "000000"})).await;
    assert_eq!(r.status, 401);
    let r = get(b.addr(), cfg.clone(), &format!("/api/v1/clinical/patients/{PATIENT}/notes"), Some(&nurse)).await;
    assert_ne!(r.status, 403, "{}", r.body);

    // Everything up to the clinical read (the last decision made), in log order.
    let mut got: Vec<String> = Vec::new();
    while !got.last().is_some_and(|m| m.contains("110103")) {
        // Longer than the forwarder's longest pause between attempts (30 s, `syslog.rs`):
        // a collector that comes back just after an attempt is reached at the next one.
        match rx.recv_timeout(Duration::from_secs(45)) {
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

/// A free loopback port with nobody listening on it (yet).
fn unused_port() -> std::net::SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// `n` failed logins from the bootstrap administrator's certificate: `n` audit entries.
async fn failed_logins(b: &Broker, n: usize) {
    for i in 0..n {
        let body = serde_json::json!({"username": format!("nobody{i}"), "password": "x", "totp": "000000"});
        let r = post_json(b.addr(), b.admin_client(), "/api/v1/login", None, &body).await;
        assert_eq!(r.status, 401, "{}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_made_while_the_collector_is_away_arrive_when_it_comes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = collector_pki(tmp.path());
    let addr = unused_port();
    let b = start(&syslog_config(addr, &pki, true), false).await;
    failed_logins(&b, 5).await;
    // Long enough for the forwarder to have tried, failed and backed off.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rx = collector(TcpListener::bind(addr).unwrap(), pki.server.clone());
    // The bootstrap (leaf 0), then the five failed logins.
    let got = tokio::task::spawn_blocking(move || receive_through(&rx, 5)).await.unwrap();
    assert_eq!(got.iter().filter(|m| m.contains("110122")).count(), 5, "every failed login arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_a_collector_that_refuses_our_certificate_gets_nothing_and_nothing_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = collector_pki(tmp.path());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let rx = collector(listener, pki.server.clone());
    // No client certificate configured: the collector refuses every handshake.
    let b = start(&syslog_config(addr, &pki, false), false).await;
    failed_logins(&b, 3).await;
    let rx = tokio::task::spawn_blocking(move || {
        assert!(rx.recv_timeout(Duration::from_secs(3)).is_err(), "a collector that refused us received an entry");
        rx
    })
    .await
    .unwrap();
    drop(rx);
    // TLS 1.3 ends the client's handshake before the collector judges its certificate; had
    // the forwarder written into that connection, the cursor would have moved past entries
    // the collector never got.
    let cursor = b.data().join("audit/syslog-cursor");
    let saved = std::fs::read_to_string(&cursor).unwrap_or_else(|_| "0".into());
    assert_eq!(saved.trim(), "0", "the cursor moved past entries that were never delivered");
}

/// `cleave-broker serve` on `data`, until it announces its HTTPS listener.
fn serve(data: &Path) -> (std::process::Child, std::net::SocketAddr) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cleave-broker"))
        .arg("--data-dir")
        .arg(data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel::<String>();
    // Read stderr for the server's whole life: a closed pipe would fail its next log line.
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = String::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        if let Some(rest) = line.strip_prefix("cleave-broker listening on https://") {
            let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
            return (child, addr);
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("serve did not announce its listener: {seen}");
}

/// Forwarding survives `kill -9`: entries made while the collector was away are sent by
/// the next run, and a run that had sent everything and saved its cursor is not followed
/// by a resend of the whole log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_goes_on_from_its_saved_cursor_after_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = collector_pki(tmp.path());
    let data = tmp.path().join("cleave-data");
    std::fs::create_dir(&data).unwrap();
    let addr = unused_port();
    std::fs::write(data.join(broker::CONFIG_FILE), syslog_config(addr, &pki, true)).unwrap();
    let admin = || {
        let d = data.join("bootstrap");
        client_config(&data.join("pki/ca.pem"), Some((&d.join("admin.pem"), &d.join("admin.key"))))
    };
    let login = |addr| {
        let cfg = admin();
        async move {
            let body = serde_json::json!({"username": "nobody", "password": "x", "totp": "000000"});
            assert_eq!(post_json(addr, cfg, "/api/v1/login", None, &body).await.status, 401);
        }
    };

    // First run: the collector is away. The bootstrap and three failed logins: leaves 0-3.
    let (mut first, https) = serve(&data);
    for _ in 0..3 {
        login(https).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();

    // Second run, collector back: everything from leaf 0 arrives.
    let rx = collector(TcpListener::bind(addr).unwrap(), pki.server.clone());
    let (mut second, _) = serve(&data);
    let (got, rx) = tokio::task::spawn_blocking(move || (receive_through(&rx, 3), rx)).await.unwrap();
    assert_eq!(got.iter().filter(|m| m.contains("110122")).count(), 3, "the failed logins of the first run");
    // Idle, the forwarder saves its cursor: the next entry to send is leaf 4.
    let cursor = data.join("audit/syslog-cursor");
    let mut saved = String::new();
    for _ in 0..50 {
        saved = std::fs::read_to_string(&cursor).unwrap_or_default();
        if saved.trim() == "4" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(saved.trim(), "4", "the cursor after sending leaves 0-3");
    second.kill().unwrap();
    second.wait().unwrap();

    // Third run: one more entry, and only it arrives.
    let (mut third, https) = serve(&data);
    login(https).await;
    let next = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20))).await.unwrap();
    third.kill().unwrap();
    third.wait().unwrap();
    let next = next.expect("the third run's entry did not arrive");
    assert_eq!(leaf_of(&next), 4, "the third run resent entries the second had sent and saved");
}
