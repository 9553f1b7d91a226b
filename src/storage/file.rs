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
//! - Directory operations ([`Vfs::create_zeroed`], [`Vfs::rename`], [`Vfs::remove`]) are durable
//!   when they return (the production code fsyncs the directory).
//! - [`LogFile::bytes`] shows every completed write immediately (a MAP_SHARED mapping does).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

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

    /// Drops what only writes need (production: the descriptor and the io_uring); the next write
    /// reopens it. Reads are unaffected.
    fn release_io(&self) {}
}

/// How [`Vfs::prepare_file`] makes a segment file's bytes read as zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prepare {
    /// Write the zeros: appends then overwrite written blocks, whose fdatasync is ~1.7x cheaper
    /// (FACTS.md), at the price of writing the whole file once.
    Zeroed,
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
    fn open(&self, path: &Path) -> io::Result<Box<dyn LogFile>>;
    /// Creates (or replaces) `path` with `len_bytes` zero bytes, all written and durable, and the
    /// directory entry durable: appends into it later overwrite already-written blocks.
    fn create_zeroed(&self, path: &Path, len_bytes: u64) -> io::Result<()>;
    /// Prepares a segment file: creates (or replaces) `path` with `len_bytes` bytes that read as
    /// zero, durable with its directory entry, as `how` says. Returns `Ok(false)`, leaving
    /// nothing at `path`, if it saw `cancel` set before finishing. The default ignores `how` and
    /// `cancel` and calls [`Vfs::create_zeroed`].
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
    /// Renames `from` to `to` (replacing `to`), durably.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes `path`, durably.
    fn remove(&self, path: &Path) -> io::Result<()>;
}

fn check_write_bounds(path: &Path, len: u64, writes: &[WriteAt<'_>]) {
    for w in writes {
        let end = w.offset + w.bytes.len() as u64;
        assert!(
            end <= len,
            "write [{}, {end}) past the end ({len}) of {}: segment files never grow",
            w.offset,
            path.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The simulated disk.
// ---------------------------------------------------------------------------------------------

/// A write that no completed fdatasync covers yet.
#[derive(Clone, Debug)]
struct PendingWrite {
    path: PathBuf,
    offset: u64,
    bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct SimFileState {
    /// What a completed fdatasync covered: survives a power loss.
    durable: Vec<u8>,
    /// What the page cache shows: `durable` plus every pending write.
    current: Vec<u8>,
}

#[derive(Debug, Default)]
struct SimState {
    dirs: BTreeSet<PathBuf>,
    files: BTreeMap<PathBuf, SimFileState>,
    /// Every unsynced write of every file, in the order it was issued.
    pending: Vec<PendingWrite>,
    /// After `syncs_before_failure` more successful syncs, the next `fail_syncs` syncs fail.
    syncs_before_failure: u32,
    fail_syncs: u32,
    syncs_total: u64,
    /// How long each durable write takes (a slow disk), spent before it takes effect.
    sync_delay: std::time::Duration,
}

/// The sector size whose writes the disk performs atomically (docs/FORMAT.md, "Assumptions").
pub const ATOMIC_SECTOR_BYTES: u64 = 512;

fn within_one_sector(offset: u64, len: usize) -> bool {
    len > 0 && offset / ATOMIC_SECTOR_BYTES == (offset + len as u64 - 1) / ATOMIC_SECTOR_BYTES
}

/// What [`SimFs::power_loss`] kept of the unsynced writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerLossReport {
    pub pending_writes: usize,
    pub kept_writes: usize,
    /// Bytes kept of the first lost write (a torn write), if any.
    pub torn_write_bytes_kept: Option<usize>,
}

/// An in-memory disk for tests: keeps "durable" bytes (what a completed fdatasync covered) apart
/// from "volatile" writes, and on a simulated power loss keeps the durable state plus a prefix of
/// the unsynced writes in issue order, possibly tearing the next one at any byte. It can flip bits
/// and make syncs fail. Cloning gives another handle to the same disk.
///
/// Directory operations are durable at once (production fsyncs the directory after each).
#[derive(Clone, Debug, Default)]
pub struct SimFs {
    state: Arc<Mutex<SimState>>,
}

impl SimFs {
    pub fn new() -> SimFs {
        SimFs::default()
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock is a test failure already; keep the state usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes every later durable write take `delay` (outside the disk's lock) before it takes
    /// effect, like a real fdatasync: group-commit tests need appends to arrive while one is in
    /// flight.
    pub fn set_sync_delay(&self, delay: std::time::Duration) {
        self.lock().sync_delay = delay;
    }

    /// Makes the next `count` syncs fail with EIO (their writes stay volatile); 0 disarms.
    pub fn fail_next_syncs(&self, count: u32) {
        self.fail_sync_after(0, count);
    }

    /// Lets `ok_syncs` more syncs succeed, then makes `count` syncs fail with EIO.
    pub fn fail_sync_after(&self, ok_syncs: u32, count: u32) {
        let mut st = self.lock();
        st.syncs_before_failure = ok_syncs;
        st.fail_syncs = count;
    }

    /// How many syncs completed successfully so far.
    pub fn syncs_total(&self) -> u64 {
        self.lock().syncs_total
    }

    /// How many writes no sync covers yet.
    pub fn pending_writes(&self) -> usize {
        self.lock().pending.len()
    }

    /// Simulates a power loss. Every open [`LogFile`] of this disk must have been dropped (the
    /// "machine" is gone). Keeps the durable bytes, then applies the first `keep` unsynced writes
    /// in issue order, then at most `torn_bytes` bytes of the next one (unless that write lies
    /// inside one 512-byte sector: such writes are atomic); everything later is lost.
    pub fn power_loss(&self, keep: usize, torn_bytes: Option<usize>) -> PowerLossReport {
        let mut st = self.lock();
        let pending = std::mem::take(&mut st.pending);
        let keep = keep.min(pending.len());
        let mut torn_kept = None;
        for (i, w) in pending.iter().enumerate() {
            let n = if i < keep {
                w.bytes.len()
            } else if i == keep {
                match torn_bytes {
                    Some(t) => {
                        let mut t = t.min(w.bytes.len());
                        if within_one_sector(w.offset, w.bytes.len()) && t < w.bytes.len() {
                            // The disk assumption (docs/FORMAT.md): a write inside one aligned
                            // 512-byte sector lands whole or not at all. Segment headers rely on it.
                            t = 0;
                        }
                        torn_kept = Some(t);
                        t
                    }
                    None => break,
                }
            } else {
                break;
            };
            if let Some(f) = st.files.get_mut(&w.path) {
                let at = w.offset as usize;
                f.durable[at..at + n].copy_from_slice(&w.bytes[..n]);
            }
        }
        for f in st.files.values_mut() {
            f.current.clone_from(&f.durable);
        }
        PowerLossReport {
            pending_writes: pending.len(),
            kept_writes: keep,
            torn_write_bytes_kept: torn_kept,
        }
    }

    /// Edits a file's bytes (durable and current alike) while nothing has it open: flips, cuts.
    ///
    /// # Panics
    /// If the file does not exist.
    pub fn edit_file(&self, path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
        let mut st = self.lock();
        let f = st
            .files
            .get_mut(path)
            .unwrap_or_else(|| panic!("SimFs::edit_file: no file {}", path.display()));
        edit(&mut f.durable);
        f.current.clone_from(&f.durable);
    }

    /// Flips one bit of a file at rest.
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) {
        self.edit_file(path, |b| b[offset as usize] ^= 1 << (bit % 8));
    }

    /// A copy of a file's current bytes.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        self.lock().files.get(path).map(|f| f.current.clone())
    }

    /// Every file path on the disk.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.lock().files.keys().cloned().collect()
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

impl Vfs for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        for a in dir.ancestors() {
            st.dirs.insert(a.to_path_buf());
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.lock();
        if !st.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(st
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect())
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let st = self.lock();
        let f = st.files.get(path).ok_or_else(|| not_found(path))?;
        Ok(Box::new(SimFile::new(
            self.clone(),
            path.to_path_buf(),
            &f.current,
        )))
    }

    fn create_zeroed(&self, path: &Path, len_bytes: u64) -> io::Result<()> {
        let mut st = self.lock();
        let parent = path.parent().unwrap_or(Path::new(""));
        if !st.dirs.contains(parent) {
            return Err(not_found(parent));
        }
        // Unsynced writes to a file being replaced die with it.
        st.pending.retain(|w| w.path != path);
        let zeros = vec![0u8; len_bytes as usize];
        st.files.insert(
            path.to_path_buf(),
            SimFileState {
                durable: zeros.clone(),
                current: zeros,
            },
        );
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        let f = st.files.remove(from).ok_or_else(|| not_found(from))?;
        st.pending.retain(|w| w.path != to);
        for w in st.pending.iter_mut().filter(|w| w.path == from) {
            w.path = to.to_path_buf();
        }
        st.files.insert(to.to_path_buf(), f);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.files.remove(path).ok_or_else(|| not_found(path))?;
        st.pending.retain(|w| w.path != path);
        Ok(())
    }
}

/// A handle to one file of a [`SimFs`]. It keeps its own copy of the current bytes (what a
/// mapping would show) so that [`LogFile::read`] can lend them out; it is the file's only writer.
///
/// The copy lives in a fixed heap buffer written through a raw pointer, like the kernel writing
/// into a shared mapping: a write touches only its own range, and readers borrow only ranges no
/// write in flight touches (the contract of [`LogFile::read`]).
struct SimFile {
    fs: SimFs,
    path: PathBuf,
    data: *mut u8,
    len: usize,
    /// Serialises writers (the contract allows one at a time; this makes misuse harmless).
    writing: Mutex<()>,
}

// SAFETY: the buffer is owned by the handle and freed in Drop; concurrent access follows the
// LogFile contract (disjoint ranges for readers and the single writer, ordered by the log's
// publication of its append position through a lock).
unsafe impl Send for SimFile {}
unsafe impl Sync for SimFile {}

impl SimFile {
    fn new(fs: SimFs, path: PathBuf, contents: &[u8]) -> SimFile {
        let boxed: Box<[u8]> = contents.to_vec().into_boxed_slice();
        let len = boxed.len();
        SimFile {
            fs,
            path,
            data: Box::into_raw(boxed) as *mut u8,
            len,
            writing: Mutex::new(()),
        }
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        // SAFETY: `data`/`len` came from `Box::into_raw` of a boxed slice of this length.
        unsafe {
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.data, self.len,
            )))
        }
    }
}

impl LogFile for SimFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn len_bytes(&self) -> u64 {
        self.len as u64
    }

    fn bytes(&self) -> &[u8] {
        self.read(0..self.len)
    }

    fn read(&self, range: std::ops::Range<usize>) -> &[u8] {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "read {range:?} past the end ({}) of {}",
            self.len,
            self.path.display()
        );
        // SAFETY: in bounds (checked above); no write in flight touches `range` (contract).
        unsafe { std::slice::from_raw_parts(self.data.add(range.start), range.end - range.start) }
    }

    fn write_durable(&self, writes: &[WriteAt<'_>]) -> io::Result<()> {
        check_write_bounds(&self.path, self.len as u64, writes);
        let _one_writer = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let delay = self.fs.lock().sync_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut st = self.fs.lock();
        let st = &mut *st;
        let file = st
            .files
            .get_mut(&self.path)
            .ok_or_else(|| not_found(&self.path))?;
        for w in writes {
            let at = w.offset as usize;
            // SAFETY: in bounds (check_write_bounds); no reader borrows this range (contract).
            unsafe {
                std::ptr::copy_nonoverlapping(w.bytes.as_ptr(), self.data.add(at), w.bytes.len())
            };
            file.current[at..at + w.bytes.len()].copy_from_slice(w.bytes);
            st.pending.push(PendingWrite {
                path: self.path.clone(),
                offset: w.offset,
                bytes: w.bytes.to_vec(),
            });
        }
        if st.fail_syncs > 0 && st.syncs_before_failure > 0 {
            st.syncs_before_failure -= 1;
        } else if st.fail_syncs > 0 {
            st.fail_syncs -= 1;
            // Like the kernel: EIO, and the writes stay volatile (they may or may not survive).
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        // fdatasync covers every earlier write of this file, not only this batch's.
        let path = &self.path;
        file.durable.clone_from(&file.current);
        st.pending.retain(|w| &w.path != path);
        st.syncs_total += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_loss_keeps_synced_bytes_and_a_prefix_of_unsynced_writes() {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let p = dir.join("f");
        fs.create_zeroed(&p, 1024).unwrap();
        let f = fs.open(&p).unwrap();
        f.write_durable(&[WriteAt {
            offset: 0,
            bytes: &[1, 1],
        }])
        .unwrap();
        fs.fail_next_syncs(3);
        let w = |f: &dyn LogFile, offset, bytes: &[u8]| {
            assert!(f.write_durable(&[WriteAt { offset, bytes }]).is_err());
        };
        w(&*f, 4, &[2, 2]);
        w(&*f, 510, &[3, 3, 3]); // crosses a sector boundary: may tear
        w(&*f, 8, &[4, 4]);
        assert_eq!(&f.bytes()[..10], &[1, 1, 0, 0, 2, 2, 0, 0, 4, 4]);
        drop(f);
        let r = fs.power_loss(1, Some(1));
        assert_eq!(r.pending_writes, 3);
        assert_eq!(r.torn_write_bytes_kept, Some(1));
        let b = fs.read_file(&p).unwrap();
        assert_eq!(&b[..10], &[1, 1, 0, 0, 2, 2, 0, 0, 0, 0]);
        assert_eq!(&b[509..514], &[0, 3, 0, 0, 0]);
    }

    #[test]
    fn a_write_inside_one_sector_never_tears() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let p = Path::new("/d/f");
        fs.create_zeroed(p, 1024).unwrap();
        let f = fs.open(p).unwrap();
        fs.fail_next_syncs(1);
        assert!(f
            .write_durable(&[WriteAt {
                offset: 0,
                bytes: &[7; 64]
            }])
            .is_err());
        drop(f);
        fs.power_loss(0, Some(10));
        assert_eq!(&fs.read_file(p).unwrap()[..64], &[0; 64]);
    }
}
