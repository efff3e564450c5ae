//! Throughput of `split` alone (input and output in memory): 0.5 MB CT slices and 50 MB
//! mammography images, reported as instances/s and MB/s.
mod common;

use cleave_deid::{split, Limits, Options, UidMapper};
use cleave_keys::Key32;
use common::{el, part10_start};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// A realistic header (about 60 attributes, several identifying) and native pixel data.
fn instance(modality: &str, class: &str, rows: u16, cols: u16) -> Vec<u8> {
    let ts = "1.2.840.10008.1.2.1";
    let sop = "1.2.826.0.1.3680043.10.543.7.7.7";
    let mut f = part10_start(class, sop, ts);
    el(&mut f, 0x0008_0005, "CS", b"ISO_IR 100");
    el(&mut f, 0x0008_0008, "CS", b"ORIGINAL\\PRIMARY\\AXIAL");
    el(&mut f, 0x0008_0016, "UI", class.as_bytes());
    el(&mut f, 0x0008_0018, "UI", sop.as_bytes());
    for t in [0x0008_0020u32, 0x0008_0021, 0x0008_0022, 0x0008_0023] {
        el(&mut f, t, "DA", b"20240105");
    }
    for t in [0x0008_0030u32, 0x0008_0031, 0x0008_0032, 0x0008_0033] {
        el(&mut f, t, "TM", b"101112.123");
    }
    el(&mut f, 0x0008_0050, "SH", b"ACC123456");
    el(&mut f, 0x0008_0060, "CS", modality.as_bytes());
    el(&mut f, 0x0008_0070, "LO", b"Vendor");
    el(&mut f, 0x0008_0080, "LO", b"General Hospital");
    el(&mut f, 0x0008_0090, "PN", b"Referring^Doctor");
    el(&mut f, 0x0008_1010, "SH", b"STATION1");
    el(&mut f, 0x0008_1030, "LO", b"CT HEAD WITHOUT CONTRAST");
    el(&mut f, 0x0008_103E, "LO", b"AXIAL 5MM");
    el(&mut f, 0x0009_0010, "LO", b"PRIVATE CREATOR");
    el(&mut f, 0x0009_1001, "LO", b"private value");
    el(&mut f, 0x0010_0010, "PN", b"Doe^Jane");
    el(&mut f, 0x0010_0020, "LO", b"MRN0001");
    el(&mut f, 0x0010_0030, "DA", b"19620704");
    el(&mut f, 0x0010_0040, "CS", b"F");
    el(&mut f, 0x0010_1010, "AS", b"061Y");
    el(&mut f, 0x0010_1040, "LO", b"1 Main Street");
    el(&mut f, 0x0018_0015, "CS", b"HEAD");
    el(&mut f, 0x0018_0050, "DS", b"5");
    el(&mut f, 0x0018_1000, "LO", b"SN123");
    el(&mut f, 0x0020_000D, "UI", b"1.2.826.0.1.3680043.10.543.7");
    el(&mut f, 0x0020_000E, "UI", b"1.2.826.0.1.3680043.10.543.7.7");
    el(&mut f, 0x0020_0010, "SH", b"STUDY1");
    el(&mut f, 0x0020_0052, "UI", b"1.2.826.0.1.3680043.10.543.7.9");
    el(&mut f, 0x0028_0002, "US", &1u16.to_le_bytes());
    el(&mut f, 0x0028_0004, "CS", b"MONOCHROME2");
    el(&mut f, 0x0028_0010, "US", &rows.to_le_bytes());
    el(&mut f, 0x0028_0011, "US", &cols.to_le_bytes());
    el(&mut f, 0x0028_0100, "US", &16u16.to_le_bytes());
    let n = rows as usize * cols as usize * 2;
    let mut px = Vec::with_capacity(n);
    px.extend((0..n).map(|i| (i * 31 % 251) as u8));
    el(&mut f, 0x7FE0_0010, "OW", &px);
    f
}

fn bench(c: &mut Criterion) {
    let mut k = [9u8; 32];
    let uids = UidMapper::new(Key32::from_bytes(&mut k));
    let limits = Limits::default();
    let cases = [
        ("ct_0.5MB", instance("CT", "1.2.840.10008.5.1.4.1.1.2", 512, 512)),
        ("mg_50MB", instance("MG", "1.2.840.10008.5.1.4.1.1.1.2", 5000, 5000)),
    ];
    let mut g = c.benchmark_group("split");
    for (name, file) in &cases {
        g.throughput(Throughput::Bytes(file.len() as u64));
        if file.len() > 10 << 20 {
            g.sample_size(10);
        } else {
            g.sample_size(50);
        }
        let mut out = Vec::with_capacity(file.len() + 4096);
        g.bench_function(*name, |b| {
            b.iter(|| {
                out.clear();
                split(file.as_slice(), &mut out, &Options::research(), &uids, "PSEUDO", &limits).expect("split")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
