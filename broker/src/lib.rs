//! The broker: Cleave's only door.
//!
//! Staff and devices reach Cleave's two stores through this server and nothing else. It
//! speaks HTTPS with mutual TLS (client certificate required) and checks a macaroon on every
//! request: the token is minted at login, bound to the client certificate, expires at the
//! end of the shift, and carries caveats derived from the account's role; the caveats, not
//! the role, decide each request. Doctors share by attenuating their own token offline; the
//! broker records shares as they are used and revokes them on request. Every decision goes
//! to an audit sink.
//!
//! This crate is the library; `cleave-broker` (src/main.rs) is thin glue over it.
//!
//! The role × operation table is in `broker/ROLES.md`; the REST API is described by
//! `broker/openapi.json`, served at `/api/v1/openapi.json`.
#![forbid(unsafe_code)]

mod accounts;
mod audit;
mod authz;
mod broker;
mod config;
mod dimse;
mod error;
mod extract;
mod ingest;
mod memory;
mod metrics;
mod operator_audit;
mod pki;
mod ratelimit;
mod roles;
mod routes;
mod server;
mod slowbody;
mod state;
mod stores;
mod syslog;
mod tls;
mod tokens_adapter;

pub use accounts::{Accounts, DeviceInfo, NewCredentials, ShareInfo, StaffInfo};
pub use audit::{AuditEvent, AuditSink, AuditTrail, LogSink, AUDIT_ORIGIN};
pub use authz::{Caller, Need, RequestFacts};
pub use broker::{open, start, BootstrapFiles, MasterKeySource, Opened, RunningBroker, ServeOptions, BOOTSTRAP_ADMIN};
pub use config::{Config, LoginLimits, PkiConfig, CONFIG_FILE};
pub use error::Error;
pub use operator_audit::{broker_running, OperatorAction, OperatorAudit};
pub use pki::{fingerprint_of_pem_file, issue_client_cert, write_pair, CertFingerprint, IssuedCert, LocalPkiPaths};
pub use memory::{zeroing_allocator, ZeroingAllocator};
pub use roles::Role;
pub use cleave_tokens::{Authorized, Op, Store};
pub use routes::OPENAPI_JSON;
pub use server::{ConnInfo, ListenerKind};
pub use syslog::SyslogConfig;
