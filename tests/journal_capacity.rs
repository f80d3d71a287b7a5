//! The cap: alarms at 50/80/95 %, snapshot bodies compacted, financial events always kept.
#![allow(clippy::unwrap_used)]

mod journal_support;

use journal_support::*;
use slotgate::journal::{Body, Class, JournalConfig, Pressure, verify};

#[test]
fn reaching_the_cap_compacts_snapshots_and_keeps_every_financial_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = JournalConfig::in_dir(&dir.path().join("journal"));
    config.cap_bytes = 64 << 10;
    let (journal, writer) = open(&config);
    let rt = runtime();
    let snapshot_meters = "m".repeat(400);
    let mut pressures = vec![Pressure::Normal];
    let mut financial = Vec::new();
    let mut snapshots = Vec::new();
    for i in 0..2000u64 {
        let batch = vec![
            rec(Class::Snapshot, "M1", Some(2 * i), &format!("s{i}-{snapshot_meters}")),
            rec(Class::Financial, "M1", Some(2 * i + 1), &format!("f{i}")),
        ];
        let a = rt.block_on(journal.append(batch)).unwrap();
        assert_eq!(a.next - a.first, 2);
        snapshots.push(a.first);
        financial.push((a.first + 1, format!("f{i}")));
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
    // Every level was seen, in order (compaction may bring the level down in between).
    let firsts: Vec<_> = [Pressure::Elevated, Pressure::High, Pressure::Critical]
        .iter()
        .map(|l| {
            pressures
                .iter()
                .position(|p| p == l)
                .unwrap_or_else(|| panic!("{l:?} never seen: {pressures:?}"))
        })
        .collect();
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "{pressures:?}");
    let status = journal.status().borrow().clone();
    assert!(
        status.alarms.iter().any(|a| a.starts_with("journal_capacity:")),
        "{:?}",
        status.alarms
    );
    assert!(status.compacted > 0);

    let records = read_all(&journal);
    // Gap-free: every header is still there.
    assert_eq!(records.first().unwrap().header.seq, 0);
    for w in records.windows(2) {
        assert_eq!(w[1].header.seq, w[0].header.seq + 1);
    }
    let by_seq: std::collections::HashMap<u64, &slotgate::journal::Record> =
        records.iter().map(|r| (r.header.seq, r)).collect();
    for (seq, payload) in &financial {
        let r = by_seq[seq];
        assert_eq!(r.header.class, Class::Financial);
        assert_eq!(payload_of(r).as_deref(), Some(payload.as_str()), "financial {seq} kept whole");
    }
    let compacted = snapshots.iter().filter(|s| by_seq[s].body.is_none()).count();
    assert!(compacted * 2 > snapshots.len(), "most snapshot bodies compacted: {compacted}");
    assert!(records.iter().filter(|r| r.body.is_none()).all(|r| r.header.class == Class::Snapshot));
    // Alarms journalled as each threshold was crossed, in order.
    let mut crossed: Vec<String> = Vec::new();
    for r in &records {
        if let Some(Body::Alarm { alarm, message, .. }) = &r.body
            && alarm == "journal_capacity"
        {
            let t = message.rsplit("crossing ").next().unwrap().to_owned();
            if !crossed.contains(&t) {
                crossed.push(t);
            }
        }
    }
    assert_eq!(crossed, ["50 %", "80 %", "95 %"]);
    close(journal, writer);

    let snapshot = verify::Snapshot::open(&config.dir).unwrap();
    let report = verify::verify(&snapshot, &[]).unwrap();
    assert!(report.ok(), "{report:?}");
    assert!(report.compacted as usize >= compacted);
}
