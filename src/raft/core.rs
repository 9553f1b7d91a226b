//! `RaftNode`: the Raft state machine. (API skeleton: bodies are filled in by the core's author.)

use crate::raft::message::Envelope;
use crate::raft::storage::{HardState, Storage};
use crate::types::{LogEntry, LogIndex, NodeId, Term};

/// The core's configuration. Times are in ticks; the node converts the YAML config's milliseconds
/// (one tick = one millisecond in the node and the simulator unless stated otherwise).
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// Every voting member, this node included.
    pub voters: Vec<NodeId>,
    /// Election timeout drawn uniformly from `[election_ticks_min, election_ticks_max]` at every
    /// reset (Raft §5.2).
    pub election_ticks_min: u64,
    pub election_ticks_max: u64,
    pub heartbeat_ticks: u64,
    /// The most entries, and payload bytes, one AppendEntries carries.
    pub max_entries_per_msg: u64,
    pub max_bytes_per_msg: u64,
    /// The most AppendEntries with entries outstanding to one follower (pipelining bound).
    pub max_inflight_msgs: usize,
    /// Thesis §9.6.
    pub pre_vote: bool,
    /// A leader that has not heard from a majority within an election timeout steps down.
    pub check_quorum: bool,
    /// Seeds the core's own RNG (election jitter). Give every node a different seed.
    pub rng_seed: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid core config: {0}")]
    Invalid(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProposeError {
    /// This node is not the leader; `leader_hint` is the leader it last heard from, if any.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
}

/// What the driver must do next, in the order described in [`crate::raft`].
#[derive(Debug, Default)]
pub struct Ready {
    /// Send these now.
    pub messages: Vec<Envelope>,
    /// Before appending `entries`, remove every entry with index >= this (conflict resolution).
    pub truncate_from: Option<LogIndex>,
    /// Append these, contiguous and after `truncate_from` if set.
    pub entries: Vec<LogEntry>,
    /// Persist this if set (term/vote/commit changed).
    pub hard_state: Option<HardState>,
    /// Whether an fdatasync is needed before `persisted_messages` may go out.
    pub must_sync: bool,
    /// Send these only after this Ready's writes are durable (votes, append acknowledgements).
    pub persisted_messages: Vec<Envelope>,
    /// Apply these, in order. Only entries that are committed and durable locally.
    pub committed_entries: Vec<LogEntry>,
}

impl Ready {
    /// What to hand to [`RaftNode::on_persisted`] once this Ready's writes are durable: the last
    /// entry it appended (index and term), if any.
    pub fn persist_token(&self) -> Option<(LogIndex, Term)> {
        self.entries.last().map(|e| (e.index, e.term))
    }
}

/// One Raft server's protocol state over a durable log `S`.
pub struct RaftNode<S: Storage> {
    storage: S,
    _config: Config,
}

impl<S: Storage> RaftNode<S> {
    /// Builds a node from durable state (after a restart, `hard_state` and `storage` are what the
    /// disk kept). Starts as a follower.
    pub fn new(config: Config, hard_state: HardState, storage: S) -> Result<Self, ConfigError> {
        let _ = hard_state;
        Ok(RaftNode {
            storage,
            _config: config,
        })
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        todo!()
    }

    /// Handles one inbound message.
    pub fn step(&mut self, envelope: Envelope) {
        let _ = envelope;
        todo!()
    }

    /// Appends a `Normal` entry if this node is the leader; returns its index and term.
    pub fn propose(&mut self, payload: Vec<u8>) -> Result<(LogIndex, Term), ProposeError> {
        let _ = payload;
        todo!()
    }

    pub fn has_ready(&self) -> bool {
        todo!()
    }

    pub fn ready(&mut self) -> Ready {
        todo!()
    }

    /// The entries of a `Ready` up to `(index, term)` are durable.
    pub fn on_persisted(&mut self, token: Option<(LogIndex, Term)>) {
        let _ = token;
        todo!()
    }

    pub fn id(&self) -> NodeId {
        self._config.id
    }

    pub fn role(&self) -> Role {
        todo!()
    }

    pub fn term(&self) -> Term {
        todo!()
    }

    pub fn leader(&self) -> Option<NodeId> {
        todo!()
    }

    pub fn commit_index(&self) -> LogIndex {
        todo!()
    }

    pub fn hard_state(&self) -> HardState {
        todo!()
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// Panics, naming the values, if an invariant of this node's own state is broken.
    pub fn check_invariants(&self) {
        todo!()
    }
}
