//! The history a chaos run records: one [`Operation`] per client request, with the times it was
//! invoked and answered on one clock (nanoseconds since the run began, read by the runner, which
//! hosts every client).
//!
//! Invariants the checker relies on:
//! - values written are unique in a run (a put or compare-and-set never writes a value written
//!   before), so a read names the write it saw;
//! - `completed` and `ret` are both `Some` (the request was answered) or both `None` (it failed or
//!   timed out: it may have taken effect at any time after `invoked`, or never);
//! - failed reads are not recorded (they change nothing); every write is, answered or not.

use serde::{Deserialize, Serialize};

/// What a client asked, of one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    /// `Put(key, value)`.
    Put(u64),
    /// A linearizable `Range` of the key.
    Get,
    /// A `Txn`: if the key's value is `expect` (`None`: the key does not exist) then put `new`.
    Cas { expect: Option<u64>, new: u64 },
    /// `DeleteRange` of the key.
    Delete,
}

/// What the cluster answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    Put,
    /// The value read (`None`: no such key).
    Get(Option<u64>),
    /// Whether the compare succeeded (and the put was made).
    Cas(bool),
    /// Whether a key was deleted.
    Delete(bool),
}

/// One request of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// The client (one request in flight per client at a time).
    pub client: u32,
    /// The key, as an index into the run's key set.
    pub key: u32,
    pub call: Call,
    /// When the request was sent (ns since the run began).
    pub invoked: u64,
    /// When the answer arrived; `None` when the request failed or timed out (indeterminate).
    pub completed: Option<u64>,
    pub ret: Option<Ret>,
    /// The member the client sent it to (for reports only).
    pub node: u32,
    /// The answer's header revision: for a write that changed the store (a put, a successful
    /// compare-and-set, a delete that deleted), the revision it produced; otherwise the store's
    /// revision the answer observed. `None` when indeterminate (and in histories saved before
    /// the field existed). The watch checker ties events to writes by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

impl Operation {
    /// Failed or timed out: it may or may not have taken effect.
    pub fn is_indeterminate(&self) -> bool {
        self.completed.is_none()
    }

    /// The value this operation writes if it takes effect (a put or a compare-and-set).
    pub fn written_value(&self) -> Option<u64> {
        match self.call {
            Call::Put(v) | Call::Cas { new: v, .. } => Some(v),
            Call::Get | Call::Delete => None,
        }
    }

    /// Whether the answer says the store changed (and `revision` is the revision it produced).
    pub fn changed_the_store(&self) -> bool {
        matches!(
            self.ret,
            Some(Ret::Put) | Some(Ret::Cas(true)) | Some(Ret::Delete(true))
        )
    }
}
