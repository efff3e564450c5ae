//! T10 and T11: an attacker on the LAN (here: loopback only) tries plaintext, old TLS,
//! weak suites, no client certificate, oversized bodies and slow request heads. Every
//! probe is bounded in count and time.
mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw ClientHello with `version` as legacy_version (no supported_versions extension,
/// so a TLS 1.3 server must treat it as that version) offering `suites`.
fn client_hello(version: [u8; 2], suites: &[u16]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version);
    body.extend_from_slice(&[0x42; 32]);
    body.push(0);
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]);
    let mut ext: Vec<u8> = Vec::new();
    // server_name "localhost"
    ext.extend_from_slice(&[0x00, 0x00, 0x00, 0x0e, 0x00, 0x0c, 0x00, 0x00, 0x09]);
    ext.extend_from_slice(b"localhost");
    // supported_groups: x25519, secp256r1; ec_point_formats: uncompressed
    ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, ed25519, rsa_pkcs1_sha256
    ext.extend_from_slice(&[0x00, 0x0d, 0x00, 0x0a, 0x00, 0x08, 0x04, 0x03, 0x08, 0x04, 0x08, 0x07, 0x04, 0x01]);
    // extended_master_secret
    ext.extend_from_slice(&[0x00, 0x17, 0x00, 0x00]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Send `bytes` on a fresh TCP connection and collect what comes back within 5 s.
async fn probe(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    // Read until EOF, error, timeout, or enough to classify.
    while out.len() < 5 + 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    out
}

/// A TLS record of type handshake whose first message is a ServerHello.
fn is_server_hello(out: &[u8]) -> bool {
    out.first() == Some(&0x16) && out.get(5) == Some(&0x02)
}

#[tokio::test]
async fn plaintext_and_downgraded_connections_are_refused() {
    let b = start(TEST_CONFIG, true).await;
    let admin = b.admin_client();

    // The detector sees a plaintext HTTP answer when there is one: a toy plaintext server.
    let toy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let toy_addr = toy.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = toy.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    });
    let plain = b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: localhost\r\n\r\n";
    assert!(probe(toy_addr, plain).await.starts_with(b"HTTP/"), "the plaintext detector is blind");
    // Neither listener answers plaintext HTTP.
    for addr in [b.addr(), b.consultant()] {
        let out = probe(addr, plain).await;
        assert!(!out.starts_with(b"HTTP/") && !String::from_utf8_lossy(&out).contains("openapi"), "plaintext answered on {addr}");
    }

    // The detector recognises a ServerHello: a raw TLS 1.2 hello with modern suites gets one.
    let modern = [0xc02b, 0xc02f, 0xcca9, 0xcca8];
    let ok = probe(b.addr(), &client_hello([0x03, 0x03], &modern)).await;
    assert!(is_server_hello(&ok), "TLS 1.2 with AEAD suites should be negotiated: {:02x?}", &ok[..ok.len().min(8)]);
    // SSL 3.0, TLS 1.0, TLS 1.1, and TLS 1.2 with only non-forward-secret or CBC suites.
    let legacy = [0xc013, 0xc014, 0x002f, 0x0035, 0x000a, 0x0005];
    for (what, hello) in [
        ("SSL 3.0", client_hello([0x03, 0x00], &legacy)),
        ("TLS 1.0", client_hello([0x03, 0x01], &legacy)),
        ("TLS 1.1", client_hello([0x03, 0x02], &legacy)),
        ("TLS 1.2 legacy suites", client_hello([0x03, 0x03], &legacy)),
    ] {
        for addr in [b.addr(), b.consultant()] {
            let out = probe(addr, &hello).await;
            assert!(!is_server_hello(&out), "{what} was negotiated on {addr}");
            assert_eq!(out.first(), Some(&0x15), "{what}: expected a TLS alert, got {:02x?}", &out[..out.len().min(8)]);
        }
    }

    // Without a client certificate the mutual-TLS listener refuses; with one it answers.
    assert_eq!(get(b.addr(), admin.clone(), "/api/v1/openapi.json", None).await.status, 200);
    assert!(request(b.addr(), b.client(None), "GET", "/api/v1/openapi.json", &[], b"").await.is_err());
    // A self-signed certificate with the right name, not issued by the broker's CA.
    let rogue = tempfile::tempdir().unwrap();
    broker::open(rogue.path(), broker::MasterKeySource::KeyFile).unwrap();
    let rb = rogue.path().join("bootstrap");
    let rogue_cfg = client_config(&b.ca_pem(), Some((&rb.join("admin.pem"), &rb.join("admin.key"))));
    assert!(request(b.addr(), rogue_cfg, "GET", "/api/v1/openapi.json", &[], b"").await.is_err());
    // Still healthy.
    assert_eq!(get(b.addr(), admin, "/api/v1/openapi.json", None).await.status, 200);
}

#[tokio::test]
async fn oversized_and_slow_requests_are_cut_off() {
    let b = start(TEST_CONFIG, false).await;
    let admin = b.admin_client();
    let json = [("Content-Type", "application/json")];

    // Oracle: a small bad login is judged (401), so a 413 below is the size limit speaking.
    let small = serde_json::json!({"username": "admin", "password": "x", "totp": "000000"}).to_string();
    let a = request(b.addr(), admin.clone(), "POST", "/api/v1/login", &json, small.as_bytes()).await.unwrap();
    assert_eq!(a.status, 401, "{}", a.body);
    // Over the 4096-byte limit, declared.
    let big = format!("{{\"username\":\"admin\",\"password\":\"{}\",\"totp\":\"000000\"}}", "a".repeat(8192));
    let a = request(b.addr(), admin.clone(), "POST", "/api/v1/login", &json, big.as_bytes()).await.unwrap();
    assert_eq!((a.status, a.error_code().as_str()), (413, "payload_too_large"));
    // Over the limit, chunked (no Content-Length to check up front).
    let mut chunked = b"POST /api/v1/login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        chunked.extend_from_slice(format!("{:x}\r\n{}\r\n", 2048, "a".repeat(2048)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let a = raw_request(b.addr(), admin.clone(), &chunked).await.unwrap();
    assert_eq!(a.status, 413, "{}", a.body);
    // A 1 GiB Content-Length: refused as soon as the bytes sent pass the limit, without
    // reading (or buffering) the rest. (The header alone is not refused up front; a body
    // that then stalls is cut off by the rate floor, see the next test.)
    let started = Instant::now();
    let mut liar = b"POST /api/v1/login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n".to_vec();
    liar.extend_from_slice(&[b'a'; 8192]);
    let a = tokio::time::timeout(Duration::from_secs(10), raw_request(b.addr(), admin.clone(), &liar)).await;
    let a = a.expect("a 1 GiB Content-Length held the connection open").unwrap();
    assert_eq!(a.status, 413, "{}", a.body);
    assert!(started.elapsed() < Duration::from_secs(5));
    // A huge request head (100 KiB of headers) is refused, not served.
    let mut head = b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n".to_vec();
    for i in 0..100 {
        head.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "b".repeat(1000)).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    match raw_request(b.addr(), admin.clone(), &head).await {
        Ok(a) => assert!(a.status == 431 || a.status == 400, "a 100 KiB head was answered {}", a.status),
        Err(_) => {} // closed without an answer: also refused
    }

    // Slow loris: ten connections each dribbling a request head one byte per 300 ms.
    // Oracle: the same head sent at once is served.
    let head = b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let fast = raw_request(b.addr(), admin.clone(), &[&head[..head.len() - 2], b"Connection: close\r\n\r\n"].concat()).await.unwrap();
    assert_eq!(fast.status, 200);
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..10 {
        let cfg = admin.clone();
        let addr = b.addr();
        slow.push(tokio::spawn(async move {
            let tls = tls_connect(addr, cfg).await.unwrap();
            let (mut rd, mut wr) = tokio::io::split(tls);
            let writer = tokio::spawn(async move {
                for byte in head.iter() {
                    if wr.write_all(&[*byte]).await.is_err() || wr.flush().await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            });
            let mut out = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(15), rd.read_to_end(&mut out)).await;
            writer.abort();
            (r.is_ok(), Instant::now(), String::from_utf8_lossy(&out).into_owned())
        }));
    }
    // While they dribble, the server still serves others.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(b.addr(), admin.clone(), "/api/v1/openapi.json", None).await.status, 200);
    for s in slow {
        let (closed, at, text) = s.await.unwrap();
        assert!(closed, "a slow connection was still open after 15 s");
        let took = at - started;
        // The head needs ~27 s at this pace; the 2 s header timeout must end it far sooner.
        assert!(took < Duration::from_secs(8), "cut off only after {took:?}");
        assert!(!text.contains("200 OK"), "a slow request head was served");
    }
    assert_eq!(get(b.addr(), admin, "/api/v1/openapi.json", None).await.status, 200);
}

/// Send `head`, then `body` in `pieces` equal parts with `pause` between them; the answer.
async fn dribble(addr: std::net::SocketAddr, cfg: std::sync::Arc<rustls::ClientConfig>, head: String, body: Vec<u8>, pieces: usize, pause: Duration) -> (Duration, String) {
    let tls = tls_connect(addr, cfg).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let step = body.len().div_ceil(pieces);
        for piece in body.chunks(step) {
            if wr.write_all(piece).await.is_err() || wr.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(pause).await;
        }
    });
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut out)).await;
    writer.abort();
    assert!(r.is_ok(), "the connection was still open after 30 s");
    (started.elapsed(), String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn slow_request_bodies_are_cut_off_and_store_nothing() {
    // body_grace_secs = 2 and min_body_bytes_per_sec = 200 in TEST_CONFIG.
    let b = start(TEST_CONFIG, false).await;
    let admin = b.admin_client();
    let login = serde_json::json!({"username": "admin", "password": "x", "totp": "000000"}).to_string().into_bytes();
    let head = |len: usize| {
        format!("POST /api/v1/login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n")
    };
    // Oracle: the same body with one short pause (inside the grace) is judged on its merits.
    let (_, text) = dribble(b.addr(), admin.clone(), head(login.len()), login.clone(), 2, Duration::from_millis(800)).await;
    assert!(text.starts_with("HTTP/1.1 401"), "a body with a short pause was not judged: {text}");
    // A body trickled at ~2 bytes/s: 408 soon after the grace, long before it would end.
    let (took, text) = dribble(b.addr(), admin.clone(), head(login.len()), login.clone(), login.len(), Duration::from_millis(500)).await;
    assert!(text.starts_with("HTTP/1.1 408"), "a trickled body was not cut off: {text}");
    assert!(text.contains("request_timeout"), "not the one error format: {text}");
    assert!(took < Duration::from_secs(10), "cut off only after {took:?}");

    // The same against STOW-RS, with a real instance: 408, and nothing reaches the stores.
    let modality = device(&b, "ct-slow").await;
    let (dev_cfg, dev) = (modality.cfg.clone(), modality.token.clone());
    let ct = std::fs::read(pydicom_file("CT_small.dcm")).unwrap();
    let boundary = "slow-body-boundary-5e1";
    let mut body = format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").into_bytes();
    body.extend_from_slice(&ct[..4096]);
    let stow_head = format!(
        "POST /dicomweb/studies HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {dev}\r\nContent-Type: multipart/related; type=\"application/dicom\"; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
        body.len() + ct.len()
    );
    let (took, text) = dribble(b.addr(), dev_cfg, stow_head, body, 64, Duration::from_millis(500)).await;
    assert!(text.starts_with("HTTP/1.1 408"), "a trickled STOW-RS body was not cut off: {text}");
    assert!(took < Duration::from_secs(12), "cut off only after {took:?}");
    let nurse = person(&b, "nurse-slow", broker::Role::Nurse).await;
    let r = get(b.addr(), nurse.cfg.clone(), "/dicomweb/studies", Some(&nurse.token)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json().as_array().map(Vec::len), Some(0), "a cut-off STOW-RS stored something: {}", r.body);
}
