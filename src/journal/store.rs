//! The `Store` seam: the few key-value operations the journal's keyed state needs (cursors,
//! machine heads, snapshots, checkpoints; the records are in [`super::log`]), and their one
//! implementation on sled 0.34.7. This is the only file in the project that names sled (besides
//! [`super::migrate`], which reads the old layout through it); every durability point is an
//! explicit flush (field-lessons.md §B3).

use std::path::{Path, PathBuf};

/// A store failure, with the operation that hit it.
#[derive(Debug, thiserror::Error)]
#[error("journal store {path}: {operation}: {message}")]
pub struct StoreError {
    pub path: PathBuf,
    pub operation: &'static str,
    pub message: String,
    /// The store says its files are damaged (as opposed to an I/O or resource error).
    pub corrupt: bool,
}

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One atomic group of writes.
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub(super) puts: Vec<(Vec<u8>, Vec<u8>)>,
    pub(super) removes: Vec<Vec<u8>>,
}

impl WriteBatch {
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.puts.push((key.into(), value.into()));
    }

    pub fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.removes.push(key.into());
    }

    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.removes.is_empty()
    }
}

/// What the journal asks of its storage. Keys sort as bytes; `apply` is atomic (all of a batch
/// or none of it survives a crash); nothing is durable before `flush` returns.
pub trait Store: Send + Sync + std::fmt::Debug {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes a batch atomically, not yet durably.
    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError>;
    /// Makes every applied batch durable (fsync).
    fn flush(&self) -> Result<(), StoreError>;
    /// Entries with `from <= key < to`, in key order, at most `limit` of them.
    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError>;
    /// The entry with the greatest key in `from <= key < to`.
    fn last_in(&self, from: &[u8], to: &[u8]) -> Result<Option<Entry>, StoreError>;
    /// Bytes the store occupies on disk.
    fn size_on_disk(&self) -> Result<u64, StoreError>;
    /// Where the store lives.
    fn path(&self) -> &Path;
}

/// Stands in while the real store is being reopened, so that no reference keeps the old sled
/// instance (and its file lock) alive; every operation fails.
#[derive(Debug)]
pub struct Unavailable(pub PathBuf);

impl Unavailable {
    fn fail(&self, operation: &'static str) -> StoreError {
        StoreError {
            path: self.0.clone(),
            operation,
            message: "the store is being reopened after an error".into(),
            corrupt: false,
        }
    }
}

impl Store for Unavailable {
    fn get(&self, _: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Err(self.fail("get"))
    }
    fn apply(&self, _: WriteBatch) -> Result<(), StoreError> {
        Err(self.fail("write"))
    }
    fn flush(&self) -> Result<(), StoreError> {
        Err(self.fail("flush"))
    }
    fn range(&self, _: &[u8], _: &[u8], _: usize) -> Result<Vec<Entry>, StoreError> {
        Err(self.fail("read"))
    }
    fn last_in(&self, _: &[u8], _: &[u8]) -> Result<Option<Entry>, StoreError> {
        Err(self.fail("read"))
    }
    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Err(self.fail("size"))
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

/// sled 0.34.7, configured for the journal:
///
/// - `flush_every_ms(None)`: no background flusher. Durability points are the journal's own
///   group-commit flushes and nothing else, so what "durable" means is decided in one place;
///   a background flush would add I/O without adding a guarantee (sled loses unflushed writes on
///   a process crash whatever the timer says, §C3).
/// - `cache_capacity`: from configuration (default 16 MiB). sled's default of 1 GiB is sized
///   for a database server; a venue box runs the journal as a FIFO whose hot set is the head
///   and the tail, and the cache counts on-disk bytes, so real RSS is a multiple of it.
/// - `mode(HighThroughput)`: LowSpace is reportedly a no-op, and the journal's space is bounded
///   by its own cap and floor, not by sled's segment cleaning.
/// - Default segment size (512 KiB) and no compression (the canonical JSON is short and the
///   crate is built without the compression feature).
///
/// sled's own flush is not a durability point: it ends in `sync_file_range`, which commits
/// neither the log file's size nor the disk's cache, and sled never syncs its `conf` file or
/// its directory (a FUSE power-cut model lost 4,047 of 4,350 acknowledged events that way,
/// issue 15). So [`Store::flush`] follows sled's flush with `fdatasync` of the log file it just
/// wrote, and with `fsync` of sled's directories whenever their entries changed (a snapshot
/// renamed in, an old one removed, a blob written); [`SledStore::open`] commits every file sled
/// created. The order makes the store durable before the journal's watermark says so.
#[derive(Debug)]
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    /// sled's log file, opened again for `fdatasync` (any descriptor of the inode commits it).
    log: std::fs::File,
    /// sled's directories: its own and the blob directory.
    dirs: [PathBuf; 2],
    /// Their modification times at the last sync: a change means entries were created, renamed
    /// or removed, which only an `fsync` of the directory commits.
    dir_stamps: std::sync::Mutex<[Option<std::time::SystemTime>; 2]>,
}

/// sled's files in its directory: the log, its configuration, and where big values go.
const LOG_FILE: &str = "db";
const CONF_FILE: &str = "conf";
const BLOB_DIR: &str = "blobs";

/// The one tree all journal keys live in, so that `apply_batch` covers them all atomically.
const TREE: &[u8] = b"journal";

/// How long an open waits for a lock still held by a dropped instance's background jobs.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl SledStore {
    /// Opens the store. sled releases its file lock asynchronously: jobs on its background
    /// thread pool (log writes, segment truncation) hold a clone of the locked file and drop it
    /// only when they finish, which can be after the last `Db` was dropped. A close followed
    /// by an open in the same process (the writer's reopen after an error, a restart in tests)
    /// then fails with "could not acquire lock" (EWOULDBLOCK); such an open is retried for up
    /// to `LOCK_WAIT`. A lock held by another process still fails, only later.
    // Blocking code (the writer thread, `journal` commands): real time and a thread sleep, as
    // sled's own background threads run on real time.
    #[allow(clippy::disallowed_methods)]
    pub fn open(path: &Path, cache_capacity: u64) -> Result<Self, StoreError> {
        let start = std::time::Instant::now();
        let db = loop {
            let opened = sled::Config::new()
                .path(path)
                .cache_capacity(cache_capacity)
                .flush_every_ms(None)
                .mode(sled::Mode::HighThroughput)
                .open();
            match opened {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && start.elapsed() < LOCK_WAIT =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other.map_err(|e| error(path, "open", &e))?,
            }
        };
        let tree = db.open_tree(TREE).map_err(|e| error(path, "open tree", &e))?;
        let io = |operation| move |e: std::io::Error| io_error(path, operation, &e);
        let log = std::fs::File::open(path.join(LOG_FILE)).map_err(io("open log"))?;
        let store = Self {
            path: path.to_path_buf(),
            db,
            tree,
            log,
            dirs: [path.to_path_buf(), path.join(BLOB_DIR)],
            dir_stamps: std::sync::Mutex::new([None; 2]),
        };
        // sled creates its directory, `conf` and log without syncing any of them.
        store.db.flush().map_err(|e| error(path, "flush", &e))?;
        std::fs::File::open(path.join(CONF_FILE))
            .and_then(|f| f.sync_all())
            .map_err(io("sync conf"))?;
        store.log.sync_all().map_err(io("sync log"))?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::durable::sync_dir(parent).map_err(io("sync parent directory"))?;
        }
        store.sync_dirs(true)?;
        Ok(store)
    }

    /// Commits sled's directories if their entries changed since the last call (or always).
    fn sync_dirs(&self, always: bool) -> Result<(), StoreError> {
        let mut stamps = self.dir_stamps.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now =
            self.dirs.each_ref().map(|d| std::fs::metadata(d).and_then(|m| m.modified()).ok());
        if !always && *stamps == now {
            return Ok(());
        }
        // Blob files (values too big for a log segment) are written by sled and never synced:
        // sync those present whenever the blob directory changed. There are few or none.
        let ([_, blobs_then], [_, blobs_now], [_, blobs]) = (*stamps, now, &self.dirs);
        if (always || blobs_then != blobs_now)
            && let Ok(entries) = std::fs::read_dir(blobs)
        {
            for entry in entries.flatten() {
                match std::fs::File::open(entry.path()).and_then(|f| f.sync_all()) {
                    // Removed by sled's garbage collection meanwhile.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    other => other.map_err(|e| io_error(&self.path, "sync blob", &e))?,
                }
            }
        }
        for (dir, stamp) in self.dirs.iter().zip(&now) {
            if stamp.is_some() {
                crate::durable::sync_dir(dir)
                    .map_err(|e| io_error(&self.path, "sync directory", &e))?;
            }
        }
        *stamps = now;
        Ok(())
    }
}

fn io_error(path: &Path, operation: &'static str, e: &std::io::Error) -> StoreError {
    StoreError { path: path.to_path_buf(), operation, message: e.to_string(), corrupt: false }
}

fn error(path: &Path, operation: &'static str, e: &sled::Error) -> StoreError {
    StoreError {
        path: path.to_path_buf(),
        operation,
        message: e.to_string(),
        // sled reports a damaged snapshot or log as `Corruption`, but a garbled `conf` file as
        // `Unsupported` ("may have been created using a sled version earlier than 0.29"); at
        // open both mean the files cannot be used, so both lead to quarantine rather than to
        // an open error and a crash loop.
        corrupt: matches!(e, sled::Error::Corruption { .. })
            || (operation == "open" && matches!(e, sled::Error::Unsupported(_))),
    }
}

impl Store for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.tree.get(key).map_err(|e| error(&self.path, "get", &e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut sled_batch = sled::Batch::default();
        for key in batch.removes {
            sled_batch.remove(key);
        }
        for (key, value) in batch.puts {
            sled_batch.insert(key, value);
        }
        self.tree.apply_batch(sled_batch).map_err(|e| error(&self.path, "write", &e))
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| error(&self.path, "flush", &e))?;
        self.log.sync_data().map_err(|e| io_error(&self.path, "sync log", &e))?;
        self.sync_dirs(false)
    }

    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        for entry in self.tree.range(from..to).take(limit) {
            let (k, v) = entry.map_err(|e| error(&self.path, "read", &e))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn last_in(&self, from: &[u8], to: &[u8]) -> Result<Option<Entry>, StoreError> {
        match self.tree.range(from..to).next_back() {
            None => Ok(None),
            Some(entry) => {
                let (k, v) = entry.map_err(|e| error(&self.path, "read", &e))?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
        }
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(|e| error(&self.path, "size", &e))
    }

    fn path(&self) -> &Path {
        &self.path
    }
}
