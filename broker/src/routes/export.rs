//! `GET /api/v1/research/export`: a de-identified research extract, streamed as
//! `multipart/related; type="application/dicom"`. Researchers only (`export` on `clinical`).
//!
//! **Selection.** Either one study (`?study=<uid>`, the clinical store's study UID), or a
//! cohort described without naming anyone: `modality` (series of that modality only),
//! `from` / `to` (study date range, `YYYYMMDD`, inclusive) and `body_part`; at least one of
//! them. The two forms do not mix. A cohort with fewer distinct subjects than
//! `research_min_subjects` (config, default 5) is refused: a narrow filter (one rare
//! modality on one day) can single out a patient. A named study is one subject by
//! definition and is not held to the threshold; it is the release a protocol names.
//! Instances flagged `not_for_research` (burned-in annotation, recognisable features,
//! ultrasound...) are never sent; how many were withheld is said in a header.
//!
//! **What a researcher gets.** Each stored (care-profile) object is split again with
//! [`Options::research`]: the Basic Profile with Clean Descriptors and Clean Structured
//! Content, which removes the dates, the patient's characteristics (age, sex, size,
//! weight), institution and device identity the care profile kept, and every date or time
//! the PS3.15 table does not list. Patient ID becomes an export-local subject code.
//!
//! **Shifted dates** (`dates=shifted`; the default is `dates=removed`). For studies of
//! change over time, the export can keep dates moved instead of removing them: PS3.15's
//! Retain Longitudinal Temporal Information with Modified Dates option. Each subject gets
//! its own offset, 1 to 3652 days back, drawn from a key of this export alone, and every
//! date of that subject's objects (the table's dates and the ones it does not list) moves
//! by it: intervals between a subject's studies and events survive, calendar dates do not,
//! and the same subject's offset differs from one export to the next, so exports cannot be
//! aligned on dates. Times of day are kept. The objects say `MODIFIED` in Longitudinal
//! Temporal Information Modified (0028,0303) and carry code 113107; the response says
//! `Cleave-Export-Dates: shifted`.
//!
//! **Unlinkability.** Every export draws two fresh random keys and forgets them when the
//! stream ends: one re-keys every UID (study, series, instance, frame of reference,
//! references inside sequences) with the same keyed derivation the store uses, the other
//! makes subject codes (`RS-` and 16 hex digits of a keyed hash of the pseudonym). Inside
//! one export, one patient keeps one code and references stay consistent; across exports,
//! and between an export and the clinical store, nothing matches, so two extracts cannot be
//! joined into a longer history, and a clinical-store UID seen elsewhere cannot find its
//! instance in an extract. Keys derived per researcher grant would have let one researcher
//! join their own exports; nothing in a release needs that. The parts come in an order
//! keyed by the export key, not by date, so the order does not reveal the time line the
//! dates were removed from.
//!
//! **Streaming.** A blocking task reads each instance's encrypted blob, splits it and
//! writes the parts into a bounded channel that feeds the response body: memory is the
//! split's header bound plus a few 64 KiB chunks, whatever the study size, and nothing is
//! written to disk. If an instance fails half-way the body ends with an error (the client
//! sees a truncated transfer, never a short export that looks whole) and an `export`
//! error entry is audited.
//!
//! **Audit.** Before the first byte, one `export` entry: the researcher, and keyed
//! references of every subject released (and of the study, for a study export). A cohort
//! refused by the threshold is an `export` denial with the subjects it would have named. The
//! `cleave-audit` entry format has no count field, so the subject count is the number of
//! patient references; instance and withheld counts go to the broker's log (`cleave::export`).
use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use cleave_deid::{split, Options, UidMapper};
use cleave_keys::{Key32, OnDemand};
use clinical_store::ClinicalStore;
use serde::Deserialize;

use crate::authz::{authorize, Need};
use crate::server::ConnInfo;
use crate::state::AppState;
use crate::stores::{clinical_error, with_clinical};
use crate::Error;
use super::streaming::{self, ChannelWriter, CHUNK};
use cleave_tokens::{Op, Store};

const ROUTE: &str = "/api/v1/research/export";
/// Chunks in flight between the splitting task and the connection.
const IN_FLIGHT: usize = 4;

/// The query string. Unknown keys are refused (a misspelt filter must not widen a cohort).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    study: Option<String>,
    modality: Option<String>,
    from: Option<String>,
    to: Option<String>,
    body_part: Option<String>,
    /// `removed` (the default) or `shifted`.
    dates: Option<String>,
}

/// What an export does with dates.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dates {
    Removed,
    /// Moved by a per-subject offset (see the module comment).
    Shifted,
}

fn dates(v: Option<&str>) -> Result<Dates, Error> {
    match v {
        None | Some("removed") => Ok(Dates::Removed),
        Some("shifted") => Ok(Dates::Shifted),
        Some(_) => Err(Error::bad_request("dates must be removed (the default) or shifted")),
    }
}

/// What is exported.
enum Selection {
    Study(String),
    Cohort { modality: Option<String>, from: Option<String>, to: Option<String>, body_part: Option<String> },
}

fn date(field: &str, v: Option<String>) -> Result<Option<String>, Error> {
    match v {
        Some(d) if d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(d)),
        Some(_) => Err(Error::bad_request(format!("{field} must be a date as YYYYMMDD"))),
        None => Ok(None),
    }
}

fn code(field: &str, v: Option<String>) -> Result<Option<String>, Error> {
    match v {
        Some(c) if (1..=16).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') => Ok(Some(c)),
        Some(_) => Err(Error::bad_request(format!("{field} must be a DICOM code string (A-Z, 0-9, _; at most 16)"))),
        None => Ok(None),
    }
}

fn selection(q: ExportQuery) -> Result<Selection, Error> {
    let cohort = q.modality.is_some() || q.from.is_some() || q.to.is_some() || q.body_part.is_some();
    match (q.study, cohort) {
        (Some(_), true) => Err(Error::bad_request("give either study, or cohort filters (modality, from, to, body_part), not both")),
        (Some(s), false) => Ok(Selection::Study(s)),
        (None, false) => Err(Error::bad_request("say what to export: study=<uid>, or at least one of modality, from, to, body_part")),
        (None, true) => {
            let (from, to) = (date("from", q.from)?, date("to", q.to)?);
            if let (Some(f), Some(t)) = (&from, &to) {
                if f > t {
                    return Err(Error::bad_request("from is after to"));
                }
            }
            Ok(Selection::Cohort { modality: code("modality", q.modality)?, from, to, body_part: code("body_part", q.body_part)? })
        }
    }
}

/// One instance to send and whose it is.
struct Item {
    sop_instance_uid: String,
    pseudonym: String,
}

/// What the index says will be sent.
struct Plan {
    items: Vec<Item>,
    withheld: u64,
    subjects: BTreeSet<String>,
}

fn plan(st: &ClinicalStore, sel: &Selection) -> Result<Plan, clinical_store::Error> {
    let (q, series_modality) = match sel {
        Selection::Study(uid) => (clinical_store::StudyQuery { study_uid: Some(uid.clone()), ..Default::default() }, None),
        Selection::Cohort { modality, from, to, body_part } => (
            clinical_store::StudyQuery {
                modality: modality.clone(),
                date_from: from.clone(),
                date_to: to.clone(),
                body_part: body_part.clone(),
                ..Default::default()
            },
            modality.as_deref(),
        ),
    };
    let studies = st.find_studies(&q)?;
    if matches!(sel, Selection::Study(_)) && studies.is_empty() {
        return Err(clinical_store::Error::NotFound("study"));
    }
    let mut p = Plan { items: Vec::new(), withheld: 0, subjects: BTreeSet::new() };
    for study in studies {
        for se in st.list_series(&study.study_uid)? {
            if series_modality.is_some_and(|m| m != se.modality) {
                continue;
            }
            for i in st.list_instances(&se.series_uid)? {
                if i.not_for_research {
                    p.withheld += 1;
                    continue;
                }
                p.subjects.insert(study.pseudonym.clone());
                p.items.push(Item { sop_instance_uid: i.sop_instance_uid, pseudonym: study.pseudonym.clone() });
            }
        }
    }
    Ok(p)
}

/// The keys of one export. Random, never stored, dropped (zeroized) with the stream.
struct ExportKeys {
    uids: UidMapper,
    subjects: Key32,
    order: Key32,
    dates: Key32,
}

/// The largest date shift, in days (about ten years).
const MAX_SHIFT_DAYS: u64 = 3652;

impl ExportKeys {
    fn fresh() -> ExportKeys {
        ExportKeys { uids: UidMapper::new(Key32::generate()), subjects: Key32::generate(), order: Key32::generate(), dates: Key32::generate() }
    }

    /// The days one subject's dates move by in this export: 1 to `MAX_SHIFT_DAYS` back.
    fn date_offset(&self, pseudonym: &str) -> i32 {
        let h = cleave_keys::keyed_hash(&self.dates, pseudonym.as_bytes());
        let n = u64::from_le_bytes(h[..8].try_into().unwrap_or([0; 8]));
        -((1 + n % MAX_SHIFT_DAYS) as i32)
    }

    /// The export-local code standing for one pseudonym.
    fn subject(&self, pseudonym: &str) -> String {
        let h = cleave_keys::keyed_hash(&self.subjects, pseudonym.as_bytes());
        format!("RS-{}", hex::encode(&h[..8]))
    }

    fn rank(&self, sop: &str) -> [u8; 32] {
        cleave_keys::keyed_hash(&self.order, sop.as_bytes())
    }
}

/// `GET /api/v1/research/export?study=<uid>` or `?modality=&from=&to=&body_part=`.
pub async fn research_export(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    q: Result<Query<ExportQuery>, QueryRejection>,
    h: HeaderMap,
) -> Result<Response, Error> {
    let q = q.map(|Query(q)| q);
    let mut need = Need::new(Op::Export, Store::Clinical, ROUTE);
    if let Ok(ExportQuery { study: Some(u), .. }) = &q {
        need = need.study(u)?;
    }
    let caller = authorize(&s, &c, &h, need)?;
    let q = q.map_err(|_| Error::bad_request("malformed export query; keys: study, or modality, from, to, body_part; and dates"))?;
    let dates = dates(q.dates.as_deref())?;
    let sel = selection(q)?;
    let study = match &sel {
        Selection::Study(u) => Some(u.clone()),
        Selection::Cohort { .. } => None,
    };
    let mut plan = with_clinical(&s, &caller, move |st| plan(st, &sel)).await?;
    if plan.items.is_empty() {
        return Err(Error::not_found("exportable instance (none matches, or every match is marked not for research)"));
    }
    let min = s.config.research_min_subjects;
    if study.is_none() && plan.subjects.len() < min {
        // A refusal is a decision too, and an attempt to single someone out is what an
        // auditor wants to see: recorded with the (keyed) subjects it would have released.
        let mut e = caller.event("export", "deny");
        e.op = Some("export");
        e.store = Some("clinical");
        e.route = Some(ROUTE.into());
        e.reason = Some("cohort below research_min_subjects".into());
        e.patients = plan.subjects.iter().cloned().collect();
        s.audit.record(&e)?;
        return Err(Error::forbidden(format!(
            "the cohort has fewer than {min} subjects, so it could single out a patient; widen the filters"
        )));
    }
    let mut e = caller.event("export", "allow");
    e.op = Some("export");
    e.store = Some("clinical");
    e.route = Some(ROUTE.into());
    e.patients = std::mem::take(&mut plan.subjects).into_iter().collect();
    e.study = study;
    s.audit.record(&e)?;
    tracing::info!(target: "cleave::export", instances = plan.items.len(), subjects = e.patients.len(), withheld = plan.withheld, "research export started");

    let keys = ExportKeys::fresh();
    let mut items = plan.items;
    items.sort_by_cached_key(|i| keys.rank(&i.sop_instance_uid));
    let boundary = format!("cleave-export-{}", cleave_keys::random_id128());
    let (mut w, body) = streaming::channel(IN_FLIGHT);
    let job = Job {
        store: s.stores.clinical.clone(),
        limits: s.pipeline.limits.clone(),
        keys,
        boundary: boundary.clone(),
        dates,
    };
    let count = items.len();
    let state = s.clone();
    let mut failed = caller.event("export", "error");
    failed.op = Some("export");
    failed.store = Some("clinical");
    failed.route = Some(ROUTE.into());
    tokio::task::spawn_blocking(move || {
        if let Err(why) = job.run(&items, &mut w) {
            // The peer hanging up is not a failure of the export.
            if !w.client_gone() {
                tracing::error!(target: "cleave::export", "a research export failed mid-stream: {why}");
                failed.reason = Some("export stream failed".into());
                let _ = state.audit.record(&failed);
                w.abort("the export failed; see the broker's log");
            }
        }
    });

    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    let ct = format!("multipart/related; type=\"application/dicom\"; boundary={boundary}");
    let hv = |v: String| HeaderValue::from_str(&v).map_err(|_| Error::Store("an export header could not be formed".into()));
    resp.headers_mut().insert(header::CONTENT_TYPE, hv(ct)?);
    resp.headers_mut().insert("cleave-export-instances", hv(count.to_string())?);
    resp.headers_mut().insert("cleave-export-withheld", hv(plan.withheld.to_string())?);
    let said = if dates == Dates::Shifted { "shifted" } else { "removed" };
    resp.headers_mut().insert("cleave-export-dates", HeaderValue::from_static(said));
    Ok(resp)
}

/// The splitting side of one export.
struct Job {
    store: Arc<OnDemand<ClinicalStore, clinical_store::Error>>,
    limits: cleave_deid::Limits,
    keys: ExportKeys,
    boundary: String,
    dates: Dates,
}

impl Job {
    /// Write every part and the closing delimiter. The messages are PHI-free: they come
    /// from the store and the splitter, which name rules and kinds, never values.
    fn run(&self, items: &[Item], w: &mut ChannelWriter) -> Result<(), String> {
        let head = format!("--{}\r\nContent-Type: application/dicom\r\n\r\n", self.boundary);
        for item in items {
            let sop = item.sop_instance_uid.clone();
            let reader = self
                .store
                .with(move |st| st.open_instance(&sop))
                .and_then(|r| r)
                .map_err(|e| clinical_error(e).to_string())?;
            w.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
            let code = self.keys.subject(&item.pseudonym);
            let opts = match self.dates {
                Dates::Removed => Options::research(),
                Dates::Shifted => Options::research().with_modified_dates(self.keys.date_offset(&item.pseudonym)),
            };
            split(std::io::BufReader::with_capacity(CHUNK, reader), &mut *w, &opts, &self.keys.uids, &code, &self.limits)
                .map_err(|e| format!("the research split failed: {e}"))?;
            w.write_all(b"\r\n").map_err(|e| e.to_string())?;
        }
        w.write_all(format!("--{}--\r\n", self.boundary).as_bytes()).map_err(|e| e.to_string())?;
        w.flush().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> ExportQuery {
        let s: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let uri: axum::http::Uri = format!("/x?{}", s.join("&")).parse().unwrap();
        Query::<ExportQuery>::try_from_uri(&uri).unwrap().0
    }

    #[test]
    fn a_selection_is_a_study_or_a_cohort_never_both_nor_nothing() {
        assert!(matches!(selection(q(&[("study", "1.2.3")])), Ok(Selection::Study(_))));
        assert!(matches!(selection(q(&[("modality", "CT"), ("from", "20200101")])), Ok(Selection::Cohort { .. })));
        assert!(selection(q(&[])).is_err(), "no filter: refuse rather than export everything");
        assert!(selection(q(&[("study", "1.2.3"), ("modality", "CT")])).is_err());
        assert!(selection(q(&[("from", "2020-01-01")])).is_err());
        assert!(selection(q(&[("from", "20200102"), ("to", "20200101")])).is_err());
        assert!(selection(q(&[("modality", "ct%27%20OR%201%3D1")])).is_err());
        let uri: axum::http::Uri = "/x?patient=P1-00".parse().unwrap();
        assert!(Query::<ExportQuery>::try_from_uri(&uri).is_err(), "a cohort cannot name a patient");
    }

    #[test]
    fn subject_codes_are_stable_within_an_export_and_differ_across_exports() {
        let (a, b) = (ExportKeys::fresh(), ExportKeys::fresh());
        let p = "P1-00112233445566778899aabbccddeeff";
        assert_eq!(a.subject(p), a.subject(p));
        assert_ne!(a.subject(p), b.subject(p));
        assert_ne!(a.subject(p), a.subject("P1-ffeeddccbbaa99887766554433221100"));
        assert!(a.subject(p).starts_with("RS-") && a.subject(p).len() == 19 && !a.subject(p).contains(&p[3..]));
        assert_ne!(a.uids.map("1.2.3"), b.uids.map("1.2.3"));
    }

    #[test]
    fn date_offsets_are_per_subject_within_an_export_and_drawn_again_for_the_next() {
        let (a, b) = (ExportKeys::fresh(), ExportKeys::fresh());
        let subjects: Vec<String> = (0..200).map(|i| format!("P1-{i:032x}")).collect();
        let offsets: Vec<i32> = subjects.iter().map(|p| a.date_offset(p)).collect();
        assert!(offsets.iter().all(|d| (-(MAX_SHIFT_DAYS as i32)..=-1).contains(d)), "1 to {MAX_SHIFT_DAYS} days back");
        assert!(subjects.iter().zip(&offsets).all(|(p, d)| a.date_offset(p) == *d), "one subject, one offset");
        let distinct: std::collections::BTreeSet<_> = offsets.iter().collect();
        assert!(distinct.len() > 150, "subjects share offsets far more than chance: {}", distinct.len());
        let same = subjects.iter().filter(|p| a.date_offset(p) == b.date_offset(p)).count();
        assert!(same < 5, "the next export moves {same} of 200 subjects by the same days");
    }

    #[test]
    fn dates_are_removed_unless_shifted_is_asked_for() {
        assert!(matches!(dates(None), Ok(Dates::Removed)));
        assert!(matches!(dates(Some("removed")), Ok(Dates::Removed)));
        assert!(matches!(dates(Some("shifted")), Ok(Dates::Shifted)));
        for bad in ["full", "SHIFTED", "", "shifted;full"] {
            assert!(dates(Some(bad)).is_err(), "{bad}");
        }
    }
}
