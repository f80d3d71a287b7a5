//! Read-only inspection of a journal for `slotgate journal verify|stats|export`: chain and
//! checkpoint verification, counts, and a JSON-lines export.
//!
//! sled has no read-only mode and its open may repair files, so the store is copied to a
//! temporary directory and the copy is opened: the evidence is never changed, and a quarantined
//! store can be inspected the same way. Run it with the daemon stopped for an exact picture; on
//! a live store the copy is as consistent as a crash would leave it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use super::checkpoint::Checkpoint;
use super::record::{self, Body, Class, GENESIS, Hash, Record};
use super::store::{SledStore, Store};
use super::{
    BASE, Base, CHECKPOINT, CURSOR, RECORD, USAGE, Usage, record_key, seq_of_key, u64_value,
};

/// Records read per step.
const STEP: usize = 8192;

/// A journal copied and opened for reading.
#[derive(Debug)]
pub struct Snapshot {
    _copy: tempfile::TempDir,
    store: SledStore,
    pub source: PathBuf,
    /// The journal's high-water mark, if it left one ([`super::watermark`]).
    pub mark: Option<super::watermark::Mark>,
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
    /// Copies the store at `dir` and opens the copy.
    pub fn open(dir: &Path) -> Result<Self, InspectError> {
        let fail = |reason: String| InspectError { path: dir.to_path_buf(), reason };
        if !dir.join("conf").exists() && !dir.join("db").exists() {
            return Err(fail("not a journal directory (no sled files)".into()));
        }
        let copy = tempfile::Builder::new()
            .prefix("slotgate-journal-copy-")
            .tempdir()
            .map_err(|e| fail(format!("cannot make a temporary copy: {e}")))?;
        let target = copy.path().join("journal");
        copy_dir(dir, &target).map_err(|e| fail(format!("cannot copy the store: {e}")))?;
        let store = SledStore::open(&target, 16 << 20)
            .map_err(|e| fail(format!("the store cannot be opened: {e}")))?;
        let mark = super::watermark::read(&target);
        Ok(Self { _copy: copy, store, source: dir.to_path_buf(), mark })
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

    /// Calls `f` with every stored record entry in key order: the key's seq and the decoded
    /// record (or why it does not decode).
    pub fn for_each_record(
        &self,
        mut f: impl FnMut(Option<u64>, Result<Record, String>),
    ) -> Result<(), InspectError> {
        let mut from = record_key(0).to_vec();
        let end = vec![RECORD + 1];
        loop {
            let rows = self.store.range(&from, &end, STEP).map_err(|e| self.fail(e.to_string()))?;
            let Some((last_key, _)) = rows.last() else { return Ok(()) };
            let mut next = last_key.clone();
            next.push(0);
            for (key, value) in &rows {
                f(seq_of_key(key), Record::decode(value).map_err(|e| e.to_string()))
            }
            from = next;
        }
    }

    fn checkpoints(&self) -> Result<Vec<Result<Checkpoint, String>>, InspectError> {
        let rows = self
            .store
            .range(&[CHECKPOINT], &[CHECKPOINT + 1], usize::MAX)
            .map_err(|e| self.fail(e.to_string()))?;
        Ok(rows.iter().map(|(_, v)| Checkpoint::decode(v).map_err(|e| e.to_string())).collect())
    }

    fn records_bound(&self) -> Result<Option<u64>, InspectError> {
        let last =
            self.store.last_in(&[RECORD], &[RECORD + 1]).map_err(|e| self.fail(e.to_string()))?;
        Ok(last.and_then(|(k, _)| seq_of_key(&k)))
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
    /// Records the journal flushed that the store no longer has (its high-water mark is ahead).
    pub lost_tail: Option<Break>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.first_break.is_none()
            && self.checkpoint_problems.is_empty()
            && self.lost_tail.is_none()
    }
}

/// Walks the whole chain and every checkpoint.
pub fn verify(snapshot: &Snapshot, trusted: &[VerifyingKey]) -> Result<VerifyReport, InspectError> {
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
    snapshot.for_each_record(|key_seq, decoded| {
        records += 1;
        let at = key_seq.unwrap_or(expected_seq);
        let problem = match (&decoded, key_seq) {
            (_, None) => Some("malformed record key".to_owned()),
            (Err(e), _) => Some(format!("record does not decode: {e}")),
            (Ok(r), Some(k)) if r.header.seq != k => {
                Some(format!("key {k} holds record {} (moved or swapped)", r.header.seq))
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
    let next_seq = snapshot.records_bound()?.map_or(base.first_seq, |s| s + 1);
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
    let lost_tail = snapshot.mark.filter(|m| m.next_seq > next_seq).map(|m| Break {
        seq: next_seq,
        reason: format!(
            "records {next_seq} to {} were flushed but the store no longer has them",
            m.next_seq - 1
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
    let usage: Usage = match snapshot.store.get(USAGE).map_err(|e| snapshot.fail(e.to_string()))? {
        Some(b) => postcard::from_bytes(&b).unwrap_or_default(),
        None => Usage::default(),
    };
    let mut by_class = BTreeMap::new();
    let mut machines = std::collections::BTreeSet::new();
    let (mut records, mut compacted) = (0, 0);
    let (mut oldest, mut newest) = (None, None);
    snapshot.for_each_record(|_, r| {
        records += 1;
        if let Ok(r) = r {
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
        next_seq: snapshot.records_bound()?.map_or(base.first_seq, |s| s + 1),
        records,
        by_class,
        machines: machines.len() as u64,
        compacted,
        live_bytes: usage.live_bytes,
        size_on_disk: snapshot.store.size_on_disk().unwrap_or(0),
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
