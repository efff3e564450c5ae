//! Helpers shared by the integration tests: fixed keys, request contexts, and running
//! pymacaroons through python3.
#![allow(dead_code)]

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cleave_keys::Key32;
use cleave_tokens::{Op, Pseudonym, RequestContext, Store, StudyUid};

pub const PATIENT: &str = "P1-00112233445566778899aabbccddeeff";
pub const OTHER_PATIENT: &str = "P1-ffeeddccbbaa99887766554433221100";
pub const STUDY: &str = "1.2.826.0.1.3680043.8.498.1";
pub const CERT_HEX: &str = "aa00000000000000000000000000000000000000000000000000000000000001";

pub fn key(byte: u8) -> Key32 {
    let mut b = [byte; 32];
    Key32::from_bytes(&mut b)
}

pub fn cert() -> [u8; 32] {
    let mut c = [0u8; 32];
    c[0] = 0xaa;
    c[31] = 1;
    c
}

/// 2026-01-01T00:00:00Z: before the `expires` of the fixtures (2030), after that of the
/// expired ones (2020).
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

/// A read of the clinical store for PATIENT/STUDY from 10.1.2.3 with the fixture cert.
pub fn ctx() -> RequestContext {
    RequestContext::new(now(), Op::Read, Store::Clinical, IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)))
        .with_patient(Pseudonym::parse(PATIENT).unwrap())
        .with_study(StudyUid::parse(STUDY).unwrap())
        .with_client_cert(cert())
}

/// Run a python3 script with pymacaroons importable; return its stdout (trimmed). Panics
/// with an install hint if python3 or pymacaroons is missing, so the test fails rather
/// than passing silently.
pub fn python(script: &str, args: &[&str]) -> String {
    static PROBE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let present = *PROBE.get_or_init(|| {
        Command::new("python3").args(["-c", "import pymacaroons, nacl"]).output().is_ok_and(|o| o.status.success())
    });
    match present {
        true => {}
        false => panic!(
            "python3 with pymacaroons is required for this test: run `pip install pymacaroons` \
             (it is in .ci/requirements.txt)"
        ),
    }
    let mut child = Command::new("python3")
        .arg("-")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python script failed:\n{}\n--- stderr ---\n{}",
        script,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
