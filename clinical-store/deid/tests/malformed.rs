//! The bad-input corpus: each case is built here, must be refused with the expected error,
//! and no error message may echo a value from the input.
mod common;

use cleave_deid::{split, Error, Limits, Options};
use common::*;
use std::io::Write;

fn run(input: &[u8], limits: &Limits) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    split(input, &mut out, &Options::research(), &mapper(), "PSEUDO", limits).map(|_| out)
}

fn expect(name: &str, input: &[u8], limits: &Limits, check: fn(&Error) -> bool) {
    match run(input, limits) {
        Ok(_) => panic!("{name}: accepted, but must be refused"),
        Err(e) => {
            assert!(check(&e), "{name}: wrong error: {e:?}");
            let text = format!("{e} {e:?}");
            assert!(!text.contains("CANARY"), "{name}: error echoes input: {text}");
        }
    }
}

fn valid() -> Vec<u8> {
    Instance { rows: 4, columns: 4, ..Default::default() }.file()
}

/// A file whose dataset is `body` (after a valid preamble and meta).
fn with_dataset(ts: &str, body: &[u8]) -> Vec<u8> {
    let mut f = preamble_and_meta(ts, "1.2.3");
    f.extend_from_slice(body);
    f
}

#[test]
fn the_valid_baseline_is_accepted() {
    run(&valid(), &Limits::default()).expect("baseline instance must split");
}

#[test]
fn truncated_files_are_refused() {
    let f = valid();
    let header_end = f.len() - 32 - 12;
    for cut in [200, header_end - 3, f.len() - 5] {
        expect("truncated", &f[..cut], &Limits::default(), |e| matches!(e, Error::Truncated { .. }));
    }
}

#[test]
fn missing_preamble_and_non_dicom_bytes_are_refused() {
    let f = valid();
    expect("no preamble", &f[128..], &Limits::default(), |e| matches!(e, Error::NotPart10));
    expect("empty", b"", &Limits::default(), |e| matches!(e, Error::NotPart10));
    let text = b"CANARY this is a PDF, not DICOM".repeat(20);
    expect("non-DICOM", &text, &Limits::default(), |e| matches!(e, Error::NotPart10));
}

#[test]
fn meta_without_transfer_syntax_or_with_unknown_one_is_refused() {
    let mut f = vec![0u8; 128];
    f.extend_from_slice(b"DICM");
    el(&mut f, 0x0002_0001, "OB", &[0, 1]);
    el(&mut f, 0x0002_0003, "UI", b"1.2.3");
    f.extend_from_slice(&Instance::default().dataset());
    expect("no transfer syntax", &f, &Limits::default(), |e| matches!(e, Error::BadMeta { .. }));
    let mut g = vec![0u8; 128];
    g.extend_from_slice(b"DICM");
    g.extend_from_slice(&Instance::default().dataset());
    expect("no meta group", &g, &Limits::default(), |e| matches!(e, Error::BadMeta { .. }));
    let u = with_dataset("1.2.3.4.5.6", &Instance::default().dataset());
    expect("unknown transfer syntax", &u, &Limits::default(), |e| matches!(e, Error::UnknownTransferSyntax));
}

#[test]
fn lying_lengths_are_refused_without_allocating_them() {
    let mut d = Instance::default().dataset();
    hdr(&mut d, 0x0018_1030, "LT", 0);
    // An LO cannot lie beyond 64 KiB; a UT can claim 2 GiB.
    hdr(&mut d, 0x0040_A160, "UT", 0x7FFF_FFF0);
    d.extend_from_slice(b"CANARY short");
    expect("2 GiB claim", &with_dataset(EXPLICIT_LE, &d), &Limits::default(), |e| matches!(e, Error::HeaderTooLarge { .. }));
    let mut d = Instance::default().dataset();
    hdr(&mut d, 0x0040_A160, "UT", 1 << 20);
    d.extend_from_slice(b"CANARY short");
    expect("1 MiB claim, 12 bytes present", &with_dataset(EXPLICIT_LE, &d), &Limits::default(), |e| {
        matches!(e, Error::Truncated { .. })
    });
    // An element inside a defined-length item that runs past the item's end.
    let mut d = Instance::default().dataset();
    hdr(&mut d, 0x0008_1140, "SQ", 8 + 8 + 4);
    item(&mut d, 0xFFFE_E000, 8 + 4);
    el(&mut d, 0x0008_1150, "UI", b"1.2.3.4.5.6.7.8");
    expect("element past item end", &with_dataset(EXPLICIT_LE, &d), &Limits::default(), |e| matches!(e, Error::Malformed { .. }));
}

#[test]
fn endless_and_too_deep_sequences_are_refused() {
    let mut d = Instance::default().dataset();
    hdr(&mut d, 0x0040_A730, "SQ", 0xFFFF_FFFF);
    item(&mut d, 0xFFFE_E000, 0xFFFF_FFFF);
    el(&mut d, 0x0040_A160, "UT", b"CANARY never closed");
    expect("never-ending sequence", &with_dataset(EXPLICIT_LE, &d), &Limits::default(), |e| matches!(e, Error::Truncated { .. }));

    let mut d = Instance::default().dataset();
    for _ in 0..40 {
        hdr(&mut d, 0x0040_A730, "SQ", 0xFFFF_FFFF);
        item(&mut d, 0xFFFE_E000, 0xFFFF_FFFF);
    }
    expect("nesting 40 deep", &with_dataset(EXPLICIT_LE, &d), &Limits::default(), |e| matches!(e, Error::TooDeep { .. }));
}

#[test]
fn stray_delimiters_and_unknown_vrs_are_refused() {
    let mut d = Instance::default().dataset();
    item(&mut d, 0xFFFE_E0DD, 0);
    expect("stray delimiter", &with_dataset(EXPLICIT_LE, &d), &Limits::default(), |e| matches!(e, Error::Malformed { .. }));
    let mut d = Instance::default().dataset();
    d.extend_from_slice(&[0x18, 0x00, 0x30, 0x10, b'Q', b'Q', 4, 0]);
    d.extend_from_slice(b"ABCD");
    expect("unknown VR", &with_dataset(EXPLICIT_LE, &d), &Limits::default(), |e| matches!(e, Error::Malformed { .. }));
}

#[test]
fn missing_sop_instance_uid_is_refused() {
    let inst = Instance::default();
    let d = inst.dataset();
    // Drop (0008,0018): find its header and cut the element out.
    let pos = d.windows(4).position(|w| w == [0x08, 0x00, 0x18, 0x00]).expect("SOP Instance UID present");
    let len = u16::from_le_bytes([d[pos + 6], d[pos + 7]]) as usize;
    let mut without = d[..pos].to_vec();
    without.extend_from_slice(&d[pos + 8 + len..]);
    expect("no SOP Instance UID", &with_dataset(EXPLICIT_LE, &without), &Limits::default(), |e| {
        matches!(e, Error::MissingAttribute { keyword: "SOPInstanceUID" })
    });
}

#[test]
fn oversized_headers_are_refused() {
    let mut d = Instance::default().dataset();
    el(&mut d, 0x0040_A160, "UT", &vec![b'A'; 4096]);
    let limits = Limits::default().with_max_header_bytes(2048);
    expect("header over limit", &with_dataset(EXPLICIT_LE, &d), &limits, |e| matches!(e, Error::HeaderTooLarge { .. }));
}

fn deflated(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(body).expect("deflate");
    let mut f = preamble_and_meta("1.2.840.10008.1.2.1.99", "1.2.3");
    f.extend_from_slice(&enc.finish().expect("deflate"));
    f
}

#[test]
fn deflate_bombs_and_corrupt_deflate_streams_are_refused() {
    let inst = Instance { rows: 4096, columns: 4096, frames: 2, ..Default::default() };
    let mut body = inst.dataset();
    hdr(&mut body, 0x7FE0_0010, "OW", inst.pixel_len() as u32);
    body.resize(body.len() + inst.pixel_len() as usize, 0);
    let bomb = deflated(&body);
    assert!(bomb.len() < 1 << 20, "64 MiB of zeros must deflate to under 1 MiB");
    let limits = Limits::default().with_max_inflated_bytes(16 << 20);
    expect("deflate bomb", &bomb, &limits, |e| matches!(e, Error::Deflate { .. }));
    // The same file is fine when the cap allows it: the cap is what refused it.
    run(&bomb, &Limits::default()).expect("within the cap the deflated file splits");

    let mut corrupt = deflated(&Instance::default().dataset());
    let meta_len = preamble_and_meta("1.2.840.10008.1.2.1.99", "1.2.3").len();
    for b in &mut corrupt[meta_len + 4..] {
        *b ^= 0x5A;
    }
    expect("corrupt deflate", &corrupt, &Limits::default(), |e| matches!(e, Error::Deflate { .. } | Error::Malformed { .. } | Error::Truncated { .. }));
}

#[test]
fn unsupported_options_and_bad_pseudonyms_are_refused() {
    let f = valid();
    let mut opts = Options::basic();
    opts.retain_safe_private = true;
    let r = split(f.as_slice(), &mut Vec::new(), &opts, &mapper(), "PSEUDO", &Limits::default());
    assert!(matches!(r, Err(Error::UnsupportedOption { .. })), "{r:?}");
    for bad in ["", "A\\B", "tab\there", &"x".repeat(65), "   "] {
        let r = split(f.as_slice(), &mut Vec::new(), &Options::care(), &mapper(), bad, &Limits::default());
        assert!(matches!(r, Err(Error::InvalidPseudonym)), "{bad:?}: {r:?}");
    }
}
