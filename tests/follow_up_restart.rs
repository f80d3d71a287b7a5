//! A follow-up the gateway owes a machine survives a crash right after the exception that
//! called for it was acknowledged (issue 15, item 0): the restarted line reads it first, or
//! reports it lost. Found by a kill loop: a handpay's 51, acknowledged by the next poll, then a
//! kill before LP1B, left the `handpay` event with the amount never written (213 of 628).
//!
//! Each case runs a line against a scripted machine on an in-memory line: the machine answers
//! the first general poll with the exception, the test aborts the line task the moment the
//! next message (the implied ACK) reaches the machine, and a second line task, on the same
//! journal and in-flight file, must send the follow-up poll; the machine then answers it or,
//! as a machine reset meanwhile would, stays silent.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod line_support;

use std::time::Duration;

use firmware_protocols::sas::Address;
use firmware_protocols::sas::codec::RequestDecoder;
use firmware_protocols::sas::message::{HandpayInfo, LastBill, Reply};
use line_support::{MACHINE, OnceLine, chars, machine, next_message};
use serde_json::Value;
use slotgate::journal::{Journal, JournalConfig};
use slotgate::poller;
use slotgate::transport::{Line, MemoryLine, memory};
use tokio_util::sync::CancellationToken;

use line_support::journal_events as events;

fn start(
    dir: &std::path::Path,
) -> (Journal, slotgate::journal::WriterHandle, MemoryLine, tokio::task::JoinHandle<()>) {
    let (journal, writer) = Journal::open(JournalConfig::in_dir(&dir.join("journal"))).unwrap();
    let (host, egm) = memory::pair();
    // Numbered on from what the journal holds, as the daemon does.
    let (next_seq, _) = journal.machine_state(MACHINE).unwrap();
    let task = tokio::spawn(poller::run_line(
        "line-1".into(),
        OnceLine::new(host, Duration::ZERO),
        vec![machine(next_seq, tokio::time::Instant::now().into_std())],
        Some(dir.join("lines").join("line-1.inflight")),
        journal.clone(),
        CancellationToken::new(),
        tokio::sync::watch::Sender::new(poller::LineStatus::connecting("line-1")),
        poller::command::channel("line-1").1,
    ));
    (journal, writer, egm, task)
}

async fn stop(journal: Journal, writer: slotgate::journal::WriterHandle) {
    drop(journal);
    tokio::task::spawn_blocking(move || writer.join()).await.unwrap().unwrap();
}

/// Runs the case: `exception` is acknowledged, the gateway dies, and the restarted gateway
/// must send every poll in `follow_ups`; the machine answers them from `answer` (silence for
/// `None`). Returns the journal's events after the restart, once `done` holds for them.
async fn case(
    exception: u8,
    follow_ups: &[u8],
    answer: impl Fn(u8) -> Option<Reply>,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let address = Address::new(1).unwrap();

    // First run: the exception, then the implied ACK, then the "kill".
    let (journal, writer, mut egm, task) = start(dir.path());
    let mut framer = RequestDecoder::default();
    loop {
        let message = next_message(&mut egm, &mut framer).await;
        if message == [0x81] {
            egm.send(&chars(&[exception])).await.unwrap();
            break;
        }
    }
    let ack = next_message(&mut egm, &mut framer).await;
    task.abort();
    let _ = task.await;
    let before = events(&journal);
    assert!(
        before.iter().any(|e| e["source"]["code"] == u64::from(exception)),
        "the exception was durable before its acknowledgement {ack:02X?}: {before:?}"
    );
    stop(journal, writer).await;

    // Second run: the follow-ups come first; the machine is idle otherwise.
    let (journal, writer, mut egm, task) = start(dir.path());
    let mut framer = RequestDecoder::default();
    let mut sent = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let events = events(&journal);
            if follow_ups.iter().all(|c| sent.contains(c)) && done(&events) {
                return events;
            }
            let message = next_message(&mut egm, &mut framer).await;
            match message.as_slice() {
                [0x81] => egm.send(&chars(&[0x00])).await.unwrap(),
                [0x01, command, ..] => {
                    sent.push(*command);
                    if let Some(reply) = answer(*command) {
                        egm.send(&chars(&reply.encode(address).unwrap())).await.unwrap();
                    }
                }
                _ => {}
            }
        }
    })
    .await;
    task.abort();
    let _ = task.await;
    let after = events(&journal);
    stop(journal, writer).await;
    match outcome {
        Ok(events) => events,
        Err(_) => panic!(
            "after the restart the machine got long polls {sent:02X?}; owed {follow_ups:02X?}; \
             events {:?}",
            after.iter().map(|e| (&e["kind"], &e["data"])).collect::<Vec<_>>()
        ),
    }
}

fn kinds<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

#[tokio::test]
async fn a_handpay_amount_is_read_after_a_kill_right_after_the_51_was_acknowledged() {
    let info = HandpayInfo {
        progressive_group: 0,
        level: 0x01, // progressive: LP1B reports it in cents
        amount: 123_456,
        partial_pay: 0,
        reset_id: 0,
    };
    let events = case(
        0x51,
        &[0x1B],
        |command| (command == 0x1B).then_some(Reply::HandpayInfo(info)),
        |events| !kinds(events, "handpay").is_empty(),
    )
    .await;
    let handpay = kinds(&events, "handpay");
    assert_eq!(handpay[0]["data"]["amount"]["minor_units"], 123_456, "{handpay:?}");
}

#[tokio::test]
async fn a_bill_is_read_after_a_kill_right_after_its_exception_was_acknowledged() {
    let bill = LastBill { country: 0x51, denomination_code: 0x05, count: 7 };
    let events = case(
        0x4F,
        &[0x48],
        |command| (command == 0x48).then_some(Reply::LastBill(bill)),
        |events| !kinds(events, "bill_details").is_empty(),
    )
    .await;
    assert_eq!(kinds(&events, "bill_details").len(), 1, "{events:?}");
}

#[tokio::test]
async fn a_follow_up_the_machine_no_longer_answers_is_reported_lost() {
    for (exception, command) in [(0x67u8, 0x70u8), (0x3D, 0x0F), (0x7F, 0x1C)] {
        let lost = |events: &[Value]| {
            kinds(events, "follow_up_lost").iter().any(|e| {
                e["data"]["exception"] == u64::from(exception)
                    && e["data"]["command"] == u64::from(command)
            })
        };
        let events = case(exception, &[command], |_| None, lost).await;
        assert!(lost(&events), "{exception:02X}: {events:?}");
    }
}

#[tokio::test]
async fn the_resync_polls_are_read_after_a_kill_right_after_the_exception_was_acknowledged() {
    // Operator changed options: every resync poll is owed; the machine answers none.
    let events = case(
        0x3C,
        &[0x1C, 0x0F, 0x1F, 0x54],
        |_| None,
        |events| kinds(events, "follow_up_lost").len() >= 4,
    )
    .await;
    let lost: Vec<_> =
        kinds(&events, "follow_up_lost").iter().map(|e| e["data"]["command"].clone()).collect();
    for command in [0x1Cu64, 0x0F, 0x1F, 0x54] {
        assert!(lost.contains(&Value::from(command)), "{command:02X}: {lost:?}");
    }
}
