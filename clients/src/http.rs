//! HTTPS to the broker: rustls (ring) with the profile's CA, presenting the client
//! certificate when there is one (mutual TLS), HTTP/1.1 through hyper.
//!
//! Each request opens its own connection: a client command makes a handful of requests,
//! and a fresh connection never carries a previous request's state. The API is blocking
//! (a private current-thread runtime) so the CLI and scripts stay simple.
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// An answer from the server: status, content type and the whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON, or an error naming the failure (not the body: it may hold PHI).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| Error::Protocol(format!("the JSON answer does not have the expected shape ({})", e.classify_kind())))
    }
}

trait Classify {
    fn classify_kind(&self) -> &'static str;
}
impl Classify for serde_json::Error {
    fn classify_kind(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "fields missing or of the wrong type",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// Where [`Client::stream_get`] delivers a successful answer.
pub trait StreamSink {
    /// The status and headers, before any of the body.
    fn head(&mut self, head: &hyper::http::response::Parts) -> Result<()>;
    /// The next piece of the body.
    fn chunk(&mut self, data: &[u8]) -> Result<()>;
}

/// A connection target: base URL, TLS configuration and (optionally) a bearer token.
pub struct Client {
    base: String,
    authority: String,
    server_name: ServerName<'static>,
    addr: String,
    tls: Arc<rustls::ClientConfig>,
    token: Option<Zeroizing<String>>,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client {{ base: {}, token: {} }}", self.base, if self.token.is_some() { "<set>" } else { "<none>" })
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io("reading", path, e))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = read_file(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::Tls(format!("{} is not a PEM certificate file", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!("{} holds no certificate; give the PEM file the administrator issued", path.display())));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let bytes = Zeroizing::new(read_file(path)?);
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| Error::Tls(format!("{} holds no private key in PEM form", path.display())))
}

impl Client {
    /// A client for `base_url` (https only) trusting `ca`, presenting `identity` (cert, key
    /// PEM files) if given.
    pub fn new(base_url: &str, ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Client> {
        let rest = base_url
            .strip_prefix("https://")
            .ok_or_else(|| Error::Profile("the server URL must start with https://".into()))?;
        let authority = rest.trim_end_matches('/').to_owned();
        if authority.is_empty() || authority.contains('/') {
            return Err(Error::Profile("the server URL must be https://host[:port] with no path".into()));
        }
        let uri: Uri = format!("https://{authority}/")
            .parse()
            .map_err(|_| Error::Profile("the server URL is not a valid URL".into()))?;
        let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(host.clone()).map_err(|_| Error::Profile("the server URL's host is not a valid name".into()))?;
        let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };

        let mut roots = rustls::RootCertStore::empty();
        for c in load_certs(ca)? {
            roots.add(c).map_err(|_| Error::Tls(format!("{} is not a usable CA certificate", ca.display())))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(roots);
        let tls = match identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|_| Error::Tls("the client certificate and key do not match; check the profile's cert and key".into()))?,
            None => builder.with_no_client_auth(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Connect(format!("cannot start the I/O runtime: {e}")))?;
        Ok(Client { base: base_url.trim_end_matches('/').to_owned(), authority, server_name, addr, tls: Arc::new(tls), token: None, rt })
    }

    /// Send `Authorization: Bearer <token>` from now on.
    pub fn with_token(mut self, token: Zeroizing<String>) -> Client {
        self.token = Some(token);
        self
    }

    /// Whether a token is set.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// One request; any answer (including error statuses) is returned as is.
    pub fn raw(&self, method: Method, path_and_query: &str, content_type: Option<&str>, body: Bytes, accept: Option<&str>) -> Result<Answer> {
        let req = self.request(method, path_and_query, content_type, body, accept)?;
        self.rt.block_on(self.exchange(req))
    }

    fn request(&self, method: Method, path_and_query: &str, content_type: Option<&str>, body: Bytes, accept: Option<&str>) -> Result<Request<Full<Bytes>>> {
        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(HOST, &self.authority)
            .body(Full::new(body))
            .map_err(|_| Error::Usage("the request path is not valid; check the identifiers given".into()))?;
        if let Some(ct) = content_type {
            req.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_str(ct).map_err(|_| Error::Usage("bad content type".into()))?);
        }
        if let Some(a) = accept {
            req.headers_mut().insert(hyper::header::ACCEPT, HeaderValue::from_str(a).map_err(|_| Error::Usage("bad accept type".into()))?);
        }
        if let Some(t) = &self.token {
            let v = Zeroizing::new(format!("Bearer {}", t.as_str()));
            let mut hv = HeaderValue::from_str(&v).map_err(|_| Error::Token("the token has characters a header cannot carry; copy it again".into()))?;
            hv.set_sensitive(true);
            req.headers_mut().insert(AUTHORIZATION, hv);
        }
        Ok(req)
    }

    /// GET whose 2xx body is handed to `on_data` piece by piece as it arrives, never held
    /// whole (large downloads); `on_head` sees the headers first. An error status is
    /// returned as the matching [`Error`]; a body that breaks off before its end is an
    /// [`Error::Connect`], so a truncated download is never taken for a complete one.
    pub fn get_streaming(
        &self,
        path_and_query: &str,
        accept: Option<&str>,
        on_head: &mut dyn FnMut(&hyper::HeaderMap) -> Result<()>,
        on_data: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let req = self.request(Method::GET, path_and_query, None, Bytes::new(), accept)?;
        self.rt.block_on(async {
            let (resp, driver) = self.send(req).await?;
            let status = resp.status().as_u16();
            if !(200..300).contains(&status) {
                let content_type = resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let body = resp.into_body().collect().await.map_err(|e| Error::Connect(format!("reading the answer: {e}")))?.to_bytes();
                driver.abort();
                return Err(error_from(&Answer { status, content_type, body }));
            }
            on_head(resp.headers())?;
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| Error::Connect(format!("the answer broke off before its end: {e}")))?;
                if let Some(d) = frame.data_ref() {
                    on_data(d)?;
                }
            }
            driver.abort();
            Ok(())
        })
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<(hyper::Response<hyper::body::Incoming>, tokio::task::JoinHandle<()>)> {
        let tcp = tokio::net::TcpStream::connect(&self.addr).await.map_err(|e| Error::Connect(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| Error::Connect(format!("TLS handshake failed: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = sender.send_request(req).await.map_err(|e| Error::Connect(e.to_string()))?;
        Ok((resp, driver))
    }

    async fn exchange(&self, req: Request<Full<Bytes>>) -> Result<Answer> {
        let (resp, driver) = self.send(req).await?;
        let status = resp.status().as_u16();
        let content_type = resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = resp.into_body().collect().await.map_err(|e| Error::Connect(format!("reading the answer: {e}")))?.to_bytes();
        driver.abort();
        Ok(Answer { status, content_type, body })
    }

    /// GET `path` and hand the answer to `sink` as it arrives (head first, then the body
    /// chunk by chunk), never holding the body whole. A non-2xx answer is read whole (it
    /// is a small JSON error) and becomes the matching [`Error`].
    pub fn stream_get(&self, path: &str, accept: &str, sink: &mut dyn StreamSink) -> Result<()> {
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(HOST, &self.authority)
            .header(hyper::header::ACCEPT, accept)
            .body(Full::new(Bytes::new()))
            .map_err(|_| Error::Usage("the request path is not valid; check the identifiers given".into()))?;
        if let Some(t) = &self.token {
            let v = Zeroizing::new(format!("Bearer {}", t.as_str()));
            let mut hv = HeaderValue::from_str(&v).map_err(|_| Error::Token("the token has characters a header cannot carry; copy it again".into()))?;
            hv.set_sensitive(true);
            req.headers_mut().insert(AUTHORIZATION, hv);
        }
        self.rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(&self.addr).await.map_err(|e| Error::Connect(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| Error::Connect(format!("TLS handshake failed: {e}")))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| Error::Connect(e.to_string()))?;
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            let resp = sender.send_request(req).await.map_err(|e| Error::Connect(e.to_string()))?;
            let (parts, mut body) = resp.into_parts();
            let status = parts.status.as_u16();
            if !(200..300).contains(&status) {
                let content_type = parts.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let body = body.collect().await.map_err(|e| Error::Connect(format!("reading the answer: {e}")))?.to_bytes();
                driver.abort();
                return Err(error_from(&Answer { status, content_type, body }));
            }
            sink.head(&parts)?;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|_| {
                    Error::Connect("the server aborted the answer midway (files completed so far are whole; run the command again)".into())
                })?;
                if let Some(data) = frame.data_ref() {
                    sink.chunk(data)?;
                }
            }
            driver.abort();
            Ok(())
        })
    }

    /// A request whose success is a 2xx; anything else becomes the matching [`Error`].
    pub fn call(&self, method: Method, path: &str, content_type: Option<&str>, body: Bytes, accept: Option<&str>) -> Result<Answer> {
        let a = self.raw(method, path, content_type, body, accept)?;
        if (200..300).contains(&a.status) {
            Ok(a)
        } else {
            Err(error_from(&a))
        }
    }

    /// GET, expecting JSON.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None, Bytes::new(), Some("application/json"))?.json()
    }

    /// POST JSON, expecting JSON.
    pub fn post_json<T: serde::de::DeserializeOwned>(&self, path: &str, body: &serde_json::Value) -> Result<T> {
        self.send_json(Method::POST, path, body)
    }

    /// Any method with a JSON body, expecting JSON.
    pub fn send_json<T: serde::de::DeserializeOwned>(&self, method: Method, path: &str, body: &serde_json::Value) -> Result<T> {
        let bytes = Bytes::from(serde_json::to_vec(body).map_err(|e| Error::Usage(format!("cannot encode the request: {e}")))?);
        self.call(method, path, Some("application/json"), bytes, Some("application/json"))?.json()
    }
}

/// Map an error answer to an [`Error`], keeping the server's (PHI-free) message.
pub(crate) fn error_from(a: &Answer) -> Error {
    #[derive(serde::Deserialize)]
    struct Body {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        code: String,
        message: String,
    }
    let (code, message) = match serde_json::from_slice::<Body>(&a.body) {
        Ok(b) => (b.error.code, b.error.message),
        // Not the broker's error format: do not echo the body, it is not ours to trust.
        Err(_) => ("unknown".to_owned(), format!("HTTP {} without the Cleave error format", a.status)),
    };
    match a.status {
        401 => Error::Unauthorized { message },
        403 => Error::Forbidden { message },
        404 => Error::NotFound { message },
        501 => Error::NotAvailable { message },
        status => Error::Server { status, code, message },
    }
}

/// Percent-encode one query value or path segment (RFC 3986 unreserved kept).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
