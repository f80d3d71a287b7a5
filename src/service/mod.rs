//! The daemon as systemd sees it (`Type=notify`, sd_notify(3)): READY=1 once everything runs,
//! STATUS= for `systemctl status`, WATCHDOG=1 only while every part makes progress, STOPPING=1
//! at the stop, EXTEND_TIMEOUT_USEC= while a long journal recovery holds the start. Outside
//! systemd (no `NOTIFY_SOCKET`) every notification is a no-op.
//!
//! Progress is judged per part of the live state model ([`crate::state`]), each within
//! [`Window`] (the watchdog period systemd gave); lines and destinations a reload adds or
//! removes are judged from the moment they appear:
//! - a line poller stamps its `progress_at` at every turn of its loop (at least once a second
//!   unless a send or the journal blocks it); a line whose poller did not turn is stuck, even if
//!   its line is down or its machines silent (those are reported, and a restart would not cure
//!   them). A poller that says it is `waiting_for_journal` is judged by the journal's health:
//!   a full disk refusing its events is the journal's alarm, not a reason to restart;
//! - the journal writer must answer an empty group commit (which also proves the disk takes a
//!   flush);
//! - a forwarder that is up with records to deliver must show it in its status (a delivery, an
//!   acknowledgement, a state change); one that is down waits for its destination, which a
//!   restart would not bring back, and one with nothing to deliver has nothing to prove.
//!
//! A stuck part withholds WATCHDOG=1, so systemd restarts the service after `WatchdogSec=`; the
//! STATUS= line names the part meanwhile.

pub mod identity;
pub mod reload;

use std::collections::HashMap;
use std::time::Duration;

pub use sd_notify::NotifyState;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::forward::{DestinationStatus, LinkState};
use crate::journal::{Journal, JournalError};
use crate::poller::{LineConnection, LineStatus};
use crate::state::{Snapshot, StateView};

/// How often STATUS= is refreshed when systemd asked for no watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// The start timeout extension asked for, and re-asked every half of it, while the journal
/// recovers.
const START_EXTENSION: Duration = Duration::from_secs(30);

/// A gateway audit record (`software_id`, `config_changed`).
fn audit_record(name: &str, what: &impl serde::Serialize) -> crate::journal::NewRecord {
    crate::journal::NewRecord::audit(name, what)
}

/// Where notifications go: the service manager's `NOTIFY_SOCKET`, a datagram socket named by a
/// path or, with a leading `@`, in the abstract namespace (sd_notify(3)). None outside systemd.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<std::ffi::OsString>,
}

impl Notifier {
    /// The socket systemd names in `NOTIFY_SOCKET`.
    pub fn from_env() -> Self {
        Self { socket: std::env::var_os("NOTIFY_SOCKET") }
    }

    /// The socket at `socket` (a test's, standing in for systemd's).
    pub fn to(socket: impl Into<std::ffi::OsString>) -> Self {
        Self { socket: Some(socket.into()) }
    }

    /// Whether there is a service manager to notify.
    pub fn is_active(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends `states`, one per line; a failure is logged, never fatal (systemd may be gone
    /// while we stop).
    pub fn send(&self, states: &[NotifyState<'_>]) {
        let Some(socket) = &self.socket else { return };
        let message: String = states.iter().map(|s| format!("{s}\n")).collect();
        if let Err(error) = send_datagram(socket, message.as_bytes()) {
            tracing::warn!(%error, "Cannot notify the service manager.");
        }
    }
}

fn send_datagram(socket: &std::ffi::OsStr, message: &[u8]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let name = socket.as_bytes();
    let address = match name.strip_prefix(b"@") {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    let sent = UnixDatagram::unbound()?.send_to_addr(message, &address)?;
    if sent == message.len() {
        Ok(())
    } else {
        Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "the notification was cut short"))
    }
}

/// Sends `states` to systemd's socket, if any.
fn notify(states: &[NotifyState<'_>]) {
    Notifier::from_env().send(states);
}

/// READY=1 with the first STATUS= line: the configuration is valid, the journal open, the
/// listeners bound and every line task started.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// STOPPING=1: the orderly drain starts.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("Stopping: draining the lines.")]);
}

/// Runs `open` (the journal's opening, which may recover a large store) on this thread while
/// another asks systemd for more start time every half [`START_EXTENSION`], so a long recovery
/// is not killed as a hung start.
pub fn extending_start_timeout<T>(open: impl FnOnce() -> T) -> T {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return open();
    }
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let usec = u32::try_from(START_EXTENSION.as_micros()).unwrap_or(u32::MAX);
    let extender = std::thread::spawn(move || {
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            wait.recv_timeout(START_EXTENSION / 2)
        {
            notify(&[
                NotifyState::ExtendTimeoutUsec(usec),
                NotifyState::Status("Opening the journal (recovery)."),
            ]);
        }
    });
    let opened = open();
    drop(done);
    let _ = extender.join();
    opened
}

/// The watchdog period systemd set (`WATCHDOG_USEC`), if any.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// How long a part may go without progress; the watchdog period itself, so a stuck part is
/// restarted within two periods.
#[derive(Debug, Clone, Copy)]
pub struct Window(pub Duration);

/// Each part's last progress mark and when the watchdog saw it change (on tokio's clock: a wall
/// clock stepped by NTP neither hides nor fakes a stall).
#[derive(Debug)]
struct Progress {
    journal: Instant,
    lines: HashMap<String, (Option<jiff::Timestamp>, Instant)>,
    destinations: HashMap<String, (DestinationMark, Instant)>,
}

/// What a forwarder's progress is made of: a delivery, an acknowledgement, a state change.
type DestinationMark = (LinkState, u64, u64);

/// Pings WATCHDOG=1 every quarter of the window while every part of the state model made
/// progress within it, and keeps STATUS= current, until `cancel`. Without a watchdog only
/// STATUS= is sent. Returns only when cancelled: a watchdog task that ends is a failure.
pub async fn watchdog(
    view: StateView,
    journal: Journal,
    window: Option<Window>,
    notifier: Notifier,
    cancel: CancellationToken,
) {
    let every = window.map_or(STATUS_EVERY, |w| w.0 / 4);
    let limit = window.map_or(Duration::MAX, |w| w.0);
    let mut progress =
        Progress { journal: Instant::now(), lines: HashMap::new(), destinations: HashMap::new() };
    let mut was_stuck = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let probe = tokio::time::timeout(limit.min(every * 4), journal.append(Vec::new()));
        let answered = tokio::select! {
            () = cancel.cancelled() => return,
            answered = probe => answered,
        };
        let now = Instant::now();
        // Any answer but a closed channel is the writer at work (a full disk is its own alarm).
        if let Ok(Ok(_) | Err(JournalError::DiskFloor { .. } | JournalError::Store(_))) = answered {
            progress.journal = now;
        }
        let snapshot = view.snapshot();
        let stuck = progress.judge(&snapshot.lines, &snapshot.destinations, now, limit);
        let status = status_line(&snapshot, &stuck);
        if stuck != was_stuck {
            if stuck.is_empty() {
                tracing::info!("Every part makes progress again; watchdog pings resume.");
            } else {
                tracing::error!(stuck = %stuck.join(", "),
                    "No progress within the watchdog window; withholding the watchdog ping so \
                     the service manager restarts the gateway.");
            }
            was_stuck.clone_from(&stuck);
        }
        if window.is_some() && stuck.is_empty() {
            notifier.send(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
        } else {
            notifier.send(&[NotifyState::Status(&status)]);
        }
    }
}

impl Progress {
    /// The names of the parts without progress within `limit`, remembering what was seen now.
    /// A part seen for the first time (at the start, or added by a reload) starts its window
    /// now; one no longer in the state model is forgotten.
    fn judge(
        &mut self,
        line_status: &[LineStatus],
        destination_status: &[DestinationStatus],
        now: Instant,
        limit: Duration,
    ) -> Vec<String> {
        let late = |at: Instant| now.duration_since(at) > limit;
        let journal_works = !late(self.journal);
        let mut stuck = Vec::new();
        let mut lines = HashMap::new();
        for line in line_status {
            let mut at = match self.lines.remove(&line.name) {
                Some((mark, at)) if mark == line.progress_at => at,
                _ => now,
            };
            // Blocked on the journal, the poller is as healthy as the journal (judged below):
            // restarting it would not make a full disk take its events.
            if line.waiting_for_journal && journal_works {
                at = now;
            }
            if late(at) {
                stuck.push(format!("line poller {}", line.name));
            }
            lines.insert(line.name.clone(), (line.progress_at, at));
        }
        self.lines = lines;
        let mut destinations = HashMap::new();
        for destination in destination_status {
            let mark = (destination.state, destination.cursor, destination.delivered);
            // Down, it waits for its destination, which a restart would not bring back; with
            // nothing to deliver it has nothing to prove.
            let idle = destination.state != LinkState::Up || destination.unacknowledged == 0;
            let at = match self.destinations.remove(&destination.name) {
                Some((seen, at)) if seen == mark && !idle => at,
                _ => now,
            };
            if late(at) {
                stuck.push(format!("forwarder {}", destination.name));
            }
            destinations.insert(destination.name.clone(), (mark, at));
        }
        self.destinations = destinations;
        if !journal_works {
            stuck.push("journal writer".to_owned());
        }
        stuck
    }
}

/// The STATUS= line: lines up, destinations up, the largest backlog, and what is stuck.
fn status_line(snapshot: &Snapshot, stuck: &[String]) -> String {
    let lines_up = snapshot.lines.iter().filter(|l| l.state == LineConnection::Up).count();
    let destinations_up = snapshot.destinations.iter().filter(|d| d.state == LinkState::Up).count();
    let backlog = snapshot.destinations.iter().map(|d| d.unacknowledged).max().unwrap_or(0);
    let mut status = format!(
        "Lines up {lines_up}/{}; destinations up {destinations_up}/{}; backlog {backlog} record(s).",
        snapshot.lines.len(),
        snapshot.destinations.len()
    );
    if !stuck.is_empty() {
        status.push_str(&format!(" STUCK: {}.", stuck.join(", ")));
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(lines: &[(&str, Option<jiff::Timestamp>, bool)]) -> Vec<LineStatus> {
        lines
            .iter()
            .map(|(name, at, waiting)| LineStatus {
                progress_at: *at,
                waiting_for_journal: *waiting,
                ..LineStatus::connecting(name)
            })
            .collect()
    }

    fn mark(second: i64) -> Option<jiff::Timestamp> {
        jiff::Timestamp::from_second(second).ok()
    }

    /// Two pollers stamp their progress; one stops. Stuck exactly once its silence exceeds the
    /// window, named, and no longer once it moves again.
    #[tokio::test(start_paused = true)]
    async fn a_line_poller_whose_progress_stops_is_stuck_after_the_window() {
        let window = Duration::from_secs(2);
        let start = Instant::now();
        let mut progress =
            Progress { journal: start, lines: HashMap::new(), destinations: HashMap::new() };
        let mut judge = |seen: &[(&str, Option<jiff::Timestamp>, bool)], journal: Instant| {
            progress.journal = journal;
            progress.judge(&lines(seen), &[], Instant::now(), window)
        };
        assert!(judge(&[("line-1", None, false), ("line-2", None, false)], start).is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        assert!(judge(&[("line-1", mark(1), false), ("line-2", mark(1), false)], now).is_empty());
        // line-2 last moved at 1 s: at 3 s it is exactly at the window, still fine.
        tokio::time::advance(window).await;
        let now = Instant::now();
        assert!(judge(&[("line-1", mark(3), false), ("line-2", mark(1), false)], now).is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        let now = Instant::now();
        assert_eq!(
            judge(&[("line-1", mark(4), false), ("line-2", mark(1), false)], now),
            ["line poller line-2"]
        );
        assert!(judge(&[("line-1", mark(4), false), ("line-2", mark(5), false)], now).is_empty());
    }

    /// A poller blocked on the journal is as healthy as the journal: fine while the journal
    /// answers, and once it does not, the journal writer is named, and the poller with it.
    #[tokio::test(start_paused = true)]
    async fn a_poller_waiting_for_the_journal_is_judged_by_the_journal() {
        let window = Duration::from_secs(2);
        let start = Instant::now();
        let mut progress =
            Progress { journal: start, lines: HashMap::new(), destinations: HashMap::new() };
        let waiting = [("line-1", mark(0), true)];
        assert!(progress.judge(&lines(&waiting), &[], start, window).is_empty());
        tokio::time::advance(Duration::from_secs(5)).await;
        progress.journal = Instant::now();
        assert!(progress.judge(&lines(&waiting), &[], Instant::now(), window).is_empty());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            progress.judge(&lines(&waiting), &[], Instant::now(), window),
            ["line poller line-1", "journal writer"]
        );
    }

    /// systemd names its socket by path or, with `@`, in the abstract namespace: both get the
    /// states one per line, in one datagram.
    #[test]
    fn notifications_reach_a_path_or_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let by_path = UnixDatagram::bind(&path).unwrap();
        let name = format!("slotgate-test-{}", std::process::id());
        let by_name =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let states = [NotifyState::Ready, NotifyState::Status("Polling 1 line(s).")];
        Notifier::to(&path).send(&states);
        Notifier::to(format!("@{name}")).send(&states);
        for socket in [by_path, by_name] {
            socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 256];
            let n = socket.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"READY=1\nSTATUS=Polling 1 line(s).\n");
        }
        // Outside systemd nothing is sent, and nothing fails.
        Notifier::default().send(&states);
        assert!(!Notifier::default().is_active());
    }

    /// Hands out one end of an in-memory line once; later attempts never end.
    #[derive(Clone)]
    struct HandedOnce(std::sync::Arc<std::sync::Mutex<Option<crate::transport::MemoryLine>>>);

    impl crate::transport::Connect for HandedOnce {
        type Line = crate::transport::MemoryLine;

        async fn connect(&self) -> Result<Self::Line, crate::transport::TransportError> {
            let line = self.0.lock().ok().and_then(|mut l| l.take());
            match line {
                Some(line) => Ok(line),
                None => std::future::pending().await,
            }
        }

        fn describe(&self) -> String {
            "memory".into()
        }

        fn planned_wakeup(&self) -> crate::transport::WakeupMethod {
            crate::transport::WakeupMethod::Framed
        }
    }

    /// The datagrams that reached `socket` within `wait`, as lines.
    async fn received(socket: &tokio::net::UnixDatagram, wait: Duration) -> Vec<String> {
        let mut lines = Vec::new();
        let mut buf = vec![0u8; 4096];
        let until = Instant::now() + wait;
        while let Ok(Ok(n)) = tokio::time::timeout_at(until, socket.recv(&mut buf)).await {
            lines.extend(String::from_utf8_lossy(&buf[..n]).lines().map(str::to_owned));
        }
        lines
    }

    /// A line whose peer stops reading (a serial server whose port is held by flow control):
    /// once the pipe is full the poller's send never returns, so its loop stops turning. The
    /// watchdog, reading the state model, keeps pinging systemd's socket (a real datagram socket
    /// here) while the poller turns and withholds WATCHDOG=1 once it has not for a window.
    /// Real time: the journal's writer is a thread, which paused time would not wait for.
    #[tokio::test]
    async fn a_poller_blocked_on_a_peer_that_stopped_reading_stops_the_watchdog_pings() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let socket_path = dir.path().join("notify.sock");
        let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
        let (journal, writer) =
            Journal::open(crate::journal::JournalConfig::in_dir(&dir.path().join("journal")))
                .unwrap();
        // A pipe of 8 bytes: four framed characters, filled by a few unanswered polls.
        let (host, mut machine) = tokio::io::duplex(8);
        let line = crate::transport::FramedLine::new(host, "stalling peer");
        let (status, status_rx) = tokio::sync::watch::channel(LineStatus::connecting("stalling"));
        let (_handle, commands) = crate::poller::command::channel("stalling");
        let cancel = CancellationToken::new();
        let poller = tokio::spawn(crate::poller::run_line(
            "stalling".to_owned(),
            HandedOnce(std::sync::Arc::new(std::sync::Mutex::new(Some(line)))),
            crate::poller::tests::machines(Instant::now().into_std()),
            None,
            journal.clone(),
            cancel.clone(),
            status,
            commands,
        ));
        let view = StateView {
            journal: journal.status(),
            lines: tokio::sync::watch::channel(vec![status_rx]).1,
            destinations: tokio::sync::watch::channel(Vec::new()).1,
            desired: tokio::sync::watch::channel(Default::default()).1,
            started_at: jiff::Timestamp::now(),
            ready: tokio::sync::watch::channel(None).1,
            stopping: cancel.clone(),
        };
        let window = Duration::from_millis(400);
        let watchdog = tokio::spawn(watchdog(
            view,
            journal.clone(),
            Some(Window(window)),
            Notifier::to(&socket_path),
            cancel.clone(),
        ));
        // The peer reads (and never answers): the machines time out, the loop turns.
        let stop_reading = CancellationToken::new();
        let reader = {
            let stop = stop_reading.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return machine,
                        read = machine.read(&mut buf) => assert!(read.unwrap() > 0),
                    }
                }
            })
        };
        let healthy = received(&socket, Duration::from_secs(2)).await;
        let pings = healthy.iter().filter(|l| *l == "WATCHDOG=1").count();
        // A ping every 100 ms for 2 s; a loaded machine may delay some.
        assert!(pings >= 10, "{healthy:?}");
        assert!(!healthy.iter().any(|l| l.contains("STUCK")), "{healthy:?}");

        stop_reading.cancel();
        // Held, not dropped: a closed pipe would be a lost line, which the poller handles.
        let _machine = reader.await.unwrap();
        let stopped = Instant::now();
        let mut seen = Vec::new();
        while !seen.iter().any(|l: &String| l.contains("STUCK: line poller stalling")) {
            assert!(stopped.elapsed() < Duration::from_secs(10), "never judged stuck: {seen:?}");
            seen.extend(received(&socket, Duration::from_millis(100)).await);
        }
        let after = received(&socket, window * 3).await;
        assert!(!after.contains(&"WATCHDOG=1".to_owned()), "pinged while stuck: {after:?}");
        assert!(after.iter().any(|l| l.contains("STUCK: line poller stalling")), "{after:?}");

        cancel.cancel();
        watchdog.await.unwrap();
        // The poller is blocked in its send for good: that is the point.
        poller.abort();
        let _ = poller.await;
        drop(journal);
        tokio::task::spawn_blocking(move || writer.join()).await.unwrap().unwrap();
    }
}
