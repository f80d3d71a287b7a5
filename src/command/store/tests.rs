#![allow(clippy::unwrap_used)]

use ed25519_dalek::SigningKey;

use super::*;
use crate::command::envelope::Envelope;
use crate::command::verify::Verified;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

fn verified(id: u128, targets: &[&str]) -> Verified {
    let mut envelope = Envelope {
        id: Uuid::from_u128(id),
        targets: targets.iter().map(|t| (*t).to_owned()).collect(),
        action: Action::Disable,
        reason: "test".into(),
        issued_at: at(0),
        not_before: at(0),
        expires_at: at(600),
        signatures: Vec::new(),
    };
    envelope.sign("k", &SigningKey::from_bytes(&[1; 32]));
    Verified { envelope, signers: vec!["k".into()] }
}

fn open(dir: &Path) -> (sled::Db, CommandStore) {
    let db = sled::Config::new().path(dir).flush_every_ms(None).open().unwrap();
    let flush = sled_durable_flush(db.clone(), dir).unwrap();
    let store = CommandStore::new(db.open_tree("commands").unwrap(), flush);
    (db, store)
}

fn step(id: u128, machine: &str, to: State) -> Step {
    Step { command: Uuid::from_u128(id), machine: machine.into(), to, reason: None, detail: None }
}

#[test]
fn targets_move_forward_only_and_the_command_aggregates_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, store) = open(dir.path());
    let mut audit = Vec::new();
    store.admit(&verified(1, &["A", "B"]), "admin:uid=0", at(1), &mut audit).unwrap();
    assert!(store.advance(&step(1, "A", State::Sent), at(2), &mut audit).unwrap());
    assert!(!store.advance(&step(1, "A", State::Sent), at(3), &mut audit).unwrap(), "twice");
    assert!(!store.advance(&step(1, "A", State::Verified), at(3), &mut audit).unwrap(), "back");
    assert_eq!(store.get(Uuid::from_u128(1)).unwrap().unwrap().state, State::Verified, "B lags");
    store.advance(&step(1, "B", State::Sent), at(4), &mut audit).unwrap();
    store.advance(&step(1, "A", State::Done), at(5), &mut audit).unwrap();
    assert_eq!(store.get(Uuid::from_u128(1)).unwrap().unwrap().state, State::Sent);
    store.advance(&step(1, "B", State::Failed), at(6), &mut audit).unwrap();
    assert!(!store.advance(&step(1, "B", State::Done), at(7), &mut audit).unwrap(), "terminal");
    let record = store.get(Uuid::from_u128(1)).unwrap().unwrap();
    assert_eq!(record.state, State::Failed);
    assert_eq!(record.history.len(), 6);
    assert_eq!(audit.len(), 6, "one audit record per transition, none for the no-ops");
    assert!(matches!(
        store.advance(&step(1, "C", State::Sent), at(8), &mut audit),
        Err(StoreError::UnknownTarget { .. })
    ));
    assert!(matches!(
        store.advance(&step(2, "A", State::Sent), at(8), &mut audit),
        Err(StoreError::UnknownCommand(_))
    ));
}

struct FailingSink;

impl AuditSink for FailingSink {
    fn append(&mut self, _: AuditRecord) -> Result<(), String> {
        Err("journal full".into())
    }
}

#[test]
fn nothing_is_stored_that_was_not_audited_first() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, store) = open(dir.path());
    let err = store.admit(&verified(1, &["A"]), "o", at(1), &mut FailingSink).unwrap_err();
    assert!(matches!(err, StoreError::Audit(_)), "{err}");
    assert_eq!(store.get(Uuid::from_u128(1)).unwrap(), None);
    store.admit(&verified(1, &["A"]), "o", at(1), &mut Vec::new()).unwrap();
    assert!(store.advance(&step(1, "A", State::Sent), at(2), &mut FailingSink).is_err());
    assert_eq!(store.get(Uuid::from_u128(1)).unwrap().unwrap().target("A"), Some(State::Verified));
    assert!(store.desired().unwrap().is_empty(), "not sent, so no desired state");
}

#[test]
fn records_and_desired_states_outlive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_db, store) = open(dir.path());
        let mut audit = Vec::new();
        store.admit(&verified(1, &["A"]), "o", at(1), &mut audit).unwrap();
        store.advance(&step(1, "A", State::Sent), at(2), &mut audit).unwrap();
    }
    let (_db, store) = open(dir.path());
    let desired = store.desired().unwrap();
    assert_eq!(desired.len(), 1);
    assert_eq!(desired[0].0, "A");
    assert_eq!(desired[0].1.command_id, Uuid::from_u128(1));
    let mut audit = Vec::new();
    let admission = store.admit(&verified(1, &["A"]), "o", at(900), &mut audit).unwrap();
    assert!(matches!(admission, Admission::Duplicate(r) if r.target("A") == Some(State::Sent)));
    assert_eq!(store.list(Some(State::Sent)).unwrap().len(), 1);
    assert!(store.list(Some(State::Done)).unwrap().is_empty());
}
