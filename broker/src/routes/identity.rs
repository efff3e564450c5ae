//! Identity REST over the identity vault: search through blind indexes, read, register and
//! correct patients. Registration writes; nurses and doctors read.
//!
//! Every route authorizes first (recorded), then touches the vault, then records a
//! follow-up entry naming the patients the vault answered with, as keyed references of
//! their pseudonyms: the audit log can say who looked at a patient whichever store was
//! touched. Bodies are parsed only after authorization.
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use identity_vault::{Demographics, IdentityId, IdentityRecord, OtherId, Vault};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::authz::{authorize, Caller, Need};
use crate::server::ConnInfo;
use crate::state::AppState;
use crate::stores::with_vault;
use crate::Error;
use cleave_tokens::{Op, Store};

/// Search parameters of `GET /api/v1/identity/patients`. Unknown ones are refused.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    name: Option<String>,
    family: Option<String>,
    given: Option<String>,
    birth_date: Option<String>,
    patient_id: Option<String>,
    issuer: Option<String>,
    national_id: Option<String>,
    accession: Option<String>,
}

/// The JSON of one identity; `full` adds address, phones and the other fields.
fn patient_json(r: &IdentityRecord, pseudonyms: &[String], full: bool) -> Value {
    let d = &r.demographics;
    let mut ids = Vec::new();
    if let Some(id) = &d.patient_id {
        ids.push(json!({"issuer": d.issuer.as_deref().unwrap_or(""), "id": id}));
    }
    for o in &d.other_ids {
        ids.push(json!({"issuer": o.issuer, "id": o.id}));
    }
    let mut v = json!({
        "identity_id": r.id.to_hex(),
        "family_name": d.family_name,
        "given_name": d.given_name,
        "birth_date": d.birth_date,
        "sex": d.sex,
        "patient_ids": ids,
        "pseudonyms": pseudonyms,
    });
    if full {
        if let (Value::Object(m), Ok(Value::Object(all))) = (&mut v, serde_json::to_value(r.view())) {
            for (k, x) in all {
                if k != "id" {
                    m.entry(k).or_insert(x);
                }
            }
        }
    }
    v
}

/// The pseudonyms of an identity, issuing the current one if it has none yet.
fn pseudonyms(vault: &mut Vault, id: &IdentityId) -> Result<Vec<String>, identity_vault::Error> {
    let mut out: Vec<String> = vault.pseudonyms_of(id)?.iter().map(|p| p.as_str().to_owned()).collect();
    if out.is_empty() {
        out.push(vault.pseudonym(id)?.as_str().to_owned());
    }
    Ok(out)
}

/// Record what the vault answered, one patient reference per identity.
fn follow_up(s: &AppState, caller: &Caller, action: &'static str, patients: Vec<String>) -> Result<(), Error> {
    let mut e = caller.event(action, "allow");
    e.route = Some("/api/v1/identity/patients".into());
    e.patients = patients;
    s.audit.record(&e)
}

/// `GET /api/v1/identity/patients`: search identities.
pub async fn search(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    q: Result<Query<SearchParams>, axum::extract::rejection::QueryRejection>,
    h: HeaderMap,
) -> Result<Json<Value>, Error> {
    let caller = authorize(&s, &c, &h, Need::new(Op::Read, Store::Identity, "/api/v1/identity/patients"))?;
    let Query(p) = q.map_err(|_| {
        Error::bad_request("unknown or malformed search parameter; use name, family, given, birth_date, patient_id, issuer, national_id, accession")
    })?;
    let (patients, first) = with_vault(&s, &caller, move |v| {
        let mut query = identity_vault::Query::new();
        let mut any = false;
        let mut add = |q: identity_vault::Query, set: bool| {
            any |= set;
            q
        };
        if let Some(n) = &p.name {
            query = add(query.full_name(n), true);
        }
        for t in [&p.family, &p.given].into_iter().flatten() {
            query = add(query.name_token(t), true);
        }
        if let Some(b) = &p.birth_date {
            query = add(query.birth_date(b), true);
        }
        if let Some(n) = &p.national_id {
            query = add(query.national_id(n), true);
        }
        if let Some(id) = &p.patient_id {
            query = add(query.patient_id(p.issuer.as_deref().unwrap_or(""), id), true);
        }
        let mut ids: Vec<IdentityId> = if any { v.search(&query)? } else { Vec::new() };
        if let Some(acc) = &p.accession {
            let by_study: Vec<IdentityId> =
                v.find_studies_by_accession(acc)?.iter().map(|st| v.current_identity(&st.identity)).collect::<Result<_, _>>()?;
            // With other criteria too, an identity must satisfy both.
            ids = if any { ids.into_iter().filter(|i| by_study.contains(i)).collect() } else { by_study };
            any = true;
        }
        if !any {
            return Err(identity_vault::Error::EmptyQuery);
        }
        ids.dedup();
        let mut out = Vec::new();
        let mut first = Vec::new();
        for id in ids {
            let r = v.get(&id)?;
            let ps = pseudonyms(v, &id)?;
            first.extend(ps.first().cloned());
            out.push(patient_json(&r, &ps, false));
        }
        Ok((out, first))
    })
    .await?;
    follow_up(&s, &caller, "identity-search", first)?;
    Ok(Json(json!({ "patients": patients })))
}

/// `GET /api/v1/identity/patients/{identity_id}`.
pub async fn read(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    Path(identity): Path<String>,
    h: HeaderMap,
) -> Result<Json<Value>, Error> {
    // The path names an identity id, not a pseudonym: a token limited to one patient is
    // refused here (fail closed), since the patient is known only after a vault lookup.
    let caller = authorize(&s, &c, &h, Need::new(Op::Read, Store::Identity, "/api/v1/identity/patients/{patient}"))?;
    let id = IdentityId::from_hex(&identity).map_err(|_| Error::not_found("identity"))?;
    let (body, ps) = with_vault(&s, &caller, move |v| {
        let r = v.get(&id)?;
        let ps = pseudonyms(v, &id)?;
        Ok((patient_json(&r, &ps, true), ps))
    })
    .await?;
    follow_up(&s, &caller, "identity-read", ps.into_iter().take(1).collect())?;
    Ok(Json(body))
}

/// Apply a JSON object of demographic fields to `d`. Unknown fields fail (400); `null`
/// clears a field.
fn apply(d: &mut Demographics, body: &Map<String, Value>) -> Result<(), Error> {
    let text = |v: &Value| -> Result<Option<String>, Error> {
        match v {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            _ => Err(Error::bad_request("demographic fields are strings (or null to clear)")),
        }
    };
    for (k, v) in body {
        match k.as_str() {
            "family_name" => d.family_name = text(v)?,
            "given_name" => d.given_name = text(v)?,
            "middle_name" => d.middle_name = text(v)?,
            "name_prefix" => d.name_prefix = text(v)?,
            "name_suffix" => d.name_suffix = text(v)?,
            "birth_date" => d.birth_date = text(v)?,
            "sex" => d.sex = text(v)?,
            "address" => d.address = text(v)?,
            "national_id" => d.national_id = text(v)?,
            "issuer" => d.issuer = text(v)?,
            "patient_id" => d.patient_id = text(v)?,
            "ethnic_group" => d.ethnic_group = text(v)?,
            "free_text" => d.free_text = text(v)?,
            "phones" => {
                d.phones = serde_json::from_value(v.clone())
                    .map_err(|_| Error::bad_request("phones is a list of strings"))?
            }
            "other_ids" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct O {
                    issuer: String,
                    id: String,
                }
                let list: Vec<O> = serde_json::from_value(v.clone())
                    .map_err(|_| Error::bad_request("other_ids is a list of {\"issuer\", \"id\"}"))?;
                d.other_ids = list.into_iter().map(|o| OtherId { issuer: o.issuer, id: o.id }).collect();
            }
            _ => return Err(Error::bad_request("unknown demographic field; see /api/v1/openapi.json")),
        }
    }
    Ok(())
}

fn object(body: &Bytes) -> Result<Map<String, Value>, Error> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Error::bad_request("the body must be a JSON object of demographic fields")),
    }
}

/// `POST /api/v1/identity/patients`: register a patient → `{"identity_id","pseudonym"}`.
pub async fn create(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    let caller = authorize(&s, &c, &h, Need::new(Op::Write, Store::Identity, "/api/v1/identity/patients"))?;
    let mut d = Demographics::default();
    apply(&mut d, &object(&body)?)?;
    // Registration goes through patient matching, like arrivals from modalities: the
    // same issuer + patient id gives the existing identity, near-duplicates are flagged
    // for the review queue.
    let (id, p, review) = with_vault(&s, &caller, move |v| {
        let outcome = v.match_or_create(&d)?;
        let id = outcome.identity();
        let review = match &outcome {
            identity_vault::MatchOutcome::AttachedForReview { review, .. }
            | identity_vault::MatchOutcome::IdCollision { review, .. }
            | identity_vault::MatchOutcome::PossibleDuplicate { review, .. } => Some(review.to_hex()),
            _ => None,
        };
        let p = v.pseudonym(&id)?.as_str().to_owned();
        Ok((id.to_hex(), p, review))
    })
    .await?;
    follow_up(&s, &caller, "identity-write", vec![p.clone()])?;
    Ok(Json(json!({ "identity_id": id, "pseudonym": p, "review_item": review })))
}

/// `PATCH /api/v1/identity/patients/{identity_id}`: change the fields given.
pub async fn update(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    Path(identity): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    let caller = authorize(&s, &c, &h, Need::new(Op::Write, Store::Identity, "/api/v1/identity/patients/{patient}"))?;
    let id = IdentityId::from_hex(&identity).map_err(|_| Error::not_found("identity"))?;
    let fields = object(&body)?;
    let (body, ps) = with_vault(&s, &caller, move |v| {
        let mut r = v.get(&id)?;
        apply(&mut r.demographics, &fields).map_err(|_| identity_vault::Error::InvalidInput {
            field: "body",
            expected: "known demographic fields with string values",
        })?;
        v.update(&id, &r.demographics)?;
        let r = v.get(&id)?;
        let ps = pseudonyms(v, &id)?;
        Ok((patient_json(&r, &ps, true), ps))
    })
    .await?;
    follow_up(&s, &caller, "identity-write", ps.into_iter().take(1).collect())?;
    Ok(Json(body))
}

/// `GET /api/v1/admin/review-queue` (it-admin): open patient-matching items. Items carry
/// identity ids and field *kinds*, never values.
pub async fn review_queue(State(s): State<AppState>, Extension(c): Extension<ConnInfo>, h: HeaderMap) -> Result<Json<Value>, Error> {
    let caller = authorize(&s, &c, &h, Need::new(Op::Admin, Store::Audit, "/api/v1/admin/review-queue"))?;
    let items = with_vault(&s, &caller, |v| v.review_queue()).await?;
    let items: Vec<Value> = items
        .iter()
        .map(|i| {
            let mut v = serde_json::to_value(i).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                if let Some(id) = m.remove("id") {
                    m.insert("item_id".into(), id);
                }
            }
            v
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    action: String,
    keep: Option<String>,
}

/// `POST /api/v1/admin/review-queue/{item_id}/resolve` (it-admin): `confirm`, `merge`
/// (with `keep`: the identity that remains) or `keep-apart`. Recorded as review-resolve,
/// and a merge also as merge, with every identity's patient reference.
pub async fn review_resolve(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    Path(item): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    let caller = authorize(&s, &c, &h, Need::new(Op::Admin, Store::Audit, "/api/v1/admin/review-queue/{item_id}/resolve"))?;
    let item = identity_vault::ReviewId::from_hex(&item).map_err(|_| Error::not_found("review item"))?;
    let b: ResolveBody = serde_json::from_slice(&body)
        .map_err(|_| Error::bad_request("the body must be {\"action\": \"confirm\"|\"merge\"|\"keep-apart\", \"keep\"?: identity_id}"))?;
    let keep = match &b.keep {
        Some(k) => Some(IdentityId::from_hex(k).map_err(|_| Error::bad_request("keep must be an identity id (32 hex)"))?),
        None => None,
    };
    let action = b.action.clone();
    let (record, patients) = with_vault(&s, &caller, move |v| {
        let resolution = match (action.as_str(), keep) {
            ("confirm", None) => identity_vault::Resolution::Confirm,
            ("keep-apart", None) => identity_vault::Resolution::KeepApart,
            ("merge", Some(keep)) => {
                let open = v.review_queue()?;
                let it = open.iter().find(|i| i.id == item).ok_or(identity_vault::Error::NoSuchReviewItem)?;
                if !it.identities.contains(&keep) {
                    return Err(identity_vault::Error::BadResolution("keep must be one of the item's identities"));
                }
                // A field mismatch has one identity and nothing to absorb: the vault
                // refuses that merge with the reason (use confirm or keep-apart).
                let absorb = it.identities.iter().find(|i| **i != keep).copied().unwrap_or(keep);
                identity_vault::Resolution::Merge { keep, absorb }
            }
            _ => return Err(identity_vault::Error::BadResolution("action is confirm, merge (with keep) or keep-apart (without keep)")),
        };
        let record = v.resolve(&item, resolution)?;
        let mut patients = Vec::new();
        for id in &record.identities {
            patients.push(v.pseudonym(id)?.as_str().to_owned());
        }
        Ok((serde_json::to_value(&record).unwrap_or(Value::Null), patients))
    })
    .await?;
    let mut e = caller.event("review-resolve", "allow");
    e.patients = patients.clone();
    s.audit.record(&e)?;
    if b.action == "merge" {
        let mut e = caller.event("merge", "allow");
        e.patients = patients;
        s.audit.record(&e)?;
    }
    Ok(Json(record))
}
