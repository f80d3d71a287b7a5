//! When to send LP 01 (shutdown) or LP 02 (startup) to which machine, and when a command is
//! confirmed, done, failed or expired. Sans-IO and synchronous: inputs are verified commands,
//! the machines' observed canonical events, and the time; outputs are [`Output`]s, in order:
//! a [`Step`] must be stored (audited first, `CommandStore::advance`) before the outputs after
//! it are acted on, and a [`Output::Send`] goes to the machine's line task.
//!
//! # Rules
//! - **Only LP 01 and LP 02.** A send carries a [`RemoteControl`], which has exactly those two
//!   values; the line task turns it into a `LongPoll` with `From`. No input can make this
//!   module produce a ticket redemption (LP 71) or any other poll (requirements R22).
//! - **Desired state is re-asserted.** Once a command was sent to a machine, its action is the
//!   machine's desired state (persisted by the store at `sent`), sent again after an EGM power
//!   cycle (exception 17), a RAM clear (`meter_reset`), a link-up and a gateway restart (the
//!   first link-up after [`Executor::new`]), until a newer command changes it.
//! - **Offline machines.** A command for a machine that is offline waits until the machine is
//!   back ([`OfflinePolicy::Queue`], the default) or is rejected at once
//!   ([`OfflinePolicy::Reject`]). A waiting command that expires is never executed, whether
//!   the machine or the uplink was down.
//! - **Newest wins.** A command older (by `issued_at`) than the machine's desired state or
//!   than the command waiting for it is superseded, never executed.
//! - **Confirmed by the ACK, done by behaviour.** The machine's ACK of the poll (the
//!   normalizer's `shutdown_acknowledged` / `startup_acknowledged`) confirms a command. A
//!   shutdown is done when `confirm_window` passes after the ACK with no game started (a game
//!   in progress completes: its end is expected); a game start after the ACK fails the command
//!   and re-asserts the shutdown. A startup is done at its ACK.

use std::collections::BTreeMap;

use firmware_protocols::sas::RemoteControl;
use jiff::{SignedDuration, Timestamp};
use uuid::Uuid;

use super::audit::FailReason;
use super::envelope::Action;
use super::store::{CommandRecord, DesiredState, State, Step};
use super::verify::RejectReason;
use crate::config::{CommandSettings, OfflinePolicy};
use crate::event::{CanonicalEvent, EventKind, GamePhase, LinkStatus};

/// What the executor asks of the gateway, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Store this transition (audit first); act on the following outputs only once it is.
    Step(Step),
    /// Send the poll to the machine through its line task. With `reassert`, audit a
    /// `reasserted` record first (`audit::AuditState::Reasserted`).
    Send { machine: String, control: RemoteControl, command: Uuid, reassert: Option<Trigger> },
}

/// Why a desired state is sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// The first link-up after the gateway started.
    GatewayRestart,
    LinkUp,
    /// AC power applied (exception 17).
    PowerCycle,
    /// Lifetime meters went down (`meter_reset`).
    RamClear,
    /// A game started after the machine acknowledged a shutdown.
    GameStarted,
}

impl Trigger {
    pub fn name(self) -> &'static str {
        match self {
            Self::GatewayRestart => "gateway_restart",
            Self::LinkUp => "link_up",
            Self::PowerCycle => "power_cycle",
            Self::RamClear => "ram_clear",
            Self::GameStarted => "game_started",
        }
    }
}

/// What the executor learns from a machine's canonical events ([`Observation::from_event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    LinkUp,
    LinkDown,
    PowerUp,
    RamClear,
    GameStarted,
    GameEnded,
    /// The machine ACKed LP 01 or LP 02.
    Acknowledged(RemoteControl),
    /// The line task gave LP 01 or LP 02 up.
    PollFailed(RemoteControl),
}

impl Observation {
    /// The observation a canonical event makes, if any. Derived events (meter deltas) say
    /// nothing about when a game started, so they are not observations.
    pub fn from_event(event: &CanonicalEvent) -> Option<Self> {
        if event.derived {
            return None;
        }
        let control = |command: u8| match command {
            0x01 => Some(RemoteControl::Shutdown),
            0x02 => Some(RemoteControl::Startup),
            _ => None,
        };
        Some(match &event.kind {
            EventKind::LinkState { state: LinkStatus::Online, .. } => Self::LinkUp,
            EventKind::LinkState { .. } => Self::LinkDown,
            EventKind::GamePhase { phase: GamePhase::Started } | EventKind::BetAccepted { .. } => {
                Self::GameStarted
            }
            EventKind::GamePhase { phase: GamePhase::Ended } | EventKind::GameEnded { .. } => {
                Self::GameEnded
            }
            EventKind::MeterReset { .. } => Self::RamClear,
            EventKind::SignificantEvent { event, .. } => match event.as_str() {
                "ac_power_applied" => Self::PowerUp,
                "shutdown_acknowledged" => Self::Acknowledged(RemoteControl::Shutdown),
                "startup_acknowledged" => Self::Acknowledged(RemoteControl::Startup),
                _ => return None,
            },
            EventKind::PollFailed { command, .. } => Self::PollFailed(control(*command)?),
            _ => return None,
        })
    }
}

fn control_of(action: Action) -> RemoteControl {
    match action {
        Action::Disable => RemoteControl::Shutdown,
        Action::Enable => RemoteControl::Startup,
    }
}

#[derive(Debug, Clone, Copy)]
struct Command {
    id: Uuid,
    action: Action,
    issued_at: Timestamp,
    expires_at: Timestamp,
}

#[derive(Debug, Default)]
struct Machine {
    online: bool,
    /// No link-up seen since the executor started: the next one is a gateway restart.
    restarted: bool,
    desired: Option<DesiredState>,
    /// Verified, waiting for the machine to come back.
    pending: Option<Command>,
    /// Sent, not yet done; `acked_at` once the machine ACKed it.
    inflight: Option<(Command, Option<Timestamp>)>,
}

/// The remote-control state of every machine.
#[derive(Debug)]
pub struct Executor {
    machines: BTreeMap<String, Machine>,
    policy: OfflinePolicy,
    confirm_window: SignedDuration,
}

fn step(command: Uuid, machine: &str, to: State, reason: Option<FailReason>) -> Output {
    Output::Step(Step { command, machine: machine.to_owned(), to, reason, detail: None })
}

impl Executor {
    /// At gateway start: the machines, their persisted desired states, and the stored commands
    /// not yet terminal (`CommandStore::list`); every machine starts offline.
    pub fn new(
        settings: &CommandSettings,
        machines: impl IntoIterator<Item = String>,
        desired: Vec<(String, DesiredState)>,
        unfinished: &[CommandRecord],
    ) -> Self {
        let mut all: BTreeMap<String, Machine> = machines
            .into_iter()
            .map(|m| (m, Machine { restarted: true, ..Machine::default() }))
            .collect();
        for (machine, state) in desired {
            if let Some(m) = all.get_mut(&machine) {
                m.desired = Some(state);
            }
        }
        for record in unfinished {
            let command = Command {
                id: record.id,
                action: record.action,
                issued_at: record.issued_at,
                expires_at: record.expires_at,
            };
            for (machine, state) in &record.targets {
                let Some(m) = all.get_mut(machine) else { continue };
                match state {
                    State::Verified => m.pending = Some(command),
                    // Sent before the restart: the desired state is re-sent at link-up, and
                    // its ACK confirms the command.
                    State::Sent | State::Confirmed => m.inflight = Some((command, None)),
                    _ => {}
                }
            }
        }
        Self {
            machines: all,
            policy: settings.offline_policy,
            // Validated to at most an hour.
            confirm_window: SignedDuration::try_from(settings.confirm_window)
                .unwrap_or(SignedDuration::MAX),
        }
    }

    /// The desired state of a machine (for `status` and `machines`).
    pub fn desired(&self, machine: &str) -> Option<DesiredState> {
        self.machines.get(machine).and_then(|m| m.desired)
    }

    /// A newly admitted command (`Admission::New`).
    pub fn submit(&mut self, now: Timestamp, record: &CommandRecord) -> Vec<Output> {
        let command = Command {
            id: record.id,
            action: record.action,
            issued_at: record.issued_at,
            expires_at: record.expires_at,
        };
        let mut out = Vec::new();
        for (machine, state) in &record.targets {
            if *state != State::Verified {
                continue;
            }
            let Some(m) = self.machines.get_mut(machine) else {
                // Verification checked the targets; a machine removed since is a failure.
                out.push(step(command.id, machine, State::Failed, None));
                continue;
            };
            let newer = [m.desired.map(|d| d.issued_at), m.pending.map(|p| p.issued_at)]
                .into_iter()
                .flatten()
                .any(|at| at > command.issued_at);
            if newer || now >= command.expires_at {
                let reason = if newer { FailReason::Superseded } else { FailReason::Expired };
                let to = if newer { State::Failed } else { State::Expired };
                out.push(step(command.id, machine, to, Some(reason)));
                continue;
            }
            if !m.online && self.policy == OfflinePolicy::Reject {
                let reason = FailReason::Rejected(RejectReason::MachineOffline);
                out.push(step(command.id, machine, State::Rejected, Some(reason)));
                continue;
            }
            if let Some(old) = m.pending.take() {
                out.push(step(old.id, machine, State::Failed, Some(FailReason::Superseded)));
            }
            if m.online {
                Self::send(m, machine, command, now, &mut out);
            } else {
                m.pending = Some(command);
            }
        }
        out
    }

    fn send(
        m: &mut Machine,
        machine: &str,
        command: Command,
        now: Timestamp,
        out: &mut Vec<Output>,
    ) {
        match m.inflight.take().filter(|(old, _)| old.id != command.id) {
            // Acknowledged: it did its work; the new command cuts its confirmation window short.
            Some((old, Some(_))) => out.push(step(old.id, machine, State::Done, None)),
            Some((old, None)) => {
                out.push(step(old.id, machine, State::Failed, Some(FailReason::Superseded)));
            }
            None => {}
        }
        out.push(step(command.id, machine, State::Sent, None));
        m.desired = Some(DesiredState {
            action: command.action,
            command_id: command.id,
            issued_at: command.issued_at,
            since: now,
        });
        m.inflight = Some((command, None));
        out.push(Output::Send {
            machine: machine.to_owned(),
            control: control_of(command.action),
            command: command.id,
            reassert: None,
        });
    }

    fn reassert(m: &Machine, machine: &str, trigger: Trigger, out: &mut Vec<Output>) {
        if let Some(desired) = m.desired.filter(|_| m.online) {
            out.push(Output::Send {
                machine: machine.to_owned(),
                control: control_of(desired.action),
                command: desired.command_id,
                reassert: Some(trigger),
            });
        }
    }

    /// A canonical event of `machine` (the line task's output, after it is journalled).
    pub fn observe_event(
        &mut self,
        now: Timestamp,
        machine: &str,
        event: &CanonicalEvent,
    ) -> Vec<Output> {
        match Observation::from_event(event) {
            Some(observation) => self.observe(now, machine, observation),
            None => Vec::new(),
        }
    }

    /// What was learned about `machine`.
    pub fn observe(
        &mut self,
        now: Timestamp,
        machine: &str,
        observation: Observation,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        let Some(m) = self.machines.get_mut(machine) else { return out };
        match observation {
            Observation::LinkUp => {
                m.online = true;
                let trigger = if std::mem::take(&mut m.restarted) {
                    Trigger::GatewayRestart
                } else {
                    Trigger::LinkUp
                };
                match m.pending.take() {
                    Some(command) if now >= command.expires_at => {
                        out.push(step(
                            command.id,
                            machine,
                            State::Expired,
                            Some(FailReason::Expired),
                        ));
                        Self::reassert(m, machine, trigger, &mut out);
                    }
                    Some(command) => Self::send(m, machine, command, now, &mut out),
                    None => Self::reassert(m, machine, trigger, &mut out),
                }
            }
            Observation::LinkDown => m.online = false,
            Observation::PowerUp => Self::reassert(m, machine, Trigger::PowerCycle, &mut out),
            Observation::RamClear => Self::reassert(m, machine, Trigger::RamClear, &mut out),
            Observation::GameStarted => {
                if let Some((command, Some(_))) = m.inflight
                    && command.action == Action::Disable
                {
                    m.inflight = None;
                    let reason = Some(FailReason::GameStartedAfterShutdown);
                    out.push(step(command.id, machine, State::Failed, reason));
                    Self::reassert(m, machine, Trigger::GameStarted, &mut out);
                }
            }
            Observation::GameEnded => {}
            Observation::Acknowledged(control) => {
                if let Some((command, acked)) = &mut m.inflight
                    && control_of(command.action) == control
                    && acked.is_none()
                {
                    *acked = Some(now);
                    let id = command.id;
                    out.push(step(id, machine, State::Confirmed, None));
                    if control == RemoteControl::Startup {
                        m.inflight = None;
                        out.push(step(id, machine, State::Done, None));
                    }
                }
            }
            Observation::PollFailed(control) => {
                if let Some((command, None)) = m.inflight
                    && control_of(command.action) == control
                {
                    m.inflight = None;
                    out.push(step(
                        command.id,
                        machine,
                        State::Failed,
                        Some(FailReason::PollFailed),
                    ));
                }
            }
        }
        out
    }

    /// Expires waiting commands and completes shutdowns whose confirmation window passed.
    pub fn tick(&mut self, now: Timestamp) -> Vec<Output> {
        let mut out = Vec::new();
        for (machine, m) in &mut self.machines {
            if let Some(command) = m.pending.filter(|c| now >= c.expires_at) {
                m.pending = None;
                out.push(step(command.id, machine, State::Expired, Some(FailReason::Expired)));
            }
            if let Some((command, Some(acked))) = m.inflight
                && acked.saturating_add(self.confirm_window).is_ok_and(|due| now >= due)
            {
                m.inflight = None;
                out.push(step(command.id, machine, State::Done, None));
            }
        }
        out
    }

    /// When [`Executor::tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.machines
            .values()
            .flat_map(|m| {
                let pending = m.pending.map(|c| c.expires_at);
                let done = m
                    .inflight
                    .and_then(|(_, acked)| acked)
                    .and_then(|at| at.saturating_add(self.confirm_window).ok());
                [pending, done]
            })
            .flatten()
            .min()
    }
}

#[cfg(test)]
mod tests;
