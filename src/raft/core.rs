//! `RaftNode`: the Raft state machine. (API skeleton: bodies are filled in by the core's author.)

use crate::raft::log::RaftLog;
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

impl Config {
    /// The defaults the seed's YAML implies (one tick = 1 ms): election timeout 150–500 ticks,
    /// heartbeat every 50 ticks, 1000 entries or 1 MiB per AppendEntries, 8 in flight per
    /// follower, PreVote and CheckQuorum on. Build variants with struct update syntax
    /// (`Config { pre_vote: false, ..Config::new(id, voters, seed) }`) so new fields do not break
    /// callers.
    pub fn new(id: NodeId, voters: Vec<NodeId>, rng_seed: u64) -> Config {
        Config {
            id,
            voters,
            election_ticks_min: 150,
            election_ticks_max: 500,
            heartbeat_ticks: 50,
            max_entries_per_msg: 1000,
            max_bytes_per_msg: 1 << 20,
            max_inflight_msgs: 8,
            pre_vote: true,
            check_quorum: true,
            rng_seed,
        }
    }
}

/// One Raft server's protocol state over a durable log `S`.
pub struct RaftNode<S: Storage> {
    log: RaftLog<S>,
    _config: Config,
    term: Term,
    vote: Option<NodeId>,
    commit: LogIndex,
    applied: LogIndex,
    role: Role,
    leader: Option<NodeId>,
}

impl<S: Storage> RaftNode<S> {
    /// Builds a node from durable state (after a restart, `hard_state` and `storage` are what the
    /// disk kept). Starts as a follower.
    pub fn new(config: Config, hard_state: HardState, storage: S) -> Result<Self, ConfigError> {
        Ok(RaftNode {
            log: RaftLog::new(storage),
            _config: config,
            term: hard_state.term,
            vote: hard_state.vote,
            commit: hard_state.commit,
            applied: LogIndex::ZERO,
            role: Role::Follower,
            leader: None,
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
        self.role
    }

    pub fn term(&self) -> Term {
        self.term
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    pub fn commit_index(&self) -> LogIndex {
        self.commit
    }

    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.commit,
        }
    }

    /// The last index of the node's whole log (durable entries and those not yet persisted).
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }

    /// The term at `index` in the whole log; `Some(Term(0))` for index 0, `None` past the end.
    pub fn log_term(&self, index: LogIndex) -> Option<Term> {
        self.log.term(index)
    }

    /// The entry at `index` in the whole log, `None` outside it.
    pub fn log_entry(&self, index: LogIndex) -> Option<LogEntry> {
        self.log.entry(index)
    }

    /// The last index known durable locally (confirmed by `on_persisted`) and still part of the
    /// log; it moves down when a follower truncates a conflicting durable suffix.
    pub fn persisted_index(&self) -> LogIndex {
        self.log.persisted_index()
    }

    /// The last index handed out in `Ready::committed_entries`.
    pub fn applied_index(&self) -> LogIndex {
        self.applied
    }

    pub fn storage(&self) -> &S {
        self.log.storage()
    }

    pub fn storage_mut(&mut self) -> &mut S {
        self.log.storage_mut()
    }

    /// Panics, naming the values, if an invariant of this node's own state is broken.
    pub fn check_invariants(&self) {
        todo!()
    }
}
