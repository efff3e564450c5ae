//! Throughput of re-identifying a stored object on the fly (input and output in memory):
//! a 0.5 MB CT slice and a 50 MB mammogram, reported as bytes/s. A retrieve also decrypts
//! the blob and crosses TLS; this isolates what re-identification adds.
mod common;

use cleave_deid::{reidentify, split, Limits, Options, Restore, UidMapper};
use cleave_keys::Key32;
use common::{el, part10_start};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use zeroize::Zeroizing;

/// A stored (already split) object with `rows × cols` 16-bit pixels.
fn stored(rows: u16, cols: u16) -> Vec<u8> {
    let class = "1.2.840.10008.5.1.4.1.1.2";
    let mut f = part10_start(class, "1.2.3.4.5", "1.2.840.10008.1.2.1");
    el(&mut f, 0x0008_0016, "UI", class.as_bytes());
    el(&mut f, 0x0008_0018, "UI", b"1.2.3.4.5");
    el(&mut f, 0x0008_0050, "SH", b"ACC123456");
    el(&mut f, 0x0008_0060, "CS", b"CT");
    el(&mut f, 0x0010_0010, "PN", b"Doe^Jane");
    el(&mut f, 0x0010_0020, "LO", b"MRN0001");
    el(&mut f, 0x0010_0030, "DA", b"19620704");
    el(&mut f, 0x0020_000D, "UI", b"1.2.3.4");
    el(&mut f, 0x0020_000E, "UI", b"1.2.3.4.6");
    el(&mut f, 0x0028_0010, "US", &rows.to_le_bytes());
    el(&mut f, 0x0028_0011, "US", &cols.to_le_bytes());
    el(&mut f, 0x0028_0100, "US", &16u16.to_le_bytes());
    let n = rows as usize * cols as usize * 2;
    el(&mut f, 0x7FE0_0010, "OW", &(0..n).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>());
    let mut k = [9u8; 32];
    let uids = UidMapper::new(Key32::from_bytes(&mut k));
    let mut out = Vec::with_capacity(f.len() + 4096);
    split(f.as_slice(), &mut out, &Options::care(), &uids, "P1-00112233445566778899aabbccddeeff", &Limits::default())
        .expect("the synthetic instance splits");
    out
}

fn restore() -> Restore {
    let mut r = Restore::new();
    r.patient_name = Some(Zeroizing::new("Doe^Jane".into()));
    r.patient_id = Some(Zeroizing::new("MRN0001".into()));
    r.birth_date = Some(Zeroizing::new("19620704".into()));
    r.accession_number = Some(Zeroizing::new("ACC123456".into()));
    r
}

/// A writer the optimiser cannot see through: each chunk goes through `black_box`.
struct Opaque;

impl std::io::Write for Opaque {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(std::hint::black_box(buf).len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn bench(c: &mut Criterion) {
    let r = restore();
    for (name, rows, cols) in [("ct-0.5MB", 512u16, 512u16), ("mammo-50MB", 5000, 5000)] {
        let obj = stored(rows, cols);
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(obj.len() as u64));
        if obj.len() > 10_000_000 {
            g.sample_size(10);
        }
        g.bench_function("reidentify", |b| {
            b.iter(|| reidentify(obj.as_slice(), Opaque, &r, &Limits::default()).expect("reidentifies"))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
