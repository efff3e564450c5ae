//! Benchmark: proof generation and verification in a tree of `CLEAVE_AUDIT_BENCH_LEAVES`
//! leaves (default 10 000 000, the scale), built from leaf hashes with the bulk
//! `Tree::extend_leaf_hashes`. Every proof reads stored subtree hashes (O(log n) of them,
//! with O(log² n) hashing at the ragged right edge of a size that is not a power of two);
//! nothing is recomputed from the leaves, so proof time is independent of n up to the
//! log factor. `benches/audit_log_10m.rs` measures the same through an on-disk log.
use std::time::Instant;

use cleave_audit::merkle::{leaf_hash, verify_consistency, verify_inclusion, Tree};
use criterion::{criterion_group, criterion_main, Criterion};

fn leaves() -> u64 {
    std::env::var("CLEAVE_AUDIT_BENCH_LEAVES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000)
}

fn proofs(c: &mut Criterion) {
    let n = leaves();
    let built = Instant::now();
    let mut tree = Tree::new();
    tree.extend_leaf_hashes((0..n).map(|i| leaf_hash(&i.to_be_bytes())));
    eprintln!("built a tree of {n} leaves in {:.1?}", built.elapsed());
    let root = tree.root(n).unwrap();
    let mut g = c.benchmark_group(format!("proofs-{n}"));
    let mut i = 0u64;
    g.bench_function("inclusion-generate", |b| {
        b.iter(|| {
            i = (i + 7_919_993) % n;
            tree.inclusion_proof(i, n).unwrap()
        })
    });
    let probe = n / 8 + 12_345 % n;
    let proof = tree.inclusion_proof(probe, n).unwrap();
    let leaf = leaf_hash(&probe.to_be_bytes());
    g.bench_function("inclusion-verify", |b| b.iter(|| assert!(verify_inclusion(&leaf, probe, n, &proof, &root))));
    let old = n / 3 * 2 + 1;
    g.bench_function("consistency-generate", |b| b.iter(|| tree.consistency_proof(old, n).unwrap()));
    let old_root = tree.root(old).unwrap();
    let cproof = tree.consistency_proof(old, n).unwrap();
    g.bench_function("consistency-verify", |b| b.iter(|| assert!(verify_consistency(old, n, &old_root, &root, &cproof))));
    g.bench_function("root-of-prefix", |b| b.iter(|| tree.root(n - 1).unwrap()));
    g.finish();
}

criterion_group!(benches, proofs);
criterion_main!(benches);
