//! DICOM over TLS through the real broker, with real peers as the modality.
//!
//! dcmtk: an enrolled device (client certificate + AE title) stores pydicom's CT_small.dcm
//! with storescu; the nurse then finds the study by QIDO and the patient by name, exactly as
//! after STOW-RS. A wrong calling or called AE title, an unknown certificate and a revoked
//! device are refused at association time; echoscu (C-ECHO) works for an enrolled device.
//!
//! pynetdicom: the device token in the user identity passcode (type 2) is verified like a
//! STOW-RS bearer token; a forged token, another device's token and a revoked grant's token
//! refuse the association (rejected-permanent, ACSE service provider) with an audit entry;
//! without a passcode the device's own grant decides, and revoking it refuses the device.
//! A malformed instance and a good one on one association: 0xC000, then success.
//!
//! Orthanc, configured with the broker as a DICOM TLS modality, forwards instances that land
//! de-identified in the clinical store; storescu sends a whole directory; TLS 1.1, non-AEAD
//! suites, no client certificate and a certificate from another CA fail the handshake.
mod common;
#[path = "../dimse/tests/common/orthanc.rs"]
mod orthanc;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use common::dimse::*;
use common::*;
use rustls::ClientConfig;

async fn studies(b: &Broker, cfg: &Arc<ClientConfig>, token: &str) -> Vec<serde_json::Value> {
    let a = get(b.addr(), cfg.clone(), "/dicomweb/studies", Some(token)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.json().as_array().cloned().unwrap_or_default()
}

fn audit_has(b: &Broker, needle: &str) -> bool {
    // The audit log's files are binary-framed JSON; a byte search is enough to see that an
    // entry with this outcome kind was written.
    fn walk(p: &Path, needle: &[u8]) -> bool {
        std::fs::read_dir(p).unwrap().any(|e| {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, needle)
            } else {
                std::fs::read(&p).map(|d| d.windows(needle.len()).any(|w| w == needle)).unwrap_or(false)
            }
        })
    }
    walk(&b.data().join("audit"), needle.as_bytes())
}

#[tokio::test]
async fn storescu_over_tls_stores_a_ct_that_the_nurse_then_finds() {
    let b = start(&config(), false).await;
    assert!(b.running.dicom_addr.is_some(), "dicom_listen in the config must start the DIMSE listener");
    let device = certificate(&b, "ct-dimse", Some(AE));
    let (nurse_cfg, nurse) = staff_login(&b, "nurse1", broker::Role::Nurse).await;
    assert!(studies(&b, &nurse_cfg, &nurse).await.is_empty());

    // C-ECHO from the enrolled device.
    let out = run(dcmtk_cmd(&b, "echoscu", &device, AE)).await;
    assert!(out.status.success(), "echoscu failed: {}", text(&out));

    // C-STORE of a real CT.
    let ct = pydicom_file("CT_small.dcm");
    let mut cmd = dcmtk_cmd(&b, "storescu", &device, AE);
    cmd.arg(&ct);
    let out = run(cmd).await;
    assert!(out.status.success(), "storescu failed: {}", text(&out));
    assert!(!text(&out).to_lowercase().contains("error"), "storescu reported an error: {}", text(&out));

    // The nurse finds the study under a pseudonym, with nothing identifying.
    let found = studies(&b, &nurse_cfg, &nurse).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let json = serde_json::to_string(&found).unwrap();
    for phi in ["CompressedSamples", "1CT1"] {
        assert!(!json.contains(phi), "QIDO answer holds {phi}");
    }
    let pseudonym = found[0]["00100020"]["Value"][0].as_str().unwrap_or_default().to_owned();
    assert!(pseudonym.starts_with("P1-"), "{pseudonym}");

    // The patient is in the vault, found by name, under the study's pseudonym.
    let r = get(b.addr(), nurse_cfg.clone(), "/api/v1/identity/patients?name=CompressedSamples%5ECT1", Some(&nurse)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let patients = r.json()["patients"].as_array().cloned().unwrap();
    assert_eq!(patients.len(), 1, "{}", r.body);
    let theirs: Vec<&str> = patients[0]["pseudonyms"].as_array().unwrap().iter().filter_map(|p| p.as_str()).collect();
    assert!(theirs.contains(&pseudonym.as_str()), "vault pseudonyms {theirs:?} do not include {pseudonym}");

    // Sending it again is idempotent.
    let mut cmd = dcmtk_cmd(&b, "storescu", &device, AE);
    cmd.arg(&ct);
    let out = run(cmd).await;
    assert!(out.status.success(), "storescu (again) failed: {}", text(&out));
    assert_eq!(studies(&b, &nurse_cfg, &nurse).await.len(), 1);

    // Both C-STOREs are in the audit log as ingests by the device, under the patient's
    // keyed reference, like STOW-RS.
    let (aud_cfg, auditor) = staff_login(&b, "auditor1", broker::Role::Auditor).await;
    let r = get(b.addr(), aud_cfg, &format!("/api/v1/audit/entries?patient={pseudonym}"), Some(&auditor)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ingests: Vec<serde_json::Value> = r.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["op"] == "ingest")
        .cloned()
        .collect();
    assert_eq!(ingests.len(), 2, "{}", r.body);
    for e in &ingests {
        assert_eq!(e["actor"]["kind"], "device", "{e}");
        assert_eq!(e["outcome"]["result"], "allowed", "{e}");
        assert!(e["actor"]["cert_sha256"].as_str().is_some_and(|h| h.len() == 64), "{e}");
    }
}

#[tokio::test]
async fn wrong_ae_title_unknown_certificate_and_revoked_device_are_refused() {
    let b = start(&config(), false).await;
    let device = certificate(&b, "ct-dimse", Some(AE));
    let stranger = certificate(&b, "not-enrolled", None);
    let (nurse_cfg, nurse) = staff_login(&b, "nurse1", broker::Role::Nurse).await;
    let ct = pydicom_file("CT_small.dcm");

    // The right device works (so the refusals below are about what changed).
    let out = run(dcmtk_cmd(&b, "echoscu", &device, AE)).await;
    assert!(out.status.success(), "echoscu failed: {}", text(&out));

    // The enrolled certificate with another calling AE title.
    let mut cmd = dcmtk_cmd(&b, "storescu", &device, "INTRUDER");
    cmd.arg(&ct);
    let out = run(cmd).await;
    assert!(!out.status.success(), "a wrong AE title was accepted: {}", text(&out));
    assert!(text(&out).to_lowercase().contains("calling ae title not recognized"), "{}", text(&out));
    assert!(audit_has(&b, "calling-ae-title"), "the refusal is not in the audit log");

    // A certificate from the broker's CA that is not an enrolled device.
    let out = run(dcmtk_cmd(&b, "echoscu", &stranger, AE)).await;
    assert!(!out.status.success(), "an unenrolled certificate was accepted: {}", text(&out));

    // A revoked device.
    let opened = broker::open(b.data(), broker::MasterKeySource::KeyFile).unwrap();
    opened.accounts.revoke_device("ct-dimse").unwrap();
    let mut cmd = dcmtk_cmd(&b, "storescu", &device, AE);
    cmd.arg(&ct);
    let out = run(cmd).await;
    assert!(!out.status.success(), "a revoked device was accepted: {}", text(&out));
    let out = run(dcmtk_cmd(&b, "echoscu", &device, AE)).await;
    assert!(!out.status.success(), "a revoked device could echo: {}", text(&out));

    // Nothing was stored by any of them.
    assert!(studies(&b, &nurse_cfg, &nurse).await.is_empty());
}

#[tokio::test]
async fn a_wrong_called_ae_title_is_refused_and_audited() {
    let b = start(&config(), false).await;
    let device = certificate(&b, "ct-dimse", Some(AE));
    let port = b.running.dicom_addr.unwrap().port().to_string();
    let mut cmd = Command::new(dcmtk("echoscu"));
    cmd.arg("+tls").arg(&device.key).arg(&device.cert).arg("+cf").arg(b.ca_pem());
    cmd.args(["-to", "10", "-aet", AE, "-aec", "ANY-SCP", "127.0.0.1", &port]);
    let out = run(cmd).await;
    assert!(!out.status.success(), "a wrong called AE title was accepted: {}", text(&out));
    assert!(text(&out).to_lowercase().contains("called ae title not recognized"), "{}", text(&out));
    assert!(audit_has(&b, "called-ae-title"), "the refusal is not in the audit log");
    // The configured title works for the same device.
    let out = run(dcmtk_cmd(&b, "echoscu", &device, AE)).await;
    assert!(out.status.success(), "echoscu with the right called AE title failed: {}", text(&out));
}

/// A pynetdicom modality over TLS. argv: port ca cert key calling passcode files...
/// (passcode `-` sends no user identity; a file prefixed `truncated:` is sent with its last
/// 100 bytes cut off, so its pixel data runs past the end of the data set).
const PYNETDICOM: &str = r#"
import ssl, sys
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom_associate import associate
import pynetdicom.association as A
from pynetdicom.pdu_primitives import UserIdentityNegotiation

port, ca, cert, key, calling, passcode = sys.argv[1:7]
files = sys.argv[7:]
ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
ctx.load_cert_chain(certfile=cert, keyfile=key)
encode = A.encode
cut = {"next": False}
def encode_maybe_cut(*a, **k):
    out = encode(*a, **k)
    if cut["next"] and out is not None:
        cut["next"] = False
        return out[:-100]
    return out
A.encode = encode_maybe_cut
ae = AE(ae_title=calling)
ae.add_requested_context("1.2.840.10008.1.1")
ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ExplicitVRLittleEndian)
ext = []
if passcode != "-":
    ident = UserIdentityNegotiation()
    ident.user_identity_type = 2
    ident.primary_field = b"device"
    ident.secondary_field = passcode.encode()
    ident.positive_response_requested = True
    ext.append(ident)
assoc = associate(ae, port, ext, (ctx, "localhost"))
if assoc is None:
    sys.exit(0)
resp = assoc.acceptor.user_identity
print("ACCEPTED identity-response=%s" % ("none" if resp is None else repr(resp.server_response)))
print("ECHO 0x%04x" % assoc.send_c_echo().Status)
for f in files:
    truncated = f.startswith("truncated:")
    ds = dcmread(f.split(":", 1)[1] if truncated else f)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    cut["next"] = truncated
    st = assoc.send_c_store(ds)
    print("STORE 0x%04x" % st.Status if "Status" in st else "STORE none")
assoc.release()
print("RELEASED")
"#;

async fn pynetdicom(b: &Broker, pair: &Pair, calling: &str, passcode: Option<&str>, files: &[String]) -> Vec<String> {
    let ok = Command::new("python3").args(["-c", "import pydicom, pynetdicom"]).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "python3 with pydicom and pynetdicom is required: pip install -r .ci/requirements.txt (or run .ci/run)");
    let mut cmd = Command::new("python3");
    // The script imports pynetdicom_associate.py from the folder cleave-dimse's tests live in.
    cmd.env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/dimse/tests"));
    cmd.arg("-c").arg(PYNETDICOM).arg(b.running.dicom_addr.unwrap().port().to_string());
    cmd.arg(b.ca_pem()).arg(&pair.cert).arg(&pair.key).arg(calling).arg(passcode.unwrap_or("-"));
    cmd.args(files);
    let out = run(cmd).await;
    assert!(out.status.success(), "pynetdicom script failed: {}", text(&out));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

/// The device's append-only token from `/api/v1/device/token`, over mutual TLS with its cert.
async fn device_token(b: &Broker, pair: &Pair) -> String {
    let cfg = b.client(Some((&pair.cert, &pair.key)));
    let r = post_json(b.addr(), cfg, "/api/v1/device/token", None, &serde_json::json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["token"].as_str().unwrap().to_owned()
}

/// Audit entries the auditor sees, newest last.
async fn audit_entries(b: &Broker, query: &str) -> Vec<serde_json::Value> {
    let (cfg, token) = staff_login(b, &format!("auditor{}", rand_suffix()), broker::Role::Auditor).await;
    let r = get(b.addr(), cfg, &format!("/api/v1/audit/entries{query}"), Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["entries"].as_array().cloned().unwrap_or_default()
}

fn rand_suffix() -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst).to_string()
}

/// PS3.8 A-ASSOCIATE-RJ: rejected-permanent (1), DICOM UL service-provider ACSE (2),
/// no-reason-given (1): how PS3.7 D.3.3.7 says a refused user identity is answered.
const IDENTITY_REFUSED: &str = "REJECTED 1 2 1";

#[tokio::test(flavor = "multi_thread")]
async fn a_device_token_in_the_passcode_authorizes_and_a_malformed_instance_leaves_the_association_usable() {
    let b = start(&config(), false).await;
    let device = certificate(&b, "ct-py", Some(AE));
    let token = device_token(&b, &device).await;
    let (nurse_cfg, nurse) = staff_login(&b, "nurse1", broker::Role::Nurse).await;
    let ct = pydicom_file("CT_small.dcm").display().to_string();

    // One association: echo, a truncated CT (cannot understand), then the whole CT.
    let lines = pynetdicom(&b, &device, AE, Some(&token), &[format!("truncated:{ct}"), ct.clone()]).await;
    assert_eq!(lines.len(), 5, "{lines:?}");
    // PS3.7 Table D.3-15: type 2 gets a zero-length server response when asked for one.
    assert_eq!(lines[0], "ACCEPTED identity-response=b''", "{lines:?}");
    assert_eq!(lines[1], "ECHO 0x0000");
    let bad: u16 = u16::from_str_radix(lines[2].trim_start_matches("STORE 0x"), 16).unwrap_or(0);
    assert_eq!(bad & 0xF000, 0xC000, "the truncated instance got {} instead of a Cannot Understand status", lines[2]);
    assert_eq!(lines[3], "STORE 0x0000", "the good instance after a failure on the same association: {lines:?}");
    assert_eq!(lines[4], "RELEASED");

    // Exactly the good one is stored, de-identified, and its patient is in the vault.
    let found = studies(&b, &nurse_cfg, &nurse).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let pseudonym = found[0]["00100020"]["Value"][0].as_str().unwrap_or_default().to_owned();
    assert!(pseudonym.starts_with("P1-"), "{pseudonym}");
    assert!(!serde_json::to_string(&found).unwrap().contains("CompressedSamples"));
    let r = get(b.addr(), nurse_cfg.clone(), "/api/v1/identity/patients?name=CompressedSamples%5ECT1", Some(&nurse)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["patients"].as_array().map(Vec::len), Some(1), "{}", r.body);

    // The audit trail reads as for STOW-RS: an allowed access (an ingest decision) under the
    // token's grant, an ingest error (bad-object) and an allowed ingest of the patient, all
    // by this device's certificate.
    let entries = audit_entries(&b, "").await;
    // (Leaving out the device's token fetch over HTTPS, a `login`.)
    let mine: Vec<&serde_json::Value> =
        entries.iter().filter(|e| e["actor"]["cert_sha256"] == device.fingerprint.as_str() && e["op"] != "login").collect();
    let all = serde_json::to_string(&mine).unwrap();
    assert!(mine.iter().all(|e| e["actor"]["kind"] == "device" && e["op"] == "ingest"), "{all}");
    assert!(mine.iter().all(|e| e["actor"]["grant"].is_string()), "an entry without the token's grant: {all}");
    let allowed = mine.iter().filter(|e| e["outcome"]["result"] == "allowed").count();
    let errors = mine.iter().filter(|e| e["outcome"]["result"] == "error").count();
    assert_eq!((allowed, errors), (2, 1), "{all}");
    assert!(all.contains("bad-object"), "{all}");
    let of_patient = audit_entries(&b, &format!("?patient={pseudonym}")).await;
    assert_eq!(of_patient.iter().filter(|e| e["op"] == "ingest" && e["actor"]["kind"] == "device").count(), 1, "{of_patient:?}");
    let text_all = serde_json::to_string(&entries).unwrap();
    assert!(!text_all.contains(&token), "the token reached the audit log");
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_foreign_and_revoked_tokens_refuse_the_association_and_are_audited() {
    let b = start(&config(), false).await;
    let device = certificate(&b, "ct-py", Some(AE));
    let other = certificate(&b, "ct-other", Some("CT_OTHER"));
    let (nurse_cfg, nurse) = staff_login(&b, "nurse1", broker::Role::Nurse).await;
    let ct = pydicom_file("CT_small.dcm").display().to_string();
    let good = device_token(&b, &device).await;
    let theirs = device_token(&b, &other).await;

    // A forged token: the device's own with its last character changed.
    let mut forged = good.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let before = audit_entries(&b, "").await.len();
    let lines = pynetdicom(&b, &device, AE, Some(&forged), std::slice::from_ref(&ct)).await;
    assert_eq!(lines, [IDENTITY_REFUSED], "a forged token");
    // Another device's valid token, from this device's certificate: its cert caveat fails.
    let lines = pynetdicom(&b, &device, AE, Some(&theirs), std::slice::from_ref(&ct)).await;
    assert_eq!(lines, [IDENTITY_REFUSED], "another device's token");
    // Not a token at all.
    let lines = pynetdicom(&b, &device, AE, Some("hunter2"), std::slice::from_ref(&ct)).await;
    assert_eq!(lines, [IDENTITY_REFUSED], "a password");
    // Each refusal is one denied decision under this device's certificate, without the token.
    let entries = audit_entries(&b, "").await;
    let denied: Vec<&serde_json::Value> = entries[before..]
        .iter()
        .filter(|e| e["actor"]["cert_sha256"] == device.fingerprint.as_str() && e["outcome"]["result"] == "denied")
        .collect();
    assert_eq!(denied.len(), 3, "{:?}", &entries[before..]);
    let text_all = serde_json::to_string(&entries).unwrap();
    assert!(!text_all.contains(&forged) && !text_all.contains(&theirs), "a token reached the audit log");

    // The good token works; then its grant is revoked (log out with it) and it does not.
    let lines = pynetdicom(&b, &device, AE, Some(&good), &[]).await;
    assert_eq!(lines[1..], ["ECHO 0x0000", "RELEASED"], "{lines:?}");
    let cfg = b.client(Some((&device.cert, &device.key)));
    let r = post_json(b.addr(), cfg, "/api/v1/grants/current/revoke", Some(&good), &serde_json::json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let lines = pynetdicom(&b, &device, AE, Some(&good), std::slice::from_ref(&ct)).await;
    assert_eq!(lines, [IDENTITY_REFUSED], "a revoked grant's token");
    // Without a passcode the device's latest grant decides: the revoked one refuses it...
    let lines = pynetdicom(&b, &device, AE, None, std::slice::from_ref(&ct)).await;
    assert_eq!(lines, ["REJECTED 1 1 1"], "a device whose grant was revoked");
    // ...until it fetches a new token, which makes a new grant.
    let _fresh = device_token(&b, &device).await;
    let lines = pynetdicom(&b, &device, AE, None, &[]).await;
    assert_eq!(lines, ["ACCEPTED identity-response=none", "ECHO 0x0000", "RELEASED"]);
    assert!(studies(&b, &nurse_cfg, &nurse).await.is_empty(), "a refused association stored something");
}

/// Runs `openssl s_client` against the DICOM port off the async runtime (the broker answers
/// on it), bounded by coreutils' `timeout`; stdin is empty, so a completed handshake ends.
async fn openssl_s_client(b: &Broker, pair: Option<&Pair>, args: &[&str]) -> Output {
    let port = b.running.dicom_addr.unwrap().port();
    let mut cmd = Command::new("timeout");
    cmd.args(["20", "openssl", "s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "localhost", "-CAfile"]).arg(b.ca_pem());
    if let Some(p) = pair {
        cmd.arg("-cert").arg(&p.cert).arg("-key").arg(&p.key);
    }
    cmd.args(args).stdin(std::process::Stdio::null());
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap();
    out.expect("openssl and coreutils' timeout are required for the TLS test: apt-get install openssl coreutils")
}

/// Whether s_client reports a negotiated suite ("Cipher is (NONE)" when the handshake failed).
fn negotiated(out: &Output) -> bool {
    let t = text(out);
    t.contains("Cipher is ") && !t.contains("Cipher is (NONE)")
}

/// BCP 195 (RFC 9325) on the DICOM port: TLS 1.2+ with AEAD ECDHE suites only. The refusals
/// must come from the server (a fatal alert received after the ClientHello was sent), not from
/// a client that never offered the old protocol: OpenSSL 3 needs security level 0 to offer
/// TLS 1.1 at all.
#[tokio::test]
async fn bcp195_old_tls_and_non_aead_suites_are_refused_on_the_dicom_port() {
    let b = start(&config(), false).await;
    let device = certificate(&b, "ct-tls", Some(AE));

    let out = openssl_s_client(&b, Some(&device), &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]).await;
    assert!(!negotiated(&out), "TLS 1.1 was accepted: {}", text(&out));
    assert!(text(&out).contains("SSL alert number"), "TLS 1.1 not refused by the server: {}", text(&out));

    let cbc = "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA384:AES128-SHA:AES256-GCM-SHA384";
    let out = openssl_s_client(&b, Some(&device), &["-tls1_2", "-cipher", cbc]).await;
    assert!(!negotiated(&out), "a non-AEAD or non-ECDHE suite was accepted: {}", text(&out));
    assert!(text(&out).contains("alert handshake failure"), "not refused by the server: {}", text(&out));

    // The control: TLS 1.2 with an AEAD ECDHE suite works, and so does TLS 1.3.
    let aead = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
    let out = openssl_s_client(&b, Some(&device), &["-tls1_2", "-cipher", aead]).await;
    assert!(negotiated(&out) && text(&out).contains("Cipher is ECDHE-"), "TLS 1.2 with an AEAD ECDHE suite failed: {}", text(&out));
    let out = openssl_s_client(&b, Some(&device), &["-tls1_3"]).await;
    assert!(negotiated(&out) && text(&out).contains("TLSv1.3"), "TLS 1.3 failed: {}", text(&out));
}

#[tokio::test]
async fn storescu_sends_a_directory_and_peers_without_our_certificate_fail() {
    let b = start(&config(), false).await;
    let device = certificate(&b, "ct-dir", Some(AE));
    let (nurse_cfg, nurse) = staff_login(&b, "nurse1", broker::Role::Nurse).await;
    let dir = tempfile::tempdir().unwrap();
    let names = ["CT_small.dcm", "MR_small.dcm", "SC_rgb_small_odd.dcm"];
    for n in names {
        std::fs::copy(pydicom_file(n), dir.path().join(n)).unwrap();
    }

    // No client certificate, and a self-signed one (another CA): the handshake fails.
    let port = b.running.dicom_addr.unwrap().port().to_string();
    let mut cmd = Command::new(dcmtk("storescu"));
    cmd.args(["+tls", "-", "-"]).arg("+cf").arg(b.ca_pem()).args(["-to", "10", "-aet", AE, "-aec", "CLEAVE", "127.0.0.1", &port, "+sd"]).arg(dir.path());
    let out = run(cmd).await;
    assert!(!out.status.success(), "storescu without a client certificate was accepted: {}", text(&out));
    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=intruder", "-keyout"])
        .arg(foreign.join("k.pem"))
        .arg("-out")
        .arg(foreign.join("c.pem"))
        .output()
        .expect("openssl is required: apt-get install openssl");
    assert!(made.status.success(), "{}", text(&made));
    let intruder = Pair { cert: foreign.join("c.pem"), key: foreign.join("k.pem"), fingerprint: String::new() };
    let out = run(dcmtk_cmd(&b, "echoscu", &intruder, AE)).await;
    assert!(!out.status.success(), "a certificate from another CA was accepted: {}", text(&out));
    std::fs::remove_dir_all(&foreign).unwrap();

    // The enrolled device sends the whole directory in one association.
    let mut cmd = dcmtk_cmd(&b, "storescu", &device, AE);
    cmd.arg("+sd").arg(dir.path());
    let out = run(cmd).await;
    assert!(out.status.success(), "storescu +sd failed: {}", text(&out));
    assert!(!text(&out).to_lowercase().contains("error"), "{}", text(&out));
    let stored = audit_entries(&b, "?operation=ingest&outcome=allowed").await;
    let mine = stored.iter().filter(|e| e["actor"]["cert_sha256"] == device.fingerprint.as_str() && !e["resources"].as_array().is_none_or(Vec::is_empty)).count();
    assert_eq!(mine, names.len(), "{stored:?}");
    let found = studies(&b, &nurse_cfg, &nurse).await;
    assert!(found.len() >= 2, "{found:?}");
    assert!(found.iter().all(|s| s["00100020"]["Value"][0].as_str().is_some_and(|p| p.starts_with("P1-"))), "{found:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn orthanc_forwards_instances_through_the_broker() {
    let b = start(&config(), false).await;
    let device = certificate(&b, "orthanc", Some("ORTHANC"));
    let (nurse_cfg, nurse) = staff_login(&b, "nurse1", broker::Role::Nurse).await;
    let port = b.running.dicom_addr.unwrap().port();
    let ca = b.ca_pem();
    let o = orthanc::Orthanc::start(orthanc::Peer { aet: "ORTHANC", called: "CLEAVE", port, cert: &device.cert, key: &device.key, ca: &ca }).await;
    let ids = vec![o.upload(&pydicom_file("CT_small.dcm")), o.upload(&pydicom_file("MR_small.dcm"))];
    let (ok, reply) = o.store_to_us(&ids).await;
    assert!(ok && reply.contains("\"InstancesCount\" : 2") && reply.contains("\"FailedInstancesCount\" : 0"), "Orthanc to the broker failed: {reply}\n{}", o.log());

    // Both patients are in the vault; their studies are in the clinical store under pseudonyms.
    let found = studies(&b, &nurse_cfg, &nurse).await;
    assert_eq!(found.len(), 2, "{found:?}");
    let json = serde_json::to_string(&found).unwrap();
    assert!(!json.contains("CompressedSamples") && !json.contains("4MR1"), "{json}");
    for name in ["CompressedSamples%5ECT1", "CompressedSamples%5EMR1"] {
        let r = get(b.addr(), nurse_cfg.clone(), &format!("/api/v1/identity/patients?name={name}"), Some(&nurse)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["patients"].as_array().map(Vec::len), Some(1), "{name}: {}", r.body);
    }

    // Revoked, Orthanc is refused and nothing more is stored.
    broker::open(b.data(), broker::MasterKeySource::KeyFile).unwrap().accounts.revoke_device("orthanc").unwrap();
    let more = vec![o.upload(&pydicom_file("SC_rgb_small_odd.dcm"))];
    let (_, reply) = o.store_to_us(&more).await;
    assert!(!reply.contains("\"InstancesCount\" : 1"), "a revoked Orthanc stored: {reply}");
    assert_eq!(studies(&b, &nurse_cfg, &nurse).await.len(), 2);
}
