//! The file system the daemon serves: a live namespace and live file contents in memory, over a
//! backing directory that holds only what would survive a power loss.
//!
//! Owns: the inode table (every directory and regular file of the mount), each directory's live
//! entries and the entries the backing directory holds durably, each file's
//! [`FileOverlay`](crate::overlay::FileOverlay), and the scratch directory
//! [`SCRATCH_DIR`] in the backing root.
//!
//! The model (tools/lossyfs/README.md has the long form):
//! - File data and size are volatile until the file is `fsync`ed/`fdatasync`ed.
//! - A file's *name* (create, rename, unlink, in its directory) is volatile until the
//!   directory is `fsync`ed. A file's bytes live in a backing inode from its creation on, linked
//!   under [`SCRATCH_DIR`]; a directory sync links the live names to those inodes in the
//!   backing directory (link + rename over the old name, so a sync is atomic name by name) and
//!   unlinks names no longer live.
//! - Directories themselves (mkdir, rmdir, a directory's rename) pass through at once: they are
//!   treated as durable when the call returns.
//!
//! Invariants:
//! - The backing directory tree (without [`SCRATCH_DIR`]) is exactly what a remount after a power
//!   loss shows: the daemon never writes a byte or a name there except in `fsync`/`fsyncdir`
//!   (and in the directory pass-throughs above, and the clean shutdown's [`LossyFs::sync_all`]).
//! - Every live file inode has a backing inode linked at `SCRATCH_DIR/<ino>` (removed at the
//!   next mount: an inode no durable name reaches is lost, like an orphan after a crash).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

use crate::overlay::FileOverlay;

/// Scratch directory in the backing root: one link per live file inode, and the temporary
/// names a directory sync renames into place. Hidden from the mount; emptied at every mount.
pub const SCRATCH_DIR: &str = ".lossyfs";

/// How long the kernel may cache names and attributes. Every change reaches the daemon through
/// the kernel (no one else writes the backing directory while mounted), so the kernel's caches
/// never go stale; the short TTL only bounds the damage if someone does.
const TTL: Duration = Duration::from_secs(1);

const ROOT_INO: u64 = 1;

#[derive(Debug)]
struct DirNode {
    /// Parent directory (the root is its own parent).
    parent: u64,
    /// Name in the parent (empty for the root).
    name: OsString,
    /// What `readdir` and `lookup` see.
    live: BTreeMap<OsString, u64>,
    /// The file names the backing directory holds (directories are not listed: they pass
    /// through).
    durable: BTreeMap<OsString, u64>,
}

#[derive(Debug)]
struct FileNode {
    /// The backing inode, linked at `SCRATCH_DIR/<ino>`; opened read-write.
    backing: File,
    overlay: FileOverlay,
}

#[derive(Debug)]
enum Node {
    Dir(DirNode),
    File(FileNode),
}

/// The whole state of a mount; one lock (the session is served by one thread).
#[derive(Debug)]
pub struct State {
    backing_root: PathBuf,
    nodes: BTreeMap<u64, Node>,
    next_ino: u64,
    /// Counter for temporary names in [`SCRATCH_DIR`].
    next_tmp: u64,
}

fn errno(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

impl State {
    /// Reads the backing tree into a fresh state; empties [`SCRATCH_DIR`] first (what a previous
    /// mount left there was never durably named).
    pub fn load(backing_root: &Path) -> io::Result<State> {
        let scratch = backing_root.join(SCRATCH_DIR);
        match std::fs::remove_dir_all(&scratch) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir(&scratch)?;
        let mut state = State {
            backing_root: backing_root.to_path_buf(),
            nodes: BTreeMap::new(),
            next_ino: ROOT_INO + 1,
            next_tmp: 0,
        };
        state.nodes.insert(
            ROOT_INO,
            Node::Dir(DirNode {
                parent: ROOT_INO,
                name: OsString::new(),
                live: BTreeMap::new(),
                durable: BTreeMap::new(),
            }),
        );
        state.load_dir(ROOT_INO, backing_root)?;
        Ok(state)
    }

    fn load_dir(&mut self, dir_ino: u64, path: &Path) -> io::Result<()> {
        let mut names: Vec<(OsString, std::fs::FileType)> = Vec::new();
        for e in std::fs::read_dir(path)? {
            let e = e?;
            names.push((e.file_name(), e.file_type()?));
        }
        for (name, kind) in names {
            if dir_ino == ROOT_INO && name == SCRATCH_DIR {
                continue;
            }
            let child_path = path.join(&name);
            if kind.is_dir() {
                let ino = self.alloc_ino();
                self.nodes.insert(
                    ino,
                    Node::Dir(DirNode {
                        parent: dir_ino,
                        name: name.clone(),
                        live: BTreeMap::new(),
                        durable: BTreeMap::new(),
                    }),
                );
                self.dir_mut(dir_ino)?.live.insert(name, ino);
                self.load_dir(ino, &child_path)?;
            } else if kind.is_file() {
                let ino = self.alloc_ino();
                let obj = self.object_path(ino);
                std::fs::hard_link(&child_path, &obj)?;
                let backing = OpenOptions::new().read(true).write(true).open(&obj)?;
                let size = backing.metadata()?.len();
                self.nodes.insert(
                    ino,
                    Node::File(FileNode {
                        backing,
                        overlay: FileOverlay::new(size),
                    }),
                );
                let d = self.dir_mut(dir_ino)?;
                d.live.insert(name.clone(), ino);
                d.durable.insert(name, ino);
            }
            // Other kinds (symlinks, sockets) are not served: the node makes none.
        }
        Ok(())
    }

    fn alloc_ino(&mut self) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    fn object_path(&self, ino: u64) -> PathBuf {
        self.backing_root
            .join(SCRATCH_DIR)
            .join(format!("ino-{ino}"))
    }

    fn dir(&self, ino: u64) -> Result<&DirNode, Errno> {
        match self.nodes.get(&ino) {
            Some(Node::Dir(d)) => Ok(d),
            Some(Node::File(_)) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut DirNode, io::Error> {
        match self.nodes.get_mut(&ino) {
            Some(Node::Dir(d)) => Ok(d),
            _ => Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut FileNode, Errno> {
        match self.nodes.get_mut(&ino) {
            Some(Node::File(f)) => Ok(f),
            Some(Node::Dir(_)) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    /// The backing path of a directory (directories pass through, so it is also its live path).
    fn dir_path(&self, ino: u64) -> Result<PathBuf, Errno> {
        let mut parts: Vec<OsString> = Vec::new();
        let mut at = ino;
        while at != ROOT_INO {
            let d = self.dir(at)?;
            parts.push(d.name.clone());
            at = d.parent;
        }
        let mut p = self.backing_root.clone();
        for part in parts.iter().rev() {
            p.push(part);
        }
        Ok(p)
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let (meta, kind, size) = match self.nodes.get(&ino) {
            Some(Node::Dir(_)) => {
                let p = self.dir_path(ino)?;
                let m = std::fs::metadata(&p).map_err(|e| errno(&e))?;
                (m, FileType::Directory, 4096)
            }
            Some(Node::File(f)) => {
                let m = f.backing.metadata().map_err(|e| errno(&e))?;
                (m, FileType::RegularFile, f.overlay.size_bytes())
            }
            None => return Err(Errno::ENOENT),
        };
        let time = |secs: i64, nsecs: i64| {
            SystemTime::UNIX_EPOCH
                + Duration::from_secs(secs.max(0) as u64)
                + Duration::from_nanos(nsecs.max(0) as u64)
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            crtime: time(meta.ctime(), meta.ctime_nsec()),
            kind,
            perm: (meta.mode() & 0o7777) as u16,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.dir(parent)?
            .live
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    /// A new, empty regular file named `name` in `parent` (a volatile name until `parent` is
    /// synced).
    fn create_file(&mut self, parent: u64, name: &OsStr, mode: u32) -> Result<u64, Errno> {
        if self.dir(parent)?.live.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.alloc_ino();
        let obj = self.object_path(ino);
        let backing = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .open(&obj)
            .map_err(|e| errno(&e))?;
        self.nodes.insert(
            ino,
            Node::File(FileNode {
                backing,
                overlay: FileOverlay::new(0),
            }),
        );
        self.dir_mut(parent)
            .map_err(|e| errno(&e))?
            .live
            .insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// `fsync` of a file: its data and size become durable.
    pub fn sync_file(&mut self, ino: u64) -> Result<(), Errno> {
        let f = self.file_mut(ino)?;
        f.overlay.flush(&f.backing).map_err(|e| errno(&e))
    }

    /// `fsync` of a directory: the backing directory's file names become the live ones.
    pub fn sync_dir(&mut self, ino: u64) -> Result<(), Errno> {
        let path = self.dir_path(ino)?;
        let d = self.dir(ino)?;
        let live_files: BTreeMap<OsString, u64> = d
            .live
            .iter()
            .filter(|(_, i)| matches!(self.nodes.get(i), Some(Node::File(_))))
            .map(|(n, i)| (n.clone(), *i))
            .collect();
        let gone: Vec<OsString> = d
            .durable
            .keys()
            .filter(|n| !live_files.contains_key(*n))
            .cloned()
            .collect();
        let changed: Vec<(OsString, u64)> = live_files
            .iter()
            .filter(|(n, i)| d.durable.get(*n) != Some(i))
            .map(|(n, i)| (n.clone(), *i))
            .collect();
        for name in gone {
            match std::fs::remove_file(path.join(&name)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(errno(&e)),
            }
        }
        for (name, file_ino) in changed {
            // Link under a temporary name, then rename over the old one: the name never points
            // nowhere, and a sync cut short leaves each name old or new.
            let tmp = self
                .backing_root
                .join(SCRATCH_DIR)
                .join(format!("tmp-{}", self.next_tmp));
            self.next_tmp += 1;
            std::fs::hard_link(self.object_path(file_ino), &tmp).map_err(|e| errno(&e))?;
            std::fs::rename(&tmp, path.join(&name)).map_err(|e| errno(&e))?;
        }
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| errno(&e))?;
        self.dir_mut(ino).map_err(|e| errno(&e))?.durable = live_files;
        Ok(())
    }

    /// Makes everything durable (the clean shutdown): every file, then every directory.
    pub fn sync_all(&mut self) -> Result<(), Errno> {
        let inos: Vec<u64> = self.nodes.keys().copied().collect();
        for &ino in &inos {
            if matches!(self.nodes.get(&ino), Some(Node::File(_))) {
                self.sync_file(ino)?;
            }
        }
        for &ino in &inos {
            if matches!(self.nodes.get(&ino), Some(Node::Dir(_))) {
                self.sync_dir(ino)?;
            }
        }
        Ok(())
    }

    /// Bytes written and not yet synced, over all files.
    pub fn dirty_bytes(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match n {
                Node::File(f) => f.overlay.dirty_bytes(),
                Node::Dir(_) => 0,
            })
            .sum()
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return Err(Errno::EINVAL);
        }
        let src = self.lookup(parent, name)?;
        self.dir(new_parent)?;
        let target = self.dir(new_parent)?.live.get(new_name).copied();
        if target == Some(src) {
            return Ok(());
        }
        if target.is_some() && flags.contains(RenameFlags::RENAME_NOREPLACE) {
            return Err(Errno::EEXIST);
        }
        let src_is_dir = matches!(self.nodes.get(&src), Some(Node::Dir(_)));
        if let Some(t) = target {
            match (self.nodes.get(&t), src_is_dir) {
                (Some(Node::Dir(_)), false) => return Err(Errno::EISDIR),
                (Some(Node::File(_)), true) => return Err(Errno::ENOTDIR),
                (Some(Node::Dir(td)), true) if !td.live.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        if src_is_dir {
            // Directories pass through: the backing rename happens now.
            let from = self.dir_path(src)?;
            let to = self.dir_path(new_parent)?.join(new_name);
            if let Some(t) = target {
                // The empty target directory may still hold durable names of unlinked files.
                self.sync_dir(t)?;
                self.nodes.remove(&t);
            }
            std::fs::rename(&from, &to).map_err(|e| errno(&e))?;
            if let Some(Node::Dir(d)) = self.nodes.get_mut(&src) {
                d.parent = new_parent;
                d.name = new_name.to_owned();
            }
        }
        self.dir_mut(parent)
            .map_err(|e| errno(&e))?
            .live
            .remove(name);
        self.dir_mut(new_parent)
            .map_err(|e| errno(&e))?
            .live
            .insert(new_name.to_owned(), src);
        Ok(())
    }
}

/// The `fuser` file system: a handle on the shared [`State`] (the signal thread holds another,
/// to flush at a clean shutdown).
pub struct LossyFs {
    state: Arc<Mutex<State>>,
}

impl LossyFs {
    pub fn new(state: Arc<Mutex<State>>) -> LossyFs {
        LossyFs { state }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state half changed; serving on would be
        // lying about durability, so take the poison as fatal.
        match self.state.lock() {
            Ok(g) => g,
            Err(_) => {
                eprintln!("lossyfs: the state lock is poisoned (a handler panicked); exiting");
                std::process::exit(70);
            }
        }
    }
}

impl Filesystem for LossyFs {
    fn init(&mut self, _req: &Request, _config: &mut KernelConfig) -> io::Result<()> {
        // No FUSE_WRITEBACK_CACHE (fuser does not ask for it): every write reaches the daemon
        // when the syscall (or io_uring request) completes, so "written" is well defined.
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let s = self.lock();
        match s.lookup(parent.0, name).and_then(|i| s.attr(i)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.lock().attr(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.lock();
        let r = (|| -> Result<FileAttr, Errno> {
            if let Some(sz) = size {
                s.file_mut(ino.0)?.overlay.set_size(sz);
            }
            if let Some(m) = mode {
                // Permissions pass through (the node never changes them).
                let perm = std::fs::Permissions::from_mode(m & 0o7777);
                match s.nodes.get(&ino.0) {
                    Some(Node::File(f)) => f.backing.set_permissions(perm),
                    Some(Node::Dir(_)) => std::fs::set_permissions(s.dir_path(ino.0)?, perm),
                    None => return Err(Errno::ENOENT),
                }
                .map_err(|e| errno(&e))?;
            }
            // Times are not modelled: the backing file's own times are reported.
            s.attr(ino.0)
        })();
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let mut s = self.lock();
        match s.create_file(parent.0, name, mode).and_then(|i| s.attr(i)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut s = self.lock();
        let r = (|| -> Result<FileAttr, Errno> {
            if s.dir(parent.0)?.live.contains_key(name) {
                return Err(Errno::EEXIST);
            }
            let path = s.dir_path(parent.0)?.join(name);
            std::fs::create_dir(&path).map_err(|e| errno(&e))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|e| errno(&e))?;
            let ino = s.alloc_ino();
            s.nodes.insert(
                ino,
                Node::Dir(DirNode {
                    parent: parent.0,
                    name: name.to_owned(),
                    live: BTreeMap::new(),
                    durable: BTreeMap::new(),
                }),
            );
            s.dir_mut(parent.0)
                .map_err(|e| errno(&e))?
                .live
                .insert(name.to_owned(), ino);
            s.attr(ino)
        })();
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.lock();
        let r = (|| -> Result<(), Errno> {
            let ino = s.lookup(parent.0, name)?;
            if matches!(s.nodes.get(&ino), Some(Node::Dir(_))) {
                return Err(Errno::EISDIR);
            }
            // Only the live name goes; the inode (and its open handles) stays.
            s.dir_mut(parent.0)
                .map_err(|e| errno(&e))?
                .live
                .remove(name);
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.lock();
        let r = (|| -> Result<(), Errno> {
            let ino = s.lookup(parent.0, name)?;
            if !s.dir(ino)?.live.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
            // Passes through; first drop the durable names of files unlinked since its last
            // sync, or the backing directory is not empty.
            s.sync_dir(ino)?;
            std::fs::remove_dir(s.dir_path(ino)?).map_err(|e| errno(&e))?;
            s.nodes.remove(&ino);
            s.dir_mut(parent.0)
                .map_err(|e| errno(&e))?
                .live
                .remove(name);
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
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
        match self
            .lock()
            .rename(parent.0, name, newparent.0, newname, flags)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Not FOPEN_DIRECT_IO: the node maps segments, and a mapping needs the page cache.
        // Not FOPEN_KEEP_CACHE: each open drops cached pages (harmless, and no page of an
        // earlier mount could be served anyway: a remount is a new superblock).
        match self.lock().nodes.get(&ino.0) {
            Some(Node::File(_)) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Some(Node::Dir(_)) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut s = self.lock();
        let r = s.file_mut(ino.0).and_then(|f| {
            f.overlay
                .read(&f.backing, offset, size as usize)
                .map_err(|e| errno(&e))
        });
        match r {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.lock();
        match s.file_mut(ino.0) {
            Ok(f) => {
                f.overlay.write(offset, data);
                reply.written(data.len() as u32);
            }
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
        // `close` makes nothing durable.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // fdatasync flushes the size too: a grown file's new bytes are unreadable without it,
        // so a real fdatasync persists it as well.
        match self.lock().sync_file(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.lock().dir(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let s = self.lock();
        let d = match s.dir(ino.0) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let mut entries: Vec<(u64, FileType, OsString)> = vec![
            (ino.0, FileType::Directory, ".".into()),
            (d.parent, FileType::Directory, "..".into()),
        ];
        for (name, &child) in &d.live {
            let kind = match s.nodes.get(&child) {
                Some(Node::Dir(_)) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            entries.push((child, kind, name.clone()));
        }
        for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.lock().sync_dir(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let root = self.lock().backing_root.clone();
        let Ok(c) = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()) else {
            return reply.error(Errno::EINVAL);
        };
        // SAFETY: statvfs fills the zeroed struct we own from a NUL-terminated path.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        if r != 0 {
            return reply.error(errno(&io::Error::last_os_error()));
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            st.f_namemax as u32,
            st.f_frsize as u32,
        );
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.lock();
        let r = (|| -> Result<FileAttr, Errno> {
            let ino = match s.lookup(parent.0, name) {
                Ok(existing) => {
                    if flags & libc::O_EXCL != 0 {
                        return Err(Errno::EEXIST);
                    }
                    if flags & libc::O_TRUNC != 0 {
                        s.file_mut(existing)?.overlay.set_size(0);
                    }
                    existing
                }
                Err(_) => s.create_file(parent.0, name, mode)?,
            };
            s.attr(ino)
        })();
        match r {
            Ok(a) => reply.created(&TTL, &a, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut s = self.lock();
        let f = match s.file_mut(ino.0) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        match mode {
            // Allocation itself is not modelled (unwritten space reads as zeros either way);
            // mode 0 grows the size, volatile until the file is synced.
            0 => {
                let end = offset + length;
                if end > f.overlay.size_bytes() {
                    f.overlay.set_size(end);
                }
                reply.ok();
            }
            libc::FALLOC_FL_KEEP_SIZE => reply.ok(),
            _ => reply.error(Errno::EOPNOTSUPP),
        }
    }
}
