//! What the benchmarks share: writing explicit VR little endian elements by hand, so the
//! synthetic instances do not depend on the code being measured.

/// Append one element; odd values are padded (NUL for UI, space otherwise).
pub fn el(out: &mut Vec<u8>, tag: u32, vr: &str, value: &[u8]) {
    let mut v = value.to_vec();
    if v.len() % 2 == 1 {
        v.push(if vr == "UI" { 0 } else { b' ' });
    }
    out.extend_from_slice(&((tag >> 16) as u16).to_le_bytes());
    out.extend_from_slice(&(tag as u16).to_le_bytes());
    out.extend_from_slice(vr.as_bytes());
    if matches!(vr, "OB" | "OW" | "SQ" | "UT") {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(v.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(&v);
}

/// The preamble, `DICM` and a file meta group naming `class`, `sop` and transfer syntax `ts`.
pub fn part10_start(class: &str, sop: &str, ts: &str) -> Vec<u8> {
    let mut meta = Vec::new();
    el(&mut meta, 0x0002_0001, "OB", &[0, 1]);
    el(&mut meta, 0x0002_0002, "UI", class.as_bytes());
    el(&mut meta, 0x0002_0003, "UI", sop.as_bytes());
    el(&mut meta, 0x0002_0010, "UI", ts.as_bytes());
    let mut f = vec![0u8; 128];
    f.extend_from_slice(b"DICM");
    el(&mut f, 0x0002_0000, "UL", &(meta.len() as u32).to_le_bytes());
    f.extend_from_slice(&meta);
    f
}
