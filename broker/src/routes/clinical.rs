//! Clinical REST over the clinical store, keyed by pseudonym only: a patient's summary
//! (studies, notes, observations), a study's series and instances, and writing notes and
//! observations. The consultant listener serves the read routes for share tokens (the
//! token checks decide; nothing here knows about listeners).
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use clinical_store::{NewNote, NewObservation, ObservationValue};
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::authz::{authorize, Caller, Need};
use crate::server::ConnInfo;
use crate::state::AppState;
use crate::stores::with_clinical;
use crate::Error;
use cleave_tokens::{Op, Store};

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn notes_json(notes: &[clinical_store::NoteRecord]) -> Vec<Value> {
    notes
        .iter()
        .map(|n| json!({"note_id": n.id, "study_uid": n.study_uid, "author": n.author, "written_at": n.written_at, "text": n.text.as_str()}))
        .collect()
}

fn value_json(v: &ObservationValue) -> Value {
    match v {
        ObservationValue::Number { value } => json!(value),
        ObservationValue::String { value } => json!(value),
        ObservationValue::Boolean { value } => json!(value),
        ObservationValue::Quantity { value, unit } => json!({"value": value, "unit": unit}),
        ObservationValue::Date { value } => json!({"date": value}),
        // A kind added to the store later: shown as the store's own tagged JSON.
        other => serde_json::to_value(other).unwrap_or(Value::Null),
    }
}

fn observations_json(obs: &[clinical_store::ObservationRecord]) -> Vec<Value> {
    obs.iter()
        .map(|o| {
            json!({"observation_id": o.id, "study_uid": o.study_uid, "code": o.code, "name": o.name.as_str(),
                   "value": value_json(&o.value), "fields": o.fields, "observed_at": o.observed_at})
        })
        .collect()
}

fn patient_need(op: Op, route: &'static str, pseudonym: &str) -> Result<Need, Error> {
    Need::new(op, Store::Clinical, route).patient(pseudonym)
}

/// `GET /api/v1/clinical/patients/{pseudonym}`.
pub async fn patient(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    Path(p): Path<String>,
    h: HeaderMap,
) -> Result<Json<Value>, Error> {
    let caller = authorize(&s, &c, &h, patient_need(Op::Read, "/api/v1/clinical/patients/{patient}", &p)?)?;
    with_clinical(&s, &caller, move |st| {
        let Some(rec) = st.patient(&p)? else { return Err(clinical_store::Error::NotFound("patient")) };
        let q = clinical_store::StudyQuery { pseudonym: Some(p.clone()), ..Default::default() };
        let studies: Vec<Value> = st
            .find_studies(&q)?
            .iter()
            .map(|x| {
                json!({"study_uid": x.study_uid, "study_date": x.study_date, "modalities": x.modalities,
                       "description": x.description.as_ref().and_then(|d| d.as_str().map(str::to_owned)),
                       "series_count": x.series_count, "instance_count": x.instance_count})
            })
            .collect();
        let notes = notes_json(&st.list_notes(&p)?);
        let obs = observations_json(&st.list_observations(&p, None)?);
        Ok(Json(json!({"pseudonym": rec.pseudonym, "sex": rec.sex, "studies": studies, "notes": notes, "observations": obs})))
    })
    .await
}

/// `GET /api/v1/clinical/studies/{study_uid}`.
pub async fn study(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    Path(uid): Path<String>,
    h: HeaderMap,
) -> Result<Json<Value>, Error> {
    let caller = authorize(&s, &c, &h, Need::new(Op::Read, Store::Clinical, "/api/v1/clinical/studies/{study}").study(&uid)?)?;
    let (body, pseudonym) = with_clinical(&s, &caller, move |st| {
        let q = clinical_store::StudyQuery { study_uid: Some(uid.clone()), ..Default::default() };
        let Some(study) = st.find_studies(&q)?.into_iter().next() else { return Err(clinical_store::Error::NotFound("study")) };
        let mut series = Vec::new();
        for se in st.list_series(&uid)? {
            let instances: Vec<Value> = st
                .list_instances(&se.series_uid)?
                .iter()
                .map(|i| json!({"sop_instance_uid": i.sop_instance_uid, "sop_class_uid": i.sop_class_uid, "size": i.size}))
                .collect();
            series.push(json!({"series_uid": se.series_uid, "modality": se.modality, "instances": instances}));
        }
        Ok((json!({"study_uid": study.study_uid, "pseudonym": study.pseudonym, "series": series}), study.pseudonym))
    })
    .await?;
    // The study's patient is known only now: a token limited to another patient must not
    // see it, and the audit log must name it.
    if caller.proof.effective().patient().is_some_and(|p| p.as_str() != pseudonym) {
        return Err(Error::forbidden("patient not allowed: the token is limited to other patients"));
    }
    let mut e = caller.event("access", "allow");
    e.op = Some("read");
    e.store = Some("clinical");
    e.route = Some("/api/v1/clinical/studies/{study}".into());
    e.patients = vec![pseudonym];
    s.audit.record(&e)?;
    Ok(Json(body))
}

/// `GET /api/v1/clinical/patients/{pseudonym}/notes`.
pub async fn notes_read(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    Path(p): Path<String>,
    h: HeaderMap,
) -> Result<Json<Value>, Error> {
    let caller = authorize(&s, &c, &h, patient_need(Op::Read, "/api/v1/clinical/patients/{patient}/notes", &p)?)?;
    with_clinical(&s, &caller, move |st| Ok(Json(json!({"notes": notes_json(&st.list_notes(&p)?)})))).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteBody {
    text: String,
    study_uid: Option<String>,
}

fn author(caller: &Caller) -> String {
    match &caller.subject {
        crate::accounts::Subject::Staff(u) => u.clone(),
        crate::accounts::Subject::Device(fp) => format!("device-{}", fp.get(..16).unwrap_or(fp)),
    }
}

/// `POST /api/v1/clinical/patients/{pseudonym}/notes` → `{"note_id"}`.
pub async fn notes_write(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    Path(p): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    let caller = authorize(&s, &c, &h, patient_need(Op::Write, "/api/v1/clinical/patients/{patient}/notes", &p)?)?;
    let b: NoteBody = serde_json::from_slice(&body)
        .map_err(|_| Error::bad_request("the body must be {\"text\": string, \"study_uid\"?: string}"))?;
    let note = NewNote { pseudonym: p, study_uid: b.study_uid, author: author(&caller), written_at: now_rfc3339(), text: Zeroizing::new(b.text) };
    let id = with_clinical(&s, &caller, move |st| st.add_note(note)).await?;
    Ok(Json(json!({"note_id": id})))
}

/// `GET /api/v1/clinical/patients/{pseudonym}/observations`.
pub async fn observations_read(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    Path(p): Path<String>,
    h: HeaderMap,
) -> Result<Json<Value>, Error> {
    let caller = authorize(&s, &c, &h, patient_need(Op::Read, "/api/v1/clinical/patients/{patient}/observations", &p)?)?;
    with_clinical(&s, &caller, move |st| Ok(Json(json!({"observations": observations_json(&st.list_observations(&p, None)?)}))))
        .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ObservationBody {
    code: String,
    value: Value,
    unit: Option<String>,
    name: Option<String>,
    study_uid: Option<String>,
    observed_at: Option<String>,
    #[serde(default)]
    fields: serde_json::Map<String, Value>,
}

/// The contract's value forms: number, string, bool, `{"value": n, "unit": u}`,
/// `{"date": "YYYY-MM-DD"}`; a number with a top-level `unit` is a quantity.
fn observation_value(v: &Value, unit: Option<String>) -> Result<ObservationValue, Error> {
    let bad = || Error::bad_request("value must be a number, string, boolean, {\"value\": n, \"unit\": u} or {\"date\": \"YYYY-MM-DD\"}");
    Ok(match (v, unit) {
        (Value::Number(n), Some(unit)) => ObservationValue::Quantity { value: n.as_f64().ok_or_else(bad)?, unit },
        (Value::Number(n), None) => ObservationValue::Number { value: n.as_f64().ok_or_else(bad)? },
        (Value::String(s), None) => ObservationValue::String { value: s.clone() },
        (Value::Bool(b), None) => ObservationValue::Boolean { value: *b },
        (Value::Object(m), None) => match (m.get("value"), m.get("unit"), m.get("date"), m.len()) {
            (Some(Value::Number(n)), Some(Value::String(u)), None, 2) => {
                ObservationValue::Quantity { value: n.as_f64().ok_or_else(bad)?, unit: u.clone() }
            }
            (None, None, Some(Value::String(d)), 1) => ObservationValue::Date { value: d.clone() },
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    })
}

/// `POST /api/v1/clinical/patients/{pseudonym}/observations` → `{"observation_id"}`.
pub async fn observations_write(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    Path(p): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    let caller = authorize(&s, &c, &h, patient_need(Op::Write, "/api/v1/clinical/patients/{patient}/observations", &p)?)?;
    let b: ObservationBody = serde_json::from_slice(&body)
        .map_err(|_| Error::bad_request("the body must be {\"code\", \"value\", \"unit\"?, \"name\"?, \"study_uid\"?, \"observed_at\"?, \"fields\"?}"))?;
    let value = observation_value(&b.value, b.unit)?;
    let obs = NewObservation {
        pseudonym: p,
        study_uid: b.study_uid,
        name: b.name.unwrap_or_else(|| b.code.clone()),
        code: b.code,
        value,
        fields: b.fields,
        observed_at: b.observed_at.unwrap_or_else(now_rfc3339),
    };
    let id = with_clinical(&s, &caller, move |st| st.add_observation(obs)).await?;
    Ok(Json(json!({"observation_id": id})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_value_forms_map_to_store_values_and_others_fail() {
        assert!(matches!(observation_value(&json!(72.5), None), Ok(ObservationValue::Number { .. })));
        assert!(matches!(observation_value(&json!(120), Some("mmHg".into())), Ok(ObservationValue::Quantity { .. })));
        assert!(matches!(observation_value(&json!({"value": 1, "unit": "kg"}), None), Ok(ObservationValue::Quantity { .. })));
        assert!(matches!(observation_value(&json!({"date": "2026-01-02"}), None), Ok(ObservationValue::Date { .. })));
        assert!(matches!(observation_value(&json!(true), None), Ok(ObservationValue::Boolean { value: true })));
        assert!(observation_value(&json!({"value": 1, "unit": "kg", "x": 1}), None).is_err());
        assert!(observation_value(&json!([1]), None).is_err());
        assert!(observation_value(&json!("x"), Some("kg".into())).is_err());
    }
}

/// QIDO-RS query keys for studies (PS3.18 10.6). `PatientID` is the pseudonym.
#[derive(Deserialize, Default)]
pub struct QidoStudies {
    #[serde(rename = "PatientID")]
    patient_id: Option<String>,
    #[serde(rename = "StudyDate")]
    study_date: Option<String>,
    #[serde(rename = "ModalitiesInStudy")]
    modality: Option<String>,
    #[serde(rename = "StudyInstanceUID")]
    study_uid: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

fn date_ok(d: &str) -> bool {
    d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit())
}

/// `StudyDate`: `YYYYMMDD`, `YYYYMMDD-YYYYMMDD`, `-YYYYMMDD` or `YYYYMMDD-`.
fn date_range(v: &str) -> Result<(Option<String>, Option<String>), Error> {
    let bad = || Error::bad_request("StudyDate is YYYYMMDD or a range YYYYMMDD-YYYYMMDD (either end may be open)");
    let (from, to) = match v.split_once('-') {
        Some((a, b)) => (a, b),
        None => (v, v),
    };
    let conv = |s: &str| -> Result<Option<String>, Error> {
        if s.is_empty() { Ok(None) } else if date_ok(s) { Ok(Some(s.to_owned())) } else { Err(bad()) }
    };
    let r = (conv(from)?, conv(to)?);
    if r.0.is_none() && r.1.is_none() { Err(bad()) } else { Ok(r) }
}

/// One DICOM JSON attribute (PS3.18 F.2).
fn attr(vr: &str, values: Vec<Value>) -> Value {
    if values.is_empty() { json!({"vr": vr}) } else { json!({"vr": vr, "Value": values}) }
}

/// `GET /dicomweb/studies`: QIDO-RS study search over the clinical store, answered as
/// `application/dicom+json`.
pub async fn qido_studies(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    q: Result<axum::extract::Query<QidoStudies>, axum::extract::rejection::QueryRejection>,
    h: HeaderMap,
) -> Result<axum::response::Response, Error> {
    let q = q.map(|axum::extract::Query(q)| q);
    let mut need = Need::new(Op::Read, Store::Clinical, "/dicomweb/studies");
    if let Ok(QidoStudies { patient_id: Some(p), .. }) = &q {
        need = need.patient(p)?;
    }
    if let Ok(QidoStudies { study_uid: Some(u), .. }) = &q {
        need = need.study(u)?;
    }
    let caller = authorize(&s, &c, &h, need)?;
    let q = q.map_err(|_| Error::bad_request("malformed QIDO-RS query; keys: PatientID, StudyDate, ModalitiesInStudy, StudyInstanceUID, limit, offset"))?;
    let (date_from, date_to) = match &q.study_date {
        Some(d) => date_range(d)?,
        None => (None, None),
    };
    // A token limited to one patient searches only that patient.
    let pseudonym = q.patient_id.clone().or_else(|| caller.proof.effective().patient().map(|p| p.as_str().to_owned()));
    let query = clinical_store::StudyQuery {
        pseudonym,
        study_uid: q.study_uid.clone(),
        date_from,
        date_to,
        modality: q.modality.clone(),
        limit: q.limit,
        offset: q.offset.unwrap_or(0),
        ..Default::default()
    };
    let studies = with_clinical(&s, &caller, move |st| st.find_studies(&query)).await?;
    let out: Vec<Value> = studies
        .iter()
        .map(|x| {
            json!({
                "0020000D": attr("UI", vec![json!(x.study_uid)]),
                "00100020": attr("LO", vec![json!(x.pseudonym)]),
                "00080020": attr("DA", x.study_date.iter().map(|d| json!(d)).collect()),
                "00080061": attr("CS", x.modalities.iter().map(|m| json!(m)).collect()),
                "00081030": attr("LO", x.description.as_ref().and_then(|d| d.as_str()).map(|d| json!(d)).into_iter().collect()),
                "00201206": attr("IS", vec![json!(x.series_count)]),
                "00201208": attr("IS", vec![json!(x.instance_count)]),
            })
        })
        .collect();
    let mut e = caller.event("access", "allow");
    e.op = Some("read");
    e.store = Some("clinical");
    e.route = Some("/dicomweb/studies".into());
    e.patients = studies.iter().map(|x| x.pseudonym.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    if !e.patients.is_empty() {
        s.audit.record(&e)?;
    }
    let mut resp = axum::response::IntoResponse::into_response(Json(Value::Array(out)));
    resp.headers_mut().insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/dicom+json"));
    Ok(resp)
}
