//! Memory goal of the research export: streaming, so exporting an instance of any size
//! must not grow the broker's memory with it. A broker runs in this process; the real
//! `cleave` CLI (another process) pushes one large instance (`CLEAVE_BENCH_EXPORT_MIB`,
//! default 100 MiB of random pixel data, made with pydicom) and exports it as a
//! researcher. The peak RSS of this process (the broker) during the export, over its RSS
//! just before, must stay under 32 MiB. Linux only (`/proc/self/clear_refs` resets the
//! peak). Run with `cargo bench -p cleave-client --bench export_memory`.
use std::path::Path;

fn rss_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines().find(|l| l.starts_with(field)).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn cleave(home: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cleave"));
    cmd.args(args).env_clear().env("HOME", home).env("CLEAVE_CONFIG_DIR", home.join("cleave"));
    for (k, v) in env { cmd.env(k, v); }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{args:?}: {} {}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    o
}

fn totp(base32: &str) -> String {
    let seed = totp_rs::Secret::Encoded(base32.to_owned()).to_bytes().unwrap();
    let t = totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, seed).unwrap();
    t.generate_current().unwrap()
}

/// The peak growth allowed: a few 64 KiB chunks in flight, the split's header buffer,
/// TLS and hyper buffers; far below any instance worth streaming.
const GOAL_KIB: u64 = 32 * 1024;

fn main() {
    let mib: u64 = std::env::var("CLEAVE_BENCH_EXPORT_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let frames = (mib << 20) / (512 * 512 * 2);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join(broker::CONFIG_FILE), "max_body_bytes = 536870912\nresearch_min_subjects = 1\n").unwrap();
    let mut opts = broker::ServeOptions::new(data.path());
    opts.listen = Some("127.0.0.1:0".parse().unwrap());
    let running = rt.block_on(broker::start(opts)).unwrap();
    let server = format!("https://127.0.0.1:{}", running.addr.port());
    let home = tempfile::tempdir().unwrap();
    let ca = data.path().join("pki/ca.pem");
    let opened = broker::open(data.path(), broker::MasterKeySource::KeyFile).unwrap();
    let issued = broker::issue_client_cert(data.path(), "ct", 30).unwrap();
    opened.accounts.add_device(issued.fingerprint.hex(), "ct", "CT1", "test").unwrap();
    let (c, k) = broker::write_pair(&home.path().join("certs"), "ct", &issued).unwrap();
    cleave(home.path(), &["--profile", "ct", "profile", "set", "--server", &server, "--ca", ca.to_str().unwrap(), "--cert", c.to_str().unwrap(), "--key", k.to_str().unwrap()], &[]);
    cleave(home.path(), &["--profile", "ct", "login", "--device"], &[]);
    let creds = opened.accounts.add_staff("res", broker::Role::Researcher, "r").unwrap();
    let issued = broker::issue_client_cert(data.path(), "res", 30).unwrap();
    let (c, k) = broker::write_pair(&home.path().join("certs"), "res", &issued).unwrap();
    cleave(home.path(), &["--profile", "res", "profile", "set", "--server", &server, "--ca", ca.to_str().unwrap(), "--cert", c.to_str().unwrap(), "--key", k.to_str().unwrap()], &[]);
    cleave(home.path(), &["--profile", "res", "login", "--username", "res"], &[("CLEAVE_PASSWORD", creds.password.as_str()), ("CLEAVE_TOTP", &totp(&creds.totp_base32))]);

    let dir = home.path().join("big");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("big.dcm");
    let py = format!("import pydicom, os; from pydicom.data import get_testdata_file as g; d = pydicom.dcmread(g('CT_small.dcm')); d.Rows = 512; d.Columns = 512; d.NumberOfFrames = {frames}; d.BitsAllocated = 16; d.BitsStored = 16; d.HighBit = 15; d.PixelData = os.urandom(512*512*2*{frames}); d.StudyDate = '20200101'; d.save_as({:?})", f.to_str().unwrap(), frames = frames);
    let made = std::process::Command::new("python3").args(["-c", &py]).status().expect("python3 is needed: run .ci/run");
    assert!(made.success(), "pydicom is needed: pip install pydicom (or run .ci/run)");
    let t = std::time::Instant::now();
    cleave(home.path(), &["--profile", "ct", "push", dir.to_str().unwrap(), "--json"], &[]);
    let size = std::fs::metadata(&f).unwrap().len();
    println!("push of {} MiB over STOW-RS: {:.1} s", size >> 20, t.elapsed().as_secs_f64());
    std::fs::write("/proc/self/clear_refs", "5").expect("Linux /proc/self/clear_refs resets the peak RSS");
    let base = rss_kib("VmRSS:");
    let out = home.path().join("out");
    let t = std::time::Instant::now();
    let o = cleave(home.path(), &["--profile", "res", "research", "export", "--modality", "CT", "--out", out.to_str().unwrap(), "--json"], &[]);
    let secs = t.elapsed().as_secs_f64();
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["instances"], 1, "{report}");
    let peak = rss_kib("VmHWM:");
    let growth = peak.saturating_sub(base);
    println!("research export of {} MiB: {secs:.1} s ({:.0} MiB/s)", size >> 20, (size >> 20) as f64 / secs);
    println!("broker RSS before the export {base} KiB, peak during it {peak} KiB: growth {growth} KiB (goal < {GOAL_KIB} KiB)");
    assert!(growth < GOAL_KIB, "the export grew the broker's memory by {growth} KiB: it is not streaming");
}
