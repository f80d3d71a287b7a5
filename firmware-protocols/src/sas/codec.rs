//! Framing on a half-duplex SAS line: where a reply starts and ends, and where a host message
//! starts and ends.
//!
//! SAS frames carry no start marker and no length for most replies: the host knows what it polled,
//! so it knows what shape the answer has (sas-protocol.md §8.1). [`ReplyDecoder`] is therefore
//! built for one outstanding poll. It follows the tokio-util decoder contract: `Ok(None)` means
//! "need more bytes", a frame that fails its CRC is slid past one byte at a time within a bounded
//! budget (tokio-modbus `codec/rtu.rs`), and `Err` means this exchange failed and the session
//! decides whether to retry.
//!
//! Some answers are a prefix of others: a lone `addr` is an ACK unless `00` (busy) or `FF` (an RTE
//! event) follows, and an exception byte can equal the address. Those are settled only once the
//! line has been idle for the inter-byte limit, which the caller tells the decoder with
//! `line_idle`; time itself never enters this module.
//!
//! [`RequestDecoder`] is the machine side, used by the simulator: it splits the host's bytes into
//! messages by the wakeup bit where the transport carries it, and by the 5 ms inter-byte rule
//! where it does not (a pseudo-terminal has no 9th bit, sas-protocol.md §1.4).

use std::time::{Duration, Instant};

use super::message::{
    HostMessage, LongPoll, RTE_MARKER, RealTimeEvent, ReplyLen, RequestLen, command,
};
use super::{Address, Exception, Reply};
use crate::crc::has_valid_crc;
use crate::error::DecodeError;

/// Most garbage bytes one reply may slide past before the exchange counts as failed.
pub const MAX_RESYNC_SKIP: usize = 64;
/// Longest frame SAS can produce: address, command, length byte, 255 bytes, CRC.
pub const MAX_FRAME_LEN: usize = 3 + 255 + 2;
/// Gap after which a message in progress is abandoned (sas-protocol.md §4.1).
pub const INTER_BYTE_LIMIT: Duration = Duration::from_millis(5);

/// What the host is waiting for after sending a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A general poll: one exception byte, an RTE frame, or a deferred ROM signature.
    GeneralPoll,
    /// A type S control poll answered by ACK (01, 02, 0E, 21, 7F). A data frame echoing the
    /// command is accepted too, for machines that answer LP21 directly.
    Ack { command: u8 },
    /// A poll answered with a data frame echoing `command`.
    Data { command: u8 },
    /// No answer: the sync poll and broadcasts.
    Nothing,
}

impl Expect {
    /// The answer `message` calls for.
    pub fn for_message(message: &HostMessage) -> Self {
        match message {
            HostMessage::GeneralPoll(_) => Self::GeneralPoll,
            HostMessage::SyncPoll | HostMessage::Broadcast(_) => Self::Nothing,
            HostMessage::LongPoll(_, poll) => match poll {
                LongPoll::Shutdown
                | LongPoll::Startup
                | LongPoll::RealTimeEventReporting(_)
                | LongPoll::RomSignature { .. }
                | LongPoll::SetDateTime(_) => Self::Ack { command: poll.command() },
                _ => Self::Data { command: poll.command() },
            },
        }
    }
}

/// Outcome of trying to read one frame at the start of the buffer.
enum Attempt {
    Incomplete,
    Done(Reply, usize),
    /// The first byte cannot start the reply: slide past it.
    Invalid(DecodeError),
    /// A whole frame arrived with the right echo but is corrupt: drop all of it, so that its
    /// tail is not mistaken for a short answer such as busy (`addr 00`).
    Corrupt(DecodeError, usize),
}

/// Assembles the machine's reply to one poll.
#[derive(Debug)]
pub struct ReplyDecoder {
    address: Address,
    expect: Expect,
    rte: bool,
    buf: Vec<u8>,
    skipped: usize,
    last_error: Option<DecodeError>,
}

impl ReplyDecoder {
    /// A decoder for the reply of `address` to a message that expects `expect`. `rte` says
    /// whether real-time event reporting is on, which changes what a general poll returns.
    pub fn new(address: Address, expect: Expect, rte: bool) -> Self {
        Self { address, expect, rte, buf: Vec::new(), skipped: 0, last_error: None }
    }

    /// Feeds one received byte.
    pub fn push(&mut self, byte: u8) {
        self.buf.push(byte);
    }

    /// Garbage bytes skipped so far while looking for this reply.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Bytes received and not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Whether what has arrived is a lone address byte that is an ACK only if nothing follows,
    /// while RTE is on: the same byte opens an RTE frame (`addr FF …`) that pre-empts the poll.
    /// A machine that stalls after that byte would have its report taken for the ACK and then
    /// acknowledged away by the next poll, so the session waits longer before deciding.
    pub fn is_ambiguous_ack(&self) -> bool {
        self.rte
            && matches!(self.expect, Expect::Ack { .. })
            && self.buf.as_slice() == [self.address.get()]
    }

    /// Tries to complete the reply. `line_idle` says the inter-byte limit has passed since the
    /// last byte, so nothing more of the current frame will come.
    pub fn decode(&mut self, line_idle: bool) -> Result<Option<Reply>, DecodeError> {
        loop {
            if self.skipped > MAX_RESYNC_SKIP {
                return Err(DecodeError::LostSync { skipped: self.skipped });
            }
            if self.buf.is_empty() {
                return match (line_idle, self.last_error.take()) {
                    (true, Some(error)) => Err(error),
                    (_, error) => {
                        self.last_error = error;
                        Ok(None)
                    }
                };
            }
            match self.attempt(line_idle) {
                Attempt::Done(reply, len) => {
                    self.buf.drain(..len);
                    return Ok(Some(reply));
                }
                Attempt::Incomplete if line_idle => {
                    // The line went quiet inside a frame. Its remaining bytes are part of the same
                    // broken frame, so they are dropped with it: sliding through them one by one
                    // could end on a lone byte that reads as an idle exception, which the session
                    // would acknowledge, and the machine would forget the event (found by the
                    // session-against-simulator test with inter-byte-gap faults).
                    let received = self.buf.len();
                    self.buf.clear();
                    self.skipped += received;
                    self.last_error =
                        Some(DecodeError::Truncated { received, expected: received + 1 });
                }
                Attempt::Incomplete => return Ok(None),
                Attempt::Invalid(error) => self.slide(error),
                Attempt::Corrupt(error, len) => {
                    self.buf.drain(..len);
                    self.skipped += len;
                    self.last_error = Some(error);
                }
            }
        }
    }

    fn slide(&mut self, error: DecodeError) {
        self.buf.remove(0);
        self.skipped += 1;
        self.last_error = Some(error);
    }

    fn attempt(&self, line_idle: bool) -> Attempt {
        let addr = self.address.get();
        let Some(&b0) = self.buf.first() else { return Attempt::Incomplete };
        let b1 = self.buf.get(1).copied();
        match self.expect {
            Expect::Nothing => {
                Attempt::Invalid(DecodeError::AddressMismatch { expected: 0, found: b0 })
            }
            Expect::GeneralPoll => {
                if b0 != addr {
                    // A lone exception byte. In RTE mode answers are frames, so a byte followed
                    // by more is noise in front of one.
                    return match (self.rte, b1) {
                        (false, _) => Attempt::Done(Reply::Exception(Exception::from_code(b0)), 1),
                        // In RTE mode answers are frames; a lone byte is accepted only when it
                        // is all that came, never as the remnant of something that was skipped.
                        (true, None) if line_idle && self.skipped == 0 => {
                            Attempt::Done(Reply::Exception(Exception::from_code(b0)), 1)
                        }
                        (true, None) if line_idle => {
                            Attempt::Invalid(DecodeError::Truncated { received: 1, expected: 2 })
                        }
                        (true, None) => Attempt::Incomplete,
                        (true, Some(_)) => Attempt::Invalid(DecodeError::AddressMismatch {
                            expected: addr,
                            found: b0,
                        }),
                    };
                }
                match b1 {
                    // In RTE mode the machine answers with frames, so a lone address byte is a frame
                    // cut short; taking it for an exception would invent one and acknowledge away
                    // the event the frame carried.
                    None if line_idle && self.rte => {
                        Attempt::Invalid(DecodeError::Truncated { received: 1, expected: 5 })
                    }
                    // Outside RTE mode the exception code happens to equal the address.
                    None if line_idle => {
                        Attempt::Done(Reply::Exception(Exception::from_code(b0)), 1)
                    }
                    None => Attempt::Incomplete,
                    Some(RTE_MARKER) => self.rte_frame(),
                    Some(command::ROM_SIGNATURE) => self.data_frame(ReplyLen::Fixed(6)),
                    Some(_) => Attempt::Done(Reply::Exception(Exception::from_code(b0)), 1),
                }
            }
            Expect::Ack { command } | Expect::Data { command } => {
                let ack_only = matches!(self.expect, Expect::Ack { .. });
                if b0 == addr | 0x80 {
                    // A NACK is one byte alone on the line; inside a burst it is noise.
                    return match b1 {
                        None if line_idle => Attempt::Done(Reply::Nack, 1),
                        None => Attempt::Incomplete,
                        Some(_) => Attempt::Invalid(DecodeError::AddressMismatch {
                            expected: addr,
                            found: b0,
                        }),
                    };
                }
                if b0 != addr {
                    return Attempt::Invalid(DecodeError::AddressMismatch {
                        expected: addr,
                        found: b0,
                    });
                }
                match b1 {
                    // A lone address byte is an ACK only once no busy or event byte followed it.
                    None if line_idle && ack_only => Attempt::Done(Reply::Ack, 1),
                    None if line_idle => {
                        Attempt::Invalid(DecodeError::Truncated { received: 1, expected: 2 })
                    }
                    None => Attempt::Incomplete,
                    // Busy is `addr 00` and nothing after it.
                    Some(0x00) => match self.buf.len() {
                        2 if line_idle => Attempt::Done(Reply::Busy, 2),
                        2 => Attempt::Incomplete,
                        _ => Attempt::Invalid(DecodeError::CommandMismatch {
                            expected: command,
                            found: 0,
                        }),
                    },
                    Some(RTE_MARKER) => self.rte_frame(),
                    Some(echo) if echo == command => {
                        match Reply::data_reply_len(command, &self.buf) {
                            Some(len) => self.data_frame(len),
                            None => Attempt::Invalid(DecodeError::UnknownCommand { command }),
                        }
                    }
                    Some(found) => {
                        Attempt::Invalid(DecodeError::CommandMismatch { expected: command, found })
                    }
                }
            }
        }
    }

    fn data_frame(&self, len: ReplyLen) -> Attempt {
        let ReplyLen::Fixed(len) = len else { return Attempt::Incomplete };
        let Some(frame) = self.buf.get(..len) else { return Attempt::Incomplete };
        match Reply::decode_frame(self.address, frame) {
            Ok(reply) => Attempt::Done(reply, len),
            Err(error) => Attempt::Corrupt(error, len),
        }
    }

    fn rte_frame(&self) -> Attempt {
        let Some(&code) = self.buf.get(2) else { return Attempt::Incomplete };
        if let Some(len) = RealTimeEvent::frame_len(code) {
            return self.data_frame(ReplyLen::Fixed(len));
        }
        // A code whose payload we do not know: the frame ends where the CRC residue first
        // reaches zero. The code is still preserved as an unknown event.
        let scan_end = self.buf.len().min(MAX_FRAME_LEN);
        match (5..=scan_end).find(|&len| self.buf.get(..len).is_some_and(has_valid_crc)) {
            Some(len) => self.data_frame(ReplyLen::Fixed(len)),
            None if self.buf.len() < MAX_FRAME_LEN => Attempt::Incomplete,
            None => Attempt::Invalid(DecodeError::BadCrc { len: self.buf.len() }),
        }
    }
}

// === Machine side ===

/// One message as the machine received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The raw bytes, kept because implied NACK is "the same bytes again" (sas-protocol.md §4.2).
    pub bytes: Vec<u8>,
    /// The parsed message, or why it could not be parsed (bad CRC, unknown command, cut short).
    pub message: Result<HostMessage, DecodeError>,
}

/// Splits the host's byte stream into messages, on the machine side.
#[derive(Debug, Default)]
pub struct RequestDecoder {
    buf: Vec<u8>,
    last_byte_at: Option<Instant>,
    discarded: u64,
}

impl RequestDecoder {
    /// Feeds one byte received at `now`. `wakeup` is the 9th bit where the transport carries it
    /// (TCP framing, a real UART) and `None` where it does not (a pseudo-terminal); then a gap
    /// longer than [`INTER_BYTE_LIMIT`] marks the start of a new message.
    pub fn push(&mut self, now: Instant, byte: u8, wakeup: Option<bool>) -> Option<Request> {
        let gap =
            self.last_byte_at.is_some_and(|t| now.saturating_duration_since(t) > INTER_BYTE_LIMIT);
        self.last_byte_at = Some(now);
        let starts_message = match wakeup {
            Some(bit) => bit,
            None => self.buf.is_empty() || gap,
        };
        if starts_message && !self.buf.is_empty() {
            self.discarded += 1;
            self.buf.clear();
        }
        if self.buf.is_empty() && !starts_message {
            // A byte without the wakeup bit outside a message: not for us (sas-protocol.md §1.1).
            self.discarded += 1;
            return None;
        }
        if !starts_message && gap {
            // More than 5 ms between bytes of one message: the message is discarded (§4.1).
            self.discarded += 1;
            self.buf.clear();
            return None;
        }
        self.buf.push(byte);
        match self.expected_len() {
            Some(len) if self.buf.len() >= len => Some(self.take()),
            _ => None,
        }
    }

    /// Ends a message the decoder could not size (an unknown command) once the line has been idle
    /// longer than the inter-byte limit. Call when [`poll_timeout`](Self::poll_timeout) passes.
    pub fn flush(&mut self, now: Instant) -> Option<Request> {
        let idle =
            self.last_byte_at.is_some_and(|t| now.saturating_duration_since(t) > INTER_BYTE_LIMIT);
        (idle && !self.buf.is_empty()).then(|| self.take())
    }

    /// When [`flush`](Self::flush) should be called, if a message is in progress.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.buf.is_empty() {
            return None;
        }
        self.last_byte_at.map(|t| t + INTER_BYTE_LIMIT + Duration::from_micros(1))
    }

    /// Partial or stray bytes thrown away so far.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    fn expected_len(&self) -> Option<usize> {
        let first = *self.buf.first()?;
        if first & 0x80 != 0 {
            return Some(1);
        }
        let command = *self.buf.get(1)?;
        match LongPoll::request_len(command, self.buf.get(2).copied())? {
            RequestLen::Fixed(len) => Some(len),
            RequestLen::NeedLengthByte => None,
        }
    }

    fn take(&mut self) -> Request {
        let bytes = std::mem::take(&mut self.buf);
        let message = HostMessage::decode(&bytes);
        Request { bytes, message }
    }
}

// Sans-IO code under test: any instant will do as its `now`.
#[allow(clippy::disallowed_methods)]
#[cfg(test)]
mod tests {
    use super::*;
    use crate::sas::message::BasicMeters;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
    }

    fn addr1() -> Address {
        Address::new(1).unwrap()
    }

    fn feed(d: &mut ReplyDecoder, bytes: &[u8]) {
        bytes.iter().for_each(|&b| d.push(b));
    }

    const LP1C_REPLY: &str = "01 1C 00 12 34 56 00 10 00 00 00 05 00 00 00 00 00 00 00 00 07 89 \
                              00 00 03 21 00 00 00 12 00 00 00 03 E1 56";

    #[test]
    fn a_data_reply_is_complete_without_waiting_for_silence() {
        let mut d = ReplyDecoder::new(addr1(), Expect::Data { command: 0x1C }, false);
        let frame = hex(LP1C_REPLY);
        feed(&mut d, &frame[..frame.len() - 1]);
        assert_eq!(d.decode(false), Ok(None), "one byte short");
        d.push(frame[frame.len() - 1]);
        let Ok(Some(Reply::Meters(m))) = d.decode(false) else { panic!("expected LP1C meters") };
        assert_eq!(
            m,
            BasicMeters {
                coin_in: 123_456,
                coin_out: 100_000,
                drop: 50_000,
                jackpot: 0,
                games_played: 789,
                games_won: 321,
                slot_door_opened: 12,
                power_resets: 3,
            }
        );
    }

    #[test]
    fn garbage_before_a_frame_is_slid_past_and_counted() {
        let mut d = ReplyDecoder::new(addr1(), Expect::Data { command: 0x1A }, false);
        // Line noise, including a fake address byte, then `01 1A 00 01 00 00 1F A6`.
        feed(&mut d, &hex("55 01 33 07 01 1A 00 01 00 00 1F A6"));
        assert_eq!(d.decode(false), Ok(Some(Reply::CurrentCredits(10_000))));
        assert_eq!(d.skipped(), 4);
    }

    #[test]
    fn a_bad_crc_fails_the_exchange_once_the_line_is_idle() {
        let mut d = ReplyDecoder::new(addr1(), Expect::Data { command: 0x1A }, false);
        feed(&mut d, &hex("01 1A 00 01 00 00 1F A7"));
        assert_eq!(d.decode(false), Ok(None), "a retransmission might still follow");
        assert_eq!(d.decode(true), Err(DecodeError::BadCrc { len: 8 }));
        assert_eq!(d.skipped(), 8, "the corrupt frame is dropped whole");
    }

    #[test]
    fn the_tail_of_a_corrupt_frame_is_never_read_as_busy() {
        // `01 00` inside the corrupt frame must not become a busy answer.
        let mut d = ReplyDecoder::new(addr1(), Expect::Data { command: 0x1A }, false);
        feed(&mut d, &hex("01 1A 01 00 00 00 1F A6"));
        assert_ne!(d.decode(true), Ok(Some(Reply::Busy)));
    }

    #[test]
    fn a_truncated_reply_is_an_error_once_the_line_is_idle() {
        let mut d = ReplyDecoder::new(addr1(), Expect::Data { command: 0x1A }, false);
        feed(&mut d, &hex("01 1A 00 01"));
        assert_eq!(d.decode(false), Ok(None));
        assert!(matches!(d.decode(true), Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn endless_garbage_exhausts_the_resync_budget() {
        let mut d = ReplyDecoder::new(addr1(), Expect::Data { command: 0x1A }, false);
        feed(&mut d, &[0x55; MAX_RESYNC_SKIP + 10]);
        assert_eq!(d.decode(false), Err(DecodeError::LostSync { skipped: MAX_RESYNC_SKIP + 1 }));
    }

    #[test]
    fn a_lone_address_byte_is_an_ack_only_after_silence() {
        let mut d = ReplyDecoder::new(addr1(), Expect::Ack { command: 0x01 }, false);
        d.push(0x01);
        assert_eq!(d.decode(false), Ok(None), "busy or an RTE event could follow");
        assert_eq!(d.decode(true), Ok(Some(Reply::Ack)));
    }

    #[test]
    fn busy_and_nack_are_recognised() {
        let mut d = ReplyDecoder::new(addr1(), Expect::Ack { command: 0x01 }, false);
        feed(&mut d, &[0x01, 0x00]);
        assert_eq!(d.decode(false), Ok(None), "busy is settled by silence");
        assert_eq!(d.decode(true), Ok(Some(Reply::Busy)));
        let mut d = ReplyDecoder::new(addr1(), Expect::Data { command: 0x1C }, false);
        d.push(0x81);
        assert_eq!(d.decode(true), Ok(Some(Reply::Nack)));
    }

    #[test]
    fn a_long_poll_answered_with_an_rte_event_yields_the_event() {
        let mut d = ReplyDecoder::new(addr1(), Expect::Data { command: 0x1C }, true);
        feed(&mut d, &hex("01 FF 7F 00 00 00 40 F4 5F"));
        assert_eq!(d.decode(false), Ok(Some(Reply::Event(RealTimeEvent::GameEnded { win: 40 }))));
    }

    #[test]
    fn general_poll_without_rte_returns_the_exception_byte_at_once() {
        let mut d = ReplyDecoder::new(addr1(), Expect::GeneralPoll, false);
        d.push(0x11);
        assert_eq!(d.decode(false), Ok(Some(Reply::Exception(Exception::SlotDoorOpened))));
    }

    #[test]
    fn general_poll_exception_equal_to_the_address_is_settled_by_silence() {
        let address = Address::new(0x11).unwrap();
        let mut d = ReplyDecoder::new(address, Expect::GeneralPoll, false);
        d.push(0x11);
        assert_eq!(d.decode(false), Ok(None));
        assert_eq!(d.decode(true), Ok(Some(Reply::Exception(Exception::SlotDoorOpened))));
    }

    #[test]
    fn general_poll_in_rte_mode_reads_the_event_frame() {
        let mut d = ReplyDecoder::new(addr1(), Expect::GeneralPoll, true);
        feed(&mut d, &hex("01 FF 7E 00 25 00 12 34 81 41 00 44 46"));
        assert_eq!(
            d.decode(false),
            Ok(Some(Reply::Event(RealTimeEvent::GameStarted {
                credits_wagered: 25,
                total_coin_in: 123_481,
                wager_type: 0x41,
                progressive_group: 0,
            })))
        );
    }

    #[test]
    fn an_rte_frame_with_an_unknown_code_is_framed_by_crc_and_preserved() {
        let mut frame = vec![0x01, 0xFF, 0xEE, 0x12, 0x34];
        crate::crc::append_crc(&mut frame);
        let mut d = ReplyDecoder::new(addr1(), Expect::GeneralPoll, true);
        feed(&mut d, &frame);
        assert_eq!(
            d.decode(false),
            Ok(Some(Reply::Event(RealTimeEvent::Exception(Exception::Unknown(0xEE)))))
        );
    }

    #[test]
    fn idle_rte_general_poll_answer_is_no_activity() {
        let mut frame = vec![0x01, 0xFF, 0x00];
        crate::crc::append_crc(&mut frame);
        let mut d = ReplyDecoder::new(addr1(), Expect::GeneralPoll, true);
        feed(&mut d, &frame);
        assert_eq!(
            d.decode(false),
            Ok(Some(Reply::Event(RealTimeEvent::Exception(Exception::NoActivity))))
        );
    }

    #[test]
    fn deferred_rom_signature_arrives_on_a_general_poll() {
        let mut frame = vec![0x01, 0x21, 0x34, 0x12];
        crate::crc::append_crc(&mut frame);
        let mut d = ReplyDecoder::new(addr1(), Expect::GeneralPoll, false);
        feed(&mut d, &frame);
        assert_eq!(d.decode(false), Ok(Some(Reply::RomSignature(0x1234))));
    }

    #[test]
    fn a_truncated_rte_frame_never_leaves_a_lone_byte_that_reads_as_an_answer() {
        // `01 FF 7F 00 00` then silence: the rest of a game-end frame was cut off. Its last byte
        // must not become "no activity", which the session would acknowledge.
        let mut d = ReplyDecoder::new(addr1(), Expect::GeneralPoll, true);
        feed(&mut d, &hex("01 FF 7F 00 00"));
        assert_eq!(d.decode(false), Ok(None));
        assert!(matches!(d.decode(true), Err(DecodeError::Truncated { .. })));
        assert_eq!(d.skipped(), 5, "the broken frame is dropped whole");
    }

    #[test]
    fn in_rte_mode_a_lone_byte_after_skipped_noise_is_not_an_exception() {
        let mut d = ReplyDecoder::new(addr1(), Expect::GeneralPoll, true);
        feed(&mut d, &hex("55 1D"));
        assert!(d.decode(true).is_err());
    }

    #[test]
    fn in_rte_mode_a_lone_address_byte_is_a_cut_frame_not_an_exception() {
        let mut d = ReplyDecoder::new(addr1(), Expect::GeneralPoll, true);
        d.push(0x01);
        assert!(matches!(d.decode(true), Err(DecodeError::Truncated { .. })));
    }

    // === RequestDecoder ===

    #[test]
    fn wakeup_bit_splits_host_messages() {
        let t = Instant::now();
        let mut d = RequestDecoder::default();
        assert_eq!(d.push(t, 0x80, Some(true)).map(|r| r.message), Some(Ok(HostMessage::SyncPoll)));
        let mut got = None;
        for (i, b) in hex("01 01 51 08").into_iter().enumerate() {
            got = d.push(t, b, Some(i == 0));
        }
        assert_eq!(
            got.map(|r| r.message),
            Some(Ok(HostMessage::LongPoll(addr1(), LongPoll::Shutdown)))
        );
    }

    #[test]
    fn without_a_ninth_bit_a_gap_starts_a_new_message() {
        let t = Instant::now();
        let mut d = RequestDecoder::default();
        // `01 1C` cut off after the address byte, then after 6 ms a general poll.
        assert!(d.push(t, 0x01, None).is_none());
        let later = t + Duration::from_millis(6);
        let r = d.push(later, 0x81, None).expect("general poll is one byte");
        assert_eq!(r.message, Ok(HostMessage::GeneralPoll(addr1())));
        assert_eq!(d.discarded(), 1);
    }

    #[test]
    fn a_bad_crc_long_poll_is_delivered_as_an_error_for_the_machine_to_nack() {
        let t = Instant::now();
        let mut d = RequestDecoder::default();
        let mut got = None;
        for b in hex("01 01 52 08") {
            got = d.push(t, b, None);
        }
        assert_eq!(got.map(|r| r.message), Some(Err(DecodeError::BadCrc { len: 4 })));
    }

    #[test]
    fn an_unknown_command_is_flushed_after_the_inter_byte_limit() {
        let t = Instant::now();
        let mut d = RequestDecoder::default();
        assert!(d.push(t, 0x01, None).is_none());
        assert!(d.push(t, 0xB5, None).is_none());
        assert!(d.flush(t + Duration::from_millis(1)).is_none());
        let deadline = d.poll_timeout().unwrap();
        let r = d.flush(deadline).unwrap();
        assert_eq!(r.message, Err(DecodeError::UnknownCommand { command: 0xB5 }));
    }
}
