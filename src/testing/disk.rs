//! The simulated disk of one node: a FIFO of in-flight `Ready` writes with latency, and what a
//! crash leaves behind.
//!
//! Each `Ready` the core hands out becomes one [`PendingWrite`] (truncation, entries, hard state,
//! and the messages that may only leave once it is durable). Writes complete strictly in the order
//! they were submitted — a later write never completes before an earlier one, as the driver
//! contract requires — so the completion time of each is `max(previous completion, submit time +
//! latency)`.
//!
//! A crash ([`SimDisk::crash`]) discards every in-flight write, except that the oldest one may have
//! been partly persisted: a random *prefix* of its operations (the truncation first, then its
//! entries in order, then the hard state) survives. Nothing later survives and nothing is
//! reordered, which is the torn-write model the storage engine guarantees.

use std::collections::VecDeque;

use crate::raft::{Envelope, HardState};
use crate::testing::rng::SimRng;
use crate::types::{LogEntry, LogIndex, Term};

/// Write latency, in simulated microseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskConfig {
    /// Latency of a write that needs no fdatasync.
    pub write_us_min: u64,
    pub write_us_max: u64,
    /// Extra latency when the write must be synced.
    pub sync_us_min: u64,
    pub sync_us_max: u64,
}

impl DiskConfig {
    /// A disk that completes every write immediately (in order).
    pub fn instant() -> DiskConfig {
        DiskConfig {
            write_us_min: 0,
            write_us_max: 0,
            sync_us_min: 0,
            sync_us_max: 0,
        }
    }
}

/// One `Ready`'s writes, waiting for the simulated disk.
#[derive(Clone, Debug)]
pub struct PendingWrite {
    pub id: u64,
    pub complete_at_us: u64,
    pub truncate_from: Option<LogIndex>,
    pub entries: Vec<LogEntry>,
    pub hard_state: Option<HardState>,
    pub persisted_messages: Vec<Envelope>,
    pub token: Option<(LogIndex, Term)>,
}

/// What survives of the oldest in-flight write at a crash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornWrite {
    pub truncate_from: Option<LogIndex>,
    pub entries: Vec<LogEntry>,
    pub hard_state: Option<HardState>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub writes: u64,
    pub lost_at_crash: u64,
    pub torn_at_crash: u64,
}

/// The in-flight writes of one node.
#[derive(Clone, Debug)]
pub struct SimDisk {
    pub config: DiskConfig,
    queue: VecDeque<PendingWrite>,
    last_complete_at_us: u64,
    next_id: u64,
    pub stats: DiskStats,
}

impl SimDisk {
    pub fn new(config: DiskConfig) -> SimDisk {
        SimDisk {
            config,
            queue: VecDeque::new(),
            last_complete_at_us: 0,
            next_id: 0,
            stats: DiskStats::default(),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Queues a write submitted at `now_us`; returns its id and completion time. A write with
    /// nothing to persist still queues (with no latency of its own) so that its persisted messages
    /// wait for the writes before it.
    #[allow(clippy::too_many_arguments)]
    pub fn submit(
        &mut self,
        now_us: u64,
        rng: &mut SimRng,
        truncate_from: Option<LogIndex>,
        entries: Vec<LogEntry>,
        hard_state: Option<HardState>,
        must_sync: bool,
        persisted_messages: Vec<Envelope>,
        token: Option<(LogIndex, Term)>,
    ) -> (u64, u64) {
        let has_data = truncate_from.is_some() || !entries.is_empty() || hard_state.is_some();
        let mut latency = 0;
        if has_data {
            latency += rng.range(self.config.write_us_min, self.config.write_us_max);
        }
        if must_sync {
            latency += rng.range(self.config.sync_us_min, self.config.sync_us_max);
        }
        let complete_at_us = self.last_complete_at_us.max(now_us + latency);
        self.last_complete_at_us = complete_at_us;
        let id = self.next_id;
        self.next_id += 1;
        self.stats.writes += 1;
        self.queue.push_back(PendingWrite {
            id,
            complete_at_us,
            truncate_from,
            entries,
            hard_state,
            persisted_messages,
            token,
        });
        (id, complete_at_us)
    }

    /// The write `id` is due: removes and returns it. Writes complete in submission order, so `id`
    /// must be the oldest (a programmer error otherwise).
    pub fn complete(&mut self, id: u64) -> PendingWrite {
        let front = self.queue.pop_front();
        match front {
            Some(w) if w.id == id => w,
            other => panic!(
                "SimDisk::complete({id}) out of order: oldest in flight is {:?}",
                other.map(|w| w.id)
            ),
        }
    }

    /// The node crashed: drops every in-flight write and returns what survives of the oldest one
    /// (a random prefix of its operations, possibly nothing, possibly all of it).
    pub fn crash(&mut self, rng: &mut SimRng) -> Option<TornWrite> {
        let oldest = self.queue.pop_front();
        self.stats.lost_at_crash += self.queue.len() as u64;
        self.queue.clear();
        let w = oldest?;
        let ops = usize::from(w.truncate_from.is_some())
            + w.entries.len()
            + usize::from(w.hard_state.is_some());
        if ops == 0 {
            return None;
        }
        let kept = rng.index(ops + 1);
        if kept == 0 {
            self.stats.lost_at_crash += 1;
            return None;
        }
        self.stats.torn_at_crash += 1;
        let mut left = kept;
        let truncate_from = match w.truncate_from {
            Some(t) => {
                left -= 1;
                Some(t)
            }
            None => None,
        };
        let n_entries = left.min(w.entries.len());
        left -= n_entries;
        let entries = w.entries[..n_entries].to_vec();
        let hard_state = if left > 0 { w.hard_state } else { None };
        Some(TornWrite {
            truncate_from,
            entries,
            hard_state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryType;

    fn entry(index: u64, term: u64) -> LogEntry {
        LogEntry {
            term: Term(term),
            index: LogIndex(index),
            entry_type: EntryType::Normal,
            payload: vec![index as u8],
        }
    }

    fn disk() -> SimDisk {
        SimDisk::new(DiskConfig {
            write_us_min: 100,
            write_us_max: 5_000,
            sync_us_min: 0,
            sync_us_max: 1_000,
        })
    }

    #[test]
    fn writes_complete_in_submission_order_even_when_a_later_one_is_faster() {
        let mut d = disk();
        let mut rng = SimRng::new(11);
        let mut last = 0;
        for i in 0..200u64 {
            let (id, at) = d.submit(
                i * 10,
                &mut rng,
                None,
                vec![entry(i + 1, 1)],
                None,
                true,
                Vec::new(),
                None,
            );
            assert_eq!(id, i);
            assert!(
                at >= last,
                "write {id} completes at {at} before its predecessor at {last}"
            );
            assert!(at >= i * 10 + 100);
            last = at;
        }
        for i in 0..200u64 {
            assert_eq!(d.complete(i).id, i);
        }
    }

    #[test]
    #[should_panic(expected = "out of order")]
    fn completing_out_of_order_is_a_programmer_error() {
        let mut d = disk();
        let mut rng = SimRng::new(1);
        d.submit(
            0,
            &mut rng,
            None,
            vec![entry(1, 1)],
            None,
            false,
            Vec::new(),
            None,
        );
        d.submit(
            0,
            &mut rng,
            None,
            vec![entry(2, 1)],
            None,
            false,
            Vec::new(),
            None,
        );
        d.complete(1);
    }

    #[test]
    fn empty_write_still_waits_for_the_one_before() {
        let mut d = disk();
        let mut rng = SimRng::new(2);
        let (_, first) = d.submit(
            0,
            &mut rng,
            None,
            vec![entry(1, 1)],
            None,
            true,
            Vec::new(),
            None,
        );
        let (_, second) = d.submit(1, &mut rng, None, Vec::new(), None, false, Vec::new(), None);
        assert!(second >= first);
    }

    #[test]
    fn crash_keeps_only_a_prefix_of_the_oldest_write() {
        let hs = HardState {
            term: Term(3),
            vote: None,
            commit: LogIndex(0),
        };
        let mut seen_lengths = std::collections::BTreeSet::new();
        let mut seen_hard_state = false;
        for seed in 0..500 {
            let mut d = disk();
            let mut rng = SimRng::new(seed);
            let entries: Vec<LogEntry> = (5..10).map(|i| entry(i, 3)).collect();
            d.submit(
                0,
                &mut rng,
                Some(LogIndex(5)),
                entries.clone(),
                Some(hs),
                true,
                Vec::new(),
                None,
            );
            d.submit(
                0,
                &mut rng,
                None,
                vec![entry(10, 3)],
                None,
                true,
                Vec::new(),
                None,
            );
            match d.crash(&mut rng) {
                None => {}
                Some(t) => {
                    assert_eq!(t.truncate_from, Some(LogIndex(5)), "truncation comes first");
                    assert_eq!(
                        t.entries[..],
                        entries[..t.entries.len()],
                        "a prefix, in order"
                    );
                    if t.hard_state.is_some() {
                        assert_eq!(
                            t.entries.len(),
                            entries.len(),
                            "hard state only after all entries"
                        );
                        seen_hard_state = true;
                    }
                    seen_lengths.insert(t.entries.len());
                }
            }
            assert_eq!(d.in_flight(), 0, "the second write never survives");
        }
        assert_eq!(
            seen_lengths.len(),
            6,
            "every prefix length occurs: {seen_lengths:?}"
        );
        assert!(seen_hard_state);
    }
}
