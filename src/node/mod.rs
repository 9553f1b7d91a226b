//! The node: everything one `rust-raft-log` process runs, on one tokio-uring runtime.
//!
//! [`run`] is the whole startup, top to bottom (each step's failure stops the process with an
//! `Error: ...` line):
//! 1. 🚀 📋 the seed's startup lines (through `tracing`, see [`logging`]);
//! 2. bind the gRPC port (before touching the data, so a node started twice reports the seed's
//!    `Failed to bind to 127.0.0.1:18001 - address already in use`);
//! 3. open the storage ([`open_storage`]): the log first, which takes
//!    `<log_directory>/node_<id>/LOCK` (the storage engine's `flock`, the only lock on the
//!    directory), so a second process on the same data directory fails here with
//!    [`NodeError::DataDirInUse`] before it reads or writes anything else; then the state file;
//!    then the append engine over both ([`crate::storage::engine`]);
//! 4. build the core → ✅;
//! 5. inside `tokio_uring::start`: run the engine's task, serve gRPC → 🌐 (the Raft and Operator
//!    services and the etcd v3 API, [`crate::etcd::server`]), start the peer clients, run the
//!    event loop ([`event_loop`]) → 🔄, until SIGINT/SIGTERM; a leader then first hands
//!    leadership to its most up-to-date voter (TimeoutNow, at most two maximum election
//!    timeouts), then every node stops accepting, finishes the in-flight write batches and
//!    closes the files.
//!
//! The state machine is the key-value store ([`crate::kv::KvStore`], etcd semantics), restored
//! at start from the newest valid snapshot, if any, then brought up to date by applying the
//! committed log after it (README, "Snapshots and log compaction"). The event
//! loop applies to it and the etcd read handlers read it: both hold it as a
//! [`crate::etcd::server::SharedStore`] on the node's one thread. Embedders with their own
//! [`StateMachine`] use [`run_node_with`] (no etcd API then).
//!
//! Invariant: while this process runs, it is the only writer of its data directory (the log's
//! lock, held by the `RaftLog` for as long as it is open; the kernel drops it when the process
//! dies, even by `kill -9`, so there is never a stale lock to clean up).

pub mod event_loop;
pub mod logging;
pub mod notify;
pub mod restore;
pub mod snapshots;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;

use self::snapshots::{NodeSnapshots, SnapshotPolicy, Snapshotter};
use crate::config::ClusterConfig;
use crate::driver::Inbound;
use crate::etcd::lease::{min_lease_ttl_s, LeaseService};
use crate::etcd::members::Members;
use crate::etcd::server::{EtcdApi, SharedStore};
use crate::etcd::watch::{attach_hub, WatchConfig, WatchService};
use crate::grpc::{self, GrpcError, Limits, PeerConfig, Peers, ServerConfig};
use crate::kv::{KvLimits, KvResponse, KvStore};
use crate::raft::SnapshotId;
use crate::raft::{self, HardState, RaftNode};
use crate::state_machine::Snapshot;
use crate::storage::engine::{Engine, EngineTask, LogView};
use crate::storage::file::Vfs;
use crate::storage::snapshot::{newest_valid, remove_temp_files, SnapshotReader, PAYLOAD_KIND_KV};
use crate::storage::state::{Identity, RaftState};
use crate::storage::uring::UringVfs;
use crate::storage::{LogConfig, LogError, RaftLog};
use crate::types::{LogIndex, NodeId};

pub use self::event_loop::{
    Consensus, EventLoop, LoopConfig, LoopError, LoopStats, SnapshotView, StateMachine,
};
pub use crate::storage::engine::{Durable, WriteBatch};

/// One tick of the core is one millisecond of wall-clock time in the node.
pub const TICK: Duration = Duration::from_millis(1);
/// Inbound items the server may queue for the event loop before handlers wait (back-pressure).
pub const INBOUND_QUEUE_CAPACITY: usize = 4096;
/// Inbound items handled per loop iteration before the core's output is drained.
pub const INBOUND_BATCH_MAX: usize = 256;
/// The most payload bytes the core puts into one AppendEntries. With the per-peer queue bound
/// this caps what a slow follower can cost the leader: queue capacity × this.
pub const MESSAGE_PAYLOAD_BYTES_MAX: u64 = 1024 * 1024;
/// AppendEntries with entries in flight per follower (the core's pipelining bound).
pub const INFLIGHT_APPENDS_MAX: usize = 8;
/// Proposals waiting for their commit before new ones are refused (RESOURCE_EXHAUSTED).
pub const PROPOSALS_PENDING_MAX: usize = 65_536;
/// Linearizable reads waiting for their ReadIndex confirmation or their apply before new ones are
/// refused (retryable).
pub const READS_PENDING_MAX: usize = 65_536;
/// Snapshot files kept in a node directory: the newest, and one before it (a follower may still
/// be receiving it when the next one is taken).
pub const SNAPSHOTS_KEPT: usize = 2;
/// How long a graceful stop waits for the gRPC server after the event loop stopped. By then every
/// in-flight RPC has its answer (or its reply handle was dropped: an error status), so the server
/// only has to flush them; what can remain are idle client connections, on which hyper's HTTP/2
/// graceful shutdown may wait indefinitely for the client to hang up (hyperium/hyper#4170).
/// Short, because a client still connected keeps sending here and gets "server stopped" until
/// its connection closes: with 500 ms, a planned restart of a leader whose clients all used it
/// paused every write for 0.5 s (`tools/chaos/restart_vs_kill.sh`, BENCHMARKS.md).
pub const SERVER_STOP_TIMEOUT: Duration = Duration::from_millis(50);

/// How many maximum election timeouts the evidence of a node's removal must last before it stops
/// (a new leader that truncates an uncommitted removal reaches it well within that).
pub const REMOVAL_GRACE_ELECTIONS: u32 = 3;

/// The exit status of a node that stopped because it was removed from the cluster (sysexits'
/// EX_CONFIG: the cluster's configuration no longer lists it). Distinct from a failure (1), so a
/// supervisor can tell it apart: the systemd unit does not restart on it
/// (`RestartPreventExitStatus=78`).
pub const EXIT_REMOVED: u8 = 78;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Transport(#[from] GrpcError),
    /// Another process (or another open log in this one) holds the data directory's lock.
    #[error(
        "data directory {} is in use by another process; lock file {}",
        .directory.display(),
        .directory.join(crate::storage::log::LOCK_FILE_NAME).display()
    )]
    DataDirInUse { directory: std::path::PathBuf },
    #[error("invalid core configuration: {0}")]
    Core(#[from] raft::ConfigError),
    /// `--join` given for a config file member.
    #[error("{0}")]
    Join(String),
    #[error("cannot start the tokio-uring runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Loop(#[from] LoopError),
    /// Opening the durable log or state failed (corruption names the file and offset).
    #[error("storage: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No valid snapshot covers what the log no longer holds, or a snapshot cannot be restored.
    #[error("snapshot in {}: {message}", directory.display())]
    Snapshot {
        directory: std::path::PathBuf,
        message: String,
    },
}

/// Turns transparent huge pages off for this process (`prctl(PR_SET_THP_DISABLE)`), unless the
/// environment variable `RAFT_KEEP_THP` is set. Returns whether they were turned off.
///
/// Why (issue 18): the allocator asks for huge pages for its arenas (`madvise`), so the first
/// touch of each new 2 MiB of heap is one page fault that zeroes all of it, in whichever thread
/// allocated, usually the event loop. Here (a KVM guest whose memory the host backs on first
/// use) such a fault took 5-9 ms of the loop's thread in the middle of a Ready drain: the
/// longest stall of a 1-client put load that was the node's own (`perf record` of a leader,
/// BENCHMARKS.md "Tail latency"). With 4 KiB pages the same memory arrives a page at a time.
/// The mapping's own flags are not changed; the setting is inherited by children.
pub fn disable_transparent_huge_pages() -> std::io::Result<bool> {
    if std::env::var_os("RAFT_KEEP_THP").is_some() {
        return Ok(false);
    }
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and touches no memory of ours.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(true)
}

/// Runs node `node_id` of `config` until SIGINT/SIGTERM: the steps of the module docs, in order.
/// `config_path` is only for the log.
///
/// # Errors
/// The first startup step that fails (see the module docs), or a fatal runtime error.
pub fn run(config: &ClusterConfig, node_id: u32, config_path: &Path) -> Result<(), NodeError> {
    run_joining(config, node_id, config_path, None)
}

/// [`run`], or with `join` (the `--join PEER_URL` flag): node `node_id` is a member added at run
/// time (`etcdctl member add`), not one of the config file's. It listens at `join`, starts as a
/// learner of the file's configuration (so it never campaigns, and never bootstraps a cluster of
/// its own), and waits for the leader, whose log or snapshot brings the real configuration and
/// the state. Its data directory is `<log_directory>/node_<id>` as for any node; restarting it
/// takes the same flag (its address is not in the file).
///
/// # Errors
/// As [`run`] (a node absent from the file without `join` is the seed's `NodeNotFound`);
/// [`NodeError::Join`] when `join` is given for a node of the config file.
pub fn run_joining(
    config: &ClusterConfig,
    node_id: u32,
    config_path: &Path,
    join: Option<SocketAddr>,
) -> Result<(), NodeError> {
    let in_file = config.node(node_id).ok();
    let address = match (in_file, join) {
        (Some(me), None) => me.address(),
        (None, Some(address)) => address,
        (Some(me), Some(_)) => {
            return Err(NodeError::Join(format!(
                "node {node_id} is in the config file (at {}): it is a bootstrap member, start it \
                 without --join",
                me.address()
            )))
        }
        // The seed's message, verbatim (a requirement); `--help` and the README say how a node
        // that is not in the file joins (`--join`).
        (None, None) => return Err(crate::config::ConfigError::NodeNotFound(node_id).into()),
    };
    let id = NodeId(node_id);
    let directory = config.node_directory(node_id);
    tracing::info!(
        "🚀 Starting Raft node {} with config: {}",
        node_id,
        config_path.display()
    );
    tracing::info!("📋 Cluster configuration:");
    tracing::info!("   Node ID: {}", node_id);
    tracing::info!("   Address: {}", address);
    if join.is_some() {
        tracing::info!(
            "   Joining a running cluster (--join): waiting for its leader; this node will not \
             bootstrap"
        );
    }
    tracing::info!("   Cluster size: {}", config.nodes.len());
    tracing::info!("   Log directory: {}", directory.display());

    let listener = grpc::bind(address)?;
    // The metrics listener is bound as early as the gRPC one, for the same reason: a port in use
    // is reported before the data directory is touched.
    let metrics = match config.metrics_address(node_id) {
        Some(address) => {
            let listener = grpc::bind(address)?;
            tracing::info!("📈 Metrics and health on http://{address}/metrics");
            let metrics = Arc::new(crate::metrics::NodeMetrics::new(&directory));
            Some((listener, metrics))
        }
        None => None,
    };
    let vfs: Arc<dyn Vfs> = Arc::new(UringVfs);
    let opened = open_storage(config, id, &directory)?;
    let store = restore_store(&*vfs, opened.snapshot.as_ref())?;
    let snapshot = opened.snapshot.as_ref().map(|c| c.id);
    let mut core_cfg = core_config(config, id, election_seed(id));
    if join.is_some() {
        // A joining node starts outside the file's configuration, so it never campaigns (it
        // could otherwise elect itself in a cluster of its own making, or disturb the real one)
        // and follows the leader that contacts it; the leader's log or snapshot brings the real
        // configuration, its own addition included. `Config::join`: until a configuration
        // there lists it, it grants no vote. This is the case of an operator who re-uses the
        // id of a removed member on a wiped disk (the leader never reuses ids, but `--node-id`
        // is typed by hand): a stale candidate whose configuration still lists that id as a
        // voter could otherwise win with the vote of a node that forgot its log (a simulator
        // finding). The simulator restarts a wiped node the same way (outside its bootstrap
        // voters, `join` set: src/testing/cluster.rs).
        core_cfg.join = true;
    }
    if let Some(chosen) = &opened.snapshot {
        // The snapshot's configuration, not the config file's, is the truth at its index
        // (configuration entries after it apply over it).
        let file_voters: std::collections::BTreeSet<NodeId> =
            core_cfg.voters.iter().copied().collect();
        let snap_voters: std::collections::BTreeSet<NodeId> =
            chosen.voters.iter().copied().collect();
        if file_voters != snap_voters || !chosen.learners.is_empty() {
            tracing::warn!(
                "the config file lists voters {:?}, but snapshot {} recorded voters {:?} and \
                 learners {:?}: using the snapshot's (after bootstrap the persisted \
                 configuration is the truth, not the file)",
                file_voters,
                chosen.id.index,
                snap_voters,
                chosen.learners
            );
        }
        core_cfg.voters = chosen.voters.clone();
        core_cfg.learners = chosen.learners.clone();
    }
    let file_voters: std::collections::BTreeSet<NodeId> =
        config.nodes.iter().map(|n| n.id()).collect();
    let core = RaftNode::restart(core_cfg, opened.hard_state, opened.view, snapshot)?;
    let persisted = core.membership();
    if core.membership_index().is_some() && persisted.voters != file_voters {
        let file_voters: Vec<u32> = file_voters.iter().map(|n| n.0).collect();
        tracing::warn!(
            "the config file lists voters {:?}, but the persisted configuration (snapshot and \
             log) is {}: using the persisted one (the file only bootstraps a cluster)",
            file_voters,
            persisted
        );
    }
    if !persisted.contains(id) && core.membership_index().is_some() {
        tracing::warn!(
            "node {id} is not in its persisted configuration ({persisted}): it was removed; it \
             will not campaign, and stops unless a leader lists it again within a few election \
             timeouts. Wipe its directory and add it again (new id) to reuse the machine"
        );
    }
    tracing::info!("✅ Raft node created successfully");
    let recovered = Recovered {
        store,
        applied: snapshot.map_or(LogIndex::ZERO, |s| s.index),
        snapshots: Some(SnapshotSetup {
            vfs,
            dir: directory.clone(),
            policy: snapshot_policy(config),
            cluster_id: config.cluster_id(),
        }),
    };
    let (engine, task) = (opened.engine, opened.task);
    // tokio-uring panics when io_uring cannot be set up (old kernel, seccomp, memlock limits):
    // probe first so that case is an error naming the cause, not a panic.
    io_uring::IoUring::new(8).map_err(NodeError::Runtime)?;
    let mut builder = tokio_uring::builder();
    builder.entries(256);
    let config = config.clone();
    builder.start(async move {
        // Installed before the engine and the loop start: they record on this thread.
        crate::metrics::install(metrics.as_ref().map(|(_, m)| Arc::clone(m)));
        if let Some((listener, metrics)) = metrics {
            tokio::task::spawn_local(async move {
                if let Err(e) = crate::metrics::serve(listener, metrics).await {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            });
        }
        tokio::task::spawn_local(task.run());
        run_node(
            &config,
            id,
            listener,
            core,
            engine,
            recovered,
            shutdown_signal(),
        )
        .await?;
        tracing::info!("node {id} stopped");
        Ok(())
    })
}

/// Says loudly when the node's port is reachable beyond this host without TLS: then anyone who
/// can reach it may write keys and, knowing the config, speak Raft (docs/SECURITY.md).
fn warn_if_exposed(local_addr: SocketAddr, tls: bool) {
    if tls || local_addr.ip().is_loopback() {
        return;
    }
    tracing::warn!(
        "⚠️  node listens on {local_addr}, beyond loopback, WITHOUT TLS: any host that reaches this \
         port can read and write keys, and can send Raft messages with the cluster id (computable \
         from the config). Configure `tls:` in the cluster config (docs/SECURITY.md)."
    );
}

/// What [`open_storage`] opened and recovered.
pub struct OpenedStorage {
    pub engine: Engine,
    /// The core's view of the log.
    pub view: LogView,
    /// The engine's task, to run inside the runtime.
    pub task: EngineTask,
    pub hard_state: HardState,
    /// The snapshot the node restarts from (the newest valid one), if any.
    pub snapshot: Option<ChosenSnapshot>,
}

/// A snapshot file recovery chose.
#[derive(Clone, Debug)]
pub struct ChosenSnapshot {
    pub id: SnapshotId,
    pub path: std::path::PathBuf,
    /// The configuration the snapshot recorded at its index.
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

/// Step 3 of the module docs: opens the node directory's log (taking its lock) and state file
/// (checking that the directory is this node's of this cluster, and that a log comes with its
/// state file: `RaftState::open_checked`), chooses the snapshot to restart from, and builds the
/// append engine over the log and the state file.
///
/// The snapshot is the newest valid `snapshot_<index>.snap` (damaged newer ones are reported):
/// the log must continue it (hold its last entry, or start right after it); a log that does not
/// hold its last entry with its term was replaced by it (a crash during an install from the
/// leader, after the snapshot's rename) and is reset to it here, finishing the install.
///
/// # Errors
/// [`NodeError::DataDirInUse`] if another process holds the directory; storage errors while
/// opening (corruption names the file and offset; another node's or cluster's directory, or a log
/// without its state file, names the directory and the way out); [`NodeError::Snapshot`] when the
/// state before the log's first index is in no valid snapshot (starting would lose it).
pub fn open_storage(
    config: &ClusterConfig,
    id: NodeId,
    directory: &Path,
) -> Result<OpenedStorage, NodeError> {
    let storage = |e: Box<dyn std::error::Error + Send + Sync>| NodeError::Storage(e);
    let log_config = LogConfig {
        segment_size_bytes: config.cluster_settings.log_segment_size,
        ..LogConfig::new(directory)
    };
    let mut log = RaftLog::open(log_config).map_err(|e| match e {
        LogError::Locked { dir } => NodeError::DataDirInUse { directory: dir },
        e => storage(Box::new(e)),
    })?;
    // A log with entries (or with history before its first index) must come with its own state
    // file, and both must be this node's of this cluster.
    let log_range = (log.last_index() >= log.first_index() || log.first_index() > LogIndex(1))
        .then(|| (log.first_index(), log.last_index()));
    let identity = Identity {
        cluster_id: config.cluster_id(),
        node_id: id.0,
    };
    let state = RaftState::open_checked(&UringVfs, directory, identity, log_range)
        .map_err(|e| storage(Box::new(e)))?;
    let hard_state = state.state().hard_state();
    let snapshot = recover_snapshot(&UringVfs, directory, &mut log)?;
    tracing::info!(
        first = %log.first_index(),
        last = %log.last_index(),
        term = %hard_state.term,
        snapshot = ?snapshot.as_ref().map(|c| c.id.index),
        "log opened"
    );
    let (engine, view, task) = Engine::new(log, state);
    Ok(OpenedStorage {
        engine,
        view,
        task,
        hard_state,
        snapshot,
    })
}

/// The snapshot half of [`open_storage`], over any [`Vfs`] (the simulator runs it on `SimFs`):
/// removes unfinished snapshot files, chooses the newest valid snapshot (refusing when the log
/// starts after what it covers), and resets a log that does not hold the snapshot's last entry
/// with its term to it (a crash during an install from the leader, after the snapshot's rename).
///
/// # Errors
/// [`NodeError::Snapshot`] as [`open_storage`]; [`NodeError::Storage`] if the reset fails.
pub fn recover_snapshot(
    vfs: &dyn Vfs,
    directory: &Path,
    log: &mut RaftLog,
) -> Result<Option<ChosenSnapshot>, NodeError> {
    let snapshot = choose_snapshot(vfs, directory, log)?;
    if let Some(c) = &snapshot {
        let holds = log.term(c.id.index).ok() == Some(c.id.term);
        if !holds {
            tracing::warn!(
                "the log does not hold the last entry of snapshot {} (log {}..={}): resetting the \
                 log to it (finishing an install from the leader)",
                c.path.display(),
                log.first_index(),
                log.last_index()
            );
            log.reset(c.id.index, c.id.term)
                .map_err(|e| NodeError::Storage(Box::new(e)))?;
        }
    }
    Ok(snapshot)
}

/// The newest valid snapshot of `directory`, checked against the log (see [`open_storage`]).
fn choose_snapshot(
    vfs: &dyn Vfs,
    directory: &Path,
    log: &RaftLog,
) -> Result<Option<ChosenSnapshot>, NodeError> {
    let refuse = |message: String| NodeError::Snapshot {
        directory: directory.to_path_buf(),
        message,
    };
    let removed = remove_temp_files(vfs, directory).map_err(|e| refuse(e.to_string()))?;
    for path in removed {
        tracing::info!("removed {} (an unfinished snapshot)", path.display());
    }
    let newest = newest_valid(vfs, directory).map_err(|e| refuse(e.to_string()))?;
    for d in &newest.damaged {
        tracing::error!("snapshot {} is damaged: {}", d.path.display(), d.error);
    }
    let first = log.first_index();
    let chosen = newest.chosen.map(|v| ChosenSnapshot {
        id: SnapshotId {
            index: v.summary.meta.index,
            term: v.summary.meta.term,
        },
        voters: v.summary.meta.voters.clone(),
        learners: v.summary.meta.learners.clone(),
        path: v.path,
    });
    let covered = chosen.as_ref().map_or(LogIndex::ZERO, |c| c.id.index);
    if first > covered.next() {
        let why = match (&chosen, newest.damaged.first()) {
            (_, Some(d)) => format!(
                "the newest snapshot {} is damaged ({})",
                d.path.display(),
                d.error
            ),
            (Some(c), None) => format!("the newest snapshot ends at index {}", c.id.index),
            (None, None) => "there is no snapshot".to_string(),
        };
        return Err(refuse(format!(
            "the log starts at index {first} and {why}: the state before index {first} is \
             in no valid snapshot, so starting would lose acknowledged writes. Restore this \
             member from a healthy one (README.md, \"Snapshots and log compaction\")"
        )));
    }
    Ok(chosen)
}

/// The key-value store to start with: restored from `snapshot`, or empty.
///
/// # Errors
/// [`NodeError::Snapshot`] if the snapshot cannot be read or restored (it was verified just
/// before, so this is a disk failure or a payload the store refuses).
pub fn restore_store(
    vfs: &dyn Vfs,
    snapshot: Option<&ChosenSnapshot>,
) -> Result<KvStore, NodeError> {
    let mut store = KvStore::new();
    if let Some(c) = snapshot {
        let started = std::time::Instant::now();
        restore_from_file(vfs, &c.path, c.id, &mut store).map_err(|message| {
            NodeError::Snapshot {
                directory: c.path.clone(),
                message,
            }
        })?;
        tracing::info!(
            "📸 Restored the snapshot at index {} (term {}) in {} ms",
            c.id.index,
            c.id.term,
            started.elapsed().as_millis()
        );
    }
    Ok(store)
}

/// Replaces `machine` by the snapshot file at `path`, which must be the snapshot `id`.
///
/// # Errors
/// The file cannot be read, holds another snapshot, or the machine refuses its payload.
pub fn restore_from_file<M: Snapshot>(
    vfs: &dyn Vfs,
    path: &Path,
    id: SnapshotId,
    machine: &mut M,
) -> Result<(), String> {
    let mut reader = SnapshotReader::open(vfs, path).map_err(|e| e.to_string())?;
    let meta = reader.meta();
    if meta.index != id.index || meta.term != id.term {
        return Err(format!(
            "{} holds the snapshot at index {} term {}, not index {} term {}",
            path.display(),
            meta.index,
            meta.term,
            id.index,
            id.term
        ));
    }
    machine
        .restore_from(&mut reader)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// How the node snapshots, from the cluster config.
pub fn snapshot_policy(config: &ClusterConfig) -> SnapshotPolicy {
    SnapshotPolicy {
        every_entries: config.cluster_settings.snapshot_entries,
        catchup_entries: config.cluster_settings.snapshot_catchup_entries,
        keep: SNAPSHOTS_KEPT,
        log_percent: config.cluster_settings.snapshot_log_percent,
    }
}

/// The core's configuration derived from the cluster config (times in ticks of [`TICK`]).
pub fn core_config(config: &ClusterConfig, id: NodeId, rng_seed: u64) -> raft::Config {
    let s = &config.cluster_settings;
    let ticks = |ms: u64| ms * 1000 / TICK.as_micros() as u64;
    let voters = config.nodes.iter().map(|n| n.id()).collect();
    raft::Config {
        election_ticks_min: ticks(s.election_timeout_range.min),
        election_ticks_max: ticks(s.election_timeout_range.max),
        heartbeat_ticks: ticks(s.heartbeat_interval),
        max_entries_per_msg: s.max_entries_per_query,
        max_bytes_per_msg: MESSAGE_PAYLOAD_BYTES_MAX,
        max_inflight_msgs: INFLIGHT_APPENDS_MAX,
        max_entry_payload_bytes: config.entry_payload_max_bytes() as u64,
        pre_vote: true,
        check_quorum: true,
        ..raft::Config::new(id, voters, rng_seed)
    }
}

/// A seed that differs between nodes and between restarts (election jitter must not repeat in
/// lockstep across the cluster). The simulator, not the node, is where runs must be reproducible.
pub fn election_seed(id: NodeId) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // SplitMix64 finaliser: spreads nearby inputs over the whole range.
    let mut z = nanos ^ (u64::from(id.0) << 32) ^ u64::from(std::process::id());
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A state machine shared between the event loop and request handlers on the same thread.
impl<M: StateMachine> StateMachine for Arc<Mutex<M>> {
    type Response = M::Response;

    fn apply(&mut self, entry: &crate::types::LogEntry) -> M::Response {
        // Poisoning means a panic inside apply, which already stopped the loop.
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .apply(entry)
    }

    fn member_record(node: NodeId, peer_urls: &[String]) -> Option<Vec<u8>> {
        M::member_record(node, peer_urls)
    }

    fn is_member_record(payload: &[u8]) -> bool {
        M::is_member_record(payload)
    }

    fn member_urls(&self) -> std::collections::BTreeMap<NodeId, Vec<String>> {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .member_urls()
    }
}

/// The node's tasks inside a running (tokio-uring) runtime: the gRPC server on `listener` (with
/// the etcd v3 API over a fresh [`KvStore`]), the peer clients, and the event loop driving `core`
/// over `durable`, until `shutdown` completes. Then the loop finishes its in-flight writes, and
/// the server stops accepting and finishes its in-flight RPCs (bounded by
/// [`SERVER_STOP_TIMEOUT`]).
///
/// # Errors
/// `Transport` if the listener or a peer address is unusable, `Loop` for a fatal loop error.
#[allow(clippy::too_many_arguments)]
pub async fn run_node<C, D>(
    config: &ClusterConfig,
    id: NodeId,
    listener: std::net::TcpListener,
    core: C,
    durable: D,
    recovered: Recovered,
    shutdown: impl Future<Output = ()>,
) -> Result<LoopStats, NodeError>
where
    C: Consensus + 'static,
    D: Durable<Log = C::Log> + 'static,
{
    let store: SharedStore = Arc::new(Mutex::new(recovered.store));
    let members = Members::from_config(config);
    let limits = KvLimits::default().fitting_entries_of(config.entry_payload_max_bytes());
    let etcd_store = Arc::clone(&store);
    let min_lease_ttl = min_lease_ttl_s(config.cluster_settings.election_timeout_range.max);
    // Every commit of the store tells the hub (src/etcd/watch.rs); it costs an atomic load while
    // nobody watches.
    let hub = attach_hub(&store, members.cluster_id, members.id_of(Some(id)));
    let watch_config = WatchConfig {
        progress_notify_interval: Duration::from_millis(
            config.cluster_settings.watch_progress_notify_interval,
        ),
        ..WatchConfig::default()
    };
    let etcd_api = move |inbound: mpsc::Sender<Inbound<KvResponse>>,
                         tls: Option<Arc<grpc::tls::NodeTls>>| {
        let api = EtcdApi::new(id, members, inbound, etcd_store, limits, tls);
        let (kv, maintenance, cluster) = api.services();
        let watch_service = WatchService::new(api.clone(), hub, watch_config);
        let watch = watch_service.clone().server();
        let (lock_service, election_service) =
            crate::etcd::concurrency::plain_services(api.kv_service());
        let (lease_service, lease_clock) = LeaseService::plain(api.clone(), min_lease_ttl);
        let gateway = crate::etcd::gateway::router(crate::etcd::gateway::Gateway {
            kv: api.kv_service(),
            lease: lease_service.clone(),
            maintenance: api.maintenance_service(),
            cluster: api.cluster_service(),
            lock: lock_service.clone(),
            election: election_service.clone(),
            watch: watch_service,
        });
        let lease = crate::etcdpb::etcdserverpb::lease_server::LeaseServer::new(lease_service);
        let lock = crate::etcdpb::v3lockpb::lock_server::LockServer::new(lock_service);
        let election =
            crate::etcdpb::v3electionpb::election_server::ElectionServer::new(election_service);
        // The leader's expiry checks; the task ends when the event loop stops.
        tokio::task::spawn_local(crate::etcd::lease::run_expiry(api, lease_clock));
        let mut routes = tonic::service::RoutesBuilder::default();
        routes
            .add_service(kv)
            .add_service(maintenance)
            .add_service(cluster)
            .add_service(lock)
            .add_service(election)
            .add_service(lease)
            .add_service(watch);
        (routes, gateway, crate::etcd::server::PATH_FILTER)
    };
    let snapshots = recovered.snapshots.map(|setup| {
        let view: SnapshotView<SharedStore> = Box::new(|store: &SharedStore| {
            let store = store.lock().unwrap_or_else(PoisonError::into_inner);
            Snapshot::snapshot_view(&*store)
        });
        (setup, view)
    });
    run_node_inner(
        config,
        id,
        listener,
        core,
        durable,
        store,
        recovered.applied,
        snapshots,
        etcd_api,
        shutdown,
    )
    .await
}

/// What a node starts from: the store (restored from a snapshot, or empty), the index it
/// reflects, and where its snapshots live.
pub struct Recovered {
    pub store: KvStore,
    pub applied: LogIndex,
    /// `None`: the node takes no snapshots and cannot install one (in-memory test nodes).
    pub snapshots: Option<SnapshotSetup>,
}

impl Recovered {
    /// An empty store, nothing applied, no snapshots (nodes without a data directory).
    pub fn in_memory() -> Recovered {
        Recovered {
            store: KvStore::new(),
            applied: LogIndex::ZERO,
            snapshots: None,
        }
    }
}

/// Where a node keeps its snapshots and when it takes them.
pub struct SnapshotSetup {
    pub vfs: Arc<dyn Vfs>,
    /// The node directory.
    pub dir: std::path::PathBuf,
    pub policy: SnapshotPolicy,
    pub cluster_id: u64,
}

impl<M: Snapshot> Snapshot for Arc<Mutex<M>> {
    fn snapshot_view(&self) -> Box<dyn crate::state_machine::SnapshotSource> {
        let machine = self.lock().unwrap_or_else(PoisonError::into_inner);
        M::snapshot_view(&machine)
    }

    fn restore_from(
        &mut self,
        r: &mut dyn std::io::Read,
    ) -> Result<(), crate::state_machine::SnapshotError> {
        let mut machine = self.lock().unwrap_or_else(PoisonError::into_inner);
        M::restore_from(&mut machine, r)
    }
}

/// [`run_node`] with an embedder's own state machine and without the etcd API (the Raft and
/// Operator services only; Operator proposals are applied to `state_machine`).
///
/// # Errors
/// As [`run_node`].
pub async fn run_node_with<C, D, M>(
    config: &ClusterConfig,
    id: NodeId,
    listener: std::net::TcpListener,
    core: C,
    durable: D,
    state_machine: M,
    shutdown: impl Future<Output = ()>,
) -> Result<LoopStats, NodeError>
where
    C: Consensus + 'static,
    D: Durable<Log = C::Log> + 'static,
    M: StateMachine + Snapshot + 'static,
{
    let no_client_api = |_, _| {
        (
            tonic::service::RoutesBuilder::default(),
            axum::Router::new(),
            grpc::PathFilter::RAFT_ONLY,
        )
    };
    run_node_inner(
        config,
        id,
        listener,
        core,
        durable,
        state_machine,
        LogIndex::ZERO,
        None,
        no_client_api,
        shutdown,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn run_node_inner<C, D, M>(
    config: &ClusterConfig,
    id: NodeId,
    listener: std::net::TcpListener,
    core: C,
    durable: D,
    state_machine: M,
    applied: LogIndex,
    snapshots: Option<(SnapshotSetup, SnapshotView<M>)>,
    client_api: impl FnOnce(
        mpsc::Sender<Inbound<M::Response>>,
        Option<Arc<grpc::tls::NodeTls>>,
    ) -> (
        tonic::service::RoutesBuilder,
        axum::Router,
        grpc::PathFilter,
    ),
    shutdown: impl Future<Output = ()>,
) -> Result<LoopStats, NodeError>
where
    C: Consensus + 'static,
    D: Durable<Log = C::Log> + 'static,
    M: StateMachine + Snapshot + 'static,
{
    let files = snapshots.as_ref().map(|(setup, _)| {
        Arc::new(NodeSnapshots::new(
            Arc::clone(&setup.vfs),
            setup.dir.clone(),
        ))
    });
    let addresses: HashMap<NodeId, SocketAddr> =
        config.nodes.iter().map(|n| (n.id(), n.address())).collect();
    let peer_list: Vec<(NodeId, SocketAddr)> = addresses
        .iter()
        .filter(|(peer, _)| **peer != id)
        .map(|(peer, addr)| (*peer, *addr))
        .collect();
    // Every size limit on input derives from what one log entry may hold (issue 11: a request
    // that passed every check and then failed the durable write stopped the whole cluster).
    let entry_payload_max = config.entry_payload_max_bytes();
    let limits = Limits {
        entries_per_message_max: config.cluster_settings.max_entries_per_query as usize,
        entry_payload_bytes_max: entry_payload_max,
        ..Limits::default()
    };
    let local_addr = listener.local_addr().map_err(GrpcError::Serve)?;
    // Issue 16: TLS when `tls:` is configured (certificate files are read here, so a missing
    // one stops the start with an error naming it), and the gate in front of the Raft service.
    let tls = match &config.tls {
        None => None,
        Some(settings) => Some(Arc::new(
            grpc::tls::NodeTls::load(settings, config, id).map_err(GrpcError::Tls)?,
        )),
    };
    warn_if_exposed(local_addr, tls.is_some());
    let gate = Arc::new(grpc::gate::PeerGate::new(config, id, tls.is_some()));
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE_CAPACITY);
    let (stop_server_tx, stop_server_rx) = tokio::sync::oneshot::channel::<()>();
    let (extra, http, filter) = client_api(inbound_tx.clone(), tls.clone());
    tracing::info!("🌐 Starting gRPC server on {local_addr}");
    let server = tokio::task::spawn_local(grpc::serve_with(
        listener,
        ServerConfig {
            local_id: id,
            limits,
            snapshots: files
                .clone()
                .map(|f| f as Arc<dyn crate::grpc::SnapshotFiles>),
            gate: Some(Arc::clone(&gate)),
            tls: tls.clone(),
        },
        inbound_tx.clone(),
        extra,
        http,
        filter,
        async move {
            let _ = stop_server_rx.await;
        },
    ));
    let peer_config = PeerConfig {
        limits,
        snapshots: files.map(|f| f as Arc<dyn crate::grpc::SnapshotFiles>),
        cluster_id: Some(gate.cluster_id()),
        tls,
        ..PeerConfig::default()
    };
    let peers = Peers::start(id, &peer_list, peer_config, inbound_tx)?;
    tracing::info!("🔄 Starting Raft event loop...");
    // The gRPC server is accepting and the loop starts now: tell systemd (Type=notify).
    notify::ready();
    let event_loop = EventLoop::new(
        core,
        durable,
        state_machine,
        peers,
        LoopConfig {
            tick: TICK,
            addresses,
            inbound_batch_max: INBOUND_BATCH_MAX,
            proposals_pending_max: PROPOSALS_PENDING_MAX,
            reads_pending_max: READS_PENDING_MAX,
            // Thesis §3.10 at shutdown: a handover normally takes a round trip; two maximum
            // election timeouts leave room for a target that must catch up first.
            handover_max: 2 * Duration::from_millis(
                config.cluster_settings.election_timeout_range.max,
            ),
        },
        applied,
    )
    .with_gate(Arc::clone(&gate))
    .with_learners_max(config.cluster_settings.learners_max as usize)
    // A removed node stops, as etcd's does; the evidence must last a few election timeouts
    // (event_loop::RemovalWatch says why).
    .with_removal_stop(
        REMOVAL_GRACE_ELECTIONS
            * Duration::from_millis(config.cluster_settings.election_timeout_range.max),
        config.node(id.0).is_ok(),
    );
    let event_loop = match snapshots {
        None => event_loop,
        Some((setup, view)) => {
            let voters = config.nodes.iter().map(|n| n.id()).collect();
            let snapshotter = Snapshotter::new(
                id,
                Arc::clone(&setup.vfs),
                setup.dir.clone(),
                setup.cluster_id,
                PAYLOAD_KIND_KV,
                voters,
                setup.policy,
                applied,
            );
            let installer = snapshot_installer(setup.vfs, setup.dir);
            event_loop.with_snapshots(snapshotter, view, installer)
        }
    };
    let loop_result = event_loop.run(inbound_rx, shutdown).await;
    // Stop accepting, let in-flight RPCs finish (the loop dropped their answers: they end at once
    // with an error status); do not let a misbehaving client hold the process open forever.
    let _ = stop_server_tx.send(());
    match tokio::time::timeout(SERVER_STOP_TIMEOUT, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "gRPC server stopped with an error"),
        Ok(Err(e)) => tracing::error!(error = %e, "gRPC server task failed"),
        Err(_) => tracing::info!(
            "gRPC server still had client connections open after {SERVER_STOP_TIMEOUT:?}; \
             closing them"
        ),
    }
    Ok(loop_result?)
}

/// How a node installs a leader's snapshot: the transport left it durable in `dir` under its
/// final name; the state machine is replaced by its payload. The simulator installs through this
/// same function over `SimFs`.
pub fn snapshot_installer<M: Snapshot + 'static>(
    vfs: Arc<dyn Vfs>,
    dir: std::path::PathBuf,
) -> crate::driver::SnapshotInstaller<M> {
    Box::new(move |snap, machine| {
        let started = std::time::Instant::now();
        let path = dir.join(crate::storage::snapshot::snapshot_file_name(snap.index));
        restore_from_file(&*vfs, &path, snap, machine)?;
        crate::metrics::with_current(|m| {
            m.snapshot_install_seconds
                .observe(started.elapsed().as_secs_f64())
        });
        tracing::info!(
            "📸 Installed the leader's snapshot at index {} (term {}) in {} ms",
            snap.index,
            snap.term,
            started.elapsed().as_millis()
        );
        Ok(())
    })
}

/// Completes on SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: the node reports READY=1 before its loop polls the future, and a
/// SIGTERM in between must not find the default action (death without STOPPING=1 or a clean
/// shutdown).
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (term, interrupt) {
            (Ok(mut term), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                    _ = interrupt.recv() => tracing::info!("SIGINT received, shutting down"),
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the node");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        notify::stopping();
    }
}
