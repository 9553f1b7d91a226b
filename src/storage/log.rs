//! The segmented Raft log (`RaftLog`): open and recovery, durable appends, mmap reads, suffix
//! truncation, prefix compaction and segment rotation. docs/FORMAT.md ("Operations", "Recovery")
//! describes what each operation does for crash safety; this module implements that text.
//!
//! # What it owns
//! The node directory's segment files (`segment_<base>.log`), the one prepared file that becomes
//! the next segment (`next_segment.prep`, zero-filled or fallocated off the append path), the
//! pool of compacted segment files kept for recycling (`recycle_<n>.pool`, at most
//! [`LogConfig::recycle_segments_max`]) and the `LOCK` file. Segments are kept in a `BTreeMap`
//! keyed by base index.
//!
//! Rotation ([`RaftLog::begin_rotation`], [`Rotation`], [`RaftLog::finish_rotation`]) writes
//! the open segment's seal and the next file's header in parallel and renames the file into
//! place only once both are durable; the append engine awaits that I/O off its thread, the
//! blocking [`RaftLog::append`] runs it inline. It takes the next segment's file from the pool first (its blocks are allocated and
//! written, so appends into it are plain overwrites, with no zero-fill doubling the disk writes),
//! then from the prepared file. A recycled file gets a fresh salt, its new base index and the
//! recycled flag in its header before it is renamed into place, so the stale frames of its
//! previous life never validate (docs/FORMAT.md, "Recycling").
//!
//! # Invariants
//! - Segments are contiguous: each base index is the previous segment's last index + 1; only the
//!   last segment is open for appends, every earlier one is sealed (its header counts its entries).
//! - `first_index <= last_index + 1`; `last_term` is the term of `last_index` (or of the last
//!   compacted entry when the log is empty).
//! - An entry is visible to readers only after the fdatasync that covered it completed.
//! - After any write or sync failure the log is poisoned: every later mutation returns
//!   [`LogError::Poisoned`] (no retry, fsyncgate). Reads keep working on what is mapped.
//! - A full file system is not such a failure: appends go into preallocated segments and never
//!   need new blocks; only *creating* the next segment file does. When that fails with
//!   `ENOSPC`, the partial file is gone (the [`Vfs`] contract), appends go on while the open
//!   segment has room, the background preparation is retried every
//!   [`PREPARE_RETRY_INTERVAL`], and an append that needs the next segment before one could be
//!   had is refused with [`LogError::NoSpace`], with the log unchanged and not poisoned: the
//!   caller retries it (docs/FORMAT.md, "A full disk").

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::storage::file::{is_no_space, LogFile, Prepare, Vfs, WriteAt};
use crate::storage::format::{
    check_segment_size, entry_payload_max_bytes, frame_padded_len, parse_segment_file_name,
    segment_file_name, FrameFields, SegmentHeader, SEGMENT_SIZE_DEFAULT_BYTES,
};
use crate::storage::segment::{scan_segment, LogFileSegment, ProblemKind, SegmentError};
use crate::storage::uring::UringVfs;
use crate::types::{EntryType, LogEntry, LogIndex, NodeId, Term};

/// Held with `flock(LOCK_EX)` while a log is open, so two processes never write one log.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// Takes the directory's lock; released when the returned file is closed (or the process dies).
fn lock_dir(dir: &Path) -> Result<std::fs::File, LogError> {
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_FILE_NAME);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_err("open lock file", &path, e))?;
    // A lock that is taken may still be on its way out: between `fork` and `exec`, a child of
    // this process holds a copy of every descriptor, and with it the `flock` of a log this
    // process has just closed (descriptors are close-on-exec, so the copy goes at `exec`).
    // Retry for a moment before calling the directory locked.
    let deadline = std::time::Instant::now() + LOCK_WAIT_MAX;
    loop {
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(f);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io_err("flock", &path, e));
        }
        if std::time::Instant::now() >= deadline {
            return Err(LogError::Locked {
                dir: dir.to_path_buf(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// After a background preparation of the next segment failed (a full disk, typically), how long
/// the log waits before it starts another one (from the next append after that).
pub const PREPARE_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// How long [`lock_dir`] retries a taken lock before it reports [`LogError::Locked`].
const LOCK_WAIT_MAX: std::time::Duration = std::time::Duration::from_millis(200);

/// The file prepared off the append path (zero-filled or fallocated: it reads as zero) that
/// becomes the next segment at rotation.
pub const PREPARED_SEGMENT_NAME: &str = "next_segment.prep";

const RECYCLE_FILE_PREFIX: &str = "recycle_";
const RECYCLE_FILE_SUFFIX: &str = ".pool";

/// The name of pool file number `seq` (a compacted segment kept for recycling).
pub fn recycle_file_name(seq: u64) -> String {
    format!("{RECYCLE_FILE_PREFIX}{seq:06}{RECYCLE_FILE_SUFFIX}")
}

/// The number of a pool file name, `None` for any other name.
pub fn parse_recycle_file_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(RECYCLE_FILE_PREFIX)?
        .strip_suffix(RECYCLE_FILE_SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Errors of the storage layer: what went wrong and where.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    #[error("I/O error during {op} on {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    #[error(
        "corrupt log: {} at offset {offset} (index {index}): {reason}; inspect it with `segdump verify {}`",
        file.display(),
        file.parent().map(|p| p.display().to_string()).unwrap_or_default()
    )]
    Corrupt {
        file: PathBuf,
        offset: u64,
        index: LogIndex,
        reason: String,
    },
    #[error("the log is poisoned by an earlier write or sync failure ({reason}); it accepts no more writes")]
    Poisoned { reason: String },
    #[error("entry {index} has a {payload_bytes}-byte payload; at most {max_bytes} bytes fit")]
    EntryTooLarge {
        index: LogIndex,
        payload_bytes: usize,
        max_bytes: usize,
    },
    #[error("entry {got} does not continue the log (next index is {expected})")]
    NotContiguous { expected: LogIndex, got: LogIndex },
    #[error("entry {index} has term {term}, below the log's last term {last_term}")]
    TermRegression {
        index: LogIndex,
        term: Term,
        last_term: Term,
    },
    #[error("index {index} is outside the log ({first}..={last})")]
    OutOfRange {
        index: LogIndex,
        first: LogIndex,
        last: LogIndex,
    },
    #[error("invalid log config: {0}")]
    Config(String),
    #[error("{} is locked by another process (or another RaftLog in this one)", dir.display())]
    Locked { dir: PathBuf },
    /// The open segment is full and the file system of `dir` has no room for the next one
    /// (`ENOSPC` while preparing it). Nothing was written and the log is not poisoned: the same
    /// append succeeds once `needed_bytes` are free (or compaction put a segment file into the
    /// recycling pool).
    #[error(
        "no space left on the file system of {}: the next {needed_bytes}-byte log segment cannot be created; appends wait until space is freed",
        dir.display()
    )]
    NoSpace { dir: PathBuf, needed_bytes: u64 },
}

fn io_err(op: &'static str, path: &Path, e: io::Error) -> LogError {
    LogError::Io {
        op,
        path: path.to_path_buf(),
        source: Arc::new(e),
    }
}

/// The directory of `path` (where its entry lives).
fn dir_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// Removes `path` and fsyncs its directory: the removal is durable when this returns.
fn remove_durably(vfs: &dyn Vfs, path: &Path, op: &'static str) -> Result<(), LogError> {
    vfs.remove(path).map_err(|e| io_err(op, path, e))?;
    vfs.sync_dir(dir_of(path))
        .map_err(|e| io_err("fsync directory", dir_of(path), e))
}

/// Renames `from` to `to` and fsyncs the directory: durable when this returns.
fn rename_durably(vfs: &dyn Vfs, from: &Path, to: &Path, op: &'static str) -> Result<(), LogError> {
    vfs.rename(from, to).map_err(|e| io_err(op, to, e))?;
    vfs.sync_dir(dir_of(to))
        .map_err(|e| io_err("fsync directory", dir_of(to), e))
}

fn seg_err(op: &'static str, path: &Path, e: SegmentError) -> LogError {
    match e {
        SegmentError::Io(e) => io_err(op, path, e),
        SegmentError::Corrupt {
            offset,
            index,
            reason,
        } => LogError::Corrupt {
            file: path.to_path_buf(),
            offset,
            index,
            reason,
        },
    }
}

/// The log's configuration; [`LogConfig::validate`] checks the limits and their relations.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// The node directory holding the segments (`<log_directory>/node_<id>`).
    pub dir: PathBuf,
    /// Size of every segment file (default 64 MiB), a multiple of 8, at most 4 GiB.
    pub segment_size_bytes: u64,
    /// Most compacted segment files kept for recycling (0: compaction deletes them). A recycled
    /// file spares the next rotation a zero-fill (or the extent conversions of a fallocated file)
    /// at the price of this many segments of disk space.
    pub recycle_segments_max: usize,
    /// Prepare the next segment file on a background thread (production). Off, the file is
    /// prepared at the rotation that needs it, on the caller's thread: the deterministic
    /// simulator turns it off, since a thread's timing would make its runs unrepeatable.
    pub prepare_in_background: bool,
}

impl LogConfig {
    /// Defaults for a log in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> LogConfig {
        LogConfig {
            dir: dir.into(),
            segment_size_bytes: SEGMENT_SIZE_DEFAULT_BYTES,
            recycle_segments_max: 2,
            prepare_in_background: true,
        }
    }

    /// Defaults for node `id` under `log_directory` (the seed's `<log_directory>/node_<id>`).
    pub fn for_node(log_directory: impl AsRef<Path>, id: NodeId) -> LogConfig {
        LogConfig::new(log_directory.as_ref().join(format!("node_{id}")))
    }

    /// # Errors
    /// [`LogError::Config`] naming the first limit that is out of range.
    pub fn validate(&self) -> Result<(), LogError> {
        check_segment_size(self.segment_size_bytes)
            .map_err(|e| LogError::Config(format!("segment_size_bytes: {e}")))?;
        Ok(())
    }

    /// The largest payload one entry may carry in a log with this config.
    pub fn entry_payload_max_bytes(&self) -> usize {
        entry_payload_max_bytes(self.segment_size_bytes)
    }
}

/// One entry read from the log, borrowing its payload from the segment's mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub term: Term,
    pub index: LogIndex,
    pub entry_type: EntryType,
    pub payload: &'a [u8],
}

impl EntryRef<'_> {
    pub fn to_owned_entry(&self) -> LogEntry {
        LogEntry {
            term: self.term,
            index: self.index,
            entry_type: self.entry_type,
            payload: self.payload.to_vec(),
        }
    }
}

/// What recovery did on open (also logged through `tracing`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    /// A torn tail that was cut: file, offset of the cut, bytes zeroed, frames dropped.
    pub torn_tail: Option<(PathBuf, u64, u64, u64)>,
    /// An interrupted truncation that was completed: the file and the range zeroed.
    pub finished_truncation: Option<(PathBuf, Range<u64>)>,
}

/// A segment file being prepared on a background thread.
struct Preparation {
    /// The preparation's outcome and how long it ran (seconds).
    handle: JoinHandle<(io::Result<bool>, f64)>,
    cancel: Arc<AtomicBool>,
    how: Prepare,
    started: Instant,
}

/// An append between [`RaftLog::stage_append`] and [`RaftLog::publish_staged`]: the encoded
/// frames of a prefix of the entries that fits the open segment.
pub struct StagedAppend {
    frames: Vec<u8>,
    offsets: Vec<u32>,
    first: LogIndex,
    last_term: Term,
    /// How many of the entries passed to `stage_append` this covers.
    pub entries: usize,
}

impl StagedAppend {
    /// The encoded frames, for a caller that performs the durable write itself instead of
    /// [`RaftLog::write_staged`] (see [`RaftLog::staged_target`]).
    pub fn frames(&self) -> &[u8] {
        &self.frames
    }

    /// Takes the encoded frames out (to hand them to an owned-buffer write); give them back with
    /// [`StagedAppend::put_frames`] before publishing.
    pub fn take_frames(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.frames)
    }

    /// Puts back the frames taken by [`StagedAppend::take_frames`] (the write returns its buffer).
    pub fn put_frames(&mut self, frames: Vec<u8>) {
        self.frames = frames;
    }
}

/// The directory fsync that makes a rotation's rename durable ([`Rotation::write`]).
pub type DirSync = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), LogError>>>>;

/// A segment rotation between [`RaftLog::begin_rotation`] and [`RaftLog::finish_rotation`]:
/// what must be written, and in which order, to seal the open segment and put the next one in
/// place (docs/FORMAT.md, "Segment creation, preallocation and rotation"). It holds no borrow of
/// the log, so its I/O can be awaited while the log is read.
pub struct Rotation {
    /// The open segment's file and the header that seals it.
    sealed_file: Arc<dyn LogFile>,
    sealed: SegmentHeader,
    /// The next segment's file (a pool file or the prepared file, not part of the log until the
    /// rename) and its new header.
    next_file: Arc<dyn LogFile>,
    next: SegmentHeader,
    from: PathBuf,
    to: PathBuf,
    vfs: Arc<dyn Vfs>,
}

impl Rotation {
    /// The rotation's I/O, awaited without blocking the thread where the [`Vfs`] can: the seal
    /// and the next header are written together, each with its own fdatasync (both in the
    /// device's hands at once), and only once BOTH are durable is the next file renamed into
    /// place. The order is what recovery relies on: a durable rename without the durable seal
    /// would leave a non-last segment whose header misses entries.
    ///
    /// Resolves once the rename happened, with the directory fsync that makes it durable still
    /// running: the returned [`DirSync`]. The caller may write into the new segment meanwhile
    /// (a crash that loses the rename leaves those frames in a file outside the log, see
    /// docs/FORMAT.md) but must not report any entry in it durable before the [`DirSync`]
    /// resolved `Ok`.
    ///
    /// # Errors
    /// Any I/O error; pass the result to [`RaftLog::finish_rotation`], which poisons the log.
    /// The [`DirSync`]'s error must poison it as well (it fails the write it is joined with).
    pub async fn write(&self) -> Result<DirSync, LogError> {
        let seal =
            Arc::clone(&self.sealed_file).start_durable_write(0, self.sealed.encode().to_vec());
        let header =
            Arc::clone(&self.next_file).start_durable_write(0, self.next.encode().to_vec());
        let ((sealed, _), (headed, _)) = tokio::join!(seal, header);
        sealed.map_err(|e| io_err("seal segment", self.sealed_file.path(), e))?;
        headed.map_err(|e| io_err("write segment header", &self.from, e))?;
        // Between `rotate_start` and `rotate_done`: where the headers' syncs end and the rename
        // begins.
        let last = self.sealed.last_index().0;
        crate::timeline::mark("rotate_headers_done", last);
        let rename = self.vfs.start_rename_durably(&self.from, &self.to);
        rename
            .renamed
            .await
            .map_err(|e| io_err("rename prepared segment", &self.to, e))?;
        let dir = dir_of(&self.to).to_path_buf();
        let durable = rename.durable;
        Ok(Box::pin(async move {
            let r = durable
                .await
                .map_err(|e| io_err("fsync directory", &dir, e));
            crate::timeline::mark("rotate_dir_synced", last);
            r
        }))
    }

    /// [`Rotation::write`] on the calling thread (tools, tests, recovery): the same steps, the
    /// two header writes one after the other.
    ///
    /// # Errors
    /// As [`Rotation::write`].
    pub fn write_blocking(&self) -> Result<(), LogError> {
        self.sealed_file
            .write_durable(&[WriteAt {
                offset: 0,
                bytes: &self.sealed.encode(),
            }])
            .map_err(|e| io_err("seal segment", self.sealed_file.path(), e))?;
        self.next_file
            .write_durable(&[WriteAt {
                offset: 0,
                bytes: &self.next.encode(),
            }])
            .map_err(|e| io_err("write segment header", &self.from, e))?;
        rename_durably(&*self.vfs, &self.from, &self.to, "rename prepared segment")
    }
}

/// The segmented log. See the module docs.
pub struct RaftLog {
    config: LogConfig,
    vfs: Arc<dyn Vfs>,
    segments: BTreeMap<LogIndex, LogFileSegment>,
    first_index: LogIndex,
    /// The term of `first_index - 1`.
    compacted_term: Term,
    last_index: LogIndex,
    last_term: Term,
    poisoned: Option<String>,
    /// Reused frame buffer and per-frame offsets of the batch being written.
    frames: Vec<u8>,
    frame_offsets: Vec<u32>,
    /// Zero-fills [`PREPARED_SEGMENT_NAME`] off the append path.
    preparing: Option<Preparation>,
    /// Frame bytes appended since open, and (time, that count) at the first append after open
    /// or the last rotation since: the append rate, hence how long a segment lasts, is known
    /// at the first rotation (a reopened log would otherwise need two).
    appended_bytes: u64,
    rate_mark: Option<(Instant, u64)>,
    /// How long the segment before the last rotation lasted (extrapolated from the append rate),
    /// and how long a zero-fill of a segment takes: they choose between zero-filling and
    /// fallocating.
    last_segment_secs: Option<f64>,
    zero_fill_secs: Option<f64>,
    /// [`PREPARED_SEGMENT_NAME`] exists, complete, with no preparation running.
    prepared_ready: bool,
    /// Since when preparing the next segment keeps failing for lack of space (for the log lines
    /// that open and close the episode).
    no_space_since: Option<Instant>,
    /// When the next background preparation may start after one failed.
    prepare_retry_at: Option<Instant>,
    /// Compacted segment files kept for recycling, oldest first, and the next pool number.
    pool: std::collections::VecDeque<PathBuf>,
    pool_seq: u64,
    /// A [`Rotation`] was begun and not finished yet.
    rotating: bool,
    recovery: RecoveryReport,
    /// The open, `flock`ed [`LOCK_FILE_NAME`] (production only): one process per log.
    dir_lock: Option<std::fs::File>,
}

fn fresh_salt(base: LogIndex) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per process and per instance; mixing in the clock, pid
    // and base index makes a salt unique to this life of the file in practice.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.write_u64(base.0);
    h.finish()
}

impl RaftLog {
    /// Opens (or creates) the log in `config.dir` on the real disk (io_uring + mmap).
    ///
    /// # Errors
    /// Config, I/O, or [`LogError::Corrupt`] when recovery finds damaged durable data.
    pub fn open(config: LogConfig) -> Result<RaftLog, LogError> {
        let vfs = UringVfs;
        vfs.create_dir_all(&config.dir)
            .map_err(|e| io_err("create directory", &config.dir, e))?;
        let lock = lock_dir(&config.dir)?;
        let mut log = RaftLog::open_with(config, Arc::new(vfs))?;
        log.dir_lock = Some(lock);
        Ok(log)
    }

    /// Opens (or creates) the log through any [`Vfs`] (tests pass a simulated disk).
    ///
    /// Recovery: every sealed segment's header is validated (magic, version, checksum, base
    /// index = file name = previous segment's last index + 1) but its frames are not read; the
    /// last segment is scanned ([`scan_segment`]): a torn tail is cut and zeroed durably, damaged
    /// acknowledged data is refused with [`LogError::Corrupt`].
    pub fn open_with(config: LogConfig, vfs: Arc<dyn Vfs>) -> Result<RaftLog, LogError> {
        config.validate()?;
        let dir = config.dir.clone();
        vfs.create_dir_all(&dir)
            .map_err(|e| io_err("create directory", &dir, e))?;
        let names = vfs
            .list_dir(&dir)
            .map_err(|e| io_err("list directory", &dir, e))?;
        let mut bases: Vec<(LogIndex, String)> = Vec::new();
        let mut prepared_ready = false;
        let mut prepared_has_header = false;
        let mut pool: Vec<(u64, PathBuf)> = Vec::new();
        for name in names {
            if let Some(base) = parse_segment_file_name(&name) {
                bases.push((base, name));
            } else if let Some(seq) = parse_recycle_file_name(&name) {
                // A compacted segment kept for recycling: whatever its header says (its old one,
                // or a new one that a crash left before the rename into place), it is not part
                // of the log. Keep it if it has the configured size and the pool has room.
                let p = dir.join(&name);
                let len = vfs
                    .open(&p)
                    .map(|f| f.len_bytes())
                    .map_err(|e| io_err("open pool file", &p, e))?;
                if len == config.segment_size_bytes {
                    pool.push((seq, p));
                } else {
                    remove_durably(&*vfs, &p, "remove pool file")?;
                }
            } else if name == PREPARED_SEGMENT_NAME {
                // A prepared file is complete (it is renamed to this name only after its zeros
                // were synced) and never held acknowledged data (nothing in a segment is
                // acknowledged before its rename into place is durable): reuse it if it has the
                // configured size. With a segment header it went through a rotation that a
                // crash undid, and may hold that rotation's unacknowledged frames (see below).
                let p = dir.join(&name);
                let (len, has_header) = vfs
                    .open(&p)
                    .map(|f| (f.len_bytes(), SegmentHeader::decode(f.bytes()).is_ok()))
                    .map_err(|e| io_err("open prepared segment", &p, e))?;
                if len == config.segment_size_bytes {
                    prepared_ready = true;
                    prepared_has_header = has_header;
                } else {
                    remove_durably(&*vfs, &p, "remove leftover")?;
                }
            } else if name.ends_with(".zeroing") {
                // A preparation that a crash interrupted.
                let p = dir.join(&name);
                remove_durably(&*vfs, &p, "remove leftover")?;
            }
        }
        bases.sort();
        if prepared_ready && prepared_has_header && !bases.is_empty() {
            // A rotation's file whose rename into place a crash undid, maybe after the first
            // write into it had started (the append engine writes beside the rename's directory
            // fsync): its frames are unacknowledged, and stale frames with the indexes the log
            // continues with would look like this life's torn tail in the file's next use.
            // Delete it; the next segment is prepared afresh. (With no segment at all it is an
            // interrupted reset, finished below.)
            let p = dir.join(PREPARED_SEGMENT_NAME);
            remove_durably(&*vfs, &p, "remove used prepared segment")?;
            prepared_ready = false;
        }
        pool.sort();
        let pool_seq = pool.last().map_or(0, |(seq, _)| seq + 1);
        while pool.len() > config.recycle_segments_max {
            let (_, p) = pool.remove(0);
            remove_durably(&*vfs, &p, "remove pool file")?;
        }
        let pool = pool.into_iter().map(|(_, p)| p).collect();

        let mut log = RaftLog {
            config,
            vfs,
            segments: BTreeMap::new(),
            first_index: LogIndex(1),
            compacted_term: Term::ZERO,
            last_index: LogIndex::ZERO,
            last_term: Term::ZERO,
            poisoned: None,
            frames: Vec::new(),
            frame_offsets: Vec::new(),
            preparing: None,
            appended_bytes: 0,
            rate_mark: None,
            last_segment_secs: None,
            zero_fill_secs: None,
            prepared_ready,
            no_space_since: None,
            prepare_retry_at: None,
            pool,
            pool_seq,
            rotating: false,
            recovery: RecoveryReport::default(),
            dir_lock: None,
        };

        if bases.is_empty() {
            // No segment: a new log, or a `reset` that a crash interrupted after it had deleted
            // the old segments but before its new segment was renamed into place. Only a reset
            // (or the first segment's creation) leaves a prepared file with a valid header and no
            // segment, so finishing what the header says is right in both cases.
            let prep = log.prepared_path();
            let pending = if log.prepared_ready {
                let f = log
                    .vfs
                    .open(&prep)
                    .map_err(|e| io_err("open prepared segment", &prep, e))?;
                SegmentHeader::decode(f.bytes()).ok()
            } else {
                None
            };
            match pending {
                Some(h) if h.entry_count == 0 => {
                    tracing::warn!(base = %h.base_index, "finishing an interrupted log reset");
                    log.prepared_ready = false;
                    log.install_prepared(&prep, h)?;
                    log.last_index = h.base_index.prev();
                    log.last_term = h.prev_term;
                }
                _ => {
                    let (prep, header) = log.prepare_header(LogIndex(1), Term::ZERO)?;
                    log.install_prepared(&prep, header)?;
                }
            }
        } else {
            let n = bases.len();
            for (i, (base, name)) in bases.into_iter().enumerate() {
                log.open_segment(base, &name, i + 1 == n)?;
            }
        }
        let (first_base, first) = log
            .segments
            .first_key_value()
            .expect("the log has at least one segment");
        log.first_index = *first_base;
        log.compacted_term = first.header().prev_term;
        log.recovery.segments = log.segments.len();
        log.start_preparing();
        Ok(log)
    }

    fn open_segment(&mut self, base: LogIndex, name: &str, is_last: bool) -> Result<(), LogError> {
        let path = self.config.dir.join(name);
        let corrupt = |offset: u64, index: LogIndex, reason: String| LogError::Corrupt {
            file: path.clone(),
            offset,
            index,
            reason,
        };
        let file = self
            .vfs
            .open(&path)
            .map_err(|e| io_err("open segment", &path, e))?;
        let header = SegmentHeader::decode(file.bytes())
            .map_err(|e| corrupt(0, base, format!("bad segment header: {e}")))?;
        header
            .check_file_len(file.len_bytes())
            .map_err(|e| corrupt(0, base, format!("bad segment header: {e}")))?;
        if header.base_index != base {
            return Err(corrupt(
                0,
                base,
                format!(
                    "header base index {} differs from the file name",
                    header.base_index
                ),
            ));
        }
        if let Some(prev) = self.segments.values().next_back() {
            if base != prev.last_index().next() {
                return Err(corrupt(
                    0,
                    base,
                    format!(
                        "base index {base} does not follow the previous segment's last index {}",
                        prev.last_index()
                    ),
                ));
            }
        }
        let segment = if !is_last {
            if header.dirty_range().is_some() {
                return Err(corrupt(
                    0,
                    base,
                    "a sealed segment has an unfinished truncation".into(),
                ));
            }
            LogFileSegment::from_trusted_header(file, header)
        } else {
            let scan = scan_segment(file.bytes(), &header);
            if let Some(p) = &scan.problem {
                if p.kind == ProblemKind::Corrupt {
                    return Err(corrupt(p.offset, p.index, p.reason.clone()));
                }
            }
            let zero = scan.valid_end..scan.zero_end;
            if !zero.is_empty() {
                // Cut the torn tail (or the rest of an interrupted truncation) durably, so that no
                // stale frame can sit behind the next append.
                let zeros = vec![0u8; (zero.end - zero.start) as usize];
                file.write_durable(&[WriteAt {
                    offset: zero.start,
                    bytes: &zeros,
                }])
                .map_err(|e| io_err("zero torn tail", &path, e))?;
                if let Some(p) = &scan.problem {
                    tracing::warn!(
                        file = %path.display(),
                        offset = zero.start,
                        bytes = zero.end - zero.start,
                        entries = scan.dropped_entries,
                        first_dropped_index = %p.index,
                        reason = %p.reason,
                        "cut a torn tail: dropped {} bytes and {} entries from index {}",
                        zero.end - zero.start,
                        scan.dropped_entries,
                        p.index
                    );
                    self.recovery.torn_tail = Some((
                        path.clone(),
                        zero.start,
                        zero.end - zero.start,
                        scan.dropped_entries,
                    ));
                }
            }
            let header = if let Some(r) = header.dirty_range() {
                tracing::warn!(file = %path.display(), "finished an interrupted truncation: zeroed [{}, {})", r.start, r.end);
                self.recovery.finished_truncation = Some((path.clone(), r.clone()));
                let clean = SegmentHeader {
                    dirty_end: 0,
                    ..header
                };
                file.write_durable(&[WriteAt {
                    offset: 0,
                    bytes: &clean.encode(),
                }])
                .map_err(|e| io_err("write segment header", &path, e))?;
                clean
            } else {
                header
            };
            self.last_index = scan.last_index;
            self.last_term = scan.last_term;
            LogFileSegment::from_scan(file, header, scan)
        };
        if !is_last {
            self.last_index = segment.last_index();
        }
        self.segments.insert(base, segment);
        Ok(())
    }

    fn prepared_path(&self) -> PathBuf {
        self.config.dir.join(PREPARED_SEGMENT_NAME)
    }

    /// Starts preparing the next segment file on a background thread, so rotation finds it
    /// ready. Zero-filled at a pace ([`Prepare::ZeroedPaced`]: appends then overwrite written
    /// blocks, and the fill never has the disk to itself for long) unless the last segment filled
    /// up in less than 1.5 zero-fills' time (a zero-fill's own run time, measured by the last
    /// one): then zero-filling would not finish before the rotation that needs it, so the file
    /// is only fallocated (and faulted into the page cache once, which costs no disk I/O for
    /// unwritten extents, so its page-cache pages are allocated here rather than inside the
    /// appends).
    fn start_preparing(&mut self) {
        if !self.config.prepare_in_background {
            // Prepared at the rotation that needs it (`take_prepared`).
            return;
        }
        if self.preparing.is_some() || self.prepared_ready || !self.pool.is_empty() {
            // The next rotation has its file: the prepared one, or a recycled one.
            return;
        }
        // Until a zero-fill was measured, assume it runs at its pace (the disk may be slower,
        // so the first guess errs towards zero-filling).
        let fill_guess = self.config.segment_size_bytes as f64
            / crate::storage::uring::ZERO_FILL_PACED_BYTES_PER_SEC as f64;
        let how = match (
            self.last_segment_secs,
            self.zero_fill_secs.or(Some(fill_guess)),
        ) {
            (Some(lifetime), Some(fill)) if lifetime < 1.5 * fill => Prepare::AllocatedCached,
            // Paced: the appends keep most of the disk while the next segment is written.
            _ => Prepare::ZeroedPaced,
        };
        let vfs = Arc::clone(&self.vfs);
        let path = self.prepared_path();
        let len = self.config.segment_size_bytes;
        let cancel = Arc::new(AtomicBool::new(false));
        let thread_cancel = Arc::clone(&cancel);
        let spawned = std::thread::Builder::new()
            .name("segment-prepare".into())
            .spawn(move || {
                let t = Instant::now();
                crate::timeline::mark("prepare_start", how as u64);
                let r = vfs.prepare_file(&path, len, how, &thread_cancel);
                crate::timeline::mark("prepare_done", how as u64);
                (r, t.elapsed().as_secs_f64())
            });
        if let Ok(handle) = spawned {
            self.preparing = Some(Preparation {
                handle,
                cancel,
                how,
                started: Instant::now(),
            });
        }
    }

    /// Collects the background preparation, if any: cancels it first if it is still running
    /// (rotation never waits for a zero-fill), records whether it left a complete file and, for
    /// a zero-fill, how long it took. A failed one is logged and retried after
    /// [`PREPARE_RETRY_INTERVAL`] ([`RaftLog::poll_preparation`]).
    fn reap_preparation(&mut self) {
        let Some(p) = self.preparing.take() else {
            return;
        };
        let finished = p.handle.is_finished();
        if !finished {
            p.cancel.store(true, Ordering::Relaxed);
        }
        let (outcome, ran_secs) = match p.handle.join() {
            Ok((r, secs)) => (r, secs),
            Err(_) => (Ok(false), p.started.elapsed().as_secs_f64()),
        };
        match outcome {
            Ok(done) => {
                if matches!(p.how, Prepare::Zeroed | Prepare::ZeroedPaced) {
                    // A finished fill measures the fill (its own run time, not the time until
                    // this rotation); a cancelled one says it takes longer than it ran.
                    let known = self.zero_fill_secs.unwrap_or(0.0);
                    self.zero_fill_secs = Some(if finished && done {
                        ran_secs
                    } else {
                        known.max(ran_secs)
                    });
                }
                if done {
                    self.prepared_ready = true;
                    self.space_is_back();
                }
            }
            Err(e) => {
                let path = self.prepared_path();
                if is_no_space(&e) {
                    self.out_of_space(&e);
                } else {
                    tracing::warn!(file = %path.display(), error = %e, "preparing the next segment failed; retrying");
                }
                self.prepare_retry_at = Some(Instant::now() + PREPARE_RETRY_INTERVAL);
            }
        }
    }

    /// Called on every append: collects a finished background preparation and restarts a
    /// failed one once [`PREPARE_RETRY_INTERVAL`] has passed, so that space freed while the
    /// open segment still has room is found before the rotation needs it. Never blocks.
    fn poll_preparation(&mut self) {
        if self
            .preparing
            .as_ref()
            .is_some_and(|p| p.handle.is_finished())
        {
            self.reap_preparation();
        }
        if let Some(at) = self.prepare_retry_at {
            if Instant::now() >= at && self.preparing.is_none() {
                self.prepare_retry_at = None;
                self.start_preparing();
            }
        }
    }

    /// The first failure of an episode of no space is logged; later ones are not.
    fn out_of_space(&mut self, e: &io::Error) {
        if self.no_space_since.is_none() {
            self.no_space_since = Some(Instant::now());
            tracing::warn!(
                dir = %self.config.dir.display(),
                error = %e,
                "no space left for the next log segment ({} bytes) in {}: appends continue until the open segment is full, then wait for space",
                self.config.segment_size_bytes,
                self.config.dir.display()
            );
        }
    }

    fn space_is_back(&mut self) {
        if let Some(since) = self.no_space_since.take() {
            tracing::info!(
                dir = %self.config.dir.display(),
                "space for log segments is back in {} after {} ms",
                self.config.dir.display(),
                since.elapsed().as_millis()
            );
        }
    }

    /// Whether the last attempt to create the next segment file failed for lack of space and
    /// none succeeded since.
    pub fn is_short_of_space(&self) -> bool {
        self.no_space_since.is_some()
    }

    /// Makes sure [`PREPARED_SEGMENT_NAME`] is ready: collects (or cancels) the background
    /// preparation, and prepares the file now if that did not leave one. Never waits for a
    /// zero-fill in progress (that would stall the appends behind the rotation): it is cancelled
    /// and the file is fallocated instead.
    ///
    /// # Errors
    /// [`LogError::NoSpace`] if the file system has no room for it (nothing is left behind, the
    /// log is unchanged: callers do not poison it); any other I/O error.
    fn ensure_prepared(&mut self) -> Result<(), LogError> {
        self.reap_preparation();
        if self.prepared_ready {
            return Ok(());
        }
        let path = self.prepared_path();
        // The first segment of a new log is zero-filled (once); later ones must not stall.
        let how = if self.segments.is_empty() {
            Prepare::Zeroed
        } else {
            Prepare::Allocated
        };
        let never = AtomicBool::new(false);
        crate::timeline::mark("prepare_inline", how as u64);
        match self
            .vfs
            .prepare_file(&path, self.config.segment_size_bytes, how, &never)
        {
            Ok(true) => {
                self.prepared_ready = true;
                self.prepare_retry_at = None;
                self.space_is_back();
                Ok(())
            }
            Ok(false) => Err(io_err(
                "prepare segment",
                &path,
                io::Error::other("preparation cancelled although nobody cancels it"),
            )),
            Err(e) if is_no_space(&e) => {
                self.out_of_space(&e);
                Err(LogError::NoSpace {
                    dir: self.config.dir.clone(),
                    needed_bytes: self.config.segment_size_bytes,
                })
            }
            Err(e) => Err(io_err("prepare segment", &path, e)),
        }
    }

    /// [`RaftLog::ensure_prepared`], poisoning the log on any error but
    /// [`LogError::NoSpace`] (which changed nothing).
    fn ensure_prepared_or_poison(&mut self) -> Result<(), LogError> {
        match self.ensure_prepared() {
            Err(e @ LogError::NoSpace { .. }) => Err(e),
            r => self.poison(r),
        }
    }

    /// Takes the prepared file (preparing it now if needed, see [`RaftLog::ensure_prepared`]).
    fn take_prepared(&mut self) -> Result<PathBuf, LogError> {
        self.ensure_prepared()?;
        self.prepared_ready = false;
        Ok(self.prepared_path())
    }

    /// Picks the file of the segment starting at `base`: a recycled file from the pool if
    /// `recycle` and the pool has one, else the prepared file ([`RaftLog::take_prepared`]), and
    /// the header it must get. Writes nothing.
    ///
    /// A recycled file's header gets a fresh salt, so none of the file's stale frames validates,
    /// and the recycled flag, so recovery takes them for the end of the log rather than for
    /// damage. Until its rename the file is not part of the log: a crash after its header was
    /// written leaves a pool (or prepared) file with a new header, which open never reads as a
    /// segment.
    fn next_segment_file(
        &mut self,
        base: LogIndex,
        prev_term: Term,
        recycle: bool,
    ) -> Result<(PathBuf, SegmentHeader), LogError> {
        if recycle {
            if let Some(path) = self.pool.pop_front() {
                let header = SegmentHeader {
                    recycled: true,
                    ..SegmentHeader::new_empty(base, prev_term, fresh_salt(base))
                };
                return Ok((path, header));
            }
        }
        let prep = self.take_prepared()?;
        Ok((
            prep,
            SegmentHeader::new_empty(base, prev_term, fresh_salt(base)),
        ))
    }

    /// Takes the prepared file and writes (and syncs) the header of a segment starting at `base`.
    fn prepare_header(
        &mut self,
        base: LogIndex,
        prev_term: Term,
    ) -> Result<(PathBuf, SegmentHeader), LogError> {
        let (prep, header) = self.next_segment_file(base, prev_term, false)?;
        let f = self
            .vfs
            .open(&prep)
            .map_err(|e| io_err("open prepared segment", &prep, e))?;
        f.write_durable(&[WriteAt {
            offset: 0,
            bytes: &header.encode(),
        }])
        .map_err(|e| io_err("write segment header", &prep, e))?;
        Ok((prep, header))
    }

    /// Renames the prepared file (whose durable header is `header`) into place as the last segment.
    fn install_prepared(&mut self, prep: &Path, header: SegmentHeader) -> Result<(), LogError> {
        let path = self.config.dir.join(segment_file_name(header.base_index));
        rename_durably(&*self.vfs, prep, &path, "rename prepared segment")?;
        self.add_installed(header)
    }

    /// Opens the segment whose file was just renamed into place (durably, with header
    /// `header`) and makes it the last one.
    fn add_installed(&mut self, header: SegmentHeader) -> Result<(), LogError> {
        let base = header.base_index;
        let path = self.config.dir.join(segment_file_name(base));
        let file = self
            .vfs
            .open(&path)
            .map_err(|e| io_err("open segment", &path, e))?;
        self.segments
            .insert(base, LogFileSegment::from_trusted_header(file, header));
        Ok(())
    }

    fn check_writable(&self) -> Result<(), LogError> {
        match &self.poisoned {
            Some(reason) => Err(LogError::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Records a failed mutation: the log accepts no more writes (no retry, fsyncgate).
    fn poison<T>(&mut self, r: Result<T, LogError>) -> Result<T, LogError> {
        if let Err(e) = &r {
            if self.poisoned.is_none() {
                tracing::error!(error = %e, "storage write failed: the log is poisoned");
                self.poisoned = Some(e.to_string());
            }
        }
        r
    }

    fn last_segment_mut(&mut self) -> &mut LogFileSegment {
        self.segments
            .values_mut()
            .next_back()
            .expect("the log has at least one segment")
    }

    /// Appends `entries` durably: returns only after the fdatasync covering them completed.
    /// Entries must continue the log (`entries[0].index == last_index + 1`, consecutive) with
    /// terms that never decrease. A batch that does not fit the open segment fills it, the
    /// segment is sealed, and the rest goes to the next one (one durable write per segment).
    ///
    /// # Errors
    /// [`LogError::NotContiguous`], [`LogError::TermRegression`], [`LogError::EntryTooLarge`]
    /// (the log is unchanged); [`LogError::Poisoned`]; an I/O error, which poisons the log.
    pub fn append(&mut self, mut entries: &[LogEntry]) -> Result<(), LogError> {
        self.check_append(entries)?;
        while !entries.is_empty() {
            let staged = self.stage_append(entries)?;
            let written = self.write_staged(&staged);
            entries = &entries[staged.entries..];
            self.publish_staged(staged, written)?;
        }
        Ok(())
    }

    /// The checks of [`RaftLog::append`] that leave the log unchanged.
    ///
    /// # Errors
    /// As [`RaftLog::append`], except I/O.
    pub fn check_append(&self, entries: &[LogEntry]) -> Result<(), LogError> {
        self.check_append_iter(entries)
    }

    /// [`RaftLog::check_append`] over entries that need not sit in one slice (the append
    /// engine's group: the entries of several batches, checked without copying them together).
    ///
    /// # Errors
    /// As [`RaftLog::check_append`].
    pub fn check_append_iter<'a>(
        &self,
        entries: impl IntoIterator<Item = &'a LogEntry>,
    ) -> Result<(), LogError> {
        self.check_writable()?;
        check_continues(
            entries,
            self.last_index.next(),
            self.last_term,
            self.config.entry_payload_max_bytes(),
        )
    }

    /// Step 1 of an append (needs `&mut`, short): rotates the open segment if not even the first
    /// entry fits, and encodes the longest prefix of `entries` that fits into one write. The
    /// entries must have passed [`RaftLog::check_append`]; `entries` must not be empty.
    ///
    /// # Errors
    /// [`LogError::Poisoned`]; [`LogError::NoSpace`] if the open segment is full and the next
    /// one cannot be created (the log is unchanged and not poisoned: retry later); other I/O
    /// errors of a rotation, which poison the log.
    pub fn stage_append(&mut self, entries: &[LogEntry]) -> Result<StagedAppend, LogError> {
        self.stage_append_iter(entries)
    }

    /// [`RaftLog::stage_append`] over entries that need not sit in one slice (see
    /// [`RaftLog::check_append_iter`]); `StagedAppend::entries` says how many of them it took.
    ///
    /// # Errors
    /// As [`RaftLog::stage_append`].
    pub fn stage_append_iter<'a>(
        &mut self,
        entries: impl IntoIterator<Item = &'a LogEntry>,
    ) -> Result<StagedAppend, LogError> {
        self.check_writable()?;
        let mut entries = entries.into_iter().peekable();
        let Some(&first) = entries.peek() else {
            panic!("stage_append of no entries");
        };
        assert_eq!(
            first.index,
            self.last_index.next(),
            "stage_append would leave a hole"
        );
        if let Some(rotation) = self.begin_rotation(first)? {
            let written = rotation.write_blocking();
            self.finish_rotation(rotation, written)?;
        }
        let mut frames = std::mem::take(&mut self.frames);
        let mut offsets = std::mem::take(&mut self.frame_offsets);
        frames.clear();
        offsets.clear();
        let seg = self.last_segment_mut();
        let free = seg.free_bytes() as usize;
        let seed = seg.seed();
        let batch_start = first.index;
        let mut n = 0;
        let mut last_term = first.term;
        for e in entries {
            if frames.len() + frame_padded_len(e.payload.len()) > free {
                break;
            }
            offsets.push(frames.len() as u32);
            crate::storage::format::encode_frame(
                &mut frames,
                seed,
                FrameFields {
                    term: e.term,
                    index: e.index,
                    batch_start_index: batch_start,
                    entry_type: e.entry_type,
                },
                &e.payload,
            );
            last_term = e.term;
            n += 1;
        }
        assert!(
            n > 0,
            "entry {} does not fit an empty segment although its size was checked",
            batch_start
        );
        Ok(StagedAppend {
            frames,
            offsets,
            first: batch_start,
            last_term,
            entries: n,
        })
    }

    /// Step 2 of an append (`&self`: readers may run meanwhile): the durable write of the staged
    /// frames, one io_uring submission linked to its fdatasync.
    ///
    /// # Errors
    /// Any I/O error; pass the result to [`RaftLog::publish_staged`], which poisons the log.
    pub fn write_staged(&self, staged: &StagedAppend) -> Result<(), LogError> {
        self.check_writable()?;
        let seg = self
            .segments
            .values()
            .next_back()
            .expect("the log has at least one segment");
        seg.write_frames(&staged.frames)
            .map_err(|e| seg_err("append", seg.path(), e))
    }

    /// Where [`RaftLog::write_staged`] would write the append staged last: the open segment's
    /// file and its append position. For the append engine ([`crate::storage::engine`]), which
    /// starts the write and its fdatasync without blocking ([`LogFile::start_durable_write`]):
    /// it must write exactly [`StagedAppend::frames`] at that offset and see the fdatasync
    /// complete before it passes `Ok(())` to [`RaftLog::publish_staged`]; and it must not change
    /// the log between staging and publishing.
    pub fn staged_target(&self) -> (Arc<dyn LogFile>, u64) {
        let seg = self
            .segments
            .values()
            .next_back()
            .expect("the log has at least one segment");
        (seg.file(), seg.append_position())
    }

    /// Drops the write side (descriptor, io_uring) of the open segment; the next write reopens
    /// it. The append engine calls it when it stops, so that no registration with its runtime's
    /// reactor outlives the runtime.
    pub fn release_io(&self) {
        if let Some(seg) = self.segments.values().next_back() {
            seg.file().release_io();
        }
    }

    /// Step 3 of an append (needs `&mut`, short): makes the entries visible if the write
    /// succeeded, poisons the log if it did not.
    ///
    /// # Errors
    /// The write's error.
    pub fn publish_staged(
        &mut self,
        staged: StagedAppend,
        written: Result<(), LogError>,
    ) -> Result<(), LogError> {
        let r = written.and_then(|()| {
            let seg = self.last_segment_mut();
            let path = seg.path().to_path_buf();
            seg.publish_frames(staged.frames.len(), &staged.offsets, staged.first)
                .map_err(|e| seg_err("append", &path, e))
        });
        if r.is_ok() {
            self.last_index = LogIndex(staged.first.0 + staged.entries as u64 - 1);
            self.appended_bytes += staged.frames.len() as u64;
            if self.rate_mark.is_none() {
                self.rate_mark = Some((Instant::now(), self.appended_bytes));
            }
            self.last_term = staged.last_term;
        }
        // Keep the buffers for the next batch.
        self.frames = staged.frames;
        self.frame_offsets = staged.offsets;
        self.poison(r)
    }

    /// Step 0 of an append, for a caller that awaits a rotation's I/O itself (the append
    /// engine): `None` if `next` (the entry to append next) fits the open segment, else the
    /// [`Rotation`] that makes room, whose [`Rotation::write`] the caller awaits and passes to
    /// [`RaftLog::finish_rotation`] before staging `next`. Until then the log must not be changed
    /// (reads and [`RaftLog::compact_prefix`], which never touches the open segment, are fine).
    /// [`RaftLog::stage_append`] calls it too and runs the rotation on the calling thread.
    ///
    /// # Errors
    /// [`LogError::Poisoned`]; [`LogError::NoSpace`] if the next segment's file cannot be had
    /// (the log is unchanged and not poisoned: retry later); other I/O errors poison the log.
    ///
    /// # Panics
    /// If `next` does not continue the log.
    pub fn begin_rotation(&mut self, next: &LogEntry) -> Result<Option<Rotation>, LogError> {
        self.check_writable()?;
        assert_eq!(
            next.index,
            self.last_index.next(),
            "an append would leave a hole"
        );
        if self.rotating {
            // The last one's I/O was abandoned midway (its future dropped): what of it is
            // durable is unknown.
            let r = Err(LogError::Poisoned {
                reason: "a segment rotation was abandoned before it finished".into(),
            });
            return self.poison(r);
        }
        self.poll_preparation();
        let first_len = frame_padded_len(next.payload.len()) as u64;
        if self.last_segment_mut().free_bytes() >= first_len {
            return Ok(None);
        }
        // Get the next segment's file before anything is written: on a full disk this is what
        // fails, and the log must then be left exactly as it was (not poisoned, the open segment
        // not sealed) so that the caller can retry the same append.
        if self.pool.is_empty() {
            self.ensure_prepared_or_poison()?;
        }
        let r = self.plan_rotation();
        self.poison(r).map(Some)
    }

    fn plan_rotation(&mut self) -> Result<Rotation, LogError> {
        crate::timeline::mark("rotate_start", self.last_index.0);
        let now = Instant::now();
        if let Some((t, bytes)) = self.rate_mark.replace((now, self.appended_bytes)) {
            let appended = self.appended_bytes - bytes;
            if appended > 0 {
                let secs = now.duration_since(t).as_secs_f64();
                self.last_segment_secs =
                    Some(secs * self.config.segment_size_bytes as f64 / appended as f64);
            }
        }
        let seg = self.last_segment_mut();
        let sealed_file = seg.file();
        let sealed = seg.sealed_header();
        let (from, next) = self.next_segment_file(self.last_index.next(), self.last_term, true)?;
        let next_file = self
            .vfs
            .open(&from)
            .map_err(|e| io_err("open prepared segment", &from, e))?;
        self.rotating = true;
        Ok(Rotation {
            sealed_file,
            sealed,
            next_file,
            next,
            to: self.config.dir.join(segment_file_name(next.base_index)),
            from,
            vfs: Arc::clone(&self.vfs),
        })
    }

    /// Completes a rotation whose I/O ([`Rotation::write`]) returned `written`: on success the
    /// open segment is sealed, the new one is the last segment, and the preparation of the one
    /// after starts; on failure the log is poisoned.
    ///
    /// # Errors
    /// `written`'s error, or opening the new segment's file.
    pub fn finish_rotation(
        &mut self,
        rotation: Rotation,
        written: Result<(), LogError>,
    ) -> Result<(), LogError> {
        self.rotating = false;
        let r = written.and_then(|()| {
            self.last_segment_mut().mark_sealed(rotation.sealed);
            self.add_installed(rotation.next)
        });
        self.poison(r)?;
        self.start_preparing();
        crate::timeline::mark("rotate_done", self.last_index.0);
        Ok(())
    }

    /// Removes every entry with index >= `from`, durably before it returns (Raft §5.3: a
    /// follower deletes a conflicting entry and all that follow it). Whole segments after `from`
    /// are deleted (newest first, so a crash leaves a prefix of the old log); inside the segment
    /// holding `from` the cut is made by [`LogFileSegment::truncate_from`].
    ///
    /// # Errors
    /// [`LogError::OutOfRange`] if `from` is below the first index (compacted entries are
    /// committed and never truncated); [`LogError::Poisoned`]; I/O errors poison the log.
    pub fn truncate_suffix(&mut self, from: LogIndex) -> Result<(), LogError> {
        self.check_writable()?;
        if from > self.last_index {
            return Ok(());
        }
        if from < self.first_index {
            return Err(LogError::OutOfRange {
                index: from,
                first: self.first_index,
                last: self.last_index,
            });
        }
        let prev_term = self.term(from.prev())?;
        let r = self.truncate_checked(from, prev_term);
        self.poison(r)
    }

    fn truncate_checked(&mut self, from: LogIndex, prev_term: Term) -> Result<(), LogError> {
        let first_base = *self
            .segments
            .first_key_value()
            .expect("the log has at least one segment")
            .0;
        while let Some((&base, _)) = self.segments.last_key_value() {
            if base < from || base == first_base {
                break;
            }
            let seg = self.segments.remove(&base).expect("key just seen");
            let path = seg.path().to_path_buf();
            drop(seg);
            remove_durably(&*self.vfs, &path, "remove segment")?;
            // The segment before is now the open one; its remaining space is zero (it was
            // sealed right after its last append).
            self.last_index = base.prev();
        }
        let seg = self.last_segment_mut();
        let path = seg.path().to_path_buf();
        seg.truncate_from(from)
            .map_err(|e| seg_err("truncate", &path, e))?;
        self.last_index = from.prev();
        self.last_term = prev_term;
        Ok(())
    }

    /// Compacts the log up to and including `upto` (entries covered by a snapshot): removes every
    /// segment whose entries all lie at or below `upto` (oldest first), except the open one, and
    /// remembers the term of `upto` as the term of `first_index() - 1`. Removed segment files go
    /// to the recycling pool while it has room ([`LogConfig::recycle_segments_max`]), else they
    /// are deleted.
    ///
    /// After a reopen `first_index()` is the base of the first remaining segment, which may be
    /// below `upto + 1` (entries of a partly compacted segment are still there and still
    /// correct); `term(first_index() - 1)` is answered from that segment's header.
    ///
    /// # Errors
    /// [`LogError::OutOfRange`] if `upto > last_index()`; I/O errors poison the log.
    pub fn compact_prefix(&mut self, upto: LogIndex) -> Result<(), LogError> {
        self.check_writable()?;
        if upto > self.last_index {
            return Err(LogError::OutOfRange {
                index: upto,
                first: self.first_index,
                last: self.last_index,
            });
        }
        if upto < self.first_index {
            return Ok(());
        }
        let term = self.term(upto)?;
        let r = (|| {
            while self.segments.len() > 1 {
                let (&base, seg) = self.segments.first_key_value().expect("len > 1");
                if seg.last_index() > upto {
                    break;
                }
                let seg = self.segments.remove(&base).expect("key just seen");
                let path = seg.path().to_path_buf();
                drop(seg);
                if self.pool.len() < self.config.recycle_segments_max {
                    // Renaming it out of the log is as atomic (and as durable, with the
                    // directory fsync) as deleting it; its frames keep their old salt.
                    let to = self.config.dir.join(recycle_file_name(self.pool_seq));
                    rename_durably(&*self.vfs, &path, &to, "move compacted segment to the pool")?;
                    self.pool_seq += 1;
                    self.pool.push_back(to);
                } else {
                    remove_durably(&*self.vfs, &path, "remove compacted segment")?;
                }
            }
            Ok(())
        })();
        self.first_index = upto.next();
        self.compacted_term = term;
        self.poison(r)
    }

    /// Discards the whole log and makes it continue after `index`, whose term is `term`: what a
    /// follower does when it installs a snapshot that its log does not reach or contradicts
    /// (Raft §7). Afterwards `first_index() == index + 1`, `last_index() == index` and
    /// `term(index) == term`. Durable when it returns:
    /// 1. the prepared file gets the new segment's header (`base_index = index + 1`,
    ///    `prev_term = term`), synced;
    /// 2. every old segment is deleted, oldest first (a crash leaves a suffix of the old log);
    /// 3. the prepared file is renamed into place. A crash between 2 and 3 leaves no segment and
    ///    a prepared file with a valid header: open finishes the reset.
    ///
    /// # Errors
    /// [`LogError::Poisoned`]; [`LogError::NoSpace`] (nothing changed, not poisoned); other I/O
    /// errors poison the log.
    pub fn reset(&mut self, index: LogIndex, term: Term) -> Result<(), LogError> {
        self.check_writable()?;
        // The new segment's file first: without space for it nothing is deleted and the log
        // is not poisoned (`LogError::NoSpace`, retry later).
        self.ensure_prepared_or_poison()?;
        let r = (|| {
            let (prep, header) = self.prepare_header(index.next(), term)?;
            while let Some((_, seg)) = self.segments.pop_first() {
                let path = seg.path().to_path_buf();
                drop(seg);
                remove_durably(&*self.vfs, &path, "remove segment")?;
            }
            self.install_prepared(&prep, header)
        })();
        if r.is_ok() {
            self.first_index = index.next();
            self.compacted_term = term;
            self.last_index = index;
            self.last_term = term;
            self.start_preparing();
        }
        self.poison(r)
    }

    /// The first index present (1 for a log that was never compacted).
    pub fn first_index(&self) -> LogIndex {
        self.first_index
    }

    /// The last index present; `first_index() - 1` when the log is empty.
    pub fn last_index(&self) -> LogIndex {
        self.last_index
    }

    /// The term of `last_index()` (of the last compacted entry if the log is empty).
    pub fn last_term(&self) -> Term {
        self.last_term
    }

    /// Whether an earlier failure poisoned the log.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// What recovery did when this log was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Paths of the files kept for recycling, the next one to be used first.
    pub fn pool_paths(&self) -> Vec<PathBuf> {
        self.pool.iter().cloned().collect()
    }

    /// Paths of the segment files, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments
            .values()
            .map(|s| s.path().to_path_buf())
            .collect()
    }

    fn out_of_range(&self, index: LogIndex) -> LogError {
        LogError::OutOfRange {
            index,
            first: self.first_index,
            last: self.last_index,
        }
    }

    /// Reads entry `index` through the mapping, verifying its CRC; the payload is borrowed.
    ///
    /// # Errors
    /// [`LogError::OutOfRange`], or [`LogError::Corrupt`] if the frame does not verify.
    pub fn entry(&self, index: LogIndex) -> Result<EntryRef<'_>, LogError> {
        if index < self.first_index || index > self.last_index {
            return Err(self.out_of_range(index));
        }
        let (_, seg) = self
            .segments
            .range(..=index)
            .next_back()
            .ok_or_else(|| self.out_of_range(index))?;
        let f = seg
            .entry(index)
            .map_err(|e| seg_err("read", seg.path(), e))?;
        Ok(EntryRef {
            term: f.term,
            index: f.index,
            entry_type: f.entry_type,
            payload: f.payload,
        })
    }

    /// Entries in `range`, stopping once `max_bytes` of payload were collected (at least one
    /// entry is returned if the range is not empty).
    ///
    /// # Errors
    /// As [`RaftLog::entry`]; the whole range must lie in `first_index()..=last_index()`.
    pub fn entries(
        &self,
        range: Range<LogIndex>,
        max_bytes: u64,
    ) -> Result<Vec<EntryRef<'_>>, LogError> {
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        if range.start < self.first_index {
            return Err(self.out_of_range(range.start));
        }
        if range.end.prev() > self.last_index {
            return Err(self.out_of_range(range.end.prev()));
        }
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let mut i = range.start;
        while i < range.end {
            let e = self.entry(i)?;
            if !out.is_empty() && bytes + e.payload.len() as u64 > max_bytes {
                break;
            }
            bytes += e.payload.len() as u64;
            out.push(e);
            i = i.next();
        }
        Ok(out)
    }

    /// The term of entry `index`; for `first_index() - 1` the term of the last compacted entry.
    ///
    /// # Errors
    /// [`LogError::OutOfRange`] outside `first_index() - 1 ..= last_index()`, or corruption.
    pub fn term(&self, index: LogIndex) -> Result<Term, LogError> {
        if index == self.last_index {
            return Ok(self.last_term);
        }
        if index == self.first_index.prev() {
            return Ok(self.compacted_term);
        }
        Ok(self.entry(index)?.term)
    }

    /// Checks the in-memory invariants (tests call it after every step).
    ///
    /// # Panics
    /// If one is broken, naming the values.
    pub fn check_invariants(&self) {
        assert!(
            self.first_index.0 <= self.last_index.0 + 1,
            "first {} > last {} + 1",
            self.first_index,
            self.last_index
        );
        let mut next: Option<LogIndex> = None;
        for (base, seg) in &self.segments {
            assert_eq!(*base, seg.base_index());
            if let Some(n) = next {
                assert_eq!(
                    *base,
                    n,
                    "segments are not contiguous at {}",
                    seg.path().display()
                );
            }
            next = Some(seg.last_index().next());
        }
        assert_eq!(next, Some(self.last_index.next()), "last index mismatch");
    }
}

impl Drop for RaftLog {
    fn drop(&mut self) {
        // Stop the preparation, so a prepared file is complete or absent, never half written by
        // a thread that outlives its log.
        if let Some(p) = self.preparing.take() {
            p.cancel.store(true, Ordering::Relaxed);
            let _ = p.handle.join();
        }
    }
}

impl crate::raft::Storage for RaftLog {
    fn first_index(&self) -> LogIndex {
        self.first_index
    }

    fn last_index(&self) -> LogIndex {
        self.last_index
    }

    fn term(&self, index: LogIndex) -> Option<Term> {
        if index < self.first_index.prev() || index > self.last_index {
            return None;
        }
        match RaftLog::term(self, index) {
            Ok(t) => Some(t),
            // The core cannot make progress without its log (src/raft/storage.rs): stop.
            Err(e) => panic!("storage read of term({index}) failed: {e}"),
        }
    }

    fn entries(&self, lo: LogIndex, hi: LogIndex, max_bytes: u64) -> Vec<LogEntry> {
        assert!(
            lo >= self.first_index && hi <= self.last_index.next() && lo <= hi,
            "RaftLog::entries({lo}..{hi}) outside {}..={}",
            self.first_index,
            self.last_index
        );
        match RaftLog::entries(self, lo..hi, max_bytes) {
            Ok(v) => v.iter().map(EntryRef::to_owned_entry).collect(),
            Err(e) => panic!("storage read of entries({lo}..{hi}) failed: {e}"),
        }
    }
}

/// Checks that `entries` continue a log whose next index is `next` and whose last term is `term`:
/// consecutive indexes, terms that never decrease, payloads within `payload_max`.
///
/// # Errors
/// [`LogError::NotContiguous`], [`LogError::TermRegression`], [`LogError::EntryTooLarge`].
fn check_continues<'a>(
    entries: impl IntoIterator<Item = &'a LogEntry>,
    mut next: LogIndex,
    mut term: Term,
    payload_max: usize,
) -> Result<(), LogError> {
    for e in entries {
        if e.index != next {
            return Err(LogError::NotContiguous {
                expected: next,
                got: e.index,
            });
        }
        if e.term < term {
            return Err(LogError::TermRegression {
                index: e.index,
                term: e.term,
                last_term: term,
            });
        }
        if e.payload.len() > payload_max {
            return Err(LogError::EntryTooLarge {
                index: e.index,
                payload_bytes: e.payload.len(),
                max_bytes: payload_max,
            });
        }
        next = next.next();
        term = e.term;
    }
    Ok(())
}
