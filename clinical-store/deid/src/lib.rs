//! PS3.15 Annex E de-identification of DICOM instances, and the streaming split of one
//! instance into what identifies the patient (for Cleave's identity vault) and a
//! de-identified DICOM Part 10 object (for the clinical store).
//!
//! * The rules come from the standard's own Table E.1-1, read at build time from
//!   `shared/dicom/ps3.15-table-E.1-1.json` ([`TABLE_SOURCE`], [`TABLE_SHA256`]); the
//!   profile options are an [`Options`] value with presets for care and research.
//! * UIDs are replaced deterministically under a key ([`UidMapper`]), so one study stays
//!   one study across instances sent weeks apart, and re-sending is idempotent.
//! * [`split`] parses the header only up to the pixel data, writes the de-identified
//!   header, then streams the pixel data through unchanged: memory is bounded by
//!   [`Limits`], not by the size of the instance.
//! * Hostile input (truncation, lying lengths, endless nesting, deflate bombs) is refused
//!   with an [`Error`] that names the problem and never echoes a value.
//!
//! * [`reidentify`], [`metadata_json`] and [`copy_frame`] read a stored object back:
//!   identity restored on the fly, the header as DICOM JSON, one frame at a time.
//!
//! The rules, the UID derivation with test vectors, and the bad-input policy are written
//! down in `clinical-store/deid/FORMAT.md`.
#![forbid(unsafe_code)]

mod clean;
mod dates;
mod deid;
mod error;
mod identity;
mod options;
mod parse;
mod split;
mod stored;
mod table;
mod uid;
mod write;

pub use error::Error;
pub use identity::{ClinicalSummary, ExtractedIdentity, OtherPatientId, Secret};
pub use options::{Limits, Options};
pub use split::{split, SplitOutcome, DEIDENTIFICATION_METHOD, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
pub use stored::{copy_frame, frame_layout, metadata_json, reidentify, FrameLayout, Restore};
pub use table::{TABLE_ROWS, TABLE_SHA256, TABLE_SOURCE};
pub use uid::UidMapper;
