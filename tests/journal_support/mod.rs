//! Helpers shared by the `journal_*` integration tests: records, open/close, a tmpfs mount.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use slotgate::journal::{Body, Class, Journal, JournalConfig, NewRecord, Record, WriterHandle};

/// A record whose body carries `payload`, so reads can be compared byte for byte.
pub fn rec(class: Class, machine: &str, machine_seq: Option<u64>, payload: &str) -> NewRecord {
    let body = match class {
        Class::Alarm => {
            Body::Alarm { alarm: "test".into(), level: "info".into(), message: payload.to_owned() }
        }
        _ => Body::Event {
            canonical_json: format!("{{\"payload\":{payload:?}}}").into_bytes(),
            raw: payload.as_bytes().iter().rev().copied().collect(),
        },
    };
    NewRecord { class, machine: machine.to_owned(), machine_seq, body, snapshot_of: None }
}

/// The payload a `rec` body carries.
pub fn payload_of(record: &Record) -> Option<String> {
    match record.body.as_ref()? {
        Body::Event { canonical_json, .. } => {
            let v: serde_json::Value = serde_json::from_slice(canonical_json).ok()?;
            Some(v.get("payload")?.as_str()?.to_owned())
        }
        Body::Alarm { message, .. } => Some(message.clone()),
    }
}

pub fn open(config: &JournalConfig) -> (Journal, WriterHandle) {
    Journal::open(config.clone()).expect("journal opens")
}

/// Drops the handle and waits for the writer's final flush.
pub fn close(journal: Journal, writer: WriterHandle) {
    drop(journal);
    writer.join().expect("writer joins");
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Every stored record, in order.
pub fn read_all(journal: &Journal) -> Vec<Record> {
    journal.read(0, usize::MAX).expect("read")
}

/// Polls `f` every 20 ms until it is true or `limit` passes; returns whether it became true.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tmpfs of `size` mounted on a fresh directory; unmounted (lazily) on drop, even when the
/// test fails.
#[derive(Debug)]
pub struct Tmpfs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mkdir");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("the mount command runs");
        assert!(
            out.status.success(),
            "this test needs to mount a tmpfs (run as root, or with CAP_SYS_ADMIN); \
             `mount -t tmpfs` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { path, _dir: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Free bytes on the file system holding `path`.
pub fn free_bytes(path: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(path).expect("statvfs");
    s.blocks_available() * s.fragment_size()
}

/// `len` pseudo-random letters from `seed`: payload that zstd cannot shrink, for tests whose
/// subject is the cap (sealed segments are compressed).
pub fn noise(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}
