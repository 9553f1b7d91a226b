//! What a run prints: counts, failures by reason and by fault, findings, the checker's verdict,
//! and one machine-readable `chaos-result` line; and the history saved as JSON lines.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;

use crate::run::RunReport;

/// Failures that began while fault `i` was on or after it (until the next fault began).
pub fn failures_per_fault(report: &RunReport) -> Vec<usize> {
    let faults = &report.faults;
    (0..faults.len())
        .map(|i| {
            let from = faults[i].began;
            let to = faults.get(i + 1).map_or(u64::MAX, |f| f.began);
            report
                .failures
                .iter()
                .filter(|f| f.at >= from && f.at < to)
                .count()
        })
        .collect()
}

/// The longest write pause around each fault, in ns: the longest time between two successive
/// answered writes (puts, compare-and-sets, deletes; from any client, to any member) among the
/// gaps that END in the fault's window (from its beginning until the next fault began, or the end
/// of the run). A pause that a fault causes starts at the last write answered before it and ends
/// with the first one after, so it counts whole, and for that fault. `run_end` (when the workload
/// stopped) closes a pause still running then. What a client sees as "the cluster stopped accepting writes".
pub fn write_pauses(
    operations: &[crate::history::Operation],
    faults: &[crate::faults::FaultRecord],
    run_end: u64,
) -> Vec<u64> {
    let mut acks: Vec<u64> = operations
        .iter()
        .filter(|op| !matches!(op.call, crate::history::Call::Get))
        .filter_map(|op| op.completed)
        .collect();
    acks.push(run_end);
    acks.sort_unstable();
    (0..faults.len())
        .map(|i| {
            let from = faults[i].began;
            let to = faults
                .get(i + 1)
                .map_or(run_end.saturating_add(1), |f| f.began);
            let first = acks.partition_point(|&t| t < from);
            let mut prev = first.checked_sub(1).map_or(from, |k| acks[k]);
            let mut longest = 0;
            for &t in acks[first..].iter().take_while(|&&t| t < to) {
                longest = longest.max(t - prev);
                prev = t;
            }
            longest
        })
        .collect()
}

/// The median and the largest of `values` (0 when empty).
fn median_max(values: &[u64]) -> (u64, u64) {
    let mut v = values.to_vec();
    v.sort_unstable();
    (
        v.get(v.len() / 2).copied().unwrap_or(0),
        v.last().copied().unwrap_or(0),
    )
}

/// The printed summary.
pub fn render(report: &RunReport) -> String {
    let mut out = String::new();
    let plan = &report.plan;
    let failed_writes = report.failures.iter().filter(|f| f.write).count();
    let failed_reads = report.failures.len() - failed_writes;
    let _ = writeln!(
        out,
        "operations: {} answered, {} failed or timed out ({} writes, recorded as indeterminate; \
         {} reads), {} recorded in the history",
        report.ok,
        report.failures.len(),
        failed_writes,
        failed_reads,
        report.operations.len()
    );
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &report.failures {
        *reasons.entry(f.reason.as_str()).or_default() += 1;
    }
    let mut reasons: Vec<_> = reasons.into_iter().collect();
    reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
    for (reason, n) in reasons.iter().take(8) {
        let _ = writeln!(out, "  {n:>7}  {reason}");
    }
    let per_fault = failures_per_fault(report);
    let pauses = write_pauses(
        &report.operations,
        &report.faults,
        // The workload stops at the planned duration; what follows (recovery, HashKV) is not a
        // pause.
        report.plan.duration.as_nanos() as u64,
    );
    if !report.faults.is_empty() {
        let _ = writeln!(out, "faults:");
        for ((f, n), pause) in report.faults.iter().zip(&per_fault).zip(&pauses) {
            let _ = writeln!(
                out,
                "  {:>6.1} s .. {:>6.1} s  {:<20} {:?}: {} failed requests, longest write pause \
                 {:.1} ms",
                f.began as f64 / 1e9,
                f.ended as f64 / 1e9,
                f.kind.name(),
                f.targets,
                n,
                *pause as f64 / 1e6
            );
        }
    }
    let (pause_median, pause_max) = median_max(&pauses);
    let _ = writeln!(
        out,
        "HashKV after the run (slot: (revision, hash)): {:?}",
        report.hashes
    );
    if report.findings.is_empty() {
        let _ = writeln!(out, "findings: none");
    } else {
        let _ = writeln!(out, "findings:");
        for f in &report.findings {
            let _ = writeln!(out, "  - {f}");
        }
    }
    let _ = writeln!(out, "checker: {}", report.verdict);
    if plan.watchers > 0 {
        let _ = writeln!(out, "watch checker: {}", report.watch_verdict);
    }
    let per = if report.faults.is_empty() {
        0.0
    } else {
        report.failures.len() as f64 / report.faults.len() as f64
    };
    let _ = writeln!(
        out,
        "chaos-result flavor={} nodes={} seed={} seconds={:.0} answered={} failed={} faults={} \
         failed_per_fault={:.1} nospace={} findings={} verdict={} watchers={} watch_streams={} \
         watch_events={} watch_anomalies={} write_pause_median_ms={:.1} write_pause_max_ms={:.1} \
         voters_max={} leaders_removed={} final_members={}",
        plan.flavor.name(),
        plan.nodes,
        plan.workload.seed,
        report.elapsed.as_secs_f64(),
        report.ok,
        report.failures.len(),
        report.faults.len(),
        per,
        report
            .failures
            .iter()
            .filter(|f| f.reason.contains("database space exceeded"))
            .count(),
        report.findings.len(),
        if report.verdict.is_linearizable() {
            "linearizable"
        } else if report.verdict.is_violation() {
            "NOT-LINEARIZABLE"
        } else {
            "UNKNOWN"
        },
        report.watch_verdict.watchers,
        report.watch_verdict.streams,
        report.watch_verdict.events,
        report.watch_verdict.anomalies.len(),
        pause_median as f64 / 1e6,
        pause_max as f64 / 1e6,
        report.voters_max,
        report.leaders_removed,
        report.final_members.len()
    );
    if !report.passed() {
        let _ = writeln!(
            out,
            "reproduce: chaos --seed {} --flavor {} --nodes {} --clients {} --keys {} --duration {} \
             --interval {} --hold {} --faults {} --watchers {}",
            plan.workload.seed,
            plan.flavor.name(),
            plan.nodes,
            plan.workload.clients,
            plan.workload.keys,
            plan.duration.as_secs(),
            plan.interval.as_secs_f64(),
            plan.hold.as_secs_f64(),
            plan.faults.iter().map(|f| f.name()).collect::<Vec<_>>().join(","),
            plan.watchers
        );
    }
    out
}

/// Writes `history.jsonl` into the run's directory.
pub fn save_history(report: &RunReport) -> std::io::Result<()> {
    let path = report.plan.dir.join("history.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for op in &report.operations {
        serde_json::to_writer(&mut file, op)?;
        file.write_all(b"\n")?;
    }
    file.flush()
}

/// Writes `watches.jsonl` into the run's directory: every watcher's records (one JSON record a
/// line, watcher by watcher, each in arrival order).
pub fn save_watches(report: &RunReport) -> std::io::Result<()> {
    let path = report.plan.dir.join("watches.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for record in &report.watches {
        serde_json::to_writer(&mut file, record)?;
        file.write_all(b"\n")?;
    }
    file.flush()
}

/// Why a saved history cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {source}")]
    Parse {
        line: usize,
        source: serde_json::Error,
    },
}

/// Reads a history saved by [`save_history`] (one JSON operation per line; blank lines skipped).
pub fn load_history(path: &std::path::Path) -> Result<Vec<crate::history::Operation>, LoadError> {
    load_jsonl(path)
}

/// Reads watch records saved by [`save_watches`].
pub fn load_watches(
    path: &std::path::Path,
) -> Result<Vec<crate::watchers::WatchRecord>, LoadError> {
    load_jsonl(path)
}

fn load_jsonl<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<Vec<T>, LoadError> {
    use std::io::BufRead as _;
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut items = Vec::new();
    for (i, line) in file.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let item = serde_json::from_str(&line).map_err(|source| LoadError::Parse {
            line: i + 1,
            source,
        })?;
        items.push(item);
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::write_pauses;
    use crate::faults::{FaultKind, FaultRecord};
    use crate::history::{Call, Operation, Ret};

    fn op(call: Call, completed: Option<u64>) -> Operation {
        Operation {
            client: 0,
            key: 0,
            call,
            invoked: 0,
            completed,
            ret: completed.map(|_| Ret::Put),
            node: 1,
            revision: None,
        }
    }

    fn fault(began: u64) -> FaultRecord {
        FaultRecord {
            kind: FaultKind::KillLeader,
            targets: vec![1],
            began,
            ended: began + 3,
        }
    }

    #[test]
    fn a_pause_counts_from_the_last_write_answered_before_the_fault() {
        // Writes at 0, 10, 40 (the gap 10..40 straddles the fault at 20), 45; reads do not count,
        // nor do failed writes.
        let ops = vec![
            op(Call::Put(1), Some(0)),
            op(Call::Put(2), Some(10)),
            op(Call::Get, Some(30)),
            op(Call::Put(3), None),
            op(Call::Delete, Some(40)),
            op(Call::Put(4), Some(45)),
        ];
        assert_eq!(write_pauses(&ops, &[fault(20)], 50), vec![30]);
    }

    #[test]
    fn each_fault_gets_the_longest_gap_in_its_own_window() {
        let ops: Vec<_> = [0, 5, 10, 60, 65, 70, 71, 200]
            .into_iter()
            .map(|t| op(Call::Put(t), Some(t)))
            .collect();
        // Fault 1 (from 8 until 100): 10..60 = 50 is the longest (71..200 ends after its window);
        // fault 2 (from 100 to the end at 300): 71..200 = 129, then 200..300 to the end.
        assert_eq!(
            write_pauses(&ops, &[fault(8), fault(100)], 300),
            vec![50, 129]
        );
    }

    #[test]
    fn no_write_after_a_fault_is_a_pause_to_the_end_of_its_window() {
        let ops = vec![op(Call::Put(1), Some(5))];
        assert_eq!(write_pauses(&ops, &[fault(10)], 100), vec![95]);
    }
}
