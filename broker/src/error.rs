//! The one error type of the broker: setup failures and HTTP answers alike.
//!
//! Every variant's message says what happened and what to do about it, and none carries
//! PHI, a secret or any part of a token: messages name *kinds* of things (a caveat kind,
//! a route, a file path the operator configured), never values that came with a request.
//! The HTTP form is one JSON shape everywhere: `{"error": {"code": "...", "message": "..."}}`.
//! Internal failures answer with a generic message; their detail goes to the log, which is
//! why that detail must be PHI-free as well.
use std::path::PathBuf;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Everything that can go wrong in the broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{action} {path}: {source}; check the path and its permissions")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is malformed or names something unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// A certificate or key could not be made or loaded.
    #[error("certificates: {0}")]
    Pki(String),
    /// The key hierarchy refused (wrong master key, tampered keyring...).
    #[error(transparent)]
    Keys(#[from] cleave_keys::Error),
    /// The broker's own database failed.
    #[error("the broker database failed ({0}); check disk space and the file's permissions")]
    Database(String),
    /// No usable credentials were presented (missing, malformed or wrong).
    #[error("{0}")]
    Unauthorized(String),
    /// Credentials were valid but do not allow this request.
    #[error("{0}")]
    Forbidden(String),
    /// The route or the named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The body is of a media type this route does not take.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// The `Accept` header asks for a representation this route cannot produce; the
    /// message names what it can.
    #[error("not acceptable: {0}")]
    NotAcceptable(String),
    /// The body exceeds the configured limit.
    #[error("the request body is larger than this server accepts; send less data per request")]
    PayloadTooLarge,
    /// The request body arrived too slowly (see `min_body_bytes_per_sec`).
    #[error("the request body arrived too slowly; the request was dropped and nothing was stored: send it again over a faster link")]
    RequestTimeout,
    /// Too many attempts; try again after the given number of seconds.
    #[error("too many attempts; try again in {retry_after_secs} seconds")]
    TooManyRequests { retry_after_secs: u64 },
    /// The endpoint exists and the caller is authorized, but its store is not connected
    /// in this build.
    #[error("{0} is not available in this build of the broker yet")]
    NotWired(&'static str),
    /// The route exists but not with this HTTP method.
    #[error("this route does not accept that HTTP method; see /api/v1/openapi.json")]
    MethodNotAllowed,
    /// The audit log refused or failed; the request is refused with it, since a decision
    /// that cannot be recorded is not taken. 503 `audit_unavailable`, with a fixed message
    /// (the detail, logged, names files).
    #[error("the audit log failed ({0}); check the disk holding <data>/audit")]
    Audit(String),
    /// `cleave-broker audit verify` found the log altered or damaged: a finding about the
    /// evidence, not a fault of this run. The message says what to keep and where to read on.
    #[error("{0}")]
    AuditDoesNotVerify(String),
    /// A store (identity vault, clinical store) failed; the detail is PHI-free.
    #[error("{0}")]
    Store(String),
    /// A conflict with existing state (e.g. a username that already exists).
    #[error("{0}")]
    Conflict(String),
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io { action, path: path.to_owned(), source }
    }

    /// 403: the token is valid but a caveat (of the kind named) does not allow this.
    pub fn forbidden(kind: impl std::fmt::Display) -> Self {
        Error::Forbidden(format!("access denied: {kind}"))
    }

    /// 401: no valid credentials; `why` says what was wrong with them.
    pub fn unauthorized(why: impl Into<String>) -> Self {
        Error::Unauthorized(why.into())
    }

    /// 404: `what` names the kind of thing that was not found, never a value.
    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound(what.into())
    }

    /// 400: `why` says what is malformed, never echoing the request's content.
    pub fn bad_request(why: impl Into<String>) -> Self {
        Error::BadRequest(why.into())
    }

    /// 413.
    pub fn payload_too_large() -> Self {
        Error::PayloadTooLarge
    }

    /// 429 with `Retry-After`.
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        Error::TooManyRequests { retry_after_secs: retry_after_secs.max(1) }
    }

    pub(crate) fn db(e: rusqlite::Error) -> Self {
        // rusqlite's messages name SQL and constraint failures, never bound values.
        Error::Database(e.to_string())
    }

    /// The HTTP status and stable machine-readable code for this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Error::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Error::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Error::NotAcceptable(_) => (StatusCode::NOT_ACCEPTABLE, "not_acceptable"),
            Error::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            Error::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            Error::NotWired(_) => (StatusCode::NOT_IMPLEMENTED, "not_wired"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Error::Audit(_) => (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// The JSON body of every error answer.
pub(crate) fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({ "error": { "code": code, "message": message } }).to_string()
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            // The detail is PHI-free by construction but may name server paths: log it,
            // tell the client only that it was not their fault.
            tracing::error!(error = %self, "request failed inside the broker");
            "the server failed to handle this request; the administrator can find the cause in the broker's log"
                .to_owned()
        } else if let Error::Audit(_) = self {
            // Its own code, so monitoring and clients can tell "nothing can be recorded, so
            // nothing is done" from a fault in one request; the detail names files.
            tracing::error!(error = %self, "request refused: the audit log cannot record it");
            "the audit log cannot record this request, so it was not carried out; try again later (the administrator can find the cause in the broker's log)"
                .to_owned()
        } else {
            self.to_string()
        };
        let mut resp = (status, error_body(code, &message)).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Error::TooManyRequests { retry_after_secs } = self {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
