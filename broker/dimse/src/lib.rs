//! DIMSE over DICOM TLS for Cleave: a Storage SCP (C-STORE) and a Verification SCP (C-ECHO) on
//! a mutually authenticated TLS port, streaming each received instance into the broker's ingest.
//!
//! The broker supplies the PKI (a ready `rustls::ServerConfig` that requires client
//! certificates) and implements [`StoreSink`]: it decides who may associate from a
//! [`PeerInfo`] (certificate fingerprint, AE titles, user identity) and stores each instance
//! from a PS3.10 byte stream. Instances are passed through in their negotiated transfer syntax
//! and never held whole in memory. A C-STORE is answered "success" only when the sink says the
//! instance is durable; each [`StoreFailure`] maps to its standard DIMSE status.
//!
//! ```no_run
//! # async fn example<S: cleave_dimse::StoreSink>(tls: std::sync::Arc<rustls::ServerConfig>, sink: std::sync::Arc<S>) -> cleave_dimse::Result<()> {
//! use cleave_dimse::{DimseConfig, DimseServer};
//! let server = DimseServer::bind("0.0.0.0:2762", tls, sink, DimseConfig::default()).await?;
//! let handle = server.spawn();
//! // ... later
//! handle.shutdown().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod association;
mod command;
mod error;
mod part10;
mod pdata;
mod server;
mod sink;
mod stream;
mod syntax;

pub use error::{DimseError, Result};
pub use part10::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
pub use server::{DimseConfig, DimseServer, ServerHandle};
pub use sink::{PeerInfo, Refusal, StoreFailure, StoreRequest, StoreSink, UserIdentity, UserIdentityKind};
pub use syntax::{is_storage_sop_class, ACCEPTED_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES};
