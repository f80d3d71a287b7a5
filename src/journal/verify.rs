//! Read-only inspection of a journal for `slotgate journal verify|stats|export`: chain and
//! checkpoint verification, unreadable ranges, counts, and a JSON-lines export.
//!
//! The record log is read in place (segment files are only ever appended to, cut back at open,
//! replaced whole by their sealed file through a rename, or unlinked; never rewritten in place). sled has no read-only mode and its open may repair files, so
//! the keyed state is copied to a temporary directory and the copy is opened; a journal still
//! in the old sled layout ([`super::migrate`]) is copied whole and the copy migrated. The
//! evidence is never changed. Run it with the daemon stopped for an exact picture; on a live
//! journal the picture is as consistent as a crash would leave it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use super::checkpoint::Checkpoint;
use super::log::{self, Item};
use super::record::{self, Body, Class, GENESIS, Hash, Record};
use super::store::{SledStore, Store};
use super::{BASE, Base, CHECKPOINT, CURSOR, GAP, LOG_DIR, POSITION, STATE_DIR, u64_value};

/// A journal opened for reading.
#[derive(Debug)]
pub struct Snapshot {
    _copy: tempfile::TempDir,
    store: SledStore,
    log_dir: PathBuf,
    pub source: PathBuf,
}

/// Why a journal could not be inspected.
#[derive(Debug, thiserror::Error)]
#[error("journal {path}: {reason}")]
pub struct InspectError {
    pub path: PathBuf,
    pub reason: String,
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

impl Snapshot {
    /// Opens the journal at `dir` for reading (module doc).
    pub fn open(dir: &Path) -> Result<Self, InspectError> {
        let fail = |reason: String| InspectError { path: dir.to_path_buf(), reason };
        let old = super::migrate::is_old_layout(dir);
        if !old && !dir.join(STATE_DIR).exists() && !dir.join(LOG_DIR).exists() {
            return Err(fail("not a journal directory (no log/ or state/)".into()));
        }
        let copy = tempfile::Builder::new()
            .prefix("slotgate-journal-copy-")
            .tempdir()
            .map_err(|e| fail(format!("cannot make a temporary copy: {e}")))?;
        let target = copy.path().join("journal");
        let log_dir = if old {
            copy_dir(dir, &target).map_err(|e| fail(format!("cannot copy the journal: {e}")))?;
            super::migrate::migrate_if_needed(&super::JournalConfig::in_dir(&target))
                .map_err(|e| fail(format!("the old layout cannot be read: {e}")))?;
            target.join(LOG_DIR)
        } else {
            if dir.join(STATE_DIR).exists() {
                copy_dir(&dir.join(STATE_DIR), &target.join(STATE_DIR))
                    .map_err(|e| fail(format!("cannot copy the keyed state: {e}")))?;
            }
            dir.join(LOG_DIR)
        };
        let store = SledStore::open(&target.join(STATE_DIR), 16 << 20)
            .map_err(|e| fail(format!("the keyed state cannot be opened: {e}")))?;
        Ok(Self { _copy: copy, store, log_dir, source: dir.to_path_buf() })
    }

    fn base(&self) -> Result<Base, InspectError> {
        match self.store.get(BASE).map_err(|e| self.fail(e.to_string()))? {
            Some(bytes) => postcard::from_bytes(&bytes)
                .map_err(|e| self.fail(format!("base entry unreadable: {e}"))),
            None => Ok(Base { first_seq: 0, anchor: GENESIS, machine_seq_floor: 0 }),
        }
    }

    fn fail(&self, reason: String) -> InspectError {
        InspectError { path: self.source.clone(), reason }
    }

    /// Bytes of the log's segment files.
    fn log_bytes(&self) -> u64 {
        log::list_segments(&self.log_dir)
            .unwrap_or_default()
            .values()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Calls `f` with every kept record in log order (`Some(seq)` and the record), and with
    /// every stretch of damaged bytes (`None` and where it is). A torn tail of the last segment
    /// (a write that never completed, so was never acknowledged) is not damage.
    pub fn for_each_record(
        &self,
        mut f: impl FnMut(Option<u64>, Result<Record, String>),
    ) -> Result<(), InspectError> {
        let first_kept = self.base()?.first_seq;
        let segments = match log::list_segments(&self.log_dir) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.fail(format!("cannot list the log: {e}"))),
        };
        for (first, path) in &segments {
            let bytes = std::fs::read(path)
                .map_err(|e| self.fail(format!("cannot read {}: {e}", path.display())))?;
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let format = log::scan_segment(&bytes, *first, |item| {
                match item {
                    Item::Record { record, .. } if record.header.seq >= first_kept => {
                        f(Some(record.header.seq), Ok(*record))
                    }
                    Item::Record { .. } | Item::Torn { .. } => {}
                    Item::Garbage { offset, end } => f(
                        None,
                        Err(format!("segment {name}: damaged bytes at offsets {offset}..{end}")),
                    ),
                }
                true
            });
            if format.is_none() {
                f(None, Err(format!("segment {name}: header is not that of segment {first}")));
            }
        }
        Ok(())
    }

    fn checkpoints(&self) -> Result<Vec<Result<Checkpoint, String>>, InspectError> {
        let rows = self
            .store
            .range(&[CHECKPOINT], &[CHECKPOINT + 1], usize::MAX)
            .map_err(|e| self.fail(e.to_string()))?;
        Ok(rows.iter().map(|(_, v)| Checkpoint::decode(v).map_err(|e| e.to_string())).collect())
    }

    /// Unreadable ranges the journal found and journalled as alarms.
    fn journalled_gaps(&self) -> Result<BTreeMap<u64, u64>, InspectError> {
        let rows = self
            .store
            .range(&[GAP], &[GAP + 1], usize::MAX)
            .map_err(|e| self.fail(e.to_string()))?;
        Ok(rows
            .iter()
            .filter_map(|(k, v)| Some((u64_value(k.get(1..)?)?, u64_value(v)?)))
            .collect())
    }

    /// The log position the keyed state reflects: records below it were durable.
    fn position(&self) -> Result<Option<u64>, InspectError> {
        let v = self.store.get(POSITION).map_err(|e| self.fail(e.to_string()))?;
        Ok(v.and_then(|v| u64_value(&v)))
    }
}

/// The first problem found, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    /// The seq at which the chain breaks (the key's seq, or the expected one).
    pub seq: u64,
    pub reason: String,
}

/// What `journal verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub records: u64,
    pub first_seq: u64,
    pub next_seq: u64,
    pub compacted: u64,
    pub checkpoints: u64,
    pub checkpoints_verified: u64,
    /// The first broken link of the chain, if any.
    pub first_break: Option<Break>,
    /// Checkpoint problems (bad signature, untrusted key, head mismatch, truncation).
    pub checkpoint_problems: Vec<Break>,
    /// Records the journal flushed that the log no longer has (the keyed state saw them).
    pub lost_tail: Option<Break>,
    /// Every unreadable or missing seq range, each with whether the journal already
    /// journalled it as an alarm (`journal_gap_<first>`).
    pub gaps: Vec<Break>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.first_break.is_none()
            && self.checkpoint_problems.is_empty()
            && self.lost_tail.is_none()
            && self.gaps.is_empty()
    }
}

/// Walks the whole chain and every checkpoint.
pub fn verify(snapshot: &Snapshot, trusted: &[VerifyingKey]) -> Result<VerifyReport, InspectError> {
    verify_with_progress(snapshot, trusted, |_| {})
}

/// [`verify`], calling `progress` with the records read so far.
pub fn verify_with_progress(
    snapshot: &Snapshot,
    trusted: &[VerifyingKey],
    mut progress: impl FnMut(u64),
) -> Result<VerifyReport, InspectError> {
    let base = snapshot.base()?;
    let mut expected_seq = base.first_seq;
    let mut prev: Hash = base.anchor;
    let mut first_break: Option<Break> = None;
    let mut records = 0u64;
    let mut compacted = 0u64;
    let mut hashes: BTreeMap<u64, Hash> = BTreeMap::new();
    let checkpoints = snapshot.checkpoints()?;
    let wanted: std::collections::BTreeSet<u64> =
        checkpoints.iter().filter_map(|c| c.as_ref().ok().map(|c| c.seq)).collect();
    let journalled = snapshot.journalled_gaps()?;
    let mut gaps = Vec::new();
    let mut damage: Vec<String> = Vec::new();
    snapshot.for_each_record(|key_seq, decoded| {
        let at = key_seq.unwrap_or(expected_seq);
        if let Err(e) = &decoded {
            damage.push(e.clone());
            return;
        }
        records += 1;
        progress(records);
        if let Some(k) = key_seq.filter(|k| *k > expected_seq) {
            let noted = if journalled.get(&expected_seq).is_some_and(|last| *last + 1 >= k) {
                "journalled as an alarm"
            } else {
                "not yet journalled"
            };
            let why = if damage.is_empty() { "missing".into() } else { damage.join("; ") };
            gaps.push(Break {
                seq: expected_seq,
                reason: format!("records {expected_seq} to {} unreadable ({why}; {noted})", k - 1),
            });
            damage.clear();
        }
        let problem = match (&decoded, key_seq) {
            (_, None) => Some("malformed record".to_owned()),
            (Err(e), _) => Some(format!("record does not decode: {e}")),
            (Ok(r), Some(k)) if r.header.seq != k => {
                Some(format!("key {k} holds record {} (moved or swapped)", r.header.seq))
            }
            (Ok(_), Some(k)) if k < expected_seq => {
                Some(format!("expected record {expected_seq}, found {k}: out of order"))
            }
            (Ok(_), Some(k)) if k != expected_seq => {
                Some(format!("expected record {expected_seq}, found {k}: records missing"))
            }
            (Ok(r), Some(_)) if r.prev_hash != prev => {
                Some("previous-hash link does not match the preceding record (edited, removed or reordered)".into())
            }
            (Ok(r), Some(_)) => match &r.body {
                Some(body) if record::body_hash(body) != r.header.body_hash => {
                    Some("body does not match its hash (edited)".into())
                }
                None if r.header.class != Class::Snapshot => Some(format!(
                    "a {} record has no body: only periodic snapshots may be compacted",
                    r.header.class.name()
                )),
                _ => None,
            },
        };
        if let Ok(r) = &decoded {
            if r.body.is_none() {
                compacted += 1;
            }
            let hash = r.record_hash();
            if wanted.contains(&r.header.seq) {
                hashes.insert(r.header.seq, hash);
            }
            prev = hash;
            expected_seq = r.header.seq.max(at) + 1;
        } else {
            expected_seq = at + 1;
        }
        if first_break.is_none()
            && let Some(reason) = problem
        {
            first_break = Some(Break { seq: at, reason });
        }
    })?;
    let next_seq = expected_seq;
    let mut problems = Vec::new();
    let mut verified = 0;
    for cp in &checkpoints {
        let cp = match cp {
            Ok(cp) => cp,
            Err(e) => {
                problems.push(Break { seq: 0, reason: format!("checkpoint unreadable: {e}") });
                continue;
            }
        };
        if let Err(reason) = cp.verify(trusted) {
            problems
                .push(Break { seq: cp.seq, reason: format!("checkpoint {}: {reason}", cp.seq) });
            continue;
        }
        if cp.seq >= next_seq {
            problems.push(Break {
                seq: cp.seq,
                reason: format!(
                    "checkpoint {} is beyond the last record {}: records were removed from the end",
                    cp.seq,
                    next_seq.saturating_sub(1)
                ),
            });
            continue;
        }
        match hashes.get(&cp.seq) {
            Some(h) if *h == cp.head => verified += 1,
            Some(_) => problems.push(Break {
                seq: cp.seq,
                reason: format!(
                    "checkpoint {}: the chain head differs from the signed one",
                    cp.seq
                ),
            }),
            // Removed after every destination acknowledged it: nothing left to compare.
            None if cp.seq < base.first_seq => verified += 1,
            None => problems.push(Break {
                seq: cp.seq,
                reason: format!("checkpoint {}: its record is missing", cp.seq),
            }),
        }
    }
    let lost_tail = snapshot.position()?.filter(|p| *p > next_seq).map(|p| Break {
        seq: next_seq,
        reason: format!(
            "records {next_seq} to {} were durable but the log no longer has them",
            p - 1
        ),
    });
    Ok(VerifyReport {
        lost_tail,
        records,
        first_seq: base.first_seq,
        next_seq,
        compacted,
        checkpoints: checkpoints.len() as u64,
        checkpoints_verified: verified,
        first_break,
        checkpoint_problems: problems,
        gaps,
    })
}

/// What `journal stats` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub source: PathBuf,
    pub first_seq: u64,
    pub next_seq: u64,
    pub records: u64,
    pub by_class: BTreeMap<&'static str, u64>,
    pub machines: u64,
    pub compacted: u64,
    pub live_bytes: u64,
    pub size_on_disk: u64,
    pub cursors: BTreeMap<String, u64>,
    pub checkpoints: u64,
    pub oldest_ms: Option<i64>,
    pub newest_ms: Option<i64>,
}

pub fn stats(snapshot: &Snapshot) -> Result<Stats, InspectError> {
    let base = snapshot.base()?;
    let mut by_class = BTreeMap::new();
    let mut machines = std::collections::BTreeSet::new();
    let (mut records, mut compacted, mut next_seq) = (0, 0, base.first_seq);
    let (mut oldest, mut newest) = (None, None);
    snapshot.for_each_record(|_, r| {
        if let Ok(r) = r {
            records += 1;
            next_seq = next_seq.max(r.header.seq + 1);
            *by_class.entry(r.header.class.name()).or_insert(0) += 1;
            if !r.header.machine.is_empty() {
                machines.insert(r.header.machine.clone());
            }
            compacted += u64::from(r.body.is_none());
            oldest = oldest.or(Some(r.header.appended_at_ms));
            newest = Some(r.header.appended_at_ms);
        }
    })?;
    let mut cursors = BTreeMap::new();
    let rows = snapshot
        .store
        .range(&[CURSOR], &[CURSOR + 1], usize::MAX)
        .map_err(|e| snapshot.fail(e.to_string()))?;
    for (k, v) in rows {
        cursors.insert(String::from_utf8_lossy(&k[1..]).into_owned(), u64_value(&v).unwrap_or(0));
    }
    Ok(Stats {
        source: snapshot.source.clone(),
        first_seq: base.first_seq,
        next_seq,
        records,
        by_class,
        machines: machines.len() as u64,
        compacted,
        live_bytes: snapshot.log_bytes(),
        size_on_disk: snapshot.log_bytes() + snapshot.store.size_on_disk().unwrap_or(0),
        cursors,
        checkpoints: snapshot.checkpoints()?.len() as u64,
        oldest_ms: oldest,
        newest_ms: newest,
    })
}

/// One exported line.
#[derive(Debug, Serialize)]
struct Exported<'a> {
    seq: u64,
    appended_at: String,
    class: &'static str,
    machine: &'a str,
    machine_seq: Option<u64>,
    record_hash: String,
    prev_hash: String,
    compacted: bool,
    /// The canonical event, as stored.
    event: Option<serde_json::Value>,
    /// Raw SAS bytes, hex.
    raw: Option<String>,
    alarm: Option<serde_json::Value>,
}

/// Writes every record as a JSON line; `progress` is called with the records written so far.
pub fn export(
    snapshot: &Snapshot,
    out: &mut dyn Write,
    mut progress: impl FnMut(u64),
) -> Result<u64, InspectError> {
    let mut written = 0u64;
    let mut failure: Option<String> = None;
    snapshot.for_each_record(|key_seq, decoded| {
        if failure.is_some() {
            return;
        }
        let line = match decoded {
            Ok(r) => {
                let (event, raw, alarm) = match &r.body {
                    Some(Body::Event { canonical_json, raw }) => (
                        serde_json::from_slice(canonical_json).ok(),
                        Some(raw.iter().map(|b| format!("{b:02x}")).collect()),
                        None,
                    ),
                    Some(Body::Alarm { alarm, level, message }) => (
                        None,
                        None,
                        Some(
                            serde_json::json!({"alarm": alarm, "level": level, "message": message}),
                        ),
                    ),
                    None => (None, None, None),
                };
                let appended_at = jiff::Timestamp::from_millisecond(r.header.appended_at_ms)
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                serde_json::to_string(&Exported {
                    seq: r.header.seq,
                    appended_at,
                    class: r.header.class.name(),
                    machine: &r.header.machine,
                    machine_seq: r.header.machine_seq,
                    record_hash: record::hex(&r.record_hash()),
                    prev_hash: record::hex(&r.prev_hash),
                    compacted: r.body.is_none(),
                    event,
                    raw,
                    alarm,
                })
            }
            Err(e) => serde_json::to_string(&serde_json::json!({
                "seq": key_seq, "error": format!("record does not decode: {e}")
            })),
        };
        let result = line
            .map_err(|e| e.to_string())
            .and_then(|l| writeln!(out, "{l}").map_err(|e| e.to_string()));
        match result {
            Ok(()) => {
                written += 1;
                if written.is_multiple_of(10_000) {
                    progress(written);
                }
            }
            Err(e) => failure = Some(e),
        }
    })?;
    if let Some(reason) = failure {
        return Err(snapshot.fail(format!("export failed: {reason}")));
    }
    progress(written);
    Ok(written)
}
