//! The live state model: one read model of the whole daemon, assembled from the `watch`
//! channels its parts publish (each line task its line and machines, the journal writer its
//! status, each forwarder its destination). `status.json`, the admin socket, the CLI and the
//! Prometheus gauges are all views of a [`Snapshot`] taken from one [`StateView`], so they
//! cannot disagree. The remote-command task publishes each machine's desired state (the last
//! command executed on it, re-asserted until revoked) the same way.
//!
//! Readers never block a publisher: a `watch` keeps only the latest value, and a snapshot is a
//! clone of each.

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use std::collections::BTreeMap;

use crate::command::service::DesiredStates;
use crate::command::store::DesiredState;
use crate::forward::DestinationStatus;
use crate::journal::JournalStatus;
use crate::poller::{LineStatus, MachineStatus};

/// The version of [`Snapshot`]'s layout (`docs/admin-api.md`). Fields are only ever added within
/// a version.
pub const SCHEMA: u32 = 1;

/// The daemon's state at one moment: the body of `status.json` and of `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    #[serde(default = "schema_v1")]
    pub schema: u32,
    pub written_at: jiff::Timestamp,
    pub pid: u32,
    /// False once the daemon is stopping (and in the status file a stopped daemon leaves).
    pub running: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<jiff::Timestamp>,
    /// When every task had been spawned and the admin socket was listening: the daemon's
    /// "ready" point (sd_notify READY=1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<jiff::Timestamp>,
    pub journal: JournalStatus,
    #[serde(default)]
    pub lines: Vec<LineStatus>,
    #[serde(default)]
    pub destinations: Vec<DestinationStatus>,
    /// Each machine's desired state by registry id: the last remote command executed on it.
    /// Machines no command was ever sent to are absent.
    #[serde(default)]
    pub desired: BTreeMap<String, DesiredState>,
}

fn schema_v1() -> u32 {
    1
}

/// One machine with the line it is on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineRow {
    pub line: String,
    #[serde(flatten)]
    pub machine: MachineStatus,
    /// Its desired state, if a remote command was ever sent to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<DesiredState>,
}

impl Snapshot {
    /// Every machine, in configuration order, or those of `line` only.
    pub fn machines(&self, line: Option<&str>) -> Vec<MachineRow> {
        self.lines
            .iter()
            .filter(|l| line.is_none_or(|name| l.name == name))
            .flat_map(|l| {
                l.machines.iter().map(|m| MachineRow {
                    line: l.name.clone(),
                    machine: m.clone(),
                    desired: self.desired.get(&m.registry_id).copied(),
                })
            })
            .collect()
    }

    /// The machine with registry id `id`.
    pub fn machine(&self, id: &str) -> Option<MachineRow> {
        self.machines(None).into_iter().find(|m| m.machine.registry_id == id)
    }
}

/// The channels of a set of parts that a reload may change (lines, destinations): the set is
/// itself published, so every view sees a line the moment it is added or removed.
pub type Parts<T> = watch::Receiver<Vec<watch::Receiver<T>>>;

/// Where a [`Snapshot`] is taken from: the receiving ends of every part's channel. Cheap to
/// clone; any number of views may exist.
#[derive(Debug, Clone)]
pub struct StateView {
    pub(crate) journal: watch::Receiver<JournalStatus>,
    pub(crate) lines: Parts<LineStatus>,
    pub(crate) destinations: Parts<DestinationStatus>,
    pub(crate) desired: watch::Receiver<DesiredStates>,
    pub(crate) started_at: jiff::Timestamp,
    pub(crate) ready: watch::Receiver<Option<jiff::Timestamp>>,
    pub(crate) stopping: CancellationToken,
}

impl StateView {
    /// The state now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            schema: SCHEMA,
            written_at: jiff::Timestamp::now(),
            pid: std::process::id(),
            running: !self.stopping.is_cancelled(),
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            started_at: Some(self.started_at),
            ready_at: *self.ready.borrow(),
            journal: self.journal.borrow().clone(),
            lines: self.lines.borrow().iter().map(|l| l.borrow().clone()).collect(),
            destinations: self.destinations.borrow().iter().map(|d| d.borrow().clone()).collect(),
            desired: self.desired.borrow().clone(),
        }
    }

    /// The journal's own channel, for views that follow it as it changes.
    pub fn journal(&self) -> watch::Receiver<JournalStatus> {
        self.journal.clone()
    }

    /// Resolves once the daemon starts stopping.
    pub async fn stopping(&self) {
        self.stopping.cancelled().await;
    }
}
