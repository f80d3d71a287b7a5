//! The supervisor's stop order, first step: pollers stop between exchanges (issue 13). The real
//! daemon (`app::run`) polls a simulated machine through a recording proxy that holds each
//! reply back a few milliseconds, so every exchange is open long enough for a stop to land in
//! it; the stop is asked exactly while a poll waits for its reply. Every poll the gateway sent
//! must have been settled before it sent the next or closed the connection: its reply passed on
//! to the gateway first, or the whole reply window (20 ms, the profile's `reply_timeout_ms`)
//! waited out. No half exchange, and no poll after the stop left open.

// Real processes and peers in real time (tests/common): std clocks and sleeps are theirs.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use slotgate::config::Config;
use slotgate::simulator::{EndpointKind, SimulateArgs, Simulation};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How long the proxy holds the first bytes of each reply.
const HOLD: Duration = Duration::from_millis(5);
/// The generic profile's reply window: an exchange without an answer is over after it.
const REPLY_WINDOW: Duration = Duration::from_millis(20);
/// Polls answered before the stop is asked, so the machine is online and polled steadily.
const WARM_UP: usize = 30;

/// What the proxy saw on the one connection, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// A host message that expects an answer (not the sync `80`, not a broadcast to 00).
    Poll(u8, Instant),
    /// The first bytes of an answer were passed on to the gateway.
    Answered,
    /// The gateway closed its side.
    Closed(Instant),
}

/// Forwards one gateway connection to `machine`, recording and holding as described.
async fn proxy(
    listener: TcpListener,
    machine: std::net::SocketAddr,
    log: Arc<Mutex<Vec<Seen>>>,
    mut stop_now: Option<oneshot::Sender<()>>,
) {
    let (gateway, _) = listener.accept().await.unwrap();
    let upstream = TcpStream::connect(machine).await.unwrap();
    let (mut from_gateway, mut to_gateway) = gateway.into_split();
    let (mut from_machine, mut to_machine) = upstream.into_split();
    let log_up = log.clone();
    let up = async move {
        let mut buf = [0u8; 512];
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let n = from_gateway.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                log_up.lock().unwrap().push(Seen::Closed(Instant::now()));
                let _ = to_machine.shutdown().await;
                return;
            }
            // 9-bit characters over TCP: (flag, data) pairs; a set flag starts a message.
            pending.extend_from_slice(&buf[..n]);
            let whole = pending.len() / 2 * 2;
            for pair in pending[..whole].chunks(2) {
                if pair[0] & 1 == 1 && pair[1] != 0x80 && pair[1] != 0x00 {
                    let polls = {
                        let mut log = log_up.lock().unwrap();
                        log.push(Seen::Poll(pair[1], Instant::now()));
                        log.iter().filter(|s| matches!(s, Seen::Poll(..))).count()
                    };
                    if polls > WARM_UP
                        && let Some(stop) = stop_now.take()
                    {
                        let _ = stop.send(());
                    }
                }
            }
            pending.drain(..whole);
            to_machine.write_all(&buf[..n]).await.unwrap();
        }
    };
    let down = async move {
        let mut buf = [0u8; 512];
        loop {
            let n = from_machine.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            let first = {
                let log = log.lock().unwrap();
                matches!(log.last(), Some(Seen::Poll(..)))
            };
            if first {
                tokio::time::sleep(HOLD).await;
            }
            if to_gateway.write_all(&buf[..n]).await.is_err() {
                return;
            }
            if first {
                log.lock().unwrap().push(Seen::Answered);
            }
        }
    };
    tokio::join!(up, down);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_asked_while_a_poll_waits_for_its_reply_lets_the_exchange_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = SimulateArgs::defaults();
    args.machines = 1;
    let simulation = Simulation::start(&args).await.unwrap();
    let endpoint = simulation.endpoints()[0].clone();
    let EndpointKind::Tcp(machine) = endpoint.kind else { panic!("a TCP machine") };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxied = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (stop_now, stop) = oneshot::channel();
    let proxy = tokio::spawn(proxy(listener, machine, log.clone(), Some(stop_now)));
    let text = format!(
        "[venue]\nid = \"UA-1\"\ncurrency = \"UAH\"\ntime_zone = \"Europe/Kyiv\"\n\n\
         [admin]\nsocket = \"admin.sock\"\n\n[storage]\ndir = \"state\"\n\n\
         [[line]]\nname = \"a\"\nkind = \"tcp\"\naddress = \"{proxied}\"\n\n\
         [[line.machine]]\naddress = {}\nregistry_id = \"EGM-1\"\ndenomination = \"0.01\"\n",
        endpoint.address
    );
    let config = Config::from_toml_str(&dir.path().join("slotgate.toml"), &text).unwrap();
    let shutdown = async move {
        let _ = stop.await;
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(60), slotgate::app::run(config, shutdown))
        .await
        .expect("the daemon stops")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), proxy).await.unwrap().unwrap();
    simulation.stop().await.unwrap();

    let log = log.lock().unwrap().clone();
    // After the close only a late answer can still pass (the proxy holds it; under load it can
    // come after the gateway waited its reply window out and closed): no poll may follow.
    let close = log.iter().position(|s| matches!(s, Seen::Closed(_))).expect("the close");
    assert!(log[close + 1..].iter().all(|s| *s == Seen::Answered), "{log:?}");
    let polls = log.iter().filter(|s| matches!(s, Seen::Poll(..))).count();
    assert!(polls > WARM_UP, "the stop came after the warm-up: {log:?}");
    // Each poll is settled (answered, or its window waited out) before the next poll and
    // before the close.
    let mut open: Option<(u8, Instant)> = None;
    for seen in &log {
        let settled =
            |at: Instant| open.is_none_or(|(_, sent)| at.duration_since(sent) >= REPLY_WINDOW);
        match *seen {
            Seen::Poll(poll, at) => {
                assert!(settled(at), "poll {poll:02X} while {open:02X?} was open: {log:?}");
                open = Some((poll, at));
            }
            Seen::Answered => open = None,
            Seen::Closed(at) => {
                assert!(settled(at), "closed with {open:02X?} half done: {log:?}");
            }
        }
    }
}
