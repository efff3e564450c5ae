//! A power cut after a modality's instances were acknowledged over DIMSE.
//!
//! The clinical index commits an instance's rows without waiting for the disk (its blob,
//! fsync'd before the answer, holds them as its record: clinical-store FORMAT.md, "Writing
//! durably"), so a power cut may lose the last rows. Simulated here as the disk would see
//! it: the broker stops, and the clinical index is put back as it was after the first
//! instance, while every blob stays. The broker's next start files the others again: the
//! nurse finds exactly what she found before the cut, and the audit trail holds an ingest
//! entry by `clinical-store-sweep` for each instance filed again.
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::dimse::*;
use common::*;
use rustls::ClientConfig;

/// Starts a broker again on `dir`, once the previous one has let go of its audit log.
async fn restart(dir: tempfile::TempDir) -> Broker {
    for _ in 0..100 {
        let mut opts = broker::ServeOptions::new(dir.path());
        opts.listen = Some("127.0.0.1:0".parse().unwrap());
        match broker::start(opts).await {
            Ok(running) => return Broker { dir, running },
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("the broker did not start again within 10 s");
}

/// What the nurse's QIDO shows: every study with its instances, in a stable order.
async fn shown(b: &Broker, cfg: &Arc<ClientConfig>, token: &str) -> Vec<String> {
    let a = get(b.addr(), cfg.clone(), "/dicomweb/studies", Some(token)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let mut out = Vec::new();
    for study in a.json().as_array().cloned().unwrap_or_default() {
        let uid = study["0020000D"]["Value"][0].as_str().unwrap().to_owned();
        let i = get(b.addr(), cfg.clone(), &format!("/dicomweb/studies/{uid}/instances"), Some(token)).await;
        assert_eq!(i.status, 200, "{}", i.body);
        // Everything but the RetrieveURL, which names the listener's port.
        let mut instances: Vec<String> = i
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                let mut x = x.clone();
                x.as_object_mut().unwrap().remove("00081190");
                x.to_string()
            })
            .collect();
        instances.sort();
        out.push(format!("{study}\n{}", instances.join("\n")));
    }
    out.sort();
    out
}

fn index_files(data: &Path) -> [std::path::PathBuf; 3] {
    let c = data.join("clinical");
    [c.join("index.sqlite"), c.join("index.sqlite-wal"), c.join("index.sqlite-shm")]
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_whose_index_rows_a_power_cut_lost_are_filed_again_at_start() {
    let b = start(&config(), false).await;
    let device = certificate(&b, "ct-dimse", Some(AE));
    let (nurse_cfg, nurse) = staff_login(&b, "nurse1", broker::Role::Nurse).await;
    let store = |b: &Broker, file: &str| {
        let mut cmd = dcmtk_cmd(b, "storescu", &device, AE);
        cmd.arg(pydicom_file(file));
        cmd
    };

    let out = run(store(&b, "CT_small.dcm")).await;
    assert!(out.status.success(), "storescu failed: {}", text(&out));
    // The index as the disk holds it durably: copied between transactions, it is what a
    // restart after a cut at this moment would find.
    let snapshot = b.data().join("index-snapshot");
    std::fs::create_dir(&snapshot).unwrap();
    for f in &index_files(b.data())[..2] {
        if f.exists() {
            std::fs::copy(f, snapshot.join(f.file_name().unwrap())).unwrap();
        }
    }
    // Two more, acknowledged: the cut loses their rows.
    for file in ["MR_small.dcm", "SC_rgb_small_odd.dcm"] {
        let out = run(store(&b, file)).await;
        assert!(out.status.success(), "storescu failed: {}", text(&out));
    }
    let before = shown(&b, &nurse_cfg, &nurse).await;
    assert_eq!(before.iter().map(|s| s.lines().count() - 1).sum::<usize>(), 3, "{before:#?}");

    // The cut: the broker stops, and the index goes back to the snapshot.
    let Broker { dir, running } = b;
    drop(running);
    let audit = dir.path().join("audit");
    let mut stopped = false;
    for _ in 0..100 {
        // Its state (audit log and stores) is dropped as its tasks wind down.
        if cleave_audit::AuditLog::lock_dir(&audit).is_ok() {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stopped, "the broker did not stop within 10 s");
    for f in index_files(dir.path()) {
        let _ = std::fs::remove_file(&f);
        let saved = snapshot.join(f.file_name().unwrap());
        if saved.exists() {
            std::fs::copy(&saved, &f).unwrap();
        }
    }
    let b = restart(dir).await;

    // A nurse sees exactly what was seen before the cut. (Each login here enrols a new
    // account, and the first nurse's already exists.)
    let (nurse_cfg, nurse) = staff_login(&b, "nurse2", broker::Role::Nurse).await;
    assert_eq!(shown(&b, &nurse_cfg, &nurse).await, before);

    // Two ingest entries by the sweep, each under a patient and a study reference.
    let (aud_cfg, auditor) = staff_login(&b, "auditor1", broker::Role::Auditor).await;
    let r = get(b.addr(), aud_cfg, "/api/v1/audit/entries?operation=ingest&outcome=allowed", Some(&auditor)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let entries = r.json()["entries"].as_array().cloned().unwrap();
    let swept: Vec<&serde_json::Value> = entries.iter().filter(|e| e["actor"]["name"] == "clinical-store-sweep").collect();
    assert_eq!(swept.len(), 2, "{entries:#?}");
    for e in &swept {
        assert_eq!(e["actor"]["kind"], "system", "{e}");
        assert_eq!(e["resources"].as_array().map(Vec::len), Some(2), "{e}");
    }
    // The device's own three ingest entries are there too (its association entries name
    // no resource).
    let by_device = entries
        .iter()
        .filter(|e| e["actor"]["cert_sha256"] == device.fingerprint.as_str() && !e["resources"].as_array().is_none_or(Vec::is_empty))
        .count();
    assert_eq!(by_device, 3, "{entries:#?}");
}
