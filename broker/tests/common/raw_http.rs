//! One HTTP/1.1 request over a fresh TLS connection, read to the end, with the chunked
//! transfer coding undone by hand: what tests need to see a response the server cut short
//! (hyper's client would only report an error). Shared with the threat model's attack
//! tests (`#[path]`), so it depends on tokio and rustls only.
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Status, head, body (chunked coding removed), and whether a chunked body ended with its
/// last chunk (false: the server aborted it).
pub struct Fetched {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
    pub complete: bool,
}

/// Sends `method path` with `headers` (and an empty body) and reads the answer to the end.
pub async fn fetch(addr: SocketAddr, cfg: Arc<ClientConfig>, method: &str, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Fetched> {
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = TlsConnector::from(cfg).connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).await?;
    tls.flush().await?;
    let mut out = Vec::new();
    // An aborted response ends the TLS stream without close_notify: keep what arrived.
    let _ = tls.read_to_end(&mut out).await;
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| std::io::Error::other("no HTTP answer"))?;
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let raw = &out[split + 4..];
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| std::io::Error::other("no status"))?;
    let chunked = head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked"));
    if !chunked {
        return Ok(Fetched { status, head, body: raw.to_vec(), complete: true });
    }
    let (mut body, mut i, mut complete) = (Vec::new(), 0usize, false);
    while let Some(eol) = raw[i..].windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&raw[i..i + eol]).split(';').next().unwrap_or("").trim(), 16);
        let Ok(size) = size else { break };
        i += eol + 2;
        if size == 0 {
            complete = true;
            break;
        }
        if i + size > raw.len() {
            break;
        }
        body.extend_from_slice(&raw[i..i + size]);
        i += size + 2;
    }
    Ok(Fetched { status, head, body, complete })
}
