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
const T_MEMBER: &str = "study_member";

/// `study_member.kind`.
#[derive(Clone, Copy)]
enum Member {
    Series = 1,
    Instance = 2,
}

impl Member {
    fn column(self) -> &'static str {
        match self {
            Member::Series => "series_uid",
            Member::Instance => "instance_uid",
        }
    }
}

/// The sealing row of a member: its study's id and its term, so a sealed UID moved to
/// another study or swapped with another member fails to open.
fn member_row(study: &IdentityId, term: &[u8; 32]) -> String {
    format!("{}/{}", study.to_hex(), hex::encode(term))
}

/// Adds the UIDs not yet linked to `study`; true if any was new. One insert per UID,
/// whatever the number already linked.
fn add_members(tx: &rusqlite::Transaction<'_>, crypto: &Crypto, study: &IdentityId, kind: Member, uids: &[&str]) -> Result<bool> {
    let mut insert = tx
        .prepare_cached("INSERT OR IGNORE INTO study_member (study, kind, term, uid) VALUES (?1, ?2, ?3, ?4)")
        .map_err(Error::db("linking a study"))?;
    let mut changed = false;
    for uid in uids.iter().map(|u| u.trim()).filter(|u| !u.is_empty()) {
        let term = crypto.term(domain::MEMBER_UID, uid);
        let sealed = crypto.seal(T_MEMBER, kind.column(), &member_row(study, &term), uid.as_bytes());
        changed |= insert
            .execute(params![&study.as_bytes()[..], kind as i64, &term[..], sealed])
            .map_err(Error::db("linking a study"))?
            > 0;
    }
    Ok(changed)
}

/// Every member UID of `study` of one kind (a `cleave-vault/1` list and the rows), sorted.
fn read_members(conn: &rusqlite::Connection, crypto: &Crypto, study: &IdentityId, kind: Member, legacy: Zeroizing<Vec<String>>) -> Result<Zeroizing<Vec<String>>> {
    let mut out = legacy;
    let mut seen: std::collections::HashSet<String> = out.iter().cloned().collect();
    let mut stmt = conn
        .prepare_cached("SELECT term, uid FROM study_member WHERE study = ?1 AND kind = ?2")
        .map_err(Error::db("reading a study"))?;
    let rows = stmt
        .query_map(params![&study.as_bytes()[..], kind as i64], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)))
        .map_err(Error::db("reading a study"))?;
    for row in rows {
        let (term, sealed) = row.map_err(Error::db("reading a study"))?;
        let term: [u8; 32] = term.as_slice().try_into().map_err(|_| Error::Corrupt { table: T_MEMBER, column: "term" })?;
        let uid = crypto.open_text(T_MEMBER, kind.column(), &member_row(study, &term), &sealed)?;
        if seen.insert(uid.clone()) {
            out.push(uid);
        }
    }
    // `seen` held copies of the UIDs: wipe them too.
    for mut u in seen.drain() {
        zeroize::Zeroize::zeroize(&mut u);
    }
    // Rows come in the order of their keyed terms, which means nothing: sort by UID.
    out.sort_unstable();
    Ok(out)
}

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
                // The `cleave-vault/1` list columns stay, empty: the members are rows.
                let none: Vec<String> = Vec::new();
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
                        seal_list(crypto, "original_series_uids", &row, &none)?,
                        seal_list(crypto, "original_instance_uids", &row, &none)?,
                    ],
                )
                .map_err(Error::db("linking a study"))?;
                add_members(&tx, crypto, &id, Member::Series, study.original_series_uids)?;
                add_members(&tx, crypto, &id, Member::Instance, study.original_instance_uids)?;
                StudyLinkOutcome::Linked
            }
            Some(id) => {
                let id = IdentityId::from_blob(&id, T_STUDY, "id")?;
                // The members are not read: a UID already linked is simply not inserted.
                let rec = read_study(&tx, crypto, &id, false)?;
                if canonical(&tx, crypto, &rec.identity)? != owner
                    || !bool::from(rec.clinical_study_uid.as_bytes().ct_eq(clinical.as_bytes()))
                {
                    return Err(Error::StudyConflict);
                }
                let row = id.to_hex();
                // A UID already in a `cleave-vault/1` list gets a row too; reading dedups.
                let mut changed = add_members(&tx, crypto, &id, Member::Series, study.original_series_uids)?;
                changed |= add_members(&tx, crypto, &id, Member::Instance, study.original_instance_uids)?;
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
            .map(|id| read_study(&self.conn, &self.crypto, &IdentityId::from_blob(id, T_STUDY, "id")?, true))
            .collect()
    }
}

/// One study; its series and instance UIDs only `with_members` (empty otherwise).
fn read_study(conn: &rusqlite::Connection, crypto: &Crypto, id: &IdentityId, with_members: bool) -> Result<StudyRecord> {
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
    let members = |kind: Member, col: &'static str, v: &[u8]| -> Result<Zeroizing<Vec<String>>> {
        if !with_members {
            return Ok(Zeroizing::new(Vec::new()));
        }
        read_members(conn, crypto, id, kind, list(col, v)?)
    };
    Ok(StudyRecord {
        identity: IdentityId::from_blob(&r.0, T_STUDY, "identity")?,
        accession_number: r.2.as_deref().map(|a| text("accession", a)).transpose()?,
        original_study_uid: text("original_study_uid", &r.3)?,
        clinical_study_uid: text("clinical_study_uid", &r.4)?,
        original_series_uids: members(Member::Series, "original_series_uids", &r.5)?,
        original_instance_uids: members(Member::Instance, "original_instance_uids", &r.6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cleave_keys::{KeySource, Keyring};

    /// A `cleave-vault/1` vault: its study row holds the sealed lists, as that format wrote
    /// them, and there is no member table. Opening it upgrades it; what the old lists hold
    /// and what is linked after the upgrade read back together, once each.
    #[test]
    fn a_cleave_vault_1_study_keeps_its_lists_and_takes_new_members_after_the_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::open_or_create(&dir.path().join("keyring.json"), KeySource::KeyFile(dir.path().join("master.key"))).unwrap();
        let db = dir.path().join("vault.sqlite");
        let keys = || crate::VaultKeys::unwrap(&ring).unwrap();
        let link = StudyLink {
            accession_number: None,
            original_study_uid: "1.2.3",
            clinical_study_uid: "2.25.7",
            original_series_uids: &["1.2.3.1"],
            original_instance_uids: &[],
        };
        let person = {
            let mut v = Vault::open(&db, keys()).unwrap();
            let person = v.create(&crate::Demographics::default().with_dicom_pn("Old^Format")).unwrap();
            assert_eq!(v.link_study(&person, &link).unwrap(), StudyLinkOutcome::Linked);
            // Turn it into what cleave-vault/1 wrote: lists in the row, no member table.
            let id: Vec<u8> = v.conn.query_row("SELECT id FROM study", [], |r| r.get(0)).unwrap();
            let row = IdentityId::from_blob(&id, T_STUDY, "id").unwrap().to_hex();
            let series = seal_list(&v.crypto, "original_series_uids", &row, &["1.2.3.1".to_owned()]).unwrap();
            let instances = seal_list(&v.crypto, "original_instance_uids", &row, &["1.2.3.1.2".to_owned(), "1.2.3.1.1".to_owned()]).unwrap();
            v.conn
                .execute("UPDATE study SET original_series_uids = ?1, original_instance_uids = ?2", params![series, instances])
                .unwrap();
            v.conn.execute_batch("DROP TABLE study_member; UPDATE meta SET value = CAST('cleave-vault/1' AS BLOB) WHERE name = 'format';").unwrap();
            person
        };
        let mut v = Vault::open(&db, keys()).unwrap();
        let format: Vec<u8> = v.conn.query_row("SELECT value FROM meta WHERE name = 'format'", [], |r| r.get(0)).unwrap();
        assert_eq!(format, b"cleave-vault/2");
        let old = v.studies_of(&person).unwrap();
        assert_eq!(*old[0].original_instance_uids, ["1.2.3.1.1", "1.2.3.1.2"]);
        // One UID the old list already holds, one new: only the new one extends the study.
        let again = StudyLink { original_instance_uids: &["1.2.3.1.2", "1.2.3.1.3"], ..link };
        assert_eq!(v.link_study(&person, &again).unwrap(), StudyLinkOutcome::Extended);
        let s = &v.studies_of(&person).unwrap()[0];
        assert_eq!(*s.original_instance_uids, ["1.2.3.1.1", "1.2.3.1.2", "1.2.3.1.3"]);
        assert_eq!(*s.original_series_uids, ["1.2.3.1"]);
        // A format this build does not know still fails closed.
        v.conn.execute("UPDATE meta SET value = CAST('cleave-vault/9' AS BLOB) WHERE name = 'format'", []).unwrap();
        drop(v);
        assert!(matches!(Vault::open(&db, keys()), Err(Error::UnknownFormat(_))));
    }
}
