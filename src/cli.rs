//! The command line: one subcommand per job. Each subcommand's options are documented in its
//! `--help`.

use std::path::PathBuf;

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
    /// Watch slotgate work without hardware: simulated machines polled by the real gateway.
    Demo(crate::demo::DemoArgs),
    /// Poll every configured machine and write their canonical events until SIGINT or SIGTERM.
    Run {
        /// The configuration file (see config/slotgate.example.toml).
        #[arg(long, value_name = "FILE", env = "SLOTGATE_CONFIG")]
        config: PathBuf,
    },
    /// Simulate SAS slot machines (EGMs) over TCP or pseudo-terminals, for tests and demos.
    Simulate(Box<crate::simulator::SimulateArgs>),
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// `slotgate config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file offline: exit status 0 if it is usable, 2 with the file,
    /// field and reason if not. Nothing is opened but the file and the profiles it names.
    Check {
        /// The configuration file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// Exit status for a configuration that cannot be used: distinct from runtime failures (1) so that
/// a service manager can stop restarting on it.
pub const EXIT_CONFIG: u8 = 2;
