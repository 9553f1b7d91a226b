//! Property test: `RaftLog` against an in-memory model (`MemStorage`, the core's reference
//! storage) under random appends, truncations, compactions, resets (snapshot installs) and
//! reopens, with the default pool of recycled segments (compaction renames freed segments into
//! the pool and rotation reuses them). After every step the
//! log's view through the `Storage` trait equals the model's.
//!
//! A reopen may lower `first_index` (compaction deletes whole segments only; the entries of a
//! partly compacted segment come back and are still correct), so the comparison covers the
//! model's range and checks the log's `first_index` never exceeds the model's.
//! proptest prints the minimal failing operation sequence; `MODEL_CASES=<n>` runs more cases.

mod storage_common;

use std::sync::Arc;

use proptest::prelude::*;
use rust_raft_log::raft::{MemStorage, Storage};
use rust_raft_log::storage::file::SimFs;
use rust_raft_log::storage::{LogConfig, RaftLog};
use rust_raft_log::types::{LogIndex, Term};
use storage_common::*;

#[derive(Clone, Debug)]
enum Op {
    Append { n: u64, size: usize, new_term: bool },
    Truncate { back: u64 },
    Compact { fwd: u64 },
    Reopen,
    Reset { gap: u64 },
    Read { lo: u64, len: u64, max_bytes: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u64..24, 0usize..3000, proptest::bool::weighted(0.1))
            .prop_map(|(n, size, new_term)| Op::Append { n, size, new_term }),
        1 => (0u64..60).prop_map(|back| Op::Truncate { back }),
        1 => (0u64..120).prop_map(|fwd| Op::Compact { fwd }),
        1 => Just(Op::Reopen),
        1 => (0u64..30).prop_map(|gap| Op::Reset { gap }),
        2 => (0u64..200, 0u64..30, 0u64..20_000)
            .prop_map(|(lo, len, max_bytes)| Op::Read { lo, len, max_bytes }),
    ]
}

fn compare(log: &RaftLog, model: &MemStorage) {
    log.check_invariants();
    assert!(
        log.first_index() <= model.first_index(),
        "log first {} > model first {}",
        log.first_index(),
        model.first_index()
    );
    assert_eq!(Storage::last_index(log), model.last_index());
    let lo = model.first_index().prev();
    for i in lo.0..=model.last_index().0 {
        assert_eq!(
            Storage::term(log, LogIndex(i)),
            Storage::term(model, LogIndex(i)),
            "term({i})"
        );
    }
    let all = Storage::entries(
        log,
        model.first_index(),
        model.last_index().next(),
        u64::MAX,
    );
    assert_eq!(all, model.entries);
}

fn run(ops: Vec<Op>, open: &dyn Fn() -> RaftLog) {
    let mut log = open();
    let mut model = MemStorage::default();
    let mut term = 1u64;
    for op in ops {
        match op {
            Op::Append { n, size, new_term } => {
                if new_term {
                    term += 1;
                }
                let last = model.last_index().0;
                let batch: Vec<_> = (last + 1..=last + n)
                    .map(|i| entry(i, term, (size + i as usize * 17) % 3000))
                    .collect();
                log.append(&batch).unwrap();
                model.append(&batch);
            }
            Op::Truncate { back } => {
                let from = LogIndex(model.last_index().0.saturating_sub(back) + 1)
                    .max(model.first_index());
                log.truncate_suffix(from).unwrap();
                model.truncate_suffix(from);
                term += 1;
            }
            Op::Compact { fwd } => {
                let upto = LogIndex(model.first_index().0 + fwd).min(model.last_index());
                if upto >= model.first_index() {
                    let t = Storage::term(&model, upto).unwrap();
                    log.compact_prefix(upto).unwrap();
                    let drop_n = (upto.0 - model.snapshot_index.0) as usize;
                    model.entries.drain(..drop_n);
                    model.snapshot_index = upto;
                    model.snapshot_term = t;
                }
            }
            Op::Reset { gap } => {
                // A snapshot at `index` replaces the log (Raft §7).
                term += 1;
                let index = LogIndex(model.last_index().0.saturating_sub(10) + gap);
                log.reset(index, Term(term)).unwrap();
                model.entries.clear();
                model.snapshot_index = index;
                model.snapshot_term = Term(term);
            }
            Op::Reopen => {
                drop(log);
                log = open();
            }
            Op::Read { lo, len, max_bytes } => {
                let first = model.first_index().0;
                let last = model.last_index().0;
                if last >= first {
                    let lo = first + lo % (last - first + 1);
                    let hi = (lo + len).min(last + 1);
                    assert_eq!(
                        Storage::entries(&log, LogIndex(lo), LogIndex(hi), max_bytes),
                        model.entries(LogIndex(lo), LogIndex(hi), max_bytes),
                        "entries({lo}..{hi}, {max_bytes})"
                    );
                }
            }
        }
        compare(&log, &model);
    }
}

/// `MODEL_CASES` overrides the number of cases (a longer run than CI's).
fn cases(default: u32) -> u32 {
    std::env::var("MODEL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(200), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn log_equals_model_on_the_simulated_disk(ops in proptest::collection::vec(op(), 1..60)) {
        let fs = SimFs::new();
        run(ops, &|| open_sim(&fs, 64 << 10));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(24), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn log_equals_model_on_the_real_disk(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_1");
        run(ops, &|| {
            let mut c = LogConfig::new(&path);
            c.segment_size_bytes = 64 << 10;
            RaftLog::open_with(c, Arc::new(rust_raft_log::storage::uring::UringVfs)).unwrap()
        });
    }
}
