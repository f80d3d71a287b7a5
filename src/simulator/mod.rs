//! `slotgate simulate`: SAS slot machines (EGMs) good enough that a test passing against them
//! means something on a real floor. Each simulated machine plays games, keeps consistent
//! meters, queues exceptions and answers a SAS host over TCP or a pseudo-terminal, following
//! the semantics of sas-protocol.md §10 (MON's behaviour), with switchable fault injection and
//! a ground-truth ledger of everything that happened.
//!
//! # Layout
//! - [`config`]: one machine's settings, validated;
//! - [`machine`]: the sans-IO machine model (time passed in, seeded randomness);
//! - [`link`]: synchronisation and implied ACK/NACK (§4.2, §4.3);
//! - [`queue`]: the exception FIFO with priority exceptions and overflow (§4.1, §5);
//! - [`meters`]: the meters and the operations that move them together (§7);
//! - [`clock`]: wall clock for the ledger, EGM clock for LP7E/7F;
//! - [`ledger`]: the ground-truth JSON-lines ledger; **its module doc is the schema**;
//! - `driver`, `tcp`, `pty`: the async shell, one task per machine.
//!
//! # Transports
//! - **TCP** (`--tcp ADDR:PORT`): one listening port per machine, 9-bit framing: every
//!   character travels as a flag byte (bit 0 = wakeup bit) followed by the data byte
//!   (sas-protocol.md §1.5). Port 0 gives every machine a free port; a fixed port P gives
//!   machine i port P + i.
//! - **Pseudo-terminal** (`--pty`): one pty per machine; the slave path is printed. **A pty
//!   cannot carry the 9th bit** (§1.4): message starts are found from the long-poll length
//!   table plus the 5 ms inter-byte gap, and chirps are sent as the plain address byte.
//! - **Multi-drop** (`--multidrop`): every machine on one line, TCP or pty, at its own address
//!   (`--address` and the next ones); one task drives them all, each hears every message.
//!
//! **Power control:** SIGUSR1 power-cycles every machine at once (as `--power-cycle-rate` does
//! at random): 18, the power off for `--power-off-duration`, then 17 and the link to regain.
//! A test uses it to switch the floor off and on at a moment of its choosing.
//!
//! On start, one line per machine goes to stdout, for example
//! `machine=0 address=1 serial=SIM000000 tcp=127.0.0.1:40517` or
//! `machine=0 address=1 serial=SIM000000 pty=/dev/pts/4`. Logs go to stderr.
//!
//! # Choices where the spec is open
//! - A busy reply (`addr 00`) leaves nothing pending, so the host's retry is executed; MON would
//!   treat an identical retry as an implied NACK and re-send "busy".
//! - "The same poll" for implied NACK is the same address and command byte (MON), not the same
//!   bytes: an LP7F repeated with a different time is a NACK and re-sends the previous ACK.
//! - A synchronised link stays synchronised across sync polls (MON re-enters "waiting for the
//!   first poll" on each one, which would drop a broadcast sent right after `80`).
//! - In RTE mode an idle general poll is answered `addr FF 00 crc` (MON) unless
//!   `--rte-idle silent`.
//! - LP01 shutdown does not survive a power cycle unless `--persist-shutdown`: slotgate must
//!   re-assert it (sas-protocol.md §8). RTE returns to its `--rte` setting at power-up.
//! - A game interrupted by a power loss completes after power-up (game recovery); its end is
//!   delayed by the outage. A RAM clear waits until no game or handpay is in progress.
//! - Priority exceptions are not subject to overflow; only one 70 waits at a time.
//! - Exceptions 7E/7F are queued in both modes; without RTE they are bare codes.

pub mod clock;
pub mod config;
mod driver;
pub mod games;
pub mod ledger;
pub mod link;
pub mod machine;
pub mod meters;
mod pty;
pub mod queue;
mod tcp;

use std::fmt;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use config::{
    ConfigError, FaultConfig, MachineConfig, OperationsConfig, PlayConfig, Quirk,
    RomSignatureDelivery, RteIdle, Validation, Weighted, parse_bills, parse_code,
};
use driver::Port;
use ledger::LedgerSink;
use machine::Machine;

/// Options of `slotgate simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Number of machines to simulate.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub machines: u16,

    /// Listen on TCP with 9-bit framing (flag byte + data byte per character), one port per
    /// machine. Port 0 picks a free port for each machine; port P gives machine i port P+i.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:0", conflicts_with = "pty")]
    pub tcp: SocketAddr,

    /// Use one pseudo-terminal per machine instead of TCP (no 9th bit: messages are split by
    /// the length table and the 5 ms gap; chirps are the plain address byte).
    #[arg(long)]
    pub pty: bool,

    /// Multi-drop: every machine on one line (one TCP port or one pty), each at its own
    /// address; the endpoint lines then all name the same endpoint.
    #[arg(long)]
    pub multidrop: bool,

    /// SAS address of the first machine; machine i gets the next ones, wrapping after 127.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=127))]
    pub address: u8,

    /// Serial number prefix; machine i reports PREFIX followed by i in six digits (LP54).
    #[arg(long, default_value = "SIM")]
    pub serial_prefix: String,

    /// Seed of all randomness: the same seed plays the same games.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Mean games started per minute per machine (0: nobody plays).
    #[arg(long, value_name = "PER_MINUTE", default_value_t = 10.0, help_heading = "Play")]
    pub game_rate: f64,

    /// Time from game start (7E) to game end (7F).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration, help_heading = "Play")]
    pub game_duration: Duration,

    /// Stop playing after this many games per machine.
    #[arg(long, help_heading = "Play")]
    pub max_games: Option<u64>,

    /// Bet distribution in credits, as value:weight pairs.
    #[arg(
        long,
        value_name = "CREDITS:WEIGHT,…",
        default_value = "1:40,2:25,5:20,10:10,25:5",
        help_heading = "Play"
    )]
    pub bet: Weighted,

    /// Win distribution as whole multiples of the bet, as multiplier:weight pairs. The default
    /// returns 96 % (LP1F reports the base percentage computed from this table).
    #[arg(
        long,
        value_name = "MULTIPLIER:WEIGHT,…",
        default_value = "0:7400,1:1600,2:500,5:300,10:150,50:40,200:10",
        help_heading = "Play"
    )]
    pub win: Weighted,

    /// Accounting denomination as a SAS denomination code, decimal or 0x..: 1 = 0.01,
    /// 2 = 0.05, 3 = 0.10, 4 = 0.25, 5 = 0.50, 6 = 1.00, 0x17 = 0.02 (sas-protocol.md §7.1).
    #[arg(long, value_name = "CODE", default_value = "1", value_parser = parse_code, help_heading = "Play")]
    pub denomination: u8,

    /// A multi-game machine: the player denomination of each game as SAS codes, game 1 first
    /// (each a whole multiple of --denomination); the player switches games now and then, and
    /// LP51, LP53 and LP2F/6F for game N answer per game. Empty: one game at --denomination.
    #[arg(long, value_name = "CODE,…", default_value = "", help_heading = "Play")]
    pub games: games::GameList,

    /// Bill values the acceptor takes, in whole currency units; credits come only from bills.
    #[arg(long, value_name = "VALUE,…", default_value = "1,5,10,20,50,100", help_heading = "Play")]
    pub bills: BillList,

    /// Country code reported with bills (LP48, RTE 4F), 0–99.
    #[arg(long, default_value_t = 0, help_heading = "Play")]
    pub bill_country: u8,

    /// Chance after each game that the player cashes out all credits (exception 66).
    #[arg(long, value_name = "P", default_value_t = 0.05, help_heading = "Play")]
    pub cashout_probability: f64,

    /// Wins and cash-outs of at least this many credits are paid by hand (51, LP1B, 52).
    #[arg(long, value_name = "CREDITS", default_value_t = 120_000, help_heading = "Play")]
    pub handpay_limit: u64,

    /// Time until the attendant pays and resets a handpay.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, help_heading = "Play")]
    pub handpay_duration: Duration,

    /// Slot door openings per hour per machine (11, then 12).
    #[arg(long, value_name = "PER_HOUR", default_value_t = 0.0, help_heading = "Play")]
    pub door_rate: f64,

    /// How long the slot door stays open; no game starts meanwhile.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, help_heading = "Play")]
    pub door_open_duration: Duration,

    /// Ticket validation (TITO): with it, cash-outs below the handpay limit print tickets (3D),
    /// handpays print receipts (3E), LP70 and LP4D answer, and the player inserts tickets.
    #[arg(long, value_enum, default_value_t = Validation::None, help_heading = "Play")]
    pub validation: Validation,

    /// With --validation: chance that the player funds play with a ticket (67, 68) rather than
    /// a bill.
    #[arg(long, value_name = "P", default_value_t = 0.0, help_heading = "Play")]
    pub ticket_in_probability: f64,

    /// Chance that the player funds play by an AFT transfer (exception 69, LP72) rather than a
    /// bill, and cashes out to the cashless system rather than a ticket or the hopper; above 0
    /// the machine supports AFT.
    #[arg(long, value_name = "P", default_value_t = 0.0, help_heading = "Play")]
    pub aft_probability: f64,

    /// Chance at each game end of a SAS progressive hit paid to the credit meter (56, LP85).
    #[arg(long, value_name = "P", default_value_t = 0.0, help_heading = "Play")]
    pub progressive_probability: f64,

    /// Chance at each game end of a legacy bonus award paid to the credit meter (7C, LP90).
    #[arg(long, value_name = "P", default_value_t = 0.0, help_heading = "Play")]
    pub bonus_probability: f64,

    /// Vendor quirks every machine shows (comma-separated): no-sync, slow-bytes, repeat-report
    /// (sas-protocol.md §11; the firmware profiles say how the gateway copes).
    #[arg(long, value_enum, value_delimiter = ',', help_heading = "Protocol")]
    pub quirk: Vec<Quirk>,

    /// Start with real-time event reporting on (otherwise the host turns it on with LP0E).
    #[arg(long, help_heading = "Protocol")]
    pub rte: bool,

    /// Answer to an idle general poll in RTE mode.
    #[arg(long, value_enum, default_value_t = RteIdle::NoActivity, help_heading = "Protocol")]
    pub rte_idle: RteIdle,

    /// Capacity of the exception FIFO (SAS requires at least 20; smaller values make overflow
    /// easy to provoke).
    #[arg(long, default_value_t = 20, help_heading = "Protocol")]
    pub queue_size: usize,

    /// How the LP21 ROM signature reaches the host.
    #[arg(long, value_enum, default_value_t = RomSignatureDelivery::Deferred, help_heading = "Protocol")]
    pub rom_signature: RomSignatureDelivery,

    /// Time a deferred ROM signature takes to compute.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration, help_heading = "Protocol")]
    pub rom_signature_delay: Duration,

    /// Keep an LP01 shutdown in force across power cycles.
    #[arg(long, help_heading = "Protocol")]
    pub persist_shutdown: bool,

    /// EGM clock minus true time at start, in seconds (negative: behind).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 0,
        allow_negative_numbers = true,
        help_heading = "Protocol"
    )]
    pub clock_offset: i64,

    /// Starting value of the credit meters (coin in/out, drop, bills, cancelled credits), e.g.
    /// 99999000 to watch the 4-byte meters roll over at 10^8.
    #[arg(long, value_name = "CREDITS", default_value_t = 0, help_heading = "Protocol")]
    pub initial_meters: u64,

    /// Write the ground-truth ledger (JSON lines, schema in the simulator's module doc) here.
    #[arg(long, value_name = "PATH")]
    pub ledger: Option<PathBuf>,

    /// Probability that a reply with a CRC is sent with a corrupted CRC.
    #[arg(long, value_name = "P", default_value_t = 0.0, help_heading = "Fault injection")]
    pub fault_crc: f64,

    /// Probability that a reply is not sent (the poll is still executed).
    #[arg(long, value_name = "P", default_value_t = 0.0, help_heading = "Fault injection")]
    pub fault_drop: f64,

    /// Probability that a reply starts late (after --late-delay).
    #[arg(long, value_name = "P", default_value_t = 0.0, help_heading = "Fault injection")]
    pub fault_late: f64,

    /// How late a late reply starts (the reply window is 20 ms).
    #[arg(long, default_value = "40ms", value_parser = humantime::parse_duration, help_heading = "Fault injection")]
    pub late_delay: Duration,

    /// Probability that a reply of two bytes or more is split by a pause of --gap-delay.
    #[arg(long, value_name = "P", default_value_t = 0.0, help_heading = "Fault injection")]
    pub fault_gap: f64,

    /// The pause inside a split reply (the inter-byte limit is 5 ms).
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration, help_heading = "Fault injection")]
    pub gap_delay: Duration,

    /// Probability that a long poll is answered busy (addr 00) and not executed.
    #[arg(long, value_name = "P", default_value_t = 0.0, help_heading = "Fault injection")]
    pub fault_busy: f64,

    /// Power cycles per hour per machine: 18, silence, 17, sync lost, queue kept.
    #[arg(long, value_name = "PER_HOUR", default_value_t = 0.0, help_heading = "Fault injection")]
    pub power_cycle_rate: f64,

    /// How long the power stays off in a power cycle.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration, help_heading = "Fault injection")]
    pub power_off_duration: Duration,

    /// RAM clears per hour per machine: meters zeroed, queue lost, 3A.
    #[arg(long, value_name = "PER_HOUR", default_value_t = 0.0, help_heading = "Fault injection")]
    pub ram_clear_rate: f64,

    /// Exception bursts per hour per machine that overflow the queue (70 raised, oldest lost).
    #[arg(long, value_name = "PER_HOUR", default_value_t = 0.0, help_heading = "Fault injection")]
    pub overflow_rate: f64,
}

/// A comma-separated list of bill values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillList(pub Vec<u64>);

impl FromStr for BillList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_bills(s).map(Self)
    }
}

impl SimulateArgs {
    /// The arguments of `slotgate simulate` with no options given (for tests and embedding).
    pub fn defaults() -> Self {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: SimulateArgs,
        }
        // Every option has a default, so parsing an empty command line cannot fail; the
        // fallback keeps this panic-free regardless.
        match Wrapper::try_parse_from(["simulate"]) {
            Ok(w) => w.args,
            Err(error) => unreachable!("simulate options without defaults: {error}"),
        }
    }

    /// One validated configuration per machine.
    pub fn machine_configs(&self) -> Result<Vec<MachineConfig>, ConfigError> {
        (0..self.machines)
            .map(|index| {
                let address = ((u16::from(self.address) - 1 + index) % 127 + 1) as u8;
                let mut cfg =
                    MachineConfig::new(index, address, format!("{}{index:06}", self.serial_prefix));
                cfg.seed = self.seed;
                cfg.denomination = self.denomination;
                cfg.games = self.games.0.clone();
                cfg.play = PlayConfig {
                    games_per_minute: self.game_rate,
                    game_duration: self.game_duration,
                    bets: self.bet.clone(),
                    win_multipliers: self.win.clone(),
                    cashout_probability: self.cashout_probability,
                    handpay_limit: self.handpay_limit,
                    handpay_duration: self.handpay_duration,
                    max_games: self.max_games,
                    ticket_in_probability: self.ticket_in_probability,
                    aft_probability: self.aft_probability,
                    progressive_probability: self.progressive_probability,
                    bonus_probability: self.bonus_probability,
                };
                cfg.validation = self.validation;
                cfg.quirks = self.quirk.clone();
                cfg.bills = self.bills.0.clone();
                cfg.bill_country = self.bill_country;
                cfg.rte_at_power_up = self.rte;
                cfg.rte_idle = self.rte_idle;
                cfg.queue_size = self.queue_size;
                cfg.rom_signature = self.rom_signature;
                cfg.rom_signature_delay = self.rom_signature_delay;
                cfg.persist_shutdown = self.persist_shutdown;
                cfg.clock_offset_secs = self.clock_offset;
                cfg.initial_meters = self.initial_meters;
                cfg.operations = OperationsConfig {
                    door_openings_per_hour: self.door_rate,
                    door_open_duration: self.door_open_duration,
                };
                cfg.faults = FaultConfig {
                    corrupt_crc: self.fault_crc,
                    drop_reply: self.fault_drop,
                    late_reply: self.fault_late,
                    late_delay: self.late_delay,
                    inter_byte_gap: self.fault_gap,
                    gap_delay: self.gap_delay,
                    busy: self.fault_busy,
                    power_cycles_per_hour: self.power_cycle_rate,
                    power_off_duration: self.power_off_duration,
                    ram_clears_per_hour: self.ram_clear_rate,
                    overflows_per_hour: self.overflow_rate,
                };
                cfg.validate()?;
                Ok(cfg)
            })
            .collect()
    }
}

/// Why the simulator could not start or stopped on its own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimulatorError {
    /// An option describes no possible machine.
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// A machine's TCP port could not be bound.
    #[error("machine {machine}: cannot listen on {addr}")]
    Bind { machine: u16, addr: SocketAddr, source: std::io::Error },
    /// A pseudo-terminal could not be opened.
    #[error("machine {machine}: cannot open a pseudo-terminal")]
    Pty { machine: u16, source: std::io::Error },
    /// The ledger file could not be created or written.
    #[error("cannot write the ledger {}", path.display())]
    Ledger { path: PathBuf, source: std::io::Error },
    /// A machine's I/O failed.
    #[error("machine {machine}: I/O failed")]
    Machine { machine: u16, source: std::io::Error },
    /// A machine task stopped without being asked to.
    #[error("machine {machine} stopped unexpectedly")]
    Stopped { machine: u16 },
    /// A machine task panicked.
    #[error("a machine task panicked: {0}")]
    Panicked(String),
}

/// Where one machine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub machine: u16,
    pub address: u8,
    pub serial: String,
    pub kind: EndpointKind,
}

/// TCP address or pty slave path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointKind {
    Tcp(SocketAddr),
    Pty(PathBuf),
}

impl fmt::Display for Endpoint {
    /// The stdout line: `machine=0 address=1 serial=SIM000000 tcp=127.0.0.1:40517`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "machine={} address={} serial={} ", self.machine, self.address, self.serial)?;
        match &self.kind {
            EndpointKind::Tcp(addr) => write!(f, "tcp={addr}"),
            EndpointKind::Pty(path) => write!(f, "pty={}", path.display()),
        }
    }
}

/// A running simulation: one task per machine plus the ledger writer.
#[derive(Debug)]
pub struct Simulation {
    endpoints: Vec<Endpoint>,
    /// Cancelled by [`stop`](Self::stop); every machine task watches it between exchanges.
    cancel: CancellationToken,
    /// Cancelled by [`close_play`](Self::close_play).
    close: CancellationToken,
    /// Counts [`power_cycle`](Self::power_cycle) calls; each machine watches it.
    power: tokio::sync::watch::Sender<u64>,
    /// The machine tasks; each returns its index and how it ended.
    tasks: JoinSet<(u16, std::io::Result<()>)>,
    /// The ledger writer; it ends once every machine task has dropped its sink.
    ledger: Option<(PathBuf, JoinHandle<std::io::Result<()>>)>,
}

impl Simulation {
    /// Binds every endpoint, opens the ledger and starts the machines.
    pub async fn start(args: &SimulateArgs) -> Result<Self, SimulatorError> {
        let configs = args.machine_configs()?;
        let (sink, ledger) = match &args.ledger {
            Some(path) => {
                let (sink, task) = ledger::open(path.clone())
                    .await
                    .map_err(|source| SimulatorError::Ledger { path: path.clone(), source })?;
                (sink, Some((path.clone(), task)))
            }
            None => (LedgerSink::discard(), None),
        };
        let mut ports = Vec::with_capacity(configs.len());
        let mut endpoints: Vec<Endpoint> = Vec::with_capacity(configs.len());
        for cfg in &configs {
            let machine = cfg.index;
            if let (true, Some(first)) = (args.multidrop, endpoints.first()) {
                let kind = first.kind.clone();
                endpoints.push(Endpoint {
                    machine,
                    address: cfg.address,
                    serial: cfg.serial.clone(),
                    kind,
                });
                continue;
            }
            let (port, kind) = if args.pty {
                let port = pty::PtyPort::open(machine)
                    .map_err(|source| SimulatorError::Pty { machine, source })?;
                let kind = EndpointKind::Pty(port.path().clone());
                (Port::Pty(port), kind)
            } else {
                let mut addr = args.tcp;
                if addr.port() != 0 {
                    addr.set_port(addr.port().saturating_add(machine));
                }
                let bind_error = |source| SimulatorError::Bind { machine, addr, source };
                let port = tcp::TcpPort::bind(machine, addr).await.map_err(bind_error)?;
                let kind = EndpointKind::Tcp(port.local_addr().map_err(bind_error)?);
                (Port::Tcp(port), kind)
            };
            ports.push(port);
            endpoints.push(Endpoint {
                machine,
                address: cfg.address,
                serial: cfg.serial.clone(),
                kind,
            });
        }
        let cancel = CancellationToken::new();
        let close = CancellationToken::new();
        let (power, _) = tokio::sync::watch::channel(0);
        let mut tasks = JoinSet::new();
        let now = tokio::time::Instant::now().into_std();
        let wall = SystemTime::from(jiff::Timestamp::now());
        // One port per machine, or (multi-drop) one port for all of them.
        let per_port = if args.multidrop { configs.len().max(1) } else { 1 };
        let mut configs = configs.into_iter();
        for port in ports {
            let mut machines = Vec::with_capacity(per_port);
            for cfg in configs.by_ref().take(per_port) {
                machines.push(Machine::new(cfg, now, wall)?);
            }
            let index = machines.first().map_or(0, |m| m.config().index);
            let controls = driver::Controls {
                cancel: cancel.clone(),
                close: close.clone(),
                power: power.subscribe(),
            };
            let run = driver::drive(machines, port, sink.clone(), controls);
            tasks.spawn(async move { (index, run.await) });
        }
        // Only the machine tasks hold sinks now, so the writer ends when the last one stops.
        drop(sink);
        Ok(Self { endpoints, cancel, close, power, tasks, ledger })
    }

    /// Every machine finishes the game it is playing and starts no other, while still
    /// answering its host: the floor closes, so that everything can be reported before
    /// [`stop`](Self::stop).
    pub fn close_play(&self) {
        self.close.cancel();
    }

    /// Every machine loses power now and gets it back after its power-off duration.
    pub fn power_cycle(&self) {
        self.power.send_modify(|cycles| *cycles = cycles.wrapping_add(1));
    }

    /// Where each machine listens, in machine order.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Resolves if a machine task ends before [`stop`](Self::stop) (an I/O failure or a panic);
    /// never resolves otherwise.
    pub async fn failed(&mut self) -> SimulatorError {
        match self.tasks.join_next().await {
            Some(Ok((machine, Err(source)))) => SimulatorError::Machine { machine, source },
            Some(Ok((machine, Ok(())))) => SimulatorError::Stopped { machine },
            Some(Err(error)) => SimulatorError::Panicked(error.to_string()),
            None => std::future::pending().await,
        }
    }

    /// Stops every machine after its current exchange, writes their `stop` records and closes
    /// the ledger (flushed and synced).
    pub async fn stop(mut self) -> Result<(), SimulatorError> {
        self.cancel.cancel();
        let mut first_error = None;
        while let Some(joined) = self.tasks.join_next().await {
            let error = match joined {
                Ok((_, Ok(()))) => continue,
                Ok((machine, Err(source))) => SimulatorError::Machine { machine, source },
                Err(error) => SimulatorError::Panicked(error.to_string()),
            };
            first_error.get_or_insert(error);
        }
        if let Some((path, task)) = self.ledger.take() {
            let written = match task.await {
                Ok(result) => result,
                Err(error) => Err(std::io::Error::other(error.to_string())),
            };
            if let Err(source) = written {
                first_error.get_or_insert(SimulatorError::Ledger { path, source });
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Runs the simulator until `shutdown` resolves: prints one line per machine on stdout (index,
/// SAS address, serial, endpoint), then serves until told to stop.
pub async fn run(
    args: SimulateArgs,
    shutdown: impl Future<Output = std::io::Result<()>>,
) -> anyhow::Result<()> {
    let mut simulation = Simulation::start(&args).await.context("cannot start the simulator")?;
    {
        let mut out = std::io::stdout().lock();
        for endpoint in simulation.endpoints() {
            writeln!(out, "{endpoint}").context("cannot write to stdout")?;
        }
        out.flush().context("cannot write to stdout")?;
    }
    tracing::info!(machines = simulation.endpoints().len(), "Simulator running.");
    let mut power_cycle =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
            .context("cannot listen for SIGUSR1")?;
    tokio::pin!(shutdown);
    let outcome = loop {
        tokio::select! {
            signal = &mut shutdown => break signal.context("cannot wait for the shutdown signal"),
            error = simulation.failed() => break Err(anyhow::Error::new(error)),
            Some(()) = power_cycle.recv() => {
                tracing::info!("SIGUSR1: power-cycling every machine.");
                simulation.power_cycle();
            }
        }
    };
    let stopped = simulation.stop().await.context("stopping the simulator");
    outcome.and(stopped)
}
