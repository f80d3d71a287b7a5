//! The sans-IO model of one slot machine (EGM): it plays games, keeps meters, queues exceptions
//! and answers the host exactly as sas-protocol.md §10 recommends, with faults injected where
//! the configuration asks for them. It never reads a clock and never touches a socket: the
//! caller passes `now` in, feeds it complete host messages ([`Request`]s from the codec's
//! `RequestDecoder`) and sends whatever [`Transmit`]s come back. The same seed and the same
//! sequence of calls give the same machine, byte for byte and ledger line for ledger line.
//!
//! The driving loop, in the manner of quinn-proto:
//! - [`Machine::handle_request`] for every message from the host; it returns the reply, if any;
//! - [`Machine::poll_timeout`] says when [`Machine::handle_timeout`] must run next (game ends,
//!   chirps, handpay resets, injected faults …);
//! - [`Machine::poll_transmit`] yields output nobody asked for (chirps);
//! - [`Machine::drain_ledger`] yields the ground-truth records (see [`super::ledger`]).
//!
//! Behaviours and where the spec wants them:
//! - sync and implied ACK/NACK: [`super::link`] (§4.2, §4.3);
//! - exception FIFO with overflow → 70, priority exceptions first: [`super::queue`] (§4.1, §5);
//! - chirp after 5 s without a poll, every 200 ms, with loss of sync (§4.1);
//! - RTE (LP0E): events as `addr FF …` frames, answering long polls too while events wait
//!   (§4.4, §6);
//! - LP01 shutdown lets a game in progress finish and starts no new one; LP02 re-enables (§8);
//! - unsupported long polls are not answered; a type S poll with a bad CRC is NACKed (§2.3);
//! - power loss queues 18, power-up queues 17, the queue survives, sync must be regained;
//! - RAM clear zeroes every meter, empties the queue and queues 3A;
//! - handpay: 51 (re-issued 15 s after each acknowledgement until LP1B is read), LP1B info,
//!   52 when the attendant resets it (§4.1, §7.2).

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use firmware_protocols::DecodeError;
use firmware_protocols::crc::crc16;
use firmware_protocols::sas::Reply;
use firmware_protocols::sas::codec::Request;
use firmware_protocols::sas::message::{
    AftTransferStatus, BasicMeters, EnabledFeatures, ExtendedMeter, ExtendedMeters, HandpayInfo,
    LastBill, LegacyBonusWin, MachineInfo, MeterPoll, Meters10To15, ProgressiveWin, SelectedMeters,
    TicketDetail, TicketMessage, ValidationRecord, VersionAndSerial,
};
use firmware_protocols::sas::message::{DateTime, command};
use firmware_protocols::sas::{
    Address, Exception, HostMessage, LongPoll, MeterCode, RealTimeEvent,
};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use super::clock::Clock;
use super::config::{
    ConfigError, MachineConfig, Quirk, RomSignatureDelivery, RteIdle, SLOW_BYTES_PAUSE, Validation,
    Weighted, bill_code,
};
use super::games::{Games, credit_ratio};
use super::ledger::{
    Entry, EventData, FaultKind, HandpayKind, LinkState, LossReason, PaidBy, PowerState, Record,
};
use super::link::{Checked, Link, Reported, Target, Verdict, ack_key};
use super::meters::{Meters, on_wire};
use super::queue::{ExceptionQueue, Queued};

/// No poll for this long → loop break: chirp and lose sync (sas-protocol.md §4.1).
pub const CHIRP_AFTER: Duration = Duration::from_secs(5);
/// Interval between chirps.
pub const CHIRP_INTERVAL: Duration = Duration::from_millis(200);
/// Exception 51 is re-issued this long after each acknowledgement until LP1B is read (§4.1).
pub const HANDPAY_REISSUE: Duration = Duration::from_secs(15);
/// How often a machine that cannot act right now (shut down, door open, handpay) checks again.
const RECHECK: Duration = Duration::from_secs(1);
/// Shortest pause between the end of one game and the start of the next.
const MIN_IDLE: Duration = Duration::from_millis(500);
/// An overflow burst is this many exceptions more than the queue holds.
const OVERFLOW_EXTRA: usize = 5;
/// LP6F/AF meter values are sent with 5 BCD bytes (10 digits).
const EXTENDED_METER_BYTES: u8 = 5;
/// SAS version reported by LP54.
const SAS_VERSION: [u8; 3] = *b"602";
/// Validation records the machine keeps for LP4D (SAS buffers 31, indices 01–1F).
const VALIDATION_BUFFER: usize = 31;
/// Validation system ID printed ahead of the 16-digit validation number.
const VALIDATION_SYSTEM_ID: u8 = 1;
/// LP4D validation types (see `ValidationRecord::validation_type`).
const CASHABLE_TICKET_OUT: u8 = 0x00;
const CANCELLED_CREDIT_RECEIPT: u8 = 0x10;
const JACKPOT_RECEIPT: u8 = 0x20;
const CASHABLE_TICKET_REDEEMED: u8 = 0x80;
/// LP72 transfer types: in-house from the cashless system to the machine, and back.
const AFT_TO_MACHINE: u8 = 0x00;
const AFT_TO_HOST: u8 = 0x80;
/// The SAS progressive group this machine's levels belong to.
const PROGRESSIVE_GROUP: u8 = 1;

/// Bytes for the transport to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub bytes: Vec<u8>,
    /// Wakeup bit on the first byte: set only on chirps (§1.1).
    pub wakeup: bool,
    /// Wait this long before the first byte (late-reply fault).
    pub delay: Duration,
    /// Split the bytes with a pause (inter-byte-gap fault).
    pub gap: Option<Gap>,
}

/// A pause inside a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// Bytes sent before the pause.
    pub after: usize,
    pub pause: Duration,
}

/// Machine-level faults a test can inject directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineFault {
    /// Power off now, back on after the configured power-off duration.
    PowerCycle,
    /// Zero the meters and lose the queue (waits until no game or handpay is in progress).
    RamClear,
    /// A burst of exceptions larger than the queue.
    OverflowBurst,
}

#[derive(Debug, Clone)]
struct Game {
    number: u64,
    /// The game played (LP51 numbering, 1 = the first).
    game: u16,
    /// Accounting credits per credit of the game's denomination.
    ratio: u64,
    /// Bet and win in credits of the game's denomination.
    bet: u64,
    win: u64,
    started: Instant,
    started_at: String,
    ends_at: Instant,
}

#[derive(Debug, Clone)]
struct Handpay {
    kind: HandpayKind,
    /// The progressive level of a `Progressive` handpay, else 0.
    level: u8,
    /// The game whose win this is (jackpots).
    game: u16,
    credits: u64,
    reset_at: Instant,
    info_read: bool,
    reissue_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct DeferredSignature {
    ready_at: Instant,
    signature: u16,
}

/// Everything that can fall due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    PowerOn,
    GameEnd,
    GameStart,
    HandpayReset,
    HandpayReissue,
    DoorClose,
    DoorOpen,
    PowerCycle,
    RamClear,
    Overflow,
    AckTimeout,
    Chirp,
}

/// One simulated EGM.
#[derive(Debug)]
pub struct Machine {
    cfg: MachineConfig,
    address: Address,
    credit_minor_units: u64,
    max_bet: u64,
    clock: Clock,
    /// Games, bets, wins, bills, cash-outs: independent of host traffic, so the same seed plays
    /// the same games whatever the host does.
    play_rng: Xoshiro256PlusPlus,
    /// Door events.
    ops_rng: Xoshiro256PlusPlus,
    /// Fault decisions.
    fault_rng: Xoshiro256PlusPlus,
    meters: Meters,
    games: Games,
    /// The game the player has selected.
    current_game: u16,
    queue: ExceptionQueue,
    link: Link,
    rte: bool,
    /// False after LP01 until LP02.
    host_enabled: bool,
    power_off_until: Option<Instant>,
    power_lost_at: Option<Instant>,
    game: Option<Game>,
    next_game_at: Option<Instant>,
    games_started: u64,
    /// 8C was queued since power-up (sas-protocol.md §6: 8C when the game changes).
    game_announced: bool,
    handpay: Option<Handpay>,
    door_open_until: Option<Instant>,
    next_door_at: Option<Instant>,
    rom_signature: Option<DeferredSignature>,
    last_bill: LastBill,
    next_power_cycle: Option<Instant>,
    next_ram_clear: Option<Instant>,
    next_overflow: Option<Instant>,
    last_poll_at: Instant,
    next_chirp_at: Option<Instant>,
    chirping: bool,
    outbox: VecDeque<Transmit>,
    ledger: Vec<Record>,
    ledger_seq: u64,
    exception_seq: u64,
    /// The last RTE report sent, repeated on idle general polls by a [`Quirk::RepeatReport`]
    /// machine.
    last_rte_report: Option<RealTimeEvent>,
    /// Ticket numbers and ticket-in choices: a stream of its own, so that a machine with
    /// validation plays the same games as one without.
    ticket_rng: Xoshiro256PlusPlus,
    /// Validation records, oldest first, with whether LP4D has reported each.
    validation: VecDeque<(ValidationRecord, bool)>,
    validation_index: u8,
    /// The last ticket inserted, for LP70.
    last_ticket_in: Option<TicketDetail>,
    /// AFT, progressive and bonus choices and amounts: a stream of its own, so that a machine
    /// with them plays the same games as one without.
    money_rng: Xoshiro256PlusPlus,
    /// The last AFT transfer and whether an interrogation (LP72) has read it since it
    /// completed: the player's next transfer waits until then, as a machine holds one transfer
    /// at a time.
    aft: Option<(AftTransferStatus, bool)>,
    aft_transactions: u64,
    /// The last SAS progressive hit and whether LP85 has read it; the next hit waits until
    /// then, because LP85 reports only the last.
    progressive: Option<(ProgressiveWin, bool)>,
    /// The last legacy bonus, for LP90.
    last_bonus: LegacyBonusWin,
}

impl Machine {
    /// A machine powered up at `now`, whose wall clock reads `wall` at that instant.
    pub fn new(cfg: MachineConfig, now: Instant, wall: SystemTime) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let address = cfg.sas_address()?;
        let credit_minor_units = cfg.credit_minor_units()?;
        let max_bet = cfg.play.bets.values().max().unwrap_or(1);
        let stream = |n: u64| {
            // Distinct, well-mixed seeds per machine and per stream.
            let mixed = cfg.seed ^ (u64::from(cfg.index) << 32) ^ (n << 56);
            Xoshiro256PlusPlus::seed_from_u64(mixed)
        };
        let mut machine = Self {
            address,
            credit_minor_units,
            max_bet,
            clock: Clock::new(now, wall, cfg.clock_offset_secs),
            play_rng: stream(1),
            ops_rng: stream(2),
            fault_rng: stream(3),
            meters: Meters::starting_at(cfg.initial_meters),
            games: Games::new(&cfg.games, cfg.denomination),
            current_game: 1,
            queue: ExceptionQueue::new(cfg.queue_size),
            link: Link::new(),
            last_rte_report: None,
            rte: cfg.rte_at_power_up,
            host_enabled: true,
            power_off_until: None,
            power_lost_at: None,
            game: None,
            next_game_at: None,
            games_started: 0,
            game_announced: false,
            handpay: None,
            door_open_until: None,
            next_door_at: None,
            rom_signature: None,
            last_bill: LastBill::default(),
            next_power_cycle: None,
            next_ram_clear: None,
            next_overflow: None,
            last_poll_at: now,
            next_chirp_at: None,
            chirping: false,
            outbox: VecDeque::new(),
            ledger: Vec::new(),
            ledger_seq: 0,
            exception_seq: 0,
            ticket_rng: stream(4),
            validation: VecDeque::new(),
            validation_index: 0,
            last_ticket_in: None,
            money_rng: stream(5),
            aft: None,
            aft_transactions: 0,
            progressive: None,
            last_bonus: LegacyBonusWin::default(),
            cfg,
        };
        machine.record(
            now,
            Entry::Start {
                seed: machine.cfg.seed,
                denomination: machine.cfg.denomination,
                credit_minor_units,
                queue_size: machine.cfg.queue_size,
                rte: machine.rte,
                egm_clock_offset_secs: machine.clock.egm_offset_secs(),
                meters: machine.meters.clone(),
            },
        );
        machine.link = machine.fresh_link();
        machine.next_game_at = machine.game_after(now, now);
        machine.next_door_at = after_exponential(
            &mut machine.ops_rng,
            now,
            machine.cfg.operations.door_openings_per_hour,
        );
        machine.schedule_faults(now);
        Ok(machine)
    }

    // === Driving interface ===

    /// Handles one complete message from the host; returns the reply to send, if any.
    pub fn handle_request(&mut self, now: Instant, request: &Request) -> Option<Transmit> {
        self.handle_timeout(now);
        if self.power_off_until.is_some() {
            return None;
        }
        let &first = request.bytes.first()?;
        let target = Target::of(first, self.address.get());
        if target == Target::Own && !self.supports(&request.message) {
            // An unsupported long poll, or one cut short: not a poll at all. The machine stays
            // silent and the message neither acknowledges nor repeats anything (§2.3; MON drops
            // it in its receiver before the implied-ACK check).
            return None;
        }
        self.note_poll(now);
        let key = ack_key(&request.bytes);
        let checked = self.link.check(now, target, &key);
        self.apply_checked(now, &checked);
        match checked.verdict {
            Verdict::Ignore => None,
            Verdict::Resend(bytes) => self.transmit(now, bytes),
            Verdict::Process => match target {
                Target::Global => {
                    self.broadcast(now, &request.message);
                    None
                }
                Target::OtherAddress => None,
                Target::Own => self.own_poll(now, key, &request.message),
            },
        }
    }

    /// Runs everything that fell due up to `now`, each at its own scheduled instant.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, due)) = self.next_due() {
            if at > now {
                break;
            }
            self.fire(at, now, due);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_due().map(|(at, _)| at)
    }

    /// Output that is not a reply (chirps).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    /// Ledger records produced so far, oldest first.
    pub fn drain_ledger(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.ledger)
    }

    /// Injects a machine fault at `now`.
    pub fn inject(&mut self, now: Instant, fault: MachineFault) {
        self.handle_timeout(now);
        match fault {
            MachineFault::PowerCycle => self.power_lost(now),
            MachineFault::RamClear if self.is_idle() => self.ram_clear(now),
            // A RAM clear is an operator action on an idle machine: run it as soon as it is.
            MachineFault::RamClear => self.next_ram_clear = Some(now),
            MachineFault::OverflowBurst => self.overflow_burst(now),
        }
    }

    /// Closes play: the game in progress ends as it would, and no other starts. What the
    /// machine did can then all be reported before it stops (the demo's tally needs that).
    pub fn close_play(&mut self) {
        self.cfg.play.max_games = Some(self.games_started);
        if self.game.is_none() {
            self.next_game_at = None;
        }
    }

    /// Writes the final `stop` record.
    pub fn stop(&mut self, now: Instant) {
        self.handle_timeout(now);
        let entry = Entry::Stop {
            meters: self.meters.clone(),
            queued_exceptions: self.queue.len(),
            game_in_progress: self.game.as_ref().map(|g| g.number),
        };
        self.record(now, entry);
    }

    // === Observation (tests, logs) ===

    /// The SAS address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// The configuration the machine runs with.
    pub fn config(&self) -> &MachineConfig {
        &self.cfg
    }

    /// Current meter values.
    pub fn meters(&self) -> &Meters {
        &self.meters
    }

    /// Number of the game being played, if one is.
    pub fn game_in_progress(&self) -> Option<u64> {
        self.game.as_ref().map(|g| g.number)
    }

    /// Games started since the machine was created.
    pub fn games_started(&self) -> u64 {
        self.games_started
    }

    /// Polls to this machine are being processed.
    pub fn is_synchronised(&self) -> bool {
        self.link.is_synchronised()
    }

    /// Play is allowed by the host (no LP01 in force).
    pub fn is_enabled_by_host(&self) -> bool {
        self.host_enabled
    }

    /// RTE mode is on.
    pub fn rte(&self) -> bool {
        self.rte
    }

    /// Power is on.
    pub fn is_powered(&self) -> bool {
        self.power_off_until.is_none()
    }

    /// Exceptions waiting for the host.
    pub fn queued_exceptions(&self) -> usize {
        self.queue.len()
    }

    /// A handpay waits for the attendant.
    pub fn handpay_pending(&self) -> bool {
        self.handpay.is_some()
    }

    // === Time ===

    fn next_due(&self) -> Option<(Instant, Due)> {
        if let Some(at) = self.power_off_until {
            return Some((at, Due::PowerOn));
        }
        let chirp = self.next_chirp_at.unwrap_or(self.last_poll_at + CHIRP_AFTER);
        [
            self.game.as_ref().map(|g| (g.ends_at, Due::GameEnd)),
            self.handpay.as_ref().map(|h| (h.reset_at, Due::HandpayReset)),
            self.handpay.as_ref().and_then(|h| h.reissue_at).map(|t| (t, Due::HandpayReissue)),
            self.door_open_until.map(|t| (t, Due::DoorClose)),
            self.next_game_at.map(|t| (t, Due::GameStart)),
            self.next_door_at.map(|t| (t, Due::DoorOpen)),
            self.next_power_cycle.map(|t| (t, Due::PowerCycle)),
            self.next_ram_clear.map(|t| (t, Due::RamClear)),
            self.next_overflow.map(|t| (t, Due::Overflow)),
            self.link.ack_deadline().map(|t| (t, Due::AckTimeout)),
            Some((chirp, Due::Chirp)),
        ]
        .into_iter()
        .flatten()
        // `min_by_key` keeps the first of equal instants, so the order above breaks ties.
        .min_by_key(|&(at, _)| at)
    }

    fn fire(&mut self, at: Instant, now: Instant, due: Due) {
        match due {
            Due::PowerOn => self.power_applied(at),
            Due::GameEnd => self.end_game(at),
            Due::GameStart => {
                if self.can_start_game() {
                    self.start_game(at);
                } else {
                    self.next_game_at = Some(at + RECHECK);
                }
            }
            Due::HandpayReset => self.handpay_reset(at),
            Due::HandpayReissue => self.reissue_handpay(at),
            Due::DoorClose => self.close_door(at),
            Due::DoorOpen => {
                if self.game.is_some() || self.door_open_until.is_some() {
                    self.next_door_at = Some(at + RECHECK);
                } else {
                    self.open_door(at);
                }
            }
            Due::PowerCycle => {
                self.next_power_cycle = after_exponential(
                    &mut self.fault_rng,
                    at,
                    self.cfg.faults.power_cycles_per_hour,
                );
                self.power_lost(at);
            }
            Due::RamClear => {
                if self.is_idle() {
                    self.next_ram_clear = after_exponential(
                        &mut self.fault_rng,
                        at,
                        self.cfg.faults.ram_clears_per_hour,
                    );
                    self.ram_clear(at);
                } else {
                    self.next_ram_clear = Some(at + RECHECK);
                }
            }
            Due::Overflow => {
                self.next_overflow =
                    after_exponential(&mut self.fault_rng, at, self.cfg.faults.overflows_per_hour);
                self.overflow_burst(at);
            }
            Due::AckTimeout => {
                let abandoned = self.link.lose_sync();
                self.abandon(abandoned);
                self.record(
                    at,
                    Entry::Link { state: LinkState::SyncLost, reason: "no implied ACK for 30 s" },
                );
            }
            Due::Chirp => self.chirp(at, now),
        }
    }

    fn schedule_faults(&mut self, now: Instant) {
        let f = &self.cfg.faults;
        let (power, ram, overflow) =
            (f.power_cycles_per_hour, f.ram_clears_per_hour, f.overflows_per_hour);
        self.next_power_cycle = after_exponential(&mut self.fault_rng, now, power);
        self.next_ram_clear = after_exponential(&mut self.fault_rng, now, ram);
        self.next_overflow = after_exponential(&mut self.fault_rng, now, overflow);
    }

    // === Link ===

    fn note_poll(&mut self, now: Instant) {
        self.last_poll_at = now;
        self.chirping = false;
        self.next_chirp_at = None;
    }

    fn chirp(&mut self, at: Instant, now: Instant) {
        if !self.chirping {
            self.chirping = true;
            let abandoned = self.link.lose_sync();
            self.abandon(abandoned);
            self.record(at, Entry::Link { state: LinkState::LoopBreak, reason: "no poll for 5 s" });
        }
        // After a long stretch without `handle_timeout` (a test jumping ahead), only the latest
        // chirp is sent: stale ones would be noise, not a loop-break signal.
        let behind = now.saturating_duration_since(at);
        if behind < CHIRP_INTERVAL {
            self.outbox.push_back(Transmit {
                bytes: vec![self.address.get()],
                wakeup: true,
                delay: Duration::ZERO,
                gap: None,
            });
        }
        let missed =
            u32::try_from(behind.as_nanos() / CHIRP_INTERVAL.as_nanos()).unwrap_or(u32::MAX);
        self.next_chirp_at = Some(at + CHIRP_INTERVAL * missed.saturating_add(1));
    }

    fn apply_checked(&mut self, now: Instant, checked: &Checked) {
        if checked.synchronised {
            self.record(
                now,
                Entry::Link { state: LinkState::Synchronised, reason: "first own poll after sync" },
            );
        }
        match checked.acknowledged {
            Some(Reported::Exception { id, code, rte }) => {
                self.queue.acknowledge(id);
                let name = Exception::from_code(code).name();
                self.record(
                    now,
                    Entry::ExceptionAcknowledged { exception_seq: id, code, name, rte },
                );
                if code == Exception::HandpayPending.code()
                    && let Some(h) = self.handpay.as_mut().filter(|h| !h.info_read)
                {
                    h.reissue_at = Some(now + HANDPAY_REISSUE);
                }
            }
            Some(Reported::RomSignature) => self.rom_signature = None,
            Some(Reported::Nothing) | None => {}
        }
        self.abandon(checked.abandoned);
    }

    /// A report the host never acknowledged stays queued; nothing to undo, since dequeuing
    /// happens only on ACK (§4.2). Named so the rule has one place.
    fn abandon(&mut self, _reported: Option<Reported>) {}

    fn transmit(&mut self, now: Instant, mut bytes: Vec<u8>) -> Option<Transmit> {
        let f = self.cfg.faults.clone();
        if self.roll(f.drop_reply) {
            self.record_fault(now, FaultKind::DropReply, format!("reply {} not sent", hex(&bytes)));
            return None;
        }
        // Only replies of three bytes or more carry a CRC (§2.4).
        if bytes.len() >= 3 && self.roll(f.corrupt_crc) {
            let clean = hex(&bytes);
            if let Some(last) = bytes.last_mut() {
                *last ^= 0xFF;
            }
            self.record_fault(
                now,
                FaultKind::CorruptCrc,
                format!("reply {clean} sent as {}", hex(&bytes)),
            );
        }
        let delay = if self.roll(f.late_reply) {
            self.record_fault(
                now,
                FaultKind::LateReply,
                format!("reply {} delayed {:?}", hex(&bytes), f.late_delay),
            );
            f.late_delay
        } else {
            Duration::ZERO
        };
        let gap = if bytes.len() >= 2 && self.has(Quirk::SlowBytes) {
            Some(Gap { after: bytes.len() / 2, pause: SLOW_BYTES_PAUSE })
        } else if bytes.len() >= 2 && self.roll(f.inter_byte_gap) {
            let after = self.fault_rng.random_range(1..bytes.len());
            self.record_fault(
                now,
                FaultKind::InterByteGap,
                format!("reply {} paused {:?} after byte {after}", hex(&bytes), f.gap_delay),
            );
            Some(Gap { after, pause: f.gap_delay })
        } else {
            None
        };
        Some(Transmit { bytes, wakeup: false, delay, gap })
    }

    fn has(&self, quirk: Quirk) -> bool {
        self.cfg.quirks.contains(&quirk)
    }

    /// The link as after power-up: waiting for sync, unless the machine needs none.
    fn fresh_link(&self) -> Link {
        if self.has(Quirk::NoSync) { Link::without_sync() } else { Link::new() }
    }

    fn roll(&mut self, probability: f64) -> bool {
        probability > 0.0 && self.fault_rng.random_bool(probability.min(1.0))
    }

    // === Host messages ===

    fn broadcast(&mut self, now: Instant, message: &Result<HostMessage, DecodeError>) {
        // Of the broadcasts this machine knows, only LP7F is broadcast-capable (§4.4); a
        // broadcast never gets an answer, not even a NACK.
        if let Ok(HostMessage::Broadcast(LongPoll::SetDateTime(t))) = message
            && self.clock.set_egm(now, *t).is_ok()
        {
            self.record_set_clock(now, *t, true);
        }
    }

    fn own_poll(
        &mut self,
        now: Instant,
        key: Vec<u8>,
        message: &Result<HostMessage, DecodeError>,
    ) -> Option<Transmit> {
        if let Ok(HostMessage::GeneralPoll(_)) = message {
            return self.general_poll(now, key);
        }
        // In RTE mode a waiting event (or deferred message) answers any long poll instead; the
        // poll is not executed (§4.4).
        if self.rte && (self.signature_ready(now) || !self.queue.is_empty()) {
            return self.general_poll(now, key);
        }
        let poll = match message {
            Ok(HostMessage::LongPoll(_, poll)) => poll,
            Err(
                DecodeError::BadCrc { .. }
                | DecodeError::InvalidField { .. }
                | DecodeError::BadLength { .. }
                | DecodeError::Bcd { .. },
            ) => {
                // Bad CRC or invalid data: NACK (§2.3). Nothing was executed, so the host's
                // retry must be processed afresh: no implied-ACK bookkeeping.
                return self.transmit(now, vec![self.address.get() | 0x80]);
            }
            _ => return None,
        };
        if self.roll(self.cfg.faults.busy) {
            self.record_fault(
                now,
                FaultKind::Busy,
                format!("long poll {:02X} answered busy", poll.command()),
            );
            // Busy means "not processed, ask later": like a NACK it leaves nothing pending, so
            // the host's retry executes (MON would treat the retry as an implied NACK).
            return self.transmit(now, vec![self.address.get(), 0x00]);
        }
        let reply = self.execute(now, poll)?;
        match reply.encode(self.address) {
            Ok(bytes) => {
                self.link.replied(key, bytes.clone(), Reported::Nothing);
                self.transmit(now, bytes)
            }
            Err(error) => {
                tracing::warn!(machine = self.cfg.index, %error, "Reply could not be encoded.");
                None
            }
        }
    }

    /// Whether this machine treats `message` as a poll at all: not when the codec does not know
    /// it or it was cut short, nor when it belongs to a feature the machine lacks (LP70/71
    /// without validation).
    fn supports(&self, message: &Result<HostMessage, DecodeError>) -> bool {
        match message {
            Err(DecodeError::UnknownCommand { .. } | DecodeError::Truncated { .. }) => false,
            Ok(HostMessage::LongPoll(
                _,
                LongPoll::SendTicketValidationData | LongPoll::RedeemTicket(_),
            )) => self.cfg.validation != Validation::None,
            Ok(HostMessage::LongPoll(_, LongPoll::AftInterrogate { .. })) => {
                self.cfg.play.aft_probability > 0.0
            }
            Ok(HostMessage::LongPoll(_, LongPoll::SendProgressiveWin)) => {
                self.cfg.play.progressive_probability > 0.0
            }
            Ok(HostMessage::LongPoll(_, LongPoll::SendLegacyBonusWin)) => {
                self.cfg.play.bonus_probability > 0.0
            }
            _ => true,
        }
    }

    fn signature_ready(&self, now: Instant) -> bool {
        self.rom_signature.is_some_and(|d| d.ready_at <= now)
    }

    fn general_poll(&mut self, now: Instant, key: Vec<u8>) -> Option<Transmit> {
        let address = self.address;
        let (reply, reported) = match self.rom_signature.filter(|d| d.ready_at <= now) {
            Some(d) => (Reply::RomSignature(d.signature).encode(address), Reported::RomSignature),
            None => match self.queue.peek() {
                Some(q) if self.rte => {
                    self.last_rte_report = Some(q.event.clone());
                    (
                        Reply::Event(q.event.clone()).encode(address),
                        Reported::Exception { id: q.id, code: q.code().code(), rte: true },
                    )
                }
                Some(q) => (
                    Ok(vec![q.legacy.code()]),
                    Reported::Exception { id: q.id, code: q.code().code(), rte: false },
                ),
                None if self.rte
                    && self.has(Quirk::RepeatReport)
                    && let Some(last) = self.last_rte_report.clone() =>
                {
                    (Reply::Event(last).encode(address), Reported::Nothing)
                }
                None if self.rte => match self.cfg.rte_idle {
                    RteIdle::NoActivity => (
                        Reply::Event(RealTimeEvent::Exception(Exception::NoActivity))
                            .encode(address),
                        Reported::Nothing,
                    ),
                    RteIdle::Silent => return None,
                },
                None => (Ok(vec![Exception::NoActivity.code()]), Reported::Nothing),
            },
        };
        match reply {
            Ok(bytes) => {
                self.link.replied(key, bytes.clone(), reported);
                self.transmit(now, bytes)
            }
            Err(error) => {
                tracing::warn!(machine = self.cfg.index, %error, "Event could not be encoded.");
                None
            }
        }
    }

    fn execute(&mut self, now: Instant, poll: &LongPoll) -> Option<Reply> {
        let m = &self.meters;
        let w4 = |v: u64| on_wire(v, 4);
        Some(match poll {
            LongPoll::Shutdown => {
                self.host_enabled = false;
                self.record_command(now, command::SHUTDOWN, "shutdown");
                Reply::Ack
            }
            LongPoll::Startup => {
                self.host_enabled = true;
                self.record_command(now, command::STARTUP, "startup");
                Reply::Ack
            }
            LongPoll::RealTimeEventReporting(on) => {
                self.rte = *on;
                let entry = Entry::Command {
                    command: command::REAL_TIME_EVENT_REPORTING,
                    name: "rte",
                    broadcast: false,
                    rte: Some(*on),
                    date_time: None,
                };
                self.record(now, entry);
                Reply::Ack
            }
            LongPoll::SendMeters10To15 => Reply::Meters10To15(Meters10To15 {
                cancelled_credits: w4(m.cancelled_credits),
                coin_in: w4(m.coin_in),
                coin_out: w4(m.coin_out),
                drop: w4(m.drop()),
                jackpot: w4(m.jackpot),
                games_played: w4(m.games_played),
            }),
            LongPoll::SendMeter(poll) => {
                Reply::Meter { poll: *poll, values: self.fixed_meter(*poll) }
            }
            LongPoll::SendCurrentCredits => Reply::CurrentCredits(w4(m.current_credits)),
            LongPoll::SendHandpayInfo => Reply::HandpayInfo(self.handpay_info()),
            LongPoll::SendMeters => Reply::Meters(BasicMeters {
                coin_in: w4(m.coin_in),
                coin_out: w4(m.coin_out),
                drop: w4(m.drop()),
                jackpot: w4(m.jackpot),
                games_played: w4(m.games_played),
                games_won: w4(m.games_won),
                slot_door_opened: w4(m.slot_door_openings),
                power_resets: w4(m.power_resets),
            }),
            LongPoll::SendMachineInfo => Reply::MachineInfo(self.machine_info()),
            LongPoll::RomSignature { seed } => {
                let signature = self.rom_signature_for(*seed);
                match self.cfg.rom_signature {
                    RomSignatureDelivery::Direct => Reply::RomSignature(signature),
                    RomSignatureDelivery::Deferred => {
                        let ready_at = now + self.cfg.rom_signature_delay;
                        self.rom_signature = Some(DeferredSignature { ready_at, signature });
                        Reply::Ack
                    }
                }
            }
            LongPoll::SendSelectedMeters { game, meters } => {
                let values = meters
                    .iter()
                    .filter_map(|&code| {
                        let meter = MeterCode(code.into());
                        let value = self.meter_of_game(*game, meter)?;
                        Some((code, on_wire(value, meter.lp2f_value_len())))
                    })
                    .collect();
                Reply::SelectedMeters(SelectedMeters { game: *game, meters: values })
            }
            LongPoll::SendLastBill => Reply::LastBill(self.last_bill),
            LongPoll::SendVersionAndSerial => Reply::VersionAndSerial(VersionAndSerial {
                version: SAS_VERSION,
                serial: self.cfg.serial.as_bytes().to_vec(),
            }),
            LongPoll::SendExtendedMeters { alternate, game, meters } => {
                let values = meters
                    .iter()
                    .filter_map(|&code| {
                        let value = self.meter_of_game(*game, code)?;
                        let size = EXTENDED_METER_BYTES;
                        Some(ExtendedMeter { code, size, value: on_wire(value, size.into()) })
                    })
                    .collect();
                Reply::ExtendedMeters(ExtendedMeters {
                    alternate: *alternate,
                    game: *game,
                    meters: values,
                })
            }
            // Only reached with validation on (see `supports`). The validation system redeems
            // tickets off this link, so LP70 shows the last ticket and LP71 finds none pending
            // ("no ticket", FF) [unverified status code].
            LongPoll::SendTicketValidationData => Reply::TicketValidationData(TicketMessage {
                status: if self.last_ticket_in.is_some() { 0x00 } else { 0xFF },
                detail: self.last_ticket_in.clone(),
            }),
            LongPoll::RedeemTicket(_) => {
                Reply::TicketRedemption(TicketMessage { status: 0xFF, detail: None })
            }
            LongPoll::SendNumberOfGames => Reply::NumberOfGames(self.games.count()),
            LongPoll::SendGameConfiguration { game } if self.games.has(*game) => {
                let mut info = self.machine_info();
                info.denomination = self.games.denomination(*game).unwrap_or(info.denomination);
                Reply::GameConfiguration { game: *game, info }
            }
            LongPoll::SendEnabledFeatures { game } if *game == 0 || self.games.has(*game) => {
                let validation = match self.cfg.validation {
                    Validation::None => 0b00,
                    Validation::System => 0b01,
                    Validation::SecureEnhanced => 0b10,
                };
                let redemption = if self.cfg.validation == Validation::None { 0 } else { 0x80 };
                let bonus = if self.cfg.play.bonus_probability > 0.0 { 0x04 } else { 0 };
                let aft = if self.cfg.play.aft_probability > 0.0 { 0x40 } else { 0 };
                // Extended meters (LP6F/AF) always; multi-denomination when a game is played at
                // another denomination than the accounting one; the 40 ms polling rate.
                let multi_denomination = if self.games.multi_denomination() { 0x80 } else { 0 };
                let features =
                    [redemption | validation << 5 | bonus, 0x08 | aft | multi_denomination, 0x01];
                Reply::EnabledFeatures(EnabledFeatures { game: *game, features })
            }
            LongPoll::SendEnhancedValidation { function }
                if self.cfg.validation != Validation::None =>
            {
                Reply::EnhancedValidation(self.validation_record(*function))
            }
            // Only reached with the feature on (see `supports`). Index 0 is the current or most
            // recent transfer, which this read acknowledges; this machine keeps no history.
            LongPoll::AftInterrogate { index } => {
                Reply::AftTransfer(match (index, &mut self.aft) {
                    (0, Some((status, read))) => {
                        *read = true;
                        status.clone()
                    }
                    _ => AftTransferStatus {
                        status: 0xFF,
                        receipt_status: 0xFF,
                        ..Default::default()
                    },
                })
            }
            LongPoll::SendProgressiveWin => Reply::ProgressiveWin(match &mut self.progressive {
                Some((win, read)) => {
                    *read = true;
                    *win
                }
                None => ProgressiveWin::default(),
            }),
            LongPoll::SendLegacyBonusWin => Reply::LegacyBonusWin(self.last_bonus),
            LongPoll::SendDateTime => Reply::DateTime(self.clock.egm_date_time(now)),
            LongPoll::SetDateTime(t) => match self.clock.set_egm(now, *t) {
                Ok(()) => {
                    self.record_set_clock(now, *t, false);
                    Reply::Ack
                }
                // A date that does not exist (31 February): invalid data is NACKed (§2.3).
                Err(_) => Reply::Nack,
            },
            _ => return None,
        })
    }

    /// Meter `code` of game `game` (0: the machine), if the machine keeps it for that game. A
    /// single-game machine's game 1 is the machine.
    fn meter_of_game(&self, game: u16, code: MeterCode) -> Option<u64> {
        if game == 0 {
            return self.meters.value(code);
        }
        if !self.games.has(game) {
            return None;
        }
        match self.games.meters(game) {
            Some(meters) => meters.value(code),
            None => self.meters.value(code),
        }
    }

    fn fixed_meter(&self, poll: MeterPoll) -> Vec<u64> {
        let m = &self.meters;
        let (_, width) = poll.layout();
        let values = match poll {
            MeterPoll::CancelledCredits => vec![m.cancelled_credits],
            MeterPoll::CoinIn => vec![m.coin_in],
            MeterPoll::CoinOut => vec![m.coin_out],
            MeterPoll::Drop => vec![m.drop()],
            MeterPoll::Jackpot => vec![m.jackpot],
            MeterPoll::GamesPlayed => vec![m.games_played],
            MeterPoll::GamesWon => vec![m.games_won],
            MeterPoll::GamesLost => vec![m.games_lost],
            MeterPoll::GamesSincePowerUp => {
                vec![m.games_since_power_up, m.games_since_door_closed]
            }
            MeterPoll::Meters11To15 => {
                vec![m.coin_in, m.coin_out, m.drop(), m.jackpot, m.games_played]
            }
            // Legacy EFT (promo, non-cash, transferred, cashable): this machine has none.
            MeterPoll::LegacyEftMeters => vec![0; 4],
            MeterPoll::BillCounts => m.lp1e_bill_counts(),
        };
        values.into_iter().map(|v| on_wire(v, width)).collect()
    }

    fn handpay_info(&mut self) -> HandpayInfo {
        let Some(h) = self.handpay.as_mut() else { return HandpayInfo::default() };
        h.info_read = true;
        h.reissue_at = None;
        let progressive = h.kind == HandpayKind::Progressive;
        HandpayInfo {
            progressive_group: if progressive { PROGRESSIVE_GROUP } else { 0 },
            // Level 00 = non-progressive win, 80 = cancelled-credits handpay [unverified: SAS
            // 6.02 table 7.8a, as recalled; check against the licensed spec].
            level: match h.kind {
                HandpayKind::Jackpot => 0x00,
                HandpayKind::CancelledCredits => 0x80,
                HandpayKind::Progressive => h.level,
            },
            // A non-progressive handpay is reported in accounting credits; only progressive
            // levels (01–20) are in cents (MON `LP1BSendHandpayInfoHandler`).
            amount: if progressive {
                on_wire(h.credits.saturating_mul(self.credit_minor_units), 5)
            } else {
                on_wire(h.credits, 5)
            },
            partial_pay: 0,
            reset_id: 0,
        }
    }

    fn machine_info(&self) -> MachineInfo {
        let mut base_percentage = [b'0'; 4];
        let text = format!("{:04}", self.cfg.base_percentage());
        base_percentage.copy_from_slice(&text.as_bytes()[..4]);
        MachineInfo {
            game_id: *b"SG",
            additional_id: *b"SIM",
            denomination: self.cfg.denomination,
            max_bet: u8::try_from(self.max_bet).unwrap_or(0xFF),
            progressive_group: 0,
            game_options: 0,
            paytable_id: *b"SIM001",
            base_percentage,
        }
    }

    /// A stand-in for a CRC over the EPROM: CRC-16/KERMIT of the seed and a fixed image built
    /// from the serial number, so different seeds and machines give different signatures.
    fn rom_signature_for(&self, seed: u16) -> u16 {
        let mut image = seed.to_le_bytes().to_vec();
        image.extend_from_slice(b"slotgate simulated EGM ROM ");
        image.extend_from_slice(self.cfg.serial.as_bytes());
        crc16(&image)
    }

    // === Play ===

    fn is_idle(&self) -> bool {
        self.game.is_none() && self.handpay.is_none()
    }

    fn can_start_game(&self) -> bool {
        self.power_off_until.is_none()
            && self.host_enabled
            && self.is_idle()
            && self.door_open_until.is_none()
    }

    fn pick(rng: &mut Xoshiro256PlusPlus, table: &Weighted) -> u64 {
        table.pick(rng.random_range(0..table.total_weight()))
    }

    /// When the next game starts, given the last start and end (or now, for the first game).
    fn game_after(&mut self, last_start: Instant, ended: Instant) -> Option<Instant> {
        let play = &self.cfg.play;
        if play.games_per_minute <= 0.0
            || play.max_games.is_some_and(|max| self.games_started >= max)
        {
            return None;
        }
        let mean = 60.0 / play.games_per_minute;
        let interval =
            Duration::from_secs_f64((mean * self.play_rng.random_range(0.5..1.5)).min(1e9));
        Some((last_start + interval).max(ended + MIN_IDLE))
    }

    fn start_game(&mut self, at: Instant) {
        // On a multi-game machine the player picks a game for each play (only there is a number
        // drawn, so a single-game machine plays the same games for a seed as before).
        let previous = self.current_game;
        if self.games.count() > 1 {
            self.current_game = self.play_rng.random_range(1..=self.games.count());
        }
        // The game is selected before the player funds it, so that the money put in belongs to
        // a game the host knows.
        if !self.game_announced || self.current_game != previous {
            self.game_announced = true;
            let event = RealTimeEvent::GameSelected { game: self.current_game };
            self.raise(at, event, Exception::GameSelected);
        }
        let accounting = self.cfg.denomination;
        let denomination = self.games.denomination(self.current_game).unwrap_or(accounting);
        let ratio = credit_ratio(denomination, accounting).unwrap_or(1);
        let bet = Self::pick(&mut self.play_rng, &self.cfg.play.bets);
        // Meters count accounting credits; the player bets credits of the game's denomination.
        let wagered = bet * ratio;
        self.insert_bills_for(at, wagered);
        let win = bet * Self::pick(&mut self.play_rng, &self.cfg.play.win_multipliers);
        self.games_started += 1;
        self.meters.bet(wagered);
        self.games.bet(self.current_game, wagered);
        // Bit 7 = max bet, low bits = the player denomination code (§6, MON's wager-type byte);
        // bit 6 says it differs from the accounting denomination (a multi-denomination game).
        let max_bet_flag = if bet == self.max_bet { 0x80 } else { 0x00 };
        let multi_denomination = if denomination == accounting { 0x00 } else { 0x40 };
        let event = RealTimeEvent::GameStarted {
            credits_wagered: bet,
            total_coin_in: on_wire(self.meters.coin_in, 4),
            wager_type: max_bet_flag | multi_denomination | (denomination & 0x3F),
            progressive_group: 0,
        };
        self.raise(at, event, Exception::GameStarted);
        self.game = Some(Game {
            number: self.games_started,
            game: self.current_game,
            ratio,
            bet,
            win,
            started: at,
            started_at: self.clock.stamp(at),
            ends_at: at + self.cfg.play.game_duration,
        });
        self.next_game_at = None;
    }

    fn insert_bills_for(&mut self, at: Instant, bet: u64) {
        while self.meters.current_credits < bet {
            let bills = &self.cfg.bills;
            let value = bills[self.play_rng.random_range(0..bills.len())];
            if self.wants_aft() {
                // As much as the bill would have been, cashable or promotional.
                let class = if self.money_rng.random_bool(0.5) { 0 } else { 2 };
                self.aft_in(at, class, value * 100);
                continue;
            }
            let probability = self.cfg.play.ticket_in_probability;
            if self.cfg.validation != Validation::None
                && probability > 0.0
                && self.ticket_rng.random_bool(probability.min(1.0))
            {
                // A ticket printed elsewhere, worth what the bill would have been.
                self.accept_ticket(at, value * 100);
            } else {
                self.accept_bill(at, value);
            }
        }
    }

    /// Whether the player moves money by AFT this time: the machine supports it, holds no
    /// transfer the host has not read yet, and the player so chooses.
    fn wants_aft(&mut self) -> bool {
        let probability = self.cfg.play.aft_probability;
        probability > 0.0
            && self.aft.as_ref().is_none_or(|(_, read)| *read)
            && self.money_rng.random_bool(probability.min(1.0))
    }

    /// The cashless system transfers `cents` of `class` (0 cashable, 2 non-restricted) onto the
    /// credit meter.
    fn aft_in(&mut self, at: Instant, class: usize, cents: u64) {
        // Validation guarantees whole credits for every bill value.
        let credits = (cents / self.credit_minor_units).max(1);
        self.meters.aft_in(class, cents, credits);
        self.aft_complete(at, AFT_TO_MACHINE, class, cents, credits);
    }

    /// A transfer completed: kept for LP72, in the ledger, and reported (69).
    fn aft_complete(
        &mut self,
        at: Instant,
        transfer_type: u8,
        class: usize,
        cents: u64,
        credits: u64,
    ) {
        self.aft_transactions += 1;
        let transaction_id =
            format!("SIM{:05}-{:010}", self.cfg.index, self.aft_transactions % 10_000_000_000);
        let amount = on_wire(cents, 5);
        let status = AftTransferStatus {
            position: 0,
            status: 0x00,
            receipt_status: 0xFF,
            transfer_type,
            cashable: if class == 0 { amount } else { 0 },
            restricted: if class == 1 { amount } else { 0 },
            non_restricted: if class == 2 { amount } else { 0 },
            flags: 0,
            asset_number: 0,
            transaction_id: transaction_id.clone().into_bytes(),
            completed: Some(self.clock.egm_date_time(at)),
        };
        self.aft = Some((status, false));
        let direction = if transfer_type == AFT_TO_HOST { "to_host" } else { "to_machine" };
        let class = ["cashable", "restricted", "non_restricted"].get(class).copied().unwrap_or("");
        let entry =
            Entry::AftTransfer { direction, class, transfer_type, cents, credits, transaction_id };
        self.record(at, entry);
        self.raise_simple(at, Exception::AftTransferComplete);
    }

    /// At a game end paid by the machine: a SAS progressive hit (56, LP85) and a legacy bonus
    /// (7C, LP90), each by its chance, paid to the credit meter.
    fn extra_wins(&mut self, at: Instant, bet: u64) {
        let probability = self.cfg.play.progressive_probability;
        if probability > 0.0
            && self.progressive.as_ref().is_none_or(|(_, read)| *read)
            && self.money_rng.random_bool(probability.min(1.0))
        {
            let level = self.money_rng.random_range(1..=3u8);
            let credits = bet * 10 * u64::from(level);
            let cents = credits.saturating_mul(self.credit_minor_units);
            let paid_by = if credits >= self.cfg.play.handpay_limit {
                PaidBy::Handpay
            } else {
                PaidBy::Machine
            };
            let group = PROGRESSIVE_GROUP;
            let entry = Entry::Progressive {
                group,
                level,
                cents,
                credits,
                game: self.current_game,
                paid_by,
            };
            self.record(at, entry);
            if paid_by == PaidBy::Handpay {
                // Too much for the machine to pay: an attendant pays it, and LP1B reports the
                // level. Only 51 is raised (no 56), so the host reads it once, as a handpay.
                self.start_handpay(at, HandpayKind::Progressive, credits);
                if let Some(h) = self.handpay.as_mut() {
                    h.level = level;
                }
                return;
            }
            self.meters.paid_extra(credits, true);
            let win = ProgressiveWin { group, level, amount: on_wire(cents, 5) };
            self.progressive = Some((win, false));
            self.raise_simple(at, Exception::SasProgressiveLevelHit);
        }
        let probability = self.cfg.play.bonus_probability;
        if probability > 0.0 && self.money_rng.random_bool(probability.min(1.0)) {
            let credits = bet * 5;
            self.meters.paid_extra(credits, false);
            let cents = credits.saturating_mul(self.credit_minor_units);
            self.last_bonus = LegacyBonusWin {
                multiplier: 0,
                multiplied_win: 0,
                tax_status: 0x01,
                bonus: on_wire(credits, 4),
            };
            self.record(at, Entry::Bonus { credits, cents, game: self.current_game });
            let b = self.last_bonus;
            let event = RealTimeEvent::LegacyBonus {
                multiplier: b.multiplier,
                multiplied_win: b.multiplied_win,
                tax_status: b.tax_status,
                bonus: b.bonus,
            };
            self.raise(at, event, Exception::LegacyBonusAwarded);
        }
    }

    /// A ticket is inserted (67); the validation system, which is not on this link, redeems it
    /// at once (68) and the credits go on the meter.
    fn accept_ticket(&mut self, at: Instant, cents: u64) {
        // Validation guarantees whole credits for every bill value, and tickets are worth one.
        let credits = (cents / self.credit_minor_units).max(1);
        let number = self.ticket_rng.random_range(0..10_000_000_000_000_000u64);
        self.last_ticket_in = Some(TicketDetail {
            amount: cents,
            parsing_code: 0,
            validation_data: validation_bcd(number),
        });
        self.raise_simple(at, Exception::TicketInserted);
        self.meters.ticket_in(cents, credits);
        let validation_number = printed_number(number);
        let game = self.current_game;
        self.record(at, Entry::TicketIn { validation_number, cents, credits, game });
        self.push_validation(at, CASHABLE_TICKET_REDEEMED, number, cents);
        self.raise_simple(at, Exception::TicketTransferComplete);
    }

    /// Prints a ticket or receipt: a new validation number, kept for LP4D.
    fn print_validation(&mut self, at: Instant, validation_type: u8, cents: u64) -> u64 {
        let number = self.ticket_rng.random_range(0..10_000_000_000_000_000u64);
        self.push_validation(at, validation_type, number, cents);
        number
    }

    fn push_validation(&mut self, at: Instant, validation_type: u8, number: u64, cents: u64) {
        self.validation_index = self.validation_index % 0x1F + 1;
        let record = ValidationRecord {
            validation_type,
            index: self.validation_index,
            date_time: Some(self.clock.egm_date_time(at)),
            validation_number: number,
            amount: on_wire(cents, 5),
            ticket_number: u16::try_from(self.ledger_seq % 10_000).unwrap_or(0),
            validation_system_id: VALIDATION_SYSTEM_ID,
            expiration: 30,
            pool_id: 0,
        };
        if self.validation.len() == VALIDATION_BUFFER {
            self.validation.pop_front();
        }
        self.validation.push_back((record, false));
    }

    /// LP4D: 00 = the oldest unreported record (now reported), 01–1F = by index, FF = the oldest
    /// unreported without marking it; an all-zero record when there is none.
    fn validation_record(&mut self, function: u8) -> ValidationRecord {
        let found = match function {
            0x00 | 0xFF => self.validation.iter_mut().find(|(_, reported)| !reported),
            index => self.validation.iter_mut().find(|(r, _)| r.index == index),
        };
        match found {
            Some((record, reported)) => {
                if function == 0x00 {
                    *reported = true;
                }
                *record
            }
            None => ValidationRecord::default(),
        }
    }

    fn accept_bill(&mut self, at: Instant, value: u64) {
        let Some(code) = bill_code(value) else { return };
        // Validation guarantees whole credits, and at least one per bill.
        let credits = (value * 100 / self.credit_minor_units).max(1);
        self.meters.bill(code, credits);
        let count = self.meters.bills_accepted.get(usize::from(code)).copied().unwrap_or(0);
        self.last_bill = LastBill {
            country: self.cfg.bill_country,
            denomination_code: code,
            count: on_wire(count, 4),
        };
        let game = self.current_game;
        self.record(at, Entry::Bill { value, bill_code: code, credits, game });
        let event = RealTimeEvent::BillAccepted {
            country: self.cfg.bill_country,
            denomination_code: code,
            count: on_wire(count, 4),
        };
        self.raise(at, event, legacy_bill_exception(value));
    }

    fn end_game(&mut self, at: Instant) {
        let Some(game) = self.game.take() else { return };
        // RTE 7F and the meters count the win in accounting credits (sas-protocol.md §6).
        let won = game.win * game.ratio;
        let handpay = won > 0 && won >= self.cfg.play.handpay_limit;
        self.meters.game_ended(won, !handpay);
        self.games.game_ended(game.game, won, !handpay);
        self.raise(at, RealTimeEvent::GameEnded { win: won }, Exception::GameEnded);
        let paid_by = if handpay { PaidBy::Handpay } else { PaidBy::Machine };
        let denomination = self.games.denomination(game.game).unwrap_or(self.cfg.denomination);
        let entry = Entry::Game {
            game_number: game.number,
            game: game.game,
            bet: game.bet,
            win: game.win,
            denomination,
            started_at: game.started_at.clone(),
            paid_by,
        };
        self.record(at, entry);
        if !handpay {
            self.extra_wins(at, game.bet);
        }
        if handpay {
            self.start_handpay(at, HandpayKind::Jackpot, won);
        } else if self.meters.current_credits > 0
            && self.play_rng.random_bool(self.cfg.play.cashout_probability)
        {
            self.cashout(at);
        }
        self.next_game_at = self.game_after(game.started, at);
    }

    fn cashout(&mut self, at: Instant) {
        let credits = self.meters.current_credits;
        self.raise_simple(at, Exception::CashoutButtonPressed);
        if credits >= self.cfg.play.handpay_limit {
            self.record(at, Entry::Cashout { credits, paid_by: PaidBy::Handpay });
            self.start_handpay(at, HandpayKind::CancelledCredits, credits);
        } else if self.wants_aft() {
            let cents = credits.saturating_mul(self.credit_minor_units);
            self.meters.aft_out(cents, credits);
            self.record(at, Entry::Cashout { credits, paid_by: PaidBy::Aft });
            self.aft_complete(at, AFT_TO_HOST, 0, cents, credits);
        } else if self.cfg.validation != Validation::None {
            let cents = credits.saturating_mul(self.credit_minor_units);
            self.meters.ticket_out(cents, credits);
            self.record(at, Entry::Cashout { credits, paid_by: PaidBy::Ticket });
            let number = self.print_validation(at, CASHABLE_TICKET_OUT, cents);
            let validation_number = printed_number(number);
            let validation_type = CASHABLE_TICKET_OUT;
            self.record(
                at,
                Entry::TicketOut {
                    validation_number,
                    validation_type,
                    cents,
                    credits,
                    game: self.current_game,
                },
            );
            self.raise_simple(at, Exception::CashoutTicketPrinted);
        } else {
            self.meters.cashout(credits);
            self.record(at, Entry::Cashout { credits, paid_by: PaidBy::Machine });
        }
    }

    fn start_handpay(&mut self, at: Instant, kind: HandpayKind, credits: u64) {
        self.handpay = Some(Handpay {
            kind,
            level: 0,
            game: self.current_game,
            credits,
            reset_at: at + self.cfg.play.handpay_duration,
            info_read: false,
            reissue_at: None,
        });
        self.raise_simple(at, Exception::HandpayPending);
    }

    fn reissue_handpay(&mut self, at: Instant) {
        let Some(h) = self.handpay.as_mut() else { return };
        h.reissue_at = None;
        if !h.info_read && !self.queue.has_priority(Exception::HandpayPending) {
            self.raise_simple(at, Exception::HandpayPending);
        }
    }

    fn handpay_reset(&mut self, at: Instant) {
        let Some(h) = self.handpay.take() else { return };
        match h.kind {
            HandpayKind::Jackpot => {
                self.meters.jackpot_handpaid(h.credits);
                self.games.jackpot_handpaid(h.game, h.credits);
            }
            HandpayKind::CancelledCredits => self.meters.cashout_handpaid(h.credits),
            HandpayKind::Progressive => self.meters.progressive_handpaid(h.credits),
        }
        let cents = h.credits.saturating_mul(self.credit_minor_units);
        let receipt = (self.cfg.validation != Validation::None).then(|| {
            let validation_type = match h.kind {
                HandpayKind::Jackpot | HandpayKind::Progressive => JACKPOT_RECEIPT,
                HandpayKind::CancelledCredits => CANCELLED_CREDIT_RECEIPT,
            };
            printed_number(self.print_validation(at, validation_type, cents))
        });
        let printed = receipt.is_some();
        let level = (h.kind == HandpayKind::Progressive).then_some(h.level);
        let entry = Entry::Handpay {
            kind: h.kind,
            credits: h.credits,
            cents,
            receipt,
            level,
            game: h.game,
        };
        self.record(at, entry);
        if printed {
            self.raise_simple(at, Exception::HandpayValidated);
        }
        self.raise_simple(at, Exception::HandpayReset);
        if self.next_game_at.is_none() && self.game.is_none() {
            self.next_game_at = self.game_after(at, at);
        }
    }

    // === Operations and faults ===

    fn open_door(&mut self, at: Instant) {
        self.meters.slot_door_openings += 1;
        self.door_open_until = Some(at + self.cfg.operations.door_open_duration);
        self.next_door_at =
            after_exponential(&mut self.ops_rng, at, self.cfg.operations.door_openings_per_hour);
        self.raise_simple(at, Exception::SlotDoorOpened);
    }

    fn close_door(&mut self, at: Instant) {
        self.door_open_until = None;
        self.meters.games_since_door_closed = 0;
        self.raise_simple(at, Exception::SlotDoorClosed);
    }

    fn power_lost(&mut self, at: Instant) {
        if self.power_off_until.is_some() {
            return;
        }
        let off = self.cfg.faults.power_off_duration;
        self.record_fault(at, FaultKind::PowerCycle, format!("power off for {off:?}"));
        // The power-fail handler writes 18 to the non-volatile queue before the machine dies.
        self.raise_simple(at, Exception::AcPowerLost);
        self.record(at, Entry::Power { state: PowerState::Lost });
        let abandoned = self.link.lose_sync();
        self.abandon(abandoned);
        self.power_off_until = Some(at + off);
        self.power_lost_at = Some(at);
        self.rom_signature = None;
        self.outbox.clear();
        self.chirping = false;
        self.next_chirp_at = None;
    }

    fn power_applied(&mut self, at: Instant) {
        let outage = self.power_lost_at.map_or(Duration::ZERO, |t| at.saturating_duration_since(t));
        // Timers stood still while the power was off: a game in progress resumes where it
        // stopped (game recovery from NVRAM), and so do handpay and door timers.
        let handpay = self.handpay.as_mut();
        let timers = [
            self.game.as_mut().map(|g| &mut g.ends_at),
            self.door_open_until.as_mut(),
            self.next_game_at.as_mut(),
            self.next_door_at.as_mut(),
        ];
        let (reset, reissue) = match handpay {
            Some(h) => (Some(&mut h.reset_at), h.reissue_at.as_mut()),
            None => (None, None),
        };
        for timer in timers.into_iter().chain([reset, reissue]).flatten() {
            *timer += outage;
        }
        self.power_off_until = None;
        self.power_lost_at = None;
        self.meters.power_resets += 1;
        self.meters.games_since_power_up = 0;
        self.rte = self.cfg.rte_at_power_up;
        if !self.cfg.persist_shutdown {
            self.host_enabled = true;
        }
        self.game_announced = false;
        self.link = self.fresh_link();
        self.last_poll_at = at;
        self.record(at, Entry::Power { state: PowerState::Applied });
        self.raise_simple(at, Exception::AcPowerApplied);
    }

    fn ram_clear(&mut self, at: Instant) {
        self.record_fault(at, FaultKind::RamClear, "NVRAM cleared".into());
        let before = std::mem::take(&mut self.meters);
        self.games.clear();
        self.record(at, Entry::MetersReset { reason: "ram_clear", before });
        for lost in self.queue.clear() {
            self.record_lost(at, &lost, LossReason::RamClear);
        }
        self.last_bill = LastBill::default();
        self.game_announced = false;
        self.raise_simple(at, Exception::MemoryErrorReset);
    }

    fn overflow_burst(&mut self, at: Instant) {
        let count = self.cfg.queue_size + OVERFLOW_EXTRA;
        self.record_fault(
            at,
            FaultKind::OverflowBurst,
            format!("{count} bill-rejected exceptions (2B) at once"),
        );
        for _ in 0..count {
            self.raise_simple(at, Exception::BillRejected);
        }
    }

    // === Exceptions and ledger ===

    fn raise_simple(&mut self, at: Instant, exception: Exception) {
        self.raise(at, RealTimeEvent::Exception(exception), exception);
    }

    fn raise(&mut self, at: Instant, event: RealTimeEvent, legacy: Exception) {
        self.exception_seq += 1;
        let entry = Queued { id: self.exception_seq, event, legacy };
        let code = entry.code();
        self.record(
            at,
            Entry::Exception {
                exception_seq: entry.id,
                code: code.code(),
                legacy_code: legacy.code(),
                name: code.name(),
                priority: legacy.is_priority(),
                event: event_data(&entry.event),
            },
        );
        if let Some(dropped) = self.queue.push(entry).dropped {
            self.record_lost(at, &dropped, LossReason::Overflow);
            if !self.queue.has_priority(Exception::ExceptionBufferOverflow) {
                self.raise_simple(at, Exception::ExceptionBufferOverflow);
            }
        }
    }

    fn record_lost(&mut self, at: Instant, lost: &Queued, reason: LossReason) {
        let code = lost.code();
        let entry = Entry::ExceptionLost {
            exception_seq: lost.id,
            code: code.code(),
            name: code.name(),
            reason,
        };
        self.record(at, entry);
    }

    fn record_command(&mut self, at: Instant, command: u8, name: &'static str) {
        let entry = Entry::Command { command, name, broadcast: false, rte: None, date_time: None };
        self.record(at, entry);
    }

    fn record_set_clock(&mut self, at: Instant, t: DateTime, broadcast: bool) {
        let date_time = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            t.year, t.month, t.day, t.hour, t.minute, t.second
        );
        let entry = Entry::Command {
            command: command::SET_DATE_TIME,
            name: "set_clock",
            broadcast,
            rte: None,
            date_time: Some(date_time),
        };
        self.record(at, entry);
    }

    fn record_fault(&mut self, at: Instant, fault: FaultKind, detail: String) {
        self.record(at, Entry::Fault { fault, detail });
    }

    fn record(&mut self, at: Instant, entry: Entry) {
        self.ledger_seq += 1;
        self.ledger.push(Record {
            seq: self.ledger_seq,
            time: self.clock.stamp(at),
            machine: self.cfg.index,
            address: self.address.get(),
            serial: self.cfg.serial.clone(),
            entry,
        });
    }
}

/// The 18 digits printed on a ticket: validation system ID, then the 16-digit number.
fn printed_number(number: u64) -> String {
    format!("{VALIDATION_SYSTEM_ID:02}{number:016}")
}

/// The printed number as LP70 validation data: 9 BCD bytes.
fn validation_bcd(number: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    let digits = printed_number(number);
    for pair in digits.as_bytes().chunks(2) {
        let (hi, lo) = match pair {
            [hi, lo] => (hi - b'0', lo - b'0'),
            _ => (0, 0),
        };
        out.push(hi << 4 | lo);
    }
    out
}

/// The single-byte code of a bill outside RTE mode; bills without one of their own use 4F
/// (sas-protocol.md §5).
fn legacy_bill_exception(value: u64) -> Exception {
    match value {
        1 => Exception::Bill1Accepted,
        5 => Exception::Bill5Accepted,
        10 => Exception::Bill10Accepted,
        20 => Exception::Bill20Accepted,
        50 => Exception::Bill50Accepted,
        100 => Exception::Bill100Accepted,
        2 => Exception::Bill2Accepted,
        500 => Exception::Bill500Accepted,
        200 => Exception::Bill200Accepted,
        _ => Exception::BillAccepted,
    }
}

fn event_data(event: &RealTimeEvent) -> Option<EventData> {
    Some(match *event {
        RealTimeEvent::GameStarted {
            credits_wagered,
            total_coin_in,
            wager_type,
            progressive_group,
        } => {
            EventData::GameStarted { credits_wagered, total_coin_in, wager_type, progressive_group }
        }
        RealTimeEvent::GameEnded { win } => EventData::GameEnded { win },
        RealTimeEvent::GameSelected { game } => EventData::GameSelected { game },
        RealTimeEvent::BillAccepted { country, denomination_code, count } => {
            EventData::BillAccepted { country, denomination_code, count }
        }
        _ => return None,
    })
}

/// `at` plus an exponentially distributed gap with mean 1/`per_hour` hours; `None` for rate 0.
fn after_exponential(rng: &mut Xoshiro256PlusPlus, at: Instant, per_hour: f64) -> Option<Instant> {
    if per_hour <= 0.0 {
        return None;
    }
    // `random` yields [0, 1); 1 − u is in (0, 1], so the logarithm is finite.
    let u: f64 = rng.random();
    let secs = -(1.0 - u).ln() * 3_600.0 / per_hour;
    Some(at + Duration::from_secs_f64(secs.clamp(0.0, 1e9)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(" ")
}
