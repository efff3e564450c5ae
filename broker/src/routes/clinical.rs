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
