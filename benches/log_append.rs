//! `cargo bench --bench log_append`: durable appends, the write+fdatasync baseline from the same
//! run, preallocation (zero-filled vs merely fallocated), random reads over a >= 1 GiB log, and
//! open (recovery) time. Prints a table and writes it to `BENCHMARKS.md` (quick mode:
//! `target/BENCHMARKS-quick.md`) with the machine and the command.
//!
//! Environment:
//! - `BENCH_QUICK=1`: shorter runs and a 256 MiB read/open log (for development; not the figures).
//! - `BENCH_DIR=<dir>`: where the logs are written (default: the system temp dir). It must be on
//!   the disk under test; tmpfs would measure nothing.
//! - `BENCH_SECS=<f64>`: seconds per append measurement (default 0.3, quick 0.5).
//! - `BENCH_ROUNDS=<n>`: interleaved repetitions of every append measurement (default 10, quick 1),
//!   merged into one distribution (figures are totals over all rounds).
//! - `BENCH_ONLY=<entry bytes>x<appenders>` (e.g. `256x64`): run only that append measurement of
//!   the engine for `BENCH_SECS` seconds in `BENCH_ROUNDS` (default 3) rounds alternating with the
//!   baseline of the same batch bytes, print both and the ratio, and exit (writes no report);
//!   `BENCH_NO_COMPACT=1` lets the log grow (no compaction behind the appends; otherwise the log
//!   is first warmed up, unmeasured, until a compacted segment waits in the recycling pool);
//!   `BENCH_BASELINE=0` skips the baseline (for profiling). Beside the baseline it measures the
//!   io_uring floor (`run_uring_floor`: the baseline's I/O submitted as the engine submits it, with
//!   nothing done between completion and next submission; `BENCH_FLOOR=0` skips it).
//! - `BENCH_KEEP=1`: keep the big read/open log in `target/bench-log/` (e.g. for
//!   `segdump verify target/bench-log`) instead of deleting it.
//!
//! Method (STYLE §15): every figure is a distribution from HdrHistogram (nanosecond resolution,
//! 3 significant digits) and sits beside a baseline measured in the same run on the same disk:
//! a plain `pwrite` + `fdatasync` loop over a file that was zero-filled and synced beforehand (so
//! it overwrites already-written blocks, the best case the engine's preallocation aims for), with
//! the batch size the group commit would ideally form (`appenders × entry size`). Appends are
//! closed-loop: each appender waits for its append to be durable before issuing the next.
//!
//! "Ours" is the node's own write path: the append engine (`storage::engine`), driven as the
//! node's event loop drives it. N appenders are N async tasks on ONE tokio-uring thread, each
//! handing a one-entry `WriteBatch` to `Durable::persist` and awaiting it; the engine's task runs
//! beside them on the same thread, stages each group there and waits for its write and linked
//! fdatasync through the runtime's reactor, so no other thread is involved.

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rust_raft_log::storage::engine::{Durable, Engine, WriteBatch};
use rust_raft_log::storage::file::{AppendFile, LogFile, ReadFile, Vfs};
use rust_raft_log::storage::format::{
    decode_frame, parse_segment_file_name, SegmentHeader, SEGMENT_HEADER_SIZE,
};
use rust_raft_log::storage::state::RaftState;
use rust_raft_log::storage::uring::UringVfs;
use rust_raft_log::storage::{LogConfig, RaftLog};
use rust_raft_log::types::{EntryType, LogEntry, LogIndex, Term};

/// The node's allocator (src/main.rs), so the engine is measured as the node runs it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

struct Settings {
    quick: bool,
    dir: PathBuf,
    append_secs: f64,
    /// Every append measurement is repeated this many times, interleaved with the others (so a
    /// burst of load from other processes hits all of them alike); the rounds are merged.
    rounds: usize,
    /// Payload bytes of the read/open log.
    big_log_bytes: u64,
    reads: u64,
    keep_big_log: bool,
}

impl Settings {
    fn from_env() -> Settings {
        let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v != "0" && !v.is_empty());
        let dir = std::env::var_os("BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let append_secs = std::env::var("BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(if quick { 0.5 } else { 0.3 });
        Settings {
            quick,
            dir,
            append_secs,
            rounds: std::env::var("BENCH_ROUNDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(if quick { 1 } else { 10 }),
            big_log_bytes: if quick {
                256 << 20
            } else {
                (1 << 30) + (64 << 20)
            },
            reads: if quick { 200_000 } else { 1_000_000 },
            keep_big_log: std::env::var("BENCH_KEEP").is_ok_and(|v| v != "0" && !v.is_empty()),
        }
    }
}

const SIZES: [usize; 4] = [64, 256, 4096, 64 << 10];
const APPENDERS: [usize; 3] = [1, 8, 64];
const SEGMENT_BYTES: u64 = 64 << 20;
/// Steady state (as a Raft node runs): the log is compacted behind the appends down to this many
/// segments, so rotations recycle compacted segment files (the default pool of 2).
const KEEP_SEGMENTS: usize = 4;
/// Below this baseline rate (256 B write + fdatasync cycles/s, single appender) the report warns
/// that other processes saturated the disk (calm: ~9,000/s).
const SATURATED_BASELINE_PER_SEC: f64 = 4000.0;

/// Where to compact `log` so that its newest `KEEP_SEGMENTS` segments remain: the index before
/// the first kept segment's base, or `None` while there are no more than that.
fn compaction_target(log: &RaftLog) -> Option<LogIndex> {
    let paths = log.segment_paths();
    let keep_from = paths.len().checked_sub(KEEP_SEGMENTS).filter(|&i| i > 0)?;
    paths[keep_from]
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_segment_file_name)
        .map(LogIndex::prev)
}

fn hist() -> Histogram<u64> {
    // 1 ns .. 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("histogram bounds are valid")
}

/// What one measurement produced.
struct Stats {
    /// Entries made durable.
    entries: u64,
    /// Payload bytes made durable.
    bytes: u64,
    secs: f64,
    /// Latency of one append (ours) or one write+fdatasync (baseline), in ns.
    latency_ns: Histogram<u64>,
    /// CPU time (user + system, every thread of the process) the measurement used.
    cpu_secs: f64,
    /// The user-space part of `cpu_secs`, and the context switches (voluntary and not) of every
    /// thread meanwhile: where the CPU per entry goes (`getrusage`).
    user_secs: f64,
    switches: u64,
    /// fdatasyncs of durable batches (ours: `Engine::group_stats`; baseline: its cycles);
    /// 0 where not measured.
    syncs: u64,
}

/// CPU time this process used so far (every thread, io_uring's io-wq workers included).
#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    /// User + system, in seconds.
    total_secs: f64,
    user_secs: f64,
    /// Context switches, voluntary and involuntary.
    switches: u64,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, earlier: Cpu) -> Cpu {
        Cpu {
            total_secs: self.total_secs - earlier.total_secs,
            user_secs: self.user_secs - earlier.user_secs,
            switches: self.switches.saturating_sub(earlier.switches),
        }
    }
}

fn cpu_time() -> Cpu {
    // SAFETY: getrusage writes into the struct we pass; a zeroed rusage is a valid value.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage; RUSAGE_SELF is a valid `who`.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Cpu::default();
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Cpu {
        total_secs: tv(u.ru_utime) + tv(u.ru_stime),
        user_secs: tv(u.ru_utime),
        switches: (u.ru_nvcsw + u.ru_nivcsw) as u64,
    }
}

impl Stats {
    /// Adds another round of the same measurement.
    fn merge(&mut self, other: Stats) -> Result<(), String> {
        self.entries += other.entries;
        self.bytes += other.bytes;
        self.secs += other.secs;
        self.cpu_secs += other.cpu_secs;
        self.user_secs += other.user_secs;
        self.switches += other.switches;
        self.syncs += other.syncs;
        self.latency_ns
            .add(&other.latency_ns)
            .map_err(|e| format!("histogram merge: {e:?}"))
    }

    fn entries_per_sec(&self) -> f64 {
        self.entries as f64 / self.secs
    }
    fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }
    fn us(&self, q: f64) -> f64 {
        self.latency_ns.value_at_quantile(q) as f64 / 1e3
    }
    fn cpu_us_per_entry(&self) -> f64 {
        self.cpu_secs * 1e6 / self.entries.max(1) as f64
    }
    fn user_us_per_entry(&self) -> f64 {
        self.user_secs * 1e6 / self.entries.max(1) as f64
    }
    /// Context switches per fdatasync (per group), if the syncs were counted.
    fn switches_per_sync(&self) -> String {
        if self.syncs == 0 {
            String::new()
        } else {
            format!("{:.1}", self.switches as f64 / self.syncs as f64)
        }
    }
    fn max_us(&self) -> f64 {
        self.latency_ns.max() as f64 / 1e3
    }
    /// Entries per fdatasync (the group commit's average batch), if measured.
    fn entries_per_sync(&self) -> String {
        if self.syncs == 0 {
            String::new()
        } else {
            format!("{:.1}", self.entries as f64 / self.syncs as f64)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A Vfs whose new segments are only fallocated (the "preallocation that does not pay" case)
// ---------------------------------------------------------------------------------------------

/// Delegates everything to [`UringVfs`] except [`Vfs::create_zeroed`], which reserves the blocks
/// with `fallocate` and writes nothing: the blocks stay unwritten extents, so every append's
/// fdatasync must also commit the extent conversion (FACTS.md: ~1.7x slower).
struct FallocVfs;

impl Vfs for FallocVfs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        UringVfs.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        UringVfs.list_dir(dir)
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        UringVfs.open(path)
    }
    fn create_zeroed(&self, path: &Path, len_bytes: u64) -> io::Result<()> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        fallocate(&f, len_bytes)?;
        f.sync_all()?;
        if let Some(parent) = path.parent() {
            File::open(parent)?.sync_all()?;
        }
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        UringVfs.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        UringVfs.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        UringVfs.sync_dir(dir)
    }
    fn create_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        UringVfs.create_append(path)
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        UringVfs.open_read(path)
    }
}

fn fallocate(f: &File, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a valid, open file descriptor.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Baseline: pwrite + fdatasync over a preallocated file
// ---------------------------------------------------------------------------------------------

const BASELINE_FILE_BYTES: u64 = 256 << 20;
/// The files of the preallocation comparison: enough for one round of 4 KiB writes.
const PREALLOC_FILE_BYTES: u64 = 64 << 20;

/// A file of `len` bytes, either zero-filled and synced (`written`) or only fallocated.
fn baseline_file(dir: &Path, written: bool, len: u64) -> io::Result<(File, PathBuf)> {
    let path = dir.join(if written {
        "baseline.written"
    } else {
        "baseline.fallocated"
    });
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    if written {
        let zeros = vec![0u8; 8 << 20];
        let mut off = 0;
        while off < len {
            f.write_all_at(&zeros, off)?;
            off += zeros.len() as u64;
        }
    } else {
        fallocate(&f, len)?;
    }
    f.sync_all()?;
    Ok((f, path))
}

/// Sequential `pwrite(batch_bytes)` + `fdatasync` for `secs`. A batch counts as
/// `entries_per_batch` entries. Wraps around at the end of the file (overwriting again).
fn run_baseline(
    f: &File,
    file_len: u64,
    batch_bytes: usize,
    entries_per_batch: usize,
    secs: f64,
) -> io::Result<Stats> {
    let buf: Vec<u8> = (0..batch_bytes).map(|i| (i * 31 + 7) as u8).collect();
    batch_loop(file_len, batch_bytes, entries_per_batch, secs, |off| {
        f.write_all_at(&buf, off)?;
        f.sync_data()
    })
}

/// Runs `one(offset)` (one batch written and made durable at `offset`) back to back for `secs`,
/// at consecutive offsets that wrap around at `file_len`, and measures each; a batch counts as
/// `entries_per_batch` entries. The loop of the baseline and of the io_uring floor.
fn batch_loop(
    file_len: u64,
    batch_bytes: usize,
    entries_per_batch: usize,
    secs: f64,
    mut one: impl FnMut(u64) -> io::Result<()>,
) -> io::Result<Stats> {
    settle();
    let mut latency_ns = hist();
    let mut off = 0u64;
    let mut batches = 0u64;
    let start = Instant::now();
    let cpu0 = cpu_time();
    let deadline = start + Duration::from_secs_f64(secs);
    while Instant::now() < deadline {
        if off + batch_bytes as u64 > file_len {
            off = 0;
        }
        let t = Instant::now();
        one(off)?;
        latency_ns.saturating_record(t.elapsed().as_nanos() as u64);
        off += batch_bytes as u64;
        batches += 1;
    }
    let cpu = cpu_time() - cpu0;
    Ok(Stats {
        entries: batches * entries_per_batch as u64,
        bytes: batches * batch_bytes as u64,
        secs: start.elapsed().as_secs_f64(),
        latency_ns,
        cpu_secs: cpu.total_secs,
        user_secs: cpu.user_secs,
        switches: cpu.switches,
        syncs: batches,
    })
}

/// How the io_uring floor waits for its completion.
#[derive(Clone, Copy)]
enum FloorWait {
    /// `io_uring_enter` with `min_complete = 1`: the thread sleeps inside the kernel.
    Enter,
    /// `epoll_wait` on the ring's descriptor, then the completion is reaped: how the append
    /// engine's thread waits (the ring is registered with the runtime's reactor).
    Epoll,
}

/// The io_uring floor: the baseline's I/O (one `batch_bytes` write at the baseline's offsets and
/// its fdatasync), submitted as the append engine submits it (one write with `RWF_DSYNC` and
/// `IOSQE_ASYNC`, `storage::uring::push_dsync_write`) and waited for, with nothing else done
/// between one completion and the next submission. What the engine's own user-space work
/// (appenders, grouping, encoding, completion) adds is ours minus this; what the io_uring route
/// itself costs against plain `pwrite` + `fdatasync` (the io-wq worker's hop and wake-ups) is
/// this minus the baseline.
fn run_uring_floor(
    f: &File,
    file_len: u64,
    batch_bytes: usize,
    entries_per_batch: usize,
    secs: f64,
    wait: FloorWait,
) -> io::Result<Stats> {
    use io_uring::{opcode, squeue, types, IoUring};
    let buf: Vec<u8> = (0..batch_bytes).map(|i| (i * 29 + 3) as u8).collect();
    let mut ring = IoUring::new(8)?;
    let fd = f.as_raw_fd();
    let ring_fd = ring.as_raw_fd();
    // SAFETY: epoll_create1 takes flags only; a negative result is checked below.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: epfd was just created and is closed only here, when this owner drops.
    let epfd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(epfd) };
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 0,
    };
    // SAFETY: both descriptors are open; `ev` is a valid event for the duration of the call.
    if unsafe { libc::epoll_ctl(epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, ring_fd, &mut ev) } != 0 {
        return Err(io::Error::last_os_error());
    }
    batch_loop(file_len, batch_bytes, entries_per_batch, secs, |off| {
        let sqe = opcode::Write::new(types::Fd(fd), buf.as_ptr(), batch_bytes as u32)
            .offset(off)
            .rw_flags(libc::RWF_DSYNC)
            .build()
            .flags(squeue::Flags::ASYNC)
            .user_data(1);
        // SAFETY: `buf` outlives the request: this loop reaps its completion before it goes on.
        unsafe { ring.submission().push(&sqe) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        let result = match wait {
            FloorWait::Enter => {
                ring.submit_and_wait(1)?;
                ring.completion().next().map(|c| c.result())
            }
            FloorWait::Epoll => {
                ring.submit()?;
                loop {
                    if let Some(c) = ring.completion().next() {
                        break Some(c.result());
                    }
                    let mut out = libc::epoll_event { events: 0, u64: 0 };
                    // SAFETY: `out` has room for the one event asked for.
                    let n = unsafe { libc::epoll_wait(epfd.as_raw_fd(), &mut out, 1, 1000) };
                    if n < 0 {
                        let e = io::Error::last_os_error();
                        if e.kind() != io::ErrorKind::Interrupted {
                            return Err(e);
                        }
                    }
                }
            }
        };
        match result {
            Some(n) if n == batch_bytes as i32 => {}
            Some(n) if n < 0 => return Err(io::Error::from_raw_os_error(-n)),
            other => {
                return Err(io::Error::other(format!(
                    "io_uring floor: write of {batch_bytes} bytes completed with {other:?}"
                )))
            }
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Ours: the append engine, N closed-loop appenders on one tokio-uring thread
// ---------------------------------------------------------------------------------------------

/// Lets the disk settle before a measurement: flushes what earlier steps left dirty (deleted
/// logs, the big files written to set up a baseline) so it is not charged to the next run.
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_millis(30));
}

/// Waits until the log's background preparation of the next segment finished, so it does not
/// compete with the measurement (it competes in production only once per segment).
fn wait_for_preparation(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let names: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        // A pool file (a compacted segment kept for recycling) serves the next rotation too.
        let prepared = names
            .iter()
            .any(|n| n == "next_segment.prep" || n.starts_with("recycle_"));
        let busy = names.iter().any(|n| n.ends_with(".zeroing"));
        if prepared && !busy {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One entry's batch, as the node's event loop hands a Ready's entries to the engine.
fn one_entry_batch(index: u64, payload: &[u8]) -> Rc<WriteBatch> {
    Rc::new(WriteBatch {
        reset: None,
        truncate_from: None,
        entries: vec![LogEntry {
            term: Term(1),
            index: LogIndex(index),
            entry_type: EntryType::Normal,
            payload: payload.to_vec(),
        }],
        hard_state: None,
        must_sync: true,
    })
}

/// Opens the log of one measurement through `vfs` and its state file, waits for the segment
/// preparation, and builds the engine; runs `body` inside a tokio-uring runtime with the engine's
/// task spawned beside it, as the node does.
fn with_engine<T>(
    root: &Path,
    label: &str,
    vfs: Arc<dyn Vfs>,
    body: impl AsyncFnOnce(Rc<RefCell<Engine>>, u64) -> Result<T, String>,
) -> Result<T, String> {
    // The same directory across rounds: the log is reopened and grows, as in production.
    let dir = root.join(label);
    let config = LogConfig {
        segment_size_bytes: SEGMENT_BYTES,
        ..LogConfig::new(&dir)
    };
    let log = RaftLog::open_with(config, vfs).map_err(|e| format!("open: {e}"))?;
    let next = log.last_index().next().0;
    let state = RaftState::open(&dir).map_err(|e| format!("state file: {e}"))?;
    wait_for_preparation(&dir);
    settle();
    tokio_uring::start(async move {
        let (engine, _view, task) = Engine::new(log, state);
        let writer = tokio::task::spawn_local(task.run());
        let engine = Rc::new(RefCell::new(engine));
        let out = body(Rc::clone(&engine), next).await;
        drop(engine);
        let _ = writer.await;
        out
    })
}

/// Compacts behind the appends on the engine's thread, like a node that snapshots regularly:
/// whenever the log has more than [`KEEP_SEGMENTS`] segments, everything before the newest
/// `KEEP_SEGMENTS` is compacted (compaction only removes whole segments below the appends).
fn spawn_compactor(
    engine: &Rc<RefCell<Engine>>,
    view: rust_raft_log::storage::engine::LogView,
    stop: Rc<Cell<bool>>,
) -> tokio::task::JoinHandle<Result<(), String>> {
    let engine = Rc::clone(engine);
    tokio::task::spawn_local(async move {
        while !stop.get() {
            if let Some(upto) = view.with(compaction_target) {
                engine
                    .borrow()
                    .compact_prefix(upto)
                    .map_err(|e| format!("compact: {e}"))?;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    })
}

/// `tasks` closed-loop appenders of `entry_bytes` through the engine for `secs` (see the module
/// docs); the log is compacted behind them when `compact`.
fn run_ours(
    root: &Path,
    label: &str,
    vfs: Arc<dyn Vfs>,
    entry_bytes: usize,
    tasks: usize,
    secs: f64,
    compact: bool,
) -> Result<Stats, String> {
    with_engine(root, label, vfs, async move |engine, first| {
        let next = Rc::new(Cell::new(first));
        let payload: Rc<Vec<u8>> = Rc::new((0..entry_bytes).map(|i| (i * 7) as u8).collect());
        let stop = Rc::new(Cell::new(false));
        let view = engine_view(&engine);
        let compactor = compact.then(|| spawn_compactor(&engine, view, Rc::clone(&stop)));
        let start = Instant::now();
        let cpu0 = cpu_time();
        let deadline = start + Duration::from_secs_f64(secs);
        // One histogram for all appenders (they share the thread): 64 histograms of ~40 KiB
        // each made every record a cache miss, CPU the harness charged to the engine.
        let latency = Rc::new(RefCell::new(hist()));
        let appenders: Vec<_> = (0..tasks)
            .map(|_| {
                let (next, engine, payload, latency) = (
                    Rc::clone(&next),
                    Rc::clone(&engine),
                    Rc::clone(&payload),
                    Rc::clone(&latency),
                );
                tokio::task::spawn_local(async move {
                    let mut entries = 0u64;
                    let mut t0 = Instant::now();
                    while t0 < deadline {
                        // Index and submission in one step of this thread: batches reach the
                        // engine in index order.
                        let index = next.get();
                        next.set(index + 1);
                        let durable = engine
                            .borrow_mut()
                            .persist(one_entry_batch(index, &payload));
                        durable.await.map_err(|e| format!("append: {e}"))?;
                        // One clock read ends this append and starts the next.
                        let t1 = Instant::now();
                        latency
                            .borrow_mut()
                            .saturating_record(t1.duration_since(t0).as_nanos() as u64);
                        entries += 1;
                        t0 = t1;
                    }
                    Ok::<_, String>(entries)
                })
            })
            .collect();
        let mut entries = 0;
        for a in appenders {
            entries += a.await.map_err(|e| format!("appender task: {e}"))??;
        }
        let latency_ns = latency.borrow().clone();
        let secs = start.elapsed().as_secs_f64();
        let cpu = cpu_time() - cpu0;
        stop.set(true);
        if let Some(c) = compactor {
            c.await.map_err(|e| format!("compactor task: {e}"))??;
        }
        let (syncs, _) = engine.borrow().group_stats();
        Ok(Stats {
            entries,
            bytes: entries * entry_bytes as u64,
            secs,
            latency_ns,
            cpu_secs: cpu.total_secs,
            user_secs: cpu.user_secs,
            switches: cpu.switches,
            syncs,
        })
    })
}

/// Appends to the `BENCH_ONLY` log (label "only"), unmeasured, until it is in the steady state
/// the measurement is about: compacted behind the appends, with a compacted segment file in the
/// recycling pool for the next rotation. Before that, every rotation of a young log starts a
/// background preparation of the next segment (a 64 MiB fallocate and page-cache fill, ~30 ms of
/// CPU), which a short measurement would charge to the appends (at 64 KiB x 8 on a busy disk, the
/// first seconds are all young log). Gives up after 20 s (a slow disk): the measurement then
/// includes the young log, as before.
fn warm_up(root: &Path, entry_bytes: usize, tasks: usize) -> Result<(), String> {
    let dir = root.join("only");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        let pooled = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .any(|e| e.file_name().to_string_lossy().starts_with("recycle_"))
            })
            .unwrap_or(false);
        if pooled {
            return Ok(());
        }
        run_ours(
            root,
            "only",
            Arc::new(UringVfs),
            entry_bytes,
            tasks,
            0.5,
            true,
        )?;
    }
    eprintln!("warm-up: no recycled segment after 20 s; measuring a young log");
    Ok(())
}

/// The engine's read view (for the compactor's target).
fn engine_view(engine: &Rc<RefCell<Engine>>) -> rust_raft_log::storage::engine::LogView {
    engine.borrow().view()
}

/// Paired single-appender comparison, robust to a noisy shared disk: ONE thread alternates
/// blocks of `BLOCK` baseline write+fdatasync cycles with blocks of `BLOCK` durable appends
/// through the engine (one task persisting and awaiting one-entry batches), so both
/// see the same bursts of outside load within tens of milliseconds.
fn run_paired_single(
    root: &Path,
    base_file: &File,
    entry_bytes: usize,
    secs: f64,
) -> Result<(Stats, Stats), String> {
    const BLOCK: usize = 50;
    let label = format!("paired-{entry_bytes}");
    let base_file = base_file
        .try_clone()
        .map_err(|e| format!("baseline file: {e}"))?;
    let out = with_engine(
        root,
        &label,
        Arc::new(UringVfs),
        async move |engine, first| {
            let payload: Vec<u8> = (0..entry_bytes).map(|i| (i * 13) as u8).collect();
            let (mut ours, mut base) = (hist(), hist());
            let (mut ours_secs, mut base_secs) = (0.0, 0.0);
            let (mut ours_n, mut base_n) = (0u64, 0u64);
            let mut off = 0u64;
            let mut next = first;
            let deadline = Instant::now() + Duration::from_secs_f64(secs);
            while Instant::now() < deadline {
                let t_block = Instant::now();
                for _ in 0..BLOCK {
                    if off + entry_bytes as u64 > BASELINE_FILE_BYTES {
                        off = 0;
                    }
                    let t = Instant::now();
                    base_file
                        .write_all_at(&payload, off)
                        .and_then(|()| base_file.sync_data())
                        .map_err(|e| format!("baseline: {e}"))?;
                    base.saturating_record(t.elapsed().as_nanos() as u64);
                    off += entry_bytes as u64;
                }
                base_secs += t_block.elapsed().as_secs_f64();
                base_n += BLOCK as u64;
                let t_block = Instant::now();
                for _ in 0..BLOCK {
                    let t = Instant::now();
                    let durable = engine.borrow_mut().persist(one_entry_batch(next, &payload));
                    durable.await.map_err(|e| format!("append: {e}"))?;
                    next += 1;
                    ours.saturating_record(t.elapsed().as_nanos() as u64);
                }
                ours_secs += t_block.elapsed().as_secs_f64();
                ours_n += BLOCK as u64;
            }
            Ok((ours, ours_secs, ours_n, base, base_secs, base_n))
        },
    )?;
    let _ = std::fs::remove_dir_all(root.join(&label));
    let (ours, ours_secs, ours_n, base, base_secs, base_n) = out;
    let stats = |entries: u64, secs: f64, latency_ns: Histogram<u64>| Stats {
        entries,
        bytes: entries * entry_bytes as u64,
        secs,
        latency_ns,
        // Not separable: both halves run on the same thread, interleaved.
        cpu_secs: 0.0,
        user_secs: 0.0,
        switches: 0,
        syncs: 0,
    };
    Ok((
        stats(ours_n, ours_secs, ours),
        stats(base_n, base_secs, base),
    ))
}

/// Open loop: `rate_per_sec` appends of `entry_bytes` offered at fixed intended times (the issuer
/// never waits for them), each awaited by its own task. Latency is measured from the *intended*
/// issue time, so a stall that delays issuing is charged to the entries it delayed (no
/// coordinated omission).
fn run_offered_rate(
    root: &Path,
    entry_bytes: usize,
    rate_per_sec: f64,
    secs: f64,
) -> Result<Stats, String> {
    let label = format!("rate-{entry_bytes}-{rate_per_sec}");
    let _ = std::fs::remove_dir_all(root.join(&label));
    let cpu0 = cpu_time();
    let (entries, latency_ns, secs) = with_engine(
        root,
        &label,
        Arc::new(UringVfs),
        async move |engine, first| {
            let payload: Vec<u8> = (0..entry_bytes).map(|i| i as u8).collect();
            let interval = Duration::from_secs_f64(1.0 / rate_per_sec);
            let start = Instant::now();
            let total = (secs * rate_per_sec) as u32;
            let latency = Rc::new(RefCell::new(hist()));
            let mut waiters = Vec::with_capacity(total as usize);
            for k in 0..total {
                let intended = start + interval * k;
                tokio::time::sleep_until(intended.into()).await;
                let durable = engine
                    .borrow_mut()
                    .persist(one_entry_batch(first + u64::from(k), &payload));
                let latency = Rc::clone(&latency);
                waiters.push(tokio::task::spawn_local(async move {
                    durable.await.map_err(|e| format!("append: {e}"))?;
                    latency
                        .borrow_mut()
                        .saturating_record(intended.elapsed().as_nanos() as u64);
                    Ok::<(), String>(())
                }));
            }
            for w in waiters {
                w.await.map_err(|e| format!("waiter task: {e}"))??;
            }
            let h = latency.borrow().clone();
            Ok((u64::from(total), h, start.elapsed().as_secs_f64()))
        },
    )?;
    let cpu = cpu_time() - cpu0;
    let _ = std::fs::remove_dir_all(root.join(&label));
    Ok(Stats {
        entries,
        bytes: entries * entry_bytes as u64,
        secs,
        latency_ns,
        cpu_secs: cpu.total_secs,
        user_secs: cpu.user_secs,
        switches: cpu.switches,
        syncs: 0,
    })
}

// ---------------------------------------------------------------------------------------------
// Reads and open time over a big log
// ---------------------------------------------------------------------------------------------

const READ_ENTRY_BYTES: usize = 4096;

fn build_big_log(dir: &Path, payload_bytes: u64) -> Result<(u64, f64), String> {
    let _ = std::fs::remove_dir_all(dir);
    let config = LogConfig {
        segment_size_bytes: SEGMENT_BYTES,
        ..LogConfig::new(dir)
    };
    let mut log = RaftLog::open(config).map_err(|e| format!("open: {e}"))?;
    let total = payload_bytes / READ_ENTRY_BYTES as u64;
    let batch = 1024u64;
    let start = Instant::now();
    let mut next = 1u64;
    while next <= total {
        let end = (next + batch).min(total + 1);
        let entries: Vec<LogEntry> = (next..end)
            .map(|i| LogEntry {
                term: Term(1),
                index: LogIndex(i),
                entry_type: EntryType::Normal,
                payload: payload_for(i),
            })
            .collect();
        log.append(&entries).map_err(|e| format!("append: {e}"))?;
        next = end;
    }
    Ok((total, start.elapsed().as_secs_f64()))
}

fn payload_for(i: u64) -> Vec<u8> {
    let mut p = vec![0u8; READ_ENTRY_BYTES];
    for (k, chunk) in p.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(i ^ k as u64).to_le_bytes());
    }
    p
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("segment_"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

struct ReadStats {
    ops_per_sec: f64,
    latency_ns: Histogram<u64>,
}

fn run_reads(dir: &Path, total: u64, reads: u64) -> Result<ReadStats, String> {
    let log = RaftLog::open(LogConfig {
        segment_size_bytes: SEGMENT_BYTES,
        ..LogConfig::new(dir)
    })
    .map_err(|e| format!("open: {e}"))?;
    // xorshift64*: deterministic, seed printed in the report.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    // Touch every entry once so the figure is the warm-cache read path, not page faults.
    let mut sink = 0u64;
    for i in 1..=total {
        let e = log
            .entry(LogIndex(i))
            .map_err(|e| format!("entry {i}: {e}"))?;
        sink = sink.wrapping_add(e.payload[0] as u64);
    }
    let mut latency_ns = hist();
    let start = Instant::now();
    for _ in 0..reads {
        let i = 1 + next() % total;
        let t = Instant::now();
        let e = log
            .entry(LogIndex(i))
            .map_err(|e| format!("entry {i}: {e}"))?;
        sink = sink.wrapping_add(e.payload[e.payload.len() - 1] as u64);
        latency_ns.saturating_record(t.elapsed().as_nanos() as u64);
    }
    let secs = start.elapsed().as_secs_f64();
    std::hint::black_box(sink);
    Ok(ReadStats {
        ops_per_sec: reads as f64 / secs,
        latency_ns,
    })
}

/// Opens the log `runs` times; returns each open's wall time in ms.
fn time_opens(dir: &Path, runs: usize) -> Result<Vec<f64>, String> {
    let mut ms = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let log = RaftLog::open(LogConfig {
            segment_size_bytes: SEGMENT_BYTES,
            ..LogConfig::new(dir)
        })
        .map_err(|e| format!("open: {e}"))?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        drop(log);
        // Dropping the log may leave its background preparation running: let it finish so
        // the next open measures recovery alone.
        wait_for_preparation(dir);
    }
    Ok(ms)
}

/// Tears the last frame of the last segment (zeroes its second half, as a write cut short by a
/// crash would leave it). Returns the segment path and the frame's offset.
fn tear_last_frame(dir: &Path) -> Result<(PathBuf, usize), String> {
    let mut segs: Vec<(LogIndex, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            rust_raft_log::storage::format::parse_segment_file_name(&name).map(|b| (b, e.path()))
        })
        .collect();
    segs.sort();
    let (_, path) = segs.last().ok_or("no segment")?.clone();
    let mut bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
    let header = SegmentHeader::decode(&bytes).map_err(|e| e.to_string())?;
    let seed = header.frame_seed();
    let mut pos = SEGMENT_HEADER_SIZE;
    let mut last = None;
    while let Ok(Some(f)) = decode_frame(&bytes[pos..], seed) {
        last = Some((pos, f.padded_len));
        pos += f.padded_len;
    }
    let (off, len) = last.ok_or("last segment holds no frame")?;
    bytes[off + len / 2..off + len].fill(0);
    let f = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| e.to_string())?;
    f.write_all_at(&bytes[off..off + len], off as u64)
        .map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())?;
    Ok((path, off))
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

struct Report {
    text: String,
}

impl Report {
    fn line(&mut self, s: impl AsRef<str>) {
        println!("{}", s.as_ref());
        self.text.push_str(s.as_ref());
        self.text.push('\n');
    }
}

fn stats_cells(s: &Stats) -> String {
    format!(
        "{:>10.0} | {:>8.2} | {:>8.1} | {:>8.1} | {:>8.1} | {:>8.1} | {:>9.1}",
        s.entries_per_sec(),
        s.mb_per_sec(),
        s.us(0.50),
        s.us(0.90),
        s.us(0.99),
        s.us(0.999),
        s.max_us()
    )
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / (1 << 20) as f64);
    format!("{cpu}, {cores} cores, {mem_gib:.0} GiB RAM, Linux {kernel}")
}

fn filesystem_of(path: &Path) -> String {
    // The mount whose mount point is the longest prefix of `path`.
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown".into();
    };
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mut best: Option<(usize, String)> = None;
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        if path.starts_with(f[1]) && best.as_ref().is_none_or(|(n, _)| f[1].len() > *n) {
            best = Some((f[1].len(), format!("{} on {} ({})", f[0], f[1], f[2])));
        }
    }
    best.map_or_else(|| "unknown".into(), |(_, s)| s)
}

/// The 1/5/15-minute load averages: on a shared 2-core machine other processes compete for the
/// CPU, and a thread waiting for a core shows up as milliseconds of latency.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// The line after which BENCHMARKS.md holds the other benches' sections (kept verbatim).
const OTHER_SECTIONS_MARKER: &str = "<!-- Other benchmarks: everything below this line is kept as it is by `cargo bench --bench log_append`. -->";

fn main() {
    if let Err(e) = run() {
        eprintln!("log_append bench failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let s = Settings::from_env();
    let root = tempfile::Builder::new()
        .prefix("raft-log-bench-")
        .tempdir_in(&s.dir)
        .map_err(|e| format!("temp dir in {}: {e}", s.dir.display()))?;
    let root_path = root.path().to_path_buf();
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let parsed = only
            .split_once('x')
            .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
        let Some((size, n)) = parsed else {
            return Err(format!(
                "BENCH_ONLY={only}: expected <entry bytes>x<appenders>"
            ));
        };
        // Steady state (compacted behind the appends) unless BENCH_NO_COMPACT is set. Rounds
        // alternate the baseline (same batch bytes) and ours, so the ratio holds under load;
        // BENCH_BASELINE=0 skips the baseline (for profiling ours alone).
        let compact = std::env::var("BENCH_NO_COMPACT").is_err();
        let with_baseline = std::env::var("BENCH_BASELINE").map_or(true, |v| v != "0");
        let with_floor = std::env::var("BENCH_FLOOR").map_or(true, |v| v != "0");
        let rounds: usize = std::env::var("BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3)
            .max(1);
        let per_round = s.append_secs / rounds as f64;
        let base_file = if with_baseline {
            Some(
                baseline_file(&root_path, true, BASELINE_FILE_BYTES)
                    .map_err(|e| format!("baseline file: {e}"))?,
            )
        } else {
            None
        };
        if compact {
            warm_up(&root_path, size, n)?;
        }
        let mut ours: Option<Stats> = None;
        let mut base: Option<Stats> = None;
        // The io_uring floors, one per way of waiting (see `run_uring_floor`).
        let mut floors: [Option<Stats>; 2] = [None, None];
        let waits = [(FloorWait::Enter, "enter"), (FloorWait::Epoll, "epoll")];
        for _ in 0..rounds {
            if let Some((f, _)) = &base_file {
                let b = run_baseline(f, BASELINE_FILE_BYTES, size * n, n, per_round * 0.75)
                    .map_err(|e| format!("baseline: {e}"))?;
                match &mut base {
                    Some(acc) => acc.merge(b)?,
                    None => base = Some(b),
                }
                if with_floor {
                    for (acc, (wait, name)) in floors.iter_mut().zip(waits) {
                        let fl = run_uring_floor(
                            f,
                            BASELINE_FILE_BYTES,
                            size * n,
                            n,
                            per_round * 0.5,
                            wait,
                        )
                        .map_err(|e| format!("io_uring floor ({name}): {e}"))?;
                        match acc {
                            Some(a) => a.merge(fl)?,
                            None => *acc = Some(fl),
                        }
                    }
                }
            }
            let st = run_ours(
                &root_path,
                "only",
                Arc::new(UringVfs),
                size,
                n,
                per_round,
                compact,
            )?;
            match &mut ours {
                Some(acc) => acc.merge(st)?,
                None => ours = Some(st),
            }
        }
        let Some(st) = ours else {
            return Err("no round ran".into());
        };
        println!(
            "ours     {size} B x {n}: entries/s | MB/s | p50 | p90 | p99 | p99.9 | max (µs): {} | CPU µs/entry {:.2} (user {:.2}) | entries/fdatasync {} | context switches/fdatasync {}",
            stats_cells(&st),
            st.cpu_us_per_entry(),
            st.user_us_per_entry(),
            st.entries_per_sync(),
            st.switches_per_sync()
        );
        if let Some(b) = base {
            println!(
                "baseline {size} B x {n}: entries/s | MB/s | p50 | p90 | p99 | p99.9 | max (µs): {} | CPU µs/entry {:.2} (user {:.2}) | context switches/fdatasync {}",
                stats_cells(&b),
                b.cpu_us_per_entry(),
                b.user_us_per_entry(),
                b.switches_per_sync()
            );
            for (fl, (_, name)) in floors.iter().zip(waits) {
                let Some(fl) = fl else { continue };
                println!(
                    "uring floor ({name}) {size} B x {n}: entries/s | MB/s | p50 | p90 | p99 | p99.9 | max (µs): {} | CPU µs/entry {:.2} (user {:.2}) | context switches/fdatasync {} | floor/baseline: entries/s {:.2}x",
                    stats_cells(fl),
                    fl.cpu_us_per_entry(),
                    fl.user_us_per_entry(),
                    fl.switches_per_sync(),
                    fl.entries_per_sec() / b.entries_per_sec()
                );
            }
            println!(
                "ours/baseline: entries/s {:.2}x, p99 {:.2}x; load average {}",
                st.entries_per_sec() / b.entries_per_sec(),
                st.us(0.99) / b.us(0.99),
                loadavg()
            );
        }
        return Ok(());
    }
    let mut r = Report {
        text: String::new(),
    };
    // The exact command, with every BENCH_* setting that was in effect.
    let mut env: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("BENCH_"))
        .map(|(k, v)| format!("{k}={v} "))
        .collect();
    env.sort();
    let command = format!("{}cargo bench --bench log_append", env.concat());
    r.line("# Benchmarks: `log_append`");
    r.line("");
    r.line(format!("- command: `{command}`"));
    r.line(format!("- machine: {}", machine()));
    r.line(format!("- disk: {}", filesystem_of(&root_path)));
    r.line(format!(
        "- mode: {}; {} s per append measurement x {} interleaved rounds (merged); closed-loop appenders; latency from HdrHistogram",
        if s.quick { "QUICK (development only)" } else { "full" },
        s.append_secs,
        s.rounds
    ));
    r.line(format!(
        "- date: {} (unix time)",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    ));
    r.line(format!("- load average at start: {}", loadavg()));
    r.line("");
    r.line("How to read this: the machine is shared. When other processes load the CPU or the disk, write+fdatasync");
    r.line("latencies jump from ~100 µs to multiples of ~4 ms for ours and the baseline alike; rates then swing by 10x");
    r.line("between runs. Every comparison is therefore made against a baseline measured in the same run, interleaved");
    r.line("in short rounds (and, for the single appender, in alternating blocks on one thread); the load average");
    r.line("above and at the end says how disturbed the run was. Compare ratios, not absolute rates, across runs.");
    r.line("");

    // ---- baseline and ours, every size × appenders ----
    let (base_file, base_path) = baseline_file(&root_path, true, BASELINE_FILE_BYTES)
        .map_err(|e| format!("baseline file: {e}"))?;
    r.line("## Durable appends through the append engine (the node's write path) vs the baseline");
    r.line("");
    r.line("Baseline: `pwrite(appenders × entry bytes)` + `fdatasync` in a loop over a 256 MiB file that was");
    r.line("zero-filled and synced first (overwrites already-written blocks): the batch an ideal group commit forms.");
    r.line("Latencies in µs; a baseline row's latency is one write+fdatasync. CPU µs/entry: user+system time of the");
    r.line("whole bench process during the measurement (every thread) per entry: on 2 cores, ~2,000,000 ÷ this");
    r.line("is the rate at which the CPU alone becomes the limit.");
    r.line("");
    r.line("Ours: N appenders are N async tasks on one tokio-uring thread, each persisting one-entry write");
    r.line("batches through the append engine (`storage::engine`) and awaiting them, with the engine's task on");
    r.line("the same thread: exactly how the node's event loop drives it.");
    r.line("");
    r.line("Steady state, as a Raft node runs: every \"ours\" row's log is compacted behind the appends (a task on");
    r.line(format!("the same thread calls `compact_prefix` whenever the log has more than {KEEP_SEGMENTS} segments of 64 MiB, keeping"));
    r.line("the newest 4), so compacted segment files go to the recycling pool (default 2) and rotations reuse them:");
    r.line("appends overwrite written blocks. Each row's log directory is reopened and kept across the rounds. For");
    r.line("honesty the 64 KiB x 8 cell also has a row without compaction (the log grows; every rotation takes a file");
    r.line("prepared in the background, fallocated at these rates). entries/fdatasync: the group commit's average batch.");
    r.line("");
    r.line("| run | entry B | appenders | entries/s | MB/s | p50 | p90 | p99 | p99.9 | max | entries/s ours÷base | p99 ours÷base | CPU µs/entry | entries/fdatasync |");
    r.line("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut results: Vec<(usize, usize, Stats, Stats)> = Vec::new();
    // 64 KiB x 8 again without compaction (the log grows, every rotation takes a freshly prepared
    // file).
    let mut growing: Option<Stats> = None;
    for round in 0..s.rounds {
        let mut k = 0;
        for &size in &SIZES {
            for &n in &APPENDERS {
                eprintln!("round {}/{}: {size} B x {n}", round + 1, s.rounds);
                let base = run_baseline(
                    &base_file,
                    BASELINE_FILE_BYTES,
                    size * n,
                    n,
                    s.append_secs * 0.75,
                )
                .map_err(|e| format!("baseline: {e}"))?;
                let ours = run_ours(
                    &root_path,
                    &format!("ours-{size}-{n}"),
                    Arc::new(UringVfs),
                    size,
                    n,
                    s.append_secs,
                    true,
                )?;
                if round == 0 {
                    results.push((size, n, ours, base));
                } else {
                    results[k].2.merge(ours)?;
                    results[k].3.merge(base)?;
                }
                k += 1;
                if size == 64 << 10 && n == 8 {
                    let g = run_ours(
                        &root_path,
                        "growing-65536-8",
                        Arc::new(UringVfs),
                        size,
                        n,
                        s.append_secs,
                        false,
                    )?;
                    match &mut growing {
                        Some(acc) => acc.merge(g)?,
                        None => growing = Some(g),
                    }
                }
            }
        }
    }
    for (size, n, ours, base) in &results {
        r.line(format!(
            "| ours | {size} | {n} | {} | {:.2} | {:.2} | {:.1} | {} |",
            stats_cells(ours),
            ours.entries_per_sec() / base.entries_per_sec(),
            ours.us(0.99) / base.us(0.99),
            ours.cpu_us_per_entry(),
            ours.entries_per_sync()
        ));
        if let (Some(g), true) = (&growing, *size == 64 << 10 && *n == 8) {
            r.line(format!(
                "| ours, no compaction (log grows) | {size} | {n} | {} | {:.2} | {:.2} | {:.1} | {} |",
                stats_cells(g),
                g.entries_per_sec() / base.entries_per_sec(),
                g.us(0.99) / base.us(0.99),
                g.cpu_us_per_entry(),
                g.entries_per_sync()
            ));
        }
        r.line(format!(
            "| baseline | {size} | {n} | {} | | | {:.1} | {} |",
            stats_cells(base),
            base.cpu_us_per_entry(),
            base.entries_per_sync()
        ));
    }
    r.line("");
    r.line("### Single appender, paired: one thread alternating blocks of 50 baseline cycles and 50 appends");
    r.line("");
    r.line("| run | entry B | appenders | entries/s | MB/s | p50 | p90 | p99 | p99.9 | max | entries/s ours÷base | p99 ours÷base |");
    r.line("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut paired = Vec::new();
    for &size in &[256usize, 4096] {
        eprintln!("paired single appender: {size} B");
        let (ours, base) = run_paired_single(
            &root_path,
            &base_file,
            size,
            s.append_secs * s.rounds as f64,
        )?;
        r.line(format!(
            "| ours (paired) | {size} | 1 | {} | {:.2} | {:.2} |",
            stats_cells(&ours),
            ours.entries_per_sec() / base.entries_per_sec(),
            ours.us(0.99) / base.us(0.99)
        ));
        r.line(format!(
            "| baseline (paired) | {size} | 1 | {} | | |",
            stats_cells(&base)
        ));
        paired.push((size, ours, base));
    }
    drop(base_file);
    let _ = std::fs::remove_file(&base_path);
    for &size in &SIZES {
        for &n in &APPENDERS {
            let _ = std::fs::remove_dir_all(root_path.join(format!("ours-{size}-{n}")));
        }
    }
    let _ = std::fs::remove_dir_all(root_path.join("growing-65536-8"));
    r.line("");

    // ---- preallocation ----
    r.line("## Preallocation: zero-filled (already written) vs merely fallocated blocks");
    r.line("");
    r.line("Baseline loop: 4 KiB `pwrite` + `fdatasync` over a fresh 64 MiB file, zero-filled and synced, or only");
    r.line("`fallocate`d. Ours: the same engine with segments prepared by zero-filling (production) or by a Vfs");
    r.line(
        "whose `create_zeroed` only `fallocate`s (unwritten extents). Baseline files are fresh each round;",
    );
    r.line("our logs are reopened each round and grow into their prepared space. 4 KiB entries, so that every");
    r.line("append writes a block no earlier append touched (with small entries most appends rewrite the block");
    r.line(
        "the previous append already converted from unwritten to written, hiding the difference).",
    );
    r.line("");
    r.line("| run | entry B | appenders | entries/s | MB/s | p50 | p90 | p99 | p99.9 | max |");
    r.line("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut pre: Option<[Stats; 4]> = None;
    for round in 0..s.rounds {
        eprintln!("round {}/{}: preallocation", round + 1, s.rounds);
        let (written, wpath) = baseline_file(&root_path, true, PREALLOC_FILE_BYTES)
            .map_err(|e| format!("baseline file: {e}"))?;
        let w = run_baseline(&written, PREALLOC_FILE_BYTES, 4096, 1, s.append_secs)
            .map_err(|e| e.to_string())?;
        drop(written);
        let _ = std::fs::remove_file(&wpath);
        let (falloc, fpath) = baseline_file(&root_path, false, PREALLOC_FILE_BYTES)
            .map_err(|e| format!("fallocated file: {e}"))?;
        let f = run_baseline(&falloc, PREALLOC_FILE_BYTES, 4096, 1, s.append_secs)
            .map_err(|e| e.to_string())?;
        drop(falloc);
        let _ = std::fs::remove_file(&fpath);
        let oz = run_ours(
            &root_path,
            "zero-filled",
            Arc::new(UringVfs),
            4096,
            1,
            s.append_secs,
            false,
        )?;
        let of = run_ours(
            &root_path,
            "fallocated",
            Arc::new(FallocVfs),
            4096,
            1,
            s.append_secs,
            false,
        )?;
        match &mut pre {
            None => pre = Some([w, f, oz, of]),
            Some([a, b, c, d]) => {
                a.merge(w)?;
                b.merge(f)?;
                c.merge(oz)?;
                d.merge(of)?;
            }
        }
    }
    let _ = std::fs::remove_dir_all(root_path.join("zero-filled"));
    let _ = std::fs::remove_dir_all(root_path.join("fallocated"));
    let Some([w4k, f4k, ours_zero, ours_falloc]) = pre else {
        return Err("BENCH_ROUNDS must be at least 1".into());
    };
    r.line(format!(
        "| baseline loop, written file | 4096 | 1 | {} |",
        stats_cells(&w4k)
    ));
    r.line(format!(
        "| baseline loop, fallocated file | 4096 | 1 | {} |",
        stats_cells(&f4k)
    ));
    r.line(format!(
        "| ours, zero-filled segments (production) | 4096 | 1 | {} |",
        stats_cells(&ours_zero)
    ));
    r.line(format!(
        "| ours, fallocated-only segments | 4096 | 1 | {} |",
        stats_cells(&ours_falloc)
    ));
    r.line("");
    r.line(format!(
        "Zero-filled ÷ fallocated: baseline loop {:.2}x entries/s, ours {:.2}x entries/s (p99 {:.0} vs {:.0} µs).",
        w4k.entries_per_sec() / f4k.entries_per_sec(),
        ours_zero.entries_per_sec() / ours_falloc.entries_per_sec(),
        ours_zero.us(0.99),
        ours_falloc.us(0.99)
    ));
    r.line("");

    // ---- fixed offered rate ----
    r.line("## Latency at a fixed offered rate (open loop, measured from the intended issue time)");
    r.line("");
    r.line("| entry B | offered/s | achieved entries/s | MB/s | p50 | p90 | p99 | p99.9 | max |");
    r.line("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for rate in [1_000.0, 20_000.0] {
        let st = run_offered_rate(&root_path, 256, rate, s.append_secs)?;
        r.line(format!("| 256 | {rate:.0} | {} |", stats_cells(&st)));
    }
    r.line("");

    // ---- big log: reads and open ----
    let big = if s.keep_big_log {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-log")
    } else {
        root_path.join("big")
    };
    let (total, build_secs) = build_big_log(&big, s.big_log_bytes)?;
    let on_disk = dir_bytes(&big);
    let segments = std::fs::read_dir(&big)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("segment_"))
                .count()
        })
        .unwrap_or(0);
    r.line(format!(
        "## Reads and open over a {:.2} GiB log ({total} entries of {READ_ENTRY_BYTES} B, {segments} segments of 64 MiB; built in {build_secs:.1} s)",
        on_disk as f64 / (1u64 << 30) as f64
    ));
    r.line("");
    let reads = run_reads(&big, total, s.reads)?;
    r.line(format!(
        "Random `entry(i)` (CRC verified, payload borrowed from the mmap), one thread, {} reads, warm page cache, xorshift seed 0x9e3779b97f4a7c15:",
        s.reads
    ));
    r.line("");
    r.line("| ops/s | p50 ns | p90 ns | p99 ns | p99.9 ns | max ns |");
    r.line("|---:|---:|---:|---:|---:|---:|");
    let h = &reads.latency_ns;
    r.line(format!(
        "| {:.0} | {} | {} | {} | {} | {} |",
        reads.ops_per_sec,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    ));
    r.line("");
    let opens = time_opens(&big, 5)?;
    let mut sorted = opens.clone();
    sorted.sort_by(f64::total_cmp);
    r.line("Open (recovery) time, warm page cache:");
    r.line("");
    r.line("| log | runs | min ms | median ms | max ms |");
    r.line("|---|---:|---:|---:|---:|");
    r.line(format!(
        "| clean, {:.2} GiB | {} | {:.2} | {:.2} | {:.2} |",
        on_disk as f64 / (1u64 << 30) as f64,
        sorted.len(),
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    ));
    let mut torn_ms = Vec::new();
    let mut torn_notes = Vec::new();
    for _ in 0..3 {
        let (path, off) = tear_last_frame(&big)?;
        let t = Instant::now();
        let log = RaftLog::open(LogConfig {
            segment_size_bytes: SEGMENT_BYTES,
            ..LogConfig::new(&big)
        })
        .map_err(|e| format!("open torn log: {e}"))?;
        torn_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let rep = log.recovery_report().clone();
        match rep.torn_tail {
            Some((_, cut, bytes, frames)) => {
                torn_notes.push(format!("cut at {cut} ({bytes} bytes, {frames} frame(s))"))
            }
            None => torn_notes.push(format!(
                "NO torn tail reported for {} offset {off}",
                path.display()
            )),
        }
        drop(log);
        wait_for_preparation(&big);
    }
    let mut ts = torn_ms.clone();
    ts.sort_by(f64::total_cmp);
    r.line(format!(
        "| torn tail (last frame half-zeroed) | {} | {:.2} | {:.2} | {:.2} |",
        ts.len(),
        ts[0],
        ts[ts.len() / 2],
        ts[ts.len() - 1]
    ));
    r.line("");
    r.line(format!("Torn-tail recoveries: {}.", torn_notes.join("; ")));
    r.line("");

    // ---- targets ----
    r.line("## Targets (issue 2)");
    r.line("");
    let find = |size: usize, n: usize| {
        results
            .iter()
            .find(|(s2, n2, _, _)| *s2 == size && *n2 == n)
            .map(|(_, _, o, b)| (o, b))
    };
    if let Some((_, b1)) = find(256, 1) {
        // On this machine a calm disk does ~9,000-10,000 4 KiB write+fdatasync cycles/s
        // (FACTS.md); far below that, other processes own the disk and every sync waits behind
        // their I/O, which flattens the differences the targets are about.
        let rate = b1.entries_per_sec();
        if rate < SATURATED_BASELINE_PER_SEC {
            r.line(format!(
                "**Warning: the disk was saturated by other processes during this run** (baseline single-appender 256 B: {rate:.0} write+fdatasync/s, p50 {:.0} µs; ~9,000/s and ~100 µs when calm). The verdicts below compare against a starved baseline and a starved single appender: they are not the targets' figures.",
                b1.us(0.5)
            ));
            r.line("");
        }
    }
    if let (Some((o1, b1)), Some((o64, _))) = (find(256, 1), find(256, 64)) {
        let rate = o1.entries_per_sec() / b1.entries_per_sec();
        let p99 = o1.us(0.99) / b1.us(0.99);
        r.line(format!(
            "- single appender, 256 B: rate {rate:.2}x baseline (target >= 0.9): {}; p99 {p99:.2}x baseline p99 (target <= 1.3): {}",
            verdict(rate >= 0.9),
            verdict(p99 <= 1.3)
        ));
        if let Some((_, po, pb)) = paired.iter().find(|(size, _, _)| *size == 256) {
            let rate = po.entries_per_sec() / pb.entries_per_sec();
            let p99 = po.us(0.99) / pb.us(0.99);
            r.line(format!(
                "- single appender, 256 B, paired run: rate {rate:.2}x baseline (target >= 0.9): {}; p99 {p99:.2}x baseline p99 (target <= 1.3): {}",
                verdict(rate >= 0.9),
                verdict(p99 <= 1.3)
            ));
        }
        // The single-appender rate of the interleaved rounds swings by ~15% between runs (it
        // sits in the denominator); the paired run's rate is the steadier one. The verdict takes
        // the smaller of the two ratios.
        let scale = o64.entries_per_sec() / o1.entries_per_sec();
        let paired_scale = paired
            .iter()
            .find(|(size, _, _)| *size == 256)
            .map(|(_, po, _)| o64.entries_per_sec() / po.entries_per_sec());
        let (shown, worst) = match paired_scale {
            Some(ps) => (
                format!("{scale:.1}x the single-appender rate of the rounds, {ps:.1}x that of the paired run"),
                scale.min(ps),
            ),
            None => (format!("{scale:.1}x the single-appender rate"), scale),
        };
        r.line(format!(
            "- 64 appenders, 256 B (64 appends in flight from one thread, as the node's event loop issues them): {shown} (target >= 40, the smaller ratio counts): {}",
            verdict(worst >= 40.0)
        ));
    }
    if let Some((o, b)) = find(64 << 10, 8) {
        let bw = o.mb_per_sec() / b.mb_per_sec();
        r.line(format!(
            "- 64 KiB, 8 appenders: {bw:.2}x the baseline's bandwidth with the same batch bytes (target >= 0.8): {}",
            verdict(bw >= 0.8)
        ));
        if let Some(g) = &growing {
            r.line(format!(
                "- 64 KiB, 8 appenders without compaction (the log grows; not the steady state): {:.2}x the baseline's bandwidth",
                g.mb_per_sec() / b.mb_per_sec()
            ));
        }
    }
    let clean_median = sorted[sorted.len() / 2];
    r.line(format!(
        "- open of a {:.2} GiB clean log: median {clean_median:.2} ms (target <= 100 ms, warm cache): {}",
        on_disk as f64 / (1u64 << 30) as f64,
        verdict(clean_median <= 100.0 && on_disk >= 1 << 30)
    ));
    if on_disk < 1 << 30 {
        r.line("  (quick mode: the log is smaller than 1 GiB, so this is not the target's figure)");
    }

    r.line("");
    r.line(format!("Load average at the end: {}.", loadavg()));

    let out = if s.quick {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/BENCHMARKS-quick.md")
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md")
    };
    // BENCHMARKS.md also holds the node and election benchmarks below a marker line: this bench
    // rewrites only its own section above the marker and keeps the rest as it is.
    let kept = std::fs::read_to_string(&out)
        .ok()
        .and_then(|old| {
            old.find(OTHER_SECTIONS_MARKER)
                .map(|at| old[at..].to_string())
        })
        .unwrap_or_default();
    let mut f = File::create(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    f.write_all(r.text.as_bytes())
        .and_then(|()| {
            if kept.is_empty() {
                Ok(())
            } else {
                f.write_all(b"\n")
                    .and_then(|()| f.write_all(kept.as_bytes()))
            }
        })
        .map_err(|e| format!("{}: {e}", out.display()))?;
    println!("\nwritten to {}", out.display());
    if s.keep_big_log {
        println!("kept the read/open log in {}", big.display());
    }
    drop(root);
    Ok(())
}
