//! The Raft paper's Figure 16 experiment (Ongaro & Ousterhout, USENIX ATC 2014, §9.3): how long a
//! 5-server cluster takes to detect and replace a crashed leader, for several election timeout
//! ranges, with PreVote on and off.
//!
//! Each trial, in the deterministic simulator with a 100 µs tick (so 150–151 ms is a real range):
//! 1. five servers, one-way latency uniform in 5–10 ms (a ~15 ms broadcast round trip), disk
//!    writes 0.1–0.5 ms; node 0 is made leader by letting only its clock run until it wins;
//! 2. the followers are given logs of different lengths (three stages of entries, later stages
//!    withheld from some followers), so some of them cannot win the next election;
//! 3. right after a heartbeat broadcast (which resets every follower's timer at about the same
//!    moment and so provokes split votes) the leader crashes at a uniformly random moment of its
//!    heartbeat interval (heartbeat = half the minimum election timeout);
//! 4. the time from the crash until a new leader is known to a majority (3 of 5) is recorded.
//!    A trial is capped at `--cap-s` simulated seconds (default 30).
//!
//! `cargo run --release --example figure16 [-- --trials 1000 --cap-s 30 --threads 2]`
//! prints one table row per (range, PreVote) line: p50, p90, p99 and max, and how many trials
//! exceeded 10 s, beside the paper's figures.

use std::time::Instant;

use rust_raft_log::raft::Config;
use rust_raft_log::testing::cluster::{Cluster, ClusterConfig};
use rust_raft_log::testing::disk::DiskConfig;
use rust_raft_log::testing::network::NetConfig;
use rust_raft_log::testing::rng::SimRng;
use rust_raft_log::types::NodeId;

const TICK_US: u64 = 100;
const NODES: usize = 5;

#[derive(Clone, Copy)]
struct Line {
    min_ms: u64,
    max_ms: u64,
    heartbeat_ms: u64,
    paper: &'static str,
}

const LINES: &[Line] = &[
    Line {
        min_ms: 150,
        max_ms: 150,
        heartbeat_ms: 75,
        paper: "> 10 s consistently (split votes)",
    },
    Line {
        min_ms: 150,
        max_ms: 151,
        heartbeat_ms: 75,
        paper: "graph only",
    },
    Line {
        min_ms: 150,
        max_ms: 155,
        heartbeat_ms: 75,
        paper: "median 287 ms",
    },
    Line {
        min_ms: 150,
        max_ms: 175,
        heartbeat_ms: 75,
        paper: "graph only",
    },
    Line {
        min_ms: 150,
        max_ms: 200,
        heartbeat_ms: 75,
        paper: "worst of 1,000: 513 ms",
    },
    Line {
        min_ms: 150,
        max_ms: 300,
        heartbeat_ms: 75,
        paper: "graph only",
    },
    Line {
        min_ms: 12,
        max_ms: 24,
        heartbeat_ms: 6,
        paper: "mean 35 ms, worst 152 ms",
    },
    // Our defaults (issue 3): 150–500 ms election, 50 ms heartbeat.
    Line {
        min_ms: 150,
        max_ms: 500,
        heartbeat_ms: 50,
        paper: "(our default; target: none > 10 s)",
    },
];

/// Outcome of one trial: milliseconds from crash to a leader known to a majority, or `None` if
/// the cap was reached first.
fn trial(line: Line, pre_vote: bool, seed: u64, cap_us: u64) -> Option<f64> {
    let core = Config {
        election_ticks_min: line.min_ms * 1000 / TICK_US,
        election_ticks_max: line.max_ms * 1000 / TICK_US,
        heartbeat_ticks: line.heartbeat_ms * 1000 / TICK_US,
        pre_vote,
        ..Config::new(NodeId(1), Vec::new(), 0)
    };
    let mut c = Cluster::new(ClusterConfig {
        seed,
        nodes: NODES,
        core,
        net: NetConfig::reliable(5_000, 10_000),
        disk: DiskConfig {
            write_us_min: 50,
            write_us_max: 200,
            sync_us_min: 50,
            sync_us_max: 300,
        },
        tick_us: vec![TICK_US; NODES],
        replay: format!(
            "figure16 trial seed {seed} (min {} max {} pre_vote {pre_vote})",
            line.min_ms, line.max_ms
        ),
    });
    c.tracing = false;
    let mut rng = SimRng::new(seed ^ 0xF16);

    // 1. Node 0 becomes leader: only its clock runs until a majority knows it.
    for i in 1..NODES {
        c.set_ticks_paused(i, true);
    }
    run_until(&mut c, 60_000_000, |c| {
        c.leader_known_to_majority() == Some(0)
    })
    .expect("bootstrap: node 0 wins an uncontested election");
    for i in 1..NODES {
        c.set_ticks_paused(i, false);
    }

    // 2. Logs of different lengths: three stages; a follower at level k receives stages 0..=k.
    //    One random follower is at the top level, so someone can always win.
    let top = 1 + rng.index(NODES - 1);
    let level: Vec<usize> = (0..NODES)
        .map(|i| if i == 0 || i == top { 2 } else { rng.index(3) })
        .collect();
    for stage in 0..3 {
        for f in 1..NODES {
            c.set_entries_blocked(f, level[f] < stage);
        }
        let entries = rng.range(1, 5);
        for _ in 0..entries {
            c.propose(0, b"figure16");
        }
        let target = c.mirror(0).last_index();
        let lvl = level.clone();
        run_until(&mut c, 10_000_000, move |c| {
            (1..NODES).all(|f| lvl[f] < stage || c.mirror(f).last_index() >= target)
        })
        .expect("setup: followers receive their stages");
    }

    // 3. Wait for a heartbeat broadcast, then crash the leader at a uniform moment of the
    //    heartbeat interval that follows it.
    let seen = c.last_broadcast_us(0);
    run_until(&mut c, 10_000_000, |c| {
        c.last_broadcast_us(0) != seen && c.last_broadcast_us(0).is_some()
    })
    .expect("the leader broadcasts a heartbeat");
    let crash_at = c.now_us() + rng.range(0, line.heartbeat_ms * 1000 - 1);
    let budget = crash_at - c.now_us() + 1;
    run_until(&mut c, budget, |c| c.now_us() >= crash_at);
    for f in 1..NODES {
        c.set_entries_blocked(f, false);
    }
    let crashed_at = c.now_us();
    c.crash(0);

    // 4. Until a new leader is known to a majority.
    run_until(&mut c, cap_us, |c| c.leader_known_to_majority().is_some())
        .map(|_| (c.now_us() - crashed_at) as f64 / 1000.0)
}

/// Steps until `done` holds (checked before each event) or `budget_us` of simulated time passed;
/// `Some(())` if it held.
fn run_until(
    c: &mut Cluster,
    budget_us: u64,
    mut done: impl FnMut(&Cluster) -> bool,
) -> Option<()> {
    let deadline = c.now_us() + budget_us;
    loop {
        if done(c) {
            return Some(());
        }
        if c.now_us() >= deadline {
            return None;
        }
        c.step();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn main() {
    let mut trials = 1000u64;
    let mut cap_s = 30u64;
    let mut threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> u64 {
            let v = args
                .next()
                .unwrap_or_else(|| panic!("{name} needs a value"));
            v.parse()
                .unwrap_or_else(|_| panic!("{name} {v:?} is not a number"))
        };
        match a.as_str() {
            "--trials" => trials = value("--trials"),
            "--cap-s" => cap_s = value("--cap-s"),
            "--threads" => threads = value("--threads") as usize,
            other => panic!("unknown argument {other:?} (use --trials N --cap-s S --threads T)"),
        }
    }
    let cap_us = cap_s * 1_000_000;
    println!(
        "Figure 16 (Raft paper §9.3): 5 servers, one-way latency 5-10 ms, tick {TICK_US} us, \
         {trials} trials per line, cap {cap_s} s simulated; time from leader crash to a new leader \
         known to a majority."
    );
    println!();
    println!("| election timeout | heartbeat | PreVote | p50 ms | p90 ms | p99 ms | max ms | > 10 s | capped | paper |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let started = Instant::now();
    for (li, &line) in LINES.iter().enumerate() {
        for pre_vote in [true, false] {
            let mut results: Vec<Option<f64>> = vec![None; trials as usize];
            let chunks: Vec<(usize, &mut [Option<f64>])> = {
                let per = (trials as usize).div_ceil(threads.max(1)).max(1);
                results.chunks_mut(per).enumerate().collect()
            };
            let per = (trials as usize).div_ceil(threads.max(1)).max(1);
            std::thread::scope(|s| {
                for (ci, chunk) in chunks {
                    s.spawn(move || {
                        for (k, slot) in chunk.iter_mut().enumerate() {
                            let t = (ci * per + k) as u64;
                            let seed = (li as u64) << 40 | u64::from(pre_vote) << 32 | t;
                            *slot = trial(line, pre_vote, seed, cap_us);
                        }
                    });
                }
            });
            let capped = results.iter().filter(|r| r.is_none()).count();
            let mut ms: Vec<f64> = results
                .iter()
                .map(|r| r.unwrap_or(cap_us as f64 / 1000.0))
                .collect();
            ms.sort_by(|a, b| a.total_cmp(b));
            let over_10s = ms.iter().filter(|&&m| m > 10_000.0).count();
            let fmt = |v: f64| {
                if v >= cap_us as f64 / 1000.0 && capped > 0 {
                    format!(">= {:.0}", v)
                } else {
                    format!("{v:.1}")
                }
            };
            println!(
                "| {}-{} ms | {} ms | {} | {} | {} | {} | {} | {over_10s} | {capped} | {} |",
                line.min_ms,
                line.max_ms,
                line.heartbeat_ms,
                if pre_vote { "on" } else { "off" },
                fmt(percentile(&ms, 50.0)),
                fmt(percentile(&ms, 90.0)),
                fmt(percentile(&ms, 99.0)),
                fmt(ms[ms.len() - 1]),
                line.paper
            );
        }
    }
    println!();
    println!(
        "wall time {:.1} s on {threads} threads",
        started.elapsed().as_secs_f64()
    );
}
