//! The probe's I/O: finds the line in the configuration, gets its port (released by a running
//! daemon over the admin socket, or opened directly when none runs), drives the sans-IO
//! [`Probe`] on it with `tokio::time`, and gives the line back, also on Ctrl-C and on error.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use hyper::Method;

use super::{FIRST_LISTEN, LOOP_BREAK, Plan, Probe, Report, Wakeup, verdict, write_human};
use crate::admin::client::{ClientError, request};
use crate::config::{Config, LineConfig};
use crate::poller::inflight::{self, Record, State};
use crate::transport::{self, AnyLine, Line, TransportConfig};

/// Options of `slotgate probe`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// The daemon's configuration file: the line's port and firmware profile, the admin socket.
    #[arg(long, value_name = "FILE", env = "SLOTGATE_CONFIG")]
    pub config: PathBuf,
    /// The line to probe, by its name in the configuration.
    #[arg(long, value_name = "LINE")]
    pub line: String,
    /// The SAS address to probe, 1–127 (need not be one the configuration lists).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=127))]
    pub address: u8,
    /// Sync and general poll rounds after the reads: more samples of the reply time.
    #[arg(long, value_name = "K", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=50))]
    pub polls: u32,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// How a probe ended, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The machine gave at least one valid answer (exit status 0).
    Answered,
    /// No valid answer at the address (exit status 6).
    NoAnswer,
    /// The configuration has no such line (exit status 4).
    NoSuchLine,
}

/// How long the probe may wait for a released port to become free: the daemon closes it right
/// after answering the release.
const OPEN_PATIENCE: Duration = Duration::from_secs(3);
/// Added to the script's longest run for opening the port and asking the daemon.
const RELEASE_MARGIN: Duration = Duration::from_secs(5);

/// Who had the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Daemon {
    Released,
    NotRunning,
}

/// `slotgate probe`.
pub fn run(args: &ProbeArgs) -> anyhow::Result<Outcome> {
    let config = Config::load(&args.config)?;
    let Some(line) = config.lines.iter().find(|l| l.name == args.line) else {
        let names: Vec<&str> = config.lines.iter().map(|l| l.name.as_str()).collect();
        eprintln!(
            "slotgate: {} has no line {:?} (lines: {})",
            args.config.display(),
            args.line,
            names.join(", ")
        );
        return Ok(Outcome::NoSuchLine);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(async {
        tokio::select! {
            report = probe(&config, line, args) => Some(report),
            // Dropping `probe` closes the port; the line is given back below.
            _ = crate::shutdown::signal_received() => None,
        }
    });
    let Some(report) = report else {
        if runtime.block_on(resume(&config, &line.name)) {
            anyhow::bail!("interrupted; line {} given back to the daemon", line.name)
        }
        anyhow::bail!("interrupted")
    };
    let report = report?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln_flush(&mut out)?;
    } else {
        write_human(&mut out, &report)?;
    }
    Ok(if report.verdict.outcome.answered() { Outcome::Answered } else { Outcome::NoAnswer })
}

fn writeln_flush(out: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(out)?;
    out.flush()
}

async fn probe(config: &Config, line: &LineConfig, args: &ProbeArgs) -> anyhow::Result<Report> {
    let address = firmware_protocols::sas::Address::new(args.address)
        .with_context(|| format!("{} is not a SAS address (1–127)", args.address))?;
    let mut plan = Plan {
        address,
        timing: line.profile.timing,
        rounds: args.polls,
        first_listen: FIRST_LISTEN,
    };
    let budget = Probe::longest(&Plan { first_listen: LOOP_BREAK * 2, ..plan.clone() });
    let daemon = release(config, &line.name, budget + RELEASE_MARGIN).await?;
    if daemon == Daemon::NotRunning && last_exchange_unconfirmed(config, &line.name) {
        // A loop break first: the machine then keeps what it reported last (module doc).
        plan.first_listen = LOOP_BREAK + FIRST_LISTEN;
    }
    let probed = probe_line(&line.transport(), &plan, daemon, budget).await;
    if daemon == Daemon::Released {
        resume(config, &line.name).await;
    }
    let (findings, described, diagnostics) = probed?;
    let sees_chirps = diagnostics.wakeup.detects_chirps();
    let verdict = verdict(args.address, &findings, sees_chirps);
    Ok(Report {
        line: line.name.clone(),
        address: args.address,
        transport: described,
        wakeup: Wakeup {
            method: diagnostics.wakeup.to_string(),
            sees_chirps,
            fallback: diagnostics.wakeup_fallback,
        },
        daemon: match daemon {
            Daemon::Released => "released",
            Daemon::NotRunning => "not_running",
        },
        first_listen_ms: u64::try_from(plan.first_listen.as_millis()).unwrap_or(u64::MAX),
        findings,
        verdict,
    })
}

/// Opens the port, runs the script on it and closes it again (before the line is given back).
async fn probe_line(
    transport: &TransportConfig,
    plan: &Plan,
    daemon: Daemon,
    budget: Duration,
) -> anyhow::Result<(super::Findings, String, transport::LineDiagnostics)> {
    let mut line = open(transport, daemon).await?;
    let described = transport.describe();
    let mut probe = Probe::new(plan, tokio::time::Instant::now().into_std());
    tokio::time::timeout(budget, drive(&mut line, &mut probe))
        .await
        .map_err(|_| anyhow::anyhow!("{described}: the probe did not finish in {budget:?}"))??;
    Ok((probe.findings(), described, line.diagnostics()))
}

async fn drive(line: &mut AnyLine, probe: &mut Probe) -> anyhow::Result<()> {
    let now = || tokio::time::Instant::now().into_std();
    let mut received = Vec::new();
    loop {
        while let Some(characters) = probe.poll_transmit(now()) {
            // Half duplex: what arrived before the poll is not its answer.
            probe.discarded(line.clear_input());
            line.send(&characters).await?;
            probe.sent(now());
        }
        let Some(deadline) = probe.poll_timeout() else { return Ok(()) };
        tokio::select! {
            got = line.recv(&mut received) => {
                got?;
                probe.handle_input(now(), &received);
                received.clear();
            }
            () = tokio::time::sleep_until(deadline.into()) => probe.handle_timeout(now()),
        }
    }
}

/// Opens the line; a released port may still be closing, so a retryable failure is tried again
/// for [`OPEN_PATIENCE`].
async fn open(transport: &TransportConfig, daemon: Daemon) -> anyhow::Result<AnyLine> {
    let patience = tokio::time::Instant::now() + OPEN_PATIENCE;
    loop {
        match transport::open(transport).await {
            Ok(line) => return Ok(line),
            Err(error)
                if daemon == Daemon::Released
                    && error.is_retryable()
                    && tokio::time::Instant::now() < patience =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => {
                return Err(anyhow::Error::new(error)
                    .context(format!("cannot open {}", transport.describe())));
            }
        }
    }
}

/// Asks a running daemon to release the line for `time`; a daemon that is not running has
/// nothing to release. Any other failure (the socket refuses this user, the daemon refuses)
/// stops the probe: opening a port a daemon polls would garble both.
async fn release(config: &Config, line: &str, time: Duration) -> anyhow::Result<Daemon> {
    let seconds = time.as_secs().max(1);
    let path = format!("/v1/lines/{line}/release?seconds={seconds}");
    match request(&config.admin.socket, Method::POST, &path).await {
        Ok(_) => Ok(Daemon::Released),
        Err(ClientError::NotRunning { .. }) => Ok(Daemon::NotRunning),
        Err(error) => {
            Err(anyhow::Error::new(error)
                .context(format!("the daemon did not release line {line}")))
        }
    }
}

/// Gives the line back to a running daemon; whether one took it. A failure is only reported:
/// the release expires by itself.
async fn resume(config: &Config, line: &str) -> bool {
    let path = format!("/v1/lines/{line}/resume");
    match request(&config.admin.socket, Method::POST, &path).await {
        Ok(_) => true,
        Err(ClientError::NotRunning { .. }) => false,
        Err(error) => {
            eprintln!(
                "slotgate: line {line} not given back ({error}); the daemon takes it back when \
                 the release expires"
            );
            false
        }
    }
}

/// Whether the stopped daemon's last exchange on the line may be unacknowledged by its journal
/// (the in-flight record says `Sent`). A record that cannot be read counts as unconfirmed.
fn last_exchange_unconfirmed(config: &Config, line: &str) -> bool {
    let path = config.storage.lines_dir().join(inflight::file_name(line));
    match std::fs::read(&path) {
        Ok(data) => Record::decode(&data).is_some_and(|r| r.state == State::Sent),
        Err(error) => error.kind() != std::io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poller::inflight::InflightFile;

    #[test]
    fn only_a_sent_or_unreadable_in_flight_record_calls_for_a_loop_break_first() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[venue]\nid = \"UA-1\"\ncurrency = \"UAH\"\ntime_zone = \"Europe/Kyiv\"\n\n\
                    [storage]\ndir = \"state\"\n\n[[line]]\nname = \"a\"\nkind = \"tcp\"\n\
                    address = \"127.0.0.1:1\"\n\n[[line.machine]]\naddress = 1\n\
                    registry_id = \"EGM-1\"\n";
        let config = Config::from_toml_str(&dir.path().join("slotgate.toml"), text).unwrap();
        assert!(!last_exchange_unconfirmed(&config, "a"), "no record: the daemon never ran");
        let path = config.storage.lines_dir().join(inflight::file_name("a"));
        let (mut record, _) = InflightFile::open(&path).unwrap();
        record.sent(1, &[0x81], false, 7, Vec::new()).unwrap();
        assert!(last_exchange_unconfirmed(&config, "a"));
        record.confirmed().unwrap();
        assert!(!last_exchange_unconfirmed(&config, "a"));
        // A record that cannot be read may be anything: wait.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(last_exchange_unconfirmed(&config, "a"));
    }
}
