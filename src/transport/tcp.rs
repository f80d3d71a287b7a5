//! SAS over TCP to a 9-bit capable device server or SMIB: the two-bytes-per-character framing
//! (sas-protocol.md §1.5, `firmware-protocols/README.md`) over a `TcpStream`, with a connect
//! timeout, TCP keepalive and `TCP_NODELAY`.
//!
//! Never a transparent byte pipe: a raw-TCP device server with fixed parity cannot produce
//! "wakeup on the first byte only" (§1.5). A peer that sends a flag byte with bits 1–7 set is
//! not speaking the framing; the line fails with [`TransportError::InvalidFlag`] and is
//! re-established ([`super::Reconnecting`]) rather than guessed at.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use super::{FramedLine, TcpConfig, TransportError};

/// A TCP connection speaking the 9-bit framing.
pub type TcpLine = FramedLine<TcpStream>;

/// Unanswered keepalive probes after which the kernel drops the connection.
pub const KEEPALIVE_RETRIES: u32 = 3;

/// Connects to `config.address` within `config.connect_timeout` and sets the socket options.
pub async fn connect(config: &TcpConfig) -> Result<TcpLine, TransportError> {
    let name = format!("tcp {}", config.address);
    // tokio resolves the name and tries each address in turn; the timeout bounds all of it.
    let stream =
        match tokio::time::timeout(config.connect_timeout, TcpStream::connect(&config.address))
            .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(TransportError::io(&name, "connect", e)),
            Err(_elapsed) => {
                return Err(TransportError::ConnectTimeout {
                    line: name,
                    timeout: config.connect_timeout,
                });
            }
        };
    configure(&stream, config.keepalive).map_err(|e| TransportError::io(&name, "setsockopt", e))?;
    let name = match stream.peer_addr() {
        Ok(peer) if peer.to_string() != config.address => format!("{name} ({peer})"),
        _ => name,
    };
    tracing::debug!(line = %name, "Connected.");
    Ok(FramedLine::new(stream, name).with_post_wakeup_delay(config.post_wakeup_delay))
}

/// `TCP_NODELAY`, because every SAS message is small and latency-bound: Nagle would hold a
/// poll back until the previous one is acknowledged and eat the 20 ms reply window (§4.1).
/// Keepalive, so that a device server that lost power is noticed as a dead connection.
fn configure(stream: &TcpStream, keepalive: Option<Duration>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    if let Some(idle) = keepalive {
        let params =
            TcpKeepalive::new().with_time(idle).with_interval(idle).with_retries(KEEPALIVE_RETRIES);
        SockRef::from(stream).set_tcp_keepalive(&params)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_socket_has_nodelay_and_the_configured_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = TcpConfig::new(listener.local_addr().unwrap().to_string());
        config.keepalive = Some(Duration::from_secs(7));
        let (line, accepted) = tokio::join!(connect(&config), listener.accept());
        let (line, _peer) = (line.unwrap(), accepted.unwrap());
        let socket = SockRef::from(line.get_ref());
        assert!(socket.tcp_nodelay().unwrap());
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), Duration::from_secs(7));
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
    }
}
