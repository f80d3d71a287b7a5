//! End to end through the real binaries: `slotgate simulate` serves machines over TCP with the
//! 9-bit framing, `slotgate run` polls them and writes canonical events, and the events must
//! equal the simulator's ground-truth ledger: every game's bet and win, in credits and in minor
//! units, in order per machine, nothing lost and nothing invented.

// clippy.toml allows unwrap in #[test] functions only; the helpers of this test crate need it too.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
#[test]
fn fifty_machines_over_tcp_report_exactly_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let ledger_path = dir.path().join("ledger.jsonl");
    let games_each = 6;
    let (sim, machines) = simulate(
        50,
        &ledger_path,
        &[
            "--rte",
            "--game-rate",
            "40",
            "--game-duration",
            "300ms",
            "--max-games",
            &games_each.to_string(),
            "--cashout-probability",
            "0",
            "--seed",
            "42",
        ],
    );
    let config = write_config(dir.path(), &machines);
    let gateway = Proc(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let events_file = dir.path().join("state/journal");
    wait_for_games(&events_file, 50 * games_each, Duration::from_secs(120));
    assert!(gateway.terminate().success(), "slotgate run exits cleanly on SIGTERM");
    sim.terminate();

    let events = journal_events(&events_file);
    let ledger = ledger_games(&read_json_lines(&ledger_path));
    assert_eq!(ledger.len(), 50);
    assert!(ledger.values().all(|g| g.len() == games_each));
    let (games, unpriced) = event_games(&events);
    assert_eq!(games, ledger);
    for (i, m) in machines.iter().enumerate() {
        let id = format!("EGM-{}", m.serial);
        let of_machine: Vec<&Value> =
            events.iter().filter(|e| e["machine"]["registry_id"] == id.as_str()).collect();
        let n = unpriced.get(&m.serial).copied().unwrap_or(0);
        if i % 2 == 0 {
            assert_eq!(n, 0, "{id}: a configured denomination prices every event");
            continue;
        }
        // Without one, only events the machine sent before answering LP1F can lack an amount
        // (in RTE mode a pending event pre-empts any long poll, LP1F included: §4.4).
        let learned = of_machine
            .iter()
            .find(|e| e["kind"] == "machine_info")
            .map(|e| e["machine_seq"].as_u64().unwrap())
            .unwrap_or_else(|| panic!("{id}: no machine_info"));
        for e in &of_machine {
            let amount = match e["kind"].as_str() {
                Some("bet_accepted") => &e["data"]["amount"],
                Some("game_ended") => &e["data"]["win"],
                _ => continue,
            };
            if amount["status"] != "exact" {
                assert!(e["machine_seq"].as_u64().unwrap() < learned, "unpriced after LP1F: {e}");
            }
        }
    }
    assert_sequences_gap_free(&events);
    for m in &machines {
        let id = format!("EGM-{}", m.serial);
        let of = |kind: &str| {
            events
                .iter()
                .filter(|e| e["machine"]["registry_id"] == id.as_str() && e["kind"] == kind)
                .count()
        };
        assert_eq!(of("link_state"), 1, "{id}: online once, never flapping or chirping");
        assert!(of("meter_snapshot") >= 2 && of("machine_info") >= 1, "{id}: discovery");
    }
    assert!(
        !events.iter().any(|e| e["kind"] == "unknown_exception" || e["kind"] == "foreign_chirp")
    );
}

#[test]
fn faults_lose_and_invent_nothing_and_power_cycles_and_ram_clears_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let games_each = 8;
    let each = games_each.to_string();
    // Forty machines on noisy lines: corrupt CRCs, dropped, late and gapped replies, busy.
    let noisy_ledger = dir.path().join("noisy.jsonl");
    let (noisy, mut machines) = simulate(
        40,
        &noisy_ledger,
        &[
            "--rte",
            "--game-rate",
            "30",
            "--game-duration",
            "300ms",
            "--max-games",
            &each,
            "--cashout-probability",
            "0",
            "--seed",
            "7",
            "--serial-prefix",
            "NOI",
            "--fault-crc",
            "0.05",
            "--fault-drop",
            "0.02",
            "--fault-late",
            "0.02",
            "--fault-gap",
            "0.02",
            "--fault-busy",
            "0.02",
        ],
    );
    // Four machines that lose power and have their RAM cleared while they play.
    let power_ledger = dir.path().join("power.jsonl");
    let (power, more) = simulate(
        4,
        &power_ledger,
        &[
            "--rte",
            "--game-rate",
            "30",
            "--game-duration",
            "300ms",
            "--max-games",
            &each,
            "--cashout-probability",
            "0",
            "--seed",
            "11",
            "--serial-prefix",
            "PWR",
            "--power-cycle-rate",
            "600",
            "--power-off-duration",
            "1s",
            "--ram-clear-rate",
            "400",
        ],
    );
    machines.extend(more);
    let config = write_config(dir.path(), &machines);
    let log = dir.path().join("run.log");
    let gateway = run_gateway(&config, &log);
    let events_file = dir.path().join("state/journal");

    // Until every machine has played all its games and the gateway has every report the
    // machines kept.
    let ledger = || {
        let mut records = read_json_lines(&noisy_ledger);
        records.extend(read_json_lines(&power_ledger));
        records
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let records = ledger();
        let played = records.iter().filter(|r| r["type"] == "game").count();
        let expected = machine_reports(&records);
        let got = gateway_reports(&journal_events(&events_file));
        let noisy_done = expected
            .iter()
            .filter(|(serial, _)| serial.starts_with("NOI"))
            .all(|(serial, reports)| got.get(serial) == Some(reports));
        if played == 44 * games_each && noisy_done {
            break;
        }
        if Instant::now() >= deadline {
            let differ: Vec<String> = expected
                .keys()
                .chain(got.keys())
                .filter(|k| expected.get(*k) != got.get(*k))
                .map(|k| {
                    format!("{k}: machine {:?}\n    gateway {:?}", expected.get(k), got.get(k))
                })
                .collect();
            let kept = dir.keep();
            panic!(
                "{played} games played; reports differ (files in {}):\n{}",
                kept.display(),
                differ.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(gateway.terminate().success());
    noisy.terminate();
    power.terminate();

    let events = journal_events(&events_file);
    let records = ledger();
    let (expected, all, got) =
        (machine_reports(&records), all_machine_reports(&records), gateway_reports(&events));
    for (serial, reports) in &expected {
        let reported = got.get(serial).map_or(&[][..], Vec::as_slice);
        if serial.starts_with("NOI") {
            assert_eq!(reported, reports.as_slice(), "{serial}: nothing lost or invented");
        } else {
            // After a power cycle the machine may come back with RTE off and report a game's
            // start or end once without its amount (a `game_phase`, priced from the meters
            // later). Every amount that was reported must be the machine's, once, in order.
            // A report can reach the host and then be wiped by a RAM clear before its ACK, so
            // the reference is everything the machine ever reported.
            let mut rest = all[serial].iter();
            for r in reported {
                assert!(rest.any(|m| m == r), "{serial}: {r:?} invented, repeated or out of order");
            }
        }
    }
    assert_sequences_gap_free(&events);
    // Machines whose queue was never destroyed match the ledger game by game, amounts included.
    let noisy: Vec<Value> = events
        .iter()
        .filter(|e| {
            e["machine"]["registry_id"].as_str().is_some_and(|id| id.starts_with("EGM-NOI"))
        })
        .cloned()
        .collect();
    let (games, _) = event_games(&noisy);
    let ledger_games = ledger_games(&records);
    let mut intact = 0;
    for m in machines.iter().filter(|m| m.serial.starts_with("NOI")) {
        let lost_any = records
            .iter()
            .any(|r| r["type"] == "exception_lost" && r["serial"] == m.serial.as_str());
        if !lost_any {
            assert_eq!(games.get(&m.serial), ledger_games.get(&m.serial), "{}", m.serial);
            intact += 1;
        }
    }
    assert!(intact >= 40, "the noisy machines lost nothing on their side: {intact}");

    // The faults happened, and the gateway retried through them.
    let faults =
        |kind: &str| records.iter().filter(|r| r["type"] == "fault" && r["fault"] == kind).count();
    for kind in ["corrupt_crc", "drop_reply", "late_reply", "inter_byte_gap", "busy"] {
        assert!(faults(kind) > 0, "no {kind} fault was injected");
    }
    let log = std::fs::read_to_string(&log).unwrap();
    let retries: u64 = log
        .lines()
        .filter(|l| l.contains("Line statistics."))
        .filter_map(|l| l.split("retries=").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(retries > 0, "retries are counted in the line statistics");

    // Power cycles and RAM clears reach the state system as events.
    let by_source = |name: &str| events.iter().filter(|e| e["source"]["name"] == name).count();
    assert!(faults("power_cycle") > 0, "the simulator cycled power");
    assert!(
        by_source("AcPowerLost") > 0 && by_source("AcPowerApplied") > 0,
        "power cycle reported"
    );
    assert!(faults("ram_clear") > 0, "the simulator cleared RAM");
    assert!(by_source("MemoryErrorReset") > 0, "RAM clear (3A) reported");
    assert!(events.iter().any(|e| e["kind"] == "meter_reset"), "the meter drop is a reset event");
    // Meters and events agree: on the noisy lines always (faults cost retries, never money), and on
    // the machines that lose power in every window except one holding a RAM clear, which destroys
    // reports the meters had already counted (sas-protocol.md §5, 3A).
    for e in
        events.iter().filter(|e| e["kind"] == "reconciliation" && e["data"]["outcome"] != "matched")
    {
        let noisy =
            e["machine"]["registry_id"].as_str().is_some_and(|id| id.starts_with("EGM-NOI"));
        let reset =
            e["data"]["context"].as_array().is_some_and(|c| c.iter().any(|c| c == "meter_reset"));
        assert!(!noisy && reset, "unexplained reconciliation mismatch: {e}");
    }
}

#[test]
fn the_demo_polls_its_simulated_floor_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let events = state.join("journal");
    let demo = Proc(
        Command::new(BIN)
            .args(["demo", "--machines", "3", "--game-rate", "60", "--state-dir"])
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let demo_dir = std::env::temp_dir().join(format!("slotgate-demo-{}", demo.0.id()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while journal_events(&events).iter().filter(|e| e["kind"] == "game_ended").count() < 3 {
        assert!(Instant::now() < deadline, "the demo reported no games");
        std::thread::sleep(Duration::from_millis(250));
    }
    let config = demo_dir.join("slotgate.toml");
    let status = Command::new(BIN).args(["status", "--config"]).arg(&config).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success() && text.contains("running (pid"), "{text}");
    assert!(text.contains("alarms: none"), "{text}");
    assert!(demo.terminate().success(), "the demo exits cleanly on SIGTERM");
    let events = journal_events(&events);
    assert_sequences_gap_free(&events);
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "bet_accepted" && e["data"]["amount"]["status"] == "exact")
    );
    // The demo signs checkpoints with its own key; the journal verifies against it, and the
    // status file says the daemon stopped.
    let verify = Command::new(BIN).args(["journal", "verify", "--config"]).arg(&config).output();
    let verify = verify.unwrap();
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{report}");
    assert!(report.contains("hash chain: intact") && !report.contains(" 0 verified"), "{report}");
    let status = Command::new(BIN).args(["status", "--config"]).arg(&config).output().unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("stopped at"));
    let _ = std::fs::remove_dir_all(&demo_dir);
}

#[test]
fn a_serial_line_over_a_pseudo_terminal_reports_exactly_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let ledger_path = dir.path().join("ledger.jsonl");
    let (sim, machines) = simulate(
        2,
        &ledger_path,
        &[
            "--pty",
            "--rte",
            "--game-rate",
            "30",
            "--game-duration",
            "300ms",
            "--max-games",
            "5",
            "--cashout-probability",
            "0",
            "--seed",
            "3",
        ],
    );
    let config = write_config(dir.path(), &machines);
    let gateway = run_gateway(&config, &dir.path().join("run.log"));
    let events_file = dir.path().join("state/journal");
    wait_for_games(&events_file, 2 * 5, Duration::from_secs(90));
    assert!(gateway.terminate().success());
    sim.terminate();
    let events = journal_events(&events_file);
    assert_eq!(event_games(&events).0, ledger_games(&read_json_lines(&ledger_path)));
    assert_sequences_gap_free(&events);
}

#[test]
fn an_exception_queue_overflow_is_a_gap_event_followed_by_a_reconciling_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let ledger_path = dir.path().join("ledger.jsonl");
    let (sim, machines) = simulate(
        2,
        &ledger_path,
        &[
            "--rte",
            "--game-rate",
            "20",
            "--game-duration",
            "300ms",
            "--max-games",
            "6",
            "--cashout-probability",
            "0",
            "--seed",
            "5",
            "--overflow-rate",
            "1200",
        ],
    );
    let config = write_config(dir.path(), &machines);
    let gateway = run_gateway(&config, &dir.path().join("run.log"));
    let events_file = dir.path().join("state/journal");
    // Wait until every machine's gap is closed, not just the first: under load one machine's
    // resync snapshot can come seconds after another's.
    let deadline = Instant::now() + Duration::from_secs(90);
    let events = loop {
        let records = read_json_lines(&ledger_path);
        let events = journal_events(&events_file);
        let overflowed =
            records.iter().any(|r| r["type"] == "exception_lost" && r["reason"] == "overflow");
        let played = records.iter().filter(|r| r["type"] == "game").count() == 12;
        let gaps_closed = every_gap_is_closed(&events, &machines);
        if overflowed
            && played
            && gaps_closed.is_ok()
            && gateway_reports(&events) == machine_reports(&records)
        {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "overflow {overflowed}, played {played}, gaps closed {gaps_closed:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(gateway.terminate().success());
    sim.terminate();
    assert!(events.iter().any(|e| e["kind"] == "event_gap"));
    assert_sequences_gap_free(&events);
}

/// Whether, for each machine, the overflow's resync closed the gap: after the first gap that
/// follows its baseline snapshot, an LP1C snapshot and a reconciliation of the gap's window.
/// At least one machine must have had its gap closed this way.
fn every_gap_is_closed(events: &[Value], machines: &[Simulated]) -> Result<(), String> {
    let mut closed = 0;
    for m in machines {
        let id = format!("EGM-{}", m.serial);
        let mine: Vec<&Value> =
            events.iter().filter(|e| e["machine"]["registry_id"] == id.as_str()).collect();
        // A gap before the first snapshot is covered by that baseline; the rule is for the rest.
        let Some(baseline) = mine.iter().position(|e| e["kind"] == "meter_snapshot") else {
            continue;
        };
        let Some(gap) = mine.iter().skip(baseline).position(|e| e["kind"] == "event_gap") else {
            continue;
        };
        // The overflow (70) asks for a resync: an LP1C snapshot follows, and the window that
        // held the gap is reconciled, saying so.
        let after = mine.iter().skip(baseline + gap);
        if !after
            .clone()
            .any(|e| e["kind"] == "meter_snapshot" && e["source"]["name"] == "SendMeters")
        {
            return Err(format!("{id}: no snapshot after the gap"));
        }
        if !after.clone().any(|e| {
            e["kind"] == "reconciliation"
                && e["data"]["context"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c == "event_gap"))
        }) {
            return Err(format!("{id}: the window of the gap is not reconciled"));
        }
        closed += 1;
    }
    if closed == 0 { Err("no machine's gap closed yet".into()) } else { Ok(()) }
}

#[test]
fn a_machine_that_chirps_on_a_line_without_being_configured_is_reported_not_adopted() {
    let dir = tempfile::tempdir().unwrap();
    // The machine answers to address 9; the line is configured for address 1 only.
    let (sim, mut machines) = simulate(
        1,
        &dir.path().join("ledger.jsonl"),
        &["--address", "9", "--game-rate", "0", "--seed", "1"],
    );
    machines[0].address = 1;
    let config = write_config(dir.path(), &machines);
    let gateway = run_gateway(&config, &dir.path().join("run.log"));
    let events_file = dir.path().join("state/journal");
    // The line is listened to once no machine has answered for 20 s.
    let deadline = Instant::now() + Duration::from_secs(45);
    let foreign = loop {
        let events = journal_events(&events_file);
        if let Some(e) = events.iter().find(|e| e["kind"] == "foreign_chirp") {
            break e.clone();
        }
        assert!(Instant::now() < deadline, "no foreign chirp reported");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(gateway.terminate().success());
    sim.terminate();
    assert_eq!(foreign["data"]["address"], 9, "{foreign}");
    let events = journal_events(&events_file);
    assert!(
        !events.iter().any(|e| e["kind"] == "link_state" && e["data"]["state"] == "online"),
        "the configured machine never answered, and the stranger was not adopted"
    );
}

#[test]
fn the_journal_gauges_are_served_as_prometheus_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let ledger_path = dir.path().join("ledger.jsonl");
    let (sim, machines) = simulate(1, &ledger_path, &["--rte", "--game-rate", "60"]);
    let config = write_config(dir.path(), &machines);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[admin]\n",
        &format!("[admin]\nmetrics_listen = \"127.0.0.1:{port}\"\n"),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let gateway = run_gateway(&config, &dir.path().join("gateway.log"));
    let scrape = || -> Option<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).ok()?;
        Some(body)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        // The gauges appear with the first status write, once the journal has records.
        if let Some(body) = scrape().filter(|b| b.contains("slotgate_journal_next_seq")) {
            let next = body
                .lines()
                .find_map(|l| l.strip_prefix("slotgate_journal_next_seq "))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            if next > 0.0 {
                break body;
            }
        }
        assert!(Instant::now() < deadline, "no journal gauges served on port {port}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(gateway.terminate().success());
    sim.terminate();
    assert!(body.contains("slotgate_journal_pressure 0"), "{body}");
    assert!(body.contains("slotgate_journal_cap_bytes 4294967296"), "{body}");
    assert!(body.contains("# HELP slotgate_journal_usage_ratio"), "{body}");
}
