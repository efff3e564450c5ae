//! Every route of the broker, in one place, grouped by who calls them.
//!
//! Handlers live one group per file. Each authenticated handler starts by stating what it
//! needs ([`crate::authz::Need`]: operation, store, patient, study) and calling
//! [`crate::authz::authorize`]; nothing else decides access.
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::state::AppState;
use crate::Error;

mod admin;
mod audit;
mod clinical;
mod export;
mod identity;
mod openapi;
mod session;
mod shares;
mod stow;
mod streaming;
mod wado;

/// The hand-maintained OpenAPI description, served at `/api/v1/openapi.json`; a test checks
/// that every path in it is routed.
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

/// Counts a routed request by its route template, method and status (`metrics.rs`).
async fn count_http(
    axum::extract::State(s): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let method = crate::metrics::method_label(req.method());
    let resp = next.run(req).await;
    s.metrics.http.get_or_create(&crate::metrics::HttpLabels { route, method, status: resp.status().as_u16() }).inc();
    resp
}

/// Build the router for one broker.
pub(crate) fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    let rate = crate::slowbody::MinRate {
        grace: std::time::Duration::from_secs(state.config.body_grace_secs),
        bytes_per_sec: state.config.min_body_bytes_per_sec,
    };
    Router::new()
        // Anyone who completed the TLS handshake.
        .route("/api/v1/openapi.json", get(openapi::openapi))
        // Staff and devices getting a token (mutual-TLS listener only).
        .route("/api/v1/login", post(session::login))
        .route("/api/v1/device/token", post(session::device_token))
        .route("/api/v1/grants/current/revoke", post(session::revoke_current_grant))
        // Doctors managing what they shared.
        .route("/api/v1/shares", get(shares::list))
        .route("/api/v1/shares/{id}/revoke", post(shares::revoke))
        // IT administrators.
        .route("/api/v1/admin/users", get(admin::list_users).post(admin::add_user))
        .route("/api/v1/admin/users/{username}/disable", post(admin::disable_user))
        .route("/api/v1/admin/devices", get(admin::list_devices))
        .route("/api/v1/admin/devices/{fingerprint}/revoke", post(admin::revoke_device))
        // The data path: authorization is in place; the stores are wired in a later step.
        .route("/api/v1/admin/review-queue", get(identity::review_queue))
        .route("/api/v1/admin/review-queue/{item_id}/resolve", post(identity::review_resolve))
        // Identity vault.
        .route("/api/v1/identity/patients", get(identity::search).post(identity::create))
        .route("/api/v1/identity/patients/{patient}", get(identity::read).patch(identity::update))
        // Clinical store (the consultant listener serves the reads for share tokens).
        .route("/api/v1/clinical/patients/{patient}", get(clinical::patient))
        .route("/api/v1/clinical/patients/{patient}/notes", get(clinical::notes_read).post(clinical::notes_write))
        .route(
            "/api/v1/clinical/patients/{patient}/observations",
            get(clinical::observations_read).post(clinical::observations_write),
        )
        .route("/api/v1/clinical/studies/{study}", get(clinical::study))
        // Auditors.
        .route("/api/v1/audit/entries", get(audit::entries))
        .route("/api/v1/audit/checkpoint", get(audit::checkpoint))
        .route("/api/v1/audit/public-key", get(audit::public_key))
        .route("/api/v1/audit/proofs/inclusion", get(audit::inclusion))
        .route("/api/v1/audit/proofs/consistency", get(audit::consistency))
        .route("/api/v1/research/export", get(export::research_export))
        .route("/dicomweb/studies", get(clinical::qido_studies).post(stow::stow))
        .route("/dicomweb/studies/{study}", get(wado::retrieve_study))
        .route("/dicomweb/series", get(wado::qido_all_series))
        .route("/dicomweb/instances", get(wado::qido_all_instances))
        // DICOMweb reads (QIDO-RS below a study, WADO-RS): clinical read, identity restored
        // when the token may also read it; also served on the consultant listener.
        .route("/dicomweb/studies/{study}/metadata", get(wado::study_metadata))
        .route("/dicomweb/studies/{study}/series", get(wado::qido_series))
        .route("/dicomweb/studies/{study}/instances", get(wado::qido_study_instances))
        .route("/dicomweb/studies/{study}/series/{series}", get(wado::retrieve_series))
        .route("/dicomweb/studies/{study}/series/{series}/metadata", get(wado::series_metadata))
        .route("/dicomweb/studies/{study}/series/{series}/instances", get(wado::qido_instances))
        .route("/dicomweb/studies/{study}/series/{series}/instances/{instance}", get(wado::retrieve_instance))
        .route("/dicomweb/studies/{study}/series/{series}/instances/{instance}/metadata", get(wado::instance_metadata))
        .route("/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}", get(wado::frames))
        .route("/dicomweb/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag}", get(wado::bulkdata))
        .route("/dicomweb/studies/{study}/series/{series}/instances/{instance}/rendered", get(wado::rendered_instance))
        .route("/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered", get(wado::rendered_frame))
        .route("/api/v1/metrics", get(admin::metrics))
        // After routing, so the route template is known; unrouted requests are not counted.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), count_http))
        .fallback(|| async { Error::not_found("route") })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(move |req, next| crate::slowbody::guard(rate, req, next)))
        .with_state(state)
}
