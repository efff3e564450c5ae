//! A 512 MiB object streams in and out in bounded memory. The work runs in a child process
//! (this test binary, re-invoked) that reads its own peak RSS (VmHWM) before and after; the
//! parent asserts the growth stays under 64 MiB. This measures bytes, not time.
mod common;

use std::process::Command;

use clinical_store::PutOutcome;
use common::*;

const CHILD: &str = "CLEAVE_CLINICAL_MEMORY_CHILD";
const SIZE: u64 = 512 << 20;
const LIMIT: u64 = 64 << 20;

fn vm_hwm() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("peak-memory test needs Linux /proc");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/self/status");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn child(dir: &std::path::Path) {
    let ring = keyring(dir);
    let mut store = open(dir, &ring);
    let base = vm_hwm();
    let m = meta(1, 1, 1, 1);
    let uid = m.sop_instance_uid.clone();
    let mut written = [0u8; 32];
    let out = store.put_instance(m, |w| Payload::new("half a gibibyte", SIZE).write_to(w, 1 << 20).map(|h| written = h)).unwrap();
    assert_eq!(out, PutOutcome::Stored { size: SIZE });
    let (read, n) = hash_reader(store.open_instance(&uid).unwrap()).unwrap();
    assert_eq!(n, SIZE);
    assert!(read == written, "512 MiB read back differs");
    println!("\nHWM {base} {}", vm_hwm());
}

#[test]
fn half_a_gibibyte_streams_in_bounded_memory() {
    if let Some(dir) = std::env::var_os(CHILD) {
        child(std::path::Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["half_a_gibibyte_streams_in_bounded_memory", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // libtest may print "test <name> ... " on the same line before the child's own output.
    let line = stdout.lines().find_map(|l| l.split_once("HWM ").map(|(_, m)| m)).expect("child reported no measurement");
    let (base, peak) = line.split_once(' ').unwrap();
    let (base, peak): (u64, u64) = (base.parse().unwrap(), peak.parse().unwrap());
    eprintln!("peak RSS grew by {} KiB streaming 512 MiB in and out", (peak - base) / 1024);
    assert!(peak - base < LIMIT, "peak RSS grew by {} MiB (limit 64 MiB)", (peak - base) >> 20);
}
