//! The vault's use of its keys: sealing and opening padded values bound to their place,
//! blind-index terms for search, and row-bound fingerprints for matching.
//!
//! Search terms (`term`) are equal for equal values across all rows: that is what makes
//! them searchable, and also what a thief of the file can see (which rows share a birth
//! date). Fields that are only ever *compared* against one known record, never searched,
//! get a row-bound fingerprint instead (`fingerprint`): the row id is hashed in, so equal
//! values in different rows look unrelated. Sex is the reason: a global index of a
//! three-valued field would split the whole vault into three visible groups.
use cleave_keys::{BlindIndexer, SealContext};
use zeroize::Zeroizing;

use crate::codec::{pad, unpad};
use crate::keys::VaultKeys;
use crate::model::{Demographics, FieldKind};
use crate::{normalise, Error, IdentityId, Result};

/// Blind-index domains. Changing one changes every stored term: they are part of the format.
pub(crate) mod domain {
    pub const FULL_NAME: &str = "full_name";
    pub const NAME_TOKEN: &str = "name_token";
    pub const BIRTH_DATE: &str = "birth_date";
    pub const NATIONAL_ID: &str = "national_id";
    pub const PATIENT_ID: &str = "patient_id";
    pub const DEMOGRAPHICS: &str = "demographics";
    pub const PSEUDONYM: &str = "pseudonym";
    pub const ACCESSION: &str = "accession_number";
    pub const STUDY_UID: &str = "original_study_uid";
    pub const MEMBER_UID: &str = "original_member_uid";
    pub const KEY_CHECK: &str = "key_check";
}

pub(crate) struct Crypto {
    pub(crate) keys: VaultKeys,
    /// Position in `keys.blind` of the version this vault's terms were made with.
    blind_pos: usize,
}

/// A text field with blanks treated as absent (a blank is unknown, not a value).
pub(crate) fn present(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.trim().is_empty())
}

impl Crypto {
    pub(crate) fn new(keys: VaultKeys, blind_version: u32) -> Result<Crypto> {
        let blind_pos = keys
            .blind
            .iter()
            .position(|b| b.version() == blind_version)
            .ok_or(Error::MissingKey("identity-blind-index (of the version this vault was indexed with)"))?;
        Ok(Crypto { keys, blind_pos })
    }

    fn indexer(&self) -> &BlindIndexer {
        // blind_pos was found in this very list by `new`, which is the only constructor.
        self.keys.blind.get(self.blind_pos).expect("blind_pos checked in Crypto::new")
    }

    pub(crate) fn seal(&self, table: &str, column: &str, row: &str, plain: &[u8]) -> Vec<u8> {
        self.keys.data.seal(SealContext::new(table, column, row), &pad(plain))
    }

    pub(crate) fn open(&self, table: &'static str, column: &'static str, row: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let opened = self.keys.data.open(SealContext::new(table, column, row), sealed).map_err(|e| match e {
            cleave_keys::Error::SealBroken | cleave_keys::Error::MalformedSealed => Error::Tampered { table, column },
            other => Error::Keys(other),
        })?;
        let plain = unpad(opened.expose()).ok_or(Error::Corrupt { table, column })?;
        Ok(Zeroizing::new(plain.to_vec()))
    }

    pub(crate) fn open_text(&self, table: &'static str, column: &'static str, row: &str, sealed: &[u8]) -> Result<String> {
        let b = self.open(table, column, row, sealed)?;
        std::str::from_utf8(&b).map(str::to_owned).map_err(|_| Error::Corrupt { table, column })
    }

    pub(crate) fn term(&self, domain: &str, normalised: &str) -> [u8; 32] {
        self.indexer().index(domain, normalised)
    }

    /// The term of an issuer + patient id pair. The issuer is length-prefixed so that no
    /// two pairs serialise alike.
    pub(crate) fn patient_id_term(&self, issuer: Option<&str>, id: &str) -> [u8; 32] {
        let iss = normalise::identifier(issuer.unwrap_or_default());
        let pid = normalise::identifier(id);
        let mut t = Zeroizing::new(format!("{}:", iss.len()));
        t.push_str(&iss);
        t.push_str(&pid);
        self.term(domain::PATIENT_ID, &t)
    }

    /// The row-bound fingerprint of a matched field (see the module comment).
    pub(crate) fn fingerprint(&self, id: &IdentityId, kind: FieldKind, normalised: &str) -> [u8; 32] {
        let dom = match kind {
            FieldKind::FamilyName => "fp_family_name",
            FieldKind::GivenName => "fp_given_name",
            FieldKind::BirthDate => "fp_birth_date",
            FieldKind::Sex => "fp_sex",
        };
        let mut t = Zeroizing::new(id.to_hex());
        t.push(':');
        t.push_str(normalised);
        self.term(dom, &t)
    }

    /// Every search term of a record, without repeats.
    pub(crate) fn index_terms(&self, d: &Demographics) -> Vec<[u8; 32]> {
        let mut terms = Vec::new();
        let (family, given, middle) = (present(&d.family_name), present(&d.given_name), present(&d.middle_name));
        if let Some(full) = normalise::full_name(family, given, middle) {
            terms.push(self.term(domain::FULL_NAME, &full));
        }
        for t in normalise::name_tokens(&[family, given, middle]) {
            terms.push(self.term(domain::NAME_TOKEN, &t));
        }
        if let Some(b) = present(&d.birth_date).and_then(normalise::birth_date) {
            terms.push(self.term(domain::BIRTH_DATE, &b));
        }
        if let Some(n) = present(&d.national_id) {
            terms.push(self.term(domain::NATIONAL_ID, &normalise::identifier(n)));
        }
        if let Some(p) = present(&d.patient_id) {
            terms.push(self.patient_id_term(present(&d.issuer), p));
        }
        for o in &d.other_ids {
            if !o.id.trim().is_empty() {
                terms.push(self.patient_id_term(Some(&o.issuer).filter(|s| !s.trim().is_empty()).map(|s| s.as_str()), &o.id));
            }
        }
        if let Some(t) = self.demographics_term(d) {
            terms.push(t);
        }
        terms.sort_unstable();
        terms.dedup();
        terms
    }

    /// The term of the whole (family, given, birth date, sex) tuple, when all four are
    /// known: finds possible duplicates without a global index of sex.
    pub(crate) fn demographics_term(&self, d: &Demographics) -> Option<[u8; 32]> {
        let mut t = Zeroizing::new(String::new());
        for (i, k) in FieldKind::MATCHED.into_iter().enumerate() {
            if i > 0 {
                t.push('^');
            }
            t.push_str(&match_value(d, k)?);
        }
        Some(self.term(domain::DEMOGRAPHICS, &t))
    }
}

/// The normalised value of a matched field, if known.
pub(crate) fn match_value(d: &Demographics, kind: FieldKind) -> Option<Zeroizing<String>> {
    let v = match kind {
        FieldKind::FamilyName => normalise::text(present(&d.family_name)?),
        FieldKind::GivenName => normalise::text(present(&d.given_name)?),
        FieldKind::BirthDate => normalise::birth_date(present(&d.birth_date)?)?,
        FieldKind::Sex => Zeroizing::new(normalise::sex(present(&d.sex)?)?.to_owned()),
    };
    (!v.is_empty()).then_some(v)
}
