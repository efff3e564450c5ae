//! The values callers hand to the vault and get back from it.
//!
//! Everything that holds PHI zeroizes itself on drop and prints as `<redacted>` in
//! `Debug`. Serialisation for the broker's JSON goes through the explicit
//! [`IdentityView`], so PHI is never serialised by accident.
use serde::Serialize;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{Error, Result};

/// A vault identity's id: 128 random bits (never ordered by time or insertion).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityId(pub(crate) [u8; 16]);

impl IdentityId {
    pub(crate) fn random() -> Self {
        let hex = cleave_keys::random_id128();
        let mut b = [0u8; 16];
        // random_id128 returns 32 hex digits by construction.
        hex::decode_to_slice(hex, &mut b).expect("random_id128 is 32 hex digits");
        IdentityId(b)
    }

    /// Parse the 32 lowercase hex digits of [`IdentityId::to_hex`].
    pub fn from_hex(s: &str) -> Result<Self> {
        let mut b = [0u8; 16];
        if s.len() != 32 || s.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(Error::InvalidInput { field: "identity id", expected: "32 lowercase hex digits" });
        }
        hex::decode_to_slice(s, &mut b)
            .map_err(|_| Error::InvalidInput { field: "identity id", expected: "32 lowercase hex digits" })?;
        Ok(IdentityId(b))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub(crate) fn from_blob(b: &[u8], table: &'static str, column: &'static str) -> Result<Self> {
        b.try_into().map(IdentityId).map_err(|_| Error::Corrupt { table, column })
    }
}

impl std::fmt::Debug for IdentityId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdentityId({})", self.to_hex())
    }
}

impl std::fmt::Display for IdentityId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for IdentityId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// Another identifier of the patient: the issuer (DICOM Issuer of Patient ID, or a
/// national scheme) and the id it issued.
#[derive(Clone, Default, PartialEq, Eq, Zeroize, ZeroizeOnDrop, Serialize)]
pub struct OtherId {
    pub issuer: String,
    pub id: String,
}

impl std::fmt::Debug for OtherId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtherId(<redacted>)")
    }
}

/// Who a patient is: every field optional (a missing field is *unknown*, never a
/// mismatch). Zeroized on drop; `Debug` is redacted. Because it zeroizes on drop,
/// struct-update syntax (`..Default::default()`) is unavailable: start from
/// `Demographics::default()` and assign the fields.
#[derive(Clone, Default, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Demographics {
    pub family_name: Option<String>,
    pub given_name: Option<String>,
    pub middle_name: Option<String>,
    pub name_prefix: Option<String>,
    pub name_suffix: Option<String>,
    /// DICOM DA, `YYYYMMDD`.
    pub birth_date: Option<String>,
    /// DICOM Patient's Sex: `M`, `F` or `O`.
    pub sex: Option<String>,
    pub address: Option<String>,
    pub phones: Vec<String>,
    pub national_id: Option<String>,
    /// Issuer of Patient ID (0010,0021); may be absent when the id stands alone.
    pub issuer: Option<String>,
    /// Patient ID (0010,0020).
    pub patient_id: Option<String>,
    pub other_ids: Vec<OtherId>,
    pub ethnic_group: Option<String>,
    pub free_text: Option<String>,
}

impl std::fmt::Debug for Demographics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Demographics(<redacted>)")
    }
}

impl Demographics {
    /// Fill the five name components from a DICOM PN value
    /// (`family^given^middle^prefix^suffix`; only the alphabetic group before any `=` is
    /// used). Empty components stay `None`.
    pub fn with_dicom_pn(mut self, pn: &str) -> Self {
        let alphabetic = pn.split('=').next().unwrap_or_default();
        let mut parts = alphabetic.split('^').map(|p| {
            let t = p.trim();
            (!t.is_empty()).then(|| t.to_owned())
        });
        self.family_name = parts.next().flatten();
        self.given_name = parts.next().flatten();
        self.middle_name = parts.next().flatten();
        self.name_prefix = parts.next().flatten();
        self.name_suffix = parts.next().flatten();
        self
    }

    /// The name as a DICOM PN value (`family^given^middle^prefix^suffix`, trailing empty
    /// components dropped).
    pub fn dicom_pn(&self) -> zeroize::Zeroizing<String> {
        let parts = [&self.family_name, &self.given_name, &self.middle_name, &self.name_prefix, &self.name_suffix];
        let last = parts.iter().rposition(|p| p.is_some()).map(|i| i + 1).unwrap_or(0);
        let mut out = zeroize::Zeroizing::new(String::new());
        for (i, p) in parts.iter().take(last).enumerate() {
            if i > 0 {
                out.push('^');
            }
            out.push_str(p.as_deref().unwrap_or_default());
        }
        out
    }
}

/// One identity read back from the vault.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    pub id: IdentityId,
    /// Set when a reviewer merged this identity into another: the one it now belongs to.
    pub merged_into: Option<IdentityId>,
    pub demographics: Demographics,
}

impl std::fmt::Debug for IdentityRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityRecord")
            .field("id", &self.id)
            .field("merged_into", &self.merged_into)
            .field("demographics", &self.demographics)
            .finish()
    }
}

impl IdentityRecord {
    /// The explicit, serialisable view of this record for the broker's JSON responses.
    pub fn view(&self) -> IdentityView<'_> {
        let d = &self.demographics;
        IdentityView {
            id: self.id,
            merged_into: self.merged_into,
            family_name: d.family_name.as_deref(),
            given_name: d.given_name.as_deref(),
            middle_name: d.middle_name.as_deref(),
            name_prefix: d.name_prefix.as_deref(),
            name_suffix: d.name_suffix.as_deref(),
            birth_date: d.birth_date.as_deref(),
            sex: d.sex.as_deref(),
            address: d.address.as_deref(),
            phones: &d.phones,
            national_id: d.national_id.as_deref(),
            issuer: d.issuer.as_deref(),
            patient_id: d.patient_id.as_deref(),
            other_ids: &d.other_ids,
            ethnic_group: d.ethnic_group.as_deref(),
            free_text: d.free_text.as_deref(),
        }
    }
}

/// The JSON shape of an identity, borrowed from an [`IdentityRecord`]. It contains PHI: the
/// broker serialises it into a response body, never into a log.
#[derive(Serialize)]
pub struct IdentityView<'a> {
    pub id: IdentityId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<IdentityId>,
    pub family_name: Option<&'a str>,
    pub given_name: Option<&'a str>,
    pub middle_name: Option<&'a str>,
    pub name_prefix: Option<&'a str>,
    pub name_suffix: Option<&'a str>,
    pub birth_date: Option<&'a str>,
    pub sex: Option<&'a str>,
    pub address: Option<&'a str>,
    pub phones: &'a [String],
    pub national_id: Option<&'a str>,
    pub issuer: Option<&'a str>,
    pub patient_id: Option<&'a str>,
    pub other_ids: &'a [OtherId],
    pub ethnic_group: Option<&'a str>,
    pub free_text: Option<&'a str>,
}

/// The demographic fields patient matching compares. Only the *kind* of a field ever
/// leaves the vault in a review item, never its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FieldKind {
    FamilyName,
    GivenName,
    BirthDate,
    Sex,
}

impl FieldKind {
    pub(crate) const MATCHED: [FieldKind; 4] =
        [FieldKind::FamilyName, FieldKind::GivenName, FieldKind::BirthDate, FieldKind::Sex];

    pub(crate) fn bit(self) -> u8 {
        match self {
            FieldKind::FamilyName => 1,
            FieldKind::GivenName => 2,
            FieldKind::BirthDate => 4,
            FieldKind::Sex => 8,
        }
    }
}
