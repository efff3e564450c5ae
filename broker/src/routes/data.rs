//! The data-path routes not connected yet: WADO-RS.
//!
//! Authorization is complete here: each handler states its operation, store, patient and
//! study and must obtain a [`Caller`] (carrying the token verifier's proof) first. The
//! stores are connected in a later step; until then an authorized request is answered
//! 501 `not_wired`, and an unauthorized one 401/403, so the role table is enforced and
//! testable today. Bodies are not read before authorization passes.
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Extension;

use crate::authz::{authorize, Caller, Need};
use cleave_tokens::{Op, Store};
use crate::server::ConnInfo;
use crate::state::AppState;
use crate::Error;

fn not_wired(_caller: Caller, what: &'static str) -> Error {
    Error::NotWired(what)
}

/// `GET /dicomweb/studies/{study}`: WADO-RS retrieve of one study.
pub async fn wado_study(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    Path(study): Path<String>,
    h: HeaderMap,
) -> Error {
    let need = match Need::new(Op::Read, Store::Clinical, "/dicomweb/studies/{study}").study(&study) {
        Ok(n) => n,
        Err(e) => return e,
    };
    match authorize(&s, &c, &h, need) {
        Ok(caller) => not_wired(caller, "WADO-RS"),
        Err(e) => e,
    }
}
