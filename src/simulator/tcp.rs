//! One machine's TCP endpoint: a listening socket speaking the 9-bit framing of
//! sas-protocol.md §1.5 (every character is a flag byte, bit 0 = wakeup, then the data byte),
//! as a 9-bit device server or SMIB would.
//!
//! One host at a time: a new connection replaces the current one, because a host that
//! reconnects usually does so after its old socket died without a FIN. While no host is
//! connected the machine keeps playing and its output goes nowhere, like a machine on an
//! unplugged loop.

use std::io;
use std::net::SocketAddr;

use firmware_protocols::sas::Character;
use firmware_protocols::sas::ninebit::{self, Decoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::machine::Transmit;

/// Listener plus the current host connection.
#[derive(Debug)]
pub(crate) struct TcpPort {
    machine: u16,
    listener: TcpListener,
    /// The connected host, if any; replaced by each new connection.
    conn: Option<TcpStream>,
    decoder: Decoder,
    buf: Vec<u8>,
}

impl TcpPort {
    /// Binds `addr` for machine `machine`.
    pub(crate) async fn bind(machine: u16, addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self { machine, listener, conn: None, decoder: Decoder::default(), buf: vec![0; 4096] })
    }

    /// The bound address (the real port when bound to port 0).
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Waits until characters arrive and appends them to `out`. Cancel-safe: accepting and
    /// reading are, and decoding happens only after a read completed.
    pub(crate) async fn recv(&mut self, out: &mut Vec<(u8, Option<bool>)>) {
        loop {
            let Self { machine, listener, conn, decoder, buf } = self;
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if let Err(error) = stream.set_nodelay(true) {
                            tracing::debug!(machine = *machine, %error, "TCP_NODELAY not set.");
                        }
                        tracing::info!(machine = *machine, %peer, "Host connected.");
                        *conn = Some(stream);
                        *decoder = Decoder::default();
                    }
                    Err(error) => {
                        // Resource exhaustion (EMFILE) and aborted handshakes are transient.
                        tracing::warn!(machine = *machine, %error, "Accept failed.");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
                read = read_some(conn, buf) => match read {
                    Ok(0) | Err(_) => {
                        tracing::info!(machine = *machine, "Host disconnected.");
                        *conn = None;
                    }
                    Ok(n) => {
                        for &byte in &buf[..n] {
                            match decoder.push(byte) {
                                Ok(Some(Character { byte, wakeup })) => out.push((byte, Some(wakeup))),
                                Ok(None) => {}
                                Err(error) => {
                                    // Not 9-bit framed: a misconfigured host. Drop it rather
                                    // than guess at the alignment.
                                    tracing::warn!(machine = *machine, %error, "Dropping host.");
                                    *conn = None;
                                    break;
                                }
                            }
                        }
                        if !out.is_empty() {
                            return;
                        }
                    }
                },
            }
        }
    }

    /// Sends `tx` with its timing; without a host the bytes are dropped.
    pub(crate) async fn send(&mut self, tx: &Transmit) {
        let Some(conn) = self.conn.as_mut() else { return };
        let mut head = Vec::new();
        let mut tail = Vec::new();
        for (i, &byte) in tx.bytes.iter().enumerate() {
            let target = match tx.gap {
                Some(gap) if i >= gap.after => &mut tail,
                _ => &mut head,
            };
            ninebit::encode_character(Character { byte, wakeup: tx.wakeup && i == 0 }, target);
        }
        let result = async {
            if !tx.delay.is_zero() {
                tokio::time::sleep(tx.delay).await;
            }
            conn.write_all(&head).await?;
            if let Some(gap) = tx.gap {
                conn.flush().await?;
                tokio::time::sleep(gap.pause).await;
                conn.write_all(&tail).await?;
            }
            conn.flush().await
        }
        .await;
        if let Err(error) = result {
            tracing::info!(machine = self.machine, %error, "Host connection lost while sending.");
            self.conn = None;
        }
    }
}

async fn read_some(conn: &mut Option<TcpStream>, buf: &mut [u8]) -> io::Result<usize> {
    match conn {
        Some(stream) => stream.read(buf).await,
        None => std::future::pending().await,
    }
}
