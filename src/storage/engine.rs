//! The durable append engine: the one code path that makes a Raft node's writes durable, used by
//! the node, the benches, the crash and power-loss tests and the simulator alike.
//!
//! A driver (the node's event loop, the simulator) hands over one [`WriteBatch`] per `Ready`
//! (truncate, entries, hard state) through [`Durable::persist`] and gets a future that resolves
//! once the batch is durable. The engine has two halves:
//! - [`Engine`], the handle the driver holds: it queues batches, answers at once for a batch
//!   with nothing to write, and shares the [`RaftLog`] with the core's read view ([`LogView`]);
//! - [`EngineTask`], the future that executes the queued batches. The host runs it beside the
//!   driver on the same thread (the node spawns it on its `LocalSet`; the simulator polls it
//!   itself), so batches are staged, written and published on the driver's thread with no
//!   thread hand-off: the only wake-up is the one the disk's completion needs.
//!
//! All I/O goes through the [`Vfs`](crate::storage::file::Vfs) seam: production files write
//! with io_uring (one `RWF_DSYNC` write per segment touched: a write and the fdatasync of its
//! range in one request, waited on by the runtime's reactor, [`crate::storage::uring`]); the
//! simulated disk ([`crate::storage::file::SimFs`]) runs exactly this code under power loss.
//!
//! # How a group is written
//! Batches queued while a group is being written form the next group (one fdatasync for all of
//! them: group commit under load), up to [`GROUP_BATCHES_MAX`] batches and
//! [`GROUP_PAYLOAD_BYTES_MAX`] payload bytes; only the first batch of a group may truncate.
//! 1. The truncation, if any, runs first and is durable when it returns (synchronous: rare).
//! 2. The newest hard state of the group, if its term or vote changed, is written to the state
//!    file, and the entries of every batch are appended to the log, **in parallel**: both are
//!    in the device's hands at once, each with its own fdatasync. A hard state whose only
//!    change is the commit index is not written at all (the commit index is re-learned from the
//!    leader; an older one on disk is safe).
//! 3. The group completes when both are durable: every batch's future resolves, in order.
//!
//! When the next entry does not fit the open segment, the log's rotation
//! ([`RaftLog::begin_rotation`]) is awaited like an append (issue 18: it used to block the
//! thread for 1-3 ms, tens when the disk is busy): the seal and the next segment's header are
//! written in parallel, then the rename and the directory fsync run off the thread
//! (docs/FORMAT.md, "Segment creation, preallocation and rotation"). Once the rename happened
//! the rest of the group is staged into the new segment and written beside the directory fsync;
//! it is published (and its batches complete) only once both completed. The thread keeps
//! serving the driver meanwhile.
//!
//! Because of 2, a crash can leave the state file's new commit index without the entries it
//! covers. `RaftNode::new` treats a persisted commit index beyond the log as a hint and clamps it
//! (issue 11, finding 2); term and vote are safe in either order (a vote leaves the node only
//! after its batch completed, and `RaftNode::new` adopts a durable entry's higher term without a
//! vote).
//!
//! # Invariants
//! - A batch completes `Ok` only after the fdatasyncs covering its entries and its hard state
//!   completed; batches complete in submission order; entries become visible to the core's log
//!   view only once durable (`RaftLog::publish_staged`).
//! - The log is changed only by the task, never while a borrow of it is held across an `.await`,
//!   and the core reads it only between those changes (one thread, `RefCell`).
//! - A failed write or sync is fatal: its batch fails, every later one fails with
//!   [`EngineError::EarlierFailed`], the log and state file are poisoned. Nothing is retried
//!   (fsyncgate).
//! - A full disk is not a failure: when the log refuses an append (or a reset) with
//!   [`LogError::NoSpace`] it has changed nothing, and the task waits and tries the same step
//!   again, every [`NO_SPACE_RETRY_INTERVAL`] or as soon as a compaction freed a segment file.
//!   Meanwhile the group stays in flight (nothing after it is acknowledged, so nothing
//!   acknowledged can be lost) and [`Durable::no_space`] tells the driver, which refuses new
//!   proposals until the write went through (docs/FORMAT.md, "A full disk").

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

use crate::raft::{HardState, MemStorage, SnapshotId, Storage};
use crate::storage::log::{LogError, RaftLog};
use crate::storage::state::{RaftState, StateError};
use crate::timeline;
use crate::types::{LogEntry, LogIndex, Term};

/// Batches written as one group at most (one fdatasync covers them all).
pub const GROUP_BATCHES_MAX: usize = 256;
/// Payload bytes of one group at most (a group is encoded into one buffer per segment).
pub const GROUP_PAYLOAD_BYTES_MAX: u64 = 8 << 20;
/// How often the task retries a step the log refused for lack of space (sooner when a
/// compaction freed a segment file).
pub const NO_SPACE_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The durable store waits for space ([`Durable::no_space`]): the log's directory and the bytes
/// its next segment needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoSpace {
    pub dir: std::path::PathBuf,
    pub needed_bytes: u64,
}

/// One `Ready`'s writes.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// Before anything else: replace the whole log by an empty one continuing after this
    /// snapshot (a follower installing a leader's snapshot, Raft §7).
    pub reset: Option<SnapshotId>,
    /// Remove every entry with index >= this before appending.
    pub truncate_from: Option<LogIndex>,
    pub entries: Vec<LogEntry>,
    pub hard_state: Option<HardState>,
    /// Whether the batch must be fdatasync'ed before it counts as durable.
    pub must_sync: bool,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.reset.is_none()
            && self.truncate_from.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
    }

    /// Payload bytes of the entries.
    pub fn payload_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.payload.len() as u64).sum()
    }
}

/// A durable write in progress.
pub type PersistFuture<E> = Pin<Box<dyn Future<Output = Result<(), E>>>>;

/// A node's durable log and state as a Ready driver uses them. The core reads the log through
/// `Self::Log`.
pub trait Durable {
    /// The core's read view of the log.
    type Log: Storage;
    type Error: std::error::Error + Send + Sync + 'static;

    /// Starts writing `batch`: truncate, append, save the hard state, then one fdatasync covering
    /// all of it if `batch.must_sync`. The future resolves once the batch is durable.
    ///
    /// Contract: batches become durable in the order they were submitted, and the future must
    /// not block the thread (the driver is single-threaded: a blocking fdatasync would hold back
    /// the messages that should travel in parallel with it). An error is fatal for the node.
    fn persist(&mut self, batch: Rc<WriteBatch>) -> PersistFuture<Self::Error>;

    /// Makes a durable batch visible in the core's log view (`RaftNode::storage_mut`), if the
    /// store did not already (the engine publishes before it completes a batch).
    fn publish(&mut self, log: &mut Self::Log, batch: &WriteBatch);

    /// Drops the log's entries up to and including `upto`, which a durable snapshot covers
    /// (docs/FORMAT.md, `compact_prefix`). Durable when it returns.
    ///
    /// # Errors
    /// I/O errors, fatal for the node as for `persist`.
    fn compact(&mut self, log: &mut Self::Log, upto: LogIndex) -> Result<(), Self::Error>;

    /// `Some` while a write waits for space on a full disk (the store retries it by itself);
    /// the driver refuses new proposals meanwhile. The default never runs out.
    fn no_space(&self) -> Option<NoSpace> {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    State(#[from] StateError),
    /// The task stopped before it completed the batch (the host dropped it).
    #[error("the append engine stopped")]
    TaskGone,
    /// An earlier batch failed (that batch carries the cause); this one was not written.
    #[error("not written: an earlier durable write failed")]
    EarlierFailed,
}

/// The core's read view of the log: the engine's `RaftLog` (mmap reads in production).
#[derive(Clone)]
pub struct LogView(Rc<RefCell<RaftLog>>);

impl LogView {
    /// Runs `f` on the log (reads only; the engine is its only writer).
    pub fn with<R>(&self, f: impl FnOnce(&RaftLog) -> R) -> R {
        f(&self.0.borrow())
    }
}

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

/// One batch waiting for the task.
struct Job {
    batch: Rc<WriteBatch>,
    /// The hard state to write: set only when term or vote changed.
    hard_state: Option<HardState>,
    done: Done,
}

/// Where the task leaves a batch's outcome for its [`PersistFuture`]. Driver and task share one
/// thread, so this is an `Rc` and two cells rather than a channel: completing a batch of a
/// group of 64 costs a store and a wake, no atomics and no allocation beyond the slot itself.
#[derive(Default)]
struct Slot {
    outcome: Cell<Option<Result<(), EngineError>>>,
    /// The waker of the future's last poll that found no outcome.
    waker: Cell<Option<Waker>>,
    /// Set once an outcome was delivered: later deliveries (the `Done` dropped after sending)
    /// change nothing.
    delivered: Cell<bool>,
}

/// The task's end of a [`Slot`]: delivers the outcome once; dropped without one (the task
/// stopped before the batch's turn), it delivers [`EngineError::TaskGone`].
struct Done(Rc<Slot>);

impl Done {
    fn send(self, outcome: Result<(), EngineError>) {
        self.deliver(outcome);
    }

    fn deliver(&self, outcome: Result<(), EngineError>) {
        let slot = &self.0;
        if slot.delivered.replace(true) {
            return;
        }
        slot.outcome.set(Some(outcome));
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.deliver(Err(EngineError::TaskGone));
    }
}

/// The driver's end of a [`Slot`]: resolves once the task delivered the outcome.
struct Completion(Rc<Slot>);

impl Future for Completion {
    type Output = Result<(), EngineError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let slot = &self.0;
        if let Some(outcome) = slot.outcome.take() {
            return Poll::Ready(outcome);
        }
        assert!(
            !slot.delivered.get(),
            "a persist future was polled again after it completed"
        );
        let waker = match slot.waker.take() {
            Some(w) if w.will_wake(cx.waker()) => w,
            _ => cx.waker().clone(),
        };
        slot.waker.set(Some(waker));
        Poll::Pending
    }
}

/// What the handle shares with the task.
#[derive(Default)]
struct Queue {
    jobs: RefCell<VecDeque<Job>>,
    wake: Notify,
    /// Set when a write failed: later batches fail at once.
    failed: Cell<bool>,
    /// Set when the handle is dropped: the task finishes what is queued and ends.
    closed: Cell<bool>,
    /// Groups written (one fdatasync each, two with a hard state) and the entries they carried.
    groups: Cell<u64>,
    grouped_entries: Cell<u64>,
    /// Set while the task waits for space ([`Durable::no_space`]).
    no_space: RefCell<Option<NoSpace>>,
    /// Notified when a compaction may have freed a segment file: the task retries at once.
    space_freed: Notify,
}

impl Queue {
    /// Runs `step` until the log stops refusing it for lack of space, waiting between tries (see
    /// the module docs); every other outcome is returned as it is.
    async fn until_space<T>(
        &self,
        mut step: impl FnMut() -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        loop {
            match step() {
                Err(LogError::NoSpace { dir, needed_bytes }) => {
                    if self.no_space.borrow().is_none() {
                        tracing::error!(
                            dir = %dir.display(),
                            "no space left in {} for the next log segment ({needed_bytes} bytes): \
                             writes wait, client writes are refused until space is freed",
                            dir.display()
                        );
                        *self.no_space.borrow_mut() = Some(NoSpace { dir, needed_bytes });
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(NO_SPACE_RETRY_INTERVAL) => {}
                        _ = self.space_freed.notified() => {}
                    }
                }
                other => {
                    if other.is_ok() {
                        if let Some(s) = self.no_space.borrow_mut().take() {
                            tracing::info!(
                                dir = %s.dir.display(),
                                "space is back in {}: writes resume",
                                s.dir.display()
                            );
                        }
                    }
                    return other;
                }
            }
        }
    }
}

/// The handle a driver holds: see the module docs.
pub struct Engine {
    log: Rc<RefCell<RaftLog>>,
    queue: Rc<Queue>,
    /// Term and vote of the last hard state queued (or on disk at start): a batch that changes
    /// neither and carries no log change has nothing to write and completes without the task.
    submitted: HardState,
}

/// The future that executes the queued batches; the host must run it (see the module docs).
pub struct EngineTask {
    log: Rc<RefCell<RaftLog>>,
    state: RaftState,
    queue: Rc<Queue>,
}

impl Engine {
    /// The engine over an open log and state file: the handle, the core's view of the log, and
    /// the task to run beside the driver.
    pub fn new(log: RaftLog, state: RaftState) -> (Engine, LogView, EngineTask) {
        let log = Rc::new(RefCell::new(log));
        let queue = Rc::new(Queue::default());
        let engine = Engine {
            log: Rc::clone(&log),
            queue: Rc::clone(&queue),
            submitted: state.state().hard_state(),
        };
        let task = EngineTask {
            log: Rc::clone(&log),
            state,
            queue,
        };
        (engine, LogView(log), task)
    }

    /// Another read view of the engine's log.
    pub fn view(&self) -> LogView {
        LogView(Rc::clone(&self.log))
    }

    /// Groups written since start (one write + fdatasync each) and the entries they carried:
    /// their ratio is the group commit's average batch.
    pub fn group_stats(&self) -> (u64, u64) {
        (self.queue.groups.get(), self.queue.grouped_entries.get())
    }

    /// Compacts the log up to `upto` now, on the caller's thread (`RaftLog::compact_prefix`):
    /// safe beside the task's appends, because compaction only removes whole segments at or
    /// below `upto <= last_index()` and the task only writes at the end. For benches that compact
    /// behind the appends, as a node that snapshots does.
    ///
    /// # Errors
    /// As `RaftLog::compact_prefix`.
    pub fn compact_prefix(&self, upto: LogIndex) -> Result<(), LogError> {
        self.log.borrow_mut().compact_prefix(upto)?;
        // A segment file may have gone to the recycling pool (or been deleted): a write waiting
        // for space tries again now.
        if self.queue.no_space.borrow().is_some() {
            self.queue.space_freed.notify_one();
        }
        Ok(())
    }

    /// `Some` while the task waits for space (see the module docs).
    pub fn no_space(&self) -> Option<NoSpace> {
        self.queue.no_space.borrow().clone()
    }
}

impl Durable for Engine {
    type Log = LogView;
    type Error = EngineError;

    fn compact(&mut self, _log: &mut LogView, upto: LogIndex) -> Result<(), EngineError> {
        Ok(self.compact_prefix(upto)?)
    }

    fn persist(&mut self, batch: Rc<WriteBatch>) -> PersistFuture<EngineError> {
        let changes_vote = batch
            .hard_state
            .is_some_and(|hs| hs.term != self.submitted.term || hs.vote != self.submitted.vote);
        if batch.reset.is_none()
            && batch.truncate_from.is_none()
            && batch.entries.is_empty()
            && !changes_vote
        {
            // A commit-index-only change (every heartbeat and commit notice): not written (see
            // the module docs). The driver still completes it after the earlier batches.
            return Box::pin(std::future::ready(Ok(())));
        }
        if self.queue.failed.get() {
            return Box::pin(std::future::ready(Err(EngineError::EarlierFailed)));
        }
        let hard_state = batch.hard_state.filter(|_| changes_vote);
        if let Some(hs) = hard_state {
            self.submitted = hs;
        }
        timeline::mark(
            "persist_submit",
            batch.entries.last().map_or(0, |e| e.index.0),
        );
        let slot = Rc::new(Slot::default());
        self.queue.jobs.borrow_mut().push_back(Job {
            batch,
            hard_state,
            done: Done(Rc::clone(&slot)),
        });
        self.queue.wake.notify_one();
        Box::pin(Completion(slot))
    }

    fn publish(&mut self, _log: &mut LogView, _batch: &WriteBatch) {
        // The task published into the shared RaftLog before it completed the batch.
    }

    fn no_space(&self) -> Option<NoSpace> {
        Engine::no_space(self)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // The driver is done with the store: the node is stopping. The task finishes what is
        // queued (nothing: the driver waited for its in-flight batches) and ends.
        self.queue.closed.set(true);
        self.queue.wake.notify_one();
        timeline::flush();
    }
}

impl EngineTask {
    /// Executes batches until the [`Engine`] is dropped (or a write fails).
    pub async fn run(mut self) {
        loop {
            let group = self.take_group();
            if group.is_empty() {
                if self.queue.closed.get() {
                    break;
                }
                // A `notify_one` before this wait leaves a permit: no wake-up is lost.
                self.queue.wake.notified().await;
                continue;
            }
            let started = std::time::Instant::now();
            match self.write_group(&group).await {
                Ok(()) => {
                    self.queue.groups.set(self.queue.groups.get() + 1);
                    let entries: usize = group.iter().map(|j| j.batch.entries.len()).sum();
                    // Once per group, not per entry (see crate::metrics).
                    crate::metrics::with_current(|m| {
                        m.group_write_seconds
                            .observe(started.elapsed().as_secs_f64());
                        if entries > 0 {
                            m.group_commit_entries.observe(entries as f64);
                        }
                    });
                    self.queue
                        .grouped_entries
                        .set(self.queue.grouped_entries.get() + entries as u64);
                    for job in group {
                        job.done.send(Ok(()));
                    }
                    timeline::mark("outcomes_sent", entries as u64);
                }
                Err(e) => {
                    self.queue.failed.set(true);
                    let mut jobs = group.into_iter();
                    if let Some(first) = jobs.next() {
                        first.done.send(Err(e));
                    }
                    let queued: Vec<Job> = self.queue.jobs.borrow_mut().drain(..).collect();
                    for job in jobs.chain(queued) {
                        job.done.send(Err(EngineError::EarlierFailed));
                    }
                    break;
                }
            }
        }
        // No registration with this runtime's reactor may outlive the task.
        self.log.borrow().release_io();
        self.state.release_io();
    }

    /// The batches of the next group: the oldest queued batch and the ones after it that do not
    /// truncate or reset (either must come first in its group), within the group bounds.
    fn take_group(&self) -> Vec<Job> {
        let mut jobs = self.queue.jobs.borrow_mut();
        let mut group: Vec<Job> = Vec::new();
        let mut bytes = 0u64;
        while let Some(next) = jobs.front() {
            let next_bytes = next.batch.payload_bytes();
            let fits = group.is_empty()
                || (next.batch.truncate_from.is_none()
                    && next.batch.reset.is_none()
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

    /// Steps 1-3 of the module docs for one group; returns when all of it is durable.
    async fn write_group(&mut self, group: &[Job]) -> Result<(), EngineError> {
        if let Some(s) = group[0].batch.reset {
            // Rarer still (a follower installing a snapshot): synchronous.
            let log = &self.log;
            self.queue
                .until_space(|| log.borrow_mut().reset(s.index, s.term))
                .await?;
        }
        if let Some(from) = group[0].batch.truncate_from {
            // Rare (a follower whose suffix conflicts with the leader's): synchronous.
            self.log.borrow_mut().truncate_suffix(from)?;
        }
        let hard_state = group.iter().rev().find_map(|j| j.hard_state);
        let state = &mut self.state;
        let save = async {
            match hard_state {
                Some(hs) => state.save_hard_state_async(hs).await,
                None => Ok(()),
            }
        };
        // The state file's write is submitted first (it is one small write), then the log's.
        let (saved, appended) = tokio::join!(save, append(&self.log, &self.queue, group));
        appended?;
        saved?;
        Ok(())
    }
}

/// Appends the entries of every batch of `group` durably, one staged write + fdatasync per
/// segment they touch, and publishes each part once it is durable. A rotation refused for lack of
/// space is retried until it succeeds ([`Queue::until_space`]); the parts written before it stay
/// published. The entries are encoded straight from the batches (never copied into one `Vec`
/// first: for 64 KiB entries that copy was a third of the engine's CPU per entry).
async fn append(log: &Rc<RefCell<RaftLog>>, queue: &Queue, group: &[Job]) -> Result<(), LogError> {
    let all = || group.iter().flat_map(|j| j.batch.entries.iter());
    let Some(last) = group.iter().rev().find_map(|j| j.batch.entries.last()) else {
        return Ok(());
    };
    let last = last.index.0;
    let total: usize = group.iter().map(|j| j.batch.entries.len()).sum();
    let mut done = 0;
    timeline::mark("write_start", last);
    log.borrow().check_append_iter(all())?;
    while done < total {
        // A rotation if the next entry does not fit the open segment (rare), or a wait for
        // space to make one. Its I/O is awaited like the appends', so the thread keeps serving
        // meanwhile (issue 18: 1-3 ms, tens when the disk is busy).
        let next = all().nth(done).expect("done < total");
        let rotation = queue
            .until_space(|| log.borrow_mut().begin_rotation(next))
            .await?;
        // The directory fsync of a rotation's rename runs beside the first write into the new
        // segment; that write's entries are published only once both completed.
        let mut dir_sync = None;
        if let Some(rotation) = rotation {
            let written = rotation.write().await.map(|sync| dir_sync = Some(sync));
            log.borrow_mut().finish_rotation(rotation, written)?;
        }
        let mut staged = queue
            .until_space(|| log.borrow_mut().stage_append_iter(all().skip(done)))
            .await?;
        let (file, offset) = log.borrow().staged_target();
        let path = file.path().to_path_buf();
        let write = file.start_durable_write(offset, staged.take_frames());
        let ((written, frames), synced) = match dir_sync {
            Some(sync) => tokio::join!(write, sync),
            None => (write.await, Ok(())),
        };
        staged.put_frames(frames);
        let written = written
            .map_err(|e| LogError::Io {
                op: "append write + fdatasync",
                path,
                source: std::sync::Arc::new(e),
            })
            .and(synced);
        done += staged.entries;
        log.borrow_mut().publish_staged(staged, written)?;
    }
    timeline::mark("write_done", last);
    Ok(())
}

/// An in-memory [`Durable`] over the core's [`MemStorage`], for in-process clusters in tests.
///
/// Nothing survives the process: "durable" means "applied to the in-memory log". Every write
/// completes at the next poll, in submission order, so it exercises a driver's ordering without
/// a disk. Production nodes and the simulator use [`Engine`].
#[derive(Debug, Default)]
pub struct MemDurable {
    pub hard_state: HardState,
    pub batches: u64,
}

impl Durable for MemDurable {
    type Log = MemStorage;
    type Error = std::convert::Infallible;

    fn persist(&mut self, batch: Rc<WriteBatch>) -> PersistFuture<Self::Error> {
        if let Some(hs) = batch.hard_state {
            self.hard_state = hs;
        }
        self.batches += 1;
        Box::pin(std::future::ready(Ok(())))
    }

    fn compact(&mut self, log: &mut MemStorage, upto: LogIndex) -> Result<(), Self::Error> {
        log.compact_prefix(upto);
        Ok(())
    }

    fn publish(&mut self, log: &mut MemStorage, batch: &WriteBatch) {
        if let Some(s) = batch.reset {
            *log = MemStorage {
                snapshot_index: s.index,
                snapshot_term: s.term,
                entries: Vec::new(),
            };
        }
        if let Some(from) = batch.truncate_from {
            log.truncate_suffix(from);
        }
        log.append(&batch.entries);
    }
}
