//! Links from an identity to its studies: the accession number the RIS shows, the
//! original study UID the modality assigned, the derived UID the clinical store files it
//! under, and (when handed over) the original series and instance UIDs.
//!
//! All of them are sealed. The accession number and original study UID also get blind
//! terms: the first so a clinician can find a study by the number on the RIS screen,
//! the second so a re-sent study is recognised (linking is idempotent). The derived UID
//! is stored in clear by the clinical store, so here it is only ever sealed.
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::codec::{decode_list, encode_list};
use crate::crypto::{domain, Crypto};
use crate::model::IdentityId;
use crate::vault::canonical;
use crate::{normalise, Error, Result, Vault};

const T_STUDY: &str = "study";

/// A study to link to an identity. Borrowed: nothing here outlives the call.
#[derive(Clone, Copy, Default)]
pub struct StudyLink<'a> {
    pub accession_number: Option<&'a str>,
    pub original_study_uid: &'a str,
    pub clinical_study_uid: &'a str,
    pub original_series_uids: &'a [&'a str],
    pub original_instance_uids: &'a [&'a str],
}

impl std::fmt::Debug for StudyLink<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StudyLink(<redacted>)")
    }
}

/// What [`Vault::link_study`] did. No PHI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StudyLinkOutcome {
    /// A new link.
    Linked,
    /// The same link had been made before; nothing changed.
    AlreadyLinked,
    /// Linked before; new series/instance UIDs (or a missing accession number) were added.
    Extended,
}

/// A study link read back. Zeroized on drop; `Debug` redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct StudyRecord {
    /// The identity the study was linked to (it may since have been merged into another:
    /// see [`Vault::current_identity`]).
    pub identity: IdentityId,
    pub accession_number: Option<Zeroizing<String>>,
    pub original_study_uid: Zeroizing<String>,
    pub clinical_study_uid: Zeroizing<String>,
    pub original_series_uids: Zeroizing<Vec<String>>,
    pub original_instance_uids: Zeroizing<Vec<String>>,
}

impl std::fmt::Debug for StudyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StudyRecord(identity {:?}, <redacted>)", self.identity)
    }
}

fn union(into: &mut Zeroizing<Vec<String>>, new: &[&str]) -> bool {
    let mut changed = false;
    for n in new.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if !into.iter().any(|e| e == n) {
            into.push(n.to_owned());
            changed = true;
        }
    }
    changed
}

fn seal_list(crypto: &Crypto, column: &str, row: &str, items: &[String]) -> Result<Vec<u8>> {
    let enc = encode_list(items).ok_or(Error::InvalidInput { field: "UID", expected: "at most 64 characters" })?;
    Ok(crypto.seal(T_STUDY, column, row, &enc))
}

impl Vault {
    /// Link a study to an identity. Sending the same study again changes nothing
    /// ([`StudyLinkOutcome::AlreadyLinked`]) or adds the new series/instance UIDs;
    /// sending it for another identity or with another derived UID is refused
    /// ([`Error::StudyConflict`]).
    pub fn link_study(&mut self, identity: &IdentityId, study: &StudyLink<'_>) -> Result<StudyLinkOutcome> {
        let orig = study.original_study_uid.trim();
        let clinical = study.clinical_study_uid.trim();
        if orig.is_empty() || clinical.is_empty() {
            return Err(Error::InvalidInput { field: "study UID", expected: "both the original and the derived study UID" });
        }
        let accession = study.accession_number.map(str::trim).filter(|a| !a.is_empty());
        let crypto = &self.crypto;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(Error::db("linking a study"))?;
        let owner = canonical(&tx, crypto, identity)?;
        let orig_term = crypto.term(domain::STUDY_UID, orig);
        let acc_term = accession.map(|a| crypto.term(domain::ACCESSION, &normalise::identifier(a)));
        let existing: Option<Vec<u8>> = tx
            .query_row("SELECT id FROM study WHERE original_uid_term = ?1", [&orig_term[..]], |r| r.get(0))
            .optional()
            .map_err(Error::db("linking a study"))?;
        let outcome = match existing {
            None => {
                let id = IdentityId::random();
                let row = id.to_hex();
                let mut series = Zeroizing::new(Vec::new());
                union(&mut series, study.original_series_uids);
                let mut instances = Zeroizing::new(Vec::new());
                union(&mut instances, study.original_instance_uids);
                tx.execute(
                    "INSERT INTO study (id, identity, identity_sealed, original_uid_term, accession_term, accession,
                        original_study_uid, clinical_study_uid, original_series_uids, original_instance_uids)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![
                        &id.as_bytes()[..],
                        &identity.as_bytes()[..],
                        crypto.seal(T_STUDY, "identity", &row, identity.as_bytes()),
                        &orig_term[..],
                        acc_term.as_ref().map(|t| &t[..]),
                        accession.map(|a| crypto.seal(T_STUDY, "accession", &row, a.as_bytes())),
                        crypto.seal(T_STUDY, "original_study_uid", &row, orig.as_bytes()),
                        crypto.seal(T_STUDY, "clinical_study_uid", &row, clinical.as_bytes()),
                        seal_list(crypto, "original_series_uids", &row, &series)?,
                        seal_list(crypto, "original_instance_uids", &row, &instances)?,
                    ],
                )
                .map_err(Error::db("linking a study"))?;
                StudyLinkOutcome::Linked
            }
            Some(id) => {
                let id = IdentityId::from_blob(&id, T_STUDY, "id")?;
                let mut rec = read_study(&tx, crypto, &id)?;
                if canonical(&tx, crypto, &rec.identity)? != owner
                    || !bool::from(rec.clinical_study_uid.as_bytes().ct_eq(clinical.as_bytes()))
                {
                    return Err(Error::StudyConflict);
                }
                let row = id.to_hex();
                let mut changed = false;
                if union(&mut rec.original_series_uids, study.original_series_uids) {
                    let s = seal_list(crypto, "original_series_uids", &row, &rec.original_series_uids)?;
                    tx.execute("UPDATE study SET original_series_uids = ?2 WHERE id = ?1", params![&id.as_bytes()[..], s])
                        .map_err(Error::db("linking a study"))?;
                    changed = true;
                }
                if union(&mut rec.original_instance_uids, study.original_instance_uids) {
                    let s = seal_list(crypto, "original_instance_uids", &row, &rec.original_instance_uids)?;
                    tx.execute("UPDATE study SET original_instance_uids = ?2 WHERE id = ?1", params![&id.as_bytes()[..], s])
                        .map_err(Error::db("linking a study"))?;
                    changed = true;
                }
                if let (None, Some(a), Some(t)) = (&rec.accession_number, accession, acc_term) {
                    tx.execute(
                        "UPDATE study SET accession = ?2, accession_term = ?3 WHERE id = ?1",
                        params![&id.as_bytes()[..], crypto.seal(T_STUDY, "accession", &row, a.as_bytes()), &t[..]],
                    )
                    .map_err(Error::db("linking a study"))?;
                    changed = true;
                }
                if changed {
                    StudyLinkOutcome::Extended
                } else {
                    StudyLinkOutcome::AlreadyLinked
                }
            }
        };
        tx.commit().map_err(Error::db("linking a study"))?;
        Ok(outcome)
    }

    /// Studies whose accession number is `accession` (as the RIS shows it; spaces,
    /// dashes and case do not matter).
    pub fn find_studies_by_accession(&self, accession: &str) -> Result<Vec<StudyRecord>> {
        let term = self.crypto.term(domain::ACCESSION, &normalise::identifier(accession));
        self.studies_where("SELECT id FROM study WHERE accession_term = ?1", &term[..])
    }

    /// Every study linked to this identity or to an identity merged with it.
    pub fn studies_of(&self, identity: &IdentityId) -> Result<Vec<StudyRecord>> {
        let root = canonical(&self.conn, &self.crypto, identity)?;
        let mut group = vec![root];
        group.extend(crate::vault::merged_into(&self.conn, &self.crypto, &root)?);
        let mut out = Vec::new();
        for m in group {
            out.extend(self.studies_where("SELECT id FROM study WHERE identity = ?1", &m.as_bytes()[..])?);
        }
        Ok(out)
    }

    fn studies_where(&self, sql: &str, key: &[u8]) -> Result<Vec<StudyRecord>> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(Error::db("finding studies"))?;
        let ids = stmt
            .query_map([key], |r| r.get::<_, Vec<u8>>(0))
            .map_err(Error::db("finding studies"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(Error::db("finding studies"))?;
        ids.iter()
            .map(|id| read_study(&self.conn, &self.crypto, &IdentityId::from_blob(id, T_STUDY, "id")?))
            .collect()
    }
}

fn read_study(conn: &rusqlite::Connection, crypto: &Crypto, id: &IdentityId) -> Result<StudyRecord> {
    type Row = (Vec<u8>, Vec<u8>, Option<Vec<u8>>, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);
    let r: Row = conn
        .prepare_cached(
            "SELECT identity, identity_sealed, accession, original_study_uid, clinical_study_uid,
                original_series_uids, original_instance_uids FROM study WHERE id = ?1",
        )
        .and_then(|mut s| {
            s.query_row([&id.as_bytes()[..]], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
            })
        })
        .map_err(Error::db("reading a study"))?;
    let row = id.to_hex();
    let sealed_identity = crypto.open(T_STUDY, "identity", &row, &r.1)?;
    if !bool::from(sealed_identity.as_slice().ct_eq(&r.0)) {
        return Err(Error::Tampered { table: T_STUDY, column: "identity" });
    }
    let text = |col: &'static str, v: &[u8]| crypto.open_text(T_STUDY, col, &row, v).map(Zeroizing::new);
    let list = |col: &'static str, v: &[u8]| -> Result<Zeroizing<Vec<String>>> {
        decode_list(&crypto.open(T_STUDY, col, &row, v)?).ok_or(Error::Corrupt { table: T_STUDY, column: col })
    };
    Ok(StudyRecord {
        identity: IdentityId::from_blob(&r.0, T_STUDY, "identity")?,
        accession_number: r.2.as_deref().map(|a| text("accession", a)).transpose()?,
        original_study_uid: text("original_study_uid", &r.3)?,
        clinical_study_uid: text("clinical_study_uid", &r.4)?,
        original_series_uids: list("original_series_uids", &r.5)?,
        original_instance_uids: list("original_instance_uids", &r.6)?,
    })
}
