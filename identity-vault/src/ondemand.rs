//! The vault as a store that is closed until a request needs it.
//!
//! Between requests the vault holds no key and no open file: [`Vault::on_demand`] wraps it
//! in a [`cleave_keys::OnDemand`], which unwraps the keys and opens the database on the
//! first request, and drops both (keys zeroized, connection closed, WAL checkpointed) once
//! the vault has been idle for the TTL.
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cleave_keys::{Keyring, OnDemand};

use crate::{Error, Result, Vault, VaultKeys};

/// How long an idle vault stays open by default.
pub const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(30);

/// The name the vault has in [`OnDemand`] logs and metrics.
const NAME: &str = "identity-vault";

impl Vault {
    /// A vault at `path` that opens on demand with keys from `keyring`, and closes after
    /// `idle_ttl` without requests (zero: after every request). A reaper thread does the
    /// closing; it ends when the returned handle is dropped.
    pub fn on_demand(path: PathBuf, keyring: Arc<RwLock<Keyring>>, idle_ttl: Duration) -> Arc<OnDemand<Vault, Error>> {
        Self::on_demand_with(path, idle_ttl, move || {
            let ring = keyring.read().unwrap_or_else(|p| p.into_inner());
            VaultKeys::unwrap(&ring)
        })
    }

    /// As [`Vault::on_demand`], with the keys from a closure (e.g. one that asks an
    /// operator-held key service).
    pub fn on_demand_with(
        path: PathBuf,
        idle_ttl: Duration,
        keys: impl Fn() -> Result<VaultKeys> + Send + Sync + 'static,
    ) -> Arc<OnDemand<Vault, Error>> {
        let store = OnDemand::new(NAME, idle_ttl, move || Vault::open(&path, keys()?));
        if !idle_ttl.is_zero() {
            store.start_reaper();
        }
        store
    }
}
