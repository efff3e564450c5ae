//! A 500 MB multi-frame instance splits in bounded memory, with its pixel data intact.
//!
//! The instance is generated as it is read (never held), the output is hashed as it is
//! written (never held), and the split runs in a child process (this test binary re-run
//! with CLEAVE_DEID_RSS_CHILD=1) so that its peak RSS (VmHWM) is measured alone.
mod common;

use cleave_deid::{split, Limits, Options};
use common::*;
use std::io::{Read, Write};

const CHILD_ENV: &str = "CLEAVE_DEID_RSS_CHILD";
const ROWS: u16 = 4000;
const COLUMNS: u16 = 4000;
const FRAMES: u32 = 16; // 4000 x 4000 x 2 bytes x 16 frames = 512 000 000 bytes
const MAX_GROWTH_KIB: u64 = 64 * 1024;
/// The pixel pattern repeats with a prime period, so a shifted byte changes the hash.
const PERIOD: usize = 65_521;

fn block() -> Vec<u8> {
    (0..PERIOD as u64).map(pixel_byte).collect()
}

/// Yields the header, then `total` pixel bytes of the pattern, never holding them.
struct Generated {
    head: Vec<u8>,
    block: Vec<u8>,
    pos: usize,
    pixels_left: u64,
    phase: usize,
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos < self.head.len() {
            let n = buf.len().min(self.head.len() - self.pos);
            buf[..n].copy_from_slice(&self.head[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        let n = buf.len().min(PERIOD - self.phase).min(self.pixels_left as usize);
        buf[..n].copy_from_slice(&self.block[self.phase..self.phase + n]);
        self.phase = (self.phase + n) % PERIOD;
        self.pixels_left -= n as u64;
        Ok(n)
    }
}

/// Finds the pixel data header in the output as it streams past and hashes what follows.
struct PixelHasher {
    prefix: Vec<u8>,
    needle: Vec<u8>,
    hasher: Option<blake3::Hasher>,
}

impl Write for PixelHasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.hasher {
            Some(h) => {
                h.update(buf);
            }
            None => {
                self.prefix.extend_from_slice(buf);
                if let Some(p) = self.prefix.windows(self.needle.len()).position(|w| w == self.needle) {
                    let mut h = blake3::Hasher::new();
                    h.update(&self.prefix[p + self.needle.len()..]);
                    self.hasher = Some(h);
                    self.prefix = Vec::new();
                }
                assert!(self.prefix.len() < 1 << 20, "pixel data header not found in the first MiB");
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM line");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmHWM value")
}

/// The child's work; a no-op unless run by `a_500_mb_instance_splits_in_bounded_memory`.
#[test]
fn rss_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let inst = Instance { rows: ROWS, columns: COLUMNS, frames: FRAMES, ..Default::default() };
    let total = inst.pixel_len();
    let mut head = preamble_and_meta(EXPLICIT_LE, inst.sop);
    head.extend_from_slice(&inst.dataset());
    hdr(&mut head, 0x7FE0_0010, "OW", total as u32);
    let block = block();
    let mut expected = blake3::Hasher::new();
    let mut left = total;
    while left > 0 {
        let n = (left as usize).min(PERIOD);
        expected.update(&block[..n]);
        left -= n as u64;
    }
    let baseline = vm_hwm_kib();
    let input = Generated { head, block, pos: 0, pixels_left: total, phase: 0 };
    let mut needle = Vec::new();
    hdr(&mut needle, 0x7FE0_0010, "OW", total as u32);
    let mut sink = PixelHasher { prefix: Vec::new(), needle, hasher: None };
    let outcome = split(input, &mut sink, &Options::research(), &mapper(), "PSEUDO-BIG", &Limits::default()).expect("split");
    let peak = vm_hwm_kib();
    let got = sink.hasher.expect("pixel data seen").finalize();
    assert_eq!(got, expected.finalize(), "pixel data changed on the way through");
    println!("RSS baseline_kib={baseline} peak_kib={peak} bytes_written={}", outcome.bytes_written);
}

#[test]
fn a_500_mb_instance_splits_in_bounded_memory() {
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(exe)
        .args(["--exact", "rss_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .expect("re-run the test binary");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    // The harness may print "test rss_child ... " on the same line.
    let line = text.lines().find_map(|l| l.find("RSS baseline_kib=").map(|i| &l[i..])).expect("child reports RSS");
    let num = |key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .expect("number")
    };
    let (baseline, peak, written) = (num("baseline_kib="), num("peak_kib="), num("bytes_written="));
    assert!(written > 512_000_000, "the whole instance went through ({written} bytes)");
    let growth = peak.saturating_sub(baseline);
    println!("peak RSS growth for a 512 MB instance: {growth} KiB");
    assert!(growth < MAX_GROWTH_KIB, "peak RSS grew by {growth} KiB (limit {MAX_GROWTH_KIB} KiB)");
}
