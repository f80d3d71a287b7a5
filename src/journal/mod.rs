//! The durable event journal: every event reaches a forwarder only through here, and a machine
//! is acknowledged only after its event is here durably. This doc is the design document.
//!
//! # Contract
//!
//! - **Durable before acknowledged.** [`Journal::append`] returns only after the records are
//!   flushed (fsync). The poller confirms a session's events — and so lets the next, implied-ACK
//!   poll go out — only after that return (`HostSession::confirm_events`).
//! - **Group commit.** One writer thread owns all writes. It takes every request waiting in its
//!   queue, writes them as one atomic store batch and flushes once, then answers them all, so
//!   concurrent pollers share a flush.
//! - **Gap-free sequence numbers.** Records are numbered by the gateway, contiguously, from the
//!   journal's base; the number is the record's key. The counter is recovered from the last key
//!   at open, never from sled's `generate_id` (not contiguous, §B3).
//! - **Per-destination cursors.** Each configured destination has a cursor: the first sequence
//!   number it has not acknowledged. A record is removed only when every configured destination
//!   has acknowledged it (and, unless space runs short, it is older than `retain_acknowledged`).
//!   With no destination configured nothing is ever removed: the journal is then the only copy.
//! - **Idempotent appends.** An event whose per-machine sequence number is below the machine's
//!   recorded next number is already durable (a retry after a failed flush whose data survived,
//!   a resumed exchange) and is skipped, so retries never duplicate records.
//!
//! # Key layout (one sled tree, so one batch is atomic across all of it)
//!
//! | key | value |
//! |---|---|
//! | `R` + seq (u64 BE) | record: postcard [`record::Envelope`] |
//! | `C` + destination name | cursor: u64 BE, first unacknowledged seq |
//! | `N` + registry id | the machine's next per-machine seq, u64 BE |
//! | `S` + registry id + `/` + poll code | the machine's last meter snapshot of that poll (canonical JSON) |
//! | `K` + seq (u64 BE) | a signed [`checkpoint::Checkpoint`] of the chain head at `seq` |
//! | `B` | [`Base`]: first kept seq, the chain anchor before it, the machine-seq floor |
//! | `L` | [`Usage`]: live record bytes and counts, maintained with every batch |
//!
//! Big-endian keys sort numerically; every prefix is one byte, so ranges never overlap.
//!
//! # Record format
//!
//! `Envelope::V1(RecordV1 { header, prev_hash, body })`. The header holds the seq, append time,
//! [`Class`], machine id, per-machine seq and `body_hash = SHA-256(postcard(body))`; the body is
//! the canonical event's JSON bytes plus the raw SAS bytes it came from (or an alarm). New
//! layouts are new enum variants, never edits of old ones; leftover bytes on decode are an error
//! (postcard would ignore them, §B6). Golden bytes in `record.rs` tests pin the layout.
//!
//! # Hash chain and checkpoints
//!
//! `record_hash = SHA-256("slotgate-journal-v1" ‖ prev_hash ‖ postcard(header))`, and each
//! record's `prev_hash` is its predecessor's `record_hash` (the first one's is the base anchor).
//! An edited body breaks its `body_hash`; an edited, removed, inserted or swapped record breaks
//! the next link. Compaction drops a `Snapshot` body but keeps header and hashes, so the chain
//! still verifies; a compacted record of any other class is reported as tampering. Every
//! `checkpoint_interval` (and at stop) the writer signs the head with Ed25519
//! ([`checkpoint`]); a truncated tail shows as a checkpoint beyond the last record.
//! `slotgate journal verify` checks all of it on a copy of the store (sled has no read-only
//! mode, and its open may repair files), so it never changes the evidence.
//!
//! # Durability points
//!
//! Only [`store::Store::flush`], called by the writer after each group's batch and after each
//! cursor update. sled's background flusher is off, so nothing else decides. "Durable" means
//! against a power cut, not only a kill: sled's own flush is not enough (it ends in
//! `sync_file_range`), so the store follows it with `fdatasync` of sled's log and `fsync` of
//! its directories, and every directory the journal creates or renames into is synced
//! ([`crate::durable`]). `tests/journal_crash.rs` cuts the power under the writer on a FUSE file
//! system that drops whatever was not synced. A flush error is
//! answered as an error to every request in the group (the pollers keep the machines
//! unacknowledged and retry); the writer then reopens the store (sled latches its first I/O
//! error) and recovers its counters from what is actually on disk.
//!
//! # Capacity
//!
//! `cap` bounds the live record bytes (sled never returns freed space to the file system, so
//! its file size follows the peak backlog, not the current one; free space is watched
//! separately). Alarms fire as usage crosses 50, 80 and 95 % ([`Pressure`]): a record in the
//! journal (so it goes upstream), an error log, and the status. From 80 % acknowledged records
//! are removed regardless of retention and the bodies of unacknowledged periodic meter snapshots
//! are compacted (every later snapshot carries the same meters); pollers read [`Pressure`] and
//! space out snapshots, then stop them. Financial and significant events are never refused for
//! the cap. The hard limit is `disk_floor`: below that much free space events are refused (the
//! machines hold them, unacknowledged) and an alarm is raised; alarm records, being tiny, are
//! still written. Appends resume by themselves when space returns.
//!
//! # Recovery
//!
//! Open reads `B`, `L`, the cursors, and the last record key: no scan, so start-up does not grow
//! with the backlog. The store is then compared with the journal's own high-water mark
//! ([`watermark`], a small file beside sled's written after every flush): sled recovers a
//! damaged log by silently keeping the prefix before the damage, so a store that ends before
//! its mark has lost acknowledged records and is treated as corrupt. A store sled cannot open as corrupt, or whose last record does not decode,
//! is moved to `quarantine/journal-<time>` (still readable by `journal verify|export`), a fresh
//! one is opened, and an alarm is its first record. The fresh journal's sequence numbers — and
//! every machine's, since their heads went with the old store — jump to `unix seconds × 10⁶`,
//! above anything issued before, so idempotency keys never repeat and the jump shows upstream
//! as a gap.

pub mod checkpoint;
pub mod record;
pub mod store;
pub mod verify;
pub mod watermark;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use self::checkpoint::Checkpoint;
pub use self::record::{Body, Class, Hash, Record};
use self::record::{GENESIS, Header};
use self::store::{SledStore, Store, StoreError, WriteBatch};
use crate::event::{CanonicalEvent, EventKind, SnapshotTrigger};

const RECORD: u8 = b'R';
const CURSOR: u8 = b'C';
const MACHINE_NEXT: u8 = b'N';
const SNAPSHOT: u8 = b'S';
const CHECKPOINT: u8 = b'K';
const BASE: &[u8] = b"B";
const USAGE: &[u8] = b"L";

/// Records removed per pruning step, so one acknowledgement never stalls appends for long.
const PRUNE_STEP: usize = 4096;
/// Records scanned per compaction step.
const COMPACT_STEP: usize = 4096;

pub fn record_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = RECORD;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn prefixed(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(prefix);
    k.extend_from_slice(rest);
    k
}

fn seq_of_key(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

fn u64_value(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// How the journal is set up; built from the `[journal]` configuration section.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// The store's directory.
    pub dir: PathBuf,
    /// Where a corrupt store is moved.
    pub quarantine_dir: PathBuf,
    /// Live record bytes the journal aims to stay under.
    pub cap_bytes: u64,
    /// Free space below which events are refused.
    pub disk_floor_bytes: u64,
    /// sled's cache, in bytes.
    pub cache_bytes: u64,
    /// Acknowledged records are kept this long while space allows.
    pub retain_acknowledged: Duration,
    /// Destinations whose acknowledgements remove records.
    pub destinations: Vec<String>,
    /// Signing key and interval for checkpoints; none means no checkpoints.
    pub checkpoints: Option<CheckpointSettings>,
}

#[derive(Debug, Clone)]
pub struct CheckpointSettings {
    pub key: SigningKey,
    pub interval: Duration,
}

impl JournalConfig {
    /// Defaults for a journal in `dir` (quarantine beside it), for tests and tools.
    pub fn in_dir(dir: &Path) -> Self {
        let parent = dir.parent().unwrap_or(dir);
        Self {
            dir: dir.to_path_buf(),
            quarantine_dir: parent.join("quarantine"),
            cap_bytes: 4 << 30,
            disk_floor_bytes: 0,
            cache_bytes: 16 << 20,
            retain_acknowledged: Duration::ZERO,
            destinations: Vec::new(),
            checkpoints: None,
        }
    }
}

/// What the journal stores before the first kept record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    /// The first seq still (or next to be) stored.
    pub first_seq: u64,
    /// `prev_hash` of that record.
    pub anchor: Hash,
    /// Machines without a recorded next seq start here (non-zero after a quarantine).
    pub machine_seq_floor: u64,
}

/// Live bytes and counts, kept in the store so open needs no scan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub live_bytes: u64,
    pub records: u64,
    /// Records below this seq have been looked at by compaction.
    pub compacted_through: u64,
    pub compacted: u64,
}

/// How short space is. Pollers space out low-value polling from `High`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pressure {
    Normal,
    /// ≥ 50 % of the cap.
    Elevated,
    /// ≥ 80 %: snapshots compacted, acknowledged records removed early, snapshots spaced out.
    High,
    /// ≥ 95 %: periodic snapshots stop.
    Critical,
    /// Free disk space is below the floor, or the store fails: events are refused.
    Full,
}

impl Pressure {
    fn of(live: u64, cap: u64) -> Self {
        let permille = live.saturating_mul(1000) / cap.max(1);
        match permille {
            950.. => Self::Critical,
            800.. => Self::High,
            500.. => Self::Elevated,
            _ => Self::Normal,
        }
    }

    fn threshold(self) -> &'static str {
        match self {
            Self::Normal => "below 50 %",
            Self::Elevated => "50 %",
            Self::High => "80 %",
            Self::Critical => "95 %",
            Self::Full => "disk floor",
        }
    }
}

/// A snapshot of the journal for `slotgate status`, metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalStatus {
    pub dir: PathBuf,
    pub first_seq: u64,
    pub next_seq: u64,
    pub live_bytes: u64,
    pub cap_bytes: u64,
    pub records: u64,
    pub compacted: u64,
    pub size_on_disk: u64,
    pub disk_free: Option<u64>,
    pub pressure: Pressure,
    /// Destination → first unacknowledged seq.
    pub cursors: BTreeMap<String, u64>,
    /// Active alarms, newest last.
    pub alarms: Vec<String>,
    pub last_checkpoint_seq: Option<u64>,
    /// The store was quarantined at this open.
    pub quarantined: Option<PathBuf>,
}

/// One record to append.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub class: Class,
    pub machine: String,
    pub machine_seq: Option<u64>,
    pub body: Body,
    /// For meter snapshots: the poll code under which the machine's last snapshot is kept.
    pub snapshot_of: Option<Option<u8>>,
}

impl NewRecord {
    /// A canonical event with the raw SAS bytes it came from.
    pub fn event(event: &CanonicalEvent, raw: &[u8]) -> Result<Self, JournalError> {
        let canonical_json = serde_json::to_vec(event)?;
        Ok(Self {
            class: class_of(event),
            machine: event.machine.registry_id.to_string(),
            machine_seq: Some(event.machine_seq),
            body: Body::Event { canonical_json, raw: raw.to_vec() },
            snapshot_of: matches!(event.kind, EventKind::MeterSnapshot { .. })
                .then_some(event.source.code),
        })
    }
}

/// Which [`Class`] an event belongs to.
pub fn class_of(event: &CanonicalEvent) -> Class {
    match &event.kind {
        EventKind::MeterSnapshot { trigger: SnapshotTrigger::Periodic, .. } => Class::Snapshot,
        EventKind::BetAccepted { .. }
        | EventKind::BetRefunded { .. }
        | EventKind::BillDetails { .. }
        | EventKind::CreditsIn { .. }
        | EventKind::CreditsOut { .. }
        | EventKind::GameEnded { .. }
        | EventKind::Handpay { .. }
        | EventKind::HandpayReceipt { .. }
        | EventKind::HandpayReset {}
        | EventKind::TicketIn { .. }
        | EventKind::TicketOut { .. }
        | EventKind::MeterReset { .. }
        | EventKind::MeterSnapshot { .. }
        | EventKind::Reconciliation { .. } => Class::Financial,
        EventKind::LinkGapSummary { .. }
        | EventKind::LinkState { .. }
        | EventKind::PollFailed { .. }
        | EventKind::PollUnsupported { .. }
        | EventKind::ForeignChirp { .. } => Class::Status,
        _ => Class::Significant,
    }
}

/// Why the journal did not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    #[error("{0}")]
    Store(String),
    #[error(
        "free space in {dir} is {free} bytes, below the configured floor of {floor} bytes; \
         events are held by the machines until space returns"
    )]
    DiskFloor { dir: PathBuf, free: u64, floor: u64 },
    #[error("cannot serialise an event: {0}")]
    Serialise(Arc<serde_json::Error>),
    #[error("the journal writer has stopped")]
    Closed,
    #[error("unknown destination {0:?}")]
    UnknownDestination(String),
}

impl From<serde_json::Error> for JournalError {
    fn from(e: serde_json::Error) -> Self {
        Self::Serialise(Arc::new(e))
    }
}

impl From<StoreError> for JournalError {
    fn from(e: StoreError) -> Self {
        Self::Store(e.to_string())
    }
}

/// Where appended records landed: `first..next` (empty when all were already durable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub first: u64,
    pub next: u64,
}

type AppendReply = oneshot::Sender<Result<Appended, JournalError>>;
type AckReply = oneshot::Sender<Result<(), JournalError>>;

enum Command {
    Append { records: Vec<NewRecord>, done: AppendReply },
    Ack { destination: String, through: u64, done: AckReply },
}

struct Shared {
    store: RwLock<Arc<dyn Store>>,
    config: JournalConfig,
}

/// A cloneable handle to the journal. The writer thread stops when the last handle is dropped;
/// join it with [`WriterHandle::join`].
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
    tx: std_mpsc::Sender<Command>,
    durable: watch::Receiver<u64>,
    status: watch::Receiver<JournalStatus>,
    pressure: watch::Receiver<Pressure>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("dir", &self.shared.config.dir).finish()
    }
}

/// The writer thread, to be joined after the last [`Journal`] handle is dropped.
#[derive(Debug)]
pub struct WriterHandle(std::thread::JoinHandle<()>);

impl WriterHandle {
    /// Waits (blocking) for the writer's final flush and checkpoint.
    pub fn join(self) -> Result<(), String> {
        self.0.join().map_err(|_| "the journal writer panicked".to_owned())
    }
}

/// Why the journal could not be opened at all.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot move the corrupt journal {from} to {to}: {source}")]
    Quarantine { from: PathBuf, to: PathBuf, source: std::io::Error },
    #[error("journal {dir}: {reason}")]
    Invalid { dir: PathBuf, reason: String },
}

/// The writer's view, rebuilt from the store at open and after a store failure.
#[derive(Debug, Clone)]
struct State {
    base: Base,
    usage: Usage,
    next_seq: u64,
    head: Hash,
    cursors: BTreeMap<String, u64>,
}

fn read_state(store: &dyn Store, destinations: &[String]) -> Result<State, OpenError> {
    let invalid = |reason: String| OpenError::Invalid { dir: store.path().to_path_buf(), reason };
    let base = match store.get(BASE)? {
        Some(bytes) => postcard::from_bytes::<Base>(&bytes)
            .map_err(|e| invalid(format!("base entry unreadable: {e}")))?,
        None => Base { first_seq: 0, anchor: GENESIS, machine_seq_floor: 0 },
    };
    let usage = match store.get(USAGE)? {
        Some(bytes) => postcard::from_bytes::<Usage>(&bytes)
            .map_err(|e| invalid(format!("usage entry unreadable: {e}")))?,
        None => Usage::default(),
    };
    let (next_seq, head) = match store.last_in(&[RECORD], &[RECORD + 1])? {
        Some((key, value)) => {
            let seq = seq_of_key(&key).ok_or_else(|| invalid("malformed record key".into()))?;
            let record = Record::decode(&value)
                .map_err(|e| invalid(format!("last record {seq} unreadable: {e}")))?;
            if record.header.seq != seq {
                return Err(invalid(format!(
                    "record key {seq} holds record {}",
                    record.header.seq
                )));
            }
            (seq + 1, record.record_hash())
        }
        None => (base.first_seq, base.anchor),
    };
    let mut cursors = BTreeMap::new();
    for (key, value) in store.range(&[CURSOR], &[CURSOR + 1], usize::MAX)? {
        let name = String::from_utf8_lossy(&key[1..]).into_owned();
        let at = u64_value(&value).ok_or_else(|| invalid(format!("cursor {name} malformed")))?;
        cursors.insert(name, at);
    }
    for d in destinations {
        cursors.entry(d.clone()).or_insert(base.first_seq);
    }
    Ok(State { base, usage, next_seq, head, cursors })
}

impl Journal {
    /// Opens (or creates) the journal and starts its writer thread. A store that cannot be
    /// opened as corrupt is quarantined and replaced (module doc, Recovery).
    pub fn open(config: JournalConfig) -> Result<(Self, WriterHandle), OpenError> {
        crate::durable::create_dir_all(config.dir.parent().unwrap_or(&config.dir))
            .map_err(|e| OpenError::Invalid { dir: config.dir.clone(), reason: e.to_string() })?;
        let mut quarantined = None;
        let (store, state) = match open_store(&config) {
            Ok(opened) => opened,
            Err(error) if is_corruption(&error) => {
                let to = quarantine(&config)?;
                tracing::error!(
                    %error,
                    moved_to = %to.display(),
                    "ALARM: the journal store is corrupt; it was moved to quarantine and a fresh \
                     journal started. The quarantined data stays readable by `slotgate journal \
                     verify|export`."
                );
                let (store, mut state) = open_store(&config)?;
                let floor = seq_floor_after_quarantine();
                state.base = Base { first_seq: floor, anchor: GENESIS, machine_seq_floor: floor };
                state.next_seq = floor;
                state.head = GENESIS;
                state.cursors.values_mut().for_each(|c| *c = floor);
                let mut batch = WriteBatch::default();
                batch.put(BASE, postcard::to_stdvec(&state.base).unwrap_or_default());
                store.apply(batch)?;
                store.flush()?;
                quarantined = Some(to);
                (store, state)
            }
            Err(error) => return Err(error),
        };
        let store: Arc<dyn Store> = Arc::new(store);
        let shared = Arc::new(Shared { store: RwLock::new(store.clone()), config });
        let status = status_of(&shared.config, &state, &store, Pressure::Normal, &[], None);
        let status = JournalStatus { quarantined: quarantined.clone(), ..status };
        let (durable_tx, durable) = watch::channel(state.next_seq);
        let (status_tx, status_rx) = watch::channel(status);
        let (pressure_tx, pressure) = watch::channel(Pressure::Normal);
        let (tx, rx) = std_mpsc::channel();
        let mut writer = Writer {
            shared: shared.clone(),
            store,
            state,
            failed: false,
            prune_more: false,
            prune_idle_until: None,
            machine_next: HashMap::new(),
            durable: durable_tx,
            status: status_tx,
            pressure: pressure_tx,
            level: Pressure::Normal,
            alarms: Vec::new(),
            pending_alarms: Vec::new(),
            last_checkpoint: None,
            last_checkpoint_at: Instant::now(),
            quarantined,
            watermark: match watermark::Watermark::open(&shared.config.dir) {
                Ok(w) => Some(w),
                Err(error) => {
                    tracing::warn!(%error, "Cannot open the journal's high-water mark; a silent \
                        loss inside the store would go undetected.");
                    None
                }
            },
        };
        if let Some(to) = &writer.quarantined {
            let message = format!("corrupt journal moved to {}", to.display());
            writer.raise("journal_quarantined", "error", message);
        }
        writer.refresh_pressure();
        let thread = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| OpenError::Invalid {
                dir: shared.config.dir.clone(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        let journal = Self { shared, tx, durable, status: status_rx, pressure };
        Ok((journal, WriterHandle(thread)))
    }

    /// Appends records and returns once they are durable.
    pub async fn append(&self, records: Vec<NewRecord>) -> Result<Appended, JournalError> {
        let (done, answer) = oneshot::channel();
        self.tx.send(Command::Append { records, done }).map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// Appends canonical events, each with the raw bytes it came from.
    pub async fn append_events(
        &self,
        events: &[(CanonicalEvent, Vec<u8>)],
    ) -> Result<Appended, JournalError> {
        let records = events
            .iter()
            .map(|(event, raw)| NewRecord::event(event, raw))
            .collect::<Result<Vec<_>, _>>()?;
        self.append(records).await
    }

    /// Records that `destination` has acknowledged every record below `through + 1`.
    pub async fn acknowledge(&self, destination: &str, through: u64) -> Result<(), JournalError> {
        let (done, answer) = oneshot::channel();
        let destination = destination.to_owned();
        self.tx
            .send(Command::Ack { destination, through, done })
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// Up to `limit` durable records from `from` on, in order. Compacted records are included
    /// (with no body) so a reader sees every seq.
    pub fn read(&self, from: u64, limit: usize) -> Result<Vec<Record>, JournalError> {
        let durable = *self.durable.borrow();
        if from >= durable {
            return Ok(Vec::new());
        }
        let store = self.current_store();
        let rows = store.range(&record_key(from), &record_key(durable), limit)?;
        rows.iter()
            .map(|(_, v)| Record::decode(v).map_err(|e| JournalError::Store(e.to_string())))
            .collect()
    }

    /// The first seq not yet durable; changes after each flush.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }

    pub fn status(&self) -> watch::Receiver<JournalStatus> {
        self.status.clone()
    }

    pub fn pressure(&self) -> watch::Receiver<Pressure> {
        self.pressure.clone()
    }

    /// What the journal knows of a machine: the next per-machine seq, and its last meter
    /// snapshot of each poll (oldest first), so lifetime meters continue across restarts.
    pub fn machine_state(
        &self,
        registry_id: &str,
    ) -> Result<(u64, Vec<CanonicalEvent>), JournalError> {
        let store = self.current_store();
        let floor = read_state(store.as_ref(), &[])
            .map_err(|e| JournalError::Store(e.to_string()))?
            .base
            .machine_seq_floor;
        let next = match store.get(&prefixed(MACHINE_NEXT, registry_id.as_bytes()))? {
            Some(v) => u64_value(&v).unwrap_or(floor).max(floor),
            None => floor,
        };
        let mut prefix = prefixed(SNAPSHOT, registry_id.as_bytes());
        prefix.push(b'/');
        let mut end = prefix.clone();
        end.push(0xFF);
        let mut snapshots = Vec::new();
        for (_, json) in store.range(&prefix, &end, usize::MAX)? {
            snapshots.push(serde_json::from_slice::<CanonicalEvent>(&json)?);
        }
        snapshots.sort_by_key(|e| e.machine_seq);
        Ok((next, snapshots))
    }

    pub fn config(&self) -> &JournalConfig {
        &self.shared.config
    }

    fn current_store(&self) -> Arc<dyn Store> {
        match self.shared.store.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

fn open_store(config: &JournalConfig) -> Result<(SledStore, State), OpenError> {
    let store = SledStore::open(&config.dir, config.cache_bytes)?;
    let state = read_state(&store, &config.destinations)?;
    check_watermark(&config.dir, &state)?;
    Ok((store, state))
}

/// A store behind its own high-water mark lost records sled recovered away in silence
/// ([`watermark`]); it is treated as corrupt.
fn check_watermark(dir: &Path, state: &State) -> Result<(), OpenError> {
    let Some(mark) = watermark::read(dir) else { return Ok(()) };
    let behind = mark.next_seq > state.next_seq;
    let diverged = mark.next_seq == state.next_seq && mark.head != state.head;
    if behind || diverged {
        return Err(OpenError::Invalid {
            dir: dir.to_path_buf(),
            reason: if behind {
                format!(
                    "the store ends before record {} but records up to {} were flushed: the \
                     store lost acknowledged records",
                    state.next_seq,
                    mark.next_seq - 1
                )
            } else {
                format!("record {} differs from the one flushed", state.next_seq.saturating_sub(1))
            },
        });
    }
    Ok(())
}

fn is_corruption(error: &OpenError) -> bool {
    match error {
        OpenError::Store(e) => e.corrupt,
        OpenError::Invalid { .. } => true,
        OpenError::Quarantine { .. } => false,
    }
}

fn quarantine(config: &JournalConfig) -> Result<PathBuf, OpenError> {
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
    let mut to = config.quarantine_dir.join(format!("journal-{stamp}"));
    let mut n = 1;
    while to.exists() {
        to = config.quarantine_dir.join(format!("journal-{stamp}-{n}"));
        n += 1;
    }
    let fail = |source| OpenError::Quarantine { from: config.dir.clone(), to: to.clone(), source };
    crate::durable::create_dir_all(&config.quarantine_dir).map_err(fail)?;
    crate::durable::rename(&config.dir, &to).map_err(fail)?;
    Ok(to)
}

/// Above every seq issued before (module doc, Recovery).
fn seq_floor_after_quarantine() -> u64 {
    let secs = jiff::Timestamp::now().as_second().max(0).unsigned_abs();
    secs.saturating_mul(1_000_000)
}

fn unix_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn disk_free(dir: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(stat.blocks_available().saturating_mul(stat.fragment_size()))
}

fn status_of(
    config: &JournalConfig,
    state: &State,
    store: &Arc<dyn Store>,
    pressure: Pressure,
    alarms: &[String],
    last_checkpoint: Option<u64>,
) -> JournalStatus {
    JournalStatus {
        dir: config.dir.clone(),
        first_seq: state.base.first_seq,
        next_seq: state.next_seq,
        live_bytes: state.usage.live_bytes,
        cap_bytes: config.cap_bytes,
        records: state.usage.records,
        compacted: state.usage.compacted,
        size_on_disk: store.size_on_disk().unwrap_or(0),
        disk_free: disk_free(&config.dir),
        pressure,
        cursors: state.cursors.clone(),
        alarms: alarms.to_vec(),
        last_checkpoint_seq: last_checkpoint,
        quarantined: None,
    }
}

struct Writer {
    shared: Arc<Shared>,
    store: Arc<dyn Store>,
    state: State,
    /// The store hit an error; reopen before the next write.
    failed: bool,
    /// The last pruning step removed records and more are acknowledged (see `prune`).
    prune_more: bool,
    /// Unix ms before which the oldest acknowledged record is still retained: no pruning
    /// step is needed until then (unless space runs short).
    prune_idle_until: Option<i64>,
    machine_next: HashMap<String, u64>,
    durable: watch::Sender<u64>,
    status: watch::Sender<JournalStatus>,
    pressure: watch::Sender<Pressure>,
    level: Pressure,
    alarms: Vec<String>,
    /// Alarms to write with the next batch.
    pending_alarms: Vec<NewRecord>,
    last_checkpoint: Option<u64>,
    last_checkpoint_at: Instant,
    quarantined: Option<PathBuf>,
    /// Where the last flush got to, outside sled; `None` if the file cannot be written (then
    /// a silent loss inside sled goes undetected, and a warning said so at open).
    watermark: Option<watermark::Watermark>,
}

impl Writer {
    fn config(&self) -> &JournalConfig {
        &self.shared.config
    }

    fn run(mut self, rx: std_mpsc::Receiver<Command>) {
        let tick = Duration::from_millis(500);
        loop {
            // While acknowledged records remain to be removed, take the next step as soon as
            // the queue is empty instead of waiting out the tick.
            let wait = if self.prune_more { Duration::ZERO } else { tick };
            let first = match rx.recv_timeout(wait) {
                Ok(command) => Some(command),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut commands: Vec<Command> = first.into_iter().collect();
            while let Ok(more) = rx.try_recv() {
                commands.push(more);
            }
            self.handle(commands);
            self.maintain();
        }
        self.checkpoint(true);
        if let Err(error) = self.store.flush() {
            tracing::error!(%error, "Final journal flush failed.");
        }
        if let Some(Err(error)) = self.watermark.as_mut().map(watermark::Watermark::sync) {
            tracing::warn!(%error, "Cannot flush the journal's high-water mark.");
        }
        tracing::info!(next_seq = self.state.next_seq, "Journal closed.");
    }

    fn handle(&mut self, commands: Vec<Command>) {
        let mut appends = Vec::new();
        let mut acks = Vec::new();
        for command in commands {
            match command {
                Command::Append { records, done } => appends.push((records, done)),
                Command::Ack { destination, through, done } => {
                    acks.push((destination, through, done))
                }
            }
        }
        if self.failed
            && let Err(error) = self.reopen()
        {
            let error = JournalError::Store(format!("journal store unavailable: {error}"));
            for (_, done) in appends {
                let _ = done.send(Err(error.clone()));
            }
            for (_, _, done) in acks {
                let _ = done.send(Err(error.clone()));
            }
            return;
        }
        if !appends.is_empty() || !self.pending_alarms.is_empty() {
            self.append_group(appends);
        }
        if !acks.is_empty() {
            self.apply_acks(acks);
        }
    }

    /// One group commit: every waiting append in one batch, one flush, then all answers.
    fn append_group(&mut self, mut appends: Vec<(Vec<NewRecord>, AppendReply)>) {
        let floor = self.config().disk_floor_bytes;
        let free = disk_free(&self.config().dir);
        let below_floor = floor > 0 && free.is_some_and(|f| f < floor);
        if below_floor {
            let dir = self.config().dir.clone();
            let free = free.unwrap_or(0);
            if self.level != Pressure::Full {
                self.set_level(Pressure::Full);
                let message = format!(
                    "free space {free} bytes is below the floor of {floor} bytes; machines are held unacknowledged"
                );
                self.raise("journal_disk_floor", "critical", message);
            }
            let error = JournalError::DiskFloor { dir, free, floor };
            for (_, done) in std::mem::take(&mut appends) {
                let _ = done.send(Err(error.clone()));
            }
            // Alarms are tiny and are what the floor's margin is for: they are written below
            // the floor, the refused events are not. (This used to call itself for the alarms,
            // met the floor again and recursed until the writer's stack overflowed, aborting
            // the whole process.)
            if self.pending_alarms.is_empty() {
                return;
            }
        }
        let saved = (self.state.clone(), self.machine_next.clone());
        let mut batch = WriteBatch::default();
        let alarms = std::mem::take(&mut self.pending_alarms);
        // Kept so that a failed write does not lose them: they are retried with the next group.
        let unwritten_alarms = alarms.clone();
        let mut spans = Vec::with_capacity(appends.len());
        let mut touched: Vec<String> = Vec::new();
        let now = unix_ms();
        let result = (|| -> Result<(), StoreError> {
            for record in alarms {
                self.stage(&mut batch, record, now, &mut touched)?;
            }
            for (records, _) in &appends {
                let first = self.state.next_seq;
                for record in records {
                    self.stage(&mut batch, record.clone(), now, &mut touched)?;
                }
                spans.push(Appended { first, next: self.state.next_seq });
            }
            for machine in &touched {
                if let Some(next) = self.machine_next.get(machine) {
                    batch.put(
                        prefixed(MACHINE_NEXT, machine.as_bytes()),
                        next.to_be_bytes().to_vec(),
                    );
                }
            }
            batch.put(USAGE, postcard::to_stdvec(&self.state.usage).unwrap_or_default());
            self.store.apply(batch)?;
            self.store.flush()
        })();
        match result {
            Ok(()) => {
                self.durable.send_replace(self.state.next_seq);
                let mark = watermark::Mark { next_seq: self.state.next_seq, head: self.state.head };
                if let Some(Err(error)) = self.watermark.as_mut().map(|w| w.record(mark)) {
                    tracing::warn!(%error, "Cannot write the journal's high-water mark.");
                }
                for ((_, done), span) in appends.into_iter().zip(spans) {
                    let _ = done.send(Ok(span));
                }
                // Below the floor only alarms were written: still full.
                if self.level == Pressure::Full && !below_floor {
                    self.set_level(Pressure::of(
                        self.state.usage.live_bytes,
                        self.config().cap_bytes,
                    ));
                    self.clear_alarm("journal_disk_floor");
                    self.clear_alarm("journal_store_error");
                    tracing::info!("Journal writes resumed.");
                }
            }
            Err(error) => {
                (self.state, self.machine_next) = saved;
                let raised_meanwhile =
                    std::mem::replace(&mut self.pending_alarms, unwritten_alarms);
                self.pending_alarms.extend(raised_meanwhile);
                self.failed = true;
                tracing::error!(%error, "ALARM: journal write failed; machines stay unacknowledged and the write is retried.");
                self.set_level(Pressure::Full);
                let err = JournalError::from(error);
                for (_, done) in appends {
                    let _ = done.send(Err(err.clone()));
                }
                self.note_alarm("journal_store_error", &err.to_string());
            }
        }
    }

    /// Adds one record to the batch, unless it is a durable event's duplicate.
    fn stage(
        &mut self,
        batch: &mut WriteBatch,
        record: NewRecord,
        now: i64,
        touched: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        if let Some(machine_seq) = record.machine_seq {
            let next = self.next_machine_seq(&record.machine)?;
            if machine_seq < next {
                return Ok(());
            }
            self.machine_next.insert(record.machine.clone(), machine_seq + 1);
            if !touched.contains(&record.machine) {
                touched.push(record.machine.clone());
            }
        }
        if let (Some(code), Body::Event { canonical_json, .. }) = (record.snapshot_of, &record.body)
        {
            let mut key = prefixed(SNAPSHOT, record.machine.as_bytes());
            key.push(b'/');
            key.push(code.unwrap_or(0));
            batch.put(key, canonical_json.clone());
        }
        let header = Header {
            seq: self.state.next_seq,
            appended_at_ms: now,
            class: record.class,
            machine: record.machine,
            machine_seq: record.machine_seq,
            body_hash: record::body_hash(&record.body),
        };
        let stored = Record { header, prev_hash: self.state.head, body: Some(record.body) };
        let bytes = stored.encode();
        self.state.head = stored.record_hash();
        self.state.usage.live_bytes += bytes.len() as u64;
        self.state.usage.records += 1;
        batch.put(record_key(self.state.next_seq).to_vec(), bytes);
        self.state.next_seq += 1;
        Ok(())
    }

    fn next_machine_seq(&mut self, machine: &str) -> Result<u64, StoreError> {
        if let Some(next) = self.machine_next.get(machine) {
            return Ok(*next);
        }
        let floor = self.state.base.machine_seq_floor;
        let next = match self.store.get(&prefixed(MACHINE_NEXT, machine.as_bytes()))? {
            Some(v) => u64_value(&v).unwrap_or(floor).max(floor),
            None => floor,
        };
        self.machine_next.insert(machine.to_owned(), next);
        Ok(next)
    }

    fn apply_acks(&mut self, acks: Vec<(String, u64, AckReply)>) {
        let mut batch = WriteBatch::default();
        let mut answers = Vec::new();
        for (destination, through, done) in acks {
            let Some(cursor) = self.state.cursors.get_mut(&destination) else {
                let _ = done.send(Err(JournalError::UnknownDestination(destination)));
                continue;
            };
            // Never beyond what is durable; never backwards.
            let at = through.saturating_add(1).min(self.state.next_seq).max(*cursor);
            *cursor = at;
            batch.put(prefixed(CURSOR, destination.as_bytes()), at.to_be_bytes().to_vec());
            answers.push(done);
        }
        let result = self.store.apply(batch).and_then(|()| self.store.flush());
        let answer = result.map_err(|e| {
            self.failed = true;
            JournalError::from(e)
        });
        for done in answers {
            let _ = done.send(answer.clone());
        }
        if answer.is_ok() {
            self.prune(false);
        }
    }

    /// Removes records every destination has acknowledged, oldest first, one step at a time.
    fn prune(&mut self, early: bool) {
        if self.config().destinations.is_empty() {
            return;
        }
        let Some(&min) =
            self.config().destinations.iter().filter_map(|d| self.state.cursors.get(d)).min()
        else {
            return;
        };
        let keep_after = unix_ms()
            - i64::try_from(self.config().retain_acknowledged.as_millis()).unwrap_or(i64::MAX);
        // One step per call, not a loop to the end: the writer is single-threaded, so a loop
        // holds every append behind the whole removal (benches/journal.rs: an append waited
        // 2.4 s behind 200,000 acknowledged records; 1M take ~17 s to remove). `run` calls again
        // at once while `prune_more` is set, so appends interleave with the steps.
        self.prune_more = false;
        if !early && self.prune_idle_until.is_some_and(|t| unix_ms() < t) {
            // The oldest acknowledged record is still inside the retention period; reading it
            // again (and the 4095 after it) on every writer turn kept the writer busy for
            // nothing (benches/forward.rs found it: a fifth of a CPU during a replay).
            return;
        }
        if self.state.base.first_seq < min {
            let from = self.state.base.first_seq;
            let rows = match self.store.range(&record_key(from), &record_key(min), PRUNE_STEP) {
                Ok(rows) => rows,
                Err(error) => {
                    tracing::error!(%error, "Reading records to remove failed.");
                    return;
                }
            };
            let mut batch = WriteBatch::default();
            let mut base = self.state.base;
            let mut usage = self.state.usage;
            for (key, value) in &rows {
                let Ok(record) = Record::decode(value) else { break };
                if !early && record.header.appended_at_ms > keep_after {
                    let retain = self.config().retain_acknowledged.as_millis();
                    self.prune_idle_until = Some(
                        record
                            .header
                            .appended_at_ms
                            .saturating_add(i64::try_from(retain).unwrap_or(i64::MAX)),
                    );
                    break;
                }
                batch.remove(key.clone());
                usage.live_bytes = usage.live_bytes.saturating_sub(value.len() as u64);
                usage.records = usage.records.saturating_sub(1);
                if record.body.is_none() {
                    usage.compacted = usage.compacted.saturating_sub(1);
                }
                base.first_seq = record.header.seq + 1;
                base.anchor = record.record_hash();
            }
            if rows.is_empty() {
                // Nothing stored below `min` (all compacted away earlier, or never written).
                base.first_seq = min;
                base.anchor =
                    if min == self.state.next_seq { self.state.head } else { base.anchor };
            }
            if base == self.state.base {
                return;
            }
            batch.put(BASE, postcard::to_stdvec(&base).unwrap_or_default());
            batch.put(USAGE, postcard::to_stdvec(&usage).unwrap_or_default());
            if let Err(error) = self.store.apply(batch).and_then(|()| self.store.flush()) {
                tracing::error!(%error, "Removing acknowledged records failed.");
                self.failed = true;
                return;
            }
            self.state.base = base;
            self.state.usage = usage;
            self.prune_more = self.state.base.first_seq < min;
        }
    }

    /// Drops the bodies of unacknowledged periodic snapshots, from where it last stopped.
    fn compact(&mut self) {
        loop {
            let from = self.state.usage.compacted_through.max(self.state.base.first_seq);
            if from >= self.state.next_seq {
                return;
            }
            let rows = match self.store.range(
                &record_key(from),
                &record_key(self.state.next_seq),
                COMPACT_STEP,
            ) {
                Ok(rows) => rows,
                Err(error) => {
                    tracing::error!(%error, "Reading records to compact failed.");
                    return;
                }
            };
            let mut batch = WriteBatch::default();
            let mut usage = self.state.usage;
            for (key, value) in &rows {
                let Ok(mut record) = Record::decode(value) else { continue };
                usage.compacted_through = record.header.seq + 1;
                if record.header.class != Class::Snapshot || record.body.is_none() {
                    continue;
                }
                record.body = None;
                let bytes = record.encode();
                usage.live_bytes =
                    usage.live_bytes.saturating_sub(value.len() as u64) + bytes.len() as u64;
                usage.compacted += 1;
                batch.put(key.clone(), bytes);
            }
            if rows.is_empty() {
                usage.compacted_through = self.state.next_seq;
            }
            batch.put(USAGE, postcard::to_stdvec(&usage).unwrap_or_default());
            if let Err(error) = self.store.apply(batch).and_then(|()| self.store.flush()) {
                tracing::error!(%error, "Compacting snapshots failed.");
                self.failed = true;
                return;
            }
            let freed = self.state.usage.live_bytes.saturating_sub(usage.live_bytes);
            if usage.compacted > self.state.usage.compacted {
                tracing::warn!(
                    compacted = usage.compacted - self.state.usage.compacted,
                    freed_bytes = freed,
                    "Journal space is short: periodic meter snapshot bodies compacted."
                );
            }
            self.state.usage = usage;
        }
    }

    /// Periodic work between commands: pressure, early removal and compaction, checkpoints,
    /// status.
    fn maintain(&mut self) {
        if let Some(Err(error)) = self.watermark.as_mut().map(watermark::Watermark::sync) {
            tracing::warn!(%error, "Cannot flush the journal's high-water mark.");
        }
        if self.failed && self.reopen().is_err() {
            self.publish_status();
            return;
        }
        if self.level != Pressure::Full {
            self.refresh_pressure();
            if self.level >= Pressure::High {
                self.prune(true);
                self.compact();
                self.refresh_pressure();
            } else {
                self.prune(false);
            }
        } else {
            // Re-check the floor so appends resume on their own when space returns.
            let floor = self.config().disk_floor_bytes;
            let free = disk_free(&self.config().dir);
            if !self.failed
                && (floor == 0 || free.is_some_and(|f| f >= floor))
                && self.pending_alarms.is_empty()
            {
                self.set_level(Pressure::of(self.state.usage.live_bytes, self.config().cap_bytes));
                self.clear_alarm("journal_disk_floor");
            }
        }
        if !self.pending_alarms.is_empty() {
            self.append_group(Vec::new());
        }
        self.checkpoint(false);
        self.publish_status();
    }

    fn refresh_pressure(&mut self) {
        let level = Pressure::of(self.state.usage.live_bytes, self.config().cap_bytes);
        if level == self.level {
            return;
        }
        let rising = level > self.level;
        let previous = self.level;
        self.set_level(level);
        let cap = self.config().cap_bytes;
        let live = self.state.usage.live_bytes;
        if rising && level > Pressure::Normal {
            let message = format!(
                "journal holds {live} of {cap} bytes ({}), crossing {}",
                format_args!("{} %", live.saturating_mul(100) / cap.max(1)),
                level.threshold()
            );
            let severity = match level {
                Pressure::Elevated => "warning",
                Pressure::High => "error",
                _ => "critical",
            };
            self.raise("journal_capacity", severity, message);
        } else if !rising {
            tracing::info!(from = ?previous, to = ?level, live_bytes = live, "Journal usage fell.");
            if level == Pressure::Normal {
                self.clear_alarm("journal_capacity");
            }
        }
    }

    fn set_level(&mut self, level: Pressure) {
        self.level = level;
        self.pressure.send_replace(level);
    }

    /// Logs an alarm, lists it in the status and queues a record of it for upstream.
    fn raise(&mut self, alarm: &str, level: &str, message: String) {
        tracing::error!(alarm, level, "ALARM: {message}");
        self.note_alarm(alarm, &message);
        self.pending_alarms.push(NewRecord {
            class: Class::Alarm,
            machine: String::new(),
            machine_seq: None,
            body: Body::Alarm { alarm: alarm.to_owned(), level: level.to_owned(), message },
            snapshot_of: None,
        });
    }

    fn note_alarm(&mut self, alarm: &str, message: &str) {
        self.alarms.retain(|a| !a.starts_with(&format!("{alarm}:")));
        self.alarms.push(format!("{alarm}: {message}"));
    }

    fn clear_alarm(&mut self, alarm: &str) {
        self.alarms.retain(|a| !a.starts_with(&format!("{alarm}:")));
    }

    /// Drops the failed store and opens it again: sled latches its first I/O error, and what
    /// survived on disk, not what was in memory, is the truth.
    fn reopen(&mut self) -> Result<(), OpenError> {
        let dir = self.config().dir.clone();
        // sled holds a file lock until every reference to the old instance is gone.
        let unavailable: Arc<dyn Store> = Arc::new(store::Unavailable(dir.clone()));
        match self.shared.store.write() {
            Ok(mut guard) => *guard = unavailable.clone(),
            Err(poisoned) => *poisoned.into_inner() = unavailable.clone(),
        }
        self.store = unavailable;
        let store = SledStore::open(&dir, self.config().cache_bytes)?;
        let state = read_state(&store, &self.config().destinations)?;
        let store: Arc<dyn Store> = Arc::new(store);
        match self.shared.store.write() {
            Ok(mut guard) => *guard = store.clone(),
            Err(poisoned) => *poisoned.into_inner() = store.clone(),
        }
        self.store = store;
        self.state = state;
        self.machine_next.clear();
        self.failed = false;
        self.durable.send_replace(self.state.next_seq);
        tracing::warn!(next_seq = self.state.next_seq, "Journal store reopened after an error.");
        Ok(())
    }

    fn checkpoint(&mut self, force: bool) {
        let Some(settings) = self.config().checkpoints.clone() else { return };
        let head_seq = self.state.next_seq.checked_sub(1);
        let Some(seq) = head_seq.filter(|s| *s >= self.state.base.first_seq) else { return };
        if self.last_checkpoint == Some(seq) || self.failed {
            return;
        }
        if !force && self.last_checkpoint_at.elapsed() < settings.interval {
            return;
        }
        let cp = Checkpoint::sign(&settings.key, seq, self.state.head, unix_ms());
        let mut batch = WriteBatch::default();
        batch.put(prefixed(CHECKPOINT, &seq.to_be_bytes()), cp.encode());
        match self.store.apply(batch).and_then(|()| self.store.flush()) {
            Ok(()) => {
                self.last_checkpoint = Some(seq);
                self.last_checkpoint_at = Instant::now();
                tracing::debug!(seq, head = %record::hex(&cp.head), "Journal checkpoint signed.");
            }
            Err(error) => {
                tracing::error!(%error, "Writing a journal checkpoint failed.");
                self.failed = true;
            }
        }
    }

    fn publish_status(&mut self) {
        let mut status = status_of(
            self.config(),
            &self.state,
            &self.store,
            self.level,
            &self.alarms,
            self.last_checkpoint,
        );
        status.quarantined = self.quarantined.clone();
        self.status.send_replace(status);
    }
}

#[cfg(test)]
mod tests;
