//! Crash test with real processes (SIGKILL).
//!
//! ```text
//!   parent (this test)                          child (this binary again, CRASH_CHILD_DIR set)
//!   ------------------                          ------------------------------------------------
//!   spawn child ------------------------------> open the log (recovery), 4 threads append through
//!                                               the LogWriter (one sometimes truncates a suffix,
//!                                               printing "trunc <from> <new term>" first); after
//!                                               each durable ack prints
//!   read "ack <index> <term> <crc> <len>" <---- "ack ..." (a line = a promise: it is on disk)
//!   after a random delay: SIGKILL ------------> (dies anywhere: mid-write, mid-sync, mid-rotation)
//!   reopen the log, check every acked entry
//!   is present with its term and checksum; repeat
//! ```
//! SIGKILL keeps the page cache, so this tests process crashes (the power-loss test covers the
//! rest). `CRASH_ROUNDS` (default 50) and `CRASH_SEED` control the run; the seed is printed.

mod storage_common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rust_raft_log::storage::{LogConfig, LogError, LogWriter, RaftLog};
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
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let base_term: u64 = std::env::var("CRASH_CHILD_TERM").unwrap().parse().unwrap();
    let seed: u64 = std::env::var("CRASH_CHILD_SEED").unwrap().parse().unwrap();
    let log = RaftLog::open(config(Path::new(&dir))).unwrap();
    let w = LogWriter::spawn(log).unwrap();
    let term = Arc::new(AtomicU64::new(base_term));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (w, term) = (w.clone(), Arc::clone(&term));
            std::thread::spawn(move || {
                let mut rng = Rng(seed ^ (t + 1).wrapping_mul(0x9E37_79B9));
                loop {
                    if t == 0 && rng.chance(40) {
                        // A conflicting suffix is cut (Raft §5.3); later entries get a new term.
                        let last = w.read().last_index().0;
                        if last >= 2 {
                            let from = last - rng.below(20.min(last - 1));
                            let new_term = term.load(Ordering::SeqCst) + 1;
                            // Printed before the truncation starts: if the kill lands inside it,
                            // the parent knows entries >= from may be gone.
                            println!("{MARK}trunc {from} {new_term}");
                            w.truncate_suffix(LogIndex(from)).wait().unwrap();
                            term.store(new_term, Ordering::SeqCst);
                        }
                        continue;
                    }
                    let len = rng.below(3000) as usize;
                    let payload: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
                    let crc = crc32c::crc32c(&payload);
                    let t_now = term.load(Ordering::SeqCst);
                    match w
                        .append_new(Term(t_now), vec![(EntryType::Normal, payload)])
                        .wait()
                    {
                        Ok(index) => println!("{MARK}ack {} {t_now} {crc} {len}", index.0),
                        // Raced with a truncation that raised the term: not acknowledged.
                        Err(LogError::TermRegression { .. }) => {}
                        Err(e) => panic!("child append: {e}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// One line of the child's output.
enum Line {
    Ack(u64, u64, u32, usize),
    Trunc(u64, u64),
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
            }
        }

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
