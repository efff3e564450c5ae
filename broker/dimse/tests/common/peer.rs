//! Running a peer process (a dcmtk tool, pynetdicom, Orthanc's tools) from a test, bounded
//! in time. Shared by cleave-dimse's tests and, through `#[path]`, the broker's DIMSE tests.
use std::process::{Command, Output};

/// How long a peer process may run.
pub const PEER_LIMIT_S: u32 = 300;

/// Runs a peer (a dcmtk tool, pynetdicom, Orthanc's tools) with TCP_NODELAY=1 (dcmtk reads
/// it) off the async runtime, for at most [`PEER_LIMIT_S`] seconds.
pub async fn run(mut cmd: Command) -> Output {
    cmd.env("TCP_NODELAY", "1");
    // Bounded by coreutils' `timeout`: a peer that hangs fails its test within minutes
    // instead of holding CI until its time limit.
    let mut bounded = Command::new("timeout");
    bounded.args(["--kill-after=10", &PEER_LIMIT_S.to_string()]).arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => bounded.env(k, v),
            None => bounded.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        bounded.current_dir(d);
    }
    let what = format!("{:?}", cmd.get_program());
    let out = tokio::task::spawn_blocking(move || bounded.output().expect("cannot start the peer process (coreutils' timeout and the peer are needed)")).await.unwrap();
    // 124: stopped by TERM at the limit; 137: killed ten seconds later.
    assert!(!matches!(out.status.code(), Some(124 | 137)), "{what} did not finish within {PEER_LIMIT_S} s: {}", text(&out));
    out
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}
