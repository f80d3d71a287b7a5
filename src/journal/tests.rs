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
