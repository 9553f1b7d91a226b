//! `etcdctl watch` (Debian's etcdctl 3.4) and a raw gRPC watch client against a 3-node
//! rust-raft-log cluster of real processes on loopback.
//!
//! ```text
//!   etcdctl put/del/txn/compact ──▶ any member ──Raft──▶ every member applies
//!   etcdctl watch ──Watch stream──▶ member X: events as X applies (leader or follower)
//! ```
//! Each watcher runs as a background `etcdctl watch` process whose stdout and stderr are
//! checked, in full, against what etcd's etcdctl prints (the expected texts were taken from
//! etcdctl 3.4.23 against etcd 3.4). The bounds are generous for a loaded 2-core machine.

mod etcdctl_common;
mod process_cluster;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcdctl_common::{ok, runtime, LEADER_WAIT};
use process_cluster::{Cluster, Settings};
use rust_raft_log::etcdpb::etcdserverpb::{
    watch_client::WatchClient, watch_create_request::FilterType, watch_request::RequestUnion,
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use rust_raft_log::etcdpb::mvccpb::event::EventType;

const OUTPUT_WAIT: Duration = Duration::from_secs(20);
/// How long a watch started without `--rev` gets to create its watcher before writes begin.
const WATCH_START: Duration = Duration::from_secs(2);
/// The progress-notify interval this cluster runs with (etcd's is 10 minutes).
const PROGRESS_MS: u64 = 300;

/// A background `etcdctl watch`, its output in files.
struct Watch {
    child: Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl Watch {
    fn start(dir: &std::path::Path, name: &str, endpoint: &str, args: &[&str]) -> Watch {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .arg("watch")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(std::fs::File::create(&out).expect("out file")))
            .stderr(Stdio::from(std::fs::File::create(&err).expect("err file")))
            .spawn()
            .expect("etcdctl (apt-get install -y etcd-client)");
        Watch { child, out, err }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits until stdout is `expected` exactly (panics with both outputs otherwise).
    fn expect_stdout(&self, expected: &str) {
        let deadline = Instant::now() + OUTPUT_WAIT;
        while Instant::now() < deadline {
            let out = self.stdout();
            if out == expected {
                // Nothing more may follow: give a stray duplicate the time to show.
                std::thread::sleep(Duration::from_millis(300));
                assert_eq!(self.stdout(), expected, "stderr: {}", self.stderr());
                return;
            }
            assert!(
                expected.starts_with(&out),
                "etcdctl watch printed\n{out}\nexpected\n{expected}\nstderr: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "etcdctl watch printed\n{}\nexpected\n{expected}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
    }

    /// Waits for the process to exit by itself; returns (success, stdout, stderr).
    fn wait_exit(mut self) -> (bool, String, String) {
        let deadline = Instant::now() + OUTPUT_WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return (status.success(), self.stdout(), self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "etcdctl watch did not exit: {} {}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The store revision, as `etcdctl get -w json` reports it.
fn revision(endpoint: &str) -> i64 {
    let json = ok(endpoint, &["get", "nothing-here", "-w", "json"]);
    let at = json.find("\"revision\":").expect("revision in the header") + 11;
    json[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("a revision")
}

fn start_cluster(dir: &std::path::Path, rt: &tokio::runtime::Runtime) -> (Cluster, u32, u32) {
    let settings = Settings {
        election_min_ms: 1000,
        election_max_ms: 2000,
        heartbeat_ms: 100,
        extra: format!("  watch_progress_notify_interval: {PROGRESS_MS}\n"),
        ..Settings::default()
    };
    let mut cluster = Cluster::start(dir, 3, settings);
    let leader = rt.block_on(cluster.wait_for_leader(LEADER_WAIT)).node_id.0;
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    (cluster, leader, follower)
}

#[test]
fn etcdctl_watch_key_prefix_rev_prev_kv_interactive_and_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (cluster, leader, follower) = start_cluster(dir.path(), &rt);
    let on_leader = cluster.addrs[&leader].to_string();
    let on_follower = cluster.addrs[&follower].to_string();
    let third = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader && *id != follower)
        .expect("a third member");
    let on_third = cluster.addrs[&third].to_string();
    let logs = dir.path();

    // A key on a follower (events as the follower applies) and a prefix on the leader.
    let key = Watch::start(logs, "key", &on_follower, &["foo"]);
    let prefix = Watch::start(logs, "prefix", &on_leader, &["--prefix", "app/"]);
    std::thread::sleep(WATCH_START);
    let first = revision(&on_leader) + 1;
    ok(&on_leader, &["put", "foo", "1"]);
    ok(&on_follower, &["put", "app/a", "x"]);
    ok(&on_leader, &["put", "zzz", "outside"]);
    ok(&on_leader, &["put", "foo", "2"]);
    // One Txn, two keys of the prefix: one revision, both events (in write order).
    let txn = etcdctl_common::etcdctl(
        &on_leader,
        &["txn", "-i"],
        Some("\nput app/d 4\nput app/c 3\n\n\n"),
    );
    assert!(txn.success && txn.stdout.contains("SUCCESS"), "{txn:?}");
    ok(&on_follower, &["del", "foo"]);
    ok(&on_leader, &["del", "--prefix", "app/"]);
    key.expect_stdout("PUT\nfoo\n1\nPUT\nfoo\n2\nDELETE\nfoo\n\n");
    prefix.expect_stdout(
        "PUT\napp/a\nx\nPUT\napp/d\n4\nPUT\napp/c\n3\nDELETE\napp/a\n\nDELETE\napp/c\n\n\
         DELETE\napp/d\n\n",
    );

    // --rev replays history on the third member, with the previous values.
    let replay = Watch::start(
        logs,
        "replay",
        &on_third,
        &["foo", "--rev", &first.to_string(), "--prev-kv"],
    );
    replay.expect_stdout("PUT\nfoo\n1\nPUT\nfoo\n1\nfoo\n2\nDELETE\nfoo\n2\nfoo\n\n");
    // --prefix from a revision: everything under app/ since then, and it keeps going live.
    let app = Watch::start(
        logs,
        "app",
        &on_follower,
        &["--prefix", "app/", "--rev", &first.to_string()],
    );
    ok(&on_leader, &["put", "app/z", "live"]);
    app.expect_stdout(
        "PUT\napp/a\nx\nPUT\napp/d\n4\nPUT\napp/c\n3\nDELETE\napp/a\n\nDELETE\napp/c\n\n\
         DELETE\napp/d\n\nPUT\napp/z\nlive\n",
    );

    // Interactive: two watchers on one stream, created from stdin; closing stdin ends etcdctl
    // (3.4's interactive mode has no cancel command: it answers "Invalid command").
    let mut interactive = Watch::start(logs, "interactive", &on_follower, &["-i"]);
    {
        let stdin = interactive.child.stdin.as_mut().expect("stdin");
        stdin
            .write_all(b"watch foo\nwatch --prefix fo\ncancel 0\n")
            .expect("write stdin");
        stdin.flush().expect("flush");
    }
    std::thread::sleep(WATCH_START);
    ok(&on_leader, &["put", "foo", "i"]);
    interactive.expect_stdout("PUT\nfoo\ni\nPUT\nfoo\ni\n");
    drop(interactive.child.stdin.take());
    let (_, out, err) = interactive.wait_exit();
    assert_eq!(out, "PUT\nfoo\ni\nPUT\nfoo\ni\n");
    assert!(
        err.contains("Invalid command cancel")
            && err.contains("Error reading watch request line: EOF"),
        "{err}"
    );

    // A start below the compaction point: etcdctl prints etcd's compaction error and exits.
    let now = revision(&on_leader);
    assert_eq!(
        ok(&on_leader, &["compact", &now.to_string()]).trim(),
        format!("compacted revision {now}")
    );
    // On the leader: it applied the compaction before etcdctl was answered.
    let compacted = Watch::start(logs, "compacted", &on_leader, &["foo", "--rev", "2"]);
    let (success, out, err) = compacted.wait_exit();
    assert!(!success);
    assert_eq!(out, "");
    assert!(
        err.contains("watch was canceled (etcdserver: mvcc: required revision has been compacted)")
            && err.contains("Error: watch is canceled by the server"),
        "{err}"
    );
    // Just above the compaction point works.
    let above = Watch::start(
        logs,
        "above",
        &on_third,
        &["foo", "--rev", &(now + 1).to_string()],
    );
    ok(&on_leader, &["put", "foo", "after"]);
    above.expect_stdout("PUT\nfoo\nafter\n");
}

async fn next(stream: &mut tonic::Streaming<WatchResponse>, what: &str) -> WatchResponse {
    match tokio::time::timeout(OUTPUT_WAIT, stream.message()).await {
        Ok(Ok(Some(response))) => response,
        other => panic!("waiting for {what}: {other:?}"),
    }
}

fn create(request: WatchCreateRequest) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(request)),
    }
}

/// The protocol details etcdctl does not show: ids, headers, filters, cancel, progress.
#[test]
fn the_watch_stream_answers_create_cancel_progress_and_filters_like_etcd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (cluster, leader, follower) = start_cluster(dir.path(), &rt);
    let on_leader = cluster.addrs[&leader].to_string();
    let addr = cluster.addrs[&follower];
    rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut client = WatchClient::new(process_cluster::channel(addr));
        let mut stream = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("watch")
            .into_inner();
        let current = revision(&on_leader);

        // Server-chosen ids start at 0; a client-chosen one is kept; a duplicate is refused.
        tx.send(create(WatchCreateRequest {
            key: b"k".to_vec(),
            filters: vec![FilterType::Noput as i32],
            prev_kv: true,
            ..WatchCreateRequest::default()
        }))
        .await
        .expect("send");
        let created = next(&mut stream, "created 0").await;
        assert!(created.created && !created.canceled, "{created:?}");
        assert_eq!(created.watch_id, 0);
        let header = created.header.expect("header");
        assert!(header.cluster_id != 0 && header.member_id != 0 && header.raft_term >= 1);
        assert!(header.revision >= current, "{header:?}");
        for (id, reason) in [
            (7, ""),
            (7, "mvcc: duplicate watch ID provided on the WatchStream"),
        ] {
            tx.send(create(WatchCreateRequest {
                key: b"k".to_vec(),
                range_end: b"l".to_vec(),
                watch_id: id,
                progress_notify: true,
                ..WatchCreateRequest::default()
            }))
            .await
            .expect("send");
            let created = next(&mut stream, "created 7").await;
            assert!(created.created, "{created:?}");
            assert_eq!(created.cancel_reason, reason, "{created:?}");
            assert_eq!(created.canceled, !reason.is_empty());
        }
        // An empty range is refused with etcd's reason.
        tx.send(create(WatchCreateRequest {
            key: b"b".to_vec(),
            range_end: b"a".to_vec(),
            ..WatchCreateRequest::default()
        }))
        .await
        .expect("send");
        let mut refused = next(&mut stream, "refused").await;
        while !refused.created {
            // Watcher 7's progress notifications may come first.
            refused = next(&mut stream, "refused").await;
        }
        assert!(refused.created && refused.canceled, "{refused:?}");
        assert_eq!(refused.cancel_reason, "mvcc: watcher range is empty");

        // The periodic progress notification of watcher 7 (nothing happened meanwhile).
        let progress = next(&mut stream, "progress notify").await;
        assert_eq!(progress.watch_id, 7, "{progress:?}");
        assert!(progress.events.is_empty() && !progress.created && !progress.canceled);

        // A put and a delete: watcher 7 gets both, watcher 0 (NOPUT, prev_kv) only the
        // delete with the previous record.
        ok(&on_leader, &["put", "k", "v1"]);
        ok(&on_leader, &["del", "k"]);
        let put_rev = revision(&on_leader) - 1;
        let mut seen0 = Vec::new();
        let mut seen7 = Vec::new();
        while seen0.is_empty() || seen7.len() < 2 {
            let response = next(&mut stream, "events").await;
            if response.events.is_empty() {
                continue; // a progress notification
            }
            // One revision per response, header at that revision on the live path.
            assert_eq!(response.events.len(), 1, "{response:?}");
            let target = if response.watch_id == 0 {
                &mut seen0
            } else {
                &mut seen7
            };
            target.extend(response.events);
        }
        assert_eq!(seen0[0].r#type, EventType::Delete as i32);
        let prev = seen0[0].prev_kv.as_ref().expect("prev_kv");
        assert_eq!(
            (prev.value.as_slice(), prev.mod_revision),
            (&b"v1"[..], put_rev)
        );
        assert_eq!(seen7[0].r#type, EventType::Put as i32);
        assert!(
            seen7[0].prev_kv.is_none(),
            "watcher 7 did not ask for prev_kv"
        );
        assert_eq!(seen7[1].r#type, EventType::Delete as i32);
        assert_eq!(
            seen7[1].kv.as_ref().map(|kv| kv.mod_revision),
            Some(put_rev + 1)
        );

        // A progress request: a header at the current revision, watch id -1.
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
        })
        .await
        .expect("send");
        loop {
            let response = next(&mut stream, "progress response").await;
            if response.watch_id == -1 {
                assert_eq!(response.header.expect("header").revision, put_rev + 1);
                assert!(response.events.is_empty());
                break;
            }
            assert!(response.events.is_empty(), "{response:?}");
        }

        // Cancel: one canceled response, then nothing more for that watcher.
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest {
                watch_id: 7,
            })),
        })
        .await
        .expect("send");
        loop {
            let response = next(&mut stream, "canceled").await;
            if response.canceled {
                assert_eq!(response.watch_id, 7);
                break;
            }
        }
        ok(&on_leader, &["put", "k", "v2"]);
        ok(&on_leader, &["del", "k"]);
        let response = next(&mut stream, "the delete for watcher 0").await;
        assert_eq!(response.watch_id, 0, "{response:?}");
        assert_eq!(response.events[0].r#type, EventType::Delete as i32);
    });
}
