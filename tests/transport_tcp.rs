//! The TCP line against a fake EGM on a real `127.0.0.1:0` listener that speaks the 9-bit
//! framing byte by byte as `firmware-protocols/README.md` specifies it (not through slotgate's
//! own framing code, so an encoding mistake cannot cancel itself out).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use slotgate::transport::{
    Character, ExponentialBackoff, Line, Reconnecting, TcpConfig, TransportConfig, TransportError,
    open, tcp,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(5);

fn ch(byte: u8, wakeup: bool) -> Character {
    Character { byte, wakeup }
}

/// LP 1F to address 1 and its exact bytes on the wire: flag 1 before the address, 0 elsewhere.
fn long_poll() -> (Vec<Character>, [u8; 8]) {
    let mut chars = vec![ch(0x01, true)];
    chars.extend([0x1F, 0x40, 0x2A].map(|b| ch(b, false)));
    (chars, [1, 0x01, 0, 0x1F, 0, 0x40, 0, 0x2A])
}

async fn fake_egm() -> (TcpListener, TcpConfig) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = TcpConfig::new(listener.local_addr().unwrap().to_string());
    config.connect_timeout = Duration::from_secs(2);
    (listener, config)
}

async fn accept(listener: &TcpListener) -> TcpStream {
    tokio::time::timeout(LIMIT, listener.accept()).await.unwrap().unwrap().0
}

async fn read_wire<const N: usize>(egm: &mut TcpStream) -> [u8; N] {
    let mut buf = [0u8; N];
    tokio::time::timeout(LIMIT, egm.read_exact(&mut buf)).await.unwrap().unwrap();
    buf
}

async fn recv_n(line: &mut impl Line, n: usize) -> Result<Vec<Character>, TransportError> {
    let mut out = Vec::new();
    while out.len() < n {
        tokio::time::timeout(LIMIT, line.recv(&mut out)).await.unwrap()?;
    }
    Ok(out)
}

#[tokio::test]
async fn a_poll_goes_out_framed_and_the_reply_comes_back_with_its_wakeup_bits() {
    let (listener, config) = fake_egm().await;
    let config = TransportConfig::Tcp(config);
    let (line, egm) = tokio::join!(open(&config), accept(&listener));
    let (mut line, mut egm) = (line.unwrap(), egm);

    let (poll, wire) = long_poll();
    line.send(&poll).await.unwrap();
    assert_eq!(read_wire::<8>(&mut egm).await, wire);

    // The EGM chirps (address 1 with the wakeup bit), then answers 01 1F with wakeup clear.
    egm.write_all(&[1, 0x01, 0, 0x01, 0, 0x1F]).await.unwrap();
    let got = recv_n(&mut line, 3).await.unwrap();
    assert_eq!(got, [ch(0x01, true), ch(0x01, false), ch(0x1F, false)]);
    assert!(line.describe().starts_with("tcp 127.0.0.1:"), "{}", line.describe());
}

#[tokio::test]
async fn a_flag_byte_with_other_bits_set_fails_the_line_for_good() {
    let (listener, config) = fake_egm().await;
    let (line, egm) = tokio::join!(tcp::connect(&config), accept(&listener));
    let (mut line, mut egm) = (line.unwrap(), egm);

    // A raw-TCP device server sends plain bytes: 0x81 is not a flag byte.
    egm.write_all(&[0x81, 0x01]).await.unwrap();
    let error = recv_n(&mut line, 1).await.unwrap_err();
    assert!(matches!(error, TransportError::InvalidFlag { .. }), "{error:?}");
    assert!(error.is_retryable(), "the connection is to be re-established");
    // Not guessed at: the line stays failed even for well-formed input that follows.
    egm.write_all(&[0, 0x01]).await.unwrap();
    assert!(matches!(recv_n(&mut line, 1).await, Err(TransportError::InvalidFlag { .. })));
    assert!(matches!(line.send(&long_poll().0).await, Err(TransportError::InvalidFlag { .. })));
}

#[tokio::test]
async fn after_the_peer_closes_the_line_reconnects_after_the_backoff_delay() {
    let (listener, config) = fake_egm().await;
    let backoff = ExponentialBackoff::new(Duration::from_millis(150), Duration::from_secs(1), 0.0)
        .unwrap()
        .start();
    let mut line = Reconnecting::new(TransportConfig::Tcp(config), backoff);
    let (poll, wire) = long_poll();

    // First connection: the EGM reads the poll and hangs up.
    let (sent, mut egm) = tokio::join!(line.send(&poll), accept(&listener));
    sent.unwrap();
    assert_eq!(read_wire::<8>(&mut egm).await, wire);
    drop(egm);
    let error = recv_n(&mut line, 1).await.unwrap_err();
    assert!(matches!(error, TransportError::Closed { .. }), "{error:?}");
    assert!(!line.is_connected());
    let failed_at = Instant::now();

    // The next send waits out the backoff, reconnects and delivers the poll.
    let (sent, mut egm) = tokio::join!(line.send(&poll), accept(&listener));
    sent.unwrap();
    let waited = failed_at.elapsed();
    assert!(waited >= Duration::from_millis(150), "reconnected after only {waited:?}");
    assert!(waited < Duration::from_secs(2), "reconnect took {waited:?}");
    assert_eq!(read_wire::<8>(&mut egm).await, wire);

    egm.write_all(&[0, 0x01]).await.unwrap();
    assert_eq!(recv_n(&mut line, 1).await.unwrap(), [ch(0x01, false)]);
    let d = line.diagnostics();
    assert!(d.connected);
    assert_eq!(d.connects, 2);
    assert_eq!(line.failed_attempts(), 0, "input on the new connection resets the backoff");
}

#[tokio::test]
async fn connecting_to_a_port_nobody_listens_on_fails_promptly() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = TcpConfig::new(format!("127.0.0.1:{port}"));
    let started = Instant::now();
    let error = tcp::connect(&config).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    let refused = std::io::ErrorKind::ConnectionRefused;
    assert!(
        matches!(&error, TransportError::Io { source, .. } if source.kind() == refused),
        "{error:?}"
    );
    assert!(error.is_retryable());
}

#[tokio::test]
async fn a_connection_attempt_that_gets_no_answer_times_out() {
    // A listener with a full accept queue makes Linux drop further SYNs, so a connection
    // attempt hangs as it would towards a device server that is switched off; it stays on
    // 127.0.0.1.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    socket.listen(0).unwrap();
    let address = socket.local_addr().unwrap().as_socket().unwrap();
    let mut config = TcpConfig::new(address.to_string());
    config.connect_timeout = Duration::from_millis(300);

    let mut queued = Vec::new();
    for _ in 0..8 {
        let started = Instant::now();
        match tcp::connect(&config).await {
            Ok(line) => queued.push(line),
            Err(error) => {
                let took = started.elapsed();
                assert!(matches!(error, TransportError::ConnectTimeout { .. }), "{error:?}");
                assert!(error.is_retryable());
                assert!(
                    took >= Duration::from_millis(300) && took < Duration::from_secs(2),
                    "{took:?}"
                );
                return;
            }
        }
    }
    panic!("{} connections were accepted into a backlog of 0; none timed out", queued.len());
}
