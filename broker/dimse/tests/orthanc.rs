//! Orthanc as the peer: a PACS configured with our server as a DICOM TLS modality is asked,
//! through its REST API, to C-STORE an instance to us. Orthanc runs in the foreground from
//! this test on free ports with its own configuration and is killed at the end.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Orthanc(Child);

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl").args(["-s", "-S", "--max-time", "60"]).args(args).output();
    let out = out.expect("curl is required for the Orthanc test: apt-get install curl");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn orthanc_stores_an_instance_to_us_over_dicom_tls() {
    let orthanc_bin = std::path::Path::new("/usr/sbin/Orthanc");
    assert!(orthanc_bin.exists(), "Orthanc is missing: install the Debian package orthanc (apt-get install orthanc)");
    let pki = Pki::new();
    let sink = DirSink::new();
    let server = start(&pki, sink.clone()).await;

    let work = tempfile::tempdir().unwrap();
    let (http, dicom) = (free_port(), free_port());
    let config = serde_json::json!({
        "Name": "cleave-test",
        "StorageDirectory": work.path().join("storage"),
        "IndexDirectory": work.path().join("index"),
        "HttpPort": http,
        "DicomPort": dicom,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": false,
        "AuthenticationEnabled": false,
        "Plugins": [],
        "DicomTlsEnabled": true,
        "DicomTlsCertificate": pki.client_cert,
        "DicomTlsPrivateKey": pki.client_key,
        "DicomTlsTrustedCertificates": pki.ca_pem,
        "DicomTlsRemoteCertificateRequired": true,
        "DicomModalities": {
            "cleave": { "AET": CALLED_AE, "Host": "127.0.0.1", "Port": server.local_addr().port(), "UseDicomTls": true }
        }
    })
    .to_string();
    let config_path = work.path().join("orthanc.json");
    std::fs::write(&config_path, config).unwrap();
    let log = std::fs::File::create(work.path().join("orthanc.log")).unwrap();
    let _orthanc = Orthanc(
        Command::new(orthanc_bin).arg(&config_path).stdout(Stdio::null()).stderr(log).spawn().expect("cannot start Orthanc"),
    );
    let base = format!("http://127.0.0.1:{http}");
    let started = Instant::now();
    while !curl(&[&format!("{base}/system")]).0 {
        let log = std::fs::read_to_string(work.path().join("orthanc.log")).unwrap_or_default();
        assert!(started.elapsed() < Duration::from_secs(60), "Orthanc did not start: {log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let input = pydicom_file("CT_small.dcm");
    let (ok, uploaded) = curl(&["-X", "POST", &format!("{base}/instances"), "--data-binary", &format!("@{}", input.display())]);
    assert!(ok && uploaded.contains("\"ID\""), "upload to Orthanc failed: {uploaded}");
    let id = uploaded.split("\"ID\"").nth(1).and_then(|s| s.split('"').nth(1)).unwrap().to_owned();

    let store_url = format!("{base}/modalities/cleave/store");
    let (ok, reply) = tokio::task::spawn_blocking(move || curl(&["-X", "POST", &store_url, "--data-binary", &id])).await.unwrap();
    let log = std::fs::read_to_string(work.path().join("orthanc.log")).unwrap_or_default();
    assert!(ok && reply.contains("\"InstancesCount\" : 1") && reply.contains("\"FailedInstancesCount\" : 0"), "Orthanc C-STORE to us failed: {reply}\n{log}");

    let auths = sink.auths();
    assert_eq!(auths.len(), 1);
    assert_eq!(auths[0].calling, "ORTHANC");
    assert_eq!(auths[0].cert_sha256, pki.client_cert_sha256);
    let stored = sink.stored();
    assert_eq!(stored.len(), 1);
    let (ts, data_set) = split_part10(&stored[0].0);
    let (in_ts, in_data_set) = split_part10(&input);
    assert_eq!(ts, in_ts);
    // Orthanc sends through dcmtk, which drops the data set trailing padding (FFFC,FFFC) when
    // it re-encodes; everything before it must arrive byte for byte.
    let kept = &in_data_set[..data_set.len().min(in_data_set.len())];
    assert!(data_set == kept, "Orthanc's instance did not arrive byte-identical");
    let dropped = &in_data_set[data_set.len()..];
    assert!(dropped.is_empty() || dropped.starts_with(&[0xfc, 0xff, 0xfc, 0xff]), "more than the trailing padding is missing");
    server.shutdown().await.unwrap();
}

