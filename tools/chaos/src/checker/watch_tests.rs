//! The watch checker's self-tests: one small history, clean watch records that must pass (with a
//! reconnection, bookmarks, a catch-up batch and events of unanswered writes), and each anomaly
//! kind planted in them, which must be caught and charged to the right guarantee.
//!
//! The history (key index: name in the store):
//! ```text
//!   rev 2  put k0 = 1            answered
//!   rev 3  put k1 = 2            answered
//!   -      cas k1 2 -> 7         answered false (no revision)
//!   rev 4  delete k0             answered, deleted
//!   rev 5  cas k1 2 -> 3         indeterminate   } one revision with two events, as a
//!          delete k0             indeterminate   } multi-key Txn would make
//!   rev 6  put k0 = 4            answered
//! ```

use super::watch::{check, Guarantee, WatchVerdict};
use crate::history::{Call, Operation, Ret};
use crate::watchers::{WatchEvent, WatchRecord};

const FINAL: i64 = 6;

fn answered(key: u32, call: Call, ret: Ret, revision: Option<i64>) -> Operation {
    Operation {
        client: key,
        key,
        call,
        invoked: 0,
        completed: Some(1),
        ret: Some(ret),
        node: 1,
        revision,
    }
}

fn unanswered(key: u32, call: Call) -> Operation {
    Operation {
        client: 9,
        key,
        call,
        invoked: 0,
        completed: None,
        ret: None,
        node: 1,
        revision: None,
    }
}

fn history() -> Vec<Operation> {
    vec![
        answered(0, Call::Put(1), Ret::Put, Some(2)),
        answered(1, Call::Put(2), Ret::Put, Some(3)),
        answered(
            1,
            Call::Cas {
                expect: Some(9),
                new: 7,
            },
            Ret::Cas(false),
            Some(3),
        ),
        answered(0, Call::Get, Ret::Get(Some(1)), Some(3)),
        answered(0, Call::Delete, Ret::Delete(true), Some(4)),
        unanswered(
            1,
            Call::Cas {
                expect: Some(2),
                new: 3,
            },
        ),
        unanswered(0, Call::Delete),
        answered(0, Call::Put(4), Ret::Put, Some(6)),
    ]
}

fn ev(revision: i64, key: u32, value: Option<u64>) -> WatchEvent {
    WatchEvent {
        revision,
        key: String::from_utf8_lossy(&crate::workload::key_bytes(key)).into_owned(),
        value: value.map(|v| v.to_string()),
    }
}

/// The events of a revision, as the history above made them.
fn rev(r: i64) -> Vec<WatchEvent> {
    match r {
        2 => vec![ev(2, 0, Some(1))],
        3 => vec![ev(3, 1, Some(2))],
        4 => vec![ev(4, 0, None)],
        5 => vec![ev(5, 0, None), ev(5, 1, Some(3))],
        6 => vec![ev(6, 0, Some(4))],
        _ => panic!("no revision {r} in the test history"),
    }
}

fn connect(watcher: u32, start_revision: i64) -> WatchRecord {
    WatchRecord::Connect {
        watcher,
        at: 0,
        node: 1,
        start_revision,
    }
}

fn events(watcher: u32, events: Vec<WatchEvent>) -> WatchRecord {
    WatchRecord::Events {
        watcher,
        at: 0,
        header_revision: events.last().map_or(0, |e| e.revision),
        fragment: false,
        events,
    }
}

fn revs(watcher: u32, rs: &[i64]) -> WatchRecord {
    events(watcher, rs.iter().flat_map(|&r| rev(r)).collect())
}

fn progress(watcher: u32, revision: i64) -> WatchRecord {
    WatchRecord::Progress {
        watcher,
        at: 0,
        revision,
    }
}

fn broken(watcher: u32) -> WatchRecord {
    WatchRecord::Broken {
        watcher,
        at: 0,
        reason: "transport error (connection)".into(),
    }
}

/// Watcher 0: one revision per response, a bookmark, a broken stream and a resumption from
/// the bookmark. Watcher 1: catch-up batches on one stream.
fn clean_watcher_0() -> Vec<WatchRecord> {
    vec![
        connect(0, 1),
        revs(0, &[2]),
        revs(0, &[3]),
        progress(0, 3),
        broken(0),
        connect(0, 4),
        revs(0, &[4]),
        revs(0, &[5]),
        revs(0, &[6]),
        progress(0, 6),
    ]
}

fn clean_watcher_1() -> Vec<WatchRecord> {
    vec![
        connect(1, 1),
        revs(1, &[2, 3]),
        revs(1, &[4, 5, 6]),
        progress(1, 6),
    ]
}

fn run(watcher_0: Vec<WatchRecord>) -> WatchVerdict {
    let records: Vec<WatchRecord> = watcher_0.into_iter().chain(clean_watcher_1()).collect();
    check(&history(), &records, FINAL)
}

/// Exactly the anomalies `expected` (guarantee, revision), each once.
#[track_caller]
fn assert_caught(verdict: &WatchVerdict, expected: &[(Guarantee, i64)]) {
    let mut got: Vec<(Guarantee, i64)> = verdict
        .anomalies
        .iter()
        .map(|a| (a.guarantee, a.revision))
        .collect();
    got.sort();
    let mut want = expected.to_vec();
    want.sort();
    assert_eq!(got, want, "the verdict was: {verdict}");
}

#[test]
fn clean_streams_pass() {
    let v = run(clean_watcher_0());
    assert_caught(&v, &[]);
    assert_eq!((v.watchers, v.streams, v.progress), (2, 3, 3));
    assert_eq!(v.events, 12, "6 events to each watcher");
    assert_eq!(v.acknowledged_changes, 4, "revisions 2, 3, 4 and 6");
}

#[test]
fn events_going_backwards_break_ordered() {
    let mut w = clean_watcher_0();
    // Revision 6 before 5, in one response.
    w[7] = events(0, [rev(6), rev(5)].concat());
    w.remove(8);
    assert_caught(&run(w), &[(Guarantee::Ordered, 5), (Guarantee::Ordered, 5)]);
}

#[test]
fn a_repeated_event_breaks_unique() {
    let mut w = clean_watcher_0();
    w.insert(3, revs(0, &[3]));
    assert_caught(&run(w), &[(Guarantee::Unique, 3)]);
}

#[test]
fn a_gap_inside_a_stream_breaks_reliable_even_for_an_unanswered_write() {
    // Revision 5 came from indeterminate writes: only the other watcher shows it happened.
    let mut w = clean_watcher_0();
    w.remove(7);
    assert_caught(
        &run(w),
        &[(Guarantee::Reliable, 5), (Guarantee::Reliable, 5)],
    );
}

#[test]
fn a_lost_answered_write_breaks_reliable() {
    let mut w = clean_watcher_0();
    w.remove(1);
    assert_caught(&run(w), &[(Guarantee::Reliable, 2)]);
}

#[test]
fn a_watcher_that_stops_early_misses_its_tail() {
    let w = clean_watcher_0()[..7].to_vec();
    assert_caught(
        &run(w),
        &[
            (Guarantee::Reliable, 5),
            (Guarantee::Reliable, 5),
            (Guarantee::Reliable, 6),
        ],
    );
}

#[test]
fn a_revision_split_across_responses_breaks_atomic() {
    let mut w = clean_watcher_0();
    let five = rev(5);
    w[7] = events(0, vec![five[0].clone()]);
    w.insert(8, events(0, vec![five[1].clone()]));
    assert_caught(&run(w), &[(Guarantee::Atomic, 5)]);
}

#[test]
fn an_event_below_the_start_revision_breaks_resumable() {
    let mut w = clean_watcher_0();
    // The new stream replays revision 3 although it asked for 4 on.
    w.insert(6, revs(0, &[3]));
    assert_caught(&run(w), &[(Guarantee::Resumable, 3)]);
}

#[test]
fn a_change_lost_at_a_resumption_breaks_resumable() {
    let mut w = clean_watcher_0();
    // No bookmark this time; the new stream starts at 4 but begins with 5.
    w.remove(3);
    w.remove(5);
    assert_caught(&run(w), &[(Guarantee::Resumable, 4)]);
}

#[test]
fn an_event_after_a_bookmark_covering_it_breaks_bookmarkable() {
    let mut w = clean_watcher_0();
    // The bookmark at 3 arrives before revision 3's event, on the same stream.
    w.swap(2, 3);
    assert_caught(&run(w), &[(Guarantee::Bookmarkable, 3)]);
}

#[test]
fn a_change_missing_below_a_bookmark_breaks_bookmarkable() {
    let mut w = clean_watcher_0();
    // A bookmark at 5 on the new stream, then revision 6: 4 and 5 were never sent.
    w[6] = progress(0, 5);
    w.remove(7);
    assert_caught(
        &run(w),
        &[
            (Guarantee::Bookmarkable, 4),
            (Guarantee::Bookmarkable, 5),
            (Guarantee::Bookmarkable, 5),
        ],
    );
}

#[test]
fn events_no_write_explains_break_valid() {
    for (name, bad) in [
        ("a value never written", ev(6, 0, Some(99))),
        ("a value written to another key", ev(6, 1, Some(4))),
        (
            "the value of a compare-and-set that failed",
            ev(6, 1, Some(7)),
        ),
        ("an answered write at another revision", ev(6, 0, Some(1))),
        ("a key outside the workload", {
            let mut e = ev(6, 0, Some(4));
            e.key = "elsewhere".into();
            e
        }),
    ] {
        let mut w = clean_watcher_0();
        w[8] = events(0, vec![bad]);
        let v = run(w);
        assert!(v.count(Guarantee::Valid) >= 1, "{name} was not caught: {v}");
    }
    // A delete of a key nobody deleted without an answer, at a revision no answered write made.
    let mut w = clean_watcher_0();
    w[7] = events(0, vec![ev(5, 0, None), ev(5, 1, None)]);
    let v = run(w);
    assert!(v.count(Guarantee::Valid) >= 1, "a delete of k1 at 5: {v}");
}

#[test]
fn a_span_every_member_compacted_is_counted_not_blamed() {
    let mut w = clean_watcher_0();
    // After the break, every member answers "compacted at 5"; the watcher moves to 5.
    let cancel = WatchRecord::Canceled {
        watcher: 0,
        at: 0,
        compact_revision: 5,
        reason: "mvcc: required revision has been compacted".into(),
    };
    let tail = w.split_off(5);
    for _ in 0..3 {
        w.push(connect(0, 4));
        w.push(cancel.clone());
    }
    w.push(connect(0, 5));
    w.extend(tail.into_iter().skip(2));
    let v = run(w);
    assert_caught(&v, &[]);
    assert_eq!(v.compacted_spans, 1);
}
