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
//!    event loop ([`event_loop`]) → 🔄, until SIGINT/SIGTERM, then stop accepting, finish the
//!    in-flight write batches and close the files.
//!
//! The state machine is the key-value store ([`crate::kv::KvStore`], etcd semantics), rebuilt by
//! applying the committed log from index 1 at every start (there are no snapshots yet). The event
//! loop applies to it and the etcd read handlers read it: both hold it as a
//! [`crate::etcd::server::SharedStore`] on the node's one thread. Embedders with their own
//! [`StateMachine`] use [`run_node_with`] (no etcd API then).
//!
//! Invariant: while this process runs, it is the only writer of its data directory (the log's
//! lock, held by the `RaftLog` for as long as it is open; the kernel drops it when the process
//! dies, even by `kill -9`, so there is never a stale lock to clean up).

pub mod event_loop;
pub mod logging;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::ClusterConfig;
use crate::driver::Inbound;
use crate::etcd::members::Members;
use crate::etcd::server::{EtcdApi, SharedStore};
use crate::grpc::{self, GrpcError, Limits, PeerConfig, Peers, ServerConfig};
use crate::kv::{KvLimits, KvResponse, KvStore};
use crate::raft::{self, HardState, RaftNode};
use crate::storage::engine::{Engine, EngineTask, LogView};
use crate::storage::state::{Identity, RaftState};
use crate::storage::uring::UringVfs;
use crate::storage::{LogConfig, LogError, RaftLog};
use crate::types::{LogIndex, NodeId};

pub use self::event_loop::{Consensus, EventLoop, LoopConfig, LoopError, LoopStats, StateMachine};
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
/// How long a graceful stop waits for the gRPC server after the event loop stopped. By then every
/// in-flight RPC has its answer (or its reply handle was dropped: an error status), so the server
/// only has to flush them; what can remain are idle client connections, on which hyper's HTTP/2
/// graceful shutdown may wait indefinitely for the client to hang up (hyperium/hyper#4170).
pub const SERVER_STOP_TIMEOUT: Duration = Duration::from_millis(500);

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
    #[error("cannot start the tokio-uring runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Loop(#[from] LoopError),
    /// Opening the durable log or state failed (corruption names the file and offset).
    #[error("storage: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Runs node `node_id` of `config` until SIGINT/SIGTERM: the steps of the module docs, in order.
/// `config_path` is only for the log.
///
/// # Errors
/// The first startup step that fails (see the module docs), or a fatal runtime error.
pub fn run(config: &ClusterConfig, node_id: u32, config_path: &Path) -> Result<(), NodeError> {
    let me = config.node(node_id)?;
    let id = NodeId(node_id);
    let directory = config.node_directory(node_id);
    tracing::info!(
        "🚀 Starting Raft node {} with config: {}",
        node_id,
        config_path.display()
    );
    tracing::info!("📋 Cluster configuration:");
    tracing::info!("   Node ID: {}", me.node_id);
    tracing::info!("   Address: {}", me.address());
    tracing::info!("   Cluster size: {}", config.nodes.len());
    tracing::info!("   Log directory: {}", directory.display());

    let listener = grpc::bind(me.address())?;
    let (engine, log, task, hard_state) = open_storage(config, id, &directory)?;
    let core = RaftNode::new(core_config(config, id, election_seed(id)), hard_state, log)?;
    tracing::info!("✅ Raft node created successfully");
    // tokio-uring panics when io_uring cannot be set up (old kernel, seccomp, memlock limits):
    // probe first so that case is an error naming the cause, not a panic.
    io_uring::IoUring::new(8).map_err(NodeError::Runtime)?;
    let mut builder = tokio_uring::builder();
    builder.entries(256);
    let config = config.clone();
    builder.start(async move {
        tokio::task::spawn_local(task.run());
        run_node(&config, id, listener, core, engine, shutdown_signal()).await?;
        tracing::info!("node {id} stopped");
        Ok(())
    })
}

/// Step 3 of the module docs: opens the node directory's log (taking its lock) and state file
/// (checking that the directory is this node's of this cluster, and that a log comes with its
/// state file: `RaftState::open_checked`), and builds the append engine over them. Returns the engine, the core's view of the log, the
/// engine's task (to run inside the runtime) and the durable hard state.
///
/// # Errors
/// [`NodeError::DataDirInUse`] if another process holds the directory; storage errors while
/// opening (corruption names the file and offset; another node's or cluster's directory, or a log
/// without its state file, names the directory and the way out).
pub fn open_storage(
    config: &ClusterConfig,
    id: NodeId,
    directory: &Path,
) -> Result<(Engine, LogView, EngineTask, HardState), NodeError> {
    let storage = |e: Box<dyn std::error::Error + Send + Sync>| NodeError::Storage(e);
    let log_config = LogConfig {
        segment_size_bytes: config.cluster_settings.log_segment_size,
        ..LogConfig::new(directory)
    };
    let log = RaftLog::open(log_config).map_err(|e| match e {
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
    tracing::info!(
        first = %log.first_index(),
        last = %log.last_index(),
        term = %hard_state.term,
        "log opened"
    );
    let (engine, view, task) = Engine::new(log, state);
    Ok((engine, view, task, hard_state))
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
}

/// The node's tasks inside a running (tokio-uring) runtime: the gRPC server on `listener` (with
/// the etcd v3 API over a fresh [`KvStore`]), the peer clients, and the event loop driving `core`
/// over `durable`, until `shutdown` completes. Then the loop finishes its in-flight writes, and
/// the server stops accepting and finishes its in-flight RPCs (bounded by
/// [`SERVER_STOP_TIMEOUT`]).
///
/// # Errors
/// `Transport` if the listener or a peer address is unusable, `Loop` for a fatal loop error.
pub async fn run_node<C, D>(
    config: &ClusterConfig,
    id: NodeId,
    listener: std::net::TcpListener,
    core: C,
    durable: D,
    shutdown: impl Future<Output = ()>,
) -> Result<LoopStats, NodeError>
where
    C: Consensus + 'static,
    D: Durable<Log = C::Log> + 'static,
{
    let store: SharedStore = Arc::new(Mutex::new(KvStore::new()));
    let members = Members::from_config(config);
    let limits = KvLimits::default().fitting_entries_of(config.entry_payload_max_bytes());
    let etcd_store = Arc::clone(&store);
    let etcd_api = move |inbound: mpsc::Sender<Inbound<KvResponse>>| {
        let api = EtcdApi::new(id, members, inbound, etcd_store, limits);
        let (kv, maintenance, cluster) = api.services();
        let mut routes = tonic::service::RoutesBuilder::default();
        routes
            .add_service(kv)
            .add_service(maintenance)
            .add_service(cluster);
        (routes, crate::etcd::server::PATH_FILTER)
    };
    run_node_inner(
        config, id, listener, core, durable, store, etcd_api, shutdown,
    )
    .await
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
    M: StateMachine + 'static,
{
    let no_client_api = |_| {
        (
            tonic::service::RoutesBuilder::default(),
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
    client_api: impl FnOnce(
        mpsc::Sender<Inbound<M::Response>>,
    ) -> (tonic::service::RoutesBuilder, grpc::PathFilter),
    shutdown: impl Future<Output = ()>,
) -> Result<LoopStats, NodeError>
where
    C: Consensus + 'static,
    D: Durable<Log = C::Log> + 'static,
    M: StateMachine + 'static,
{
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
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE_CAPACITY);
    let (stop_server_tx, stop_server_rx) = tokio::sync::oneshot::channel::<()>();
    let (extra, filter) = client_api(inbound_tx.clone());
    tracing::info!("🌐 Starting gRPC server on {local_addr}");
    let server = tokio::task::spawn_local(grpc::serve_with(
        listener,
        ServerConfig {
            local_id: id,
            limits,
            snapshots: None,
        },
        inbound_tx.clone(),
        extra,
        filter,
        async move {
            let _ = stop_server_rx.await;
        },
    ));
    let peer_config = PeerConfig {
        limits,
        ..PeerConfig::default()
    };
    let peers = Peers::start(id, &peer_list, peer_config, inbound_tx)?;
    tracing::info!("🔄 Starting Raft event loop...");
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
        },
        LogIndex::ZERO,
    );
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

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the node");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
    }
}
