//! IT administration over HTTPS: accounts and devices. Key rotation stays on the command
//! line, next to the keyring file.
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use serde::Deserialize;

use crate::accounts::{DeviceInfo, StaffInfo};
use crate::audit::AuditEvent;
use crate::authz::{authorize, Caller, Need};
use crate::extract::ApiJson;
use crate::roles::Role;
use cleave_tokens::{Op, Store};
use crate::server::ConnInfo;
use crate::state::AppState;
use crate::Error;

fn admin(state: &AppState, conn: &ConnInfo, headers: &HeaderMap, op: Op, route: &'static str) -> Result<Caller, Error> {
    let caller = authorize(state, conn, headers, Need::new(op, Store::Audit, route))?;
    if caller.share_id.is_some() {
        return Err(Error::forbidden("administration cannot be shared"));
    }
    Ok(caller)
}

fn record(state: &AppState, action: &'static str, caller: &Caller) -> Result<(), Error> {
    let mut e = AuditEvent::new(action, "allow");
    e.grant_id = Some(caller.grant_id.clone());
    state.audit.record(&e)
}

/// `GET /api/v1/admin/users`.
pub async fn list_users(
    State(state): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Result<Json<Vec<StaffInfo>>, Error> {
    admin(&state, &conn, &headers, Op::Admin, "/api/v1/admin/users")?;
    Ok(Json(state.accounts.list_staff()?))
}

/// `POST /api/v1/admin/users` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddUser {
    username: String,
    role: String,
    department: String,
}

/// `POST /api/v1/admin/users`: create an account; its password and TOTP seed are in the
/// answer, once, for the administrator to hand over.
pub async fn add_user(
    State(state): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<AddUser>,
) -> Result<Json<serde_json::Value>, Error> {
    let caller = admin(&state, &conn, &headers, Op::Admin, "/api/v1/admin/users")?;
    let role = Role::parse(&req.role).ok_or_else(|| {
        Error::bad_request("unknown role; use modality, nurse, doctor, registration, it-admin, auditor or researcher")
    })?;
    let st = state.clone();
    let creds = tokio::task::spawn_blocking(move || st.accounts.add_staff(&req.username, role, &req.department))
        .await
        .map_err(|_| Error::Database("account creation was interrupted".into()))??;
    record(&state, "user-add", &caller)?;
    Ok(Json(serde_json::json!({ "password": creds.password.as_str(), "totp_secret": creds.totp_base32.as_str() })))
}

/// `POST /api/v1/admin/users/{username}/disable`: also revokes the account's grants.
pub async fn disable_user(
    State(state): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Path(username): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, Error> {
    let caller = admin(&state, &conn, &headers, Op::Admin, "/api/v1/admin/users/{username}/disable")?;
    state.accounts.disable_staff(&username)?;
    record(&state, "user-disable", &caller)?;
    Ok(Json(serde_json::json!({ "disabled": true })))
}

/// `GET /api/v1/admin/devices`.
pub async fn list_devices(
    State(state): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Result<Json<Vec<DeviceInfo>>, Error> {
    admin(&state, &conn, &headers, Op::Admin, "/api/v1/admin/devices")?;
    Ok(Json(state.accounts.list_devices()?))
}

/// `POST /api/v1/admin/devices/{fingerprint}/revoke`: also revokes the device's grants.
pub async fn revoke_device(
    State(state): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Path(fingerprint): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, Error> {
    let caller = admin(&state, &conn, &headers, Op::Admin, "/api/v1/admin/devices/{fingerprint}/revoke")?;
    state.accounts.revoke_device(&fingerprint)?;
    record(&state, "device-revoke", &caller)?;
    Ok(Json(serde_json::json!({ "revoked": true })))
}

/// `GET /api/v1/metrics`: the broker's operational metrics (OpenMetrics text, for
/// Prometheus), to the IT administrator. No PHI: see `metrics.rs`.
pub async fn metrics(State(state): State<AppState>, Extension(conn): Extension<ConnInfo>, headers: HeaderMap) -> Result<axum::response::Response, Error> {
    admin(&state, &conn, &headers, Op::Admin, "/api/v1/metrics")?;
    let text = state
        .metrics
        .encode(state.trail.log().size(), state.trail.syslog_next())
        .map_err(|_| Error::Store("the metrics could not be encoded".into()))?;
    use axum::response::IntoResponse;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
}
