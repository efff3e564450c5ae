//! Research export from the client side: `GET /api/v1/research/export` read as a stream,
//! each `multipart/related` part written to its own file as it arrives, so an export of
//! any size needs a few chunks of memory.
//!
//! Files land first in a staging directory inside the output directory and are moved into
//! place (each fsync'd, then the directory) only once the closing delimiter has arrived.
//! An export that breaks off leaves nothing behind: a partial extract would look complete
//! to whoever picks it up next. Files are named by position (`export-00001.dcm`), never
//! by UID.
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::http::{encode, Client};

/// What to export: one study, or a cohort described by filters (never a patient).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportSelection {
    pub study: Option<String>,
    pub modality: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub body_part: Option<String>,
    /// Keep dates, each subject's moved by its own secret offset (PS3.15 modified dates),
    /// instead of removing them.
    pub shift_dates: bool,
}

impl ExportSelection {
    /// The query string (without `?`).
    pub fn query(&self) -> String {
        let shifted = self.shift_dates.then(|| "shifted".to_owned());
        let pairs = [
            ("study", &self.study),
            ("modality", &self.modality),
            ("from", &self.from),
            ("to", &self.to),
            ("body_part", &self.body_part),
            ("dates", &shifted),
        ];
        pairs.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v)))).collect::<Vec<_>>().join("&")
    }
}

/// The outcome of a completed export.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ExportReport {
    /// Instances written.
    pub instances: u64,
    /// Instances the server withheld as not for research.
    pub withheld: u64,
    /// Bytes of DICOM written.
    pub bytes: u64,
    pub files: Vec<PathBuf>,
    /// The server moved the dates (`Cleave-Export-Dates: shifted`) rather than removing them.
    pub dates_shifted: bool,
}

/// Download an export into `dir`. `progress(done, total)` is called after each instance
/// (`total` from the server's `Cleave-Export-Instances` header, when sent).
pub fn export(c: &Client, sel: &ExportSelection, dir: &Path, progress: &mut dyn FnMut(u64, Option<u64>)) -> Result<ExportReport> {
    cleave_keys::durable::create_private_dir(dir).map_err(|e| Error::io("creating", dir, e))?;
    let stage = dir.join(format!(".cleave-export-{}", cleave_keys::random_id128()));
    cleave_keys::durable::create_private_dir(&stage).map_err(|e| Error::io("creating", &stage, e))?;
    let result = download(c, sel, &stage, progress);
    let outcome = result.and_then(|Downloaded { staged, withheld, dates_shifted }| {
        let mut files = Vec::new();
        let mut bytes = 0;
        for (i, (path, len)) in staged.iter().enumerate() {
            let to = dir.join(format!("export-{:05}.dcm", i + 1));
            std::fs::rename(path, &to).map_err(|e| Error::io("moving into place", &to, e))?;
            bytes += len;
            files.push(to);
        }
        cleave_keys::durable::fsync_dir(dir).map_err(|e| Error::io("syncing", dir, e))?;
        Ok(ExportReport { instances: files.len() as u64, withheld, bytes, files, dates_shifted })
    });
    // Whatever happened, the staging directory goes: on failure with what it held.
    let _ = std::fs::remove_dir_all(&stage);
    outcome
}

/// What [`download`] staged.
struct Downloaded {
    /// Each part's file and size, in order.
    staged: Vec<(PathBuf, u64)>,
    withheld: u64,
    dates_shifted: bool,
}

/// Stream the export into `stage`.
fn download(c: &Client, sel: &ExportSelection, stage: &Path, progress: &mut dyn FnMut(u64, Option<u64>)) -> Result<Downloaded> {
    // Both callbacks reach the parser: the head makes it, the data feed it.
    let parser: std::cell::RefCell<Option<Parser>> = std::cell::RefCell::new(None);
    let total = std::cell::Cell::new(None);
    let withheld = std::cell::Cell::new(0);
    let shifted = std::cell::Cell::new(false);
    let mut on_head = |h: &hyper::HeaderMap| -> Result<()> {
        let header = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let ct = header("content-type").unwrap_or_default();
        if !ct.to_ascii_lowercase().starts_with("multipart/related") {
            return Err(Error::Protocol("the export answer is not multipart/related".into()));
        }
        let boundary = ct
            .split(';')
            .find_map(|p| p.trim().strip_prefix("boundary="))
            .map(|b| b.trim_matches('"').to_owned())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| Error::Protocol("a multipart answer without a boundary".into()))?;
        total.set(header("cleave-export-instances").and_then(|v| v.parse().ok()));
        withheld.set(header("cleave-export-withheld").and_then(|v| v.parse().ok()).unwrap_or(0));
        shifted.set(header("cleave-export-dates").as_deref() == Some("shifted"));
        if sel.shift_dates && !shifted.get() {
            return Err(Error::Protocol("shifted dates were asked for and the server did not say it shifted them; nothing was kept".into()));
        }
        *parser.borrow_mut() = Some(Parser::new(&boundary, stage));
        Ok(())
    };
    let mut done = 0u64;
    let mut on_data = |d: &[u8]| -> Result<()> {
        let mut guard = parser.borrow_mut();
        let p = guard.as_mut().ok_or_else(|| Error::Protocol("data before headers".into()))?;
        let before = p.finished.len();
        p.feed(d)?;
        for _ in before..p.finished.len() {
            done += 1;
            progress(done, total.get());
        }
        Ok(())
    };
    let path = format!("/api/v1/research/export?{}", sel.query());
    c.get_streaming(&path, Some("multipart/related; type=\"application/dicom\""), &mut on_head, &mut on_data)?;
    let p = parser.into_inner().ok_or_else(|| Error::Protocol("the export answer had no headers".into()))?;
    if p.state != State::Done {
        return Err(Error::Protocol("the export ended before its closing delimiter; nothing was kept, run it again".into()));
    }
    Ok(Downloaded { staged: p.finished, withheld: withheld.get(), dates_shifted: shifted.get() })
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Before the first delimiter.
    Start,
    /// Just after a delimiter: `--` ends the body, CRLF starts a part.
    AfterDelimiter,
    /// Reading a part's headers.
    Headers,
    /// Reading a part's payload into the current file.
    Body,
    Done,
}

/// An incremental multipart/related reader writing each part to a file in `dir`.
struct Parser {
    first: Vec<u8>,
    /// `CRLF--boundary`: what ends a payload.
    delimiter: Vec<u8>,
    dir: PathBuf,
    buf: Vec<u8>,
    state: State,
    current: Option<(std::fs::File, PathBuf, u64)>,
    finished: Vec<(PathBuf, u64)>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Headers of one part larger than this are refused (they are a few dozen bytes).
const MAX_PART_HEADERS: usize = 8 * 1024;

impl Parser {
    fn new(boundary: &str, dir: &Path) -> Parser {
        Parser {
            first: format!("--{boundary}").into_bytes(),
            delimiter: format!("\r\n--{boundary}").into_bytes(),
            dir: dir.to_owned(),
            buf: Vec::new(),
            state: State::Start,
            current: None,
            finished: Vec::new(),
        }
    }

    fn feed(&mut self, data: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(data);
        loop {
            match self.state {
                State::Start => {
                    if self.buf.len() < self.first.len() {
                        return Ok(());
                    }
                    if !self.buf.starts_with(&self.first) {
                        return Err(Error::Protocol("the export does not start with its boundary".into()));
                    }
                    self.buf.drain(..self.first.len());
                    self.state = State::AfterDelimiter;
                }
                State::AfterDelimiter => {
                    if self.buf.len() < 2 {
                        return Ok(());
                    }
                    if self.buf.starts_with(b"--") {
                        self.buf.clear();
                        self.state = State::Done;
                    } else if self.buf.starts_with(b"\r\n") {
                        self.buf.drain(..2);
                        self.state = State::Headers;
                    } else {
                        return Err(Error::Protocol("a malformed multipart delimiter".into()));
                    }
                }
                State::Headers => match find(&self.buf, b"\r\n\r\n") {
                    Some(i) => {
                        self.buf.drain(..i + 4);
                        let path = self.dir.join(format!("part-{:05}.dcm", self.finished.len() + 1));
                        let file = cleave_keys::durable::create_new_with_mode(&path, 0o600).map_err(|e| Error::io("creating", &path, e))?;
                        self.current = Some((file, path, 0));
                        self.state = State::Body;
                    }
                    None if self.buf.len() > MAX_PART_HEADERS => return Err(Error::Protocol("a multipart part with oversized headers".into())),
                    None => return Ok(()),
                },
                State::Body => {
                    let (file, path, len) = self.current.as_mut().ok_or_else(|| Error::Protocol("a part without a file".into()))?;
                    match find(&self.buf, &self.delimiter) {
                        Some(i) => {
                            file.write_all(&self.buf[..i]).map_err(|e| Error::io("writing", path, e))?;
                            *len += i as u64;
                            file.sync_all().map_err(|e| Error::io("syncing", path, e))?;
                            self.buf.drain(..i + self.delimiter.len());
                            if let Some((_, path, len)) = self.current.take() {
                                self.finished.push((path, len));
                            }
                            self.state = State::AfterDelimiter;
                        }
                        None => {
                            // Keep a tail that could be the start of a delimiter.
                            let keep = self.delimiter.len() - 1;
                            if self.buf.len() > keep {
                                let n = self.buf.len() - keep;
                                file.write_all(&self.buf[..n]).map_err(|e| Error::io("writing", path, e))?;
                                *len += n as u64;
                                self.buf.drain(..n);
                            }
                            return Ok(());
                        }
                    }
                }
                State::Done => {
                    self.buf.clear();
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            out.extend_from_slice(b"--B0\r\nContent-Type: application/dicom\r\n\r\n");
            out.extend_from_slice(p);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"--B0--\r\n");
        out
    }

    /// Fed one byte at a time, in odd chunks, or whole: the same files.
    #[test]
    fn parts_are_written_whatever_the_chunking() {
        let a: &[u8] = b"DICM\r\n--B\r\n--B1 not the boundary\x00\xff";
        let b: &[u8] = &[0x0d; 300];
        let whole = body(&[a, b]);
        for chunk in [1, 7, 64, whole.len()] {
            let dir = tempfile::tempdir().unwrap();
            let mut p = Parser::new("B0", dir.path());
            for c in whole.chunks(chunk) {
                p.feed(c).unwrap();
            }
            assert_eq!(p.state, State::Done, "chunk {chunk}");
            let got: Vec<Vec<u8>> = p.finished.iter().map(|(f, _)| std::fs::read(f).unwrap()).collect();
            assert_eq!(got, vec![a.to_vec(), b.to_vec()], "chunk {chunk}");
        }
    }

    #[test]
    fn fail_a_body_cut_before_its_closing_delimiter_is_not_done() {
        let whole = body(&[b"abc", b"def"]);
        let dir = tempfile::tempdir().unwrap();
        let mut p = Parser::new("B0", dir.path());
        p.feed(&whole[..whole.len() - 9]).unwrap();
        assert_ne!(p.state, State::Done);
        let mut q = Parser::new("B0", dir.path().join("x").as_path());
        assert!(q.feed(b"garbage that is no multipart").is_err());
    }

    #[test]
    fn selections_become_queries() {
        let s = ExportSelection { modality: Some("CT".into()), from: Some("20190101".into()), ..Default::default() };
        assert_eq!(s.query(), "modality=CT&from=20190101");
        let s = ExportSelection { study: Some("1.2.3".into()), shift_dates: true, ..Default::default() };
        assert_eq!(s.query(), "study=1.2.3&dates=shifted");
        let s = ExportSelection { study: Some("1.2.3".into()), ..Default::default() };
        assert_eq!(s.query(), "study=1.2.3");
    }
}
