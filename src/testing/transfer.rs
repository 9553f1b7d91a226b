//! Leadership transfer (thesis §3.10) in the deterministic simulator: one scenario, run per seed,
//! that `tests/sim_transfer.rs` sweeps and the crate's mutation tests run with a deliberate bug.
//!
//! The scenario: a cluster of 3 or 5 (by seed) with PreVote and CheckQuorum on, 1 ms ticks,
//! election timeout 150–300 ms, heartbeat 50 ms, a reliable network of 1–5 ms one way and a disk
//! of up to 1.5 ms per synced write. Once a leader is known to a majority and a few entries are
//! committed, the operator asks it to hand leadership to another voter (chosen by the seed), a
//! proposal arrives at the old leader at once (it must be refused as `Transferring`, with nothing
//! appended), and the run measures the simulated time until the target is leader known to a
//! majority. Then a proposal on the new leader must commit. The cluster's safety checkers (at
//! most one leader per term, committed entries survive, durability before acks and votes) run
//! after every event throughout.
//!
//! With both transfer rules intact the handover takes about one round trip plus the target's vote
//! sync and the voters' (well under the 150 ms minimum election timeout); a target that runs a
//! PreVote round first, or voters that keep their lease against the transfer's election, leave
//! the cluster waiting for an election timeout instead.

use crate::raft::{Config, Role, TransferError};
use crate::testing::cluster::{Cluster, ClusterConfig, Outcome, Stepped};
use crate::testing::disk::DiskConfig;
use crate::testing::network::NetConfig;
use crate::types::{NodeId, Term};

/// Simulated µs per tick.
pub const TICK_US: u64 = 1_000;
/// The core's election timeout range and heartbeat, in ticks.
pub const ELECTION_TICKS_MIN: u64 = 150;
pub const ELECTION_TICKS_MAX: u64 = 300;
pub const HEARTBEAT_TICKS: u64 = 50;
/// One-way network latency range, µs.
pub const LATENCY_US_MIN: u64 = 1_000;
pub const LATENCY_US_MAX: u64 = 5_000;

/// What one run of the scenario saw.
#[derive(Clone, Debug)]
pub struct TransferRun {
    pub seed: u64,
    pub nodes: usize,
    pub from: usize,
    pub to: usize,
    /// The old leader's term and the term the target leads (when it took over).
    pub old_term: Term,
    pub new_term: Option<Term>,
    /// Simulated µs from the request to the target being leader known to a majority; `None`
    /// if that did not happen within the budget (two maximum election timeouts).
    pub took_us: Option<u64>,
    /// How the old leader answered a proposal made right after the transfer began.
    pub proposal_during_transfer: Outcome,
    /// Whether a proposal on the new leader committed afterwards.
    pub committed_after: bool,
}

/// The scenario's cluster for `seed` (3 or 5 nodes by seed parity).
pub fn cluster(seed: u64, mutation: Option<crate::mutation::Mutation>) -> Cluster {
    let nodes = if seed.is_multiple_of(2) { 3 } else { 5 };
    let core = Config {
        election_ticks_min: ELECTION_TICKS_MIN,
        election_ticks_max: ELECTION_TICKS_MAX,
        heartbeat_ticks: HEARTBEAT_TICKS,
        pre_vote: true,
        check_quorum: true,
        ..Config::new(NodeId(1), Vec::new(), 0)
    };
    Cluster::new(ClusterConfig {
        seed,
        nodes,
        spares: 0,
        core,
        net: NetConfig::reliable(LATENCY_US_MIN, LATENCY_US_MAX),
        disk: DiskConfig {
            write_us_min: 100,
            write_us_max: 500,
            sync_us_min: 100,
            sync_us_max: 1_000,
        },
        tick_us: vec![TICK_US; nodes],
        replay: format!("cargo test --release --test sim_transfer (SIM_SEED={seed})"),
        snapshots: None,
        mutation,
    })
}

/// Steps until `done` or until `budget_us` of simulated time passed; returns whether `done`.
pub fn run_until(c: &mut Cluster, budget_us: u64, mut done: impl FnMut(&Cluster) -> bool) -> bool {
    let deadline = c.now_us() + budget_us;
    while !done(c) {
        if c.now_us() >= deadline || c.step() == Stepped::Idle {
            return false;
        }
    }
    true
}

/// Runs the scenario of the module docs for `seed`. Panics (naming the seed) only where the
/// cluster itself cannot get started; a transfer that does not happen is reported in the result.
pub fn run_transfer(seed: u64, mutation: Option<crate::mutation::Mutation>) -> TransferRun {
    let mut c = cluster(seed, mutation);
    let n = c.nodes();
    let et_max_us = ELECTION_TICKS_MAX * TICK_US;
    let leader_up = |c: &Cluster| c.leader_known_to_majority().is_some();
    assert!(
        run_until(&mut c, 20 * et_max_us, leader_up),
        "seed {seed}: no leader known to a majority within 20 election timeouts"
    );
    let from = c.leader_known_to_majority().expect("checked above");
    // A few committed entries that the handover must keep.
    let ids: Vec<u64> = (0..3).map(|k| c.propose(from, &[k])).collect();
    let all_committed = |c: &Cluster| ids.iter().all(|&id| c.outcome(id) == Outcome::Committed);
    assert!(
        run_until(&mut c, 10 * et_max_us, all_committed),
        "seed {seed}: the leader n{from} did not commit 3 entries within 10 election timeouts"
    );
    let old_term = c.core(from).expect("the leader is up").term();
    let to = (from + 1 + (seed as usize / 2) % (n - 1)) % n;
    let t0 = c.now_us();
    c.transfer_leadership(from, to)
        .unwrap_or_else(|e| panic!("seed {seed}: leader n{from} refused a transfer to n{to}: {e}"));
    let held = c.propose(from, b"during");
    let proposal_during_transfer = c.outcome(held);
    let target_leads = |c: &Cluster| {
        c.leader_known_to_majority() == Some(to)
            && c.core(to).is_some_and(|core| core.term() > old_term)
    };
    let took_us = run_until(&mut c, 2 * et_max_us, target_leads).then(|| c.now_us() - t0);
    let new_term = took_us.and(c.core(to).map(|core| core.term()));
    let mut committed_after = false;
    if took_us.is_some() {
        let id = c.propose(to, b"after");
        committed_after = run_until(&mut c, 10 * et_max_us, |c| {
            c.outcome(id) == Outcome::Committed
        });
    }
    // Every entry committed before the transfer is still committed (the checkers would have
    // failed the run had any been lost; this states it for the reader).
    for &id in &ids {
        assert_eq!(
            c.outcome(id),
            Outcome::Committed,
            "seed {seed}: proposal #{id} committed before the transfer changed its outcome"
        );
    }
    TransferRun {
        seed,
        nodes: n,
        from,
        to,
        old_term,
        new_term,
        took_us,
        proposal_during_transfer,
        committed_after,
    }
}

/// The refusals of [`crate::raft::RaftNode::transfer_leader`], through the driver's mailbox:
/// returns `(to itself, to a non-member, on a follower)`.
pub fn refusals(seed: u64) -> (TransferError, TransferError, TransferError) {
    let mut c = cluster(seed, None);
    let et_max_us = ELECTION_TICKS_MAX * TICK_US;
    assert!(
        run_until(&mut c, 20 * et_max_us, |c| c
            .leader_known_to_majority()
            .is_some()),
        "seed {seed}: no leader"
    );
    let l = c.leader_known_to_majority().expect("checked above");
    let follower = (l + 1) % c.nodes();
    assert_ne!(c.core(follower).map(|f| f.role()), Some(Role::Leader));
    let to_self = c
        .transfer_leadership(l, l)
        .expect_err("a transfer to itself");
    // Index 8 is NodeId(9): no member of a 3- or 5-node cluster.
    let to_stranger = c
        .transfer_leadership(l, 8)
        .expect_err("a transfer to a non-member");
    let on_follower = c
        .transfer_leadership(follower, l)
        .expect_err("a transfer asked of a follower");
    (to_self, to_stranger, on_follower)
}

/// A transfer to a voter that is down is abandoned after `election_ticks_min` ticks and the
/// leader takes proposals again. Returns `(refused while transferring, transferee after the
/// timeout, committed after the timeout)`.
pub fn abandoned_transfer(seed: u64) -> (Outcome, Option<NodeId>, bool) {
    let mut c = cluster(seed, None);
    let et_max_us = ELECTION_TICKS_MAX * TICK_US;
    assert!(
        run_until(&mut c, 20 * et_max_us, |c| c
            .leader_known_to_majority()
            .is_some()),
        "seed {seed}: no leader"
    );
    let l = c.leader_known_to_majority().expect("checked above");
    let to = (l + 1) % c.nodes();
    c.crash(to);
    c.transfer_leadership(l, to)
        .unwrap_or_else(|e| panic!("seed {seed}: transfer refused: {e}"));
    let held = c.propose(l, b"held");
    let refused = c.outcome(held);
    // Just past the abandon point (ticks run at 1 ms here).
    let past = (ELECTION_TICKS_MIN + 5) * TICK_US;
    let until = c.now_us() + past;
    run_until(&mut c, past, |c| c.now_us() >= until);
    let transferee = c.core(l).and_then(|core| core.lead_transferee());
    let id = c.propose(l, b"after");
    let committed = run_until(&mut c, 10 * et_max_us, |c| {
        c.outcome(id) == Outcome::Committed
    });
    (refused, transferee, committed)
}

#[cfg(test)]
mod mutations {
    use super::*;
    use crate::mutation::Mutation;

    /// With `m` on, no seed of the first 10 may see the transfer complete faster than a minimum
    /// election timeout: the quick handover is what the sweep in tests/sim_transfer.rs checks.
    fn assert_caught(m: Mutation) {
        let fastest = (0..10)
            .filter_map(|seed| {
                let run = run_transfer(seed, Some(m));
                println!("mutation {m:?} seed {seed}: took {:?} us", run.took_us);
                run.took_us
            })
            .min();
        assert!(
            fastest.is_none_or(|us| us >= ELECTION_TICKS_MIN * TICK_US),
            "mutation {m:?}: a transfer still completed in {fastest:?} us, under one minimum \
             election timeout; the sweep would not catch it"
        );
    }

    #[test]
    fn a_target_that_runs_prevote_first_is_caught() {
        assert_caught(Mutation::TransferPreVoteFirst);
    }

    #[test]
    fn voters_keeping_their_lease_against_a_transfer_are_caught() {
        assert_caught(Mutation::TransferLeaseHolds);
    }
}
