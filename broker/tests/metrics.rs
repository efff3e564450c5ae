//! `/api/v1/metrics`: what the hospital's Prometheus scrapes. Real traffic (a STOW-RS
//! instance, a C-STORE from dcmtk's storescu, a refused association) moves the counters; the
//! text parses with prometheus_client's own OpenMetrics parser; only the IT administrator's
//! token reads it; and it holds no PHI, no UID and no pseudonym.
mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::dimse::*;
use common::*;
use serde_json::Value;

fn ct_small() -> std::path::PathBuf {
    let out = Command::new("python3")
        .args(["-c", "from pydicom.data import get_testdata_file; print(get_testdata_file('CT_small.dcm'))"])
        .output()
        .expect("python3 with pydicom is needed: pip install -r .ci/requirements.txt");
    std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Every sample, parsed by prometheus_client.
fn parse(text: &str) -> Vec<Value> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/metrics_parse.py");
    let mut child = Command::new("python3").arg(script).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "prometheus_client refused the text (pip install prometheus-client): {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

fn value(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .map(|s| s["value"].as_f64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_real_traffic_parse_as_prometheus_and_hold_no_phi() {
    let b = start(&config(), false).await;
    let file = ct_small();
    let bytes = std::fs::read(&file).unwrap();

    // STOW-RS, one instance.
    let (dev_cfg, dev) = device_login(&b, "ct-stow").await;
    let mut body = b"--m1\r\nContent-Type: application/dicom\r\n\r\n".to_vec();
    body.extend_from_slice(&bytes);
    body.extend_from_slice(b"\r\n--m1--\r\n");
    let auth = format!("Bearer {dev}");
    let ct = "multipart/related; type=\"application/dicom\"; boundary=m1";
    let r = request(b.addr(), dev_cfg, "POST", "/dicomweb/studies", &[("Authorization", &auth), ("Content-Type", ct)], &body).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    // C-STORE from an enrolled device, and an association refused for its AE title.
    let device = certificate(&b, "ct-dimse", Some(AE));
    let out = run({
        let mut c = dcmtk_cmd(&b, "storescu", &device, AE);
        c.arg(&file);
        c
    })
    .await;
    assert!(out.status.success(), "storescu failed: {}", text(&out));
    let refused = run(dcmtk_cmd(&b, "echoscu", &device, "NOT_ENROLLED")).await;
    assert!(!refused.status.success(), "an unknown AE title was accepted");

    // Only the IT administrator reads the metrics.
    let (nurse_cfg, nurse) = staff_login(&b, "nurse-m", broker::Role::Nurse).await;
    assert_eq!(get(b.addr(), nurse_cfg, "/api/v1/metrics", Some(&nurse)).await.status, 403);
    assert_eq!(get(b.addr(), b.admin_client(), "/api/v1/metrics", None).await.status, 401);
    let (it_cfg, it) = staff_login(&b, "it-m", broker::Role::ItAdmin).await;
    let r = get(b.addr(), it_cfg, "/api/v1/metrics", Some(&it)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("content-type").unwrap_or_default().starts_with("application/openmetrics-text"), "{}", r.head);

    let samples = parse(&r.body);
    assert_eq!(value(&samples, "cleave_ingest_instances_total", &[("via", "stow"), ("outcome", "stored")]), 1.0, "{}", r.body);
    assert_eq!(value(&samples, "cleave_ingest_instances_total", &[("via", "dimse"), ("outcome", "stored")]), 1.0, "{}", r.body);
    assert_eq!(value(&samples, "cleave_dimse_associations_total", &[("outcome", "accepted")]), 1.0, "{}", r.body);
    assert_eq!(value(&samples, "cleave_dimse_associations_total", &[("outcome", "refused")]), 1.0, "{}", r.body);
    assert_eq!(value(&samples, "cleave_http_requests_total", &[("route", "/dicomweb/studies"), ("method", "POST"), ("status", "200")]), 1.0, "{}", r.body);
    assert_eq!(value(&samples, "cleave_http_requests_total", &[("route", "/api/v1/metrics"), ("status", "403")]), 1.0, "{}", r.body);
    assert!(value(&samples, "cleave_audit_entries", &[]) >= 5.0, "{}", r.body);
    assert!(samples.iter().all(|s| s["name"] != "cleave_audit_syslog_backlog"), "no backlog without forwarding");
    // Each step of each stored instance is timed once, and took some time.
    for via in ["stow", "dimse"] {
        for phase in ["receive", "vault", "blob_sync", "index", "audit"] {
            let labels = [("via", via), ("phase", phase)];
            assert_eq!(value(&samples, "cleave_ingest_phase_seconds_count", &labels), 1.0, "{via} {phase}: {}", r.body);
            let sum = value(&samples, "cleave_ingest_phase_seconds_sum", &labels);
            assert!(sum > 0.0 && sum < 60.0, "{via} {phase}: {sum} s");
            let all = [("via", via), ("phase", phase), ("le", "+Inf")];
            assert_eq!(value(&samples, "cleave_ingest_phase_seconds_bucket", &all), 1.0, "{via} {phase}: {}", r.body);
        }
    }

    // No PHI, UID or pseudonym in any label: CT_small's patient, its UIDs, ours.
    for needle in ["CompressedSamples", "1CT1", "1.3.6.1.4.1.5962", "2.25.", "P1-"] {
        assert!(!r.body.contains(needle), "the metrics carry {needle}: {}", r.body);
    }
}
