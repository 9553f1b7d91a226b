//! etcd's watch guarantees, checked on the streams the watchers recorded
//! ([`crate::watchers`]) against the run's KV history ([`crate::history`]).
//!
//! The guarantees are those of etcd's `api_guarantees` page and its robustness tests, plus the
//! validity of every event. For each watcher, its records are read in arrival order:
//! - **ordered**: event revisions never go down, within a response or from one response to the
//!   next (across reconnections too);
//! - **unique**: no (revision, key) is delivered twice to one watcher;
//! - **reliable** (no gap): every change in the watcher's range is delivered: each write that the
//!   KV history says changed the store at revision R (answered: a put, a compare-and-set that
//!   succeeded, a delete that deleted), and each event any other watcher received, if R lies in
//!   the span this watcher has been told about (from its first `start_revision` to the highest
//!   revision it saw in an event or a progress notification); the watcher that has not reached
//!   the run's final revision is missing its tail;
//! - **atomic**: the events of one revision arrive in one response (a revision never continues
//!   in the next response; `fragment` responses are the documented exception);
//! - **resumable**: a stream created with `start_revision = S` delivers no event below S, and a
//!   change missing where a stream broke and a new one began counts here, not as "reliable";
//! - **bookmarkable**: after a progress notification at R, no event of revision <= R arrives on
//!   that stream, and no change at or below R is missing;
//! - **valid**: every event corresponds to a write of the history that was answered or is
//!   indeterminate: a PUT's value was written by a put or compare-and-set of that key, which, if
//!   answered, succeeded at that revision; a DELETE is a delete of that key, answered with that
//!   revision or indeterminate; and all watchers agree on what happened at a revision.
//!
//! A missing change is charged to one guarantee only, the most specific: bookmarkable if a
//! progress notification covering it came before the next event, else resumable if a stream
//! began between the events around it, else reliable. An event that breaks several rules is
//! charged once, in the order resumable, bookmarkable, unique, atomic, ordered.
//!
//! A span that every member had compacted when a watcher asked for it (the watcher was
//! cancelled with `compact_revision` and moved past it) is not checked for gaps: etcd allows
//! that loss and says so to the client. Such spans are counted in the verdict.
//!
//! Invariant assumed of the history: values are unique in a run (see [`crate::history`]), so a
//! PUT event names its write.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use crate::history::{Call, Operation};
use crate::watchers::{WatchEvent, WatchRecord};
use crate::workload::key_index;

/// The guarantee an anomaly breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Guarantee {
    Ordered,
    Unique,
    Reliable,
    Atomic,
    Resumable,
    Bookmarkable,
    Valid,
}

impl Guarantee {
    pub const ALL: [Guarantee; 7] = [
        Guarantee::Ordered,
        Guarantee::Unique,
        Guarantee::Reliable,
        Guarantee::Atomic,
        Guarantee::Resumable,
        Guarantee::Bookmarkable,
        Guarantee::Valid,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Guarantee::Ordered => "ordered",
            Guarantee::Unique => "unique",
            Guarantee::Reliable => "reliable",
            Guarantee::Atomic => "atomic",
            Guarantee::Resumable => "resumable",
            Guarantee::Bookmarkable => "bookmarkable",
            Guarantee::Valid => "valid",
        }
    }
}

/// One broken guarantee, on one watcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchAnomaly {
    pub guarantee: Guarantee,
    pub watcher: u32,
    pub revision: i64,
    pub detail: String,
}

/// The watch checker's answer.
#[derive(Debug, Default)]
pub struct WatchVerdict {
    pub watchers: usize,
    /// Streams opened (connections), over all watchers.
    pub streams: usize,
    /// Events received, over all watchers (a revision seen by 3 watchers counts 3 times).
    pub events: usize,
    pub progress: usize,
    /// Changes of the store the KV history names (answered writes that changed it).
    pub acknowledged_changes: usize,
    /// Spans skipped because every member had compacted them.
    pub compacted_spans: usize,
    pub anomalies: Vec<WatchAnomaly>,
}

impl WatchVerdict {
    pub fn count(&self, g: Guarantee) -> usize {
        self.anomalies.iter().filter(|a| a.guarantee == g).count()
    }

    pub fn passed(&self) -> bool {
        self.anomalies.is_empty()
    }
}

/// How many anomalies of each kind the summary shows in full.
const SHOWN_PER_KIND: usize = 3;

impl fmt::Display for WatchVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} anomalies: {} watchers, {} streams, {} events, {} progress notifications, {} \
             acknowledged changes, {} compacted spans",
            self.anomalies.len(),
            self.watchers,
            self.streams,
            self.events,
            self.progress,
            self.acknowledged_changes,
            self.compacted_spans
        )?;
        for g in Guarantee::ALL {
            let n = self.count(g);
            if n == 0 {
                continue;
            }
            write!(f, "\n  {}: {n}", g.name())?;
            for a in self
                .anomalies
                .iter()
                .filter(|a| a.guarantee == g)
                .take(SHOWN_PER_KIND)
            {
                write!(
                    f,
                    "\n    watcher {} revision {}: {}",
                    a.watcher, a.revision, a.detail
                )?;
            }
        }
        Ok(())
    }
}

/// A change of the store at one revision, as a watcher sees it: key index and value (`None`:
/// deleted). Keys outside the workload's are kept by name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Change {
    key: String,
    value: Option<String>,
}

impl From<&WatchEvent> for Change {
    fn from(e: &WatchEvent) -> Change {
        Change {
            key: e.key.clone(),
            value: e.value.clone(),
        }
    }
}

/// Checks the watchers' `records` against the KV `history`; `final_revision` is the store's
/// revision after the run (0: unknown, then the tail of a watcher is not checked).
pub fn check(history: &[Operation], records: &[WatchRecord], final_revision: i64) -> WatchVerdict {
    let kv = KvChanges::of(history);
    let mut by_watcher: BTreeMap<u32, Vec<&WatchRecord>> = BTreeMap::new();
    for r in records {
        by_watcher.entry(r.watcher()).or_default().push(r);
    }
    let mut verdict = WatchVerdict {
        watchers: by_watcher.len(),
        acknowledged_changes: kv.by_revision.len(),
        ..WatchVerdict::default()
    };
    let replays: Vec<Replay> = by_watcher
        .iter()
        .map(|(&w, records)| Replay::of(w, records, &mut verdict))
        .collect();
    // Everything any watcher received, by revision: the other watchers' reference.
    let mut received: BTreeMap<i64, BTreeSet<Change>> = BTreeMap::new();
    for r in &replays {
        for (&(revision, _), change) in &r.seen {
            received.entry(revision).or_default().insert(change.clone());
        }
    }
    for r in &replays {
        r.check_gaps(&kv, &received, final_revision, &mut verdict.anomalies);
    }
    check_validity(history, &kv, &received, &mut verdict.anomalies);
    verdict
        .anomalies
        .sort_by_key(|a| (a.guarantee, a.watcher, a.revision));
    verdict
}

/// The changes the KV history says happened, by revision.
struct KvChanges {
    /// Answered writes that changed the store: revision -> change.
    by_revision: BTreeMap<i64, Change>,
}

impl KvChanges {
    fn of(history: &[Operation]) -> KvChanges {
        let mut by_revision = BTreeMap::new();
        for op in history {
            let Some(revision) = op.revision else {
                continue;
            };
            if !op.changed_the_store() {
                continue;
            }
            let key = String::from_utf8_lossy(&crate::workload::key_bytes(op.key)).into_owned();
            let value = op.written_value().map(|v| v.to_string());
            by_revision.insert(revision, Change { key, value });
        }
        KvChanges { by_revision }
    }
}

/// One watcher's records, replayed.
struct Replay {
    watcher: u32,
    /// (revision, key) -> change, as first received.
    seen: BTreeMap<(i64, String), Change>,
    /// Record positions: of each first-received event (by revision), of progress notifications
    /// (revision), of stream starts.
    event_at: BTreeMap<i64, usize>,
    progress_at: Vec<(usize, i64)>,
    connect_at: Vec<usize>,
    /// The first start revision and the highest revision the watcher was told about.
    first_start: Option<i64>,
    covered_to: i64,
    /// Spans `[from, to)` skipped for compaction.
    skipped: Vec<(i64, i64)>,
}

impl Replay {
    fn of(watcher: u32, records: &[&WatchRecord], verdict: &mut WatchVerdict) -> Replay {
        let mut r = Replay {
            watcher,
            seen: BTreeMap::new(),
            event_at: BTreeMap::new(),
            progress_at: Vec::new(),
            connect_at: Vec::new(),
            first_start: None,
            covered_to: 0,
            skipped: Vec::new(),
        };
        let anomalies = &mut verdict.anomalies;
        let mut flag = |guarantee, revision, detail: String| {
            anomalies.push(WatchAnomaly {
                guarantee,
                watcher,
                revision,
                detail,
            })
        };
        // Per stream: its start, its latest bookmark, the last revision of its last response.
        let mut start = 0i64;
        let mut bookmark = 0i64;
        let mut last_response_revision: Option<i64> = None;
        let mut last_revision = 0i64; // over all streams
        let mut compacted_at = 0i64;
        for (position, record) in records.iter().enumerate() {
            match record {
                WatchRecord::Connect { start_revision, .. } => {
                    verdict.streams += 1;
                    r.connect_at.push(position);
                    if r.first_start.is_none() {
                        r.first_start = Some(*start_revision);
                    } else if compacted_at > 0 && *start_revision > r.covered_to + 1 {
                        r.skipped.push((r.covered_to + 1, *start_revision));
                        verdict.compacted_spans += 1;
                    }
                    compacted_at = 0;
                    start = *start_revision;
                    bookmark = 0;
                    last_response_revision = None;
                }
                WatchRecord::Progress { revision, .. } => {
                    verdict.progress += 1;
                    r.progress_at.push((position, *revision));
                    bookmark = bookmark.max(*revision);
                    r.covered_to = r.covered_to.max(*revision);
                }
                WatchRecord::Canceled {
                    compact_revision, ..
                } => compacted_at = *compact_revision,
                WatchRecord::Broken { .. } => {}
                WatchRecord::Events {
                    events, fragment, ..
                } => {
                    verdict.events += events.len();
                    let mut previous: Option<i64> = None;
                    for (i, e) in events.iter().enumerate() {
                        let rev = e.revision;
                        let key = (rev, e.key.clone());
                        let what = format!("{} {:?} = {:?}", rev, e.key, e.value);
                        if rev < start {
                            flag(
                                Guarantee::Resumable,
                                rev,
                                format!("event {what} on a stream started at revision {start}"),
                            );
                        } else if rev <= bookmark {
                            flag(
                                Guarantee::Bookmarkable,
                                rev,
                                format!("event {what} after a progress notification at {bookmark}"),
                            );
                        } else if r.seen.contains_key(&key) {
                            flag(
                                Guarantee::Unique,
                                rev,
                                format!("event {what} delivered again"),
                            );
                        } else if i == 0 && !fragment && last_response_revision == Some(rev) {
                            flag(
                                Guarantee::Atomic,
                                rev,
                                format!(
                                    "event {what}: revision {rev} continues from the previous \
                                     response"
                                ),
                            );
                        } else if previous.is_some_and(|p| rev < p) || rev < last_revision {
                            flag(
                                Guarantee::Ordered,
                                rev,
                                format!(
                                    "event {what} after revision {}",
                                    previous.unwrap_or(0).max(last_revision)
                                ),
                            );
                        }
                        previous = Some(rev);
                        last_revision = last_revision.max(rev);
                        r.covered_to = r.covered_to.max(rev);
                        r.event_at.entry(rev).or_insert(position);
                        r.seen.entry(key).or_insert_with(|| Change::from(e));
                    }
                    last_response_revision = previous;
                }
            }
        }
        r
    }

    /// Reports each change in this watcher's span that it did not receive.
    fn check_gaps(
        &self,
        kv: &KvChanges,
        received: &BTreeMap<i64, BTreeSet<Change>>,
        final_revision: i64,
        anomalies: &mut Vec<WatchAnomaly>,
    ) {
        let Some(first) = self.first_start else {
            return;
        };
        let to = self.covered_to.max(final_revision);
        let mut expected: BTreeMap<i64, BTreeSet<Change>> = BTreeMap::new();
        for (&rev, c) in kv.by_revision.range(first.max(1)..=to) {
            expected.entry(rev).or_default().insert(c.clone());
        }
        for (&rev, cs) in received.range(first.max(1)..=to) {
            expected.entry(rev).or_default().extend(cs.iter().cloned());
        }
        for (rev, changes) in expected {
            if self.skipped.iter().any(|&(a, b)| a <= rev && rev < b) {
                continue;
            }
            for c in changes {
                if self.seen.contains_key(&(rev, c.key.clone())) {
                    continue;
                }
                let (guarantee, why) = self.blame(rev);
                anomalies.push(WatchAnomaly {
                    guarantee,
                    watcher: self.watcher,
                    revision: rev,
                    detail: format!(
                        "missing {:?} = {:?} at revision {rev} ({why})",
                        c.key, c.value
                    ),
                });
            }
        }
    }

    /// Which guarantee a change missing at `rev` breaks (see the module docs).
    fn blame(&self, rev: i64) -> (Guarantee, String) {
        let before = self.event_at.range(..rev).next_back().map(|(_, &p)| p);
        let after = self.event_at.range(rev + 1..).next().map(|(_, &p)| p);
        let after_pos = after.unwrap_or(usize::MAX);
        if let Some(&(_, b)) = self
            .progress_at
            .iter()
            .find(|&&(p, b)| b >= rev && p < after_pos)
        {
            return (
                Guarantee::Bookmarkable,
                format!("a progress notification at {b} came first"),
            );
        }
        // The first stream's start is not a resumption; any later one between the events
        // around the gap is.
        let before_pos = before.unwrap_or(0);
        if self
            .connect_at
            .iter()
            .skip(1)
            .any(|&p| p > before_pos && p < after_pos)
        {
            return (
                Guarantee::Resumable,
                "lost where a stream broke and the next began".into(),
            );
        }
        if after.is_none() && self.covered_to < rev {
            return (
                Guarantee::Reliable,
                format!(
                    "the watcher never got past revision {} (the run ended at a later one)",
                    self.covered_to
                ),
            );
        }
        (Guarantee::Reliable, "a gap inside one stream".into())
    }
}

/// Every event received must be a write of the history that was answered or is indeterminate.
fn check_validity(
    history: &[Operation],
    kv: &KvChanges,
    received: &BTreeMap<i64, BTreeSet<Change>>,
    anomalies: &mut Vec<WatchAnomaly>,
) {
    // Value -> its writer; key -> whether an indeterminate delete of it exists.
    let writers: HashMap<u64, &Operation> = history
        .iter()
        .filter_map(|o| o.written_value().map(|v| (v, o)))
        .collect();
    let mut indeterminate_deletes: BTreeSet<u32> = BTreeSet::new();
    for o in history {
        if o.is_indeterminate() && o.call == Call::Delete {
            indeterminate_deletes.insert(o.key);
        }
    }
    let mut flag = |revision, detail: String| {
        anomalies.push(WatchAnomaly {
            guarantee: Guarantee::Valid,
            watcher: 0,
            revision,
            detail,
        })
    };
    for (&rev, changes) in received {
        let keys: BTreeSet<&String> = changes.iter().map(|c| &c.key).collect();
        if keys.len() < changes.len() {
            flag(
                rev,
                format!("watchers disagree on revision {rev}: {changes:?}"),
            );
        }
        for c in changes {
            if let Some(problem) = invalid(rev, c, kv, &writers, &indeterminate_deletes) {
                flag(rev, format!("event {:?} = {:?}: {problem}", c.key, c.value));
            }
        }
    }
}

/// Why a received change matches no write of the history (`None`: it does).
fn invalid(
    rev: i64,
    c: &Change,
    kv: &KvChanges,
    writers: &HashMap<u64, &Operation>,
    indeterminate_deletes: &BTreeSet<u32>,
) -> Option<String> {
    let Some(key) = key_index(c.key.as_bytes()) else {
        return Some("a key outside the workload's".into());
    };
    if let Some(expected) = kv.by_revision.get(&rev) {
        return (expected != c).then(|| {
            format!(
                "the answered write of revision {rev} made {:?} = {:?}",
                expected.key, expected.value
            )
        });
    }
    // No answered write produced this revision: it must be an indeterminate one.
    match &c.value {
        None if indeterminate_deletes.contains(&key) => None,
        None => Some("no unanswered delete of this key".into()),
        Some(text) => {
            let Some(writer) = text.parse::<u64>().ok().and_then(|v| writers.get(&v)) else {
                return Some("a value no client wrote".into());
            };
            if writer.key != key {
                Some(format!("the value was written to key {}", writer.key))
            } else if writer.is_indeterminate() {
                None
            } else if !writer.changed_the_store() {
                Some(format!("its writer was answered {:?}", writer.ret))
            } else {
                Some(format!(
                    "its writer was answered at revision {:?}",
                    writer.revision
                ))
            }
        }
    }
}
