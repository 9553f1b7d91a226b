//! The file seam below the segmented log (STYLE §4).
//!
//! The segment code never touches `std::fs` or io_uring directly: it talks to a [`Vfs`] (directory
//! operations) and to [`LogFile`]s (one per segment file). Production uses
//! [`crate::storage::uring::UringVfs`] (durable batches through io_uring, reads through mmap);
//! tests use [`SimFs`], an in-memory disk that models what survives a power loss.
//!
//! # Contract every implementation keeps
//! - A file's length never changes through a [`LogFile`]: segment files are created at their full
//!   size by [`Vfs::create_zeroed`] and only overwritten afterwards. This keeps the production mmap
//!   valid (a page wholly beyond EOF raises SIGBUS) and keeps appends on already-written blocks.
//! - [`LogFile::write_durable`] returns `Ok` only after the data of every write in the batch is
//!   durable (an fdatasync covering them completed). Any error leaves the durable state unknown:
//!   the caller must stop writing (fsyncgate), it must not retry.
//! - [`Vfs::create_zeroed`], [`Vfs::prepare_file`] and [`Vfs::create_dir_all`] are durable with
//!   their directory entries when they return (compound operations: production fsyncs the file
//!   and the directory). [`Vfs::rename`] and [`Vfs::remove`] are NOT: a power loss may undo them
//!   until the caller fsyncs the directory with [`Vfs::sync_dir`] (and the simulated disk does
//!   undo them, so a missing directory sync in the log's code is caught by its tests).
//! - [`LogFile::bytes`] shows every completed write immediately (a MAP_SHARED mapping does).
//!
//! Files of unknown size (snapshot files, written once front to back while a state machine
//! streams them) do not fit the fixed-size, mapped [`LogFile`]: they are written through an
//! [`AppendFile`] and read through a [`ReadFile`] (plain `pread`, no mapping, so a file of any
//! length, zero included, and a read-only file can be read, and a failing read is an error, not
//! a SIGBUS). The same durability rules hold for them:
//! - [`AppendFile::append`] only reaches the page cache; [`AppendFile::sync_data`] (fdatasync)
//!   makes every earlier append and the file's length durable. A power loss before it may keep
//!   any part of the unsynced appends (any subset of their sectors, some torn, the length
//!   anywhere between the synced and the written length, missing sectors read as zeros).
//! - [`Vfs::create_append`] creates a new directory entry that is durable only after
//!   [`Vfs::sync_dir`], like a rename or a remove.
//! - A failed [`AppendFile::sync_data`] leaves the file's durable state unknown: the caller
//!   abandons the file instead of retrying (fsyncgate).

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// A durable write in progress ([`LogFile::start_durable_write`]): resolves once the write and
/// an fdatasync covering it completed (or failed), and hands the buffer back for reuse.
pub type DurableWrite = Pin<Box<dyn Future<Output = (io::Result<()>, Vec<u8>)>>>;

/// A directory change in progress ([`Vfs::start_rename_durably`]).
pub type DirChangeFuture = Pin<Box<dyn Future<Output = io::Result<()>>>>;

/// A rename in progress ([`Vfs::start_rename_durably`]): done, then durable.
pub struct RenameInProgress {
    /// Resolves once the rename happened (the new name is visible, not yet durable).
    pub renamed: DirChangeFuture,
    /// Resolves once the directory fsync that makes it durable completed.
    pub durable: DirChangeFuture,
}

/// The directory holding `path`.
pub fn parent_dir(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// One write of a durable batch: `bytes` go to `offset` in the file.
#[derive(Clone, Copy, Debug)]
pub struct WriteAt<'a> {
    pub offset: u64,
    pub bytes: &'a [u8],
}

/// One open segment file.
pub trait LogFile: Send + Sync {
    /// Where the file lives (for error messages).
    fn path(&self) -> &Path;

    /// The file's length in bytes; constant for the life of the handle.
    fn len_bytes(&self) -> u64;

    /// The whole file's current contents (production: a read-only shared mmap of exactly the
    /// file's length). Completed writes are visible at once. Call it only while no write is in
    /// flight (recovery, tools); concurrent readers use [`LogFile::read`].
    fn bytes(&self) -> &[u8];

    /// The bytes of `range`, which must not overlap a write in flight (the log reads only below
    /// the append position it has published, and writes only at or above it).
    ///
    /// # Panics
    /// If `range` reaches past [`LogFile::len_bytes`].
    fn read(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.bytes()[range]
    }

    /// Writes every `WriteAt` (in order) and then makes them durable with one fdatasync.
    ///
    /// # Errors
    /// Any failed, short or cancelled write, or a failed sync. After an error the durable state of
    /// the written range is unknown; callers poison themselves instead of retrying.
    ///
    /// # Panics
    /// If a write reaches past [`LogFile::len_bytes`] (a programmer error: files never grow here).
    ///
    /// Takes `&self` so the log can write beyond its append position while readers read below
    /// it; writes to one file must not run concurrently (the log has one writer).
    fn write_durable(&self, writes: &[WriteAt<'_>]) -> io::Result<()>;

    /// Starts writing `bytes` at `offset` followed by an fdatasync, without blocking the calling
    /// thread where the implementation can (production: inside a tokio runtime, the completion
    /// wakes the task through the reactor). The contract of [`LogFile::write_durable`] holds for
    /// the result. The default performs the blocking write.
    ///
    /// Dropping the future before it resolves must be safe: the implementation keeps the buffer
    /// until the device is done with it. Whether the write happened is then unknown.
    fn start_durable_write(self: Arc<Self>, offset: u64, bytes: Vec<u8>) -> DurableWrite {
        let result = self.write_durable(&[WriteAt {
            offset,
            bytes: &bytes,
        }]);
        Box::pin(std::future::ready((result, bytes)))
    }

    /// Drops what only writes need (production: the descriptor and the io_uring); the next write
    /// reopens it. Reads are unaffected.
    fn release_io(&self) {}
}

/// A file written once, front to back, whose final size is not known when it is created (a
/// snapshot file). One writer; the handle is moved to whatever thread writes it.
pub trait AppendFile: Send {
    /// Where the file lives (for error messages).
    fn path(&self) -> &Path;

    /// Appends `bytes` at the end of the file (all of them, or an error). They are visible to
    /// readers at once but durable only after a later [`AppendFile::sync_data`].
    ///
    /// # Errors
    /// Any failed or short write. The file's contents past the last successful append are then
    /// unknown: the caller abandons the file.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;

    /// fdatasync: every earlier append, and the file's length, are durable when this returns
    /// `Ok`. It does not make the file's directory entry durable ([`Vfs::sync_dir`] does).
    ///
    /// # Errors
    /// A failed sync: the durable state of the unsynced appends is unknown and stays so; the
    /// caller must not retry and report success (fsyncgate), it abandons the file.
    fn sync_data(&mut self) -> io::Result<()>;

    /// Bytes appended so far (the file's length as this writer sees it).
    fn len_bytes(&self) -> u64;

    /// From now on, writes this file out in the background's manner: at most a small window
    /// queued at the disk at a time (the production file:
    /// [`crate::storage::uring::PACED_WINDOW_BYTES`]), so that it does not crowd the log's
    /// fdatasyncs. [`AppendFile::append`] then waits for the disk: only for a thread of its own
    /// (the node's snapshot thread), never the event loop's. Durability is unchanged (still
    /// [`AppendFile::sync_data`]). Files that are not on a disk ignore it.
    fn pace_writeback(&mut self) {}
}

/// A file opened for reading only, read at any offset into the caller's buffer (no mapping).
pub trait ReadFile: Send + Sync {
    /// Where the file lives (for error messages).
    fn path(&self) -> &Path;

    /// The file's length when it was opened.
    fn len_bytes(&self) -> u64;

    /// Fills `buf` with the bytes at `offset..offset + buf.len()`.
    ///
    /// # Errors
    /// A failed read, or `UnexpectedEof` if the file ends before `buf` is full (callers check
    /// lengths against [`ReadFile::len_bytes`] first, so this means the file shrank or the read
    /// failed).
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// How [`Vfs::prepare_file`] makes a segment file's bytes read as zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prepare {
    /// Write the zeros: appends then overwrite written blocks, whose fdatasync is ~1.7x cheaper
    /// (FACTS.md), at the price of writing the whole file once.
    Zeroed,
    /// As `Zeroed`, but paced (production: at most
    /// [`crate::storage::uring::ZERO_FILL_PACED_BYTES_PER_SEC`], written out in small windows),
    /// so that the fill never has the disk to itself for long: for the background preparation
    /// of the next segment while the log appends (issue 18: a flat-out 64 MiB fill slowed the
    /// appends' write + fdatasync 2-9x at the median for its 60-170 ms).
    ZeroedPaced,
    /// Only reserve the blocks (`fallocate`): fast to create, but every append's fdatasync also
    /// converts unwritten extents. For when zero-filling cannot keep up with the appends.
    Allocated,
    /// As `Allocated`, then read the whole file once (unwritten extents read as zeros without
    /// disk I/O), so that its page-cache pages exist before the appends write into them: page
    /// allocation is then paid by the background preparation, not inside appends (a fresh page
    /// costs ~2.7 µs in this VM, 128 of them per 512 KiB batch). Only worth it off the append
    /// path.
    AllocatedCached,
}

/// The directory operations the log needs.
pub trait Vfs: Send + Sync {
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names (not paths) of the regular files in `dir`.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn LogFile>>;
    /// Creates (or replaces) `path` with `len_bytes` zero bytes, all written and durable, and the
    /// directory entry durable: appends into it later overwrite already-written blocks.
    fn create_zeroed(&self, path: &Path, len_bytes: u64) -> io::Result<()>;
    /// Prepares a segment file: creates (or replaces) `path` with `len_bytes` bytes that read as
    /// zero, durable with its directory entry, as `how` says. Returns `Ok(false)`, leaving
    /// nothing at `path`, if it saw `cancel` set before finishing. The default ignores `how` and
    /// `cancel` and calls [`Vfs::create_zeroed`].
    ///
    /// # Errors
    /// Any I/O error, `ENOSPC` ([`is_no_space`]) when the file system has no room for the file.
    /// A failed preparation leaves nothing behind (no partial file under any name), so that a
    /// full disk is not made fuller by the attempt and the next attempt starts clean.
    fn prepare_file(
        &self,
        path: &Path,
        len_bytes: u64,
        how: Prepare,
        cancel: &AtomicBool,
    ) -> io::Result<bool> {
        let _ = (how, cancel);
        self.create_zeroed(path, len_bytes).map(|()| true)
    }
    /// Renames `from` to `to` (replacing `to`); durable only after [`Vfs::sync_dir`] of the
    /// directory. Both paths lie in one directory.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Renames `from` to `to` and then fsyncs their directory, without blocking the calling
    /// thread where the implementation can (production, inside a tokio runtime: on a helper
    /// thread, the caller's task woken by each result). [`RenameInProgress::renamed`] resolves
    /// once the rename happened (not yet durable), [`RenameInProgress::durable`] once the
    /// directory fsync after it completed: the caller may start writing into the renamed file
    /// in between, and must not report anything in it durable before `durable`. Both paths lie
    /// in one directory. The default renames and syncs on the calling thread and returns
    /// resolved futures (the simulated disk: its directory operations take no time).
    ///
    /// Dropping the futures before they resolve leaves it unknown whether the rename happened
    /// and whether it is durable.
    fn start_rename_durably(&self, from: &Path, to: &Path) -> RenameInProgress {
        let renamed = self.rename(from, to);
        let durable = match &renamed {
            Ok(()) => self.sync_dir(parent_dir(to)),
            Err(e) => Err(io::Error::new(e.kind(), "the rename failed")),
        };
        RenameInProgress {
            renamed: Box::pin(std::future::ready(renamed)),
            durable: Box::pin(std::future::ready(durable)),
        }
    }
    /// Removes `path`; durable only after [`Vfs::sync_dir`] of its directory.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes every earlier change of `dir`'s entries durable (production: `fsync` of the
    /// directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates the new, empty file `path` for appending (see [`AppendFile`]). Its directory
    /// entry is durable only after [`Vfs::sync_dir`] of its directory; its contents only after
    /// [`AppendFile::sync_data`].
    ///
    /// # Errors
    /// `AlreadyExists` if `path` exists (the caller removes a stale file first: two writers of
    /// one file are a bug, and this refuses the second); any I/O error.
    fn create_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>>;
    /// Opens an existing file of any length for reading only (see [`ReadFile`]).
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>>;
}

pub use crate::storage::simfs::{PowerLossReport, SimFs, ATOMIC_SECTOR_BYTES};

/// Whether `e` says the file system has no room for new blocks (`ENOSPC`, or `EDQUOT`: a quota
/// refuses them the same way). Such an error from *creating* a file (a segment's preparation, a
/// snapshot) changed nothing that was acknowledged and can be retried once space is freed; from a
/// write into a preallocated segment it cannot happen, and any failure there stays fatal
/// (docs/FORMAT.md, "A full disk").
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}
