//! DICOMweb (PS3.18) from the client side: STOW-RS of one instance per request, so every
//! file gets its own outcome and a push can resume file by file; WADO-RS retrieval of a
//! study as `multipart/related; type="application/dicom"`; the multipart framing both use.
use bytes::Bytes;
use hyper::Method;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::http::{encode, error_from, Client};

/// What the server did with one stored instance.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum StowOutcome {
    /// Newly stored.
    Stored,
    /// The server already held this instance (PS3.18 warning, or 409 for a duplicate).
    AlreadyStored,
    /// Refused; `reason` is the DICOM failure reason code (hex) or the server's message.
    Rejected { reason: String },
}

const BOUNDARY: &str = "cleave-stow-5f1d3c7a9b2e4d60";

/// Frame `parts` as a multipart/related body with [`BOUNDARY`].
pub fn multipart_body(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 96).sum());
    for p in parts {
        out.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

/// Split a multipart body into its parts' payloads, given the Content-Type header value.
pub fn multipart_parts(content_type: &str, body: &[u8]) -> Result<Vec<Bytes>> {
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()
        .map(|b| b.trim_matches('"').to_owned())
        .ok_or_else(|| Error::Protocol("a multipart answer without a boundary".into()))?;
    let delim = format!("--{boundary}");
    let d = delim.as_bytes();
    let mut parts = Vec::new();
    let mut pos = find(body, d, 0).ok_or_else(|| Error::Protocol("the multipart answer has no parts".into()))?;
    loop {
        let after = pos + d.len();
        if body.get(after..after + 2) == Some(b"--") {
            break;
        }
        let head_end = find(body, b"\r\n\r\n", after).ok_or_else(|| Error::Protocol("a multipart part without headers".into()))? + 4;
        let next = find(body, d, head_end).ok_or_else(|| Error::Protocol("the multipart answer is truncated".into()))?;
        // The CRLF before the delimiter belongs to the delimiter (RFC 2046).
        let end = if next >= 2 && body.get(next - 2..next) == Some(b"\r\n") { next - 2 } else { next };
        parts.push(Bytes::copy_from_slice(body.get(head_end..end).unwrap_or_default()));
        pos = next;
    }
    Ok(parts)
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|i| i + from)
}

impl Client {
    /// STOW-RS one instance.
    pub fn stow_one(&self, dicom: Bytes) -> Result<StowOutcome> {
        let body = Bytes::from(multipart_body(&[&dicom]));
        let ct = format!("multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}");
        let a = self.raw(Method::POST, "/dicomweb/studies", Some(&ct), body, Some("application/dicom+json"))?;
        let json: Option<Value> = serde_json::from_slice(&a.body).ok();
        match a.status {
            200 | 202 | 409 => Ok(stow_outcome(a.status, json.as_ref())),
            _ => Err(error_from(&a)),
        }
    }

    /// WADO-RS: every instance of a study, as DICOM PS3.10 bytes.
    pub fn retrieve_study(&self, study: &str) -> Result<Vec<Bytes>> {
        let a = self.call(
            Method::GET,
            &format!("/dicomweb/studies/{}", encode(study)),
            None,
            Bytes::new(),
            Some("multipart/related; type=\"application/dicom\""),
        )?;
        let ct = a.content_type.clone().unwrap_or_default();
        multipart_parts(&ct, &a.body)
    }

    /// QIDO-RS study search by pseudonym.
    pub fn qido_studies(&self, pseudonym: &str) -> Result<Value> {
        let a = self.call(
            Method::GET,
            &format!("/dicomweb/studies?PatientID={}", encode(pseudonym)),
            None,
            Bytes::new(),
            Some("application/dicom+json"),
        )?;
        a.json()
    }
}

/// Read one instance's outcome from a PS3.18 store response.
fn stow_outcome(status: u16, json: Option<&Value>) -> StowOutcome {
    let failed = json.and_then(|j| j.get("00081198")).and_then(|s| s.get("Value")).and_then(Value::as_array);
    if let Some(item) = failed.and_then(|f| f.first()) {
        let reason = item
            .get("00081197")
            .and_then(|r| r.get("Value"))
            .and_then(|v| v.get(0))
            .and_then(Value::as_u64)
            .map(|r| format!("0x{r:04X}"))
            .unwrap_or_else(|| "unspecified".into());
        // 0x0111: duplicate SOP instance (PS3.4 Annex GG / C.4.2.1.4).
        return if reason == "0x0111" { StowOutcome::AlreadyStored } else { StowOutcome::Rejected { reason } };
    }
    let warned = json
        .and_then(|j| j.get("00081199"))
        .and_then(|s| s.get("Value"))
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|i| i.get("00081196"))
        .is_some();
    match status {
        409 => StowOutcome::AlreadyStored,
        202 if warned => StowOutcome::AlreadyStored,
        _ => StowOutcome::Stored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_round_trips_binary_parts() {
        let a: &[u8] = b"DICM\r\n--not-a-boundary\x00\xff";
        let b: &[u8] = b"";
        let body = multipart_body(&[a, b]);
        let ct = format!("multipart/related; type=\"application/dicom\"; boundary=\"{BOUNDARY}\"");
        let parts = multipart_parts(&ct, &body).unwrap();
        assert_eq!(parts, vec![Bytes::from_static(a), Bytes::from_static(b)]);
    }

    #[test]
    fn fail_truncated_multipart_is_an_error() {
        let body = multipart_body(&[b"abc"]);
        let cut = &body[..body.len() - 10];
        let ct = format!("multipart/related; boundary={BOUNDARY}");
        assert!(multipart_parts(&ct, cut).is_err());
        assert!(multipart_parts("multipart/related", &body).is_err());
    }

    #[test]
    fn stow_failure_reasons_are_read() {
        let dup = serde_json::json!({"00081198": {"vr": "SQ", "Value": [{"00081197": {"vr": "US", "Value": [273]}}]}});
        assert_eq!(stow_outcome(409, Some(&dup)), StowOutcome::AlreadyStored);
        let bad = serde_json::json!({"00081198": {"vr": "SQ", "Value": [{"00081197": {"vr": "US", "Value": [49152]}}]}});
        assert_eq!(stow_outcome(409, Some(&bad)), StowOutcome::Rejected { reason: "0xC000".into() });
        let ok = serde_json::json!({"00081199": {"vr": "SQ", "Value": [{}]}});
        assert_eq!(stow_outcome(200, Some(&ok)), StowOutcome::Stored);
    }
}
