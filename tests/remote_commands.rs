//! Remote commands (issue 10) at the verification + store + executor level: the rejection
//! matrix (every hostile command refused with its reason, audited, nothing sent to a machine),
//! replay, and the command journal against a power cut (tests/powercut).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;
mod powercut;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use ed25519_dalek::SigningKey;
use firmware_protocols::sas::{LongPoll, RemoteControl};
use jiff::Timestamp;
use slotgate::command::audit::{AuditRecord, AuditState};
use slotgate::command::envelope::{Action, Envelope, MAX_ENVELOPE_BYTES, encode_hex};
use slotgate::command::executor::{Executor, Observation, Output};
use slotgate::command::store::{Admission, CommandStore, State, sled_durable_flush};
use slotgate::command::verify::{RejectReason, Verifier};
use slotgate::config::Config;
use uuid::Uuid;

const NOW: &str = "2026-12-07T03:00:00Z";

fn now() -> Timestamp {
    NOW.parse().unwrap()
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// A configuration with three machines and four issuer keys, the public keys in real files.
fn config(dir: &Path) -> Config {
    for (name, seed) in [("reg", 1), ("ops", 2), ("old", 3), ("second", 4)] {
        let public = encode_hex(key(seed).verifying_key().as_bytes());
        std::fs::write(dir.join(format!("{name}.pub")), format!("{public}\n")).unwrap();
    }
    let text = r#"
[venue]
id = "UA-1"
currency = "UAH"
time_zone = "Europe/Kyiv"

[storage]
dir = "state"

[[line]]
name = "a"
kind = "tcp"
address = "127.0.0.1:4001"

[[line.machine]]
address = 1
registry_id = "EGM-1"

[[line.machine]]
address = 2
registry_id = "EGM-2"

[[line.machine]]
address = 3
registry_id = "EGM-3"

[commands]
max_clock_skew = "1m"
bulk_threshold = 2
bulk_signatures = 2

[[commands.keys]]
id = "reg-2026"
public_key_file = "reg.pub"
roles = ["disable", "enable"]

[[commands.keys]]
id = "ops"
public_key_file = "ops.pub"
roles = ["disable"]

[[commands.keys]]
id = "reg-2025"
public_key_file = "old.pub"
roles = ["disable", "enable"]
retired = true

[[commands.keys]]
id = "second"
public_key_file = "second.pub"
roles = ["disable", "enable"]
"#;
    let config = Config::from_toml_str(&dir.join("slotgate.toml"), text).unwrap();
    config.check_files(false).unwrap();
    config
}

fn machines(config: &Config) -> Vec<String> {
    config.lines.iter().flat_map(|l| &l.machines).map(|m| m.registry_id.to_string()).collect()
}

fn command(id: u128, targets: &[&str], action: Action) -> Envelope {
    Envelope {
        id: Uuid::from_u128(id),
        targets: targets.iter().map(|t| (*t).to_owned()).collect(),
        action,
        reason: "regulator order".into(),
        issued_at: now(),
        not_before: now(),
        expires_at: now() + jiff::SignedDuration::from_mins(30),
        signatures: Vec::new(),
    }
}

fn signed(mut envelope: Envelope, key_id: &str, seed: u8) -> Vec<u8> {
    envelope.sign(key_id, &key(seed));
    envelope.to_json().into_bytes()
}

/// The gateway's path for one inbound command: verify, then reject or admit, then execute.
struct Gateway {
    verifier: Verifier,
    store: CommandStore,
    executor: Executor,
    machines: Vec<String>,
    audit: Vec<AuditRecord>,
    sent: Vec<(String, RemoteControl)>,
    db: sled::Db,
}

impl Gateway {
    fn new(dir: &Path) -> Self {
        let config = config(dir);
        let db =
            sled::Config::new().path(dir.join("commands")).flush_every_ms(None).open().unwrap();
        let flush = sled_durable_flush(db.clone(), &dir.join("commands")).unwrap();
        let store = CommandStore::new(db.open_tree("commands").unwrap(), flush);
        let machines = machines(&config);
        let mut executor = Executor::new(&config.commands, machines.clone(), Vec::new(), &[]);
        for m in &machines {
            assert!(executor.observe(now(), m, Observation::LinkUp).is_empty());
        }
        Self {
            verifier: Verifier::load(&config.commands).unwrap(),
            store,
            executor,
            machines,
            audit: Vec::new(),
            sent: Vec::new(),
            db,
        }
    }

    fn receive(&mut self, bytes: &[u8], at: Timestamp) -> Result<Admission, RejectReason> {
        let machines = self.machines.clone();
        match self.verifier.check(bytes, at, |m| machines.iter().any(|k| k == m)) {
            Err(rejection) => {
                self.store.reject(&rejection, "mqtt:dsom", at, &mut self.audit).unwrap();
                Err(rejection.reason)
            }
            Ok(verified) => {
                let admission =
                    self.store.admit(&verified, "mqtt:dsom", at, &mut self.audit).unwrap();
                if let Admission::New(record) = &admission {
                    let outputs = self.executor.submit(at, record);
                    self.apply(outputs, at);
                }
                Ok(admission)
            }
        }
    }

    fn apply(&mut self, outputs: Vec<Output>, at: Timestamp) {
        for output in outputs {
            match output {
                Output::Step(step) => {
                    self.store.advance(&step, at, &mut self.audit).unwrap();
                }
                Output::Send { machine, control, .. } => self.sent.push((machine, control)),
            }
        }
    }
}

#[test]
fn every_hostile_command_is_rejected_audited_and_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gateway::new(dir.path());
    let disable = |id| command(id, &["EGM-1"], Action::Disable);

    let forged = {
        // Signed by a key nobody trusts, under a trusted key's id.
        signed(disable(1), "reg-2026", 99)
    };
    let tampered = {
        let mut e = disable(2);
        e.sign("reg-2026", &key(1));
        e.targets = vec!["EGM-2".into()];
        e.to_json().into_bytes()
    };
    let expired = {
        let mut e = disable(7);
        e.issued_at = now() - jiff::SignedDuration::from_hours(2);
        e.not_before = e.issued_at;
        e.expires_at = now() - jiff::SignedDuration::from_hours(1);
        signed(e, "reg-2026", 1)
    };
    let future_dated = {
        let mut e = disable(8);
        e.issued_at = now() + jiff::SignedDuration::from_mins(10);
        e.not_before = e.issued_at;
        e.expires_at = now() + jiff::SignedDuration::from_hours(1);
        signed(e, "reg-2026", 1)
    };
    let not_yet_valid = {
        let mut e = disable(9);
        e.not_before = now() + jiff::SignedDuration::from_mins(10);
        signed(e, "reg-2026", 1)
    };
    let oversized = {
        let mut e = disable(11);
        e.reason = "x".repeat(MAX_ENVELOPE_BYTES);
        signed(e, "reg-2026", 1)
    };
    let bulk_one_signature =
        signed(command(13, &["EGM-1", "EGM-2", "EGM-3"], Action::Disable), "reg-2026", 1);
    let cases: Vec<(&str, Vec<u8>, RejectReason)> = vec![
        ("forged", forged, RejectReason::BadSignature),
        ("tampered", tampered, RejectReason::BadSignature),
        ("unsigned", disable(3).to_json().into_bytes(), RejectReason::MissingSignature),
        ("wrong key", signed(disable(4), "nobody", 1), RejectReason::UnknownKey),
        ("retired key", signed(disable(5), "reg-2025", 3), RejectReason::RetiredKey),
        (
            "wrong role",
            signed(command(6, &["EGM-1"], Action::Enable), "ops", 2),
            RejectReason::RoleNotAllowed,
        ),
        ("expired", expired, RejectReason::Expired),
        ("future-dated", future_dated, RejectReason::ClockSkew),
        ("not yet valid", not_yet_valid, RejectReason::NotYetValid),
        (
            "unknown machine",
            signed(command(10, &["EGM-9"], Action::Disable), "reg-2026", 1),
            RejectReason::UnknownMachine,
        ),
        ("oversized", oversized, RejectReason::Oversized),
        (
            "malformed",
            br#"{"id":"6f1c9a52-8d0e-4b7a-9c3e-2a5b8f4d1e07","action":"disable"}"#.to_vec(),
            RejectReason::Malformed,
        ),
        (
            "unknown action",
            String::from_utf8(signed(disable(12), "reg-2026", 1))
                .unwrap()
                .replace("\"disable\"", "\"redeem_ticket\"")
                .into_bytes(),
            RejectReason::Malformed,
        ),
        ("bulk, one signature", bulk_one_signature, RejectReason::MissingSignature),
    ];
    for (name, bytes, reason) in &cases {
        let audited = g.audit.len();
        assert_eq!(g.receive(bytes, now()).unwrap_err(), *reason, "{name}");
        let new = &g.audit[audited..];
        assert_eq!(new.len(), 1, "{name}: one audit record");
        assert_eq!(new[0].state, AuditState::Step(State::Rejected), "{name}");
        let event = serde_json::to_value(new[0].event_kind()).unwrap();
        assert_eq!(event["kind"], "remote_command");
        assert_eq!(event["data"]["reason"], reason.name(), "{name}");
        assert_eq!(event["data"]["state"], "rejected");
    }
    assert!(g.sent.is_empty(), "nothing reached a machine: {:?}", g.sent);
    assert!(g.machines.iter().all(|m| g.executor.desired(m).is_none()));
    // Unauthenticated refusals do not burn the id; authenticated ones are kept as rejected.
    assert_eq!(g.store.get(Uuid::from_u128(1)).unwrap(), None);
    assert_eq!(g.store.get(Uuid::from_u128(7)).unwrap().unwrap().state, State::Rejected);

    // The genuine command with the forged one's id still runs; the expired one's id does not.
    assert!(matches!(g.receive(&signed(disable(1), "reg-2026", 1), now()), Ok(Admission::New(_))));
    assert_eq!(g.sent, [("EGM-1".to_owned(), RemoteControl::Shutdown)]);
    let mut fresh = disable(7);
    fresh.issued_at = now();
    let Ok(Admission::Duplicate(stored)) = g.receive(&signed(fresh, "reg-2026", 1), now()) else {
        panic!("a rejected id stays rejected")
    };
    assert_eq!(stored.state, State::Rejected);
    // A bulk command with two signatures from distinct keys runs.
    let mut bulk = command(14, &["EGM-1", "EGM-2", "EGM-3"], Action::Disable);
    bulk.sign("reg-2026", &key(1));
    bulk.sign("second", &key(4));
    assert!(matches!(g.receive(bulk.to_json().as_bytes(), now()), Ok(Admission::New(_))));
    assert_eq!(g.sent.len(), 4);
}

#[test]
fn a_replayed_command_returns_the_stored_result_and_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gateway::new(dir.path());
    let bytes = signed(command(20, &["EGM-2"], Action::Disable), "reg-2026", 1);
    let Ok(Admission::New(record)) = g.receive(&bytes, now()) else { panic!() };
    assert_eq!(record.state, State::Verified);
    let states: Vec<_> = g.audit.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        [
            AuditState::Step(State::Received),
            AuditState::Step(State::Verified),
            AuditState::Step(State::Sent)
        ]
    );
    let ack =
        g.executor.observe(now(), "EGM-2", Observation::Acknowledged(RemoteControl::Shutdown));
    g.apply(ack, now());
    let later = now() + jiff::SignedDuration::from_mins(5);
    for _ in 0..3 {
        let Ok(Admission::Duplicate(stored)) = g.receive(&bytes, later) else { panic!() };
        assert_eq!(stored.state, State::Confirmed);
    }
    assert_eq!(g.sent, [("EGM-2".to_owned(), RemoteControl::Shutdown)], "sent once");
    let replays: Vec<_> =
        g.audit.iter().filter(|r| r.state == AuditState::Step(State::Rejected)).collect();
    assert_eq!(replays.len(), 3);
    assert!(replays.iter().all(|r| r.reason.unwrap().name() == "replayed"));
    let history: Vec<_> = g
        .store
        .get(Uuid::from_u128(20))
        .unwrap()
        .unwrap()
        .history
        .iter()
        .map(|t| t.state)
        .collect();
    assert_eq!(history, [State::Received, State::Verified, State::Sent, State::Confirmed]);
}

#[test]
fn only_shutdown_and_startup_can_come_out_of_the_command_path() {
    // Every value the executor can send, as the poll the line task would enqueue.
    for control in [RemoteControl::Shutdown, RemoteControl::Startup] {
        let poll = LongPoll::from(control);
        assert!(matches!(poll, LongPoll::Shutdown | LongPoll::Startup), "{poll:?}");
        assert!([0x01, 0x02].contains(&poll.command()));
    }
    // The exhaustive match fails to compile if a third value is ever added.
    let _ = |c: RemoteControl| match c {
        RemoteControl::Shutdown | RemoteControl::Startup => (),
    };
    // And the envelope cannot name any other action: a redeem-ticket request is malformed.
    let mut json: serde_json::Value =
        serde_json::from_str(&command(1, &["EGM-1"], Action::Disable).to_json()).unwrap();
    for action in ["redeem_ticket", "lp71", "set_date_time", "0x71", "DISABLE"] {
        json["action"] = action.into();
        assert!(
            slotgate::command::envelope::parse(json.to_string().as_bytes()).is_err(),
            "{action}"
        );
    }
}

// === Power cut ===

const CHILD_ENV: &str = "SLOTGATE_COMMAND_POWERCUT_CHILD";

/// The child of the power-cut test: admits and sends a disable, reports, waits to be killed.
#[test]
fn powercut_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let (mode, dir) = spec.split_once(':').unwrap();
    let dir = Path::new(dir);
    std::fs::create_dir_all(dir).unwrap();
    slotgate::durable::sync_dir(dir).unwrap();
    slotgate::durable::sync_dir(dir.parent().unwrap()).unwrap();
    let mut g = Gateway::new(dir);
    if mode == "plain" {
        // sled's own flush only, to show the test can fail.
        let db = g.db.clone();
        g.store = CommandStore::new(
            db.open_tree("commands").unwrap(),
            Box::new(move || db.flush().map(|_| ()).map_err(std::io::Error::other)),
        );
    }
    let bytes = signed(command(30, &["EGM-3"], Action::Disable), "reg-2026", 1);
    assert!(matches!(g.receive(&bytes, now()), Ok(Admission::New(_))));
    assert_eq!(g.sent.len(), 1);
    println!("SENT");
    loop {
        std::thread::park();
    }
}

fn run_child_then_cut(fs: &powercut::Mounted, mode: &str, dir: &Path) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "powercut_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{mode}:{}", dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let sent = out.lines().any(|l| l.unwrap().ends_with("SENT"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(sent, "the {mode} child sent the command");
    fs.cut();
}

#[test]
fn a_sent_command_and_the_desired_state_survive_a_power_cut_and_never_run_twice() {
    let mount = tempfile::tempdir().unwrap();
    let fs = powercut::mount(mount.path()).unwrap();
    let dir = fs.path().join("durable");
    run_child_then_cut(&fs, "durable", &dir);

    // The key files live in the power-cut mount too, and were never fsynced: write them again.
    let mut g = Gateway::new(&dir);
    let record = g.store.get(Uuid::from_u128(30)).unwrap().expect("the command survived the cut");
    assert_eq!(record.target("EGM-3"), Some(State::Sent));
    let desired = g.store.desired().unwrap();
    assert_eq!(desired.len(), 1);
    assert_eq!((desired[0].0.as_str(), desired[0].1.action), ("EGM-3", Action::Disable));

    // Restarted: the desired state is re-asserted at link-up; the command is not run again.
    let config = config(&dir);
    let mut executor = Executor::new(&config.commands, machines(&config), desired, &[record]);
    let outputs = executor.observe(now(), "EGM-3", Observation::LinkUp);
    assert!(
        matches!(
            &outputs[..],
            [Output::Send { control: RemoteControl::Shutdown, reassert: Some(_), .. }]
        ),
        "{outputs:?}"
    );
    let bytes = signed(command(30, &["EGM-3"], Action::Disable), "reg-2026", 1);
    assert!(matches!(g.receive(&bytes, now()), Ok(Admission::Duplicate(_))));
    assert!(g.sent.is_empty());
    drop(g);

    // Without the durable hook (sled's flush alone) the same cut loses the command.
    let plain = fs.path().join("plain");
    run_child_then_cut(&fs, "plain", &plain);
    let g = Gateway::new(&plain);
    assert_eq!(g.store.get(Uuid::from_u128(30)).unwrap(), None, "sled's flush is not durable");
}

/// The executor learns from the normalizer's real output: the ACK of LP 01, a power-up, a game
/// start and end, a link change, a failed LP 02.
#[test]
fn the_executor_reads_what_it_needs_from_canonical_events() {
    use firmware_protocols::sas::session::{PollError, SessionEvent};
    use firmware_protocols::sas::{Exception, Reply};

    let mut normalizer = common::normalizer("UA-1", "EGM-1", 1);
    let cases = [
        (SessionEvent::LinkUp, Some(Observation::LinkUp)),
        (SessionEvent::LinkDown, Some(Observation::LinkDown)),
        (
            SessionEvent::Reply { poll: LongPoll::Shutdown, reply: Reply::Ack },
            Some(Observation::Acknowledged(RemoteControl::Shutdown)),
        ),
        (
            SessionEvent::Reply { poll: LongPoll::Startup, reply: Reply::Ack },
            Some(Observation::Acknowledged(RemoteControl::Startup)),
        ),
        (SessionEvent::Exception(Exception::AcPowerApplied), Some(Observation::PowerUp)),
        (SessionEvent::Exception(Exception::GameStarted), Some(Observation::GameStarted)),
        (SessionEvent::Exception(Exception::GameEnded), Some(Observation::GameEnded)),
        (SessionEvent::Exception(Exception::SlotDoorOpened), None),
        (
            SessionEvent::PollFailed { poll: LongPoll::Startup, error: PollError::Timeout },
            Some(Observation::PollFailed(RemoteControl::Startup)),
        ),
    ];
    for (i, (session_event, expected)) in cases.into_iter().enumerate() {
        let at = now() + jiff::SignedDuration::from_secs(i as i64);
        let events = normalizer.handle(at, &session_event).unwrap();
        let observed: Vec<_> = events.iter().filter_map(Observation::from_event).collect();
        assert_eq!(observed, expected.into_iter().collect::<Vec<_>>(), "{session_event:?}");
    }
}

/// The remote-command task as the daemon runs it: a real journal (audit trail and the events
/// it observes), a real sled store, the line's real command channel with the test answering as
/// the line task. A signed disable is journalled, sent as LP 01 ahead of everything and
/// confirmed by the machine's ACK read back from the journal; its replay and a forgery are
/// answered without anything reaching the line; every audit record is numbered without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_task_journals_sends_only_lp01_and_confirms_from_the_journal() {
    use firmware_protocols::sas::Reply;
    use firmware_protocols::sas::session::SessionEvent;
    use slotgate::command::journal_sink::{AUDIT_MACHINE, JournalSink};
    use slotgate::command::service::{Outcome, Service};
    use slotgate::event::{CanonicalEvent, EventKind, VenueId};
    use slotgate::journal::{Body, Journal, JournalConfig};
    use slotgate::normalizer::Normalizer;
    use slotgate::poller::LineCommand;

    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (journal, writer) =
        Journal::open(JournalConfig::in_dir(&dir.path().join("journal"))).unwrap();
    let db = sled::open(dir.path().join("commands")).unwrap();
    let flush = sled_durable_flush(db.clone(), &dir.path().join("commands")).unwrap();
    let store = CommandStore::new(db.open_tree("commands").unwrap(), flush);
    let venue_id = VenueId::new("UA-1").unwrap();
    let time_zone = jiff::tz::TimeZone::get("Europe/Kyiv").unwrap();
    let sink =
        JournalSink::open(journal.clone(), tokio::runtime::Handle::current(), venue_id, time_zone)
            .unwrap();
    let (line, mut line_commands) = slotgate::poller::command::channel("a");
    let lines = machines(&config).into_iter().map(|m| (m, line.clone())).collect();
    let verifier = Verifier::load(&config.commands).unwrap();
    let (service, submitter) =
        Service::new(&config.commands, verifier, store, sink, journal.clone(), lines).unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(service.run(cancel.clone()));

    // The machine's own events, as its line task journals them.
    let mut normalizer = common::normalizer("UA-1", "EGM-1", 1);
    let journal_machine_event = |normalizer: &mut Normalizer, event: SessionEvent| {
        let events = normalizer.handle(Timestamp::now(), &event).unwrap();
        let events: Vec<_> = events.into_iter().map(|e| (e, Vec::new())).collect();
        let journal = journal.clone();
        async move { journal.append_events(&events).await.unwrap() }
    };
    journal_machine_event(&mut normalizer, SessionEvent::LinkUp).await;

    let fresh = |id: u128| {
        let mut envelope = command(id, &["EGM-1"], Action::Disable);
        // The envelope carries whole seconds.
        envelope.issued_at = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
        envelope.not_before = envelope.issued_at;
        envelope.expires_at = envelope.issued_at + jiff::SignedDuration::from_mins(30);
        envelope
    };
    let disable = signed(fresh(1), "reg-2026", 1);
    let submitted = tokio::spawn({
        let submitter = submitter.clone();
        let disable = disable.clone();
        async move { submitter.submit(disable, "admin:uid=0".into()).await }
    });
    let sent = tokio::time::timeout(std::time::Duration::from_secs(10), line_commands.recv()).await;
    let sent = match sent {
        Ok(sent) => sent.unwrap(),
        Err(_) => panic!("nothing sent: {:?}", submitted.await),
    };
    match sent {
        LineCommand::RemoteControl { machine, control, reply } => {
            assert_eq!((machine.as_str(), control), ("EGM-1", RemoteControl::Shutdown));
            reply.send(Ok(())).unwrap();
        }
        other => panic!("not a remote control: {other:?}"),
    }
    let outcome = submitted.await.unwrap().unwrap();
    assert_eq!(outcome, Outcome::Accepted { command_id: Uuid::from_u128(1), state: State::Sent });

    // The ACK of LP 01, journalled by the line: the task reads it back and confirms.
    journal_machine_event(
        &mut normalizer,
        SessionEvent::Reply { poll: LongPoll::Shutdown, reply: Reply::Ack },
    )
    .await;

    let replay = submitter.submit(disable, "mqtt:state".into()).await.unwrap();
    assert!(matches!(replay, Outcome::Duplicate { .. }), "{replay:?}");
    let forged = submitter.submit(signed(fresh(2), "reg-2026", 9), "mqtt:state".into()).await;
    assert!(
        matches!(&forged, Ok(Outcome::Rejected { reason, .. }) if reason == "bad_signature"),
        "{forged:?}"
    );
    assert!(line_commands.try_recv().is_err(), "a replay or a forgery reached the line");

    let audit = || -> Vec<CanonicalEvent> {
        journal
            .read(0, 1000)
            .unwrap()
            .into_iter()
            .filter_map(|r| match r.body {
                Some(Body::Event { canonical_json, .. }) => {
                    Some(serde_json::from_slice::<CanonicalEvent>(&canonical_json).unwrap())
                }
                _ => None,
            })
            .filter(|e| e.machine.registry_id.as_str() == AUDIT_MACHINE)
            .collect()
    };
    let state = |e: &CanonicalEvent| match &e.kind {
        EventKind::RemoteCommand { state, command_id, .. } => (*command_id, state.clone()),
        other => panic!("not an audit record: {other:?}"),
    };
    // The confirmation is audited once the task has read the ACK: wait on the journal.
    let mut durable = journal.durable();
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !audit().iter().any(|e| state(e).1 == "confirmed") {
            durable.changed().await.unwrap();
        }
    })
    .await
    .expect("the ACK confirmed the command");
    let trail: Vec<_> = audit().iter().map(state).collect();
    let one = Some(Uuid::from_u128(1));
    let expected: Vec<(Option<Uuid>, String)> = [
        (one, "received"),
        (one, "verified"),
        (one, "sent"),
        (one, "confirmed"),
        (one, "rejected"),
        (Some(Uuid::from_u128(2)), "rejected"),
    ]
    .into_iter()
    .map(|(id, s)| (id, s.to_owned()))
    .collect();
    let mut sorted = trail.clone();
    sorted.sort();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(sorted, expected_sorted, "{trail:?}");
    let seqs: Vec<u64> = audit().iter().map(|e| e.machine_seq).collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());

    cancel.cancel();
    task.await.unwrap().unwrap();
    drop((submitter, line, journal));
    tokio::task::spawn_blocking(move || writer.join()).await.unwrap().unwrap();
}
