//! The index schema (`clinical-store/FORMAT.md`, "Index"), and opening the database.
//!
//! Every table is `WITHOUT ROWID` with a random 128-bit primary key, so the physical order
//! of rows says nothing about when they were written: nothing can be lined up with the
//! identity vault's rows by position. No table records when an instance was ingested.
use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use crate::Error;

/// Written once into `meta`; any other value fails closed.
pub(crate) const SCHEMA: &str = "cleave-clinical-index/1";

const DDL: &str = "
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS patients (
    id TEXT PRIMARY KEY,
    pseudonym TEXT NOT NULL UNIQUE,
    sex TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS studies (
    id TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL UNIQUE,
    patient_id TEXT NOT NULL REFERENCES patients(id),
    study_date TEXT,
    modalities TEXT NOT NULL DEFAULT '',
    body_part TEXT,
    age_years INTEGER,
    description BLOB
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS studies_patient ON studies(patient_id);
CREATE INDEX IF NOT EXISTS studies_date ON studies(study_date);
CREATE TABLE IF NOT EXISTS series (
    id TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL UNIQUE,
    study_id TEXT NOT NULL REFERENCES studies(id),
    modality TEXT NOT NULL,
    series_number INTEGER,
    description BLOB
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS series_study ON series(study_id, modality);
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    series_id TEXT NOT NULL REFERENCES series(id),
    sop_class_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    instance_number INTEGER,
    blob_id TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    frames INTEGER,
    not_for_research INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_id);
CREATE TABLE IF NOT EXISTS notes (
    id TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL REFERENCES patients(id),
    study_id TEXT REFERENCES studies(id),
    author TEXT NOT NULL,
    written_at TEXT NOT NULL,
    body BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS notes_patient ON notes(patient_id, written_at);
CREATE TABLE IF NOT EXISTS observations (
    id TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL REFERENCES patients(id),
    study_id TEXT REFERENCES studies(id),
    code TEXT NOT NULL,
    kind TEXT NOT NULL,
    number REAL,
    unit TEXT,
    observed_at TEXT NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL,
    fields BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS observations_patient ON observations(patient_id, code, observed_at);
";

/// Open (creating if needed) the index and check its schema version.
pub(crate) fn open(path: &Path) -> Result<Connection, Error> {
    let conn = Connection::open(path).map_err(Error::db("opening the index"))?;
    // WAL with synchronous=FULL: a committed transaction is on disk when commit returns.
    // The transaction filing an instance alone runs with NORMAL (store.rs,
    // `index_instance`): its blob's record makes it durable.
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(Error::db("switching to WAL mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Database {
            action: "switching to WAL mode",
            source: rusqlite::Error::InvalidQuery,
        });
    }
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000;")
        .map_err(Error::db("setting pragmas"))?;
    let existing: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE name = 'schema'", [], |r| r.get(0))
        .optional()
        .or_else(|e| match e {
            // A brand-new database has no meta table yet.
            rusqlite::Error::SqliteFailure(_, Some(ref m)) if m.starts_with("no such table") => Ok(None),
            e => Err(e),
        })
        .map_err(Error::db("reading the schema version"))?;
    match existing.as_deref() {
        Some(SCHEMA) => {}
        Some(_) => return Err(Error::UnknownSchema(path.parent().unwrap_or(path).to_owned())),
        None => {
            let tx = conn.unchecked_transaction().map_err(Error::db("creating the schema"))?;
            tx.execute_batch(DDL).map_err(Error::db("creating the schema"))?;
            tx.execute("INSERT INTO meta (name, value) VALUES ('schema', ?1)", [SCHEMA])
                .map_err(Error::db("creating the schema"))?;
            tx.commit().map_err(Error::db("creating the schema"))?;
        }
    }
    Ok(conn)
}
