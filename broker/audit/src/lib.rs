//! Cleave's verifiable, append-only audit log.
//!
//! The broker appends one [`Entry`] for every decision it takes: who (an [`Actor`]), what
//! ([`Operation`]), with what [`Outcome`], on which resources. Resources appear only as
//! keyed hashes ([`ReferenceKey`]): the log holds no PHI, no pseudonym and no store UID,
//! and cannot be used to link a patient's records without the broker's key.
//!
//! Entries are the leaves of an RFC 9162 Merkle tree ([`merkle`]), stored in a directory
//! of their own with group-committed, fsync'd appends ([`AuditLog`]). The log signs C2SP
//! checkpoints ([`CheckpointSigner`]) on a timer, every N entries and on demand, and serves
//! inclusion and consistency proofs. Auditors check all of it with [`verify`], which needs
//! only the entries, the checkpoints and the public key, and names the first bad leaf or
//! checkpoint. [`atna`] exports entries as DICOM PS3.15 A.5 / IHE ATNA audit messages.
//! [`AuditLog::list`] answers "who touched this patient" from a derived reference index,
//! checked on each open before it is used (a digest of its postings under a tag only this
//! log's key can make).
//!
//! Formats: `broker/audit/FORMAT.md`; the ATNA mapping: `broker/audit/README.md`.
#![forbid(unsafe_code)]

pub mod atna;
mod checkpoint;
mod entry;
mod error;
mod index;
mod log;
pub mod merkle;
mod nodes;
mod pending;
mod restore;
mod store;
pub mod syslog;
pub mod verify;

pub use checkpoint::{Checkpoint, CheckpointSigner, CheckpointVerifier, SignedCheckpoint, SIGNING_SEED_CONTEXT};
pub use entry::{
    Actor, ActorKind, Entry, Operation, Outcome, OutcomeClass, ReferenceKey, ResourceKind, ResourceRef, Timestamp,
    ENTRY_FORMAT_VERSION, MAX_ENTRY_BYTES, MAX_RESOURCES,
};
pub use error::Error;
pub use log::{AuditLog, DirLock, LogOptions, LogReader, Page, Query, RawCheckpoint, RawEntry, Recovery};
pub use merkle::Hash;
pub use pending::PendingAppend;
pub use restore::{restore, RestoreError, Restored};
pub use verify::{verify_dir, verify_log, Problem, VerifyError, VerifyFailure, VerifyReport};
