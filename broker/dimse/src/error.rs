//! The crate's one error type: what can go wrong when starting or stopping the server.
//!
//! Problems inside one association (a peer that speaks garbage, a TLS failure, a sink that
//! fails) never surface here: they end that association, are logged without PHI, and the
//! server keeps serving everyone else.

use std::io;

/// Errors returned by [`DimseServer`](crate::DimseServer) and its [`ServerHandle`](crate::ServerHandle).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DimseError {
    /// The listening socket could not be bound.
    #[error("cannot bind the DICOM TLS port: {0}; check that the address is free and that this process may listen on it")]
    Bind(#[source] io::Error),

    /// A configuration value is out of its allowed range.
    #[error("invalid DIMSE configuration: {0}; fix the value in DimseConfig")]
    Config(&'static str),

    /// Accepting connections failed in a way the server cannot recover from.
    #[error("the DICOM TLS listener failed: {0}; restart the server")]
    Listener(#[source] io::Error),

    /// The server task ended abnormally (it panicked or was cancelled).
    #[error("the DIMSE server task ended abnormally; see the log and restart the server")]
    TaskFailed,
}

/// Result type of this crate.
pub type Result<T, E = DimseError> = std::result::Result<T, E>;
