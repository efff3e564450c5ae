//! The DICOM TLS listener and the per-association message loop: C-ECHO answered in place,
//! C-STORE streamed into the sink on the blocking pool, a truthful status back.
//!
//! Limits live here: the TLS handshake and the A-ASSOCIATE-RQ must arrive within
//! `handshake_timeout`; an association that sends nothing for `idle_timeout` is aborted; at most
//! `max_associations` are served at once (beyond that, a transient A-ASSOCIATE-RJ); a PDU longer
//! than the `max_pdu_length` we announced ends the association.
//!
//! Logging: peer addresses, DIMSE statuses and protocol faults only. Never AE titles, UIDs,
//! user identities or data set content.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dicom_ul::pdu::{AbortRQServiceProviderReason, PDataValue, PDataValueType, Pdu, MINIMUM_PDU_SIZE};
use rustls::ServerConfig;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};
use zeroize::Zeroize;

use crate::association::{self, Context, WireError};
use crate::command::{self, status, Command};
use crate::error::{DimseError, Result};
use crate::part10;
use crate::pdata::{self, PduPool};
use crate::sink::{PeerInfo, StoreFailure, StoreRequest, StoreSink};
use crate::stream::{self, Chunk};

/// Limits and tuning of a [`DimseServer`]. Start from `DimseConfig::default()` and change fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DimseConfig {
    /// Maximum PDU length we announce and accept (bytes of a P-DATA-TF body). Default 64 KiB.
    ///
    /// Why not larger: a PDU is read whole before its fragment goes to the sink, and
    /// senders such as dcmtk's storescu fill whatever we announce. With 1 MiB a 0.5 MB CT
    /// arrives as one PDU, so de-identifying and encrypting it only starts once all of it
    /// is in; with 64 KiB it overlaps the transfer, and the sender waits ~0.3 ms less per
    /// instance (16 KiB, 64 KiB, 256 KiB and 1 MiB compared with `bench/run --section
    /// cstore`; 64 KiB was fastest). Memory per association also drops to a few hundred KiB.
    pub max_pdu_length: u32,
    /// Time allowed for the TLS handshake, then again for the A-ASSOCIATE-RQ. Default 10 s.
    pub handshake_timeout: Duration,
    /// An association silent for this long (or a sink that accepts no data for this long) is
    /// aborted. Default 120 s.
    pub idle_timeout: Duration,
    /// Associations served at once. Default 32.
    pub max_associations: usize,
    /// P-DATA fragments buffered between the socket and a slow sink. Default 4; memory per
    /// association is about (queue_depth + 3) x max_pdu_length (the PDU buffers, reused).
    pub queue_depth: usize,
}

impl Default for DimseConfig {
    fn default() -> Self {
        Self {
            max_pdu_length: 64 << 10,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_associations: 32,
            queue_depth: 4,
        }
    }
}

impl DimseConfig {
    fn validate(&self) -> Result<()> {
        if !(MINIMUM_PDU_SIZE..=(16 << 20)).contains(&self.max_pdu_length) {
            return Err(DimseError::Config("max_pdu_length must be between 1018 bytes and 16 MiB"));
        }
        if self.handshake_timeout.is_zero() || self.idle_timeout.is_zero() {
            return Err(DimseError::Config("timeouts must be longer than zero"));
        }
        if self.max_associations == 0 || self.queue_depth == 0 {
            return Err(DimseError::Config("max_associations and queue_depth must be at least 1"));
        }
        Ok(())
    }
}

/// Connections beyond `max_associations` still get a TLS handshake and a polite transient
/// A-ASSOCIATE-RJ, but only this many at a time; past that the socket is simply closed.
const MAX_REJECTING: usize = 8;

struct Shared<S: StoreSink> {
    acceptor: TlsAcceptor,
    sink: Arc<S>,
    config: DimseConfig,
}

/// A bound, not yet running, Storage + Verification SCP on a DICOM TLS port.
pub struct DimseServer<S: StoreSink> {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared<S>>,
}

impl<S: StoreSink> DimseServer<S> {
    /// Binds the port. `tls` must require client certificates (e.g. rustls
    /// `WebPkiClientVerifier` against the device CA): a connection whose handshake ends without
    /// one is closed before any DICOM is read.
    pub async fn bind(addr: impl ToSocketAddrs, tls: Arc<ServerConfig>, sink: Arc<S>, config: DimseConfig) -> Result<Self> {
        config.validate()?;
        let listener = TcpListener::bind(addr).await.map_err(DimseError::Bind)?;
        let local_addr = listener.local_addr().map_err(DimseError::Bind)?;
        let shared = Arc::new(Shared { acceptor: TlsAcceptor::from(tls), sink, config });
        Ok(Self { listener, local_addr, shared })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then stops accepting, asks idle associations to end
    /// (A-ABORT), lets in-flight C-STOREs finish, and returns once every association is gone.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let active = Arc::new(Semaphore::new(self.shared.config.max_associations));
        let rejecting = Arc::new(Semaphore::new(MAX_REJECTING));
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                accepted = self.listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // EMFILE, ECONNABORTED and friends are transient: pause, keep serving.
                            warn!(error = %e, "accepting a DICOM TLS connection failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    // Without this, small DIMSE responses wait for Nagle's delayed-ACK dance:
                    // ~40 ms per C-STORE.
                    if let Err(e) = tcp.set_nodelay(true) {
                        debug!(error = %e, "could not disable Nagle on an accepted socket");
                    }
                    let slot = match active.clone().try_acquire_owned() {
                        Ok(p) => Slot::Serve(p),
                        Err(_) => match rejecting.clone().try_acquire_owned() {
                            Ok(p) => Slot::Reject(p),
                            Err(_) => { warn!(%peer, "association limit reached; connection closed"); continue; }
                        },
                    };
                    tasks.spawn(serve(tcp, peer, self.shared.clone(), slot, stop_rx.clone()));
                }
            }
        }
        drop(self.listener);
        let _ = stop_tx.send(true);
        while tasks.join_next().await.is_some() {}
        info!("DICOM TLS server stopped");
        Ok(())
    }

    /// Runs the server on the current tokio runtime and returns a handle to stop it.
    pub fn spawn(self) -> ServerHandle {
        let local_addr = self.local_addr;
        let (tx, mut rx) = watch::channel(false);
        let task = tokio::spawn(self.run(async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }));
        ServerHandle { stop: tx, task, local_addr }
    }
}

/// A running server (see [`DimseServer::spawn`]).
pub struct ServerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
    local_addr: SocketAddr,
}

impl ServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the server as [`DimseServer::run`] describes and waits for it.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.task.await.map_err(|_| DimseError::TaskFailed)?
    }
}

enum Slot {
    Serve(#[allow(dead_code)] OwnedSemaphorePermit),
    Reject(#[allow(dead_code)] OwnedSemaphorePermit),
}

/// One connection, from TCP accept to close. Every exit path is a log line, never a panic.
async fn serve<S: StoreSink>(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared<S>>, slot: Slot, stop: watch::Receiver<bool>) {
    let cfg = &shared.config;
    let mut tls = match timeout(cfg.handshake_timeout, shared.acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => return debug!(%peer, "TLS handshake timed out"),
    };
    let fingerprint: [u8; 32] = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        Some(cert) => Sha256::digest(cert.as_ref()).into(),
        None => {
            // Fail closed: the ServerConfig was built without mandatory client authentication.
            warn!(%peer, "TLS client sent no certificate; configure the ServerConfig to require one");
            return;
        }
    };
    let mut raw = match timeout(cfg.handshake_timeout, association::read_raw_pdu(&mut tls, association::MAX_ASSOCIATE_RQ_LEN)).await {
        Ok(Ok(raw)) => raw,
        Ok(Err(_)) => return debug!(%peer, "no valid A-ASSOCIATE-RQ"),
        Err(_) => return debug!(%peer, "A-ASSOCIATE-RQ timed out"),
    };
    let identity = association::take_user_identity(&mut raw);
    let decoded = association::decode(&raw);
    raw.zeroize();
    let rq = match decoded {
        Ok(Pdu::AssociationRQ(rq)) => rq,
        _ => {
            refuse(&mut tls, &association::abort(AbortRQServiceProviderReason::UnexpectedPdu)).await;
            return debug!(%peer, "first PDU was not a valid A-ASSOCIATE-RQ");
        }
    };
    if let Slot::Reject(_) = slot {
        refuse(&mut tls, &association::over_capacity()).await;
        return info!(%peer, "association rejected: server at its association limit");
    }
    if let Err(rj) = association::check_request(&rq) {
        refuse(&mut tls, &rj).await;
        return info!(%peer, "association rejected: unsupported protocol version or application context");
    }
    let identity = match identity {
        Ok(identity) => identity,
        Err(()) => {
            refuse(&mut tls, &association::refusal(crate::Refusal::UserIdentityNotAuthorized)).await;
            return info!(%peer, "association rejected: unreadable user identity");
        }
    };
    let identity_response = identity.as_ref().is_some_and(|i| {
        i.positive_response_requested() && matches!(i.kind(), crate::UserIdentityKind::Username | crate::UserIdentityKind::UsernamePasscode)
    });
    let info = PeerInfo {
        client_cert_sha256: fingerprint,
        calling_ae_title: rq.calling_ae_title.trim().to_owned(),
        called_ae_title: rq.called_ae_title.trim().to_owned(),
        peer_addr: peer,
        user_identity: identity,
    };
    let sink = shared.sink.clone();
    let decision = tokio::task::spawn_blocking(move || {
        let d = sink.authorize(&info);
        (d, info.calling_ae_title)
    })
    .await;
    let (principal, calling_ae) = match decision {
        Ok((Ok(p), ae)) => (Arc::new(p), ae),
        Ok((Err(refusal), _)) => {
            refuse(&mut tls, &association::refusal(refusal)).await;
            return info!(%peer, ?refusal, "association refused by the broker");
        }
        Err(_) => {
            refuse(&mut tls, &association::refusal(crate::Refusal::TemporarilyUnavailable)).await;
            return warn!(%peer, "authorization panicked; association rejected");
        }
    };
    let (ac, contexts) = association::accept(&rq, cfg.max_pdu_length, identity_response);
    drop(rq);
    if association::send_pdu(&mut tls, &ac).await.is_err() {
        return debug!(%peer, "peer left before the A-ASSOCIATE-AC");
    }
    info!(%peer, contexts = contexts.len(), "association accepted");
    let pool = PduPool::new(cfg.max_pdu_length);
    let mut conn = Connection { tls: &mut tls, peer, shared: &shared, principal, calling_ae, contexts, state: State::Idle(Vec::new(), None), pool };
    let end = conn.run(stop).await;
    match end {
        End::Released => {
            let _ = tls.shutdown().await;
            info!(%peer, "association released");
        }
        End::AbortedByPeer => info!(%peer, "association aborted by peer"),
        End::Aborted(why) => {
            refuse(&mut tls, &association::abort(AbortRQServiceProviderReason::ReasonNotSpecified)).await;
            warn!(%peer, why, "association aborted");
        }
        End::Closed(why) => debug!(%peer, why, "connection closed"),
    }
}

/// How long a refused or aborted peer has to close the connection itself (PS3.8 ARTIM,
/// state Sta13) before we close it.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Sends an A-ASSOCIATE-RJ or A-ABORT, then waits for the peer to close the connection,
/// as PS3.8 has the acceptor do (Sta13: awaiting the transport close, under the ARTIM
/// timer), reading and discarding whatever it still sends; then closes our side.
///
/// Why not just drop the connection: a socket closed while the peer's bytes sit unread in
/// it is reset (RST) by the kernel, and a peer that sees the reset before it has read our
/// A-ASSOCIATE-RJ reports "aborted" instead of the reason we gave. Closing first, even
/// gracefully, races the same way in peers that handle "connection closed" before the
/// PDU that came just before it (pynetdicom did, intermittently). Bounded: a peer that
/// keeps the connection open gets `CLOSE_GRACE`, then it is closed.
async fn refuse<T: AsyncRead + AsyncWrite + Unpin>(tls: &mut T, pdu: &Pdu) {
    if association::send_pdu(&mut *tls, pdu).await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    let _ = timeout(CLOSE_GRACE, async {
        use tokio::io::AsyncReadExt;
        while let Ok(n) = tls.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    let _ = timeout(Duration::from_secs(1), tls.shutdown()).await;
}

enum End {
    Released,
    AbortedByPeer,
    /// We abort; the reason is a fixed, PHI-free phrase.
    Aborted(&'static str),
    Closed(&'static str),
}

/// A C-STORE whose data set is arriving.
struct Transfer {
    context: u8,
    message_id: u16,
    sop_class_uid: String,
    sop_instance_uid: String,
    sink: Option<SinkFeed>,
    /// Set when the request was refused before reaching the sink; the data is discarded.
    refused: Option<u16>,
}

struct SinkFeed {
    tx: Option<tokio::sync::mpsc::Sender<Chunk>>,
    task: JoinHandle<std::result::Result<(), StoreFailure>>,
    finished: Arc<std::sync::atomic::AtomicBool>,
}

enum State {
    /// Collecting command fragments (and the context they arrive on).
    Idle(Vec<u8>, Option<u8>),
    Receiving(Transfer),
}

struct Connection<'a, T, S: StoreSink> {
    tls: &'a mut T,
    peer: SocketAddr,
    shared: &'a Shared<S>,
    principal: Arc<S::Principal>,
    calling_ae: String,
    contexts: Vec<Context>,
    state: State,
    /// The buffers PDUs are read into, reused for the whole association.
    pool: PduPool,
}

impl<T: AsyncRead + AsyncWrite + Unpin, S: StoreSink> Connection<'_, T, S> {
    async fn run(&mut self, mut stop: watch::Receiver<bool>) -> End {
        let shared = self.shared;
        let cfg = &shared.config;
        loop {
            let idle = matches!(self.state, State::Idle(ref b, _) if b.is_empty());
            let read = tokio::select! {
                r = timeout(cfg.idle_timeout, pdata::read_pdu(&mut *self.tls, &self.pool, cfg.max_pdu_length)) => r,
                _ = stop.wait_for(|s| *s), if idle => return End::Aborted("server shutting down"),
            };
            let raw = match read {
                Err(_) => return End::Aborted("idle timeout"),
                Ok(Err(WireError::TooLarge)) => return End::Aborted("PDU longer than the negotiated maximum"),
                Ok(Err(WireError::Io)) => return End::Closed("connection lost"),
                Ok(Err(WireError::Malformed)) => return End::Aborted("malformed PDU"),
                Ok(Ok(raw)) => raw,
            };
            if raw.pdu_type() == pdata::P_DATA_TF {
                // The common case, read without copying (pdata.rs).
                let Ok(values) = pdata::values(raw) else { return End::Aborted("malformed PDU") };
                for value in values {
                    if let Err(why) = self.on_pdv(value).await {
                        return why;
                    }
                }
                continue;
            }
            match association::decode(raw.bytes()) {
                Ok(Pdu::ReleaseRQ) => {
                    if matches!(self.state, State::Receiving(_)) {
                        return End::Aborted("release requested in the middle of a C-STORE");
                    }
                    return match association::send_pdu(&mut *self.tls, &Pdu::ReleaseRP).await {
                        Ok(()) => End::Released,
                        Err(_) => End::Closed("connection lost during release"),
                    };
                }
                Ok(Pdu::AbortRQ { .. }) => return End::AbortedByPeer,
                Ok(_) => return End::Aborted("unexpected PDU type"),
                Err(_) => return End::Aborted("malformed PDU"),
            }
        }
    }

    async fn on_pdv(&mut self, pdv: pdata::Value) -> std::result::Result<(), End> {
        let Some(context) = self.contexts.iter().find(|c| c.id == pdv.context).cloned() else {
            return Err(End::Aborted("P-DATA on a presentation context that was not accepted"));
        };
        match &mut self.state {
            State::Idle(buf, ctx) => {
                if !pdv.is_command {
                    return Err(End::Aborted("data set fragment without a command"));
                }
                if ctx.is_some_and(|id| id != context.id) {
                    return Err(End::Aborted("command fragments on two presentation contexts"));
                }
                let data = pdv.data.as_slice();
                if buf.len() + data.len() > command::MAX_COMMAND_LEN {
                    return Err(End::Aborted("command set too long"));
                }
                buf.extend_from_slice(data);
                *ctx = Some(context.id);
                if !pdv.is_last {
                    return Ok(());
                }
                let parsed = command::parse(buf);
                self.state = State::Idle(Vec::new(), None);
                match parsed {
                    Ok(cmd) => self.on_command(cmd, context).await,
                    Err(_) => Err(End::Aborted("unreadable command set")),
                }
            }
            State::Receiving(transfer) => {
                if pdv.is_command || pdv.context != transfer.context {
                    return Err(End::Aborted("unexpected fragment while receiving a data set"));
                }
                if let Some(feed) = transfer.sink.as_mut() {
                    if let Some(tx) = feed.tx.as_ref() {
                        match timeout(self.shared.config.idle_timeout, tx.send(Chunk::Data(pdv.data))).await {
                            Ok(Ok(())) => {}
                            // The sink returned early (usually with a failure): discard the rest.
                            Ok(Err(_)) => feed.tx = None,
                            Err(_) => return Err(End::Aborted("the sink stopped consuming data")),
                        }
                    }
                }
                if pdv.is_last {
                    if let State::Receiving(transfer) = std::mem::replace(&mut self.state, State::Idle(Vec::new(), None)) {
                        self.finish(transfer).await?;
                    }
                }
                Ok(())
            }
        }
    }

    async fn on_command(&mut self, cmd: Command, context: Context) -> std::result::Result<(), End> {
        match cmd.command_field {
            command::C_ECHO_RQ if !cmd.has_data_set => {
                let st = if context.abstract_syntax == crate::syntax::VERIFICATION { status::SUCCESS } else { status::UNRECOGNIZED_OPERATION };
                self.respond(context.id, command::C_ECHO_RSP, cmd.message_id, st, &context.abstract_syntax, None).await
            }
            command::C_STORE_RQ if cmd.has_data_set => {
                let sop_class_uid = cmd.affected_sop_class_uid.unwrap_or_default();
                let sop_instance_uid = cmd.affected_sop_instance_uid.unwrap_or_default();
                let refused = if context.abstract_syntax == crate::syntax::VERIFICATION {
                    Some(status::SOP_CLASS_NOT_SUPPORTED)
                } else if sop_class_uid != context.abstract_syntax {
                    Some(status::DATA_SET_DOES_NOT_MATCH)
                } else if !part10::is_valid_uid(&sop_instance_uid) || !part10::is_valid_uid(&sop_class_uid) {
                    Some(status::CANNOT_UNDERSTAND)
                } else {
                    None
                };
                let sink = if refused.is_none() {
                    Some(self.start_store(&context, cmd.message_id, &sop_class_uid, &sop_instance_uid))
                } else {
                    None
                };
                self.state = State::Receiving(Transfer {
                    context: context.id,
                    message_id: cmd.message_id,
                    sop_class_uid,
                    sop_instance_uid,
                    sink,
                    refused,
                });
                Ok(())
            }
            command::C_STORE_RQ | command::C_ECHO_RQ => Err(End::Aborted("command and data set type disagree")),
            other => {
                if cmd.has_data_set {
                    return Err(End::Aborted("unsupported command with a data set"));
                }
                let sop_class = cmd.affected_sop_class_uid.unwrap_or_default();
                self.respond(context.id, other | 0x8000, cmd.message_id, status::UNRECOGNIZED_OPERATION, &sop_class, None).await
            }
        }
    }

    fn start_store(&self, context: &Context, message_id: u16, sop_class_uid: &str, sop_instance_uid: &str) -> SinkFeed {
        let header = part10::header(sop_class_uid, sop_instance_uid, context.transfer_syntax, &self.calling_ae);
        let (tx, reader, finished) = stream::channel(header, self.shared.config.queue_depth);
        let request = StoreRequest {
            sop_class_uid: sop_class_uid.to_owned(),
            sop_instance_uid: sop_instance_uid.to_owned(),
            transfer_syntax_uid: context.transfer_syntax.to_owned(),
            message_id,
            calling_ae_title: self.calling_ae.clone(),
        };
        let sink = self.shared.sink.clone();
        let principal = self.principal.clone();
        let task = tokio::task::spawn_blocking(move || sink.store(&principal, request, Box::new(reader)));
        SinkFeed { tx: Some(tx), task, finished }
    }

    async fn finish(&mut self, transfer: Transfer) -> std::result::Result<(), End> {
        let st = match (transfer.refused, transfer.sink) {
            (Some(st), _) => st,
            (None, None) => status::PROCESSING_FAILURE,
            (None, Some(mut feed)) => {
                if let Some(tx) = feed.tx.take() {
                    // An error here means the sink already returned; its result decides.
                    let _ = tx.send(Chunk::End).await;
                }
                match feed.task.await {
                    Ok(Ok(())) if feed.finished.load(Ordering::Acquire) => status::SUCCESS,
                    Ok(Ok(())) => {
                        warn!(peer = %self.peer, "sink returned Ok without reading the instance to its end; reporting failure");
                        status::PROCESSING_FAILURE
                    }
                    Ok(Err(failure)) => failure.status(),
                    Err(_) => {
                        warn!(peer = %self.peer, "sink panicked while storing; reporting failure");
                        status::PROCESSING_FAILURE
                    }
                }
            }
        };
        if st == status::SUCCESS {
            debug!(peer = %self.peer, "C-STORE stored");
        } else {
            info!(peer = %self.peer, status = %format!("{st:#06x}"), "C-STORE failed");
        }
        self.respond(transfer.context, command::C_STORE_RSP, transfer.message_id, st, &transfer.sop_class_uid, Some(&transfer.sop_instance_uid))
            .await
    }

    async fn respond(&mut self, context: u8, field: u16, message_id: u16, st: u16, sop_class: &str, sop_instance: Option<&str>) -> std::result::Result<(), End> {
        let data = command::response(field, message_id, st, sop_class, sop_instance);
        let pdu = Pdu::PData { data: vec![PDataValue { presentation_context_id: context, value_type: PDataValueType::Command, is_last: true, data }] };
        match timeout(self.shared.config.idle_timeout, association::send_pdu(&mut *self.tls, &pdu)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Closed("could not send a DIMSE response")),
        }
    }
}
