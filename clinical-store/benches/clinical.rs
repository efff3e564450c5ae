//! Benchmarks: blob encryption and decryption against raw XChaCha20-Poly1305 over the same
//! 16 MiB buffer in the same 64 KiB chunks (goal: at least 70% of raw), and the cost of
//! opening a closed store on demand (goal: at most 5 ms).
use std::time::Duration;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use cleave_keys::{Key32, KeySource, Keyring, VersionedKey};
use clinical_store::bench_support;
use clinical_store::ClinicalStore;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const SIZE: usize = 16 << 20;
const CHUNK: usize = 64 << 10;

fn blob_throughput(c: &mut Criterion) {
    let plaintext: Vec<u8> = (0..SIZE).map(|i| (i * 31 % 251) as u8).collect();
    let key = VersionedKey { version: 1, key: Key32::generate() };
    let raw = XChaCha20Poly1305::new(key.key.expose().into());
    let nonce = |i: usize| {
        let mut n = [7u8; 24];
        n[19..23].copy_from_slice(&(i as u32).to_be_bytes());
        XNonce::from(n)
    };
    let mut g = c.benchmark_group("blob-16MiB");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(8));

    let mut buf = plaintext.clone();
    g.bench_function("raw-xchacha20poly1305-encrypt", |b| {
        b.iter(|| {
            for (i, chunk) in buf.chunks_mut(CHUNK).enumerate() {
                let tag = raw.encrypt_in_place_detached(&nonce(i), b"ad", chunk).unwrap();
                std::hint::black_box(tag);
            }
        })
    });
    let mut out = Vec::with_capacity(SIZE + SIZE / CHUNK * 16 + 64);
    g.bench_function("blob-encrypt", |b| b.iter(|| bench_support::encrypt(&key, &plaintext, &mut out)));

    // Raw decryption: sealed chunks, copied into a scratch buffer and opened in place.
    let sealed: Vec<(Vec<u8>, Tag)> = plaintext
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, c)| {
            let mut v = c.to_vec();
            let t = raw.encrypt_in_place_detached(&nonce(i), b"ad", &mut v).unwrap();
            (v, t)
        })
        .collect();
    let mut scratch = vec![0u8; CHUNK];
    g.bench_function("raw-xchacha20poly1305-decrypt", |b| {
        b.iter(|| {
            for (i, (ct, tag)) in sealed.iter().enumerate() {
                scratch[..ct.len()].copy_from_slice(ct);
                raw.decrypt_in_place_detached(&nonce(i), b"ad", &mut scratch[..ct.len()], tag).unwrap();
            }
        })
    });
    let mut blob = Vec::new();
    bench_support::encrypt(&key, &plaintext, &mut blob);
    let mut back = Vec::with_capacity(SIZE);
    g.bench_function("blob-decrypt", |b| b.iter(|| bench_support::decrypt(&key, &blob, &mut back).unwrap()));
    g.finish();
    assert!(back == plaintext);
}

fn open_closed_store(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let ring = std::sync::Arc::new(
        Keyring::open_or_create(&dir.path().join("keyring.json"), KeySource::KeyFile(dir.path().join("master.key"))).unwrap(),
    );
    // TTL zero: every request opens the store (keys unwrapped, index opened) and closes it.
    let od = ClinicalStore::on_demand(dir.path().join("store"), ring, Duration::ZERO).unwrap();
    c.bench_function("open-closed-store-and-close", |b| b.iter(|| od.with(|s| s.patient("P1-00").unwrap()).unwrap()));
}

criterion_group!(benches, blob_throughput, open_closed_store);
criterion_main!(benches);
