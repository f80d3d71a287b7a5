//! A local UART as a [`Line`]: tokio-serial at 19 200 baud, opened exclusively, with SAS's 9th bit
//! driven through the parity bit on the raw fd (sas-protocol.md §1.2, §1.3; field-lessons.md §B4).
//!
//! # Transmit
//!
//! serialport's `Parity` has no mark or space, so the parity flags are set underneath tokio-serial
//! with the `termios2` ioctls (`serial/sys.rs`), which keep the `BOTHER` baud rate intact; every
//! switch also reads the speed back and fails with [`TransportError::BaudRateChanged`] if it ever
//! moved. A host message goes out as mark → address byte → `tcdrain` → space → rest
//! (`wakeup::transmit`). The address→command gap must stay under 5 ms (§4.1); it is measured for
//! every message and exposed in [`LineDiagnostics`], and exceeding it is counted and logged. The
//! whole sequence runs as one job on tokio's blocking pool: `tcdrain` blocks the thread for a
//! character time or longer, and a job that is not interrupted when the `send` future is dropped
//! never leaves half a message on the wire.
//!
//! # Fallback
//!
//! On open the driver is asked for space and mark parity and the flags are read back. If `PARENB`
//! or `CMSPAR` did not stick, the line falls back to per-byte odd/even switching (the parity bit is
//! `popcount(byte) mod 2` under even parity, so even or odd is picked per byte to give the wanted
//! 9th bit), logs a warning, and reports it in [`LineDiagnostics::wakeup_fallback`]. If plain
//! parity does not stick either (a pseudo-terminal), opening fails with
//! [`TransportError::WakeupUnsupported`] unless [`WakeupStyle::None`] was configured on purpose. A
//! read-back proves only that the driver accepted the flags; whether the bit appears on the wire
//! needs a loopback or a logic analyser on the venue hardware (§1.3).
//!
//! # Receive
//!
//! The port receives with `INPCK | PARMRK` (no `IGNPAR`/`ISTRIP`): a byte whose parity bit differs
//! from the mode's expectation arrives as `FF 00 b`, a literal `FF` as `FF FF`
//! (`serial/parmrk.rs`). The 9th bit of each byte follows from the mode the port is in and the mark
//! (`ParityMode::received_ninth_bit` in `serial/wakeup.rs`). Under sticky parity the port returns
//! to space after every message, so replies arrive unmarked and a chirp (address with wakeup 1) is
//! the only marked byte; see `wakeup::transmit` for why that switch cannot race the reply.

mod parmrk;
mod sys;
mod wakeup;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio::io::AsyncReadExt;
use tokio_serial::{ClearBuffer, SerialPort, SerialPortBuilderExt, SerialStream};

use self::parmrk::{Marked, ParmrkParser};
use self::wakeup::{Negotiated, ParityMode, Uart};
use super::{
    Character, INTER_BYTE_LIMIT, Line, LineDiagnostics, SAS_BAUD_RATE, SerialConfig,
    TransportError, WakeupMethod, WakeupStyle,
};

/// Bytes read from the port per call. Sized for a whole SAS frame with every byte escaped.
const READ_CHUNK: usize = 1024;

/// How long a write may wait for room in the tty's output buffer (4 KiB, far more than any
/// SAS message) before the port counts as stuck.
const WRITE_STALL_LIMIT_MS: u16 = 1000;

/// A serial port to one or more EGMs.
#[derive(Debug)]
pub struct SerialLine {
    /// Reading side (an `AsyncFd`); also holds the exclusive lock (`TIOCEXCL` + `flock`) for as
    /// long as the line exists.
    stream: SerialStream,
    /// Writing side: a duplicate fd, used by the transmit job on the blocking pool. The mutex
    /// serialises a job left running by a dropped `send` with the next one.
    writer: Arc<Mutex<FdUart>>,
    /// The parity mode the port is in, written by the transmit job at each switch and read by
    /// `recv` to turn parity marks into wakeup bits.
    mode: Arc<AtomicU8>,
    /// Gap measurements, written by the transmit job.
    gaps: Arc<Mutex<GapStats>>,
    parser: ParmrkParser,
    marked: Vec<Marked>,
    read_buf: Box<[u8; READ_CHUNK]>,
    name: String,
    method: WakeupMethod,
    fallback: Option<String>,
    post_wakeup_delay: Duration,
}

#[derive(Debug, Default)]
struct GapStats {
    last_wakeup_gap: Option<Duration>,
    max_gap: Option<Duration>,
    over_limit: u64,
}

impl SerialLine {
    /// Opens `config.device` exclusively at 19 200 baud, 8 data bits, 1 stop bit, no flow
    /// control, and sets up the 9th bit as described in the module docs.
    pub fn open(config: &SerialConfig) -> Result<Self, TransportError> {
        Self::open_with(config, None)
    }

    /// `forced` skips the negotiation: tests use it to drive the real ioctl sequence on a pty,
    /// which refuses every parity mode.
    fn open_with(
        config: &SerialConfig,
        forced: Option<WakeupMethod>,
    ) -> Result<Self, TransportError> {
        let name = format!("serial {}", config.device);
        let stream = tokio_serial::new(&config.device, SAS_BAUD_RATE)
            .data_bits(tokio_serial::DataBits::Eight)
            .parity(tokio_serial::Parity::None)
            .stop_bits(tokio_serial::StopBits::One)
            .flow_control(tokio_serial::FlowControl::None)
            // A second process on the same port would interleave polls: never share it (§1.3).
            .exclusive(true)
            .open_native_async()
            .map_err(|source| TransportError::Serial { line: name.clone(), source })?;
        let fd = sys::dup(&stream).map_err(|e| TransportError::io(&name, "dup", e))?;
        let mode = Arc::new(AtomicU8::new(ParityMode::None as u8));
        let mut uart = FdUart { fd, name: name.clone(), mode: Arc::clone(&mode) };
        // tokio-serial has just programmed the speed; confirm it before touching anything.
        uart.check_speed(&uart.termios()?)?;

        let (method, fallback) = match forced {
            Some(method) => (method, None),
            None => match wakeup::negotiate(config.wakeup, |m| uart.set_and_read_back(m))? {
                Negotiated::Granted(method) => (method, None),
                Negotiated::FellBack { method, reason } => {
                    tracing::warn!(
                        line = %name,
                        %reason,
                        "The driver refused sticky parity (CMSPAR); falling back to per-byte \
                         odd/even parity switching, which may break the 5 ms inter-byte limit on \
                         USB adapters. Verify the wakeup bit with a loopback or logic analyser."
                    );
                    (method, Some(reason))
                }
                Negotiated::Refused { reason } => {
                    return Err(TransportError::WakeupUnsupported { line: name, detail: reason });
                }
            },
        };
        if config.wakeup == WakeupStyle::None {
            tracing::warn!(
                line = %name,
                "Serial line opened without a 9th bit: only a simulator on a pseudo-terminal \
                 can be polled this way."
            );
        }
        uart.set_mode(ParityMode::resting(method))?;
        // Whatever arrived while the port was being set up was received under other settings.
        stream
            .clear(ClearBuffer::All)
            .map_err(|source| TransportError::Serial { line: name.clone(), source })?;

        tracing::info!(line = %name, wakeup = %method, "Serial line open.");
        Ok(Self {
            stream,
            writer: Arc::new(Mutex::new(uart)),
            mode,
            gaps: Arc::default(),
            parser: ParmrkParser::default(),
            marked: Vec::new(),
            read_buf: Box::new([0; READ_CHUNK]),
            name,
            method,
            fallback,
            post_wakeup_delay: config.post_wakeup_delay,
        })
    }

    /// How the 9th bit is produced on this line.
    pub fn wakeup_method(&self) -> WakeupMethod {
        self.method
    }

    /// The baud rate as the port reports it now (`TCGETS2`).
    pub fn baud_rate(&self) -> Result<u32, TransportError> {
        self.stream
            .baud_rate()
            .map_err(|source| TransportError::Serial { line: self.name.clone(), source })
    }

    fn record(&self, report: wakeup::GapReport) {
        let Some(max_gap) = report.max_gap else { return };
        let mut gaps = self.gaps.lock().unwrap_or_else(PoisonError::into_inner);
        if report.wakeup_gap.is_some() {
            gaps.last_wakeup_gap = report.wakeup_gap;
        }
        gaps.max_gap = gaps.max_gap.max(Some(max_gap));
        if max_gap > INTER_BYTE_LIMIT {
            gaps.over_limit += 1;
            // First time, then at powers of two: visible without flooding the log at 5 polls/s.
            if gaps.over_limit.is_power_of_two() {
                tracing::warn!(
                    line = %self.name,
                    gap = ?max_gap,
                    limit = ?INTER_BYTE_LIMIT,
                    occurrences = gaps.over_limit,
                    "A gap inside a message exceeded the SAS inter-byte limit; machines may \
                     discard the message."
                );
            }
        }
    }
}

impl Line for SerialLine {
    async fn send(&mut self, chars: &[Character]) -> Result<(), TransportError> {
        if chars.is_empty() {
            return Ok(());
        }
        let writer = Arc::clone(&self.writer);
        let chars = chars.to_vec();
        let (method, delay) = (self.method, self.post_wakeup_delay);
        let job = tokio::task::spawn_blocking(move || {
            let mut uart = writer.lock().unwrap_or_else(PoisonError::into_inner);
            wakeup::transmit(&mut *uart, &chars, method, delay)
        });
        let report = job.await.map_err(|e| {
            TransportError::io(&self.name, "transmit job", std::io::Error::other(e.to_string()))
        })??;
        self.record(report);
        Ok(())
    }

    /// Cancel-safe: the only await is one `read`; bytes it returns are parsed before the next
    /// await, and a partial `PARMRK` escape stays in the parser.
    async fn recv(&mut self, out: &mut Vec<Character>) -> Result<usize, TransportError> {
        loop {
            let n = self
                .stream
                .read(&mut self.read_buf[..])
                .await
                .map_err(|e| TransportError::io(&self.name, "read", e))?;
            if n == 0 {
                return Err(TransportError::Closed { line: self.name.clone() });
            }
            self.parser.feed(&self.read_buf[..n], &mut self.marked);
            // A byte read now was received under the mode set now: the mode changes only while
            // sending, and the poller clears its input before each message (module docs).
            let mode = ParityMode::from_u8(self.mode.load(Ordering::Acquire));
            let before = out.len();
            out.extend(self.marked.drain(..).map(|m| Character {
                byte: m.byte,
                wakeup: mode.received_ninth_bit(m.byte, m.marked),
            }));
            if out.len() > before {
                return Ok(out.len() - before);
            }
        }
    }

    fn clear_input(&mut self) -> u64 {
        // The kernel's count just before the flush; bytes arriving in between are flushed too.
        let pending = self.stream.bytes_to_read().map_or(0, u64::from);
        if let Err(error) = self.stream.clear(ClearBuffer::Input) {
            tracing::debug!(line = %self.name, %error, "Flushing the input buffer failed.");
        }
        self.parser.reset();
        let parsed = u64::try_from(self.marked.len()).unwrap_or(u64::MAX);
        self.marked.clear();
        pending.saturating_add(parsed)
    }

    fn describe(&self) -> String {
        format!("{} at {SAS_BAUD_RATE} baud, wakeup: {}", self.name, self.method)
    }

    fn diagnostics(&self) -> LineDiagnostics {
        let gaps = self.gaps.lock().unwrap_or_else(PoisonError::into_inner);
        let mut d = LineDiagnostics::new(self.method);
        d.last_wakeup_gap = gaps.last_wakeup_gap;
        d.max_gap = gaps.max_gap;
        d.gaps_over_limit = gaps.over_limit;
        d.wakeup_fallback.clone_from(&self.fallback);
        d.receive_anomalies = self.parser.anomalies();
        d
    }
}

// === impl FdUart ===

/// The port's fd as a [`Uart`], used on the blocking pool.
#[derive(Debug)]
struct FdUart {
    fd: OwnedFd,
    name: String,
    mode: Arc<AtomicU8>,
}

impl FdUart {
    fn termios(&self) -> Result<libc::termios2, TransportError> {
        sys::tcgets2(self.fd.as_fd()).map_err(|source| TransportError::Termios {
            line: self.name.clone(),
            operation: "TCGETS2",
            source,
        })
    }

    /// The speed must read back as 19 200 both ways. `c_ispeed` 0 means "same as output".
    fn check_speed(&self, t: &libc::termios2) -> Result<(), TransportError> {
        for actual in [t.c_ospeed, t.c_ispeed] {
            if actual != SAS_BAUD_RATE && !(actual == 0 && t.c_ospeed == SAS_BAUD_RATE) {
                return Err(TransportError::BaudRateChanged {
                    line: self.name.clone(),
                    expected: SAS_BAUD_RATE,
                    actual,
                });
            }
        }
        Ok(())
    }

    /// Sets `mode` and returns the `c_cflag` the driver kept, checking the speed again.
    fn set_and_read_back(&mut self, mode: ParityMode) -> Result<libc::tcflag_t, TransportError> {
        self.set_mode(mode)?;
        let readback = self.termios()?;
        self.check_speed(&readback)?;
        Ok(readback.c_cflag)
    }
}

impl Uart for FdUart {
    fn mode(&self) -> ParityMode {
        ParityMode::from_u8(self.mode.load(Ordering::Acquire))
    }

    /// Reads the current termios (and with it, checks that the previous switch left the speed
    /// alone), then writes it back with only the parity bits changed.
    fn set_mode(&mut self, mode: ParityMode) -> Result<(), TransportError> {
        let current = self.termios()?;
        self.check_speed(&current)?;
        sys::tcsets2(self.fd.as_fd(), &wakeup::wakeup_termios(&current, mode)).map_err(
            |source| TransportError::Termios {
                line: self.name.clone(),
                operation: "TCSETS2",
                source,
            },
        )?;
        self.mode.store(mode as u8, Ordering::Release);
        Ok(())
    }

    fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), TransportError> {
        // The fd shares O_NONBLOCK with tokio-serial's descriptor, so a full output buffer
        // returns EAGAIN; wait for room rather than spin.
        while !bytes.is_empty() {
            match nix::unistd::write(&self.fd, bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLOUT)];
                    match poll(&mut fds, PollTimeout::from(WRITE_STALL_LIMIT_MS)) {
                        Ok(0) => {
                            return Err(TransportError::io(
                                &self.name,
                                "write",
                                std::io::ErrorKind::TimedOut.into(),
                            ));
                        }
                        Ok(_) | Err(Errno::EINTR) => {}
                        Err(e) => return Err(TransportError::io(&self.name, "poll", e.into())),
                    }
                }
                Err(e) => return Err(TransportError::io(&self.name, "write", e.into())),
            }
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<(), TransportError> {
        loop {
            match nix::sys::termios::tcdrain(&self.fd) {
                Ok(()) => return Ok(()),
                Err(Errno::EINTR) => {}
                Err(source) => {
                    return Err(TransportError::Termios {
                        line: self.name.clone(),
                        operation: "tcdrain",
                        source,
                    });
                }
            }
        }
    }

    // On the blocking pool: a thread sleep holds no runtime worker.
    #[allow(clippy::disallowed_methods)]
    fn pause(&mut self, duration: Duration) {
        std::thread::sleep(duration);
    }

    // Real time, not tokio's clock: a paused test clock must not hide a real gap.
    #[allow(clippy::disallowed_methods)]
    fn now(&mut self) -> Instant {
        Instant::now()
    }
}

#[cfg(test)]
mod tests;
