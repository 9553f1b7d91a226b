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
//! [`Snapshot`] is the second half: the whole state written out as bytes and read back, for
//! compacting the log below an applied index and for catching up a far-behind follower. It is
//! split so that a large state never stalls the node's loop: on the loop's thread the node takes
//! a [`SnapshotSource`] (cheap: a consistent view of the state at that moment), and another
//! thread writes its bytes while the loop keeps applying. Restoring reads the bytes as a stream.
//! The node takes snapshots through it (`src/node/snapshots.rs`), restores from the newest one at
//! start and installs the ones a leader sends (InstallSnapshot); the key-value store and the
//! identity machine implement the trait.

use std::io::{self, Read, Write};

use std::collections::BTreeMap;

use crate::types::{LogEntry, NodeId};

/// A deterministic state machine driven by the committed log. See the [module docs](self).
pub trait StateMachine {
    /// What the proposer of an entry is told once it is applied.
    type Response: Send + 'static;

    /// Applies one committed entry and returns the response for its proposer.
    fn apply(&mut self, entry: &LogEntry) -> Self::Response;

    /// The payload of a Normal entry that records `peer_urls` as the addresses of member `node`
    /// (etcd's `MemberAdd`/`MemberUpdate`), for a machine that keeps the member address registry
    /// in its replicated state; `None` (the default) for one that does not: then only members
    /// listed in the config file can be reached.
    fn member_record(_node: NodeId, _peer_urls: &[String]) -> Option<Vec<u8>>
    where
        Self: Sized,
    {
        None
    }

    /// Whether applying this Normal entry's payload may change [`StateMachine::member_urls`].
    fn is_member_record(_payload: &[u8]) -> bool
    where
        Self: Sized,
    {
        false
    }

    /// The member address registry: node id -> peer URLs of members recorded through
    /// [`StateMachine::member_record`] entries (and snapshots). Empty by default.
    fn member_urls(&self) -> BTreeMap<NodeId, Vec<String>> {
        BTreeMap::new()
    }
}

/// Errors of restoring a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes are not a valid snapshot: what is wrong and at which byte offset of the payload.
    #[error("corrupt snapshot at byte {offset}: {what}")]
    Corrupt { offset: u64, what: String },
    /// Reading the payload failed (not a property of the bytes: the reader's own error), after
    /// `offset` bytes were read.
    #[error("reading the snapshot failed at byte {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: io::Error,
    },
}

/// The state of a machine at one moment, ready to be written out on any thread.
///
/// Contract: the bytes describe the state at the moment the source was taken, whatever the
/// machine applied since; writing twice gives the same bytes.
pub trait SnapshotSource: Send + 'static {
    /// Writes the whole payload to `w` and flushes it; returns the number of bytes written.
    ///
    /// # Errors
    /// The writer's errors, and `InvalidData` for a state the format cannot hold (the machine
    /// documents when). Bytes already written are then an incomplete payload: discard them.
    fn write_to(&self, w: &mut dyn Write) -> io::Result<u64>;
}

/// A state machine whose whole state can be captured and restored, as a stream of bytes.
///
/// Contract:
/// - [`Snapshot::snapshot_view`] is cheap whatever the size of the state (the node calls it on its
///   event loop thread, between two applies): no copy of the state, no I/O. Everything costly is
///   in [`SnapshotSource::write_to`], which the node runs on another thread.
/// - `restore_from` of the bytes of `snapshot_view().write_to` gives a state machine that answers
///   every later `apply` exactly as the original would have at the moment of the view.
/// - The bytes are deterministic: equal states give equal bytes, so replicas can compare them.
pub trait Snapshot {
    /// A consistent view of the current state; later applies do not change what it writes.
    fn snapshot_view(&self) -> Box<dyn SnapshotSource>;

    /// Replaces the state with the one in the payload `r` yields. The payload must be all that
    /// `r` yields (give a `Read::take` of its length for a payload inside a larger file): the
    /// reader is read to its end.
    ///
    /// # Errors
    /// `Corrupt` for bytes that are not a valid snapshot, `Io` when reading fails. The state is
    /// then left unchanged: the new state is built aside and replaces the old one only once the
    /// whole payload has been read and checked.
    fn restore_from(&mut self, r: &mut dyn Read) -> Result<(), SnapshotError>;

    /// The whole payload in memory (tests and tools; the node streams).
    ///
    /// # Panics
    /// If `write_to` fails, which writing into a `Vec` only does for a state the format cannot
    /// hold.
    fn snapshot(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        if let Err(error) = self.snapshot_view().write_to(&mut bytes) {
            panic!("writing a snapshot into memory failed: {error}");
        }
        bytes
    }

    /// [`Snapshot::restore_from`] over bytes in memory.
    ///
    /// # Errors
    /// As `restore_from`.
    fn restore(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        self.restore_from(&mut &*bytes)
    }
}

/// The identity state machine: entries are only counted as applied, responses are empty.
impl StateMachine for () {
    type Response = ();

    fn apply(&mut self, _entry: &LogEntry) {}
}

/// The identity machine has no state: its payload is empty.
impl Snapshot for () {
    fn snapshot_view(&self) -> Box<dyn SnapshotSource> {
        Box::new(EmptySnapshot)
    }

    fn restore_from(&mut self, r: &mut dyn Read) -> Result<(), SnapshotError> {
        let mut byte = [0u8; 1];
        let read = loop {
            match r.read(&mut byte) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match read {
            Ok(0) => Ok(()),
            Ok(_) => Err(SnapshotError::Corrupt {
                offset: 0,
                what: "the identity machine's snapshot is empty, found bytes".to_owned(),
            }),
            Err(source) => Err(SnapshotError::Io { offset: 0, source }),
        }
    }
}

/// The identity machine's snapshot: no bytes.
struct EmptySnapshot;

impl SnapshotSource for EmptySnapshot {
    fn write_to(&self, w: &mut dyn Write) -> io::Result<u64> {
        w.flush()?;
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_machine_snapshots_to_nothing() {
        let bytes = ().snapshot();
        assert!(bytes.is_empty());
        assert!(().restore(&bytes).is_ok());
        let error = ().restore(b"x").expect_err("bytes are not the empty payload");
        assert!(
            matches!(error, SnapshotError::Corrupt { offset: 0, .. }),
            "{error}"
        );
    }
}
