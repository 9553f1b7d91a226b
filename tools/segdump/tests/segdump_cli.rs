//! segdump against logs written by the real engine (`RaftLog`, io_uring) and then damaged.
//!
//! Fixture: a log of 64 KiB segments holding entries 1..=N, appended in batches of 10, so it
//! spans several segments (all sealed but the last). The tests then damage it the way the
//! issue lists and run the `segdump` binary:
//!
//! ```text
//!   clean          verify → exit 0 "verify: clean"
//!   torn tail      zero the second half of a frame inside the LAST batch
//!                  verify → exit 1 "torn tail"; repair --dry-run changes no byte;
//!                  repair → cut printed; verify → 0; RaftLog::open keeps every earlier entry
//!   corrupt middle flip a payload byte of an earlier batch in the last segment, or of an
//!                  entry in a sealed segment: verify → exit 1 "corrupt" with file and offset;
//!                  repair → later segments removed (backed up), verify → 0, prefix intact
//!   snapshot       a snapshot file written by the library's SnapshotWriter: show / --json /
//!                  verify → exit 0; a flipped payload byte or a cut trailer → exit 1 with
//!                  PROBLEM naming the offset; a missing file or a directory → exit 2
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rust_raft_log::storage::format::{decode_frame, SegmentHeader, SEGMENT_HEADER_SIZE};
use rust_raft_log::storage::state::{Identity, PersistentState, RaftState, ServerState};
use rust_raft_log::storage::{LogConfig, LogError, RaftLog};
use rust_raft_log::types::{EntryType, LogEntry, LogIndex, NodeId, Term};

const ENTRIES: u64 = 1000;
const BATCH: u64 = 10;

fn payload(index: u64) -> Vec<u8> {
    format!("entry-{index:06}-")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(100 + (index as usize * 7) % 150)
        .collect()
}

fn config(dir: &Path) -> LogConfig {
    LogConfig {
        segment_size_bytes: 64 << 10,
        ..LogConfig::new(dir)
    }
}

/// Writes the fixture log and returns its directory.
fn fixture() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("node_1");
    let mut log = RaftLog::open(config(&dir)).expect("open fresh log");
    let mut next = 1;
    while next <= ENTRIES {
        let batch: Vec<LogEntry> = (next..(next + BATCH).min(ENTRIES + 1))
            .map(|i| LogEntry {
                term: Term(1 + i / 100),
                index: LogIndex(i),
                entry_type: if i % 50 == 0 {
                    EntryType::NoOp
                } else {
                    EntryType::Normal
                },
                payload: payload(i),
            })
            .collect();
        next += batch.len() as u64;
        log.append(&batch).expect("append");
    }
    drop(log);
    (tmp, dir)
}

fn segdump(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_segdump"))
        .args(args)
        .output()
        .expect("run segdump")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn run(args: &[&str]) -> (i32, String) {
    let o = segdump(args);
    let code = o.status.code().expect("segdump exited by signal");
    let mut text = stdout(&o);
    text.push_str(&String::from_utf8_lossy(&o.stderr));
    (code, text)
}

/// Segment files in base-index order.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(rust_raft_log::storage::format::parse_segment_file_name)
                .is_some()
        })
        .collect();
    v.sort_by_key(|p| {
        rust_raft_log::storage::format::parse_segment_file_name(
            p.file_name().unwrap().to_str().unwrap(),
        )
    });
    v
}

/// (index → (offset, padded length)) of every valid frame of a segment, decoded with the
/// library's format code.
fn frames(path: &Path) -> BTreeMap<u64, (usize, usize)> {
    let bytes = std::fs::read(path).unwrap();
    let header = SegmentHeader::decode(&bytes).unwrap();
    let seed = header.frame_seed();
    let mut pos = SEGMENT_HEADER_SIZE;
    let mut out = BTreeMap::new();
    while let Ok(Some(f)) = decode_frame(&bytes[pos..], seed) {
        out.insert(f.index.0, (pos, f.padded_len));
        pos += f.padded_len;
    }
    out
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            m.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    m
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = std::fs::read(path).unwrap();
    f(&mut b);
    std::fs::write(path, b).unwrap();
}

/// Every entry up to `last` is present with its original payload, and nothing after it.
fn assert_log_is_prefix(dir: &Path, last: u64) {
    let log = RaftLog::open(config(dir)).expect("reopen after repair");
    assert_eq!(log.last_index(), LogIndex(last));
    for i in 1..=last {
        let e = log.entry(LogIndex(i)).expect("entry present");
        assert_eq!(e.payload, &payload(i)[..], "payload of entry {i}");
        assert_eq!(e.term, Term(1 + i / 100));
    }
}

#[test]
fn clean_log_verifies_and_shows() {
    let (_tmp, dir) = fixture();
    let d = dir.to_str().unwrap();
    assert!(
        segments(&dir).len() >= 3,
        "the fixture spans several segments"
    );
    let (code, out) = run(&["verify", d]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "verify: clean: {} segment(s), entries 1..={ENTRIES}",
            segments(&dir).len()
        )),
        "{out}"
    );

    let (code, out) = run(&["show", d, "--from", "49", "--to", "51"]);
    assert_eq!(code, 0, "{out}");
    let entry_lines: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(entry_lines.len(), 3, "{out}");
    assert!(
        entry_lines[1].contains("NoOp") && entry_lines[1].contains("\"entry-000050-"),
        "{out}"
    );

    let (code, out) = run(&["show", "--json", d]);
    assert_eq!(code, 0);
    let entries = out
        .lines()
        .filter(|l| l.contains("\"kind\":\"entry\""))
        .count();
    assert_eq!(entries as u64, ENTRIES);
    assert!(
        out.lines().all(|l| l.starts_with('{') && l.ends_with('}')),
        "one object per line"
    );
    assert!(out.contains("\"index\":1000,"), "{out}");

    // A single segment file works too.
    let first = segments(&dir)[0].clone();
    let (code, out) = run(&["show", first.to_str().unwrap(), "--to", "2"]);
    assert_eq!(code, 0);
    assert!(out.contains("base_index 1 "), "{out}");

    // Read-only: nothing changed.
    let before = snapshot(&dir);
    run(&["verify", d]);
    run(&["show", d]);
    assert_eq!(before, snapshot(&dir));
}

#[test]
fn torn_tail_is_reported_and_repaired() {
    let (_tmp, dir) = fixture();
    let d = dir.to_str().unwrap();
    let segs = segments(&dir);
    let last_seg = segs.last().unwrap().clone();
    let f = frames(&last_seg);
    // The last batch is 991..=1000; tear entry 997: its second half never reached the disk.
    let (off, len) = f[&997];
    edit(&last_seg, |b| b[off + len / 2..off + len].fill(0));

    let (code, out) = run(&["verify", d]);
    assert_eq!(code, 1, "{out}");
    let name = last_seg.display().to_string();
    assert!(
        out.contains(&format!("PROBLEM {name} offset {off} index 997: torn tail")),
        "{out}"
    );

    let before = snapshot(&dir);
    let (code, out) = run(&["repair", "--dry-run", d]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("would cut"), "{out}");
    assert!(out.contains("would keep entries 1..=996"), "{out}");
    assert_eq!(before, snapshot(&dir), "--dry-run must not change a byte");

    let (code, out) = run(&["repair", d]);
    assert_eq!(code, 0, "{out}");
    // It says what it cut: the offset, and the frames of the torn batch that still validated.
    assert!(
        out.contains(&format!("cut {name} at offset {off}")),
        "{out}"
    );
    assert!(out.contains("indexes 998..=1000"), "{out}");
    assert!(out.contains("keep entries 1..=996"), "{out}");
    assert!(out.contains("backup: "), "{out}");

    let (code, out) = run(&["verify", d]);
    assert_eq!(code, 0, "{out}");
    assert_log_is_prefix(&dir, 996);
}

#[test]
fn corruption_in_an_earlier_batch_of_the_last_segment() {
    let (_tmp, dir) = fixture();
    let d = dir.to_str().unwrap();
    let last_seg = segments(&dir).last().unwrap().clone();
    let f = frames(&last_seg);
    let first_in_last = *f.keys().next().unwrap();
    // An entry of a batch followed by later, acknowledged batches.
    let victim = first_in_last + 3;
    assert!(
        victim < ENTRIES - BATCH + 1,
        "victim {victim} must precede the last batch"
    );
    let (off, _) = f[&victim];
    edit(&last_seg, |b| b[off + 45] ^= 0x20);

    let (code, out) = run(&["verify", d]);
    assert_eq!(code, 1, "{out}");
    let name = last_seg.display().to_string();
    assert!(
        out.contains(&format!(
            "PROBLEM {name} offset {off} index {victim}: corrupt:"
        )),
        "{out}"
    );
    // show decodes past the damage: the bad frame is marked BAD at its offset, and the next
    // entry still prints as ok.
    let (code, out) = run(&[
        "show",
        last_seg.to_str().unwrap(),
        "--from",
        &victim.to_string(),
        "--to",
        &(victim + 1).to_string(),
    ]);
    assert_eq!(code, 0, "{out}");
    let bad = out
        .lines()
        .find(|l| l.contains("BAD"))
        .unwrap_or_else(|| panic!("no BAD line: {out}"));
    assert!(
        bad.contains(&off.to_string()) && bad.contains("checksum mismatch"),
        "{bad}"
    );
    let next = format!("{:>12} ", victim + 1);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&next) && l.contains(" ok ")),
        "{out}"
    );
    // The engine agrees: it refuses to open and names the same place.
    match RaftLog::open(config(&dir)) {
        Err(LogError::Corrupt { offset, index, .. }) => {
            assert_eq!((offset, index), (off as u64, LogIndex(victim)));
        }
        other => panic!(
            "open must refuse a corrupt log, got {:?}",
            other.map(|l| l.last_index())
        ),
    }

    let (code, out) = run(&["repair", "--no-backup", d]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("backup: "), "{out}");
    assert!(
        std::fs::read_dir(&dir).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("segdump-backup")),
        "--no-backup leaves no backup"
    );
    let (code, out) = run(&["verify", d]);
    assert_eq!(code, 0, "{out}");
    assert_log_is_prefix(&dir, victim - 1);
}

#[test]
fn corruption_in_a_sealed_segment_cuts_there_and_backs_up_what_it_removes() {
    let (_tmp, dir) = fixture();
    let d = dir.to_str().unwrap();
    let segs = segments(&dir);
    let sealed = segs[1].clone();
    let f = frames(&sealed);
    let victim = *f.keys().nth(5).unwrap();
    let (off, _) = f[&victim];
    edit(&sealed, |b| b[off + 20] ^= 0x01); // the index field

    let (code, out) = run(&["verify", d]);
    assert_eq!(code, 1, "{out}");
    let name = sealed.display().to_string();
    assert!(
        out.contains(&format!(
            "PROBLEM {name} offset {off} index {victim}: corrupt:"
        )),
        "{out}"
    );
    assert!(out.contains("(in a sealed segment)"), "{out}");

    let (code, out) = run(&["repair", d]);
    assert_eq!(code, 0, "{out}");
    for removed in &segs[2..] {
        assert!(
            out.contains(&format!("remove {}", removed.display())),
            "{out}"
        );
        assert!(!removed.exists());
    }
    // Every changed or removed file has a copy in the backup directory.
    let backup = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("segdump-backup")
        })
        .expect("a backup directory");
    for s in &segs[1..] {
        assert!(backup.join(s.file_name().unwrap()).exists(), "{out}");
    }
    let (code, out) = run(&["verify", d]);
    assert_eq!(code, 0, "{out}");
    assert_log_is_prefix(&dir, victim - 1);
}

#[test]
fn bad_header_and_usage_errors() {
    let (_tmp, dir) = fixture();
    let d = dir.to_str().unwrap();
    let segs = segments(&dir);
    edit(&segs[2], |b| b[0] = b'X');
    let (code, out) = run(&["verify", d]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("PROBLEM {} offset 0", segs[2].display()))
            && out.contains("bad segment magic"),
        "{out}"
    );

    let (code, out) = run(&["verify", "/nonexistent/segdump-test"]);
    assert_eq!(code, 2, "{out}");
    let (code, _) = run(&["verify"]);
    assert_eq!(code, 2, "missing argument is a usage error");
    let (code, _) = run(&["frobnicate"]);
    assert_eq!(code, 2);
}

#[test]
fn state_file_is_decoded() {
    let tmp = tempfile::tempdir().unwrap();
    let node = tmp.path().join("node_2");
    let mut st = RaftState::open(&node).unwrap();
    st.save(PersistentState {
        current_term: Term(8),
        voted_for: Some(NodeId(3)),
        commit_index: LogIndex(77),
        last_applied: LogIndex(70),
        server_state: ServerState::Leader,
        identity: Identity {
            cluster_id: 0xabc,
            node_id: 2,
        },
    })
    .unwrap();
    drop(st);
    let file = node.join("raft_state.meta");
    let f = file.to_str().unwrap();
    let (code, out) = run(&["state", f]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("slot 0: valid (current): sequence 2 current_term 8 voted_for 3 commit_index 77 last_applied 70 server_state Leader identity node 2 of cluster 0000000000000abc"),
        "{out}"
    );
    assert!(
        out.contains("slot 1: valid: sequence 1 current_term 0 voted_for none commit_index 0 last_applied 0 server_state Follower identity none"),
        "{out}"
    );
    let (code, out) = run(&["state", "--json", f]);
    assert_eq!(code, 0);
    assert!(out.contains("\"current_term\":8"), "{out}");
    assert!(out.contains("\"node_id\":2"), "{out}");

    edit(&file, |b| {
        b[0] = 0;
        b[4096] = 0;
    });
    let (code, out) = run(&["state", f]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not a raft_state.meta file"), "{out}");
}

#[test]
fn unfinished_truncation_is_named_and_finished_by_repair() {
    let (_tmp, dir) = fixture();
    let d = dir.to_str().unwrap();
    let last_seg = segments(&dir).last().unwrap().clone();
    let f = frames(&last_seg);
    // A truncate_suffix(995) that crashed after its header write, before zeroing [cut, old end).
    let (cut, _) = f[&995];
    let (last_off, last_len) = f[&ENTRIES];
    edit(&last_seg, |b| {
        let h = SegmentHeader::decode(b).unwrap();
        let dirty = SegmentHeader {
            entry_count: 995 - h.base_index.0,
            append_position: cut as u64,
            dirty_end: (last_off + last_len) as u64,
            ..h
        };
        b[..SEGMENT_HEADER_SIZE].copy_from_slice(&dirty.encode());
    });
    let (code, out) = run(&["verify", d]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "PROBLEM {} offset {cut} index 995: unfinished truncation: bytes [{cut}, {})",
            last_seg.display(),
            last_off + last_len
        )),
        "{out}"
    );
    let (code, out) = run(&["repair", "--no-backup", d]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("dirty_end"), "{out}");
    let (code, out) = run(&["verify", d]);
    assert_eq!(code, 0, "{out}");
    assert_log_is_prefix(&dir, 994);
}

/// A log whose last segment is a recycled file: compaction put segments into the pool and the
/// next rotation reused one. `verify` is clean (the stale frames of the file's earlier life are
/// the end of log, not damage); a torn frame of the current life is still found and repaired,
/// and repair zeroes only that frame, not the stale bytes.
#[test]
fn a_recycled_last_segment_verifies_clean_and_its_torn_tail_is_repaired() {
    let (_tmp, dir) = fixture();
    let d = dir.to_str().unwrap();
    let mut log = RaftLog::open(config(&dir)).expect("reopen");
    let segs = log.segment_paths().len();
    assert!(segs >= 4, "the fixture has {segs} segments");
    log.compact_prefix(LogIndex(ENTRIES - 1)).expect("compact");
    assert!(!log.pool_paths().is_empty(), "compaction filled the pool");
    let before_rotation = log.segment_paths().len();
    let mut next = ENTRIES + 1;
    while log.segment_paths().len() == before_rotation {
        let batch: Vec<LogEntry> = (next..next + BATCH)
            .map(|i| LogEntry {
                term: Term(20),
                index: LogIndex(i),
                entry_type: EntryType::Normal,
                payload: payload(i),
            })
            .collect();
        next += BATCH;
        log.append(&batch).expect("append");
    }
    let last = next - 1;
    drop(log);
    let last_seg = segments(&dir).last().unwrap().clone();
    let header = SegmentHeader::decode(&std::fs::read(&last_seg).unwrap()).unwrap();
    assert!(header.recycled, "the rotation reused a pool file");

    let (code, out) = run(&["verify", d]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&["show", &last_seg.display().to_string()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("recycled"), "{out}");

    // Tear the last entry of the current life: its second half is zeroed.
    let f = frames(&last_seg);
    let (off, len) = f[&last];
    edit(&last_seg, |b| b[off + len / 2..off + len].fill(0));
    let stale_after = std::fs::read(&last_seg).unwrap()[off + len..].to_vec();
    assert!(stale_after.iter().any(|&b| b != 0), "stale frames follow");
    let (code, out) = run(&["verify", d]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("torn tail"), "{out}");
    let (code, out) = run(&["repair", d]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&["verify", d]);
    assert_eq!(code, 0, "{out}");
    let after = std::fs::read(&last_seg).unwrap();
    assert!(
        after[off..off + len].iter().all(|&b| b == 0),
        "the torn frame is zeroed"
    );
    assert_eq!(
        &after[off + len..],
        &stale_after[..],
        "the stale bytes are left alone"
    );
    let log = RaftLog::open(config(&dir)).expect("open after repair");
    assert_eq!(log.last_index(), LogIndex(last - 1));
}

#[test]
fn snapshot_files_are_shown_and_verified() {
    use rust_raft_log::storage::file::Vfs;
    use rust_raft_log::storage::snapshot::{SnapshotMeta, SnapshotWriter, PAYLOAD_KIND_KV};
    use rust_raft_log::storage::uring::UringVfs;
    use std::io::Write;
    use std::sync::Arc;

    let tmp = tempfile::tempdir().unwrap();
    let vfs: Arc<dyn Vfs> = Arc::new(UringVfs);
    let meta = SnapshotMeta {
        index: LogIndex(1000),
        term: Term(3),
        cluster_id: 0xabc,
        payload_kind: PAYLOAD_KIND_KV,
        voters: vec![NodeId(1), NodeId(2), NodeId(3)],
        learners: vec![NodeId(4)],
    };
    let mut w = SnapshotWriter::create(Arc::clone(&vfs), tmp.path(), &meta).unwrap();
    w.write_all(&vec![7u8; 300_000]).unwrap();
    let path = w.finish().unwrap();
    let f = path.to_str().unwrap();

    let (code, out) = run(&["snapshot", "show", f]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("last_index 1000 last_term 3 cluster_id 0000000000000abc payload_kind 1 (key-value) voters 1,2,3 learners 4"),
        "{out}"
    );
    assert!(out.contains("payload: 300000 bytes in 2 chunk(s)"), "{out}");
    let (code, out) = run(&["snapshot", "show", "--json", f]);
    assert_eq!(code, 0, "{out}");
    for field in [
        "\"kind\":\"snapshot\"",
        "\"status\":\"valid\"",
        "\"last_index\":1000",
        "\"voters\":\"1,2,3\"",
        "\"chunk_count\":2",
        "\"payload_bytes\":300000",
    ] {
        assert!(out.contains(field), "{field} in {out}");
    }
    let (code, out) = run(&["snapshot", "verify", f]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verify: clean"), "{out}");

    // A payload byte of the second chunk (it starts after the 72-byte header and chunk 1).
    let second = 72 + 8 + 262_144 + 8 + 10;
    edit(&path, |b| b[second] ^= 1);
    let (code, out) = run(&["snapshot", "verify", f]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "damaged snapshot at byte {}: chunk 2",
            72 + 8 + 262_144
        )),
        "{out}"
    );
    let (code, out) = run(&["snapshot", "show", f]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("last_index 1000") && out.contains("PROBLEM"),
        "{out}"
    );
    let (code, out) = run(&["snapshot", "show", "--json", f]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("\"status\":\"damaged\""), "{out}");
    edit(&path, |b| {
        b[second] ^= 1;
        b.truncate(b.len() - 5);
    });
    let (code, out) = run(&["snapshot", "verify", f]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("inside the trailer"), "{out}");

    let missing = tmp.path().join("snapshot_00000000000000000001.snap");
    let (code, out) = run(&["snapshot", "verify", missing.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    let (code, out) = run(&["snapshot", "show", tmp.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("not a file"), "{out}");
}

/// `snapshot restore` against a key-value snapshot taken in another cluster:
///
/// ```text
///   backup.db (cluster 0xabc, voters 7,8, index 500 term 4)
///     restore --node-id 2      → exit 0, data/node_2 with the snapshot renamed to the new cluster
///                                (its id, voters 1,2,3), a log reset after 500, the state file
///     again                    → exit 2 "not empty", the directory unchanged
///     a flipped payload byte   → exit 1 PROBLEM, nothing created
///     an unknown node          → exit 2
/// ```
#[test]
fn snapshot_restore_creates_a_new_members_directory_and_refuses_the_rest() {
    use rust_raft_log::etcdpb::etcdserverpb::{request_op, PutRequest, RequestOp};
    use rust_raft_log::kv::KvStore;
    use rust_raft_log::storage::file::Vfs;
    use rust_raft_log::storage::snapshot::{SnapshotMeta, SnapshotWriter, PAYLOAD_KIND_KV};
    use rust_raft_log::storage::uring::UringVfs;
    use std::sync::Arc;

    let tmp = tempfile::tempdir().unwrap();
    let mut store = KvStore::new();
    for i in 0..3 {
        store
            .apply(&RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: format!("key-{i}").into_bytes(),
                    value: vec![b'v'; 1000],
                    ..PutRequest::default()
                })),
            })
            .unwrap();
    }
    let vfs: Arc<dyn Vfs> = Arc::new(UringVfs);
    let meta = SnapshotMeta {
        index: LogIndex(500),
        term: Term(4),
        cluster_id: 0xabc,
        payload_kind: PAYLOAD_KIND_KV,
        voters: vec![NodeId(7), NodeId(8)],
        learners: Vec::new(),
    };
    let mut w = SnapshotWriter::create(Arc::clone(&vfs), tmp.path(), &meta).unwrap();
    store.snapshot_view().write_to(&mut w).unwrap();
    let written = w.finish().unwrap();
    std::fs::rename(&written, tmp.path().join("backup.db")).unwrap();
    std::fs::write(
        tmp.path().join("cluster.yaml"),
        "nodes:\n  - node_id: 1\n    ip_address: \"127.0.0.1\"\n    port: 19101\n  \
         - node_id: 2\n    ip_address: \"127.0.0.1\"\n    port: 19102\n  \
         - node_id: 3\n    ip_address: \"127.0.0.1\"\n    port: 19103\n\
         cluster_settings:\n  log_directory: \"data\"\n",
    )
    .unwrap();
    let run_here = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_segdump"))
            .args(args)
            .current_dir(tmp.path())
            .output()
            .expect("run segdump");
        let mut text = stdout(&o);
        text.push_str(&String::from_utf8_lossy(&o.stderr));
        (o.status.code().expect("exit code"), text)
    };
    let restore = |file: &str, node: &str| {
        run_here(&[
            "snapshot",
            "restore",
            file,
            "--config",
            "cluster.yaml",
            "--node-id",
            node,
        ])
    };

    let (code, out) = restore("backup.db", "2");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("restore: created data/node_2 for node 2 of cluster")
            && out.contains("last_index 500 last_term 4")
            && out.contains("(taken in cluster 0000000000000abc)"),
        "{out}"
    );
    let node_2 = tmp.path().join("data/node_2");
    let snap = "data/node_2/snapshot_00000000000000000500.snap";
    let (code, out) = run_here(&["snapshot", "show", snap]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("last_index 500 last_term 4")
            && !out.contains("cluster_id 0000000000000abc")
            && out.contains("voters 1,2,3 learners none"),
        "{out}"
    );
    let (code, out) = run_here(&["state", "data/node_2/raft_state.meta"]);
    assert_eq!(code, 0, "{out}");
    let log = RaftLog::open(LogConfig::new(&node_2)).expect("the restored log opens");
    assert_eq!(
        (log.first_index(), log.last_index(), log.last_term()),
        (LogIndex(501), LogIndex(500), Term(4))
    );
    drop(log);
    let state = RaftState::open(&node_2).expect("state");
    assert_eq!(state.state().current_term, Term(4));
    assert_eq!(state.state().voted_for, None);
    assert_eq!(state.state().commit_index, LogIndex(500));
    assert_eq!(state.state().identity.node_id, 2);
    drop(state);

    let before = snapshot(&node_2);
    let (code, out) = restore("backup.db", "2");
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("restore refused: data directory data/node_2 is not empty"),
        "{out}"
    );
    assert_eq!(snapshot(&node_2), before, "nothing changed");

    let mut bytes = std::fs::read(tmp.path().join("backup.db")).unwrap();
    let at = bytes.len() - 30;
    bytes[at] ^= 0x10;
    std::fs::write(tmp.path().join("damaged.db"), &bytes).unwrap();
    let (code, out) = restore("damaged.db", "3");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("PROBLEM damaged.db is not a usable snapshot file")
            && out.contains("restore: nothing written"),
        "{out}"
    );
    assert!(!tmp.path().join("data/node_3").exists());

    let (code, out) = restore("backup.db", "9");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("restore refused"), "{out}");
    assert!(!tmp.path().join("data/node_9").exists());
}
