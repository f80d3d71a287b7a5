//! `slotgate probe --line L --address N`: the diagnosis a field technician runs in front of a
//! machine. Which 9th-bit method the line uses, whether the machine answers the sync and general
//! polls, its identity (LP 54), game (LP 1F) and meters (LP 1C), reply times, CRC errors,
//! retries and silences, which addresses chirp on the line, and a plain verdict.
//!
//! This module is the sans-IO part, in the session's style ([`HostSession`]'s
//! `poll_transmit`/`handle_input`/`handle_timeout`/`poll_timeout`): a fixed script of exchanges
//! fed with characters and time, built on the codec ([`ReplyDecoder`]). `driver` gives it a line:
//! released by a running daemon over the admin socket, or opened directly.
//!
//! # The probe never makes a machine forget a report
//!
//! A machine drops a reported exception on the next message that is not the same poll (an
//! implied ACK, sas-protocol.md §4.2), and nothing the probe reads reaches the journal. So:
//! - the long polls (LP 54, 1F, 1C, only [`AllowedPoll`] reads, never a money-moving poll: R22)
//!   come before the general polls, so a machine with events queued still shows who it is;
//! - when an answer carries a report (a real exception, an RTE event overriding a long poll, a
//!   ROM signature), the probe repeats that same message until the third transmission, the final
//!   NACK after which the machine keeps the report queued and stops offering it (§4.2), and then
//!   sends nothing more: the daemon reads the report later (a machine that answers even the
//!   final NACK gets a loop break of silence, after which it no longer waits for an ACK);
//! - with the daemon stopped while its line's last exchange was unconfirmed (the in-flight
//!   record, [`crate::poller::inflight`]), the probe first stays silent for a loop break (5 s),
//!   after which the machine no longer takes the next message as an ACK of that exchange, so the
//!   restarted daemon reads its report again.
//!
//! [`HostSession`]: firmware_protocols::sas::session::HostSession

mod driver;

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use firmware_protocols::DecodeError;
use firmware_protocols::profile::Timing;
use firmware_protocols::sas::codec::{Expect, ReplyDecoder};
use firmware_protocols::sas::message::{
    BasicMeters, HostMessage, MachineInfo, Reply, VersionAndSerial,
};
use firmware_protocols::sas::session::CHARACTER_TIME;
use firmware_protocols::sas::{Address, Character};
use serde::Serialize;

use crate::poller::AllowedPoll;

pub use driver::{Outcome, ProbeArgs, run};

/// The reads the probe asks for, in order (never a poll that moves money, R22).
pub const READS: [AllowedPoll; 3] =
    [AllowedPoll::VersionAndSerial, AllowedPoll::MachineInfo, AllowedPoll::Meters];

/// Transmissions of one message that make the final NACK (sas-protocol.md §4.2).
const FINAL_NACK_TRANSMISSIONS: u8 = 3;
/// A machine that sees no address byte this long declares a loop break: it chirps and loses
/// sync (sas-protocol.md §4.1).
pub const LOOP_BREAK: Duration = Duration::from_secs(5);
/// Interval between chirps.
const CHIRP_INTERVAL: Duration = Duration::from_millis(200);
/// Silence before the first poll when nothing needs a loop break: one chirp interval and a
/// margin, enough to hear machines that are chirping already.
pub const FIRST_LISTEN: Duration = Duration::from_millis(450);
/// The probe waits this long for a reply's first byte even when the profile allows less: a late
/// answer is reported as late, not as silence, because that is what a technician needs to know
/// (a buffering USB adapter or device server).
const PROBE_REPLY_WINDOW: Duration = Duration::from_millis(150);
/// Longest message the probe sends and reply it expects, for the reply deadline: LP 54 at its
/// longest (`addr 54 len` + 3 version + 40 serial + CRC).
const LONGEST_REPLY: u32 = 48;
/// Width of the human output.
const COLUMNS: usize = 100;
/// Most distinct unsolicited bytes kept for the report.
const MAX_UNSOLICITED: usize = 16;

/// What the probe is told before it starts.
#[derive(Debug, Clone)]
pub struct Plan {
    pub address: Address,
    /// The line's firmware profile timing.
    pub timing: Timing,
    /// Sync-and-general-poll rounds after the reads.
    pub rounds: u32,
    /// Silence before the first transmission: [`FIRST_LISTEN`], or a loop break and a chirp when
    /// the line's last exchange may be unacknowledged.
    pub first_listen: Duration,
}

/// One step of the script.
#[derive(Debug, Clone)]
enum Step {
    Listen(Duration),
    Send(HostMessage),
    /// Listen for chirps only if nothing has answered: a loop break and two chirps.
    ListenIfSilent,
}

#[derive(Debug)]
enum Current {
    Listening { until: Instant },
    Exchanging(Box<Exchange>),
}

#[derive(Debug)]
struct Exchange {
    message: HostMessage,
    bytes: Vec<u8>,
    /// Transmissions of this message so far, this one included.
    tries: u8,
    sent_at: Instant,
    reply_by: Instant,
    first_byte_at: Option<Instant>,
    last_byte_at: Option<Instant>,
    decoder: ReplyDecoder,
    /// The message is repeated only to NACK a report out (module doc); its answers are ignored.
    nacking: bool,
}

/// How one try ended.
enum TryOutcome {
    Answer(Reply),
    Silent,
    Corrupt(DecodeError),
}

/// The probe's sans-IO state machine. See the module documentation.
#[derive(Debug)]
pub struct Probe {
    address: Address,
    timing: Timing,
    steps: VecDeque<Step>,
    current: Option<Current>,
    next_due: Instant,
    /// The message to send before the next step: a retry or a NACK (tries so far, nacking).
    again: Option<(HostMessage, Vec<u8>, u8, bool)>,
    findings: Findings,
}

/// What the probe found: the JSON report's `findings`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Findings {
    /// `80` sync polls sent.
    pub sync_polls: u64,
    pub general_polls: GeneralPolls,
    /// LP 54: the SAS version and serial number.
    pub version: Option<Version>,
    /// LP 1F: the game.
    pub game: Option<Game>,
    /// LP 1C: the basic meters, in accounting credits except the counts.
    pub meters: Option<BasicMeters>,
    /// Reads that got no usable answer, e.g. `"LP 54: no answer"`.
    pub failed_reads: Vec<String>,
    /// A report the machine offered and the probe left queued for the daemon (module doc).
    pub report_left_queued: Option<String>,
    /// Addresses heard chirping (address byte with the wakeup bit).
    pub chirps_from: BTreeSet<u8>,
    /// Bytes that arrived while nothing was polled, on a line that cannot see the 9th bit
    /// (there chirps are plain address bytes).
    pub unsolicited_bytes: BTreeSet<u8>,
    pub counters: Counters,
    /// Time from a poll having been sent to the first byte of its answer, in milliseconds.
    pub reply_ms: Option<ReplyTimes>,
    /// Every reply time, in order.
    #[serde(skip)]
    reply_times: Vec<Duration>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct GeneralPolls {
    pub sent: u64,
    pub answered: u64,
    /// The last exception name the machine answered with (`NoActivity` when idle).
    pub last_answer: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Version {
    /// "6.02".
    pub sas_version: String,
    pub serial: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Game {
    pub game_id: String,
    pub additional_id: String,
    pub paytable_id: String,
    /// SAS denomination code of the accounting denomination.
    pub denomination_code: u8,
    /// "96.00".
    pub base_percentage: String,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counters {
    /// Transmissions of polls that expect an answer, retries included.
    pub tries: u64,
    /// Transmissions that repeated the previous message (implied NACKs).
    pub retries: u64,
    /// Tries that got no byte within the reply window.
    pub no_answers: u64,
    /// Answers rejected for a bad CRC.
    pub crc_errors: u64,
    /// Answers rejected for any other reason (truncated, wrong echo, garbage).
    pub other_errors: u64,
    /// Answers after the profile's reply window (still accepted by the probe).
    pub late_answers: u64,
    pub busy: u64,
    pub nacks: u64,
    /// Valid answers of any kind.
    pub answers: u64,
    /// Bytes dropped from the line before a poll (late answers, noise).
    pub stale_bytes: u64,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct ReplyTimes {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub samples: usize,
}

impl Probe {
    /// A probe starting at `now`: it listens first, then runs its script.
    pub fn new(plan: &Plan, now: Instant) -> Self {
        let mut steps = VecDeque::new();
        steps.push_back(Step::Listen(plan.first_listen));
        steps.push_back(Step::Send(HostMessage::SyncPoll));
        for read in READS {
            steps.push_back(Step::Send(HostMessage::LongPoll(plan.address, read.long_poll())));
        }
        for _ in 0..plan.rounds.max(1) {
            steps.push_back(Step::Send(HostMessage::SyncPoll));
            steps.push_back(Step::Send(HostMessage::GeneralPoll(plan.address)));
        }
        steps.push_back(Step::ListenIfSilent);
        Self {
            address: plan.address,
            timing: plan.timing,
            steps,
            current: None,
            next_due: now,
            again: None,
            findings: Findings::default(),
        }
    }

    /// What was found so far, with the reply-time summary.
    pub fn findings(&self) -> Findings {
        let mut findings = self.findings.clone();
        findings.reply_ms = ReplyTimes::of(&findings.reply_times);
        findings
    }

    /// The longest the script can take under `plan`: every try of every message silent or busy,
    /// and the closing listen for chirps. The driver asks the daemon for the line this long.
    pub fn longest(plan: &Plan) -> Duration {
        let timing = &plan.timing;
        let per_try = timing.poll_spacing.max(reply_window(timing)) + timing.busy_backoff;
        let messages = u32::try_from(READS.len())
            .unwrap_or(u32::MAX)
            .saturating_add(plan.rounds.max(1).saturating_mul(2))
            .saturating_add(1);
        plan.first_listen
            + per_try.saturating_mul(messages.saturating_mul(u32::from(timing.tries.max(1))))
            + LOOP_BREAK
            + CHIRP_INTERVAL * 2
    }

    /// Whether the script has run to its end.
    pub fn is_done(&self) -> bool {
        self.current.is_none() && self.again.is_none() && self.steps.is_empty()
    }

    /// The next message to send at `now`, if one is due. Call [`Self::sent`] once it is out.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<Character>> {
        if self.current.is_some() || now < self.next_due {
            return None;
        }
        if let Some((message, bytes, tries, nacking)) = self.again.take() {
            return Some(self.send(now, message, bytes, tries, nacking));
        }
        loop {
            match self.steps.pop_front()? {
                Step::Listen(time) => {
                    self.current = Some(Current::Listening { until: now + time });
                    return None;
                }
                Step::ListenIfSilent if self.findings.counters.answers == 0 => {
                    // A machine chirps once nothing has polled it for a loop break; two
                    // chirp intervals make sure one falls inside.
                    let until = now + LOOP_BREAK + CHIRP_INTERVAL * 2;
                    self.current = Some(Current::Listening { until });
                    return None;
                }
                Step::ListenIfSilent => {}
                Step::Send(message) => match message.encode() {
                    Ok(bytes) => return Some(self.send(now, message, bytes, 1, false)),
                    // The script's messages all encode; a failure is a failed read.
                    Err(error) => self.findings.failed_reads.push(format!("{message:?}: {error}")),
                },
            }
        }
    }

    /// The message returned by [`Self::poll_transmit`] left at `now` (a serial line returns once
    /// it is on the wire): the reply window starts here.
    pub fn sent(&mut self, now: Instant) {
        if let Some(Current::Exchanging(exchange)) = &mut self.current {
            exchange.sent_at = now;
            exchange.reply_by = now + reply_window(&self.timing);
        }
    }

    /// Input dropped from the line before a poll (a late answer, noise).
    pub fn discarded(&mut self, bytes: u64) {
        self.findings.counters.stale_bytes += bytes;
    }

    /// When [`Self::handle_timeout`] or [`Self::poll_transmit`] next has something to do;
    /// `None` once the probe is done.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.current {
            Some(Current::Listening { until }) => Some(*until),
            Some(Current::Exchanging(exchange)) => Some(self.settle_at(exchange)),
            None if self.steps.is_empty() && self.again.is_none() => None,
            None => Some(self.next_due),
        }
    }

    /// Ends a listening step or settles an exchange whose time is up.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.current.take() {
            Some(Current::Listening { until }) if now < until => {
                self.current = Some(Current::Listening { until });
            }
            Some(Current::Listening { .. }) => self.next_due = self.next_due.max(now),
            Some(Current::Exchanging(mut exchange)) => {
                if now < self.settle_at(&exchange) {
                    self.current = Some(Current::Exchanging(exchange));
                    return;
                }
                let outcome = match exchange.last_byte_at {
                    None => TryOutcome::Silent,
                    Some(_) => match exchange.decoder.decode(true) {
                        Ok(Some(reply)) => TryOutcome::Answer(reply),
                        Err(error) => TryOutcome::Corrupt(error),
                        Ok(None) => TryOutcome::Corrupt(DecodeError::LostSync {
                            skipped: exchange.decoder.skipped(),
                        }),
                    },
                };
                self.conclude(now, *exchange, outcome);
            }
            None => {}
        }
    }

    /// Feeds characters received at `now`.
    pub fn handle_input(&mut self, now: Instant, input: &[Character]) {
        for character in input {
            if character.wakeup {
                // Machines set the wakeup bit on nothing but a chirp (§1.1).
                self.heard_chirp(now, character.byte);
                continue;
            }
            let Some(Current::Exchanging(exchange)) = self.current.as_mut() else {
                if self.findings.unsolicited_bytes.len() < MAX_UNSOLICITED {
                    self.findings.unsolicited_bytes.insert(character.byte);
                }
                continue;
            };
            exchange.last_byte_at = Some(now);
            if matches!(exchange.message, HostMessage::SyncPoll) {
                // Nobody answers the sync poll; a byte here is noise or a late answer.
                self.findings.counters.other_errors += 1;
                continue;
            }
            exchange.first_byte_at.get_or_insert(now);
            exchange.decoder.push(character.byte);
            let outcome = match exchange.decoder.decode(false) {
                Ok(None) => continue,
                Ok(Some(reply)) => TryOutcome::Answer(reply),
                Err(error) => TryOutcome::Corrupt(error),
            };
            if let Some(Current::Exchanging(exchange)) = self.current.take() {
                self.conclude(now, *exchange, outcome);
            }
        }
    }

    fn heard_chirp(&mut self, now: Instant, byte: u8) {
        self.findings.chirps_from.insert(byte & 0x7F);
        // While listening for chirps, one more chirp interval catches the other chirping
        // machines; then the probe may end.
        if let Some(Current::Listening { until }) = &mut self.current
            && self.steps.is_empty()
        {
            *until = (*until).min(now + CHIRP_INTERVAL + CHIRP_INTERVAL / 2);
        }
    }

    fn settle_at(&self, exchange: &Exchange) -> Instant {
        let idle = exchange.last_byte_at.map(|t| t + self.timing.inter_byte_limit);
        match (&exchange.message, idle) {
            // Nothing answers the sync poll: its whole window passes.
            (HostMessage::SyncPoll, Some(idle)) => idle.max(exchange.reply_by),
            (_, Some(idle)) => idle,
            (_, None) => exchange.reply_by,
        }
    }

    fn send(
        &mut self,
        now: Instant,
        message: HostMessage,
        bytes: Vec<u8>,
        tries: u8,
        nacking: bool,
    ) -> Vec<Character> {
        if matches!(message, HostMessage::SyncPoll) {
            self.findings.sync_polls += 1;
        } else {
            self.findings.counters.tries += 1;
            self.findings.counters.retries += u64::from(tries > 1);
            if matches!(message, HostMessage::GeneralPoll(_)) && tries == 1 {
                self.findings.general_polls.sent += 1;
            }
            // SAS: at most one poll to a machine every `poll_spacing` (§4.1).
            self.next_due = now + self.timing.poll_spacing;
        }
        let characters =
            bytes.iter().enumerate().map(|(i, &byte)| Character { byte, wakeup: i == 0 }).collect();
        let decoder = ReplyDecoder::new(self.address, Expect::for_message(&message), false);
        self.current = Some(Current::Exchanging(Box::new(Exchange {
            message,
            bytes,
            tries,
            sent_at: now,
            reply_by: now + reply_window(&self.timing),
            first_byte_at: None,
            last_byte_at: None,
            decoder,
            nacking,
        })));
        characters
    }

    fn conclude(&mut self, now: Instant, exchange: Exchange, outcome: TryOutcome) {
        if matches!(exchange.message, HostMessage::SyncPoll) {
            self.next_due = self.next_due.max(now);
            return;
        }
        if exchange.nacking {
            let answered = exchange.last_byte_at.is_some();
            if answered && exchange.tries >= FINAL_NACK_TRANSMISSIONS {
                // MON answers the final NACK with silence. A machine that offers the report
                // even then still waits for its ACK, which the next message (the daemon's)
                // would be: a loop break of silence makes it drop the pending report and keep
                // it queued (§4.1, §4.3).
                self.steps.clear();
                self.steps.push_back(Step::Listen(LOOP_BREAK + CHIRP_INTERVAL * 2));
                return;
            }
            return self.nack_out(exchange);
        }
        let counters = &mut self.findings.counters;
        match outcome {
            TryOutcome::Answer(reply) => {
                counters.answers += 1;
                if let Some(first) = exchange.first_byte_at {
                    let time = first.saturating_duration_since(exchange.sent_at);
                    if time > self.timing.reply_timeout {
                        counters.late_answers += 1;
                    }
                    self.findings.reply_times.push(time);
                }
                self.answered(now, exchange, reply);
            }
            TryOutcome::Silent => {
                counters.no_answers += 1;
                self.failed_try(exchange, "no answer".to_owned());
            }
            TryOutcome::Corrupt(error) => {
                if matches!(error, DecodeError::BadCrc { .. }) {
                    counters.crc_errors += 1;
                } else {
                    counters.other_errors += 1;
                }
                self.failed_try(exchange, format!("corrupt answer: {error}"));
            }
        }
    }

    fn answered(&mut self, now: Instant, exchange: Exchange, reply: Reply) {
        let report = match (&exchange.message, reply) {
            (_, Reply::Busy) => {
                self.findings.counters.busy += 1;
                self.next_due = self.next_due.max(now + self.timing.busy_backoff);
                return self.failed_try(exchange, "busy".to_owned());
            }
            (_, Reply::Nack) => {
                self.findings.counters.nacks += 1;
                return self.failed_try(exchange, "NACK".to_owned());
            }
            (HostMessage::GeneralPoll(_), Reply::Exception(exception)) if exception.is_idle() => {
                let polls = &mut self.findings.general_polls;
                polls.answered += 1;
                polls.last_answer = Some(exception.name().to_owned());
                None
            }
            (_, Reply::Event(event)) if event.exception().is_idle() => {
                let polls = &mut self.findings.general_polls;
                polls.answered +=
                    u64::from(matches!(exchange.message, HostMessage::GeneralPoll(_)));
                polls.last_answer = Some(event.exception().name().to_owned());
                None
            }
            (_, Reply::Exception(exception)) => {
                Some(format!("exception {:02X} ({})", exception.code(), exception.name()))
            }
            (_, Reply::Event(event)) => {
                let exception = event.exception();
                Some(format!("RTE event {:02X} ({})", exception.code(), exception.name()))
            }
            (_, Reply::RomSignature(_)) => Some("a ROM signature".to_owned()),
            (_, Reply::VersionAndSerial(v)) => {
                self.findings.version = Some(version(&v));
                None
            }
            (_, Reply::MachineInfo(info)) => {
                self.findings.game = Some(game(&info));
                None
            }
            (_, Reply::Meters(m)) => {
                self.findings.meters = Some(m);
                None
            }
            (_, _) => None,
        };
        if let Some(report) = report {
            if matches!(exchange.message, HostMessage::GeneralPoll(_)) {
                self.findings.general_polls.answered += 1;
                self.findings.general_polls.last_answer = Some(report.clone());
            } else {
                self.read_failed(&exchange.message, "overridden by a pending event".to_owned());
            }
            self.findings.report_left_queued = Some(report);
            self.nack_out(exchange);
        }
    }

    /// Repeats the message until the final NACK, then ends the script (module doc).
    fn nack_out(&mut self, exchange: Exchange) {
        self.steps.clear();
        if exchange.tries < FINAL_NACK_TRANSMISSIONS {
            self.again = Some((exchange.message, exchange.bytes, exchange.tries + 1, true));
        }
    }

    /// Retries identically while tries remain (an implied NACK), else moves on.
    fn failed_try(&mut self, exchange: Exchange, why: String) {
        if exchange.tries < self.timing.tries.max(1) {
            self.again = Some((exchange.message, exchange.bytes, exchange.tries + 1, false));
            return;
        }
        if matches!(exchange.message, HostMessage::LongPoll(..)) {
            self.read_failed(&exchange.message, why);
            if self.findings.counters.answers == 0 {
                // Nothing answers: the general polls say more, sooner, than the other reads.
                self.steps.retain(|s| !matches!(s, Step::Send(HostMessage::LongPoll(..))));
            }
        }
    }

    fn read_failed(&mut self, message: &HostMessage, why: String) {
        if let HostMessage::LongPoll(_, poll) = message {
            self.findings.failed_reads.push(format!("LP {:02X}: {why}", poll.command()));
        }
    }
}

/// How long after a message has left its answer may start: the profile's window widened to
/// [`PROBE_REPLY_WINDOW`], plus the longest answer's own transmission time (a buffering device
/// server hands a frame over whole).
fn reply_window(timing: &Timing) -> Duration {
    timing.reply_timeout.max(PROBE_REPLY_WINDOW) + CHARACTER_TIME * LONGEST_REPLY
}

fn ascii(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim_end_matches(['\0', ' ']).to_owned()
}

fn version(v: &VersionAndSerial) -> Version {
    let [a, b, c] = v.version;
    Version {
        sas_version: format!("{}.{}{}", char::from(a), char::from(b), char::from(c)),
        serial: ascii(&v.serial),
    }
}

fn game(info: &MachineInfo) -> Game {
    let p = info.base_percentage;
    Game {
        game_id: ascii(&info.game_id),
        additional_id: ascii(&info.additional_id),
        paytable_id: ascii(&info.paytable_id),
        denomination_code: info.denomination,
        base_percentage: format!("{}.{}", ascii(&p[..2]), ascii(&p[2..])),
    }
}

impl ReplyTimes {
    fn of(times: &[Duration]) -> Option<Self> {
        let mut micros: Vec<u128> = times.iter().map(Duration::as_micros).collect();
        micros.sort_unstable();
        let ms = |us: u128| us as f64 / 1000.0;
        let (&min, &max) = (micros.first()?, micros.last()?);
        let middle = micros.len() / 2;
        let upper = micros.get(middle).copied().unwrap_or(max);
        let median = match middle.checked_sub(1).and_then(|i| micros.get(i)) {
            Some(&lower) if micros.len().is_multiple_of(2) => (lower + upper) / 2,
            _ => upper,
        };
        Some(Self { min: ms(min), median: ms(median), max: ms(max), samples: micros.len() })
    }
}

// === Report ===

/// Everything `slotgate probe` prints: the JSON of `--json`, and the source of the human form.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub line: String,
    pub address: u8,
    /// The port as opened: `tcp host:port` or `serial /dev/…`.
    pub transport: String,
    pub wakeup: Wakeup,
    /// `released` (the running daemon gave the line to the probe) or `not_running`.
    pub daemon: &'static str,
    /// Silence kept before the first poll, in milliseconds (module doc).
    pub first_listen_ms: u64,
    pub findings: Findings,
    pub verdict: Verdict,
}

/// The 9th-bit method in use on the line, as the transport negotiated it.
#[derive(Debug, Clone, Serialize)]
pub struct Wakeup {
    pub method: String,
    /// Whether received characters carry the wakeup bit, i.e. whether chirps can be seen.
    pub sees_chirps: bool,
    /// Why the line uses another method than configured (the driver refused sticky parity).
    pub fallback: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: VerdictKind,
    pub text: String,
}

/// Alphabetical.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    /// The machine answered and nothing it sent was corrupt.
    Answers,
    /// The machine answered, and some answers were corrupt.
    AnswersWithErrors,
    /// Something answered, but never a valid answer.
    CorruptOnly,
    /// Nothing answered at the address.
    NoAnswer,
}

impl VerdictKind {
    /// Whether the machine gave at least one valid answer (exit status 0).
    pub fn answered(self) -> bool {
        matches!(self, Self::Answers | Self::AnswersWithErrors)
    }
}

/// The plain verdict a technician acts on.
pub fn verdict(address: u8, findings: &Findings, sees_chirps: bool) -> Verdict {
    let c = &findings.counters;
    let corrupt = c.crc_errors + c.other_errors;
    if c.answers == 0 && corrupt > 0 {
        return Verdict {
            outcome: VerdictKind::CorruptOnly,
            text: format!(
                "only corrupt answers at address {address} ({} CRC errors): check cable, baud \
                 rate and 9th-bit wiring",
                c.crc_errors
            ),
        };
    }
    if c.answers == 0 {
        let others: Vec<String> =
            findings.chirps_from.iter().filter(|&&a| a != address).map(u8::to_string).collect();
        let line = if !others.is_empty() {
            let s = if others.len() == 1 { "" } else { "es" };
            format!("the line carries chirps from address{s} {}", others.join(", "))
        } else if findings.chirps_from.contains(&address) {
            format!("address {address} chirps but does not answer polls")
        } else if sees_chirps {
            "no machine chirps on the line".to_owned()
        } else if findings.unsolicited_bytes.is_empty() {
            "this line cannot see chirps (no 9th bit)".to_owned()
        } else {
            let bytes: Vec<String> =
                findings.unsolicited_bytes.iter().map(|b| format!("{b:02X}")).collect();
            format!("unpolled bytes {} on the line (chirps? no 9th bit here)", bytes.join(" "))
        };
        return Verdict {
            outcome: VerdictKind::NoAnswer,
            text: format!("no answer at address {address}: check cable and address; {line}"),
        };
    }
    let mut what = Vec::new();
    if let Some(v) = &findings.version {
        what.push(format!("SAS {}", v.sas_version));
    }
    if let Some(g) = &findings.game {
        what.push(format!("game ID {}", g.game_id));
    }
    let s = if c.crc_errors == 1 { "" } else { "s" };
    what.push(format!("{} CRC error{s}", c.crc_errors));
    let (outcome, mut text) = if corrupt == 0 {
        (VerdictKind::Answers, format!("machine at address {address} answers: {}", what.join(", ")))
    } else {
        let text = format!(
            "machine at address {address} answers with errors: {}, {} other; check cable, baud \
             rate and 9th-bit wiring",
            what.join(", "),
            c.other_errors
        );
        (VerdictKind::AnswersWithErrors, text)
    };
    if c.late_answers > 0 {
        text.push_str(&format!("; {} late", c.late_answers));
    }
    if findings.report_left_queued.is_some() {
        text.push_str("; events left queued");
    }
    Verdict { outcome, text }
}

/// The human form: one finding per line, at most 100 columns.
pub fn write_human(out: &mut impl std::io::Write, r: &Report) -> std::io::Result<()> {
    let f = &r.findings;
    let c = &f.counters;
    let daemon = match r.daemon {
        "released" => "released by the running daemon",
        _ => "daemon not running",
    };
    writeln!(out, "probe         line {}, address {} ({daemon})", r.line, r.address)?;
    writeln!(out, "transport     {}", r.transport)?;
    let sees = if r.wakeup.sees_chirps { "chirps visible" } else { "chirps invisible" };
    writeln!(out, "9th bit       {}; {sees}", r.wakeup.method)?;
    if let Some(fallback) = &r.wakeup.fallback {
        writeln!(out, "              fallback: {fallback}")?;
    }
    let chirps = if f.chirps_from.is_empty() {
        "none".to_owned()
    } else {
        f.chirps_from.iter().map(u8::to_string).collect::<Vec<_>>().join(", ")
    };
    writeln!(out, "listen        {} ms before polling; chirps from: {chirps}", r.first_listen_ms)?;
    if !f.unsolicited_bytes.is_empty() {
        let bytes: Vec<String> = f.unsolicited_bytes.iter().map(|b| format!("{b:02X}")).collect();
        writeln!(out, "unpolled      bytes {}", bytes.join(" "))?;
    }
    writeln!(out, "sync          {} sync polls (80) sent", f.sync_polls)?;
    let read = |command: u8| {
        let prefix = format!("LP {command:02X}: ");
        f.failed_reads
            .iter()
            .find_map(|e| e.strip_prefix(&prefix).map(str::to_owned))
            .unwrap_or_else(|| "not read".to_owned())
    };
    let version = f.version.as_ref().map(|v| format!("SAS {}, serial {}", v.sas_version, v.serial));
    writeln!(out, "LP 54         {}", version.unwrap_or_else(|| read(0x54)))?;
    let game = f.game.as_ref().map(|g| {
        format!(
            "game ID {}, additional ID {}, paytable {}, denomination code {:02X}, base {} %",
            g.game_id, g.additional_id, g.paytable_id, g.denomination_code, g.base_percentage
        )
    });
    writeln!(out, "LP 1F         {}", game.unwrap_or_else(|| read(0x1F)))?;
    let meters = f.meters.as_ref().map(|m| {
        format!(
            "coin in {}, coin out {}, drop {}, jackpot {}, games {} played, {} won (credits)",
            m.coin_in, m.coin_out, m.drop, m.jackpot, m.games_played, m.games_won
        )
    });
    writeln!(out, "LP 1C         {}", meters.unwrap_or_else(|| read(0x1C)))?;
    let g = &f.general_polls;
    let last = g.last_answer.as_deref().map_or(String::new(), |a| format!(" (last: {a})"));
    writeln!(out, "general poll  {} sent, {} answered{last}", g.sent, g.answered)?;
    if let Some(report) = &f.report_left_queued {
        writeln!(out, "queued        {report}: left unacknowledged for the daemon")?;
    }
    match &f.reply_ms {
        Some(t) => writeln!(
            out,
            "reply time    min {:.1} ms, median {:.1} ms, max {:.1} ms ({} answers)",
            t.min, t.median, t.max, t.samples
        )?,
        None => writeln!(out, "reply time    no answers")?,
    }
    writeln!(
        out,
        "errors        {} CRC, {} other corrupt, {} no answer, {} retries, {} busy, {} NACK, {} late",
        c.crc_errors, c.other_errors, c.no_answers, c.retries, c.busy, c.nacks, c.late_answers
    )?;
    write_wrapped(out, "verdict: ", &r.verdict.text)
}

/// Writes `label` and `text`, wrapped at word boundaries to [`COLUMNS`], continuation lines
/// indented under the text.
fn write_wrapped(out: &mut impl std::io::Write, label: &str, text: &str) -> std::io::Result<()> {
    let indent = " ".repeat(label.chars().count());
    let mut line = label.to_owned();
    let mut empty = true;
    for word in text.split(' ') {
        if !empty && line.chars().count() + 1 + word.chars().count() > COLUMNS {
            writeln!(out, "{line}")?;
            line = indent.clone();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    writeln!(out, "{line}")
}

// Sans-IO code under test: any instant will do as its `now`.
#[allow(clippy::disallowed_methods)]
#[cfg(test)]
mod tests;
