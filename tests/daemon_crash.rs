//! Crash test of the durability contract (issue 4, requirements.md R7): the real daemon is killed
//! with SIGKILL at random moments while simulated machines play, and restarted at once each
//! time. Afterwards every report a machine dropped from its queue (i.e. that the gateway
//! acknowledged) must be in the journal, once, in order, and the journal's chain and sequence numbers
//! must be intact.
//!
//! `SLOTGATE_CRASH_ITERATIONS` sets the number of kills (default 200; the long mode is e.g.
//! 2000), `SLOTGATE_CRASH_SEED` the seed of the kill moments (printed on failure).
//!
//! The power-cut variant runs the state directory on the FUSE file system of `tests/powercut`
//! and cuts the power right after each kill, so only what the daemon synced survives (a kill
//! alone leaves the page cache intact). `SLOTGATE_POWERCUT_ITERATIONS` sets its number of cuts
//! (default 40, as in the report that found the loss: 4,047 of 4,350 acknowledged reports).

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;
mod powercut;

use std::process::Command;
use std::time::Duration;

use common::*;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Whether `needle` appears in `haystack` in order (not necessarily contiguously).
fn is_subsequence(needle: &[(bool, u64)], haystack: &[(bool, u64)]) -> bool {
    let mut it = haystack.iter();
    needle.iter().all(|n| it.any(|h| h == n))
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_report() {
    crash_loop(env_u64("SLOTGATE_CRASH_ITERATIONS", 200), 4, false);
}

#[test]
fn sigkill_and_a_power_cut_at_random_moments_lose_no_acknowledged_report() {
    crash_loop(env_u64("SLOTGATE_POWERCUT_ITERATIONS", 40), 12, true);
}

fn crash_loop(iterations: u64, machine_count: u16, power_cut: bool) {
    let seed = env_u64("SLOTGATE_CRASH_SEED", rand::random());
    let mut rng = SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let disk = power_cut.then(|| {
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        powercut::mount(&state).unwrap()
    });
    let ledger_path = dir.path().join("ledger.jsonl");
    let (sim, machines) = simulate(
        machine_count,
        &ledger_path,
        &[
            "--rte",
            "--game-rate",
            "240",
            "--game-duration",
            "100ms",
            "--cashout-probability",
            "0",
            "--seed",
            &seed.to_string(),
        ],
    );
    let config = write_config(dir.path(), &machines);
    let key = dir.path().join("journal.key");
    let status = Command::new(BIN).args(["journal", "keygen", "--out"]).arg(&key).status().unwrap();
    assert!(status.success());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replacen(
        "[storage]",
        &format!("[journal]\nsigning_key = {:?}\ncheckpoint_interval = \"1s\"\n\n[storage]", key),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("gateway.log");

    for _ in 0..iterations {
        let gateway = run_gateway(&config, &log);
        let alive = Duration::from_millis(rng.random_range(100..1500));
        std::thread::sleep(alive);
        let mut child = gateway;
        // Proc's Drop sends SIGKILL and reaps the child: a crash, not a stop.
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        if let Some(disk) = &disk {
            disk.cut();
        }
    }
    // A last, clean run reads whatever the kills left in the machines' queues.
    let gateway = run_gateway(&config, &log);
    std::thread::sleep(Duration::from_secs(3));
    assert!(gateway.terminate().success(), "slotgate run exits cleanly on SIGTERM");
    sim.terminate();

    let journal = dir.path().join("state/journal");
    let quarantine = dir.path().join("state/quarantine");
    assert!(
        !quarantine.exists() || std::fs::read_dir(&quarantine).unwrap().next().is_none(),
        "seed {seed}: a restart quarantined the journal; log: {}",
        log.display()
    );
    let verify =
        Command::new(BIN).args(["journal", "verify", "--config"]).arg(&config).output().unwrap();
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "seed {seed}: journal verify failed:\n{report}");
    assert!(report.contains("hash chain: intact"), "{report}");

    let events = journal_events(&journal);
    assert_sequences_gap_free(&events);
    let got = gateway_reports(&events);
    let (acked, all) = ledger_reports(&read_json_lines(&ledger_path));
    assert_eq!(acked.len(), machines.len(), "every machine played");
    for (serial, acked) in &acked {
        let journalled = got.get(serial).map_or(&[][..], Vec::as_slice);
        assert!(
            is_subsequence(acked, journalled),
            "seed {seed}: machine {serial}: a report the gateway acknowledged is missing from \
             the journal ({} acknowledged, {} journalled); log: {}",
            acked.len(),
            journalled.len(),
            log.display()
        );
        assert!(
            is_subsequence(journalled, &all[serial]),
            "seed {seed}: machine {serial}: the journal holds a report twice or one the machine \
             never made ({} journalled, {} made); log: {}",
            journalled.len(),
            all[serial].len(),
            log.display()
        );
        assert!(acked.len() >= 20, "machine {serial} played too little to prove anything");
    }
    let derived = events
        .iter()
        .filter(|e| {
            e["derived"] == true
                && matches!(e["kind"].as_str(), Some("bet_accepted" | "game_ended"))
        })
        .count();
    assert_eq!(derived, 0, "seed {seed}: a play report was replaced by a meter-derived event");
}
