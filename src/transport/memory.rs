//! An in-process line pair for tests of pollers and fake machines: two [`FramedLine`]s over
//! `tokio::io::duplex`, with the same 9-bit framing as TCP, so a test exercises the framing code
//! the daemon uses in production and needs no socket, port or pty.

use tokio::io::DuplexStream;

use super::FramedLine;

/// One end of an in-memory line.
pub type MemoryLine = FramedLine<DuplexStream>;

/// Bytes each direction buffers before a writer waits: 4 KiB is 2048 characters, far more than
/// the longest SAS frame (260 bytes), so a test never blocks on a full pipe by accident.
const PIPE_CAPACITY: usize = 4096;

/// Two connected ends, `(host, machine)`. Either end can send characters with any wakeup
/// bits, so the machine end serves as a fake EGM (replies, chirps). Dropping one end makes the
/// other's `recv` return [`super::TransportError::Closed`].
pub fn pair() -> (MemoryLine, MemoryLine) {
    let (host, machine) = tokio::io::duplex(PIPE_CAPACITY);
    (FramedLine::new(host, "memory host end"), FramedLine::new(machine, "memory machine end"))
}
