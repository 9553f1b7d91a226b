//! The production [`Durable`]: the segmented log (`RaftLog`) and the state file (`RaftState`),
//! written from the event loop's own thread without blocking it.
//!
//! Opening order: the log first, because `RaftLog::open` takes the directory's `flock` (the one
//! lock a node holds); a second process on the same directory therefore fails before it reads or
//! rewrites `raft_state.meta`.
//!
//! # Where the time of a commit goes, and why the log is written from the loop's thread
//! A single proposal's commit is one write + fdatasync on the leader and on a follower, two
//! gRPC hops, and whatever it costs to get from the event loop to the disk and back. An earlier
//! version handed each batch to a "persist" thread (std channel → futex wake → the thread
//! submits and sleeps in `io_uring_enter` → it wakes → tokio oneshot → the loop's thread wakes):
//! measured with the latency timeline ([`crate::node::timeline`]) that was ~28 µs before the
//! write started and ~15–33 µs after it ended, on every node, on the commit's critical path.
//! Now the loop's thread stages the batch, submits the write and its linked fdatasync on a
//! per-node io_uring ([`AppendRing`]) with one `io_uring_enter`, and is woken by the ring's
//! completion through its own reactor (the ring's fd is registered like a socket): no other
//! thread is involved, and the only wake-up is the one the disk's completion needs anyway.
//!
//! # What runs where
//! - A "log writer" task on the loop's thread (spawned on the first write) executes batches in
//!   submission order: the next group starts only after the previous one is durable and
//!   published. Batches queued meanwhile form one group (one fdatasync for all: group commit
//!   under load). A group is a run of batches of which only the first may truncate.
//! - Truncation (`RaftLog::truncate_suffix`) and segment rotation run synchronously on the loop's
//!   thread: they are rare (a follower with a conflicting suffix; once per segment) and cost one
//!   or two syncs then.
//! - The hard state (term and vote) goes to a small "hard-state" thread that owns `RaftState`
//!   (its own file and fdatasync), overlapping the log's write; the group completes after both.
//!   A hard state whose only change is the commit index is not written: the commit index is
//!   re-learned from the leader after a restart, and an older one on disk is always safe. Term
//!   and vote are written whenever they change, before the batch completes (so before any vote
//!   or acknowledgement leaves).
//!
//! # Order against the leader's AppendEntries
//! The loop queues a Ready's AppendEntries to the peer workers before it hands the batch over,
//! but their bytes reach the socket in tasks of the runtime's queue (peer worker, RPC, tonic's
//! buffer, the HTTP/2 connection), which run after this LocalSet task has submitted the write:
//! the AppendEntries leave ~10–50 µs after the submission (timeline, loaded machine). The write
//! is submitted with `IOSQE_ASYNC` to keep that short. Deferring the submission behind them was
//! tried twice (`yield_now`, and awaiting a spawned runtime task) and measured worse: the writer
//! then ran only ~120 µs later, after the followers had the AppendEntries, and the leader's own
//! fdatasync became the commit's critical path.
//!
//! # Invariants
//! - A batch completes `Ok` only after the fdatasync covering its entries (and its hard state's)
//!   completed; batches complete in submission order; entries become visible to the core's log
//!   view (`RaftLog::publish_staged`) only once durable.
//! - The log is changed only by the writer task, never across an `.await` while a borrow is
//!   held, and the core reads it only between those changes (one thread, `RefCell`).
//! - A failed write or sync is fatal: the batch fails, every later one fails with
//!   [`DiskError::EarlierFailed`], the log is poisoned. Nothing is retried (fsyncgate).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{oneshot, Notify};

use crate::config::ClusterConfig;
use crate::node::event_loop::{Durable, PersistFuture, WriteBatch};
use crate::node::{timeline, NodeError};
use crate::raft::{HardState, Storage};
use crate::storage::log::StagedAppend;
use crate::storage::state::{RaftState, StateError};
use crate::storage::{LogConfig, LogError, RaftLog};
use crate::types::{LogEntry, LogIndex, NodeId, Term};

/// Batches written as one group at most (one fdatasync covers them all).
pub const GROUP_BATCHES_MAX: usize = 256;
/// Payload bytes of one group at most (a group is copied once into the ring's buffer).
pub const GROUP_PAYLOAD_BYTES_MAX: u64 = 8 << 20;
/// Submission queue size of the append ring: one write and its fdatasync.
const RING_ENTRIES: u32 = 4;

/// Opens `<directory>/raft_state.meta` and the segments, then runs the node on them
/// ([`crate::node::serve`]).
///
/// # Errors
/// Storage errors while opening (corruption names the file and offset), then as `serve`.
pub fn open_and_serve(
    config: &ClusterConfig,
    id: NodeId,
    listener: std::net::TcpListener,
    directory: &Path,
) -> Result<(), NodeError> {
    let storage = |e: Box<dyn std::error::Error + Send + Sync>| NodeError::Storage(e);
    let log_config = LogConfig {
        segment_size_bytes: config.cluster_settings.log_segment_size,
        ..LogConfig::new(directory)
    };
    let log = RaftLog::open(log_config).map_err(|e| match e {
        LogError::Locked { dir } => NodeError::DataDirInUse { directory: dir },
        e => storage(Box::new(e)),
    })?;
    let state = RaftState::open(directory).map_err(|e| storage(Box::new(e)))?;
    let hard_state = state.state().hard_state();
    tracing::info!(
        first = %Storage::first_index(&log),
        last = %Storage::last_index(&log),
        term = %hard_state.term,
        "log opened"
    );
    let log = Rc::new(RefCell::new(log));
    let durable = DiskDurable::start(Rc::clone(&log), state).map_err(|e| storage(Box::new(e)))?;
    crate::node::serve(config, id, listener, hard_state, LogView(log), durable)
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the hard-state thread stopped")]
    ThreadGone,
    #[error("the log writer task stopped")]
    WriterGone,
    /// An earlier batch failed (that batch carries the cause); this one was not written.
    #[error("not written: an earlier durable write failed")]
    EarlierFailed,
}

/// The core's read view of the log: the loop thread's `RaftLog` (mmap reads).
#[derive(Clone)]
pub struct LogView(Rc<RefCell<RaftLog>>);

impl Storage for LogView {
    fn first_index(&self) -> LogIndex {
        Storage::first_index(&*self.0.borrow())
    }
    fn last_index(&self) -> LogIndex {
        Storage::last_index(&*self.0.borrow())
    }
    fn term(&self, index: LogIndex) -> Option<Term> {
        Storage::term(&*self.0.borrow(), index)
    }
    fn entries(&self, lo: LogIndex, hi: LogIndex, max_bytes: u64) -> Vec<LogEntry> {
        Storage::entries(&*self.0.borrow(), lo, hi, max_bytes)
    }
}

/// One batch waiting for the writer task.
struct Job {
    batch: Rc<WriteBatch>,
    /// The hard state to write: set only when term or vote changed.
    hard_state: Option<HardState>,
    done: oneshot::Sender<Result<(), DiskError>>,
}

/// What the loop shares with the writer task.
#[derive(Default)]
struct Queue {
    jobs: RefCell<VecDeque<Job>>,
    wake: Notify,
    /// Set when a write failed: later batches fail at once.
    failed: Cell<bool>,
    /// Set when the store is dropped: the writer task finishes what is queued and ends.
    closed: Cell<bool>,
    /// Groups written (one fdatasync each) and the entries they carried.
    groups: Cell<u64>,
    grouped_entries: Cell<u64>,
}

struct StateJob {
    hard_state: HardState,
    done: oneshot::Sender<Result<(), StateError>>,
}

/// Hands batches to the log writer task; see the module docs.
pub struct DiskDurable {
    log: Rc<RefCell<RaftLog>>,
    queue: Rc<Queue>,
    state_jobs: std_mpsc::Sender<StateJob>,
    writer_started: bool,
    /// Term and vote of the last hard state queued: a batch that changes neither and carries no
    /// log change has nothing to write and completes without the writer.
    submitted: HardState,
}

impl DiskDurable {
    /// Starts the hard-state thread, which owns `state`. The log writer task starts with the
    /// first write (it must be spawned inside the node's runtime).
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn start(log: Rc<RefCell<RaftLog>>, mut state: RaftState) -> io::Result<DiskDurable> {
        let (state_jobs, rx) = std_mpsc::channel::<StateJob>();
        let submitted = state.state().hard_state();
        std::thread::Builder::new()
            .name("hard-state".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    let result = state.save_hard_state(job.hard_state);
                    let fatal = result.is_err();
                    let _ = job.done.send(result);
                    if fatal {
                        return;
                    }
                }
            })?;
        Ok(DiskDurable {
            log,
            queue: Rc::new(Queue::default()),
            state_jobs,
            writer_started: false,
            submitted,
        })
    }
}

impl DiskDurable {
    /// Groups written since start (one write + fdatasync each) and the entries they carried:
    /// their ratio is the group commit's average batch.
    pub fn group_stats(&self) -> (u64, u64) {
        (self.queue.groups.get(), self.queue.grouped_entries.get())
    }
}

impl Durable for DiskDurable {
    type Log = LogView;
    type Error = DiskError;

    fn persist(&mut self, batch: Rc<WriteBatch>) -> PersistFuture<DiskError> {
        let changes_vote = batch
            .hard_state
            .is_some_and(|hs| hs.term != self.submitted.term || hs.vote != self.submitted.vote);
        if batch.truncate_from.is_none() && batch.entries.is_empty() && !changes_vote {
            // A commit-index-only change (every heartbeat and commit notice): not written (see
            // the module docs). The event loop still completes it after the earlier batches.
            return Box::pin(std::future::ready(Ok(())));
        }
        if self.queue.failed.get() {
            return Box::pin(std::future::ready(Err(DiskError::EarlierFailed)));
        }
        let hard_state = batch.hard_state.filter(|_| changes_vote);
        if let Some(hs) = hard_state {
            self.submitted = hs;
        }
        if !self.writer_started {
            self.writer_started = true;
            let writer = LogWriterTask {
                log: Rc::clone(&self.log),
                queue: Rc::clone(&self.queue),
                state_jobs: self.state_jobs.clone(),
            };
            tokio::task::spawn_local(writer.run());
        }
        timeline::mark(
            "persist_submit",
            batch.entries.last().map_or(0, |e| e.index.0),
        );
        let (done, result) = oneshot::channel();
        self.queue.jobs.borrow_mut().push_back(Job {
            batch,
            hard_state,
            done,
        });
        self.queue.wake.notify_one();
        Box::pin(async move { result.await.map_err(|_| DiskError::WriterGone)? })
    }

    fn publish(&mut self, _log: &mut LogView, _batch: &WriteBatch) {
        // The writer task published into the shared RaftLog before it completed the batch.
    }
}

/// The task that executes batches (see the module docs).
struct LogWriterTask {
    log: Rc<RefCell<RaftLog>>,
    queue: Rc<Queue>,
    state_jobs: std_mpsc::Sender<StateJob>,
}

impl LogWriterTask {
    async fn run(self) {
        let mut ring = match AppendRing::new() {
            Ok(r) => Some(r),
            // Reported with the first group (whose write then fails), not here: there may never
            // be one.
            Err(e) => {
                tracing::error!(error = %e, "cannot set up the append io_uring");
                None
            }
        };
        loop {
            let group = self.take_group();
            if group.is_empty() {
                if self.queue.closed.get() {
                    return;
                }
                // A `notify_one` before this wait leaves a permit: no wake-up is lost.
                self.queue.wake.notified().await;
                continue;
            }
            let result = match ring.as_mut() {
                Some(ring) => self.write_group(ring, &group).await,
                None => Err(DiskError::Log(LogError::Io {
                    op: "set up the append io_uring",
                    path: self.log.borrow().config().dir.clone(),
                    source: Arc::new(io::Error::other("io_uring unavailable")),
                })),
            };
            match result {
                Ok(()) => {
                    self.queue.groups.set(self.queue.groups.get() + 1);
                    let entries: usize = group.iter().map(|j| j.batch.entries.len()).sum();
                    self.queue
                        .grouped_entries
                        .set(self.queue.grouped_entries.get() + entries as u64);
                    for job in group {
                        let _ = job.done.send(Ok(()));
                    }
                }
                Err(e) => {
                    self.queue.failed.set(true);
                    let mut jobs = group.into_iter();
                    if let Some(first) = jobs.next() {
                        let _ = first.done.send(Err(e));
                    }
                    let queued: Vec<Job> = self.queue.jobs.borrow_mut().drain(..).collect();
                    for job in jobs.chain(queued) {
                        let _ = job.done.send(Err(DiskError::EarlierFailed));
                    }
                    return;
                }
            }
        }
    }

    /// The batches of the next group: the oldest queued batch and the ones after it that do not
    /// truncate (a truncation must come first in its group), within the group bounds.
    fn take_group(&self) -> Vec<Job> {
        let mut jobs = self.queue.jobs.borrow_mut();
        let mut group: Vec<Job> = Vec::new();
        let mut bytes = 0u64;
        while let Some(next) = jobs.front() {
            let next_bytes: u64 = next
                .batch
                .entries
                .iter()
                .map(|e| e.payload.len() as u64)
                .sum();
            let fits = group.is_empty()
                || (next.batch.truncate_from.is_none()
                    && group.len() < GROUP_BATCHES_MAX
                    && bytes + next_bytes <= GROUP_PAYLOAD_BYTES_MAX);
            if !fits {
                break;
            }
            bytes += next_bytes;
            group.extend(jobs.pop_front());
        }
        group
    }

    /// Truncate (first batch only), then the newest hard state on the hard-state thread and the
    /// entries of every batch on the ring, in parallel; returns when all of it is durable.
    async fn write_group(&self, ring: &mut AppendRing, group: &[Job]) -> Result<(), DiskError> {
        if let Some(from) = group[0].batch.truncate_from {
            // Rare (a follower whose suffix conflicts with the leader's): synchronous.
            self.log.borrow_mut().truncate_suffix(from)?;
            // A truncation may delete segment files and create one again under the same name:
            // never keep writing through a descriptor of a file the log no longer uses.
            ring.segment = None;
        }
        let state_done = match group.iter().rev().find_map(|j| j.hard_state) {
            Some(hard_state) => {
                let (done, result) = oneshot::channel();
                self.state_jobs
                    .send(StateJob { hard_state, done })
                    .map_err(|_| DiskError::ThreadGone)?;
                Some(result)
            }
            None => None,
        };
        let joined: Vec<LogEntry>;
        let entries: &[LogEntry] = if group.len() == 1 {
            &group[0].batch.entries
        } else {
            joined = group
                .iter()
                .flat_map(|j| j.batch.entries.iter().cloned())
                .collect();
            &joined
        };
        if !entries.is_empty() {
            let last = entries.last().map_or(0, |e| e.index.0);
            timeline::mark("write_start", last);
            self.append(ring, entries).await?;
            timeline::mark("write_done", last);
        }
        if let Some(result) = state_done {
            result.await.map_err(|_| DiskError::ThreadGone)??;
        }
        Ok(())
    }

    /// Appends `entries` durably, one staged write + fdatasync per segment they touch, and
    /// publishes each part once it is durable.
    async fn append(
        &self,
        ring: &mut AppendRing,
        mut entries: &[LogEntry],
    ) -> Result<(), LogError> {
        self.log.borrow().check_append(entries)?;
        while !entries.is_empty() {
            // May rotate to a new segment (rare, synchronous).
            let staged = self.log.borrow_mut().stage_append(entries)?;
            let written = self.write_staged(ring, &staged).await;
            entries = &entries[staged.entries..];
            self.log.borrow_mut().publish_staged(staged, written)?;
        }
        Ok(())
    }

    async fn write_staged(
        &self,
        ring: &mut AppendRing,
        staged: &StagedAppend,
    ) -> Result<(), LogError> {
        let offset = {
            let log = self.log.borrow();
            let (path, offset) = log.staged_write_target();
            if ring.segment.as_ref().is_none_or(|(p, _)| p != path) {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| io_error("open segment for appends", path, e))?;
                ring.segment = Some((path.to_path_buf(), file));
            }
            offset
        };
        ring.write_durable(staged.frames(), offset).await
    }
}

fn io_error(op: &'static str, path: &Path, e: io::Error) -> LogError {
    LogError::Io {
        op,
        path: path.to_path_buf(),
        source: Arc::new(e),
    }
}

/// A per-node io_uring for the log's appends, owned by the writer task and polled by the
/// runtime's reactor (its fd becomes readable when completions are waiting).
///
/// The write's buffer is the ring's own (`buffer`), and dropping the ring waits for the
/// completions of whatever is still in flight: a dropped writer (runtime shutdown) can never
/// leave the kernel writing from freed memory.
struct AppendRing {
    ring: AsyncFd<IoUring>,
    buffer: Vec<u8>,
    /// The open segment, opened for writing by this ring (path, file); forgotten after every
    /// truncation.
    segment: Option<(PathBuf, File)>,
    in_flight: usize,
}

impl AppendRing {
    fn new() -> io::Result<AppendRing> {
        let ring = IoUring::new(RING_ENTRIES)?;
        // SAFETY: the IoUring owns its fd and keeps it open until it is dropped, which happens
        // only when the AsyncFd (which deregisters first) is dropped.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(AppendRing {
            ring,
            buffer: Vec::new(),
            segment: None,
            in_flight: 0,
        })
    }

    /// Writes `bytes` at `offset` of the open segment and fdatasyncs it: one submission of a
    /// write linked (`IO_LINK`) to an `IORING_OP_FSYNC` with `DATASYNC`. The link orders them:
    /// the sync starts only after the write completed, so it covers it; a failed or short write
    /// cancels the sync (`-ECANCELED`) and the append fails.
    async fn write_durable(&mut self, bytes: &[u8], offset: u64) -> Result<(), LogError> {
        assert_eq!(self.in_flight, 0, "one durable write at a time");
        let (path, fd) = match &self.segment {
            Some((path, file)) => (path.clone(), file.as_raw_fd()),
            None => unreachable!("write_staged opens the segment first"),
        };
        assert!(
            bytes.len() <= u32::MAX as usize,
            "a staged write of {} bytes does not fit one SQE",
            bytes.len()
        );
        self.buffer.clear();
        self.buffer.extend_from_slice(bytes);
        let write = opcode::Write::new(
            types::Fd(fd),
            self.buffer.as_ptr(),
            self.buffer.len() as u32,
        )
        .offset(offset)
        .build()
        // ASYNC: hand the write to the kernel's io-wq at once instead of copying it into the
        // page cache inside `io_uring_enter` on this thread (the linked fdatasync goes to io-wq
        // anyway), so the loop's thread is free sooner for the RPCs of the same Ready.
        .flags(squeue::Flags::IO_LINK | squeue::Flags::ASYNC)
        .user_data(0);
        let sync = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(1);
        {
            let ring = self.ring.get_mut();
            let mut sq = ring.submission();
            // SAFETY: the buffer and the file stay alive and unmoved until both completions were
            // reaped: `buffer` is only touched again after `in_flight` is back to 0, and `Drop`
            // waits for outstanding completions before the fields are freed.
            unsafe {
                sq.push(&write).and_then(|()| sq.push(&sync)).map_err(|_| {
                    io_error("io_uring submission", &path, io::Error::other("queue full"))
                })?;
            }
        }
        self.in_flight = 2;
        if let Err(e) = self.ring.get_ref().submit() {
            if !self.ring.get_mut().submission().is_empty() {
                // The kernel took nothing; forget the SQEs (no buffer is referenced).
                self.ring.get_mut().submission().sync();
            }
            return Err(io_error("io_uring_enter", &path, e));
        }
        let mut results = [None::<i32>; 2];
        while self.in_flight > 0 {
            let mut ready = self
                .ring
                .readable_mut()
                .await
                .map_err(|e| io_error("poll the append io_uring", &path, e))?;
            let mut reaped = 0;
            for cqe in ready.get_inner_mut().completion() {
                let i = cqe.user_data() as usize;
                assert!(i < 2, "unexpected completion {i} on the append ring");
                results[i] = Some(cqe.result());
                reaped += 1;
            }
            self.in_flight -= reaped;
            if reaped == 0 {
                ready.clear_ready();
            }
        }
        let [written, synced] = results.map(|r| r.unwrap_or(-libc::EIO));
        if written < 0 {
            let what = if synced == -libc::ECANCELED {
                "append write (the linked fdatasync was cancelled)"
            } else {
                "append write"
            };
            return Err(io_error(
                what,
                &path,
                io::Error::from_raw_os_error(-written),
            ));
        }
        if written as usize != bytes.len() {
            return Err(io_error(
                "append write",
                &path,
                io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!(
                        "short write at offset {offset}: {written} of {} bytes",
                        bytes.len()
                    ),
                ),
            ));
        }
        if synced < 0 {
            return Err(io_error(
                "fdatasync",
                &path,
                io::Error::from_raw_os_error(-synced),
            ));
        }
        Ok(())
    }
}

impl Drop for AppendRing {
    fn drop(&mut self) {
        // A write dropped mid-flight (runtime shutdown): the kernel may still read `buffer`.
        let ring = self.ring.get_mut();
        while self.in_flight > 0 {
            match ring.submit_and_wait(self.in_flight) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
            let reaped = ring.completion().count();
            self.in_flight = self.in_flight.saturating_sub(reaped);
        }
    }
}

impl Drop for DiskDurable {
    fn drop(&mut self) {
        // The event loop is done with the store: the node is stopping. The writer task finishes
        // what is queued (nothing: the loop waited for its in-flight batches) and ends.
        self.queue.closed.set(true);
        self.queue.wake.notify_one();
        timeline::flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryType;

    fn entry(index: u64, term: u64) -> LogEntry {
        LogEntry {
            term: Term(term),
            index: LogIndex(index),
            entry_type: EntryType::Normal,
            payload: vec![index as u8; 100 + index as usize],
        }
    }

    fn batch(
        entries: Vec<LogEntry>,
        truncate_from: Option<u64>,
        hs: Option<HardState>,
    ) -> Rc<WriteBatch> {
        Rc::new(WriteBatch {
            truncate_from: truncate_from.map(LogIndex),
            entries,
            hard_state: hs,
            must_sync: true,
        })
    }

    fn open(dir: &Path) -> (Rc<RefCell<RaftLog>>, RaftState) {
        let config = LogConfig {
            // Small segments, so a group crosses a segment boundary (rotation on the loop's
            // thread, one write + sync per segment).
            segment_size_bytes: 64 << 10,
            ..LogConfig::new(dir)
        };
        let log = RaftLog::open(config).expect("open log");
        let state = RaftState::open(dir).expect("open state");
        (Rc::new(RefCell::new(log)), state)
    }

    fn last_segment_base(view: &LogView) -> LogIndex {
        let paths = view.0.borrow().segment_paths();
        let name = paths.last().and_then(|p| p.file_name()).expect("a segment");
        let digits: String = name
            .to_string_lossy()
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        LogIndex(
            digits
                .parse()
                .expect("segment names carry their base index"),
        )
    }

    /// Batches written from the loop's thread through the append ring are durable, in order, and
    /// visible in the view once their future completed; several queued batches (one group) and a
    /// truncation in the middle keep that order; the term and vote reach the state file; after a
    /// reopen everything acknowledged is there.
    #[test]
    fn batches_become_durable_in_order_through_the_append_ring() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, state) = open(dir.path());
        let view = LogView(Rc::clone(&log));
        let mut durable = DiskDurable::start(log, state).expect("start");
        let voted = HardState {
            term: Term(2),
            vote: Some(NodeId(3)),
            commit: LogIndex(0),
        };
        let base = tokio_uring::start(async {
            // One batch alone, with a vote.
            durable
                .persist(batch(
                    (1..=3).map(|i| entry(i, 1)).collect(),
                    None,
                    Some(voted),
                ))
                .await
                .expect("first batch");
            assert_eq!(view.last_index(), LogIndex(3));
            // Several at once (one group; 700 entries of ~500 B cross the 64 KiB segments),
            // then a truncation of the last ones and new entries of term 2.
            let a = durable.persist(batch((4..=400).map(|i| entry(i, 1)).collect(), None, None));
            let b = durable.persist(batch(
                (401..=700).map(|i| entry(i, 1)).collect(),
                None,
                None,
            ));
            let c = durable.persist(batch(
                (690..=691).map(|i| entry(i, 2)).collect(),
                Some(690),
                None,
            ));
            // Nothing to write (a commit-index change only): completes at once.
            let d = durable.persist(batch(
                vec![],
                None,
                Some(HardState {
                    commit: LogIndex(5),
                    ..voted
                }),
            ));
            assert_eq!(
                view.last_index(),
                LogIndex(3),
                "nothing published before durable"
            );
            a.await.expect("a");
            b.await.expect("b");
            c.await.expect("c");
            d.await.expect("d");
            assert_eq!(view.last_index(), LogIndex(691));
            assert_eq!(view.term(LogIndex(689)), Some(Term(1)));
            assert_eq!(view.term(LogIndex(690)), Some(Term(2)));
            // A truncation at the first index of the open segment deletes its file (the segment
            // before, sealed, becomes the open one), and the next append rotates into a new file
            // under the same name: the write must reach the new file, not the deleted one (a
            // cached descriptor would lose it).
            let base = last_segment_base(&view);
            assert!(base > LogIndex(1) && base <= LogIndex(690), "{base}");
            durable
                .persist(batch(
                    (base.0..=691).map(|i| entry(i, 3)).collect(),
                    Some(base.0),
                    None,
                ))
                .await
                .expect("rewrite after truncation");
            assert_eq!(last_segment_base(&view), base, "the same file name again");
            assert_eq!(view.term(LogIndex(691)), Some(Term(3)));
            base
        });
        drop(durable);
        drop(view);
        let (log, state) = open(dir.path());
        let log = log.borrow();
        assert_eq!(Storage::last_index(&*log), LogIndex(691));
        let all = Storage::entries(&*log, LogIndex(1), LogIndex(692), u64::MAX);
        assert_eq!(all.len(), 691);
        for (i, e) in all.iter().enumerate() {
            let index = i as u64 + 1;
            let want = if index >= base.0 {
                entry(index, 3)
            } else if index >= 690 {
                entry(index, 2)
            } else {
                entry(index, 1)
            };
            assert_eq!(*e, want, "entry {index} after reopening");
        }
        let hs = state.state().hard_state();
        assert_eq!((hs.term, hs.vote), (Term(2), Some(NodeId(3))));
    }
}
