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

use std::sync::Arc;

use super::sink::{EventSink, SinkSlot};
use super::store::{History, Key, KvStore, Version};
use super::KvError;
use crate::etcdpb::mvccpb::{event::EventType, Event, KeyValue};

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
        lease: live.lease,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::etcdpb::etcdserverpb::{
        request_op::Request, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
    };

    /// A sink that records what it hears; `wanting` says whether it asks for events.
    #[derive(Default)]
    struct Recorder {
        wanting: bool,
        heard: Mutex<Vec<(i64, Vec<Event>)>>,
        replaced: Mutex<Vec<i64>>,
    }

    impl EventSink for Recorder {
        fn wants_events(&self) -> bool {
            self.wanting
        }
        fn committed(&self, revision: i64, events: Vec<Event>) {
            self.heard.lock().expect("lock").push((revision, events));
        }
        fn replaced(&self, revision: i64) {
            self.replaced.lock().expect("lock").push(revision);
        }
    }

    fn put(key: &str, value: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.into(),
                value: value.into(),
                ..PutRequest::default()
            })),
        }
    }

    fn delete(key: &str, range_end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.into(),
                range_end: range_end.into(),
                prev_kv: false,
            })),
        }
    }

    fn txn(ops: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                compare: Vec::new(),
                success: ops,
                failure: Vec::new(),
            })),
        }
    }

    fn recorded_store(history_revisions: i64) -> (KvStore, Arc<Recorder>) {
        let mut store = KvStore::with_history_revisions(history_revisions);
        let recorder = Arc::new(Recorder {
            wanting: true,
            ..Recorder::default()
        });
        store.set_event_sink(Some(recorder.clone()));
        (store, recorder)
    }

    fn apply(store: &mut KvStore, op: &RequestOp) {
        store
            .apply(op)
            .unwrap_or_else(|e| panic!("{op:?} failed: {e}"));
        store.check_invariants();
    }

    /// `PUT k=v@mod(create,version)` / `DELETE k@mod`, with ` prev=v@mod` when there is one.
    fn show(event: &Event) -> String {
        let kv = event.kv.clone().unwrap_or_default();
        let key = String::from_utf8_lossy(&kv.key);
        let mut text = if event.r#type == EventType::Put as i32 {
            format!(
                "PUT {key}={}@{}({},{})",
                String::from_utf8_lossy(&kv.value),
                kv.mod_revision,
                kv.create_revision,
                kv.version
            )
        } else {
            assert_eq!(
                (kv.create_revision, kv.version, kv.value.len()),
                (0, 0, 0),
                "a DELETE carries only key and mod_revision"
            );
            format!("DELETE {key}@{}", kv.mod_revision)
        };
        if let Some(prev) = &event.prev_kv {
            text += &format!(
                " prev={}@{}",
                String::from_utf8_lossy(&prev.value),
                prev.mod_revision
            );
        }
        text
    }

    fn shown(events: &[Event]) -> Vec<String> {
        events.iter().map(show).collect()
    }

    /// Every kind of write, one revision each (2..=7), as the sink hears it.
    fn every_kind_of_write(store: &mut KvStore) {
        apply(store, &put("a", "1")); // 2
        apply(store, &put("a", "2")); // 3
        apply(store, &put("c", "3")); // 4
        apply(store, &delete("a", "")); // 5
        apply(
            store,
            &txn(vec![put("z", "9"), put("b", "8"), delete("c", "")]),
        ); // 6
        apply(store, &put("x", "1")); // 7
        apply(store, &delete("b", "\0")); // 8: b, x, z in key order
        apply(store, &delete("nothing", "")); // changes nothing: no revision, no event
    }

    const EXPECTED: &[(i64, &[&str])] = &[
        (2, &["PUT a=1@2(2,1)"]),
        (3, &["PUT a=2@3(2,2) prev=1@2"]),
        (4, &["PUT c=3@4(4,1)"]),
        (5, &["DELETE a@5 prev=2@3"]),
        // A Txn's events in write order, not key order.
        (
            6,
            &["PUT z=9@6(6,1)", "PUT b=8@6(6,1)", "DELETE c@6 prev=3@4"],
        ),
        (7, &["PUT x=1@7(7,1)"]),
        (
            8,
            &[
                "DELETE b@8 prev=8@6",
                "DELETE x@8 prev=1@7",
                "DELETE z@8 prev=9@6",
            ],
        ),
    ];

    #[test]
    fn events_of_leased_keys_carry_the_lease_and_a_revocation_deletes_them_at_one_revision() {
        let (mut store, recorder) = recorded_store(0);
        store.lease_grant(0x51, 60).expect("grant");
        let leased = RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: "l".into(),
                value: "v".into(),
                lease: 0x51,
                ..PutRequest::default()
            })),
        };
        apply(&mut store, &leased);
        apply(&mut store, &put("m", "w"));
        store.lease_revoke(0x51).expect("revoke");
        let heard = recorder.heard.lock().expect("lock");
        let put_event = &heard[0].1[0];
        assert_eq!(put_event.kv.as_ref().map(|kv| kv.lease), Some(0x51));
        let (revision, revoked) = heard.last().expect("the revocation's events");
        assert_eq!(
            shown(revoked),
            ["DELETE l@4 prev=v@2"],
            "at revision {revision}"
        );
        assert_eq!(revoked[0].prev_kv.as_ref().map(|kv| kv.lease), Some(0x51));
    }

    #[test]
    fn every_write_kind_emits_etcds_events_at_commit_in_write_order() {
        let (mut store, recorder) = recorded_store(0);
        every_kind_of_write(&mut store);
        let heard = recorder.heard.lock().expect("lock");
        let heard: Vec<(i64, Vec<String>)> = heard
            .iter()
            .map(|(revision, events)| (*revision, shown(events)))
            .collect();
        let expected: Vec<(i64, Vec<String>)> = EXPECTED
            .iter()
            .map(|(revision, events)| (*revision, events.iter().map(|e| e.to_string()).collect()))
            .collect();
        assert_eq!(heard, expected);
    }

    #[test]
    fn a_failed_txn_and_an_unwanted_sink_hear_nothing() {
        let mut store = KvStore::with_history_revisions(0);
        let recorder = Arc::new(Recorder::default());
        store.set_event_sink(Some(recorder.clone()));
        every_kind_of_write(&mut store);
        assert!(recorder.heard.lock().expect("lock").is_empty());

        let (mut store, recorder) = recorded_store(0);
        apply(&mut store, &put("a", "1"));
        // The second op fails (a lease this store does not have): the txn rolls back whole.
        let failing = txn(vec![
            put("b", "1"),
            RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: "c".into(),
                    lease: 7,
                    ..PutRequest::default()
                })),
            },
        ]);
        assert!(store.apply(&failing).is_err());
        let heard = recorder.heard.lock().expect("lock");
        assert_eq!(heard.len(), 1, "only the put at 2: {heard:?}");
    }

    #[test]
    fn history_replays_the_same_events_for_any_range_and_window() {
        let (mut store, recorder) = recorded_store(0);
        every_kind_of_write(&mut store);
        let live: Vec<Event> = recorder
            .heard
            .lock()
            .expect("lock")
            .iter()
            .flat_map(|(_, events)| events.clone())
            .collect();
        let revision_of = |e: &Event| e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
        for (key, range_end) in [("a", ""), ("b", "\0"), ("a", "c"), ("\0", "\0"), ("q", "")] {
            for after in 1..=8 {
                for through in after..=8 {
                    let replayed = store
                        .history_events(after, through, key.as_bytes(), range_end.as_bytes(), 100)
                        .expect("history");
                    let expected: Vec<Event> = live
                        .iter()
                        .filter(|e| {
                            let r = revision_of(e);
                            r > after
                                && r <= through
                                && key_in_range(
                                    key.as_bytes(),
                                    range_end.as_bytes(),
                                    &e.kv.as_ref().expect("kv").key,
                                )
                        })
                        .cloned()
                        .collect();
                    assert_eq!(
                        shown(&replayed.events),
                        shown(&expected),
                        "({after}, {through}] of [{key:?}, {range_end:?})"
                    );
                    assert_eq!(replayed.through, through);
                }
            }
        }
    }

    #[test]
    fn a_bounded_history_read_stops_only_between_revisions() {
        let (mut store, _recorder) = recorded_store(0);
        every_kind_of_write(&mut store);
        // At most 2 events: revision 2 (1 event), 3 (1 event) -> 2 events, stop before 4.
        let first = store
            .history_events(1, 8, b"\0", b"\0", 2)
            .expect("history");
        assert_eq!(first.through, 3);
        assert_eq!(first.events.len(), 2);
        // From 5 on with a limit of 2: revision 5 (1) and all three of revision 6, never split.
        let second = store
            .history_events(4, 8, b"\0", b"\0", 2)
            .expect("history");
        assert_eq!(second.through, 6);
        assert_eq!(
            shown(&second.events),
            [
                "DELETE a@5 prev=2@3",
                "PUT z=9@6(6,1)",
                "PUT b=8@6(6,1)",
                "DELETE c@6 prev=3@4"
            ]
        );
        let rest = store
            .history_events(6, 8, b"\0", b"\0", 2)
            .expect("history");
        assert_eq!((rest.through, rest.events.len()), (8, 4));
    }

    #[test]
    fn history_at_or_below_the_compaction_point_is_refused() {
        let (mut store, _recorder) = recorded_store(0);
        every_kind_of_write(&mut store);
        store.compact(5).expect("compact");
        store.check_invariants();
        assert_eq!(
            store.history_events(4, 8, b"\0", b"\0", 100),
            Err(KvError::Compacted)
        );
        let after = store
            .history_events(5, 8, b"\0", b"\0", 100)
            .expect("history");
        assert_eq!(after.events.len(), 7, "{:?}", shown(&after.events));
        assert_eq!(
            store.history_events(5, 9, b"\0", b"\0", 100),
            Err(KvError::FutureRevision)
        );
        // Automatic compaction (2 revisions kept) moves the point as writes commit.
        let (mut store, _recorder) = recorded_store(2);
        every_kind_of_write(&mut store);
        assert_eq!(store.compact_revision(), 6);
        assert_eq!(
            store.history_events(5, 8, b"\0", b"\0", 100),
            Err(KvError::Compacted)
        );
        let kept = store
            .history_events(6, 8, b"\0", b"\0", 100)
            .expect("history");
        assert_eq!(
            shown(&kept.events),
            [
                "PUT x=1@7(7,1)",
                "DELETE b@8 prev=8@6",
                "DELETE x@8 prev=1@7",
                "DELETE z@8 prev=9@6"
            ]
        );
    }

    #[test]
    fn installing_a_snapshot_keeps_the_sink_and_tells_it() {
        use crate::state_machine::Snapshot;
        let (mut store, recorder) = recorded_store(0);
        every_kind_of_write(&mut store);
        let mut source = KvStore::with_history_revisions(0);
        for i in 0..20 {
            source.apply(&put("k", &i.to_string())).expect("put");
        }
        let mut bytes = Vec::new();
        Snapshot::snapshot_view(&source)
            .write_to(&mut bytes)
            .expect("write");
        Snapshot::restore_from(&mut store, &mut bytes.as_slice()).expect("restore");
        assert_eq!(*recorder.replaced.lock().expect("lock"), [21]);
        apply(&mut store, &put("after", "1"));
        let heard = recorder.heard.lock().expect("lock");
        assert_eq!(heard.last().map(|(r, _)| *r), Some(22));
        assert_eq!(store, {
            let mut copy = KvStore::restore_from(&mut bytes.as_slice()).expect("restore");
            copy.apply(&put("after", "1")).expect("put");
            copy
        });
    }
}
