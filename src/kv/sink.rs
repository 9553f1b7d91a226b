//! The store's link to whoever hears its committed revisions (the node's watch hub): the
//! [`EventSink`] trait and the slot in [`super::KvStore`] that holds one.
//!
//! A leaf of the module tree: the store holds a [`SinkSlot`] without knowing what events are
//! made of (`events.rs` builds them from the store's change queue and tells the sink), so the
//! store and the event code do not import each other.

use std::fmt;
use std::sync::Arc;

use crate::etcdpb::mvccpb::Event;

/// Who hears the events of each committed revision (the node's watch hub). Methods run on the
/// applying thread with the store locked: they must be quick and must not lock the store.
pub trait EventSink: Send + Sync {
    /// Whether any watcher waits for live events. Checked on every commit that changed
    /// something, before any event is built: must be cheap (an atomic load).
    fn wants_events(&self) -> bool;
    /// The events of `revision`, just committed, in write order, each with its `prev_kv`.
    fn committed(&self, revision: i64, events: Vec<Event>);
    /// The store was replaced (a snapshot was installed) and is now at `revision`: the live
    /// stream has a gap the sink must fill from history, or give up on.
    fn replaced(&self, revision: i64);
}

/// The store's optional sink. Not part of the store's state: equality ignores it, a clone has
/// none (a copy of the store is not the store the watchers watch).
#[derive(Default)]
pub(super) struct SinkSlot(pub(super) Option<Arc<dyn EventSink>>);

impl Clone for SinkSlot {
    fn clone(&self) -> Self {
        SinkSlot(None)
    }
}

impl PartialEq for SinkSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for SinkSlot {}

impl fmt::Debug for SinkSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "SinkSlot(set)"
        } else {
            "SinkSlot(none)"
        })
    }
}
