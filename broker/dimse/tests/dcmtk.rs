//! dcmtk as the peer: echoscu and storescu over mutual TLS, the way a modality or a PACS
//! would talk to Cleave's DICOM port.

mod common;

use std::process::Command;

use common::*;

fn tls_args(cmd: &mut Command, key: &std::path::Path, cert: &std::path::Path, pki: &Pki) {
    cmd.arg("+tls").arg(key).arg(cert).arg("+cf").arg(&pki.ca_pem);
}

fn echoscu(pki: &Pki, port: u16, calling: &str) -> Command {
    let mut cmd = Command::new(dcmtk("echoscu"));
    tls_args(&mut cmd, &pki.client_key, &pki.client_cert, pki);
    cmd.args(["-aet", calling, "-aec", CALLED_AE, "127.0.0.1", &port.to_string()]);
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_with_a_device_certificate_succeeds_and_the_sink_sees_the_fingerprint() {
    let pki = Pki::new();
    let sink = DirSink::new();
    let server = start(&pki, sink.clone()).await;
    let out = run(echoscu(&pki, server.local_addr().port(), MODALITY_AE)).await;
    assert!(out.status.success(), "echoscu failed: {}", text(&out));
    let auths = sink.auths();
    assert_eq!(auths.len(), 1);
    assert_eq!(auths[0].cert_sha256, pki.client_cert_sha256);
    assert_eq!(auths[0].calling, MODALITY_AE);
    assert_eq!(auths[0].called, CALLED_AE);
    assert!(auths[0].identity.is_none());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_echo_without_a_client_certificate_or_without_tls() {
    let pki = Pki::new();
    let sink = DirSink::new();
    let server = start(&pki, sink.clone()).await;
    let port = server.local_addr().port().to_string();

    let mut anonymous = Command::new(dcmtk("echoscu"));
    anonymous.args(["+tla", "+cf"]).arg(&pki.ca_pem).args(["-aet", MODALITY_AE, "-aec", CALLED_AE, "127.0.0.1", &port]);
    let out = run(anonymous).await;
    assert!(!out.status.success(), "anonymous TLS was accepted: {}", text(&out));

    let mut plain = Command::new(dcmtk("echoscu"));
    plain.args(["-to", "5", "-aet", MODALITY_AE, "-aec", CALLED_AE, "127.0.0.1", &port]);
    let out = run(plain).await;
    assert!(!out.status.success(), "plain TCP was accepted: {}", text(&out));

    assert!(sink.auths().is_empty(), "authorize was reached without a verified certificate");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_echo_with_a_certificate_from_a_foreign_ca() {
    let pki = Pki::new();
    let sink = DirSink::new();
    let server = start(&pki, sink.clone()).await;
    let mut cmd = Command::new(dcmtk("echoscu"));
    tls_args(&mut cmd, &pki.foreign_key, &pki.foreign_cert, &pki);
    cmd.args(["-aet", MODALITY_AE, "-aec", CALLED_AE, "127.0.0.1", &server.local_addr().port().to_string()]);
    let out = run(cmd).await;
    assert!(!out.status.success(), "foreign certificate accepted: {}", text(&out));
    assert!(sink.auths().is_empty());
    // The server is still healthy for a legitimate device.
    let ok = run(echoscu(&pki, server.local_addr().port(), MODALITY_AE)).await;
    assert!(ok.status.success(), "{}", text(&ok));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_unknown_calling_ae_title_is_rejected_at_association_with_its_reason() {
    let pki = Pki::new();
    let sink = DirSink::new();
    let server = start(&pki, sink.clone()).await;
    let out = run(echoscu(&pki, server.local_addr().port(), "INTRUDER")).await;
    assert!(!out.status.success(), "unknown AE accepted: {}", text(&out));
    let t = text(&out);
    assert!(t.contains("Calling AE Title Not Recognized"), "wrong rejection reason: {t}");
    assert_eq!(sink.auths().len(), 1, "the sink must have been asked");
    server.shutdown().await.unwrap();
}

/// Files from pydicom's test data, one per transfer syntax we must pass through, with the
/// storescu option that makes it propose that transfer syntax (by default storescu proposes
/// only uncompressed explicit VR and would transcode or give up on anything else).
const SAMPLES: &[(&str, &str, &str)] = &[
    ("CT_small.dcm", "1.2.840.10008.1.2.1", "-x="),
    ("MR_small.dcm", "1.2.840.10008.1.2.1", "-x="),
    ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2", "-x="),
    ("rtplan.dcm", "1.2.840.10008.1.2", "-xi"),
    ("image_dfl.dcm", "1.2.840.10008.1.2.1.99", "-xd"),
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5", "-xr"),
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", "-xy"),
    ("JPEG-lossy.dcm", "1.2.840.10008.1.2.4.51", "-xx"),
    ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80", "-xt"),
    ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91", "-xw"),
];

#[tokio::test(flavor = "multi_thread")]
async fn storescu_sends_directories_and_every_data_set_arrives_byte_identical() {
    let pki = Pki::new();
    let sink = DirSink::new();
    let server = start(&pki, sink.clone()).await;

    // Nested directories of real files, as +sd +r would find them on a modality's disk; one
    // tree per storescu proposal option.
    let input = tempfile::tempdir().unwrap();
    let mut expected = std::collections::HashMap::new();
    let mut trees = std::collections::BTreeMap::new();
    for (i, (name, ts, option)) in SAMPLES.iter().enumerate() {
        let tree = input.path().join(option.trim_start_matches('-').replace('=', "default"));
        let sub = tree.join(format!("study{}/series{}", i % 2, i % 3));
        std::fs::create_dir_all(&sub).unwrap();
        let dst = sub.join(name);
        std::fs::copy(pydicom_file(name), &dst).unwrap();
        let (file_ts, data_set) = split_part10(&dst);
        assert_eq!(&file_ts, ts, "{name} is not in the transfer syntax this test relies on");
        expected.insert(data_set, (*name, *ts));
        trees.insert(*option, tree);
    }

    let send = |tree: &std::path::Path, option: &str, port: u16, tls: bool| {
        let mut cmd = Command::new(dcmtk("storescu"));
        if tls {
            tls_args(&mut cmd, &pki.client_key, &pki.client_cert, &pki);
        }
        cmd.args([option, "+sd", "+r", "-aet", "STORESCU", "-aec", CALLED_AE, "127.0.0.1", &port.to_string()]);
        cmd.arg(tree);
        cmd
    };
    for (option, tree) in &trees {
        let out = run(send(tree, option, server.local_addr().port(), true)).await;
        assert!(out.status.success(), "storescu {option} failed: {}", text(&out));
        assert!(!text(&out).contains("unable to convert"), "storescu {option} transcoded: {}", text(&out));
    }

    // storescu re-encodes what it reads (it drops trailing padding, for one), so "what the
    // sender sent" is what dcmtk's own storescp records in bit-preserving mode (+B) from the
    // same storescu runs. Our stored data sets must equal those, byte for byte.
    let reference = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut storescp = Command::new(dcmtk("storescp"))
        .args(["+B", "+xa", "+uf", "-aet", CALLED_AE, "-od"])
        .arg(reference.path())
        .arg(port.to_string())
        .spawn()
        .expect("cannot start storescp");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for (option, tree) in &trees {
        let out = run(send(tree, option, port, false)).await;
        assert!(out.status.success(), "storescu {option} to storescp failed: {}", text(&out));
    }
    let _ = storescp.kill();
    let _ = storescp.wait();
    let mut sent = std::collections::HashMap::new();
    for entry in std::fs::read_dir(reference.path()).unwrap() {
        let (ts, data_set) = split_part10(&entry.unwrap().path());
        let name = expected.get(&data_set).map(|(n, _)| *n).unwrap_or("re-encoded by storescu");
        sent.insert(data_set, (name, ts));
    }
    assert_eq!(sent.len(), SAMPLES.len(), "storescp did not receive every file");

    let stored = sink.stored();
    assert_eq!(stored.len(), SAMPLES.len());
    for (path, _) in &stored {
        let (ts, data_set) = split_part10(path);
        let (name, want_ts) = sent.remove(&data_set).unwrap_or_else(|| panic!("{} (ts {ts}) matches no data set the sender sent", path.display()));
        assert_eq!(ts, want_ts, "{name}: meta group names the wrong transfer syntax");
        expected.remove(&data_set);
        // dcmtk itself must accept our meta group.
        let dump = run({
            let mut c = Command::new(dcmtk("dcmdump"));
            c.arg("-q").arg(path);
            c
        })
        .await;
        assert!(dump.status.success(), "dcmdump rejects the stored {name}: {}", text(&dump));
    }
    assert!(sent.is_empty());
    // Files storescu did not re-encode are also identical to the input files themselves.
    let untouched = SAMPLES.len() - expected.len();
    println!("{untouched} of {} stored data sets are byte-identical to the input files", SAMPLES.len());
    assert!(untouched > 0, "no stored data set equals its input file");
    server.shutdown().await.unwrap();
}
