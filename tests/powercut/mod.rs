//! A FUSE file system that simulates power cuts, for the crash tests (#15).
//!
//! `mount(dir)` serves an in-memory file system at `dir`; `Mounted::cut()` is the power cut. The
//! durability model is strict POSIX, as a disk with a volatile cache behaves:
//! - every file and directory has a *live* state (what reads see) and a *durable* one;
//! - write, truncate and fallocate change a file's live state; `fsync`/`fdatasync` of the file
//!   copies its live data, size and mode to its durable state;
//! - create, mkdir, unlink, rmdir and rename change directories' live entries; `fsync` of a
//!   directory copies its live entries to its durable ones (a rename between two directories
//!   needs both synced);
//! - `cut()` makes every live state its durable one: what is not reachable from the root through
//!   durable entries is gone, and a file whose entry is durable but which was never fsynced is
//!   empty. Handles opened before the cut answer EIO afterwards (kill the writers first).
//!
//! `sync_file_range` never reaches a FUSE file system, so it makes nothing durable here, as it
//! promises nothing across a power loss on a real disk either. Attributes and entries are never
//! cached by the kernel (TTL 0) and files are opened with direct I/O, so after a cut the kernel
//! asks again and sees the dropped state. The reported free space can be set to simulate a
//! full disk (reported only: writes still succeed).
//!
//! Mount it on the state directory only: a configuration or key the test writes there without
//! fsyncing it is cut too. Mounting needs root (or fuse3's `fusermount3`) and `/dev/fuse`.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

/// Nothing is cached by the kernel, so a cut is seen at the next access.
const TTL: Duration = Duration::ZERO;
const BLOCK: u64 = 4096;
/// Files larger than this are refused (EFBIG) rather than allocated in memory.
const MAX_FILE: u64 = 1 << 30;
const DEFAULT_FREE: u64 = 10 << 30;

/// The mounted file system; dropping it unmounts (lazily, so a failing test leaves no mount).
#[derive(Debug)]
pub struct Mounted {
    path: PathBuf,
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
}

/// Counters for diagnostics: how often programs asked for durability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub fsyncs: u64,
    pub fsyncdirs: u64,
    pub cuts: u64,
}

/// Mounts an empty power-cut file system at `mountpoint` (an existing empty directory).
pub fn mount(mountpoint: &Path) -> io::Result<Mounted> {
    let state = Arc::new(Mutex::new(State::new()));
    let mut config = Config::default();
    config.mount_options =
        vec![MountOption::FSName("powercut".into()), MountOption::Subtype("powercut".into())];
    let session = fuser::spawn_mount(PowerCutFs { state: state.clone() }, mountpoint, &config)?;
    Ok(Mounted { path: mountpoint.to_path_buf(), state, session: Some(session) })
}

impl Mounted {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The power cut: everything not made durable is dropped.
    pub fn cut(&self) {
        lock(&self.state).cut();
    }

    pub fn stats(&self) -> Stats {
        lock(&self.state).stats
    }

    /// The free space `statfs` reports from now on.
    pub fn set_free_bytes(&self, bytes: u64) {
        lock(&self.state).free_bytes = bytes;
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // A lazy unmount cannot fail on files still open (a test that panicked mid-way); fuser's
        // own unmount then finds nothing left to do.
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
        drop(self.session.take());
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A poisoned lock only means a test thread panicked; the state itself stays consistent.
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Clone, Debug)]
enum Content {
    File(Vec<u8>),
    Dir(BTreeMap<OsString, u64>),
}

#[derive(Clone, Debug)]
struct Version {
    content: Content,
    perm: u16,
}

#[derive(Debug)]
struct Inode {
    parent: u64,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    live: Version,
    durable: Version,
    /// The bytes of a file's live data changed since its last fsync (they may lie past its
    /// end), so an fsync copies only those and not the whole file.
    dirty: Option<Range<usize>>,
}

impl Inode {
    fn new(parent: u64, content: Content, perm: u16, uid: u32, gid: u32) -> Self {
        // Never synced: the durable state is empty (an empty file or directory).
        let empty = match content {
            Content::File(_) => Content::File(Vec::new()),
            Content::Dir(_) => Content::Dir(BTreeMap::new()),
        };
        Self {
            parent,
            uid,
            gid,
            mtime: SystemTime::now(),
            live: Version { content, perm },
            durable: Version { content: empty, perm },
            dirty: None,
        }
    }

    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, size, nlink) = match &self.live.content {
            Content::File(data) => (FileType::RegularFile, data.len() as u64, 1),
            Content::Dir(_) => (FileType::Directory, 0, 2),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.mtime,
            crtime: self.mtime,
            kind,
            perm: self.live.perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLOCK as u32,
            flags: 0,
        }
    }
}

#[derive(Debug)]
struct State {
    inodes: BTreeMap<u64, Inode>,
    /// Inode numbers are never reused, so a kernel reference from before a cut cannot alias.
    next_ino: u64,
    /// Handles carry the epoch they were opened in; a cut starts a new one.
    epoch: u64,
    next_fh: u64,
    free_bytes: u64,
    stats: Stats,
}

impl State {
    fn new() -> Self {
        let mut inodes = BTreeMap::new();
        let mut root = Inode::new(1, Content::Dir(BTreeMap::new()), 0o755, 0, 0);
        root.durable = root.live.clone();
        inodes.insert(1, root);
        Self {
            inodes,
            next_ino: 2,
            epoch: 1,
            next_fh: 0,
            free_bytes: DEFAULT_FREE,
            stats: Stats::default(),
        }
    }

    fn cut(&mut self) {
        for inode in self.inodes.values_mut() {
            inode.live = inode.durable.clone();
            inode.dirty = None;
        }
        let mut reachable = BTreeSet::from([1u64]);
        let mut parents = BTreeMap::new();
        let mut todo = vec![1u64];
        while let Some(dir) = todo.pop() {
            let Some(Content::Dir(entries)) = self.inodes.get(&dir).map(|i| &i.live.content) else {
                continue;
            };
            for &child in entries.values() {
                if reachable.insert(child) {
                    parents.insert(child, dir);
                    todo.push(child);
                }
            }
        }
        self.inodes.retain(|ino, _| reachable.contains(ino));
        // Entries naming an inode that no longer exists cannot be durable, but guard anyway.
        let present: BTreeSet<u64> = self.inodes.keys().copied().collect();
        for (ino, inode) in &mut self.inodes {
            if let Some(&parent) = parents.get(ino) {
                inode.parent = parent;
            }
            if let Content::Dir(entries) = &mut inode.live.content {
                entries.retain(|_, child| present.contains(child));
                inode.durable.content = inode.live.content.clone();
            }
        }
        self.epoch += 1;
        self.stats.cuts += 1;
    }

    fn new_fh(&mut self) -> FileHandle {
        self.next_fh += 1;
        FileHandle((self.epoch << 32) | (self.next_fh & 0xffff_ffff))
    }

    fn check_fh(&self, fh: FileHandle) -> Result<(), Errno> {
        if fh.0 >> 32 == self.epoch { Ok(()) } else { Err(Errno::EIO) }
    }

    fn inode(&self, ino: INodeNo) -> Result<&Inode, Errno> {
        self.inodes.get(&ino.0).ok_or(Errno::ESTALE)
    }

    fn inode_mut(&mut self, ino: INodeNo) -> Result<&mut Inode, Errno> {
        self.inodes.get_mut(&ino.0).ok_or(Errno::ESTALE)
    }

    fn entries(&self, dir: INodeNo) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match &self.inode(dir)?.live.content {
            Content::Dir(entries) => Ok(entries),
            Content::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn entries_mut(&mut self, dir: INodeNo) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        let inode = self.inode_mut(dir)?;
        inode.mtime = SystemTime::now();
        match &mut inode.live.content {
            Content::Dir(entries) => Ok(entries),
            Content::File(_) => Err(Errno::ENOTDIR),
        }
    }

    /// A file's live data, for a change to the bytes in `changed`.
    fn file_mut(&mut self, ino: INodeNo, changed: Range<usize>) -> Result<&mut Vec<u8>, Errno> {
        let inode = self.inode_mut(ino)?;
        let Content::File(data) = &mut inode.live.content else {
            return Err(Errno::EISDIR);
        };
        inode.mtime = SystemTime::now();
        inode.dirty = Some(match inode.dirty.take() {
            Some(d) => d.start.min(changed.start)..d.end.max(changed.end),
            None => changed,
        });
        Ok(data)
    }

    fn lookup(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        let ino = *self.entries(parent)?.get(name).ok_or(Errno::ENOENT)?;
        Ok(self.inode(INodeNo(ino))?.attr(ino))
    }

    fn add(
        &mut self,
        parent: INodeNo,
        name: &OsStr,
        content: Content,
        mode: u32,
        req: &Request,
    ) -> Result<FileAttr, Errno> {
        if self.entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let inode = Inode::new(parent.0, content, (mode & 0o7777) as u16, req.uid(), req.gid());
        let attr = inode.attr(ino);
        self.inodes.insert(ino, inode);
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        Ok(attr)
    }

    fn remove(&mut self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let ino = *self.entries(parent)?.get(name).ok_or(Errno::ENOENT)?;
        match (&self.inode(INodeNo(ino))?.live.content, dir) {
            (Content::Dir(entries), true) if !entries.is_empty() => return Err(Errno::ENOTEMPTY),
            (Content::Dir(_), false) => return Err(Errno::EISDIR),
            (Content::File(_), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        // The inode stays until the next cut: open handles and durable entries may still use it.
        self.entries_mut(parent)?.remove(name);
        Ok(())
    }

    fn rename(
        &mut self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return Err(Errno::EINVAL);
        }
        let ino = *self.entries(parent)?.get(name).ok_or(Errno::ENOENT)?;
        let moving_dir = matches!(self.inode(INodeNo(ino))?.live.content, Content::Dir(_));
        if let Some(&target) = self.entries(newparent)?.get(newname) {
            if target == ino {
                return Ok(());
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            match (&self.inode(INodeNo(target))?.live.content, moving_dir) {
                (Content::Dir(entries), true) if !entries.is_empty() => {
                    return Err(Errno::ENOTEMPTY);
                }
                (Content::Dir(_), false) => return Err(Errno::EISDIR),
                (Content::File(_), true) => return Err(Errno::ENOTDIR),
                _ => {}
            }
        }
        self.entries_mut(parent)?.remove(name);
        self.entries_mut(newparent)?.insert(newname.to_owned(), ino);
        self.inode_mut(INodeNo(ino))?.parent = newparent.0;
        Ok(())
    }

    fn write(
        &mut self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
    ) -> Result<u32, Errno> {
        self.check_fh(fh)?;
        let len = u32::try_from(data.len()).map_err(|_| Errno::EINVAL)?;
        let end =
            offset.checked_add(u64::from(len)).filter(|&e| e <= MAX_FILE).ok_or(Errno::EFBIG)?;
        let (start, end) = (
            usize::try_from(offset).map_err(|_| Errno::EFBIG)?,
            usize::try_from(end).map_err(|_| Errno::EFBIG)?,
        );
        let file = self.file_mut(ino, start..end)?;
        if file.len() < end {
            file.resize(end, 0);
        }
        file.get_mut(start..end).ok_or(Errno::EIO)?.copy_from_slice(data);
        Ok(len)
    }

    fn read(&self, ino: INodeNo, fh: FileHandle, offset: u64, size: u32) -> Result<&[u8], Errno> {
        self.check_fh(fh)?;
        let Content::File(data) = &self.inode(ino)?.live.content else {
            return Err(Errno::EISDIR);
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        data.get(start..end).ok_or(Errno::EIO)
    }

    fn resize(&mut self, ino: INodeNo, size: u64) -> Result<(), Errno> {
        if size > MAX_FILE {
            return Err(Errno::EFBIG);
        }
        let size = usize::try_from(size).map_err(|_| Errno::EFBIG)?;
        let old = match &self.inode(ino)?.live.content {
            Content::File(data) => data.len(),
            Content::Dir(_) => return Err(Errno::EISDIR),
        };
        self.file_mut(ino, old.min(size)..old.max(size))?.resize(size, 0);
        Ok(())
    }

    fn sync(&mut self, ino: INodeNo, fh: FileHandle) -> Result<(), Errno> {
        self.check_fh(fh)?;
        let inode = self.inode_mut(ino)?;
        inode.durable.perm = inode.live.perm;
        match (&inode.live.content, &mut inode.durable.content) {
            (Content::File(live), Content::File(durable)) => {
                durable.resize(live.len(), 0);
                if let Some(dirty) = inode.dirty.take() {
                    let end = dirty.end.min(live.len());
                    if let (Some(from), Some(to)) =
                        (live.get(dirty.start..end), durable.get_mut(dirty.start..end))
                    {
                        to.copy_from_slice(from);
                    }
                }
            }
            (live, durable) => *durable = live.clone(),
        }
        Ok(())
    }
}

/// The FUSE side: each request locks the state, applies itself and replies.
#[derive(Debug)]
struct PowerCutFs {
    state: Arc<Mutex<State>>,
}

impl PowerCutFs {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn reply_entry(reply: ReplyEntry, result: Result<FileAttr, Errno>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for PowerCutFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(reply, self.state().lookup(parent, name));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().inode(ino) {
            Ok(inode) => reply.attr(&TTL, &inode.attr(ino.0)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        let result = (|| {
            if let Some(fh) = fh {
                state.check_fh(fh)?;
            }
            if let Some(size) = size {
                state.resize(ino, size)?;
            }
            let inode = state.inode_mut(ino)?;
            if let Some(mode) = mode {
                inode.live.perm = (mode & 0o7777) as u16;
            }
            inode.uid = uid.unwrap_or(inode.uid);
            inode.gid = gid.unwrap_or(inode.gid);
            match mtime {
                Some(TimeOrNow::SpecificTime(t)) => inode.mtime = t,
                Some(TimeOrNow::Now) => inode.mtime = SystemTime::now(),
                None => {}
            }
            Ok(inode.attr(ino.0))
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let content = Content::Dir(BTreeMap::new());
        reply_entry(reply, self.state().add(parent, name, content, mode & !umask, req));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.state().remove(parent, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.state().remove(parent, name, true));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.state().rename(parent, name, newparent, newname, flags));
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.state();
        match state.inode(ino).map(|i| matches!(i.live.content, Content::File(_))) {
            Ok(true) => reply.opened(state.new_fh(), FopenFlags::FOPEN_DIRECT_IO),
            Ok(false) => reply.error(Errno::EISDIR),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.state();
        match state.add(parent, name, Content::File(Vec::new()), mode & !umask, req) {
            Ok(attr) => {
                let fh = state.new_fh();
                reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::FOPEN_DIRECT_IO);
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.state().read(ino, fh, offset, size) {
            Ok(data) => reply.data(data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.state().write(ino, fh, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        state.stats.fsyncs += 1;
        reply_empty(reply, state.sync(ino, fh));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.state();
        match state.entries(ino) {
            Ok(_) => reply.opened(state.new_fh(), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.state();
        let listing = state.check_fh(fh).and_then(|()| {
            let parent = state.inode(ino)?.parent;
            let mut listing = vec![
                (ino.0, FileType::Directory, OsString::from(".")),
                (parent, FileType::Directory, OsString::from("..")),
            ];
            for (name, &child) in state.entries(ino)? {
                let kind = match state.inodes.get(&child).map(|i| &i.live.content) {
                    Some(Content::Dir(_)) => FileType::Directory,
                    _ => FileType::RegularFile,
                };
                listing.push((child, kind, name.clone()));
            }
            Ok(listing)
        });
        match listing {
            Ok(listing) => {
                let skip = usize::try_from(offset).unwrap_or(usize::MAX);
                for (i, (child, kind, name)) in listing.into_iter().enumerate().skip(skip) {
                    if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        state.stats.fsyncdirs += 1;
        reply_empty(reply, state.sync(ino, fh));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let free = self.state().free_bytes / BLOCK;
        reply.statfs(
            free + (1 << 18),
            free,
            free,
            1 << 20,
            1 << 20,
            BLOCK as u32,
            255,
            BLOCK as u32,
        );
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 { reply.size(0) } else { reply.data(&[]) }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply_empty(reply, self.state().inode(ino).map(|_| ()));
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let result = state.check_fh(fh).and_then(|()| {
            let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
            match mode {
                0 => {
                    let Content::File(data) = &state.inode(ino)?.live.content else {
                        return Err(Errno::EISDIR);
                    };
                    if (data.len() as u64) < end { state.resize(ino, end) } else { Ok(()) }
                }
                libc::FALLOC_FL_KEEP_SIZE => Ok(()),
                _ => Err(Errno::EOPNOTSUPP),
            }
        });
        reply_empty(reply, result);
    }
}
