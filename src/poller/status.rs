//! What a line poller reports about its line for `slotgate status` and `status.json`: whether
//! the line is open and, when it is not, why and when it is tried again.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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
}

/// Whether a line is open. Alphabetical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineConnection {
    /// The first attempt to open it has not ended yet.
    Connecting,
    /// It could not be opened, or it failed and is being re-opened. Nothing is sent meanwhile.
    Down,
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
