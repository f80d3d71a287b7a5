//! Thin entry point: parse the command line, start logging and the runtime, run the subcommand,
//! and map failures to an exit code.

use std::process::ExitCode;

use clap::Parser;
use slotgate::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("slotgate: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Simulate(args) => {
                slotgate::simulator::run(args, slotgate::shutdown::signal_received()).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("slotgate: {error:#}");
            ExitCode::FAILURE
        }
    }
}
