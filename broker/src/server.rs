//! The accept loop: TLS handshake, connection limits, timeouts, and the per-connection
//! facts (client certificate fingerprint, peer address, which listener) handed to the router.
//!
//! Defences against resource exhaustion live here because they must act before a request
//! exists: a handshake that does not finish in time is dropped; a request head that does
//! not arrive within `header_read_timeout` closes the connection (hyper's timer, the
//! slow-loris defence); a connection with no traffic for `idle_timeout` is shut down; at
//! most `max_connections` are served at once and the rest are closed at accept.
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::pki::CertFingerprint;

/// Which door a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// Mutual TLS: staff and devices, a client certificate is always present.
    Mtls,
    /// Server-only TLS: consultants holding a shared token.
    Consultant,
}

/// Facts about the connection a request arrived on, put into every request's extensions.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub listener: ListenerKind,
    pub peer: SocketAddr,
    /// SHA-256 of the client certificate's DER; `None` on the consultant listener.
    pub client_cert: Option<CertFingerprint>,
    /// The port the client connected to, for URLs given back to it (see `wado::base_url`).
    pub local_port: Option<u16>,
}

/// Per-listener limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
}

/// Serve `app` on `listener` until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, acceptor: TlsAcceptor, kind: ListenerKind, app: Router, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Running out of file descriptors must not end the loop; back off briefly.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!("connection refused: the connection limit is reached");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let local_port = tcp.local_addr().ok().map(|a| a.port());
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!("TLS handshake timed out");
                    return;
                }
            };
            let client_cert =
                tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| CertFingerprint::of_der(c));
            let info = ConnInfo { listener: kind, peer, client_cert, local_port };
            serve_connection(tls, info, app, limits).await;
        });
    }
}

async fn serve_connection<S>(stream: S, info: ConnInfo, app: Router, limits: Limits)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Tracked { inner: stream, started, last: last.clone() });
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(info.clone());
        app.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    let tick = (limits.idle_timeout / 4).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep(tick) => {
                let idle_ms = (started.elapsed().as_millis() as u64).saturating_sub(last.load(Ordering::Relaxed));
                if Duration::from_millis(idle_ms) >= limits.idle_timeout {
                    tracing::debug!("closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await;
                    return;
                }
            }
        }
    }
}

/// A stream that records when bytes last moved, for the idle timeout.
struct Tracked<S> {
    inner: S,
    started: Instant,
    last: Arc<AtomicU64>,
}

impl<S> Tracked<S> {
    fn touch(&self) {
        self.last.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
