//! The slow-body defence: a request body must keep arriving at a minimum rate.
//!
//! hyper's header timeout stops a client that trickles the request head (the classic
//! slow-loris), and the idle timeout stops one that goes silent. Neither stops a client
//! that sends its head promptly and then one body byte every minute: it holds a
//! connection, a task and, for STOW-RS, a blob being written, forever. Every request body is
//! therefore wrapped in [`MinRateBody`]: once the time spent *waiting for the client*
//! passes a grace period, the bytes received must average at least the configured rate
//! over that waiting time, or the body fails with [`TooSlow`] and the request is answered
//! 408 (nothing stored: ingest and JSON handlers only act on a complete body).
//!
//! Only time spent waiting on the client counts. While the server is busy (STOW-RS
//! de-identifying the previous instance, say) the body is not being read and the clock
//! does not run against the client.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The rate floor for request bodies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MinRate {
    /// Waiting this long for the client is always allowed.
    pub grace: Duration,
    /// After the grace period: bytes received per second of waiting, at least.
    pub bytes_per_sec: u64,
}

/// The error a too-slow body fails with; found again in the error chain by [`is_too_slow`].
#[derive(Debug)]
pub(crate) struct TooSlow;

impl std::fmt::Display for TooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body arrived too slowly")
    }
}

impl std::error::Error for TooSlow {}

/// Whether `e`, or any error it wraps, is a [`TooSlow`].
pub(crate) fn is_too_slow(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<TooSlow>() {
            return true;
        }
        // axum wraps body errors in its own `axum::Error`, whose source is ours.
        cur = err.source();
    }
    false
}

/// A request body held to a [`MinRate`].
pub(crate) struct MinRateBody {
    inner: Body,
    rate: MinRate,
    received: u64,
    /// Waiting for the client, summed over completed waits.
    waited: Duration,
    /// When the current wait began, if the last poll found no data.
    waiting_since: Option<Instant>,
    /// Wakes the task to re-check the rate while it waits.
    check: Pin<Box<Sleep>>,
}

impl MinRateBody {
    pub(crate) fn new(inner: Body, rate: MinRate) -> MinRateBody {
        MinRateBody {
            inner,
            rate,
            received: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            check: Box::pin(tokio::time::sleep(rate.grace)),
        }
    }

    fn too_slow(&self, now: Instant) -> bool {
        let waited = self.waited + self.waiting_since.map_or(Duration::ZERO, |s| now - s);
        if waited <= self.rate.grace {
            return false;
        }
        // Integer arithmetic on milliseconds: received * 1000 < rate * waited_ms.
        let needed = u128::from(self.rate.bytes_per_sec) * waited.as_millis();
        u128::from(self.received) * 1000 < needed
    }
}

impl HttpBody for MinRateBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(since) = this.waiting_since.take() {
                    this.waited += Instant::now() - since;
                }
                if let Some(Ok(f)) = &frame {
                    if let Some(data) = f.data_ref() {
                        this.received = this.received.saturating_add(data.len() as u64);
                    }
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let now = Instant::now();
                if this.waiting_since.is_none() {
                    this.waiting_since = Some(now);
                    this.check.as_mut().reset(now + Duration::from_millis(250));
                }
                if this.too_slow(now) {
                    return Poll::Ready(Some(Err(axum::Error::new(TooSlow))));
                }
                // Re-check every 250 ms of waiting; the timer's waker is this task's.
                while this.check.as_mut().poll(cx).is_ready() {
                    let now = Instant::now();
                    if this.too_slow(now) {
                        return Poll::Ready(Some(Err(axum::Error::new(TooSlow))));
                    }
                    this.check.as_mut().reset(now + Duration::from_millis(250));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: wrap every request body in a [`MinRateBody`].
pub(crate) async fn guard(rate: MinRate, req: Request, next: Next) -> Response {
    let req = req.map(|body| Body::new(MinRateBody::new(body, rate)));
    next.run(req).await
}
