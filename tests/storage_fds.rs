//! A sealed segment holds no file descriptor and no io_uring: a log of many segments must not run
//! into the descriptor limit. (Its own test binary, so no other test opens files meanwhile.)

mod storage_common;

use rust_raft_log::storage::{LogConfig, RaftLog};
use storage_common::*;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn sealed_segments_hold_no_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LogConfig::new(dir.path().join("node_1"));
    config.segment_size_bytes = 64 << 10;
    let before = open_fds();
    let mut log = RaftLog::open(config.clone()).unwrap();
    let all: Vec<_> = (1..=3000).map(|i| entry(i, 1, 400)).collect();
    for chunk in all.chunks(50) {
        log.append(chunk).unwrap();
    }
    let segments = log.segment_paths().len();
    assert!(segments >= 20, "only {segments} segments");
    let held = open_fds().saturating_sub(before);
    // LOCK, and the open segment's descriptor and ring (a ring may use more than one).
    assert!(held <= 6, "{held} descriptors held for {segments} segments");
    drop(log);
    // Reopening maps the sealed segments without keeping descriptors either.
    let log = RaftLog::open(config).unwrap();
    assert_log_holds(&log, &all);
    let held = open_fds().saturating_sub(before);
    assert!(held <= 6, "{held} descriptors held after reopen");
}
