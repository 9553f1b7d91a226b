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
//!   same responses on every replica. No clock, no randomness, no iteration over hash maps,
//!   no I/O whose outcome can differ between replicas.
//! - `apply` must not panic on any payload: a payload that does not decode is answered with an
//!   error response (deterministically), because every replica applies it and none may stop.
//! - The response (a value of the machine's own type, handed over on the node's thread: never
//!   encoded) goes to the client whose proposal the entry was, on the node where it was
//!   proposed; other replicas discard it.
//!
//!
//! [`Snapshot`] is the second half: the whole state as bytes and back, for compacting the log
//! below an applied index and for catching up a far-behind follower. The node does not use it yet
//! (there is no InstallSnapshot); the key-value store implements it.

use crate::types::LogEntry;

/// A deterministic state machine driven by the committed log. See the [module docs](self).
pub trait StateMachine {
    /// What the proposer of an entry is told once it is applied.
    type Response: Send + 'static;

    /// Applies one committed entry and returns the response for its proposer.
    fn apply(&mut self, entry: &LogEntry) -> Self::Response;
}

/// Errors of restoring a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes are not a valid snapshot: what is wrong and at which byte offset.
    #[error("corrupt snapshot at byte {offset}: {what}")]
    Corrupt { offset: usize, what: String },
}

/// A state machine whose whole state can be captured and restored.
///
/// Contract: `restore(snapshot())` gives a state machine that answers every later `apply` exactly
/// as the original would; `snapshot` is deterministic (equal states give equal bytes, so replicas
/// can compare them).
pub trait Snapshot {
    /// The whole state as self-checking bytes.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the state with the one `snapshot` captured.
    ///
    /// # Errors
    /// `Corrupt` for bytes that are not a valid snapshot; the state is then left unchanged.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError>;
}

/// The identity state machine: entries are only counted as applied, responses are empty.
impl StateMachine for () {
    type Response = ();

    fn apply(&mut self, _entry: &LogEntry) {}
}
