//! The core's view of its log: the durable storage plus the entries not yet known to be durable.
//!
//! The driver writes entries to storage asynchronously (several `Ready`s may be in flight), so the
//! core cannot read its newest entries from storage. [`RaftLog`] therefore keeps every entry at
//! index `>= offset` in memory (`unstable`) and reads only the durable prefix below `offset` from
//! storage, the design of etcd's `log_unstable.go`.
//!
//! Invariants (checked by [`RaftLog::check_invariants`]):
//! - every index `< offset` is durable in storage and equal to the core's view; storage may hold
//!   other, stale entries at `>= offset` (a truncation still in flight), which are never read;
//! - `unstable` is contiguous from `offset` and its terms never decrease;
//! - `offset <= unsent_from <= last_index() + 1`: entries from `unsent_from` on have not been handed
//!   to the driver yet;
//! - every in-flight write's `durable_upto` is below `unsent_from` and no later than any truncation
//!   made after that write was handed out (so reaching it never exposes a truncated entry).
//! - after [`RaftLog::install_snapshot`] at `(i, t)`: `first_index() > i`, `term(i) == t`, and no
//!   entry at or below `i` is read from storage (which may still hold the replaced log until the
//!   driver resets it).

use std::collections::VecDeque;

use crate::raft::message::SnapshotId;
use crate::raft::storage::Storage;
use crate::types::{LogEntry, LogIndex, Term};

/// A `Ready` with entries that the driver has taken but not yet reported durable.
#[derive(Clone, Copy, Debug)]
struct InFlightWrite {
    /// The last entry the `Ready` appended: what `on_persisted` must hand back.
    token: (LogIndex, Term),
    /// The highest index that is both written by this or an earlier `Ready` and still part of the
    /// view (lowered when a later truncation removes part of what it wrote).
    durable_upto: LogIndex,
}

pub(crate) struct RaftLog<S: Storage> {
    storage: S,
    offset: LogIndex,
    unstable: Vec<LogEntry>,
    unsent_from: LogIndex,
    /// A truncation made since the last `Ready`; the next `Ready` must carry `truncate_from`.
    truncate_pending: bool,
    in_flight: VecDeque<InFlightWrite>,
    /// The last snapshot installed from a leader: nothing at or below its index is read from
    /// storage any more (it answers its term itself).
    installed: Option<SnapshotId>,
    /// An installed snapshot the next `Ready` must tell the driver to reset its log to.
    reset_pending: Option<SnapshotId>,
}

impl<S: Storage> RaftLog<S> {
    /// A view over storage that is entirely durable (at start or after a restart).
    pub(crate) fn new(storage: S) -> RaftLog<S> {
        let offset = storage.last_index().next();
        RaftLog {
            storage,
            offset,
            unstable: Vec::new(),
            unsent_from: offset,
            truncate_pending: false,
            in_flight: VecDeque::new(),
            installed: None,
            reset_pending: None,
        }
    }

    pub(crate) fn storage(&self) -> &S {
        &self.storage
    }

    pub(crate) fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    pub(crate) fn first_index(&self) -> LogIndex {
        match self.installed {
            Some(s) => self.storage.first_index().max(s.index.next()),
            None => self.storage.first_index(),
        }
    }

    pub(crate) fn last_index(&self) -> LogIndex {
        match self.unstable.last() {
            Some(e) => e.index,
            None => self.offset.prev(),
        }
    }

    /// The last index that is durable locally and part of the view. It can move down when a
    /// follower truncates a conflicting suffix that was already durable.
    pub(crate) fn persisted_index(&self) -> LogIndex {
        self.offset.prev()
    }

    /// The term at `index`; `Some(0)` for index 0, `None` past the end or before the first index.
    pub(crate) fn term(&self, index: LogIndex) -> Option<Term> {
        if index >= self.offset {
            return self
                .unstable
                .get((index.0 - self.offset.0) as usize)
                .map(|e| e.term);
        }
        if let Some(s) = self.installed {
            if index == s.index {
                return Some(s.term);
            }
            if index < s.index {
                return None;
            }
        }
        self.storage.term(index)
    }

    pub(crate) fn last_term(&self) -> Term {
        let last = self.last_index();
        self.term(last).unwrap_or_else(|| {
            panic!(
                "RaftLog: no term for last index {last} (offset {})",
                self.offset
            )
        })
    }

    pub(crate) fn entry(&self, index: LogIndex) -> Option<LogEntry> {
        if index >= self.offset {
            return self
                .unstable
                .get((index.0 - self.offset.0) as usize)
                .cloned();
        }
        if index < self.first_index() {
            return None;
        }
        self.storage.entries(index, index.next(), u64::MAX).pop()
    }

    /// Entries in `[lo, hi)`, at most `max_entries` and stopping once `max_bytes` of payload were
    /// collected (at least one entry if the range is not empty).
    ///
    /// # Panics
    /// If the range is not inside `[first_index, last_index + 1)`.
    pub(crate) fn entries(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_entries: u64,
        max_bytes: u64,
    ) -> Vec<LogEntry> {
        assert!(
            lo >= self.first_index() && lo <= hi && hi <= self.last_index().next(),
            "RaftLog::entries({lo}..{hi}) outside {}..={}",
            self.first_index(),
            self.last_index()
        );
        let hi = LogIndex(hi.0.min(lo.0.saturating_add(max_entries.max(1))));
        let mut out = Vec::new();
        let mut bytes = 0u64;
        if lo < self.offset {
            let stable_hi = hi.min(self.offset);
            out = self.storage.entries(lo, stable_hi, max_bytes);
            bytes = out.iter().map(|e| e.payload.len() as u64).sum();
            let stopped_early = out.last().map(|e| e.index.next()) != Some(stable_hi);
            if stopped_early || stable_hi == hi {
                return out;
            }
        }
        let from = lo.max(self.offset);
        for e in &self.unstable[(from.0 - self.offset.0) as usize..(hi.0 - self.offset.0) as usize]
        {
            if !out.is_empty() && bytes + e.payload.len() as u64 > max_bytes {
                break;
            }
            bytes += e.payload.len() as u64;
            out.push(e.clone());
        }
        out
    }

    /// Appends entries that continue the view exactly (a leader's proposal, or a follower's new
    /// entries after its last index).
    pub(crate) fn append(&mut self, entries: &[LogEntry]) {
        for e in entries {
            let last = self.last_index();
            assert_eq!(
                e.index,
                last.next(),
                "RaftLog::append would leave a hole: last index {last}, entry index {}",
                e.index
            );
            let last_term = self.last_term();
            assert!(
                e.term >= last_term,
                "RaftLog::append: term would decrease at index {}: {} after {last_term}",
                e.index,
                e.term
            );
            self.unstable.push(e.clone());
        }
    }

    /// Removes every entry at `>= from` (a follower's conflicting suffix, Raft §5.3). The next
    /// `Ready` tells the driver to truncate its storage too.
    pub(crate) fn truncate_from(&mut self, from: LogIndex) {
        assert!(
            from >= self.first_index() && from <= self.last_index(),
            "RaftLog::truncate_from({from}) outside {}..={}",
            self.first_index(),
            self.last_index()
        );
        if from < self.offset {
            // Part of the durable prefix goes: from now on it is read from memory (nothing), and
            // the storage copy is stale until the driver performs the truncation.
            self.unstable.clear();
            self.offset = from;
        } else {
            self.unstable.truncate((from.0 - self.offset.0) as usize);
        }
        self.unsent_from = self.unsent_from.min(from);
        for w in &mut self.in_flight {
            w.durable_upto = w.durable_upto.min(from.prev());
        }
        self.truncate_pending = true;
    }

    /// Replaces the whole view by an empty log that continues after the snapshot `s` (Raft §7:
    /// the follower's log does not hold the snapshot's last entry). Writes still in flight can no
    /// longer expose anything; the next `Ready` tells the driver to reset its log.
    pub(crate) fn install_snapshot(&mut self, s: SnapshotId) {
        assert_ne!(
            self.term(s.index),
            Some(s.term),
            "RaftLog::install_snapshot({s:?}) over a log that holds its last entry"
        );
        self.unstable.clear();
        self.offset = s.index.next();
        self.unsent_from = self.offset;
        self.truncate_pending = false;
        for w in &mut self.in_flight {
            w.durable_upto = w.durable_upto.min(s.index);
        }
        self.installed = Some(s);
        self.reset_pending = Some(s);
    }

    pub(crate) fn has_unsent(&self) -> bool {
        self.unsent_from <= self.last_index()
            || self.truncate_pending
            || self.reset_pending.is_some()
    }

    /// Hands the entries not yet given to the driver (and the snapshot reset and the truncation
    /// before them, if any) to a `Ready`, and remembers the write until `on_persisted` reports it.
    pub(crate) fn take_unsent(&mut self) -> (Option<SnapshotId>, Option<LogIndex>, Vec<LogEntry>) {
        let reset = self.reset_pending.take();
        let from = self.unsent_from;
        let entries: Vec<LogEntry> = self.unstable[(from.0 - self.offset.0) as usize..].to_vec();
        // Truncating at the first index this Ready writes removes every stale entry storage may
        // hold at or after the truncation point (all of which are >= unsent_from) and leaves the
        // entries to append exactly contiguous.
        let truncate = if self.truncate_pending {
            assert!(
                !entries.is_empty(),
                "RaftLog: truncation at or after {from} with no entries to replace it"
            );
            Some(from)
        } else {
            None
        };
        self.truncate_pending = false;
        if let Some(last) = entries.last() {
            self.in_flight.push_back(InFlightWrite {
                token: (last.index, last.term),
                durable_upto: last.index,
            });
            self.unsent_from = last.index.next();
        }
        (reset, truncate, entries)
    }

    /// The driver reports that the oldest in-flight `Ready` with entries is durable.
    ///
    /// # Panics
    /// If `token` is not that Ready's token: the driver broke the "persist in order" contract.
    pub(crate) fn on_persisted(&mut self, token: (LogIndex, Term)) {
        let w = self.in_flight.pop_front().unwrap_or_else(|| {
            panic!("on_persisted({token:?}) with no Ready in flight: driver contract broken")
        });
        assert_eq!(
            w.token, token,
            "on_persisted out of order: the oldest in-flight Ready ends at {:?}, got {token:?}",
            w.token
        );
        if w.durable_upto >= self.offset {
            let n = (w.durable_upto.0 - self.offset.0 + 1) as usize;
            self.unstable.drain(..n);
            self.offset = w.durable_upto.next();
        }
    }

    /// The first index of the run of entries with the same term as `index`, scanning back no
    /// further than `floor` (a follower's conflict hint, §5.3).
    pub(crate) fn first_index_of_term_at(&self, index: LogIndex, floor: LogIndex) -> LogIndex {
        let term = self.term(index);
        let mut i = index;
        while i > floor.max(self.first_index()) && self.term(i.prev()) == term {
            i = i.prev();
        }
        i
    }

    /// Panics, naming the values, if an invariant of the view is broken.
    pub(crate) fn check_invariants(&self) {
        // Until the driver resets its log to an installed snapshot, storage may be shorter.
        let reset_in_progress = self
            .installed
            .is_some_and(|s| s.index == self.offset.prev());
        assert!(
            reset_in_progress || self.storage.last_index() >= self.offset.prev(),
            "RaftLog: durable prefix ends at {} but storage last index is {}",
            self.offset.prev(),
            self.storage.last_index()
        );
        for (i, e) in self.unstable.iter().enumerate() {
            assert_eq!(
                e.index.0,
                self.offset.0 + i as u64,
                "RaftLog: unstable entry {i} has index {} (offset {})",
                e.index,
                self.offset
            );
        }
        assert!(
            self.unsent_from >= self.offset && self.unsent_from <= self.last_index().next(),
            "RaftLog: unsent_from {} outside {}..={}",
            self.unsent_from,
            self.offset,
            self.last_index().next()
        );
        for w in &self.in_flight {
            assert!(
                w.durable_upto < self.unsent_from,
                "RaftLog: in-flight write durable_upto {} not below unsent_from {}",
                w.durable_upto,
                self.unsent_from
            );
        }
        debug_assert!(
            self.unstable.windows(2).all(|p| p[0].term <= p[1].term),
            "RaftLog: unstable terms decrease"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::storage::MemStorage;
    use crate::types::EntryType;

    fn e(index: u64, term: u64) -> LogEntry {
        LogEntry {
            term: Term(term),
            index: LogIndex(index),
            entry_type: EntryType::Normal,
            payload: vec![index as u8; 10],
        }
    }

    /// Applies a Ready's write to storage the way the driver does.
    fn write(log: &mut RaftLog<MemStorage>, t: Option<LogIndex>, es: &[LogEntry]) {
        if let Some(t) = t {
            log.storage_mut().truncate_suffix(t);
        }
        log.storage_mut().append(es);
    }

    #[test]
    fn entries_span_storage_and_memory_and_respect_limits() {
        let mut s = MemStorage::default();
        s.append(&[e(1, 1), e(2, 1), e(3, 1)]);
        let mut log = RaftLog::new(s);
        log.append(&[e(4, 2), e(5, 2)]);
        let all = log.entries(LogIndex(1), LogIndex(6), 100, u64::MAX);
        assert_eq!(
            all.iter().map(|e| e.index.0).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(log.entries(LogIndex(2), LogIndex(6), 2, u64::MAX).len(), 2);
        // 10 bytes each: a 25-byte budget holds two entries, crossing the storage boundary.
        let two = log.entries(LogIndex(3), LogIndex(6), 100, 25);
        assert_eq!(two.iter().map(|e| e.index.0).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(log.entries(LogIndex(1), LogIndex(6), 100, 0).len(), 1);
        log.check_invariants();
    }

    #[test]
    fn truncation_of_a_durable_suffix_while_writes_are_in_flight() {
        let mut log = RaftLog::new(MemStorage::default());
        log.append(&[e(1, 1), e(2, 1), e(3, 1)]);
        let (_, t1, w1) = log.take_unsent();
        assert_eq!(t1, None);
        // A conflict replaces 2.. before the first write is reported durable.
        log.truncate_from(LogIndex(2));
        log.append(&[e(2, 2)]);
        let (_, t2, w2) = log.take_unsent();
        assert_eq!(t2, Some(LogIndex(2)));
        assert_eq!(w2, vec![e(2, 2)]);
        write(&mut log, t1, &w1);
        log.on_persisted((LogIndex(3), Term(1)));
        // Only index 1 of the first write is still part of the view.
        assert_eq!(log.persisted_index(), LogIndex(1));
        assert_eq!(log.term(LogIndex(2)), Some(Term(2)));
        assert_eq!(log.last_index(), LogIndex(2));
        log.check_invariants();
        write(&mut log, t2, &w2);
        log.on_persisted((LogIndex(2), Term(2)));
        assert_eq!(log.persisted_index(), LogIndex(2));
        assert_eq!(log.storage().entries, vec![e(1, 1), e(2, 2)]);
        log.check_invariants();
    }

    #[test]
    fn truncation_below_the_durable_prefix_reads_from_memory_until_written() {
        let mut s = MemStorage::default();
        s.append(&[e(1, 1), e(2, 1), e(3, 1)]);
        let mut log = RaftLog::new(s);
        log.truncate_from(LogIndex(2));
        log.append(&[e(2, 3)]);
        assert_eq!(log.persisted_index(), LogIndex(1));
        assert_eq!(log.term(LogIndex(2)), Some(Term(3)));
        assert_eq!(log.term(LogIndex(3)), None);
        let (_, t, w) = log.take_unsent();
        assert_eq!(t, Some(LogIndex(2)));
        write(&mut log, t, &w);
        log.on_persisted((LogIndex(2), Term(3)));
        assert_eq!(log.persisted_index(), LogIndex(2));
        log.check_invariants();
    }

    #[test]
    #[should_panic(expected = "on_persisted out of order")]
    fn on_persisted_out_of_order_panics() {
        let mut log = RaftLog::new(MemStorage::default());
        log.append(&[e(1, 1)]);
        let _ = log.take_unsent();
        log.append(&[e(2, 1)]);
        let _ = log.take_unsent();
        log.on_persisted((LogIndex(2), Term(1)));
    }

    #[test]
    fn first_index_of_term_scans_back_to_the_run_start() {
        let mut log = RaftLog::new(MemStorage::default());
        log.append(&[e(1, 1), e(2, 2), e(3, 2), e(4, 2), e(5, 3)]);
        assert_eq!(
            log.first_index_of_term_at(LogIndex(4), LogIndex(0)),
            LogIndex(2)
        );
        assert_eq!(
            log.first_index_of_term_at(LogIndex(4), LogIndex(3)),
            LogIndex(3)
        );
        assert_eq!(
            log.first_index_of_term_at(LogIndex(1), LogIndex(0)),
            LogIndex(1)
        );
    }
}
