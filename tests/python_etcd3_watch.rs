//! A second etcd client library, in another language: Python's `etcd3` (PyPI 0.12.0, with
//! `protobuf==3.20.3` and `grpcio`) watching a 3-node rust-raft-log cluster of real processes.
//!
//! ```text
//!   tests/python/etcd3_watch.py ──watch_prefix(start_revision) + add_watch_callback──▶ follower
//!                               ──put / delete──────────────────────────────────────▶ leader
//! ```
//! The script prints every event its watch iterator (history replay, then live) and its
//! callback saw; the test checks those lines. Needs `python3` with the packages above
//! (`pip install etcd3==0.12.0 protobuf==3.20.3 grpcio`); without them it fails and says so.

mod etcdctl_common;
mod process_cluster;

use std::process::Command;

use etcdctl_common::{cluster, runtime};

#[test]
fn python_etcd3_watches_history_and_live_events_on_a_follower() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (cluster, leader, follower) = cluster(dir.path(), &rt);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/etcd3_watch.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(cluster.addrs[&follower].to_string())
        .arg(cluster.addrs[&leader].to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e})"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "install the Python client: pip install etcd3==0.12.0 protobuf==3.20.3 grpcio\n{stderr}"
    );
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(
        stdout,
        "iterator PUT py/start 0 +0\n\
         iterator PUT py/a 1 +1\n\
         iterator PUT py/k v +2\n\
         iterator DELETE py/a  +3\n\
         iterator PUT py/k w +5\n\
         callback PUT py/k v +2\n\
         callback PUT py/k w +5\n\
         done\n",
        "stderr:\n{stderr}"
    );
}
