//! Forwarding against real peers: Debian's mosquitto on a loopback port of its own (behind a
//! fault proxy that drops connections, and restarted), and a local HTTPS receiver with
//! certificates generated here. The journal and the forwarders are slotgate's own, in process;
//! the events are synthetic canonical events appended to the journal.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod upstream;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use slotgate::config::Config;
use slotgate::forward::{DestinationStatus, LinkState};
use slotgate::journal::{Body, Class, Journal, NewRecord, WriterHandle};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use upstream::{
    Certs, FaultProxy, HUGE_BODY, Mosquitto, MosquittoOptions, RawMode, RawReceiver, Receiver,
    Subscriber, hmac_sha256_hex, wait_until,
};

const VENUE: &str = "UA-TEST-1";

/// The journal and the forwarders of one gateway, on a runtime of their own.
struct Forwarding {
    rt: tokio::runtime::Runtime,
    config: Config,
    journal: Option<Journal>,
    writer: Option<WriterHandle>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    statuses: Vec<watch::Receiver<DestinationStatus>>,
    replays: slotgate::forward::Replays,
}

fn config_text(dir: &Path, destinations: &str) -> PathBuf {
    let path = dir.join("slotgate.toml");
    let text = format!(
        r#"[venue]
id = "{VENUE}"
currency = "UAH"
time_zone = "Europe/Kyiv"
gateway_id = "gw-test"

[storage]
dir = "state"

[[line]]
name = "unused"
kind = "tcp"
address = "127.0.0.1:9"

  [[line.machine]]
  address = 1
  registry_id = "EGM-1"

{destinations}
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

impl Forwarding {
    fn start(dir: &Path, destinations: &str) -> Self {
        let config = Config::load(&config_text(dir, destinations)).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (journal, writer) = slotgate::app::open_journal(&config).unwrap();
        let cancel = CancellationToken::new();
        let (tasks, statuses, replays) = {
            let _guard = rt.enter();
            slotgate::forward::spawn_all(&config, &journal, &cancel, None).unwrap()
        };
        let journal = Some(journal);
        Self { rt, config, journal, writer: Some(writer), cancel, tasks, statuses, replays }
    }

    fn journal(&self) -> &Journal {
        self.journal.as_ref().unwrap()
    }

    /// Appends `count` events for each machine; returns their ids.
    fn append(&self, machines: &[&str], count: usize) -> Vec<String> {
        let mut ids = Vec::new();
        let mut records = Vec::new();
        for _ in 0..count {
            for &machine in machines {
                let (next, _) = self.journal().machine_state(machine).unwrap();
                let seq = next
                    + records.iter().filter(|r: &&NewRecord| r.machine == machine).count() as u64;
                let id = format!("{VENUE}/{machine}/{seq}");
                let json = serde_json::json!({
                    "schema_version": 1,
                    "idempotency_key": id,
                    "venue_id": VENUE,
                    "machine": { "registry_id": machine },
                    "machine_seq": seq,
                    "occurred_at": "2026-12-06T12:00:00Z",
                    "kind": "bet_accepted",
                    "data": { "seq": seq },
                });
                records.push(NewRecord {
                    class: Class::Financial,
                    machine: machine.to_owned(),
                    machine_seq: Some(seq),
                    body: Body::Event {
                        canonical_json: serde_json::to_vec(&json).unwrap(),
                        raw: vec![],
                    },
                    snapshot_of: None,
                });
                ids.push(id);
            }
        }
        self.rt.block_on(self.journal().append(records)).unwrap();
        ids
    }

    fn status(&self, i: usize) -> DestinationStatus {
        self.statuses[i].borrow().clone()
    }

    fn head(&self) -> u64 {
        *self.journal().durable().borrow()
    }

    fn cursor(&self, name: &str) -> u64 {
        self.journal().status().borrow().cursors.get(name).copied().unwrap_or(0)
    }

    /// Journal records of the alarm class.
    fn alarms(&self) -> Vec<String> {
        let records = self.journal().read(0, usize::MAX).unwrap();
        records
            .into_iter()
            .filter_map(|r| match r.body {
                Some(Body::Alarm { alarm, message, .. }) => Some(format!("{alarm}: {message}")),
                _ => None,
            })
            .collect()
    }

    fn stop(mut self) {
        self.cancel.cancel();
        self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(15), async {
                while self.tasks.join_next().await.is_some() {}
            })
            .await
            .expect("forwarders stop");
        });
        drop(self.journal.take());
        self.writer.take().unwrap().join().unwrap();
        let _ = &self.config;
    }
}

/// The CloudEvents a subscriber received, parsed.
fn received(subscriber: &Subscriber) -> Vec<Value> {
    subscriber.payloads().iter().map(|p| serde_json::from_slice(p).unwrap()).collect()
}

/// Every id once at least; duplicates identical to the first; each machine's events in order
/// within each lane.
fn assert_complete_and_ordered(events: &[Value], ids: &[String]) {
    let mut first: BTreeMap<String, Value> = BTreeMap::new();
    for event in events {
        let id = event["id"].as_str().unwrap().to_owned();
        match first.get(&id) {
            Some(earlier) => {
                assert_eq!(
                    earlier["gatewayseq"], event["gatewayseq"],
                    "{id}: a duplicate is the same event"
                );
                assert_eq!(earlier["data"], event["data"], "{id}: a duplicate is the same event");
            }
            None => {
                first.insert(id, event.clone());
            }
        }
    }
    let wanted: BTreeSet<&String> = ids.iter().collect();
    let missing: Vec<&&String> = wanted.iter().filter(|id| !first.contains_key(**id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} events never arrived, e.g. {:?}",
        missing.len(),
        ids.len(),
        &missing[..missing.len().min(5)]
    );
    // First arrivals per lane: each machine's seqs increase.
    let mut last: BTreeMap<(String, bool), u64> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for event in events {
        let id = event["id"].as_str().unwrap();
        if !seen.insert(id.to_owned()) {
            continue;
        }
        let machine = event["subject"].as_str().unwrap().to_owned();
        let historical = event["historical"].as_bool().unwrap();
        let seq: u64 = event["machineseq"].as_str().unwrap().parse().unwrap();
        if let Some(before) = last.insert((machine.clone(), historical), seq) {
            assert!(seq > before, "{machine} (historical {historical}): {seq} after {before}");
        }
    }
}

/// Events journalled while no destination is configured: a backlog for the next start.
fn journalled_offline(dir: &Path, machines: &[&str], count: usize) -> Vec<String> {
    let gw = Forwarding::start(dir, "");
    let ids = gw.append(machines, count);
    gw.stop();
    ids
}

const FAST_REPLAY: &str = "replay_rate = 20000\nreplay_burst = 2000";

fn mqtt_destination(name: &str, port: u16, extra: &str) -> String {
    format!(
        r#"[[destination]]
name = "{name}"
kind = "mqtt"
url = "mqtt://127.0.0.1:{port}"
allow_plaintext = true
keep_alive = "5s"
{extra}
"#
    )
}

#[test]
fn mqtt_link_cuts_and_a_broker_restart_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let options = MosquittoOptions { persistence: true, ..Default::default() };
    let mut broker = Mosquitto::start(&dir.path().join("broker"), options);
    let proxy = FaultProxy::start(broker.addr());
    let subscriber = Subscriber::start(broker.port(), "slotgate/#", None);
    let gw = Forwarding::start(dir.path(), &mqtt_destination("state", proxy.port(), FAST_REPLAY));
    let machines = ["EGM-1", "EGM-2", "EGM-3", "EGM-4"];
    let mut ids = Vec::new();
    for round in 0..30 {
        ids.extend(gw.append(&machines, 25));
        std::thread::sleep(Duration::from_millis(20));
        let before = proxy.connections();
        match round {
            8 | 16 => proxy.cut(),
            12 => {
                proxy.refuse(true);
                proxy.cut();
                std::thread::sleep(Duration::from_millis(700));
                proxy.refuse(false);
            }
            22 => broker.restart(),
            _ => continue,
        }
        // Traffic goes on while the forwarder reconnects; each fault costs a new connection.
        ids.extend(gw.append(&machines, 25));
        assert!(wait_until(Duration::from_secs(15), || proxy.connections() > before
            && gw.status(0).state == LinkState::Up));
    }
    let total = ids.len();
    let done = wait_until(Duration::from_secs(60), || {
        let got: BTreeSet<String> =
            received(&subscriber).iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
        got.len() >= total && gw.cursor("state") == gw.head()
    });
    let events = received(&subscriber);
    assert_complete_and_ordered(&events, &ids);
    assert!(done, "cursor {} head {} status {:?}", gw.cursor("state"), gw.head(), gw.status(0));
    assert!(proxy.connections() >= 4, "the cuts forced reconnects: {}", proxy.connections());
    let topics: BTreeSet<String> = subscriber.messages().into_iter().map(|(t, _)| t).collect();
    assert!(topics.contains("slotgate/UA-TEST-1/EGM-3/events"), "{topics:?}");
    gw.stop();
}

#[test]
fn a_dead_destination_never_holds_back_another_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&dir.path().join("broker"), MosquittoOptions::default());
    let subscriber = Subscriber::start(broker.port(), "slotgate/#", None);
    // Nothing listens on the second destination's port.
    let dead = upstream::free_port();
    let destinations = format!(
        "{}\n[[destination]]\nname = \"dead\"\nkind = \"https\"\nurl = \"http://127.0.0.1:{dead}/events\"\n\
         allow_plaintext = true\ntimeout = \"1s\"\n",
        mqtt_destination("state", broker.port(), FAST_REPLAY)
    );
    let gw = Forwarding::start(dir.path(), &destinations);
    let ids = gw.append(&["EGM-1", "EGM-2"], 100);
    assert!(subscriber.wait_for(ids.len(), Duration::from_secs(10)), "{:?}", gw.status(0));
    assert!(wait_until(Duration::from_secs(5), || gw.cursor("state") == gw.head()));
    assert_complete_and_ordered(&received(&subscriber), &ids);
    assert_eq!(gw.cursor("dead"), 0, "the journal keeps everything for the dead destination");
    let dead_status = gw.status(1);
    assert_eq!(dead_status.state, LinkState::Down, "{dead_status:?}");
    assert!(dead_status.last_error.is_some());
    gw.stop();
}

#[test]
fn mqtt_credentials_come_from_a_file_and_a_wrong_password_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = MosquittoOptions {
        users: vec![("gw-1".into(), "s3cret-token".into())],
        ..Default::default()
    };
    let broker = Mosquitto::start(&dir.path().join("broker"), options);
    let secret = dir.path().join("mqtt.password");
    std::fs::write(&secret, "wrong\n").unwrap();
    let extra = format!("username = \"gw-1\"\npassword_file = \"{}\"", secret.display());
    let dest = mqtt_destination("state", broker.port(), &extra);
    let gw = Forwarding::start(dir.path(), &dest);
    gw.append(&["EGM-1"], 5);
    assert!(wait_until(Duration::from_secs(10), || gw.status(0).last_error.is_some()));
    let error = gw.status(0).last_error.unwrap();
    assert!(error.contains("refused"), "{error}");
    assert_eq!(gw.cursor("state"), 0);
    gw.stop();

    std::fs::write(&secret, "s3cret-token\n").unwrap();
    let gw = Forwarding::start(dir.path(), &dest);
    assert!(
        wait_until(Duration::from_secs(10), || gw.cursor("state") == gw.head()),
        "{:?}",
        gw.status(0)
    );
    assert_eq!(gw.status(0).state, LinkState::Up);
    gw.stop();
}

#[test]
fn mqtt_live_events_overtake_a_backlog_that_replays_within_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&dir.path().join("broker"), MosquittoOptions::default());
    let subscriber = Subscriber::start(broker.port(), "slotgate/#", None);
    let backlog = journalled_offline(dir.path(), &["EGM-1", "EGM-2"], 1_500);
    let budget = "replay_rate = 1000\nreplay_burst = 100\norder = \"live-first\"";
    let gw = Forwarding::start(dir.path(), &mqtt_destination("state", broker.port(), budget));
    let started = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let live = gw.append(&["EGM-3"], 5);
    assert!(
        wait_until(Duration::from_secs(2), || {
            let got: BTreeSet<String> = received(&subscriber)
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_owned())
                .collect();
            live.iter().all(|id| got.contains(id))
        }),
        "live events arrive within 2 s while a 3,000-event backlog replays at 1,000/s"
    );
    let replayed = received(&subscriber).iter().filter(|e| e["historical"] == true).count();
    // At most the burst plus the rate over the time so far (and a little for rounding).
    let allowed = 100.0 + 1000.0 * started.elapsed().as_secs_f64() + 20.0;
    assert!((replayed as f64) <= allowed, "within its budget: {replayed} > {allowed}");
    assert!(replayed < backlog.len(), "still replaying while the live events arrived");
    let status = gw.status(0);
    assert!(status.backlog > 0 && status.drain_eta_seconds.is_some(), "{status:?}");
    let mut all = backlog.clone();
    all.extend(live.iter().cloned());
    assert!(wait_until(Duration::from_secs(20), || received(&subscriber).len() >= all.len()));
    let events = received(&subscriber);
    assert_complete_and_ordered(&events, &all);
    for event in &events {
        let id = event["id"].as_str().unwrap().to_owned();
        assert_eq!(event["historical"], backlog.contains(&id), "{id}");
    }
    gw.stop();
}

#[test]
fn mqtt_in_strict_order_nothing_overtakes_the_backlog_and_live_resumes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&dir.path().join("broker"), MosquittoOptions::default());
    let subscriber = Subscriber::start(broker.port(), "slotgate/#", None);
    let backlog = journalled_offline(dir.path(), &["EGM-1", "EGM-2"], 500);
    // No `order`: strict is the default (requirements R8).
    let budget = "replay_rate = 1000\nreplay_burst = 100";
    let gw = Forwarding::start(dir.path(), &mqtt_destination("state", broker.port(), budget));
    strictly_in_order(&gw, backlog, || received(&subscriber));
    gw.stop();
}

/// A strict-order destination replaying `backlog` (started just now): events journalled while
/// it drains arrive after it, and events journalled after the drain arrive live; all in
/// journal order. `received` returns the events in arrival order.
fn strictly_in_order(gw: &Forwarding, backlog: Vec<String>, received: impl Fn() -> Vec<Value>) {
    std::thread::sleep(Duration::from_millis(300));
    let during = gw.append(&["EGM-3", "EGM-1"], 5);
    let status = gw.status(0);
    assert!(
        status.backlog as usize > during.len(),
        "appended while the backlog drains: {status:?}"
    );
    let mut all = backlog;
    all.extend(during);
    let arrived = |n: usize| {
        let unique: BTreeSet<String> =
            received().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
        unique.len() >= n
    };
    assert!(wait_until(Duration::from_secs(20), || arrived(all.len())), "{:?}", gw.status(0));
    let after = gw.append(&["EGM-3", "EGM-2"], 2);
    all.extend(after.iter().cloned());
    assert!(wait_until(Duration::from_secs(5), || arrived(all.len())), "{:?}", gw.status(0));
    let events = received();
    assert_complete_and_ordered(&events, &all);
    assert_in_journal_order(&events, &after);
}

/// First arrivals in journal order; what queued behind the backlog delivered from it, flagged
/// historical, and only the events journalled after the drain (`live`) not.
fn assert_in_journal_order(events: &[Value], live: &[String]) {
    let mut seen = BTreeSet::new();
    let mut previous = None;
    for event in events {
        let id = event["id"].as_str().unwrap().to_owned();
        if !seen.insert(id.clone()) {
            continue;
        }
        let seq: u64 = event["gatewayseq"].as_str().unwrap().parse().unwrap();
        assert!(previous < Some(seq), "{id} (journal seq {seq}) arrived after seq {previous:?}");
        previous = Some(seq);
        assert_eq!(event["historical"], !live.contains(&id), "{id}");
    }
}

#[test]
fn mqtt_a_connected_but_stuck_link_is_recycled_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&dir.path().join("broker"), MosquittoOptions::default());
    let proxy = FaultProxy::start(broker.addr());
    let subscriber = Subscriber::start(broker.port(), "slotgate/#", None);
    let extra = format!("{FAST_REPLAY}\nstuck_after = \"1s\"");
    let dest = mqtt_destination("state", proxy.port(), &extra).replace("\"5s\"", "\"60s\"");
    let gw = Forwarding::start(dir.path(), &dest);
    let mut ids = gw.append(&["EGM-1"], 20);
    assert!(subscriber.wait_for(20, Duration::from_secs(10)));
    let connections = proxy.connections();
    // The broker's PUBACKs stop coming; the TCP connection and keep-alive say nothing is wrong.
    proxy.stall(true);
    ids.extend(gw.append(&["EGM-1"], 20));
    assert!(
        wait_until(Duration::from_secs(10), || gw
            .status(0)
            .last_error
            .is_some_and(|e| e.contains("no acknowledgement"))),
        "{:?}",
        gw.status(0)
    );
    proxy.stall(false);
    assert!(wait_until(Duration::from_secs(15), || gw.cursor("state") == gw.head()));
    assert!(proxy.connections() > connections, "a new connection");
    assert_complete_and_ordered(&received(&subscriber), &ids);
    gw.stop();
}

#[test]
fn mqtt_over_mutual_tls_delivers_and_a_foreign_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("pki"));
    let options = MosquittoOptions {
        tls: Some(certs.clone()),
        require_client_cert: true,
        ..Default::default()
    };
    let broker = Mosquitto::start(&dir.path().join("broker"), options);
    let subscriber = Subscriber::start(broker.port(), "slotgate/#", Some(&certs));
    let tls = |ca: &Path| {
        format!(
            "[[destination]]\nname = \"state\"\nkind = \"mqtt\"\nurl = \"mqtts://localhost:{}\"\n\
             ca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
            broker.port(),
            ca.display(),
            certs.client_cert.display(),
            certs.client_key.display()
        )
    };
    // A CA that did not sign the broker's certificate: nothing goes out, and the status says why.
    std::fs::create_dir_all(dir.path().join("wrong")).unwrap();
    let wrong = Forwarding::start(&dir.path().join("wrong"), &tls(&certs.other_ca));
    wrong.append(&["EGM-1"], 3);
    assert!(wait_until(Duration::from_secs(10), || wrong.status(0).last_error.is_some()));
    std::thread::sleep(Duration::from_millis(500));
    assert!(subscriber.messages().is_empty());
    let error = wrong.status(0).last_error.unwrap();
    assert!(
        error.to_lowercase().contains("certificate") || error.contains("UnknownIssuer"),
        "{error}"
    );
    assert_eq!(wrong.cursor("state"), 0);
    wrong.stop();

    let gw = Forwarding::start(dir.path(), &tls(&certs.ca));
    let ids = gw.append(&["EGM-1", "EGM-2"], 50);
    assert!(subscriber.wait_for(ids.len(), Duration::from_secs(20)));
    assert_complete_and_ordered(&received(&subscriber), &ids);
    assert_eq!(gw.status(0).state, LinkState::Up);
    gw.stop();
}

// === HTTPS ===

struct Secrets {
    token: PathBuf,
    hmac: PathBuf,
}

fn secrets(dir: &Path, token: &str) -> Secrets {
    std::fs::create_dir_all(dir).unwrap();
    let s = Secrets { token: dir.join("token"), hmac: dir.join("hmac") };
    std::fs::write(&s.token, format!("{token}\n")).unwrap();
    std::fs::write(&s.hmac, "hmac-key-for-tests").unwrap();
    // `slotgate run` refuses secret files others can read.
    for file in [&s.token, &s.hmac] {
        std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }
    s
}

fn https_destination(receiver: &Receiver, certs: &Certs, secrets: &Secrets, extra: &str) -> String {
    format!(
        r#"[[destination]]
name = "central"
kind = "https"
url = "{}"
ca_file = "{}"
client_cert = "{}"
client_key = "{}"
token_file = "{}"
hmac_key_file = "{}"
batch_size = 100
timeout = "3s"
replay_rate = 50000
replay_burst = 5000
{extra}
"#,
        receiver.url(),
        certs.ca.display(),
        certs.client_cert.display(),
        certs.client_key.display(),
        secrets.token.display(),
        secrets.hmac.display(),
    )
}

#[test]
fn https_responses_dropped_after_commit_still_store_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("pki"));
    let receiver = Receiver::start(&certs, true);
    receiver.drop_responses_after_commit(3);
    let secrets = secrets(&dir.path().join("secrets"), "token-1");
    let gw = Forwarding::start(dir.path(), &https_destination(&receiver, &certs, &secrets, ""));
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.extend(gw.append(&["EGM-1", "EGM-2", "EGM-3"], 40));
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!(receiver.wait_for_events(ids.len(), Duration::from_secs(60)), "{:?}", gw.status(0));
    assert!(wait_until(Duration::from_secs(10), || gw.cursor("central") == gw.head()));
    let stored: Vec<String> = receiver.event_ids();
    assert_eq!(stored.len(), ids.len(), "each id stored once");
    assert_eq!(stored.iter().collect::<BTreeSet<_>>(), ids.iter().collect::<BTreeSet<_>>());
    assert!(receiver.duplicates() > 0, "dropped responses made the gateway resend");
    let requests = receiver.requests();
    assert!(requests.iter().any(|r| r.status == 0), "some responses were dropped");
    for request in &requests {
        assert_eq!(request.header("authorization"), Some("Bearer token-1"));
        assert_eq!(request.header("content-type"), Some("application/cloudevents-batch+json"));
        assert!(request.header("idempotency-key").is_some_and(|k| k.len() == 64));
        let signature = request.header("x-slotgate-signature").unwrap();
        assert_eq!(
            signature,
            format!("sha256={}", hmac_sha256_hex(b"hmac-key-for-tests", &request.body))
        );
    }
    gw.stop();
}

#[test]
fn https_401_revokes_until_the_credentials_change_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("pki"));
    let receiver = Receiver::start(&certs, false);
    receiver.set_status(Some(401), None);
    let secrets = secrets(&dir.path().join("secrets"), "revoked-token");
    let dest = https_destination(&receiver, &certs, &secrets, "");
    let gw = Forwarding::start(dir.path(), &dest);
    let mut ids = gw.append(&["EGM-1"], 30);
    assert!(wait_until(Duration::from_secs(10), || gw.status(0).state == LinkState::Revoked));
    ids.extend(gw.append(&["EGM-1"], 10));
    std::thread::sleep(Duration::from_millis(500));
    let asked = receiver.requests().len();
    assert_eq!(asked, 1, "one refused request, then nothing");
    assert!(receiver.events().is_empty());
    assert_eq!(gw.cursor("central"), 0, "the journal keeps everything");
    assert!(gw.alarms().iter().any(|a| a.starts_with("destination_revoked")), "{:?}", gw.alarms());
    gw.stop();

    // The same credentials after a restart: still revoked, nothing sent.
    receiver.set_status(None, None);
    let gw = Forwarding::start(dir.path(), &dest);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(gw.status(0).state, LinkState::Revoked);
    assert_eq!(receiver.requests().len(), asked);

    // A new token, written while it runs: the backlog is delivered, the alarms with it.
    std::fs::write(&secrets.token, "new-token").unwrap();
    assert!(receiver.wait_for_events(ids.len(), Duration::from_secs(20)), "{:?}", gw.status(0));
    assert!(
        receiver
            .requests()
            .iter()
            .skip(asked)
            .all(|r| r.header("authorization") == Some("Bearer new-token"))
    );
    let types: Vec<String> =
        receiver.events().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect();
    assert!(types.iter().any(|t| t == "slotgate.gateway_alarm"), "{types:?}");
    let stored: BTreeSet<String> = receiver.event_ids().into_iter().collect();
    assert!(ids.iter().all(|id| stored.contains(id)));
    assert!(
        receiver
            .events()
            .iter()
            .all(|e| e["historical"] == true || e["type"] == "slotgate.gateway_alarm")
    );
    gw.stop();
}

#[test]
fn https_400_quarantines_only_the_refused_event_and_what_a_503_held_back_goes_as_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("pki"));
    let receiver = Receiver::start(&certs, false);
    receiver.reject_ids_containing(Some("EGM-2/7".into()));
    let secrets = secrets(&dir.path().join("secrets"), "t");
    let gw = Forwarding::start(dir.path(), &https_destination(&receiver, &certs, &secrets, ""));
    let ids = gw.append(&["EGM-1", "EGM-2"], 20);
    let good: Vec<&String> = ids.iter().filter(|id| !id.ends_with("EGM-2/7")).collect();
    assert!(receiver.wait_for_events(good.len(), Duration::from_secs(20)), "{:?}", gw.status(0));
    assert!(wait_until(Duration::from_secs(10), || gw.cursor("central") == gw.head()));
    let stored: BTreeSet<String> = receiver.event_ids().into_iter().collect();
    assert!(!stored.contains(&format!("{VENUE}/EGM-2/7")));
    let quarantine = dir.path().join("state/destinations/central.quarantine.jsonl");
    let kept = std::fs::read_to_string(&quarantine).unwrap();
    assert_eq!(kept.lines().count(), 1, "{kept}");
    assert!(kept.contains(r#""id":"UA-TEST-1/EGM-2/7""#), "{kept}");
    assert_eq!(gw.status(0).quarantined, 1);
    assert!(gw.alarms().iter().any(|a| a.starts_with("upstream_quarantine")));

    // A 503 with Retry-After (its timing is pinned on the paused clock in
    // tests/forward_paused.rs).
    receiver.reject_ids_containing(None);
    receiver.set_status(Some(503), Some("1"));
    let before = receiver.requests().len();
    let more = gw.append(&["EGM-1"], 5);
    assert!(wait_until(Duration::from_secs(5), || receiver.requests().len() > before));
    let later = gw.append(&["EGM-1"], 5);
    receiver.set_status(None, None);
    let all = good.len() + more.len() + later.len() + 1;
    assert!(receiver.wait_for_events(all, Duration::from_secs(10)));
    // The refused batch goes again byte for byte; what was journalled while the receiver
    // refused is delivered as backlog, flagged historical.
    let events = receiver.events();
    for (ids, historical) in [(&more, false), (&later, true)] {
        for id in ids {
            let event = events.iter().find(|e| e["id"] == id.as_str()).unwrap();
            assert_eq!(event["historical"], historical, "{id}");
        }
    }
    gw.stop();
}

#[test]
fn https_in_strict_order_nothing_overtakes_the_backlog_and_live_resumes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("pki"));
    let receiver = Receiver::start(&certs, false);
    let secrets = secrets(&dir.path().join("secrets"), "t");
    let backlog = journalled_offline(dir.path(), &["EGM-1", "EGM-2"], 500);
    // Small batches, so the replay takes many requests and the live lane has time to cut in.
    let destination = https_destination(&receiver, &certs, &secrets, "")
        .replace("batch_size = 100", "batch_size = 50")
        .replace("replay_rate = 50000", "replay_rate = 1000")
        .replace("replay_burst = 5000", "replay_burst = 100");
    let gw = Forwarding::start(dir.path(), &destination);
    strictly_in_order(&gw, backlog, || receiver.events());
    gw.stop();
}

#[test]
fn https_with_a_foreign_ca_or_plaintext_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("pki"));
    let receiver = Receiver::start(&certs, false);
    let secrets = secrets(&dir.path().join("secrets"), "t");
    let dest = https_destination(&receiver, &certs, &secrets, "")
        .replace(&certs.ca.display().to_string(), &certs.other_ca.display().to_string());
    let gw = Forwarding::start(dir.path(), &dest);
    gw.append(&["EGM-1"], 3);
    assert!(wait_until(Duration::from_secs(10), || gw.status(0).last_error.is_some()));
    let error = gw.status(0).last_error.unwrap();
    assert!(
        error.to_lowercase().contains("certificate") || error.contains("UnknownIssuer"),
        "{error}"
    );
    assert!(receiver.requests().is_empty());
    assert!(wait_until(Duration::from_secs(5), || receiver.tls_failures() > 0));
    gw.stop();

    // Plaintext is a configuration error unless allowed explicitly.
    for url in ["http://127.0.0.1:1/events", "mqtt://127.0.0.1:1"] {
        let kind = if url.starts_with("http") { "https" } else { "mqtt" };
        let path = config_text(
            dir.path(),
            &format!("[[destination]]\nname = \"d\"\nkind = \"{kind}\"\nurl = \"{url}\"\n"),
        );
        let error = Config::load(&path).unwrap_err();
        assert_eq!(error.field, "destination[0].url", "{error}");
        assert!(error.reason.contains("plaintext"), "{error}");
    }
}

// === Issue 15: silent loss, storms and leaks in forwarding ===

/// The alarm records of the journal whose name starts with `prefix`.
fn alarms_named(gw: &Forwarding, prefix: &str) -> Vec<String> {
    gw.alarms().into_iter().filter(|a| a.starts_with(prefix)).collect()
}

#[test]
fn https_redirects_are_no_delivery_and_never_take_the_credentials_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("pki"));
    let receiver = Receiver::start(&certs, false);
    let elsewhere = Receiver::start(&certs, false);
    receiver.redirect(Some((302, "/ok?sig=LOCATION-SECRET".into())));
    let secrets = secrets(&dir.path().join("secrets"), "t");
    let api_key = dir.path().join("secrets/api-key");
    std::fs::write(&api_key, "api-key-1").unwrap();
    let extra = format!("api_key_file = \"{}\"", api_key.display());
    let gw = Forwarding::start(dir.path(), &https_destination(&receiver, &certs, &secrets, &extra));
    let ids = gw.append(&["EGM-1"], 21);
    assert!(wait_until(Duration::from_secs(10), || receiver.requests().len() >= 3));
    assert!(
        receiver.requests().iter().all(|r| r.method == "POST" && r.path == "/events"),
        "the redirect is not followed: {:?}",
        receiver.requests().iter().map(|r| (&r.method, &r.path)).collect::<Vec<_>>()
    );
    assert_eq!(gw.cursor("central"), 0, "a redirect is not a delivery");
    let status = gw.status(0);
    assert_eq!((status.delivered, status.quarantined), (0, 0), "{status:?}");
    let alarms = alarms_named(&gw, "destination_redirect");
    assert_eq!(alarms.len(), 1, "one alarm while it lasts: {:?}", gw.alarms());
    assert!(alarms[0].contains("302") && alarms[0].contains("/ok?…"), "{alarms:?}");
    assert!(!format!("{:?}{status:?}", gw.alarms()).contains("LOCATION-SECRET"));

    // A 307 to another origin: nothing reaches it, the key and the signature least of all.
    receiver.redirect(Some((307, elsewhere.url())));
    let asked = receiver.requests().len();
    assert!(wait_until(Duration::from_secs(10), || receiver.requests().len() > asked));
    std::thread::sleep(Duration::from_millis(500));
    assert!(elsewhere.requests().is_empty(), "{:?}", elsewhere.requests());
    assert_eq!(gw.cursor("central"), 0);

    receiver.redirect(None);
    assert!(receiver.wait_for_events(ids.len() + 1, Duration::from_secs(30)), "{:?}", gw.status(0));
    assert!(wait_until(Duration::from_secs(10), || gw.cursor("central") == gw.head()));
    assert!(elsewhere.requests().is_empty());
    gw.stop();
}

#[test]
fn https_404_is_an_endpoint_fault_alarmed_once_that_quarantines_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("pki"));
    let receiver = Receiver::start(&certs, false);
    receiver.set_status(Some(404), None);
    let secrets = secrets(&dir.path().join("secrets"), "t");
    let gw = Forwarding::start(dir.path(), &https_destination(&receiver, &certs, &secrets, ""));
    let mut ids = gw.append(&["EGM-1", "EGM-2"], 11);
    assert!(wait_until(Duration::from_secs(10), || receiver.requests().len() >= 4));
    ids.extend(gw.append(&["EGM-1"], 3));
    std::thread::sleep(Duration::from_millis(500));
    let status = gw.status(0);
    assert_eq!((status.delivered, status.quarantined), (0, 0), "{status:?}");
    assert_eq!(gw.cursor("central"), 0, "everything stays in the journal");
    assert!(!dir.path().join("state/destinations/central.quarantine.jsonl").exists());
    assert_eq!(gw.alarms().len(), 1, "exactly one alarm: {:?}", gw.alarms());
    assert!(gw.alarms()[0].starts_with("destination_endpoint"), "{:?}", gw.alarms());
    assert!(status.last_error.as_deref().is_some_and(|e| e.contains("404")), "{status:?}");

    receiver.set_status(None, None);
    assert!(receiver.wait_for_events(ids.len() + 1, Duration::from_secs(30)), "{:?}", gw.status(0));
    assert!(wait_until(Duration::from_secs(10), || gw.cursor("central") == gw.head()));
    assert_eq!(gw.status(0).quarantined, 0);
    gw.stop();
}

#[test]
fn https_one_refused_event_is_quarantined_once_without_an_alarm_storm() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("pki"));
    let receiver = Receiver::start(&certs, false);
    // Refuses any body that names the event, its alarm included.
    receiver.reject_bodies_containing(Some(format!("{VENUE}/EGM-2/7")));
    let secrets = secrets(&dir.path().join("secrets"), "t");
    let gw = Forwarding::start(dir.path(), &https_destination(&receiver, &certs, &secrets, ""));
    let ids = gw.append(&["EGM-1", "EGM-2"], 20);
    let good: Vec<&String> = ids.iter().filter(|id| !id.ends_with("EGM-2/7")).collect();
    assert!(receiver.wait_for_events(good.len(), Duration::from_secs(20)), "{:?}", gw.status(0));
    assert!(wait_until(Duration::from_secs(10), || gw.cursor("central") == gw.head()));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(gw.cursor("central"), gw.head(), "no alarm keeps coming");
    let kept =
        std::fs::read_to_string(dir.path().join("state/destinations/central.quarantine.jsonl"))
            .unwrap();
    let refused = kept.lines().filter(|l| l.contains(r#""id":"UA-TEST-1/EGM-2/7""#)).count();
    assert_eq!(refused, 1, "{kept}");
    assert!(kept.lines().count() <= 2, "the event, and at most the alarm naming it: {kept}");
    assert!(gw.alarms().len() <= 2, "{:?}", gw.alarms());
    assert_eq!(alarms_named(&gw, "upstream_quarantine").len(), 1, "{:?}", gw.alarms());
    let stored: BTreeSet<String> = receiver.event_ids().into_iter().collect();
    assert!(good.iter().all(|id| stored.contains(*id)));
    gw.stop();
}

/// Every request's key, whether each key always came with the same body, and whether each
/// first event id always came with the same key.
fn assert_keys_follow_content(receiver: &Receiver) {
    let mut by_key: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut by_first: BTreeMap<String, String> = BTreeMap::new();
    for request in receiver.requests() {
        let key = request.header("idempotency-key").unwrap().to_owned();
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let Some(first) = body.as_array().unwrap().first() else { continue };
        let first = first["id"].as_str().unwrap().to_owned();
        let earlier = by_key.entry(key.clone()).or_insert_with(|| request.body.clone());
        assert_eq!(*earlier, request.body, "key {key} with two bodies");
        let earlier = by_first.entry(first.clone()).or_insert_with(|| key.clone());
        assert_eq!(*earlier, key, "a retry starting at {first} changed its key");
    }
}

#[test]
fn https_a_retried_batch_keeps_its_bytes_and_idempotency_key() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("pki"));
    let receiver = Receiver::start(&certs, false);
    let secrets = secrets(&dir.path().join("secrets"), "t");
    let dest = https_destination(&receiver, &certs, &secrets, "").replace("\"3s\"", "\"1s\"");
    let gw = Forwarding::start(dir.path(), &dest);
    let mut ids = Vec::new();
    // A 503, then a request that times out; more is journalled before each retry.
    for fault in ["503", "timeout"] {
        match fault {
            "503" => receiver.set_status(Some(503), Some("1")),
            _ => receiver.stall(Some(Duration::from_secs(3))),
        }
        let before = receiver.requests().len();
        ids.extend(gw.append(&["EGM-1"], 5));
        assert!(wait_until(Duration::from_secs(10), || receiver.requests().len() > before));
        ids.extend(gw.append(&["EGM-1", "EGM-2"], 15));
        assert!(wait_until(Duration::from_secs(10), || receiver.requests().len() > before + 1));
        receiver.set_status(None, None);
        receiver.stall(None);
        assert!(receiver.wait_for_events(ids.len(), Duration::from_secs(20)), "{:?}", gw.status(0));
    }
    assert_keys_follow_content(&receiver);
    assert!(receiver.requests().iter().filter(|r| r.status == 0).count() >= 2, "timed out");
    gw.stop();
}

/// `slotgate run` on `config`, its log (stderr) in `log`, with `env` set and every proxy
/// variable not in it removed.
struct Daemon(std::process::Child);

impl Daemon {
    fn start(config: &Path, log: &Path, env: &[(&str, &str)]) -> Self {
        let log = std::fs::File::create(log).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_slotgate"));
        command
            .args(["run", "--config"])
            .arg(config)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info,slotgate=debug")
            .stdout(std::process::Stdio::null())
            .stderr(log);
        for name in ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"] {
            command.env_remove(name).env_remove(name.to_lowercase());
        }
        command.envs(env.iter().copied());
        Self(command.spawn().unwrap())
    }

    /// SIGTERM, then waits (SIGKILL after 20 s).
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if !wait_until(Duration::from_secs(20), || self.0.try_wait().unwrap().is_some()) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn https_ignores_proxies_named_by_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("pki"));
    let receiver = Receiver::start(&certs, false);
    let secrets = secrets(&dir.path().join("secrets"), "t");
    let ids = journalled_offline(dir.path(), &["EGM-1"], 10);
    // A "proxy" that would relay to the receiver: it must see no connection at all.
    let proxy = FaultProxy::start(receiver.addr());
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port());
    let config = config_text(dir.path(), &https_destination(&receiver, &certs, &secrets, ""));
    let log = dir.path().join("run.log");
    let env: Vec<(&str, &str)> = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        .into_iter()
        .chain(["HTTP_PROXY", "http_proxy"])
        .map(|name| (name, proxy_url.as_str()))
        .collect();
    let daemon = Daemon::start(&config, &log, &env);
    let arrived = receiver.wait_for_events(ids.len(), Duration::from_secs(20));
    daemon.stop();
    assert!(arrived, "{}", std::fs::read_to_string(&log).unwrap());
    assert_eq!(proxy.connections(), 0, "the proxy was used");
}

#[test]
fn no_configured_secret_reaches_the_logs_or_the_status_file() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("pki"));
    let options = MosquittoOptions {
        users: vec![("gw-1".into(), "mqtt-PASSWORD-secret".into())],
        ..Default::default()
    };
    let broker = Mosquitto::start(&dir.path().join("broker"), options);
    let receiver = Receiver::start(&certs, false);
    receiver.set_status(Some(500), None);
    let files = dir.path().join("secrets");
    std::fs::create_dir_all(&files).unwrap();
    let secret_texts = [
        ("token", "bearer-TOKEN-secret"),
        ("api-key", "api-KEY-secret"),
        ("hmac", "hmac-KEY-secret"),
        ("mqtt-password", "mqtt-PASSWORD-secret"),
    ];
    for (file, text) in secret_texts {
        std::fs::write(files.join(file), text).unwrap();
        let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
        std::fs::set_permissions(files.join(file), private).unwrap();
    }
    let file = |name: &str| files.join(name).display().to_string();
    let https = |name: &str, url: String| {
        format!(
            "[[destination]]\nname = \"{name}\"\nkind = \"https\"\nurl = \"{url}\"\nca_file = \"{}\"\n\
             token_file = \"{}\"\napi_key_file = \"{}\"\nhmac_key_file = \"{}\"\ntimeout = \"1s\"\n",
            certs.ca.display(),
            file("token"),
            file("api-key"),
            file("hmac")
        )
    };
    let dead = upstream::free_port();
    let destinations = format!(
        "{}\n{}\n{}",
        https("central", format!("{}?token=QUERY-secret-1", receiver.url())),
        https("dead", format!("https://localhost:{dead}/events?token=QUERY-secret-2")),
        mqtt_destination(
            "state",
            broker.port(),
            &format!("username = \"gw-1\"\npassword_file = \"{}\"", file("mqtt-password"))
        ),
    );
    let ids = journalled_offline(dir.path(), &["EGM-1"], 10);
    let config = config_text(dir.path(), &destinations);
    let log = dir.path().join("run.log");
    let daemon = Daemon::start(&config, &log, &[]);
    assert!(wait_until(Duration::from_secs(15), || receiver.requests().len() >= 2));
    receiver.set_status(None, None);
    assert!(receiver.wait_for_events(ids.len(), Duration::from_secs(20)));
    let status_file = dir.path().join("state/status.json");
    let dead_reported = || {
        let status: Value =
            serde_json::from_slice(&std::fs::read(&status_file).unwrap_or_default())
                .unwrap_or_default();
        status["destinations"][1]["last_error"].is_string()
            && status["destinations"][2]["state"] == "up"
    };
    assert!(wait_until(Duration::from_secs(15), dead_reported));
    daemon.stop();
    let logged = std::fs::read_to_string(&log).unwrap();
    let status = std::fs::read_to_string(&status_file).unwrap();
    assert!(logged.contains("HTTPS forwarder started"), "{logged}");
    assert!(logged.contains("?…"), "the URL is logged, its query hidden: {logged}");
    for secret in secret_texts.iter().map(|(_, text)| *text).chain(["QUERY-secret"]) {
        assert!(!logged.contains(secret), "{secret} in the log:\n{logged}");
        assert!(!status.contains(secret), "{secret} in status.json:\n{status}");
    }
}

#[test]
fn status_figures_are_true_before_the_first_connection_during_an_outage_and_when_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let backlog = journalled_offline(dir.path(), &["EGM-1"], 40).len() as u64;
    let dead = upstream::free_port();
    let destinations = mqtt_destination("state", dead, "");

    // Before any forwarder has run: what the status file is first written from.
    let config = Config::load(&config_text(dir.path(), &destinations)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (journal, writer) = slotgate::app::open_journal(&config).unwrap();
    let cancel = CancellationToken::new();
    let (mut tasks, statuses, _replays) = {
        let _guard = rt.enter();
        slotgate::forward::spawn_all(&config, &journal, &cancel, None).unwrap()
    };
    let first = statuses[0].borrow().clone();
    assert_eq!((first.unacknowledged, first.backlog), (backlog, backlog), "{first:?}");
    assert_eq!(first.drain_eta_seconds, None, "nothing drains yet: {first:?}");
    cancel.cancel();
    rt.block_on(async { while tasks.join_next().await.is_some() {} });
    drop(journal);
    writer.join().unwrap();

    // The broker is unreachable: what is journalled meanwhile piles up in the backlog.
    let gw = Forwarding::start(dir.path(), &destinations);
    assert!(wait_until(Duration::from_secs(10), || gw.status(0).state == LinkState::Down));
    gw.append(&["EGM-1"], 25);
    let piling = || {
        let s = gw.status(0);
        s.backlog == backlog + 25 && s.unacknowledged == backlog + 25
    };
    assert!(wait_until(Duration::from_secs(5), piling), "{:?}", gw.status(0));
    assert_eq!(gw.status(0).drain_eta_seconds, None, "{:?}", gw.status(0));
    gw.stop();

    // Revoked: a backlog, and no promise of a drain.
    let certs = Certs::generate(&dir.path().join("pki"));
    let receiver = Receiver::start(&certs, false);
    receiver.set_status(Some(401), None);
    let secrets = secrets(&dir.path().join("secrets"), "t");
    let gw = Forwarding::start(dir.path(), &https_destination(&receiver, &certs, &secrets, ""));
    assert!(wait_until(Duration::from_secs(10), || gw.status(0).state == LinkState::Revoked));
    gw.append(&["EGM-1"], 5);
    let head = gw.head();
    let revoked = || {
        let s = gw.status(0);
        s.backlog == head && s.unacknowledged == head && s.drain_eta_seconds.is_none()
    };
    assert!(wait_until(Duration::from_secs(5), revoked), "{:?}", gw.status(0));
    gw.stop();
}

#[test]
fn mqtt_a_refused_login_revokes_until_the_password_changes() {
    let dir = tempfile::tempdir().unwrap();
    let options = MosquittoOptions {
        users: vec![("gw-1".into(), "right-password".into())],
        ..Default::default()
    };
    let broker = Mosquitto::start(&dir.path().join("broker"), options);
    let proxy = FaultProxy::start(broker.addr());
    let password = dir.path().join("mqtt.password");
    std::fs::write(&password, "wrong-password").unwrap();
    let extra = format!("username = \"gw-1\"\npassword_file = \"{}\"", password.display());
    let gw = Forwarding::start(dir.path(), &mqtt_destination("state", proxy.port(), &extra));
    gw.append(&["EGM-1"], 5);
    assert!(
        wait_until(Duration::from_secs(10), || gw.status(0).state == LinkState::Revoked),
        "{:?}",
        gw.status(0)
    );
    assert_eq!(alarms_named(&gw, "destination_revoked").len(), 1, "{:?}", gw.alarms());
    let tries = proxy.connections();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(proxy.connections(), tries, "no endless retry with the same credentials");
    assert_eq!(gw.cursor("state"), 0);

    std::fs::write(&password, "right-password").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || gw.cursor("state") == gw.head()),
        "{:?}",
        gw.status(0)
    );
    assert_eq!(gw.status(0).state, LinkState::Up);
    gw.stop();
}

#[test]
fn https_contract_409_acknowledges_5xx_retries_and_403_revokes() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("pki"));
    let receiver = Receiver::start(&certs, false);
    let secrets = secrets(&dir.path().join("secrets"), "t");
    let gw = Forwarding::start(dir.path(), &https_destination(&receiver, &certs, &secrets, ""));
    // 409: the receiver has them already.
    receiver.set_status(Some(409), None);
    gw.append(&["EGM-1"], 5);
    assert!(wait_until(Duration::from_secs(10), || gw.cursor("central") == gw.head()));
    assert_eq!(gw.status(0).delivered, 5);
    for code in [500, 502, 504] {
        receiver.set_status(Some(code), None);
        let before = receiver.requests().len();
        let ids = gw.append(&["EGM-1"], 3);
        assert!(wait_until(Duration::from_secs(10), || receiver.requests().len() >= before + 2));
        assert!(gw.cursor("central") < gw.head(), "HTTP {code} is no delivery");
        assert_eq!(gw.status(0).quarantined, 0);
        assert!(gw.alarms().is_empty(), "a 5xx is retried, not alarmed: {:?}", gw.alarms());
        receiver.set_status(None, None);
        assert!(wait_until(Duration::from_secs(10), || gw.cursor("central") == gw.head()));
        let stored: BTreeSet<String> = receiver.event_ids().into_iter().collect();
        assert!(ids.iter().all(|id| stored.contains(id)), "HTTP {code}");
    }
    // 403 is a revocation, as 401 is.
    receiver.set_status(Some(403), None);
    gw.append(&["EGM-1"], 3);
    assert!(wait_until(Duration::from_secs(10), || gw.status(0).state == LinkState::Revoked));
    let asked = receiver.requests().len();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.requests().len(), asked, "nothing sent while revoked");
    assert!(gw.cursor("central") < gw.head());
    assert_eq!(alarms_named(&gw, "destination_revoked").len(), 1, "{:?}", gw.alarms());
    gw.stop();
}

#[test]
fn https_contract_resets_huge_bodies_and_slow_loris_cost_a_retry_at_most() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("pki"));
    let raw = RawReceiver::start(&certs);
    let destination = format!(
        "[[destination]]\nname = \"central\"\nkind = \"https\"\nurl = \"{}\"\nca_file = \"{}\"\n\
         timeout = \"2s\"\n{FAST_REPLAY}\n",
        raw.url(),
        certs.ca.display()
    );
    let gw = Forwarding::start(dir.path(), &destination);
    let stored = |ids: &[String]| {
        let got: BTreeSet<String> = raw.ids().into_iter().collect();
        ids.iter().all(|id| got.contains(id))
    };

    // The connection reset halfway through the request body: sent again.
    raw.set_mode(RawMode::ResetMidBody);
    let ids = gw.append(&["EGM-1"], 50);
    assert!(wait_until(Duration::from_secs(10), || raw.requests() >= 2));
    assert_eq!(gw.cursor("central"), 0);
    raw.set_mode(RawMode::Normal);
    assert!(wait_until(Duration::from_secs(10), || gw.cursor("central") == gw.head()));
    assert!(stored(&ids));

    // 200 with a 100 MB body: the status decides, the body is not read.
    raw.set_mode(RawMode::HugeBody);
    let ids = gw.append(&["EGM-1"], 5);
    assert!(wait_until(Duration::from_secs(10), || gw.cursor("central") == gw.head()));
    assert!(stored(&ids));
    std::thread::sleep(Duration::from_millis(500));
    let taken = raw.body_bytes_sent();
    assert!(taken < HUGE_BODY / 5, "{taken} bytes of the body were taken");

    // The status line dribbled a byte at a time: each try ends at the 2 s timeout.
    raw.set_mode(RawMode::Dribble);
    let before = raw.requests();
    let ids = gw.append(&["EGM-1"], 5);
    let started = std::time::Instant::now();
    assert!(wait_until(Duration::from_secs(10), || raw.requests() >= before + 2));
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    assert!(gw.cursor("central") < gw.head());
    assert_eq!(gw.status(0).state, LinkState::Down, "{:?}", gw.status(0));
    raw.set_mode(RawMode::Normal);
    assert!(wait_until(Duration::from_secs(15), || gw.cursor("central") == gw.head()));
    assert!(stored(&ids));
    gw.stop();
}

/// The value of gauge `name` for `destination` in a Prometheus text exposition.
fn gauge(exposition: &str, name: &str, destination: &str) -> Option<String> {
    let prefix = format!("{name}{{destination=\"{destination}\"}} ");
    exposition.lines().find_map(|line| line.strip_prefix(&prefix)).map(str::to_owned)
}

#[test]
fn gauges_and_status_show_the_backlog_and_no_drain_time_while_nothing_drains() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("pki"));
    let receiver = Receiver::start(&certs, false);
    receiver.set_status(Some(401), None);
    let secrets = secrets(&dir.path().join("secrets"), "t");
    let backlog = journalled_offline(dir.path(), &["EGM-1"], 40).len();
    let metrics = upstream::free_port();
    let destinations = format!(
        "[admin]\nmetrics_listen = \"127.0.0.1:{metrics}\"\nsocket = \"admin.sock\"\n\n{}\n{}",
        https_destination(&receiver, &certs, &secrets, ""),
        mqtt_destination("state", upstream::free_port(), "")
    );
    let config = config_text(dir.path(), &destinations);
    let log = dir.path().join("run.log");
    let daemon = Daemon::start(&config, &log, &[]);
    let scrape = || {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", metrics)) else {
            return String::new();
        };
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text
    };
    let status = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_slotgate"))
            .args(["status", "--config"])
            .arg(&config)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The journal holds the backlog, the revocation's alarm and the offline event of the
    // configuration's line, which cannot be opened.
    // ... and the software_id record of the start (#11).
    let backlog = backlog + 3;
    let settled = wait_until(Duration::from_secs(15), || {
        let text = scrape();
        let backlog_gauge = |d| gauge(&text, "slotgate_forward_backlog_records", d);
        gauge(&text, "slotgate_forward_up", "central").as_deref() == Some("-1")
            && gauge(&text, "slotgate_forward_up", "state").as_deref() == Some("0")
            && ["central", "state"].map(backlog_gauge)
                == [Some(backlog.to_string()), Some(backlog.to_string())]
            && status().matches(&format!("replay backlog {backlog})")).count() == 2
    });
    let (text, shown) = (scrape(), status());
    daemon.stop();
    assert!(settled, "{text}\n{shown}\n{}", std::fs::read_to_string(&log).unwrap());
    for destination in ["central", "state"] {
        let backlog_gauge = gauge(&text, "slotgate_forward_backlog_records", destination);
        assert_eq!(backlog_gauge, Some(backlog.to_string()), "{destination}: {text}");
        let eta = gauge(&text, "slotgate_forward_drain_eta_seconds", destination);
        assert_eq!(eta.as_deref(), Some("NaN"), "{destination}: no drain time: {text}");
    }
    assert_eq!(shown.matches(&format!("replay backlog {backlog})")).count(), 2, "{shown}");
    assert!(!shown.contains("to drain"), "{shown}");
}

/// Every event the receiver stored or was sent again, in arrival order.
fn arrived(receiver: &Receiver) -> Vec<Value> {
    receiver
        .requests()
        .iter()
        .filter(|r| r.status == 200)
        .filter_map(|r| serde_json::from_slice::<Vec<Value>>(&r.body).ok())
        .flatten()
        .collect()
}

fn arrivals(receiver: &Receiver) -> Vec<String> {
    arrived(receiver).iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn a_replay_resends_from_its_seq_in_order_at_its_rate_and_refuses_an_unknown_destination() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("pki"));
    let receiver = Receiver::start(&certs, false);
    let secrets = secrets(&dir.path().join("secrets"), "t");
    let gw = Forwarding::start(dir.path(), &https_destination(&receiver, &certs, &secrets, ""));
    let ids = gw.append(&["EGM-1", "EGM-2"], 20);
    assert!(receiver.wait_for_events(ids.len(), Duration::from_secs(20)));
    assert!(wait_until(Duration::from_secs(10), || gw.cursor("central") == gw.head()));
    assert_eq!(receiver.event_ids(), ids, "in journal order");
    let before = arrivals(&receiver).len();
    // From seq 10 on, at most 10 a second: the 30 records take 2 s at least after the burst
    // of 10 (the bucket holds no more than one second's worth).
    let started = std::time::Instant::now();
    let replaying = gw.rt.block_on(gw.replays.replay("central", 10, Some(10))).unwrap();
    assert_eq!((replaying.from, replaying.until, replaying.rate), (10, 40, 10));
    assert!(wait_until(Duration::from_secs(30), || receiver.duplicates() >= 30
        && gw.cursor("central") == 40));
    assert!(started.elapsed() >= Duration::from_millis(1900), "{:?}", started.elapsed());
    // A batch retried after a timeout (a loaded machine) arrives twice: count each id once.
    let mut again = arrivals(&receiver).split_off(before);
    let mut seen = BTreeSet::new();
    again.retain(|id| seen.insert(id.clone()));
    assert_eq!(again, ids[10..], "again from seq 10 on, in order");
    assert!(arrived(&receiver)[before..].iter().all(|e| e["historical"] == true), "replay lane");
    // Back on the configured budget once the replay is acknowledged.
    assert!(wait_until(Duration::from_secs(10), || gw.status(0).replay_rate == 50000));
    assert_eq!(gw.cursor("central"), 40);
    let unknown = gw.rt.block_on(gw.replays.replay("nowhere", 0, None));
    assert!(matches!(unknown, Err(slotgate::forward::ReplayError::UnknownDestination(_))));
    gw.stop();
}
