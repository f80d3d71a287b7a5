//! `slotgate run` as a `Type=notify` service: the real binary, a real `NOTIFY_SOCKET` datagram
//! socket bound by the test (as systemd's), simulated machines under load. READY=1 comes once
//! the lines run, WATCHDOG=1 keeps coming while every part progresses and stops when a line
//! poller does not, STOPPING=1 comes at SIGTERM and the drain loses nothing the machines were
//! told was safe. SIGHUP reloads the configuration (RELOADING=1, then READY=1): a line removed and
//! one added while the others poll on, the change journalled; an invalid file changes nothing.

// clippy.toml allows unwrap in #[test] functions only; the helpers of this test crate need it too.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Every datagram the service sent, with when it arrived.
#[derive(Clone, Default)]
struct Notifications(Arc<Mutex<Vec<(Instant, String)>>>);

impl Notifications {
    /// Binds `path` and records what arrives until the socket's file is removed.
    fn listen(path: &Path) -> Self {
        let socket = UnixDatagram::bind(path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let seen = Self::default();
        let sink = seen.clone();
        let path = path.to_owned();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while path.exists() {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    sink.0.lock().unwrap().push((Instant::now(), text));
                }
            }
        });
        seen
    }

    /// The lines of every datagram so far, in order.
    fn lines(&self) -> Vec<(Instant, String)> {
        let seen = self.0.lock().unwrap();
        seen.iter().flat_map(|(at, d)| d.lines().map(|l| (*at, l.to_owned()))).collect()
    }

    fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|(_, l)| l == line).count()
    }

    /// Waits until `line` has arrived `n` times.
    fn wait_for(&self, line: &str, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.count(line) < n {
            assert!(
                Instant::now() < deadline,
                "{line} x{n} not received in {limit:?}; got {:?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `slotgate run` on `config` as systemd starts it: NOTIFY_SOCKET and WATCHDOG_USEC (without
/// WATCHDOG_PID, which systemd sets to the main pid and sd_watchdog_enabled(3) may go without).
fn run_notified(config: &Path, socket: &Path, watchdog: Duration, log: &Path) -> Proc {
    let usec = watchdog.as_micros().to_string();
    run_gateway_with(
        config,
        log,
        &[("NOTIFY_SOCKET", socket.as_os_str()), ("WATCHDOG_USEC", usec.as_ref())],
    )
}

/// `machines` simulated machines over TCP playing fast (10 games a minute each, no cash-out).
fn busy_hall(machines: u16, ledger: &Path, seed: u16) -> (Proc, Vec<Simulated>) {
    let seed = seed.to_string();
    simulate(
        machines,
        ledger,
        &[
            "--rte",
            "--game-rate",
            "600",
            "--game-duration",
            "50ms",
            "--cashout-probability",
            "0",
            "--seed",
            &seed,
        ],
    )
}

/// Ledger against journal (under `dir`) once the gateway has stopped: the play reports each
/// machine dropped as acknowledged are exactly the start of what was journalled for it, with at
/// most the one report journalled before the stop and never acknowledged after them (the
/// machine repeats it to the next run, which recognises it), in the machine's order (except for
/// `unordered`, a machine whose queue may have overflowed), and sequences have no gap.
fn assert_nothing_acknowledged_lost(
    dir: &Path,
    ledger: &Path,
    machines: &[Simulated],
    log: &Path,
    unordered: Option<&str>,
) {
    let events = journal_events(&dir.join("state/journal"));
    assert_sequences_gap_free(&events);
    let got = gateway_reports(&events);
    let (acked, all) = ledger_reports(&read_json_lines(ledger));
    assert_eq!(acked.len(), machines.len(), "every machine played");
    for (serial, acked) in &acked {
        let journalled = got.get(serial).map_or(&[][..], Vec::as_slice);
        assert!(
            journalled.starts_with(acked) && journalled.len() <= acked.len() + 1,
            "machine {serial}: {} acknowledged, {} journalled; log: {}",
            acked.len(),
            journalled.len(),
            log.display()
        );
        if unordered != Some(serial.as_str()) {
            assert!(
                all[serial].starts_with(journalled),
                "machine {serial}: not in the machine's order"
            );
        }
    }
}

#[test]
fn ready_status_watchdog_and_stopping_reach_the_notify_socket_and_sigterm_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ledger_path = dir.path().join("ledger.jsonl");
    let (sim, machines) = busy_hall(6, &ledger_path, 11);
    let config = write_config(dir.path(), &machines);
    let socket = dir.path().join("notify.sock");
    let notes = Notifications::listen(&socket);
    let log = dir.path().join("gateway.log");
    let gateway = run_notified(&config, &socket, Duration::from_secs(1), &log);

    notes.wait_for("READY=1", 1, Duration::from_secs(20));
    // Pings every quarter of the period while everything moves.
    notes.wait_for("WATCHDOG=1", 8, Duration::from_secs(10));
    let status: Vec<String> = notes
        .lines()
        .into_iter()
        .filter_map(|(_, l)| l.strip_prefix("STATUS=").map(str::to_owned))
        .collect();
    assert!(status.iter().any(|s| s.starts_with("Polling 6 line(s), 6 machine(s).")), "{status:?}");
    assert!(
        status.iter().any(|s| s.starts_with("Lines up 6/6; destinations up 0/0;")),
        "{status:?}"
    );
    assert!(!status.iter().any(|s| s.contains("STUCK")), "{status:?}");

    // Under load: games are being reported as the stop comes.
    let events = journal_events(&dir.path().join("state/journal"));
    assert!(events.iter().any(|e| e["kind"] == "game_ended"), "no play before the stop");
    assert!(gateway.terminate().success(), "slotgate run exits cleanly on SIGTERM");
    sim.terminate();
    let lines = notes.lines();
    let ready = lines.iter().position(|(_, l)| l == "READY=1").unwrap();
    let stopping = lines.iter().position(|(_, l)| l == "STOPPING=1");
    assert!(stopping.is_some_and(|s| s > ready), "no STOPPING=1 after READY=1: {lines:?}");
    std::fs::remove_file(&socket).unwrap();

    // Nothing a machine dropped as acknowledged is missing, nothing is there twice.
    assert_nothing_acknowledged_lost(dir.path(), &ledger_path, &machines, &log, None);
}

/// The `config_changed` records of the journal at `dir`, as their JSON message, and the whole
/// export's text (to look for secrets in).
fn config_changes(dir: &Path) -> (Vec<serde_json::Value>, String) {
    let out = std::process::Command::new(BIN)
        .args(["journal", "export", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let records = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["alarm"]["alarm"] == "config_changed")
        .map(|r| serde_json::from_str(r["alarm"]["message"].as_str().unwrap()).unwrap())
        .collect();
    (records, text)
}

fn hangup(gateway: &Proc) {
    let pid = nix::unistd::Pid::from_raw(gateway.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
}

#[test]
fn sighup_removes_a_line_and_adds_one_without_losing_an_event_of_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let ledger_path = dir.path().join("ledger.jsonl");
    let (sim, machines) = busy_hall(3, &ledger_path, 12);
    let journal = dir.path().join("state/journal");
    // A destination nobody listens at (it stays down): its secret must never reach the journal.
    let token = dir.path().join("central.token");
    std::fs::write(&token, "s3cret-token-42\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let destination = |name: &str, port: u16| {
        format!(
            "\n[[destination]]\nname = \"{name}\"\nkind = \"https\"\n\
             url = \"https://127.0.0.1:{port}/events\"\ntoken_file = \"{}\"\n",
            token.display()
        )
    };
    // Machines 0 and 1 at the start (lines line-0 and line-1).
    let config = write_config(dir.path(), &machines[..2]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&destination("central", 9));
    std::fs::write(&config, &text).unwrap();
    let socket = dir.path().join("notify.sock");
    let notes = Notifications::listen(&socket);
    let log = dir.path().join("gateway.log");
    let mut gateway = run_notified(&config, &socket, Duration::from_secs(1), &log);
    notes.wait_for("READY=1", 1, Duration::from_secs(20));
    wait_for_games(&journal, 10, Duration::from_secs(30));

    // The reload: line-1 (machine 1) goes, line-2 (machine 2) comes, central's URL changes (its
    // forwarder is restarted) and a destination is added, which takes a restart.
    write_config(dir.path(), &[machines[0].clone(), machines[2].clone()]);
    let mut text = std::fs::read_to_string(&config).unwrap().replace("line-1", "line-2");
    text.push_str(&destination("central", 10));
    text.push_str(&destination("backup", 11));
    std::fs::write(&config, &text).unwrap();
    let new_sha256: String = {
        use sha2::Digest;
        sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    };
    hangup(&gateway);
    notes.wait_for("RELOADING=1", 1, Duration::from_secs(10));
    notes.wait_for("READY=1", 2, Duration::from_secs(20));
    let added = format!("EGM-{}", machines[2].serial);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !journal_events(&journal)
        .iter()
        .any(|e| e["machine"]["registry_id"] == added.as_str() && e["kind"] == "game_ended")
    {
        assert!(
            Instant::now() < deadline,
            "the added machine reported no game; log: {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let lines = notes.lines();
    let reloading = lines.iter().position(|(_, l)| l == "RELOADING=1").unwrap();
    assert!(
        lines.get(reloading + 1).is_some_and(|(_, l)| l.starts_with("MONOTONIC_USEC=")),
        "RELOADING=1 without MONOTONIC_USEC: {lines:?}"
    );

    // An invalid file changes nothing: the daemon runs on with the lines it had.
    std::fs::write(&config, "[venue]\nid = \"UA-TEST-1\"\n").unwrap();
    hangup(&gateway);
    notes.wait_for("RELOADING=1", 2, Duration::from_secs(10));
    notes.wait_for("READY=1", 3, Duration::from_secs(20));
    let games_of = |events: &[serde_json::Value], id: &str| {
        events
            .iter()
            .filter(|e| e["machine"]["registry_id"] == id && e["kind"] == "game_ended")
            .count()
    };
    let before = games_of(&journal_events(&journal), &added);
    let deadline = Instant::now() + Duration::from_secs(30);
    while games_of(&journal_events(&journal), &added) <= before {
        assert!(Instant::now() < deadline, "polling stopped after an invalid reload");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(gateway.0.try_wait().unwrap().is_none(), "the daemon ended on an invalid reload");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("Reload refused"), "{logged}");
    assert!(logged.contains("slotgate.toml"), "the refusal names the file: {logged}");

    assert!(gateway.terminate().success(), "slotgate run exits cleanly on SIGTERM");
    sim.terminate();
    std::fs::remove_file(&socket).unwrap();

    // One change journalled, with the diff, the new file's hash and no secret.
    let (changes, export) = config_changes(&journal);
    assert_eq!(changes.len(), 1, "{changes:?}");
    let change = &changes[0];
    assert_eq!(change["config_sha256"], new_sha256.as_str());
    let listed: Vec<&str> =
        change["changes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert!(listed.contains(&"line[line-1]: removed"), "{listed:?}");
    assert!(listed.iter().any(|c| c.starts_with("line[line-2]: added = ")), "{listed:?}");
    assert!(
        listed.contains(&"destination[central].url: \"https://127.0.0.1:9/events\" -> \"https://127.0.0.1:10/events\""),
        "{listed:?}"
    );
    assert_eq!(change["needs_restart"], serde_json::json!(["destination[backup]"]));
    assert!(!export.contains("s3cret-token-42"), "the token reached the journal");
    // The untouched line was never restarted.
    let logged = std::fs::read_to_string(&log).unwrap();
    let started = |line: &str| {
        logged.lines().filter(|l| l.contains("Line poller started.") && l.contains(line)).count()
    };
    assert_eq!((started("line=line-0"), started("line=line-1"), started("line=line-2")), (1, 1, 1));
    let restarted = logged
        .lines()
        .filter(|l| l.contains("Forwarder restarted by the reload.") && l.contains("central"))
        .count();
    assert_eq!(restarted, 1, "{logged}");

    // Nothing a machine dropped as acknowledged is missing, nothing is there twice: not for
    // the untouched machine, nor for the one stopped and the one started by the reload (which
    // played unpolled until then: its queue may have overflowed).
    let added = Some(machines[2].serial.as_str());
    assert_nothing_acknowledged_lost(dir.path(), &ledger_path, &machines, &log, added);
}
