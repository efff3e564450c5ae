//! The ingest pipeline: one PS3.10 instance in, identity to the vault, a de-identified
//! object to the clinical store, one audit entry. STOW-RS and DIMSE C-STORE both use it.
//!
//! Why two passes. The de-identified object carries the patient's pseudonym as its Patient
//! ID, but the pseudonym is only known once the vault has matched the identity in that same
//! header, and the vault must not be written for an object that later turns out to be
//! malformed (a truncated pixel stream is only seen at the end). So:
//!
//! 1. The network stream is read once, through a tee into an encrypted spool, while
//!    `cleave_deid::split` checks the whole object into a null sink (with a placeholder
//!    pseudonym). Any malformation is found here, before either store is touched.
//! 2. The vault matches (or creates) the identity, gives the pseudonym, and records the
//!    study link (accession number and original UIDs, sealed).
//! 3. The spool is split again, for real, into the clinical store's encrypted blob, which
//!    the store commits together with its index row. The split is deterministic, so pass 2
//!    sees exactly what pass 1 accepted.
//! 4. The audit entry is appended (fsync'd) before the caller is told "stored".
//!
//! The spool is an unlinked temporary file (O_TMPFILE where available) encrypted with
//! XChaCha20 under a key that exists only in this process's memory: no plaintext temporary
//! file, and nothing left behind by a crash. Memory stays bounded by the split's header
//! limit plus copy buffers, whatever the size of the pixel data.
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::XChaCha20;
use cleave_deid::{split, ExtractedIdentity, Limits, Options, UidMapper};
use cleave_keys::{KeyPurpose, Keyring};
use clinical_store::{InstanceMeta, PutOutcome};
use identity_vault::{Demographics, MatchOutcome, OtherId, StudyLink};
use zeroize::Zeroizing;

/// Stands in for the pseudonym during the checking pass; never stored.
const PLACEHOLDER_PSEUDONYM: &str = "P0-00000000000000000000000000000000";

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
}

/// Why an instance was not stored.
#[derive(Debug)]
pub(crate) enum IngestError {
    /// The object is not acceptable DICOM; the message says what, never a value.
    BadObject(cleave_deid::Error),
    /// The object was fine but a store or the spool failed; nothing is acknowledged.
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
    pub spool_dir: std::path::PathBuf,
    pub limits: Limits,
}

impl Pipeline {
    /// Ingest one instance read from `input`. Blocking: call from a blocking task.
    pub(crate) fn ingest(&self, input: &mut dyn Read) -> Result<Ingested, IngestError> {
        let opts = Options::care();
        let uid_key = self
            .keyring
            .unwrap_current(KeyPurpose::Uid)
            .map_err(|e| IngestError::Storage(format!("UID key: {e}")))?;
        let uids = UidMapper::new(uid_key.key);

        // Pass 1: spool and check.
        let mut spool = Spool::create(&self.spool_dir).map_err(|e| IngestError::Storage(format!("spool: {e}")))?;
        let checked = {
            let mut tee = Tee { input, spool: &mut spool };
            let outcome = split(&mut tee, std::io::sink(), &opts, &uids, PLACEHOLDER_PSEUDONYM, &self.limits)
                .map_err(IngestError::BadObject)?;
            // The split reads to the end of the dataset; anything after it is not DICOM.
            let mut rest = [0u8; 1];
            match tee.read(&mut rest) {
                Ok(0) => {}
                Ok(_) => return Err(IngestError::BadObject(cleave_deid::Error::NotPart10)),
                Err(e) => return Err(IngestError::Storage(format!("reading the request: {e}"))),
            }
            outcome
        };
        let summary = checked.summary;
        let identity = checked.identity;

        // Pass 2a: the vault decides who this is.
        let demographics = demographics_of(&identity);
        let original_series = identity.series_instance_uid.to_string();
        let original_sop = identity.sop_instance_uid.to_string();
        let original_study = Zeroizing::new(identity.study_instance_uid.to_string());
        let accession = identity.accession_number.as_ref().map(|a| Zeroizing::new(a.to_string()));
        let clinical_study = summary.study_instance_uid.clone();
        let (pseudonym, flagged) = self
            .vault
            .with(move |v| {
                let m = v.match_or_create(&demographics)?;
                let id = m.identity();
                let p = v.pseudonym(&id)?;
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
            .and_then(|r| r)
            .map_err(|e| IngestError::Storage(format!("identity vault: {e}")))?;

        // Pass 2b: the de-identified object into the clinical store.
        let meta = InstanceMeta {
            pseudonym: pseudonym.clone(),
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
        let mut reader = spool.into_reader().map_err(|e| IngestError::Storage(format!("spool: {e}")))?;
        let limits = self.limits.clone();
        let p2 = pseudonym.clone();
        let put = self
            .clinical
            .with(move |st| st.put_instance(meta, |w| split(&mut reader, w, &opts, &uids, &p2, &limits).map(|_| ())))
            .map_err(|e| IngestError::Storage(format!("clinical store: {e}")))?
            .map_err(|e| IngestError::Storage(format!("clinical store: {e}")))?;
        Ok(Ingested {
            sop_class_uid: summary.sop_class_uid,
            sop_instance_uid: summary.sop_instance_uid,
            study_uid: summary.study_instance_uid,
            series_uid: summary.series_instance_uid,
            pseudonym,
            already_stored: matches!(put, PutOutcome::AlreadyStored),
            flagged,
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

/// Reads the request and writes what it read into the spool.
struct Tee<'a> {
    input: &'a mut dyn Read,
    spool: &'a mut Spool,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.input.read(buf)?;
        self.spool.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// An encrypted, unlinked temporary file: written once, then read back once.
struct Spool {
    file: std::fs::File,
    key: Zeroizing<[u8; 32]>,
    nonce: [u8; 24],
    cipher: XChaCha20,
    buf: Zeroizing<Vec<u8>>,
}

impl Spool {
    fn create(dir: &Path) -> std::io::Result<Spool> {
        cleave_keys::durable::create_private_dir(dir)?;
        let file = tempfile::tempfile_in(dir)?;
        let mut key = Zeroizing::new([0u8; 32]);
        cleave_keys::random_bytes(&mut key[..]);
        let mut nonce = [0u8; 24];
        cleave_keys::random_bytes(&mut nonce);
        let cipher = XChaCha20::new((&*key).into(), (&nonce).into());
        Ok(Spool { file, key, nonce, cipher, buf: Zeroizing::new(Vec::with_capacity(64 * 1024)) })
    }

    fn into_reader(mut self) -> std::io::Result<SpoolReader> {
        self.file.flush()?;
        self.file.seek(SeekFrom::Start(0))?;
        let cipher = XChaCha20::new((&*self.key).into(), (&self.nonce).into());
        Ok(SpoolReader { file: std::io::BufReader::with_capacity(256 * 1024, self.file), cipher })
    }
}

impl Write for Spool {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.clear();
        self.buf.extend_from_slice(data);
        self.cipher.apply_keystream(&mut self.buf);
        self.file.write_all(&self.buf)?;
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

struct SpoolReader {
    file: std::io::BufReader<std::fs::File>,
    cipher: XChaCha20,
}

impl Read for SpoolReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.cipher.apply_keystream(&mut buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_round_trips_and_holds_no_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::create(dir.path()).unwrap();
        let data: Vec<u8> = b"CANARYSPOOL ".iter().cycle().take(300_000).copied().collect();
        for chunk in data.chunks(7_777) {
            s.write_all(chunk).unwrap();
        }
        // The file is unlinked: nothing in the spool directory, whatever happens next.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        s.file.seek(SeekFrom::Start(0)).unwrap();
        let mut raw = Vec::new();
        s.file.read_to_end(&mut raw).unwrap();
        assert_eq!(raw.len(), data.len());
        assert!(!raw.windows(11).any(|w| w == b"CANARYSPOOL"), "spool bytes must be encrypted");
        let mut back = Vec::new();
        s.into_reader().unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }
}
