//! Typed calls for each endpoint of the broker's REST API (broker/openapi.json and the
//! wave-2 contract). Data the client only displays is kept as JSON values, so a field the
//! server adds later is shown rather than refused.
use bytes::Bytes;
use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::http::{encode, Client};
use crate::profile::Session;

/// A share as the broker lists it (seen in use at least once).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShareInfo {
    pub share_id: String,
    pub first_seen: i64,
    pub last_seen: i64,
    pub revoked: bool,
}

/// Search terms for the identity vault; empty fields are left out.
#[derive(Clone, Debug, Default)]
pub struct IdentityQuery {
    pub name: Option<String>,
    pub family: Option<String>,
    pub given: Option<String>,
    pub birth_date: Option<String>,
    pub patient_id: Option<String>,
    pub issuer: Option<String>,
}

impl Client {
    /// `POST /api/v1/login`.
    pub fn login(&self, username: &str, password: &str, totp: &str) -> Result<Session> {
        let body = Zeroizing::new(serde_json::to_vec(&json!({"username": username, "password": password, "totp": totp})).map_err(|e| Error::Usage(e.to_string()))?);
        self.call(Method::POST, "/api/v1/login", Some("application/json"), Bytes::copy_from_slice(&body), Some("application/json"))?
            .json()
    }

    /// `POST /api/v1/device/token`.
    pub fn device_token(&self) -> Result<Session> {
        self.call(Method::POST, "/api/v1/device/token", None, Bytes::new(), Some("application/json"))?.json()
    }

    /// `GET /api/v1/shares`.
    pub fn shares(&self) -> Result<Vec<ShareInfo>> {
        self.get_json("/api/v1/shares")
    }

    /// `POST /api/v1/shares/{id}/revoke`.
    pub fn revoke_share(&self, id: &str) -> Result<()> {
        let _: Value = self.post_json(&format!("/api/v1/shares/{}/revoke", encode(id)), &json!({}))?;
        Ok(())
    }

    /// `POST /api/v1/grants/current/revoke`: the token presented stops working, with every
    /// share made from it.
    pub fn revoke_current_grant(&self) -> Result<()> {
        let _: Value = self.post_json("/api/v1/grants/current/revoke", &json!({}))?;
        Ok(())
    }

    /// `GET /api/v1/admin/users`.
    pub fn users(&self) -> Result<Value> {
        self.get_json("/api/v1/admin/users")
    }

    /// `POST /api/v1/admin/users`: returns the one-time password and TOTP seed.
    pub fn add_user(&self, username: &str, role: &str, department: &str) -> Result<Value> {
        self.post_json("/api/v1/admin/users", &json!({"username": username, "role": role, "department": department}))
    }

    /// `POST /api/v1/admin/users/{username}/disable`.
    pub fn disable_user(&self, username: &str) -> Result<()> {
        let _: Value = self.post_json(&format!("/api/v1/admin/users/{}/disable", encode(username)), &json!({}))?;
        Ok(())
    }

    /// `GET /api/v1/admin/devices`.
    pub fn devices(&self) -> Result<Value> {
        self.get_json("/api/v1/admin/devices")
    }

    /// `POST /api/v1/admin/devices/{fingerprint}/revoke`.
    pub fn revoke_device(&self, fingerprint: &str) -> Result<()> {
        let _: Value = self.post_json(&format!("/api/v1/admin/devices/{}/revoke", encode(fingerprint)), &json!({}))?;
        Ok(())
    }

    /// `GET /api/v1/admin/review-queue`.
    pub fn review_queue(&self) -> Result<Value> {
        self.get_json("/api/v1/admin/review-queue")
    }

    /// `POST /api/v1/admin/review-queue/{item}/resolve`.
    pub fn resolve_review(&self, item: &str, action: &str, keep: Option<&str>) -> Result<Value> {
        let mut body = json!({"action": action});
        if let Some(k) = keep {
            body["keep"] = json!(k);
        }
        self.post_json(&format!("/api/v1/admin/review-queue/{}/resolve", encode(item)), &body)
    }

    /// `GET /api/v1/identity/patients?...` (first of the two lookup requests).
    pub fn search_identities(&self, q: &IdentityQuery) -> Result<Value> {
        let mut parts = Vec::new();
        for (k, v) in [
            ("name", &q.name),
            ("family", &q.family),
            ("given", &q.given),
            ("birth_date", &q.birth_date),
            ("patient_id", &q.patient_id),
            ("issuer", &q.issuer),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={}", encode(v)));
            }
        }
        if parts.is_empty() {
            return Err(Error::Usage("give at least one of --name, --family, --given, --birth-date, --patient-id".into()));
        }
        self.get_json(&format!("/api/v1/identity/patients?{}", parts.join("&")))
    }

    /// `POST /api/v1/identity/patients`: register; answers `{"identity_id","pseudonym"}`.
    pub fn register_identity(&self, fields: &Value) -> Result<Value> {
        self.post_json("/api/v1/identity/patients", fields)
    }

    /// `GET /api/v1/identity/patients/{identity_id}`.
    pub fn identity(&self, identity_id: &str) -> Result<Value> {
        self.get_json(&format!("/api/v1/identity/patients/{}", encode(identity_id)))
    }

    /// `GET /api/v1/clinical/patients/{pseudonym}` (the second lookup request).
    pub fn clinical_summary(&self, pseudonym: &str) -> Result<Value> {
        self.get_json(&format!("/api/v1/clinical/patients/{}", encode(pseudonym)))
    }

    /// `GET /api/v1/clinical/studies/{uid}`.
    pub fn study(&self, uid: &str) -> Result<Value> {
        self.get_json(&format!("/api/v1/clinical/studies/{}", encode(uid)))
    }

    /// `GET /api/v1/clinical/patients/{pseudonym}/notes`.
    pub fn notes(&self, pseudonym: &str) -> Result<Value> {
        self.get_json(&format!("/api/v1/clinical/patients/{}/notes", encode(pseudonym)))
    }

    /// `POST /api/v1/clinical/patients/{pseudonym}/notes`.
    pub fn add_note(&self, pseudonym: &str, text: &str, study: Option<&str>) -> Result<Value> {
        let mut body = json!({"text": text});
        if let Some(s) = study {
            body["study_uid"] = json!(s);
        }
        self.post_json(&format!("/api/v1/clinical/patients/{}/notes", encode(pseudonym)), &body)
    }

    /// `GET /api/v1/clinical/patients/{pseudonym}/observations`.
    pub fn observations(&self, pseudonym: &str) -> Result<Value> {
        self.get_json(&format!("/api/v1/clinical/patients/{}/observations", encode(pseudonym)))
    }

    /// `POST /api/v1/clinical/patients/{pseudonym}/observations`.
    pub fn set_observation(&self, pseudonym: &str, code: &str, value: Value, unit: Option<&str>) -> Result<Value> {
        let mut body = json!({"code": code, "value": value});
        if let Some(u) = unit {
            body["unit"] = json!(u);
        }
        self.post_json(&format!("/api/v1/clinical/patients/{}/observations", encode(pseudonym)), &body)
    }

    /// `GET /api/v1/audit/entries?...`; `filters` are (name, value) pairs of the contract.
    pub fn audit_entries(&self, filters: &[(&str, String)]) -> Result<Value> {
        let q: Vec<String> = filters.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
        let path = if q.is_empty() { "/api/v1/audit/entries".to_owned() } else { format!("/api/v1/audit/entries?{}", q.join("&")) };
        self.get_json(&path)
    }

    /// `GET /api/v1/audit/checkpoint` (C2SP signed note, text).
    pub fn audit_checkpoint(&self) -> Result<String> {
        let a = self.call(Method::GET, "/api/v1/audit/checkpoint", None, Bytes::new(), Some("text/plain"))?;
        String::from_utf8(a.body.to_vec()).map_err(|_| Error::Protocol("the checkpoint is not UTF-8 text".into()))
    }

    /// `GET /api/v1/audit/public-key`.
    pub fn audit_public_key(&self) -> Result<Value> {
        self.get_json("/api/v1/audit/public-key")
    }

    /// `GET /api/v1/audit/proofs/consistency?from=&to=` decoded.
    pub fn audit_consistency(&self, from: u64, to: u64) -> Result<Vec<[u8; 32]>> {
        #[derive(Deserialize)]
        struct P {
            hashes: Vec<String>,
        }
        let p: P = self.get_json(&format!("/api/v1/audit/proofs/consistency?from={from}&to={to}"))?;
        decode_hashes(&p.hashes)
    }
}

pub(crate) fn decode_hashes(h: &[String]) -> Result<Vec<[u8; 32]>> {
    use base64::Engine;
    h.iter()
        .map(|s| {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                .ok_or_else(|| Error::Protocol("a proof hash is not 32 bytes of base64".into()))
        })
        .collect()
}
