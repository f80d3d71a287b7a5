//! Wiring of `slotgate run`: the event sink, one poller task per line, and the ordered stop.
//! This is the one place that knows how the parts fit together; `main` stays thin.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Endpoint};
use crate::normalizer::{MachineIdentity, VenueSettings};
use crate::poller::{self, MachinePoller, Schedule};
use crate::sink::{self, Recovered, SinkHandle};
use crate::transport::{SerialConfig, TcpConfig, TransportConfig};

/// How long line pollers get to finish their exchange and make their events durable on stop.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Runs the gateway until `shutdown` resolves, then stops every poller between exchanges.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = std::io::Result<()>>,
) -> anyhow::Result<()> {
    let events_file = &config.output.events_file;
    let recovered = sink::recover(events_file)
        .with_context(|| format!("cannot recover the event file {}", events_file.display()))?;
    tracing::info!(
        file = %events_file.display(),
        events = recovered.events,
        "Event file recovered."
    );
    let (sink, writer) = SinkHandle::open(events_file)?;
    let cancel = CancellationToken::new();
    let mut lines = JoinSet::new();
    let now = tokio::time::Instant::now().into_std();
    for line in build_lines(&config, &recovered, now)? {
        // Next to the event file until storage gets its own directory setting.
        let inflight = events_file
            .parent()
            .map(|dir| dir.join("lines").join(poller::inflight::file_name(&line.name)));
        lines.spawn(poller::run_line(
            line.name,
            line.transport,
            line.machines,
            inflight,
            sink.clone(),
            cancel.clone(),
        ));
    }
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
    drop(sink);
    writer.await.context("the event writer failed")?;
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

/// Builds every configured line: its transport and one poller per machine, continuing each
/// machine's sequence numbers and lifetime meters from `recovered`.
pub fn build_lines(
    config: &Config,
    recovered: &Recovered,
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
            let next_seq = recovered.next_seq.get(&id).copied().unwrap_or(0);
            let snapshots = recovered.snapshots.get(&id).map_or(&[][..], Vec::as_slice);
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
                snapshots,
                now,
            )
            .with_context(|| format!("machine {id}: cannot continue from the event file"))?;
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
