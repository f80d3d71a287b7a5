//! The durable event journal: every event reaches a forwarder only through here, and a machine
//! is acknowledged only after its event is here durably. This doc is the design document.
//!
//! # Contract
//!
//! - **Durable before acknowledged.** [`Journal::append`] returns only after the records are
//!   in the log and `fdatasync` returned. The poller confirms a session's events — and so lets
//!   the next, implied-ACK poll go out — only after that return (`HostSession::confirm_events`).
//! - **Group commit.** One writer thread owns all writes. It takes every request waiting in its
//!   queue, writes their frames with one `write` and one `fdatasync`, then answers them all, so
//!   concurrent pollers share a sync.
//! - **Gap-free sequence numbers.** Records are numbered by the gateway, contiguously; the
//!   number is in the record and orders the log.
//! - **Per-destination cursors.** Each configured destination has a cursor: the first sequence
//!   number it has not acknowledged. A segment file is removed only when every configured
//!   destination has acknowledged all of it and its newest record is older than
//!   `retain_acknowledged`; with none configured nothing is ever removed.
//! - **Idempotent appends.** An event whose per-machine sequence number is below the machine's
//!   recorded next number is already durable (a retry after a failed write whose data survived,
//!   a resumed exchange) and is skipped, so retries never duplicate records.
//!
//! # Two stores, one rule (issue 14)
//!
//! Records — an append-only FIFO with acknowledgements and time-based retention — live in our
//! own segmented log ([`log`], the design of vector's disk buffer v2 and Kafka's segments).
//! sled 0.34.7 holds only the small keyed state ([`store`]): cursors, per-machine heads, last
//! meter snapshots, checkpoints, the base and the journalled gaps. sled held the records too
//! until issue 14 and could not at the law's scale (ARCHITECTURE.md, BENCHMARKS.md: ≈ 45 B of
//! RAM per record, a whole-log replay at open, 1.34 KB on disk per 837-byte record, space never
//! returned, damage recovered by silently dropping the rest of its log).
//!
//! **The log is the truth for records; the keyed state carries the log position it reflects**
//! (`P`). The writer syncs the log, answers, then applies the keyed changes to sled; sled is
//! flushed on the writer's tick (0.5 s), after acknowledgements and checkpoints, and at close.
//! Open re-applies every record from `P` to the end of the log (machine heads, snapshots), so a
//! kill or power cut between the two writes loses nothing and counts nothing twice: the heads
//! are maxima and the snapshots "last one wins", both idempotent.
//!
//! # Files
//!
//! ```text
//! <dir>/log/00000000000000000000.seg           segments, named by their first seq (20 digits)
//! <dir>/log/00000000000000000000.seg.sealing   a sealed file being written (removed at open)
//! <dir>/state/                                 sled: the keyed state
//! ```
//!
//! Every segment starts with a 16-byte header: the layout's magic (8 bytes, its version) and
//! the first seq (u64 LE). Two layouts, both read everywhere ([`log::format_of`]):
//!
//! **`SGJLOG01`, plain** — the active segment (and every segment written before issue 14's
//! compression, and a sealed one that holds damage): frames back to back:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | `SGF1`, the frame marker (resynchronisation point after damage) |
//! | 4..8 | payload length, u32 LE (≤ 16 MiB) |
//! | 8..12 | CRC-32 (IEEE) of the length bytes and the payload, u32 LE |
//! | 12.. | payload: postcard [`record::Envelope`] (the record format below) |
//!
//! **`SGJLOG02`, sealed** — blocks, then a block index, then a trailer:
//!
//! | bytes | block field |
//! |---|---|
//! | 0..4 | `SGB1`, the block marker (resynchronisation point after damage) |
//! | 4..8 | compressed length, u32 LE (≤ 16 MiB) |
//! | 8..12 | raw length, u32 LE |
//! | 12..20 | seq of the block's first record, u64 LE |
//! | 20..24 | records in the block, u32 LE |
//! | 24..56 | anchor: the first record's `prev_hash` |
//! | 56..60 | CRC-32 of bytes 4..56 and the compressed bytes, u32 LE |
//! | 60.. | one zstd frame of the raw bytes: per record, its length (u32 LE) and postcard [`record::SealedEnvelope`] |
//!
//! Index: `SGBI`, block count (u32 LE), per block its first seq and file offset (u64 LE each),
//! CRC-32 of count and entries (u32 LE). Trailer, the file's last 16 bytes: the index's offset
//! (u64 LE) and `SGJLEND1`. A block gathers about 128 KiB of raw records; a record whose
//! `prev_hash` is not its predecessor's hash (after a gap) starts a new block, so the anchors
//! keep every link as it was.
//!
//! A segment is full when it reaches [`segment_bytes`] (1/64 of the cap, 4 KiB to 16 MiB)
//! at the end of a group; the next group starts a new file and the full one is handed to the
//! sealer thread ([`log`]), which replaces it by its sealed file; compression never delays an
//! append. Full segments are otherwise never written again; the active one is only appended to
//! (and cut back at open). Readers keep a sparse index of plain segments (every 256th seq →
//! segment and offset) filled as they and the writer go, so a forwarder's sequential reads
//! never rescan; in a sealed segment a read starts at the block that holds its first seq
//! (the block index) and decompresses block by block.
//!
//! Two reads, one path ([`log::Readable`]): [`Journal::read`] returns checked [`Record`]s — in
//! a sealed segment both hashes recomputed, two SHA-256 per record — for verification, export,
//! checkpoints and re-applying at open; [`Journal::read_entries`] returns [`Entry`]s (seq,
//! append time, class, body; no hashes, nothing recomputed) for the forwarders, which never
//! send the chain. Readers cache a few sealed blocks: decoded records for the checked read
//! (each hash needs its predecessor's), the raw decompressed bytes for the forwarders' read,
//! which decodes only the records it returns, straight into its answer. The frame's or
//! block's CRC-32 guards the bytes of both; tampering that kept the CRCs is `journal
//! verify`'s and the checkpoints' to find, not the forwarders'.
//!
//! Keyed state (one sled tree, so one batch is atomic across all of it):
//!
//! | key | value |
//! |---|---|
//! | `C` + destination name | cursor: u64 BE, first unacknowledged seq |
//! | `N` + registry id | the machine's next per-machine seq, u64 BE |
//! | `S` + registry id + `/` + poll code [+ game number, 2 bytes big-endian, for game N ≠ 0] | the machine's last meter snapshot of that poll (and game) (canonical JSON) |
//! | `K` + seq (u64 BE) | a signed [`checkpoint::Checkpoint`] of the chain head at `seq` |
//! | `A` + first seq (u64 BE) | last seq (u64 BE) of an unreadable range already journalled |
//! | `B` | [`Base`]: first kept seq, the chain anchor before it, the machine-seq floor |
//! | `P` | the log position the keyed state reflects, u64 BE |
//!
//! # Record format
//!
//! `Envelope::V1(RecordV1 { header, prev_hash, body })`. The header holds the seq, append time,
//! [`Class`], machine id, per-machine seq and `body_hash = SHA-256(postcard(body))`; the body is
//! the canonical event's JSON bytes plus the raw SAS bytes it came from (or an alarm). New
//! layouts are new enum variants, never edits of old ones; leftover bytes on decode are an error
//! (postcard would ignore them, §B6). Golden bytes in `record.rs` tests pin the layout. Plain
//! segments store records exactly as the sled layout stored them, so migration copies bytes and
//! every hash and checkpoint stays valid.
//!
//! Sealed segments store `SealedEnvelope::V1(SealedV1 { seq, appended_at_ms, class, machine,
//! machine_seq, body })` — the header without `body_hash`, and no `prev_hash`: both are
//! recomputed on read (`prev_hash` from the block's anchor and each predecessor's
//! `record_hash`), 64 incompressible bytes less per record. A body that is missing (compacted in
//! the sled layout) or no longer matches its hash is stored as `Stored { body_hash, body }`, so
//! sealing reproduces every record exactly, evidence of tampering included.
//!
//! # Hash chain and checkpoints
//!
//! `record_hash = SHA-256("slotgate-journal-v1" ‖ prev_hash ‖ postcard(header))`, and each
//! record's `prev_hash` is its predecessor's `record_hash` (the first kept one's is the base
//! anchor, which moves with each removed segment). An edited body breaks its `body_hash` (and,
//! unless the CRC was recomputed, the frame); an edited, removed, inserted or swapped record
//! breaks the next link. Every `checkpoint_interval` (and at stop) the writer signs the head
//! with Ed25519 ([`checkpoint`]); a truncated tail shows as a checkpoint beyond the last record.
//! In a sealed segment only the block anchors are stored, so an edit that also fixed
//! `body_hash` shows at the next block's (or segment's) link and at the next checkpoint rather
//! than at the edited record; an edit that left the hash shows at the record itself.
//! `slotgate journal verify` checks all of it, reading the log in place and a copy of the keyed
//! state (sled has no read-only mode), so it never changes the evidence ([`verify`]).
//!
//! # Durability points
//!
//! 1. Append: `write` of the group's frames, then `fdatasync` of the active segment — then and
//!    only then the answers. Against a power cut, not only a kill: `tests/journal_crash.rs` and
//!    `tests/daemon_crash.rs` cut the power under the writer on a FUSE file system that drops
//!    whatever was not synced (`tests/powercut`).
//! 2. Roll: the new segment's header is written and synced, then its directory (`fsync`), so a
//!    synced frame is never in a file whose name the cut took away.
//! 3. Keyed state: sled's flush followed by `fdatasync` of its log and `fsync` of its
//!    directories ([`store::SledStore`]; sled's own flush ends in `sync_file_range`, which is
//!    not durable). Acknowledgements and checkpoints flush at once; machine heads on the tick.
//! 4. Removal (vector PR #25570's crash-loop lesson): the writer applies the new base to sled
//!    and forgets the segment (index, byte count); the sealer thread then flushes sled (point
//!    3), unlinks the file and syncs the directory — ledger first, file after, and no append
//!    waits for either. A crash in between leaves a file below the base, which open unlinks;
//!    a missing file is never an error. If the flush fails the file stays until the next open.
//! 5. Sealing (after the roll, on the sealer thread): the sealed file is written to
//!    `<segment>.sealing` with the plain file's modification time, `fsync`ed, renamed over the
//!    plain segment, and the directory synced. Before the rename the plain segment is whole (it
//!    was synced frame by frame); after it, at every moment, the name holds one whole file,
//!    plain or sealed. Sealing and unlinking run on the same thread, and the rename checks
//!    under a lock that the writer has not forgotten the segment meanwhile, so a removed
//!    segment is never renamed back into existence. Sealing streams: one raw block in memory
//!    at a time, not a segment's worth of decoded records.
//!
//! A failed write or sync is answered as an error to every request in the group (the pollers
//! keep the machines unacknowledged and retry), the segment is cut back to where the group
//! began, and the writer reopens log and keyed state from what is actually on disk.
//!
//! # Capacity and retention
//!
//! `cap` bounds the segment bytes (as they are on disk: sealed segments compressed). Sealing
//! shrinks a segment after it was counted, so a level is left only once usage is two segments
//! below its threshold (no alarm flapping). Alarms fire as usage crosses 50, 80 and 95 % ([`Pressure`]):
//! a record in the journal (so it goes upstream), an error log, and the status. Acknowledged
//! segments are kept until `retain_acknowledged` after their newest record (a sealed segment's
//! modification time); from 80 % they are removed before that, and a `journal_retention` alarm
//! says the cap is too small for the retention — never silently. Pollers read [`Pressure`] and
//! space out periodic snapshots from 80 %, then stop them. Financial and significant events are
//! never refused for the cap. The hard limit is `disk_floor`: below that much free space events
//! are refused (the machines hold them, unacknowledged) and an alarm is raised; alarm records,
//! being tiny, are still written. Appends resume by themselves when space returns. (The sled
//! layout compacted periodic snapshot bodies in place; an append-only log cannot, and removing
//! whole acknowledged segments is what returns space now.)
//!
//! # Recovery (each case a test in `tests/journal_corruption.rs`, `tests/journal_crash.rs`)
//!
//! Open reads the keyed state, lists the segment files, and scans the active segment only, so
//! it does not grow with the backlog.
//!
//! - **Torn tail** (kill or power cut mid-write): bytes after the last whole frame of the active
//!   segment that hold no frame are cut off. Only frames after the last completed `fdatasync`
//!   can be torn, and none of them was acknowledged.
//! - **Killed while sealing**: a `.sealing` file (whole or half-written) is unlinked at open;
//!   the plain segment it was made from is still there and is queued for sealing again, as is
//!   every plain segment other than the active one (so a journal written before compression
//!   is sealed in the background after the upgrade). A segment with damage stays plain.
//! - **Sealed last segment** (the active one went missing): never appended to; a new active
//!   segment starts after its last record (and after `P`, see below).
//! - **Corrupt frame** (CRC or decode fails) with good frames after it, in any segment, a
//!   **corrupt block** of a sealed segment (it costs the block's records, about 128 KiB of
//!   them; a damaged block index costs nothing, readers then walk the blocks), and a
//!   **missing or garbled segment**: the readable records before and after are kept and
//!   forwarded; readers resynchronise on the next frame or block marker whose CRC checks. The unreadable
//!   seq range is journalled once as a `journal_gap_<first>` alarm record (remembered under
//!   `A`), listed in the status and reported by `journal verify`; upstream sees the seqs jump.
//!   The daemon always starts.
//! - **Keyed state behind the log** (killed before sled's flush): re-applied from `P`.
//! - **Keyed state ahead of the log** (`P` beyond the last record: the log lost durable
//!   records): a gap alarm, and seqs continue above `P`, never reissued.
//! - **Keyed state unusable** (sled reports corruption): `state/` is moved to
//!   `quarantine/journal-state-<time>` and rebuilt from the log: base from the first segment,
//!   heads and snapshots by re-applying every record, cursors at the first kept record (records
//!   are sent again, never lost), a `journal_quarantined` alarm. Machines whose every record was
//!   already removed have no head in the log; every machine's seq jumps to
//!   `unix seconds × 10⁶` so idempotency keys never repeat.
//! - **Old layout** (sled records, issue 4): migrated on the first open ([`migrate`]).

pub mod checkpoint;
pub mod log;
pub mod migrate;
pub mod record;
pub mod store;
pub mod verify;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use self::checkpoint::Checkpoint;
use self::log::{Index, LogWriter, Readable};
pub use self::record::{Body, Class, Entry, Hash, Record};
use self::record::{GENESIS, Header};
use self::store::{SledStore, Store, StoreError, WriteBatch};
use crate::event::{CanonicalEvent, EventKind, SnapshotTrigger};

const CURSOR: u8 = b'C';
const MACHINE_NEXT: u8 = b'N';
const SNAPSHOT: u8 = b'S';
const CHECKPOINT: u8 = b'K';
/// A journalled gap: `A` + first seq (u64 BE) → last seq (u64 BE).
const GAP: u8 = b'A';
const BASE: &[u8] = b"B";
/// The log position the keyed state reflects: every record below it has been applied.
const POSITION: &[u8] = b"P";

/// The record log's directory and the keyed state's, inside the journal directory.
pub const LOG_DIR: &str = "log";
pub const STATE_DIR: &str = "state";

/// How often the writer flushes the keyed state that appends changed (machine heads,
/// snapshots, `P`); acknowledgements, rewinds and checkpoints flush at once.
const KEYED_TICK: Duration = Duration::from_millis(500);

/// Records read per step when the keyed state catches up with the log.
const REAPPLY_STEP: usize = 4096;

fn prefixed(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(prefix);
    k.extend_from_slice(rest);
    k
}

fn u64_value(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// Segment size for a cap: small enough that acknowledged space is returned in steps of 1/64
/// of the cap and that open reads (only) the active segment quickly, at most 16 MiB.
pub fn segment_bytes(cap_bytes: u64) -> u64 {
    (cap_bytes / 64).clamp(4 << 10, 16 << 20)
}

/// How the journal is set up; built from the `[journal]` configuration section.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// The journal's directory (`log/` and `state/` inside).
    pub dir: PathBuf,
    /// Where unusable keyed state is moved.
    pub quarantine_dir: PathBuf,
    /// Record bytes the journal aims to stay under.
    pub cap_bytes: u64,
    /// Free space below which events are refused.
    pub disk_floor_bytes: u64,
    /// sled's cache (keyed state), in bytes.
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

/// How short space is. Pollers space out low-value polling from `High`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pressure {
    Normal,
    /// ≥ 50 % of the cap.
    Elevated,
    /// ≥ 80 %: acknowledged segments removed early, snapshots spaced out.
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
    /// Active alarms, newest last (unreadable record ranges among them, as `journal_gap`).
    pub alarms: Vec<String>,
    pub last_checkpoint_seq: Option<u64>,
    /// When the oldest record some destination has not acknowledged was appended; none when
    /// every destination has everything (`slotgate status` shows its age).
    #[serde(default)]
    pub oldest_unacknowledged_at: Option<jiff::Timestamp>,
    /// The keyed state was unusable at this open and was moved here (records are unaffected).
    pub quarantined: Option<PathBuf>,
}

/// One record to append.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub class: Class,
    pub machine: String,
    pub machine_seq: Option<u64>,
    pub body: Body,
    /// For meter snapshots: the poll code and game under which the machine's last snapshot is
    /// kept.
    pub snapshot_of: Option<(Option<u8>, u16)>,
}

impl NewRecord {
    /// A gateway audit record (`software_id`, `config_changed`, `replay`): significant class
    /// (never refused for the cap, never compacted), `level` info, the JSON of `what` as its
    /// message.
    pub fn audit(name: &str, what: &impl Serialize) -> Self {
        Self {
            class: Class::Significant,
            machine: String::new(),
            machine_seq: None,
            body: Body::Alarm {
                alarm: name.to_owned(),
                level: "info".to_owned(),
                message: serde_json::to_string(what).unwrap_or_default(),
            },
            snapshot_of: None,
        }
    }

    /// A canonical event with the raw SAS bytes it came from.
    pub fn event(event: &CanonicalEvent, raw: &[u8]) -> Result<Self, JournalError> {
        let canonical_json = serde_json::to_vec(event)?;
        Ok(Self {
            class: class_of(event),
            machine: event.machine.registry_id.to_string(),
            machine_seq: Some(event.machine_seq),
            body: Body::Event { canonical_json, raw: raw.to_vec() },
            snapshot_of: snapshot_code(event),
        })
    }
}

/// The poll and game a snapshot answers: the last one of each is kept per machine, so that a
/// restart continues every game's meters (LP2F for game N), not only the last game read.
fn snapshot_code(event: &CanonicalEvent) -> Option<(Option<u8>, u16)> {
    match event.kind {
        EventKind::MeterSnapshot { game_number, .. } => Some((event.source.code, game_number)),
        _ => None,
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
    /// A replay asked for records that were removed (acknowledged and past retention).
    #[error(
        "the journal no longer keeps records from there: the oldest kept record is {oldest}{}",
        oldest_at.map(|t| format!(", appended at {t}")).unwrap_or_default()
    )]
    NotKept { oldest: u64, oldest_at: Option<jiff::Timestamp> },
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

fn log_error(dir: &Path, operation: &'static str, e: &std::io::Error) -> StoreError {
    StoreError { path: dir.to_path_buf(), operation, message: e.to_string(), corrupt: false }
}

/// Where appended records landed: `first..next` (empty when all were already durable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub first: u64,
    pub next: u64,
}

type AppendReply = oneshot::Sender<Result<Appended, JournalError>>;
type AckReply = oneshot::Sender<Result<(), JournalError>>;
type RewindReply = oneshot::Sender<Result<u64, JournalError>>;

enum Command {
    Append {
        records: Vec<NewRecord>,
        done: AppendReply,
    },
    Ack {
        destination: String,
        through: u64,
        done: AckReply,
    },
    /// A reader met unreadable records (inclusive seq ranges).
    Gaps(Vec<(u64, u64)>),
    Rewind {
        destination: String,
        to: u64,
        done: RewindReply,
    },
}

struct Shared {
    store: RwLock<Arc<dyn Store>>,
    index: Arc<Index>,
    /// The first kept seq: reads start no lower.
    first_seq: AtomicU64,
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
    #[error("cannot move the unusable keyed state {from} to {to}: {source}")]
    Quarantine { from: PathBuf, to: PathBuf, source: std::io::Error },
    #[error("journal {dir}: {reason}")]
    Invalid { dir: PathBuf, reason: String },
}

/// The writer's view, rebuilt at open and after a failure.
#[derive(Debug, Clone)]
struct State {
    base: Base,
    next_seq: u64,
    head: Hash,
    cursors: BTreeMap<String, u64>,
}

/// What open recovered, ready for the writer.
struct Opened {
    store: Arc<dyn Store>,
    log: LogWriter,
    state: State,
    /// Unreadable ranges found at open, to journal as alarms.
    gaps: Vec<(u64, u64)>,
    quarantined: Option<PathBuf>,
    /// Bytes of a torn tail cut off the active segment.
    torn_bytes: u64,
}

fn keyed_base(store: &dyn Store) -> Result<Option<Base>, OpenError> {
    match store.get(BASE)? {
        Some(bytes) => {
            postcard::from_bytes::<Base>(&bytes).map(Some).map_err(|e| OpenError::Invalid {
                dir: store.path().to_path_buf(),
                reason: format!("base entry unreadable: {e}"),
            })
        }
        None => Ok(None),
    }
}

fn read_cursors(
    store: &dyn Store,
    destinations: &[String],
    first: u64,
) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut cursors = BTreeMap::new();
    for (key, value) in store.range(&[CURSOR], &[CURSOR + 1], usize::MAX)? {
        let name = String::from_utf8_lossy(key.get(1..).unwrap_or_default()).into_owned();
        if let Some(at) = u64_value(&value) {
            cursors.insert(name, at);
        }
    }
    for d in destinations {
        cursors.entry(d.clone()).or_insert(first);
    }
    Ok(cursors)
}

/// Opens the keyed state, moving it to quarantine if sled cannot use it.
fn open_keyed(config: &JournalConfig) -> Result<(SledStore, Option<PathBuf>), OpenError> {
    let dir = config.dir.join(STATE_DIR);
    match SledStore::open(&dir, config.cache_bytes) {
        Ok(store) => Ok((store, None)),
        Err(error) if error.corrupt => {
            let to = quarantine(config, &dir)?;
            tracing::error!(
                %error,
                moved_to = %to.display(),
                "ALARM: the journal's keyed state is corrupt; it was moved to quarantine and is \
                 rebuilt from the record log. Destination cursors restart at the first kept \
                 record (records are sent again, never lost)."
            );
            Ok((SledStore::open(&dir, config.cache_bytes)?, Some(to)))
        }
        Err(error) => Err(error.into()),
    }
}

fn open_parts(config: &JournalConfig, index: &Arc<Index>) -> Result<Opened, OpenError> {
    migrate::migrate_if_needed(config)?;
    let (store, quarantined) = open_keyed(config)?;
    let log_dir = config.dir.join(LOG_DIR);
    let invalid = |reason: String| OpenError::Invalid { dir: config.dir.clone(), reason };
    let known = keyed_base(&store)?;
    let base = match known {
        Some(base) => base,
        None => {
            // No keyed state (new journal, or rebuilt after quarantine): the log says where it
            // starts.
            let segments = std::fs::read_dir(&log_dir)
                .ok()
                .and_then(|_| log::list_segments(&log_dir).ok())
                .unwrap_or_default();
            match segments.iter().next() {
                Some((first, path)) => {
                    let record = log::first_record(path, *first)
                        .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
                    let floor =
                        if quarantined.is_some() { seq_floor_after_quarantine() } else { 0 };
                    match record {
                        Some(r) => Base {
                            first_seq: r.header.seq,
                            anchor: r.prev_hash,
                            machine_seq_floor: floor,
                        },
                        None => {
                            Base { first_seq: *first, anchor: GENESIS, machine_seq_floor: floor }
                        }
                    }
                }
                None => Base { first_seq: 0, anchor: GENESIS, machine_seq_floor: 0 },
            }
        }
    };
    let (log, recovered) =
        LogWriter::open(&log_dir, base.first_seq, segment_bytes(config.cap_bytes), index)
            .map_err(|e| log_error(&log_dir, "open log", &e))?;
    let mut gaps = recovered.gaps;
    let mut next_seq = recovered.next_seq;
    let mut head = match &recovered.last {
        Some(r) if r.header.seq >= base.first_seq => r.record_hash(),
        _ => base.anchor,
    };
    let position = match store.get(POSITION)? {
        Some(v) if known.is_some() => u64_value(&v).unwrap_or(base.first_seq),
        _ => base.first_seq,
    };
    if position > next_seq {
        // The keyed state saw records the log no longer has: they were durable, so this is
        // damage, not a torn tail. Never hand their seqs out again.
        gaps.push((next_seq, position - 1));
        next_seq = position;
        head = GENESIS;
    }
    let state = State {
        base,
        next_seq,
        head,
        cursors: read_cursors(&store, &config.destinations, base.first_seq)?,
    };
    let store: Arc<dyn Store> = Arc::new(store);
    reapply(store.as_ref(), index, &state, position.min(next_seq), known.is_none())?;
    Ok(Opened { store, log, state, gaps, quarantined, torn_bytes: recovered.torn_bytes })
}

/// Brings the keyed state up to the log: machine heads and last snapshots of every record from
/// `position` on, then the new position, in one batch, flushed.
fn reapply(
    store: &dyn Store,
    index: &Index,
    state: &State,
    position: u64,
    write_base: bool,
) -> Result<(), OpenError> {
    let mut from = position;
    let mut batch = WriteBatch::default();
    let mut heads: HashMap<String, u64> = HashMap::new();
    while from < state.next_seq {
        let out = index
            .read::<Record>(from, state.next_seq, REAPPLY_STEP)
            .map_err(|e| log_error(store.path(), "re-apply the log", &e))?;
        let Some(last) = out.records.last() else { break };
        from = last.header.seq + 1;
        for record in &out.records {
            apply_keyed(store, &mut batch, &mut heads, record)?;
        }
    }
    for (machine, next) in heads {
        batch.put(prefixed(MACHINE_NEXT, machine.as_bytes()), next.to_be_bytes().to_vec());
    }
    if write_base {
        batch.put(BASE, postcard::to_stdvec(&state.base).unwrap_or_default());
    }
    batch.put(POSITION, state.next_seq.to_be_bytes().to_vec());
    store.apply(batch)?;
    store.flush()?;
    Ok(())
}

/// The keyed state one record implies: its machine's next seq and, for a meter snapshot, the
/// machine's last snapshot of that poll.
fn apply_keyed(
    store: &dyn Store,
    batch: &mut WriteBatch,
    heads: &mut HashMap<String, u64>,
    record: &Record,
) -> Result<(), StoreError> {
    if let Some(machine_seq) = record.header.machine_seq {
        let current = match heads.get(&record.header.machine) {
            Some(n) => *n,
            None => store
                .get(&prefixed(MACHINE_NEXT, record.header.machine.as_bytes()))?
                .and_then(|v| u64_value(&v))
                .unwrap_or(0),
        };
        heads.insert(record.header.machine.clone(), current.max(machine_seq + 1));
    }
    if let Some(Body::Event { canonical_json, .. }) = &record.body
        && matches!(record.header.class, Class::Snapshot | Class::Financial)
        && let Ok(event) = serde_json::from_slice::<CanonicalEvent>(canonical_json)
        && let Some(code) = snapshot_code(&event)
    {
        batch.put(snapshot_key(&record.header.machine, code), canonical_json.clone());
    }
    Ok(())
}

fn snapshot_key(machine: &str, (code, game): (Option<u8>, u16)) -> Vec<u8> {
    let mut key = prefixed(SNAPSHOT, machine.as_bytes());
    key.push(b'/');
    key.push(code.unwrap_or(0));
    // Game 0 (the machine) keeps the key it always had.
    if game != 0 {
        key.extend_from_slice(&game.to_be_bytes());
    }
    key
}

impl Journal {
    /// Opens (or creates, or migrates) the journal and starts its writer thread. Damage is
    /// reported, never fatal (module doc, Recovery).
    pub fn open(config: JournalConfig) -> Result<(Self, WriterHandle), OpenError> {
        crate::durable::create_dir_all(&config.dir)
            .map_err(|e| OpenError::Invalid { dir: config.dir.clone(), reason: e.to_string() })?;
        let index = Arc::new(Index::default());
        let opened = open_parts(&config, &index)?;
        let shared = Arc::new(Shared {
            store: RwLock::new(opened.store.clone()),
            index,
            first_seq: AtomicU64::new(opened.state.base.first_seq),
            config,
        });
        let status = JournalStatus {
            quarantined: opened.quarantined.clone(),
            ..status_of(
                &shared.config,
                &opened.state,
                opened.log.bytes(),
                &opened.store,
                Pressure::Normal,
                &[],
                None,
            )
        };
        let (durable_tx, durable) = watch::channel(opened.state.next_seq);
        let (status_tx, status_rx) = watch::channel(status);
        let (pressure_tx, pressure) = watch::channel(Pressure::Normal);
        let (tx, rx) = std_mpsc::channel();
        let mut writer = Writer {
            oldest_unacknowledged: None,
            shared: shared.clone(),
            store: opened.store,
            log: Some(opened.log),
            state: opened.state,
            failed: false,
            keyed_dirty: false,
            keyed_flushed_at: writer_now(),
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
            last_checkpoint_at: writer_now(),
            quarantined: opened.quarantined,
        };
        if let Some(to) = &writer.quarantined {
            let message = format!(
                "unusable keyed state moved to {}; rebuilt from the record log",
                to.display()
            );
            writer.raise("journal_quarantined", "error", message);
        }
        if opened.torn_bytes > 0 {
            tracing::warn!(
                bytes = opened.torn_bytes,
                "The journal's last segment ended in a torn write (never acknowledged); cut off."
            );
        }
        writer.note_gaps(opened.gaps);
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

    /// Moves `destination`'s cursor back to `to` (never forward), durably, so that everything
    /// from `to` on is sent to it again (`slotgate replay`); returns the cursor now. Refused
    /// with [`JournalError::NotKept`] if `to` is below the oldest kept record. Only the
    /// destination's forwarder may call it, between its own acknowledgements: the writer
    /// checks and moves the cursor in one step, so removal cannot race it.
    pub async fn rewind(&self, destination: &str, to: u64) -> Result<u64, JournalError> {
        let (done, answer) = oneshot::channel();
        let destination = destination.to_owned();
        self.tx
            .send(Command::Rewind { destination, to, done })
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// Refuses a replay from `from` if the journal no longer keeps it, naming the oldest kept
    /// record and its time. A quick look only: [`Journal::rewind`] checks again in the writer.
    pub fn check_kept(&self, from: u64) -> Result<(), JournalError> {
        let first = self.shared.first_seq.load(Ordering::Acquire);
        if from >= first {
            return Ok(());
        }
        // Only seq and append time are wanted: no hash needs recomputing.
        let oldest = self.read_entries(first, 1)?.first().map(|e| (e.seq, e.appended_at_ms));
        Err(JournalError::NotKept {
            oldest: oldest.map_or(first, |(seq, _)| seq),
            oldest_at: oldest.and_then(|(_, ms)| jiff::Timestamp::from_millisecond(ms).ok()),
        })
    }

    /// The first durable record appended at or after `at`, by binary search over the kept
    /// records (appended times follow seqs); the durable end if none is. Refused with
    /// [`JournalError::NotKept`] if records from before `at` may have been removed.
    pub fn seq_at(&self, at: jiff::Timestamp) -> Result<u64, JournalError> {
        let wanted = at.as_millisecond();
        let first = self.shared.first_seq.load(Ordering::Acquire);
        let appended = |seq: u64| -> Result<Option<(u64, i64)>, JournalError> {
            Ok(self.read_entries(seq, 1)?.first().map(|e| (e.seq, e.appended_at_ms)))
        };
        if first > 0
            && let Some((oldest, oldest_ms)) = appended(first)?
            && oldest_ms > wanted
        {
            let oldest_at = jiff::Timestamp::from_millisecond(oldest_ms).ok();
            return Err(JournalError::NotKept { oldest, oldest_at });
        }
        let (mut low, mut high) = (first, *self.durable.borrow());
        while low < high {
            let mid = low + (high - low) / 2;
            match appended(mid)? {
                Some((seq, ms)) if ms < wanted => low = seq + 1,
                _ => high = mid,
            }
        }
        Ok(low)
    }

    /// Up to `limit` durable records from `from` on, in order, their hashes recomputed where
    /// a sealed segment does not store them. Unreadable records (damage) are skipped, and the
    /// writer journals an alarm naming their seq range.
    pub fn read(&self, from: u64, limit: usize) -> Result<Vec<Record>, JournalError> {
        self.read_as(from, limit)
    }

    /// [`Journal::read`] for sending: the same records as [`Entry`]s, without the chain's
    /// hashes, so a sealed segment is read without recomputing them (the forwarders' read).
    pub fn read_entries(&self, from: u64, limit: usize) -> Result<Vec<Entry>, JournalError> {
        self.read_as(from, limit)
    }

    fn read_as<T: Readable>(&self, from: u64, limit: usize) -> Result<Vec<T>, JournalError> {
        let durable = *self.durable.borrow();
        let from = from.max(self.shared.first_seq.load(Ordering::Acquire));
        if from >= durable {
            return Ok(Vec::new());
        }
        let out = self
            .shared
            .index
            .read(from, durable, limit)
            .map_err(|e| JournalError::Store(format!("reading the journal's log: {e}")))?;
        let mut gaps = out.gaps;
        // Removal may have moved the start past `from` while this read ran: not a gap.
        let first = self.shared.first_seq.load(Ordering::Acquire);
        gaps.retain(|(_, last)| *last >= first);
        if !gaps.is_empty() {
            let _ = self.tx.send(Command::Gaps(gaps));
        }
        Ok(out.records)
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
        let floor = keyed_base(store.as_ref())
            .map_err(|e| JournalError::Store(e.to_string()))?
            .map_or(0, |b| b.machine_seq_floor);
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

fn quarantine(config: &JournalConfig, dir: &Path) -> Result<PathBuf, OpenError> {
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
    let mut to = config.quarantine_dir.join(format!("journal-state-{stamp}"));
    let mut n = 1;
    while to.exists() {
        to = config.quarantine_dir.join(format!("journal-state-{stamp}-{n}"));
        n += 1;
    }
    let fail = |source| OpenError::Quarantine { from: dir.to_path_buf(), to: to.clone(), source };
    crate::durable::create_dir_all(&config.quarantine_dir).map_err(fail)?;
    crate::durable::rename(dir, &to).map_err(fail)?;
    Ok(to)
}

/// Above every machine seq issued before: a machine whose head went with quarantined keyed
/// state restarts here, so idempotency keys never repeat.
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
    log_bytes: u64,
    store: &Arc<dyn Store>,
    pressure: Pressure,
    alarms: &[String],
    last_checkpoint: Option<u64>,
) -> JournalStatus {
    JournalStatus {
        dir: config.dir.clone(),
        first_seq: state.base.first_seq,
        next_seq: state.next_seq,
        live_bytes: log_bytes,
        cap_bytes: config.cap_bytes,
        records: state.next_seq.saturating_sub(state.base.first_seq),
        compacted: 0,
        size_on_disk: log_bytes + store.size_on_disk().unwrap_or(0),
        disk_free: disk_free(&config.dir),
        pressure,
        cursors: state.cursors.clone(),
        alarms: alarms.to_vec(),
        last_checkpoint_seq: last_checkpoint,
        oldest_unacknowledged_at: None,
        quarantined: None,
    }
}

struct Writer {
    shared: Arc<Shared>,
    /// The lowest cursor and its record's append time, as last read.
    oldest_unacknowledged: Option<(u64, Option<jiff::Timestamp>)>,
    store: Arc<dyn Store>,
    /// `None` only while being reopened.
    log: Option<LogWriter>,
    state: State,
    /// A write failed; reopen (recover from what is on disk) before the next write.
    failed: bool,
    /// Keyed state applied but not yet flushed (the log has it: open re-applies it).
    keyed_dirty: bool,
    /// When the keyed state was last flushed by the tick.
    keyed_flushed_at: Instant,
    /// The last pruning step removed a segment and more are removable (see `prune`).
    prune_more: bool,
    /// Unix ms before which the oldest acknowledged segment is still retained.
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
}

impl Writer {
    fn config(&self) -> &JournalConfig {
        &self.shared.config
    }

    fn log_bytes(&self) -> u64 {
        self.log.as_ref().map_or(0, LogWriter::bytes)
    }

    fn run(mut self, rx: std_mpsc::Receiver<Command>) {
        loop {
            let wait = if self.prune_more { Duration::ZERO } else { KEYED_TICK };
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
        self.flush_keyed();
        // The sealer finishes its queue (seals, removals) while the keyed state is still open.
        self.log = None;
        tracing::info!(next_seq = self.state.next_seq, "Journal closed.");
    }

    fn handle(&mut self, commands: Vec<Command>) {
        let mut appends = Vec::new();
        let mut acks = Vec::new();
        let mut rewinds = Vec::new();
        for command in commands {
            match command {
                Command::Append { records, done } => appends.push((records, done)),
                Command::Ack { destination, through, done } => {
                    acks.push((destination, through, done))
                }
                Command::Gaps(gaps) => self.note_gaps(gaps),
                Command::Rewind { destination, to, done } => rewinds.push((destination, to, done)),
            }
        }
        if self.failed
            && let Err(error) = self.reopen()
        {
            let error = JournalError::Store(format!("journal unavailable: {error}"));
            for (_, done) in appends {
                let _ = done.send(Err(error.clone()));
            }
            for (_, _, done) in acks {
                let _ = done.send(Err(error.clone()));
            }
            for (_, _, done) in rewinds {
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
        for (destination, to, done) in rewinds {
            let _ = done.send(self.rewind(&destination, to));
        }
    }

    /// [`Journal::rewind`] in the writer: checked against the oldest kept record and stored
    /// before the answer.
    fn rewind(&mut self, destination: &str, to: u64) -> Result<u64, JournalError> {
        let oldest = self.state.base.first_seq;
        let Some(&cursor) = self.state.cursors.get(destination) else {
            return Err(JournalError::UnknownDestination(destination.to_owned()));
        };
        if to < oldest {
            return Err(JournalError::NotKept { oldest, oldest_at: self.appended_at(oldest) });
        }
        let at = to.min(cursor);
        let mut batch = WriteBatch::default();
        batch.put(prefixed(CURSOR, destination.as_bytes()), at.to_be_bytes().to_vec());
        self.store.apply(batch).and_then(|()| self.store.flush()).map_err(|e| {
            self.failed = true;
            JournalError::from(e)
        })?;
        self.state.cursors.insert(destination.to_owned(), at);
        self.publish_status();
        Ok(at)
    }

    /// Raises an alarm, once, for each unreadable seq range (the keyed state remembers which
    /// were journalled, so a restart does not repeat them).
    fn note_gaps(&mut self, gaps: Vec<(u64, u64)>) {
        for (first, last) in gaps {
            let key = prefixed(GAP, &first.to_be_bytes());
            let message = format!(
                "journal records {first} to {last} are unreadable (damaged or missing segment \
                 data); the records before and after are kept and forwarded"
            );
            if !matches!(self.store.get(&key), Ok(None)) {
                self.note_alarm(&format!("journal_gap_{first}"), &message);
                continue;
            }
            let mut batch = WriteBatch::default();
            batch.put(key, last.to_be_bytes().to_vec());
            if let Err(error) = self.store.apply(batch) {
                tracing::warn!(%error, "Cannot note a journal gap in the keyed state.");
            }
            self.keyed_dirty = true;
            self.raise(&format!("journal_gap_{first}"), "critical", message);
        }
    }

    /// One group commit: every waiting append in one log write and one `fdatasync`, then all
    /// answers; the keyed state follows (applied now, flushed on the tick).
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
            // the floor, the refused events are not.
            if self.pending_alarms.is_empty() {
                return;
            }
        }
        let saved = (self.state.clone(), self.machine_next.clone());
        let mut records = Vec::new();
        let mut batch = WriteBatch::default();
        let alarms = std::mem::take(&mut self.pending_alarms);
        let unwritten_alarms = alarms.clone();
        let mut spans = Vec::with_capacity(appends.len());
        let mut touched: HashSet<String> = HashSet::new();
        let now = unix_ms();
        let staged = (|| -> Result<(), StoreError> {
            for record in alarms {
                self.stage(&mut records, &mut batch, record, now, &mut touched)?;
            }
            for (group, _) in &mut appends {
                let first = self.state.next_seq;
                // Moved, not cloned: a failed group is answered with an error and the
                // pollers send their events again.
                for record in std::mem::take(group) {
                    self.stage(&mut records, &mut batch, record, now, &mut touched)?;
                }
                spans.push(Appended { first, next: self.state.next_seq });
            }
            Ok(())
        })();
        let dir = self.config().dir.clone();
        let result = staged.and_then(|()| {
            let log = self.log.as_mut().ok_or_else(|| {
                log_error(&dir, "append", &std::io::Error::other("the log is being reopened"))
            })?;
            if !records.is_empty() {
                log.append(&records).map_err(|e| log_error(&dir, "append", &e))?;
            }
            log.roll_if_full(self.state.next_seq)
                .map_err(|e| log_error(&dir, "start a segment", &e))?;
            Ok(())
        });
        match result {
            Ok(()) => {
                self.durable.send_replace(self.state.next_seq);
                for ((_, done), span) in appends.into_iter().zip(spans) {
                    let _ = done.send(Ok(span));
                }
                for machine in &touched {
                    if let Some(next) = self.machine_next.get(machine) {
                        batch.put(
                            prefixed(MACHINE_NEXT, machine.as_bytes()),
                            next.to_be_bytes().to_vec(),
                        );
                    }
                }
                batch.put(POSITION, self.state.next_seq.to_be_bytes().to_vec());
                if let Err(error) = self.store.apply(batch) {
                    // The records are durable in the log; the keyed state is rebuilt from it.
                    tracing::error!(%error, "Updating the journal's keyed state failed.");
                    self.failed = true;
                }
                self.keyed_dirty = true;
                if self.level == Pressure::Full && !below_floor {
                    self.set_level(Pressure::of(self.log_bytes(), self.config().cap_bytes));
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

    /// Adds one record to the group, unless it is a durable event's duplicate.
    fn stage(
        &mut self,
        records: &mut Vec<Record>,
        batch: &mut WriteBatch,
        record: NewRecord,
        now: i64,
        touched: &mut HashSet<String>,
    ) -> Result<(), StoreError> {
        if let Some(machine_seq) = record.machine_seq {
            let next = self.next_machine_seq(&record.machine)?;
            if machine_seq < next {
                return Ok(());
            }
            self.machine_next.insert(record.machine.clone(), machine_seq + 1);
            if !touched.contains(&record.machine) {
                touched.insert(record.machine.clone());
            }
        }
        if let (Some(code), Body::Event { canonical_json, .. }) = (record.snapshot_of, &record.body)
        {
            batch.put(snapshot_key(&record.machine, code), canonical_json.clone());
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
        self.state.head = stored.record_hash();
        records.push(stored);
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

    fn flush_keyed(&mut self) {
        if !std::mem::take(&mut self.keyed_dirty) {
            return;
        }
        if let Err(error) = self.store.flush() {
            tracing::warn!(%error, "Flushing the journal's keyed state failed; the log has it.");
            self.failed = true;
        }
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
        if answer.is_ok() {
            self.keyed_dirty = false;
        }
        for done in answers {
            let _ = done.send(answer.clone());
        }
        if answer.is_ok() {
            self.prune_idle_until = None;
            self.prune(false);
        }
    }

    /// Removes the oldest segment if every destination has acknowledged all of it and (unless
    /// space is short) its newest record is older than `retain_acknowledged`. The ledger (the
    /// keyed state's base) moves first; the sealer thread flushes it and unlinks the file
    /// after, so a crash in between leaves a file open removes, never a ledger pointing at
    /// nothing.
    fn prune(&mut self, early: bool) {
        self.prune_more = false;
        if self.config().destinations.is_empty() {
            return;
        }
        let Some(&min) =
            self.config().destinations.iter().filter_map(|d| self.state.cursors.get(d)).min()
        else {
            return;
        };
        let now = unix_ms();
        if !early && self.prune_idle_until.is_some_and(|t| now < t) {
            return;
        }
        // The oldest two, and the third to know whether another removal may follow.
        let oldest = self.shared.index.segments_from(0, 3);
        let (Some((first, path)), Some((next_first, next_path))) = (oldest.first(), oldest.get(1))
        else {
            return;
        };
        let (first, next_first) = (*first, *next_first);
        if next_first > min {
            return;
        }
        // A sealed segment's modification time is when its last record was written.
        let retain =
            i64::try_from(self.config().retain_acknowledged.as_millis()).unwrap_or(i64::MAX);
        let written = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .unwrap_or(0);
        let until = written.saturating_add(retain);
        if now < until {
            if !early {
                self.prune_idle_until = Some(until);
                return;
            }
            // Space decides over retention, but never silently: the cap is too small for the
            // configured retention, and the regulator's copy is what is lost.
            if !self.alarms.iter().any(|a| a.starts_with("journal_retention:")) {
                let age_h = now.saturating_sub(written) / 3_600_000;
                let message = format!(
                    "the cap of {} bytes forced removal of acknowledged records {first} to {} \
                     after {age_h} h, before retain_acknowledged expired; raise the cap",
                    self.config().cap_bytes,
                    next_first - 1
                );
                self.raise("journal_retention", "error", message);
            }
        }
        let anchor = match log::first_record(next_path, next_first) {
            Ok(Some(r)) if r.header.seq == next_first => r.prev_hash,
            _ => match log::last_record(path, first) {
                Ok(Some(r)) => r.record_hash(),
                _ => GENESIS,
            },
        };
        let base = Base { first_seq: next_first, anchor, ..self.state.base };
        let mut batch = WriteBatch::default();
        batch.put(BASE, postcard::to_stdvec(&base).unwrap_or_default());
        if let Err(error) = self.store.apply(batch) {
            tracing::error!(%error, "Removing an acknowledged segment failed.");
            self.failed = true;
            return;
        }
        self.keyed_dirty = true;
        self.state.base = base;
        self.shared.first_seq.store(next_first, Ordering::Release);
        // The sealer thread flushes this ledger, then unlinks: the writer waits for neither.
        // A weak reference, so a queued removal never keeps a reopened store's files locked.
        let store = Arc::downgrade(&self.store);
        let ledger: log::Ledger = Box::new(move || match store.upgrade() {
            Some(store) => store.flush().map_err(std::io::Error::other),
            None => Err(std::io::Error::other("the keyed state was reopened meanwhile")),
        });
        if let Some(log) = self.log.as_mut() {
            log.remove(first, next_first, ledger);
        }
        self.prune_more = oldest.get(2).is_some_and(|(n, _)| *n <= min);
    }

    /// Periodic work between commands: keyed-state flush, pressure, removal, checkpoints,
    /// status.
    fn maintain(&mut self) {
        // On the tick, not after every group: a group's answer never waits for a sled flush
        // of the group before it (the log has the records; open re-applies them).
        if self.keyed_flushed_at.elapsed() >= KEYED_TICK {
            self.flush_keyed();
            self.keyed_flushed_at = writer_now();
        }
        if self.failed && self.reopen().is_err() {
            self.publish_status();
            return;
        }
        if self.level != Pressure::Full {
            self.refresh_pressure();
            self.prune(self.level >= Pressure::High);
            if self.level >= Pressure::High {
                self.refresh_pressure();
            }
        } else {
            let floor = self.config().disk_floor_bytes;
            let free = disk_free(&self.config().dir);
            if !self.failed
                && (floor == 0 || free.is_some_and(|f| f >= floor))
                && self.pending_alarms.is_empty()
            {
                self.set_level(Pressure::of(self.log_bytes(), self.config().cap_bytes));
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
        let live = self.log_bytes();
        let cap = self.config().cap_bytes;
        let mut level = Pressure::of(live, cap);
        if level < self.level {
            // Sealing shrinks segments after they were counted: a level is left only once
            // usage is two segments below its threshold, so alarms do not flap around it.
            level = Pressure::of(live.saturating_add(2 * segment_bytes(cap)), cap).min(self.level);
        }
        if level == self.level {
            return;
        }
        let rising = level > self.level;
        let previous = self.level;
        self.set_level(level);
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

    /// Closes log and keyed state and opens them again: after a failed write what survived on
    /// disk, not what was in memory, is the truth (and sled latches its first I/O error).
    fn reopen(&mut self) -> Result<(), OpenError> {
        let dir = self.config().dir.clone();
        let unavailable: Arc<dyn Store> = Arc::new(store::Unavailable(dir.join(STATE_DIR)));
        match self.shared.store.write() {
            Ok(mut guard) => *guard = unavailable.clone(),
            Err(poisoned) => *poisoned.into_inner() = unavailable.clone(),
        }
        self.store = unavailable;
        self.log = None;
        let config = self.config().clone();
        let opened = open_parts(&config, &self.shared.index)?;
        match self.shared.store.write() {
            Ok(mut guard) => *guard = opened.store.clone(),
            Err(poisoned) => *poisoned.into_inner() = opened.store.clone(),
        }
        self.store = opened.store;
        self.log = Some(opened.log);
        self.state = opened.state;
        self.shared.first_seq.store(self.state.base.first_seq, Ordering::Release);
        self.machine_next.clear();
        self.failed = false;
        self.keyed_dirty = false;
        self.durable.send_replace(self.state.next_seq);
        self.note_gaps(opened.gaps);
        tracing::warn!(next_seq = self.state.next_seq, "Journal reopened after an error.");
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
                self.keyed_dirty = false;
                self.last_checkpoint = Some(seq);
                self.last_checkpoint_at = writer_now();
                tracing::debug!(seq, head = %record::hex(&cp.head), "Journal checkpoint signed.");
            }
            Err(error) => {
                tracing::error!(%error, "Writing a journal checkpoint failed.");
                self.failed = true;
            }
        }
    }

    /// The append time of the first record below some destination's cursor, read once per
    /// position of the lowest cursor.
    fn oldest_unacknowledged_at(&mut self) -> Option<jiff::Timestamp> {
        let destinations = &self.shared.config.destinations;
        let lowest =
            destinations.iter().filter_map(|d| self.state.cursors.get(d)).min().copied()?;
        if lowest >= self.state.next_seq {
            return None;
        }
        if let Some((seq, at)) = self.oldest_unacknowledged
            && seq == lowest
        {
            return at;
        }
        let at = self.appended_at(lowest);
        self.oldest_unacknowledged = Some((lowest, at));
        at
    }

    /// When the first readable record from `seq` on was appended.
    fn appended_at(&self, seq: u64) -> Option<jiff::Timestamp> {
        // Only the append time is wanted: no hash needs recomputing.
        let out = self.shared.index.read::<Entry>(seq, self.state.next_seq, 1).ok()?;
        let ms = out.records.first()?.appended_at_ms;
        jiff::Timestamp::from_millisecond(ms).ok()
    }

    fn publish_status(&mut self) {
        let mut status = status_of(
            self.config(),
            &self.state,
            self.log_bytes(),
            &self.store,
            self.level,
            &self.alarms,
            self.last_checkpoint,
        );
        status.quarantined = self.quarantined.clone();
        status.oldest_unacknowledged_at = self.oldest_unacknowledged_at();
        self.status.send_replace(status);
    }
}

/// The writer is a thread of its own, outside the runtime, and must not depend on one: its
/// checkpoint interval runs on the real monotonic clock (one clock: the only such read).
#[allow(clippy::disallowed_methods)]
fn writer_now() -> Instant {
    Instant::now()
}

#[cfg(test)]
mod tests;
