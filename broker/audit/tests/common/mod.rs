//! Helpers shared by the integration tests: a signing key, entries, and raw file surgery.
#![allow(dead_code)]
use std::path::Path;

use cleave_audit::*;
use cleave_keys::Key32;
use sha2::{Digest, Sha256};

pub const ORIGIN: &str = "hospital.test/cleave-audit";

pub fn signing_key() -> Key32 {
    Key32::from_bytes(&mut [0x5a; 32])
}

pub fn reference_key() -> ReferenceKey {
    ReferenceKey::new(Key32::from_bytes(&mut [0x33; 32]))
}

/// Options with no background checkpoints, so tests decide when checkpoints happen.
pub fn manual_options() -> LogOptions {
    let mut o = LogOptions::new(ORIGIN);
    o.checkpoint_interval = None;
    o.checkpoint_every_entries = None;
    o
}

pub fn entry(i: u64) -> Entry {
    let refs = reference_key();
    let mut actor = Actor::new(if i % 3 == 0 { ActorKind::Device } else { ActorKind::Staff }, format!("user{}", i % 5));
    actor.grant = Some(format!("grant-{i}"));
    let ops = [Operation::ClinicalRead, Operation::IdentityRead, Operation::Login, Operation::Export];
    let outcome = if i % 7 == 0 { Outcome::denied("expired-grant") } else { Outcome::Allowed };
    let mut e = Entry::new(actor, ops[(i % 4) as usize], outcome);
    e.time = Timestamp::from_unix_millis(1_790_000_000_000 + i as i64 * 1000);
    e.with_resource(refs.patient_ref(&format!("pseudo-{}", i % 11)))
}

/// A closed log of `n` entries with a checkpoint after each of `checkpoints_at` sizes.
/// Returns the notes of the checkpoints issued.
pub fn build_log(dir: &Path, n: u64, checkpoints_at: &[u64]) -> Vec<String> {
    let log = AuditLog::open(dir, manual_options(), &signing_key()).unwrap();
    let mut notes = Vec::new();
    for i in 0..n {
        assert_eq!(log.append(&entry(i)).unwrap(), i);
        if checkpoints_at.contains(&(i + 1)) {
            notes.push(log.checkpoint().unwrap().note);
        }
    }
    notes
}

/// A record as laid out on disk, parsed independently of the crate (also checks FORMAT.md).
#[derive(Clone, Debug)]
pub struct RawRecord {
    pub offset: usize,
    pub seq: u64,
    pub payload: Vec<u8>,
    pub hash: [u8; 32],
}

pub fn parse_records(bytes: &[u8], header: &[u8]) -> Vec<RawRecord> {
    assert!(bytes.starts_with(header));
    let mut out = Vec::new();
    let mut at = header.len();
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let seq = u64::from_be_bytes(bytes[at + 4..at + 12].try_into().unwrap());
        let payload = bytes[at + 12..at + 12 + len].to_vec();
        let hash: [u8; 32] = bytes[at + 12 + len..at + 44 + len].try_into().unwrap();
        out.push(RawRecord { offset: at, seq, payload, hash });
        at += 44 + len;
    }
    out
}

pub fn encode_record(seq: u64, payload: &[u8], hash: [u8; 32]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(payload);
    v.extend_from_slice(&hash);
    v
}

pub const ENTRIES_HEADER: &[u8] = b"CLEAVE-AUDIT-ENTRIES/1\n";
pub const CHECKPOINTS_HEADER: &[u8] = b"CLEAVE-AUDIT-CHECKPOINTS/1\n";

pub fn entry_hash(payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(payload);
    h.finalize().into()
}

pub fn checkpoint_hash(seq: u64, note: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(seq.to_be_bytes());
    h.update(note);
    h.finalize().into()
}

pub fn rewrite(path: &Path, header: &[u8], records: &[RawRecord]) {
    let mut bytes = header.to_vec();
    for r in records {
        bytes.extend(encode_record(r.seq, &r.payload, r.hash));
    }
    std::fs::write(path, bytes).unwrap();
}
