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

#[tokio::test]
async fn an_acknowledged_backlog_is_pruned_in_steps_without_further_commands() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = JournalConfig::in_dir(&dir.path().join("journal"));
    config.destinations = vec!["sms".into()];
    let (journal, _writer) = Journal::open(config).unwrap();
    let total = u32::try_from(PRUNE_STEP * 2 + 10).unwrap();
    let appended = journal.append((0..total).map(alarm).collect()).await.unwrap();
    journal.acknowledge("sms", appended.next - 1).await.unwrap();
    // Three steps: the writer must take the remaining ones on its own, and answer appends
    // in between.
    let late = journal.append(vec![alarm(total)]).await.unwrap();
    assert_eq!(late.first, appended.next);
    let mut status = journal.status();
    tokio::time::timeout(Duration::from_secs(10), async {
        while status.borrow_and_update().first_seq < appended.next {
            status.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    assert_eq!(journal.read(0, 10).unwrap()[0].header.seq, appended.next);
}
