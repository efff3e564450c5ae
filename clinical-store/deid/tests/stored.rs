//! Reading stored objects back: re-identification, DICOM JSON metadata and frames.
//!
//! The re-identification vector is built by hand, element by element, independently of the
//! crate's writer; the other tests go through `split` first, the way the broker stores.
mod common;

use cleave_deid::{copy_frame, frame_layout, metadata_json, reidentify, split, Error, Limits, Options, Restore};
use common::*;
use zeroize::Zeroizing;

fn secret(s: &str) -> Option<Zeroizing<String>> {
    Some(Zeroizing::new(s.to_owned()))
}

fn restore() -> Restore {
    let mut r = Restore::new();
    r.patient_name = secret("Doe^Jane");
    r.patient_id = secret("MRN-12345");
    r.issuer_of_patient_id = secret("HOSP");
    r.birth_date = secret("19620704");
    r.sex = secret("F");
    r.accession_number = secret("ACC77");
    r
}

/// A stored-like object: meta, a short header with the de-identification markers, native
/// pixel data of 4 bytes.
fn stored_vector(header: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut f = preamble_and_meta(EXPLICIT_LE, "2.25.1");
    header(&mut f);
    hdr(&mut f, 0x7FE0_0010, "OW", 4);
    f.extend_from_slice(&[1, 2, 3, 4]);
    f
}

#[test]
fn reidentification_vector_restores_exactly_the_identity_attributes() {
    let input = stored_vector(|d| {
        el(d, 0x0008_0016, "UI", CT_IMAGE.as_bytes());
        el(d, 0x0008_0018, "UI", b"2.25.1");
        el(d, 0x0010_0000, "UL", &0u32.to_le_bytes()); // a stale group length: dropped
        el(d, 0x0010_0010, "PN", b"");
        el(d, 0x0010_0020, "LO", b"P1-00112233445566778899aabbccddeeff");
        el(d, 0x0012_0062, "CS", b"YES");
        el(d, 0x0020_000D, "UI", b"2.25.2");
    });
    let expected = stored_vector(|d| {
        el(d, 0x0008_0016, "UI", CT_IMAGE.as_bytes());
        el(d, 0x0008_0018, "UI", b"2.25.1");
        el(d, 0x0008_0050, "SH", b"ACC77");
        el(d, 0x0010_0010, "PN", b"Doe^Jane");
        el(d, 0x0010_0020, "LO", b"MRN-12345");
        el(d, 0x0010_0021, "LO", b"HOSP");
        el(d, 0x0010_0030, "DA", b"19620704");
        el(d, 0x0010_0040, "CS", b"F");
        el(d, 0x0012_0062, "CS", b"NO");
        el(d, 0x0020_000D, "UI", b"2.25.2");
    });
    let mut out = Vec::new();
    let n = reidentify(input.as_slice(), &mut out, &restore(), &Limits::default()).unwrap();
    assert_eq!(n as usize, out.len());
    assert_eq!(out, expected, "re-identified bytes differ from the hand-built vector");
}

#[test]
fn an_empty_restore_only_marks_the_object() {
    let input = stored_vector(|d| el(d, 0x0010_0020, "LO", b"P1-00112233445566778899aabbccddeeff"));
    let expected = stored_vector(|d| {
        el(d, 0x0010_0020, "LO", b"P1-00112233445566778899aabbccddeeff");
        el(d, 0x0012_0062, "CS", b"NO");
    });
    let mut out = Vec::new();
    reidentify(input.as_slice(), &mut out, &Restore::new(), &Limits::default()).unwrap();
    assert_eq!(out, expected);
}

fn stored(inst: &Instance<'_>, file: &[u8]) -> Vec<u8> {
    let _ = inst;
    let mut out = Vec::new();
    split(file, &mut out, &Options::care(), &mapper(), "P1-00112233445566778899aabbccddeeff", &Limits::default()).unwrap();
    out
}

#[test]
fn a_split_then_reidentified_instance_round_trips_identity_and_pixels() {
    let inst = Instance { rows: 16, columns: 16, ..Instance::default() };
    let original = inst.file();
    let kept = stored(&inst, &original);
    let mut out = Vec::new();
    let mut r = restore();
    r.patient_name = secret("Müller^Jürgen"); // non-ASCII under ISO_IR 100 (the instance's set)
    reidentify(kept.as_slice(), &mut out, &r, &Limits::default()).unwrap();
    // Splitting the re-identified object again extracts what was restored.
    let again = split(out.as_slice(), std::io::sink(), &Options::care(), &mapper(), "P1-x", &Limits::default()).unwrap();
    assert_eq!(again.identity.patient_name.as_deref().map(String::as_str), Some("Müller^Jürgen"));
    assert_eq!(again.identity.patient_id.as_deref().map(String::as_str), Some("MRN-12345"));
    assert_eq!(again.identity.accession_number.as_deref().map(String::as_str), Some("ACC77"));
    assert_eq!(again.identity.birth_date.as_deref().map(String::as_str), Some("19620704"));
    // Latin-1 bytes, not UTF-8: the instance declares ISO_IR 100.
    assert!(out.windows(6).any(|w| w == b"M\xfcller"));
    // Pixel data byte for byte at the end of both.
    let px = inst.pixel_len() as usize;
    assert_eq!(out[out.len() - px..], original[original.len() - px..]);
}

#[test]
fn non_ascii_into_the_default_repertoire_declares_utf8() {
    let input = stored_vector(|d| el(d, 0x0010_0010, "PN", b""));
    let mut r = Restore::new();
    r.patient_name = secret("Ōta^Kōji");
    let mut out = Vec::new();
    reidentify(input.as_slice(), &mut out, &r, &Limits::default()).unwrap();
    let mut cs = Vec::new();
    el(&mut cs, 0x0008_0005, "CS", b"ISO_IR 192");
    assert!(out.windows(cs.len()).any(|w| w == cs.as_slice()), "ISO_IR 192 declared");
    assert!(out.windows("Ōta".len()).any(|w| w == "Ōta".as_bytes()));
}

#[test]
fn metadata_is_dicom_json_with_pixel_data_as_bulk_data() {
    let inst = Instance { rows: 8, columns: 4, ..Instance::default() };
    let kept = stored(&inst, &inst.file());
    let j = metadata_json(kept.as_slice(), None, &Limits::default(), Some("https://x/bulk")).unwrap();
    assert_eq!(j["00280010"], serde_json::json!({"vr": "US", "Value": [8]}));
    assert_eq!(j["00100020"]["Value"][0], "P1-00112233445566778899aabbccddeeff");
    assert_eq!(j["00100010"], serde_json::json!({"vr": "PN"}), "name is empty when stored");
    assert_eq!(j["7FE00010"], serde_json::json!({"vr": "OW", "BulkDataURI": "https://x/bulk"}));
    assert_eq!(j["00280008"]["Value"][0], 1, "IS is a JSON number");
    assert!(j.get("00020010").is_none(), "no file meta in the dataset");
    let text = j.to_string();
    assert!(!text.contains("CANARY"), "nothing identifying: {text}");

    let j = metadata_json(kept.as_slice(), Some(&restore()), &Limits::default(), None).unwrap();
    assert_eq!(j["00100010"]["Value"][0]["Alphabetic"], "Doe^Jane");
    assert_eq!(j["00120062"]["Value"][0], "NO");
    assert!(j.get("7FE00010").is_none(), "no pixel data without a bulk data URI");
}

#[test]
fn native_frames_are_cut_at_frame_boundaries() {
    let inst = Instance { rows: 4, columns: 3, frames: 3, ..Instance::default() };
    let original = inst.file();
    let kept = stored(&inst, &original);
    let layout = frame_layout(kept.as_slice(), &Limits::default()).unwrap();
    assert_eq!((layout.number_of_frames, layout.encapsulated, layout.frame_bytes), (3, false, Some(24)));
    let px_start = original.len() - inst.pixel_len() as usize;
    for n in 1..=3u32 {
        let mut out = Vec::new();
        assert_eq!(copy_frame(kept.as_slice(), n, &mut out, &Limits::default()).unwrap(), 24);
        let from = px_start + (n as usize - 1) * 24;
        assert_eq!(out, original[from..from + 24], "frame {n}");
    }
    for bad in [0, 4] {
        let e = copy_frame(kept.as_slice(), bad, std::io::sink(), &Limits::default()).unwrap_err();
        assert!(matches!(e, Error::NoSuchFrame { frames: 3 }), "{e}");
    }
}

/// An encapsulated instance (JPEG baseline syntax; the "bitstreams" are arbitrary bytes).
fn encapsulated(frames: &[&[u8]], bot: bool, fragments_per_frame: usize) -> Vec<u8> {
    let mut f = preamble_and_meta("1.2.840.10008.1.2.4.50", "2.25.9");
    el(&mut f, 0x0008_0016, "UI", CT_IMAGE.as_bytes());
    el(&mut f, 0x0008_0018, "UI", b"2.25.9");
    el(&mut f, 0x0028_0008, "IS", frames.len().to_string().as_bytes());
    hdr(&mut f, 0x7FE0_0010, "OB", 0xFFFF_FFFF);
    let mut offsets = Vec::new();
    let mut body = Vec::new();
    for fr in frames {
        offsets.extend_from_slice(&(body.len() as u32).to_le_bytes());
        let per = fr.len().div_ceil(fragments_per_frame);
        for chunk in fr.chunks(per) {
            item(&mut body, 0xFFFE_E000, chunk.len() as u32);
            body.extend_from_slice(chunk);
        }
    }
    if bot {
        item(&mut f, 0xFFFE_E000, offsets.len() as u32);
        f.extend_from_slice(&offsets);
    } else {
        item(&mut f, 0xFFFE_E000, 0);
    }
    f.extend_from_slice(&body);
    item(&mut f, 0xFFFE_E0DD, 0);
    f
}

#[test]
fn encapsulated_frames_are_found_by_fragment_or_offset_table() {
    let frames: [&[u8]; 3] = [b"AAAAaaaa", b"BBbb", b"CCCCCCcccccc"];
    for (bot, per) in [(false, 1), (true, 1), (true, 2)] {
        let f = encapsulated(&frames, bot, per);
        for (i, want) in frames.iter().enumerate() {
            let mut out = Vec::new();
            copy_frame(f.as_slice(), i as u32 + 1, &mut out, &Limits::default()).unwrap();
            assert_eq!(&out, want, "frame {} with bot={bot}, {per} fragments per frame", i + 1);
        }
    }
    // Two fragments per frame and no offset table: the frames cannot be told apart.
    let f = encapsulated(&frames, false, 2);
    let e = copy_frame(f.as_slice(), 1, std::io::sink(), &Limits::default()).unwrap_err();
    assert!(matches!(e, Error::FramesUnlocatable), "{e}");
}

#[test]
fn fail_truncated_stored_object_is_an_error_not_a_short_copy() {
    let inst = Instance { rows: 16, columns: 16, ..Instance::default() };
    let kept = stored(&inst, &inst.file());
    let cut = &kept[..kept.len() - 7];
    let e = reidentify(cut, std::io::sink(), &restore(), &Limits::default()).unwrap_err();
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
    assert!(!e.to_string().contains("Doe"), "no restored value in the message");
    let e = copy_frame(cut, 1, std::io::sink(), &Limits::default()).unwrap_err();
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
}
