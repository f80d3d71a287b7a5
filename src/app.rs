//! Wiring of `slotgate run`: the journal, one poller task per line, the status file, and the
//! ordered stop.
//! This is the one place that knows how the parts fit together; `main` stays thin.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Endpoint};
use crate::journal::{self, CheckpointSettings, Journal, JournalConfig};
use crate::normalizer::{MachineIdentity, VenueSettings};
use crate::poller::{self, MachinePoller, Schedule};
use crate::transport::{SerialConfig, TcpConfig, TransportConfig};

/// How long line pollers get to finish their exchange and make their events durable on stop.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Runs the gateway until `shutdown` resolves, then stops every poller between exchanges.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = std::io::Result<()>>,
) -> anyhow::Result<()> {
    if let Some(listen) = config.admin.metrics_listen {
        crate::telemetry::install(listen)?;
    }
    let (journal, writer) = open_journal(&config)?;
    {
        let status = journal.status().borrow().clone();
        tracing::info!(
            dir = %status.dir.display(),
            first_seq = status.first_seq,
            next_seq = status.next_seq,
            live_bytes = status.live_bytes,
            "Journal opened."
        );
    }
    let cancel = CancellationToken::new();
    let mut lines = JoinSet::new();
    let mut line_status = Vec::with_capacity(config.lines.len());
    let now = tokio::time::Instant::now().into_std();
    for line in build_lines(&config, &journal, now)? {
        let inflight =
            Some(config.storage.lines_dir().join(poller::inflight::file_name(&line.name)));
        let (status, watched) =
            tokio::sync::watch::channel(poller::LineStatus::connecting(&line.name));
        line_status.push(watched);
        lines.spawn(poller::run_line(
            line.name,
            line.transport,
            line.machines,
            inflight,
            journal.clone(),
            cancel.clone(),
            status,
        ));
    }
    // Forwarders stop after the pollers, so the last events still get a chance to go out.
    let forward_cancel = CancellationToken::new();
    let (mut forwarders, destinations) =
        crate::forward::spawn_all(&config, &journal, &forward_cancel)?;
    let status_task = tokio::spawn(write_status(
        config.storage.status_file(),
        journal.clone(),
        line_status,
        destinations,
        cancel.clone(),
    ));
    tracing::info!(lines = config.lines.len(), machines = config.machine_count(), "Polling.");

    let outcome = tokio::select! {
        signal = shutdown => signal.context("waiting for the shutdown signal"),
        Some(ended) = lines.join_next() => Err(match ended {
            Ok(()) => anyhow::anyhow!("a line poller stopped by itself"),
            Err(e) => anyhow::anyhow!("a line poller failed: {e}"),
        }),
    };
    cancel.cancel();
    if tokio::time::timeout(DRAIN_DEADLINE, async { while lines.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::error!("Line pollers did not stop within the drain deadline.");
        lines.abort_all();
    }
    forward_cancel.cancel();
    if tokio::time::timeout(DRAIN_DEADLINE, async {
        while forwarders.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::error!("Forwarders did not stop within the drain deadline.");
        forwarders.abort_all();
    }
    let _ = status_task.await;
    drop(journal);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .context("joining the journal writer")?
        .map_err(anyhow::Error::msg)?;
    tracing::info!("Stopped.");
    outcome
}

/// One configured line, ready for [`poller::run_line`].
#[derive(Debug)]
pub struct Line {
    pub name: String,
    pub transport: TransportConfig,
    pub machines: Vec<MachinePoller>,
}

/// The journal's settings from the configuration, with the signing key loaded.
pub fn journal_config(config: &Config) -> anyhow::Result<JournalConfig> {
    let settings = &config.journal;
    let checkpoints = match &settings.signing_key {
        Some(path) => Some(CheckpointSettings {
            key: journal::checkpoint::load_signing_key(path)?,
            interval: settings.checkpoint_interval,
        }),
        None => {
            tracing::warn!(
                "No journal.signing_key configured: the hash chain is kept but no checkpoint is \
                 signed, so a rewrite of the whole chain would go unnoticed."
            );
            None
        }
    };
    Ok(JournalConfig {
        dir: config.storage.journal_dir(),
        quarantine_dir: config.storage.quarantine_dir(),
        cap_bytes: settings.cap_bytes,
        disk_floor_bytes: settings.disk_floor_bytes,
        cache_bytes: settings.cache_bytes,
        retain_acknowledged: settings.retain_acknowledged,
        // A record is removed only once every destination has acknowledged it; with none
        // configured nothing is removed.
        destinations: config.destinations.iter().map(|d| d.name.clone()).collect(),
        checkpoints,
    })
}

/// Opens the configured journal.
pub fn open_journal(config: &Config) -> anyhow::Result<(Journal, journal::WriterHandle)> {
    let journal_config = journal_config(config)?;
    let dir = journal_config.dir.clone();
    Journal::open(journal_config)
        .with_context(|| format!("cannot open the journal {}", dir.display()))
}

/// What `slotgate status` reads: written every [`STATUS_EVERY`] and at stop, atomically.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct StatusFile {
    pub written_at: jiff::Timestamp,
    pub pid: u32,
    pub running: bool,
    pub journal: journal::JournalStatus,
    #[serde(default)]
    pub lines: Vec<poller::LineStatus>,
    #[serde(default)]
    pub destinations: Vec<crate::forward::DestinationStatus>,
}

/// How often the status file is rewritten.
pub const STATUS_EVERY: Duration = Duration::from_secs(2);

async fn write_status(
    path: std::path::PathBuf,
    journal: Journal,
    lines: Vec<tokio::sync::watch::Receiver<poller::LineStatus>>,
    destinations: Vec<tokio::sync::watch::Receiver<crate::forward::DestinationStatus>>,
    cancel: CancellationToken,
) {
    let mut status = journal.status();
    let mut alarms = Vec::new();
    loop {
        let stopping = cancel.is_cancelled();
        crate::telemetry::record_journal(&status.borrow(), &mut alarms);
        let file = StatusFile {
            written_at: jiff::Timestamp::now(),
            pid: std::process::id(),
            running: !stopping,
            journal: status.borrow_and_update().clone(),
            lines: lines.iter().map(|l| l.borrow().clone()).collect(),
            destinations: destinations.iter().map(|d| d.borrow().clone()).collect(),
        };
        if let Err(error) = write_atomically(&path, &file) {
            tracing::warn!(file = %path.display(), %error, "Cannot write the status file.");
        }
        if stopping {
            return;
        }
        tokio::select! {
            () = cancel.cancelled() => {}
            () = tokio::time::sleep(STATUS_EVERY) => {}
        }
    }
}

fn write_atomically(path: &std::path::Path, file: &StatusFile) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(file).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, path)
}

/// Builds every configured line: its transport and one poller per machine, continuing each
/// machine's sequence numbers and lifetime meters from the journal.
pub fn build_lines(
    config: &Config,
    journal: &Journal,
    now: std::time::Instant,
) -> anyhow::Result<Vec<Line>> {
    let venue = VenueSettings {
        venue_id: config.venue.id.clone(),
        currency: config.venue.currency,
        time_zone: config.venue.time_zone.clone(),
        clock_drift_threshold: config.polling.clock_drift_threshold,
    };
    let schedule = Schedule {
        meter_snapshot_interval: config.polling.meter_snapshot_interval,
        clock_sync_interval: config.polling.clock_sync_interval,
    };
    let mut lines = Vec::with_capacity(config.lines.len());
    for line in &config.lines {
        let mut machines = Vec::with_capacity(line.machines.len());
        for m in &line.machines {
            let id = m.registry_id.to_string();
            let (next_seq, snapshots) = journal
                .machine_state(&id)
                .with_context(|| format!("machine {id}: cannot read its state from the journal"))?;
            let identity = MachineIdentity {
                registry_id: m.registry_id.clone(),
                address: m.address,
                asset_number: m.asset.clone(),
                denomination_code: m.denomination_code,
            };
            let poller = MachinePoller::new(
                venue.clone(),
                identity,
                &line.profile,
                schedule,
                next_seq,
                &snapshots,
                now,
            )
            .with_context(|| format!("machine {id}: cannot continue from the journal"))?;
            machines.push(poller);
        }
        let transport = match &line.endpoint {
            Endpoint::Tcp { address, connect_timeout } => TransportConfig::Tcp(TcpConfig {
                connect_timeout: *connect_timeout,
                post_wakeup_delay: line.profile.timing.post_wakeup_delay,
                ..TcpConfig::new(address.clone())
            }),
            Endpoint::Serial { device, wakeup } => TransportConfig::Serial(SerialConfig {
                wakeup: wakeup.unwrap_or_else(|| line.profile.wakeup.into()),
                post_wakeup_delay: line.profile.timing.post_wakeup_delay,
                ..SerialConfig::new(device.display().to_string())
            }),
        };
        lines.push(Line { name: line.name.clone(), transport, machines });
    }
    Ok(lines)
}
