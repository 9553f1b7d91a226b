//! Deliberate bugs for proving that the simulator catches them (issue 12): each [`Mutation`]
//! names one wrong behaviour of the production code, switched on only in the crate's own unit
//! test build (`cfg(test)`), per thread, by the simulator for the node it is driving.
//!
//! The production code asks [`active`] at the one place each bug would live; outside `cfg(test)`
//! that call does not exist, so no release or integration-test build carries any of them.

/// One deliberately broken behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mutation {
    /// A follower given a snapshot whose last index its log reaches, with another term there,
    /// keeps its log (as if it held the snapshot's last entry) instead of discarding it and
    /// installing the snapshot (`RaftNode::handle_install_snapshot`).
    InstallKeepsConflictingLog,
    /// After a snapshot, the driver compacts the log up to its durable end instead of up to the
    /// snapshot's index minus the catch-up entries, past the commit index
    /// (`Driver::snapshot_taken`).
    CompactPastCommit,
    /// A follower installs a snapshot at or below its commit index (older than what it applied)
    /// instead of ignoring it (`RaftNode::handle_install_snapshot`).
    InstallOlderSnapshot,
    /// The target of a leadership transfer answers TimeoutNow with a PreVote round instead of a
    /// real election (`RaftNode::handle_timeout_now`).
    TransferPreVoteFirst,
    /// Voters within their leader lease refuse the vote requests of a transfer's election too
    /// (`RaftNode::lease_yields_to`).
    TransferLeaseHolds,
    /// A configuration takes effect when its entry commits instead of when it is appended
    /// (`RaftNode::membership`).
    ConfigOnCommit,
    /// The leader accepts a configuration change while an earlier one is uncommitted, or before
    /// it committed an entry of its term (`RaftNode::propose_conf_change`).
    TwoChangesInFlight,
    /// Learners are asked for votes and their grants count (`RaftNode::voter_peers`,
    /// `RaftNode::tally_votes`).
    LearnerVotes,
    /// Learners' match indexes count toward the commit quorum (`RaftNode::maybe_commit`).
    LearnerCountsForCommit,
}

#[cfg(test)]
thread_local! {
    static ACTIVE: std::cell::Cell<Option<Mutation>> = const { std::cell::Cell::new(None) };
}

/// Whether `m` is switched on for the code running on this thread.
#[cfg(test)]
pub(crate) fn active(m: Mutation) -> bool {
    ACTIVE.with(|a| a.get() == Some(m))
}

/// Runs `f` with `m` switched on for this thread (`None`: the code as it is).
#[cfg(test)]
pub(crate) fn with<R>(m: Option<Mutation>, f: impl FnOnce() -> R) -> R {
    let before = ACTIVE.with(|a| a.replace(m));
    let out = f();
    ACTIVE.with(|a| a.set(before));
    out
}
