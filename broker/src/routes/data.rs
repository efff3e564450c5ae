//! The data-path routes not connected yet: research export (STOW-RS is in `stow.rs`,
//! WADO-RS in `wado.rs`).
//!
//! Authorization is complete here: each handler states its operation, store, patient and
//! study and must obtain a [`Caller`] (carrying the token verifier's proof) first. The
//! stores are connected in a later step; until then an authorized request is answered
//! 501 `not_wired`, and an unauthorized one 401/403, so the role table is enforced and
//! testable today. Bodies are not read before authorization passes.
use axum::extract::State;
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

/// `GET /api/v1/research/export`: a de-identified extract.
pub async fn research_export(State(s): State<AppState>, Extension(c): Extension<ConnInfo>, h: HeaderMap) -> Error {
    match authorize(&s, &c, &h, Need::new(Op::Export, Store::Clinical, "/api/v1/research/export")) {
        Ok(caller) => not_wired(caller, "research export"),
        Err(e) => e,
    }
}
