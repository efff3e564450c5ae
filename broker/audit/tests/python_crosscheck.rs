//! Independent cross-checks with Python: `hashlib` recomputes RFC 9162 roots from the raw
//! entries file, PyNaCl verifies the C2SP checkpoint signatures and key id, and
//! `xml.etree` parses the ATNA export. CI installs PyNaCl from .ci/requirements.txt.
mod common;

use std::process::Command;

use cleave_audit::*;
use common::*;

const SCRIPT: &str = r#"
import base64, hashlib, struct, sys, json
import nacl.signing
d, vkey = sys.argv[1], sys.argv[2]
data = open(d + "/entries.log", "rb").read()
hdr = b"CLEAVE-AUDIT-ENTRIES/1\n"
assert data.startswith(hdr)
at, leaves = len(hdr), []
while at < len(data):
    n, idx = struct.unpack(">IQ", data[at:at+12])
    payload = data[at+12:at+12+n]
    assert idx == len(leaves)
    lh = hashlib.sha256(b"\x00" + payload).digest()
    assert data[at+12+n:at+44+n] == lh
    json.loads(payload)
    leaves.append(lh)
    at += 44 + n
def mth(l):
    if len(l) == 0: return hashlib.sha256(b"").digest()
    if len(l) == 1: return l[0]
    k = 1
    while k * 2 < len(l): k *= 2
    return hashlib.sha256(b"\x01" + mth(l[:k]) + mth(l[k:])).digest()
name, keyid, key = vkey.split("+", 2)
raw = base64.b64decode(key)
assert raw[0] == 1
pub = raw[1:]
assert hashlib.sha256(name.encode() + b"\n\x01" + pub).digest()[:4].hex() == keyid
vk = nacl.signing.VerifyKey(pub)
cps = open(d + "/checkpoints.log", "rb").read()
hdr = b"CLEAVE-AUDIT-CHECKPOINTS/1\n"
at, count = len(hdr), 0
while at < len(cps):
    n, seq = struct.unpack(">IQ", cps[at:at+12])
    note = cps[at+12:at+12+n].decode()
    at += 44 + n
    text, sigs = note.rsplit("\n\n", 1)
    text += "\n"
    origin, size, root = text.splitlines()
    assert origin == name
    assert sigs.startswith("\u2014 " + name + " ")
    blob = base64.b64decode(sigs.strip().split(" ")[2])
    assert blob[:4].hex() == keyid
    vk.verify(text.encode(), blob[4:])
    assert base64.b64decode(root) == mth(leaves[:int(size)]), ("root", size)
    count += 1
print(len(leaves), count)
"#;

fn python() -> Command {
    let ok = Command::new("python3").args(["-c", "import nacl.signing"]).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "this test needs python3 with PyNaCl: apt-get install python3 && pip install pynacl (see .ci/requirements.txt)");
    Command::new("python3")
}

#[test]
fn python_recomputes_every_root_and_verifies_every_signature() {
    let dir = tempfile::tempdir().unwrap();
    let sizes: Vec<u64> = vec![1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 129];
    build_log(dir.path(), 129, &sizes);
    let vkey = AuditLog::open(dir.path(), manual_options(), &signing_key()).unwrap().verifier().to_vkey();
    let out = python().args(["-c", SCRIPT, dir.path().to_str().unwrap(), &vkey]).output().unwrap();
    assert!(out.status.success(), "python disagrees: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("129 {}", sizes.len()));

    // And Python catches a forged root just as we do (a test of the test).
    let signer = CheckpointSigner::from_audit_signing_key(ORIGIN, &signing_key()).unwrap();
    let note = signer.sign(&Checkpoint { origin: ORIGIN.into(), size: 3, root: [7; 32] }).note;
    let path = dir.path().join("checkpoints.log");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend(encode_record(sizes.len() as u64, note.as_bytes(), checkpoint_hash(sizes.len() as u64, note.as_bytes())));
    std::fs::write(&path, bytes).unwrap();
    let out = python().args(["-c", SCRIPT, dir.path().to_str().unwrap(), &vkey]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("root"));
}

#[test]
fn atna_export_is_well_formed_and_coded() {
    let refs = reference_key();
    let mut actor = Actor::new(ActorKind::Consultant, "dr.who");
    actor.grant = Some("g1".into());
    actor.shares = vec!["s1".into(), "s2".into()];
    actor.cert_sha256 = Some([0xcd; 32]);
    let mut e = Entry::new(actor, Operation::ClinicalRead, Outcome::denied("share-expired"))
        .with_resource(refs.patient_ref("p-1"))
        .with_resource(refs.study_ref("1.2.3"));
    e.time = Timestamp::parse_rfc3339("2026-01-02T03:04:05.678Z").unwrap();
    let source = atna::AuditSource {
        source_id: "cleave-broker@rad".into(),
        enterprise_site_id: Some("St. Elsewhere & Co".into()),
        log_origin: ORIGIN.into(),
    };
    let xml = atna::to_audit_message(42, &e, &source);
    let script = r#"
import sys, xml.etree.ElementTree as ET
m = ET.fromstring(sys.stdin.read())
ev = m.find("EventIdentification")
print(ev.get("EventActionCode"), ev.get("EventOutcomeIndicator"), ev.get("EventDateTime"), ev.find("EventID").get("csd-code"))
ap = m.findall("ActiveParticipant")[0]
print(ap.get("UserID"), ap.get("AlternativeUserID"))
print(m.find("AuditSourceIdentification").get("AuditEnterpriseSiteID"))
for p in m.findall("ParticipantObjectIdentification"):
    print(p.get("ParticipantObjectTypeCode"), p.get("ParticipantObjectTypeCodeRole"), p.find("ParticipantObjectIDTypeCode").get("csd-code"), p.get("ParticipantObjectID"))
"#;
    let mut child = python()
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(xml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "R 4 2026-01-02T03:04:05.678Z 110103");
    assert_eq!(lines[1], format!("dr.who grant=g1;shares=s1,s2;cert-sha256={}", "cd".repeat(32)));
    assert_eq!(lines[2], "St. Elsewhere & Co");
    assert_eq!(lines[3], format!("1 1 patient-ref {}", hex::encode(refs.patient_ref("p-1").digest)));
    assert_eq!(lines[4], format!("2 3 study-ref {}", hex::encode(refs.study_ref("1.2.3").digest)));
    assert_eq!(lines[5], format!("2 13 audit-leaf {ORIGIN}#42"));
}
