//! Writes elements back in the encoding they came in. Sequences and items are always
//! written with undefined length, which every transfer syntax allows and which spares
//! recomputing lengths after de-identification changed the content.
use crate::error::Error;
use crate::parse::{long_length, Elem, Enc, Value, ITEM, ITEM_DELIM, SEQ_DELIM, UNDEFINED};
use dicom_core::VR;
use std::io::Write;

/// Counts what goes through, so the caller can report `bytes_written`.
pub(crate) struct Counting<W> {
    pub inner: W,
    pub written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn put_u16(out: &mut Vec<u8>, v: u16, big: bool) {
    out.extend_from_slice(&if big { v.to_be_bytes() } else { v.to_le_bytes() });
}
fn put_u32(out: &mut Vec<u8>, v: u32, big: bool) {
    out.extend_from_slice(&if big { v.to_be_bytes() } else { v.to_le_bytes() });
}

/// Encode one element header into `out`.
pub(crate) fn header(out: &mut Vec<u8>, enc: Enc, tag: u32, vr: VR, len: u32) -> Result<(), Error> {
    put_u16(out, (tag >> 16) as u16, enc.big);
    put_u16(out, tag as u16, enc.big);
    if tag >> 16 == 0xFFFE || !enc.explicit {
        put_u32(out, len, enc.big);
        return Ok(());
    }
    out.extend_from_slice(&vr.to_bytes());
    if long_length(vr) {
        out.extend_from_slice(&[0, 0]);
        put_u32(out, len, enc.big);
    } else {
        let short = u16::try_from(len).map_err(|_| Error::malformed(tag, "value too long for its value representation"))?;
        put_u16(out, short, enc.big);
    }
    Ok(())
}

/// Encode `elems` into `out`.
pub(crate) fn elements(out: &mut Vec<u8>, enc: Enc, elems: &[Elem]) -> Result<(), Error> {
    for e in elems {
        match &e.value {
            Value::Bytes(b) => {
                let len = u32::try_from(b.len()).ok().filter(|l| *l != UNDEFINED)
                    .ok_or_else(|| Error::malformed(e.tag, "value too long"))?;
                header(out, enc, e.tag, e.vr, len)?;
                out.extend_from_slice(b);
            }
            Value::Seq { items, inner } => {
                header(out, enc, e.tag, e.vr, UNDEFINED)?;
                for item in items {
                    header(out, *inner, ITEM, VR::UN, UNDEFINED)?;
                    elements(out, *inner, item)?;
                    header(out, *inner, ITEM_DELIM, VR::UN, 0)?;
                }
                header(out, *inner, SEQ_DELIM, VR::UN, 0)?;
            }
            Value::Fragments(frags) => {
                header(out, enc, e.tag, e.vr, UNDEFINED)?;
                for f in frags {
                    let len = u32::try_from(f.len()).map_err(|_| Error::malformed(e.tag, "fragment too long"))?;
                    header(out, enc, ITEM, VR::UN, len)?;
                    out.extend_from_slice(f);
                }
                header(out, enc, SEQ_DELIM, VR::UN, 0)?;
            }
        }
    }
    Ok(())
}
