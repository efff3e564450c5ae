//! Forwarding the audit log to an ATNA audit record repository: syslog over TLS (RFC 5425,
//! octet-counted RFC 5424 messages carrying the PS3.15 A.5 `AuditMessage`, formatted by
//! `cleave_audit::syslog`). Configured by `[audit_syslog]` in `cleave.toml`.
//!
//! The signed log stays the record; the collector gets a copy. So forwarding never slows
//! or fails a request, and it reads what to send from the log itself rather than from a
//! queue: one thread sends the entries in order from a cursor, the index of the next entry
//! to send, kept in `<data>/audit/syslog-cursor`. Nothing is dropped while the collector
//! is away, however long, and nothing is lost when the broker stops or crashes: the next
//! run goes on from the cursor. The first run with forwarding on starts at the log's first
//! entry, so the collector holds the whole trail.
//!
//! Delivery is at least once. A batch whose write fails is sent again on the next
//! connection, and the cursor is saved at most once a second, so a crash can repeat the
//! last second's entries. RFC 5425 has no acknowledgment, so entries written into a
//! connection that dies before the collector reads them can still be missed; each message
//! names its leaf (`origin#index`), which lets a collector find both gaps and repeats.
//!
//! The collector is authenticated by its certificate (the configured CA and name); with
//! `client_cert` and `client_key` the broker presents its own, as IHE ATNA's node
//! authentication asks. Nothing sent holds PHI.
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_audit::atna::AuditSource;
use cleave_audit::{Entry, LogReader};
use serde::{Deserialize, Serialize};

use crate::Error;

/// `[audit_syslog]`: where to send a copy of every audit entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// The collector, `host:port` (6514 is syslog over TLS).
    pub address: String,
    /// The name the collector's certificate must carry.
    pub server_name: String,
    /// PEM bundle of the CA(s) that issue the collector's certificate.
    pub ca: PathBuf,
    /// PEM certificate chain this broker presents to the collector (mutual TLS, as IHE
    /// ATNA asks). Set together with `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// This host's name in the messages' HOSTNAME field.
    #[serde(default)]
    pub hostname: Option<String>,
}

/// Entries read from the log and sent per write.
const BATCH: usize = 256;
/// How long the sending thread sleeps when it has sent everything and nobody woke it.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How often, at most, the cursor is made durable while entries flow.
const CURSOR_EVERY: Duration = Duration::from_secs(1);
/// Connecting, and any one read or write on the connection (the TLS handshake included),
/// gives up after this long: a collector that accepts and then hangs must not stop
/// forwarding for good.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The handle the audit path holds: it wakes the sending thread after each append.
pub struct SyslogForwarder {
    /// Cleared on drop, so the sending thread stops (saving its cursor).
    open: Arc<AtomicBool>,
    thread: std::thread::Thread,
    /// The sending thread's cursor, for the backlog metric.
    next: Arc<AtomicU64>,
}

impl std::fmt::Debug for SyslogForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyslogForwarder")
    }
}

fn client_config(cfg: &SyslogConfig) -> Result<Arc<rustls::ClientConfig>, Error> {
    let ca = &cfg.ca;
    let pem = std::fs::read(ca).map_err(|e| Error::io("reading", ca, e))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        let c = c.map_err(|_| Error::Config(format!("{} is not a PEM certificate bundle; fix [audit_syslog] ca", ca.display())))?;
        roots.add(c).map_err(|_| Error::Config(format!("{} holds an unusable certificate; fix [audit_syslog] ca", ca.display())))?;
    }
    if roots.is_empty() {
        return Err(Error::Config(format!("{} holds no certificate; fix [audit_syslog] ca", ca.display())));
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS setup for syslog: {e}")))?
        .with_root_certificates(roots);
    let cfg = match (&cfg.client_cert, &cfg.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = std::fs::read(cert).map_err(|e| Error::io("reading", cert, e))?;
            let chain: Vec<_> = rustls_pemfile::certs(&mut chain.as_slice())
                .collect::<Result<_, _>>()
                .map_err(|_| Error::Config(format!("{} is not a PEM certificate chain; fix [audit_syslog] client_cert", cert.display())))?;
            if chain.is_empty() {
                return Err(Error::Config(format!("{} holds no certificate; fix [audit_syslog] client_cert", cert.display())));
            }
            let pem = zeroize::Zeroizing::new(std::fs::read(key).map_err(|e| Error::io("reading", key, e))?);
            let key = rustls_pemfile::private_key(&mut pem.as_slice())
                .ok()
                .flatten()
                .ok_or_else(|| Error::Config(format!("{} holds no PEM private key; fix [audit_syslog] client_key", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::Config(format!("[audit_syslog] client_cert and client_key do not go together ({e})")))?
        }
        _ => return Err(Error::Config("[audit_syslog] needs both client_cert and client_key, or neither".into())),
    };
    Ok(Arc::new(cfg))
}

/// Where the sending thread keeps its place in the log.
pub(crate) fn cursor_path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit").join("syslog-cursor")
}

impl SyslogForwarder {
    /// Checks the configuration and starts the sending thread, which goes on from the
    /// cursor at `cursor` (the log's first entry if there is none yet). `origin` is the
    /// log's origin.
    pub fn start(cfg: &SyslogConfig, origin: &str, log: LogReader, cursor: PathBuf) -> Result<Self, Error> {
        let tls = client_config(cfg)?;
        let name = rustls::pki_types::ServerName::try_from(cfg.server_name.clone())
            .map_err(|_| Error::Config("[audit_syslog] server_name is not a DNS name or IP address".into()))?;
        let next = read_cursor(&cursor, log.size())?;
        let open = Arc::new(AtomicBool::new(true));
        let shared_next = Arc::new(AtomicU64::new(next));
        let sender = Sender {
            log,
            cursor,
            next,
            shared_next: shared_next.clone(),
            saved: next,
            address: cfg.address.clone(),
            tls,
            name,
            source: AuditSource { source_id: "cleave-broker".into(), enterprise_site_id: None, log_origin: origin.to_owned() },
            hostname: cfg.hostname.clone().unwrap_or_else(|| "-".into()),
            open: open.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("cleave-audit-syslog".into())
            .spawn(move || sender.run())
            .map_err(|e| Error::Config(format!("cannot start the syslog thread ({e})")))?;
        Ok(SyslogForwarder { open, thread: handle.thread().clone(), next: shared_next })
    }

    /// The next leaf to send.
    pub fn next(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// Tells the sending thread the log has grown; never blocks.
    pub fn notify(&self) {
        self.thread.unpark();
    }
}

impl Drop for SyslogForwarder {
    fn drop(&mut self) {
        self.open.store(false, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// The cursor in `path`: the index of the next entry to send. Missing: 0. Past the end of
/// the log (a log restored from an older backup): the end, with a warning.
fn read_cursor(path: &Path, size: u64) -> Result<u64, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("reading", path, e)),
    };
    let next: u64 = text.trim().parse().map_err(|_| {
        Error::Config(format!("{} is not a syslog cursor (one entry index); delete it to send the whole log again", path.display()))
    })?;
    if next > size {
        tracing::warn!(target: "cleave::audit", next, size, "the syslog cursor is past the end of the audit log; sending from the end");
        return Ok(size);
    }
    Ok(next)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(address: &str, tls: &Arc<rustls::ClientConfig>, name: &rustls::pki_types::ServerName<'static>) -> std::io::Result<Tls> {
    use std::net::ToSocketAddrs;
    let addr = address
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_nodelay(true)?;
    let conn = rustls::ClientConnection::new(tls.clone(), name.clone()).map_err(std::io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    // In TLS 1.3 the client's side of the handshake ends before the collector has judged
    // its certificate; a refusal arrives as an alert just after. Wait for it briefly, so
    // that a refused certificate is a failed connection, not a batch written into one.
    if peer_gone(&mut s, Some(HANDSHAKE_VERDICT)) {
        return Err(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "the collector closed the connection after the handshake (is our client certificate accepted?)"));
    }
    Ok(s)
}

/// How long to wait after the handshake for the collector to refuse us. Paid once per
/// connection, which lives as long as the collector keeps it: generous, so that a loaded
/// host does not mistake a slow refusal for an accepted connection.
const HANDSHAKE_VERDICT: Duration = Duration::from_secs(1);

/// Whether the collector has closed or refused the connection. A syslog collector sends
/// nothing, so any alert, close or error seen by a read means the connection is unusable.
/// `wait`: how long to wait for such news; `None` looks without waiting.
fn peer_gone(s: &mut Tls, wait: Option<Duration>) -> bool {
    use std::io::Read;
    let set = match wait {
        Some(w) => s.sock.set_read_timeout(Some(w)),
        None => s.sock.set_nonblocking(true),
    };
    if set.is_err() {
        return true;
    }
    let mut byte = [0u8; 1];
    let gone = match s.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    };
    let restored = match wait {
        Some(_) => s.sock.set_read_timeout(Some(IO_TIMEOUT)),
        None => s.sock.set_nonblocking(false),
    };
    gone || restored.is_err()
}

/// The sending thread's state.
struct Sender {
    log: LogReader,
    cursor: PathBuf,
    /// The next entry to send.
    next: u64,
    /// `next`, for the backlog metric.
    shared_next: Arc<AtomicU64>,
    /// The value last made durable in `cursor`.
    saved: u64,
    address: String,
    tls: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
    source: AuditSource,
    hostname: String,
    open: Arc<AtomicBool>,
}

impl Sender {
    fn run(mut self) {
        let mut stream: Option<Tls> = None;
        let mut pause = Duration::from_millis(200);
        let mut last_save = Instant::now();
        while self.open.load(Ordering::SeqCst) {
            let frames = match self.frames() {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(target: "cleave::audit", error = %e, index = self.next, "cannot read the audit log to forward it; retrying");
                    std::thread::park_timeout(IDLE_POLL);
                    continue;
                }
            };
            if frames.is_empty() {
                self.save_cursor();
                std::thread::park_timeout(IDLE_POLL);
                continue;
            }
            // A collector may close an idle connection; find out before writing into it.
            if stream.as_mut().is_some_and(|s| peer_gone(s, None)) {
                stream = None;
            }
            if stream.is_none() {
                match connect(&self.address, &self.tls, &self.name) {
                    Ok(s) => {
                        stream = Some(s);
                        pause = Duration::from_millis(200);
                    }
                    Err(e) => {
                        tracing::warn!(target: "cleave::audit", error = %e, "cannot reach the syslog collector; retrying");
                        std::thread::park_timeout(pause);
                        pause = (pause * 2).min(Duration::from_secs(30));
                        continue;
                    }
                }
            }
            let Some(s) = stream.as_mut() else { continue };
            let sent = frames.iter().try_for_each(|f| s.write_all(f)).and_then(|()| s.flush());
            match sent {
                Ok(()) => {
                    self.next += frames.len() as u64;
                    self.shared_next.store(self.next, Ordering::Relaxed);
                    if last_save.elapsed() >= CURSOR_EVERY {
                        self.save_cursor();
                        last_save = Instant::now();
                    }
                }
                Err(e) => {
                    // The whole batch goes again on the next connection.
                    tracing::warn!(target: "cleave::audit", error = %e, "the syslog connection failed; reconnecting");
                    stream = None;
                }
            }
        }
        self.save_cursor();
    }

    /// The framed messages of the next batch of entries (empty when all are sent). An entry
    /// that does not decode is skipped with an error logged; `cleave-audit verify` reports it.
    fn frames(&self) -> Result<Vec<Vec<u8>>, cleave_audit::Error> {
        let raw = self.log.raw_entries(self.next, BATCH)?;
        let mut out = Vec::with_capacity(raw.len());
        for r in raw {
            match Entry::from_canonical_bytes(&r.bytes, r.index) {
                Ok(entry) => {
                    let msg = cleave_audit::syslog::rfc5424_message(r.index, &entry, &self.source, &self.hostname);
                    out.push(cleave_audit::syslog::octet_counted(&msg));
                }
                Err(e) => {
                    tracing::error!(target: "cleave::audit", index = r.index, error = %e, "an audit entry does not decode; not forwarded");
                    out.push(Vec::new());
                }
            }
        }
        Ok(out)
    }

    /// Makes the cursor durable if it moved. A failure is logged; the next save retries,
    /// and until then a restart sends some entries again.
    fn save_cursor(&mut self) {
        if self.next == self.saved {
            return;
        }
        match cleave_keys::durable::write_atomic(&self.cursor, format!("{}\n", self.next).as_bytes(), 0o600) {
            Ok(()) => self.saved = self.next,
            Err(e) => tracing::warn!(target: "cleave::audit", error = %e, "cannot save the syslog cursor"),
        }
    }
}
