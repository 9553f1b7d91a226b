//! The pure Raft consensus core.
//!
//! This module owns the Raft protocol state machine: roles, terms, votes, the leader's view of each
//! follower's progress, commit and apply. It performs no I/O, reads no clock and uses no global
//! randomness: time enters as [`RaftNode::tick`], network input as [`RaftNode::step`], client input
//! as [`RaftNode::propose`], and randomness comes from the seed in [`Config::rng_seed`].
//!
//! # The driver loop
//! 1. Feed inputs: `tick()` every tick, `step(msg)` for every inbound message, `propose(data)`.
//! 2. When `has_ready()`, take `ready()`. Send `ready.messages` now (the leader's AppendEntries go
//!    out in parallel with its own write, thesis §10.2.1).
//! 3. Persist in this order: if `ready.install_snapshot` is set, restore the state machine from
//!    that snapshot (durable on this node's disk) and reset the log to an empty one after its
//!    index; truncate the log from `ready.truncate_from`, append `ready.entries`, write
//!    `ready.hard_state`; fdatasync if `ready.must_sync`.
//! 4. Only then send `ready.persisted_messages` (votes and append acknowledgements) and call
//!    `on_persisted(ready.persist_token())` so the core may count its own log toward commit.
//! 5. Apply `ready.committed_entries` to the state machine, in order.
//! 6. Serve each of `ready.read_states` once the state machine has applied up to its `index`
//!    (ReadIndex, thesis §6.4; see [`RaftNode::read_index`]); fail each of `ready.dropped_reads`
//!    at once with a retryable error.
//!
//! Several `Ready`s may be in flight at once as long as the driver persists them in the order it
//! took them. After a crash, everything not durable is lost; the driver rebuilds the core with
//! [`RaftNode::new`] from the durable `HardState` and log.
//!
//! Details of the contract the driver relies on:
//! - `truncate_from`, when set, equals the index of the Ready's first entry; the entries continue
//!   the storage exactly once the truncation is done.
//! - A Ready with an empty write still completes after the earlier in-flight ones: its
//!   `persisted_messages` (an acknowledgement of entries an earlier Ready carries) may only leave
//!   then. `on_persisted(ready.persist_token())` is called once for EVERY Ready, in order (the
//!   token is `None` for a Ready without entries): a candidate's own vote counts only once the
//!   Ready carrying it is durable, while its vote requests already left in `messages`.
//! - `committed_entries` are committed and durable locally; each is handed out once. After a
//!   restart the applied index starts at 0, so the committed prefix is handed out again from
//!   index 1 (a state machine rebuilt from the log wants exactly that).
//!
//! # Modules
//! - `core`: [`RaftNode`], roles, elections (PreVote, CheckQuorum), replication, commit, apply,
//!   linearizable reads (ReadIndex), leadership transfer (TimeoutNow, thesis §3.10).
//! - `log`: the view over durable storage plus the entries not yet known durable.
//! - `progress`: the leader's per-follower state (probe / pipelined replicate, in-flight bound).
//! - [`message`]: the RPCs; [`storage`]: the `Storage` trait, `HardState`, `MemStorage`;
//!   [`rng`]: the deterministic PRNG the core and the simulator share.

#[cfg(test)]
mod conf_tests;
pub mod core;
mod log;
pub mod membership;
pub mod message;
mod progress;
pub mod rng;
pub mod storage;

pub use self::core::{
    Config, ConfigError, ProposeError, RaftNode, ReadIndexError, ReadState, Ready, Role,
    TransferError,
};
pub use self::membership::{ConfChange, Membership};
pub use self::message::{
    AppendEntries, AppendEntriesResponse, Envelope, InstallSnapshot, Message, RequestVote,
    RequestVoteResponse, SnapshotId, TimeoutNow,
};
pub use self::rng::Rng;
pub use self::storage::{HardState, MemStorage, Storage};
