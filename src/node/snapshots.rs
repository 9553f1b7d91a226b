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
    /// And not before the entries applied since the newest snapshot add up to this percentage of
    /// its size (0: entries only). A store much larger than `every_entries` entries would
    /// otherwise be rewritten whole every `every_entries` writes: with 100,000 keys of 256 bytes
    /// that is 52-59 MB written per ~3 MB of log (BENCHMARKS.md, "Snapshots in proportion to the
    /// store": put p99 with snapshots ÷ without, median of 3 runs, 1.63x and 1.76x at 16 and 100
    /// clients without the rule, 1.05x and 0.99x at 50). At 50 the snapshots write about twice
    /// the log's payload bytes at most, and a restart replays about half the store's size of log
    /// after the snapshot at most.
    pub log_percent: u32,
}

/// Takes the node's snapshots off the event loop's thread: the loop hands over a consistent view
/// of the state machine (cheap), a plain thread writes it to `snapshot_<index>.snap` (temp file,
/// fdatasync, rename, directory fsync) and prunes older files, and the loop hears back through
/// [`Snapshotter::finished`]. At most one snapshot is written at a time.
///
/// Members take their snapshots at different indexes. Every member applies the same entries, so
/// the same rules would otherwise start a snapshot on all of them at once: every disk of the
/// quorum busy at the same moment (on one machine, one disk written three times over), which
/// issue 18's timelines found under every write stall of 8 ms or more. So the first snapshot
/// after the node starts, or after it adopts a leader's, waits for this member's slot: the first
/// index at or after the usual threshold that is `rank × every_entries / members` past a
/// multiple of `every_entries` (`rank`: the member's place among the configured voters). From
/// then on each member counts from its own snapshot, so the offsets last: exactly while the
/// entries rule decides, and while the size rule decides too, because the store's size at an
/// index is the same on every member. The wait is less than `every_entries` entries, once.
pub struct Snapshotter {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    cluster_id: u64,
    payload_kind: u32,
    voters: Vec<NodeId>,
    policy: SnapshotPolicy,
    /// The index of the newest snapshot written (or restored at startup).
    newest: crate::types::LogIndex,
    /// The size of that snapshot (its payload; its file's length when restored at startup;
    /// 0: unknown) and the applied payload bytes counter (`Driver::applied_payload_bytes`) when
    /// it was started: the `log_percent` rule's reference.
    newest_bytes: u64,
    applied_bytes_at_newest: u64,
    /// The counter when the snapshot being written was started.
    applied_bytes_at_start: u64,
    running: Option<tokio::sync::oneshot::Receiver<Result<Taken, String>>>,
    /// This member's slot: `rank` of `members` (see the type's doc).
    rank: u64,
    members: u64,
    /// Whether the next snapshot waits for the slot (after start and after adopting a leader's).
    align_next: bool,
}

/// A snapshot written by [`Snapshotter`].
#[derive(Clone, Copy, Debug)]
pub struct Taken {
    pub snap: SnapshotId,
    pub payload_bytes: u64,
    pub elapsed: std::time::Duration,
}

impl Snapshotter {
    /// The snapshotter of member `id` (its slot is its place among `voters`, sorted; a node not
    /// among them takes `id mod members`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: NodeId,
        vfs: Arc<dyn Vfs>,
        dir: PathBuf,
        cluster_id: u64,
        payload_kind: u32,
        voters: Vec<NodeId>,
        policy: SnapshotPolicy,
        newest: crate::types::LogIndex,
    ) -> Snapshotter {
        let members = voters.iter().collect::<std::collections::BTreeSet<_>>();
        let rank = members
            .iter()
            .position(|v| **v == id)
            .map_or(u64::from(id.0) % members.len().max(1) as u64, |p| p as u64);
        let members = members.len().max(1) as u64;
        // A node restarted from its snapshot sizes the next one by that file.
        let newest_bytes = if newest > crate::types::LogIndex::ZERO {
            crate::storage::snapshot::snapshot_file_len(
                &*vfs,
                &dir.join(snapshot_file_name(newest)),
            )
            .unwrap_or(0)
        } else {
            0
        };
        Snapshotter {
            vfs,
            dir,
            cluster_id,
            payload_kind,
            voters,
            policy,
            newest,
            newest_bytes,
            applied_bytes_at_newest: 0,
            applied_bytes_at_start: 0,
            running: None,
            rank,
            members,
            align_next: true,
        }
    }

    /// The index from which the entries rule lets a snapshot start, `newest` being the newest
    /// snapshot: `every_entries` later, and on the first one after start or adoption, moved on
    /// to this member's slot (less than `every_entries` further).
    fn entries_threshold(&self, newest: crate::types::LogIndex) -> u64 {
        let every = self.policy.every_entries;
        let base = newest.0.saturating_add(every);
        if !self.align_next || self.members <= 1 || every == 0 {
            return base;
        }
        // `every × rank / members` without overflow: rank < members.
        let phase = (u128::from(every) * u128::from(self.rank) / u128::from(self.members)) as u64;
        let wait = (phase + every - base % every) % every;
        base.saturating_add(wait)
    }

    pub fn policy(&self) -> SnapshotPolicy {
        self.policy
    }

    /// Whether a snapshot at `applied` is due: none is being written, snapshots are on,
    /// `every_entries` were applied since the newest one (`installed`: the newest the core knows,
    /// which a leader's snapshot may have moved; the first time, up to this member's slot), and
    /// the payload bytes applied since then (`applied_bytes`: `Driver::applied_payload_bytes`)
    /// reach `log_percent` of its size. The
    /// size rule is skipped while a leader's snapshot newer than this node's own is not adopted
    /// yet ([`Snapshotter::adopt_installed`]): the entries rule alone then decides.
    pub fn due(
        &self,
        applied: crate::types::LogIndex,
        installed: Option<SnapshotId>,
        applied_bytes: u64,
    ) -> bool {
        let own_is_newest = installed.is_none_or(|s| s.index <= self.newest);
        let newest = installed.map_or(self.newest, |s| s.index.max(self.newest));
        let grown = applied_bytes.saturating_sub(self.applied_bytes_at_newest);
        let size_rule = !own_is_newest
            || grown.saturating_mul(100)
                >= self
                    .newest_bytes
                    .saturating_mul(u64::from(self.policy.log_percent));
        self.running.is_none()
            && self.policy.every_entries > 0
            && applied.0 >= self.entries_threshold(newest)
            && size_rule
    }

    /// A leader's snapshot newer than this node's own was installed (`installed`: the newest
    /// the core knows; its file lies in this directory under the same name scheme): it becomes
    /// the reference of both rules, sized by its file, with `applied_bytes` the counter now.
    /// Waits while a snapshot is being written (its result would otherwise replace this one).
    pub fn adopt_installed(&mut self, installed: Option<SnapshotId>, applied_bytes: u64) {
        let Some(installed) = installed else { return };
        if installed.index <= self.newest || self.running.is_some() {
            return;
        }
        self.newest = installed.index;
        // The leader's index is the leader's slot: the next one of ours goes back to our own.
        self.align_next = true;
        self.newest_bytes = crate::storage::snapshot::snapshot_file_len(
            &*self.vfs,
            &self.dir.join(snapshot_file_name(installed.index)),
        )
        .unwrap_or(0);
        self.applied_bytes_at_newest = applied_bytes;
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
        applied_bytes: u64,
    ) {
        self.applied_bytes_at_start = applied_bytes;
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
        applied_bytes: u64,
    ) -> Result<Taken, String> {
        self.applied_bytes_at_start = applied_bytes;
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
            self.written(taken);
        }
        result
    }

    /// `taken` is the newest snapshot now: the reference of both rules.
    fn written(&mut self, taken: &Taken) {
        self.align_next = false;
        self.newest = taken.snap.index;
        self.newest_bytes = taken.payload_bytes;
        self.applied_bytes_at_newest = self.applied_bytes_at_start;
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
            Ok(taken) => self.written(taken),
            Err(_) => {
                // Do not retry at once: wait for another `every_entries` as after a success.
            }
        }
        result
    }

    /// After a failure, the next attempt waits for as many entries as after a success.
    pub fn postpone(&mut self, applied: crate::types::LogIndex) {
        self.newest = self.newest.max(applied);
        self.applied_bytes_at_newest = self.applied_bytes_at_start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::simfs::SimFs;
    use crate::types::{LogIndex, Term};

    /// A state machine view that writes its given number of bytes.
    struct Bytes(usize);

    impl crate::state_machine::SnapshotSource for Bytes {
        fn write_to(&self, w: &mut dyn std::io::Write) -> std::io::Result<u64> {
            w.write_all(&vec![7u8; self.0])?;
            Ok(self.0 as u64)
        }
    }

    /// Member `id` of `voters`, writing into `dir` on `fs`, a snapshot every `every` entries and
    /// `log_percent`, its newest snapshot at `newest` (0: none).
    fn of_member(
        fs: &Arc<SimFs>,
        (id, voters): (u32, &[u32]),
        dir: &str,
        (every, log_percent): (u64, u32),
        newest: u64,
    ) -> Snapshotter {
        Snapshotter::new(
            NodeId(id),
            Arc::clone(fs) as Arc<dyn Vfs>,
            PathBuf::from(dir),
            1,
            0,
            voters.iter().map(|v| NodeId(*v)).collect(),
            SnapshotPolicy {
                every_entries: every,
                catchup_entries: 0,
                keep: 2,
                log_percent,
            },
            LogIndex(newest),
        )
    }

    fn snapshotter(fs: &Arc<SimFs>, log_percent: u32, newest: u64) -> Snapshotter {
        of_member(fs, (1, &[1]), "/n", (100, log_percent), newest)
    }

    /// An empty node directory on a simulated disk, and a snapshotter of it with no snapshot
    /// yet, taking one every 100 entries and `log_percent`.
    fn fresh(log_percent: u32) -> (Arc<SimFs>, Snapshotter) {
        let fs = Arc::new(SimFs::new());
        fs.create_dir_all(std::path::Path::new("/n"))
            .expect("a directory on the simulated disk");
        let s = snapshotter(&fs, log_percent, 0);
        (fs, s)
    }

    fn at(index: u64) -> SnapshotId {
        SnapshotId {
            index: LogIndex(index),
            term: Term(1),
        }
    }

    #[test]
    fn a_snapshot_waits_for_the_log_to_grow_by_its_share_of_the_last_snapshots_size() {
        let (_fs, mut s) = fresh(50);
        // No snapshot yet: the entries rule alone.
        assert!(!s.due(LogIndex(99), None, 1 << 30));
        assert!(s.due(LogIndex(100), None, 0));
        // A 10,000-byte snapshot started when 4,000 payload bytes had been applied.
        let taken = s.write_now(at(100), &Bytes(10_000), None, 4_000).unwrap();
        assert_eq!(taken.payload_bytes, 10_000);
        // 100 more entries but only 4,999 more bytes: not yet; 5,000 (50 %): due.
        assert!(!s.due(LogIndex(200), None, 4_000 + 4_999));
        assert!(s.due(LogIndex(200), None, 4_000 + 5_000));
        // Enough bytes but not enough entries: not due either.
        assert!(!s.due(LogIndex(199), None, 1 << 30));
        // A leader's snapshot newer than ours: its size is not known, the entries rule decides.
        assert!(!s.due(LogIndex(349), Some(at(250)), 4_000));
        assert!(s.due(LogIndex(350), Some(at(250)), 4_000));
        // The next snapshot is the reference from then on.
        s.write_now(at(400), &Bytes(2_000), None, 20_000).unwrap();
        assert!(!s.due(LogIndex(500), None, 20_999));
        assert!(s.due(LogIndex(500), None, 21_000));
    }

    #[test]
    fn a_leaders_installed_snapshot_becomes_the_reference_sized_by_its_file() {
        let (fs, mut s) = fresh(50);
        s.write_now(at(100), &Bytes(1_000), None, 0).unwrap();
        // The leader's 10,000-byte snapshot at 250, left in the directory by the transport.
        snapshotter(&fs, 50, 0)
            .write_now(at(250), &Bytes(10_000), None, 0)
            .unwrap();
        s.adopt_installed(Some(at(250)), 7_000);
        assert!(!s.due(LogIndex(349), Some(at(250)), 1 << 30));
        assert!(!s.due(LogIndex(350), Some(at(250)), 7_000 + 4_999));
        assert!(s.due(LogIndex(350), Some(at(250)), 7_000 + 6_000));
        // An older or equal one changes nothing.
        s.adopt_installed(Some(at(200)), 0);
        assert!(s.due(LogIndex(350), Some(at(250)), 7_000 + 6_000));
    }

    #[test]
    fn without_the_size_rule_entries_alone_decide() {
        let (_fs, mut s) = fresh(0);
        s.write_now(at(100), &Bytes(10_000), None, 0).unwrap();
        assert!(!s.due(LogIndex(199), None, 0));
        assert!(s.due(LogIndex(200), None, 0));
    }

    #[test]
    fn a_restarted_node_sizes_its_next_snapshot_by_the_file_it_restored() {
        let (fs, mut first) = fresh(50);
        first.write_now(at(100), &Bytes(10_000), None, 0).unwrap();
        // The restarted node's counter starts at 0; the file (10,000 payload bytes and its
        // header and trailer) asks for at least 5,000 bytes of new log.
        let again = snapshotter(&fs, 50, 100);
        assert!(!again.due(LogIndex(200), None, 4_999));
        assert!(again.due(LogIndex(200), None, 6_000));
    }

    #[test]
    fn a_failed_snapshot_is_retried_after_as_much_log_as_a_success() {
        let (_fs, mut s) = fresh(50);
        s.write_now(at(100), &Bytes(10_000), None, 0).unwrap();
        s.applied_bytes_at_start = 5_000;
        s.postpone(LogIndex(200));
        assert!(!s.due(LogIndex(300), None, 9_999));
        assert!(s.due(LogIndex(300), None, 10_000));
    }

    /// Member `id` of the voters 1, 2 and 3, with no snapshot yet (or restarted from `newest`),
    /// taking one every 90 entries and by entries alone.
    fn member(fs: &Arc<SimFs>, id: u32, newest: u64) -> Snapshotter {
        of_member(fs, (id, &[3, 1, 2]), &format!("/n{id}"), (90, 0), newest)
    }

    /// The first index at or after `from` at which `s` would start a snapshot.
    fn first_due(s: &Snapshotter, from: u64) -> u64 {
        (from..from + 1_000)
            .find(|&i| s.due(LogIndex(i), None, 0))
            .expect("a snapshot within 1,000 entries")
    }

    #[test]
    fn members_take_their_snapshots_a_third_of_the_interval_apart() {
        let fs = Arc::new(SimFs::new());
        let mut firsts = Vec::new();
        for id in 1..=3 {
            fs.create_dir_all(std::path::Path::new(&format!("/n{id}")))
                .expect("a directory on the simulated disk");
            let mut s = member(&fs, id, 0);
            let first = first_due(&s, 0);
            // Each member's own slot: 0, 30 and 60 past a multiple of 90, at or after 90.
            s.write_now(at(first), &Bytes(100), None, 0).unwrap();
            // From then on, every 90 entries from its own snapshot: the offsets last.
            let second = first_due(&s, first);
            assert_eq!(second, first + 90, "member {id}");
            firsts.push(first);
        }
        assert_eq!(firsts, vec![90, 120, 150]);
    }

    #[test]
    fn a_restarted_or_installed_member_goes_back_to_its_slot_once() {
        let fs = Arc::new(SimFs::new());
        fs.create_dir_all(std::path::Path::new("/n2"))
            .expect("a directory on the simulated disk");
        // Member 2 (slot 30) restarted from a snapshot at 125: 215 is past its slot at 210,
        // so it waits for the next one, 300.
        let mut s = member(&fs, 2, 125);
        assert_eq!(first_due(&s, 125), 300);
        s.write_now(at(300), &Bytes(100), None, 0).unwrap();
        assert_eq!(first_due(&s, 300), 390);
        // A leader's snapshot at 400 (member 1's slot, 0): adopted, then ours at our slot again.
        member(&fs, 2, 0)
            .write_now(at(400), &Bytes(100), None, 0)
            .unwrap();
        s.adopt_installed(Some(at(400)), 0);
        let next = (400..1_400)
            .find(|&i| s.due(LogIndex(i), Some(at(400)), 0))
            .expect("a snapshot within 1,000 entries");
        assert_eq!(next, 570);
    }

    #[test]
    fn a_single_voter_and_an_outsider_have_slots_too() {
        let fs = Arc::new(SimFs::new());
        let alone = of_member(&fs, (7, &[7]), "/n", (90, 0), 0);
        assert_eq!(first_due(&alone, 0), 90);
        // Node 5 is not among 1, 2 and 3: slot 5 mod 3 = 2, 60 past a multiple of 90.
        let outsider = member(&fs, 5, 0);
        assert_eq!(first_due(&outsider, 0), 150);
    }
}
