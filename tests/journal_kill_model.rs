//! Model of the record log and the keyed state under kills: a child process runs a random mix
//! of appends (with retried, already-durable machine seqs) and acknowledgements on a journal with
//! small segments (so it rolls and removes segments) and aborts at a random moment — between any
//! two of its writes: a frame, an `fdatasync`, a sled batch or flush, a roll, an unlink. The
//! reopened journal must hold every acknowledged record, gap-free and chained; every reported
//! cursor; and keyed state that agrees with the log (the log position re-applied: a machine's
//! head is its last logged seq + 1, so no retry is counted twice and none is lost).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod journal_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use journal_support::*;
use proptest::prelude::*;
use slotgate::journal::{Class, JournalConfig};

const CHILD_ENV: &str = "SLOTGATE_KILL_MODEL_CHILD";
const MACHINES: [&str; 3] = ["M1", "M2", "M3"];

fn config(dir: &std::path::Path) -> JournalConfig {
    let mut config = JournalConfig::in_dir(dir);
    config.cap_bytes = 1 << 20;
    config.destinations = vec!["sms".into()];
    config
}

/// The child: `ops` is a list like `a3.1,k700,a1.0`: append 3 records with a retry of one
/// durable machine seq, acknowledge 70 % of what is durable. Repeated until the abort.
#[test]
fn kill_model_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let (dir, rest) = spec.split_once('|').unwrap();
    let (delay, ops) = rest.split_once('|').unwrap();
    let config = config(std::path::Path::new(dir));
    let (journal, _writer) = open(&config);
    let delay = Duration::from_micros(delay.parse().unwrap());
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        std::process::abort();
    });
    let rt = runtime();
    let mut next: BTreeMap<&str, u64> =
        MACHINES.iter().map(|m| (*m, journal.machine_state(m).unwrap().0)).collect();
    let mut turn = 0u64;
    loop {
        for op in ops.split(',') {
            turn += 1;
            if let Some(permille) = op.strip_prefix('k') {
                let durable = *journal.durable().borrow();
                let through = durable * permille.parse::<u64>().unwrap() / 1000;
                if through > 0 {
                    rt.block_on(journal.acknowledge("sms", through - 1)).unwrap();
                    println!("CUR {through}");
                }
                continue;
            }
            let (n, retry) = op[1..].split_once('.').unwrap();
            let machine = MACHINES[usize::try_from(turn).unwrap() % MACHINES.len()];
            let at = next[machine];
            let mut batch = Vec::new();
            if retry == "1" && at > 0 {
                batch.push(rec(Class::Financial, machine, Some(at - 1), "retry"));
            }
            let n: u64 = n.parse().unwrap();
            for k in at..at + n {
                batch.push(rec(Class::Financial, machine, Some(k), &format!("{machine}-{k}")));
            }
            let a = rt.block_on(journal.append(batch)).unwrap();
            assert_eq!(a.next - a.first, n, "a retried seq is never appended twice");
            next.insert(machine, at + n);
            println!("ACK {} {} {machine} {at}", a.first, a.next);
        }
    }
}

fn op() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (1u32..12, 0u32..2).prop_map(|(n, r)| format!("a{n}.{r}")),
        1 => (0u32..1001).prop_map(|p| format!("k{p}")),
    ]
}

fn run(ops: &[String], delays: &[u64]) {
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let jdir = dir.path().join("journal");
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut cursor = 0u64;
    for (life, delay) in delays.iter().enumerate() {
        let mut child = Command::new(&exe)
            .args(["--exact", "kill_model_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{}|{delay}|{}", jdir.display(), ops.join(",")))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["ACK", first, next, machine, at] => {
                    let (first, next): (u64, u64) = (first.parse().unwrap(), next.parse().unwrap());
                    let at: u64 = at.parse().unwrap();
                    for (i, seq) in (first..next).enumerate() {
                        acked.insert(seq, format!("{machine}-{}", at + i as u64));
                    }
                }
                ["CUR", through] => cursor = cursor.max(through.parse().unwrap()),
                _ => {}
            }
        }
        assert!(!child.wait().unwrap().success(), "life {life}: the child aborts");
        let (journal, writer) = open(&config(&jdir));
        let status = journal.status().borrow().clone();
        assert!(status.alarms.is_empty(), "life {life}: no damage after a kill: {status:?}");
        assert!(status.cursors["sms"] >= cursor, "life {life}: acknowledged cursor kept");
        assert!(status.first_seq <= status.cursors["sms"], "only acknowledged records removed");
        let records = read_all(&journal);
        let by_seq: BTreeMap<u64, _> = records.iter().map(|r| (r.header.seq, r)).collect();
        for (seq, payload) in acked.range(status.first_seq..) {
            let r = by_seq.get(seq).unwrap_or_else(|| panic!("life {life}: seq {seq} lost"));
            assert_eq!(payload_of(r).as_deref(), Some(payload.as_str()), "life {life}: {seq}");
        }
        for w in records.windows(2) {
            assert_eq!(w[1].header.seq, w[0].header.seq + 1, "life {life}: gap-free");
            assert_eq!(w[1].prev_hash, w[0].record_hash(), "life {life}: chained");
        }
        // The keyed state agrees with the log: each machine's head follows its last record.
        for machine in MACHINES {
            let last = records
                .iter()
                .filter(|r| r.header.machine == machine)
                .filter_map(|r| r.header.machine_seq)
                .max();
            let (head, _) = journal.machine_state(machine).unwrap();
            if let Some(last) = last {
                assert_eq!(head, last + 1, "life {life}: head of {machine}");
            }
        }
        close(journal, writer);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn log_and_keyed_state_agree_after_kills_at_random_moments(
        ops in prop::collection::vec(op(), 1..12),
        delays in prop::collection::vec(5_000u64..150_000, 3),
    ) {
        run(&ops, &delays);
    }
}
