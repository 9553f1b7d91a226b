//! Behaviour of `RaftLog` on the real disk (io_uring + mmap) and on the simulated
//! disk: appends and reads across rotations and reopens, truncation, compaction, limits, and the
//! poisoning that follows a failed sync.

mod storage_common;

use std::sync::Arc;

use rust_raft_log::raft::Storage;
use rust_raft_log::storage::file::SimFs;
use rust_raft_log::storage::{LogConfig, LogError, RaftLog};
use rust_raft_log::types::{LogIndex, NodeId, Term};
use storage_common::*;

fn real_config(dir: &std::path::Path) -> LogConfig {
    let mut c = LogConfig::for_node(dir, NodeId(1));
    c.segment_size_bytes = 64 << 10;
    c
}

#[test]
fn appends_survive_reopen_across_segment_rotations_on_the_real_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    {
        let mut log = RaftLog::open(real_config(dir.path())).unwrap();
        assert_eq!(log.first_index(), LogIndex(1));
        assert_eq!(log.last_index(), LogIndex(0));
        let mut i = 1;
        while i <= 600 {
            let batch: Vec<_> = (i..i + 7)
                .map(|j| entry(j, 1 + j / 100, (j * 13 % 500) as usize))
                .collect();
            log.append(&batch).unwrap();
            expected.extend(batch);
            i += 7;
        }
        log.check_invariants();
        assert!(
            log.segment_paths().len() > 2,
            "rotation happened: {:?}",
            log.segment_paths()
        );
        assert_log_holds(&log, &expected);
    }
    let names: Vec<String> = std::fs::read_dir(dir.path().join("node_1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&"segment_000001.log".to_string()),
        "{names:?}"
    );
    let log = RaftLog::open(real_config(dir.path())).unwrap();
    log.check_invariants();
    assert_eq!(log.last_index(), LogIndex(expected.len() as u64));
    assert_eq!(log.last_term(), expected.last().unwrap().term);
    assert_log_holds(&log, &expected);
    let some = log.entries(LogIndex(10)..LogIndex(400), 2000).unwrap();
    assert!(!some.is_empty() && some.len() < 390);
    assert_eq!(some[0].index, LogIndex(10));
    // The Storage trait view.
    assert_eq!(Storage::term(&log, LogIndex(0)), Some(Term(0)));
    assert_eq!(
        Storage::entries(&log, LogIndex(5), LogIndex(8), u64::MAX).len(),
        3
    );
}

#[test]
fn truncate_suffix_is_durable_and_crosses_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RaftLog::open(real_config(dir.path())).unwrap();
    let batch: Vec<_> = (1..=400).map(|j| entry(j, 1, 300)).collect();
    log.append(&batch).unwrap();
    let segments_before = log.segment_paths().len();
    log.truncate_suffix(LogIndex(50)).unwrap();
    assert_eq!(log.last_index(), LogIndex(49));
    assert!(log.segment_paths().len() < segments_before);
    log.check_invariants();
    // Append a different history (a new leader's term) over the cut.
    let new: Vec<_> = (50..=80).map(|j| entry(j, 2, 100)).collect();
    log.append(&new).unwrap();
    drop(log);
    let log = RaftLog::open(real_config(dir.path())).unwrap();
    assert_eq!(log.last_index(), LogIndex(80));
    assert_log_holds(&log, &batch[..49]);
    assert_log_holds(&log, &new);
    assert!(matches!(
        log.entry(LogIndex(81)),
        Err(LogError::OutOfRange { .. })
    ));
}

#[test]
fn compact_prefix_deletes_whole_segments_and_remembers_the_compacted_term() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RaftLog::open(real_config(dir.path())).unwrap();
    let batch: Vec<_> = (1..=600).map(|j| entry(j, j / 10, 300)).collect();
    log.append(&batch).unwrap();
    let n = log.segment_paths().len();
    log.compact_prefix(LogIndex(450)).unwrap();
    assert_eq!(log.first_index(), LogIndex(451));
    assert_eq!(log.term(LogIndex(450)).unwrap(), Term(45));
    assert_eq!(Storage::term(&log, LogIndex(450)), Some(Term(45)));
    assert_eq!(Storage::term(&log, LogIndex(449)), None);
    assert!(log.segment_paths().len() < n);
    assert!(matches!(
        log.entry(LogIndex(450)),
        Err(LogError::OutOfRange { .. })
    ));
    drop(log);
    let log = RaftLog::open(real_config(dir.path())).unwrap();
    let first = log.first_index();
    assert!(
        first > LogIndex(1) && first <= LogIndex(451),
        "first {first}"
    );
    assert_eq!(
        log.term(first.prev()).unwrap(),
        Term(first.prev().0 / 10),
        "the first segment's header remembers the term before it"
    );
    assert_log_holds(&log, &batch[first.0 as usize - 1..]);
}

#[test]
fn limits_and_misuse_are_errors_that_leave_the_log_unchanged() {
    let fs = SimFs::new();
    let mut log = open_sim(&fs, 64 << 10);
    let max = log.config().entry_payload_max_bytes();
    assert!(matches!(
        log.append(&[entry(1, 1, max + 1)]),
        Err(LogError::EntryTooLarge { .. })
    ));
    // The largest entry fits an empty segment.
    log.append(&[entry(1, 1, max)]).unwrap();
    assert!(matches!(
        log.append(&[entry(3, 1, 1)]),
        Err(LogError::NotContiguous { .. })
    ));
    assert!(matches!(
        log.append(&[entry(2, 0, 1)]),
        Err(LogError::TermRegression { .. })
    ));
    assert!(!log.is_poisoned());
    log.append(&[entry(2, 1, 10)]).unwrap();
    assert_eq!(log.last_index(), LogIndex(2));
    let mut bad = small_config(sim_dir());
    bad.segment_size_bytes = 1000;
    assert!(matches!(
        RaftLog::open_with(bad, Arc::new(fs.clone())),
        Err(LogError::Config(_))
    ));
}

#[test]
fn an_injected_sync_failure_poisons_the_log() {
    let fs = SimFs::new();
    let mut log = open_sim(&fs, 64 << 10);
    log.append(&[entry(1, 1, 10)]).unwrap();
    fs.fail_next_syncs(1);
    let err = log.append(&[entry(2, 1, 10)]).unwrap_err();
    assert!(matches!(err, LogError::Io { .. }), "{err}");
    assert!(log.is_poisoned());
    // The failed entry is not visible, and nothing more is accepted, even though the next sync
    // would succeed: no retry after a failed fdatasync.
    assert_eq!(log.last_index(), LogIndex(1));
    assert!(matches!(
        log.append(&[entry(2, 1, 10)]),
        Err(LogError::Poisoned { .. })
    ));
    assert!(matches!(
        log.truncate_suffix(LogIndex(1)),
        Err(LogError::Poisoned { .. })
    ));
    assert!(matches!(
        log.compact_prefix(LogIndex(1)),
        Err(LogError::Poisoned { .. })
    ));
    // Reads of durable entries keep working.
    assert_eq!(
        log.entry(LogIndex(1)).unwrap().to_owned_entry(),
        entry(1, 1, 10)
    );
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = RaftLog::open(real_config(dir.path())).unwrap();
    assert!(matches!(
        RaftLog::open(real_config(dir.path())),
        Err(LogError::Locked { .. })
    ));
    drop(log);
    RaftLog::open(real_config(dir.path())).unwrap();
}

/// A process that spawns children while it closes and reopens a log (the node's tests, segdump's
/// tests, an embedder running hooks): between `fork` and `exec` a child holds a copy of every
/// descriptor, the lock file's included, and with it the `flock`. A reopen in that window must
/// wait the window out, not fail with `Locked`.
#[test]
fn reopening_while_the_process_spawns_children_is_not_refused() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    drop(RaftLog::open(real_config(dir.path())).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let spawners: Vec<_> = (0..2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::process::Command::new("true").status();
                }
            })
        })
        .collect();
    let mut refused = 0;
    for _ in 0..300 {
        match RaftLog::open(real_config(dir.path())) {
            Ok(log) => drop(log),
            Err(LogError::Locked { .. }) => refused += 1,
            Err(e) => panic!("reopen failed: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for s in spawners {
        s.join().unwrap();
    }
    assert_eq!(
        refused, 0,
        "{refused} of 300 reopens were refused as Locked"
    );
}

#[test]
fn reset_installs_a_snapshot_point_durably() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RaftLog::open(real_config(dir.path())).unwrap();
    let old: Vec<_> = (1..=300).map(|j| entry(j, 1, 300)).collect();
    log.append(&old).unwrap();
    // A snapshot beyond the log (and contradicting it) replaces it.
    log.reset(LogIndex(1000), Term(5)).unwrap();
    assert_eq!(log.first_index(), LogIndex(1001));
    assert_eq!(log.last_index(), LogIndex(1000));
    assert_eq!(log.term(LogIndex(1000)).unwrap(), Term(5));
    assert_eq!(log.segment_paths().len(), 1);
    let new: Vec<_> = (1001..=1010).map(|j| entry(j, 5, 100)).collect();
    log.append(&new).unwrap();
    drop(log);
    let log = RaftLog::open(real_config(dir.path())).unwrap();
    assert_eq!(log.first_index(), LogIndex(1001));
    assert_eq!(Storage::term(&log, LogIndex(1000)), Some(Term(5)));
    assert_log_holds(&log, &new);
}
