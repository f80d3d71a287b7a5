//! The cap: alarms at 50/80/95 %, every unacknowledged event kept (events are never refused
//! for the cap), and from 80 % acknowledged segments removed before their retention expired,
//! with an alarm saying so.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod journal_support;

use std::time::Duration;

use journal_support::*;
use slotgate::journal::{Body, Class, JournalConfig, Pressure, verify};

#[test]
fn reaching_the_cap_raises_alarms_in_order_and_keeps_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = JournalConfig::in_dir(&dir.path().join("journal"));
    config.cap_bytes = 256 << 10;
    let (journal, writer) = open(&config);
    let rt = runtime();
    // Incompressible, so the sealed segments fill the cap as the plain ones did.
    let meters = |i: u64| noise(i, 400);
    let mut pressures = vec![Pressure::Normal];
    let mut appended = Vec::new();
    for i in 0..2000u64 {
        let batch = vec![
            rec(Class::Snapshot, "M1", Some(2 * i), &format!("s{i}-{}", meters(i))),
            rec(Class::Financial, "M1", Some(2 * i + 1), &format!("f{i}")),
        ];
        let a = rt.block_on(journal.append(batch)).unwrap();
        assert_eq!(a.next - a.first, 2);
        appended.push((a.first, format!("s{i}-{}", meters(i))));
        appended.push((a.first + 1, format!("f{i}")));
        // The writer refreshes pressure after each group; an empty append orders us after it.
        rt.block_on(journal.append(Vec::new())).unwrap();
        let p = *journal.pressure().borrow();
        if pressures.last() != Some(&p) {
            pressures.push(p);
        }
        if p == Pressure::Critical {
            break;
        }
    }
    assert_eq!(
        pressures,
        [Pressure::Normal, Pressure::Elevated, Pressure::High, Pressure::Critical]
    );
    let status = journal.status().borrow().clone();
    assert!(status.alarms.iter().any(|a| a.starts_with("journal_capacity:")), "{status:?}");
    let records = read_all(&journal);
    assert_eq!(records.first().unwrap().header.seq, 0);
    for w in records.windows(2) {
        assert_eq!(w[1].header.seq, w[0].header.seq + 1);
    }
    let by_seq: std::collections::HashMap<u64, &slotgate::journal::Record> =
        records.iter().map(|r| (r.header.seq, r)).collect();
    for (seq, payload) in &appended {
        assert_eq!(payload_of(by_seq[seq]).as_deref(), Some(payload.as_str()), "{seq} kept");
    }
    let mut crossed: Vec<String> = Vec::new();
    for r in &records {
        if let Some(Body::Alarm { alarm, message, .. }) = &r.body
            && alarm == "journal_capacity"
        {
            crossed.push(message.rsplit("crossing ").next().unwrap().to_owned());
        }
    }
    assert_eq!(crossed, ["50 %", "80 %", "95 %"]);
    close(journal, writer);
    let report = verify::verify(&verify::Snapshot::open(&config.dir).unwrap(), &[]).unwrap();
    assert!(report.ok(), "{report:?}");
}

#[test]
fn from_80_percent_acknowledged_segments_go_before_their_retention_with_an_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = JournalConfig::in_dir(&dir.path().join("journal"));
    config.cap_bytes = 256 << 10;
    config.destinations = vec!["sms".into()];
    config.retain_acknowledged = Duration::from_secs(90 * 24 * 3600);
    let (journal, writer) = open(&config);
    let rt = runtime();
    let meters = |i: u64| noise(i, 400);
    // Three times the cap, each group acknowledged at once.
    for i in 0..800u64 {
        let batch = vec![rec(Class::Financial, "M1", Some(i), &format!("f{i}-{}", meters(i)))];
        let a = rt.block_on(journal.append(batch)).unwrap();
        rt.block_on(journal.acknowledge("sms", a.next - 1)).unwrap();
        assert!(*journal.pressure().borrow() < Pressure::Full);
    }
    rt.block_on(journal.append(Vec::new())).unwrap();
    let status = journal.status().borrow().clone();
    assert!(status.first_seq > 0, "acknowledged segments were removed: {status:?}");
    assert!(status.live_bytes <= config.cap_bytes, "{status:?}");
    assert!(status.alarms.iter().any(|a| a.starts_with("journal_retention:")), "{status:?}");
    // (The alarm's own record went upstream and, acknowledged, was removed with its segment.)
    close(journal, writer);
}
