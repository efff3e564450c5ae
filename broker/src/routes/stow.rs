//! STOW-RS (PS3.18 §10.5): `POST /dicomweb/studies` with a `multipart/related;
//! type="application/dicom"` body. Each part streams through the ingest pipeline as it
//! arrives, never buffered whole; the answer lists what was stored and what failed, with
//! the standard's failure reasons, and every instance gets its own audit entry.
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::authz::{authorize, Need};
use crate::ingest::{IngestError, Ingested};
use crate::server::ConnInfo;
use crate::state::AppState;
use crate::Error;
use cleave_tokens::{Op, Store};

/// PS3.18 Table 10.5.3-1 / PS3.4 C-STORE failure reasons.
const OUT_OF_RESOURCES: u16 = 0xA700;
const CANNOT_UNDERSTAND: u16 = 0xC000;

/// The boundary of a `multipart/related` body whose root type, if named, is DICOM.
fn boundary(headers: &HeaderMap) -> Result<String, Error> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Error::UnsupportedMediaType("send multipart/related; type=\"application/dicom\"".into()))?;
    let mime: mime::Mime = ct
        .parse()
        .map_err(|_| Error::UnsupportedMediaType("the Content-Type header is not a media type".into()))?;
    if mime.type_() != mime::MULTIPART || mime.subtype().as_str() != "related" {
        return Err(Error::UnsupportedMediaType("STOW-RS takes multipart/related; type=\"application/dicom\"".into()));
    }
    if let Some(t) = mime.get_param("type") {
        if !t.as_str().eq_ignore_ascii_case("application/dicom") {
            return Err(Error::UnsupportedMediaType(
                "only type=\"application/dicom\" parts are accepted (no DICOM JSON or XML with bulk data)".into(),
            ));
        }
    }
    mime.get_param(mime::BOUNDARY)
        .map(|b| b.as_str().to_owned())
        .filter(|b| !b.is_empty() && b.len() <= 70)
        .ok_or_else(|| Error::bad_request("the multipart body has no usable boundary parameter"))
}

/// Feeds one part's chunks to the blocking pipeline.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    current: Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

fn ui(v: &str) -> Value {
    json!({"vr": "UI", "Value": [v]})
}

/// `POST /dicomweb/studies`: STOW-RS. Append only: a modality's token allows this and
/// nothing that reads.
pub async fn stow(State(s): State<AppState>, Extension(c): Extension<ConnInfo>, h: HeaderMap, body: Body) -> Result<Response, Error> {
    let caller = authorize(&s, &c, &h, Need::new(Op::Append, Store::Clinical, "/dicomweb/studies"))?;
    let boundary = boundary(&h)?;
    let mut parts = multer::Multipart::new(body.into_data_stream(), boundary);
    let mut stored: Vec<Value> = Vec::new();
    let mut failed: Vec<Value> = Vec::new();
    // A body too slow to be worth waiting for (slowbody.rs): 408 if nothing was stored yet.
    let mut too_slow = false;
    loop {
        let mut field = match parts.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if stored.is_empty() && crate::slowbody::is_too_slow(&e) => return Err(Error::RequestTimeout),
            Err(_) if stored.is_empty() && failed.is_empty() => {
                return Err(Error::bad_request("the body is not a well-formed multipart/related message"))
            }
            Err(_) => {
                failed.push(json!({"00081197": {"vr": "US", "Value": [CANNOT_UNDERSTAND]}}));
                break;
            }
        };
        let is_dicom = field
            .content_type()
            .map(|m| m.essence_str().eq_ignore_ascii_case("application/dicom"))
            .unwrap_or(false);
        let result: Result<Ingested, IngestError> = if !is_dicom {
            Err(IngestError::BadObject(cleave_deid::Error::NotPart10))
        } else {
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            let pipeline = s.pipeline.clone();
            let task = tokio::task::spawn_blocking(move || {
                let mut reader = ChannelReader { rx, current: Bytes::new() };
                pipeline.ingest(&mut reader)
            });
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => {
                        if tx.send(Ok(chunk)).await.is_err() {
                            break; // the pipeline stopped reading: it has its answer
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        too_slow = crate::slowbody::is_too_slow(&e);
                        let _ = tx
                            .send(Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the part was cut short")))
                            .await;
                        break;
                    }
                }
            }
            drop(tx);
            task.await.unwrap_or_else(|_| Err(IngestError::Storage("the ingest task stopped".into())))
        };
        if too_slow && stored.is_empty() && result.is_err() {
            return Err(Error::RequestTimeout);
        }
        match result {
            Ok(done) => {
                s.metrics.ingested("stow", "stored");
                let mut e = caller.event("ingest", "allow");
                e.patients = vec![done.pseudonym.clone()];
                e.study = Some(done.study_uid.clone());
                let began = std::time::Instant::now();
                s.audit.record(&e)?;
                s.metrics.ingest_phases("stow", &done.timings, began.elapsed());
                // PS3.18: each referenced instance's RetrieveURL is the instance's own URL.
                let url = format!("/dicomweb/studies/{}/series/{}/instances/{}", done.study_uid, done.series_uid, done.sop_instance_uid);
                stored.push(json!({
                    "00081150": ui(&done.sop_class_uid),
                    "00081155": ui(&done.sop_instance_uid),
                    "00081190": {"vr": "UR", "Value": [url]},
                }));
                if let Some(flag) = done.flagged {
                    tracing::info!(flag, "arrival flagged for patient-matching review");
                }
            }
            Err(err) => {
                let (reason, kind) = match &err {
                    IngestError::BadObject(_) => (CANNOT_UNDERSTAND, "bad-object"),
                    IngestError::Storage(_) => (OUT_OF_RESOURCES, "storage-failure"),
                };
                s.metrics.ingested("stow", kind);
                // The message names what was wrong, never a value from the object.
                tracing::warn!(error = %err, "STOW-RS part refused");
                let mut e = caller.event("ingest", "error");
                e.reason = Some(kind.into());
                s.audit.record(&e)?;
                failed.push(json!({
                    "00081197": {"vr": "US", "Value": [reason]},
                    "00000902": {"vr": "LO", "Value": [err.to_string()]},
                }));
            }
        }
    }
    if stored.is_empty() && failed.is_empty() {
        return Err(Error::bad_request("the multipart body holds no parts"));
    }
    let status = match (stored.is_empty(), failed.is_empty()) {
        (false, true) => StatusCode::OK,
        (false, false) => StatusCode::ACCEPTED,
        _ => StatusCode::CONFLICT,
    };
    let mut answer = serde_json::Map::new();
    if !stored.is_empty() {
        answer.insert("00081199".into(), json!({"vr": "SQ", "Value": stored}));
    }
    if !failed.is_empty() {
        answer.insert("00081198".into(), json!({"vr": "SQ", "Value": failed}));
    }
    Ok((status, [(header::CONTENT_TYPE, "application/dicom+json")], Value::Object(answer).to_string()).into_response())
}
