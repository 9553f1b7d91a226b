//! A full disk under the log and the append engine (issue 13), on the simulated disk with a
//! capacity (`SimFs::set_capacity_bytes`):
//!
//! ```text
//!   segment_1 (open) ──appends──▶ full ──rotation needs next_segment.prep──▶ ENOSPC
//!        │                                                 │
//!        │ appends go on while it has room                 ▼
//!        │                                  LogError::NoSpace, log unchanged, NOT poisoned
//!        ▼                                                 │ capacity back / compaction
//!   everything appended is there after a reopen ◀──── the same append succeeds
//! ```
//!
//! And the engine: a batch that hits the full disk stays pending (not failed), the engine says
//! so (`Engine::no_space`), and it completes once space is back; a failed fdatasync still fails
//! for good (fsyncgate).

mod storage_common;

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rust_raft_log::storage::engine::{Durable, Engine, WriteBatch};
use rust_raft_log::storage::file::{SimFs, Vfs};
use rust_raft_log::storage::log::PREPARED_SEGMENT_NAME;
use rust_raft_log::storage::state::RaftState;
use rust_raft_log::storage::{LogConfig, LogError, RaftLog};
use rust_raft_log::types::{LogEntry, LogIndex};
use storage_common::*;

const SEGMENT: u64 = 64 << 10;

fn config(background: bool) -> LogConfig {
    let mut c = small_config(sim_dir());
    c.segment_size_bytes = SEGMENT;
    c.prepare_in_background = background;
    c
}

fn open(fs: &SimFs, background: bool) -> RaftLog {
    RaftLog::open_with(config(background), Arc::new(fs.clone()))
        .unwrap_or_else(|e| panic!("open: {e}"))
}

/// Appends 1 KiB entries one at a time from `next` until the log refuses one; returns the
/// entries it took and the refusal.
fn append_until_refused(log: &mut RaftLog, next: u64, max: u64) -> (Vec<LogEntry>, LogError) {
    let mut done = Vec::new();
    for i in next..next + max {
        let e = entry(i, 1, 1000);
        match log.append(std::slice::from_ref(&e)) {
            Ok(()) => done.push(e),
            Err(err) => return (done, err),
        }
        log.check_invariants();
    }
    panic!("{max} appends were all accepted: the disk never filled");
}

fn names(fs: &SimFs) -> Vec<String> {
    fs.list_dir(&sim_dir()).expect("list")
}

/// The rotation's own preparation (no background thread, as in the simulator) fails for lack
/// of space: the appends that fit the open segment went in, the next one is refused with
/// `NoSpace`, not poisoned and with nothing left behind; with space back the same append goes
/// through, and a reopen finds every entry.
#[test]
fn a_full_disk_refuses_the_rotation_without_poisoning_and_appends_resume_with_space() {
    let fs = SimFs::new();
    let mut log = open(&fs, false);
    // Room for nothing but what is there: the first segment.
    fs.set_capacity_bytes(Some(fs.used_bytes()));
    let (mut appended, refused) = append_until_refused(&mut log, 1, 1000);
    assert!(
        matches!(&refused, LogError::NoSpace { dir, needed_bytes }
            if *dir == sim_dir() && *needed_bytes == SEGMENT),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("no space left")
            && refused.to_string().contains("/sim/node_1"),
        "the message names the cause and the directory: {refused}"
    );
    // The open segment was filled before the refusal (64 KiB of ~1 KiB frames).
    assert!(appended.len() > 50, "only {} entries fit", appended.len());
    assert!(!log.is_poisoned(), "a full disk does not poison the log");
    assert!(log.is_short_of_space());
    assert_eq!(log.last_index(), LogIndex(appended.len() as u64));
    assert_eq!(
        log.segment_paths().len(),
        1,
        "the open segment was not sealed away"
    );
    assert!(
        !names(&fs)
            .iter()
            .any(|n| n.starts_with(PREPARED_SEGMENT_NAME)),
        "no partial file: {:?}",
        names(&fs)
    );
    // Still refused while the disk stays full, still not poisoned.
    let next = entry(appended.len() as u64 + 1, 1, 1000);
    assert!(matches!(
        log.append(std::slice::from_ref(&next)),
        Err(LogError::NoSpace { .. })
    ));
    assert!(!log.is_poisoned());

    fs.set_capacity_bytes(None);
    log.append(std::slice::from_ref(&next))
        .expect("the same append succeeds with space back");
    appended.push(next);
    assert!(!log.is_short_of_space());
    let more: Vec<LogEntry> = (appended.len() as u64 + 1..=appended.len() as u64 + 100)
        .map(|i| entry(i, 1, 1000))
        .collect();
    log.append(&more).expect("more appends");
    appended.extend(more);
    log.check_invariants();
    drop(log);

    let log = open(&fs, false);
    assert_eq!(log.last_index(), LogIndex(appended.len() as u64));
    assert_log_holds(&log, &appended);
}

/// With the production setting (the next segment prepared by a background thread): the
/// background preparation fails for lack of space, appends go on until the open segment is
/// full, then `NoSpace`; once space is back the next append succeeds without a reopen.
#[test]
fn a_failed_background_preparation_lets_appends_fill_the_open_segment_then_refuses() {
    let fs = SimFs::new();
    fs.create_dir_all(&sim_dir()).expect("dir");
    // Room for the first segment and a little, not for a second one: the background
    // preparation started at open fails.
    fs.set_capacity_bytes(Some(SEGMENT + 4096));
    let mut log = open(&fs, true);
    let (mut appended, refused) = append_until_refused(&mut log, 1, 1000);
    assert!(matches!(refused, LogError::NoSpace { .. }), "{refused}");
    assert!(appended.len() > 50, "only {} entries fit", appended.len());
    assert!(!log.is_poisoned());
    assert!(
        !names(&fs)
            .iter()
            .any(|n| n.starts_with(PREPARED_SEGMENT_NAME)),
        "no partial file: {:?}",
        names(&fs)
    );

    fs.set_capacity_bytes(None);
    let next = entry(appended.len() as u64 + 1, 1, 1000);
    log.append(std::slice::from_ref(&next))
        .expect("appends resume with space back");
    appended.push(next);
    drop(log);
    let log = open(&fs, true);
    assert_log_holds(&log, &appended);
    assert_eq!(log.last_index(), LogIndex(appended.len() as u64));
}

/// Compaction frees space on its own: a compacted segment goes to the recycling pool, and the
/// rotation that was refused takes that file, with the disk still full.
#[test]
fn compaction_gives_a_full_disk_a_segment_file_back() {
    let fs = SimFs::new();
    let mut log = open(&fs, false);
    let first: Vec<LogEntry> = (1..=150).map(|i| entry(i, 1, 1000)).collect();
    log.append(&first).expect("two and a half segments");
    assert!(log.segment_paths().len() >= 3);
    fs.set_capacity_bytes(Some(fs.used_bytes()));
    let (appended, refused) = append_until_refused(&mut log, 151, 1000);
    assert!(matches!(refused, LogError::NoSpace { .. }), "{refused}");
    let last = 150 + appended.len() as u64;
    log.compact_prefix(LogIndex(100)).expect("compact");
    assert!(
        !log.pool_paths().is_empty(),
        "a compacted segment was pooled"
    );
    let next = entry(last + 1, 1, 1000);
    log.append(std::slice::from_ref(&next))
        .expect("the pooled file becomes the next segment");
    assert_eq!(log.last_index(), LogIndex(last + 1));
    assert!(!log.is_poisoned());
}

/// A failed fdatasync is still fatal (fsyncgate), full disk or not: only the preparation's
/// ENOSPC is retried.
#[test]
fn a_failed_sync_still_poisons_the_log() {
    let fs = SimFs::new();
    let mut log = open(&fs, false);
    fs.set_capacity_bytes(Some(fs.used_bytes()));
    fs.fail_next_syncs(1);
    let err = log.append(&[entry(1, 1, 100)]).expect_err("the sync fails");
    assert!(!matches!(err, LogError::NoSpace { .. }), "{err}");
    assert!(log.is_poisoned());
    assert!(matches!(
        log.append(&[entry(1, 1, 100)]),
        Err(LogError::Poisoned { .. })
    ));
}

fn batch(entries: Vec<LogEntry>) -> Rc<WriteBatch> {
    Rc::new(WriteBatch {
        reset: None,
        truncate_from: None,
        entries,
        hard_state: None,
        must_sync: true,
    })
}

/// The engine on a full disk: the batch that needs the next segment neither completes nor fails
/// while the disk is full; `Engine::no_space` names the directory; once space is back the batch
/// (and the one queued behind it) completes within the retry interval, and a reopen finds all.
#[test]
fn the_engine_holds_a_batch_on_a_full_disk_and_completes_it_when_space_returns() {
    let fs = SimFs::new();
    let log = open(&fs, true);
    let state = RaftState::open_with(&fs, &sim_dir()).expect("state");
    let (mut engine, view, task) = Engine::new(log, state);
    fs.set_capacity_bytes(Some(fs.used_bytes()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let runner = tokio::task::spawn_local(task.run());
        // 40 entries of 1 KiB fit the first 64 KiB segment; the second batch needs more than
        // the rest of it and the file the background thread may have prepared before the disk
        // filled (~62 entries a segment).
        let a: Vec<LogEntry> = (1..=40).map(|i| entry(i, 1, 1000)).collect();
        engine
            .persist(batch(a))
            .await
            .expect("fits the open segment");
        assert!(engine.no_space().is_none());
        let b: Vec<LogEntry> = (41..=200).map(|i| entry(i, 1, 1000)).collect();
        let c: Vec<LogEntry> = (201..=201).map(|i| entry(i, 1, 1000)).collect();
        let mut pending_b = engine.persist(batch(b));
        let mut pending_c = engine.persist(batch(c));
        let waited = tokio::time::timeout(Duration::from_millis(1500), &mut pending_b).await;
        assert!(waited.is_err(), "the batch waits for space: {waited:?}");
        let full = engine
            .no_space()
            .expect("the engine says it waits for space");
        assert_eq!(full.dir, sim_dir());
        assert!(!view.with(RaftLog::is_poisoned));
        // The part that fit the open segment may be durable; nothing beyond it.
        let before = view.with(RaftLog::last_index);
        assert!(before >= LogIndex(40) && before < LogIndex(200), "{before}");

        let started = Instant::now();
        fs.set_capacity_bytes(None);
        pending_b.await.expect("b completes with space back");
        (&mut pending_c).await.expect("c too");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "resumed after {took:?}");
        assert!(engine.no_space().is_none());
        assert_eq!(view.with(RaftLog::last_index), LogIndex(201));
        drop(engine);
        runner.await.expect("engine task");
    });
    drop(view);
    let log = open(&fs, true);
    let all: Vec<LogEntry> = (1..=201).map(|i| entry(i, 1, 1000)).collect();
    assert_log_holds(&log, &all);
}
