//! The open clinical store: index, blobs, keys; and the on-demand wrapper that keeps it
//! closed when idle.
//!
//! Layout of a store directory (mode 0700):
//! `index.sqlite` (+ `-wal`, `-shm`) and `blobs/<first two hex digits of id>/<32 hex id>`.
//! One process owns a store directory at a time.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cleave_keys::{durable, Keyring, OnDemand, SealContext, SecretBytes};
use rusqlite::{params, Connection, OptionalExtension, Row};
use zeroize::Zeroizing;

use crate::blob::{BlobId, BlobReader, BlobWriter, FinishedBlob, PendingBlob};
use crate::records::*;
use crate::{schema, validate, Error, StoreKeys};

/// How long an on-demand store stays open after its last request.
pub const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(30);
const MAX_LIMIT: u32 = 1000;

/// An open clinical store. Dropping it closes the database and zeroizes its keys.
pub struct ClinicalStore {
    blobs: PathBuf,
    conn: Connection,
    keys: StoreKeys,
}

impl std::fmt::Debug for ClinicalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClinicalStore")
    }
}

fn new_id() -> String {
    cleave_keys::random_id128()
}

impl ClinicalStore {
    /// Open the store in `dir` (creating it if needed) and sweep what a crash or a power cut
    /// may have left: whole blobs that no index row refers to are filed again from their
    /// records, temporary files and blobs that are not whole are removed.
    pub fn open(dir: &Path, keys: StoreKeys) -> Result<ClinicalStore, Error> {
        Self::open_swept(dir, keys).map(|(store, _)| store)
    }

    /// [`ClinicalStore::open`], with what its sweep did: the broker records every
    /// instance filed again in its audit trail.
    pub fn open_swept(dir: &Path, keys: StoreKeys) -> Result<(ClinicalStore, SweepReport), Error> {
        let mut store = Self::open_unswept(dir, keys)?;
        let report = store.sweep()?;
        store.create_shards()?;
        Ok((store, report))
    }

    fn open_unswept(dir: &Path, keys: StoreKeys) -> Result<ClinicalStore, Error> {
        let blobs = dir.join("blobs");
        if !blobs.is_dir() {
            durable::create_private_dir(dir).map_err(|e| Error::io("creating", dir, e))?;
            durable::create_private_dir(&blobs).map_err(|e| Error::io("creating", &blobs, e))?;
            durable::fsync_dir(dir).map_err(|e| Error::io("syncing", dir, e))?;
        }
        let conn = schema::open(&dir.join("index.sqlite"))?;
        Ok(ClinicalStore { blobs, conn, keys })
    }

    /// A store that opens on the first request, closes after `ttl` idle (zero: after every
    /// request) and reopens transparently. Each opening unwraps the keys from `keyring`;
    /// each closing drops them. The crash sweep runs once, now.
    pub fn on_demand(dir: PathBuf, keyring: Arc<Keyring>, ttl: Duration) -> Result<Arc<OnDemand<ClinicalStore, Error>>, Error> {
        Self::on_demand_swept(dir, keyring, ttl).map(|(od, _)| od)
    }

    /// [`ClinicalStore::on_demand`], with what its sweep did.
    pub fn on_demand_swept(dir: PathBuf, keyring: Arc<Keyring>, ttl: Duration) -> Result<(Arc<OnDemand<ClinicalStore, Error>>, SweepReport), Error> {
        let (store, report) = Self::open_swept(&dir, StoreKeys::unwrap(&keyring)?)?;
        drop(store);
        let od = OnDemand::new("clinical-store", ttl, move || Self::open_unswept(&dir, StoreKeys::unwrap(&keyring)?));
        if !ttl.is_zero() {
            od.start_reaper();
        }
        Ok((od, report))
    }

    fn blob_path(&self, id: BlobId) -> PathBuf {
        let hex = id.to_hex();
        self.blobs.join(&hex[..2]).join(hex)
    }

    /// Deal with what a crash or a power cut may have left: file again every whole blob the
    /// index does not know, from the record sealed at its end (its row was lost with the
    /// index's last unsynced commits, or the process died between the blob's fsync and the
    /// row's commit); remove temporary files and blobs that are not whole (never
    /// acknowledged: an acknowledged blob was fsync'd first).
    fn sweep(&mut self) -> Result<SweepReport, Error> {
        let entries = std::fs::read_dir(&self.blobs).map_err(|e| Error::io("listing", &self.blobs, e))?;
        let mut removed = 0usize;
        let mut refiled = Vec::new();
        for entry in entries {
            let sub = entry.map_err(|e| Error::io("listing", &self.blobs, e))?.path();
            if !sub.is_dir() {
                continue;
            }
            let mut touched = false;
            for e in std::fs::read_dir(&sub).map_err(|e| Error::io("listing", &sub, e))? {
                let path = e.map_err(|e| Error::io("listing", &sub, e))?.path();
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let orphan = if name.starts_with('.') && name.ends_with(".tmp") {
                    true
                } else if let Some(id) = BlobId::from_hex(&name) {
                    if self.blob_is_filed(id)? {
                        false
                    } else if let Some(meta) = self.refile(&path, id)? {
                        refiled.push(Refiled { pseudonym: meta.pseudonym, study_uid: meta.study_uid });
                        false
                    } else {
                        true
                    }
                } else {
                    false
                };
                if orphan {
                    std::fs::remove_file(&path).map_err(|e| Error::io("removing an orphan", &path, e))?;
                    touched = true;
                    removed += 1;
                }
            }
            if touched {
                durable::fsync_dir(&sub).map_err(|e| Error::io("syncing", &sub, e))?;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "clinical store: removed blobs left by an interrupted write");
        }
        if !refiled.is_empty() {
            tracing::warn!(refiled = refiled.len(), "clinical store: filed instances again from their blobs (their index rows were lost in a crash)");
        }
        Ok(SweepReport { removed, refiled })
    }

    fn blob_is_filed(&self, id: BlobId) -> Result<bool, Error> {
        cached_row(&self.conn, "SELECT 1 FROM instances WHERE blob_id = ?1", [id.to_hex()], |_| Ok(()))
            .map(|row| row.is_some())
            .map_err(Error::db("sweeping orphan blobs"))
    }

    /// Files an unknown blob from its record if it is a whole version 2 blob, and returns
    /// the record. `None` if it is not whole (cut short, altered, a temporary file's
    /// content), has no record (version 1: its row was always committed durably first), or
    /// duplicates or contradicts what is filed: the caller then removes it. Errors (the
    /// disk, a key version the keyring lacks) stop the open and remove nothing.
    fn refile(&mut self, path: &Path, id: BlobId) -> Result<Option<InstanceMeta>, Error> {
        let (record, len) = match crate::blob::read_record(path, &self.keys.blob_keys, id) {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(None),
            Err(e @ (Error::Io { .. } | Error::UnknownKeyVersion(_))) => return Err(e),
            Err(_) => return Ok(None),
        };
        let Some(meta) = InstanceMeta::from_record(&record).filter(|m| validate_meta(m).is_ok()) else {
            return Ok(None);
        };
        match self.index_instance(&meta, id, len) {
            Ok(PutOutcome::Stored { .. }) => Ok(Some(meta)),
            Ok(PutOutcome::AlreadyStored) | Err(Error::Conflict(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn seal(&self, table: &'static str, column: &'static str, row: &str, text: &str) -> Vec<u8> {
        self.keys.sealer.seal(SealContext::new(table, column, row), text.as_bytes())
    }

    fn open_sealed(&self, table: &'static str, column: &'static str, row: &str, sealed: &[u8]) -> Result<SecretBytes, Error> {
        self.keys
            .sealer
            .open(SealContext::new(table, column, row), sealed)
            .map_err(|_| Error::SealBroken { table, column })
    }

    fn open_sealed_opt(&self, table: &'static str, column: &'static str, row: &str, sealed: Option<Vec<u8>>) -> Result<Option<SecretBytes>, Error> {
        sealed.map(|s| self.open_sealed(table, column, row, &s)).transpose()
    }

    /// Store one de-identified instance. `write_blob` streams the object into an encrypted
    /// blob; then the blob is made durable and the index row committed. If anything fails,
    /// nothing is visible. If the SOP instance UID is already stored, returns
    /// [`PutOutcome::AlreadyStored`] without calling `write_blob`.
    pub fn put_instance<E>(&mut self, meta: InstanceMeta, write_blob: impl FnOnce(&mut BlobWriter) -> Result<(), E>) -> Result<PutOutcome, Error>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        validate_meta(&meta)?;
        if self.instance_row(&meta.sop_instance_uid)?.is_some() {
            return Ok(PutOutcome::AlreadyStored);
        }
        let id = BlobId::random();
        let dest = self.blob_path(id);
        self.ensure_shard(&dest)?;
        let mut w = BlobWriter::create(dest.clone(), self.keys.current_blob_key(), id)?;
        write_blob(&mut w).map_err(|e| Error::Producer(e.into()))?;
        let written = w.finish(&meta.to_record())?;
        match self.index_instance(&meta, id, written.plaintext_len) {
            Ok(outcome) => {
                if outcome == PutOutcome::AlreadyStored {
                    remove_blob(&dest);
                }
                Ok(outcome)
            }
            Err(e) => {
                remove_blob(&dest);
                Err(e)
            }
        }
    }

    /// Starts an instance whose pseudonym the caller does not know yet, to be written in one
    /// pass as it arrives: the caller writes the de-identified object with `marker` (a
    /// random string exactly as long as the pseudonym will be) as its Patient ID, then
    /// [`PendingBlob::finish`]es it with the pseudonym and hands it to
    /// [`ClinicalStore::commit_instance`]. Only this call and the commit need the store; the
    /// writing between them holds no lock and keeps only a key for this one blob.
    pub fn begin_instance(&self, marker: &str) -> Result<PendingBlob, Error> {
        let id = BlobId::random();
        let dest = self.blob_path(id);
        self.ensure_shard(&dest)?;
        PendingBlob::create(dest, self.keys.current_blob_key(), id, marker.as_bytes())
    }

    /// Files a finished blob under the metadata it was finished with, in one index
    /// transaction. `AlreadyStored` if the SOP instance is already filed; the new blob is
    /// then deleted and the stored one kept.
    pub fn commit_instance(&mut self, blob: FinishedBlob) -> Result<PutOutcome, Error> {
        let outcome = self.index_instance(&blob.meta, blob.id, blob.written.plaintext_len)?;
        if matches!(outcome, PutOutcome::Stored { .. }) {
            blob.keep();
        }
        Ok(outcome)
    }

    /// Creates every blob shard directory (`blobs/00` to `blobs/ff`) that is missing, so
    /// that storing an instance does not first have to create a directory and sync its
    /// parent (two more disk round trips for each of a new store's first few hundred).
    fn create_shards(&self) -> Result<(), Error> {
        let mut made = false;
        for b in 0..=255u8 {
            let dir = self.blobs.join(format!("{b:02x}"));
            if !dir.is_dir() {
                match std::fs::create_dir(&dir) {
                    Ok(()) => made = true,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(Error::io("creating", &dir, e)),
                }
            }
        }
        if made {
            durable::fsync_dir(&self.blobs).map_err(|e| Error::io("syncing", &self.blobs, e))?;
        }
        Ok(())
    }

    /// Creates the blob's shard directory (`blobs/xx/`) if it is missing, durably.
    fn ensure_shard(&self, dest: &Path) -> Result<(), Error> {
        if let Some(dir) = dest.parent() {
            if !dir.is_dir() {
                match std::fs::create_dir(dir) {
                    Ok(()) => durable::fsync_dir(&self.blobs).map_err(|e| Error::io("syncing", &self.blobs, e))?,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(Error::io("creating", dir, e)),
                }
            }
        }
        Ok(())
    }

    /// Commits an instance's rows without waiting for the disk (`synchronous=NORMAL` for
    /// this one transaction; FORMAT.md, "Writing durably"). Its blob, already fsync'd,
    /// carries the same rows as its record, so a power cut that loses the commit loses
    /// nothing: the sweep at the next open files the blob again. Every other write of the
    /// index (notes, observations) still waits for its commit to reach the disk, and so
    /// also makes the instance rows before it durable.
    fn index_instance(&mut self, m: &InstanceMeta, blob: BlobId, size: u64) -> Result<PutOutcome, Error> {
        cached_exec(&self.conn, "PRAGMA synchronous = NORMAL", []).map_err(Error::db("starting a put"))?;
        let outcome = self.index_instance_rows(m, blob, size);
        let restored = cached_exec(&self.conn, "PRAGMA synchronous = FULL", []).map_err(Error::db("finishing a put"));
        let outcome = outcome?;
        restored?;
        Ok(outcome)
    }

    fn index_instance_rows(&mut self, m: &InstanceMeta, blob: BlobId, size: u64) -> Result<PutOutcome, Error> {
        let tx = self.conn.transaction().map_err(Error::db("starting a put"))?;
        if cached_row(&tx, "SELECT 1 FROM instances WHERE sop_instance_uid = ?1", [&m.sop_instance_uid], |_| Ok(()))
            .map_err(Error::db("checking for a stored instance"))?
            .is_some()
        {
            return Ok(PutOutcome::AlreadyStored);
        }
        let patient = upsert_patient(&tx, &m.pseudonym, m.sex.as_deref())?;
        let study: Option<(String, String)> =
            cached_row(&tx, "SELECT id, patient_id FROM studies WHERE study_uid = ?1", [&m.study_uid], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(Error::db("looking up a study"))?;
        let study_id = match study {
            Some((id, owner)) if owner == patient => id,
            Some(_) => return Err(Error::Conflict("the study UID is already filed under another pseudonym")),
            None => {
                let id = new_id();
                let desc = m.study_description.as_deref().map(|d| self.keys.sealer.seal(SealContext::new("studies", "description", &id), d.as_bytes()));
                tx.execute(
                    "INSERT INTO studies (id, study_uid, patient_id, study_date, body_part, age_years, description) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![id, m.study_uid, patient, m.study_date, m.body_part, m.age_years, desc],
                )
                .map_err(Error::db("adding a study"))?;
                id
            }
        };
        let series: Option<(String, String)> =
            cached_row(&tx, "SELECT id, study_id FROM series WHERE series_uid = ?1", [&m.series_uid], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(Error::db("looking up a series"))?;
        let series_id = match series {
            Some((id, owner)) if owner == study_id => id,
            Some(_) => return Err(Error::Conflict("the series UID is already filed under another study")),
            None => {
                let id = new_id();
                let desc = m.series_description.as_deref().map(|d| self.keys.sealer.seal(SealContext::new("series", "description", &id), d.as_bytes()));
                tx.execute(
                    "INSERT INTO series (id, series_uid, study_id, modality, series_number, description) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![id, m.series_uid, study_id, m.modality, m.series_number, desc],
                )
                .map_err(Error::db("adding a series"))?;
                let mods: Vec<String> = {
                    let mut st = tx
                        .prepare("SELECT DISTINCT modality FROM series WHERE study_id = ?1 ORDER BY modality")
                        .map_err(Error::db("listing modalities"))?;
                    let rows = st.query_map([&study_id], |r| r.get(0)).map_err(Error::db("listing modalities"))?;
                    rows.collect::<Result<_, _>>().map_err(Error::db("listing modalities"))?
                };
                tx.execute("UPDATE studies SET modalities = ?1 WHERE id = ?2", params![mods.join("\\"), study_id])
                    .map_err(Error::db("updating modalities"))?;
                id
            }
        };
        cached_exec(
            &tx,
            "INSERT INTO instances (id, sop_instance_uid, series_id, sop_class_uid, transfer_syntax, instance_number, blob_id, size, frames, not_for_research)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                new_id(),
                m.sop_instance_uid,
                series_id,
                m.sop_class_uid,
                m.transfer_syntax,
                m.instance_number,
                blob.to_hex(),
                i64::try_from(size).map_err(|_| Error::BlobTooLarge)?,
                m.frames,
                m.not_for_research
            ],
        )
        .map_err(Error::db("adding an instance"))?;
        tx.commit().map_err(Error::db("committing a put"))?;
        Ok(PutOutcome::Stored { size })
    }

    fn instance_row(&self, sop_uid: &str) -> Result<Option<(InstanceRecord, String)>, Error> {
        cached_row(
            &self.conn,
            "SELECT i.sop_instance_uid, se.series_uid, st.study_uid, i.sop_class_uid, i.transfer_syntax,
                    i.instance_number, i.size, i.frames, i.not_for_research, i.blob_id
             FROM instances i JOIN series se ON se.id = i.series_id JOIN studies st ON st.id = se.study_id
             WHERE i.sop_instance_uid = ?1",
            [sop_uid],
            |r| Ok((instance_from_row(r)?, r.get::<_, String>(9)?)),
        )
        .map_err(Error::db("looking up an instance"))
    }

    /// The index record of one instance.
    pub fn instance(&self, sop_instance_uid: &str) -> Result<InstanceRecord, Error> {
        validate::uid("SOP instance UID", sop_instance_uid)?;
        self.instance_row(sop_instance_uid)?.map(|(r, _)| r).ok_or(Error::NotFound("instance"))
    }

    /// Open an instance's blob for streaming. The reader outlives the store: it holds its
    /// own file handle and a key for this blob only.
    pub fn open_instance(&self, sop_instance_uid: &str) -> Result<BlobReader, Error> {
        validate::uid("SOP instance UID", sop_instance_uid)?;
        let (rec, blob) = self.instance_row(sop_instance_uid)?.ok_or(Error::NotFound("instance"))?;
        let id = BlobId::from_hex(&blob).ok_or(Error::BlobMalformed("the index holds an invalid blob id"))?;
        BlobReader::open(&self.blob_path(id), &self.keys.blob_keys, id, rec.size)
    }

    /// The patient with this pseudonym, if the store knows them.
    pub fn patient(&self, pseudonym: &str) -> Result<Option<PatientRecord>, Error> {
        validate::pseudonym(pseudonym)?;
        self.conn
            .query_row("SELECT pseudonym, sex FROM patients WHERE pseudonym = ?1", [pseudonym], |r| {
                Ok(PatientRecord { pseudonym: r.get(0)?, sex: r.get(1)? })
            })
            .optional()
            .map_err(Error::db("looking up a patient"))
    }

    /// Studies matching a QIDO-like query, newest study date first.
    pub fn find_studies(&self, q: &StudyQuery) -> Result<Vec<StudyRecord>, Error> {
        let mut search = Search::new(
            "SELECT st.id, st.study_uid, p.pseudonym, st.study_date, st.modalities, st.body_part, st.age_years, st.description,
                    (SELECT COUNT(*) FROM series se WHERE se.study_id = st.id),
                    (SELECT COUNT(*) FROM instances i JOIN series se ON se.id = i.series_id WHERE se.study_id = st.id)
             FROM studies st JOIN patients p ON p.id = st.patient_id",
        );
        search.filter("p.pseudonym = ?", q.pseudonym.as_deref(), validate::pseudonym)?;
        search.filter("st.study_uid = ?", q.study_uid.as_deref(), |v| validate::uid("study UID", v))?;
        search.filter("st.study_date >= ?", q.date_from.as_deref(), |v| validate::dicom_date("date_from", v))?;
        search.filter("st.study_date <= ?", q.date_to.as_deref(), |v| validate::dicom_date("date_to", v))?;
        search.filter(
            "EXISTS (SELECT 1 FROM series se WHERE se.study_id = st.id AND se.modality = ?)",
            q.modality.as_deref(),
            |v| validate::code_string("modality", v),
        )?;
        search.filter("st.body_part = ?", q.body_part.as_deref(), |v| validate::code_string("body part", v))?;
        search.page("st.study_date DESC, st.study_uid", q.limit, q.offset);
        let mut st = self.conn.prepare_cached(&search.sql).map_err(Error::db("searching studies"))?;
        let rows = st
            .query_map(rusqlite::params_from_iter(search.args.iter()), |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    StudyRecord {
                        study_uid: r.get(1)?,
                        pseudonym: r.get(2)?,
                        study_date: r.get(3)?,
                        modalities: split_modalities(&r.get::<_, String>(4)?),
                        body_part: r.get(5)?,
                        age_years: r.get(6)?,
                        description: None,
                        series_count: r.get::<_, i64>(8)?.try_into().unwrap_or(0),
                        instance_count: r.get::<_, i64>(9)?.try_into().unwrap_or(0),
                    },
                    r.get::<_, Option<Vec<u8>>>(7)?,
                ))
            })
            .map_err(Error::db("searching studies"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, mut rec, desc) = row.map_err(Error::db("searching studies"))?;
            rec.description = self.open_sealed_opt("studies", "description", &id, desc)?;
            out.push(rec);
        }
        Ok(out)
    }

    /// Series across studies (QIDO-RS's top-level series search), each with its patient's
    /// pseudonym: newest study first, then by series number.
    pub fn find_series(&self, q: &SeriesQuery) -> Result<Vec<(String, SeriesRecord)>, Error> {
        let mut search = Search::new(SERIES_SELECT);
        search.filter("p.pseudonym = ?", q.pseudonym.as_deref(), validate::pseudonym)?;
        search.filter("st.study_uid = ?", q.study_uid.as_deref(), |v| validate::uid("study UID", v))?;
        search.filter("se.series_uid = ?", q.series_uid.as_deref(), |v| validate::uid("series UID", v))?;
        search.filter("se.modality = ?", q.modality.as_deref(), |v| validate::code_string("modality", v))?;
        search.page(SERIES_ORDER, q.limit, q.offset);
        self.series_rows(&search, "searching series")
    }

    /// The series of a study, by series number.
    pub fn list_series(&self, study_uid: &str) -> Result<Vec<SeriesRecord>, Error> {
        let mut search = Search::new(SERIES_SELECT);
        search.filter("st.study_uid = ?", Some(study_uid), |v| validate::uid("study UID", v))?;
        search.order(SERIES_ORDER);
        Ok(self.series_rows(&search, "listing series")?.into_iter().map(|(_, se)| se).collect())
    }

    /// Runs a search over [`SERIES_SELECT`]: (pseudonym, series), descriptions unsealed.
    fn series_rows(&self, search: &Search, action: &'static str) -> Result<Vec<(String, SeriesRecord)>, Error> {
        let mut st = self.conn.prepare_cached(&search.sql).map_err(Error::db(action))?;
        let rows = st
            .query_map(rusqlite::params_from_iter(search.args.iter()), |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(7)?,
                    SeriesRecord {
                        series_uid: r.get(1)?,
                        study_uid: r.get(2)?,
                        modality: r.get(3)?,
                        series_number: r.get(4)?,
                        description: None,
                        instance_count: r.get::<_, i64>(6)?.try_into().unwrap_or(0),
                    },
                    r.get::<_, Option<Vec<u8>>>(5)?,
                ))
            })
            .map_err(Error::db(action))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, pseudonym, mut rec, desc) = row.map_err(Error::db(action))?;
            rec.description = self.open_sealed_opt("series", "description", &id, desc)?;
            out.push((pseudonym, rec));
        }
        Ok(out)
    }

    /// The instances of a series, by instance number.
    pub fn list_instances(&self, series_uid: &str) -> Result<Vec<InstanceRecord>, Error> {
        let mut search = Search::new(INSTANCE_SELECT);
        search.filter("se.series_uid = ?", Some(series_uid), |v| validate::uid("series UID", v))?;
        search.order(INSTANCE_ORDER);
        Ok(self.instance_rows(&search, "listing instances")?.into_iter().map(|(_, i)| i).collect())
    }

    /// Instances across studies and series (QIDO-RS's top-level instance search), each with
    /// its patient's pseudonym: newest study first, then by series and instance number.
    pub fn find_instances(&self, q: &InstanceQuery) -> Result<Vec<(String, InstanceRecord)>, Error> {
        let mut search = Search::new(INSTANCE_SELECT);
        search.filter("p.pseudonym = ?", q.pseudonym.as_deref(), validate::pseudonym)?;
        search.filter("st.study_uid = ?", q.study_uid.as_deref(), |v| validate::uid("study UID", v))?;
        search.filter("se.series_uid = ?", q.series_uid.as_deref(), |v| validate::uid("series UID", v))?;
        search.filter("i.sop_instance_uid = ?", q.sop_instance_uid.as_deref(), |v| validate::uid("SOP instance UID", v))?;
        search.filter("i.sop_class_uid = ?", q.sop_class_uid.as_deref(), |v| validate::uid("SOP class UID", v))?;
        search.filter("se.modality = ?", q.modality.as_deref(), |v| validate::code_string("modality", v))?;
        search.page(INSTANCE_ORDER, q.limit, q.offset);
        self.instance_rows(&search, "searching instances")
    }

    /// Runs a search over [`INSTANCE_SELECT`]: (pseudonym, instance).
    fn instance_rows(&self, search: &Search, action: &'static str) -> Result<Vec<(String, InstanceRecord)>, Error> {
        let mut st = self.conn.prepare_cached(&search.sql).map_err(Error::db(action))?;
        let rows = st
            .query_map(rusqlite::params_from_iter(search.args.iter()), |r| Ok((r.get::<_, String>(9)?, instance_from_row(r)?)))
            .map_err(Error::db(action))?;
        rows.collect::<Result<_, _>>().map_err(Error::db(action))
    }

    fn study_id_for(tx: &Connection, patient: &str, study_uid: Option<&str>) -> Result<Option<String>, Error> {
        let Some(uid) = study_uid else { return Ok(None) };
        validate::uid("study UID", uid)?;
        let row: Option<(String, String)> = tx
            .query_row("SELECT id, patient_id FROM studies WHERE study_uid = ?1", [uid], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(Error::db("looking up a study"))?;
        match row {
            None => Err(Error::NotFound("study")),
            Some((_, owner)) if owner != patient => Err(Error::Conflict("the study belongs to another pseudonym")),
            Some((id, _)) => Ok(Some(id)),
        }
    }

    /// Add a note; its text is sealed. Returns the note's id.
    pub fn add_note(&mut self, note: NewNote) -> Result<String, Error> {
        validate::pseudonym(&note.pseudonym)?;
        validate::token("author", &note.author)?;
        validate::timestamp("written_at", &note.written_at)?;
        let tx = self.conn.unchecked_transaction().map_err(Error::db("adding a note"))?;
        let patient = upsert_patient(&tx, &note.pseudonym, None)?;
        let study = Self::study_id_for(&tx, &patient, note.study_uid.as_deref())?;
        let id = new_id();
        let body = self.seal("notes", "body", &id, &note.text);
        tx.execute(
            "INSERT INTO notes (id, patient_id, study_id, author, written_at, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, patient, study, note.author, note.written_at, body],
        )
        .map_err(Error::db("adding a note"))?;
        tx.commit().map_err(Error::db("adding a note"))?;
        Ok(id)
    }

    /// A patient's notes, oldest first, decrypted.
    pub fn list_notes(&self, pseudonym: &str) -> Result<Vec<NoteRecord>, Error> {
        validate::pseudonym(pseudonym)?;
        let mut st = self
            .conn
            .prepare(
                "SELECT n.id, st.study_uid, n.author, n.written_at, n.body
                 FROM notes n JOIN patients p ON p.id = n.patient_id LEFT JOIN studies st ON st.id = n.study_id
                 WHERE p.pseudonym = ?1 ORDER BY n.written_at, n.id",
            )
            .map_err(Error::db("listing notes"))?;
        let rows = st
            .query_map([pseudonym], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, Vec<u8>>(4)?))
            })
            .map_err(Error::db("listing notes"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, study_uid, author, written_at, body) = row.map_err(Error::db("listing notes"))?;
            let text = self.open_sealed("notes", "body", &id, &body)?;
            let text = text.as_str().ok_or(Error::SealBroken { table: "notes", column: "body" })?;
            out.push(NoteRecord { id, study_uid, author, written_at, text: Zeroizing::new(text.to_owned()) });
        }
        Ok(out)
    }

    /// Add an observation; name, value and user fields are sealed, while the code, the kind,
    /// a numeric value and its unit stay indexable. Returns the observation's id.
    pub fn add_observation(&mut self, obs: NewObservation) -> Result<String, Error> {
        validate::pseudonym(&obs.pseudonym)?;
        validate::token("observation code", &obs.code)?;
        validate::timestamp("observed_at", &obs.observed_at)?;
        let (number, unit) = match &obs.value {
            ObservationValue::Number { value } => (Some(*value), None),
            ObservationValue::Quantity { value, unit } => {
                validate::token("unit", unit)?;
                (Some(*value), Some(unit.clone()))
            }
            _ => (None, None),
        };
        if number.is_some_and(|n| !n.is_finite()) {
            return Err(Error::InvalidInput { field: "observation value", rule: "numbers must be finite" });
        }
        if let ObservationValue::Date { value } = &obs.value {
            validate::timestamp("observation date", value)?;
        }
        let value_json = Zeroizing::new(serde_json::to_string(&obs.value).map_err(|_| Error::InvalidInput {
            field: "observation value",
            rule: "must serialise as JSON",
        })?);
        let fields_json = Zeroizing::new(serde_json::to_string(&obs.fields).map_err(|_| Error::InvalidInput {
            field: "observation fields",
            rule: "must serialise as JSON",
        })?);
        let tx = self.conn.unchecked_transaction().map_err(Error::db("adding an observation"))?;
        let patient = upsert_patient(&tx, &obs.pseudonym, None)?;
        let study = Self::study_id_for(&tx, &patient, obs.study_uid.as_deref())?;
        let id = new_id();
        tx.execute(
            "INSERT INTO observations (id, patient_id, study_id, code, kind, number, unit, observed_at, name, value, fields)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                id,
                patient,
                study,
                obs.code,
                obs.value.kind(),
                number,
                unit,
                obs.observed_at,
                self.seal("observations", "name", &id, &obs.name),
                self.seal("observations", "value", &id, &value_json),
                self.seal("observations", "fields", &id, &fields_json)
            ],
        )
        .map_err(Error::db("adding an observation"))?;
        tx.commit().map_err(Error::db("adding an observation"))?;
        Ok(id)
    }

    /// A patient's observations, optionally of one code, oldest first, decrypted.
    pub fn list_observations(&self, pseudonym: &str, code: Option<&str>) -> Result<Vec<ObservationRecord>, Error> {
        validate::pseudonym(pseudonym)?;
        if let Some(c) = code {
            validate::token("observation code", c)?;
        }
        let mut st = self
            .conn
            .prepare(
                "SELECT o.id, st.study_uid, o.code, o.kind, o.observed_at, o.name, o.value, o.fields
                 FROM observations o JOIN patients p ON p.id = o.patient_id LEFT JOIN studies st ON st.id = o.study_id
                 WHERE p.pseudonym = ?1 AND (?2 IS NULL OR o.code = ?2) ORDER BY o.observed_at, o.id",
            )
            .map_err(Error::db("listing observations"))?;
        type Row6 = (String, Option<String>, String, String, String, Vec<u8>, Vec<u8>, Vec<u8>);
        let rows = st
            .query_map(params![pseudonym, code], |r| -> rusqlite::Result<Row6> {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
            })
            .map_err(Error::db("listing observations"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, study_uid, code, kind, observed_at, name, value, fields) = row.map_err(Error::db("listing observations"))?;
            let name = self.open_sealed("observations", "name", &id, &name)?;
            let value = self.open_sealed("observations", "value", &id, &value)?;
            let fields = self.open_sealed("observations", "fields", &id, &fields)?;
            let broken = |column| Error::SealBroken { table: "observations", column };
            let value: ObservationValue = serde_json::from_slice(value.expose()).map_err(|_| broken("value"))?;
            // The indexable kind must agree with the sealed value, or the row was edited.
            if value.kind() != kind {
                return Err(broken("value"));
            }
            let fields = serde_json::from_slice(fields.expose()).map_err(|_| broken("fields"))?;
            let name = Zeroizing::new(name.as_str().ok_or_else(|| broken("name"))?.to_owned());
            out.push(ObservationRecord { id, study_uid, code, name, value, fields, observed_at });
        }
        Ok(out)
    }
}

pub(crate) fn remove_blob(path: &Path) {
    if std::fs::remove_file(path).is_ok() {
        if let Some(dir) = path.parent() {
            let _ = durable::fsync_dir(dir);
        }
    }
}

fn split_modalities(s: &str) -> Vec<String> {
    s.split('\\').filter(|m| !m.is_empty()).map(str::to_owned).collect()
}

/// Series with their instance count and patient's pseudonym (see `series_rows`).
const SERIES_SELECT: &str = "SELECT se.id, se.series_uid, st.study_uid, se.modality, se.series_number, se.description,
        (SELECT COUNT(*) FROM instances i WHERE i.series_id = se.id), p.pseudonym
     FROM series se JOIN studies st ON st.id = se.study_id JOIN patients p ON p.id = st.patient_id";
/// Newest study first; within a study (all a listing has), by series number.
const SERIES_ORDER: &str = "st.study_date DESC, st.study_uid, se.series_number, se.series_uid";
/// Instances as `instance_from_row` reads them, then the patient's pseudonym.
const INSTANCE_SELECT: &str = "SELECT i.sop_instance_uid, se.series_uid, st.study_uid, i.sop_class_uid, i.transfer_syntax,
        i.instance_number, i.size, i.frames, i.not_for_research, p.pseudonym
     FROM instances i JOIN series se ON se.id = i.series_id JOIN studies st ON st.id = se.study_id
          JOIN patients p ON p.id = st.patient_id";
/// As [`SERIES_ORDER`], then by instance number within a series.
const INSTANCE_ORDER: &str = "st.study_date DESC, st.study_uid, se.series_number, se.series_uid, i.instance_number, i.sop_instance_uid";

/// A search's SQL with one condition per key the caller set, each value bound as a numbered
/// parameter (never spliced into the text), so the statement cache sees one text per shape.
struct Search {
    sql: String,
    args: Vec<String>,
}

impl Search {
    fn new(select: &str) -> Self {
        Search { sql: format!("{select} WHERE 1=1"), args: Vec::new() }
    }

    /// If the query gives `value`: checks it with `check`, then adds `AND condition`,
    /// whose one `?` stands for it. Every key is validated before it reaches the SQL.
    fn filter(&mut self, condition: &str, value: Option<&str>, check: impl FnOnce(&str) -> Result<(), Error>) -> Result<(), Error> {
        let Some(value) = value else { return Ok(()) };
        check(value)?;
        self.args.push(value.to_owned());
        self.sql.push_str(" AND ");
        self.sql.push_str(&condition.replacen('?', &format!("?{}", self.args.len()), 1));
        Ok(())
    }

    /// The order, with no page: a listing returns everything.
    fn order(&mut self, order: &str) {
        self.sql.push_str(" ORDER BY ");
        self.sql.push_str(order);
    }

    /// The order and one page: at most `limit` rows (and never more than `MAX_LIMIT`).
    fn page(&mut self, order: &str, limit: Option<u32>, offset: u32) {
        self.order(order);
        self.sql.push_str(&format!(" LIMIT {} OFFSET {offset}", limit.unwrap_or(MAX_LIMIT).min(MAX_LIMIT)));
    }
}

fn instance_from_row(r: &Row<'_>) -> rusqlite::Result<InstanceRecord> {
    Ok(InstanceRecord {
        sop_instance_uid: r.get(0)?,
        series_uid: r.get(1)?,
        study_uid: r.get(2)?,
        sop_class_uid: r.get(3)?,
        transfer_syntax: r.get(4)?,
        instance_number: r.get(5)?,
        size: r.get::<_, i64>(6)?.try_into().unwrap_or(0),
        frames: r.get(7)?,
        not_for_research: r.get(8)?,
    })
}

/// The patient row's id for a pseudonym, creating it if new; records sex if newly known.
/// One row of a query run through the connection's statement cache. The put path runs the
/// same few statements for every instance while the sender waits: parse them once.
fn cached_row<T, P: rusqlite::Params>(c: &Connection, sql: &str, params: P, f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>) -> rusqlite::Result<Option<T>> {
    c.prepare_cached(sql)?.query_row(params, f).optional()
}

/// A statement run through the connection's statement cache (see [`cached_row`]).
fn cached_exec<P: rusqlite::Params>(c: &Connection, sql: &str, params: P) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(params)
}

fn upsert_patient(tx: &Connection, pseudonym: &str, sex: Option<&str>) -> Result<String, Error> {
    let found: Option<(String, Option<String>)> =
        cached_row(tx, "SELECT id, sex FROM patients WHERE pseudonym = ?1", [pseudonym], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(Error::db("looking up a patient"))?;
    match found {
        Some((id, known)) => {
            if known.is_none() && sex.is_some() {
                tx.execute("UPDATE patients SET sex = ?1 WHERE id = ?2", params![sex, id])
                    .map_err(Error::db("updating a patient"))?;
            }
            Ok(id)
        }
        None => {
            let id = new_id();
            tx.execute("INSERT INTO patients (id, pseudonym, sex) VALUES (?1, ?2, ?3)", params![id, pseudonym, sex])
                .map_err(Error::db("adding a patient"))?;
            Ok(id)
        }
    }
}

pub(crate) fn validate_meta(m: &InstanceMeta) -> Result<(), Error> {
    validate::pseudonym(&m.pseudonym)?;
    if let Some(s) = &m.sex {
        validate::sex(s)?;
    }
    validate::uid("study UID", &m.study_uid)?;
    validate::uid("series UID", &m.series_uid)?;
    validate::uid("SOP instance UID", &m.sop_instance_uid)?;
    validate::uid("SOP class UID", &m.sop_class_uid)?;
    validate::uid("transfer syntax UID", &m.transfer_syntax)?;
    validate::code_string("modality", &m.modality)?;
    if let Some(b) = &m.body_part {
        validate::code_string("body part", b)?;
    }
    if let Some(d) = &m.study_date {
        validate::dicom_date("study date", d)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cleave_keys::KeySource;
    use std::io::Write;

    /// Instance rows are the only writes that do not wait for the disk: the setting is
    /// back to FULL after each, whatever the outcome, so notes and observations still do.
    #[test]
    fn only_instance_commits_skip_the_wait_for_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("keys");
        let ring = Keyring::open_or_create(&k.join("keyring.json"), KeySource::KeyFile(k.join("master.key"))).unwrap();
        let mut store = ClinicalStore::open(&dir.path().join("store"), StoreKeys::unwrap(&ring).unwrap()).unwrap();
        let sync = |s: &ClinicalStore| s.conn.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(sync(&store), 2, "FULL when opened");
        let meta = InstanceMeta {
            pseudonym: "P1-00112233445566778899aabbccddeeff".into(),
            study_uid: "2.25.1".into(),
            series_uid: "2.25.2".into(),
            modality: "CT".into(),
            sop_instance_uid: "2.25.3".into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            ..InstanceMeta::default()
        };
        assert!(matches!(store.put_instance(meta.clone(), |w| w.write_all(b"x")), Ok(PutOutcome::Stored { .. })));
        assert_eq!(sync(&store), 2, "FULL after a stored instance");
        assert_eq!(store.put_instance(meta.clone(), |w| w.write_all(b"x")).unwrap(), PutOutcome::AlreadyStored);
        assert_eq!(sync(&store), 2, "FULL after a duplicate");
        let mut conflict = meta;
        conflict.pseudonym = "P1-ffeeddccbbaa99887766554433221100".into();
        conflict.sop_instance_uid = "2.25.4".into();
        assert!(matches!(store.put_instance(conflict, |w| w.write_all(b"x")), Err(Error::Conflict(_))));
        assert_eq!(sync(&store), 2, "FULL after a refusal");
    }
}
