//! The line poller and its in-flight record (`poller::inflight`) against a scripted machine on
//! an in-memory line: a record left `Sent` by a crashed run makes the next run's first message
//! that message again (an implied NACK), only once the line is connected, and the record is
//! marked confirmed once the answer's events are durable.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod line_support;

use std::path::Path;
use std::time::Duration;

use firmware_protocols::sas::codec::RequestDecoder;
use line_support::{OnceLine, chars, machine, next_message};
use slotgate::journal::{Body, Journal, JournalConfig};
use slotgate::poller;
use slotgate::poller::inflight::{InflightFile, Record, State};
use slotgate::transport::{Line, memory};
use tokio_util::sync::CancellationToken;

fn record(path: &Path) -> Option<Record> {
    InflightFile::open(path).unwrap().1
}

/// Runs a line whose in-flight file holds `previous`; returns the first two messages the machine
/// receives, answering the first with the slot door exception, the journal's events after the
/// second, and the in-flight record at that moment.
async fn run_after(previous: Record) -> (Vec<u8>, Vec<u8>, String, Option<Record>) {
    let dir = tempfile::tempdir().unwrap();
    let inflight = dir.path().join("lines").join("line-1.inflight");
    let (mut file, _) = InflightFile::open(&inflight).unwrap();
    file.sent(
        previous.address,
        &previous.bytes,
        previous.rte_on,
        previous.next_machine_seq,
        previous.owed.clone(),
    )
    .unwrap();
    if previous.state == State::Confirmed {
        file.confirmed().unwrap();
    }
    drop(file);
    let (journal, writer) =
        Journal::open(JournalConfig::in_dir(&dir.path().join("journal"))).unwrap();
    let (host, mut egm) = memory::pair();
    // Later than every try of a poll: a message sent before the line is up would be lost, and
    // the next one would be the `80`.
    let connector = OnceLine::new(host, Duration::from_millis(400));
    let cancel = CancellationToken::new();
    let now = tokio::time::Instant::now().into_std();
    let task = tokio::spawn(poller::run_line(
        "line-1".into(),
        connector,
        vec![machine(0, now)],
        Some(inflight.clone()),
        journal.clone(),
        cancel.clone(),
        tokio::sync::watch::Sender::new(poller::LineStatus::connecting("line-1")),
        poller::command::channel("line-1").1,
    ));

    let mut framer = RequestDecoder::default();
    let first = next_message(&mut egm, &mut framer).await;
    // The machine's previous reply, re-sent for the implied NACK: slot door opened.
    egm.send(&chars(&[0x11])).await.unwrap();
    let second = next_message(&mut egm, &mut framer).await;
    // What is durable in the journal when the second message (the implied ACK) goes out.
    let events: String = journal
        .read(0, 1000)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.body {
            Some(Body::Event { canonical_json, .. }) => String::from_utf8(canonical_json).ok(),
            _ => None,
        })
        .collect();
    let at_second = record(&inflight);

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), async {
        // Keep the line alive while the poller finishes its exchange.
        tokio::select! {
            _ = task => {}
            () = async { loop { let _ = egm.recv(&mut Vec::new()).await; } } => {}
        }
    })
    .await
    .unwrap();
    drop(journal);
    tokio::task::spawn_blocking(move || writer.join()).await.unwrap().unwrap();
    (first, second, events, at_second)
}

#[tokio::test]
async fn a_record_left_sent_makes_the_first_message_a_retry_of_it_once_the_line_is_up() {
    let previous = Record {
        state: State::Sent,
        address: 1,
        rte_on: false,
        bytes: vec![0x81],
        next_machine_seq: 0,
        owed: Vec::new(),
    };
    let (first, second, events, at_second) = run_after(previous).await;
    assert_eq!(first, [0x81], "the interrupted poll again, not the `80` that would ACK it away");
    assert_eq!(second, [0x80], "then the implied ACK");
    assert!(events.contains("slot_door_opened"), "durable before the ACK was sent: {events}");
    assert_eq!(
        at_second,
        Some(Record {
            state: State::Confirmed,
            address: 1,
            rte_on: false,
            bytes: vec![0x81],
            next_machine_seq: 0,
            owed: Vec::new(),
        }),
        "the resumed poll's answer is durable; the `80` after it leaves nothing to record"
    );
}
