//! Group commit: `LogWriter`, a cloneable handle that owns the [`RaftLog`].
//!
//! Appenders put requests into one bounded queue and wait on a completion (blocking, or as a
//! `Future` that needs no particular runtime). At most one thread at a time *leads*: it takes
//! every request already queued (up to `batch_entries_max` entries and `batch_bytes_max` payload
//! bytes), writes them as ONE durable append (one io_uring submission: the write linked to one
//! fdatasync), and completes every waiter of the batch. Requests that arrive while a write is in
//! flight queue up and form the next batch, so under load one fdatasync serves many appenders.
//!
//! Who leads: a blocking caller ([`LogWriter::append`], [`LogWriter::append_new`], truncate,
//! compact) that finds no write in flight leads itself, so a lone appender pays no thread
//! hand-off (its latency is its write and fdatasync); once its own request is done it hands any
//! remaining queue to the background thread ("log-writer"), which also leads for the `*_async`
//! submitters that must never block on I/O (async tasks). raft-engine's write barrier works the
//! same way (the first writer of a group writes for the group).
//!
//! Closed-loop appenders come back one by one as their completions wake them; a leader that
//! drained the queue at the first arrival would alternate small and large batches (two syncs per
//! append). So a leader whose queue is shorter than its previous batch waits while it still grows,
//! for at most about one batch write ([`gather`]). Waiters that are futures are completed by the leader (one
//! lock and one wake each); threads asleep in [`Pending::wait`] of a big batch are woken by the
//! "log-completer" thread so their context switches overlap the next write.
//!
//! The write lock on the log is held only to stage a batch (encode, rotate) and to publish it;
//! during the write and its fdatasync readers ([`LogWriter::read`]) proceed.
//!
//! # Invariants
//! - Requests are executed in queue order; a truncation or compaction first flushes the appends
//!   queued before it. At most one leader at a time (`leader_active`).
//! - A waiter is completed with `Ok` only after the fdatasync covering its entries completed.
//! - A request that is invalid on its own (not contiguous, term regression, entry too large) fails
//!   alone; a write or sync failure fails the whole batch and poisons the log, so every later
//!   request fails with [`LogError::Poisoned`].

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::storage::log::{check_continues, LogError, RaftLog};
use crate::types::{EntryType, LogEntry, LogIndex, Term};

enum Op {
    /// Entries with their indexes already assigned (the consensus core's appends).
    Append(Vec<LogEntry>),
    /// Payloads the writer assigns the next indexes to (a leader's proposals, the bench).
    AppendNew {
        term: Term,
        entries: Vec<(EntryType, Vec<u8>)>,
    },
    TruncateSuffix(LogIndex),
    CompactPrefix(LogIndex),
    Reset(LogIndex, Term),
}

impl Op {
    fn cost(&self) -> (usize, u64) {
        match self {
            Op::Append(v) => (v.len(), v.iter().map(|e| e.payload.len() as u64).sum()),
            Op::AppendNew { entries, .. } => (
                entries.len(),
                entries.iter().map(|e| e.1.len() as u64).sum(),
            ),
            _ => (0, 0),
        }
    }
}

#[derive(Default)]
struct CompletionState {
    result: Option<Result<LogIndex, LogError>>,
    waker: Option<Waker>,
    /// Set by the first `complete`; later ones are ignored.
    completed: bool,
    /// A thread sleeps in `wait` (waking it costs a futex wake and a context switch).
    blocked: bool,
}

/// A oneshot: the writer thread fills it once, the requester waits (blocking or async).
#[derive(Default)]
struct Completion {
    state: Mutex<CompletionState>,
    ready: Condvar,
}

impl Completion {
    fn complete(&self, r: Result<LogIndex, LogError>) {
        // Completing never hands back the result.
        let _ = self.complete_unless_blocked(r, false);
    }

    /// Completes unless `defer_blocked` and a thread sleeps in `wait`: then the result is
    /// handed back for the completer thread.
    fn complete_unless_blocked(
        &self,
        r: Result<LogIndex, LogError>,
        defer_blocked: bool,
    ) -> Option<Result<LogIndex, LogError>> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.completed {
            return None;
        }
        if defer_blocked && st.blocked {
            return Some(r);
        }
        st.completed = true;
        st.result = Some(r);
        if let Some(w) = st.waker.take() {
            w.wake();
        }
        if st.blocked {
            self.ready.notify_all();
        }
        None
    }

    fn is_complete(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .completed
    }

    fn wait(&self) -> Result<LogIndex, LogError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = st.result.take() {
                return r;
            }
            st.blocked = true;
            st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

struct Request {
    op: Op,
    done: Waiter,
}

/// The writer's side of a completion. Dropping it uncompleted (a leader that panicked mid-batch)
/// fails the waiter instead of leaving it blocked forever.
struct Waiter(Arc<Completion>);

impl Waiter {
    fn complete(&self, r: Result<LogIndex, LogError>) {
        self.0.complete(r);
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.0.complete(Err(LogError::WriterStopped));
    }
}

/// Completes when the request's durable write (or truncation, compaction) is done.
/// Resolves to the log's resulting last index for truncations and compactions, and to the last
/// index of the request's entries for appends.
pub struct Pending {
    done: Arc<Completion>,
}

impl Pending {
    /// Blocks until the request completed.
    pub fn wait(self) -> Result<LogIndex, LogError> {
        self.done.wait()
    }
}

impl Future for Pending {
    type Output = Result<LogIndex, LogError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.done.state.lock().unwrap_or_else(|e| e.into_inner());
        match st.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                st.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// A batch's waiters and what to tell each.
type Completions = Vec<(Waiter, Result<LogIndex, LogError>)>;

/// Waiters completed inline by the leader up to this many; a bigger batch's are handed to the
/// completer thread, so that waking them (one futex wake and one context switch each, on a
/// 2-core machine) overlaps the next batch's write instead of delaying it.
const COMPLETE_INLINE_MAX: usize = 8;

/// What appenders and the background leader share.
struct Shared {
    queue: Mutex<QueueState>,
    /// Wakes the background leader: requests are queued and no leader is active, or shutdown.
    work: Condvar,
    /// Wakes submitters waiting for room in the queue.
    room: Condvar,
    log: RwLock<RaftLog>,
    /// Hands big batches' completions to the completer thread (see `flush`).
    completer: Mutex<Option<Sender<Completions>>>,
    /// `queue.requests.len()` as of the last change (written under the queue lock): lets a
    /// gathering leader watch arrivals without taking the lock the arrivals need.
    queued: AtomicUsize,
    /// Duration of the last durable batch write (write + fdatasync), in ns: bounds how long a
    /// leader gathers stragglers ([`gather`]).
    last_write_ns: AtomicU64,
    /// Durable batch writes and the entries they carried, since spawn ([`LogWriter::batch_stats`]).
    batches: AtomicU64,
    batched_entries: AtomicU64,
    entries_max: usize,
    bytes_max: u64,
    queue_max: usize,
}

#[derive(Default)]
struct QueueState {
    requests: VecDeque<Request>,
    /// A thread is draining the queue and writing (at most one: the log has one writer).
    leader_active: bool,
    shutdown: bool,
    /// Requests in the batch the last leader took: the appenders likely to come back next.
    last_batch_requests: usize,
}

fn lock_queue(shared: &Shared) -> MutexGuard<'_, QueueState> {
    shared.queue.lock().unwrap_or_else(|e| e.into_inner())
}

/// Leads: drains the queue into batches and executes them until the queue is empty, or (for a
/// caller-led round, `until` set) until the caller's own request completed, then hands the rest
/// to the background leader. The guard's `leader_active` must have been set by the caller.
fn lead<'a>(shared: &'a Shared, mut q: MutexGuard<'a, QueueState>, until: Option<&Completion>) {
    loop {
        let done_own = until.is_some_and(Completion::is_complete);
        if q.requests.is_empty() || done_own {
            q.leader_active = false;
            if !q.requests.is_empty() {
                // Do not keep a caller hostage to other appenders' batches.
                shared.work.notify_one();
            }
            return;
        }
        if q.requests.len() < q.last_batch_requests {
            q = gather(shared, q);
        }
        let (mut n, mut b) = (0usize, 0u64);
        let mut batch = Vec::new();
        while let Some(r) = q.requests.front() {
            let (rn, rb) = r.op.cost();
            if !batch.is_empty() && (n + rn > shared.entries_max || b + rb > shared.bytes_max) {
                break;
            }
            n += rn;
            b += rb;
            batch.extend(q.requests.pop_front());
        }
        q.last_batch_requests = batch.len();
        shared.queued.store(q.requests.len(), Ordering::Relaxed);
        shared.room.notify_all();
        drop(q);
        let unwinding = PanicGuard(shared);
        execute(shared, batch);
        std::mem::forget(unwinding);
        q = lock_queue(shared);
    }
}

/// Shortest and longest bound on how long a leader waits for the previous batch's appenders to
/// come back ([`gather`]); in between, the bound is the last batch write's duration.
const GATHER_MAX_FLOOR: Duration = Duration::from_micros(60);
const GATHER_MAX_CEILING: Duration = Duration::from_micros(500);
/// A gathering leader stops as soon as the queue did not grow for this long.
const GATHER_IDLE: Duration = Duration::from_micros(30);

/// Waits (briefly, yielding the CPU) while the queue is shorter than the previous batch and still
/// growing, then returns so the leader drains it.
///
/// Why: closed-loop appenders (each issuing its next append when the previous one is durable)
/// come back one by one as their completions wake them. A leader that drained the queue as soon
/// as the first of them arrived would write a batch of a few, while the rest queue behind its
/// fdatasync: batches alternate small and large and every appender pays about two syncs per
/// append. Waiting for the stragglers keeps one fdatasync per round of appenders. A lone
/// appender (previous batch of one) never waits, and the wait stops at the first pause in
/// arrivals, so an appender that does not come back costs at most `GATHER_IDLE`.
///
/// The wait is bounded by the last batch write's duration (within
/// [`GATHER_MAX_FLOOR`, `GATHER_MAX_CEILING`]): a straggler left behind waits a whole write
/// for the next batch, so waiting up to that long for it never costs more than it saves. A
/// fixed short bound fragmented batches whenever re-submitting a round took longer than it (64
/// appends re-issued by one task take ~100 µs on this machine, the bound was 60 µs).
fn gather<'a>(shared: &'a Shared, q: MutexGuard<'a, QueueState>) -> MutexGuard<'a, QueueState> {
    let target = q.last_batch_requests;
    let mut seen = q.requests.len();
    // Watch the length hint, not the lock: the returning appenders need the lock to queue.
    drop(q);
    let gather_max = Duration::from_nanos(shared.last_write_ns.load(Ordering::Relaxed))
        .clamp(GATHER_MAX_FLOOR, GATHER_MAX_CEILING);
    let start = Instant::now();
    let mut grew_at = start;
    let mut polls = 0u32;
    loop {
        let now = Instant::now();
        if now.duration_since(start) >= gather_max || now.duration_since(grew_at) >= GATHER_IDLE {
            break;
        }
        let n = shared.queued.load(Ordering::Relaxed);
        if n >= target {
            break;
        }
        if n > seen {
            seen = n;
            grew_at = now;
        }
        polls += 1;
        if polls.is_multiple_of(8) {
            // The appenders (or the thread completing their waiters) may need this core on a
            // small machine.
            std::thread::yield_now();
        } else {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
        }
    }
    lock_queue(shared)
}

/// Armed while a leader executes a batch: if that panics (a broken invariant), the waiters must
/// not hang forever behind a leader that is gone. Everything queued fails with
/// [`LogError::WriterStopped`] and no one leads again.
struct PanicGuard<'a>(&'a Shared);

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        let mut q = lock_queue(self.0);
        q.shutdown = true;
        for r in q.requests.drain(..) {
            r.done.complete(Err(LogError::WriterStopped));
        }
        self.0.queued.store(0, Ordering::Relaxed);
        self.0.room.notify_all();
        self.0.work.notify_all();
    }
}

/// The background leader: leads whenever requests wait and no caller leads.
fn background(shared: &Shared) {
    let mut q = lock_queue(shared);
    loop {
        if !q.requests.is_empty() && !q.leader_active {
            q.leader_active = true;
            lead(shared, q, None);
            q = lock_queue(shared);
            continue;
        }
        if q.shutdown && q.requests.is_empty() {
            return;
        }
        q = shared.work.wait(q).unwrap_or_else(|e| e.into_inner());
    }
}

struct Inner {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    completer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The background leader finishes what is queued, then stops; then the completer.
        lock_queue(&self.shared).shutdown = true;
        self.shared.work.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.shared
            .completer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = self.completer.take() {
            let _ = t.join();
        }
    }
}

/// The group-commit handle (Clone + Send + Sync). Stops when the last handle drops.
///
/// Two ways in: [`LogWriter::append`] and friends let the calling thread lead a batch when no
/// write is in flight (a lone appender pays no thread hand-off: its latency is the write and
/// fdatasync), and otherwise queue behind the write in flight; the `*_async` variants never do
/// I/O on the caller's thread (for async tasks) and leave the batch to a background thread.
#[derive(Clone)]
pub struct LogWriter {
    inner: Arc<Inner>,
}

impl LogWriter {
    /// Takes ownership of `log` and starts the background leader thread.
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn spawn(log: RaftLog) -> std::io::Result<LogWriter> {
        let config = log.config().clone();
        let (completions_tx, completions_rx) = channel::<Completions>();
        let completer = std::thread::Builder::new()
            .name("log-completer".into())
            .spawn(move || {
                for batch in completions_rx {
                    for (waiter, r) in batch {
                        waiter.complete(r);
                    }
                }
            })?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(QueueState::default()),
            work: Condvar::new(),
            room: Condvar::new(),
            log: RwLock::new(log),
            completer: Mutex::new(Some(completions_tx)),
            queued: AtomicUsize::new(0),
            last_write_ns: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batched_entries: AtomicU64::new(0),
            entries_max: config.batch_entries_max,
            bytes_max: config.batch_bytes_max,
            queue_max: config.queue_requests_max,
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || background(&thread_shared))?;
        Ok(LogWriter {
            inner: Arc::new(Inner {
                shared,
                thread: Some(thread),
                completer: Some(completer),
            }),
        })
    }

    fn submit(&self, op: Op, caller_leads: bool) -> Pending {
        let shared = &self.inner.shared;
        let done = Arc::new(Completion::default());
        let mut q = lock_queue(shared);
        while q.requests.len() >= shared.queue_max && !q.shutdown {
            q = shared.room.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        if q.shutdown {
            done.complete(Err(LogError::WriterStopped));
            return Pending { done };
        }
        q.requests.push_back(Request {
            op,
            done: Waiter(Arc::clone(&done)),
        });
        shared.queued.store(q.requests.len(), Ordering::Relaxed);
        if !q.leader_active {
            if caller_leads {
                q.leader_active = true;
                lead(shared, q, Some(&done));
            } else {
                shared.work.notify_one();
            }
        }
        Pending { done }
    }

    /// Appends entries whose indexes are assigned (they must continue the log in queue order).
    /// The returned [`Pending`] resolves to the last index once they are durable. The calling
    /// thread may write the batch itself (see the type's docs).
    pub fn append(&self, entries: Vec<LogEntry>) -> Pending {
        self.submit(Op::Append(entries), true)
    }

    /// As [`LogWriter::append`], never doing I/O on the caller's thread.
    pub fn append_async(&self, entries: Vec<LogEntry>) -> Pending {
        self.submit(Op::Append(entries), false)
    }

    /// Appends payloads; the writer assigns them the next indexes. Resolves to the last assigned
    /// index once they are durable (the first is `last - entries.len() + 1`).
    pub fn append_new(&self, term: Term, entries: Vec<(EntryType, Vec<u8>)>) -> Pending {
        self.submit(Op::AppendNew { term, entries }, true)
    }

    /// As [`LogWriter::append_new`], never doing I/O on the caller's thread.
    pub fn append_new_async(&self, term: Term, entries: Vec<(EntryType, Vec<u8>)>) -> Pending {
        self.submit(Op::AppendNew { term, entries }, false)
    }

    /// A [`RaftLog::truncate_suffix`] after everything queued before it.
    pub fn truncate_suffix(&self, from: LogIndex) -> Pending {
        self.submit(Op::TruncateSuffix(from), true)
    }

    /// A [`RaftLog::compact_prefix`] after everything queued before it.
    pub fn compact_prefix(&self, upto: LogIndex) -> Pending {
        self.submit(Op::CompactPrefix(upto), true)
    }

    /// A [`RaftLog::reset`] (snapshot installation) after everything queued before it.
    pub fn reset(&self, index: LogIndex, term: Term) -> Pending {
        self.submit(Op::Reset(index, term), true)
    }

    /// Durable batch writes made since spawn and the entries they carried: their ratio is the
    /// group commit's average batch (entries per fdatasync).
    pub fn batch_stats(&self) -> (u64, u64) {
        let s = &self.inner.shared;
        (
            s.batches.load(Ordering::Relaxed),
            s.batched_entries.load(Ordering::Relaxed),
        )
    }

    /// Read access to the log. Waits only while a batch is staged or published, not during its
    /// write and fdatasync. Do not hold the guard across a call that writes (`append`,
    /// `truncate_suffix`, ... or waiting on a `Pending`): the writer needs the lock to publish.
    pub fn read(&self) -> RwLockReadGuard<'_, RaftLog> {
        self.inner
            .shared
            .log
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }
}

fn write_lock(log: &RwLock<RaftLog>) -> RwLockWriteGuard<'_, RaftLog> {
    log.write().unwrap_or_else(|e| e.into_inner())
}

/// One durable append of `batch` (already checked), holding the write lock only to stage and to
/// publish: during the write and its fdatasync readers keep reading (the leader reads older
/// entries for its followers while its own write is in flight, Raft thesis §10.2.1).
fn append_batch(log: &RwLock<RaftLog>, mut batch: &[LogEntry]) -> Result<(), LogError> {
    while !batch.is_empty() {
        let staged = write_lock(log).stage_append(batch)?;
        let written = log
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .write_staged(&staged);
        batch = &batch[staged.entries..];
        write_lock(log).publish_staged(staged, written)?;
    }
    Ok(())
}

/// Runs one drained queue: consecutive appends become one durable batch.
/// The requests of one `execute` call admitted into the batch so far, and where the log will end
/// once that batch is written.
struct Admitted {
    payload_max: usize,
    next: LogIndex,
    term: Term,
    batch: Vec<LogEntry>,
    waiters: Vec<(Waiter, LogIndex)>,
}

/// Admits one request's entries into the batch, or completes it at once: with an error if they do
/// not continue the log (checked per request, so one bad request does not fail the others), or
/// with the current last index if it carries no entries.
fn admit(entries: Vec<LogEntry>, done: Waiter, a: &mut Admitted) {
    if let Err(e) = check_continues(&entries, a.next, a.term, a.payload_max) {
        done.complete(Err(e));
        return;
    }
    let Some(last) = entries.last() else {
        done.complete(Ok(a.next.prev()));
        return;
    };
    a.next = last.index.next();
    a.term = last.term;
    a.waiters.push((done, last.index));
    a.batch.extend(entries);
}

fn execute(shared: &Shared, queue: Vec<Request>) {
    let log = &shared.log;
    let mut admitted = {
        let l = write_lock(log);
        Admitted {
            payload_max: l.config().entry_payload_max_bytes(),
            next: l.last_index().next(),
            term: l.last_term(),
            batch: Vec::new(),
            waiters: Vec::new(),
        }
    };

    fn flush(shared: &Shared, batch: &mut Vec<LogEntry>, waiters: &mut Vec<(Waiter, LogIndex)>) {
        let log = &shared.log;
        let r = if batch.is_empty() {
            Ok(())
        } else {
            // The guard must be gone before append_batch takes the lock again.
            let checked = write_lock(log).check_append(batch);
            let started = Instant::now();
            let r = checked.and_then(|()| append_batch(log, batch));
            shared
                .last_write_ns
                .store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            shared.batches.fetch_add(1, Ordering::Relaxed);
            shared
                .batched_entries
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            r
        };
        batch.clear();
        // Waiters that are futures (or have not started waiting) are completed here: that is
        // one lock and at most one wake of the polling task each. Threads asleep in `wait` cost
        // a futex wake and a context switch each: many of them go to the completer thread.
        let completions: Completions = waiters
            .drain(..)
            .filter_map(|(done, last)| {
                let back = done
                    .0
                    .complete_unless_blocked(r.clone().map(|()| last), true)?;
                Some((done, back))
            })
            .collect();
        let completions = if completions.len() > COMPLETE_INLINE_MAX {
            let completer = shared.completer.lock().unwrap_or_else(|e| e.into_inner());
            match completer.as_ref() {
                Some(tx) => match tx.send(completions) {
                    Ok(()) => return,
                    // The completer is gone: the waiters come back and are completed here.
                    Err(back) => back.0,
                },
                None => completions,
            }
        } else {
            completions
        };
        for (done, r) in completions {
            done.complete(r);
        }
    }

    for req in queue {
        match req.op {
            Op::Append(entries) => admit(entries, req.done, &mut admitted),
            Op::AppendNew {
                term: t,
                entries: payloads,
            } => {
                let entries: Vec<LogEntry> = payloads
                    .into_iter()
                    .enumerate()
                    .map(|(i, (entry_type, payload))| LogEntry {
                        term: t,
                        index: LogIndex(admitted.next.0 + i as u64),
                        entry_type,
                        payload,
                    })
                    .collect();
                admit(entries, req.done, &mut admitted);
            }
            Op::TruncateSuffix(from) => {
                flush(shared, &mut admitted.batch, &mut admitted.waiters);
                let mut l = write_lock(log);
                let r = l.truncate_suffix(from).map(|()| l.last_index());
                req.done.complete(r);
                admitted.next = l.last_index().next();
                admitted.term = l.last_term();
            }
            Op::CompactPrefix(upto) => {
                flush(shared, &mut admitted.batch, &mut admitted.waiters);
                let mut l = write_lock(log);
                let r = l.compact_prefix(upto).map(|()| l.last_index());
                req.done.complete(r);
                admitted.next = l.last_index().next();
                admitted.term = l.last_term();
            }
            Op::Reset(index, t) => {
                flush(shared, &mut admitted.batch, &mut admitted.waiters);
                let mut l = write_lock(log);
                let r = l.reset(index, t).map(|()| l.last_index());
                req.done.complete(r);
                admitted.next = l.last_index().next();
                admitted.term = l.last_term();
            }
        }
    }
    flush(shared, &mut admitted.batch, &mut admitted.waiters);
}
