//! The simulator's machine model driven with injected time: no sockets, no sleeps. Every test
//! plays the host by hand, byte for byte, and checks the machine against sas-protocol.md and
//! against its own ground-truth ledger.

// clippy.toml allows unwrap in #[test] functions only; the helpers of this test crate need it too.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use firmware_protocols::sas::codec::Request;
use firmware_protocols::sas::message::{DateTime, MeterPoll, TicketMessage};
use firmware_protocols::sas::{Address, HostMessage, LongPoll, MeterCode, RealTimeEvent, Reply};
use slotgate::simulator::config::{MachineConfig, Weighted};
use slotgate::simulator::ledger::{
    Entry, EventData, HandpayKind, LinkState, LossReason, PaidBy, Record,
};
use slotgate::simulator::machine::{CHIRP_AFTER, CHIRP_INTERVAL, Machine, MachineFault};

const ADDR: u8 = 1;

fn addr() -> Address {
    Address::new(ADDR).unwrap()
}

/// A machine and a hand-driven host with its own clock.
struct Rig {
    m: Machine,
    now: Instant,
    ledger: Vec<Record>,
}

impl Rig {
    fn new(cfg: MachineConfig) -> Self {
        let now = Instant::now();
        let wall = humantime::parse_rfc3339("2026-03-01T12:00:00Z").unwrap();
        let m = Machine::new(cfg, now, wall).unwrap();
        let mut rig = Self { m, now, ledger: Vec::new() };
        rig.collect();
        rig
    }

    /// A machine with games switched off: only what the test does happens.
    fn idle() -> Self {
        let mut cfg = MachineConfig::new(0, ADDR, "SIM000000");
        cfg.play.games_per_minute = 0.0;
        Self::new(cfg)
    }

    fn collect(&mut self) {
        self.ledger.extend(self.m.drain_ledger());
    }

    /// A synchronised machine playing its first 3 s game; the game's number.
    fn mid_game() -> (Self, u64) {
        let mut cfg = playing(30.0);
        cfg.play.game_duration = Duration::from_secs(3);
        let mut rig = Self::new(cfg);
        rig.sync();
        rig.until(Duration::from_secs(60), |m| m.game_in_progress().is_some());
        let game = rig.m.game_in_progress().unwrap();
        (rig, game)
    }

    /// Lets time pass without any host traffic.
    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.m.handle_timeout(self.now);
        self.collect();
    }

    /// Lets time pass while the host keeps the link alive with sync polls every 200 ms.
    fn advance_polling(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            let step = CHIRP_INTERVAL.min(end - self.now);
            self.advance(step);
            self.send(&[0x80]);
        }
    }

    /// Advances (polling) until `done` holds, at most `limit`.
    fn until(&mut self, limit: Duration, done: impl Fn(&Machine) -> bool) {
        let end = self.now + limit;
        while !done(&self.m) {
            assert!(self.now < end, "condition not reached within {limit:?}");
            self.advance_polling(Duration::from_millis(100));
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        let request = Request { bytes: bytes.to_vec(), message: HostMessage::decode(bytes) };
        let tx = self.m.handle_request(self.now, &request);
        self.collect();
        tx.map(|t| t.bytes)
    }

    fn long_poll(&mut self, poll: LongPoll) -> Option<Vec<u8>> {
        let bytes = HostMessage::LongPoll(addr(), poll).encode().unwrap();
        self.send(&bytes)
    }

    fn decoded(&mut self, poll: LongPoll) -> Reply {
        let bytes = self.long_poll(poll).expect("a data reply");
        Reply::decode_frame(addr(), &bytes).unwrap()
    }

    /// `80` then `81`: synchronises a fresh machine and returns its first general-poll answer.
    fn sync(&mut self) -> Option<Vec<u8>> {
        assert_eq!(self.send(&[0x80]), None, "nobody answers the sync poll");
        self.send(&[0x81])
    }

    /// ACKs the previous report with `80` and reads the next one with `81`.
    fn next_exception(&mut self) -> Option<Vec<u8>> {
        self.send(&[0x80]);
        self.send(&[0x81])
    }

    fn count(&self, pred: impl Fn(&Entry) -> bool) -> usize {
        self.ledger.iter().filter(|r| pred(&r.entry)).count()
    }

    fn exception_codes(&self) -> Vec<u8> {
        self.ledger
            .iter()
            .filter_map(|r| match r.entry {
                Entry::Exception { code, .. } => Some(code),
                _ => None,
            })
            .collect()
    }
}

fn playing(rate: f64) -> MachineConfig {
    let mut cfg = MachineConfig::new(0, ADDR, "SIM000000");
    cfg.play.games_per_minute = rate;
    cfg.play.bets = "1:1,5:1,25:1".parse().unwrap();
    cfg.play.win_multipliers = "0:6,1:2,2:1,10:1".parse().unwrap();
    cfg
}

#[test]
fn a_fresh_machine_ignores_its_own_polls_until_it_sees_another_address() {
    let mut rig = Rig::idle();
    assert_eq!(rig.send(&[0x81]), None);
    assert_eq!(rig.send(&[0x01, 0x1A]), None);
    assert_eq!(rig.send(&[0x82]), None, "a general poll to address 2");
    assert!(!rig.m.is_synchronised());
    assert_eq!(rig.send(&[0x81]), Some(vec![0x00]), "the first own poll is answered");
    assert!(rig.m.is_synchronised());
    assert_eq!(rig.count(|e| matches!(e, Entry::Link { state: LinkState::Synchronised, .. })), 1);
}

#[test]
fn no_implied_ack_for_30_seconds_drops_sync() {
    let mut rig = Rig::idle();
    rig.sync();
    // The host repeats the same general poll forever: NACK, final NACK, new poll … never an ACK.
    for _ in 0..34 {
        rig.advance(Duration::from_secs(1));
        rig.send(&[0x81]);
    }
    assert!(!rig.m.is_synchronised());
    assert!(rig.ledger.iter().any(|r| matches!(
        r.entry,
        Entry::Link { state: LinkState::SyncLost, reason: "no implied ACK for 30 s" }
    )));
    assert_eq!(rig.send(&[0x81]), None);
    assert_eq!(rig.sync(), Some(vec![0x00]), "a sync poll recovers the link");
}

#[test]
fn a_repeated_poll_gets_the_previous_reply_and_the_third_gets_nothing() {
    let mut cfg = MachineConfig::new(0, ADDR, "SIM000000");
    cfg.play.games_per_minute = 0.0;
    cfg.queue_size = 2;
    let mut rig = Rig::new(cfg);
    rig.sync();
    // Four bill-rejected exceptions into a queue of two: 70 (priority), then 2B, 2B.
    rig.m.inject(rig.now, MachineFault::OverflowBurst);
    rig.collect();
    // The sync's own `81` is still waiting for its ACK: `80` first, then the next report.
    assert_eq!(rig.next_exception(), Some(vec![0x70]));
    assert_eq!(rig.send(&[0x81]), Some(vec![0x70]), "implied NACK: same answer");
    assert_eq!(rig.send(&[0x81]), None, "final NACK: no answer");
    assert_eq!(rig.count(|e| matches!(e, Entry::ExceptionAcknowledged { .. })), 0);
    assert_eq!(rig.send(&[0x81]), Some(vec![0x70]), "still queued after the final NACK");
    assert_eq!(rig.next_exception(), Some(vec![0x2B]), "80 acknowledged the 70");
    assert!(
        rig.ledger.iter().any(|r| matches!(
            r.entry,
            Entry::ExceptionAcknowledged { code: 0x70, rte: false, .. }
        ))
    );
}

#[test]
fn a_repeated_long_poll_is_not_executed_again() {
    let mut rig = Rig::idle();
    rig.sync();
    let first = rig.long_poll(LongPoll::SendDateTime);
    rig.advance(Duration::from_secs(2));
    rig.send(&[0x81]);
    // A different poll in between: a fresh answer, two seconds later.
    let fresh = rig.long_poll(LongPoll::SendDateTime);
    assert_ne!(first, fresh);
    rig.advance(Duration::from_secs(2));
    let repeat = rig.long_poll(LongPoll::SendDateTime);
    assert_eq!(repeat, fresh, "the stale reply, not a new reading of the clock");

    rig.send(&[0x81]);
    assert_eq!(rig.long_poll(LongPoll::Shutdown), Some(vec![ADDR]));
    assert_eq!(rig.long_poll(LongPoll::Shutdown), Some(vec![ADDR]));
    assert_eq!(rig.count(|e| matches!(e, Entry::Command { name: "shutdown", .. })), 1);
}

#[test]
fn an_exception_leaves_the_queue_only_when_acknowledged() {
    let mut rig = Rig::idle();
    rig.sync();
    rig.m.inject(rig.now, MachineFault::PowerCycle);
    rig.advance(Duration::from_secs(4));
    rig.sync();
    assert_eq!(rig.m.queued_exceptions(), 2, "18 and 17");
    rig.send(&[0x81]);
    assert_eq!(rig.m.queued_exceptions(), 2, "reported but not yet acknowledged");
    rig.send(&[0x80]);
    assert_eq!(rig.m.queued_exceptions(), 1);
}

#[test]
fn a_bad_crc_is_nacked_and_unsupported_polls_get_silence() {
    let mut rig = Rig::idle();
    rig.sync();
    // `01 01 51 08` with a broken CRC.
    assert_eq!(rig.send(&[0x01, 0x01, 0x52, 0x08]), Some(vec![0x81]));
    assert!(rig.m.is_enabled_by_host(), "nothing was executed");
    // Corrected retry right after the NACK: executed.
    assert_eq!(rig.send(&[0x01, 0x01, 0x51, 0x08]), Some(vec![0x01]));
    assert!(!rig.m.is_enabled_by_host());
    // LP56 (enabled game numbers) is not implemented: silence, never a NACK.
    assert_eq!(rig.send(&[0x01, 0x56]), None);
    // LP0E with flag 2 is invalid data: NACK.
    let mut lp0e = vec![0x01, 0x0E, 0x02];
    firmware_protocols::crc::append_crc(&mut lp0e);
    assert_eq!(rig.send(&lp0e), Some(vec![0x81]));
}

#[test]
fn shutdown_mid_game_lets_the_game_finish_and_starts_no_new_one_until_startup() {
    let (mut rig, game) = Rig::mid_game();
    assert_eq!(rig.long_poll(LongPoll::Shutdown), Some(vec![ADDR]));
    assert_eq!(rig.m.game_in_progress(), Some(game), "the game in progress continues");
    rig.advance_polling(Duration::from_secs(120));
    assert_eq!(rig.m.game_in_progress(), None);
    assert_eq!(rig.m.games_started(), game, "no game started while shut down");
    assert!(
        rig.ledger
            .iter()
            .any(|r| matches!(r.entry, Entry::Game { game_number, .. } if game_number == game))
    );

    rig.send(&[0x81]);
    assert_eq!(rig.long_poll(LongPoll::Startup), Some(vec![ADDR]));
    rig.until(Duration::from_secs(60), |m| m.games_started() > game);
    let names: Vec<_> = rig
        .ledger
        .iter()
        .filter_map(|r| match r.entry {
            Entry::Command { name, .. } => Some(name),
            _ => None,
        })
        .collect();
    assert_eq!(names, ["shutdown", "startup"]);
}

#[test]
fn closing_play_lets_the_game_in_progress_finish_and_starts_no_other() {
    let (mut rig, game) = Rig::mid_game();
    rig.m.close_play();
    assert_eq!(rig.m.game_in_progress(), Some(game), "the game in progress continues");
    rig.advance_polling(Duration::from_secs(300));
    assert_eq!((rig.m.game_in_progress(), rig.m.games_started()), (None, game));
    assert_eq!(rig.count(|e| matches!(e, Entry::Game { .. })), game as usize, "it ended");

    // Closed between games too: the next game, already scheduled, never starts.
    let mut rig = Rig::new(playing(30.0));
    rig.sync();
    rig.m.close_play();
    rig.advance_polling(Duration::from_secs(300));
    assert_eq!(rig.m.games_started(), 0);
}

#[test]
fn a_power_cycle_queues_18_and_17_keeps_the_queue_and_needs_a_new_sync() {
    let mut cfg = playing(30.0);
    cfg.faults.power_off_duration = Duration::from_secs(3);
    let mut rig = Rig::new(cfg);
    rig.sync();
    rig.until(Duration::from_secs(60), |m| m.game_in_progress().is_some());
    let before = rig.m.queued_exceptions();
    assert!(before >= 2, "at least a bill and 7E wait");
    let game = rig.m.game_in_progress();

    rig.m.inject(rig.now, MachineFault::PowerCycle);
    rig.collect();
    assert!(!rig.m.is_powered());
    assert_eq!(rig.send(&[0x80]), None);
    assert_eq!(rig.send(&[0x81]), None, "no answer without power");
    rig.advance(Duration::from_secs(3));
    assert!(rig.m.is_powered());
    assert_eq!(rig.m.meters().power_resets, 1);
    assert_eq!(rig.m.queued_exceptions(), before + 2, "the queue survived, plus 18 and 17");
    assert_eq!(rig.m.game_in_progress(), game, "the interrupted game resumes");

    assert_eq!(rig.send(&[0x81]), None, "sync lost: own polls ignored");
    let mut reported = vec![rig.sync().unwrap()[0]];
    while reported.last() != Some(&0x00) {
        reported.push(rig.next_exception().unwrap()[0]);
    }
    let n = reported.len();
    assert_eq!(&reported[n - 3..], [0x18, 0x17, 0x00], "{reported:02X?}");
    let tail = &rig.exception_codes()[..];
    assert!(tail.windows(2).any(|w| w == [0x18, 0x17]));
}

#[test]
fn a_ram_clear_zeroes_every_meter_loses_the_queue_and_queues_3a() {
    let mut cfg = playing(60.0);
    cfg.play.max_games = Some(3);
    let mut rig = Rig::new(cfg);
    rig.sync();
    rig.until(Duration::from_secs(120), |m| {
        m.games_started() == 3 && m.game_in_progress().is_none()
    });
    let queued = rig.m.queued_exceptions();
    assert!(queued > 0);
    let before = rig.m.meters().clone();
    assert!(before.coin_in > 0);

    rig.m.inject(rig.now, MachineFault::RamClear);
    rig.collect();
    assert_eq!(*rig.m.meters(), Default::default());
    let reset = rig.ledger.iter().find_map(|r| match &r.entry {
        Entry::MetersReset { reason: "ram_clear", before } => Some(before.clone()),
        _ => None,
    });
    assert_eq!(reset, Some(before));
    let lost =
        rig.count(|e| matches!(e, Entry::ExceptionLost { reason: LossReason::RamClear, .. }));
    assert_eq!(lost, queued);
    assert_eq!(rig.next_exception(), Some(vec![0x3A]));
    let Reply::Meters(m) = rig.decoded(LongPoll::SendMeters) else { panic!("LP1C") };
    assert_eq!(m, Default::default());
}

#[test]
fn an_overflowing_queue_drops_the_oldest_raises_70_and_the_ledger_marks_the_loss() {
    let mut cfg = MachineConfig::new(0, ADDR, "SIM000000");
    cfg.play.games_per_minute = 0.0;
    cfg.queue_size = 3;
    let mut rig = Rig::new(cfg);
    rig.sync();
    rig.m.inject(rig.now, MachineFault::OverflowBurst);
    rig.collect();
    // 3 + 5 bursts into a queue of 3: five are lost, one 70 (sequence 5, raised at the first
    // loss) is queued apart.
    let lost: Vec<u64> = rig
        .ledger
        .iter()
        .filter_map(|r| match r.entry {
            Entry::ExceptionLost {
                exception_seq,
                reason: LossReason::Overflow,
                code: 0x2B,
                ..
            } => Some(exception_seq),
            _ => None,
        })
        .collect();
    assert_eq!(lost, [1, 2, 3, 4, 6]);
    assert_eq!(rig.exception_codes().iter().filter(|&&c| c == 0x70).count(), 1);
    assert_eq!(rig.m.queued_exceptions(), 4);
    assert_eq!(rig.next_exception(), Some(vec![0x70]), "priority first");
    for _ in 0..3 {
        assert_eq!(rig.next_exception(), Some(vec![0x2B]));
    }
    assert_eq!(rig.next_exception(), Some(vec![0x00]));
    let acked: Vec<u64> = rig
        .ledger
        .iter()
        .filter_map(|r| match r.entry {
            Entry::ExceptionAcknowledged { exception_seq, code: 0x2B, .. } => Some(exception_seq),
            _ => None,
        })
        .collect();
    assert_eq!(acked, [7, 8, 9], "only the survivors reached the host");
}

#[test]
fn chirps_start_5_s_after_the_last_poll_and_repeat_every_200_ms() {
    let mut rig = Rig::idle();
    rig.sync();
    let start = rig.now;
    let mut chirps = Vec::new();
    for _ in 0..499 {
        rig.advance(Duration::from_millis(10));
        while let Some(tx) = rig.m.poll_transmit() {
            assert!(tx.wakeup, "a chirp carries the wakeup bit");
            assert_eq!(tx.bytes, [ADDR]);
            chirps.push(rig.now - start);
        }
    }
    assert!(chirps.is_empty(), "nothing before 5 s");
    for _ in 0..50 {
        rig.advance(Duration::from_millis(10));
        while let Some(tx) = rig.m.poll_transmit() {
            assert_eq!((tx.bytes, tx.wakeup), (vec![ADDR], true));
            chirps.push(rig.now - start);
        }
    }
    assert_eq!(chirps.first(), Some(&CHIRP_AFTER));
    assert!(chirps.windows(2).all(|w| w[1] - w[0] == CHIRP_INTERVAL), "{chirps:?}");
    assert_eq!(chirps.len(), 3, "at 5.0, 5.2 and 5.4 s");
    assert!(!rig.m.is_synchronised(), "a loop break loses sync");
    assert_eq!(rig.count(|e| matches!(e, Entry::Link { state: LinkState::LoopBreak, .. })), 1);
    rig.sync();
    rig.advance(Duration::from_secs(1));
    assert_eq!(rig.m.poll_transmit(), None, "a poll ends the chirping");
}

#[test]
fn rte_frames_carry_the_bet_the_coin_in_after_the_bet_and_the_win() {
    let mut cfg = MachineConfig::new(0, ADDR, "SIM000000");
    cfg.play.games_per_minute = 30.0;
    cfg.play.max_games = Some(1);
    cfg.play.bets = Weighted::constant(25);
    cfg.play.win_multipliers = Weighted::constant(4);
    cfg.bills = vec![20];
    cfg.initial_meters = 123_456;
    let mut rig = Rig::new(cfg);
    rig.sync();
    // `01 0E 01 45 D1`: RTE on.
    assert_eq!(rig.send(&[0x01, 0x0E, 0x01, 0x45, 0xD1]), Some(vec![ADDR]));
    assert!(rig.m.rte());
    rig.until(Duration::from_secs(60), |m| {
        m.games_started() == 1 && m.game_in_progress().is_none()
    });

    let mut events = Vec::new();
    rig.send(&[0x80]);
    loop {
        let frame = rig.send(&[0x81]).unwrap();
        let Reply::Event(event) = Reply::decode_frame(addr(), &frame).unwrap() else {
            panic!("RTE answers with frames")
        };
        rig.send(&[0x80]);
        if event == RealTimeEvent::Exception(firmware_protocols::sas::Exception::NoActivity) {
            break;
        }
        events.push(event);
    }
    assert_eq!(
        events,
        [
            RealTimeEvent::GameSelected { game: 1 },
            RealTimeEvent::BillAccepted { country: 0, denomination_code: 4, count: 1 },
            RealTimeEvent::GameStarted {
                credits_wagered: 25,
                total_coin_in: 123_481,
                wager_type: 0x81,
                progressive_group: 0
            },
            RealTimeEvent::GameEnded { win: 100 },
        ]
    );
}

#[test]
fn in_rte_mode_a_waiting_event_answers_a_long_poll_instead() {
    let mut cfg = MachineConfig::new(0, ADDR, "SIM000000");
    cfg.play.games_per_minute = 0.0;
    cfg.rte_at_power_up = true;
    let mut rig = Rig::new(cfg);
    rig.sync();
    rig.m.inject(rig.now, MachineFault::OverflowBurst);
    let frame = rig.long_poll(LongPoll::SendCurrentCredits).unwrap();
    assert_eq!(
        Reply::decode_frame(addr(), &frame),
        Ok(Reply::Event(RealTimeEvent::Exception(
            firmware_protocols::sas::Exception::ExceptionBufferOverflow
        )))
    );
    // Repeating the long poll is an implied NACK of the event: the same frame again.
    assert_eq!(rig.long_poll(LongPoll::SendCurrentCredits), Some(frame));
}

#[test]
fn meters_stay_consistent_with_the_ledger() {
    let mut cfg = playing(20.0);
    cfg.play.cashout_probability = 0.2;
    cfg.play.handpay_limit = 200;
    cfg.play.handpay_duration = Duration::from_secs(20);
    cfg.operations.door_openings_per_hour = 6.0;
    cfg.initial_meters = 99_999_000;
    cfg.seed = 42;
    let mut rig = Rig::new(cfg);
    // Four hours of play with nobody polling (the machine chirps, plays on, overflows).
    for _ in 0..(4 * 3600) {
        rig.advance(Duration::from_secs(1));
        while rig.m.poll_transmit().is_some() {}
    }
    rig.m.stop(rig.now);
    rig.collect();
    let m = rig.m.meters().clone();
    let sum = |f: &dyn Fn(&Entry) -> Option<u64>| {
        rig.ledger.iter().filter_map(|r| f(&r.entry)).sum::<u64>()
    };
    let started: Vec<u64> = rig
        .ledger
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::Exception {
                event: Some(EventData::GameStarted { credits_wagered, .. }),
                ..
            } => Some(*credits_wagered),
            _ => None,
        })
        .collect();
    let in_progress = rig.ledger.iter().find_map(|r| match r.entry {
        Entry::Stop { game_in_progress, .. } => Some(game_in_progress),
        _ => None,
    });
    let in_progress = in_progress.expect("a stop record");
    let games = rig.count(|e| matches!(e, Entry::Game { .. }));
    assert!(games > 500, "{games} games in four hours at 20/min");
    assert_eq!(started.len() as u64, m.games_played);
    assert_eq!(games as u64 + u64::from(in_progress.is_some()), m.games_played);
    assert_eq!(m.games_won + m.games_lost, games as u64);
    let initial = 99_999_000;
    assert_eq!(m.coin_in - initial, started.iter().sum::<u64>(), "coin in = Σ bets");
    let machine_wins = sum(&|e| match e {
        Entry::Game { win, paid_by: PaidBy::Machine, .. } => Some(*win),
        _ => None,
    });
    let handpaid_wins = sum(&|e| match e {
        Entry::Game { win, paid_by: PaidBy::Handpay, .. } => Some(*win),
        _ => None,
    });
    let jackpots_paid = sum(&|e| match e {
        Entry::Handpay { kind: HandpayKind::Jackpot, credits, .. } => Some(*credits),
        _ => None,
    });
    assert!(handpaid_wins > 0, "the test should cover handpays");
    let pending_jackpot = if rig.m.handpay_pending() { handpaid_wins - jackpots_paid } else { 0 };
    assert_eq!(jackpots_paid + pending_jackpot, handpaid_wins);
    assert_eq!(
        (m.coin_out - initial) + m.jackpot + pending_jackpot,
        machine_wins + handpaid_wins,
        "coin out + jackpot = Σ wins"
    );
    let bills = sum(&|e| match e {
        Entry::Bill { credits, .. } => Some(*credits),
        _ => None,
    });
    assert_eq!(m.bill_credits - initial, bills);
    let cashed = sum(&|e| match e {
        Entry::Cashout { credits, paid_by: PaidBy::Machine } => Some(*credits),
        _ => None,
    });
    let handpaid_cashouts = sum(&|e| match e {
        Entry::Handpay { kind: HandpayKind::CancelledCredits, credits, .. } => Some(*credits),
        _ => None,
    });
    assert!(handpaid_cashouts > 0, "the test should cover hand-paid cash-outs");
    assert_eq!(m.handpaid_cancelled_credits, handpaid_cashouts);
    assert_eq!(
        m.cancelled_credits - initial,
        cashed + handpaid_cashouts,
        "0004 counts every cash-out, hand-paid ones too"
    );
    assert_eq!(
        m.current_credits + (m.coin_in - initial) + (m.cancelled_credits - initial),
        (m.bill_credits - initial) + (m.coin_out - initial),
        "credits in = credits out + credits on the meter"
    );
    assert!(m.slot_door_openings > 0);
    // The 4-byte meters rolled over on the wire, the ledger kept the full count.
    let mut rig2 = rig;
    rig2.sync();
    let Reply::Meter { values, .. } = rig2.decoded(LongPoll::SendMeter(MeterPoll::CoinIn)) else {
        panic!("LP11")
    };
    assert_eq!(values, [m.coin_in % 100_000_000]);
}

#[test]
fn a_handpay_raises_51_is_described_by_lp1b_and_ends_with_52() {
    let mut cfg = MachineConfig::new(0, ADDR, "SIM000000");
    cfg.play.games_per_minute = 30.0;
    cfg.play.max_games = Some(1);
    cfg.play.bets = Weighted::constant(10);
    cfg.play.win_multipliers = Weighted::constant(200);
    cfg.play.handpay_limit = 1_000;
    cfg.play.handpay_duration = Duration::from_secs(30);
    cfg.denomination = 0x02; // 5 cents a credit
    let mut rig = Rig::new(cfg);
    rig.sync();
    rig.until(Duration::from_secs(60), |m| m.handpay_pending());
    assert_eq!(rig.send(&[0x81]), Some(vec![0x51]), "priority, ahead of the game's 7E/7F");
    let Reply::HandpayInfo(info) = rig.decoded(LongPoll::SendHandpayInfo) else { panic!("LP1B") };
    assert_eq!(info.level, 0x00);
    assert_eq!(info.amount, 2_000, "a non-progressive handpay is in credits, not cents");
    assert_eq!(rig.m.meters().jackpot, 0, "not paid yet");
    rig.until(Duration::from_secs(60), |m| !m.handpay_pending());
    assert_eq!(rig.m.meters().jackpot, 2_000);
    assert_eq!(rig.m.meters().coin_out, 0);
    assert!(rig.exception_codes().contains(&0x52));
    let Reply::HandpayInfo(info) = rig.decoded(LongPoll::SendHandpayInfo) else { panic!("LP1B") };
    assert_eq!(info.amount, 0, "no handpay pending any more");
}

#[test]
fn an_unread_handpay_is_reported_again_15_s_after_each_acknowledgement() {
    let mut cfg = MachineConfig::new(0, ADDR, "SIM000000");
    cfg.play.games_per_minute = 30.0;
    cfg.play.max_games = Some(1);
    cfg.play.bets = Weighted::constant(10);
    cfg.play.win_multipliers = Weighted::constant(200);
    cfg.play.handpay_limit = 1_000;
    cfg.play.handpay_duration = Duration::from_secs(120);
    let mut rig = Rig::new(cfg);
    rig.sync();
    rig.until(Duration::from_secs(60), |m| m.handpay_pending());
    assert_eq!(rig.send(&[0x81]), Some(vec![0x51]));
    rig.advance_polling(Duration::from_secs(16)); // acknowledges, then 15 s pass
    let count_51 = rig.exception_codes().iter().filter(|&&c| c == 0x51).count();
    assert_eq!(count_51, 2, "re-issued once LP1B was not read");
}

#[test]
fn the_information_polls_answer_with_decodable_frames() {
    let mut cfg = MachineConfig::new(0, ADDR, "SLOT-42");
    cfg.play.games_per_minute = 0.0;
    cfg.denomination = 0x03;
    let mut rig = Rig::new(cfg);
    rig.sync();
    let Reply::VersionAndSerial(v) = rig.decoded(LongPoll::SendVersionAndSerial) else { panic!() };
    assert_eq!((&v.version, &v.serial[..]), (b"602", &b"SLOT-42"[..]));
    let Reply::MachineInfo(info) = rig.decoded(LongPoll::SendMachineInfo) else { panic!() };
    assert_eq!(info.denomination, 0x03);
    assert_eq!(&info.base_percentage, b"0000", "a machine that never pays returns 0 %");
    let Reply::SelectedMeters(s) =
        rig.decoded(LongPoll::SendSelectedMeters { game: 0, meters: vec![0x00, 0x0D, 0xEE] })
    else {
        panic!()
    };
    assert_eq!(s.meters, [(0x00, 0), (0x0D, 0)], "unknown meter EE omitted");
    let Reply::ExtendedMeters(x) = rig.decoded(LongPoll::SendExtendedMeters {
        alternate: true,
        game: 0,
        meters: vec![MeterCode::GAMES_PLAYED, MeterCode(0x0FFF)],
    }) else {
        panic!()
    };
    assert!(x.alternate);
    assert_eq!(x.meters.len(), 1);
    assert!(matches!(rig.decoded(LongPoll::SendMeters10To15), Reply::Meters10To15(_)));
    assert!(matches!(rig.decoded(LongPoll::SendLastBill), Reply::LastBill(_)));
    assert!(matches!(rig.decoded(LongPoll::SendCurrentCredits), Reply::CurrentCredits(0)));
    // No validation configured: no printer, no validator, LP70/71 are unsupported polls.
    assert_eq!(rig.long_poll(LongPoll::SendTicketValidationData), None);
    let status_query = TicketMessage { status: 0xFF, detail: None };
    assert_eq!(rig.long_poll(LongPoll::RedeemTicket(status_query)), None);
    for poll in MeterPoll::ALL {
        rig.send(&[0x81]);
        assert!(matches!(rig.decoded(LongPoll::SendMeter(poll)), Reply::Meter { .. }), "{poll:?}");
    }
}

#[test]
fn the_clock_is_set_by_lp7f_and_read_by_lp7e() {
    let mut rig = Rig::idle();
    rig.sync();
    let set = DateTime { year: 2024, month: 3, day: 15, hour: 13, minute: 45, second: 30 };
    assert_eq!(rig.long_poll(LongPoll::SetDateTime(set)), Some(vec![ADDR]));
    rig.advance_polling(Duration::from_secs(10));
    rig.send(&[0x81]);
    let Reply::DateTime(now) = rig.decoded(LongPoll::SendDateTime) else { panic!() };
    assert_eq!(now, DateTime { second: 40, ..set });
    // A broadcast sets it too, without an answer.
    let broadcast = HostMessage::Broadcast(LongPoll::SetDateTime(set)).encode().unwrap();
    assert_eq!(rig.send(&broadcast), None);
    assert!(
        rig.ledger
            .iter()
            .any(|r| matches!(r.entry, Entry::Command { name: "set_clock", broadcast: true, .. }))
    );
}

#[test]
fn a_deferred_rom_signature_arrives_on_a_later_general_poll() {
    let mut rig = Rig::idle();
    rig.sync();
    // `01 21 00 00 5C 45`: ROM signature, seed 0.
    assert_eq!(rig.send(&[0x01, 0x21, 0x00, 0x00, 0x5C, 0x45]), Some(vec![ADDR]));
    assert_eq!(rig.send(&[0x81]), Some(vec![0x00]), "not computed yet");
    rig.advance_polling(Duration::from_secs(1));
    let frame = rig.send(&[0x81]).unwrap();
    assert!(matches!(Reply::decode_frame(addr(), &frame), Ok(Reply::RomSignature(_))));
    assert_eq!(rig.next_exception(), Some(vec![0x00]), "delivered once");
}

#[test]
fn reply_faults_are_applied_and_recorded() {
    let mut cfg = MachineConfig::new(0, ADDR, "SIM000000");
    cfg.play.games_per_minute = 0.0;
    cfg.faults.drop_reply = 1.0;
    let mut rig = Rig::new(cfg);
    rig.sync();
    assert_eq!(rig.long_poll(LongPoll::Shutdown), None, "dropped …");
    assert!(!rig.m.is_enabled_by_host(), "… but executed");

    let mut cfg = MachineConfig::new(0, ADDR, "SIM000000");
    cfg.play.games_per_minute = 0.0;
    cfg.faults.corrupt_crc = 1.0;
    cfg.faults.late_reply = 1.0;
    cfg.faults.inter_byte_gap = 1.0;
    let mut rig = Rig::new(cfg);
    rig.send(&[0x80]);
    rig.send(&[0x81]);
    let request = Request { bytes: vec![0x01, 0x1A], message: HostMessage::decode(&[0x01, 0x1A]) };
    let tx = rig.m.handle_request(rig.now, &request).unwrap();
    assert!(Reply::decode_frame(addr(), &tx.bytes).is_err(), "corrupted CRC");
    assert!(tx.delay > Duration::from_millis(20), "later than the reply window");
    let gap = tx.gap.unwrap();
    assert!(gap.pause > Duration::from_millis(5) && (1..8).contains(&gap.after));

    let mut cfg = MachineConfig::new(0, ADDR, "SIM000000");
    cfg.play.games_per_minute = 0.0;
    cfg.faults.busy = 1.0;
    let mut rig = Rig::new(cfg);
    rig.sync();
    assert_eq!(rig.long_poll(LongPoll::Shutdown), Some(vec![ADDR, 0x00]));
    assert!(rig.m.is_enabled_by_host(), "busy: not executed");
    rig.collect();
    let faults = rig.count(|e| matches!(e, Entry::Fault { .. }));
    assert_eq!(faults, 1);
}

#[test]
fn the_same_seed_plays_the_same_games() {
    let games = |seed| {
        let mut cfg = playing(30.0);
        cfg.seed = seed;
        let mut rig = Rig::new(cfg);
        rig.advance(Duration::from_secs(600));
        rig.ledger
            .into_iter()
            .filter_map(|r| match r.entry {
                Entry::Game { bet, win, .. } => Some((r.time, bet, win)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(games(7), games(7));
    assert_ne!(games(7), games(8));
}

#[test]
fn a_shutdown_is_forgotten_at_power_up_unless_configured_to_persist() {
    for persist in [false, true] {
        let mut cfg = MachineConfig::new(0, ADDR, "SIM000000");
        cfg.play.games_per_minute = 0.0;
        cfg.persist_shutdown = persist;
        let mut rig = Rig::new(cfg);
        rig.sync();
        assert_eq!(rig.long_poll(LongPoll::Shutdown), Some(vec![ADDR]));
        rig.m.inject(rig.now, MachineFault::PowerCycle);
        rig.advance(Duration::from_secs(4));
        assert!(rig.m.is_powered());
        assert_eq!(rig.m.is_enabled_by_host(), !persist, "persist = {persist}");
    }
}

#[test]
fn with_validation_cash_outs_print_tickets_players_insert_tickets_and_lp4d_reports_each_once() {
    use slotgate::simulator::config::Validation;
    let mut cfg = playing(20.0);
    cfg.validation = Validation::SecureEnhanced;
    cfg.denomination = 0x02; // 5 cents a credit: cents and credits differ
    cfg.bills = vec![1, 5, 10];
    cfg.play.cashout_probability = 0.3;
    cfg.play.ticket_in_probability = 0.5;
    cfg.play.handpay_limit = 400;
    cfg.seed = 7;
    let mut rig = Rig::new(cfg);
    rig.sync();
    let mut records = Vec::new();
    for _ in 0..(20 * 60) {
        rig.advance_polling(Duration::from_secs(1));
        // The host reads validation records as they come, as the gateway does after 3D/3E/68.
        loop {
            rig.send(&[0x81]);
            let Reply::EnhancedValidation(record) =
                rig.decoded(LongPoll::SendEnhancedValidation { function: 0 })
            else {
                panic!("LP4D")
            };
            if record.is_empty() {
                break;
            }
            records.push(record);
        }
    }
    let m = rig.m.meters().clone();
    let tickets_out: Vec<(String, u64, u64)> = rig
        .ledger
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::TicketOut { validation_number, cents, credits, .. } => {
                Some((validation_number.clone(), *cents, *credits))
            }
            _ => None,
        })
        .collect();
    let tickets_in: Vec<(String, u64, u64)> = rig
        .ledger
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::TicketIn { validation_number, cents, credits, .. } => {
                Some((validation_number.clone(), *cents, *credits))
            }
            _ => None,
        })
        .collect();
    let receipts = rig.count(|e| matches!(e, Entry::Handpay { receipt: Some(_), .. }));
    assert!(tickets_out.len() > 5 && tickets_in.len() > 5, "{tickets_out:?} {tickets_in:?}");
    assert!(receipts > 0, "the test should cover handpay receipts");
    assert_eq!(m.tickets_out, tickets_out.len() as u64);
    assert_eq!(m.ticket_out_cents, tickets_out.iter().map(|t| t.1).sum::<u64>());
    assert_eq!(m.ticket_out_credits, tickets_out.iter().map(|t| t.2).sum::<u64>());
    assert!(tickets_out.iter().all(|t| t.1 == t.2 * 5));
    assert_eq!(m.tickets_in, tickets_in.len() as u64);
    assert_eq!(m.ticket_in_cents, tickets_in.iter().map(|t| t.1).sum::<u64>());
    assert_eq!(m.drop(), m.bill_credits + m.ticket_in_credits);
    let machine_cashouts: u64 = rig
        .ledger
        .iter()
        .filter_map(|r| match r.entry {
            Entry::Cashout { paid_by: PaidBy::Machine, .. } => Some(1),
            _ => None,
        })
        .sum();
    assert_eq!(machine_cashouts, 0, "every cash-out below the limit prints a ticket");
    // Every printed ticket, receipt and redeemed ticket came through LP4D exactly once, in order.
    assert_eq!(records.len(), tickets_out.len() + tickets_in.len() + receipts);
    let numbers: Vec<String> = records
        .iter()
        .map(|r| format!("{:02}{:016}", r.validation_system_id, r.validation_number))
        .collect();
    for (number, cents, _) in tickets_out.iter().chain(&tickets_in) {
        let found: Vec<_> = records
            .iter()
            .zip(&numbers)
            .filter(|(_, n)| *n == number)
            .map(|(r, _)| r.amount)
            .collect();
        assert_eq!(found, [*cents], "ticket {number}");
    }
    let codes = rig.exception_codes();
    for code in [0x3D, 0x3E, 0x67, 0x68] {
        assert!(codes.contains(&code), "exception {code:02X} raised");
    }
    // LP70 shows the last inserted ticket.
    rig.send(&[0x81]);
    let Reply::TicketValidationData(data) = rig.decoded(LongPoll::SendTicketValidationData) else {
        panic!("LP70")
    };
    assert_eq!(data.detail.map(|d| d.amount), tickets_in.last().map(|t| t.1));
}

#[test]
fn the_meter_codes_of_tickets_are_answered_by_lp2f() {
    use slotgate::simulator::config::Validation;
    let mut cfg = playing(30.0);
    cfg.validation = Validation::System;
    cfg.play.cashout_probability = 1.0;
    cfg.play.max_games = Some(3);
    let mut rig = Rig::new(cfg);
    rig.sync();
    rig.until(Duration::from_secs(120), |m| {
        m.games_started() == 3 && m.game_in_progress().is_none()
    });
    let m = rig.m.meters().clone();
    assert!(m.tickets_out > 0);
    let Reply::SelectedMeters(s) =
        rig.decoded(LongPoll::SendSelectedMeters { game: 0, meters: vec![0x0E, 0x12, 0x16, 0x04] })
    else {
        panic!("LP2F")
    };
    assert_eq!(
        s.meters,
        [
            (0x0E, m.ticket_out_cents),
            (0x12, m.tickets_out),
            (0x16, m.ticket_out_credits),
            (0x04, m.cancelled_credits)
        ]
    );
}

/// Issue 12: the player moves money by AFT (in, and cash-outs to the host), SAS progressive
/// levels hit and legacy bonuses are awarded; LP72 (interrogation), LP85 and LP90 report each,
/// a new transfer or hit waits until the host read the last, and the meters move by exactly
/// what the ledger says.
#[test]
fn aft_transfers_progressive_hits_and_bonuses_are_read_back_and_move_their_meters() {
    use firmware_protocols::sas::message::EnabledFeatures;
    let mut cfg = playing(30.0);
    cfg.denomination = 0x02; // 5 cents a credit
    cfg.bills = vec![1, 5, 10];
    cfg.play.cashout_probability = 0.3;
    cfg.play.aft_probability = 0.5;
    cfg.play.progressive_probability = 0.2;
    cfg.play.bonus_probability = 0.2;
    cfg.seed = 11;
    let mut rig = Rig::new(cfg);
    rig.sync();
    let Reply::EnabledFeatures(EnabledFeatures { features, .. }) =
        rig.decoded(LongPoll::SendEnabledFeatures { game: 0 })
    else {
        panic!("LPA0")
    };
    assert!(features[1] & 0x40 != 0 && features[0] & 0x04 != 0, "AFT and bonus: {features:02X?}");
    let (mut transfers, mut progressives, mut bonuses) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..(20 * 60) {
        rig.advance_polling(Duration::from_secs(1));
        // The host reads what was reported, as the gateway does after 69, 56 and 7C.
        let Reply::AftTransfer(status) = rig.decoded(LongPoll::AftInterrogate { index: 0 }) else {
            panic!("LP72")
        };
        if status.is_complete() && transfers.last() != Some(&status) {
            transfers.push(status);
        }
        rig.send(&[0x81]);
        // A hit waits until the last was read: at most one new one since the last read.
        let hits = rig.count(|e| matches!(e, Entry::Progressive { paid_by: PaidBy::Machine, .. }));
        let Reply::ProgressiveWin(win) = rig.decoded(LongPoll::SendProgressiveWin) else {
            panic!("LP85")
        };
        if hits > progressives.len() {
            progressives.push(win);
        }
        rig.send(&[0x81]);
        let Reply::LegacyBonusWin(bonus) = rig.decoded(LongPoll::SendLegacyBonusWin) else {
            panic!("LP90")
        };
        bonuses.push(bonus);
        rig.send(&[0x81]);
    }
    let ledger = |f: &dyn Fn(&Entry) -> Option<(u64, u64)>| -> Vec<(u64, u64)> {
        rig.ledger.iter().filter_map(|r| f(&r.entry)).collect()
    };
    let aft_in = ledger(&|e| match e {
        Entry::AftTransfer { direction: "to_machine", cents, credits, .. } => {
            Some((*cents, *credits))
        }
        _ => None,
    });
    let aft_out = ledger(&|e| match e {
        Entry::AftTransfer { direction: "to_host", cents, credits, .. } => Some((*cents, *credits)),
        _ => None,
    });
    let hits = ledger(&|e| match e {
        Entry::Progressive { cents, credits, paid_by: PaidBy::Machine, .. } => {
            Some((*cents, *credits))
        }
        _ => None,
    });
    let awards = ledger(&|e| match e {
        Entry::Bonus { cents, credits, .. } => Some((*cents, *credits)),
        _ => None,
    });
    assert!(aft_in.len() > 3 && !aft_out.is_empty() && hits.len() > 2 && awards.len() > 2);
    // Every transfer and hit was read, one at a time: the host saw each exactly once.
    assert_eq!(transfers.len(), aft_in.len() + aft_out.len());
    assert_eq!(progressives.len(), hits.len());
    let sum = |v: &[(u64, u64)], i: usize| -> u64 {
        v.iter().map(|p| if i == 0 { p.0 } else { p.1 }).sum()
    };
    let m = rig.m.meters().clone();
    assert_eq!(m.aft_in_cents.iter().sum::<u64>(), sum(&aft_in, 0));
    assert_eq!(m.aft_in_credits, sum(&aft_in, 1));
    assert_eq!(m.aft_out_cents[0], sum(&aft_out, 0));
    assert_eq!(m.machine_paid_progressive, sum(&hits, 1));
    assert_eq!(m.machine_paid_bonus, sum(&awards, 1));
    let read: u64 = transfers.iter().map(|t| t.cashable + t.restricted + t.non_restricted).sum();
    assert_eq!(read, sum(&aft_in, 0) + sum(&aft_out, 0), "LP72 amounts are the ledger's");
    assert_eq!(progressives.iter().map(|w| w.amount).sum::<u64>(), sum(&hits, 0));
    assert!(m.aft_in_cents[0] > 0 && m.aft_in_cents[2] > 0, "both classes: {:?}", m.aft_in_cents);
    // Coin out is paytable + progressive + bonus (001C + 001D + 001E).
    let value = |code| m.value(MeterCode(code)).unwrap();
    assert_eq!(value(0x1C) + value(0x1D) + value(0x1E), m.coin_out);
    assert_eq!(value(0xA4), m.aft_in_cents[2]);
    assert_eq!(value(0xB9), aft_out.len() as u64);
}

/// A progressive level at or above the handpay limit is paid by an attendant: LP1B reports its
/// group, level and the amount in cents, and the attendant-paid progressive meter (0020) moves
/// when it is paid.
#[test]
fn a_progressive_too_large_for_the_machine_is_a_handpay_with_its_level_in_cents() {
    use firmware_protocols::sas::message::HandpayInfo;
    let mut cfg = playing(30.0);
    cfg.denomination = 0x02; // 5 cents a credit
    cfg.play.bets = Weighted::constant(5);
    cfg.play.win_multipliers = Weighted::constant(0);
    cfg.play.progressive_probability = 1.0;
    cfg.play.handpay_limit = 10;
    cfg.play.handpay_duration = Duration::from_secs(2);
    let mut rig = Rig::new(cfg);
    rig.sync();
    rig.until(Duration::from_secs(60), |m| m.handpay_pending());
    let Reply::HandpayInfo(HandpayInfo { progressive_group, level, amount, .. }) =
        rig.decoded(LongPoll::SendHandpayInfo)
    else {
        panic!("LP1B")
    };
    assert_eq!(progressive_group, 1);
    assert!((1..=3).contains(&level), "level {level}");
    let credits = 5 * 10 * u64::from(level);
    assert_eq!(amount, credits * 5, "cents, not credits");
    rig.until(Duration::from_secs(10), |m| !m.handpay_pending());
    assert_eq!(rig.m.meters().value(MeterCode(0x20)), Some(credits));
    assert_eq!(rig.m.meters().value(MeterCode(0x1F)), Some(0), "no paytable handpay");
    assert_eq!(rig.m.meters().jackpot, credits);
    assert_eq!(rig.count(|e| matches!(e, Entry::Handpay { level: Some(l), .. } if *l == level)), 1);
}

#[test]
fn a_multi_game_machine_keeps_meters_per_game_that_add_up_to_the_ledger() {
    let mut cfg = playing(20.0);
    // Accounting 0.01; game 1 at 0.01, game 2 at 0.05, game 3 at 0.02.
    cfg.games = vec![0x01, 0x02, 0x17];
    cfg.play.handpay_limit = 100;
    cfg.play.handpay_duration = Duration::from_secs(5);
    cfg.seed = 7;
    let mut rig = Rig::new(cfg);
    for _ in 0..3600 {
        rig.advance(Duration::from_secs(1));
        while rig.m.poll_transmit().is_some() {}
    }
    rig.m.close_play();
    rig.advance(Duration::from_secs(60));
    assert!(rig.m.game_in_progress().is_none() && !rig.m.handpay_pending());
    rig.sync();
    assert_eq!(rig.decoded(LongPoll::SendNumberOfGames), Reply::NumberOfGames(3));
    assert_eq!(rig.long_poll(LongPoll::SendGameConfiguration { game: 4 }), None, "no game 4");
    let Reply::GameConfiguration { game: 2, info } =
        rig.decoded(LongPoll::SendGameConfiguration { game: 2 })
    else {
        panic!("LP53 for game 2")
    };
    assert_eq!(info.denomination, 0x02);
    let ratio = |denomination: u8| match denomination {
        0x01 => 1,
        0x02 => 5,
        0x17 => 2,
        other => panic!("denomination {other:#x}"),
    };
    let mut totals = [0u64; 4];
    for game in 1..=3u16 {
        // (coin in, coin out, jackpot, games) from the ledger, in accounting credits.
        let mut expected = [0u64; 4];
        for record in &rig.ledger {
            if let Entry::Game { game: g, bet, win, denomination, paid_by, .. } = &record.entry
                && *g == game
            {
                let k = ratio(*denomination);
                expected[0] += bet * k;
                match paid_by {
                    PaidBy::Machine => expected[1] += win * k,
                    _ => expected[2] += win * k,
                }
                expected[3] += 1;
            }
        }
        assert!(expected[3] > 50, "game {game} was played: {expected:?}");
        let poll = LongPoll::SendSelectedMeters { game, meters: vec![0x00, 0x01, 0x02, 0x05] };
        // `80` between two LP2F, or the machine takes the second for an implied NACK (§4.2).
        rig.send(&[0x80]);
        let Reply::SelectedMeters(selected) = rig.decoded(poll) else { panic!("LP2F") };
        let read: Vec<u64> = selected.meters.iter().map(|(_, v)| *v).collect();
        assert_eq!(read, expected, "game {game}: coin in, coin out, jackpot, games played");
        for (total, value) in totals.iter_mut().zip(read) {
            *total += value;
        }
    }
    assert!(totals[2] > 0, "the test should cover jackpots");
    let poll = LongPoll::SendSelectedMeters { game: 0, meters: vec![0x00, 0x01, 0x02, 0x05] };
    rig.send(&[0x80]);
    let Reply::SelectedMeters(machine) = rig.decoded(poll) else { panic!("LP2F") };
    let machine: Vec<u64> = machine.meters.iter().map(|(_, v)| *v).collect();
    assert_eq!(machine, totals, "the games' meters add up to the machine's");
    // Each game's bets are announced in its own denomination: 8C before the first bet on it,
    // and a multi-denomination 7E (bit 6) carrying the game's denomination code.
    let mut selected = None;
    for record in &rig.ledger {
        match &record.entry {
            Entry::Exception { event: Some(EventData::GameSelected { game }), .. } => {
                selected = Some(*game);
            }
            Entry::Exception { event: Some(EventData::GameStarted { wager_type, .. }), .. } => {
                let denomination = match selected.expect("8C before every 7E") {
                    1 => 0x01,
                    2 => 0x02,
                    _ => 0x17,
                };
                assert_eq!(wager_type & 0x3F, denomination);
                assert_eq!(wager_type & 0x40 != 0, denomination != 0x01);
            }
            _ => {}
        }
    }
}
