//! Getting a token (staff login, device token) and giving it up (revoking one's own grant).
use axum::extract::State;
use axum::http::HeaderMap;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::accounts::{LoginCheck, Subject};
use crate::audit::AuditEvent;
use crate::extract::ApiJson;
use crate::pki::CertFingerprint;
use crate::roles::Role;
use crate::server::{ConnInfo, ListenerKind};
use crate::state::AppState;
use crate::{tokens_adapter, Error};

/// `POST /api/v1/login` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    username: String,
    password: String,
    totp: String,
}

impl Drop for LoginRequest {
    fn drop(&mut self) {
        self.password.zeroize();
        self.totp.zeroize();
    }
}

/// A freshly minted token.
#[derive(Serialize)]
pub struct TokenResponse {
    pub token: String,
    /// RFC 3339 UTC.
    pub expires: String,
    pub role: &'static str,
    /// For roles that may share: the base a client narrows offline into shares (see
    /// `tokens_adapter::mint_share_base`). Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share_base: Option<String>,
}

fn mtls_cert(conn: &ConnInfo) -> Result<CertFingerprint, Error> {
    match (&conn.listener, &conn.client_cert) {
        (ListenerKind::Mtls, Some(c)) => Ok(c.clone()),
        _ => Err(Error::forbidden(
            "tokens are issued only on the mutual-TLS listener, to a client presenting its certificate",
        )),
    }
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Log in with username, password and TOTP code; get a token bound to the client
/// certificate used, valid until the end of the shift, allowing what the account's role may.
pub async fn login(
    State(state): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<TokenResponse>, Error> {
    let cert = mtls_cert(&conn)?;
    let ip = conn.peer.ip();
    let mut event = AuditEvent::new("login", "deny");
    // A mistyped username may be a password typed into the wrong field: only names of
    // existing accounts reach the audit log.
    event.actor = Some(if state.accounts.staff_exists(&req.username)? { req.username.clone() } else { "unknown-account".to_owned() });
    event.cert_sha256 = Some(cert.hex().to_owned());
    if let Err(secs) = state.limiter.check(&req.username, ip) {
        event.reason = Some("rate limited".into());
        state.audit.record(&event)?;
        return Err(Error::too_many_requests(secs));
    }
    // Argon2 takes tens of milliseconds of CPU: keep it off the async workers.
    let st = state.clone();
    let check = tokio::task::spawn_blocking(move || st.accounts.check_login(&req.username, &req.password, &req.totp).map(|c| (c, req)))
        .await
        .map_err(|_| Error::Database("the login check was interrupted".into()))??;
    let (check, req) = check;
    let role = match check {
        LoginCheck::Ok { role } => role,
        LoginCheck::Wrong => {
            state.limiter.failed(&req.username, ip);
            event.reason = Some("wrong credentials".into());
            state.audit.record(&event)?;
            return Err(Error::unauthorized("wrong username, password or one-time code"));
        }
        LoginCheck::Disabled => {
            event.reason = Some("account disabled".into());
            state.audit.record(&event)?;
            return Err(Error::forbidden("this account is disabled; ask the IT administrator"));
        }
    };
    state.limiter.succeeded(&req.username);
    let expires = time::OffsetDateTime::now_utc() + state.config.shift();
    let grant = state.accounts.create_grant(&Subject::Staff(req.username.clone()), expires.unix_timestamp())?;
    let token = tokens_adapter::mint(&grant.root_key, &grant.grant_id, role, &cert, expires)?;
    let share_base = if role.ops().contains(&cleave_tokens::Op::Share) {
        Some(tokens_adapter::mint_share_base(&grant.root_key, &grant.grant_id, role, expires)?)
    } else {
        None
    };
    event.outcome = "allow";
    event.grant_id = Some(grant.grant_id);
    state.audit.record(&event)?;
    Ok(Json(TokenResponse { token, expires: rfc3339(expires), role: role.name(), share_base }))
}

/// An enrolled device (identified by its client certificate) gets a long-lived,
/// append-only token bound to that certificate.
pub async fn device_token(State(state): State<AppState>, Extension(conn): Extension<ConnInfo>) -> Result<Json<TokenResponse>, Error> {
    let cert = mtls_cert(&conn)?;
    let mut event = AuditEvent::new("device-token", "deny");
    event.cert_sha256 = Some(cert.hex().to_owned());
    let Some(device) = state.accounts.active_device(cert.hex())? else {
        event.reason = Some("certificate not enrolled or revoked".into());
        state.audit.record(&event)?;
        return Err(Error::forbidden("this client certificate is not an enrolled device, or the device was revoked"));
    };
    event.actor = Some(device.label.clone());
    let expires = time::OffsetDateTime::now_utc() + state.config.device_token_lifetime();
    let grant = state.accounts.create_grant(&Subject::Device(device.fingerprint.clone()), expires.unix_timestamp())?;
    let token = tokens_adapter::mint(&grant.root_key, &grant.grant_id, Role::Modality, &cert, expires)?;
    event.outcome = "allow";
    event.grant_id = Some(grant.grant_id);
    state.audit.record(&event)?;
    Ok(Json(TokenResponse { token, expires: rfc3339(expires), role: Role::Modality.name(), share_base: None }))
}

/// Revoke the grant of the token presented (log out; or a doctor withdrawing every share
/// at once). Holds from the next request. A shared token cannot revoke its sharer's grant.
pub async fn revoke_current_grant(
    State(state): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, Error> {
    let caller = crate::authz::authorize_own_grant(&state, &conn, &headers)?;
    if caller.share_id.is_some() {
        return Err(Error::forbidden("a shared token cannot revoke the grant it was shared from"));
    }
    state.accounts.revoke_grant(&caller.grant_id)?;
    let mut event = AuditEvent::new("grant-revoke", "allow");
    event.grant_id = Some(caller.grant_id);
    state.audit.record(&event)?;
    Ok(Json(serde_json::json!({ "revoked": true })))
}
