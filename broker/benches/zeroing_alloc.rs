//! What wiping freed memory costs (threat T3): the same requests against a real in-process
//! broker over mutual TLS, with the global allocator wiping on free and with the plain
//! system allocator, switched at run time in one process so both sides see the same
//! machine, the same data and the same warm caches.
//!
//! Run: `cargo bench -p broker --bench zeroing_alloc`. The client runs in the same process,
//! so its frees are wiped too: the figure is an upper bound on the server's cost.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

#[path = "../tests/common/mod.rs"]
mod common;

/// Wipe on free (what `cleave-broker` ships) or not (the baseline).
static WIPE: AtomicBool = AtomicBool::new(true);
static ZEROING: broker::ZeroingAllocator = broker::zeroing_allocator();

/// Both sides allocate from `System`; only freeing differs, so a block may be allocated
/// with wiping off and freed with it on (or the reverse) safely.
struct Switchable;

// SAFETY: every call forwards to `System` or to `ZeroizeAlloc<System>`, which itself
// allocates and frees with `System`, with the caller's pointer and layout unchanged.
unsafe impl GlobalAlloc for Switchable {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if WIPE.load(Ordering::Relaxed) {
            unsafe { ZEROING.dealloc(ptr, layout) }
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if WIPE.load(Ordering::Relaxed) {
            unsafe { ZEROING.realloc(ptr, layout, new_size) }
        } else {
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}

#[global_allocator]
static ALLOC: Switchable = Switchable;

const CONFIG: &str = "
store_idle_secs = 300
max_body_bytes = 1048576
[login]
max_failures_per_account = 3
max_failures_per_address = 50
window_secs = 900
";

const BOUNDARY: &str = "cleave-bench-boundary-91c2";

fn ct_small() -> Vec<u8> {
    let out = std::process::Command::new("python3")
        .args(["-c", "from pydicom.data import get_testdata_file; print(get_testdata_file('CT_small.dcm'))"])
        .output()
        .expect("python3 with pydicom is needed: run .ci/run or pip install pydicom");
    assert!(out.status.success(), "pydicom is needed: pip install pydicom");
    std::fs::read(String::from_utf8(out.stdout).unwrap().trim()).unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let b = rt.block_on(common::start(CONFIG, false));
    let (reg_cfg, reg) = rt.block_on(common::staff_login(&b, "reg1", broker::Role::Registration));
    let (nurse_cfg, nurse) = rt.block_on(common::staff_login(&b, "nurse1", broker::Role::Nurse));
    let (dev_cfg, dev) = rt.block_on(common::device_login(&b, "ct-bench"));
    let patient = serde_json::json!({
        "family_name": "Benchmarkova", "given_name": "Alloca", "birth_date": "19600101", "sex": "F",
        "issuer": "HOSP-A", "patient_id": "MRN-BENCH-1", "address": "1 Bench Street",
    });
    let r = rt.block_on(common::post_json(b.addr(), reg_cfg, "/api/v1/identity/patients", Some(&reg), &patient));
    assert!(r.status == 200 || r.status == 201, "{}", r.body);
    let id = r.json()["identity_id"].as_str().unwrap().to_owned();
    let read_path = format!("/api/v1/identity/patients/{id}");

    let ct = ct_small();
    let mut body = format!("--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").into_bytes();
    body.extend_from_slice(&ct);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    let auth = format!("Bearer {dev}");
    let content_type = format!("multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}");

    let mut g = c.benchmark_group("zeroing_alloc");
    for (label, wipe) in [("wipe_on_free", true), ("plain_system", false)] {
        WIPE.store(wipe, Ordering::SeqCst);
        g.bench_function(format!("identity_read_mtls/{label}"), |bench| {
            bench.iter(|| {
                let r = rt.block_on(common::get(b.addr(), nurse_cfg.clone(), &read_path, Some(&nurse)));
                assert_eq!(r.status, 200);
            })
        });
        g.bench_function(format!("stow_ct_small_mtls/{label}"), |bench| {
            bench.iter(|| {
                let h = [("Authorization", auth.as_str()), ("Content-Type", content_type.as_str())];
                let r = rt.block_on(common::request(b.addr(), dev_cfg.clone(), "POST", "/dicomweb/studies", &h, &body)).unwrap();
                assert_eq!(r.status, 200, "{}", r.body);
            })
        });
    }
    WIPE.store(true, Ordering::SeqCst);
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(8)).warm_up_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
