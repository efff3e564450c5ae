//! DICOMweb reads (PS3.18): QIDO-RS search of all series and instances, of a study's series
//! and instances and of a series' instances, and WADO-RS retrieve of studies, series and
//! instances, their metadata and their frames.
//!
//! Every route authorizes as `qido_studies` does (read on the clinical store, the study in
//! the request's facts; for a token limited to one patient, the study's patient too, see
//! `stores::study_owner_before_authorization`), then resolves what the URL names in the clinical store, checks a
//! patient-limited token against the study's pseudonym, and records one audit entry naming
//! the patient and the study.
//!
//! **Re-identification on the fly.** When the same token would *also* pass a read of the
//! identity vault for that patient and study (a nurse's or doctor's login token does; a
//! share without identity does not), instances and metadata come back with the identity
//! attributes restored from the vault by `cleave_deid::reidentify`, and a second audit
//! entry (`identity-read`) records that identity was restored. The check is made without
//! an audit entry of its own (`authz::also_allows`): not restoring is not a refusal. UIDs
//! stay as stored, so a re-identified object still matches the URLs it was fetched by.
//!
//! **Streaming.** Instance bodies and frames are produced by a blocking task reading the
//! decrypting [`clinical_store::BlobReader`] and written into a bounded channel that is the
//! response body: memory is a few 64 KiB buffers whatever the size of the study, and a slow
//! client slows the task down. Nothing is written to disk. A failure after the answer began
//! aborts the response (the chunked body never ends cleanly) rather than send a short
//! object that looks whole.
//!
//! A retrieve answers `Cleave-Identity-Restored: true|false` so a client can tell whether
//! what it saves is identifiable.
//!
//! Representations: instances as `multipart/related; type="application/dicom"` in their
//! stored transfer syntax (no transcoding: an Accept naming another syntax gets 406);
//! metadata as `application/dicom+json` with the pixel data as a BulkDataURI, which
//! `.../bulkdata/7FE00010` serves (every frame); frames as `multipart/related;
//! type="application/octet-stream"` for native little endian pixel data, or the compressed
//! bitstream's media type (`image/jpeg`, `image/jls`, `image/jp2`, `image/jpx`,
//! `image/dicom-rle`) for encapsulated pixel data; one frame rendered as `image/jpeg`
//! (`rendered.rs`).
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use cleave_deid::{Limits, Restore};
use clinical_store::{InstanceRecord, SeriesRecord};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::authz::{also_allows, authorize, names_live_grant, Caller, Need};
use crate::server::ConnInfo;
use crate::state::AppState;
use crate::stores::{study_owner_before_authorization, with_clinical, with_vault, ClinicalReader};
use crate::Error;
use super::streaming::{self, ChannelWriter};
use cleave_tokens::{Op, Store};

mod rendered;
pub use rendered::{rendered_frame, rendered_instance};

const R_SERIES_SEARCH: &str = "/dicomweb/studies/{study}/series";
const R_INSTANCE_SEARCH: &str = "/dicomweb/studies/{study}/series/{series}/instances";
const R_STUDY_INSTANCE_SEARCH: &str = "/dicomweb/studies/{study}/instances";
const R_ALL_SERIES_SEARCH: &str = "/dicomweb/series";
const R_ALL_INSTANCE_SEARCH: &str = "/dicomweb/instances";
const R_STUDY: &str = "/dicomweb/studies/{study}";
const R_SERIES: &str = "/dicomweb/studies/{study}/series/{series}";
const R_INSTANCE: &str = "/dicomweb/studies/{study}/series/{series}/instances/{instance}";
const R_STUDY_META: &str = "/dicomweb/studies/{study}/metadata";
const R_SERIES_META: &str = "/dicomweb/studies/{study}/series/{series}/metadata";
const R_INSTANCE_META: &str = "/dicomweb/studies/{study}/series/{series}/instances/{instance}/metadata";
const R_FRAMES: &str = "/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}";
const R_BULKDATA: &str = "/dicomweb/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag}";
/// The one attribute sent as bulk data: Pixel Data. Other binary values are small enough to
/// go inline in the metadata (InlineBinary).
const PIXEL_DATA: &str = "7FE00010";

/// The BulkDataURI of an instance's pixel data (`base` as [`base_url`] gives it).
fn pixel_data_uri(base: &str, i: &InstanceRecord) -> String {
    format!("{base}/dicomweb/studies/{}/series/{}/instances/{}/bulkdata/{PIXEL_DATA}", i.study_uid, i.series_uid, i.sop_instance_uid)
}

/// At most this many frames in one request.
const MAX_FRAMES_PER_REQUEST: usize = 1024;

/// A DICOM UID (PS3.5 §9.1): 1 to 64 characters, digit components separated by dots, no
/// leading zero in a component.
fn valid_uid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.split('.').all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) && (c == "0" || !c.starts_with('0')))
}

fn check_uid(what: &'static str, s: &str) -> Result<(), Error> {
    if valid_uid(s) {
        Ok(())
    } else {
        Err(Error::bad_request(format!("the {what} UID in the path is not a DICOM UID (digits and dots, at most 64 characters)")))
    }
}

/// What a URL addresses.
#[derive(Clone)]
struct Target {
    study: String,
    series: Option<String>,
    instance: Option<String>,
    /// List the instances (retrieve, metadata); a series search needs only the series.
    instances: bool,
}

impl Target {
    fn new(study: String, series: Option<String>, instance: Option<String>, instances: bool) -> Result<Self, Error> {
        check_uid("study", &study)?;
        if let Some(s) = &series {
            check_uid("series", s)?;
        }
        if let Some(i) = &instance {
            check_uid("SOP instance", i)?;
        }
        Ok(Target { study, series, instance, instances })
    }
}

/// What the clinical store holds under a target.
struct Resolved {
    pseudonym: String,
    series: Vec<SeriesRecord>,
    instances: Vec<InstanceRecord>,
}

/// An authorized, resolved request, before its audit entry.
struct Access {
    caller: Caller,
    route: &'static str,
    study: String,
    resolved: Resolved,
    restore: Option<Arc<Restore>>,
}

impl Access {
    /// The audit entries: the clinical read, and the identity read when identity is restored.
    fn record(&self, s: &AppState) -> Result<(), Error> {
        let mut e = self.caller.event("access", "allow");
        e.op = Some("read");
        e.store = Some("clinical");
        e.route = Some(self.route.into());
        e.patients = vec![self.resolved.pseudonym.clone()];
        e.study = Some(self.study.clone());
        s.audit.record(&e)?;
        if self.restore.is_some() {
            let mut e = self.caller.event("identity-read", "allow");
            e.op = Some("read");
            e.store = Some("identity");
            e.route = Some(self.route.into());
            e.patients = vec![self.resolved.pseudonym.clone()];
            e.study = Some(self.study.clone());
            s.audit.record(&e)?;
        }
        Ok(())
    }
}

/// Authorize, resolve the target, check the patient, and decide on re-identification.
async fn access(s: &AppState, c: &ConnInfo, h: &HeaderMap, route: &'static str, t: Target, reidentify: bool) -> Result<Access, Error> {
    let need = Need::new(Op::Read, Store::Clinical, route).study(&t.study)?;
    let caller = if also_allows(s, c, h, need.clone()) || !names_live_grant(s, h) {
        authorize(s, c, h, need)?
    } else {
        // Perhaps a token limited to one patient (a consultant's share): it passes only for
        // requests naming that patient, and the URL names the study, whose patient the
        // clinical store knows. Unknown study: checked as is, and refused alike.
        match study_owner_before_authorization(s, &t.study).await? {
            Some(p) => authorize(s, c, h, need.patient(&p)?)?,
            None => authorize(s, c, h, need)?,
        }
    };
    let study = t.study.clone();
    let resolved = with_clinical(s, &caller, move |st| {
        let q = clinical_store::StudyQuery { study_uid: Some(t.study.clone()), ..Default::default() };
        let Some(rec) = st.find_studies(&q)?.into_iter().next() else { return Err(clinical_store::Error::NotFound("study")) };
        let mut series = st.list_series(&t.study)?;
        if let Some(want) = &t.series {
            series.retain(|se| &se.series_uid == want);
            if series.is_empty() {
                return Err(clinical_store::Error::NotFound("series"));
            }
        }
        let mut instances = Vec::new();
        if t.instances {
            for se in &series {
                instances.extend(st.list_instances(&se.series_uid)?);
            }
            if let Some(want) = &t.instance {
                instances.retain(|i| &i.sop_instance_uid == want);
                if instances.is_empty() {
                    return Err(clinical_store::Error::NotFound("instance"));
                }
            }
        }
        Ok(Resolved { pseudonym: rec.pseudonym, series, instances })
    })
    .await?;
    // The study's patient is known only now: a token limited to another patient is refused.
    if caller.proof.effective().patient().is_some_and(|p| p.as_str() != resolved.pseudonym) {
        let mut e = caller.event("access", "deny");
        e.op = Some("read");
        e.store = Some("clinical");
        e.route = Some(route.into());
        e.reason = Some("patient caveat".into());
        e.patients = vec![resolved.pseudonym.clone()];
        e.study = Some(study.clone());
        s.audit.record(&e)?;
        return Err(Error::forbidden("patient not allowed: the token is limited to other patients"));
    }
    let mut restore = None;
    if reidentify {
        let need = Need::new(Op::Read, Store::Identity, route).patient(&resolved.pseudonym)?.study(&study)?;
        if also_allows(s, c, h, need) {
            let (p, st) = (resolved.pseudonym.clone(), study.clone());
            restore = with_vault(s, &caller, move |v| restore_from_vault(v, &p, &st)).await?.map(Arc::new);
        }
    }
    Ok(Access { caller, route, study, resolved, restore })
}

/// The identity attributes of the patient behind `pseudonym`, and the accession number
/// of `study` if the vault holds it. `None` if the vault does not know the pseudonym.
fn restore_from_vault(v: &mut identity_vault::Vault, pseudonym: &str, study: &str) -> Result<Option<Restore>, identity_vault::Error> {
    let Some(owner) = v.resolve_pseudonym(pseudonym)? else { return Ok(None) };
    let rec = v.get(&owner.current)?;
    let d = &rec.demographics;
    let mut r = Restore::new();
    let pn = d.dicom_pn();
    if !pn.is_empty() {
        r.patient_name = Some(pn);
    }
    let secret = |s: &Option<String>| s.as_ref().map(|s| Zeroizing::new(s.clone()));
    r.patient_id = secret(&d.patient_id);
    r.issuer_of_patient_id = secret(&d.issuer);
    r.birth_date = secret(&d.birth_date);
    r.sex = secret(&d.sex);
    let mut owners = vec![owner.issued_to];
    if owner.current != owner.issued_to {
        owners.push(owner.current);
    }
    for id in owners {
        if let Some(link) = v.studies_of(&id)?.into_iter().find(|l| l.clinical_study_uid.as_str() == study) {
            r.accession_number = link.accession_number.clone();
            break;
        }
    }
    Ok(Some(r))
}

// ---------------------------------------------------------------------------------------
// Content negotiation.

/// One media range of an Accept header: essence (lower case) and parameters.
struct Range {
    essence: String,
    params: Vec<(String, String)>,
}

impl Range {
    fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// The media ranges of the Accept headers; an absent header accepts anything.
fn accept_ranges(h: &HeaderMap) -> Vec<Range> {
    let mut out = Vec::new();
    for v in h.get_all(header::ACCEPT) {
        let Ok(v) = v.to_str() else { continue };
        for range in v.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let essence = parts.next().unwrap_or_default().to_ascii_lowercase();
            if essence.is_empty() {
                continue;
            }
            let params = parts
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().trim_matches('"').to_owned()))
                .collect();
            out.push(Range { essence, params });
        }
    }
    if out.is_empty() {
        out.push(Range { essence: "*/*".into(), params: Vec::new() });
    }
    out
}

/// Does `wanted` (a type parameter or essence, possibly with wildcards) cover `media`?
fn covers(wanted: &str, media: &str) -> bool {
    let wanted = wanted.to_ascii_lowercase();
    wanted == "*/*" || wanted == media || wanted.strip_suffix("/*").is_some_and(|top| media.split('/').next() == Some(top))
}

/// A multipart answer of parts of type `media` in transfer syntaxes `syntaxes` is
/// acceptable to some range of `h`.
fn multipart_acceptable(h: &HeaderMap, media: &str, syntaxes: &[&str]) -> bool {
    accept_ranges(h).iter().any(|r| {
        let ts_ok = match r.param("transfer-syntax") {
            None | Some("*") => true,
            Some(ts) => syntaxes.iter().all(|s| *s == ts),
        };
        match r.essence.as_str() {
            "*/*" | "multipart/*" => true,
            "multipart/related" => r.param("type").is_none_or(|t| covers(t, media)) && ts_ok,
            _ => false,
        }
    })
}

fn json_acceptable(h: &HeaderMap) -> bool {
    accept_ranges(h).iter().any(|r| matches!(r.essence.as_str(), "*/*" | "application/*" | "application/dicom+json" | "application/json"))
}

/// The media type of one frame of pixel data in transfer syntax `ts`; `None` for what we
/// cannot hand out as frames (big endian, video, unknown syntaxes).
fn frame_media(ts: &str) -> Option<&'static str> {
    Some(match ts {
        "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1" => "application/octet-stream",
        "1.2.840.10008.1.2.4.50" | "1.2.840.10008.1.2.4.51" | "1.2.840.10008.1.2.4.57" | "1.2.840.10008.1.2.4.70" => "image/jpeg",
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => "image/jls",
        "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => "image/jp2",
        "1.2.840.10008.1.2.4.92" | "1.2.840.10008.1.2.4.93" => "image/jpx",
        "1.2.840.10008.1.2.5" => "image/dicom-rle",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------
// Streaming bodies.

/// A multipart/related response whose body `produce` writes from a blocking task.
fn stream_multipart(
    media: &str,
    produce: impl FnOnce(&mut ChannelWriter, &str) -> Result<(), String> + Send + 'static,
) -> Result<Response, Error> {
    let boundary = format!("cleave-{}", cleave_keys::random_id128());
    let content_type = format!("multipart/related; type=\"{media}\"; boundary={boundary}");
    let (mut w, body) = streaming::channel(4);
    tokio::task::spawn_blocking(move || {
        let result = produce(&mut w, &boundary).and_then(|()| {
            write!(w, "--{boundary}--\r\n").and_then(|()| w.flush()).map_err(|e| format!("writing the response: {e}"))
        });
        if let Err(why) = result {
            // PHI-free: store, deid and I/O errors name kinds and rules, never values.
            tracing::warn!(error = %why, "a DICOMweb response was aborted");
            w.abort("the response was aborted");
        }
    });
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&content_type).map_err(|_| Error::Store("building the multipart content type failed".into()))?,
    );
    Ok(resp)
}

fn dicom_json_response(v: Value) -> Response {
    let mut resp = (StatusCode::OK, v.to_string()).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/dicom+json"));
    resp
}

// ---------------------------------------------------------------------------------------
// WADO-RS: instances.

async fn retrieve(s: AppState, c: ConnInfo, h: HeaderMap, route: &'static str, t: Target) -> Result<Response, Error> {
    let a = access(&s, &c, &h, route, t, true).await?;
    let syntaxes: Vec<&str> = a.resolved.instances.iter().map(|i| i.transfer_syntax.as_str()).collect();
    if !multipart_acceptable(&h, "application/dicom", &syntaxes) {
        return Err(Error::NotAcceptable(
            "instances are sent as multipart/related; type=\"application/dicom\" in their stored transfer syntax (transfer-syntax=* or omitted); this server does not transcode".into(),
        ));
    }
    a.record(&s)?;
    let reader = ClinicalReader::new(&s, &a.caller);
    let limits: Limits = s.pipeline.limits.clone();
    let restore = a.restore.clone();
    let restored = HeaderValue::from_static(if restore.is_some() { "true" } else { "false" });
    let instances = a.resolved.instances;
    let mut resp = stream_multipart("application/dicom", move |w, boundary| {
        for inst in &instances {
            write!(w, "--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={}\r\n\r\n", inst.transfer_syntax)
                .map_err(|e| format!("writing the response: {e}"))?;
            let mut blob = reader.open_instance(&inst.sop_instance_uid).map_err(|e| e.to_string())?;
            match &restore {
                Some(r) => cleave_deid::reidentify(&mut blob, &mut *w, r, &limits).map(drop).map_err(|e| e.to_string())?,
                None => std::io::copy(&mut blob, &mut *w).map(drop).map_err(|e| format!("streaming an instance: {e}"))?,
            }
            w.write_all(b"\r\n").map_err(|e| format!("writing the response: {e}"))?;
        }
        Ok(())
    })?;
    // Tells a client whether what it saves is identifiable (no PHI: a yes or a no).
    resp.headers_mut().insert("cleave-identity-restored", restored);
    Ok(resp)
}

/// `GET /dicomweb/studies/{study}`: every instance of a study.
pub async fn retrieve_study(State(s): State<AppState>, Extension(c): Extension<ConnInfo>, Path(study): Path<String>, h: HeaderMap) -> Result<Response, Error> {
    retrieve(s, c, h, R_STUDY, Target::new(study, None, None, true)?).await
}

/// `GET /dicomweb/studies/{study}/series/{series}`: every instance of a series.
pub async fn retrieve_series(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    Path((study, series)): Path<(String, String)>,
    h: HeaderMap,
) -> Result<Response, Error> {
    retrieve(s, c, h, R_SERIES, Target::new(study, Some(series), None, true)?).await
}

/// `GET /dicomweb/studies/{study}/series/{series}/instances/{instance}`: one instance.
pub async fn retrieve_instance(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    Path((study, series, instance)): Path<(String, String, String)>,
    h: HeaderMap,
) -> Result<Response, Error> {
    retrieve(s, c, h, R_INSTANCE, Target::new(study, Some(series), Some(instance), true)?).await
}

// ---------------------------------------------------------------------------------------
// WADO-RS: metadata.

async fn metadata(s: AppState, c: ConnInfo, h: HeaderMap, route: &'static str, t: Target) -> Result<Response, Error> {
    let a = access(&s, &c, &h, route, t, true).await?;
    if !json_acceptable(&h) {
        return Err(Error::NotAcceptable("metadata is sent as application/dicom+json only".into()));
    }
    a.record(&s)?;
    let reader = ClinicalReader::new(&s, &a.caller);
    let limits: Limits = s.pipeline.limits.clone();
    let restore = a.restore.clone();
    let instances = a.resolved.instances;
    let base = base_url(&h, &c);
    let out = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, Error> {
        let mut out = Vec::with_capacity(instances.len());
        for inst in &instances {
            let blob = reader.open_instance(&inst.sop_instance_uid)?;
            // PS3.18: bulk data are referenced, not inlined.
            let uri = pixel_data_uri(&base, inst);
            let j = cleave_deid::metadata_json(blob, restore.as_deref(), &limits, Some(&uri))
                .map_err(|e| Error::Store(format!("reading a stored instance: {e}")))?;
            out.push(j);
        }
        Ok(out)
    })
    .await
    .map_err(|_| Error::Store("a metadata task was interrupted".into()))??;
    Ok(dicom_json_response(Value::Array(out)))
}

/// `GET /dicomweb/studies/{study}/metadata`.
pub async fn study_metadata(State(s): State<AppState>, Extension(c): Extension<ConnInfo>, Path(study): Path<String>, h: HeaderMap) -> Result<Response, Error> {
    metadata(s, c, h, R_STUDY_META, Target::new(study, None, None, true)?).await
}

/// `GET /dicomweb/studies/{study}/series/{series}/metadata`.
pub async fn series_metadata(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    Path((study, series)): Path<(String, String)>,
    h: HeaderMap,
) -> Result<Response, Error> {
    metadata(s, c, h, R_SERIES_META, Target::new(study, Some(series), None, true)?).await
}

/// `GET /dicomweb/studies/{study}/series/{series}/instances/{instance}/metadata`.
pub async fn instance_metadata(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    Path((study, series, instance)): Path<(String, String, String)>,
    h: HeaderMap,
) -> Result<Response, Error> {
    metadata(s, c, h, R_INSTANCE_META, Target::new(study, Some(series), Some(instance), true)?).await
}

// ---------------------------------------------------------------------------------------
// WADO-RS: frames.

fn frame_list(text: &str) -> Result<Vec<u32>, Error> {
    let bad = || Error::bad_request(format!("the frame list is comma-separated frame numbers from 1, at most {MAX_FRAMES_PER_REQUEST}"));
    let list: Vec<u32> = text.split(',').map(|n| n.trim().parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(bad)).collect::<Result<_, _>>()?;
    if list.is_empty() || list.len() > MAX_FRAMES_PER_REQUEST {
        return Err(bad());
    }
    Ok(list)
}

/// `GET /dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{list}`.
pub async fn frames(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    Path((study, series, instance, list)): Path<(String, String, String, String)>,
    h: HeaderMap,
) -> Result<Response, Error> {
    let t = Target::new(study, Some(series), Some(instance), true)?;
    let list = frame_list(&list)?;
    send_frames(s, c, h, R_FRAMES, t, Some(list)).await
}

/// `GET .../instances/{instance}/bulkdata/7FE00010`: the BulkDataURI the metadata gives for
/// an instance's pixel data; every frame, one part each, as the frames resource sends them.
pub async fn bulkdata(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    Path((study, series, instance, tag)): Path<(String, String, String, String)>,
    h: HeaderMap,
) -> Result<Response, Error> {
    let t = Target::new(study, Some(series), Some(instance), true)?;
    if !tag.eq_ignore_ascii_case(PIXEL_DATA) {
        return Err(Error::not_found("bulk data element (only Pixel Data, 7FE00010, is sent as bulk data; other binary values are inline in the metadata)"));
    }
    send_frames(s, c, h, R_BULKDATA, t, None).await
}

/// Frames `list` (all of them if `None`) of the one instance `t` names.
async fn send_frames(s: AppState, c: ConnInfo, h: HeaderMap, route: &'static str, t: Target, list: Option<Vec<u32>>) -> Result<Response, Error> {
    // Frames carry pixels only: nothing to re-identify.
    let a = access(&s, &c, &h, route, t, false).await?;
    let Some(inst) = a.resolved.instances.first().cloned() else { return Err(Error::not_found("instance")) };
    let count = inst.frames.unwrap_or(1).max(1);
    let list = list.unwrap_or_else(|| (1..=count).collect());
    if list.iter().any(|n| *n > count) {
        return Err(Error::bad_request("a frame number is beyond the instance's NumberOfFrames"));
    }
    let Some(media) = frame_media(&inst.transfer_syntax) else {
        return Err(Error::NotAcceptable(
            "frames of this instance's transfer syntax (big endian or video) are not served; retrieve the whole instance".into(),
        ));
    };
    // Native frames are the same bytes in implicit and explicit VR little endian; PS3.18
    // labels them with Explicit VR Little Endian.
    let ts = if media == "application/octet-stream" { "1.2.840.10008.1.2.1" } else { inst.transfer_syntax.as_str() }.to_owned();
    if !multipart_acceptable(&h, media, &[ts.as_str()]) {
        return Err(Error::NotAcceptable(format!(
            "frames of this instance are sent as multipart/related; type=\"{media}\"; transfer-syntax={ts}; this server does not transcode"
        )));
    }
    a.record(&s)?;
    let reader = ClinicalReader::new(&s, &a.caller);
    let limits: Limits = s.pipeline.limits.clone();
    let part_type = format!("{media}; transfer-syntax={ts}");
    stream_multipart(media, move |w, boundary| {
        for n in list {
            write!(w, "--{boundary}\r\nContent-Type: {part_type}\r\n\r\n").map_err(|e| format!("writing the response: {e}"))?;
            let blob = reader.open_instance(&inst.sop_instance_uid).map_err(|e| e.to_string())?;
            cleave_deid::copy_frame(blob, n, &mut *w, &limits).map_err(|e| e.to_string())?;
            w.write_all(b"\r\n").map_err(|e| format!("writing the response: {e}"))?;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// QIDO-RS: series and instances of a study.

fn attr(vr: &str, values: Vec<Value>) -> Value {
    if values.is_empty() { json!({"vr": vr}) } else { json!({"vr": vr, "Value": values}) }
}

/// `https://<host>[:<port>]` from the request, for RetrieveURL and BulkDataURI; relative
/// URLs without a usable Host. A Host without a port gets the port the client connected
/// to, unless that is 443: dicomweb-client sends `Host: <name>` without the port it
/// connected to, and a URL without it would send the client to port 443.
fn base_url(h: &HeaderMap, c: &ConnInfo) -> String {
    let Some(host) = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|host| !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)))
    else {
        return String::new();
    };
    let has_port = host.rsplit_once(':').is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    match c.local_port {
        Some(port) if !has_port && port != 443 => format!("https://{host}:{port}"),
        _ => format!("https://{host}"),
    }
}

/// The query string as keys and values; a malformed one is 400 in the one error format.
fn query(q: Result<Query<HashMap<String, String>>, QueryRejection>) -> Result<HashMap<String, String>, Error> {
    q.map(|Query(q)| q).map_err(|_| Error::bad_request("the query string is malformed; see PS3.18 for QIDO-RS query keys"))
}

fn limit_offset(q: &HashMap<String, String>) -> Result<(usize, usize), Error> {
    let num = |k: &str| -> Result<Option<usize>, Error> {
        q.get(k).map(|v| v.parse::<usize>().map_err(|_| Error::bad_request(format!("{k} must be a non-negative integer")))).transpose()
    };
    Ok((num("limit")?.unwrap_or(1000).min(1000), num("offset")?.unwrap_or(0)))
}

fn query_uid(q: &HashMap<String, String>, key: &'static str) -> Result<Option<String>, Error> {
    match q.get(key) {
        Some(v) if valid_uid(v) => Ok(Some(v.clone())),
        Some(_) => Err(Error::bad_request(format!("{key} must be a DICOM UID"))),
        None => Ok(None),
    }
}

/// `GET /dicomweb/studies/{study}/series`: keys `Modality`, `SeriesInstanceUID`,
/// `SeriesNumber`, `limit`, `offset` (others, such as `includefield`, are ignored).
pub async fn qido_series(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    Path(study): Path<String>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    h: HeaderMap,
) -> Result<Response, Error> {
    let t = Target::new(study, None, None, false)?;
    let q = query(q)?;
    let (limit, offset) = limit_offset(&q)?;
    let series_uid = query_uid(&q, "SeriesInstanceUID")?;
    let number = q.get("SeriesNumber").map(|n| n.parse::<i64>().map_err(|_| Error::bad_request("SeriesNumber must be an integer"))).transpose()?;
    let a = access(&s, &c, &h, R_SERIES_SEARCH, t, false).await?;
    if !json_acceptable(&h) {
        return Err(Error::NotAcceptable("search results are sent as application/dicom+json only".into()));
    }
    a.record(&s)?;
    let base = base_url(&h, &c);
    let out: Vec<Value> = a
        .resolved
        .series
        .iter()
        .filter(|se| q.get("Modality").is_none_or(|m| m.eq_ignore_ascii_case(&se.modality)))
        .filter(|se| series_uid.as_ref().is_none_or(|u| *u == se.series_uid))
        .filter(|se| number.is_none_or(|n| se.series_number == Some(n)))
        .skip(offset)
        .take(limit)
        .map(|se| series_answer(se, None, &base))
        .collect();
    Ok(dicom_json_response(Value::Array(out)))
}

/// `GET /dicomweb/series` (PS3.18's "All Series"): series across studies; keys `PatientID`
/// (the pseudonym), `StudyInstanceUID`, `SeriesInstanceUID`, `Modality`, `limit`, `offset`.
///
/// Authorized as [`authorize_cross_study`] says: a token limited to one patient or one study
/// must name it (and then sees only it); a token limited to neither sees all. Answers are
/// de-identified (PatientID is the pseudonym); one audit entry names the patients listed.
pub async fn qido_all_series(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    h: HeaderMap,
) -> Result<Response, Error> {
    let q = query(q)?;
    let (limit, offset) = limit_offset(&q)?;
    let study = query_uid(&q, "StudyInstanceUID")?;
    let series_uid = query_uid(&q, "SeriesInstanceUID")?;
    let (caller, pseudonym, modality) = authorize_cross_study(&s, &c, &h, &q, study.as_deref(), R_ALL_SERIES_SEARCH)?;
    let sq = clinical_store::SeriesQuery {
        pseudonym,
        study_uid: study,
        series_uid,
        modality,
        limit: Some(u32::try_from(limit).unwrap_or(u32::MAX)),
        offset: u32::try_from(offset).map_err(|_| Error::bad_request("offset is too large"))?,
    };
    let found = with_clinical(&s, &caller, move |st| st.find_series(&sq)).await?;
    record_cross_study(&s, &caller, R_ALL_SERIES_SEARCH, found.iter().map(|(p, _)| p))?;
    let base = base_url(&h, &c);
    let out: Vec<Value> = found.iter().map(|(pseudonym, se)| series_answer(se, Some(pseudonym), &base)).collect();
    Ok(dicom_json_response(Value::Array(out)))
}

/// One series in a search answer; PatientID (the pseudonym) where the search spans patients.
fn series_answer(se: &SeriesRecord, pseudonym: Option<&str>, base: &str) -> Value {
    let desc = se.description.as_ref().and_then(|d| d.as_str()).map(|d| json!(d));
    let mut answer = json!({
        "0020000D": attr("UI", vec![json!(se.study_uid)]),
        "0020000E": attr("UI", vec![json!(se.series_uid)]),
        "00080060": attr("CS", vec![json!(se.modality)]),
        "00200011": attr("IS", se.series_number.iter().map(|n| json!(n)).collect()),
        "0008103E": attr("LO", desc.into_iter().collect()),
        "00201209": attr("IS", vec![json!(se.instance_count)]),
        "00081190": attr("UR", vec![json!(format!("{base}/dicomweb/studies/{}/series/{}", se.study_uid, se.series_uid))]),
    });
    if let Some(p) = pseudonym {
        answer["00100020"] = attr("LO", vec![json!(p)]);
    }
    answer
}

/// `GET /dicomweb/studies/{study}/series/{series}/instances`: keys `SOPInstanceUID`,
/// `SOPClassUID`, `InstanceNumber`, `limit`, `offset`. Rows and Columns are read from
/// each instance's stored header (the index does not hold them).
pub async fn qido_instances(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    Path((study, series)): Path<(String, String)>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    h: HeaderMap,
) -> Result<Response, Error> {
    let t = Target::new(study, Some(series), None, true)?;
    search_instances(s, c, q, h, t, R_INSTANCE_SEARCH).await
}

/// `GET /dicomweb/studies/{study}/instances` (PS3.18's "Study's Instances"): every
/// instance of the study, in all its series; the keys of the series-level search, plus
/// `SeriesInstanceUID`. The same authorization as the study's other reads.
pub async fn qido_study_instances(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    Path(study): Path<String>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    h: HeaderMap,
) -> Result<Response, Error> {
    let t = Target::new(study, None, None, true)?;
    search_instances(s, c, q, h, t, R_STUDY_INSTANCE_SEARCH).await
}

async fn search_instances(
    s: AppState,
    c: ConnInfo,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    h: HeaderMap,
    t: Target,
    route: &'static str,
) -> Result<Response, Error> {
    let q = query(q)?;
    let (limit, offset) = limit_offset(&q)?;
    let sop = query_uid(&q, "SOPInstanceUID")?;
    let class = query_uid(&q, "SOPClassUID")?;
    let series_uid = query_uid(&q, "SeriesInstanceUID")?;
    let number = q.get("InstanceNumber").map(|n| n.parse::<i64>().map_err(|_| Error::bad_request("InstanceNumber must be an integer"))).transpose()?;
    let a = access(&s, &c, &h, route, t, false).await?;
    if !json_acceptable(&h) {
        return Err(Error::NotAcceptable("search results are sent as application/dicom+json only".into()));
    }
    a.record(&s)?;
    let picked: Vec<InstanceRecord> = a
        .resolved
        .instances
        .iter()
        .filter(|i| sop.as_ref().is_none_or(|u| *u == i.sop_instance_uid))
        .filter(|i| class.as_ref().is_none_or(|u| *u == i.sop_class_uid))
        .filter(|i| series_uid.as_ref().is_none_or(|u| *u == i.series_uid))
        .filter(|i| number.is_none_or(|n| i.instance_number == Some(n)))
        .skip(offset)
        .take(limit)
        .cloned()
        .collect();
    let picked = picked.into_iter().map(|i| (None, i)).collect();
    instance_answers(&s, &a.caller, picked, base_url(&h, &c)).await
}

/// `GET /dicomweb/instances` (PS3.18's "All Instances"): instances across studies; keys
/// `PatientID` (the pseudonym), `StudyInstanceUID`, `SeriesInstanceUID`, `SOPInstanceUID`,
/// `SOPClassUID`, `Modality`, `limit`, `offset`. Authorized, audited and de-identified like
/// [`qido_all_series`].
pub async fn qido_all_instances(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    h: HeaderMap,
) -> Result<Response, Error> {
    let q = query(q)?;
    let (limit, offset) = limit_offset(&q)?;
    let study = query_uid(&q, "StudyInstanceUID")?;
    let (caller, pseudonym, modality) = authorize_cross_study(&s, &c, &h, &q, study.as_deref(), R_ALL_INSTANCE_SEARCH)?;
    let iq = clinical_store::InstanceQuery {
        pseudonym,
        study_uid: study,
        series_uid: query_uid(&q, "SeriesInstanceUID")?,
        sop_instance_uid: query_uid(&q, "SOPInstanceUID")?,
        sop_class_uid: query_uid(&q, "SOPClassUID")?,
        modality,
        limit: Some(u32::try_from(limit).unwrap_or(u32::MAX)),
        offset: u32::try_from(offset).map_err(|_| Error::bad_request("offset is too large"))?,
    };
    let found = with_clinical(&s, &caller, move |st| st.find_instances(&iq)).await?;
    record_cross_study(&s, &caller, R_ALL_INSTANCE_SEARCH, found.iter().map(|(p, _)| p))?;
    let picked = found.into_iter().map(|(p, i)| (Some(p), i)).collect();
    instance_answers(&s, &caller, picked, base_url(&h, &c)).await
}

/// Authorization for a search across studies, as `qido_studies` does it: read on the
/// clinical store, with the patient and the study in the request's facts when the query
/// names them, so a token limited to one patient or one study must name it. Returns the
/// caller, the pseudonym to restrict the search to, and the `Modality` key.
fn authorize_cross_study(
    s: &AppState,
    c: &ConnInfo,
    h: &HeaderMap,
    q: &HashMap<String, String>,
    study: Option<&str>,
    route: &'static str,
) -> Result<(Caller, Option<String>, Option<String>), Error> {
    let mut need = Need::new(Op::Read, Store::Clinical, route);
    if let Some(p) = q.get("PatientID") {
        need = need.patient(p)?;
    }
    if let Some(u) = study {
        need = need.study(u)?;
    }
    let caller = authorize(s, c, h, need)?;
    if !json_acceptable(h) {
        return Err(Error::NotAcceptable("search results are sent as application/dicom+json only".into()));
    }
    // The clinical store checks Modality as a code string (400 otherwise), as for studies.
    let modality = q.get("Modality").cloned();
    // A token limited to one patient searches only that patient.
    let pseudonym = q.get("PatientID").cloned().or_else(|| caller.proof.effective().patient().map(|p| p.as_str().to_owned()));
    Ok((caller, pseudonym, modality))
}

/// The audit entry of a search across studies: the patients whose records were listed
/// (none listed, no entry, as for `qido_studies`).
fn record_cross_study<'a>(s: &AppState, caller: &Caller, route: &'static str, patients: impl Iterator<Item = &'a String>) -> Result<(), Error> {
    let mut e = caller.event("access", "allow");
    e.op = Some("read");
    e.store = Some("clinical");
    e.route = Some(route.into());
    e.patients = patients.cloned().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    if !e.patients.is_empty() {
        s.audit.record(&e)?;
    }
    Ok(())
}

/// The DICOM JSON answer of an instance search. Rows and Columns are read from each
/// instance's stored header (the index does not hold them); PatientID (the pseudonym) is
/// given where the search spans patients.
async fn instance_answers(s: &AppState, caller: &Caller, picked: Vec<(Option<String>, InstanceRecord)>, base: String) -> Result<Response, Error> {
    let reader = ClinicalReader::new(s, caller);
    let limits: Limits = s.pipeline.limits.clone();
    let out = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, Error> {
        let mut out = Vec::with_capacity(picked.len());
        for (pseudonym, i) in &picked {
            let blob = reader.open_instance(&i.sop_instance_uid)?;
            let meta = cleave_deid::metadata_json(blob, None, &limits, None)
                .map_err(|e| Error::Store(format!("reading a stored instance: {e}")))?;
            let pick = |tag: &str, vr: &str| meta.get(tag).cloned().unwrap_or_else(|| json!({"vr": vr}));
            let url = format!("{base}/dicomweb/studies/{}/series/{}/instances/{}", i.study_uid, i.series_uid, i.sop_instance_uid);
            let mut answer = json!({
                "0020000D": attr("UI", vec![json!(i.study_uid)]),
                "0020000E": attr("UI", vec![json!(i.series_uid)]),
                "00080016": attr("UI", vec![json!(i.sop_class_uid)]),
                "00080018": attr("UI", vec![json!(i.sop_instance_uid)]),
                "00083002": attr("UI", vec![json!(i.transfer_syntax)]),
                "00200013": attr("IS", i.instance_number.iter().map(|n| json!(n)).collect()),
                "00280010": pick("00280010", "US"),
                "00280011": pick("00280011", "US"),
                "00280008": attr("IS", vec![json!(i.frames.unwrap_or(1))]),
                "00081190": attr("UR", vec![json!(url)]),
            });
            if let Some(p) = pseudonym {
                answer["00100020"] = attr("LO", vec![json!(p)]);
            }
            out.push(answer);
        }
        Ok(out)
    })
    .await
    .map_err(|_| Error::Store("a search task was interrupted".into()))??;
    Ok(dicom_json_response(Value::Array(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_checked_by_the_standard_rules() {
        for ok in ["1.2.840.10008.1.2", "2.25.0", "0"] {
            assert!(valid_uid(ok), "{ok}");
        }
        for bad in ["", "1..2", "1.02", ".1", "1.", "1.2.a", &"1".repeat(65), "1.2/3"] {
            assert!(!valid_uid(bad), "{bad}");
        }
    }

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn accept_negotiation_takes_what_we_make_and_refuses_transcoding() {
        let ts = ["1.2.840.10008.1.2.1"];
        assert!(multipart_acceptable(&HeaderMap::new(), "application/dicom", &ts));
        assert!(multipart_acceptable(&accept("multipart/related; type=\"application/dicom\""), "application/dicom", &ts));
        assert!(multipart_acceptable(&accept("multipart/related; type=application/dicom; transfer-syntax=*"), "application/dicom", &ts));
        assert!(multipart_acceptable(&accept("multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.1"), "application/dicom", &ts));
        assert!(!multipart_acceptable(&accept("multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.4.50"), "application/dicom", &ts));
        assert!(!multipart_acceptable(&accept("application/dicom"), "application/dicom", &ts));
        assert!(!multipart_acceptable(&accept("multipart/related; type=\"application/dicom+xml\""), "application/dicom", &ts));
        assert!(multipart_acceptable(&accept("multipart/related; type=\"image/*\""), "image/jpeg", &["1.2.840.10008.1.2.4.50"]));
        assert!(multipart_acceptable(&accept("text/html, */*"), "application/octet-stream", &ts));
        assert!(json_acceptable(&accept("application/dicom+json")));
        assert!(!json_acceptable(&accept("application/dicom+xml")));
    }

    #[test]
    fn frame_lists_are_numbers_from_one() {
        assert_eq!(frame_list("1,3,2").unwrap(), vec![1, 3, 2]);
        for bad in ["", "0", "1,,2", "a", "-1", &vec!["1"; 1025].join(",")] {
            assert!(frame_list(bad).is_err(), "{bad}");
        }
    }
}
