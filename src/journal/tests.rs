//! Journal tests against real sled stores in temporary directories.

use super::*;

fn alarm(n: u32) -> NewRecord {
    NewRecord {
        class: Class::Alarm,
        machine: String::new(),
        machine_seq: None,
        body: Body::Alarm { alarm: "test".into(), level: "info".into(), message: format!("n{n}") },
        snapshot_of: None,
    }
}

#[tokio::test]
async fn appends_are_numbered_without_gaps_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig::in_dir(&dir.path().join("journal"));
    let (journal, writer) = Journal::open(config.clone()).unwrap();
    let a = journal.append(vec![alarm(0), alarm(1)]).await.unwrap();
    let b = journal.append(vec![alarm(2)]).await.unwrap();
    assert_eq!((a.first, a.next, b.first, b.next), (0, 2, 2, 3));
    drop(journal);
    tokio::task::spawn_blocking(move || writer.join()).await.unwrap().unwrap();
    let (journal, _writer) = Journal::open(config).unwrap();
    let records = journal.read(0, 100).unwrap();
    assert_eq!(records.iter().map(|r| r.header.seq).collect::<Vec<_>>(), vec![0, 1, 2]);
    let c = journal.append(vec![alarm(3)]).await.unwrap();
    assert_eq!(c.first, 3);
}

/// A journal with 64 KiB segments (the smallest), one destination and `retain`.
fn small(dir: &Path, retain: Duration) -> JournalConfig {
    let mut config = JournalConfig::in_dir(&dir.join("journal"));
    config.destinations = vec!["sms".into()];
    config.cap_bytes = 4 << 20;
    config.retain_acknowledged = retain;
    config
}

async fn fill(journal: &Journal, groups: u32) -> Appended {
    let mut first = None;
    let mut last = Appended { first: 0, next: 0 };
    for g in 0..groups {
        last = journal.append((g * 100..g * 100 + 100).map(alarm).collect()).await.unwrap();
        first.get_or_insert(last.first);
    }
    Appended { first: first.unwrap_or(0), next: last.next }
}

fn segments(config: &JournalConfig) -> usize {
    log::list_segments(&config.dir.join(LOG_DIR)).unwrap().len()
}

/// Waits (10 s at most) until acknowledged segments are removed down to the active one.
async fn down_to_one_segment(journal: &Journal, config: &JournalConfig) {
    let mut status = journal.status();
    tokio::time::timeout(Duration::from_secs(10), async {
        while segments(config) > 1 {
            status.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_rewind_moves_the_cursor_back_durably_and_never_below_the_oldest_kept_record() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path(), Duration::ZERO);
    let (journal, writer) = Journal::open(config.clone()).unwrap();
    let appended = fill(&journal, 40).await;
    journal.acknowledge("sms", appended.next - 1).await.unwrap();
    down_to_one_segment(&journal, &config).await;
    let first = journal.status().borrow().first_seq;
    assert!(first > 0, "segments were removed");
    // Below the oldest kept record: refused, naming it; the cursor stays.
    match journal.rewind("sms", first - 1).await {
        Err(JournalError::NotKept { oldest, oldest_at: Some(_) }) => assert_eq!(oldest, first),
        other => panic!("{other:?}"),
    }
    assert_eq!(journal.status().borrow().cursors["sms"], appended.next);
    match journal.check_kept(first - 1) {
        Err(JournalError::NotKept { oldest, oldest_at: Some(_) }) => assert_eq!(oldest, first),
        other => panic!("{other:?}"),
    }
    assert!(journal.check_kept(first).is_ok());
    match journal.seq_at(jiff::Timestamp::UNIX_EPOCH) {
        Err(JournalError::NotKept { oldest, .. }) => assert_eq!(oldest, first),
        other => panic!("{other:?}"),
    }
    // From a kept record: the cursor goes back, and forward from there with acknowledgements.
    assert_eq!(journal.rewind("sms", first + 1).await.unwrap(), first + 1);
    assert_eq!(journal.status().borrow().cursors["sms"], first + 1);
    assert!(matches!(
        journal.rewind("nobody", first).await,
        Err(JournalError::UnknownDestination(_))
    ));
    // Never forward: a rewind past the cursor leaves it.
    assert_eq!(journal.rewind("sms", appended.next).await.unwrap(), first + 1);
    // The time of a kept record finds it; a time after everything is the end.
    let at = journal.read(first + 5, 1).unwrap()[0].header.appended_at_ms;
    let found = journal.seq_at(jiff::Timestamp::from_millisecond(at).unwrap()).unwrap();
    assert!(found <= first + 5 && journal.read(found, 1).unwrap()[0].header.appended_at_ms == at);
    let later = jiff::Timestamp::from_millisecond(at + 3_600_000).unwrap();
    assert_eq!(journal.seq_at(later).unwrap(), *journal.durable().borrow());
    // Durable: a reopened journal has the rewound cursor.
    drop(journal);
    tokio::task::spawn_blocking(move || writer.join()).await.unwrap().unwrap();
    let (journal, _writer) = Journal::open(config).unwrap();
    assert_eq!(journal.status().borrow().cursors["sms"], first + 1);
}

#[tokio::test]
async fn the_status_dates_the_oldest_record_a_destination_has_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path(), Duration::from_secs(3600));
    let (journal, _writer) = Journal::open(config).unwrap();
    let mut status = journal.status();
    let oldest = |status: &watch::Receiver<JournalStatus>| status.borrow().oldest_unacknowledged_at;
    assert_eq!(oldest(&status), None, "nothing journalled");
    let appended = journal.append(vec![alarm(0), alarm(1), alarm(2)]).await.unwrap();
    let appended_at = |seq| {
        let ms = journal.read(seq, 1).unwrap()[0].header.appended_at_ms;
        jiff::Timestamp::from_millisecond(ms).unwrap()
    };
    let settle = async |status: &mut watch::Receiver<JournalStatus>,
                        want: Option<jiff::Timestamp>| {
        tokio::time::timeout(Duration::from_secs(5), async {
            while status.borrow_and_update().oldest_unacknowledged_at != want {
                status.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{:?} != {want:?}", status.borrow().oldest_unacknowledged_at));
    };
    settle(&mut status, Some(appended_at(appended.first))).await;
    journal.acknowledge("sms", appended.first).await.unwrap();
    settle(&mut status, Some(appended_at(appended.first + 1))).await;
    journal.acknowledge("sms", appended.next - 1).await.unwrap();
    settle(&mut status, None).await;
}

#[tokio::test]
async fn acknowledged_segments_are_removed_without_further_commands() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path(), Duration::ZERO);
    let (journal, _writer) = Journal::open(config.clone()).unwrap();
    let appended = fill(&journal, 40).await;
    let before = segments(&config);
    assert!(before > 3, "the log rolled: {before} segments");
    journal.acknowledge("sms", appended.next - 1).await.unwrap();
    let late = journal.append(vec![alarm(0)]).await.unwrap();
    assert_eq!(late.first, appended.next);
    down_to_one_segment(&journal, &config).await;
    // Only the active segment is left; reads start at its first record.
    let first = journal.status().borrow().first_seq;
    assert!(first > 0 && first <= appended.next, "first kept seq {first}");
    assert_eq!(journal.read(0, 10).unwrap()[0].header.seq, first);
}

#[tokio::test]
async fn retention_keeps_acknowledged_segments_until_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path(), Duration::from_secs(3600));
    let (journal, writer) = Journal::open(config.clone()).unwrap();
    let appended = fill(&journal, 40).await;
    let before = segments(&config);
    journal.acknowledge("sms", appended.next - 1).await.unwrap();
    // Two writer turns: nothing removed, the records are inside the retention period.
    journal.append(vec![alarm(0)]).await.unwrap();
    journal.append(vec![alarm(1)]).await.unwrap();
    assert_eq!(segments(&config), before);
    assert_eq!(journal.status().borrow().first_seq, 0);
    drop(journal);
    tokio::task::spawn_blocking(move || writer.join()).await.unwrap().unwrap();
    // The same journal with no retention: removed at once.
    let config = JournalConfig { retain_acknowledged: Duration::ZERO, ..config };
    let (journal, _writer) = Journal::open(config.clone()).unwrap();
    journal.append(vec![alarm(2)]).await.unwrap();
    down_to_one_segment(&journal, &config).await;
}
