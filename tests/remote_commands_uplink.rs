//! Remote commands (issue 10) arriving the way the state system sends them: published on the
//! MQTT command topics of a real mosquitto, and served as pending commands by a real HTTPS
//! receiver. End to end with the real binary and simulator: a signed disable stops play, its
//! audit trail reaches the state system, an enable restores play. In process: the PUBACK of a
//! command waits for the journal, and hostile pending-command answers submit nothing.

// Real processes and peers in real time (tests/common): std clocks and sleeps are theirs.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;
mod line_support;
mod upstream;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{read_json_lines, run_gateway, simulate, write_config};
use ed25519_dalek::SigningKey;
use jiff::Timestamp;
use serde_json::Value;
use slotgate::command::envelope::{Action, Envelope, encode_hex};
use upstream::{
    Certs, Mosquitto, MosquittoOptions, RawMode, RawReceiver, Receiver, Subscriber, wait_until,
};
use uuid::Uuid;

const VENUE: &str = "UA-TEST-1";

fn issuer() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// `[commands]` trusting [`issuer`] for both actions, its public key written to `dir`; a
/// shutdown counts as done once 3 s pass without a game start.
fn commands_section(dir: &Path) -> String {
    let public = encode_hex(issuer().verifying_key().as_bytes());
    std::fs::write(dir.join("issuer.pub"), format!("{public}\n")).unwrap();
    "\n[commands]\nconfirm_window = \"3s\"\n\n[[commands.keys]]\nid = \"state-system\"\n\
     public_key_file = \"issuer.pub\"\nroles = [\"disable\", \"enable\"]\n"
        .to_owned()
}

/// A command for `machine`, valid from now for 30 minutes, signed by [`issuer`].
fn signed(id: u128, machine: &str, action: Action) -> Vec<u8> {
    let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
    let mut envelope = Envelope {
        id: Uuid::from_u128(id),
        targets: vec![machine.to_owned()],
        action,
        reason: "state system order".into(),
        issued_at: now,
        not_before: now,
        expires_at: now + jiff::SignedDuration::from_mins(30),
        signatures: Vec::new(),
    };
    envelope.sign("state-system", &issuer());
    envelope.to_json().into_bytes()
}

fn is_game_start(record: &Value) -> bool {
    record["type"] == "exception" && record["code"] == 0x7E
}

/// The ledger index of the first `name` command (`shutdown`, `startup`) at or after `from`.
fn command_at(ledger: &[Value], name: &str, from: usize) -> Option<usize> {
    ledger
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, r)| r["type"] == "command" && r["name"] == name)
        .map(|(at, _)| at)
}

/// The states of `command`'s `remote_command` audit events among `events` (canonical events).
fn audit_states(events: &[Value], command: u128) -> Vec<String> {
    let id = Uuid::from_u128(command).to_string();
    events
        .iter()
        .filter(|e| e["kind"] == "remote_command" && e["data"]["command_id"] == id.as_str())
        .map(|e| e["data"]["state"].as_str().unwrap().to_owned())
        .collect()
}

/// The simulated machine, playing a game about every second, and the gateway's config for it.
fn hall(dir: &Path) -> (common::Proc, String, std::path::PathBuf) {
    let ledger = dir.join("ledger.jsonl");
    let (sim, machines) = simulate(
        1,
        &ledger,
        &[
            "--rte",
            "--game-rate",
            "60",
            "--game-duration",
            "300ms",
            "--cashout-probability",
            "0",
            "--seed",
            "11",
        ],
    );
    let config = write_config(dir, &machines);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&commands_section(dir));
    std::fs::write(&config, text).unwrap();
    (sim, format!("EGM-{}", machines[0].serial), ledger)
}

fn add_destination(dir: &Path, destination: &str) -> std::path::PathBuf {
    let config = dir.join("slotgate.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(destination);
    std::fs::write(&config, text).unwrap();
    config
}

/// The disable / enable round the end-to-end tests share: `send` delivers a command the
/// destination's way, `upstream` reads the canonical events the state system received.
fn disable_then_enable(
    ledger_path: &Path,
    machine: &str,
    send: impl Fn(Vec<u8>),
    upstream: impl Fn() -> Vec<Value>,
) {
    let ledger = || read_json_lines(ledger_path);
    let starts = || ledger().iter().filter(|r| is_game_start(r)).count();
    assert!(wait_until(Duration::from_secs(60), || starts() >= 2), "the machine plays");

    send(signed(1, machine, Action::Disable));
    // LP 01 reaches the machine within one poll cycle of the command's arrival.
    assert!(
        wait_until(Duration::from_secs(30), || command_at(&ledger(), "shutdown", 0).is_some()),
        "no shutdown reached the machine; upstream: {:?}",
        audit_states(&upstream(), 1)
    );
    // Done: the confirm window (3 s) passed after the ACK with no game start.
    assert!(
        wait_until(Duration::from_secs(30), || audit_states(&upstream(), 1)
            .contains(&"done".to_owned())),
        "{:?}",
        audit_states(&upstream(), 1)
    );
    let records = ledger();
    let shutdown = command_at(&records, "shutdown", 0).unwrap();
    let after: Vec<&Value> =
        records.iter().skip(shutdown + 1).filter(|r| is_game_start(r)).collect();
    assert!(after.is_empty(), "games started after the shutdown: {after:?}");
    assert_eq!(
        audit_states(&upstream(), 1),
        ["received", "verified", "sent", "confirmed", "done"],
        "the audit trail, upstream"
    );

    send(signed(2, machine, Action::Enable));
    assert!(
        wait_until(Duration::from_secs(30), || {
            let records = ledger();
            command_at(&records, "startup", shutdown)
                .is_some_and(|at| records.iter().skip(at).any(is_game_start))
        }),
        "play did not resume; upstream: {:?}",
        audit_states(&upstream(), 2)
    );
    let records = ledger();
    let startup = command_at(&records, "startup", shutdown).unwrap();
    assert!(
        records.get(shutdown + 1..startup).unwrap().iter().all(|r| !is_game_start(r)),
        "no game started while disabled"
    );
    assert!(wait_until(Duration::from_secs(30), || audit_states(&upstream(), 2)
        .contains(&"done".to_owned())));
}

#[test]
fn a_disable_published_on_the_machines_command_topic_stops_play_and_an_enable_restores_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&dir.path().join("broker"), MosquittoOptions::default());
    let subscriber = Subscriber::start(broker.port(), &format!("slotgate/{VENUE}/+/events"), None);
    let (sim, machine, ledger) = hall(dir.path());
    let config = add_destination(
        dir.path(),
        &format!(
            "\n[[destination]]\nname = \"dsom\"\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{}\"\n\
             allow_plaintext = true\nkeep_alive = \"5s\"\n",
            broker.port()
        ),
    );
    let gateway = run_gateway(&config, &dir.path().join("run.log"));
    // The gateway subscribes before it publishes anything on a connection: its first event
    // upstream means the command topics are subscribed.
    assert!(subscriber.wait_for(1, Duration::from_secs(30)), "the gateway connected");

    let topic = format!("slotgate/{VENUE}/{machine}/commands");
    disable_then_enable(
        &ledger,
        &machine,
        |command| subscriber.publish(&topic, command),
        || subscriber.unique_events(),
    );
    let origins: Vec<Value> = subscriber
        .unique_events()
        .into_iter()
        .filter(|e| e["kind"] == "remote_command" && e["data"]["state"] == "received")
        .map(|e| e["data"]["origin"].clone())
        .collect();
    assert_eq!(origins, ["mqtt:dsom", "mqtt:dsom"]);
    assert!(gateway.terminate().success());
    sim.terminate();
}

#[test]
fn a_disable_served_as_a_pending_command_over_https_stops_play_and_an_enable_restores_it() {
    let dir = tempfile::tempdir().unwrap();
    upstream::install_crypto();
    let certs = Certs::generate(&dir.path().join("pki"));
    let receiver = Receiver::start(&certs, false);
    let (sim, machine, ledger) = hall(dir.path());
    let config = add_destination(
        dir.path(),
        &format!(
            "\n[[destination]]\nname = \"dsom\"\nkind = \"https\"\nurl = \"{}\"\n\
             ca_file = \"{}\"\ncommands_url = \"{}\"\ncommands_interval = \"1s\"\n",
            receiver.url(),
            certs.ca.display(),
            receiver.commands_url()
        ),
    );
    let gateway = run_gateway(&config, &dir.path().join("run.log"));
    let canonical = || receiver.events().into_iter().map(|e| e["data"].clone()).collect();
    disable_then_enable(
        &ledger,
        &machine,
        |command| receiver.set_pending_commands(vec![String::from_utf8(command).unwrap()]),
        canonical,
    );
    // Each command was acknowledged with its outcome, after it was journalled.
    let acks = receiver.command_acks();
    let acked: Vec<&str> = acks.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(acked, [Uuid::from_u128(1).to_string(), Uuid::from_u128(2).to_string()]);
    assert!(acks.iter().all(|(_, outcome)| outcome["outcome"] == "accepted"), "{acks:?}");
    let pending = receiver.requests().into_iter().find(|r| r.path == "/commands/pending").unwrap();
    assert!(pending.header("x-slotgate-gateway").is_some_and(|g| g.starts_with(VENUE)));
    assert!(gateway.terminate().success());
    sim.terminate();
}

// === In process: the daemon's command task and forwarders on a real journal ===

mod in_process {
    use firmware_protocols::sas::RemoteControl;
    use slotgate::command::journal_sink::JournalSink;
    use slotgate::command::service::{Service, Submitter};
    use slotgate::command::store::{CommandStore, sled_durable_flush};
    use slotgate::command::verify::Verifier;
    use slotgate::config::Config;
    use slotgate::event::VenueId;
    use slotgate::forward::CommandInbox;
    use slotgate::journal::{Journal, JournalConfig};
    use slotgate::poller::LineCommand;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use super::*;

    /// The real command task's submitter, with a journal that refuses the first `refuse`
    /// commands (as a journal that stopped does), counting what was handed over.
    #[derive(Debug)]
    pub(crate) struct Refusing {
        pub(crate) submitter: Submitter,
        pub(crate) refuse: usize,
        pub(crate) calls: AtomicUsize,
    }

    impl CommandInbox for Refusing {
        fn submit(
            &self,
            bytes: Vec<u8>,
            origin: String,
        ) -> std::pin::Pin<Box<dyn Future<Output = Result<String, String>> + Send>> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            if call < self.refuse {
                return Box::pin(async { Err("the journal refused the audit record".to_owned()) });
            }
            CommandInbox::submit(&self.submitter, bytes, origin)
        }
    }

    use std::future::Future;

    /// The gateway's parts with `destination` as its only destination: the journal, the
    /// command task (its line's commands come out of `line`), the forwarders.
    pub(crate) struct Daemon {
        pub(crate) journal: Journal,
        pub(crate) line: mpsc::Receiver<LineCommand>,
        pub(crate) inbox: Arc<Refusing>,
        cancel: CancellationToken,
        tasks: Vec<tokio::task::JoinHandle<()>>,
        writer: Option<slotgate::journal::WriterHandle>,
    }

    impl Daemon {
        pub(crate) fn start(dir: &Path, destination: &str, refuse: usize) -> Self {
            let text = format!(
                "[venue]\nid = \"{VENUE}\"\ncurrency = \"UAH\"\ntime_zone = \"Europe/Kyiv\"\n\n\
                 [storage]\ndir = \"state\"\n\n[[line]]\nname = \"a\"\nkind = \"tcp\"\n\
                 address = \"127.0.0.1:4001\"\n\n[[line.machine]]\naddress = 1\n\
                 registry_id = \"EGM-1\"\n{}{destination}",
                commands_section(dir)
            );
            let config = Config::from_toml_str(&dir.join("slotgate.toml"), &text).unwrap();
            config.check_files(false).unwrap();
            let journal_config = JournalConfig {
                destinations: config.destinations.iter().map(|d| d.name.clone()).collect(),
                ..JournalConfig::in_dir(&dir.join("journal"))
            };
            let (journal, writer) = Journal::open(journal_config).unwrap();
            let db = sled::open(dir.join("commands")).unwrap();
            let flush = sled_durable_flush(db.clone(), &dir.join("commands")).unwrap();
            let store = CommandStore::new(db.open_tree("commands").unwrap(), flush);
            let sink = JournalSink::open(
                journal.clone(),
                tokio::runtime::Handle::current(),
                VenueId::new(VENUE).unwrap(),
                jiff::tz::TimeZone::get("Europe/Kyiv").unwrap(),
            )
            .unwrap();
            let (handle, line) = slotgate::poller::command::channel("a");
            let machines = [("EGM-1".to_owned(), handle)].into_iter().collect();
            let verifier = Verifier::load(&config.commands).unwrap();
            let (service, submitter) =
                Service::new(&config.commands, verifier, store, sink, journal.clone(), machines)
                    .unwrap();
            let cancel = CancellationToken::new();
            let mut tasks = vec![tokio::spawn({
                let cancel = cancel.clone();
                async move { service.run(cancel).await.unwrap() }
            })];
            let inbox = Arc::new(Refusing { submitter, refuse, calls: AtomicUsize::new(0) });
            let (mut forwarders, _status, _replays) = slotgate::forward::spawn_all(
                &config,
                &journal,
                &cancel,
                Some(inbox.clone() as Arc<dyn CommandInbox>),
            )
            .unwrap();
            tasks
                .push(tokio::spawn(async move { while forwarders.join_next().await.is_some() {} }));
            Self { journal, line, inbox, cancel, tasks, writer: Some(writer) }
        }

        /// Journals EGM-1's link-up, as its line task would: the command task learns the
        /// machine is online.
        pub(crate) async fn journal_link_up(&self) {
            use firmware_protocols::sas::session::SessionEvent;
            let mut normalizer = common::normalizer(VENUE, "EGM-1", 1);
            let events = normalizer.handle(Timestamp::now(), &SessionEvent::LinkUp).unwrap();
            let events: Vec<_> = events.into_iter().map(|e| (e, Vec::new())).collect();
            self.journal.append_events(&events).await.unwrap();
        }

        /// Journals `n` alarm records, which every destination forwards.
        pub(crate) async fn journal_alarms(&self, n: usize) {
            let records = (0..n)
                .map(|i| slotgate::journal::NewRecord {
                    class: slotgate::journal::Class::Alarm,
                    machine: String::new(),
                    machine_seq: None,
                    body: slotgate::journal::Body::Alarm {
                        alarm: "test".into(),
                        level: "warning".into(),
                        message: format!("alarm {i}"),
                    },
                    snapshot_of: None,
                })
                .collect();
            self.journal.append(records).await.unwrap();
        }

        /// The states of `command` in the journal's audit trail.
        pub(crate) fn audit(&self, command: u128) -> Vec<String> {
            audit_states(&line_support::journal_events(&self.journal), command)
        }

        /// Waits for the command task's LP 01 to the machine and answers it as its line would.
        pub(crate) async fn expect_shutdown(&mut self) {
            let sent = tokio::time::timeout(Duration::from_secs(30), self.line.recv()).await;
            let calls = self.inbox.calls.load(Ordering::SeqCst);
            match sent.unwrap_or_else(|_| panic!("nothing sent; {calls} submission(s)")).unwrap() {
                LineCommand::RemoteControl { machine, control, reply } => {
                    assert_eq!((machine.as_str(), control), ("EGM-1", RemoteControl::Shutdown));
                    reply.send(Ok(())).unwrap();
                }
                other => panic!("not a remote control: {other:?}"),
            }
        }

        pub(crate) async fn stop(mut self) {
            self.cancel.cancel();
            for task in self.tasks.drain(..) {
                task.await.unwrap();
            }
            let writer = self.writer.take().unwrap();
            drop(self);
            tokio::task::spawn_blocking(move || writer.join()).await.unwrap().unwrap();
        }
    }
}

/// A command published while the journal refuses it is not acknowledged: the gateway
/// reconnects, the broker delivers it again from the persistent session, and this time it is
/// journalled, acknowledged and sent to the machine once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_the_journal_refused_is_not_acknowledged_and_comes_again_from_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&dir.path().join("broker"), MosquittoOptions::default());
    let subscriber = Subscriber::start(broker.port(), &format!("slotgate/{VENUE}/+/events"), None);
    let destination = format!(
        "\n[[destination]]\nname = \"dsom\"\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{}\"\n\
         allow_plaintext = true\nkeep_alive = \"5s\"\n",
        broker.port()
    );
    let mut daemon = in_process::Daemon::start(dir.path(), &destination, 1);
    daemon.journal_link_up().await;
    assert!(subscriber.wait_for_async(1, Duration::from_secs(30)).await, "the gateway connected");

    // On the venue's topic this time.
    subscriber.publish(&format!("slotgate/{VENUE}/commands"), signed(5, "EGM-1", Action::Disable));
    daemon.expect_shutdown().await;
    assert_eq!(daemon.inbox.calls.load(Ordering::SeqCst), 2, "refused once, delivered again");
    // Acknowledged now: events still flow on the same connection, the command does not come
    // a third time.
    let seen = subscriber.messages().len();
    daemon.journal_alarms(3).await;
    assert!(subscriber.wait_for_async(seen + 3, Duration::from_secs(30)).await);
    assert_eq!(daemon.inbox.calls.load(Ordering::SeqCst), 2);
    assert!(daemon.line.try_recv().is_err(), "sent once");
    assert_eq!(daemon.audit(5), ["received", "verified", "sent"], "journalled once");
    daemon.stop().await;
}

/// An HTTPS destination fetching pending commands every second.
fn https_destination(url: &str, commands: &str, certs: &Certs) -> String {
    format!(
        "\n[[destination]]\nname = \"dsom\"\nkind = \"https\"\nurl = \"{url}\"\n\
         ca_file = \"{}\"\ncommands_url = \"{commands}\"\ncommands_interval = \"1s\"\n",
        certs.ca.display()
    )
}

/// A pending command the journal refused is not acknowledged: the receiver serves it again,
/// and at the next fetch it is journalled, sent to the machine once and acknowledged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_command_the_journal_refused_is_not_acknowledged_and_taken_at_the_next_fetch() {
    upstream::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("pki"));
    let receiver = Receiver::start(&certs, false);
    let destination = https_destination(&receiver.url(), &receiver.commands_url(), &certs);
    let mut daemon = in_process::Daemon::start(dir.path(), &destination, 1);
    daemon.journal_link_up().await;
    let command = signed(7, "EGM-1", Action::Disable);
    receiver.set_pending_commands(vec![String::from_utf8(command).unwrap()]);

    daemon.expect_shutdown().await;
    assert_eq!(daemon.inbox.calls.load(Ordering::SeqCst), 2, "refused once, fetched again");
    let acked =
        upstream::wait_until_async(Duration::from_secs(10), || !receiver.command_acks().is_empty());
    assert!(acked.await, "acknowledged once journalled");
    // Acknowledged, the receiver stops serving it: later fetches bring nothing more.
    let polls = receiver.pending_polls();
    let fetched = upstream::wait_until_async(Duration::from_secs(10), || {
        receiver.pending_polls() >= polls + 2
    });
    assert!(fetched.await);
    let acks = receiver.command_acks();
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert_eq!(acks[0].0, Uuid::from_u128(7).to_string());
    assert_eq!(acks[0].1["outcome"], "accepted", "{acks:?}");
    assert_eq!(daemon.inbox.calls.load(Ordering::SeqCst), 2);
    assert!(daemon.line.try_recv().is_err(), "sent once");
    assert_eq!(daemon.audit(7), ["received", "verified", "sent"], "journalled once");
    let ack = receiver.requests().into_iter().find(|r| r.path.ends_with("/ack")).unwrap();
    assert_eq!(ack.header("x-slotgate-gateway").map(|g| g.starts_with(VENUE)), Some(true));
    daemon.stop().await;
}

/// A pending-commands endpoint that answers 404, redirects, or a 100 MB body gets nothing
/// submitted, while the destination's events keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pending_command_answers_submit_nothing_and_events_still_flow() {
    upstream::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("pki"));
    let receiver = Receiver::start(&certs, false);
    let https = |url: &str, commands: &str| https_destination(url, commands, &certs);
    let command = String::from_utf8(signed(6, "EGM-1", Action::Disable)).unwrap();
    for (round, (status, location)) in
        [(302, Some("https://elsewhere.example/commands")), (404, None)].into_iter().enumerate()
    {
        let run = dir.path().join(format!("run-{round}"));
        std::fs::create_dir_all(&run).unwrap();
        receiver.set_pending_commands(vec![command.clone()]);
        receiver.set_pending_answer(Some((status, location.map(str::to_owned))));
        let polls = receiver.pending_polls();
        // Every run journals the same alarm ids: count deliveries, repeats included.
        let delivered = || receiver.event_ids().len() + receiver.duplicates();
        let events = delivered();
        let daemon =
            in_process::Daemon::start(&run, &https(&receiver.url(), &receiver.commands_url()), 0);
        daemon.journal_alarms(5).await;
        let flowed =
            upstream::wait_until_async(Duration::from_secs(30), || delivered() >= events + 5);
        assert!(flowed.await, "events flow");
        let polled = upstream::wait_until_async(Duration::from_secs(10), || {
            receiver.pending_polls() >= polls + 2
        });
        assert!(polled.await, "the pending commands were asked for");
        daemon.journal_alarms(5).await;
        let flowed =
            upstream::wait_until_async(Duration::from_secs(30), || delivered() >= events + 10);
        assert!(flowed.await, "events still flow");
        assert_eq!(daemon.inbox.calls.load(Ordering::SeqCst), 0, "answer {status}");
        assert!(receiver.command_acks().is_empty());
        daemon.stop().await;
    }

    // 200 with a declared 100 MB body: refused unread. The same receiver takes the events.
    let raw = RawReceiver::start(&certs);
    raw.set_mode(RawMode::HugeBody);
    let run = dir.path().join("run-huge");
    std::fs::create_dir_all(&run).unwrap();
    let commands = raw.url().replace("/events", "/commands");
    let daemon = in_process::Daemon::start(&run, &https(&raw.url(), &commands), 0);
    daemon.journal_alarms(5).await;
    let pending =
        || raw.request_lines().iter().filter(|l| l.starts_with("get /commands/pending")).count();
    assert!(upstream::wait_until_async(Duration::from_secs(10), || pending() >= 2).await);
    assert!(upstream::wait_until_async(Duration::from_secs(30), || raw.ids().len() >= 5).await);
    assert_eq!(daemon.inbox.calls.load(Ordering::SeqCst), 0);
    assert!(raw.body_bytes_sent() < upstream::HUGE_BODY, "the body was not read to its end");
    daemon.stop().await;
}
