//! A bounded, streaming reader of DICOM element structure.
//!
//! It reads element headers and holds values as raw bytes, never interpreting them unless
//! asked: de-identification decides per attribute, and whatever is kept is written back
//! byte for byte. Every length is checked against what is left of the header budget before
//! a byte is allocated, sequence nesting is bounded, and the pixel data are left in the
//! stream for the caller to pass through.
use crate::error::{DeflateFault, Error};
use dicom_core::dictionary::{DataDictionary, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use std::io::Read;

pub(crate) const ITEM: u32 = 0xFFFE_E000;
pub(crate) const ITEM_DELIM: u32 = 0xFFFE_E00D;
pub(crate) const SEQ_DELIM: u32 = 0xFFFE_E0DD;
pub(crate) const UNDEFINED: u32 = 0xFFFF_FFFF;
pub(crate) const PIXEL_DATA: u32 = 0x7FE0_0010;

/// True for the three pixel data attributes, which are streamed rather than held.
pub(crate) fn is_pixel_data(tag: u32) -> bool {
    matches!(tag, 0x7FE0_0008 | 0x7FE0_0009 | PIXEL_DATA)
}

/// How a dataset is encoded on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Enc {
    pub explicit: bool,
    pub big: bool,
}

pub(crate) const EXPLICIT_LE: Enc = Enc { explicit: true, big: false };
pub(crate) const IMPLICIT_LE: Enc = Enc { explicit: false, big: false };

/// VRs whose explicit encoding has a 4-byte length.
pub(crate) fn long_length(vr: VR) -> bool {
    use VR::*;
    matches!(vr, OB | OD | OF | OL | OV | OW | SQ | UC | UR | UT | UN | SV | UV)
}

/// An element value as held in memory.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    Bytes(Vec<u8>),
    /// A sequence; its items are encoded in `inner` (implicit VR little endian inside an
    /// explicit UN of undefined length, as PS3.5 §6.2.2 prescribes; otherwise the dataset's).
    Seq { items: Vec<Vec<Elem>>, inner: Enc },
    /// Encapsulated pixel data nested inside a sequence (an icon image, say).
    Fragments(Vec<Vec<u8>>),
}

#[derive(Clone, Debug)]
pub(crate) struct Elem {
    pub tag: u32,
    pub vr: VR,
    pub value: Value,
}

/// An element header as read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Header {
    pub tag: u32,
    pub vr: VR,
    pub len: u32,
}

/// The VR the standard dictionary gives a tag, or `None` if it does not know it.
pub(crate) fn dictionary_vr(tag: u32) -> Option<VR> {
    let entry = StandardDataDictionary.by_tag(Tag((tag >> 16) as u16, tag as u16))?;
    Some(match entry.vr {
        VirtualVr::Exact(vr) => vr,
        VirtualVr::Xs => VR::US,
        VirtualVr::Ox | VirtualVr::Px | VirtualVr::Lt => VR::OW,
        _ => VR::UN,
    })
}

/// A reader with push-back (to peek at the next tag) and a count of bytes consumed.
pub(crate) struct Source<R> {
    inner: R,
    pushback: Vec<u8>,
    pub consumed: u64,
}

impl<R: Read> Source<R> {
    pub fn new(inner: R) -> Self {
        Source { inner, pushback: Vec::new(), consumed: 0 }
    }

    pub fn unread(&mut self, bytes: &[u8]) {
        // Push-back is a stack: the last bytes pushed are read first.
        let mut v = bytes.to_vec();
        v.extend_from_slice(&self.pushback);
        self.pushback = v;
        self.consumed -= bytes.len() as u64;
    }

    /// Fill `buf`, or report how many bytes were available before the end of input.
    pub fn read_full(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match self.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.pushback.is_empty() {
            let n = buf.len().min(self.pushback.len());
            buf[..n].copy_from_slice(&self.pushback[..n]);
            self.pushback.drain(..n);
            self.consumed += n as u64;
            return Ok(n);
        }
        let n = self.inner.read(buf)?;
        self.consumed += n as u64;
        Ok(n)
    }
}

/// Inflates the raw deflate stream of a deflated transfer syntax, refusing to produce more
/// than `cap` bytes.
pub(crate) struct CappedInflate<R: Read> {
    inner: flate2::read::DeflateDecoder<R>,
    left: u64,
}

impl<R: Read> CappedInflate<R> {
    pub fn new(inner: R, cap: u64) -> Self {
        CappedInflate { inner: flate2::read::DeflateDecoder::new(inner), left: cap }
    }
}

impl<R: Read> Read for CappedInflate<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // Anything beyond the cap (even one byte) means the limit was exceeded.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe) {
                Ok(0) => Ok(0),
                Ok(_) => Err(std::io::Error::other(DeflateFault::Cap)),
                Err(_) => Err(std::io::Error::other(DeflateFault::Corrupt)),
            };
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        match self.inner.read(&mut buf[..want]) {
            Ok(n) => {
                self.left -= n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Err(e),
            Err(_) => Err(std::io::Error::other(DeflateFault::Corrupt)),
        }
    }
}

/// Parsing state shared by the whole instance: the header budget and the nesting limit.
pub(crate) struct Budget {
    /// `consumed` may not pass this offset while reading header (non-pixel) elements.
    pub until: u64,
    pub limit: u64,
    pub max_depth: u32,
}

impl Budget {
    fn check<R>(&self, src: &Source<R>, extra: u64) -> Result<(), Error> {
        if src.consumed.saturating_add(extra) > self.until {
            return Err(Error::HeaderTooLarge { limit: self.limit });
        }
        Ok(())
    }
}

fn u16_at(b: &[u8], big: bool) -> u16 {
    let a = [b[0], b[1]];
    if big { u16::from_be_bytes(a) } else { u16::from_le_bytes(a) }
}
fn u32_at(b: &[u8], big: bool) -> u32 {
    let a = [b[0], b[1], b[2], b[3]];
    if big { u32::from_be_bytes(a) } else { u32::from_le_bytes(a) }
}

/// Read one element header. `Ok(None)` at a clean end of input (no byte left).
pub(crate) fn read_header<R: Read>(src: &mut Source<R>, enc: Enc, what: &'static str) -> Result<Option<Header>, Error> {
    let mut t = [0u8; 4];
    let n = src.read_full(&mut t).map_err(|e| Error::read(what, e))?;
    if n == 0 {
        return Ok(None);
    }
    if n < 4 {
        return Err(Error::Truncated { what });
    }
    let tag = ((u16_at(&t[0..2], enc.big) as u32) << 16) | u16_at(&t[2..4], enc.big) as u32;
    let mut buf = [0u8; 4];
    if tag >> 16 == 0xFFFE {
        src.read_exact(&mut buf).map_err(|e| Error::read(what, e))?;
        return Ok(Some(Header { tag, vr: VR::UN, len: u32_at(&buf, enc.big) }));
    }
    if !enc.explicit {
        src.read_exact(&mut buf).map_err(|e| Error::read(what, e))?;
        let vr = dictionary_vr(tag).unwrap_or(VR::UN);
        return Ok(Some(Header { tag, vr, len: u32_at(&buf, enc.big) }));
    }
    let mut v = [0u8; 2];
    src.read_exact(&mut v).map_err(|e| Error::read(what, e))?;
    let vr = VR::from_binary(v).ok_or_else(|| Error::malformed(tag, "unknown value representation"))?;
    let len = if long_length(vr) {
        // Two reserved bytes, then a 4-byte length.
        let mut l = [0u8; 6];
        src.read_exact(&mut l).map_err(|e| Error::read(what, e))?;
        u32_at(&l[2..], enc.big)
    } else {
        let mut l = [0u8; 2];
        src.read_exact(&mut l).map_err(|e| Error::read(what, e))?;
        u16_at(&l, enc.big) as u32
    };
    Ok(Some(Header { tag, vr, len }))
}

/// Why a run of elements ended.
pub(crate) enum Stop {
    /// End of input (only valid at the top level).
    Eof,
    /// A pixel data header at the top level; its value is still in the stream.
    Pixel(Header),
    /// An item delimiter, or the end of a defined-length item.
    EndOfItem,
}

/// Where a run of elements is to end.
#[derive(Clone, Copy)]
pub(crate) enum End {
    TopLevel,
    At(u64),
    ItemDelimiter,
}

/// Read elements until `end`. At the top level, stops at the first pixel data element.
pub(crate) fn read_elements<R: Read>(
    src: &mut Source<R>,
    enc: Enc,
    depth: u32,
    end: End,
    budget: &Budget,
) -> Result<(Vec<Elem>, Stop), Error> {
    let mut out = Vec::new();
    loop {
        if let End::At(limit) = end {
            if src.consumed == limit {
                return Ok((out, Stop::EndOfItem));
            }
            if src.consumed > limit {
                let tag = out.last().map(|e: &Elem| e.tag).unwrap_or(ITEM);
                return Err(Error::malformed(tag, "an element runs past the end of its item"));
            }
        }
        budget.check(src, 0)?;
        let Some(h) = read_header(src, enc, "an element header")? else {
            return match end {
                End::TopLevel => Ok((out, Stop::Eof)),
                _ => Err(Error::Truncated { what: "a sequence item" }),
            };
        };
        match h.tag {
            ITEM_DELIM => {
                return match end {
                    End::ItemDelimiter if h.len == 0 => Ok((out, Stop::EndOfItem)),
                    _ => Err(Error::malformed(h.tag, "unexpected item delimiter")),
                }
            }
            ITEM | SEQ_DELIM => return Err(Error::malformed(h.tag, "item or sequence delimiter outside a sequence")),
            _ => {}
        }
        if matches!(end, End::TopLevel) && depth == 0 && is_pixel_data(h.tag) {
            return Ok((out, Stop::Pixel(h)));
        }
        let value = read_value(src, enc, depth, h, budget)?;
        out.push(Elem { tag: h.tag, vr: h.vr, value });
    }
}

fn read_value<R: Read>(src: &mut Source<R>, enc: Enc, depth: u32, h: Header, budget: &Budget) -> Result<Value, Error> {
    let undefined = h.len == UNDEFINED;
    if undefined && is_pixel_data(h.tag) {
        return read_fragments(src, enc, h.tag, budget).map(Value::Fragments);
    }
    let implicit_sq = !enc.explicit && (undefined || h.vr == VR::SQ);
    if h.vr == VR::SQ || implicit_sq || (undefined && h.vr == VR::UN) {
        let inner = if enc.explicit && h.vr == VR::UN { IMPLICIT_LE } else { enc };
        if depth + 1 > budget.max_depth {
            return Err(Error::TooDeep { limit: budget.max_depth });
        }
        let items = read_items(src, inner, depth + 1, h, budget)?;
        return Ok(Value::Seq { items, inner });
    }
    if undefined {
        return Err(Error::malformed(h.tag, "undefined length on an element that is not a sequence"));
    }
    Ok(Value::Bytes(read_bytes(src, h.len, budget, "an element value")?))
}

fn read_bytes<R: Read>(src: &mut Source<R>, len: u32, budget: &Budget, what: &'static str) -> Result<Vec<u8>, Error> {
    budget.check(src, len as u64)?;
    let mut v = Vec::new();
    // `take` allocates as bytes arrive, so a lying length cannot make us allocate up front.
    let got = src.by_ref().take(len as u64).read_to_end(&mut v).map_err(|e| Error::read(what, e))?;
    if got as u64 != len as u64 {
        return Err(Error::Truncated { what });
    }
    Ok(v)
}

fn read_items<R: Read>(src: &mut Source<R>, enc: Enc, depth: u32, seq: Header, budget: &Budget) -> Result<Vec<Vec<Elem>>, Error> {
    let end = if seq.len == UNDEFINED { None } else { Some(src.consumed + seq.len as u64) };
    if let Some(e) = end {
        budget.check(src, e - src.consumed)?;
    }
    let mut items = Vec::new();
    loop {
        if let Some(e) = end {
            if src.consumed == e {
                return Ok(items);
            }
            if src.consumed > e {
                return Err(Error::malformed(seq.tag, "an item runs past the end of its sequence"));
            }
        }
        budget.check(src, 0)?;
        let h = read_header(src, enc, "a sequence")?.ok_or(Error::Truncated { what: "a sequence" })?;
        match h.tag {
            ITEM => {
                let run_end = if h.len == UNDEFINED { End::ItemDelimiter } else { End::At(src.consumed + h.len as u64) };
                let (elems, _) = read_elements(src, enc, depth, run_end, budget)?;
                items.push(elems);
            }
            SEQ_DELIM if end.is_none() => {
                if h.len != 0 {
                    return Err(Error::malformed(seq.tag, "sequence delimiter with a non-zero length"));
                }
                return Ok(items);
            }
            _ => return Err(Error::malformed(seq.tag, "a sequence holds something other than items")),
        }
    }
}

fn read_fragments<R: Read>(src: &mut Source<R>, enc: Enc, tag: u32, budget: &Budget) -> Result<Vec<Vec<u8>>, Error> {
    let mut frags = Vec::new();
    loop {
        budget.check(src, 0)?;
        let h = read_header(src, enc, "encapsulated pixel data")?.ok_or(Error::Truncated { what: "encapsulated pixel data" })?;
        match h.tag {
            ITEM if h.len != UNDEFINED => frags.push(read_bytes(src, h.len, budget, "a pixel data fragment")?),
            SEQ_DELIM => return Ok(frags),
            _ => return Err(Error::malformed(tag, "encapsulated pixel data hold something other than fragments")),
        }
    }
}

