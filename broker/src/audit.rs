//! Where the broker's decisions go: an [`AuditSink`]. By default the sink is the
//! `cleave-audit` Merkle log in `<data>/audit/` ([`AuditTrail`]): every event becomes one
//! signed, verifiable entry, durable before the request goes on. [`LogSink`] writes the
//! same events to the tracing log instead (tests and tools that replace the sink).
//!
//! Events carry no PHI and no token content: who (account or device, grant id, share id,
//! certificate fingerprint), what (operation, store, route template), the outcome and the
//! kind of denial. The patient and study a request concerns travel in the event only to be
//! turned into keyed references (`KeyPurpose::AuditReference`) by the trail; they are never
//! serialized, so [`LogSink`] cannot print them either.
use std::path::Path;

use cleave_audit::{Actor, ActorKind, AuditLog, Entry, LogOptions, Operation, Outcome, ReferenceKey};
use cleave_keys::{KeyPurpose, Keyring};
use serde::Serialize;

/// One decision.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AuditEvent {
    /// What happened: `login`, `device-token`, `access`, `share-revoke`, `grant-revoke`,
    /// `user-add`, `user-disable`, `device-revoke`, `ingest`, `export`, `review-resolve`,
    /// `merge`, `key-rotate`. Anything else is refused by [`AuditTrail`] (fail closed).
    pub action: &'static str,
    /// `allow`, `deny` or `error`.
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
    /// The SHA-256 fingerprint (hex) of the client certificate, if any.
    pub cert_sha256: Option<String>,
    /// The patients (pseudonyms) the request concerns. Never serialized: the trail stores
    /// only their keyed references.
    #[serde(skip)]
    pub patients: Vec<String>,
    /// The study (UID) the request concerns. Never serialized, like `patient`.
    #[serde(skip)]
    pub study: Option<String>,
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
            cert_sha256: None,
            patients: Vec::new(),
            study: None,
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

/// The origin line of the broker's checkpoints (and the name of its signing key).
pub const AUDIT_ORIGIN: &str = "cleave.local/audit";

/// The broker's audit log: the `cleave-audit` log plus the key that turns pseudonyms and
/// study UIDs into references.
pub struct AuditTrail {
    log: AuditLog,
    refs: ReferenceKey,
    syslog: Option<crate::syslog::SyslogForwarder>,
}

impl std::fmt::Debug for AuditTrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditTrail({:?})", self.log)
    }
}

/// A purpose's *first* key version: the audit log's keys never rotate (see
/// [`AuditTrail::open`]).
fn first_key(keyring: &Keyring, purpose: KeyPurpose) -> Result<cleave_keys::VersionedKey, crate::Error> {
    let first = keyring.versions(purpose).into_iter().min().unwrap_or(1);
    Ok(keyring.unwrap(purpose, first)?)
}

impl AuditTrail {
    /// Open (or create) `<data>/audit/`. Both keys are the purposes' *first* versions: the
    /// signing key is the trust anchor auditors pinned and the reference key must give the
    /// same reference for a patient across the log's whole life ("who accessed this
    /// patient" spans years), so rotating either would cut the log in two.
    pub fn open(data_dir: &Path, keyring: &Keyring, checkpoint_every: std::time::Duration) -> Result<Self, crate::Error> {
        Self::open_log(data_dir, keyring, checkpoint_every)?.map_err(audit_error)
    }

    /// [`open`](Self::open), handing back the log's own error so that a caller can tell
    /// "a running broker holds the log" (`cleave_audit::Error::Locked`) from a failure.
    pub(crate) fn open_log(
        data_dir: &Path,
        keyring: &Keyring,
        checkpoint_every: std::time::Duration,
    ) -> Result<Result<Self, cleave_audit::Error>, crate::Error> {
        let signing = first_key(keyring, KeyPurpose::AuditSigning)?;
        let reference = first_key(keyring, KeyPurpose::AuditReference)?;
        let mut options = LogOptions::new(AUDIT_ORIGIN);
        options.checkpoint_interval = Some(checkpoint_every);
        let dir = data_dir.join("audit");
        let log = match AuditLog::open(&dir, options, &signing.key) {
            Ok(log) => log,
            Err(e) => return Ok(Err(e)),
        };
        if !log.recovery().is_empty() {
            tracing::warn!(target: "cleave::audit", "the audit log cut a torn tail left by a crash; see its log-recovery entry");
        }
        Ok(Ok(AuditTrail { log, refs: ReferenceKey::new(reference.key), syslog: None }))
    }

    /// Checks `<data>/audit/` from its files alone, as an auditor's `cleave audit verify`
    /// would but without the network: every entry against every signed checkpoint, with the
    /// key this data directory signs with. Reads only; for the IT team when the broker
    /// refuses requests because its history check failed (README, "When the audit log
    /// stops the broker"). Run it with the broker stopped: a log being appended to may end
    /// in a record still being written.
    pub fn verify_offline(data_dir: &Path, keyring: &Keyring) -> Result<Result<cleave_audit::VerifyReport, cleave_audit::VerifyError>, crate::Error> {
        let signing = first_key(keyring, KeyPurpose::AuditSigning)?;
        let verifier = cleave_audit::CheckpointSigner::from_audit_signing_key(AUDIT_ORIGIN, &signing.key).map_err(audit_error)?.verifier();
        Ok(cleave_audit::verify_dir(&data_dir.join("audit"), &verifier, None))
    }

    /// Puts `<data>/audit/` back from `copy`, a copy taken with the broker stopped, after
    /// the live log was found altered or damaged (README, "When the audit log stops the
    /// broker"): refused while a broker runs or if the copy does not verify under this data
    /// directory's key; otherwise the copy becomes the live log with a `log-recovery` entry
    /// by the operator running the command, and the log it replaces is kept beside it as
    /// evidence. [`cleave_audit::restore`] gives the order of steps.
    pub fn restore_offline(
        data_dir: &Path,
        keyring: &Keyring,
        copy: &Path,
    ) -> Result<Result<cleave_audit::Restored, cleave_audit::RestoreError>, crate::Error> {
        let signing = first_key(keyring, KeyPurpose::AuditSigning)?;
        let entry = Entry::new(crate::operator_audit::actor(), Operation::LogRecovery, Outcome::Allowed);
        Ok(cleave_audit::restore(&data_dir.join("audit"), copy, LogOptions::new(AUDIT_ORIGIN), &signing.key, &entry))
    }

    /// Also send a copy of every entry to a syslog/TLS collector, from where forwarding
    /// stopped last time (see `syslog.rs`).
    pub(crate) fn with_syslog(mut self, cfg: &crate::syslog::SyslogConfig, data_dir: &Path) -> Result<Self, crate::Error> {
        let cursor = crate::syslog::cursor_path(data_dir);
        self.syslog = Some(crate::syslog::SyslogForwarder::start(cfg, AUDIT_ORIGIN, self.log.reader(), cursor)?);
        Ok(self)
    }

    /// Record that the first run created the bootstrap administrator (before the log was
    /// open, so no request recorded it).
    pub(crate) fn record_bootstrap(&self) -> Result<(), crate::Error> {
        self.append_system([Entry::new(Actor::new(ActorKind::System, "cleave-broker"), Operation::Enroll, Outcome::Allowed)])
    }

    /// Appends entries the broker makes on its own (no request, so no waiting caller),
    /// then wakes the syslog forwarder once.
    fn append_system(&self, entries: impl IntoIterator<Item = Entry>) -> Result<(), crate::Error> {
        let mut any = false;
        for entry in entries {
            self.log.append(&entry).map_err(audit_error)?;
            any = true;
        }
        if let (true, Some(s)) = (any, &self.syslog) {
            s.notify();
        }
        Ok(())
    }

    /// One `ingest` entry by the system actor `clinical-store-sweep` for each instance the
    /// clinical store filed again when it opened (a crash had lost its index row; its blob
    /// held the row as its record: clinical-store FORMAT.md, "Writing durably"), under the
    /// patient's and the study's keyed references like any ingest. The device's own entry
    /// may be there too (the instance was acknowledged) or not (the crash came first).
    pub(crate) fn record_refiled(&self, refiled: &[clinical_store::Refiled]) -> Result<(), crate::Error> {
        self.append_system(refiled.iter().map(|r| {
            Entry::new(Actor::new(ActorKind::System, "clinical-store-sweep"), Operation::Ingest, Outcome::Allowed)
                .with_resource(self.refs.patient_ref(&r.pseudonym))
                .with_resource(self.refs.study_ref(&r.study_uid))
        }))
    }

    pub fn log(&self) -> &AuditLog {
        &self.log
    }

    /// The next leaf the syslog forwarder will send, if forwarding is on.
    pub(crate) fn syslog_next(&self) -> Option<u64> {
        self.syslog.as_ref().map(|s| s.next())
    }

    pub fn refs(&self) -> &ReferenceKey {
        &self.refs
    }

    /// Turn a broker event into a log entry.
    pub(crate) fn entry(&self, e: &AuditEvent) -> Result<Entry, crate::Error> {
        let operation = operation_of(e).ok_or_else(|| {
            crate::Error::Config(format!("audit event `{}` has no audit operation; this is a broker bug", e.action))
        })?;
        let outcome = match e.outcome {
            "allow" => Outcome::Allowed,
            "deny" => Outcome::denied(kind_token(e.reason.as_deref().unwrap_or("refused"))),
            _ => Outcome::error(kind_token(e.reason.as_deref().unwrap_or("failed"))),
        };
        let mut entry = Entry::new(actor_of(e), operation, outcome);
        for p in &e.patients {
            entry = entry.with_resource(self.refs.patient_ref(p));
        }
        if let Some(s) = &e.study {
            entry = entry.with_resource(self.refs.study_ref(s));
        }
        Ok(entry)
    }
}

impl AuditSink for std::sync::Arc<AuditTrail> {
    fn record(&self, event: &AuditEvent) -> Result<(), crate::Error> {
        let entry = self.entry(event)?;
        // Returns once the entry is fsync'd (group commit): the request goes on only then.
        let pending = self.log.submit(&entry).map_err(audit_error)?;
        // `record` is called from async handlers. Waiting for the fsync on a runtime worker
        // would hold that worker (there are two on a 2-core host), capping the appends in
        // flight, and so the batch size, at the number of workers. `block_in_place` hands
        // the worker's other tasks to another thread while this one waits, so hundreds of
        // requests share each fsync. It is only allowed on the multi-threaded runtime.
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let index = if multi { tokio::task::block_in_place(|| pending.wait()) } else { pending.wait() };
        index.map_err(audit_error)?;
        if let Some(s) = &self.syslog {
            s.notify();
        }
        Ok(())
    }
}

pub(crate) fn audit_error(e: cleave_audit::Error) -> crate::Error {
    // cleave-audit's messages name files and rules, never entry content.
    crate::Error::Audit(e.to_string())
}

/// The audit operation of a broker event; `None` for an action the trail does not know.
fn operation_of(e: &AuditEvent) -> Option<Operation> {
    let allowed = e.outcome == "allow";
    Some(match e.action {
        "login" | "device-token" if allowed => Operation::Login,
        "login" | "device-token" => Operation::LoginFailed,
        "logout" => Operation::Logout,
        "share-revoke" | "grant-revoke" | "user-disable" | "device-revoke" => Operation::Revoke,
        "user-add" | "device-enroll" => Operation::Enroll,
        "ingest" => Operation::Ingest,
        "export" => Operation::Export,
        "review-resolve" => Operation::ReviewResolve,
        "merge" => Operation::Merge,
        "key-rotate" => Operation::KeyRotate,
        "share-used" => Operation::ShareUsed,
        "access" => access_operation(e),
        // Data-path follow-ups, recorded once the store named the patients touched.
        "identity-read" => Operation::IdentityRead,
        "identity-search" => Operation::IdentitySearch,
        "identity-write" => Operation::IdentityWrite,
        _ => return None,
    })
}

/// An authorization decision, named by what it was for.
fn access_operation(e: &AuditEvent) -> Operation {
    let route = e.route.as_deref().unwrap_or("");
    let search = route == "/api/v1/identity/patients" || (route.starts_with("/dicomweb/") && route_is_query(route));
    match (e.op, e.store) {
        (Some("read"), Some("identity")) if search => Operation::IdentitySearch,
        (Some("read"), Some("identity")) => Operation::IdentityRead,
        (Some("write"), Some("identity")) => Operation::IdentityWrite,
        (Some("read"), Some("clinical")) if search => Operation::ClinicalSearch,
        (Some("read"), Some("clinical")) => Operation::ClinicalRead,
        (Some("write"), Some("clinical")) if route.contains("observations") => Operation::ObservationWrite,
        (Some("write"), Some("clinical")) => Operation::NoteWrite,
        (Some("append"), _) => Operation::Ingest,
        (Some("export"), _) => Operation::Export,
        (Some("audit"), _) => Operation::AuditRead,
        (Some("share"), _) => Operation::ShareCreate,
        // Account, device and review administration: "user security attributes" in ATNA.
        (Some("admin"), _) => Operation::Enroll,
        _ => Operation::Denied,
    }
}

/// QIDO-RS searches (as opposed to WADO-RS retrieves) are the routes without a resource
/// at the end: `/dicomweb/studies`, `.../series`, `.../instances`.
fn route_is_query(route: &str) -> bool {
    route.ends_with("/studies") || route.ends_with("/series") || route.ends_with("/instances")
}

/// The allowed alphabets of `cleave-audit` actor fields.
fn fits(s: &str, extra: &[u8]) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

fn actor_of(e: &AuditEvent) -> Actor {
    let (kind, name) = match e.actor.as_deref() {
        Some(a) if a.starts_with("device:") => (ActorKind::Device, a.replacen(':', "-", 1)),
        Some(a) if e.action == "device-token" => (ActorKind::Device, a.to_owned()),
        Some(a) => (if e.share_id.is_some() { ActorKind::Consultant } else { ActorKind::Staff }, a.to_owned()),
        None => (ActorKind::Staff, "unknown".to_owned()),
    };
    // Names come from accounts and device labels the administrator chose; one outside the
    // log's alphabet is replaced rather than refused, so the decision is still recorded.
    let name = if fits(&name, b"._@- ") { name } else { "unrepresentable-name".to_owned() };
    let mut actor = Actor::new(kind, name);
    actor.grant = e.grant_id.clone().filter(|g| fits(g, b"_-"));
    actor.shares = e.share_id.iter().filter(|s| fits(s, b"_-")).cloned().collect();
    actor.cert_sha256 = e.cert_sha256.as_deref().and_then(|h| {
        let mut out = [0u8; 32];
        hex::decode_to_slice(h, &mut out).ok().map(|_| out)
    });
    actor
}

/// A free-text reason as a `cleave-audit` outcome kind: `a-z 0-9 -`, at most 64
/// characters. Reasons are the broker's own PHI-free messages; this only reshapes them.
fn kind_token(reason: &str) -> String {
    let mut out = String::new();
    for c in reason.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
        if out.len() >= 64 {
            break;
        }
    }
    let trimmed = out.trim_end_matches('-');
    if trimmed.is_empty() { "unspecified".to_owned() } else { trimmed.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_become_tokens_of_the_log_alphabet() {
        assert_eq!(kind_token("access denied: the token is not bound to this certificate"), "access-denied-the-token-is-not-bound-to-this-certificate");
        assert_eq!(kind_token("!!!"), "unspecified");
        let long = kind_token(&"word ".repeat(40));
        assert!(long.len() <= 64 && !long.ends_with('-'), "{long}");
    }

    #[test]
    fn every_action_the_broker_emits_has_an_operation_and_unknown_ones_fail() {
        for action in [
            "login", "device-token", "share-revoke", "grant-revoke", "user-add", "user-disable", "device-revoke",
            "ingest", "export", "review-resolve", "merge", "key-rotate", "access",
        ] {
            let e = AuditEvent::new(action, "allow");
            assert!(operation_of(&e).is_some(), "{action}");
        }
        assert_eq!(operation_of(&AuditEvent::new("something-new", "allow")), None);
        assert_eq!(operation_of(&AuditEvent::new("login", "deny")), Some(Operation::LoginFailed));
    }

    #[test]
    fn searches_and_reads_are_told_apart() {
        let mut e = AuditEvent::new("access", "allow");
        e.op = Some("read");
        e.store = Some("clinical");
        e.route = Some("/dicomweb/studies".into());
        assert_eq!(access_operation(&e), Operation::ClinicalSearch);
        e.route = Some("/dicomweb/studies/{study}".into());
        assert_eq!(access_operation(&e), Operation::ClinicalRead);
        e.store = Some("identity");
        e.route = Some("/api/v1/identity/patients".into());
        assert_eq!(access_operation(&e), Operation::IdentitySearch);
        e.route = Some("/api/v1/identity/patients/{patient}".into());
        assert_eq!(access_operation(&e), Operation::IdentityRead);
    }

    #[test]
    fn names_outside_the_alphabet_are_replaced_and_devices_are_devices() {
        let mut e = AuditEvent::new("access", "allow");
        e.actor = Some("Dr. Ünicode\n".into());
        assert_eq!(actor_of(&e).name, "unrepresentable-name");
        e.actor = Some("device:0123456789abcdef".into());
        let a = actor_of(&e);
        assert_eq!((a.kind, a.name.as_str()), (ActorKind::Device, "device-0123456789abcdef"));
    }
}
