//! `slotgate simulate` (being written, issue 2).

use std::future::Future;

/// Options of `slotgate simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Number of machines to simulate.
    #[arg(long, default_value_t = 1)]
    pub machines: u16,
}

/// Runs the simulator until `shutdown` resolves.
pub async fn run(
    _args: SimulateArgs,
    shutdown: impl Future<Output = std::io::Result<()>>,
) -> anyhow::Result<()> {
    shutdown.await?;
    Ok(())
}
