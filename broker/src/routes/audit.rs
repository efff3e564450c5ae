//! The auditor's view of the audit log: entries, the signed checkpoint, the public key and
//! RFC 9162 proofs. Every call goes through [`authorize`] as `audit` on the `audit` store,
//! whose decision is itself appended (as `audit-read`) before anything is read: reading the
//! log leaves a trace in it.
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use cleave_audit::{Operation, OutcomeClass};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::audit::audit_error;
use crate::authz::{authorize, Need};
use crate::server::ConnInfo;
use crate::state::AppState;
use crate::Error;
use cleave_tokens::{Op, Store};

/// The query string, checked only after authorization so that nothing about a refused
/// request is looked at; a malformed one is a 400 in the one JSON error format.
fn parsed<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Error> {
    q.map(|Query(t)| t).map_err(|_| Error::bad_request("the query string has an unknown, missing or malformed parameter; see /api/v1/openapi.json"))
}

fn need(route: &'static str) -> Need {
    Need::new(Op::Audit, Store::Audit, route)
}

/// Run a blocking log read off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(|_| Error::Audit("a read of the audit log was interrupted".into()))?
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntriesQuery {
    after: Option<u64>,
    limit: Option<usize>,
    account: Option<String>,
    operation: Option<String>,
    outcome: Option<String>,
    patient: Option<String>,
}

/// `GET /api/v1/audit/entries`: a filtered page of entries, each with its leaf index and
/// its canonical bytes (base64, what the Merkle tree hashes).
pub async fn entries(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    q: Result<Query<EntriesQuery>, QueryRejection>,
    h: HeaderMap,
) -> Result<Json<Value>, Error> {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => {
            // Authorize (and record) first, then refuse the malformed query.
            authorize(&s, &c, &h, need("/api/v1/audit/entries"))?;
            return parsed::<EntriesQuery>(Err(e)).map(|_| Json(Value::Null));
        }
    };
    let mut n = need("/api/v1/audit/entries");
    if let Some(p) = &q.patient {
        // Recorded as a keyed reference: "the auditor looked at this patient's accesses".
        n = n.patient(p)?;
    }
    let _caller = authorize(&s, &c, &h, n)?;
    let operation = match &q.operation {
        Some(o) => Some(Operation::parse(o).ok_or_else(|| Error::bad_request("unknown operation; see broker/audit/FORMAT.md for the list"))?),
        None => None,
    };
    let outcome = match q.outcome.as_deref() {
        None => None,
        Some("allowed") => Some(OutcomeClass::Allowed),
        Some("denied") => Some(OutcomeClass::Denied),
        Some("error") => Some(OutcomeClass::Error),
        Some(_) => return Err(Error::bad_request("outcome must be allowed, denied or error")),
    };
    let resource = q.patient.as_deref().map(|p| s.trail.refs().patient_ref(p));
    let query = cleave_audit::Query {
        start: q.after.map_or(0, |a| a.saturating_add(1)),
        limit: q.limit.unwrap_or(0),
        account: q.account.clone(),
        operation,
        outcome,
        resource,
        ..Default::default()
    };
    let trail = s.trail.clone();
    blocking(move || {
        let log = trail.log();
        let page = log.list(&query).map_err(audit_error)?;
        let mut out = Vec::with_capacity(page.entries.len());
        for (index, entry) in page.entries {
            let bytes = entry.to_canonical_bytes().map_err(audit_error)?;
            let mut v: Value = serde_json::from_slice(&bytes).map_err(|_| Error::Audit("an entry is not JSON".into()))?;
            if let Value::Object(m) = &mut v {
                m.insert("index".into(), json!(index));
                m.insert("canonical".into(), json!(B64.encode(&bytes)));
            }
            out.push(v);
        }
        Ok(Json(json!({ "entries": out, "next": page.next, "tree_size": log.size() })))
    })
    .await
}

/// `GET /api/v1/audit/checkpoint`: a C2SP signed checkpoint of the log as it is now
/// (signed on demand if entries arrived since the last one).
pub async fn checkpoint(State(s): State<AppState>, Extension(c): Extension<ConnInfo>, h: HeaderMap) -> Result<Response, Error> {
    let _caller = authorize(&s, &c, &h, need("/api/v1/audit/checkpoint"))?;
    let trail = s.trail.clone();
    let cp = blocking(move || trail.log().checkpoint().map_err(audit_error)).await?;
    let mut resp = cp.note.into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    Ok(resp)
}

/// `GET /api/v1/audit/public-key`: the checkpoint signing key (pin it out of band).
pub async fn public_key(State(s): State<AppState>, Extension(c): Extension<ConnInfo>, h: HeaderMap) -> Result<Json<Value>, Error> {
    let _caller = authorize(&s, &c, &h, need("/api/v1/audit/public-key"))?;
    let v = s.trail.log().verifier();
    Ok(Json(json!({
        "name": v.name(),
        "public_key": B64.encode(v.public_key()),
        "verifier_key": v.to_vkey(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    index: u64,
    size: u64,
}

fn hashes(h: Vec<cleave_audit::Hash>) -> Json<Value> {
    Json(json!({ "hashes": h.iter().map(|x| B64.encode(x)).collect::<Vec<_>>() }))
}

fn out_of_range(_: cleave_audit::Error) -> Error {
    Error::bad_request("index or size is beyond the log (or index >= size); ask for a size at most tree_size")
}

/// `GET /api/v1/audit/proofs/inclusion?index=&size=`.
pub async fn inclusion(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    q: Result<Query<InclusionQuery>, QueryRejection>,
    h: HeaderMap,
) -> Result<Json<Value>, Error> {
    let _caller = authorize(&s, &c, &h, need("/api/v1/audit/proofs/inclusion"))?;
    let q = parsed(q)?;
    s.trail.log().inclusion_proof(q.index, q.size).map(hashes).map_err(out_of_range)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    from: u64,
    to: u64,
}

/// `GET /api/v1/audit/proofs/consistency?from=&to=`.
pub async fn consistency(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    q: Result<Query<ConsistencyQuery>, QueryRejection>,
    h: HeaderMap,
) -> Result<Json<Value>, Error> {
    let _caller = authorize(&s, &c, &h, need("/api/v1/audit/proofs/consistency"))?;
    let q = parsed(q)?;
    s.trail.log().consistency_proof(q.from, q.to).map(hashes).map_err(out_of_range)
}
