//! The deterministic cluster: N nodes, each running the node's own Ready driver
//! ([`crate::driver`]) over the node's own append engine ([`crate::storage::engine`]) on its own
//! simulated disk ([`SimFs`]), the network between them, simulated time, client proposals and
//! reads, crashes with power loss, and the safety checkers after every event.
//!
//! # What runs here is what runs in the node
//! A node is a [`Driver`] over a `RaftNode<LogView>` and an [`Engine`] whose `RaftLog` and
//! `RaftState` live on the node's `SimFs`; the engine's task is polled beside the driver as the
//! node's `LocalSet` polls it. Peer requests enter through the driver's mailbox
//! (`Inbound::Request` with a oneshot reply handle) and the response goes back on the network only
//! if it comes out of that handle: the node's reply matching, durability waits and "declined"
//! requests are exercised as they are. Proposals and reads enter as `Inbound::Propose` and
//! `Inbound::Read` and their outcomes are what the driver answers.
//!
//! # Time and events
//! Time is a `u64` count of simulated microseconds. Every node ticks with its own period (clock
//! speeds differ by node); deliveries, disk completions and the scenario's timers sit in one
//! priority queue ordered by (time, sequence number), so ties break in insertion order and a run
//! is a pure function of its seed. [`Cluster::step`] processes exactly one event: a node's tick,
//! a message delivery, a durable write of a node's disk completing, or a scenario timer.
//!
//! # The disk
//! Each durable write the engine starts (a segment append, a state-file update) lands in the
//! `SimFs` page cache at once; its fdatasync completes after a latency drawn from the plan's
//! [`DiskConfig`]. Writes in flight together complete in any order their latencies give, so the
//! state file's write and the log's of one group land in either order, as on a real disk.
//!
//! # What a crash loses
//! The node's process (driver, core, engine, in-memory state machine) and whatever a power loss of
//! its `SimFs` takes: any subset of the sectors no fdatasync covered, torn sectors, directory
//! changes no directory fsync covered. Messages already sent still arrive; messages to a node that
//! is down are lost. The node restarts by opening its log and state file through the storage
//! engine's own recovery, and must find everything the engine had reported durable (the
//! Durability property), then builds a new core with a fresh RNG seed.
//!
//! # Snapshots (when [`ClusterConfig::snapshots`] is set)
//! A node's [`Snapshotter`] decides when to snapshot and writes the file through the node's own
//! `write_snapshot` on its `SimFs`; `Driver::snapshot_taken` compacts. A leader's InstallSnapshot
//! becomes a transfer of the file in chunks, each a network message (lost, duplicated,
//! reordered), read and received by the node's own `NodeSnapshots`; the follower's driver gets
//! the message once the file is whole and durable, and installs through the node's own
//! installer. Restarts run the node's own `recover_snapshot`. Power cuts land inside snapshot
//! writes and installs. The transport's stream logic (`grpc::snapshot::send_snapshot`, tokio)
//! is the one part modelled rather than run: [`Transfer`] follows it step by step.
//! Invariant: a node's mirror holds its whole logical log from index 1 (compaction does not
//! shorten it; an install replaces it by the committed log up to the snapshot's index).
//!
//! # Checks
//! After each event, the node it touched is checked: `check_invariants()`, then the
//! [`SafetyChecker`] properties over the simulator's mirror of its log; every outgoing
//! acknowledgement and vote is checked against the sender's durable state; every applied entry
//! against every other node's; every granted read against the writes acknowledged before it was
//! issued (Read linearizability, thesis §6.4). Nodes an event did not touch did not change, so
//! checking only the touched node after each event is the same as checking every node after
//! every event. A panic inside the node's code is caught and reported like a violation. Any
//! failure panics with the property, its paper section, the details, the seed, the last events
//! and the replay command.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::sync::oneshot;

use crate::driver::{
    Consensus, Driver, DriverConfig, Inbound, Outbox, ProposeOutcome, ProposeRefused, ReadGrant,
    ReadRefused,
};
use crate::grpc::{AcceptError, SnapshotFiles};
use crate::mutation::Mutation;
use crate::node::snapshots::{NodeSnapshots, SnapshotPolicy, Snapshotter};
use crate::raft::{
    ConfChange, Config, Envelope, HardState, Membership, Message, ProposeError, RaftNode,
    ReadIndexError, Ready, Role, SnapshotId, TransferError,
};
use crate::state_machine::{Snapshot, SnapshotError, SnapshotSource, StateMachine};
use crate::storage::engine::{Engine, LogView, WriteBatch};
use crate::storage::file::{PowerLossReport, SimFs};
use crate::storage::snapshot::{decode_header, PAYLOAD_KIND_OPAQUE, SNAPSHOT_HEADER_MAX_BYTES};
use crate::storage::state::{Identity, RaftState};
use crate::storage::{LogConfig, RaftLog};
use crate::testing::checker::{
    entry_hash, AckedProposal, LogMirror, Property, ReadFloor, SafetyChecker, Violation,
};
use crate::testing::disk::DiskConfig;
use crate::testing::network::{NetConfig, SimNetwork};
use crate::testing::rng::SimRng;
use crate::types::{EntryType, LogEntry, LogIndex, NodeId, Term};

/// Segment size of every simulated node's log: small, so that runs rotate segments often.
pub const SIM_SEGMENT_BYTES: u64 = 64 << 10;

/// How to build a cluster. Every node gets `core` with its own `id` and RNG seed.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub seed: u64,
    /// The voters of the bootstrap configuration: nodes `0..nodes`.
    pub nodes: usize,
    /// Further nodes `nodes..nodes + spares`, up from the start but outside the configuration
    /// (joining nodes with empty disks) until a configuration change adds them.
    pub spares: usize,
    /// A template: `id`, `voters`, `rng_seed` and `max_entry_payload_bytes` are filled in per
    /// node.
    pub core: Config,
    pub net: NetConfig,
    pub disk: DiskConfig,
    /// Each node's tick period in simulated microseconds (index = node).
    pub tick_us: Vec<u64>,
    /// Printed with every failure: how to replay this run.
    pub replay: String,
    /// Snapshots and log compaction (`None`: nodes never snapshot; their logs only grow).
    pub snapshots: Option<SnapshotSim>,
    /// A deliberate bug switched on in the production code while this cluster drives a node
    /// (only in the crate's unit-test build; see [`crate::mutation`]).
    pub mutation: Option<Mutation>,
}

/// How simulated nodes take, send and install snapshots.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotSim {
    /// The node's policy, as the config gives it to a real node (`snapshot_entries`,
    /// `snapshot_catchup_entries`, files kept).
    pub policy: SnapshotPolicy,
    /// Once a snapshot is due, the chance that a given event of the node takes it (so snapshots
    /// land at random points, not exactly every `every_entries`).
    pub take_chance: f64,
    /// The chance that the power is cut in the middle of a snapshot's write (after a random
    /// number of disk operations of it), and of an install (the received file's sync and rename,
    /// the core's decision, the log's reset).
    pub write_cut_chance: f64,
    pub install_cut_chance: f64,
    /// Bytes of snapshot file per chunk on the simulated network (the real transport sends
    /// `grpc::snapshot::CHUNK_BYTES`; small here so that every transfer has several chunks).
    pub chunk_bytes: usize,
    /// A stream whose answer has not arrived after this long is given up (the real transport
    /// bounds each chunk by the RPC timeout).
    pub stream_timeout_us: u64,
}

/// The node index of a `NodeId` (ids are `1..=n`).
pub fn node_index(id: NodeId) -> usize {
    assert!(id.0 >= 1, "NodeId 0 is not a simulator node");
    id.0 as usize - 1
}

/// The `NodeId` of node index `i`.
pub fn node_id(i: usize) -> NodeId {
    NodeId(i as u32 + 1)
}

/// The state machine of a simulated node: a digest chained over every applied entry, and 16
/// registers the entries scatter their hashes into (so a snapshot has a payload of several
/// chunks). Two machines that applied the same entries in the same order have the same digest;
/// the cluster reports the digest after every index to the checker ([`SafetyChecker::on_state`]).
#[derive(Debug, Default)]
pub struct SimMachine {
    index: u64,
    digest: u64,
    regs: [u64; SIM_MACHINE_REGS],
    /// (index, digest) after each apply or restore, drained by the cluster after each event.
    journal: std::cell::RefCell<Vec<(u64, u64)>>,
}

const SIM_MACHINE_REGS: usize = 16;
const SIM_MACHINE_BYTES: usize = 16 + 8 * SIM_MACHINE_REGS;

impl SimMachine {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(SIM_MACHINE_BYTES);
        b.extend_from_slice(&self.index.to_le_bytes());
        b.extend_from_slice(&self.digest.to_le_bytes());
        for r in &self.regs {
            b.extend_from_slice(&r.to_le_bytes());
        }
        b
    }

    fn take_journal(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut *self.journal.borrow_mut())
    }

    /// The index of the last entry this machine reflects.
    pub fn index(&self) -> u64 {
        self.index
    }
}

impl StateMachine for SimMachine {
    type Response = ();

    fn apply(&mut self, entry: &LogEntry) {
        let h = entry_hash(entry);
        self.index = entry.index.0;
        self.digest = crate::testing::rng::mix64(self.digest ^ h);
        let reg = (h % SIM_MACHINE_REGS as u64) as usize;
        self.regs[reg] = crate::testing::rng::mix64(self.regs[reg] ^ h);
        self.digest = crate::testing::rng::mix64(self.digest ^ self.regs[reg]);
        self.journal.borrow_mut().push((self.index, self.digest));
    }
}

struct SimMachineView(Vec<u8>);

impl SnapshotSource for SimMachineView {
    fn write_to(&self, w: &mut dyn std::io::Write) -> std::io::Result<u64> {
        w.write_all(&self.0)?;
        Ok(self.0.len() as u64)
    }
}

impl Snapshot for SimMachine {
    fn snapshot_view(&self) -> Box<dyn SnapshotSource> {
        Box::new(SimMachineView(self.encode()))
    }

    fn restore_from(&mut self, r: &mut dyn std::io::Read) -> Result<(), SnapshotError> {
        let mut b = Vec::new();
        r.read_to_end(&mut b)
            .map_err(|source| SnapshotError::Io { offset: 0, source })?;
        if b.len() != SIM_MACHINE_BYTES {
            return Err(SnapshotError::Corrupt {
                offset: 0,
                what: format!("{} bytes, expected {SIM_MACHINE_BYTES}", b.len()),
            });
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        self.index = word(0);
        self.digest = word(1);
        for (k, r) in self.regs.iter_mut().enumerate() {
            *r = word(2 + k);
        }
        self.journal.borrow_mut().push((self.index, self.digest));
        Ok(())
    }
}

/// What one event was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stepped {
    Tick(usize),
    Delivered {
        from: usize,
        to: usize,
    },
    Lost {
        from: usize,
        to: usize,
    },
    DiskDone(usize),
    /// A scenario timer with its tag.
    Timer(u64),
    /// Nothing left to do (every node down and no event queued).
    Idle,
}

/// A client proposal's outcome as the client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by a leader at (index, term); no answer yet.
    Pending { node: usize, index: u64, term: Term },
    /// The node it was sent to was not the leader (or refused it).
    Rejected,
    /// The leader applied it: committed.
    Committed,
    /// The leader applied a different entry at its index: the proposal was lost (allowed).
    Lost,
    /// The leader crashed before answering.
    Unknown,
}

/// A client read's outcome (ReadIndex, thesis §6.4). `floor` is what the read must observe: the
/// acknowledged write with the highest index when it was issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Accepted by a leader; not answered yet.
    Pending {
        node: usize,
        floor: Option<ReadFloor>,
    },
    /// Granted (and checked) at read index `index`.
    Served { index: u64 },
    /// The node was not the leader (or was down).
    Rejected,
    /// The node stepped down before confirming it (the client would retry).
    Dropped,
    /// The node crashed before answering.
    Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterStats {
    pub events: u64,
    pub ticks: u64,
    pub crashes: u64,
    pub restarts: u64,
    /// Crashes whose power loss lost or tore unsynced data or undid a directory change.
    pub torn_writes: u64,
    pub proposals: u64,
    pub committed: u64,
    pub rejected: u64,
    pub lost: u64,
    pub unknown: u64,
    pub applied_entries: u64,
    pub reads: u64,
    pub reads_served: u64,
    pub reads_rejected: u64,
    pub reads_dropped: u64,
    pub reads_unknown: u64,
    /// Durable writes (engine fdatasyncs) the simulated disks completed.
    pub disk_writes: u64,
    /// Snapshots written (and the log compacted behind them), and those a power cut interrupted.
    pub snapshots_taken: u64,
    pub snapshot_writes_cut: u64,
    /// InstallSnapshot transfers started, chunks sent, streams restarted, transfers given up,
    /// snapshots received whole, and installed by the core (the state machine replaced).
    pub transfers: u64,
    pub chunks_sent: u64,
    pub streams_restarted: u64,
    pub transfers_failed: u64,
    pub snapshots_received: u64,
    pub installs: u64,
    /// Installs (receive, decision, reset) a power cut interrupted.
    pub installs_cut: u64,
    /// Restarts that restored the state machine from a snapshot file.
    pub restarts_from_snapshot: u64,
    /// Disks wiped ([`Cluster::wipe`]).
    pub wipes: u64,
}

#[derive(Clone, Debug)]
enum EventKind {
    Deliver {
        from: usize,
        to: usize,
        env: Envelope,
    },
    DiskDone {
        node: usize,
        incarnation: u64,
        op: u64,
    },
    Timer(u64),
    /// One chunk of an InstallSnapshot stream, leader `from` to follower `to`.
    Chunk {
        from: usize,
        to: usize,
        chunk: SimChunk,
    },
    /// The follower's answer ending a stream (everything but the snapshot's acknowledgement,
    /// which is a Raft message).
    ChunkAnswer {
        from: usize,
        to: usize,
        stream: u64,
        answer: StreamEnd,
    },
    /// Leader `node` gives up waiting for stream `stream` of its transfer to `to`.
    StreamTimeout {
        node: usize,
        incarnation: u64,
        to: usize,
        stream: u64,
    },
}

/// A chunk as the real transport sends it (`pb::InstallSnapshotChunk`): the InstallSnapshot
/// message's header, the offset, the bytes, and `done` on the last (empty) one.
#[derive(Clone, Debug)]
struct SimChunk {
    env: Envelope,
    snap: SnapshotId,
    stream: u64,
    offset: u64,
    data: Vec<u8>,
    done: bool,
}

/// How a stream ended on the follower's side.
#[derive(Clone, Copy, Debug)]
enum StreamEnd {
    /// The follower holds this many bytes: resume there.
    ResumeAt(u64),
    /// The bytes or the file were refused: start again from 0.
    Refused,
    /// The whole snapshot is durable and went to the core (its answer follows as a message).
    Finished,
}

/// A leader's transfer of one snapshot to one follower: the simulator's model of
/// `grpc::snapshot::send_snapshot` (streams from an offset, resumed where the follower says,
/// given up after `TRANSFER_ATTEMPTS_MAX` streams in a row without progress).
#[derive(Clone, Debug)]
struct Transfer {
    env: Envelope,
    snap: SnapshotId,
    stream: u64,
    /// Where the current stream started sending / what it sent up to.
    offset: u64,
    confirmed: u64,
    streams_without_progress: u32,
}

#[derive(Clone, Debug)]
struct Event {
    at_us: u64,
    seq: u64,
    kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.at_us, self.seq) == (other.at_us, other.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_us, self.seq).cmp(&(other.at_us, other.seq))
    }
}

/// One line of the bounded trace printed with a failure.
#[derive(Clone, Debug)]
enum TraceRec {
    Tick(usize),
    Deliver {
        from: usize,
        to: usize,
        msg: String,
    },
    Lost {
        from: usize,
        to: usize,
    },
    Disk {
        node: usize,
        entries: usize,
        hard_state: Option<HardState>,
    },
    Crash {
        node: usize,
        loss: PowerLossReport,
    },
    Restart {
        node: usize,
        hard_state: HardState,
        last_index: u64,
    },
    Propose {
        node: usize,
        result: String,
    },
    Read {
        node: usize,
        what: String,
    },
    Role {
        node: usize,
        role: Role,
        term: Term,
    },
    Note(String),
}

impl std::fmt::Display for TraceRec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TraceRec::Tick(i) => write!(f, "tick n{i}"),
            TraceRec::Deliver { from, to, msg } => write!(f, "n{from}->n{to} {msg}"),
            TraceRec::Lost { from, to } => {
                write!(f, "n{from}->n{to} lost (partition or node down)")
            }
            TraceRec::Disk {
                node,
                entries,
                hard_state,
            } => {
                write!(
                    f,
                    "n{node} write durable: {entries} entries, hard state {hard_state:?}"
                )
            }
            TraceRec::Crash { node, loss } => write!(
                f,
                "n{node} CRASH + power loss: {} unsynced writes ({} sectors kept, {} dropped, {} \
                 torn), {} directory changes kept, {} undone",
                loss.pending_writes,
                loss.sectors_kept,
                loss.sectors_dropped,
                loss.sectors_torn,
                loss.dir_changes_kept,
                loss.dir_changes_undone
            ),
            TraceRec::Restart {
                node,
                hard_state,
                last_index,
            } => {
                write!(
                    f,
                    "n{node} restart from {hard_state:?}, durable last index {last_index}"
                )
            }
            TraceRec::Propose { node, result } => write!(f, "client -> n{node} propose {result}"),
            TraceRec::Read { node, what } => write!(f, "n{node} read {what}"),
            TraceRec::Role { node, role, term } => {
                write!(f, "n{node} is now {role:?} in term {term}")
            }
            TraceRec::Note(text) => write!(f, "{text}"),
        }
    }
}

const TRACE_LEN: usize = 60;

/// The core of a simulated node: the node's core over the engine's view of a log on `SimFs`,
/// plus the operator's channel for configuration changes (the driver has no mailbox item for
/// them yet): [`Cluster::propose_conf_change`] leaves the change here, and the core proposes it
/// at the driver's next `ready()`, the answer waiting here for the cluster. Everything else is
/// the node's own core: every [`Consensus`] method forwards to it (a method left to the trait's
/// default would make the simulator test something else than what runs).
pub struct SimCore {
    node: RaftNode<LogView>,
    conf_change: Cell<Option<ConfChange>>,
    conf_answer: RefCell<Option<Result<(LogIndex, Term), ProposeError>>>,
}

impl SimCore {
    fn new(node: RaftNode<LogView>) -> SimCore {
        SimCore {
            node,
            conf_change: Cell::new(None),
            conf_answer: RefCell::new(None),
        }
    }
}

impl std::ops::Deref for SimCore {
    type Target = RaftNode<LogView>;
    fn deref(&self) -> &RaftNode<LogView> {
        &self.node
    }
}

impl Consensus for SimCore {
    type Log = LogView;
    fn propose_conf_change(
        &mut self,
        change: ConfChange,
    ) -> Result<(LogIndex, Term), ProposeError> {
        self.node.propose_conf_change(change)
    }
    fn membership(&self) -> Option<Membership> {
        Some(self.node.membership().clone())
    }
    fn tick(&mut self) {
        self.node.tick()
    }
    fn step(&mut self, envelope: Envelope) {
        self.node.step(envelope)
    }
    fn propose(&mut self, payload: Vec<u8>) -> Result<(LogIndex, Term), ProposeError> {
        self.node.propose(payload)
    }
    fn read_index(&mut self, ctx: u64) -> Result<(), ReadIndexError> {
        self.node.read_index(ctx)
    }
    fn has_ready(&self) -> bool {
        self.conf_change.get().is_some() || self.node.has_ready()
    }
    fn ready(&mut self) -> Ready {
        if let Some(cc) = self.conf_change.take() {
            let answer = self.node.propose_conf_change(cc);
            *self.conf_answer.borrow_mut() = Some(answer);
        }
        self.node.ready()
    }
    fn on_persisted(&mut self, token: Option<(LogIndex, Term)>) {
        self.node.on_persisted(token)
    }
    fn id(&self) -> NodeId {
        self.node.id()
    }
    fn role(&self) -> Role {
        self.node.role()
    }
    fn term(&self) -> Term {
        self.node.term()
    }
    fn leader(&self) -> Option<NodeId> {
        self.node.leader()
    }
    fn commit_index(&self) -> LogIndex {
        self.node.commit_index()
    }
    fn storage(&self) -> &LogView {
        self.node.storage()
    }
    fn storage_mut(&mut self) -> &mut LogView {
        self.node.storage_mut()
    }
    fn last_index(&self) -> LogIndex {
        self.node.last_index()
    }
    fn peer_match_indexes(&self) -> Vec<(NodeId, LogIndex)> {
        self.node.peer_match_indexes()
    }
    fn snapshot_created(&mut self, snap: SnapshotId) {
        self.node.snapshot_created(snap)
    }
    fn snapshot(&self) -> Option<SnapshotId> {
        self.node.snapshot()
    }
    fn log_term(&self, index: LogIndex) -> Option<Term> {
        self.node.log_term(index)
    }
    fn report_snapshot_failed(&mut self, to: NodeId) {
        self.node.report_snapshot_failed(to)
    }
    fn membership_at(&self, index: LogIndex) -> Option<Membership> {
        Some(self.node.membership_at(index).clone())
    }
    fn transfer_leader(&mut self, target: NodeId) -> Result<(), TransferError> {
        self.node.transfer_leader(target)
    }
    fn lead_transferee(&self) -> Option<NodeId> {
        self.node.lead_transferee()
    }
}
type SimDriver = Driver<SimCore, Engine, SimMachine>;

/// What the driver did, recorded by its [`Outbox`] and processed by the cluster right after (in
/// order), so the driver never needs the cluster's state.
enum Effect {
    Ready {
        install: Option<SnapshotId>,
        truncate_from: Option<LogIndex>,
        entries: Vec<LogEntry>,
        appends: usize,
    },
    Request(Envelope),
    Response(Envelope),
    Durable {
        reset: Option<SnapshotId>,
        truncate_from: Option<LogIndex>,
        entries: Vec<LogEntry>,
        hard_state: Option<HardState>,
    },
    Apply(LogEntry),
    Install(SnapshotId),
}

#[derive(Default)]
struct Effects(Vec<Effect>);

impl Outbox for Effects {
    fn send_request(&mut self, envelope: Envelope) -> bool {
        self.0.push(Effect::Request(envelope));
        true
    }
    fn observe_ready(&mut self, ready: &Ready) {
        self.0.push(Effect::Ready {
            install: ready.install_snapshot,
            truncate_from: ready.truncate_from,
            entries: ready.entries.clone(),
            appends: ready
                .messages
                .iter()
                .filter(|m| matches!(m.msg, Message::AppendEntries(_)))
                .count(),
        });
    }
    fn observe_response(&mut self, envelope: &Envelope) {
        self.0.push(Effect::Response(envelope.clone()));
    }
    fn observe_durable(&mut self, batch: &WriteBatch) {
        self.0.push(Effect::Durable {
            reset: batch.reset,
            truncate_from: batch.truncate_from,
            entries: batch.entries.clone(),
            hard_state: batch.hard_state,
        });
    }
    fn observe_apply(&mut self, entry: &LogEntry) {
        self.0.push(Effect::Apply(entry.clone()));
    }
    fn observe_install(&mut self, snap: SnapshotId) {
        self.0.push(Effect::Install(snap));
    }
}

type ProposeAnswer = oneshot::Receiver<Result<ProposeOutcome, ProposeRefused>>;
type ReadAnswer = oneshot::Receiver<Result<ReadGrant, ReadRefused>>;

/// A node that is up: its driver, its engine's task, and the answers its clients and peers wait
/// for.
struct Running {
    driver: SimDriver,
    /// The engine's task (`None` once it ended).
    task: Option<Pin<Box<dyn Future<Output = ()>>>>,
    /// Reply handles of the peer requests delivered to this node.
    replies: Vec<oneshot::Receiver<Envelope>>,
    /// (proposal id, its payload, the answer).
    proposals: Vec<(u64, Vec<u8>, ProposeAnswer)>,
    /// (read id, the answer).
    reads: Vec<(u64, ReadAnswer)>,
    /// The node's snapshot files as its transport sees them (the receiving transfer lives here,
    /// so a crash loses it as it loses the real node's).
    files: NodeSnapshots,
    /// When to snapshot and the newest snapshot written (`None`: snapshots off).
    snapshotter: Option<Snapshotter>,
    /// This leader's transfers in progress, by follower.
    transfers: HashMap<usize, Transfer>,
}

impl Running {
    /// Polls the engine's task and the driver's durable writes until neither makes progress (the
    /// node's `LocalSet` would do the same between events).
    fn settle(&mut self, fx: &mut Effects) -> Result<(), String> {
        let mut cx = Context::from_waker(Waker::noop());
        self.driver.drain_ready(fx);
        loop {
            if let Some(task) = self.task.as_mut() {
                if task.as_mut().poll(&mut cx).is_ready() {
                    self.task = None;
                }
            }
            match self.driver.poll_durable(&mut cx, fx) {
                Poll::Ready(Ok(())) => self.driver.drain_ready(fx),
                Poll::Ready(Err(e)) => return Err(e.to_string()),
                Poll::Pending => return Ok(()),
            }
        }
    }
}

struct Slot {
    running: Option<Running>,
    /// The node's disk: its log and state file.
    fs: SimFs,
    /// The hard state (term and vote) the engine last reported durable.
    durable_hs: HardState,
    /// The log as the engine reported it durable.
    durable: LogMirror,
    /// The truncation points of the Readys handed to the engine and not yet reported durable,
    /// in Ready order: the engine truncates before it completes the batch (a follower replacing a
    /// conflicting, uncommitted suffix, Raft §5.3), so durable entries from there on may be gone
    /// after a crash, as they would have been after the batch.
    truncations_in_flight: VecDeque<LogIndex>,
    /// The node's whole log (durable + in flight), as the Readys described it.
    mirror: LogMirror,
    incarnation: u64,
    tick_us: u64,
    next_tick_us: u64,
    ticks_paused: bool,
    /// The next index this incarnation must apply.
    next_apply: Option<u64>,
    last_role: Option<(Role, Term)>,
    /// When this node last sent AppendEntries to every peer in one Ready (a heartbeat round).
    last_broadcast_us: Option<u64>,
    /// The snapshot index of an install whose log reset is not durable yet: the core counts
    /// the snapshot's index as persisted at once (the snapshot file is durable already).
    reset_in_flight: Option<u64>,
    /// The node's disk was wiped ([`Cluster::wipe`]): it restarts as a node joining an existing
    /// cluster, not as one of the bootstrap voters.
    joined: bool,
}

/// The directory of node `i`'s log and state file on its `SimFs`.
fn node_dir(i: usize) -> PathBuf {
    PathBuf::from(format!("/raft/node_{}", i + 1))
}

/// The simulated cluster. See the module docs.
pub struct Cluster {
    pub config: ClusterConfig,
    now_us: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Event>>,
    slots: Vec<Slot>,
    pub net: SimNetwork,
    rng: SimRng,
    pub checker: SafetyChecker,
    outcomes: Vec<Outcome>,
    /// Every client read, indexed by its id.
    reads: Vec<ReadOutcome>,
    pub stats: ClusterStats,
    trace: VecDeque<(u64, u64, TraceRec)>,
    /// Record a trace (costs a little; on by default, off for the Figure 16 experiment).
    pub tracing: bool,
    /// How many events the failure report shows.
    pub trace_len: usize,
    /// Whether ticks go into the trace (they drown everything else at fine tick periods).
    pub trace_ticks: bool,
    /// `entries_blocked[to]`: AppendEntries carrying entries to `to` are lost (heartbeats pass).
    /// Lets an experiment give followers logs of different lengths while they still hear from
    /// the leader.
    entries_blocked: Vec<bool>,
    /// The disk trap: this node crashes the moment one of its durable writes completes while
    /// another is still in flight (a group's state-file write landed and its log write did not,
    /// or the other way round: the window of issue 11's finding 2).
    disk_trap: Option<usize>,
    /// Nodes crashed by the disk trap or a power cut during a snapshot write or install, for the
    /// scenario to restart.
    disk_trap_fired: Vec<usize>,
    /// The node whose drive runs while its power is being cut: its durable writes may fail
    /// (they would on a machine that stops), and it crashes right after.
    power_cut: Option<usize>,
    /// Whether power cuts during snapshot writes and installs are drawn (off in a liveness phase).
    pub power_cuts: bool,
    /// Stream ids of InstallSnapshot transfers (one counter for the whole cluster).
    next_stream: u64,
    /// Set while a snapshot is being taken (a drive inside it must not start another).
    snapshotting: bool,
}

impl Cluster {
    /// Builds and starts `config.nodes` fresh nodes.
    pub fn new(config: ClusterConfig) -> Cluster {
        let n = config.nodes + config.spares;
        assert!(
            n >= 1 && config.tick_us.len() == n,
            "{n} nodes need {n} tick periods"
        );
        #[cfg(not(test))]
        assert!(
            config.mutation.is_none(),
            "mutations exist only in the crate's unit-test build (cargo test --lib)"
        );
        let rng = SimRng::new(config.seed);
        let mut slots = Vec::with_capacity(n);
        for i in 0..n {
            let tick_us = config.tick_us[i];
            assert!(tick_us > 0, "node {i} has a zero tick period");
            let fs = SimFs::new();
            fs.set_deferred_io(true);
            slots.push(Slot {
                running: None,
                fs,
                durable_hs: HardState::default(),
                durable: LogMirror::default(),
                truncations_in_flight: VecDeque::new(),
                mirror: LogMirror::default(),
                incarnation: 0,
                tick_us,
                next_tick_us: 0,
                ticks_paused: false,
                next_apply: None,
                last_role: None,
                last_broadcast_us: None,
                reset_in_flight: None,
                joined: false,
            });
        }
        let net = SimNetwork::new(n, config.net.clone());
        let mut c = Cluster {
            config,
            now_us: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            slots,
            net,
            rng,
            checker: SafetyChecker::new(n),
            outcomes: Vec::new(),
            reads: Vec::new(),
            stats: ClusterStats::default(),
            trace: VecDeque::with_capacity(TRACE_LEN),
            tracing: true,
            trace_ticks: true,
            // SIM_TRACE_LEN lengthens the failure report's trace when a seed needs it.
            trace_len: std::env::var("SIM_TRACE_LEN")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(TRACE_LEN),
            entries_blocked: vec![false; n],
            disk_trap: None,
            disk_trap_fired: Vec::new(),
            power_cut: None,
            power_cuts: true,
            next_stream: 0,
            snapshotting: false,
        };
        for i in 0..n {
            c.restart(i);
        }
        c.stats.restarts = 0;
        c
    }

    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    pub fn nodes(&self) -> usize {
        self.slots.len()
    }

    pub fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.slots[i].running.is_some()
    }

    pub fn core(&self, i: usize) -> Option<&SimCore> {
        self.slots[i].running.as_ref().map(|r| r.driver.core())
    }

    pub fn mirror(&self, i: usize) -> &LogMirror {
        &self.slots[i].mirror
    }

    pub fn last_broadcast_us(&self, i: usize) -> Option<u64> {
        self.slots[i].last_broadcast_us
    }

    pub fn outcome(&self, id: u64) -> Outcome {
        self.outcomes[id as usize]
    }

    pub fn read_outcome(&self, id: u64) -> ReadOutcome {
        self.reads[id as usize]
    }

    pub fn set_tick_period(&mut self, i: usize, tick_us: u64) {
        assert!(tick_us > 0);
        self.slots[i].tick_us = tick_us;
    }

    /// Stops or resumes a node's clock (it still receives messages).
    pub fn set_ticks_paused(&mut self, i: usize, paused: bool) {
        let s = &mut self.slots[i];
        if s.ticks_paused && !paused {
            // A random phase: real clocks are not aligned to each other's ticks.
            s.next_tick_us = self.now_us + 1 + self.rng.range(0, s.tick_us - 1);
        }
        s.ticks_paused = paused;
    }

    /// Loses (or stops losing) every AppendEntries with entries sent to node `to`; heartbeats
    /// still arrive.
    pub fn set_entries_blocked(&mut self, to: usize, blocked: bool) {
        self.entries_blocked[to] = blocked;
    }

    /// Schedules a scenario timer; [`Cluster::step`] returns `Stepped::Timer(tag)` when it fires.
    pub fn schedule_timer(&mut self, at_us: u64, tag: u64) {
        self.push(at_us.max(self.now_us), EventKind::Timer(tag));
    }

    fn push(&mut self, at_us: u64, kind: EventKind) {
        self.seq += 1;
        self.queue.push(Reverse(Event {
            at_us,
            seq: self.seq,
            kind,
        }));
    }

    fn note(&mut self, rec: TraceRec) {
        if !self.tracing {
            return;
        }
        if self.trace.len() >= self.trace_len {
            self.trace.pop_front();
        }
        self.trace.push_back((self.stats.events, self.now_us, rec));
    }

    /// The nodes that are up and believe they are leader, with their terms.
    pub fn leaders(&self) -> Vec<(usize, Term)> {
        (0..self.slots.len())
            .filter_map(|i| {
                let c = self.core(i)?;
                (c.role() == Role::Leader).then(|| (i, c.term()))
            })
            .collect()
    }

    /// A leader that a majority of the voters of its configuration (itself included, if it is
    /// one) knows as leader of its term.
    pub fn leader_known_to_majority(&self) -> Option<usize> {
        for (i, term) in self.leaders() {
            let id = node_id(i);
            let Some(leader) = self.core(i) else {
                continue;
            };
            let membership = leader.node.membership();
            let knowers = membership
                .voters
                .iter()
                .map(|&v| node_index(v))
                .filter(|&j| {
                    j < self.slots.len()
                        && self
                            .core(j)
                            .is_some_and(|c| c.term() == term && (j == i || c.leader() == Some(id)))
                })
                .count();
            if knowers >= membership.quorum() {
                return Some(i);
            }
        }
        None
    }

    /// Panics with the violation, the seed, the recent trace and the replay command.
    pub fn fail(&self, v: Violation) -> ! {
        let mut msg = String::new();
        let _ = writeln!(msg, "SIMULATION FAILURE: {}", v.property);
        let _ = writeln!(msg, "  {}", v.details);
        let _ = writeln!(
            msg,
            "  seed={} nodes={} event={} time={:.3}ms",
            self.config.seed,
            self.slots.len(),
            self.stats.events,
            self.now_us as f64 / 1000.0
        );
        for (i, s) in self.slots.iter().enumerate() {
            match self.core(i) {
                Some(c) => {
                    let _ = writeln!(
                        msg,
                        "  node {i}: {:?} term {} leader {:?} commit {} last {} durable {} hs {:?} \
                         config {}",
                        c.role(),
                        c.term(),
                        c.leader(),
                        c.commit_index(),
                        s.mirror.last_index(),
                        s.durable.last_index(),
                        s.durable_hs,
                        c.membership()
                            .map_or_else(|| "unknown".to_string(), |m| m.to_string())
                    );
                }
                None => {
                    let _ = writeln!(
                        msg,
                        "  node {i}: down, durable {} hs {:?}",
                        s.durable.last_index(),
                        s.durable_hs
                    );
                }
            }
        }
        let _ = writeln!(
            msg,
            "  last {} events (event#, ms, what):",
            self.trace.len()
        );
        for (n, t, rec) in &self.trace {
            let _ = writeln!(msg, "    #{n} {:.3} {rec}", *t as f64 / 1000.0);
        }
        let _ = writeln!(msg, "  replay: {}", self.config.replay);
        panic!("{msg}");
    }

    fn check(&self, r: Result<(), Violation>) {
        if let Err(v) = r {
            self.fail(v);
        }
    }

    /// Runs `f` on node `i`'s driver, settles the node (its engine's task and durable writes),
    /// processes what the driver did, delivers the answers that came out, schedules the disk
    /// writes that started, and checks the node. A panic inside the node's code is reported as a
    /// violation.
    fn drive(&mut self, i: usize, what: &str, f: impl FnOnce(&mut SimDriver)) {
        let mut running = self.slots[i]
            .running
            .take()
            .unwrap_or_else(|| panic!("drive({i}, {what}) on a node that is down"));
        let mut fx = Effects::default();
        let mutation = self.config.mutation;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            with_mutation(mutation, || {
                f(&mut running.driver);
                running.settle(&mut fx)
            })
        }));
        let states = running.driver.state_machine().take_journal();
        self.slots[i].running = Some(running);
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) if self.power_cut == Some(i) => {
                self.trace_note(format!("n{i}: {what} failed as the power went: {e}"));
            }
            Ok(Err(e)) => self.fail(Violation::new(
                Property::NodeInvariants,
                format!("node {i}: a durable write failed in {what}: {e}"),
            )),
            Err(payload) => {
                let text = panic_text(payload.as_ref());
                self.fail(Violation::new(
                    Property::NodeInvariants,
                    format!("node {i} panicked in {what}: {text}"),
                ))
            }
        }
        for effect in fx.0 {
            self.process(i, effect);
        }
        for (index, digest) in states {
            let r = self.checker.on_state(i, index, digest);
            self.check(r);
        }
        self.collect_answers(i);
        let incarnation = self.slots[i].incarnation;
        for op in self.slots[i].fs.take_started_io() {
            let at = self.now_us + self.config.disk.latency_us(&mut self.rng);
            self.push(
                at,
                EventKind::DiskDone {
                    node: i,
                    incarnation,
                    op,
                },
            );
        }
        self.check_node(i);
        if !self.snapshotting && self.power_cut.is_none() {
            self.snapshotting = true;
            self.maybe_snapshot(i);
            self.snapshotting = false;
        }
    }

    /// Processes one effect of node `i`'s driver (see [`Effect`]).
    fn process(&mut self, i: usize, effect: Effect) {
        match effect {
            Effect::Ready {
                install,
                truncate_from,
                entries,
                appends,
            } => {
                if let Some(snap) = install {
                    self.on_ready_install(i, snap);
                }
                self.on_ready(i, truncate_from, &entries, appends)
            }
            Effect::Request(env) if matches!(env.msg, Message::InstallSnapshot(_)) => {
                self.start_transfer(i, env)
            }
            Effect::Request(env) => self.send(i, env),
            Effect::Response(env) => self.check_response(i, &env),
            Effect::Durable {
                reset,
                truncate_from,
                entries,
                hard_state,
            } => {
                if let Some(snap) = reset {
                    let prefix = self.committed_prefix_or_fail(i, snap);
                    let s = &mut self.slots[i];
                    s.durable = prefix;
                    s.reset_in_flight = None;
                    let from = snap.index.next();
                    if let Some(at) = s.truncations_in_flight.iter().position(|t| *t == from) {
                        s.truncations_in_flight.remove(at);
                    }
                }
                if self.tracing {
                    self.note(TraceRec::Disk {
                        node: i,
                        entries: entries.len(),
                        hard_state,
                    });
                }
                let s = &mut self.slots[i];
                if let Some(from) = truncate_from {
                    s.durable.truncate_from(from);
                    if let Some(at) = s.truncations_in_flight.iter().position(|t| *t == from) {
                        s.truncations_in_flight.remove(at);
                    }
                }
                for e in &entries {
                    if let Err(exp) = s.durable.append(e) {
                        let msg = format!(
                            "node {i}: the engine reported entry {} durable, expected {exp}",
                            e.index
                        );
                        self.fail(Violation::new(Property::ReadyContract, msg));
                    }
                }
                if let Some(hs) = hard_state {
                    s.durable_hs = hs;
                }
            }
            Effect::Apply(e) => self.on_apply(i, e),
            Effect::Install(snap) => self.on_install(i, snap),
        }
    }

    /// The committed log up to a snapshot's index: what a node holds there once it installed
    /// the snapshot (a snapshot covers only applied, hence committed, entries).
    fn committed_prefix_or_fail(&self, i: usize, snap: SnapshotId) -> LogMirror {
        match self.checker.committed_prefix(snap.index.0) {
            Some(m) if m.term_at(snap.index.0) == Some(snap.term) => m,
            Some(m) => self.fail(Violation::new(
                Property::StateMachineSafety,
                format!(
                    "node {i} takes a snapshot at index {} term {}, but the committed entry \
                     there has term {:?}",
                    snap.index,
                    snap.term,
                    m.term_at(snap.index.0)
                ),
            )),
            None => self.fail(Violation::new(
                Property::StateMachineSafety,
                format!(
                    "node {i} takes a snapshot at index {} (term {}) beyond every commit index \
                     reported ({})",
                    snap.index,
                    snap.term,
                    self.checker.committed_len()
                ),
            )),
        }
    }

    /// A Ready of node `i` installs `snap`: its log becomes the committed log up to the
    /// snapshot's index (and nothing after it, until the Ready's own entries).
    fn on_ready_install(&mut self, i: usize, snap: SnapshotId) {
        let prefix = self.committed_prefix_or_fail(i, snap);
        let s = &mut self.slots[i];
        s.mirror = prefix;
        // Until the reset is durable, a crash may keep the old log or the new one: durable
        // entries after the snapshot's index may be gone, as after a truncation.
        s.truncations_in_flight.push_back(snap.index.next());
        s.reset_in_flight = Some(snap.index.0);
    }

    /// The driver replaced node `i`'s state machine by the snapshot `snap`.
    fn on_install(&mut self, i: usize, snap: SnapshotId) {
        self.stats.installs += 1;
        self.trace_note(format!(
            "n{i} installs the snapshot at {}@t{}",
            snap.index, snap.term
        ));
        let applied = self.slots[i].next_apply.map_or(0, |n| n - 1);
        if snap.index.0 < applied {
            self.fail(Violation::new(
                Property::StateMachineSafety,
                format!(
                    "node {i} installs the snapshot at index {} (term {}) over a state machine \
                     that already applied index {applied}: its state goes back",
                    snap.index, snap.term
                ),
            ));
        }
        let machine_at = self.slots[i]
            .running
            .as_ref()
            .map_or(snap.index.0, |r| r.driver.state_machine().index());
        if machine_at != snap.index.0 {
            self.fail(Violation::new(
                Property::StateMachineSafety,
                format!(
                    "node {i} installed the snapshot at index {} but its state machine reflects \
                     index {machine_at}",
                    snap.index
                ),
            ));
        }
        self.slots[i].next_apply = Some(snap.index.0 + 1);
    }

    /// A Ready of node `i`: its entries go into the mirror and through the Log Matching check.
    fn on_ready(
        &mut self,
        i: usize,
        truncate_from: Option<LogIndex>,
        entries: &[LogEntry],
        appends: usize,
    ) {
        if let Some(from) = truncate_from {
            if entries.first().is_some_and(|e| e.index != from) {
                self.fail(Violation::new(
                    Property::ReadyContract,
                    format!(
                        "node {i}: Ready truncates from {from} but its entries start at {}",
                        entries[0].index
                    ),
                ));
            }
            self.slots[i].mirror.truncate_from(from);
            self.slots[i].truncations_in_flight.push_back(from);
        }
        for e in entries {
            let appended = self.slots[i].mirror.append(e);
            match appended {
                Ok(prefix) => {
                    let r = self.checker.on_append(i, e, prefix);
                    self.check(r);
                    if e.entry_type == EntryType::ConfChange {
                        let r = self.check_one_change_at_a_time(i, e);
                        self.check(r);
                    }
                }
                Err(expected) => self.fail(Violation::new(
                    Property::ReadyContract,
                    format!(
                        "node {i}: Ready entry at index {} (term {}) does not continue its log \
                         (expected index {expected}; truncate_from {truncate_from:?})",
                        e.index, e.term
                    ),
                )),
            }
        }
        // A heartbeat round reaches every other member of the node's configuration.
        let peers = self.core(i).map_or(0, |c| {
            c.node
                .membership()
                .members()
                .filter(|&m| m != node_id(i))
                .count()
        });
        if peers > 0 && appends >= peers {
            self.slots[i].last_broadcast_us = Some(self.now_us);
        }
    }

    /// The answers the driver of node `i` gave since the last look: peer responses go on the
    /// network, proposal and read outcomes are recorded and checked.
    fn collect_answers(&mut self, i: usize) {
        let Some(running) = self.slots[i].running.as_mut() else {
            return;
        };
        let mut responses = Vec::new();
        running.replies.retain_mut(|rx| match rx.try_recv() {
            Ok(env) => {
                responses.push(env);
                false
            }
            // Declined (the core ignored the request): the requester hears nothing.
            Err(oneshot::error::TryRecvError::Closed) => false,
            Err(oneshot::error::TryRecvError::Empty) => true,
        });
        let mut proposals = Vec::new();
        running
            .proposals
            .retain_mut(|(id, payload, rx)| match rx.try_recv() {
                Ok(answer) => {
                    proposals.push((*id, std::mem::take(payload), Some(answer)));
                    false
                }
                Err(oneshot::error::TryRecvError::Closed) => {
                    proposals.push((*id, Vec::new(), None));
                    false
                }
                Err(oneshot::error::TryRecvError::Empty) => true,
            });
        let mut reads = Vec::new();
        running.reads.retain_mut(|(id, rx)| match rx.try_recv() {
            Ok(answer) => {
                reads.push((*id, Some(answer)));
                false
            }
            Err(oneshot::error::TryRecvError::Closed) => {
                reads.push((*id, None));
                false
            }
            Err(oneshot::error::TryRecvError::Empty) => true,
        });
        for env in responses {
            self.send(i, env);
        }
        for (id, payload, answer) in proposals {
            self.on_proposal_answer(i, id, &payload, answer);
        }
        for (id, answer) in reads {
            self.on_read_answer(i, id, answer);
        }
    }

    fn on_proposal_answer(
        &mut self,
        i: usize,
        id: u64,
        payload: &[u8],
        answer: Option<Result<ProposeOutcome, ProposeRefused>>,
    ) {
        match answer {
            Some(Ok(ProposeOutcome::Committed { index, term })) => {
                let idx = index.0;
                let expected = entry_hash(&LogEntry {
                    term,
                    index,
                    entry_type: EntryType::Normal,
                    payload: payload.to_vec(),
                });
                let mirror = &self.slots[i].mirror;
                if mirror.entry_hash_at(idx) != Some(expected) {
                    self.fail(Violation::new(
                        Property::ReadyContract,
                        format!(
                            "node {i} told proposal #{id} it committed at index {idx} term {term}, \
                             but its log holds another entry there"
                        ),
                    ));
                }
                self.outcomes[id as usize] = Outcome::Committed;
                self.stats.committed += 1;
                let ack_term = self.core(i).map(|c| c.term()).unwrap_or(term);
                let ack = AckedProposal {
                    id,
                    index: idx,
                    entry_hash: expected,
                    ack_term,
                    prefix: self.slots[i].mirror.prefix_at(idx),
                };
                let leaders: Vec<(usize, Term)> = self.leaders();
                let slots = &self.slots;
                let r = self.checker.on_ack(
                    ack,
                    leaders.into_iter().map(|(j, t)| (j, t, &slots[j].mirror)),
                );
                self.check(r);
            }
            Some(Ok(ProposeOutcome::NotLeader { .. })) | Some(Err(_)) => {
                self.outcomes[id as usize] = Outcome::Rejected;
                self.stats.rejected += 1;
            }
            // The driver dropped the reply: another leader's entry took the index.
            None => {
                self.outcomes[id as usize] = Outcome::Lost;
                self.stats.lost += 1;
            }
        }
    }

    fn on_read_answer(
        &mut self,
        i: usize,
        id: u64,
        answer: Option<Result<ReadGrant, ReadRefused>>,
    ) {
        let floor = match self.reads[id as usize] {
            ReadOutcome::Pending { node, floor } if node == i => floor,
            other => self.fail(Violation::new(
                Property::ReadyContract,
                format!("node {i} answered read #{id}, which is {other:?}"),
            )),
        };
        match answer {
            Some(Ok(grant)) => {
                let index = grant.read_index.0;
                if self.tracing {
                    self.note(TraceRec::Read {
                        node: i,
                        what: format!(
                            "#{id} granted at read index {index}, applied {}",
                            grant.applied_index
                        ),
                    });
                }
                self.check(SafetyChecker::check_read_confirmed(i, id, index, floor));
                let r = SafetyChecker::check_read_served(
                    i,
                    id,
                    index,
                    grant.applied_index.0,
                    &self.slots[i].mirror,
                    floor,
                );
                self.check(r);
                self.reads[id as usize] = ReadOutcome::Served { index };
                self.stats.reads_served += 1;
            }
            Some(Err(ReadRefused::LeadershipLost)) => {
                self.reads[id as usize] = ReadOutcome::Dropped;
                self.stats.reads_dropped += 1;
            }
            Some(Err(_)) => {
                self.reads[id as usize] = ReadOutcome::Rejected;
                self.stats.reads_rejected += 1;
            }
            None => self.fail(Violation::new(
                Property::ReadyContract,
                format!("node {i} dropped read #{id} without an answer while running"),
            )),
        }
    }

    /// Processes the next event. Returns what it was.
    pub fn step(&mut self) -> Stepped {
        // The earliest tick among running nodes, ties to the lowest index.
        let mut tick: Option<(u64, usize)> = None;
        for (i, s) in self.slots.iter().enumerate() {
            if s.running.is_some()
                && !s.ticks_paused
                && tick.is_none_or(|(t, _)| s.next_tick_us < t)
            {
                tick = Some((s.next_tick_us, i));
            }
        }
        let queued = self.queue.peek().map(|Reverse(e)| e.at_us);
        let take_tick = match (tick, queued) {
            (Some((t, _)), Some(q)) => t <= q,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return Stepped::Idle,
        };
        self.stats.events += 1;
        if take_tick {
            let (t, i) = tick.expect("tick chosen");
            self.now_us = t;
            self.slots[i].next_tick_us = t + self.slots[i].tick_us;
            self.stats.ticks += 1;
            if self.trace_ticks {
                self.note(TraceRec::Tick(i));
            }
            self.drive(i, "tick", |d| d.tick());
            return Stepped::Tick(i);
        }
        let Reverse(ev) = self.queue.pop().expect("event chosen");
        self.now_us = ev.at_us;
        match ev.kind {
            EventKind::Deliver { from, to, env } => {
                if !self.net.deliverable(from, to) || self.slots[to].running.is_none() {
                    self.note(TraceRec::Lost { from, to });
                    return Stepped::Lost { from, to };
                }
                if self.tracing {
                    self.note(TraceRec::Deliver {
                        from,
                        to,
                        msg: brief(&env.msg),
                    });
                }
                let must_adopt = must_adopt_term(&env.msg);
                let is_request = crate::driver::RequestKind::of_request(&env.msg).is_some();
                if is_request {
                    let (reply, answer) = oneshot::channel();
                    if let Some(r) = self.slots[to].running.as_mut() {
                        r.replies.push(answer);
                    }
                    self.drive(to, "step", |d| {
                        d.handle(Inbound::Request {
                            envelope: env,
                            reply,
                        })
                    });
                } else {
                    self.drive(to, "step", |d| d.handle(Inbound::Response(env)));
                }
                if let Some(t) = must_adopt {
                    let term = self.core(to).map_or(t, |c| c.term());
                    if term < t {
                        self.fail(Violation::new(
                            Property::TermAdoption,
                            format!(
                                "node {to} handled a message of term {t} from node {from} and \
                                 stayed in term {term}"
                            ),
                        ));
                    }
                }
                Stepped::Delivered { from, to }
            }
            EventKind::DiskDone {
                node,
                incarnation,
                op,
            } => {
                if self.slots[node].incarnation != incarnation || self.slots[node].running.is_none()
                {
                    return Stepped::DiskDone(node);
                }
                if self.slots[node].fs.complete_io(op) {
                    self.stats.disk_writes += 1;
                }
                if self.disk_trap == Some(node) && !self.slots[node].fs.io_in_flight().is_empty() {
                    // Crash before the node even sees this completion: one write of its group is
                    // durable, another is not.
                    self.disk_trap = None;
                    self.disk_trap_fired.push(node);
                    self.trace_note(format!(
                        "disk trap: n{node} crashes between two completions"
                    ));
                    self.crash(node);
                    return Stepped::DiskDone(node);
                }
                self.drive(node, "disk completion", |_| {});
                Stepped::DiskDone(node)
            }
            EventKind::Timer(tag) => Stepped::Timer(tag),
            EventKind::Chunk { from, to, chunk } => {
                if !self.net.deliverable(from, to) || self.slots[to].running.is_none() {
                    self.note(TraceRec::Lost { from, to });
                    return Stepped::Lost { from, to };
                }
                if self.tracing {
                    self.note(TraceRec::Deliver {
                        from,
                        to,
                        msg: format!(
                            "snapshot chunk {}@t{} stream {} offset {} len {}{}",
                            chunk.snap.index,
                            chunk.snap.term,
                            chunk.stream,
                            chunk.offset,
                            chunk.data.len(),
                            if chunk.done { " (last)" } else { "" }
                        ),
                    });
                }
                self.on_chunk(from, to, chunk);
                Stepped::Delivered { from, to }
            }
            EventKind::ChunkAnswer {
                from,
                to,
                stream,
                answer,
            } => {
                if !self.net.deliverable(from, to) || self.slots[to].running.is_none() {
                    self.note(TraceRec::Lost { from, to });
                    return Stepped::Lost { from, to };
                }
                if self.tracing {
                    self.note(TraceRec::Deliver {
                        from,
                        to,
                        msg: format!("snapshot stream {stream} ends: {answer:?}"),
                    });
                }
                self.on_chunk_answer(from, to, stream, answer);
                Stepped::Delivered { from, to }
            }
            EventKind::StreamTimeout {
                node,
                incarnation,
                to,
                stream,
            } => {
                let current = self.slots[node].incarnation == incarnation
                    && self.slots[node]
                        .running
                        .as_ref()
                        .and_then(|r| r.transfers.get(&to))
                        .is_some_and(|t| t.stream == stream);
                if current {
                    self.trace_note(format!(
                        "n{node}: snapshot stream {stream} to n{to} timed out"
                    ));
                    self.stream_ended(node, to, None);
                }
                Stepped::DiskDone(node)
            }
        }
    }

    /// A client sends a linearizable read to node `i`. Returns the read's id.
    pub fn read(&mut self, i: usize) -> u64 {
        let id = self.reads.len() as u64;
        self.stats.reads += 1;
        if self.slots[i].running.is_none() {
            self.reads.push(ReadOutcome::Rejected);
            self.stats.reads_rejected += 1;
            return id;
        }
        let floor = self.checker.read_floor();
        self.reads.push(ReadOutcome::Pending { node: i, floor });
        if self.tracing {
            self.note(TraceRec::Read {
                node: i,
                what: format!("#{id} issued"),
            });
        }
        let (reply, answer) = oneshot::channel();
        if let Some(r) = self.slots[i].running.as_mut() {
            r.reads.push((id, answer));
        }
        self.drive(i, "read", |d| {
            d.handle(Inbound::Read {
                linearizable: true,
                reply,
            })
        });
        id
    }

    /// Checks a response leaving node `i` against what is durable on `i` at this moment.
    fn check_response(&mut self, i: usize, env: &Envelope) {
        let s = &self.slots[i];
        match &env.msg {
            Message::AppendEntriesResponse(r)
                if r.success && r.last_log_index.0 > s.durable.last_index() =>
            {
                self.fail(Violation::new(
                    Property::DurableBeforeAck,
                    format!(
                        "node {i} acknowledges entries up to {} in term {} to {} while only {} \
                         entries are durable",
                        r.last_log_index,
                        r.term,
                        env.to,
                        s.durable.last_index()
                    ),
                ));
            }
            Message::RequestVoteResponse(r) if r.vote_granted && !r.pre_vote => {
                let hs = s.durable_hs;
                if hs.term < r.term || (hs.term == r.term && hs.vote != Some(env.to)) {
                    self.fail(Violation::new(
                        Property::DurableBeforeVote,
                        format!(
                            "node {i} grants its term-{} vote to {} while its durable hard state \
                             is {hs:?}",
                            r.term, env.to
                        ),
                    ));
                }
            }
            _ => {}
        }
    }

    /// Sends one message from node `i` over the network.
    fn send(&mut self, i: usize, env: Envelope) {
        assert_eq!(
            node_index(env.from),
            i,
            "node {i} sent a message as {}",
            env.from
        );
        let to = node_index(env.to);
        assert!(
            to < self.slots.len(),
            "node {i} sent to unknown node {}",
            env.to
        );
        if self.entries_blocked[to] {
            if let Message::AppendEntries(a) = &env.msg {
                if !a.entries.is_empty() {
                    return;
                }
            }
        }
        for at in self.net.send(self.now_us, &mut self.rng) {
            self.push(
                at,
                EventKind::Deliver {
                    from: i,
                    to,
                    env: env.clone(),
                },
            );
        }
    }

    fn on_apply(&mut self, i: usize, e: LogEntry) {
        let idx = e.index.0;
        let expected = self.slots[i].next_apply.replace(idx + 1);
        if let Some(next) = expected {
            if idx != next {
                self.fail(Violation::new(
                    Property::ReadyContract,
                    format!("node {i} applies index {idx} but the next to apply is {next}"),
                ));
            }
        }
        let s = &self.slots[i];
        if idx > s.durable.last_index() || s.durable.entry_hash_at(idx) != Some(entry_hash(&e)) {
            self.fail(Violation::new(
                Property::ReadyContract,
                format!(
                    "node {i} applies index {idx} (term {}) which is not durable locally (durable \
                     last index {})",
                    e.term,
                    s.durable.last_index()
                ),
            ));
        }
        self.stats.applied_entries += 1;
        let r = self.checker.on_apply(i, &e);
        self.check(r);
    }

    fn check_node(&mut self, i: usize) {
        let Some((role, term, commit)) = self
            .core(i)
            .map(|c| (c.role(), c.term(), c.commit_index().0))
        else {
            return;
        };
        if self.slots[i].last_role != Some((role, term)) {
            self.slots[i].last_role = Some((role, term));
            self.note(TraceRec::Role {
                node: i,
                role,
                term,
            });
        }
        let checked = catch_unwind(AssertUnwindSafe(|| {
            if let Some(core) = self.core(i) {
                core.check_invariants();
            }
        }));
        if let Err(payload) = checked {
            let text = panic_text(payload.as_ref());
            self.fail(Violation::new(
                Property::NodeInvariants,
                format!("node {i}: {text}"),
            ));
        }
        let registered = self.slots[i]
            .running
            .as_ref()
            .map_or(0, |r| r.driver.reads_registered());
        if role != Role::Leader && registered > 0 {
            self.fail(Violation::new(
                Property::ReadyContract,
                format!(
                    "node {i} is {role:?} in term {term} with {registered} reads neither \
                     confirmed nor dropped"
                ),
            ));
        }
        let s = &self.slots[i];
        let r = self
            .checker
            .check_node(i, role == Role::Leader, term, commit, &s.mirror);
        self.check(r);
        let r = self.check_views(i);
        self.check(r);
    }

    /// Thesis §4.1: a leader appends a configuration entry only once the previous one in its log
    /// is committed, so that the majorities of two successive configurations always overlap. Seen
    /// from outside the core: when a leader appends a configuration entry of its own term, no
    /// other configuration entry lies in its log above the highest commit index any node
    /// reported (which is at least the leader's own). Runs only for configuration entries (rare),
    /// scanning the leader's uncommitted tail.
    fn check_one_change_at_a_time(&self, i: usize, e: &LogEntry) -> Result<(), Violation> {
        let Some(core) = self.core(i).map(|c| &c.node) else {
            return Ok(());
        };
        if core.role() != Role::Leader || core.term() != e.term {
            return Ok(());
        }
        let committed = self.checker.committed_len();
        let mut j = e.index.0;
        while j > committed + 1 {
            j -= 1;
            let Some(other) = core.log_entry(LogIndex(j)) else {
                break;
            };
            if other.entry_type == EntryType::ConfChange {
                return Err(Violation::new(
                    Property::OneChangeAtATime,
                    format!(
                        "leader {i} of term {} appends a configuration entry at index {} while \
                         the one at index {j} (term {}) is not committed anywhere (highest commit \
                         index {committed})",
                        e.term, e.index, other.term
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The node's own view of its log, durability and application must match what the driver
    /// saw (cheap: last entry only).
    fn check_views(&self, i: usize) -> Result<(), Violation> {
        let s = &self.slots[i];
        let Some(core) = self.core(i) else {
            return Ok(());
        };
        let last = core.last_index().0;
        if last != s.mirror.last_index() || core.log_term(LogIndex(last)) != s.mirror.term_at(last)
        {
            return Err(Violation::new(
                Property::MirrorFidelity,
                format!(
                    "node {i} reports last index {last} term {:?}; its Readys describe last index \
                     {} term {:?}",
                    core.log_term(LogIndex(last)),
                    s.mirror.last_index(),
                    s.mirror.term_at(s.mirror.last_index())
                ),
            ));
        }
        let p = core.persisted_index().0;
        // While an install's log reset is not durable, the core counts the snapshot's index as
        // persisted already (the snapshot file is durable); the log before the reset may be
        // longer or shorter. It must claim nothing beyond the snapshot that is not durable.
        let resetting = s.reset_in_flight.is_some_and(|at| p <= at);
        if !resetting && (p > s.durable.last_index() || s.durable.term_at(p) != s.mirror.term_at(p))
        {
            return Err(Violation::new(
                Property::ReadyContract,
                format!(
                    "node {i} believes its log is durable up to {p}, but the durable log ends at \
                     {} (term there {:?} vs log term {:?})",
                    s.durable.last_index(),
                    s.durable.term_at(p),
                    s.mirror.term_at(p)
                ),
            ));
        }
        let applied = core.applied_index().0;
        let expected = s.next_apply.map_or(0, |n| n - 1);
        if applied != expected {
            return Err(Violation::new(
                Property::ReadyContract,
                format!("node {i} reports applied index {applied}, but handed out entries up to {expected}"),
            ));
        }
        Ok(())
    }

    /// Compares every entry of every running node's log with the driver's mirror (O(log size);
    /// run once at the end of a scenario).
    pub fn check_full_fidelity(&self) {
        for (i, s) in self.slots.iter().enumerate() {
            let Some(core) = self.core(i) else {
                continue;
            };
            for idx in core.first_index().0..=s.mirror.last_index() {
                let got = core.log_entry(LogIndex(idx)).map(|e| entry_hash(&e));
                if got != s.mirror.entry_hash_at(idx) {
                    self.fail(Violation::new(
                        Property::MirrorFidelity,
                        format!("node {i}: entry {idx} differs from the one its Readys described"),
                    ));
                }
            }
        }
    }

    /// A client sends a proposal carrying `extra` bytes to node `i`. Returns the proposal's id.
    pub fn propose(&mut self, i: usize, extra: &[u8]) -> u64 {
        let id = self.outcomes.len() as u64;
        self.stats.proposals += 1;
        let mut payload = id.to_le_bytes().to_vec();
        payload.extend_from_slice(extra);
        let Some(before) = self.core(i).map(|c| c.last_index()) else {
            self.outcomes.push(Outcome::Rejected);
            self.stats.rejected += 1;
            return id;
        };
        // A placeholder until the driver answers (a refusal comes at once) or the proposal is
        // seen appended.
        self.outcomes.push(Outcome::Unknown);
        let (reply, answer) = oneshot::channel();
        if let Some(r) = self.slots[i].running.as_mut() {
            r.proposals.push((id, payload.clone(), answer));
        }
        let mut appended: Option<(LogIndex, Term)> = None;
        self.drive(i, "propose", |d| {
            d.handle(Inbound::Propose { payload, reply });
            // A leader appends the proposal at once: it is the new last entry.
            let core = d.core();
            if core.last_index() > before {
                appended = Some((core.last_index(), core.term()));
            }
        });
        if self.outcomes[id as usize] == Outcome::Unknown {
            match appended {
                Some((index, term)) => {
                    self.outcomes[id as usize] = Outcome::Pending {
                        node: i,
                        index: index.0,
                        term,
                    }
                }
                None => self.stats.unknown += 1,
            }
        }
        if self.tracing {
            self.note(TraceRec::Propose {
                node: i,
                result: format!("#{id} {:?}", self.outcomes[id as usize]),
            });
        }
        id
    }

    /// An operator asks node `i` to hand leadership to node `to` (thesis §3.10), through its
    /// driver's mailbox as the real node does. Returns the core's answer (`NotLeader` with no
    /// hint for a node that is down).
    pub fn transfer_leadership(
        &mut self,
        i: usize,
        to: usize,
    ) -> Result<(), crate::raft::TransferError> {
        if self.slots[i].running.is_none() {
            return Err(crate::raft::TransferError::NotLeader { leader_hint: None });
        }
        let (reply, mut answer) = oneshot::channel();
        self.drive(i, "transfer leadership", |d| {
            d.handle(Inbound::TransferLeader {
                target: node_id(to),
                reply,
            })
        });
        if self.tracing {
            self.note(TraceRec::Propose {
                node: i,
                result: format!("transfer leadership to {to}"),
            });
        }
        answer
            .try_recv()
            .unwrap_or(Err(crate::raft::TransferError::NotLeader {
                leader_hint: None,
            }))
    }

    /// An operator asks node `i` to change the configuration (thesis ch. 4): the core proposes
    /// `cc` at the driver's next `ready()` (see [`SimCore`]). Returns the core's answer
    /// (`NotLeader` with no hint for a node that is down).
    pub fn propose_conf_change(
        &mut self,
        i: usize,
        cc: ConfChange,
    ) -> Result<(LogIndex, Term), ProposeError> {
        let Some(running) = self.slots[i].running.as_ref() else {
            return Err(ProposeError::NotLeader { leader_hint: None });
        };
        running.driver.core().conf_change.set(Some(cc));
        self.drive(i, "configuration change", |_| {});
        let answer = self.slots[i]
            .running
            .as_ref()
            .and_then(|r| r.driver.core().conf_answer.borrow_mut().take())
            .unwrap_or(Err(ProposeError::NotLeader { leader_hint: None }));
        if self.tracing {
            let result = match &answer {
                Ok((index, term)) => format!("{cc}: appended at {index}@t{term}"),
                Err(e) => format!("{cc}: refused ({e})"),
            };
            self.note(TraceRec::Propose { node: i, result });
        }
        answer
    }

    /// Node `i` loses its disk: it crashes (if up) and gets an empty one. It restarts (see
    /// [`Cluster::restart`]) as a node joining an existing cluster. The scenario wipes only a node
    /// whose removal is committed: a voter that forgot its votes and its log could otherwise
    /// help elect a second leader of a term it voted in.
    pub fn wipe(&mut self, i: usize) {
        self.crash(i);
        let fs = SimFs::new();
        fs.set_deferred_io(true);
        let s = &mut self.slots[i];
        s.fs = fs;
        s.durable_hs = HardState::default();
        s.durable = LogMirror::default();
        s.truncations_in_flight.clear();
        s.mirror = LogMirror::default();
        s.next_apply = None;
        s.reset_in_flight = None;
        s.joined = true;
        self.stats.wipes += 1;
        self.trace_note(format!("n{i}: disk wiped; it will join as a new node"));
    }

    /// Whether node `i`'s disk was ever wiped (it runs as a joining node since, `Config::join`).
    pub fn wiped(&self, i: usize) -> bool {
        self.slots[i].joined
    }

    /// Crashes node `i` at this instant (no-op if it is down): its process is gone and its disk
    /// loses power.
    pub fn crash(&mut self, i: usize) {
        let Some(running) = self.slots[i].running.take() else {
            return;
        };
        self.stats.crashes += 1;
        // The clients of this node get no answer.
        for (id, _, _) in &running.proposals {
            if matches!(self.outcomes[*id as usize], Outcome::Pending { .. }) {
                self.outcomes[*id as usize] = Outcome::Unknown;
                self.stats.unknown += 1;
            }
        }
        for (id, _) in &running.reads {
            self.reads[*id as usize] = ReadOutcome::Unknown;
            self.stats.reads_unknown += 1;
        }
        drop(running);
        let s = &mut self.slots[i];
        let seed = self.rng.next_u64();
        let loss = s.fs.power_loss(seed);
        if loss.sectors_dropped + loss.sectors_torn + loss.dir_changes_undone > 0 {
            self.stats.torn_writes += 1;
        }
        s.incarnation += 1;
        s.last_role = None;
        self.note(TraceRec::Crash { node: i, loss });
        self.checker.on_crash(i);
    }

    fn log_config(&self, i: usize) -> LogConfig {
        LogConfig {
            segment_size_bytes: SIM_SEGMENT_BYTES,
            prepare_in_background: false,
            ..LogConfig::new(node_dir(i))
        }
    }

    /// Restarts node `i` from its disk (no-op if it is up): the storage engine's recovery opens
    /// the log and the state file, which must hold everything the engine reported durable.
    pub fn restart(&mut self, i: usize) {
        if self.slots[i].running.is_some() {
            return;
        }
        let fs = self.slots[i].fs.clone();
        let vfs: Arc<dyn crate::storage::file::Vfs> = Arc::new(fs.clone());
        let dir = node_dir(i);
        let mut log = match RaftLog::open_with(self.log_config(i), Arc::new(fs.clone())) {
            Ok(log) => log,
            Err(e) => self.fail(Violation::new(
                Property::Durability,
                format!("node {i} cannot recover its log after the power loss: {e}"),
            )),
        };
        // The node's own startup: unfinished snapshot files removed, the newest valid snapshot
        // chosen (refused if the log starts after it), an interrupted install finished.
        let chosen = match crate::node::recover_snapshot(&fs, &dir, &mut log) {
            Ok(chosen) => chosen,
            Err(e) => self.fail(Violation::new(
                Property::Durability,
                format!("node {i} refuses to start after the power loss: {e}"),
            )),
        };
        let log_range = (log.last_index() >= log.first_index() || log.first_index() > LogIndex(1))
            .then(|| (log.first_index(), log.last_index()));
        let identity = Identity {
            cluster_id: 1,
            node_id: node_id(i).0,
        };
        let state = match RaftState::open_checked(&fs, &dir, identity, log_range) {
            Ok(state) => state,
            Err(e) => self.fail(Violation::new(
                Property::Durability,
                format!("node {i} cannot recover its state file after the power loss: {e}"),
            )),
        };
        let hs = state.state().hard_state();
        let recovered = log
            .entries(log.first_index()..log.last_index().next(), u64::MAX)
            .unwrap_or_else(|e| {
                self.fail(Violation::new(
                    Property::Durability,
                    format!("node {i}: a recovered entry is unreadable: {e}"),
                ))
            })
            .iter()
            .map(|e| e.to_owned_entry())
            .collect::<Vec<_>>();
        let first = log.first_index();
        // Recovery finished an install whose snapshot file was durable before the log's reset
        // (the rename survived the power loss): the durable log after the snapshot's index is
        // gone, legitimately if the snapshot is committed state (checked here), because an
        // entry conflicting with a committed one is never committed itself.
        let finished_install = chosen
            .as_ref()
            .map(|c| c.id)
            .filter(|snap| self.slots[i].durable.term_at(snap.index.0) != Some(snap.term));
        if let Some(snap) = finished_install {
            self.committed_prefix_or_fail(i, snap);
            self.trace_note(format!(
                "n{i} recovery finishes the install of the snapshot at {}@t{}",
                snap.index, snap.term
            ));
        }
        self.check_recovered(i, &recovered, first, hs, finished_install.map(|s| s.index));
        // The mirrors start from what the disk holds: the committed log up to where the log
        // starts (a snapshot covers it, and holds committed entries only), then the log.
        let mut mirror = if first.0 > 1 {
            match self.checker.committed_prefix(first.0 - 1) {
                Some(m) => m,
                None => self.fail(Violation::new(
                    Property::Durability,
                    format!(
                        "node {i}'s log starts at {first} after a snapshot, beyond every commit \
                         index reported ({})",
                        self.checker.committed_len()
                    ),
                )),
            }
        } else {
            LogMirror::default()
        };
        let mut machine = SimMachine::default();
        let snapshot = chosen.as_ref().map(|c| c.id);
        if let Some(c) = &chosen {
            if let Err(e) = crate::node::restore_from_file(&fs, &c.path, c.id, &mut machine) {
                self.fail(Violation::new(
                    Property::Durability,
                    format!("node {i} cannot restore its snapshot after the power loss: {e}"),
                ));
            }
            self.stats.restarts_from_snapshot += 1;
        }
        let applied = snapshot.map_or(LogIndex::ZERO, |s| s.index);
        for e in &recovered {
            let prefix = mirror.append(e).unwrap_or_else(|exp| {
                panic!("recovered log of node {i}: expected {exp}, got {}", e.index)
            });
            let r = self.checker.on_append(i, e, prefix);
            self.check(r);
        }
        let max_payload = log.config().entry_payload_max_bytes() as u64;
        let last = log.last_index().0;
        let (engine, view, task) = Engine::new(log, state);
        let mut config = self.config.core.clone();
        config.id = node_id(i);
        // The initial configuration, as the real node takes it: the snapshot's when it restarts
        // from one, otherwise the bootstrap voters (the first `nodes` ids). A node whose disk was
        // wiped joins an existing cluster: it does not count itself among the bootstrap voters
        // (it must not campaign with an empty log; the configuration entries it receives from
        // index 1, or a snapshot's configuration, tell it what it is now).
        match &chosen {
            Some(c) => {
                config.voters = c.voters.clone();
                config.learners = c.learners.clone();
            }
            None => {
                let joined = self.slots[i].joined;
                config.voters = (0..self.config.nodes)
                    .filter(|&j| !(joined && j == i))
                    .map(node_id)
                    .collect();
                config.learners = Vec::new();
            }
        }
        config.join = self.slots[i].joined;
        config.rng_seed = self.rng.fork();
        config.max_entry_payload_bytes = max_payload;
        let voters = config.voters.clone();
        let core = match RaftNode::restart(config, hs, view, snapshot) {
            Ok(c) => SimCore::new(c),
            // Either the plan built a bad config (a simulator bug) or the core refused the state
            // the disk kept (a core or storage bug); both stop the run with the seed.
            Err(e) => self.fail(Violation::new(
                Property::NodeInvariants,
                format!("node {i} cannot restart from {hs:?} and a log of {last} entries: {e}"),
            )),
        };
        let mut driver = Driver::new(
            core,
            engine,
            machine,
            DriverConfig {
                addresses: HashMap::new(),
                proposals_pending_max: usize::MAX,
                reads_pending_max: usize::MAX,
            },
            applied,
        );
        driver.set_snapshot_installer(crate::node::snapshot_installer(
            Arc::clone(&vfs),
            dir.clone(),
        ));
        let snapshotter = self.config.snapshots.map(|sim| {
            Snapshotter::new(
                node_id(i),
                Arc::clone(&vfs),
                dir.clone(),
                1,
                PAYLOAD_KIND_OPAQUE,
                voters,
                sim.policy,
                applied,
            )
        });
        let s = &mut self.slots[i];
        s.running = Some(Running {
            driver,
            task: Some(Box::pin(task.run())),
            replies: Vec::new(),
            proposals: Vec::new(),
            reads: Vec::new(),
            files: NodeSnapshots::new(vfs, dir),
            snapshotter,
            transfers: HashMap::new(),
        });
        s.durable = mirror.clone();
        s.truncations_in_flight.clear();
        s.reset_in_flight = None;
        s.mirror = mirror;
        s.durable_hs = hs;
        // After a restart the core re-delivers the committed prefix after the snapshot (from
        // index 1 without one: the state machine is rebuilt from scratch).
        s.next_apply = Some(applied.0 + 1);
        let offset = self.rng.range(0, s.tick_us - 1);
        s.next_tick_us = self.now_us + offset + 1;
        s.last_broadcast_us = None;
        self.stats.restarts += 1;
        self.note(TraceRec::Restart {
            node: i,
            hard_state: hs,
            last_index: last,
        });
        self.drive(i, "restart", |_| {});
    }

    /// Durability: what node `i`'s engine reported durable before the crash is what recovery
    /// found (the log's prefix, exactly, and the term and vote).
    fn check_recovered(
        &self,
        i: usize,
        recovered: &[LogEntry],
        first: LogIndex,
        hs: HardState,
        reset_to: Option<LogIndex>,
    ) {
        let s = &self.slots[i];
        // Durable entries at or after a truncation the engine had started (or after a snapshot
        // whose install recovery finished) may be gone.
        let durable_last = s
            .truncations_in_flight
            .iter()
            .map(|t| t.0 - 1)
            .chain(reset_to.map(|r| r.0))
            .fold(s.durable.last_index(), u64::min);
        // Entries before `first` were compacted behind a snapshot that recovery checked covers
        // them (and whose state the checker compares with every other node's).
        let recovered_last = recovered.last().map_or(first.0 - 1, |e| e.index.0);
        if recovered_last < durable_last {
            self.fail(Violation::new(
                Property::Durability,
                format!(
                    "node {i} recovered entries up to {recovered_last}, but the engine had \
                     reported {durable_last} durable"
                ),
            ));
        }
        for e in recovered.iter().take_while(|e| e.index.0 <= durable_last) {
            if s.durable.entry_hash_at(e.index.0) != Some(entry_hash(e)) {
                self.fail(Violation::new(
                    Property::Durability,
                    format!(
                        "node {i} recovered a different entry at index {} (term {}) than the \
                         one reported durable",
                        e.index, e.term
                    ),
                ));
            }
        }
        let was = s.durable_hs;
        if hs.term < was.term || (hs.term == was.term && was.vote.is_some() && hs.vote != was.vote)
        {
            self.fail(Violation::new(
                Property::Durability,
                format!(
                    "node {i} recovered term {} vote {:?}, but term {} vote {:?} was reported \
                     durable",
                    hs.term, hs.vote, was.term, was.vote
                ),
            ));
        }
    }

    /// Node `i` takes a snapshot if its policy says one is due (and the seed's dice agree): the
    /// real node's [`Snapshotter`] decides and writes it through the production
    /// `write_snapshot` on the node's `SimFs`, then the driver compacts the log behind it
    /// (`Driver::snapshot_taken`). Sometimes the power is cut after a random number of the
    /// write's disk operations (or during the compaction), and the node crashes there.
    fn maybe_snapshot(&mut self, i: usize) {
        let Some(sim) = self.config.snapshots else {
            return;
        };
        let Some(running) = self.slots[i].running.as_mut() else {
            return;
        };
        let applied_bytes = running.driver.applied_payload_bytes();
        let installed = running.driver.core().snapshot();
        let Some(snapshotter) = running.snapshotter.as_mut() else {
            return;
        };
        snapshotter.adopt_installed(installed, applied_bytes);
        let Some(at) = running.driver.applied() else {
            return;
        };
        if !snapshotter.due(at.index, installed, applied_bytes) || !self.rng.chance(sim.take_chance)
        {
            return;
        }
        let cut = self.power_cuts && self.rng.chance(sim.write_cut_chance);
        if cut {
            let ops = self.rng.range(0, 12);
            self.slots[i].fs.power_off_after(ops);
            self.power_cut = Some(i);
        }
        let Some(running) = self.slots[i].running.as_mut() else {
            return;
        };
        let source = running.driver.state_machine().snapshot_view();
        let membership = Some(RaftNode::membership_at(running.driver.core(), at.index).clone());
        let written = match running.snapshotter.as_mut() {
            Some(snapshotter) => snapshotter.write_now(at, &*source, membership, applied_bytes),
            None => return,
        };
        match written {
            Ok(taken) => {
                self.stats.snapshots_taken += 1;
                self.trace_note(format!(
                    "n{i} snapshot at {}@t{} ({} payload bytes); compacting, keeping {}",
                    taken.snap.index,
                    taken.snap.term,
                    taken.payload_bytes,
                    sim.policy.catchup_entries
                ));
                let mut compacted = Ok(());
                self.drive(i, "snapshot taken", |d| {
                    compacted = d.snapshot_taken(at, sim.policy.catchup_entries);
                });
                if let Err(e) = compacted {
                    if !cut {
                        self.fail(Violation::new(
                            Property::NodeInvariants,
                            format!(
                                "node {i}: compacting after the snapshot at {} failed: {e}",
                                at.index
                            ),
                        ));
                    }
                }
            }
            Err(e) if cut => self.trace_note(format!("n{i} snapshot write cut: {e}")),
            Err(e) => self.fail(Violation::new(
                Property::NodeInvariants,
                format!("node {i}: writing the snapshot at {} failed: {e}", at.index),
            )),
        }
        if cut {
            self.stats.snapshot_writes_cut += 1;
            self.power_cut = None;
            self.trace_note(format!("power cut on n{i} during a snapshot write"));
            self.crash(i);
            self.disk_trap_fired.push(i);
        }
    }

    /// Leader `i`'s driver sent an InstallSnapshot: its transport starts a transfer of the
    /// snapshot file (replacing one in progress to the same follower).
    fn start_transfer(&mut self, i: usize, env: Envelope) {
        let Message::InstallSnapshot(m) = &env.msg else {
            return;
        };
        let to = node_index(env.to);
        let snap = m.snapshot;
        let Some(running) = self.slots[i].running.as_mut() else {
            return;
        };
        running.transfers.insert(
            to,
            Transfer {
                env,
                snap,
                stream: 0,
                offset: 0,
                confirmed: 0,
                streams_without_progress: 0,
            },
        );
        self.stats.transfers += 1;
        self.send_stream(i, to);
    }

    /// Sends one stream of leader `i`'s transfer to `to`: every chunk from the transfer's offset
    /// to the end of the file and the empty last one, each a message of its own on the network
    /// (so chunks are lost, duplicated and reordered like any message); then waits for the
    /// follower's answer at most `stream_timeout_us`.
    fn send_stream(&mut self, i: usize, to: usize) {
        let Some(sim) = self.config.snapshots else {
            return;
        };
        self.next_stream += 1;
        let stream = self.next_stream;
        let Some(running) = self.slots[i].running.as_mut() else {
            return;
        };
        let Some(t) = running.transfers.get_mut(&to) else {
            return;
        };
        t.stream = stream;
        let mut chunks = Vec::new();
        let mut offset = t.offset;
        let mut unreadable = None;
        loop {
            match running.files.read(t.snap, offset, sim.chunk_bytes) {
                Ok(data) => {
                    let done = data.is_empty();
                    let len = data.len() as u64;
                    chunks.push(SimChunk {
                        env: t.env.clone(),
                        snap: t.snap,
                        stream,
                        offset,
                        data,
                        done,
                    });
                    offset += len;
                    if done {
                        break;
                    }
                }
                Err(e) => {
                    unreadable = Some(e);
                    break;
                }
            }
        }
        t.offset = offset;
        if let Some(e) = unreadable {
            // The file was pruned by a newer snapshot (or is unreadable): the transfer fails and
            // the core sends the newest snapshot once the follower answers a probe.
            self.trace_note(format!("n{i} cannot read its snapshot for n{to}: {e}"));
            self.fail_transfer(i, to);
            return;
        }
        for chunk in chunks {
            self.stats.chunks_sent += 1;
            for at in self.net.send(self.now_us, &mut self.rng) {
                self.push(
                    at,
                    EventKind::Chunk {
                        from: i,
                        to,
                        chunk: chunk.clone(),
                    },
                );
            }
        }
        let incarnation = self.slots[i].incarnation;
        self.push(
            self.now_us + sim.stream_timeout_us,
            EventKind::StreamTimeout {
                node: i,
                incarnation,
                to,
                stream,
            },
        );
    }

    /// Leader `i`'s transfer to `to` ends without success: its driver is told
    /// (`Inbound::SnapshotFailed`, as the real transport tells it).
    fn fail_transfer(&mut self, i: usize, to: usize) {
        if let Some(r) = self.slots[i].running.as_mut() {
            r.transfers.remove(&to);
        }
        self.stats.transfers_failed += 1;
        self.drive(i, "snapshot failed", |d| {
            d.handle(Inbound::SnapshotFailed { to: node_id(to) })
        });
    }

    /// Leader `i`'s current stream to `to` ended without the snapshot (`resume_at`: where the
    /// follower said to resume; `None`: no answer in time). As `send_snapshot`: a stream that
    /// does not move the confirmed offset counts against the transfer.
    fn stream_ended(&mut self, i: usize, to: usize, resume_at: Option<u64>) {
        let Some(t) = self.slots[i]
            .running
            .as_mut()
            .and_then(|r| r.transfers.get_mut(&to))
        else {
            return;
        };
        let progress = match resume_at {
            Some(at) => {
                t.offset = at;
                let progress = at > t.confirmed;
                t.confirmed = t.confirmed.max(at);
                progress
            }
            None => false,
        };
        if progress {
            t.streams_without_progress = 0;
        } else {
            t.streams_without_progress += 1;
            if t.streams_without_progress >= crate::grpc::snapshot::TRANSFER_ATTEMPTS_MAX {
                self.fail_transfer(i, to);
                return;
            }
        }
        self.stats.streams_restarted += 1;
        self.send_stream(i, to);
    }

    /// A chunk reaches follower `to`: its transport hands it to the node's snapshot files
    /// (`NodeSnapshots::accept`, the real receiver), and the last one finishes the file and
    /// hands the InstallSnapshot message to the driver, as `grpc::snapshot::receive` does.
    fn on_chunk(&mut self, from: usize, to: usize, chunk: SimChunk) {
        let Some(running) = self.slots[to].running.as_ref() else {
            return;
        };
        let accepted = running
            .files
            .accept(node_id(from), chunk.snap, chunk.offset, &chunk.data);
        let end = match accepted {
            Ok(()) if !chunk.done => return,
            Ok(()) => {
                let cut = self.power_cuts
                    && self
                        .config
                        .snapshots
                        .is_some_and(|sim| self.rng.chance(sim.install_cut_chance));
                if cut {
                    let ops = self.rng.range(0, 12);
                    self.slots[to].fs.power_off_after(ops);
                    self.power_cut = Some(to);
                }
                let finished = self.slots[to]
                    .running
                    .as_ref()
                    .map(|r| r.files.finish(node_id(from), chunk.snap));
                // As `grpc::snapshot::receive`: the message the core gets carries the
                // configuration read from the durable file's header (the chunks do not carry it).
                let finished =
                    finished.map(|r| r.and_then(|()| self.received_membership(to, chunk.snap)));
                let end = match finished {
                    Some(Ok(membership)) => {
                        self.stats.snapshots_received += 1;
                        let (reply, answer) = oneshot::channel();
                        if let Some(r) = self.slots[to].running.as_mut() {
                            r.replies.push(answer);
                        }
                        let mut env = chunk.env.clone();
                        if let Message::InstallSnapshot(m) = &mut env.msg {
                            m.membership = membership;
                        }
                        self.drive(to, "install snapshot", |d| {
                            d.handle(Inbound::Request {
                                envelope: env,
                                reply,
                            })
                        });
                        StreamEnd::Finished
                    }
                    Some(Err(e)) => {
                        self.trace_note(format!("n{to} refuses the snapshot from n{from}: {e}"));
                        StreamEnd::Refused
                    }
                    None => return,
                };
                if cut {
                    self.stats.installs_cut += 1;
                    self.power_cut = None;
                    self.trace_note(format!("power cut on n{to} during a snapshot install"));
                    self.crash(to);
                    self.disk_trap_fired.push(to);
                    return;
                }
                end
            }
            Err(AcceptError::ResumeAt(at)) => StreamEnd::ResumeAt(at),
            Err(AcceptError::Refused(why)) => {
                self.trace_note(format!("n{to} refuses a chunk from n{from}: {why}"));
                StreamEnd::Refused
            }
        };
        for at in self.net.send(self.now_us, &mut self.rng) {
            self.push(
                at,
                EventKind::ChunkAnswer {
                    from: to,
                    to: from,
                    stream: chunk.stream,
                    answer: end,
                },
            );
        }
    }

    /// The configuration recorded in the header of node `i`'s durable snapshot file `snap`.
    fn received_membership(&self, i: usize, snap: SnapshotId) -> Result<Membership, String> {
        let running = self.slots[i]
            .running
            .as_ref()
            .ok_or_else(|| format!("node {i} is down"))?;
        let head = running.files.read(snap, 0, SNAPSHOT_HEADER_MAX_BYTES)?;
        let meta = decode_header(&head)?;
        Ok(Membership::new(meta.voters, meta.learners))
    }

    /// A follower's answer ending a stream reaches leader `i`.
    fn on_chunk_answer(&mut self, follower: usize, i: usize, stream: u64, answer: StreamEnd) {
        let current = self.slots[i]
            .running
            .as_ref()
            .and_then(|r| r.transfers.get(&follower))
            .is_some_and(|t| t.stream == stream);
        if !current {
            return;
        }
        match answer {
            StreamEnd::Finished => {
                if let Some(r) = self.slots[i].running.as_mut() {
                    r.transfers.remove(&follower);
                }
            }
            StreamEnd::ResumeAt(at) => self.stream_ended(i, follower, Some(at)),
            StreamEnd::Refused => self.stream_ended(i, follower, Some(0)),
        }
    }

    /// Arms the disk trap on node `i` (see the field's docs); [`Cluster::take_fired_disk_trap`]
    /// says when it fired.
    pub fn arm_disk_trap(&mut self, i: usize) {
        self.disk_trap = Some(i);
    }

    /// A node the disk trap or a power cut crashed since the last call, if any (the caller
    /// restarts it; call until `None`).
    pub fn take_fired_disk_trap(&mut self) -> Option<usize> {
        self.disk_trap_fired.pop()
    }

    /// Writes a free-form line into the trace.
    pub fn trace_note(&mut self, text: impl Into<String>) {
        if self.tracing {
            self.note(TraceRec::Note(text.into()));
        }
    }
}

/// Runs `f` with `mutation` switched on in the production code (unit-test build only; elsewhere
/// `Cluster::new` refuses a mutation).
fn with_mutation<R>(mutation: Option<Mutation>, f: impl FnOnce() -> R) -> R {
    #[cfg(test)]
    {
        crate::mutation::with(mutation, f)
    }
    #[cfg(not(test))]
    {
        let _ = mutation;
        f()
    }
}

/// The term a node must have adopted after handling `m` (Raft §5.1: a higher term in any request
/// or response makes a server update its term and become follower). `None` for the messages a
/// core may legitimately leave its term alone for: RequestVote (a server in a leader lease ignores
/// it, thesis §4.2.3; a pre-vote changes no state, §9.6) and granted pre-vote responses (they carry
/// the proposed term).
fn must_adopt_term(m: &Message) -> Option<Term> {
    match m {
        Message::RequestVote(_) => None,
        Message::RequestVoteResponse(r) if r.pre_vote && r.vote_granted => None,
        other => Some(other.term()),
    }
}

/// The message of a caught panic.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "non-string panic".to_string())
}

/// A one-line summary of a message for the trace.
fn brief(m: &Message) -> String {
    match m {
        Message::RequestVote(r) => format!(
            "{}Vote t{} last {}@t{}{}",
            if r.pre_vote { "Pre" } else { "Req" },
            r.term,
            r.last_log_index,
            r.last_log_term,
            if r.leader_transfer { " (transfer)" } else { "" }
        ),
        Message::TimeoutNow(m) => format!("TimeoutNow t{} from {}", m.term, m.leader_id),
        Message::RequestVoteResponse(r) => format!(
            "{}VoteResp t{} granted={}",
            if r.pre_vote { "Pre" } else { "" },
            r.term,
            r.vote_granted
        ),
        Message::InstallSnapshot(m) => format!(
            "InstallSnapshot t{} {}@t{}",
            m.term, m.snapshot.index, m.snapshot.term
        ),
        Message::AppendEntries(a) => format!(
            "Append t{} prev {}@t{} n={} commit {}",
            a.term,
            a.prev_log_index,
            a.prev_log_term,
            a.entries.len(),
            a.leader_commit
        ),
        Message::AppendEntriesResponse(r) => format!(
            "AppendResp t{} ok={} last {} conflict {:?}@{:?}",
            r.term, r.success, r.last_log_index, r.conflict_term, r.conflict_index
        ),
    }
}
