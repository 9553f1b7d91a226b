//! Watch events out of the store: what each committed revision changed, as etcd's
//! `mvccpb.Event`s, live (an [`EventSink`] told at commit) and from the MVCC history
//! ([`KvStore::history_events`]).
//!
//! The store knows nothing about watchers. Every write, whatever its kind (put, delete range, the
//! writes of a Txn, and any later kind that goes through the store's write transaction), pushes
//! its versions onto the change queue; at commit the entries pushed since the transaction began
//! are exactly the revision's changes, in write order. That is where live events come from, so a
//! new kind of write emits events without knowing about watches.
//!
//! Event shape (etcd's): a PUT carries the new record; a DELETE carries the key with
//! `mod_revision` = the deleting revision and every other field zero. `prev_kv` is the record the
//! event replaced, when it was live (none for a creation). Within one revision events are in
//! write order (for a delete range: key order), as etcd's sub-revisions order them. One
//! difference: etcd gives one event per write, and this store keeps one version per key and
//! revision; a Txn never writes one key twice (`DuplicateKey`), so the two agree.
//!
//! Invariants:
//! - the sink hears every revision that changed something exactly once, in revision order, while
//!   the store lock is held (so nothing can read the store between the commit and the event);
//! - history events of a revision are the same events the sink heard for it, as long as the
//!   revision is above the compaction point. Revisions at or below `compact_revision` cannot be
//!   replayed: compaction drops the tombstones at the compaction revision itself, so even the
//!   compaction revision's events may be incomplete, and [`KvStore::history_events`] refuses it.
//! - [`EventSink::wants_events`] is the only cost of a commit when nobody watches.

use std::fmt;
use std::sync::Arc;

use super::store::{History, Key, KvStore, Version};
use super::KvError;
use crate::etcdpb::mvccpb::{event::EventType, Event, KeyValue};

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

/// Events read from history: those of revisions `(after, through]` that touch a key range.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryEvents {
    /// In revision order, write order within a revision; every revision's events complete.
    pub events: Vec<Event>,
    /// The last revision whose events are all in `events` (the read may stop early at a
    /// revision boundary; the caller continues from here).
    pub through: i64,
}

/// Whether `key` is in etcd's watch range: `range_end` empty → the single key; `"\0"` → every
/// key `>= start`; otherwise `[start, range_end)`.
pub fn key_in_range(start: &[u8], range_end: &[u8], key: &[u8]) -> bool {
    if range_end.is_empty() {
        key == start
    } else if range_end == [0] {
        key >= start
    } else {
        key >= start && key < range_end
    }
}

impl KvStore {
    /// Hands the store a sink for the events of every later commit (`None`: stop).
    pub fn set_event_sink(&mut self, sink: Option<Arc<dyn EventSink>>) {
        self.sink = SinkSlot(sink);
    }

    /// Replaces the store by `restored` (a snapshot), keeping the sink and telling it.
    pub(super) fn replace_keeping_sink(&mut self, restored: KvStore) {
        let sink = std::mem::take(&mut self.sink);
        *self = restored;
        self.sink = sink;
        if let Some(sink) = &self.sink.0 {
            sink.replaced(self.revision);
        }
    }

    /// Called by `commit` for a transaction that changed something, before any compaction: the
    /// change-queue entries from `changes_len` on are this revision's versions.
    pub(super) fn publish_events(&self, revision: i64, changes_len: usize) {
        let Some(sink) = &self.sink.0 else {
            return;
        };
        if !sink.wants_events() {
            return;
        }
        let events = self
            .changes
            .range(changes_len..)
            .map(|(changed, key)| {
                debug_assert_eq!(*changed, revision);
                let history = self
                    .keys
                    .get(&**key)
                    .unwrap_or_else(|| panic!("a change of {key:?} without a history"));
                event_at(key, history, revision)
                    .unwrap_or_else(|| panic!("no version of {key:?} at {revision}"))
            })
            .collect();
        sink.committed(revision, events);
    }

    /// The events of revisions `(after, through]` whose key is in `[key, range_end)` (etcd's
    /// watch range conventions, see [`key_in_range`]), each with its `prev_kv`, ordered by
    /// revision and by write order within one. Stops at the first revision boundary after
    /// `events_max` events (never inside a revision, so one revision may exceed it).
    ///
    /// Cost: the changes of the revisions read (all keys), plus a history lookup per event.
    ///
    /// # Errors
    /// `Compacted` if `after < compact_revision` (revisions at or below the compaction point
    /// cannot be replayed completely: see the module docs); `FutureRevision` if `through` is
    /// above the current revision.
    pub fn history_events(
        &self,
        after: i64,
        through: i64,
        key: &[u8],
        range_end: &[u8],
        events_max: usize,
    ) -> Result<HistoryEvents, KvError> {
        if through > self.revision {
            return Err(KvError::FutureRevision);
        }
        if after < self.compact_revision {
            return Err(KvError::Compacted);
        }
        let mut out = HistoryEvents {
            events: Vec::new(),
            through: after.max(through),
        };
        let start = self
            .changes
            .partition_point(|(changed, _)| *changed <= after);
        let mut current = after;
        for (changed, changed_key) in self.changes.range(start..) {
            if *changed > through {
                break;
            }
            if *changed != current {
                // A revision boundary: everything up to `current` is in.
                if out.events.len() >= events_max {
                    out.through = current;
                    return Ok(out);
                }
                current = *changed;
            }
            if !key_in_range(key, range_end, changed_key) {
                continue;
            }
            let history = self
                .keys
                .get(&**changed_key)
                .unwrap_or_else(|| panic!("a change of {changed_key:?} without a history"));
            let event = event_at(changed_key, history, *changed)
                .unwrap_or_else(|| panic!("no version of {changed_key:?} at {changed}"));
            out.events.push(event);
        }
        Ok(out)
    }
}

/// The event of `key` at `revision` (its version there, with the one before as `prev_kv`).
fn event_at(key: &Key, history: &History, revision: i64) -> Option<Event> {
    let index = history
        .binary_search_by_key(&revision, |version| version.mod_revision)
        .ok()?;
    let version = &history[index];
    let prev_kv = index
        .checked_sub(1)
        .and_then(|prev| record(key, &history[prev]));
    Some(match record(key, version) {
        Some(kv) => Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv,
        },
        None => Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: key.to_vec(),
                mod_revision: revision,
                ..KeyValue::default()
            }),
            prev_kv,
        },
    })
}

/// The record of a live version; `None` for a tombstone.
fn record(key: &[u8], version: &Version) -> Option<KeyValue> {
    let live = version.live.as_ref()?;
    Some(KeyValue {
        key: key.to_vec(),
        create_revision: live.create_revision,
        mod_revision: version.mod_revision,
        version: live.version,
        value: live.value.to_vec(),
        lease: 0,
    })
}
