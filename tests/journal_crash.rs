//! Acknowledged means durable: a child process appends, prints every seq the journal
//! acknowledged, and aborts at a random moment; every printed seq must survive, after the abort
//! alone (the page cache survives) and after a power cut that follows it (only what was synced
//! survives: the journal runs on the FUSE file system of `tests/powercut`).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod journal_support;
mod powercut;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use journal_support::*;
use slotgate::journal::{Class, JournalConfig};

const CHILD_ENV: &str = "SLOTGATE_JOURNAL_CRASH_CHILD";

/// The child: run only when re-executed by the parent test below.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let config = JournalConfig::in_dir(std::path::Path::new(&dir));
    let (journal, _writer) = open(&config);
    let delay = Duration::from_millis(20 + rand::random_range(0..300u64));
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        std::process::abort();
    });
    let rt = runtime();
    let mut n: u64 = 0;
    loop {
        let size = rand::random_range(1..8u64);
        let batch =
            (n..n + size).map(|k| rec(Class::Financial, "M1", Some(k), &format!("c{k}"))).collect();
        let a = rt.block_on(journal.append(batch)).unwrap();
        // stdout is line-buffered: each line leaves the process before the next append.
        println!("ACK {} {} {}", a.first, a.next, n);
        n += size;
    }
}

#[test]
fn every_acknowledged_record_survives_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    abort_rounds(dir.path(), 20, None);
}

#[test]
fn every_acknowledged_record_survives_an_abort_and_a_power_cut() {
    let dir = tempfile::tempdir().unwrap();
    let disk = powercut::mount(dir.path()).unwrap();
    abort_rounds(dir.path(), 12, Some(&disk));
    assert!(disk.stats().cuts >= 24);
}

/// Rounds of two lives each: a child appends and aborts, the power is cut if `disk` is given,
/// and the journal, reopened, must hold every record the child saw acknowledged.
fn abort_rounds(root: &std::path::Path, rounds: usize, disk: Option<&powercut::Mounted>) {
    let exe = std::env::current_exe().unwrap();
    for round in 0..rounds {
        let jdir = root.join(format!("round-{round}")).join("journal");
        // Earlier rounds' leftovers make later rounds start non-empty: do two lives per dir.
        let mut acked: BTreeMap<u64, String> = BTreeMap::new();
        for life in 0..2 {
            let mut child = Command::new(&exe)
                .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, &jdir)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let out = BufReader::new(child.stdout.take().unwrap());
            let mut lines = 0;
            for line in out.lines() {
                let line = line.unwrap();
                let Some(rest) = line.strip_prefix("ACK ") else { continue };
                let v: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
                // Each life numbers its machine seqs from 0 again: seqs at or below what an
                // earlier life acknowledged are duplicates and are skipped, so spans can be
                // empty or short; the payload of seq s is that of the machine seq it holds.
                for seq in v[0]..v[1] {
                    acked.insert(seq, String::new());
                }
                lines += 1;
            }
            let status = child.wait().unwrap();
            assert!(!status.success(), "round {round} life {life}: the child aborts");
            if let Some(disk) = disk {
                disk.cut();
            }
            let config = JournalConfig::in_dir(&jdir);
            let (journal, writer) = open(&config);
            assert_eq!(
                journal.status().borrow().quarantined,
                None,
                "round {round} life {life}: the journal opened without quarantine"
            );
            let records = read_all(&journal);
            let by_seq: BTreeMap<u64, _> = records.iter().map(|r| (r.header.seq, r)).collect();
            for seq in acked.keys() {
                let r = by_seq.get(seq).unwrap_or_else(|| {
                    panic!(
                        "round {round} life {life}: acknowledged seq {seq} lost ({lines} acks, \
                         {} acknowledged in all, {} records kept)",
                        acked.len(),
                        records.len()
                    )
                });
                let ms = r.header.machine_seq.unwrap();
                assert_eq!(payload_of(r).unwrap(), format!("c{ms}"));
            }
            // Gap-free, and machine seqs strictly increasing (no duplicates after a crash).
            for w in records.windows(2) {
                assert_eq!(w[1].header.seq, w[0].header.seq + 1);
                assert!(w[1].header.machine_seq > w[0].header.machine_seq);
            }
            close(journal, writer);
        }
        assert!(!acked.is_empty(), "round {round}: the children acknowledged something");
    }
}
