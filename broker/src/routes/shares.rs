//! The server side of the share button: a doctor lists the shares of their token that have
//! been used, and revokes one. Shares are made offline by the doctor's client (an
//! attenuation of the doctor's own token with a `share` caveat); the broker learns of a
//! share the first time it is used.
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};

use crate::accounts::ShareInfo;
use crate::audit::AuditEvent;
use crate::authz::{authorize, Need};
use cleave_tokens::{Op, Store};
use crate::server::ConnInfo;
use crate::state::AppState;
use crate::Error;

/// `GET /api/v1/shares`: the shares made from the caller's grant (and only those).
pub async fn list(
    State(state): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Result<Json<Vec<ShareInfo>>, Error> {
    let caller = authorize(&state, &conn, &headers, Need::new(Op::Share, Store::Clinical, "/api/v1/shares"))?;
    if caller.share_id.is_some() {
        return Err(Error::forbidden("a shared token cannot list shares"));
    }
    Ok(Json(state.accounts.list_shares(&caller.grant_id)?))
}

/// `POST /api/v1/shares/{id}/revoke`: from the next request on, tokens carrying this
/// share id are refused.
pub async fn revoke(
    State(state): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, Error> {
    let caller =
        authorize(&state, &conn, &headers, Need::new(Op::Share, Store::Clinical, "/api/v1/shares/{id}/revoke"))?;
    if caller.share_id.is_some() {
        return Err(Error::forbidden("a shared token cannot revoke shares"));
    }
    if !crate::accounts::valid_share_id(&id) {
        return Err(Error::bad_request("a share id is 1 to 64 letters, digits, '-' or '_'"));
    }
    state.accounts.revoke_share(&caller.grant_id, &id)?;
    let mut event = AuditEvent::new("share-revoke", "allow");
    event.grant_id = Some(caller.grant_id);
    event.share_id = Some(id);
    state.audit.record(&event)?;
    Ok(Json(serde_json::json!({ "revoked": true })))
}
