//! Crash test with real processes (SIGKILL).
//!
//! ```text
//!   parent (this test)                          child (this binary again, CRASH_CHILD_DIR set)
//!   ------------------                          ------------------------------------------------
//!   spawn child ------------------------------> open the log and state file (recovery), 4 tasks on
//!                                               one tokio-uring thread append through the append
//!                                               engine, the node's write path (one sometimes
//!                                               truncates a suffix with a new term in the state
//!                                               file, printing "trunc <from> <new term>" first,
//!                                               "term <t>" once durable); after each durable ack
//!   read "ack <index> <term> <crc> <len>" <---- prints "ack ..." (a line = a promise: on disk)
//!   after a random delay: SIGKILL ------------> (dies anywhere: mid-write, mid-sync, mid-rotation,
//!                                               mid state-file write)
//!   reopen the log and state file, check every
//!   acked entry is present with its term and
//!   checksum, and the acked term; repeat
//! ```
//! SIGKILL keeps the page cache, so this tests process crashes (the power-loss test covers the
//! rest). `CRASH_ROUNDS` (default 50) and `CRASH_SEED` control the run; the seed is printed.

mod storage_common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rust_raft_log::storage::state::RaftState;
use rust_raft_log::storage::{LogConfig, RaftLog};
use rust_raft_log::types::{EntryType, LogIndex, Term};
use storage_common::*;

const CHILD_ENV: &str = "CRASH_CHILD_DIR";

/// Starts every record the child prints.
const MARK: &str = "@crash@ ";

fn config(dir: &Path) -> LogConfig {
    let mut c = LogConfig::new(dir);
    // Small segments: the child rotates often, so kills land in rotations too.
    c.segment_size_bytes = 256 << 10;
    c
}

/// The child's body: append until killed. Runs only when the parent set `CRASH_CHILD_DIR`.
#[test]
fn crash_child_process() {
    use std::cell::Cell;
    use std::rc::Rc;

    use rust_raft_log::raft::HardState;
    use rust_raft_log::storage::engine::{Durable, Engine, WriteBatch};
    use rust_raft_log::storage::state::RaftState;
    use rust_raft_log::types::LogEntry;

    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let base_term: u64 = std::env::var("CRASH_CHILD_TERM").unwrap().parse().unwrap();
    let seed: u64 = std::env::var("CRASH_CHILD_SEED").unwrap().parse().unwrap();
    let log = RaftLog::open(config(Path::new(&dir))).unwrap();
    let state = RaftState::open(Path::new(&dir)).unwrap();
    tokio_uring::start(async move {
        let next = Rc::new(Cell::new(log.last_index().next().0));
        let (engine, _view, task) = Engine::new(log, state);
        tokio::task::spawn_local(task.run());
        let engine = Rc::new(std::cell::RefCell::new(engine));
        let term = Rc::new(Cell::new(base_term));
        let tasks: Vec<_> = (0..4u64)
            .map(|t| {
                let (engine, term, next) = (Rc::clone(&engine), Rc::clone(&term), Rc::clone(&next));
                tokio::task::spawn_local(async move {
                    let mut rng = Rng(seed ^ (t + 1).wrapping_mul(0x9E37_79B9));
                    loop {
                        let last = next.get() - 1;
                        if t == 0 && rng.chance(40) && last >= 2 {
                            // A conflicting suffix is cut (Raft §5.3) by a leader of a new term,
                            // which the same batch writes to the state file; later entries get
                            // the new term.
                            let from = last - rng.below(20.min(last - 1));
                            let new_term = term.get() + 1;
                            // Printed before the truncation is submitted: if the kill lands inside
                            // it, the parent knows entries >= from may be gone.
                            println!("{MARK}trunc {from} {new_term}");
                            next.set(from);
                            term.set(new_term);
                            let e = entry_with(from, new_term, &mut rng);
                            let batch = Rc::new(WriteBatch {
                                reset: None,
                                truncate_from: Some(LogIndex(from)),
                                entries: vec![e.0],
                                hard_state: Some(HardState {
                                    term: Term(new_term),
                                    vote: None,
                                    commit: LogIndex(0),
                                }),
                                must_sync: true,
                            });
                            next.set(from + 1);
                            let durable = engine.borrow_mut().persist(batch);
                            durable.await.unwrap();
                            println!("{MARK}term {new_term}");
                            println!("{MARK}ack {from} {new_term} {} {}", e.1, e.2);
                            continue;
                        }
                        let index = next.get();
                        next.set(index + 1);
                        let t_now = term.get();
                        let (e, crc, len) = entry_with(index, t_now, &mut rng);
                        let batch = Rc::new(WriteBatch {
                            reset: None,
                            truncate_from: None,
                            entries: vec![e],
                            hard_state: None,
                            must_sync: true,
                        });
                        let durable = engine.borrow_mut().persist(batch);
                        durable.await.unwrap();
                        println!("{MARK}ack {index} {t_now} {crc} {len}");
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });

    /// An entry with a random payload, and the payload's checksum and length.
    fn entry_with(index: u64, term: u64, rng: &mut Rng) -> (LogEntry, u32, usize) {
        let len = rng.below(3000) as usize;
        let payload: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let crc = crc32c::crc32c(&payload);
        let e = LogEntry {
            term: Term(term),
            index: LogIndex(index),
            entry_type: EntryType::Normal,
            payload,
        };
        (e, crc, len)
    }
}

/// One line of the child's output.
enum Line {
    Ack(u64, u64, u32, usize),
    Trunc(u64, u64),
    /// The state file durably holds this term.
    Term(u64),
}

#[test]
fn crash_sigkill_keeps_every_acknowledged_entry() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let rounds: u64 = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let seed = seed_from_env("CRASH_SEED");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node_1");
    let exe = std::env::current_exe().unwrap();
    // index -> (term, crc, len) of every acknowledged entry.
    let mut acked: BTreeMap<u64, (u64, u32, usize)> = BTreeMap::new();
    // (from, new term) of every truncation the children started.
    let mut truncations: Vec<(u64, u64)> = Vec::new();
    let mut acked_term = 0u64;
    let started = Instant::now();
    for round in 0..rounds {
        let ctx = format!("round {round} (reproduce with CRASH_SEED={seed})");
        // Each round's terms are above every earlier round's (a child raises its term by one
        // per truncation, far fewer than 1,000 times).
        let term = (round + 1) * 1000;
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir)
            .env("CRASH_CHILD_TERM", term.to_string())
            .env("CRASH_CHILD_SEED", rng.next_u64().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The test harness prints "test crash_child_process ... " without a newline
                // before the child's first line: find the record by its mark.
                let Some(at) = line.find(MARK) else { continue };
                let f: Vec<&str> = line[at + MARK.len()..].split_whitespace().collect();
                let num = |i: usize| f[i].parse::<u64>().unwrap();
                match f.first() {
                    Some(&"ack") if f.len() == 5 => {
                        lines.push(Line::Ack(num(1), num(2), num(3) as u32, num(4) as usize))
                    }
                    Some(&"trunc") if f.len() == 3 => lines.push(Line::Trunc(num(1), num(2))),
                    Some(&"term") if f.len() == 2 => lines.push(Line::Term(num(1))),
                    _ => {}
                }
            }
            lines
        });
        // Kill at a random moment: sometimes during start-up and recovery, mostly mid-append.
        let delay = Duration::from_millis(if rng.chance(8) {
            rng.below(5)
        } else {
            5 + rng.below(60)
        });
        std::thread::sleep(delay);
        // SAFETY: plain kill(2) on the child's pid, which we have not yet waited for.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
        }
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "{ctx}: the child exited on its own: {status}"
        );
        for line in reader.join().unwrap() {
            match line {
                Line::Trunc(from, new_term) => {
                    // Entries >= from are no longer promised (the truncation may have happened
                    // or not); acks of older terms at >= from that print later are not either.
                    acked.retain(|&i, _| i < from);
                    truncations.push((from, new_term));
                }
                Line::Ack(index, t, crc, len) => {
                    if !truncations.iter().any(|&(f, nt)| index >= f && t < nt) {
                        acked.insert(index, (t, crc, len));
                    }
                }
                Line::Term(t) => acked_term = acked_term.max(t),
            }
        }
        let state = RaftState::open(&dir).unwrap_or_else(|e| panic!("{ctx}: state file: {e}"));
        assert!(
            state.state().current_term.0 >= acked_term,
            "{ctx}: the state file holds term {}, below the acknowledged {acked_term}",
            state.state().current_term
        );
        drop(state);

        let log = RaftLog::open(config(&dir)).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
        log.check_invariants();
        let last_acked = acked.keys().next_back().copied().unwrap_or(0);
        assert!(
            log.last_index().0 >= last_acked,
            "{ctx}: last index {} (term {}) < last acknowledged {last_acked}; acked tail {:?}; \
             truncations {:?}; recovery {:?}",
            log.last_index(),
            log.last_term(),
            acked
                .iter()
                .rev()
                .take(12)
                .map(|(i, v)| (*i, v.0))
                .collect::<Vec<_>>(),
            &truncations[truncations.len().saturating_sub(4)..],
            log.recovery_report()
        );
        for (&index, &(t, crc, len)) in &acked {
            let e = log
                .entry(LogIndex(index))
                .unwrap_or_else(|e| panic!("{ctx}: acknowledged entry {index}: {e}"));
            assert_eq!(e.term, Term(t), "{ctx}: entry {index} term");
            assert_eq!(e.payload.len(), len, "{ctx}: entry {index} length");
            assert_eq!(
                crc32c::crc32c(e.payload),
                crc,
                "{ctx}: entry {index} payload"
            );
        }
    }
    eprintln!(
        "{rounds} SIGKILL rounds, {} acknowledged entries checked, {} truncations, {:.1} s",
        acked.len(),
        truncations.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        !acked.is_empty(),
        "no child ever acknowledged an entry: the test is not testing"
    );
}
