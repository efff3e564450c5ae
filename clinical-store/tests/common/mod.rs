//! Shared helpers for the integration tests: a real keyring, instance metadata, and
//! deterministic payloads checked by hash.
#![allow(dead_code)]
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use cleave_keys::{KeySource, Keyring};
use clinical_store::{ClinicalStore, InstanceMeta, StoreKeys};

pub fn keyring(dir: &Path) -> Arc<Keyring> {
    Arc::new(Keyring::open_or_create(&dir.join("keys/keyring.json"), KeySource::KeyFile(dir.join("keys/master.key"))).unwrap())
}

pub fn open(dir: &Path, ring: &Keyring) -> ClinicalStore {
    ClinicalStore::open(&dir.join("store"), StoreKeys::unwrap(ring).unwrap()).unwrap()
}

pub fn pseudonym(n: u32) -> String {
    format!("P1-{:032x}", 0xfeed_0000u64 + u64::from(n))
}

/// Metadata for instance `n` of series `series` of study `study`, for patient `patient`.
pub fn meta(patient: u32, study: u32, series: u32, n: u32) -> InstanceMeta {
    InstanceMeta {
        pseudonym: pseudonym(patient),
        sex: Some(if patient % 2 == 0 { "F" } else { "M" }.into()),
        study_uid: format!("2.25.{}{:04}", 1000 + patient, study),
        study_date: Some(format!("2024{:02}{:02}", 1 + study % 12, 1 + study % 28)),
        study_description: Some(format!("study {study}")),
        age_years: Some(40 + patient as u16),
        body_part: Some("CHEST".into()),
        series_uid: format!("2.25.{}{:04}{:03}", 1000 + patient, study, series),
        modality: if series % 2 == 0 { "CT" } else { "MR" }.into(),
        series_number: Some(series.into()),
        series_description: Some(format!("series {series}")),
        sop_instance_uid: format!("2.25.{}{:04}{:03}{:05}", 1000 + patient, study, series, n),
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
        transfer_syntax: "1.2.840.10008.1.2.1".into(),
        instance_number: Some(n.into()),
        frames: Some(1),
        not_for_research: false,
    }
}

/// Deterministic payload bytes for a seed, generated on the fly (BLAKE3 XOF).
pub struct Payload(blake3::OutputReader, u64);

impl Payload {
    pub fn new(seed: &str, len: u64) -> Self {
        Payload(blake3::Hasher::new().update(seed.as_bytes()).finalize_xof(), len)
    }

    /// Write all of it into `w`, in `buf`-sized pieces; returns the BLAKE3 hash of it.
    pub fn write_to(mut self, w: &mut impl Write, piece: usize) -> std::io::Result<[u8; 32]> {
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; piece];
        while self.1 > 0 {
            let n = (self.1 as usize).min(piece);
            self.0.fill(&mut buf[..n]);
            h.update(&buf[..n]);
            w.write_all(&buf[..n])?;
            self.1 -= n as u64;
        }
        Ok(*h.finalize().as_bytes())
    }

    pub fn bytes(seed: &str, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        Payload::new(seed, len as u64).write_to(&mut v, 8192).unwrap();
        v
    }
}

/// BLAKE3 of everything a reader yields, and how many bytes.
pub fn hash_reader(mut r: impl std::io::Read) -> std::io::Result<([u8; 32], u64)> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 100_000];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((*h.finalize().as_bytes(), total));
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Blob files (and temporary files) in a store directory.
pub fn blob_files(store: &Path) -> Vec<std::path::PathBuf> {
    files_under(&store.join("blobs"))
}
