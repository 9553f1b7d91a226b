//! Leadership transfer (thesis §3.10) in the deterministic simulator, over many seeds: the scenario
//! of `rust_raft_log::testing::transfer` (leader known to a majority, a few commits, transfer to
//! a seed-chosen voter, a proposal during the transfer, a commit on the new leader), with the
//! cluster's safety checkers after every event. Each run prints its seed; rerun one with
//! `SIM_SEED=<seed> cargo test --release --test sim_transfer -- --nocapture`, or more seeds with
//! `SIM_TRANSFER_SEEDS=<n>` (default 40).
//!
//! ```text
//!   operator ──transfer(n2)──▶ n1 (leader, term T)      proposals: refused "Transferring"
//!                               │ AppendEntries until n2 holds n1's last entry
//!                               └──TimeoutNow──▶ n2 ──RequestVote(T+1, leader_transfer)──▶ all
//!                                                n2 leads T+1 (no PreVote; leases set aside)
//! ```

use rust_raft_log::raft::TransferError;
use rust_raft_log::testing::cluster::Outcome;
use rust_raft_log::testing::transfer::{
    abandoned_transfer, refusals, run_transfer, HEARTBEAT_TICKS, LATENCY_US_MAX, TICK_US,
};
use rust_raft_log::types::NodeId;

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("SIM_SEED") {
        return vec![s.parse().expect("SIM_SEED must be a u64")];
    }
    let n: u64 = std::env::var("SIM_TRANSFER_SEEDS")
        .ok()
        .map(|v| v.parse().expect("SIM_TRANSFER_SEEDS must be a u64"))
        .unwrap_or(40);
    (0..n).collect()
}

#[test]
fn transfer_completes_within_a_heartbeat_and_keeps_every_commit() {
    // One heartbeat interval plus a round trip: the bound the issue sets for real processes.
    let bound_us = HEARTBEAT_TICKS * TICK_US + 2 * LATENCY_US_MAX;
    let mut took = Vec::new();
    for seed in seeds() {
        let run = run_transfer(seed, None);
        println!(
            "seed {seed}: {} nodes, n{} (term {}) -> n{}: {:?} us, new term {:?}, proposal \
             during transfer {:?}",
            run.nodes,
            run.from,
            run.old_term,
            run.to,
            run.took_us,
            run.new_term,
            run.proposal_during_transfer
        );
        let reproduce = format!(
            "reproduce with SIM_SEED={seed} cargo test --release --test sim_transfer -- --nocapture"
        );
        let Some(us) = run.took_us else {
            panic!("seed {seed}: the transfer did not complete within two election timeouts; {reproduce}");
        };
        assert!(
            us <= bound_us,
            "seed {seed}: the transfer took {us} us, above one heartbeat plus a round trip \
             ({bound_us} us); {reproduce}"
        );
        assert_eq!(
            run.proposal_during_transfer,
            Outcome::Rejected,
            "seed {seed}: a proposal during the transfer was not refused at once; {reproduce}"
        );
        assert!(
            run.committed_after,
            "seed {seed}: the new leader did not commit a proposal; {reproduce}"
        );
        took.push(us);
    }
    took.sort_unstable();
    println!(
        "{} transfers: median {} us, max {} us (bound {bound_us} us)",
        took.len(),
        took[took.len() / 2],
        took[took.len() - 1]
    );
}

#[test]
fn transfer_refuses_itself_a_non_member_and_a_follower() {
    let (to_self, to_stranger, on_follower) = refusals(7);
    assert!(
        matches!(to_self, TransferError::AlreadyLeader(_)),
        "{to_self:?}"
    );
    assert!(
        matches!(to_stranger, TransferError::NotAVoter { target, .. } if target == NodeId(9)),
        "{to_stranger:?}"
    );
    assert!(
        matches!(
            on_follower,
            TransferError::NotLeader {
                leader_hint: Some(_)
            }
        ),
        "{on_follower:?}"
    );
}

#[test]
fn a_transfer_to_a_down_voter_is_abandoned_and_writes_resume() {
    for seed in [0, 1, 2, 3] {
        let (refused, transferee, committed) = abandoned_transfer(seed);
        println!("seed {seed}: held {refused:?}, transferee after timeout {transferee:?}, committed after {committed}");
        assert_eq!(refused, Outcome::Rejected, "seed {seed}");
        assert_eq!(
            transferee, None,
            "seed {seed}: the transfer was not abandoned"
        );
        assert!(
            committed,
            "seed {seed}: the leader took no proposal after the abandon"
        );
    }
}
