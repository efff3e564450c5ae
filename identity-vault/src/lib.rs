//! Cleave's identity vault: who the patients are, kept apart from what was done to them.
//!
//! * One SQLite file (WAL, `synchronous=FULL`) in which **every identifying field is
//!   sealed** (XChaCha20-Poly1305 via [`cleave_keys::FieldSealer`]) and bound to its table,
//!   column and row, so a ciphertext moved elsewhere fails to open.
//! * Searched through **blind indexes** (BLAKE3 keyed hashes of normalised terms): exact
//!   full name, name tokens, birth date, national id, issuer + patient id, accession
//!   number. A search never decrypts the table.
//! * The **sole holder of the link key**, which turns an identity id into the pseudonym
//!   the clinical store files records under (`P<version>-<32 hex>`). Pseudonyms resolve
//!   back through a blind index; none is stored in clear.
//! * **Patient matching** on arrival ([`Vault::match_or_create`]) with a review queue.
//! * **Closed by default**: [`Vault::on_demand`] opens it for a request and closes it when
//!   idle, dropping the keys.
//!
//! Ids are random 128-bit values and every table is `WITHOUT ROWID`, so nothing in the
//! file follows insertion order; no timestamp finer than a day is stored (none at all).
//! The on-disk format, normalisation and matching rules are in `FORMAT.md`.
#![forbid(unsafe_code)]

mod codec;
mod crypto;
mod error;
mod keys;
mod matching;
mod model;
mod normalise;
mod ondemand;
mod schema;
mod study;
mod vault;

pub use error::{Error, Result};
pub use keys::{Pseudonym, VaultKeys};
pub use matching::{Decision, MatchOutcome, Resolution, ResolutionRecord, ReviewId, ReviewItem, ReviewKind};
pub use model::{Demographics, FieldKind, IdentityId, IdentityRecord, IdentityView, OtherId};
pub use ondemand::DEFAULT_IDLE_TTL;
pub use study::{StudyLink, StudyLinkOutcome, StudyRecord};
pub use vault::{PseudonymOwner, Query, Vault};
