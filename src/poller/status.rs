//! What a line poller reports about its line and its machines, for the live state model
//! ([`crate::state`]): whether the line is open and, when it is not, why and when it is tried
//! again; per machine its link, last event, counters, last meters and clock drift.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::{CanonicalEvent, EventKind, Features, LinkStatus};

/// One line as the status file shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineStatus {
    pub name: String,
    pub state: LineConnection,
    /// Why the line is down: the last error opening or using it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The wait before the next attempt to open it, chosen after the last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_every_seconds: Option<u64>,
    /// Bytes dropped from the line before polls: late answers, noise, a flood.
    #[serde(default)]
    pub discarded_bytes: u64,
    /// How the line is reached: `tcp 10.0.0.5:4000`, `serial /dev/ttyS0`.
    #[serde(default)]
    pub transport: String,
    /// When the line task last went round its loop: the systemd watchdog's progress mark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_at: Option<jiff::Timestamp>,
    /// The task waits for the journal to make its events durable: its progress is then the
    /// journal's (a refusing disk is the journal's alarm, not a stuck poller).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub waiting_for_journal: bool,
    /// The machines on the line, in configuration order.
    #[serde(default)]
    pub machines: Vec<MachineStatus>,
}

/// One machine as the state model shows it. Counters count since the daemon started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineStatus {
    pub registry_id: String,
    pub address: u8,
    /// `online`, `offline`, `chirping`, or `unknown` before the first answer or failure.
    pub link: String,
    /// When `link` last changed (or the daemon started).
    pub link_since: jiff::Timestamp,
    /// Times the link went from online to offline or chirping.
    #[serde(default)]
    pub link_drops: u64,
    /// The `kind` of the last canonical event journalled for the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_at: Option<jiff::Timestamp>,
    /// The machine's next event sequence number.
    pub next_seq: u64,
    /// Transmissions of polls that expect an answer, retries included.
    pub polls: u64,
    /// Implied NACKs: a message repeated because its answer was missing or bad.
    pub retries: u64,
    pub timeouts: u64,
    pub crc_errors: u64,
    /// Answers rejected for another reason (truncated, wrong echo, bad length).
    pub decode_errors: u64,
    /// Busy answers: the machine's way of saying "not now" (its NACK).
    pub busy: u64,
    pub chirps: u64,
    /// Reports dropped as implausible: LP4D reads beyond the validation buffer for one
    /// exception, all-zero LP1B answers (issue 12).
    #[serde(default)]
    pub dropped_reports: u64,
    /// What LPA0 said the machine supports, as the last `machine_info` event had it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Features>,
    /// Long polls queued for the machine, follow-ups of exceptions included.
    #[serde(default)]
    pub polls_queued: usize,
    /// Exceptions acknowledged whose follow-up poll is still owed (their data not read yet).
    #[serde(default)]
    pub exceptions_pending: usize,
    /// Machine minus gateway clock, seconds, from the last read-back past the drift threshold;
    /// cleared when the gateway sets the clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_drift_seconds: Option<i64>,
    /// The lifetime meters of the last whole-machine snapshot (raw when a meter has no
    /// lifetime value), and when it was read.
    #[serde(default)]
    pub meters: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meters_at: Option<jiff::Timestamp>,
    /// Real-time event reporting (LP0E) is on.
    pub rte: bool,
    /// Play is enabled. Always true until remote shutdown (LP01/02) exists.
    pub enabled: bool,
}

impl MachineStatus {
    pub fn new(registry_id: String, address: u8, now: jiff::Timestamp) -> Self {
        Self {
            registry_id,
            address,
            link: "unknown".into(),
            link_since: now,
            link_drops: 0,
            last_event: None,
            last_event_at: None,
            next_seq: 0,
            polls: 0,
            retries: 0,
            timeouts: 0,
            crc_errors: 0,
            decode_errors: 0,
            busy: 0,
            chirps: 0,
            dropped_reports: 0,
            features: None,
            polls_queued: 0,
            exceptions_pending: 0,
            clock_drift_seconds: None,
            meters: BTreeMap::new(),
            meters_at: None,
            rte: false,
            enabled: true,
        }
    }

    /// Takes in one canonical event journalled for this machine.
    pub(crate) fn saw(&mut self, event: &CanonicalEvent) {
        self.last_event = Some(event.kind.name().to_owned());
        self.last_event_at = Some(event.occurred_at);
        match &event.kind {
            EventKind::LinkState { state, .. } => {
                let link = match state {
                    LinkStatus::Chirping => "chirping",
                    LinkStatus::Offline => "offline",
                    LinkStatus::Online => "online",
                };
                if self.link != link {
                    if self.link == "online" {
                        self.link_drops += 1;
                    }
                    self.link = link.to_owned();
                    self.link_since = event.occurred_at;
                }
            }
            EventKind::ClockDrift { drift_seconds, .. } => {
                self.clock_drift_seconds = *drift_seconds;
            }
            EventKind::ClockSet { .. } => self.clock_drift_seconds = None,
            EventKind::MachineInfo(info) if info.features.is_some() => {
                self.features.clone_from(&info.features);
            }
            EventKind::MeterSnapshot { game_number: 0, meters, .. } => {
                for (name, reading) in meters {
                    self.meters.insert(name.clone(), reading.lifetime.unwrap_or(reading.raw));
                }
                self.meters_at = Some(event.occurred_at);
            }
            _ => {}
        }
    }
}

/// Whether a line is open. Alphabetical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineConnection {
    /// The first attempt to open it has not ended yet.
    Connecting,
    /// It could not be opened, or it failed and is being re-opened. Nothing is sent meanwhile.
    Down,
    /// Handed over to `slotgate probe`: closed, nothing is sent until the probe gives it back.
    Released,
    /// Open; its machines are polled.
    Up,
}

impl LineStatus {
    /// A line whose first connection attempt is under way.
    pub fn connecting(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            state: LineConnection::Connecting,
            error: None,
            retry_every_seconds: None,
            discarded_bytes: 0,
            transport: String::new(),
            progress_at: None,
            waiting_for_journal: false,
            machines: Vec::new(),
        }
    }

    pub(crate) fn up(&mut self) {
        self.state = LineConnection::Up;
        self.error = None;
        self.retry_every_seconds = None;
    }

    pub(crate) fn down(&mut self, error: String, retry: Option<Duration>) {
        self.state = LineConnection::Down;
        self.error = Some(error);
        // Rounded up: "every 0s" would read as a busy loop.
        self.retry_every_seconds = retry.map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
    }
}

impl std::fmt::Display for LineStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: ", self.name)?;
        match self.state {
            LineConnection::Connecting => f.write_str("connecting")?,
            LineConnection::Up => f.write_str("up")?,
            LineConnection::Released => f.write_str("RELEASED to a probe")?,
            LineConnection::Down => {
                f.write_str("DOWN")?;
                if let Some(error) = &self.error {
                    write!(f, ": {error}")?;
                }
                if let Some(every) = self.retry_every_seconds {
                    write!(f, " (retrying every {every}s)")?;
                }
            }
        }
        if self.discarded_bytes > 0 {
            write!(f, ", {} unexpected byte(s) discarded", self.discarded_bytes)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_down_line_says_why_and_when_it_is_tried_again() {
        let mut status = LineStatus::connecting("line-1");
        assert_eq!(status.to_string(), "line line-1: connecting");
        status.down(
            "tcp 127.0.0.1:9: connect: Connection refused".into(),
            Some(Duration::from_millis(1_500)),
        );
        assert_eq!(
            status.to_string(),
            "line line-1: DOWN: tcp 127.0.0.1:9: connect: Connection refused (retrying every 2s)"
        );
        status.up();
        status.discarded_bytes = 12;
        assert_eq!(status.to_string(), "line line-1: up, 12 unexpected byte(s) discarded");
    }
}
