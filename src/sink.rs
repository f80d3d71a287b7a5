//! The durable event file: canonical events as JSON lines, appended and fsynced before the poller
//! acknowledges the machine that reported them. Until the journal (issue 4) takes over this role,
//! it is where "durable" is decided.
//!
//! # Group commit
//! One writer task owns the file. Pollers send batches with a reply channel; the writer takes
//! every batch that is waiting, writes them in arrival order, calls `fsync` once (`sync_data`) and
//! only then answers all of them. Concurrent pollers therefore share one flush, and a poller's
//! answer means its lines are on disk.
//!
//! # Failure
//! A write or flush error is answered with the error, never with success: the poller then keeps
//! the machine un-acknowledged (the machine holds its exception queue) and retries the same batch,
//! so a full disk delays events and loses none. Lines written before a failed flush may be on disk
//! and may be written again by the retry; every event carries its idempotency key, so a reader
//! sees a duplicate, never a loss.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use tokio::sync::{mpsc, oneshot};

/// Batches waiting for the writer before senders wait.
const QUEUE: usize = 1024;

/// Why a batch was not made durable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// Opening, writing or flushing the file failed.
    #[error("event file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// An event could not be serialised (a bug, not a data condition).
    #[error("cannot serialise an event: {0}")]
    Serialise(#[from] serde_json::Error),
    /// The writer task has stopped.
    #[error("the event writer has stopped")]
    Closed,
}

struct Batch {
    lines: Vec<u8>,
    done: oneshot::Sender<Result<(), String>>,
}

/// A cloneable front to the writer task.
#[derive(Debug, Clone)]
pub struct SinkHandle {
    path: PathBuf,
    tx: mpsc::Sender<Batch>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("bytes", &self.lines.len()).finish()
    }
}

impl SinkHandle {
    /// Opens (creating if needed) the file for appending and starts the writer task. The task
    /// ends when every handle is dropped.
    pub fn open(path: &Path) -> Result<(Self, tokio::task::JoinHandle<()>), SinkError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| SinkError::Io { path: path.to_path_buf(), source })?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| SinkError::Io { path: path.to_path_buf(), source })?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = tokio::task::spawn_blocking(move || write_loop(file, rx));
        Ok((Self { path: path.to_path_buf(), tx }, writer))
    }

    /// Appends `events` as JSON lines and returns once they are on disk.
    pub async fn append<T: serde::Serialize>(&self, events: &[T]) -> Result<(), SinkError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::with_capacity(events.len() * 256);
        for event in events {
            serde_json::to_writer(&mut lines, event)?;
            lines.push(b'\n');
        }
        let (done, answer) = oneshot::channel();
        self.tx.send(Batch { lines, done }).await.map_err(|_| SinkError::Closed)?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(SinkError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(message),
            }),
            Err(_) => Err(SinkError::Closed),
        }
    }
}

fn write_loop(file: File, mut rx: mpsc::Receiver<Batch>) {
    let mut out = BufWriter::with_capacity(1 << 16, file);
    while let Some(first) = rx.blocking_recv() {
        let mut batches = vec![first];
        while let Ok(more) = rx.try_recv() {
            batches.push(more);
        }
        let result = batches
            .iter()
            .try_for_each(|b| out.write_all(&b.lines))
            .and_then(|()| out.flush())
            .and_then(|()| out.get_ref().sync_data());
        let answer = result.map_err(|e| e.to_string());
        if answer.is_err() {
            // Whatever the buffer still holds was not made durable; drop it so the retry does
            // not write it twice behind the caller's back.
            let (file, _not_durable) = out.into_parts();
            out = BufWriter::with_capacity(1 << 16, file);
        }
        for batch in batches {
            // A poller that gave up waiting is gone; its batch is on disk or will be retried.
            let _ = batch.done.send(answer.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_appends_all_land_in_order_per_sender() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (sink, writer) = SinkHandle::open(&path).unwrap();
        let mut tasks = Vec::new();
        for machine in 0..8u32 {
            let sink = sink.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0..50u32 {
                    sink.append(&[serde_json::json!({"machine": machine, "n": n})]).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        drop(sink);
        writer.await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let rows: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), 400);
        for machine in 0..8u64 {
            let ns: Vec<u64> = rows
                .iter()
                .filter(|r| r["machine"] == machine)
                .map(|r| r["n"].as_u64().unwrap())
                .collect();
            assert_eq!(ns, (0..50).collect::<Vec<_>>());
        }
    }

    #[tokio::test]
    async fn a_write_error_is_reported_not_swallowed() {
        // /dev/full accepts the open and fails every write with ENOSPC: a full disk.
        let (sink, _writer) = SinkHandle::open(Path::new("/dev/full")).unwrap();
        let err = sink.append(&[serde_json::json!({"x": 1})]).await.unwrap_err();
        assert!(err.to_string().contains("/dev/full"), "{err}");
    }
}

/// What the event file says about each machine, read once at start-up.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Per registry id: the sequence number the next event must carry.
    pub next_seq: std::collections::HashMap<String, u64>,
    /// Per registry id: the last meter snapshot of each long poll, oldest first, so lifetime
    /// meters continue across restarts.
    pub snapshots: std::collections::HashMap<String, Vec<crate::event::CanonicalEvent>>,
    /// Events read.
    pub events: u64,
    /// Bytes of a torn last line (a crash during a write) that were cut off.
    pub trimmed: u64,
}

/// Reads the event file back. A last line without its newline was being written when the
/// process died; it was never confirmed to a machine (the flush did not return), so it is cut
/// off, and the machine reports its event again. Any other unreadable line is an error: the file
/// was damaged and must be looked at, not silently renumbered.
///
/// This reads the whole file, which is acceptable for the interim file and is exactly what the
/// journal (issue 4) avoids.
pub fn recover(path: &Path) -> Result<Recovered, SinkError> {
    use crate::event::{CanonicalEvent, EventKind};

    let io = |source| SinkError::Io { path: path.to_path_buf(), source };
    let mut recovered = Recovered::default();
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(recovered),
        Err(e) => return Err(io(e)),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        let file = OpenOptions::new().write(true).open(path).map_err(io)?;
        file.set_len(complete as u64).map_err(io)?;
        file.sync_all().map_err(io)?;
        recovered.trimmed = (bytes.len() - complete) as u64;
        tracing::warn!(
            file = %path.display(),
            bytes = recovered.trimmed,
            "Cut off a torn last line left by a crash; its event was never acknowledged."
        );
    }
    let mut last_snapshot: std::collections::HashMap<(String, Option<u8>), CanonicalEvent> =
        std::collections::HashMap::new();
    for (n, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let event: CanonicalEvent = serde_json::from_slice(line).map_err(|e| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("line {}: not a canonical event: {e}", n + 1),
            ))
        })?;
        recovered.events += 1;
        let id = event.machine.registry_id.to_string();
        let next = recovered.next_seq.entry(id.clone()).or_default();
        *next = (*next).max(event.machine_seq.saturating_add(1));
        if matches!(event.kind, EventKind::MeterSnapshot { .. }) {
            last_snapshot.insert((id, event.source.code), event);
        }
    }
    let mut snapshots: Vec<CanonicalEvent> = last_snapshot.into_values().collect();
    snapshots.sort_by_key(|e| e.machine_seq);
    for event in snapshots {
        recovered.snapshots.entry(event.machine.registry_id.to_string()).or_default().push(event);
    }
    Ok(recovered)
}
