//! What can be asked of a running line task: its bounded command channel. Every command carries
//! its own reply channel; the line task acts on commands only between exchanges, so a command
//! never cuts into an exchange or into durable-before-acknowledged.
//!
//! Only reads are offered to a technician: meters, identity or the clock, never something that
//! moves money or changes the machine. The one exception is [`LineCommand::RemoteControl`],
//! the remote-command path's (`crate::command`, audited there before it is sent): its poll is a
//! [`RemoteControl`], which can only be LP 01 or LP 02 (requirements R22).

use firmware_protocols::sas::{LongPoll, RemoteControl};
use tokio::sync::{mpsc, oneshot};

/// How many commands may wait for one line.
pub const COMMAND_QUEUE: usize = 16;

/// A command for one line task.
#[derive(Debug)]
pub enum LineCommand {
    /// Queue one long poll from [`AllowedPoll`] for the machine with this registry id.
    LongPoll { machine: String, poll: AllowedPoll, reply: oneshot::Sender<Result<(), String>> },
    /// Queue a full meter snapshot (LP1C and LP0F) for the machine.
    MeterSnapshot { machine: String, reply: oneshot::Sender<Result<(), String>> },
    /// Queue LP 01 (shutdown) or LP 02 (startup) for the machine ahead of every queued poll.
    /// Only the remote-command path sends this, after auditing it.
    RemoteControl {
        machine: String,
        control: RemoteControl,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Close the line and send nothing until the returned [`Release`] is dropped: the port is
    /// the probe's meanwhile. The machines go offline (and say so in the journal).
    Release { reply: oneshot::Sender<Release> },
}

/// The line's hold on its port given up; dropping it hands the line back to its task, which
/// reconnects and resynchronises its machines.
#[derive(Debug)]
pub struct Release(#[allow(dead_code)] pub(crate) oneshot::Sender<()>);

/// The long polls a command may ask for: reads that change nothing on the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllowedPoll {
    /// LP0F: cancelled credits, coin in, coin out, drop, jackpot, games played.
    Meters10To15,
    /// LP1A: current credits.
    CurrentCredits,
    /// LP1C: the eight basic meters.
    Meters,
    /// LP1F: machine ID, accounting denomination and paytable.
    MachineInfo,
    /// LP54: SAS version and serial number.
    VersionAndSerial,
    /// LP7E: the machine's clock.
    DateTime,
}

impl AllowedPoll {
    /// Every allowed poll, for the API documentation and error messages.
    pub const ALL: [Self; 6] = [
        Self::Meters10To15,
        Self::CurrentCredits,
        Self::Meters,
        Self::MachineInfo,
        Self::VersionAndSerial,
        Self::DateTime,
    ];

    /// The poll by its command byte (`0x1C`), if it is allowed.
    pub fn from_command(command: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.long_poll().command() == command)
    }

    pub fn long_poll(self) -> LongPoll {
        match self {
            Self::Meters10To15 => LongPoll::SendMeters10To15,
            Self::CurrentCredits => LongPoll::SendCurrentCredits,
            Self::Meters => LongPoll::SendMeters,
            Self::MachineInfo => LongPoll::SendMachineInfo,
            Self::VersionAndSerial => LongPoll::SendVersionAndSerial,
            Self::DateTime => LongPoll::SendDateTime,
        }
    }
}

/// The sending side of a line's command channel, kept by the state model's owner.
#[derive(Debug, Clone)]
pub struct LineHandle {
    pub name: String,
    pub commands: mpsc::Sender<LineCommand>,
}

/// A line's command channel.
pub fn channel(name: &str) -> (LineHandle, mpsc::Receiver<LineCommand>) {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    (LineHandle { name: name.to_owned(), commands: tx }, rx)
}

impl LineHandle {
    /// Sends `command` built around a fresh reply channel and waits for the answer.
    pub async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> LineCommand,
    ) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        self.commands.try_send(command(tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                format!("line {}: too many commands waiting", self.name)
            }
            mpsc::error::TrySendError::Closed(_) => {
                format!("line {}: its task is not running", self.name)
            }
        })?;
        rx.await.map_err(|_| format!("line {}: its task stopped before answering", self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_are_allowed() {
        assert_eq!(AllowedPoll::from_command(0x1C), Some(AllowedPoll::Meters));
        assert_eq!(AllowedPoll::from_command(0x54), Some(AllowedPoll::VersionAndSerial));
        // Shutdown, startup, RTE, clock set, ticket redemption: never from a command.
        for command in [0x01, 0x02, 0x0E, 0x7F, 0x71, 0x21] {
            assert_eq!(AllowedPoll::from_command(command), None, "{command:#04x}");
        }
    }

    #[test]
    fn a_remote_control_command_is_lp01_or_lp02_and_nothing_else() {
        let sent: Vec<u8> = [RemoteControl::Shutdown, RemoteControl::Startup]
            .into_iter()
            .map(|c| LongPoll::from(c).command())
            .collect();
        assert_eq!(sent, [0x01, 0x02]);
    }
}
