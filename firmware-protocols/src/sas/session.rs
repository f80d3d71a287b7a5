//! The host session for one EGM address: decides what to send to the machine and when, reads what
//! comes back, and turns it into [`SessionEvent`]s. It is sans-IO in the manner of quinn-proto:
//! the caller feeds received characters ([`HostSession::handle_input`]) and expired deadlines
//! ([`HostSession::handle_timeout`]), and takes out what to send ([`HostSession::poll_transmit`]),
//! when to wake up next ([`HostSession::poll_timeout`]) and what happened
//! ([`HostSession::poll_event`]). Time only ever comes in as a `now` argument.
//!
//! # Driving a session
//!
//! After every call to `new` (and `resume`), `handle_input`, `handle_timeout`, `enqueue` or `confirm_events`,
//! the caller drains `poll_event`, sends whatever `poll_transmit(now)` returns, and sleeps until
//! `poll_timeout()` (or until input arrives), then calls `handle_timeout(now)`. `poll_timeout`
//! returns `None` only while the session waits for [`HostSession::confirm_events`].
//!
//! # Invariants
//!
//! - **One exchange at a time.** SAS is half duplex: nothing is sent while a reply may still be
//!   arriving, i.e. before the reply has been read, the reply window has passed with no byte, or
//!   the line has been quiet for the inter-byte limit after the last byte (sas-protocol.md §4.1).
//! - **Implied ACK/NACK (§4.2).** Two consecutive messages to this machine are never the same poll
//!   (same general-poll byte, or same address and command byte, which is what machines compare)
//!   unless the second is a deliberate retry, i.e. an implied NACK. A poll that must be read again
//!   is separated from its predecessor by the `80` sync poll (a poll to address 0, which the
//!   machine takes as an implied ACK and does not answer), except that LP6F/LPAF alternate
//!   instead, which is what the spec's two codes are for. One poll is transmitted at most
//!   `timing.tries` times; the retries follow the first try directly, with nothing in between.
//! - **Durability hold.** After a reply that produced an event the machine will forget once it is
//!   acknowledged (an exception, an RTE event, a data reply, the ACK of a command, a ROM
//!   signature; see [`SessionEvent::needs_confirmation`]), the session transmits nothing new until
//!   the caller has taken those events out with `poll_event` and called `confirm_events`. Every
//!   message other than a retry of the last one is an implied ACK (the `80` included), so this
//!   guarantees that the machine drops an event from its queue only after the caller (the journal,
//!   after its flush) has it. Retries of the same message are still allowed: they are NACKs. The
//!   caller must confirm promptly: a machine that sees no address byte for 5 s declares a loop
//!   break and starts chirping (§4.1).
//! - **Resuming across a restart.** The hold lives in memory: a host process that dies between a
//!   reply and `confirm_events` leaves the machine waiting for the ACK of a report nobody stored,
//!   and a new session's `80` would be that ACK. [`HostSession::resume`], called on a fresh
//!   session, makes its first transmission the previous process's last message to this machine,
//!   byte for byte and as a retry (no `80` before it): the machine takes it as an implied NACK
//!   and sends its previous reply again without executing anything, and that reply is processed
//!   as the answer to the message, its events held for `confirm_events` as usual. Only the last
//!   message on a *line* can be unacknowledged (a poll to another address is an ACK too), so at
//!   most one session per line resumes. Resuming is safe when the record is stale: a machine that
//!   acknowledged since, or lost sync, treats the message as a new poll or ignores it; an event
//!   the caller had already stored comes again (a duplicate, never a loss); and a message that
//!   had already used up its tries may be executed once more.
//! - **Nothing the machine reports is dropped, nothing is delivered twice.** Unknown exception
//!   codes reach the caller as [`Exception::Unknown`]; only the idle answers (exception 00, 1F and
//!   the RTE frame `addr FF 00`) produce no event. An RTE report identical to the previous one,
//!   after a failed exchange or a lost link, is the machine re-sending a report whose implied ACK
//!   it never got (it lost power, say): it is counted in [`SessionStats::re_reports`], not
//!   delivered again. Bare exception bytes (RTE off) carry no data to tell a re-report from two
//!   genuine identical reports and are always delivered. A machine whose profile sets
//!   `rte.repeats_last_report` re-sends its last report on every poll: there an identical report
//!   is always a re-report.
//!
//! # Timing
//!
//! - **Poll spacing.** A message to this machine is sent no earlier than `timing.poll_spacing`
//!   after the start of the previous one (§4.1: 200 ms unless LP A0 allows 40 ms). The sync poll
//!   is addressed to nobody: it is sent when the next poll is due, and the poll it precedes
//!   follows as soon as the sync poll's reply window has passed. A busy answer pushes the next
//!   message back to at least `timing.busy_backoff` after the answer.
//! - **Reply deadline.** The first byte of a reply is expected by
//!   `sent + (request bytes + longest expected reply bytes) × 0.573 ms
//!    + post_wakeup_delay (multi-byte messages only) + timing.reply_timeout`.
//!   0.573 ms is one 11-bit character at 19 200 baud ([`CHARACTER_TIME`], §1.1); the request's own
//!   transmission time comes first because the 20 ms window starts at its end (§4.1). The reply's
//!   transmission time is included because buffering transports (USB adapters, device servers)
//!   may hand over a whole frame at once, so its first byte becomes visible only when the frame
//!   is complete. Once a byte has arrived, the reply is settled when the decoder has a complete
//!   frame, or when the line has been quiet for `timing.inter_byte_limit` (which is also what
//!   tells a lone ACK from the start of a busy answer or an RTE frame, see
//!   [`codec`](super::codec)).
//! - **Lone ACK under RTE.** With RTE on, a lone address byte answering a poll whose reply is
//!   an ACK is settled only after `timing.reply_timeout` of quiet: it may be the first byte of
//!   an RTE report from a machine that stalled mid-frame, and taking that for the ACK would let
//!   the next poll acknowledge the report away (the end-to-end fault test lost games this way).
//!
//! # Poll order
//!
//! General polls and queued long polls take turns once the link is up, so a long queue (meter
//! snapshots, a resync) never stops exceptions from being read; a long poll that was overridden
//! by an RTE event or answered busy is repeated before anything else. While the link is not up
//! only the general-poll cycle runs. Follow-up polls for priority exceptions (§13 item 8) go to
//! the front of the queue.
//!
//! # Sync style
//!
//! With `sync = "sync-poll"` the `80` is sent at start-up, after a chirp, after a poll was given
//! up, and before every general poll (the `80 81` cycle, §4.2, §4.3). With `sync = "none"` none
//! of those is sent for synchronisation; the `80` then appears only where the next message would
//! otherwise repeat the previous one (e.g. `81 80 81`), because implied ACK/NACK holds for every
//! machine.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::codec::{Expect, MAX_FRAME_LEN, ReplyDecoder};
use super::message::{HostMessage, LongPoll, RealTimeEvent, Reply, ReplyLen};
use super::{Address, Character, Exception};
use crate::error::{DecodeError, EncodeError};
use crate::profile::{FirmwareProfile, SyncStyle, Timing};

/// Time one character takes on the wire: 11 bits (start, 8 data, wakeup, stop) at 19 200 baud
/// (sas-protocol.md §1.1).
pub const CHARACTER_TIME: Duration = Duration::from_nanos(572_917);

/// Most consecutive busy answers one poll may get before it is given up. Each busy answer costs
/// about `busy_backoff` plus a sync poll, and while a poll is being repeated no general poll is
/// sent, so this bounds how long a machine that is stuck busy can keep its exceptions unread.
pub const MAX_BUSY_ANSWERS: u8 = 8;

/// Longest RTE frame whose payload is known: LP7C legacy bonus, 15 bytes (§6).
const LONGEST_RTE_FRAME: usize = 15;
/// A deferred ROM signature, the longest answer to a general poll outside RTE mode (§2.2).
const ROM_SIGNATURE_FRAME: usize = 6;
/// Estimate for variable-length replies without a better formula (ticket messages).
const VARIABLE_REPLY_ESTIMATE: usize = 32;
/// Serial number at its longest: `addr 54 len` + 3 version + 40 serial + CRC (§8).
const VERSION_AND_SERIAL_MAX: usize = 3 + 3 + 40 + 2;

/// One message for the transport to send now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// What is being sent.
    pub message: HostMessage,
    /// The wire characters: the wakeup bit is set on the first one only (§1.1).
    pub characters: Vec<Character>,
    /// The message repeats the previous one on purpose: an implied NACK (§4.2).
    pub retry: bool,
}

impl Transmit {
    /// The data bytes, without the wakeup bits.
    pub fn bytes(&self) -> impl Iterator<Item = u8> + '_ {
        self.characters.iter().map(|c| c.byte)
    }
}

/// What the session reports. Variants are alphabetical.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// The machine sent its own address with the wakeup bit: it has declared a loop break
    /// (§1.1, §4.1). The session resynchronises.
    Chirp,
    /// A general poll returned this exception (never an idle one).
    Exception(Exception),
    /// A follow-up poll owed for `exception` (see [`HostSession::owed_follow_ups`]) was given
    /// up: what the machine would have told about the exception (a handpay's amount, a bill's
    /// denomination) is lost. Replaces the [`Self::PollFailed`] such a poll would give.
    FollowUpLost { exception: Exception, poll: LongPoll, error: PollError },
    /// No answer on `timing.offline_after` consecutive exchanges, a chirp while the link was
    /// up, or the line could not be opened ([`HostSession::line_lost`]).
    LinkDown,
    /// The machine answered, for the first time or for the first time after [`Self::LinkDown`].
    LinkUp,
    /// A long poll was given up: every try failed, it was refused by the machine, or it became
    /// unsupported while queued.
    PollFailed { poll: LongPoll, error: PollError },
    /// An RTE frame, answering a general poll or overriding a long poll (§4.4, §6).
    RealTimeEvent(RealTimeEvent),
    /// The answer to a long poll: a data reply, or the ACK of a command such as LP01.
    Reply { poll: LongPoll, reply: Reply },
    /// The exception means events were lost or meters or configuration changed (§13 item 8);
    /// the session has queued the resync polls the profile supports (1C, 0F, 1F, 54). Follows
    /// the [`Self::Exception`] or [`Self::RealTimeEvent`] that carried it.
    ResyncRequired(Exception),
    /// A ROM signature (LP21), delivered directly or on a later general poll (§4.4). `seed` is
    /// the seed of the LP21 this session sent, if it remembers one.
    RomSignature { seed: Option<u16>, signature: u16 },
    /// A character with the wakeup bit and another address: some other machine is chirping on
    /// this line. Reported, never adopted.
    UnknownChirp(u8),
    /// The long poll with this command got no byte at all on its first try although the machine
    /// answered the exchange before; it is treated as unsupported from now on (§11).
    Unsupported(u8),
}

impl SessionEvent {
    /// Whether the event carries something the machine reported and will discard once it is
    /// acknowledged. The session holds back its next message until such events are confirmed.
    pub fn needs_confirmation(&self) -> bool {
        matches!(
            self,
            Self::Exception(_)
                | Self::RealTimeEvent(_)
                | Self::Reply { .. }
                | Self::ResyncRequired(_)
                | Self::RomSignature { .. }
        )
    }
}

/// Why a long poll was given up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PollError {
    /// The last try got no byte within the reply window.
    #[error("no answer within the reply window")]
    Timeout,
    /// The last try got an answer that could not be decoded.
    #[error("corrupt answer: {0}")]
    Decode(DecodeError),
    /// The machine answered NACK (`addr|80`) on every try.
    #[error("the machine answered NACK")]
    Nacked,
    /// The machine answered busy [`MAX_BUSY_ANSWERS`] times in a row.
    #[error("the machine stayed busy ({answers} answers)")]
    Busy { answers: u8 },
    /// The poll is unsupported by the profile or was learned unsupported while it was queued.
    #[error("long poll {command:#04x} is not supported by this machine")]
    Unsupported { command: u8 },
    /// The poll could not be encoded.
    #[error("cannot encode the poll: {0}")]
    Encode(EncodeError),
}

/// Why [`HostSession::enqueue`] refused a poll.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    /// The profile excludes the command, or the session learned that the machine ignores it.
    #[error("long poll {command:#04x} is not supported by this machine")]
    Unsupported { command: u8 },
    /// The poll moves money ([`LongPoll::moves_money`]): a monitoring host never sends it (R22).
    #[error("long poll {command:#04x} moves money; a monitoring host never sends it")]
    MovesMoney { command: u8 },
    /// The poll cannot be encoded (too many meters, an invalid date).
    #[error("cannot encode the poll: {0}")]
    Encode(#[from] EncodeError),
}

/// Why [`HostSession::resume`] refused to resume; the session then starts as if new.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResumeError {
    /// The bytes are not a complete, valid host message.
    #[error("not a host message: {0}")]
    Decode(DecodeError),
    /// A message, but not a general or long poll to this machine (the sync poll, a broadcast, a
    /// poll to another address): it leaves nothing of this machine's unacknowledged.
    #[error("not a poll to this machine")]
    NotForThisMachine,
    /// The session has sent something already; only its first transmission can be the retry.
    #[error("the session has already started")]
    AlreadyStarted,
}

/// The link as the session sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Nothing has been answered yet, and not enough has failed to call the link down.
    Unknown,
    /// The last exchanges were answered.
    Up,
    /// `timing.offline_after` consecutive exchanges failed, the machine chirped, or the line
    /// could not be opened.
    Down,
}

/// Counters since the session started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionStats {
    /// Transmissions of polls that expect an answer, retries included.
    pub tries: u64,
    /// Transmissions that repeated the previous message on purpose (implied NACKs).
    pub retries: u64,
    /// `80` sync polls sent.
    pub sync_polls: u64,
    /// Tries that got no byte within the reply window.
    pub timeouts: u64,
    /// Answers rejected for a bad CRC.
    pub crc_errors: u64,
    /// Answers rejected for any other reason (truncated, wrong echo, bad length, lost sync).
    pub decode_errors: u64,
    /// Bytes the decoder slid past, and bytes that arrived while no answer was expected.
    pub skipped_bytes: u64,
    /// Polls given up after their last try (general polls included).
    pub failed_exchanges: u64,
    /// Busy answers.
    pub busy: u64,
    /// Chirps with this machine's address.
    pub chirps: u64,
    /// RTE reports recognised as re-reports of one already delivered (see the module doc).
    pub re_reports: u64,
}

/// The host side of SAS for one machine address. See the module documentation.
#[derive(Debug)]
pub struct HostSession {
    address: Address,
    timing: Timing,
    sync_style: SyncStyle,
    /// Whether LP0E(on) is queued at every link-up.
    rte_wanted: bool,
    /// Commands never sent: the profile's list, what the profile rules out (RTE, extended
    /// meters), and what was learned silent.
    unsupported: BTreeSet<u8>,

    /// The message on the line, until its answer is settled.
    exchange: Option<Exchange>,
    /// A failed try waiting to be sent again, identically.
    retry: Option<Exchange>,
    /// A message chosen to go next, waiting behind the sync poll sent ahead of it.
    staged: Option<Planned>,
    /// A long poll to repeat before anything else (busy answer).
    repeat: Option<Planned>,
    queue: VecDeque<LongPoll>,
    /// Earliest start of the next transmission.
    next_due: Instant,
    /// A sync poll must precede the next message (start-up, chirp, given-up poll).
    needs_sync: bool,
    /// A sync poll must precede the next new message whatever the sync style: the line was
    /// re-established ([`HostSession::line_reestablished`]).
    force_sync: bool,
    /// Whether the next pick is a general poll rather than a queued long poll.
    general_turn: bool,
    /// The identity (general-poll byte, or address and command) of the last message sent to this
    /// machine; `None` when the sync poll came after it, or nothing was sent yet.
    last_sent: Option<Vec<u8>>,

    link: LinkState,
    consecutive_failures: u32,
    /// Whether the last concluded exchange was answered; needed to learn unsupported polls.
    previous_answered: bool,
    rte_on: bool,
    /// Seed of an LP21 that was ACKed, whose signature will come on a general poll.
    rom_seed: Option<u16>,
    /// LPA0 said the machine reports several SAS progressive levels at once: a 56 is then read
    /// with LP87 rather than LP85.
    multiple_progressive_wins: bool,
    /// The last RTE report delivered, to recognise the machine sending it again.
    last_report: Option<RealTimeEvent>,
    /// The profile's `rte.repeats_last_report`.
    repeats_last_report: bool,
    /// Since that report, an exchange failed or the link was lost, so the implied ACK that
    /// followed it may never have reached the machine.
    ack_in_doubt: bool,

    /// Follow-up polls queued for an exception already delivered, oldest first, with that
    /// exception. Once the exception is acknowledged the machine will not report it again, so
    /// these are the caller's to keep durable across a restart ([`Self::owed_follow_ups`]).
    owed: Vec<(LongPoll, Exception)>,

    events: VecDeque<SessionEvent>,
    /// Events needing confirmation were handed out and not yet confirmed.
    delivered_unconfirmed: bool,
    stats: SessionStats,
}

/// A message chosen to be sent.
#[derive(Debug, Clone)]
struct Planned {
    message: HostMessage,
    bytes: Vec<u8>,
    /// Busy answers this poll has had in a row.
    busy: u8,
    /// Tries of this poll that got no byte at all; a poll is learned unsupported only when
    /// every try was silent.
    silent: u8,
}

/// A message on the line and what has come back so far.
#[derive(Debug)]
struct Exchange {
    planned: Planned,
    /// Transmissions of this message so far, this one included.
    tries: u8,
    /// When the first byte of the answer is due.
    reply_by: Instant,
    last_byte_at: Option<Instant>,
    decoder: ReplyDecoder,
}

impl Exchange {
    /// When the answer is settled if nothing else arrives. A lone address byte that may be an
    /// ACK or the start of an RTE report is given the whole reply window, not just the
    /// inter-byte limit: taking a stalled report for an ACK loses it (module docs, Timing).
    fn settle_at(&self, timing: &Timing) -> Instant {
        let quiet = if self.decoder.is_ambiguous_ack() {
            timing.inter_byte_limit.max(timing.reply_timeout)
        } else {
            timing.inter_byte_limit
        };
        let idle = self.last_byte_at.map(|t| t + quiet);
        match (&self.planned.message, idle) {
            // Nothing is expected: wait out the whole window, and any noise in it, but no longer
            // than the late end of the longest frame could take: noise that goes on past that
            // is not a reply being finished, and a peer that never pauses would otherwise hold
            // the line in this exchange for good (#15).
            (HostMessage::SyncPoll, Some(idle)) => idle
                .max(self.reply_by)
                .min(self.reply_by + CHARACTER_TIME * MAX_FRAME_LEN as u32 + quiet),
            (_, Some(idle)) => idle,
            (_, None) => self.reply_by,
        }
    }
}

/// How one try ended.
#[derive(Debug)]
enum Outcome {
    Answer(Reply),
    Silent,
    Corrupt(DecodeError),
}

impl HostSession {
    /// A session for the machine at `address`, run by `profile`'s rules, starting at `now`. The
    /// first message is due at once: the sync poll, unless the profile says the machine needs
    /// none.
    pub fn new(address: Address, profile: &FirmwareProfile, now: Instant) -> Self {
        let mut unsupported = profile.unsupported_long_polls.clone();
        if !profile.extended_meters {
            unsupported.extend([
                super::message::command::SEND_EXTENDED_METERS,
                super::message::command::SEND_EXTENDED_METERS_ALT,
            ]);
        }
        if !profile.rte.supported {
            unsupported.insert(super::message::command::REAL_TIME_EVENT_REPORTING);
        }
        Self {
            address,
            timing: profile.timing,
            sync_style: profile.sync,
            rte_wanted: profile.rte.supported && profile.rte.enable,
            unsupported,
            exchange: None,
            retry: None,
            staged: None,
            repeat: None,
            queue: VecDeque::new(),
            next_due: now,
            needs_sync: true,
            force_sync: false,
            general_turn: true,
            last_sent: None,
            link: LinkState::Unknown,
            consecutive_failures: 0,
            previous_answered: false,
            rte_on: false,
            rom_seed: None,
            multiple_progressive_wins: false,
            last_report: None,
            repeats_last_report: profile.rte.repeats_last_report,
            ack_in_doubt: false,
            owed: Vec::new(),
            events: VecDeque::new(),
            delivered_unconfirmed: false,
            stats: SessionStats::default(),
        }
    }

    /// The line to the machine cannot be opened (a refused connection, a missing device), so
    /// nothing sent can reach the machine. The link goes down at once, reported as after
    /// `offline_after` failed exchanges, rather than after exchanges into the void that would
    /// count as timeouts; the caller sends nothing until the line is back and calls
    /// [`Self::line_reestablished`]. Nothing queued or awaiting a retry is dropped.
    pub fn line_lost(&mut self) {
        if self.link != LinkState::Down {
            self.link = LinkState::Down;
            self.rte_on = false;
            self.events.push_back(SessionEvent::LinkDown);
        }
    }

    /// The line to the machine was (re-)established. What was sent while it was down went
    /// nowhere, so the machine last heard a message from before, possibly the very one the next
    /// transmission would be, which it would take as an implied NACK and answer by re-sending a
    /// report already delivered (to another process, after a restart). So the next new message
    /// is preceded by the sync poll, whatever the sync style: an implied ACK, safe because
    /// nothing new is sent while events await confirmation. A pending retry still goes first: it
    /// is a NACK on purpose.
    pub fn line_reestablished(&mut self) {
        self.force_sync = true;
    }

    /// Makes the first transmission of a fresh session a retry of `last`, the exact bytes of the
    /// last message a previous process sent to this machine, with `rte_on` as that process
    /// believed RTE to be (it decides how the reply is framed). See "Resuming across a restart"
    /// in the module doc. On an error nothing changes and the session starts normally.
    pub fn resume(&mut self, now: Instant, last: &[u8], rte_on: bool) -> Result<(), ResumeError> {
        if self.exchange.is_some()
            || self.retry.is_some()
            || self.stats.tries > 0
            || self.stats.sync_polls > 0
        {
            return Err(ResumeError::AlreadyStarted);
        }
        let message = HostMessage::decode(last).map_err(ResumeError::Decode)?;
        let ours = match &message {
            HostMessage::GeneralPoll(address) | HostMessage::LongPoll(address, _) => {
                *address == self.address
            }
            HostMessage::SyncPoll | HostMessage::Broadcast(_) => false,
        };
        if !ours {
            return Err(ResumeError::NotForThisMachine);
        }
        self.rte_on = rte_on;
        let expect = Expect::for_message(&message);
        let planned = Planned { message, bytes: last.to_vec(), busy: 0, silent: 0 };
        // Queued as the retry of a first try that never concluded here: `poll_transmit` sends it
        // before anything else, the sync poll included, and counts it as a retry.
        self.retry = Some(Exchange {
            planned,
            tries: 1,
            reply_by: now,
            last_byte_at: None,
            decoder: ReplyDecoder::new(self.address, expect, rte_on),
        });
        self.next_due = now;
        Ok(())
    }

    /// The machine's address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// The link state.
    pub fn link(&self) -> LinkState {
        self.link
    }

    /// Whether real-time event reporting is on, as far as the machine has ACKed LP0E.
    pub fn rte_enabled(&self) -> bool {
        self.rte_on
    }

    /// Long-poll commands the session will not send: the profile's, and those learned silent.
    pub fn unsupported(&self) -> &BTreeSet<u8> {
        &self.unsupported
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Long polls waiting to be sent, in order.
    pub fn queued(&self) -> impl Iterator<Item = &LongPoll> + '_ {
        self.queue.iter()
    }

    /// Whether the session is holding back its next message until events are confirmed.
    pub fn is_holding(&self) -> bool {
        self.delivered_unconfirmed || self.events.iter().any(SessionEvent::needs_confirmation)
    }

    /// Whether a message has been sent and its answer is not settled yet. On a line shared by
    /// several machines nothing else may be sent meanwhile: SAS is half duplex.
    pub fn is_exchanging(&self) -> bool {
        self.exchange.is_some()
    }

    /// Whether the next message will be a retry (an implied NACK). On a shared line it must go
    /// before any message to another address, which this machine would take as an implied ACK of
    /// the answer that failed (sas-protocol.md §4.2).
    pub fn has_retry_pending(&self) -> bool {
        self.retry.is_some()
    }

    /// Queues a long poll (meters, shutdown/startup, clock set, …) behind those already queued.
    /// Its answer comes back as [`SessionEvent::Reply`], or as [`SessionEvent::PollFailed`].
    pub fn enqueue(&mut self, poll: LongPoll) -> Result<(), EnqueueError> {
        self.admit(&poll)?;
        self.queue.push_back(poll);
        Ok(())
    }

    /// Queues a long poll ahead of every queued one, e.g. LP1F at link-up, so the accounting
    /// denomination is known before real-time events are turned on. A queued duplicate is moved
    /// rather than repeated.
    pub fn enqueue_first(&mut self, poll: LongPoll) -> Result<(), EnqueueError> {
        self.admit(&poll)?;
        self.queue_front(poll);
        Ok(())
    }

    /// A caller's poll is queued only if this machine answers it and it can be encoded, so that
    /// a refusal is reported now, not when its turn comes.
    fn admit(&self, poll: &LongPoll) -> Result<(), EnqueueError> {
        if poll.moves_money() {
            return Err(EnqueueError::MovesMoney { command: poll.command() });
        }
        if self.refuses(poll) {
            return Err(EnqueueError::Unsupported { command: poll.command() });
        }
        poll.encode(self.address.get())?;
        Ok(())
    }

    /// Confirms every event already returned by [`poll_event`](Self::poll_event): the caller
    /// has made them durable, so the machine may now be acknowledged. Events still waiting in
    /// the session are not confirmed by this call.
    pub fn confirm_events(&mut self) {
        self.delivered_unconfirmed = false;
    }

    /// Follow-up polls this session still owes the machine, oldest first, each with the
    /// exception it is for: queued for an exception already delivered and not yet answered or
    /// given up. The machine forgets the exception once it is acknowledged, so a caller that
    /// can be restarted keeps this list durable before the next transmission (which may be
    /// that acknowledgement) and hands it to the next session with
    /// [`Self::restore_follow_ups`]; otherwise a restart loses, say, a handpay's amount.
    pub fn owed_follow_ups(&self) -> &[(LongPoll, Exception)] {
        &self.owed
    }

    /// Queues the follow-up polls a previous session owed (from [`Self::owed_follow_ups`]),
    /// first and in order. Each ends as a [`SessionEvent::Reply`] or, if the machine can no
    /// longer answer it, as a [`SessionEvent::FollowUpLost`].
    pub fn restore_follow_ups(&mut self, owed: impl IntoIterator<Item = (LongPoll, Exception)>) {
        let owed: Vec<_> = owed.into_iter().collect();
        for (poll, exception) in owed.into_iter().rev() {
            if self.refuses(&poll) {
                // The profile no longer allows it: it can never be answered now.
                let error = PollError::Unsupported { command: poll.command() };
                self.events.push_back(SessionEvent::FollowUpLost { exception, poll, error });
                continue;
            }
            self.owe(poll, exception);
        }
    }

    /// Queues `poll` first as a follow-up owed for `exception`.
    fn owe(&mut self, poll: LongPoll, exception: Exception) {
        if self.refuses(&poll) {
            return;
        }
        self.queue_front(poll.clone());
        self.owed.retain(|(owed, _)| *owed != poll);
        self.owed.insert(0, (poll, exception));
    }

    /// A long poll was given up: a follow-up owed for an exception is reported as lost, any
    /// other as failed.
    fn poll_failed(&mut self, poll: LongPoll, error: PollError) {
        match self.owed.iter().position(|(owed, _)| *owed == poll) {
            Some(i) => {
                let (poll, exception) = self.owed.remove(i);
                self.events.push_back(SessionEvent::FollowUpLost { exception, poll, error });
            }
            None => self.events.push_back(SessionEvent::PollFailed { poll, error }),
        }
    }

    /// The answer to `poll` was delivered: whatever was owed with it is paid.
    fn poll_answered(&mut self, poll: &LongPoll) {
        self.owed.retain(|(owed, _)| owed != poll);
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        let event = self.events.pop_front()?;
        if event.needs_confirmation() {
            self.delivered_unconfirmed = true;
        }
        Some(event)
    }

    /// When [`handle_timeout`](Self::handle_timeout) or [`poll_transmit`](Self::poll_transmit)
    /// next has something to do: the end of the current reply window or inter-byte gap, or when
    /// the next message is due. `None` while the session waits for
    /// [`confirm_events`](Self::confirm_events). The value changes after every other call.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if let Some(exchange) = &self.exchange {
            return Some(exchange.settle_at(&self.timing));
        }
        if self.retry.is_none() && self.is_holding() {
            return None;
        }
        Some(self.next_due)
    }

    /// Settles the current exchange if its reply window or inter-byte gap has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due = match &self.exchange {
            Some(exchange) => now >= exchange.settle_at(&self.timing),
            None => false,
        };
        if !due {
            return;
        }
        let Some(mut exchange) = self.exchange.take() else { return };
        let outcome = match (&exchange.planned.message, exchange.last_byte_at) {
            (HostMessage::SyncPoll, _) => {
                self.conclude_sync(now, &exchange);
                return;
            }
            (_, None) => Outcome::Silent,
            (_, Some(_)) => match exchange.decoder.decode(true) {
                Ok(Some(reply)) => Outcome::Answer(reply),
                Err(error) => Outcome::Corrupt(error),
                // Bytes came and were all consumed without a frame or an error: count it as
                // a frame that never appeared.
                Ok(None) => {
                    Outcome::Corrupt(DecodeError::LostSync { skipped: exchange.decoder.skipped() })
                }
            },
        };
        self.conclude(now, exchange, outcome);
    }

    /// Feeds characters received at `now`. A character with the wakeup bit is a chirp (machines
    /// set it on nothing else, §1.1); all others belong to the answer being awaited, or are
    /// counted as skipped when none is.
    pub fn handle_input(&mut self, now: Instant, input: &[Character]) {
        for character in input {
            if character.wakeup {
                // Machines clear the wakeup bit on every byte except a chirp (§1.1).
                if character.byte == self.address.get() {
                    self.chirp();
                } else {
                    self.events.push_back(SessionEvent::UnknownChirp(character.byte));
                }
                continue;
            }
            let Some(exchange) = self.exchange.as_mut() else {
                self.stats.skipped_bytes += 1;
                continue;
            };
            exchange.last_byte_at = Some(now);
            if matches!(exchange.planned.message, HostMessage::SyncPoll) {
                // The sync poll gets no answer (§4.4); whatever comes is noise.
                self.stats.skipped_bytes += 1;
                continue;
            }
            exchange.decoder.push(character.byte);
            let outcome = match exchange.decoder.decode(false) {
                Ok(None) => continue,
                Ok(Some(reply)) => Outcome::Answer(reply),
                Err(error) => Outcome::Corrupt(error),
            };
            if let Some(exchange) = self.exchange.take() {
                self.conclude(now, exchange, outcome);
            }
        }
    }

    /// The next message to send at `now`, if one is due.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if self.exchange.is_some() || now < self.next_due {
            return None;
        }
        if let Some(exchange) = self.retry.take() {
            // A retry is an implied NACK; it acknowledges nothing, so the hold does not apply.
            return Some(self.send(now, exchange.planned, exchange.tries + 1));
        }
        if self.is_holding() {
            return None;
        }
        if std::mem::take(&mut self.force_sync) {
            self.needs_sync = false;
            return Some(self.send_sync(now));
        }
        if let Some(planned) = self.staged.take() {
            return Some(self.send(now, planned, 1));
        }
        if std::mem::take(&mut self.needs_sync) && self.sync_style == SyncStyle::SyncPoll {
            return Some(self.send_sync(now));
        }
        let planned = self.plan();
        let identity = identity(&planned.bytes);
        let repeats_last = self.last_sent.as_deref() == Some(identity);
        // The `80 81` cycle (§4.2): the sync poll ACKs the previous exception and keeps the
        // machine synchronised (§4.3).
        let cycle = self.sync_style == SyncStyle::SyncPoll
            && matches!(planned.message, HostMessage::GeneralPoll(_))
            && self.last_sent.is_some();
        if repeats_last || cycle {
            self.staged = Some(planned);
            return Some(self.send_sync(now));
        }
        Some(self.send(now, planned, 1))
    }

    // === Choosing what to send ===

    /// The next message: a poll to repeat, a queued long poll on its turn, or the general poll.
    fn plan(&mut self) -> Planned {
        if let Some(planned) = self.repeat.take() {
            return self.alternate_if_repeated(planned);
        }
        if self.link == LinkState::Up && !self.general_turn {
            while let Some(poll) = self.queue.pop_front() {
                if self.refuses(&poll) {
                    let command = poll.command();
                    let error = PollError::Unsupported { command };
                    self.poll_failed(poll, error);
                    continue;
                }
                match self.planned(poll, 0) {
                    Ok(planned) => return self.alternate_if_repeated(planned),
                    Err((poll, error)) => {
                        let error = PollError::Encode(error);
                        self.poll_failed(poll, error);
                    }
                }
            }
        }
        let general = HostMessage::GeneralPoll(self.address);
        let bytes = vec![self.address.general_poll_byte()];
        Planned { message: general, bytes, busy: 0, silent: 0 }
    }

    /// Switches LP6F to LPAF (or back) when the previous message was the same extended-meter
    /// poll, so that the two are not an implied NACK (§4.2, §7.3).
    fn alternate_if_repeated(&self, planned: Planned) -> Planned {
        if self.last_sent.as_deref() != Some(identity(&planned.bytes)) {
            return planned;
        }
        let HostMessage::LongPoll(_, LongPoll::SendExtendedMeters { alternate, game, meters }) =
            &planned.message
        else {
            return planned;
        };
        let flipped = LongPoll::SendExtendedMeters {
            alternate: !alternate,
            game: *game,
            meters: meters.clone(),
        };
        // The same fields encoded a moment ago; should the other code not encode, the sync poll
        // separates the repeat instead.
        self.planned(flipped, planned.busy).unwrap_or(planned)
    }

    /// A long poll to this machine, encoded; the poll comes back with the error if it cannot be.
    fn planned(&self, poll: LongPoll, busy: u8) -> Result<Planned, (LongPoll, EncodeError)> {
        match poll.encode(self.address.get()) {
            Ok(bytes) => Ok(Planned {
                message: HostMessage::LongPoll(self.address, poll),
                bytes,
                busy,
                silent: 0,
            }),
            Err(error) => Err((poll, error)),
        }
    }

    /// Polls this session will not send: those the machine does not answer, and every poll that
    /// moves money, whatever path it came by (R22).
    fn refuses(&self, poll: &LongPoll) -> bool {
        poll.moves_money() || self.unsupported.contains(&poll.command())
    }

    // === Sending ===

    fn send_sync(&mut self, now: Instant) -> Transmit {
        let bytes = vec![super::message::SYNC_POLL];
        self.send(now, Planned { message: HostMessage::SyncPoll, bytes, busy: 0, silent: 0 }, 1)
    }

    fn send(&mut self, now: Instant, planned: Planned, tries: u8) -> Transmit {
        let retry = tries > 1;
        let sync = matches!(planned.message, HostMessage::SyncPoll);
        if sync {
            self.stats.sync_polls += 1;
            self.last_sent = None;
        } else {
            self.stats.tries += 1;
            self.stats.retries += u64::from(retry);
            self.last_sent = Some(identity(&planned.bytes).to_vec());
            self.next_due = now + self.timing.poll_spacing;
        }
        let reply_by = now + self.wire_time(&planned) + self.timing.reply_timeout;
        let expect = Expect::for_message(&planned.message);
        let characters = planned
            .bytes
            .iter()
            .enumerate()
            .map(|(i, &byte)| Character { byte, wakeup: i == 0 })
            .collect();
        let transmit = Transmit { message: planned.message.clone(), characters, retry };
        self.exchange = Some(Exchange {
            planned,
            tries,
            reply_by,
            last_byte_at: None,
            decoder: ReplyDecoder::new(self.address, expect, self.rte_on),
        });
        transmit
    }

    /// Transmission time of the message and of the longest answer it can get (module docs).
    fn wire_time(&self, planned: &Planned) -> Duration {
        let characters = planned.bytes.len() + self.longest_reply(&planned.message);
        let mut time = CHARACTER_TIME * u32::try_from(characters).unwrap_or(u32::MAX);
        if planned.bytes.len() > 1 {
            time += self.timing.post_wakeup_delay;
        }
        time
    }

    /// The longest answer `message` can get, as far as it is known in advance.
    fn longest_reply(&self, message: &HostMessage) -> usize {
        let poll = match message {
            HostMessage::SyncPoll | HostMessage::Broadcast(_) => return 0,
            HostMessage::GeneralPoll(_) if self.rte_on => return LONGEST_RTE_FRAME,
            HostMessage::GeneralPoll(_) => return ROM_SIGNATURE_FRAME,
            HostMessage::LongPoll(_, poll) => poll,
        };
        let command = poll.command();
        let data = match poll {
            // ACK, or a signature for machines that answer LP21 directly.
            LongPoll::RomSignature { .. } => ROM_SIGNATURE_FRAME,
            LongPoll::SendSelectedMeters { meters, .. } => 5 + 6 * meters.len() + 2,
            LongPoll::SendExtendedMeters { meters, .. } => 5 + 12 * meters.len() + 2,
            LongPoll::SendVersionAndSerial => VERSION_AND_SERIAL_MAX,
            _ => match Expect::for_message(message) {
                Expect::Ack { .. } => 1,
                _ => match Reply::data_reply_len(command, &[self.address.get(), command]) {
                    Some(ReplyLen::Fixed(len)) => len,
                    _ => VARIABLE_REPLY_ESTIMATE,
                },
            },
        };
        // In RTE mode a pending event can answer any long poll instead (§4.4).
        if self.rte_on { data.max(LONGEST_RTE_FRAME) } else { data }
    }

    // === Concluding exchanges ===

    fn conclude_sync(&mut self, now: Instant, exchange: &Exchange) {
        self.stats.skipped_bytes += skipped(exchange);
        self.next_due = self.next_due.max(now);
    }

    fn conclude(&mut self, now: Instant, exchange: Exchange, outcome: Outcome) {
        self.stats.skipped_bytes += skipped(&exchange);
        match outcome {
            Outcome::Answer(reply) => self.answered(now, exchange, reply),
            Outcome::Silent => {
                self.stats.timeouts += 1;
                let mut exchange = exchange;
                exchange.planned.silent += 1;
                // Unsupported long polls get no answer at all (§2.3), so a poll is learned
                // unsupported after one timed-out exchange: every try silent, while the machine
                // answered the exchange before. One silent try is no evidence: the reply may have
                // been lost, and in RTE mode it may have carried an event (§4.4) that only the
                // retry (an implied NACK) gets back; moving on instead would acknowledge it away.
                // Only read polls are learned: a control poll (LP01 shutdown, LP02 startup, LP0E,
                // LP21, LP7F) is mandatory, and marking it unsupported would silently drop a
                // regulator's command; it is reported as failed instead. A poll the machine has
                // answered busy is known to be supported.
                let read_poll =
                    matches!(Expect::for_message(&exchange.planned.message), Expect::Data { .. });
                let learn = read_poll
                    && exchange.tries >= self.timing.tries
                    && exchange.planned.silent == exchange.tries
                    && exchange.planned.busy == 0
                    && self.previous_answered;
                match exchange.planned.message {
                    HostMessage::LongPoll(_, poll) if learn => self.learn_unsupported(&poll),
                    _ => self.failed_try(exchange, PollError::Timeout),
                }
            }
            Outcome::Corrupt(error) => {
                if matches!(error, DecodeError::BadCrc { .. }) {
                    self.stats.crc_errors += 1;
                } else {
                    self.stats.decode_errors += 1;
                }
                self.failed_try(exchange, PollError::Decode(error));
            }
        }
    }

    /// A silent first try after an answered exchange: unsupported polls get no answer at all,
    /// not even a NACK (§2.3), and the spec's advice is to mark them after one timeout (§11).
    fn learn_unsupported(&mut self, poll: &LongPoll) {
        let command = poll.command();
        self.unsupported.insert(command);
        self.events.push_back(SessionEvent::Unsupported(command));
        self.previous_answered = false;
        self.general_turn = true;
        // A follow-up owed with it will never be answered now.
        if let Some(i) = self.owed.iter().position(|(owed, _)| owed == poll) {
            let (poll, exception) = self.owed.remove(i);
            let error = PollError::Unsupported { command };
            self.events.push_back(SessionEvent::FollowUpLost { exception, poll, error });
        }
    }

    /// Retries identically while tries remain (implied NACK), else gives up.
    fn failed_try(&mut self, exchange: Exchange, error: PollError) {
        self.ack_in_doubt = true;
        if exchange.tries < self.timing.tries {
            // `next_due` already keeps the poll spacing from this try's start.
            self.retry = Some(exchange);
            return;
        }
        self.give_up(exchange.planned.message, error);
    }

    fn give_up(&mut self, message: HostMessage, error: PollError) {
        self.stats.failed_exchanges += 1;
        // Busy and NACK are answers: the machine is there.
        let answered = matches!(error, PollError::Nacked | PollError::Busy { .. });
        self.previous_answered = answered;
        if !answered {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            if self.consecutive_failures >= self.timing.offline_after
                && self.link != LinkState::Down
            {
                self.link = LinkState::Down;
                self.rte_on = false;
                self.events.push_back(SessionEvent::LinkDown);
            }
        }
        // After the final try the next message must not read as one more NACK; the sync poll
        // cannot (NC's resync to an unused address, §4.2), and it resynchronises a machine that
        // lost sync (§4.3).
        self.needs_sync = true;
        match message {
            HostMessage::LongPoll(_, poll) => {
                self.general_turn = true;
                self.poll_failed(poll, error);
            }
            HostMessage::GeneralPoll(_) => self.general_turn = false,
            HostMessage::SyncPoll | HostMessage::Broadcast(_) => {}
        }
    }

    fn answered(&mut self, now: Instant, exchange: Exchange, reply: Reply) {
        self.link_answered();
        if reply == Reply::Nack {
            // The machine could not use the poll (bad CRC on the way in, invalid data): send it
            // again, identically, within the tries.
            self.failed_try(exchange, PollError::Nacked);
            return;
        }
        let general = matches!(exchange.planned.message, HostMessage::GeneralPoll(_));
        if general
            && !matches!(reply, Reply::Exception(_) | Reply::Event(_) | Reply::RomSignature(_))
        {
            // The decoder gives a general poll nothing else; should it ever, the answer is
            // treated as corrupt rather than guessed at.
            self.stats.decode_errors += 1;
            let error =
                DecodeError::UnknownCommand { command: echoed_command(&reply, self.address) };
            self.failed_try(exchange, PollError::Decode(error));
            return;
        }
        let Planned { message, bytes, busy, .. } = exchange.planned;
        match (message, reply) {
            (HostMessage::LongPoll(address, poll), Reply::Busy) => {
                self.stats.busy += 1;
                let answers = busy + 1;
                let message = HostMessage::LongPoll(address, poll);
                if answers >= MAX_BUSY_ANSWERS {
                    self.give_up(message, PollError::Busy { answers });
                    return;
                }
                // Repeated after the back-off, behind a different message so that the repeat
                // is not a NACK (§4.4).
                self.repeat = Some(Planned { message, bytes, busy: answers, silent: 0 });
                self.next_due = self.next_due.max(now + self.timing.busy_backoff);
            }
            (HostMessage::LongPoll(_, poll), Reply::Event(event)) => {
                // RTE override (§4.4): the event answers instead of the poll. The poll counts as
                // NACKed and is asked again, behind a different message: the turn stays with
                // the queue, so the sync poll separates the two.
                self.report_event(event);
                self.queue.retain(|queued| *queued != poll);
                self.queue.push_front(poll);
            }
            (
                HostMessage::LongPoll(_, LongPoll::RomSignature { seed }),
                Reply::RomSignature(sig),
            ) => {
                self.general_turn = true;
                self.poll_answered(&LongPoll::RomSignature { seed });
                let event = SessionEvent::RomSignature { seed: Some(seed), signature: sig };
                self.events.push_back(event);
            }
            (HostMessage::LongPoll(_, poll), reply) => {
                self.general_turn = true;
                if reply == Reply::Ack {
                    match poll {
                        LongPoll::RealTimeEventReporting(on) => self.rte_on = on,
                        LongPoll::RomSignature { seed } => self.rom_seed = Some(seed),
                        _ => {}
                    }
                }
                if let (LongPoll::SendEnabledFeatures { game: 0 }, Reply::EnabledFeatures(f)) =
                    (&poll, &reply)
                {
                    self.multiple_progressive_wins = f.multiple_progressive_wins();
                }
                self.poll_answered(&poll);
                self.events.push_back(SessionEvent::Reply { poll, reply });
            }
            (HostMessage::GeneralPoll(_), Reply::Exception(exception)) => {
                self.general_turn = false;
                if self.rte_on && !exception.is_idle() {
                    // A bare exception byte in RTE mode: the machine has RTE off (it lost its
                    // setting at power-up, say), and its next reports would come without their
                    // data (7E/7F amounts). Turn it back on before anything else.
                    self.rte_on = false;
                    if self.rte_wanted {
                        self.queue_front(LongPoll::RealTimeEventReporting(true));
                    }
                }
                if !exception.is_idle() {
                    self.events.push_back(SessionEvent::Exception(exception));
                    self.follow_up(exception, false);
                }
            }
            (HostMessage::GeneralPoll(_), Reply::Event(event)) => {
                self.general_turn = false;
                self.report_event(event);
            }
            (HostMessage::GeneralPoll(_), Reply::RomSignature(signature)) => {
                self.general_turn = false;
                let seed = self.rom_seed.take();
                self.events.push_back(SessionEvent::RomSignature { seed, signature });
            }
            // Ruled out above (general polls) or never decoded (sync poll, broadcasts).
            (
                HostMessage::GeneralPoll(_) | HostMessage::SyncPoll | HostMessage::Broadcast(_),
                _,
            ) => {}
        }
    }

    fn report_event(&mut self, event: RealTimeEvent) {
        let exception = event.exception();
        if exception.is_idle() {
            // `addr FF 00`: MON's idle answer in RTE mode (§2.2, §6).
            return;
        }
        // A machine drops a report from its queue only on an implied ACK (§4.2). If that ACK may
        // not have arrived (a failed exchange or a lost link since: the machine lost power, say),
        // the machine sends the same report again, and SAS has no sequence number to tell. A
        // report identical to the last one in that situation is a re-report: counted, not
        // delivered twice. Genuine RTE reports in a row always differ (7E carries the coin-in
        // meter, 4F the bill count, a 7F follows its game's 7E).
        // A machine whose profile says it repeats its last report on every poll (§11) sends it
        // again with or without a doubt about the ACK.
        let re_sent = self.ack_in_doubt || self.repeats_last_report;
        let repeat = re_sent && self.last_report.as_ref() == Some(&event);
        self.ack_in_doubt = false;
        self.last_report = Some(event.clone());
        if repeat {
            self.stats.re_reports += 1;
            return;
        }
        // Typed events carry their data; a bare code in an RTE frame does not.
        let with_data = !matches!(event, RealTimeEvent::Exception(_));
        self.events.push_back(SessionEvent::RealTimeEvent(event));
        self.follow_up(exception, with_data);
    }

    /// Follow-up polls for exceptions whose details must be read (§5, §13 item 8). Those that
    /// move money (58 validation number, 71 redemption, 72 transfer requests) are never sent;
    /// LP72 goes only as an interrogation.
    fn follow_up(&mut self, exception: Exception, with_data: bool) {
        match exception {
            Exception::HandpayPending => self.owe(LongPoll::SendHandpayInfo, exception),
            // Bills: the RTE 4F frame carries country, denomination and count already.
            e if matches!(e.code(), 0x47..=0x50) && !with_data => {
                self.owe(LongPoll::SendLastBill, exception);
            }
            // Without RTE the game end carries no win: read the meters (§6).
            Exception::GameEnded if !with_data => self.owe(LongPoll::SendMeters, exception),
            Exception::TicketInserted => self.owe(LongPoll::SendTicketValidationData, exception),
            // A cash-out ticket moves the cancelled-credits meter, which LP0F has and LP1C lacks;
            // its number and amount are in the machine's validation record (LP4D).
            Exception::CashoutTicketPrinted => {
                self.owe(LongPoll::SendEnhancedValidation { function: 0 }, exception);
                self.owe(LongPoll::SendMeters10To15, exception);
            }
            // A handpay receipt, and a redeemed ticket: their validation records.
            Exception::HandpayValidated | Exception::TicketTransferComplete => {
                self.owe(LongPoll::SendEnhancedValidation { function: 0 }, exception);
            }
            // A transfer someone else made: its amounts, type and transaction ID, read only.
            Exception::AftTransferComplete => {
                self.owe(LongPoll::AftInterrogate { index: 0 }, exception);
            }
            Exception::SasProgressiveLevelHit if self.multiple_progressive_wins => {
                self.owe(LongPoll::SendProgressiveWins, exception);
            }
            Exception::SasProgressiveLevelHit => self.owe(LongPoll::SendProgressiveWin, exception),
            // With RTE the 7C frame carries the award already.
            Exception::LegacyBonusAwarded if !with_data => {
                self.owe(LongPoll::SendLegacyBonusWin, exception);
            }
            _ => {}
        }
        if exception.requires_resync() {
            self.events.push_back(SessionEvent::ResyncRequired(exception));
            let resync = [
                LongPoll::SendMeters,
                LongPoll::SendMeters10To15,
                LongPoll::SendMachineInfo,
                LongPoll::SendVersionAndSerial,
            ];
            for poll in resync.into_iter().rev() {
                self.owe(poll, exception);
            }
        }
    }

    /// Puts a follow-up poll first, unless the machine does not support it; an equal poll
    /// already queued moves rather than doubles.
    fn queue_front(&mut self, poll: LongPoll) {
        if self.refuses(&poll) {
            return;
        }
        self.queue.retain(|queued| *queued != poll);
        self.queue.push_front(poll);
    }

    // === Link state ===

    fn link_answered(&mut self) {
        let was_failing = self.consecutive_failures > 0;
        self.consecutive_failures = 0;
        self.previous_answered = true;
        let was_down = self.link != LinkState::Up;
        if was_down {
            self.link = LinkState::Up;
            self.events.push_back(SessionEvent::LinkUp);
        }
        // A machine that was down, or stopped answering for a while, may have lost its RTE
        // setting with its power (§6). Until it is back on, the machine answers long polls even
        // with reports pending (with RTE on, a pending event pre-empts them, §4.4), so a meter
        // snapshot would count play whose reports come after it, and those reports lose their
        // amounts. Turn RTE on before anything else, the next general poll included.
        if (was_down || was_failing) && self.rte_wanted {
            self.queue_front(LongPoll::RealTimeEventReporting(true));
            self.general_turn = false;
        }
    }

    /// The machine declared a loop break. Whatever was on the line will not be answered; a long
    /// poll in progress goes back to the front of the queue, unacknowledged and untried.
    fn chirp(&mut self) {
        self.stats.chirps += 1;
        self.ack_in_doubt = true;
        self.events.push_back(SessionEvent::Chirp);
        let abandoned = [
            self.exchange.take().map(|e| {
                self.stats.skipped_bytes += skipped(&e);
                e.planned
            }),
            self.retry.take().map(|e| e.planned),
            self.staged.take(),
            self.repeat.take(),
        ];
        for planned in abandoned.into_iter().flatten().rev() {
            if let HostMessage::LongPoll(_, poll) = planned.message {
                self.queue.retain(|queued| *queued != poll);
                self.queue.push_front(poll);
            }
        }
        self.needs_sync = true;
        self.previous_answered = false;
        self.rte_on = false;
        if self.link == LinkState::Up {
            self.link = LinkState::Down;
            self.events.push_back(SessionEvent::LinkDown);
        }
    }
}

/// The part of a message that machines compare to detect an implied NACK (§4.2): the general-poll
/// byte, or the address and command bytes of a long poll.
fn identity(bytes: &[u8]) -> &[u8] {
    bytes.get(..2).unwrap_or(bytes)
}

/// Bytes the decoder slid past or left unread when the exchange ended.
fn skipped(exchange: &Exchange) -> u64 {
    let count = exchange.decoder.skipped() + exchange.decoder.buffered().len();
    u64::try_from(count).unwrap_or(u64::MAX)
}

/// The command byte an unexpected reply echoes, for the error report.
fn echoed_command(reply: &Reply, address: Address) -> u8 {
    reply.encode(address).ok().and_then(|bytes| bytes.get(1).copied()).unwrap_or_default()
}
