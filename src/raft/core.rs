//! `RaftNode`: the Raft protocol state machine of one server.
//!
//! This module owns the roles (Follower, PreCandidate, Candidate, Leader), the term and vote, the
//! commit and apply indexes, the election and heartbeat timers, the votes of a campaign and (on the
//! leader) every follower's replication progress. It reads and extends the log only through the
//! log view (`RaftLog`, in `log.rs`) and reports what must be persisted, sent and applied in
//! [`Ready`].
//!
//! Invariants (always-on asserts where cheap, all of them in [`RaftNode::check_invariants`]):
//! - `applied <= commit <= last_index`, `applied <= persisted_index <= last_index`;
//! - the term never decreases, and no entry in the log has a term above the current term;
//! - the commit index never decreases and never moves past an entry this node could lose;
//! - a leader never truncates its own log (Leader Append-Only, Raft §5.3);
//! - role-consistent state: a leader has `leader == vote == self` and a progress for every peer,
//!   a candidate voted for itself, a follower or pre-candidate tracks no progress and no pending
//!   read.
//!
//! ReadIndex (thesis §6.4, etcd's ReadOnlySafe): a read registered on the leader gets the commit
//! index as its read index (waiting first for the leader's first commit of its term) and is
//! confirmed once a majority, the leader included, answered an AppendEntries sent after it was
//! registered. Rounds are numbered by `read_seq`, which every AppendEntries carries and every
//! answer echoes; reads registered between two `Ready`s share one round, and at most one round is
//! begun per `Ready` or heartbeat. A leader that steps down hands its pending reads back in
//! `Ready::dropped_reads`. Pending read indexes are always entries of the current term at or
//! below the commit index.
//!
//! Leadership transfer (thesis §3.10): [`RaftNode::transfer_leader`] names a voter; the leader
//! refuses proposals from then on ([`ProposeError::Transferring`]: nothing is appended, the caller
//! may hold and retry), brings the target's log up to its own last index, and sends it
//! `TimeoutNow`. The target campaigns at once, without PreVote, and its vote requests carry
//! `leader_transfer`, which voters honour even within their leader lease. The transfer ends when
//! the leader steps down (a higher term arrives, normally the target's) or is abandoned after
//! `election_ticks_min` ticks, after which proposals are accepted again. A transfer is only ever
//! in progress on a leader, and its target is another voter.
//!
//! Durability (Raft Figure 2 "Persistent state", thesis §10.2.1): every message whose truth
//! depends on this node's durable state — a vote (granted or refused), any AppendEntries answer —
//! goes to `Ready::persisted_messages`, which the driver sends only after that `Ready` (and every
//! earlier one) is durable. A candidate's vote requests leave at once, but its own vote counts
//! only once `on_persisted` reports the `Ready` that carries it. The leader's AppendEntries go
//! to `Ready::messages` at once, in parallel with its own write, and its own log counts toward
//! commit only up to what `on_persisted` confirmed.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};

use crate::raft::log::RaftLog;
use crate::raft::membership::{ConfChange, Membership};
use crate::raft::message::{
    AppendEntries, AppendEntriesResponse, Envelope, InstallSnapshot, Message, RequestVote,
    RequestVoteResponse, SnapshotId, TimeoutNow,
};
use crate::raft::progress::{Progress, ProgressState};
use crate::raft::rng::Rng;
use crate::raft::storage::{HardState, Storage};
use crate::types::{EntryType, LogEntry, LogIndex, NodeId, Term};

/// The core's configuration. Times are in ticks; the node converts the YAML config's milliseconds
/// (one tick = one millisecond in the node and the simulator unless stated otherwise).
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// The voting members of the initial configuration (this node included, unless it starts as
    /// a learner). Configuration entries in the log take over from it (see [`RaftNode::membership`]).
    pub voters: Vec<NodeId>,
    /// The learners of the initial configuration (receive the log, never vote).
    pub learners: Vec<NodeId>,
    /// Election timeout drawn uniformly from `[election_ticks_min, election_ticks_max]` at every
    /// reset (Raft §5.2).
    pub election_ticks_min: u64,
    pub election_ticks_max: u64,
    pub heartbeat_ticks: u64,
    /// The most entries, and payload bytes, one AppendEntries carries (also the most entries and
    /// bytes one `Ready::committed_entries` hands out).
    pub max_entries_per_msg: u64,
    pub max_bytes_per_msg: u64,
    /// The most AppendEntries with entries outstanding to one follower (pipelining bound).
    pub max_inflight_msgs: usize,
    /// The largest payload one entry may carry: what the durable log can store. Larger proposals
    /// are refused ([`ProposeError::TooLarge`]) and an AppendEntries carrying a larger entry is
    /// dropped as malformed, so no input can make the driver's durable write fail. The node sets
    /// it from the segment size (`storage::format::entry_payload_max_bytes`).
    pub max_entry_payload_bytes: u64,
    /// Thesis §9.6.
    pub pre_vote: bool,
    /// A leader that has not heard from a majority within an election timeout steps down, and a
    /// server that heard from a leader within the minimum election timeout ignores vote requests
    /// (thesis §6.2 and §4.2.3).
    pub check_quorum: bool,
    /// Seeds the core's own RNG (election jitter). Give every node a different seed.
    pub rng_seed: u64,
    /// This server joins an existing cluster with an empty disk, possibly under the id of a
    /// member removed earlier (a replaced server). Until a configuration in its log (or a
    /// snapshot's) lists it, it grants no vote: it forgot its old votes and log, and a stale
    /// candidate whose configuration still counts that id as a voter could otherwise win with
    /// its vote while lacking committed entries (simulator finding, issue 15). Once its log
    /// holds the entry that added it, that log is past its removal and its vote is safe again.
    pub join: bool,
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
            learners: Vec::new(),
            election_ticks_min: 150,
            election_ticks_max: 500,
            heartbeat_ticks: 50,
            max_entries_per_msg: 1000,
            max_bytes_per_msg: 1 << 20,
            max_inflight_msgs: 8,
            max_entry_payload_bytes: 16 << 20,
            pre_vote: true,
            check_quorum: true,
            rng_seed,
            join: false,
        }
    }

    /// Checks every field and the relations between them.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the field and its value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        // `id` need not be a member: a node removed from the configuration (whose newest
        // snapshot no longer lists it) or one joining an existing cluster starts outside it. It
        // never campaigns and follows the leader that contacts it (thesis §4.2.1); the
        // configuration entries it receives (or a snapshot's configuration) say whether it is a
        // member again.
        if self.id.0 == 0 {
            return bad("id 0 (node ids start at 1)".to_string());
        }
        if self.voters.is_empty() {
            return bad("voters is empty".to_string());
        }
        let mut sorted = self.voters.clone();
        sorted.extend(self.learners.iter().copied());
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.voters.len() + self.learners.len() {
            return bad(format!(
                "voters {:?} and learners {:?} contain a duplicate",
                self.voters, self.learners
            ));
        }
        if self.election_ticks_min == 0 || self.election_ticks_min > self.election_ticks_max {
            return bad(format!(
                "election_ticks_min {} must be >= 1 and <= election_ticks_max {}",
                self.election_ticks_min, self.election_ticks_max
            ));
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks_min {
            return bad(format!(
                "heartbeat_ticks {} must be >= 1 and below election_ticks_min {}",
                self.heartbeat_ticks, self.election_ticks_min
            ));
        }
        if self.max_entries_per_msg == 0 {
            return bad("max_entries_per_msg must be >= 1".to_string());
        }
        if self.max_bytes_per_msg == 0 {
            return bad("max_bytes_per_msg must be >= 1".to_string());
        }
        if self.max_inflight_msgs == 0 {
            return bad("max_inflight_msgs must be >= 1".to_string());
        }
        if self.max_entry_payload_bytes == 0 {
            return bad("max_entry_payload_bytes must be >= 1".to_string());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid core config: {0}")]
    Invalid(String),
    /// The snapshot a restart starts from does not fit the log beside it: the driver must hand
    /// over a log that holds the snapshot's last entry (or was reset to it).
    #[error(
        "snapshot at index {index} term {term} does not fit the log {first}..={last} \
         (term there: {log_term:?})"
    )]
    SnapshotMismatch {
        index: LogIndex,
        term: Term,
        first: LogIndex,
        last: LogIndex,
        log_term: Option<Term>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// A linearizable read confirmed by the leader (thesis §6.4): the driver may serve the read `ctx`
/// from its state machine once it has applied every entry up to `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The id the caller gave [`RaftNode::read_index`].
    pub ctx: u64,
    /// The leader's commit index when the read was registered (at least its first commit of its
    /// term): every write acknowledged before the read began lies at or below it.
    pub index: LogIndex,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadIndexError {
    /// Only a leader serves ReadIndex; `leader_hint` is the leader this node last heard from.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProposeError {
    /// This node is not the leader; `leader_hint` is the leader it last heard from, if any.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    /// The payload is larger than [`Config::max_entry_payload_bytes`]: the log could not store
    /// it. Nothing was appended.
    #[error("a {payload_bytes}-byte payload is above the limit of {max_bytes} bytes per entry")]
    TooLarge {
        payload_bytes: usize,
        max_bytes: u64,
    },
    /// A leadership transfer to `to` is in progress (thesis §3.10): the leader takes no new
    /// entries until it ends (within an election timeout). Nothing was appended; hold the
    /// proposal and retry, here or at the new leader.
    #[error("leadership is being transferred to {to}; retry shortly")]
    Transferring { to: NodeId },
    /// A configuration change (entry `index`) is not committed yet: one change at a time (thesis
    /// §4.1). Nothing was appended; retry once it commits.
    #[error("a configuration change (entry {index}) is still in flight; retry once it commits")]
    ConfChangeInFlight { index: LogIndex },
    /// This leader has not committed an entry of its own term yet: a change now could be lost
    /// together with one of an earlier leader (the 2015 single-server bug, fixed as in thesis
    /// §4.1 errata). Nothing was appended; retry shortly.
    #[error("the leader has not committed an entry of its term yet; retry shortly")]
    ConfChangeBeforeTermCommit,
    /// The change does not fit the current configuration.
    #[error("invalid configuration change: {0}")]
    BadConfChange(String),
}

/// Why [`RaftNode::transfer_leader`] refused to start a transfer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransferError {
    /// Only the leader can hand leadership over; `leader_hint` is the leader this node last heard
    /// from.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    /// The target is this node, which already leads.
    #[error("node {0} is already the leader")]
    AlreadyLeader(NodeId),
    /// The target is not a voting member (unknown, or not in the configuration).
    #[error("node {target} is not a voting member (voters: {voters:?})")]
    NotAVoter { target: NodeId, voters: Vec<NodeId> },
}

/// What the driver must do next, in the order described in [`crate::raft`].
#[derive(Debug, Default)]
pub struct Ready {
    /// Send these now.
    pub messages: Vec<Envelope>,
    /// Before anything else in this Ready: the snapshot received from the leader (already
    /// durable on this node's disk) replaces the state machine, and the log is reset to an empty
    /// one continuing after the snapshot's index (durably, after every earlier write). Entries
    /// below it will never be applied; `committed_entries` continue after it.
    pub install_snapshot: Option<SnapshotId>,
    /// Before appending `entries`, remove every entry with index >= this (conflict resolution).
    /// When set it equals the index of the first of `entries`, which is then never empty.
    pub truncate_from: Option<LogIndex>,
    /// Append these, contiguous and after `truncate_from` if set.
    pub entries: Vec<LogEntry>,
    /// Persist this if set (term/vote/commit changed).
    pub hard_state: Option<HardState>,
    /// Whether an fdatasync is needed before `persisted_messages` may go out (entries, a
    /// truncation, or a new term or vote; a commit index alone needs none).
    pub must_sync: bool,
    /// Send these only after this Ready's writes are durable (votes, append acknowledgements).
    pub persisted_messages: Vec<Envelope>,
    /// Apply these, in order. Only entries that are committed and durable locally.
    pub committed_entries: Vec<LogEntry>,
    /// Reads whose leadership check passed: serve each once the state machine has applied up to
    /// its `index` (it may be above what this Ready's `committed_entries` reach).
    pub read_states: Vec<ReadState>,
    /// The ctxs of reads that can no longer be confirmed (this node stepped down or its term
    /// moved on): fail them at once with a retryable error.
    pub dropped_reads: Vec<u64>,
}

impl Ready {
    /// What to hand to [`RaftNode::on_persisted`] once this Ready's writes are durable: the last
    /// entry it appended (index and term), if any.
    pub fn persist_token(&self) -> Option<(LogIndex, Term)> {
        self.entries.last().map(|e| (e.index, e.term))
    }
}

/// Checks what the receiver of an AppendEntries relies on: the leader is the sender, the entries
/// continue `prev_log_index` without a gap, and their terms never decrease, never precede
/// `prev_log_term` and never exceed the message's term.
fn check_append_shape(
    from: NodeId,
    ae: &AppendEntries,
    max_entry_payload_bytes: u64,
) -> Result<(), String> {
    if ae.leader_id != from {
        return Err(format!("leader_id {} but sent by {from}", ae.leader_id));
    }
    if ae.prev_log_term > ae.term {
        return Err(format!(
            "prev_log_term {} above the message term {}",
            ae.prev_log_term, ae.term
        ));
    }
    let mut prev = (ae.prev_log_index, ae.prev_log_term);
    for e in &ae.entries {
        if e.payload.len() as u64 > max_entry_payload_bytes {
            return Err(format!(
                "entry {} has a {}-byte payload, above this log's limit of {max_entry_payload_bytes}",
                e.index,
                e.payload.len()
            ));
        }
        if e.index != prev.0.next() || e.term < prev.1 || e.term > ae.term {
            return Err(format!(
                "entry {} (term {}) after {} (term {}) in a term-{} append",
                e.index, e.term, prev.0, prev.1, ae.term
            ));
        }
        prev = (e.index, e.term);
    }
    Ok(())
}

/// The term after `t`.
fn next_term(t: Term) -> Term {
    Term(t.0.checked_add(1).expect("term overflowed u64"))
}

/// What `check_invariants` remembers between calls to check monotonic properties.
#[derive(Clone, Copy, Debug, Default)]
struct InvariantMemo {
    term: Term,
    commit: LogIndex,
    /// `(term, last index, its term)` the last time this node was seen leading.
    leader_log: Option<(Term, LogIndex, Term)>,
}

/// One Raft server's protocol state over a durable log `S`.
pub struct RaftNode<S: Storage> {
    config: Config,
    rng: Rng,
    log: RaftLog<S>,
    term: Term,
    vote: Option<NodeId>,
    commit: LogIndex,
    applied: LogIndex,
    role: Role,
    leader: Option<NodeId>,
    /// Ticks since the election timer was reset (follower and candidates) or since the last
    /// CheckQuorum round (leader).
    election_elapsed: u64,
    randomized_election_ticks: u64,
    heartbeat_elapsed: u64,
    /// Ticks since construction, to date in-flight appends.
    now_tick: u64,
    /// Votes received in the current (pre-)campaign: granted or rejected.
    votes: BTreeMap<NodeId, bool>,
    /// The leader's view of every other voter.
    progress: BTreeMap<NodeId, Progress>,
    /// On a leader: servers a configuration entry of its term removed (their progress dropped),
    /// with that entry's index and their match index then. Once the entry commits each gets one
    /// last append that teaches it the commit, so it learns its removal is final and can stop
    /// at once instead of after evidence that must outlast several election timeouts.
    departed: Vec<(NodeId, LogIndex, LogIndex)>,
    msgs: Vec<Envelope>,
    persisted_msgs: Vec<Envelope>,
    /// The hard state the last `Ready` (or the constructor) handed to the driver.
    last_ready_hard_state: HardState,
    /// Every `Ready` taken and not yet reported durable, oldest first, with its persist token.
    readys_in_flight: VecDeque<Option<(LogIndex, Term)>>,
    /// How many `Ready`s were taken / reported durable since construction.
    readys_taken: u64,
    readys_persisted: u64,
    /// As candidate: the term of the campaign and the number of the `Ready` that persists its
    /// self-vote. The self-vote counts only once that `Ready` is durable.
    self_vote_ready: Option<(Term, u64)>,
    /// ReadIndex (thesis §6.4), leader only. Reads registered before this term's first commit
    /// (the NoOp): their index is not known yet.
    reads_awaiting_commit: Vec<u64>,
    /// Reads with their index fixed, waiting for the next round to begin.
    reads_next_round: Vec<ReadState>,
    /// Rounds begun and not yet confirmed by a majority, oldest first: `(read_seq, reads)`.
    read_rounds: VecDeque<(u64, Vec<ReadState>)>,
    /// The latest round this node began; every AppendEntries carries it. Never decreases over the
    /// node's life, so an answer to an older request can never stand for a newer round.
    read_seq: u64,
    /// Confirmed and dropped reads not yet handed out in a `Ready`.
    read_states: Vec<ReadState>,
    dropped_reads: Vec<u64>,
    /// The newest snapshot durable on this node's disk (taken here or installed from a leader):
    /// what an InstallSnapshot to a follower behind the log's first index carries.
    snapshot: Option<SnapshotId>,
    /// Leader only: the voter leadership is being handed to (thesis §3.10), and the ticks since
    /// the transfer began (it is abandoned after `election_ticks_min`).
    lead_transferee: Option<NodeId>,
    transfer_elapsed: u64,
    /// The configuration before the first entry of `conf_entries`: the initial one (from the
    /// config, which after a restart from a snapshot is the snapshot's) or that of the last
    /// snapshot installed from a leader.
    membership_base: Membership,
    /// Every configuration entry in the log, in index order, with the configuration it makes.
    /// The last one is in effect (thesis §4.1: a configuration takes effect when appended);
    /// truncating the log drops those it removes, reverting to the one before.
    conf_entries: Vec<(LogIndex, Membership)>,
    memo: Cell<InvariantMemo>,
}

impl<S: Storage> RaftNode<S> {
    /// Builds a node from durable state (after a restart, `hard_state` and `storage` are what the
    /// disk kept). Starts as a follower that knows no leader.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for a bad config.
    ///
    /// A persisted commit index beyond the durable log is a hint, not an error: it is clamped to
    /// the log's last index. The commit index is volatile state in Raft (Figure 2) and is
    /// re-learned from the leader; the node persists it only as a hint, and it can reach the disk
    /// before the entries it covers (the state file and the segment are synced in parallel, and
    /// a crash can come between the two syncs). Refusing to start there would leave a node that
    /// nothing repairs.
    pub fn new(config: Config, hard_state: HardState, storage: S) -> Result<Self, ConfigError> {
        Self::restart(config, hard_state, storage, None)
    }

    /// As [`RaftNode::new`], for a node whose state machine was restored from `snapshot` (its
    /// newest durable snapshot): the node has applied up to the snapshot's index, which is
    /// committed, and offers that snapshot to followers its log no longer reaches. With a
    /// snapshot, `config.voters`/`learners` must be the configuration the snapshot recorded (at
    /// its index): configuration entries after it are applied over it. Without a
    /// snapshot the state machine is empty and the node applies from the log's first index.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for a bad config; [`ConfigError::SnapshotMismatch`] when the log
    /// does not hold the snapshot's last entry (`storage.term(index)` must be its term, so the
    /// log starts at or below `index + 1` and reaches `index`).
    pub fn restart(
        config: Config,
        hard_state: HardState,
        storage: S,
        snapshot: Option<SnapshotId>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let log = RaftLog::new(storage);
        if let Some(s) = snapshot {
            let log_term = log.term(s.index);
            if log_term != Some(s.term) || s.index < log.first_index().prev() {
                return Err(ConfigError::SnapshotMismatch {
                    index: s.index,
                    term: s.term,
                    first: log.first_index(),
                    last: log.last_index(),
                    log_term,
                });
            }
        }
        let floor = snapshot.map_or(LogIndex::ZERO, |s| s.index);
        let hard_state = HardState {
            commit: hard_state.commit.min(log.last_index()).max(floor),
            ..hard_state
        };
        let mut term = hard_state.term;
        let mut vote = hard_state.vote;
        let last_term = log.last_term();
        if last_term > term {
            // A crash persisted a prefix of a batch's entries but not the hard state written
            // after them. The node never voted in `last_term` (a vote's hard state is durable
            // before anything it enables), so adopting that term without a vote is safe and
            // restores "no entry above the current term".
            term = last_term;
            vote = None;
        }
        let applied = snapshot.map_or(log.first_index().prev(), |s| s.index);
        let mut node = RaftNode {
            rng: Rng::new(config.rng_seed),
            config,
            log,
            term,
            vote,
            commit: hard_state.commit,
            applied,
            role: Role::Follower,
            leader: None,
            election_elapsed: 0,
            randomized_election_ticks: 0,
            heartbeat_elapsed: 0,
            now_tick: 0,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            departed: Vec::new(),
            msgs: Vec::new(),
            persisted_msgs: Vec::new(),
            last_ready_hard_state: hard_state,
            readys_in_flight: VecDeque::new(),
            readys_taken: 0,
            readys_persisted: 0,
            self_vote_ready: None,
            reads_awaiting_commit: Vec::new(),
            reads_next_round: Vec::new(),
            read_rounds: VecDeque::new(),
            read_seq: 0,
            read_states: Vec::new(),
            dropped_reads: Vec::new(),
            snapshot,
            lead_transferee: None,
            transfer_elapsed: 0,
            membership_base: Membership::default(),
            conf_entries: Vec::new(),
            memo: Cell::new(InvariantMemo::default()),
        };
        node.membership_base = Membership::new(
            node.config.voters.iter().copied(),
            node.config.learners.iter().copied(),
        );
        // The configuration is derived from the log: the configuration entries it holds, over
        // the initial one. With a snapshot, the initial configuration is the snapshot's (the
        // caller passes it in `config`), so only entries after the snapshot's index are applied.
        let (first, last) = (node.log.first_index(), node.log.last_index());
        let mut i = snapshot.map_or(first, |s| s.index.next().max(first));
        while i <= last && i > LogIndex::ZERO {
            if let Some(e) = node.log.entry(i) {
                node.note_conf_entry(&e);
            }
            i = i.next();
        }
        node.reset_election_timer();
        Ok(node)
    }

    // ---------------------------------------------------------------------------------------
    // Inputs
    // ---------------------------------------------------------------------------------------

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.now_tick += 1;
        match self.role {
            Role::Leader => self.tick_leader(),
            Role::Follower | Role::PreCandidate | Role::Candidate => {
                self.election_elapsed += 1;
                if self.election_elapsed >= self.randomized_election_ticks {
                    self.campaign();
                }
            }
        }
    }

    /// Handles one inbound message, from any server (a member of this node's configuration or
    /// not). Messages addressed to another server are ignored.
    pub fn step(&mut self, envelope: Envelope) {
        let Envelope { from, to, msg } = envelope;
        if to != self.config.id || from == self.config.id {
            return;
        }
        // Messages are taken from any server, member of our configuration or not (Raft §5.1,
        // thesis §4.1). Configurations differ between servers while a change spreads: a
        // server being added learns it is a member only from the leader's log, a leader whose
        // removal is not committed still leads, and a voter whose log holds a newer
        // configuration than ours may be the only candidate that can win: ignoring its vote
        // requests left clusters without a leader for good (simulator seeds 201, 759, 1032 of
        // issue 15). Answering is safe: a vote is counted only by a candidate whose own
        // configuration lists the voter (`tally_votes`), an answer only by a leader that tracks
        // the follower (`handle_append_response`). A removed server cannot disrupt: it stops
        // campaigning once its log holds its removal (`campaign`), its pre-votes are refused
        // by the majority holding the removal (their logs are more up to date), and a vote
        // request with a higher term does not pass a live leader's lease (`in_lease`).
        if let Message::AppendEntries(ae) = &msg {
            if let Err(why) = check_append_shape(from, ae, self.config.max_entry_payload_bytes) {
                // Input from the network is not trusted to be well-formed: a malformed append
                // must not trip the log's assertions.
                tracing::warn!(from = %from, "dropping a malformed AppendEntries: {why}");
                return;
            }
        }
        let msg_term = msg.term();
        if msg_term > self.term {
            match &msg {
                Message::RequestVote(rv) if self.in_lease() && !self.lease_yields_to(rv) => {
                    // Thesis §4.2.3: a server that heard from a current leader within the minimum
                    // election timeout neither updates its term nor grants its vote, so a server
                    // that was partitioned away cannot depose a healthy leader. An election the
                    // leader itself asked for (TimeoutNow, §3.10) is the exception.
                    return;
                }
                // Thesis §9.6: a pre-vote changes no state, neither the voter's term nor (when
                // granted, it carries the proposed term) the pre-candidate's.
                Message::RequestVote(rv) if rv.pre_vote => {}
                Message::RequestVoteResponse(r) if r.pre_vote && r.vote_granted => {}
                Message::AppendEntries(_)
                | Message::InstallSnapshot(_)
                | Message::TimeoutNow(_) => self.become_follower(msg_term, Some(from)),
                // Raft §5.1: any higher term, in a request or a response, makes us a follower.
                _ => self.become_follower(msg_term, None),
            }
        } else if msg_term < self.term {
            match &msg {
                Message::AppendEntries(ae) => {
                    // A deposed leader learns our term from the answer and steps down; without
                    // it, a leader cut off by a partition that healed would never learn that a
                    // node moved on (PreVote and CheckQuorum keep that node from campaigning).
                    let last = self.log.last_index();
                    self.reply_append(from, false, last, None, None, ae.read_seq);
                }
                Message::InstallSnapshot(m) => {
                    let last = self.log.last_index();
                    self.reply_append(from, false, last, None, None, m.read_seq);
                }
                Message::RequestVote(rv) if rv.pre_vote => {
                    self.send_now(
                        from,
                        Message::RequestVoteResponse(RequestVoteResponse {
                            term: self.term,
                            vote_granted: false,
                            pre_vote: true,
                        }),
                    );
                }
                // Stale: a vote request or response of an older term decides nothing now.
                _ => {}
            }
            return;
        }
        match msg {
            Message::RequestVote(rv) => self.handle_request_vote(from, rv),
            Message::RequestVoteResponse(r) => self.handle_vote_response(from, r),
            Message::AppendEntries(ae) => self.handle_append_entries(from, ae),
            Message::AppendEntriesResponse(r) => self.handle_append_response(from, r),
            Message::InstallSnapshot(m) => self.handle_install_snapshot(from, m),
            Message::TimeoutNow(m) => self.handle_timeout_now(from, m),
        }
    }

    /// Appends a `Normal` entry if this node is the leader; returns its index and term. The entry
    /// is committed once a majority (this node counted only after `on_persisted`) holds it.
    ///
    /// # Errors
    /// [`ProposeError::NotLeader`] with the leader this node last heard from, if any;
    /// [`ProposeError::TooLarge`] for a payload above [`Config::max_entry_payload_bytes`].
    pub fn propose(&mut self, payload: Vec<u8>) -> Result<(LogIndex, Term), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if let Some(to) = self.lead_transferee {
            // Thesis §3.10: new entries would keep the target behind the leader's log, and the
            // transfer could never finish.
            return Err(ProposeError::Transferring { to });
        }
        if payload.len() as u64 > self.config.max_entry_payload_bytes {
            return Err(ProposeError::TooLarge {
                payload_bytes: payload.len(),
                max_bytes: self.config.max_entry_payload_bytes,
            });
        }
        let index = self.log.last_index().next();
        self.append_to_log(&[LogEntry {
            term: self.term,
            index,
            entry_type: EntryType::Normal,
            payload,
        }]);
        // The appends go out when the driver next takes a Ready, so every proposal made since the
        // last Ready travels in one batch per follower (and one write locally).
        Ok((index, self.term))
    }

    /// Proposes a single-server configuration change (thesis ch. 4) if this node is the leader;
    /// returns the entry's index and term. The change takes effect on this leader at once (and on
    /// each follower when it appends the entry), not when it commits.
    ///
    /// # Errors
    /// [`ProposeError::NotLeader`]; [`ProposeError::Transferring`];
    /// [`ProposeError::ConfChangeBeforeTermCommit`] before this leader committed an entry of its
    /// term; [`ProposeError::ConfChangeInFlight`] while an earlier change is uncommitted;
    /// [`ProposeError::BadConfChange`] for a change that does not fit the configuration.
    pub fn propose_conf_change(
        &mut self,
        cc: ConfChange,
    ) -> Result<(LogIndex, Term), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if let Some(to) = self.lead_transferee {
            return Err(ProposeError::Transferring { to });
        }
        #[cfg(test)]
        let two_in_flight = crate::mutation::active(crate::mutation::Mutation::TwoChangesInFlight);
        #[cfg(not(test))]
        let two_in_flight = false;
        if !two_in_flight {
            // The 2015 single-server bug (Ongaro, raft-dev "bug in single-server membership
            // changes"): a leader that changes the configuration before committing an entry of
            // its term can have that change and an uncommitted one of a previous leader form
            // majorities that do not overlap.
            if !self.committed_in_term() {
                return Err(ProposeError::ConfChangeBeforeTermCommit);
            }
            if let Some(&(index, _)) = self.conf_entries.last() {
                if index > self.commit {
                    return Err(ProposeError::ConfChangeInFlight { index });
                }
            }
        }
        self.membership()
            .apply(cc)
            .map_err(ProposeError::BadConfChange)?;
        if let ConfChange::PromoteLearner(id) = cc {
            self.check_learner_holds_its_addition(id)?;
        }
        let index = self.log.last_index().next();
        tracing::info!(
            id = %self.config.id, term = %self.term, index = %index, change = %cc,
            "configuration change proposed"
        );
        self.append_to_log(&[LogEntry {
            term: self.term,
            index,
            entry_type: EntryType::ConfChange,
            payload: cc.encode(),
        }]);
        Ok((index, self.term))
    }

    /// Refuses to promote learner `id` before it acknowledged the entry that added it (or, when
    /// that entry was compacted, the snapshot that holds it). Until its log holds that entry, a
    /// learner that joined with an empty disk grants no vote (`Config::join`); promoted earlier,
    /// it would be a voter that cannot vote, and a configuration whose other voters cannot elect
    /// a leader without it (two voters, say) would stay without one for good once the leader
    /// failed (simulator seed 852 of issue 15). Operators see this refusal only for a learner
    /// that is barely started: etcd's own rule (`LearnerNotReady` in the driver) asks more.
    fn check_learner_holds_its_addition(&self, id: NodeId) -> Result<(), ProposeError> {
        // The latest entry that made `id` a member; before any, the snapshot's configuration.
        let mut added_at = self.log.first_index().0.saturating_sub(1);
        let mut before = &self.membership_base;
        for (i, m) in &self.conf_entries {
            if m.contains(id) && !before.contains(id) {
                added_at = i.0;
            }
            before = m;
        }
        let matched = self.progress.get(&id).map_or(0, |p| p.match_index.0);
        if matched < added_at {
            // etcd's words for a lagging learner, so that a client retrying on them (as
            // etcdctl users and tests/membership_cluster.rs do) retries on this refusal too.
            return Err(ProposeError::BadConfChange(format!(
                "can only promote a learner member which is in sync with leader: learner {id} \
                 has not yet acknowledged entry {added_at}, which added it (it holds entries up \
                 to {matched})"
            )));
        }
        Ok(())
    }

    /// The configuration in effect on this node: that of the last configuration entry in its log
    /// (committed or not), or the initial one.
    pub fn membership(&self) -> &Membership {
        #[cfg(test)]
        if crate::mutation::active(crate::mutation::Mutation::ConfigOnCommit) {
            return self
                .conf_entries
                .iter()
                .rev()
                .find(|(i, _)| *i <= self.commit)
                .map_or(&self.membership_base, |(_, m)| m);
        }
        self.conf_entries
            .last()
            .map_or(&self.membership_base, |(_, m)| m)
    }

    /// The configuration in effect just after `index` was appended: what a snapshot taken at
    /// `index` records.
    pub fn membership_at(&self, index: LogIndex) -> &Membership {
        self.conf_entries
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map_or(&self.membership_base, |(_, m)| m)
    }

    /// Whether this node still joins (see [`Config::join`]): no configuration it knows of
    /// lists it.
    fn joining(&self) -> bool {
        let id = self.config.id;
        self.config.join
            && !self.membership_base.contains(id)
            && !self.conf_entries.iter().any(|(_, m)| m.contains(id))
    }

    /// The index of the configuration entry in effect, if the log holds one.
    pub fn membership_index(&self) -> Option<LogIndex> {
        self.conf_entries.last().map(|(i, _)| *i)
    }

    /// The follower `id`'s match index, on a leader that tracks it.
    pub fn peer_match_index(&self, id: NodeId) -> Option<LogIndex> {
        self.progress.get(&id).map(|p| p.match_index)
    }

    /// Starts a linearizable read (thesis §6.4, etcd's ReadOnlySafe); `ctx` is the caller's id
    /// for it. No log entry is written. The read is confirmed, and comes back in
    /// [`Ready::read_states`] with its read index, once a majority (this node included) answered
    /// an AppendEntries sent after the read was registered, so no newer leader can have committed
    /// anything this node does not know about. A leader that has not yet committed an entry of its
    /// own term (its NoOp) does not know the whole committed prefix: the read waits for that commit
    /// and takes the commit index then. If this node steps down first, `ctx` comes back in
    /// [`Ready::dropped_reads`].
    ///
    /// Reads registered between two `Ready`s share one round of heartbeats; reads registered while
    /// a round is out join the next one (which begins at the next `ready()` after the current one
    /// is confirmed, or with the next heartbeat, whichever is first).
    ///
    /// # Errors
    /// [`ReadIndexError::NotLeader`] with the leader this node last heard from, if any.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ReadIndexError> {
        if self.role != Role::Leader {
            return Err(ReadIndexError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if self.committed_in_term() {
            self.reads_next_round.push(ReadState {
                ctx,
                index: self.commit,
            });
        } else {
            self.reads_awaiting_commit.push(ctx);
        }
        Ok(())
    }

    /// Starts handing leadership to the voter `target` (thesis §3.10): from now on proposals are
    /// refused with [`ProposeError::Transferring`]; once `target` holds every entry of this
    /// leader's log, it gets `TimeoutNow` and campaigns at once. The transfer ends when this node
    /// steps down, or is abandoned after `election_ticks_min` ticks (proposals are accepted
    /// again). Asking again for the same target while it runs changes nothing; another target
    /// replaces the first and restarts the clock.
    ///
    /// # Errors
    /// [`TransferError::NotLeader`] on a non-leader; [`TransferError::AlreadyLeader`] for this
    /// node itself; [`TransferError::NotAVoter`] for a node outside the configuration.
    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if target == self.config.id {
            return Err(TransferError::AlreadyLeader(target));
        }
        if !self.membership().is_voter(target) {
            return Err(TransferError::NotAVoter {
                target,
                voters: self.membership().voters.iter().copied().collect(),
            });
        }
        if self.lead_transferee == Some(target) {
            return Ok(());
        }
        tracing::info!(
            id = %self.config.id, term = %self.term, target = %target,
            "leadership transfer begins"
        );
        self.lead_transferee = Some(target);
        self.transfer_elapsed = 0;
        if !self.maybe_send_timeout_now(target) {
            // Catch the target up now rather than at the next heartbeat; its acknowledgement
            // of the last entry sends TimeoutNow (handle_append_response).
            self.send_appends(target);
        }
        Ok(())
    }

    /// The voter a leadership transfer is handing over to, while one runs on this leader.
    pub fn lead_transferee(&self) -> Option<NodeId> {
        self.lead_transferee
    }

    // ---------------------------------------------------------------------------------------
    // Output
    // ---------------------------------------------------------------------------------------

    pub fn has_ready(&self) -> bool {
        !self.msgs.is_empty()
            || !self.persisted_msgs.is_empty()
            || self.log.has_unsent()
            || self.hard_state() != self.last_ready_hard_state
            || self.applied < self.apply_limit()
            || !self.read_states.is_empty()
            || !self.dropped_reads.is_empty()
            || (!self.reads_next_round.is_empty() && self.read_rounds.is_empty())
    }

    /// Takes everything the driver must do now (see [`crate::raft`] for the order).
    pub fn ready(&mut self) -> Ready {
        if self.role == Role::Leader
            && !self.reads_next_round.is_empty()
            && self.read_rounds.is_empty()
        {
            // Every read registered since the last Ready shares this one round.
            self.begin_read_round(true);
        }
        if self.role == Role::Leader && self.log.has_unsent() {
            self.send_appends_to_all();
        }
        let (install_snapshot, truncate_from, entries) = self.log.take_unsent();
        let hs = self.hard_state();
        let prev = self.last_ready_hard_state;
        let hard_state = (hs != prev).then_some(hs);
        let must_sync = !entries.is_empty()
            || install_snapshot.is_some()
            || truncate_from.is_some()
            || hs.term != prev.term
            || hs.vote != prev.vote;
        self.last_ready_hard_state = hs;

        // Raft §5.3 with asynchronous writes: apply only what is committed and durable here, so a
        // crash can never un-apply an entry.
        let limit = self.apply_limit();
        let committed_entries = if limit > self.applied {
            let es = self.log.entries(
                self.applied.next(),
                limit.next(),
                self.config.max_entries_per_msg,
                self.config.max_bytes_per_msg,
            );
            if let Some(last) = es.last() {
                self.applied = last.index;
            }
            es
        } else {
            Vec::new()
        };

        let ready = Ready {
            messages: std::mem::take(&mut self.msgs),
            install_snapshot,
            truncate_from,
            entries,
            hard_state,
            must_sync,
            persisted_messages: std::mem::take(&mut self.persisted_msgs),
            committed_entries,
            read_states: std::mem::take(&mut self.read_states),
            dropped_reads: std::mem::take(&mut self.dropped_reads),
        };
        self.readys_taken += 1;
        self.readys_in_flight.push_back(ready.persist_token());
        ready
    }

    /// The oldest `Ready` not yet reported is durable: its truncation, entries and hard state
    /// were written (and synced if `must_sync`). Call it once for EVERY `Ready`, in the order they
    /// were taken, with that Ready's `persist_token()` (`None` for a Ready without entries): a
    /// candidate learns this way that its self-vote is durable.
    ///
    /// # Panics
    /// If no `Ready` is outstanding or `token` is not the oldest outstanding Ready's token: the
    /// driver broke the ordering contract.
    pub fn on_persisted(&mut self, token: Option<(LogIndex, Term)>) {
        let expected = self.readys_in_flight.pop_front().unwrap_or_else(|| {
            panic!(
                "node {}: on_persisted({token:?}) with no Ready outstanding ({} taken, {} \
                 persisted)",
                self.config.id, self.readys_taken, self.readys_persisted
            )
        });
        assert_eq!(
            expected,
            token,
            "node {}: on_persisted out of order: the oldest outstanding Ready (#{}) has token \
             {expected:?}, got {token:?}",
            self.config.id,
            self.readys_persisted + 1
        );
        self.readys_persisted += 1;
        if let Some(t) = token {
            self.log.on_persisted(t);
        }
        match self.role {
            Role::Leader => {
                if self.maybe_commit() {
                    self.on_commit_advanced();
                }
            }
            Role::Candidate => {
                if let Some((term, n)) = self.self_vote_ready {
                    if term == self.term && n <= self.readys_persisted {
                        self.self_vote_ready = None;
                        self.votes.insert(self.config.id, true);
                        self.tally_votes();
                    }
                }
            }
            Role::Follower | Role::PreCandidate => {}
        }
    }

    /// A snapshot is durable on this node's disk: the state after applying every entry up to
    /// `snap.index` (at most the applied index). A leader sends its newest to followers that need
    /// entries the log no longer holds; the driver may compact the log up to `snap.index` once it
    /// has reported it here.
    ///
    /// # Panics
    /// If `snap.index` is above the applied index or the log holds another term there: the
    /// driver snapshotted something this core never applied.
    pub fn snapshot_created(&mut self, snap: SnapshotId) {
        assert!(
            snap.index <= self.applied,
            "node {}: snapshot at {} beyond the applied index {}",
            self.config.id,
            snap.index,
            self.applied
        );
        if let Some(t) = self.log.term(snap.index) {
            assert_eq!(
                t, snap.term,
                "node {}: snapshot at {} with term {} where the log has term {t}",
                self.config.id, snap.index, snap.term
            );
        }
        if self.snapshot.is_none_or(|s| s.index < snap.index) {
            self.snapshot = Some(snap);
        }
    }

    /// The transport could not deliver the snapshot it was sending `to` (the peer is down or the
    /// stream broke beyond resuming). The leader re-probes the follower at its next heartbeat
    /// and sends a snapshot again once the follower answers.
    pub fn report_snapshot_failed(&mut self, to: NodeId) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(pr) = self.progress.get_mut(&to) {
            if matches!(pr.state, ProgressState::Snapshot(_)) {
                let next = pr.match_index.next();
                pr.become_probe(next);
                pr.probe_sent = true;
            }
        }
    }

    /// The newest snapshot durable on this node, as last reported to the core.
    pub fn snapshot(&self) -> Option<SnapshotId> {
        self.snapshot
    }

    // ---------------------------------------------------------------------------------------
    // Read accessors
    // ---------------------------------------------------------------------------------------

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn config(&self) -> &Config {
        &self.config
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

    /// The first index the log still holds (after its compacted prefix or an installed
    /// snapshot, even before the driver's reset of its storage is durable).
    pub fn first_index(&self) -> LogIndex {
        self.log.first_index()
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

    /// On a leader, every other voter's match index (for a Status RPC); empty otherwise.
    pub fn peer_match_indexes(&self) -> Vec<(NodeId, LogIndex)> {
        self.progress
            .iter()
            .map(|(&id, p)| (id, p.match_index))
            .collect()
    }

    pub fn storage(&self) -> &S {
        self.log.storage()
    }

    pub fn storage_mut(&mut self) -> &mut S {
        self.log.storage_mut()
    }

    // ---------------------------------------------------------------------------------------
    // Membership (thesis ch. 4)
    // ---------------------------------------------------------------------------------------

    /// Appends to the log; any configuration entry among `entries` takes effect now.
    fn append_to_log(&mut self, entries: &[LogEntry]) {
        self.log.append(entries);
        let before = self.conf_entries.len();
        for e in entries {
            self.note_conf_entry(e);
        }
        if self.conf_entries.len() != before {
            self.on_membership_changed();
        }
    }

    /// Truncates the log from `from`: configuration entries there are undone.
    fn truncate_log_from(&mut self, from: LogIndex) {
        self.log.truncate_from(from);
        let before = self.conf_entries.len();
        self.conf_entries.retain(|(i, _)| *i < from);
        if self.conf_entries.len() != before {
            tracing::info!(
                id = %self.config.id, from = %from, membership = ?self.membership(),
                "configuration entries truncated: reverting to the previous configuration"
            );
            self.on_membership_changed();
        }
    }

    /// Records `e` if it is a configuration entry. A payload that does not decode (the leader
    /// encodes every one it appends, so only damaged or forged bytes get here) changes nothing
    /// and is reported.
    fn note_conf_entry(&mut self, e: &LogEntry) {
        if e.entry_type != EntryType::ConfChange {
            return;
        }
        // A change that does not decode or does not fit (the leader checks every one it appends,
        // so only damaged or forged bytes get here) is a no-op, the same on every server; it is
        // still recorded, so the one-change-at-a-time rule counts it.
        let current = self.membership().clone();
        let next = ConfChange::decode(&e.payload).and_then(|cc| current.apply(cc));
        let m = match next {
            Ok(m) => {
                tracing::info!(
                    id = %self.config.id, index = %e.index, membership = %m,
                    "configuration entry appended: it takes effect now"
                );
                m
            }
            Err(err) => {
                tracing::error!(
                    id = %self.config.id, index = %e.index,
                    "configuration entry {} is not a valid change ({err}); it changes nothing",
                    e.index
                );
                current
            }
        };
        self.conf_entries.push((e.index, m));
    }

    /// The configuration changed: a leader tracks progress for every member and none other, and
    /// a transfer to a server that is no longer a voter ends.
    fn on_membership_changed(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let peers = self.peers();
        let entry = self.membership_index().unwrap_or(LogIndex::ZERO);
        let departed = &mut self.departed;
        self.progress.retain(|id, pr| {
            let stays = peers.contains(id);
            if !stays {
                departed.push((*id, entry, pr.match_index));
            }
            stays
        });
        // A member again (the entry that removed it was truncated): nothing to tell it.
        self.departed.retain(|(id, _, _)| !peers.contains(id));
        let next = self.log.last_index().next();
        for p in peers {
            self.progress.entry(p).or_insert_with(|| {
                let mut pr = Progress::new(next);
                // A new member has not been silent for a whole CheckQuorum round yet.
                pr.recent_active = true;
                pr
            });
        }
        if let Some(to) = self.lead_transferee {
            if !self.membership().is_voter(to) {
                self.lead_transferee = None;
            }
        }
        if self.maybe_commit() {
            self.on_commit_advanced();
        }
    }

    // ---------------------------------------------------------------------------------------
    // Roles and timers
    // ---------------------------------------------------------------------------------------

    fn quorum(&self) -> usize {
        self.membership().quorum()
    }

    /// Every other member, voters and learners: whom the leader replicates to.
    fn peers(&self) -> Vec<NodeId> {
        self.membership()
            .members()
            .filter(|&v| v != self.config.id)
            .collect()
    }

    /// Every other voter: whom a candidate asks for votes.
    fn voter_peers(&self) -> Vec<NodeId> {
        #[cfg(test)]
        if crate::mutation::active(crate::mutation::Mutation::LearnerVotes) {
            return self.peers();
        }
        self.membership()
            .voters
            .iter()
            .copied()
            .filter(|&v| v != self.config.id)
            .collect()
    }

    /// Whether `id`'s vote, acknowledgement or activity counts toward a quorum.
    fn counts(&self, id: NodeId) -> bool {
        self.membership().is_voter(id)
    }

    /// Raft §5.2: a fresh timeout, drawn uniformly at random, at every reset.
    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.randomized_election_ticks = self
            .rng
            .gen_range(self.config.election_ticks_min..=self.config.election_ticks_max);
    }

    /// Whether this node heard from a live leader (or, as leader, started its current CheckQuorum
    /// round) within the minimum election timeout.
    fn in_lease(&self) -> bool {
        self.config.check_quorum
            && self.leader.is_some()
            && self.election_elapsed < self.config.election_ticks_min
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        assert!(
            term >= self.term,
            "node {}: term would decrease from {} to {term}",
            self.config.id,
            self.term
        );
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        let was_leader = self.role == Role::Leader;
        if was_leader {
            tracing::debug!(id = %self.config.id, term = %self.term, "leader steps down");
            self.drop_pending_reads();
            self.departed.clear();
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        self.progress.clear();
        if let Some(to) = self.lead_transferee.take() {
            tracing::info!(
                id = %self.config.id, term = %self.term, target = %to, new_leader = ?leader,
                "leadership transfer ends: this node stepped down"
            );
        }
        // Figure 2 / §5.2: the timer restarts on hearing from the current leader (and on granting
        // a vote, see handle_request_vote), not on merely learning a higher term: a node with a
        // stale log and a fast clock would otherwise restart everyone's timer with each of its
        // hopeless candidacies, and the servers that could win would never time out first
        // (simulator finding F1). A deposed leader's `election_elapsed` counted CheckQuorum
        // rounds, so it starts a fresh timer.
        if leader.is_some() || was_leader {
            self.reset_election_timer();
        }
    }

    /// The election timer fired: start a pre-vote round (thesis §9.6) or a real election.
    fn campaign(&mut self) {
        if !self.may_campaign() {
            // Learners and servers outside the configuration never campaign (thesis §4.2.1,
            // §4.2.3): they could not win, and their higher terms would only disrupt. The timer
            // is not reset (as in etcd), so one that stopped hearing from a leader leaves its
            // lease behind (`in_lease`).
            return;
        }
        if self.config.pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate(false);
        }
    }

    /// Whether this node may start an election: it is a voter of its configuration, or it was
    /// one until an entry that removed it, which it does not know to be committed yet.
    ///
    /// The second case is a leader that removed itself and was deposed (a higher term,
    /// CheckQuorum) before its removal committed. Its log may be the only one holding the
    /// removal and the entries before it, so the voters of the new configuration may need it to
    /// lead again: they refuse their votes to each other (their logs are less up to date) and
    /// it would refuse its vote to them, leaving the cluster without a leader for good
    /// (simulator seeds 253, 703, 1188, 1899 of issue 15). Its election is counted in its
    /// configuration in effect, which does not list it (its own vote does not count); once
    /// elected it commits the removal and steps down (`on_commit_advanced`), as a removed
    /// leader does (thesis §4.2.2). A removal known to be committed ends its campaigns.
    fn may_campaign(&self) -> bool {
        let id = self.config.id;
        if self.membership().is_voter(id) {
            return true;
        }
        self.membership_index().is_some_and(|i| i > self.commit)
            && self.membership_at(self.commit).is_voter(id)
    }

    /// Whether a vote request may pass a leader lease (§4.2.3): only one from an election the
    /// leader asked for with TimeoutNow (§3.10).
    fn lease_yields_to(&self, rv: &RequestVote) -> bool {
        #[cfg(test)]
        if crate::mutation::active(crate::mutation::Mutation::TransferLeaseHolds) {
            return false;
        }
        rv.leader_transfer
    }

    /// Thesis §9.6: ask whether we could win before disturbing anyone with a new term. Neither
    /// the term nor the vote changes, so nothing needs persisting and the requests leave at once.
    fn become_pre_candidate(&mut self) {
        self.role = Role::PreCandidate;
        self.leader = None;
        self.progress.clear();
        self.votes.clear();
        self.votes.insert(self.config.id, true);
        self.reset_election_timer();
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        for to in self.voter_peers() {
            self.send_now(
                to,
                Message::RequestVote(RequestVote {
                    term: next_term(self.term),
                    candidate_id: self.config.id,
                    last_log_index,
                    last_log_term,
                    pre_vote: true,
                    leader_transfer: false,
                }),
            );
        }
        self.tally_votes();
    }

    /// Raft §5.2: a new term, a vote for ourselves, and RequestVote to every peer. The requests
    /// leave at once, in parallel with persisting the new term and self-vote (as etcd does with
    /// asynchronous storage writes), but the self-vote counts only once the `Ready` carrying it is
    /// durable: had we won on a vote we could still forget in a crash, we could vote again in
    /// this term and a second leader could be elected. The other voters' grants are durable
    /// before they are sent, so counting them at once is safe. `leader_transfer`: the campaign
    /// answers the leader's TimeoutNow (§3.10), and the requests say so.
    fn become_candidate(&mut self, leader_transfer: bool) {
        self.term = next_term(self.term);
        self.vote = Some(self.config.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.progress.clear();
        self.votes.clear();
        // The next Ready carries the new term and vote (the hard state changed).
        self.self_vote_ready = Some((self.term, self.readys_taken + 1));
        self.reset_election_timer();
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        for to in self.voter_peers() {
            self.send_now(
                to,
                Message::RequestVote(RequestVote {
                    term: self.term,
                    candidate_id: self.config.id,
                    last_log_index,
                    last_log_term,
                    pre_vote: false,
                    leader_transfer,
                }),
            );
        }
        self.tally_votes();
    }

    fn become_leader(&mut self) {
        assert_eq!(
            self.role,
            Role::Candidate,
            "node {} becomes leader of term {} from {:?}",
            self.config.id,
            self.term,
            self.role
        );
        tracing::debug!(id = %self.config.id, term = %self.term, "becomes leader");
        self.role = Role::Leader;
        self.leader = Some(self.config.id);
        self.lead_transferee = None;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        let next = self.log.last_index().next();
        // The servers that just answered our vote request (a majority at least) were heard from
        // within this election timeout: they count as active for the first CheckQuorum round.
        // Otherwise, when a round trip is close to the minimum election timeout, that round could
        // end before any append is answered and depose every new leader (simulator finding F2).
        let votes = std::mem::take(&mut self.votes);
        self.progress = self
            .peers()
            .into_iter()
            .map(|p| {
                let mut pr = Progress::new(next);
                pr.recent_active = votes.contains_key(&p);
                (p, pr)
            })
            .collect();
        // Raft §5.4.2 / §8: a leader can commit entries of earlier terms only by committing an
        // entry of its own term, so it appends an empty one right away.
        self.append_to_log(&[LogEntry {
            term: self.term,
            index: next,
            entry_type: EntryType::NoOp,
            payload: Vec::new(),
        }]);
        self.send_appends_to_all();
    }

    fn tick_leader(&mut self) {
        self.election_elapsed += 1;
        self.heartbeat_elapsed += 1;
        if let Some(to) = self.lead_transferee {
            self.transfer_elapsed += 1;
            if self.transfer_elapsed >= self.config.election_ticks_min {
                // Thesis §3.10: the target did not win within an election timeout (it is down,
                // or too far behind); resume taking proposals rather than stall clients longer.
                tracing::warn!(
                    id = %self.config.id, term = %self.term, target = %to,
                    ticks = self.transfer_elapsed,
                    "leadership transfer abandoned: the target did not take over in time"
                );
                self.lead_transferee = None;
            }
        }
        if self.election_elapsed >= self.config.election_ticks_min {
            self.election_elapsed = 0;
            // Thesis §6.2 (CheckQuorum): a leader that did not hear from a majority within an
            // election timeout may be partitioned away; stepping down lets its clients find the
            // real leader and stops it from holding a lease it may no longer have.
            let active = usize::from(self.counts(self.config.id))
                + self
                    .progress
                    .iter()
                    .filter(|(id, p)| p.recent_active && self.counts(**id))
                    .count();
            if self.config.check_quorum && active < self.quorum() {
                tracing::debug!(
                    id = %self.config.id, term = %self.term, active,
                    "CheckQuorum: leader steps down"
                );
                let term = self.term;
                self.become_follower(term, None);
                return;
            }
            for p in self.progress.values_mut() {
                p.recent_active = false;
            }
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            if !self.reads_next_round.is_empty() {
                // The heartbeat reaches every follower anyway: let it carry a new round for the
                // reads waiting (even while an older round is still out, e.g. its answers were lost).
                self.begin_read_round(false);
            }
            self.broadcast_heartbeat();
        }
    }

    // ---------------------------------------------------------------------------------------
    // Elections
    // ---------------------------------------------------------------------------------------

    fn handle_request_vote(&mut self, from: NodeId, rv: RequestVote) {
        // Raft §5.2: one vote per term (repeating it is fine); while a leader is known for this
        // term we vote for no one else. A pre-vote for a later term is granted on the log alone.
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (rv.pre_vote && rv.term > self.term);
        // Raft §5.4.1: only a candidate whose log is at least as up-to-date as ours (later last
        // term, or same last term and at least as long) may get our vote.
        let up_to_date =
            (rv.last_log_term, rv.last_log_index) >= (self.log.last_term(), self.log.last_index());
        // A server joining with an empty disk grants no vote until its log made it a member (see
        // `Config::join`). Refusing a vote is always safe.
        let granted = !self.joining() && can_vote && up_to_date;
        if rv.pre_vote {
            // A granted pre-vote carries the term it was asked for, so the pre-candidate can tell
            // it from a rejection by a server of a higher term.
            let term = if granted { rv.term } else { self.term };
            self.send_now(
                from,
                Message::RequestVoteResponse(RequestVoteResponse {
                    term,
                    vote_granted: granted,
                    pre_vote: true,
                }),
            );
            return;
        }
        if granted {
            self.vote = Some(from);
            // Figure 2: granting a vote resets the election timer.
            self.reset_election_timer();
        }
        self.send_after_persist(
            from,
            Message::RequestVoteResponse(RequestVoteResponse {
                term: self.term,
                vote_granted: granted,
                pre_vote: false,
            }),
        );
    }

    fn handle_vote_response(&mut self, from: NodeId, r: RequestVoteResponse) {
        let relevant = match self.role {
            // A grant carries our term + 1; a rejection carries the voter's term, not above ours
            // (a higher one has already made us a follower).
            Role::PreCandidate => r.pre_vote && (!r.vote_granted || r.term == next_term(self.term)),
            Role::Candidate => !r.pre_vote && r.term == self.term,
            Role::Follower | Role::Leader => false,
        };
        if relevant {
            self.votes.insert(from, r.vote_granted);
            self.tally_votes();
        }
    }

    fn tally_votes(&mut self) {
        #[cfg(test)]
        let learner_votes = crate::mutation::active(crate::mutation::Mutation::LearnerVotes);
        #[cfg(not(test))]
        let learner_votes = false;
        // Only voters' answers count (a learner's grant would let a minority of voters elect).
        let counted: Vec<bool> = self
            .votes
            .iter()
            .filter(|(id, _)| learner_votes || self.counts(**id))
            .map(|(_, g)| *g)
            .collect();
        let granted = counted.iter().filter(|&&g| g).count();
        let rejected = counted.len() - granted;
        if granted >= self.quorum() {
            match self.role {
                Role::PreCandidate => self.become_candidate(false),
                // Raft Figure 2: the term must be durable before this node acts as its leader,
                // even when the other voters alone are a majority. A leader whose term a crash
                // erased restarts in the previous term, can campaign for the same term again,
                // win it again (voters repeat a vote for the same candidate) and append different
                // entries under the same (index, term): Log Matching broken. The self-vote is
                // counted (inserted in `votes`) only once the Ready carrying it is durable.
                // Simulator finding F4 (seed 2806 of a run with a read-path mutation).
                Role::Candidate => {
                    if self.votes.get(&self.config.id) == Some(&true) {
                        self.become_leader();
                    }
                }
                Role::Follower | Role::Leader => {}
            }
        } else if rejected >= self.quorum() {
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Replication: follower side
    // ---------------------------------------------------------------------------------------

    /// A leader of our term spoke (AppendEntries or InstallSnapshot): follow it.
    fn hear_from_leader(&mut self, from: NodeId, what: &str) {
        match self.role {
            Role::Leader => panic!(
                "Election Safety broken: node {} leads term {} and received {what} of the \
                 same term from {from}",
                self.config.id, self.term
            ),
            Role::PreCandidate | Role::Candidate => {
                // Raft §5.2: a candidate that hears from a leader of its term returns to follower.
                let term = self.term;
                self.become_follower(term, Some(from));
            }
            Role::Follower => {
                self.leader = Some(from);
                self.reset_election_timer();
            }
        }
    }

    /// Thesis §3.10: the leader of our term handed leadership to us; campaign now, skipping
    /// PreVote (a pre-vote would be refused by every voter in the leader's lease).
    fn handle_timeout_now(&mut self, from: NodeId, m: TimeoutNow) {
        if m.leader_id != from {
            tracing::warn!(from = %from, leader_id = %m.leader_id, "dropping a misrouted TimeoutNow");
            return;
        }
        if self.role == Role::Leader {
            tracing::warn!(
                id = %self.config.id, term = %self.term, from = %from,
                "ignoring TimeoutNow from another node of our own term while leading"
            );
            return;
        }
        tracing::info!(
            id = %self.config.id, term = %self.term, from = %from,
            "TimeoutNow: campaigning at once to take over leadership"
        );
        #[cfg(test)]
        if crate::mutation::active(crate::mutation::Mutation::TransferPreVoteFirst) {
            self.campaign();
            return;
        }
        self.become_candidate(true);
    }

    fn handle_append_entries(&mut self, from: NodeId, ae: AppendEntries) {
        self.hear_from_leader(from, "AppendEntries");
        let prev = ae.prev_log_index;
        let last = self.log.last_index();
        if prev > last {
            // Our log is too short: tell the leader where it ends.
            self.reply_append(from, false, last, None, None, ae.read_seq);
            return;
        }
        // Entries up to our commit index are identical on every server (Leader Completeness,
        // §5.4), so an append at or below it needs no check there.
        if prev > self.commit && self.log.term(prev) != Some(ae.prev_log_term) {
            // §5.3 with the fast backtracking the paper sketches: report the conflicting term and
            // the first index we hold of it, so the leader skips the whole term in one round trip.
            let conflict_term = self.log.term(prev);
            let conflict_index = self.log.first_index_of_term_at(prev, self.commit.next());
            self.reply_append(
                from,
                false,
                last,
                conflict_term,
                Some(conflict_index),
                ae.read_seq,
            );
            return;
        }
        let last_new = LogIndex(prev.0 + ae.entries.len() as u64);
        for (i, e) in ae.entries.iter().enumerate() {
            if e.index <= self.commit {
                continue;
            }
            match self.log.term(e.index) {
                Some(t) if t == e.term => continue,
                Some(t) => {
                    // Figure 2, AppendEntries step 3: a conflicting entry and all that follow
                    // it go; they were never committed.
                    assert!(
                        e.index > self.commit,
                        "node {}: conflict at committed index {} (commit {}, our term {t}, \
                         leader's {})",
                        self.config.id,
                        e.index,
                        self.commit,
                        e.term
                    );
                    assert_ne!(
                        self.role,
                        Role::Leader,
                        "a leader never truncates its own log"
                    );
                    self.truncate_log_from(e.index);
                    self.append_to_log(&ae.entries[i..]);
                }
                None => self.append_to_log(&ae.entries[i..]),
            }
            break;
        }
        // Figure 2, step 5: commit up to the leader's commit, but never past what this message
        // showed to match the leader's log.
        let new_commit = ae.leader_commit.min(last_new);
        if new_commit > self.commit {
            self.commit = new_commit;
        }
        self.reply_append(from, true, last_new, None, None, ae.read_seq);
    }

    /// Raft §7 on the follower. The driver calls `step` with this message only once the snapshot
    /// is durable on this node's disk. A snapshot at or below the commit index, or whose last
    /// entry our log holds, changes nothing but the commit index (the log after it is kept);
    /// any other replaces the state machine and the whole log. Either way the answer is an
    /// acknowledgement of the snapshot's index, sent once durable.
    fn handle_install_snapshot(&mut self, from: NodeId, m: InstallSnapshot) {
        self.hear_from_leader(from, "InstallSnapshot");
        let snap = m.snapshot;
        #[cfg(test)]
        let (older, keeps_log) = {
            use crate::mutation::{active, Mutation};
            (
                active(Mutation::InstallOlderSnapshot)
                    && self.log.term(snap.index) != Some(snap.term),
                active(Mutation::InstallKeepsConflictingLog) && self.log.last_index() >= snap.index,
            )
        };
        #[cfg(not(test))]
        let (older, keeps_log) = (false, false);
        if snap.index > self.commit || older {
            if self.log.term(snap.index) == Some(snap.term) || keeps_log {
                // Log Matching: our log equals the leader's up to the snapshot's index, which is
                // committed (a leader snapshots only what it applied).
                self.commit = snap.index;
            } else {
                self.log.install_snapshot(snap);
                // The log is gone, and with it every configuration entry we held: the snapshot's
                // configuration (that at its index, which the message carries) is the one in
                // effect now, and entries after the index apply over it as they arrive. Keeping
                // our own entries instead would miss a change between our commit index and the
                // snapshot's index. A node that finds itself outside this configuration is a
                // removed (or not yet added) one: it never campaigns (`campaign`).
                self.conf_entries.clear();
                self.membership_base = m.membership.clone();
                tracing::info!(
                    id = %self.config.id, index = %snap.index, membership = %self.membership_base,
                    "snapshot installed: its configuration is in effect"
                );
                self.commit = snap.index;
                self.applied = snap.index;
                self.snapshot = Some(snap);
            }
        }
        self.reply_append(from, true, snap.index, None, None, m.read_seq);
    }

    /// Every append answer waits for this node's durable state: an acknowledgement claims the
    /// entries are on disk, and a rejection carries a term that may be new.
    fn reply_append(
        &mut self,
        to: NodeId,
        success: bool,
        last_log_index: LogIndex,
        conflict_term: Option<Term>,
        conflict_index: Option<LogIndex>,
        read_seq: u64,
    ) {
        self.send_after_persist(
            to,
            Message::AppendEntriesResponse(AppendEntriesResponse {
                term: self.term,
                success,
                last_log_index,
                conflict_term,
                conflict_index,
                read_seq,
            }),
        );
    }

    // ---------------------------------------------------------------------------------------
    // Replication: leader side
    // ---------------------------------------------------------------------------------------

    fn handle_append_response(&mut self, from: NodeId, r: AppendEntriesResponse) {
        if self.role != Role::Leader {
            return;
        }
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        // Thesis §6.4: any answer in our term (success or rejection) shows the follower had not
        // moved to a later term when it answered. It counts for the rounds up to the `read_seq`
        // it echoes; an answer to an older request (lost, duplicated, reordered) echoes an older
        // round and cannot confirm a newer one. A `read_seq` above any round we began is bogus.
        if r.read_seq > pr.read_ack && r.read_seq <= self.read_seq {
            pr.read_ack = r.read_seq;
            self.maybe_confirm_reads();
        }
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        if r.success {
            if r.last_log_index > last {
                tracing::warn!(
                    from = %from, index = %r.last_log_index, last = %last,
                    "ignoring an acknowledgement beyond the leader's log"
                );
                return;
            }
            let grew = pr.maybe_update(r.last_log_index);
            match pr.state {
                ProgressState::Probe => pr.become_replicate(),
                ProgressState::Replicate => {}
                ProgressState::Snapshot(index) if pr.match_index >= index => pr.become_replicate(),
                ProgressState::Snapshot(_) => {
                    // A heartbeat's answer: the snapshot is still on its way.
                    if grew && self.maybe_commit() {
                        self.on_commit_advanced();
                    }
                    return;
                }
            }
            if grew && self.maybe_commit() {
                self.on_commit_advanced();
            }
            if self.lead_transferee == Some(from) && self.maybe_send_timeout_now(from) {
                // The target holds our whole log (no new entries arrive during a transfer).
                return;
            }
            self.send_appends(from);
            self.maybe_send_commit(from);
            return;
        }
        if matches!(pr.state, ProgressState::Snapshot(_)) {
            // An older append's refusal: the snapshot decides where the follower resumes.
            return;
        }
        // A rejection. Move next_index back by a whole term at a time (§5.3, fast backtracking):
        // if we hold the follower's conflicting term, resume after our last entry of it; if not,
        // at the first index the follower holds of it; if the follower's log was too short,
        // right after its end.
        let old_next = pr.next_index;
        let hint = match (r.conflict_term, r.conflict_index) {
            (Some(t), Some(first)) => match self.last_index_of_term(t, old_next.prev().min(last)) {
                Some(j) => j.next(),
                None => first,
            },
            _ => r.last_log_index.next(),
        };
        if let Some(pr) = self.progress.get_mut(&from) {
            pr.become_probe(hint.min(old_next));
        }
        self.send_appends(from);
    }

    /// Sends `TimeoutNow` to the transfer target if it holds this leader's whole log (durably:
    /// `match_index` counts acknowledged entries only); returns whether it did. Sent again on
    /// each later acknowledgement while the transfer runs, in case one was lost: a target that
    /// already campaigns is in a later term and ignores the repeats.
    fn maybe_send_timeout_now(&mut self, to: NodeId) -> bool {
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|pr| pr.match_index == self.log.last_index());
        if caught_up {
            tracing::info!(
                id = %self.config.id, term = %self.term, target = %to,
                "leadership transfer: target caught up, sending TimeoutNow"
            );
            self.send_now(
                to,
                Message::TimeoutNow(TimeoutNow {
                    term: self.term,
                    leader_id: self.config.id,
                }),
            );
        }
        caught_up
    }

    /// The last index at or below `upto` whose entry has term `t`, if any.
    fn last_index_of_term(&self, t: Term, upto: LogIndex) -> Option<LogIndex> {
        let mut i = upto;
        loop {
            match self.log.term(i) {
                Some(ti) if ti > t && i > LogIndex::ZERO => i = i.prev(),
                Some(ti) if ti == t => return Some(i),
                _ => return None,
            }
        }
    }

    /// Raft §5.3 and §5.4.2: the commit index moves to the highest index a majority holds, but
    /// only if that entry is of the current term (Figure 8: an older term's entry can be
    /// overwritten even when a majority holds it). The leader's own log counts only up to what
    /// is durable locally.
    fn maybe_commit(&mut self) -> bool {
        #[cfg(test)]
        let learners_count =
            crate::mutation::active(crate::mutation::Mutation::LearnerCountsForCommit);
        #[cfg(not(test))]
        let learners_count = false;
        // Thesis §4.2.2: only voters count, and a leader that is not in its own configuration
        // (its removal is in flight) manages the cluster without counting itself.
        let mut matches: Vec<LogIndex> = self
            .progress
            .iter()
            .filter(|(id, _)| learners_count || self.counts(**id))
            .map(|(_, p)| p.match_index)
            .collect();
        if self.counts(self.config.id) {
            matches.push(self.log.persisted_index());
        }
        matches.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&quorum_index) = matches.get(self.quorum() - 1) else {
            return false;
        };
        if quorum_index > self.commit && self.log.term(quorum_index) == Some(self.term) {
            self.commit = quorum_index;
            true
        } else {
            false
        }
    }

    fn send_appends_to_all(&mut self) {
        for to in self.peers() {
            self.send_appends(to);
        }
    }

    /// Sends `to` as many appends as its state allows: one probe, or a pipeline of batches up to
    /// `max_inflight_msgs`, each of at most `max_entries_per_msg` entries and
    /// `max_bytes_per_msg` bytes.
    fn send_appends(&mut self, to: NodeId) {
        loop {
            let last = self.log.last_index();
            let Some(pr) = self.progress.get(&to) else {
                return;
            };
            if !pr.can_send(self.config.max_inflight_msgs) {
                return;
            }
            let next = pr.next_index;
            if pr.state == ProgressState::Replicate && next > last {
                return;
            }
            if next < self.log.first_index() {
                // The follower needs entries this log compacted (Raft §7).
                self.send_snapshot(to);
                return;
            }
            let entries = if next <= last {
                self.log.entries(
                    next,
                    last.next(),
                    self.config.max_entries_per_msg,
                    self.config.max_bytes_per_msg,
                )
            } else {
                Vec::new()
            };
            let sent_last = entries.last().map(|e| e.index);
            self.send_append(to, next.prev(), entries);
            let now = self.now_tick;
            if let Some(pr) = self.progress.get_mut(&to) {
                pr.sent(sent_last, now);
            }
        }
    }

    fn send_append(&mut self, to: NodeId, prev: LogIndex, entries: Vec<LogEntry>) {
        let (prev, prev_log_term) = match self.log.term(prev) {
            Some(t) => (prev, t),
            // A heartbeat or probe anchored below our compacted prefix: anchor it at index 0,
            // which every log holds (and which every follower accepts, 0 being at or below its
            // commit index). Its answer proves the follower is reachable; entries (or a
            // snapshot) follow it.
            None if entries.is_empty() => (LogIndex::ZERO, Term::ZERO),
            None => panic!(
                "leader {}: no term for prev index {prev} (log {}..={}) of an append with \
                 entries: send_appends must have sent a snapshot",
                self.config.id,
                self.log.first_index(),
                self.log.last_index()
            ),
        };
        let covered = LogIndex(prev.0 + entries.len() as u64);
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.commit_sent = pr.commit_sent.max(self.commit.min(covered));
        }
        self.send_now(
            to,
            Message::AppendEntries(AppendEntries {
                term: self.term,
                leader_id: self.config.id,
                prev_log_index: prev,
                prev_log_term,
                entries,
                leader_commit: self.commit,
                read_seq: self.read_seq,
            }),
        );
    }

    /// Sends `to` our newest snapshot and waits for its acknowledgement (or for the transport to
    /// report the transfer failed, [`RaftNode::report_snapshot_failed`]). Without a snapshot
    /// that covers the compacted prefix (the driver compacts only below its snapshots, so this
    /// is a driver bug) the follower is re-probed at each heartbeat and a warning says why.
    fn send_snapshot(&mut self, to: NodeId) {
        let first = self.log.first_index();
        let now = self.now_tick;
        let Some(pr) = self.progress.get_mut(&to) else {
            return;
        };
        match self.snapshot {
            Some(snap) if snap.index.next() >= first => {
                pr.become_snapshot(snap.index);
                let msg = Message::InstallSnapshot(InstallSnapshot {
                    term: self.term,
                    leader_id: self.config.id,
                    snapshot: snap,
                    membership: self.membership_at(snap.index).clone(),
                    read_seq: self.read_seq,
                });
                self.send_now(to, msg);
            }
            newest => {
                tracing::warn!(
                    to = %to, first = %first, snapshot = ?newest,
                    "a follower needs compacted entries and no snapshot covers them"
                );
                pr.sent(None, now);
            }
        }
    }

    /// Every heartbeat interval: an empty append to each follower in Replicate (anchored at its
    /// match index, which it is known to hold, so it can never be rejected for a gap), an empty
    /// re-probe to each follower in Probe whose probe went unanswered, and a restart of any
    /// pipeline that has been silent for two heartbeat intervals (all its appends or their
    /// answers were lost).
    fn broadcast_heartbeat(&mut self) {
        let now = self.now_tick;
        let stall_ticks = 2 * self.config.heartbeat_ticks;
        for to in self.peers() {
            let Some(pr) = self.progress.get_mut(&to) else {
                continue;
            };
            match pr.state {
                ProgressState::Probe => {
                    if pr.probe_sent {
                        // The last probe went unanswered: the follower may be down. Re-probe
                        // without entries, so a dead follower costs a few bytes per heartbeat
                        // rather than a full batch; entries follow its first answer.
                        let prev = pr.next_index.prev();
                        self.send_append(to, prev, Vec::new());
                    } else {
                        self.send_appends(to);
                    }
                }
                ProgressState::Snapshot(_) => {
                    // Keeps the follower from campaigning while the snapshot travels.
                    let anchor = pr.match_index;
                    self.send_append(to, anchor, Vec::new());
                }
                ProgressState::Replicate => {
                    let stalled = pr
                        .inflight
                        .front()
                        .is_some_and(|f| now.saturating_sub(f.sent_at_tick) >= stall_ticks);
                    if stalled {
                        let next = pr.match_index.next();
                        pr.become_probe(next);
                        self.send_appends(to);
                    } else {
                        let anchor = pr.match_index;
                        self.send_append(to, anchor, Vec::new());
                        self.send_appends(to);
                    }
                }
            }
        }
    }

    /// The leader's commit index moved: tell the followers, and give reads that waited for this
    /// term's first commit their read index.
    fn on_commit_advanced(&mut self) {
        self.broadcast_commit();
        self.tell_departed();
        if self.role == Role::Leader
            && !self.membership().is_voter(self.config.id)
            && self
                .conf_entries
                .last()
                .is_some_and(|(i, _)| *i <= self.commit)
        {
            // Thesis §4.2.2: a leader that is no longer a voter steps down once the entry that
            // removed it (or made it a learner) is committed; until then it keeps replicating so
            // that the change can commit.
            tracing::info!(
                id = %self.config.id, term = %self.term,
                "leader steps down: its removal from the configuration is committed"
            );
            let term = self.term;
            self.become_follower(term, None);
            return;
        }
        if !self.reads_awaiting_commit.is_empty() && self.committed_in_term() {
            let index = self.commit;
            let ctxs = std::mem::take(&mut self.reads_awaiting_commit);
            self.reads_next_round
                .extend(ctxs.into_iter().map(|ctx| ReadState { ctx, index }));
        }
    }

    // ---------------------------------------------------------------------------------------
    // ReadIndex (thesis §6.4)
    // ---------------------------------------------------------------------------------------

    /// Whether this leader has committed an entry of its own term. Until it has, it may not know
    /// every committed entry (Leader Completeness gives it them, but not which are committed),
    /// so it cannot name a read index (thesis §6.4 step 1).
    fn committed_in_term(&self) -> bool {
        self.log.term(self.commit) == Some(self.term)
    }

    /// Begins a new round for every read waiting for one. With `send`, an empty AppendEntries goes
    /// to every follower now (anchored where a heartbeat would be: it carries no entries, so the
    /// round never sends what replication would not); without it the caller is about to send a
    /// heartbeat to every follower, which carries the new `read_seq`.
    fn begin_read_round(&mut self, send: bool) {
        debug_assert!(!self.reads_next_round.is_empty(), "an empty read round");
        self.read_seq += 1;
        let reads = std::mem::take(&mut self.reads_next_round);
        self.read_rounds.push_back((self.read_seq, reads));
        if send {
            for to in self.peers() {
                let Some(pr) = self.progress.get(&to) else {
                    continue;
                };
                let anchor = match pr.state {
                    // Known to be held by the follower: the heartbeat is never refused for a gap.
                    ProgressState::Replicate => pr.match_index,
                    // An empty probe; its answer, accepted or refused, confirms the round.
                    ProgressState::Probe => pr.next_index.prev(),
                    // Waiting for a snapshot: any answer confirms the round.
                    ProgressState::Snapshot(_) => pr.match_index,
                };
                self.send_append(to, anchor, Vec::new());
            }
        }
        // A single voter is its own majority.
        self.maybe_confirm_reads();
    }

    /// Confirms every round a majority (this node included) has answered.
    fn maybe_confirm_reads(&mut self) {
        if self.read_rounds.is_empty() {
            return;
        }
        let mut acks: Vec<u64> = self
            .progress
            .iter()
            .filter(|(id, _)| self.counts(**id))
            .map(|(_, p)| p.read_ack)
            .collect();
        if self.counts(self.config.id) {
            acks.push(self.read_seq);
        }
        acks.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&confirmed) = acks.get(self.quorum() - 1) else {
            return;
        };
        while self
            .read_rounds
            .front()
            .is_some_and(|(seq, _)| *seq <= confirmed)
        {
            if let Some((_, reads)) = self.read_rounds.pop_front() {
                self.read_states.extend(reads);
            }
        }
    }

    /// The leader stepped down: no pending read can be confirmed any more (its leadership of this
    /// term may already be over). Confirmed reads already in `read_states` stay valid.
    fn drop_pending_reads(&mut self) {
        self.dropped_reads
            .extend(std::mem::take(&mut self.reads_awaiting_commit));
        self.dropped_reads
            .extend(self.reads_next_round.drain(..).map(|r| r.ctx));
        for (_, reads) in std::mem::take(&mut self.read_rounds) {
            self.dropped_reads.extend(reads.into_iter().map(|r| r.ctx));
        }
    }

    /// After the commit index moved, tell followers at once rather than at the next heartbeat, so
    /// they can apply without waiting.
    fn broadcast_commit(&mut self) {
        for to in self.peers() {
            self.maybe_send_commit(to);
        }
    }

    /// Sends each departed server (see [`RaftNode::departed`]) whose removal is now committed one
    /// last append: the entries from its match index through the removal, with the commit
    /// index. It is not tracked any more (no retry, no answer awaited): if it is lost, or the
    /// server lags too far for one message, it learns of its removal from its peers' refusals.
    fn tell_departed(&mut self) {
        if self.role != Role::Leader || self.departed.is_empty() {
            return;
        }
        let commit = self.commit;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.departed)
            .into_iter()
            .partition(|(_, entry, _)| *entry <= commit);
        self.departed = waiting;
        for (to, entry, matched) in ready {
            let count = entry.0.saturating_sub(matched.0);
            if matched.next() < self.log.first_index() || count > self.config.max_entries_per_msg {
                continue;
            }
            let entries = self.log.entries(
                matched.next(),
                entry.next(),
                self.config.max_entries_per_msg,
                self.config.max_bytes_per_msg,
            );
            if entries.last().map(|e| e.index) != Some(entry) && matched < entry {
                continue;
            }
            self.send_append(to, matched, entries);
        }
    }

    /// Sends `to` an empty append anchored at its match index (which it is known to hold) if it
    /// could learn a higher commit index than any append sent to it so far could teach it.
    fn maybe_send_commit(&mut self, to: NodeId) {
        let Some(pr) = self.progress.get(&to) else {
            return;
        };
        if pr.state == ProgressState::Replicate && self.commit.min(pr.match_index) > pr.commit_sent
        {
            let anchor = pr.match_index;
            self.send_append(to, anchor, Vec::new());
        }
    }

    // ---------------------------------------------------------------------------------------
    // Plumbing
    // ---------------------------------------------------------------------------------------

    fn send_now(&mut self, to: NodeId, msg: Message) {
        self.msgs.push(Envelope {
            from: self.config.id,
            to,
            msg,
        });
    }

    fn send_after_persist(&mut self, to: NodeId, msg: Message) {
        self.persisted_msgs.push(Envelope {
            from: self.config.id,
            to,
            msg,
        });
    }

    /// Committed entries may be applied once durable locally.
    fn apply_limit(&self) -> LogIndex {
        self.commit.min(self.log.persisted_index())
    }

    /// The leader's ReadIndex state: reads wait for this term's first commit only until it
    /// happens; every pending read's index is an index of this term at or below the commit index;
    /// rounds are numbered in increasing order, none above `read_seq`, and no follower
    /// acknowledged a round that was never begun.
    fn check_read_invariants(&self) {
        let id = self.config.id;
        assert!(
            self.reads_awaiting_commit.is_empty() || !self.committed_in_term(),
            "node {id}: {} reads wait for a first commit of term {} that happened (commit {})",
            self.reads_awaiting_commit.len(),
            self.term,
            self.commit
        );
        let mut prev_seq = 0;
        for (seq, reads) in &self.read_rounds {
            assert!(
                *seq > prev_seq && *seq <= self.read_seq && !reads.is_empty(),
                "node {id}: read round {seq} (after {prev_seq}, latest {}) with {} reads",
                self.read_seq,
                reads.len()
            );
            prev_seq = *seq;
        }
        let pending = self
            .read_rounds
            .iter()
            .flat_map(|(_, reads)| reads.iter())
            .chain(self.reads_next_round.iter());
        for r in pending {
            // A read still pending when the leader compacted past its index: the entry (of this
            // term when the read was registered) is behind the snapshot, its term unknown here.
            let term_there = match self.log.term(r.index) {
                None if r.index < self.log.first_index() => Some(self.term),
                t => t,
            };
            assert!(
                r.index <= self.commit && term_there == Some(self.term),
                "node {id}: read {} at index {} (term there {:?}) while commit is {} in term {}",
                r.ctx,
                r.index,
                self.log.term(r.index),
                self.commit,
                self.term
            );
        }
        for (peer, p) in &self.progress {
            assert!(
                p.read_ack <= self.read_seq,
                "node {id}: follower {peer} acknowledged read round {} above the latest {}",
                p.read_ack,
                self.read_seq
            );
        }
    }

    /// Panics, naming the values, if an invariant of this node's own state is broken.
    pub fn check_invariants(&self) {
        let id = self.config.id;
        self.log.check_invariants();
        let last = self.log.last_index();
        let persisted = self.log.persisted_index();
        assert!(
            self.commit <= last,
            "node {id}: commit {} > last index {last}",
            self.commit
        );
        assert!(
            self.applied <= self.commit,
            "node {id}: applied {} > commit {}",
            self.applied,
            self.commit
        );
        assert!(
            self.log.first_index() <= self.applied.next(),
            "node {id}: log compacted to {} beyond the applied index {}",
            self.log.first_index(),
            self.applied
        );
        assert!(
            self.applied <= persisted,
            "node {id}: applied {} > persisted index {persisted}",
            self.applied
        );
        assert!(
            persisted <= last,
            "node {id}: persisted index {persisted} > last index {last}"
        );
        let last_term = self.log.last_term();
        assert!(
            last_term <= self.term,
            "node {id}: last log term {last_term} above current term {}",
            self.term
        );

        let mut memo = self.memo.get();
        assert!(
            self.term >= memo.term,
            "node {id}: term decreased from {} to {}",
            memo.term,
            self.term
        );
        assert!(
            self.commit >= memo.commit,
            "node {id}: commit decreased from {} to {}",
            memo.commit,
            self.commit
        );
        if let Some((t, idx, idx_term)) = memo.leader_log {
            if self.role == Role::Leader && t == self.term {
                assert!(
                    last >= idx && self.log.term(idx) == Some(idx_term),
                    "node {id}: leader of term {t} lost entry {idx} (term {idx_term}): now last \
                     index {last}, term there {:?}",
                    self.log.term(idx)
                );
            }
        }

        if let Some(to) = self.lead_transferee {
            assert!(
                self.role == Role::Leader && to != id && self.membership().is_voter(to),
                "node {id}: transfer to {to} in progress as {:?} (membership {:?})",
                self.role,
                self.membership()
            );
            assert!(
                self.transfer_elapsed < self.config.election_ticks_min,
                "node {id}: transfer to {to} still running after {} ticks",
                self.transfer_elapsed
            );
        }
        match self.role {
            Role::Leader => {
                assert!(
                    self.leader == Some(id) && self.vote == Some(id),
                    "node {id}: leader of term {} with leader {:?} vote {:?}",
                    self.term,
                    self.leader,
                    self.vote
                );
                // `peers()` lists voters before learners; the progress map is ordered by id.
                let mut peers = self.peers();
                peers.sort();
                assert_eq!(
                    self.progress.keys().copied().collect::<Vec<_>>(),
                    peers,
                    "node {id}: leader tracks other followers than the members {:?}",
                    self.membership()
                );
                // Thesis §4.1: one change at a time. This leader accepts a change only once its
                // term has a committed entry and the previous change is committed, so at most one
                // configuration entry of its term is above the commit index.
                let pending = self
                    .conf_entries
                    .iter()
                    .filter(|(i, _)| *i > self.commit && self.log.term(*i) == Some(self.term))
                    .count();
                assert!(
                    pending <= 1,
                    "node {id}: leader of term {} has {pending} uncommitted configuration entries",
                    self.term
                );
                for (peer, p) in &self.progress {
                    assert!(
                        p.match_index < p.next_index && p.next_index <= last.next(),
                        "node {id}: follower {peer} has match {} next {} (last {last})",
                        p.match_index,
                        p.next_index
                    );
                    assert!(
                        p.inflight.len() <= self.config.max_inflight_msgs,
                        "node {id}: {} appends in flight to {peer}, max {}",
                        p.inflight.len(),
                        self.config.max_inflight_msgs
                    );
                    if p.state == ProgressState::Probe {
                        assert!(
                            p.inflight.is_empty(),
                            "node {id}: follower {peer} in Probe with {} in flight",
                            p.inflight.len()
                        );
                    }
                    let mut prev = p.match_index;
                    for f in &p.inflight {
                        assert!(
                            f.last_index > prev && f.last_index < p.next_index,
                            "node {id}: in-flight append to {peer} ends at {} (match {}, \
                             previous {prev}, next {})",
                            f.last_index,
                            p.match_index,
                            p.next_index
                        );
                        prev = f.last_index;
                    }
                }
                memo.leader_log = Some((self.term, last, last_term));
                self.check_read_invariants();
            }
            Role::Candidate => {
                assert!(
                    self.vote == Some(id) && self.leader.is_none() && self.progress.is_empty(),
                    "node {id}: candidate of term {} with vote {:?} leader {:?}",
                    self.term,
                    self.vote,
                    self.leader
                );
            }
            Role::PreCandidate | Role::Follower => {
                assert!(
                    self.reads_awaiting_commit.is_empty()
                        && self.reads_next_round.is_empty()
                        && self.read_rounds.is_empty(),
                    "node {id}: {:?} holds pending reads ({} awaiting commit, {} for the next \
                     round, {} rounds out)",
                    self.role,
                    self.reads_awaiting_commit.len(),
                    self.reads_next_round.len(),
                    self.read_rounds.len()
                );
                assert!(
                    self.progress.is_empty(),
                    "node {id}: {:?} tracks follower progress",
                    self.role
                );
                if self.role == Role::PreCandidate {
                    assert!(
                        self.leader.is_none(),
                        "node {id}: pre-candidate with leader {:?}",
                        self.leader
                    );
                }
            }
        }
        memo.term = self.term;
        memo.commit = self.commit;
        self.memo.set(memo);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::storage::MemStorage;

    fn cfg() -> Config {
        Config::new(NodeId(1), vec![NodeId(1), NodeId(2), NodeId(3)], 1)
    }

    #[test]
    fn validate_names_each_bad_field() {
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    id: NodeId(0),
                    ..cfg()
                },
                "id 0",
            ),
            (
                Config {
                    voters: vec![NodeId(1), NodeId(2), NodeId(2)],
                    ..cfg()
                },
                "duplicate",
            ),
            (
                Config {
                    election_ticks_min: 0,
                    ..cfg()
                },
                "election_ticks_min",
            ),
            (
                Config {
                    election_ticks_min: 600,
                    ..cfg()
                },
                "election_ticks_max 500",
            ),
            (
                Config {
                    heartbeat_ticks: 150,
                    ..cfg()
                },
                "heartbeat_ticks 150",
            ),
            (
                Config {
                    max_entries_per_msg: 0,
                    ..cfg()
                },
                "max_entries_per_msg",
            ),
            (
                Config {
                    max_bytes_per_msg: 0,
                    ..cfg()
                },
                "max_bytes_per_msg",
            ),
            (
                Config {
                    max_inflight_msgs: 0,
                    ..cfg()
                },
                "max_inflight_msgs",
            ),
        ];
        for (c, needle) in cases {
            match c.validate() {
                Err(ConfigError::Invalid(msg)) => {
                    assert!(msg.contains(needle), "{msg:?} should mention {needle:?}")
                }
                other => panic!("expected an error mentioning {needle:?}, got {other:?}"),
            }
        }
        assert_eq!(cfg().validate(), Ok(()));
        // A node outside its initial configuration (joining, or removed) is valid.
        let outside = Config {
            id: NodeId(9),
            ..cfg()
        };
        assert_eq!(outside.validate(), Ok(()));
    }

    fn log_of(terms: &[u64]) -> MemStorage {
        let mut s = MemStorage::default();
        for (i, &t) in terms.iter().enumerate() {
            s.append(&[LogEntry {
                term: Term(t),
                index: LogIndex(i as u64 + 1),
                entry_type: EntryType::Normal,
                payload: Vec::new(),
            }]);
        }
        s
    }

    /// Issue 11, finding 2: the state file's fdatasync can complete before the segment's, so a
    /// crash can leave a persisted commit index beyond the durable log. That is a hint to clamp,
    /// not a reason to refuse to start (nothing would repair it).
    #[test]
    fn restart_clamps_a_commit_index_beyond_the_log() {
        let hs = HardState {
            term: Term(2),
            vote: None,
            commit: LogIndex(3),
        };
        let mut node = RaftNode::new(cfg(), hs, log_of(&[1, 2])).expect("a commit hint is clamped");
        node.check_invariants();
        assert_eq!(node.commit_index(), LogIndex(2));
        // The clamped prefix is committed and handed out again for the state machine.
        let r = node.ready();
        let applied: Vec<u64> = r.committed_entries.iter().map(|e| e.index.0).collect();
        assert_eq!(applied, [1, 2]);
    }

    #[test]
    fn restart_adopts_a_durable_entrys_higher_term_without_a_vote() {
        let hs = HardState {
            term: Term(2),
            vote: Some(NodeId(2)),
            commit: LogIndex(1),
        };
        let mut node = RaftNode::new(cfg(), hs, log_of(&[1, 2, 4])).expect("valid");
        node.check_invariants();
        assert_eq!((node.term(), node.hard_state().vote), (Term(4), None));
        assert!(node.has_ready(), "the adopted term must be persisted");
        let r = node.ready();
        assert_eq!(r.hard_state.map(|h| h.term), Some(Term(4)));
        assert!(r.must_sync);
        // The committed prefix is re-delivered from index 1 (applied starts at 0).
        assert_eq!(r.committed_entries.len(), 1);
    }

    #[test]
    fn a_single_node_cluster_elects_itself_and_commits_after_its_own_write() {
        let c = Config {
            voters: vec![NodeId(1)],
            ..cfg()
        };
        let mut node = RaftNode::new(c, HardState::default(), MemStorage::default()).unwrap();
        for _ in 0..=500 {
            node.tick();
        }
        assert_eq!(
            node.role(),
            Role::Candidate,
            "its self-vote is not durable yet"
        );
        let r = node.ready();
        assert_eq!(r.hard_state.map(|h| h.vote), Some(Some(NodeId(1))));
        node.on_persisted(r.persist_token());
        assert_eq!(node.role(), Role::Leader);
        let (idx, _) = node.propose(b"a".to_vec()).expect("leader");
        let r = node.ready();
        assert_eq!(node.commit_index(), LogIndex(0), "nothing is durable yet");
        node.storage_mut().append(&r.entries);
        node.on_persisted(r.persist_token());
        assert_eq!(node.commit_index(), idx);
        let r = node.ready();
        assert_eq!(r.committed_entries.len(), 2, "NoOp and the proposal");
        node.check_invariants();
    }

    #[test]
    fn the_election_timeout_is_drawn_from_the_configured_range() {
        let c = Config {
            election_ticks_min: 150,
            election_ticks_max: 155,
            ..cfg()
        };
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let mut node = RaftNode::new(
                Config {
                    rng_seed: seed,
                    ..c.clone()
                },
                HardState::default(),
                MemStorage::default(),
            )
            .unwrap();
            let mut ticks = 0;
            while node.role() == Role::Follower {
                node.tick();
                ticks += 1;
                assert!(ticks <= 155, "seed {seed}: no campaign after {ticks} ticks");
            }
            assert!(ticks >= 150, "seed {seed}: campaigned after {ticks} ticks");
            seen.insert(ticks);
        }
        assert_eq!(
            seen.len(),
            6,
            "every timeout in 150..=155 should occur: {seen:?}"
        );
    }
}
