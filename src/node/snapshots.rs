//! The node's snapshot files as the InstallSnapshot transport sees them
//! ([`crate::grpc::SnapshotFiles`]): the leader's files to send, and the follower's transfer in
//! progress.
//!
//! Owns at most one receiving transfer at a time (a follower installs one snapshot at a time; a
//! transfer of another snapshot replaces it, and its `.snap.recv` file is removed). Every call
//! blocks on file I/O; the transport makes them on the blocking pool.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use crate::grpc::{AcceptError, SnapshotFiles};
use crate::raft::SnapshotId;
use crate::storage::file::Vfs;
use crate::storage::snapshot::{
    read_file_range, snapshot_file_name, SnapshotFileError, SnapshotReceiver,
};
use crate::types::NodeId;

/// A node directory's snapshots, for the transport.
pub struct NodeSnapshots {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    receiving: Mutex<Option<(NodeId, SnapshotId, SnapshotReceiver)>>,
}

impl NodeSnapshots {
    pub fn new(vfs: Arc<dyn Vfs>, dir: PathBuf) -> NodeSnapshots {
        NodeSnapshots {
            vfs,
            dir,
            receiving: Mutex::new(None),
        }
    }
}

impl SnapshotFiles for NodeSnapshots {
    fn read(&self, snap: SnapshotId, offset: u64, max: usize) -> Result<Vec<u8>, String> {
        let path = self.dir.join(snapshot_file_name(snap.index));
        read_file_range(&*self.vfs, &path, offset, max).map_err(|e| e.to_string())
    }

    fn accept(
        &self,
        from: NodeId,
        snap: SnapshotId,
        offset: u64,
        data: &[u8],
    ) -> Result<(), AcceptError> {
        let mut receiving = self
            .receiving
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let same = matches!(&*receiving, Some((f, s, _)) if *f == from && *s == snap);
        if !same {
            // A new transfer (or a new leader's): what an older one received is of no use.
            *receiving = None;
            let receiver =
                SnapshotReceiver::create(Arc::clone(&self.vfs), &self.dir, snap.index, snap.term)
                    .map_err(|e| AcceptError::Refused(e.to_string()))?;
            *receiving = Some((from, snap, receiver));
        }
        let Some((_, _, receiver)) = receiving.as_mut() else {
            return Err(AcceptError::Refused("no transfer in progress".to_string()));
        };
        match receiver.accept(offset, data) {
            Ok(()) => Ok(()),
            // Out of order, or a bad unit that was dropped: resume at what is kept.
            Err(SnapshotFileError::OutOfOrder { .. }) | Err(SnapshotFileError::Damaged { .. }) => {
                Err(AcceptError::ResumeAt(receiver.received_bytes()))
            }
            Err(e) => {
                *receiving = None;
                Err(AcceptError::Refused(e.to_string()))
            }
        }
    }

    fn finish(&self, from: NodeId, snap: SnapshotId) -> Result<(), String> {
        let taken = self
            .receiving
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match taken {
            Some((f, s, receiver)) if f == from && s == snap => {
                receiver.finish().map(|_| ()).map_err(|e| e.to_string())
            }
            _ => Err(format!(
                "no transfer of snapshot {}@{} from node {from} to finish",
                snap.index, snap.term
            )),
        }
    }
}

/// Writes `source` as the snapshot `meta` describes into `dir` (temporary file, fdatasync,
/// rename, directory fsync: `SnapshotWriter`), then prunes all but the newest `keep` snapshot
/// files. Returns the payload's size. Blocks on file I/O, and paces its writes
/// (`AppendFile::pace_writeback`: each 1 MiB written out and waited for, so that the log's
/// fdatasyncs never wait behind tens of MiB of snapshot): the node calls it on the snapshot
/// thread, the simulator on its one thread over `SimFs` (the same code, at a simulated moment;
/// `SimFs` files ignore the pacing).
///
/// # Errors
/// Why the snapshot could not be written or the old ones pruned (the file and the cause).
pub fn write_snapshot(
    vfs: Arc<dyn Vfs>,
    dir: &std::path::Path,
    meta: &crate::storage::snapshot::SnapshotMeta,
    source: &dyn crate::state_machine::SnapshotSource,
    keep: usize,
) -> Result<u64, String> {
    let mut w = crate::storage::snapshot::SnapshotWriter::create(Arc::clone(&vfs), dir, meta)
        .map_err(|e| e.to_string())?;
    w.pace_writeback();
    source.write_to(&mut w).map_err(|e| e.to_string())?;
    let payload_bytes = w.payload_bytes();
    w.finish().map_err(|e| e.to_string())?;
    crate::storage::snapshot::prune(&*vfs, dir, keep).map_err(|e| e.to_string())?;
    Ok(payload_bytes)
}

/// Lowers the calling thread's CPU priority to the lowest (nice 19), so that serializing a
/// snapshot runs on the cycles the event loops leave: on a machine with fewer cores than busy
/// threads (three nodes and a client on 2 cores, or one node beside other work) the snapshot
/// thread otherwise takes an equal share of a core from the event loop for hundreds of
/// milliseconds. A snapshot that takes longer costs nothing but a later compaction. On Linux a
/// thread id given to `setpriority(PRIO_PROCESS)` changes that thread only. A refusal (e.g. a
/// seccomp profile) is logged and the snapshot goes ahead at normal priority.
fn yield_cpu_to_the_event_loop() {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    let Ok(tid) = libc::id_t::try_from(tid) else {
        return;
    };
    // SAFETY: plain syscall on this thread's id; no memory is passed.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 19) };
    if rc != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot lower the snapshot thread's CPU priority; it competes with the event loop"
        );
    }
}

/// When the node takes snapshots and what it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// A snapshot once this many entries were applied since the newest one (0: never).
    pub every_entries: u64,
    /// Entries kept in the log before the newest snapshot, for followers that are only a little
    /// behind (they get entries, not a snapshot).
    pub catchup_entries: u64,
    /// Snapshot files kept (the newest ones; at least 1).
    pub keep: usize,
}

/// Takes the node's snapshots off the event loop's thread: the loop hands over a consistent view
/// of the state machine (cheap), a plain thread writes it to `snapshot_<index>.snap` (temp file,
/// fdatasync, rename, directory fsync) and prunes older files, and the loop hears back through
/// [`Snapshotter::finished`]. At most one snapshot is written at a time.
pub struct Snapshotter {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    cluster_id: u64,
    payload_kind: u32,
    voters: Vec<NodeId>,
    policy: SnapshotPolicy,
    /// The index of the newest snapshot written (or restored at startup).
    newest: crate::types::LogIndex,
    running: Option<tokio::sync::oneshot::Receiver<Result<Taken, String>>>,
}

/// A snapshot written by [`Snapshotter`].
#[derive(Clone, Copy, Debug)]
pub struct Taken {
    pub snap: SnapshotId,
    pub payload_bytes: u64,
    pub elapsed: std::time::Duration,
}

impl Snapshotter {
    pub fn new(
        vfs: Arc<dyn Vfs>,
        dir: PathBuf,
        cluster_id: u64,
        payload_kind: u32,
        voters: Vec<NodeId>,
        policy: SnapshotPolicy,
        newest: crate::types::LogIndex,
    ) -> Snapshotter {
        Snapshotter {
            vfs,
            dir,
            cluster_id,
            payload_kind,
            voters,
            policy,
            newest,
            running: None,
        }
    }

    pub fn policy(&self) -> SnapshotPolicy {
        self.policy
    }

    /// Whether a snapshot at `applied` is due: none is being written, snapshots are on, and
    /// `every_entries` were applied since the newest one (`installed`: the newest the core knows,
    /// which a leader's snapshot may have moved).
    pub fn due(&self, applied: crate::types::LogIndex, installed: Option<SnapshotId>) -> bool {
        let newest = installed.map_or(self.newest, |s| s.index.max(self.newest));
        self.running.is_none()
            && self.policy.every_entries > 0
            && applied.0 >= newest.0 + self.policy.every_entries
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The index of the newest snapshot this snapshotter wrote (or the node restored at start).
    pub fn newest(&self) -> crate::types::LogIndex {
        self.newest
    }

    /// Where the snapshot at `index` lives once finished.
    pub fn path_of(&self, index: crate::types::LogIndex) -> PathBuf {
        self.dir.join(snapshot_file_name(index))
    }

    /// The header of this node's snapshot at `snap`: the configuration in effect at its index
    /// (`membership`, from the core), or the config file's voters when it is not known.
    fn meta(
        &self,
        snap: SnapshotId,
        membership: Option<crate::raft::Membership>,
    ) -> crate::storage::snapshot::SnapshotMeta {
        let (voters, learners) = match membership {
            Some(m) => (
                m.voters.into_iter().collect(),
                m.learners.into_iter().collect(),
            ),
            None => (self.voters.clone(), Vec::new()),
        };
        crate::storage::snapshot::SnapshotMeta {
            index: snap.index,
            term: snap.term,
            cluster_id: self.cluster_id,
            payload_kind: self.payload_kind,
            voters,
            learners,
        }
    }

    /// Starts writing `source` (the state machine at `snap`) on a thread of its own.
    pub fn start(
        &mut self,
        snap: SnapshotId,
        source: Box<dyn crate::state_machine::SnapshotSource>,
        membership: Option<crate::raft::Membership>,
    ) {
        let meta = self.meta(snap, membership);
        let (vfs, dir, keep) = (
            Arc::clone(&self.vfs),
            self.dir.clone(),
            self.policy.keep.max(1),
        );
        let (done, result) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("snapshot".to_string())
            .spawn(move || {
                yield_cpu_to_the_event_loop();
                let started = std::time::Instant::now();
                let written =
                    write_snapshot(vfs, &dir, &meta, &*source, keep).map(|payload_bytes| Taken {
                        snap,
                        payload_bytes,
                        elapsed: started.elapsed(),
                    });
                let _ = done.send(written);
            });
        match spawned {
            Ok(_) => self.running = Some(result),
            Err(e) => tracing::error!(error = %e, "cannot start the snapshot thread"),
        }
    }

    /// Writes the snapshot of `source` (the state machine at `snap`) now, on the caller's
    /// thread, and records it as [`Snapshotter::finished`] would: the simulator's way of running
    /// the snapshot thread's work (the same [`write_snapshot`]) at one simulated moment.
    ///
    /// # Errors
    /// As [`Snapshotter::finished`].
    pub fn write_now(
        &mut self,
        snap: SnapshotId,
        source: &dyn crate::state_machine::SnapshotSource,
        membership: Option<crate::raft::Membership>,
    ) -> Result<Taken, String> {
        let meta = self.meta(snap, membership);
        let started = std::time::Instant::now();
        let result = write_snapshot(
            Arc::clone(&self.vfs),
            &self.dir,
            &meta,
            source,
            self.policy.keep.max(1),
        )
        .map(|payload_bytes| Taken {
            snap,
            payload_bytes,
            elapsed: started.elapsed(),
        });
        if let Ok(taken) = &result {
            self.newest = taken.snap.index;
        }
        result
    }

    /// Completes when the snapshot being written is done (never while none is).
    ///
    /// # Errors
    /// Why the snapshot could not be written (it is then not used; the next one is tried after
    /// another `every_entries`).
    pub async fn finished(&mut self) -> Result<Taken, String> {
        let Some(running) = self.running.as_mut() else {
            return std::future::pending().await;
        };
        let result = running
            .await
            .unwrap_or_else(|_| Err("the snapshot thread stopped without a result".to_string()));
        self.running = None;
        match &result {
            Ok(taken) => self.newest = taken.snap.index,
            Err(_) => {
                // Do not retry at once: wait for another `every_entries` as after a success.
            }
        }
        result
    }

    /// After a failure, the next attempt waits for as many entries as after a success.
    pub fn postpone(&mut self, applied: crate::types::LogIndex) {
        self.newest = self.newest.max(applied);
    }
}
