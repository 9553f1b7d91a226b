//! Hand-written fault scenarios in the deterministic simulator, each checked by the same safety
//! checkers as the seed sweep (after every event), plus the determinism the sweep relies on.

use rust_raft_log::raft::{Config, Role};
use rust_raft_log::testing::cluster::{Cluster, ClusterConfig, Outcome};
use rust_raft_log::testing::disk::DiskConfig;
use rust_raft_log::testing::network::NetConfig;
use rust_raft_log::testing::sim::run_seed;
use rust_raft_log::types::NodeId;

const TICK_US: u64 = 1_000;
/// Election timeout 150–300 ticks of 1 ms, heartbeat 50.
const ET_MAX_US: u64 = 300 * TICK_US;

fn cluster(seed: u64, nodes: usize, check_quorum: bool) -> Cluster {
    let core = Config {
        election_ticks_min: 150,
        election_ticks_max: 300,
        heartbeat_ticks: 50,
        check_quorum,
        ..Config::new(NodeId(1), Vec::new(), 0)
    };
    Cluster::new(ClusterConfig {
        seed,
        nodes,
        core,
        net: NetConfig::reliable(1_000, 5_000),
        disk: DiskConfig {
            write_us_min: 100,
            write_us_max: 500,
            sync_us_min: 100,
            sync_us_max: 1_000,
        },
        tick_us: vec![TICK_US; nodes],
        replay: format!("cargo test --release --test sim_scenarios (seed {seed})"),
    })
}

/// Steps until `done` or `budget_us` simulated time passes; panics naming `what` on timeout.
fn run_until(c: &mut Cluster, budget_us: u64, what: &str, mut done: impl FnMut(&Cluster) -> bool) {
    let deadline = c.now_us() + budget_us;
    while !done(c) {
        assert!(
            c.now_us() < deadline,
            "timed out after {} ms waiting for: {what}",
            budget_us / 1000
        );
        c.step();
    }
}

fn run_for(c: &mut Cluster, us: u64) {
    let end = c.now_us() + us;
    while c.now_us() < end {
        c.step();
    }
}

fn stable_leader(c: &mut Cluster) -> usize {
    run_until(c, 20 * ET_MAX_US, "a leader known to a majority", |c| {
        c.leader_known_to_majority().is_some()
    });
    c.leader_known_to_majority().expect("checked above")
}

fn commit_one(c: &mut Cluster, what: &str) -> u64 {
    let l = stable_leader(c);
    let id = c.propose(l, what.as_bytes());
    run_until(c, 20 * ET_MAX_US, what, |c| {
        c.outcome(id) == Outcome::Committed
    });
    id
}

#[test]
fn isolated_leader_is_replaced_and_steps_down_under_check_quorum() {
    let mut c = cluster(1, 5, true);
    let old = stable_leader(&mut c);
    commit_one(&mut c, "before isolation");
    c.net.isolate(old);
    run_until(
        &mut c,
        20 * ET_MAX_US,
        "a new leader on the majority side",
        |c| c.leader_known_to_majority().is_some_and(|l| l != old),
    );
    // CheckQuorum: within an election timeout or two the isolated node stops believing it leads.
    run_for(&mut c, 2 * ET_MAX_US);
    let role = c.core(old).expect("up").role();
    assert_ne!(role, Role::Leader, "isolated old leader {old} still leads");
    commit_one(&mut c, "after isolation");
    c.net.heal();
    commit_one(&mut c, "after heal");
}

#[test]
fn minority_side_commits_nothing_and_its_entries_are_replaced_after_heal() {
    let mut c = cluster(2, 5, false);
    let old = stable_leader(&mut c);
    commit_one(&mut c, "before partition");
    let mut groups = vec![1; 5];
    groups[old] = 0;
    groups[(old + 1) % 5] = 0;
    c.net.partition(&groups);
    let stranded: Vec<u64> = (0..5).map(|_| c.propose(old, b"minority")).collect();
    run_until(
        &mut c,
        20 * ET_MAX_US,
        "a leader on the majority side",
        |c| c.leaders().iter().any(|&(l, _)| groups[l] == 1),
    );
    let new = c
        .leaders()
        .iter()
        .find(|&&(l, _)| groups[l] == 1)
        .map(|&(l, _)| l)
        .expect("found above");
    let id = c.propose(new, b"majority");
    run_until(&mut c, 20 * ET_MAX_US, "the majority side commits", |c| {
        c.outcome(id) == Outcome::Committed
    });
    for &p in &stranded {
        assert!(
            matches!(c.outcome(p), Outcome::Pending { .. }),
            "a proposal on the minority side got answered: {:?}",
            c.outcome(p)
        );
    }
    c.net.heal();
    commit_one(&mut c, "after heal");
    run_for(&mut c, 2 * ET_MAX_US);
    for &p in &stranded {
        assert_ne!(
            c.outcome(p),
            Outcome::Committed,
            "a minority-side proposal committed"
        );
    }
}

#[test]
fn every_committed_entry_survives_a_whole_cluster_crash() {
    let mut c = cluster(3, 3, true);
    let ids: Vec<u64> = (0..5)
        .map(|k| commit_one(&mut c, &format!("entry {k}")))
        .collect();
    for i in 0..3 {
        c.crash(i);
    }
    for i in 0..3 {
        c.restart(i);
    }
    // The checkers verify that every later leader holds the committed proposals.
    commit_one(&mut c, "after restart");
    let l = stable_leader(&mut c);
    assert!(c.mirror(l).last_index() >= ids.len() as u64);
}

#[test]
fn leader_that_can_send_but_not_hear_steps_down_under_check_quorum() {
    let mut c = cluster(4, 3, true);
    let old = stable_leader(&mut c);
    for other in 0..3 {
        if other != old {
            c.net.set_link(other, old, false);
        }
    }
    run_for(&mut c, 3 * ET_MAX_US);
    assert_ne!(
        c.core(old).expect("up").role(),
        Role::Leader,
        "a leader that hears from no one kept leading"
    );
    c.net.heal();
    commit_one(&mut c, "after heal");
}

#[test]
fn a_seed_replays_identically() {
    for seed in [5, 6, 7] {
        let a = format!("{:?}", run_seed(seed, 3_000));
        let b = format!("{:?}", run_seed(seed, 3_000));
        assert_eq!(a, b, "seed {seed} did not replay identically");
    }
}
