//! Distributed locking and leader election against a 3-node cluster of real processes, with the
//! clients people already use:
//! - Debian's `etcdctl lock` and `etcdctl elect` (etcd's client-side concurrency recipes: a
//!   session lease kept alive, a key per contender, Txn, Watch on the predecessor);
//! - the server-side `v3lockpb.Lock` and `v3electionpb.Election` services
//!   (`src/etcd/concurrency.rs`) through their generated clients.
//!
//! Every check reads what the client printed or answered. `etcdctl elect` has no `--ttl`: its
//! session lease lives 60 s, so the takeover after a `kill -9` of the leader takes a minute.

mod etcdctl_common;
mod process_cluster;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use etcdctl_common::{cluster, runtime};
use rust_raft_log::etcdpb::etcdserverpb::LeaseRevokeRequest;
use rust_raft_log::etcdpb::etcdserverpb::{lease_client::LeaseClient, LeaseGrantRequest};
use rust_raft_log::etcdpb::v3electionpb::{
    election_client::ElectionClient, CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest,
};
use rust_raft_log::etcdpb::v3lockpb::{lock_client::LockClient, LockRequest, UnlockRequest};

/// `etcdctl ARGS` in the background, its stdout lines sent to the returned receiver.
fn background(endpoints: &str, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--dial-timeout=5s")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl runs (Debian's etcd-client; .ci/run installs it)");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// The next line within `bound`, or None.
fn next_line(rx: &mpsc::Receiver<String>, bound: Duration) -> Option<String> {
    rx.recv_timeout(bound).ok()
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn etcdctl_lock_excludes_and_passes_on_once_a_killed_holders_lease_expires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (cluster, _, _) = cluster(dir.path(), &rt);
    let all: Vec<String> = cluster.addrs.values().map(|a| a.to_string()).collect();
    let all = all.join(",");

    // Mutual exclusion: two holders run a command under the lock; their spans never overlap.
    let spans = dir.path().join("spans");
    let script = format!("echo in >> {0}; sleep 1; echo out >> {0}", spans.display());
    let contenders: Vec<Child> = (0..2)
        .map(|_| {
            Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={all}"))
                .args(["lock", "--ttl=5", "job", "--", "sh", "-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("etcdctl runs")
        })
        .collect();
    for mut c in contenders {
        let status = c.wait().expect("etcdctl lock ends");
        assert!(
            status.success(),
            "etcdctl lock job <command> failed: {status}"
        );
    }
    let spans = std::fs::read_to_string(&spans).expect("both commands ran");
    assert_eq!(
        spans, "in\nout\nin\nout\n",
        "the two holders' commands overlapped"
    );

    // A holder killed with -9: the other contender waits, then gets the lock once the holder's
    // session lease (5 s) has expired, not before.
    let (mut holder, holder_out) = background(&all, &["lock", "--ttl=5", "job2"]);
    let key = next_line(&holder_out, Duration::from_secs(15)).expect("the holder got the lock");
    assert!(
        key.starts_with("job2/"),
        "etcdctl lock prints the key: {key:?}"
    );
    let (mut waiter, waiter_out) = background(&all, &["lock", "--ttl=5", "job2", "echo", "second"]);
    assert_eq!(
        next_line(&waiter_out, Duration::from_secs(2)),
        None,
        "the second contender got the lock while the first held it"
    );
    let killed = Instant::now();
    kill(&mut holder);
    let got = next_line(&waiter_out, Duration::from_secs(30));
    let after = killed.elapsed();
    kill(&mut waiter);
    assert_eq!(got.as_deref(), Some("second"), "the lock never passed on");
    assert!(
        after >= Duration::from_secs(3),
        "the lock passed on {after:?} after the kill, before the holder's 5 s lease expired"
    );
}

#[test]
fn etcdctl_elect_hands_leadership_over_when_the_leader_is_killed_and_observers_see_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (cluster, _, follower) = cluster(dir.path(), &rt);
    let all: Vec<String> = cluster.addrs.values().map(|a| a.to_string()).collect();
    let all = all.join(",");
    let on_follower = cluster.addrs[&follower].to_string();

    let (mut observer, observed) = background(&on_follower, &["elect", "-l", "vote"]);
    let (mut alpha, alpha_out) = background(&all, &["elect", "vote", "alpha"]);
    let key = next_line(&alpha_out, Duration::from_secs(15)).expect("alpha was elected");
    assert!(
        key.starts_with("vote/"),
        "etcdctl elect prints the key: {key:?}"
    );
    assert_eq!(
        next_line(&alpha_out, Duration::from_secs(5)).as_deref(),
        Some("alpha")
    );
    let (mut beta, beta_out) = background(&all, &["elect", "vote", "beta"]);
    assert_eq!(
        next_line(&beta_out, Duration::from_secs(2)),
        None,
        "beta was elected while alpha led"
    );
    kill(&mut alpha);
    // etcdctl elect's session lease has etcd's default TTL, 60 s.
    let key = next_line(&beta_out, Duration::from_secs(90)).expect("beta took over");
    assert!(key.starts_with("vote/"), "{key:?}");
    assert_eq!(
        next_line(&beta_out, Duration::from_secs(5)).as_deref(),
        Some("beta")
    );
    kill(&mut beta);

    let mut seen = Vec::new();
    while let Some(line) = next_line(&observed, Duration::from_secs(3)) {
        seen.push(line);
    }
    kill(&mut observer);
    let values: Vec<&String> = seen.iter().filter(|l| !l.starts_with("vote/")).collect();
    assert_eq!(
        values.first().map(|s| s.as_str()),
        Some("alpha"),
        "the observer saw {seen:?}"
    );
    assert!(
        values.iter().any(|v| v.as_str() == "beta"),
        "the observer never saw beta: {seen:?}"
    );
}

#[test]
fn lock_and_election_services_queue_contenders_and_follow_leases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (cluster, _, follower) = cluster(dir.path(), &rt);
    let addr = cluster.addrs[&follower];
    rt.block_on(async move {
        let channel = process_cluster::channel(addr);
        let mut leases = LeaseClient::new(channel.clone());
        let grant = |leases: LeaseClient<_>| async move {
            let mut leases = leases;
            leases
                .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
                .await
                .expect("lease grant")
                .into_inner()
                .id
        };
        let (one, two) = (grant(leases.clone()).await, grant(leases.clone()).await);
        let mut locks = LockClient::new(channel.clone());

        // Lock: the second lease waits until the first unlocks.
        let held = locks
            .lock(LockRequest {
                name: b"svc".to_vec(),
                lease: one,
            })
            .await
            .expect("lock")
            .into_inner();
        assert_eq!(held.key, format!("svc/{one:x}").into_bytes());
        let mut second = locks.clone();
        let waiting = tokio::spawn(async move {
            second
                .lock(LockRequest {
                    name: b"svc".to_vec(),
                    lease: two,
                })
                .await
                .map(|r| r.into_inner().key)
        });
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            !waiting.is_finished(),
            "the second lock was granted while the first was held"
        );
        locks
            .unlock(UnlockRequest {
                key: held.key.clone(),
            })
            .await
            .expect("unlock");
        let key = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the second lock was granted after the unlock")
            .expect("task")
            .expect("lock");
        assert_eq!(key, format!("svc/{two:x}").into_bytes());

        // A holder whose lease is revoked loses the lock to the next contender.
        let three = grant(leases.clone()).await;
        let mut third = locks.clone();
        let waiting = tokio::spawn(async move {
            third
                .lock(LockRequest {
                    name: b"svc".to_vec(),
                    lease: three,
                })
                .await
                .map(|r| r.into_inner().key)
        });
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            !waiting.is_finished(),
            "lock granted while lease {two:x} held it"
        );
        leases
            .lease_revoke(LeaseRevokeRequest { id: two })
            .await
            .expect("revoke");
        let key = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("granted after the holder's lease was revoked")
            .expect("task")
            .expect("lock");
        assert_eq!(key, format!("svc/{three:x}").into_bytes());
        // A lock on a lease that does not exist is refused with etcd's text.
        let err = locks
            .lock(LockRequest {
                name: b"other".to_vec(),
                lease: 0x7777,
            })
            .await
            .expect_err("no such lease");
        assert!(
            err.message().contains("requested lease not found"),
            "{err:?}"
        );

        // Election: campaign, proclaim, observe, resign, and the next candidate leads.
        let mut election = ElectionClient::new(channel.clone());
        let mut observe = election
            .observe(LeaderRequest {
                name: b"db".to_vec(),
            })
            .await
            .expect("observe")
            .into_inner();
        let won = election
            .campaign(CampaignRequest {
                name: b"db".to_vec(),
                lease: one,
                value: b"v1".to_vec(),
            })
            .await
            .expect("campaign")
            .into_inner()
            .leader
            .expect("a leader key");
        let first = observe.message().await.expect("observe").expect("an item");
        assert_eq!(first.kv.expect("kv").value, b"v1");
        election
            .proclaim(ProclaimRequest {
                leader: Some(won.clone()),
                value: b"v2".to_vec(),
            })
            .await
            .expect("proclaim");
        let leader = election
            .leader(LeaderRequest {
                name: b"db".to_vec(),
            })
            .await
            .expect("leader")
            .into_inner();
        assert_eq!(leader.kv.expect("kv").value, b"v2");
        let second = observe.message().await.expect("observe").expect("an item");
        assert_eq!(second.kv.expect("kv").value, b"v2");

        let mut rival = election.clone();
        let four = grant(leases.clone()).await;
        let campaigning = tokio::spawn(async move {
            rival
                .campaign(CampaignRequest {
                    name: b"db".to_vec(),
                    lease: four,
                    value: b"w".to_vec(),
                })
                .await
                .map(|r| r.into_inner())
        });
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            !campaigning.is_finished(),
            "elected while another candidate led"
        );
        election
            .resign(ResignRequest {
                leader: Some(won.clone()),
            })
            .await
            .expect("resign");
        tokio::time::timeout(Duration::from_secs(10), campaigning)
            .await
            .expect("the rival was elected after the resignation")
            .expect("task")
            .expect("campaign");
        let third = observe.message().await.expect("observe").expect("an item");
        assert_eq!(third.kv.expect("kv").value, b"w");
        // The old leader key no longer proclaims.
        let err = election
            .proclaim(ProclaimRequest {
                leader: Some(won),
                value: b"stale".to_vec(),
            })
            .await
            .expect_err("a resigned leader cannot proclaim");
        assert!(err.message().contains("election: not leader"), "{err:?}");
    });
}
