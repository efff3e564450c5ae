//! Profiles (where the server is and which certificate to present) and the per-profile
//! state directory (the session token, the push journal, the last audit checkpoint seen).
//!
//! A profile is a small TOML file, `<config dir>/profiles/<name>.toml`; its state lives in
//! `<config dir>/state/<name>/` (0700). The config dir is `--config-dir`, else
//! `$CLEAVE_CONFIG_DIR`, else `$XDG_CONFIG_HOME/cleave`, else `~/.config/cleave`. Secrets
//! (the token and the doctor's share base) are written 0600, atomically and durably with
//! `cleave_keys::durable`, and read back into `Zeroizing` strings.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Where a client connects and with which TLS material.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The broker's mutual-TLS listener, e.g. `https://cleave.hospital.example:8443`.
    pub server: String,
    /// The CA certificate (PEM) that signed the broker's server certificate.
    pub ca: PathBuf,
    /// This client's certificate (PEM); absent for a consultant without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// This client's private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The consultant listener (server-only TLS), used to build share links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consultant: Option<String>,
}

/// What `login` stores: the token, its expiry and role, and for doctors the share base.
#[derive(Serialize, Deserialize)]
pub struct Session {
    pub token: String,
    pub expires: String,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_base: Option<String>,
}

impl Drop for Session {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.token.zeroize();
        if let Some(b) = &mut self.share_base {
            b.zeroize();
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session {{ role: {}, expires: {}, token: <redacted> }}", self.role, self.expires)
    }
}

/// The configuration directory and one profile name in it.
#[derive(Clone, Debug)]
pub struct ProfileDir {
    root: PathBuf,
    name: String,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ProfileDir {
    /// `root` is the config dir (see the module doc for the default); `name` the profile.
    pub fn new(root: Option<PathBuf>, name: &str) -> Result<Self> {
        if !valid_name(name) {
            return Err(Error::Usage("a profile name is 1 to 64 letters, digits, '-' or '_'".into()));
        }
        let root = match root {
            Some(r) => r,
            None => default_root()?,
        };
        Ok(ProfileDir { root, name: name.to_owned() })
    }

    /// The profile's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<root>/profiles/<name>.toml`.
    pub fn profile_file(&self) -> PathBuf {
        self.root.join("profiles").join(format!("{}.toml", self.name))
    }

    /// `<root>/state/<name>/`, created 0700 on first use.
    pub fn state_dir(&self) -> Result<PathBuf> {
        let d = self.root.join("state").join(&self.name);
        create_private_dirs(&d)?;
        Ok(d)
    }

    /// Read the profile.
    pub fn load(&self) -> Result<Profile> {
        let path = self.profile_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Profile(format!(
                    "no profile named '{}' in {}; create it with `cleave profile set {} --server URL --ca FILE [--cert FILE --key FILE]`",
                    self.name,
                    self.root.display(),
                    self.name
                )))
            }
            Err(e) => return Err(Error::io("reading", &path, e)),
        };
        let p: Profile = toml::from_str(&text)
            .map_err(|e| Error::Profile(format!("{} is not a valid profile ({}); fix or rewrite it with `cleave profile set`", path.display(), e.message())))?;
        p.check()?;
        Ok(p)
    }

    /// Write the profile (0600; it names key files).
    pub fn save(&self, p: &Profile) -> Result<()> {
        p.check()?;
        let path = self.profile_file();
        if let Some(dir) = path.parent() {
            create_private_dirs(dir)?;
        }
        let text = toml::to_string(p).map_err(|e| Error::Profile(format!("cannot encode the profile: {e}")))?;
        write_private(&path, text.as_bytes())
    }

    /// Store the session of a fresh login (0600).
    pub fn save_session(&self, s: &Session) -> Result<()> {
        let path = self.state_dir()?.join("session.json");
        let text = Zeroizing::new(serde_json::to_vec(s).map_err(|e| Error::Profile(format!("cannot encode the session: {e}")))?);
        write_private(&path, &text)
    }

    /// The stored session, if any.
    pub fn load_session(&self) -> Result<Option<Session>> {
        let path = self.root.join("state").join(&self.name).join("session.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => Zeroizing::new(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("reading", &path, e)),
        };
        let s = serde_json::from_slice(&bytes)
            .map_err(|_| Error::Profile(format!("{} is damaged; delete it and run `cleave login`", path.display())))?;
        Ok(Some(s))
    }

    /// Forget the stored session (after a logout).
    pub fn clear_session(&self) -> Result<()> {
        let path = self.root.join("state").join(&self.name).join("session.json");
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing", &path, e)),
        }
    }
}

impl Profile {
    fn check(&self) -> Result<()> {
        if !self.server.starts_with("https://") {
            return Err(Error::Profile("the server URL must start with https://".into()));
        }
        if let Some(c) = &self.consultant {
            if !c.starts_with("https://") {
                return Err(Error::Profile("the consultant URL must start with https://".into()));
            }
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(Error::Profile("give both a client certificate and its key, or neither".into()));
        }
        Ok(())
    }
}

fn default_root() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("CLEAVE_CONFIG_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("cleave"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".config").join("cleave")),
        None => Err(Error::Profile("cannot find the home directory; pass --config-dir".into())),
    }
}

fn create_private_dirs(dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() && !parent.exists() {
            create_private_dirs(parent)?;
        }
    }
    cleave_keys::durable::create_private_dir(dir).map_err(|e| Error::io("creating", dir, e))
}

/// Write a file 0600, atomically and durably.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    cleave_keys::durable::write_atomic(path, bytes, 0o600).map_err(|e| Error::io("writing", path, e))
}
