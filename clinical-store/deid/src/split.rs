//! The streaming split of one Part 10 instance: read the header up to the pixel data,
//! de-identify it, write it, then pass the pixel data from the reader to the writer
//! unchanged, and finally de-identify whatever follows the pixel data.
use crate::deid::{self, padded, Ctx};
use crate::error::Error;
use crate::identity::{self, ClinicalSummary, ExtractedIdentity, View};
use crate::options::{Limits, Options};
use crate::parse::{self, Budget, CappedInflate, Elem, Enc, End, Header, Source, Stop, Value, EXPLICIT_LE};
use crate::uid::UidMapper;
use crate::write::{self, Counting};
use dicom_core::VR;
use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use std::io::{Read, Write};

/// The Implementation Class UID written into every output's file meta information.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.30929347590923681634734594704452961967";
/// The Implementation Version Name written beside it.
pub const IMPLEMENTATION_VERSION_NAME: &str = "CLEAVE_DEID_1";
/// The De-identification Method (0012,0063) written into every output.
pub const DEIDENTIFICATION_METHOD: &str = "Cleave cleave-deid/1: PS3.15 Annex E Table E.1-1";

const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
/// Bytes of file meta information that will be read before giving up.
const MAX_META_BYTES: u64 = 64 * 1024;
/// Copy buffer for the pixel data: at most this much is read before it is written on.
///
/// Why not more: the writer de-identifies nothing here but seals and writes what it gets,
/// and with a 256 KiB buffer filled completely before each write, up to that much of an
/// instance arriving over the network waited unsealed until the buffer filled, then was
/// all still to seal after the last byte (and was zeroed and wiped for every instance).
const COPY_CHUNK: usize = 64 * 1024;

/// The result of a successful split.
#[derive(Debug)]
#[non_exhaustive]
pub struct SplitOutcome {
    /// For the identity vault only.
    pub identity: ExtractedIdentity,
    /// For the clinical store's index.
    pub summary: ClinicalSummary,
    /// Bytes written to the output (the whole de-identified Part 10 file).
    pub bytes_written: u64,
}

/// How the dataset after the file meta information is encoded.
pub(crate) struct Syntax {
    pub enc: Enc,
    pub deflated: bool,
}

pub(crate) fn classify(uid: &str) -> Result<Syntax, Error> {
    if TransferSyntaxRegistry.get(uid).is_none() {
        return Err(Error::UnknownTransferSyntax);
    }
    // Every registered transfer syntax but two is explicit VR little endian (PS3.5 §10);
    // three deflate the whole dataset.
    Ok(match uid {
        "1.2.840.10008.1.2" => Syntax { enc: parse::IMPLICIT_LE, deflated: false },
        "1.2.840.10008.1.2.2" => Syntax { enc: Enc { explicit: true, big: true }, deflated: false },
        "1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.4.95" | "1.2.840.10008.1.2.4.205" => {
            Syntax { enc: EXPLICIT_LE, deflated: true }
        }
        _ => Syntax { enc: EXPLICIT_LE, deflated: false },
    })
}

fn check_options(opts: &Options) -> Result<(), Error> {
    if opts.retain_long_modified_dates {
        if opts.retain_long_full_dates {
            return Err(Error::InvalidOptions { why: "full dates and modified dates exclude each other" });
        }
        if opts.date_offset_days == 0 || opts.date_offset_days.unsigned_abs() > crate::dates::MAX_OFFSET_DAYS {
            return Err(Error::InvalidOptions { why: "the date offset must be non-zero and at most 100 years" });
        }
    }
    if opts.retain_safe_private {
        return Err(Error::UnsupportedOption { option: "Retain Safe Private" });
    }
    if opts.clean_graphics {
        return Err(Error::UnsupportedOption { option: "Clean Graphics" });
    }
    Ok(())
}

/// Split one DICOM Part 10 instance read from `input`.
///
/// Writes the de-identified Part 10 file (preamble, new file meta information, the dataset
/// de-identified under `opts`, pixel data byte for byte) to `out` and returns the identity
/// attributes and the summary. `pseudonym` becomes the Patient ID of the output (1 to 64
/// printable ASCII characters, no backslash); Patient Name is emptied. UIDs are replaced by
/// `uids` unless `opts.retain_uids`.
///
/// On `Err`, `out` has received part of a file: the caller must discard it (the clinical
/// store only commits its blob when this returns `Ok`). Memory use is bounded by
/// `limits.max_header_bytes` (times a small constant) whatever the pixel data size.
pub fn split<R: Read, W: Write>(
    input: R,
    out: W,
    opts: &Options,
    uids: &UidMapper,
    pseudonym: &str,
    limits: &Limits,
) -> Result<SplitOutcome, Error> {
    check_options(opts)?;
    let valid = (1..=64).contains(&pseudonym.len())
        && pseudonym.bytes().all(|b| (0x20..0x7F).contains(&b) && b != b'\\')
        && !pseudonym.trim().is_empty();
    if !valid {
        return Err(Error::InvalidPseudonym);
    }
    let mut src = Source::new(input);
    let mut preamble = [0u8; 132];
    let n = src.read_full(&mut preamble).map_err(|e| Error::read("the preamble", e))?;
    if n < 132 || preamble.get(128..132) != Some(b"DICM".as_slice()) {
        return Err(Error::NotPart10);
    }
    let meta = read_meta(&mut src)?;
    let meta_view = View::new(&meta, false)?;
    let ts = meta_view.ascii(0x0002_0010).ok_or(Error::BadMeta { what: "no Transfer Syntax UID (0002,0010)" })?;
    let syntax = classify(&ts)?;
    let out_ts = if syntax.deflated { EXPLICIT_VR_LITTLE_ENDIAN.to_string() } else { ts };
    let job = Job { opts, uids, pseudonym, limits, enc: syntax.enc, out_ts, meta_class: meta_view.ascii(0x0002_0002) };
    let out = Counting { inner: out, written: 0 };
    if syntax.deflated {
        job.run(Source::new(CappedInflate::new(src, limits.max_inflated_bytes)), out)
    } else {
        job.run(src, out)
    }
}

pub(crate) fn read_meta<R: Read>(src: &mut Source<R>) -> Result<Vec<Elem>, Error> {
    let mut meta = Vec::new();
    loop {
        let mut t = [0u8; 4];
        let n = src.read_full(&mut t).map_err(|e| Error::read("the file meta information", e))?;
        let group = u16::from_le_bytes([t[0], t[1]]);
        if n == 4 && group == 0x0002 {
            src.unread(&t);
        } else {
            src.unread(&t[..n]);
            break;
        }
        if src.consumed > 132 + MAX_META_BYTES {
            return Err(Error::BadMeta { what: "the file meta information is implausibly large" });
        }
        let h = parse::read_header(src, EXPLICIT_LE, "the file meta information")?
            .ok_or(Error::Truncated { what: "the file meta information" })?;
        if h.len == parse::UNDEFINED || h.len as u64 > MAX_META_BYTES {
            return Err(Error::BadMeta { what: "an element has an undefined or implausible length" });
        }
        let mut v = Vec::new();
        src.by_ref().take(h.len as u64).read_to_end(&mut v).map_err(|e| Error::read("the file meta information", e))?;
        if v.len() as u64 != h.len as u64 {
            return Err(Error::Truncated { what: "the file meta information" });
        }
        meta.push(Elem { tag: h.tag, vr: h.vr, value: Value::Bytes(v) });
    }
    if meta.is_empty() {
        return Err(Error::BadMeta { what: "no file meta information group (0002) after the DICM prefix" });
    }
    Ok(meta)
}

struct Job<'a> {
    opts: &'a Options,
    uids: &'a UidMapper,
    pseudonym: &'a str,
    limits: &'a Limits,
    enc: Enc,
    out_ts: String,
    meta_class: Option<String>,
}

fn bytes_elem(tag: u32, vr: VR, v: &[u8]) -> Elem {
    let pad = if vr == VR::UI { 0 } else { b' ' };
    Elem { tag, vr, value: Value::Bytes(padded(v.to_vec(), pad)) }
}

impl Job<'_> {
    fn run<R: Read, W: Write>(self, mut src: Source<R>, mut out: Counting<W>) -> Result<SplitOutcome, Error> {
        let limit = self.limits.max_header_bytes;
        let start = src.consumed;
        let budget = Budget { until: start.saturating_add(limit), limit, max_depth: self.limits.max_depth };
        let (elems, stop) = parse::read_elements(&mut src, self.enc, 0, End::TopLevel, &budget)?;
        let used = src.consumed - start;

        let orig = View::new(&elems, self.enc.big)?;
        let identity = identity::extract(&orig)?;
        let age = identity::age_at_study(&orig).map(|a| if self.opts.retain_patient_characteristics { a } else { a.min(90) });
        let sex = identity::sex(&orig);
        let not_for_research = identity::not_for_research(&orig);

        let mut ctx = Ctx { opts: self.opts, uids: self.uids, pseudonym: self.pseudonym, cleaned_words: false };
        let mut header = deid::deidentify(elems, &mut ctx)?;
        self.add_markers(&mut header);
        header.sort_by_key(|e| e.tag);

        let outv = View::new(&header, self.enc.big)?;
        let uid = |tag| outv.ascii(tag).ok_or(Error::MissingAttribute { keyword: identity::keyword(tag) });
        let sop_instance_uid = uid(0x0008_0018)?;
        let sop_class_uid = match outv.ascii(0x0008_0016) {
            Some(c) => c,
            None => self.meta_class.clone().ok_or(Error::MissingAttribute { keyword: "SOPClassUID" })?,
        };
        let text = |tag| outv.ascii(tag);
        let summary = ClinicalSummary {
            study_instance_uid: uid(0x0020_000D)?,
            series_instance_uid: uid(0x0020_000E)?,
            sop_instance_uid: sop_instance_uid.clone(),
            sop_class_uid: sop_class_uid.clone(),
            transfer_syntax_uid: self.out_ts.clone(),
            modality: text(0x0008_0060),
            study_date: text(0x0008_0020),
            body_part_examined: text(0x0018_0015),
            age_years: age,
            sex,
            number_of_frames: text(0x0028_0008).and_then(|n| n.parse().ok()),
            rows: outv.us(0x0028_0010),
            columns: outv.us(0x0028_0011),
            study_description: text(0x0008_1030),
            series_description: text(0x0008_103E),
            descriptions_cleaned: ctx.cleaned_words,
            not_for_research,
        };

        // The file: preamble, meta, de-identified header.
        let mut buf = vec![0u8; 128];
        buf.extend_from_slice(b"DICM");
        self.write_meta(&mut buf, &sop_class_uid, &sop_instance_uid)?;
        write::elements(&mut buf, self.enc, &header)?;
        out.write_all(&buf).map_err(Error::write)?;
        drop(buf);
        drop(header);

        if let Stop::Pixel(h) = stop {
            self.stream_pixels(&mut src, &mut out, h)?;
            // Whatever follows the pixel data shares what is left of the header budget.
            let budget = Budget { until: src.consumed.saturating_add(limit.saturating_sub(used)), ..budget };
            let (trailing, stop) = parse::read_elements(&mut src, self.enc, 0, End::TopLevel, &budget)?;
            if let Stop::Pixel(h) = stop {
                return Err(Error::malformed(h.tag, "a second pixel data element"));
            }
            if let Some(e) = trailing.iter().find(|e| e.tag <= h.tag) {
                return Err(Error::malformed(e.tag, "an element after the pixel data is out of order"));
            }
            let trailing = deid::deidentify(trailing, &mut ctx)?;
            let mut buf = Vec::new();
            write::elements(&mut buf, self.enc, &trailing)?;
            out.write_all(&buf).map_err(Error::write)?;
        }
        out.flush().map_err(Error::write)?;
        Ok(SplitOutcome { identity, summary, bytes_written: out.written })
    }

    /// The attributes PS3.15 §E.1.1 asks a de-identifier to add, and the dummy patient.
    fn add_markers(&self, header: &mut Vec<Elem>) {
        const OURS: [u32; 6] = [0x0010_0010, 0x0010_0020, 0x0012_0062, 0x0012_0063, 0x0012_0064, 0x0028_0303];
        header.retain(|e| !OURS.contains(&e.tag));
        let o = self.opts;
        let mut codes: Vec<(&str, &str)> = vec![("113100", "Basic Application Confidentiality Profile")];
        let optional = [
            (o.clean_structured_content, "113104", "Clean Structured Content Option"),
            (o.clean_descriptors, "113105", "Clean Descriptors Option"),
            (o.retain_long_full_dates, "113106", "Retain Longitudinal Temporal Information Full Dates Option"),
            (o.retain_long_modified_dates, "113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
            (o.retain_patient_characteristics, "113108", "Retain Patient Characteristics Option"),
            (o.retain_device_identity, "113109", "Retain Device Identity Option"),
            (o.retain_uids, "113110", "Retain UIDs Option"),
            (o.retain_institution_identity, "113112", "Retain Institution Identity Option"),
        ];
        codes.extend(optional.iter().filter(|(on, _, _)| *on).map(|(_, c, m)| (*c, *m)));
        let items = codes
            .iter()
            .map(|(code, meaning)| {
                vec![
                    bytes_elem(0x0008_0100, VR::SH, code.as_bytes()),
                    bytes_elem(0x0008_0102, VR::SH, b"DCM"),
                    bytes_elem(0x0008_0104, VR::LO, meaning.as_bytes()),
                ]
            })
            .collect();
        header.push(bytes_elem(0x0010_0010, VR::PN, b""));
        header.push(bytes_elem(0x0010_0020, VR::LO, self.pseudonym.as_bytes()));
        header.push(bytes_elem(0x0012_0062, VR::CS, b"YES"));
        header.push(bytes_elem(0x0012_0063, VR::LO, DEIDENTIFICATION_METHOD.as_bytes()));
        header.push(Elem { tag: 0x0012_0064, vr: VR::SQ, value: Value::Seq { items, inner: self.enc } });
        let temporal: &[u8] = match (o.retain_long_full_dates, o.retain_long_modified_dates) {
            (true, _) => b"UNMODIFIED",
            (false, true) => b"MODIFIED",
            (false, false) => b"REMOVED",
        };
        header.push(bytes_elem(0x0028_0303, VR::CS, temporal));
    }

    fn write_meta(&self, buf: &mut Vec<u8>, class: &str, instance: &str) -> Result<(), Error> {
        let meta = [
            Elem { tag: 0x0002_0001, vr: VR::OB, value: Value::Bytes(vec![0, 1]) },
            bytes_elem(0x0002_0002, VR::UI, class.as_bytes()),
            bytes_elem(0x0002_0003, VR::UI, instance.as_bytes()),
            bytes_elem(0x0002_0010, VR::UI, self.out_ts.as_bytes()),
            bytes_elem(0x0002_0012, VR::UI, IMPLEMENTATION_CLASS_UID.as_bytes()),
            bytes_elem(0x0002_0013, VR::SH, IMPLEMENTATION_VERSION_NAME.as_bytes()),
        ];
        let mut body = Vec::new();
        write::elements(&mut body, EXPLICIT_LE, &meta)?;
        let len = u32::try_from(body.len()).map_err(|_| Error::BadMeta { what: "file meta information too long" })?;
        write::header(buf, EXPLICIT_LE, 0x0002_0000, VR::UL, 4)?;
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&body);
        Ok(())
    }

    fn stream_pixels<R: Read, W: Write>(&self, src: &mut Source<R>, out: &mut W, h: Header) -> Result<(), Error> {
        stream_pixel_data(src, out, h, self.enc, self.limits.max_pixel_bytes)
    }
}

/// Copy one pixel data element whose header `h` was just read from `src` to `out`, header
/// included, without holding it: native data in chunks, encapsulated data fragment by
/// fragment. Refuses more than `max` bytes. Shared by the split and the re-identification.
pub(crate) fn stream_pixel_data<R: Read, W: Write>(src: &mut Source<R>, out: &mut W, h: Header, enc: Enc, max: u64) -> Result<(), Error> {
    let mut hdr = Vec::with_capacity(12);
    write::header(&mut hdr, enc, h.tag, h.vr, h.len)?;
    out.write_all(&hdr).map_err(Error::write)?;
    let mut chunk = vec![0u8; COPY_CHUNK];
    if h.len != parse::UNDEFINED {
        if h.len as u64 > max {
            return Err(Error::PixelDataTooLarge { limit: max });
        }
        return copy_exact(src, out, h.len as u64, &mut chunk);
    }
    // Encapsulated: an item per fragment (the first is the offset table) until the
    // sequence delimiter. Fragments are copied through, never held whole.
    let mut total = 0u64;
    loop {
        let f = parse::read_header(src, enc, "encapsulated pixel data")?
            .ok_or(Error::Truncated { what: "encapsulated pixel data" })?;
        hdr.clear();
        match f.tag {
            parse::ITEM if f.len != parse::UNDEFINED => {
                total = total.saturating_add(f.len as u64 + 8);
                if total > max {
                    return Err(Error::PixelDataTooLarge { limit: max });
                }
                write::header(&mut hdr, enc, parse::ITEM, VR::UN, f.len)?;
                out.write_all(&hdr).map_err(Error::write)?;
                copy_exact(src, out, f.len as u64, &mut chunk)?;
            }
            parse::SEQ_DELIM => {
                write::header(&mut hdr, enc, parse::SEQ_DELIM, VR::UN, 0)?;
                return out.write_all(&hdr).map_err(Error::write);
            }
            _ => return Err(Error::malformed(h.tag, "encapsulated pixel data hold something other than fragments")),
        }
    }
}

/// Copies `n` bytes, passing each read on as it comes rather than filling `chunk` first,
/// so that what has arrived is written while the rest is still on its way.
pub(crate) fn copy_exact<R: Read, W: Write>(src: &mut Source<R>, out: &mut W, mut n: u64, chunk: &mut [u8]) -> Result<(), Error> {
    while n > 0 {
        let want = chunk.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        let buf = &mut chunk[..want];
        let got = loop {
            match src.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                r => break r.map_err(|e| Error::read("the pixel data", e))?,
            }
        };
        if got == 0 {
            return Err(Error::Truncated { what: "the pixel data" });
        }
        out.write_all(&buf[..got]).map_err(Error::write)?;
        n -= got as u64;
    }
    Ok(())
}
