//! Every money movement end to end: simulated machines → `slotgate run` → journal → mosquitto →
//! a subscriber. A floor mixing bill-only machines, TITO machines (cash-out tickets, tickets
//! inserted, handpays with receipts) and cashless machines (AFT transfers in and out, SAS
//! progressive hits, legacy bonuses) plays; what the subscriber received must hold every money
//! movement of the simulators' ground-truth ledgers exactly once, with its amount, class and game,
//! nothing invented, and the sums must equal the meters' deltas per machine and per game.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;
mod upstream;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{
    FLOOR_MOVEMENTS, NICKEL_PLAY, Simulated, aft_reference, assert_sequences_gap_free,
    cashless_balances, event_reference, read_json_lines, run_gateway, simulate,
};
use serde_json::Value;
use upstream::{Mosquitto, MosquittoOptions, Subscriber, wait_until};

/// One money movement: (kind, amount in minor units, reference, class). The reference is the
/// last 4 digits of a ticket, or an AFT transfer's `direction/transaction_id`.
type Movement = (String, i64, Option<String>, Option<String>);

/// A configuration where every machine learns its denomination from LP1F (the TITO machines
/// count in 0.05 credits), snapshots every 10 s (the shortest allowed), and an MQTT destination.
fn write_config(dir: &Path, machines: &[Simulated], broker: u16) -> std::path::PathBuf {
    let mut text = format!(
        "[venue]\nid = \"UA-TEST-1\"\ncurrency = \"UAH\"\ntime_zone = \"Europe/Kyiv\"\n\n\
         [polling]\nmeter_snapshot_interval = \"10s\"\n\n[storage]\ndir = \"state\"\n\n\
         [[destination]]\nname = \"dsom\"\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{broker}\"\n\
         allow_plaintext = true\nkeep_alive = \"5s\"\n"
    );
    for (i, m) in machines.iter().enumerate() {
        text.push_str(&format!(
            "\n[[line]]\nname = \"line-{i}\"\nkind = \"tcp\"\naddress = \"{}\"\n\
             connect_timeout = \"1s\"\n  [[line.machine]]\n  address = {}\n  \
             registry_id = \"EGM-{}\"\n",
            m.endpoint, m.address, m.serial
        ));
    }
    let path = dir.join("slotgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Money movements per serial as the ledger has them, sorted: a report the machine queued later
/// can overtake a follow-up read (an RTE bill frame pre-empts the LP4D read after a ticket), so
/// the comparison is "each exactly once", not "in the same order". UAH has 2 decimals, so cents
/// are kopiyky and a bill of value V is V × 100.
fn ledger_movements(ledger: &[Value]) -> BTreeMap<String, Vec<Movement>> {
    let mut out: BTreeMap<String, Vec<Movement>> = BTreeMap::new();
    for r in ledger {
        let cents = |field: &str| r[field].as_i64().unwrap();
        let last4 = |number: &Value| {
            let n = number.as_str().unwrap();
            Some(n[n.len() - 4..].to_owned())
        };
        let movement = match r["type"].as_str().unwrap() {
            "bill" => ("credits_in".to_owned(), r["value"].as_i64().unwrap() * 100, None, None),
            "ticket_out" => {
                ("ticket_out".into(), cents("cents"), last4(&r["validation_number"]), cash())
            }
            "ticket_in" => {
                ("ticket_in".into(), cents("cents"), last4(&r["validation_number"]), cash())
            }
            "aft_transfer" => {
                let class = r["class"].as_str().map(Into::into);
                ("aft_transfer".into(), cents("cents"), Some(aft_reference(r)), class)
            }
            // A progressive paid by an attendant is its `handpay` record.
            "progressive" if r["paid_by"] == "machine" => {
                ("progressive_win".into(), cents("cents"), None, None)
            }
            "bonus" => ("bonus_award".into(), cents("cents"), None, None),
            "handpay" => {
                let serial = r["serial"].as_str().unwrap().to_owned();
                let list = out.entry(serial).or_default();
                list.push(("handpay".into(), cents("cents"), None, None));
                if !r["receipt"].is_null() {
                    let receipt = last4(&r["receipt"]);
                    list.push(("handpay_receipt".into(), cents("cents"), receipt, cash()));
                }
                continue;
            }
            _ => continue,
        };
        out.entry(r["serial"].as_str().unwrap().to_owned()).or_default().push(movement);
    }
    out.values_mut().for_each(|list| list.sort());
    out
}

fn cash() -> Option<String> {
    Some("cashable".into())
}

const MONEY_KINDS: [&str; 9] = [
    "aft_transfer",
    "bonus_award",
    "credits_in",
    "credits_out",
    "handpay",
    "handpay_receipt",
    "progressive_win",
    "ticket_in",
    "ticket_out",
];

/// Money events per serial as the gateway reported them, sorted like [`ledger_movements`].
fn event_movements(events: &[Value]) -> BTreeMap<String, Vec<Movement>> {
    let mut out: BTreeMap<String, Vec<Movement>> = BTreeMap::new();
    for e in events {
        let kind = e["kind"].as_str().unwrap();
        if !MONEY_KINDS.contains(&kind) {
            continue;
        }
        let serial = e["machine"]["registry_id"].as_str().unwrap().trim_start_matches("EGM-");
        let amount = e["data"]["amount"]["minor_units"].as_i64().unwrap_or(-1);
        let (last4, class) = event_reference(e);
        out.entry(serial.to_owned()).or_default().push((kind.to_owned(), amount, last4, class));
    }
    out.values_mut().for_each(|list| list.sort());
    out
}

/// The last value the gateway read of each meter of a machine, in minor units.
fn last_meter(events: &[Value], registry_id: &str, meter: &str) -> Option<i64> {
    events
        .iter()
        .filter(|e| e["machine"]["registry_id"] == registry_id && e["kind"] == "meter_snapshot")
        .filter_map(|e| e["data"]["meters"][meter]["amount"]["minor_units"].as_i64())
        .next_back()
}

#[test]
fn every_money_movement_of_a_mixed_floor_arrives_once_and_adds_up_to_the_meters() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(&dir.path().join("broker"), MosquittoOptions::default());
    let subscriber = Subscriber::start(broker.port(), "slotgate/UA-TEST-1/+/events", None);
    let play = |prefix: &'static str, address: &'static str, seed: &'static str| {
        [
            "--rte",
            "--game-rate",
            "60",
            "--game-duration",
            "200ms",
            "--max-games",
            "12",
            "--serial-prefix",
            prefix,
            "--address",
            address,
            "--seed",
            seed,
            "--cashout-probability",
            "0.3",
            // Long enough for the LP1B read: pending RTE reports go first (§4.4).
            "--handpay-duration",
            "5s",
        ]
    };
    // Bill-only machines: bills in, cash-outs to the hopper, big wins hand paid.
    let bills_ledger = dir.path().join("bills.jsonl");
    let mut args = play("BIL", "1", "3").to_vec();
    args.extend(["--bet", "1:1,5:1", "--win", "0:6,1:2,2:1,100:1", "--handpay-limit", "300"]);
    let (bills_sim, mut machines) = simulate(2, &bills_ledger, &args);
    // TITO machines at 0.05 a credit: tickets out, tickets in, handpays with receipts.
    let tito_ledger = dir.path().join("tito.jsonl");
    let mut args = play("TIT", "10", "4").to_vec();
    args.extend(NICKEL_PLAY);
    args.extend(["--validation", "secure-enhanced", "--ticket-in-probability", "0.5"]);
    args.extend(["--handpay-limit", "200"]);
    let (tito_sim, tito) = simulate(2, &tito_ledger, &args);
    machines.extend(tito);
    // Cashless machines at 0.05 a credit: the player moves money by AFT (in, cashable or
    // promotional, and cash-outs to the host), SAS progressive levels hit, bonuses are awarded.
    let cashless_ledger = dir.path().join("cashless.jsonl");
    let mut args = play("AFT", "20", "5").to_vec();
    args.extend(NICKEL_PLAY);
    args.extend(["--aft-probability", "0.6", "--handpay-limit", "400"]);
    args.extend(["--progressive-probability", "0.25", "--bonus-probability", "0.25"]);
    let (cashless_sim, cashless) = simulate(2, &cashless_ledger, &args);
    machines.extend(cashless);
    let config = write_config(dir.path(), &machines, broker.port());
    let gateway = run_gateway(&config, &dir.path().join("run.log"));

    let unique = || subscriber.unique_events();
    let ledgers = || {
        let mut all = read_json_lines(&bills_ledger);
        all.extend(read_json_lines(&tito_ledger));
        all.extend(read_json_lines(&cashless_ledger));
        all
    };
    // Until every game is played and paid, and the subscriber has every movement and a meter
    // snapshot read after the last of them.
    let settled = || {
        let ledger = ledgers();
        let games = ledger.iter().filter(|r| r["type"] == "game").count();
        let handpays_open = ledger
            .iter()
            .filter(|r| r["type"] == "game" && r["paid_by"] == "handpay")
            .count()
            > ledger.iter().filter(|r| r["type"] == "handpay" && r["kind"] == "jackpot").count()
            || ledger
                .iter()
                .filter(|r| r["type"] == "progressive" && r["paid_by"] == "handpay")
                .count()
                > ledger
                    .iter()
                    .filter(|r| r["type"] == "handpay" && r["kind"] == "progressive")
                    .count();
        let events = unique();
        let snapshot_after_money = machines.iter().all(|m| {
            let id = format!("EGM-{}", m.serial);
            let mine: Vec<&Value> =
                events.iter().filter(|e| e["machine"]["registry_id"] == id.as_str()).collect();
            let last_money =
                mine.iter().rposition(|e| MONEY_KINDS.contains(&e["kind"].as_str().unwrap()));
            let last_ticket_meter = mine.iter().rposition(|e| {
                e["kind"] == "meter_snapshot"
                    && !e["data"]["meters"]["cashable_ticket_out_cents"].is_null()
            });
            let last_electronic_meter = mine.iter().rposition(|e| {
                e["kind"] == "meter_snapshot"
                    && !e["data"]["meters"]["machine_paid_progressive"].is_null()
            });
            last_ticket_meter > last_money && last_electronic_meter > last_money
        });
        games == 6 * 12
            && !handpays_open
            && snapshot_after_money
            && event_movements(&events) == ledger_movements(&ledger)
    };
    let done = wait_until(Duration::from_secs(180), settled);
    let log = || std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default();
    assert!(gateway.terminate().success(), "{}", log());
    // The simulators write their `stop` records (the final meters) as they end.
    bills_sim.terminate();
    tito_sim.terminate();
    cashless_sim.terminate();
    broker.stop();

    let events = unique();
    let ledger = ledgers();
    let expected = ledger_movements(&ledger);
    let got = event_movements(&events);
    assert_eq!(got, expected, "every movement once, with its amount and class (settled {done})");
    assert!(done);
    assert_sequences_gap_free(&events);
    // LPA0, read at link-up, says which machines validate tickets.
    for m in &machines {
        let id = format!("EGM-{}", m.serial);
        let features = events
            .iter()
            .filter(|e| e["machine"]["registry_id"] == id.as_str() && e["kind"] == "machine_info")
            .filter_map(|e| e["data"]["features"].as_object())
            .next_back()
            .unwrap_or_else(|| panic!("{id}: no LPA0 features in machine_info"));
        let tito = m.serial.starts_with("TIT");
        let validation = if tito { "secure_enhanced" } else { "none" };
        assert_eq!(features["validation"], validation, "{id}");
        assert_eq!(features["ticket_redemption"], tito, "{id}");
        let cashless = m.serial.starts_with("AFT");
        assert_eq!(features["aft"], cashless, "{id}");
        assert_eq!(features["legacy_bonus_awards"], cashless, "{id}");
    }
    // The floor really mixed: every kind of movement happened.
    let all: Vec<&Movement> = expected.values().flatten().collect();
    for kind in FLOOR_MOVEMENTS {
        assert!(all.iter().any(|m| m.0 == kind), "no {kind} in the ledger");
    }
    assert!(
        expected
            .keys()
            .filter(|s| s.starts_with("BIL"))
            .all(|s| { expected[s].iter().all(|m| m.0 == "credits_in" || m.0 == "handpay") })
    );
    // Transfers both ways, and in both classes the player uses.
    let transfers: Vec<&&Movement> = all.iter().filter(|m| m.0 == "aft_transfer").collect();
    for (direction, class) in
        [("to_machine/", "cashable"), ("to_machine/", "non_restricted"), ("to_host/", "cashable")]
    {
        assert!(
            transfers.iter().any(|m| {
                m.2.as_deref().is_some_and(|r| r.starts_with(direction))
                    && m.3.as_deref() == Some(class)
            }),
            "no {direction}{class} transfer: {transfers:?}"
        );
    }

    for m in &machines {
        let id = format!("EGM-{}", m.serial);
        let mine: Vec<&Value> =
            events.iter().filter(|e| e["machine"]["registry_id"] == id.as_str()).collect();
        // Every money event carries its game: these machines play game 1 only (8C before money).
        let mut per_game: BTreeMap<(u64, String), i64> = BTreeMap::new();
        for e in mine.iter().filter(|e| MONEY_KINDS.contains(&e["kind"].as_str().unwrap())) {
            let game = e["game"]["number"].as_u64().unwrap_or_else(|| panic!("no game: {e}"));
            let amount = e["data"]["amount"]["minor_units"].as_i64().unwrap();
            *per_game.entry((game, e["kind"].as_str().unwrap().to_owned())).or_default() += amount;
        }
        assert!(per_game.keys().all(|(game, _)| *game == 1), "{id}: {per_game:?}");
        let sum = |kind: &str| per_game.get(&(1, kind.to_owned())).copied().unwrap_or(0);
        // AFT per direction and class, progressives and bonuses: Σ events = their meters.
        for (meter, read, events_sum) in cashless_balances(&events, &id) {
            assert_eq!(read, Some(events_sum), "{id}: {meter} = Σ its events");
        }
        // Σ events = the meters the gateway read (lifetime, from zero), per machine and game 1.
        assert_eq!(
            last_meter(&events, &id, "cashable_ticket_out_cents").unwrap(),
            sum("ticket_out"),
            "{id}: tickets out = 000E"
        );
        assert_eq!(
            last_meter(&events, &id, "cashable_ticket_in_cents").unwrap(),
            sum("ticket_in"),
            "{id}: tickets in = 000D"
        );
        assert_eq!(
            last_meter(&events, &id, "bills_accepted_credits").unwrap(),
            sum("credits_in"),
            "{id}: bills in = 000B"
        );
        assert_eq!(
            last_meter(&events, &id, "jackpot").unwrap()
                + last_meter(&events, &id, "handpaid_cancelled_credits").unwrap(),
            sum("handpay"),
            "{id}: handpays = 0002 + 0003"
        );
        // And the ground truth agrees with what the gateway read.
        let stop = ledger
            .iter()
            .find(|r| r["type"] == "stop" && r["serial"] == m.serial.as_str())
            .unwrap_or_else(|| panic!("{id}: no stop record"));
        let credit = if m.serial.starts_with("BIL") { 1 } else { 5 };
        assert_eq!(stop["meters"]["ticket_out_cents"].as_i64().unwrap(), sum("ticket_out"));
        assert_eq!(stop["meters"]["ticket_in_cents"].as_i64().unwrap(), sum("ticket_in"));
        assert_eq!(stop["meters"]["bill_credits"].as_i64().unwrap() * credit, sum("credits_in"));
        let total = |meter: &str| -> i64 {
            stop["meters"][meter].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).sum()
        };
        assert_eq!(total("aft_in_cents") + total("aft_out_cents"), sum("aft_transfer"));
        let paid = |meter: &str| stop["meters"][meter].as_i64().unwrap() * credit;
        assert_eq!(paid("machine_paid_progressive"), sum("progressive_win"));
        assert_eq!(paid("machine_paid_bonus"), sum("bonus_award"));
    }
    // Nothing moves money without a ledger record: no money event outside the comparison above,
    // and no poll that moves money was ever sent (the journal would show its reply).
    assert!(!events.iter().any(|e| e["kind"] == "credits_out" || e["kind"] == "unrecognized"));
    assert!(
        !events.iter().any(|e| e["source"]["code"] == 0x71 && e["source"]["type"] == "long_poll")
    );
}
