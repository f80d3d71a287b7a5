//! Wiring of `slotgate run`: the state directory's lock, the journal, one poller task per line,
//! the forwarders, the live state model ([`crate::state`]) and its views (status file, admin
//! socket), their supervision and the ordered stop.
//! This is the one place that knows how the parts fit together; `main` stays thin.
//!
//! Every part is built (lines from the journal, the admin socket bound) before any task is
//! spawned, so a configuration that cannot start starts nothing. The moment everything runs is
//! the "ready" point, published in the state model (`ready_at`) with each part's progress mark
//! (lines' `progress_at`, the journal's and destinations' channels) for a watchdog.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Endpoint};
use crate::journal::record::Body;
use crate::journal::{self, CheckpointSettings, Class, Journal, JournalConfig, NewRecord};
use crate::normalizer::{MachineIdentity, VenueSettings};
use crate::poller::{self, MachinePoller, Schedule};
use crate::transport::{SerialConfig, TcpConfig, TransportConfig};

/// How long line pollers get to finish their exchange and make their events durable on stop.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How long the alarm about a failed task may take to become durable.
const ALARM_DEADLINE: Duration = Duration::from_secs(5);

/// Runs the gateway until `shutdown` resolves, then stops every poller between exchanges. Ends
/// with an error if any task of the daemon ended by itself.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = std::io::Result<()>>,
) -> anyhow::Result<()> {
    run_with_view(config, shutdown, None).await
}

/// Journals the `software_id` record (R21) before anything else this run; a failure is logged
/// and the daemon runs on (the journal then lacks this run's identity, which the log explains).
async fn journal_software_id(config: Config, journal: Journal) {
    let file = config.file.clone();
    let identity = tokio::task::spawn_blocking(move || {
        crate::service::identity::SoftwareId::of_this_process(&file)
    })
    .await;
    let identity = match identity.map_err(std::io::Error::other).and_then(|read| read) {
        Ok(identity) => identity,
        Err(error) => {
            tracing::error!(%error, "Cannot read the software identity; none journalled.");
            return;
        }
    };
    match journal.append(vec![identity.record()]).await {
        Ok(_) => tracing::info!(
            version = %identity.version,
            git_commit = %identity.git_commit,
            binary_sha256 = %identity.binary_sha256,
            config_sha256 = %identity.config_sha256,
            "Software identity journalled."
        ),
        Err(error) => tracing::error!(%error, "Cannot journal the software identity."),
    }
}

/// As [`run`], handing the live state model to `view` once every task runs: for an in-process
/// view of the daemon (the demo's screen, a test). Snapshots of it are what `status.json` and
/// the admin socket show.
pub async fn run_with_view(
    config: Config,
    shutdown: impl Future<Output = std::io::Result<()>>,
    view: Option<tokio::sync::oneshot::Sender<crate::state::StateView>>,
) -> anyhow::Result<()> {
    // Journal, in-flight records, status and quarantine hold the venue's financial events:
    // private to the service's user whatever umask it was started with.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let daemon = Daemon::start(&config)?;
    // Beside the supervision, not before it: the shutdown signal is only listened for once
    // `supervise` runs, and hashing the binary takes a moment.
    tokio::spawn(journal_software_id(config.clone(), daemon.journal.clone()));
    crate::service::ready(&format!(
        "Polling {} line(s), {} machine(s).",
        config.lines.len(),
        config.machine_count()
    ));
    if let Some(view) = view {
        // Nobody waiting for the view is no reason not to run.
        let _ = view.send(daemon.view.clone());
    }
    daemon.supervise(shutdown).await
}

/// The running daemon: its state directory lock, journal and every long-running task.
struct Daemon {
    _lock: StateLock,
    journal: Journal,
    writer: journal::WriterHandle,
    /// Stops the line pollers and the status writer.
    cancel: CancellationToken,
    lines: JoinSet<()>,
    line_names: HashMap<tokio::task::Id, String>,
    /// Stopped after the pollers, so the last events still get a chance to go out.
    forward_cancel: CancellationToken,
    forwarders: JoinSet<()>,
    /// Each forwarder's status; its sender closes when the forwarder's task ends.
    destinations: Vec<watch::Receiver<crate::forward::DestinationStatus>>,
    status_writer: JoinHandle<()>,
    /// Stops the status writer once the other tasks have stopped, so the status file a stopped
    /// daemon leaves has their last word.
    status_done: CancellationToken,
    /// The admin socket's server; none when the socket could not be bound.
    admin: Option<JoinHandle<()>>,
    /// The state model every view reads.
    view: crate::state::StateView,
}

impl Daemon {
    fn start(config: &Config) -> anyhow::Result<Self> {
        let lock = StateLock::acquire(&config.storage.dir)?;
        if let Some(listen) = config.admin.metrics_listen {
            crate::telemetry::install(listen)?;
        }
        let (journal, writer) = crate::service::extending_start_timeout(|| open_journal(config))?;
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
        let forward_cancel = CancellationToken::new();
        let now = tokio::time::Instant::now().into_std();
        let lines = build_lines(config, &journal, now)?;
        let (line_status, watched): (Vec<_>, Vec<_>) = lines
            .iter()
            .map(|line| {
                let mut status = poller::LineStatus::connecting(&line.name);
                status.machines = line
                    .machines
                    .iter()
                    .map(|m| {
                        poller::MachineStatus::new(
                            m.registry_id().to_string(),
                            m.address().get(),
                            jiff::Timestamp::now(),
                        )
                    })
                    .collect();
                watch::channel(status)
            })
            .unzip();
        let (handles, commands): (Vec<_>, Vec<_>) =
            lines.iter().map(|line| poller::command::channel(&line.name)).unzip();
        let (remote_commands, _submitter) = start_commands(config, &journal, &lines, &handles)?;
        // The control plane never takes the data path down: without its socket the daemon
        // polls and forwards, and says why no technician can reach it.
        let socket = match crate::admin::bind(&config.admin.socket) {
            Ok(socket) => Some(socket),
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "No admin socket; polling goes on.");
                None
            }
        };
        let (forwarders, destinations, replays) =
            crate::forward::spawn_all(config, &journal, &forward_cancel)?;
        tokio::spawn(crate::service::watchdog(
            crate::service::Parts {
                journal: journal.clone(),
                lines: watched.clone(),
                destinations: destinations.clone(),
            },
            crate::service::watchdog_period().map(crate::service::Window),
            cancel.clone(),
        ));
        let (ready, ready_rx) = watch::channel(None);
        let view = crate::state::StateView {
            journal: journal.status(),
            lines: watched,
            destinations: destinations.clone(),
            started_at: jiff::Timestamp::now(),
            ready: ready_rx,
            stopping: cancel.clone(),
        };
        let status_done = CancellationToken::new();
        let status_writer = tokio::spawn(write_status(
            config.storage.status_file(),
            view.clone(),
            status_done.clone(),
        ));
        let admin = socket.map(|socket| {
            let api = crate::admin::Api::new(view.clone(), handles, journal.clone())
                .with_replays(replays);
            tokio::spawn(crate::admin::serve(socket, std::sync::Arc::new(api), cancel.clone()))
        });
        let cancel_commands = cancel.clone();
        let mut daemon = Self {
            _lock: lock,
            journal,
            writer,
            cancel,
            lines: JoinSet::new(),
            line_names: HashMap::new(),
            forward_cancel,
            forwarders,
            destinations,
            status_writer,
            status_done,
            admin,
            view,
        };
        // Before the lines, so it observes their first link-ups (re-assertion after a restart).
        daemon.spawn_line(COMMANDS_TASK.into(), async move {
            if let Err(error) = remote_commands.run(cancel_commands).await {
                tracing::error!(%error, "The remote-command task failed.");
            }
        });
        for ((line, status), commands) in lines.into_iter().zip(line_status).zip(commands) {
            let inflight =
                Some(config.storage.lines_dir().join(poller::inflight::file_name(&line.name)));
            let task = poller::run_line(
                line.name.clone(),
                line.transport,
                line.machines,
                inflight,
                daemon.journal.clone(),
                daemon.cancel.clone(),
                status,
                commands,
            );
            daemon.spawn_line(line.name, task);
        }
        ready.send_replace(Some(jiff::Timestamp::now()));
        tracing::info!(lines = config.lines.len(), machines = config.machine_count(), "Polling.");
        Ok(daemon)
    }

    fn spawn_line(&mut self, name: String, task: impl Future<Output = ()> + Send + 'static) {
        let id = self.lines.spawn(task).id();
        self.line_names.insert(id, name);
    }

    /// Waits for `shutdown` or for a task to end by itself, then stops everything in order:
    /// pollers (bounded), forwarders (bounded), status writer, journal writer. A task that
    /// ended by itself or panicked is an alarm record (so it reaches the regulator) and the
    /// error returned (so the service manager restarts the daemon).
    async fn supervise(
        self,
        shutdown: impl Future<Output = std::io::Result<()>>,
    ) -> anyhow::Result<()> {
        let Self {
            _lock,
            journal,
            writer,
            cancel,
            mut lines,
            line_names,
            forward_cancel,
            mut forwarders,
            destinations,
            mut status_writer,
            status_done,
            admin,
            view: _,
        } = self;
        let mut admin = admin.unwrap_or_else(|| {
            let cancel = cancel.clone();
            tokio::spawn(async move { cancel.cancelled().await })
        });
        let mut admin_done = false;
        let mut journal_status = journal.status();
        let line_name = |id: tokio::task::Id| {
            format!("line poller {}", line_names.get(&id).map_or("?", String::as_str))
        };
        // A forwarder's task owns its status sender, so the ended one is the one whose sender
        // is gone (while stopping, those that stopped normally are listed too).
        let forwarder_name = |_: tokio::task::Id| {
            let ended: Vec<String> = destinations
                .iter()
                .filter(|d| d.has_changed().is_err())
                .map(|d| d.borrow().name.clone())
                .collect();
            format!("forwarder {}", ended.join(", "))
        };
        let mut failures = Vec::new();
        let mut status_writer_done = false;
        tokio::select! {
            signal = shutdown => {
                if let Err(error) = signal {
                    failures.push(format!("cannot wait for the shutdown signal: {error}"));
                }
            }
            Some(ended) = lines.join_next_with_id() => {
                let (id, ended) = split(ended);
                failures.push(ended_by_itself(&line_name(id), ended));
            }
            Some(ended) = forwarders.join_next_with_id() => {
                let (id, ended) = split(ended);
                failures.push(ended_by_itself(&forwarder_name(id), ended));
            }
            ended = &mut status_writer => {
                status_writer_done = true;
                failures.push(ended_by_itself("status writer", ended));
            }
            ended = &mut admin => {
                admin_done = true;
                failures.push(ended_by_itself("admin socket", ended));
            }
            () = async { while journal_status.changed().await.is_ok() {} } => {
                failures.push("the journal writer stopped".to_owned());
            }
        }
        crate::service::stopping();
        for failure in &failures {
            raise_task_alarm(&journal, failure).await;
        }

        cancel.cancel();
        for failure in drain(&mut lines, "Line pollers", &line_name).await {
            raise_task_alarm(&journal, &failure).await;
            failures.push(failure);
        }
        forward_cancel.cancel();
        for failure in drain(&mut forwarders, "Forwarders", &forwarder_name).await {
            raise_task_alarm(&journal, &failure).await;
            failures.push(failure);
        }
        status_done.cancel();
        if !status_writer_done && let Err(e) = status_writer.await {
            let failure = ended_by_itself("status writer", Err(e));
            raise_task_alarm(&journal, &failure).await;
            failures.push(failure);
        }
        // Stopped with the lines it commands; it returns once its last connection is closed
        // (bounded), so no handle on the journal outlives this point.
        if !admin_done && let Err(e) = admin.await {
            let failure = ended_by_itself("admin socket", Err(e));
            raise_task_alarm(&journal, &failure).await;
            failures.push(failure);
        }
        drop(journal);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .context("joining the journal writer")?
            .map_err(anyhow::Error::msg)?;
        tracing::info!("Stopped.");
        match failures.is_empty() {
            true => Ok(()),
            false => Err(anyhow::anyhow!("{}", failures.join("; "))),
        }
    }
}

/// Waits (bounded) for every task of `set` to end after its stop; returns those that panicked
/// meanwhile.
async fn drain(
    set: &mut JoinSet<()>,
    what: &str,
    name: &impl Fn(tokio::task::Id) -> String,
) -> Vec<String> {
    let stopped = tokio::time::timeout(DRAIN_DEADLINE, async {
        let mut panicked = Vec::new();
        while let Some(ended) = set.join_next_with_id().await {
            let (id, ended) = split(ended);
            if ended.as_ref().is_err_and(tokio::task::JoinError::is_panic) {
                panicked.push(ended_by_itself(&name(id), ended));
            }
        }
        panicked
    })
    .await;
    stopped.unwrap_or_else(|_| {
        tracing::error!("{what} did not stop within the drain deadline.");
        set.abort_all();
        Vec::new()
    })
}

fn split(
    ended: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
) -> (tokio::task::Id, Result<(), tokio::task::JoinError>) {
    match ended {
        Ok((id, ())) => (id, Ok(())),
        Err(e) => (e.id(), Err(e)),
    }
}

/// What to say about a task that ended before the daemon was stopped (or panicked while it
/// stopped).
fn ended_by_itself(task: &str, ended: Result<(), tokio::task::JoinError>) -> String {
    match ended {
        Ok(()) => format!("the {task} stopped by itself"),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            format!("the {task} panicked: {message}")
        }
        Err(e) => format!("the {task} was cancelled: {e}"),
    }
}

/// The remote-command task's name among the line tasks it is supervised with.
const COMMANDS_TASK: &str = "remote commands";

/// The remote-command task (`command::service`): its keyed state in a sled database of its own
/// under `<storage.dir>/commands` (the journal's store is not shared), audited into the journal,
/// sending through the lines' command channels.
fn start_commands(
    config: &Config,
    journal: &Journal,
    lines: &[Line],
    handles: &[poller::LineHandle],
) -> anyhow::Result<(crate::command::service::Service, crate::command::service::Submitter)> {
    use crate::command::{journal_sink::JournalSink, service::Service, store, verify::Verifier};
    let dir = config.storage.dir.join("commands");
    let db = sled::open(&dir)
        .with_context(|| format!("cannot open the command store {}", dir.display()))?;
    let tree = db.open_tree("commands").context("cannot open the command store's tree")?;
    let flush = store::sled_durable_flush(db, &dir)
        .with_context(|| format!("cannot make the command store {} durable", dir.display()))?;
    let verifier = Verifier::load(&config.commands).context("[commands] keys")?;
    let sink = JournalSink::open(
        journal.clone(),
        tokio::runtime::Handle::current(),
        config.venue.id.clone(),
        config.venue.time_zone.clone(),
    )?;
    let machines = lines
        .iter()
        .zip(handles)
        .flat_map(|(line, handle)| {
            line.machines.iter().map(|m| (m.registry_id().to_string(), handle.clone()))
        })
        .collect();
    let store = store::CommandStore::new(tree, flush);
    Service::new(&config.commands, verifier, store, sink, journal.clone(), machines)
}

/// Logs a failed task and journals it as an alarm record, so it goes upstream as well.
async fn raise_task_alarm(journal: &Journal, failure: &str) {
    tracing::error!(alarm = "task_failed", "ALARM: {failure}; stopping.");
    let record = NewRecord {
        class: Class::Alarm,
        machine: String::new(),
        machine_seq: None,
        body: Body::Alarm {
            alarm: "task_failed".into(),
            level: "error".into(),
            message: format!("{failure}; the gateway stops and restarts"),
        },
        snapshot_of: None,
    };
    match tokio::time::timeout(ALARM_DEADLINE, journal.append(vec![record])).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::error!(%error, "Cannot journal the alarm."),
        Err(_) => tracing::error!("Cannot journal the alarm: the journal did not answer in time."),
    }
}

/// `<storage.dir>/slotgate.pid`, locked (flock) for as long as a daemon uses the state
/// directory and holding its pid: two daemons on one journal would corrupt it.
struct StateLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

impl StateLock {
    fn acquire(dir: &Path) -> anyhow::Result<Self> {
        use std::io::{Read, Seek, Write};
        use std::os::unix::fs::OpenOptionsExt;
        // 0700 by `run`'s umask; durably, since the journal will live in it.
        crate::durable::create_dir_all(dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        let path = dir.join("slotgate.pid");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                lock.set_len(0)
                    .and_then(|()| lock.rewind())
                    .and_then(|()| writeln!(lock, "{}", std::process::id()))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                Ok(Self(lock))
            }
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = match pid.trim() {
                    "" => "unknown".to_owned(),
                    pid => pid.to_owned(),
                };
                anyhow::bail!("another slotgate (pid {pid}) is using {}", dir.display())
            }
            Err((_, errno)) => Err(anyhow::Error::new(errno))
                .with_context(|| format!("cannot lock {}", path.display())),
        }
    }
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

/// What `slotgate status` reads when the daemon does not answer: the state model's snapshot,
/// written every [`STATUS_EVERY`] and at stop, atomically.
pub type StatusFile = crate::state::Snapshot;

/// How often the status file is rewritten.
pub const STATUS_EVERY: Duration = Duration::from_secs(2);

async fn write_status(
    path: std::path::PathBuf,
    view: crate::state::StateView,
    cancel: CancellationToken,
) {
    let mut alarms = Vec::new();
    loop {
        let stopping = cancel.is_cancelled();
        let file = view.snapshot();
        crate::telemetry::record(&file, &mut alarms);
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

fn write_atomically(path: &Path, file: &StatusFile) -> std::io::Result<()> {
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
        ticket_numbers: config.venue.ticket_numbers,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Config {
        // A line nobody answers (a port just closed) keeps its poller busy reconnecting.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let text = format!(
            "[venue]\nid = \"UA-1\"\ncurrency = \"UAH\"\ntime_zone = \"Europe/Kyiv\"\n\n\
             [admin]\nsocket = \"admin.sock\"\n\n[storage]\ndir = \"state\"\n\n[[line]]\nname = \"a\"\nkind = \"tcp\"\n\
             address = \"127.0.0.1:{port}\"\n\n[[line.machine]]\naddress = 1\n\
             registry_id = \"EGM-1\"\n"
        );
        Config::from_toml_str(&dir.join("slotgate.toml"), &text).unwrap()
    }

    /// The alarm records of the journal at `dir`, as `slotgate journal export` prints them.
    fn exported_alarms(dir: &Path) -> Vec<serde_json::Value> {
        let snapshot = journal::verify::Snapshot::open(dir).unwrap();
        let mut out = Vec::new();
        journal::verify::export(&snapshot, &mut out, |_| {}).unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter_map(|r| r.get("alarm").filter(|a| !a.is_null()).cloned())
            .collect()
    }

    #[tokio::test]
    async fn a_task_that_panics_is_an_alarm_record_and_an_error_after_an_orderly_stop() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let mut daemon = Daemon::start(&config).unwrap();
        daemon.spawn_line("injected".into(), async {
            tokio::task::yield_now().await;
            panic!("injected failure");
        });
        let outcome = daemon.supervise(std::future::pending()).await;
        let error = outcome.expect_err("a panicked task ends the daemon with an error");
        assert!(error.to_string().contains("line poller injected panicked"), "{error}");
        assert!(error.to_string().contains("injected failure"), "{error}");
        let alarms = exported_alarms(&config.storage.journal_dir());
        assert!(
            alarms.iter().any(|a| a["alarm"] == "task_failed"
                && a["message"].as_str().unwrap().contains("injected failure")),
            "{alarms:?}"
        );
        // The stop was orderly: the status writer's last word is "not running".
        let status: StatusFile =
            serde_json::from_slice(&std::fs::read(config.storage.status_file()).unwrap()).unwrap();
        assert!(!status.running);
    }

    #[tokio::test]
    async fn a_forwarder_that_panics_is_named_in_the_alarm() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let mut daemon = Daemon::start(&config).unwrap();
        let (status, rx) = watch::channel(crate::forward::DestinationStatus {
            name: "central".into(),
            kind: "https".into(),
            state: crate::forward::LinkState::Connecting,
            cursor: 0,
            unacknowledged: 0,
            backlog: 0,
            in_flight: 0,
            delivered: 0,
            quarantined: 0,
            replay_rate: 1,
            drain_eta_seconds: None,
            last_error: None,
        });
        daemon.destinations.push(rx);
        daemon.forwarders.spawn(async move {
            let _status = status;
            tokio::task::yield_now().await;
            panic!("assertion failed: client id");
        });
        let error = daemon.supervise(std::future::pending()).await.unwrap_err();
        assert!(error.to_string().contains("forwarder central panicked"), "{error}");
        let alarms = exported_alarms(&config.storage.journal_dir());
        assert!(
            alarms.iter().any(|a| a["message"].as_str().unwrap().contains("forwarder central")),
            "{alarms:?}"
        );
    }

    #[tokio::test]
    async fn a_task_that_returns_early_is_a_failure_too() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let mut daemon = Daemon::start(&config).unwrap();
        daemon.spawn_line("quitter".into(), async {});
        let error = daemon.supervise(std::future::pending()).await.unwrap_err();
        assert!(error.to_string().contains("line poller quitter stopped by itself"), "{error}");
        let alarms = exported_alarms(&config.storage.journal_dir());
        assert!(alarms.iter().any(|a| a["alarm"] == "task_failed"), "{alarms:?}");
    }

    #[tokio::test]
    async fn a_stop_by_signal_is_a_success() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let daemon = Daemon::start(&config).unwrap();
        daemon.supervise(async { Ok(()) }).await.unwrap();
        assert!(exported_alarms(&config.storage.journal_dir()).is_empty());
    }
}
