//! The messages Raft servers exchange (the seed's RequestVote and AppendEntries RPCs).

use crate::raft::membership::Membership;
use crate::types::{LogEntry, LogIndex, NodeId, Term};

/// A message with its sender and recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub from: NodeId,
    pub to: NodeId,
    pub msg: Message,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    RequestVote(RequestVote),
    RequestVoteResponse(RequestVoteResponse),
    AppendEntries(AppendEntries),
    AppendEntriesResponse(AppendEntriesResponse),
    /// Answered with an [`AppendEntriesResponse`] once the snapshot is installed (or found
    /// unneeded): success with `last_log_index` = the snapshot's index.
    InstallSnapshot(InstallSnapshot),
    /// Thesis §3.10: the leader tells a caught-up voter to start an election at once (no
    /// PreVote, and voters set aside their leader lease for it). Never answered: the election
    /// that follows is the answer.
    TimeoutNow(TimeoutNow),
}

impl Message {
    /// The term the sender was in (for a pre-vote request: the term it would campaign in).
    pub fn term(&self) -> Term {
        match self {
            Message::RequestVote(m) => m.term,
            Message::RequestVoteResponse(m) => m.term,
            Message::AppendEntries(m) => m.term,
            Message::AppendEntriesResponse(m) => m.term,
            Message::InstallSnapshot(m) => m.term,
            Message::TimeoutNow(m) => m.term,
        }
    }
}

/// Raft §5.2 RequestVote, with the pre-vote flag of thesis §9.6.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestVote {
    pub term: Term,
    pub candidate_id: NodeId,
    pub last_log_index: LogIndex,
    pub last_log_term: Term,
    pub pre_vote: bool,
    /// The candidate campaigns because the leader of the previous term handed leadership to it
    /// ([`TimeoutNow`], thesis §3.10): voters grant it even within their leader lease (§4.2.3),
    /// since the leader itself asked for this election.
    pub leader_transfer: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestVoteResponse {
    pub term: Term,
    pub vote_granted: bool,
    pub pre_vote: bool,
}

/// Raft §5.3 AppendEntries (a heartbeat when `entries` is empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendEntries {
    pub term: Term,
    pub leader_id: NodeId,
    pub prev_log_index: LogIndex,
    pub prev_log_term: Term,
    pub entries: Vec<LogEntry>,
    pub leader_commit: LogIndex,
    /// The leader's latest ReadIndex round when it sent this (thesis §6.4): every read registered
    /// before round `read_seq` began is confirmed once a majority answered messages carrying a
    /// `read_seq` at least this high. 0 = no round yet (and what a peer without ReadIndex sends).
    pub read_seq: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendEntriesResponse {
    pub term: Term,
    pub success: bool,
    /// On success: the index of the last entry this request made durable and matching.
    /// On rejection: the follower's last log index (a hint when its log is too short).
    pub last_log_index: LogIndex,
    /// On rejection because terms disagree at `prev_log_index`: the follower's term there and the
    /// first index it holds with that term, so the leader can skip the whole term (§5.3, "fast
    /// backtracking").
    pub conflict_term: Option<Term>,
    pub conflict_index: Option<LogIndex>,
    /// The `read_seq` of the AppendEntries this answers, echoed unchanged, so an answer can only
    /// confirm the reads of rounds that began before that request was sent.
    pub read_seq: u64,
}

/// The last log entry a snapshot includes: the state machine's state after applying every entry
/// up to `index`, whose term is `term`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotId {
    pub index: LogIndex,
    pub term: Term,
}

/// Raft §7 InstallSnapshot, as the core sees it: which snapshot. The snapshot's bytes travel
/// beside the message (the transport streams the file in checksummed chunks); the receiving
/// driver hands this message to its core only once the whole snapshot is durable on its disk,
/// so the core decides on a snapshot that it can install at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallSnapshot {
    pub term: Term,
    pub leader_id: NodeId,
    pub snapshot: SnapshotId,
    /// The configuration in effect at the snapshot's index (thesis §4.4 and §5.1: a snapshot
    /// carries the latest configuration it covers). A follower that replaces its log by the
    /// snapshot loses the configuration entries the snapshot covers, so it adopts this one.
    /// The leader fills it with `membership_at(snapshot.index)`; the node's receiver fills it
    /// from the received file's header, which recorded the same configuration.
    pub membership: Membership,
    /// Echoed in the answer, as for AppendEntries (thesis §6.4).
    pub read_seq: u64,
}

/// Thesis §3.10 leadership transfer: the leader of `term` found the recipient's log caught up
/// with its own and asks it to campaign now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeoutNow {
    pub term: Term,
    pub leader_id: NodeId,
}
