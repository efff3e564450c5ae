//! Auditing the `cleave-broker` command line: an operator's change to the data directory
//! (enrolling a certificate, adding or disabling an account, revoking a device, rotating a
//! key, or reading the account lists) is a decision like any other and goes into the same
//! signed log as the server's.
//!
//! Only one process may append to the log (it holds an exclusive lock on `<data>/audit`).
//! So the command line appends itself when no broker runs, and when one does it refuses
//! to act at all, pointing at the audited API (`cleave admin ...`) or at stopping the
//! broker: an unrecorded change is worse than a refused one.
//!
//! Order: the decision is recorded (durably) before the change is made; if the change
//! then fails, a second entry records the failure. A change is never made unrecorded.
use std::time::Duration;

use cleave_audit::{Actor, ActorKind, Entry, Operation, Outcome};

use crate::audit::{audit_error, AuditTrail};
use crate::{Error, Opened};

/// What an operator command does, as the log names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OperatorAction {
    /// `enroll person`, `enroll device`, `device add`, `user add`.
    Enroll,
    /// `user disable`, `device revoke`.
    Revoke,
    /// `keys rotate`.
    KeyRotate,
    /// `user list`, `device list`: reading who may do what (recorded as the broker records
    /// its own account administration routes).
    ListAccounts,
}

impl OperatorAction {
    fn operation(self) -> Operation {
        match self {
            OperatorAction::Enroll | OperatorAction::ListAccounts => Operation::Enroll,
            OperatorAction::Revoke => Operation::Revoke,
            OperatorAction::KeyRotate => Operation::KeyRotate,
        }
    }
}

/// The audit log, held by an operator command for its duration.
pub struct OperatorAudit {
    trail: AuditTrail,
    actor: Actor,
}

impl std::fmt::Debug for OperatorAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OperatorAudit({})", self.actor.name)
    }
}

/// The refusal of an operator command while a broker holds the audit log: nothing was
/// changed, and `instead` says what to do.
pub fn broker_running(instead: &str) -> Error {
    Error::Config(format!(
        "a broker is running on this data directory and holds its audit log, so this command could not \
         be recorded and nothing was changed; {instead}"
    ))
}

/// The actor name of the command line: `cleave-broker-cli`, with the operating-system
/// account that ran it when its name fits the log's alphabet (it is informative only: the
/// person is whoever can read the data directory and its master key).
pub(crate) fn actor() -> Actor {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_default();
    let name = format!("cleave-broker-cli@{user}");
    let fits = !user.is_empty() && name.len() <= 64 && user.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    Actor::new(ActorKind::System, if fits { name } else { "cleave-broker-cli".to_owned() })
}

/// A PHI-free, stable token for a failure (the log's outcome kinds are tokens, not text).
fn failure_kind(e: &Error) -> &'static str {
    match e {
        Error::Io { .. } => "io-error",
        Error::Config(_) => "configuration-error",
        Error::Pki(_) => "certificate-error",
        Error::Keys(_) => "key-error",
        Error::Database(_) => "database-error",
        Error::NotFound(_) => "not-found",
        Error::Conflict(_) => "conflict",
        Error::BadRequest(_) => "bad-request",
        _ => "failed",
    }
}

impl OperatorAudit {
    /// Open `<data>/audit` for one operator command; `instead` tells the operator what to
    /// do when a broker is running (an audited route, or stopping the broker).
    /// When a running broker holds the log, nothing may be done from the command line:
    /// the error says which audited route to use instead.
    pub fn open(opened: &Opened, instead: &str) -> Result<Self, Error> {
        // Checkpoint at least every second while held; dropping the log signs a last one,
        // so the command's entries are covered by a checkpoint when it exits.
        match AuditTrail::open_log(&opened.data_dir, &opened.keyring, Duration::from_secs(1))? {
            Ok(trail) => {
                if opened.bootstrap.is_some() {
                    // Opening the data directory just created the bootstrap administrator.
                    trail.record_bootstrap()?;
                }
                Ok(OperatorAudit { trail, actor: actor() })
            }
            Err(cleave_audit::Error::Locked(_)) => Err(broker_running(instead)),
            Err(e) => Err(audit_error(e)),
        }
    }

    fn record(&self, action: OperatorAction, outcome: Outcome) -> Result<u64, Error> {
        self.trail.log().append(&Entry::new(self.actor.clone(), action.operation(), outcome)).map_err(audit_error)
    }

    /// Record the decision to do `action`, do it, and record a failure if it fails.
    pub fn run<T>(&self, action: OperatorAction, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
        self.record(action, Outcome::Allowed)?;
        match f() {
            Ok(v) => Ok(v),
            Err(e) => {
                if let Err(log) = self.record(action, Outcome::error(failure_kind(&e))) {
                    tracing::error!(target: "cleave::audit", error = %log, "could not record the failure of an operator command");
                }
                Err(e)
            }
        }
    }
}
