//! Torn tails versus corruption, byte by byte (docs/FORMAT.md, "Recovery"), plus the table rows
//! for damaged sealed headers, base-index gaps and reads of damaged sealed frames.
//!
//! ```text
//!   segment_000001.log
//!   | header | batch 1..=40 (acknowledged) | batch 41..=44 (acknowledged) | entry 45 (last batch) | 0 0 0
//!                                                               ^ corrupt_* damages entry 44  ^ torn_* damages entry 45
//! ```
//! Damage to entry 45 (the last batch, which a crash may have cut short) must be cut: the log
//! reopens at 44 and says what it dropped. Damage to entry 44 is followed by a valid frame of a
//! later batch, so 44 was acknowledged: the log refuses to open and names file, offset and index.

mod storage_common;

use rust_raft_log::storage::file::SimFs;
use rust_raft_log::storage::format::SEGMENT_HEADER_SIZE;
use rust_raft_log::storage::{LogError, RaftLog};
use rust_raft_log::types::{LogEntry, LogIndex};
use storage_common::*;

const SEGMENT_BYTES: u64 = 64 << 10;

/// Writes the picture above; returns the disk, the entries, the segment path and the byte range
/// of entries 44 and 45.
fn build() -> (
    SimFs,
    Vec<LogEntry>,
    std::path::PathBuf,
    [std::ops::Range<usize>; 2],
) {
    let fs = SimFs::new();
    let mut log = open_sim(&fs, SEGMENT_BYTES);
    let all: Vec<LogEntry> = (1..=45)
        .map(|i| entry(i, 1 + i / 20, 50 + i as usize))
        .collect();
    log.append(&all[..40]).unwrap();
    log.append(&all[40..44]).unwrap();
    log.append(&all[44..]).unwrap();
    let path = log.segment_paths()[0].clone();
    drop(log);
    // Find the frames by walking the length words.
    let bytes = fs.read_file(&path).unwrap();
    let mut pos = SEGMENT_HEADER_SIZE;
    let mut starts = Vec::new();
    for _ in 0..45 {
        starts.push(pos);
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        pos += len.div_ceil(8) * 8;
    }
    let ranges = [starts[43]..starts[44], starts[44]..pos];
    (fs, all, path, ranges)
}

fn copy_fs(fs: &SimFs) -> SimFs {
    let copy = SimFs::new();
    use rust_raft_log::storage::file::Vfs;
    for p in fs.paths() {
        copy.create_dir_all(p.parent().unwrap()).unwrap();
        let bytes = fs.read_file(&p).unwrap();
        copy.create_zeroed(&p, bytes.len() as u64).unwrap();
        copy.edit_file(&p, |b| b.copy_from_slice(&bytes));
    }
    copy
}

fn check_torn(fs: &SimFs, all: &[LogEntry], what: &str, expect_report: bool) {
    let mut log = RaftLog::open_with(small_config(sim_dir()), std::sync::Arc::new(fs.clone()))
        .unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
    assert_eq!(log.last_index(), LogIndex(44), "{what}");
    assert_log_holds(&log, &all[..44]);
    let report = log.recovery_report().torn_tail.clone();
    assert_eq!(report.is_some(), expect_report, "{what}: report {report:?}");
    // The cut range was zeroed: a new entry 45 (another term) appends and survives a reopen.
    let new = entry(45, 9, 80);
    log.append(std::slice::from_ref(&new)).unwrap();
    drop(log);
    let log = RaftLog::open_with(small_config(sim_dir()), std::sync::Arc::new(fs.clone()))
        .unwrap_or_else(|e| panic!("{what}: second open failed: {e}"));
    assert_eq!(log.last_index(), LogIndex(45), "{what}");
    assert_eq!(
        log.entry(LogIndex(45)).unwrap().to_owned_entry(),
        new,
        "{what}"
    );
    assert!(log.recovery_report().torn_tail.is_none(), "{what}");
}

#[test]
fn torn_tail_cut_at_every_byte_of_the_last_entry_is_cut_and_reported() {
    let (fs, all, path, [_, last]) = build();
    for cut in last.clone() {
        let fs = copy_fs(&fs);
        fs.edit_file(&path, |b| b.truncate(cut));
        // Cutting exactly at the frame's start leaves a clean end: nothing to report.
        check_torn(&fs, &all, &format!("cut at {cut}"), cut != last.start);
    }
}

#[test]
fn torn_tail_flip_of_each_byte_of_the_last_entry_is_cut_and_reported() {
    let (fs, all, path, [_, last]) = build();
    for at in last {
        for mask in [0x01u8, 0xff] {
            let fs = copy_fs(&fs);
            fs.edit_file(&path, |b| b[at] ^= mask);
            check_torn(&fs, &all, &format!("flip {mask:#x} at {at}"), true);
        }
    }
}

#[test]
fn corrupt_flip_of_each_byte_of_an_acknowledged_entry_refuses_to_open() {
    let (fs, _, path, [acked, _]) = build();
    for at in acked.clone() {
        let fs = copy_fs(&fs);
        fs.edit_file(&path, |b| b[at] ^= 0x01);
        match RaftLog::open_with(small_config(sim_dir()), std::sync::Arc::new(fs.clone())) {
            Err(LogError::Corrupt {
                file,
                offset,
                index,
                reason,
            }) => {
                assert_eq!(file, path, "flip at {at}");
                assert_eq!(offset, acked.start as u64, "flip at {at}: {reason}");
                assert_eq!(index, LogIndex(44), "flip at {at}: {reason}");
                let msg = LogError::Corrupt {
                    file,
                    offset,
                    index,
                    reason,
                }
                .to_string();
                assert!(msg.contains("segdump"), "{msg}");
            }
            Err(e) => panic!("flip at {at}: wrong error {e}"),
            Ok(log) => panic!(
                "flip at {at}: opened with last index {} instead of refusing",
                log.last_index()
            ),
        }
    }
}

#[test]
fn damaged_sealed_segment_header_is_corruption() {
    let fs = SimFs::new();
    let mut log = open_sim(&fs, SEGMENT_BYTES);
    let all: Vec<LogEntry> = (1..=300).map(|i| entry(i, 1, 400)).collect();
    log.append(&all).unwrap();
    let first = log.segment_paths()[0].clone();
    assert!(log.segment_paths().len() > 1);
    drop(log);
    fs.flip_bit(&first, 20, 3);
    match RaftLog::open_with(small_config(sim_dir()), std::sync::Arc::new(fs.clone())) {
        Err(LogError::Corrupt { file, offset, .. }) => {
            assert_eq!(file, first);
            assert_eq!(offset, 0);
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened a log with a damaged sealed header"),
    }
}

#[test]
fn reads_verify_the_crc_of_sealed_segments_which_open_does_not_scan() {
    let fs = SimFs::new();
    let mut log = open_sim(&fs, SEGMENT_BYTES);
    let all: Vec<LogEntry> = (1..=300).map(|i| entry(i, 1, 400)).collect();
    log.append(&all).unwrap();
    let first = log.segment_paths()[0].clone();
    assert!(log.segment_paths().len() > 1);
    drop(log);
    // Entry 3 is the third frame of the first (sealed) segment: damage its payload at rest.
    let frame_bytes = 440; // 40 + 400, already a multiple of 8
    let at = (SEGMENT_HEADER_SIZE + 2 * frame_bytes + 100) as u64;
    fs.flip_bit(&first, at, 0);
    let log = RaftLog::open_with(small_config(sim_dir()), std::sync::Arc::new(fs.clone()))
        .expect("open trusts sealed segments by their header");
    match log.entry(LogIndex(3)) {
        Err(LogError::Corrupt {
            file,
            offset,
            index,
            ..
        }) => {
            assert_eq!(file, first);
            assert_eq!(offset, (SEGMENT_HEADER_SIZE + 2 * frame_bytes) as u64);
            assert_eq!(index, LogIndex(3));
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(log.entry(LogIndex(4)).unwrap().to_owned_entry(), all[3]);
}

#[test]
fn a_missing_middle_segment_is_a_base_index_gap() {
    let fs = SimFs::new();
    let mut log = open_sim(&fs, SEGMENT_BYTES);
    let all: Vec<LogEntry> = (1..=500).map(|i| entry(i, 1, 400)).collect();
    log.append(&all).unwrap();
    let paths = log.segment_paths();
    assert!(paths.len() > 2);
    drop(log);
    use rust_raft_log::storage::file::Vfs;
    fs.remove(&paths[1]).unwrap();
    match RaftLog::open_with(small_config(sim_dir()), std::sync::Arc::new(fs.clone())) {
        Err(LogError::Corrupt { file, reason, .. }) => {
            assert_eq!(file, paths[2], "{reason}");
            assert!(reason.contains("does not follow"), "{reason}");
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened a log with a gap"),
    }
}

#[test]
fn an_interrupted_truncation_is_finished_by_recovery() {
    let fs = SimFs::new();
    let mut log = open_sim(&fs, SEGMENT_BYTES);
    let all: Vec<LogEntry> = (1..=60).map(|i| entry(i, 1, 100)).collect();
    log.append(&all).unwrap();
    // The dirty header lands (sync 1 succeeds); zeroing the cut range fails, then the power goes
    // and only part of the zeros survive.
    fs.fail_sync_after(1, 1);
    assert!(log.truncate_suffix(LogIndex(30)).is_err());
    drop(log);
    fs.power_loss_prefix(0, Some(1000));
    let log = RaftLog::open_with(small_config(sim_dir()), std::sync::Arc::new(fs.clone())).unwrap();
    assert!(log.recovery_report().finished_truncation.is_some());
    assert_eq!(log.last_index(), LogIndex(29));
    assert_log_holds(&log, &all[..29]);
    drop(log);
    let log = RaftLog::open_with(small_config(sim_dir()), std::sync::Arc::new(fs.clone())).unwrap();
    assert!(
        log.recovery_report().finished_truncation.is_none(),
        "the header was cleaned"
    );
    assert_eq!(log.last_index(), LogIndex(29));
}

#[test]
fn a_reset_interrupted_before_its_rename_is_finished_by_recovery() {
    use rust_raft_log::storage::file::Vfs;
    use rust_raft_log::storage::format::SegmentHeader;
    use rust_raft_log::storage::log::PREPARED_SEGMENT_NAME;
    let fs = SimFs::new();
    let mut log = open_sim(&fs, SEGMENT_BYTES);
    let all: Vec<LogEntry> = (1..=300).map(|i| entry(i, 1, 400)).collect();
    log.append(&all).unwrap();
    let paths = log.segment_paths();
    drop(log);
    // What reset(1000, term 7) leaves after step 2: the prepared file has the new header, every
    // old segment is gone, the rename has not happened.
    let prep = sim_dir().join(PREPARED_SEGMENT_NAME);
    fs.create_zeroed(&prep, SEGMENT_BYTES).unwrap();
    let header = SegmentHeader::new_empty(LogIndex(1001), rust_raft_log::types::Term(7), 99);
    fs.edit_file(&prep, |b| b[..64].copy_from_slice(&header.encode()));
    for p in &paths {
        fs.remove(p).unwrap();
    }
    let mut log = open_sim(&fs, SEGMENT_BYTES);
    assert_eq!(log.first_index(), LogIndex(1001));
    assert_eq!(log.last_index(), LogIndex(1000));
    assert_eq!(
        log.term(LogIndex(1000)).unwrap(),
        rust_raft_log::types::Term(7)
    );
    log.append(&[entry(1001, 7, 10)]).unwrap();
    assert_eq!(
        log.segment_paths(),
        vec![sim_dir().join("segment_001001.log")]
    );
}
