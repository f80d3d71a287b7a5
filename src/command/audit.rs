//! The audit trail of remote commands: one [`AuditRecord`] per step, turned into the canonical
//! `remote_command` event ([`AuditRecord::event_kind`]) that the hash-chained journal holds.
//! Every record is handed to the audit sink *before* the step it records is stored or taken
//! (requirements R13: "audit record written before execution"), so the journal may show a step
//! that a power cut then prevented, but never a step it does not show.

use jiff::Timestamp;
use uuid::Uuid;

use super::envelope::Action;
use super::verify::RejectReason;
use crate::event::EventKind;

/// The `state` of a `remote_command` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditState {
    Received,
    Verified,
    Sent,
    Confirmed,
    Done,
    Rejected,
    Failed,
    Expired,
    /// The desired state was sent again (power cycle, link-up, RAM clear, gateway restart).
    Reasserted,
}

impl AuditState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Verified => "verified",
            Self::Sent => "sent",
            Self::Confirmed => "confirmed",
            Self::Done => "done",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Reasserted => "reasserted",
        }
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
