//! The lines to the machines: the only module that opens serial ports or sockets to EGMs.
//!
//! A [`Line`] carries **9-bit characters**, not bytes: every [`Character`] has its wakeup (9th)
//! bit, which SAS sets on the first byte of each host message and which a machine sets only when
//! it chirps (sas-protocol.md §1.1). A byte pipe cannot express that, and SAS over a transparent
//! byte pipe is wrong (§1.5), so pollers see only this interface and never know whether the bit
//! is made by a UART's parity, a flag byte on TCP or an in-memory pipe. That keeps them
//! transport-agnostic and testable against [`memory::pair`].
//!
//! # Implementations
//!
//! | line | module | how the 9th bit travels ([`WakeupMethod`]) |
//! |---|---|---|
//! | local UART | [`serial`] | sticky parity (CMSPAR), else odd/even per byte (§1.2) |
//! | device server, SMIB | [`tcp`] | flag byte + data byte per character (§1.5) |
//! | in-process pipe | [`memory`] | the same two-byte framing over `tokio::io::duplex` |
//!
//! [`open`] turns a [`TransportConfig`] into an [`AnyLine`]. [`Reconnecting`] wraps any
//! [`Connect`] (a [`TransportConfig`] is one) so that a dropped line is re-opened with jittered
//! exponential [`backoff`].
//!
//! # Contract of a line
//!
//! - **Half duplex, one owner.** A line belongs to one poller task (ARCHITECTURE.md). Before a
//!   poll the poller calls [`Line::clear_input`] so that stale bytes (a late answer to the
//!   previous poll, line noise) are not taken for the new reply (style guide habit 3).
//! - **Bounded work.** No call does work in proportion to what a peer sends: `clear_input` drops
//!   a bounded amount and returns how much, and a framed line reads at a bounded rate, so a
//!   flooding peer can neither keep a poller from stopping nor take a core.
//! - **`recv` is cancel-safe.** It is meant to race a reply timer in `tokio::select!`; when it
//!   loses, no received character is lost: bytes already read stay in the line's decoder and are
//!   returned by the next call.
//! - **`send` transmits whole messages.** A serial line hands the message to a blocking-pool job
//!   that finishes it even if the `send` future is dropped, so the wire never carries half a
//!   message. A framed line (TCP, memory) that is dropped mid-write is marked desynchronised and
//!   every later call fails with [`TransportError::Desynchronised`] until it is re-opened.
//! - **Errors mean the line is unusable** until re-opened, except where
//!   [`TransportError::is_retryable`] says a retry of the same configuration cannot help.

use std::future::Future;
use std::time::Duration;

pub use firmware_protocols::sas::Character;
use firmware_protocols::sas::ninebit::InvalidFlag;

pub mod backoff;
mod framed;
pub mod memory;
mod reconnect;
#[cfg(target_os = "linux")]
pub mod serial;
pub mod tcp;

pub use backoff::{Backoff, ExponentialBackoff, InvalidBackoff};
pub use framed::FramedLine;
pub use memory::MemoryLine;
pub use reconnect::{Connect, Reconnecting};
#[cfg(target_os = "linux")]
pub use serial::SerialLine;
pub use tcp::TcpLine;

/// SAS runs at 19 200 baud, 11-bit characters (sas-protocol.md §1.1).
pub const SAS_BAUD_RATE: u32 = 19_200;

/// Longest gap allowed between two bytes of one message, both directions (§4.1). The serial line
/// measures its address→command gap against it.
pub const INTER_BYTE_LIMIT: Duration = firmware_protocols::sas::codec::INTER_BYTE_LIMIT;

// === Line ===

/// A half-duplex line to one or more EGMs that carries 9-bit characters.
///
/// The futures are `Send` so that a poller generic over `L: Line` can be spawned on the
/// multi-threaded runtime; implementations write plain `async fn`.
pub trait Line: Send {
    /// Transmits one message. A host message has the wakeup bit on its first character only
    /// (as [`firmware_protocols::sas::session::Transmit::characters`] are built); the line sends
    /// whatever bits it is given, so the same call serves a fake machine's replies and chirps.
    /// Returns once the message is handed to the OS (TCP, memory) or has been written to the
    /// UART with every parity switch done (serial). An empty slice sends nothing.
    fn send(
        &mut self,
        chars: &[Character],
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Waits for input and appends at least one character to `out`; returns how many.
    ///
    /// Cancel-safe: if the future is dropped before it completes, nothing has been consumed
    /// from the line that a later call will not return.
    fn recv(
        &mut self,
        out: &mut Vec<Character>,
    ) -> impl Future<Output = Result<usize, TransportError>> + Send;

    /// Discards input that has arrived and not been returned yet, without waiting, and returns
    /// how many bytes that was (as far as the line can tell). Called before every poll on a
    /// half-duplex line. Bounded: a peer that sends without pause cannot keep it from returning;
    /// what is left over reaches `recv`.
    fn clear_input(&mut self) -> u64;

    /// Names the line for logs: device or address and the wakeup method.
    fn describe(&self) -> String;

    /// What a technician needs to know about the line right now.
    fn diagnostics(&self) -> LineDiagnostics;
}

/// How the wakeup (9th) bit is produced and received on a line. Alphabetical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WakeupMethod {
    /// Each character travels as a flag byte and a data byte (TCP, memory; §1.5). Exact in both
    /// directions.
    Framed,
    /// No 9th bit at all: an 8-bit line such as a pseudo-terminal to `slotgate simulate`, where
    /// the machine finds message starts by timing (§1.4). Never right for a real EGM. Received
    /// characters never carry the wakeup bit, so chirps are invisible.
    None,
    /// Per-byte choice of even or odd parity so that the parity bit equals the wanted 9th bit
    /// (§1.2 option 2): the fallback for drivers that refuse CMSPAR. Every switch costs a drain
    /// and an ioctl, which can break the 5 ms inter-byte limit on USB adapters.
    OddEvenSwitching,
    /// Mark/space sticky parity with CMSPAR (§1.2 option 1).
    StickyParity,
}

impl WakeupMethod {
    /// Whether received characters carry a real wakeup bit, i.e. whether chirps can be seen.
    pub fn detects_chirps(self) -> bool {
        !matches!(self, Self::None)
    }
}

impl std::fmt::Display for WakeupMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Framed => "9-bit framing (flag byte per character)",
            Self::None => "none (8-bit line, messages framed by timing)",
            Self::OddEvenSwitching => "per-byte odd/even parity switching (CMSPAR fallback)",
            Self::StickyParity => "mark/space sticky parity (CMSPAR)",
        })
    }
}

/// A snapshot of a line's state for `slotgate machines status` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LineDiagnostics {
    /// How the 9th bit is produced on this line.
    pub wakeup: WakeupMethod,
    /// Whether the line is open. Only [`Reconnecting`] is ever not connected.
    pub connected: bool,
    /// Successful opens of the line; more than one means it was re-established.
    pub connects: u64,
    /// Serial: for the last multi-byte message, the time from the wakeup byte having left the
    /// UART (`tcdrain` returned) to the next byte having been written, as seen by the host. It
    /// includes the parity switch and any `post_wakeup_delay`. `None` on other lines or before
    /// the first such message.
    pub last_wakeup_gap: Option<Duration>,
    /// Serial: the longest gap between two byte groups of one message seen since the line was
    /// opened.
    pub max_gap: Option<Duration>,
    /// Serial: messages in which a gap exceeded [`INTER_BYTE_LIMIT`] (§4.1).
    pub gaps_over_limit: u64,
    /// Serial: why the line uses another wakeup method than configured (the driver refused
    /// sticky parity). `None` when it got what was asked for.
    pub wakeup_fallback: Option<String>,
    /// Serial: `PARMRK` escapes that the kernel never produces (`FF` followed by neither `00`
    /// nor `FF`), a sign of a driver bug or of a setting changed behind slotgate's back.
    pub receive_anomalies: u64,
}

impl LineDiagnostics {
    /// Diagnostics of a connected line with no gap measurements.
    pub fn new(wakeup: WakeupMethod) -> Self {
        Self {
            wakeup,
            connected: true,
            connects: 1,
            last_wakeup_gap: None,
            max_gap: None,
            gaps_over_limit: 0,
            wakeup_fallback: None,
            receive_anomalies: 0,
        }
    }
}

// === Configuration ===

/// How to reach one line. Built by the daemon's config module; [`open`] opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportConfig {
    /// A local UART (RS-232 or USB adapter) with the 9th bit driven through termios.
    Serial(SerialConfig),
    /// A 9-bit capable device server or SMIB reached over TCP.
    Tcp(TcpConfig),
}

impl TransportConfig {
    /// Names the line for logs before it is open.
    pub fn describe(&self) -> String {
        match self {
            Self::Serial(c) => format!("serial {}", c.device),
            Self::Tcp(c) => format!("tcp {}", c.address),
        }
    }
}

/// A local serial port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialConfig {
    /// Device path, e.g. `/dev/ttyS0` or `/dev/serial/by-id/...`.
    pub device: String,
    /// How the wakeup bit is to be produced.
    pub wakeup: WakeupStyle,
    /// Pause after the wakeup byte before the rest of a message, for firmware that needs one
    /// (the profile's `timing.post_wakeup_delay`, sas-protocol.md §11). Counts towards the
    /// 5 ms inter-byte limit.
    pub post_wakeup_delay: Duration,
}

impl SerialConfig {
    /// Sticky parity with CMSPAR, no post-wakeup pause.
    pub fn new(device: impl Into<String>) -> Self {
        Self {
            device: device.into(),
            wakeup: WakeupStyle::StickyParity,
            post_wakeup_delay: Duration::ZERO,
        }
    }
}

/// A TCP connection speaking the 9-bit framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// `host:port`.
    pub address: String,
    /// Give up a connection attempt after this long.
    pub connect_timeout: Duration,
    /// TCP keepalive: idle time before the first probe, also the interval between probes;
    /// the connection is dropped after [`tcp::KEEPALIVE_RETRIES`] unanswered probes. `None`
    /// leaves keepalive off. It finds a half-open connection to a device server that lost
    /// power, which a poll timeout alone would not distinguish from a silent machine.
    pub keepalive: Option<Duration>,
    /// As [`SerialConfig::post_wakeup_delay`]; on TCP the first character is written, then the
    /// rest after the pause. The device server's buffering decides the gap actually seen.
    pub post_wakeup_delay: Duration,
}

impl TcpConfig {
    /// Connect timeout 5 s, keepalive every 10 s, no post-wakeup pause.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            connect_timeout: Duration::from_secs(5),
            keepalive: Some(Duration::from_secs(10)),
            post_wakeup_delay: Duration::ZERO,
        }
    }
}

/// How the operator wants the wakeup bit produced on a serial line (sas-protocol.md §1.2).
/// Alphabetical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WakeupStyle {
    /// No 9th bit: for a pseudo-terminal to the simulator only. Opening a real UART this way
    /// works but no EGM will answer.
    None,
    /// Per-byte odd/even switching, chosen explicitly (for an adapter that accepts CMSPAR but
    /// ignores it, which a read-back cannot detect).
    OddEvenSwitching,
    /// CMSPAR sticky parity; if the driver does not keep the flags, falls back to
    /// [`Self::OddEvenSwitching`] with a warning, and fails if it cannot do parity at all.
    StickyParity,
}

impl From<firmware_protocols::profile::WakeupStyle> for WakeupStyle {
    fn from(style: firmware_protocols::profile::WakeupStyle) -> Self {
        use firmware_protocols::profile::WakeupStyle as Profile;
        match style {
            Profile::OddEvenSwitching => Self::OddEvenSwitching,
            Profile::StickyParity => Self::StickyParity,
        }
    }
}

// === Opening ===

/// Any line [`open`] can produce, so a poller can be generic over one concrete type.
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyLine {
    /// A local UART.
    #[cfg(target_os = "linux")]
    Serial(SerialLine),
    /// A TCP connection with the 9-bit framing.
    Tcp(TcpLine),
}

/// Opens the line `config` describes: opens and configures the serial port, or connects.
pub async fn open(config: &TransportConfig) -> Result<AnyLine, TransportError> {
    match config {
        #[cfg(target_os = "linux")]
        TransportConfig::Serial(c) => SerialLine::open(c).map(AnyLine::Serial),
        #[cfg(not(target_os = "linux"))]
        TransportConfig::Serial(c) => Err(TransportError::Unsupported {
            line: format!("serial {}", c.device),
            what: "serial lines with a 9th bit need Linux termios (CMSPAR)",
        }),
        TransportConfig::Tcp(c) => tcp::connect(c).await.map(AnyLine::Tcp),
    }
}

impl Line for AnyLine {
    async fn send(&mut self, chars: &[Character]) -> Result<(), TransportError> {
        match self {
            #[cfg(target_os = "linux")]
            Self::Serial(l) => l.send(chars).await,
            Self::Tcp(l) => l.send(chars).await,
        }
    }

    async fn recv(&mut self, out: &mut Vec<Character>) -> Result<usize, TransportError> {
        match self {
            #[cfg(target_os = "linux")]
            Self::Serial(l) => l.recv(out).await,
            Self::Tcp(l) => l.recv(out).await,
        }
    }

    fn clear_input(&mut self) -> u64 {
        match self {
            #[cfg(target_os = "linux")]
            Self::Serial(l) => l.clear_input(),
            Self::Tcp(l) => l.clear_input(),
        }
    }

    fn describe(&self) -> String {
        match self {
            #[cfg(target_os = "linux")]
            Self::Serial(l) => l.describe(),
            Self::Tcp(l) => l.describe(),
        }
    }

    fn diagnostics(&self) -> LineDiagnostics {
        match self {
            #[cfg(target_os = "linux")]
            Self::Serial(l) => l.diagnostics(),
            Self::Tcp(l) => l.diagnostics(),
        }
    }
}

// === Errors ===

/// Why a line failed. After any error the line should be re-opened ([`Reconnecting`] does it);
/// [`Self::is_retryable`] says whether re-opening with the same configuration can help.
/// Alphabetical.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The serial port's baud rate read back differs from 19 200: something (a legacy
    /// `tcsetattr`, the driver) clobbered it (sas-protocol.md §1.3, termios2 caution).
    #[error("{line}: baud rate reads back as {actual}, expected {expected}")]
    BaudRateChanged { line: String, expected: u32, actual: u32 },
    /// The peer closed the connection, the device hung up, or the other end of an in-memory
    /// line was dropped.
    #[error("{line}: closed by the peer")]
    Closed { line: String },
    /// No connection within the configured connect timeout.
    #[error("{line}: no connection within {timeout:?}")]
    ConnectTimeout { line: String, timeout: Duration },
    /// A send on a framed line was cancelled part way, so the peer may hold half a character;
    /// the line must be re-opened to realign.
    #[error("{line}: a send was cancelled mid-message; the line must be re-opened")]
    Desynchronised { line: String },
    /// The peer sent a flag byte with bits other than bit 0 set: it does not speak the 9-bit
    /// framing, or lost alignment. The connection must be re-established, never guessed at.
    #[error("{line}: {source}: the peer is not speaking the 9-bit framing")]
    InvalidFlag { line: String, source: InvalidFlag },
    /// I/O on the socket, pipe or device failed.
    #[error("{line}: {operation}: {source}")]
    Io { line: String, operation: &'static str, source: std::io::Error },
    /// tokio-serial could not open or configure the port.
    #[error("{line}: {source}")]
    Serial { line: String, source: tokio_serial::Error },
    /// A termios ioctl on the serial port failed.
    #[error("{line}: {operation}: {source}")]
    Termios { line: String, operation: &'static str, source: nix::Error },
    /// The transport does not exist on this platform.
    #[error("{line}: unsupported: {what}")]
    Unsupported { line: String, what: &'static str },
    /// The serial driver cannot produce the wakeup bit in the requested way: it did not keep
    /// the parity flags that were set (a pseudo-terminal keeps no parity at all, §1.4).
    #[error("{line}: the driver cannot produce the wakeup bit: {detail}")]
    WakeupUnsupported { line: String, detail: String },
}

impl TransportError {
    /// Whether re-opening the line with the same configuration may succeed: true for dropped
    /// connections, timeouts, unplugged devices and misframed peers; false when the operator has
    /// to act (permissions, a driver without parity, a clobbered baud rate, bad settings).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Closed { .. }
            | Self::ConnectTimeout { .. }
            | Self::Desynchronised { .. }
            | Self::InvalidFlag { .. } => true,
            Self::Io { source, .. } => io_retryable(source.kind()),
            Self::Serial { source, .. } => match source.kind() {
                tokio_serial::ErrorKind::NoDevice | tokio_serial::ErrorKind::Unknown => true,
                tokio_serial::ErrorKind::InvalidInput => false,
                tokio_serial::ErrorKind::Io(kind) => io_retryable(kind),
            },
            Self::Termios { source, .. } => !matches!(
                source,
                nix::Error::EINVAL | nix::Error::ENOTTY | nix::Error::EPERM | nix::Error::EACCES
            ),
            Self::BaudRateChanged { .. }
            | Self::Unsupported { .. }
            | Self::WakeupUnsupported { .. } => false,
        }
    }

    pub(crate) fn io(line: &str, operation: &'static str, source: std::io::Error) -> Self {
        Self::Io { line: line.to_owned(), operation, source }
    }
}

fn io_retryable(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind;
    !matches!(
        kind,
        ErrorKind::PermissionDenied
            | ErrorKind::InvalidInput
            | ErrorKind::Unsupported
            | ErrorKind::AddrNotAvailable
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_connections_are_retryable_and_operator_errors_are_not() {
        let line = String::from("tcp x");
        assert!(TransportError::Closed { line: line.clone() }.is_retryable());
        assert!(
            TransportError::io(&line, "read", std::io::ErrorKind::ConnectionReset.into())
                .is_retryable()
        );
        assert!(
            !TransportError::io(&line, "open", std::io::ErrorKind::PermissionDenied.into())
                .is_retryable()
        );
        assert!(
            !TransportError::WakeupUnsupported { line: line.clone(), detail: String::new() }
                .is_retryable()
        );
        assert!(
            !TransportError::BaudRateChanged { line, expected: 19_200, actual: 38_400 }
                .is_retryable()
        );
    }

    #[test]
    fn only_an_eight_bit_line_is_blind_to_chirps() {
        assert!(!WakeupMethod::None.detects_chirps());
        assert!(WakeupMethod::StickyParity.detects_chirps());
        assert!(WakeupMethod::OddEvenSwitching.detects_chirps());
        assert!(WakeupMethod::Framed.detects_chirps());
    }

    #[test]
    fn the_profile_wakeup_style_maps_onto_the_transport_style() {
        use firmware_protocols::profile::WakeupStyle as Profile;
        assert_eq!(WakeupStyle::from(Profile::StickyParity), WakeupStyle::StickyParity);
        assert_eq!(WakeupStyle::from(Profile::OddEvenSwitching), WakeupStyle::OddEvenSwitching);
    }
}
