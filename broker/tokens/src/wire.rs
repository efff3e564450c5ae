//! The libmacaroons V2 binary format (FORMAT.md) and its base64 text form.
//!
//! Parsing is bounded before anything is allocated per field: every length is checked
//! against the bytes that remain and against the limits below, so a hostile token costs at
//! most one pass over at most [`MAX_TOKEN_BYTES`].

use base64::alphabet;
use base64::engine::{DecodePaddingMode, Engine, GeneralPurpose, GeneralPurposeConfig};

use crate::error::{Denial, Result};

/// Largest decoded token this crate reads or writes, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8192;
/// Most caveats in one token (first- and third-party together).
pub const MAX_CAVEATS: usize = 64;
/// Largest location, identifier or caveat id, in bytes.
pub const MAX_FIELD_BYTES: usize = 1024;

const VERSION_2: u8 = 0x02;
const EOS: u64 = 0;
const LOCATION: u64 = 1;
const IDENTIFIER: u64 = 2;
const VID: u64 = 4;
const SIGNATURE: u64 = 6;
/// Verification id of a third-party caveat: secretbox nonce (24) || tag (16) || key (32).
pub(crate) const VID_LEN: usize = 72;

/// One caveat as it sits in the token.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RawCaveat {
    /// Only third-party caveats carry a location (the discharger's).
    pub location: Option<String>,
    pub id: Vec<u8>,
    /// Present exactly for third-party caveats.
    pub vid: Option<Vec<u8>>,
}

/// The fields of a token, before any cryptography.
pub(crate) struct Decoded {
    pub location: String,
    pub identifier: Vec<u8>,
    pub caveats: Vec<RawCaveat>,
    pub signature: [u8; 32],
}

const URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_encode_padding(false).with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const STANDARD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_encode_padding(false).with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// URL-safe base64 without padding: the form Cleave emits.
pub(crate) fn encode_text(bytes: &[u8]) -> String {
    URL_SAFE.encode(bytes)
}

/// Accepts URL-safe or standard base64, padded or not (pymacaroons and libmacaroons clients
/// send either), but not a mix of the two alphabets.
pub(crate) fn decode_text(text: &str) -> Result<Vec<u8>> {
    if text.len() > MAX_TOKEN_BYTES.div_ceil(3) * 4 {
        return Err(Denial::TooLarge("token text"));
    }
    if text.is_empty() {
        return Err(Denial::Malformed("empty token"));
    }
    let first = text.as_bytes()[0];
    if first == b'{' {
        return Err(Denial::UnsupportedFormat);
    }
    let url = text.bytes().any(|b| b == b'-' || b == b'_');
    let std = text.bytes().any(|b| b == b'+' || b == b'/');
    let engine = match (url, std) {
        (true, true) => return Err(Denial::Malformed("mixed base64 alphabets")),
        (_, true) => &STANDARD,
        _ => &URL_SAFE,
    };
    engine.decode(text).map_err(|_| Denial::Malformed("not base64"))
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// An unsigned LEB128 varint, minimal encoding only, at most `max`.
    fn varint(&mut self, max: u64) -> Result<u64> {
        let mut n: u64 = 0;
        for i in 0..10usize {
            let (&b, rest) = self.buf.split_first().ok_or(Denial::Malformed("truncated field header"))?;
            self.buf = rest;
            let part = u64::from(b & 0x7f);
            let shift = 7 * i as u32;
            if shift == 63 && part > 1 {
                return Err(Denial::TooLarge("varint"));
            }
            n |= part << shift;
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(Denial::Malformed("non-minimal varint"));
                }
                return if n > max { Err(Denial::TooLarge("field")) } else { Ok(n) };
            }
        }
        Err(Denial::TooLarge("varint"))
    }

    /// One field: (type, payload). EOS has no payload.
    fn field(&mut self) -> Result<(u64, &'a [u8])> {
        let ty = self.varint(SIGNATURE)?;
        if ty == EOS {
            return Ok((EOS, &[]));
        }
        if !matches!(ty, LOCATION | IDENTIFIER | VID | SIGNATURE) {
            return Err(Denial::Malformed("unknown field type"));
        }
        let len = self.varint(MAX_FIELD_BYTES as u64)? as usize;
        if len > self.buf.len() {
            return Err(Denial::Malformed("field extends past end of token"));
        }
        let (data, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok((ty, data))
    }

    /// Fields up to the next EOS, each type strictly greater than the one before.
    fn section(&mut self) -> Result<Vec<(u64, &'a [u8])>> {
        let mut out = Vec::with_capacity(3);
        loop {
            let (ty, data) = self.field()?;
            if ty == EOS {
                return Ok(out);
            }
            if out.last().is_some_and(|(prev, _)| *prev >= ty) {
                return Err(Denial::Malformed("fields out of order"));
            }
            if out.len() == 3 {
                return Err(Denial::Malformed("too many fields in section"));
            }
            out.push((ty, data));
        }
    }
}

fn utf8(b: &[u8], what: &'static str) -> Result<String> {
    String::from_utf8(b.to_vec()).map_err(|_| Denial::Malformed(what))
}

pub(crate) fn decode_binary(bytes: &[u8]) -> Result<Decoded> {
    if bytes.len() > MAX_TOKEN_BYTES {
        return Err(Denial::TooLarge("token"));
    }
    let (&version, rest) = bytes.split_first().ok_or(Denial::Malformed("empty token"))?;
    if version != VERSION_2 {
        // V1 starts with an ASCII hex length; anything else is unknown. Both fail closed.
        return Err(Denial::UnsupportedFormat);
    }
    let mut r = Reader { buf: rest };
    let header = r.section()?;
    let (location, identifier) = match header.as_slice() {
        [(IDENTIFIER, id)] => (String::new(), *id),
        [(LOCATION, loc), (IDENTIFIER, id)] => (utf8(loc, "location is not UTF-8")?, *id),
        _ => return Err(Denial::Malformed("invalid header")),
    };
    if identifier.is_empty() {
        return Err(Denial::Malformed("empty identifier"));
    }
    let mut caveats = Vec::new();
    loop {
        let section = r.section()?;
        let caveat = match section.as_slice() {
            [] => break,
            [(IDENTIFIER, id)] => RawCaveat { location: None, id: id.to_vec(), vid: None },
            [(IDENTIFIER, id), (VID, vid)] => RawCaveat { location: None, id: id.to_vec(), vid: Some(vid.to_vec()) },
            [(LOCATION, loc), (IDENTIFIER, id), (VID, vid)] => RawCaveat {
                location: Some(utf8(loc, "caveat location is not UTF-8")?),
                id: id.to_vec(),
                vid: Some(vid.to_vec()),
            },
            _ => return Err(Denial::Malformed("invalid caveat section")),
        };
        if caveat.id.is_empty() {
            return Err(Denial::Malformed("empty caveat id"));
        }
        if caveat.vid.as_ref().is_some_and(|v| v.len() != VID_LEN) {
            return Err(Denial::Malformed("verification id has the wrong length"));
        }
        if caveats.len() == MAX_CAVEATS {
            return Err(Denial::TooLarge("caveat count"));
        }
        caveats.push(caveat);
    }
    let (ty, sig) = r.field()?;
    if ty != SIGNATURE {
        return Err(Denial::Malformed("signature missing"));
    }
    let signature: [u8; 32] = sig.try_into().map_err(|_| Denial::Malformed("signature is not 32 bytes"))?;
    if !r.buf.is_empty() {
        return Err(Denial::Malformed("trailing bytes after signature"));
    }
    Ok(Decoded { location, identifier: identifier.to_vec(), caveats, signature })
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn put_field(out: &mut Vec<u8>, ty: u64, data: &[u8]) {
    put_varint(out, ty);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// Writes the V2 binary form. The header location is written only when non-empty (it is not
/// covered by the signature, and pymacaroons and libmacaroons read its absence as empty).
pub(crate) fn encode_binary(location: &str, identifier: &[u8], caveats: &[RawCaveat], signature: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + identifier.len() + caveats.iter().map(|c| c.id.len() + 8).sum::<usize>());
    out.push(VERSION_2);
    if !location.is_empty() {
        put_field(&mut out, LOCATION, location.as_bytes());
    }
    put_field(&mut out, IDENTIFIER, identifier);
    out.push(EOS as u8);
    for c in caveats {
        if let Some(loc) = &c.location {
            put_field(&mut out, LOCATION, loc.as_bytes());
        }
        put_field(&mut out, IDENTIFIER, &c.id);
        if let Some(vid) = &c.vid {
            put_field(&mut out, VID, vid);
        }
        out.push(EOS as u8);
    }
    out.push(EOS as u8);
    put_field(&mut out, SIGNATURE, signature);
    out
}
