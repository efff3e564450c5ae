//! Cleave's clinical store: what was done to a patient, with nothing that says who they are.
//!
//! Records are keyed only by a pseudonym handed in by the caller (the identity vault alone
//! can link it to a person). Two parts, both closed until a request needs them:
//!
//! * an SQLite index (WAL) of patients, studies, series, instances,
//!   notes and observations, in `WITHOUT ROWID` tables keyed by random 128-bit ids. What a
//!   query needs (modality, study date, body part, age, sex, codes) stays indexable; free
//!   text and anything that could identify is sealed with [`cleave_keys::FieldSealer`],
//!   bound to its table, column and row;
//! * blobs: de-identified DICOM objects and other large payloads, each in a streamed,
//!   chunked XChaCha20-Poly1305 format under a per-blob key ([`BlobWriter`], [`BlobReader`]),
//!   ending with the instance's index record, sealed.
//!
//! [`ClinicalStore::put_instance`] streams an object into its blob and commits blob and
//! index row together; an acknowledged put survives `kill -9` and a power cut. The blob is
//! fsync'd; the row is committed without waiting for the disk, because the blob's record
//! can file it again, as the sweep at the next open does (FORMAT.md, "Writing durably").
//! For an object that must be
//! written while it arrives, before its pseudonym is known (the broker's ingest),
//! [`ClinicalStore::begin_instance`] gives a [`PendingBlob`] that takes a marker in the
//! pseudonym's place, [`PendingBlob::finish`] puts the pseudonym in and seals the record, and
//! [`ClinicalStore::commit_instance`] files it. The store opens on demand
//! ([`ClinicalStore::on_demand`]) and closes when idle, dropping its keys.
//!
//! Formats and the sealed/indexable split: `clinical-store/FORMAT.md`.
#![forbid(unsafe_code)]

mod blob;
mod error;
mod keys;
mod records;
mod schema;
mod store;
mod validate;

pub use blob::{BlobReader, BlobWriter, FinishedBlob, PendingBlob, DEFAULT_CHUNK_SIZE};
pub use error::Error;
pub use keys::StoreKeys;
pub use records::{
    InstanceMeta, InstanceQuery, InstanceRecord, NewNote, NewObservation, NoteRecord, ObservationRecord, ObservationValue,
    PatientRecord, PutOutcome, Refiled, SeriesQuery, SeriesRecord, StudyQuery, StudyRecord, SweepReport,
};
pub use store::{ClinicalStore, DEFAULT_IDLE_TTL};

/// Entry points for the benchmarks only; not part of the API.
#[doc(hidden)]
pub mod bench_support {
    pub use crate::keys::live_key_sets;

    /// Encrypt `plaintext` as one blob in memory (64 KiB chunks) into `out`.
    pub fn encrypt(key: &cleave_keys::VersionedKey, plaintext: &[u8], out: &mut Vec<u8>) {
        let id = crate::blob::BlobId([7; 16]);
        crate::blob::encrypt_to_vec(key, id, crate::DEFAULT_CHUNK_SIZE, [3; 32], plaintext, None, out)
            .expect("in-memory encryption below 2^32 chunks cannot fail");
    }

    /// Decrypt a blob made by [`encrypt`] into `out`.
    pub fn decrypt(key: &cleave_keys::VersionedKey, blob: &[u8], out: &mut Vec<u8>) -> std::io::Result<usize> {
        use std::io::Read;
        let keys = std::slice::from_ref(key);
        let mut dec = crate::blob::Decoder::over(blob, keys, crate::blob::BlobId([7; 16]))?;
        out.clear();
        dec.read_to_end(out)
    }
}
