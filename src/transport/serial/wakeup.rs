//! How a UART's parity bit becomes SAS's 9th bit (sas-protocol.md §1.2), as pure functions:
//! the parity mode each character needs, the termios flags of each mode, which modes the driver
//! kept (negotiation with fallback), and the transmit sequence over the small [`Uart`] trait, so
//! that the exact order of switches, drains and writes is unit-tested without hardware (a pty
//! carries no 9th bit, §1.4).

use std::ops::Range;
use std::time::{Duration, Instant};

use libc::{
    BRKINT, CMSPAR, IGNBRK, IGNPAR, INPCK, ISTRIP, PARENB, PARMRK, PARODD, tcflag_t, termios2,
};

use crate::transport::{Character, TransportError, WakeupMethod, WakeupStyle};

/// A parity setting of the UART, for transmit and receive alike (termios has one for both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ParityMode {
    /// Parity bit = 1 if the byte has an odd number of ones.
    Even = 0,
    /// Parity bit always 1: sticky parity, `PARENB | CMSPAR | PARODD`.
    Mark = 1,
    /// No parity bit: 8N1.
    None = 2,
    /// Parity bit = 1 if the byte has an even number of ones.
    Odd = 3,
    /// Parity bit always 0: sticky parity, `PARENB | CMSPAR`.
    Space = 4,
}

impl ParityMode {
    pub(crate) fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Even,
            1 => Self::Mark,
            3 => Self::Odd,
            4 => Self::Space,
            _ => Self::None,
        }
    }

    /// The parity (9th) bit the UART sends with `byte` in this mode. With even parity the bit
    /// makes the number of ones even, i.e. it equals `popcount(byte) mod 2`; odd parity is the
    /// complement (§1.2 option 2).
    pub(crate) fn ninth_bit(self, byte: u8) -> bool {
        let odd_ones = byte.count_ones() % 2 == 1;
        match self {
            Self::Even => odd_ones,
            Self::Odd => !odd_ones,
            Self::Mark => true,
            Self::Space | Self::None => false,
        }
    }

    /// The 9th bit of a byte received in this mode. With `INPCK | PARMRK` the kernel marks a
    /// byte whose parity bit differs from what the mode expects, so the bit is the expected one
    /// flipped by the mark: in space mode a marked byte had a 1 (a chirp). Without parity
    /// nothing is known and the bit reads as 0.
    pub(crate) fn received_ninth_bit(self, byte: u8, marked: bool) -> bool {
        match self {
            Self::None => false,
            mode => mode.ninth_bit(byte) ^ marked,
        }
    }

    /// The mode that sends `c` with its wakeup bit under `method`.
    pub(crate) fn for_character(method: WakeupMethod, c: Character) -> Self {
        match method {
            WakeupMethod::StickyParity if c.wakeup => Self::Mark,
            WakeupMethod::StickyParity => Self::Space,
            WakeupMethod::OddEvenSwitching if Self::Even.ninth_bit(c.byte) == c.wakeup => {
                Self::Even
            }
            WakeupMethod::OddEvenSwitching => Self::Odd,
            WakeupMethod::None | WakeupMethod::Framed => Self::None,
        }
    }

    /// The mode the line is opened in and, under sticky parity, returns to after every message
    /// ([`transmit`]): the one in which machine replies (9th bit 0) arrive unmarked.
    pub(crate) fn resting(method: WakeupMethod) -> Self {
        match method {
            WakeupMethod::StickyParity => Self::Space,
            WakeupMethod::OddEvenSwitching => Self::Even,
            WakeupMethod::None | WakeupMethod::Framed => Self::None,
        }
    }
}

// === termios flags ===

/// The `c_cflag` bits that select the parity mode; nothing else is ever touched.
pub(crate) const PARITY_CFLAGS: tcflag_t = PARENB | PARODD | CMSPAR;

/// The parity bits of `mode` (§1.2: mark = `PARENB|CMSPAR|PARODD`, space = `PARENB|CMSPAR`).
pub(crate) fn parity_cflags(mode: ParityMode) -> tcflag_t {
    match mode {
        ParityMode::Even => PARENB,
        ParityMode::Mark => PARENB | CMSPAR | PARODD,
        ParityMode::None => 0,
        ParityMode::Odd => PARENB | PARODD,
        ParityMode::Space => PARENB | CMSPAR,
    }
}

/// `c_iflag` for receiving: `INPCK | PARMRK` so that a byte with an unexpected parity bit
/// arrives as `FF 00 b` and a literal `FF` as `FF FF`; no `IGNPAR` (it would drop those bytes)
/// and no `ISTRIP` (it would clear bit 7 of every byte) (§1.2 "Receive side"). `IGNBRK`: a
/// break (a disconnected cable holds the line at 0) is not SAS data and would otherwise read as
/// a marked `00`.
pub(crate) fn receive_iflag(iflag: tcflag_t) -> tcflag_t {
    (iflag | INPCK | PARMRK | IGNBRK) & !(IGNPAR | ISTRIP | BRKINT)
}

/// The termios to set for `mode`, derived from what the port has now. Only the parity bits of
/// `c_cflag` and the receive bits of `c_iflag` change: `CBAUD`/`CIBAUD` and `c_ispeed`/
/// `c_ospeed` are copied, so the baud rate that tokio-serial programmed with `BOTHER` survives
/// (the termios2 caution of §1.3).
pub(crate) fn wakeup_termios(base: &termios2, mode: ParityMode) -> termios2 {
    let mut t = *base;
    t.c_cflag = (base.c_cflag & !PARITY_CFLAGS) | parity_cflags(mode);
    t.c_iflag = receive_iflag(base.c_iflag);
    t
}

/// Whether a read-back `c_cflag` still has exactly the parity bits of `mode`. A driver that
/// cannot do sticky parity drops `CMSPAR`; a pty drops `PARENB` whatever was asked (§1.4).
pub(crate) fn kept(readback_cflag: tcflag_t, mode: ParityMode) -> bool {
    readback_cflag & PARITY_CFLAGS == parity_cflags(mode)
}

fn flags_text(cflag: tcflag_t) -> String {
    format!(
        "PARENB={} CMSPAR={} PARODD={}",
        u8::from(cflag & PARENB != 0),
        u8::from(cflag & CMSPAR != 0),
        u8::from(cflag & PARODD != 0)
    )
}

// === Negotiation ===

/// What opening found out about the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Negotiated {
    /// The requested method works as far as the read-back can tell.
    Granted(WakeupMethod),
    /// Sticky parity was refused; odd/even switching works. `reason` is for logs and
    /// diagnostics.
    FellBack { method: WakeupMethod, reason: String },
    /// No method producing a 9th bit works on this driver.
    Refused { reason: String },
}

/// Sets each parity mode the requested `style` needs through `apply` (which sets the mode and
/// returns the `c_cflag` read back) and decides which method the line can use. Sticky parity
/// falls back to odd/even switching when the driver does not keep `CMSPAR`; if plain parity is
/// not kept either, nothing works.
pub(crate) fn negotiate(
    style: WakeupStyle,
    mut apply: impl FnMut(ParityMode) -> Result<tcflag_t, TransportError>,
) -> Result<Negotiated, TransportError> {
    let mut try_modes = |modes: [ParityMode; 2]| -> Result<Option<String>, TransportError> {
        for mode in modes {
            let readback = apply(mode)?;
            if !kept(readback, mode) {
                return Ok(Some(format!(
                    "{mode:?} parity set {} but the driver kept {}",
                    flags_text(parity_cflags(mode)),
                    flags_text(readback)
                )));
            }
        }
        Ok(None)
    };
    Ok(match style {
        WakeupStyle::None => {
            let readback = apply(ParityMode::None)?;
            if kept(readback, ParityMode::None) {
                Negotiated::Granted(WakeupMethod::None)
            } else {
                Negotiated::Refused {
                    reason: format!(
                        "could not turn parity off: driver kept {}",
                        flags_text(readback)
                    ),
                }
            }
        }
        WakeupStyle::StickyParity => match try_modes([ParityMode::Space, ParityMode::Mark])? {
            None => Negotiated::Granted(WakeupMethod::StickyParity),
            Some(sticky) => match try_modes([ParityMode::Even, ParityMode::Odd])? {
                None => Negotiated::FellBack {
                    method: WakeupMethod::OddEvenSwitching,
                    reason: format!("sticky parity (CMSPAR) refused: {sticky}"),
                },
                Some(plain) => Negotiated::Refused {
                    reason: format!(
                        "sticky parity refused ({sticky}); plain parity refused ({plain})"
                    ),
                },
            },
        },
        WakeupStyle::OddEvenSwitching => match try_modes([ParityMode::Even, ParityMode::Odd])? {
            None => Negotiated::Granted(WakeupMethod::OddEvenSwitching),
            Some(plain) => {
                Negotiated::Refused { reason: format!("plain parity refused ({plain})") }
            }
        },
    })
}

// === Transmit sequence ===

/// The operations a message needs from a UART. The real one works on the port's fd
/// (`serial.rs`); tests record the calls.
pub(crate) trait Uart {
    /// The parity mode currently set.
    fn mode(&self) -> ParityMode;
    /// Sets a parity mode (termios; the caller has drained first).
    fn set_mode(&mut self, mode: ParityMode) -> Result<(), TransportError>;
    /// Queues bytes for transmission.
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), TransportError>;
    /// Waits until every queued byte has left the UART (`tcdrain`).
    fn drain(&mut self) -> Result<(), TransportError>;
    /// Sleeps (the post-wakeup delay).
    fn pause(&mut self, duration: Duration);
    /// A monotonic clock for the gap measurement.
    fn now(&mut self) -> Instant;
}

/// A run of consecutive characters sent in one parity mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    pub(crate) mode: ParityMode,
    pub(crate) range: Range<usize>,
}

/// Splits a message into runs of one parity mode. With `split_first` the first character is a
/// run of its own even if the next one needs the same mode, so that a post-wakeup pause can
/// follow it.
pub(crate) fn plan(chars: &[Character], method: WakeupMethod, split_first: bool) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (i, &c) in chars.iter().enumerate() {
        let mode = ParityMode::for_character(method, c);
        match groups.last_mut() {
            Some(last) if last.mode == mode && !(split_first && i == 1) => last.range.end = i + 1,
            _ => groups.push(Group { mode, range: i..i + 1 }),
        }
    }
    groups
}

/// Gaps measured while sending one message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GapReport {
    /// From the end of the first run (the wakeup byte has left the UART) to the second run
    /// having been written: the address→command gap.
    pub(crate) wakeup_gap: Option<Duration>,
    /// The longest gap between two runs of the message.
    pub(crate) max_gap: Option<Duration>,
}

/// Sends one message: for each run, wait until the previous run has left the UART (a parity
/// change applies to bytes still in its FIFO), switch the mode if it differs, pause after the
/// wakeup byte if asked, write the run. With sticky parity a host message is
/// mark → address → drain → space → rest (§1.2); with odd/even switching there can be a run per
/// byte.
///
/// Under sticky parity a message that ends in mark (a general poll `8x`, the sync poll `80`) is
/// followed by drain → space, so the port always receives in space: replies (9th bit 0) arrive
/// unmarked and only a chirp is marked. A driver that reports parity errors imprecisely (a USB
/// adapter may flag a whole packet rather than one byte; unverified) can then at worst garble
/// the bytes next to a chirp, never turn an ordinary reply into one. The
/// switch cannot race the reply: the machine starts answering only after the whole byte has
/// arrived, and its first byte is checked a character time (0.573 ms) later at the earliest,
/// while the switch is one ioctl after `tcdrain` returned. Under odd/even switching no mode
/// leaves every reply unmarked, so the line stays in the last run's mode and the decoding
/// ([`ParityMode::received_ninth_bit`]) relies on exact per-byte marks.
pub(crate) fn transmit(
    uart: &mut impl Uart,
    chars: &[Character],
    method: WakeupMethod,
    post_wakeup_delay: Duration,
) -> Result<GapReport, TransportError> {
    let pause = !post_wakeup_delay.is_zero() && chars.len() > 1;
    let groups = plan(chars, method, pause);
    let mut report = GapReport::default();
    let mut bytes = Vec::with_capacity(chars.len());
    for (i, group) in groups.iter().enumerate() {
        let switch = group.mode != uart.mode();
        let drained_at = if i > 0 || switch {
            uart.drain()?;
            Some(uart.now())
        } else {
            None
        };
        if switch {
            uart.set_mode(group.mode)?;
        }
        if i == 1 && pause {
            uart.pause(post_wakeup_delay);
        }
        bytes.clear();
        bytes.extend(chars[group.range.clone()].iter().map(|c| c.byte));
        uart.write_all(&bytes)?;
        if i > 0
            && let Some(drained_at) = drained_at
        {
            let gap = uart.now().saturating_duration_since(drained_at);
            report.max_gap = report.max_gap.max(Some(gap));
            if i == 1 {
                report.wakeup_gap = Some(gap);
            }
        }
    }
    if method == WakeupMethod::StickyParity && uart.mode() != ParityMode::Space {
        uart.drain()?;
        uart.set_mode(ParityMode::Space)?;
    }
    Ok(report)
}

// Sans-IO code under test: any instant will do as its `now`.
#[allow(clippy::disallowed_methods)]
#[cfg(test)]
mod tests {
    use libc::{B19200, B38400, BOTHER, CBAUD, CIBAUD, CLOCAL, CREAD, CS8};

    use super::*;

    fn ch(byte: u8, wakeup: bool) -> Character {
        Character { byte, wakeup }
    }

    /// A host long poll: LP 1F to address 1, wakeup on the address byte only.
    fn long_poll() -> Vec<Character> {
        let mut chars = vec![ch(0x01, true)];
        chars.extend([0x1F, 0x40, 0x2A].map(|b| ch(b, false)));
        chars
    }

    /// What tokio-serial leaves behind on Linux: 8N1 raw, speed programmed with BOTHER through
    /// termios2 (c_ospeed/c_ispeed), or a legacy Bxxx code in CBAUD.
    fn port_termios(cbaud: tcflag_t) -> termios2 {
        let mut t = termios2 {
            c_iflag: IGNPAR | ISTRIP,
            c_oflag: 0,
            c_cflag: cbaud | CS8 | CREAD | CLOCAL,
            c_lflag: 0,
            c_line: 0,
            c_cc: [0; 19],
            c_ispeed: 19_200,
            c_ospeed: 19_200,
        };
        t.c_cc[libc::VMIN] = 1;
        t
    }

    fn speed_fields(t: &termios2) -> (tcflag_t, tcflag_t, u32, u32) {
        (t.c_cflag & CBAUD, t.c_cflag & CIBAUD, t.c_ispeed, t.c_ospeed)
    }

    #[test]
    fn mark_sets_parenb_cmspar_and_parodd_and_keeps_the_baud_rate() {
        for cbaud in [BOTHER, B19200] {
            let base = port_termios(cbaud);
            let t = wakeup_termios(&base, ParityMode::Mark);
            assert_eq!(t.c_cflag & PARITY_CFLAGS, PARENB | CMSPAR | PARODD);
            assert_eq!(speed_fields(&t), speed_fields(&base));
            assert_eq!(t.c_cflag & !PARITY_CFLAGS, base.c_cflag, "only parity bits may change");
            assert_eq!((t.c_oflag, t.c_lflag, t.c_line, t.c_cc), (0, 0, 0, base.c_cc));
        }
    }

    #[test]
    fn space_sets_parenb_and_cmspar_without_parodd_and_keeps_the_baud_rate() {
        for cbaud in [BOTHER, B19200] {
            let base = port_termios(cbaud);
            let mark = wakeup_termios(&base, ParityMode::Mark);
            // Switching mark → space is what every host message does after its address byte.
            let space = wakeup_termios(&mark, ParityMode::Space);
            assert_eq!(space.c_cflag & PARITY_CFLAGS, PARENB | CMSPAR);
            assert_eq!(space.c_cflag & PARODD, 0);
            assert_eq!(speed_fields(&space), speed_fields(&base));
            assert_eq!(speed_fields(&space), (cbaud, 0, 19_200, 19_200));
            // And back: the switch is exactly reversible.
            let again = wakeup_termios(&space, ParityMode::Mark);
            assert_eq!((again.c_cflag, again.c_iflag), (mark.c_cflag, mark.c_iflag));
        }
    }

    #[test]
    fn even_odd_and_none_clear_cmspar_and_keep_the_baud_rate() {
        let base = wakeup_termios(&port_termios(BOTHER), ParityMode::Mark);
        for (mode, flags) in
            [(ParityMode::Even, PARENB), (ParityMode::Odd, PARENB | PARODD), (ParityMode::None, 0)]
        {
            let t = wakeup_termios(&base, mode);
            assert_eq!(t.c_cflag & PARITY_CFLAGS, flags, "{mode:?}");
            assert_eq!(speed_fields(&t), speed_fields(&base));
        }
        // A different speed is carried through untouched too.
        let mut fast = port_termios(B38400);
        fast.c_ispeed = 38_400;
        fast.c_ospeed = 38_400;
        assert_eq!(speed_fields(&wakeup_termios(&fast, ParityMode::Space)), speed_fields(&fast));
    }

    #[test]
    fn receive_flags_mark_parity_errors_and_never_strip_or_ignore() {
        let t = wakeup_termios(&port_termios(BOTHER), ParityMode::Space);
        assert_eq!(t.c_iflag & (INPCK | PARMRK | IGNBRK), INPCK | PARMRK | IGNBRK);
        assert_eq!(t.c_iflag & (IGNPAR | ISTRIP | BRKINT), 0);
    }

    #[test]
    fn odd_even_selection_gives_the_wanted_ninth_bit_for_every_byte() {
        for byte in 0..=u8::MAX {
            for wakeup in [false, true] {
                let mode =
                    ParityMode::for_character(WakeupMethod::OddEvenSwitching, ch(byte, wakeup));
                assert_eq!(mode.ninth_bit(byte), wakeup, "byte {byte:#04x} wakeup {wakeup}");
            }
        }
        // Worked examples: 0x01 has one 1 bit, so even parity sends 1; 0x03 has two.
        assert_eq!(
            ParityMode::for_character(WakeupMethod::OddEvenSwitching, ch(0x01, true)),
            ParityMode::Even
        );
        assert_eq!(
            ParityMode::for_character(WakeupMethod::OddEvenSwitching, ch(0x03, true)),
            ParityMode::Odd
        );
        assert_eq!(
            ParityMode::for_character(WakeupMethod::OddEvenSwitching, ch(0x1F, false)),
            ParityMode::Odd
        );
    }

    #[test]
    fn received_marks_decode_to_the_ninth_bit_in_every_mode() {
        // A chirp from address 1 (9th bit 1) and a reply byte 0x1F (9th bit 0), as the kernel
        // delivers them in each mode: marked when the bit differs from the expected one.
        for mode in [ParityMode::Mark, ParityMode::Space, ParityMode::Even, ParityMode::Odd] {
            for (byte, bit) in [(0x01, true), (0x1F, false), (0xFF, false), (0x00, true)] {
                let marked = mode.ninth_bit(byte) != bit;
                assert_eq!(mode.received_ninth_bit(byte, marked), bit, "{mode:?} {byte:#04x}");
            }
        }
        assert!(ParityMode::Space.received_ninth_bit(0x01, true));
        assert!(!ParityMode::None.received_ninth_bit(0x01, true));
    }

    #[test]
    fn a_sticky_long_poll_is_planned_as_one_mark_byte_then_space() {
        let groups = plan(&long_poll(), WakeupMethod::StickyParity, false);
        assert_eq!(
            groups,
            [
                Group { mode: ParityMode::Mark, range: 0..1 },
                Group { mode: ParityMode::Space, range: 1..4 },
            ]
        );
        let gp = plan(&[ch(0x81, true)], WakeupMethod::StickyParity, false);
        assert_eq!(gp, [Group { mode: ParityMode::Mark, range: 0..1 }]);
    }

    #[test]
    fn odd_even_plans_merge_runs_of_the_same_mode_unless_a_pause_needs_the_first_alone() {
        // 01 (wakeup) → even; 03, 05 → even (two ones, no wakeup); 07 → odd.
        let chars = [ch(0x01, true), ch(0x03, false), ch(0x05, false), ch(0x07, false)];
        assert_eq!(
            plan(&chars, WakeupMethod::OddEvenSwitching, false),
            [
                Group { mode: ParityMode::Even, range: 0..3 },
                Group { mode: ParityMode::Odd, range: 3..4 },
            ]
        );
        assert_eq!(
            plan(&chars, WakeupMethod::OddEvenSwitching, true),
            [
                Group { mode: ParityMode::Even, range: 0..1 },
                Group { mode: ParityMode::Even, range: 1..3 },
                Group { mode: ParityMode::Odd, range: 3..4 },
            ]
        );
        assert_eq!(
            plan(&chars, WakeupMethod::None, false),
            [Group { mode: ParityMode::None, range: 0..4 }]
        );
    }

    // === negotiation ===

    /// A driver that keeps the parity bits it supports and drops the rest, as read back.
    fn driver(keeps: tcflag_t) -> impl FnMut(ParityMode) -> Result<tcflag_t, TransportError> {
        move |mode| Ok(parity_cflags(mode) & keeps)
    }

    #[test]
    fn a_driver_that_keeps_cmspar_gets_sticky_parity() {
        let n = negotiate(WakeupStyle::StickyParity, driver(PARITY_CFLAGS)).unwrap();
        assert_eq!(n, Negotiated::Granted(WakeupMethod::StickyParity));
    }

    #[test]
    fn a_driver_that_drops_cmspar_falls_back_to_odd_even_switching() {
        let n = negotiate(WakeupStyle::StickyParity, driver(PARENB | PARODD)).unwrap();
        let Negotiated::FellBack { method, reason } = n else { panic!("{n:?}") };
        assert_eq!(method, WakeupMethod::OddEvenSwitching);
        assert!(reason.contains("CMSPAR=0"), "{reason}");
    }

    #[test]
    fn a_pty_that_drops_parenb_is_refused_whatever_is_asked() {
        // Linux ptys clear PARENB and keep CMSPAR/PARODD (sas-protocol.md §1.4).
        let pty = |mode| Ok(parity_cflags(mode) & !PARENB);
        for style in [WakeupStyle::StickyParity, WakeupStyle::OddEvenSwitching] {
            let n = negotiate(style, pty).unwrap();
            assert!(
                matches!(n, Negotiated::Refused { ref reason } if reason.contains("PARENB=0")),
                "{n:?}"
            );
        }
        assert_eq!(
            negotiate(WakeupStyle::None, pty).unwrap(),
            Negotiated::Granted(WakeupMethod::None)
        );
    }

    #[test]
    fn an_error_while_probing_is_returned_as_is() {
        let failing = |_| {
            Err(TransportError::BaudRateChanged {
                line: "x".into(),
                expected: 19_200,
                actual: 9600,
            })
        };
        assert!(matches!(
            negotiate(WakeupStyle::StickyParity, failing),
            Err(TransportError::BaudRateChanged { actual: 9600, .. })
        ));
    }

    // === transmit sequence ===

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Op {
        Drain,
        Set(ParityMode),
        Write(Vec<u8>),
        Pause(Duration),
    }

    /// Records calls; each call advances a fake clock by `step`.
    struct FakeUart {
        mode: ParityMode,
        ops: Vec<Op>,
        clock: Instant,
        step: Duration,
    }

    impl FakeUart {
        fn new(mode: ParityMode) -> Self {
            Self { mode, ops: Vec::new(), clock: Instant::now(), step: Duration::from_micros(100) }
        }
    }

    impl Uart for FakeUart {
        fn mode(&self) -> ParityMode {
            self.mode
        }
        fn set_mode(&mut self, mode: ParityMode) -> Result<(), TransportError> {
            self.clock += self.step;
            self.mode = mode;
            self.ops.push(Op::Set(mode));
            Ok(())
        }
        fn write_all(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
            self.clock += self.step;
            self.ops.push(Op::Write(bytes.to_vec()));
            Ok(())
        }
        fn drain(&mut self) -> Result<(), TransportError> {
            self.clock += self.step;
            self.ops.push(Op::Drain);
            Ok(())
        }
        fn pause(&mut self, duration: Duration) {
            self.clock += duration;
            self.ops.push(Op::Pause(duration));
        }
        fn now(&mut self) -> Instant {
            self.clock
        }
    }

    #[test]
    fn a_sticky_long_poll_is_mark_address_drain_space_rest() {
        let mut uart = FakeUart::new(ParityMode::Space);
        let report =
            transmit(&mut uart, &long_poll(), WakeupMethod::StickyParity, Duration::ZERO).unwrap();
        assert_eq!(
            uart.ops,
            [
                Op::Drain,
                Op::Set(ParityMode::Mark),
                Op::Write(vec![0x01]),
                Op::Drain,
                Op::Set(ParityMode::Space),
                Op::Write(vec![0x1F, 0x40, 0x2A]),
            ]
        );
        // Gap = set + write after the drain returned: two fake steps.
        assert_eq!(report.wakeup_gap, Some(Duration::from_micros(200)));
        assert_eq!(report.max_gap, report.wakeup_gap);
        assert_eq!(uart.mode, ParityMode::Space);
    }

    #[test]
    fn a_general_poll_is_sent_in_mark_and_the_port_returns_to_space_to_receive() {
        let mut uart = FakeUart::new(ParityMode::Space);
        let report =
            transmit(&mut uart, &[ch(0x81, true)], WakeupMethod::StickyParity, Duration::ZERO)
                .unwrap();
        assert_eq!(
            uart.ops,
            [
                Op::Drain,
                Op::Set(ParityMode::Mark),
                Op::Write(vec![0x81]),
                Op::Drain,
                Op::Set(ParityMode::Space),
            ]
        );
        assert_eq!(uart.mode, ParityMode::Space);
        assert_eq!(report, GapReport::default(), "a one-byte message has no inner gap");
    }

    #[test]
    fn the_post_wakeup_delay_follows_the_drained_address_byte_and_counts_in_the_gap() {
        let mut uart = FakeUart::new(ParityMode::Space);
        let delay = Duration::from_millis(2);
        let report = transmit(&mut uart, &long_poll(), WakeupMethod::StickyParity, delay).unwrap();
        assert_eq!(
            &uart.ops[3..],
            [
                Op::Drain,
                Op::Set(ParityMode::Space),
                Op::Pause(delay),
                Op::Write(vec![0x1F, 0x40, 0x2A]),
            ]
        );
        assert_eq!(report.wakeup_gap, Some(delay + Duration::from_micros(200)));
    }

    #[test]
    fn the_post_wakeup_pause_waits_for_the_address_byte_even_without_a_mode_switch() {
        // Under odd/even switching 01 (wakeup) and 03 both need even parity: no switch, but the
        // pause must still start only once the address byte has left the UART.
        let mut uart = FakeUart::new(ParityMode::Even);
        let delay = Duration::from_millis(2);
        let chars = [ch(0x01, true), ch(0x03, false)];
        let report = transmit(&mut uart, &chars, WakeupMethod::OddEvenSwitching, delay).unwrap();
        assert_eq!(
            uart.ops,
            [Op::Write(vec![0x01]), Op::Drain, Op::Pause(delay), Op::Write(vec![0x03]),]
        );
        assert_eq!(report.wakeup_gap, Some(delay + Duration::from_micros(100)));
    }

    #[test]
    fn odd_even_switching_drains_and_switches_between_runs() {
        let mut uart = FakeUart::new(ParityMode::Even);
        let chars = [ch(0x01, true), ch(0x03, false), ch(0x07, false), ch(0x05, false)];
        let report =
            transmit(&mut uart, &chars, WakeupMethod::OddEvenSwitching, Duration::ZERO).unwrap();
        assert_eq!(
            uart.ops,
            [
                Op::Write(vec![0x01, 0x03]),
                Op::Drain,
                Op::Set(ParityMode::Odd),
                Op::Write(vec![0x07]),
                Op::Drain,
                Op::Set(ParityMode::Even),
                Op::Write(vec![0x05]),
            ]
        );
        // Every byte went out in a mode whose parity bit is its wanted 9th bit.
        assert!(chars.iter().all(|c| {
            ParityMode::for_character(WakeupMethod::OddEvenSwitching, *c).ninth_bit(c.byte)
                == c.wakeup
        }));
        assert_eq!(report.max_gap, Some(Duration::from_micros(200)));
    }

    #[test]
    fn an_eight_bit_line_writes_the_message_in_one_go() {
        let mut uart = FakeUart::new(ParityMode::None);
        let report = transmit(&mut uart, &long_poll(), WakeupMethod::None, Duration::ZERO).unwrap();
        assert_eq!(uart.ops, [Op::Write(vec![0x01, 0x1F, 0x40, 0x2A])]);
        assert_eq!(report, GapReport::default());
    }
}
