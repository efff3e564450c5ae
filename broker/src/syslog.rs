//! Forwarding the audit log to an ATNA audit record repository: syslog over TLS (RFC 5425,
//! octet-counted RFC 5424 messages carrying the PS3.15 A.5 `AuditMessage`, formatted by
//! `cleave_audit::syslog`). Configured by `[audit_syslog]` in `cleave.toml`.
//!
//! The signed log stays the record; the collector gets a copy. So forwarding never slows
//! or fails a request: entries are queued (bounded; when the collector is away for long,
//! the oldest are not kept, the count is logged, and the log itself still has them), one
//! thread sends them in order, reconnecting with a growing pause. The collector is
//! authenticated by its certificate (the configured CA and name); nothing sent holds PHI.
use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cleave_audit::atna::AuditSource;
use cleave_audit::Entry;
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
    /// This host's name in the messages' HOSTNAME field.
    #[serde(default)]
    pub hostname: Option<String>,
}

const QUEUE: usize = 10_000;

/// The sending side; cheap to call from the audit path.
pub struct SyslogForwarder {
    tx: SyncSender<Vec<u8>>,
    /// Cleared on drop, so a thread retrying an unreachable collector stops.
    open: Arc<AtomicBool>,
    source: AuditSource,
    hostname: String,
}

impl std::fmt::Debug for SyslogForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyslogForwarder")
    }
}

fn client_config(ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, Error> {
    let pem = std::fs::read(ca).map_err(|e| Error::io("reading", ca, e))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        let c = c.map_err(|_| Error::Config(format!("{} is not a PEM certificate bundle; fix [audit_syslog] ca", ca.display())))?;
        roots.add(c).map_err(|_| Error::Config(format!("{} holds an unusable certificate; fix [audit_syslog] ca", ca.display())))?;
    }
    if roots.is_empty() {
        return Err(Error::Config(format!("{} holds no certificate; fix [audit_syslog] ca", ca.display())));
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS setup for syslog: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

impl SyslogForwarder {
    /// Check the configuration and start the sending thread. `origin` is the log's origin.
    pub fn start(cfg: &SyslogConfig, origin: &str) -> Result<Self, Error> {
        let tls = client_config(&cfg.ca)?;
        let name = rustls::pki_types::ServerName::try_from(cfg.server_name.clone())
            .map_err(|_| Error::Config("[audit_syslog] server_name is not a DNS name or IP address".into()))?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let address = cfg.address.clone();
        let open = Arc::new(AtomicBool::new(true));
        let still_open = open.clone();
        std::thread::Builder::new()
            .name("cleave-audit-syslog".into())
            .spawn(move || send_loop(rx, &address, tls, name, &still_open))
            .map_err(|e| Error::Config(format!("cannot start the syslog thread ({e})")))?;
        Ok(SyslogForwarder {
            tx,
            open,
            source: AuditSource { source_id: "cleave-broker".into(), enterprise_site_id: None, log_origin: origin.to_owned() },
            hostname: cfg.hostname.clone().unwrap_or_else(|| "-".into()),
        })
    }

    /// Queue leaf `index` for the collector; never blocks.
    pub fn forward(&self, index: u64, entry: &Entry) {
        let msg = cleave_audit::syslog::rfc5424_message(index, entry, &self.source, &self.hostname);
        match self.tx.try_send(cleave_audit::syslog::octet_counted(&msg)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!(target: "cleave::audit", index, "syslog queue full: entry not forwarded (it is in the signed log)")
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl Drop for SyslogForwarder {
    fn drop(&mut self) {
        self.open.store(false, Ordering::SeqCst);
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(address: &str, tls: &Arc<rustls::ClientConfig>, name: &rustls::pki_types::ServerName<'static>) -> std::io::Result<Tls> {
    use std::net::ToSocketAddrs;
    let addr = address
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    tcp.set_write_timeout(Some(Duration::from_secs(30)))?;
    let conn = rustls::ClientConnection::new(tls.clone(), name.clone()).map_err(std::io::Error::other)?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

fn send_loop(
    rx: Receiver<Vec<u8>>,
    address: &str,
    tls: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
    open: &AtomicBool,
) {
    let mut stream: Option<Tls> = None;
    let mut pause = Duration::from_millis(200);
    for frame in rx {
        loop {
            if stream.is_none() {
                match connect(address, &tls, &name) {
                    Ok(s) => stream = Some(s),
                    Err(_) if !open.load(Ordering::SeqCst) => return,
                    Err(e) => {
                        tracing::warn!(target: "cleave::audit", error = %e, "cannot reach the syslog collector; retrying");
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_secs(30));
                        continue;
                    }
                }
            }
            let Some(s) = stream.as_mut() else { continue };
            match s.write_all(&frame).and_then(|()| s.flush()) {
                Ok(()) => {
                    pause = Duration::from_millis(200);
                    break;
                }
                Err(e) => {
                    tracing::warn!(target: "cleave::audit", error = %e, "the syslog connection failed; reconnecting");
                    stream = None;
                }
            }
        }
    }
}
