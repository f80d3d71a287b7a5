//! The daemon as systemd sees it (`Type=notify`, sd_notify(3)): READY=1 once everything runs,
//! STATUS= for `systemctl status`, WATCHDOG=1 only while every part makes progress, STOPPING=1
//! at the stop, EXTEND_TIMEOUT_USEC= while a long journal recovery holds the start. Outside
//! systemd (no `NOTIFY_SOCKET`) every notification is a no-op.
//!
//! Progress is judged per part, each within [`Window`] (the watchdog period systemd gave):
//! - a line poller beats its status channel at every turn of its loop (at least once a second
//!   while it is not blocked); a line whose poller did not turn is stuck, even if its line is
//!   down or its machines silent (those are reported, and a restart would not cure them);
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

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::forward::{DestinationStatus, LinkState};
use crate::journal::{Journal, JournalError};
use crate::poller::{LineConnection, LineStatus};

/// How often STATUS= is refreshed when systemd asked for no watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// The start timeout extension asked for, and re-asked every half of it, while the journal
/// recovers.
const START_EXTENSION: Duration = Duration::from_secs(30);

/// A gateway audit record (`software_id`, `config_changed`).
fn audit_record(name: &str, what: &impl serde::Serialize) -> crate::journal::NewRecord {
    crate::journal::NewRecord::audit(name, what)
}

/// Sends `states`; a failure is logged, never fatal (systemd may be gone while we stop).
fn notify(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "Cannot notify the service manager.");
    }
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

/// The parts whose progress the watchdog judges.
#[derive(Debug)]
pub struct Parts {
    pub journal: Journal,
    pub lines: Vec<watch::Receiver<LineStatus>>,
    pub destinations: Vec<watch::Receiver<DestinationStatus>>,
}

/// One part's last seen progress.
#[derive(Debug)]
struct Seen {
    at: Instant,
}

/// Pings WATCHDOG=1 every quarter of the window while every part made progress within it, and
/// keeps STATUS= current, until `cancel`. Without a watchdog only STATUS= is sent.
pub async fn watchdog(mut parts: Parts, window: Option<Window>, cancel: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let every = window.map_or(STATUS_EVERY, |w| w.0 / 4);
    let start = Instant::now();
    let mut lines: Vec<Seen> = parts.lines.iter().map(|_| Seen { at: start }).collect();
    let mut destinations: Vec<Seen> =
        parts.destinations.iter().map(|_| Seen { at: start }).collect();
    let mut journal = Seen { at: start };
    let mut was_stuck = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let limit = window.map_or(Duration::MAX, |w| w.0);
        let probe = tokio::time::timeout(limit.min(every * 4), parts.journal.append(Vec::new()));
        let answered = tokio::select! {
            () = cancel.cancelled() => return,
            answered = probe => answered,
        };
        let now = Instant::now();
        // Any answer but a closed channel is the writer at work (a full disk is its own alarm).
        if let Ok(Ok(_) | Err(JournalError::DiskFloor { .. } | JournalError::Store(_))) = answered {
            journal.at = now;
        }
        let mut stuck = judge(
            &mut parts.lines,
            &mut lines,
            &mut parts.destinations,
            &mut destinations,
            now,
            limit,
        );
        if now.duration_since(journal.at) > limit {
            stuck.push("journal writer".to_owned());
        }
        let status = status_line(&parts, &stuck);
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
            notify(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
        } else {
            notify(&[NotifyState::Status(&status)]);
        }
    }
}

/// The names of the parts without progress within `limit`, updating what was last seen.
fn judge(
    line_status: &mut [watch::Receiver<LineStatus>],
    lines: &mut [Seen],
    destination_status: &mut [watch::Receiver<DestinationStatus>],
    destinations: &mut [Seen],
    now: Instant,
    limit: Duration,
) -> Vec<String> {
    let mut stuck = Vec::new();
    for (line, seen) in line_status.iter_mut().zip(lines.iter_mut()) {
        // A closed channel is a poller that ended: the supervisor's business, not ours.
        if line.has_changed().unwrap_or(false) {
            line.borrow_and_update();
            seen.at = now;
        }
        if now.duration_since(seen.at) > limit {
            stuck.push(format!("line poller {}", line.borrow().name));
        }
    }
    for (destination, seen) in destination_status.iter_mut().zip(destinations.iter_mut()) {
        let changed = destination.has_changed().unwrap_or(false);
        let status = destination.borrow_and_update();
        let idle = status.state != LinkState::Up || status.unacknowledged == 0;
        if changed || idle {
            seen.at = now;
        }
        if now.duration_since(seen.at) > limit {
            stuck.push(format!("forwarder {}", status.name));
        }
    }
    stuck
}

/// The STATUS= line: lines up, destinations up, the largest backlog, and what is stuck.
fn status_line(parts: &Parts, stuck: &[String]) -> String {
    let lines_up = parts.lines.iter().filter(|l| l.borrow().state == LineConnection::Up).count();
    let destinations_up =
        parts.destinations.iter().filter(|d| d.borrow().state == LinkState::Up).count();
    let backlog = parts.destinations.iter().map(|d| d.borrow().unacknowledged).max().unwrap_or(0);
    let mut status = format!(
        "Lines up {lines_up}/{}; destinations up {destinations_up}/{}; backlog {backlog} record(s).",
        parts.lines.len(),
        parts.destinations.len()
    );
    if !stuck.is_empty() {
        status.push_str(&format!(" STUCK: {}.", stuck.join(", ")));
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two pollers beat; one stops. Stuck exactly once its silence exceeds the window, named,
    /// and no longer once it beats again.
    #[tokio::test(start_paused = true)]
    async fn a_line_poller_that_stops_beating_is_stuck_after_the_window() {
        let window = Duration::from_secs(2);
        let (beat_1, rx_1) = watch::channel(LineStatus::connecting("line-1"));
        let (beat_2, rx_2) = watch::channel(LineStatus::connecting("line-2"));
        let mut receivers = vec![rx_1, rx_2];
        let start = Instant::now();
        let mut seen = vec![Seen { at: start }, Seen { at: start }];
        let judge_now = |receivers: &mut Vec<_>, seen: &mut Vec<_>| {
            judge(receivers, seen, &mut [], &mut [], Instant::now(), window)
        };
        tokio::time::advance(Duration::from_secs(1)).await;
        beat_1.send_modify(|_| {});
        beat_2.send_modify(|_| {});
        assert!(judge_now(&mut receivers, &mut seen).is_empty());
        // line-2 last beat at 1 s: at 3 s it is exactly at the window, still fine.
        tokio::time::advance(window).await;
        beat_1.send_modify(|_| {});
        assert!(judge_now(&mut receivers, &mut seen).is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        beat_1.send_modify(|_| {});
        assert_eq!(judge_now(&mut receivers, &mut seen), ["line poller line-2"]);
        beat_2.send_modify(|_| {});
        assert!(judge_now(&mut receivers, &mut seen).is_empty());
    }
}
