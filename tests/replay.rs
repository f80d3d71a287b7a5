//! `slotgate replay` end to end: the real daemon polling the simulator and forwarding to
//! mosquitto, asked through the real CLI to send its history again. Events already delivered
//! arrive again from the seq asked for, in order, with their ids; a seq the journal no longer
//! keeps is refused naming the oldest kept record; the request is an audit record.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;
mod upstream;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{run_gateway, simulate, write_config};
use serde_json::Value;
use upstream::{Mosquitto, MosquittoOptions, Subscriber, wait_until};

fn slotgate(args: &[&str], config: &Path) -> Output {
    Command::new(BIN).args(args).arg("--config").arg(config).env("NO_COLOR", "1").output().unwrap()
}

const BIN: &str = common::BIN;

fn status(config: &Path) -> Option<Value> {
    let out = slotgate(&["status", "--json"], config);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// The journal seqs of what the subscriber received, in arrival order.
fn seqs(subscriber: &Subscriber) -> Vec<u64> {
    subscriber
        .payloads()
        .iter()
        .map(|p| {
            let event: Value = serde_json::from_slice(p).unwrap();
            event["gatewayseq"].as_str().unwrap().parse().unwrap()
        })
        .collect()
}

#[test]
fn a_replay_resends_history_in_order_refuses_what_is_gone_and_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&dir.path().join("broker"), MosquittoOptions::default());
    let subscriber = Subscriber::start(broker.port(), "slotgate/#", None);
    let (sim, machines) = simulate(
        4,
        &dir.path().join("ledger.jsonl"),
        &["--rte", "--game-rate", "60", "--game-duration", "200ms", "--max-games", "25"],
    );
    let config = write_config(dir.path(), &machines);
    let mut text = std::fs::read_to_string(&config).unwrap();
    // The smallest journal (16 KiB segments), acknowledged records removed at once: the
    // oldest segments go while the machines play.
    text = text.replace(
        "[storage]",
        "[journal]\ncap = \"1MiB\"\nretain_acknowledged = \"0s\"\n\n[storage]",
    );
    text.push_str(&format!(
        "\n[[destination]]\nname = \"dsom\"\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{}\"\n\
         allow_plaintext = true\n",
        broker.port()
    ));
    std::fs::write(&config, text).unwrap();
    let gateway = run_gateway(&config, &dir.path().join("run.log"));
    let oldest = || status(&config).map_or(0, |s| s["journal"]["first_seq"].as_u64().unwrap());
    assert!(
        wait_until(Duration::from_secs(90), || oldest() >= 20),
        "acknowledged segments were removed: {:?}",
        status(&config)
    );
    // The machines stop, the journal stops growing, everything is acknowledged.
    assert!(sim.terminate().success());
    let settled = || {
        let s = status(&config).unwrap();
        let head = s["journal"]["next_seq"].as_u64().unwrap();
        let cursor = s["destinations"][0]["cursor"].as_u64().unwrap();
        (cursor == head).then_some(head)
    };
    let mut head = None;
    assert!(wait_until(Duration::from_secs(30), || {
        // Quiet for a moment: the last link_state events are journalled and delivered.
        let before = settled();
        std::thread::sleep(Duration::from_millis(1500));
        head = settled().filter(|h| Some(*h) == before);
        head.is_some()
    }));
    let head = head.unwrap();
    let human = String::from_utf8_lossy(&slotgate(&["status"], &config).stdout).into_owned();
    assert!(human.contains("  every record acknowledged by every destination"), "{human}");
    let first = oldest();
    let delivered = seqs(&subscriber);
    assert!(delivered.contains(&(head - 1)) && delivered.contains(&first));

    // Before the oldest kept record: refused, naming it; nothing is resent.
    let refused = slotgate(&["replay", "dsom", "--from", &(first - 1).to_string()], &config);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(said.contains(&format!("the oldest kept record is {first}")), "{said}");
    // A time before the oldest kept record is refused the same way, with that record's time.
    let refused = slotgate(&["replay", "dsom", "--from", "2000-01-01T00:00:00Z"], &config);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(said.contains(&format!("the oldest kept record is {first}, appended at 20")), "{said}");
    let unknown = slotgate(&["replay", "nowhere", "--from", "0"], &config);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no destination nowhere"));

    // From a kept record on: everything from there arrives again, in order, ids unchanged,
    // the audit record of the request (journalled first) among it.
    let from = first + 3;
    // The refused request's audit record (journalled at `head`) has arrived.
    assert!(wait_until(Duration::from_secs(10), || seqs(&subscriber).contains(&head)));
    let before = subscriber.payloads().len();
    let replayed =
        slotgate(&["replay", "dsom", "--from", &from.to_string(), "--rate", "200"], &config);
    let said = String::from_utf8_lossy(&replayed.stdout);
    assert!(replayed.status.success(), "{said}{}", String::from_utf8_lossy(&replayed.stderr));
    // A pipe: no progress bar, one closing line.
    assert!(!replayed.stderr.contains(&b'\r'), "no bar in a pipe");
    // Both requests were journalled before they were carried out (or refused): the refused
    // one at `head`, this one at `head + 1`, the last record replayed.
    let until = head + 2;
    assert!(said.contains(&format!("seq {from} to {}, to dsom", head + 1)), "{said}");
    // The request's own audit record may have gone out live just before the forwarder stopped
    // for the replay; then come the replayed records.
    let replay: Vec<u64> = (from..until).collect();
    assert!(
        wait_until(Duration::from_secs(30), || seqs(&subscriber)[before..].ends_with(&replay)),
        "in journal order from {from}: {:?}",
        &seqs(&subscriber)[before..]
    );
    let again = seqs(&subscriber)[before..].to_vec();
    let live = &again[..again.len() - replay.len()];
    let log = || std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    assert!(live.iter().all(|&seq| seq == head + 1), "{again:?}\n{}", log());
    let before = before + live.len();
    let payloads = subscriber.payloads();
    let id_of = |p: &Vec<u8>| serde_json::from_slice::<Value>(p).unwrap()["id"].clone();
    for (i, seq) in (from..head).enumerate() {
        let original = payloads[..before].iter().find(|p| {
            serde_json::from_slice::<Value>(p).unwrap()["gatewayseq"] == seq.to_string().as_str()
        });
        assert_eq!(original.map(id_of), Some(id_of(&payloads[before + i])), "seq {seq}");
    }
    let audits: Vec<Value> = payloads[payloads.len() - 2..]
        .iter()
        .map(|p| serde_json::from_slice::<Value>(p).unwrap()["data"].clone())
        .collect();
    for (audit, asked) in audits.iter().zip([first - 1, from]) {
        assert_eq!(audit["alarm"], "replay", "{audit}");
        let what: Value = serde_json::from_str(audit["message"].as_str().unwrap()).unwrap();
        assert_eq!(what["uid"], nix::unistd::getuid().as_raw(), "{what}");
        assert_eq!(what["destination"], "dsom", "{what}");
        assert_eq!(what["from"].as_u64(), Some(asked), "{what}");
    }
    let what: Value = serde_json::from_str(audits[1]["message"].as_str().unwrap()).unwrap();
    assert_eq!(what["rate"], 200);
    assert!(gateway.terminate().success());
}
