//! The host session (`sas::session`) against a scripted machine, with injected time: no runtime,
//! no sockets, no clock but the one the test advances (in the manner of quinn-proto's `Pair`).
//! Each test names the behaviour it pins; the references are to sas-protocol.md.

// The test's clock starts at any instant; the session only ever sees those it is given.
#![allow(clippy::disallowed_methods)]

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use firmware_protocols::FirmwareProfile;
use firmware_protocols::crc::append_crc;
use firmware_protocols::profile::{BUILT_IN, SyncStyle};
use firmware_protocols::sas::message::{
    AftTransferStatus, EnabledFeatures, ExtendedMeter, ExtendedMeters, HandpayInfo, LastBill,
    LegacyBonusWin, ProgressiveWin, ProgressiveWins, TicketMessage, ValidationRecord,
};
use firmware_protocols::sas::session::{
    CHARACTER_TIME, EnqueueError, HostSession, LinkState, MAX_BUSY_ANSWERS, PollError, ResumeError,
    SessionEvent,
};
use firmware_protocols::sas::{
    Address, Character, Exception, HostMessage, LongPoll, MeterCode, RealTimeEvent, Reply,
};
use firmware_protocols::{DecodeError, sas::message::BasicMeters};

// === Vectors (sas-protocol.md §3.3) ===

const LP1C_REPLY: &str = "01 1C 00 12 34 56 00 10 00 00 00 05 00 00 00 00 00 00 00 00 07 89 \
                          00 00 03 21 00 00 00 12 00 00 00 03 E1 56";
const LP0F_REPLY: &str = "01 0F 00 00 20 00 00 12 34 56 00 10 00 00 00 05 00 00 00 00 00 00 00 00 \
                          07 89 0F 7D";
const LP1F_REPLY: &str = "01 1F 41 54 31 32 33 01 C9 12 00 00 31 32 33 34 35 36 39 30 35 30 40 96";
const LP54_REPLY: &str = "01 54 09 36 30 32 41 42 43 31 32 33 D7 3A";
const LP1A_REPLY: &str = "01 1A 00 01 00 00 1F A6";
const RTE_GAME_END_WIN_40: &str = "01 FF 7F 00 00 00 40 F4 5F";
const SHUTDOWN: &str = "01 01 51 08";
const RTE_ENABLE: &str = "01 0E 01 45 D1";

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|b| u8::from_str_radix(b, 16).expect("hex byte")).collect()
}

fn addr(n: u8) -> Address {
    Address::new(n).expect("machine address")
}

fn lp1c_meters() -> BasicMeters {
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
}

/// `addr FF code crc`: an RTE frame without payload.
fn rte_frame(code: u8) -> Vec<u8> {
    let mut frame = vec![0x01, 0xFF, code];
    append_crc(&mut frame);
    frame
}

/// The generic SAS 6.02 profile with RTE left off, so that sequences stay short.
fn profile() -> FirmwareProfile {
    let mut p = FirmwareProfile::generic();
    p.rte.enable = false;
    p
}

fn built_in(name: &str) -> FirmwareProfile {
    let (file, text) =
        BUILT_IN.iter().find(|(file, _)| file.starts_with(name)).expect("built-in profile");
    FirmwareProfile::from_toml_str(file, text).expect("valid built-in profile")
}

// === The scripted machine ===

/// A machine at address 1 that answers from a script, falling back to well-formed answers.
#[derive(Debug, Default)]
struct Machine {
    /// Next answers to the general poll; `00` (no activity) once empty.
    general: VecDeque<Vec<u8>>,
    /// Scripted answers per long-poll command (`None` = silence); defaults once empty.
    long: HashMap<u8, VecDeque<Option<Vec<u8>>>>,
    /// Answers nothing at all (switched off, cable pulled).
    silent: bool,
}

impl Machine {
    fn script(&mut self, command: u8, answers: impl IntoIterator<Item = Option<Vec<u8>>>) {
        self.long.entry(command).or_default().extend(answers);
    }

    fn answer(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        if self.silent {
            return None;
        }
        match bytes {
            [0x80] => None, // the sync poll is not answered (§4.4)
            [0x81] => Some(self.general.pop_front().unwrap_or_else(|| vec![0x00])),
            [0x01, command, ..] => match self.long.get_mut(command).and_then(VecDeque::pop_front) {
                Some(scripted) => scripted,
                None => well_formed_answer(bytes),
            },
            _ => None,
        }
    }
}

/// What a healthy machine at address 1 answers to a long poll.
fn well_formed_answer(bytes: &[u8]) -> Option<Vec<u8>> {
    let HostMessage::LongPoll(address, poll) = HostMessage::decode(bytes).ok()? else {
        return None;
    };
    let reply = match poll {
        LongPoll::Shutdown
        | LongPoll::Startup
        | LongPoll::RealTimeEventReporting(_)
        | LongPoll::RomSignature { .. }
        | LongPoll::SetDateTime(_) => return Some(vec![address.get()]),
        LongPoll::SendMeters => return Some(hex(LP1C_REPLY)),
        LongPoll::SendMeters10To15 => return Some(hex(LP0F_REPLY)),
        LongPoll::SendMachineInfo => return Some(hex(LP1F_REPLY)),
        LongPoll::SendVersionAndSerial => return Some(hex(LP54_REPLY)),
        LongPoll::SendCurrentCredits => return Some(hex(LP1A_REPLY)),
        LongPoll::SendLastBill => {
            Reply::LastBill(LastBill { country: 37, denomination_code: 2, count: 17 })
        }
        LongPoll::SendHandpayInfo => Reply::HandpayInfo(HandpayInfo::default()),
        LongPoll::SendTicketValidationData => {
            Reply::TicketValidationData(TicketMessage { status: 0, detail: None })
        }
        LongPoll::SendEnhancedValidation { .. } => {
            Reply::EnhancedValidation(ValidationRecord::default())
        }
        LongPoll::AftInterrogate { .. } => Reply::AftTransfer(AftTransferStatus {
            status: 0x00,
            cashable: 2_500,
            transaction_id: b"T1".to_vec(),
            ..Default::default()
        }),
        LongPoll::SendProgressiveWin => {
            Reply::ProgressiveWin(ProgressiveWin { group: 1, level: 2, amount: 50_000 })
        }
        LongPoll::SendLegacyBonusWin => {
            Reply::LegacyBonusWin(LegacyBonusWin { bonus: 40, ..Default::default() })
        }
        LongPoll::SendProgressiveWins => Reply::ProgressiveWins(ProgressiveWins {
            group: 1,
            levels: vec![(1, 10_000), (2, 20_000)],
        }),
        LongPoll::SendExtendedMeters { alternate, game, meters } => {
            Reply::ExtendedMeters(ExtendedMeters {
                alternate,
                game,
                meters: meters
                    .into_iter()
                    .map(|code| ExtendedMeter { code, size: 4, value: 1 })
                    .collect(),
            })
        }
        _ => return None,
    };
    reply.encode(address).ok()
}

// === The driver ===

/// Delay between the end of a message and the machine's answer, well inside the 20 ms window.
const LATENCY: Duration = Duration::from_millis(3);

#[derive(Debug, Clone)]
struct Sent {
    /// Time since the session started.
    at: Duration,
    bytes: Vec<u8>,
    retry: bool,
}

/// A session wired to a scripted machine through a simulated clock.
struct Pair {
    session: HostSession,
    machine: Machine,
    epoch: Instant,
    now: Instant,
    log: Vec<Sent>,
    events: Vec<SessionEvent>,
    /// Confirm events as soon as they are taken, as a journal with instant flushes would.
    auto_confirm: bool,
    /// Take events out of the session after every step (off: they stay in the session).
    take_out: bool,
}

impl Pair {
    fn new(profile: &FirmwareProfile) -> Self {
        // Test code may read the clock once, for an epoch; the session never does.
        let epoch = Instant::now();
        Self {
            session: HostSession::new(addr(1), profile, epoch),
            machine: Machine::default(),
            epoch,
            now: epoch,
            log: Vec::new(),
            events: Vec::new(),
            auto_confirm: true,
            take_out: true,
        }
    }

    fn drain(&mut self) {
        while let Some(event) = self.take_out.then(|| self.session.poll_event()).flatten() {
            self.events.push(event);
        }
        if self.auto_confirm {
            self.session.confirm_events();
        }
    }

    /// Advances time through the session's timeouts until it sends one message, lets the machine
    /// answer it, and returns it. `None` when the session waits for `confirm_events`.
    fn step(&mut self) -> Option<Sent> {
        for _ in 0..10_000 {
            self.drain();
            if let Some(transmit) = self.session.poll_transmit(self.now) {
                let first = transmit.characters.first().expect("a message has bytes");
                assert!(first.wakeup, "the first byte carries the wakeup bit");
                assert!(transmit.characters[1..].iter().all(|c| !c.wakeup), "only the first");
                let bytes: Vec<u8> = transmit.bytes().collect();
                assert_eq!(transmit.message.encode().expect("encodes"), bytes);
                let sent = Sent { at: self.now - self.epoch, bytes, retry: transmit.retry };
                self.log.push(sent.clone());
                if let Some(answer) = self.machine.answer(&sent.bytes) {
                    self.now += LATENCY;
                    self.feed(&answer);
                }
                self.drain();
                return Some(sent);
            }
            let at = self.session.poll_timeout()?;
            assert!(at >= self.now || self.session.poll_transmit(self.now).is_none());
            self.now = self.now.max(at);
            self.session.handle_timeout(self.now);
        }
        panic!("the session made no progress");
    }

    fn run(&mut self, steps: usize) {
        for _ in 0..steps {
            self.step().expect("the session stalled");
        }
    }

    /// Steps until a message with these bytes has been sent; returns its index in the log.
    fn run_until_sent(&mut self, wire: &[u8]) -> usize {
        for _ in 0..200 {
            self.step().expect("the session stalled");
            if self.log.last().is_some_and(|s| s.bytes == wire) {
                return self.log.len() - 1;
            }
        }
        panic!("{wire:02X?} was never sent; sent {:02X?}", self.sent());
    }

    /// Bytes from the machine, without the wakeup bit.
    fn feed(&mut self, bytes: &[u8]) {
        let characters: Vec<Character> =
            bytes.iter().map(|&byte| Character { byte, wakeup: false }).collect();
        self.session.handle_input(self.now, &characters);
    }

    fn sent(&self) -> Vec<Vec<u8>> {
        self.log.iter().map(|s| s.bytes.clone()).collect()
    }

    fn take_events(&mut self) -> Vec<SessionEvent> {
        self.take_out = true;
        self.drain();
        std::mem::take(&mut self.events)
    }
}

/// The bytes that machines compare for an implied NACK (§4.2).
fn identity(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.len().min(2)]
}

// === Start-up and the general-poll cycle ===

#[test]
fn a_new_session_sends_the_sync_poll_first_and_at_once() {
    let mut pair = Pair::new(&profile());
    let first = pair.step().expect("something is sent");
    assert_eq!(first.bytes, [0x80]);
    assert_eq!(first.at, Duration::ZERO);
    assert!(!first.retry);
}

#[test]
fn the_general_poll_cycle_is_the_sync_poll_then_the_machine_general_poll() {
    let mut pair = Pair::new(&profile());
    pair.run(8);
    assert_eq!(pair.sent(), [[0x80], [0x81], [0x80], [0x81], [0x80], [0x81], [0x80], [0x81]]);
    assert_eq!(pair.take_events(), [SessionEvent::LinkUp], "idle answers report nothing");
    assert_eq!(pair.session.link(), LinkState::Up);
}

#[test]
fn the_general_poll_carries_the_machine_address() {
    let profile = profile();
    let mut session = HostSession::new(addr(0x2A), &profile, Instant::now());
    let now = session.poll_timeout().expect("due at start");
    let sync = session.poll_transmit(now).expect("sync poll");
    assert_eq!(sync.bytes().collect::<Vec<_>>(), [0x80]);
    let later = session.poll_timeout().expect("sync window");
    session.handle_timeout(later);
    let general = session.poll_transmit(later).expect("general poll");
    assert_eq!(general.message, HostMessage::GeneralPoll(addr(0x2A)));
    assert_eq!(general.bytes().collect::<Vec<_>>(), [0xAA]);
}

#[test]
fn a_machine_that_needs_no_sync_is_polled_at_once_and_still_never_gets_two_identical_polls() {
    let mut profile = built_in("novomatic");
    assert_eq!(profile.sync, SyncStyle::None);
    profile.rte.enable = false;
    let mut pair = Pair::new(&profile);
    pair.run(5);
    assert_eq!(pair.sent()[0], [0x81], "no sync poll at start-up");
    // The `80` stays as the implied ACK between two general polls (§4.2).
    assert_eq!(pair.sent(), [[0x81], [0x80], [0x81], [0x80], [0x81]]);
}

#[test]
fn after_the_line_is_re_established_the_first_new_message_is_the_sync_poll_whatever_the_style() {
    // A machine that needs no sync would otherwise hear `81` first, which repeats what it last
    // heard from a previous process (or before a drop) and reads as an implied NACK.
    let mut profile = built_in("novomatic");
    profile.rte.enable = false;
    let mut session = HostSession::new(addr(1), &profile, Instant::now());
    session.line_reestablished();
    let now = session.poll_timeout().expect("due at start");
    let first = session.poll_transmit(now).expect("sent");
    assert_eq!(first.bytes().collect::<Vec<_>>(), [0x80]);
    let later = session.poll_timeout().expect("sync window");
    session.handle_timeout(later);
    let next = session.poll_transmit(later).expect("general poll");
    assert_eq!(next.bytes().collect::<Vec<_>>(), [0x81], "one sync poll, not two");
    // With the sync-poll style too, one `80`, not two.
    let mut session = HostSession::new(addr(1), &self::profile(), Instant::now());
    session.line_reestablished();
    let now = session.poll_timeout().expect("due at start");
    assert_eq!(session.poll_transmit(now).expect("sent").bytes().collect::<Vec<_>>(), [0x80]);
    let later = session.poll_timeout().expect("sync window");
    session.handle_timeout(later);
    let next = session.poll_transmit(later).expect("general poll");
    assert_eq!(next.bytes().collect::<Vec<_>>(), [0x81]);
}

// === Implied ACK / NACK ===

#[test]
fn no_poll_is_sent_twice_in_a_row_except_as_a_deliberate_retry() {
    // A noisy, busy machine: every kind of answer, chosen by a fixed pseudo-random sequence.
    let mut pair = Pair::new(&FirmwareProfile::generic());
    let mut seed: u32 = 0x2545_F491;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed % 8
    };
    let mut bad_1c = hex(LP1C_REPLY);
    bad_1c[5] ^= 0x01;
    for round in 0..120 {
        if round % 3 == 0 {
            for poll in [
                LongPoll::SendMeters,
                LongPoll::SendMeters,
                LongPoll::SendCurrentCredits,
                LongPoll::SendExtendedMeters {
                    alternate: false,
                    game: 0,
                    meters: vec![MeterCode::TOTAL_COIN_IN],
                },
            ] {
                pair.session.enqueue(poll).expect("supported");
            }
        }
        let general = match next() {
            0 => vec![0x11],
            1 => vec![0x51],
            2 => rte_frame(0x12),
            _ => vec![0x00],
        };
        pair.machine.general.push_back(general);
        let answer = match next() {
            0 => Some(bad_1c.clone()),
            1 => Some(vec![0x01, 0x00]), // busy
            2 => Some(hex(RTE_GAME_END_WIN_40)),
            3 => Some(hex("01 1C 00 12")), // cut short
            _ => Some(hex(LP1C_REPLY)),
        };
        pair.machine.script(0x1C, [answer]);
        pair.run(5);
    }
    let log = &pair.log;
    let mut separated = 0;
    for (i, pair_of) in log.windows(2).enumerate() {
        let [previous, current] = pair_of else { unreachable!() };
        if current.retry {
            assert_eq!(previous.bytes, current.bytes, "a retry repeats the message exactly (#{i})");
        } else if current.bytes != [0x80] {
            assert_ne!(
                identity(&previous.bytes),
                identity(&current.bytes),
                "#{i}: {:02X?} sent twice in a row without being a retry",
                current.bytes
            );
        }
        if i >= 1 && current.bytes == [0x80] && log[i - 1].bytes.len() > 1 {
            separated += usize::from(log.get(i + 2).is_some_and(|n| n.bytes == log[i - 1].bytes));
        }
    }
    let longest_run = log
        .chunk_by(|a, b| a.bytes == b.bytes && a.bytes != [0x80])
        .map(<[Sent]>::len)
        .max()
        .unwrap_or(0);
    assert!(longest_run <= 3, "at most 3 transmissions of one poll, saw {longest_run}");
    assert!(pair.session.stats().retries > 0, "the run exercised retries");
    assert!(separated > 0, "the run exercised a long poll repeated behind the sync poll");
}

#[test]
fn a_long_poll_asked_again_at_once_is_separated_by_the_sync_poll() {
    // A busy answer means "ask again": the repeat must not read as a NACK (§4.2, §4.4).
    let mut p = profile();
    p.timing.busy_backoff = Duration::from_millis(500);
    let mut pair = Pair::new(&p);
    pair.run(2);
    pair.machine.script(0x1C, [Some(vec![0x01, 0x00])]);
    pair.session.enqueue(LongPoll::SendMeters).expect("supported");
    let first = pair.run_until_sent(&[0x01, 0x1C]);
    let busy_at = pair.log[first].at + LATENCY;
    pair.run(2);
    assert_eq!(pair.log[first + 1].bytes, [0x80], "the sync poll separates the repeat");
    assert_eq!(pair.log[first + 2].bytes, [0x01, 0x1C]);
    assert!(!pair.log[first + 2].retry, "the repeat is a new poll, not an implied NACK");
    assert!(pair.log[first + 1].at >= busy_at + Duration::from_millis(500), "busy back-off kept");
    let stats = pair.session.stats();
    assert_eq!((stats.busy, stats.retries, stats.failed_exchanges), (1, 0, 0));
    assert_eq!(
        pair.take_events(),
        [
            SessionEvent::LinkUp,
            SessionEvent::Reply { poll: LongPoll::SendMeters, reply: Reply::Meters(lp1c_meters()) }
        ]
    );
}

#[test]
fn an_extended_meter_poll_asked_again_at_once_alternates_between_6f_and_af() {
    let mut pair = Pair::new(&profile());
    pair.run(2);
    pair.machine.script(0x6F, [Some(vec![0x01, 0x00])]); // busy once
    let meters = vec![MeterCode::TOTAL_COIN_IN, MeterCode::GAMES_PLAYED];
    let poll = LongPoll::SendExtendedMeters { alternate: false, game: 0, meters: meters.clone() };
    pair.session.enqueue(poll).expect("supported");
    let first = pair.run_until_sent(&hex("01 6F 06 00 00 00 00 05 00 3B 09"));
    pair.run(1);
    let again = &pair.log[first + 1];
    assert_eq!(identity(&again.bytes), [0x01, 0xAF], "AF instead of a sync poll");
    let alternate = LongPoll::SendExtendedMeters { alternate: true, game: 0, meters };
    let events = pair.take_events();
    assert!(
        events.iter().any(|e| matches!(e, SessionEvent::Reply { poll, .. } if *poll == alternate)),
        "{events:?}"
    );
}

#[test]
fn a_corrupt_answer_is_retried_identically_three_times_then_given_up_and_resynced() {
    let mut pair = Pair::new(&profile());
    pair.run(2);
    let mut bad = hex(LP1C_REPLY);
    *bad.last_mut().expect("non-empty") ^= 0xFF;
    pair.machine.script(0x1C, [Some(bad.clone()), Some(bad.clone()), Some(bad)]);
    pair.session.enqueue(LongPoll::SendMeters).expect("supported");
    let first = pair.run_until_sent(&[0x01, 0x1C]);
    pair.run(3);
    let tail: Vec<(Vec<u8>, bool)> =
        pair.log[first..].iter().map(|s| (s.bytes.clone(), s.retry)).collect();
    assert_eq!(
        tail,
        [
            (vec![0x01, 0x1C], false),
            (vec![0x01, 0x1C], true),
            (vec![0x01, 0x1C], true),
            (vec![0x80], false), // resync: cannot be read as a fourth try
        ]
    );
    assert_eq!(
        pair.take_events(),
        [
            SessionEvent::LinkUp,
            SessionEvent::PollFailed {
                poll: LongPoll::SendMeters,
                error: PollError::Decode(DecodeError::BadCrc { len: 36 }),
            }
        ]
    );
    let stats = pair.session.stats();
    assert_eq!((stats.crc_errors, stats.retries, stats.failed_exchanges), (3, 2, 1));
    assert_eq!(stats.skipped_bytes, 3 * 36, "each corrupt frame is dropped whole");
}

#[test]
fn a_nack_is_answered_with_the_identical_poll_and_a_good_retry_is_reported() {
    let mut pair = Pair::new(&profile());
    pair.run(2);
    pair.machine.script(0x01, [Some(vec![0x81])]); // NACK, then the default ACK
    pair.session.enqueue(LongPoll::Shutdown).expect("supported");
    let first = pair.run_until_sent(&hex(SHUTDOWN));
    pair.run(1);
    assert_eq!(pair.log[first + 1].bytes, hex(SHUTDOWN));
    assert!(pair.log[first + 1].retry);
    pair.run(1);
    assert_eq!(
        pair.take_events(),
        [SessionEvent::LinkUp, SessionEvent::Reply { poll: LongPoll::Shutdown, reply: Reply::Ack }]
    );
    assert_eq!(pair.session.stats().failed_exchanges, 0);
}

#[test]
fn a_silent_general_poll_is_retried_then_resynced_with_the_sync_poll() {
    let mut pair = Pair::new(&profile());
    pair.machine.silent = true;
    pair.run(9);
    let sent: Vec<(Vec<u8>, bool)> = pair.log.iter().map(|s| (s.bytes.clone(), s.retry)).collect();
    let cycle = [(vec![0x80], false), (vec![0x81], false), (vec![0x81], true), (vec![0x81], true)];
    assert_eq!(sent[..4], cycle);
    assert_eq!(sent[4..8], cycle);
    let stats = pair.session.stats();
    assert_eq!((stats.timeouts, stats.failed_exchanges, stats.retries), (6, 2, 4));
    assert!(pair.take_events().is_empty(), "a failed general poll is counted, not an event");
}

// === Link state ===

#[test]
fn the_link_goes_down_after_offline_after_failed_exchanges_and_up_at_the_first_answer() {
    let p = profile();
    assert_eq!(p.timing.offline_after, 5);
    let mut pair = Pair::new(&p);
    pair.run(2);
    assert_eq!(pair.take_events(), [SessionEvent::LinkUp]);
    pair.machine.silent = true;
    // Each failed exchange: sync poll + three tries of the general poll; the last try is
    // settled when the next message goes out.
    pair.run(4 * 4 + 1);
    assert_eq!(pair.session.stats().failed_exchanges, 4);
    assert!(pair.take_events().is_empty(), "four failures are not enough");
    assert_eq!(pair.session.link(), LinkState::Up);
    pair.run(4);
    assert_eq!(pair.take_events(), [SessionEvent::LinkDown]);
    assert_eq!(pair.session.link(), LinkState::Down);
    pair.run(8);
    assert!(pair.take_events().is_empty(), "LinkDown is reported once");
    pair.machine.silent = false;
    pair.run(4);
    assert_eq!(pair.take_events(), [SessionEvent::LinkUp]);
    assert_eq!(pair.session.link(), LinkState::Up);
    // The answer ended the streak: one more failure is not a link loss.
    pair.machine.silent = true;
    pair.run(5);
    assert_eq!(pair.session.link(), LinkState::Up);
    assert!(pair.take_events().is_empty());
}

#[test]
fn queued_long_polls_wait_while_the_link_is_down() {
    let mut pair = Pair::new(&profile());
    pair.machine.silent = true;
    pair.session.enqueue(LongPoll::SendMeters).expect("supported");
    pair.run(12);
    assert!(pair.log.iter().all(|s| s.bytes.len() == 1), "only the general-poll cycle runs");
    pair.machine.silent = false;
    pair.run_until_sent(&[0x01, 0x1C]);
}

// === Chirps ===

#[test]
fn a_chirp_of_the_own_address_is_reported_and_answered_with_the_sync_poll() {
    let mut pair = Pair::new(&profile());
    pair.run(2);
    pair.machine.script(0x1C, [None]);
    pair.session.enqueue(LongPoll::SendMeters).expect("supported");
    pair.run_until_sent(&[0x01, 0x1C]);
    pair.take_events();
    // The machine chirps while its answer is awaited (§1.1, §4.1).
    pair.now += Duration::from_millis(1);
    pair.session.handle_input(pair.now, &[Character { byte: 0x01, wakeup: true }]);
    assert_eq!(pair.take_events(), [SessionEvent::Chirp, SessionEvent::LinkDown]);
    let before = pair.log.len();
    pair.run(2);
    assert_eq!(pair.sent()[before..], [vec![0x80], vec![0x81]], "resync, then the cycle");
    assert_eq!(pair.take_events(), [SessionEvent::LinkUp]);
    // The abandoned long poll is asked again as a fresh poll, not counted as a failure.
    let again = pair.run_until_sent(&[0x01, 0x1C]);
    assert!(!pair.log[again].retry);
    let stats = pair.session.stats();
    assert_eq!((stats.chirps, stats.failed_exchanges, stats.timeouts), (1, 0, 0));
}

#[test]
fn a_chirp_during_the_sync_window_is_followed_by_another_sync_poll() {
    let mut pair = Pair::new(&profile());
    pair.run(2);
    let sync = pair.run_until_sent(&[0x80]);
    // The machine may not have taken that `80` in: sync again rather than poll it directly.
    pair.now += Duration::from_millis(1);
    pair.session.handle_input(pair.now, &[Character { byte: 0x01, wakeup: true }]);
    pair.run(2);
    assert_eq!(pair.sent()[sync + 1..], [vec![0x80], vec![0x81]]);
}

#[test]
fn a_chirp_from_another_address_is_reported_but_never_adopted() {
    let mut pair = Pair::new(&profile());
    pair.run(2);
    pair.take_events();
    pair.session.handle_input(pair.now, &[Character { byte: 0x05, wakeup: true }]);
    assert_eq!(pair.take_events(), [SessionEvent::UnknownChirp(0x05)]);
    pair.run(2);
    assert_eq!(pair.sent()[2..], [vec![0x80], vec![0x81]], "still polling address 1");
    assert_eq!(pair.session.address(), addr(1));
    assert_eq!(pair.session.link(), LinkState::Up);
}

// === Busy ===

#[test]
fn a_machine_that_stays_busy_fails_the_poll_but_not_the_link() {
    let mut pair = Pair::new(&profile());
    pair.run(2);
    let busy = usize::from(MAX_BUSY_ANSWERS);
    pair.machine.script(0x1C, std::iter::repeat_n(Some(vec![0x01, 0x00]), busy));
    pair.session.enqueue(LongPoll::SendMeters).expect("supported");
    pair.run_until_sent(&[0x01, 0x1C]);
    pair.run(2 * (busy - 1) + 1);
    let polls = pair.log.iter().filter(|s| s.bytes == [0x01, 0x1C]).count();
    assert_eq!(polls, busy);
    assert_eq!(
        pair.take_events(),
        [
            SessionEvent::LinkUp,
            SessionEvent::PollFailed {
                poll: LongPoll::SendMeters,
                error: PollError::Busy { answers: MAX_BUSY_ANSWERS },
            }
        ]
    );
    assert_eq!(pair.session.link(), LinkState::Up);
}

// === RTE ===

#[test]
fn rte_is_enabled_at_link_up_and_tracked_once_the_machine_acks_it() {
    let mut pair = Pair::new(&FirmwareProfile::generic());
    pair.machine.script(0x0E, [None]);
    pair.run(3);
    assert_eq!(pair.sent(), [vec![0x80], vec![0x81], hex(RTE_ENABLE)]);
    assert!(!pair.session.rte_enabled(), "not before the ACK");
    // The machine's lone ACK, settled once the line stays quiet.
    pair.feed(&[0x01]);
    pair.step();
    assert!(pair.session.rte_enabled());
    let events = pair.take_events();
    let reply =
        SessionEvent::Reply { poll: LongPoll::RealTimeEventReporting(true), reply: Reply::Ack };
    assert_eq!(events, [SessionEvent::LinkUp, reply]);
}

#[test]
fn a_long_poll_overridden_by_an_rte_event_reports_it_and_is_asked_again_after_a_different_poll() {
    let mut pair = Pair::new(&FirmwareProfile::generic());
    pair.run(3); // 80 81 0E
    pair.machine.script(0x1C, [Some(hex(RTE_GAME_END_WIN_40))]);
    pair.session.enqueue(LongPoll::SendMeters).expect("supported");
    let first = pair.run_until_sent(&[0x01, 0x1C]);
    pair.run(2);
    assert_eq!(pair.log[first + 1].bytes, [0x80], "never the identical poll next (§4.4)");
    assert_eq!(pair.log[first + 2].bytes, [0x01, 0x1C]);
    assert!(!pair.log[first + 2].retry);
    let events = pair.take_events();
    assert_eq!(
        events[2..],
        [
            SessionEvent::RealTimeEvent(RealTimeEvent::GameEnded { win: 40 }),
            SessionEvent::Reply { poll: LongPoll::SendMeters, reply: Reply::Meters(lp1c_meters()) },
        ]
    );
}

#[test]
fn with_rte_on_a_lone_address_byte_followed_by_a_stall_is_not_taken_for_an_ack() {
    let mut pair = Pair::new(&FirmwareProfile::generic());
    pair.run(4); // 80 81 0E 80: RTE on once the ACK of 0E has settled
    assert!(pair.session.rte_enabled());
    // LP01's answer is a lone ACK, but a pending report pre-empts it: `01 FF 7F …`, and this
    // machine pauses 10 ms after the first byte (twice the inter-byte limit).
    pair.machine.script(0x01, [None]);
    pair.session.enqueue(LongPoll::Shutdown).expect("supported");
    pair.run_until_sent(&hex("01 01 51 08"));
    let frame = hex(RTE_GAME_END_WIN_40);
    pair.now += LATENCY;
    pair.feed(&frame[..1]);
    pair.now += Duration::from_millis(10);
    pair.session.handle_timeout(pair.now);
    pair.feed(&frame[1..]);
    let events = pair.take_events();
    assert!(
        events.contains(&SessionEvent::RealTimeEvent(RealTimeEvent::GameEnded { win: 40 })),
        "the report is delivered: {events:?}"
    );
    let ack = SessionEvent::Reply { poll: LongPoll::Shutdown, reply: Reply::Ack };
    assert!(!events.contains(&ack), "the report's first byte is no ACK: {events:?}");
}

#[test]
fn an_rte_game_end_carries_its_win_and_queues_no_meter_poll() {
    let mut pair = Pair::new(&profile());
    pair.machine.general.push_back(hex(RTE_GAME_END_WIN_40));
    pair.run(4);
    assert_eq!(pair.sent(), [[0x80], [0x81], [0x80], [0x81]]);
    assert_eq!(pair.session.queued().count(), 0);
}

// === Exceptions and their follow-ups ===

#[test]
fn idle_answers_produce_no_event_and_no_hold() {
    let mut pair = Pair::new(&profile());
    pair.auto_confirm = false;
    for idle in [vec![0x00], vec![0x1F], rte_frame(0x00), rte_frame(0x1F)] {
        pair.machine.general.push_back(idle);
    }
    pair.run(8);
    assert_eq!(pair.take_events(), [SessionEvent::LinkUp]);
    assert!(!pair.session.is_holding());
}

#[test]
fn unknown_exception_codes_reach_the_caller_with_their_byte() {
    let mut pair = Pair::new(&profile());
    pair.machine.general.push_back(vec![0x26]);
    let mut unknown_rte = vec![0x01, 0xFF, 0xEE, 0x12, 0x34];
    append_crc(&mut unknown_rte);
    pair.machine.general.push_back(unknown_rte);
    pair.run(4);
    assert_eq!(
        pair.take_events(),
        [
            SessionEvent::LinkUp,
            SessionEvent::Exception(Exception::Unknown(0x26)),
            SessionEvent::RealTimeEvent(RealTimeEvent::Exception(Exception::Unknown(0xEE))),
        ]
    );
}

#[test]
fn priority_exceptions_are_followed_by_the_poll_that_reads_their_details() {
    let cases: [(Vec<u8>, &[u8]); 7] = [
        (vec![0x51], &[0x01, 0x1B]),      // handpay pending → handpay info
        (vec![0x47], &[0x01, 0x48]),      // $1 bill → last bill
        (vec![0x4F], &[0x01, 0x48]),      // bill accepted → last bill
        (vec![0x7F], &[0x01, 0x1C]),      // game ended without RTE → meters
        (vec![0x67], &[0x01, 0x70]),      // ticket inserted → validation data
        (vec![0x3D], &[0x01, 0x0F]), // cash-out ticket printed → meters incl. cancelled credits
        (rte_frame(0x51), &[0x01, 0x1B]), // also when it comes as an RTE frame
    ];
    for (answer, follow_up) in cases {
        let mut pair = Pair::new(&profile());
        pair.machine.general.push_back(answer.clone());
        pair.run(3);
        assert_eq!(pair.log[2].bytes, follow_up, "after {answer:02X?}");
        let events = pair.take_events();
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(matches!(events[2], SessionEvent::Reply { .. }), "{events:?}");
    }
}

#[test]
fn printed_tickets_receipts_and_redeemed_tickets_are_followed_by_their_validation_record() {
    let lp4d = LongPoll::SendEnhancedValidation { function: 0 }.encode(1).unwrap();
    for (code, polls) in [
        (0x3D, vec![vec![0x01, 0x0F], lp4d.clone()]),
        (0x3E, vec![lp4d.clone()]),
        (0x68, vec![lp4d.clone()]),
    ] {
        let mut pair = Pair::new(&profile());
        pair.machine.general.push_back(vec![code]);
        pair.run(8);
        let long_polls: Vec<Vec<u8>> =
            pair.sent().into_iter().filter(|m| m.first() == Some(&0x01)).collect();
        assert_eq!(long_polls, polls, "after {code:02X}");
        let events = pair.take_events();
        let records = events
            .iter()
            .filter(|e| {
                matches!(e, SessionEvent::Reply { reply: Reply::EnhancedValidation(_), .. })
            })
            .count();
        assert_eq!(records, 1, "{events:?}");
    }
}

/// R22: the gateway is a monitoring host. Whatever asks for it (the caller, a restored
/// follow-up, any exception the machine reports), no poll that moves money leaves the session.
#[test]
fn a_poll_that_moves_money_can_never_be_sent() {
    let redeem = LongPoll::RedeemTicket(TicketMessage { status: 0x00, detail: None });
    let status_query = LongPoll::RedeemTicket(TicketMessage { status: 0xFF, detail: None });
    assert!(redeem.moves_money() && status_query.moves_money());
    let mut pair = Pair::new(&profile());
    for poll in [&redeem, &status_query] {
        let refused = Err(EnqueueError::MovesMoney { command: 0x71 });
        assert_eq!(pair.session.enqueue(poll.clone()), refused);
        assert_eq!(pair.session.enqueue_first(poll.clone()), refused);
    }
    pair.session.restore_follow_ups([(redeem.clone(), Exception::TicketInserted)]);
    // Every exception code there is, as a bare code and as an RTE frame, with every follow-up
    // answered.
    for code in 0..=u8::MAX {
        pair.machine.general.push_back(vec![code]);
        pair.machine.general.push_back(rte_frame(code));
    }
    pair.run(3_000);
    let events = pair.take_events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, SessionEvent::FollowUpLost { poll, .. } if *poll == redeem)),
        "the restored LP71 is reported lost, not sent"
    );
    let mut interrogations = 0;
    for sent in pair.sent() {
        if let Ok(HostMessage::LongPoll(_, poll)) = HostMessage::decode(&sent) {
            assert!(!poll.moves_money(), "sent {sent:02X?}");
        }
        assert_ne!(sent.get(1), Some(&0x71), "sent {sent:02X?}");
        // LP72 only as an interrogation of the current transfer (after exception 69): length
        // 2, transfer code FF; never a transfer request or a cancel.
        if sent.get(1) == Some(&0x72) {
            interrogations += 1;
            assert_eq!(sent.get(..5), Some(&[0x01, 0x72, 0x02, 0xFF, 0x00][..]), "{sent:02X?}");
            assert_eq!(sent.len(), 7, "{sent:02X?}");
        }
    }
    assert!(interrogations > 0, "exception 69 is followed by an interrogation");
    assert!(pair.sent().len() >= 3_000);
}

/// Issue 12: an AFT transfer complete (69) is read by interrogation, a SAS progressive hit (56)
/// by LP85, a legacy bonus without RTE (bare 7C) by LP90; each answer is a session reply.
#[test]
fn money_exceptions_are_followed_by_their_read_only_polls() {
    let mut pair = Pair::new(&profile());
    for code in [0x69, 0x56, 0x7C] {
        pair.machine.general.push_back(vec![code]);
    }
    pair.run(40);
    let commands: Vec<u8> =
        pair.sent().iter().filter(|m| m.len() > 1).filter_map(|m| m.get(1).copied()).collect();
    for command in [0x72, 0x85, 0x90] {
        assert!(commands.contains(&command), "{command:02X} in {commands:02X?}");
    }
    let events = pair.take_events();
    let replies = |want: fn(&Reply) -> bool| {
        events
            .iter()
            .filter(|e| matches!(e, SessionEvent::Reply { reply, .. } if want(reply)))
            .count()
    };
    assert_eq!(replies(|r| matches!(r, Reply::AftTransfer(t) if t.cashable == 2_500)), 1);
    assert_eq!(replies(|r| matches!(r, Reply::ProgressiveWin(w) if w.amount == 50_000)), 1);
    assert_eq!(replies(|r| matches!(r, Reply::LegacyBonusWin(b) if b.bonus == 40)), 1);
}

/// A machine whose LPA0 says it reports several progressive levels at once is read with LP87
/// after a 56, not LP85.
#[test]
fn a_progressive_hit_is_read_with_lp87_when_lpa0_says_so() {
    let mut pair = Pair::new(&profile());
    let features = EnabledFeatures { game: 0, features: [0x00, 0x00, 0x02] };
    let answer = Reply::EnabledFeatures(features).encode(addr(1)).expect("encodes");
    pair.machine.script(0xA0, [Some(answer)]);
    pair.session.enqueue(LongPoll::SendEnabledFeatures { game: 0 }).expect("supported");
    pair.run(8);
    pair.machine.general.push_back(vec![0x56]);
    pair.run(20);
    let commands: Vec<u8> =
        pair.sent().iter().filter(|m| m.len() > 1).filter_map(|m| m.get(1).copied()).collect();
    assert!(commands.contains(&0x87) && !commands.contains(&0x85), "{commands:02X?}");
    let events = pair.take_events();
    assert!(events.iter().any(|e| matches!(
        e,
        SessionEvent::Reply { reply: Reply::ProgressiveWins(w), .. } if w.levels.len() == 2
    )));
}

#[test]
fn a_follow_up_the_profile_rules_out_is_not_queued() {
    let mut p = profile();
    p.unsupported_long_polls.insert(0x1B);
    let mut pair = Pair::new(&p);
    pair.machine.general.push_back(vec![0x51]);
    pair.run(4);
    assert_eq!(pair.sent(), [[0x80], [0x81], [0x80], [0x81]]);
}

#[test]
fn exception_buffer_overflow_requests_a_resync_and_queues_the_resync_polls() {
    let mut pair = Pair::new(&profile());
    pair.auto_confirm = false;
    pair.machine.general.push_back(vec![0x70]);
    pair.run(2);
    assert_eq!(
        pair.take_events(),
        [
            SessionEvent::LinkUp,
            SessionEvent::Exception(Exception::ExceptionBufferOverflow),
            SessionEvent::ResyncRequired(Exception::ExceptionBufferOverflow),
        ]
    );
    let queued: Vec<u8> = pair.session.queued().map(LongPoll::command).collect();
    assert_eq!(queued, [0x1C, 0x0F, 0x1F, 0x54]);
    pair.session.confirm_events();
    pair.auto_confirm = true;
    pair.run(10);
    let long_polls: Vec<u8> =
        pair.log.iter().filter(|s| s.bytes.len() == 2).map(|s| s.bytes[1]).collect();
    assert_eq!(long_polls, [0x1C, 0x0F, 0x1F, 0x54], "sent in order, between general polls");
}

#[test]
fn resync_polls_the_profile_rules_out_are_left_out() {
    let mut p = profile();
    p.unsupported_long_polls.insert(0x54);
    let mut pair = Pair::new(&p);
    pair.machine.general.push_back(vec![0x7A]); // soft meters reset
    pair.run(2);
    let queued: Vec<u8> = pair.session.queued().map(LongPoll::command).collect();
    assert_eq!(queued, [0x1C, 0x0F, 0x1F]);
}

// === Unsupported long polls ===

#[test]
fn a_long_poll_silent_on_every_try_is_learned_unsupported_and_refused_afterwards() {
    let mut pair = Pair::new(&profile());
    pair.run(2);
    pair.machine.script(0x48, [None, None, None]);
    pair.session.enqueue(LongPoll::SendLastBill).expect("not known yet");
    pair.session.enqueue(LongPoll::SendLastBill).expect("not known yet");
    let first = pair.run_until_sent(&[0x01, 0x48]);
    pair.run(8);
    assert_eq!(
        pair.log.iter().filter(|s| s.bytes == [0x01, 0x48]).count(),
        3,
        "one timed-out exchange: the first try and two implied NACKs"
    );
    assert_eq!(pair.log[first + 3].bytes, [0x80]);
    assert_eq!(
        pair.take_events(),
        [
            SessionEvent::LinkUp,
            SessionEvent::Unsupported(0x48),
            SessionEvent::PollFailed {
                poll: LongPoll::SendLastBill,
                error: PollError::Unsupported { command: 0x48 },
            },
        ]
    );
    assert!(pair.session.unsupported().contains(&0x48));
    assert_eq!(
        pair.session.enqueue(LongPoll::SendLastBill),
        Err(EnqueueError::Unsupported { command: 0x48 })
    );
    assert_eq!(pair.session.link(), LinkState::Up);
}

#[test]
fn a_long_poll_whose_first_reply_was_lost_is_retried_and_its_answer_kept() {
    // In RTE mode the lost reply may have been an event; only the retry (an implied NACK) gets it
    // back. Moving on would acknowledge it away (found end to end with dropped replies).
    let mut pair = Pair::new(&profile());
    pair.run(2);
    pair.take_events();
    pair.machine.script(0x1C, [None, Some(hex(RTE_GAME_END_WIN_40))]);
    pair.session.enqueue(LongPoll::SendMeters).expect("supported");
    let first = pair.run_until_sent(&[0x01, 0x1C]);
    pair.run(6);
    assert_eq!(pair.log[first + 1].bytes, [0x01, 0x1C], "the retry follows directly");
    assert!(!pair.session.unsupported().contains(&0x1C));
    let events = pair.take_events();
    assert!(
        events.contains(&SessionEvent::RealTimeEvent(RealTimeEvent::GameEnded { win: 40 })),
        "{events:?}"
    );
    assert!(!events.iter().any(|e| matches!(e, SessionEvent::Unsupported(_))), "{events:?}");
}

#[test]
fn a_silent_shutdown_is_retried_and_reported_never_learned_unsupported() {
    // A regulator's shutdown must not vanish because one reply was lost on the line.
    let mut pair = Pair::new(&profile());
    pair.run(2);
    pair.take_events();
    pair.machine.script(0x01, [None, None, None]);
    pair.session.enqueue(LongPoll::Shutdown).expect("supported");
    let first = pair.run_until_sent(&hex(SHUTDOWN));
    pair.run(4);
    let tries = pair.log[first..].iter().filter(|s| s.bytes == hex(SHUTDOWN)).count();
    assert_eq!(tries, 3, "the first try and two implied NACKs");
    assert!(!pair.session.unsupported().contains(&0x01));
    assert!(pair.take_events().contains(&SessionEvent::PollFailed {
        poll: LongPoll::Shutdown,
        error: PollError::Timeout,
    }));
    assert!(pair.session.enqueue(LongPoll::Shutdown).is_ok(), "the command can be sent again");
}

#[test]
fn a_silent_long_poll_is_retried_not_learned_when_the_machine_had_stopped_answering() {
    let mut pair = Pair::new(&profile());
    pair.run(2);
    pair.take_events();
    // The machine goes quiet: the general poll fails first (80 81 81 81) …
    pair.machine.silent = true;
    pair.run(4);
    // … so the silence of the long poll after it says nothing about the long poll.
    pair.session.enqueue(LongPoll::SendMeters).expect("supported");
    pair.run(5);
    let tail: Vec<Vec<u8>> = pair.sent()[6..].to_vec();
    assert_eq!(
        tail,
        [vec![0x80], vec![0x01, 0x1C], vec![0x01, 0x1C], vec![0x01, 0x1C], vec![0x80]]
    );
    assert!(!pair.session.unsupported().contains(&0x1C));
    assert_eq!(
        pair.take_events(),
        [SessionEvent::PollFailed { poll: LongPoll::SendMeters, error: PollError::Timeout }]
    );
    assert_eq!(pair.session.stats().failed_exchanges, 2);
}

#[test]
fn profile_unsupported_long_polls_are_never_queued() {
    let egt = built_in("egt");
    let mut pair = Pair::new(&egt);
    let poll = LongPoll::SendExtendedMeters { alternate: false, game: 0, meters: vec![] };
    assert_eq!(pair.session.enqueue(poll), Err(EnqueueError::Unsupported { command: 0x6F }));
    // EGT has RTE off: LP0E is not sent at link-up either.
    pair.run(4);
    assert!(pair.log.iter().all(|s| s.bytes.len() == 1), "{:02X?}", pair.sent());
}

#[test]
fn a_poll_that_cannot_be_encoded_is_refused_when_queued() {
    let mut pair = Pair::new(&profile());
    let poll = LongPoll::SendSelectedMeters { game: 0, meters: vec![0x00; 11] };
    assert!(matches!(pair.session.enqueue(poll), Err(EnqueueError::Encode(_))));
}

// === The durability hold ===

#[test]
fn nothing_new_is_sent_until_the_events_are_confirmed() {
    let mut pair = Pair::new(&profile());
    pair.auto_confirm = false;
    pair.take_out = false;
    pair.machine.general.push_back(vec![0x11]);
    pair.run(2); // 80 81 → slot door opened
    assert!(pair.session.is_holding());
    // Confirming before the events are taken out confirms nothing.
    pair.session.confirm_events();
    assert!(pair.session.is_holding());
    let events = pair.take_events();
    assert_eq!(events, [SessionEvent::LinkUp, SessionEvent::Exception(Exception::SlotDoorOpened)]);
    assert_eq!(pair.step().map(|s| s.bytes), None, "the implied ACK waits");
    assert_eq!(pair.session.poll_timeout(), None, "no busy wake-ups while holding");
    pair.now += Duration::from_secs(3);
    pair.session.handle_timeout(pair.now);
    assert_eq!(pair.session.poll_transmit(pair.now), None);
    pair.session.confirm_events();
    assert!(!pair.session.is_holding());
    assert_eq!(pair.step().map(|s| s.bytes), Some(vec![0x80]), "now the `80` ACKs the exception");
}

#[test]
fn a_data_reply_is_held_until_confirmed_too() {
    let mut pair = Pair::new(&profile());
    pair.auto_confirm = false;
    pair.session.enqueue(LongPoll::SendCurrentCredits).expect("supported");
    pair.run(3); // 80 81 1A
    assert_eq!(
        pair.take_events(),
        [
            SessionEvent::LinkUp,
            SessionEvent::Reply {
                poll: LongPoll::SendCurrentCredits,
                reply: Reply::CurrentCredits(10_000)
            }
        ]
    );
    assert_eq!(pair.step().map(|s| s.bytes), None);
    pair.session.confirm_events();
    assert!(pair.step().is_some());
}

#[test]
fn retries_are_not_held_back() {
    // A corrupt answer produces no event, so the retry (an implied NACK) goes out unconfirmed.
    let mut pair = Pair::new(&profile());
    pair.auto_confirm = false;
    pair.run(2);
    pair.take_events();
    pair.machine.script(0x1A, [Some(hex("01 1A 00 01 00 00 1F A7"))]);
    pair.session.enqueue(LongPoll::SendCurrentCredits).expect("supported");
    let first = pair.run_until_sent(&[0x01, 0x1A]);
    assert!(!pair.session.is_holding());
    assert_eq!(pair.step().map(|s| s.retry), Some(true));
    assert_eq!(pair.log.len(), first + 2);
}

// === Timing ===

#[test]
fn polls_to_the_machine_are_spaced_by_the_profile_poll_spacing() {
    let mut p = profile();
    p.timing.poll_spacing = Duration::from_millis(300);
    let mut pair = Pair::new(&p);
    pair.machine.general.extend([vec![0x51], vec![0x11]]);
    pair.session.enqueue(LongPoll::SendMeters).expect("supported");
    pair.run(30);
    let to_machine: Vec<&Sent> = pair.log.iter().filter(|s| s.bytes != [0x80]).collect();
    for w in to_machine.windows(2) {
        let gap = w[1].at - w[0].at;
        assert!(gap >= Duration::from_millis(300), "{:02X?} after {gap:?}", w[1].bytes);
    }
    // The sync poll is addressed to nobody: the poll behind it follows after its reply window.
    let window = CHARACTER_TIME + p.timing.reply_timeout;
    assert_eq!(pair.log[1].at - pair.log[0].at, window);
    // Nothing is polled slower than necessary either: the next cycle starts on the spacing.
    assert_eq!(pair.log[2].at - pair.log[1].at, Duration::from_millis(300));
}

#[test]
fn the_reply_deadline_covers_both_transmissions_and_the_reply_window() {
    let mut p = profile();
    p.timing.post_wakeup_delay = Duration::from_millis(2);
    let mut pair = Pair::new(&p);
    pair.run(2);
    pair.machine.script(0x1C, [None]);
    pair.machine.script(0x01, [None]);
    pair.session.enqueue(LongPoll::SendMeters).expect("supported");
    pair.session.enqueue(LongPoll::Shutdown).expect("supported");
    pair.run_until_sent(&[0x01, 0x1C]);
    // 2 request bytes + the 36-byte LP1C reply, the wakeup pause, the 20 ms window.
    let expected = CHARACTER_TIME * (2 + 36) + Duration::from_millis(2 + 20);
    assert_eq!(pair.session.poll_timeout(), Some(pair.now + expected));
    pair.run_until_sent(&hex(SHUTDOWN));
    let expected = CHARACTER_TIME * (4 + 1) + Duration::from_millis(2 + 20);
    assert_eq!(pair.session.poll_timeout(), Some(pair.now + expected));
}

#[test]
fn a_lone_ack_is_settled_only_after_the_inter_byte_limit() {
    let mut pair = Pair::new(&profile());
    pair.run(2);
    pair.take_events();
    pair.machine.script(0x01, [None]);
    pair.session.enqueue(LongPoll::Shutdown).expect("supported");
    pair.run_until_sent(&hex(SHUTDOWN));
    pair.now += LATENCY;
    pair.feed(&[0x01]);
    let settle = pair.now + Duration::from_millis(5);
    assert_eq!(pair.session.poll_timeout(), Some(settle), "busy (`01 00`) could still follow");
    pair.session.handle_timeout(settle - Duration::from_micros(1));
    assert_eq!(pair.take_events(), []);
    pair.session.handle_timeout(settle);
    assert_eq!(
        pair.take_events(),
        [SessionEvent::Reply { poll: LongPoll::Shutdown, reply: Reply::Ack }]
    );
}

// === ROM signature ===

#[test]
fn a_deferred_rom_signature_is_reported_with_the_seed_that_asked_for_it() {
    let mut pair = Pair::new(&profile());
    pair.run(2);
    let mut signature = vec![0x01, 0x21, 0xCD, 0xAB];
    append_crc(&mut signature);
    pair.machine.general.push_back(signature);
    pair.session.enqueue(LongPoll::RomSignature { seed: 0x1234 }).expect("supported");
    pair.run(4); // 21 (ACK), 80, 81 → signature, …
    let events = pair.take_events();
    assert_eq!(
        events[1..],
        [
            SessionEvent::Reply {
                poll: LongPoll::RomSignature { seed: 0x1234 },
                reply: Reply::Ack
            },
            SessionEvent::RomSignature { seed: Some(0x1234), signature: 0xABCD },
        ]
    );
}

// === Stray input ===

#[test]
fn bytes_outside_an_exchange_are_counted_and_ignored() {
    let mut pair = Pair::new(&profile());
    pair.run(2);
    pair.feed(&[0x55, 0xAA, 0x01]);
    assert_eq!(pair.session.stats().skipped_bytes, 3);
    pair.run(2);
    assert_eq!(pair.take_events(), [SessionEvent::LinkUp]);
}

#[test]
fn a_poll_queued_first_goes_ahead_of_those_already_queued() {
    let mut pair = Pair::new(&FirmwareProfile::generic());
    pair.run(2);
    // RTE enable (LP0E) was queued by the session at link-up; LP1F is asked to go before it.
    pair.session.enqueue(LongPoll::SendMeters).unwrap();
    pair.session.enqueue_first(LongPoll::SendMachineInfo).unwrap();
    let info = pair.run_until_sent(&[0x01, 0x1F]);
    let rte = pair.run_until_sent(&hex(RTE_ENABLE));
    let meters = pair.run_until_sent(&[0x01, 0x1C]);
    assert!(info < rte && rte < meters, "{info} {rte} {meters}");
}

#[test]
fn a_report_sent_again_after_its_ack_was_lost_is_counted_not_delivered_twice() {
    // The machine reports a game end, the host moves on (an implied ACK), but the machine loses
    // power before it hears it: after power-up it sends the same report again (§4.2).
    let mut rte = FirmwareProfile::generic();
    rte.rte.enable = true;
    let mut pair = Pair::new(&rte);
    pair.run(6);
    pair.take_events();
    pair.machine.general.push_back(hex(RTE_GAME_END_WIN_40));
    pair.run_until_sent(&[0x81]);
    pair.run(1);
    pair.machine.silent = true; // power off: the polls that carried the ACK go nowhere
    pair.run(4);
    pair.machine.silent = false;
    pair.machine.general.push_back(hex(RTE_GAME_END_WIN_40));
    pair.run(8);
    let ends = pair
        .take_events()
        .into_iter()
        .filter(|e| *e == SessionEvent::RealTimeEvent(RealTimeEvent::GameEnded { win: 40 }))
        .count();
    assert_eq!(ends, 1, "one game end, however often the machine sent it");
    assert_eq!(pair.session.stats().re_reports, 1);
}

#[test]
fn identical_reports_without_a_failure_between_are_both_delivered() {
    let mut rte = FirmwareProfile::generic();
    rte.rte.enable = true;
    let mut pair = Pair::new(&rte);
    pair.run(6);
    pair.take_events();
    let door = rte_frame(0x11);
    pair.machine.general.extend([door.clone(), door]);
    pair.run(8);
    let doors = pair
        .take_events()
        .into_iter()
        .filter(|e| {
            *e == SessionEvent::RealTimeEvent(RealTimeEvent::Exception(Exception::SlotDoorOpened))
        })
        .count();
    assert_eq!(doors, 2);
    assert_eq!(pair.session.stats().re_reports, 0);
}

#[test]
fn after_the_machine_stopped_answering_rte_is_turned_on_again_before_the_next_general_poll() {
    // It may have lost power, and its RTE setting with it; until RTE is back, it would answer a
    // meter poll with reports still pending, and those reports would lose their amounts.
    let mut rte = FirmwareProfile::generic();
    rte.rte.enable = true;
    let mut pair = Pair::new(&rte);
    pair.run(8);
    assert!(pair.session.rte_enabled());
    pair.machine.silent = true;
    pair.run(4); // at least one whole exchange fails, not enough for the link to go down
    assert_eq!(pair.session.link(), LinkState::Up);
    pair.machine.silent = false;
    let back = pair.log.len();
    pair.run(6);
    let after: Vec<&Vec<u8>> = pair.log[back..].iter().map(|s| &s.bytes).collect();
    let rte_at = after.iter().position(|b| **b == hex(RTE_ENABLE)).expect("LP0E sent again");
    // The first general poll after the silence is the one the machine answers again; the next
    // one must already find RTE on.
    let generals: Vec<usize> =
        after.iter().enumerate().filter(|(_, b)| ***b == [0x81]).map(|(i, _)| i).collect();
    assert!(generals.len() >= 2, "{after:02x?}");
    assert!(rte_at < generals[1], "LP0E before the next general poll: {after:02x?}");
}

// === Resuming after a restart ===

#[test]
fn a_resumed_session_first_sends_the_last_message_again_as_a_retry_without_a_sync_poll() {
    let mut pair = Pair::new(&profile());
    pair.session.resume(pair.now, &[0x81], false).expect("a general poll to this machine");
    // The machine re-sends its previous reply to the repeated poll (implied NACK, §4.2).
    pair.machine.general.push_back(vec![0x11]);
    let first = pair.step().expect("the resumed poll is due at once");
    assert_eq!((first.bytes, first.retry), (vec![0x81], true), "the exact bytes, as a retry");
    let stats = pair.session.stats();
    assert_eq!((stats.tries, stats.retries, stats.sync_polls), (1, 1, 0), "{stats:?}");
    assert_eq!(pair.step().map(|s| s.bytes), Some(vec![0x80]), "the `80` only after the answer");
}

#[test]
fn the_event_a_resumed_poll_brings_back_is_delivered_and_held_until_confirmed() {
    let mut pair = Pair::new(&profile());
    pair.auto_confirm = false;
    pair.session.resume(pair.now, &[0x81], false).expect("a general poll to this machine");
    pair.machine.general.push_back(vec![0x11]);
    pair.run(1);
    assert_eq!(
        pair.take_events(),
        [SessionEvent::LinkUp, SessionEvent::Exception(Exception::SlotDoorOpened)]
    );
    assert!(pair.session.is_holding());
    assert_eq!(pair.step().map(|s| s.bytes), None, "no implied ACK before the confirmation");
    assert_eq!(pair.session.poll_timeout(), None);
    pair.session.confirm_events();
    assert_eq!(pair.step().map(|s| s.bytes), Some(vec![0x80]), "now the `80` ACKs it");
}

#[test]
fn a_resumed_long_poll_pre_empted_by_an_rte_event_reports_it_and_is_asked_again() {
    let mut pair = Pair::new(&FirmwareProfile::generic());
    pair.auto_confirm = false;
    // The previous process sent LP1C with RTE on, and the machine answered with a game end
    // instead (§4.4); it re-sends that frame to the repeated poll.
    pair.machine.script(0x1C, [Some(hex(RTE_GAME_END_WIN_40))]);
    pair.session.resume(pair.now, &[0x01, 0x1C], true).expect("a long poll to this machine");
    let first = pair.step().expect("due at once");
    assert_eq!((first.bytes, first.retry), (vec![0x01, 0x1C], true));
    assert_eq!(
        pair.take_events(),
        [SessionEvent::LinkUp, SessionEvent::RealTimeEvent(RealTimeEvent::GameEnded { win: 40 })]
    );
    assert_eq!(pair.step().map(|s| s.bytes), None, "held until confirmed");
    pair.session.confirm_events();
    pair.auto_confirm = true;
    let again = pair.run_until_sent(&[0x01, 0x1C]);
    assert_eq!(pair.log[1].bytes, [0x80], "a different message before the poll is asked again");
    assert!(!pair.log[again].retry, "asked again as a new poll, not one more NACK");
    assert!(pair.take_events().contains(&SessionEvent::Reply {
        poll: LongPoll::SendMeters,
        reply: Reply::Meters(lp1c_meters())
    }));
}

#[test]
fn a_resumed_general_poll_is_read_with_the_rte_setting_of_the_previous_process() {
    // A lone address byte is exception 01 with RTE off, but an RTE frame cut short with RTE on
    // (codec module doc): taking it for an exception would invent one.
    let answers = |rte_on: bool| {
        let mut pair = Pair::new(&FirmwareProfile::generic());
        pair.machine.general.extend([vec![0x01], hex(RTE_GAME_END_WIN_40)]);
        pair.session.resume(pair.now, &[0x81], rte_on).expect("a general poll to this machine");
        pair.run(2);
        (pair.sent(), pair.take_events())
    };
    let (sent, events) = answers(true);
    assert_eq!(sent, [vec![0x81], vec![0x81]], "the cut-short frame is NACKed once more");
    assert!(events.contains(&SessionEvent::RealTimeEvent(RealTimeEvent::GameEnded { win: 40 })));
    assert!(!events.iter().any(|e| matches!(e, SessionEvent::Exception(_))), "{events:?}");
    let (sent, events) = answers(false);
    assert_eq!(sent[0], [0x81]);
    assert!(events.contains(&SessionEvent::Exception(Exception::from_code(0x01))), "{events:?}");
}

#[test]
fn resume_refuses_bytes_that_are_no_poll_to_this_machine_and_the_session_starts_normally() {
    type Expected = fn(&ResumeError) -> bool;
    let cases: [(&[u8], Expected); 7] = [
        (&[], |e| matches!(e, ResumeError::Decode(_))),
        (&[0x01, 0x99], |e| matches!(e, ResumeError::Decode(_))),
        (&[0x01, 0x01, 0x51, 0x09], |e| matches!(e, ResumeError::Decode(_))), // bad CRC
        (&[0x81, 0x81], |e| matches!(e, ResumeError::Decode(_))),
        (&[0x80], |e| *e == ResumeError::NotForThisMachine),
        (&[0x82], |e| *e == ResumeError::NotForThisMachine),
        (&[0x02, 0x1C], |e| *e == ResumeError::NotForThisMachine),
    ];
    for (bytes, expected) in cases {
        let mut pair = Pair::new(&profile());
        let error = pair.session.resume(pair.now, bytes, false).expect_err("refused");
        assert!(expected(&error), "{bytes:02X?}: {error:?}");
        assert!(!pair.session.has_retry_pending());
        let first = pair.step().expect("due at once");
        assert_eq!((first.bytes, first.retry), (vec![0x80], false), "{bytes:02X?}");
    }
    let mut pair = Pair::new(&profile());
    pair.run(1);
    assert_eq!(pair.session.resume(pair.now, &[0x81], false), Err(ResumeError::AlreadyStarted));
}

// === Follow-ups owed across a restart ===

#[test]
fn a_follow_up_is_owed_from_its_exception_until_its_answer() {
    let mut pair = Pair::new(&profile());
    pair.machine.general.push_back(vec![0x51]);
    pair.run_until_sent(&[0x81]);
    let owed: Vec<_> = pair.session.owed_follow_ups().to_vec();
    assert_eq!(owed, [(LongPoll::SendHandpayInfo, Exception::HandpayPending)]);
    pair.run_until_sent(&[0x01, 0x1B]);
    assert!(pair.session.owed_follow_ups().is_empty(), "answered: nothing owed");
}

#[test]
fn a_restored_follow_up_goes_first_and_one_the_machine_no_longer_answers_is_reported_lost() {
    for silent_first_try_after_an_answer in [false, true] {
        let mut pair = Pair::new(&profile());
        pair.session.restore_follow_ups([(LongPoll::SendLastBill, Exception::BillAccepted)]);
        pair.machine.script(0x48, [None, None, None]);
        if !silent_first_try_after_an_answer {
            // Silent from the start: the poll fails rather than being learned unsupported.
            pair.machine.silent = true;
        }
        pair.run(30);
        let events = pair.take_events();
        let lost: Vec<_> =
            events.iter().filter(|e| matches!(e, SessionEvent::FollowUpLost { .. })).collect();
        if silent_first_try_after_an_answer {
            assert!(pair.sent().contains(&vec![0x01, 0x48]), "{:02X?}", pair.sent());
            assert_eq!(lost.len(), 1, "{events:?}");
            assert!(
                matches!(
                    lost[0],
                    SessionEvent::FollowUpLost { exception: Exception::BillAccepted, .. }
                ),
                "{lost:?}"
            );
            assert!(pair.session.owed_follow_ups().is_empty());
        } else {
            assert!(lost.is_empty(), "nothing is sent while the link is down: {events:?}");
            assert_eq!(pair.session.owed_follow_ups().len(), 1, "still owed");
        }
    }
}

#[test]
fn a_resumed_follow_up_that_fails_is_reported_lost_once() {
    let mut pair = Pair::new(&profile());
    pair.session
        .restore_follow_ups([(LongPoll::SendMachineInfo, Exception::OperatorChangedOptions)]);
    pair.session.resume(pair.now, &[0x01, 0x1F], false).expect("resumed");
    pair.machine.script(0x1F, [None, None, None, None, None, None]);
    pair.run(40);
    let events = pair.take_events();
    let lost = events.iter().filter(|e| matches!(e, SessionEvent::FollowUpLost { .. })).count();
    assert_eq!(lost, 1, "sent {:02X?}; events {events:?}", pair.sent());
    assert!(pair.session.owed_follow_ups().is_empty());
}

#[test]
fn noise_that_never_stops_does_not_hold_the_sync_poll_open() {
    // A peer that floods the line (#15): the sync poll waits out noise, but not for ever, or
    // the exchange never ends and the poller can neither poll nor stop.
    let profile = profile();
    let start = Instant::now();
    let mut session = HostSession::new(addr(1), &profile, start);
    let sync = session.poll_transmit(start).expect("sync poll");
    assert_eq!(sync.message, HostMessage::SyncPoll);
    let mut now = start;
    while session.is_exchanging() {
        assert!(now - start < Duration::from_secs(1), "the sync poll is still open after 1 s");
        now += Duration::from_millis(1);
        session.handle_input(now, &[Character { byte: 0x00, wakeup: false }]);
        session.handle_timeout(now);
    }
    let general = session.poll_transmit(now).expect("the cycle goes on");
    assert_eq!(general.message, HostMessage::GeneralPoll(addr(1)));
}

#[test]
fn a_line_that_cannot_be_opened_takes_the_link_down_at_once_and_only_once() {
    let profile = profile();
    let mut session = HostSession::new(addr(1), &profile, Instant::now());
    session.line_lost();
    session.line_lost();
    assert_eq!(session.link(), LinkState::Down);
    assert_eq!(session.poll_event(), Some(SessionEvent::LinkDown));
    assert_eq!(session.poll_event(), None, "reported once");
    assert_eq!(session.stats().timeouts, 0);
}

#[test]
fn a_restored_follow_up_the_profile_now_rules_out_is_reported_lost_at_once() {
    let mut profile = profile();
    profile.unsupported_long_polls.insert(0x1B);
    let mut pair = Pair::new(&profile);
    pair.session.restore_follow_ups([(LongPoll::SendHandpayInfo, Exception::HandpayPending)]);
    let events = pair.take_events();
    assert!(
        matches!(
            events.as_slice(),
            [SessionEvent::FollowUpLost { exception: Exception::HandpayPending, .. }]
        ),
        "{events:?}"
    );
    assert!(pair.session.owed_follow_ups().is_empty());
}
