//! The contract between the DIMSE server and the broker: who may associate, and where a
//! received instance goes.
//!
//! The server knows nothing about device accounts, macaroons or stores. It hands the broker a
//! [`PeerInfo`] (TLS client certificate fingerprint, AE titles, address, user identity) once per
//! association, and a PS3.10 byte stream per C-STORE. The broker answers with a principal or a
//! [`Refusal`], and with `Ok` or a [`StoreFailure`]; the DIMSE status on the wire follows from
//! that answer and nothing else.

use std::fmt;
use std::io::Read;
use std::net::SocketAddr;

use zeroize::Zeroizing;

/// What the broker plugs into the server: authorization of an association, and the ingest of
/// each received instance.
///
/// Both methods are called on tokio's blocking pool, so they may do blocking I/O (SQLite,
/// fsync) freely.
pub trait StoreSink: Send + Sync + 'static {
    /// What `authorize` proves about the peer; handed back to every `store` on the association.
    type Principal: Send + Sync + 'static;

    /// Decides whether this peer may open an association. Called after the TLS handshake
    /// (so the client certificate has been verified against the configured CA) and before the
    /// A-ASSOCIATE-AC is sent. A refusal becomes an A-ASSOCIATE-RJ with the matching reason.
    fn authorize(&self, peer: &PeerInfo) -> Result<Self::Principal, Refusal>;

    /// Stores one instance. `data` is a complete DICOM PS3.10 stream: 128-byte preamble,
    /// `DICM`, the file meta group built from the association and the C-STORE request, then the
    /// data set exactly as the peer sent it (never transcoded).
    ///
    /// `data` arrives while the peer is still sending: read it to its end (a `read` that returns
    /// 0). A `read` that fails means the association broke off and the instance is incomplete:
    /// do not keep it. Return `Ok` only once the instance is durably stored; the peer is told
    /// "success" on that basis alone. If `Ok` is returned without having read `data` to its end,
    /// the peer is told the store failed.
    fn store(
        &self,
        principal: &Self::Principal,
        object: StoreRequest,
        data: Box<dyn Read + Send>,
    ) -> Result<(), StoreFailure>;
}

/// Who is on the other end of an association, as far as the DICOM TLS port can tell.
///
/// `Debug` prints neither the user identity fields nor anything else that could be a secret.
pub struct PeerInfo {
    pub(crate) client_cert_sha256: [u8; 32],
    pub(crate) calling_ae_title: String,
    pub(crate) called_ae_title: String,
    pub(crate) peer_addr: SocketAddr,
    pub(crate) user_identity: Option<UserIdentity>,
}

impl PeerInfo {
    /// SHA-256 of the DER of the client's end-entity certificate (already verified by rustls
    /// against the CA in the `ServerConfig`).
    pub fn client_cert_sha256(&self) -> &[u8; 32] {
        &self.client_cert_sha256
    }

    /// The calling AE title from the A-ASSOCIATE-RQ, trimmed of padding spaces.
    pub fn calling_ae_title(&self) -> &str {
        &self.calling_ae_title
    }

    /// The called AE title from the A-ASSOCIATE-RQ, trimmed of padding spaces.
    pub fn called_ae_title(&self) -> &str {
        &self.called_ae_title
    }

    /// The peer's TCP address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The user identity sub-item (PS3.7 D.3.3.7) of the A-ASSOCIATE-RQ, if the peer sent one.
    pub fn user_identity(&self) -> Option<&UserIdentity> {
        self.user_identity.as_ref()
    }
}

impl fmt::Debug for PeerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerInfo")
            .field("calling_ae_title", &self.calling_ae_title)
            .field("called_ae_title", &self.called_ae_title)
            .field("peer_addr", &self.peer_addr)
            .field("user_identity", &self.user_identity.as_ref().map(|u| u.kind))
            .finish_non_exhaustive()
    }
}

/// The user identity type of PS3.7 Table D.3-14.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UserIdentityKind {
    /// Type 1: username only.
    Username,
    /// Type 2: username and passcode (Cleave: the passcode may carry a macaroon).
    UsernamePasscode,
    /// Type 3: Kerberos service ticket.
    Kerberos,
    /// Type 4: SAML assertion.
    Saml,
    /// Type 5: JSON Web Token.
    Jwt,
}

impl UserIdentityKind {
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Username,
            2 => Self::UsernamePasscode,
            3 => Self::Kerberos,
            4 => Self::Saml,
            5 => Self::Jwt,
            _ => return None,
        })
    }
}

/// A user identity negotiated in the A-ASSOCIATE-RQ. The fields are secrets (a passcode, a
/// token): they live in zeroizing buffers, are never logged, and `Debug` does not print them.
pub struct UserIdentity {
    pub(crate) kind: UserIdentityKind,
    pub(crate) positive_response_requested: bool,
    pub(crate) primary: Zeroizing<Vec<u8>>,
    pub(crate) secondary: Zeroizing<Vec<u8>>,
}

impl UserIdentity {
    /// The identity type.
    pub fn kind(&self) -> UserIdentityKind {
        self.kind
    }

    /// Whether the peer asked for a User Identity server response. When the association is
    /// accepted, types 1 and 2 get the zero-length response PS3.7 Table D.3-15 prescribes;
    /// types 3 to 5 would need a Kerberos ticket, SAML response or JWT that a sink cannot
    /// supply through this interface, so no response item is sent for them.
    pub fn positive_response_requested(&self) -> bool {
        self.positive_response_requested
    }

    /// The primary field: username, Kerberos ticket, SAML assertion or JWT.
    pub fn primary(&self) -> &[u8] {
        &self.primary
    }

    /// The secondary field: the passcode for type 2, empty otherwise.
    pub fn secondary(&self) -> &[u8] {
        &self.secondary
    }

    /// The primary field as text, if it is UTF-8 (Kerberos tickets are binary).
    pub fn primary_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.primary).ok()
    }

    /// The secondary field as text, if it is UTF-8.
    pub fn secondary_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.secondary).ok()
    }
}

impl fmt::Debug for UserIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserIdentity")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Why the broker refuses an association; each maps to one A-ASSOCIATE-RJ reason (PS3.8 9.3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// Rejected (permanent), service user, "calling AE title not recognized".
    CallingAeTitleNotRecognized,
    /// Rejected (permanent), service user, "called AE title not recognized".
    CalledAeTitleNotRecognized,
    /// Rejected (permanent), service user, "no reason given": e.g. an unknown certificate or a
    /// bad credential, where saying more would help an attacker.
    NoReasonGiven,
    /// Rejected (permanent), service provider (ACSE related function), "no reason given":
    /// the user identity of the A-ASSOCIATE-RQ (PS3.7 D.3.3.7) was not accepted, the way
    /// PS3.7 says an acceptor rejects a user identity it does not authorize.
    UserIdentityNotAuthorized,
    /// Rejected (transient), service provider, "temporary congestion": try again later.
    TemporarilyUnavailable,
}

/// Why a `store` failed; each maps to one C-STORE failure status (PS3.4 Table B.2-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreFailure {
    /// 0xA700 Refused: Out of Resources (disk full, store closed, overloaded).
    OutOfResources,
    /// 0xA900 Error: Data Set Does Not Match SOP Class.
    DataSetDoesNotMatchSopClass,
    /// 0xC000 Error: Cannot Understand (the data set cannot be parsed).
    CannotUnderstand,
    /// 0x0124 Refused: Not Authorized (the principal may not store this).
    NotAuthorized,
}

impl StoreFailure {
    /// The DIMSE status code sent to the peer.
    pub fn status(self) -> u16 {
        match self {
            Self::OutOfResources => crate::command::status::OUT_OF_RESOURCES,
            Self::DataSetDoesNotMatchSopClass => crate::command::status::DATA_SET_DOES_NOT_MATCH,
            Self::CannotUnderstand => crate::command::status::CANNOT_UNDERSTAND,
            Self::NotAuthorized => crate::command::status::NOT_AUTHORIZED,
        }
    }
}

/// The C-STORE request an instance arrived with. UIDs are PHI-adjacent: `Debug` does not
/// print them, and nothing in this crate logs them.
pub struct StoreRequest {
    pub(crate) sop_class_uid: String,
    pub(crate) sop_instance_uid: String,
    pub(crate) transfer_syntax_uid: String,
    pub(crate) message_id: u16,
    pub(crate) calling_ae_title: String,
}

impl StoreRequest {
    /// Affected SOP Class UID of the C-STORE (equal to the presentation context's abstract syntax).
    pub fn sop_class_uid(&self) -> &str {
        &self.sop_class_uid
    }

    /// Affected SOP Instance UID of the C-STORE.
    pub fn sop_instance_uid(&self) -> &str {
        &self.sop_instance_uid
    }

    /// Transfer syntax of the data set (the presentation context's), also in the file meta group.
    pub fn transfer_syntax_uid(&self) -> &str {
        &self.transfer_syntax_uid
    }

    /// Message ID of the C-STORE-RQ.
    pub fn message_id(&self) -> u16 {
        self.message_id
    }

    /// Calling AE title of the association.
    pub fn calling_ae_title(&self) -> &str {
        &self.calling_ae_title
    }
}

impl fmt::Debug for StoreRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreRequest")
            .field("transfer_syntax_uid", &self.transfer_syntax_uid)
            .field("message_id", &self.message_id)
            .finish_non_exhaustive()
    }
}
