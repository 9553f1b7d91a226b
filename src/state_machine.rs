//! The library's state machine interface: what the node applies committed entries to.
//!
//! Embedders replicate their own state by implementing [`StateMachine`]; the key-value store
//! ([`crate::kv::KvStore`]) is one implementation and the binary's default.
//!
//! # Contract
//! - The node calls [`StateMachine::apply`] exactly once per committed entry, in log order, on
//!   every replica, NoOp entries included (a NoOp carries no command; implementations should
//!   change nothing for it).
//! - `apply` must be deterministic: the same entries in the same order give the same state and the
//!   same response bytes on every replica. No clock, no randomness, no iteration over hash maps,
//!   no I/O whose outcome can differ between replicas.
//! - `apply` must not panic on any payload: a payload that does not decode is answered with an
//!   error response (deterministically), because every replica applies it and none may stop.
//! - The response bytes go to the client whose proposal the entry was, on the node where it was
//!   proposed; other replicas discard them.
//!
//! Snapshots (`snapshot` / `restore`, for log compaction and for catching up a far-behind follower)
//! are the next step of this interface and are not defined yet.

use crate::types::LogEntry;

/// A deterministic state machine driven by the committed log. See the [module docs](self).
pub trait StateMachine {
    /// Applies one committed entry and returns the response for its proposer.
    fn apply(&mut self, entry: &LogEntry) -> Vec<u8>;
}

/// The identity state machine: entries are only counted as applied, responses are empty.
impl StateMachine for () {
    fn apply(&mut self, _entry: &LogEntry) -> Vec<u8> {
        Vec::new()
    }
}
