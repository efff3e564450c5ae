//! Byte layouts of the values sealed in the vault (FORMAT.md, "Sealed values").
//!
//! Every plaintext is padded before sealing so that a ciphertext's length tells a thief
//! only a bucket (32 bytes), not the length of a name. Lists (phone numbers, other ids,
//! UIDs) are length-prefixed strings. Decoding never panics: anything malformed is
//! `None`, which callers report as a corrupt record.
use zeroize::Zeroizing;

/// Padding bucket in bytes.
pub(crate) const PAD_BLOCK: usize = 32;

/// `value || 0x80 || 0x00...` up to a multiple of [`PAD_BLOCK`] (ISO/IEC 7816-4 padding).
pub(crate) fn pad(value: &[u8]) -> Zeroizing<Vec<u8>> {
    let total = (value.len() / PAD_BLOCK + 1) * PAD_BLOCK;
    let mut out = Zeroizing::new(Vec::with_capacity(total));
    out.extend_from_slice(value);
    out.push(0x80);
    out.resize(total, 0);
    out
}

/// Strip the padding added by [`pad`]; `None` if it is not well formed.
pub(crate) fn unpad(padded: &[u8]) -> Option<&[u8]> {
    if padded.is_empty() || padded.len() % PAD_BLOCK != 0 {
        return None;
    }
    let end = padded.iter().rposition(|&b| b != 0)?;
    if padded.get(end) != Some(&0x80) {
        return None;
    }
    padded.get(..end)
}

/// A list of strings: for each, `u16be(len) || utf8 bytes`.
pub(crate) fn encode_list<S: AsRef<str>>(items: &[S]) -> Option<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(Vec::new());
    for s in items {
        let b = s.as_ref().as_bytes();
        let len = u16::try_from(b.len()).ok()?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(b);
    }
    Some(out)
}

/// The inverse of [`encode_list`].
pub(crate) fn decode_list(mut bytes: &[u8]) -> Option<Zeroizing<Vec<String>>> {
    let mut out = Zeroizing::new(Vec::new());
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_first_chunk::<2>()?;
        let len = u16::from_be_bytes(*len) as usize;
        let s = rest.get(..len)?;
        out.push(std::str::from_utf8(s).ok()?.to_owned());
        bytes = rest.get(len..)?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_hides_length_within_a_bucket_and_round_trips() {
        assert_eq!(pad(b"Li").len(), pad(b"Wolfeschlegelsteinhausen").len());
        for v in [&b""[..], b"x", &[7u8; 31], &[7u8; 32], &[0u8; 5]] {
            assert_eq!(unpad(&pad(v)), Some(v));
        }
        assert_eq!(unpad(&[0u8; 32]), None);
        assert_eq!(unpad(&[1u8; 32]), None);
        assert_eq!(unpad(&[0x80; 31]), None);
    }

    #[test]
    fn lists_round_trip_and_truncation_fails() {
        let e = encode_list(&["+41 44 000 00 00", "", "Ünïcode"]).unwrap();
        assert_eq!(*decode_list(&e).unwrap(), ["+41 44 000 00 00", "", "Ünïcode"]);
        assert!(decode_list(&e[..e.len() - 1]).is_none());
        assert!(decode_list(&[0]).is_none());
        assert!(encode_list(&["x".repeat(70_000)]).is_none());
    }
}
