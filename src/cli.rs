//! The command line: one subcommand per job. Each subcommand's options are documented in its
//! `--help`.

use clap::{Parser, Subcommand};

/// slotgate polls slot machines over SAS, journals every event durably and forwards it to the
/// state monitoring system.
#[derive(Debug, Parser)]
#[command(name = "slotgate", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Simulate SAS slot machines (EGMs) over TCP or pseudo-terminals, for tests and demos.
    Simulate(crate::simulator::SimulateArgs),
}
