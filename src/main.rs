//! Thin entry point: parse the command line, start logging and the runtime, run the subcommand,
//! and map failures to an exit code (the table is `slotgate --help`'s, in `cli`).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use slotgate::cli::{
    Cli, Command, CommandsCommand, ConfigCommand, EXIT_CONFIG, EXIT_FAILURE, EXIT_NO_ANSWER,
    EXIT_NOT_FOUND, EXIT_NOT_RUNNING, EXIT_REJECTED, LogFormat, MachineCommand,
};
use slotgate::command::envelope::Action;
use slotgate::config::{Config, ConfigError};
use slotgate::inspect::Outcome;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // rustls with ring only, before anything builds a TLS configuration (field-lessons.md §B5).
    slotgate::forward::tls::install_provider();
    // The demo's live view shows what the logs would; warnings about the outage it causes
    // itself would only scroll it away.
    let default_level = match cli.command {
        Command::Demo(_) => "error",
        // The report is the output; a technician needs only the transport's warnings with it.
        Command::Probe(_) => "warn",
        _ => "info",
    };
    init_logging(cli.log_format, default_level);
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
        Command::Machine(MachineCommand::Disable(args)) => {
            shown(slotgate::technician::remote_command(&args, Action::Disable))
        }
        Command::Machine(MachineCommand::Enable(args)) => {
            shown(slotgate::technician::remote_command(&args, Action::Enable))
        }
        Command::Commands(CommandsCommand::List { config, state, json }) => {
            shown(slotgate::technician::commands_list(&config, state.as_deref(), json))
        }
        Command::Commands(CommandsCommand::Show { id, config, json }) => {
            shown(slotgate::technician::commands_show(&config, &id, json))
        }
        Command::Tail { config, machine, kind, since, json } => {
            let filter = slotgate::technician::TailFilter { machine, kind, since };
            shown(slotgate::technician::tail(&config, &filter, json))
        }
        Command::Probe(args) => match slotgate::probe::run(&args) {
            Ok(slotgate::probe::Outcome::Answered) => ExitCode::SUCCESS,
            Ok(slotgate::probe::Outcome::NoAnswer) => ExitCode::from(EXIT_NO_ANSWER),
            Ok(slotgate::probe::Outcome::NoSuchLine) => ExitCode::from(EXIT_NOT_FOUND),
            Err(error) => fail_printing(&error),
        },
        Command::Replay { destination, from, rate, config, json } => {
            let request = slotgate::technician::Replay { destination, from, rate };
            shown(slotgate::technician::replay(&config, &request, json))
        }
        Command::DiagBundle { config, out, log } => {
            match slotgate::diag::bundle(&config, &out, log.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail(&error),
            }
        }
        Command::GenerateAssets { dir } => match generate_assets(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => fail(&error),
        },
    }
}

/// The exit status of a technician view.
fn shown(outcome: anyhow::Result<slotgate::technician::Shown>) -> ExitCode {
    use slotgate::technician::Shown;
    match outcome {
        Ok(Shown::Running) => ExitCode::SUCCESS,
        Ok(Shown::NotRunning) => ExitCode::from(EXIT_NOT_RUNNING),
        Ok(Shown::NotFound) => ExitCode::from(EXIT_NOT_FOUND),
        Ok(Shown::Rejected) => ExitCode::from(EXIT_REJECTED),
        Err(error) => fail_printing(&error),
    }
}

/// Logs go to journald with their fields when standard error is the journal's stream (systemd
/// sets `JOURNAL_STREAM` to its device and inode), else to standard error: text (colour only
/// for a person at a terminal, https://no-color.org) or one JSON object per line.
fn init_logging(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let registry = tracing_subscriber::registry().with(filter);
    if format == LogFormat::Text
        && stderr_is_journal()
        && let Ok(journald) = tracing_journald::layer()
    {
        registry.with(journald.with_syslog_identifier("slotgate".into())).init();
        return;
    }
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Json => registry.with(fmt.json().with_ansi(false)).init(),
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
            registry.with(fmt.with_ansi(colour)).init();
        }
    }
}

/// Whether `JOURNAL_STREAM` ("device:inode") names the file standard error is.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr()) else { return false };
    stream.to_str().and_then(|s| s.split_once(':')).is_some_and(|(dev, ino)| {
        dev.parse::<u64>().is_ok_and(|d| d == stat.st_dev)
            && ino.parse::<u64>().is_ok_and(|i| i == stat.st_ino)
    })
}

/// `slotgate generate-assets DIR`: slotgate.1 and the bash, zsh and fish completions, from the
/// command line's own definition.
fn generate_assets(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let command = Cli::command();
    let mut man = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut man)?;
    let path = dir.join("slotgate.1");
    std::fs::write(&path, man).with_context(|| format!("cannot write {}", path.display()))?;
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish]
    {
        clap_complete::generate_to(shell, &mut command.clone(), "slotgate", dir)
            .with_context(|| format!("cannot write the {shell} completion"))?;
    }
    Ok(())
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
