//! The Ready driver: everything between the consensus core and the world that does not depend on
//! how the world is reached. The node's event loop ([`crate::node::event_loop`]) and the
//! deterministic simulator ([`crate::testing::cluster`]) both run it, so every simulated seed
//! exercises the node's own reply matching, proposal tracking, read grants and durability
//! ordering.
//!
//! # What it owns
//! - the **mailbox** the transport and the client APIs write into ([`Inbound`]) and the answer
//!   types they get back (a mailbox type belongs to its reader: the gRPC and etcd servers import
//!   them from here);
//! - the core ([`Consensus`]), the durable store ([`Durable`]: the append engine, or
//!   [`crate::storage::engine::MemDurable`]) and the state machine;
//! - **reply slots**: a peer's request waits with its reply handle, keyed by (peer, request kind);
//!   the core answers synchronously inside `step`, so the Readys drained after a batch of inputs
//!   contain every answer it will give; a response claims the oldest slot of its (recipient, kind)
//!   at Ready time, and leaves only when its Ready is durable if it is a persisted message; slots
//!   left unclaimed are dropped (the requester sees "declined");
//! - **proposals** by index, answered once their entry is applied with the term they were
//!   proposed in (otherwise another leader's entry took the index: the reply is dropped, "outcome
//!   unknown");
//! - **linearizable reads** (ReadIndex, thesis §6.4): registered with the core, granted once
//!   confirmed and applied up to their read index, refused at once if dropped.
//!
//! # Draining a Ready (the contract of [`crate::raft`])
//! 1. `messages` go out at once through the [`Outbox`] (requests) or their reply slot
//!    (responses): a leader's AppendEntries leave before its own write starts (thesis §10.2.1).
//! 2. `truncate_from` / `entries` / `hard_state` become one [`WriteBatch`] for the durable store.
//!    Batches complete in submission order; several may be in flight.
//! 3. When a batch is durable ([`Driver::poll_durable`]): `persisted_messages` (votes,
//!    acknowledgements) go out, and `on_persisted` tells the core. A Ready with nothing to write
//!    still waits for the batches before it, so an acknowledgement never overtakes a write.
//! 4. `committed_entries` (durable locally by the core's contract) are applied in order.
//! 5. `read_states` are granted once applied up to their index; `dropped_reads` are refused.
//!
//! A failed durable write is fatal ([`DriverError`]): the host must stop (fsyncgate).
//!
//! The driver performs no I/O of its own and needs no runtime: the node polls
//! [`Driver::poll_durable`] from its `select!`, the simulator with a no-op waker.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::raft::message::{Envelope, Message};
use crate::raft::{
    ProposeError, RaftNode, ReadIndexError, Ready, Role, SnapshotId, Storage, TransferError,
};
use crate::state_machine::StateMachine;
use crate::storage::engine::{Durable, NoSpace, PersistFuture, WriteBatch};
use crate::types::{LogEntry, LogIndex, NodeId, Term};

// ---------------------------------------------------------------------------------------------
// The mailbox
// ---------------------------------------------------------------------------------------------

/// What the transport and the client APIs hand to the driver. `R` is the state machine's
/// response type ([`StateMachine::Response`]).
#[derive(Debug)]
pub enum Inbound<R> {
    /// A peer's request (RequestVote or AppendEntries). Answered with the core's response
    /// envelope (addressed back to `envelope.from`) through `reply`, or `reply` is dropped to
    /// decline.
    Request {
        envelope: Envelope,
        reply: oneshot::Sender<Envelope>,
    },
    /// A response to one of this node's own requests, as it came back on the RPC's reply.
    Response(Envelope),
    /// An operator's proposal. Answered once the entry is committed and applied, or with
    /// `NotLeader` or a refusal at once; dropping `reply` tells the client the outcome is unknown.
    Propose {
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<ProposeOutcome, ProposeRefused>>,
    },
    /// An operator's status query.
    Status { reply: oneshot::Sender<NodeStatus> },
    /// A client API command (an encoded state machine command, e.g. an etcd Put). Answered once
    /// applied, with the state machine's response, or refused at once; dropping `reply` means the
    /// outcome is unknown.
    Command {
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<Applied<R>, CommandRefused>>,
    },
    /// A client API read. `linearizable`: answered once this node, as leader, confirmed its
    /// leadership after the read arrived (ReadIndex, thesis §6.4) and applied up to the read
    /// index; otherwise answered at once (serializable: possibly stale). After the grant the
    /// caller reads the shared state machine itself.
    Read {
        linearizable: bool,
        reply: oneshot::Sender<Result<ReadGrant, ReadRefused>>,
    },
    /// An operator asks this node, as leader, to hand leadership to `target` (thesis §3.10, see
    /// [`RaftNode::transfer_leader`]). Answered as soon as the transfer began or was refused;
    /// whether it completed shows in the status (`leader`, `lead_transferee`).
    TransferLeader {
        target: NodeId,
        reply: oneshot::Sender<Result<(), TransferError>>,
    },
    /// An operator's membership change (etcd's `MemberAdd`, `MemberRemove`, `MemberPromote`,
    /// `MemberUpdate`), handled by the leader: answered once the change (and the new member's
    /// address record) is committed and applied here, or refused at once (nothing appended).
    /// Dropping `reply` means the outcome is unknown.
    Member {
        request: MemberRequest,
        reply: oneshot::Sender<Result<MemberChanged, MemberRefused>>,
    },
    /// The configuration in effect on this node (a query; answered at once).
    Membership {
        reply: oneshot::Sender<Option<crate::raft::Membership>>,
    },
    /// The transport gave up delivering a snapshot to `to` (see
    /// [`RaftNode::report_snapshot_failed`]).
    SnapshotFailed { to: NodeId },
    /// A client's request for a fresh snapshot file (etcd's `Maintenance.Snapshot`). The node's
    /// event loop answers it, whatever its snapshot policy, with the path of a finished snapshot
    /// file that covers at least everything applied when the request arrived; the driver alone
    /// keeps no snapshot files and answers [`SnapshotRefused::NoSnapshots`].
    Snapshot {
        reply: oneshot::Sender<Result<std::path::PathBuf, SnapshotRefused>>,
    },
}

/// Why a requested snapshot ([`Inbound::Snapshot`]) was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotRefused {
    /// The node keeps no snapshot files (an in-memory node, or a simulated one).
    #[error("this node keeps no snapshot files (it runs without a data directory)")]
    NoSnapshots,
    /// Nothing is applied yet: a snapshot covers at least entry 1.
    #[error("nothing is applied yet (no leader has committed an entry); retry later")]
    NothingApplied,
    /// Writing the snapshot failed (the reason names the file).
    #[error("the snapshot could not be written: {0}")]
    Failed(String),
}

/// A membership change an operator asks for ([`Inbound::Member`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberRequest {
    /// Adds a member that listens at `peer_urls` (the first is where peers connect), as a
    /// learner or as a voter. The leader chooses its node id: one above every id it knows
    /// (members, recorded addresses, the config file), so ids are never reused.
    Add {
        peer_urls: Vec<String>,
        learner: bool,
    },
    Remove(NodeId),
    /// Makes a learner a voter; refused while it lags ([`MemberRefused::LearnerNotReady`]).
    Promote(NodeId),
    /// Records new peer URLs for a member (no configuration change).
    Update {
        node: NodeId,
        peer_urls: Vec<String>,
    },
}

/// A membership change is committed and applied on the answering leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberChanged {
    /// The member the change is about (the new one's id for an add).
    pub node: NodeId,
    /// The index of the last entry the change took (the address record of an add).
    pub index: LogIndex,
    pub term: Term,
}

/// Why a membership change was not proposed (nothing was appended).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemberRefused {
    #[error("not the leader (leader: {leader:?} at {leader_address:?})")]
    NotLeader {
        leader: Option<NodeId>,
        leader_address: Option<SocketAddr>,
    },
    /// One change at a time (thesis §4.1): retry once entry `index` commits.
    #[error("a membership change (entry {index}) is still in flight; retry once it commits")]
    InFlight { index: LogIndex },
    /// A new leader has not committed an entry of its term yet (the 2015 single-server bug).
    #[error("the leader has not committed an entry of its term yet; retry shortly")]
    BeforeTermCommit,
    /// The change does not fit the configuration (adding a member twice, removing a
    /// non-member, removing the last voter, promoting a voter).
    #[error("invalid membership change: {0}")]
    Invalid(String),
    /// The member is not in the configuration.
    #[error("node {0} is not a member")]
    NotFound(NodeId),
    /// etcd's rule: a learner is promoted only once its log holds 90% of the leader's.
    #[error("learner {node} is not in sync: it holds entries up to {match_index}, the leader {last_index}")]
    LearnerNotReady {
        node: NodeId,
        match_index: LogIndex,
        last_index: LogIndex,
    },
    /// The state machine keeps no member address registry: members outside the config file
    /// cannot be added or have their addresses changed.
    #[error("this node's state machine keeps no member addresses; members can only come from the config file")]
    NoRegistry,
    #[error("leadership is being transferred to node {to}; retry shortly")]
    Transferring { to: NodeId },
    /// etcd's `--max-learners`: adding a learner would exceed the limit.
    #[error("the configuration already holds {learners} learners, the limit (learners_max {max})")]
    TooManyLearners { learners: usize, max: usize },
    #[error("{pending} proposals are waiting to commit (the limit); retry later")]
    Overloaded { pending: usize },
    #[error("no space left in {} for the next {needed_bytes}-byte log segment; writes are refused until space is freed", dir.display())]
    NoSpace {
        dir: std::path::PathBuf,
        needed_bytes: u64,
    },
}

/// etcd's `readyPercent`: a learner whose match index is below this share of the leader's last
/// index is not promoted.
pub const LEARNER_READY_PERCENT: u64 = 90;

/// A command applied by the state machine, as its proposer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied<R> {
    pub index: LogIndex,
    /// The term the entry was proposed and committed in.
    pub term: Term,
    /// What the state machine answered (`StateMachine::apply`).
    pub response: R,
}

/// Why a command was not proposed (nothing was appended: the client may retry or redirect).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandRefused {
    #[error("not the leader (leader: {leader:?} at {leader_address:?})")]
    NotLeader {
        leader: Option<NodeId>,
        leader_address: Option<SocketAddr>,
    },
    #[error("{pending} proposals are waiting to commit (the limit); retry later")]
    Overloaded { pending: usize },
    /// The command is larger than one log entry may be (`ClusterConfig::entry_payload_max_bytes`).
    #[error("a {payload_bytes}-byte command is above the limit of {max_bytes} bytes per entry")]
    TooLarge {
        payload_bytes: usize,
        max_bytes: u64,
    },
    /// This node is the leader and its disk is full: its log waits for space
    /// ([`Durable::no_space`]). Retry once space was freed.
    #[error("no space left in {} for the next {needed_bytes}-byte log segment; writes are refused until space is freed", dir.display())]
    NoSpace {
        dir: std::path::PathBuf,
        needed_bytes: u64,
    },
    /// This node leads and is handing leadership to `to` (thesis §3.10): nothing was appended.
    /// The transfer ends within an election timeout; hold the command and retry.
    #[error("leadership is being transferred to node {to}; retry shortly")]
    Transferring { to: NodeId },
}

/// Permission to read the state machine: it has applied at least `applied_index`, and for a
/// linearizable read that covers every write acknowledged before the read arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadGrant {
    pub applied_index: LogIndex,
    /// The index the read was confirmed at (a linearizable read's read index; the applied index
    /// for a serializable one).
    pub read_index: LogIndex,
    /// The node's current term (for response headers).
    pub term: Term,
    pub leader: Option<NodeId>,
}

/// Why a read was not granted (retryable).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadRefused {
    #[error("not the leader (leader: {leader:?} at {leader_address:?})")]
    NotLeader {
        leader: Option<NodeId>,
        leader_address: Option<SocketAddr>,
    },
    /// The leader stepped down before a majority confirmed its leadership for this read.
    #[error("leadership was lost before the read was confirmed")]
    LeadershipLost,
    #[error("{pending} reads are waiting (the limit); retry later")]
    Overloaded { pending: usize },
}

/// The answer to an operator's proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeOutcome {
    /// The entry is committed and applied on the answering node.
    Committed { index: LogIndex, term: Term },
    /// Ask `leader` (at `leader_address`, from the cluster config) instead, if known.
    NotLeader {
        leader: Option<NodeId>,
        leader_address: Option<String>,
    },
}

/// Why the node refused a proposal without proposing it (the client may retry: nothing was
/// appended).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeRefused {
    #[error("{pending} proposals are waiting to commit (the limit); retry later")]
    Overloaded { pending: usize },
    /// The payload is larger than one log entry may be.
    #[error("payload of {payload_bytes} bytes is above the limit of {max_bytes}")]
    TooLarge {
        payload_bytes: usize,
        max_bytes: u64,
    },
    /// This node is the leader and its disk is full (see [`CommandRefused::NoSpace`]).
    #[error("no space left in {} for the next {needed_bytes}-byte log segment; writes are refused until space is freed", dir.display())]
    NoSpace {
        dir: std::path::PathBuf,
        needed_bytes: u64,
    },
    /// A leadership transfer is in progress (see [`CommandRefused::Transferring`]).
    #[error("leadership is being transferred to node {to}; retry shortly")]
    Transferring { to: NodeId },
}

/// A node's view of itself (the Operator's Status, etcd's endpoint status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit_index: LogIndex,
    pub applied_index: LogIndex,
    pub first_log_index: LogIndex,
    pub last_log_index: LogIndex,
    /// `(follower, match_index)`; empty unless the node is the leader.
    pub peers: Vec<(NodeId, LogIndex)>,
    /// The voter this leader is handing leadership to, while a transfer runs.
    pub lead_transferee: Option<NodeId>,
}

// ---------------------------------------------------------------------------------------------
// The core and the outbox
// ---------------------------------------------------------------------------------------------

/// The core as the driver drives it. [`RaftNode`] is the implementation; the trait exists so the
/// driver's ordering rules can be tested against a scripted core.
pub trait Consensus {
    type Log: Storage;
    fn tick(&mut self);
    fn step(&mut self, envelope: Envelope);
    fn propose(&mut self, payload: Vec<u8>) -> Result<(LogIndex, Term), ProposeError>;
    /// Registers a linearizable read `ctx` (ReadIndex); it comes back in `Ready::read_states` or
    /// `Ready::dropped_reads`.
    fn read_index(&mut self, ctx: u64) -> Result<(), ReadIndexError>;
    fn has_ready(&self) -> bool;
    fn ready(&mut self) -> Ready;
    fn on_persisted(&mut self, token: Option<(LogIndex, Term)>);
    fn id(&self) -> NodeId;
    fn role(&self) -> Role;
    fn term(&self) -> Term;
    fn leader(&self) -> Option<NodeId>;
    fn commit_index(&self) -> LogIndex;
    fn storage(&self) -> &Self::Log;
    fn storage_mut(&mut self) -> &mut Self::Log;
    /// The last index of the whole log (durable or not). Defaults to the durable log's.
    fn last_index(&self) -> LogIndex {
        self.storage().last_index()
    }
    /// The leader's view of each follower's `match_index`; empty elsewhere. Defaults to empty
    /// (for scripted cores).
    fn peer_match_indexes(&self) -> Vec<(NodeId, LogIndex)> {
        Vec::new()
    }
    /// A snapshot is durable on this node (see [`RaftNode::snapshot_created`]).
    fn snapshot_created(&mut self, _snap: SnapshotId) {}
    /// The newest snapshot the core knows of (taken or installed).
    fn snapshot(&self) -> Option<SnapshotId> {
        None
    }
    /// The term of the entry at `index` in the core's view (durable or not); defaults to the
    /// durable log's.
    fn log_term(&self, index: LogIndex) -> Option<Term> {
        self.storage().term(index)
    }
    /// See [`RaftNode::report_snapshot_failed`].
    fn report_snapshot_failed(&mut self, _to: NodeId) {}
    /// The configuration in effect at `index` (what a snapshot there records); `None` when the
    /// implementation does not track membership (then the config file's members are recorded).
    fn membership_at(&self, _index: LogIndex) -> Option<crate::raft::Membership> {
        None
    }
    /// See [`RaftNode::transfer_leader`]. Defaults to a refusal (scripted cores never lead a
    /// transfer).
    fn transfer_leader(&mut self, _target: NodeId) -> Result<(), TransferError> {
        Err(TransferError::NotLeader {
            leader_hint: self.leader(),
        })
    }
    /// See [`RaftNode::lead_transferee`].
    fn lead_transferee(&self) -> Option<NodeId> {
        None
    }
    /// See [`RaftNode::propose_conf_change`]. Defaults to a refusal (scripted cores have no
    /// membership).
    fn propose_conf_change(
        &mut self,
        _change: crate::raft::ConfChange,
    ) -> Result<(LogIndex, Term), ProposeError> {
        Err(ProposeError::NotLeader {
            leader_hint: self.leader(),
        })
    }
    /// The configuration in effect now (that of the last configuration entry appended);
    /// `None` when the implementation does not track membership.
    fn membership(&self) -> Option<crate::raft::Membership> {
        None
    }
    /// The index of the configuration entry in effect (see [`RaftNode::membership_index`]);
    /// `None` while the configuration is the one the node started with (its config file's, or
    /// a joining node's guess) or when the implementation does not track membership.
    fn membership_index(&self) -> Option<LogIndex> {
        None
    }
}

impl<S: Storage> Consensus for RaftNode<S> {
    type Log = S;
    fn propose_conf_change(
        &mut self,
        change: crate::raft::ConfChange,
    ) -> Result<(LogIndex, Term), ProposeError> {
        RaftNode::propose_conf_change(self, change)
    }
    fn membership(&self) -> Option<crate::raft::Membership> {
        Some(RaftNode::membership(self).clone())
    }
    fn membership_index(&self) -> Option<LogIndex> {
        RaftNode::membership_index(self)
    }
    fn membership_at(&self, index: LogIndex) -> Option<crate::raft::Membership> {
        Some(RaftNode::membership_at(self, index).clone())
    }
    fn tick(&mut self) {
        RaftNode::tick(self)
    }
    fn step(&mut self, envelope: Envelope) {
        RaftNode::step(self, envelope)
    }
    fn propose(&mut self, payload: Vec<u8>) -> Result<(LogIndex, Term), ProposeError> {
        RaftNode::propose(self, payload)
    }
    fn read_index(&mut self, ctx: u64) -> Result<(), ReadIndexError> {
        RaftNode::read_index(self, ctx)
    }
    fn has_ready(&self) -> bool {
        RaftNode::has_ready(self)
    }
    fn ready(&mut self) -> Ready {
        RaftNode::ready(self)
    }
    fn on_persisted(&mut self, token: Option<(LogIndex, Term)>) {
        RaftNode::on_persisted(self, token)
    }
    fn id(&self) -> NodeId {
        RaftNode::id(self)
    }
    fn role(&self) -> Role {
        RaftNode::role(self)
    }
    fn term(&self) -> Term {
        RaftNode::term(self)
    }
    fn leader(&self) -> Option<NodeId> {
        RaftNode::leader(self)
    }
    fn commit_index(&self) -> LogIndex {
        RaftNode::commit_index(self)
    }
    fn storage(&self) -> &S {
        RaftNode::storage(self)
    }
    fn storage_mut(&mut self) -> &mut S {
        RaftNode::storage_mut(self)
    }
    fn last_index(&self) -> LogIndex {
        RaftNode::last_index(self)
    }
    fn peer_match_indexes(&self) -> Vec<(NodeId, LogIndex)> {
        RaftNode::peer_match_indexes(self)
    }
    fn snapshot_created(&mut self, snap: SnapshotId) {
        RaftNode::snapshot_created(self, snap)
    }
    fn snapshot(&self) -> Option<SnapshotId> {
        RaftNode::snapshot(self)
    }
    fn log_term(&self, index: LogIndex) -> Option<Term> {
        RaftNode::log_term(self, index)
    }
    fn report_snapshot_failed(&mut self, to: NodeId) {
        RaftNode::report_snapshot_failed(self, to)
    }
    fn transfer_leader(&mut self, target: NodeId) -> Result<(), TransferError> {
        RaftNode::transfer_leader(self, target)
    }
    fn lead_transferee(&self) -> Option<NodeId> {
        RaftNode::lead_transferee(self)
    }
}

/// Where the driver's requests to peers go (the node: its peer clients; the simulator: its
/// network), and what a host may watch (the simulator checks safety properties there).
pub trait Outbox {
    /// Sends a request (RequestVote, AppendEntries) to `envelope.to`. Returns false if the
    /// transport refused it (counted, not fatal: Raft retransmits).
    fn send_request(&mut self, envelope: Envelope) -> bool;

    /// Every `Ready`, as the core handed it out, before the driver acts on it.
    fn observe_ready(&mut self, _ready: &Ready) {}

    /// A response leaves for its requester (after the write it waited for, if any), whether or
    /// not a reply slot still waits for it.
    fn observe_response(&mut self, _envelope: &Envelope) {}

    /// A write batch is durable (before its persisted messages leave).
    fn observe_durable(&mut self, _batch: &WriteBatch) {}

    /// A committed entry is about to be applied.
    fn observe_apply(&mut self, _entry: &LogEntry) {}
    /// The state machine was replaced by the snapshot `snap` (a leader's, installed).
    fn observe_install(&mut self, _snap: SnapshotId) {}
}

// ---------------------------------------------------------------------------------------------
// Reply slots
// ---------------------------------------------------------------------------------------------

/// The kind of request a reply handle answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Vote,
    Append,
    /// One-way (thesis §3.10): no response ever claims its slot, so the requester's handle is
    /// dropped once the Readys are drained.
    TimeoutNow,
}

impl RequestKind {
    /// The kind of a request message, `None` for responses.
    pub fn of_request(msg: &Message) -> Option<RequestKind> {
        match msg {
            Message::RequestVote(_) => Some(RequestKind::Vote),
            // Answered by an AppendEntriesResponse, in order with the leader's appends.
            Message::AppendEntries(_) | Message::InstallSnapshot(_) => Some(RequestKind::Append),
            Message::TimeoutNow(_) => Some(RequestKind::TimeoutNow),
            Message::RequestVoteResponse(_) | Message::AppendEntriesResponse(_) => None,
        }
    }

    /// The kind of request a response message answers, `None` for requests.
    pub fn answered_by(msg: &Message) -> Option<RequestKind> {
        match msg {
            Message::RequestVoteResponse(_) => Some(RequestKind::Vote),
            Message::AppendEntriesResponse(_) => Some(RequestKind::Append),
            Message::RequestVote(_)
            | Message::AppendEntries(_)
            | Message::InstallSnapshot(_)
            | Message::TimeoutNow(_) => None,
        }
    }
}

/// Reply handles of inbound requests, waiting for the core's responses.
#[derive(Debug, Default)]
pub struct ReplySlots {
    pending: HashMap<(NodeId, RequestKind), VecDeque<oneshot::Sender<Envelope>>>,
}

impl ReplySlots {
    pub fn register(&mut self, from: NodeId, kind: RequestKind, reply: oneshot::Sender<Envelope>) {
        self.pending
            .entry((from, kind))
            .or_default()
            .push_back(reply);
    }

    /// The oldest handle waiting for `response` (matched by recipient and kind).
    pub fn claim(&mut self, response: &Envelope) -> Option<oneshot::Sender<Envelope>> {
        let kind = RequestKind::answered_by(&response.msg)?;
        self.pending.get_mut(&(response.to, kind))?.pop_front()
    }

    /// Drops every waiting handle (their requesters see "declined"); returns how many.
    pub fn decline_all(&mut self) -> usize {
        let n = self.pending.values().map(VecDeque::len).sum();
        self.pending.clear();
        n
    }

    pub fn len(&self) -> usize {
        self.pending.values().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// ---------------------------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------------------------

/// Static facts and limits the driver needs.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Addresses of every member, for NotLeader answers.
    pub addresses: HashMap<NodeId, SocketAddr>,
    /// The most proposals waiting for their commit; beyond it proposals are refused (not
    /// appended), so clients that outpace the cluster cannot grow the leader's memory unbounded.
    pub proposals_pending_max: usize,
    /// The most linearizable reads registered and not yet answered; beyond it reads are refused.
    pub reads_pending_max: usize,
}

/// Counters the driver keeps (logged at shutdown, useful in tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverStats {
    pub ticks: u64,
    pub readies: u64,
    pub batches_written: u64,
    pub requests_declined: u64,
    pub responses_without_request: u64,
    pub send_refused: u64,
    /// Proposals refused for good (overloaded, too large, no space; not "not leader", which the
    /// API layer forwards or retries) or whose outcome became unknown (another leader's entry
    /// took their index, a snapshot covered them, the node stopped): etcd's
    /// `proposals_failed_total`.
    pub proposals_failed: u64,
}

/// A durable write failed: the host must stop (its disk state is unknown).
#[derive(Debug, thiserror::Error)]
#[error("durable write failed, stopping the node: {0}")]
pub struct DriverError(pub Box<dyn std::error::Error + Send + Sync>);

/// Replaces a state machine by a snapshot that is durable on this node's disk (the host knows
/// where its snapshots live; the driver only knows when). An error stops the node.
pub type SnapshotInstaller<M> = Box<dyn FnMut(SnapshotId, &mut M) -> Result<(), String>>;

/// A Ready whose writes are in flight, with what must wait for them.
struct InFlight<E> {
    batch: Rc<WriteBatch>,
    /// `None` for a Ready with nothing to write (it only waits for the batches before it).
    write: Option<PersistFuture<E>>,
    /// Responses bound to their reply handles at Ready time, sent once durable.
    persisted: Vec<(Envelope, Option<oneshot::Sender<Envelope>>)>,
    /// Requests that must wait for durability too (rare: a vote request after a term change).
    persisted_requests: Vec<Envelope>,
    token: Option<(LogIndex, Term)>,
}

type ProposeReply = oneshot::Sender<Result<ProposeOutcome, ProposeRefused>>;
type CommandReply<R> = oneshot::Sender<Result<Applied<R>, CommandRefused>>;
type ReadReply = oneshot::Sender<Result<ReadGrant, ReadRefused>>;

/// Who waits for a proposal: the Operator service (index and term) or a client API handler
/// (the state machine's response too).
enum Proposer<R> {
    Operator(ProposeReply),
    Command(CommandReply<R>),
    /// A membership change about `node`.
    Member(NodeId, MemberReply),
}

type MemberReply = oneshot::Sender<Result<MemberChanged, MemberRefused>>;

/// Why [`Driver::propose_bounded`] did not propose (each service words it its own way).
enum Refusal {
    Overloaded {
        pending: usize,
    },
    NotLeader {
        leader_hint: Option<NodeId>,
    },
    TooLarge {
        payload_bytes: usize,
        max_bytes: u64,
    },
    NoSpace(NoSpace),
    Transferring {
        to: NodeId,
    },
}

/// See the module docs.
pub struct Driver<C: Consensus, D: Durable<Log = C::Log>, M: StateMachine> {
    core: C,
    durable: D,
    state_machine: M,
    config: DriverConfig,
    slots: ReplySlots,
    in_flight: VecDeque<InFlight<D::Error>>,
    /// index -> (term proposed in, who waits).
    proposals: BTreeMap<LogIndex, (Term, Proposer<M::Response>)>,
    /// Reads registered with the core (ReadIndex), by ctx, not yet confirmed or dropped.
    reads_registered: HashMap<u64, ReadReply>,
    /// Confirmed reads waiting for the state machine to reach their read index.
    reads_confirmed: BTreeMap<LogIndex, Vec<ReadReply>>,
    reads_confirmed_len: usize,
    next_read_ctx: u64,
    applied_index: LogIndex,
    /// Payload bytes of the entries applied since this driver was made (the snapshot policy's
    /// measure of the log grown since a snapshot).
    applied_payload_bytes: u64,
    stats: DriverStats,
    installer: Option<SnapshotInstaller<M>>,
    /// A failure outside the durable writes (a snapshot that could not be installed), reported
    /// by the next `poll_durable`.
    failed: Option<String>,
    /// Bumped whenever the configuration or the member addresses may have changed (a
    /// configuration entry appended or proposed, an address record applied, a snapshot
    /// installed): the host then brings its peer connections and its gate up to date.
    members_generation: u64,
    /// See [`Driver::set_learners_max`].
    learners_max: usize,
}

impl<C: Consensus, D: Durable<Log = C::Log>, M: StateMachine> Driver<C, D, M> {
    /// `applied_index` is what the state machine already reflects (0 for a machine rebuilt from
    /// the log).
    pub fn new(
        core: C,
        durable: D,
        state_machine: M,
        config: DriverConfig,
        applied_index: LogIndex,
    ) -> Self {
        Driver {
            core,
            durable,
            state_machine,
            config,
            slots: ReplySlots::default(),
            in_flight: VecDeque::new(),
            proposals: BTreeMap::new(),
            reads_registered: HashMap::new(),
            reads_confirmed: BTreeMap::new(),
            reads_confirmed_len: 0,
            next_read_ctx: 0,
            applied_index,
            applied_payload_bytes: 0,
            stats: DriverStats::default(),
            installer: None,
            failed: None,
            members_generation: 1,
            learners_max: crate::config::LEARNERS_MAX_DEFAULT as usize,
        }
    }

    /// See the field: compare with the value seen last to know whether to look again.
    pub fn members_generation(&self) -> u64 {
        self.members_generation
    }

    /// The address of every node this driver knows one for (the config file's members and the
    /// members added through this leader); the host adds those it learns from the registry.
    pub fn addresses(&self) -> &HashMap<NodeId, SocketAddr> {
        &self.config.addresses
    }

    /// Records `node`'s address (from the member address registry) for NotLeader answers.
    pub fn set_address(&mut self, node: NodeId, address: SocketAddr) {
        self.config.addresses.insert(node, address);
    }

    /// The most learners a configuration may hold: an add of a learner beyond it is refused
    /// ([`MemberRefused::TooManyLearners`]). [`crate::config::LEARNERS_MAX_DEFAULT`] unless set.
    pub fn set_learners_max(&mut self, learners_max: usize) {
        self.learners_max = learners_max;
    }

    /// How this host installs a leader's snapshot into its state machine. Without one, a core
    /// that decides to install a snapshot stops the node with an error saying so.
    pub fn set_snapshot_installer(&mut self, installer: SnapshotInstaller<M>) {
        self.installer = Some(installer);
    }

    pub fn core(&self) -> &C {
        &self.core
    }

    pub fn durable(&self) -> &D {
        &self.durable
    }

    pub fn state_machine(&self) -> &M {
        &self.state_machine
    }

    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    pub fn applied_index(&self) -> LogIndex {
        self.applied_index
    }

    /// Payload bytes of every entry this driver applied (not those a snapshot installed):
    /// compare two readings for the log grown in between.
    pub fn applied_payload_bytes(&self) -> u64 {
        self.applied_payload_bytes
    }

    /// Proposals waiting for their commit (etcd's `proposals_pending`).
    pub fn proposals_pending(&self) -> usize {
        self.proposals.len()
    }

    /// Linearizable reads registered with the core and neither confirmed nor dropped yet.
    pub fn reads_registered(&self) -> usize {
        self.reads_registered.len()
    }

    /// Whether a Ready is waiting for its write (or for the writes before it).
    /// The applied index and its term: where a snapshot taken now ends.
    pub fn applied(&self) -> Option<SnapshotId> {
        let index = self.applied_index;
        let term = self.core.log_term(index)?;
        (index > LogIndex::ZERO).then_some(SnapshotId { index, term })
    }

    /// A snapshot of the state machine at `snap` is durable: the core may send it to followers,
    /// and the log drops what lies more than `keep_entries` before it (entries a slow follower
    /// may still fetch without a snapshot).
    ///
    /// # Errors
    /// The compaction's I/O error: the node must stop.
    pub fn snapshot_taken(
        &mut self,
        snap: SnapshotId,
        keep_entries: u64,
    ) -> Result<(), DriverError> {
        self.core.snapshot_created(snap);
        let upto = LogIndex(snap.index.0.saturating_sub(keep_entries));
        #[cfg(test)]
        let upto = if crate::mutation::active(crate::mutation::Mutation::CompactPastCommit) {
            self.core.storage().last_index().max(upto)
        } else {
            upto
        };
        if upto >= self.core.storage().first_index() {
            self.durable
                .compact(self.core.storage_mut(), upto)
                .map_err(|e| DriverError(Box::new(e)))?;
        }
        Ok(())
    }

    pub fn has_in_flight(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Advances the core's logical clock by one tick.
    pub fn tick(&mut self) {
        self.stats.ticks += 1;
        self.core.tick();
    }

    /// Hands one mailbox item to the core (or answers it at once). Call [`Driver::drain_ready`]
    /// after a batch of them.
    pub fn handle(&mut self, item: Inbound<M::Response>) {
        match item {
            Inbound::Request { envelope, reply } => {
                if let Message::AppendEntries(m) = &envelope.msg {
                    if let Some(last) = m.entries.last() {
                        crate::timeline::mark("f_step", last.index.0);
                    }
                }
                if let Some(kind) = RequestKind::of_request(&envelope.msg) {
                    self.slots.register(envelope.from, kind, reply);
                }
                self.core.step(envelope);
            }
            Inbound::Response(envelope) => {
                if let Message::AppendEntriesResponse(m) = &envelope.msg {
                    crate::timeline::mark("ack_in", m.last_log_index.0);
                }
                if let Message::RequestVoteResponse(m) = &envelope.msg {
                    tracing::debug!(
                        "📥 Vote response from node {}: granted={} term={}{}",
                        envelope.from,
                        m.vote_granted,
                        m.term,
                        if m.pre_vote { " (pre-vote)" } else { "" }
                    );
                }
                self.core.step(envelope);
            }
            Inbound::Propose { payload, reply } => match self.propose_bounded(payload) {
                Ok((index, term)) => {
                    self.proposals
                        .insert(index, (term, Proposer::Operator(reply)));
                }
                Err(Refusal::Overloaded { pending }) => {
                    let _ = reply.send(Err(ProposeRefused::Overloaded { pending }));
                }
                Err(Refusal::TooLarge {
                    payload_bytes,
                    max_bytes,
                }) => {
                    let _ = reply.send(Err(ProposeRefused::TooLarge {
                        payload_bytes,
                        max_bytes,
                    }));
                }
                Err(Refusal::NoSpace(NoSpace { dir, needed_bytes })) => {
                    let _ = reply.send(Err(ProposeRefused::NoSpace { dir, needed_bytes }));
                }
                Err(Refusal::Transferring { to }) => {
                    let _ = reply.send(Err(ProposeRefused::Transferring { to }));
                }
                Err(Refusal::NotLeader { leader_hint }) => {
                    let leader_address = leader_hint
                        .and_then(|l| self.config.addresses.get(&l))
                        .map(ToString::to_string);
                    let _ = reply.send(Ok(ProposeOutcome::NotLeader {
                        leader: leader_hint,
                        leader_address,
                    }));
                }
            },
            Inbound::Command { payload, reply } => match self.propose_bounded(payload) {
                Ok((index, term)) => {
                    self.proposals
                        .insert(index, (term, Proposer::Command(reply)));
                }
                Err(Refusal::Overloaded { pending }) => {
                    let _ = reply.send(Err(CommandRefused::Overloaded { pending }));
                }
                Err(Refusal::TooLarge {
                    payload_bytes,
                    max_bytes,
                }) => {
                    let _ = reply.send(Err(CommandRefused::TooLarge {
                        payload_bytes,
                        max_bytes,
                    }));
                }
                Err(Refusal::NoSpace(NoSpace { dir, needed_bytes })) => {
                    let _ = reply.send(Err(CommandRefused::NoSpace { dir, needed_bytes }));
                }
                Err(Refusal::Transferring { to }) => {
                    let _ = reply.send(Err(CommandRefused::Transferring { to }));
                }
                Err(Refusal::NotLeader { leader_hint }) => {
                    let _ = reply.send(Err(CommandRefused::NotLeader {
                        leader: leader_hint,
                        leader_address: self.address_of(leader_hint),
                    }));
                }
            },
            Inbound::Read {
                linearizable,
                reply,
            } => self.register_read(linearizable, reply),
            Inbound::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Inbound::TransferLeader { target, reply } => {
                let _ = reply.send(self.core.transfer_leader(target));
            }
            Inbound::Member { request, reply } => self.member_change(request, reply),
            Inbound::Membership { reply } => {
                let _ = reply.send(self.core.membership());
            }
            Inbound::SnapshotFailed { to } => self.core.report_snapshot_failed(to),
            Inbound::Snapshot { reply } => {
                let _ = reply.send(Err(SnapshotRefused::NoSnapshots));
            }
        }
    }

    fn address_of(&self, node: Option<NodeId>) -> Option<SocketAddr> {
        node.and_then(|l| self.config.addresses.get(&l).copied())
    }

    /// Proposes `payload` unless [`DriverConfig::proposals_pending_max`] proposals already wait
    /// for their commit or this node does not lead. A refusal counts as a failed proposal.
    fn propose_bounded(&mut self, payload: Vec<u8>) -> Result<(LogIndex, Term), Refusal> {
        let result = self.try_propose(payload);
        // Only a refusal that is final for the client counts: one because this node does not
        // lead (or is handing leadership over) is forwarded to the leader or held until one is
        // known by the API layer, and retried, so counting it would count every retry of one
        // write (etcd forwards such proposals and does not count them either).
        if matches!(
            result,
            Err(Refusal::Overloaded { .. } | Refusal::TooLarge { .. } | Refusal::NoSpace(_))
        ) {
            self.stats.proposals_failed += 1;
        }
        result
    }

    fn try_propose(&mut self, payload: Vec<u8>) -> Result<(LogIndex, Term), Refusal> {
        let pending = self.proposals.len();
        if pending >= self.config.proposals_pending_max {
            return Err(Refusal::Overloaded { pending });
        }
        // A leader whose log waits for space would only queue the entry behind the stalled
        // write, and the client would hear nothing until its timeout: refuse it now. Only the
        // leader: a follower answers NotLeader below, so its clients reach a leader that may
        // have space.
        if self.core.role() == Role::Leader {
            if let Some(full) = self.durable.no_space() {
                return Err(Refusal::NoSpace(full));
            }
        }
        self.core.propose(payload).map_err(|e| match e {
            ProposeError::NotLeader { leader_hint } => Refusal::NotLeader { leader_hint },
            ProposeError::TooLarge {
                payload_bytes,
                max_bytes,
            } => Refusal::TooLarge {
                payload_bytes,
                max_bytes,
            },
            ProposeError::Transferring { to } => Refusal::Transferring { to },
            // Only `propose_conf_change` refuses for configuration reasons; should a core do it
            // for a normal entry, the proposer hears a refusal, not a crash.
            ProposeError::ConfChangeInFlight { .. }
            | ProposeError::ConfChangeBeforeTermCommit
            | ProposeError::BadConfChange(_) => Refusal::Overloaded {
                pending: self.proposals.len(),
            },
        })
    }

    /// Proposes a membership change ([`Inbound::Member`]): the configuration entry first (so a
    /// refusal appends nothing), then, for an add or an update, the entry that records the
    /// member's address in the replicated state; the reply waits for the last of them.
    fn member_change(&mut self, request: MemberRequest, reply: MemberReply) {
        use crate::raft::ConfChange;
        let refused = |reply: MemberReply, why: MemberRefused| {
            let _ = reply.send(Err(why));
        };
        if self.core.role() != Role::Leader {
            let leader = self.core.leader();
            let leader_address = self.address_of(leader);
            return refused(
                reply,
                MemberRefused::NotLeader {
                    leader,
                    leader_address,
                },
            );
        }
        let Some(membership) = self.core.membership() else {
            return refused(
                reply,
                MemberRefused::Invalid("this core does not track membership".to_string()),
            );
        };
        let pending = self.proposals.len();
        if pending >= self.config.proposals_pending_max {
            return refused(reply, MemberRefused::Overloaded { pending });
        }
        if let Some(full) = self.durable.no_space() {
            return refused(
                reply,
                MemberRefused::NoSpace {
                    dir: full.dir,
                    needed_bytes: full.needed_bytes,
                },
            );
        }
        let (node, change, record) = match request {
            MemberRequest::Add { peer_urls, learner } => {
                let Some(first) = peer_urls.first() else {
                    return refused(reply, MemberRefused::Invalid("no peer URL".to_string()));
                };
                let address = match parse_peer_url(first) {
                    Ok(a) => a,
                    Err(why) => return refused(reply, MemberRefused::Invalid(why)),
                };
                // One above every id this leader knows of: members, recorded addresses (kept
                // for removed members too) and the config file, so no id is ever reused.
                let highest = membership
                    .members()
                    .chain(self.state_machine.member_urls().into_keys())
                    .chain(self.config.addresses.keys().copied())
                    .map(|n| n.0)
                    .max()
                    .unwrap_or(0);
                let Some(next) = highest.checked_add(1) else {
                    return refused(reply, MemberRefused::Invalid("node ids exhausted".into()));
                };
                let node = NodeId(next);
                if learner && membership.learners.len() >= self.learners_max {
                    return refused(
                        reply,
                        MemberRefused::TooManyLearners {
                            learners: membership.learners.len(),
                            max: self.learners_max,
                        },
                    );
                }
                let Some(record) = M::member_record(node, &peer_urls) else {
                    return refused(reply, MemberRefused::NoRegistry);
                };
                // Known now, before the record commits: the leader reaches the new member at
                // once (a voter added to a one-node cluster is needed for the next commit).
                self.config.addresses.insert(node, address);
                let change = if learner {
                    ConfChange::AddLearner(node)
                } else {
                    ConfChange::AddVoter(node)
                };
                (node, Some(change), Some(record))
            }
            MemberRequest::Remove(node) => {
                if !membership.contains(node) {
                    return refused(reply, MemberRefused::NotFound(node));
                }
                (node, Some(ConfChange::RemoveNode(node)), None)
            }
            MemberRequest::Promote(node) => {
                if !membership.contains(node) {
                    return refused(reply, MemberRefused::NotFound(node));
                }
                if membership.is_learner(node) {
                    let match_index = self
                        .core
                        .peer_match_indexes()
                        .into_iter()
                        .find(|(id, _)| *id == node)
                        .map_or(LogIndex::ZERO, |(_, m)| m);
                    let last_index = self.core.last_index();
                    if match_index.0.saturating_mul(100)
                        < last_index.0.saturating_mul(LEARNER_READY_PERCENT)
                    {
                        return refused(
                            reply,
                            MemberRefused::LearnerNotReady {
                                node,
                                match_index,
                                last_index,
                            },
                        );
                    }
                }
                (node, Some(ConfChange::PromoteLearner(node)), None)
            }
            MemberRequest::Update { node, peer_urls } => {
                if !membership.contains(node) {
                    return refused(reply, MemberRefused::NotFound(node));
                }
                let Some(first) = peer_urls.first() else {
                    return refused(reply, MemberRefused::Invalid("no peer URL".to_string()));
                };
                if let Err(why) = parse_peer_url(first) {
                    return refused(reply, MemberRefused::Invalid(why));
                }
                let Some(record) = M::member_record(node, &peer_urls) else {
                    return refused(reply, MemberRefused::NoRegistry);
                };
                (node, None, Some(record))
            }
        };
        let mut last = None;
        if let Some(change) = change {
            match self.core.propose_conf_change(change) {
                Ok(at) => {
                    self.members_generation += 1;
                    last = Some(at);
                }
                Err(e) => {
                    self.stats.proposals_failed += 1;
                    let why = match e {
                        ProposeError::NotLeader { leader_hint } => MemberRefused::NotLeader {
                            leader: leader_hint,
                            leader_address: self.address_of(leader_hint),
                        },
                        ProposeError::Transferring { to } => MemberRefused::Transferring { to },
                        ProposeError::ConfChangeInFlight { index } => {
                            MemberRefused::InFlight { index }
                        }
                        ProposeError::ConfChangeBeforeTermCommit => MemberRefused::BeforeTermCommit,
                        ProposeError::BadConfChange(why) => MemberRefused::Invalid(why),
                        ProposeError::TooLarge { .. } => MemberRefused::Invalid(format!("{e}")),
                    };
                    return refused(reply, why);
                }
            }
        }
        if let Some(record) = record {
            match self.core.propose(record) {
                Ok(at) => last = Some(at),
                Err(e) => {
                    // Only after a configuration entry was appended can this fail (the same
                    // leader, in the same step, so it does not): the change stands, the address
                    // is missing; say so rather than answer success.
                    self.stats.proposals_failed += 1;
                    tracing::error!(node = %node, "the address record of a membership change was not proposed: {e}");
                    return refused(
                        reply,
                        MemberRefused::Invalid(format!("the address record was not proposed: {e}")),
                    );
                }
            }
        }
        if let Some((index, term)) = last {
            tracing::info!(node = %node, index = %index, "membership change proposed");
            self.proposals
                .insert(index, (term, Proposer::Member(node, reply)));
        }
    }

    /// A serializable read is granted at once at the current applied index; a linearizable one
    /// is registered with the core (ReadIndex) and granted once confirmed and applied.
    fn register_read(&mut self, linearizable: bool, reply: ReadReply) {
        if !linearizable {
            let _ = reply.send(Ok(self.read_grant(self.applied_index)));
            return;
        }
        let pending = self.reads_registered.len() + self.reads_confirmed_len;
        if pending >= self.config.reads_pending_max {
            let _ = reply.send(Err(ReadRefused::Overloaded { pending }));
            return;
        }
        self.next_read_ctx += 1;
        let ctx = self.next_read_ctx;
        match self.core.read_index(ctx) {
            Ok(()) => {
                self.reads_registered.insert(ctx, reply);
            }
            Err(ReadIndexError::NotLeader { leader_hint }) => {
                let _ = reply.send(Err(ReadRefused::NotLeader {
                    leader: leader_hint,
                    leader_address: self.address_of(leader_hint),
                }));
            }
        }
    }

    fn read_grant(&self, read_index: LogIndex) -> ReadGrant {
        ReadGrant {
            applied_index: self.applied_index,
            read_index,
            term: self.core.term(),
            leader: self.core.leader(),
        }
    }

    /// Thesis §6.4 step 4: the read may be served once the state machine has applied up to the
    /// read index.
    fn on_read_state(&mut self, ctx: u64, index: LogIndex) {
        let Some(reply) = self.reads_registered.remove(&ctx) else {
            // Not ours (cannot happen: every ctx comes from register_read) or answered already.
            tracing::warn!(ctx, "a confirmed read nobody waits for");
            return;
        };
        if index <= self.applied_index {
            let _ = reply.send(Ok(self.read_grant(index)));
        } else {
            self.reads_confirmed.entry(index).or_default().push(reply);
            self.reads_confirmed_len += 1;
        }
    }

    fn on_read_dropped(&mut self, ctx: u64) {
        if let Some(reply) = self.reads_registered.remove(&ctx) {
            let _ = reply.send(Err(ReadRefused::LeadershipLost));
        }
    }

    /// Grants every confirmed read whose index the state machine has reached.
    fn grant_applied_reads(&mut self) {
        while let Some(first) = self.reads_confirmed.first_entry() {
            if *first.key() > self.applied_index {
                break;
            }
            let (index, replies) = first.remove_entry();
            self.reads_confirmed_len -= replies.len();
            let grant = self.read_grant(index);
            for reply in replies {
                let _ = reply.send(Ok(grant));
            }
        }
    }

    /// This node's view of itself.
    pub fn status(&self) -> NodeStatus {
        let log = self.core.storage();
        NodeStatus {
            node_id: self.core.id(),
            role: self.core.role(),
            term: self.core.term(),
            leader: self.core.leader(),
            commit_index: self.core.commit_index(),
            applied_index: self.applied_index,
            first_log_index: log.first_index(),
            last_log_index: self.core.last_index(),
            peers: self.core.peer_match_indexes(),
            lead_transferee: self.core.lead_transferee(),
        }
    }

    /// Steps 1-5 of the module docs for every Ready the core has; then every request not
    /// answered is declined.
    pub fn drain_ready(&mut self, out: &mut impl Outbox) {
        while self.core.has_ready() {
            let ready = self.core.ready();
            self.stats.readies += 1;
            out.observe_ready(&ready);
            self.take_ready(ready, out);
        }
        // Every request handled above has been answered or ignored by now.
        let declined = self.slots.decline_all();
        self.stats.requests_declined += declined as u64;
        self.release_proposals_if_removed();
    }

    /// Drops the replies of every waiting proposal once this node no longer leads and its
    /// committed configuration leaves it out. Leaders replicate only to members, so such a node
    /// will apply nothing more and its proposals would wait until it stops (three election
    /// timeouts of evidence, `crate::node::event_loop`): a removed leader's clients paused for
    /// 1.5 s in the chaos runs. Their outcome is unknown (the new leader may commit them), which
    /// is what a dropped reply says; clients retry elsewhere at once.
    fn release_proposals_if_removed(&mut self) {
        if self.proposals.is_empty() || self.core.role() == Role::Leader {
            return;
        }
        let committed = self.core.commit_index();
        let Some(membership) = self.core.membership_at(committed) else {
            return;
        };
        if membership.contains(self.core.id()) {
            return;
        }
        let released = self.proposals.len();
        self.stats.proposals_failed += released as u64;
        self.proposals.clear();
        tracing::info!(
            released,
            "this node is outside the committed configuration (index {committed}): its pending \
             proposals' outcomes are unknown, their clients were told so"
        );
    }

    fn take_ready(&mut self, ready: Ready, out: &mut impl Outbox) {
        let token = ready.persist_token();
        let Ready {
            messages,
            install_snapshot,
            truncate_from,
            entries,
            hard_state,
            must_sync,
            persisted_messages,
            committed_entries,
            read_states,
            dropped_reads,
        } = ready;
        for envelope in messages {
            self.route(envelope, None, out);
        }
        let mut persisted = Vec::new();
        let mut persisted_requests = Vec::new();
        for envelope in persisted_messages {
            if RequestKind::answered_by(&envelope.msg).is_some() {
                // Bind the answer to its handle now, while the request's slot is still waiting.
                let slot = self.slots.claim(&envelope);
                persisted.push((envelope, slot));
            } else {
                persisted_requests.push(envelope);
            }
        }
        if let Some(snap) = install_snapshot {
            self.install(snap, out);
            self.members_generation += 1;
        }
        if entries
            .iter()
            .any(|e| e.entry_type == crate::types::EntryType::ConfChange)
            || truncate_from.is_some()
        {
            // A configuration entry took effect (or a truncation undid one).
            self.members_generation += 1;
        }
        let batch = Rc::new(WriteBatch {
            reset: install_snapshot,
            truncate_from,
            entries,
            hard_state,
            must_sync,
        });
        let write = if batch.is_empty() {
            None
        } else {
            self.stats.batches_written += 1;
            Some(self.durable.persist(Rc::clone(&batch)))
        };
        self.in_flight.push_back(InFlight {
            batch,
            write,
            persisted,
            persisted_requests,
            token,
        });
        // Entries handed out as committed are durable locally (core contract), so they can be
        // applied now, before this Ready's own write completes.
        for entry in committed_entries {
            out.observe_apply(&entry);
            self.apply(entry);
        }
        // After applying: a read confirmed at an index this Ready's entries reached is granted
        // at once.
        for read in read_states {
            self.on_read_state(read.ctx, read.index);
        }
        for ctx in dropped_reads {
            self.on_read_dropped(ctx);
        }
        self.grant_applied_reads();
        // Readys with nothing to write complete as soon as everything before them has.
        self.complete_durable_prefix(out);
    }

    /// Polls the oldest in-flight write; once it is durable, completes it and every Ready after
    /// it that has no write of its own (step 3 of the module docs). `Pending` while there is
    /// nothing to wait for. Call [`Driver::drain_ready`] after a `Ready`.
    ///
    /// # Errors
    /// A failed durable write: fatal (the host must stop).
    pub fn poll_durable(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut impl Outbox,
    ) -> Poll<Result<(), DriverError>> {
        if let Some(why) = self.failed.take() {
            return Poll::Ready(Err(DriverError(why.into())));
        }
        let Some(write) = self.in_flight.front_mut().and_then(|f| f.write.as_mut()) else {
            return Poll::Pending;
        };
        match write.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                if let Some(front) = self.in_flight.front_mut() {
                    // Completed: never polled again.
                    front.write = None;
                }
                if let Err(e) = result {
                    return Poll::Ready(Err(DriverError(Box::new(e))));
                }
                self.complete_durable_prefix(out);
                Poll::Ready(Ok(()))
            }
        }
    }

    /// Completes, oldest first, every in-flight Ready whose write is done (or that had none) and
    /// that has no unfinished write before it.
    fn complete_durable_prefix(&mut self, out: &mut impl Outbox) {
        while self.in_flight.front().is_some_and(|f| f.write.is_none()) {
            if let Some(done) = self.in_flight.pop_front() {
                self.complete(done, out);
            }
        }
    }

    /// A Ready is durable: publish it, send what waited for it, tell the core.
    fn complete(&mut self, done: InFlight<D::Error>, out: &mut impl Outbox) {
        if !done.batch.is_empty() {
            out.observe_durable(&done.batch);
            self.durable.publish(self.core.storage_mut(), &done.batch);
        }
        for (envelope, slot) in done.persisted {
            self.deliver_response(envelope, slot, out);
        }
        for envelope in done.persisted_requests {
            self.route(envelope, None, out);
        }
        self.core.on_persisted(done.token);
    }

    fn route(
        &mut self,
        envelope: Envelope,
        slot: Option<oneshot::Sender<Envelope>>,
        out: &mut impl Outbox,
    ) {
        if RequestKind::of_request(&envelope.msg).is_some() {
            if !out.send_request(envelope) {
                self.stats.send_refused += 1;
            }
            return;
        }
        let slot = slot.or_else(|| self.slots.claim(&envelope));
        self.deliver_response(envelope, slot, out);
    }

    fn deliver_response(
        &mut self,
        envelope: Envelope,
        slot: Option<oneshot::Sender<Envelope>>,
        out: &mut impl Outbox,
    ) {
        out.observe_response(&envelope);
        match slot {
            // The requester may have given up (deadline); nothing to do then.
            Some(slot) => {
                if let Message::AppendEntriesResponse(m) = &envelope.msg {
                    crate::timeline::mark("f_ack_out", m.last_log_index.0);
                }
                let _ = slot.send(envelope);
            }
            None => {
                self.stats.responses_without_request += 1;
                tracing::debug!(to = %envelope.to, "dropping a response no request is waiting for");
            }
        }
    }

    /// The core installs a leader's snapshot: the state machine becomes the snapshot's state
    /// (the log reset travels in this Ready's write batch, after every earlier write). Proposals
    /// at or below its index were decided by the leader's log, not this node's: their outcome is
    /// unknown here.
    fn install(&mut self, snap: SnapshotId, out: &mut impl Outbox) {
        let result = match self.installer.as_mut() {
            Some(install) => install(snap, &mut self.state_machine),
            None => Err("this node cannot install snapshots (no installer)".to_string()),
        };
        if let Err(why) = result {
            self.failed = Some(format!(
                "installing the snapshot at index {} term {} failed: {why}",
                snap.index, snap.term
            ));
            return;
        }
        self.applied_index = snap.index;
        out.observe_install(snap);
        while let Some(first) = self.proposals.first_entry() {
            if *first.key() > snap.index {
                break;
            }
            // Dropping the reply tells the client the outcome is unknown.
            drop(first.remove_entry());
            self.stats.proposals_failed += 1;
        }
        self.grant_applied_reads();
    }

    fn apply(&mut self, entry: LogEntry) {
        assert_eq!(
            entry.index,
            self.applied_index.next(),
            "committed entries must be applied in order: applied {} got {}",
            self.applied_index,
            entry.index
        );
        if entry.entry_type == crate::types::EntryType::Normal
            && M::is_member_record(&entry.payload)
        {
            self.members_generation += 1;
        }
        let response = self.state_machine.apply(&entry);
        self.applied_index = entry.index;
        self.applied_payload_bytes += entry.payload.len() as u64;
        // Proposals at or below the applied index are decided now.
        let mut response = Some(response);
        while let Some(first) = self.proposals.first_entry() {
            if *first.key() > entry.index {
                break;
            }
            let (index, (term, proposer)) = first.remove_entry();
            if index == entry.index && term == entry.term {
                match proposer {
                    Proposer::Operator(reply) => {
                        let _ = reply.send(Ok(ProposeOutcome::Committed { index, term }));
                    }
                    Proposer::Command(reply) => {
                        if let Some(response) = response.take() {
                            let _ = reply.send(Ok(Applied {
                                index,
                                term,
                                response,
                            }));
                        }
                    }
                    Proposer::Member(node, reply) => {
                        let _ = reply.send(Ok(MemberChanged { node, index, term }));
                    }
                }
            } else {
                // Another leader's entry took that index: dropping the reply tells the client
                // the outcome is unknown (it was not committed under this proposal).
                self.stats.proposals_failed += 1;
            }
        }
    }

    /// Fails everything still waiting (the host is stopping): reply slots and reads are
    /// dropped, proposals' outcomes become unknown.
    pub fn abandon(&mut self) {
        self.slots.decline_all();
        self.stats.proposals_failed += self.proposals.len() as u64;
        self.proposals.clear();
        self.reads_registered.clear();
        self.reads_confirmed.clear();
        self.reads_confirmed_len = 0;
    }
}

/// The socket address of a peer URL (`http://ip:port` or `https://ip:port`; a bare `ip:port`
/// too). Host names are not resolved: members are named by address, as in the config file.
///
/// # Errors
/// A text naming the URL and what is wrong with it.
pub fn parse_peer_url(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    rest.parse::<SocketAddr>().map_err(|e| {
        format!("peer URL {url:?} is not http://IP:PORT (host names are not resolved): {e}")
    })
}

#[cfg(test)]
mod member_tests {
    //! The membership path of the driver over a real core: one node that leads alone, a
    //! key-value store as the state machine (it keeps the member address registry).
    use std::task::Waker;

    use super::*;
    use crate::kv::KvStore;
    use crate::raft::{Config, HardState, MemStorage};
    use crate::storage::engine::MemDurable;

    #[derive(Default)]
    struct Sent(Vec<Envelope>);

    impl Outbox for Sent {
        fn send_request(&mut self, envelope: Envelope) -> bool {
            self.0.push(envelope);
            true
        }
    }

    type TestDriver = Driver<RaftNode<MemStorage>, MemDurable, KvStore>;

    fn settle(d: &mut TestDriver, out: &mut Sent) {
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..8 {
            d.drain_ready(out);
            while let Poll::Ready(result) = d.poll_durable(&mut cx, out) {
                result.expect("in-memory writes do not fail");
                d.drain_ready(out);
            }
        }
    }

    fn leader() -> (TestDriver, Sent) {
        let core = RaftNode::new(
            Config::new(NodeId(1), vec![NodeId(1)], 7),
            HardState::default(),
            MemStorage::default(),
        )
        .expect("core");
        let config = DriverConfig {
            addresses: HashMap::from([(NodeId(1), "127.0.0.1:1".parse().expect("addr"))]),
            proposals_pending_max: 100,
            reads_pending_max: 100,
        };
        let mut d = Driver::new(
            core,
            MemDurable::default(),
            KvStore::new(),
            config,
            LogIndex::ZERO,
        );
        let mut out = Sent::default();
        for _ in 0..2000 {
            d.tick();
            settle(&mut d, &mut out);
            if d.core().role() == Role::Leader && d.core().commit_index() > LogIndex::ZERO {
                return (d, out);
            }
        }
        panic!("a single node never led");
    }

    fn ask(
        d: &mut TestDriver,
        out: &mut Sent,
        request: MemberRequest,
    ) -> Result<MemberChanged, MemberRefused> {
        let (reply, mut answer) = oneshot::channel();
        d.handle(Inbound::Member { request, reply });
        settle(d, out);
        answer.try_recv().expect("answered once applied or refused")
    }

    #[test]
    fn an_added_learner_is_recorded_with_its_address_and_promotion_waits_for_it() {
        let (mut d, mut out) = leader();
        let generation = d.members_generation();
        let url = "http://127.0.0.1:18004".to_string();
        let added = ask(
            &mut d,
            &mut out,
            MemberRequest::Add {
                peer_urls: vec![url.clone()],
                learner: true,
            },
        )
        .expect("added");
        assert_eq!(added.node, NodeId(2), "one above every id known");
        let membership = d.core().membership().clone();
        assert!(membership.is_learner(NodeId(2)), "{membership}");
        assert_eq!(
            d.state_machine().member_urls().get(&NodeId(2)),
            Some(&vec![url])
        );
        assert_eq!(
            d.addresses().get(&NodeId(2)),
            Some(&"127.0.0.1:18004".parse().expect("addr"))
        );
        assert!(
            d.members_generation() > generation,
            "the host is told to look again"
        );
        assert!(
            out.0.iter().any(|e| e.to == NodeId(2)),
            "the leader replicates to the learner"
        );
        // The learner never answered: it lags, and promotion is refused.
        assert!(matches!(
            ask(&mut d, &mut out, MemberRequest::Promote(NodeId(2))),
            Err(MemberRefused::LearnerNotReady {
                node: NodeId(2),
                ..
            })
        ));
        assert!(d.core().membership().is_learner(NodeId(2)));
        // Removing it is fine; its id is not handed out again.
        ask(&mut d, &mut out, MemberRequest::Remove(NodeId(2))).expect("removed");
        assert!(!d.core().membership().contains(NodeId(2)));
        let again = ask(
            &mut d,
            &mut out,
            MemberRequest::Add {
                peer_urls: vec!["http://127.0.0.1:18005".into()],
                learner: true,
            },
        )
        .expect("added");
        assert_eq!(again.node, NodeId(3), "ids are never reused");
    }

    #[test]
    fn refusals_name_why_and_append_nothing() {
        let (mut d, mut out) = leader();
        let last = d.core().last_index();
        assert_eq!(
            ask(&mut d, &mut out, MemberRequest::Remove(NodeId(9))),
            Err(MemberRefused::NotFound(NodeId(9)))
        );
        assert!(matches!(
            ask(
                &mut d,
                &mut out,
                MemberRequest::Add {
                    peer_urls: vec!["http://name:1".into()],
                    learner: true
                }
            ),
            Err(MemberRefused::Invalid(_))
        ));
        assert!(
            matches!(
                ask(&mut d, &mut out, MemberRequest::Remove(NodeId(1))),
                Err(MemberRefused::Invalid(_))
            ),
            "the last voter"
        );
        assert_eq!(d.core().last_index(), last, "nothing was appended");
        // Two changes at once: the second waits for the first to commit.
        let (first, mut first_answer) = oneshot::channel();
        d.handle(Inbound::Member {
            request: MemberRequest::Add {
                peer_urls: vec!["http://127.0.0.1:2".into()],
                learner: true,
            },
            reply: first,
        });
        let (second, mut second_answer) = oneshot::channel();
        d.handle(Inbound::Member {
            request: MemberRequest::Remove(NodeId(1)),
            reply: second,
        });
        assert!(matches!(
            second_answer.try_recv(),
            Ok(Err(MemberRefused::InFlight { .. }))
        ));
        settle(&mut d, &mut out);
        assert!(matches!(first_answer.try_recv(), Ok(Ok(_))));
    }

    /// Node 2 (played by the test) acknowledges the leader's AppendEntries sent to it so far, up
    /// to `upto` at most.
    fn ack_from_2(d: &mut TestDriver, out: &mut Sent, upto: LogIndex) {
        let requests: Vec<Envelope> = out.0.drain(..).filter(|e| e.to == NodeId(2)).collect();
        for envelope in requests {
            let Message::AppendEntries(ae) = envelope.msg else {
                continue;
            };
            let end = LogIndex(ae.prev_log_index.0 + ae.entries.len() as u64);
            let response = crate::raft::message::AppendEntriesResponse {
                term: ae.term,
                success: true,
                last_log_index: end.min(upto),
                conflict_term: None,
                conflict_index: None,
                read_seq: ae.read_seq,
            };
            d.handle(Inbound::Response(Envelope {
                from: NodeId(2),
                to: NodeId(1),
                msg: Message::AppendEntriesResponse(response),
            }));
        }
        settle(d, out);
    }

    /// A leader that removes itself steps down once the removal commits; the proposals it took
    /// after the removal will never be applied here (the new leader replicates only to members),
    /// so their clients must hear "outcome unknown" then, not when the node stops.
    #[test]
    fn a_removed_leader_releases_its_pending_proposals_when_it_steps_down() {
        let (mut d, mut out) = leader();
        let (reply, mut added) = oneshot::channel();
        d.handle(Inbound::Member {
            request: MemberRequest::Add {
                peer_urls: vec!["http://127.0.0.1:2".into()],
                learner: true,
            },
            reply,
        });
        settle(&mut d, &mut out);
        ack_from_2(&mut d, &mut out, LogIndex(u64::MAX));
        assert!(matches!(added.try_recv(), Ok(Ok(_))), "learner 2 added");
        let (reply, mut promoted) = oneshot::channel();
        d.handle(Inbound::Member {
            request: MemberRequest::Promote(NodeId(2)),
            reply,
        });
        settle(&mut d, &mut out);
        ack_from_2(&mut d, &mut out, LogIndex(u64::MAX));
        assert!(matches!(promoted.try_recv(), Ok(Ok(_))), "2 promoted");
        assert!(d.core().membership().is_voter(NodeId(2)));

        // Node 1 removes itself, then takes one more proposal behind the removal.
        let (reply, mut removed) = oneshot::channel();
        d.handle(Inbound::Member {
            request: MemberRequest::Remove(NodeId(1)),
            reply,
        });
        settle(&mut d, &mut out);
        let removal = d.core().last_index();
        let (reply, mut behind) = oneshot::channel();
        d.handle(Inbound::Propose {
            payload: b"after the removal".to_vec(),
            reply,
        });
        settle(&mut d, &mut out);
        assert!(
            d.core().last_index() > removal,
            "appended behind the removal"
        );
        assert_eq!(
            d.proposals_pending(),
            2,
            "the removal and the proposal behind it"
        );

        // Node 2 acknowledges the removal but not the entry behind it: the removal commits,
        // node 1 steps down, and the proposal behind it is released.
        ack_from_2(&mut d, &mut out, removal);
        assert!(matches!(removed.try_recv(), Ok(Ok(_))), "removal committed");
        assert_ne!(d.core().role(), Role::Leader, "a removed leader steps down");
        assert_eq!(
            behind.try_recv(),
            Err(oneshot::error::TryRecvError::Closed),
            "the client of the proposal behind the removal hears at once that its outcome is unknown"
        );
        assert_eq!(d.proposals_pending(), 0);
    }
}
