//! A store sled cannot open, or whose last record does not decode, is quarantined; and
//! `journal verify` finds every kind of tampering at the right place.
#![allow(clippy::unwrap_used)]

mod journal_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use journal_support::*;
use slotgate::journal::checkpoint::{self, load_signing_key};
use slotgate::journal::record::{body_hash, chain_hash};
use slotgate::journal::store::{SledStore, Store, WriteBatch};
use slotgate::journal::verify::{self, VerifyReport};
use slotgate::journal::{Body, CheckpointSettings, Class, JournalConfig, Record, record_key};

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

fn quarantined_dirs(config: &JournalConfig) -> Vec<PathBuf> {
    match std::fs::read_dir(&config.quarantine_dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Opens a damaged journal and checks the whole quarantine contract.
fn assert_quarantined_on_open(config: &JournalConfig) {
    let floor = jiff::Timestamp::now().as_second().unsigned_abs() * 1_000_000;
    let (journal, writer) = Journal::open(config.clone()).expect("a corrupt store is quarantined");
    let moved = quarantined_dirs(config);
    assert_eq!(moved.len(), 1, "one quarantined store: {moved:?}");
    assert!(moved[0].file_name().unwrap().to_string_lossy().starts_with("journal-"));
    assert!(moved[0].join("db").exists(), "the old files were moved, not deleted");
    assert_eq!(journal.status().borrow().quarantined.as_deref(), Some(moved[0].as_path()));
    let rt = runtime();
    let a =
        rt.block_on(journal.append(vec![rec(Class::Financial, "M1", Some(0), "after")])).unwrap();
    assert!(a.first >= floor, "new seqs jump to unix seconds × 10⁶: {} < {floor}", a.first);
    let records = read_all(&journal);
    let first = &records[0];
    assert!(first.header.seq >= floor);
    assert_eq!(first.header.class, Class::Alarm);
    assert!(
        matches!(&first.body, Some(Body::Alarm { alarm, .. }) if alarm == "journal_quarantined"),
        "the first record is the quarantine alarm: {first:?}"
    );
    // Machine seq 0 is above nothing known now; the machine's next seq starts at the floor.
    let (next, _) = journal.machine_state("M2").unwrap();
    assert!(next >= floor, "machine seq floor {next} < {floor}");
    // M1's event with machine seq 0 was below the floor: a stale retry, so skipped.
    assert_eq!(records.len(), 1, "{records:?}");
    close(journal, writer);
}

#[test]
fn a_corrupt_snapshot_file_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig::in_dir(&dir.path().join("journal"));
    build(&config, 20, 5);
    // sled reads the newest `snap.*`; bad CRC → `Error::Corruption` (sled#1533, #1527).
    std::fs::write(config.dir.join("snap.00000000000FFFFF"), vec![0xA5u8; 64]).unwrap();
    assert_quarantined_on_open(&config);
}

#[test]
fn a_garbled_conf_file_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig::in_dir(&dir.path().join("journal"));
    build(&config, 20, 5);
    // sled answers `Error::Unsupported` for this, not `Corruption`.
    let mut conf = std::fs::read(config.dir.join("conf")).unwrap();
    conf[..8].fill(0xA5);
    std::fs::write(config.dir.join("conf"), conf).unwrap();
    assert_quarantined_on_open(&config);
}

#[test]
fn a_store_whose_last_record_does_not_decode_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig::in_dir(&dir.path().join("journal"));
    build(&config, 20, 5);
    {
        let store = SledStore::open(&config.dir, 1 << 20).unwrap();
        let mut batch = WriteBatch::default();
        batch.put(record_key(19).to_vec(), vec![0x07, 0xFF, 0x00, 0x13]);
        store.apply(batch).unwrap();
        store.flush().unwrap();
    }
    assert_quarantined_on_open(&config);
}

#[test]
fn a_log_that_sled_silently_recovers_short_is_caught_by_the_watermark_and_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig::in_dir(&dir.path().join("journal"));
    build(&config, 200, 5);
    // sled keeps the prefix before the first bad entry of its log and reports nothing: without
    // the journal's own high-water mark, records 100-odd to 199 would be lost in silence and
    // their sequence numbers handed out again.
    let db = config.dir.join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..middle + 64].fill(0xA5);
    std::fs::write(&db, bytes).unwrap();
    assert_quarantined_on_open(&config);
    // The evidence stays readable, and verify names what is missing.
    let moved = quarantined_dirs(&config).pop().unwrap();
    let report = verify_dir(&moved, &[]);
    let lost = report.lost_tail.clone().expect("the lost records are reported");
    assert!(lost.reason.contains("to 199 were flushed"), "{lost:?}");
    assert!(!report.ok());
}

use slotgate::journal::Journal;

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

fn tamper(dir: &Path, f: impl FnOnce(&SledStore)) {
    let store = SledStore::open(dir, 1 << 20).unwrap();
    f(&store);
    store.flush().unwrap();
}

fn get(store: &SledStore, seq: u64) -> Record {
    Record::decode(&store.get(&record_key(seq)).unwrap().unwrap()).unwrap()
}

fn put(store: &SledStore, seq: u64, record: &Record) {
    let mut batch = WriteBatch::default();
    batch.put(record_key(seq).to_vec(), record.encode());
    store.apply(batch).unwrap();
}

fn edit_body(record: &mut Record) {
    if let Some(Body::Event { canonical_json, .. }) = &mut record.body {
        *canonical_json = b"{\"payload\":\"r24-but-bigger\"}".to_vec();
    } else {
        panic!("not an event");
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
    tamper(&s.config.dir, |store| {
        let mut r = get(store, 24);
        edit_body(&mut r);
        put(store, 24, &r);
    });
    let report = verify_dir(&s.config.dir, &[s.public]);
    let b = report.first_break.expect("a break");
    assert_eq!(b.seq, 24, "{b:?}");
    assert!(b.reason.contains("body does not match"), "{b:?}");
}

#[test]
fn verify_finds_a_removed_record_at_the_next_seq() {
    let s = signed_journal();
    tamper(&s.config.dir, |store| {
        let mut batch = WriteBatch::default();
        batch.remove(record_key(17).to_vec());
        store.apply(batch).unwrap();
    });
    let report = verify_dir(&s.config.dir, &[s.public]);
    let b = report.first_break.expect("a break");
    assert_eq!(b.seq, 18, "{b:?}");
    assert!(b.reason.contains("missing"), "{b:?}");
}

#[test]
fn verify_finds_swapped_records_at_the_first_of_them() {
    let s = signed_journal();
    tamper(&s.config.dir, |store| {
        let (a, b) = (store.get(&record_key(12)).unwrap(), store.get(&record_key(30)).unwrap());
        let mut batch = WriteBatch::default();
        batch.put(record_key(12).to_vec(), b.unwrap());
        batch.put(record_key(30).to_vec(), a.unwrap());
        store.apply(batch).unwrap();
    });
    let report = verify_dir(&s.config.dir, &[s.public]);
    let b = report.first_break.expect("a break");
    assert_eq!(b.seq, 12, "{b:?}");
}

#[test]
fn a_rebuilt_chain_is_caught_by_the_signed_checkpoints() {
    let s = signed_journal();
    tamper(&s.config.dir, |store| {
        let mut prev = get(store, 23).record_hash();
        for seq in 24..50 {
            let mut r = get(store, seq);
            if seq == 24 {
                edit_body(&mut r);
                r.header.body_hash = body_hash(r.body.as_ref().unwrap());
            }
            r.prev_hash = prev;
            prev = chain_hash(&r.prev_hash, &r.header);
            put(store, seq, &r);
        }
    });
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
    tamper(&s.config.dir, |store| {
        let mut batch = WriteBatch::default();
        for seq in 47..50 {
            batch.remove(record_key(seq).to_vec());
        }
        store.apply(batch).unwrap();
    });
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
fn verify_with_the_config_reports_quarantined_journals_and_the_records_they_lost() {
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
    // Damage that sled recovers away in silence; the open quarantines the store and starts a
    // fresh, intact journal, which alone would verify.
    let db = config.dir.join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..middle + 64].fill(0xA5);
    std::fs::write(&db, bytes).unwrap();
    let (journal, writer) = Journal::open(config.clone()).unwrap();
    close(journal, writer);
    let moved = quarantined_dirs(&config).pop().unwrap();
    let (code, text) = verify();
    assert_eq!(code, Some(1), "records lost to the quarantine fail the verification: {text}");
    assert!(text.contains(&moved.display().to_string()), "names the quarantined journal: {text}");
    assert!(text.contains("LOST") && text.contains("to 199 were flushed"), "{text}");
}
