//! `slotgate demo`: a floor of simulated machines polled by the real gateway, in one process, so
//! that anyone can watch slotgate work without hardware. The simulator serves each machine on its
//! own loopback TCP port with the 9-bit framing; the gateway is configured through the same
//! validated `Config` as `slotgate run` and writes the same canonical events.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
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

/// Runs the simulated floor and the gateway until `shutdown` resolves.
pub async fn run(
    args: DemoArgs,
    shutdown: impl Future<Output = std::io::Result<()>>,
) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("slotgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let state = args.state_dir.clone().unwrap_or_else(|| dir.join("state"));
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

    let mut text = format!(
        "[venue]\nid = \"DEMO-VENUE\"\ncurrency = \"UAH\"\ntime_zone = \"Europe/Kyiv\"\n\n\
         [polling]\nmeter_snapshot_interval = \"30s\"\n\n[storage]\ndir = {:?}\n\n\
         [journal]\nsigning_key = {:?}\ncheckpoint_interval = \"10s\"\n",
        state.display().to_string(),
        key.display().to_string()
    );
    for e in simulation.endpoints() {
        let EndpointKind::Tcp(addr) = &e.kind else { continue };
        text.push_str(&format!(
            "\n[[line]]\nname = \"line-{}\"\nkind = \"tcp\"\naddress = \"{addr}\"\n\n\
             [[line.machine]]\naddress = {}\nregistry_id = \"EGM-{}\"\ndenomination = \"0.01\"\n",
            e.machine, e.address, e.serial
        ));
    }
    let config_path = dir.join("slotgate.toml");
    std::fs::write(&config_path, &text)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let config = Config::load(&config_path)?;

    println!("slotgate demo: {} simulated machines, polled over TCP on 127.0.0.1", args.machines);
    println!("  configuration   {}", config_path.display());
    println!("  journal         {}", config.storage.journal_dir().display());
    println!("  machine ledger  {}", ledger.display());
    println!(
        "It stops by itself after {} (Ctrl-C stops it sooner). Then inspect the journal:",
        humantime::format_duration(args.duration)
    );
    println!("  slotgate journal verify --config {}", config_path.display());
    println!("  slotgate journal export --config {}", config_path.display());

    let progress = tokio::spawn(report_progress(config.storage.status_file()));
    let duration = args.duration;
    let stop = async move {
        tokio::select! {
            signal = shutdown => signal,
            () = tokio::time::sleep(duration) => {
                println!("The demo ran for {}; stopping.", humantime::format_duration(duration));
                Ok(())
            }
        }
    };
    let outcome = crate::app::run(config, stop).await;
    progress.abort();
    simulation.stop().await.context("stopping the simulator")?;
    outcome
}

/// Prints a line every five seconds from the daemon's status file: records journalled, usage.
async fn report_progress(status: PathBuf) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let Ok(text) = tokio::fs::read_to_string(&status).await else { continue };
        let Ok(file) = serde_json::from_str::<crate::app::StatusFile>(&text) else { continue };
        let j = &file.journal;
        println!(
            "{} records journalled durably ({} bytes), last checkpoint at record {}, alarms: {}",
            j.next_seq - j.first_seq,
            j.live_bytes,
            j.last_checkpoint_seq.map_or_else(|| "-".to_owned(), |s| s.to_string()),
            if j.alarms.is_empty() { "none".to_owned() } else { j.alarms.join("; ") },
        );
    }
}
