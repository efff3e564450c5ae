//! Stores that stay closed until a request needs them.
//!
//! [`OnDemand`] holds a way to open a store and, at most, one open instance. A request goes
//! through [`OnDemand::with`], which opens the store if it is closed (unwrapping its keys,
//! opening its connection). A reaper thread closes it once it has been idle for the TTL;
//! a TTL of zero closes it after every request. Closing drops the instance: its keys
//! ([`crate::Key32`]) and cached plaintext ([`crate::SecretBytes`]) zeroize themselves on
//! drop, and its database connection closes. Openings and closings are counted and logged
//! at debug level (by name only: nothing about the data).
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

type Opener<S, E> = Box<dyn Fn() -> Result<S, E> + Send + Sync>;

/// Counters of a store's life, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OnDemandStats {
    pub opens: u64,
    pub closes: u64,
    pub is_open: bool,
}

/// A store opened on demand and closed again when idle.
pub struct OnDemand<S, E> {
    name: &'static str,
    ttl: Duration,
    opener: Opener<S, E>,
    slot: Mutex<Option<(S, Instant)>>,
    opens: AtomicU64,
    closes: AtomicU64,
}

impl<S: Send + 'static, E> OnDemand<S, E> {
    /// `name` appears in logs and metrics; `ttl` is the idle time before closing.
    /// Call [`OnDemand::start_reaper`] to have idle stores closed in the background.
    pub fn new(name: &'static str, ttl: Duration, opener: impl Fn() -> Result<S, E> + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(OnDemand {
            name,
            ttl,
            opener: Box::new(opener),
            slot: Mutex::new(None),
            opens: AtomicU64::new(0),
            closes: AtomicU64::new(0),
        })
    }

    /// Run `f` on the open store, opening it first if needed.
    pub fn with<R>(&self, f: impl FnOnce(&mut S) -> R) -> Result<R, E> {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let store = (self.opener)()?;
            self.opens.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(store = self.name, "store opened");
            *slot = Some((store, Instant::now()));
        }
        let (store, last) = slot.as_mut().expect("opened just above");
        let r = f(store);
        *last = Instant::now();
        if self.ttl.is_zero() {
            self.close_locked(&mut slot);
        }
        Ok(r)
    }

    fn close_locked(&self, slot: &mut Option<(S, Instant)>) {
        if slot.take().is_some() {
            self.closes.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(store = self.name, "store closed, keys zeroized");
        }
    }

    /// Close now, whatever the TTL.
    pub fn close(&self) {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        self.close_locked(&mut slot);
    }

    /// Close if idle for at least the TTL. Returns whether it closed.
    pub fn close_if_idle(&self) -> bool {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        match &*slot {
            Some((_, last)) if last.elapsed() >= self.ttl => {
                self.close_locked(&mut slot);
                true
            }
            _ => false,
        }
    }

    pub fn is_open(&self) -> bool {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    pub fn stats(&self) -> OnDemandStats {
        OnDemandStats {
            opens: self.opens.load(Ordering::Relaxed),
            closes: self.closes.load(Ordering::Relaxed),
            is_open: self.is_open(),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Start a background thread that closes the store when idle. It holds only a weak
    /// reference and ends when the store is dropped.
    pub fn start_reaper(self: &Arc<Self>)
    where
        E: 'static,
    {
        let weak: Weak<Self> = Arc::downgrade(self);
        let tick = (self.ttl / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        std::thread::Builder::new()
            .name(format!("reaper-{}", self.name))
            .spawn(move || loop {
                std::thread::sleep(tick);
                match weak.upgrade() {
                    Some(s) => {
                        s.close_if_idle();
                    }
                    None => return,
                }
            })
            .expect("spawning a thread only fails when the OS is out of resources");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(crate::Key32);

    #[test]
    fn opens_on_demand_and_closes_when_idle() {
        let s = OnDemand::<Fake, ()>::new("fake", Duration::from_millis(50), || Ok(Fake(crate::Key32::generate())));
        s.start_reaper();
        assert!(!s.is_open());
        s.with(|f| assert_eq!(f.0.expose().len(), 32)).unwrap();
        assert!(s.is_open());
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.is_open() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(s.stats(), OnDemandStats { opens: 1, closes: 1, is_open: false });
    }

    #[test]
    fn zero_ttl_closes_after_every_request() {
        let s = OnDemand::<Fake, ()>::new("fake", Duration::ZERO, || Ok(Fake(crate::Key32::generate())));
        s.with(|_| ()).unwrap();
        s.with(|_| ()).unwrap();
        assert_eq!(s.stats(), OnDemandStats { opens: 2, closes: 2, is_open: false });
    }

    #[test]
    fn open_failure_is_returned_and_leaves_it_closed() {
        let s = OnDemand::<Fake, &'static str>::new("fake", Duration::from_secs(1), || Err("no key"));
        assert_eq!(s.with(|_| ()).unwrap_err(), "no key");
        assert!(!s.is_open());
    }
}
