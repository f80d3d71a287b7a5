//! Thin entry point: parse the command line, start logging and the runtime, run the subcommand,
//! and map failures to an exit code (the table is `slotgate --help`'s, in `cli`).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use slotgate::cli::{
    Cli, Command, ConfigCommand, EXIT_CONFIG, EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_NOT_RUNNING,
    MachineCommand,
};
use slotgate::config::{Config, ConfigError};
use slotgate::inspect::Outcome;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // rustls with ring only, before anything builds a TLS configuration (field-lessons.md §B5).
    slotgate::forward::tls::install_provider();
    // Colour only for a person at a terminal: escape codes in journald or a log file are noise
    // (https://no-color.org).
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            // The demo's live view shows what the logs would; warnings about the outage it
            // causes itself would only scroll it away.
            EnvFilter::new(if matches!(cli.command, Command::Demo(_)) { "error" } else { "info" })
        }))
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
    match cli.command {
        Command::Run { config, checks } => {
            match Config::load(&config)
                .and_then(|c| c.check_files(!checks.skip_device_checks).map(|()| c))
            {
                Ok(config) => {
                    run_async(slotgate::app::run(config, slotgate::shutdown::signal_received()))
                }
                Err(error) => fail(&error.into()),
            }
        }
        Command::Config(ConfigCommand::Check { file, checks }) => {
            match Config::load(&file)
                .and_then(|c| c.check_files(!checks.skip_device_checks).map(|()| c))
            {
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
                Err(error) => fail(&error.into()),
            }
        }
        Command::Demo(args) => run_async(async move {
            slotgate::demo::run(args, slotgate::shutdown::signal_received()).await
        }),
        Command::Simulate(args) => run_async(async move {
            slotgate::simulator::run(*args, slotgate::shutdown::signal_received()).await
        }),
        Command::Journal(command) => match slotgate::inspect::journal(command) {
            Ok(Outcome::Done) => ExitCode::SUCCESS,
            Ok(Outcome::Tampered) => ExitCode::from(EXIT_FAILURE),
            Err(error) => fail_printing(&error),
        },
        Command::Status { config, json } => shown(slotgate::technician::status(&config, json)),
        Command::Machines { config, line, json } => {
            shown(slotgate::technician::machines(&config, line.as_deref(), json))
        }
        Command::Machine(MachineCommand::Show { id, config, json }) => {
            shown(slotgate::technician::machine_show(&config, &id, json))
        }
        Command::Tail { config, machine, kind, since, json } => {
            let filter = slotgate::technician::TailFilter { machine, kind, since };
            shown(slotgate::technician::tail(&config, &filter, json))
        }
        Command::DiagBundle { config, out, log } => {
            match slotgate::diag::bundle(&config, &out, log.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail(&error),
            }
        }
    }
}

/// The exit status of a technician view.
fn shown(outcome: anyhow::Result<slotgate::technician::Shown>) -> ExitCode {
    use slotgate::technician::Shown;
    match outcome {
        Ok(Shown::Running) => ExitCode::SUCCESS,
        Ok(Shown::NotRunning) => ExitCode::from(EXIT_NOT_RUNNING),
        Ok(Shown::NotFound) => ExitCode::from(EXIT_NOT_FOUND),
        Err(error) => fail_printing(&error),
    }
}

fn run_async(job: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            return fail(&anyhow::Error::new(error).context("cannot start the async runtime"));
        }
    };
    match runtime.block_on(job) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// For the commands that print what they read: the reader of the output going away (`| head`)
/// is a quiet success, anything else is [`fail`].
fn fail_printing(error: &anyhow::Error) -> ExitCode {
    let broken_pipe = error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if broken_pipe { ExitCode::SUCCESS } else { fail(error) }
}

/// Reports `error` and picks the exit status: 2 for a configuration that cannot be used, 1
/// otherwise.
fn fail(error: &anyhow::Error) -> ExitCode {
    // Standard error may be a closed pipe (`2>&1 | head`); there is nobody left to tell then.
    let _ = writeln!(std::io::stderr(), "slotgate: {error:#}");
    if error.chain().any(|e| e.is::<ConfigError>()) {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}
