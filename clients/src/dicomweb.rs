//! DICOMweb (PS3.18) from the client side: STOW-RS of one instance per request, so every
//! file gets its own outcome and a push can resume file by file; WADO-RS retrieval of a
//! study as `multipart/related; type="application/dicom"`, split into parts as it streams
//! in ([`MultipartSplitter`]); the multipart framing both use.
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

/// Receives the parts of a multipart answer as they stream in.
pub trait PartSink {
    /// A part begins; `headers` are its header lines.
    fn start(&mut self, headers: &str) -> Result<()>;
    /// The next bytes of the current part.
    fn data(&mut self, bytes: &[u8]) -> Result<()>;
    /// The current part is complete.
    fn end(&mut self) -> Result<()>;
}

/// A streaming multipart/related parser (RFC 2046): bytes in, part events out, holding at
/// most one chunk plus a delimiter's length, whatever the size of a part.
pub struct MultipartSplitter {
    /// `CRLF--boundary`; the body is read as if preceded by a CRLF so the first delimiter
    /// looks like the others.
    delim: Vec<u8>,
    buf: Vec<u8>,
    state: SplitState,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SplitState {
    Preamble,
    AfterDelimiter,
    Headers,
    Body,
    Done,
}

impl MultipartSplitter {
    /// A splitter for the boundary in a `multipart/related` Content-Type value.
    pub fn new(content_type: &str) -> Result<Self> {
        let boundary = content_type
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("boundary="))
            .next()
            .map(|b| b.trim_matches('"').to_owned())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| Error::Protocol("a multipart answer without a boundary".into()))?;
        Ok(MultipartSplitter { delim: format!("\r\n--{boundary}").into_bytes(), buf: b"\r\n".to_vec(), state: SplitState::Preamble })
    }

    /// Whether the closing delimiter has been seen.
    pub fn is_done(&self) -> bool {
        self.state == SplitState::Done
    }

    /// Feed the next bytes of the body.
    pub fn feed(&mut self, bytes: &[u8], sink: &mut dyn PartSink) -> Result<()> {
        if self.state == SplitState::Done {
            return Ok(()); // the epilogue is ignored
        }
        self.buf.extend_from_slice(bytes);
        loop {
            match self.state {
                SplitState::Preamble | SplitState::Body => match find(&self.buf, &self.delim, 0) {
                    Some(at) => {
                        if self.state == SplitState::Body {
                            sink.data(&self.buf[..at])?;
                            sink.end()?;
                        }
                        self.buf.drain(..at + self.delim.len());
                        self.state = SplitState::AfterDelimiter;
                    }
                    None => {
                        // Everything but a possible delimiter prefix at the end is payload.
                        let keep = self.delim.len().saturating_sub(1).min(self.buf.len());
                        let emit = self.buf.len() - keep;
                        if self.state == SplitState::Body && emit > 0 {
                            sink.data(&self.buf[..emit])?;
                        }
                        self.buf.drain(..emit);
                        return Ok(());
                    }
                },
                SplitState::AfterDelimiter => {
                    if self.buf.len() < 2 {
                        return Ok(());
                    }
                    if self.buf.starts_with(b"--") {
                        self.state = SplitState::Done;
                        self.buf.clear();
                        return Ok(());
                    }
                    // Transport padding (spaces, tabs) may follow a delimiter, then CRLF.
                    match find(&self.buf, b"\r\n", 0) {
                        Some(at) if self.buf[..at].iter().all(|b| *b == b' ' || *b == b'\t') => {
                            self.buf.drain(..at + 2);
                            self.state = SplitState::Headers;
                        }
                        Some(_) => return Err(Error::Protocol("garbage after a multipart boundary".into())),
                        None if self.buf.len() > 1024 => return Err(Error::Protocol("garbage after a multipart boundary".into())),
                        None => return Ok(()),
                    }
                }
                SplitState::Headers => {
                    // A part without headers starts its body right away.
                    if self.buf.starts_with(b"\r\n") {
                        self.buf.drain(..2);
                        sink.start("")?;
                        self.state = SplitState::Body;
                        continue;
                    }
                    match find(&self.buf, b"\r\n\r\n", 0) {
                        Some(at) => {
                            let headers = String::from_utf8_lossy(&self.buf[..at]).into_owned();
                            self.buf.drain(..at + 4);
                            sink.start(&headers)?;
                            self.state = SplitState::Body;
                        }
                        None if self.buf.len() > 16 * 1024 => return Err(Error::Protocol("a multipart part's headers are too long".into())),
                        None => return Ok(()),
                    }
                }
                SplitState::Done => return Ok(()),
            }
        }
    }
}

struct Retrieval<'a> {
    splitter: Option<MultipartSplitter>,
    sink: &'a mut dyn PartSink,
    identity_restored: bool,
}

impl crate::http::StreamSink for Retrieval<'_> {
    fn head(&mut self, head: &hyper::http::response::Parts) -> Result<()> {
        let ct = head.headers.get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !ct.to_ascii_lowercase().starts_with("multipart/related") {
            return Err(Error::Protocol("the retrieve answer is not multipart/related".into()));
        }
        self.identity_restored = head.headers.get("cleave-identity-restored").and_then(|v| v.to_str().ok()) == Some("true");
        self.splitter = Some(MultipartSplitter::new(ct)?);
        Ok(())
    }
    fn chunk(&mut self, data: &[u8]) -> Result<()> {
        match self.splitter.as_mut() {
            Some(s) => s.feed(data, self.sink),
            None => Err(Error::Protocol("a body before its headers".into())),
        }
    }
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

    /// WADO-RS: stream every instance of a study into `sink`, part by part, as it arrives.
    /// Returns whether the broker restored the patient's identity into the instances
    /// (it does when the token allows identity as well as clinical reading).
    pub fn retrieve_study_into(&self, study: &str, sink: &mut dyn PartSink) -> Result<bool> {
        let mut s = Retrieval { splitter: None, sink, identity_restored: false };
        self.stream_get(&format!("/dicomweb/studies/{}", encode(study)), "multipart/related; type=\"application/dicom\"", &mut s)?;
        match s.splitter {
            Some(sp) if sp.is_done() => Ok(s.identity_restored),
            _ => Err(Error::Protocol("the multipart answer ended before its closing boundary".into())),
        }
    }

    /// QIDO-RS: the number of instances the server holds for a study, if it says.
    pub fn study_instance_count(&self, study: &str) -> Result<Option<u64>> {
        let a = self.call(
            Method::GET,
            &format!("/dicomweb/studies?StudyInstanceUID={}", encode(study)),
            None,
            Bytes::new(),
            Some("application/dicom+json"),
        )?;
        let v: Value = a.json()?;
        Ok(v.get(0).and_then(|s| s.get("00201208")).and_then(|n| n.get("Value")).and_then(|n| n.get(0)).and_then(Value::as_u64))
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

    /// Collects parts, to check the streaming splitter against the whole-body one.
    #[derive(Default)]
    struct Collect {
        parts: Vec<(String, Vec<u8>)>,
        open: bool,
    }
    impl PartSink for Collect {
        fn start(&mut self, headers: &str) -> Result<()> {
            assert!(!self.open);
            self.open = true;
            self.parts.push((headers.to_owned(), Vec::new()));
            Ok(())
        }
        fn data(&mut self, bytes: &[u8]) -> Result<()> {
            assert!(self.open);
            self.parts.last_mut().unwrap().1.extend_from_slice(bytes);
            Ok(())
        }
        fn end(&mut self) -> Result<()> {
            self.open = false;
            Ok(())
        }
    }

    #[test]
    fn the_streaming_splitter_agrees_with_the_whole_body_parser_at_every_chunk_size() {
        let a: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let tricky: &[u8] = b"\r\n--cleave-stow-5f1d3c7a9b2e4d6\r\n--cleave-stow";
        let body = multipart_body(&[&a, b"", tricky]);
        let ct = format!("multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}");
        for size in [1, 2, 3, 7, 64, 1000, body.len()] {
            let mut sp = MultipartSplitter::new(&ct).unwrap();
            let mut c = Collect::default();
            for chunk in body.chunks(size) {
                sp.feed(chunk, &mut c).unwrap();
            }
            assert!(sp.is_done(), "chunk size {size}");
            let payloads: Vec<&[u8]> = c.parts.iter().map(|(_, p)| p.as_slice()).collect();
            assert_eq!(payloads, vec![a.as_slice(), b"", tricky], "chunk size {size}");
            assert!(c.parts.iter().all(|(h, _)| h == "Content-Type: application/dicom"));
        }
        // Cut short: never done.
        let mut sp = MultipartSplitter::new(&ct).unwrap();
        sp.feed(&body[..body.len() - 5], &mut Collect::default()).unwrap();
        assert!(!sp.is_done());
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
