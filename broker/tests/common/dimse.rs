//! Helpers for the DIMSE tests through the real broker: a config with a DICOM TLS listener,
//! enrolled device certificates, and dcmtk's tools run against the broker.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

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

#[path = "../../dimse/tests/common/peer.rs"]
mod peer;
#[allow(unused_imports)] // not every test binary runs a peer
pub use peer::{run, text};

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

