//! etcd leases through Debian's `etcdctl` (3.4) against a 3-node cluster of real processes on
//! loopback: every test checks etcdctl's output.
//!
//! ```text
//!   etcdctl ──Lease/KV──▶ follower F ──forwarded──▶ leader L (grant, revoke: through the log;
//!                                                  keep-alive, timetolive: L's clock)
//!   L's expiry task ──revoke through the log──▶ every attached key deleted at one revision
//! ```
//! The cluster runs with etcd-like timing (election timeout 1-2 s), so etcd's minimum TTL rule
//! gives ceil(1.5 × 2 s) = 3 s. Bounds are generous for a loaded 2-core machine.

mod etcdctl_common;
mod process_cluster;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use etcdctl_common::{cluster, etcdctl, ok, runtime, LEADER_WAIT};

/// The minimum TTL of the harness cluster (election timeout max 2000 ms).
const MIN_TTL_S: u64 = 3;

/// The lease ID (hex, as etcdctl prints and takes it) out of `lease <id> granted with TTL(<n>s)`.
fn granted(stdout: &str, ttl_s: u64) -> String {
    let words: Vec<&str> = stdout.split_whitespace().collect();
    assert!(
        words.len() == 5 && words[0] == "lease" && words[2] == "granted",
        "unexpected grant output: {stdout:?}"
    );
    assert_eq!(words[4], format!("TTL({ttl_s}s)"), "{stdout:?}");
    assert_eq!(
        words[1].len(),
        16,
        "etcdctl prints IDs as 16 hex digits: {stdout:?}"
    );
    words[1].to_owned()
}

/// Waits until `get key` prints nothing (the key is gone); returns how long that took.
fn wait_until_gone(endpoints: &str, key: &str, bound: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let out = etcdctl(endpoints, &["get", key], None);
        if out.success && out.stdout.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "{key} still there after {bound:?}: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn etcdctl_grant_put_timetolive_list_keepalive_revoke_and_expiry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (cluster, leader, follower) = cluster(dir.path(), &rt);
    let on_follower = cluster.addrs[&follower].to_string();
    let on_leader = cluster.addrs[&leader].to_string();

    // Grant through a follower (forwarded), attach a key, and look at it from both sides.
    let id = granted(&ok(&on_follower, &["lease", "grant", "60"]), 60);
    assert_eq!(
        ok(&on_follower, &["put", "--lease", &id, "leased", "v"]).trim(),
        "OK"
    );
    let ttl = ok(&on_follower, &["lease", "timetolive", &id, "--keys"]);
    let prefix = format!("lease {id} granted with TTL(60s), remaining(");
    assert!(ttl.starts_with(&prefix), "{ttl:?}");
    let remaining: u64 = ttl[prefix.len()..]
        .split('s')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no remaining TTL in {ttl:?}"));
    assert!((50..=60).contains(&remaining), "{ttl:?}");
    assert!(
        ttl.trim_end().ends_with("attached keys([leased])"),
        "{ttl:?}"
    );
    assert_eq!(
        ok(&on_leader, &["lease", "list"]),
        format!("found 1 leases\n{id}\n")
    );
    assert_eq!(
        ok(&on_follower, &["lease", "keep-alive", "--once", &id]).trim(),
        format!("lease {id} keepalived with TTL(60)")
    );
    // The key carries the lease (decimal in JSON).
    let decimal = i64::from_str_radix(&id, 16).expect("hex id");
    let json = ok(&on_leader, &["get", "leased", "-w", "json"]);
    assert!(json.contains(&format!("\"lease\":{decimal}")), "{json}");

    // Revoke (forwarded): the key goes with it.
    assert_eq!(
        ok(&on_follower, &["lease", "revoke", &id]).trim(),
        format!("lease {id} revoked")
    );
    assert_eq!(ok(&on_leader, &["get", "leased"]), "");
    assert_eq!(
        ok(&on_follower, &["lease", "timetolive", &id]).trim(),
        format!("lease {id} already expired")
    );
    assert_eq!(ok(&on_follower, &["lease", "list"]), "found 0 leases\n");

    // etcd's errors and texts.
    let out = etcdctl(&on_follower, &["lease", "revoke", &id], None);
    assert!(!out.success, "{out:?}");
    assert!(
        out.stderr.contains("etcdserver: requested lease not found"),
        "{out:?}"
    );
    let out = etcdctl(&on_follower, &["put", "--lease", &id, "k", "v"], None);
    assert!(!out.success, "{out:?}");
    assert!(
        out.stderr.contains("etcdserver: requested lease not found"),
        "{out:?}"
    );
    let out = etcdctl(&on_leader, &["lease", "grant", "9000000001"], None);
    assert!(!out.success, "{out:?}");
    assert!(
        out.stderr.contains("etcdserver: too large lease TTL"),
        "{out:?}"
    );

    // A short lease: raised to the minimum TTL, then expired by the leader, which deletes its
    // keys (both of them, at one revision).
    let short = granted(&ok(&on_follower, &["lease", "grant", "1"]), MIN_TTL_S);
    let started = Instant::now();
    assert_eq!(
        ok(&on_follower, &["put", "--lease", &short, "brief/a", "1"]).trim(),
        "OK"
    );
    assert_eq!(
        ok(&on_follower, &["put", "--lease", &short, "brief/b", "2"]).trim(),
        "OK"
    );
    let revision_before = revision(&ok(&on_leader, &["get", "brief/a", "-w", "json"]));
    wait_until_gone(&on_follower, "brief/a", Duration::from_secs(15));
    let gone_after = started.elapsed();
    assert!(
        gone_after >= Duration::from_secs(MIN_TTL_S - 1),
        "expired after {gone_after:?}, before its TTL"
    );
    assert_eq!(ok(&on_follower, &["get", "--prefix", "brief/"]), "");
    assert_eq!(
        revision(&ok(
            &on_leader,
            &["get", "brief/", "--prefix", "-w", "json"]
        )),
        revision_before + 1,
        "one revision for every key of the expired lease"
    );
    assert_eq!(
        ok(&on_leader, &["lease", "timetolive", &short]).trim(),
        format!("lease {short} already expired")
    );
}

/// The header revision of etcdctl's JSON output.
fn revision(json: &str) -> i64 {
    let at = json
        .find("\"revision\":")
        .unwrap_or_else(|| panic!("no revision: {json}"));
    json[at + "\"revision\":".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("bad revision in {json}"))
}

#[test]
fn leases_survive_a_restart_of_the_whole_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (mut cluster, leader, _) = cluster(dir.path(), &rt);
    let all: Vec<String> = cluster.addrs.values().map(|a| a.to_string()).collect();
    let all = all.join(",");
    let on_leader = cluster.addrs[&leader].to_string();
    let id = granted(&ok(&all, &["lease", "grant", "600"]), 600);
    assert_eq!(ok(&all, &["put", "--lease", &id, "kept", "v"]).trim(), "OK");
    // A snapshot on the leader, so that its restart restores the lease from the snapshot (the
    // others replay it from their logs).
    let saved = dir.path().join("saved.db");
    let saved = saved.to_str().expect("utf-8 path");
    let out = etcdctl(&on_leader, &["snapshot", "save", saved], None);
    assert!(out.success, "{out:?}");
    for id in cluster.ids() {
        cluster.terminate(id, Duration::from_secs(10));
    }
    for id in cluster.ids() {
        cluster.spawn(id);
    }
    rt.block_on(cluster.wait_for_leader(LEADER_WAIT));
    let ttl = ok(&all, &["lease", "timetolive", &id, "--keys"]);
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(600s), remaining(")),
        "{ttl:?}"
    );
    assert!(ttl.trim_end().ends_with("attached keys([kept])"), "{ttl:?}");
    assert_eq!(
        ok(&all, &["lease", "list"]),
        format!("found 1 leases\n{id}\n")
    );
    assert_eq!(ok(&all, &["get", "kept"]), "kept\nv\n");
    // Still a working lease: revoking it deletes the key.
    assert_eq!(
        ok(&all, &["lease", "revoke", &id]).trim(),
        format!("lease {id} revoked")
    );
    assert_eq!(ok(&all, &["get", "kept"]), "");
}

/// `etcdctl lease keep-alive <id>` running in the background until dropped.
struct KeepAlive(std::process::Child);

impl Drop for KeepAlive {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_kept_alive_lease_outlives_a_leader_kill_and_expires_once_abandoned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (mut cluster, leader, follower) = cluster(dir.path(), &rt);
    let all: Vec<String> = cluster.addrs.values().map(|a| a.to_string()).collect();
    let all = all.join(",");
    let on_follower = cluster.addrs[&follower].to_string();
    let ttl_s = 6;
    let id = granted(&ok(&all, &["lease", "grant", &ttl_s.to_string()]), ttl_s);
    assert_eq!(
        ok(&all, &["put", "--lease", &id, "alive", "v"]).trim(),
        "OK"
    );
    let keeper = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={all}"))
        .args(["lease", "keep-alive", &id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl lease keep-alive");
    let keeper = KeepAlive(keeper);

    std::thread::sleep(Duration::from_secs(2));
    cluster.kill(leader);
    let new_leader = rt.block_on(cluster.wait_for_leader(LEADER_WAIT)).node_id.0;
    assert_ne!(new_leader, leader, "{}", cluster.describe());
    // Two TTLs after the kill: without keep-alives reaching the new leader the lease would be
    // gone by now.
    std::thread::sleep(Duration::from_secs(2 * ttl_s));
    assert_eq!(ok(&on_follower, &["get", "alive"]), "alive\nv\n");
    let ttl = ok(&on_follower, &["lease", "timetolive", &id]);
    assert!(
        ttl.starts_with(&format!(
            "lease {id} granted with TTL({ttl_s}s), remaining("
        )),
        "{ttl:?}"
    );

    // Nobody keeps it alive any more: the new leader expires it.
    drop(keeper);
    let gone_after = wait_until_gone(&on_follower, "alive", Duration::from_secs(4 * ttl_s));
    assert!(
        gone_after <= Duration::from_secs(3 * ttl_s),
        "{gone_after:?}"
    );
    assert_eq!(
        ok(&on_follower, &["lease", "timetolive", &id]).trim(),
        format!("lease {id} already expired")
    );
}
