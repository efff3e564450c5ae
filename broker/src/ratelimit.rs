//! Failed-login limits per account and per client address.
//!
//! Counting failures (not attempts) inside a sliding window keeps a nurse who types the
//! right password from being locked out by a neighbour, while capping guessing at a few
//! tries per account per window. The per-address limit stops one machine from spraying
//! many accounts. State is in memory: a restart forgets it, which only hands an attacker
//! one more window, and keeps the database free of attempt logs that would name accounts.
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::LoginLimits;

#[derive(Default)]
struct Windows {
    accounts: HashMap<String, VecDeque<Instant>>,
    addresses: HashMap<IpAddr, VecDeque<Instant>>,
}

/// The limiter. One per broker.
pub struct LoginLimiter {
    limits: LoginLimits,
    state: Mutex<Windows>,
}

fn prune(q: &mut VecDeque<Instant>, window: Duration, now: Instant) {
    while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
        q.pop_front();
    }
}

fn retry_after(q: &VecDeque<Instant>, window: Duration, now: Instant) -> u64 {
    q.front().map(|t| window.saturating_sub(now.duration_since(*t)).as_secs() + 1).unwrap_or(1)
}

impl LoginLimiter {
    pub fn new(limits: LoginLimits) -> Self {
        LoginLimiter { limits, state: Mutex::new(Windows::default()) }
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.limits.window_secs)
    }

    /// `Err(seconds)` if this account or address must wait before trying again.
    pub fn check(&self, account: &str, addr: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
        let w = self.window();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = s.accounts.get_mut(account) {
            prune(q, w, now);
            if q.len() >= self.limits.max_failures_per_account as usize {
                return Err(retry_after(q, w, now));
            }
        }
        if let Some(q) = s.addresses.get_mut(&addr) {
            prune(q, w, now);
            if q.len() >= self.limits.max_failures_per_address as usize {
                return Err(retry_after(q, w, now));
            }
        }
        Ok(())
    }

    /// Count a failed attempt.
    pub fn failed(&self, account: &str, addr: IpAddr) {
        let now = Instant::now();
        let w = self.window();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Bound memory under a spray of random account names: drop empty windows first.
        if s.accounts.len() > 100_000 {
            s.accounts.retain(|_, q| {
                prune(q, w, now);
                !q.is_empty()
            });
        }
        if s.addresses.len() > 100_000 {
            s.addresses.retain(|_, q| {
                prune(q, w, now);
                !q.is_empty()
            });
        }
        s.accounts.entry(account.to_owned()).or_default().push_back(now);
        s.addresses.entry(addr).or_default().push_back(now);
    }

    /// A successful login clears the account's failures (not the address's).
    pub fn succeeded(&self, account: &str) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.accounts.remove(account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_and_address_limits() {
        let l = LoginLimiter::new(LoginLimits { max_failures_per_account: 2, max_failures_per_address: 3, window_secs: 60 });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.check("x", a).is_ok());
        l.failed("x", a);
        l.failed("x", a);
        let wait = l.check("x", b).unwrap_err();
        assert!((1..=61).contains(&wait), "{wait}");
        assert!(l.check("y", a).is_ok());
        l.failed("y", a);
        assert!(l.check("z", a).is_err(), "address limit");
        assert!(l.check("z", b).is_ok());
        l.succeeded("x");
        assert!(l.check("x", b).is_ok());
    }
}
