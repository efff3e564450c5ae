//! Where the broker's decisions go: an [`AuditSink`]. Every call site exists from the start;
//! until the `cleave-audit` Merkle log is wired, [`LogSink`] writes the same events to the
//! tracing log. Events carry no PHI and no token content: who (account or device label,
//! grant id), what (operation, store, route name), the outcome and the kind of denial.
use serde::Serialize;

/// One decision.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AuditEvent {
    /// What happened: `login`, `device-token`, `access`, `share-revoke`, `grant-revoke`, ...
    pub action: &'static str,
    /// `allow` or `deny`.
    pub outcome: &'static str,
    /// The account name or device label, when known. Staff names, not patient data.
    pub actor: Option<String>,
    pub grant_id: Option<String>,
    pub share_id: Option<String>,
    pub op: Option<&'static str>,
    pub store: Option<&'static str>,
    /// The route template (e.g. `/dicomweb/studies/{study}`), never the concrete path.
    pub route: Option<String>,
    /// The kind of caveat or check that refused the request.
    pub reason: Option<String>,
}

impl AuditEvent {
    pub fn new(action: &'static str, outcome: &'static str) -> Self {
        AuditEvent {
            action,
            outcome,
            actor: None,
            grant_id: None,
            share_id: None,
            op: None,
            store: None,
            route: None,
            reason: None,
        }
    }
}

/// Something that records decisions durably. The broker refuses a request whose decision
/// cannot be recorded.
pub trait AuditSink: Send + Sync + 'static {
    fn record(&self, event: &AuditEvent) -> Result<(), crate::Error>;
}

/// Writes events to the tracing log at info level (target `cleave::audit`).
#[derive(Debug, Default)]
pub struct LogSink;

impl AuditSink for LogSink {
    fn record(&self, event: &AuditEvent) -> Result<(), crate::Error> {
        let json = serde_json::to_string(event).unwrap_or_default();
        tracing::info!(target: "cleave::audit", "{json}");
        Ok(())
    }
}
