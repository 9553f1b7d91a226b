//! Backup and restore with real processes and Debian's `etcdctl` (3.4): a fresh snapshot saved
//! from a running cluster restores a new cluster that serves the same keys.
//!
//! ```text
//!   cluster A (3 nodes, snapshot_entries 10000: no snapshot by policy)
//!     puts: 40 keys, some overwritten, one deleted
//!     etcdctl --endpoints=<follower of A> snapshot save backup.db
//!        → "Snapshot saved at backup.db", exit 0; the file verifies, and covers at least what
//!          the follower had applied before the request (a fresh snapshot, taken for the request)
//!   A stops
//!   cluster B (3 nodes, new ports, new directory, so a new cluster id)
//!     segdump's restore (node::restore::restore_snapshot) for nodes 1, 2, 3 from backup.db
//!     start → each logs "📸 Restored the snapshot at index ...", a leader is elected
//!     every key: value, create/mod revision, version equal to A's, on every node (serializable)
//!       and through one linearizable read; the store revision equal
//!     a put on B gets A's revision + 1
//! ```

mod etcdctl_common;
mod process_cluster;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use etcdctl_common::{etcdctl, runtime, LEADER_WAIT};
use process_cluster::{channel, kv_state, Cluster, Settings};
use rust_raft_log::config::ClusterConfig;
use rust_raft_log::etcdpb::etcdserverpb::{
    kv_client::KvClient, maintenance_client::MaintenanceClient, DeleteRangeRequest, PutRequest,
    StatusRequest,
};
use rust_raft_log::node::restore::restore_snapshot;
use rust_raft_log::storage::snapshot::verify;
use rust_raft_log::storage::uring::UringVfs;

const KEYS: usize = 40;
const WAIT: Duration = Duration::from_secs(30);

/// etcd-like timing (as the etcdctl tests), so a loaded machine does not turn a stall into an
/// election.
fn settings() -> Settings {
    Settings {
        election_min_ms: 1000,
        election_max_ms: 2000,
        heartbeat_ms: 100,
        ..Settings::default()
    }
}

/// Writes to cluster A through `addr`: keys overwritten up to three times, one deleted.
async fn load(addr: SocketAddr) {
    let mut kv = KvClient::new(channel(addr));
    for round in 0..3 {
        for i in (0..KEYS).filter(|i| i % 3 >= round) {
            kv.put(PutRequest {
                key: format!("key-{i:02}").into_bytes(),
                value: format!("value-{i}-round-{round}").into_bytes(),
                ..PutRequest::default()
            })
            .await
            .expect("put");
        }
    }
    kv.delete_range(DeleteRangeRequest {
        key: b"key-07".to_vec(),
        ..DeleteRangeRequest::default()
    })
    .await
    .expect("delete");
}

#[test]
fn a_saved_snapshot_restores_a_new_cluster_with_every_key_and_revision() {
    let rt = runtime();
    let dir_a = tempfile::tempdir().expect("tempdir");
    let mut a = Cluster::start(dir_a.path(), 3, settings());
    let leader = rt.block_on(a.wait_for_leader(LEADER_WAIT)).node_id.0;
    let follower = a.ids().into_iter().find(|id| *id != leader).expect("one");
    rt.block_on(load(a.addrs[&leader]));
    let (revision, expected) = rt.block_on(kv_state(a.addrs[&leader], false));
    assert_eq!(expected.len(), KEYS - 1, "key-07 was deleted");
    assert!(
        expected.iter().any(|kv| kv.4 == 3) && expected.iter().any(|kv| kv.4 == 1),
        "versions 1 to 3: {expected:?}"
    );

    // Save from a follower once it applied everything: the file must cover at least what it had
    // applied when it was asked (snapshot_entries is 10,000: only the request makes a snapshot).
    let started = Instant::now();
    while rt.block_on(kv_state(a.addrs[&follower], true)).0 != revision {
        assert!(started.elapsed() < WAIT, "the follower never caught up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let applied = rt
        .block_on(async {
            MaintenanceClient::new(channel(a.addrs[&follower]))
                .status(StatusRequest {})
                .await
        })
        .expect("status")
        .into_inner()
        .raft_applied_index;
    let backup = dir_a.path().join("backup.db");
    let out = etcdctl(
        &a.addrs[&follower].to_string(),
        &["snapshot", "save", backup.to_str().expect("utf-8 path")],
        None,
    );
    assert!(out.success, "etcdctl snapshot save: {out:?}");
    assert!(
        out.stdout
            .contains(&format!("Snapshot saved at {}", backup.display())),
        "{out:?}"
    );
    let summary = verify(&UringVfs, &backup).expect("the saved file verifies");
    assert!(
        summary.meta.index.0 >= applied,
        "a fresh snapshot: index {} < applied {applied}",
        summary.meta.index
    );
    a.wait_for_output(follower, "📸 Sent snapshot", WAIT);
    drop(a);

    // Cluster B: new ports (so a new cluster id), new directory; nodes restored, then started.
    let dir_b = tempfile::tempdir().expect("tempdir");
    let mut b = Cluster::configure(dir_b.path(), 3, settings());
    let config = ClusterConfig::load(&dir_b.path().join("cluster.yaml")).expect("config");
    for id in b.ids() {
        let directory = dir_b.path().join(config.node_directory(id));
        let restored = restore_snapshot(&backup, &config, id, &directory).expect("restore");
        assert_eq!(restored.index, summary.meta.index);
        assert_eq!(restored.cluster_id, config.cluster_id());
        assert_ne!(restored.cluster_id, summary.meta.cluster_id);
        assert_eq!(restored.directory, b.node_dir(id));
        b.spawn(id);
    }
    for id in b.ids() {
        b.wait_for_output(
            id,
            &format!("📸 Restored the snapshot at index {}", summary.meta.index),
            WAIT,
        );
    }
    let new_leader = rt.block_on(b.wait_for_leader(LEADER_WAIT)).node_id.0;
    for id in b.ids() {
        let (rev, kvs) = rt.block_on(kv_state(b.addrs[&id], true));
        assert_eq!(rev, revision, "node {id}: the store's revision");
        assert_eq!(kvs, expected, "node {id}: every key as cluster A had it");
    }
    let (rev, kvs) = rt.block_on(kv_state(b.addrs[&new_leader], false));
    assert_eq!((rev, &kvs), (revision, &expected), "a linearizable read");

    let put = rt
        .block_on(async {
            KvClient::new(channel(b.addrs[&new_leader]))
                .put(PutRequest {
                    key: b"after-restore".to_vec(),
                    value: b"yes".to_vec(),
                    ..PutRequest::default()
                })
                .await
        })
        .expect("put on the restored cluster")
        .into_inner();
    assert_eq!(put.header.expect("header").revision, revision + 1);
    assert_eq!(b.exited(), [], "{}", b.describe());
    assert_node_dirs_hold_one_snapshot(&b);
}

/// Each restored directory holds the restored snapshot (nothing was snapshotted since).
fn assert_node_dirs_hold_one_snapshot(cluster: &Cluster) {
    for id in cluster.ids() {
        let snaps = std::fs::read_dir(cluster.node_dir(id))
            .expect("node dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".snap"))
            .count();
        assert_eq!(snaps, 1, "node {id}");
    }
}
