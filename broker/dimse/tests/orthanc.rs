//! Orthanc as the peer: a PACS configured with our server as a DICOM TLS modality is asked,
//! through its REST API, to C-STORE an instance to us. Orthanc runs in the foreground from
//! this test on free ports with its own configuration and is killed at the end.

mod common;

use common::orthanc::{Orthanc, Peer};
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn orthanc_stores_an_instance_to_us_over_dicom_tls() {
    let pki = Pki::new();
    let sink = DirSink::new();
    let server = start(&pki, sink.clone()).await;
    let port = server.local_addr().port();
    let orthanc = Orthanc::start(Peer { aet: "ORTHANC", called: CALLED_AE, port, cert: &pki.client_cert, key: &pki.client_key, ca: &pki.ca_pem }).await;

    let input = pydicom_file("CT_small.dcm");
    let id = orthanc.upload(&input);
    let (ok, reply) = orthanc.store_to_us(&[id]).await;
    assert!(ok && reply.contains("\"InstancesCount\" : 1") && reply.contains("\"FailedInstancesCount\" : 0"), "Orthanc C-STORE to us failed: {reply}\n{}", orthanc.log());

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

