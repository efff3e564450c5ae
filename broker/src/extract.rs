//! Request extractors that answer in the broker's JSON error format.
//!
//! axum's own rejections are plain text; wrapping them keeps one error shape for every
//! answer, and keeps the rejection's detail (which may quote the body) out of the reply.
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::Error;

/// A JSON body. Too large → 413; anything else wrong → 400 without echoing the body.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::BytesRejection(b)) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(Error::payload_too_large())
            }
            Err(JsonRejection::BytesRejection(b)) if crate::slowbody::is_too_slow(&b) => Err(Error::RequestTimeout),
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(Error::bad_request("send the body as JSON with `Content-Type: application/json`"))
            }
            Err(JsonRejection::JsonSyntaxError(_)) => Err(Error::bad_request("the body is not valid JSON")),
            Err(JsonRejection::JsonDataError(_)) => {
                Err(Error::bad_request("the JSON body lacks a required field or has one of the wrong type; see /api/v1/openapi.json"))
            }
            Err(_) => Err(Error::bad_request("the body could not be read")),
        }
    }
}
