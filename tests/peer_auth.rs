//! Who may send Raft messages, in plaintext mode (issue 16): the cluster id on every peer RPC.
//!
//! ```text
//!   node 1 ─┐                      forger ── AppendEntries "from node 2", term T+100,
//!   node 2 ─┼─ cluster A (3 nodes)            one garbage entry ──► node (a follower)
//!   node 3 ─┘                      node 4 ── cluster B's config (nodes 1, 2, 4):
//!                                            RequestVotes at ever higher terms ──► 1, 2
//! ```
//! On main, the forged AppendEntries was answered `success`, every node moved to term T+100 and
//! the entry was committed. Now: a request without cluster A's id, with another cluster's id, or
//! from a node that is not a member is refused before the core sees it, the refusal names both
//! sides, and cluster A's term and leader do not move. Node 4 (another cluster's config) says
//! why it is refused, and so do the nodes that refuse it.
//!
//! In plaintext mode the cluster id stops mistakes, not attackers (docs/SECURITY.md): the TLS
//! test (tests/tls_cluster.rs) covers a forger who knows the id.

mod process_cluster;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use process_cluster::{Cluster, Settings};
use rust_raft_log::grpc::gate::{format_cluster_id, peer_request};
use rust_raft_log::grpc::proto as pb;
use tonic::Code;

const LEADER_WAIT: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The forged request of issue 16: node `to` is told that node 2 leads term `term` and sends
/// one entry with a garbage payload after `prev` (index, term).
fn forged(to: u32, term: u64, prev: (u64, u64)) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        route: Some(pb::Route { from: 2, to }),
        term,
        leader_id: 2,
        prev_log_index: prev.0,
        prev_log_term: prev.1,
        entries: vec![pb::LogEntry {
            term,
            index: prev.0 + 1,
            entry_type: pb::EntryType::Normal as i32,
            payload: b"\xff\xfegarbage".to_vec(),
        }],
        leader_commit: prev.0 + 1,
        read_seq: 0,
    }
}

/// Every running node's term and leader, in id order.
async fn terms(cluster: &mut Cluster) -> Vec<(u32, u64, Option<u32>)> {
    let mut seen = Vec::new();
    for s in cluster.poll().await {
        seen.push((s.node_id.0, s.term.0, s.leader.map(|l| l.0)));
    }
    seen
}

#[test]
fn forged_append_entries_and_another_clusters_node_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = runtime();
    // The test asserts that no term moves: etcd's slower elections.
    let mut cluster = Cluster::start(dir.path(), 3, Settings::etcd_timing());
    let leader = rt.block_on(cluster.wait_for_leader(LEADER_WAIT));
    // The forger claims to be node 2: send to a follower that is not node 2.
    let follower = cluster
        .ids()
        .into_iter()
        .find(|&id| id != leader.node_id.0 && id != 2)
        .expect("three nodes: one is neither the leader nor node 2");
    let before = rt.block_on(terms(&mut cluster));
    let term = leader.term.0;
    let prev = (leader.last_log_index.0, term);
    let addr = cluster.addrs[&follower];
    let cluster_id = {
        let config = rust_raft_log::config::ClusterConfig::load(&dir.path().join("cluster.yaml"))
            .expect("the harness's config");
        config.cluster_id()
    };

    rt.block_on(async {
        let mut client = pb::raft_client::RaftClient::new(process_cluster::channel(addr));
        // 1. As on main: no cluster id at all.
        let refused = client
            .append_entries(forged(follower, term + 100, prev))
            .await
            .expect_err("a request without the cluster id is refused");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused.message().contains("cluster id")
                && refused.message().contains(&format_cluster_id(cluster_id)),
            "the refusal names this cluster's id: {refused:?}"
        );
        // 2. Another cluster's id.
        let other = cluster_id ^ 0x5a5a;
        let refused = client
            .append_entries(peer_request(
                forged(follower, term + 100, prev),
                Some(other),
            ))
            .await
            .expect_err("another cluster's id is refused");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused.message().contains(&format_cluster_id(cluster_id))
                && refused.message().contains(&format_cluster_id(other)),
            "the refusal names both ids: {refused:?}"
        );
        // 3. The right id, a sender that is not a member.
        let mut not_member = forged(follower, term + 100, prev);
        not_member.route = Some(pb::Route {
            from: 7,
            to: follower,
        });
        not_member.leader_id = 7;
        let refused = client
            .append_entries(peer_request(not_member, Some(cluster_id)))
            .await
            .expect_err("a sender outside the config is refused");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("node 7"), "{refused:?}");
        // The same on the stream the leaders use and on RequestVote.
        let vote = pb::RequestVoteRequest {
            route: Some(pb::Route {
                from: 2,
                to: follower,
            }),
            term: term + 100,
            candidate_id: 2,
            last_log_index: u64::MAX / 2,
            last_log_term: term + 100,
            pre_vote: false,
            leader_transfer: false,
        };
        let refused = client
            .request_vote(vote)
            .await
            .expect_err("a vote request without the cluster id is refused");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        let stream = tokio_stream::iter(vec![forged(follower, term + 100, prev)]);
        let refused = client
            .append_entries_stream(stream)
            .await
            .expect_err("a stream without the cluster id is refused");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    });

    // Node 4 of "cluster B": nodes 1 and 2 at cluster A's addresses, and itself. It campaigns
    // (no one answers it), and every RequestVote carries cluster B's id.
    let rogue_dir = dir.path().join("cluster_b");
    std::fs::create_dir_all(&rogue_dir).expect("cluster B dir");
    let rogue_port = process_cluster::free_ports(1)[0];
    let yaml = format!(
        "nodes:\n  - node_id: 1\n    ip_address: \"127.0.0.1\"\n    port: {}\n  - node_id: 2\n    \
         ip_address: \"127.0.0.1\"\n    port: {}\n  - node_id: 4\n    ip_address: \"127.0.0.1\"\n    \
         port: {rogue_port}\ncluster_settings:\n  log_directory: \"raft_logs\"\n  \
         log_segment_size: 1048576\n  election_timeout_range: {{min: 150, max: 300}}\n  \
         heartbeat_interval: 50\n",
        cluster.addrs[&1].port(),
        cluster.addrs[&2].port()
    );
    std::fs::write(rogue_dir.join("cluster.yaml"), yaml).expect("cluster B config");
    let out = std::fs::File::create(rogue_dir.join("node_4.out")).expect("output file");
    let mut rogue = Command::new(env!("CARGO_BIN_EXE_rust-raft-log"))
        .args(["--node-id", "4", "--config", "cluster.yaml"])
        .current_dir(&rogue_dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(out.try_clone().expect("clone")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("spawn node 4 of cluster B");
    let rogue_output = || std::fs::read_to_string(rogue_dir.join("node_4.out")).unwrap_or_default();
    let started = Instant::now();
    let says_why = loop {
        let text = rogue_output();
        if text.contains("refused this node") && text.contains("cluster id mismatch") {
            break true;
        }
        if started.elapsed() > Duration::from_secs(10) {
            break false;
        }
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
    };
    // Let it campaign a while longer: its terms climb, cluster A's must not. (Sleeping inside
    // the runtime keeps the harness's connections answering the nodes' keepalive pings.)
    rt.block_on(async { tokio::time::sleep(Duration::from_secs(2)).await });
    let after = rt.block_on(terms(&mut cluster));
    let _ = rogue.kill();
    let _ = rogue.wait();
    assert!(
        says_why,
        "node 4 (cluster B's config) never logged why it is refused:\n{}",
        rogue_output()
    );
    assert_eq!(after.len(), 3, "{}", cluster.describe());
    assert_eq!(
        before,
        after,
        "cluster A's terms or leader moved (node, term, leader)\n{}",
        cluster.describe()
    );
    let refusing = [1, 2].iter().any(|&id| {
        cluster
            .output(id)
            .contains("refused a Raft RPC: cluster id mismatch")
    });
    assert!(
        refusing,
        "neither node 1 nor 2 logged the refusal of cluster B's node\n{}",
        cluster.describe()
    );
    // Once per address and interval, not per RPC: node 4 sent dozens of votes.
    for id in [1, 2] {
        let lines = cluster
            .output(id)
            .matches("refused a Raft RPC: cluster id mismatch")
            .count();
        assert!(lines <= 1, "node {id} logged the refusal {lines} times");
    }
    // Still the same leader, in the same term.
    let status = rt.block_on(cluster.wait_for_leader(LEADER_WAIT));
    assert_eq!(status.term.0, term, "{}", cluster.describe());
}
