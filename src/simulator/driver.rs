//! The async shell around one [`Machine`]: reads the host's bytes from its port, frames them
//! with the codec's `RequestDecoder`, feeds the machine, writes replies and chirps with their
//! timing, runs the machine's timers, and forwards its ledger records.
//!
//! Cancellation is checked between exchanges only: a reply being written (including a late or
//! split one) is finished before the task stops, as a real machine would finish its frame.

use std::io;
use std::time::Instant;

use firmware_protocols::sas::codec::{Request, RequestDecoder};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::ledger::LedgerSink;
use super::machine::{Machine, MachineFault, Transmit};
use super::pty::PtyPort;
use super::tcp::TcpPort;

/// Where a machine meets its host.
#[derive(Debug)]
pub(crate) enum Port {
    Tcp(TcpPort),
    Pty(PtyPort),
}

impl Port {
    async fn recv(&mut self, out: &mut Vec<(u8, Option<bool>)>) -> io::Result<()> {
        match self {
            Self::Tcp(port) => {
                port.recv(out).await;
                Ok(())
            }
            Self::Pty(port) => port.recv(out).await,
        }
    }

    async fn send(&mut self, tx: &Transmit) {
        match self {
            Self::Tcp(port) => port.send(tx).await,
            Self::Pty(port) => port.send(tx).await,
        }
    }
}

/// The clock of the async world as the sans-IO machine takes it. Under `tokio::time::pause`
/// this is virtual time, which keeps async tests deterministic.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// What the simulation tells a running machine from outside.
pub(crate) struct Controls {
    /// Stop after the current exchange.
    pub cancel: CancellationToken,
    /// Start no new game.
    pub close: CancellationToken,
    /// Each change is one power cycle.
    pub power: watch::Receiver<u64>,
}

/// Runs one machine until `cancel` fires; then writes its `stop` record. Once `close` fires,
/// the machine starts no new game; each change of `power` power-cycles it.
pub(crate) async fn drive(
    mut machine: Machine,
    mut port: Port,
    ledger: LedgerSink,
    Controls { cancel, close, mut power }: Controls,
) -> io::Result<()> {
    let mut decoder = RequestDecoder::default();
    let mut input = Vec::new();
    let mut closed = false;
    let result = loop {
        for record in machine.drain_ledger() {
            ledger.send(record).await;
        }
        let deadline = [machine.poll_timeout(), decoder.poll_timeout()].into_iter().flatten().min();
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break Ok(()),
            () = close.cancelled(), if !closed => {
                closed = true;
                machine.close_play();
            }
            Ok(()) = power.changed() => machine.inject(now(), MachineFault::PowerCycle),
            () = timer => {
                let now = now();
                if let Some(request) = decoder.flush(now) {
                    exchange(&mut machine, &mut port, now, &request).await;
                }
                machine.handle_timeout(now);
            }
            received = port.recv(&mut input) => {
                if let Err(error) = received {
                    break Err(error);
                }
                let now = now();
                for (byte, wakeup) in std::mem::take(&mut input) {
                    if let Some(request) = decoder.push(now, byte, wakeup) {
                        exchange(&mut machine, &mut port, now, &request).await;
                    }
                }
            }
        }
        while let Some(tx) = machine.poll_transmit() {
            port.send(&tx).await;
        }
    };
    machine.stop(now());
    for record in machine.drain_ledger() {
        ledger.send(record).await;
    }
    result
}

async fn exchange(machine: &mut Machine, port: &mut Port, now: Instant, request: &Request) {
    tracing::trace!(address = %machine.address(), bytes = ?request.bytes, "Host message.");
    if let Some(tx) = machine.handle_request(now, request) {
        port.send(&tx).await;
    }
}
