//! Helpers for the DIMSE tests through the real broker: a config with a DICOM TLS listener,
//! enrolled device certificates, and dcmtk's tools run against the broker.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use super::{Broker, TEST_CONFIG};

/// The shared test configuration plus a DICOM TLS listener on an ephemeral port (a
/// top-level key, so it goes before the config's `[login]` table).
pub fn config() -> String {
    format!("dicom_listen = \"127.0.0.1:0\"{TEST_CONFIG}")
}

pub const AE: &str = "CT_DIMSE";

pub fn dcmtk(tool: &str) -> PathBuf {
    // Full path: pynetdicom installs Python scripts with the same names earlier on PATH.
    let p = PathBuf::from("/usr/bin").join(tool);
    assert!(p.exists(), "{} is missing: install the Debian package dcmtk (apt-get install dcmtk)", p.display());
    p
}

/// Runs a peer (a dcmtk tool, pynetdicom) with TCP_NODELAY=1 (dcmtk reads it) off the async
/// runtime, for at most [`PEER_LIMIT_S`] seconds.
pub async fn run(mut cmd: Command) -> Output {
    cmd.env("TCP_NODELAY", "1");
    // Bounded by coreutils' `timeout`: a peer that hangs fails its test within minutes
    // instead of holding CI until its time limit.
    let mut bounded = std::process::Command::new("timeout");
    bounded.args(["--kill-after=10", &PEER_LIMIT_S.to_string()]).arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => bounded.env(k, v),
            None => bounded.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        bounded.current_dir(d);
    }
    let what = format!("{:?}", cmd.get_program());
    let out = tokio::task::spawn_blocking(move || bounded.output().expect("cannot start the peer process (coreutils' timeout and the peer are needed)")).await.unwrap();
    // 124: stopped by TERM at the limit; 137: killed ten seconds later.
    assert!(!matches!(out.status.code(), Some(124 | 137)), "{what} did not finish within {PEER_LIMIT_S} s: {}", text(&out));
    out
}

/// How long a peer process (dcmtk, pynetdicom, ...) may run.
const PEER_LIMIT_S: u32 = 300;

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SHA-256 of the certificate, lower-case hex (as the audit log records it).
    pub fingerprint: String,
}

pub fn dcmtk_cmd(b: &Broker, tool: &str, pair: &Pair, calling: &str) -> Command {
    let mut cmd = Command::new(dcmtk(tool));
    cmd.arg("+tls").arg(&pair.key).arg(&pair.cert).arg("+cf").arg(b.ca_pem());
    let port = b.running.dicom_addr.expect("the broker was started with dicom_listen").port();
    cmd.args(["-to", "10", "-aet", calling, "-aec", "CLEAVE", "127.0.0.1", &port.to_string()]);
    cmd
}

/// A certificate issued by the broker's CA; enrolled as a device with `ae` if given.
pub fn certificate(b: &Broker, label: &str, ae: Option<&str>) -> Pair {
    let opened = broker::open(b.data(), broker::MasterKeySource::KeyFile).unwrap();
    let issued = broker::issue_client_cert(b.data(), label, 30).unwrap();
    let (cert, key) = broker::write_pair(&b.data().join("test-certs"), label, &issued).unwrap();
    if let Some(ae) = ae {
        opened.accounts.add_device(issued.fingerprint.hex(), label, ae, "test").unwrap();
    }
    Pair { cert, key, fingerprint: issued.fingerprint.hex().to_owned() }
}

