//! A mixed floor end to end: simulated machines of every kind → `slotgate run` → journal →
//! mosquitto → a subscriber. The floor is a table ([`FLOOR`]): each entry is one `slotgate
//! simulate` process with its own flags and ledger, so a new kind of machine is one more entry.
//! What the subscriber received must hold every money movement of the ground-truth ledgers
//! exactly once, with its amount, game and class, and nothing else; the sums of the events must
//! equal the meters the gateway read, per machine and, on multi-game machines, per game (R2).

// Real processes and peers in real time (tests/common): std clocks and sleeps are theirs.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;
mod upstream;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    FLOOR_MOVEMENTS, NICKEL_PLAY, Proc, Simulated, aft_reference, assert_sequences_gap_free,
    cashless_balances, event_reference, read_json_lines, run_gateway, simulate,
};
use firmware_protocols::sas::meter::denomination_minor_units;
use serde_json::Value;
use slotgate::event::money::bill_value;
use upstream::{Mosquitto, MosquittoOptions, Subscriber, wait_until};

/// One kind of machine on the floor.
struct Kind {
    /// Serial prefix; registry ids are `EGM-<serial>`.
    prefix: &'static str,
    machines: u16,
    /// SAS address of the first machine of this kind.
    address: u8,
    /// Shared play flags (e.g. [`NICKEL_PLAY`]), then this kind's own.
    play: &'static [&'static str],
    /// Flags of `slotgate simulate` beyond the common play flags.
    args: &'static [&'static str],
    /// Wins are paid by hand above the limit: the jackpot meter moves only when the attendant
    /// pays, after the game's report, so reconciliation windows may disagree for a while.
    handpays: bool,
    /// The accounting denomination as the venue registered it: machines that start playing
    /// before the gateway reaches them report bets before LP1F is read (with RTE on, pending
    /// reports go first, §4.4), and those are priced from the registry.
    denomination: &'static str,
}

const GAMES_PER_MACHINE: u64 = 12;

/// The floor. Add a kind here (AFT, progressives …) and the checks below cover it.
const FLOOR: &[Kind] = &[
    // Bill-only: bills in, cash-outs to the hopper, big wins hand paid.
    Kind {
        prefix: "BIL",
        machines: 2,
        address: 1,
        play: &[],
        args: &["--bet", "1:1,5:1", "--win", "0:6,1:2,2:1,100:1", "--handpay-limit", "300"],
        handpays: true,
        denomination: "0.01",
    },
    // TITO at 0.05 a credit: tickets out and in, handpays with receipts.
    Kind {
        prefix: "TIT",
        machines: 1,
        address: 10,
        play: &NICKEL_PLAY,
        args: &[
            "--validation",
            "secure-enhanced",
            "--ticket-in-probability",
            "0.5",
            "--handpay-limit",
            "200",
        ],
        handpays: true,
        denomination: "0.05",
    },
    // Multi-game, multi-denomination: accounting 0.01; games at 0.01, 0.05 and 0.02.
    Kind {
        prefix: "MGM",
        machines: 2,
        address: 20,
        play: &[],
        args: &[
            "--games",
            "1,2,0x17",
            "--bills",
            "1,5,10",
            "--bet",
            "1:1,2:1,5:1",
            "--win",
            "0:6,1:2,2:1,10:1",
            "--handpay-limit",
            "1000000",
        ],
        handpays: false,
        denomination: "0.01",
    },
    // Multi-drop: three machines on one line (one TCP endpoint), polled by one line task.
    Kind {
        prefix: "MDR",
        machines: 3,
        address: 30,
        play: &[],
        args: &["--multidrop", "--bet", "1:1,5:1", "--win", "0:6,1:2,2:1,20:1"],
        handpays: false,
        denomination: "0.01",
    },
    // Cashless at 0.05 a credit: AFT in (cashable or promotional) and cash-outs to the host,
    // SAS progressive levels (big ones hand paid), legacy bonuses.
    Kind {
        prefix: "AFT",
        machines: 2,
        address: 40,
        play: &NICKEL_PLAY,
        args: &[
            "--handpay-limit",
            "400",
            "--aft-probability",
            "0.6",
            "--progressive-probability",
            "0.25",
            "--bonus-probability",
            "0.25",
        ],
        handpays: true,
        denomination: "0.05",
    },
];

/// One money movement: (kind, amount in minor units, game, reference, class). The reference is
/// the last 4 digits of a ticket, or an AFT transfer's `direction/transaction_id`.
type Movement = (String, i64, u64, Option<String>, Option<String>);

const MONEY_KINDS: [&str; 11] = [
    "aft_transfer",
    "bet_accepted",
    "bonus_award",
    "game_ended",
    "credits_in",
    "credits_out",
    "handpay",
    "handpay_receipt",
    "progressive_win",
    "ticket_in",
    "ticket_out",
];

fn write_config(dir: &Path, machines: &[(Simulated, &Kind)], broker: u16) -> PathBuf {
    let mut text = format!(
        "[venue]\nid = \"UA-TEST-1\"\ncurrency = \"UAH\"\ntime_zone = \"Europe/Kyiv\"\n\n\
         [polling]\nmeter_snapshot_interval = \"10s\"\n\n[storage]\ndir = \"state\"\n\n\
         [[destination]]\nname = \"dsom\"\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{broker}\"\n\
         allow_plaintext = true\nkeep_alive = \"5s\"\n"
    );
    // Machines that share an endpoint (multi-drop) share a line.
    let mut lines: Vec<(&str, Vec<&(Simulated, &Kind)>)> = Vec::new();
    for machine in machines {
        match lines.iter_mut().find(|(endpoint, _)| *endpoint == machine.0.endpoint) {
            Some((_, on_line)) => on_line.push(machine),
            None => lines.push((&machine.0.endpoint, vec![machine])),
        }
    }
    for (i, (endpoint, on_line)) in lines.iter().enumerate() {
        text.push_str(&format!(
            "\n[[line]]\nname = \"line-{i}\"\nkind = \"tcp\"\naddress = \"{endpoint}\"\n\
             connect_timeout = \"1s\"\n"
        ));
        for (m, kind) in on_line {
            text.push_str(&format!(
                "  [[line.machine]]\n  address = {}\n  registry_id = \"EGM-{}\"\n",
                m.address, m.serial
            ));
            text.push_str(&format!("  denomination = \"{}\"\n", kind.denomination));
        }
    }
    let path = dir.join("slotgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Minor units (kopiyky) of one credit of a SAS denomination code.
fn credit(code: &Value) -> i64 {
    let code = u8::try_from(code.as_u64().unwrap()).unwrap();
    i64::try_from(denomination_minor_units(code).unwrap()).unwrap()
}

/// Money movements per serial as the ledger has them, sorted (reports may overtake follow-up
/// reads, so the comparison is "each exactly once", not "in order").
fn ledger_movements(ledger: &[Value]) -> BTreeMap<String, Vec<Movement>> {
    let mut out: BTreeMap<String, Vec<Movement>> = BTreeMap::new();
    for r in ledger {
        let int = |field: &str| r[field].as_i64().unwrap();
        let game = r["game"].as_u64().unwrap_or(0);
        let last4 = |number: &Value| {
            let n = number.as_str().unwrap();
            Some(n[n.len() - 4..].to_owned())
        };
        let cash = || Some("cashable".to_owned());
        let mut movements = Vec::new();
        match r["type"].as_str().unwrap() {
            "game" => {
                // Bet and win in credits of the game's denomination.
                let credit = credit(&r["denomination"]);
                movements.push(("bet_accepted".into(), int("bet") * credit, game, None, None));
                movements.push(("game_ended".into(), int("win") * credit, game, None, None));
            }
            "bill" => movements.push(("credits_in".into(), int("value") * 100, game, None, None)),
            "ticket_out" => movements.push((
                "ticket_out".into(),
                int("cents"),
                game,
                last4(&r["validation_number"]),
                cash(),
            )),
            "ticket_in" => movements.push((
                "ticket_in".into(),
                int("cents"),
                game,
                last4(&r["validation_number"]),
                cash(),
            )),
            // The ledger has no game for a transfer: cashless machines play game 1 only.
            "aft_transfer" => movements.push((
                "aft_transfer".into(),
                int("cents"),
                1,
                Some(aft_reference(r)),
                r["class"].as_str().map(Into::into),
            )),
            // A progressive paid by an attendant is its `handpay` record.
            "progressive" if r["paid_by"] == "machine" => {
                movements.push(("progressive_win".into(), int("cents"), game, None, None));
            }
            "bonus" => movements.push(("bonus_award".into(), int("cents"), game, None, None)),
            "handpay" => {
                movements.push(("handpay".into(), int("cents"), game, None, None));
                if !r["receipt"].is_null() {
                    let receipt = last4(&r["receipt"]);
                    movements.push(("handpay_receipt".into(), int("cents"), game, receipt, cash()));
                }
            }
            _ => continue,
        }
        out.entry(r["serial"].as_str().unwrap().to_owned()).or_default().extend(movements);
    }
    out.values_mut().for_each(|list| list.sort());
    out
}

fn serial_of(e: &Value) -> &str {
    e["machine"]["registry_id"].as_str().unwrap().trim_start_matches("EGM-")
}

/// Money events per serial as the gateway reported them, sorted like [`ledger_movements`].
fn event_movements(events: &[Value]) -> BTreeMap<String, Vec<Movement>> {
    let mut out: BTreeMap<String, Vec<Movement>> = BTreeMap::new();
    for e in events {
        let kind = e["kind"].as_str().unwrap();
        if !MONEY_KINDS.contains(&kind) {
            continue;
        }
        let data = &e["data"];
        let amount = if kind == "game_ended" { &data["win"] } else { &data["amount"] };
        let amount = amount["minor_units"].as_i64().unwrap_or(-1);
        let game = e["game"]["number"].as_u64().unwrap_or(0);
        let (last4, class) = event_reference(e);
        let movement = (kind.to_owned(), amount, game, last4, class);
        out.entry(serial_of(e).to_owned()).or_default().push(movement);
    }
    out.values_mut().for_each(|list| list.sort());
    out
}

/// The last lifetime value, in minor units, of `meter` that the gateway read for `game` of
/// machine `serial` (game 0: the machine).
fn last_meter(events: &[Value], serial: &str, game: u64, meter: &str) -> Option<i64> {
    events
        .iter()
        .filter(|e| serial_of(e) == serial && e["kind"] == "meter_snapshot")
        .filter(|e| e["data"]["game_number"].as_u64() == Some(game))
        .filter_map(|e| e["data"]["meters"][meter]["amount"]["minor_units"].as_i64())
        .next_back()
}

/// Σ of `kind` amounts of machine `serial`, for `game` (`None`: every game).
fn sum(events: &[Value], serial: &str, kind: &str, game: Option<u64>) -> i64 {
    events
        .iter()
        .filter(|e| serial_of(e) == serial && e["kind"] == kind)
        .filter(|e| game.is_none() || e["game"]["number"].as_u64() == game)
        .map(|e| {
            let amount =
                if kind == "game_ended" { &e["data"]["win"] } else { &e["data"]["amount"] };
            amount["minor_units"].as_i64().unwrap()
        })
        .sum()
}

/// Per machine and per game of a multi-game machine: (Σ bets, coin in) and (Σ wins, coin out +
/// jackpot), everything in minor units; wins count progressives and bonuses, which coin out
/// (paid by the machine) and jackpot (by an attendant) include. Meters start at zero, so
/// lifetime = delta.
fn meter_balances(events: &[Value], serial: &str, games: u64) -> Vec<(u64, [Option<i64>; 4])> {
    let scopes = if games > 1 { 0..=games } else { 0..=0 };
    scopes
        .map(|game| {
            let filter = (game != 0).then_some(game);
            let won = last_meter(events, serial, game, "coin_out")
                .zip(last_meter(events, serial, game, "jackpot"))
                .map(|(out, jackpot)| out + jackpot);
            let balance = [
                Some(sum(events, serial, "bet_accepted", filter)),
                last_meter(events, serial, game, "coin_in"),
                Some(
                    ["game_ended", "progressive_win", "bonus_award"]
                        .iter()
                        .map(|kind| sum(events, serial, kind, filter))
                        .sum::<i64>()
                        + progressive_handpays(events, serial, filter),
                ),
                won,
            ];
            (game, balance)
        })
        .collect()
}

/// Σ hand-paid progressive levels (handpays with a level 01–20) of machine `serial`.
fn progressive_handpays(events: &[Value], serial: &str, game: Option<u64>) -> i64 {
    events
        .iter()
        .filter(|e| serial_of(e) == serial && e["kind"] == "handpay")
        .filter(|e| game.is_none() || e["game"]["number"].as_u64() == game)
        .filter(|e| e["data"]["level"].as_u64().is_some_and(|l| (1..=0x20).contains(&l)))
        .map(|e| e["data"]["amount"]["minor_units"].as_i64().unwrap())
        .sum()
}

fn balanced(balances: &[(u64, [Option<i64>; 4])]) -> bool {
    balances.iter().all(|(_, [bets, coin_in, wins, won])| bets == coin_in && wins == won)
}

/// Cashless machines (AFT, progressives, bonuses): their meters against their events.
fn cashless_balanced(events: &[Value], serial: &str, kind: &Kind) -> bool {
    !kind.args.contains(&"--aft-probability")
        || cashless_balances(events, &format!("EGM-{serial}"))
            .iter()
            .all(|(_, read, events_sum)| *read == Some(*events_sum))
}

/// Per face value of a bill (all 24 SAS bill codes): (value, the number of `credits_in` bills of
/// machine `serial`, the last 0040–0057 meter the gateway read: bills accepted of that value).
fn bill_balances(events: &[Value], serial: &str) -> Vec<(u64, u64, Option<u64>)> {
    let mine: Vec<&Value> = events.iter().filter(|e| serial_of(e) == serial).collect();
    (0..24)
        .filter_map(bill_value)
        .map(|value| {
            let bills = mine
                .iter()
                .filter(|e| e["kind"] == "credits_in" && e["data"]["bill"]["value"] == value)
                .count() as u64;
            let name = format!("bills_accepted_{value}");
            let meter = mine
                .iter()
                .filter(|e| e["kind"] == "meter_snapshot")
                .filter_map(|e| e["data"]["meters"][&name]["lifetime"].as_u64())
                .next_back();
            (value, bills, meter)
        })
        .collect()
}

fn bills_balanced(balances: &[(u64, u64, Option<u64>)]) -> bool {
    balances.iter().all(|(_, bills, meter)| Some(*bills) == *meter)
}

fn games_of(kind: &Kind) -> u64 {
    kind.args
        .iter()
        .position(|a| *a == "--games")
        .map_or(1, |i| kind.args[i + 1].split(',').count() as u64)
}

#[test]
fn a_mixed_floor_reports_every_movement_once_and_balances_per_machine_and_per_game() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(&dir.path().join("broker"), MosquittoOptions::default());
    let subscriber = Subscriber::start(broker.port(), "slotgate/UA-TEST-1/+/events", None);
    let mut sims: Vec<Proc> = Vec::new();
    let mut ledgers = Vec::new();
    let mut machines: Vec<(Simulated, &Kind)> = Vec::new();
    for (i, kind) in FLOOR.iter().enumerate() {
        let ledger = dir.path().join(format!("{}.jsonl", kind.prefix));
        let address = kind.address.to_string();
        let seed = (i + 3).to_string();
        let max_games = GAMES_PER_MACHINE.to_string();
        let mut args = vec![
            "--rte",
            "--game-rate",
            "60",
            "--game-duration",
            "200ms",
            "--max-games",
            &max_games,
            "--serial-prefix",
            kind.prefix,
            "--address",
            &address,
            "--seed",
            &seed,
            "--cashout-probability",
            "0.3",
            // Long enough for the LP1B read: pending RTE reports go first (§4.4).
            "--handpay-duration",
            "5s",
        ];
        args.extend(kind.play);
        args.extend(kind.args);
        let (sim, found) = simulate(kind.machines, &ledger, &args);
        sims.push(sim);
        ledgers.push(ledger);
        machines.extend(found.into_iter().map(|m| (m, kind)));
    }
    let simulated: Vec<Simulated> = machines.iter().map(|(m, _)| m.clone()).collect();
    let multidrop: Vec<&Simulated> =
        simulated.iter().filter(|m| m.serial.starts_with("MDR")).collect();
    assert!(multidrop.len() > 1 && multidrop.iter().all(|m| m.endpoint == multidrop[0].endpoint));
    let config = write_config(dir.path(), &machines, broker.port());
    let gateway = run_gateway(&config, &dir.path().join("run.log"));

    let total_games: u64 =
        FLOOR.iter().map(|k| u64::from(k.machines)).sum::<u64>() * GAMES_PER_MACHINE;
    let ledger = || ledgers.iter().flat_map(|l| read_json_lines(l)).collect::<Vec<Value>>();
    let settled = || {
        let ledger = ledger();
        let games = ledger.iter().filter(|r| r["type"] == "game").count() as u64;
        let handpays_open = ledger.iter().filter(|r| r["paid_by"] == "handpay").count()
            > ledger.iter().filter(|r| r["type"] == "handpay").count();
        let events = subscriber.unique_events();
        games == total_games
            && !handpays_open
            && event_movements(&events) == ledger_movements(&ledger)
            && machines.iter().all(|(m, k)| {
                balanced(&meter_balances(&events, &m.serial, games_of(k)))
                    && cashless_balanced(&events, &m.serial, k)
                    && bills_balanced(&bill_balances(&events, &m.serial))
            })
    };
    let done = wait_until(Duration::from_secs(180), settled);
    let log = || std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default();
    assert!(gateway.terminate().success(), "{}", log());
    for sim in sims {
        sim.terminate();
    }
    broker.stop();

    let events = subscriber.unique_events();
    let ledger = ledger();
    let expected = ledger_movements(&ledger);
    let got = event_movements(&events);
    for serial in expected.keys().chain(got.keys()) {
        assert_eq!(
            got.get(serial),
            expected.get(serial),
            "{serial}: every movement once, with its amount, game and class (settled {done})"
        );
    }
    for (m, kind) in &machines {
        let balances = meter_balances(&events, &m.serial, games_of(kind));
        assert!(
            balanced(&balances),
            "{}: (game, [Σ bets, coin in, Σ wins, won]) {balances:?}",
            m.serial
        );
        // Bills in by denomination: each `credits_in` bill against its 0040–0057 meter.
        let bills = bill_balances(&events, &m.serial);
        assert!(bills_balanced(&bills), "{}: (value, bills, meter) {bills:?}", m.serial);
        if kind.args.contains(&"--aft-probability") {
            for (meter, read, events_sum) in
                cashless_balances(&events, &format!("EGM-{}", m.serial))
            {
                assert_eq!(read, Some(events_sum), "{}: {meter} = Σ its events", m.serial);
            }
        }
    }
    assert!(done);
    assert_sequences_gap_free(&events);
    // The floor really mixed: every kind of movement happened, on every game.
    let all: Vec<&Movement> = expected.values().flatten().collect();
    for kind in FLOOR_MOVEMENTS {
        assert!(all.iter().any(|m| m.0 == kind), "no {kind} in the ledger");
    }
    // Bills of more than one face value went in (the meters told them apart).
    let values: std::collections::BTreeSet<u64> = machines
        .iter()
        .flat_map(|(m, _)| bill_balances(&events, &m.serial))
        .filter(|(_, bills, _)| *bills > 0)
        .map(|(value, _, _)| value)
        .collect();
    assert!(values.len() > 1, "bills of one value only: {values:?}");
    for (m, kind) in machines.iter().filter(|(_, k)| games_of(k) > 1) {
        let played: std::collections::BTreeSet<u64> =
            expected[&m.serial].iter().filter(|mv| mv.0 == "bet_accepted").map(|mv| mv.2).collect();
        assert_eq!(played.len() as u64, games_of(kind), "{}: every game played", m.serial);
        // LP51 and LP53 at link-up: the games and their denominations.
        let info = events
            .iter()
            .rfind(|e| serial_of(e) == m.serial && e["kind"] == "machine_info")
            .unwrap();
        assert_eq!(info["data"]["number_of_games"], 3, "{info}");
        let codes: Vec<u64> = info["data"]["games"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["denomination_code"].as_u64().unwrap())
            .collect();
        assert_eq!(codes, [0x01, 0x02, 0x17]);
        assert_eq!(info["data"]["features"]["multi_denomination"], true, "LPA0: {info}");
        // Every bet carries its game's denomination.
        for e in events.iter().filter(|e| serial_of(e) == m.serial && e["kind"] == "bet_accepted") {
            let game = e["game"]["number"].as_u64().unwrap();
            let code = codes[usize::try_from(game - 1).unwrap()];
            assert_eq!(e["game"]["denomination_code"].as_u64(), Some(code), "{e}");
        }
    }
    // Without handpays every window balances: neither the machine nor any game reported a
    // mismatch (a per-game reconciliation is emitted only on a mismatch or a context).
    for (m, _) in machines.iter().filter(|(_, k)| !k.handpays) {
        let reconciliations: Vec<&Value> = events
            .iter()
            .filter(|e| serial_of(e) == m.serial && e["kind"] == "reconciliation")
            .collect();
        assert!(reconciliations.is_empty(), "{}: {reconciliations:?}", m.serial);
    }
    // Nothing invented: no money event outside the comparison, no poll that moves money.
    assert!(!events.iter().any(|e| e["kind"] == "credits_out" || e["kind"] == "unrecognized"));
    assert!(
        !events.iter().any(|e| e["source"]["code"] == 0x71 && e["source"]["type"] == "long_poll")
    );
}
