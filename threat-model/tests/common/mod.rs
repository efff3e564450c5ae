//! Shared attacker tooling: a real broker on 127.0.0.1:0, real TLS clients (one certificate
//! per role), a raw macaroon V2 codec for token surgery, and a byte scanner for canaries.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Limits small enough to attack quickly.
pub const TEST_CONFIG: &str = "
header_read_timeout_secs = 2
idle_timeout_secs = 30
body_grace_secs = 2
min_body_bytes_per_sec = 200
handshake_timeout_secs = 3
max_body_bytes = 4096
[login]
max_failures_per_account = 1000
max_failures_per_address = 1000
window_secs = 900
";

pub const PATIENT: &str = "P1-00112233445566778899aabbccddeeff";
pub const OTHER_PATIENT: &str = "P1-ffeeddccbbaa99887766554433221100";

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
    pub fn client(&self, cert: Option<(&Path, &Path)>) -> Arc<ClientConfig> {
        client_config(&self.ca_pem(), cert)
    }
    pub fn admin_client(&self) -> Arc<ClientConfig> {
        let d = self.data().join("bootstrap");
        self.client(Some((&d.join("admin.pem"), &d.join("admin.key"))))
    }
}

/// Start a real broker in this process on loopback.
pub async fn start(config: &str, consultant: bool) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(broker::CONFIG_FILE), config).unwrap();
    start_in(dir, consultant).await
}

/// Start a real broker on loopback on the data directory in `dir`: a new one, or the one a
/// stopped broker left (after the attacker has had the disk).
pub async fn start_in(dir: tempfile::TempDir, consultant: bool) -> Broker {
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
    /// The `error.code` of the one JSON error format (panics if the body is not in it).
    pub fn error_code(&self) -> String {
        let j = self.json();
        let msg = j["error"]["message"].as_str().unwrap_or_else(|| panic!("not the error format: {}", self.body));
        assert!(!msg.is_empty());
        j["error"]["code"].as_str().unwrap().to_owned()
    }
}

/// A fresh TLS connection to the broker (as `localhost`) with the client config `cfg`.
pub async fn tls_connect(addr: SocketAddr, cfg: Arc<ClientConfig>) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(cfg).connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

/// Send raw request bytes over a fresh TLS connection and read the whole answer.
pub async fn raw_request(addr: SocketAddr, cfg: Arc<ClientConfig>, bytes: &[u8]) -> std::io::Result<Answer> {
    let mut tls = tls_connect(addr, cfg).await?;
    tls.write_all(bytes).await?;
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

/// One request over a fresh TLS connection. `Err` if the handshake or the exchange fails.
pub async fn request(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Answer> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    raw_request(addr, cfg, &bytes).await
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

/// `method path` with a bearer token and an empty JSON body.
pub async fn call(addr: SocketAddr, cfg: Arc<ClientConfig>, method: &str, path: &str, token: &str) -> Answer {
    let auth = format!("Bearer {token}");
    request(addr, cfg, method, path, &[("Authorization", &auth), ("Content-Type", "application/json")], b"{}").await.unwrap()
}

/// Whether a request passed authorization: anything but 401/403 from a handler (which
/// authorizes before reading a body): 2xx, a 400/404 about the body or the record after
/// authorization, or 501 where the store is not wired yet. A 5xx other than 501 is a bug,
/// never an "allowed".
pub fn allowed(a: &Answer) -> bool {
    match a.status {
        401 | 403 => false,
        501 => true,
        s => {
            assert!(s < 500, "server error {s}: {}", a.body);
            true
        }
    }
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

/// A file from pydicom's bundled test data (real DICOM). Fails naming what to install.
pub fn pydicom_file(name: &str) -> PathBuf {
    let out = std::process::Command::new("python3")
        .args(["-c", &format!("from pydicom.data import get_testdata_file; print(get_testdata_file({name:?}))")])
        .output()
        .expect("python3 is needed: run .ci/run or install python3");
    assert!(out.status.success(), "pydicom is needed for real DICOM samples: pip install pydicom (or run .ci/run)");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A staff member or device with its own client certificate and a token.
pub struct Person {
    pub cfg: Arc<ClientConfig>,
    pub cert: PathBuf,
    pub token: String,
    pub share_base: Option<String>,
}

/// Create an account with `role`, issue it a client certificate, and log in with it.
pub async fn person(b: &Broker, username: &str, role: broker::Role) -> Person {
    let opened = broker::open(b.data(), broker::MasterKeySource::KeyFile).unwrap();
    let creds = opened.accounts.add_staff(username, role, "ward-7").unwrap();
    let issued = broker::issue_client_cert(b.data(), username, 30).unwrap();
    let (cert, key) = broker::write_pair(&b.data().join("test-certs"), username, &issued).unwrap();
    let cfg = b.client(Some((&cert, &key)));
    let r = post_json(
        b.addr(),
        cfg.clone(),
        "/api/v1/login",
        None,
        &serde_json::json!({"username": username, "password": creds.password.as_str(), "totp": totp(&creds.totp_base32, 0)}),
    )
    .await;
    assert_eq!(r.status, 200, "login of {username}: {}", r.body);
    let j = r.json();
    Person {
        cfg,
        cert,
        token: j["token"].as_str().unwrap().to_owned(),
        share_base: j["share_base"].as_str().map(str::to_owned),
    }
}

/// An enrolled modality with its device token.
pub async fn device(b: &Broker, label: &str) -> Person {
    let opened = broker::open(b.data(), broker::MasterKeySource::KeyFile).unwrap();
    let issued = broker::issue_client_cert(b.data(), label, 30).unwrap();
    opened.accounts.add_device(issued.fingerprint.hex(), label, "CT_2", "test").unwrap();
    let (cert, key) = broker::write_pair(&b.data().join("test-certs"), label, &issued).unwrap();
    let cfg = b.client(Some((&cert, &key)));
    let r = post_json(b.addr(), cfg.clone(), "/api/v1/device/token", None, &serde_json::json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    Person { cfg, cert, token: r.json()["token"].as_str().unwrap().to_owned(), share_base: None }
}

// ---------------------------------------------------------------------------------------
// Token surgery: an independent libmacaroons V2 codec, so an attack can drop, reorder or
// replace caveats while keeping the signature, as a thief with only the token would.
// ---------------------------------------------------------------------------------------

/// A V2 macaroon taken apart. Each caveat is its raw field list (type, data) up to its EOS.
#[derive(Clone, Debug, PartialEq)]
pub struct RawMacaroon {
    pub header: Vec<(u64, Vec<u8>)>,
    pub caveats: Vec<Vec<(u64, Vec<u8>)>>,
    pub signature: Vec<u8>,
}

fn varint(b: &[u8], at: &mut usize) -> u64 {
    let mut n = 0u64;
    let mut shift = 0;
    loop {
        let byte = b[*at];
        *at += 1;
        n |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return n;
        }
        shift += 7;
    }
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn section(b: &[u8], at: &mut usize) -> Vec<(u64, Vec<u8>)> {
    let mut fields = Vec::new();
    loop {
        let ty = varint(b, at);
        if ty == 0 {
            return fields;
        }
        let len = varint(b, at) as usize;
        fields.push((ty, b[*at..*at + len].to_vec()));
        *at += len;
    }
}

impl RawMacaroon {
    pub fn parse(token: &str) -> RawMacaroon {
        let b = cleave_tokens::Macaroon::parse(token).unwrap().to_bytes();
        assert_eq!(b[0], 2, "V2 macaroon");
        let mut at = 1;
        let header = section(&b, &mut at);
        let mut caveats = Vec::new();
        loop {
            let c = section(&b, &mut at);
            if c.is_empty() {
                break;
            }
            caveats.push(c);
        }
        let ty = varint(&b, &mut at);
        assert_eq!(ty, 6, "signature field");
        let len = varint(&b, &mut at) as usize;
        let signature = b[at..at + len].to_vec();
        assert_eq!(at + len, b.len(), "trailing bytes");
        RawMacaroon { header, caveats, signature }
    }

    pub fn encode(&self) -> String {
        let mut out = vec![2u8];
        let put = |out: &mut Vec<u8>, fields: &[(u64, Vec<u8>)]| {
            for (ty, data) in fields {
                put_varint(out, *ty);
                put_varint(out, data.len() as u64);
                out.extend_from_slice(data);
            }
            out.push(0);
        };
        put(&mut out, &self.header);
        for c in &self.caveats {
            put(&mut out, c);
        }
        out.push(0);
        put_varint(&mut out, 6);
        put_varint(&mut out, self.signature.len() as u64);
        out.extend_from_slice(&self.signature);
        cleave_tokens::Macaroon::from_bytes(&out).unwrap().serialize()
    }

    /// The first-party predicates, in order.
    pub fn predicates(&self) -> Vec<String> {
        self.caveats
            .iter()
            .map(|c| c.iter().find(|(t, _)| *t == 2).map(|(_, d)| String::from_utf8_lossy(d).into_owned()).unwrap_or_default())
            .collect()
    }

    /// Index of the caveat whose predicate starts with `prefix`.
    pub fn find(&self, prefix: &str) -> usize {
        self.predicates().iter().position(|p| p.starts_with(prefix)).unwrap_or_else(|| panic!("no caveat {prefix}: {:?}", self.predicates()))
    }

    /// Replace the predicate of caveat `i`.
    pub fn set_predicate(&mut self, i: usize, text: &str) {
        for f in &mut self.caveats[i] {
            if f.0 == 2 {
                f.1 = text.as_bytes().to_vec();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Canary scanning over bytes.
// ---------------------------------------------------------------------------------------

/// Every encoding of `canary` a leak could take: as given, upper, lower, and each of those
/// in UTF-16LE.
pub fn variants(canary: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for s in [canary.to_owned(), canary.to_uppercase(), canary.to_lowercase()] {
        let utf16: Vec<u8> = s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        for v in [s.into_bytes(), utf16] {
            if !out.contains(&v) {
                out.push(v);
            }
        }
    }
    out
}

/// The canaries (by index) found anywhere in `hay`.
pub fn scan_bytes(hay: &[u8], needles: &[Vec<Vec<u8>>]) -> Vec<usize> {
    let mut hits = Vec::new();
    for (i, vs) in needles.iter().enumerate() {
        if vs.iter().any(|v| !v.is_empty() && memchr::memmem::find(hay, v).is_some()) {
            hits.push(i);
        }
    }
    hits
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------
// Process memory scanning (T3): every readable private mapping of a live process, read
// through /proc/<pid>/mem (needs root or ptrace rights over the child).
// ---------------------------------------------------------------------------------------

/// Hits of each needle in process `pid`'s readable memory (file-backed read-only mappings
/// skipped: they hold code and constants, not request data), as "what: Nx in region".
pub fn scan_process_memory(pid: u32, needles: &[(&str, Vec<u8>)]) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut hits = Vec::new();
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 2 || !f[1].starts_with('r') {
            continue;
        }
        let name = f.get(5).copied().unwrap_or("[anon]");
        if name.starts_with('/') && !f[1].contains('w') {
            continue;
        }
        let Some((a, b)) = f[0].split_once('-') else { continue };
        let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else { continue };
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        for (what, n) in needles {
            let c = memchr::memmem::find_iter(&buf, n).count();
            if c > 0 {
                hits.push(format!("{what}: {c}x in {name} {}", f[0]));
            }
        }
    }
    hits
}
