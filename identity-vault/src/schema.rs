//! The SQLite schema (format `cleave-vault/1`, FORMAT.md "Schema") and the connection
//! settings every open applies.
//!
//! Every table is `WITHOUT ROWID` and keyed by a random 128-bit id. An ordinary SQLite
//! table stores rows in the order of an implicit, incrementing `rowid`, so the physical
//! order of the file (and any `rowid` a query exposes) would follow insertion order, and
//! insertion order lines up with arrival times in the clinical store. A `WITHOUT ROWID`
//! table is a B-tree on its primary key, so the file's order is the order of random ids.
use rusqlite::Connection;

use crate::{Error, Result};

/// The format name stored in `meta`; anything else fails closed.
pub(crate) const FORMAT: &str = "cleave-vault/1";

pub(crate) const SCHEMA: &str = "
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE identity (
    id                 BLOB PRIMARY KEY,   -- 16 random bytes
    merged_into        BLOB,               -- clear copy for lookups, authenticated by the next
    merged_into_sealed BLOB,
    family_name  BLOB, given_name BLOB, middle_name BLOB, name_prefix BLOB, name_suffix BLOB,
    birth_date   BLOB, sex BLOB, address BLOB, phones BLOB, national_id BLOB,
    issuer       BLOB, patient_id BLOB, other_ids BLOB, ethnic_group BLOB, free_text BLOB,
    fp_family_name BLOB, fp_given_name BLOB, fp_birth_date BLOB, fp_sex BLOB
) WITHOUT ROWID;
CREATE INDEX identity_merged_into ON identity(merged_into) WHERE merged_into IS NOT NULL;

CREATE TABLE blind_index (
    term     BLOB NOT NULL,   -- BLAKE3-keyed(domain, normalised term)
    identity BLOB NOT NULL,
    PRIMARY KEY (term, identity)
) WITHOUT ROWID;
CREATE INDEX blind_index_identity ON blind_index(identity);

CREATE TABLE pseudonym (
    term     BLOB PRIMARY KEY,  -- blind index of the pseudonym text, never the pseudonym
    identity BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE study (
    id                 BLOB PRIMARY KEY,
    identity           BLOB NOT NULL,          -- clear copy for lookups, authenticated by the next
    identity_sealed    BLOB NOT NULL,
    original_uid_term  BLOB NOT NULL UNIQUE,
    accession_term     BLOB,
    accession          BLOB,
    original_study_uid BLOB NOT NULL,
    clinical_study_uid BLOB NOT NULL,
    original_series_uids   BLOB NOT NULL,
    original_instance_uids BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX study_identity ON study(identity);
CREATE INDEX study_accession ON study(accession_term) WHERE accession_term IS NOT NULL;

CREATE TABLE review (
    id   BLOB PRIMARY KEY,
    open INTEGER NOT NULL,
    body BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX review_open ON review(open) WHERE open = 1;
";

/// Settings applied on every open. WAL with `synchronous=FULL` makes a committed
/// transaction durable before `commit` returns (kill -9 and power loss). Temporary
/// tables and sort spills stay in memory so no plaintext temp file is ever written
/// (there is no plaintext in SQL anyway, but blind terms need not leak either), and
/// `secure_delete` overwrites freed pages so an updated record's old ciphertext and
/// index terms do not linger in free pages.
pub(crate) fn configure(conn: &Connection) -> Result<()> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(Error::db("setting WAL mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Database {
            action: "setting WAL mode",
            source: rusqlite::Error::InvalidQuery,
        });
    }
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA temp_store = MEMORY;
         PRAGMA secure_delete = ON;
         PRAGMA trusted_schema = OFF;
         PRAGMA foreign_keys = OFF;",
    )
    .map_err(Error::db("configuring the connection"))?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(Error::db("configuring the connection"))?;
    Ok(())
}
