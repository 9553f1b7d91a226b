//! The durable state the core reads: the log and the hard state.

use crate::types::{LogEntry, LogIndex, NodeId, Term};

/// What must be durable before a server votes or acknowledges (Raft Figure 2, "Persistent state").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
    pub commit: LogIndex,
}

/// The core's read-only view of the durable log. The driver writes to the log (through its own
/// handle, or through [`crate::raft::RaftNode::storage_mut`]) as each `Ready` instructs.
///
/// Implementations whose reads can fail (a corrupt disk) must treat that as fatal for the node:
/// the core has no way to make progress without its log.
pub trait Storage {
    /// The first index still present (1 for a log that was never compacted).
    fn first_index(&self) -> LogIndex;
    /// The last index present, or `first_index() - 1` if the log is empty.
    fn last_index(&self) -> LogIndex;
    /// The term of the entry at `index`; for `first_index() - 1` the term of the last compacted
    /// entry (0 if nothing was compacted). `None` outside that range.
    fn term(&self, index: LogIndex) -> Option<Term>;
    /// Entries in `[lo, hi)`, stopping early once `max_bytes` of payload were returned (at least
    /// one entry is returned if the range is not empty). Panics if the range is not present.
    fn entries(&self, lo: LogIndex, hi: LogIndex, max_bytes: u64) -> Vec<LogEntry>;
}

/// An in-memory [`Storage`] for tests and the simulator.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    /// Index of the last compacted entry and its term.
    pub snapshot_index: LogIndex,
    pub snapshot_term: Term,
    pub entries: Vec<LogEntry>,
}

impl MemStorage {
    /// Removes every entry with index >= `from`.
    pub fn truncate_suffix(&mut self, from: LogIndex) {
        let keep = from.0.saturating_sub(self.snapshot_index.0 + 1) as usize;
        self.entries.truncate(keep);
    }

    /// Drops every entry up to and including `upto` (covered by a snapshot), remembering the term
    /// of `upto`.
    ///
    /// # Panics
    /// If `upto` is not in `first_index() - 1..=last_index()`.
    pub fn compact_prefix(&mut self, upto: LogIndex) {
        let term = self.term(upto).unwrap_or_else(|| {
            panic!(
                "MemStorage::compact_prefix({upto}) outside {}..={}",
                self.first_index().prev(),
                self.last_index()
            )
        });
        let n = (upto.0 - self.snapshot_index.0) as usize;
        self.entries.drain(..n);
        self.snapshot_index = upto;
        self.snapshot_term = term;
    }

    /// Appends entries that must continue the log exactly.
    pub fn append(&mut self, entries: &[LogEntry]) {
        for e in entries {
            assert_eq!(
                e.index,
                self.last_index().next(),
                "MemStorage::append would leave a hole: last {} got {}",
                self.last_index(),
                e.index
            );
            self.entries.push(e.clone());
        }
    }
}

impl Storage for MemStorage {
    fn first_index(&self) -> LogIndex {
        self.snapshot_index.next()
    }

    fn last_index(&self) -> LogIndex {
        LogIndex(self.snapshot_index.0 + self.entries.len() as u64)
    }

    fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        if index < self.snapshot_index || index > self.last_index() {
            return None;
        }
        Some(self.entries[(index.0 - self.snapshot_index.0 - 1) as usize].term)
    }

    fn entries(&self, lo: LogIndex, hi: LogIndex, max_bytes: u64) -> Vec<LogEntry> {
        assert!(
            lo >= self.first_index() && hi <= self.last_index().next() && lo <= hi,
            "MemStorage::entries({lo}..{hi}) outside {}..={}",
            self.first_index(),
            self.last_index()
        );
        let start = (lo.0 - self.snapshot_index.0 - 1) as usize;
        let end = (hi.0 - self.snapshot_index.0 - 1) as usize;
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for e in &self.entries[start..end] {
            if !out.is_empty() && bytes + e.payload.len() as u64 > max_bytes {
                break;
            }
            bytes += e.payload.len() as u64;
            out.push(e.clone());
        }
        out
    }
}
