//! `slotgate run` as a `Type=notify` service: the real binary, a real `NOTIFY_SOCKET` datagram
//! socket bound by the test (as systemd's), simulated machines under load. READY=1 comes once
//! the lines run, WATCHDOG=1 keeps coming while every part progresses and stops when a line
//! poller does not, STOPPING=1 comes at SIGTERM and the drain loses nothing the machines were
//! told was safe.

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

#[test]
fn ready_status_watchdog_and_stopping_reach_the_notify_socket_and_sigterm_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ledger_path = dir.path().join("ledger.jsonl");
    let (sim, machines) = simulate(
        6,
        &ledger_path,
        &[
            "--rte",
            "--game-rate",
            "600",
            "--game-duration",
            "50ms",
            "--cashout-probability",
            "0",
            "--seed",
            "11",
        ],
    );
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
    let events = journal_events(&dir.path().join("state/journal"));
    assert_sequences_gap_free(&events);
    let got = gateway_reports(&events);
    let (acked, all) = ledger_reports(&read_json_lines(&ledger_path));
    assert_eq!(acked.len(), machines.len(), "every machine played");
    for (serial, acked) in &acked {
        let journalled = got.get(serial).map_or(&[][..], Vec::as_slice);
        // Acknowledged reports are exactly the start of what was journalled; at most the one
        // report journalled before the stop, never acknowledged, follows (the machine repeats it
        // to the next run, which recognises it).
        assert!(
            journalled.starts_with(acked) && journalled.len() <= acked.len() + 1,
            "machine {serial}: {} acknowledged, {} journalled; log: {}",
            acked.len(),
            journalled.len(),
            log.display()
        );
        assert!(
            all[serial].starts_with(journalled),
            "machine {serial}: not in the machine's order"
        );
    }
}
