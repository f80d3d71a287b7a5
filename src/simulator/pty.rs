//! One machine's pseudo-terminal: the host opens the slave path like a serial port; the
//! simulator reads and writes the master side.
//!
//! **A pty cannot carry the 9th (wakeup) bit** (sas-protocol.md §1.4): it moves 8-bit bytes, and
//! parity settings are accepted but have no effect. So on a pty:
//! - the machine finds where a host message starts from the long-poll length table and the
//!   5 ms inter-byte rule (a byte after more than 5 ms of silence starts a new message), which
//!   is what `RequestDecoder` does when given no wakeup bit;
//! - chirps are sent as the plain address byte, indistinguishable from data except by timing.
//!
//! The simulator keeps its own descriptor of the slave open, so the master never sees EIO
//! between host sessions, and sets the line to raw mode at 19 200 baud. Because nothing may be
//! reading while no host is attached, unread input on the slave is discarded before each
//! chirp: chirps never pile up into a stale burst that a newly attached host would read.

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::termios::{self, BaudRate, FlushArg, SetArg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use super::machine::Transmit;

/// How long a write may wait for room in the pty buffer before the rest is dropped: a host
/// that does not read is like a disconnected one.
const WRITE_TIMEOUT: Duration = Duration::from_millis(100);

/// Master side of one pty.
///
/// The master fd is driven through tokio's pipe types, which accept any pollable
/// non-blocking fd "unchecked": that gives async reads and writes on the pty without
/// `unsafe` (denied workspace-wide). Reader and writer hold two descriptors of the same
/// master.
#[derive(Debug)]
pub(crate) struct PtyPort {
    machine: u16,
    reader: pipe::Receiver,
    writer: pipe::Sender,
    /// Held open for the simulator's lifetime (see the module doc).
    slave: OwnedFd,
    path: PathBuf,
    buf: Vec<u8>,
}

impl PtyPort {
    /// Opens a new pty for machine `machine`. Must run inside the tokio runtime.
    pub(crate) fn open(machine: u16) -> io::Result<Self> {
        let pty = nix::pty::openpty(None, None)?;
        let mut t = termios::tcgetattr(&pty.slave)?;
        termios::cfmakeraw(&mut t);
        termios::cfsetspeed(&mut t, BaudRate::B19200)?;
        termios::tcsetattr(&pty.slave, SetArg::TCSANOW, &t)?;
        let path = nix::unistd::ttyname(&pty.slave)?;
        // O_NONBLOCK lives on the open file description, so the duplicate shares it.
        let flags = OFlag::from_bits_truncate(fcntl(&pty.master, FcntlArg::F_GETFL)?);
        fcntl(&pty.master, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        let writer = pipe::Sender::from_owned_fd_unchecked(pty.master.try_clone()?)?;
        let reader = pipe::Receiver::from_owned_fd_unchecked(pty.master)?;
        Ok(Self { machine, reader, writer, slave: pty.slave, path, buf: vec![0; 4096] })
    }

    /// The slave device the host opens.
    pub(crate) fn path(&self) -> &PathBuf {
        &self.path
    }

    /// Waits until bytes arrive and appends them to `out`, without a wakeup bit. Cancel-safe:
    /// a read either completes or takes nothing.
    pub(crate) async fn recv(&mut self, out: &mut Vec<(u8, Option<bool>)>) -> io::Result<()> {
        loop {
            let n = self.reader.read(&mut self.buf).await?;
            if n > 0 {
                out.extend(self.buf[..n].iter().map(|&b| (b, None)));
                return Ok(());
            }
        }
    }

    /// Sends `tx` with its timing. Bytes that do not fit within [`WRITE_TIMEOUT`] are dropped.
    pub(crate) async fn send(&mut self, tx: &Transmit) {
        if tx.wakeup
            && let Err(error) = termios::tcflush(&self.slave, FlushArg::TCIFLUSH)
        {
            tracing::debug!(machine = self.machine, %error, "Could not discard unread input.");
        }
        if !tx.delay.is_zero() {
            tokio::time::sleep(tx.delay).await;
        }
        let (head, tail) = match tx.gap {
            Some(gap) => tx.bytes.split_at(gap.after.min(tx.bytes.len())),
            None => (&tx.bytes[..], &[][..]),
        };
        self.write(head).await;
        if let Some(gap) = tx.gap {
            tokio::time::sleep(gap.pause).await;
            self.write(tail).await;
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        match tokio::time::timeout(WRITE_TIMEOUT, self.writer.write_all(bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(machine = self.machine, %error, "Pty write failed."),
            Err(_) => tracing::debug!(machine = self.machine, "Pty full: reply dropped."),
        }
    }
}
