//! Wiring of `slotgate run`: the state directory's lock, the journal, one poller task per line,
//! the forwarders, the live state model ([`crate::state`]) and its views (status file, admin
//! socket), their supervision and the ordered stop.
//! This is the one place that knows how the parts fit together; `main` stays thin.
//!
//! Every part is built (lines from the journal, the admin socket bound) before any task is
//! spawned, so a configuration that cannot start starts nothing. The moment everything runs is
//! the "ready" point, published in the state model (`ready_at`) with each part's progress mark
//! (lines' `progress_at`, the journal's and destinations' channels) for a watchdog.
//!
//! SIGHUP reloads the configuration (`Reloadable::reload`, R18): the change is journalled
//! before it is applied, and only the lines and forwarders it touches are stopped (between
//! exchanges, as at shutdown) and started again; what cannot change live is named, not ignored.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::journal::record::Body;
use crate::journal::{self, CheckpointSettings, Class, Journal, JournalConfig, NewRecord};
use crate::normalizer::{MachineIdentity, VenueSettings};
use crate::poller::{self, MachinePoller, Schedule};
use crate::transport::TransportConfig;

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
    // Before anything runs: SIGHUP's default action would end the daemon.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .inspect_err(|error| {
            tracing::error!(%error, "Cannot listen for SIGHUP; a reload needs a restart.");
        })
        .ok();
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
    daemon.supervise(shutdown, hangups).await
}

/// The running daemon: its state directory lock, journal and every long-running task.
struct Daemon {
    _lock: StateLock,
    journal: Journal,
    writer: journal::WriterHandle,
    /// Stops the line pollers and the status writer.
    cancel: CancellationToken,
    /// The line tasks and what a reload changes.
    reloadable: Reloadable,
    /// Stopped after the pollers (by their own stop, `forwarders.cancel`), so the last events
    /// still get a chance to go out.
    forwarders: Tasks<crate::forward::DestinationStatus>,
    status_writer: JoinHandle<()>,
    /// Stops the status writer once the other tasks have stopped, so the status file a stopped
    /// daemon leaves has their last word.
    status_done: CancellationToken,
    /// The admin socket's server; none when the socket could not be bound.
    admin: Option<JoinHandle<()>>,
    /// The systemd watchdog and STATUS= line; none outside systemd.
    watchdog: Option<JoinHandle<()>>,
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
        let (handles, commands): (Vec<_>, Vec<_>) =
            lines.iter().map(|line| poller::command::channel(&line.name)).unzip();
        let (remote_commands, submitter) = start_commands(config, &journal, &lines, &handles)?;
        let local_commands = crate::admin::Commands {
            submitter: submitter.clone(),
            issuer: crate::command::local::LocalIssuer::load(&config.commands)
                .context("commands.local_key")?,
            reader: remote_commands.reader(),
        };
        // The control plane never takes the data path down: without its socket the daemon
        // polls and forwards, and says why no technician can reach it.
        let socket = match crate::admin::bind(&config.admin.socket) {
            Ok(socket) => Some(socket),
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "No admin socket; polling goes on.");
                None
            }
        };
        let inbox: Option<Arc<dyn crate::forward::CommandInbox>> = Some(Arc::new(submitter));
        let replays = crate::forward::Replays::default();
        let (mut forwarders, destinations_rx) = Tasks::new("forwarder", forward_cancel);
        for destination in &config.destinations {
            start_forwarder(config, destination, &journal, &inbox, &replays, &mut forwarders)?;
        }
        let (ready, ready_rx) = watch::channel(None);
        let (line_tasks, lines_rx) = Tasks::new("line poller", cancel.clone());
        let view = crate::state::StateView {
            journal: journal.status(),
            lines: lines_rx,
            destinations: destinations_rx,
            desired: remote_commands.desired_states(),
            started_at: jiff::Timestamp::now(),
            ready: ready_rx,
            stopping: cancel.clone(),
        };
        let notifier = crate::service::Notifier::from_env();
        let watchdog = notifier.is_active().then(|| {
            tokio::spawn(crate::service::watchdog(
                view.clone(),
                journal.clone(),
                crate::service::watchdog_period().map(crate::service::Window),
                notifier.clone(),
                cancel.clone(),
            ))
        });
        let status_done = CancellationToken::new();
        let status_writer = tokio::spawn(write_status(
            config.storage.status_file(),
            view.clone(),
            status_done.clone(),
        ));
        let admin = socket.map(|socket| {
            let api = crate::admin::Api::new(view.clone(), handles, journal.clone())
                .with_commands(local_commands)
                .with_replays(replays.clone());
            tokio::spawn(crate::admin::serve(socket, Arc::new(api), cancel.clone()))
        });
        let cancel_commands = cancel.clone();
        let mut daemon = Self {
            _lock: lock,
            journal: journal.clone(),
            writer,
            cancel,
            reloadable: Reloadable {
                lines: line_tasks,
                commands: HashMap::new(),
                config: config.clone(),
                text: running_text(config),
                journal,
                notifier,
                inbox,
                replays,
            },
            forwarders,
            status_writer,
            status_done,
            admin,
            watchdog,
            view,
        };
        // Before the lines, so it observes their first link-ups (re-assertion after a restart).
        daemon.spawn_line(COMMANDS_TASK.into(), async move {
            if let Err(error) = remote_commands.run(cancel_commands).await {
                tracing::error!(%error, "The remote-command task failed.");
            }
        });
        for (line, commands) in lines.into_iter().zip(commands) {
            daemon.reloadable.start(line, Arc::new(tokio::sync::Mutex::new(commands)));
        }
        daemon.reloadable.publish(&mut daemon.forwarders);
        ready.send_replace(Some(jiff::Timestamp::now()));
        tracing::info!(lines = config.lines.len(), machines = config.machine_count(), "Polling.");
        Ok(daemon)
    }

    fn spawn_line(&mut self, name: String, task: impl Future<Output = ()> + Send + 'static) {
        self.reloadable.lines.spawn(name, task);
    }

    /// Waits for `shutdown` or for a task to end by itself, then stops everything in order:
    /// pollers (bounded), forwarders (bounded), status writer, journal writer. A task that
    /// ended by itself or panicked is an alarm record (so it reaches the regulator) and the
    /// error returned (so the service manager restarts the daemon).
    async fn supervise(
        self,
        shutdown: impl Future<Output = std::io::Result<()>>,
        mut hangups: Option<tokio::signal::unix::Signal>,
    ) -> anyhow::Result<()> {
        let Self {
            _lock,
            journal,
            writer,
            cancel,
            mut reloadable,
            mut forwarders,
            mut status_writer,
            status_done,
            admin,
            watchdog,
            view: _,
        } = self;
        // A part that is not there waits for the stop like the others.
        let until_stopped = |task: Option<JoinHandle<()>>| {
            task.unwrap_or_else(|| {
                let cancel = cancel.clone();
                tokio::spawn(async move { cancel.cancelled().await })
            })
        };
        let mut admin = until_stopped(admin);
        let mut admin_done = false;
        let mut watchdog = until_stopped(watchdog);
        let mut watchdog_done = false;
        let mut journal_status = journal.status();
        let mut failures = Vec::new();
        let mut status_writer_done = false;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                signal = &mut shutdown => {
                    if let Err(error) = signal {
                        failures.push(format!("cannot wait for the shutdown signal: {error}"));
                    }
                }
                Some(()) = async {
                    match &mut hangups {
                        Some(hangups) => hangups.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    failures.extend(reloadable.reload(&mut forwarders).await);
                    if failures.is_empty() {
                        continue;
                    }
                }
                Some(ended) = reloadable.lines.set.join_next_with_id() => {
                    let (id, ended) = split(ended);
                    failures.push(ended_by_itself(&reloadable.lines.name_of(id), ended));
                }
                Some(ended) = forwarders.set.join_next_with_id() => {
                    let (id, ended) = split(ended);
                    failures.push(ended_by_itself(&forwarders.name_of(id), ended));
                }
                ended = &mut status_writer => {
                    status_writer_done = true;
                    failures.push(ended_by_itself("status writer", ended));
                }
                ended = &mut admin => {
                    admin_done = true;
                    failures.push(ended_by_itself("admin socket", ended));
                }
                ended = &mut watchdog => {
                    watchdog_done = true;
                    failures.push(ended_by_itself("watchdog", ended));
                }
                () = async { while journal_status.changed().await.is_ok() {} } => {
                    failures.push("the journal writer stopped".to_owned());
                }
            }
            break;
        }
        crate::service::stopping();
        for failure in &failures {
            raise_task_alarm(&journal, failure).await;
        }

        cancel.cancel();
        let lines = &mut reloadable.lines;
        let line_name = |id| task_name(lines.what, &lines.names, id);
        for failure in drain(&mut lines.set, "Line pollers", &line_name).await {
            raise_task_alarm(&journal, &failure).await;
            failures.push(failure);
        }
        forwarders.cancel.cancel();
        let forwarder_name = |id| task_name(forwarders.what, &forwarders.names, id);
        for failure in drain(&mut forwarders.set, "Forwarders", &forwarder_name).await {
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
        if !watchdog_done && let Err(e) = watchdog.await {
            let failure = ended_by_itself("watchdog", Err(e));
            raise_task_alarm(&journal, &failure).await;
            failures.push(failure);
        }
        // Every handle on the journal goes before its writer is joined (the line tasks keep one
        // to start reloaded lines).
        drop(reloadable);
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

/// The text the running configuration was read from, the base of a reload's diff; empty (every
/// setting then reads as added) if the file cannot be read again.
fn running_text(config: &Config) -> String {
    std::fs::read_to_string(&config.file).unwrap_or_else(|error| {
        tracing::warn!(file = %config.file.display(), %error,
            "Cannot read the configuration file again; a reload will list every setting.");
        String::new()
    })
}

/// One running task of a [`Tasks`] set.
#[derive(Debug)]
struct Running<T> {
    name: String,
    /// Stops this task only (a child of the set's stop).
    stop: CancellationToken,
    task: tokio::task::AbortHandle,
    status: watch::Receiver<T>,
}

/// Tasks of one kind that a reload stops and starts one by one (line pollers, forwarders),
/// supervised together: each runs under its own stop, a child of `cancel`, and the set of their
/// status channels is published for the state model ([`crate::state::Parts`]).
struct Tasks<T> {
    /// What the supervisor calls one of them: "line poller", "forwarder".
    what: &'static str,
    set: JoinSet<()>,
    names: HashMap<tokio::task::Id, String>,
    /// In configuration order.
    running: Vec<Running<T>>,
    published: watch::Sender<Vec<watch::Receiver<T>>>,
    cancel: CancellationToken,
}

/// `what name`, the task `id` of a [`Tasks`] set as the supervisor reports it.
fn task_name(what: &str, names: &HashMap<tokio::task::Id, String>, id: tokio::task::Id) -> String {
    format!("{what} {}", names.get(&id).map_or("?", String::as_str))
}

impl<T> Tasks<T> {
    fn new(what: &'static str, cancel: CancellationToken) -> (Self, crate::state::Parts<T>) {
        let (published, parts) = watch::channel(Vec::new());
        let tasks = Self {
            what,
            set: JoinSet::new(),
            names: HashMap::new(),
            running: Vec::new(),
            published,
            cancel,
        };
        (tasks, parts)
    }

    /// Spawns a task supervised with the set that no reload stops (and that has no status).
    fn spawn(&mut self, name: String, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Adds a task spawned into `set` under `stop`.
    fn track(
        &mut self,
        name: String,
        stop: CancellationToken,
        task: tokio::task::AbortHandle,
        status: watch::Receiver<T>,
    ) {
        self.names.insert(task.id(), name.clone());
        self.running.push(Running { name, stop, task, status });
    }

    fn name_of(&self, id: tokio::task::Id) -> String {
        task_name(self.what, &self.names, id)
    }

    /// Shows the running tasks' status, ordered by `order` (their place in the configuration).
    fn publish(&mut self, order: impl Fn(&str) -> Option<usize>) {
        self.running.sort_by_key(|r| order(&r.name));
        self.published.send_replace(self.running.iter().map(|r| r.status.clone()).collect());
    }

    /// Stops the running tasks named in `names` (between exchanges: the same stop as at
    /// shutdown; aborted past the drain deadline) and waits for them. Returns the failures of
    /// other tasks of the set that ended meanwhile.
    async fn stop(&mut self, names: &BTreeSet<String>) -> Vec<String> {
        let mut stopping = HashMap::new();
        for task in self.running.iter().filter(|r| names.contains(&r.name)) {
            task.stop.cancel();
            stopping.insert(task.task.id(), task.task.clone());
        }
        self.running.retain(|r| !names.contains(&r.name));
        let mut failures = Vec::new();
        let mut deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
        while !stopping.is_empty() {
            match tokio::time::timeout_at(deadline, self.set.join_next_with_id()).await {
                Ok(Some(ended)) => {
                    let (id, ended) = split(ended);
                    let name = self.name_of(id);
                    self.names.remove(&id);
                    let stopped = stopping.remove(&id).is_some();
                    if !stopped || ended.as_ref().is_err_and(tokio::task::JoinError::is_panic) {
                        failures.push(ended_by_itself(&name, ended));
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::error!(
                        "{}s stopped by the reload did not stop within the drain deadline; \
                         aborted.",
                        self.what
                    );
                    stopping.values().for_each(tokio::task::AbortHandle::abort);
                    deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
                }
            }
        }
        failures
    }
}

/// Starts the forwarder of `destination`, one of `config`'s.
fn start_forwarder(
    config: &Config,
    destination: &crate::config::DestinationConfig,
    journal: &Journal,
    inbox: &Option<Arc<dyn crate::forward::CommandInbox>>,
    replays: &crate::forward::Replays,
    forwarders: &mut Tasks<crate::forward::DestinationStatus>,
) -> anyhow::Result<()> {
    let stop = forwarders.cancel.child_token();
    let (task, status) = crate::forward::spawn(
        config,
        destination,
        journal,
        stop.clone(),
        &mut forwarders.set,
        inbox.clone(),
        replays,
    )?;
    forwarders.track(destination.name.clone(), stop, task, status);
    Ok(())
}

/// A line's command channel, kept across the restarts of its task by a reload, so the admin
/// socket's and the remote-command task's handles keep reaching the line.
type Commands = Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<poller::LineCommand>>>;

/// What a reload changes: the line tasks (the remote-command task is supervised with them) and
/// the configuration they run with.
struct Reloadable {
    lines: Tasks<poller::LineStatus>,
    commands: HashMap<String, Commands>,
    /// The configuration the tasks run with, and the text it was read from.
    config: Config,
    text: String,
    journal: Journal,
    notifier: crate::service::Notifier,
    /// The remote-command input a restarted forwarder takes commands into.
    inbox: Option<Arc<dyn crate::forward::CommandInbox>>,
    /// Where a restarted forwarder puts its replay inbox, for the admin socket's replays.
    replays: crate::forward::Replays,
}

impl Reloadable {
    /// Starts `line`'s poller, reading its commands from `commands`.
    fn start(&mut self, line: Line, commands: Commands) {
        let mut status = poller::LineStatus::connecting(&line.name);
        let now = jiff::Timestamp::now();
        status.machines = line
            .machines
            .iter()
            .map(|m| {
                poller::MachineStatus::new(m.registry_id().to_string(), m.address().get(), now)
            })
            .collect();
        let (status, status_rx) = watch::channel(status);
        let stop = self.lines.cancel.child_token();
        let inflight =
            self.config.storage.lines_dir().join(poller::inflight::file_name(&line.name));
        let journal = self.journal.clone();
        let task_stop = stop.clone();
        let name = line.name.clone();
        self.commands.insert(name.clone(), Arc::clone(&commands));
        let task = async move {
            // The poller owns the receiver it is given; a relay hands it the commands of the
            // line's lasting channel, whichever task of the line is running.
            let mut lasting = commands.lock_owned().await;
            let (relay, relayed) = tokio::sync::mpsc::channel(1);
            let relay = async {
                while let Some(command) = lasting.recv().await {
                    if relay.send(command).await.is_err() {
                        break;
                    }
                }
                std::future::pending::<()>().await;
            };
            tokio::select! {
                () = poller::run_line(
                    line.name,
                    line.transport,
                    line.machines,
                    Some(inflight),
                    journal,
                    task_stop,
                    status,
                    relayed,
                ) => {}
                () = relay => {}
            }
        };
        let handle = self.lines.set.spawn(task);
        self.lines.track(name, stop, handle, status_rx);
    }

    fn publish(&mut self, forwarders: &mut Tasks<crate::forward::DestinationStatus>) {
        let config = &self.config;
        self.lines.publish(|name| config.lines.iter().position(|l| l.name == name));
        forwarders.publish(|name| config.destinations.iter().position(|d| d.name == name));
    }

    /// SIGHUP (R18): RELOADING=1, the file read and validated again; a file that does not
    /// validate changes nothing and says why; a valid one is journalled as `config_changed`
    /// first and then applied ([`Reloadable::apply`]); READY=1 again either way. Returns the
    /// failures of tasks that ended meanwhile (the daemon then stops, as for any failure).
    async fn reload(
        &mut self,
        forwarders: &mut Tasks<crate::forward::DestinationStatus>,
    ) -> Vec<String> {
        use crate::service::NotifyState;
        tracing::info!(file = %self.config.file.display(), "SIGHUP: reloading the configuration.");
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.notifier.send(&[NotifyState::Reloading, now]),
            Err(_) => self.notifier.send(&[NotifyState::Reloading]),
        }
        // Devices are not required to be there: a line whose port is missing is down and says
        // so, which is no reason to refuse the rest of the change.
        let failures = match crate::service::reload::prepare(&self.config.file, &self.text, false) {
            Err(error) => {
                tracing::error!(file = %error.file, field = %error.field, reason = %error.reason,
                    "Reload refused: the configuration does not validate; nothing changed.");
                Vec::new()
            }
            Ok(None) => {
                tracing::info!("Reload: the configuration file is unchanged.");
                Vec::new()
            }
            Ok(Some(reload)) => self.apply(reload, forwarders).await,
        };
        let status = format!(
            "Polling {} line(s), {} machine(s).",
            self.config.lines.len(),
            self.config.machine_count()
        );
        self.notifier.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        failures
    }

    /// Journals the change, then restarts the lines it names (stopped if gone, started if new)
    /// and the forwarders of the destinations whose settings changed, between exchanges, the
    /// others untouched. Settings that only a restart applies are named in the record and the
    /// log and keep their running value.
    async fn apply(
        &mut self,
        reload: crate::service::reload::Reload,
        forwarders: &mut Tasks<crate::forward::DestinationStatus>,
    ) -> Vec<String> {
        let mut change = reload.change;
        let plan = crate::service::reload::plan(&change.changes);
        change.needs_restart.clone_from(&plan.needs_restart);
        match tokio::time::timeout(ALARM_DEADLINE, self.journal.append(vec![change.record()])).await
        {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, "Reload not applied: the change cannot be journalled.");
                return Vec::new();
            }
            Err(_) => {
                tracing::error!("Reload not applied: the journal did not take the change in time.");
                return Vec::new();
            }
        }
        tracing::info!(config_sha256 = %change.config_sha256, changes = ?change.changes,
            lines = ?plan.lines, destinations = ?plan.destinations,
            "Configuration change journalled; applying it.");
        if !plan.needs_restart.is_empty() {
            tracing::warn!(needs_restart = ?plan.needs_restart,
                "These settings take effect only at a restart (systemctl restart slotgate).");
        }
        let mut failures = self.lines.stop(&plan.lines).await;
        failures.extend(forwarders.stop(&plan.destinations).await);
        let new = reload.config;
        self.config.lines = new.lines;
        for destination in &mut self.config.destinations {
            if let Some(changed) = new.destinations.iter().find(|d| d.name == destination.name) {
                *destination = changed.clone();
            }
        }
        self.text = reload.text;
        let touched = Config {
            lines: self
                .config
                .lines
                .iter()
                .filter(|l| plan.lines.contains(&l.name))
                .cloned()
                .collect(),
            ..self.config.clone()
        };
        match build_lines(&touched, &self.journal, tokio::time::Instant::now().into_std()) {
            Ok(lines) => {
                for line in lines {
                    let commands = self.commands.get(&line.name).cloned().unwrap_or_else(|| {
                        // A new line: its commands reach it from here on, but the admin socket
                        // and the remote-command task learn of it at the next restart.
                        let (_handle, commands) = poller::command::channel(&line.name);
                        Arc::new(tokio::sync::Mutex::new(commands))
                    });
                    tracing::info!(line = %line.name, "Line (re)started by the reload.");
                    self.start(line, commands);
                }
            }
            Err(error) => failures.push(format!("the reloaded lines cannot start: {error:#}")),
        }
        for destination in
            self.config.destinations.iter().filter(|d| plan.destinations.contains(&d.name))
        {
            tracing::info!(destination = %destination.name, "Forwarder restarted by the reload.");
            if let Err(error) = start_forwarder(
                &self.config,
                destination,
                &self.journal,
                &self.inbox,
                &self.replays,
                forwarders,
            ) {
                failures.push(format!(
                    "the forwarder {} cannot start again: {error:#}",
                    destination.name
                ));
            }
        }
        self.publish(forwarders);
        failures
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

/// The forwarders hand the commands their destinations send to the remote-command task.
impl crate::forward::CommandInbox for crate::command::service::Submitter {
    fn submit(
        &self,
        bytes: Vec<u8>,
        origin: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send>> {
        let submitter = self.clone();
        Box::pin(async move {
            let outcome = submitter.submit(bytes, origin).await?;
            serde_json::to_string(&outcome).map_err(|e| e.to_string())
        })
    }
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
        let transport = line.transport();
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
        let outcome = daemon.supervise(std::future::pending(), None).await;
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
        let stop = daemon.forwarders.cancel.child_token();
        let task = daemon.forwarders.set.spawn(async move {
            let _status = status;
            tokio::task::yield_now().await;
            panic!("assertion failed: client id");
        });
        daemon.forwarders.track("central".into(), stop, task, rx);
        let error = daemon.supervise(std::future::pending(), None).await.unwrap_err();
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
        let error = daemon.supervise(std::future::pending(), None).await.unwrap_err();
        assert!(error.to_string().contains("line poller quitter stopped by itself"), "{error}");
        let alarms = exported_alarms(&config.storage.journal_dir());
        assert!(alarms.iter().any(|a| a["alarm"] == "task_failed"), "{alarms:?}");
    }

    #[tokio::test]
    async fn a_stop_by_signal_is_a_success() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let daemon = Daemon::start(&config).unwrap();
        daemon.supervise(async { Ok(()) }, None).await.unwrap();
        assert!(exported_alarms(&config.storage.journal_dir()).is_empty());
    }
}
