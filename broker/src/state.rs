//! The state every handler shares.
use std::sync::Arc;

use crate::accounts::Accounts;
use crate::audit::{AuditSink, AuditTrail};
use crate::config::Config;
use crate::ratelimit::LoginLimiter;
use crate::stores::Stores;

/// Verified tokens remembered at most: far above a hospital's staff and devices on shift,
/// and a few MiB at most (a cache miss only costs a full verification).
const VERIFIED_TOKENS: usize = 20_000;

/// Shared by all handlers of one broker.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub config: Config,
    pub accounts: Accounts,
    pub limiter: LoginLimiter,
    pub audit: Box<dyn AuditSink>,
    /// The log itself, for the auditor's endpoints (the sink above writes to it unless a
    /// test replaced the sink).
    pub trail: Arc<AuditTrail>,
    pub stores: Stores,
    /// The one ingest path, shared by STOW-RS and DIMSE.
    pub pipeline: crate::ingest::Pipeline,
    /// Tokens whose HMAC chain has verified under this broker's grants: a session token
    /// pays for its chain once; every caveat is still checked on every request.
    pub verified: cleave_tokens::VerifiedTokens,
    /// Counters for the hospital's monitoring (`/api/v1/metrics`).
    pub metrics: crate::metrics::Metrics,
}

impl AppState {
    pub(crate) fn new(
        config: Config,
        accounts: Accounts,
        audit: Box<dyn AuditSink>,
        trail: Arc<AuditTrail>,
        stores: Stores,
        pipeline: crate::ingest::Pipeline,
    ) -> Self {
        let limiter = LoginLimiter::new(config.login.clone());
        let verified = cleave_tokens::VerifiedTokens::new(VERIFIED_TOKENS);
        let metrics = crate::metrics::Metrics::new(config.audit_syslog.is_some());
        AppState { inner: Arc::new(Inner { config, accounts, limiter, audit, trail, stores, pipeline, verified, metrics }) }
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}
