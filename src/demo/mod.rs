//! `slotgate demo`: the whole job in one terminal, without hardware or services. A floor of
//! simulated machines is polled by the real gateway (the same validated `Config` and
//! `app::run` as `slotgate run`), every event is journalled and forwarded over HTTPS to an
//! embedded state-system receiver ([`receiver`]) on loopback. The demo then cuts the uplink
//! itself, the backlog grows, the link comes back and the replay catches up, in order; at the
//! end play closes, the last events are delivered and a tally ([`tally`]) proves nothing was
//! lost: the simulator's ledger = the journal = what the receiver got. The process exits 0 only
//! if it balances.
//!
//! The timeline is proportional to `--duration`, so that a 15 s test run shows every phase:
//! the uplink is down from 30 % to 55 % of it, play closes [`CLOSING`] before the end (the
//! last games finish and are reported), and after the duration the demo waits for the last
//! events to be delivered (at most [`SETTLE_LIMIT`]) before it stops the gateway.

pub mod receiver;
pub mod tally;

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;

use self::receiver::{Credentials, Receiver};
use self::tally::Tally;
use crate::app::StatusFile;
use crate::config::Config;
use crate::forward::LinkState;
use crate::journal::Body;
use crate::simulator::{EndpointKind, SimulateArgs, Simulation};

/// Options of `slotgate demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Number of simulated machines, each on its own TCP port and line.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub machines: u16,
    /// The gateway's state directory (journal, status); default: a new one under the temp
    /// directory.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Mean games per minute per machine.
    #[arg(long, default_value_t = 20.0)]
    pub game_rate: f64,
    /// How long the demo runs before it stops by itself, as a stop by Ctrl-C would (`90s`,
    /// `5m`); Ctrl-C still stops it earlier.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
}

/// How long before the end play closes: the longest game (3 s) and its report fit in it.
pub const CLOSING: Duration = Duration::from_secs(5);
/// How long after the duration the demo waits at most for the last events to be delivered.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// The destination's name in the generated configuration.
const DESTINATION: &str = "state-system";

/// When each phase starts, from the start of the demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeline {
    pub outage_from: Duration,
    pub outage_until: Duration,
    pub close_play: Duration,
    pub end: Duration,
}

impl Timeline {
    /// The uplink is down from 30 % to 55 % of `duration`; play closes [`CLOSING`] before the
    /// end, but not before the outage is over and a little replay was seen.
    pub fn for_duration(duration: Duration) -> Self {
        let outage_until = duration.mul_f64(0.55);
        Self {
            outage_from: duration.mul_f64(0.3),
            outage_until,
            close_play: duration.saturating_sub(CLOSING).max(duration.mul_f64(0.65)),
            end: duration,
        }
    }
}

/// What the demo shows as going on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Playing,
    UplinkDown,
    Replaying,
    CaughtUp,
    Closing,
    Settling,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Self::Playing => "playing",
            Self::UplinkDown => "uplink down",
            Self::Replaying => "replaying",
            Self::CaughtUp => "caught up",
            Self::Closing => "closing: last games",
            Self::Settling => "settling: last events",
        }
    }

    fn explain(self) -> &'static str {
        match self {
            Self::Playing => "machines play; every event is journalled, then sent upstream",
            Self::UplinkDown => {
                "the demo cut the uplink (its receiver answers 503): events pile up in the journal"
            }
            Self::Replaying => "the uplink is back: the backlog is replayed in order",
            Self::CaughtUp => "the backlog is delivered: events go upstream live again",
            Self::Closing => "the floor closes: the games in progress finish, no new ones start",
            Self::Settling => "the last events are delivered; then the gateway stops",
        }
    }
}

/// Runs the demo until its duration has passed and the last events are delivered, or until
/// `shutdown` resolves (then without a tally). Fails if the tally does not balance.
pub async fn run(
    args: DemoArgs,
    shutdown: impl Future<Output = std::io::Result<()>>,
) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("slotgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let state = args.state_dir.clone().unwrap_or_else(|| dir.join("state"));
    // The tally compares this run's ledger with the whole journal.
    if state.join("journal").exists() {
        anyhow::bail!(
            "{}: holds a journal already; the demo needs a new state directory",
            state.display()
        );
    }
    let ledger = dir.join("ledger.jsonl");
    let key = dir.join("journal.key");
    if !key.exists() {
        crate::journal::checkpoint::generate(&key)
            .with_context(|| format!("cannot create the demo signing key {}", key.display()))?;
    }

    let mut sim_args = SimulateArgs::defaults();
    sim_args.machines = args.machines;
    sim_args.rte = true;
    sim_args.game_rate = args.game_rate;
    sim_args.ledger = Some(ledger.clone());
    let simulation = Simulation::start(&sim_args).await.context("starting the simulator")?;
    let credentials = Credentials::generate(&dir)?;
    let receiver = Receiver::start(&credentials).await?;

    let config_path = dir.join("slotgate.toml");
    let text = config_text(&state, &key, &simulation, &receiver, &credentials);
    std::fs::write(&config_path, &text)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let config = Config::load(&config_path)?;
    config.check_files(false)?;

    let timeline = Timeline::for_duration(args.duration);
    println!(
        "slotgate demo: {} simulated machines polled over TCP on 127.0.0.1, events forwarded \
         over HTTPS to an embedded state-system receiver at {}",
        args.machines,
        receiver.url()
    );
    println!("  configuration   {}", config_path.display());
    println!("  journal         {}", config.storage.journal_dir().display());
    println!("  machine ledger  {}", ledger.display());
    println!(
        "Runs {} (Ctrl-C stops it sooner, without a tally); the uplink is cut from {:.0} s to \
         {:.0} s.",
        humantime::format_duration(args.duration),
        timeline.outage_from.as_secs_f64(),
        timeline.outage_until.as_secs_f64()
    );

    let journal_dir = config.storage.journal_dir();
    let (done, stopped) = tokio::sync::oneshot::channel::<()>();
    let stop = async move {
        tokio::select! {
            signal = shutdown => signal,
            _ = stopped => Ok(()),
        }
    };
    let (state_view, daemon_view) = tokio::sync::oneshot::channel();
    let daemon = crate::app::run_with_view(config, stop, Some(state_view));
    tokio::pin!(daemon);
    let mut view = View::new(args.machines, &receiver.url());
    let conducted = tokio::select! {
        outcome = &mut daemon => Err(outcome),
        conducted = conduct(timeline, &simulation, &receiver, daemon_view, &mut view) => {
            Ok(conducted)
        }
    };
    let outcome = match conducted {
        Ok(conducted) => {
            let _ = done.send(());
            daemon.await.and(conducted)
        }
        Err(outcome) => {
            view.finish();
            println!("The demo was stopped before its end: no tally.");
            let stopped = simulation.stop().await.context("stopping the simulator");
            print_hints(&config_path);
            return outcome.and(stopped);
        }
    };
    // A machine task that failed on the way is reported by `stop`.
    let stopped = simulation.stop().await.context("stopping the simulator");
    outcome.and(stopped)?;

    let mut tally = count(&ledger, &journal_dir, &receiver)?;
    tally.max_backlog = view.max_backlog;
    for difference in tally.differences() {
        println!("{difference}");
    }
    println!("{tally}");
    print_hints(&config_path);
    if !tally.balances() {
        anyhow::bail!("the tally does not balance: see the TALLY line");
    }
    println!("Nothing was lost: ledger = journal = received, in order.");
    Ok(())
}

/// The gateway's configuration: one TCP line per simulated machine, the receiver as an HTTPS
/// destination that trusts the demo's CA and carries its token and HMAC key.
fn config_text(
    state: &Path,
    key: &Path,
    simulation: &Simulation,
    receiver: &Receiver,
    credentials: &Credentials,
) -> String {
    // Slow enough to watch the backlog drain, well above the floor's event rate (strict order
    // queues live events behind the replay).
    let replay = 40.max(4 * simulation.endpoints().len());
    let mut text = format!(
        "[venue]\nid = \"DEMO-VENUE\"\ncurrency = \"UAH\"\ntime_zone = \"Europe/Kyiv\"\n\n\
         [polling]\nmeter_snapshot_interval = \"30s\"\n\n[storage]\ndir = {:?}\n\n\
         [journal]\nsigning_key = {:?}\ncheckpoint_interval = \"10s\"\n\n\
         [admin]\nsocket = {:?}\n\n\
         [[destination]]\nname = \"{DESTINATION}\"\nkind = \"https\"\nurl = \"{}\"\n\
         ca_file = {:?}\ntoken_file = {:?}\nhmac_key_file = {:?}\ntimeout = \"5s\"\n\
         batch_size = 100\nreplay_rate = {replay}\nreplay_burst = {replay}\n",
        state.display().to_string(),
        key.display().to_string(),
        state.join("admin.sock").display().to_string(),
        receiver.url(),
        credentials.ca_file.display().to_string(),
        credentials.token_file.display().to_string(),
        credentials.hmac_key_file.display().to_string(),
    );
    for e in simulation.endpoints() {
        let EndpointKind::Tcp(addr) = &e.kind else { continue };
        text.push_str(&format!(
            "\n[[line]]\nname = \"line-{}\"\nkind = \"tcp\"\naddress = \"{addr}\"\n\n\
             [[line.machine]]\naddress = {}\nregistry_id = \"{}\"\ndenomination = \"0.01\"\n",
            e.machine,
            e.address,
            registry_id(&e.serial)
        ));
    }
    text
}

fn registry_id(serial: &str) -> String {
    format!("EGM-{serial}")
}

/// Runs the timeline: the outage, its end, closing play, and the wait for the last events;
/// refreshes the view every second meanwhile.
async fn conduct(
    timeline: Timeline,
    simulation: &Simulation,
    receiver: &Receiver,
    daemon_view: tokio::sync::oneshot::Receiver<crate::state::StateView>,
    view: &mut View,
) -> anyhow::Result<()> {
    let daemon_view = daemon_view.await.context("the gateway stopped before it started polling")?;
    let start = Instant::now();
    let mut phase = Phase::Playing;
    let mut restored_at = None;
    view.phase(phase);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let elapsed = start.elapsed();
        let status = Some(daemon_view.snapshot());
        // A status written before the uplink came back says nothing about the replay.
        let fresh = |since: Option<jiff::Timestamp>| {
            status.as_ref().filter(|s| since.is_some_and(|t| s.written_at >= t))
        };
        let destination =
            |s: &StatusFile| s.destinations.iter().find(|d| d.name == DESTINATION).cloned();
        let delivered_all = |s: &StatusFile| {
            destination(s).is_some_and(|d| d.unacknowledged == 0 && d.in_flight == 0)
        };
        let next = match phase {
            Phase::Playing if elapsed >= timeline.outage_from => {
                receiver.set_up(false);
                Phase::UplinkDown
            }
            Phase::UplinkDown if elapsed >= timeline.outage_until => {
                receiver.set_up(true);
                restored_at = Some(jiff::Timestamp::now());
                Phase::Replaying
            }
            Phase::Replaying if fresh(restored_at).is_some_and(delivered_all) => Phase::CaughtUp,
            Phase::Replaying | Phase::CaughtUp if elapsed >= timeline.close_play => {
                simulation.close_play();
                Phase::Closing
            }
            Phase::Closing if elapsed >= timeline.end => Phase::Settling,
            _ => phase,
        };
        if next != phase {
            phase = next;
            view.phase(phase);
        }
        view.update(
            elapsed,
            timeline.end,
            status.as_ref().and_then(destination),
            status.as_ref(),
            receiver,
        );
        if phase == Phase::Settling {
            let settled_since = jiff::Timestamp::now()
                .checked_sub(jiff::SignedDuration::from_secs(1))
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
            let settled =
                status.as_ref().is_some_and(|s| s.written_at >= settled_since && delivered_all(s));
            // The last games ended by `close_play + CLOSING`; a little after that the lines
            // have polled and journalled their events.
            let quiet = timeline.end.max(timeline.close_play + CLOSING) + crate::app::STATUS_EVERY;
            if settled && elapsed >= quiet {
                view.finish();
                return Ok(());
            }
            if elapsed >= timeline.end + SETTLE_LIMIT {
                view.finish();
                println!("The last events were not delivered within {}s.", SETTLE_LIMIT.as_secs());
                return Ok(());
            }
        }
    }
}

/// Reads the three sources of the tally once everything has stopped.
fn count(ledger: &Path, journal_dir: &Path, receiver: &Receiver) -> anyhow::Result<Tally> {
    let text = std::fs::read_to_string(ledger)
        .with_context(|| format!("cannot read the ledger {}", ledger.display()))?;
    let ledger = tally::ledger_totals(&text, registry_id).map_err(anyhow::Error::msg)?;
    let inbox = receiver.inbox();
    let mut tally = Tally {
        ledger,
        received: inbox.totals.clone(),
        received_records: inbox.seqs.len() as u64,
        out_of_order: inbox.out_of_order,
        duplicates: inbox.duplicates,
        replayed: inbox.historical,
        ..Tally::default()
    };
    let snapshot = crate::journal::verify::Snapshot::open(journal_dir)?;
    let mut unreadable = None;
    snapshot.for_each_record(|seq, record| {
        tally.journalled += 1;
        if !seq.is_some_and(|seq| inbox.seqs.contains(&seq)) {
            tally.missing += 1;
        }
        match record {
            Ok(record) => {
                if let Some(Body::Event { canonical_json, .. }) = &record.body {
                    match serde_json::from_slice(canonical_json) {
                        Ok(event) => tally::add_event(&mut tally.journal, &event),
                        Err(e) => unreadable = Some(format!("record {seq:?}: {e}")),
                    }
                }
            }
            Err(e) => unreadable = Some(format!("record {seq:?}: {e}")),
        }
    })?;
    if let Some(reason) = unreadable {
        anyhow::bail!("the journal cannot be read whole: {reason}");
    }
    Ok(tally)
}

/// How to run slotgate again the way this demo was started: `cargo run [--release] --` when
/// cargo ran it from the project (its binary under the project's `target/`, the working
/// directory inside the project), else the binary's full path.
fn command_prefix() -> String {
    let exe = std::env::current_exe().ok();
    let under_cargo = std::env::var_os("CARGO").is_some();
    let project = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let cwd = std::env::current_dir().ok();
    hint_prefix(exe.as_deref(), under_cargo, project.as_deref(), cwd.as_deref())
}

fn hint_prefix(
    exe: Option<&Path>,
    under_cargo: bool,
    project: Option<&Path>,
    cwd: Option<&Path>,
) -> String {
    if let (Some(exe), true, Some(project), Some(cwd)) = (exe, under_cargo, project, cwd)
        && exe.starts_with(project.join("target"))
        && cwd.starts_with(project)
    {
        let release = exe.parent().is_some_and(|p| p.ends_with("release"));
        return if release { "cargo run --release --" } else { "cargo run --" }.to_owned();
    }
    let Some(exe) = exe else { return "slotgate".to_owned() };
    let path = exe.display().to_string();
    if path.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c)) {
        path
    } else {
        format!("'{}'", path.replace('\'', r"'\''"))
    }
}

fn print_hints(config: &Path) {
    let prefix = command_prefix();
    let config = config.display();
    println!("Check it yourself:");
    println!("  {prefix} journal verify --config {config}");
    println!("  {prefix} journal export --config {config}");
}

/// The live view: a block redrawn in place on a terminal, plain lines in a pipe.
struct View {
    terminal: bool,
    machines: u16,
    url: String,
    phase: Phase,
    drawn: usize,
    last_plain: Option<Duration>,
    max_backlog: u64,
}

impl View {
    fn new(machines: u16, url: &str) -> Self {
        Self {
            terminal: std::io::stdout().is_terminal(),
            machines,
            url: url.to_owned(),
            phase: Phase::Playing,
            drawn: 0,
            last_plain: None,
            max_backlog: 0,
        }
    }

    fn phase(&mut self, phase: Phase) {
        self.phase = phase;
        if !self.terminal {
            println!("== {}: {}", phase.name(), phase.explain());
        }
    }

    fn update(
        &mut self,
        elapsed: Duration,
        end: Duration,
        destination: Option<crate::forward::DestinationStatus>,
        status: Option<&StatusFile>,
        receiver: &Receiver,
    ) {
        let journalled = status.map_or(0, |s| s.journal.records);
        let (link, (backlog, unsent), error) =
            destination.as_ref().map_or(("starting", (0, 0), None), |d| {
                let link = match d.state {
                    LinkState::Up => "up",
                    LinkState::Down => "DOWN",
                    LinkState::Connecting => "connecting",
                    LinkState::Revoked => "REVOKED",
                };
                (link, (d.backlog, d.unacknowledged), d.last_error.clone())
            });
        self.max_backlog = self.max_backlog.max(backlog);
        let (received, replayed, games) = {
            let inbox = receiver.inbox();
            let games: u64 = inbox.totals.values().map(|p| p.games).sum();
            (inbox.seqs.len(), inbox.historical, games)
        };
        let t = elapsed.as_secs_f64();
        if !self.terminal {
            // A line every 2 s is enough for a log.
            if self.last_plain.is_some_and(|last| elapsed < last + Duration::from_secs(2)) {
                return;
            }
            self.last_plain = Some(elapsed);
            println!(
                "t={t:.0}s phase={:?} journalled={journalled} received={received} \
                 replayed={replayed} backlog={backlog} link={} games={games}",
                self.phase.name(),
                link.to_ascii_lowercase()
            );
            return;
        }
        let lines = [
            format!(
                "\x1b[1mslotgate demo\x1b[0m  {t:5.0} s of {}   phase: \x1b[1m{}\x1b[0m",
                end.as_secs(),
                self.phase.name().to_uppercase()
            ),
            format!("  {}", self.phase.explain()),
            format!(
                "  machines   {} simulated, polled over TCP; {games} games reported upstream",
                self.machines
            ),
            format!("  journal    {journalled} records journalled durably"),
            format!(
                "  uplink     {} {link}{}",
                self.url,
                error.filter(|_| link != "up").map_or(String::new(), |e| format!(" ({e})"))
            ),
            format!(
                "  upstream   {received} received ({replayed} replayed); backlog {backlog}, \
                 {unsent} not yet acknowledged"
            ),
        ];
        let mut out = std::io::stdout().lock();
        if self.drawn > 0 {
            let _ = write!(out, "\x1b[{}F", self.drawn);
        }
        for line in &lines {
            let _ = writeln!(out, "\x1b[2K{line}");
        }
        let _ = out.flush();
        self.drawn = lines.len();
    }

    /// Leaves the last view on screen; what follows prints below it.
    fn finish(&mut self) {
        self.drawn = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_fits_a_short_run_and_scales_with_a_long_one() {
        let short = Timeline::for_duration(Duration::from_secs(15));
        assert_eq!(short.outage_from, Duration::from_millis(4500));
        assert_eq!(short.outage_until, Duration::from_millis(8250));
        assert_eq!(short.close_play, Duration::from_secs(10));
        let long = Timeline::for_duration(Duration::from_secs(60));
        assert_eq!(
            (long.outage_from, long.close_play),
            (Duration::from_secs(18), Duration::from_secs(55))
        );
        let tiny = Timeline::for_duration(Duration::from_secs(4));
        assert!(tiny.outage_until < tiny.close_play && tiny.close_play < tiny.end);
    }

    #[test]
    fn hints_name_cargo_only_when_cargo_ran_the_demo_from_the_project() {
        let project = Path::new("/src/slotgate");
        let release = project.join("target/release/slotgate");
        let cwd = project.join("docs");
        let hint = |exe: &Path, cargo: bool, cwd: &Path| {
            hint_prefix(Some(exe), cargo, Some(project), Some(cwd))
        };
        assert_eq!(hint(&release, true, &cwd), "cargo run --release --");
        assert_eq!(hint(&project.join("target/debug/slotgate"), true, project), "cargo run --");
        assert_eq!(hint(&release, false, &cwd), "/src/slotgate/target/release/slotgate");
        assert_eq!(
            hint(&release, true, Path::new("/tmp")),
            "/src/slotgate/target/release/slotgate"
        );
        assert_eq!(hint(Path::new("/opt/my bin/slotgate"), false, &cwd), "'/opt/my bin/slotgate'");
        assert_eq!(hint_prefix(None, false, None, None), "slotgate");
    }
}
