//! Builds DICOM Part 10 bytes by hand for tests: synthetic instances, and malformed ones
//! that no toolkit would write.
#![allow(dead_code)]

use cleave_keys::Key32;
use cleave_deid::UidMapper;

pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
pub const CT_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.2";

pub fn mapper() -> UidMapper {
    let mut k = [7u8; 32];
    UidMapper::new(Key32::from_bytes(&mut k))
}

fn long(vr: &str) -> bool {
    matches!(vr, "OB" | "OD" | "OF" | "OL" | "OV" | "OW" | "SQ" | "UC" | "UR" | "UT" | "UN" | "SV" | "UV")
}

/// Explicit VR little endian element.
pub fn el(out: &mut Vec<u8>, tag: u32, vr: &str, value: &[u8]) {
    let mut v = value.to_vec();
    if v.len() % 2 == 1 {
        v.push(if vr == "UI" || vr == "OB" { 0 } else { b' ' });
    }
    hdr(out, tag, vr, v.len() as u32);
    out.extend_from_slice(&v);
}

/// Explicit VR little endian element header only.
pub fn hdr(out: &mut Vec<u8>, tag: u32, vr: &str, len: u32) {
    out.extend_from_slice(&((tag >> 16) as u16).to_le_bytes());
    out.extend_from_slice(&(tag as u16).to_le_bytes());
    out.extend_from_slice(vr.as_bytes());
    if long(vr) {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&len.to_le_bytes());
    } else {
        out.extend_from_slice(&(len as u16).to_le_bytes());
    }
}

/// Item or delimiter header.
pub fn item(out: &mut Vec<u8>, tag: u32, len: u32) {
    out.extend_from_slice(&((tag >> 16) as u16).to_le_bytes());
    out.extend_from_slice(&(tag as u16).to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
}

/// Preamble, DICM and a file meta group for `ts`.
pub fn preamble_and_meta(ts: &str, sop_instance: &str) -> Vec<u8> {
    let mut body = Vec::new();
    el(&mut body, 0x0002_0001, "OB", &[0, 1]);
    el(&mut body, 0x0002_0002, "UI", CT_IMAGE.as_bytes());
    el(&mut body, 0x0002_0003, "UI", sop_instance.as_bytes());
    el(&mut body, 0x0002_0010, "UI", ts.as_bytes());
    el(&mut body, 0x0002_0012, "UI", b"1.2.3.4");
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    el(&mut out, 0x0002_0000, "UL", &(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// A plausible CT-like header (explicit VR LE), without pixel data.
pub struct Instance<'a> {
    pub study: &'a str,
    pub series: &'a str,
    pub sop: &'a str,
    pub patient_name: &'a str,
    pub patient_id: &'a str,
    pub rows: u16,
    pub columns: u16,
    pub frames: u32,
}

impl Default for Instance<'_> {
    fn default() -> Self {
        Instance {
            study: "1.2.826.0.1.3680043.10.543.1",
            series: "1.2.826.0.1.3680043.10.543.1.1",
            sop: "1.2.826.0.1.3680043.10.543.1.1.1",
            patient_name: "CANARY^NAME",
            patient_id: "CANARYID",
            rows: 512,
            columns: 512,
            frames: 1,
        }
    }
}

impl Instance<'_> {
    /// The dataset elements before the pixel data.
    pub fn dataset(&self) -> Vec<u8> {
        let mut d = Vec::new();
        el(&mut d, 0x0008_0005, "CS", b"ISO_IR 100");
        el(&mut d, 0x0008_0016, "UI", CT_IMAGE.as_bytes());
        el(&mut d, 0x0008_0018, "UI", self.sop.as_bytes());
        el(&mut d, 0x0008_0020, "DA", b"20240105");
        el(&mut d, 0x0008_0050, "SH", b"CANARYACC");
        el(&mut d, 0x0008_0060, "CS", b"CT");
        el(&mut d, 0x0008_1030, "LO", b"CT HEAD CANARYDESC");
        el(&mut d, 0x0010_0010, "PN", self.patient_name.as_bytes());
        el(&mut d, 0x0010_0020, "LO", self.patient_id.as_bytes());
        el(&mut d, 0x0010_0030, "DA", b"19620704");
        el(&mut d, 0x0010_0040, "CS", b"F");
        el(&mut d, 0x0020_000D, "UI", self.study.as_bytes());
        el(&mut d, 0x0020_000E, "UI", self.series.as_bytes());
        el(&mut d, 0x0028_0002, "US", &1u16.to_le_bytes());
        el(&mut d, 0x0028_0008, "IS", self.frames.to_string().as_bytes());
        el(&mut d, 0x0028_0010, "US", &self.rows.to_le_bytes());
        el(&mut d, 0x0028_0011, "US", &self.columns.to_le_bytes());
        el(&mut d, 0x0028_0100, "US", &16u16.to_le_bytes());
        d
    }

    pub fn pixel_len(&self) -> u64 {
        self.rows as u64 * self.columns as u64 * 2 * self.frames as u64
    }

    /// A whole file with native pixel data filled by `pixel_byte`.
    pub fn file(&self) -> Vec<u8> {
        let mut f = preamble_and_meta(EXPLICIT_LE, self.sop);
        f.extend_from_slice(&self.dataset());
        hdr(&mut f, 0x7FE0_0010, "OW", self.pixel_len() as u32);
        f.extend((0..self.pixel_len()).map(pixel_byte));
        f
    }
}

/// The synthetic pixel pattern: position-dependent so a shifted or altered byte shows.
pub fn pixel_byte(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}
