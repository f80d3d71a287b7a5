//! The serial line on a Linux pseudo-terminal, through the public API. A pty carries 8-bit
//! bytes only and clears `PARENB` whatever is asked (sas-protocol.md §1.4), so the line must
//! refuse to claim a wakeup bit it cannot produce, and work as an 8-bit line when told to
//! (`wakeup = "none"`, the simulator's pty mode). The parity switching itself is exercised on a
//! pty by the unit tests in `src/transport/serial/tests.rs`.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use slotgate::transport::{
    AnyLine, Character, Line, SerialConfig, SerialLine, TransportConfig, TransportError,
    WakeupMethod, WakeupStyle, open,
};

const LIMIT: Duration = Duration::from_secs(5);

/// The master end, read and written synchronously (see the unit tests' helper).
struct Pty {
    master: OwnedFd,
    _slave: OwnedFd,
    path: String,
}

impl Pty {
    fn open() -> Self {
        let pty = nix::pty::openpty(None, None).unwrap();
        let path = nix::unistd::ttyname(&pty.slave).unwrap().to_string_lossy().into_owned();
        Self { master: pty.master, _slave: pty.slave, path }
    }

    fn read_exact(&self, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < n {
            let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
            let ready = poll(&mut fds, PollTimeout::try_from(LIMIT).unwrap()).unwrap();
            assert!(ready > 0, "the master end received {got:02x?}, expected {n} bytes");
            let mut buf = [0u8; 256];
            let k = nix::unistd::read(&self.master, &mut buf).unwrap();
            got.extend_from_slice(&buf[..k]);
        }
        got
    }

    fn write(&self, bytes: &[u8]) {
        assert_eq!(nix::unistd::write(&self.master, bytes).unwrap(), bytes.len());
    }

    fn config(&self, wakeup: WakeupStyle) -> SerialConfig {
        let mut config = SerialConfig::new(&self.path);
        config.wakeup = wakeup;
        config
    }
}

fn ch(byte: u8, wakeup: bool) -> Character {
    Character { byte, wakeup }
}

async fn recv_n(line: &mut impl Line, n: usize) -> Vec<Character> {
    let mut out = Vec::new();
    while out.len() < n {
        tokio::time::timeout(LIMIT, line.recv(&mut out)).await.unwrap().unwrap();
    }
    out
}

#[tokio::test]
async fn a_pty_is_refused_sticky_parity_and_odd_even_switching_with_the_reason() {
    let pty = Pty::open();
    for style in [WakeupStyle::StickyParity, WakeupStyle::OddEvenSwitching] {
        let error = SerialLine::open(&pty.config(style)).unwrap_err();
        let TransportError::WakeupUnsupported { detail, .. } = &error else {
            panic!("{style:?}: {error:?}")
        };
        assert!(detail.contains("PARENB=0"), "{detail}");
        assert!(!error.is_retryable(), "an operator has to change the port or the setting");
    }
    // The failed opens released the port.
    assert!(SerialLine::open(&pty.config(WakeupStyle::None)).is_ok());
}

#[tokio::test]
async fn an_eight_bit_pty_line_runs_at_19200_and_exchanges_bytes_with_the_master() {
    let pty = Pty::open();
    let line = open(&TransportConfig::Serial(pty.config(WakeupStyle::None))).await.unwrap();
    let AnyLine::Serial(mut line) = line else { panic!("not a serial line") };
    assert_eq!(line.baud_rate().unwrap(), 19_200);
    let d = line.diagnostics();
    assert_eq!(d.wakeup, WakeupMethod::None);
    assert!(!d.wakeup.detects_chirps());
    assert_eq!(d.wakeup_fallback, None);

    // General poll, then a long poll: the bytes arrive unchanged, in order.
    line.send(&[ch(0x81, true)]).await.unwrap();
    line.send(&[ch(0x01, true), ch(0x1F, false)]).await.unwrap();
    assert_eq!(pty.read_exact(3), [0x81, 0x01, 0x1F]);

    // A reply containing FF (which PARMRK doubles on the way) arrives as sent.
    pty.write(&[0x01, 0x1F, 0xFF, 0x00]);
    assert_eq!(
        recv_n(&mut line, 4).await,
        [ch(0x01, false), ch(0x1F, false), ch(0xFF, false), ch(0x00, false)]
    );
    assert_eq!(line.baud_rate().unwrap(), 19_200);
}

#[tokio::test]
async fn the_port_is_held_exclusively() {
    let pty = Pty::open();
    let first = SerialLine::open(&pty.config(WakeupStyle::None)).unwrap();
    let error = SerialLine::open(&pty.config(WakeupStyle::None)).unwrap_err();
    assert!(matches!(error, TransportError::Serial { .. }), "{error:?}");
    drop(first);
    assert!(SerialLine::open(&pty.config(WakeupStyle::None)).is_ok());
}

#[tokio::test]
async fn stale_input_is_cleared_and_recv_is_cancel_safe_against_a_timer() {
    let pty = Pty::open();
    let mut line = SerialLine::open(&pty.config(WakeupStyle::None)).unwrap();

    pty.write(&[0x00, 0x01]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    line.clear_input();

    let mut out = Vec::new();
    tokio::select! {
        r = line.recv(&mut out) => panic!("stale input was not cleared: {r:?} {out:?}"),
        () = tokio::time::sleep(Duration::from_millis(50)) => {}
    }
    pty.write(&[0x51]);
    assert_eq!(recv_n(&mut line, 1).await, [ch(0x51, false)]);
}

#[tokio::test]
async fn a_missing_device_is_a_retryable_error() {
    let config = SerialConfig::new("/dev/slotgate-no-such-tty");
    let error = open(&TransportConfig::Serial(config)).await.unwrap_err();
    assert!(matches!(error, TransportError::Serial { .. }), "{error:?}");
    assert!(error.is_retryable(), "an unplugged USB adapter comes back: {error:?}");
}
