//! The leader's view of one follower's replication (Raft Figure 2, "Volatile state on leaders").
//!
//! A follower is in one of two states, as in etcd's `tracker/progress.go`:
//! - **Probe**: the leader does not know where the follower's log matches its own. It sends one
//!   AppendEntries at `next_index` and waits for the answer before sending another, moving
//!   `next_index` back on each rejection using the conflict hint (§5.3). An unanswered probe is
//!   repeated at each heartbeat without entries, so a follower that is down costs little.
//! - **Replicate**: the follower accepted an append, so the leader streams entries optimistically,
//!   advancing `next_index` as soon as it sends, with at most `max_inflight_msgs` appends
//!   unacknowledged.
//! - **Snapshot**: the follower needs entries the leader compacted, so the leader sent it an
//!   InstallSnapshot and sends no appends until the follower acknowledges the snapshot's index or
//!   the transport reports that the transfer failed. There is no timer on a transfer: a long one
//!   is never abandoned and restarted for taking long (the transport reports progress or
//!   failure), so a big snapshot cannot be retransmitted forever.
//!
//! Invariants: `match_index < next_index`; in Probe, no append is recorded in flight; in
//! Replicate, the in-flight appends' last indexes increase, are all `> match_index` and
//! `< next_index`, and there are at most `max_inflight_msgs` of them.

use std::collections::VecDeque;

use crate::types::LogIndex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProgressState {
    Probe,
    Replicate,
    /// An InstallSnapshot with this last included index is on its way.
    Snapshot(LogIndex),
}

/// One AppendEntries with entries that the follower has not acknowledged yet.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Inflight {
    /// The index of the last entry the message carried.
    pub(crate) last_index: LogIndex,
    /// The leader's tick count when it was sent (to detect a stalled pipeline).
    pub(crate) sent_at_tick: u64,
}

#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// The highest index known to be replicated durably on the follower (Figure 2).
    pub(crate) match_index: LogIndex,
    /// The index of the next entry to send (Figure 2).
    pub(crate) next_index: LogIndex,
    pub(crate) state: ProgressState,
    /// In Probe: a probe was sent and neither answered nor timed out by a heartbeat.
    pub(crate) probe_sent: bool,
    pub(crate) inflight: VecDeque<Inflight>,
    /// The follower answered an AppendEntries since the last CheckQuorum round.
    pub(crate) recent_active: bool,
    /// The highest ReadIndex round (`read_seq`) this follower answered in the leader's term.
    pub(crate) read_ack: u64,
    /// The highest commit index an append sent to this follower could have taught it
    /// (`min(leader_commit, last index the append covered)`, Figure 2 step 5).
    pub(crate) commit_sent: LogIndex,
}

impl Progress {
    /// The state a new leader starts every follower in: probing at the index after its own log.
    pub(crate) fn new(next_index: LogIndex) -> Progress {
        Progress {
            match_index: LogIndex::ZERO,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: false,
            read_ack: 0,
            commit_sent: LogIndex::ZERO,
        }
    }

    /// Returns to probing at `next_index` (after a rejection or a stalled pipeline): whatever was
    /// in flight is forgotten, since the follower will reject or ignore it.
    pub(crate) fn become_probe(&mut self, next_index: LogIndex) {
        self.state = ProgressState::Probe;
        self.next_index = next_index.max(self.match_index.next());
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Starts streaming after the follower accepted an append.
    pub(crate) fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index.next();
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Records an acknowledgement of everything up to `index`; returns whether `match_index` grew.
    pub(crate) fn maybe_update(&mut self, index: LogIndex) -> bool {
        let grew = index > self.match_index;
        if grew {
            self.match_index = index;
        }
        if self.next_index <= index {
            self.next_index = index.next();
        }
        while self
            .inflight
            .front()
            .is_some_and(|f| f.last_index <= self.match_index)
        {
            self.inflight.pop_front();
        }
        grew
    }

    /// Waits for the follower to install the snapshot that ends at `index`.
    pub(crate) fn become_snapshot(&mut self, index: LogIndex) {
        self.state = ProgressState::Snapshot(index);
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Whether the leader may send another append with entries now.
    pub(crate) fn can_send(&self, max_inflight: usize) -> bool {
        match self.state {
            ProgressState::Probe => !self.probe_sent,
            ProgressState::Replicate => self.inflight.len() < max_inflight,
            ProgressState::Snapshot(_) => false,
        }
    }

    /// Records that an append ending at `last_index` was sent.
    pub(crate) fn sent(&mut self, last_index: Option<LogIndex>, now_tick: u64) {
        match self.state {
            ProgressState::Probe | ProgressState::Snapshot(_) => self.probe_sent = true,
            ProgressState::Replicate => {
                if let Some(last) = last_index {
                    self.inflight.push_back(Inflight {
                        last_index: last,
                        sent_at_tick: now_tick,
                    });
                    self.next_index = last.next();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_free_inflight_in_order_and_never_lower_match() {
        let mut p = Progress::new(LogIndex(5));
        p.match_index = LogIndex(4);
        p.become_replicate();
        p.sent(Some(LogIndex(7)), 0);
        p.sent(Some(LogIndex(9)), 0);
        p.sent(Some(LogIndex(12)), 0);
        assert_eq!(p.next_index, LogIndex(13));
        assert!(!p.can_send(3));
        assert!(p.maybe_update(LogIndex(9)));
        assert_eq!(p.inflight.len(), 1);
        assert!(p.can_send(3));
        // A stale (duplicated) acknowledgement changes nothing.
        assert!(!p.maybe_update(LogIndex(7)));
        assert_eq!(p.match_index, LogIndex(9));
        assert_eq!(p.next_index, LogIndex(13));
    }

    #[test]
    fn probe_never_moves_next_to_or_below_match() {
        let mut p = Progress::new(LogIndex(10));
        p.match_index = LogIndex(6);
        p.become_probe(LogIndex(2));
        assert_eq!(p.next_index, LogIndex(7));
        assert!(p.can_send(8));
        p.sent(Some(LogIndex(9)), 0);
        assert!(!p.can_send(8), "a probe waits for its answer");
    }
}
