//! Snapshot files (`src/storage/snapshot.rs`, docs/FORMAT.md "Snapshot file") on the simulated
//! disk and on the real one.
//!
//! ```text
//!   round trip      empty, small and multi-chunk payloads, SimFs and the real Vfs
//!   damage          every single-byte change of a small file  -> verify and the reader refuse it,
//!                   and the reader never handed out a byte that is not the payload's;
//!                   every truncation, bytes after the trailer  -> refused
//!   transfer        the file shipped in pieces (read_file_range) -> SnapshotReceiver:
//!                   out-of-order pieces refused naming the resume offset, a corrupt chunk refused
//!                   at once, the stream broken and resumed at received_bytes(), the wrong
//!                   snapshot refused, finish before the end refused
//!   power loss      write -> finish -> prune, the power cut after any operation (SimFs), then a
//!                   power loss: the final name holds nothing or the complete snapshot, and
//!                   newest_valid picks the newest valid one
//!   directory       numeric order, temporary files ignored and removed, newest_valid falls back
//!                   over damaged snapshots and names them, prune keeps the newest
//! ```
//! `SNAPSHOT_FILE_SEED` replays the power-loss test, `SNAPSHOT_FILE_ROUNDS` (default 400) sets
//! its length.

mod storage_common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rust_raft_log::storage::file::{SimFs, Vfs};
use rust_raft_log::storage::snapshot::{
    list_snapshots, newest_valid, prune, read_file_range, remove_temp_files, snapshot_file_len,
    snapshot_file_name, snapshot_receive_name, snapshot_temp_name, verify, Damage,
    SnapshotFileError, SnapshotMeta, SnapshotReader, SnapshotReceiver, SnapshotWriter,
    CHUNK_TARGET_BYTES, PAYLOAD_KIND_KV, PAYLOAD_KIND_OPAQUE, RANGE_BYTES_MAX,
};
use rust_raft_log::storage::uring::UringVfs;
use rust_raft_log::types::{LogIndex, NodeId, Term};
use storage_common::{seed_from_env, Rng};

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta {
        index: LogIndex(index),
        term: Term(term),
        cluster_id: 0x5eed,
        payload_kind: PAYLOAD_KIND_KV,
        voters: vec![NodeId(1), NodeId(2), NodeId(3)],
        learners: vec![],
    }
}

fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng(seed);
    (0..len).map(|_| r.next_u64() as u8).collect()
}

fn sim() -> (SimFs, Arc<dyn Vfs>, PathBuf) {
    let fs = SimFs::new();
    let dir = PathBuf::from("/sim/node_1");
    fs.create_dir_all(&dir).unwrap();
    let vfs: Arc<dyn Vfs> = Arc::new(fs.clone());
    (fs, vfs, dir)
}

/// Writes `bytes` in pieces of varying size (so chunks are cut inside writes), then finishes.
fn write_snapshot(vfs: &Arc<dyn Vfs>, dir: &Path, m: &SnapshotMeta, bytes: &[u8]) -> PathBuf {
    let mut w = SnapshotWriter::create(Arc::clone(vfs), dir, m).unwrap();
    let mut rest = bytes;
    let mut step = 1;
    while !rest.is_empty() {
        let n = step.min(rest.len());
        w.write_all(&rest[..n]).unwrap();
        rest = &rest[n..];
        step = step * 3 + 7;
    }
    w.finish().unwrap()
}

fn read_all(vfs: &dyn Vfs, path: &Path) -> Result<Vec<u8>, std::io::Error> {
    let mut out = Vec::new();
    SnapshotReader::open(vfs, path)?.read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn empty_small_and_multi_chunk_payloads_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let real: Arc<dyn Vfs> = Arc::new(UringVfs);
    let (_fs, simulated, sim_dir) = sim();
    let sizes = [0, 1, 1000, CHUNK_TARGET_BYTES, 3 * CHUNK_TARGET_BYTES + 17];
    for (vfs, dir, what) in [
        (&real, tmp.path().to_path_buf(), "real"),
        (&simulated, sim_dir, "sim"),
    ] {
        for (i, &len) in sizes.iter().enumerate() {
            let m = meta(10 + i as u64, 2);
            let data = payload(len as u64, len);
            let path = write_snapshot(vfs, &dir, &m, &data);
            assert_eq!(path, dir.join(snapshot_file_name(m.index)));
            let s = verify(&**vfs, &path).unwrap();
            assert_eq!(s.meta, m);
            assert_eq!(s.payload_bytes, len as u64, "{what} {len}");
            assert_eq!(s.payload_crc, crc32c::crc32c(&data));
            assert_eq!(s.chunk_count as usize, len.div_ceil(CHUNK_TARGET_BYTES));
            assert_eq!(s.file_bytes, snapshot_file_len(&**vfs, &path).unwrap());
            let mut r = SnapshotReader::open(&**vfs, &path).unwrap();
            assert_eq!(r.meta(), &m);
            let mut back = Vec::new();
            r.read_to_end(&mut back).unwrap();
            assert!(back == data, "{what}: payload of {len} bytes differs");
            assert_eq!(r.summary(), Some(s));
            eprintln!(
                "{what}: {len} payload bytes -> {} file bytes",
                r.file_bytes()
            );
        }
        let listed: Vec<u64> = list_snapshots(&**vfs, &dir)
            .unwrap()
            .iter()
            .map(|(i, _)| i.0)
            .collect();
        assert_eq!(listed, vec![10, 11, 12, 13, 14], "{what}");
    }
}

/// A small file with two chunks, so every unit kind is present.
fn small_file() -> (SimFs, Arc<dyn Vfs>, PathBuf, Vec<u8>) {
    let (fs, vfs, dir) = sim();
    let data = payload(7, 40);
    let mut w = SnapshotWriter::create(Arc::clone(&vfs), &dir, &meta(20, 4)).unwrap();
    w.write_all(&data[..25]).unwrap();
    w.flush().unwrap();
    w.write_all(&data[25..]).unwrap();
    let path = w.finish().unwrap();
    assert_eq!(verify(&*vfs, &path).unwrap().chunk_count, 2);
    (fs, vfs, path, data)
}

/// Reads as a consumer would; on error checks that every byte handed out before it was the
/// payload's (never a wrong byte reported as good).
fn read_checking_prefix(vfs: &dyn Vfs, path: &Path, data: &[u8]) -> Result<(), SnapshotFileError> {
    let mut r = SnapshotReader::open(vfs, path)?;
    let mut got = Vec::new();
    let mut buf = [0u8; 7];
    loop {
        match r.read(&mut buf) {
            Ok(0) => {
                assert!(
                    got == data,
                    "{}: the reader ended with other bytes",
                    path.display()
                );
                return Ok(());
            }
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                assert!(
                    got.len() <= data.len() && got[..] == data[..got.len()],
                    "handed out a byte that is not the payload's"
                );
            }
            Err(e) => {
                return Err(SnapshotFileError::from_io(&e)
                    .expect("a read error wraps the snapshot error")
                    .clone())
            }
        }
    }
}

#[test]
fn every_single_byte_change_is_detected_by_verify_and_the_reader() {
    let (fs, vfs, path, data) = small_file();
    let original = fs.read_file(&path).unwrap();
    let mut kinds = std::collections::BTreeMap::new();
    for at in 0..original.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            fs.edit_file(&path, |b| b[at] ^= mask);
            let e = verify(&*vfs, &path)
                .map(|s| s.payload_bytes)
                .expect_err(&format!("byte {at} ^ {mask:#x} not detected by verify"));
            let Some(damage) = e.damage() else {
                panic!("byte {at}: {e}")
            };
            let offset = match &e {
                SnapshotFileError::Damaged { offset, .. } => *offset,
                _ => unreachable!(),
            };
            assert!(
                offset <= original.len() as u64,
                "byte {at}: offset {offset}"
            );
            let name = format!("{damage:?}");
            *kinds
                .entry(name.split([' ', '(', '{']).next().unwrap().to_string())
                .or_insert(0) += 1;
            let r = read_checking_prefix(&*vfs, &path, &data);
            assert!(
                r.is_err(),
                "byte {at} ^ {mask:#x} not detected by the reader"
            );
            fs.edit_file(&path, |b| b[at] ^= mask);
        }
    }
    read_checking_prefix(&*vfs, &path, &data).unwrap();
    eprintln!(
        "{} bytes x 3 changes, all detected: {kinds:?}",
        original.len()
    );
}

#[test]
fn every_truncation_and_any_extra_byte_is_detected() {
    let (fs, vfs, path, data) = small_file();
    let original = fs.read_file(&path).unwrap();
    for len in 0..original.len() {
        fs.edit_file(&path, |b| b.truncate(len));
        let e = verify(&*vfs, &path).expect_err(&format!("truncation to {len} not detected"));
        assert!(
            matches!(e.damage(), Some(Damage::Truncated { len: l, .. }) if *l == len as u64),
            "truncation to {len}: {e}"
        );
        assert!(read_checking_prefix(&*vfs, &path, &data).is_err());
        fs.edit_file(&path, |b| *b = original.clone());
    }
    for extra in [&[0u8][..], &[0; 28], b"x"] {
        fs.edit_file(&path, |b| b.extend_from_slice(extra));
        let e = verify(&*vfs, &path).unwrap_err();
        assert!(
            matches!(e.damage(), Some(Damage::TrailingBytes { bytes }) if *bytes == extra.len() as u64),
            "{e}"
        );
        assert!(read_checking_prefix(&*vfs, &path, &data).is_err());
        fs.edit_file(&path, |b| *b = original.clone());
    }
    eprintln!(
        "{} truncations and 3 extensions of a {}-byte file detected",
        original.len(),
        original.len()
    );
}

/// The leader's side: the file in pieces of `piece` bytes from `from`.
fn pieces(vfs: &dyn Vfs, path: &Path, from: u64, piece: usize) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = from;
    loop {
        let b = read_file_range(vfs, path, at, piece).unwrap();
        if b.is_empty() {
            return out;
        }
        let n = b.len() as u64;
        out.push((at, b));
        at += n;
    }
}

#[test]
fn a_transfer_is_checked_as_it_arrives_and_resumes_where_it_stopped() {
    let (fs, leader, dir) = sim();
    let data = payload(3, 2 * CHUNK_TARGET_BYTES + 999);
    let source = write_snapshot(&leader, &dir, &meta(50, 6), &data);
    let file = fs.read_file(&source).unwrap();
    assert_eq!(pieces(&*leader, &source, 0, 1 << 30).len(), 1);
    assert_eq!(
        read_file_range(&*leader, &source, file.len() as u64, 10).unwrap(),
        Vec::<u8>::new()
    );
    assert!(matches!(
        read_file_range(&*leader, &source, file.len() as u64 + 1, 10),
        Err(SnapshotFileError::OutOfRange { .. })
    ));
    assert!(RANGE_BYTES_MAX < file.len() * 10);

    let (ffs, follower, fdir) = sim();
    let mut rx =
        SnapshotReceiver::create(Arc::clone(&follower), &fdir, LogIndex(50), Term(6)).unwrap();
    let sent = pieces(&*leader, &source, 0, 100_000);
    // The stream breaks after three pieces; the fourth arrives twice, and one piece skips ahead.
    for (off, b) in &sent[..3] {
        rx.accept(*off, b).unwrap();
    }
    let e = rx.accept(sent[1].0, &sent[1].1).unwrap_err();
    assert!(
        matches!(
            e,
            SnapshotFileError::OutOfOrder {
                received: 300_000,
                offset: 100_000,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("resume from offset 300000"), "{e}");
    assert!(rx.accept(400_000, &sent[4].1).is_err());
    assert_eq!(rx.received_bytes(), 300_000);
    assert_eq!(rx.meta(), Some(&meta(50, 6)));
    // A piece corrupted in transit inside chunk 2 (which spans pieces 2 to 5): nothing is
    // refused until the piece that completes the chunk arrives, and that piece is refused at
    // once; the transfer resumes at the start of chunk 2 (everything before it was kept).
    let (off, mut bad) = sent[3].clone();
    bad[10] ^= 0x40;
    rx.accept(off, &bad).unwrap();
    rx.accept(sent[4].0, &sent[4].1).unwrap();
    let e = rx.accept(sent[5].0, &sent[5].1).unwrap_err();
    assert!(
        matches!(e.damage(), Some(Damage::ChunkChecksum { chunk: 2, .. })),
        "{e}"
    );
    let chunk2 = 68 + 8 + CHUNK_TARGET_BYTES as u64;
    assert!(
        matches!(e, SnapshotFileError::Damaged { offset, .. } if offset == chunk2),
        "{e}"
    );
    assert_eq!(
        rx.received_bytes(),
        chunk2,
        "resume at the bad chunk's start"
    );
    for (off, b) in pieces(&*leader, &source, chunk2, 77_777) {
        rx.accept(off, &b).unwrap();
    }
    let path = rx.finish().unwrap();
    assert!(
        ffs.read_file(&path).unwrap() == file,
        "received file differs"
    );
    assert_eq!(read_all(&*follower, &path).unwrap(), data);

    // A stream that loses pieces again and again: the next piece is refused as out of order,
    // naming the offset the leader resumes from.
    let (ffs, follower, fdir) = sim();
    let mut rx =
        SnapshotReceiver::create(Arc::clone(&follower), &fdir, LogIndex(50), Term(6)).unwrap();
    let mut rng = Rng(99);
    let (mut at, mut lost, mut resumed) = (0, 0, 0);
    while !rx.is_complete() {
        let n = (1 + rng.below(70_000) as usize).min(file.len() - at);
        if n > 0 && rng.chance(4) {
            at += n;
            lost += 1;
            continue;
        }
        match rx.accept(at as u64, &file[at..at + n]) {
            Ok(()) => at += n,
            Err(SnapshotFileError::OutOfOrder { received, .. }) => {
                resumed += 1;
                at = received as usize;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(lost > 0 && resumed > 0);
    assert!(rx.is_complete());
    let e = rx.accept(file.len() as u64, b"!").unwrap_err();
    assert!(
        matches!(e.damage(), Some(Damage::TrailingBytes { bytes: 1 })),
        "{e}"
    );
    let path = rx.finish().unwrap();
    assert_eq!(path, fdir.join(snapshot_file_name(LogIndex(50))));
    assert!(
        ffs.read_file(&path).unwrap() == file,
        "received file differs"
    );
    assert_eq!(read_all(&*follower, &path).unwrap(), data);
    assert_eq!(ffs.paths(), vec![path.clone()], "no temporary file left");
    eprintln!(
        "transfer of {} bytes: {lost} pieces lost, resumed {resumed} times",
        file.len()
    );
}

#[test]
fn a_receiver_refuses_another_snapshot_and_a_bad_header_at_once() {
    let (_fs, leader, dir) = sim();
    let source = write_snapshot(&leader, &dir, &meta(50, 6), b"state");
    let file = read_file_range(&*leader, &source, 0, 1 << 20).unwrap();
    let (_ffs, follower, fdir) = sim();
    let mut rx =
        SnapshotReceiver::create(Arc::clone(&follower), &fdir, LogIndex(50), Term(7)).unwrap();
    let e = rx.accept(0, &file).unwrap_err();
    assert!(
        matches!(
            e,
            SnapshotFileError::WrongSnapshot {
                found_term: Term(6),
                expected_term: Term(7),
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(rx.received_bytes(), 0);
    let mut rx =
        SnapshotReceiver::create(Arc::clone(&follower), &fdir, LogIndex(50), Term(6)).unwrap();
    let mut bad = file.clone();
    bad[0] = b'X';
    // Refused as soon as the 16 bytes that hold the magic are in, whatever follows.
    let e = rx.accept(0, &bad[..16]).unwrap_err();
    assert!(matches!(e.damage(), Some(Damage::BadMagic { .. })), "{e}");
    assert_eq!(rx.received_bytes(), 0);
    rx.accept(0, &file[..file.len() - 1]).unwrap();
    let e = rx.finish().unwrap_err();
    assert!(
        matches!(&e, SnapshotFileError::Incomplete { missing, .. } if missing == "trailer"),
        "{e}"
    );
    let mut rx =
        SnapshotReceiver::create(Arc::clone(&follower), &fdir, LogIndex(50), Term(6)).unwrap();
    rx.accept(0, &file).unwrap();
    rx.finish().unwrap();
}

/// One round of the power-loss test: maybe an older snapshot (durable), then the new one
/// written, finished and the older pruned, with the power cut after `cut` operations (`None`:
/// never).
fn write_new_snapshot(fs: &SimFs, dir: &Path, data: &[u8], cut: Option<u64>) -> Result<(), String> {
    let vfs: Arc<dyn Vfs> = Arc::new(fs.clone());
    if let Some(cut) = cut {
        fs.power_off_after(cut);
    }
    let mut w =
        SnapshotWriter::create(Arc::clone(&vfs), dir, &meta(200, 9)).map_err(|e| e.to_string())?;
    for piece in data.chunks(40_000) {
        w.write_all(piece).map_err(|e| e.to_string())?;
    }
    w.finish().map_err(|e| e.to_string())?;
    prune(&*vfs, dir, 1).map_err(|e| e.to_string())?;
    Ok(())
}

#[test]
fn a_power_loss_at_any_point_leaves_no_snapshot_or_a_complete_one() {
    let seed = seed_from_env("SNAPSHOT_FILE_SEED");
    let rounds: u64 = std::env::var("SNAPSHOT_FILE_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let mut rng = Rng(seed);
    let dir = PathBuf::from("/sim/node_1");
    let old_data = payload(1, 5000);
    let (mut new_kept, mut new_absent, mut old_chosen, mut none_chosen) = (0, 0, 0, 0);
    for round in 0..rounds {
        let ctx = format!("round {round} (reproduce with SNAPSHOT_FILE_SEED={seed})");
        let fs = SimFs::new();
        fs.create_dir_all(&dir).unwrap();
        let vfs: Arc<dyn Vfs> = Arc::new(fs.clone());
        let with_old = rng.chance(2);
        if with_old {
            write_snapshot(&vfs, &dir, &meta(100, 8), &old_data);
        }
        let len = rng.below(3 * CHUNK_TARGET_BYTES as u64) as usize;
        let data = payload(rng.next_u64(), len);
        // Count the operations of an uninterrupted run on a copy, then cut the power after any
        // of them (or none).
        let copy = fs.deep_copy();
        let before = copy.ops_total();
        write_new_snapshot(&copy, &dir, &data, None).unwrap();
        let total = copy.ops_total() - before;
        let cut = rng.below(total + 2);
        let result = write_new_snapshot(&fs, &dir, &data, (cut <= total).then_some(cut));
        assert_eq!(
            result.is_ok(),
            cut >= total,
            "{ctx}: cut {cut} of {total}: {result:?}"
        );
        fs.power_loss(rng.next_u64());

        let removed = remove_temp_files(&*vfs, &dir).unwrap();
        let new_path = dir.join(snapshot_file_name(LogIndex(200)));
        let old_path = dir.join(snapshot_file_name(LogIndex(100)));
        let listed = list_snapshots(&*vfs, &dir).unwrap();
        let new_there = listed.iter().any(|(i, _)| *i == LogIndex(200));
        if new_there {
            let back = read_all(&*vfs, &new_path).unwrap_or_else(|e| {
                panic!("{ctx}: cut {cut} of {total}: the final name holds a damaged file: {e}")
            });
            assert!(back == data, "{ctx}: the new snapshot's payload differs");
            new_kept += 1;
        } else {
            assert!(cut < total, "{ctx}: a finished snapshot was lost");
            new_absent += 1;
        }
        if result.is_ok() && with_old {
            // prune returned: the older snapshot's removal is durable.
            assert!(!listed.iter().any(|(i, _)| *i == LogIndex(100)), "{ctx}");
        }
        let newest = newest_valid(&*vfs, &dir).unwrap();
        assert!(newest.damaged.is_empty(), "{ctx}: {:?}", newest.damaged);
        match newest.chosen {
            Some(c) if c.path == new_path => {}
            Some(c) if c.path == old_path => {
                assert!(with_old && !new_there, "{ctx}");
                assert_eq!(read_all(&*vfs, &old_path).unwrap(), old_data, "{ctx}");
                old_chosen += 1;
            }
            Some(c) => panic!("{ctx}: chose {}", c.path.display()),
            None => {
                assert!(!new_there, "{ctx}");
                assert!(
                    !with_old,
                    "{ctx}: cut {cut} of {total}: the older snapshot was lost before the new one was durable"
                );
                none_chosen += 1;
            }
        }
        for p in fs.paths() {
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            assert!(
                name.ends_with(".snap"),
                "{ctx}: {name} left after remove_temp_files ({removed:?})"
            );
        }
    }
    eprintln!(
        "{rounds} rounds: new snapshot kept {new_kept}, absent {new_absent}; fell back to the older one {old_chosen}, none {none_chosen}"
    );
    assert!(new_kept > 0 && new_absent > 0 && old_chosen > 0 && none_chosen > 0);
}

#[test]
fn recovery_picks_the_newest_valid_snapshot_and_names_the_damaged_ones() {
    let (fs, vfs, dir) = sim();
    for (i, index) in [9u64, 10, 100, 1000].iter().enumerate() {
        write_snapshot(
            &vfs,
            &dir,
            &meta(*index, 1 + i as u64),
            &payload(*index, 3000),
        );
    }
    fs.create_append(&dir.join(snapshot_temp_name(LogIndex(2000))))
        .unwrap();
    fs.create_append(&dir.join(snapshot_receive_name(LogIndex(3000))))
        .unwrap();
    fs.create_append(&dir.join("snapshot_1.snap")).unwrap();
    let listed: Vec<u64> = list_snapshots(&*vfs, &dir)
        .unwrap()
        .iter()
        .map(|(i, _)| i.0)
        .collect();
    assert_eq!(
        listed,
        vec![9, 10, 100, 1000],
        "numeric order, temporary files ignored"
    );

    let p1000 = dir.join(snapshot_file_name(LogIndex(1000)));
    let p100 = dir.join(snapshot_file_name(LogIndex(100)));
    fs.flip_bit(&p1000, 2000, 3);
    fs.edit_file(&p100, |b| b.truncate(b.len() - 1));
    let newest = newest_valid(&*vfs, &dir).unwrap();
    let chosen = newest.chosen.expect("snapshot 10 is valid");
    assert_eq!(chosen.summary.meta.index, LogIndex(10));
    let damaged: Vec<(u64, String)> = newest
        .damaged
        .iter()
        .map(|d| (d.index.0, d.error.to_string()))
        .collect();
    for (index, message) in &damaged {
        eprintln!("damaged {index}: {message}");
    }
    assert_eq!(damaged.len(), 2);
    assert_eq!(damaged[0].0, 1000);
    assert!(damaged[0].1.contains(&p1000.display().to_string()));
    assert!(
        damaged[0].1.contains("checksum mismatch"),
        "{}",
        damaged[0].1
    );
    assert_eq!(damaged[1].0, 100);
    assert!(damaged[1].1.contains("ends at byte"), "{}", damaged[1].1);

    let removed = remove_temp_files(&*vfs, &dir).unwrap();
    assert_eq!(removed.len(), 2);
    let removed = prune(&*vfs, &dir, 2).unwrap();
    assert_eq!(
        removed,
        vec![
            dir.join(snapshot_file_name(LogIndex(9))),
            dir.join(snapshot_file_name(LogIndex(10)))
        ]
    );
    // Removals are durable: a power loss brings nothing back.
    fs.power_loss(5);
    let mut names: Vec<String> = fs
        .paths()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            snapshot_file_name(LogIndex(100)),
            snapshot_file_name(LogIndex(1000)),
            "snapshot_1.snap".to_string(),
        ]
    );
    let newest = newest_valid(&*vfs, &dir).unwrap();
    assert!(newest.chosen.is_none());
    assert_eq!(newest.damaged.len(), 2);
}

#[test]
fn opaque_payloads_and_large_member_lists_round_trip_on_the_real_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let vfs: Arc<dyn Vfs> = Arc::new(UringVfs);
    let m = SnapshotMeta {
        payload_kind: PAYLOAD_KIND_OPAQUE,
        voters: (1..=5).map(NodeId).collect(),
        learners: (100..=600).map(NodeId).collect(),
        ..meta(u64::MAX, u64::MAX)
    };
    let path = write_snapshot(&vfs, tmp.path(), &m, b"opaque");
    assert_eq!(verify(&*vfs, &path).unwrap().meta, m);
    assert_eq!(
        remove_temp_files(&*vfs, tmp.path()).unwrap(),
        Vec::<PathBuf>::new()
    );
    // An unfinished writer leaves nothing behind on the real disk either.
    let mut w = SnapshotWriter::create(Arc::clone(&vfs), tmp.path(), &meta(5, 1)).unwrap();
    w.write_all(&[1; 1000]).unwrap();
    drop(w);
    let names: Vec<String> = vfs.list_dir(tmp.path()).unwrap();
    assert_eq!(names, vec![snapshot_file_name(LogIndex(u64::MAX))]);
}
