//! The in-memory line pair and the framed line's contract: characters with their wakeup bits
//! round-trip, `recv` is cancel-safe against a timer (as pollers use it), `clear_input` drops
//! only what has already arrived, and a dropped peer is reported.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use slotgate::transport::{Character, FramedLine, Line, TransportError, WakeupMethod, memory};
use tokio::io::AsyncWriteExt;

fn ch(byte: u8, wakeup: bool) -> Character {
    Character { byte, wakeup }
}

/// LP 1F to address 1 as the session builds it: wakeup on the address byte only.
fn long_poll() -> Vec<Character> {
    let mut chars = vec![ch(0x01, true)];
    chars.extend([0x1F, 0x40, 0x2A].map(|b| ch(b, false)));
    chars
}

async fn recv_n(line: &mut impl Line, n: usize) -> Vec<Character> {
    let mut out = Vec::new();
    while out.len() < n {
        tokio::time::timeout(Duration::from_secs(5), line.recv(&mut out)).await.unwrap().unwrap();
    }
    out
}

#[tokio::test]
async fn a_poll_and_a_reply_keep_their_wakeup_bits_both_ways() {
    let (mut host, mut machine) = memory::pair();
    host.send(&long_poll()).await.unwrap();
    assert_eq!(recv_n(&mut machine, 4).await, long_poll());

    // A chirp (own address with the wakeup bit) followed by an ordinary reply.
    let reply = [ch(0x01, true), ch(0x01, false), ch(0x1F, false), ch(0xFF, false)];
    machine.send(&reply).await.unwrap();
    assert_eq!(recv_n(&mut host, 4).await, reply);
    assert_eq!(host.diagnostics().wakeup, WakeupMethod::Framed);
}

#[tokio::test(start_paused = true)]
async fn recv_that_loses_a_select_against_the_reply_timer_loses_no_input() {
    let (host_io, mut machine_io) = tokio::io::duplex(64);
    let mut host = FramedLine::new(host_io, "host");
    let mut out = Vec::new();

    // Half a character (the flag byte) arrives, then the reply timer fires: the recv future is
    // dropped while the decoder holds the flag byte.
    machine_io.write_all(&[1]).await.unwrap();
    tokio::select! {
        r = host.recv(&mut out) => panic!("no whole character has arrived, got {r:?}"),
        () = tokio::time::sleep(Duration::from_millis(20)) => {}
    }
    assert!(out.is_empty());

    // The data byte completes the character on the next call.
    machine_io.write_all(&[0x01, 0, 0x1F]).await.unwrap();
    assert_eq!(recv_n(&mut host, 2).await, [ch(0x01, true), ch(0x1F, false)]);
}

#[tokio::test]
async fn clear_input_drops_what_arrived_before_and_keeps_what_comes_after() {
    let (mut host, mut machine) = memory::pair();
    machine.send(&[ch(0x00, false), ch(0x01, false)]).await.unwrap();
    tokio::task::yield_now().await;
    host.clear_input();
    machine.send(&[ch(0x51, false)]).await.unwrap();
    assert_eq!(recv_n(&mut host, 1).await, [ch(0x51, false)]);
}

#[tokio::test]
async fn a_dropped_peer_is_reported_as_a_retryable_close() {
    let (mut host, machine) = memory::pair();
    drop(machine);
    let mut out = Vec::new();
    let error = host.recv(&mut out).await.unwrap_err();
    assert!(matches!(error, TransportError::Closed { .. }), "{error:?}");
    assert!(error.is_retryable());
}
