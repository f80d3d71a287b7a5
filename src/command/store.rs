//! The command journal and id store: every remote command the gateway accepted or refused after
//! authenticating it, with its state per target machine and the time of every transition, and
//! the desired state of each machine (what the last executed command left it in). Kept in a
//! `sled::Tree` of its own (the journal's keyed-state database provides it once wired; until
//! then any sled database does), as JSON values:
//!
//! - `c` + the 16 bytes of the command id → [`CommandRecord`];
//! - `d` + the registry id → [`DesiredState`].
//!
//! # Rules
//! - **Forward only.** A target moves `received → verified → sent → confirmed → done`, or ends
//!   `rejected`, `failed` or `expired`; a step to where it already is or behind it does nothing
//!   and says so (`Ok(false)`). A repeated command id returns the stored record
//!   ([`Admission::Duplicate`]) and nothing runs twice (thin-edge.io #2896).
//! - **Audit first.** Each step hands its [`AuditRecord`] to the sink before it is stored; a
//!   sink error stops the step.
//! - **Durable before it counts.** Each step ends with the durable-flush hook
//!   ([`DurableFlush`]): sled's own flush is not durable (`src/durable.rs`), so the hook
//!   also commits sled's log file and directories. A step is done when its call returns.
//! - **Ids are kept.** Records are never removed here: an id outlives its command's expiry
//!   (after which a replay would be rejected as expired anyway) and every restart.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::audit::{AuditRecord, AuditSink, AuditState, FailReason};
use super::envelope::{Action, Envelope};
use super::verify::{RejectReason, Rejection, Verified};

/// Where a command stands, for one target or (aggregated) for the whole command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Received,
    Verified,
    Sent,
    Confirmed,
    Done,
    Rejected,
    Failed,
    Expired,
}

impl State {
    /// Terminal states end a target's life.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Done | Self::Rejected | Self::Failed | Self::Expired)
    }

    fn rank(self) -> u8 {
        match self {
            Self::Received => 0,
            Self::Verified => 1,
            Self::Sent => 2,
            Self::Confirmed => 3,
            Self::Done | Self::Rejected | Self::Failed | Self::Expired => 4,
        }
    }

    /// The name in audit records, the admin API and `slotgate commands` (serde's form too).
    pub fn name(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Verified => "verified",
            Self::Sent => "sent",
            Self::Confirmed => "confirmed",
            Self::Done => "done",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
            Self::Expired => "expired",
        }
    }

    pub const ALL: [Self; 8] = [
        Self::Received,
        Self::Verified,
        Self::Sent,
        Self::Confirmed,
        Self::Done,
        Self::Rejected,
        Self::Failed,
        Self::Expired,
    ];

    /// The state named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    fn audit(self) -> AuditState {
        AuditState::Step(self)
    }
}

/// One transition, as `commands show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub state: State,
    pub at: Timestamp,
    /// The target it concerns; none when it concerns them all.
    pub machine: Option<String>,
    pub reason: Option<FailReason>,
    pub detail: Option<String>,
}

/// A stored command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub id: Uuid,
    pub action: Action,
    pub reason: String,
    pub issued_at: Timestamp,
    pub not_before: Timestamp,
    pub expires_at: Timestamp,
    pub origin: String,
    pub signers: Vec<String>,
    /// The envelope as JSON, signatures included: the evidence.
    pub envelope: String,
    /// The aggregate: a terminal state once every target is terminal (the worst of them:
    /// failed, then expired, then rejected, then done), else the least advanced target's.
    pub state: State,
    /// Each target's state, in the order the command named them.
    pub targets: Vec<(String, State)>,
    pub history: Vec<Transition>,
}

impl CommandRecord {
    /// A command as received, with no history yet.
    fn new(envelope: &Envelope, origin: &str, signers: Vec<String>) -> Self {
        Self {
            id: envelope.id,
            action: envelope.action,
            reason: envelope.reason.clone(),
            issued_at: envelope.issued_at,
            not_before: envelope.not_before,
            expires_at: envelope.expires_at,
            origin: origin.to_owned(),
            signers,
            envelope: envelope.to_json(),
            state: State::Received,
            targets: envelope.targets.iter().map(|t| (t.clone(), State::Received)).collect(),
            history: Vec::new(),
        }
    }

    fn aggregate(&mut self) {
        let states = self.targets.iter().map(|(_, s)| *s);
        self.state = if self.targets.iter().all(|(_, s)| s.is_terminal()) {
            [State::Failed, State::Expired, State::Rejected]
                .into_iter()
                .find(|worst| self.targets.iter().any(|(_, s)| s == worst))
                .unwrap_or(State::Done)
        } else {
            states.filter(|s| !s.is_terminal()).min_by_key(|s| s.rank()).unwrap_or(State::Received)
        };
    }

    /// The state of one target.
    pub fn target(&self, machine: &str) -> Option<State> {
        self.targets.iter().find(|(m, _)| m == machine).map(|(_, s)| *s)
    }

    fn audit(&self, state: AuditState, machines: Vec<String>, at: Timestamp) -> AuditRecord {
        AuditRecord {
            machines,
            command_id: Some(self.id),
            action: Some(self.action),
            state,
            reason: None,
            origin: self.origin.clone(),
            signers: self.signers.clone(),
            detail: None,
            at,
        }
    }
}

/// What a machine should be, by the last command executed on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    pub action: Action,
    pub command_id: Uuid,
    /// The command's `issued_at`: an older command never overrides a newer one.
    pub issued_at: Timestamp,
    /// When the command was sent to the machine.
    pub since: Timestamp,
}

/// The first 8 hex digits of a command id, as the views show it.
pub fn short_id(id: Uuid) -> String {
    id.simple().to_string().chars().take(8).collect()
}

impl DesiredState {
    /// How the views show it: `disabled (cmd 1a2b3c4d)`.
    pub fn label(&self) -> String {
        let state = match self.action {
            Action::Disable => "disabled",
            Action::Enable => "enabled",
        };
        format!("{state} (cmd {})", short_id(self.command_id))
    }
}

/// The outcome of storing a verified command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// New: stored as verified; hand it to the executor.
    New(CommandRecord),
    /// Seen before: the stored record, unchanged. Report its state; execute nothing.
    Duplicate(CommandRecord),
}

/// Makes everything applied to the tree so far survive a power cut.
pub type DurableFlush = Box<dyn Fn() -> std::io::Result<()> + Send + Sync>;

/// A command-store failure. The step it interrupted did not happen (or is not yet durable).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("audit record not written: {0}")]
    Audit(String),
    #[error("command store: {0}")]
    Sled(#[from] sled::Error),
    #[error("command store: durable flush: {0}")]
    Flush(#[from] std::io::Error),
    #[error("command store: record {key} cannot be read: {error}")]
    Decode { key: String, error: String },
    #[error("command {0} is not stored")]
    UnknownCommand(Uuid),
    #[error("command {command} does not name machine {machine}")]
    UnknownTarget { command: Uuid, machine: String },
}

/// The command journal and id store.
pub struct CommandStore {
    tree: sled::Tree,
    flush: DurableFlush,
}

impl std::fmt::Debug for CommandStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandStore").field("tree", &self.tree.name()).finish_non_exhaustive()
    }
}

const COMMAND: u8 = b'c';
const DESIRED: u8 = b'd';

fn command_key(id: Uuid) -> Vec<u8> {
    let mut key = vec![COMMAND];
    key.extend_from_slice(id.as_bytes());
    key
}

fn desired_key(machine: &str) -> Vec<u8> {
    let mut key = vec![DESIRED];
    key.extend_from_slice(machine.as_bytes());
    key
}

fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Decode {
        key: String::from_utf8_lossy(key).into_owned(),
        error: e.to_string(),
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Records are plain structs of strings, ids, times and enums: they always serialise.
    serde_json::to_vec(value).unwrap_or_default()
}

impl CommandStore {
    pub fn new(tree: sled::Tree, flush: DurableFlush) -> Self {
        Self { tree, flush }
    }

    /// A reader of this store, for views beside the task that writes it.
    pub fn reader(&self) -> CommandReader {
        CommandReader { tree: self.tree.clone() }
    }

    /// A stored command.
    pub fn get(&self, id: Uuid) -> Result<Option<CommandRecord>, StoreError> {
        self.reader().get(id)
    }

    /// Stored commands, oldest `issued_at` first; only those in `state` if given.
    pub fn list(&self, state: Option<State>) -> Result<Vec<CommandRecord>, StoreError> {
        self.reader().list(state)
    }

    /// Every machine's desired state (for the executor at start).
    pub fn desired(&self) -> Result<Vec<(String, DesiredState)>, StoreError> {
        self.reader().desired()
    }

    /// Stores a verified command as `received`, then `verified` (each audited first), or returns
    /// the stored record if its id is known (audited as a replay).
    pub fn admit(
        &self,
        verified: &Verified,
        origin: &str,
        now: Timestamp,
        audit: &mut dyn AuditSink,
    ) -> Result<Admission, StoreError> {
        let envelope = &verified.envelope;
        if let Some(stored) = self.get(envelope.id)? {
            let mut record = stored.audit(State::Rejected.audit(), envelope.targets.clone(), now);
            record.origin = origin.to_owned();
            record.reason = Some(FailReason::Rejected(RejectReason::Replayed));
            record.detail = Some(format!("already {}", stored.state.name()));
            audit.append(record).map_err(StoreError::Audit)?;
            return Ok(Admission::Duplicate(stored));
        }
        let mut record = CommandRecord::new(envelope, origin, verified.signers.clone());
        for state in [State::Received, State::Verified] {
            let mut entry = record.audit(state.audit(), envelope.targets.clone(), now);
            entry.detail = (state == State::Received).then(|| envelope.reason.clone());
            audit.append(entry).map_err(StoreError::Audit)?;
            record.history.push(Transition {
                state,
                at: now,
                machine: None,
                reason: None,
                detail: None,
            });
        }
        for (_, state) in &mut record.targets {
            *state = State::Verified;
        }
        record.aggregate();
        self.tree.insert(command_key(record.id), encode(&record))?;
        (self.flush)()?;
        Ok(Admission::New(record))
    }

    /// Audits a refused command, and stores it under its id when it was authenticated and the
    /// id is new (so that its replay returns the refusal). Unauthenticated refusals are only
    /// audited: a forger must not be able to burn a genuine command's id.
    pub fn reject(
        &self,
        rejection: &Rejection,
        origin: &str,
        now: Timestamp,
        audit: &mut dyn AuditSink,
    ) -> Result<(), StoreError> {
        let envelope = rejection.envelope.as_deref();
        audit
            .append(AuditRecord {
                machines: envelope.map(|e| e.targets.clone()).unwrap_or_default(),
                command_id: rejection.command_id(),
                action: envelope.map(|e| e.action),
                state: State::Rejected.audit(),
                reason: Some(FailReason::Rejected(rejection.reason)),
                origin: origin.to_owned(),
                signers: Vec::new(),
                detail: Some(rejection.detail.clone()),
                at: now,
            })
            .map_err(StoreError::Audit)?;
        let Some(envelope) = envelope.filter(|_| rejection.authenticated) else {
            return Ok(());
        };
        if self.get(envelope.id)?.is_some() {
            return Ok(());
        }
        let transition =
            |state, reason, detail| Transition { state, at: now, machine: None, reason, detail };
        let mut record = CommandRecord::new(envelope, origin, Vec::new());
        for (_, state) in &mut record.targets {
            *state = State::Rejected;
        }
        record.state = State::Rejected;
        record.history = vec![
            transition(State::Received, None, None),
            transition(
                State::Rejected,
                Some(FailReason::Rejected(rejection.reason)),
                Some(rejection.detail.clone()),
            ),
        ];
        self.tree.insert(command_key(record.id), encode(&record))?;
        (self.flush)()?;
        Ok(())
    }

    /// Moves one target of a command to `to` (audited first); on `sent`, the machine's desired
    /// state becomes the command's action in the same atomic write. `Ok(false)`: the target is
    /// already there or beyond, and nothing was done.
    pub fn advance(
        &self,
        step: &Step,
        now: Timestamp,
        audit: &mut dyn AuditSink,
    ) -> Result<bool, StoreError> {
        let mut record = self.get(step.command)?.ok_or(StoreError::UnknownCommand(step.command))?;
        let unknown =
            || StoreError::UnknownTarget { command: step.command, machine: step.machine.clone() };
        let current = record.target(&step.machine).ok_or_else(unknown)?;
        if current.is_terminal() || current.rank() >= step.to.rank() {
            return Ok(false);
        }
        let mut entry = record.audit(step.to.audit(), vec![step.machine.clone()], now);
        entry.reason = step.reason;
        entry.detail = step.detail.clone();
        audit.append(entry).map_err(StoreError::Audit)?;
        for (machine, state) in &mut record.targets {
            if *machine == step.machine {
                *state = step.to;
            }
        }
        record.history.push(Transition {
            state: step.to,
            at: now,
            machine: Some(step.machine.clone()),
            reason: step.reason,
            detail: step.detail.clone(),
        });
        record.aggregate();
        let mut batch = sled::Batch::default();
        batch.insert(command_key(record.id), encode(&record));
        if step.to == State::Sent {
            let desired = DesiredState {
                action: record.action,
                command_id: record.id,
                issued_at: record.issued_at,
                since: now,
            };
            batch.insert(desired_key(&step.machine), encode(&desired));
        }
        self.tree.apply_batch(batch)?;
        (self.flush)()?;
        Ok(true)
    }
}

/// Reads the store while the remote-command task writes it (the admin API's `/v1/commands`):
/// sled serves readers beside its writer, and every value is written whole.
#[derive(Debug, Clone)]
pub struct CommandReader {
    tree: sled::Tree,
}

impl CommandReader {
    /// A stored command.
    pub fn get(&self, id: Uuid) -> Result<Option<CommandRecord>, StoreError> {
        let key = command_key(id);
        self.tree.get(&key)?.map(|v| decode(&key, &v)).transpose()
    }

    /// Stored commands, oldest `issued_at` first; only those in `state` if given.
    pub fn list(&self, state: Option<State>) -> Result<Vec<CommandRecord>, StoreError> {
        let mut out = Vec::new();
        for entry in self.tree.scan_prefix([COMMAND]) {
            let (key, value) = entry?;
            let record: CommandRecord = decode(&key, &value)?;
            if state.is_none_or(|s| s == record.state) {
                out.push(record);
            }
        }
        out.sort_by_key(|r| (r.issued_at, r.id));
        Ok(out)
    }

    /// Every machine's desired state (for the executor at start).
    pub fn desired(&self) -> Result<Vec<(String, DesiredState)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.tree.scan_prefix([DESIRED]) {
            let (key, value) = entry?;
            let machine = String::from_utf8_lossy(key.get(1..).unwrap_or_default()).into_owned();
            out.push((machine, decode(&key, &value)?));
        }
        Ok(out)
    }
}

/// One target's transition, as the executor asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub command: Uuid,
    pub machine: String,
    pub to: State,
    pub reason: Option<FailReason>,
    pub detail: Option<String>,
}

/// The durable-flush hook for a sled database in `dir` that nobody else flushes durably (until
/// the journal's keyed-state database provides the tree and its own hook): sled's flush, then
/// `fdatasync` of its log file and `fsync` of its directories, as `journal::store::SledStore`
/// does (`src/durable.rs` explains why sled's flush alone is not enough). Commands are rare, so
/// the directories are synced every time rather than only when they changed.
pub fn sled_durable_flush(db: sled::Db, dir: &Path) -> std::io::Result<DurableFlush> {
    let log = std::fs::File::open(dir.join("db"))?;
    let dirs: Vec<PathBuf> = vec![dir.to_path_buf(), dir.join("blobs")];
    // sled creates its directory, `conf` and log without syncing any of them.
    db.flush().map_err(std::io::Error::other)?;
    std::fs::File::open(dir.join("conf"))?.sync_all()?;
    log.sync_all()?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::durable::sync_dir(parent)?;
    }
    let flush = move || {
        db.flush().map_err(std::io::Error::other)?;
        log.sync_data()?;
        // Values too big for a log segment go to blob files, which sled never syncs.
        if let Some(entries) = dirs.get(1).and_then(|blobs| std::fs::read_dir(blobs).ok()) {
            for entry in entries.flatten() {
                match std::fs::File::open(entry.path()).and_then(|f| f.sync_all()) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    other => other?,
                }
            }
        }
        for dir in &dirs {
            if dir.is_dir() {
                crate::durable::sync_dir(dir)?;
            }
        }
        Ok(())
    };
    flush()?;
    Ok(Box::new(flush))
}

#[cfg(test)]
mod tests;
