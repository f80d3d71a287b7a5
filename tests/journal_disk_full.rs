//! Disk full, on a real small file system (a tmpfs this test mounts; it needs root).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod journal_support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use journal_support::*;
use slotgate::journal::{
    Appended, Body, Class, Journal, JournalConfig, JournalError, NewRecord, Pressure, verify,
};

/// Writes zeros to `path` until `stop(free)` or the file system is full.
fn fill(path: &Path, mut stop: impl FnMut(u64) -> bool) {
    let mut f = std::fs::File::create(path).unwrap();
    // Page-sized, so that a full tmpfs is full to the last page.
    let chunk = vec![0u8; 4096];
    loop {
        if stop(free_bytes(path.parent().unwrap())) {
            break;
        }
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
}

fn batch(tag: &str, n: usize) -> Vec<NewRecord> {
    (0..n)
        .map(|k| rec(Class::Financial, "M1", None, &format!("{tag}-{k}-{}", "x".repeat(150))))
        .collect()
}

fn append(
    rt: &tokio::runtime::Runtime,
    journal: &Journal,
    records: Vec<NewRecord>,
) -> Result<Appended, JournalError> {
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), journal.append(records)).await
    })
    .expect("an append answers within 20 s")
}

fn remember(acked: &mut BTreeMap<u64, String>, a: Appended, tag: &str) {
    for (k, seq) in (a.first..a.next).enumerate() {
        acked.insert(seq, format!("{tag}-{k}-{}", "x".repeat(150)));
    }
}

/// Every acknowledged record is there, whole, after a reopen, and the chain verifies.
fn assert_all_there(config: &JournalConfig, acked: &BTreeMap<u64, String>) {
    let (journal, writer) = open(config);
    let records = read_all(&journal);
    let by_seq: BTreeMap<u64, _> = records.iter().map(|r| (r.header.seq, r)).collect();
    for (seq, payload) in acked {
        let r = by_seq.get(seq).unwrap_or_else(|| panic!("acknowledged record {seq} lost"));
        assert_eq!(payload_of(r).as_deref(), Some(payload.as_str()), "record {seq}");
    }
    close(journal, writer);
    let report = verify::verify(&verify::Snapshot::open(&config.dir).unwrap(), &[]).unwrap();
    assert!(report.ok(), "{report:?}");
}

#[test]
fn below_the_disk_floor_events_are_refused_and_resume_by_themselves() {
    let fs = Tmpfs::mount("32m");
    let mut config = JournalConfig::in_dir(&fs.path.join("journal"));
    config.disk_floor_bytes = 8 << 20;
    let (journal, writer) = open(&config);
    let rt = runtime();
    let mut acked = BTreeMap::new();
    for i in 0..5 {
        let tag = format!("a{i}");
        let a = append(&rt, &journal, batch(&tag, 10)).unwrap();
        remember(&mut acked, a, &tag);
    }
    let filler = fs.path.join("filler");
    fill(&filler, |free| free < (4 << 20));
    let err = append(&rt, &journal, batch("refused", 10)).unwrap_err();
    assert!(matches!(err, JournalError::DiskFloor { .. }), "{err}");
    assert_eq!(*journal.pressure().borrow(), Pressure::Full);
    // The alarm is journalled (alarms are what the floor's margin is for) and listed.
    assert!(wait_until(Duration::from_secs(5), || {
        journal.status().borrow().alarms.iter().any(|a| a.starts_with("journal_disk_floor:"))
    }));
    assert!(read_all(&journal).iter().any(|r| matches!(
        &r.body, Some(Body::Alarm { alarm, .. }) if alarm == "journal_disk_floor"
    )));
    std::fs::remove_file(&filler).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || *journal.pressure().borrow() != Pressure::Full),
        "the writer notices the space on its own"
    );
    assert!(!journal.status().borrow().alarms.iter().any(|a| a.starts_with("journal_disk_floor:")));
    let a = append(&rt, &journal, batch("after", 10)).unwrap();
    remember(&mut acked, a, "after");
    close(journal, writer);
    assert_all_there(&config, &acked);
}

#[test]
fn a_full_file_system_fails_appends_and_the_journal_recovers_when_space_returns() {
    let fs = Tmpfs::mount("32m");
    let config = JournalConfig::in_dir(&fs.path.join("journal"));
    let (journal, writer) = open(&config);
    let rt = runtime();
    let mut acked = BTreeMap::new();
    for i in 0..5 {
        let tag = format!("a{i}");
        let a = append(&rt, &journal, batch(&tag, 10)).unwrap();
        remember(&mut acked, a, &tag);
    }
    let filler = fs.path.join("filler");
    fill(&filler, |_| false);
    eprintln!("filled: free {} bytes", free_bytes(&fs.path));
    let mut errors = Vec::new();
    let mut oks_while_full = 0;
    for i in 0..400 {
        let tag = format!("full{i}");
        match append(&rt, &journal, batch(&tag, 10)) {
            Ok(a) => {
                oks_while_full += 1;
                remember(&mut acked, a, &tag);
            }
            Err(e) => {
                errors.push(e.to_string());
                if errors.len() >= 5 {
                    break;
                }
            }
        }
    }
    eprintln!("while full: {oks_while_full} appends answered Ok, then errors: {errors:#?}");
    eprintln!("status while full: {:#?}", journal.status().borrow());
    assert!(!errors.is_empty(), "appends fail on a full file system");
    std::fs::remove_file(&filler).unwrap();
    let mut resumed = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            match append(&rt, &journal, batch("resumed", 10)) {
                Ok(a) => {
                    resumed = Some(a);
                    true
                }
                Err(e) => {
                    eprintln!("not yet: {e}");
                    false
                }
            }
        }),
        "appends resume once space returns"
    );
    remember(&mut acked, resumed.unwrap(), "resumed");
    close(journal, writer);
    assert_all_there(&config, &acked);
}
