//! What goes to the identity vault ([`ExtractedIdentity`]) and what the clinical store
//! indexes ([`ClinicalSummary`]).
use crate::deid::trimmed;
use crate::error::Error;
use crate::parse::{Elem, Value};
use dicom_core::dictionary::DataDictionary;
use dicom_core::Tag;
use dicom_dictionary_std::StandardDataDictionary;
use dicom_encoding::text::{SpecificCharacterSet, TextCodec};
use zeroize::Zeroizing;

/// A string that is zeroized when dropped.
pub type Secret = Zeroizing<String>;

/// Another identifier of the patient, from Other Patient IDs or its sequence.
pub struct OtherPatientId {
    pub id: Secret,
    pub issuer: Option<Secret>,
}

/// The identifying attributes of one instance, for the identity vault only. Every string
/// is zeroized on drop; `Debug` shows which fields are present, never their values.
#[derive(Default)]
#[non_exhaustive]
pub struct ExtractedIdentity {
    pub patient_name: Option<Secret>,
    pub patient_id: Option<Secret>,
    pub issuer_of_patient_id: Option<Secret>,
    pub other_patient_ids: Vec<OtherPatientId>,
    pub other_patient_names: Option<Secret>,
    pub birth_date: Option<Secret>,
    pub birth_time: Option<Secret>,
    pub sex: Option<Secret>,
    pub birth_name: Option<Secret>,
    pub mother_birth_name: Option<Secret>,
    pub address: Option<Secret>,
    pub telephone_numbers: Option<Secret>,
    pub ethnic_group: Option<Secret>,
    pub military_rank: Option<Secret>,
    pub country_of_residence: Option<Secret>,
    pub region_of_residence: Option<Secret>,
    pub accession_number: Option<Secret>,
    /// The original Study, Series and SOP Instance UIDs (before replacement).
    pub study_instance_uid: Secret,
    pub series_instance_uid: Secret,
    pub sop_instance_uid: Secret,
    /// Every other text attribute of the Patient group (0010,xxxx) present at the top level,
    /// as (tag, value): comments, medical record locator, religious preference...
    pub other: Vec<(u32, Secret)>,
}

impl std::fmt::Debug for ExtractedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ExtractedIdentity(<redacted>: name {}, id {}, birth date {}, {} other ids, {} other attributes)",
            present(&self.patient_name),
            present(&self.patient_id),
            present(&self.birth_date),
            self.other_patient_ids.len(),
            self.other.len()
        )
    }
}

fn present(s: &Option<Secret>) -> &'static str {
    if s.is_some() { "present" } else { "absent" }
}

/// What the clinical store indexes the de-identified instance by. Everything here is
/// taken from the de-identified object (or derived from the original as documented), so it
/// carries nothing the object does not.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClinicalSummary {
    /// Derived (or, under Retain UIDs, original) UIDs as written in the output.
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    /// The output's transfer syntax (Explicit VR Little Endian for a deflated input).
    pub transfer_syntax_uid: String,
    pub modality: Option<String>,
    /// Study Date (YYYYMMDD) if the options retain it.
    pub study_date: Option<String>,
    pub body_part_examined: Option<String>,
    /// Age at the study in whole years: from Patient's Age, else from the birth and study
    /// dates. Ages of 90 and over are reported as 90 unless patient characteristics are
    /// retained (HIPAA Safe Harbor aggregates them).
    pub age_years: Option<u32>,
    /// "M", "F" or "O".
    pub sex: Option<String>,
    pub number_of_frames: Option<u32>,
    pub rows: Option<u16>,
    pub columns: Option<u16>,
    /// After cleaning (absent unless Clean Descriptors is on: the Basic Profile removes it).
    pub study_description: Option<String>,
    pub series_description: Option<String>,
    /// True when cleaning dropped words from a description or other cleaned text: the
    /// original could have identified someone. The dropped words are kept nowhere.
    pub descriptions_cleaned: bool,
    /// True when the pixels may show identifying text or features (see FORMAT.md).
    pub not_for_research: bool,
}

/// Finds and decodes values of the top level of a dataset.
pub(crate) struct View<'a> {
    elems: &'a [Elem],
    charset: SpecificCharacterSet,
    big: bool,
}

pub(crate) fn keyword(tag: u32) -> &'static str {
    StandardDataDictionary
        .by_tag(Tag((tag >> 16) as u16, tag as u16))
        .map(|e| e.alias)
        .unwrap_or("an attribute")
}

impl<'a> View<'a> {
    pub fn new(elems: &'a [Elem], big: bool) -> Result<Self, Error> {
        let mut v = View { elems, charset: SpecificCharacterSet::ISO_IR_6, big };
        if let Some(raw) = v.raw(0x0008_0005) {
            let text = String::from_utf8_lossy(raw).into_owned();
            let code = text.split('\\').map(str::trim).find(|c| !c.is_empty());
            if let Some(code) = code {
                v.charset = SpecificCharacterSet::from_code(code).ok_or(Error::UnsupportedCharacterSet)?;
            }
        }
        Ok(v)
    }

    pub fn raw(&self, tag: u32) -> Option<&'a [u8]> {
        self.elems.iter().find(|e| e.tag == tag).and_then(|e| match &e.value {
            Value::Bytes(b) => Some(b.as_slice()),
            _ => None,
        })
    }

    pub fn items(&self, tag: u32) -> &'a [Vec<Elem>] {
        self.elems
            .iter()
            .find(|e| e.tag == tag)
            .and_then(|e| match &e.value {
                Value::Seq { items, .. } => Some(items.as_slice()),
                _ => None,
            })
            .unwrap_or(&[])
    }

    /// The decoded, trimmed text of `tag`; `None` if absent or empty.
    pub fn text(&self, tag: u32) -> Result<Option<Secret>, Error> {
        let Some(raw) = self.raw(tag) else { return Ok(None) };
        let raw = trimmed(raw);
        if raw.is_empty() {
            return Ok(None);
        }
        let decoded = match self.charset.decode(raw) {
            Ok(s) => s,
            // Files that declare no character set but carry Latin-1 are common; decode them
            // as ISO_IR 100 rather than refuse them.
            Err(_) if self.charset == SpecificCharacterSet::ISO_IR_6 => SpecificCharacterSet::ISO_IR_100
                .decode(raw)
                .map_err(|_| Error::BadText { keyword: keyword(tag) })?,
            Err(_) => return Err(Error::BadText { keyword: keyword(tag) }),
        };
        Ok(Some(Zeroizing::new(decoded.trim_end_matches(['\0', ' ']).to_string())))
    }

    /// An ASCII value (code strings, UIDs, dates), trimmed; `None` if absent or empty.
    pub fn ascii(&self, tag: u32) -> Option<String> {
        let raw = trimmed(self.raw(tag)?);
        if raw.is_empty() || !raw.is_ascii() {
            return None;
        }
        Some(String::from_utf8_lossy(raw).into_owned())
    }

    pub fn us(&self, tag: u32) -> Option<u16> {
        let b = self.raw(tag)?;
        let a: [u8; 2] = b.get(..2)?.try_into().ok()?;
        Some(if self.big { u16::from_be_bytes(a) } else { u16::from_le_bytes(a) })
    }
}

const UID_STUDY: u32 = 0x0020_000D;
const UID_SERIES: u32 = 0x0020_000E;
const UID_SOP: u32 = 0x0008_0018;

fn required(v: &View<'_>, tag: u32) -> Result<Secret, Error> {
    v.text(tag)?.ok_or(Error::MissingAttribute { keyword: keyword(tag) })
}

/// Take the identifying attributes out of the original top level.
pub(crate) fn extract(v: &View<'_>) -> Result<ExtractedIdentity, Error> {
    let mut id = ExtractedIdentity {
        sop_instance_uid: required(v, UID_SOP)?,
        study_instance_uid: required(v, UID_STUDY)?,
        series_instance_uid: required(v, UID_SERIES)?,
        patient_name: v.text(0x0010_0010)?,
        patient_id: v.text(0x0010_0020)?,
        issuer_of_patient_id: v.text(0x0010_0021)?,
        other_patient_names: v.text(0x0010_1001)?,
        birth_date: v.text(0x0010_0030)?,
        birth_time: v.text(0x0010_0032)?,
        sex: v.text(0x0010_0040)?,
        birth_name: v.text(0x0010_1005)?,
        mother_birth_name: v.text(0x0010_1060)?,
        address: v.text(0x0010_1040)?,
        telephone_numbers: v.text(0x0010_2154)?,
        ethnic_group: v.text(0x0010_2160)?,
        military_rank: v.text(0x0010_1080)?,
        country_of_residence: v.text(0x0010_2150)?,
        region_of_residence: v.text(0x0010_2152)?,
        accession_number: v.text(0x0008_0050)?,
        ..ExtractedIdentity::default()
    };
    if let Some(ids) = v.text(0x0010_1000)? {
        for one in ids.split('\\').map(str::trim).filter(|s| !s.is_empty()) {
            id.other_patient_ids.push(OtherPatientId { id: Zeroizing::new(one.to_string()), issuer: None });
        }
    }
    for item in v.items(0x0010_1002) {
        let iv = View { elems: item, charset: v.charset.clone(), big: v.big };
        if let Some(pid) = iv.text(0x0010_0020)? {
            id.other_patient_ids.push(OtherPatientId { id: pid, issuer: iv.text(0x0010_0021)? });
        }
    }
    const NAMED: [u32; 16] = [
        0x0010_0010, 0x0010_0020, 0x0010_0021, 0x0010_1001, 0x0010_0030, 0x0010_0032, 0x0010_0040, 0x0010_1005,
        0x0010_1060, 0x0010_1040, 0x0010_2154, 0x0010_2160, 0x0010_1080, 0x0010_2150, 0x0010_2152, 0x0010_1000,
    ];
    for e in v.elems {
        let textual = matches!(e.vr, dicom_core::VR::LO | dicom_core::VR::SH | dicom_core::VR::LT | dicom_core::VR::ST
            | dicom_core::VR::UT | dicom_core::VR::UC | dicom_core::VR::PN | dicom_core::VR::DA | dicom_core::VR::TM
            | dicom_core::VR::DT | dicom_core::VR::CS | dicom_core::VR::AS | dicom_core::VR::DS | dicom_core::VR::IS);
        if e.tag >> 16 == 0x0010 && e.tag & 0xFFFF != 0 && textual && !NAMED.contains(&e.tag) {
            if let Some(t) = v.text(e.tag)? {
                id.other.push((e.tag, t));
            }
        }
    }
    Ok(id)
}

/// Whole years between two DA values (YYYYMMDD), if both parse and the order is sane.
fn years_between(birth: &str, at: &str) -> Option<u32> {
    let p = |s: &str| -> Option<(u32, u32, u32)> {
        let s = s.get(..8)?;
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((s.get(..4)?.parse().ok()?, s.get(4..6)?.parse().ok()?, s.get(6..8)?.parse().ok()?))
    };
    let (by, bm, bd) = p(birth)?;
    let (ay, am, ad) = p(at)?;
    let mut years = ay.checked_sub(by)?;
    if (am, ad) < (bm, bd) {
        years = years.checked_sub(1)?;
    }
    Some(years)
}

/// Age in whole years from an AS value ("045Y", "006M", "003W", "010D").
fn age_string(a: &str) -> Option<u32> {
    let n: u32 = a.get(..3)?.parse().ok()?;
    Some(match a.get(3..4)? {
        "Y" => n,
        "M" => n / 12,
        "W" => n / 52,
        "D" => n / 365,
        _ => return None,
    })
}

/// Age at the study from the original top level.
pub(crate) fn age_at_study(orig: &View<'_>) -> Option<u32> {
    if let Some(age) = orig.ascii(0x0010_1010).and_then(|a| age_string(&a)) {
        return Some(age);
    }
    let birth = orig.ascii(0x0010_0030)?;
    let at = [0x0008_0020u32, 0x0008_0021, 0x0008_0022, 0x0008_0023].iter().find_map(|t| orig.ascii(*t))?;
    years_between(&birth, &at)
}

/// SOP classes (and their sub-classes: a prefix followed by '.') that often carry burned-in text when Burned In Annotation is absent:
/// secondary capture, ultrasound, video and visible light photography, encapsulated documents.
const RISKY_SOP_CLASS_PREFIXES: [&str; 6] = [
    "1.2.840.10008.5.1.4.1.1.7",      // Secondary Capture family
    "1.2.840.10008.5.1.4.1.1.6",      // Ultrasound (single and multi-frame)
    "1.2.840.10008.5.1.4.1.1.3.1",    // Ultrasound Multi-frame (retired)
    "1.2.840.10008.5.1.4.1.1.77.1",   // Visible light: endoscopy, microscopy, photography, video
    "1.2.840.10008.5.1.4.1.1.104",    // Encapsulated PDF, CDA, STL...
    "1.2.840.10008.5.1.4.1.1.481.1",  // RT Image (portal images with annotations)
];

/// True when the pixels may show identifying text or features.
pub(crate) fn not_for_research(orig: &View<'_>) -> bool {
    let flag = |tag| orig.ascii(tag).map(|s| s.to_ascii_uppercase());
    let burned = flag(0x0028_0301);
    let visual = flag(0x0028_0302);
    if burned.as_deref().is_some_and(|b| b != "NO") || visual.as_deref().is_some_and(|v| v != "NO") {
        return true;
    }
    if orig.ascii(0x0008_0060).is_some_and(|m| m.eq_ignore_ascii_case("US") || m.eq_ignore_ascii_case("IVUS")) {
        return true;
    }
    burned.is_none()
        && orig
            .ascii(0x0008_0016)
            .is_some_and(|c| RISKY_SOP_CLASS_PREFIXES.iter().any(|p| c == *p || c.strip_prefix(p).is_some_and(|r| r.starts_with('.'))))
}

/// Sex normalised to the three defined terms.
pub(crate) fn sex(orig: &View<'_>) -> Option<String> {
    let s = orig.ascii(0x0010_0040)?.to_ascii_uppercase();
    matches!(s.as_str(), "M" | "F" | "O").then_some(s)
}
