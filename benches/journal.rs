//! Journal benchmark (issues 4 and 14): durable appends per second and the append → durable latency
//! at several group sizes and concurrencies, bytes on disk per event, open time and memory with
//! a large backlog, and disk space after the backlog is acknowledged and refilled. Figures and
//! commands: BENCHMARKS.md.
//!
//! ```text
//! cargo bench --bench journal -- append --dir /work/bench-data
//! cargo bench --bench journal -- size --events 100000,1000000 --dir /work/bench-data
//! cargo bench --bench journal -- backlog --events 1000000 --dir /work/bench-data
//! ```
//!
//! `cargo bench` passes `--bench`; without it (`cargo test --benches`, `--all-targets`) the
//! binary prints a note and exits, so no test run ever carries a timed benchmark.
//!
//! # Records
//! Real [`CanonicalEvent`]s, serialised by [`NewRecord::event`] exactly as the pollers do, for a
//! hall of 250 machines (`UA-0000` … `UA-0249`), each with its own gap-free `machine_seq`. Per
//! machine the stream is a spin — `bet_accepted` (raw: RTE 7E frame) then `game_ended` (raw: RTE
//! 7F frame) — and after every 30 spins a periodic `meter_snapshot` of 12 meters (raw: an LP 0F
//! reply plus LP 1C): per 61 events, 60 financial and one compactable snapshot. Events
//! are built before the timed part of `append` (so the figures are the journal's, not JSON
//! serialisation's); the fills of `size` and `backlog` build them as they go.
//!
//! # Modes
//! - `append`: a fresh journal per configuration. One task appending groups of N records
//!   sequentially (N = `--groups`), then M tasks (`--tasks`), one machine each, each appending
//!   one event per call as M pollers would, so that the writer's group commit gathers them. Per
//!   call the time from `append` to its return (the records are then durable: the call returns
//!   after the writer's fsync) is the "added latency per poll".
//! - `size`: fills one journal (groups of 1,000) and reports sled's `size_on_disk`, allocated
//!   blocks (`du`) and apparent size, per event, at each `--events` mark.
//! - `backlog`: builds a backlog of `--events` with one destination configured, then runs
//!   `open` in a fresh child process three times (the first open after the build, which replays
//!   sled's log; a reopen with the journal's files dropped from the page cache by
//!   `posix_fadvise(DONTNEED)`; a warm reopen), then acknowledges everything,
//!   waits until pruning has removed it (`first_seq == next_seq`), refills the same number and
//!   acknowledges again, `--cycles` times, reporting the space after each step. While the
//!   writer prunes, a probe appends one event every 10 ms and records its latency.
//! - `open` (used by `backlog`, also by hand): `Journal::open` of an existing journal, then a
//!   read of the head and the tail record; prints the times and the process's peak RSS
//!   (`VmHWM`).
// Benchmarks measure real time against real processes (one clock is for the daemon).
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser as _;
use firmware_protocols::crc::append_crc;
use jiff::Timestamp;
use jiff::tz::Offset;
use slotgate::event::{
    Amount, CanonicalEvent, Currency, EventKind, GameRef, MachineRef, MeterReading, MeterUnit,
    RegistryId, SCHEMA_VERSION, SnapshotTrigger, Source, SourceKind, VenueId, event_id,
    idempotency_key,
};
use slotgate::journal::{Journal, JournalConfig, JournalStatus, NewRecord, WriterHandle, log};

/// The one destination configured in `backlog`.
const DESTINATION: &str = "sms";

#[derive(Debug, clap::Parser)]
#[command(about = "Journal throughput, latency, size on disk, open time and memory")]
struct Opts {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Passed by `cargo bench`; without it the benchmark does not run.
    #[arg(long, hide = true, global = true)]
    bench: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Mode {
    /// Durable appends per second and append → durable latency.
    Append {
        /// Records per configuration.
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        /// Group sizes (records per `append` call) for the single-task runs.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
        groups: Vec<usize>,
        /// Task counts for the concurrent runs (each task appends one event per call).
        #[arg(long, value_delimiter = ',', default_value = "250,1000")]
        tasks: Vec<usize>,
        #[command(flatten)]
        common: Common,
    },
    /// Bytes on disk per event.
    Size {
        /// Marks at which the size is reported, ascending.
        #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
        events: Vec<u64>,
        #[command(flatten)]
        common: Common,
    },
    /// Open time and memory with a backlog, then acknowledge, prune and refill.
    Backlog {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Acknowledge-and-refill cycles after the first acknowledgement.
        #[arg(long, default_value_t = 2)]
        cycles: u32,
        /// Skip the acknowledge / refill part.
        #[arg(long)]
        no_prune: bool,
        /// Keep the journal afterwards.
        #[arg(long)]
        keep: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Opens an existing journal in this (fresh) process and reports time and peak RSS.
    Open {
        /// The journal directory.
        journal: PathBuf,
        /// Drop the journal's files from the page cache first.
        #[arg(long)]
        cold: bool,
        #[arg(long, default_value_t = 16)]
        cache_mib: u64,
        /// Then read every record, as a forwarder replaying the whole backlog does.
        #[arg(long)]
        replay: bool,
    },
    /// Appends to an existing journal until killed (the child `backlog` SIGKILLs mid-write).
    #[command(hide = true)]
    Fill {
        journal: PathBuf,
        #[arg(long, default_value_t = 16)]
        cache_mib: u64,
    },
}

#[derive(Debug, clap::Args)]
struct Common {
    /// Where the journals go (a new directory per run inside it); default: the temp directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// sled's cache (`JournalConfig::cache_bytes`), MiB.
    #[arg(long, default_value_t = 16)]
    cache_mib: u64,
    /// The journal's cap, GiB: high enough by default that no capacity alarm or snapshot
    /// compaction changes what is measured.
    #[arg(long, default_value_t = 64)]
    cap_gib: u64,
}

impl Common {
    fn workdir(&self, name: &str) -> anyhow::Result<tempfile::TempDir> {
        let parent = self.dir.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&parent)?;
        Ok(tempfile::Builder::new().prefix(&format!("journal-{name}-")).tempdir_in(parent)?)
    }

    fn config(&self, dir: &Path, destinations: &[&str]) -> JournalConfig {
        let mut config = JournalConfig::in_dir(&dir.join("journal"));
        config.cache_bytes = self.cache_mib << 20;
        config.cap_bytes = self.cap_gib << 30;
        config.destinations = destinations.iter().map(|d| (*d).to_owned()).collect();
        config
    }
}

fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    let Some(mode) = opts.mode.filter(|_| opts.bench) else {
        println!("journal: a benchmark; run it with `cargo bench --bench journal -- <mode> …`");
        return Ok(());
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Mode::Open { journal, cold, cache_mib, replay } = &mode {
        // No runtime until the first append: open and read are synchronous, and the RSS is
        // the journal's alone.
        return open_report(journal, *cold, *cache_mib, *replay);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match mode {
            Mode::Append { records, groups, tasks, common } => {
                append_mode(records, &groups, &tasks, &common).await
            }
            Mode::Size { events, common } => size_mode(&events, &common).await,
            Mode::Backlog { events, cycles, no_prune, keep, common } => {
                backlog_mode(events, cycles, no_prune, keep, &common).await
            }
            Mode::Fill { journal, cache_mib } => fill_until_killed(&journal, cache_mib).await,
            Mode::Open { .. } => Ok(()),
        }
    })
}

// === Events: a hall of machines playing ===

/// Deterministic pseudo-random numbers (xorshift64*), so every run writes the same events.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug)]
struct Egm {
    id: RegistryId,
    address: u8,
    asset: String,
    serial: String,
    next_seq: u64,
    coin_in: u64,
    coin_out: u64,
    jackpot: u64,
    games: u64,
    bills_in: u64,
    /// The bet of the spin in progress, credits (`None`: the next event starts a spin).
    bet: Option<u64>,
    spins_since_snapshot: u32,
}

/// Every machine's stream of events; events advance a shared clock by 20 ms each (250
/// machines at 12 events a minute).
#[derive(Debug)]
struct Hall {
    venue: VenueId,
    machines: Vec<Egm>,
    rng: Rng,
    clock_ms: i64,
    /// Round-robin position for [`Hall::take`].
    turn: usize,
}

/// Accounting denomination 0x01 (0.01 of the currency unit per credit).
const DENOM: u8 = 0x01;
const SPINS_PER_SNAPSHOT: u32 = 30;

impl Hall {
    fn new(machines: usize, first: usize) -> Self {
        let machines = (first..first + machines)
            .map(|i| Egm {
                id: RegistryId::new(format!("UA-{i:04}")).expect("valid id"),
                address: u8::try_from(i % 127 + 1).expect("address"),
                asset: format!("A-{:05}", 10_000 + i),
                serial: format!("NV{:08}", 31_000_000 + i * 7),
                next_seq: 0,
                coin_in: 12_345_600 + i as u64 * 1_000,
                coin_out: 11_000_000 + i as u64 * 900,
                jackpot: 40_000,
                games: 250_000 + i as u64 * 10,
                bills_in: 5_000,
                bet: None,
                spins_since_snapshot: 0,
            })
            .collect();
        Self {
            venue: VenueId::new("hall-kyiv-17").expect("valid id"),
            machines,
            rng: Rng(0x9E37_79B9_7F4A_7C15),
            clock_ms: 1_772_366_400_000,
            turn: 0,
        }
    }

    /// The next event of machine `m` and the raw SAS bytes it came from.
    fn event(&mut self, m: usize) -> (CanonicalEvent, Vec<u8>) {
        self.clock_ms += 20;
        let now = Timestamp::from_millisecond(self.clock_ms).expect("valid time");
        let offset = Offset::constant(2);
        let spin_roll = self.rng.below(1000);
        let win_roll = self.rng.below(100);
        let egm = &mut self.machines[m];
        let seq = egm.next_seq;
        egm.next_seq += 1;
        let uah = &Currency::UAH;
        let (kind, source, raw) = if let Some(bet) = egm.bet.take() {
            // RTE 7F: game ended, win in credits (4 BCD bytes).
            let win = match win_roll {
                0..=54 => 0,
                55..=89 => bet * 2,
                90..=98 => bet * 5,
                _ => bet * 40,
            };
            egm.coin_out += win;
            egm.games += 1;
            egm.spins_since_snapshot += 1;
            let mut raw = vec![egm.address, 0xFF, 0x7F];
            raw.extend(bcd(win, 4));
            raw.extend(bcd(1, 2));
            append_crc(&mut raw);
            let kind =
                EventKind::GameEnded { win: Amount::from_credits(win, Some(DENOM), uah), games: 1 };
            (kind, source(SourceKind::RealTimeEvent, Some(0x7F), "GameEnded"), raw)
        } else if egm.spins_since_snapshot >= SPINS_PER_SNAPSHOT {
            egm.spins_since_snapshot = 0;
            let mut raw = vec![egm.address, 0x0F];
            for v in [egm.coin_in, egm.coin_out, egm.jackpot, 0, egm.coin_in / 3, egm.games] {
                raw.extend(bcd(v, 4));
            }
            append_crc(&mut raw);
            raw.extend([egm.address, 0x1C]);
            for v in [egm.coin_in, egm.coin_out, 0, egm.jackpot, 0, egm.bills_in, egm.games, 0] {
                raw.extend(bcd(v, 4));
            }
            append_crc(&mut raw);
            let kind = EventKind::MeterSnapshot {
                trigger: SnapshotTrigger::Periodic,
                game_number: 0,
                meters: meters(egm),
            };
            (kind, source(SourceKind::LongPoll, Some(0x0F), "SendMeters"), raw)
        } else {
            // RTE 7E: game started, credits wagered (2 BCD), coin in (5 BCD), wager type,
            // progressive group.
            let bet = [1, 5, 10, 20, 25, 50, 100][usize::try_from(spin_roll % 7).unwrap_or(0)];
            egm.coin_in += bet;
            egm.bet = Some(bet);
            let mut raw = vec![egm.address, 0xFF, 0x7E];
            raw.extend(bcd(bet, 2));
            raw.extend(bcd(egm.coin_in, 5));
            raw.extend([0x41, 0x00]);
            append_crc(&mut raw);
            let kind = EventKind::BetAccepted {
                amount: Amount::from_credits(bet, Some(DENOM), uah),
                games: 1,
                max_bet: Some(false),
                wager_type: Some(0x41),
                progressive_group: Some(0),
                coin_in_meter: Some(egm.coin_in),
            };
            (kind, source(SourceKind::RealTimeEvent, Some(0x7E), "GameStarted"), raw)
        };
        let key = idempotency_key(&self.venue, &egm.id, seq);
        let event = CanonicalEvent {
            schema_version: SCHEMA_VERSION,
            event_id: event_id(&key),
            idempotency_key: key,
            venue_id: self.venue.clone(),
            machine: MachineRef {
                registry_id: egm.id.clone(),
                sas_address: egm.address,
                asset_number: Some(egm.asset.clone()),
                serial: Some(egm.serial.clone()),
            },
            machine_seq: seq,
            occurred_at: now,
            occurred_at_local: now.display_with_offset(offset).to_string(),
            egm_time: Some(offset.to_datetime(now)),
            game: Some(GameRef {
                number: Some(3),
                game_id: Some("AT".into()),
                paytable_id: Some("BF0921".into()),
                denomination_code: Some(0x01),
            }),
            source,
            derived: false,
            kind,
        };
        (event, raw)
    }

    /// The next record of machine `m`, as a poller hands it to the journal.
    fn record(&mut self, m: usize) -> NewRecord {
        let (event, raw) = self.event(m);
        NewRecord::event(&event, &raw).expect("events serialise")
    }

    /// `n` records, machines in turn.
    fn take(&mut self, n: usize) -> Vec<NewRecord> {
        (0..n)
            .map(|_| {
                let m = self.turn;
                self.turn = (self.turn + 1) % self.machines.len();
                self.record(m)
            })
            .collect()
    }
}

fn source(kind: SourceKind, code: Option<u8>, name: &str) -> Source {
    Source { kind, code, name: name.to_owned() }
}

fn meters(egm: &Egm) -> BTreeMap<String, MeterReading> {
    let uah = &Currency::UAH;
    let credits = |code: u16, v: u64| MeterReading {
        sas_code: Some(code),
        unit: MeterUnit::Credits,
        raw: v % 100_000_000,
        digits: 8,
        lifetime: Some(v),
        amount: Some(Amount::from_credits(v, Some(DENOM), uah)),
        rolled_over: false,
    };
    let count = |code: Option<u16>, v: u64| MeterReading {
        sas_code: code,
        unit: MeterUnit::Count,
        raw: v % 100_000_000,
        digits: 8,
        lifetime: Some(v),
        amount: None,
        rolled_over: false,
    };
    [
        ("coin_in", credits(0x00, egm.coin_in)),
        ("coin_out", credits(0x01, egm.coin_out)),
        ("jackpot", credits(0x02, egm.jackpot)),
        ("handpaid_cancelled_credits", credits(0x03, 0)),
        ("cancelled_credits", credits(0x04, egm.coin_out / 4)),
        ("games_played", count(Some(0x05), egm.games)),
        ("games_won", count(Some(0x06), egm.games * 45 / 100)),
        ("current_credits", credits(0x0C, 0)),
        ("total_drop", credits(0x24, egm.bills_in * 100)),
        ("bills_accepted", count(Some(0x40), egm.bills_in)),
        ("slot_door_opened", count(None, 12)),
        ("power_reset", count(None, 3)),
    ]
    .into_iter()
    .map(|(name, reading)| (name.to_owned(), reading))
    .collect()
}

/// `value` as `bytes` packed BCD bytes, most significant first.
fn bcd(value: u64, bytes: usize) -> Vec<u8> {
    let mut out = vec![0u8; bytes];
    let mut v = value;
    for byte in out.iter_mut().rev() {
        let lo = (v % 10) as u8;
        v /= 10;
        let hi = (v % 10) as u8;
        v /= 10;
        *byte = (hi << 4) | lo;
    }
    out
}

// === Measuring ===

/// Sorted latencies.
#[derive(Debug)]
struct Latencies(Vec<Duration>);

impl Latencies {
    fn new(mut all: Vec<Duration>) -> Self {
        all.sort_unstable();
        Self(all)
    }

    fn quantile(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
        self.0[rank - 1]
    }

    fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }

    fn summary(&self) -> String {
        format!("{} / {} / {} ms", ms(self.quantile(0.5)), ms(self.quantile(0.99)), ms(self.max()))
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 { format!("{ms:.2}") } else { format!("{ms:.1}") }
}

/// Allocated (`st_blocks` × 512, what `du` shows) and apparent bytes of everything under `dir`.
fn du(dir: &Path) -> (u64, u64) {
    let mut allocated = 0;
    let mut apparent = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                allocated += meta.blocks() * 512;
                apparent += meta.len();
            }
        }
    }
    (allocated, apparent)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// Thousands separators.
fn n(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// CPU time (user + system) of the calling thread: on a shared machine, what a read costs
/// regardless of how long the thread waited for a core.
fn thread_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_THREAD).map_or(Duration::ZERO, |u| {
        let us = |t: nix::sys::time::TimeVal| {
            u64::try_from(i128::from(t.tv_sec()) * 1_000_000 + i128::from(t.tv_usec())).unwrap_or(0)
        };
        Duration::from_micros(us(u.user_time()) + us(u.system_time()))
    })
}

/// Peak and current resident set in bytes (`VmHWM`, `VmRSS`).
fn rss() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().strip_suffix(" kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

async fn close(journal: Journal, writer: WriterHandle) -> anyhow::Result<()> {
    drop(journal);
    tokio::task::spawn_blocking(move || writer.join()).await?.map_err(anyhow::Error::msg)
}

/// The status once it reflects every durable record: the writer publishes it after answering
/// a group, so right after `append` returns it may lag by that group.
async fn status(journal: &Journal) -> anyhow::Result<JournalStatus> {
    let durable = *journal.durable().borrow();
    let mut rx = journal.status();
    loop {
        {
            let st = rx.borrow_and_update();
            if st.next_seq >= durable {
                return Ok(st.clone());
            }
        }
        rx.changed().await?;
    }
}

/// Appends `total` records in groups of `group`, building them as it goes.
async fn fill(journal: &Journal, hall: &mut Hall, total: u64, group: usize) -> anyhow::Result<()> {
    let mut left = total;
    while left > 0 {
        let take = usize::try_from(left.min(group as u64))?;
        journal.append(hall.take(take)).await?;
        left -= take as u64;
    }
    Ok(())
}

// === append ===

#[derive(Debug)]
struct AppendRow {
    label: String,
    records: u64,
    calls: u64,
    wall: Duration,
    latency: Latencies,
    bytes_per_record: f64,
    sled_per_record: f64,
}

async fn append_mode(
    records: usize,
    groups: &[usize],
    tasks: &[usize],
    common: &Common,
) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for &group in groups {
        rows.push(append_run(1, group, records, common).await?);
    }
    for &t in tasks {
        rows.push(append_run(t, 1, records, common).await?);
    }
    println!("\njournal append: {records} records per row, sled cache {} MiB\n", common.cache_mib);
    println!(
        "| tasks × records per call | records | wall | durable records/s | calls/s | append → durable p50 / p99 / max | disk (du) per record | sled size_on_disk per record |"
    );
    println!("|---|---:|---:|---:|---:|---|---:|---:|");
    for r in &rows {
        let secs = r.wall.as_secs_f64();
        println!(
            "| {} | {} | {:.2} s | {} | {} | {} | {:.0} B | {:.0} B |",
            r.label,
            n(r.records),
            secs,
            n((r.records as f64 / secs) as u64),
            n((r.calls as f64 / secs) as u64),
            r.latency.summary(),
            r.bytes_per_record,
            r.sled_per_record,
        );
    }
    Ok(())
}

async fn append_run(
    tasks: usize,
    group: usize,
    records: usize,
    common: &Common,
) -> anyhow::Result<AppendRow> {
    let machines = 250.max(tasks);
    let mut hall = Hall::new(machines, 0);
    // Calls per task, built before the clock starts. One task: groups of `group`, machines in
    // turn; M tasks: task i appends the events of machine i (and i + M, … when M < 250).
    let per_task = records / tasks;
    let mut plans: Vec<Vec<Vec<NewRecord>>> = vec![Vec::new(); tasks];
    if tasks == 1 {
        let mut left = records;
        while left > 0 {
            let take = left.min(group);
            plans[0].push(hall.take(take));
            left -= take;
        }
    } else {
        for (t, plan) in plans.iter_mut().enumerate() {
            let mine: Vec<usize> = (t..machines).step_by(tasks).collect();
            for call in 0..per_task.div_ceil(group) {
                let batch = (0..group).map(|i| hall.record(mine[(call * group + i) % mine.len()]));
                plan.push(batch.collect());
            }
        }
    }
    let total: usize = plans.iter().flatten().map(Vec::len).sum();
    let calls: usize = plans.iter().map(Vec::len).sum();
    let work = common.workdir("append")?;
    let (journal, writer) = Journal::open(common.config(work.path(), &[]))?;
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for plan in plans {
        let journal = journal.clone();
        set.spawn(async move {
            let mut latencies = Vec::with_capacity(plan.len());
            for call in plan {
                let t = Instant::now();
                journal.append(call).await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    let mut all = Vec::with_capacity(calls);
    while let Some(done) = set.join_next().await {
        all.extend(done??);
    }
    let wall = started.elapsed();
    let st = status(&journal).await?;
    if st.next_seq != total as u64 {
        bail!("expected {total} records, the journal holds {}", st.next_seq);
    }
    close(journal, writer).await?;
    let (allocated, _) = du(&work.path().join("journal"));
    let label = if tasks == 1 {
        format!("1 × {group}")
    } else {
        format!("{tasks} × {group} (concurrent)")
    };
    Ok(AppendRow {
        label,
        records: total as u64,
        calls: calls as u64,
        wall,
        latency: Latencies::new(all),
        bytes_per_record: allocated as f64 / total as f64,
        sled_per_record: st.size_on_disk as f64 / total as f64,
    })
}

// === size ===

async fn size_mode(marks: &[u64], common: &Common) -> anyhow::Result<()> {
    let work = common.workdir("size")?;
    let dir = work.path().join("journal");
    let (journal, writer) = Journal::open(common.config(work.path(), &[]))?;
    let mut hall = Hall::new(250, 0);
    let mut done = 0;
    let mut rows = Vec::new();
    let started = Instant::now();
    for &mark in marks {
        fill(&journal, &mut hall, mark.saturating_sub(done), 1000).await?;
        done = mark.max(done);
        let st = status(&journal).await?;
        let (allocated, apparent) = du(&dir);
        eprintln!("{mark}: {st:?} du {allocated} apparent {apparent}");
        rows.push((mark, st, allocated, apparent, started.elapsed()));
    }
    close(journal, writer).await?;
    let layouts = log_layouts(&dir.join("log"))?;
    let rows_last = rows.last().map(|(m, _, a, p, t)| (*m, (), *a, *p, *t));
    println!("\njournal size: groups of 1,000, one task, sled cache {} MiB\n", common.cache_mib);
    println!(
        "| events | record bytes (live, encoded) | per event | sled size_on_disk | per event | du (allocated) | per event | apparent | fill time |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (mark, st, allocated, apparent, at) in rows {
        let per = |b: u64| b as f64 / mark as f64;
        println!(
            "| {} | {} | {:.0} B | {} | {:.0} B | {} | {:.0} B | {} | {:.1} s |",
            n(mark),
            mib(st.live_bytes),
            per(st.live_bytes),
            mib(st.size_on_disk),
            per(st.size_on_disk),
            mib(allocated),
            per(allocated),
            mib(apparent),
            at.as_secs_f64()
        );
    }
    let per = |bytes: u64, records: u64| bytes as f64 / records.max(1) as f64;
    println!(
        "\nlog layouts of the same {} records (closed, so every full segment is sealed):\n\n\
         | layout | records | bytes | per event |\n|---|---:|---:|---:|\n\
         | old: plain `SGJLOG01` frames with both hashes (byte-exact, from the records' frames) | {} | {} | {:.0} B |\n\
         | new: sealed segments (`SGJLOG02`, zstd blocks + index) | {} | {} | {:.0} B |\n\
         | new: active segment (plain, not yet sealed) | {} | {} | {:.0} B |\n\
         | ratio sealed / old | | | {:.3} |\n\n\
         decode in memory (CPU of the decoding thread), sealed segments' records: sealed blocks \
         {:.3} µs/record, the same records as plain frames {:.3} µs/record (ratio {:.2})",
        n(layouts.records),
        n(layouts.records),
        mib(layouts.old_bytes),
        per(layouts.old_bytes, layouts.records),
        n(layouts.sealed_records),
        mib(layouts.sealed_bytes),
        per(layouts.sealed_bytes, layouts.sealed_records),
        n(layouts.records - layouts.sealed_records),
        mib(layouts.active_bytes),
        per(layouts.active_bytes, layouts.records - layouts.sealed_records),
        per(layouts.sealed_bytes, layouts.sealed_records) / per(layouts.old_bytes, layouts.records),
        layouts.sealed_decode.as_secs_f64() * 1e6 / layouts.sealed_records.max(1) as f64,
        layouts.plain_decode.as_secs_f64() * 1e6 / layouts.sealed_records.max(1) as f64,
        layouts.sealed_decode.as_secs_f64() / layouts.plain_decode.as_secs_f64().max(1e-9),
    );
    if let Some((mark, _, allocated, _, _)) = rows_last {
        // R10: a full hall (250 machines × 10 games/min) makes ≈ 650 M events in 90 days.
        let per_event = allocated as f64 / mark as f64;
        let sealed = per(layouts.sealed_bytes, layouts.sealed_records);
        println!(
            "\n90-day projection, full 250-machine hall ({} events), sealed segments alone: \
             {sealed:.0} B/event × events = {:.0} GiB",
            n(HALL_90_DAYS),
            sealed * HALL_90_DAYS as f64 / f64::from(1u32 << 30)
        );
        let total = per_event * HALL_90_DAYS as f64;
        println!(
            "\n90-day projection, full 250-machine hall ({} events): {:.0} B/event × events = \
             {:.0} GiB on disk; a cap of {:.0} GiB keeps it below the 80 % threshold",
            n(HALL_90_DAYS),
            per_event,
            total / f64::from(1u32 << 30),
            total / 0.8 / f64::from(1u32 << 30)
        );
    }
    Ok(())
}

/// Bytes of the log's segment files by layout, and what the same records took in the plain
/// layout (frames with both hashes, as written before sealed segments were compressed).
#[derive(Debug, Default)]
struct Layouts {
    records: u64,
    old_bytes: u64,
    sealed_records: u64,
    sealed_bytes: u64,
    active_bytes: u64,
    /// Decoding the sealed segments in memory (decompress, decode, both hashes recomputed),
    /// and the same records as plain frames (CRC, decode): the read paths without I/O.
    sealed_decode: Duration,
    plain_decode: Duration,
}

fn log_layouts(dir: &Path) -> anyhow::Result<Layouts> {
    let mut out = Layouts::default();
    for (first, path) in log::list_segments(dir)? {
        let bytes = std::fs::read(&path)?;
        let mut records = 0u64;
        let mut frames = Vec::new();
        let started = thread_cpu();
        let format = log::scan_segment(&bytes, first, |item| {
            if let log::Item::Record { record, .. } = item {
                records += 1;
                frames.push(record);
            }
            true
        });
        let decode = thread_cpu().saturating_sub(started);
        let plain: Vec<u8> = frames.iter().flat_map(|r| log::frame(r)).collect();
        out.records += records;
        out.old_bytes += log::SEGMENT_HEADER + plain.len() as u64;
        match format {
            Some(log::Format::Sealed) => {
                out.sealed_records += records;
                out.sealed_bytes += bytes.len() as u64;
                out.sealed_decode += decode;
                let started = thread_cpu();
                let mut decoded = 0u64;
                log::scan(&plain, 0, |_| {
                    decoded += 1;
                    true
                });
                out.plain_decode += thread_cpu().saturating_sub(started);
                anyhow::ensure!(decoded == records, "plain frames decode to the same records");
            }
            _ => out.active_bytes += bytes.len() as u64,
        }
    }
    Ok(out)
}

/// Events a full hall makes in 90 days (issue 14: 250 machines × 10 games/min, plus snapshots
/// and status).
const HALL_90_DAYS: u64 = 650_000_000;

// === backlog ===

async fn backlog_mode(
    events: u64,
    cycles: u32,
    no_prune: bool,
    keep: bool,
    common: &Common,
) -> anyhow::Result<()> {
    let work = common.workdir("backlog")?;
    let dir = work.path().join("journal");
    let mut out = String::new();
    let mut hall = Hall::new(250, 0);
    let config = common.config(work.path(), &[DESTINATION]);

    let (journal, writer) = Journal::open(config.clone())?;
    let started = Instant::now();
    fill(&journal, &mut hall, events, 1000).await?;
    let build = started.elapsed();
    let st = status(&journal).await?;
    close(journal, writer).await?;
    let (allocated, apparent) = du(&dir);
    let (peak, current) = rss();
    writeln!(
        out,
        "built {} events in {:.1} s ({}/s, groups of 1,000): live {} | size_on_disk {} | du {} | apparent {} | \
         peak RSS of the building process {} (current {}; includes the event generator)",
        n(events),
        build.as_secs_f64(),
        n((events as f64 / build.as_secs_f64()) as u64),
        mib(st.live_bytes),
        mib(st.size_on_disk),
        mib(allocated),
        mib(apparent),
        mib(peak),
        mib(current),
    )?;
    print!("{out}");
    out.clear();

    // sled 0.34 writes its snapshot (page table) only when it opens, so the first open after
    // the build replays the whole log written since the previous open; later opens load the
    // snapshot.
    let open_child = |label: &str, cold: bool, replay: bool| -> anyhow::Result<()> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("open").arg(&dir).arg("--cache-mib").arg(common.cache_mib.to_string());
        if cold {
            cmd.arg("--cold");
        }
        if replay {
            cmd.arg("--replay");
        }
        print!("{label}: ");
        let output = cmd.arg("--bench").output().context("running the open child")?;
        if !output.status.success() {
            bail!("open child failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        print!("{}", String::from_utf8_lossy(&output.stdout));
        Ok(())
    };
    open_child("first open after the build", false, false)?;
    open_child("reopen, cold", true, false)?;
    open_child("reopen, warm, then a full replay read", false, true)?;
    // A writer killed mid-write: a child appends as fast as it can and is SIGKILLed after 3 s.
    let mut child = Command::new(std::env::current_exe()?)
        .arg("fill")
        .arg(&dir)
        .arg("--cache-mib")
        .arg(common.cache_mib.to_string())
        .arg("--bench")
        .spawn()
        .context("running the fill child")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    child.kill()?;
    let killed = child.wait()?;
    println!("fill child SIGKILLed mid-write after 3 s ({killed})");
    open_child("first open after SIGKILL mid-write", false, false)?;
    if no_prune {
        return keep_or_remove(work, keep);
    }

    let (journal, writer) = Journal::open(config)?;
    let mut table = Vec::new();
    let (allocated, _) = du(&dir);
    table.push(("backlog built".to_owned(), status(&journal).await?, allocated, None, None));
    for cycle in 0..=cycles {
        if cycle > 0 {
            let started = Instant::now();
            fill(&journal, &mut hall, events, 1000).await?;
            let took = started.elapsed();
            let (allocated, _) = du(&dir);
            table.push((
                format!("refill {cycle}"),
                status(&journal).await?,
                allocated,
                Some(took),
                None,
            ));
        }
        let (prune_took, probe) = acknowledge_all(&journal, &mut hall, &dir).await?;
        let (allocated, _) = du(&dir);
        let label = if cycle == 0 { "acknowledged".to_owned() } else { format!("ack {cycle}") };
        table.push((label, status(&journal).await?, allocated, Some(prune_took), Some(probe)));
    }
    close(journal, writer).await?;
    println!(
        "\n| step | first_seq … next_seq | live records | sled size_on_disk | du | took | probe append → durable p50 / p99 / max (calls) |"
    );
    println!("|---|---|---:|---:|---:|---:|---|");
    for (label, st, allocated, took, probe) in table {
        println!(
            "| {label} | {} … {} | {} | {} | {} | {} | {} |",
            n(st.first_seq),
            n(st.next_seq),
            n(st.records),
            mib(st.size_on_disk),
            mib(allocated),
            took.map(|t| format!("{:.1} s", t.as_secs_f64())).unwrap_or_default(),
            probe
                .map(|p: Latencies| format!("{} ({})", p.summary(), p.0.len()))
                .unwrap_or_default(),
        );
    }
    keep_or_remove(work, keep)
}

fn keep_or_remove(work: tempfile::TempDir, keep: bool) -> anyhow::Result<()> {
    if keep {
        println!("kept: {}", work.keep().display());
    }
    Ok(())
}

/// Acknowledges everything durable and waits until pruning has removed it, while a probe
/// appends one event every 10 ms (a poller during the prune). Returns the time to pruned and
/// the probe's latencies.
async fn acknowledge_all(
    journal: &Journal,
    hall: &mut Hall,
    dir: &Path,
) -> anyhow::Result<(Duration, Latencies)> {
    let through = status(journal).await?.next_seq - 1;
    let probe_machine = hall.machines.len() - 1;
    let started = Instant::now();
    journal.acknowledge(DESTINATION, through).await?;
    let mut latencies = Vec::new();
    let mut status_rx = journal.status();
    let deadline = started + Duration::from_secs(3600);
    loop {
        if pruned(dir, &status_rx.borrow_and_update(), through + 1) {
            break;
        }
        if Instant::now() > deadline {
            bail!("pruning did not finish within an hour");
        }
        let record = hall.record(probe_machine);
        let t = Instant::now();
        journal.append(vec![record]).await?;
        latencies.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    // The probe's records were appended after the acknowledgement; acknowledge them too so the
    // next step starts from an empty journal.
    let next = status(journal).await?.next_seq;
    journal.acknowledge(DESTINATION, next - 1).await?;
    let mut status_rx = journal.status();
    while !pruned(dir, &status_rx.borrow_and_update(), next) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((took, Latencies::new(latencies)))
}

/// Everything below `next` that can be removed is: the segmented log keeps its active segment
/// (and the one before it while the writer removes), so "removed" means at most two segment
/// files are left. (Bytes cannot tell: sealed segments are compressed.)
fn pruned(dir: &Path, st: &JournalStatus, next: u64) -> bool {
    st.first_seq >= next || log::list_segments(&dir.join("log")).is_ok_and(|s| s.len() <= 2)
}

/// Appends events of 250 machines of its own (`UA-1000` …, so none is a duplicate) in groups
/// of 1,000 until the process is killed.
async fn fill_until_killed(dir: &Path, cache_mib: u64) -> anyhow::Result<()> {
    let mut config = JournalConfig::in_dir(dir);
    config.cache_bytes = cache_mib << 20;
    config.cap_bytes = 64 << 30;
    config.destinations = vec![DESTINATION.to_owned()];
    let (journal, _writer) = Journal::open(config)?;
    let mut hall = Hall::new(250, 1000);
    loop {
        journal.append(hall.take(1000)).await?;
    }
}

// === open (a fresh process) ===

fn open_report(dir: &Path, cold: bool, cache_mib: u64, replay: bool) -> anyhow::Result<()> {
    if !dir.join("log").exists() && !dir.join("state").exists() {
        bail!("{} is not a journal", dir.display());
    }
    if cold {
        drop_page_cache(dir)?;
    }
    let (before, _) = rss();
    let mut config = JournalConfig::in_dir(dir);
    config.cache_bytes = cache_mib << 20;
    config.cap_bytes = 64 << 30;
    config.destinations = vec![DESTINATION.to_owned()];
    // One event of a machine of its own, built before the clock starts.
    let probe = Hall::new(1, 2000 + std::process::id() as usize % 7000).take(1);
    let started = Instant::now();
    let (journal, writer) = Journal::open(config)?;
    let open = started.elapsed();
    // Ready: the first append accepted and durable.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(journal.append(probe))?;
    let ready = started.elapsed();
    let (after_open, _) = rss();
    let st = journal.status().borrow().clone();
    let started = Instant::now();
    let head = journal.read(st.first_seq, 1)?;
    let tail = journal.read(st.next_seq.saturating_sub(1), 1)?;
    let read = started.elapsed();
    if head.len() != 1 || tail.len() != 1 {
        bail!("head or tail record missing");
    }
    let (after_read, _) = rss();
    let mut replayed = String::new();
    if replay {
        // As a forwarder replays: chunks of 1,000 from the first kept record, once checked
        // (`read`: a sealed segment's hashes recomputed, as `journal verify` and export read)
        // and once as the forwarders read (`read_entries`: no hashes), alternating twice so
        // both see the same load and page cache.
        for pass in ["checked read", "forwarder read", "checked read", "forwarder read"] {
            let started = Instant::now();
            let cpu = thread_cpu();
            let mut from = st.first_seq;
            let mut count = 0u64;
            loop {
                let next = if pass == "checked read" {
                    let chunk = journal.read(from, 1000)?;
                    count += chunk.len() as u64;
                    chunk.last().map(|r| r.header.seq + 1)
                } else {
                    let chunk = journal.read_entries(from, 1000)?;
                    count += chunk.len() as u64;
                    chunk.last().map(|e| e.seq + 1)
                };
                let Some(next) = next else { break };
                from = next;
            }
            let took = started.elapsed();
            let cpu = thread_cpu().saturating_sub(cpu);
            let (peak, _) = rss();
            replayed.push_str(&format!(
                ", full replay ({pass}) {} records in {:.2} s = {:.3} µs/record wall, {:.3} \
                 µs/record CPU of the reading thread, peak RSS after it {}",
                n(count),
                took.as_secs_f64(),
                took.as_secs_f64() * 1e6 / count.max(1) as f64,
                cpu.as_secs_f64() * 1e6 / count.max(1) as f64,
                mib(peak)
            ));
        }
    }
    let (_, now) = rss();
    drop(journal);
    writer.join().map_err(anyhow::Error::msg)?;
    println!(
        "open ({}): {} records ({} … {}), Journal::open {} ms, ready (first append durable) {} ms, \
         head+tail read {} ms, peak RSS before open {}, after open {}, after reads {} (current {}){replayed}",
        if cold { "cold page cache" } else { "warm page cache" },
        n(st.records),
        n(st.first_seq),
        n(st.next_seq),
        ms(open),
        ms(ready),
        ms(read),
        mib(before),
        mib(after_open),
        mib(after_read),
        mib(now),
    );
    Ok(())
}

/// Drops the files under `dir` from the page cache (`posix_fadvise(DONTNEED)`), so open reads
/// from the disk as after a reboot, without touching the rest of the host's cache.
fn drop_page_cache(dir: &Path) -> anyhow::Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path)?.flatten() {
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
                continue;
            }
            let file = std::fs::File::open(entry.path())?;
            file.sync_all()?;
            nix::fcntl::posix_fadvise(
                &file,
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            )?;
        }
    }
    Ok(())
}
