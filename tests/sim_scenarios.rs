//! Hand-written fault scenarios in the deterministic simulator, each checked by the same safety
//! checkers as the seed sweep (after every event), plus the determinism the sweep relies on.

use rust_raft_log::raft::{Config, Role};
use rust_raft_log::testing::cluster::{Cluster, ClusterConfig, Outcome, ReadOutcome, Stepped};
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
        spares: 0,
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
        snapshots: None,
        mutation: None,
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
        assert!(
            c.step() != Stepped::Idle,
            "nothing left to simulate while waiting for: {what}"
        );
    }
}

/// Runs for `us` of simulated time, or until nothing is left to simulate (every clock paused or
/// down and no message in flight).
fn run_for(c: &mut Cluster, us: u64) {
    let end = c.now_us() + us;
    while c.now_us() < end {
        if c.step() == Stepped::Idle {
            return;
        }
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
fn an_isolated_leader_confirms_no_read_while_a_new_leader_acknowledges_writes() {
    // Thesis §6.4. Without CheckQuorum the isolated leader keeps believing it leads; reads sent
    // to it must stay unconfirmed (its commit index misses the write the new leader acknowledges)
    // and come back dropped when it learns the new term. The cluster checks every read it serves.
    let mut c = cluster(3, 5, false);
    let old = stable_leader(&mut c);
    commit_one(&mut c, "before isolation");
    let served = c.read(old);
    run_until(
        &mut c,
        20 * ET_MAX_US,
        "a read on the healthy leader",
        |c| matches!(c.read_outcome(served), ReadOutcome::Served { .. }),
    );
    c.net.isolate(old);
    let stale_early = c.read(old);
    run_until(
        &mut c,
        20 * ET_MAX_US,
        "a new leader on the majority side",
        |c| c.leader_known_to_majority().is_some_and(|l| l != old),
    );
    commit_one(&mut c, "acknowledged while the old leader is cut off");
    let stale_late = c.read(old);
    let new = stable_leader(&mut c);
    let fresh = c.read(new);
    run_for(&mut c, 3 * ET_MAX_US);
    assert_eq!(
        c.core(old).map(|n| n.role()),
        Some(Role::Leader),
        "still believes it leads"
    );
    assert!(matches!(c.read_outcome(fresh), ReadOutcome::Served { .. }));
    for r in [stale_early, stale_late] {
        assert!(
            matches!(c.read_outcome(r), ReadOutcome::Pending { .. }),
            "read #{r} on the cut-off leader: {:?}",
            c.read_outcome(r)
        );
    }
    c.net.heal();
    run_until(
        &mut c,
        20 * ET_MAX_US,
        "the old leader's reads dropped",
        |c| {
            [stale_early, stale_late]
                .iter()
                .all(|&r| c.read_outcome(r) == ReadOutcome::Dropped)
        },
    );
    assert_ne!(c.core(old).map(|n| n.role()), Some(Role::Leader));
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

/// Raft Figure 8, scripted. S1..S5 are nodes 0..4; one entry per message and one message in
/// flight, so a leader's old-term entry and its own NoOp travel separately.
///
/// ```text
/// (a) S1 leads, replicates X (its term) to S2 only          S1 [1 X]  S2 [1 X]  S3 [1]  S4 [1]  S5 [1]
/// (b) S1 crashes; S5 wins with S3, S4, appends Y, is cut off S5 [1 Y]
/// (c) S1 restarts and wins a later term; it sends X to S3    S1 [1 X N] S2 [1 X N] S3 [1 X]
///     A correct core does not count X (an older term) as committed; it waits for its NoOp N.
///     The moment S1's commit index covers X, S1 crashes (losing what it had just sent).
/// (d) S5 returns and campaigns alone. If X was committed without N on a majority, S5 wins
///     with S3 and S4 and overwrites X: the checkers report Leader Completeness.
/// ```
/// With a correct core, X's commit implies N on a majority, so S5 cannot win.
#[test]
fn figure_8_previous_term_entry_is_not_committed_by_counting() {
    const N: usize = 5;
    let core = Config {
        election_ticks_min: 150,
        election_ticks_max: 300,
        heartbeat_ticks: 50,
        max_entries_per_msg: 1,
        max_inflight_msgs: 1,
        pre_vote: false,
        check_quorum: false,
        ..Config::new(NodeId(1), Vec::new(), 0)
    };
    let mut c = Cluster::new(ClusterConfig {
        seed: 8,
        nodes: N,
        spares: 0,
        core,
        net: NetConfig::reliable(1_000, 1_000),
        disk: DiskConfig {
            write_us_min: 100,
            write_us_max: 100,
            sync_us_min: 100,
            sync_us_max: 100,
        },
        tick_us: vec![TICK_US; N],
        replay: "cargo test --release --test sim_scenarios figure_8".to_string(),
        snapshots: None,
        mutation: None,
    });
    let only_clock = |c: &mut Cluster, runner: usize| {
        for i in 0..N {
            c.set_ticks_paused(i, i != runner);
        }
    };
    // S1 becomes leader and everyone holds its NoOp.
    only_clock(&mut c, 0);
    run_until(&mut c, 20 * ET_MAX_US, "S1 leads", |c| {
        c.leader_known_to_majority() == Some(0) && (0..N).all(|i| c.mirror(i).last_index() == 1)
    });
    // (a) X reaches S2 only.
    for to in 2..N {
        c.net.set_link(0, to, false);
    }
    c.propose(0, b"X");
    run_until(&mut c, 5 * ET_MAX_US, "X reaches S2", |c| {
        c.mirror(1).last_index() == 2
    });
    // (b) S1 crashes; S5 wins with S3 and S4 and appends Y, then is cut off. Messages already on
    //     the wire still arrive, so S1's retries of X must land on the cut links before healing.
    c.crash(0);
    run_for(&mut c, 10 * 1_000);
    c.net.heal();
    only_clock(&mut c, 4);
    run_until(&mut c, 20 * ET_MAX_US, "S5 leads", |c| {
        c.leaders().iter().any(|&(l, _)| l == 4)
    });
    c.net.isolate(4);
    c.propose(4, b"Y");
    run_until(
        &mut c,
        5 * ET_MAX_US,
        "S5 holds its NoOp and Y durably",
        |c| c.core(4).is_some_and(|n| n.persisted_index().0 >= 3),
    );
    c.crash(4);
    // (c) S1 returns and wins a later term with S2, S3 (S4 too).
    c.restart(0);
    only_clock(&mut c, 0);
    run_until(&mut c, 20 * ET_MAX_US, "S1 leads again", |c| {
        c.leaders().iter().any(|&(l, _)| l == 0)
    });
    run_until(&mut c, 20 * ET_MAX_US, "S1 commits X", |c| {
        c.core(0).is_some_and(|n| n.commit_index().0 >= 2)
    });
    // S1's crash also loses what it just sent (its NoOp on its way to S3).
    c.net.isolate(0);
    c.crash(0);
    // (d) S5 returns and campaigns alone among S2..S5.
    run_for(&mut c, 10 * 1_000);
    c.restart(4);
    for a in 1..N {
        for b in 1..N {
            c.net.set_link(a, b, true);
        }
    }
    only_clock(&mut c, 4);
    run_for(&mut c, 10 * ET_MAX_US);
    assert!(
        !c.leaders().iter().any(|&(l, _)| l == 4),
        "S5 became leader without the committed entry X (the checkers should have said so first)"
    );
}
