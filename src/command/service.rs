//! The remote-command task: one per daemon, owning the command store, the audit sink and the
//! executor, and talking to the line tasks only over their command channels. It takes inbound
//! commands (MQTT, HTTPS, admin socket) through a [`Submitter`], follows the journal for the
//! machines' canonical events, and wakes at the executor's deadlines.
//!
//! # Order of work
//! - **Inbound:** verify; a refusal is audited and stored (`CommandStore::reject`), a command
//!   is admitted (`CommandStore::admit`: `received`, `verified`, each audited first) and a new
//!   one is handed to the executor. The caller hears the outcome only once all of that is
//!   durable, so an MQTT PUBACK sent after it acknowledges a journalled command.
//! - **Outputs, in order:** a `Step` is stored (audited first) before the next output is acted
//!   on; a `Send` with `reassert` is audited as `reasserted` first, then queued ahead of every
//!   other poll on the machine's line (`LineCommand::RemoteControl`: LP 01 or LP 02 only). A
//!   send the line cannot queue is observed as a failed poll.
//! - **Events:** every durable journal record from the daemon's start on is read in order and
//!   its canonical event observed, so the executor sees exactly what the journal holds (ACKs,
//!   game starts, link changes, power cycles), and nothing is lost to a lagging channel.
//!
//! Store and sink do blocking I/O (sled flush, fsync, the journal's durable append): they run
//! on the blocking pool, one operation at a time.

use std::collections::{BTreeMap, HashMap, VecDeque};

use firmware_protocols::sas::RemoteControl;
use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::audit::{AuditRecord, AuditSink, AuditState};
use super::envelope::Action;
use super::executor::{Executor, Observation, Output};
use super::journal_sink::JournalSink;
use super::store::{Admission, CommandReader, CommandStore, DesiredState, State, Step};
use super::verify::Verifier;
use crate::event::CanonicalEvent;
use crate::journal::{Body, Journal};
use crate::poller::{LineCommand, LineHandle};

/// Inbound commands that may wait for the task.
const INBOUND_QUEUE: usize = 64;
/// Journal records read per turn while following it.
const READ_BATCH: usize = 512;

/// What became of an inbound command, for the sender (MQTT result, admin reply).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Stored and handed to the executor; `state` is where it stands now.
    Accepted { command_id: Uuid, state: State },
    /// Its id was known: the stored state, and nothing was done again.
    Duplicate { command_id: Uuid, state: State },
    /// Refused, with the reason the audit trail records.
    Rejected { command_id: Option<Uuid>, reason: String, detail: String },
}

struct Inbound {
    bytes: Vec<u8>,
    origin: String,
    reply: oneshot::Sender<Result<Outcome, String>>,
}

/// Hands inbound commands to the task; cloned into every inbound path.
#[derive(Debug, Clone)]
pub struct Submitter(mpsc::Sender<Inbound>);

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound").field("origin", &self.origin).finish_non_exhaustive()
    }
}

impl Submitter {
    /// Submits `bytes` from `origin` (`mqtt:<destination>`, `admin uid=<uid>`) and waits until
    /// the outcome is durable. An error means nothing is known to be stored: the sender should
    /// send again (a repeat of a stored command is answered as a duplicate).
    pub async fn submit(&self, bytes: Vec<u8>, origin: String) -> Result<Outcome, String> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(Inbound { bytes, origin, reply })
            .await
            .map_err(|_| "the remote-command task is not running".to_owned())?;
        answer.await.map_err(|_| "the remote-command task stopped before answering".to_owned())?
    }
}

/// What the blocking pool works on.
struct Core {
    store: CommandStore,
    sink: JournalSink,
}

/// The task's state, built at start by [`Service::new`].
pub struct Service {
    core: Option<Core>,
    verifier: Verifier,
    executor: Executor,
    /// Each machine's line.
    lines: HashMap<String, LineHandle>,
    journal: Journal,
    /// The first journal record not yet observed.
    next_seq: u64,
    inbound: mpsc::Receiver<Inbound>,
    /// Each machine's desired state, for the state model's views.
    desired: watch::Sender<DesiredStates>,
    reader: CommandReader,
}

/// Each machine's desired state (registry id → the last command executed on it).
pub type DesiredStates = BTreeMap<String, DesiredState>;

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("machines", &self.lines.len()).finish_non_exhaustive()
    }
}

impl Service {
    /// Builds the executor from the store (persisted desired states, unfinished commands).
    /// `machines` maps each configured machine to the handle of its line.
    pub fn new(
        settings: &crate::config::CommandSettings,
        verifier: Verifier,
        store: CommandStore,
        sink: JournalSink,
        journal: Journal,
        machines: HashMap<String, LineHandle>,
    ) -> anyhow::Result<(Self, Submitter)> {
        let unfinished: Vec<_> =
            store.list(None)?.into_iter().filter(|c| !c.state.is_terminal()).collect();
        let desired = store.desired()?;
        let (desired_tx, _) = watch::channel(desired.iter().cloned().collect());
        let reader = store.reader();
        let executor = Executor::new(settings, machines.keys().cloned(), desired, &unfinished);
        let (tx, inbound) = mpsc::channel(INBOUND_QUEUE);
        let core = Some(Core { store, sink });
        // Built before the line tasks start: their first events (the link-ups that re-assert
        // desired states after a gateway restart) come after this point.
        let next_seq = *journal.durable().borrow();
        let service = Self {
            core,
            verifier,
            executor,
            lines: machines,
            journal,
            next_seq,
            inbound,
            desired: desired_tx,
            reader,
        };
        Ok((service, Submitter(tx)))
    }

    /// Each machine's desired state as it changes (the state model's views show it).
    pub fn desired_states(&self) -> watch::Receiver<DesiredStates> {
        self.desired.subscribe()
    }

    /// The command store for reading (the admin API's `/v1/commands`).
    pub fn reader(&self) -> CommandReader {
        self.reader.clone()
    }

    /// Runs until `cancel` fires. An error (the store or the journal failed, so no step can
    /// be audited) ends the task, for the supervisor to raise.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), String> {
        let mut durable = self.journal.durable();
        let mut work = VecDeque::new();
        let through = *durable.borrow_and_update();
        self.next_seq = self.follow(self.next_seq, through, &mut work)?;
        loop {
            let deadline = self.executor.next_deadline();
            let sleep = async {
                match deadline {
                    Some(at) => {
                        let wait = Timestamp::now().duration_until(at);
                        let wait = std::time::Duration::try_from(wait).unwrap_or_default();
                        tokio::time::sleep(wait).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                Some(inbound) = self.inbound.recv() => {
                    let origin = inbound.origin.clone();
                    let outcome = self.admit(inbound.bytes, origin, &mut work).await;
                    let failed = outcome.as_ref().err().cloned();
                    let _ = inbound.reply.send(outcome);
                    if let Some(error) = failed {
                        return Err(error);
                    }
                }
                changed = durable.changed() => {
                    if changed.is_err() {
                        return Err("the journal closed".into());
                    }
                    let through = *durable.borrow_and_update();
                    self.next_seq = self.follow(self.next_seq, through, &mut work)?;
                }
                () = sleep => work.extend(self.executor.tick(Timestamp::now())),
            }
            self.apply(&mut work).await?;
        }
    }

    /// Step 2 of the wiring: verify, then reject or admit, durably.
    async fn admit(
        &mut self,
        bytes: Vec<u8>,
        origin: String,
        work: &mut VecDeque<Output>,
    ) -> Result<Outcome, String> {
        let now = Timestamp::now();
        let lines = &self.lines;
        let checked = self.verifier.check(&bytes, now, |m| lines.contains_key(m));
        match checked {
            Err(rejection) => {
                let outcome = Outcome::Rejected {
                    command_id: rejection.command_id(),
                    reason: rejection.reason.name().to_owned(),
                    detail: rejection.detail.clone(),
                };
                self.blocking(move |c| c.store.reject(&rejection, &origin, now, &mut c.sink))
                    .await?
                    .map_err(|e| e.to_string())?;
                Ok(outcome)
            }
            Ok(verified) => {
                let admission = self
                    .blocking(move |c| c.store.admit(&verified, &origin, now, &mut c.sink))
                    .await?
                    .map_err(|e| e.to_string())?;
                match admission {
                    Admission::Duplicate(record) => {
                        Ok(Outcome::Duplicate { command_id: record.id, state: record.state })
                    }
                    Admission::New(record) => {
                        work.extend(self.executor.submit(now, &record));
                        self.apply(work).await?;
                        let state = self
                            .blocking(move |c| c.store.get(record.id))
                            .await?
                            .map_err(|e| e.to_string())?
                            .map_or(record.state, |r| r.state);
                        Ok(Outcome::Accepted { command_id: record.id, state })
                    }
                }
            }
        }
    }

    /// Observes the canonical events of the durable records `from..through`; returns where
    /// to go on from.
    fn follow(
        &mut self,
        mut from: u64,
        through: u64,
        work: &mut VecDeque<Output>,
    ) -> Result<u64, String> {
        while from < through {
            let records = self.journal.read(from, READ_BATCH).map_err(|e| e.to_string())?;
            let Some(last) = records.last() else { break };
            from = last.header.seq.saturating_add(1);
            for record in records {
                let Some(Body::Event { canonical_json, .. }) = &record.body else { continue };
                let Ok(event) = serde_json::from_slice::<CanonicalEvent>(canonical_json) else {
                    continue;
                };
                let machine = event.machine.registry_id.as_str().to_owned();
                work.extend(self.executor.observe_event(Timestamp::now(), &machine, &event));
            }
        }
        Ok(from)
    }

    /// Carries out the executor's outputs in order, including those they lead to.
    async fn apply(&mut self, work: &mut VecDeque<Output>) -> Result<(), String> {
        while let Some(output) = work.pop_front() {
            let now = Timestamp::now();
            match output {
                Output::Step(step) => self.advance(step, now).await?,
                Output::Send { machine, control, command, reassert } => {
                    if let Some(trigger) = reassert {
                        let record = AuditRecord {
                            machines: vec![machine.clone()],
                            command_id: Some(command),
                            action: Some(action_of(control)),
                            state: AuditState::Reasserted,
                            reason: None,
                            origin: "gateway".into(),
                            signers: Vec::new(),
                            detail: Some(trigger.name().to_owned()),
                            at: now,
                        };
                        self.blocking(move |c| c.sink.append(record)).await??;
                    }
                    if let Err(error) = self.send(&machine, control).await {
                        tracing::warn!(%machine, %command, %error,
                            "Cannot queue the remote-control poll; it counts as failed.");
                        let failed = Observation::PollFailed(control);
                        work.extend(self.executor.observe(now, &machine, failed));
                    }
                }
            }
        }
        Ok(())
    }

    /// Stores one step; a `sent` changes the machine's desired state, which the views then show.
    async fn advance(&mut self, step: Step, now: Timestamp) -> Result<(), String> {
        let desired = self
            .blocking(move |c| {
                let advanced = c.store.advance(&step, now, &mut c.sink)?;
                (advanced && step.to == State::Sent).then(|| c.store.desired()).transpose()
            })
            .await?
            .map_err(|e| e.to_string())?;
        if let Some(desired) = desired {
            self.desired.send_replace(desired.into_iter().collect());
        }
        Ok(())
    }

    async fn send(&self, machine: &str, control: RemoteControl) -> Result<(), String> {
        let line = self.lines.get(machine).ok_or_else(|| format!("no line for {machine}"))?;
        let machine = machine.to_owned();
        line.ask(|reply| LineCommand::RemoteControl { machine, control, reply }).await?
    }

    /// Runs `f` on the blocking pool with the store and the sink.
    async fn blocking<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Core) -> T + Send + 'static,
    ) -> Result<T, String> {
        let mut core = self.core.take().ok_or("the command store was lost")?;
        let (core, value) = tokio::task::spawn_blocking(move || {
            let value = f(&mut core);
            (core, value)
        })
        .await
        .map_err(|e| format!("the command store's worker failed: {e}"))?;
        self.core = Some(core);
        Ok(value)
    }
}

fn action_of(control: RemoteControl) -> Action {
    match control {
        RemoteControl::Shutdown => Action::Disable,
        RemoteControl::Startup => Action::Enable,
    }
}
