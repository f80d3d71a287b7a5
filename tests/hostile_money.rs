//! A hostile machine cannot make the gateway invent money (issue 12): a line task runs against a
//! scripted machine on an in-memory line, and the journal must hold only what a plausible
//! machine could have reported.
//!
//! - LP4D is re-read while it reports unread records, but no further than the validation
//!   buffer holds (indexes 01–1F): a machine that never runs out gets 31 reads per exception.
//! - An all-zero LP1B answer (what a machine sends once an attendant reset the handpay) is no
//!   handpay of 0.
// Real processes and peers in real time (tests/common): std clocks and sleeps are theirs.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod line_support;

use std::time::Duration;

use firmware_protocols::sas::Address;
use firmware_protocols::sas::codec::RequestDecoder;
use firmware_protocols::sas::message::{HandpayInfo, Reply, ValidationRecord};
use line_support::{MACHINE, OnceLine, chars, machine, next_message};
use serde_json::Value;
use slotgate::journal::{Journal, JournalConfig};
use slotgate::poller;
use slotgate::transport::{Line, memory};
use tokio_util::sync::CancellationToken;

use line_support::journal_events as events;

fn kinds<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

/// Runs one line against a machine that reports `exception` on its first general poll and
/// answers every long poll with `answer` (silence for `None`), until `general_polls` general
/// polls in a row went by without a long poll it answers (so a line that kept reading never
/// ends). Returns the long-poll commands it received, the journalled events and the
/// machine's status row.
async fn run(
    exception: u8,
    answer: impl Fn(u8) -> Option<Reply>,
    general_polls: usize,
) -> (Vec<u8>, Vec<Value>, poller::MachineStatus) {
    let dir = tempfile::tempdir().unwrap();
    let address = Address::new(1).unwrap();
    let (journal, writer) =
        Journal::open(JournalConfig::in_dir(&dir.path().join("journal"))).unwrap();
    let (host, mut egm) = memory::pair();
    let status = tokio::sync::watch::Sender::new(poller::LineStatus::connecting("line-1"));
    let task = tokio::spawn(poller::run_line(
        "line-1".into(),
        OnceLine::new(host, Duration::ZERO),
        vec![machine(0, tokio::time::Instant::now().into_std())],
        Some(dir.path().join("line-1.inflight")),
        journal.clone(),
        CancellationToken::new(),
        status.clone(),
        poller::command::channel("line-1").1,
    ));
    let mut framer = RequestDecoder::default();
    let mut sent = Vec::new();
    let mut reported = false;
    let mut idle = 0;
    tokio::time::timeout(Duration::from_secs(60), async {
        while idle < general_polls {
            let message = next_message(&mut egm, &mut framer).await;
            match message.as_slice() {
                [0x81] => {
                    let code = if reported { 0x00 } else { exception };
                    if reported {
                        idle += 1;
                    }
                    reported = true;
                    egm.send(&chars(&[code])).await.unwrap();
                }
                [0x01, command, ..] => {
                    sent.push(*command);
                    if let Some(reply) = answer(*command) {
                        idle = 0;
                        egm.send(&chars(&reply.encode(address).unwrap())).await.unwrap();
                    }
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the line stopped polling; long polls so far {sent:02X?}"));
    task.abort();
    let _ = task.await;
    let row = status.borrow().machines.iter().find(|m| m.registry_id == MACHINE).cloned();
    let events = events(&journal);
    drop(journal);
    tokio::task::spawn_blocking(move || writer.join()).await.unwrap().unwrap();
    (sent, events, row.unwrap())
}

#[tokio::test]
async fn a_machine_that_never_runs_out_of_validation_records_gets_31_reads_per_exception() {
    let record = |index| ValidationRecord {
        validation_type: 0x00,
        index,
        validation_number: 1_000 + u64::from(index),
        amount: 500,
        ticket_number: u16::from(index),
        validation_system_id: 1,
        ..Default::default()
    };
    let reads = std::sync::atomic::AtomicU8::new(0);
    let (sent, events, row) = run(
        0x3D,
        |command| {
            (command == 0x4D).then(|| {
                let n = reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Reply::EnhancedValidation(record(n % 0x1F + 1))
            })
        },
        // Long after the last read the cap allows: a line that kept reading would show it.
        40,
    )
    .await;
    // 31 reads taken, then none for 40 general polls (`run` ends only then). A read the line
    // sent again because the answer came late (a loaded host) is the same read: it is among
    // the line's retries, and its answer is not taken twice.
    let lp4d = sent.iter().filter(|&&c| c == 0x4D).count();
    assert_eq!(kinds(&events, "ticket_out").len(), 31, "one read per buffer index: {sent:02X?}");
    assert!(
        (31..=31 + row.retries as usize).contains(&lp4d),
        "{lp4d} reads, {} retries: {sent:02X?}",
        row.retries
    );
    assert_eq!(row.dropped_reports, 1, "the overflow is counted");
}

#[tokio::test]
async fn an_all_zero_handpay_answer_is_no_handpay() {
    let (sent, events, row) = run(
        0x51,
        |command| (command == 0x1B).then_some(Reply::HandpayInfo(HandpayInfo::default())),
        5,
    )
    .await;
    assert!(sent.contains(&0x1B), "LP1B was read: {sent:02X?}");
    assert!(
        events.iter().any(|e| e["source"]["code"] == 0x51),
        "the exception itself is journalled"
    );
    assert!(kinds(&events, "handpay").is_empty(), "{:?}", kinds(&events, "handpay"));
    assert_eq!(row.dropped_reports, 1, "the empty answer is counted");
}
