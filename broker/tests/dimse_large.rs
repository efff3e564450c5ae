//! #7, streaming through the whole broker: a 200 MiB instance sent by dcmtk's storescu over
//! DICOM TLS goes from the PDU stream through the split (de-identification, encryption into
//! the clinical store, the vault's match) without being held: the broker's peak resident
//! memory grows by a bounded amount, not by the instance's size, and the nurse then finds
//! the instance, whole, by QIDO-RS and WADO-RS metadata.
//!
//! Alone in its own test binary (the broker runs in this process) so that no other test's
//! allocations blur the measurement.
mod common;
#[path = "../dimse/tests/common/large.rs"]
mod large;

use std::process::Command;

use common::dimse::*;
use common::*;
use large::{vm_hwm_kib, write_large_instance, COLUMNS, PIXEL_BYTES, ROWS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_c_store_is_stored_with_bounded_broker_memory() {
    let b = start(&config(), false).await;
    let device = certificate(&b, "large-modality", Some(AE));
    let input = tempfile::tempdir().unwrap();
    let file = input.path().join("large.dcm");
    write_large_instance(&file);

    let before = vm_hwm_kib();
    let mut cmd: Command = dcmtk_cmd(&b, "storescu", &device, AE);
    cmd.arg("-R").arg(&file);
    let out = run(cmd).await;
    let after = vm_hwm_kib();
    assert!(out.status.success(), "storescu failed: {}", text(&out));
    let growth_mib = after.saturating_sub(before) as f64 / 1024.0;
    println!("broker peak RSS growth while storing {} MiB: {growth_mib:.1} MiB (VmHWM {before} -> {after} KiB)", PIXEL_BYTES >> 20);
    assert!(growth_mib < 64.0, "peak RSS grew by {growth_mib:.1} MiB for a {} MiB instance: the broker is buffering", PIXEL_BYTES >> 20);

    // Stored whole: the nurse finds it, and its metadata describes all of it.
    let (cfg, nurse) = staff_login(&b, "nurse-large", broker::Role::Nurse).await;
    let found = get(b.addr(), cfg.clone(), "/dicomweb/instances?Modality=OT", Some(&nurse)).await;
    assert_eq!(found.status, 200, "{}", found.body);
    let instances = found.json();
    assert_eq!(instances.as_array().map(Vec::len), Some(1), "{}", found.body);
    let url = instances[0]["00081190"]["Value"][0].as_str().unwrap().to_owned();
    let path = url.split_once("/dicomweb/").map(|(_, p)| format!("/dicomweb/{p}/metadata")).unwrap();
    let meta = get(b.addr(), cfg, &path, Some(&nurse)).await.json();
    assert_eq!((meta[0]["00280010"]["Value"][0].as_u64(), meta[0]["00280011"]["Value"][0].as_u64()), (Some(ROWS.into()), Some(COLUMNS.into())));
    assert_eq!(meta[0]["00100010"]["Value"][0]["Alphabetic"], "Synthetic^Large", "the nurse sees the identity restored");
    // The clinical store's blob holds every byte (encrypted, a little larger).
    let blobs: u64 = walk_sizes(&b.data().join("clinical"));
    assert!(blobs > u64::from(PIXEL_BYTES), "the clinical store holds {blobs} bytes for a {PIXEL_BYTES}-byte image");
}

/// Bytes of every file under `dir`.
fn walk_sizes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() { walk_sizes(&e.path()) } else { e.metadata().unwrap().len() }
        })
        .sum()
}
