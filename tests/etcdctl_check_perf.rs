//! `etcdctl check perf --load=s` against a 3-node rust-raft-log cluster of real processes: 60 s of
//! writes from 50 clients at 150 writes/s, then etcdctl's own verdict on throughput, the slowest
//! request and the latency spread. It sits in its own test binary so that it never shares the
//! machine with the other etcdctl tests' clusters (cargo runs test binaries one after another):
//! beside them on 2 cores its slowest request failed the check once.
//!
//! ```text
//!   etcdctl check perf (50 clients) ──▶ nodes 1, 2, 3 (followers forward to the leader)
//! ```

mod etcdctl_common;
mod process_cluster;

use etcdctl_common::{cluster, etcdctl, runtime};

#[test]
fn etcdctl_check_perf_small_load_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (cluster, _leader, _follower) = cluster(dir.path(), &rt);
    let all: Vec<String> = cluster.addrs.values().map(|a| a.to_string()).collect();
    // check perf writes for 60 s at the "s" load (50 clients, 150 writes/s), then checks
    // throughput, the slowest request and the latency stddev.
    let out = etcdctl(&all.join(","), &["check", "perf", "--load=s"], None);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(out.success, "{out:?}\n{}", cluster.describe());
    assert!(text.contains("PASS: Throughput"), "{text}");
    assert!(text.contains("PASS: Slowest request"), "{text}");
    assert!(text.contains("PASS: Stddev"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
}
