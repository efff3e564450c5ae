//! `GET /api/v1/openapi.json`: the REST API's description.
use axum::http::header;
use axum::response::IntoResponse;

/// Serve the hand-maintained OpenAPI 3.1 document.
pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], super::OPENAPI_JSON)
}
