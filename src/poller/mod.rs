//! Polling: one task per SAS line. The task owns the line (the only handle on its port or
//! socket), drives a [`HostSession`](firmware_protocols::sas::session::HostSession) per machine on
//! it, normalises what they report, makes the events durable in the journal, and only then lets
//! the sessions acknowledge the machines.
//!
//! # Invariants
//! - **Durable before acknowledged.** Events are appended and fsynced (group commit) before
//!   `confirm_events`; until then no session sends anything new, so no machine sees an implied
//!   ACK of a report the gateway could still lose. If the disk refuses, nothing is confirmed and
//!   the append is retried: the machines keep their exception queues.
//! - **One line, one talker.** SAS is half duplex: nothing is sent while any session awaits an
//!   answer.
//! - **Shared lines.** A poll to one address is an implied ACK for every other machine on the line
//!   (sas-protocol.md §4.2). So nothing is sent while any session holds unconfirmed events, and a
//!   session with a retry (implied NACK) pending goes before every other.
//! - **A line that is down is not machines that are silent.** Nothing is sent while the line is
//!   not open, so no timeout is counted for a poll that never left; a line that cannot be opened
//!   takes its machines offline at once
//!   ([`HostSession::line_lost`](firmware_protocols::sas::session::HostSession::line_lost)), and
//!   its state, last error and retry interval are published ([`status`]) for `slotgate status`.
//!   Reconnection runs concurrently with jittered exponential back-off.
//! - **Listening on silent lines.** Any address byte keeps every machine on a line from chirping
//!   (§4.1), so a machine set to an address the configuration does not list would stay invisible
//!   while the gateway polls. When no machine of a line has answered for [`LISTEN_AFTER`], the
//!   line is left quiet for [`LISTEN_FOR`] every [`LISTEN_EVERY`]: a machine there chirps, and
//!   its address is reported as a foreign chirp (never adopted).
//! - **Stopping between exchanges.** Cancellation is acted on only when no answer is awaited and
//!   every event taken out of a session is durable.
//! - **A restart does not acknowledge what a crash left unstored.** Before a message goes on the
//!   wire it is recorded in the line's in-flight file ([`inflight`]), and marked confirmed once
//!   the events of its answer are durable. A line task that finds a record still `Sent` for one
//!   of its machines resumes that machine's session with it
//!   ([`HostSession::resume`](firmware_protocols::sas::session::HostSession::resume)): the first
//!   message on the line, sent only once the line is connected, is that message again (an
//!   implied NACK), never the `80` that would ACK the report the previous process lost.

pub mod command;
pub mod inflight;
pub mod machine;
pub mod status;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use firmware_protocols::sas::Character;
use firmware_protocols::sas::HostMessage;
use firmware_protocols::sas::session::{LinkState, Transmit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use command::{AllowedPoll, LineCommand, LineHandle};
pub use machine::{MachinePoller, Schedule};
pub use status::{LineConnection, LineStatus, MachineStatus};

use firmware_protocols::sas::{Exception, LongPoll};
use inflight::{InflightFile, Owed, Record, State};

use crate::event::CanonicalEvent;
use crate::journal::Journal;

use crate::transport::{Backoff, Connect, ExponentialBackoff, Line, TransportError};

/// A line none of whose machines has answered for this long is listened to now and then.
const LISTEN_AFTER: Duration = Duration::from_secs(20);
/// How long the line stays quiet when listened to: past the 5 s after which a machine that hears
/// no address byte starts chirping (sas-protocol.md §4.1).
const LISTEN_FOR: Duration = Duration::from_secs(6);
/// How often a silent line is listened to.
const LISTEN_EVERY: Duration = Duration::from_secs(60);

/// How often the machines' counters are published when nothing else changes.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// First and longest pause between retries of a failed durable append.
const PERSIST_RETRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

type Connecting<L> = Pin<Box<dyn Future<Output = Result<L, TransportError>> + Send>>;

/// Where the line's connection stands.
enum LineState<L> {
    Up(L),
    Connecting(Connecting<L>),
    /// Waiting out the back-off before the next attempt.
    Waiting(Instant),
    /// Closed for a probe until it gives the line back (drops its [`command::Release`]).
    Released(tokio::sync::oneshot::Receiver<()>),
}

/// What woke the task from the line side.
enum LineInput<L> {
    Received,
    Lost(TransportError),
    Opened(L),
    OpenFailed(TransportError),
    RetryNow,
}

/// Polls every machine of one line until `cancel` fires. `inflight` is the line's in-flight
/// record ([`inflight`]); without one a restart cannot resume an exchange a crash interrupted.
/// The line's state and its machines' are published on `status`; `commands` are acted on
/// between exchanges ([`command`]).
#[allow(clippy::too_many_arguments)]
pub async fn run_line<C>(
    name: String,
    connector: C,
    mut machines: Vec<MachinePoller>,
    inflight: Option<PathBuf>,
    journal: Journal,
    cancel: CancellationToken,
    status: tokio::sync::watch::Sender<LineStatus>,
    mut commands: tokio::sync::mpsc::Receiver<LineCommand>,
) where
    C: Connect + Clone + 'static,
{
    let policy = ExponentialBackoff::default();
    let mut backoff: Backoff = policy.start();
    let mut state = LineState::Connecting(connect(&connector));
    let mut input = Vec::new();
    let mut events = Vec::new();
    let mut next_turn = 0usize;
    let mut last_answer = Instant::now();
    let mut next_listen = Instant::now() + LISTEN_AFTER;
    let mut listen_until: Option<Instant> = None;
    // Bytes that were waiting on the line when a poll was due: late answers, noise, a flood.
    let mut discarded: u64 = 0;
    tracing::info!(line = %name, machines = machines.len(), "Line poller started.");
    let mut inflight = inflight.and_then(|path| open_inflight(&name, &path));
    // The first message of this process must reach the machine: a resumed message must be the
    // first thing it hears, and anything else must not be a repeat of the previous process's
    // last message, which the machine would take as an implied NACK and answer with a report
    // already stored. So nothing is sent, not even into a line that is still connecting, until
    // the first connection attempt is over (with a resume, until the line is up).
    let mut waiting_for_line = true;
    let resuming = match &mut inflight {
        Some((_, previous)) => {
            let previous = previous.take();
            if let Some(record) = &previous {
                restore_follow_ups(&name, record, &mut machines);
            }
            resume(&name, previous, &mut machines, Instant::now().into_std())
        }
        None => false,
    };
    let mut inflight = inflight.map(|(file, _)| file);
    let started = jiff::Timestamp::now();
    let mut machine_status: Vec<MachineStatus> = machines
        .iter()
        .map(|m| MachineStatus::new(m.registry_id().to_string(), m.address().get(), started))
        .collect();
    let mut next_publish = Instant::now();

    loop {
        let now = Instant::now().into_std();
        let wall = jiff::Timestamp::now();
        // The progress mark the service watchdog judges (`crate::service`): a turn of this
        // loop, at least once a second unless a send or the journal blocks it.
        status.send_modify(|s| s.progress_at = Some(wall));
        let pressure = *journal.pressure().borrow();
        for m in &mut machines {
            m.session.handle_timeout(now);
            m.tick(now, wall, pressure);
        }

        for m in &mut machines {
            m.take_events(now, wall, &mut events);
        }
        if !events.is_empty() {
            if !persist(&journal, &events, &cancel, &name, &status).await {
                // Shutting down with events that never became durable: do not confirm them, so
                // the machines still hold them and report them again to the next run.
                break;
            }
            for (event, _) in &events {
                let id = event.machine.registry_id.as_str();
                if let Some(m) = machine_status.iter_mut().find(|m| m.registry_id == id) {
                    m.saw(event);
                }
            }
            events.clear();
            next_publish = Instant::now();
        }
        if Instant::now() >= next_publish {
            publish(&status, &machines, &mut machine_status);
            next_publish = Instant::now() + PUBLISH_EVERY;
        }
        // Every session event taken out above is now durable or maps to nothing durable (the
        // ACK of LP0E, say): confirm unconditionally, or a session holds the line for good.
        let held = machines.iter().any(|m| m.session.is_holding());
        machines.iter_mut().for_each(|m| m.session.confirm_events());

        let exchanging = machines.iter().any(|m| m.session.is_exchanging());
        if held
            && !exchanging
            && let Some(file) = &mut inflight
            && let Err(error) = file.confirmed()
        {
            // Costs only the duplicate of this exchange's events should the process die now.
            tracing::warn!(line = %name, file = %file.path().display(), %error,
                "The in-flight record could not be marked confirmed.");
        }
        if cancel.is_cancelled() && !exchanging {
            break;
        }
        // Commands between exchanges only; the loop comes round at least every second.
        while !exchanging && let Ok(command) = commands.try_recv() {
            if let Some(release) = obey(&name, command, &mut machines) {
                tracing::info!(line = %name,
                    "Line released to a probe; nothing is sent until it is given back.");
                status.send_modify(|s| {
                    s.state = LineConnection::Released;
                    s.error = None;
                    s.retry_every_seconds = None;
                });
                machines.iter_mut().for_each(|m| m.session.line_lost());
                // Dropping the open line closes the port for the probe.
                state = LineState::Released(release);
                waiting_for_line = false;
            }
        }
        let tokio_now = Instant::now();
        if machines.iter().any(|m| m.session.link() == LinkState::Up) {
            last_answer = tokio_now;
        }
        let line_up = matches!(state, LineState::Up(_));
        // Listening is for machines that do not answer on a line that works; on a line that is
        // down nothing could be heard, and the connection errors say why.
        if line_up
            && listen_until.is_none()
            && !exchanging
            && tokio_now >= next_listen
            && tokio_now.duration_since(last_answer) >= LISTEN_AFTER
        {
            tracing::info!(line = %name, "No machine answers; listening for chirps.");
            listen_until = Some(tokio_now + LISTEN_FOR);
            next_listen = tokio_now + LISTEN_EVERY;
        }
        let listening = listen_until.is_some_and(|t| tokio_now < t);
        if !listening {
            listen_until = None;
        }
        // Nothing is sent into a line that is down: it would reach no machine, and its timeouts
        // would read as machines that do not answer.
        if !exchanging
            && !listening
            && !waiting_for_line
            && line_up
            && let Some((i, tx)) = next_transmit(&mut machines, now, &mut next_turn)
        {
            machines[i].start_exchange();
            tracing::trace!(line = %name, bytes = ?Hex(&tx.characters), retry = tx.retry, "Sent.");
            if let LineState::Up(line) = &mut state {
                // Only what reaches the wire is recorded: a message into a line that is down
                // acknowledges nothing, and must not replace the one that did reach a machine.
                record_sent(&name, inflight.as_mut(), &tx, &machines);
                let stale = line.clear_input();
                if stale > 0 {
                    discarded = discarded.saturating_add(stale);
                    status.send_modify(|s| s.discarded_bytes = discarded);
                    metrics::counter!("slotgate_line_discarded_bytes_total", "line" => name.clone())
                        .increment(stale);
                }
                if let Err(error) = line.send(&tx.characters).await {
                    tracing::warn!(line = %name, %error, "Sending failed; reconnecting.");
                    let delay = backoff.next_delay();
                    status.send_modify(|s| s.down(error.to_string(), Some(delay)));
                    state = LineState::Waiting(Instant::now() + delay);
                }
            }
            continue;
        }

        let deadline = machines
            .iter()
            .filter_map(MachinePoller::next_deadline)
            // While the line is down nothing is sent, so a poll that is due is no reason to wake.
            .filter(|at| line_up || *at > now)
            .min()
            .filter(|_| !waiting_for_line)
            .map_or_else(|| Instant::now() + Duration::from_secs(1), Instant::from_std);
        let deadline = listen_until.map_or(deadline, |t| t.max(deadline));
        tokio::select! {
            biased;
            () = cancel.cancelled(), if !exchanging => {}
            woke = drive(&mut state, &mut input) => match woke {
                LineInput::Received => {
                    tracing::trace!(line = %name, bytes = ?Hex(&input), "Received.");
                    let at = Instant::now().into_std();
                    dispatch(&mut machines, at, &input);
                    input.clear();
                    backoff.reset();
                }
                LineInput::Lost(error) => {
                    tracing::warn!(line = %name, %error, "Line lost; reconnecting.");
                    let delay = backoff.next_delay();
                    status.send_modify(|s| s.down(error.to_string(), Some(delay)));
                    state = LineState::Waiting(Instant::now() + delay);
                }
                LineInput::Opened(line) => {
                    tracing::info!(line = %name, via = %line.describe(), "Line connected.");
                    status.send_modify(|s| {
                        s.up();
                        s.transport = line.describe();
                    });
                    state = LineState::Up(line);
                    // A resumed message goes first on the first connection; after that, and
                    // always without one, every session starts the line with the sync poll.
                    if !(waiting_for_line && resuming) {
                        machines.iter_mut().for_each(|m| m.session.line_reestablished());
                    }
                    waiting_for_line = false;
                }
                LineInput::OpenFailed(error) => {
                    // Without a resume there is no reason to hold the sessions back any longer
                    // once the line is up; until then nothing is sent anyway.
                    waiting_for_line &= resuming;
                    let delay = backoff.next_delay();
                    tracing::warn!(line = %name, %error, retry_in = ?delay,
                        "Line down: it cannot be opened; nothing is sent until it is.");
                    status.send_modify(|s| s.down(error.to_string(), Some(delay)));
                    // Its machines are offline now, not after exchanges that could not be sent.
                    machines.iter_mut().for_each(|m| m.session.line_lost());
                    state = LineState::Waiting(Instant::now() + delay);
                }
                LineInput::RetryNow => state = LineState::Connecting(connect(&connector)),
            },
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
    // The last word on the machines: what the status file a stopped daemon leaves shows.
    publish(&status, &machines, &mut machine_status);
    let connection = status.borrow().state;
    tracing::info!(line = %name, ?connection, discarded_bytes = discarded, "Line statistics.");
    for m in &machines {
        let stats = m.session.stats();
        tracing::info!(
            line = %name,
            machine = %m.registry_id(),
            tries = stats.tries,
            retries = stats.retries,
            timeouts = stats.timeouts,
            crc_errors = stats.crc_errors,
            decode_errors = stats.decode_errors,
            skipped_bytes = stats.skipped_bytes,
            failed_exchanges = stats.failed_exchanges,
            busy = stats.busy,
            chirps = stats.chirps,
            "Line statistics."
        );
    }
    tracing::info!(line = %name, "Line poller stopped.");
}

/// Opens the line's in-flight file and reads what a previous process left in it. A file that
/// cannot be opened costs the protection against a crash, not the polling.
fn open_inflight(line: &str, path: &std::path::Path) -> Option<(InflightFile, Option<Record>)> {
    match InflightFile::open(path) {
        Ok(opened) => Some(opened),
        Err(error) => {
            tracing::error!(line, file = %path.display(), %error,
                "The in-flight file cannot be opened; a crash may lose the report of the \
                 exchange it interrupts.");
            None
        }
    }
}

/// Resumes the session the previous process's last message was for, if its answer may not have
/// become durable. Returns whether a session was resumed.
fn resume(
    line: &str,
    previous: Option<Record>,
    machines: &mut [MachinePoller],
    now: std::time::Instant,
) -> bool {
    let Some(record) = previous else { return false };
    if record.state == State::Confirmed {
        tracing::debug!(line, "The last exchange was confirmed; starting normally.");
        return false;
    }
    let Some(m) = machines.iter_mut().find(|m| m.address().get() == record.address) else {
        // The sync poll, a broadcast, or an address no longer on this line: nothing of ours
        // awaits an acknowledgement.
        tracing::debug!(
            line,
            address = record.address,
            "The last message was for no machine here."
        );
        return false;
    };
    if m.next_seq() > record.next_machine_seq {
        // The journal holds events numbered after the send: the answer's events were stored and
        // only the `Confirmed` write was missed. Resuming would store them a second time.
        tracing::info!(line, machine = %m.registry_id(),
            "The last exchange's events are already in the journal; starting normally.");
        return false;
    }
    match m.session.resume(now, &record.bytes, record.rte_on) {
        Ok(()) => {
            tracing::info!(line, machine = %m.registry_id(), bytes = ?record.bytes,
                "Resuming the exchange the previous run left unconfirmed.");
            true
        }
        Err(error) => {
            tracing::warn!(line, machine = %m.registry_id(), bytes = ?record.bytes, %error,
                "The in-flight record cannot be resumed; starting normally.");
            false
        }
    }
}

/// Records `tx` as the line's last message before it is sent.
fn record_sent(
    line: &str,
    file: Option<&mut InflightFile>,
    tx: &Transmit,
    machines: &[MachinePoller],
) {
    let Some(file) = file else { return };
    let owed = owed_follow_ups(line, machines);
    let address = match &tx.message {
        HostMessage::GeneralPoll(a) | HostMessage::LongPoll(a, _) => a.get(),
        // They acknowledge and leave nothing unacknowledged: the record keeps the poll before
        // them, whose resume would be stale and harmless, and takes only the follow-ups owed,
        // which must be durable before this acknowledgement (inflight doc).
        HostMessage::SyncPoll | HostMessage::Broadcast(_) => {
            if let Err(error) = file.owing(owed) {
                tracing::warn!(line, file = %file.path().display(), %error,
                    "The follow-ups owed could not be recorded; a crash now may lose them.");
            }
            return;
        }
    };
    let machine = machines.iter().find(|m| m.address().get() == address);
    let rte_on = machine.is_some_and(|m| m.session.rte_enabled());
    let next_seq = machine.map_or(0, MachinePoller::next_seq);
    let bytes: Vec<u8> = tx.bytes().collect();
    if let Err(error) = file.sent(address, &bytes, rte_on, next_seq, owed) {
        tracing::warn!(line, file = %file.path().display(), %error,
            "The in-flight record could not be written; a crash now may lose a report.");
    }
}

/// The follow-up polls the line's sessions owe their machines, as the in-flight record keeps
/// them.
fn owed_follow_ups(line: &str, machines: &[MachinePoller]) -> Vec<Owed> {
    let mut owed: Vec<Owed> = machines
        .iter()
        .flat_map(|m| {
            let address = m.address().get();
            m.session.owed_follow_ups().iter().map(move |(poll, exception)| Owed {
                address,
                command: poll.command(),
                exception: exception.code(),
            })
        })
        .collect();
    if owed.len() > inflight::MAX_OWED {
        tracing::warn!(
            line,
            owed = owed.len(),
            kept = inflight::MAX_OWED,
            "More follow-ups owed than the in-flight record holds; a crash now may lose the rest."
        );
        owed.truncate(inflight::MAX_OWED);
    }
    owed
}

/// Hands the follow-ups a previous process owed back to the sessions of their machines.
fn restore_follow_ups(line: &str, record: &Record, machines: &mut [MachinePoller]) {
    for m in machines.iter_mut() {
        let address = m.address().get();
        let polls: Vec<_> = record
            .owed
            .iter()
            .filter(|o| o.address == address)
            .filter_map(|o| {
                let poll = LongPoll::decode(&[address, o.command]).ok()?;
                Some((poll, Exception::from_code(o.exception)))
            })
            .collect();
        if !polls.is_empty() {
            tracing::info!(line, machine = %m.registry_id(), polls = ?polls,
                "Reading the follow-ups the previous run owed.");
            m.session.restore_follow_ups(polls);
        }
    }
}

/// Characters as hex for trace logs, a `*` marking the wakeup bit: `*81`, `01 1C`.
struct Hex<'a>(&'a [Character]);

impl std::fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            let mark = if c.wakeup { "*" } else { "" };
            write!(f, "{sep}{mark}{:02X}", c.byte)?;
        }
        Ok(())
    }
}

fn connect<C: Connect + Clone + 'static>(connector: &C) -> Connecting<C::Line> {
    let connector = connector.clone();
    Box::pin(async move { connector.connect().await })
}

/// Waits for the line side. Cancel-safe: `recv` is, the connection attempt lives in `state`, and
/// the back-off sleep is recreated from its deadline.
async fn drive<L: Line>(state: &mut LineState<L>, input: &mut Vec<Character>) -> LineInput<L> {
    match state {
        LineState::Up(line) => match line.recv(input).await {
            Ok(_) => LineInput::Received,
            Err(error) => LineInput::Lost(error),
        },
        LineState::Connecting(attempt) => match attempt.as_mut().await {
            Ok(line) => LineInput::Opened(line),
            Err(error) => LineInput::OpenFailed(error),
        },
        LineState::Waiting(at) => {
            tokio::time::sleep_until(*at).await;
            LineInput::RetryNow
        }
        // Given back (or the probe went away): reconnect.
        LineState::Released(back) => {
            let _ = back.await;
            LineInput::RetryNow
        }
    }
}

/// Carries out one command between exchanges; returns the hand-back signal of a release.
fn obey(
    line: &str,
    command: LineCommand,
    machines: &mut [MachinePoller],
) -> Option<tokio::sync::oneshot::Receiver<()>> {
    let find = |machines: &mut [MachinePoller], id: &str| {
        machines.iter().position(|m| m.registry_id().as_str() == id)
    };
    match command {
        LineCommand::LongPoll { machine, poll, reply } => {
            let outcome = match find(machines, &machine) {
                Some(i) => machines[i].session.enqueue(poll.long_poll()).map_err(|e| e.to_string()),
                None => Err(format!("no machine {machine} on line {line}")),
            };
            let _ = reply.send(outcome);
            None
        }
        LineCommand::RemoteControl { machine, control, reply } => {
            let outcome = match find(machines, &machine) {
                Some(i) => machines[i]
                    .session
                    .enqueue_first(LongPoll::from(control))
                    .map_err(|e| e.to_string()),
                None => Err(format!("no machine {machine} on line {line}")),
            };
            let _ = reply.send(outcome);
            None
        }
        LineCommand::MeterSnapshot { machine, reply } => {
            let outcome = match find(machines, &machine) {
                Some(i) => {
                    machines[i].queue_snapshot();
                    Ok(())
                }
                None => Err(format!("no machine {machine} on line {line}")),
            };
            let _ = reply.send(outcome);
            None
        }
        LineCommand::Release { reply } => {
            let (give_back, back) = tokio::sync::oneshot::channel();
            // A caller that went away while waiting gets nothing, and keeps nothing released.
            reply.send(command::Release(give_back)).ok().map(|()| back)
        }
    }
}

/// Publishes the machines' counters and links.
fn publish(
    status: &tokio::sync::watch::Sender<LineStatus>,
    machines: &[MachinePoller],
    published: &mut [MachineStatus],
) {
    for (m, s) in machines.iter().zip(published.iter_mut()) {
        let stats = m.session.stats();
        s.next_seq = m.next_seq();
        s.polls = stats.tries;
        s.retries = stats.retries;
        s.timeouts = stats.timeouts;
        s.crc_errors = stats.crc_errors;
        s.decode_errors = stats.decode_errors;
        s.busy = stats.busy;
        s.chirps = stats.chirps;
        s.dropped_reports = m.dropped_reports();
        // Plain reads of the session's queues: they change nothing the session decides on.
        s.polls_queued = m.session.queued().count();
        s.exceptions_pending = m.session.owed_follow_ups().len();
        s.rte = m.session.rte_enabled();
    }
    status.send_modify(|s| s.machines = published.to_vec());
}

/// The next message for the line, honouring the shared-line rules of the module doc.
fn next_transmit(
    machines: &mut [MachinePoller],
    now: std::time::Instant,
    next_turn: &mut usize,
) -> Option<(usize, Transmit)> {
    if machines.iter().any(|m| m.session.is_holding()) {
        return None;
    }
    if let Some(i) = machines.iter().position(|m| m.session.has_retry_pending()) {
        return machines[i].session.poll_transmit(now).map(|tx| (i, tx));
    }
    let n = machines.len();
    for k in 0..n {
        let i = (*next_turn + k) % n;
        if let Some(tx) = machines[i].session.poll_transmit(now) {
            *next_turn = (i + 1) % n;
            return Some((i, tx));
        }
    }
    None
}

/// Hands received characters to the session awaiting an answer. A character with the wakeup bit
/// is a chirp: it goes to the machine with that address, or, for an address not configured on
/// this line, to the first machine's session, which reports it as a foreign chirp (never adopted).
fn dispatch(machines: &mut [MachinePoller], now: std::time::Instant, input: &[Character]) {
    for c in input {
        let target = if c.wakeup {
            machines.iter().position(|m| m.address().get() == c.byte)
        } else {
            machines.iter().position(|m| m.session.is_exchanging())
        };
        if let Some(m) = machines.get_mut(target.unwrap_or(0)) {
            m.received(c.byte);
            m.session.handle_input(now, std::slice::from_ref(c));
        }
    }
}

/// Appends `events` durably, retrying with back-off until it succeeds. Returns `false` only if
/// `cancel` fires while the append keeps failing.
async fn persist(
    journal: &Journal,
    events: &[(CanonicalEvent, Vec<u8>)],
    cancel: &CancellationToken,
    line: &str,
    status: &tokio::sync::watch::Sender<LineStatus>,
) -> bool {
    let mut delay = PERSIST_RETRY.0;
    // Waiting for the journal (slow, or refusing: a full disk) is not a stuck poller: the
    // watchdog judges the journal's health instead, and a refusing journal raises its own alarm.
    status.send_modify(|s| s.waiting_for_journal = true);
    let stored = loop {
        match journal.append_events(events).await {
            Ok(_) => break true,
            Err(error) => {
                tracing::error!(
                    line,
                    %error,
                    events = events.len(),
                    "Events could not be made durable; machines stay unacknowledged and the \
                     append is retried."
                );
                tokio::select! {
                    () = cancel.cancelled() => break false,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(PERSIST_RETRY.1);
            }
        }
    };
    status.send_modify(|s| s.waiting_for_journal = false);
    stored
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn machines(now: std::time::Instant) -> Vec<MachinePoller> {
        [1, 2].into_iter().map(|address| machine::test_poller(address, now)).collect()
    }

    /// Which machines' sessions were resumed from `record`.
    fn resumed(record: Record) -> (bool, Vec<bool>) {
        let now = Instant::now().into_std();
        let mut machines = machines(now);
        let any = resume("line", Some(record), &mut machines, now);
        (any, machines.iter().map(|m| m.session.has_retry_pending()).collect())
    }

    #[test]
    fn only_a_sent_record_for_a_machine_on_the_line_resumes_and_only_that_machine() {
        let sent = |address, bytes: &[u8]| Record {
            state: State::Sent,
            address,
            rte_on: true,
            bytes: bytes.to_vec(),
            next_machine_seq: 5,
            owed: Vec::new(),
        };
        assert_eq!(resumed(sent(2, &[0x02, 0x1C])), (true, vec![false, true]));
        let stored = Record { next_machine_seq: 4, ..sent(1, &[0x81]) };
        assert_eq!(resumed(stored), (false, vec![false, false]), "events stored, flag missed");
        assert_eq!(resumed(sent(1, &[0x81])), (true, vec![true, false]));
        let confirmed = Record { state: State::Confirmed, ..sent(1, &[0x81]) };
        assert_eq!(resumed(confirmed), (false, vec![false, false]), "already durable");
        assert_eq!(resumed(sent(0, &[0x80])), (false, vec![false, false]), "the sync poll");
        assert_eq!(resumed(sent(5, &[0x85])), (false, vec![false, false]), "not on this line");
        assert_eq!(resumed(sent(1, &[0x01, 0x99])), (false, vec![false, false]), "garbage");
    }

    #[test]
    fn the_state_model_shows_the_polls_queued_and_the_follow_ups_owed() {
        let now = Instant::now().into_std();
        let mut machines = machines(now);
        let mut published: Vec<MachineStatus> = machines
            .iter()
            .map(|m| {
                MachineStatus::new(
                    m.registry_id().to_string(),
                    m.address().get(),
                    jiff::Timestamp::now(),
                )
            })
            .collect();
        let (status, rx) = tokio::sync::watch::channel(LineStatus::connecting("line"));
        let queued = |m: &MachinePoller| m.session.queued().count();
        let before = (queued(&machines[0]), queued(&machines[1]));
        machines[0]
            .session
            .restore_follow_ups([(LongPoll::SendHandpayInfo, Exception::HandpayPending)]);
        machines[1].session.enqueue(LongPoll::SendMachineInfo).unwrap();
        publish(&status, &machines, &mut published);
        let shown: Vec<(usize, usize)> =
            rx.borrow().machines.iter().map(|m| (m.polls_queued, m.exceptions_pending)).collect();
        assert_eq!(shown, vec![(before.0 + 1, 1), (before.1 + 1, 0)]);
    }
}
