//! The production [`Durable`]: the storage engine's `LogWriter` (group commit over `RaftLog`) and
//! `RaftState`, driven from the event loop without blocking its thread.
//!
//! Opening order: the log first, because `RaftLog::open` takes the directory's `flock` (the one
//! lock a node holds); a second process on the same directory therefore fails before it reads or
//! rewrites `raft_state.meta`.
//!
//! One "persist" thread per node executes batches in submission order: truncate and append go to
//! the `LogWriter` (its group commit makes them durable with one fdatasync), the hard state goes
//! to `RaftState` (its own fdatasync), both before the batch completes. A hard state whose only
//! change is the commit index is not written: the commit index is re-learned from the leader after
//! a restart, and an older one on disk is always safe. Term and vote are written whenever they
//! change, before the batch completes (so before any vote or acknowledgement leaves).
//!
//! Latency: the persist thread leads its own appends (`LogWriter::append`: the write and its
//! fdatasync run on this thread), so a batch costs two thread hand-offs (loop → persist thread →
//! loop) plus its I/O, not four through the writer's own thread. A batch with nothing to write (a
//! commit-index-only hard state: every heartbeat and commit notice) never reaches the thread; the
//! event loop still completes it only after the batches before it.

use std::rc::Rc;
use std::sync::mpsc as std_mpsc;

use tokio::sync::oneshot;

use std::path::Path;

use crate::config::ClusterConfig;
use crate::node::event_loop::{Durable, PersistFuture, WriteBatch};
use crate::node::NodeError;
use crate::raft::Storage;
use crate::storage::state::{RaftState, StateError};
use crate::storage::{LogConfig, LogError, LogWriter, RaftLog};
use crate::types::{LogEntry, LogIndex, NodeId, Term};

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
    let writer = LogWriter::spawn(log).map_err(|e| storage(Box::new(e)))?;
    let durable = DiskDurable::start(writer.clone(), state).map_err(|e| storage(Box::new(e)))?;
    crate::node::serve(
        config,
        id,
        listener,
        hard_state,
        WriterView(writer),
        durable,
    )
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the persist thread stopped")]
    ThreadGone,
}

/// The core's read view of the log: reads go through the writer's shared `RaftLog` (mmap).
#[derive(Clone)]
pub struct WriterView(pub LogWriter);

impl Storage for WriterView {
    fn first_index(&self) -> LogIndex {
        Storage::first_index(&*self.0.read())
    }
    fn last_index(&self) -> LogIndex {
        Storage::last_index(&*self.0.read())
    }
    fn term(&self, index: LogIndex) -> Option<Term> {
        Storage::term(&*self.0.read(), index)
    }
    fn entries(&self, lo: LogIndex, hi: LogIndex, max_bytes: u64) -> Vec<LogEntry> {
        Storage::entries(&*self.0.read(), lo, hi, max_bytes)
    }
}

struct Job {
    batch: WriteBatchOwned,
    done: oneshot::Sender<Result<(), DiskError>>,
}

struct WriteBatchOwned {
    truncate_from: Option<LogIndex>,
    entries: Vec<LogEntry>,
    hard_state: Option<crate::raft::HardState>,
}

/// Hands batches to the "persist" thread; see the module docs.
pub struct DiskDurable {
    jobs: std_mpsc::Sender<Job>,
    /// Term and vote of the last hard state handed to the persist thread: a batch that changes
    /// neither and carries no log change has nothing to write and completes without the thread.
    submitted: crate::raft::HardState,
}

impl DiskDurable {
    /// Starts the persist thread, which owns `state` and a handle of `writer`.
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn start(writer: LogWriter, mut state: RaftState) -> std::io::Result<DiskDurable> {
        let (jobs, rx) = std_mpsc::channel::<Job>();
        let submitted = state.state().hard_state();
        std::thread::Builder::new()
            .name("persist".into())
            .spawn(move || {
                let mut saved = state.state().hard_state();
                while let Ok(job) = rx.recv() {
                    let b = job.batch;
                    let result = (|| -> Result<(), DiskError> {
                        if let Some(from) = b.truncate_from {
                            writer.truncate_suffix(from).wait()?;
                        }
                        // Term and vote must be durable before the batch completes; the commit
                        // index alone is re-learned from the leader.
                        let hard_state = b
                            .hard_state
                            .filter(|hs| hs.term != saved.term || hs.vote != saved.vote);
                        match (b.entries.is_empty(), hard_state) {
                            (true, None) => {}
                            // The common case: this thread leads the append itself (write +
                            // fdatasync here, no hand-off to the writer's thread and back).
                            (false, None) => {
                                writer.append(b.entries).wait()?;
                            }
                            // Rare (elections): the state file's sync overlaps the log's.
                            (empty, Some(hs)) => {
                                let pending = (!empty).then(|| writer.append_async(b.entries));
                                state.save_hard_state(hs)?;
                                saved = hs;
                                if let Some(p) = pending {
                                    p.wait()?;
                                }
                            }
                        }
                        Ok(())
                    })();
                    let fatal = result.is_err();
                    let _ = job.done.send(result);
                    if fatal {
                        return;
                    }
                }
            })?;
        Ok(DiskDurable { jobs, submitted })
    }
}

impl Durable for DiskDurable {
    type Log = WriterView;
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
        if let Some(hs) = batch.hard_state.filter(|_| changes_vote) {
            self.submitted = hs;
        }
        let (done, result) = oneshot::channel();
        let job = Job {
            batch: WriteBatchOwned {
                truncate_from: batch.truncate_from,
                entries: batch.entries.clone(),
                hard_state: batch.hard_state,
            },
            done,
        };
        let sent = self.jobs.send(job).is_ok();
        Box::pin(async move {
            if !sent {
                return Err(DiskError::ThreadGone);
            }
            result.await.map_err(|_| DiskError::ThreadGone)?
        })
    }

    fn publish(&mut self, _log: &mut WriterView, _batch: &WriteBatch) {
        // The writer publishes into the shared RaftLog before it completes the batch.
    }
}
