//! Identifiers and the log entry shared by the storage engine and the consensus core.
//!
//! `NodeId`, `Term` and `LogIndex` are newtypes because mixing them up is a bug the compiler can
//! catch. Log indexes start at 1; index 0 and term 0 mean "before the first entry".

use std::fmt;

/// A server's identity in the cluster (the YAML config's `node_id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u32);

/// A Raft term. Terms only grow on any one server (Raft §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Term(pub u64);

/// A position in the replicated log; the first entry has index 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogIndex(pub u64);

impl LogIndex {
    pub const ZERO: LogIndex = LogIndex(0);

    /// The index after this one.
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The index before this one, saturating at zero.
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
}

impl Term {
    pub const ZERO: Term = Term(0);
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What an entry carries. The numeric values are part of the on-disk format (docs/FORMAT.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryType {
    /// An application command.
    Normal = 0,
    /// The empty entry every new leader appends to commit entries of earlier terms (Raft §5.4.2).
    NoOp = 1,
    /// A membership change (`raft::membership::ConfChange`, 5-byte payload): it takes effect on
    /// every server when appended, not when committed (thesis ch. 4).
    ConfChange = 2,
}

impl EntryType {
    /// Decodes the on-disk type byte; `None` for values this version does not know.
    pub fn from_u8(value: u8) -> Option<EntryType> {
        match value {
            0 => Some(EntryType::Normal),
            1 => Some(EntryType::NoOp),
            2 => Some(EntryType::ConfChange),
            _ => None,
        }
    }
}

/// One owned log entry, as proposed, replicated and appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub term: Term,
    pub index: LogIndex,
    pub entry_type: EntryType,
    pub payload: Vec<u8>,
}
