//! The forwarders' timing on tokio's paused clock (issue 13: one clock): HTTPS `Retry-After`
//! and the backoff after failures, and the MQTT watchdog that recycles a connected but stuck
//! link, asserted to the exact virtual instant or within documented bounds, without sleeping.
//! The peers (a plain HTTP/1.1 server, a minimal MQTT 3.1.1 broker) run on the test's own
//! runtime, so every wait of the forwarder is a timer of that runtime and auto-advance drives
//! it; the journal is slotgate's own.
//!
//! The forwarding tests against mosquitto and the HTTPS receiver of `tests/forward.rs` stay on
//! the real clock: those peers live outside the test's runtime (another process, another
//! runtime's thread), and a paused clock jumps ahead whenever the runtime waits for them, so
//! their replies would race the forwarder's own timers.

// Real processes and peers in real time (tests/common): std clocks and sleeps are theirs.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use slotgate::config::Config;
use slotgate::journal::NewRecord;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Answers each `POST` with the next status of `script` (`Retry-After` when given), then 200;
/// records the virtual instant of every request.
async fn receiver(script: Vec<(u16, Option<&'static str>)>) -> (u16, Arc<Mutex<Vec<Instant>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let seen = arrivals.clone();
    let script = Arc::new(Mutex::new(script.into_iter()));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (seen, script) = (seen.clone(), script.clone());
            let service = hyper::service::service_fn(move |_request| {
                seen.lock().unwrap().push(Instant::now());
                let (status, retry_after) = script.lock().unwrap().next().unwrap_or((200, None));
                let mut answer = Response::new(Full::new(Bytes::from_static(b"{}")));
                *answer.status_mut() = StatusCode::from_u16(status).unwrap();
                if let Some(wait) = retry_after {
                    answer.headers_mut().insert("retry-after", wait.parse().unwrap());
                }
                async move { Ok::<_, Infallible>(answer) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (port, arrivals)
}

fn config(dir: &Path, destination: &str) -> Config {
    let text = format!(
        "[venue]\nid = \"UA-1\"\ncurrency = \"UAH\"\ntime_zone = \"Europe/Kyiv\"\n\n\
         [storage]\ndir = \"state\"\n\n\
         [[line]]\nname = \"unused\"\nkind = \"tcp\"\naddress = \"127.0.0.1:9\"\n\n\
         [[line.machine]]\naddress = 1\nregistry_id = \"EGM-1\"\n\n\
         [[destination]]\nname = \"central\"\nallow_plaintext = true\n{destination}"
    );
    Config::from_toml_str(&dir.join("slotgate.toml"), &text).unwrap()
}

fn https(port: u16) -> String {
    format!("kind = \"https\"\nurl = \"http://127.0.0.1:{port}/events\"\ntimeout = \"30s\"\n")
}

/// Forwards three journalled records to `config`'s destination until `done` holds or 600 s of
/// virtual time have passed (the loop costs nothing but the forwarder's own waits), then stops
/// the forwarder and the journal. Returns whether `done` held.
async fn forward_until(
    config: &Config,
    mut done: impl FnMut(&slotgate::journal::Journal) -> bool,
) -> bool {
    let (journal, writer) = slotgate::app::open_journal(config).unwrap();
    let cancel = CancellationToken::new();
    let (mut tasks, _statuses, _replays) =
        slotgate::forward::spawn_all(config, &journal, &cancel, None).unwrap();
    journal.append((0..3).map(|n| NewRecord::audit("test", &n)).collect()).await.unwrap();
    let limit = Instant::now() + Duration::from_secs(600);
    let mut held = done(&journal);
    while !held && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(1)).await;
        held = done(&journal);
    }
    cancel.cancel();
    while tasks.join_next().await.is_some() {}
    drop(journal);
    tokio::task::spawn_blocking(move || writer.join()).await.unwrap().unwrap();
    held
}

/// The gaps between the first `requests` requests the receiver got, answering by `script`.
async fn arrivals(script: Vec<(u16, Option<&'static str>)>, requests: usize) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let (port, arrivals) = receiver(script).await;
    let config = config(dir.path(), &https(port));
    let arrived = forward_until(&config, |_| arrivals.lock().unwrap().len() >= requests).await;
    let arrivals = arrivals.lock().unwrap().clone();
    assert!(arrived, "{arrivals:?}");
    arrivals.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_waited_out_to_the_millisecond() {
    let gaps = arrivals(vec![(503, Some("3")), (429, Some("7"))], 3).await;
    assert_eq!(gaps, vec![Duration::from_secs(3), Duration::from_secs(7)]);
}

#[tokio::test(start_paused = true)]
async fn the_backoff_doubles_from_half_a_second_within_its_jitter() {
    // 500 ms doubling, each wait shortened by up to half (transport::backoff DEFAULT).
    let gaps = arrivals(vec![(500, None), (502, None), (504, None), (500, None)], 5).await;
    assert_eq!(gaps.len(), 4, "{gaps:?}");
    for (gap, base) in gaps.iter().zip([500u64, 1000, 2000, 4000]) {
        let base = Duration::from_millis(base);
        assert!(*gap >= base / 2 && *gap <= base, "{gap:?} outside [{:?}, {base:?}]", base / 2);
    }
}

/// What the broker saw, at virtual instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Connected,
    Published,
    Closed,
}

/// Reads one MQTT control packet: its first byte and its body.
async fn packet(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let kind = stream.read_u8().await.ok()?;
    let (mut length, mut shift) = (0usize, 0);
    loop {
        let byte = stream.read_u8().await.ok()?;
        length |= usize::from(byte & 0x7F) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some((kind, body))
}

/// A minimal MQTT 3.1.1 broker: accepts the login, and on the first connection acknowledges
/// nothing (a link that is up but stuck); on later ones it acknowledges each QoS 1 publish.
async fn broker() -> (u16, Arc<Mutex<Vec<(usize, Seen, Instant)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    tokio::spawn(async move {
        for connection in 0.. {
            let (mut stream, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let note = |what| seen.lock().unwrap().push((connection, what, Instant::now()));
                note(Seen::Connected);
                while let Some((kind, body)) = packet(&mut stream).await {
                    let answer = match kind >> 4 {
                        1 => vec![0x20, 0x02, 0x00, 0x00],
                        3 => {
                            note(Seen::Published);
                            let topic = usize::from(u16::from_be_bytes([body[0], body[1]]));
                            let pkid = &body[2 + topic..4 + topic];
                            if connection == 0 {
                                continue;
                            }
                            vec![0x40, 0x02, pkid[0], pkid[1]]
                        }
                        12 => vec![0xD0, 0x00],
                        _ => continue,
                    };
                    if stream.write_all(&answer).await.is_err() {
                        break;
                    }
                }
                note(Seen::Closed);
            });
        }
    });
    (port, log)
}

#[tokio::test(start_paused = true)]
async fn a_connected_link_that_acknowledges_nothing_is_recycled_after_stuck_after() {
    let dir = tempfile::tempdir().unwrap();
    let (port, log) = broker().await;
    let destination = format!(
        "kind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\nkeep_alive = \"60s\"\n\
         stuck_after = \"5s\"\n"
    );
    let config = config(dir.path(), &destination);
    let acknowledged = |journal: &slotgate::journal::Journal| {
        let head = *journal.durable().borrow();
        head > 0 && journal.status().borrow().cursors.get("central") == Some(&head)
    };
    let delivered = forward_until(&config, acknowledged).await;
    assert!(delivered, "{:?}", log.lock().unwrap());

    let log = log.lock().unwrap().clone();
    let at = |connection, what| {
        log.iter().find(|(c, w, _)| *c == connection && *w == what).map(|(_, _, at)| *at).unwrap()
    };
    // The watchdog looks every 200 ms at most while messages are in flight.
    let stuck = at(0, Seen::Closed) - at(0, Seen::Published);
    let window = Duration::from_secs(5)..=Duration::from_millis(5200);
    assert!(window.contains(&stuck), "recycled after {stuck:?}: {log:?}");
    // Then the first backoff step (500 ms, jitter 0.5), and everything is sent again.
    let reconnect = at(1, Seen::Connected) - at(0, Seen::Closed);
    let backoff = Duration::from_millis(250)..=Duration::from_millis(500);
    assert!(backoff.contains(&reconnect), "reconnected after {reconnect:?}: {log:?}");
    let published = |c| log.iter().filter(|(n, w, _)| *n == c && *w == Seen::Published).count();
    assert_eq!((published(0), published(1)), (3, 3), "{log:?}");
}
