//! `slotgate probe` end to end (issue 13): the real binary against the real simulator, on a
//! pseudo-terminal and over TCP, with the daemon stopped and with it running on the line.

// Real processes and peers in real time (tests/common): std clocks and sleeps are theirs.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, read_json_lines, run_gateway, simulate, wait_until, write_config};
use serde_json::Value;

struct Probed {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn spawn_probe(config: &Path, args: &[&str]) -> Child {
    Command::new(BIN)
        .arg("probe")
        .args(args)
        .arg("--config")
        .arg(config)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a probe to end by itself, within a bound.
fn finish(mut child: Child) -> Probed {
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the probe did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    Probed { status, stdout, stderr }
}

fn probe(config: &Path, args: &[&str]) -> Probed {
    finish(spawn_probe(config, args))
}

fn probe_json(config: &Path, args: &[&str]) -> (Probed, Value) {
    let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
    let probed = probe(config, &args);
    let value = serde_json::from_str(&probed.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", probed.stdout, probed.stderr));
    (probed, value)
}

/// The human report's line with this label, checked to fit 100 columns with all the others.
fn line<'a>(text: &'a str, label: &str) -> &'a str {
    for l in text.lines() {
        assert!(l.chars().count() <= 100, "wider than 100 columns: {l}");
    }
    text.lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{text}"))
}

/// The one machine's row of `slotgate machines --json`, while the daemon answers.
fn machine_row(config: &Path) -> Option<Value> {
    let out =
        Command::new(BIN).args(["machines", "--json", "--config"]).arg(config).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let value: Value = serde_json::from_slice(&out.stdout).ok()?;
    value["machines"].get(0).cloned()
}

#[test]
fn over_tcp_with_the_daemon_stopped_the_machine_is_read_and_its_queued_report_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let (simulator, machines) =
        simulate(1, &ledger, &["--game-rate", "600", "--game-duration", "1s"]);
    let config = write_config(dir.path(), &machines);
    wait_until("the machine has queued a report", Duration::from_secs(20), || {
        read_json_lines(&ledger).iter().any(|r| r["type"] == "exception")
    });

    let human = probe(&config, &["--line", "line-0", "--address", "1"]);
    assert_eq!(human.status.code(), Some(0), "{}{}", human.stdout, human.stderr);
    let text = &human.stdout;
    assert_eq!(line(text, "probe "), "probe         line line-0, address 1 (daemon not running)");
    assert_eq!(
        line(text, "9th bit "),
        "9th bit       9-bit framing (flag byte per character); chirps visible"
    );
    assert_eq!(line(text, "LP 54 "), "LP 54         SAS 6.02, serial SIM000000");
    assert!(line(text, "LP 1F ").starts_with("LP 1F         game ID SG, "), "{text}");
    assert!(line(text, "LP 1C ").starts_with("LP 1C         coin in "), "{text}");
    assert!(line(text, "queued ").ends_with(": left unacknowledged for the daemon"), "{text}");
    assert!(line(text, "reply time ").starts_with("reply time    min "), "{text}");
    assert_eq!(
        line(text, "verdict:"),
        "verdict: machine at address 1 answers: SAS 6.02, game ID SG, 0 CRC errors; events left \
         queued"
    );

    let (json, report) = probe_json(&config, &["--line", "line-0", "--address", "1"]);
    assert_eq!(json.status.code(), Some(0));
    assert_eq!(report["daemon"], "not_running");
    assert_eq!(report["transport"], format!("tcp {}", machines[0].endpoint).as_str());
    assert_eq!(report["wakeup"]["sees_chirps"], true);
    assert_eq!(report["verdict"]["outcome"], "answers");
    assert_eq!(report["findings"]["version"]["serial"], "SIM000000");
    assert_eq!(report["findings"]["game"]["game_id"], "SG");
    assert!(report["findings"]["report_left_queued"].is_string(), "{report}");
    assert_eq!(report["findings"]["counters"]["crc_errors"], 0);
    assert!(report["findings"]["reply_ms"]["samples"].as_u64() >= Some(3), "{report}");

    // Nothing the machine reported was acknowledged: it still holds every exception for the
    // daemon (the ledger records each implied ACK).
    assert!(simulator.terminate().success());
    let ledger = read_json_lines(&ledger);
    assert!(ledger.iter().filter(|r| r["type"] == "exception").count() >= 1);
    let acknowledged: Vec<&Value> =
        ledger.iter().filter(|r| r["type"] == "exception_acknowledged").collect();
    assert!(acknowledged.is_empty(), "the probe acknowledged {acknowledged:?}");
}

#[test]
fn on_a_pty_with_the_daemon_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let (simulator, machines) = simulate(1, &ledger, &["--pty", "--game-rate", "0"]);
    let config = write_config(dir.path(), &machines);

    let human = probe(&config, &["--line", "line-0", "--address", "1"]);
    assert_eq!(human.status.code(), Some(0), "{}{}", human.stdout, human.stderr);
    let text = &human.stdout;
    assert_eq!(line(text, "transport "), format!("transport     serial {}", machines[0].endpoint));
    assert_eq!(
        line(text, "9th bit "),
        "9th bit       none (8-bit line, messages framed by timing); chirps invisible"
    );
    assert_eq!(line(text, "general poll "), "general poll  3 sent, 3 answered (last: NoActivity)");
    assert_eq!(
        line(text, "verdict:"),
        "verdict: machine at address 1 answers: SAS 6.02, game ID SG, 0 CRC errors"
    );

    let (_, report) = probe_json(&config, &["--line", "line-0", "--address", "1", "--polls", "5"]);
    assert_eq!(report["wakeup"]["sees_chirps"], false);
    assert_eq!(report["findings"]["general_polls"]["answered"], 5);
    assert_eq!(report["findings"]["counters"]["no_answers"], 0);
    assert_eq!(report["verdict"]["outcome"], "answers");
    assert!(simulator.terminate().success());
}

#[test]
fn a_wrong_address_gets_no_answer_and_the_line_names_the_chirping_machine() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let (simulator, machines) = simulate(1, &ledger, &["--address", "3", "--game-rate", "0"]);
    let config = write_config(dir.path(), &machines);

    let human = probe(&config, &["--line", "line-0", "--address", "1"]);
    assert_eq!(human.status.code(), Some(6), "{}{}", human.stdout, human.stderr);
    let text = &human.stdout;
    assert_eq!(line(text, "general poll "), "general poll  3 sent, 0 answered");
    assert_eq!(line(text, "LP 54 "), "LP 54         no answer");
    assert_eq!(
        line(text, "verdict:"),
        "verdict: no answer at address 1: check cable and address; the line carries chirps \
         from address 3"
    );
    let (json, report) = probe_json(&config, &["--line", "line-0", "--address", "1"]);
    assert_eq!(json.status.code(), Some(6));
    assert_eq!(report["verdict"]["outcome"], "no_answer");
    assert_eq!(report["findings"]["chirps_from"], serde_json::json!([3]));

    let unknown = probe(&config, &["--line", "line-9", "--address", "1"]);
    assert_eq!(unknown.status.code(), Some(4));
    assert!(
        unknown.stderr.contains("has no line \"line-9\" (lines: line-0)"),
        "{}",
        unknown.stderr
    );
    assert!(simulator.terminate().success());
}

fn polls(config: &Path) -> Option<u64> {
    machine_row(config).and_then(|m| m["polls"].as_u64())
}

fn online(config: &Path) -> bool {
    machine_row(config).is_some_and(|m| m["link"] == "online")
}

/// A daemon polling the simulator on `transport` (`--pty`, or `--tcp` by default).
fn daemon_on(dir: &Path, transport: &[&str]) -> (common::Proc, common::Proc, std::path::PathBuf) {
    let ledger = dir.join("ledger.jsonl");
    let args: Vec<&str> = transport.iter().copied().chain(["--game-rate", "0"]).collect();
    let (simulator, machines) = simulate(1, &ledger, &args);
    let config = write_config(dir, &machines);
    let gateway = run_gateway(&config, &dir.join("gateway.log"));
    wait_until("the machine is online", Duration::from_secs(30), || online(&config));
    (simulator, gateway, config)
}

/// Probes address 1 of the daemon's line and checks that the line was released for it and is
/// polled again after.
fn probe_released_line(dir: &Path, config: &Path) {
    let (probed, report) = probe_json(config, &["--line", "line-0", "--address", "1"]);
    assert_eq!(probed.status.code(), Some(0), "{}{}", probed.stdout, probed.stderr);
    assert_eq!(report["daemon"], "released");
    assert_eq!(report["verdict"]["outcome"], "answers", "{report}");
    assert_eq!(report["findings"]["version"]["serial"], "SIM000000");
    assert_eq!(report["findings"]["counters"]["crc_errors"], 0);
    let gateway_log = std::fs::read_to_string(dir.join("gateway.log")).unwrap();
    assert!(gateway_log.contains("Line released to a probe"), "{gateway_log}");
    // Given back: the daemon polls the machine again (long before the release would expire).
    let after = polls(config).unwrap();
    wait_until("the machine is polled again", Duration::from_secs(15), || {
        online(config) && polls(config) > Some(after + 5)
    });
}

#[test]
fn on_a_pty_with_the_daemon_running_the_line_is_released_to_the_probe_and_polled_again_after() {
    let dir = tempfile::tempdir().unwrap();
    let (simulator, gateway, config) = daemon_on(dir.path(), &["--pty"]);
    probe_released_line(dir.path(), &config);
    assert!(gateway.terminate().success());
    assert!(simulator.terminate().success());
}

#[test]
fn over_tcp_with_the_daemon_running_the_line_is_released_and_given_back_also_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let (simulator, gateway, config) = daemon_on(dir.path(), &[]);
    probe_released_line(dir.path(), &config);

    // Ctrl-C in the middle of a probe (nothing answers at address 9, so it listens for chirps)
    // gives the line back at once, not when the release expires.
    let child = spawn_probe(&config, &["--line", "line-0", "--address", "9"]);
    wait_until("the line is released again", Duration::from_secs(15), || {
        machine_row(&config).is_some_and(|m| m["link"] != "online")
    });
    // A second probe meanwhile is refused by the daemon and opens nothing.
    let second = probe(&config, &["--line", "line-0", "--address", "1"]);
    assert_eq!(second.status.code(), Some(1), "{}{}", second.stdout, second.stderr);
    assert!(
        second.stderr.contains("the daemon did not release line line-0")
            && second.stderr.contains("line line-0 is released already"),
        "{}",
        second.stderr
    );
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let interrupted = finish(child);
    assert_eq!(interrupted.status.code(), Some(1), "{}", interrupted.stderr);
    assert!(
        interrupted.stderr.contains("interrupted; line line-0 given back to the daemon"),
        "{}",
        interrupted.stderr
    );
    let after = polls(&config).unwrap();
    wait_until("the machine is polled again", Duration::from_secs(15), || {
        online(&config) && polls(&config) > Some(after + 5)
    });
    assert!(gateway.terminate().success());
    assert!(simulator.terminate().success());
}
