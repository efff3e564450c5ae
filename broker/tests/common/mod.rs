//! Test harness: start a real broker on 127.0.0.1:0 and talk to it over real TLS.
#![allow(dead_code)]

pub mod dimse;
mod raw_http;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Limits small enough to test quickly.
pub const TEST_CONFIG: &str = "
header_read_timeout_secs = 2
idle_timeout_secs = 30
handshake_timeout_secs = 5
max_body_bytes = 4096
[login]
max_failures_per_account = 3
max_failures_per_address = 50
window_secs = 900
";

pub struct Broker {
    pub dir: tempfile::TempDir,
    pub running: broker::RunningBroker,
}

impl Broker {
    pub fn data(&self) -> &Path {
        self.dir.path()
    }
    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }
    pub fn consultant(&self) -> SocketAddr {
        self.running.consultant_addr.expect("started with a consultant listener")
    }
    pub fn ca_pem(&self) -> PathBuf {
        self.data().join("pki/ca.pem")
    }
    /// A client config trusting the broker's CA and presenting `cert` (a pair of PEM paths).
    pub fn client(&self, cert: Option<(&Path, &Path)>) -> Arc<ClientConfig> {
        client_config(&self.ca_pem(), cert)
    }
    /// The bootstrap administrator's client config.
    pub fn admin_client(&self) -> Arc<ClientConfig> {
        let d = self.data().join("bootstrap");
        self.client(Some((&d.join("admin.pem"), &d.join("admin.key"))))
    }
}

pub async fn start(config: &str, consultant: bool) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(broker::CONFIG_FILE), config).unwrap();
    let mut opts = broker::ServeOptions::new(dir.path());
    opts.listen = Some("127.0.0.1:0".parse().unwrap());
    if consultant {
        opts.consultant_listen = Some("127.0.0.1:0".parse().unwrap());
    }
    let running = broker::start(opts).await.unwrap();
    Broker { dir, running }
}

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut std::fs::read(path).unwrap().as_slice()).collect::<Result<_, _>>().unwrap()
}

fn key(path: &Path) -> PrivateKeyDer<'static> {
    rustls_pemfile::private_key(&mut std::fs::read(path).unwrap().as_slice()).unwrap().unwrap()
}

pub fn client_config(ca: &Path, cert: Option<(&Path, &Path)>) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca) {
        roots.add(c).unwrap();
    }
    let b = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match cert {
        Some((c, k)) => b.with_client_auth_cert(certs(c), key(k)).unwrap(),
        None => b.with_no_client_auth(),
    })
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {:?}", self.body))
    }
    /// The `error.code` of the one JSON error format.
    pub fn error_code(&self) -> String {
        let j = self.json();
        let msg = j["error"]["message"].as_str().unwrap_or_else(|| panic!("not the error format: {}", self.body));
        assert!(!msg.is_empty());
        j["error"]["code"].as_str().unwrap().to_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// One request over a fresh TLS connection. `Err` if the TLS handshake or the exchange fails.
pub async fn request(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Answer> {
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = TlsConnector::from(cfg).connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).await?;
    tls.write_all(body).await?;
    tls.flush().await?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("no HTTP answer: {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no status"))?;
    Ok(Answer { status, head: head.to_owned(), body: body.to_owned() })
}

pub async fn post_json(addr: SocketAddr, cfg: Arc<ClientConfig>, path: &str, token: Option<&str>, body: &serde_json::Value) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        h.push(("Authorization", a));
    }
    request(addr, cfg, "POST", path, &h, body.to_string().as_bytes()).await.unwrap()
}

pub async fn get(addr: SocketAddr, cfg: Arc<ClientConfig>, path: &str, token: Option<&str>) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let h: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    request(addr, cfg, "GET", path, &h, b"").await.unwrap()
}

/// Read `key = value` from a credentials file.
pub fn credential(file: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")).map(str::to_owned))
        .unwrap_or_else(|| panic!("{key} missing"))
}

/// The TOTP code for a base32 seed, `step_offset` steps from now.
pub fn totp(base32: &str, step_offset: i64) -> String {
    let seed = totp_rs::Secret::Encoded(base32.to_owned()).to_bytes().unwrap();
    let t = totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, seed).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    t.generate(((now + 30 * step_offset) as u64 / 30) * 30)
}

/// Create a staff account with `role` and a client certificate issued by the broker's CA,
/// then log in over mutual TLS with password and TOTP. Returns (client config, token).
pub async fn staff_login(b: &Broker, username: &str, role: broker::Role) -> (Arc<ClientConfig>, String) {
    let (cfg, j) = staff_login_json(b, username, role).await;
    (cfg, j["token"].as_str().unwrap().to_owned())
}

/// Enroll a device (AE title `CT_2`) with a client certificate from the broker's CA, and
/// fetch its append-only token over mutual TLS. Returns (client config, token).
pub async fn device_login(b: &Broker, label: &str) -> (Arc<ClientConfig>, String) {
    let opened = broker::open(b.data(), broker::MasterKeySource::KeyFile).unwrap();
    let issued = broker::issue_client_cert(b.data(), label, 30).unwrap();
    let (cert, key) = broker::write_pair(&b.data().join("test-certs"), label, &issued).unwrap();
    opened.accounts.add_device(issued.fingerprint.hex(), label, "CT_2", "test").unwrap();
    let cfg = b.client(Some((&cert, &key)));
    let r = post_json(b.addr(), cfg.clone(), "/api/v1/device/token", None, &serde_json::json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    (cfg, r.json()["token"].as_str().unwrap().to_owned())
}

/// An HTTP answer with a binary body, the chunked transfer coding removed.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
    /// False when a chunked body ended without its last chunk (the server aborted it).
    pub complete: bool,
}

impl RawAnswer {
    pub fn header(&self, name: &str) -> Option<String> {
        Answer { status: self.status, head: self.head.clone(), body: String::new() }.header(name)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// As an [`Answer`] (for the JSON helpers).
    pub fn answer(&self) -> Answer {
        Answer { status: self.status, head: self.head.clone(), body: self.text() }
    }
    /// The parts of a multipart body: (part headers, payload).
    pub fn parts(&self) -> Vec<(String, Vec<u8>)> {
        let ct = self.header("content-type").expect("a multipart answer has a Content-Type");
        let boundary = ct
            .split(';')
            .find_map(|p| p.trim().strip_prefix("boundary="))
            .map(|b| b.trim_matches('"').to_owned())
            .unwrap_or_else(|| panic!("no boundary in {ct}"));
        let delim = format!("\r\n--{boundary}");
        let mut body = b"\r\n".to_vec();
        body.extend_from_slice(&self.body);
        let find = |hay: &[u8], from: usize| hay[from..].windows(delim.len()).position(|w| w == delim.as_bytes()).map(|i| i + from);
        let mut out = Vec::new();
        let mut pos = find(&body, 0).expect("a first boundary");
        loop {
            let after = pos + delim.len();
            if body[after..].starts_with(b"--") {
                break;
            }
            let head_end = body[after..].windows(4).position(|w| w == b"\r\n\r\n").expect("part headers") + after;
            let next = find(&body, head_end + 4).expect("the multipart body is truncated");
            out.push((String::from_utf8_lossy(&body[after + 2..head_end]).into_owned(), body[head_end + 4..next].to_vec()));
            pos = next;
        }
        out
    }
}

/// One request over a fresh TLS connection, answered with a binary (maybe chunked) body.
pub async fn request_raw(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<RawAnswer> {
    let f = raw_http::fetch(addr, cfg, method, path, headers).await?;
    Ok(RawAnswer { status: f.status, head: f.head, body: f.body, complete: f.complete })
}

/// Log in as staff and return the whole login answer (token, share base, expiry).
pub async fn staff_login_json(b: &Broker, username: &str, role: broker::Role) -> (Arc<ClientConfig>, serde_json::Value) {
    let opened = broker::open(b.data(), broker::MasterKeySource::KeyFile).unwrap();
    let creds = opened.accounts.add_staff(username, role, "ward-7").unwrap();
    let issued = broker::issue_client_cert(b.data(), username, 30).unwrap();
    let (cert, key) = broker::write_pair(&b.data().join("test-certs"), username, &issued).unwrap();
    let cfg = b.client(Some((&cert, &key)));
    let body = serde_json::json!({"username": username, "password": creds.password.as_str(), "totp": totp(&creds.totp_base32, 0)});
    let r = post_json(b.addr(), cfg.clone(), "/api/v1/login", None, &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    (cfg, r.json())
}

/// Every file under `dir`, recursively (for scanning a data directory's bytes).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The real DICOM file `name` from pydicom's test data; fails naming what to install.
pub fn pydicom_file(name: &str) -> PathBuf {
    let out = std::process::Command::new("python3")
        .args(["-c", &format!("from pydicom.data import get_testdata_file; print(get_testdata_file({name:?}))")])
        .output()
        .expect("python3 is needed: run .ci/run or install python3");
    assert!(
        out.status.success(),
        "pydicom is needed for real DICOM samples: pip install pydicom (or run .ci/run): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}
