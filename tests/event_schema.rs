//! `docs/event-schema.json` describes exactly what the code writes: one event of every kind, and
//! everything a normalizer run emits, validate against it, and it rejects what it should.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use firmware_protocols::sas::message::{
    BasicMeters, DateTime, MachineInfo as SasMachineInfo, SelectedMeters,
};
use firmware_protocols::sas::session::SessionEvent;
use firmware_protocols::sas::{Address, Exception, LongPoll, RealTimeEvent, Reply};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::{Value, json};
use slotgate::event::*;
use slotgate::normalizer::{MachineIdentity, Normalizer, VenueSettings};

fn schema() -> Value {
    let text = include_str!("../docs/event-schema.json");
    serde_json::from_str(text).unwrap()
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft202012::new(&schema()).unwrap()
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect()
}

fn venue() -> VenueId {
    VenueId::new("hall-1").unwrap()
}

fn registry() -> RegistryId {
    RegistryId::new("UA-0001").unwrap()
}

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_772_366_400 + second).unwrap()
}

fn uah(minor: i64) -> Amount {
    Amount::from_minor(minor, &Currency::UAH)
}

/// One event of `kind`, with every optional top-level field filled in.
fn event(machine_seq: u64, kind: EventKind) -> CanonicalEvent {
    let key = idempotency_key(&venue(), &registry(), machine_seq);
    CanonicalEvent {
        schema_version: SCHEMA_VERSION,
        event_id: event_id(&key),
        idempotency_key: key,
        venue_id: venue(),
        machine: MachineRef {
            registry_id: registry(),
            sas_address: 1,
            asset_number: Some("A-17".into()),
            serial: Some("ABC123".into()),
        },
        machine_seq,
        occurred_at: at(0),
        occurred_at_local: "2026-03-01T14:00:00+02:00".into(),
        egm_time: Some("2026-03-01T14:00:02".parse().unwrap()),
        game: Some(GameRef {
            number: Some(3),
            game_id: Some("AT".into()),
            paytable_id: None,
            denomination_code: Some(0x02),
        }),
        source: Source {
            kind: SourceKind::RealTimeEvent,
            code: Some(0x7E),
            name: "GameStarted".into(),
        },
        derived: false,
        kind,
    }
}

fn figures(events: Option<i64>, meters: Option<i64>) -> Figures {
    let difference = events.zip(meters).map(|(e, m)| m - e);
    Figures {
        currency: Currency::UAH.code(),
        events_minor_units: events,
        meters_minor_units: meters,
        difference,
    }
}

/// One sample of every kind.
fn ticket() -> TicketInfo {
    TicketInfo {
        validation_number: "**************3456".into(),
        masked: true,
        validation_type: 0,
        class: TicketClass::Cashable,
        machine_time: Some("2026-03-01T14:00:05".parse().unwrap()),
        ticket_number: 12,
    }
}

fn samples() -> Vec<EventKind> {
    let bill = BillInfo { country_code: 37, denomination_code: 2, value: Some(5), count: Some(17) };
    let reading = MeterReading {
        sas_code: Some(0),
        unit: MeterUnit::Credits,
        raw: 123_456,
        digits: 8,
        lifetime: Some(223_456),
        amount: Some(Amount::from_credits(223_456, Some(0x01), &Currency::UAH)),
        rolled_over: false,
    };
    vec![
        EventKind::BetAccepted {
            amount: Amount::from_credits(25, Some(0x0B), &Currency::UAH),
            games: 1,
            max_bet: Some(false),
            wager_type: Some(0x41),
            progressive_group: Some(0),
            coin_in_meter: Some(123_481),
        },
        EventKind::BetRefunded { amount: uah(500) },
        EventKind::AftTransfer {
            direction: AftDirection::ToMachine,
            class: TicketClass::NonRestricted,
            amount: uah(2_000),
            transfer_type: 0x00,
            status: 0x00,
            transaction_id: "SIM-1".into(),
            machine_time: Some("2026-03-01T14:00:05".parse().unwrap()),
        },
        EventKind::BonusAward {
            amount: Amount::from_credits(40, Some(0x01), &Currency::UAH),
            multiplier: 0,
            multiplied_win: Amount::from_credits(0, Some(0x01), &Currency::UAH),
            tax_status: 1,
        },
        EventKind::ProgressiveWin { group: 1, level: 0x20, amount: uah(1_000_000) },
        EventKind::BillDetails { bill, amount: Some(uah(500)) },
        EventKind::ClockDrift {
            egm_clock: "2024-03-15T13:45:30".into(),
            drift_seconds: Some(-90),
            threshold_seconds: 60,
        },
        EventKind::ClockSet { set_to: "2026-03-01T14:00:00".parse().unwrap() },
        EventKind::CreditsIn { method: CreditMethod::Bill, amount: None, bill: Some(bill) },
        EventKind::CreditsOut { method: CreditMethod::Ticket, amount: None },
        EventKind::EventGap {},
        EventKind::ForeignChirp { address: 5 },
        EventKind::GameEnded { win: Amount::from_credits(40, None, &Currency::UAH), games: 1 },
        EventKind::GamePhase { phase: GamePhase::Started },
        EventKind::GameSelected { game_number: Some(3) },
        EventKind::Handpay {
            amount: Amount::from_hundredths(150_000, &Currency::UAH),
            partial_pay: uah(0),
            progressive_group: 0,
            level: 0,
            reset_id: 0,
        },
        EventKind::HandpayReset {},
        EventKind::LinkGapSummary {
            since: at(-600),
            offline_at: Some(at(-500)),
            games_played: Some(20),
            coin_in: uah(10_000),
            coin_out: uah(6_000),
            jackpot: uah(0),
        },
        EventKind::LinkState { state: LinkStatus::Online, offline_since: Some(at(-500)) },
        EventKind::MachineInfo(Box::new(MachineInfo {
            sas_version: Some("602".into()),
            serial: Some("ABC123".into()),
            game_id: Some("AT".into()),
            additional_id: Some("123".into()),
            paytable_id: Some("123456".into()),
            base_percentage: Some("9050".into()),
            denomination_code: Some(0x01),
            denomination: Some(uah(1)),
            max_bet: Some(0xC9),
            progressive_group: Some(0x12),
            game_options: Some(0),
            features: Some(Features {
                raw: vec![0xC0, 0x48, 0x01],
                validation: "secure_enhanced".into(),
                ticket_redemption: true,
                aft: true,
                legacy_bonus_awards: false,
                extended_meters: true,
                multi_denomination: false,
            }),
            number_of_games: Some(2),
            games: vec![GameInfo {
                number: 2,
                denomination_code: 0x02,
                denomination: Some(uah(5)),
                paytable_id: "SIM002".into(),
                max_bet: 10,
            }],
        })),
        EventKind::MeterReset {
            meters: vec![MeterJump { meter: "coin_in".into(), before: 123_456, after: 100 }],
            signalled_by: Some(0x3A),
        },
        EventKind::MeterSnapshot {
            trigger: SnapshotTrigger::Periodic,
            game_number: 0,
            meters: BTreeMap::from([("coin_in".to_owned(), reading)]),
        },
        EventKind::FollowUpLost {
            exception: 0x51,
            command: 0x1B,
            poll: "SendHandpayInfo".into(),
            error: "long poll 0x1b is not supported by this machine".into(),
        },
        EventKind::PollFailed {
            command: 0x1B,
            poll: "SendHandpayInfo".into(),
            error: "no answer".into(),
        },
        EventKind::PollUnsupported { command: 0x6F },
        EventKind::Reconciliation {
            game_number: Some(2),
            outcome: ReconciliationOutcome::Mismatch,
            context: vec![WindowContext::EventGap],
            window_start: at(-60),
            bets: figures(Some(500), Some(600)),
            wins: figures(None, Some(800)),
            games: Counts { events: 1, meters: Some(2) },
        },
        EventKind::RemoteCommand {
            command_id: Some(uuid::uuid!("6f1c9a52-8d0e-4b7a-9c3e-2a5b8f4d1e07")),
            action: Some("disable".into()),
            state: "rejected".into(),
            reason: Some("bad_signature".into()),
            origin: "mqtt:dsom".into(),
            signers: Vec::new(),
            detail: Some("the signature of key reg-2026 does not verify".into()),
        },
        EventKind::RomSignature { seed: Some(0), signature: 0xBEEF },
        EventKind::SignificantEvent {
            category: Category::Door,
            event: "slot_door_opened".into(),
            details: BTreeMap::from([("reel".to_owned(), 2)]),
        },
        EventKind::TicketOut { amount: uah(2_500), ticket: ticket() },
        EventKind::TicketIn { amount: uah(2_500), ticket: ticket() },
        EventKind::HandpayReceipt { amount: uah(150_000), ticket: ticket() },
        EventKind::UnknownException { code: 0xE5 },
        EventKind::Unrecognized { description: "something new".into() },
    ]
}

#[test]
fn the_schema_file_is_a_valid_draft_2020_12_schema() {
    let schema = schema();
    jsonschema::draft202012::meta::validate(&schema).unwrap();
    assert_eq!(schema["properties"]["schema_version"]["const"], json!(SCHEMA_VERSION));
}

#[test]
fn one_event_of_every_kind_validates_against_the_schema() {
    let validator = validator();
    let samples = samples();
    let names: BTreeSet<&str> = samples.iter().map(EventKind::name).collect();
    assert_eq!(names, EventKind::NAMES.iter().copied().collect(), "a sample per kind");
    for (seq, kind) in samples.into_iter().enumerate() {
        let event = event(seq as u64, kind);
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], json!(event.kind.name()));
        let found = errors(&validator, &json);
        assert!(found.is_empty(), "{}: {found:#?}\n{json:#}", event.kind.name());
        let back: CanonicalEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }
}

#[test]
fn the_schema_lists_exactly_the_kinds_the_code_writes() {
    let schema = schema();
    let listed: BTreeSet<&str> = schema["properties"]["kind"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(listed, EventKind::NAMES.iter().copied().collect());
    for name in EventKind::NAMES {
        assert!(schema["$defs"].get(format!("data_{name}")).is_some(), "no data schema for {name}");
    }
}

#[test]
fn the_schema_rejects_events_that_break_it() {
    let validator = validator();
    let good = serde_json::to_value(event(7, EventKind::ForeignChirp { address: 5 })).unwrap();
    assert!(errors(&validator, &good).is_empty());
    let broken = |f: &dyn Fn(&mut Value)| {
        let mut event = good.clone();
        f(&mut event);
        event
    };
    let cases = [
        ("missing derived", broken(&|e| drop(e.as_object_mut().unwrap().remove("derived")))),
        ("data of another kind", broken(&|e| e["kind"] = json!("game_ended"))),
        ("unknown kind", broken(&|e| e["kind"] = json!("jackpot_party"))),
        (
            "money as a float",
            broken(&|e| {
                e["kind"] = json!("bet_refunded");
                e["data"] = json!({"amount": {"minor_units": 1.5, "currency": "UAH", "credits": null,
                "denomination_code": null, "status": "exact"}});
            }),
        ),
        ("a key separator in the venue", broken(&|e| e["venue_id"] = json!("a/b"))),
        (
            "a local time without offset",
            broken(&|e| e["occurred_at_local"] = json!("2026-03-01T14:00:00")),
        ),
        ("an extra key", broken(&|e| e["player_id"] = json!("123"))),
    ];
    for (what, event) in cases {
        assert!(!errors(&validator, &event).is_empty(), "schema accepted {what}");
    }
}

/// Everything a normalizer emits over a busy session validates.
#[test]
fn normalizer_output_validates_against_the_schema() {
    let venue = VenueSettings {
        venue_id: venue(),
        currency: Currency::UAH,
        time_zone: TimeZone::get("Europe/Kyiv").unwrap(),
        clock_drift_threshold: Duration::from_secs(60),
        ticket_numbers: Default::default(),
    };
    let machine = MachineIdentity {
        registry_id: registry(),
        address: Address::new(1).unwrap(),
        asset_number: None,
        denomination_code: None,
    };
    let mut normalizer = Normalizer::new(venue, machine, 0);
    let info = SasMachineInfo { denomination: 0x0B, game_id: *b"AT", ..Default::default() };
    let meters = |coin_in, games_played| SessionEvent::Reply {
        poll: LongPoll::SendMeters,
        reply: Reply::Meters(BasicMeters { coin_in, games_played, ..Default::default() }),
    };
    let game_meters = |coin_in| SessionEvent::Reply {
        poll: LongPoll::SendSelectedMeters { game: 3, meters: vec![0x00, 0x01, 0x02] },
        reply: Reply::SelectedMeters(SelectedMeters {
            game: 3,
            meters: vec![(0x00, coin_in), (0x01, 0), (0x02, 0)],
        }),
    };
    let session = [
        SessionEvent::LinkUp,
        SessionEvent::Reply {
            poll: LongPoll::SendMachineInfo,
            reply: Reply::MachineInfo(info.clone()),
        },
        // A multi-game machine: LP51, LP53 for game 3, and game 3's meters (LP2F).
        SessionEvent::Reply { poll: LongPoll::SendNumberOfGames, reply: Reply::NumberOfGames(3) },
        SessionEvent::Reply {
            poll: LongPoll::SendGameConfiguration { game: 3 },
            reply: Reply::GameConfiguration { game: 3, info },
        },
        game_meters(0),
        meters(1000, 10),
        SessionEvent::RealTimeEvent(RealTimeEvent::GameSelected { game: 3 }),
        SessionEvent::RealTimeEvent(RealTimeEvent::GameStarted {
            credits_wagered: 25,
            total_coin_in: 1025,
            wager_type: 0,
            progressive_group: 0,
        }),
        SessionEvent::RealTimeEvent(RealTimeEvent::GameEnded { win: 0 }),
        // Game 3's coin in moved by 30 credits, its events say 25: a per-game reconciliation.
        game_meters(30),
        SessionEvent::Exception(Exception::ExceptionBufferOverflow),
        SessionEvent::Exception(Exception::from_code(0x26)),
        meters(1030, 12),
        SessionEvent::Exception(Exception::GameEnded),
        meters(5, 1),
        SessionEvent::LinkDown,
        SessionEvent::LinkUp,
        meters(50, 5),
        SessionEvent::Reply {
            poll: LongPoll::SendDateTime,
            reply: Reply::DateTime(DateTime {
                year: 2026,
                month: 3,
                day: 1,
                hour: 13,
                minute: 0,
                second: 0,
            }),
        },
    ];
    let validator = validator();
    let mut seen = BTreeSet::new();
    let mut per_game = Vec::new();
    for (i, session_event) in session.iter().enumerate() {
        for event in normalizer.handle(at(i as i64), session_event).unwrap() {
            let json = serde_json::to_value(&event).unwrap();
            let found = errors(&validator, &json);
            assert!(found.is_empty(), "{found:#?}\n{json:#}");
            seen.insert(event.kind.name());
            if let EventKind::Reconciliation { game_number: Some(game), .. } = event.kind {
                per_game.push(game);
            }
        }
    }
    assert!(seen.len() >= 12, "{seen:?}");
    assert_eq!(per_game, [3], "game 3's window was reconciled on its own");
}
