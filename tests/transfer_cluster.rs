//! Leadership transfer with real processes on loopback (3 nodes, etcd-like timing: heartbeat
//! 100 ms, election 1-2 s). Needs Debian's `etcdctl` on the PATH (`.ci/run` installs it).
//!
//! ```text
//!   etcdctl move-leader <hex id of F> ──▶ L ──TimeoutNow──▶ F   (F leads the next term)
//!   SIGTERM ──▶ F (leader) ──TimeoutNow──▶ most up-to-date voter, then F exits
//!   a put loop (one etcdctl process per put) through the third node all along: none may fail,
//!   and every acknowledged key is read back at the end
//! ```

mod etcdctl_common;
mod process_cluster;

use std::time::{Duration, Instant};

use etcdctl_common::{cluster, etcdctl, ok, runtime, LEADER_WAIT};
use rust_raft_log::etcd::members::member_id;
use rust_raft_log::types::NodeId;

#[test]
fn move_leader_and_sigterm_hand_leadership_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (mut cluster, leader, target) = cluster(dir.path(), &rt);
    let third = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader && *id != target)
        .expect("third node");
    let on_leader = cluster.addrs[&leader].to_string();
    let on_third = cluster.addrs[&third].to_string();
    assert_eq!(ok(&on_third, &["put", "before", "1"]).trim(), "OK");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = std::sync::Arc::clone(&stop);
        let endpoint = on_third.clone();
        std::thread::spawn(move || {
            let (mut acked, mut failed) = (Vec::new(), Vec::new());
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("load/{i:05}");
                let out = etcdctl(&endpoint, &["put", &key, "v"], None);
                if out.success {
                    acked.push(key);
                } else {
                    failed.push(format!("{key}: {out:?}"));
                }
                i += 1;
            }
            (acked, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(500));

    // A non-member is refused with etcd's text.
    let bad = etcdctl(&on_leader, &["move-leader", "ffff"], None);
    assert!(
        !bad.success && bad.stderr.contains("bad leader transferee"),
        "{bad:?}"
    );

    let hex = format!("{:x}", member_id(NodeId(target)));
    let started = Instant::now();
    let moved = etcdctl(&on_leader, &["move-leader", &hex], None);
    let took = started.elapsed();
    assert!(moved.success, "{moved:?}\n{}", cluster.describe());
    println!(
        "move-leader {leader} -> {target}: etcdctl took {} ms: {}",
        took.as_millis(),
        moved.stdout.trim()
    );
    let now = rt.block_on(cluster.wait_for_leader(LEADER_WAIT)).node_id.0;
    assert_eq!(now, target, "{}", cluster.describe());
    assert_eq!(ok(&on_third, &["put", "after-move", "2"]).trim(), "OK");

    // SIGTERM on the new leader: it hands over before it exits.
    let started = Instant::now();
    let status = cluster.terminate(target, Duration::from_secs(10));
    let exit_ms = started.elapsed().as_millis();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        cluster.describe()
    );
    let out = cluster.output(target);
    assert!(out.contains("handed leadership over to node"), "{out}");
    println!("SIGTERM on leader {target}: exited after {exit_ms} ms");
    let put = etcdctl(&on_third, &["put", "after-sigterm", "3"], None);
    assert!(put.success, "{put:?}\n{}", cluster.describe());
    assert_eq!(
        ok(&on_third, &["get", "--prefix", "after"]),
        "after-move\n2\nafter-sigterm\n3\n"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, failed) = load.join().expect("load thread");
    println!(
        "put load: {} acknowledged, {} failed",
        acked.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "puts failed during the moves: {failed:#?}"
    );
    let keys = ok(&on_third, &["get", "--prefix", "load/", "--keys-only"]);
    let stored: std::collections::HashSet<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|k| !stored.contains(k.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged puts lost: {lost:?}");
}
