//! The whole life of a 3-node cluster of real processes on loopback, under client load.
//!
//! ```text
//!   32 proposers ──Propose──▶ leader          (10,000 acknowledged proposals in all)
//!     at   1,000 acked: kill -9 follower A
//!     at   4,000 acked: restart A             (down for ~3,000 entries: it must catch up)
//!     A caught up:      kill -9 follower B
//!     1,500 acked later: restart B
//!     1,000 acked later: kill -9 the leader    (a new leader takes over)
//!     1,000 acked later: restart the old leader; the load goes on to >= 10,000 acked
//!   converge ─▶ SIGTERM all (clean exit) ─▶ read the three logs from disk:
//!     identical, and every acknowledged (index, term, payload) is in them
//!   restart all ─▶ a leader; 300 more proposals continue the log ─▶ stop ─▶ check again
//! ```
//! A proposal is "acknowledged" when Propose answered Committed { index, term }; proposals whose
//! outcome is unknown (the leader died, a timeout) are not counted and may or may not be in the
//! log. Failure messages carry the ports, the directory and the end of every node's output.

mod process_cluster;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use process_cluster::{propose, Cluster, OperatorClient, Settings};
use rust_raft_log::driver::ProposeOutcome;
use rust_raft_log::raft::{Role, Storage};
use rust_raft_log::storage::{LogConfig, RaftLog};
use rust_raft_log::types::{EntryType, LogEntry, LogIndex, Term};

const PROPOSALS: usize = 10_000;
const AFTER_RESTART: usize = 300;
const PROPOSERS: usize = 32;
const SEGMENT_BYTES: u64 = 256 << 10;
/// Bounds for a loaded 2-core CI machine; none of them is a performance claim.
const LEADER_WAIT: Duration = Duration::from_secs(20);
const CATCH_UP_WAIT: Duration = Duration::from_secs(30);
const PHASE_WAIT: Duration = Duration::from_secs(60);

/// What the proposers share.
struct Load {
    clients: HashMap<u32, OperatorClient>,
    /// The node the proposers currently send to (a guess: NotLeader answers correct it).
    target: AtomicU32,
    next_payload: AtomicU64,
    acked_count: AtomicUsize,
    /// Proposers stop once `acked_count` reaches it (the schedule lowers it from `usize::MAX`
    /// after its last step, so the load never stops before the last kill and restart).
    goal: AtomicUsize,
    /// (index, term, payload) of every acknowledged proposal.
    acked: Mutex<Vec<(LogIndex, Term, Vec<u8>)>>,
    ids: Vec<u32>,
}

fn payload(n: u64) -> Vec<u8> {
    // Unique and recognisable; 100 bytes, so the 10,000 entries span several 256 KiB segments
    // (rotation, and catch-up reads across segment boundaries, are part of the test).
    let mut p = format!("lifecycle proposal {n:010} ").into_bytes();
    p.resize(100, b'.');
    p
}

async fn proposer(load: Arc<Load>) {
    while load.acked_count.load(Ordering::Relaxed) < load.goal.load(Ordering::Relaxed) {
        let target = load.target.load(Ordering::Relaxed);
        let mut client = load.clients[&target].clone();
        let n = load.next_payload.fetch_add(1, Ordering::Relaxed);
        let bytes = payload(n);
        match propose(&mut client, bytes.clone(), Duration::from_secs(3)).await {
            Ok(ProposeOutcome::Committed { index, term }) => {
                load.acked
                    .lock()
                    .expect("no proposer panics while holding the lock")
                    .push((index, term, bytes));
                load.acked_count.fetch_add(1, Ordering::Relaxed);
            }
            Ok(ProposeOutcome::NotLeader {
                leader: Some(leader),
                ..
            }) if load.clients.contains_key(&leader.0) => {
                let _ = load.target.compare_exchange(
                    target,
                    leader.0,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Ok(ProposeOutcome::NotLeader { .. }) | Err(_) => {
                // No leader known, or this node is down: try the next one after a short pause.
                let next = load.ids[(load.ids.iter().position(|i| *i == target).unwrap_or(0) + 1)
                    % load.ids.len()];
                let _ = load.target.compare_exchange(
                    target,
                    next,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Waits until `load` has `goal` acknowledgements (panics after `bound`).
async fn wait_acked(load: &Load, goal: usize, bound: Duration, cluster: &Cluster) {
    let started = Instant::now();
    while load.acked_count.load(Ordering::Relaxed) < goal {
        assert!(
            started.elapsed() < bound,
            "only {} of {goal} proposals acknowledged within {bound:?}\n{}",
            load.acked_count.load(Ordering::Relaxed),
            cluster.describe()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every node runs, one leads, and all have the leader's last index committed and
/// applied: the logs are then identical up to their common last index.
async fn converge(cluster: &mut Cluster) -> (u32, LogIndex) {
    let started = Instant::now();
    loop {
        let seen = cluster.poll().await;
        if seen.len() == cluster.ids().len() {
            if let Some(leader) = seen.iter().find(|s| s.role == Role::Leader) {
                let last = leader.last_log_index;
                if seen.iter().all(|s| {
                    s.last_log_index == last && s.commit_index == last && s.applied_index == last
                }) {
                    return (leader.node_id.0, last);
                }
            }
        }
        assert!(
            started.elapsed() < CATCH_UP_WAIT,
            "the cluster did not converge within {CATCH_UP_WAIT:?}: {seen:?}\n{}",
            cluster.describe()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM every node, `leader` last; each must exit cleanly (graceful shutdown) within the
/// bound. The leader goes last because stopping it first would let the others elect a new
/// leader, whose no-op entry could reach only some logs before they stop.
fn stop_all(cluster: &mut Cluster, leader: u32) {
    let mut order = cluster.running();
    order.sort_by_key(|id| *id == leader);
    for id in order {
        let status = cluster.terminate(id, Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "node {id} did not stop cleanly on SIGTERM: {status:?}\n{}",
            cluster.describe()
        );
    }
}

/// Reads a stopped node's whole log from its segments.
fn read_log(dir: &Path) -> Vec<LogEntry> {
    let log = RaftLog::open(LogConfig {
        segment_size_bytes: SEGMENT_BYTES,
        ..LogConfig::new(dir)
    })
    .unwrap_or_else(|e| panic!("open the log in {}: {e}", dir.display()));
    let mut entries = Vec::new();
    let (mut next, last) = (Storage::first_index(&log), Storage::last_index(&log));
    while next <= last {
        let chunk = Storage::entries(&log, next, last.next(), 4 << 20);
        next = LogIndex(next.0 + chunk.len() as u64);
        entries.extend(chunk);
    }
    entries
}

/// The three logs on disk are identical, end at `last`, and hold every acknowledged proposal.
fn check_logs(cluster: &Cluster, last: LogIndex, acked: &[(LogIndex, Term, Vec<u8>)]) {
    let logs: Vec<(u32, Vec<LogEntry>)> = cluster
        .ids()
        .into_iter()
        .map(|id| (id, read_log(&cluster.node_dir(id))))
        .collect();
    let (first_id, reference) = &logs[0];
    assert_eq!(
        reference.last().map(|e| e.index),
        Some(last),
        "node {first_id}'s log on disk does not end at the converged index"
    );
    assert_eq!(reference.first().map(|e| e.index), Some(LogIndex(1)));
    for (id, log) in &logs[1..] {
        assert_eq!(
            log.len(),
            reference.len(),
            "nodes {first_id} and {id} differ in length"
        );
        if let Some((a, b)) = reference.iter().zip(log).find(|(a, b)| a != b) {
            panic!(
                "nodes {first_id} and {id} differ at index {}: {a:?} vs {b:?}",
                a.index
            );
        }
    }
    let mut indexes: Vec<LogIndex> = acked.iter().map(|(i, _, _)| *i).collect();
    indexes.sort_unstable();
    indexes.dedup();
    assert_eq!(
        indexes.len(),
        acked.len(),
        "two proposals acknowledged at one index"
    );
    for (index, term, payload) in acked {
        let entry = &reference[(index.0 - 1) as usize];
        assert_eq!(entry.index, *index);
        assert!(
            entry.term == *term
                && entry.entry_type == EntryType::Normal
                && entry.payload == *payload,
            "acknowledged proposal at {index} (term {term}, {:?}) is not in the log: {entry:?}",
            String::from_utf8_lossy(payload)
        );
    }
}

#[test]
fn ten_thousand_proposals_survive_kills_restarts_and_a_full_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let settings = Settings {
            election_min_ms: 150,
            election_max_ms: 300,
            segment_bytes: SEGMENT_BYTES,
            // This test reads every log from index 1 and checks each acknowledged proposal in
            // it, so the log must not be compacted; tests/snapshot_cluster.rs covers compaction.
            extra: "  snapshot_entries: 0\n".to_string(),
            ..Settings::default()
        };
        let mut cluster = Cluster::start(dir.path(), 3, settings);
        eprintln!("cluster: {} {:?}", dir.path().display(), cluster.addrs);
        let started = Instant::now();
        let leader = cluster.wait_for_leader(LEADER_WAIT).await;
        let ids = cluster.ids();
        let load = Arc::new(Load {
            clients: ids.iter().map(|id| (*id, cluster.client(*id))).collect(),
            target: AtomicU32::new(leader.node_id.0),
            next_payload: AtomicU64::new(0),
            acked_count: AtomicUsize::new(0),
            goal: AtomicUsize::new(usize::MAX),
            acked: Mutex::new(Vec::new()),
            ids: ids.clone(),
        });
        let workers: Vec<_> = (0..PROPOSERS)
            .map(|_| tokio::spawn(proposer(Arc::clone(&load))))
            .collect();

        // Follower A goes down for thousands of entries.
        wait_acked(&load, 1_000, PHASE_WAIT, &cluster).await;
        let leader = cluster.wait_for_leader(LEADER_WAIT).await.node_id.0;
        let a = *ids.iter().find(|i| **i != leader).expect("a follower");
        cluster.kill(a);
        let down_at = load.acked_count.load(Ordering::Relaxed);
        wait_acked(&load, 4_000, PHASE_WAIT, &cluster).await;
        cluster.spawn(a);
        eprintln!(
            "node {a} was down for {} acknowledged proposals ({:?} in)",
            load.acked_count.load(Ordering::Relaxed) - down_at,
            started.elapsed()
        );
        // It catches up: the leader reports its match index at or beyond the leader's commit
        // index at restart time.
        let caught_up_from = Instant::now();
        let goal = cluster
            .status(leader)
            .await
            .map(|s| s.commit_index)
            .unwrap_or(LogIndex(4_000));
        loop {
            let leader_now = cluster.wait_for_leader(LEADER_WAIT).await;
            let matched = leader_now
                .peers
                .iter()
                .find(|(p, _)| p.0 == a)
                .map(|(_, m)| *m);
            if matched >= Some(goal) {
                break;
            }
            assert!(
                caught_up_from.elapsed() < CATCH_UP_WAIT,
                "node {a} did not catch up to {goal}: {leader_now:?}\n{}",
                cluster.describe()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "node {a} caught up to {goal} in {:?}",
            caught_up_from.elapsed()
        );

        // Follower B goes down and comes back.
        let leader = cluster.wait_for_leader(LEADER_WAIT).await.node_id.0;
        let b = *ids
            .iter()
            .find(|i| **i != leader && **i != a)
            .or_else(|| ids.iter().find(|i| **i != leader))
            .expect("a follower");
        cluster.kill(b);
        let at = load.acked_count.load(Ordering::Relaxed);
        wait_acked(&load, at + 1_500, PHASE_WAIT, &cluster).await;
        cluster.spawn(b);

        // The leader dies once, under load.
        let at = load.acked_count.load(Ordering::Relaxed);
        wait_acked(&load, at + 1_000, PHASE_WAIT, &cluster).await;
        let old_leader = cluster.wait_for_leader(LEADER_WAIT).await;
        cluster.kill(old_leader.node_id.0);
        let new_leader = cluster.wait_for_leader(LEADER_WAIT).await;
        assert_ne!(new_leader.node_id, old_leader.node_id);
        assert!(new_leader.term > old_leader.term);
        eprintln!(
            "leader {} killed; node {} leads term {}",
            old_leader.node_id, new_leader.node_id, new_leader.term
        );
        let at = load.acked_count.load(Ordering::Relaxed);
        wait_acked(&load, at + 1_000, PHASE_WAIT, &cluster).await;
        cluster.spawn(old_leader.node_id.0);
        // The schedule is done; the load continues to at least PROPOSALS acknowledgements.
        let at = load.acked_count.load(Ordering::Relaxed);
        load.goal.store(PROPOSALS.max(at + 500), Ordering::Relaxed);

        for worker in workers {
            worker.await.expect("proposer task");
        }
        let (leader, last) = converge(&mut cluster).await;
        eprintln!(
            "{} proposals acknowledged, logs converged at {last} ({:?} in)",
            load.acked_count.load(Ordering::Relaxed),
            started.elapsed()
        );
        stop_all(&mut cluster, leader);
        eprintln!("stopped ({:?} in)", started.elapsed());
        let acked = load.acked.lock().expect("lock").clone();
        assert!(acked.len() >= PROPOSALS);
        check_logs(&cluster, last, &acked);

        // The whole cluster restarts: everything is still there and a new leader continues.
        for id in &ids {
            cluster.spawn(*id);
        }
        let leader = cluster.wait_for_leader(LEADER_WAIT).await;
        eprintln!(
            "restarted; node {} leads term {} ({:?} in)",
            leader.node_id,
            leader.term,
            started.elapsed()
        );
        load.target.store(leader.node_id.0, Ordering::Relaxed);
        load.acked_count.store(0, Ordering::Relaxed);
        load.goal.store(AFTER_RESTART, Ordering::Relaxed);
        let before = load.acked.lock().expect("lock").len();
        let workers: Vec<_> = (0..PROPOSERS)
            .map(|_| tokio::spawn(proposer(Arc::clone(&load))))
            .collect();
        for worker in workers {
            worker.await.expect("proposer task");
        }
        let acked = load.acked.lock().expect("lock").clone();
        assert!(
            acked[before..].iter().all(|(i, _, _)| *i > last),
            "a proposal after the restart was acknowledged at or below the old end {last}"
        );
        eprintln!("proposed after the restart ({:?} in)", started.elapsed());
        let (leader, last_after) = converge(&mut cluster).await;
        stop_all(&mut cluster, leader);
        check_logs(&cluster, last_after, &acked);
        eprintln!(
            "after a full restart, {} more proposals continue the log to {last_after} ({:?} in)",
            acked.len() - before,
            started.elapsed()
        );
    });
}
