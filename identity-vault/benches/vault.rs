//! Benchmarks of the identity vault.
//!
//! * `seal_open_field`: seal and open one name-sized field (the per-field cost).
//! * `get_identity`: read one identity with every field sealed.
//! * `open_closed_vault`: unwrap the keys and open a closed vault (goal ≤ 5 ms).
//! * `link_instance/<n>`: link one more instance to a study that starts with `n` (and
//!   grows by one per iteration), as each arriving instance does: one durable commit each.
//!   Flat since `cleave-vault/2` (137-141 µs here); `cleave-vault/1`, which resealed the
//!   study's whole list of instance UIDs, took 2.1-2.9 ms once the study had grown to a
//!   thousand or two.
//! * search p99 over 1,000,000 identities (goal ≤ 2 ms): not a criterion group, because
//!   the vault takes minutes to build; it is built once (`VAULT_BENCH_DIR` keeps it for
//!   re-runs, `VAULT_BENCH_N` changes the size, `VAULT_BENCH_SKIP_1M=1` skips it) and
//!   10,000 mixed queries are timed one by one; the percentiles are printed.
//!
//! Run: `cargo bench -p identity-vault --bench vault`.
use std::path::Path;
use std::time::{Duration, Instant};

use cleave_keys::{FieldSealer, Key32, KeySource, Keyring, SealContext, VersionedKey};
use criterion::{black_box, Criterion};
use identity_vault::{Demographics, IdentityId, Query, Vault, VaultKeys};

/// splitmix64: deterministic synthetic data without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const FAMILIES: u64 = 20_000;
const GIVENS: u64 = 2_000;

fn person(i: u64) -> Demographics {
    let mut r = Rng(i.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xC1EA_5E);
    let day = r.below(28) + 1;
    let month = r.below(12) + 1;
    let year = 1930 + r.below(90);
    let mut d = Demographics::default();
    d.family_name = Some(format!("Fam{}", r.below(FAMILIES)));
    d.given_name = Some(format!("Giv{}", r.below(GIVENS)));
    d.birth_date = Some(format!("{year:04}{month:02}{day:02}"));
    d.sex = Some(["M", "F", "O"][r.below(3) as usize].into());
    d.address = Some(format!("{} Long Street, Some Town", r.below(500)));
    d.phones = vec![format!("+41 44 {:07}", r.below(10_000_000))];
    d.national_id = Some(format!("NAT{i:09}"));
    d.issuer = Some("HOSP".into());
    d.patient_id = Some(format!("P{i:09}"));
    d
}

fn keyring(dir: &Path) -> Keyring {
    Keyring::open_or_create(&dir.join("keyring.json"), KeySource::KeyFile(dir.join("master.key"))).unwrap()
}

fn build(dir: &Path, n: u64) -> (Keyring, Vec<IdentityId>) {
    let ring = keyring(dir);
    let db = dir.join("vault.sqlite");
    let mut v = Vault::open(&db, VaultKeys::unwrap(&ring).unwrap()).unwrap();
    let have = v.search(&Query::new().patient_id("HOSP", &format!("P{:09}", n - 1))).unwrap();
    let mut ids = Vec::new();
    if have.is_empty() {
        let start = Instant::now();
        let batch = 10_000;
        for b in 0..n.div_ceil(batch) {
            let people: Vec<Demographics> = (b * batch..((b + 1) * batch).min(n)).map(person).collect();
            ids.extend(v.import(&people).unwrap());
            if b % 10 == 9 {
                eprintln!("  built {} identities in {:.0?}", ids.len(), start.elapsed());
            }
        }
        eprintln!("built a vault of {n} identities in {:.1?}", start.elapsed());
    } else {
        for i in (0..n).step_by((n / 10_000).max(1) as usize) {
            ids.extend(v.search(&Query::new().patient_id("HOSP", &format!("P{i:09}"))).unwrap());
        }
    }
    (ring, ids)
}

fn micro(c: &mut Criterion) {
    let mut raw = [7u8; 32];
    let sealer = FieldSealer::new(vec![VersionedKey { version: 1, key: Key32::from_bytes(&mut raw) }]);
    let ctx = SealContext::new("identity", "family_name", "00112233445566778899aabbccddeeff");
    let value = [b'x'; 32]; // a padded name: one 32-byte bucket
    c.bench_function("seal_field", |b| b.iter(|| black_box(sealer.seal(ctx, black_box(&value)))));
    let sealed = sealer.seal(ctx, &value);
    c.bench_function("open_field", |b| b.iter(|| black_box(sealer.open(ctx, black_box(&sealed)).unwrap())));

    let dir = tempfile::tempdir().unwrap();
    let (ring, ids) = build(dir.path(), 20_000);
    let db = dir.path().join("vault.sqlite");
    {
        let v = Vault::open(&db, VaultKeys::unwrap(&ring).unwrap()).unwrap();
        let mut r = Rng(1);
        c.bench_function("get_identity", |b| {
            b.iter(|| black_box(v.get(&ids[r.below(ids.len() as u64) as usize]).unwrap()))
        });
    }
    c.bench_function("open_closed_vault_20k", |b| {
        b.iter(|| {
            let v = Vault::open(&db, VaultKeys::unwrap(&ring).unwrap()).unwrap();
            black_box(&v);
            drop(v);
        })
    });
}

fn link_instance(c: &mut Criterion) {
    use identity_vault::StudyLink;
    let mut g = c.benchmark_group("link_instance");
    for n in [10usize, 2000] {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::open_or_create(&dir.path().join("keyring.json"), KeySource::KeyFile(dir.path().join("master.key"))).unwrap();
        let mut v = Vault::open(&dir.path().join("vault.sqlite"), VaultKeys::unwrap(&ring).unwrap()).unwrap();
        let who = v.create(&Demographics::default().with_dicom_pn("Bench^Study")).unwrap();
        let base = StudyLink {
            accession_number: Some("ACC-1"),
            original_study_uid: "1.2.840.99.1",
            clinical_study_uid: "2.25.1",
            original_series_uids: &["1.2.840.99.1.1"],
            original_instance_uids: &[],
        };
        let mut next = 0u64;
        let mut link_one = |v: &mut Vault| {
            let uid = format!("1.2.840.99.1.1.{next}");
            next += 1;
            let one = [uid.as_str()];
            v.link_study(&who, &StudyLink { original_instance_uids: &one, ..base }).unwrap();
        };
        for _ in 0..n {
            link_one(&mut v);
        }
        g.bench_function(n.to_string(), |b| b.iter(|| link_one(&mut v)));
    }
    g.finish();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn search_p99() {
    if std::env::var_os("VAULT_BENCH_SKIP_1M").is_some() {
        return;
    }
    let n: u64 = std::env::var("VAULT_BENCH_N").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let tmp;
    let dir = match std::env::var_os("VAULT_BENCH_DIR") {
        Some(d) => {
            std::fs::create_dir_all(&d).unwrap();
            std::path::PathBuf::from(d)
        }
        None => {
            tmp = tempfile::tempdir().unwrap();
            tmp.path().to_owned()
        }
    };
    let (ring, _) = build(&dir, n);
    let db = dir.join("vault.sqlite");
    let start = Instant::now();
    let v = Vault::open(&db, VaultKeys::unwrap(&ring).unwrap()).unwrap();
    eprintln!("opened the {n}-identity vault in {:.2?}", start.elapsed());
    let mut r = Rng(42);
    let queries = 10_000;
    let (mut search, mut find) = (Vec::with_capacity(queries), Vec::with_capacity(queries));
    let mut hits = 0usize;
    for q in 0..queries {
        let p = person(r.below(n));
        let query = match q % 4 {
            0 => Query::new().full_name(&format!("{}^{}", p.family_name.as_deref().unwrap(), p.given_name.as_deref().unwrap())),
            1 => Query::new().name_token(p.family_name.as_deref().unwrap()).birth_date(p.birth_date.as_deref().unwrap()),
            2 => Query::new().patient_id("HOSP", p.patient_id.as_deref().unwrap()),
            _ => Query::new().national_id(p.national_id.as_deref().unwrap()),
        };
        let t = Instant::now();
        let ids = v.search(&query).unwrap();
        search.push(t.elapsed());
        let t = Instant::now();
        let recs = v.find(&query).unwrap();
        find.push(t.elapsed());
        hits += ids.len();
        assert!(!recs.is_empty(), "every query targets an existing identity");
    }
    search.sort();
    find.sort();
    println!(
        "search over {n} identities ({queries} queries, {:.1} hits each): p50 {:.3?} p99 {:.3?} max {:.3?}",
        hits as f64 / queries as f64,
        percentile(&search, 0.5),
        percentile(&search, 0.99),
        search.last().unwrap()
    );
    println!(
        "search + read every hit: p50 {:.3?} p99 {:.3?} max {:.3?}",
        percentile(&find, 0.5),
        percentile(&find, 0.99),
        find.last().unwrap()
    );
    drop(v);
    let mut opens: Vec<Duration> = (0..50)
        .map(|_| {
            let t = Instant::now();
            let v = Vault::open(&db, VaultKeys::unwrap(&ring).unwrap()).unwrap();
            let e = t.elapsed();
            drop(v);
            e
        })
        .collect();
    opens.sort();
    println!("open a closed {n}-identity vault (keys + connection): p50 {:.3?} p99 {:.3?}", percentile(&opens, 0.5), percentile(&opens, 0.99));
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    micro(&mut c);
    link_instance(&mut c);
    c.final_summary();
    search_p99();
}
