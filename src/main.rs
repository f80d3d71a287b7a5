//! Thin entry point: parse the command line, start logging and the runtime, run the subcommand,
//! and map failures to an exit code.

use std::process::ExitCode;

use clap::Parser;
use slotgate::cli::{Cli, Command, ConfigCommand, EXIT_CONFIG};
use slotgate::config::Config;
use slotgate::inspect::Outcome;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // rustls with ring only, before anything builds a TLS configuration (field-lessons.md §B5).
    slotgate::forward::tls::install_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Run { config } => match Config::load(&config) {
            Ok(config) => {
                run_async(slotgate::app::run(config, slotgate::shutdown::signal_received()))
            }
            Err(error) => {
                eprintln!("slotgate: {error}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Config(ConfigCommand::Check { file }) => match Config::load(&file) {
            Ok(config) => {
                println!(
                    "{}: OK ({} line(s), {} machine(s), venue {})",
                    file.display(),
                    config.lines.len(),
                    config.machine_count(),
                    config.venue.id
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("slotgate: {error}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Demo(args) => run_async(async move {
            slotgate::demo::run(args, slotgate::shutdown::signal_received()).await
        }),
        Command::Simulate(args) => run_async(async move {
            slotgate::simulator::run(*args, slotgate::shutdown::signal_received()).await
        }),
        Command::Journal(command) => match slotgate::inspect::journal(command) {
            Ok(Outcome::Done) => ExitCode::SUCCESS,
            Ok(Outcome::Tampered) => ExitCode::FAILURE,
            Err(error) => {
                eprintln!("slotgate: {error:#}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Status { config, json } => match slotgate::inspect::status(&config, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("slotgate: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run_async(job: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("slotgate: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(job) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("slotgate: {error:#}");
            ExitCode::FAILURE
        }
    }
}
