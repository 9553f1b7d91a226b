//! Group commit: `LogWriter`, a cloneable handle to a thread that owns the [`RaftLog`].
//!
//! Appenders send requests over a bounded std channel and wait on a completion (blocking, or as a
//! `Future` that needs no particular runtime). The writer thread takes every request already
//! queued (up to `batch_entries_max` entries and `batch_bytes_max` payload bytes), writes them as
//! ONE durable append (one io_uring submission: the writes linked to one fdatasync), and then
//! completes every waiter of the batch. Appends that arrive while a sync is in flight queue up
//! and join the next batch, so under load one fdatasync serves many appenders.
//!
//! # Invariants
//! - Requests are executed in queue order; a truncation or compaction first flushes the appends
//!   queued before it.
//! - A waiter is completed with `Ok` only after the fdatasync covering its entries completed.
//! - A request that is invalid on its own (not contiguous, term regression, entry too large) fails
//!   alone; a write or sync failure fails the whole batch and poisons the log, so every later
//!   request fails with [`LogError::Poisoned`].

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;

use crate::storage::log::{LogError, RaftLog};
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
}

/// A oneshot: the writer thread fills it once, the requester waits (blocking or async).
#[derive(Default)]
struct Completion {
    state: Mutex<CompletionState>,
    ready: Condvar,
}

impl Completion {
    fn complete(&self, r: Result<LogIndex, LogError>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.result = Some(r);
        if let Some(w) = st.waker.take() {
            w.wake();
        }
        self.ready.notify_all();
    }

    fn wait(&self) -> Result<LogIndex, LogError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = st.result.take() {
                return r;
            }
            st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

struct Request {
    op: Op,
    done: Arc<Completion>,
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

struct Inner {
    tx: Option<SyncSender<Request>>,
    log: Arc<RwLock<RaftLog>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the thread after it finished what is queued.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The group-commit handle (Clone + Send + Sync). The thread stops when the last handle drops.
#[derive(Clone)]
pub struct LogWriter {
    inner: Arc<Inner>,
}

impl LogWriter {
    /// Starts the writer thread, which takes ownership of `log`.
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn spawn(log: RaftLog) -> std::io::Result<LogWriter> {
        let config = log.config().clone();
        let (tx, rx) = sync_channel(config.queue_requests_max);
        let log = Arc::new(RwLock::new(log));
        let thread_log = Arc::clone(&log);
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                run(
                    &thread_log,
                    &rx,
                    config.batch_entries_max,
                    config.batch_bytes_max,
                )
            })?;
        Ok(LogWriter {
            inner: Arc::new(Inner {
                tx: Some(tx),
                log,
                thread: Some(thread),
            }),
        })
    }

    fn submit(&self, op: Op) -> Pending {
        let done = Arc::new(Completion::default());
        let sent = match &self.inner.tx {
            Some(tx) => tx
                .send(Request {
                    op,
                    done: Arc::clone(&done),
                })
                .is_ok(),
            None => false,
        };
        if !sent {
            done.complete(Err(LogError::WriterStopped));
        }
        Pending { done }
    }

    /// Queues entries whose indexes are assigned (they must continue the log in queue order).
    /// The returned [`Pending`] resolves to the last index once they are durable.
    pub fn append(&self, entries: Vec<LogEntry>) -> Pending {
        self.submit(Op::Append(entries))
    }

    /// Queues payloads; the writer assigns them the next indexes. Resolves to the last assigned
    /// index once they are durable (the first is `last - entries.len() + 1`).
    pub fn append_new(&self, term: Term, entries: Vec<(EntryType, Vec<u8>)>) -> Pending {
        self.submit(Op::AppendNew { term, entries })
    }

    /// Queues a [`RaftLog::truncate_suffix`] after everything queued before it.
    pub fn truncate_suffix(&self, from: LogIndex) -> Pending {
        self.submit(Op::TruncateSuffix(from))
    }

    /// Queues a [`RaftLog::compact_prefix`] after everything queued before it.
    pub fn compact_prefix(&self, upto: LogIndex) -> Pending {
        self.submit(Op::CompactPrefix(upto))
    }

    /// Read access to the log (waits while a batch is being written).
    pub fn read(&self) -> RwLockReadGuard<'_, RaftLog> {
        self.inner.log.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writer thread's loop.
fn run(log: &RwLock<RaftLog>, rx: &Receiver<Request>, entries_max: usize, bytes_max: u64) {
    while let Ok(first) = rx.recv() {
        let (mut n, mut b) = first.op.cost();
        let mut queue = vec![first];
        while n < entries_max && b < bytes_max {
            match rx.try_recv() {
                Ok(r) => {
                    let (rn, rb) = r.op.cost();
                    n += rn;
                    b += rb;
                    queue.push(r);
                }
                Err(_) => break,
            }
        }
        execute(log, queue);
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
fn execute(log: &RwLock<RaftLog>, queue: Vec<Request>) {
    let (payload_max, mut next, mut term) = {
        let l = write_lock(log);
        (
            l.config().entry_payload_max_bytes(),
            l.last_index().next(),
            l.last_term(),
        )
    };
    let mut batch: Vec<LogEntry> = Vec::new();
    let mut waiters: Vec<(Arc<Completion>, LogIndex)> = Vec::new();

    fn flush(
        log: &RwLock<RaftLog>,
        batch: &mut Vec<LogEntry>,
        waiters: &mut Vec<(Arc<Completion>, LogIndex)>,
    ) {
        let r = if batch.is_empty() {
            Ok(())
        } else {
            // The guard must be gone before append_batch takes the lock again.
            let checked = write_lock(log).check_append(batch);
            checked.and_then(|()| append_batch(log, batch))
        };
        for (done, last) in waiters.drain(..) {
            done.complete(r.clone().map(|()| last));
        }
        batch.clear();
    }

    for req in queue {
        match req.op {
            Op::Append(entries) => {
                if let Err(e) = check_request(&entries, next, term, payload_max) {
                    req.done.complete(Err(e));
                    continue;
                }
                let Some(last) = entries.last() else {
                    req.done.complete(Ok(next.prev()));
                    continue;
                };
                next = last.index.next();
                term = last.term;
                waiters.push((req.done, last.index));
                batch.extend(entries);
            }
            Op::AppendNew {
                term: t,
                entries: payloads,
            } => {
                let entries: Vec<LogEntry> = payloads
                    .into_iter()
                    .enumerate()
                    .map(|(i, (entry_type, payload))| LogEntry {
                        term: t,
                        index: LogIndex(next.0 + i as u64),
                        entry_type,
                        payload,
                    })
                    .collect();
                if let Err(e) = check_request(&entries, next, term, payload_max) {
                    req.done.complete(Err(e));
                    continue;
                }
                let Some(last) = entries.last() else {
                    req.done.complete(Ok(next.prev()));
                    continue;
                };
                next = last.index.next();
                term = last.term;
                waiters.push((req.done, last.index));
                batch.extend(entries);
            }
            Op::TruncateSuffix(from) => {
                flush(log, &mut batch, &mut waiters);
                let mut l = write_lock(log);
                let r = l.truncate_suffix(from).map(|()| l.last_index());
                req.done.complete(r);
                next = l.last_index().next();
                term = l.last_term();
            }
            Op::CompactPrefix(upto) => {
                flush(log, &mut batch, &mut waiters);
                let mut l = write_lock(log);
                let r = l.compact_prefix(upto).map(|()| l.last_index());
                req.done.complete(r);
                next = l.last_index().next();
                term = l.last_term();
            }
        }
    }
    flush(log, &mut batch, &mut waiters);
}

/// The checks `RaftLog::append` makes, done per request so one bad request does not fail the
/// requests batched with it.
fn check_request(
    entries: &[LogEntry],
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
