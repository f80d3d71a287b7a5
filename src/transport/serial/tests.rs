//! The real ioctl sequence on a pseudo-terminal. A pty refuses every parity mode (it clears
//! `PARENB`, sas-protocol.md §1.4), so these tests force the wakeup method past the negotiation
//! and check what a pty can show: the bytes arrive in order, the parity flags the pty keeps
//! (`CMSPAR`, `PARODD`) follow the mode switches, the speed stays 19 200 through every switch,
//! the gap is measured, and `PARMRK` escaping of a literal `FF` is undone. Whether the 9th bit
//! appears on a wire needs real hardware.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use libc::{CMSPAR, PARODD};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::*;

const LIMIT: Duration = Duration::from_secs(5);

/// A pty whose master end the test reads and writes synchronously: by the time it reads, the
/// awaited `send` has already written the bytes, so `poll` only guards against a hang.
struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
    path: String,
}

impl Pty {
    fn open() -> Self {
        let pty = nix::pty::openpty(None, None).unwrap();
        let path = nix::unistd::ttyname(&pty.slave).unwrap().to_string_lossy().into_owned();
        Self { master: pty.master, slave: pty.slave, path }
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

    fn termios(&self) -> libc::termios2 {
        sys::tcgets2(self.slave.as_fd()).unwrap()
    }
}

fn ch(byte: u8, wakeup: bool) -> Character {
    Character { byte, wakeup }
}

fn forced(pty: &Pty, method: WakeupMethod, delay: Duration) -> SerialLine {
    let mut config = SerialConfig::new(&pty.path);
    config.post_wakeup_delay = delay;
    SerialLine::open_with(&config, Some(method)).unwrap()
}

#[tokio::test]
async fn sticky_parity_switches_mark_then_space_on_the_port_and_keeps_19200() {
    let pty = Pty::open();
    let mut line = forced(&pty, WakeupMethod::StickyParity, Duration::ZERO);
    // Opened in space: CMSPAR set, PARODD clear (the pty itself drops PARENB).
    assert_eq!(pty.termios().c_cflag & (CMSPAR | PARODD), CMSPAR);

    let poll = [ch(0x01, true), ch(0x1F, false), ch(0x40, false), ch(0x2A, false)];
    line.send(&poll).await.unwrap();
    assert_eq!(pty.read_exact(4), [0x01, 0x1F, 0x40, 0x2A]);
    let t = pty.termios();
    assert_eq!(t.c_cflag & (CMSPAR | PARODD), CMSPAR, "a long poll ends in space");
    assert_eq!((t.c_ispeed, t.c_ospeed), (19_200, 19_200));
    assert_eq!(line.baud_rate().unwrap(), 19_200);

    line.send(&[ch(0x81, true)]).await.unwrap();
    assert_eq!(pty.read_exact(1), [0x81]);
    assert_eq!(pty.termios().c_cflag & (CMSPAR | PARODD), CMSPAR, "back in space to receive");
    assert_eq!(line.baud_rate().unwrap(), 19_200);

    let d = line.diagnostics();
    assert_eq!(d.wakeup, WakeupMethod::StickyParity);
    let gap = d.last_wakeup_gap.expect("the address→command gap was measured");
    assert!(gap < INTER_BYTE_LIMIT, "switching took {gap:?} on a pty");
    assert_eq!(d.gaps_over_limit, 0);
}

#[tokio::test]
async fn odd_even_switching_sends_every_byte_in_order_through_the_switches() {
    let pty = Pty::open();
    let mut line = forced(&pty, WakeupMethod::OddEvenSwitching, Duration::ZERO);
    assert_eq!(pty.termios().c_cflag & (CMSPAR | PARODD), 0, "resting in even parity");
    // Even, even, odd, even, odd: three switches.
    let chars =
        [ch(0x01, true), ch(0x03, false), ch(0x07, false), ch(0x05, false), ch(0x01, false)];
    line.send(&chars).await.unwrap();
    assert_eq!(pty.read_exact(5), [0x01, 0x03, 0x07, 0x05, 0x01]);
    assert_eq!(pty.termios().c_cflag & (CMSPAR | PARODD), PARODD, "last byte needed odd parity");
    assert_eq!(line.baud_rate().unwrap(), 19_200);
    assert!(line.diagnostics().max_gap.is_some());
}

#[tokio::test]
async fn the_post_wakeup_delay_is_observed_and_measured() {
    let pty = Pty::open();
    let delay = Duration::from_millis(3);
    let mut line = forced(&pty, WakeupMethod::StickyParity, delay);
    line.send(&[ch(0x01, true), ch(0x1F, false)]).await.unwrap();
    assert_eq!(pty.read_exact(2), [0x01, 0x1F]);
    let gap = line.diagnostics().last_wakeup_gap.unwrap();
    assert!(gap >= delay && gap < delay + INTER_BYTE_LIMIT, "{gap:?}");
}

#[tokio::test]
async fn under_odd_even_parity_an_unmarked_byte_carries_the_modes_parity_bit_as_its_ninth_bit() {
    // A pty never marks a byte, so each one reads as having the parity bit the mode expects:
    // in even parity (the resting mode) 0x01 (one 1 bit) had a 1, 0x03 (two) had a 0. On a real
    // UART those are exactly the bits a machine sent for bytes that arrive unmarked.
    let pty = Pty::open();
    let mut line = forced(&pty, WakeupMethod::OddEvenSwitching, Duration::ZERO);
    pty.write(&[0x01, 0x03]);
    let mut got = Vec::new();
    while got.len() < 2 {
        tokio::time::timeout(LIMIT, line.recv(&mut got)).await.unwrap().unwrap();
    }
    assert_eq!(got, [ch(0x01, true), ch(0x03, false)]);
}

#[tokio::test]
async fn a_literal_ff_escaped_by_parmrk_arrives_as_one_plain_byte() {
    let pty = Pty::open();
    let mut line = forced(&pty, WakeupMethod::StickyParity, Duration::ZERO);
    // The pty's line discipline doubles FF because PARMRK is set, as a UART driver would.
    pty.write(&[0x01, 0xFF, 0x1F]);
    let mut got = Vec::new();
    while got.len() < 3 {
        tokio::time::timeout(LIMIT, line.recv(&mut got)).await.unwrap().unwrap();
    }
    assert_eq!(got, [ch(0x01, false), ch(0xFF, false), ch(0x1F, false)]);
    assert_eq!(line.diagnostics().receive_anomalies, 0);
}
