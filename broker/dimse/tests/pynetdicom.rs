//! pynetdicom as the peer: C-ECHO and C-STORE over TLS from Python's ssl module, user identity
//! negotiation (a macaroon in the passcode), and the association surviving a failed C-STORE.

mod common;

use std::process::Command;
use std::sync::atomic::Ordering;

use cleave_dimse::UserIdentityKind;
use common::*;

const SCRIPT: &str = r#"
import ssl, sys
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom_associate import associate
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pydicom.uid import ExplicitVRLittleEndian

port, ca, cert, key, path, calling = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
ctx.load_cert_chain(certfile=cert, keyfile=key)
ds = dcmread(path)
ae = AE(ae_title=calling)
ae.add_requested_context("1.2.840.10008.1.1")
ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
ident = UserIdentityNegotiation()
ident.user_identity_type = 2
ident.primary_field = b"device-7"
ident.secondary_field = b"MDAxY2xvY2F0aW9uIGNsZWF2ZQ-macaroon"
ident.positive_response_requested = True
assoc = associate(ae, port, [ident], (ctx, "localhost"))
if assoc is None:
    sys.exit(0)
print("ECHO 0x%04x" % assoc.send_c_echo().Status)
for _ in range(2):
    print("STORE 0x%04x" % assoc.send_c_store(ds).Status)
assoc.release()
print("RELEASED")
"#;

async fn pynetdicom(pki: &Pki, port: u16, calling: &str) -> Vec<String> {
    let mut cmd = Command::new(python());
    // The script imports pynetdicom_associate.py, which lives beside this file.
    cmd.env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/tests"));
    cmd.arg("-c").arg(SCRIPT).arg(port.to_string()).arg(&pki.ca_pem).arg(&pki.client_cert).arg(&pki.client_key);
    cmd.arg(pydicom_file("CT_small.dcm")).arg(calling);
    let out = run(cmd).await;
    assert!(out.status.success(), "pynetdicom script failed: {}", text(&out));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_then_out_of_resources_then_success_on_one_association_with_user_identity() {
    let pki = Pki::new();
    let sink = DirSink::new();
    sink.fail_next.store(1, Ordering::SeqCst);
    let server = start(&pki, sink.clone()).await;

    let lines = pynetdicom(&pki, server.local_addr().port(), "PYNETDICOM").await;
    assert_eq!(lines, ["ECHO 0x0000", "STORE 0xa700", "STORE 0x0000", "RELEASED"]);

    let auths = sink.auths();
    assert_eq!(auths.len(), 1, "both C-STOREs must have used one association");
    assert_eq!(auths[0].cert_sha256, pki.client_cert_sha256);
    let (kind, user, passcode) = auths[0].identity.clone().expect("user identity not passed to the sink");
    assert_eq!(kind, UserIdentityKind::UsernamePasscode);
    assert_eq!(user, "device-7");
    assert_eq!(passcode, "MDAxY2xvY2F0aW9uIGNsZWF2ZQ-macaroon");

    let stored = sink.stored();
    assert_eq!(stored.len(), 1);
    let dump = run({
        let mut c = Command::new(dcmtk("dcmdump"));
        c.arg(&stored[0].0);
        c
    })
    .await;
    assert!(dump.status.success(), "{}", text(&dump));
    // The meta group carries the C-STORE's SOP Instance UID and the negotiated syntax.
    let t = text(&dump);
    assert!(t.contains(&format!("(0002,0003) UI [{}]", stored[0].1)), "{t}");
    assert!(t.contains("(0002,0010) UI =LittleEndianExplicit"), "{t}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_pynetdicom_with_an_unknown_calling_ae_is_rejected() {
    let pki = Pki::new();
    let sink = DirSink::new();
    let server = start(&pki, sink.clone()).await;
    let lines = pynetdicom(&pki, server.local_addr().port(), "NOT_ALLOWED").await;
    // Permanent (1), by the service user (1), calling AE title not recognised (3).
    assert_eq!(lines, ["REJECTED 1 1 3"]);
    assert!(sink.stored().is_empty());
    server.shutdown().await.unwrap();
}
