//! The broker's configuration: `<data>/cleave.toml`, defaults for everything, CLI overrides.
//!
//! Unknown keys fail closed (`deny_unknown_fields`): a misspelt limit must not silently fall
//! back to a default the operator did not choose. With no file, the defaults give a working
//! single-machine broker on 127.0.0.1 with its own local CA; a hospital points `[pki]` at its
//! own CA bundle and server certificate instead.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The name of the configuration file inside the data directory.
pub const CONFIG_FILE: &str = "cleave.toml";

/// The default `dicom_ae_title`.
pub const DEFAULT_DICOM_AE_TITLE: &str = "CLEAVE";

/// Everything the operator can set. Field docs double as the file's documentation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The mutual-TLS HTTPS listener (staff and devices).
    pub listen: SocketAddr,
    /// The optional server-only TLS listener for consultants holding a shared token.
    pub consultant_listen: Option<SocketAddr>,
    /// The DICOM TLS listener (DIMSE C-STORE and C-ECHO for enrolled devices; same CA and
    /// server certificate as `listen`). Off unless set.
    pub dicom_listen: Option<SocketAddr>,
    /// This server's AE title on the DICOM TLS listener: an A-ASSOCIATE-RQ whose called AE
    /// title is anything else is rejected ("called AE title not recognized"). Up to 16
    /// printable ASCII characters, no backslash.
    pub dicom_ae_title: String,
    /// Extra names and addresses the server certificate is valid for (its LAN name).
    pub host_names: Vec<String>,
    /// How long a login token lives: the length of a shift.
    pub shift_hours: u64,
    /// How long an enrolled device's token lives.
    pub device_token_days: u64,
    /// Largest accepted request body, in bytes; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Seconds a client has to send a complete request head (slow-loris defence).
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may stay without any traffic before it is closed.
    pub idle_timeout_secs: u64,
    /// Seconds a request body may keep the server waiting before `min_body_bytes_per_sec`
    /// applies (slow-body defence; only time spent waiting for the client counts).
    pub body_grace_secs: u64,
    /// After the grace period, a request body must average at least this many bytes per
    /// second of waiting, or the request is answered 408 and nothing is stored.
    pub min_body_bytes_per_sec: u64,
    /// Seconds a client has to complete the TLS handshake.
    pub handshake_timeout_secs: u64,
    /// Connections served at once per listener; more are refused at accept.
    pub max_connections: usize,
    /// Login rate limits.
    pub login: LoginLimits,
    /// Seconds between signed audit checkpoints while entries arrive (auditors can also
    /// ask for one at any time).
    pub audit_checkpoint_secs: u64,
    /// Seconds an opened store (identity vault, clinical store) stays open after its last
    /// use; 0 closes it after every request.
    pub store_idle_secs: u64,
    /// The smallest cohort a research export by filter (`modality`, `from`, `to`,
    /// `body_part`) may release: fewer distinct subjects than this and the export is
    /// refused, since a narrow filter can single out one patient. 1 turns the check off.
    /// An export of one named study is one subject by definition and is not held to it.
    pub research_min_subjects: usize,
    /// The hospital's own PKI, used instead of the local CA when set.
    pub pki: PkiConfig,
    /// Also send every audit entry to an ATNA collector over syslog/TLS (off unless set).
    pub audit_syslog: Option<crate::syslog::SyslogConfig>,
}

/// Failed-login limits: after this many failures inside the window, answer 429.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoginLimits {
    pub max_failures_per_account: u32,
    pub max_failures_per_address: u32,
    pub window_secs: u64,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits { max_failures_per_account: 5, max_failures_per_address: 20, window_secs: 15 * 60 }
    }
}

/// Paths to the hospital's PKI. All three together, or none (then the local CA is used).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PkiConfig {
    /// PEM bundle of the CAs whose client certificates are accepted.
    pub client_ca: Option<PathBuf>,
    /// PEM certificate chain of this server.
    pub server_cert: Option<PathBuf>,
    /// PEM private key of this server (PKCS#8, SEC1 or PKCS#1).
    pub server_key: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            consultant_listen: None,
            dicom_listen: None,
            dicom_ae_title: DEFAULT_DICOM_AE_TITLE.to_owned(),
            host_names: Vec::new(),
            shift_hours: 12,
            device_token_days: 365,
            max_body_bytes: 64 * 1024 * 1024,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 120,
            body_grace_secs: 10,
            min_body_bytes_per_sec: 1024,
            handshake_timeout_secs: 10,
            max_connections: 512,
            login: LoginLimits::default(),
            audit_checkpoint_secs: 10,
            store_idle_secs: 30,
            research_min_subjects: 5,
            pki: PkiConfig::default(),
            audit_syslog: None,
        }
    }
}

impl Config {
    /// Read `<data>/cleave.toml`, or the defaults when there is none.
    pub fn load(data_dir: &Path) -> Result<Config, Error> {
        let path = data_dir.join(CONFIG_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let c: Config = toml::from_str(&text).map_err(|e| {
                    Error::Config(format!("{} is not valid ({}); fix or remove it", path.display(), e.message()))
                })?;
                c.validate()?;
                Ok(c)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(Error::io("reading", &path, e)),
        }
    }

    /// Refuse settings that would disable a defence.
    pub fn validate(&self) -> Result<(), Error> {
        let p = &self.pki;
        let set = [p.client_ca.is_some(), p.server_cert.is_some(), p.server_key.is_some()];
        if set.iter().any(|s| *s) && !set.iter().all(|s| *s) {
            return Err(Error::Config(
                "[pki] needs client_ca, server_cert and server_key together (or none, for the local CA)".into(),
            ));
        }
        for (name, v) in [
            ("shift_hours", self.shift_hours),
            ("device_token_days", self.device_token_days),
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("body_grace_secs", self.body_grace_secs),
            ("min_body_bytes_per_sec", self.min_body_bytes_per_sec),
            ("handshake_timeout_secs", self.handshake_timeout_secs),
            ("login.window_secs", self.login.window_secs),
            ("audit_checkpoint_secs", self.audit_checkpoint_secs),
        ] {
            if v == 0 {
                return Err(Error::Config(format!("{name} must be greater than zero")));
            }
        }
        if self.research_min_subjects == 0 {
            return Err(Error::Config("research_min_subjects must be at least 1 (1 turns the cohort-size check off)".into()));
        }
        let ae = self.dicom_ae_title.trim();
        if ae.is_empty() || ae.len() > 16 || !ae.chars().all(|c| c.is_ascii_graphic() && c != '\\' || c == ' ') {
            return Err(Error::Config("dicom_ae_title must be 1 to 16 printable ASCII characters without backslash".into()));
        }
        if self.max_connections == 0 || self.max_body_bytes == 0 {
            return Err(Error::Config("max_connections and max_body_bytes must be greater than zero".into()));
        }
        Ok(())
    }

    /// Whether the hospital's PKI is configured (rather than the local CA).
    pub fn uses_hospital_pki(&self) -> bool {
        self.pki.client_ca.is_some()
    }

    pub(crate) fn shift(&self) -> Duration {
        Duration::from_secs(self.shift_hours.saturating_mul(3600))
    }

    pub(crate) fn device_token_lifetime(&self) -> Duration {
        Duration::from_secs(self.device_token_days.saturating_mul(86_400))
    }

    /// The file as written on first run, so the operator sees every setting.
    pub fn to_toml(&self) -> String {
        // Serialising a struct of plain values to TOML cannot fail.
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_half_pki_fail_closed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), "listen = \"127.0.0.1:9\"\nmax_body_byte = 5\n").unwrap();
        assert!(matches!(Config::load(dir.path()), Err(Error::Config(_))));
        std::fs::write(dir.path().join(CONFIG_FILE), "[pki]\nclient_ca = \"/x.pem\"\n").unwrap();
        assert!(matches!(Config::load(dir.path()), Err(Error::Config(_))));
        std::fs::write(dir.path().join(CONFIG_FILE), "dicom_ae_title = \"BACK\\\\SLASH\"\n").unwrap();
        assert!(matches!(Config::load(dir.path()), Err(Error::Config(_))));
        std::fs::write(dir.path().join(CONFIG_FILE), "dicom_ae_title = \"SEVENTEEN_CHARS_X\"\n").unwrap();
        assert!(matches!(Config::load(dir.path()), Err(Error::Config(_))));
        std::fs::write(dir.path().join(CONFIG_FILE), "shift_hours = 8\n").unwrap();
        assert_eq!(Config::load(dir.path()).unwrap().shift_hours, 8);
    }

    #[test]
    fn defaults_round_trip_through_the_written_file() {
        let c = Config::default();
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }
}
