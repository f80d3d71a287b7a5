//! The control plane end to end (issue 13): the real daemon polling the real simulator, asked
//! over its admin socket through the real CLI. The state model against the simulator's ledger,
//! the socket's permissions against another uid, and the human views' layout.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{BIN, read_json_lines, run_gateway, simulate, slotgate, wait_until, write_config};
use serde_json::Value;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `slotgate machines --json` as a list, or nothing while the daemon does not answer.
fn machines(config: &Path) -> Vec<Value> {
    let out = slotgate(&["machines", "--json"], config);
    if !out.status.success() {
        return Vec::new();
    }
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    value["machines"].as_array().cloned().unwrap_or_default()
}

#[test]
fn the_read_model_matches_the_simulators_ledger_for_link_drops_and_counters() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    // Corrupted CRCs and power cycles every few seconds: counters and link drops to compare.
    let (simulator, machines_sim) = simulate(
        2,
        &ledger,
        &["--fault-crc", "0.2", "--power-cycle-rate", "360", "--power-off-duration", "6s"],
    );
    let config = write_config(dir.path(), &machines_sim);
    let log = dir.path().join("gateway.log");
    let gateway = run_gateway(&config, &log);
    wait_until("both machines were online, dropped and came back", Duration::from_secs(90), || {
        let rows = machines(&config);
        rows.len() == 2 && rows.iter().all(|m| m["link_drops"].as_u64() >= Some(2))
    });
    // The simulator stops first, so its ledger is final; the gateway then sees both machines go
    // offline, and its counters stop moving.
    assert!(simulator.terminate().success());
    wait_until("both machines are offline", Duration::from_secs(30), || {
        machines(&config).iter().all(|m| m["link"] == "offline")
    });
    let rows = machines(&config);
    let ledger = read_json_lines(&ledger);
    let journal = common::journal_events(&dir.path().join("state/journal"));
    for (i, sim) in machines_sim.iter().enumerate() {
        let id = format!("EGM-{}", sim.serial);
        let row = rows.iter().find(|m| m["registry_id"] == id.as_str()).unwrap();
        let of_machine = |r: &&Value| r["serial"] == sim.serial.as_str();
        let corrupted = ledger
            .iter()
            .filter(of_machine)
            .filter(|r| r["type"] == "fault" && r["fault"] == "corrupt_crc")
            .count() as u64;
        let power_losses = ledger
            .iter()
            .filter(of_machine)
            .filter(|r| r["type"] == "power" && r["state"] == "lost")
            .count() as u64;
        assert!(corrupted > 0 && power_losses >= 2, "{id}: {corrupted} {power_losses}: no test");
        // Every corrupted reply the gateway received is counted; the last one or two may have
        // been cut off with the connection when the simulator stopped.
        let crc_errors = row["crc_errors"].as_u64().unwrap();
        assert!(crc_errors <= corrupted && crc_errors + 2 >= corrupted, "{id}: {corrupted} {row}");
        // Each drop is an outage the ledger has (a power loss, or the simulator's stop); two
        // power cycles closer than the gateway's offline detection are one outage to it. The
        // journal, the durable record of the same transitions, agrees exactly.
        let drops = row["link_drops"].as_u64().unwrap();
        assert!(drops >= 2 && drops <= power_losses + 1, "{id}: {power_losses} {row}");
        let journalled = journal
            .iter()
            .filter(|e| e["machine"]["registry_id"] == id.as_str() && e["kind"] == "link_state")
            .map(|e| e["data"]["state"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>();
        let journalled_drops =
            journalled.windows(2).filter(|w| w[0] == "online" && w[1] != "online").count() as u64;
        assert_eq!(drops, journalled_drops, "{id}: {journalled:?}");
        assert!(row["polls"].as_u64() > Some(0) && row["timeouts"].as_u64() > Some(0), "{row}");
        assert_eq!(row["line"], format!("line-{i}").as_str(), "{row}");
    }
    // The status file a stopped daemon leaves is the same model, with the final counters.
    let live = machines(&config);
    assert!(gateway.terminate().success(), "{}", std::fs::read_to_string(&log).unwrap());
    let out = slotgate(&["machines", "--json"], &config);
    assert_eq!(out.status.code(), Some(3), "stopped: exit status 3");
    let left: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (before, after) in live.iter().zip(left["machines"].as_array().unwrap()) {
        for counter in ["crc_errors", "link_drops", "next_seq"] {
            assert_eq!(before[counter], after[counter], "{counter}: {before} vs {after}");
        }
    }
}

/// The uid every other user maps to.
const NOBODY: u32 = 65534;

/// `slotgate ARGS --config CONFIG` run as `nobody`.
fn as_nobody(args: &[&str], config: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap()
}

#[test]
fn the_technician_views_and_the_socket_refusing_another_uid() {
    assert!(nix::unistd::geteuid().is_root(), "this test runs the client as another uid");
    let dir = tempfile::tempdir().unwrap();
    // Another user may reach the socket's directory and read the configuration; the socket
    // itself is what must keep it out.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let (_simulator, sims) = simulate(2, &ledger, &["--game-rate", "30", "--game-duration", "1s"]);
    let config = write_config(dir.path(), &sims);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = dir.path().join("gateway.log");
    let gateway = run_gateway(&config, &log);
    wait_until("both machines are online and played", Duration::from_secs(60), || {
        let rows = machines(&config);
        rows.len() == 2
            && rows.iter().all(|m| m["link"] == "online" && m["next_seq"].as_u64() > Some(10))
    });
    let socket = dir.path().join("admin.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660, "{mode:o}");

    // The file mode keeps another user out at connect.
    let out = as_nobody(&["status"], &config);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{out:?}");
    // With the mode opened up, SO_PEERCRED still refuses the uid, and the audit trail has it.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&["machines"], &config);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("403") && err.contains("uid 65534 may not use this socket"), "{err}");
    let audit = std::fs::read_to_string(&log).unwrap();
    assert!(audit.contains("Admin request refused") && audit.contains("uid=65534"), "{audit}");

    // `status`: one screen, each line no wider than 100 columns.
    let out = slotgate(&["status"], &config);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("slotgate: running (pid "), "{text}");
    assert!(text.contains("alarms: none") && text.contains("line line-0: up"), "{text}");
    assert!(text.contains("KiB") || text.contains("MiB"), "readable units: {text}");
    for sim in &sims {
        let row = text.lines().find(|l| l.contains(&format!("EGM-{}", sim.serial))).unwrap();
        assert!(row.contains(&format!("addr {:>3} online", sim.address)), "{row}");
    }
    // `machines`: the table, one row per machine, filtered by line.
    let out = slotgate(&["machines", "--line", "line-1"], &config);
    let text = stdout(&out);
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(rows[0].starts_with("LINE     MACHINE") && rows[0].ends_with("RTE"), "{text}");
    assert!(rows[1].starts_with(&format!("line-1   EGM-{}", sims[1].serial)), "{text}");
    // `machine show`: meters and counters.
    let id = format!("EGM-{}", sims[0].serial);
    let out = slotgate(&["machine", "show", &id], &config);
    let text = stdout(&out);
    assert!(text.starts_with(&format!("machine {id} (line line-0, address 1)")), "{text}");
    assert!(text.contains("  counters      polls ") && text.contains("    coin_in "), "{text}");
    // What LPA0 said at link-up: this simulator validates no tickets and does no AFT.
    assert!(text.contains("  features      LPA0 "), "{text}");
    assert!(text.contains("validation none, ticket redemption no, AFT no"), "{text}");
    assert!(text.contains("polls queued ") && text.contains(", exceptions pending "), "{text}");
    let out = slotgate(&["machine", "show", "EGM-NOPE"], &config);
    assert_eq!(out.status.code(), Some(4), "an unknown machine");
    for args in [&["status"][..], &["machines"], &["machine", "show", &id]] {
        for line in stdout(&slotgate(args, &config)).lines() {
            assert!(line.chars().count() <= 100, "{args:?}: {line}");
        }
    }

    // `tail`: what is journalled from now on, filtered by machine and kind, in JSON.
    let mut tail = common::Proc(
        Command::new(BIN)
            .args(["tail", "--json", "--kind", "game_ended", "--machine", &id, "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = std::io::BufRead::lines(std::io::BufReader::new(tail.0.stdout.take().unwrap()));
    let mut seen = Vec::new();
    for line in lines.take(2) {
        let record: Value = serde_json::from_str(&line.unwrap()).unwrap();
        assert_eq!(record["event"]["kind"], "game_ended", "{record}");
        assert_eq!(record["machine"], id.as_str(), "{record}");
        seen.push(record["seq"].as_u64().unwrap());
    }
    assert!(seen[0] < seen[1], "in journal order: {seen:?}");
    drop(tail);
    // A human tail from a sequence number: one line per record, the oldest first.
    let mut tail = common::Proc(
        Command::new(BIN)
            .args(["tail", "--since", "0", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = std::io::BufRead::lines(std::io::BufReader::new(tail.0.stdout.take().unwrap()));
    let first: Vec<String> = lines.take(3).map(Result::unwrap).collect();
    assert!(first[0].trim_start().starts_with("0 "), "{first:?}");
    assert!(first.iter().all(|l| l.chars().count() <= 100), "{first:?}");
    drop(tail);

    assert!(gateway.terminate().success(), "{}", std::fs::read_to_string(&log).unwrap());
    assert!(!socket.exists(), "the socket is removed at stop");
    let out = slotgate(&["status"], &config);
    assert_eq!(out.status.code(), Some(3), "stopped");
    assert!(stdout(&out).starts_with("slotgate: stopped at "), "{}", stdout(&out));
}

/// `METHOD PATH` on the daemon's admin socket, as the CLI sends it: the answer, or the refusal.
fn ask(socket: &Path, method: &str, path: &str) -> Result<Value, String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let method = hyper::Method::from_bytes(method.as_bytes()).unwrap();
    runtime
        .block_on(slotgate::admin::client::request(socket, method, path))
        .map_err(|e| e.to_string())
}

#[test]
fn commands_reach_the_line_between_exchanges_and_only_reads_are_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let (_simulator, sims) = simulate(1, &ledger, &[]);
    let config = write_config(dir.path(), &sims);
    let log = dir.path().join("gateway.log");
    let gateway = run_gateway(&config, &log);
    let socket = dir.path().join("admin.sock");
    let id = format!("EGM-{}", sims[0].serial);
    let machine = |socket: &Path| ask(socket, "GET", &format!("/v1/machines/{id}"));
    wait_until("the machine is online with its first meters", Duration::from_secs(60), || {
        machine(&socket).is_ok_and(|m| m["link"] == "online" && m["meters_at"].is_string())
    });
    let snapshots = |kind: &str| {
        common::journal_events(&dir.path().join("state/journal"))
            .iter()
            .filter(|e| e["kind"] == kind)
            .count()
    };

    // A meter snapshot on request: one more meter_snapshot event, long before the 10 s period.
    let before = snapshots("meter_snapshot");
    let asked = ask(&socket, "POST", &format!("/v1/machines/{id}/meter-snapshot")).unwrap();
    assert_eq!(asked["queued"], true, "{asked}");
    wait_until("the requested snapshot is journalled", Duration::from_secs(5), || {
        snapshots("meter_snapshot") > before
    });
    // One read from the allowed set; nothing that changes the machine.
    ask(&socket, "POST", &format!("/v1/machines/{id}/long-poll?poll=54")).unwrap();
    for refused in ["01", "02", "0E", "7F", "71", "zz"] {
        let error = ask(&socket, "POST", &format!("/v1/machines/{id}/long-poll?poll={refused}"));
        assert!(error.as_ref().is_err_and(|e| e.contains("400")), "{refused}: {error:?}");
    }
    let error = ask(&socket, "POST", "/v1/machines/EGM-NOPE/meter-snapshot").unwrap_err();
    assert!(error.contains("404"), "{error}");
    let error = ask(&socket, "GET", "/v2/status").unwrap_err();
    assert!(error.contains("this is v1"), "{error}");

    // Released to a probe: the line closes, its machine is offline, and the port is free; a
    // second release is refused; resume brings the machine back.
    let released = ask(&socket, "POST", "/v1/lines/line-0/release?seconds=30").unwrap();
    assert!(released["released_until"].is_string(), "{released}");
    wait_until("the line is released and the machine offline", Duration::from_secs(10), || {
        ask(&socket, "GET", "/v1/status").is_ok_and(|s| {
            s["lines"][0]["state"] == "released"
                && s["lines"][0]["machines"][0]["link"] == "offline"
        })
    });
    let error = ask(&socket, "POST", "/v1/lines/line-0/release").unwrap_err();
    assert!(error.contains("409"), "{error}");
    let polls = machine(&socket).unwrap()["polls"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(machine(&socket).unwrap()["polls"].as_u64(), Some(polls), "nothing sent meanwhile");
    ask(&socket, "POST", "/v1/lines/line-0/resume").unwrap();
    wait_until("the machine is back online", Duration::from_secs(15), || {
        machine(&socket).is_ok_and(|m| m["link"] == "online")
    });
    let error = ask(&socket, "POST", "/v1/lines/line-0/resume").unwrap_err();
    assert!(error.contains("409"), "{error}");
    assert!(gateway.terminate().success(), "{}", std::fs::read_to_string(&log).unwrap());
    let audit = std::fs::read_to_string(&log).unwrap();
    assert!(audit.contains("Admin command.") && audit.contains("uid=0"), "{audit}");
}
