//! Rules of the normalizer, one behaviour per test. Byte vectors are the golden vectors of
//! sas-protocol.md §3.3, decoded with `Reply::decode_frame`.

use std::time::Duration;

use firmware_protocols::sas::message::{
    AftTransferStatus, BasicMeters, DateTime, ExtendedMeter, ExtendedMeters, HandpayInfo,
    LegacyBonusWin, ProgressiveWin, ProgressiveWins,
};
use firmware_protocols::sas::session::SessionEvent;
use firmware_protocols::sas::{Address, Exception, LongPoll, MeterCode, RealTimeEvent, Reply};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use proptest::prelude::*;

use super::*;
use crate::event::{
    AftDirection, AmountStatus, CanonicalEvent, EventKind, LinkStatus, MeterReading,
    ReconciliationOutcome, RegistryId, SnapshotTrigger, SourceKind, VenueId, WindowContext,
};

// === Fixtures ===

fn venue() -> VenueSettings {
    VenueSettings {
        venue_id: VenueId::new("hall-1").unwrap(),
        currency: Currency::UAH,
        time_zone: TimeZone::get("Europe/Kyiv").unwrap(),
        clock_drift_threshold: Duration::from_secs(60),
        ticket_numbers: Default::default(),
    }
}

fn machine() -> MachineIdentity {
    MachineIdentity {
        registry_id: RegistryId::new("UA-0001").unwrap(),
        address: Address::new(1).unwrap(),
        asset_number: Some("A-17".into()),
        denomination_code: None,
    }
}

fn normalizer() -> Normalizer {
    Normalizer::new(venue(), machine(), 0)
}

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_772_366_400 + second).unwrap() // 2026-03-01T12:00:00Z
}

fn bytes(hex: &str) -> Vec<u8> {
    hex.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

fn frame(hex: &str) -> Reply {
    Reply::decode_frame(Address::new(1).unwrap(), &bytes(hex)).unwrap()
}

fn reply(poll: LongPoll, hex: &str) -> SessionEvent {
    SessionEvent::Reply { poll, reply: frame(hex) }
}

fn rte(hex: &str) -> SessionEvent {
    match frame(hex) {
        Reply::Event(event) => SessionEvent::RealTimeEvent(event),
        other => panic!("not an RTE frame: {other:?}"),
    }
}

const LP1F_GOLDEN: &str = "01 1F 41 54 31 32 33 01 C9 12 00 00 31 32 33 34 35 36 39 30 35 30 40 96";
const LP54_GOLDEN: &str = "01 54 09 36 30 32 41 42 43 31 32 33 D7 3A";
const LP1C_GOLDEN: &str = "01 1C 00 12 34 56 00 10 00 00 00 05 00 00 00 00 00 00 00 00 07 89 \
                           00 00 03 21 00 00 00 12 00 00 00 03 E1 56";
const LP0F_GOLDEN: &str = "01 0F 00 00 20 00 00 12 34 56 00 10 00 00 00 05 00 00 00 00 00 00 00 \
                           00 07 89 0F 7D";
const RTE_GAME_START: &str = "01 FF 7E 00 25 00 12 34 81 41 00 44 46";
const RTE_GAME_END: &str = "01 FF 7F 00 00 00 40 F4 5F";
const RTE_GAME_SELECTED: &str = "01 FF 8C 00 03 42 55";
const RTE_BILL: &str = "01 FF 4F 37 02 00 00 00 17 91 C8";
const LP7E_GOLDEN: &str = "01 7E 03 15 20 24 13 45 30 52 F5";

/// LP1F with accounting denomination `code` (0x0B is $0.20, i.e. 20 kopiyky a credit).
fn machine_info(code: u8) -> SessionEvent {
    let mut info = match frame(LP1F_GOLDEN) {
        Reply::MachineInfo(info) => info,
        other => panic!("{other:?}"),
    };
    info.denomination = code;
    SessionEvent::Reply { poll: LongPoll::SendMachineInfo, reply: Reply::MachineInfo(info) }
}

fn meters(coin_in: u64, coin_out: u64, jackpot: u64, games_played: u64) -> SessionEvent {
    let meters = BasicMeters { coin_in, coin_out, jackpot, games_played, ..Default::default() };
    SessionEvent::Reply { poll: LongPoll::SendMeters, reply: Reply::Meters(meters) }
}

fn game_started(credits_wagered: u64, total_coin_in: u64, wager_type: u8) -> SessionEvent {
    SessionEvent::RealTimeEvent(RealTimeEvent::GameStarted {
        credits_wagered,
        total_coin_in,
        wager_type,
        progressive_group: 0,
    })
}

fn game_ended(win: u64) -> SessionEvent {
    SessionEvent::RealTimeEvent(RealTimeEvent::GameEnded { win })
}

/// Feeds events one second apart from `start`, collecting everything emitted.
fn run(n: &mut Normalizer, start: i64, events: &[SessionEvent]) -> Vec<CanonicalEvent> {
    let mut out = Vec::new();
    for (i, event) in events.iter().enumerate() {
        out.extend(n.handle(at(start + i as i64), event).unwrap());
    }
    out
}

fn kinds(events: &[CanonicalEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind.name()).collect()
}

fn only<'a>(events: &'a [CanonicalEvent], kind: &str) -> &'a CanonicalEvent {
    let found: Vec<_> = events.iter().filter(|e| e.kind.name() == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind} in {:?}", kinds(events));
    found[0]
}

fn minor(amount: &Amount) -> Option<i64> {
    amount.minor_units
}

fn last_snapshot(events: &[CanonicalEvent]) -> &CanonicalEvent {
    events.iter().rev().find(|e| e.kind.name() == "meter_snapshot").unwrap()
}

fn reading<'a>(event: &'a CanonicalEvent, meter: &str) -> &'a MeterReading {
    match &event.kind {
        EventKind::MeterSnapshot { meters, .. } => &meters[meter],
        other => panic!("not a snapshot: {other:?}"),
    }
}

// === Games with RTE ===

#[test]
fn an_rte_spin_yields_a_bet_and_a_win_in_exact_minor_units() {
    let mut n = normalizer();
    let events =
        run(&mut n, 0, &[machine_info(0x0B), game_started(25, 1025, 0x00), game_ended(40)]);
    assert_eq!(kinds(&events), ["machine_info", "bet_accepted", "game_ended"]);
    let EventKind::BetAccepted { amount, games, coin_in_meter, max_bet, .. } = &events[1].kind
    else {
        unreachable!()
    };
    // 25 credits × 20 kopiyky.
    assert_eq!(
        (minor(amount), amount.credits, amount.denomination_code),
        (Some(500), Some(25), Some(0x0B))
    );
    assert_eq!((*games, *coin_in_meter, *max_bet), (1, Some(1025), Some(false)));
    assert_eq!(amount.currency.as_str(), "UAH");
    let EventKind::GameEnded { win, games } = &events[2].kind else { unreachable!() };
    assert_eq!((minor(win), *games), (Some(800), 1));
    assert!(events.iter().all(|e| !e.derived));
    assert_eq!(events[1].source.kind, SourceKind::RealTimeEvent);
    assert_eq!(events[1].source.code, Some(0x7E));
}

#[test]
fn the_golden_rte_spin_selects_the_game_and_prices_bet_and_win() {
    let mut n = normalizer();
    let events = run(
        &mut n,
        0,
        &[
            reply(LongPoll::SendMachineInfo, LP1F_GOLDEN),
            rte(RTE_GAME_SELECTED),
            rte(RTE_GAME_START),
            rte(RTE_GAME_END),
        ],
    );
    assert_eq!(kinds(&events), ["machine_info", "game_selected", "bet_accepted", "game_ended"]);
    let bet = &events[2];
    let EventKind::BetAccepted { amount, coin_in_meter, wager_type, .. } = &bet.kind else {
        unreachable!()
    };
    // Denomination 01 is one kopiyka: 25 credits, 25 kopiyky; coin in after the bet 123481.
    assert_eq!((minor(amount), *coin_in_meter, *wager_type), (Some(25), Some(123_481), Some(0x41)));
    let game = bet.game.as_ref().unwrap();
    assert_eq!(
        (game.number, game.game_id.as_deref(), game.paytable_id.as_deref()),
        (Some(3), Some("AT"), Some("123456"))
    );
    let EventKind::GameEnded { win, .. } = &events[3].kind else { unreachable!() };
    assert_eq!(minor(win), Some(40));
    assert!(events[0].game.is_none(), "machine_info is not a play event");
}

#[test]
fn a_multi_denomination_wager_is_priced_at_the_player_denomination() {
    let mut n = normalizer();
    // Accounting denomination 20 kopiyky; the wager type says multi-denom, player denom 01.
    let events =
        run(&mut n, 0, &[machine_info(0x0B), game_started(25, 0, 0x41), game_started(25, 0, 0x01)]);
    let EventKind::BetAccepted { amount, .. } = &events[1].kind else { unreachable!() };
    assert_eq!((minor(amount), amount.denomination_code), (Some(25), Some(0x01)));
    // Without the multi-denom flag the low bits are not trusted: accounting denomination.
    let EventKind::BetAccepted { amount, .. } = &events[2].kind else { unreachable!() };
    assert_eq!((minor(amount), amount.denomination_code), (Some(500), Some(0x0B)));
}

// === Denomination learning ===

#[test]
fn bets_before_the_denomination_is_known_are_emitted_at_once_with_credits_and_flagged() {
    let mut n = normalizer();
    let early = n.handle(at(0), &game_started(25, 1025, 0x00)).unwrap();
    let EventKind::BetAccepted { amount, .. } = &early[0].kind else { unreachable!() };
    assert_eq!(amount.status, AmountStatus::DenominationUnknown);
    assert_eq!((amount.minor_units, amount.credits), (None, Some(25)));

    let later = run(&mut n, 1, &[machine_info(0x0B), game_started(25, 1050, 0x00)]);
    let EventKind::BetAccepted { amount, .. } = &later[1].kind else { unreachable!() };
    assert_eq!((amount.status, minor(amount)), (AmountStatus::Exact, Some(500)));
}

#[test]
fn a_configured_denomination_prices_bets_before_lp1f_and_lp1f_overrides_it() {
    let configured = MachineIdentity { denomination_code: Some(0x0B), ..machine() };
    let mut n = Normalizer::new(venue(), configured, 0);
    let early = n.handle(at(0), &game_started(25, 1025, 0x00)).unwrap();
    let EventKind::BetAccepted { amount, .. } = &early[0].kind else { unreachable!() };
    assert_eq!((amount.status, minor(amount)), (AmountStatus::Exact, Some(500)), "25 × 0.20");

    // The machine says 0.05: its own word wins from then on.
    let later = run(&mut n, 1, &[machine_info(0x02), game_started(25, 1050, 0x00)]);
    let EventKind::BetAccepted { amount, .. } = &later[1].kind else { unreachable!() };
    assert_eq!(minor(amount), Some(125));
}

#[test]
fn learning_the_denomination_prices_the_meters_read_before_it() {
    let mut n = normalizer();
    let events = run(
        &mut n,
        0,
        &[
            meters(1000, 500, 0, 10),
            machine_info(0x0B),
            game_started(25, 1025, 0x00),
            game_ended(0),
            meters(1025, 500, 0, 11),
        ],
    );
    // The window after the denomination became known reconciles cleanly: no reconciliation event.
    assert!(!kinds(&events).contains(&"reconciliation"), "{:?}", kinds(&events));
    let coin_in = reading(last_snapshot(&events), "coin_in").amount.unwrap();
    assert_eq!((coin_in.minor_units, coin_in.credits), (Some(20_500), Some(1025)));
}

#[test]
fn the_serial_is_learned_from_lp54_and_carried_on_later_events() {
    let mut n = normalizer();
    let events =
        run(&mut n, 0, &[reply(LongPoll::SendVersionAndSerial, LP54_GOLDEN), rte(RTE_GAME_END)]);
    let EventKind::MachineInfo(info) = &events[0].kind else { unreachable!() };
    assert_eq!(
        (info.serial.as_deref(), info.sas_version.as_deref()),
        (Some("ABC123"), Some("602"))
    );
    assert_eq!(events[1].machine.serial.as_deref(), Some("ABC123"));
    // Reading the same identity again says nothing new.
    assert!(
        n.handle(at(9), &reply(LongPoll::SendVersionAndSerial, LP54_GOLDEN)).unwrap().is_empty()
    );
}

// === Games without RTE ===

#[test]
fn without_rte_bet_and_win_are_derived_from_the_meter_deltas() {
    let mut n = normalizer();
    let events = run(
        &mut n,
        0,
        &[
            machine_info(0x0B),
            meters(1000, 500, 0, 10),
            SessionEvent::Exception(Exception::GameStarted),
            SessionEvent::Exception(Exception::GameEnded),
            meters(1025, 540, 0, 11),
        ],
    );
    assert_eq!(
        kinds(&events),
        [
            "machine_info",
            "meter_snapshot",
            "game_phase",
            "game_phase",
            "meter_snapshot",
            "bet_accepted",
            "game_ended"
        ]
    );
    let bet = only(&events, "bet_accepted");
    let EventKind::BetAccepted { amount, games, .. } = &bet.kind else { unreachable!() };
    assert_eq!((minor(amount), amount.credits, *games), (Some(500), Some(25), 1));
    assert!(bet.derived);
    assert_eq!(bet.source.code, Some(0x1C), "derived from the LP1C reply");
    let win = only(&events, "game_ended");
    let EventKind::GameEnded { win: amount, games } = &win.kind else { unreachable!() };
    assert_eq!((minor(amount), *games), (Some(800), 1));
    assert!(win.derived);
    let EventKind::MeterSnapshot { trigger, .. } = &events[4].kind else { unreachable!() };
    assert_eq!(*trigger, SnapshotTrigger::GameEnd);
}

#[test]
fn a_derived_game_without_a_win_still_ends_with_a_zero_prize() {
    let mut n = normalizer();
    let events = run(
        &mut n,
        0,
        &[
            machine_info(0x0B),
            meters(1000, 500, 0, 10),
            SessionEvent::Exception(Exception::GameEnded),
            meters(1010, 500, 0, 11),
        ],
    );
    let EventKind::GameEnded { win, games } = &only(&events, "game_ended").kind else {
        unreachable!()
    };
    assert_eq!((minor(win), *games), (Some(0), 1));
}

#[test]
fn meter_deltas_without_a_game_report_are_not_turned_into_bets() {
    let mut n = normalizer();
    let events =
        run(&mut n, 0, &[machine_info(0x0B), meters(1000, 500, 0, 10), meters(1025, 500, 0, 11)]);
    assert!(!kinds(&events).contains(&"bet_accepted"));
    let EventKind::Reconciliation { outcome, bets, .. } = &only(&events, "reconciliation").kind
    else {
        unreachable!()
    };
    assert_eq!(*outcome, ReconciliationOutcome::Mismatch);
    assert_eq!((bets.events_minor_units, bets.meters_minor_units), (Some(0), Some(500)));
}

// === Reconciliation ===

#[test]
fn events_that_match_the_meter_deltas_reconcile_silently() {
    let mut n = normalizer();
    let events = run(
        &mut n,
        0,
        &[
            machine_info(0x0B),
            meters(1000, 500, 0, 10),
            game_started(25, 1025, 0),
            game_ended(40),
            meters(1025, 540, 0, 11),
        ],
    );
    assert_eq!(
        kinds(&events),
        ["machine_info", "meter_snapshot", "bet_accepted", "game_ended", "meter_snapshot"]
    );
}

#[test]
fn a_mismatch_emits_a_reconciliation_event_with_both_figures() {
    let mut n = normalizer();
    let events = run(
        &mut n,
        0,
        &[
            machine_info(0x0B),
            meters(1000, 500, 0, 10),
            game_started(25, 1025, 0),
            game_ended(40),
            // Five more credits wagered and a jackpot of 100 the events do not show.
            meters(1030, 540, 100, 12),
        ],
    );
    let event = only(&events, "reconciliation");
    assert!(event.derived);
    assert_eq!(event.source.kind, SourceKind::Gateway);
    let EventKind::Reconciliation {
        game_number,
        outcome,
        bets,
        wins,
        games,
        context,
        window_start,
    } = &event.kind
    else {
        unreachable!()
    };
    assert_eq!((*game_number, *outcome), (None, ReconciliationOutcome::Mismatch));
    assert_eq!(
        (bets.events_minor_units, bets.meters_minor_units, bets.difference),
        (Some(500), Some(600), Some(100))
    );
    assert_eq!(
        (wins.events_minor_units, wins.meters_minor_units, wins.difference),
        (Some(800), Some(2800), Some(2000))
    );
    assert_eq!((games.events, games.meters), (1, Some(2)));
    assert!(context.is_empty());
    assert_eq!(*window_start, at(1));
}

#[test]
fn a_window_with_an_unpriced_bet_is_incomplete_not_matched() {
    let mut n = normalizer();
    let events = run(
        &mut n,
        0,
        &[
            meters(1000, 500, 0, 10),
            game_started(25, 1025, 0),
            machine_info(0x0B),
            meters(1025, 500, 0, 11),
        ],
    );
    let EventKind::Reconciliation { outcome, .. } = &only(&events, "reconciliation").kind else {
        unreachable!()
    };
    assert_eq!(*outcome, ReconciliationOutcome::Incomplete);
}

// === Meters: rollover, reset, lifetime ===

#[test]
fn a_four_byte_meter_passing_10_pow_8_rolls_over_instead_of_resetting() {
    let mut n = normalizer();
    let events = run(
        &mut n,
        0,
        &[
            machine_info(0x01),
            meters(99_999_990, 0, 0, 10),
            game_started(25, 15, 0),
            game_ended(0),
            meters(15, 0, 0, 11),
        ],
    );
    assert!(!kinds(&events).contains(&"meter_reset"), "{:?}", kinds(&events));
    assert!(!kinds(&events).contains(&"reconciliation"), "the bet of 25 matches the wrapped delta");
    let coin_in = reading(last_snapshot(&events), "coin_in");
    assert!(coin_in.rolled_over);
    assert_eq!((coin_in.raw, coin_in.lifetime), (15, Some(100_000_015)));
    assert_eq!(coin_in.amount.unwrap().minor_units, Some(100_000_015));
}

#[test]
fn a_meter_decrease_is_a_reset_event_and_the_lifetime_meter_continues() {
    let mut n = normalizer();
    let events = run(
        &mut n,
        0,
        &[machine_info(0x01), reply(LongPoll::SendMeters, LP1C_GOLDEN), meters(100, 50, 0, 2)],
    );
    let reset = only(&events, "meter_reset");
    assert!(reset.derived);
    let EventKind::MeterReset { meters: jumps, signalled_by } = &reset.kind else { unreachable!() };
    assert_eq!(*signalled_by, None);
    let coin_in = jumps.iter().find(|j| j.meter == "coin_in").unwrap();
    assert_eq!((coin_in.before, coin_in.after), (123_456, 100));
    let last = last_snapshot(&events);
    assert_eq!(reading(last, "coin_in").lifetime, Some(123_456 + 100));
    assert_eq!(reading(last, "games_played").lifetime, Some(789 + 2));
    let EventKind::Reconciliation { context, .. } = &only(&events, "reconciliation").kind else {
        unreachable!()
    };
    assert_eq!(context, &[WindowContext::MeterReset]);
}

#[test]
fn a_ram_clear_the_meters_never_show_still_marks_its_window() {
    // The bet is counted, then a RAM clear zeroes the meters before the next snapshot, which
    // reads 0 again: no meter went down between snapshots, but the window held a reset (found end
    // to end with two RAM clears close together).
    let mut n = normalizer();
    let events = run(
        &mut n,
        0,
        &[
            machine_info(0x01),
            meters(0, 0, 0, 0),
            game_started(2, 2, 0x00),
            game_ended(0),
            SessionEvent::Exception(Exception::MemoryErrorReset),
            SessionEvent::ResyncRequired(Exception::MemoryErrorReset),
            meters(0, 0, 0, 0),
        ],
    );
    let EventKind::Reconciliation { context, .. } = &only(&events, "reconciliation").kind else {
        unreachable!()
    };
    assert!(context.contains(&WindowContext::MeterReset), "{context:?}");
}

#[test]
fn after_an_announced_ram_clear_even_a_small_wrap_is_a_reset() {
    let mut n = normalizer();
    let events = run(
        &mut n,
        0,
        &[
            machine_info(0x01),
            meters(99_999_990, 0, 0, 10),
            SessionEvent::Exception(Exception::MemoryErrorReset),
            SessionEvent::ResyncRequired(Exception::MemoryErrorReset),
            meters(5, 0, 0, 0),
        ],
    );
    let EventKind::MeterReset { signalled_by, .. } = &only(&events, "meter_reset").kind else {
        unreachable!()
    };
    assert_eq!(*signalled_by, Some(0x3A));
    let snapshot = last_snapshot(&events);
    assert_eq!(reading(snapshot, "coin_in").lifetime, Some(99_999_995));
    let EventKind::MeterSnapshot { trigger, .. } = &snapshot.kind else { unreachable!() };
    assert_eq!(*trigger, SnapshotTrigger::Resync);
}

#[test]
fn a_meter_read_both_as_four_and_as_five_bytes_is_compared_modulo_the_narrower() {
    let mut n = normalizer();
    let extended = |value| SessionEvent::Reply {
        poll: LongPoll::SendMeters10To15,
        reply: Reply::ExtendedMeters(ExtendedMeters {
            alternate: false,
            game: 0,
            meters: vec![ExtendedMeter { code: MeterCode::TOTAL_COIN_IN, size: 5, value }],
        }),
    };
    // LP1C shows 150 000 000 as 50 000 000; LP6F shows all of it.
    let events = run(&mut n, 0, &[meters(50_000_000, 0, 0, 0), extended(150_000_010)]);
    assert!(!kinds(&events).contains(&"meter_reset"));
    assert_eq!(reading(&events[1], "coin_in").lifetime, Some(50_000_010));
}

proptest! {
    /// Whatever the machine's meters do, the gateway's lifetime meter and its money value never
    /// go down.
    #[test]
    fn lifetime_meters_never_go_backwards(raws in prop::collection::vec(0u64..100_000_000, 1..40)) {
        let mut n = normalizer();
        n.handle(at(0), &machine_info(0x0B)).unwrap();
        let mut last = (0, 0);
        for (i, raw) in raws.iter().enumerate() {
            let events = n.handle(at(i as i64 + 1), &meters(*raw, 0, 0, 0)).unwrap();
            let snapshot = events.iter().find(|e| e.kind.name() == "meter_snapshot").unwrap();
            let coin_in = reading(snapshot, "coin_in");
            let now = (coin_in.lifetime.unwrap(), coin_in.amount.unwrap().minor_units.unwrap());
            prop_assert!(now.0 >= last.0 && now.1 >= last.1, "{last:?} -> {now:?}");
            last = now;
        }
    }
}

#[test]
fn lifetime_meters_continue_across_a_gateway_restart() {
    let mut first = normalizer();
    let events = run(&mut first, 0, &[machine_info(0x0B), meters(1000, 500, 0, 10)]);
    let snapshot = events.last().unwrap().clone();

    let mut resumed =
        Normalizer::resume(venue(), machine(), first.next_seq(), &[snapshot]).unwrap();
    // The machine was RAM-cleared while the gateway was down.
    let events = run(&mut resumed, 100, &[machine_info(0x0B), meters(30, 10, 0, 2)]);
    assert_eq!(events[0].machine_seq, 2, "the sequence continues");
    let last_snapshot = events.iter().find(|e| e.kind.name() == "meter_snapshot").unwrap();
    assert_eq!(reading(last_snapshot, "coin_in").lifetime, Some(1030));
    assert_eq!(reading(last_snapshot, "coin_in").amount.unwrap().minor_units, Some(20_600));
    let EventKind::LinkGapSummary { offline_at, games_played, coin_in, .. } =
        &only(&events, "link_gap_summary").kind
    else {
        unreachable!()
    };
    assert_eq!((*offline_at, *games_played, coin_in.minor_units), (None, Some(2), Some(600)));
}

#[test]
fn resume_refuses_events_that_are_not_this_machines_snapshots() {
    let mut n = normalizer();
    let events = run(&mut n, 0, &[machine_info(0x0B)]);
    assert!(matches!(
        Normalizer::resume(venue(), machine(), 1, &events),
        Err(NormalizeError::NotASnapshot { .. })
    ));
    let other = MachineIdentity { registry_id: RegistryId::new("UA-0002").unwrap(), ..machine() };
    let snapshot = run(&mut n, 1, &[meters(1, 0, 0, 0)]);
    assert!(matches!(
        Normalizer::resume(venue(), other, 1, &snapshot),
        Err(NormalizeError::WrongMachine { .. })
    ));
}

// === Event gap ===

#[test]
fn an_exception_queue_overflow_is_an_event_gap_and_the_next_snapshot_reconciles_it() {
    let mut n = normalizer();
    let events = run(
        &mut n,
        0,
        &[
            machine_info(0x0B),
            meters(1000, 500, 0, 10),
            SessionEvent::Exception(Exception::ExceptionBufferOverflow),
            SessionEvent::ResyncRequired(Exception::ExceptionBufferOverflow),
            game_started(25, 1025, 0),
            game_ended(0),
            meters(1025, 500, 0, 11),
        ],
    );
    let gap = only(&events, "event_gap");
    assert_eq!(gap.source.code, Some(0x70));
    let snapshot = last_snapshot(&events);
    let EventKind::MeterSnapshot { trigger, .. } = &snapshot.kind else { unreachable!() };
    assert_eq!(*trigger, SnapshotTrigger::EventGap);
    // Reported even though it matched: the gap is visibly closed.
    let EventKind::Reconciliation { outcome, context, .. } = &only(&events, "reconciliation").kind
    else {
        unreachable!()
    };
    assert_eq!(
        (*outcome, context.as_slice()),
        (ReconciliationOutcome::Matched, &[WindowContext::EventGap][..])
    );
    assert!(gap.machine_seq < snapshot.machine_seq);
}

// === Link ===

#[test]
fn link_up_after_an_outage_yields_a_derived_summary_of_the_gap() {
    let mut n = normalizer();
    let mut events = run(&mut n, 0, &[machine_info(0x0B), meters(1000, 500, 0, 10)]);
    events.extend(n.handle(at(100), &SessionEvent::LinkDown).unwrap());
    events.extend(n.handle(at(700), &SessionEvent::LinkUp).unwrap());
    events.extend(n.handle(at(701), &meters(1500, 800, 0, 30)).unwrap());
    assert_eq!(
        kinds(&events[2..]),
        ["link_state", "link_state", "meter_snapshot", "link_gap_summary", "reconciliation"]
    );
    let EventKind::LinkState { state, offline_since } = &events[3].kind else { unreachable!() };
    assert_eq!((*state, *offline_since), (LinkStatus::Online, Some(at(100))));
    let summary = only(&events, "link_gap_summary");
    assert!(summary.derived);
    let EventKind::LinkGapSummary { since, offline_at, games_played, coin_in, coin_out, jackpot } =
        &summary.kind
    else {
        unreachable!()
    };
    assert_eq!((*since, *offline_at, *games_played), (at(1), Some(at(100)), Some(20)));
    assert_eq!(
        (coin_in.minor_units, coin_out.minor_units, jackpot.minor_units),
        (Some(10_000), Some(6_000), Some(0))
    );
    let EventKind::Reconciliation { context, .. } = &only(&events, "reconciliation").kind else {
        unreachable!()
    };
    assert_eq!(context, &[WindowContext::LinkOutage]);
    let EventKind::MeterSnapshot { trigger, .. } = &events[4].kind else { unreachable!() };
    assert_eq!(*trigger, SnapshotTrigger::LinkUp);
}

#[test]
fn games_reported_without_data_across_an_outage_are_summarised_not_priced_as_bets() {
    let mut n = normalizer();
    let events = run(
        &mut n,
        0,
        &[
            machine_info(0x0B),
            meters(1000, 500, 0, 10),
            SessionEvent::LinkDown,
            SessionEvent::LinkUp,
            SessionEvent::Exception(Exception::GameEnded),
            meters(1500, 800, 0, 30),
        ],
    );
    assert!(!kinds(&events).contains(&"bet_accepted"));
    only(&events, "link_gap_summary");
}

#[test]
fn link_state_is_reported_on_transitions_only() {
    let mut n = normalizer();
    let events = run(
        &mut n,
        0,
        &[
            SessionEvent::LinkUp,
            SessionEvent::Chirp,
            SessionEvent::LinkDown,
            SessionEvent::Chirp,
            SessionEvent::Chirp,
            SessionEvent::UnknownChirp(5),
            SessionEvent::UnknownChirp(5),
            SessionEvent::LinkUp,
            SessionEvent::UnknownChirp(5),
        ],
    );
    let states: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::LinkState { state, .. } => Some(*state),
            _ => None,
        })
        .collect();
    assert_eq!(states, [LinkStatus::Online, LinkStatus::Chirping, LinkStatus::Online]);
    assert_eq!(kinds(&events).iter().filter(|k| **k == "foreign_chirp").count(), 2);
    let online = events.iter().rev().find(|e| e.kind.name() == "link_state").unwrap();
    let EventKind::LinkState { offline_since, .. } = &online.kind else { unreachable!() };
    assert_eq!(*offline_since, Some(at(1)), "down since the first chirp");
}

// === Clock ===

fn clock_reply(hex: &str) -> SessionEvent {
    reply(LongPoll::SendDateTime, hex)
}

#[test]
fn a_machine_clock_beyond_the_threshold_emits_clock_drift() {
    // 2024-03-15 13:45:30 in Kyiv (UTC+2 before the end of March) is 11:45:30Z.
    let read_at = Timestamp::from_second(1_710_503_130).unwrap();
    let mut n = normalizer();
    let late =
        n.handle(read_at + SignedDuration::from_secs(90), &clock_reply(LP7E_GOLDEN)).unwrap();
    let EventKind::ClockDrift { egm_clock, drift_seconds, threshold_seconds } = &late[0].kind
    else {
        panic!("{:?}", kinds(&late))
    };
    assert_eq!(
        (egm_clock.as_str(), *drift_seconds, *threshold_seconds),
        ("2024-03-15T13:45:30", Some(-90), 60)
    );

    let mut n = normalizer();
    assert!(
        n.handle(read_at + SignedDuration::from_secs(30), &clock_reply(LP7E_GOLDEN))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_machine_clock_in_the_dst_fold_is_read_as_the_nearer_instant() {
    // 2024-10-27 03:30 happens twice in Kyiv: 00:30Z (EEST) and 01:30Z (EET).
    let time = DateTime { year: 2024, month: 10, day: 27, hour: 3, minute: 30, second: 0 };
    let event = SessionEvent::Reply { poll: LongPoll::SendDateTime, reply: Reply::DateTime(time) };
    for utc in ["2024-10-27T00:30:10Z", "2024-10-27T01:30:10Z"] {
        let mut n = normalizer();
        assert!(n.handle(utc.parse().unwrap(), &event).unwrap().is_empty(), "{utc}");
    }
    let mut n = normalizer();
    let events = n.handle("2024-10-27T02:30:00Z".parse().unwrap(), &event).unwrap();
    let EventKind::ClockDrift { drift_seconds, .. } = &events[0].kind else { unreachable!() };
    assert_eq!(*drift_seconds, Some(-3600));
}

#[test]
fn an_impossible_machine_date_is_a_clock_drift_without_a_figure() {
    let time = DateTime { year: 2024, month: 2, day: 31, hour: 0, minute: 0, second: 0 };
    let event = SessionEvent::Reply { poll: LongPoll::SendDateTime, reply: Reply::DateTime(time) };
    let events = normalizer().handle(at(0), &event).unwrap();
    let EventKind::ClockDrift { egm_clock, drift_seconds, .. } = &events[0].kind else {
        unreachable!()
    };
    assert_eq!((egm_clock.as_str(), *drift_seconds), ("2024-02-31T00:00:00", None));
}

#[test]
fn an_acknowledged_clock_set_emits_clock_set_and_later_events_carry_the_machine_time() {
    let time = DateTime { year: 2026, month: 3, day: 1, hour: 14, minute: 0, second: 0 };
    let set = SessionEvent::Reply { poll: LongPoll::SetDateTime(time), reply: Reply::Ack };
    let mut n = normalizer();
    let before = n.handle(at(0), &SessionEvent::Exception(Exception::SlotDoorOpened)).unwrap();
    assert_eq!(before[0].egm_time, None);
    let events = run(&mut n, 10, &[set, SessionEvent::Exception(Exception::SlotDoorClosed)]);
    let EventKind::ClockSet { set_to } = &events[0].kind else { unreachable!() };
    assert_eq!(set_to.to_string(), "2026-03-01T14:00:00");
    assert_eq!(events[1].egm_time.unwrap().to_string(), "2026-03-01T14:00:01");
    assert_eq!(events[1].occurred_at_local, "2026-03-01T14:00:11+02:00");
}

// === Money safety ===

#[test]
fn a_meter_too_large_to_price_is_flagged_as_overflow_not_wrapped_or_panicking() {
    let mut n = normalizer();
    let huge = SessionEvent::Reply {
        poll: LongPoll::SendExtendedMeters {
            alternate: false,
            game: 0,
            meters: vec![MeterCode::TOTAL_COIN_IN],
        },
        reply: Reply::ExtendedMeters(ExtendedMeters {
            alternate: false,
            game: 0,
            meters: vec![ExtendedMeter {
                code: MeterCode::TOTAL_COIN_IN,
                size: 9,
                value: 999_999_999_999_999_999,
            }],
        }),
    };
    // $5000 a credit.
    let events = run(&mut n, 0, &[machine_info(0x16), huge]);
    let coin_in = reading(&events[1], "coin_in").amount.unwrap();
    assert_eq!(coin_in.status, AmountStatus::Overflow);
    assert_eq!((coin_in.minor_units, coin_in.credits), (None, Some(999_999_999_999_999_999)));
}

fn handpay_info(level: u8, amount: u64) -> SessionEvent {
    let info = HandpayInfo { progressive_group: 0, level, amount, partial_pay: 0, reset_id: 0 };
    SessionEvent::Reply { poll: LongPoll::SendHandpayInfo, reply: Reply::HandpayInfo(info) }
}

#[test]
fn handpay_amounts_are_credits_except_progressive_levels_which_are_cents() {
    let mut n = normalizer();
    let events = run(
        &mut n,
        0,
        &[
            SessionEvent::Exception(Exception::HandpayPending),
            handpay_info(0x00, 1_500),
            SessionEvent::Exception(Exception::HandpayReset),
        ],
    );
    assert_eq!(kinds(&events), ["significant_event", "handpay", "handpay_reset"]);
    let EventKind::Handpay { amount, .. } = &events[1].kind else { unreachable!() };
    assert_eq!(amount.credits, Some(1_500), "a non-progressive handpay is in credits");
    assert_eq!(amount.status, AmountStatus::DenominationUnknown, "and LP1F has not been read");
    // 20 kopiyky a credit.
    let events = run(&mut n, 10, &[machine_info(0x0B), handpay_info(0x80, 1_500)]);
    let EventKind::Handpay { amount, .. } = &events[1].kind else { unreachable!() };
    assert_eq!((amount.minor_units, amount.status), (Some(30_000), AmountStatus::Exact));
    // Progressive level 3: cents, whatever the denomination.
    let events = run(&mut n, 20, &[handpay_info(0x03, 150_000)]);
    let EventKind::Handpay { amount, level, .. } = &events[0].kind else { unreachable!() };
    assert_eq!((*level, amount.minor_units, amount.credits), (3, Some(150_000), None));
}

#[test]
fn a_bill_is_credits_in_at_its_face_value() {
    let events = run(
        &mut normalizer(),
        0,
        &[
            rte(RTE_BILL),
            SessionEvent::Exception(Exception::Bill20Accepted),
            SessionEvent::Exception(Exception::BillAccepted),
        ],
    );
    let EventKind::CreditsIn { method, amount, bill } = &events[0].kind else { unreachable!() };
    // Bill code 02 is a 5: 500 kopiyky; country and count kept raw.
    assert_eq!((*method, amount.unwrap().minor_units), (CreditMethod::Bill, Some(500)));
    let bill = bill.unwrap();
    assert_eq!((bill.country_code, bill.denomination_code, bill.count), (37, 2, Some(17)));
    let EventKind::CreditsIn { amount, .. } = &events[1].kind else { unreachable!() };
    assert_eq!(amount.unwrap().minor_units, Some(2_000));
    let EventKind::CreditsIn { amount, .. } = &events[2].kind else { unreachable!() };
    assert_eq!(*amount, None, "a bare 4F does not say which bill");
}

// === Exceptions ===

#[test]
fn every_exception_code_becomes_exactly_one_canonical_event_with_its_raw_code() {
    for code in 0..=u8::MAX {
        let exception = Exception::from_code(code);
        let events = normalizer().handle(at(0), &SessionEvent::Exception(exception)).unwrap();
        if exception.is_idle() {
            assert!(events.is_empty(), "{code:#04x}");
            continue;
        }
        assert_eq!(events.len(), 1, "{code:#04x}");
        assert_eq!(
            (events[0].source.kind, events[0].source.code),
            (SourceKind::Exception, Some(code))
        );
        if let Exception::Unknown(_) = exception {
            assert_eq!(events[0].kind, EventKind::UnknownException { code });
        } else {
            assert!(!matches!(events[0].kind, EventKind::UnknownException { .. }), "{code:#04x}");
        }
    }
}

#[test]
fn significant_events_carry_a_category_and_a_canonical_name() {
    let events =
        normalizer().handle(at(0), &SessionEvent::Exception(Exception::CardCageOpened)).unwrap();
    let EventKind::SignificantEvent { category, event, .. } = &events[0].kind else {
        unreachable!()
    };
    assert_eq!((*category, event.as_str()), (Category::Door, "card_cage_opened"));
}

#[test]
fn an_rte_frame_with_an_unknown_code_keeps_the_raw_code() {
    let event = SessionEvent::RealTimeEvent(RealTimeEvent::Exception(Exception::from_code(0xE5)));
    let events = normalizer().handle(at(0), &event).unwrap();
    assert_eq!(events[0].kind, EventKind::UnknownException { code: 0xE5 });
    assert_eq!(events[0].source.kind, SourceKind::RealTimeEvent);
}

// === Sequence and identity ===

/// A session with a bit of everything.
fn busy_session() -> Vec<SessionEvent> {
    vec![
        SessionEvent::LinkUp,
        reply(LongPoll::SendMachineInfo, LP1F_GOLDEN),
        reply(LongPoll::SendVersionAndSerial, LP54_GOLDEN),
        reply(LongPoll::SendMeters, LP1C_GOLDEN),
        rte(RTE_GAME_SELECTED),
        rte(RTE_GAME_START),
        rte(RTE_GAME_END),
        SessionEvent::Exception(Exception::SlotDoorOpened),
        SessionEvent::Exception(Exception::ExceptionBufferOverflow),
        reply(LongPoll::SendMeters10To15, LP0F_GOLDEN),
        meters(10, 0, 0, 1),
        SessionEvent::LinkDown,
        SessionEvent::LinkUp,
        meters(20, 0, 0, 2),
        clock_reply(LP7E_GOLDEN),
    ]
}

#[test]
fn sequence_numbers_are_gap_free_and_strictly_increasing_across_every_event() {
    let mut n = Normalizer::new(venue(), machine(), 41);
    let events = run(&mut n, 0, &busy_session());
    assert!(events.len() >= 20, "{:?}", kinds(&events));
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.machine_seq, 41 + i as u64);
        assert_eq!(event.idempotency_key, format!("hall-1/UA-0001/{}", event.machine_seq));
    }
    assert_eq!(n.next_seq(), 41 + events.len() as u64);
}

#[test]
fn idempotency_keys_and_event_ids_are_the_same_on_every_replay() {
    let first = run(&mut normalizer(), 0, &busy_session());
    let second = run(&mut normalizer(), 0, &busy_session());
    assert_eq!(first, second);
    let mut ids: Vec<_> = first.iter().map(|e| e.event_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), first.len(), "event ids are unique");
    for event in &first {
        assert_eq!(event.event_id, event_id(&event.idempotency_key));
        let json = serde_json::to_string(event).unwrap();
        let back: CanonicalEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, event, "{json}");
    }
}

#[test]
fn running_out_of_sequence_numbers_is_an_error_that_emits_nothing() {
    let mut n = Normalizer::new(venue(), machine(), u64::MAX - 1);
    let door = SessionEvent::Exception(Exception::SlotDoorOpened);
    assert_eq!(n.handle(at(0), &door).unwrap()[0].machine_seq, u64::MAX - 1);
    assert_eq!(
        n.handle(at(1), &door),
        Err(NormalizeError::SequenceExhausted { next_seq: u64::MAX })
    );
    assert_eq!(n.next_seq(), u64::MAX);
}

#[test]
fn every_event_names_the_venue_machine_and_local_time() {
    let events =
        normalizer().handle(at(0), &SessionEvent::Exception(Exception::AcPowerLost)).unwrap();
    let event = &events[0];
    assert_eq!((event.schema_version, event.venue_id.as_str()), (3, "hall-1"));
    assert_eq!((event.machine.registry_id.as_str(), event.machine.sas_address), ("UA-0001", 1));
    assert_eq!(event.machine.asset_number.as_deref(), Some("A-17"));
    assert_eq!(event.occurred_at.to_string(), "2026-03-01T12:00:00Z");
    assert_eq!(event.occurred_at_local, "2026-03-01T14:00:00+02:00");
}

#[test]
fn remote_shutdown_and_startup_acknowledgements_are_significant_events() {
    let events = run(
        &mut normalizer(),
        0,
        &[
            SessionEvent::Reply { poll: LongPoll::Shutdown, reply: Reply::Ack },
            SessionEvent::Reply { poll: LongPoll::Startup, reply: Reply::Ack },
            SessionEvent::Reply { poll: LongPoll::RealTimeEventReporting(true), reply: Reply::Ack },
        ],
    );
    assert_eq!(events.len(), 2, "enabling RTE is not an event");
    let EventKind::SignificantEvent { category, event, .. } = &events[0].kind else {
        unreachable!()
    };
    assert_eq!((*category, event.as_str()), (Category::RemoteControl, "shutdown_acknowledged"));
    assert_eq!(events[0].source.code, Some(0x01));
}

#[test]
fn golden_lp1c_and_lp0f_snapshots_carry_every_meter() {
    let events = run(
        &mut normalizer(),
        0,
        &[reply(LongPoll::SendMeters, LP1C_GOLDEN), reply(LongPoll::SendMeters10To15, LP0F_GOLDEN)],
    );
    let first = &events[0];
    let EventKind::MeterSnapshot { trigger, game_number, meters } = &first.kind else {
        unreachable!()
    };
    assert_eq!((*trigger, *game_number), (SnapshotTrigger::Baseline, 0));
    let raw: Vec<_> = meters.iter().map(|(k, v)| (k.as_str(), v.raw)).collect();
    assert_eq!(
        raw,
        [
            ("coin_in", 123_456),
            ("coin_out", 100_000),
            ("drop", 50_000),
            ("games_played", 789),
            ("games_won", 321),
            ("jackpot", 0),
            ("power_reset_count", 3),
            ("slot_door_open_count", 12),
        ]
    );
    assert_eq!(reading(first, "coin_in").amount.unwrap().status, AmountStatus::DenominationUnknown);
    assert_eq!(reading(&events[1], "cancelled_credits").raw, 2_000);
    // Same values, but without LP1F nothing can be priced: the comparison is incomplete.
    let EventKind::Reconciliation { outcome, bets, .. } = &only(&events, "reconciliation").kind
    else {
        unreachable!()
    };
    assert_eq!((*outcome, bets.meters_minor_units), (ReconciliationOutcome::Incomplete, None));
}

fn validation_record(validation_type: u8, number: u64, cents: u64) -> SessionEvent {
    let record = ValidationRecord {
        validation_type,
        index: 1,
        date_time: Some(DateTime { year: 2026, month: 3, day: 1, hour: 14, minute: 0, second: 5 }),
        validation_number: number,
        amount: cents,
        ticket_number: 12,
        validation_system_id: 1,
        expiration: 30,
        pool_id: 0,
    };
    SessionEvent::Reply {
        poll: LongPoll::SendEnhancedValidation { function: 0 },
        reply: Reply::EnhancedValidation(record),
    }
}

#[test]
fn validation_records_become_tickets_out_and_in_and_receipts_priced_in_cents_with_masked_numbers() {
    let mut n = normalizer();
    let events = run(
        &mut n,
        0,
        &[
            rte(RTE_GAME_SELECTED),
            validation_record(0x00, 1_234_567_890_123_456, 2_500),
            validation_record(0x80, 42, 10_000),
            validation_record(0x20, 7, 150_000),
            validation_record(0x81, 8, 300),
            validation_record(0x00, 0, 0),
            validation_record(0x33, 9, 100),
        ],
    );
    // An empty record (all zero but the type) is still a record: only an all-zero one is not.
    assert_eq!(
        kinds(&events),
        [
            "game_selected",
            "ticket_out",
            "ticket_in",
            "handpay_receipt",
            "ticket_in",
            "ticket_out",
            "unrecognized"
        ]
    );
    let EventKind::TicketOut { amount, ticket } = &events[1].kind else { unreachable!() };
    assert_eq!(amount.minor_units, Some(2_500), "cents are kopiyky");
    assert_eq!(ticket.validation_number, "**************3456");
    assert!(ticket.masked);
    assert_eq!(ticket.class, TicketClass::Cashable);
    assert_eq!(ticket.machine_time.unwrap().to_string(), "2026-03-01T14:00:05");
    assert_eq!(events[1].game.as_ref().unwrap().number, Some(3), "carries its game");
    let EventKind::TicketIn { amount, ticket } = &events[4].kind else { unreachable!() };
    assert_eq!((amount.minor_units, ticket.class), (Some(300), TicketClass::Restricted));
    let EventKind::Unrecognized { description } = &events[6].kind else { unreachable!() };
    assert!(!description.contains("0000009"), "no number outside a masked field: {description}");
    let nothing = run(
        &mut n,
        10,
        &[SessionEvent::Reply {
            poll: LongPoll::SendEnhancedValidation { function: 0 },
            reply: Reply::EnhancedValidation(Default::default()),
        }],
    );
    assert!(nothing.is_empty(), "an all-zero record is no ticket");
    let mut venue = venue();
    venue.ticket_numbers = TicketNumbers::Full;
    let mut n = Normalizer::new(venue, machine(), 0);
    let events = run(&mut n, 0, &[validation_record(0x00, 1_234_567_890_123_456, 2_500)]);
    let EventKind::TicketOut { ticket, .. } = &events[0].kind else { unreachable!() };
    assert_eq!((ticket.validation_number.as_str(), ticket.masked), ("011234567890123456", false));
}

#[test]
fn bills_and_handpays_carry_the_game_they_belong_to() {
    let mut n = normalizer();
    let events = run(
        &mut n,
        0,
        &[
            rte(RTE_GAME_SELECTED),
            rte(RTE_BILL),
            SessionEvent::Exception(Exception::Bill20Accepted),
            handpay_info(0x00, 10),
        ],
    );
    for event in &events[1..] {
        assert_eq!(event.game.as_ref().and_then(|g| g.number), Some(3), "{:?}", event.kind);
    }
}

// === Electronic transfers, progressives, bonuses (issue 12) ===

fn aft(
    transfer_type: u8,
    status: u8,
    cashable: u64,
    non_restricted: u64,
    id: &str,
) -> SessionEvent {
    let status = AftTransferStatus {
        status,
        receipt_status: 0xFF,
        transfer_type,
        cashable,
        non_restricted,
        transaction_id: id.as_bytes().to_vec(),
        completed: Some(DateTime { year: 2026, month: 3, day: 1, hour: 14, minute: 0, second: 9 }),
        ..Default::default()
    };
    SessionEvent::Reply {
        poll: LongPoll::AftInterrogate { index: 0 },
        reply: Reply::AftTransfer(status),
    }
}

#[test]
fn a_completed_aft_transfer_is_one_event_per_class_in_cents_and_counted_once() {
    let mut n = normalizer();
    let events = run(
        &mut n,
        0,
        &[
            rte(RTE_GAME_SELECTED),
            SessionEvent::Exception(Exception::AftTransferComplete),
            aft(0x00, 0x00, 2_500, 500, "T-1"),
            // Read again (a repeated 69, a restored follow-up): the same transfer.
            aft(0x00, 0x00, 2_500, 500, "T-1"),
            // Pending or refused: nothing moved.
            aft(0x80, 0x40, 1_000, 0, "T-2"),
            aft(0x80, 0x87, 1_000, 0, "T-2"),
            aft(0x80, 0x01, 1_000, 0, "T-2"),
            aft(0x33, 0x00, 7, 0, "T-3"),
        ],
    );
    assert_eq!(
        kinds(&events),
        [
            "game_selected",
            "significant_event",
            "aft_transfer",
            "aft_transfer",
            "aft_transfer",
            "unrecognized"
        ]
    );
    let EventKind::AftTransfer { direction, class, amount, transaction_id, machine_time, .. } =
        &events[2].kind
    else {
        unreachable!()
    };
    assert_eq!((*direction, *class), (AftDirection::ToMachine, TicketClass::Cashable));
    assert_eq!((minor(amount), transaction_id.as_str()), (Some(2_500), "T-1"));
    assert_eq!(machine_time.unwrap().to_string(), "2026-03-01T14:00:09");
    assert_eq!(events[2].game.as_ref().and_then(|g| g.number), Some(3), "carries its game");
    let EventKind::AftTransfer { class, amount, .. } = &events[3].kind else { unreachable!() };
    assert_eq!((*class, minor(amount)), (TicketClass::NonRestricted, Some(500)));
    let EventKind::AftTransfer { direction, status, amount, .. } = &events[4].kind else {
        unreachable!()
    };
    assert_eq!((*direction, *status, minor(amount)), (AftDirection::ToHost, 0x01, Some(1_000)));
}

/// Every exception issue 12 reads money for, with the follow-up answer the session delivers:
/// the exception is a `significant_event` of its category, the answer the money event.
#[test]
fn money_exceptions_and_their_follow_ups_table() {
    let progressive = SessionEvent::Reply {
        poll: LongPoll::SendProgressiveWin,
        reply: Reply::ProgressiveWin(ProgressiveWin { group: 2, level: 0x05, amount: 12_000 }),
    };
    let bonus = SessionEvent::Reply {
        poll: LongPoll::SendLegacyBonusWin,
        reply: Reply::LegacyBonusWin(LegacyBonusWin {
            multiplier: 0,
            multiplied_win: 0,
            tax_status: 1,
            bonus: 40,
        }),
    };
    let rte_bonus = SessionEvent::RealTimeEvent(RealTimeEvent::LegacyBonus {
        multiplier: 2,
        multiplied_win: 100,
        tax_status: 0,
        bonus: 50,
    });
    let table: Vec<(u8, Category, Option<SessionEvent>, &str)> = vec![
        (0x69, Category::ElectronicTransfer, Some(aft(0x00, 0x00, 100, 0, "X")), "aft_transfer"),
        (0x56, Category::Progressive, Some(progressive), "progressive_win"),
        (0x7C, Category::Bonus, Some(bonus), "bonus_award"),
        (0x54, Category::Progressive, None, ""),
        (0x59, Category::Progressive, None, ""),
        (0x5A, Category::Progressive, None, ""),
        (0x53, Category::Progressive, None, ""),
        (0x6A, Category::ElectronicTransfer, None, ""),
        (0x6F, Category::ElectronicTransfer, None, ""),
    ];
    for (code, want, follow_up, kind) in table {
        let mut n = normalizer();
        let mut session =
            vec![machine_info(0x0B), SessionEvent::Exception(Exception::from_code(code))];
        session.extend(follow_up);
        let events = run(&mut n, 0, &session);
        let EventKind::SignificantEvent { category, .. } = &events[1].kind else {
            panic!("{code:02X}: {:?}", kinds(&events))
        };
        assert_eq!(*category, want, "{code:02X}");
        assert_eq!(events.get(2).map(|e| e.kind.name()).unwrap_or(""), kind, "{code:02X}");
        assert_eq!(events.len(), 2 + usize::from(!kind.is_empty()), "{code:02X}");
    }
    // LP87: every level reported is a win of its own.
    let wins = SessionEvent::Reply {
        poll: LongPoll::SendProgressiveWins,
        reply: Reply::ProgressiveWins(ProgressiveWins {
            group: 1,
            levels: vec![(1, 1_000), (2, 3_000)],
        }),
    };
    let events = run(&mut normalizer(), 0, &[wins]);
    assert_eq!(kinds(&events), ["progressive_win", "progressive_win"]);
    let EventKind::ProgressiveWin { level, amount, .. } = &events[1].kind else { unreachable!() };
    assert_eq!((*level, minor(amount)), (2, Some(3_000)));
    // Priced: the progressive in cents, the bonus in credits at 20 kopiyky.
    let events = run(&mut normalizer(), 0, &[machine_info(0x0B), rte_bonus]);
    let EventKind::BonusAward { amount, multiplied_win, multiplier, .. } = &events[1].kind else {
        unreachable!()
    };
    assert_eq!((minor(amount), minor(multiplied_win), *multiplier), (Some(1_000), Some(2_000), 2));
}

/// Progressive wins and bonuses paid to the credit meter are in coin out (001D and 001E are part
/// of it): the window counts them as wins, and the meters reconcile.
#[test]
fn progressive_wins_and_bonuses_reconcile_with_coin_out() {
    let mut n = normalizer();
    let progressive = SessionEvent::Reply {
        poll: LongPoll::SendProgressiveWin,
        reply: Reply::ProgressiveWin(ProgressiveWin { group: 1, level: 1, amount: 2_000 }),
    };
    let bonus = SessionEvent::Reply {
        poll: LongPoll::SendLegacyBonusWin,
        reply: Reply::LegacyBonusWin(LegacyBonusWin { bonus: 40, ..Default::default() }),
    };
    let events = run(
        &mut n,
        0,
        &[
            machine_info(0x0B),
            meters(0, 0, 0, 0),
            game_started(25, 25, 0x0B),
            game_ended(0),
            progressive,
            bonus,
            // 2 000 kopiyky are 100 credits, the bonus 40: coin out +140.
            meters(25, 140, 0, 1),
        ],
    );
    assert!(!kinds(&events).contains(&"reconciliation"), "{:?}", kinds(&events));
    let mismatched =
        run(&mut n, 20, &[game_started(25, 50, 0x0B), game_ended(0), meters(50, 180, 0, 2)]);
    assert!(kinds(&mismatched).contains(&"reconciliation"), "the test can fail");
}

/// A progressive level paid by an attendant is no part of its game's 7F win; the jackpot meter
/// counts it, and the window counts it as a win.
#[test]
fn a_progressive_handpay_reconciles_with_the_jackpot_meter() {
    let mut n = normalizer();
    let events = run(
        &mut n,
        0,
        &[
            machine_info(0x0B),
            meters(0, 0, 0, 0),
            game_started(25, 25, 0x0B),
            game_ended(0),
            // Level 3, 2 000 kopiyky: 100 credits at 20 kopiyky.
            handpay_info(0x03, 2_000),
            meters(25, 0, 100, 1),
        ],
    );
    assert!(!kinds(&events).contains(&"reconciliation"), "{:?}", kinds(&events));
}

// === Multi-game machines ===

fn number_of_games(games: u16) -> SessionEvent {
    SessionEvent::Reply { poll: LongPoll::SendNumberOfGames, reply: Reply::NumberOfGames(games) }
}

fn game_configuration(game: u16, denomination: u8) -> SessionEvent {
    let info = firmware_protocols::sas::message::MachineInfo {
        denomination,
        paytable_id: *b"SIM002",
        max_bet: 10,
        ..Default::default()
    };
    SessionEvent::Reply {
        poll: LongPoll::SendGameConfiguration { game },
        reply: Reply::GameConfiguration { game, info },
    }
}

/// LP2F for `game`: coin in, coin out, jackpot, games played (accounting credits).
fn game_meters(game: u16, coin_in: u64, coin_out: u64, jackpot: u64, played: u64) -> SessionEvent {
    let meters = vec![(0x00, coin_in), (0x01, coin_out), (0x02, jackpot), (0x05, played)];
    SessionEvent::Reply {
        poll: LongPoll::SendSelectedMeters { game, meters: vec![0x00, 0x01, 0x02, 0x05] },
        reply: Reply::SelectedMeters(firmware_protocols::sas::message::SelectedMeters {
            game,
            meters,
        }),
    }
}

fn select(game: u16) -> SessionEvent {
    SessionEvent::RealTimeEvent(RealTimeEvent::GameSelected { game })
}

/// A machine at 0.01 whose game 2 is played at 0.05 (LP53), with every baseline read.
fn two_game_machine() -> (Normalizer, Vec<CanonicalEvent>) {
    let mut n = normalizer();
    let events = run(
        &mut n,
        0,
        &[
            machine_info(0x01),
            number_of_games(2),
            game_configuration(1, 0x01),
            game_configuration(2, 0x02),
            meters(1000, 500, 0, 10),
            game_meters(1, 600, 300, 0, 6),
            game_meters(2, 400, 200, 0, 4),
        ],
    );
    (n, events)
}

#[test]
fn lp51_and_lp53_describe_the_games_and_each_play_event_carries_its_games_denomination() {
    let (mut n, setup) = two_game_machine();
    let EventKind::MachineInfo(info) =
        &setup.iter().rfind(|e| e.kind.name() == "machine_info").unwrap().kind
    else {
        unreachable!()
    };
    assert_eq!(info.number_of_games, Some(2));
    let games: Vec<(u16, u8)> =
        info.games.iter().map(|g| (g.number, g.denomination_code)).collect();
    assert_eq!(games, [(1, 0x01), (2, 0x02)]);
    assert_eq!(info.games[1].denomination.as_ref().and_then(minor), Some(5));
    // Game 2 without the multi-denomination flag: its 2 credits are priced at LP53's 0.05.
    let events = run(&mut n, 10, &[select(2), game_started(2, 1010, 0x02), game_ended(0)]);
    let bet = only(&events, "bet_accepted");
    let EventKind::BetAccepted { amount, .. } = &bet.kind else { unreachable!() };
    assert_eq!(minor(amount), Some(10));
    let game = bet.game.as_ref().unwrap();
    assert_eq!((game.number, game.denomination_code), (Some(2), Some(0x02)));
    let events = run(&mut n, 20, &[select(1), game_started(3, 1013, 0x01)]);
    let game = only(&events, "bet_accepted").game.clone().unwrap();
    assert_eq!((game.number, game.denomination_code), (Some(1), Some(0x01)));
}

/// A game on game 1 (bet 10, win 20) and one on game 2 (2 credits at 0.05 = 10 accounting
/// credits, no win), the machine's meters agreeing, then the two games' meters as given.
fn play_both_games(games: [SessionEvent; 2]) -> Vec<CanonicalEvent> {
    let (mut n, _) = two_game_machine();
    let [one, two] = games;
    let play = [
        select(1),
        game_started(10, 1010, 0x01),
        game_ended(20),
        select(2),
        game_started(2, 1020, 0x42),
        game_ended(0),
        meters(1020, 520, 0, 12),
        one,
        two,
    ];
    run(&mut n, 10, &play)
}

#[test]
fn each_game_reconciles_against_its_own_meters() {
    let events = play_both_games([game_meters(1, 610, 320, 0, 7), game_meters(2, 410, 200, 0, 5)]);
    assert!(!kinds(&events).contains(&"reconciliation"), "{:?}", kinds(&events));
}

#[test]
fn a_game_whose_meters_disagree_with_its_events_gets_its_own_reconciliation() {
    // The machine's totals agree, but the machine booked game 2's bet on game 1.
    let events = play_both_games([game_meters(1, 620, 320, 0, 8), game_meters(2, 400, 200, 0, 4)]);
    let found: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Reconciliation { game_number, outcome, bets, .. } => {
                Some((*game_number, *outcome, bets.events_minor_units, bets.meters_minor_units))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        found,
        [
            (Some(1), ReconciliationOutcome::Mismatch, Some(10), Some(20)),
            (Some(2), ReconciliationOutcome::Mismatch, Some(10), Some(0)),
        ]
    );
}

#[test]
fn an_outage_marks_every_games_window() {
    let (mut n, _) = two_game_machine();
    let events = run(
        &mut n,
        10,
        &[
            SessionEvent::LinkUp,
            SessionEvent::LinkDown,
            SessionEvent::LinkUp,
            meters(1000, 500, 0, 10),
            game_meters(2, 400, 200, 0, 4),
        ],
    );
    let contexts: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Reconciliation { game_number, context, .. } => {
                Some((*game_number, context.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        contexts,
        [(None, vec![WindowContext::LinkOutage]), (Some(2), vec![WindowContext::LinkOutage])]
    );
}

#[test]
fn before_lp53_a_games_denomination_is_the_one_its_multi_denomination_wager_names() {
    let mut n = normalizer();
    let events =
        run(&mut n, 0, &[machine_info(0x01), select(2), game_started(2, 10, 0x42), game_ended(0)]);
    for kind in ["bet_accepted", "game_ended"] {
        let game = only(&events, kind).game.clone().unwrap();
        assert_eq!((game.number, game.denomination_code), (Some(2), Some(0x02)), "{kind}");
    }
    let EventKind::BetAccepted { amount, .. } = &only(&events, "bet_accepted").kind else {
        unreachable!()
    };
    assert_eq!(minor(amount), Some(10));
}

#[test]
fn a_games_lifetime_meters_and_window_continue_across_a_gateway_restart() {
    let (first, setup) = two_game_machine();
    let snapshots: Vec<CanonicalEvent> =
        setup.into_iter().filter(|e| e.kind.name() == "meter_snapshot").collect();
    let mut resumed = Normalizer::resume(venue(), machine(), first.next_seq(), &snapshots).unwrap();
    // While the gateway was away game 2 took 50 more credits in.
    let events = run(
        &mut resumed,
        100,
        &[machine_info(0x01), meters(1050, 500, 0, 11), game_meters(2, 450, 200, 0, 5)],
    );
    let game_two = events
        .iter()
        .rfind(|e| matches!(e.kind, EventKind::MeterSnapshot { game_number: 2, .. }))
        .unwrap();
    assert_eq!(reading(game_two, "coin_in").lifetime, Some(450));
    let found: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Reconciliation { game_number, context, bets, .. } => {
                Some((*game_number, context.clone(), bets.meters_minor_units))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        found,
        [
            (None, vec![WindowContext::LinkOutage], Some(50)),
            (Some(2), vec![WindowContext::LinkOutage], Some(50)),
        ],
        "game 2's window runs from its journalled snapshot, across the outage"
    );
}

#[test]
fn bills_accepted_per_denomination_are_named_by_face_value() {
    use super::meters::MeterKey;
    let name = |code: u16| MeterKey::Sas(code).name();
    assert_eq!(name(0x40), "bills_accepted_1");
    assert_eq!(name(0x47), "bills_accepted_100");
    assert_eq!(name(0x57), "bills_accepted_1000000");
    // 0058 on are other bill meters (to drop, to the hopper): not bills accepted.
    assert_eq!(name(0x58), "sas_0058");
    assert_eq!(MeterKey::Sas(0x47).unit(), crate::event::MeterUnit::Count);
}
