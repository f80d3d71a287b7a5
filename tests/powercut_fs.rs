//! The power-cut file system itself (tests/powercut): what survives a cut is exactly what was
//! fsynced, file data and directory entries alike, and sled's `flush` alone is not enough.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod powercut;

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// A mount on a fresh temporary directory; the mount goes first when dropped.
struct Fixture {
    fs: powercut::Mounted,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let fs = powercut::mount(dir.path()).unwrap();
    Fixture { fs, _dir: dir }
}

fn sync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

fn write_synced(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn fsynced_file_in_fsynced_directory_survives_a_cut() {
    let t = fixture();
    let root = t.fs.path();
    fs::create_dir(root.join("d")).unwrap();
    sync_dir(root);
    let file = root.join("d/a");
    write_synced(&file, b"hello, durable world");
    sync_dir(&root.join("d"));

    t.fs.cut();

    assert_eq!(fs::read(&file).unwrap(), b"hello, durable world");
    assert_eq!(fs::metadata(&file).unwrap().len(), 20);
    let names: Vec<_> =
        fs::read_dir(root.join("d")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["a"]);
    assert_eq!(t.fs.stats().cuts, 1);
    assert!(t.fs.stats().fsyncs >= 1 && t.fs.stats().fsyncdirs >= 2, "{:?}", t.fs.stats());
}

#[test]
fn unsynced_writes_are_gone_after_a_cut() {
    let t = fixture();
    let file = t.fs.path().join("log");
    let mut f = OpenOptions::new().create_new(true).read(true).write(true).open(&file).unwrap();
    f.write_all(b"synced").unwrap();
    f.sync_data().unwrap();
    sync_dir(t.fs.path());
    f.write_all(b" and not synced").unwrap();
    assert_eq!(fs::metadata(&file).unwrap().len(), 21);

    t.fs.cut();

    assert_eq!(fs::read(&file).unwrap(), b"synced");
    assert_eq!(fs::metadata(&file).unwrap().len(), 6);
    // The handle from before the cut is dead, as the process that held it would be.
    let err = f.write_all(b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let mut buf = Vec::new();
    assert_eq!(f.read_to_end(&mut buf).unwrap_err().raw_os_error(), Some(libc::EIO));
    // A truncation that was never synced is undone too.
    f = OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(2).unwrap();
    t.fs.cut();
    assert_eq!(fs::read(&file).unwrap(), b"synced");
}

#[test]
fn fsync_keeps_overwrites_truncations_and_extensions_exactly() {
    let t = fixture();
    let file = t.fs.path().join("f");
    let mut f = OpenOptions::new().create_new(true).read(true).write(true).open(&file).unwrap();
    sync_dir(t.fs.path());
    f.write_all(b"abcdefgh").unwrap();
    f.sync_all().unwrap();
    f.write_all_at(b"XY", 2).unwrap();
    f.set_len(3).unwrap();
    f.set_len(5).unwrap();
    f.write_all_at(b"Z", 6).unwrap();
    f.sync_data().unwrap();
    f.write_all_at(b"lost", 0).unwrap();

    t.fs.cut();

    assert_eq!(fs::read(&file).unwrap(), b"abX\0\0\0Z");
}

#[test]
fn a_synced_file_in_an_unsynced_directory_vanishes() {
    let t = fixture();
    let root = t.fs.path();
    write_synced(&root.join("orphan"), b"data");
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    write_synced(&root.join("a/b/c/deep"), b"data");
    sync_dir(&root.join("a/b/c"));
    sync_dir(&root.join("a/b"));
    // `a` itself is never synced into the root: everything below it goes with it.

    t.fs.cut();

    assert_eq!(fs::metadata(root.join("orphan")).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(fs::metadata(root.join("a")).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(fs::read_dir(root).unwrap().count(), 0);
}

#[test]
fn a_durable_entry_of_a_never_synced_file_is_empty() {
    let t = fixture();
    let file = t.fs.path().join("f");
    fs::write(&file, b"never synced").unwrap();
    sync_dir(t.fs.path());

    t.fs.cut();

    assert_eq!(fs::read(&file).unwrap(), b"");
}

#[test]
fn rename_sticks_only_once_the_directory_is_synced() {
    let t = fixture();
    let root = t.fs.path();
    let (tmp, dst) = (root.join("status.tmp"), root.join("status"));
    write_synced(&tmp, b"v1");
    sync_dir(root);
    fs::rename(&tmp, &dst).unwrap();

    t.fs.cut();
    assert_eq!(fs::read(&tmp).unwrap(), b"v1", "the rename is undone");
    assert_eq!(fs::metadata(&dst).unwrap_err().kind(), ErrorKind::NotFound);

    fs::rename(&tmp, &dst).unwrap();
    sync_dir(root);
    t.fs.cut();
    assert_eq!(fs::read(&dst).unwrap(), b"v1");
    assert_eq!(fs::metadata(&tmp).unwrap_err().kind(), ErrorKind::NotFound);

    // A plain rename replaces; RENAME_NOREPLACE refuses an existing target.
    write_synced(&tmp, b"v2");
    let dir = File::open(root).unwrap();
    let noreplace = nix::fcntl::renameat2(
        &dir,
        "status.tmp",
        &dir,
        "status",
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    );
    assert_eq!(noreplace, Err(nix::errno::Errno::EEXIST));
    fs::rename(&tmp, &dst).unwrap();
    assert_eq!(fs::read(&dst).unwrap(), b"v2");
}

#[test]
fn a_rename_across_directories_needs_both_synced() {
    let t = fixture();
    let root = t.fs.path();
    fs::create_dir(root.join("from")).unwrap();
    fs::create_dir(root.join("to")).unwrap();
    sync_dir(root);
    write_synced(&root.join("from/f"), b"x");
    sync_dir(&root.join("from"));
    fs::rename(root.join("from/f"), root.join("to/f")).unwrap();
    sync_dir(&root.join("to"));

    t.fs.cut();

    // The new entry is durable, the removal of the old one is not: the file shows up twice.
    assert_eq!(fs::read(root.join("to/f")).unwrap(), b"x");
    assert_eq!(fs::read(root.join("from/f")).unwrap(), b"x");
}

#[test]
fn sync_file_range_makes_nothing_durable() {
    let t = fixture();
    let file = t.fs.path().join("segment");
    let mut f = OpenOptions::new().create_new(true).write(true).open(&file).unwrap();
    f.sync_all().unwrap();
    sync_dir(t.fs.path());
    f.write_all(&[7u8; 8192]).unwrap();
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a plain syscall on a file descriptor this test owns, with no pointers.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, flags) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    drop(f);

    t.fs.cut();

    assert_eq!(fs::metadata(&file).unwrap().len(), 0, "sync_file_range is not a durability point");
}

#[test]
fn statfs_reports_the_configured_free_space() {
    let t = fixture();
    let free = || {
        let s = nix::sys::statvfs::statvfs(t.fs.path()).unwrap();
        s.blocks_available() as u64 * s.fragment_size() as u64
    };
    assert_eq!(free(), 10 << 30);
    t.fs.set_free_bytes(1 << 20);
    assert_eq!(free(), 1 << 20);
}

const SLED_CHILD_ENV: &str = "SLOTGATE_POWERCUT_SLED_CHILD";

/// The child of the sled test: run only when re-executed by it. `mode` says what the child
/// syncs besides sled's own `flush()`; it then reports and waits to be killed.
#[test]
fn sled_child() {
    let Ok(spec) = std::env::var(SLED_CHILD_ENV) else { return };
    let (mode, dir) = spec.split_once(':').unwrap();
    let dir = Path::new(dir);
    let db = open_sled(dir);
    if mode == "dirs" {
        sync_dir(dir);
        sync_dir(dir.parent().unwrap());
    }
    for i in 0u32..500 {
        db.insert(i.to_be_bytes(), vec![1u8; 100]).unwrap();
    }
    db.flush().unwrap();
    if mode == "fsync" {
        fsync_tree(dir);
        sync_dir(dir.parent().unwrap());
    }
    println!("FLUSHED");
    loop {
        std::thread::park();
    }
}

/// Runs `sled_child` in `mode` on `dir`, kills it once it has flushed, then cuts the power.
fn flush_kill_cut(fs: &powercut::Mounted, mode: &str, dir: &Path) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "sled_child", "--nocapture", "--test-threads=1"])
        .env(SLED_CHILD_ENV, format!("{mode}:{}", dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    // libtest prints "test sled_child ... " before the child's own line.
    let flushed = out.lines().any(|l| l.unwrap().ends_with("FLUSHED"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(flushed, "the {mode} child flushed");
    fs.cut();
}

/// Evidence for #15, with sled configured as the journal's store is (no background flusher).
/// sled 0.34.7 makes its log "durable" with `sync_file_range`, never fsyncs its files on
/// `flush()` and never syncs the directories it creates. A power cut after `flush()` (the
/// process killed just before) loses:
/// - the whole store when nobody syncs sled's directory into its parent: the directory is gone;
/// - every flushed record when the directories are synced: sled's files come back as they were
///   last fsynced (empty), and sled reopens an empty store.
///
/// Only fsyncing sled's files and its directory after the flush keeps the flushed records.
#[test]
fn sled_flush_alone_does_not_survive_a_cut() {
    let t = fixture();
    let root = t.fs.path();

    flush_kill_cut(&t.fs, "plain", &root.join("plain"));
    assert_eq!(fs::metadata(root.join("plain")).unwrap_err().kind(), ErrorKind::NotFound);

    let dir = root.join("dirs");
    flush_kill_cut(&t.fs, "dirs", &dir);
    let sizes: Vec<u64> =
        fs::read_dir(&dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).collect();
    assert!(
        !sizes.is_empty() && sizes.iter().all(|&n| n == 0),
        "sled's files are empty: {sizes:?}"
    );
    let db = open_sled(&dir);
    assert_eq!(db.len(), 0, "sled's flushed records are gone");
    drop(db);

    let dir = root.join("fsync");
    flush_kill_cut(&t.fs, "fsync", &dir);
    let db = open_sled(&dir);
    assert_eq!(db.len(), 500);
    assert_eq!(db.get(499u32.to_be_bytes()).unwrap().unwrap().as_ref(), &[1u8; 100][..]);
}

/// sled as `SledStore::open` configures it, retrying while a dropped instance's background jobs
/// still hold the lock.
fn open_sled(path: &Path) -> sled::Db {
    let start = std::time::Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(path)
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open();
        match opened {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && start.elapsed().as_secs() < 5 =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other.unwrap(),
        }
    }
}

/// fsync every file and directory below `dir`, children before their directory.
fn fsync_tree(dir: &Path) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            fsync_tree(&path);
        } else {
            File::open(&path).unwrap().sync_all().unwrap();
        }
    }
    sync_dir(dir);
}
