//! Prometheus metrics: the exporter (`[admin] metrics_listen`) and the gauges mirrored from the
//! components' status. Without an exporter the `metrics` macros are no-ops.

use std::net::SocketAddr;

use anyhow::Context;

use crate::journal::{JournalStatus, Pressure};

/// Starts serving `GET /metrics` on `listen`. Must run inside the tokio runtime.
pub fn install(listen: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(listen)
        .install()
        .with_context(|| format!("cannot serve metrics on {listen}"))?;
    metrics::describe_gauge!(
        "slotgate_journal_live_bytes",
        "Bytes of records held by the journal."
    );
    metrics::describe_gauge!("slotgate_journal_cap_bytes", "The journal's configured cap.");
    metrics::describe_gauge!(
        "slotgate_journal_usage_ratio",
        "Live bytes over the cap; alarms at 0.5, 0.8 and 0.95."
    );
    metrics::describe_gauge!(
        "slotgate_journal_pressure",
        "0 normal, 1 elevated (50 %), 2 high (80 %), 3 critical (95 %), 4 full (disk floor or store error)."
    );
    metrics::describe_gauge!("slotgate_journal_alarm", "1 while the named alarm is active.");
    metrics::describe_gauge!(
        "slotgate_journal_backlog_records",
        "Records a destination has not acknowledged yet."
    );
    metrics::describe_gauge!(
        "slotgate_forward_backlog_records",
        "Records of a destination's replay lane not yet acknowledged; while it is not up, every unacknowledged record."
    );
    metrics::describe_gauge!(
        "slotgate_forward_drain_eta_seconds",
        "The replay backlog over the destination's replay rate; NaN while nothing drains (down, revoked)."
    );
    metrics::describe_gauge!(
        "slotgate_forward_in_flight",
        "Records sent and not yet acknowledged."
    );
    metrics::describe_gauge!("slotgate_forward_delivered", "Records acknowledged since start.");
    metrics::describe_gauge!(
        "slotgate_forward_up",
        "1 connected, 0 connecting or down, -1 revoked (credentials refused)."
    );
    tracing::info!(%listen, "Serving metrics.");
    Ok(())
}

/// Mirrors the state model into gauges: the journal's, and each machine's link and counters.
pub fn record(state: &crate::state::Snapshot, previous_alarms: &mut Vec<String>) {
    record_journal(&state.journal, previous_alarms);
    for line in &state.lines {
        let up = matches!(line.state, crate::poller::LineConnection::Up);
        metrics::gauge!("slotgate_line_up", "line" => line.name.clone())
            .set(f64::from(u8::from(up)));
        for m in &line.machines {
            let labels = [("line", line.name.clone()), ("machine", m.registry_id.clone())];
            let online = m.link == "online";
            metrics::gauge!("slotgate_machine_online", &labels).set(f64::from(u8::from(online)));
            metrics::counter!("slotgate_machine_polls_total", &labels).absolute(m.polls);
            metrics::counter!("slotgate_machine_retries_total", &labels).absolute(m.retries);
            metrics::counter!("slotgate_machine_timeouts_total", &labels).absolute(m.timeouts);
            metrics::counter!("slotgate_machine_crc_errors_total", &labels).absolute(m.crc_errors);
        }
    }
}

/// Mirrors the journal's status into gauges.
pub fn record_journal(status: &JournalStatus, previous_alarms: &mut Vec<String>) {
    metrics::gauge!("slotgate_journal_live_bytes").set(status.live_bytes as f64);
    metrics::gauge!("slotgate_journal_cap_bytes").set(status.cap_bytes as f64);
    metrics::gauge!("slotgate_journal_usage_ratio")
        .set(status.live_bytes as f64 / status.cap_bytes.max(1) as f64);
    metrics::gauge!("slotgate_journal_records").set(status.records as f64);
    metrics::gauge!("slotgate_journal_next_seq").set(status.next_seq as f64);
    metrics::gauge!("slotgate_journal_size_on_disk_bytes").set(status.size_on_disk as f64);
    if let Some(free) = status.disk_free {
        metrics::gauge!("slotgate_journal_disk_free_bytes").set(free as f64);
    }
    let pressure = match status.pressure {
        Pressure::Normal => 0.0,
        Pressure::Elevated => 1.0,
        Pressure::High => 2.0,
        Pressure::Critical => 3.0,
        Pressure::Full => 4.0,
    };
    metrics::gauge!("slotgate_journal_pressure").set(pressure);
    for (destination, cursor) in &status.cursors {
        let behind = status.next_seq.saturating_sub(*cursor);
        metrics::gauge!("slotgate_journal_backlog_records", "destination" => destination.clone())
            .set(behind as f64);
    }
    // Alarms are listed as `name: message`; the gauge is per name.
    let active: Vec<String> =
        status.alarms.iter().map(|a| a.split(':').next().unwrap_or(a).to_owned()).collect();
    for gone in previous_alarms.iter().filter(|a| !active.contains(a)) {
        metrics::gauge!("slotgate_journal_alarm", "alarm" => gone.clone()).set(0.0);
    }
    for alarm in &active {
        metrics::gauge!("slotgate_journal_alarm", "alarm" => alarm.clone()).set(1.0);
    }
    *previous_alarms = active;
}
