//! `slotgate demo`, the README's first command, run as a user runs it: the real binary with a
//! short duration. It must show every phase (the uplink cut, the backlog, the replay), end by
//! itself with exit status 0 and a balanced tally line, and its printed hints must work as
//! printed.

// clippy.toml allows unwrap in #[test] functions only; the helpers of this test crate need it too.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Proc};

/// Runs the demo to its end; its exit status and standard output.
fn run_demo(args: &[&str], state: &std::path::Path) -> (std::process::ExitStatus, String, u32) {
    let mut demo = Proc(
        Command::new(BIN)
            .arg("demo")
            .args(args)
            .arg("--state-dir")
            .arg(state)
            // As if started from a shell: the hints then name the binary's full path.
            .env_remove("CARGO")
            .env_remove("CARGO_MANIFEST_DIR")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut stdout = demo.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).unwrap();
        out
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = demo.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo did not stop by itself");
        std::thread::sleep(Duration::from_millis(100));
    };
    (status, reader.join().unwrap(), demo.0.id())
}

/// `TALLY key=value …` as a map.
fn tally(out: &str) -> BTreeMap<String, String> {
    let line = out.lines().find(|l| l.starts_with("TALLY ")).unwrap_or_else(|| panic!("{out}"));
    line.split_whitespace()
        .skip(1)
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn the_demo_survives_its_outage_and_proves_nothing_was_lost() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (status, out, pid) =
        run_demo(&["--duration", "15s", "--machines", "4", "--game-rate", "40"], &state);
    let demo_dir = std::env::temp_dir().join(format!("slotgate-demo-{pid}"));
    assert!(status.success(), "{out}");
    // Plain lines in a pipe: no escape codes, every phase announced in order.
    assert!(!out.contains('\x1b'), "{out}");
    let phases: Vec<&str> = out.lines().filter(|l| l.starts_with("== ")).collect();
    let position = |name: &str| phases.iter().position(|l| l.starts_with(&format!("== {name}:")));
    let order = ["playing", "uplink down", "replaying", "closing", "settling"].map(position);
    assert!(order.iter().all(Option::is_some), "{phases:?}");
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{phases:?}");

    let tally = tally(&out);
    assert_eq!(tally["result"], "BALANCED", "{out}");
    assert_eq!((tally["lost"].as_str(), tally["out_of_order"].as_str()), ("0", "0"), "{out}");
    assert_eq!(tally["machines"], "4");
    assert_eq!(tally["ledger"], tally["journal"], "{out}");
    assert_eq!(tally["journal"], tally["received"], "{out}");
    assert_eq!(tally["records_journalled"], tally["records_received"], "{out}");
    let number = |key: &str| tally[key].parse::<u64>().unwrap();
    let games: u64 = tally["ledger"]
        .strip_prefix("games:")
        .and_then(|rest| rest.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(games > 0, "the machines played: {out}");
    // The outage happened: a backlog was seen and the receiver got events replayed.
    assert!(number("max_backlog") > 0, "{out}");
    assert!(number("replayed") > 0, "{out}");

    // The hint works as printed.
    let hint =
        out.lines().find(|l| l.contains(" journal verify ")).unwrap_or_else(|| panic!("{out}"));
    let words: Vec<&str> = hint.split_whitespace().collect();
    assert_eq!(words[0], BIN, "started directly, the hint names the binary: {hint}");
    let verify = Command::new(words[0]).args(&words[1..]).output().unwrap();
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{hint}: {report}");
    assert!(report.contains("hash chain: intact"), "{report}");
    assert!(report.contains(&format!("records {}", tally["records_journalled"])), "{report}");
    let _ = std::fs::remove_dir_all(&demo_dir);
}

#[test]
fn the_demo_refuses_a_state_directory_with_a_journal() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("journal")).unwrap();
    let (status, out, pid) = run_demo(&["--duration", "3s"], &state);
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("slotgate-demo-{pid}")));
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(!out.contains("TALLY"), "{out}");
}
