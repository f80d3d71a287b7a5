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
//! - **A lost connection is silence.** While the line is down, sessions go on and their messages
//!   go nowhere: they time out, and the machines are reported offline after the profile's
//!   `offline_after` failures, exactly as for a machine that stopped answering. Reconnection runs
//!   concurrently with jittered exponential back-off.
//! - **Listening on silent lines.** Any address byte keeps every machine on a line from chirping
//!   (§4.1), so a machine set to an address the configuration does not list would stay invisible
//!   while the gateway polls. When no machine of a line has answered for [`LISTEN_AFTER`], the
//!   line is left quiet for [`LISTEN_FOR`] every [`LISTEN_EVERY`]: a machine there chirps, and
//!   its address is reported as a foreign chirp (never adopted).
//! - **Stopping between exchanges.** Cancellation is acted on only when no answer is awaited and
//!   every event taken out of a session is durable.

pub mod machine;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use firmware_protocols::sas::Character;
use firmware_protocols::sas::session::{LinkState, Transmit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use machine::{MachinePoller, Schedule};

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

/// First and longest pause between retries of a failed durable append.
const PERSIST_RETRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

type Connecting<L> = Pin<Box<dyn Future<Output = Result<L, TransportError>> + Send>>;

/// Where the line's connection stands.
enum LineState<L> {
    Up(L),
    Connecting(Connecting<L>),
    /// Waiting out the back-off before the next attempt.
    Waiting(Instant),
}

/// What woke the task from the line side.
enum LineInput<L> {
    Received,
    Lost(TransportError),
    Opened(L),
    OpenFailed(TransportError),
    RetryNow,
}

/// Polls every machine of one line until `cancel` fires.
pub async fn run_line<C>(
    name: String,
    connector: C,
    mut machines: Vec<MachinePoller>,
    journal: Journal,
    cancel: CancellationToken,
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
    tracing::info!(line = %name, machines = machines.len(), "Line poller started.");

    loop {
        let now = Instant::now().into_std();
        let wall = jiff::Timestamp::now();
        let pressure = *journal.pressure().borrow();
        for m in &mut machines {
            m.session.handle_timeout(now);
            m.tick(now, wall, pressure);
        }

        for m in &mut machines {
            m.take_events(now, wall, &mut events);
        }
        if !events.is_empty() {
            if !persist(&journal, &events, &cancel, &name).await {
                // Shutting down with events that never became durable: do not confirm them, so
                // the machines still hold them and report them again to the next run.
                break;
            }
            events.clear();
        }
        // Every session event taken out above is now durable or maps to nothing durable (the
        // ACK of LP0E, say): confirm unconditionally, or a session holds the line for good.
        machines.iter_mut().for_each(|m| m.session.confirm_events());

        let exchanging = machines.iter().any(|m| m.session.is_exchanging());
        if cancel.is_cancelled() && !exchanging {
            break;
        }
        let tokio_now = Instant::now();
        if machines.iter().any(|m| m.session.link() == LinkState::Up) {
            last_answer = tokio_now;
        }
        if listen_until.is_none()
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
        if !exchanging
            && !listening
            && let Some((i, tx)) = next_transmit(&mut machines, now, &mut next_turn)
        {
            machines[i].start_exchange();
            tracing::trace!(line = %name, bytes = ?Hex(&tx.characters), retry = tx.retry, "Sent.");
            if let LineState::Up(line) = &mut state {
                line.clear_input();
                if let Err(error) = line.send(&tx.characters).await {
                    tracing::warn!(line = %name, %error, "Sending failed; reconnecting.");
                    state = LineState::Waiting(Instant::now() + backoff.next_delay());
                }
            }
            continue;
        }

        let deadline = machines
            .iter()
            .filter_map(MachinePoller::next_deadline)
            .min()
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
                    state = LineState::Waiting(Instant::now() + backoff.next_delay());
                }
                LineInput::Opened(line) => {
                    tracing::info!(line = %name, via = %line.describe(), "Line connected.");
                    state = LineState::Up(line);
                }
                LineInput::OpenFailed(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(line = %name, %error, retry_in = ?delay, "Connecting failed.");
                    state = LineState::Waiting(Instant::now() + delay);
                }
                LineInput::RetryNow => state = LineState::Connecting(connect(&connector)),
            },
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
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
            failed_exchanges = stats.failed_exchanges,
            busy = stats.busy,
            chirps = stats.chirps,
            "Line statistics."
        );
    }
    tracing::info!(line = %name, "Line poller stopped.");
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
    }
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
) -> bool {
    let mut delay = PERSIST_RETRY.0;
    loop {
        match journal.append_events(events).await {
            Ok(_) => return true,
            Err(error) => {
                tracing::error!(
                    line,
                    %error,
                    events = events.len(),
                    "Events could not be made durable; machines stay unacknowledged and the \
                     append is retried."
                );
                tokio::select! {
                    () = cancel.cancelled() => return false,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(PERSIST_RETRY.1);
            }
        }
    }
}
