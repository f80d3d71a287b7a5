//! Re-opening a line that failed, with jittered exponential [`backoff`](super::backoff).
//!
//! [`Reconnecting`] is itself a [`Line`], so a poller holds one for its whole life. When a call
//! on the inner line fails, the error is returned to the poller (which reports the link down and
//! resynchronises its session) and the line is dropped; the next call first waits out the
//! backoff delay and opens the line again. Each call makes at most one attempt and returns its
//! error, so the poller sees every failed attempt and can log it, count it and check for
//! shutdown in between; nothing loops out of its sight.
//!
//! The backoff delay is also applied after a connection that fails straight away (a peer that
//! accepts and closes, a device that opens and errors), and resets only once the new line has
//! delivered input, i.e. proved that a machine is behind it.
//!
//! A poller stops (and reports an operator error) when [`TransportError::is_retryable`] is
//! false: re-opening will fail the same way until the configuration or the hardware changes.

use std::future::Future;

use tokio::time::Instant;

use super::backoff::Backoff;
use super::{
    AnyLine, Character, Line, LineDiagnostics, TransportConfig, TransportError, WakeupMethod,
    WakeupStyle,
};

/// Something that can open a line.
pub trait Connect: Send + Sync {
    /// The line it opens.
    type Line: Line;

    /// Opens the line once.
    fn connect(&self) -> impl Future<Output = Result<Self::Line, TransportError>> + Send;

    /// Names the line for logs while it is not open.
    fn describe(&self) -> String;

    /// The wakeup method the line is configured for, reported while it is not open. An open
    /// serial line may have fallen back to another one.
    fn planned_wakeup(&self) -> WakeupMethod;
}

impl Connect for TransportConfig {
    type Line = AnyLine;

    async fn connect(&self) -> Result<AnyLine, TransportError> {
        super::open(self).await
    }

    fn describe(&self) -> String {
        Self::describe(self)
    }

    fn planned_wakeup(&self) -> WakeupMethod {
        match self {
            Self::Serial(c) => match c.wakeup {
                WakeupStyle::None => WakeupMethod::None,
                WakeupStyle::OddEvenSwitching => WakeupMethod::OddEvenSwitching,
                WakeupStyle::StickyParity => WakeupMethod::StickyParity,
            },
            Self::Tcp(_) => WakeupMethod::Framed,
        }
    }
}

/// A line that re-opens itself after failures. Opens lazily, on the first call.
#[derive(Debug)]
pub struct Reconnecting<C: Connect> {
    connector: C,
    /// The open line; `None` after a failure until the next successful attempt.
    line: Option<C::Line>,
    backoff: Backoff,
    /// When the next attempt may start. Stored rather than slept on directly, so that a call
    /// cancelled during the wait (the poller's `select!`) resumes the same wait next time.
    next_attempt: Option<Instant>,
    /// Successful opens so far.
    connects: u64,
    /// Whether the open line has delivered input; the backoff resets when it first does.
    proven: bool,
    /// The diagnostics of the last open line, kept for while it is down.
    last_diagnostics: Option<LineDiagnostics>,
}

impl<C: Connect> Reconnecting<C> {
    /// A line that `connector` opens on first use and re-opens after failures.
    pub fn new(connector: C, backoff: Backoff) -> Self {
        Self {
            connector,
            line: None,
            backoff,
            next_attempt: None,
            connects: 0,
            proven: false,
            last_diagnostics: None,
        }
    }

    /// The open line, opening it first if needed (after the backoff delay, if an attempt or
    /// the line failed before). One attempt per call; its error is returned.
    ///
    /// Cancel-safe: a cancelled wait resumes at the same deadline, a cancelled attempt is simply
    /// not made.
    pub async fn connected(&mut self) -> Result<&mut C::Line, TransportError> {
        let line = match self.line.take() {
            Some(line) => line,
            None => {
                if let Some(at) = self.next_attempt {
                    tokio::time::sleep_until(at).await;
                }
                match self.connector.connect().await {
                    Ok(line) => {
                        self.connects += 1;
                        self.next_attempt = None;
                        self.proven = false;
                        tracing::info!(
                            line = %line.describe(),
                            connects = self.connects,
                            "Line opened."
                        );
                        line
                    }
                    Err(error) => {
                        self.schedule_retry(&error, "Opening the line failed.");
                        return Err(error);
                    }
                }
            }
        };
        Ok(self.line.insert(line))
    }

    /// Whether a line is open now.
    pub fn is_connected(&self) -> bool {
        self.line.is_some()
    }

    /// Closes the line (e.g. after too many silent polls, to rule out a half-open connection);
    /// the next call re-opens it after the backoff delay.
    pub fn disconnect(&mut self) {
        if let Some(line) = self.line.take() {
            self.last_diagnostics = Some(line.diagnostics());
            self.next_attempt = Some(Instant::now() + self.backoff.next_delay());
        }
    }

    /// Failed attempts since the line last delivered input.
    pub fn failed_attempts(&self) -> u32 {
        self.backoff.attempts()
    }

    fn schedule_retry(&mut self, error: &TransportError, message: &'static str) {
        let delay = self.backoff.next_delay();
        self.next_attempt = Some(Instant::now() + delay);
        tracing::warn!(
            line = %self.connector.describe(),
            %error,
            retryable = error.is_retryable(),
            attempt = self.backoff.attempts(),
            retry_in = ?delay,
            "{message}"
        );
    }

    fn on_line_error(&mut self, error: &TransportError) {
        if let Some(line) = self.line.take() {
            self.last_diagnostics = Some(line.diagnostics());
        }
        self.schedule_retry(error, "The line failed; it will be re-opened.");
    }
}

impl<C: Connect> Line for Reconnecting<C> {
    async fn send(&mut self, chars: &[Character]) -> Result<(), TransportError> {
        let result = self.connected().await?.send(chars).await;
        if let Err(error) = &result {
            self.on_line_error(error);
        }
        result
    }

    async fn recv(&mut self, out: &mut Vec<Character>) -> Result<usize, TransportError> {
        let result = self.connected().await?.recv(out).await;
        match &result {
            Ok(_) if !self.proven => {
                self.proven = true;
                self.backoff.reset();
            }
            Ok(_) => {}
            Err(error) => self.on_line_error(error),
        }
        result
    }

    fn clear_input(&mut self) -> u64 {
        self.line.as_mut().map_or(0, Line::clear_input)
    }

    fn describe(&self) -> String {
        match &self.line {
            Some(line) => line.describe(),
            None => format!("{} (not open)", self.connector.describe()),
        }
    }

    fn diagnostics(&self) -> LineDiagnostics {
        let mut d = match &self.line {
            Some(line) => line.diagnostics(),
            None => {
                let mut d = self
                    .last_diagnostics
                    .clone()
                    .unwrap_or_else(|| LineDiagnostics::new(self.connector.planned_wakeup()));
                d.connected = false;
                d
            }
        };
        d.connects = self.connects;
        d
    }
}
