//! Benchmark: durable appends per second with group commit.
//!
//! Appends: every acknowledged entry is fsync'd, so the rate is (entries per batch) / (time
//! of one write + fdatasync). One blocking thread gets one entry per fsync; many appends in
//! flight (threads, or one async caller holding many [`PendingAppend`]s, as the broker
//! does) share each fsync. `inflight-N` keeps N appends outstanding from one thread.
//!
//! Proofs at scale: `benches/proofs.rs` (in memory) and `benches/audit_log_10m.rs` (on disk).
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_audit::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn entry(i: u64, refs: &ReferenceKey) -> Entry {
    let mut a = Actor::new(ActorKind::Staff, format!("user{}", i % 50));
    a.grant = Some(format!("grant{i}"));
    a.cert_sha256 = Some([1; 32]);
    Entry::new(a, Operation::ClinicalRead, Outcome::Allowed)
        .with_resource(refs.patient_ref(&format!("p{i}")))
        .with_resource(refs.study_ref(&format!("1.2.{i}")))
}

fn open_log(dir: &std::path::Path) -> AuditLog {
    let mut o = LogOptions::new("bench.example/audit");
    o.checkpoint_interval = None;
    o.checkpoint_every_entries = None;
    AuditLog::open(dir, o, &cleave_keys::Key32::from_bytes(&mut [5; 32])).unwrap()
}

#[derive(Clone, Copy)]
enum Mode {
    Threads(usize),
    InFlight(usize),
    Batch(usize),
}

fn appends(c: &mut Criterion) {
    let refs = ReferenceKey::new(cleave_keys::Key32::from_bytes(&mut [3; 32]));
    // Entries are built once: the bench measures the log, not the caller's formatting.
    let pool: Arc<Vec<Entry>> = Arc::new((0..4096).map(|i| entry(i, &refs)).collect());
    let mut g = c.benchmark_group("append");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    let modes = [
        ("1-thread", Mode::Threads(1)),
        ("64-threads", Mode::Threads(64)),
        ("inflight-256", Mode::InFlight(256)),
        ("inflight-1024", Mode::InFlight(1024)),
        ("batch-256", Mode::Batch(256)),
    ];
    for (name, mode) in modes {
        let per_iter = 1024u64;
        g.throughput(Throughput::Elements(per_iter));
        g.bench_function(name, |b| {
            let dir = tempfile::tempdir().unwrap();
            let log = open_log(dir.path());
            b.iter_custom(|iters| {
                let total = iters * per_iter;
                let at = |i: u64| &pool[(i % pool.len() as u64) as usize];
                let start = Instant::now();
                match mode {
                    Mode::Threads(threads) => std::thread::scope(|s| {
                        for t in 0..threads as u64 {
                            let log = &log;
                            s.spawn(move || {
                                let mut i = t;
                                while i < total {
                                    log.append(at(i)).unwrap();
                                    i += threads as u64;
                                }
                            });
                        }
                    }),
                    Mode::InFlight(window) => {
                        let mut pending = VecDeque::with_capacity(window);
                        for i in 0..total {
                            if pending.len() == window {
                                let p: PendingAppend = pending.pop_front().unwrap();
                                p.wait().unwrap();
                            }
                            pending.push_back(log.submit(at(i)).unwrap());
                        }
                        for p in pending {
                            p.wait().unwrap();
                        }
                    }
                    Mode::Batch(n) => {
                        let mut i = 0;
                        while i < total {
                            let k = (n as u64).min(total - i) as usize;
                            let from = (i % pool.len() as u64) as usize;
                            let slice = &pool[from..(from + k).min(pool.len())];
                            log.append_batch(slice).unwrap();
                            i += slice.len() as u64;
                        }
                    }
                }
                start.elapsed()
            });
        });
    }
    g.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
