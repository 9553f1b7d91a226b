//! Linearizability of a recorded [`crate::history`], key by key.
//!
//! Keys are independent registers (put, get, compare-and-set, delete; the state is `Option<u64>`),
//! and linearizability is local (Herlihy & Wing 1990, Theorem 1): the history is linearizable
//! if and only if each key's sub-history is. So the history is split by key and each key is
//! searched on its own ([`search`], on as many threads as there are cores).
//!
//! Indeterminate operations (a write that failed or timed out: `completed` and `ret` are `None`)
//! return at +infinity and need not take effect at all: each may be linearized at any point after
//! its invocation, or never. A recorded failed read (there should be none) changes nothing and is
//! ignored.
//!
//! The answer is one of three ([`Outcome`]): linearizable; a violation, with the key and a
//! window of its operations around the point where the longest linearizable prefix could not be
//! extended; or unknown, when a key's search ran past its budget ([`Limits`]), naming the key.
//! Unknown is not a pass.
//!
//! # Why not a crate
//! Measured 2026-12 on this machine (2 cores) on the same generated histories (8 clients,
//! 8 keys, 5% of writes indeterminate): `todc-utils` 0.1.1 (`linearizability::WGLChecker`, Wing &
//! Gong / Lowe) has no notion of an operation that may not have taken effect, but its own
//! Jepsen loader puts the responses of such operations at the end of the history, which for a
//! register amounts to "any time, or never" (a write linearized after everything else is seen by
//! nobody). Fed that way (a throwaway adapter, not in the repo) it took 0.141 s for 5,000
//! operations, 1.203 s for 20,000 and 26.564 s (534 MB) for 100,000: its memo clones a
//! `Vec<bool>` of the whole history per step, so it grows quadratically. It answers a bool, with
//! no window to show. This checker takes 0.03 to 0.04 s for the same 100,000 operations
//! (`cargo run --release -p chaos --example checker_bench -- 100000 SEED`, seeds 1 and 2). A
//! planted stale read near the end, which forces an exhaustive search of its key, took 1.3 s
//! (seed 1) and 31.5 s with 854 MB (seed 2): violations are the expensive case. stateright's
//! tester checks its own actor models, not a recorded history.
//!
//! # Stages per key
//! The exact search with an eighth of the budget (enough for any linearizable history we have
//! generated), then the relaxed search ([`search::KeySearch::relaxed`], whose violations are
//! violations), then the exact search with the whole budget; a violation is confirmed by a
//! second search with independent fingerprint keys. Whatever none of them decides is unknown.

pub mod search;
pub mod synth;
#[cfg(test)]
mod tests;
pub mod watch;
#[cfg(test)]
mod watch_tests;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::history::Operation;
pub use search::{Effort, Frontier, KeyOutcome, Limits};

/// The checker's answer for one history.
#[derive(Debug)]
pub struct Verdict {
    pub operations: usize,
    pub indeterminate: usize,
    pub keys: usize,
    pub outcome: Outcome,
    /// Configurations and moves explored, summed over the keys.
    pub effort: Effort,
    pub elapsed: Duration,
}

/// Linearizable, not, or not decided within the budget.
#[derive(Debug)]
pub enum Outcome {
    Ok,
    /// The first key (by number) without a linearization; `others` counts further such keys.
    Violation {
        window: Box<Window>,
        others: Vec<u32>,
    },
    /// No violation found, but these keys' searches ran out of budget.
    Unknown {
        keys: Vec<(u32, Effort)>,
    },
}

/// The operations of one key around the point where its search could not go further.
#[derive(Debug, Clone)]
pub struct Window {
    pub key: u32,
    /// Determinate operations of the key, and how many of them the longest linearizable prefix
    /// holds.
    pub determinate: usize,
    pub linearized: usize,
    /// The register after that prefix.
    pub state: Option<u64>,
    /// The prefix's last operations, in linearization order.
    pub last: Vec<Operation>,
    /// The operations that could have gone next; none fits.
    pub stuck: Vec<Operation>,
    /// Other operations that bear on the stuck ones: the writers of the values they observe, and
    /// the operations that overlap them in time.
    pub related: Vec<Operation>,
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self.outcome, Outcome::Ok)
    }

    pub fn is_violation(&self) -> bool {
        matches!(self.outcome, Outcome::Violation { .. })
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self.outcome, Outcome::Unknown { .. })
    }
}

/// Checks `history` with the default budget.
pub fn check(history: &[Operation]) -> Verdict {
    check_with(history, Limits::default())
}

/// Checks `history`; each key's search stops at `limits`.
pub fn check_with(history: &[Operation], limits: Limits) -> Verdict {
    let started = Instant::now();
    let mut by_key: BTreeMap<u32, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key).or_default().push(op);
    }
    let keys: Vec<(u32, Vec<&Operation>)> = by_key.into_iter().collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, keys.len().max(1));
    // Keys are dealt round-robin to the threads; each result keeps its key's place.
    let mut results: Vec<Option<(KeyOutcome, Effort)>> = (0..keys.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let keys = &keys;
                scope.spawn(move || {
                    (t..keys.len())
                        .step_by(threads)
                        .map(|k| (k, check_key(&keys[k].1, limits)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            // A search thread has no panicking paths; if one did panic, its keys stay unknown.
            if let Ok(done) = h.join() {
                for (k, r) in done {
                    results[k] = Some(r);
                }
            }
        }
    });
    let mut effort = Effort::default();
    let mut violations = Vec::new();
    let mut unknown = Vec::new();
    for ((key, ops), result) in keys.iter().zip(results) {
        let (outcome, e) = result.unwrap_or((KeyOutcome::Unknown, Effort::default()));
        effort.states += e.states;
        effort.steps += e.steps;
        match outcome {
            KeyOutcome::Linearizable => {}
            KeyOutcome::Unknown => unknown.push((*key, e)),
            KeyOutcome::Violation(f) => violations.push(window(*key, ops, &f)),
        }
    }
    let outcome = if !violations.is_empty() {
        let others = violations[1..].iter().map(|w| w.key).collect();
        Outcome::Violation {
            window: Box::new(violations.swap_remove(0)),
            others,
        }
    } else if !unknown.is_empty() {
        Outcome::Unknown { keys: unknown }
    } else {
        Outcome::Ok
    };
    Verdict {
        operations: history.len(),
        indeterminate: history.iter().filter(|o| o.is_indeterminate()).count(),
        keys: keys.len(),
        outcome,
        effort,
        elapsed: started.elapsed(),
    }
}

/// One key. The exact search first; if it runs out of budget, the relaxed one (see
/// [`search::KeySearch::relaxed`]), whose violations are violations too. A violation is only
/// reported if a second search of the same kind, with independent fingerprint keys, finds it
/// too (see [`search`] on collisions).
fn check_key(ops: &[&Operation], limits: Limits) -> (KeyOutcome, Effort) {
    const SALTS: [u64; 2] = [0x6a09_e667_f3bc_c908, 0xbb67_ae85_84ca_a73b];
    let mut effort = Effort::default();
    // The exact search decides a linearizable history quickly; a small share of the budget
    // first, then the relaxed search, then the exact one with the whole budget.
    let small = Limits {
        states_max: limits.states_max / 8,
        steps_max: limits.steps_max / 8,
    };
    for (relaxed, limits) in [(false, small), (true, limits), (false, limits)] {
        let search = |salt| {
            let s = search::KeySearch::new(ops, salt);
            if relaxed {
                s.relaxed()
            } else {
                s
            }
        };
        let (first, e) = search(SALTS[0]).run(limits);
        effort.states += e.states;
        effort.steps += e.steps;
        match first {
            KeyOutcome::Unknown => continue,
            KeyOutcome::Linearizable if relaxed => continue,
            KeyOutcome::Linearizable => return (first, effort),
            KeyOutcome::Violation(_) => {}
        }
        let (second, e) = search(SALTS[1]).run(limits);
        effort.states += e.states;
        effort.steps += e.steps;
        return match second {
            KeyOutcome::Violation(_) => (first, effort),
            _ => (KeyOutcome::Unknown, effort),
        };
    }
    (KeyOutcome::Unknown, effort)
}

fn window(key: u32, ops: &[&Operation], f: &Frontier) -> Window {
    let stuck: Vec<Operation> = f.stuck.iter().map(|&i| ops[i].clone()).collect();
    let observed: Vec<u64> = stuck
        .iter()
        .filter_map(|o| match (o.call, o.ret) {
            (_, Some(crate::history::Ret::Get(Some(v)))) => Some(v),
            (
                crate::history::Call::Cas {
                    expect: Some(v), ..
                },
                _,
            ) => Some(v),
            _ => None,
        })
        .collect();
    let from = stuck.iter().map(|o| o.invoked).min().unwrap_or(0);
    let to = stuck
        .iter()
        .filter_map(|o| o.completed)
        .max()
        .unwrap_or(u64::MAX);
    let shown: Vec<usize> = f.last.iter().chain(&f.stuck).copied().collect();
    let writes = |o: &Operation| match o.call {
        crate::history::Call::Put(v) | crate::history::Call::Cas { new: v, .. } => Some(v),
        _ => None,
    };
    let others = || {
        ops.iter()
            .enumerate()
            .filter(|(i, _)| !shown.contains(i))
            .map(|(_, o)| *o)
    };
    // A window, not a dump: the writers of the values the stuck operations observe, then the
    // operations answered (or sent) while they were in flight, the earliest first.
    let mut related: Vec<Operation> = others()
        .filter(|o| writes(o).is_some_and(|v| observed.contains(&v)))
        .cloned()
        .collect();
    let mut overlapping: Vec<Operation> = others()
        .filter(|o| writes(o).is_none_or(|v| !observed.contains(&v)))
        .filter(|o| o.invoked <= to && o.completed.unwrap_or(o.invoked) >= from)
        .cloned()
        .collect();
    overlapping.sort_by_key(|o| o.invoked);
    overlapping.truncate(10);
    related.extend(overlapping);
    Window {
        key,
        determinate: f.determinate,
        linearized: f.linearized,
        state: f.state,
        last: f.last.iter().map(|&i| ops[i].clone()).collect(),
        stuck,
        related,
    }
}

fn ms(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e6)
}

/// One operation on one line: client, call, answer, invoked and completed (ms), node.
pub struct Line<'a>(pub &'a Operation);

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        let ret = match o.ret {
            Some(r) => format!("{r:?}"),
            None => "indeterminate".to_string(),
        };
        let done = o.completed.map_or("-".to_string(), ms);
        write!(
            f,
            "client {:>3}  {:<38} -> {:<16} {:>12} .. {:>12} ms  node {}",
            o.client,
            format!("{:?}", o.call),
            ret,
            ms(o.invoked),
            done,
            o.node
        )
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let summary = format!(
            "{} operations ({} indeterminate) on {} keys; {} configurations, {:.3} s",
            self.operations,
            self.indeterminate,
            self.keys,
            self.effort.states,
            self.elapsed.as_secs_f64()
        );
        match &self.outcome {
            Outcome::Ok => write!(f, "linearizable: {summary}"),
            Outcome::Unknown { keys } => {
                write!(f, "UNKNOWN (search budget exhausted): {summary}; keys:")?;
                for (k, e) in keys {
                    write!(f, " {k} ({} configurations, {} moves)", e.states, e.steps)?;
                }
                Ok(())
            }
            Outcome::Violation { window: w, others } => {
                write!(f, "NOT LINEARIZABLE: {summary}")?;
                write!(
                    f,
                    "\n  key {}: the longest linearizable prefix holds {} of its {} answered \
                     operations; the register after it: {:?}",
                    w.key, w.linearized, w.determinate, w.state
                )?;
                write!(f, "\n  the prefix ends with (in linearization order):")?;
                for o in &w.last {
                    write!(f, "\n    {}", Line(o))?;
                }
                write!(f, "\n  none of these can go next:")?;
                for o in &w.stuck {
                    write!(f, "\n    {}", Line(o))?;
                }
                if !w.related.is_empty() {
                    write!(
                        f,
                        "\n  related (writers of the values read, overlapping ops):"
                    )?;
                    for o in &w.related {
                        write!(f, "\n    {}", Line(o))?;
                    }
                }
                if !others.is_empty() {
                    write!(f, "\n  other keys without a linearization: {others:?}")?;
                }
                Ok(())
            }
        }
    }
}
