//! The vault itself: opening the file, writing and reading identities, searching them
//! through blind indexes, and pseudonyms.
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::codec::{decode_list, encode_list};
use crate::crypto::{domain, match_value, present, Crypto};
use crate::keys::{Pseudonym, VaultKeys};
use crate::model::{Demographics, FieldKind, IdentityId, IdentityRecord, OtherId};
use crate::{normalise, schema, Error, Result};

pub(crate) const T_IDENTITY: &str = "identity";
const T_META: &str = "meta";

/// The sealed text columns of `identity`, in the order of [`scalar_fields`].
const SCALAR_COLUMNS: [&str; 13] = [
    "family_name", "given_name", "middle_name", "name_prefix", "name_suffix", "birth_date", "sex",
    "address", "national_id", "issuer", "patient_id", "ethnic_group", "free_text",
];

fn scalar_fields(d: &Demographics) -> [Option<&str>; 13] {
    [
        present(&d.family_name),
        present(&d.given_name),
        present(&d.middle_name),
        present(&d.name_prefix),
        present(&d.name_suffix),
        present(&d.birth_date).map(str::trim),
        present(&d.sex).and_then(normalise::sex),
        present(&d.address),
        present(&d.national_id),
        present(&d.issuer),
        present(&d.patient_id),
        present(&d.ethnic_group),
        present(&d.free_text),
    ]
}

fn scalar_slot(d: &mut Demographics, i: usize) -> Option<&mut Option<String>> {
    Some(match i {
        0 => &mut d.family_name,
        1 => &mut d.given_name,
        2 => &mut d.middle_name,
        3 => &mut d.name_prefix,
        4 => &mut d.name_suffix,
        5 => &mut d.birth_date,
        6 => &mut d.sex,
        7 => &mut d.address,
        8 => &mut d.national_id,
        9 => &mut d.issuer,
        10 => &mut d.patient_id,
        11 => &mut d.ethnic_group,
        12 => &mut d.free_text,
        _ => return None,
    })
}

/// Refuse values that would be stored wrongly or never match.
pub(crate) fn validate(d: &Demographics) -> Result<()> {
    if let Some(b) = present(&d.birth_date) {
        normalise::birth_date(b)
            .ok_or(Error::InvalidInput { field: "birth date", expected: "a calendar date as YYYYMMDD (DICOM DA)" })?;
    }
    if let Some(s) = present(&d.sex) {
        normalise::sex(s).ok_or(Error::InvalidInput { field: "sex", expected: "M, F or O (DICOM Patient's Sex)" })?;
    }
    if present(&d.patient_id).is_none() && present(&d.issuer).is_some() {
        return Err(Error::InvalidInput { field: "issuer", expected: "an issuer only together with a patient id" });
    }
    Ok(())
}

/// The identity vault, open: a SQLite connection and the unwrapped keys. Dropping it
/// closes the connection and zeroizes the keys. Usually held inside an
/// [`cleave_keys::OnDemand`] (see [`Vault::on_demand`]) so it is open only while needed.
pub struct Vault {
    pub(crate) conn: Connection,
    pub(crate) crypto: Crypto,
    path: PathBuf,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Vault({})", self.path.display())
    }
}

/// A search through the blind indexes: every criterion must hold (AND).
///
/// Terms are normalised as the stored ones were (FORMAT.md, "Normalisation"), so
/// `Müller` finds `MULLER`. The query holds PHI; it zeroizes on drop.
#[derive(Default)]
pub struct Query {
    criteria: Vec<(Criterion, Zeroizing<String>, Zeroizing<String>)>,
    limit: Option<usize>,
}

#[derive(Clone, Copy)]
enum Criterion {
    FullName,
    NameToken,
    BirthDate,
    NationalId,
    PatientId,
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Query(<{} criteria redacted>)", self.criteria.len())
    }
}

impl Query {
    /// The most identities a search returns unless [`Query::limit`] says otherwise.
    pub const DEFAULT_LIMIT: usize = 100;

    pub fn new() -> Self {
        Query::default()
    }
    fn add(mut self, c: Criterion, a: &str, b: &str) -> Self {
        self.criteria.push((c, Zeroizing::new(a.to_owned()), Zeroizing::new(b.to_owned())));
        self
    }
    /// The exact full name as a DICOM PN (`family^given^middle`; prefix and suffix ignored).
    pub fn full_name(self, pn: &str) -> Self {
        self.add(Criterion::FullName, pn, "")
    }
    /// One word of any name component; several words in the text must all match.
    pub fn name_token(self, token: &str) -> Self {
        self.add(Criterion::NameToken, token, "")
    }
    /// Birth date, `YYYYMMDD`.
    pub fn birth_date(self, date: &str) -> Self {
        self.add(Criterion::BirthDate, date, "")
    }
    pub fn national_id(self, id: &str) -> Self {
        self.add(Criterion::NationalId, id, "")
    }
    /// Issuer of Patient ID (empty when none) and Patient ID; also finds other ids.
    pub fn patient_id(self, issuer: &str, id: &str) -> Self {
        self.add(Criterion::PatientId, issuer, id)
    }
    /// At most `n` identities (default [`Query::DEFAULT_LIMIT`]).
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }
}

/// Who a pseudonym belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PseudonymOwner {
    /// The identity the pseudonym was made from.
    pub issued_to: IdentityId,
    /// The identity it belongs to now: `issued_to`, or the one it was merged into.
    pub current: IdentityId,
}

impl Vault {
    /// Open the vault at `path` (e.g. `<data>/identity/vault.sqlite`), creating it, its
    /// directory (mode 0700) and the file (mode 0600) if they do not exist. Fails closed on
    /// a file of an unknown format and on keys that are not this vault's.
    pub fn open(path: &Path, keys: VaultKeys) -> Result<Vault> {
        let fresh = !path.exists();
        if fresh {
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            cleave_keys::durable::create_private_dir(dir)
                .map_err(|source| Error::Io { action: "create the vault directory", path: dir.into(), source })?;
            match cleave_keys::durable::create_new_with_mode(path, 0o600) {
                Ok(f) => {
                    // SQLite gives the -wal and -shm files the mode of the database file,
                    // so creating it 0600 ourselves keeps all three private.
                    drop(f);
                    cleave_keys::durable::fsync_dir(dir)
                        .map_err(|source| Error::Io { action: "sync the vault directory", path: dir.into(), source })?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(Error::Io { action: "create the vault file", path: path.into(), source }),
            }
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(Error::db("opening the vault file"))?;
        schema::configure(&conn).map_err(|e| match e {
            Error::Database { source: rusqlite::Error::SqliteFailure(f, _), .. }
                if f.code == rusqlite::ErrorCode::NotADatabase =>
            {
                Error::UnknownFormat(path.into())
            }
            other => other,
        })?;
        let mut conn = conn;
        let format: Option<Vec<u8>> = match conn.query_row("SELECT value FROM meta WHERE name = 'format'", [], |r| r.get(0)) {
            Ok(v) => Some(v),
            Err(rusqlite::Error::QueryReturnedNoRows) => return Err(Error::UnknownFormat(path.into())),
            Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.starts_with("no such table") => None,
            Err(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::NotADatabase => {
                return Err(Error::UnknownFormat(path.into()))
            }
            Err(e) => return Err(Error::Database { action: "reading the vault format", source: e }),
        };
        match format {
            None => Self::initialise(&mut conn, &keys, path)?,
            Some(f) if f == schema::FORMAT.as_bytes() => {}
            Some(f) if f == schema::PREVIOUS_FORMAT.as_bytes() => {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(Error::db("upgrading the vault"))?;
                schema::upgrade_from_1(&tx)?;
                tx.commit().map_err(Error::db("upgrading the vault"))?;
                tracing::info!(from = schema::PREVIOUS_FORMAT, to = schema::FORMAT, "identity vault upgraded");
            }
            Some(_) => return Err(Error::UnknownFormat(path.into())),
        }
        let meta = |name: &str| -> Result<Vec<u8>> {
            conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| r.get(0))
                .optional()
                .map_err(Error::db("reading the vault metadata"))?
                .ok_or(Error::UnknownFormat(path.into()))
        };
        let blind_version = std::str::from_utf8(&meta("blind_version")?)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or(Error::UnknownFormat(path.into()))?;
        let data_check = meta("data_check")?;
        let blind_check = meta("blind_check")?;
        let crypto = Crypto::new(keys, blind_version)?;
        // A wrong data key fails here, not on the first read of a patient.
        match crypto.open(T_META, "data_check", "vault", &data_check) {
            Ok(v) if v.as_slice() == schema::KEY_CHECK_TEXT.as_bytes() => {}
            _ => return Err(Error::WrongKeys),
        }
        let expected = crypto.term(domain::KEY_CHECK, schema::KEY_CHECK_TEXT);
        if !bool::from(expected.as_slice().ct_eq(&blind_check)) {
            return Err(Error::WrongKeys);
        }
        tracing::debug!("identity vault opened");
        Ok(Vault { conn, crypto, path: path.into() })
    }

    fn initialise(conn: &mut Connection, keys: &VaultKeys, path: &Path) -> Result<()> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(Error::db("creating the vault"))?;
        let has_tables: i64 = tx
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(Error::db("creating the vault"))?;
        if has_tables != 0 {
            // Some other SQLite database: never write our schema into it.
            return Err(Error::UnknownFormat(path.into()));
        }
        tx.execute_batch(schema::SCHEMA).map_err(Error::db("creating the vault"))?;
        tx.execute_batch(schema::STUDY_MEMBER).map_err(Error::db("creating the vault"))?;
        let blind = keys.newest_blind();
        let crypto_version = blind.version();
        let data_check =
            keys.data.seal(cleave_keys::SealContext::new(T_META, "data_check", "vault"), &crate::codec::pad(schema::KEY_CHECK_TEXT.as_bytes()));
        let blind_check = blind.index(domain::KEY_CHECK, schema::KEY_CHECK_TEXT);
        let mut ins = tx.prepare("INSERT INTO meta (name, value) VALUES (?1, ?2)").map_err(Error::db("creating the vault"))?;
        for (name, value) in [
            ("format", schema::FORMAT.as_bytes().to_vec()),
            ("blind_version", crypto_version.to_string().into_bytes()),
            ("data_check", data_check),
            ("blind_check", blind_check.to_vec()),
        ] {
            ins.execute(params![name, value]).map_err(Error::db("creating the vault"))?;
        }
        drop(ins);
        tx.commit().map_err(Error::db("creating the vault"))
    }

    /// Where the vault file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Register a new identity (no matching: see [`Vault::match_or_create`] for arrivals).
    pub fn create(&mut self, d: &Demographics) -> Result<IdentityId> {
        validate(d)?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(Error::db("creating an identity"))?;
        let id = insert_identity(&tx, &self.crypto, d)?;
        tx.commit().map_err(Error::db("creating an identity"))?;
        Ok(id)
    }

    /// Register many identities in one transaction (bulk import from an existing patient
    /// index). No matching is done; ids come back in input order.
    pub fn import<'a>(&mut self, records: impl IntoIterator<Item = &'a Demographics>) -> Result<Vec<IdentityId>> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(Error::db("importing identities"))?;
        let mut ids = Vec::new();
        for d in records {
            validate(d)?;
            ids.push(insert_identity(&tx, &self.crypto, d)?);
        }
        tx.commit().map_err(Error::db("importing identities"))?;
        Ok(ids)
    }

    /// Read one identity, opening every field. A field that fails authentication is an
    /// error ([`Error::Tampered`]), never wrong plaintext.
    pub fn get(&self, id: &IdentityId) -> Result<IdentityRecord> {
        read_identity(&self.conn, &self.crypto, id)
    }

    /// Replace an identity's demographics; its search terms and fingerprints follow.
    pub fn update(&mut self, id: &IdentityId, d: &Demographics) -> Result<()> {
        validate(d)?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(Error::db("updating an identity"))?;
        let exists: bool = tx
            .query_row("SELECT 1 FROM identity WHERE id = ?1", [id.as_bytes()], |_| Ok(true))
            .optional()
            .map_err(Error::db("updating an identity"))?
            .is_some();
        if !exists {
            return Err(Error::NoSuchIdentity);
        }
        write_fields(&tx, &self.crypto, id, d, false)?;
        tx.commit().map_err(Error::db("updating an identity"))
    }

    /// Find identities through the blind indexes; nothing is decrypted to search.
    /// Returns ids (at most the query's limit, in no meaningful order).
    pub fn search(&self, q: &Query) -> Result<Vec<IdentityId>> {
        let mut terms: Vec<[u8; 32]> = Vec::new();
        for (c, a, b) in &q.criteria {
            match c {
                Criterion::FullName => {
                    let d = Demographics::default().with_dicom_pn(a);
                    let full = normalise::full_name(present(&d.family_name), present(&d.given_name), present(&d.middle_name))
                        .ok_or(Error::InvalidInput { field: "full name", expected: "a DICOM PN with at least one name component" })?;
                    terms.push(self.crypto.term(domain::FULL_NAME, &full));
                }
                Criterion::NameToken => {
                    let tokens = normalise::name_tokens(&[Some(a)]);
                    if tokens.is_empty() {
                        return Err(Error::InvalidInput { field: "name token", expected: "at least one letter" });
                    }
                    terms.extend(tokens.iter().map(|t| self.crypto.term(domain::NAME_TOKEN, t)));
                }
                Criterion::BirthDate => {
                    let bd = normalise::birth_date(a)
                        .ok_or(Error::InvalidInput { field: "birth date", expected: "a calendar date as YYYYMMDD (DICOM DA)" })?;
                    terms.push(self.crypto.term(domain::BIRTH_DATE, &bd));
                }
                Criterion::NationalId => terms.push(self.crypto.term(domain::NATIONAL_ID, &normalise::identifier(a))),
                Criterion::PatientId => {
                    let issuer = Some(a.as_str()).filter(|s| !s.trim().is_empty());
                    terms.push(self.crypto.patient_id_term(issuer, b));
                }
            }
        }
        if terms.is_empty() {
            return Err(Error::EmptyQuery);
        }
        terms.sort_unstable();
        terms.dedup();
        let limit = q.limit.unwrap_or(Query::DEFAULT_LIMIT);
        lookup_terms(&self.conn, &terms, limit)
    }

    /// Search, then read every identity found.
    pub fn find(&self, q: &Query) -> Result<Vec<IdentityRecord>> {
        self.search(q)?.iter().map(|id| self.get(id)).collect()
    }

    /// The pseudonym of an identity under the current link key, registering it for
    /// reverse lookup if this is its first use under that key version.
    pub fn pseudonym(&mut self, id: &IdentityId) -> Result<Pseudonym> {
        let version = self.crypto.keys.current_link_version();
        let p = self.crypto.keys.pseudonym(id, version).ok_or(Error::MissingKey("link"))?;
        let exists: bool = self
            .conn
            .query_row("SELECT 1 FROM identity WHERE id = ?1", [id.as_bytes()], |_| Ok(true))
            .optional()
            .map_err(Error::db("issuing a pseudonym"))?
            .is_some();
        if !exists {
            return Err(Error::NoSuchIdentity);
        }
        register_pseudonym(&self.conn, &self.crypto, id, &p)?;
        Ok(p)
    }

    /// Who a pseudonym belongs to, whatever link key version made it (as long as the
    /// keyring still holds that version). `None` if it is not one of this vault's.
    pub fn resolve_pseudonym(&self, pseudonym: &str) -> Result<Option<PseudonymOwner>> {
        let p = Pseudonym::parse(pseudonym)?;
        let term = self.crypto.term(domain::PSEUDONYM, p.as_str());
        let found: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT identity FROM pseudonym WHERE term = ?1", [&term[..]], |r| r.get(0))
            .optional()
            .map_err(Error::db("resolving a pseudonym"))?;
        let Some(found) = found else { return Ok(None) };
        let id = IdentityId::from_blob(&found, "pseudonym", "identity")?;
        // The identity column is in clear; recomputing the pseudonym authenticates it.
        match self.crypto.keys.pseudonym(&id, p.version()) {
            Some(again) if again.ct_eq(&p) => {}
            Some(_) => return Err(Error::Tampered { table: "pseudonym", column: "identity" }),
            None => return Ok(None),
        }
        let current = canonical(&self.conn, &self.crypto, &id)?;
        Ok(Some(PseudonymOwner { issued_to: id, current }))
    }

    /// Every pseudonym under which clinical records of this person may be filed: those
    /// issued to the identity's current owner and to every identity merged into it, under
    /// every link key version still held.
    pub fn pseudonyms_of(&self, id: &IdentityId) -> Result<Vec<Pseudonym>> {
        let root = canonical(&self.conn, &self.crypto, id)?;
        let mut group = vec![root];
        group.extend(merged_into(&self.conn, &self.crypto, &root)?);
        let mut out = Vec::new();
        let mut check = self
            .conn
            .prepare_cached("SELECT identity FROM pseudonym WHERE term = ?1")
            .map_err(Error::db("listing pseudonyms"))?;
        for member in &group {
            for k in &self.crypto.keys.link {
                let Some(p) = self.crypto.keys.pseudonym(member, k.version) else { continue };
                let term = self.crypto.term(domain::PSEUDONYM, p.as_str());
                let owner: Option<Vec<u8>> =
                    check.query_row([&term[..]], |r| r.get(0)).optional().map_err(Error::db("listing pseudonyms"))?;
                if owner.as_deref() == Some(&member.as_bytes()[..]) {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }

    /// The identity this one now belongs to (itself unless it was merged into another).
    pub fn current_identity(&self, id: &IdentityId) -> Result<IdentityId> {
        canonical(&self.conn, &self.crypto, id)
    }
}

/// Ids having every term, at most `limit`. One `INTERSECT` per extra term keeps it one
/// query over the `(term, identity)` primary key.
pub(crate) fn lookup_terms(conn: &Connection, terms: &[[u8; 32]], limit: usize) -> Result<Vec<IdentityId>> {
    let mut sql = String::from("SELECT identity FROM blind_index WHERE term = ?1");
    for i in 2..=terms.len() {
        sql.push_str(&format!(" INTERSECT SELECT identity FROM blind_index WHERE term = ?{i}"));
    }
    sql.push_str(&format!(" LIMIT {}", limit.min(i64::MAX as usize)));
    let mut stmt = conn.prepare_cached(&sql).map_err(Error::db("searching"))?;
    let params = rusqlite::params_from_iter(terms.iter().map(|t| &t[..]));
    let rows = stmt
        .query_map(params, |r| r.get::<_, Vec<u8>>(0))
        .map_err(Error::db("searching"))?;
    let mut out = Vec::new();
    for r in rows {
        out.push(IdentityId::from_blob(&r.map_err(Error::db("searching"))?, "blind_index", "identity")?);
    }
    Ok(out)
}

pub(crate) fn register_pseudonym(conn: &Connection, crypto: &Crypto, id: &IdentityId, p: &Pseudonym) -> Result<()> {
    let term = crypto.term(domain::PSEUDONYM, p.as_str());
    conn.prepare_cached("INSERT OR IGNORE INTO pseudonym (term, identity) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute(params![&term[..], &id.as_bytes()[..]]))
        .map_err(Error::db("issuing a pseudonym"))?;
    Ok(())
}

/// Create an identity row with its terms and its current pseudonym, inside `tx`.
pub(crate) fn insert_identity(tx: &Transaction<'_>, crypto: &Crypto, d: &Demographics) -> Result<IdentityId> {
    let id = IdentityId::random();
    tx.execute("INSERT INTO identity (id) VALUES (?1)", [&id.as_bytes()[..]])
        .map_err(Error::db("creating an identity"))?;
    write_fields(tx, crypto, &id, d, true)?;
    let p = crypto.keys.pseudonym(&id, crypto.keys.current_link_version()).ok_or(Error::MissingKey("link"))?;
    register_pseudonym(tx, crypto, &id, &p)?;
    Ok(id)
}

/// Seal every field of `d` into the row `id`, and replace its terms and fingerprints.
fn write_fields(tx: &Transaction<'_>, crypto: &Crypto, id: &IdentityId, d: &Demographics, fresh: bool) -> Result<()> {
    let row = id.to_hex();
    let scalars = scalar_fields(d);
    let mut sealed: Vec<Option<Vec<u8>>> = scalars
        .iter()
        .zip(SCALAR_COLUMNS)
        .map(|(v, col)| v.map(|v| crypto.seal(T_IDENTITY, col, &row, v.as_bytes())))
        .collect();
    let phones: Vec<&str> = d.phones.iter().map(String::as_str).filter(|p| !p.trim().is_empty()).collect();
    let phones_sealed = if phones.is_empty() {
        None
    } else {
        let enc = encode_list(&phones).ok_or(Error::InvalidInput { field: "phone number", expected: "at most 65535 bytes" })?;
        Some(crypto.seal(T_IDENTITY, "phones", &row, &enc))
    };
    let others: Vec<&str> = d
        .other_ids
        .iter()
        .filter(|o| !o.id.trim().is_empty())
        .flat_map(|o| [o.issuer.as_str(), o.id.as_str()])
        .collect();
    let others_sealed = if others.is_empty() {
        None
    } else {
        let enc = encode_list(&others).ok_or(Error::InvalidInput { field: "other id", expected: "at most 65535 bytes" })?;
        Some(crypto.seal(T_IDENTITY, "other_ids", &row, &enc))
    };
    let fp = |k: FieldKind| match_value(d, k).map(|v| crypto.fingerprint(id, k, &v).to_vec());
    let mut it = sealed.drain(..);
    let mut next = || it.next().flatten();
    tx.prepare_cached(
        "UPDATE identity SET family_name = ?2, given_name = ?3, middle_name = ?4, name_prefix = ?5, name_suffix = ?6,
            birth_date = ?7, sex = ?8, address = ?9, national_id = ?10, issuer = ?11, patient_id = ?12,
            ethnic_group = ?13, free_text = ?14, phones = ?15, other_ids = ?16,
            fp_family_name = ?17, fp_given_name = ?18, fp_birth_date = ?19, fp_sex = ?20
         WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            &id.as_bytes()[..],
            next(), next(), next(), next(), next(), next(), next(), next(), next(), next(), next(), next(), next(),
            phones_sealed,
            others_sealed,
            fp(FieldKind::FamilyName),
            fp(FieldKind::GivenName),
            fp(FieldKind::BirthDate),
            fp(FieldKind::Sex),
        ])
    })
    .map_err(Error::db("writing an identity"))?;
    if !fresh {
        tx.prepare_cached("DELETE FROM blind_index WHERE identity = ?1")
            .and_then(|mut s| s.execute([&id.as_bytes()[..]]))
            .map_err(Error::db("writing an identity"))?;
    }
    let mut ins = tx
        .prepare_cached("INSERT OR IGNORE INTO blind_index (term, identity) VALUES (?1, ?2)")
        .map_err(Error::db("writing an identity"))?;
    for t in crypto.index_terms(d) {
        ins.execute(params![&t[..], &id.as_bytes()[..]]).map_err(Error::db("writing an identity"))?;
    }
    Ok(())
}

pub(crate) fn read_identity(conn: &Connection, crypto: &Crypto, id: &IdentityId) -> Result<IdentityRecord> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT merged_into, merged_into_sealed, family_name, given_name, middle_name, name_prefix, name_suffix,
                birth_date, sex, address, national_id, issuer, patient_id, ethnic_group, free_text, phones, other_ids
             FROM identity WHERE id = ?1",
        )
        .map_err(Error::db("reading an identity"))?;
    let row: Option<Vec<Option<Vec<u8>>>> = stmt
        .query_row([&id.as_bytes()[..]], |r| (0..17).map(|i| r.get::<_, Option<Vec<u8>>>(i)).collect())
        .optional()
        .map_err(Error::db("reading an identity"))?;
    let mut row = row.ok_or(Error::NoSuchIdentity)?.into_iter();
    let hex = id.to_hex();
    let merged = open_merged_into(crypto, id, row.next().flatten(), row.next().flatten())?;
    let mut d = Demographics::default();
    for (i, col) in SCALAR_COLUMNS.iter().enumerate() {
        if let Some(sealed) = row.next().flatten() {
            let v = crypto.open_text(T_IDENTITY, col, &hex, &sealed)?;
            if let Some(slot) = scalar_slot(&mut d, i) {
                *slot = Some(v);
            }
        }
    }
    if let Some(sealed) = row.next().flatten() {
        let b = crypto.open(T_IDENTITY, "phones", &hex, &sealed)?;
        let mut phones = decode_list(&b).ok_or(Error::Corrupt { table: T_IDENTITY, column: "phones" })?;
        d.phones = std::mem::take(&mut *phones);
    }
    if let Some(sealed) = row.next().flatten() {
        let b = crypto.open(T_IDENTITY, "other_ids", &hex, &sealed)?;
        let mut flat = decode_list(&b).ok_or(Error::Corrupt { table: T_IDENTITY, column: "other_ids" })?;
        if flat.len() % 2 != 0 {
            return Err(Error::Corrupt { table: T_IDENTITY, column: "other_ids" });
        }
        let mut items = flat.drain(..);
        while let (Some(issuer), Some(id)) = (items.next(), items.next()) {
            d.other_ids.push(OtherId { issuer, id });
        }
    }
    Ok(IdentityRecord { id: *id, merged_into: merged, demographics: d })
}

/// Check the clear `merged_into` against its sealed copy; they must agree.
fn open_merged_into(crypto: &Crypto, id: &IdentityId, clear: Option<Vec<u8>>, sealed: Option<Vec<u8>>) -> Result<Option<IdentityId>> {
    const COL: &str = "merged_into";
    match (clear, sealed) {
        (None, None) => Ok(None),
        (Some(c), Some(s)) => {
            let opened = crypto.open(T_IDENTITY, COL, &id.to_hex(), &s)?;
            if !bool::from(opened.as_slice().ct_eq(&c)) {
                return Err(Error::Tampered { table: T_IDENTITY, column: COL });
            }
            IdentityId::from_blob(&c, T_IDENTITY, COL).map(Some)
        }
        _ => Err(Error::Tampered { table: T_IDENTITY, column: COL }),
    }
}

/// Follow `merged_into` to the identity that holds this one now. Merges are flattened
/// when made, so this is at most one step; the bound only guards a damaged file.
pub(crate) fn canonical(conn: &Connection, crypto: &Crypto, id: &IdentityId) -> Result<IdentityId> {
    let mut current = *id;
    for _ in 0..8 {
        let row: Option<(Option<Vec<u8>>, Option<Vec<u8>>)> = conn
            .prepare_cached("SELECT merged_into, merged_into_sealed FROM identity WHERE id = ?1")
            .and_then(|mut s| s.query_row([&current.as_bytes()[..]], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(Error::db("following a merge"))?;
        let (clear, sealed) = row.ok_or(Error::NoSuchIdentity)?;
        match open_merged_into(crypto, &current, clear, sealed)? {
            Some(next) => current = next,
            None => return Ok(current),
        }
    }
    Err(Error::Corrupt { table: T_IDENTITY, column: "merged_into" })
}

/// The identities merged into `root`, each checked against its sealed copy.
pub(crate) fn merged_into(conn: &Connection, crypto: &Crypto, root: &IdentityId) -> Result<Vec<IdentityId>> {
    let mut stmt = conn
        .prepare_cached("SELECT id, merged_into, merged_into_sealed FROM identity WHERE merged_into = ?1")
        .map_err(Error::db("listing merged identities"))?;
    let rows = stmt
        .query_map([&root.as_bytes()[..]], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?, r.get(2)?)))
        .map_err(Error::db("listing merged identities"))?;
    let mut out = Vec::new();
    for r in rows {
        let (id, clear, sealed) = r.map_err(Error::db("listing merged identities"))?;
        let id = IdentityId::from_blob(&id, T_IDENTITY, "id")?;
        open_merged_into(crypto, &id, clear, sealed)?;
        out.push(id);
    }
    Ok(out)
}

/// Mark `absorb` (and everything already merged into it) as merged into `keep`.
pub(crate) fn set_merged(tx: &Transaction<'_>, crypto: &Crypto, absorb: &IdentityId, keep: &IdentityId) -> Result<()> {
    let mut members = merged_into(tx, crypto, absorb)?;
    members.push(*absorb);
    for m in members {
        let sealed = crypto.seal(T_IDENTITY, "merged_into", &m.to_hex(), keep.as_bytes());
        tx.prepare_cached("UPDATE identity SET merged_into = ?2, merged_into_sealed = ?3 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![&m.as_bytes()[..], &keep.as_bytes()[..], sealed]))
            .map_err(Error::db("merging identities"))?;
    }
    Ok(())
}
