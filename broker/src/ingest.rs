//! The ingest pipeline: one PS3.10 instance in, identity to the vault, a de-identified
//! object to the clinical store, one audit entry. STOW-RS and DIMSE C-STORE both use it.
//!
//! One pass, while the object arrives. The de-identified object carries the patient's
//! pseudonym as its Patient ID, but the pseudonym is only known once the vault has matched
//! the identity in that same header, and the vault must not be written for an object that
//! later turns out to be malformed (a truncated pixel stream is only seen at the end). So:
//!
//! 1. The network stream goes through `cleave_deid::split` straight into a clinical-store
//!    [`PendingBlob`](clinical_store::PendingBlob), de-identified and encrypted as it
//!    arrives, with a *marker* as its Patient ID: a random string exactly as long as the
//!    pseudonym will be, which the sender cannot guess. Any malformation is found here,
//!    before the vault or the index is touched; the pending blob is then deleted.
//! 2. The vault matches (or creates) the identity, gives the pseudonym, and records the
//!    study link (accession number and original UIDs, sealed). As soon as the pseudonym
//!    is known, and while the vault commits the link on its own thread, the pending blob
//!    gets the pseudonym where the marker was (the chunks holding it were kept back in
//!    memory, so no chunk is sealed twice) and is made durable.
//! 3. Once both are durable, the index row is committed.
//! 4. The caller appends the audit entry (fsync'd) before telling the sender "stored".
//!
//! Nothing is spooled: no temporary copy of the object, encrypted or not, exists besides
//! the blob being written, and each byte is parsed and encrypted once. Most of the blob is
//! on its way to disk when the last byte arrives (the pending blob starts writeback as it
//! goes), so what the sender waits for after it is the vault, two overlapped fsyncs (the
//! blob's, then its directory's, which then costs next to nothing) and the index commit.
//! Memory stays bounded by the split's header limit plus a chunk or two, whatever the size
//! of the pixel data.
use std::io::Read;

use cleave_deid::{split, ExtractedIdentity, Limits, Options, UidMapper};
use cleave_keys::{KeyPurpose, Keyring};
use clinical_store::{InstanceMeta, PutOutcome};
use identity_vault::{Demographics, MatchOutcome, OtherId, StudyLink};
use zeroize::Zeroizing;

/// What happened to one instance. No PHI: derived UIDs and the pseudonym only.
#[derive(Debug)]
pub(crate) struct Ingested {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_uid: String,
    pub series_uid: String,
    pub pseudonym: String,
    #[allow(dead_code)] // the DIMSE sink contract has no warning status to report it with yet
    pub already_stored: bool,
    /// The vault flagged the arrival for review (typo, id collision, possible duplicate).
    pub flagged: Option<&'static str>,
    /// How long each step took, for the IT team's metrics.
    pub timings: Timings,
}

/// Wall-clock time of each step of one successful ingest. The caller adds the audit entry's
/// time and hands all of them to [`crate::metrics::Metrics::ingest_phases`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timings {
    /// Reading, de-identifying and sealing the object as it arrives: includes the time the
    /// sender takes to send it.
    pub receive: std::time::Duration,
    /// The vault's match, pseudonym and study link, up to its durable commit.
    pub vault: std::time::Duration,
    /// Putting the pseudonym into the blob and making the blob durable (fsync).
    pub blob_sync: std::time::Duration,
    /// The clinical index's durable commit.
    pub index: std::time::Duration,
}

/// Why an instance was not stored.
#[derive(Debug)]
pub(crate) enum IngestError {
    /// The object is not acceptable DICOM; the message says what, never a value.
    BadObject(cleave_deid::Error),
    /// The object was fine but a store failed; nothing is acknowledged.
    Storage(String),
}

impl std::fmt::Display for IngestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IngestError::BadObject(e) => write!(f, "the DICOM object was refused: {e}"),
            IngestError::Storage(why) => write!(f, "the instance could not be stored: {why}"),
        }
    }
}

/// The stores and keys the pipeline needs; cheap to clone into a blocking task.
#[derive(Clone)]
pub(crate) struct Pipeline {
    pub vault: std::sync::Arc<cleave_keys::OnDemand<identity_vault::Vault, identity_vault::Error>>,
    pub clinical: std::sync::Arc<cleave_keys::OnDemand<clinical_store::ClinicalStore, clinical_store::Error>>,
    pub keyring: std::sync::Arc<Keyring>,
    pub limits: Limits,
    pub vault_thread: std::sync::Arc<VaultThread>,
}

/// A step for the [`VaultThread`].
type VaultJob = Box<dyn FnOnce() + Send>;

/// The thread that runs each instance's vault step while the ingesting thread makes the
/// blob durable. One long-lived thread, not one per instance: the vault serves one caller
/// at a time anyway (its `OnDemand` lock), and starting and joining a thread cost about
/// 55 µs per instance on the development machine, against about 14 µs for a round trip
/// through a channel (session 6).
pub(crate) struct VaultThread {
    tx: std::sync::mpsc::Sender<VaultJob>,
}

impl VaultThread {
    /// Starts the thread; it ends when the last pipeline holding it is dropped.
    pub(crate) fn start() -> std::io::Result<VaultThread> {
        let (tx, rx) = std::sync::mpsc::channel::<VaultJob>();
        std::thread::Builder::new().name("cleave-vault-step".into()).spawn(move || {
            for job in rx {
                // A step that panics fails its own instance (its caller sees the reply
                // channel close), not every instance after it.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
        })?;
        Ok(VaultThread { tx })
    }
}

impl Pipeline {
    /// Ingest one instance read from `input`. Blocking: call from a blocking task.
    pub(crate) fn ingest(&self, input: &mut dyn Read) -> Result<Ingested, IngestError> {
        let started = std::time::Instant::now();
        let opts = Options::care();
        let uid_key = self
            .keyring
            .unwrap_current(KeyPurpose::Uid)
            .map_err(|e| IngestError::Storage(format!("UID key: {e}")))?;
        let uids = UidMapper::new(uid_key.key);

        // Pass 1: de-identify and encrypt into a pending blob as the object arrives.
        let marker = pseudonym_marker(self.keyring.current_version(KeyPurpose::Link));
        let mut pending = self
            .clinical
            .with(|st| st.begin_instance(&marker))
            .and_then(|r| r)
            .map_err(|e| IngestError::Storage(format!("clinical store: {e}")))?;
        let checked = {
            let outcome = split(&mut *input, &mut pending, &opts, &uids, &marker, &self.limits).map_err(|e| match e {
                // The blob could not be written: our failure, not the sender's.
                cleave_deid::Error::Io { action: "writing the output", .. } => IngestError::Storage(format!("clinical store: {e}")),
                e => IngestError::BadObject(e),
            })?;
            // The split reads to the end of the dataset; anything after it is not DICOM.
            let mut rest = [0u8; 1];
            match input.read(&mut rest) {
                Ok(0) => {}
                Ok(_) => return Err(IngestError::BadObject(cleave_deid::Error::NotPart10)),
                Err(e) => return Err(IngestError::Storage(format!("reading the request: {e}"))),
            }
            outcome
        };
        let summary = checked.summary;
        let identity = checked.identity;
        let receive = started.elapsed();

        // Pass 2: the vault decides who this is.
        let demographics = demographics_of(&identity);
        let original_series = identity.series_instance_uid.to_string();
        let original_sop = identity.sop_instance_uid.to_string();
        let original_study = Zeroizing::new(identity.study_instance_uid.to_string());
        let accession = identity.accession_number.as_ref().map(|a| Zeroizing::new(a.to_string()));
        let clinical_study = summary.study_instance_uid.clone();
        // The vault's last write (the study link) commits on its own thread while this one
        // puts the pseudonym into the blob and makes it durable: the sender waits for one
        // disk round trip instead of two. The index row below is committed only once both
        // have succeeded, so it never points at a patient or a blob that could be lost.
        let (named_tx, named_rx) = std::sync::mpsc::sync_channel::<String>(1);
        let (decided_tx, decided_rx) = std::sync::mpsc::sync_channel(1);
        let vault = self.vault.clone();
        let job: VaultJob = Box::new(move || {
            let began = std::time::Instant::now();
            let decided = vault
                .with(move |v| {
                    let m = v.match_or_create(&demographics)?;
                    let id = m.identity();
                    let p = v.pseudonym(&id)?;
                    let _ = named_tx.send(p.as_str().to_owned());
                    let series = [original_series.as_str()];
                    let sops = [original_sop.as_str()];
                    v.link_study(
                        &id,
                        &StudyLink {
                            accession_number: accession.as_ref().map(|a| a.as_str()).filter(|a| !a.trim().is_empty()),
                            original_study_uid: &original_study,
                            clinical_study_uid: &clinical_study,
                            original_series_uids: &series,
                            original_instance_uids: &sops,
                        },
                    )?;
                    Ok::<_, identity_vault::Error>((p.as_str().to_owned(), flag_of(&m)))
                })
                .and_then(|r| r);
            let _ = decided_tx.send(decided.map(|d| (d, began.elapsed())));
        });
        if self.vault_thread.tx.send(job).is_err() {
            return Err(IngestError::Storage("identity vault: its thread has stopped; restart the broker".into()));
        }
        // What the index row will hold, sealed into the blob as its record too, so that the
        // blob alone can file the instance again should a power cut lose the row.
        let meta = InstanceMeta {
            pseudonym: String::new(),
            sex: summary.sex.clone(),
            study_uid: summary.study_instance_uid.clone(),
            study_date: summary.study_date.clone(),
            study_description: summary.study_description.clone(),
            age_years: summary.age_years.map(|a| a.min(u16::MAX as u32) as u16),
            body_part: summary.body_part_examined.clone(),
            series_uid: summary.series_instance_uid.clone(),
            modality: summary.modality.clone().unwrap_or_else(|| "OT".into()),
            series_number: None,
            series_description: summary.series_description.clone(),
            sop_instance_uid: summary.sop_instance_uid.clone(),
            sop_class_uid: summary.sop_class_uid.clone(),
            transfer_syntax: summary.transfer_syntax_uid.clone(),
            instance_number: None,
            frames: summary.number_of_frames,
            not_for_research: summary.not_for_research,
        };
        // While the vault decides, the blob's writeback starts. A failed fsync fails the
        // instance: after one, Linux may report the next as clean with data lost. No name
        // means the vault failed first. Either way the pending blob is dropped (deleted).
        let finished = match pending.prepare_finish() {
            Err(e) => Some(Err(e)),
            Ok(()) => named_rx.recv().ok().map(|pseudonym| {
                let began = std::time::Instant::now();
                pending.finish(InstanceMeta { pseudonym, ..meta }).map(|f| (f, began.elapsed()))
            }),
        };
        // The vault's step has ended (or failed) before anything below happens.
        let decided = decided_rx.recv();
        let ((pseudonym, flagged), vault_time) = decided
            .map_err(|_| IngestError::Storage("identity vault: the matching thread failed".into()))?
            .map_err(|e| IngestError::Storage(format!("identity vault: {e}")))?;
        let (finished, blob_sync) = finished
            .ok_or_else(|| IngestError::Storage("identity vault: no pseudonym was issued".into()))?
            .map_err(|e| IngestError::Storage(format!("clinical store: {e}")))?;

        // Pass 3: the index row, naming the durable blob under the pseudonym.
        let began = std::time::Instant::now();
        let put = self
            .clinical
            .with(move |st| st.commit_instance(finished))
            .and_then(|r| r)
            .map_err(|e| IngestError::Storage(format!("clinical store: {e}")))?;
        let index = began.elapsed();
        Ok(Ingested {
            sop_class_uid: summary.sop_class_uid,
            sop_instance_uid: summary.sop_instance_uid,
            study_uid: summary.study_instance_uid,
            series_uid: summary.series_instance_uid,
            pseudonym,
            already_stored: matches!(put, PutOutcome::AlreadyStored),
            flagged,
            timings: Timings { receive, vault: vault_time, blob_sync, index },
        })
    }
}

fn flag_of(m: &MatchOutcome) -> Option<&'static str> {
    match m {
        MatchOutcome::AttachedForReview { .. } => Some("one-field-differs"),
        MatchOutcome::IdCollision { .. } => Some("id-collision"),
        MatchOutcome::PossibleDuplicate { .. } => Some("possible-duplicate"),
        _ => None,
    }
}

/// The vault's view of the identifying attributes. Empty values are unknown, not blank.
fn demographics_of(i: &ExtractedIdentity) -> Demographics {
    let text = |s: &Option<cleave_deid::Secret>| s.as_ref().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let mut d = match i.patient_name.as_ref().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()) {
        Some(pn) => Demographics::default().with_dicom_pn(&pn),
        None => Demographics::default(),
    };
    d.birth_date = text(&i.birth_date);
    d.sex = text(&i.sex);
    d.address = text(&i.address);
    d.phones = i
        .telephone_numbers
        .as_ref()
        .map(|t| t.split('\\').map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).collect())
        .unwrap_or_default();
    d.issuer = text(&i.issuer_of_patient_id);
    d.patient_id = text(&i.patient_id);
    d.ethnic_group = text(&i.ethnic_group);
    d.other_ids = i
        .other_patient_ids
        .iter()
        .filter(|o| !o.id.trim().is_empty())
        .map(|o| OtherId {
            issuer: o.issuer.as_ref().map(|s| s.trim().to_owned()).unwrap_or_default(),
            id: o.id.trim().to_owned(),
        })
        .collect();
    d
}

/// A stand-in for the pseudonym while the object is written: the shape of a pseudonym of
/// link key `version` (`P<version>-<32 hex>`, identity-vault FORMAT.md), so exactly as long
/// as the real one, with 128 random bits the sender cannot guess and so cannot plant in the
/// object. It contains one `P`, at its start, so it never overlaps itself.
fn pseudonym_marker(version: u32) -> String {
    let mut random = [0u8; 16];
    cleave_keys::random_bytes(&mut random);
    format!("P{version}-{}", hex::encode(random))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_has_the_pseudonym_shape_and_is_fresh_each_time() {
        let a = pseudonym_marker(1);
        assert_eq!(a.len(), "P1-".len() + 32);
        assert!(a.starts_with("P1-") && a[3..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(a, pseudonym_marker(1));
        assert_eq!(pseudonym_marker(12).len(), "P12-".len() + 32);
    }
}
