//! The one error type of the client library and the `cleave` command.
//!
//! Every message says what happened and what to do next. None carries PHI, a token or a
//! secret: server answers are reduced to their status and the server's own message (which
//! the broker guarantees to be PHI-free), local failures name the file involved (a path the
//! user chose), never the content.
use std::path::PathBuf;

/// Everything that can go wrong in a client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A local file or directory could not be read or written.
    #[error("{action} {path}: {source}; check the path and its permissions")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The profile is missing, malformed or incomplete.
    #[error("profile: {0}")]
    Profile(String),
    /// No token is stored for this profile and none was given.
    #[error("no token: run `cleave login` first (or pass --token / set CLEAVE_TOKEN)")]
    NoToken,
    /// The TLS material (CA, certificate, key) could not be loaded.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The server could not be reached or the connection failed.
    #[error("cannot reach the server ({0}); check the server URL in the profile and that the broker is running")]
    Connect(String),
    /// The server refused the token (401): it is missing, expired or revoked.
    #[error("the server refused the token: {message} (log in again with `cleave login`, or ask for a new share)")]
    Unauthorized { message: String },
    /// The server understood the token but it does not allow this request (403).
    #[error("not allowed: {message}")]
    Forbidden { message: String },
    /// The thing asked for does not exist, or the route is unknown to this server (404).
    #[error("not found: {message}")]
    NotFound { message: String },
    /// The server has this endpoint but its store is not connected in this build (501).
    #[error("the server does not offer this yet: {message} (ask the administrator to upgrade the broker)")]
    NotAvailable { message: String },
    /// Any other error answer from the server.
    #[error("the server answered {status} ({code}): {message}")]
    Server { status: u16, code: String, message: String },
    /// The server's answer could not be understood.
    #[error("unexpected answer from the server: {0}; check that the profile points at a Cleave broker of a matching version")]
    Protocol(String),
    /// A token could not be narrowed or parsed.
    #[error("token: {0}")]
    Token(String),
    /// A command-line value is not usable.
    #[error("{0}")]
    Usage(String),
    /// Audit log verification found the server's log inconsistent with what was seen before.
    #[error("audit log verification FAILED: {0}; keep the saved checkpoint and report this to the security officer")]
    AuditInconsistent(String),
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io { action, path: path.to_owned(), source }
    }

    /// The process exit code for this error: 2 for usage and configuration problems, 3
    /// for refusals (401/403), 4 for not found, 5 for an audit inconsistency, 1 otherwise.
    /// Scripts rely on these.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Profile(_) | Error::NoToken | Error::Tls(_) => 2,
            Error::Unauthorized { .. } | Error::Forbidden { .. } => 3,
            Error::NotFound { .. } => 4,
            Error::AuditInconsistent(_) => 5,
            _ => 1,
        }
    }

    /// A short stable code for `--json` error output.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::Profile(_) => "profile",
            Error::NoToken => "no_token",
            Error::Tls(_) => "tls",
            Error::Connect(_) => "connect",
            Error::Unauthorized { .. } => "unauthorized",
            Error::Forbidden { .. } => "forbidden",
            Error::NotFound { .. } => "not_found",
            Error::NotAvailable { .. } => "not_available",
            Error::Server { .. } => "server",
            Error::Protocol(_) => "protocol",
            Error::Token(_) => "token",
            Error::Usage(_) => "usage",
            Error::AuditInconsistent(_) => "audit_inconsistent",
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
