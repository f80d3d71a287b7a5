//! Forwarding: every journalled event reaches each configured destination — the state
//! system's MQTT broker or HTTPS endpoint — at least once, in order per lane, with nothing lost
//! across outages, restarts and crashes.
//!
//! # Contract
//!
//! - **The journal is the outbox.** A forwarder reads only durable records
//!   (`Journal::read_entries` up to `Journal::durable`: without recomputing the chain's hashes,
//!   which it never sends; the frame and block CRCs still guard its bytes), and moves its
//!   destination's journal cursor only over a contiguous prefix that the destination
//!   acknowledged (MQTT PUBACK; HTTP 2xx or 409). Nothing is held only in memory: a crash or restart resends from the cursor (duplicates carry identical ids,
//!   so the receiver deduplicates). Cursor writes are batched (every [`CURSOR_EVERY`] and at
//!   stop): a crash resends at most that much. The forwarder reads its cursor once, at start:
//!   only the forwarder moves it afterwards (the journal's quarantine, which resets positions,
//!   happens at open, before any forwarder starts; a store reopened after an I/O error keeps
//!   its cursors, at most behind ours).
//! - **A replay is a rewind by the forwarder itself** ([`Replays`], `slotgate replay`): its
//!   task stops the driver as the daemon's stop does, moves the cursor back durably
//!   (`Journal::rewind`, refused below the oldest kept record) and starts the driver again,
//!   which reads the cursor anew: the records from there are an ordinary backlog, replayed in
//!   order on the replay lane with their ids, at the replay's rate until caught up.
//! - **One destination never stalls another.** One task per destination, its own cursor, its
//!   own connection, its own backoff.
//! - **Two lanes** ([`outbox`]): the backlog present at each (re)connection is replayed oldest
//!   first within the destination's rate budget, flagged `historical`; new records go on the
//!   live lane. In strict order (the default, requirements R8) new records queue behind the
//!   backlog and nothing ever overtakes an older record; in live-first order they go out at
//!   once, and each machine's events are in `machine_seq` order within each lane.
//! - **Delivery is tracked by our code, not the client library's** ([`mqtt`]): rumqttc drops
//!   its in-flight messages on a clean session or a broker restart (field-lessons.md §B2, §C4),
//!   so every reconnect starts a new client and resends everything unacknowledged from the
//!   journal.
//! - **Refusals are never silent, and never a storm** ([`https`]): 401/403 (MQTT: a login
//!   refused with CONNACK 4 or 5) revokes the destination (nothing more is sent, the journal
//!   keeps everything, an alarm stays up) until its credentials change; only an event refused
//!   alone (400/422) while the receiver takes others is moved to a quarantine file; a redirect
//!   or any other 4xx is a fault of the endpoint, retried with everything kept. A condition
//!   raises one alarm until it clears ([`Alarms`]), and a refused alarm raises none.
//! - **No secret in logs, status or alarms**: URLs are shown without user info or query
//!   ([`redact_url`]).
//! - **Status figures are true in every state**: before the first connection and while down
//!   or revoked, everything unacknowledged counts as backlog, and no drain time is given while
//!   nothing drains.
//!
//! - **Remote commands come in on the same connections** ([`mqtt`]: the command topics;
//!   [`https`]: a periodic GET of pending commands) and go to the [`CommandInbox`] as bytes.
//!   The destination hears an acknowledgement (MQTT PUBACK, HTTPS ack request) only after the
//!   inbox answered, that is after the command, or its refusal, is journalled; an inbox error
//!   is never acknowledged, so the state system sends the command again.
//!
//! The wire format is [`cloudevent`] (reference: `docs/upstream-protocol.md`); TLS is [`tls`].

pub mod cloudevent;
pub mod https;
pub mod mqtt;
pub mod outbox;
pub mod tls;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::cloudevent::{Encoded, Origin};
use self::outbox::{Lane, Order, Outbox, ReplayBudget};
use crate::config::{Config, DestinationConfig, DestinationKind};
use crate::journal::{Journal, JournalError};

/// How often an advanced cursor is written to the journal.
pub const CURSOR_EVERY: Duration = Duration::from_millis(250);
/// How often replay progress is logged while a backlog drains.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Where a destination stands, for `slotgate status`, metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Connecting,
    Up,
    /// Waiting to retry after a failure.
    Down,
    /// The destination refused our credentials (401/403): nothing is sent until they change.
    Revoked,
}

/// One destination's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationStatus {
    pub name: String,
    pub kind: String,
    pub state: LinkState,
    /// First journal seq not acknowledged.
    pub cursor: u64,
    /// Durable records not yet acknowledged, both lanes.
    #[serde(default)]
    pub unacknowledged: u64,
    /// Records of the replay lane still to deliver; while not up, every unacknowledged record
    /// (the replay that follows the next connection).
    pub backlog: u64,
    pub in_flight: usize,
    /// Records acknowledged since start.
    pub delivered: u64,
    /// Records moved to the quarantine file since start.
    pub quarantined: u64,
    pub replay_rate: u32,
    /// Backlog over the replay rate, while a backlog drains (up); `None` while nothing drains.
    pub drain_eta_seconds: Option<u64>,
    pub last_error: Option<String>,
}

impl DestinationStatus {
    /// The figures known before the forwarder runs: everything between the cursor and the
    /// journal's durable end is unacknowledged, and will be replayed once connected.
    fn new(config: &DestinationConfig, cursor: u64, head: u64) -> Self {
        let unacknowledged = head.saturating_sub(cursor);
        Self {
            name: config.name.clone(),
            kind: match config.kind {
                DestinationKind::Mqtt(_) => "mqtt".into(),
                DestinationKind::Https(_) => "https".into(),
            },
            state: LinkState::Connecting,
            cursor,
            unacknowledged,
            backlog: unacknowledged,
            in_flight: 0,
            delivered: 0,
            quarantined: 0,
            replay_rate: config.replay_rate,
            drain_eta_seconds: None,
            last_error: None,
        }
    }
}

/// Where the forwarders hand the remote commands their destinations send (the remote-command
/// task; `app` wires it, so forwarding knows nothing of commands but their bytes).
pub trait CommandInbox: Send + Sync + std::fmt::Debug {
    /// Hands over an inbound command's bytes, as received (oversized and malformed ones too:
    /// their refusal is audited), from `origin` (`mqtt:<destination>`, `https:<destination>`).
    /// Answers the outcome as JSON once it is durable, or an error when nothing is known to be
    /// stored: then the command must not be acknowledged to its sender, who sends it again.
    fn submit(
        &self,
        bytes: Vec<u8>,
        origin: String,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'static>>;
}

/// Starts one forwarder per configured destination; with `commands`, each also takes remote
/// commands from its destination and hands them over. Returns their tasks, statuses and replay
/// inboxes.
pub fn spawn_all(
    config: &Config,
    journal: &Journal,
    cancel: &CancellationToken,
    commands: Option<Arc<dyn CommandInbox>>,
) -> anyhow::Result<(JoinSet<()>, Vec<watch::Receiver<DestinationStatus>>, Replays)> {
    let mut tasks = JoinSet::new();
    let mut statuses = Vec::new();
    let replays = Replays::default();
    for destination in &config.destinations {
        let (_, status) = spawn(
            config,
            destination,
            journal,
            cancel.clone(),
            &mut tasks,
            commands.clone(),
            &replays,
        )?;
        statuses.push(status);
    }
    Ok((tasks, statuses, replays))
}

/// A destination's wire protocol.
enum Driver {
    Mqtt(mqtt::Driver),
    Https(https::Driver),
}

impl Driver {
    /// Delivers until `cancel`, keeping every acknowledgement received by then.
    async fn run(&mut self, shared: &Shared, cancel: CancellationToken) {
        match self {
            Self::Mqtt(driver) => driver.run(shared, cancel).await,
            Self::Https(driver) => driver.run(shared, cancel).await,
        }
    }

    fn budget(&mut self) -> &mut ReplayBudget {
        match self {
            Self::Mqtt(driver) => &mut driver.budget,
            Self::Https(driver) => &mut driver.budget,
        }
    }
}

/// Replay requests a forwarder holds at most (one is served at a time, each quickly).
const REPLAY_QUEUE: usize = 4;

/// `slotgate replay`: send a destination its history again from journal seq `from` on, at
/// most `rate` records a second (never faster than its configured `replay_rate`).
#[derive(Debug)]
pub struct ReplayRequest {
    pub from: u64,
    pub rate: Option<u32>,
    pub reply: oneshot::Sender<Result<Replaying, JournalError>>,
}

/// A replay under way: the destination's cursor was moved back to `from`, and the replay is
/// complete when its cursor reaches `until` (the journal's durable end when it began).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replaying {
    pub destination: String,
    pub from: u64,
    pub until: u64,
    pub rate: u32,
}

/// Why a replay was not started.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no destination {0:?} is configured")]
    UnknownDestination(String),
    #[error("the forwarder of {0} is not running")]
    Stopped(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Each forwarder's replay inbox, by destination name. Shared by every clone: a forwarder that
/// a reload starts again puts its new inbox in, and the admin socket's copy reaches it.
#[derive(Debug, Clone, Default)]
pub struct Replays(
    Arc<std::sync::Mutex<std::collections::BTreeMap<String, mpsc::Sender<ReplayRequest>>>>,
);

impl Replays {
    pub fn contains(&self, destination: &str) -> bool {
        self.inbox(destination).is_some()
    }

    fn inbox(&self, destination: &str) -> Option<mpsc::Sender<ReplayRequest>> {
        // A poisoned map still holds whole entries: each insert is one statement.
        let map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(destination).cloned()
    }

    fn insert(&self, destination: &str, inbox: mpsc::Sender<ReplayRequest>) {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.insert(destination.to_owned(), inbox);
    }

    /// Asks `destination`'s forwarder to replay from `from`; answers once its cursor was
    /// moved back (durably) and the forwarder sends again.
    pub async fn replay(
        &self,
        destination: &str,
        from: u64,
        rate: Option<u32>,
    ) -> Result<Replaying, ReplayError> {
        let inbox = self
            .inbox(destination)
            .ok_or_else(|| ReplayError::UnknownDestination(destination.to_owned()))?;
        let stopped = || ReplayError::Stopped(destination.to_owned());
        let (reply, answer) = oneshot::channel();
        inbox.send(ReplayRequest { from, rate, reply }).await.map_err(|_| stopped())?;
        Ok(answer.await.map_err(|_| stopped())??)
    }
}

/// One destination's task: runs its driver, and for a replay stops it the way the daemon's
/// stop does (what is on the wire gets its grace, every acknowledgement is written), moves the
/// cursor back and starts it again: everything from there on is then backlog, replayed in
/// order on the replay lane like after an outage. A replay with a lower rate runs under it
/// until the cursor is back where the replay began; the driver then restarts on the
/// configured budget.
async fn forward(
    mut driver: Driver,
    shared: Shared,
    configured: ReplayBudget,
    cancel: CancellationToken,
    mut replays: mpsc::Receiver<ReplayRequest>,
) {
    let mut status = shared.status.subscribe();
    // The end of a replay that runs on a budget of its own.
    let mut limited_until: Option<u64> = None;
    loop {
        let session = cancel.child_token();
        let request = {
            let run = driver.run(&shared, session.clone());
            tokio::pin!(run);
            let request = loop {
                tokio::select! {
                    () = &mut run => return,
                    // Refused at once, without stopping the driver, when it cannot be done.
                    Some(request) = replays.recv() => match shared.journal.check_kept(request.from) {
                        Ok(()) => break Some(request),
                        Err(refused) => {
                            let _ = request.reply.send(Err(refused));
                        }
                    },
                    Ok(()) = status.changed(), if limited_until.is_some() => {
                        if limited_until.is_some_and(|until| status.borrow().cursor >= until) {
                            break None;
                        }
                    }
                }
            };
            session.cancel();
            run.await;
            request
        };
        if cancel.is_cancelled() {
            // The stop came while the driver was stopping for the replay.
            if let Some(request) = request {
                let _ = request.reply.send(Err(JournalError::Closed));
            }
            return;
        }
        let Some(ReplayRequest { from, rate, reply }) = request else {
            tracing::info!(destination = %shared.name, "Replay done; back to the configured rate.");
            *driver.budget() = configured;
            limited_until = None;
            shared.status.send_modify(|s| s.replay_rate = configured.rate);
            continue;
        };
        let answer = shared.journal.rewind(&shared.name, from).await.map(|at| {
            let until = *shared.journal.durable().borrow();
            let rate = rate.map_or(configured.rate, |r| r.clamp(1, configured.rate.max(1)));
            *driver.budget() = ReplayBudget { rate, burst: configured.burst.min(rate).max(1) };
            limited_until = (rate < configured.rate).then_some(until);
            shared.status.send_modify(|s| {
                s.replay_rate = rate;
                s.cursor = at;
            });
            tracing::info!(destination = %shared.name, from = at, until, rate, "Replaying.");
            Replaying { destination: shared.name.clone(), from: at, until, rate }
        });
        if let Err(error) = &answer {
            tracing::warn!(destination = %shared.name, from, %error, "Replay refused.");
        }
        let _ = reply.send(answer);
    }
}

/// Starts the forwarder of `destination` (one of `config`'s) into `tasks`, from its cursor in
/// the journal, until `cancel`: its task and its status channel.
pub fn spawn(
    config: &Config,
    destination: &DestinationConfig,
    journal: &Journal,
    cancel: CancellationToken,
    tasks: &mut JoinSet<()>,
    commands: Option<Arc<dyn CommandInbox>>,
    replays: &Replays,
) -> anyhow::Result<(tokio::task::AbortHandle, watch::Receiver<DestinationStatus>)> {
    tls::install_provider();
    let origin = Origin::new(config.venue.id.as_str(), &config.venue.gateway_id);
    if let Some(warning) = slow_strict_replay(destination, config.machine_count()) {
        tracing::warn!(destination = %destination.name, "{warning}");
    }
    let cursor = journal.status().borrow().cursors.get(&destination.name).copied().unwrap_or(0);
    let head = *journal.durable().borrow();
    let (tx, rx) = watch::channel(DestinationStatus::new(destination, cursor, head));
    let shared = Shared {
        name: destination.name.clone(),
        origin,
        journal: journal.clone(),
        status: tx,
        state_dir: config.storage.dir.join("destinations"),
        order: destination.order,
        commands,
    };
    let driver = match &destination.kind {
        DestinationKind::Mqtt(mqtt) => mqtt::Driver::new(destination, mqtt).map(Driver::Mqtt),
        DestinationKind::Https(https) => https::Driver::new(destination, https).map(Driver::Https),
    }
    .with_context(|| format!("destination {}", destination.name))?;
    let (requests, inbox) = mpsc::channel(REPLAY_QUEUE);
    replays.insert(&destination.name, requests);
    let budget = ReplayBudget { rate: destination.replay_rate, burst: destination.replay_burst };
    let task = tasks.spawn(forward(driver, shared, budget, cancel, inbox));
    Ok((task, rx))
}

/// Events per second a busy machine reports at most: about 2 a game at up to 15 games a minute
/// (requirements.md §7.3, sizing), doubled for meter snapshots, doors and bursts.
const PEAK_EVENTS_PER_MACHINE: u32 = 1;

/// In strict order what is journalled during a replay queues behind it, so a replay budget
/// below the hall's event rate never drains; a warning names it at start.
fn slow_strict_replay(destination: &DestinationConfig, machines: usize) -> Option<String> {
    let peak = u32::try_from(machines).unwrap_or(u32::MAX).saturating_mul(PEAK_EVENTS_PER_MACHINE);
    (destination.order == Order::Strict && destination.replay_rate < peak).then(|| {
        format!(
            "replay_rate = {} is below the ~{peak} events/s that {machines} machines can report: \
             in strict order events journalled during a replay queue behind it, so a backlog \
             might never drain. Raise replay_rate or use order = \"live-first\".",
            destination.replay_rate
        )
    })
}

/// What every forwarder shares with the rest of the gateway.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: String,
    pub origin: Origin,
    pub journal: Journal,
    pub status: watch::Sender<DestinationStatus>,
    /// `<storage.dir>/destinations`: revocation marks and quarantined events.
    pub state_dir: PathBuf,
    pub order: Order,
    /// Where inbound remote commands go; `None`: the destination's commands are not taken.
    pub commands: Option<Arc<dyn CommandInbox>>,
}

impl Shared {
    /// The destination's cursor and the journal's durable end. The cursor is the journal's, or
    /// the one this forwarder last reached if that is further: a driver restarted in the same
    /// task (a replay) must not resend what was acknowledged just before, and the journal
    /// publishes its status only after it answered the cursor's write.
    pub(crate) fn positions(&self) -> (u64, u64) {
        let stored = self.journal.status().borrow().cursors.get(&self.name).copied().unwrap_or(0);
        (stored.max(self.status.borrow().cursor), *self.journal.durable().borrow())
    }

    pub(crate) fn outbox(&self, budget: ReplayBudget) -> Outbox {
        let (cursor, head) = self.positions();
        Outbox::new(cursor, head, budget, self.order, Instant::now())
    }

    /// Reads and encodes `seqs` (ascending). Records that carry nothing to send (compacted) or
    /// cannot be encoded (logged) are acknowledged at once so the cursor passes them.
    pub(crate) fn load(
        &self,
        outbox: &mut Outbox,
        seqs: &[u64],
        lane: Lane,
    ) -> Result<Vec<Encoded>, JournalError> {
        let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) else {
            return Ok(Vec::new());
        };
        let historical = lane == Lane::Replay;
        let span = usize::try_from(last - first + 1).unwrap_or(usize::MAX);
        let records = self.journal.read_entries(first, span)?;
        let mut wanted = seqs.iter().peekable();
        let mut out = Vec::with_capacity(seqs.len());
        for record in records {
            let seq = record.seq;
            while wanted.next_if(|&&s| s < seq).is_some() {}
            if wanted.next_if_eq(&&seq).is_none() {
                continue;
            }
            match cloudevent::encode(&record, &self.origin, historical) {
                Ok(Some(encoded)) => out.push(encoded),
                Ok(None) => {
                    outbox.acknowledged(seq);
                }
                Err(error) => {
                    tracing::error!(destination = %self.name, %error, "Record not forwarded.");
                    metrics::counter!("slotgate_forward_unencodable_total", "destination" => self.name.clone()).increment(1);
                    outbox.acknowledged(seq);
                }
            }
        }
        Ok(out)
    }

    /// Applies `f`, then recomputes the figures from the outbox and the journal's head.
    pub(crate) fn update(&self, outbox: &Outbox, f: impl FnOnce(&mut DestinationStatus)) {
        let head = *self.journal.durable().borrow();
        self.status.send_modify(|s| {
            f(s);
            s.cursor = outbox.cursor();
            s.unacknowledged = head.saturating_sub(outbox.cursor());
            s.in_flight = outbox.in_flight();
            // While nothing is delivered, everything unacknowledged piles up for the replay
            // that follows the next connection, and no drain time can be promised.
            (s.backlog, s.drain_eta_seconds) = match s.state {
                LinkState::Up => {
                    let backlog = outbox.backlog();
                    let rate = u64::from(s.replay_rate.max(1));
                    (backlog, (backlog > 0).then(|| backlog.div_ceil(rate)))
                }
                LinkState::Connecting | LinkState::Down | LinkState::Revoked => {
                    (s.unacknowledged, None)
                }
            };
        });
        let s = self.status.borrow();
        let name = self.name.clone();
        metrics::gauge!("slotgate_forward_backlog_records", "destination" => name.clone())
            .set(s.backlog as f64);
        metrics::gauge!("slotgate_forward_in_flight", "destination" => name.clone())
            .set(s.in_flight as f64);
        metrics::gauge!("slotgate_forward_delivered", "destination" => name.clone())
            .set(s.delivered as f64);
        // NaN, not 0, while nothing drains: "unknown" must not read as "drained".
        metrics::gauge!("slotgate_forward_drain_eta_seconds", "destination" => name.clone())
            .set(s.drain_eta_seconds.map_or(f64::NAN, |eta| eta as f64));
        let state = match s.state {
            LinkState::Up => 1.0,
            LinkState::Connecting | LinkState::Down => 0.0,
            LinkState::Revoked => -1.0,
        };
        metrics::gauge!("slotgate_forward_up", "destination" => name).set(state);
    }
}

/// A destination's alarms, one per condition until it clears: a fault that repeats on every
/// retry is journalled once (an alarm is an event forwarded like any other, so one per retry
/// would flood the journal and the receiver), and its repeats are counted.
#[derive(Debug, Default)]
pub(crate) struct Alarms {
    /// Condition → times seen since it was raised.
    raised: std::collections::BTreeMap<&'static str, u64>,
}

impl Alarms {
    /// Journals `alarm` unless `condition` is raised already. Returns how often the condition
    /// was seen since it was raised.
    pub(crate) async fn raise(
        &mut self,
        shared: &Shared,
        condition: &'static str,
        alarm: &str,
        message: &str,
    ) -> u64 {
        let seen = self.raised.entry(condition).or_insert(0);
        *seen += 1;
        let seen = *seen;
        if seen == 1 {
            tracing::error!(destination = %shared.name, alarm, "ALARM: {message}");
            journal_alarm(shared, alarm, message).await;
        }
        seen
    }

    /// The destination works again: every condition is over.
    pub(crate) fn clear(&mut self, shared: &Shared) {
        for (condition, times) in std::mem::take(&mut self.raised) {
            tracing::info!(destination = %shared.name, condition, times, "Alarm condition cleared.");
        }
    }
}

/// Journals an alarm record, so it reaches every destination that still accepts events.
pub(crate) async fn journal_alarm(shared: &Shared, alarm: &str, message: &str) {
    let record = crate::journal::NewRecord {
        class: crate::journal::Class::Alarm,
        machine: String::new(),
        machine_seq: None,
        body: crate::journal::Body::Alarm {
            alarm: alarm.to_owned(),
            level: "error".into(),
            message: message.to_owned(),
        },
        snapshot_of: None,
    };
    if let Err(error) = shared.journal.append(vec![record]).await {
        tracing::warn!(destination = %shared.name, %error, "Cannot journal the alarm.");
    }
}

/// `url` fit for logs, status and alarms: no user name or password, and `?…` for a query or
/// fragment (tokens travel there). Works on relative references (`Location: /ok?sig=…`) too.
pub fn redact_url(url: &str) -> String {
    let (url, hidden) = match url.find(['?', '#']) {
        Some(at) => (url.get(..at).unwrap_or_default(), true),
        None => (url, false),
    };
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let (authority, path) = match (scheme, rest.find('/')) {
        (None, _) => ("", rest),
        (Some(_), Some(at)) => rest.split_at(at),
        (Some(_), None) => (rest, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let mut out = String::new();
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    out.push_str(host);
    out.push_str(path);
    if hidden {
        out.push_str("?…");
    }
    out
}

/// Persists the cursor when it moved and [`CURSOR_EVERY`] has passed (or `force`).
#[derive(Debug)]
pub(crate) struct CursorWriter {
    written: u64,
    at: Instant,
}

impl CursorWriter {
    pub(crate) fn new(cursor: u64) -> Self {
        Self { written: cursor, at: Instant::now() }
    }

    pub(crate) async fn maybe_write(&mut self, shared: &Shared, outbox: &Outbox, force: bool) {
        let cursor = outbox.cursor();
        if cursor == self.written || (!force && self.at.elapsed() < CURSOR_EVERY) {
            return;
        }
        match shared.journal.acknowledge(&shared.name, cursor - 1).await {
            Ok(()) => {
                self.written = cursor;
                self.at = Instant::now();
            }
            // The records stay unacknowledged in the journal and are resent after a restart:
            // a duplicate, never a loss.
            Err(error) => {
                tracing::warn!(destination = %shared.name, %error, "Cannot store the cursor.")
            }
        }
    }
}

/// Logs replay progress every [`PROGRESS_EVERY`] while a backlog drains.
#[derive(Debug)]
pub(crate) struct Progress {
    at: Instant,
    backlog_then: u64,
}

impl Progress {
    pub(crate) fn new() -> Self {
        Self { at: Instant::now(), backlog_then: 0 }
    }

    pub(crate) fn tick(&mut self, shared: &Shared, outbox: &Outbox) {
        if self.at.elapsed() < PROGRESS_EVERY {
            return;
        }
        let backlog = outbox.backlog();
        if backlog > 0 || self.backlog_then > 0 {
            let secs = self.at.elapsed().as_secs().max(1);
            let drained = self.backlog_then.saturating_sub(backlog) / secs;
            let eta = (drained > 0).then(|| backlog / drained);
            tracing::info!(destination = %shared.name, backlog, per_second = drained, eta_seconds = ?eta,
                "Replaying the backlog.");
        }
        self.at = Instant::now();
        self.backlog_then = backlog;
    }
}

/// The fingerprint of a destination's credentials: a revocation holds while it is unchanged.
pub(crate) fn credentials_fingerprint(files: &[Option<&Path>], extra: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(extra.as_bytes());
    for file in files {
        hash.update([0u8]);
        if let Some(path) = file {
            hash.update(path.as_os_str().as_encoded_bytes());
            hash.update(std::fs::read(path).unwrap_or_default());
        }
    }
    crate::journal::record::hex(&hash.finalize().into())
}

/// The revocation mark of a destination: present while revoked, holding the fingerprint of the
/// credentials that were refused.
pub(crate) fn revocation_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(format!("{name}.revoked"))
}

/// Whether the destination stays revoked: marked so with the same credentials.
pub(crate) fn still_revoked(state_dir: &Path, name: &str, fingerprint: &str) -> bool {
    std::fs::read_to_string(revocation_path(state_dir, name))
        .is_ok_and(|mark| mark.trim() == fingerprint)
}

pub(crate) fn mark_revoked(state_dir: &Path, name: &str, fingerprint: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    std::fs::write(revocation_path(state_dir, name), fingerprint)
}

pub(crate) fn clear_revoked(state_dir: &Path, name: &str) {
    let _ = std::fs::remove_file(revocation_path(state_dir, name));
}

/// How often a revoked destination looks for changed credentials.
const CREDENTIALS_CHECK_EVERY: Duration = Duration::from_secs(2);

/// A destination was revoked for `reason`: the alarm and the status say so.
pub(crate) async fn revoked(shared: &Shared, outbox: &Outbox, reason: &str) {
    let message = format!(
        "destination {}: {reason}; nothing is sent until its credentials change (events stay in \
         the journal)",
        shared.name
    );
    tracing::error!(destination = %shared.name, alarm = "destination_revoked", "ALARM: {message}");
    journal_alarm(shared, "destination_revoked", &message).await;
    shared.update(outbox, |s| {
        s.state = LinkState::Revoked;
        s.last_error = Some(message);
    });
}

/// Waits until `changed()` (looked at every [`CREDENTIALS_CHECK_EVERY`]), true, or the stop,
/// false; what is journalled meanwhile shows in the status as waiting.
pub(crate) async fn wait_until_changed(
    shared: &Shared,
    outbox: &Outbox,
    cancel: &CancellationToken,
    changed: impl Fn() -> bool,
) -> bool {
    let mut durable = shared.journal.durable();
    let mut check = tokio::time::interval(CREDENTIALS_CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check.reset();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return false,
            _ = check.tick() => {
                if changed() {
                    return true;
                }
            }
            Ok(()) = durable.changed() => shared.update(outbox, |_| {}),
        }
    }
}

/// A password, token or key: shown as `***` by `Debug`, so no log line can carry it.
#[derive(Clone, Default)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Reads a secret file, trimmed of surrounding white space.
pub(crate) fn read_secret(path: &Path) -> anyhow::Result<Secret> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the secret file {}", path.display()))?;
    Ok(Secret(text.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DestinationKind, HttpsDestination};

    /// An HTTPS destination whose three credential files are `secret`, if any.
    fn https_destination(secret: Option<PathBuf>, replay_rate: u32) -> DestinationConfig {
        DestinationConfig {
            name: "d".into(),
            kind: DestinationKind::Https(HttpsDestination {
                url: "http://127.0.0.1:1/events?token=query-secret".into(),
                token_file: secret.clone(),
                api_key_file: secret.clone(),
                hmac_key_file: secret,
                batch_size: 10,
                timeout: Duration::from_secs(1),
                commands: None,
            }),
            replay_rate,
            replay_burst: 10,
            order: Order::Strict,
            tls: None,
        }
    }

    #[test]
    fn a_strict_replay_slower_than_the_hall_is_warned_about() {
        let mut d = https_destination(None, 200);
        assert!(slow_strict_replay(&d, 150).is_none());
        let warning = slow_strict_replay(&d, 250).unwrap();
        assert!(warning.contains("replay_rate = 200") && warning.contains("250 machines"));
        d.order = Order::LiveFirst;
        assert!(slow_strict_replay(&d, 250).is_none(), "live events do not wait in live-first");
    }

    #[test]
    fn urls_lose_their_credentials_and_queries() {
        assert_eq!(
            redact_url("https://user:pass@host:8443/events?token=abc#x"),
            "https://host:8443/events?…"
        );
        assert_eq!(redact_url("https://host/events"), "https://host/events");
        assert_eq!(redact_url("/ok?sig=123"), "/ok?…");
        assert_eq!(redact_url("mqtts://u:p@broker"), "mqtts://broker");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        tls::install_provider();
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "tok-123-secret\n").unwrap();
        let config = https_destination(Some(token), 10);
        let DestinationKind::Https(https) = &config.kind else { unreachable!() };
        let driver = https::Driver::new(&config, https).unwrap();
        let shown = format!("{driver:?}");
        assert!(!shown.contains("tok-123") && !shown.contains("query-secret"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }
}
