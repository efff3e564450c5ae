//! The PS3.10 envelope around a received data set: 128-byte preamble, `DICM`, and a file meta
//! group (explicit VR little endian) built from the C-STORE and its presentation context.
//!
//! The data set itself is never touched: what the peer sent is what the sink gets, so a
//! stored file's data set is byte-identical to the sender's.

/// Implementation Class UID written into the meta group: Cleave's DIMSE implementation.
/// A UUID-derived UID (2.25 root), so it needs no registered org root.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.267958013436624190410815373405413869741";
/// Implementation Version Name written into the meta group (at most 16 characters).
pub const IMPLEMENTATION_VERSION_NAME: &str = "CLEAVE_DIMSE_01";

/// Whether `uid` is a syntactically valid UID (PS3.5 9.1): 1 to 64 characters, digits and
/// dots, no empty component, no leading zero in a multi-digit component.
pub(crate) fn is_valid_uid(uid: &str) -> bool {
    if uid.is_empty() || uid.len() > 64 {
        return false;
    }
    uid.split('.').all(|c| {
        !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) && !(c.len() > 1 && c.starts_with('0'))
    })
}

/// Whether `ae` can go into an AE element: at most 16 characters of the default repertoire
/// without backslash or control characters.
fn is_valid_ae(ae: &str) -> bool {
    ae.len() <= 16 && ae.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\')
}

/// Builds preamble + `DICM` + file meta group. The caller has validated the three UIDs with
/// [`is_valid_uid`]; an AE title that cannot be encoded is left out (Source AE is optional).
pub(crate) fn header(sop_class_uid: &str, sop_instance_uid: &str, transfer_syntax_uid: &str, source_ae: &str) -> Vec<u8> {
    let mut group = Vec::with_capacity(256);
    element(&mut group, 0x0001, *b"OB", &[0x00, 0x01]);
    element(&mut group, 0x0002, *b"UI", &pad(sop_class_uid, 0));
    element(&mut group, 0x0003, *b"UI", &pad(sop_instance_uid, 0));
    element(&mut group, 0x0010, *b"UI", &pad(transfer_syntax_uid, 0));
    element(&mut group, 0x0012, *b"UI", &pad(IMPLEMENTATION_CLASS_UID, 0));
    element(&mut group, 0x0013, *b"SH", &pad(IMPLEMENTATION_VERSION_NAME, b' '));
    if !source_ae.is_empty() && is_valid_ae(source_ae) {
        element(&mut group, 0x0016, *b"AE", &pad(source_ae, b' '));
    }
    let mut out = Vec::with_capacity(128 + 4 + 12 + group.len());
    out.resize(128, 0);
    out.extend_from_slice(b"DICM");
    element(&mut out, 0x0000, *b"UL", &(group.len() as u32).to_le_bytes());
    out.extend_from_slice(&group);
    out
}

fn pad(text: &str, with: u8) -> Vec<u8> {
    let mut v = text.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(with);
    }
    v
}

fn element(out: &mut Vec<u8>, elem: u16, vr: [u8; 2], value: &[u8]) {
    out.extend_from_slice(&0x0002u16.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(&vr);
    if &vr == b"OB" {
        // OB has a 2-byte reserved field and a 4-byte length in explicit VR.
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    } else {
        // Values here are UIDs (<= 64), SH and AE: always fit in 16 bits.
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implementation_class_uid_is_valid() {
        assert!(is_valid_uid(IMPLEMENTATION_CLASS_UID));
        assert!(IMPLEMENTATION_VERSION_NAME.len() <= 16);
    }

    #[test]
    fn fail_an_ae_title_that_cannot_be_encoded_is_left_out() {
        let h = header("1.2.3", "1.2.3", "1.2.840.10008.1.2", "BAD\\AE");
        assert!(!h.windows(4).any(|w| w == [2, 0, 0x16, 0]), "Source AE written");
        let h = header("1.2.3", "1.2.3", "1.2.840.10008.1.2", "SEVENTEEN_CHARS_X");
        assert!(!h.windows(4).any(|w| w == [2, 0, 0x16, 0]), "Source AE written");
    }

    #[test]
    fn uid_syntax() {
        assert!(is_valid_uid("1.2.840.10008.1.2.1"));
        assert!(is_valid_uid("2.25.0"));
        for bad in ["", "1..2", ".1", "1.", "1.02", "1.2a", &"1".repeat(65), "1.2\0"] {
            assert!(!is_valid_uid(bad), "{bad:?} accepted");
        }
    }

    /// Test vector: the exact bytes of the meta group for a known request.
    #[test]
    fn header_matches_the_vector() {
        let h = header("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2.1", "MODALITY1");
        assert_eq!(&h[..128], &[0u8; 128][..]);
        assert_eq!(&h[128..132], b"DICM");
        let hex: String = h[132..].iter().map(|b| format!("{b:02x}")).collect();
        // Checked by hand: group length 0xb8 = 184 = 14 (OB) + 34 + 14 + 28 + 52 (UIs) + 24 (SH) + 18 (AE).
        let expected = concat!(
            "02000000554c0400", "b8000000",
            "020001004f42000002000000", "0001",
            "0200020055491a00", "312e322e3834302e31303030382e352e312e342e312e312e3200",
            "0200030055490600", "312e322e3300",
            "0200100055491400", "312e322e3834302e31303030382e312e322e3100",
            "0200120055492c00", "322e32352e323637393538303133343336363234313930343130383135333733343035343133383639373431",
            "0200130053481000", "434c454156455f44494d53455f303120",
            "0200160041450a00", "4d4f44414c4954593120",
        );
        assert_eq!(hex, expected);
    }
}
