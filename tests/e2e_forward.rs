//! End to end northbound: simulated machines → `slotgate run` → mosquitto → a subscriber, and
//! what the subscriber received compared with the simulator's ledger, game by game; with the
//! broker restarted while the machines play, and the status file reporting the destination.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;
mod upstream;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    event_games, gateway_reports, journal_events, ledger_games, machine_reports, read_json_lines,
    run_gateway, simulate, write_config,
};
use serde_json::Value;
use upstream::{Mosquitto, MosquittoOptions, Subscriber, wait_until};

#[test]
fn machines_to_broker_to_subscriber_equals_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let options = MosquittoOptions { persistence: true, ..Default::default() };
    let mut broker = Mosquitto::start(&dir.path().join("broker"), options);
    let subscriber = Subscriber::start(broker.port(), "slotgate/UA-TEST-1/+/events", None);
    let ledger_path = dir.path().join("ledger.jsonl");
    let games_each = 6;
    let (sim, machines) = simulate(
        12,
        &ledger_path,
        &[
            "--rte",
            "--game-rate",
            "40",
            "--game-duration",
            "300ms",
            "--max-games",
            &games_each.to_string(),
            "--cashout-probability",
            "0",
            "--seed",
            "5",
        ],
    );
    let config = write_config(dir.path(), &machines);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[destination]]\nname = \"dsom\"\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{}\"\n\
         allow_plaintext = true\nkeep_alive = \"5s\"\n",
        broker.port()
    ));
    std::fs::write(&config, text).unwrap();
    let gateway = run_gateway(&config, &dir.path().join("run.log"));

    // Events unique by id, as the state system would store them.
    let unique = || subscriber.unique_events();
    let ended = |events: &[Value]| events.iter().filter(|e| e["kind"] == "game_ended").count();
    assert!(wait_until(Duration::from_secs(60), || ended(&unique()) >= 12 * games_each / 3));
    // The broker goes away while the machines play, and comes back.
    broker.restart();
    assert!(
        wait_until(Duration::from_secs(120), || ended(&unique()) >= 12 * games_each),
        "{} of {} games upstream",
        ended(&unique()),
        12 * games_each
    );
    let status: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state/status.json")).unwrap())
            .unwrap();
    assert_eq!(status["destinations"][0]["name"], "dsom", "{status}");
    assert!(gateway.terminate().success());
    sim.terminate();

    let upstream = unique();
    let ledger = read_json_lines(&ledger_path);
    assert_eq!(
        gateway_reports(&upstream),
        machine_reports(&ledger),
        "every report, once, in order"
    );
    let (games, _) = event_games(&upstream);
    assert_eq!(games, ledger_games(&ledger), "game by game, amounts included");
    // What went upstream is the journal's events byte for byte, and nothing else.
    let journal: BTreeMap<String, Value> = journal_events(&dir.path().join("state/journal"))
        .into_iter()
        .map(|e| (e["idempotency_key"].as_str().unwrap().to_owned(), e))
        .collect();
    for event in &upstream {
        let key = event["idempotency_key"].as_str().unwrap();
        assert_eq!(journal.get(key), Some(event), "{key}");
    }
    assert!(upstream.len() + 30 >= journal.len(), "{} of {}", upstream.len(), journal.len());
}
