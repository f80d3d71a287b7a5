//! Recovery from damage with real files — a torn tail, a corrupt frame, a missing or garbled
//! segment, unusable keyed state, a journal in the old sled layout — and `journal verify`
//! finding every kind of tampering at the right place.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod journal_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use journal_support::*;
use slotgate::journal::checkpoint::{self, load_signing_key};
use slotgate::journal::log::{self, Item, frame, list_segments};
use slotgate::journal::record::{body_hash, chain_hash};
use slotgate::journal::verify::{self, VerifyReport};
use slotgate::journal::{Body, CheckpointSettings, Class, Journal, JournalConfig, Record};

/// A journal of `n` financial records for machine "M1" (machine seqs 0..n), closed.
fn build(config: &JournalConfig, n: u64, per_batch: u64) {
    let (journal, writer) = open(config);
    let rt = runtime();
    let mut i = 0;
    while i < n {
        let batch = (i..(i + per_batch).min(n))
            .map(|k| rec(Class::Financial, "M1", Some(k), &format!("r{k}")))
            .collect();
        rt.block_on(journal.append(batch)).unwrap();
        i += per_batch;
    }
    close(journal, writer);
}

fn segments(config: &JournalConfig) -> Vec<(u64, PathBuf)> {
    list_segments(&config.dir.join("log")).unwrap().into_iter().collect()
}

/// The records of a segment file and where each frame starts.
fn frames(path: &Path) -> Vec<(u64, Record)> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    log::scan(&bytes[16..], 16, |item| {
        if let Item::Record { offset, record, .. } = item {
            out.push((offset, *record));
        }
        true
    });
    out
}

/// A small-segment journal (16 KiB) of 600 records in batches of 10, closed: several segments.
fn segmented(dir: &Path) -> JournalConfig {
    let mut config = JournalConfig::in_dir(&dir.join("journal"));
    config.cap_bytes = 1 << 20;
    build(&config, 600, 10);
    assert!(segments(&config).len() >= 4, "{:?}", segments(&config));
    config
}

fn gap_alarms(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match &r.body {
            Some(Body::Alarm { alarm, message, .. }) if alarm.starts_with("journal_gap") => {
                Some(message.clone())
            }
            _ => None,
        })
        .collect()
}

/// Reads everything (which finds the damage) and waits for the writer to journal it.
fn read_and_wait_for_gap(journal: &Journal, first: u64, last: u64) -> Vec<Record> {
    let records = read_all(journal);
    let wanted = format!("records {first} to {last} are unreadable");
    assert!(
        wait_until(Duration::from_secs(10), || {
            journal.status().borrow().alarms.iter().any(|a| a.contains(&wanted))
        }),
        "status names the gap: {:?}",
        journal.status().borrow().alarms
    );
    let after = read_all(journal);
    assert!(gap_alarms(&after).iter().any(|m| m.contains(&wanted)), "alarm record journalled");
    let kept: Vec<u64> = records.iter().map(|r| r.header.seq).collect();
    assert!(kept.iter().all(|s| *s < first || *s > last));
    records
}

#[test]
fn a_torn_tail_is_cut_off_and_every_acknowledged_record_kept() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig::in_dir(&dir.path().join("journal"));
    build(&config, 20, 5);
    let (_, active) = segments(&config).pop().unwrap();
    let whole = std::fs::metadata(&active).unwrap().len();
    let (_, last) = frames(&active).pop().unwrap();
    let mut torn = frame(&Record {
        header: {
            let mut h = last.header.clone();
            h.seq = 20;
            h
        },
        ..last
    });
    torn.truncate(torn.len() / 2);
    let mut f = std::fs::OpenOptions::new().append(true).open(&active).unwrap();
    std::io::Write::write_all(&mut f, &torn).unwrap();
    drop(f);
    let (journal, writer) = open(&config);
    assert_eq!(std::fs::metadata(&active).unwrap().len(), whole, "the torn frame was cut off");
    let records = read_all(&journal);
    assert_eq!(
        records.iter().map(|r| r.header.seq).collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
    assert!(journal.status().borrow().alarms.is_empty());
    let rt = runtime();
    let a =
        rt.block_on(journal.append(vec![rec(Class::Financial, "M1", Some(20), "r20")])).unwrap();
    assert_eq!(a.first, 20);
    close(journal, writer);
    assert!(verify_dir(&config.dir, &[]).ok());
}

#[test]
fn a_corrupt_frame_in_the_active_segment_costs_that_record_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig::in_dir(&dir.path().join("journal"));
    build(&config, 50, 5);
    let (_, active) = segments(&config).pop().unwrap();
    let (offset, _) = frames(&active)[24];
    let mut bytes = std::fs::read(&active).unwrap();
    bytes[usize::try_from(offset).unwrap() + 30] ^= 0x5A;
    std::fs::write(&active, bytes).unwrap();
    let (journal, writer) = open(&config);
    assert_eq!(journal.status().borrow().quarantined, None);
    let records = read_and_wait_for_gap(&journal, 24, 24);
    assert_eq!(records.len(), 49, "the records before and after are kept");
    assert_eq!(payload_of(&records[24]).as_deref(), Some("r25"));
    // Machine heads are intact: a retry of machine seq 49 is still a duplicate.
    assert_eq!(journal.machine_state("M1").unwrap().0, 50);
    close(journal, writer);
    let report = verify_dir(&config.dir, &[]);
    assert!(!report.ok());
    assert!(
        report.gaps.iter().any(|g| g.seq == 24 && g.reason.contains("journalled")),
        "{report:?}"
    );
}

/// A sealed segment is compressed block by block: one flipped bit costs the block it is in
/// (here the whole 16 KiB segment, one block), never the records around it.
#[test]
fn a_corrupt_block_in_a_sealed_segment_costs_that_block_only_and_is_journalled() {
    let dir = tempfile::tempdir().unwrap();
    let config = segmented(dir.path());
    let all = segments(&config);
    let (first, path) = &all[0];
    let next = all[1].0;
    let mut bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], &log::SEALED_MAGIC, "a closed journal's full segments are sealed");
    bytes[16 + log::BLOCK_HEADER + 20] ^= 0xFF;
    std::fs::write(path, bytes).unwrap();
    let (journal, writer) = open(&config);
    let records = read_and_wait_for_gap(&journal, *first, next - 1);
    assert_eq!(records.len() as u64, 600 - (next - first));
    close(journal, writer);
    // A restart does not journal the same gap again.
    let (journal, writer) = open(&config);
    read_all(&journal);
    let rt = runtime();
    rt.block_on(journal.append(Vec::new())).unwrap();
    rt.block_on(journal.append(Vec::new())).unwrap();
    assert_eq!(gap_alarms(&read_all(&journal)).len(), 1);
    close(journal, writer);
}

/// Sealing crashed before its rename (a half-written `.sealing` file beside the whole plain
/// segment), or the active segment went missing so the last file is a sealed one: open
/// keeps every record and appends go on after the last.
#[test]
fn open_recovers_from_a_crash_while_sealing_and_from_a_sealed_last_segment() {
    let dir = tempfile::tempdir().unwrap();
    let config = segmented(dir.path());
    let all = segments(&config);
    let (first, path) = &all[1];
    let sealed = std::fs::read(path).unwrap();
    let half =
        dir.path().join("journal/log").join(format!("{}.sealing", log::segment_name(*first)));
    std::fs::write(&half, &sealed[..sealed.len() / 2]).unwrap();
    let (journal, writer) = open(&config);
    assert!(!half.exists(), "the half-written sealed file is removed");
    assert_eq!(read_all(&journal).len(), 600);
    close(journal, writer);
    let (active_first, active) = segments(&config).pop().unwrap();
    std::fs::remove_file(&active).unwrap();
    let (journal, writer) = open(&config);
    // The lost active segment's records were durable: a gap, and their seqs never reissued.
    let kept = read_and_wait_for_gap(&journal, active_first, 599);
    assert_eq!(kept.len() as u64, active_first);
    let rt = runtime();
    let a = rt.block_on(journal.append(vec![rec(Class::Financial, "M1", Some(900), "after")]));
    assert!(a.unwrap().first >= 600, "appends continue after the sealed segment");
    close(journal, writer);
}

/// The log layout before compression (`SGJLOG01` segments only, full records): it opens,
/// reads and verifies as it is, its full segments are sealed on the way, and every record,
/// hash and checkpoint reads the same afterwards (fixture README).
#[test]
fn a_journal_in_the_log_v1_layout_opens_reads_and_is_sealed() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journal-log-v1");
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("journal");
    for sub in ["log", "state", "state/blobs"] {
        std::fs::create_dir_all(target.join(sub)).unwrap();
    }
    for sub in ["log", "state"] {
        for entry in std::fs::read_dir(fixture.join("journal").join(sub)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), target.join(sub).join(entry.file_name())).unwrap();
            }
        }
    }
    let public = checkpoint::load_public_key(&fixture.join("checkpoint.key.pub")).unwrap();
    let mut config = JournalConfig::in_dir(&target);
    config.cap_bytes = 1 << 20;
    config.destinations = vec!["sms".into()];
    let before = verify_dir(&target, &[public]);
    assert!(before.ok(), "{before:?}");
    assert!(before.checkpoints_verified >= 1, "{before:?}");
    let plain = segments(&config);
    assert!(plain.len() >= 3);
    let size = |s: &[(u64, PathBuf)]| -> u64 {
        s.iter().map(|(_, p)| std::fs::metadata(p).unwrap().len()).sum()
    };
    let plain_size = size(&plain);
    let plain_active = std::fs::read(&plain.last().unwrap().1).unwrap();
    for (_, path) in &plain {
        assert_eq!(&std::fs::read(path).unwrap()[..8], &log::SEGMENT_MAGIC);
    }
    let (journal, writer) = open(&config);
    let records = read_all(&journal);
    assert_eq!((records[0].header.seq, records.last().unwrap().header.seq), (150, 599));
    assert_eq!(records.len(), 450);
    for (r, seq) in records.iter().zip(150..) {
        assert_eq!(payload_of(r), Some(format!("p{seq}")));
    }
    for w in records.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].record_hash());
    }
    close(journal, writer);
    let after = segments(&config);
    let (active_first, active) = after.last().unwrap();
    for (first, path) in &after {
        let magic = if first == active_first { log::SEGMENT_MAGIC } else { log::SEALED_MAGIC };
        assert_eq!(&std::fs::read(path).unwrap()[..8], &magic, "{}", path.display());
    }
    assert!(size(&after) * 2 < plain_size, "{} vs {plain_size}", size(&after));
    assert_eq!(std::fs::read(active).unwrap(), plain_active, "the active segment is untouched");
    let (journal, writer) = open(&config);
    assert_eq!(read_all(&journal), records);
    close(journal, writer);
    let report = verify_dir(&target, &[public]);
    assert!(report.ok(), "{report:?}");
    assert_eq!(
        (report.checkpoints, report.checkpoints_verified, report.records),
        (before.checkpoints, before.checkpoints_verified, before.records)
    );
}

#[test]
fn a_missing_or_garbled_segment_in_the_middle_is_a_gap_and_the_rest_is_forwarded() {
    for garble in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let config = segmented(dir.path());
        let all = segments(&config);
        let (gone, path) = &all[1];
        let next = all[2].0;
        if garble {
            let mut bytes = std::fs::read(path).unwrap();
            bytes[..16].fill(0xA5);
            std::fs::write(path, bytes).unwrap();
        } else {
            std::fs::remove_file(path).unwrap();
        }
        let (journal, writer) = open(&config);
        let records = read_and_wait_for_gap(&journal, *gone, next - 1);
        assert_eq!(records.len() as u64, 600 - (next - gone));
        assert_eq!(records.last().unwrap().header.seq, 599);
        let rt = runtime();
        let a = rt.block_on(journal.append(vec![rec(Class::Financial, "M1", Some(600), "x")]));
        assert!(a.unwrap().first > 599, "the daemon keeps appending");
        close(journal, writer);
    }
}

#[test]
fn unusable_keyed_state_is_quarantined_and_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = JournalConfig::in_dir(&dir.path().join("journal"));
    config.destinations = vec!["sms".into()];
    build(&config, 20, 5);
    let conf = config.dir.join("state/conf");
    let mut bytes = std::fs::read(&conf).unwrap();
    bytes[..8].fill(0xA5);
    std::fs::write(&conf, bytes).unwrap();
    let floor = jiff::Timestamp::now().as_second().unsigned_abs() * 1_000_000;
    let (journal, writer) = open(&config);
    let moved = journal.status().borrow().quarantined.clone().expect("quarantined");
    assert!(moved.join("conf").exists(), "moved, not deleted");
    runtime().block_on(journal.append(Vec::new())).unwrap();
    let records = read_all(&journal);
    assert_eq!(records.len(), 21, "every record kept, and the alarm: {records:?}");
    assert!(matches!(&records[20].body,
        Some(Body::Alarm { alarm, .. }) if alarm == "journal_quarantined"));
    // The cursor restarts at the first record (sent again, never lost); machines whose heads
    // went with the state jump above anything issued before.
    assert_eq!(journal.status().borrow().cursors["sms"], 0);
    assert!(journal.machine_state("M2").unwrap().0 >= floor);
    close(journal, writer);
}

/// The fixture is a journal written by the sled layout's code (commit e76a703: 300 records
/// for M1/M2 and gateway alarms, destinations `sms` through 199 and `archive` through 49, so
/// records below 50 were removed, a checkpoint signed after every group).
fn old_layout_copy(dir: &Path) -> (JournalConfig, ed25519_dalek::VerifyingKey) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journal-sled-v1");
    let target = dir.join("journal");
    std::fs::create_dir_all(target.join("blobs")).unwrap();
    for entry in std::fs::read_dir(fixture.join("journal")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
        }
    }
    let public = checkpoint::load_public_key(&fixture.join("checkpoint.key.pub")).unwrap();
    let mut config = JournalConfig::in_dir(&target);
    config.destinations = vec!["sms".into(), "archive".into()];
    (config, public)
}

#[test]
fn a_journal_in_the_old_sled_layout_is_migrated_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (config, public) = old_layout_copy(dir.path());
    // The old layout verifies as it is (read through a migrated copy, the original untouched).
    let before = verify_dir(&config.dir, &[public]);
    assert!(before.ok(), "{before:?}");
    assert!(config.dir.join("conf").exists());
    // A migration interrupted earlier left half-built parts: they are rebuilt.
    std::fs::create_dir_all(config.dir.join("log.migrating")).unwrap();
    std::fs::write(config.dir.join("log.migrating/junk"), b"x").unwrap();
    let (journal, writer) = open(&config);
    for old in ["conf", "db", "slotgate-watermark", "log.migrating", "state.migrating"] {
        assert!(!config.dir.join(old).exists(), "{old} removed");
    }
    let records = read_all(&journal);
    assert_eq!(records.first().unwrap().header.seq, 50);
    assert_eq!(records.last().unwrap().header.seq, 299);
    assert_eq!(records.len(), 250);
    for w in records.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].record_hash());
    }
    assert_eq!(payload_of(&records[0]).as_deref(), Some("p50"));
    let status = journal.status().borrow().clone();
    assert_eq!((status.first_seq, status.next_seq), (50, 300));
    assert_eq!((status.cursors["sms"], status.cursors["archive"]), (200, 50));
    // Machine heads came across: M1's last machine seq was 298.
    assert_eq!(journal.machine_state("M1").unwrap().0, 299);
    let rt = runtime();
    let dup = rt.block_on(journal.append(vec![rec(Class::Financial, "M1", Some(298), "again")]));
    assert_eq!(dup.unwrap(), slotgate::journal::Appended { first: 300, next: 300 });
    let a = rt.block_on(journal.append(vec![rec(Class::Financial, "M1", Some(300), "new")]));
    assert_eq!(a.unwrap().first, 300);
    let last = read_all(&journal).pop().unwrap();
    assert_eq!(last.prev_hash, records.last().unwrap().record_hash(), "the chain continues");
    close(journal, writer);
    let after = verify_dir(&config.dir, &[public]);
    assert!(after.ok(), "{after:?}");
    assert_eq!(after.checkpoints, before.checkpoints);
    assert!(after.checkpoints_verified >= before.checkpoints_verified);
}

// ---------------------------------------------------------------------------------------------
// verify

struct Signed {
    _dir: tempfile::TempDir,
    config: JournalConfig,
    public: ed25519_dalek::VerifyingKey,
}

/// 50 records in batches of 5 with a checkpoint after (almost) every batch, closed.
fn signed_journal() -> Signed {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("journal.key");
    let public = checkpoint::generate(&key_path).unwrap();
    let mut config = JournalConfig::in_dir(&dir.path().join("journal"));
    config.checkpoints = Some(CheckpointSettings {
        key: load_signing_key(&key_path).unwrap(),
        interval: Duration::ZERO,
    });
    build(&config, 50, 5);
    Signed { _dir: dir, config, public }
}

fn verify_dir(dir: &Path, trusted: &[ed25519_dalek::VerifyingKey]) -> VerifyReport {
    let snapshot = verify::Snapshot::open(dir).unwrap();
    verify::verify(&snapshot, trusted).unwrap()
}

/// Rewrites the journal's (single) segment as an attacker would: records edited, removed or
/// reordered, every frame's CRC made valid again.
fn tamper(dir: &Path, f: impl FnOnce(&mut Vec<Record>)) {
    let all = list_segments(&dir.join("log")).unwrap();
    assert_eq!(all.len(), 1);
    let path = all.values().next().unwrap();
    let bytes = std::fs::read(path).unwrap();
    let mut records: Vec<Record> = frames(path).into_iter().map(|(_, r)| r).collect();
    f(&mut records);
    let mut out = bytes[..16].to_vec();
    for r in &records {
        out.extend_from_slice(&frame(r));
    }
    std::fs::write(path, out).unwrap();
}

fn edit_body(record: &mut Record) {
    if let Some(Body::Event { canonical_json, .. }) = &mut record.body {
        *canonical_json = b"{\"payload\":\"r24-but-bigger\"}".to_vec();
    } else {
        panic!("not an event");
    }
}

/// A signed journal of 600 records in 16 KiB segments, closed: its full segments sealed.
fn signed_segmented() -> Signed {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("journal.key");
    let public = checkpoint::generate(&key_path).unwrap();
    let mut config = JournalConfig::in_dir(&dir.path().join("journal"));
    config.cap_bytes = 1 << 20;
    config.checkpoints = Some(CheckpointSettings {
        key: load_signing_key(&key_path).unwrap(),
        interval: Duration::ZERO,
    });
    build(&config, 600, 10);
    Signed { _dir: dir, config, public }
}

/// Rewrites the first sealed segment as an attacker with this code would: decoded, edited,
/// sealed again (every CRC and the block index valid).
fn tamper_sealed(config: &JournalConfig, f: impl FnOnce(&mut Vec<Record>)) -> (u64, u64) {
    let all = segments(config);
    let (first, path) = &all[0];
    let bytes = std::fs::read(path).unwrap();
    let mut records = Vec::new();
    let format = log::scan_segment(&bytes, *first, |item| {
        if let Item::Record { record, .. } = item {
            records.push(*record);
        }
        true
    });
    assert_eq!(format, Some(log::Format::Sealed));
    f(&mut records);
    std::fs::write(path, log::seal(*first, &records).unwrap()).unwrap();
    (*first, all[1].0)
}

#[test]
fn verify_finds_tampering_inside_a_sealed_segment() {
    // An edited body whose stored hash was left: found at its seq.
    let s = signed_segmented();
    tamper_sealed(&s.config, |records| edit_body(&mut records[30]));
    let report = verify_dir(&s.config.dir, &[s.public]);
    let b = report.first_break.expect("a break");
    assert!(b.seq == 30 && b.reason.contains("body does not match"), "{b:?}");
    // The body hash recomputed and the chain rebuilt to the end of the segment (a sealed
    // segment stores no per-record hashes to rebuild): the next segment's link breaks.
    let s = signed_segmented();
    let (_, next) = tamper_sealed(&s.config, |records| edit_and_rebuild_chain(records, 30));
    let report = verify_dir(&s.config.dir, &[s.public]);
    let b = report.first_break.clone().expect("a break");
    assert_eq!(b.seq, next, "{b:?}");
    assert!(!report.checkpoint_problems.is_empty(), "{report:?}");
}

/// The attacker who knows the format: record `at` (index = seq) edited, its body hash
/// recomputed and every later link rebuilt.
fn edit_and_rebuild_chain(records: &mut [Record], at: usize) {
    let mut prev = records[at - 1].record_hash();
    for r in &mut records[at..] {
        if r.header.seq == at as u64 {
            edit_body(r);
            r.header.body_hash = body_hash(r.body.as_ref().unwrap());
        }
        r.prev_hash = prev;
        prev = chain_hash(&r.prev_hash, &r.header);
    }
}

#[test]
fn a_clean_journal_verifies_with_its_checkpoints() {
    let s = signed_journal();
    let report = verify_dir(&s.config.dir, &[s.public]);
    assert!(report.ok(), "{report:?}");
    assert_eq!((report.first_seq, report.next_seq, report.records), (0, 50, 50));
    assert!(report.checkpoints_verified >= 1, "{report:?}");
    assert_eq!(report.checkpoints_verified, report.checkpoints);
}

#[test]
fn verify_finds_an_edited_body_at_its_seq() {
    let s = signed_journal();
    tamper(&s.config.dir, |records| edit_body(&mut records[24]));
    let report = verify_dir(&s.config.dir, &[s.public]);
    let b = report.first_break.expect("a break");
    assert_eq!(b.seq, 24, "{b:?}");
    assert!(b.reason.contains("body does not match"), "{b:?}");
}

#[test]
fn verify_finds_a_removed_record_at_the_next_seq() {
    let s = signed_journal();
    tamper(&s.config.dir, |records| {
        records.remove(17);
    });
    let report = verify_dir(&s.config.dir, &[s.public]);
    let b = report.first_break.expect("a break");
    assert_eq!(b.seq, 18, "{b:?}");
    assert!(b.reason.contains("missing"), "{b:?}");
}

#[test]
fn verify_finds_swapped_records_at_the_first_of_them() {
    let s = signed_journal();
    tamper(&s.config.dir, |records| records.swap(12, 30));
    let report = verify_dir(&s.config.dir, &[s.public]);
    let b = report.first_break.expect("a break");
    // Found where record 12 should be.
    assert!(b.reason.contains("expected record 12, found 30"), "{b:?}");
}

#[test]
fn a_rebuilt_chain_is_caught_by_the_signed_checkpoints() {
    let s = signed_journal();
    tamper(&s.config.dir, |records| edit_and_rebuild_chain(records, 24));
    let report = verify_dir(&s.config.dir, &[s.public]);
    assert_eq!(report.first_break, None, "the attacker rebuilt the chain");
    assert!(!report.ok());
    assert!(
        report.checkpoint_problems.iter().any(|p| p.reason.contains("chain head differs")),
        "{report:?}"
    );
}

#[test]
fn a_truncated_tail_shows_as_a_checkpoint_beyond_the_last_record() {
    let s = signed_journal();
    tamper(&s.config.dir, |records| records.truncate(47));
    let report = verify_dir(&s.config.dir, &[s.public]);
    assert_eq!(report.first_break, None);
    assert!(
        report.checkpoint_problems.iter().any(|p| p.reason.contains("beyond the last record")),
        "{report:?}"
    );
}

#[test]
fn checkpoints_by_an_untrusted_key_are_reported() {
    let s = signed_journal();
    let other = checkpoint::generate(&s._dir.path().join("other.key")).unwrap();
    let report = verify_dir(&s.config.dir, &[other]);
    assert!(!report.ok());
    assert!(
        report.checkpoint_problems.iter().all(|p| p.reason.contains("untrusted")),
        "{report:?}"
    );
    assert_eq!(report.checkpoints_verified, 0);
}

#[test]
fn after_a_key_rotation_old_checkpoints_verify_with_the_old_public_key() {
    let mut signed = signed_journal();
    let old = signed.public;
    // Rotate: a new signing key; the old public key is kept as trusted.
    let new_path = signed.config.dir.parent().unwrap().join("journal-2.key");
    let new = checkpoint::generate(&new_path).unwrap();
    signed.config.checkpoints = Some(CheckpointSettings {
        key: load_signing_key(&new_path).unwrap(),
        interval: Duration::ZERO,
    });
    let (journal, writer) = open(&signed.config);
    let rt = runtime();
    for k in 50..60 {
        rt.block_on(journal.append(vec![rec(Class::Financial, "M1", Some(k), "after")])).unwrap();
    }
    close(journal, writer);
    let both = verify_dir(&signed.config.dir, &[old, new]);
    assert!(both.ok(), "{both:?}");
    assert_eq!(both.checkpoints_verified, both.checkpoints);
    assert!(both.checkpoints >= 2);
    // Without the old public key its checkpoints cannot be trusted.
    let new_only = verify_dir(&signed.config.dir, &[new]);
    assert!(!new_only.ok());
    assert!(new_only.checkpoint_problems.iter().all(|p| p.reason.contains("untrusted")));
    assert!(new_only.checkpoints_verified >= 1, "the new key's checkpoints still verify");
}

#[test]
fn verify_with_the_config_reports_unreadable_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("slotgate.toml");
    std::fs::write(
        &config_file,
        "[venue]\nid = \"UA-TEST-1\"\ncurrency = \"UAH\"\ntime_zone = \"Europe/Kyiv\"\n\n\
         [storage]\ndir = \"state\"\n\n[[line]]\nname = \"line-0\"\nkind = \"tcp\"\n\
         address = \"127.0.0.1:9\"\n\n  [[line.machine]]\n  address = 1\n  registry_id = \"M1\"\n",
    )
    .unwrap();
    let config = JournalConfig::in_dir(&dir.path().join("state/journal"));
    build(&config, 200, 5);
    let verify = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_slotgate"))
            .args(["journal", "verify", "--config"])
            .arg(&config_file)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, text) = verify();
    assert_eq!(code, Some(0), "a clean journal verifies: {text}");
    let (_, active) = segments(&config).pop().unwrap();
    let (offset, _) = frames(&active)[100];
    let mut bytes = std::fs::read(&active).unwrap();
    bytes[usize::try_from(offset).unwrap() + 20] ^= 0xFF;
    std::fs::write(&active, bytes).unwrap();
    let (code, text) = verify();
    assert_eq!(code, Some(1), "an unreadable record fails the verification: {text}");
    assert!(text.contains("records 100 to 100 unreadable"), "{text}");
}
