//! Integration tests of the identity vault, driven through its public API on real files.
//! One test binary (several modules) keeps link time down.
mod durability;
mod matching;
mod on_demand;
mod random_ids;
mod round_trip;
mod stolen_disk;
mod study;
mod tampering;

use std::path::PathBuf;

use cleave_keys::{KeySource, Keyring};
use identity_vault::{Demographics, OtherId, Vault, VaultKeys};

/// A keyring and a vault path in a fresh temporary directory.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub ring: Keyring,
    pub db: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let (ring, db) = Self::files(dir.path());
        Env { dir, ring, db }
    }

    /// The same layout in an existing directory (for a child process); the directory is
    /// left in place afterwards.
    pub fn at(path: &std::path::Path) -> Env {
        let dir = tempfile::Builder::new().tempdir_in(path).unwrap();
        let (ring, db) = Self::files(path);
        Env { dir, ring, db }
    }

    fn files(dir: &std::path::Path) -> (Keyring, PathBuf) {
        let ring = Keyring::open_or_create(&dir.join("keys/keyring.json"), KeySource::KeyFile(dir.join("keys/master.key")))
            .unwrap();
        (ring, dir.join("data/identity/vault.sqlite"))
    }

    pub fn open(&self) -> Vault {
        Vault::open(&self.db, VaultKeys::unwrap(&self.ring).unwrap()).unwrap()
    }

    pub fn reload_ring(&mut self) {
        self.ring = Keyring::open_or_create(
            &self.dir.path().join("keys/keyring.json"),
            KeySource::KeyFile(self.dir.path().join("keys/master.key")),
        )
        .unwrap();
    }

    /// A raw SQLite connection to the vault file, as a thief or an attacker would have.
    pub fn raw(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(&self.db).unwrap()
    }
}

/// Only a family name.
pub fn named(family: &str) -> Demographics {
    let mut d = Demographics::default();
    d.family_name = Some(family.into());
    d
}

pub fn jane() -> Demographics {
    // Demographics zeroizes on drop, so struct-update syntax is unavailable: assign fields.
    let mut d = Demographics::default();
    d.family_name = Some("Doe".into());
    d.given_name = Some("Jane".into());
    d.birth_date = Some("19800131".into());
    d.sex = Some("F".into());
    d.issuer = Some("HOSP-A".into());
    d.patient_id = Some("PID-0001".into());
    d
}

/// Every field filled, each with its own canary prefix `tag`.
pub fn full(tag: &str) -> Demographics {
    Demographics {
        family_name: Some(format!("{tag}FAM")),
        given_name: Some(format!("{tag}GIV")),
        middle_name: Some(format!("{tag}MID")),
        name_prefix: Some(format!("{tag}PRE")),
        name_suffix: Some(format!("{tag}SUF")),
        birth_date: Some("19700704".into()),
        sex: Some("O".into()),
        address: Some(format!("{tag}ADDR 1 Main Street")),
        phones: vec![format!("{tag}PHONE1"), format!("{tag}PHONE2")],
        national_id: Some(format!("{tag}NATID")),
        issuer: Some(format!("{tag}ISSUER")),
        patient_id: Some(format!("{tag}PID")),
        other_ids: vec![OtherId { issuer: format!("{tag}OISS"), id: format!("{tag}OID") }],
        ethnic_group: Some(format!("{tag}ETHNIC")),
        free_text: Some(format!("{tag}NOTE allergic to penicillin")),
    }
}
