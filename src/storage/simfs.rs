//! `SimFs`: the simulated disk of the power-loss tests and the simulator, as harsh as
//! docs/FORMAT.md's assumptions about the disk allow.
//!
//! What it models:
//! - **Page cache and durable media per file (inode).** A write lands in the page cache at once
//!   (readers see it, as through a shared mmap); it becomes durable only when an fdatasync of
//!   that file covers it: one issued after the write (writes issued later stay volatile, even
//!   if they landed before the sync completed).
//! - **Files of unknown size** ([`Vfs::create_append`], snapshot files): an append lands in the
//!   page cache at once and is durable, with the file's new length, only once an
//!   [`AppendFile::sync_data`] issued after it completed. A power loss leaves such a file with a
//!   length anywhere between its synced and its written length, the unsynced appends' sectors
//!   kept, dropped (reading as zeros) or torn as below.
//! - **Directory entries.** `rename`, `remove` and `create_append` change the directory at once,
//!   but the change survives a power loss only after [`Vfs::sync_dir`] of that directory. `create_zeroed`,
//!   `prepare_file` and `create_dir_all` are compound operations that the production code makes
//!   durable itself (file fsync, then directory fsync), and so does this model.
//! - **Power loss** ([`SimFs::power_loss`]): every write no fdatasync covered keeps **any subset
//!   of its 512-byte sectors**, and a kept sector of a multi-sector write may itself be torn
//!   (a prefix of its bytes); a write that lies inside one sector lands whole or not at all
//!   (FORMAT.md assumption 2). Every directory change no directory fsync covered is kept or
//!   undone, each rename or remove atomically, any subset of them in order. What no name refers
//!   to is gone. [`SimFs::power_loss_prefix`] keeps the older, gentler model (a prefix of the
//!   unsynced writes in issue order, the next one torn at a byte) for targeted tests.
//! - **The device's timing** (deferred mode, [`SimFs::set_deferred_io`]): an async durable write
//!   ([`LogFile::start_durable_write`]) lands in the page cache at once but its fdatasync
//!   completes only when the test calls [`SimFs::complete_io`], in any order it likes. That is
//!   how the simulator gives every node's disk a latency and lets the state file's write and the
//!   log's complete in either order, as they can on a real disk. The directory fsync of
//!   [`Vfs::start_rename_durably`] (a segment rotation's rename) is deferred the same way.
//! - **Failures**: a sync can be made to fail (EIO, the writes stay volatile), bits can be
//!   flipped at rest.
//! - **A full disk** ([`SimFs::set_capacity_bytes`]): the bytes of the files that names refer
//!   to may not exceed a capacity. Creating a file that does not fit (`create_zeroed`,
//!   `prepare_file`) or an append that would grow a file beyond it fails with `ENOSPC` and changes
//!   nothing; overwriting existing bytes (every [`LogFile`] write) never needs new space, as in a
//!   preallocated file on a real disk.
//! - **The moment of the power cut** ([`SimFs::power_off_after`]): after a given number of
//!   operations that change the disk (a write or append, a file sync, a creation, a rename, a
//!   remove, a directory sync; [`SimFs::ops_total`] counts them), every later one fails with EIO
//!   and changes nothing, as if the machine had stopped there; [`SimFs::power_loss`] then decides
//!   what of the unsynced state survived. This reaches the points between the steps of one
//!   compound operation (after the rename, before the directory sync) that failing a sync
//!   cannot.
//!
//! Cloning a `SimFs` gives another handle to the same disk.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::storage::file::{
    parent_dir, AppendFile, DurableWrite, LogFile, ReadFile, RenameInProgress, Vfs, WriteAt,
};

/// The sector size whose writes the disk performs atomically (docs/FORMAT.md, "Assumptions").
pub const ATOMIC_SECTOR_BYTES: u64 = 512;

fn within_one_sector(offset: u64, len: usize) -> bool {
    len > 0 && offset / ATOMIC_SECTOR_BYTES == (offset + len as u64 - 1) / ATOMIC_SECTOR_BYTES
}

/// A write that no completed fdatasync covers yet.
#[derive(Clone, Debug)]
struct PendingWrite {
    inode: u64,
    seq: u64,
    offset: u64,
    bytes: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
struct Inode {
    /// What a completed fdatasync covered: survives a power loss.
    durable: Vec<u8>,
    /// What the page cache shows: `durable` plus every pending write.
    current: Vec<u8>,
}

/// A directory change no directory fsync covered yet.
#[derive(Clone, Debug)]
enum DirChange {
    Rename { from: PathBuf, to: PathBuf },
    Remove { path: PathBuf },
    Create { path: PathBuf, inode: u64 },
}

impl DirChange {
    fn dir(&self) -> &Path {
        let p = match self {
            DirChange::Rename { to, .. } => to,
            DirChange::Remove { path } | DirChange::Create { path, .. } => path,
        };
        p.parent().unwrap_or(Path::new(""))
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, u64>) {
        match self {
            DirChange::Rename { from, to } => {
                if let Some(inode) = names.remove(from) {
                    names.insert(to.clone(), inode);
                }
            }
            DirChange::Remove { path } => {
                names.remove(path);
            }
            DirChange::Create { path, inode } => {
                names.insert(path.clone(), *inode);
            }
        }
    }
}

/// An async durable write in the device's hands (deferred mode).
#[derive(Clone, Debug)]
struct SimOp {
    inode: u64,
    seq: u64,
    /// `Some`: not a write but the directory fsync of [`Vfs::start_rename_durably`].
    dir: Option<PathBuf>,
    /// Set when the device completed it.
    result: Option<Result<(), i32>>,
    waker: Option<Waker>,
}

#[derive(Clone, Debug, Default)]
struct SimState {
    dirs: BTreeSet<PathBuf>,
    inodes: BTreeMap<u64, Inode>,
    /// The directory entries as the running system sees them.
    names: BTreeMap<PathBuf, u64>,
    /// The directory entries as a power loss would find them, before `dir_changes`.
    durable_names: BTreeMap<PathBuf, u64>,
    dir_changes: Vec<DirChange>,
    /// Every unsynced write of every file, in the order it was issued.
    pending: Vec<PendingWrite>,
    next_seq: u64,
    next_inode: u64,
    next_op: u64,
    ops: BTreeMap<u64, SimOp>,
    /// Ops started since [`SimFs::take_started_io`] last asked.
    started: Vec<u64>,
    deferred: bool,
    /// After `syncs_before_failure` more successful syncs, the next `fail_syncs` syncs fail.
    syncs_before_failure: u32,
    fail_syncs: u32,
    syncs_total: u64,
    /// Operations that change the disk, attempted so far ([`SimFs::ops_total`]).
    ops_total: u64,
    /// `Some(n)`: n more such operations succeed, then the power is off until the next power
    /// loss ([`SimFs::power_off_after`]).
    power_budget: Option<u64>,
    /// The most bytes the named files may hold ([`SimFs::set_capacity_bytes`]); `None`: no limit.
    capacity_bytes: Option<u64>,
}

impl SimState {
    /// Counts one operation that changes the disk; `Err(EIO)` (and the caller changes nothing)
    /// once the power is off.
    fn spend(&mut self) -> io::Result<()> {
        self.ops_total += 1;
        match self.power_budget {
            Some(0) => Err(io::Error::from_raw_os_error(libc::EIO)),
            Some(n) => {
                self.power_budget = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Issues `bytes` at `offset` of `inode` into the page cache; returns its sequence number.
    fn issue(&mut self, inode: u64, offset: u64, bytes: &[u8]) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(f) = self.inodes.get_mut(&inode) {
            let at = offset as usize;
            f.current[at..at + bytes.len()].copy_from_slice(bytes);
        }
        self.pending.push(PendingWrite {
            inode,
            seq,
            offset,
            bytes: bytes.to_vec(),
        });
        seq
    }

    /// An fdatasync of `inode` issued after write `upto_seq`: every pending write of that inode
    /// up to it becomes durable, unless an injected failure says EIO (then they stay volatile).
    fn sync(&mut self, inode: u64) -> Result<(), i32> {
        self.sync_upto(inode, u64::MAX)
    }

    fn sync_upto(&mut self, inode: u64, upto_seq: u64) -> Result<(), i32> {
        if self.spend().is_err() {
            return Err(libc::EIO);
        }
        if self.fail_syncs > 0 && self.syncs_before_failure > 0 {
            self.syncs_before_failure -= 1;
        } else if self.fail_syncs > 0 {
            self.fail_syncs -= 1;
            return Err(libc::EIO);
        }
        let Some(f) = self.inodes.get_mut(&inode) else {
            return Ok(());
        };
        self.pending.retain(|w| {
            if w.inode == inode && w.seq <= upto_seq {
                let at = w.offset as usize;
                let end = at + w.bytes.len();
                // An append file's length becomes durable with its data (fdatasync flushes the
                // size); a fixed-size file never grows here.
                if f.durable.len() < end {
                    f.durable.resize(end, 0);
                }
                f.durable[at..end].copy_from_slice(&w.bytes);
                false
            } else {
                true
            }
        });
        self.syncs_total += 1;
        Ok(())
    }

    /// The directory as a power loss leaves it: the durable entries plus the unsynced changes
    /// `keep` selects, in order; then what no entry names is gone and the page cache is the
    /// durable media.
    fn lose_power(&mut self, mut keep_change: impl FnMut() -> bool) -> (usize, usize) {
        let mut names = std::mem::take(&mut self.durable_names);
        let changes = std::mem::take(&mut self.dir_changes);
        let mut kept = 0;
        for c in &changes {
            if keep_change() {
                c.apply(&mut names);
                kept += 1;
            }
        }
        let live: BTreeSet<u64> = names.values().copied().collect();
        self.inodes.retain(|i, _| live.contains(i));
        for f in self.inodes.values_mut() {
            f.current.clone_from(&f.durable);
        }
        self.names = names.clone();
        self.durable_names = names;
        self.pending.clear();
        self.ops.clear();
        self.started.clear();
        self.power_budget = None;
        (kept, changes.len() - kept)
    }

    fn inode_of(&self, path: &Path) -> io::Result<u64> {
        self.names.get(path).copied().ok_or_else(|| not_found(path))
    }

    /// Bytes held by the files that names refer to (each inode once), as the page cache shows
    /// them: what a full disk is measured against.
    fn used_bytes(&self) -> u64 {
        let live: BTreeSet<u64> = self.names.values().copied().collect();
        live.iter()
            .filter_map(|i| self.inodes.get(i))
            .map(|f| f.current.len() as u64)
            .sum()
    }

    /// `Err(ENOSPC)` if `more` bytes do not fit beside what is used, `freed` of it excepted (a
    /// file being replaced).
    fn reserve(&self, more: u64, freed: u64) -> io::Result<()> {
        match self.capacity_bytes {
            Some(cap) if self.used_bytes().saturating_sub(freed) + more > cap => {
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
            _ => Ok(()),
        }
    }
}

/// What a power loss kept of the unsynced state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PowerLossReport {
    pub pending_writes: usize,
    /// Sectors of unsynced writes kept whole / dropped / torn (random model only).
    pub sectors_kept: usize,
    pub sectors_dropped: usize,
    pub sectors_torn: usize,
    /// Writes kept whole (prefix model only).
    pub kept_writes: usize,
    /// Bytes kept of the first lost write (prefix model: a torn write), if any.
    pub torn_write_bytes_kept: Option<usize>,
    /// Unsynced directory changes kept / undone.
    pub dir_changes_kept: usize,
    pub dir_changes_undone: usize,
    /// Files grown by unsynced appends whose surviving length was drawn (random model only).
    pub lengths_drawn: usize,
}

/// An in-memory disk for tests; see the module docs. Cloning gives another handle to the same
/// disk.
#[derive(Clone, Debug, Default)]
pub struct SimFs {
    state: Arc<Mutex<SimState>>,
}

/// SplitMix64, for the power-loss choices (every choice derives from the caller's seed).
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

impl SimFs {
    pub fn new() -> SimFs {
        SimFs::default()
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock is a test failure already; keep the state usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Cuts the power after `ops` more operations that change the disk (see the module docs):
    /// every later one fails with EIO and changes nothing, until [`SimFs::power_loss`] (or
    /// [`SimFs::power_loss_prefix`]) restarts the machine.
    pub fn power_off_after(&self, ops: u64) {
        self.lock().power_budget = Some(ops);
    }

    /// Limits the bytes the named files may hold (`None`: no limit); see the module docs. Files
    /// already beyond it stay as they are; only new space is refused.
    pub fn set_capacity_bytes(&self, capacity: Option<u64>) {
        self.lock().capacity_bytes = capacity;
    }

    /// Bytes held by the files that names refer to (what [`SimFs::set_capacity_bytes`] limits).
    pub fn used_bytes(&self) -> u64 {
        self.lock().used_bytes()
    }

    /// Operations that change the disk attempted so far (writes and appends, file syncs,
    /// creations, renames, removes, directory syncs), those refused after a power cut
    /// included: run a scenario once to count them, then cut the power at any of them.
    pub fn ops_total(&self) -> u64 {
        self.lock().ops_total
    }

    /// How many syncs completed successfully so far.
    pub fn syncs_total(&self) -> u64 {
        self.lock().syncs_total
    }

    /// How many writes no sync covers yet.
    pub fn pending_writes(&self) -> usize {
        self.lock().pending.len()
    }

    /// Deferred mode: async durable writes complete only through [`SimFs::complete_io`]. Off by
    /// default (they complete at once, like the blocking ones).
    pub fn set_deferred_io(&self, deferred: bool) {
        self.lock().deferred = deferred;
    }

    /// The async writes started since the last call (deferred mode), oldest first: the caller
    /// decides when each completes.
    pub fn take_started_io(&self) -> Vec<u64> {
        std::mem::take(&mut self.lock().started)
    }

    /// The async writes started and not yet completed, oldest first.
    pub fn io_in_flight(&self) -> Vec<u64> {
        self.lock()
            .ops
            .iter()
            .filter(|(_, op)| op.result.is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The file (its current name) that async write `id` writes to, if the write is in flight.
    pub fn io_target(&self, id: u64) -> Option<PathBuf> {
        let st = self.lock();
        let op = st.ops.get(&id)?;
        if let Some(dir) = &op.dir {
            return Some(dir.clone());
        }
        let inode = op.inode;
        st.names
            .iter()
            .find(|(_, i)| **i == inode)
            .map(|(p, _)| p.clone())
    }

    /// Completes async write `id`: its fdatasync runs now (subject to injected failures) and
    /// its waiter is woken. Returns false if there is no such write in flight (it completed, or
    /// a power loss took it).
    pub fn complete_io(&self, id: u64) -> bool {
        let mut st = self.lock();
        let Some((inode, seq, dir)) = st
            .ops
            .get(&id)
            .filter(|op| op.result.is_none())
            .map(|op| (op.inode, op.seq, op.dir.clone()))
        else {
            return false;
        };
        let result = match dir {
            Some(dir) => match st.spend() {
                Ok(()) => {
                    sync_dir_locked(&mut st, &dir);
                    Ok(())
                }
                Err(_) => Err(libc::EIO),
            },
            None => st.sync_upto(inode, seq),
        };
        let op = st.ops.get_mut(&id).expect("looked up above");
        op.result = Some(result);
        if let Some(w) = op.waker.take() {
            w.wake();
        }
        true
    }

    /// A power loss, every choice drawn from `seed` (see the module docs). Every open
    /// [`LogFile`] of this disk must have been dropped (the "machine" is gone); async writes in
    /// flight are lost with everything else no sync covered.
    pub fn power_loss(&self, seed: u64) -> PowerLossReport {
        let mut rng = Mix(seed);
        let mut st = self.lock();
        let pending = std::mem::take(&mut st.pending);
        let mut report = PowerLossReport {
            pending_writes: pending.len(),
            ..PowerLossReport::default()
        };
        // A file grown by unsynced appends keeps a length anywhere between its synced and its
        // written length, at any byte (harsher than a file system, which moves the length at
        // page or write boundaries); what no kept sector covers reads as zeros. The two ends
        // are drawn often, since they are where a reader's edge cases lie.
        for f in st.inodes.values_mut() {
            if f.current.len() > f.durable.len() {
                let grown = (f.current.len() - f.durable.len()) as u64;
                let extra = match rng.below(4) {
                    0 => 0,
                    1 => grown,
                    _ => rng.below(grown + 1),
                };
                let len = f.durable.len() + extra as usize;
                f.durable.resize(len, 0);
                report.lengths_drawn += 1;
            }
        }
        for w in &pending {
            let Some(f) = st.inodes.get_mut(&w.inode) else {
                continue;
            };
            let durable_len = f.durable.len() as u64;
            let end = w.offset + w.bytes.len() as u64;
            let atomic = within_one_sector(w.offset, w.bytes.len());
            let mut sector_start = w.offset;
            while sector_start < end {
                let sector_end = ((sector_start / ATOMIC_SECTOR_BYTES) + 1) * ATOMIC_SECTOR_BYTES;
                let piece_end = sector_end.min(end);
                let piece = (sector_start - w.offset) as usize..(piece_end - w.offset) as usize;
                let keep = match rng.below(10) {
                    0..=3 => piece.len(),
                    4..=7 => 0,
                    // A torn sector: only part of it reached the media (never for a write that
                    // lies inside one sector: FORMAT.md assumption 2).
                    _ if atomic => piece.len() * rng.below(2) as usize,
                    _ => rng.below(piece.len() as u64 + 1) as usize,
                };
                // Past the surviving length of a grown file nothing is kept, whatever was drawn.
                let keep = keep.min(durable_len.saturating_sub(sector_start) as usize);
                if keep == piece.len() {
                    report.sectors_kept += 1;
                } else if keep == 0 {
                    report.sectors_dropped += 1;
                } else {
                    report.sectors_torn += 1;
                }
                if keep > 0 {
                    let at = sector_start as usize;
                    f.durable[at..at + keep]
                        .copy_from_slice(&w.bytes[piece.start..piece.start + keep]);
                }
                sector_start = piece_end;
            }
        }
        let (kept, undone) = st.lose_power(|| rng.below(2) == 0);
        report.dir_changes_kept = kept;
        report.dir_changes_undone = undone;
        report
    }

    /// A power loss in the gentler prefix model: keeps the first `keep` unsynced writes in issue
    /// order, then at most `torn_bytes` bytes of the next one (unless that write lies inside one
    /// 512-byte sector: such writes are atomic); everything later is lost. Unsynced directory
    /// changes are all undone. Every open [`LogFile`] must have been dropped.
    pub fn power_loss_prefix(&self, keep: usize, torn_bytes: Option<usize>) -> PowerLossReport {
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
            if let Some(f) = st.inodes.get_mut(&w.inode) {
                let at = w.offset as usize;
                // An append file keeps the length its kept bytes reach.
                if f.durable.len() < at + n {
                    f.durable.resize(at + n, 0);
                }
                f.durable[at..at + n].copy_from_slice(&w.bytes[..n]);
            }
        }
        let (_, undone) = st.lose_power(|| false);
        PowerLossReport {
            pending_writes: pending.len(),
            kept_writes: keep,
            torn_write_bytes_kept: torn_kept,
            dir_changes_undone: undone,
            ..PowerLossReport::default()
        }
    }

    /// An independent copy of this disk as it is now (a clone of `SimFs` shares the disk; this
    /// does not): for trying several power losses from the same moment.
    pub fn deep_copy(&self) -> SimFs {
        let mut st = self.lock().clone();
        for op in st.ops.values_mut() {
            op.waker = None;
        }
        SimFs {
            state: Arc::new(Mutex::new(st)),
        }
    }

    /// Edits a file's bytes (durable and current alike) while nothing has it open: flips, cuts.
    ///
    /// # Panics
    /// If the file does not exist.
    pub fn edit_file(&self, path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
        let mut st = self.lock();
        let inode = st
            .inode_of(path)
            .unwrap_or_else(|_| panic!("SimFs::edit_file: no file {}", path.display()));
        let f = st.inodes.get_mut(&inode).expect("named inodes exist");
        edit(&mut f.durable);
        f.current.clone_from(&f.durable);
    }

    /// Flips one bit of a file at rest.
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) {
        self.edit_file(path, |b| b[offset as usize] ^= 1 << (bit % 8));
    }

    /// A copy of a file's current bytes.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.lock();
        let inode = st.names.get(path)?;
        st.inodes.get(inode).map(|f| f.current.clone())
    }

    /// Every file path on the disk (as the running system sees the directories).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.lock().names.keys().cloned().collect()
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
        st.spend()?;
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
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect())
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        let st = self.lock();
        let inode = st.inode_of(path)?;
        let f = st.inodes.get(&inode).ok_or_else(|| not_found(path))?;
        Ok(Arc::new(SimFile::new(
            self.clone(),
            path.to_path_buf(),
            inode,
            &f.current,
        )))
    }

    fn create_zeroed(&self, path: &Path, len_bytes: u64) -> io::Result<()> {
        let mut st = self.lock();
        st.spend()?;
        let parent = path.parent().unwrap_or(Path::new(""));
        if !st.dirs.contains(parent) {
            return Err(not_found(parent));
        }
        // A replaced file's space is freed by the same operation (production renames over it).
        let replaced = st
            .names
            .get(path)
            .and_then(|i| st.inodes.get(i))
            .map_or(0, |f| f.current.len() as u64);
        st.reserve(len_bytes, replaced)?;
        let inode = st.next_inode;
        st.next_inode += 1;
        let zeros = vec![0u8; len_bytes as usize];
        st.inodes.insert(
            inode,
            Inode {
                durable: zeros.clone(),
                current: zeros,
            },
        );
        // Compound and durable, as production makes it: written under a temporary name,
        // synced, renamed, directory synced. Earlier unsynced changes of this name are settled
        // by the directory sync too.
        st.names.insert(path.to_path_buf(), inode);
        let dir = parent.to_path_buf();
        sync_dir_locked(&mut st, &dir);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.spend()?;
        let inode = st.inode_of(from)?;
        st.names.remove(from);
        st.names.insert(to.to_path_buf(), inode);
        st.dir_changes.push(DirChange::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        });
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.spend()?;
        st.inode_of(path)?;
        st.names.remove(path);
        st.dir_changes.push(DirChange::Remove {
            path: path.to_path_buf(),
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.spend()?;
        if !st.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        sync_dir_locked(&mut st, dir);
        Ok(())
    }

    /// The rename at once; in deferred mode the directory fsync is an async operation like a
    /// durable write ([`SimFs::complete_io`] completes it, [`SimFs::io_target`] names the
    /// directory), so a test can complete writes started meanwhile before it, or lose power
    /// with the rename undone and those writes durable.
    fn start_rename_durably(&self, from: &Path, to: &Path) -> RenameInProgress {
        let renamed = self.rename(from, to);
        let dir = parent_dir(to).to_path_buf();
        let mut st = self.lock();
        if renamed.is_err() || !st.deferred {
            drop(st);
            let durable = match &renamed {
                Ok(()) => self.sync_dir(&dir),
                Err(e) => Err(io::Error::new(e.kind(), "the rename failed")),
            };
            return RenameInProgress {
                renamed: Box::pin(std::future::ready(renamed)),
                durable: Box::pin(std::future::ready(durable)),
            };
        }
        let id = st.next_op;
        st.next_op += 1;
        st.ops.insert(
            id,
            SimOp {
                inode: u64::MAX,
                seq: 0,
                dir: Some(dir),
                result: None,
                waker: None,
            },
        );
        st.started.push(id);
        drop(st);
        let io = SimIo {
            fs: self.clone(),
            id,
            buffer: None,
        };
        RenameInProgress {
            renamed: Box::pin(std::future::ready(Ok(()))),
            durable: Box::pin(async move { io.await.0 }),
        }
    }

    fn create_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let mut st = self.lock();
        st.spend()?;
        let parent = path.parent().unwrap_or(Path::new(""));
        if !st.dirs.contains(parent) {
            return Err(not_found(parent));
        }
        if st.names.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: file exists", path.display()),
            ));
        }
        let inode = st.next_inode;
        st.next_inode += 1;
        st.inodes.insert(inode, Inode::default());
        st.names.insert(path.to_path_buf(), inode);
        st.dir_changes.push(DirChange::Create {
            path: path.to_path_buf(),
            inode,
        });
        Ok(Box::new(SimAppendFile {
            fs: self.clone(),
            path: path.to_path_buf(),
            inode,
            len_bytes: 0,
        }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        let st = self.lock();
        let inode = st.inode_of(path)?;
        let f = st.inodes.get(&inode).ok_or_else(|| not_found(path))?;
        Ok(Box::new(SimReadFile {
            fs: self.clone(),
            path: path.to_path_buf(),
            inode,
            len_bytes: f.current.len() as u64,
        }))
    }
}

/// A file of a [`SimFs`] being appended to ([`Vfs::create_append`]); the file's only writer.
struct SimAppendFile {
    fs: SimFs,
    path: PathBuf,
    inode: u64,
    len_bytes: u64,
}

impl AppendFile for SimAppendFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.fs.lock();
        st.spend()?;
        st.reserve(bytes.len() as u64, 0)?;
        let end = self.len_bytes as usize + bytes.len();
        if let Some(f) = st.inodes.get_mut(&self.inode) {
            // The page cache grows with the write; `issue` fills the new bytes.
            f.current.resize(end, 0);
        }
        st.issue(self.inode, self.len_bytes, bytes);
        self.len_bytes = end as u64;
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.fs
            .lock()
            .sync(self.inode)
            .map_err(io::Error::from_raw_os_error)
    }

    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }
}

/// A file of a [`SimFs`] opened for reading ([`Vfs::open_read`]): reads see the page cache as
/// it is at the time of the read, like `pread`.
struct SimReadFile {
    fs: SimFs,
    path: PathBuf,
    inode: u64,
    len_bytes: u64,
}

impl ReadFile for SimReadFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let st = self.fs.lock();
        let current: &[u8] = st
            .inodes
            .get(&self.inode)
            .map_or(&[], |f| f.current.as_slice());
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start
            .checked_add(buf.len())
            .and_then(|end| current.get(start..end))
        {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at offset {offset} of {}: the file ends at {}",
                    buf.len(),
                    self.path.display(),
                    current.len()
                ),
            )),
        }
    }
}

/// Makes every unsynced change of `dir` durable (in order), leaving the other directories'.
fn sync_dir_locked(st: &mut SimState, dir: &Path) {
    let changes = std::mem::take(&mut st.dir_changes);
    let mut rest = Vec::new();
    for c in changes {
        if c.dir() == dir {
            c.apply(&mut st.durable_names);
        } else {
            rest.push(c);
        }
    }
    st.dir_changes = rest;
    // Entries created by compound operations are durable by themselves.
    let current: Vec<(PathBuf, u64)> = st
        .names
        .iter()
        .filter(|(p, _)| p.parent() == Some(dir))
        .map(|(p, i)| (p.clone(), *i))
        .collect();
    st.durable_names
        .retain(|p, _| p.parent() != Some(dir) || st.names.contains_key(p));
    for (p, i) in current {
        st.durable_names.insert(p, i);
    }
}

/// A handle to one file (inode) of a [`SimFs`]. It keeps its own copy of the current bytes (what
/// a mapping would show) so that [`LogFile::read`] can lend them out; it is the file's only
/// writer.
///
/// The copy lives in a fixed heap buffer written through a raw pointer, like the kernel writing
/// into a shared mapping: a write touches only its own range, and readers borrow only ranges no
/// write in flight touches (the contract of [`LogFile::read`]).
struct SimFile {
    fs: SimFs,
    path: PathBuf,
    inode: u64,
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
    fn new(fs: SimFs, path: PathBuf, inode: u64, contents: &[u8]) -> SimFile {
        let boxed: Box<[u8]> = contents.to_vec().into_boxed_slice();
        let len = boxed.len();
        SimFile {
            fs,
            path,
            inode,
            data: Box::into_raw(boxed) as *mut u8,
            len,
            writing: Mutex::new(()),
        }
    }

    /// Copies a write into this handle's view (what a mapping would show at once).
    fn show(&self, w: &WriteAt<'_>) {
        let at = w.offset as usize;
        // SAFETY: in bounds (checked by the caller); no reader borrows this range (contract).
        unsafe {
            std::ptr::copy_nonoverlapping(w.bytes.as_ptr(), self.data.add(at), w.bytes.len())
        };
    }

    fn check_bounds(&self, writes: &[WriteAt<'_>]) {
        for w in writes {
            let end = w.offset + w.bytes.len() as u64;
            assert!(
                end <= self.len as u64,
                "write [{}, {end}) past the end ({}) of {}: files never grow here",
                w.offset,
                self.len,
                self.path.display()
            );
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
        self.check_bounds(writes);
        let _one_writer = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = self.fs.lock();
        st.spend()?;
        for w in writes {
            self.show(w);
            st.issue(self.inode, w.offset, w.bytes);
        }
        // fdatasync covers every earlier write of this file, not only this batch's.
        st.sync(self.inode).map_err(io::Error::from_raw_os_error)
    }

    fn start_durable_write(self: Arc<Self>, offset: u64, bytes: Vec<u8>) -> DurableWrite {
        let w = WriteAt {
            offset,
            bytes: &bytes,
        };
        self.check_bounds(&[w]);
        let mut st = self.fs.lock();
        if let Err(e) = st.spend() {
            return Box::pin(std::future::ready((Err(e), bytes)));
        }
        self.show(&w);
        let seq = st.issue(self.inode, offset, &bytes);
        if !st.deferred {
            let result = st
                .sync_upto(self.inode, seq)
                .map_err(io::Error::from_raw_os_error);
            return Box::pin(std::future::ready((result, bytes)));
        }
        let id = st.next_op;
        st.next_op += 1;
        st.ops.insert(
            id,
            SimOp {
                inode: self.inode,
                seq,
                dir: None,
                result: None,
                waker: None,
            },
        );
        st.started.push(id);
        drop(st);
        Box::pin(SimIo {
            fs: self.fs.clone(),
            id,
            buffer: Some(bytes),
        })
    }
}

/// A deferred async write's future: ready once [`SimFs::complete_io`] completed it.
struct SimIo {
    fs: SimFs,
    id: u64,
    buffer: Option<Vec<u8>>,
}

impl Future for SimIo {
    type Output = (io::Result<()>, Vec<u8>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.fs.lock();
        let done = match st.ops.get_mut(&self.id) {
            // A power loss took it: the machine is gone, nobody will see this.
            None => Some(Err(libc::EIO)),
            Some(op) => match op.result {
                Some(r) => Some(r),
                None => {
                    op.waker = Some(cx.waker().clone());
                    None
                }
            },
        };
        match done {
            Some(r) => {
                st.ops.remove(&self.id);
                drop(st);
                let buffer = self.buffer.take().unwrap_or_default();
                Poll::Ready((r.map_err(io::Error::from_raw_os_error), buffer))
            }
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk_with_file(len: u64) -> (SimFs, PathBuf) {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let p = dir.join("f");
        fs.create_zeroed(&p, len).unwrap();
        (fs, p)
    }

    #[test]
    fn prefix_power_loss_keeps_synced_bytes_and_a_prefix_of_unsynced_writes() {
        let (fs, p) = disk_with_file(1024);
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
        let r = fs.power_loss_prefix(1, Some(1));
        assert_eq!(r.pending_writes, 3);
        assert_eq!(r.torn_write_bytes_kept, Some(1));
        let b = fs.read_file(&p).unwrap();
        assert_eq!(&b[..10], &[1, 1, 0, 0, 2, 2, 0, 0, 0, 0]);
        assert_eq!(&b[509..514], &[0, 3, 0, 0, 0]);
    }

    #[test]
    fn a_write_inside_one_sector_never_tears() {
        for seed in 0..200 {
            let (fs, p) = disk_with_file(1024);
            let f = fs.open(&p).unwrap();
            fs.fail_next_syncs(1);
            assert!(f
                .write_durable(&[WriteAt {
                    offset: 0,
                    bytes: &[7; 64]
                }])
                .is_err());
            drop(f);
            fs.power_loss(seed);
            let b = fs.read_file(&p).unwrap();
            assert!(
                b[..64] == [0; 64] || b[..64] == [7; 64],
                "seed {seed}: a one-sector write landed partly"
            );
        }
    }

    /// The random model: over many seeds every sector of an unsynced multi-sector write is seen
    /// kept and dropped independently of its neighbours (not only prefixes), and torn sectors
    /// occur; synced data always survives.
    #[test]
    fn random_power_loss_keeps_any_subset_of_unsynced_sectors() {
        let mut patterns = BTreeSet::new();
        let mut torn = 0;
        for seed in 0..400 {
            let (fs, p) = disk_with_file(4096);
            let f = fs.open(&p).unwrap();
            f.write_durable(&[WriteAt {
                offset: 0,
                bytes: &[9; 16],
            }])
            .unwrap();
            fs.fail_next_syncs(1);
            let _ = f.write_durable(&[WriteAt {
                offset: 512,
                bytes: &[5; 1536],
            }]);
            drop(f);
            let r = fs.power_loss(seed);
            torn += r.sectors_torn;
            let b = fs.read_file(&p).unwrap();
            assert_eq!(&b[..16], &[9; 16], "seed {seed}: synced bytes lost");
            let kept: Vec<bool> = (0..3).map(|s| b[512 + s * 512] == 5).collect();
            patterns.insert(kept);
        }
        assert_eq!(patterns.len(), 8, "every subset of 3 sectors: {patterns:?}");
        assert!(torn > 0);
    }

    /// A rename or remove no directory fsync covered may be undone by a power loss; after
    /// `sync_dir` it stays. A file created by `create_zeroed` is durable with its name.
    #[test]
    fn directory_changes_survive_only_after_the_directory_is_synced() {
        let mut undone_seen = false;
        let mut kept_seen = false;
        for seed in 0..64 {
            let (fs, p) = disk_with_file(512);
            let dir = Path::new("/d");
            let q = dir.join("g");
            fs.rename(&p, &q).unwrap();
            assert_eq!(fs.paths(), vec![q.clone()]);
            fs.power_loss(seed);
            match fs.paths().as_slice() {
                [x] if *x == p => undone_seen = true,
                [x] if *x == q => kept_seen = true,
                other => panic!("seed {seed}: a rename is atomic, found {other:?}"),
            }
            let (fs, p) = disk_with_file(512);
            fs.rename(&p, &q).unwrap();
            fs.sync_dir(dir).unwrap();
            fs.remove(&q).unwrap();
            fs.sync_dir(dir).unwrap();
            fs.power_loss(seed);
            assert!(
                fs.paths().is_empty(),
                "seed {seed}: a synced remove came back"
            );
        }
        assert!(undone_seen && kept_seen);
    }

    /// An append file: appends are visible at once; a power loss keeps what `sync_data`
    /// covered, and of the rest a length anywhere between the synced and the written one, with
    /// any subset of the unsynced sectors (missing ones read as zeros). The file's name survives
    /// only once its directory was synced.
    #[test]
    fn appended_bytes_survive_as_far_as_the_last_sync_and_maybe_more() {
        let dir = Path::new("/d");
        let (mut lengths, mut holes, mut gone) = (BTreeSet::new(), 0, 0);
        for seed in 0..300 {
            let fs = SimFs::new();
            fs.create_dir_all(dir).unwrap();
            let p = dir.join("a");
            let mut f = fs.create_append(&p).unwrap();
            assert_eq!(
                fs.create_append(&p).err().map(|e| e.kind()),
                Some(io::ErrorKind::AlreadyExists)
            );
            f.append(&[1; 1000]).unwrap();
            f.sync_data().unwrap();
            if seed % 2 == 0 {
                fs.sync_dir(dir).unwrap();
            }
            f.append(&[2; 2000]).unwrap();
            assert_eq!(f.len_bytes(), 3000);
            let r = fs.open_read(&p).unwrap();
            let mut buf = [0u8; 8];
            r.read_exact_at(2992, &mut buf).unwrap();
            assert_eq!(buf, [2; 8]);
            assert!(r.read_exact_at(2993, &mut buf).is_err());
            drop((f, r));
            fs.power_loss(seed);
            let Some(b) = fs.read_file(&p) else {
                assert!(seed % 2 == 1, "seed {seed}: a synced entry was lost");
                gone += 1;
                continue;
            };
            assert!(
                b.len() >= 1000 && b.len() <= 3000,
                "seed {seed}: {}",
                b.len()
            );
            assert!(
                b[..1000].iter().all(|&x| x == 1),
                "seed {seed}: synced bytes lost"
            );
            assert!(b[1000..].iter().all(|&x| x == 2 || x == 0), "seed {seed}");
            if b[1000..].windows(2).any(|w| w[0] == 0 && w[1] == 2) {
                holes += 1;
            }
            lengths.insert(b.len());
        }
        assert!(lengths.contains(&1000) && lengths.contains(&3000) && lengths.len() > 10);
        assert!(holes > 0, "an unsynced sector dropped before a kept one");
        assert!(gone > 0, "an unsynced creation undone");
    }

    /// After `power_off_after(n)`, the (n+1)-th operation and every later one fail and change
    /// nothing; the power loss restarts the machine.
    #[test]
    fn the_power_goes_off_after_the_given_operations() {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let start = fs.ops_total();
        fs.power_off_after(2);
        let mut f = fs.create_append(&dir.join("a")).unwrap();
        f.append(b"xy").unwrap();
        assert!(f.sync_data().is_err());
        assert!(fs.rename(&dir.join("a"), &dir.join("b")).is_err());
        assert!(f.append(b"z").is_err());
        assert_eq!(fs.ops_total() - start, 5);
        assert_eq!(fs.paths(), vec![dir.join("a")]);
        assert_eq!(fs.read_file(&dir.join("a")).unwrap(), b"xy");
        drop(f);
        fs.power_loss(0);
        fs.create_append(&dir.join("c")).unwrap();
    }

    /// Deferred mode: an async write is visible at once but durable only once completed, and an
    /// fdatasync covers only the writes issued before it.
    #[test]
    fn deferred_async_writes_become_durable_when_completed() {
        let (fs, p) = disk_with_file(1024);
        fs.set_deferred_io(true);
        let f = fs.open(&p).unwrap();
        let mut a = Arc::clone(&f).start_durable_write(0, vec![1; 8]);
        let mut b = Arc::clone(&f).start_durable_write(8, vec![2; 8]);
        assert_eq!(&f.bytes()[..16], &[[1u8; 8], [2u8; 8]].concat()[..]);
        let started = fs.take_started_io();
        assert_eq!(started.len(), 2);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(a.as_mut().poll(&mut cx).is_pending());
        // The second write's sync completes first: it covers both writes issued before it.
        assert!(fs.complete_io(started[1]));
        assert!(matches!(b.as_mut().poll(&mut cx), Poll::Ready((Ok(()), _))));
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert!(fs.complete_io(started[0]));
        assert!(matches!(a.as_mut().poll(&mut cx), Poll::Ready((Ok(()), _))));
        // A third write, never completed, is lost or kept by the power loss.
        let c = Arc::clone(&f).start_durable_write(16, vec![3; 8]);
        drop(c);
        drop(f);
        fs.power_loss(1);
        let bytes = fs.read_file(&p).unwrap();
        assert_eq!(&bytes[..16], &[[1u8; 8], [2u8; 8]].concat()[..]);
        assert!(fs.io_in_flight().is_empty());
    }
}
