//! The audit trail of remote commands: one [`AuditRecord`] per step, turned into the canonical
//! `remote_command` event ([`AuditRecord::event_kind`]) that the hash-chained journal holds.
//! Every record is handed to the audit sink *before* the step it records is stored or taken
//! (requirements R13: "audit record written before execution"), so the journal may show a step
//! that a power cut then prevented, but never a step it does not show.

use jiff::Timestamp;
use uuid::Uuid;

use super::envelope::Action;
use super::store::State;
use super::verify::RejectReason;
use crate::event::EventKind;

/// The `state` of a `remote_command` event: a step of the command's life, or a re-assertion of
/// a machine's desired state (which is no step: the command does not run again). Serialised as
/// the state's name (`"sent"`, `"reasserted"`), as the event carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditState {
    Step(State),
    /// The desired state was sent again (power cycle, link-up, RAM clear, gateway restart).
    Reasserted,
}

impl AuditState {
    const REASSERTED: &'static str = "reasserted";

    pub fn name(self) -> &'static str {
        match self {
            Self::Step(state) => state.name(),
            Self::Reasserted => Self::REASSERTED,
        }
    }

    /// The state a name stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        if name == Self::REASSERTED {
            return Some(Self::Reasserted);
        }
        State::from_name(name).map(Self::Step)
    }
}

impl serde::Serialize for AuditState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for AuditState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown command state `{name}`")))
    }
}

/// Why a command failed or was given up, besides the verification reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// Refused by verification or policy.
    Rejected(RejectReason),
    /// A newer command for the machine took its place before it was sent.
    Superseded,
    /// The line task gave the poll up (no ACK after every retry).
    PollFailed,
    /// A game started after the machine acknowledged the shutdown.
    GameStartedAfterShutdown,
    /// It expired before it could be sent (machine or uplink down).
    Expired,
}

impl FailReason {
    pub fn name(self) -> &'static str {
        match self {
            Self::Rejected(reason) => reason.name(),
            Self::Superseded => "superseded",
            Self::PollFailed => "poll_failed",
            Self::GameStartedAfterShutdown => "game_started_after_shutdown",
            Self::Expired => "expired",
        }
    }
}

/// One step of one command, for the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// The machines the step concerns: the journal files one `remote_command` event under each
    /// (an unparsed command concerns none, and is filed under the gateway).
    pub machines: Vec<String>,
    pub command_id: Option<Uuid>,
    pub action: Option<Action>,
    pub state: AuditState,
    pub reason: Option<FailReason>,
    pub origin: String,
    pub signers: Vec<String>,
    pub detail: Option<String>,
    /// When the step happened (the event's `occurred_at`).
    pub at: Timestamp,
}

impl AuditRecord {
    /// The canonical event's kind and data.
    pub fn event_kind(&self) -> EventKind {
        EventKind::RemoteCommand {
            command_id: self.command_id,
            action: self.action.map(|a| a.name().to_owned()),
            state: self.state.name().to_owned(),
            reason: self.reason.map(|r| r.name().to_owned()),
            origin: self.origin.clone(),
            signers: self.signers.clone(),
            detail: self.detail.clone(),
        }
    }
}

/// Where audit records go: the journal's append (wired in `app`), a vector in tests. An error
/// stops the step: nothing is stored or sent that was not audited first.
pub trait AuditSink {
    fn append(&mut self, record: AuditRecord) -> Result<(), String>;
}

impl AuditSink for Vec<AuditRecord> {
    fn append(&mut self, record: AuditRecord) -> Result<(), String> {
        self.push(record);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The audit vocabulary is what the journal and the state system hold: it never changes.
    #[test]
    fn audit_states_keep_their_names_and_serialised_form() {
        let all = [
            (AuditState::Step(State::Received), "received"),
            (AuditState::Step(State::Verified), "verified"),
            (AuditState::Step(State::Sent), "sent"),
            (AuditState::Step(State::Confirmed), "confirmed"),
            (AuditState::Step(State::Done), "done"),
            (AuditState::Step(State::Rejected), "rejected"),
            (AuditState::Step(State::Failed), "failed"),
            (AuditState::Step(State::Expired), "expired"),
            (AuditState::Reasserted, "reasserted"),
        ];
        for (state, name) in all {
            assert_eq!(state.name(), name);
            assert_eq!(serde_json::to_string(&state).ok(), Some(format!("\"{name}\"")));
            assert_eq!(
                serde_json::from_str::<AuditState>(&format!("\"{name}\"")).ok(),
                Some(state)
            );
            let record = AuditRecord {
                machines: Vec::new(),
                command_id: None,
                action: None,
                state,
                reason: None,
                origin: "admin uid=0".into(),
                signers: Vec::new(),
                detail: None,
                at: Timestamp::UNIX_EPOCH,
            };
            let EventKind::RemoteCommand { state: text, .. } = record.event_kind() else {
                panic!("not a remote_command event");
            };
            assert_eq!(text, name);
        }
        assert!(serde_json::from_str::<AuditState>("\"resent\"").is_err());
    }
}
