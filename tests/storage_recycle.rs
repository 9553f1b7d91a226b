//! Recycling of compacted segment files (docs/FORMAT.md, "Recycling").
//!
//! ```text
//!   append until 4 segments -> compact_prefix: 2 sealed segments go to the pool (renamed)
//!   -> append until rotation: the next segment is a pool file with a new header
//!      (fresh salt, new base index, recycled flag) -> its old frames are still on disk
//!   -> reopen: the old frames are the end of the log, never entries, never "damage"
//! ```
//! The random workloads (tests/storage_model.rs, tests/storage_power_loss.rs) recycle too, with
//! the default pool size; these tests pin down the cases one by one.

mod storage_common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rust_raft_log::storage::file::SimFs;
use rust_raft_log::storage::format::{decode_frame, SegmentHeader, SEGMENT_HEADER_SIZE};
use rust_raft_log::storage::segment::{scan_segment, ProblemKind};
use rust_raft_log::storage::{LogConfig, LogError, RaftLog};
use rust_raft_log::types::{LogEntry, LogIndex};
use storage_common::*;

const SEGMENT_BYTES: u64 = 64 << 10;
const ENTRY_BYTES: usize = 1000;

fn open(fs: &SimFs) -> RaftLog {
    open_sim(fs, SEGMENT_BYTES)
}

/// Appends entries of `ENTRY_BYTES` one batch of `n` at a time until the log has `segments`
/// segments; returns what it appended.
fn append_until_segments(log: &mut RaftLog, segments: usize, n: u64, term: u64) -> Vec<LogEntry> {
    let mut all = Vec::new();
    while log.segment_paths().len() < segments {
        let last = log.last_index().0;
        let batch: Vec<LogEntry> = (last + 1..=last + n)
            .map(|i| entry(i, term, ENTRY_BYTES))
            .collect();
        log.append(&batch).unwrap();
        all.extend(batch);
    }
    all
}

fn header_of(fs: &SimFs, path: &Path) -> SegmentHeader {
    let bytes = fs.read_file(path).unwrap();
    SegmentHeader::decode(&bytes).unwrap()
}

/// Fills a log to 4 segments, compacts the first two into the pool and appends until the next
/// rotation takes a pool file. Returns the log, the recycled segment's path, and that file's
/// bytes and header as they were in the pool (its previous life).
fn recycle_one(fs: &SimFs) -> (RaftLog, PathBuf, Vec<u8>, SegmentHeader, Vec<LogEntry>) {
    let mut log = open(fs);
    let mut written = append_until_segments(&mut log, 4, 5, 1);
    let second = log.segment_paths()[1].clone();
    let upto = header_of(fs, &second).last_index();
    log.compact_prefix(upto).unwrap();
    assert_eq!(
        log.segment_paths().len(),
        2,
        "two sealed segments compacted"
    );
    let pool = log.pool_paths();
    assert_eq!(pool.len(), 2, "both went to the pool (default size 2)");
    let old_bytes = fs.read_file(&pool[0]).unwrap();
    let old_header = SegmentHeader::decode(&old_bytes).unwrap();
    assert!(old_header.entry_count > 10);
    written.extend(append_until_segments(&mut log, 3, 1, 2));
    assert_eq!(log.pool_paths().len(), 1, "the rotation took a pool file");
    let recycled = log.segment_paths()[2].clone();
    written.retain(|e| e.index > upto);
    (log, recycled, old_bytes, old_header, written)
}

#[test]
fn a_recycled_segments_old_frames_are_never_read_as_entries() {
    let fs = SimFs::new();
    let (log, recycled, old_bytes, old_header, written) = recycle_one(&fs);
    let header = header_of(&fs, &recycled);
    assert!(header.recycled, "the new header carries the recycled flag");
    assert_ne!(
        header.salt, old_header.salt,
        "a recycled file gets a fresh salt"
    );
    assert_eq!(header.entry_count, 0);
    assert_eq!(
        log.last_index(),
        header.base_index,
        "one entry in the new life"
    );
    let last = log.last_index();
    drop(log);

    // The old frames are really still there, well-formed under the old seed and not under the
    // new one: only the salt and base index in the CRC keep them out.
    let now = fs.read_file(&recycled).unwrap();
    let second_frame =
        SEGMENT_HEADER_SIZE + rust_raft_log::storage::format::frame_padded_len(ENTRY_BYTES);
    let stale = &now[second_frame..];
    assert_eq!(
        stale,
        &old_bytes[second_frame..],
        "recycling rewrites no frame"
    );
    let first_old = decode_frame(&old_bytes[SEGMENT_HEADER_SIZE..], old_header.frame_seed());
    assert!(
        matches!(first_old, Ok(Some(_))),
        "old frames validate under the old seed"
    );
    let old_count = old_header.entry_count as usize;
    let mut off = second_frame;
    let mut stale_valid_old = 0;
    for _ in 1..old_count {
        let f = decode_frame(&now[off..], old_header.frame_seed())
            .expect("a stale frame is intact")
            .expect("not the end");
        assert!(decode_frame(&now[off..], header.frame_seed()).is_err());
        off += f.padded_len;
        stale_valid_old += 1;
    }
    assert!(stale_valid_old > 10);

    // The scan takes them for the end of the log: nothing to cut, nothing to zero.
    let scan = scan_segment(&now, &header);
    assert_eq!(scan.problem, None);
    assert_eq!(scan.last_index, header.base_index);
    assert_eq!(scan.zero_end, scan.valid_end);

    let log = open(&fs);
    assert_eq!(log.last_index(), last);
    assert_eq!(log.recovery_report().torn_tail, None);
    assert_log_holds(&log, &written);
    assert!(log.entry(last.next()).is_err());
    assert_eq!(fs.read_file(&recycled).unwrap(), now, "open wrote nothing");
}

#[test]
fn a_torn_tail_in_a_recycled_segment_is_cut_and_the_stale_frames_stay_stale() {
    // For each cut point inside the last entry's frame, a fresh run: the file is as if the power
    // went during that frame's write.
    let frame = rust_raft_log::storage::format::frame_padded_len(ENTRY_BYTES);
    let mut torn_cases = 0;
    for cut in [0usize, 1, 8, 39, 40, 41, 500, frame - 8, frame - 1] {
        let fs = SimFs::new();
        let (mut log, recycled, old_bytes, _, mut written) = recycle_one(&fs);
        let last = log.last_index().0;
        let batch: Vec<LogEntry> = (last + 1..=last + 3)
            .map(|i| entry(i, 2, ENTRY_BYTES))
            .collect();
        log.append(&batch).unwrap();
        written.extend(batch);
        let torn_index = LogIndex(last + 3);
        let torn_at = {
            let h = header_of(&fs, &recycled);
            let b = fs.read_file(&recycled).unwrap();
            scan_segment(&b, &h).offsets[(torn_index.0 - h.base_index.0) as usize] as usize
        };
        drop(log);
        let now = fs.read_file(&recycled).unwrap();
        if now[torn_at + cut..torn_at + frame] == old_bytes[torn_at + cut..torn_at + frame] {
            // The old bytes there equal the new ones: nothing would be torn.
            continue;
        }
        torn_cases += 1;
        // Tear the last frame: its first `cut` bytes are new, the rest is the old life's.
        fs.edit_file(&recycled, |b| {
            b[torn_at + cut..torn_at + frame]
                .copy_from_slice(&old_bytes[torn_at + cut..torn_at + frame])
        });
        let log = open(&fs);
        assert_eq!(log.last_index(), torn_index.prev(), "cut {cut}");
        written.pop();
        assert_log_holds(&log, &written);
        let mut log = log;
        // The log goes on from the cut, and a reopen agrees.
        let next: Vec<LogEntry> = (torn_index.0..torn_index.0 + 2)
            .map(|i| entry(i, 3, 10))
            .collect();
        log.append(&next).unwrap();
        written.extend(next);
        drop(log);
        let log = open(&fs);
        assert_eq!(log.last_index(), LogIndex(torn_index.0 + 1), "cut {cut}");
        assert_log_holds(&log, &written);
    }
    assert!(
        torn_cases >= 7,
        "only {torn_cases} cut points tore the frame"
    );
}

#[test]
fn damage_to_acknowledged_data_in_a_recycled_segment_is_still_corruption() {
    let fs = SimFs::new();
    let (mut log, recycled, _, _, _) = recycle_one(&fs);
    // Three more batches, so that a later batch follows the damaged one.
    for _ in 0..3 {
        let last = log.last_index().0;
        let batch: Vec<LogEntry> = (last + 1..=last + 2)
            .map(|i| entry(i, 2, ENTRY_BYTES))
            .collect();
        log.append(&batch).unwrap();
    }
    drop(log);
    // Flip a payload byte of the second entry of this life.
    let at =
        SEGMENT_HEADER_SIZE + rust_raft_log::storage::format::frame_padded_len(ENTRY_BYTES) + 100;
    fs.flip_bit(&recycled, at as u64, 3);
    let h = header_of(&fs, &recycled);
    let scan = scan_segment(&fs.read_file(&recycled).unwrap(), &h);
    assert_eq!(scan.problem.map(|p| p.kind), Some(ProblemKind::Corrupt));
    match RaftLog::open_with(small_config(sim_dir()), Arc::new(fs.clone())) {
        Err(LogError::Corrupt { file, index, .. }) => {
            assert_eq!(file, recycled);
            assert_eq!(index, h.base_index.next());
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("expected Corrupt, the log opened"),
    }
}

#[test]
fn the_pool_lives_on_disk_across_reopens_and_respects_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node_1");
    let config = |max: usize| {
        let mut c = LogConfig::new(&path);
        c.segment_size_bytes = SEGMENT_BYTES;
        c.recycle_segments_max = max;
        c
    };
    let mut log = RaftLog::open(config(3)).unwrap();
    let mut written = append_until_segments(&mut log, 6, 5, 1);
    let upto = log.last_index().0 - 5;
    log.compact_prefix(LogIndex(upto)).unwrap();
    assert_eq!(log.pool_paths().len(), 3);
    for p in log.pool_paths() {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("recycle_") && name.ends_with(".pool"),
            "{name}"
        );
        assert!(p.exists());
    }
    written.retain(|e| e.index.0 > upto);
    drop(log);

    // A smaller pool on reopen deletes the oldest extra file.
    let log = RaftLog::open(config(2)).unwrap();
    assert_eq!(log.pool_paths().len(), 2);
    assert_log_holds(&log, &written);
    let mut log = log;
    let rotations_before = log.segment_paths().len();
    written.extend(append_until_segments(&mut log, rotations_before + 1, 5, 2));
    assert_eq!(
        log.pool_paths().len(),
        1,
        "the rotation recycled a pool file"
    );
    let newest = log.segment_paths().last().unwrap().clone();
    let h = SegmentHeader::decode(&std::fs::read(&newest).unwrap()).unwrap();
    assert!(h.recycled);
    drop(log);
    let log = RaftLog::open(config(2)).unwrap();
    assert_log_holds(&log, &written);
    assert_eq!(log.recovery_report().torn_tail, None);
    drop(log);

    // Without a pool, compaction deletes.
    let mut log = RaftLog::open(config(0)).unwrap();
    assert!(log.pool_paths().is_empty());
    let pool_files = |p: &Path| {
        std::fs::read_dir(p)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("recycle_"))
            })
            .count()
    };
    assert_eq!(
        pool_files(&path),
        0,
        "open deleted the pool beyond its size 0"
    );
    let want = log.segment_paths().len() + 2;
    append_until_segments(&mut log, want, 5, 3);
    let upto = log.last_index().0 - 1;
    log.compact_prefix(LogIndex(upto)).unwrap();
    assert_eq!(log.segment_paths().len(), 1);
    assert!(log.pool_paths().is_empty());
    assert_eq!(pool_files(&path), 0, "compaction deleted the segments");
}

/// Issue 18: the append engine writes the first batch into a new segment while the directory
/// fsync of its rename is still running, so a crash can undo the rename after frames reached the
/// file: the file is `next_segment.prep` again, holding a segment header and unacknowledged
/// frames whose indexes are the ones the log continues with. Open must end the log with the
/// sealed segment before it and delete that file: reused, its stale frames of the expected
/// indexes would be taken for a torn tail of the file's next life (a recycled file's rules) or
/// cut as one (a prepared file's), a false alarm at every such reopen.
#[test]
fn a_prepared_file_left_with_frames_by_a_lost_rename_is_not_reused() {
    use rust_raft_log::storage::file::Vfs;
    use rust_raft_log::storage::log::PREPARED_SEGMENT_NAME;
    let fs = SimFs::new();
    let mut log = open(&fs);
    let mut acked = append_until_segments(&mut log, 2, 5, 1);
    let new_seg = log.segment_paths()[1].clone();
    let seg_base = header_of(&fs, &new_seg).base_index.0;
    // Frames in the new segment that were never acknowledged: the rename is then lost.
    let lost: Vec<LogEntry> = (log.last_index().0 + 1..=log.last_index().0 + 20)
        .map(|i| entry(i, 1, ENTRY_BYTES))
        .collect();
    log.append(&lost).unwrap();
    drop(log);
    let prep = sim_dir().join(PREPARED_SEGMENT_NAME);
    // As if the crash undid the rename (the background preparation's own file is replaced).
    fs.rename(&new_seg, &prep).unwrap();
    fs.sync_dir(&sim_dir()).unwrap();
    acked.retain(|e| e.index.0 < seg_base);

    let mut log = open(&fs);
    assert_eq!(
        log.last_index(),
        LogIndex(seg_base - 1),
        "the log ends with the sealed segment"
    );
    assert!(log.recovery_report().torn_tail.is_none());
    assert!(
        !fs.paths().contains(&prep),
        "the used prepared file is deleted at open"
    );
    assert_log_holds(&log, &acked);
    // New entries (term 2) from the same index go into a fresh file.
    let fresh: Vec<LogEntry> = (seg_base..seg_base + 5)
        .map(|i| entry(i, 2, ENTRY_BYTES))
        .collect();
    log.append(&fresh).unwrap();
    assert_eq!(log.segment_paths().len(), 2);
    acked.extend(fresh);
    drop(log);

    let log = open(&fs);
    assert_eq!(log.recovery_report().torn_tail, None);
    assert_eq!(log.last_index(), LogIndex(seg_base + 4));
    assert_log_holds(&log, &acked);
}
