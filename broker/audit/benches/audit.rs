//! Benchmarks: appends per second with group commit (many threads share one fsync), and
//! proof generation and verification in a tree of one million entries.
use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_audit::merkle::{leaf_hash, verify_consistency, verify_inclusion, Tree};
use cleave_audit::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn entry(i: u64) -> Entry {
    let refs = ReferenceKey::new(cleave_keys::Key32::from_bytes(&mut [3; 32]));
    let mut a = Actor::new(ActorKind::Staff, format!("user{}", i % 50));
    a.grant = Some(format!("grant{i}"));
    a.cert_sha256 = Some([1; 32]);
    Entry::new(a, Operation::ClinicalRead, Outcome::Allowed)
        .with_resource(refs.patient_ref(&format!("p{i}")))
        .with_resource(refs.study_ref(&format!("1.2.{i}")))
}

fn appends(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for threads in [1usize, 16, 64] {
        let per_iter = 64u64;
        g.throughput(Throughput::Elements(per_iter));
        g.bench_function(format!("{threads}-threads"), |b| {
            let dir = tempfile::tempdir().unwrap();
            let mut o = LogOptions::new("bench.example/audit");
            o.checkpoint_interval = None;
            o.checkpoint_every_entries = None;
            let log = Arc::new(AuditLog::open(dir.path(), o, &cleave_keys::Key32::from_bytes(&mut [5; 32])).unwrap());
            b.iter_custom(|iters| {
                let start = Instant::now();
                let total = iters * per_iter;
                std::thread::scope(|s| {
                    for t in 0..threads as u64 {
                        let log = &log;
                        s.spawn(move || {
                            let mut i = t;
                            while i < total {
                                log.append(&entry(i)).unwrap();
                                i += threads as u64;
                            }
                        });
                    }
                });
                start.elapsed()
            });
        });
    }
    g.finish();
}

fn proofs(c: &mut Criterion) {
    const N: u64 = 1_000_000;
    let tree = Tree::from_leaf_hashes((0..N).map(|i| leaf_hash(&i.to_be_bytes())));
    let root = tree.root(N).unwrap();
    let mut g = c.benchmark_group("proofs-1M");
    let mut i = 0u64;
    g.bench_function("inclusion-generate", |b| {
        b.iter(|| {
            i = (i + 7_919) % N;
            tree.inclusion_proof(i, N).unwrap()
        })
    });
    let proof = tree.inclusion_proof(123_457, N).unwrap();
    let leaf = leaf_hash(&123_457u64.to_be_bytes());
    g.bench_function("inclusion-verify", |b| b.iter(|| assert!(verify_inclusion(&leaf, 123_457, N, &proof, &root))));
    g.bench_function("consistency-generate", |b| b.iter(|| tree.consistency_proof(654_321, N).unwrap()));
    let old_root = tree.root(654_321).unwrap();
    let cproof = tree.consistency_proof(654_321, N).unwrap();
    g.bench_function("consistency-verify", |b| {
        b.iter(|| assert!(verify_consistency(654_321, N, &old_root, &root, &cproof)))
    });
    g.bench_function("root-of-prefix", |b| b.iter(|| tree.root(999_999).unwrap()));
    g.finish();
}

criterion_group!(benches, appends, proofs);
criterion_main!(benches);
