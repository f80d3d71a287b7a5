//! SIGINT and SIGTERM as one future. Commands take their shutdown trigger as a parameter
//! (mini-redis `server::run`), so tests pass their own and only `main` passes this one.

use tokio::signal::unix::{SignalKind, signal};

/// Resolves on the first SIGINT or SIGTERM, logging which one arrived.
pub async fn signal_received() -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "Shutdown requested.");
    Ok(())
}
