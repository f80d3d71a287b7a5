//! The host session (`firmware_protocols::sas::session`) against the simulator's machine model,
//! both sans-IO, joined by a simulated line with injected time: the host's characters reach the
//! machine's request framer one character time apart, the machine's replies come back with their
//! injected delays and gaps. No sockets, no sleeps, fully deterministic.
//!
//! This is where the two independent readings of sas-protocol.md (host and machine) have to
//! agree: every game in the machine's ledger must reach the host as exactly one 7E and one 7F
//! event, in order, with the right amounts, whatever faults the line suffers.

// clippy.toml allows unwrap in #[test] functions only; the helpers of this test crate need it too.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use firmware_protocols::FirmwareProfile;
use firmware_protocols::sas::codec::RequestDecoder;
use firmware_protocols::sas::session::{CHARACTER_TIME, HostSession, LinkState, SessionEvent};
use firmware_protocols::sas::{Address, Character, Exception, LongPoll, RealTimeEvent};
use slotgate::simulator::config::{MachineConfig, Quirk};
use slotgate::simulator::ledger::{Entry, Record};
use slotgate::simulator::machine::{Machine, MachineFault};

/// Characters on their way to the host, each with its arrival time.
type InFlight = VecDeque<(Instant, Character)>;

struct Line {
    session: HostSession,
    machine: Machine,
    framer: RequestDecoder,
    to_host: InFlight,
    now: Instant,
    events: Vec<SessionEvent>,
    ledger: Vec<Record>,
    /// Next meter poll, as the daemon's poller schedules them (with RTE on, any long poll can be
    /// answered by an event instead: sas-protocol.md §4.4).
    next_meters: Instant,
    /// Stop confirming at the first game start taken out of the session, as a gateway that dies
    /// before its journal flush would; the report is kept in `held`.
    hold_game_start: bool,
    held: Option<SessionEvent>,
    /// The bytes of the last message sent and whether RTE was on: the in-flight record.
    last_sent: Option<(Vec<u8>, bool)>,
}

impl Line {
    fn new(cfg: MachineConfig, profile: &FirmwareProfile) -> Self {
        let now = Instant::now();
        let wall = humantime::parse_rfc3339("2026-03-01T12:00:00Z").unwrap();
        let address = Address::new(cfg.address).unwrap();
        Self {
            session: HostSession::new(address, profile, now),
            machine: Machine::new(cfg, now, wall).unwrap(),
            framer: RequestDecoder::default(),
            to_host: VecDeque::new(),
            now,
            events: Vec::new(),
            ledger: Vec::new(),
            next_meters: now,
            hold_game_start: false,
            held: None,
            last_sent: None,
        }
    }

    /// Puts machine output on the wire towards the host, starting at `start`.
    fn machine_sends(&mut self, start: Instant, t: slotgate::simulator::machine::Transmit) {
        let mut at = start.max(self.to_host.back().map_or(start, |(t, _)| *t)) + t.delay;
        for (i, &byte) in t.bytes.iter().enumerate() {
            if t.gap.is_some_and(|g| g.after == i) {
                at += t.gap.map_or(Duration::ZERO, |g| g.pause);
            }
            at += CHARACTER_TIME;
            self.to_host.push_back((at, Character { byte, wakeup: t.wakeup && i == 0 }));
        }
    }

    /// One step of the discrete-event loop: act on everything due now, then jump to the next
    /// deadline of anyone.
    fn step(&mut self) {
        // The host: events out (confirmed at once: the journal's flush is not part of this test),
        // then whatever it wants to send.
        while let Some(event) = self.session.poll_event() {
            let game_start =
                matches!(event, SessionEvent::RealTimeEvent(RealTimeEvent::GameStarted { .. }));
            if self.hold_game_start && game_start && self.held.is_none() {
                self.held = Some(event.clone());
            }
            self.events.push(event);
        }
        if self.held.is_none() {
            self.session.confirm_events();
        }
        if self.session.link() == LinkState::Up && self.now >= self.next_meters {
            for poll in
                [LongPoll::SendMachineInfo, LongPoll::SendMeters, LongPoll::SendMeters10To15]
            {
                // A poll the session has learned unsupported is refused; that is reported.
                let _ = self.session.enqueue(poll);
            }
            self.next_meters = self.now + Duration::from_secs(10);
        }
        while let Some(tx) = self.session.poll_transmit(self.now) {
            self.last_sent = Some((tx.bytes().collect(), self.session.rte_enabled()));
            let mut at = self.now;
            for c in &tx.characters {
                at += CHARACTER_TIME;
                if let Some(request) = self.framer.push(at, c.byte, Some(c.wakeup))
                    && let Some(reply) = self.machine.handle_request(at, &request)
                {
                    self.machine_sends(at, reply);
                }
            }
        }
        while let Some(chirp) = self.machine.poll_transmit() {
            self.machine_sends(self.now, chirp);
        }
        self.ledger.extend(self.machine.drain_ledger());

        let next = [
            self.session.poll_timeout(),
            self.machine.poll_timeout(),
            self.framer.poll_timeout(),
            self.to_host.front().map(|(t, _)| *t),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.now + Duration::from_millis(10));
        self.now = self.now.max(next);

        let mut arrived = Vec::new();
        while self.to_host.front().is_some_and(|(t, _)| *t <= self.now) {
            arrived.push(self.to_host.pop_front().unwrap().1);
        }
        if !arrived.is_empty() {
            self.session.handle_input(self.now, &arrived);
        }
        if let Some(request) = self.framer.flush(self.now)
            && let Some(reply) = self.machine.handle_request(self.now, &request)
        {
            self.machine_sends(self.now, reply);
        }
        self.machine.handle_timeout(self.now);
        if self.session.poll_timeout().is_some_and(|t| t <= self.now) {
            self.session.handle_timeout(self.now);
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    /// (bet, win) of every finished game in the ledger, in order.
    fn ledger_games(&self) -> Vec<(u64, u64)> {
        self.ledger
            .iter()
            .filter_map(|r| match r.entry {
                Entry::Game { bet, win, .. } => Some((bet, win)),
                _ => None,
            })
            .collect()
    }

    /// (bet, win) pairs as the host saw them: each 7E's wager with the next 7F's win. A bare 7F
    /// (the machine had RTE off, e.g. right after a power cycle, before the host turned it back
    /// on) ends the game without its amount: `None`, which the daemon's normalizer derives from
    /// the meters.
    fn host_games(&self) -> Vec<(u64, Option<u64>)> {
        let mut games = Vec::new();
        let mut open: Option<u64> = None;
        for event in &self.events {
            match event {
                SessionEvent::RealTimeEvent(RealTimeEvent::GameStarted {
                    credits_wagered, ..
                }) => {
                    assert!(open.is_none(), "a 7E while a game was open: a duplicated event");
                    open = Some(*credits_wagered);
                }
                SessionEvent::RealTimeEvent(RealTimeEvent::GameEnded { win }) => {
                    let bet = open.take().expect("a 7F without its 7E: a duplicated event");
                    games.push((bet, Some(*win)));
                }
                SessionEvent::Exception(Exception::GameEnded) => {
                    let bet = open.take().expect("a bare 7F without its 7E");
                    games.push((bet, None));
                }
                _ => {}
            }
        }
        games
    }

    /// Every ledger game reached the host once, in order, with its bet, and with its win unless
    /// the machine reported the end without data.
    fn assert_games_match(&self, context: &str) {
        let host = self.host_games();
        let ledger = self.ledger_games();
        assert_eq!(host.len(), ledger.len(), "{context}: games");
        for (i, ((bet, win), (ledger_bet, ledger_win))) in host.iter().zip(&ledger).enumerate() {
            assert_eq!(bet, ledger_bet, "{context}: bet of game {i}");
            if let Some(win) = win {
                assert_eq!(win, ledger_win, "{context}: win of game {i}");
            }
        }
    }
}

fn playing_machine() -> MachineConfig {
    let mut cfg = MachineConfig::new(0, 1, "SIM000000");
    cfg.seed = 7;
    cfg.play.games_per_minute = 12.0;
    cfg.play.game_duration = Duration::from_secs(2);
    cfg.play.bets = "1:1,5:2,25:1,100:1".parse().unwrap();
    cfg.play.win_multipliers = "0:6,1:2,2:1,10:1".parse().unwrap();
    cfg.rte_at_power_up = false;
    // A bounded number of games, so that a run can end with every game reported.
    cfg.play.max_games = Some(150);
    cfg
}

#[test]
fn every_game_reaches_the_host_exactly_once_and_in_order() {
    let mut line = Line::new(playing_machine(), &FirmwareProfile::generic());
    line.run_for(Duration::from_secs(20 * 60));
    let ledger = line.ledger_games();
    assert_eq!(ledger.len(), 150, "the machine played all its games");
    // Without power loss every game end carries its win: nothing may be missing.
    let host = line.host_games();
    assert!(host.iter().all(|(_, win)| win.is_some()));
    line.assert_games_match("clean line");
    assert_eq!(line.session.link(), LinkState::Up);
    assert!(line.machine.rte(), "the host enabled RTE at link-up");
    assert!(
        !line.ledger.iter().any(|r| matches!(r.entry, Entry::ExceptionLost { .. })),
        "the host kept up with the machine's queue"
    );
}

#[test]
fn faults_on_the_line_lose_or_invent_no_game() {
    let mut cfg = playing_machine();
    cfg.seed = 11;
    cfg.faults.corrupt_crc = 0.05;
    cfg.faults.drop_reply = 0.03;
    cfg.faults.late_reply = 0.03;
    cfg.faults.inter_byte_gap = 0.03;
    cfg.faults.busy = 0.03;
    cfg.play.games_per_minute = 10.0;
    let mut line = Line::new(cfg, &FirmwareProfile::generic());
    line.run_for(Duration::from_secs(20 * 60));
    let ledger = line.ledger_games();
    assert_eq!(ledger.len(), 150, "the machine played all its games");
    line.assert_games_match("faulty line");
    assert!(line.host_games().iter().all(|(_, win)| win.is_some()));
    let stats = line.session.stats();
    assert!(stats.retries > 0 && stats.crc_errors > 0 && stats.timeouts > 0, "{stats:?}");
    // At realistic fault rates a lost reply is retried, never taken for an unsupported poll.
    assert!(
        !line.events.iter().any(|e| matches!(e, SessionEvent::Unsupported(_))),
        "a lost reply is not an unsupported poll"
    );
    assert!(
        line.ledger.iter().any(|r| matches!(r.entry, Entry::Fault { .. })),
        "faults were injected"
    );
}

#[test]
fn a_power_cycle_is_reported_and_play_continues_after_resync() {
    let mut line = Line::new(playing_machine(), &FirmwareProfile::generic());
    line.run_for(Duration::from_secs(60));
    let now = line.now;
    line.machine.inject(now, MachineFault::PowerCycle);
    line.run_for(Duration::from_secs(5 * 60));
    let exceptions: Vec<Exception> = line
        .events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Exception(x) => Some(*x),
            SessionEvent::RealTimeEvent(RealTimeEvent::Exception(x)) => Some(*x),
            _ => None,
        })
        .collect();
    assert!(exceptions.contains(&Exception::AcPowerLost), "{exceptions:?}");
    assert!(exceptions.contains(&Exception::AcPowerApplied), "{exceptions:?}");
    line.assert_games_match("power cycle");
    assert_eq!(line.session.link(), LinkState::Up);
}

#[test]
fn a_shutdown_stops_new_games_until_startup() {
    let mut line = Line::new(playing_machine(), &FirmwareProfile::generic());
    line.run_for(Duration::from_secs(60));
    line.session.enqueue(LongPoll::Shutdown).unwrap();
    line.run_for(Duration::from_secs(10));
    assert!(!line.machine.is_enabled_by_host());
    let games_at_shutdown = line.ledger_games().len();
    line.run_for(Duration::from_secs(3 * 60));
    assert_eq!(line.ledger_games().len(), games_at_shutdown, "no game started while shut down");
    line.session.enqueue(LongPoll::Startup).unwrap();
    line.run_for(Duration::from_secs(3 * 60));
    assert!(line.ledger_games().len() > games_at_shutdown + 10);
    line.assert_games_match("shutdown");
}

#[test]
fn each_fault_alone_loses_or_invents_no_game_across_seeds() {
    // One fault type at a time at a high rate, over several seeds: the combinations that found
    // the codec's truncated-frame bugs (a gap after the first byte, or mid-frame, in RTE mode).
    type Fault = (&'static str, fn(&mut MachineConfig));
    let faults: [Fault; 6] = [
        ("corrupt CRC", |c| c.faults.corrupt_crc = 0.08),
        ("dropped reply", |c| c.faults.drop_reply = 0.08),
        ("late reply", |c| c.faults.late_reply = 0.08),
        ("inter-byte gap", |c| c.faults.inter_byte_gap = 0.08),
        ("busy", |c| c.faults.busy = 0.08),
        // A machine that loses power between a report and its ACK sends the report again.
        ("power cycle", |c| c.faults.power_cycles_per_hour = 240.0),
    ];
    for (name, apply) in faults {
        for seed in 1..=4 {
            let mut cfg = playing_machine();
            cfg.seed = seed;
            cfg.play.max_games = Some(40);
            apply(&mut cfg);
            let mut line = Line::new(cfg, &FirmwareProfile::generic());
            line.run_for(Duration::from_secs(8 * 60));
            assert_eq!(line.ledger_games().len(), 40, "{name}, seed {seed}: all games played");
            line.assert_games_match(&format!("{name}, seed {seed}"));
        }
    }
}

/// Exceptions the machine has dropped from its queue on an implied ACK: (exception seq, code).
fn acknowledged(ledger: &[Record]) -> Vec<(u64, u8)> {
    ledger
        .iter()
        .filter_map(|r| match r.entry {
            Entry::ExceptionAcknowledged { exception_seq, code, .. } => Some((exception_seq, code)),
            _ => None,
        })
        .collect()
}

/// Plays until the host has taken a game start out of its session, then "crashes" the host before
/// it confirms (the journal never flushed), and starts a new session after a fast restart (well
/// inside the 5 s after which the machine would chirp and keep the report). With `resume`, the new
/// session is resumed from the in-flight record: the last message's bytes and RTE state.
/// Returns the line with the new session, the report the crash left unconfirmed, and the
/// exceptions acknowledged before the crash.
fn crash_before_the_flush(resume: bool) -> (Line, SessionEvent, Vec<(u64, u8)>) {
    let mut line = Line::new(playing_machine(), &FirmwareProfile::generic());
    line.run_for(Duration::from_secs(30));
    assert!(line.machine.rte(), "RTE is on: game starts carry their wager and coin-in meter");
    line.hold_game_start = true;
    for _ in 0..1_000_000 {
        if line.held.is_some() && line.session.is_holding() {
            break;
        }
        line.step();
    }
    let lost = line.held.take().expect("a game start was reported");
    let acked_at_crash = acknowledged(&line.ledger);
    let (last, rte_on) = line.last_sent.clone().expect("something was sent");

    // The crash: the session and everything it held vanish, unconfirmed.
    line.hold_game_start = false;
    line.now += Duration::from_millis(800);
    let address = line.session.address();
    line.session = HostSession::new(address, &FirmwareProfile::generic(), line.now);
    line.events.clear();
    if resume {
        line.session.resume(line.now, &last, rte_on).expect("the last message was to this machine");
    }
    (line, lost, acked_at_crash)
}

#[test]
fn a_restart_resumed_from_the_in_flight_record_gets_the_unconfirmed_report_again() {
    let (mut line, lost, acked_at_crash) = crash_before_the_flush(true);
    let (last, _) = line.last_sent.clone().expect("sent before the crash");
    // Hold the resumed report unconfirmed: the machine must keep it until the confirmation.
    line.hold_game_start = true;
    for _ in 0..100_000 {
        if line.held.is_some() {
            break;
        }
        line.step();
    }
    let (first, _) = line.last_sent.clone().expect("the resumed session sent");
    assert_eq!(first, last, "the first message after the restart is the last one before it");
    assert_eq!(line.session.stats().sync_polls, 0, "no `80` went before it");
    assert_eq!(line.held.as_ref(), Some(&lost), "the report the crash left unstored came again");
    line.run_for(Duration::from_secs(2));
    assert_eq!(acknowledged(&line.ledger), acked_at_crash, "nothing ACKed before the confirmation");

    // The journal flushed: confirm, and the machine may drop the report.
    line.held = None;
    line.hold_game_start = false;
    line.run_for(Duration::from_secs(2));
    let acked = acknowledged(&line.ledger);
    let newly: Vec<_> = acked.iter().filter(|a| !acked_at_crash.contains(a)).collect();
    assert_eq!(newly.first().map(|(_, code)| *code), Some(0x7E), "the game start, ACKed now");
    // And play goes on with every later game reported once.
    line.run_for(Duration::from_secs(60));
    let starts = line.events.iter().filter(|e| **e == lost).count();
    assert_eq!(starts, 1, "delivered once to the new session");
}

#[test]
fn without_resume_a_restart_acknowledges_the_unconfirmed_report_away() {
    // The failure the in-flight record exists for: a fresh session's `80` is an implied ACK.
    let (mut line, lost, acked_at_crash) = crash_before_the_flush(false);
    line.run_for(Duration::from_secs(60));
    let acked = acknowledged(&line.ledger);
    let newly: Vec<_> = acked.iter().filter(|a| !acked_at_crash.contains(a)).collect();
    assert_eq!(newly.first().map(|(_, code)| *code), Some(0x7E), "the machine dropped it");
    assert!(!line.events.contains(&lost), "and the host never got it: a lost game start");
}

// === Vendor quirks (sas-protocol.md §11): each against the profile that describes it ===

fn built_in(name: &str) -> FirmwareProfile {
    let (file, text) = firmware_protocols::profile::BUILT_IN
        .iter()
        .find(|(file, _)| file.strip_suffix(".toml") == Some(name))
        .unwrap();
    FirmwareProfile::from_toml_str(file, text).unwrap()
}

fn quirky(quirk: Quirk) -> MachineConfig {
    let mut cfg = playing_machine();
    cfg.quirks = vec![quirk];
    cfg.play.max_games = Some(40);
    cfg
}

fn games_ended(line: &Line) -> usize {
    line.events
        .iter()
        .filter(|e| matches!(e, SessionEvent::RealTimeEvent(RealTimeEvent::GameEnded { .. })))
        .count()
}

#[test]
fn a_machine_that_needs_no_sync_answers_the_first_poll_of_its_profile() {
    let profile = built_in("novomatic-gaminator-generic");
    let mut line = Line::new(quirky(Quirk::NoSync), &profile);
    line.run_for(Duration::from_secs(5 * 60));
    assert_eq!(line.ledger_games().len(), 40);
    line.assert_games_match("no sync needed");
    // The profile sends no `80` first, and the machine needs none: not one poll went unanswered.
    assert_eq!(line.session.stats().timeouts, 0, "{:?}", line.session.stats());
    // A machine that does need the sync poll leaves that profile's first polls unanswered.
    let mut strict = Line::new(playing_machine(), &profile);
    strict.run_for(Duration::from_secs(10));
    assert!(strict.session.stats().timeouts > 0);
}

#[test]
fn a_machine_with_slow_bytes_is_read_whole_with_a_longer_inter_byte_limit() {
    let text = "name = \"slow\"\n[timing]\ninter_byte_limit_ms = 15\n";
    let profile = FirmwareProfile::from_toml_str("slow.toml", text).unwrap();
    let mut line = Line::new(quirky(Quirk::SlowBytes), &profile);
    line.run_for(Duration::from_secs(5 * 60));
    assert_eq!(line.ledger_games().len(), 40);
    line.assert_games_match("slow bytes");
    // With the spec's 5 ms every reply is cut in two: no report gets through.
    let mut strict = Line::new(quirky(Quirk::SlowBytes), &FirmwareProfile::generic());
    strict.run_for(Duration::from_secs(60));
    assert_eq!(games_ended(&strict), 0);
    assert!(strict.ledger_games().len() > 3, "the machine played meanwhile");
}

#[test]
fn a_machine_that_repeats_its_last_report_delivers_each_report_once_with_its_profile() {
    let mut line = Line::new(quirky(Quirk::RepeatReport), &built_in("rte-repeating-generic"));
    line.run_for(Duration::from_secs(5 * 60));
    assert_eq!(line.ledger_games().len(), 40);
    line.assert_games_match("repeated reports");
    assert!(line.session.stats().re_reports > 0, "the machine did repeat its reports");
    // Without the profile's knowledge every idle poll invents one more report.
    let mut naive = Line::new(quirky(Quirk::RepeatReport), &FirmwareProfile::generic());
    naive.run_for(Duration::from_secs(60));
    assert!(games_ended(&naive) > naive.ledger_games().len());
}
