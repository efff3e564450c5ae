//! The one error type of the crate: why a token was refused, or why one could not be built.
//!
//! Every message says what happened and what to do about it, and none of them carries any
//! part of the token: no identifier, no caveat text, no pseudonym, no study UID, no key or
//! signature bytes. A denial is safe to log and to send to the client as it is.

use crate::caveat::{CaveatKind, Op, Store};

/// Why a token was refused (or could not be built).
///
/// Verification stops at the first failure, in this order: token structure and size limits,
/// caveat grammar, each caveat against the request, then the signature chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denial {
    /// The token is not well-formed libmacaroons V2 (bad base64, a truncated or out-of-order
    /// field, trailing bytes...). The static text names the structural problem only.
    #[error("token malformed ({0}); ask the issuer for a new token")]
    Malformed(&'static str),
    /// The token, one of its fields or its caveat list is larger than this verifier accepts.
    #[error("token too large ({0}); ask the issuer for a token with fewer or shorter caveats")]
    TooLarge(&'static str),
    /// A libmacaroons V1 token, a JSON token, or an unknown format version.
    #[error("unsupported token format; only the libmacaroons V2 binary format is accepted")]
    UnsupportedFormat,
    /// A first-party caveat whose kind this verifier does not know. Unknown caveats fail
    /// closed: the verifier cannot know how much they were meant to narrow.
    #[error("unknown caveat; this token was narrowed with a condition this server does not understand")]
    UnknownCaveat,
    /// A known caveat kind whose value does not follow the grammar (see README.md).
    #[error("malformed caveat: {0}; narrow the token again with a valid value")]
    MalformedCaveat(CaveatKind),
    /// The token's `expires` time has passed.
    #[error("expired; ask for a new token")]
    Expired,
    /// A `cert` caveat names another client certificate than the one presented.
    #[error("not bound to this certificate; use the token from the device it was issued to")]
    CertMismatch,
    /// The request's operation is outside every `ops` caveat.
    #[error("operation not allowed: {0}")]
    OpNotAllowed(Op),
    /// The request's store is outside a `stores` caveat.
    #[error("store not allowed: {0}")]
    StoreNotAllowed(Store),
    /// The peer address is outside a `net` caveat.
    #[error("network not allowed; this token is limited to other networks")]
    NetNotAllowed,
    /// The request concerns another patient, or no single patient, while the token is
    /// limited to one.
    #[error("patient not covered by this token")]
    PatientNotCovered,
    /// The request concerns another study, or no single study, while the token is limited
    /// to one.
    #[error("study not covered by this token")]
    StudyNotCovered,
    /// The HMAC chain does not end in the token's signature: the token was altered, or the
    /// root key is not the one it was minted with.
    #[error("signature invalid; the token was altered or was not issued by this server")]
    SignatureInvalid,
    /// A third-party caveat has no discharge among those sent with the token.
    #[error("discharge missing; obtain a discharge for each third-party caveat and send it with the token")]
    DischargeMissing,
    /// A discharge's signature is not bound to this token (bound to another, not bound, or
    /// altered).
    #[error("discharge not bound to this token; bind each discharge to this token before sending it")]
    DischargeNotBound,
    /// A discharge was sent that no caveat of the token asks for.
    #[error("discharge not used by this token; send only the discharges this token asks for")]
    DischargeUnused,
    /// An argument given to a builder (mint, add caveat) is out of range.
    #[error("invalid argument ({0})")]
    InvalidArgument(&'static str),
}

/// Result with [`Denial`].
pub type Result<T, E = Denial> = std::result::Result<T, E>;
