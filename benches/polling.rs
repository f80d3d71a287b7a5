//! Polling benchmark (issue 3): how evenly the gateway keeps the poll spacing of the generic
//! profile (200 ms, sas-protocol.md §4.1) and what CPU and memory it needs, for N simulated
//! machines over TCP. Figures and commands: BENCHMARKS.md.
//!
//! ```text
//! cargo bench --bench polling -- --machines 250 --seconds 30
//! ```
//!
//! `cargo bench` passes `--bench`; without it (`cargo test --benches`, `--all-targets`) the
//! binary prints a note and exits, so no test run ever carries a timed benchmark.
//!
//! # Set-up
//! - **Machines.** `slotgate simulate` (the binary cargo built alongside, `CARGO_BIN_EXE_slotgate`)
//!   in a child process, so that its CPU can be told apart from the gateway's: N machines on
//!   127.0.0.1, one TCP port each, RTE on, 6 games per minute per machine by default, a ledger.
//!   `--simulator in-process` runs `Simulation::start` on a second tokio runtime in this process
//!   instead (CPU is then split by thread name, which is approximate).
//! - **Gateway.** Built the way `slotgate run` builds it (`src/app.rs`): a configuration with one
//!   TCP line per machine, the generic profile and the default polling intervals is validated by
//!   `Config`; each machine gets a `MachinePoller`; each line runs `poller::run_line` on a
//!   multi-thread runtime; every event goes through a real `SinkHandle` (group commit, fsync)
//!   into a file in a temporary directory (`--dir` chooses where).
//! - **Timeline.** Start, `--warmup` seconds (connect, discovery, first meter snapshot), then the
//!   measured window of `--seconds`, then every line is cancelled and the simulator stopped.
//!
//! # Jitter: a recording line, no change to `src/`
//! Every line the pollers open is wrapped ([`Recorded`], a `Connect` whose `Line` delegates):
//! `send` notes the time and kind of each message before handing it on, `recv` when the first
//! character of an answer reached the poller. Protocol behaviour is unchanged; the cost is one
//! shared, rarely contended mutex and a few counters per message. Per machine, inside the
//! window:
//! - **General-poll interval:** time between consecutive general polls (`80|addr` with the
//!   wakeup bit, retries excluded), reported as interval − 200 ms. With `sync = "sync-poll"`
//!   each general poll follows an `80` whose reply window (one character + 20 ms = 20.6 ms) must
//!   pass first, so +20.6 ms is the design value, not lateness. Intervals with a long poll in
//!   between (two spacing periods by design) are counted, not mixed into the percentiles.
//! - **Lateness:** for every poll (any message but `80`), how long after its due time (start of
//!   the previous poll + 200 ms) the poll, or the `80` opening its cycle, went out. The session
//!   never sends early, so 0 is perfect; this is the scheduling delay alone.
//! - **Reply latency:** send → first answer character seen by the poller (the 20 ms reply
//!   window, seen from the gateway); polls without any answer are counted as unanswered.
//!
//! # CPU and memory
//! CPU is sampled at the start and end of the window: the gateway as `getrusage(RUSAGE_SELF)`
//! user + system (this process: pollers, sink writer, the recording line), the child simulator
//! from `/proc/<pid>/stat` (utime + stime), the whole host from `/proc/stat` (busy ticks), each
//! divided by wall time, as % of one core. Memory is the peak resident set (`VmHWM`).
// Benchmarks measure real time against real processes (one clock is for the daemon).
#![allow(clippy::disallowed_methods)]

use std::fmt;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser as _;
use slotgate::config::Config;
use slotgate::poller;
use slotgate::simulator::{EndpointKind, SimulateArgs, Simulation};
use slotgate::transport::{
    AnyLine, Character, Connect, Line, LineDiagnostics, TransportConfig, TransportError,
    WakeupMethod,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The generic profile's poll spacing (sas-protocol.md §4.1), the reference for every figure.
const SPACING: Duration = Duration::from_millis(200);

/// The `80`'s reply window: one character at 19 200 baud (0.573 ms) + the 20 ms reply timeout.
const SYNC_WINDOW: Duration = Duration::from_micros(20_573);

/// How long the line pollers get to stop after the window.
const DRAIN: Duration = Duration::from_secs(15);

#[derive(Debug, clap::Parser)]
#[command(about = "Poll-interval jitter, CPU and memory of the line pollers against N simulated \
                   machines over TCP")]
struct Opts {
    /// Simulated machines, one TCP line each.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u16).range(1..))]
    machines: u16,
    /// Length of the measured window, after the warm-up.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Seconds before the window: connecting, discovery, first meter snapshots.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Mean games per minute per machine.
    #[arg(long, default_value_t = 6.0)]
    game_rate: f64,
    /// Seed of the simulated games.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the simulator runs.
    #[arg(long, value_enum, default_value_t = SimulatorMode::Child)]
    simulator: SimulatorMode,
    /// Directory for the event file and the ledger (default: a new temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Passed by `cargo bench`; without it the benchmark does not run.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SimulatorMode {
    /// `slotgate simulate` as a child process: gateway and simulator CPU measured apart.
    Child,
    /// `Simulation::start` on its own runtime in this process: CPU split by thread name.
    InProcess,
}

fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    if !opts.bench {
        println!("polling: a benchmark; run it with `cargo bench --bench polling -- …`");
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let temp = tempfile::Builder::new().prefix("slotgate-bench-").tempdir()?;
    let dir = opts.dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let state_dir = dir.join("state");
    let ledger_file = dir.join("ledger.jsonl");
    if state_dir.exists() {
        std::fs::remove_dir_all(&state_dir)?;
    }
    if ledger_file.exists() {
        std::fs::remove_file(&ledger_file)?;
    }

    let started = jiff::Timestamp::now();
    let simulator = Simulator::start(&opts, &ledger_file)?;
    let config = gateway_config(&dir, &state_dir, simulator.endpoints())?;
    let probe = Arc::new(Probe::default());
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("gateway").build()?;
    let run = runtime.block_on(run_gateway(&config, &opts, &simulator, &probe))?;
    drop(runtime);
    // Peak RSS before the report's own work (reading the files back) can add to it.
    let gateway_hwm = vm_hwm(Path::new("/proc/self/status"));
    let simulator_hwm = simulator.peak_rss();
    simulator.stop()?;

    let stats = std::mem::take(&mut *probe.stats());
    let report = Report {
        opts: &opts,
        started,
        events: EventCounts::read(&config.storage.journal_dir())?,
        games_played: count_games(&ledger_file)?,
        stats,
        run,
        gateway_hwm,
        simulator_hwm,
    };
    print!("{report}");
    Ok(())
}

// === The recording line ===

/// What a message was, from its characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `80`, the sync poll.
    Sync,
    /// `80|addr`.
    General,
    /// A long poll with this command byte.
    Long(u8),
}

impl Kind {
    fn of(chars: &[Character]) -> Option<Self> {
        let first = chars.first().filter(|c| c.wakeup)?;
        Some(match (first.byte, chars.get(1)) {
            (0x80, None) => Self::Sync,
            (byte, None) if byte & 0x80 != 0 => Self::General,
            (_, Some(command)) => Self::Long(command.byte),
            (_, None) => return None,
        })
    }
}

/// A `Connect` that records every message its lines send; see the module doc.
#[derive(Debug, Clone)]
struct Recorded {
    inner: TransportConfig,
    probe: Arc<Probe>,
}

impl Connect for Recorded {
    type Line = RecordedLine;

    async fn connect(&self) -> Result<RecordedLine, TransportError> {
        let inner = Connect::connect(&self.inner).await?;
        self.probe.stats().connects += 1;
        Ok(RecordedLine { inner, probe: Arc::clone(&self.probe), track: Track::default() })
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn planned_wakeup(&self) -> WakeupMethod {
        self.inner.planned_wakeup()
    }
}

#[derive(Debug)]
struct RecordedLine {
    inner: AnyLine,
    probe: Arc<Probe>,
    track: Track,
}

impl Line for RecordedLine {
    async fn send(&mut self, chars: &[Character]) -> Result<(), TransportError> {
        if let Some(kind) = Kind::of(chars) {
            self.track.sent(Instant::now(), kind, &self.probe);
        }
        self.inner.send(chars).await
    }

    async fn recv(&mut self, out: &mut Vec<Character>) -> Result<usize, TransportError> {
        let n = self.inner.recv(out).await?;
        self.track.received(Instant::now(), &self.probe);
        Ok(n)
    }

    fn clear_input(&mut self) -> u64 {
        self.inner.clear_input()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn diagnostics(&self) -> LineDiagnostics {
        self.inner.diagnostics()
    }
}

/// One line's recent history, enough to measure the next message against.
#[derive(Debug, Default)]
struct Track {
    /// The last message other than `80`.
    last_poll: Option<LastPoll>,
    /// The first `80` since then: where the next poll's cycle started.
    cycle_start: Option<Instant>,
    /// The last general poll that was not a retry, and whether the window was open then.
    last_general: Option<(Instant, bool)>,
    /// Whether a long poll went out since that general poll.
    long_since_general: bool,
}

#[derive(Debug, Clone, Copy)]
struct LastPoll {
    at: Instant,
    kind: Kind,
    /// The window was open when it was sent.
    measured: bool,
    answered: bool,
}

impl Track {
    fn sent(&mut self, now: Instant, kind: Kind, probe: &Probe) {
        let measuring = probe.measuring.load(Ordering::Relaxed);
        if kind == Kind::Sync {
            self.cycle_start.get_or_insert(now);
            if measuring {
                probe.stats().sync_polls += 1;
            }
            return;
        }
        let cycle = self.cycle_start.take();
        // A retry (implied NACK) repeats the previous poll with nothing in between (§4.2).
        let retry = cycle.is_none() && self.last_poll.is_some_and(|p| p.kind == kind);
        if measuring {
            let mut stats = probe.stats();
            stats.polls += 1;
            stats.retries += u64::from(retry);
            if let Some(sync) = cycle {
                stats.sync_gap.record(now - sync);
            }
            if let Some(last) = self.last_poll.filter(|p| p.measured) {
                let due = last.at + SPACING;
                stats.lateness.record(cycle.unwrap_or(now).saturating_duration_since(due));
                stats.unanswered += u64::from(!last.answered);
            }
            match kind {
                Kind::General if !retry => {
                    stats.general_polls += 1;
                    if let Some((at, true)) = self.last_general {
                        if self.long_since_general {
                            stats.spanning_long_poll += 1;
                        } else {
                            stats.general_interval.record(now - at);
                        }
                    }
                }
                Kind::Long(command) => {
                    stats.long_polls += 1;
                    *stats.long_by_command.entry(command).or_default() += 1;
                }
                _ => {}
            }
        }
        match kind {
            Kind::General if !retry => {
                self.last_general = Some((now, measuring));
                self.long_since_general = false;
            }
            Kind::Long(_) => self.long_since_general = true,
            _ => {}
        }
        self.last_poll = Some(LastPoll { at: now, kind, measured: measuring, answered: false });
    }

    fn received(&mut self, now: Instant, probe: &Probe) {
        let Some(last) = self.last_poll.as_mut().filter(|p| !p.answered) else { return };
        last.answered = true;
        if last.measured && probe.measuring.load(Ordering::Relaxed) {
            probe.stats().reply.record(now - last.at);
        }
    }
}

/// What every recording line reports into; the window opens and closes with `measuring`.
#[derive(Debug, Default)]
struct Probe {
    measuring: AtomicBool,
    stats: Mutex<Stats>,
}

impl Probe {
    fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug, Default)]
struct Stats {
    /// Consecutive general polls of a machine with only the `80` between them.
    general_interval: Histogram,
    /// Consecutive general polls with a long poll between them (not in `general_interval`).
    spanning_long_poll: u64,
    /// Start of each poll's cycle after its due time.
    lateness: Histogram,
    /// From an `80` to the poll it precedes (by design one character + 20 ms).
    sync_gap: Histogram,
    /// Poll sent → first answer character received.
    reply: Histogram,
    polls: u64,
    general_polls: u64,
    long_polls: u64,
    /// Long polls by command byte.
    long_by_command: std::collections::BTreeMap<u8, u64>,
    sync_polls: u64,
    /// Polls sent again as an implied NACK.
    retries: u64,
    /// Polls after which no character came back before the next message.
    unanswered: u64,
    /// Successful line opens over the whole run (one per line means no reconnect).
    connects: u64,
}

/// Durations in 10 µs buckets up to 3 s, plus the count above and the exact maximum. Only the
/// touched pages of the bucket array become resident, so it costs the gateway's RSS little.
#[derive(Debug)]
struct Histogram {
    buckets: Vec<u32>,
    count: u64,
    above: u64,
    max: Duration,
}

impl Histogram {
    const BUCKET_MICROS: u64 = 10;
    const BUCKETS: usize = 300_000;

    fn record(&mut self, value: Duration) {
        self.count += 1;
        self.max = self.max.max(value);
        let index = usize::try_from(value.as_micros() / u128::from(Self::BUCKET_MICROS))
            .unwrap_or(usize::MAX);
        match self.buckets.get_mut(index) {
            Some(bucket) => *bucket = bucket.saturating_add(1),
            None => self.above += 1,
        }
    }

    /// The `q` quantile (nearest rank), as the middle of its bucket; `None` if empty or above
    /// the range.
    fn quantile(&self, q: f64) -> Option<Duration> {
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count.max(1));
        let mut seen = 0u64;
        for (index, &n) in self.buckets.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank && self.count > 0 {
                let micros = index as u64 * Self::BUCKET_MICROS + Self::BUCKET_MICROS / 2;
                return Some(Duration::from_micros(micros));
            }
        }
        None
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self { buckets: vec![0; Self::BUCKETS], count: 0, above: 0, max: Duration::ZERO }
    }
}

// === The simulator ===

/// One machine as the simulator announces it.
#[derive(Debug, Clone)]
struct SimEndpoint {
    address: u8,
    serial: String,
    tcp: SocketAddr,
}

#[derive(Debug)]
enum Simulator {
    Child {
        child: KillOnDrop,
        /// Kept open: the simulator's stdout stays a valid pipe until it stops.
        _stdout: BufReader<ChildStdout>,
        endpoints: Vec<SimEndpoint>,
    },
    InProcess {
        runtime: tokio::runtime::Runtime,
        simulation: Simulation,
        endpoints: Vec<SimEndpoint>,
    },
}

/// A child process killed if the benchmark fails before stopping it.
#[derive(Debug)]
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Simulator {
    fn start(opts: &Opts, ledger: &Path) -> anyhow::Result<Self> {
        let machines = opts.machines.to_string();
        let game_rate = opts.game_rate.to_string();
        let seed = opts.seed.to_string();
        match opts.simulator {
            SimulatorMode::Child => {
                let stderr = std::fs::File::create(ledger.with_file_name("simulator.log"))?;
                let mut child = Command::new(env!("CARGO_BIN_EXE_slotgate"))
                    .arg("simulate")
                    .args(["--machines", &machines, "--tcp", "127.0.0.1:0", "--rte"])
                    .args(["--game-rate", &game_rate, "--seed", &seed])
                    .arg("--ledger")
                    .arg(ledger)
                    .env("RUST_LOG", "warn")
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(stderr)
                    .spawn()
                    .context("cannot start `slotgate simulate`")?;
                let stdout = child.stdout.take().context("no stdout pipe")?;
                let child = KillOnDrop(child);
                let mut stdout = BufReader::new(stdout);
                let mut endpoints = Vec::with_capacity(usize::from(opts.machines));
                let mut line = String::new();
                while endpoints.len() < usize::from(opts.machines) {
                    line.clear();
                    if stdout.read_line(&mut line)? == 0 {
                        bail!("the simulator stopped after {} endpoints", endpoints.len());
                    }
                    endpoints.push(parse_endpoint(&line)?);
                }
                Ok(Self::Child { child, _stdout: stdout, endpoints })
            }
            SimulatorMode::InProcess => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .thread_name("simulator")
                    .build()?;
                let mut args = SimulateArgs::defaults();
                args.machines = opts.machines;
                args.tcp = SocketAddr::from(([127, 0, 0, 1], 0));
                args.rte = true;
                args.game_rate = opts.game_rate;
                args.seed = opts.seed;
                args.ledger = Some(ledger.to_path_buf());
                let simulation = runtime.block_on(Simulation::start(&args))?;
                let endpoints = simulation
                    .endpoints()
                    .iter()
                    .filter_map(|e| match e.kind {
                        EndpointKind::Tcp(tcp) => {
                            Some(SimEndpoint { address: e.address, serial: e.serial.clone(), tcp })
                        }
                        EndpointKind::Pty(_) => None,
                    })
                    .collect();
                Ok(Self::InProcess { runtime, simulation, endpoints })
            }
        }
    }

    fn endpoints(&self) -> &[SimEndpoint] {
        match self {
            Self::Child { endpoints, .. } | Self::InProcess { endpoints, .. } => endpoints,
        }
    }

    /// CPU used so far: (gateway, simulator). In-process, the simulator is the sum of the
    /// threads named `simulator` that are still alive, the gateway everything else.
    fn cpu(&self) -> (Duration, Duration) {
        let process = own_cpu();
        match self {
            Self::Child { child, .. } => {
                let path = format!("/proc/{}/stat", child.0.id());
                (process, proc_stat_cpu(Path::new(&path)).unwrap_or_default())
            }
            Self::InProcess { .. } => {
                let simulator = threads_named("simulator");
                (process.saturating_sub(simulator), simulator)
            }
        }
    }

    fn peak_rss(&self) -> Option<u64> {
        match self {
            Self::Child { child, .. } => {
                vm_hwm(Path::new(&format!("/proc/{}/status", child.0.id())))
            }
            Self::InProcess { .. } => None,
        }
    }

    /// SIGTERM and wait (child), or `Simulation::stop`; either way the ledger is complete after.
    fn stop(self) -> anyhow::Result<()> {
        match self {
            Self::Child { mut child, .. } => {
                let pid = nix::unistd::Pid::from_raw(i32::try_from(child.0.id())?);
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if let Some(status) = child.0.try_wait()? {
                        if !status.success() {
                            bail!("the simulator exited with {status}");
                        }
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        bail!("the simulator did not stop within 30 s of SIGTERM");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Self::InProcess { runtime, simulation, .. } => {
                runtime.block_on(simulation.stop())?;
                Ok(())
            }
        }
    }
}

/// `machine=0 address=1 serial=SIM000000 tcp=127.0.0.1:40517`.
fn parse_endpoint(line: &str) -> anyhow::Result<SimEndpoint> {
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .with_context(|| format!("no {key} in the simulator's line {line:?}"))
    };
    Ok(SimEndpoint {
        address: field("address")?.parse()?,
        serial: field("serial")?.to_owned(),
        tcp: field("tcp")?.parse()?,
    })
}

// === The gateway ===

/// The configuration `slotgate run` would read: one TCP line per machine, generic profile,
/// default polling intervals, denomination 0.01 as the simulator's.
fn gateway_config(
    dir: &Path,
    state_dir: &Path,
    machines: &[SimEndpoint],
) -> anyhow::Result<Config> {
    use std::fmt::Write as _;
    let mut text = format!(
        "[venue]\nid = \"UA-BENCH-1\"\ncurrency = \"UAH\"\ntime_zone = \"Europe/Kyiv\"\n\n\
         [storage]\ndir = {:?}\n",
        state_dir.display().to_string()
    );
    for (i, m) in machines.iter().enumerate() {
        write!(
            text,
            "\n[[line]]\nname = \"line-{i}\"\nkind = \"tcp\"\naddress = \"{}\"\n\
             profile = \"generic-sas-602\"\n\n  [[line.machine]]\n  address = {}\n  \
             registry_id = \"EGM-{}\"\n  denomination = \"0.01\"\n",
            m.tcp, m.address, m.serial
        )?;
    }
    Ok(Config::from_toml_str(&dir.join("slotgate.toml"), &text)?)
}

/// What the gateway run leaves for the report.
#[derive(Debug)]
struct Run {
    /// CPU at the window's start and end: (gateway, simulator).
    cpu: [(Duration, Duration); 2],
    host_busy: [Option<Duration>; 2],
    window: Duration,
    /// Line tasks that ended before they were cancelled.
    lines_ended_early: usize,
}

/// Runs the pollers as `app::run` wires them, measures the window, and stops them.
async fn run_gateway(
    config: &Config,
    opts: &Opts,
    simulator: &Simulator,
    probe: &Arc<Probe>,
) -> anyhow::Result<Run> {
    let (journal, writer) = slotgate::app::open_journal(config)?;
    let cancel = CancellationToken::new();
    let mut lines = JoinSet::new();
    let now = tokio::time::Instant::now().into_std();
    for line in slotgate::app::build_lines(config, &journal, now)? {
        if !matches!(line.transport, TransportConfig::Tcp(_)) {
            bail!("line {} is not TCP", line.name);
        }
        let connector = Recorded { inner: line.transport, probe: Arc::clone(probe) };
        // As `slotgate run` places it, so the per-message record write is measured too.
        let inflight =
            Some(config.storage.lines_dir().join(poller::inflight::file_name(&line.name)));
        lines.spawn(poller::run_line(
            line.name,
            connector,
            line.machines,
            inflight,
            journal.clone(),
            cancel.clone(),
            tokio::sync::watch::Sender::new(poller::LineStatus::connecting("bench")),
            poller::command::channel("bench").1,
        ));
    }

    tokio::time::sleep(Duration::from_secs(opts.warmup)).await;
    let start = (Instant::now(), simulator.cpu(), host_busy());
    probe.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(opts.seconds)).await;
    probe.measuring.store(false, Ordering::Relaxed);
    let end = (Instant::now(), simulator.cpu(), host_busy());

    // A line task ends only when cancelled; one that has ended already is a finding.
    let mut lines_ended_early = 0;
    while lines.try_join_next().is_some() {
        lines_ended_early += 1;
    }
    cancel.cancel();
    if tokio::time::timeout(DRAIN, async { while lines.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        lines.abort_all();
        bail!("the line pollers did not stop within {DRAIN:?}");
    }
    drop(journal);
    tokio::task::spawn_blocking(move || writer.join()).await?.map_err(anyhow::Error::msg)?;
    Ok(Run {
        cpu: [start.1, end.1],
        host_busy: [start.2, end.2],
        window: end.0 - start.0,
        lines_ended_early,
    })
}

// === Measuring the process and the host ===

/// User + system CPU of this process, all threads.
fn own_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF)
        .map_or(Duration::ZERO, |u| timeval(u.user_time()) + timeval(u.system_time()))
}

fn timeval(t: nix::sys::time::TimeVal) -> Duration {
    let micros = i128::from(t.tv_sec()) * 1_000_000 + i128::from(t.tv_usec());
    Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

/// Clock ticks per second of `/proc` CPU times (USER_HZ).
fn clock_ticks() -> u64 {
    use nix::unistd::{SysconfVar, sysconf};
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz as u64,
        _ => 100,
    }
}

fn ticks(n: u64) -> Duration {
    Duration::from_secs_f64(n as f64 / clock_ticks() as f64)
}

/// utime + stime of a `/proc/…/stat` file (fields 14 and 15; the name in parentheses may hold
/// spaces, so fields are counted after its closing parenthesis).
fn proc_stat_cpu(path: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(path).ok()?;
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(ticks(utime + stime))
}

/// CPU of this process's live threads whose name starts with `prefix`.
fn threads_named(prefix: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Duration::ZERO };
    tasks
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .filter_map(|t| proc_stat_cpu(&t.path().join("stat")))
        .sum()
}

/// Busy time of all CPUs of the host (`/proc/stat`: everything but idle and iowait).
fn host_busy() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = cpu.split_whitespace().map_while(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    let busy = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum();
    Some(ticks(busy))
}

/// Peak resident set in bytes (`VmHWM`).
fn vm_hwm(status: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(status).ok()?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix(" kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

// === Results ===

#[derive(Debug, Default)]
struct EventCounts {
    total: u64,
    games: u64,
    online: u64,
    link_downs: u64,
    poll_failures: u64,
}

impl EventCounts {
    /// Counts the events in the journal at `dir`.
    fn read(dir: &Path) -> anyhow::Result<Self> {
        use slotgate::journal::{Body, verify::Snapshot};
        let mut counts = Self::default();
        let mut events = Vec::new();
        Snapshot::open(dir)?.for_each_record(|_, record| {
            if let Ok(Some(Body::Event { canonical_json, .. })) = record.map(|r| r.body) {
                events.push(canonical_json);
            }
        })?;
        for json in events {
            let event: serde_json::Value = serde_json::from_slice(&json)?;
            counts.total += 1;
            match event["kind"].as_str() {
                Some("game_ended") => counts.games += 1,
                Some("link_state") if event["data"]["state"] == "online" => counts.online += 1,
                Some("link_state") => counts.link_downs += 1,
                Some("poll_failed") => counts.poll_failures += 1,
                _ => {}
            }
        }
        Ok(counts)
    }
}

/// Games the simulated machines finished (ledger records of type `game`).
fn count_games(ledger: &Path) -> anyhow::Result<u64> {
    let file = std::fs::File::open(ledger).with_context(|| format!("{}", ledger.display()))?;
    let mut games = 0;
    for line in BufReader::new(file).lines() {
        let record: serde_json::Value = serde_json::from_str(&line?)?;
        games += u64::from(record["type"] == "game");
    }
    Ok(games)
}

struct Report<'a> {
    opts: &'a Opts,
    started: jiff::Timestamp,
    events: EventCounts,
    games_played: u64,
    stats: Stats,
    run: Run,
    gateway_hwm: Option<u64>,
    simulator_hwm: Option<u64>,
}

/// Milliseconds with two decimals, or `-` for no value.
struct Ms(Option<f64>);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(ms) => write!(f, "{ms:.2}"),
            None => f.write_str("-"),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `q` quantile of `h` in ms, minus `offset`.
fn q_ms(h: &Histogram, q: f64, offset: Duration) -> Ms {
    Ms(h.quantile(q).map(|d| ms(d) - ms(offset)))
}

fn max_ms(h: &Histogram, offset: Duration) -> Ms {
    Ms((h.count > 0).then(|| ms(h.max) - ms(offset)))
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".to_owned(), |b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64))
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.opts;
        let s = &self.stats;
        let wall = self.run.window.as_secs_f64();
        let pct = |a: Duration, b: Duration| 100.0 * (b.saturating_sub(a)).as_secs_f64() / wall;
        let [(gw0, sim0), (gw1, sim1)] = self.run.cpu;
        let gateway = pct(gw0, gw1);
        let simulator = pct(sim0, sim1);
        let host = match self.run.host_busy {
            [Some(a), Some(b)] => Some(pct(a, b)),
            _ => None,
        };
        let cores = std::thread::available_parallelism().map_or(0, usize::from);
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                    .map(|(_, m)| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".to_owned());
        let g = &s.general_interval;
        let l = &s.lateness;
        let r = &s.reply;
        let mode = match o.simulator {
            SimulatorMode::Child => "child process",
            SimulatorMode::InProcess => "in-process (CPU split by thread name)",
        };
        writeln!(
            f,
            "== polling benchmark, started {}",
            self.started.strftime("%Y-%m-%d %H:%M UTC")
        )?;
        writeln!(f, "host: {cores} CPUs ({model})")?;
        writeln!(
            f,
            "{} machines over TCP, one line each, RTE, {} games/min/machine; simulator: {mode}",
            o.machines, o.game_rate
        )?;
        writeln!(f, "window: {:.1} s after a {} s warm-up", wall, o.warmup)?;
        writeln!(
            f,
            "general-poll interval − 200 ms (design: +20.6 ms, the `80` reply window), n = {}:\n  \
             p50 {} ms, p99 {} ms, max {} ms; {} more intervals had a long poll in between",
            g.count,
            q_ms(g, 0.5, SPACING),
            q_ms(g, 0.99, SPACING),
            max_ms(g, SPACING),
            s.spanning_long_poll
        )?;
        writeln!(
            f,
            "lateness of each poll's cycle after its due time, n = {}:\n  p50 {} ms, p99 {} ms, \
             max {} ms",
            l.count,
            q_ms(l, 0.5, Duration::ZERO),
            q_ms(l, 0.99, Duration::ZERO),
            max_ms(l, Duration::ZERO)
        )?;
        let sg = &s.sync_gap;
        writeln!(
            f,
            "`80` → the poll after it, minus its 20.6 ms reply window, n = {}:\n  p50 {} ms, p99 \
             {} ms, max {} ms",
            sg.count,
            q_ms(sg, 0.5, SYNC_WINDOW),
            q_ms(sg, 0.99, SYNC_WINDOW),
            max_ms(sg, SYNC_WINDOW)
        )?;
        writeln!(
            f,
            "reply latency (sent → first answer character at the poller), n = {}:\n  p50 {} ms, \
             p99 {} ms, max {} ms",
            r.count,
            q_ms(r, 0.5, Duration::ZERO),
            q_ms(r, 0.99, Duration::ZERO),
            max_ms(r, Duration::ZERO)
        )?;
        writeln!(
            f,
            "messages in the window: {} polls ({} general, {} long), {} sync polls, {} retries, \
             {} unanswered; {} line opens for {} lines; {} line tasks ended early",
            s.polls,
            s.general_polls,
            s.long_polls,
            s.sync_polls,
            s.retries,
            s.unanswered,
            s.connects,
            o.machines,
            self.run.lines_ended_early
        )?;
        let per_command: Vec<String> =
            s.long_by_command.iter().map(|(c, n)| format!("{c:02X}×{n}")).collect();
        writeln!(
            f,
            "long polls by command: {}; general polls per machine per second: {:.2}",
            if per_command.is_empty() { "none".to_owned() } else { per_command.join(" ") },
            s.general_polls as f64 / f64::from(o.machines) / wall
        )?;
        writeln!(
            f,
            "CPU over the window, % of one core: gateway {gateway:.1} %, simulator {simulator:.1} \
             %, everything else on the host {} % (of {} %)",
            host.map_or_else(|| "-".to_owned(), |h| format!("{:.1}", h - gateway - simulator)),
            cores * 100
        )?;
        let whose = match o.simulator {
            SimulatorMode::Child => "gateway",
            SimulatorMode::InProcess => "process (gateway and simulator)",
        };
        writeln!(
            f,
            "peak RSS: {whose} {}, simulator {}",
            mib(self.gateway_hwm),
            mib(self.simulator_hwm)
        )?;
        let e = &self.events;
        writeln!(
            f,
            "whole run: {} events written, {} games seen (simulator played {}), {} links up, {} \
             link-downs, {} failed polls",
            e.total, e.games, self.games_played, e.online, e.link_downs, e.poll_failures
        )?;
        let other = host.map(|h| h - gateway - simulator);
        writeln!(
            f,
            "row: | {} | {} / {} / {} | {} / {} / {} | {gateway:.1} % | {simulator:.1} % | {} | {} \
             | {} | {} / {} | {} | {} / {} |",
            o.machines,
            q_ms(g, 0.5, SPACING),
            q_ms(g, 0.99, SPACING),
            max_ms(g, SPACING),
            q_ms(l, 0.5, Duration::ZERO),
            q_ms(l, 0.99, Duration::ZERO),
            max_ms(l, Duration::ZERO),
            other.map_or_else(|| "-".to_owned(), |o| format!("{o:.0} %")),
            mib(self.gateway_hwm),
            e.total,
            e.games,
            self.games_played,
            e.link_downs,
            s.retries,
            s.unanswered
        )
    }
}
