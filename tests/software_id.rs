//! Requirements R21: every start journals a `software_id` record with the running binary's
//! SHA-256. Two starts of different builds (the real binary, then a copy with bytes appended)
//! give two records whose hashes are those of the two files.

// clippy.toml allows unwrap in #[test] functions only; the helpers of this test crate need it too.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use sha2::Digest;

/// The `software_id` records of the journal at `dir`, as their JSON message.
fn software_ids(dir: &Path) -> Vec<Value> {
    let out = Command::new(BIN).args(["journal", "export", "--dir"]).arg(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["alarm"]["alarm"] == "software_id")
        .map(|r| serde_json::from_str(r["alarm"]["message"].as_str().unwrap()).unwrap())
        .collect()
}

fn sha256(path: &Path) -> String {
    let digest = sha2::Sha256::digest(std::fs::read(path).unwrap());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `binary` on `config` until the journal holds `n` software_id records, then stops it.
fn start_until_identified(binary: &Path, config: &Path, journal: &Path, n: usize) {
    let gateway = Proc(
        Command::new(binary)
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while software_ids(journal).len() < n {
        assert!(Instant::now() < deadline, "no software_id record within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(gateway.terminate().success());
}

#[test]
fn two_builds_started_in_turn_journal_two_software_ids_with_their_own_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("slotgate.toml");
    // A machine that is not there: the line stays down, which is no reason not to start.
    std::fs::write(
        &config,
        "[venue]\nid = \"UA-TEST-1\"\ncurrency = \"UAH\"\ntime_zone = \"Europe/Kyiv\"\n\n\
         [storage]\ndir = \"state\"\n\n[[line]]\nname = \"line-0\"\nkind = \"tcp\"\n\
         address = \"127.0.0.1:9\"\nconnect_timeout = \"1s\"\n  [[line.machine]]\n  address = 1\n  \
         registry_id = \"EGM-1\"\n",
    )
    .unwrap();
    let journal = dir.path().join("state/journal");
    let other = dir.path().join("slotgate-other-build");
    std::fs::copy(BIN, &other).unwrap();
    let mut file = std::fs::OpenOptions::new().append(true).open(&other).unwrap();
    file.write_all(b"another build").unwrap();
    file.sync_all().unwrap();
    drop(file);

    start_until_identified(Path::new(BIN), &config, &journal, 1);
    start_until_identified(&other, &config, &journal, 2);

    let ids = software_ids(&journal);
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0]["binary_sha256"], sha256(Path::new(BIN)));
    assert_eq!(ids[1]["binary_sha256"], sha256(&other));
    assert_ne!(ids[0]["binary_sha256"], ids[1]["binary_sha256"]);
    for id in &ids {
        assert_eq!(id["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(id["config_sha256"], sha256(&config));
        assert!(!id["git_commit"].as_str().unwrap().is_empty());
    }
}
