//! The SQLite schema (format `cleave-vault/2`, FORMAT.md "Schema"), the upgrade from
//! `cleave-vault/1`, and the connection settings every open applies.
//!
//! Every table is `WITHOUT ROWID` and keyed by a random 128-bit id (`study_member` by
//! its study's id and a keyed hash of the UID, just as random). An ordinary SQLite
//! table stores rows in the order of an implicit, incrementing `rowid`, so the physical
//! order of the file (and any `rowid` a query exposes) would follow insertion order, and
//! insertion order lines up with arrival times in the clinical store. A `WITHOUT ROWID`
//! table is a B-tree on its primary key, so the file's order is the order of random ids.
use rusqlite::Connection;

use crate::{Error, Result};

/// The format name stored in `meta`; anything else but [`PREVIOUS_FORMAT`] fails closed.
pub(crate) const FORMAT: &str = "cleave-vault/2";

/// The one older format this build opens, upgrading it in place first ([`upgrade_from_1`]).
pub(crate) const PREVIOUS_FORMAT: &str = "cleave-vault/1";

/// What `meta.data_check` seals and `meta.blind_check` hashes. Fixed at the first format's
/// name, so that an upgraded vault keeps the checks it was created with.
pub(crate) const KEY_CHECK_TEXT: &str = "cleave-vault/1";

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

-- Series and instance UIDs of a study, one row each (added by cleave-vault/2; see
-- STUDY_MEMBER). The list columns above hold what cleave-vault/1 wrote, and new studies
-- get empty lists there.

CREATE TABLE review (
    id   BLOB PRIMARY KEY,
    open INTEGER NOT NULL,
    body BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX review_open ON review(open) WHERE open = 1;
";

/// The member table: created with the schema, and by the upgrade from `cleave-vault/1`.
pub(crate) const STUDY_MEMBER: &str = "
CREATE TABLE study_member (
    study BLOB NOT NULL,      -- study.id
    kind  INTEGER NOT NULL,   -- 1 series, 2 instance
    term  BLOB NOT NULL,      -- term(original_member_uid, UID): the same UID is added once
    uid   BLOB NOT NULL,      -- sealed(study_member, series_uid | instance_uid, <study id hex>/<term hex>)
    PRIMARY KEY (study, kind, term)
) WITHOUT ROWID;
";

/// `cleave-vault/1` to `/2`, in the transaction the caller commits: the member table, and
/// the new format name. Nothing is moved: the old lists stay readable where they are.
pub(crate) fn upgrade_from_1(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    tx.execute_batch(STUDY_MEMBER).map_err(Error::db("upgrading the vault"))?;
    let n = tx
        .execute("UPDATE meta SET value = ?1 WHERE name = 'format' AND value = ?2", [FORMAT.as_bytes(), PREVIOUS_FORMAT.as_bytes()])
        .map_err(Error::db("upgrading the vault"))?;
    if n != 1 {
        return Err(Error::Database { action: "upgrading the vault", source: rusqlite::Error::StatementChangedRows(n) });
    }
    Ok(())
}

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
