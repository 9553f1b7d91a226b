//! The durable append engine (`storage::engine`): the node's one write path, on the real disk
//! (io_uring waited on by the runtime's reactor) and on the simulated one (`SimFs`, whose device
//! completes each write when the test says so).
//!
//! ```text
//!   driver (test) ── persist(WriteBatch) ──▶ Engine queue ──▶ EngineTask (same thread)
//!        ▲                                                      │ truncate (sync), then
//!        └──── future resolves once durable ◀── state file ‖ segment writes, each + fdatasync
//! ```

mod storage_common;

use std::cell::Cell;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use rust_raft_log::raft::{Config, HardState, RaftNode, Storage};
use rust_raft_log::storage::engine::{
    Durable, Engine, EngineError, EngineTask, LogView, PersistFuture, WriteBatch,
};
use rust_raft_log::storage::file::SimFs;
use rust_raft_log::storage::state::RaftState;
use rust_raft_log::storage::{LogConfig, LogError, RaftLog};
use rust_raft_log::types::{LogEntry, LogIndex, NodeId, Term};
use storage_common::*;

fn batch(
    entries: Vec<LogEntry>,
    truncate_from: Option<u64>,
    hs: Option<HardState>,
) -> Rc<WriteBatch> {
    Rc::new(WriteBatch {
        reset: None,
        truncate_from: truncate_from.map(LogIndex),
        entries,
        hard_state: hs,
        must_sync: true,
    })
}

fn hard(term: u64, vote: Option<u32>, commit: u64) -> HardState {
    HardState {
        term: Term(term),
        vote: vote.map(NodeId),
        commit: LogIndex(commit),
    }
}

fn open_real(dir: &Path) -> (Engine, LogView, EngineTask) {
    let config = LogConfig {
        // Small segments, so a group crosses a segment boundary (rotation on the engine's
        // thread, one write + sync per segment).
        segment_size_bytes: 64 << 10,
        ..LogConfig::new(dir)
    };
    let log = RaftLog::open(config).expect("open log");
    let state = RaftState::open(dir).expect("open state");
    Engine::new(log, state)
}

fn open_on(fs: &SimFs) -> (Engine, LogView, EngineTask) {
    let log = open_sim(fs, 64 << 10);
    let state = RaftState::open_with(fs, &sim_dir()).expect("open state");
    Engine::new(log, state)
}

/// Batches through the engine on the real disk are durable, in order, and visible in the view
/// once their future completed; several queued batches (one group) and a truncation in the
/// middle keep that order; the term and vote reach the state file; after a reopen everything
/// acknowledged is there.
#[test]
fn batches_become_durable_in_order_through_the_engine_on_the_real_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut engine, view, task) = open_real(dir.path());
    let voted = hard(2, Some(3), 0);
    let base = tokio_uring::start(async {
        let runner = tokio::task::spawn_local(task.run());
        engine
            .persist(batch(
                (1..=3).map(|i| entry(i, 1, 100)).collect(),
                None,
                Some(voted),
            ))
            .await
            .expect("first batch");
        assert_eq!(view.last_index(), LogIndex(3));
        // Several at once (one group; 700 entries of ~500 B cross the 64 KiB segments), then a
        // truncation of the last ones and new entries of term 2.
        let a = engine.persist(batch(
            (4..=400).map(|i| entry(i, 1, 500)).collect(),
            None,
            None,
        ));
        let b = engine.persist(batch(
            (401..=700).map(|i| entry(i, 1, 500)).collect(),
            None,
            None,
        ));
        let c = engine.persist(batch(
            (690..=691).map(|i| entry(i, 2, 500)).collect(),
            Some(690),
            None,
        ));
        // Nothing to write (a commit-index change only): completes at once.
        let d = engine.persist(batch(vec![], None, Some(hard(2, Some(3), 5))));
        assert_eq!(
            view.last_index(),
            LogIndex(3),
            "nothing published before durable"
        );
        a.await.expect("a");
        b.await.expect("b");
        c.await.expect("c");
        d.await.expect("d");
        assert_eq!(view.last_index(), LogIndex(691));
        assert_eq!(view.term(LogIndex(689)), Some(Term(1)));
        assert_eq!(view.term(LogIndex(690)), Some(Term(2)));
        // A truncation at the first index of the open segment deletes its file (the segment
        // before, sealed, becomes the open one), and the next append rotates into a new file
        // under the same name: the write must reach the new file, not the deleted one.
        let base = view.with(|log| {
            let paths = log.segment_paths();
            let name = paths.last().and_then(|p| p.file_name()).expect("a segment");
            rust_raft_log::storage::format::parse_segment_file_name(&name.to_string_lossy())
                .expect("segment names carry their base index")
        });
        assert!(base > LogIndex(1) && base <= LogIndex(690), "{base}");
        engine
            .persist(batch(
                (base.0..=691).map(|i| entry(i, 3, 500)).collect(),
                Some(base.0),
                None,
            ))
            .await
            .expect("rewrite after truncation");
        assert_eq!(view.term(LogIndex(691)), Some(Term(3)));
        let (groups, entries) = engine.group_stats();
        assert!(
            groups >= 3 && entries >= 691,
            "{groups} groups, {entries} entries"
        );
        drop(engine);
        runner
            .await
            .expect("the task ends when the engine is dropped");
        base
    });
    drop(view);
    let log = RaftLog::open(LogConfig {
        segment_size_bytes: 64 << 10,
        ..LogConfig::new(dir.path())
    })
    .expect("reopen");
    assert_eq!(log.last_index(), LogIndex(691));
    for i in 1..=691u64 {
        let want = if i >= base.0 {
            entry(i, 3, 500)
        } else if i >= 690 {
            entry(i, 2, 500)
        } else if i <= 3 {
            entry(i, 1, 100)
        } else {
            entry(i, 1, 500)
        };
        assert_eq!(
            log.entry(LogIndex(i)).expect("entry").to_owned_entry(),
            want,
            "entry {i}"
        );
    }
    let state = RaftState::open(dir.path()).expect("state");
    let hs = state.state().hard_state();
    assert_eq!((hs.term, hs.vote), (Term(2), Some(NodeId(3))));
}

/// 16 closed-loop appenders on one thread (the event loop's shape) share fdatasyncs, and a reader
/// on the same thread only ever sees entries that are durable and intact.
#[test]
fn concurrent_appenders_share_fdatasyncs_and_readers_see_only_published_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, view, task) = open_real(dir.path());
    tokio_uring::start(async {
        let runner = tokio::task::spawn_local(task.run());
        let engine = Rc::new(std::cell::RefCell::new(engine));
        let next = Rc::new(Cell::new(1u64));
        let done = Rc::new(Cell::new(false));
        let reader = {
            let (view, done) = (view.clone(), Rc::clone(&done));
            tokio::task::spawn_local(async move {
                let mut reads = 0u64;
                while !done.get() {
                    let last = view.last_index().0;
                    for i in (1..=last).rev().take(20) {
                        let got = view.entries(LogIndex(i), LogIndex(i + 1), u64::MAX);
                        assert_eq!(got, vec![entry(i, 1, (i % 300) as usize)], "entry {i}");
                        reads += 1;
                    }
                    tokio::task::yield_now().await;
                }
                reads
            })
        };
        let appenders: Vec<_> = (0..16)
            .map(|_| {
                let (engine, next) = (Rc::clone(&engine), Rc::clone(&next));
                tokio::task::spawn_local(async move {
                    for _ in 0..50 {
                        let i = next.get();
                        next.set(i + 1);
                        let b = batch(vec![entry(i, 1, (i % 300) as usize)], None, None);
                        let durable = engine.borrow_mut().persist(b);
                        durable.await.expect("append");
                    }
                })
            })
            .collect();
        for a in appenders {
            a.await.expect("appender");
        }
        done.set(true);
        assert!(reader.await.expect("reader") > 0);
        assert_eq!(view.last_index(), LogIndex(800));
        let (groups, entries) = engine.borrow().group_stats();
        assert_eq!(entries, 800);
        assert!(
            groups < 400,
            "{groups} fdatasyncs for 800 appends of 16 concurrent appenders: no group commit"
        );
        drop(engine);
        runner.await.expect("task");
    });
}

/// The engine holds no reference to a batch once the batch's future completed (the task drops
/// each job as it completes it): a driver that gives its batches away gets their memory back at
/// once, and the engine's memory does not grow with the batches written.
#[test]
fn the_engine_holds_no_batch_after_its_future_completed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut engine, _view, task) = open_real(dir.path());
    tokio_uring::start(async {
        let runner = tokio::task::spawn_local(task.run());
        for round in 0..20u64 {
            let batches: Vec<_> = (0..4)
                .map(|k| batch(vec![entry(round * 4 + k + 1, 1, 200)], None, None))
                .collect();
            let weak: Vec<_> = batches.iter().map(Rc::downgrade).collect();
            // The engine holds the only strong reference from here on.
            let durable: Vec<_> = batches.into_iter().map(|b| engine.persist(b)).collect();
            for d in durable {
                d.await.expect("append");
            }
            let alive = weak.iter().filter(|w| w.upgrade().is_some()).count();
            assert_eq!(
                alive, 0,
                "round {round}: {alive} of 4 batches still held after their futures completed"
            );
        }
        drop(engine);
        runner.await.expect("task");
    });
}

/// Polls everything a test drives by hand (the engine's task and the batch futures) with a
/// no-op waker until nothing makes progress: the simulator's way of running the engine.
struct Manual {
    /// `None` once it ended.
    task: Option<Pin<Box<dyn Future<Output = ()>>>>,
    waiting: Vec<(usize, PersistFuture<EngineError>)>,
    outcomes: Vec<Option<Result<(), String>>>,
}

impl Manual {
    fn new(task: EngineTask) -> Manual {
        Manual {
            task: Some(Box::pin(task.run())),
            waiting: Vec::new(),
            outcomes: Vec::new(),
        }
    }

    fn persist(&mut self, engine: &mut Engine, b: Rc<WriteBatch>) -> usize {
        let id = self.outcomes.len();
        self.outcomes.push(None);
        self.waiting.push((id, engine.persist(b)));
        self.settle();
        id
    }

    fn settle(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..64 {
            if let Some(task) = self.task.as_mut() {
                if task.as_mut().poll(&mut cx).is_ready() {
                    self.task = None;
                }
            }
            let mut progressed = false;
            let outcomes = &mut self.outcomes;
            self.waiting
                .retain_mut(|(id, f)| match f.as_mut().poll(&mut cx) {
                    Poll::Ready(r) => {
                        outcomes[*id] = Some(r.map_err(|e| e.to_string()));
                        progressed = true;
                        false
                    }
                    Poll::Pending => true,
                });
            if !progressed {
                return;
            }
        }
    }

    fn outcome(&self, id: usize) -> Option<&Result<(), String>> {
        self.outcomes[id].as_ref()
    }
}

/// A failed sync fails its batch and every later one (fsyncgate: no retry); the log is poisoned.
#[test]
fn a_failed_sync_fails_its_batch_and_every_later_one() {
    let fs = SimFs::new();
    let (mut engine, view, task) = open_on(&fs);
    let mut m = Manual::new(task);
    let a = m.persist(&mut engine, batch(vec![entry(1, 1, 10)], None, None));
    assert_eq!(m.outcome(a), Some(&Ok(())));
    fs.fail_next_syncs(1);
    let b = m.persist(&mut engine, batch(vec![entry(2, 1, 10)], None, None));
    let c = m.persist(&mut engine, batch(vec![entry(3, 1, 10)], None, None));
    assert!(
        matches!(m.outcome(b), Some(Err(e)) if e.contains("fdatasync") || e.contains("I/O")),
        "{:?}",
        m.outcome(b)
    );
    assert!(
        matches!(m.outcome(c), Some(Err(e)) if e.contains("earlier")),
        "{:?}",
        m.outcome(c)
    );
    assert_eq!(
        view.last_index(),
        LogIndex(1),
        "the failed entry is not visible"
    );
    assert!(view.with(RaftLog::is_poisoned));
    assert!(matches!(
        view.with(|l| l.check_append(&[entry(2, 1, 10)])),
        Err(LogError::Poisoned { .. })
    ));
}

/// Group commit: batches queued while a write is in the device's hands form ONE next group, with
/// one write and one fdatasync for all of them.
#[test]
fn batches_queued_while_a_write_is_in_flight_form_one_group() {
    let fs = SimFs::new();
    let (mut engine, view, task) = open_on(&fs);
    fs.set_deferred_io(true);
    let mut m = Manual::new(task);
    let first = m.persist(&mut engine, batch(vec![entry(1, 1, 10)], None, None));
    let started = fs.take_started_io();
    assert_eq!(started.len(), 1, "the first batch's write is in flight");
    let rest: Vec<usize> = (2..=16)
        .map(|i| m.persist(&mut engine, batch(vec![entry(i, 1, 10)], None, None)))
        .collect();
    assert!(
        fs.take_started_io().is_empty(),
        "nothing else starts while a write is in flight"
    );
    fs.complete_io(started[0]);
    m.settle();
    assert_eq!(m.outcome(first), Some(&Ok(())));
    let second = fs.take_started_io();
    assert_eq!(second.len(), 1, "the 15 queued batches go out as one write");
    assert!(rest.iter().all(|&id| m.outcome(id).is_none()));
    fs.complete_io(second[0]);
    m.settle();
    assert!(rest.iter().all(|&id| m.outcome(id) == Some(&Ok(()))));
    assert_eq!(engine.group_stats(), (2, 16));
    assert_eq!(view.last_index(), LogIndex(16));
}

/// Issue 11, finding 2, on the engine itself: a group's hard state (commit included) and its
/// entries are in the device's hands at the same time, so the state file's write can become
/// durable while the entries' cannot. A power loss there leaves a persisted commit index beyond
/// the log; the node must start from it (the commit index is clamped), which the code before the
/// fix refused ("inconsistent durable state"). On the old simulator's disk the entries always
/// landed first, so no simulated crash could produce this.
#[test]
fn a_hard_state_durable_before_its_entries_leaves_a_node_that_starts() {
    let fs = SimFs::new();
    let (mut engine, _view, task) = open_on(&fs);
    let mut m = Manual::new(task);
    m.persist(
        &mut engine,
        batch(
            (1..=3).map(|i| entry(i, 1, 10)).collect(),
            None,
            Some(hard(1, None, 0)),
        ),
    );
    fs.set_deferred_io(true);
    // A follower's Ready: new entries 4..=6 and, in the same group, a new term with the commit
    // index the leader sent (it covers the new entries).
    m.persist(
        &mut engine,
        batch(
            (4..=6).map(|i| entry(i, 2, 10)).collect(),
            None,
            Some(hard(2, None, 6)),
        ),
    );
    let started = fs.take_started_io();
    assert_eq!(
        started.len(),
        2,
        "the state file's write and the log's are in flight together"
    );
    // The state file's write completes; the power fails before the segment's does and loses
    // the segment's unsynced sectors.
    let state_write = started
        .iter()
        .copied()
        .find(|&id| {
            fs.io_target(id)
                .is_some_and(|p| p.ends_with("raft_state.meta"))
        })
        .expect("one write goes to the state file");
    fs.complete_io(state_write);
    drop(m);
    drop(engine);
    drop(_view);
    let mut lost_entries = false;
    for seed in 0..64 {
        let fs = fs_clone_after_loss(&fs, seed);
        let log = open_sim(&fs, 64 << 10);
        let state = RaftState::open_with(&fs, &sim_dir()).expect("state");
        let hs = state.state().hard_state();
        assert_eq!(
            (hs.term, hs.commit),
            (Term(2), LogIndex(6)),
            "the state write was durable"
        );
        lost_entries |= log.last_index() < LogIndex(6);
        let config = Config::new(NodeId(1), vec![NodeId(1), NodeId(2), NodeId(3)], seed);
        let node =
            RaftNode::new(config, hs, log).expect("a commit index beyond the log is clamped");
        assert!(node.commit_index() <= node.last_index());
        node.check_invariants();
    }
    assert!(
        lost_entries,
        "no seed lost the entries: the scenario did not happen"
    );
}

/// A copy of `fs` after a power loss drawn from `seed` (the original stays as it is).
fn fs_clone_after_loss(fs: &SimFs, seed: u64) -> SimFs {
    let copy = fs.deep_copy();
    copy.power_loss(seed);
    copy
}

/// Issue 18: the engine writes a rotation's two headers (the open segment's seal and the next
/// file's header) in parallel, and renames the next file into place only once BOTH are durable.
/// For either completion order this drives the engine on the simulated disk up to the rotation,
/// completes one header write, and checks that the rename was not issued yet (if it were, a
/// power loss could keep the rename without the seal: a sealed segment whose header misses
/// entries, a gap, `Corrupt`); then power losses at that point, and after the rename, must reopen
/// with every acknowledged entry. Fails if the rename (or the next append) starts early.
#[test]
fn a_rotation_renames_only_after_both_headers_are_durable() {
    for seal_first in [true, false] {
        let fs = SimFs::new();
        let (mut engine, view, task) = open_on(&fs);
        fs.set_deferred_io(true);
        let mut m = Manual::new(task);
        let mut acked: Vec<LogEntry> = Vec::new();
        // Append 1 KiB entries one batch at a time until a batch starts two writes at once
        // (the rotation's seal and header) instead of one append.
        let (rotating, index) = loop {
            let index = acked.len() as u64 + 1;
            let e = entry(index, 1, 1000);
            let id = m.persist(&mut engine, batch(vec![e.clone()], None, None));
            let started = fs.take_started_io();
            if started.len() == 2 {
                break (id, index);
            }
            assert_eq!(started.len(), 1, "one append write per batch");
            fs.complete_io(started[0]);
            m.settle();
            assert_eq!(m.outcome(id), Some(&Ok(())));
            acked.push(e);
            assert!(
                acked.len() < 200,
                "no rotation within 200 KiB of 64 KiB segments"
            );
        };
        // Identify the two writes by their files.
        let started = fs.io_in_flight();
        let targets: Vec<_> = started.iter().map(|&id| fs.io_target(id)).collect();
        let seal = started
            .iter()
            .zip(&targets)
            .find(|(_, t)| {
                t.as_ref()
                    .is_some_and(|p| p.to_string_lossy().contains("segment_"))
            })
            .map(|(&id, _)| id)
            .unwrap_or_else(|| panic!("one write seals the open segment: {targets:?}"));
        let header = *started.iter().find(|&&id| id != seal).expect("two writes");
        let new_name = sim_dir().join(rust_raft_log::storage::format::segment_file_name(LogIndex(
            index,
        )));
        let (first, second) = if seal_first {
            (seal, header)
        } else {
            (header, seal)
        };
        assert!(fs.complete_io(first));
        m.settle();
        assert!(
            !fs.paths().contains(&new_name),
            "seal_first={seal_first}: {} renamed into place before both headers were durable",
            new_name.display()
        );
        assert!(
            fs.take_started_io().is_empty(),
            "nothing else starts meanwhile"
        );
        assert_eq!(m.outcome(rotating), None);
        // A power loss now (one header durable, the other maybe): the log reopens with every
        // acknowledged entry, and the in-flight one was never written.
        for seed in 0..16 {
            let copy = fs_clone_after_loss(&fs, seed);
            let log = RaftLog::open_with(small_config(sim_dir()), std::sync::Arc::new(copy))
                .unwrap_or_else(|e| {
                    panic!("seal_first={seal_first} seed={seed}: reopen after a loss mid-rotation: {e}")
                });
            assert_eq!(log.last_index(), LogIndex(index - 1), "seed={seed}");
            assert_log_holds(&log, &acked);
        }
        assert!(fs.complete_io(second));
        m.settle();
        assert!(
            fs.paths().contains(&new_name),
            "renamed once both headers are durable"
        );
        // Now the rename's directory fsync and the first append into the new segment are in
        // flight together.
        let started = fs.take_started_io();
        assert_eq!(
            started.len(),
            2,
            "directory fsync + first append: {started:?}"
        );
        let dir_sync = *started
            .iter()
            .find(|&&id| fs.io_target(id).as_deref() == Some(sim_dir().as_path()))
            .expect("one of them syncs the directory");
        let append = *started.iter().find(|&&id| id != dir_sync).expect("two");
        // The append completes first: its entry is durable in the renamed file, but nothing is
        // acknowledged before the directory fsync.
        assert!(fs.complete_io(append));
        m.settle();
        assert_eq!(
            m.outcome(rotating),
            None,
            "acknowledged before the rename was durable"
        );
        // A power loss here keeps or undoes the rename: either the entry is in the new segment
        // (durable, never acknowledged: allowed) or its file is a used prepared file, which open
        // deletes. Every acknowledged entry is there either way.
        let mut undone = 0;
        for seed in 0..16 {
            let copy = fs_clone_after_loss(&fs, seed);
            let log = RaftLog::open_with(small_config(sim_dir()), std::sync::Arc::new(copy))
                .unwrap_or_else(|e| {
                    panic!("seal_first={seal_first} seed={seed}: reopen after the rename: {e}")
                });
            assert!(
                log.last_index() == LogIndex(index - 1) || log.last_index() == LogIndex(index),
                "seed={seed}: {}",
                log.last_index()
            );
            undone += usize::from(log.segment_paths().len() == 1);
            assert_log_holds(&log, &acked);
        }
        // The next segment's background preparation fsyncs the directory too, on its own thread;
        // if it did so before these losses, the rename was durable already and none can undo it
        // (a power loss then keeps every unsynced change only; checked after the losses, since
        // a rename once durable stays durable).
        let rename_durable = {
            let copy = fs.deep_copy();
            copy.power_loss_prefix(0, None);
            copy.paths().contains(&new_name)
        };
        assert!(
            undone > 0 || rename_durable,
            "some power loss undid the unsynced rename"
        );
        assert!(fs.complete_io(dir_sync));
        m.settle();
        assert_eq!(m.outcome(rotating), Some(&Ok(())));
        acked.push(entry(index, 1, 1000));
        assert_eq!(view.last_index(), LogIndex(index));
        drop(m);
        drop(engine);
        drop(view);
        let log = open_sim(&fs, 64 << 10);
        assert_log_holds(&log, &acked);
    }
}
