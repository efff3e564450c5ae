//! The values that go into and come out of the store.
//!
//! Records holding decrypted text (descriptions, notes, observation values) have a `Debug`
//! that prints no content, so logging one by accident leaks nothing.
use cleave_keys::SecretBytes;
use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// What the ingest path knows about one de-identified instance. UIDs are the derived
/// (`2.25...`) ones; the pseudonym is stored as given.
#[derive(Clone, Default)]
pub struct InstanceMeta {
    pub pseudonym: String,
    /// Patient sex as DICOM codes it (`M`, `F`, `O`), if known.
    pub sex: Option<String>,
    pub study_uid: String,
    /// `YYYYMMDD`.
    pub study_date: Option<String>,
    /// Sealed: free text that could identify.
    pub study_description: Option<String>,
    /// Age at the study in whole years.
    pub age_years: Option<u16>,
    pub body_part: Option<String>,
    pub series_uid: String,
    pub modality: String,
    pub series_number: Option<i64>,
    /// Sealed: free text that could identify.
    pub series_description: Option<String>,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax: String,
    pub instance_number: Option<i64>,
    pub frames: Option<u32>,
    /// Set when de-identification could not clean the object fully (for example burned-in
    /// text); research exports must skip it.
    pub not_for_research: bool,
}

impl std::fmt::Debug for InstanceMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InstanceMeta(<redacted>)")
    }
}

/// The name and version of an instance record (FORMAT.md, "The record"). Any other fails
/// closed.
const RECORD_FORMAT: &str = "cleave-instance-record/1";

/// An instance's index record as sealed at the end of its blob: JSON, every field named,
/// unknown fields refused.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record<'a> {
    format: Cow<'a, str>,
    pseudonym: Cow<'a, str>,
    #[serde(deserialize_with = "present")]
    sex: Option<Cow<'a, str>>,
    study_uid: Cow<'a, str>,
    #[serde(deserialize_with = "present")]
    study_date: Option<Cow<'a, str>>,
    #[serde(deserialize_with = "present")]
    study_description: Option<Cow<'a, str>>,
    #[serde(deserialize_with = "present")]
    age_years: Option<u16>,
    #[serde(deserialize_with = "present")]
    body_part: Option<Cow<'a, str>>,
    series_uid: Cow<'a, str>,
    modality: Cow<'a, str>,
    #[serde(deserialize_with = "present")]
    series_number: Option<i64>,
    #[serde(deserialize_with = "present")]
    series_description: Option<Cow<'a, str>>,
    sop_instance_uid: Cow<'a, str>,
    sop_class_uid: Cow<'a, str>,
    transfer_syntax: Cow<'a, str>,
    #[serde(deserialize_with = "present")]
    instance_number: Option<i64>,
    #[serde(deserialize_with = "present")]
    frames: Option<u32>,
    not_for_research: bool,
}

/// Reads an optional field that must still be present (as `null` if empty): serde would
/// otherwise take a missing one as `None`, and a record that lost a field would be read
/// as one that never had a value.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    T::deserialize(d)
}

impl InstanceMeta {
    /// The record sealed at the end of the instance's blob, from which the index row can
    /// be made again. Wiped on drop: it holds the descriptions in the clear.
    pub(crate) fn to_record(&self) -> Zeroizing<Vec<u8>> {
        let r = Record {
            format: Cow::Borrowed(RECORD_FORMAT),
            pseudonym: Cow::Borrowed(&self.pseudonym),
            sex: self.sex.as_deref().map(Cow::Borrowed),
            study_uid: Cow::Borrowed(&self.study_uid),
            study_date: self.study_date.as_deref().map(Cow::Borrowed),
            study_description: self.study_description.as_deref().map(Cow::Borrowed),
            age_years: self.age_years,
            body_part: self.body_part.as_deref().map(Cow::Borrowed),
            series_uid: Cow::Borrowed(&self.series_uid),
            modality: Cow::Borrowed(&self.modality),
            series_number: self.series_number,
            series_description: self.series_description.as_deref().map(Cow::Borrowed),
            sop_instance_uid: Cow::Borrowed(&self.sop_instance_uid),
            sop_class_uid: Cow::Borrowed(&self.sop_class_uid),
            transfer_syntax: Cow::Borrowed(&self.transfer_syntax),
            instance_number: self.instance_number,
            frames: self.frames,
            not_for_research: self.not_for_research,
        };
        // Room for any real record up front, so that growing the buffer leaves no unwiped
        // copy of the descriptions behind. Writing strings and integers into a Vec cannot
        // fail.
        let mut out = Zeroizing::new(Vec::with_capacity(4096));
        serde_json::to_writer(&mut *out, &r).expect("a record serializes");
        out
    }

    /// Reads a record written by [`InstanceMeta::to_record`]; `None` if it is not one (an
    /// unknown format or field), which the caller treats as a damaged blob.
    pub(crate) fn from_record(bytes: &[u8]) -> Option<InstanceMeta> {
        let r: Record<'_> = serde_json::from_slice(bytes).ok()?;
        if r.format != RECORD_FORMAT {
            return None;
        }
        let own = |s: Option<Cow<'_, str>>| s.map(Cow::into_owned);
        Some(InstanceMeta {
            pseudonym: r.pseudonym.into_owned(),
            sex: own(r.sex),
            study_uid: r.study_uid.into_owned(),
            study_date: own(r.study_date),
            study_description: own(r.study_description),
            age_years: r.age_years,
            body_part: own(r.body_part),
            series_uid: r.series_uid.into_owned(),
            modality: r.modality.into_owned(),
            series_number: r.series_number,
            series_description: own(r.series_description),
            sop_instance_uid: r.sop_instance_uid.into_owned(),
            sop_class_uid: r.sop_class_uid.into_owned(),
            transfer_syntax: r.transfer_syntax.into_owned(),
            instance_number: r.instance_number,
            frames: r.frames,
            not_for_research: r.not_for_research,
        })
    }
}

/// What the sweep at opening did (FORMAT.md, "Writing durably"). `Debug` shows counts only.
#[derive(Default)]
#[non_exhaustive]
pub struct SweepReport {
    /// Files removed: temporary files and blobs that were not whole.
    pub removed: usize,
    /// Instances filed again from their blobs' records, for the caller's audit trail.
    pub refiled: Vec<Refiled>,
}

impl std::fmt::Debug for SweepReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SweepReport(removed: {}, refiled: {})", self.removed, self.refiled.len())
    }
}

/// One instance the sweep filed again: whose, and in which study (both as the index holds
/// them: a pseudonym and a derived UID).
#[non_exhaustive]
pub struct Refiled {
    pub pseudonym: String,
    pub study_uid: String,
}

impl std::fmt::Debug for Refiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Refiled(<redacted>)")
    }
}

/// The result of a put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PutOutcome {
    /// Blob and index row are committed; `size` is the plaintext length.
    Stored { size: u64 },
    /// An instance with this SOP instance UID was already stored; nothing was written and
    /// the producer was not called.
    AlreadyStored,
}

/// A patient as the clinical store knows them: a pseudonym and little else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatientRecord {
    pub pseudonym: String,
    pub sex: Option<String>,
}

/// A study, for browsing and QIDO-like answers.
#[derive(Clone)]
pub struct StudyRecord {
    pub study_uid: String,
    pub pseudonym: String,
    pub study_date: Option<String>,
    /// Distinct modalities of the study's series, sorted.
    pub modalities: Vec<String>,
    pub body_part: Option<String>,
    pub age_years: Option<u16>,
    pub description: Option<SecretBytes>,
    pub series_count: u64,
    pub instance_count: u64,
}

impl std::fmt::Debug for StudyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StudyRecord(<redacted>)")
    }
}

/// A series of a study.
#[derive(Clone)]
pub struct SeriesRecord {
    pub series_uid: String,
    pub study_uid: String,
    pub modality: String,
    pub series_number: Option<i64>,
    pub description: Option<SecretBytes>,
    pub instance_count: u64,
}

impl std::fmt::Debug for SeriesRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SeriesRecord(<redacted>)")
    }
}

/// An instance and where its blob is.
#[derive(Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    pub sop_instance_uid: String,
    pub series_uid: String,
    pub study_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax: String,
    pub instance_number: Option<i64>,
    /// Plaintext size of the stored object in bytes.
    pub size: u64,
    pub frames: Option<u32>,
    pub not_for_research: bool,
}

impl std::fmt::Debug for InstanceRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InstanceRecord({} bytes)", self.size)
    }
}

/// A QIDO-like study search. Every field set narrows the result (AND); empty matches all.
#[derive(Clone, Default)]
pub struct StudyQuery {
    pub pseudonym: Option<String>,
    pub study_uid: Option<String>,
    /// Inclusive bounds, `YYYYMMDD`.
    pub date_from: Option<String>,
    pub date_to: Option<String>,
    /// Matches a study with at least one series of this modality.
    pub modality: Option<String>,
    pub body_part: Option<String>,
    /// At most this many studies (default and cap: 1000).
    pub limit: Option<u32>,
    pub offset: u32,
}

impl std::fmt::Debug for StudyQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StudyQuery(<redacted>)")
    }
}

/// What [`crate::ClinicalStore::find_series`] looks for, across studies; each field that is
/// set narrows the search.
#[derive(Clone, Default)]
pub struct SeriesQuery {
    pub pseudonym: Option<String>,
    pub study_uid: Option<String>,
    pub series_uid: Option<String>,
    pub modality: Option<String>,
    /// At most this many series (default and cap: 1000).
    pub limit: Option<u32>,
    pub offset: u32,
}

impl std::fmt::Debug for SeriesQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SeriesQuery(<redacted>)")
    }
}

/// What [`crate::ClinicalStore::find_instances`] looks for, across studies and series; each
/// field that is set narrows the search.
#[derive(Clone, Default)]
pub struct InstanceQuery {
    pub pseudonym: Option<String>,
    pub study_uid: Option<String>,
    pub series_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
    pub sop_class_uid: Option<String>,
    pub modality: Option<String>,
    /// At most this many instances (default and cap: 1000).
    pub limit: Option<u32>,
    pub offset: u32,
}

impl std::fmt::Debug for InstanceQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InstanceQuery(<redacted>)")
    }
}

/// A clinical note to add. The text is sealed.
pub struct NewNote {
    pub pseudonym: String,
    /// The study it is about, if any (must already be stored).
    pub study_uid: Option<String>,
    /// The account id of the writer.
    pub author: String,
    /// RFC 3339 time it was written (care needs it).
    pub written_at: String,
    pub text: Zeroizing<String>,
}

/// A stored note, decrypted.
pub struct NoteRecord {
    pub id: String,
    pub study_uid: Option<String>,
    pub author: String,
    pub written_at: String,
    pub text: Zeroizing<String>,
}

impl std::fmt::Debug for NoteRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NoteRecord(id {}, <redacted>)", self.id)
    }
}

/// A typed observation value. Stored sealed as JSON (`{"type": "quantity", "value": 72.5,
/// "unit": "kg"}`); numbers and quantities also keep their number indexable.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum ObservationValue {
    Number { value: f64 },
    String { value: String },
    Boolean { value: bool },
    Quantity { value: f64, unit: String },
    /// `YYYY-MM-DD`.
    Date { value: String },
}

impl ObservationValue {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            ObservationValue::Number { .. } => "number",
            ObservationValue::String { .. } => "string",
            ObservationValue::Boolean { .. } => "boolean",
            ObservationValue::Quantity { .. } => "quantity",
            ObservationValue::Date { .. } => "date",
        }
    }
}

impl std::fmt::Debug for ObservationValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObservationValue::{}(<redacted>)", self.kind())
    }
}

/// An observation to add.
pub struct NewObservation {
    pub pseudonym: String,
    pub study_uid: Option<String>,
    /// A coded concept (e.g. a LOINC code); indexable.
    pub code: String,
    /// Its display name; sealed, as users may type anything here.
    pub name: String,
    pub value: ObservationValue,
    /// User-defined fields; sealed as one JSON object.
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// When it was observed (RFC 3339 or `YYYY-MM-DD`).
    pub observed_at: String,
}

/// A stored observation, decrypted.
pub struct ObservationRecord {
    pub id: String,
    pub study_uid: Option<String>,
    pub code: String,
    pub name: Zeroizing<String>,
    pub value: ObservationValue,
    pub fields: serde_json::Map<String, serde_json::Value>,
    pub observed_at: String,
}

impl std::fmt::Debug for ObservationRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObservationRecord(id {}, <redacted>)", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> InstanceMeta {
        InstanceMeta {
            pseudonym: "P1-00112233445566778899aabbccddeeff".into(),
            sex: Some("F".into()),
            study_uid: "2.25.1".into(),
            study_date: Some("20240202".into()),
            study_description: Some("Thorax \"KM\"".into()),
            age_years: Some(40),
            body_part: Some("CHEST".into()),
            series_uid: "2.25.2".into(),
            modality: "CT".into(),
            series_number: Some(1),
            series_description: None,
            sop_instance_uid: "2.25.3".into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            instance_number: Some(7),
            frames: Some(1),
            not_for_research: false,
        }
    }

    /// The record's bytes are part of the blob format (FORMAT.md, "The record"): this
    /// pins them, and what reading refuses.
    #[test]
    fn the_record_is_the_documented_json_and_reads_back() {
        let want = concat!(
            r#"{"format":"cleave-instance-record/1","pseudonym":"P1-00112233445566778899aabbccddeeff","sex":"F","study_uid":"2.25.1","#,
            r#""study_date":"20240202","study_description":"Thorax \"KM\"","age_years":40,"body_part":"CHEST","series_uid":"2.25.2","#,
            r#""modality":"CT","series_number":1,"series_description":null,"sop_instance_uid":"2.25.3","#,
            r#""sop_class_uid":"1.2.840.10008.5.1.4.1.1.2","transfer_syntax":"1.2.840.10008.1.2.1","instance_number":7,"frames":1,"#,
            r#""not_for_research":false}"#
        );
        let record = example().to_record();
        assert_eq!(std::str::from_utf8(&record).unwrap(), want);
        let back = InstanceMeta::from_record(&record).unwrap();
        assert_eq!(back.to_record().as_slice(), record.as_slice());

        let other_format = want.replace("cleave-instance-record/1", "cleave-instance-record/2");
        assert!(InstanceMeta::from_record(other_format.as_bytes()).is_none(), "an unknown format fails closed");
        let extra = want.replace(r#""frames":1,"#, r#""frames":1,"ingested_at":"2026-01-01","#);
        assert!(InstanceMeta::from_record(extra.as_bytes()).is_none(), "an unknown field fails closed");
        let missing = want.replace(r#""frames":1,"#, "");
        assert!(InstanceMeta::from_record(missing.as_bytes()).is_none(), "a missing field fails closed");
    }
}
