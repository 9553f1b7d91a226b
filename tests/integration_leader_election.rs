//! Three real `rust-raft-log` processes on loopback (ephemeral ports, a temp dir), observed only
//! through the Operator service's Status RPC.
//!
//! ```text
//!   start 1 2 3 ──▶ exactly one leader L (per term, at every poll)
//!   kill -9 L    ──▶ a new leader L' among the other two, in a later term
//!   restart L    ──▶ L follows L' and reaches L''s commit index
//!   stop L' and one more ──▶ the last node never becomes leader (no majority)
//! ```
//! The bounds are generous enough for a loaded 2-core CI machine; they are not performance
//! claims (`cargo bench --bench propose` measures the failover time).

mod process_cluster;

use std::time::{Duration, Instant};

use process_cluster::{Cluster, Settings};
use rust_raft_log::raft::Role;

/// How long a leader may take to appear. Elections take well under a second on a quiet machine.
const LEADER_WAIT: Duration = Duration::from_secs(20);

#[test]
fn leader_election_failover_rejoin_and_minority() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut cluster = Cluster::start(dir.path(), 3, Settings::default());

        let first = cluster.wait_for_leader(LEADER_WAIT).await;
        eprintln!("leader {} in term {}", first.node_id, first.term);

        // kill -9 the leader: one of the two others takes over, in a later term.
        cluster.kill(first.node_id.0);
        let second = cluster.wait_for_leader(LEADER_WAIT).await;
        assert_ne!(second.node_id, first.node_id, "{}", cluster.describe());
        assert!(
            second.term > first.term,
            "{second:?} after {first:?}\n{}",
            cluster.describe()
        );
        eprintln!("new leader {} in term {}", second.node_id, second.term);

        // The old leader restarts and follows the new one, catching up its commit index.
        cluster.spawn(first.node_id.0);
        let started = Instant::now();
        loop {
            let leader = cluster.status(second.node_id.0).await;
            let rejoined = cluster.status(first.node_id.0).await;
            if let (Some(leader), Some(rejoined)) = (leader, rejoined) {
                if rejoined.role == Role::Follower
                    && rejoined.leader == Some(second.node_id)
                    && rejoined.commit_index >= leader.commit_index
                {
                    // The leader's Status shows the rejoined follower's progress.
                    let matched = leader
                        .peers
                        .iter()
                        .find(|(peer, _)| *peer == first.node_id)
                        .map(|(_, m)| *m);
                    if matched >= Some(leader.commit_index) {
                        break;
                    }
                }
            }
            assert!(
                started.elapsed() < LEADER_WAIT,
                "node {} did not rejoin as a follower of {}\n{}",
                first.node_id,
                second.node_id,
                cluster.describe()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cluster.poll().await;

        // Stop the leader and one more node: the last one must never become leader.
        let last = (1..=3u32)
            .find(|id| *id != second.node_id.0 && *id != first.node_id.0)
            .expect("a third node");
        cluster.kill(second.node_id.0);
        cluster.kill(first.node_id.0);
        let observe = Instant::now();
        while observe.elapsed() < Duration::from_secs(3) {
            if let Some(s) = cluster.status(last).await {
                assert_ne!(
                    s.role,
                    Role::Leader,
                    "node {last} became leader alone: {s:?}\n{}",
                    cluster.describe()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // No two leaders ever shared a term (checked at every poll).
        assert!(cluster.leaders_by_term().len() >= 2);
    });
}
