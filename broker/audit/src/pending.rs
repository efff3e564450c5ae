//! The answer to one queued append: a one-shot slot the writer thread fills once the
//! entries are durable, that the caller either blocks on ([`PendingAppend::wait`]) or
//! awaits (it is a `Future`, runtime-agnostic: the writer wakes the stored waker).
//!
//! Why not a channel per append: an async caller (the broker) must be able to have
//! hundreds of appends in flight without a thread blocked on each, because the writer can
//! only make a large batch out of many outstanding requests, and large batches are what
//! make one `fdatasync` cheap per entry (see `benches/audit.rs`).
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::Error;

#[derive(Default)]
struct Slot {
    result: Option<Result<u64, Error>>,
    waker: Option<Waker>,
    /// The writer dropped the request without answering (it stopped).
    abandoned: bool,
}

#[derive(Default)]
pub(crate) struct Completion {
    slot: Mutex<Slot>,
    ready: Condvar,
}

impl Completion {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // Only this module touches the slot, in whole steps; a poisoned lock still holds
        // a consistent slot.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called once by the writer with the first leaf index of the request, or the error.
    pub(crate) fn complete(&self, result: Result<u64, Error>) {
        let waker = {
            let mut s = self.lock();
            if s.result.is_some() {
                return;
            }
            s.result = Some(result);
            s.waker.take()
        };
        self.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn abandon(&self) {
        let waker = {
            let mut s = self.lock();
            s.abandoned = true;
            s.waker.take()
        };
        self.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The writer's side: answers the caller, and if dropped unanswered (the writer stopped or
/// panicked) tells the caller so instead of leaving it waiting forever.
pub(crate) struct Responder(pub(crate) Arc<Completion>);

impl Responder {
    pub(crate) fn send(self, result: Result<u64, Error>) {
        self.0.complete(result);
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        // A no-op after `send` (the result is already there).
        if self.0.lock().result.is_none() {
            self.0.abandon();
        }
    }
}

/// An append that was queued. [`wait`](Self::wait) blocks until the entries are durable;
/// `.await` does the same without a thread. Either yields the leaf index of the first
/// entry (the others of an [`append_batch`](crate::AuditLog::append_batch) follow it).
/// Dropping it does not cancel the append.
#[must_use = "an append is acknowledged only once it is durable: wait for it or await it"]
pub struct PendingAppend {
    pub(crate) completion: Arc<Completion>,
}

impl std::fmt::Debug for PendingAppend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingAppend")
    }
}

impl PendingAppend {
    fn take(s: &mut Slot) -> Option<Result<u64, Error>> {
        match s.result.take() {
            Some(r) => Some(r),
            None if s.abandoned => Some(Err(Error::WriterStopped)),
            None => None,
        }
    }

    /// Block the calling thread until the append is durable (or failed).
    pub fn wait(self) -> Result<u64, Error> {
        let mut s = self.completion.lock();
        loop {
            if let Some(r) = Self::take(&mut s) {
                return r;
            }
            s = self.completion.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Future for PendingAppend {
    type Output = Result<u64, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.completion.lock();
        match Self::take(&mut s) {
            Some(r) => Poll::Ready(r),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
