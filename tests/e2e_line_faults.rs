//! The real `slotgate run` against lines that misbehave below SAS: a TCP peer that floods bytes
//! without pause must neither keep the line task from stopping nor go uncounted.

// clippy.toml allows unwrap in #[test] functions only; the helpers of this test crate need it too.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// A peer on `127.0.0.1:0` that writes framed zero characters (flag 0, data 0) to everyone who
/// connects, as fast as the socket takes them, until the connection breaks. Returns its address
/// and how many general polls to address 1 (`*81`) it has received while flooding.
fn flooder() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let polls = Arc::new(AtomicU64::new(0));
    let counter = polls.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut incoming = stream.try_clone().unwrap();
            let counter = counter.clone();
            std::thread::spawn(move || {
                let chunk = [0u8; 64 * 1024];
                while stream.write_all(&chunk).is_ok() {}
            });
            std::thread::spawn(move || {
                // Flag byte and data byte per character (firmware-protocols/README.md).
                let mut pair = [0u8; 2];
                while incoming.read_exact(&mut pair).is_ok() {
                    if pair == [1, 0x81] {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    (address, polls)
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The value of `key=N` on the first log line that contains `message`.
fn logged_number(log: &str, message: &str, key: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains(message))?;
    let rest = line.split(&format!("{key}=")).nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// On main the poller's `clear_input` read until the socket had nothing buffered, which a flood
/// never allows: the line task spun in it without yielding, SIGTERM could not stop it within the
/// drain deadline, and the process did not exit.
#[test]
fn a_flooding_peer_does_not_keep_the_line_from_stopping_and_its_bytes_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (address, polls) = flooder();
    let machine = Simulated { address: 1, serial: "FLOOD".into(), endpoint: address, pty: false };
    let config = write_config(dir.path(), &[machine]);
    let log = dir.path().join("gateway.log");
    let gateway = run_gateway(&config, &log);

    wait_until("the line connects", Duration::from_secs(20), || {
        log_text(&log).contains("Line connected.")
    });
    // The flood starts on accept; a general poll is sent after the input was cleared, into a
    // line that had the flood waiting. Two of them: the poller goes on polling into the flood.
    wait_until("general polls go out into the flood", Duration::from_secs(20), || {
        polls.load(Ordering::Relaxed) >= 2
    });
    let stopping = Instant::now();
    // `terminate` fails the test (and the drop kills the process) if it has not exited in 20 s.
    let status = gateway.terminate();
    let took = stopping.elapsed();

    let log = log_text(&log);
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    assert!(!log.contains("did not stop within the drain deadline"), "took {took:?}; log:\n{log}");
    assert!(log.contains("Line poller stopped."), "log:\n{log}");
    let discarded = logged_number(&log, "Line statistics.", "discarded_bytes");
    assert!(discarded.is_some_and(|n| n > 0), "discarded {discarded:?}; log:\n{log}");
}

/// What `slotgate status` prints for `config`.
fn status_text(config: &Path) -> String {
    let out =
        std::process::Command::new(BIN).args(["status", "--config"]).arg(config).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// On main a line whose connection was refused ran its sessions into the void: `status` said
/// nothing about lines, the log said "No machine answers; listening for chirps", and the
/// statistics counted a timeout for every poll that never left the gateway.
#[test]
fn a_line_that_cannot_connect_is_reported_down_with_the_reason_and_polls_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A port that was just free: nothing listens there, so every connection is refused.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let machine =
        Simulated { address: 1, serial: "DOWN".into(), endpoint: closed.clone(), pty: false };
    let config = write_config(dir.path(), &[machine]);
    let log = dir.path().join("gateway.log");
    let gateway = run_gateway(&config, &log);

    let mut status = String::new();
    wait_until("status shows the line down", Duration::from_secs(20), || {
        status = status_text(&config);
        status.contains("line line-0: DOWN")
    });
    let line = status.lines().find(|l| l.starts_with("line line-0:")).unwrap();
    assert!(line.contains(&closed) && line.contains("refused"), "{status}");
    assert!(line.contains("(retrying every "), "{status}");
    // Long enough for a general poll's three tries to time out several times over, had any
    // been sent: the reply window is tens of milliseconds.
    wait_until("a few connection attempts", Duration::from_secs(20), || {
        log_text(&log).matches("Line down: it cannot be opened").count() >= 3
    });
    assert!(gateway.terminate().success());

    let log = log_text(&log);
    assert!(!log.contains("listening for chirps"), "log:\n{log}");
    let machine_stats = log
        .lines()
        .find(|l| l.contains("Line statistics.") && l.contains("machine="))
        .unwrap_or_else(|| panic!("no machine statistics; log:\n{log}"));
    assert!(machine_stats.contains(" tries=0 "), "{machine_stats}");
    assert!(machine_stats.contains(" timeouts=0 "), "{machine_stats}");
}
