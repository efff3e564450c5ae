//! Reading back what the split stored: re-identification on the fly, the header as DICOM
//! JSON (PS3.18 Annex F), and single frames of the pixel data.
//!
//! Everything here streams. The header (everything before the pixel data) is parsed under
//! the same [`Limits`] as the split; the pixel data are copied from the reader to the
//! writer in chunks or fragment by fragment, never held whole. Nothing is written anywhere
//! but the writer the caller hands in: the broker points it at the network, so a
//! re-identified object never touches a disk.
//!
//! Re-identification ([`reidentify`]) puts back the attributes a [`Restore`] carries
//! (Patient's Name, Patient ID, Issuer of Patient ID, Patient's Birth Date, Patient's Sex,
//! Accession Number) and sets Patient Identity Removed (0012,0062) to `NO`. The
//! De-identification Method and its code sequence stay: they still describe what was done
//! to the rest of the header (descriptions cleaned, other attributes removed). UIDs stay
//! as stored, so an object fetched re-identified still matches the URLs it was found by.
//! Group length elements of the dataset (retired) are dropped because they would be wrong;
//! the file meta group length is recomputed.
use std::io::{Read, Write};

use base64::Engine;
use dicom_core::VR;
use dicom_encoding::text::{SpecificCharacterSet, TextCodec};
use serde_json::{json, Map, Value as Json};

use crate::deid::{padded, trimmed};
use crate::error::Error;
use crate::identity::Secret;
use crate::options::Limits;
use crate::parse::{self, Budget, Elem, End, Enc, Header, Source, Stop, Value, EXPLICIT_LE};
use crate::split::{classify, copy_exact, read_meta, stream_pixel_data};
use crate::write;

/// The identity attributes to put back into a stored object. Every field is zeroized on
/// drop; `Debug` shows which are present, never their values. A `None` field leaves the
/// stored value (Patient ID keeps the pseudonym, Patient's Name stays empty).
#[derive(Default)]
#[non_exhaustive]
pub struct Restore {
    /// DICOM PN form: `family^given^middle^prefix^suffix`.
    pub patient_name: Option<Secret>,
    pub patient_id: Option<Secret>,
    pub issuer_of_patient_id: Option<Secret>,
    /// `YYYYMMDD`.
    pub birth_date: Option<Secret>,
    /// `M`, `F` or `O`.
    pub sex: Option<Secret>,
    pub accession_number: Option<Secret>,
}

impl Restore {
    /// An empty restore, to be filled field by field (the struct is `#[non_exhaustive]`).
    pub fn new() -> Self {
        Restore::default()
    }

    fn fields(&self) -> [(u32, VR, Option<&Secret>); 6] {
        [
            (0x0008_0050, VR::SH, self.accession_number.as_ref()),
            (0x0010_0010, VR::PN, self.patient_name.as_ref()),
            (0x0010_0020, VR::LO, self.patient_id.as_ref()),
            (0x0010_0021, VR::LO, self.issuer_of_patient_id.as_ref()),
            (0x0010_0030, VR::DA, self.birth_date.as_ref()),
            (0x0010_0040, VR::CS, self.sex.as_ref()),
        ]
    }
}

impl std::fmt::Debug for Restore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.fields().iter().filter(|(_, _, v)| v.is_some()).count();
        write!(f, "Restore(<redacted>: {n} attributes)")
    }
}

const SPECIFIC_CHARACTER_SET: u32 = 0x0008_0005;
const PATIENT_IDENTITY_REMOVED: u32 = 0x0012_0062;
const ROWS: u32 = 0x0028_0010;
const COLUMNS: u32 = 0x0028_0011;
const SAMPLES_PER_PIXEL: u32 = 0x0028_0002;
const BITS_ALLOCATED: u32 = 0x0028_0100;
const NUMBER_OF_FRAMES: u32 = 0x0028_0008;

/// A stored object opened up to its pixel data.
struct Opened<R> {
    src: Source<R>,
    meta: Vec<Elem>,
    enc: Enc,
    ts: String,
    header: Vec<Elem>,
    stop: Stop,
    used: u64,
}

fn open<R: Read>(input: R, limits: &Limits) -> Result<Opened<R>, Error> {
    let mut src = Source::new(input);
    let mut preamble = [0u8; 132];
    let n = src.read_full(&mut preamble).map_err(|e| Error::read("the preamble", e))?;
    if n < 132 || preamble.get(128..132) != Some(b"DICM".as_slice()) {
        return Err(Error::NotPart10);
    }
    let meta = read_meta(&mut src)?;
    let ts = meta
        .iter()
        .find(|e| e.tag == 0x0002_0010)
        .and_then(|e| match &e.value {
            Value::Bytes(b) => std::str::from_utf8(trimmed(b)).ok().map(str::to_owned),
            _ => None,
        })
        .ok_or(Error::BadMeta { what: "no Transfer Syntax UID (0002,0010)" })?;
    let syntax = classify(&ts)?;
    if syntax.deflated {
        // The split inflates deflated input; a stored object is never deflated.
        return Err(Error::UnknownTransferSyntax);
    }
    let start = src.consumed;
    let limit = limits.max_header_bytes;
    let budget = Budget { until: start.saturating_add(limit), limit, max_depth: limits.max_depth };
    let (header, stop) = parse::read_elements(&mut src, syntax.enc, 0, End::TopLevel, &budget)?;
    let used = src.consumed - start;
    Ok(Opened { src, meta, enc: syntax.enc, ts, header, stop, used })
}

fn charset_of(header: &[Elem]) -> Result<SpecificCharacterSet, Error> {
    let raw = header.iter().find(|e| e.tag == SPECIFIC_CHARACTER_SET).and_then(|e| match &e.value {
        Value::Bytes(b) => Some(b.as_slice()),
        _ => None,
    });
    let Some(raw) = raw else { return Ok(SpecificCharacterSet::ISO_IR_6) };
    let text = String::from_utf8_lossy(raw);
    match text.split('\\').map(str::trim).find(|c| !c.is_empty()) {
        Some(code) => SpecificCharacterSet::from_code(code).ok_or(Error::UnsupportedCharacterSet),
        None => Ok(SpecificCharacterSet::ISO_IR_6),
    }
}

fn text_elem(tag: u32, vr: VR, bytes: Vec<u8>) -> Elem {
    let pad = if vr == VR::UI { 0 } else { b' ' };
    Elem { tag, vr, value: Value::Bytes(padded(bytes, pad)) }
}

/// Put the restored attributes into a top-level header, in tag order.
fn apply(header: &mut Vec<Elem>, restore: &Restore) -> Result<(), Error> {
    header.retain(|e| e.tag & 0xFFFF != 0);
    let mut charset = charset_of(header)?;
    let needs_unicode = restore.fields().iter().any(|(_, _, v)| v.is_some_and(|s| !s.is_ascii()));
    if needs_unicode && charset == SpecificCharacterSet::ISO_IR_6 {
        // The default repertoire is ASCII, a subset of UTF-8: declaring UTF-8 leaves every
        // other value of the header meaning what it meant.
        header.retain(|e| e.tag != SPECIFIC_CHARACTER_SET);
        header.push(text_elem(SPECIFIC_CHARACTER_SET, VR::CS, b"ISO_IR 192".to_vec()));
        charset = SpecificCharacterSet::ISO_IR_192;
    }
    for (tag, vr, value) in restore.fields() {
        let Some(value) = value else { continue };
        let bytes = if value.is_ascii() {
            value.as_bytes().to_vec()
        } else {
            charset.encode(value).map_err(|_| Error::BadText { keyword: crate::identity::keyword(tag) })?
        };
        header.retain(|e| e.tag != tag);
        header.push(text_elem(tag, vr, bytes));
    }
    header.retain(|e| e.tag != PATIENT_IDENTITY_REMOVED);
    header.push(text_elem(PATIENT_IDENTITY_REMOVED, VR::CS, b"NO".to_vec()));
    header.sort_by_key(|e| e.tag);
    Ok(())
}

fn write_meta(buf: &mut Vec<u8>, meta: &[Elem]) -> Result<(), Error> {
    let kept: Vec<Elem> = meta.iter().filter(|e| e.tag != 0x0002_0000).cloned().collect();
    let mut body = Vec::new();
    write::elements(&mut body, EXPLICIT_LE, &kept)?;
    let len = u32::try_from(body.len()).map_err(|_| Error::BadMeta { what: "file meta information too long" })?;
    write::header(buf, EXPLICIT_LE, 0x0002_0000, VR::UL, 4)?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&body);
    Ok(())
}

/// Copy a stored (de-identified) Part 10 object from `input` to `out` with the identity
/// attributes of `restore` put back, streaming the pixel data unchanged. Returns the bytes
/// written. On `Err`, `out` has received part of an object and must be abandoned (the
/// broker aborts the response).
pub fn reidentify<R: Read, W: Write>(input: R, out: W, restore: &Restore, limits: &Limits) -> Result<u64, Error> {
    let Opened { mut src, meta, enc, header, stop, used, .. } = open(input, limits)?;
    let mut header = header;
    apply(&mut header, restore)?;
    let mut out = write::Counting { inner: out, written: 0 };
    let mut buf = vec![0u8; 128];
    buf.extend_from_slice(b"DICM");
    write_meta(&mut buf, &meta)?;
    write::elements(&mut buf, enc, &header)?;
    out.write_all(&buf).map_err(Error::write)?;
    drop(buf);
    drop(header);
    if let Stop::Pixel(h) = stop {
        stream_pixel_data(&mut src, &mut out, h, enc, limits.max_pixel_bytes)?;
        let limit = limits.max_header_bytes;
        let budget = Budget { until: src.consumed.saturating_add(limit.saturating_sub(used)), limit, max_depth: limits.max_depth };
        let (trailing, stop) = parse::read_elements(&mut src, enc, 0, End::TopLevel, &budget)?;
        if let Stop::Pixel(h) = stop {
            return Err(Error::malformed(h.tag, "a second pixel data element"));
        }
        let mut buf = Vec::new();
        write::elements(&mut buf, enc, &trailing)?;
        out.write_all(&buf).map_err(Error::write)?;
    }
    out.flush().map_err(Error::write)?;
    Ok(out.written)
}

/// The header of a stored object as a DICOM JSON object (PS3.18 F.2), with `restore`
/// applied first if given. The file meta group is left out (it is not part of the
/// dataset). Pixel data are never inlined: with `bulk_data_uri` they appear as
/// `{"vr": ..., "BulkDataURI": uri}`, without it they are omitted. Other binary values are
/// `InlineBinary` (base64); the header is bounded by [`Limits::max_header_bytes`].
pub fn metadata_json<R: Read>(input: R, restore: Option<&Restore>, limits: &Limits, bulk_data_uri: Option<&str>) -> Result<Json, Error> {
    let Opened { mut header, stop, enc, .. } = open(input, limits)?;
    if let Some(r) = restore {
        apply(&mut header, r)?;
    } else {
        header.retain(|e| e.tag & 0xFFFF != 0);
    }
    let charset = charset_of(&header)?;
    let mut obj = dataset_json(&header, enc, &charset)?;
    if let (Stop::Pixel(h), Some(uri)) = (stop, bulk_data_uri) {
        let vr = if h.len == parse::UNDEFINED { VR::OB } else { h.vr };
        obj.insert(tag_key(h.tag), json!({"vr": vr.to_string(), "BulkDataURI": uri}));
    }
    Ok(Json::Object(obj))
}

fn tag_key(tag: u32) -> String {
    format!("{tag:08X}")
}

fn dataset_json(elems: &[Elem], enc: Enc, charset: &SpecificCharacterSet) -> Result<Map<String, Json>, Error> {
    let mut obj = Map::new();
    for e in elems {
        obj.insert(tag_key(e.tag), element_json(e, enc, charset)?);
    }
    Ok(obj)
}

fn element_json(e: &Elem, enc: Enc, charset: &SpecificCharacterSet) -> Result<Json, Error> {
    let vr = e.vr.to_string();
    let values: Vec<Json> = match &e.value {
        Value::Seq { items, inner } => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(Json::Object(dataset_json(item, *inner, charset)?));
            }
            let vr = if e.vr == VR::UN { "SQ" } else { vr };
            return Ok(if out.is_empty() { json!({"vr": vr}) } else { json!({"vr": vr, "Value": out}) });
        }
        // Encapsulated pixel data nested in a sequence (an icon): not rendered.
        Value::Fragments(_) => return Ok(json!({"vr": "OB"})),
        Value::Bytes(b) => match scalar_values(e, b, enc, charset)? {
            Scalars::Values(v) => v,
            Scalars::Binary => {
                if b.is_empty() {
                    return Ok(json!({"vr": vr}));
                }
                let b64 = base64::engine::general_purpose::STANDARD.encode(b);
                return Ok(json!({"vr": vr, "InlineBinary": b64}));
            }
        },
    };
    Ok(if values.is_empty() { json!({"vr": vr}) } else { json!({"vr": vr, "Value": values}) })
}

enum Scalars {
    Values(Vec<Json>),
    Binary,
}

fn scalar_values(e: &Elem, b: &[u8], enc: Enc, charset: &SpecificCharacterSet) -> Result<Scalars, Error> {
    use VR::*;
    let fixed = |size: usize| b.chunks_exact(size);
    let num = |chunk: &[u8]| -> [u8; 8] {
        let mut a = [0u8; 8];
        let n = chunk.len().min(8);
        a[..n].copy_from_slice(&chunk[..n]);
        if enc.big {
            a[..n].reverse();
        }
        a
    };
    Ok(Scalars::Values(match e.vr {
        US => fixed(2).map(|c| json!(u16::from_le_bytes([num(c)[0], num(c)[1]]))).collect(),
        SS => fixed(2).map(|c| json!(i16::from_le_bytes([num(c)[0], num(c)[1]]))).collect(),
        UL => fixed(4).map(|c| json!(u32::from_le_bytes([num(c)[0], num(c)[1], num(c)[2], num(c)[3]]))).collect(),
        SL => fixed(4).map(|c| json!(i32::from_le_bytes([num(c)[0], num(c)[1], num(c)[2], num(c)[3]]))).collect(),
        FL => fixed(4).map(|c| json!(f32::from_le_bytes([num(c)[0], num(c)[1], num(c)[2], num(c)[3]]) as f64)).collect(),
        FD => fixed(8).map(|c| json!(f64::from_le_bytes(num(c)))).collect(),
        SV => fixed(8).map(|c| json!(i64::from_le_bytes(num(c)))).collect(),
        UV => fixed(8).map(|c| json!(u64::from_le_bytes(num(c)))).collect(),
        AT => fixed(4)
            .map(|c| {
                let g = u16::from_le_bytes([num(&c[..2])[0], num(&c[..2])[1]]);
                let el = u16::from_le_bytes([num(&c[2..])[0], num(&c[2..])[1]]);
                json!(format!("{g:04X}{el:04X}"))
            })
            .collect(),
        OB | OD | OF | OL | OV | OW | UN => return Ok(Scalars::Binary),
        IS | DS => strings(b, true)
            .into_iter()
            .map(|s| match s {
                None => Json::Null,
                Some(s) if e.vr == IS => s.parse::<i64>().map(|n| json!(n)).unwrap_or(Json::Null),
                Some(s) => s.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Json::Number).unwrap_or(Json::Null),
            })
            .collect(),
        PN => decode(b, charset, e.tag)
            .map(|t| split_text(&t, true).into_iter().map(|v| v.map(person_name).unwrap_or(Json::Null)).collect())?,
        LT | ST | UT | UR => {
            let t = decode(b, charset, e.tag)?;
            let t = t.trim_end_matches(['\0', ' ']);
            if t.is_empty() { Vec::new() } else { vec![json!(t)] }
        }
        _ => decode(b, charset, e.tag).map(|t| split_text(&t, true).into_iter().map(|v| v.map(Json::String).unwrap_or(Json::Null)).collect())?,
    }))
}

fn decode(b: &[u8], charset: &SpecificCharacterSet, tag: u32) -> Result<String, Error> {
    charset
        .decode(b)
        .or_else(|_| SpecificCharacterSet::ISO_IR_100.decode(b))
        .map_err(|_| Error::BadText { keyword: crate::identity::keyword(tag) })
}

fn strings(b: &[u8], multi: bool) -> Vec<Option<String>> {
    split_text(&String::from_utf8_lossy(b), multi)
}

/// Split a multi-valued text on backslashes, trimming padding; an all-empty value is no
/// value at all.
fn split_text(t: &str, multi: bool) -> Vec<Option<String>> {
    let t = t.trim_end_matches(['\0', ' ']);
    if t.trim().is_empty() {
        return Vec::new();
    }
    let parts: Vec<&str> = if multi { t.split('\\').collect() } else { vec![t] };
    parts
        .into_iter()
        .map(|p| {
            let p = p.trim_matches([' ', '\0']);
            (!p.is_empty()).then(|| p.to_owned())
        })
        .collect()
}

fn person_name(pn: String) -> Json {
    let mut o = Map::new();
    for (key, group) in ["Alphabetic", "Ideographic", "Phonetic"].iter().zip(pn.split('=')) {
        if !group.is_empty() {
            o.insert((*key).to_owned(), json!(group));
        }
    }
    Json::Object(o)
}

/// What a frame request needs to know about a stored object's pixel data.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FrameLayout {
    pub transfer_syntax: String,
    pub number_of_frames: u32,
    /// Encapsulated (compressed) pixel data: each frame is the compressed bitstream.
    pub encapsulated: bool,
    /// The size of one native frame in bytes; `None` when encapsulated.
    pub frame_bytes: Option<u64>,
}

fn us_value(header: &[Elem], tag: u32, enc: Enc) -> Option<u16> {
    header.iter().find(|e| e.tag == tag).and_then(|e| match &e.value {
        Value::Bytes(b) if b.len() >= 2 => Some(if enc.big { u16::from_be_bytes([b[0], b[1]]) } else { u16::from_le_bytes([b[0], b[1]]) }),
        _ => None,
    })
}

fn layout_of(o: &Opened<impl Read>) -> Result<(FrameLayout, Header), Error> {
    let Stop::Pixel(h) = o.stop else { return Err(Error::MissingAttribute { keyword: "PixelData" }) };
    let frames = o
        .header
        .iter()
        .find(|e| e.tag == NUMBER_OF_FRAMES)
        .and_then(|e| match &e.value {
            Value::Bytes(b) => std::str::from_utf8(trimmed(b)).ok().and_then(|s| s.parse::<u32>().ok()),
            _ => None,
        })
        .unwrap_or(1)
        .max(1);
    let encapsulated = h.len == parse::UNDEFINED;
    let frame_bytes = if encapsulated {
        None
    } else {
        let need = |tag, keyword| us_value(&o.header, tag, o.enc).ok_or(Error::MissingAttribute { keyword });
        let rows = need(ROWS, "Rows")? as u64;
        let cols = need(COLUMNS, "Columns")? as u64;
        let spp = us_value(&o.header, SAMPLES_PER_PIXEL, o.enc).unwrap_or(1) as u64;
        let bits = need(BITS_ALLOCATED, "BitsAllocated")? as u64;
        let bits_per_frame = rows * cols * spp * bits;
        if bits_per_frame % 8 != 0 && frames > 1 {
            return Err(Error::FramesNotByteAligned);
        }
        Some(bits_per_frame.div_ceil(8))
    };
    Ok((FrameLayout { transfer_syntax: o.ts.clone(), number_of_frames: frames, encapsulated, frame_bytes }, h))
}

/// The frame layout of a stored object (reads its header only).
pub fn frame_layout<R: Read>(input: R, limits: &Limits) -> Result<FrameLayout, Error> {
    let o = open(input, limits)?;
    layout_of(&o).map(|(l, _)| l)
}

/// Copy frame `number` (1-based, PS3.18) of a stored object from `input` to `out`: for
/// native pixel data the frame's bytes, for encapsulated pixel data the frame's compressed
/// bitstream (its fragments concatenated). Frames before it are read and discarded, so
/// memory stays at one copy buffer. Returns the bytes written.
///
/// Encapsulated frames are located one fragment per frame, or all fragments for a single
/// frame, or through the Basic Offset Table; anything else is [`Error::FramesUnlocatable`].
pub fn copy_frame<R: Read, W: Write>(input: R, number: u32, mut out: W, limits: &Limits) -> Result<u64, Error> {
    let mut o = open(input, limits)?;
    let (layout, h) = layout_of(&o)?;
    if number == 0 || number > layout.number_of_frames {
        return Err(Error::NoSuchFrame { frames: layout.number_of_frames });
    }
    let mut chunk = vec![0u8; 256 * 1024];
    if let Some(size) = layout.frame_bytes {
        let start = (number as u64 - 1) * size;
        if start + size > h.len as u64 {
            return Err(Error::malformed(h.tag, "the pixel data are shorter than their frames"));
        }
        copy_exact(&mut o.src, &mut std::io::sink(), start, &mut chunk)?;
        copy_exact(&mut o.src, &mut out, size, &mut chunk)?;
        out.flush().map_err(Error::write)?;
        return Ok(size);
    }
    // Encapsulated: the offset table first, then the fragments.
    let src = &mut o.src;
    let item = |src: &mut Source<R>| -> Result<Option<u32>, Error> {
        let f = parse::read_header(src, o.enc, "encapsulated pixel data")?.ok_or(Error::Truncated { what: "encapsulated pixel data" })?;
        match f.tag {
            parse::ITEM if f.len != parse::UNDEFINED => Ok(Some(f.len)),
            parse::SEQ_DELIM => Ok(None),
            _ => Err(Error::malformed(h.tag, "encapsulated pixel data hold something other than fragments")),
        }
    };
    let bot_len = item(src)?.ok_or(Error::malformed(h.tag, "encapsulated pixel data without an offset table item"))?;
    // Four bytes per frame; anything larger is not a table for this many frames.
    if bot_len as u64 > 4 * layout.number_of_frames as u64 || bot_len % 4 != 0 {
        return Err(Error::malformed(h.tag, "the basic offset table does not match the number of frames"));
    }
    let mut bot = vec![0u8; bot_len as usize];
    src.read_exact(&mut bot).map_err(|e| Error::read("the basic offset table", e))?;
    let offsets: Vec<u64> = bot
        .chunks_exact(4)
        .map(|c| if o.enc.big { u32::from_be_bytes([c[0], c[1], c[2], c[3]]) } else { u32::from_le_bytes([c[0], c[1], c[2], c[3]]) } as u64)
        .collect();
    // Which fragments (by offset from the first fragment's item header) make frame `number`.
    let frames = layout.number_of_frames;
    let range: Option<(u64, u64)> = if frames == 1 {
        Some((0, u64::MAX))
    } else if offsets.len() == frames as usize {
        let i = number as usize - 1;
        Some((offsets[i], offsets.get(i + 1).copied().unwrap_or(u64::MAX)))
    } else {
        None // one fragment per frame, checked as the fragments go by
    };
    let mut pos = 0u64;
    let mut index = 0u32;
    let mut written = 0u64;
    let mut total = 0u64;
    while let Some(len) = item(src)? {
        index += 1;
        total = total.saturating_add(len as u64 + 8);
        if total > limits.max_pixel_bytes {
            return Err(Error::PixelDataTooLarge { limit: limits.max_pixel_bytes });
        }
        let wanted = match range {
            Some((from, to)) => pos >= from && pos < to,
            None => index == number,
        };
        if wanted {
            copy_exact(src, &mut out, len as u64, &mut chunk)?;
            written += len as u64;
        } else {
            copy_exact(src, &mut std::io::sink(), len as u64, &mut chunk)?;
        }
        pos += len as u64 + 8;
    }
    if range.is_none() && index != frames {
        return Err(Error::FramesUnlocatable);
    }
    if written == 0 {
        return Err(Error::NoSuchFrame { frames });
    }
    out.flush().map_err(Error::write)?;
    Ok(written)
}
