//! Membership changes with real processes on loopback, through Debian's `etcdctl` (issue 15).
//! Needs `etcdctl` on the PATH (`.ci/run` installs it).
//!
//! ```text
//!   3 nodes, a put loop through node 1 all along (one etcdctl process per put)
//!   grow:    member add --learner (node 4) ── promote refused while it lags ── start it with
//!            --join ── promote once in sync; the same for node 5                    → 5 voters
//!   replace: member remove a follower (not node 1), kill it, wipe its directory,
//!            member add --learner a fresh node (node 6, new port) ── --join ── promote
//!   update:  member update node 6's peer URL to the same URL (a recorded address change)
//!   shrink:  member remove 4 and 5: each exits by itself with status 78 and says why
//!            (restarted with its old directory, node 4 exits the same way)     → 3 voters
//!   then:    every acknowledged put is read back; `endpoint hashkv --cluster` agrees on the
//!            three members
//! ```

mod etcdctl_common;
mod process_cluster;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcdctl_common::{etcdctl, ok, runtime, LEADER_WAIT};
use process_cluster::{free_ports, Cluster, Settings};
use rust_raft_log::etcd::members::member_id;
use rust_raft_log::types::NodeId;

/// How long a learner may take to catch up before its promotion is given up on.
const CATCH_UP_MAX: Duration = Duration::from_secs(30);

fn hex_id(node: u32) -> String {
    format!("{:x}", member_id(NodeId(node)))
}

/// `member list -w table` rows as (hex id, name, peer URL, is learner).
fn member_rows(endpoint: &str) -> Vec<(String, String, String, bool)> {
    let table = ok(endpoint, &["member", "list", "-w", "table"]);
    table
        .lines()
        .filter(|l| l.starts_with('|') && !l.contains("STATUS"))
        .map(|l| {
            let f: Vec<&str> = l.split('|').map(str::trim).collect();
            // | ID | STATUS | NAME | PEER ADDRS | CLIENT ADDRS | IS LEARNER |
            (
                f[1].to_string(),
                f[3].to_string(),
                f[4].to_string(),
                f[6] == "true",
            )
        })
        .collect()
}

fn new_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_ports(1)[0]))
}

/// `member add --learner` at `addr`; checks what etcdctl printed; returns the new node id.
fn add_learner(endpoint: &str, name: &str, addr: SocketAddr, cluster: &Cluster) -> u32 {
    let url = format!("http://{addr}");
    let out = ok(
        endpoint,
        &[
            "member",
            "add",
            name,
            &format!("--peer-urls={url}"),
            "--learner",
        ],
    );
    // etcdctl: "Member <hex id> added to cluster <hex cluster id>", then the ETCD_* lines.
    let hex = out
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("Member "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("member add printed {out}\n{}", cluster.describe()))
        .to_string();
    assert!(
        out.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{out}"
    );
    let rows = member_rows(endpoint);
    let row = rows
        .iter()
        .find(|r| r.0 == hex)
        .unwrap_or_else(|| panic!("member {hex} not listed: {rows:?}"));
    assert!(row.3, "a learner is listed as one: {row:?}");
    assert_eq!(row.2, url, "{row:?}");
    let node: u32 = row
        .1
        .strip_prefix("node")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("name {row:?}"));
    assert_eq!(hex, hex_id(node));
    node
}

/// Promotes `node` once it caught up (etcd refuses while it lags); returns how many refusals.
fn promote_when_in_sync(endpoint: &str, node: u32, cluster: &Cluster) -> u32 {
    let started = Instant::now();
    let mut refusals = 0;
    loop {
        let out = etcdctl(endpoint, &["member", "promote", &hex_id(node)], None);
        if out.success {
            assert!(
                out.stdout
                    .contains(&format!("Member {} promoted", hex_id(node))),
                "{out:?}"
            );
            return refusals;
        }
        assert!(
            out.stderr
                .contains("can only promote a learner member which is in sync with leader"),
            "{out:?}"
        );
        refusals += 1;
        assert!(
            started.elapsed() < CATCH_UP_MAX,
            "learner {node} never caught up: {out:?}\n{}",
            cluster.describe()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How long a removed node may take to stop: three maximum election timeouts of evidence
/// (`REMOVAL_GRACE_ELECTIONS`), an election timeout to start campaigning, and slack.
const REMOVED_EXIT_MAX: Duration = Duration::from_secs(15);

/// Waits for the removed node `node` to exit by itself, checks that it exits with the removed
/// status and says why, and returns its output from byte `since` (where its latest run began).
fn expect_removed_exit(cluster: &mut Cluster, node: u32, since: usize) -> String {
    let status = wait_for_exit(cluster, node, REMOVED_EXIT_MAX);
    let out = cluster.output(node)[since..].to_string();
    assert_eq!(
        status.code(),
        Some(rust_raft_log::node::EXIT_REMOVED as i32),
        "removed node {node} exits with the removed status: {status}\n{out}"
    );
    assert!(
        out.contains(&format!("node {node} was removed from the cluster")),
        "removed node {node} says why it stopped:\n{out}"
    );
    out
}

/// Waits for node `node` to exit by itself; its status.
fn wait_for_exit(cluster: &mut Cluster, node: u32, bound: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some((_, status)) = cluster.exited().into_iter().find(|(id, _)| *id == node) {
            println!(
                "node {node} exited {:.1} s after its removal ({status})",
                started.elapsed().as_secs_f64()
            );
            return status;
        }
        assert!(
            started.elapsed() < bound,
            "removed node {node} still runs after {bound:?}:\n{}",
            cluster.output(node)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn remove(endpoint: &str, node: u32) {
    let out = ok(endpoint, &["member", "remove", &hex_id(node)]);
    assert!(
        out.contains(&format!("Member {} removed", hex_id(node))),
        "{out}"
    );
}

#[test]
fn grow_replace_and_shrink_under_load_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    // Snapshots far apart: a new member catches up from the log (the core's InstallSnapshot does
    // not carry the configuration yet: issue 15's simulator branch).
    let settings = Settings {
        election_min_ms: 300,
        election_max_ms: 600,
        heartbeat_ms: 50,
        extra: "  snapshot_entries: 1000000\n".into(),
        ..Settings::default()
    };
    let mut cluster = Cluster::start(dir.path(), 3, settings);
    let leader = rt.block_on(cluster.wait_for_leader(LEADER_WAIT)).node_id.0;
    let on_1 = cluster.addrs[&1].to_string();
    assert_eq!(ok(&on_1, &["put", "before", "1"]).trim(), "OK");

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        let endpoint = on_1.clone();
        std::thread::spawn(move || {
            let (mut acked, mut failed) = (Vec::new(), 0u32);
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("load/{i:05}");
                if etcdctl(&endpoint, &["put", &key, "v"], None).success {
                    acked.push(key);
                } else {
                    failed += 1;
                }
                i += 1;
            }
            (acked, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(300));

    // Grow to 5: learners first, promoted once in sync.
    let mut refused_while_lagging = 0;
    for name in ["grow-a", "grow-b"] {
        let addr = new_address();
        let node = add_learner(&on_1, name, addr, &cluster);
        // Not started yet: it lags by everything, and promotion is refused with etcd's text.
        let early = etcdctl(&on_1, &["member", "promote", &hex_id(node)], None);
        assert!(
            !early.success
                && early
                    .stderr
                    .contains("can only promote a learner member which is in sync with leader"),
            "{early:?}"
        );
        refused_while_lagging += 1;
        // One learner at a time (etcd's --max-learners, `learners_max`, default 1): a second
        // is refused with etcd's text while this one is not promoted.
        let second = etcdctl(
            &on_1,
            &[
                "member",
                "add",
                "second",
                &format!("--peer-urls=http://{}", new_address()),
                "--learner",
            ],
            None,
        );
        assert!(
            !second.success
                && second
                    .stderr
                    .contains("etcdserver: too many learner members in cluster"),
            "{second:?}"
        );
        cluster.spawn_joining(node, addr);
        // The new node serves the etcd API and calls itself a learner (endpoint status's 6th
        // field, IS LEARNER).
        let started = Instant::now();
        loop {
            let out = etcdctl(&addr.to_string(), &["endpoint", "status"], None);
            if out.success {
                let fields: Vec<&str> = out.stdout.trim().split(", ").collect();
                assert_eq!(fields.get(5), Some(&"true"), "{out:?}");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "node {node} never served: {out:?}\n{}",
                cluster.describe()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        promote_when_in_sync(&on_1, node, &cluster);
    }
    let rows = member_rows(&on_1);
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(rows.iter().all(|r| !r.3), "all voters now: {rows:?}");
    // Refusals come back as etcd's errors, through a follower too (forwarded to the leader).
    let on_follower =
        cluster.addrs[&[2, 3].into_iter().find(|n| *n != leader).expect("follower")].to_string();
    let voter = etcdctl(&on_follower, &["member", "promote", &hex_id(4)], None);
    assert!(
        !voter.success && voter.stderr.contains("can only promote a learner member"),
        "{voter:?}"
    );
    let unknown = etcdctl(&on_follower, &["member", "remove", "ffff"], None);
    assert!(
        !unknown.success && unknown.stderr.contains("member not found"),
        "{unknown:?}"
    );
    let taken = etcdctl(
        &on_follower,
        &[
            "member",
            "add",
            "dup",
            &format!("--peer-urls=http://{}", cluster.addrs[&4]),
        ],
        None,
    );
    assert!(
        !taken.success && taken.stderr.contains("Peer URLs already exists"),
        "{taken:?}"
    );

    // Replace a follower (not node 1, which the load goes through): remove, stop, wipe, add a
    // fresh member in its place.
    let replaced = [2, 3]
        .into_iter()
        .find(|n| *n != leader)
        .expect("a follower among 2 and 3");
    remove(&on_1, replaced);
    cluster.forget(replaced);
    std::fs::remove_dir_all(cluster.node_dir(replaced)).expect("wipe the removed node");
    let addr = new_address();
    let fresh = add_learner(&on_1, "fresh", addr, &cluster);
    assert!(fresh > 5, "ids are never reused: {fresh}");
    cluster.spawn_joining(fresh, addr);
    promote_when_in_sync(&on_1, fresh, &cluster);
    // MemberUpdate: record the (same) URL again; etcdctl prints its confirmation.
    let updated = ok(
        &on_1,
        &[
            "member",
            "update",
            &hex_id(fresh),
            &format!("--peer-urls=http://{addr}"),
        ],
    );
    assert!(
        updated.contains(&format!("Member {} updated", hex_id(fresh))),
        "{updated}"
    );

    // Shrink back to 3. A removed node stops by itself (as etcd's does): the leader's last
    // append tells it that its removal committed; failing that, its own log or the members'
    // gates refusing its elections, for three election timeouts. It logs why and exits with
    // status 78.
    let mut removed_addrs = Vec::new();
    for node in [4, 5] {
        remove(&on_1, node);
        expect_removed_exit(&mut cluster, node, 0);
        removed_addrs.push((node, cluster.addrs[&node]));
        cluster.forget(node);
    }
    // Restarted with its old directory, a removed node does not rejoin: it stops again, and
    // says so.
    let (node, addr) = removed_addrs[0];
    let before = cluster.output(node).len();
    cluster.spawn_joining(node, addr);
    expect_removed_exit(&mut cluster, node, before);
    cluster.forget(node);
    let rows = member_rows(&on_1);
    let mut listed: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
    listed.sort();
    let survivor = 5 - replaced; // 2 <-> 3
    let mut expected = vec![
        "node1".to_string(),
        format!("node{survivor}"),
        format!("node{fresh}"),
    ];
    expected.sort();
    assert_eq!(listed, expected, "{rows:?}");

    // Leadership moves to the member added last (MoveLeader knows members added at run time).
    let all = [1, survivor, fresh]
        .iter()
        .map(|n| cluster.addrs[n].to_string())
        .collect::<Vec<_>>()
        .join(",");
    let moved = ok(&all, &["move-leader", &hex_id(fresh)]);
    assert!(moved.contains(&hex_id(fresh)), "{moved}");
    let status = ok(&cluster.addrs[&fresh].to_string(), &["endpoint", "status"]);
    let fields: Vec<&str> = status.trim().split(", ").collect();
    assert_eq!(fields.get(4), Some(&"true"), "node {fresh} leads: {status}");

    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = load.join().expect("load thread");
    assert!(acked.len() > 20, "the load ran: {} acked", acked.len());

    // No acknowledged write lost: read every key back (linearizable, through node 1).
    let keys = ok(&on_1, &["get", "load/", "--prefix", "--keys-only"]);
    let present: std::collections::HashSet<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|k| !present.contains(k.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");

    // Every member's HashKV agrees (they may need a moment to apply the last entries).
    let endpoints = [1, survivor, fresh]
        .iter()
        .map(|n| cluster.addrs[n].to_string())
        .collect::<Vec<_>>()
        .join(",");
    let started = Instant::now();
    let hashes = loop {
        let out = etcdctl(&on_1, &["endpoint", "hashkv", "--cluster"], None);
        let hashes: Vec<String> = out
            .stdout
            .lines()
            .filter_map(|l| l.split(", ").nth(1).map(str::to_string))
            .collect();
        if out.success && hashes.len() == 3 && hashes.iter().all(|h| *h == hashes[0]) {
            break hashes;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the members never agreed on one hash: {out:?} ({endpoints})\n{}",
            cluster.describe()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    println!(
        "{} puts acknowledged, {failed} failed or timed out, promotion refused {refused_while_lagging} \
         times while lagging; final HashKV {hashes:?}",
        acked.len()
    );
}

/// `endpoint status` of `endpoint` as (raft index, raft applied index).
fn raft_indexes(endpoint: &str) -> Option<(u64, u64)> {
    let out = etcdctl(endpoint, &["endpoint", "status"], None);
    if !out.success {
        return None;
    }
    // endpoint, ID, version, db size, is leader, is learner, raft term, raft index,
    // raft applied index, errors
    // (not trimmed: the empty errors field ends the line with ", ")
    let fields: Vec<&str> = out.stdout.lines().next()?.split(", ").collect();
    Some((fields.get(7)?.parse().ok()?, fields.get(8)?.parse().ok()?))
}

/// Issue 15, gap 2: a learner removed before its promotion never appends its removal (the leader
/// stops sending to it) and never campaigns, so no refused election tells it. It asks the voters
/// once it has heard from no leader for three election timeouts (MembershipProbe), and stops on
/// their "no" with status 78. Before that, with no leader at all (two of three voters down), it
/// hears nothing for as long and must not stop: the voter it still reaches answers "yes".
#[test]
fn a_learner_removed_before_its_promotion_stops_and_one_without_a_leader_does_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let settings = Settings {
        election_min_ms: 300,
        election_max_ms: 600,
        heartbeat_ms: 50,
        ..Settings::default()
    };
    // Three maximum election timeouts, as `REMOVAL_GRACE_ELECTIONS` says.
    let grace = Duration::from_millis(3 * 600);
    let mut cluster = Cluster::start(dir.path(), 3, settings);
    rt.block_on(cluster.wait_for_leader(LEADER_WAIT));
    let on_1 = cluster.addrs[&1].to_string();
    for i in 0..20 {
        assert_eq!(ok(&on_1, &["put", &format!("k{i}"), "v"]).trim(), "OK");
    }
    let addr = new_address();
    let learner = add_learner(&on_1, "learner", addr, &cluster);
    cluster.spawn_joining(learner, addr);
    wait_caught_up(&cluster, &on_1, learner, addr);

    // No leader: nodes 2 and 3 down. The learner hears from no one and probes; node 1 says it
    // is a member, 2 and 3 do not answer: no evidence, it keeps running.
    cluster.kill(2);
    cluster.kill(3);
    std::thread::sleep(grace * 3);
    assert!(
        cluster.exited().is_empty(),
        "a learner without a leader (not removed) stopped:\n{}",
        cluster.output(learner)
    );
    assert!(
        !cluster
            .output(learner)
            .contains("was removed from the cluster"),
        "{}",
        cluster.output(learner)
    );
    cluster.spawn(2);
    cluster.spawn(3);
    rt.block_on(cluster.wait_for_leader(LEADER_WAIT));

    // Removed before its promotion: it stops by itself, says why, with the removed status.
    remove(&on_1, learner);
    expect_removed_exit(&mut cluster, learner, 0);
    cluster.forget(learner);

    // A learner that was down when it was removed never gets the leader's last append telling
    // it so. Restarted on its directory, it hears from no leader, asks the voters
    // (MembershipProbe), and stops on their "no".
    let addr = new_address();
    let second = add_learner(&on_1, "second", addr, &cluster);
    cluster.spawn_joining(second, addr);
    wait_caught_up(&cluster, &on_1, second, addr);
    cluster.kill(second);
    remove(&on_1, second);
    let before = cluster.output(second).len();
    cluster.spawn_joining(second, addr);
    let out = expect_removed_exit(&mut cluster, second, before);
    assert!(
        out.contains("have said it is not a member"),
        "learner {second} learned of its removal from the voters' answers to its probes:\n{out}"
    );
    cluster.forget(second);
    let rows = member_rows(&on_1);
    assert_eq!(rows.len(), 3, "{rows:?}");
}

/// Waits until the learner `learner` at `addr` applied everything node 1 (`on_1`) had.
fn wait_caught_up(cluster: &Cluster, on_1: &str, learner: u32, addr: SocketAddr) {
    let (target, _) = raft_indexes(on_1).expect("node 1's status");
    let started = Instant::now();
    while raft_indexes(&addr.to_string()).is_none_or(|(_, applied)| applied < target) {
        assert!(
            started.elapsed() < CATCH_UP_MAX,
            "learner {learner} never caught up to {target}\n{}",
            cluster.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
