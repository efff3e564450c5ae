//! Inclusion and consistency proofs served by a real log verify against its signed
//! checkpoints for many (size, index) pairs, and fail once anything is tampered with.
mod common;

use cleave_audit::merkle::{leaf_hash, verify_consistency, verify_inclusion};
use cleave_audit::*;
use common::*;

#[test]
fn inclusion_proofs_verify_against_checkpoints_and_fail_when_tampered() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), manual_options(), &signing_key()).unwrap();
    let v = log.verifier();
    let mut checkpoints = Vec::new();
    for i in 0..300u64 {
        log.append(&entry(i)).unwrap();
        if [1, 2, 3, 7, 8, 64, 65, 127, 200, 299, 300].contains(&(i + 1)) {
            checkpoints.push(v.verify(&log.checkpoint().unwrap().note).unwrap());
        }
    }
    let raw = log.raw_entries(0, 300).unwrap();
    let mut checked = 0;
    for cp in &checkpoints {
        for index in (0..cp.size).step_by(((cp.size / 40) + 1) as usize).chain([cp.size - 1]) {
            let leaf = leaf_hash(&raw[index as usize].bytes);
            let proof = log.inclusion_proof(index, cp.size).unwrap();
            assert!(verify_inclusion(&leaf, index, cp.size, &proof, &cp.root), "{index} in {}", cp.size);
            // Another entry's bytes, another index, a flipped proof node, a wrong root.
            let other = leaf_hash(&raw[((index + 1) % 300) as usize].bytes);
            assert!(!verify_inclusion(&other, index, cp.size, &proof, &cp.root));
            if cp.size > 1 {
                assert!(!verify_inclusion(&leaf, (index + 1) % cp.size, cp.size, &proof, &cp.root));
            }
            for j in 0..proof.len() {
                let mut bad = proof.clone();
                bad[j][7] ^= 0x10;
                assert!(!verify_inclusion(&leaf, index, cp.size, &bad, &cp.root));
            }
            let mut root = cp.root;
            root[0] ^= 1;
            assert!(!verify_inclusion(&leaf, index, cp.size, &proof, &root));
            checked += 1;
        }
    }
    assert!(checked > 200, "{checked}");
    assert!(matches!(log.inclusion_proof(300, 300), Err(Error::OutOfRange { .. })));
    assert!(matches!(log.inclusion_proof(0, 301), Err(Error::OutOfRange { .. })));
}

#[test]
fn consistency_proofs_verify_between_every_pair_of_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), manual_options(), &signing_key()).unwrap();
    let v = log.verifier();
    let mut cps = vec![v.verify(&log.checkpoint().unwrap().note).unwrap()];
    for i in 0..130u64 {
        log.append(&entry(i)).unwrap();
        if (i + 1) % 9 == 0 || (i + 1).is_power_of_two() || i == 129 {
            cps.push(v.verify(&log.checkpoint().unwrap().note).unwrap());
        }
    }
    let mut pairs = 0;
    for (a, old) in cps.iter().enumerate() {
        for new in &cps[a..] {
            let proof = log.consistency_proof(old.size, new.size).unwrap();
            assert!(verify_consistency(old.size, new.size, &old.root, &new.root, &proof), "{}->{}", old.size, new.size);
            if old.size > 0 && old.size < new.size {
                for j in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[j][0] ^= 0x80;
                    assert!(!verify_consistency(old.size, new.size, &old.root, &new.root, &bad));
                }
                let mut forged_old = old.root;
                forged_old[31] ^= 1;
                assert!(!verify_consistency(old.size, new.size, &forged_old, &new.root, &proof));
                assert!(!verify_consistency(old.size + 1, new.size, &old.root, &new.root, &proof));
            }
            pairs += 1;
        }
    }
    assert!(pairs > 150, "{pairs}");
}
