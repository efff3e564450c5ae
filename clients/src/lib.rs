//! The client side of Cleave: a typed HTTPS client for the broker (mutual TLS, bearer
//! macaroons), profiles and the per-profile token store, the share button, resumable
//! STOW-RS pushes and audit-log verification. The `cleave` command (src/main.rs) is thin
//! glue over this library.
//!
//! The design puts the join of identity and clinical data on the client: the server never
//! answers one request with both a patient's name and their images. [`Client::search_identities`]
//! and [`Client::clinical_summary`] are separate requests, each decided and audited on its
//! own, and only the client shows their results side by side.
//!
//! Nothing here prints or logs a token, a secret or PHI: [`Error`] messages carry the
//! server's PHI-free messages and local file paths only, and types holding tokens redact
//! themselves in `Debug`.
#![forbid(unsafe_code)]

mod api;
mod audit;
mod dicomweb;
mod error;
mod http;
mod profile;
mod push;
mod research;
mod share;

pub use api::{IdentityQuery, ShareInfo};
pub use audit::{verify as verify_audit, AuditVerified};
pub use dicomweb::{multipart_body, multipart_parts, MultipartSplitter, PartSink, StowOutcome};
pub use error::{Error, Result};
pub use http::{encode, Answer, Client, StreamSink};
pub use profile::{Profile, ProfileDir, Session};
pub use research::{export as research_export, ExportReport, ExportSelection};
pub use push::{collect_files, load_journal, push, FileReport, Journal, JournalEntry, PushOutcome};
pub use share::{cert_sha256, make_share, parse_lifetime, qr_text, share_url, Share, ShareRequest, ShareTarget};
