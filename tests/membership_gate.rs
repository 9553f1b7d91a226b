//! The peer gate answers vote requests from outside the configuration (issue 15, gap 1), with
//! real processes on loopback.
//!
//! ```text
//!   nodes 1, 2, 3 (plaintext, the cluster id on every request); "node 7": this test's client,
//!   with the cluster id, standing for a candidate known only to a newer configuration (or a
//!   removed member)
//!   healthy:  PreVote and RequestVote from 7 at a higher term ──► a follower
//!             → the core declines them (the follower holds a leader lease); the outsider is
//!               told it is not a member (what a removed node needs to hear), and no term moves
//!               anywhere
//!   leaderless: kill the other two; once the survivor's lease has run out,
//!             PreVote, then RequestVote from 7 ──► the survivor
//!             → both granted, each answer marked `sender_not_member`
//! ```
//! Before this change the gate refused both phases with PERMISSION_DENIED "is not a member of the
//! configuration", so a voter that lagged on the configuration could not vote for the only
//! candidate able to win (docs/OPERATIONS.md, "Replace a member").

mod process_cluster;

use std::time::Duration;

use process_cluster::{Cluster, Settings};
use rust_raft_log::grpc::gate::{peer_request, NOT_A_MEMBER};
use rust_raft_log::grpc::proto as pb;
use tonic::Code;

const LEADER_WAIT: Duration = Duration::from_secs(20);
/// The outsider's id: in no configuration of this cluster.
const OUTSIDER: u32 = 7;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn vote(to: u32, term: u64, pre_vote: bool) -> pb::RequestVoteRequest {
    pb::RequestVoteRequest {
        route: Some(pb::Route { from: OUTSIDER, to }),
        term,
        candidate_id: OUTSIDER,
        // A log more up to date than anyone's: what the core decides on is the lease and the
        // vote already cast, not the log.
        last_log_index: u64::MAX / 2,
        last_log_term: u64::MAX / 2,
        pre_vote,
        leader_transfer: false,
    }
}

#[test]
fn a_voter_answers_a_candidate_outside_its_configuration_and_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = runtime();
    // The test asserts that no term moves: etcd's slower elections.
    let mut cluster = Cluster::start(dir.path(), 3, Settings::etcd_timing());
    let leader = rt.block_on(cluster.wait_for_leader(LEADER_WAIT));
    let follower = cluster
        .ids()
        .into_iter()
        .find(|&id| id != leader.node_id.0)
        .expect("a follower");
    let cluster_id = rust_raft_log::config::ClusterConfig::load(&dir.path().join("cluster.yaml"))
        .expect("the harness's config")
        .cluster_id();
    let addr = cluster.addrs[&follower];
    let terms = |statuses: Vec<rust_raft_log::driver::NodeStatus>| -> Vec<(u32, u64)> {
        statuses.iter().map(|s| (s.node_id.0, s.term.0)).collect()
    };
    let before = terms(rt.block_on(cluster.poll()));

    // Healthy: the vote requests reach the core, which declines them within its leader lease.
    rt.block_on(async {
        let mut client = pb::raft_client::RaftClient::new(process_cluster::channel(addr));
        for pre_vote in [true, false] {
            let declined = client
                .request_vote(peer_request(
                    vote(follower, leader.term.0 + 5, pre_vote),
                    Some(cluster_id),
                ))
                .await
                .expect_err("a follower with a live leader answers no higher-term vote");
            assert_eq!(declined.code(), Code::PermissionDenied, "{declined:?}");
            assert!(
                declined.message().contains(NOT_A_MEMBER),
                "a removed node campaigning against a healthy cluster learns of its removal: \
                 {declined:?}"
            );
        }
    });
    let after = terms(rt.block_on(cluster.poll()));
    assert_eq!(
        before,
        after,
        "an outsider's vote requests moved no term in a healthy cluster\n{}",
        cluster.describe()
    );

    // Leaderless: the survivor's lease runs out one minimum election timeout after it last
    // heard from the leader; it then answers as Raft requires.
    for id in cluster.ids() {
        if id != follower {
            cluster.kill(id);
        }
    }
    // It forgets the leader when its election timer fires (its first pre-vote round), one
    // election timeout after it last heard from it.
    let started = std::time::Instant::now();
    let survivor = loop {
        let status = rt.block_on(cluster.status(follower));
        if let Some(s) = status.filter(|s| s.leader.is_none()) {
            break s;
        }
        assert!(
            started.elapsed() < LEADER_WAIT,
            "the survivor still follows a leader\n{}",
            cluster.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let term = survivor.term.0 + 1;
    rt.block_on(async {
        let mut client = pb::raft_client::RaftClient::new(process_cluster::channel(addr));
        for pre_vote in [true, false] {
            let answer = client
                .request_vote(peer_request(
                    vote(follower, term, pre_vote),
                    Some(cluster_id),
                ))
                .await
                .unwrap_or_else(|e| {
                    panic!("the survivor answers node {OUTSIDER} (pre-vote {pre_vote}): {e:?}")
                })
                .into_inner();
            assert!(
                answer.vote_granted && answer.term == term && answer.pre_vote == pre_vote,
                "granted at term {term} (pre-vote {pre_vote}): {answer:?}"
            );
            assert!(
                answer.sender_not_member,
                "the answer tells the candidate it is not in the voter's configuration: \
                 {answer:?}"
            );
        }
    });
    let moved = rt
        .block_on(cluster.status(follower))
        .expect("the survivor answers Status");
    assert_eq!(moved.term.0, term, "the granted RequestVote moved its term");
}
