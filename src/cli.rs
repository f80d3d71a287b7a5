//! The command line: one subcommand per job. Each subcommand's options are documented in its
//! `--help`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// slotgate polls slot machines over SAS, journals every event durably and forwards it to the
/// state monitoring system.
#[derive(Debug, Parser)]
#[command(name = "slotgate", version, about, long_about = None, after_help = EXIT_STATUS_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// How log lines are written to standard error: `text` for people (the journal's own
    /// fields under systemd), `json` one object per line for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch slotgate work without hardware: simulated machines polled by the real gateway.
    Demo(crate::demo::DemoArgs),
    /// Poll every configured machine and write their canonical events until SIGINT or SIGTERM.
    /// Checks every file the configuration names first, as `config check` does, and exits with
    /// status 2 if one cannot be used.
    Run {
        /// The configuration file (see config/slotgate.example.toml).
        #[arg(long, value_name = "FILE", env = "SLOTGATE_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        checks: Checks,
    },
    /// Simulate SAS slot machines (EGMs) over TCP or pseudo-terminals, for tests and demos.
    Simulate(Box<crate::simulator::SimulateArgs>),
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Inspect the event journal (read-only: a copy is opened, never the store itself).
    #[command(subcommand)]
    Journal(JournalCommand),
    /// One screen on the daemon: each line and machine, the journal, destinations, the clock.
    /// Asks the daemon over its admin socket; with it stopped, shows the last state it left
    /// (exit status 3).
    Status {
        /// The configuration file of the daemon.
        #[arg(long, value_name = "FILE", env = "SLOTGATE_CONFIG")]
        config: PathBuf,
        /// Print the status as JSON (the admin API's `GET /v1/status`).
        #[arg(long)]
        json: bool,
    },
    /// The machine table: link, since when, last event, counters.
    Machines {
        #[arg(long, value_name = "FILE", env = "SLOTGATE_CONFIG")]
        config: PathBuf,
        /// Only the machines of this line.
        #[arg(long, value_name = "LINE")]
        line: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One machine: its view, or switching it off and on remotely.
    #[command(subcommand)]
    Machine(MachineCommand),
    /// Remote shutdown/startup commands the daemon holds, with their state history.
    #[command(subcommand)]
    Commands(CommandsCommand),
    /// Canonical events and alarms as they are journalled, one line each, until interrupted.
    Tail {
        #[arg(long, value_name = "FILE", env = "SLOTGATE_CONFIG")]
        config: PathBuf,
        /// Only this machine's records (registry id).
        #[arg(long, value_name = "ID")]
        machine: Option<String>,
        /// Only this kind (`game_ended`, `link_state`, … or `alarm`).
        #[arg(long, value_name = "KIND")]
        kind: Option<String>,
        /// Start at this journal sequence number or RFC 3339 time instead of what comes next.
        #[arg(long, value_name = "SEQ|TIME")]
        since: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Diagnose one address on one line in front of the machine: the 9th-bit method, sync,
    /// general poll, LP 54/1F/1C (reads only), reply times, CRC errors, retries, chirps, and a
    /// plain verdict. A running daemon releases the line for the probe and polls it again after;
    /// with none running the probe opens the port itself. Exit status 0 if the machine answered,
    /// 6 if not, 4 for a line the configuration does not have.
    Probe(crate::probe::ProbeArgs),
    /// Send a destination its history again from a journal seq or time on, in order, on its
    /// replay lane (audited with your uid). The records must still be in the journal. Waits
    /// until the destination has acknowledged everything up to where the replay began (a
    /// progress bar on a terminal); interrupting the wait does not stop the replay.
    Replay {
        /// The destination's name in the configuration.
        #[arg(value_name = "DESTINATION")]
        destination: String,
        /// The first journal sequence number, or an RFC 3339 time (the first record appended
        /// at or after it).
        #[arg(long, value_name = "SEQ|TIME")]
        from: String,
        /// At most this many records a second (never faster than the destination's
        /// replay_rate).
        #[arg(long, value_name = "N")]
        rate: Option<u32>,
        #[arg(long, value_name = "FILE", env = "SLOTGATE_CONFIG")]
        config: PathBuf,
        /// Print the daemon's answer as JSON and return without waiting.
        #[arg(long)]
        json: bool,
    },
    /// Write a tar.gz for support: versions, the configuration without secrets, the daemon's
    /// state, the journal's figures, the service's log (a progress bar on a terminal).
    DiagBundle {
        #[arg(long, value_name = "FILE", env = "SLOTGATE_CONFIG")]
        config: PathBuf,
        /// The archive to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Include this log file instead of the service's journald log of the last day.
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
    },
    /// Write the man page and shell completions into DIR (for packaging: .ci/package).
    #[command(hide = true)]
    GenerateAssets {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// `slotgate machine …`
#[derive(Debug, Subcommand)]
pub enum MachineCommand {
    /// Link, counters, clock drift and the last meters read.
    Show {
        /// The machine's registry id.
        #[arg(value_name = "ID")]
        id: String,
        #[arg(long, value_name = "FILE", env = "SLOTGATE_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Lock out play on the machine (SAS LP 01; a game in progress completes), until `enable`.
    /// The daemon signs the command with its local technician key (`[commands] local_key`);
    /// it is verified and audited like a remote one, with your uid. Exit status 5 if rejected.
    Disable(RemoteCommandArgs),
    /// Re-enable play on the machine (SAS LP 02); as `disable` otherwise.
    Enable(RemoteCommandArgs),
}

/// `slotgate machine disable|enable`.
#[derive(Debug, Clone, clap::Args)]
pub struct RemoteCommandArgs {
    /// The machine's registry id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Why, for the audit trail.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    #[arg(long, value_name = "FILE", env = "SLOTGATE_CONFIG")]
    pub config: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// `slotgate commands …`
#[derive(Debug, Subcommand)]
pub enum CommandsCommand {
    /// Every stored command, oldest first: id, action, state, origin, machines, reason.
    List {
        #[arg(long, value_name = "FILE", env = "SLOTGATE_CONFIG")]
        config: PathBuf,
        /// Only commands in this state.
        #[arg(long, value_name = "STATE", value_parser = [
            "received", "verified", "sent", "confirmed", "done", "rejected", "failed", "expired",
        ])]
        state: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One command with every state it went through (exit status 4 if there is no such id).
    Show {
        /// The command id (UUID).
        #[arg(value_name = "ID")]
        id: String,
        #[arg(long, value_name = "FILE", env = "SLOTGATE_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// Which journal to inspect: the configured one, or any journal directory (a quarantined one,
/// say).
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct JournalTarget {
    /// The daemon's configuration file: its journal, and its keys for verification.
    #[arg(long, value_name = "FILE", env = "SLOTGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// A journal directory.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `slotgate journal …`
#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// Verify the hash chain and the signed checkpoints; exit status 0 if intact, 1 with the
    /// first broken link if not.
    Verify {
        #[command(flatten)]
        target: JournalTarget,
        /// A trusted public key file (repeatable); added to those the configuration names.
        #[arg(long = "trusted-key", value_name = "FILE")]
        trusted_keys: Vec<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Counts, sequence range, sizes, cursors.
    Stats {
        #[command(flatten)]
        target: JournalTarget,
    },
    /// Every record as a JSON line, oldest first (a progress bar on a terminal).
    Export {
        #[command(flatten)]
        target: JournalTarget,
        /// Write here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Create an Ed25519 checkpoint signing key (mode 0600) and its `.pub` file.
    Keygen {
        /// The secret key file to create; never overwritten.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// `slotgate config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file: exit status 0 if it is usable, 2 with the file, field and
    /// reason if not. Reads the profiles, keys, certificates and secret files it names (as the
    /// user running the check) and checks that serial devices exist and are accessible; nothing
    /// is connected to.
    Check {
        /// The configuration file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        checks: Checks,
    },
}

/// What is checked besides the configuration file itself.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Checks {
    /// Do not check that serial devices exist and are accessible (a staging box without the
    /// hardware). Keys, certificates and secret files are always checked.
    #[arg(long)]
    pub skip_device_checks: bool,
}

/// Exit status for a runtime failure (a task of the daemon failed, the journal cannot be
/// opened, `journal verify` found a broken link).
pub const EXIT_FAILURE: u8 = 1;
/// Exit status for a configuration that cannot be used: distinct from runtime failures (1) so that
/// a service manager can stop restarting on it.
pub const EXIT_CONFIG: u8 = 2;
/// Exit status of `slotgate status`, `machines`, `machine show` and `tail` when the daemon is
/// not running.
pub const EXIT_NOT_RUNNING: u8 = 3;
/// Exit status of `slotgate machine show|disable|enable` for an id no line has, of
/// `slotgate commands show` for an unknown command id, and of `slotgate probe` for a line the
/// configuration does not have.
pub const EXIT_NOT_FOUND: u8 = 4;
/// Exit status of `slotgate machine disable|enable` when the daemon rejected the command (the
/// reason is printed and audited) or has no local key to sign it with.
pub const EXIT_REJECTED: u8 = 5;
/// Exit status of `slotgate probe` when nothing gave a valid answer at the address.
pub const EXIT_NO_ANSWER: u8 = 6;

const EXIT_STATUS_HELP: &str = "Exit status:
  0  success (also when the reader of the output goes away, as with `| head`)
  1  runtime failure: a task of the daemon failed, the journal cannot be opened, another
     slotgate uses the state directory, `journal verify` found a broken link
  2  unusable configuration: the file, a key, certificate or secret file it names, a serial
     device (the message names the field); restarting cannot help
  3  `slotgate status`, `machines`, `machine …`, `commands …`, `tail`, `replay`: the daemon is
     not running (status and the machine views then show the last state it left)
  4  `slotgate machine show|disable|enable`: no such machine; `commands show`: no such command;
     `slotgate probe`: no such line
  5  `slotgate machine disable|enable`: the command was rejected (the reason is printed) or
     cannot be given (no [commands] local_key)
  6  `slotgate probe`: no valid answer at the address (the verdict says what was heard)";
