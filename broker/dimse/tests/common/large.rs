//! A 200 MiB instance for the streaming tests, written without holding it, and the
//! process's peak resident memory to check that receiving it holds little more. Shared by
//! cleave-dimse's `large_instance` test and the broker's `dimse_large` (through `#[path]`).
#![allow(dead_code)]

use std::io::{BufWriter, Write};
use std::path::Path;

pub const ROWS: u16 = 10240;
pub const COLUMNS: u16 = 10240;
/// 10240 x 10240 x 16 bits = 200 MiB of pixel data.
pub const PIXEL_BYTES: u32 = ROWS as u32 * COLUMNS as u32 * 2;

pub fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux) is needed for this test");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM missing");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn el(out: &mut impl Write, group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) {
    assert_eq!(value.len() % 2, 0, "odd-length value: storescu would re-encode the element");
    out.write_all(&group.to_le_bytes()).unwrap();
    out.write_all(&elem.to_le_bytes()).unwrap();
    out.write_all(vr).unwrap();
    out.write_all(&(value.len() as u16).to_le_bytes()).unwrap();
    out.write_all(value).unwrap();
}

/// Writes a Secondary Capture instance (explicit VR LE) with 200 MiB of pixel data, streaming.
pub fn write_large_instance(path: &Path) {
    let mut f = BufWriter::new(std::fs::File::create(path).unwrap());
    let sop_class = b"1.2.840.10008.5.1.4.1.1.7\0";
    let sop_instance = b"1.2.826.0.1.3680043.8.498.20261122.1";
    let ts = b"1.2.840.10008.1.2.1\0";
    let mut meta = Vec::new();
    meta.extend_from_slice(&[2, 0, 1, 0, b'O', b'B', 0, 0, 2, 0, 0, 0, 0, 1]);
    el(&mut meta, 2, 2, b"UI", sop_class);
    el(&mut meta, 2, 3, b"UI", sop_instance);
    el(&mut meta, 2, 0x10, b"UI", ts);
    el(&mut meta, 2, 0x12, b"UI", b"1.2.3.4\0");
    f.write_all(&[0u8; 128]).unwrap();
    f.write_all(b"DICM").unwrap();
    el(&mut f, 2, 0, b"UL", &(meta.len() as u32).to_le_bytes());
    f.write_all(&meta).unwrap();
    el(&mut f, 8, 0x16, b"UI", sop_class);
    el(&mut f, 8, 0x18, b"UI", sop_instance);
    el(&mut f, 8, 0x60, b"CS", b"OT");
    el(&mut f, 0x10, 0x10, b"PN", b"Synthetic^Large ");
    el(&mut f, 0x10, 0x20, b"LO", b"LARGE-1 ");
    el(&mut f, 0x20, 0x0d, b"UI", b"1.2.826.0.1.3680043.8.498.1\0");
    el(&mut f, 0x20, 0x0e, b"UI", b"1.2.826.0.1.3680043.8.498.2\0");
    el(&mut f, 0x28, 0x02, b"US", &1u16.to_le_bytes());
    el(&mut f, 0x28, 0x04, b"CS", b"MONOCHROME2 ");
    el(&mut f, 0x28, 0x10, b"US", &ROWS.to_le_bytes());
    el(&mut f, 0x28, 0x11, b"US", &COLUMNS.to_le_bytes());
    el(&mut f, 0x28, 0x100, b"US", &16u16.to_le_bytes());
    el(&mut f, 0x28, 0x101, b"US", &16u16.to_le_bytes());
    el(&mut f, 0x28, 0x102, b"US", &15u16.to_le_bytes());
    el(&mut f, 0x28, 0x103, b"US", &0u16.to_le_bytes());
    f.write_all(&[0xe0, 0x7f, 0x10, 0x00, b'O', b'W', 0, 0]).unwrap();
    f.write_all(&PIXEL_BYTES.to_le_bytes()).unwrap();
    // A non-repeating pattern, so a misplaced or dropped fragment changes the hash.
    let mut row = vec![0u8; COLUMNS as usize * 2];
    for r in 0..ROWS as u32 {
        for (i, px) in row.chunks_exact_mut(2).enumerate() {
            px.copy_from_slice(&((r.wrapping_mul(7919) ^ i as u32) as u16).to_le_bytes());
        }
        f.write_all(&row).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
}

