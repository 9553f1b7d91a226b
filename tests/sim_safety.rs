//! The deterministic simulator's seed sweep (issue 3): every seed runs a chaos phase of network,
//! disk, clock and crash faults with client load, with the Raft safety properties checked after
//! every event, then a liveness phase (leader and a fresh commit after the faults stop).
//!
//! - default: seeds 0..2000 (N = 3, 5, 7 by seed % 3), 20,000 chaos events each, on all cores;
//!   in 75 % of the seeds an operator changes the membership and moves leadership during the
//!   chaos phase (issue 15; `SIM_MEMBERSHIP=0` turns that off);
//! - `SIM_SEEDS=<n>`: run n seeds; `SIM_FIRST_SEED=<s>`: start at s; `SIM_EVENTS=<e>`: events per
//!   seed; `SIM_THREADS=<t>`: worker threads; `SIM_KEEP_GOING=1`: run every seed and list all
//!   failures instead of stopping at the first;
//! - `SIM_SEED=<seed>`: replay exactly one seed and print its summary (a failure prints the
//!   property, the last events and this command).
//!
//! Run it in release mode: `cargo test --release --test sim_safety -- --nocapture`.

use std::time::Instant;

use rust_raft_log::testing::sim::{replay_command, run_seed, sweep, DEFAULT_EVENTS};

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v:?} is not a non-negative integer"),
    }
}

const DEFAULT_SEEDS: u64 = 2_000;

#[test]
fn sim_safety_sweep() {
    let events = env_u64("SIM_EVENTS").unwrap_or(DEFAULT_EVENTS);
    if let Some(seed) = env_u64("SIM_SEED") {
        let s = run_seed(seed, events);
        println!("seed {seed} passed: {s:#?}");
        return;
    }
    let first = env_u64("SIM_FIRST_SEED").unwrap_or(0);
    let count = env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let threads = env_u64("SIM_THREADS")
        .map(|t| t as usize)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
    let started = Instant::now();
    let keep_going = std::env::var("SIM_KEEP_GOING").is_ok_and(|v| v == "1");
    let r = sweep(first, count, events, threads, keep_going);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "sim sweep: {} seeds ({} x N=3, {} x N=5, {} x N=7), {} events ({:.0} events/s on {threads} \
         threads), {:.0} s simulated, {} crashes ({} torn writes), {} leaders, {} proposals \
         committed, {} lost; {} reads ({} served, {} dropped); liveness worst: leader {:.0} ms, \
         commit {:.0} ms, read {:.0} ms after faults stopped; wall {secs:.1} s",
        r.seeds_run,
        r.by_nodes[3],
        r.by_nodes[5],
        r.by_nodes[7],
        r.events,
        r.events as f64 / secs,
        r.sim_time_us as f64 / 1e6,
        r.crashes,
        r.torn_writes,
        r.leaders,
        r.committed,
        r.lost,
        r.reads,
        r.reads_served,
        r.reads_dropped,
        r.liveness_leader_us_max as f64 / 1000.0,
        r.liveness_commit_us_max as f64 / 1000.0,
        r.liveness_read_us_max as f64 / 1000.0,
    );
    println!(
        "snapshots: {} taken ({} writes cut by a power loss), {} restarts from a snapshot; \
         InstallSnapshot: {} transfers, {} chunks sent, {} streams restarted, {} transfers given \
         up, {} installs ({} cut by a power loss)",
        r.snapshots_taken,
        r.snapshot_writes_cut,
        r.restarts_from_snapshot,
        r.transfers,
        r.chunks_sent,
        r.streams_restarted,
        r.transfers_failed,
        r.installs,
        r.installs_cut,
    );
    let m = &r.members;
    println!(
        "membership: {} seeds changed it: {} learners added, {} voters added, {} promoted, {} \
         removed ({} of them the leader itself), {} re-added with a wiped disk; refused: {} in \
         flight, {} before a commit in the leader's term, {} not fitting, {} other; {} \
         leadership transfers asked ({} refused); {} moments without a leader",
        r.seeds_with_members,
        m.learners_added,
        m.voters_added,
        m.promoted,
        m.removed,
        m.leaders_removed,
        m.readded_wiped,
        m.refused_in_flight,
        m.refused_term_commit,
        m.refused_bad,
        m.refused_other,
        m.transfers_asked,
        m.transfers_refused,
        m.no_leader,
    );
    let mut failures = r.failures.clone();
    failures.sort();
    for (seed, headline) in failures.iter().take(50) {
        println!("FAILED seed {seed}: {headline}");
    }
    if !failures.is_empty() {
        println!("{} of {} seeds failed", failures.len(), r.seeds_run);
    }
    if let Some((seed, text)) = r.first_failure {
        panic!(
            "first failing seed {seed} (seeds {first}..{seed} passed)\n{text}\nreplay: {}",
            replay_command(seed, events)
        );
    }
    assert_eq!(r.seeds_run, count, "every seed ran");
}
