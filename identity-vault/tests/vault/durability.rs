//! An acknowledged write survives `kill -9`: a child process writes identities and
//! reports each one after `create` returns; the parent kills it mid-stream, reopens the
//! vault, and reads back every identity that was acknowledged.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use identity_vault::{IdentityId, Query};

use crate::{named, Env};

const CHILD_ENV: &str = "IDENTITY_VAULT_DURABILITY_CHILD";

#[test]
fn acknowledged_writes_survive_kill_9() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        let env = Env::at(std::path::Path::new(&dir));
        let mut v = env.open();
        // Bounded so that an orphaned child cannot run forever.
        for i in 0..5_000 {
            let id = v.create(&named(&format!("Durable{i}"))).unwrap();
            println!("ACK {i} {}", id.to_hex());
        }
        return;
    }
    let env = Env::new();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "durability::acknowledged_writes_survive_kill_9", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, env.dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut acked: Vec<(usize, IdentityId)> = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let Some(rest) = line.strip_prefix("ACK ") else { continue };
        let (i, hex) = rest.split_once(' ').unwrap();
        acked.push((i.parse().unwrap(), IdentityId::from_hex(hex).unwrap()));
        if acked.len() == 40 {
            child.kill().unwrap(); // SIGKILL on Unix
            break;
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child must have been killed, not finished");
    assert_eq!(acked.len(), 40, "the child stopped before acknowledging 40 writes");
    let v = env.open();
    for (i, id) in &acked {
        let r = v.get(id).unwrap();
        assert_eq!(r.demographics.family_name.as_deref(), Some(format!("Durable{i}").as_str()));
        assert_eq!(v.search(&Query::new().full_name(&format!("Durable{i}"))).unwrap(), vec![*id]);
    }
}
