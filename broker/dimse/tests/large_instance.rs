//! A 200 MB instance goes from the socket to the sink without being held in memory: the
//! server's peak resident memory (VmHWM of this process, which runs the server; the sender is
//! a separate dcmtk process) grows by a small bounded amount, not by the instance size.
//!
//! Alone in its own test binary so no other test's allocations blur the measurement.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Command;

use common::large::*;
use common::*;
use sha2::{Digest, Sha256};

/// SHA-256 of a PS3.10 file's data set (everything after the meta group), streamed.
fn data_set_sha256(path: &Path) -> [u8; 32] {
    let mut f = std::fs::File::open(path).unwrap();
    let mut head = vec![0u8; 4096];
    f.read_exact(&mut head).unwrap();
    let (_, start) = meta_info(&head);
    let mut h = Sha256::new();
    h.update(&head[start..]);
    std::io::copy(&mut f, &mut h).unwrap();
    h.finalize().into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_instance_is_streamed_with_bounded_server_memory() {
    let pki = Pki::new();
    let sink = DirSink::new();
    let input = tempfile::tempdir().unwrap();
    let file = input.path().join("large.dcm");
    write_large_instance(&file);
    let server = start(&pki, sink.clone()).await;

    let before = vm_hwm_kib();
    let mut cmd = Command::new(dcmtk("storescu"));
    cmd.arg("+tls").arg(&pki.client_key).arg(&pki.client_cert).arg("+cf").arg(&pki.ca_pem);
    cmd.args(["-R", "-aet", "STORESCU", "-aec", CALLED_AE, "127.0.0.1", &server.local_addr().port().to_string()]);
    cmd.arg(&file);
    let out = run(cmd).await;
    let after = vm_hwm_kib();
    assert!(out.status.success(), "storescu failed: {}", text(&out));

    let growth_mib = (after.saturating_sub(before)) as f64 / 1024.0;
    println!("server peak RSS growth while receiving {} MiB: {growth_mib:.1} MiB (VmHWM {before} -> {after} KiB)", PIXEL_BYTES >> 20);
    assert!(growth_mib < 48.0, "peak RSS grew by {growth_mib:.1} MiB for a {} MiB instance: the server is buffering", PIXEL_BYTES >> 20);
    let stored = sink.stored();
    assert_eq!(stored.len(), 1);
    assert_eq!(data_set_sha256(&stored[0].0), data_set_sha256(&file), "stored data set differs from the sent one");
    server.shutdown().await.unwrap();
}
