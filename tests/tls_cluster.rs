//! TLS for clients and peers (issue 16), with real processes and Debian's `etcdctl`.
//!
//! ```text
//!   certs made here (rcgen): CA ── node1..3 (SAN raftlog-node-<id> + 127.0.0.1, server+client)
//!                               └─ client   (SAN "client": no member name)
//!                            other CA ── node3 (the same names, the wrong issuer)
//!
//!   test 1: 3 TLS nodes, client_cert_auth on
//!     etcdctl --cacert --cert --key  put/get (leader and follower)  → OK
//!     etcdctl --cacert, no client cert                              → refused, says why
//!     etcdctl over plaintext                                        → fails within seconds
//!     AppendEntries "from node 2", term T+100, with the CLIENT cert → PermissionDenied, term stays
//!   test 2: nodes 1, 2 (CA) + node 3 with a certificate of the other CA
//!     node 3 cannot join: 1 and 2 keep their term and leader, and both sides log why
//!   test 3: 3 TLS nodes; a 4th added at run time: its certificate made like the others'
//!     (raftlog-node-4 + 127.0.0.1, the same CA), member add --learner over https, started
//!     with --join, promoted once in sync, then leadership moved to it: its own Raft
//!     messages pass the others' gates (its member name is read from its certificate, it is
//!     in no config file), and a put through it is read back from node 1
//! ```

mod etcdctl_common;
mod process_cluster;
mod tls_common;

use std::path::Path;
use std::time::{Duration, Instant};

use etcdctl_common::{etcdctl, runtime, LEADER_WAIT};
use process_cluster::{Cluster, Settings};
use rust_raft_log::grpc::gate::peer_request;
use rust_raft_log::grpc::proto as pb;
use tls_common::{client_tls, tls_section, write_certs, Ca};
use tonic::transport::Endpoint;

/// The nodes' Status once every node in `ids` answers (at most 5 s of retries).
async fn answering(cluster: &mut Cluster, ids: &[u32]) -> Vec<rust_raft_log::driver::NodeStatus> {
    let started = Instant::now();
    loop {
        let seen = cluster.poll().await;
        let all = ids.iter().all(|id| seen.iter().any(|s| s.node_id.0 == *id));
        if all || started.elapsed() > Duration::from_secs(5) {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn settings(client_cert_auth: bool) -> Settings {
    // etcd-like timing: "the term does not move" must not be broken by a busy machine.
    Settings {
        election_min_ms: 1000,
        election_max_ms: 2000,
        heartbeat_ms: 100,
        extra: tls_section(client_cert_auth),
        ..Settings::default()
    }
}

fn cert_args(dir: &Path) -> [String; 3] {
    let certs = dir.join("certs");
    [
        format!("--cacert={}", certs.join("ca.pem").display()),
        format!("--cert={}", certs.join("client.pem").display()),
        format!("--key={}", certs.join("client-key.pem").display()),
    ]
}

#[test]
fn etcdctl_with_certificates_works_and_everything_else_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("raftlog test CA");
    write_certs(dir.path(), &ca, None);
    let rt = runtime();
    let mut cluster = Cluster::configure(dir.path(), 3, settings(true));
    cluster.client_tls = Some(client_tls(dir.path()));
    for id in 1..=3 {
        cluster.spawn(id);
    }
    let leader = rt.block_on(cluster.wait_for_leader(LEADER_WAIT));
    let leader_id = leader.node_id.0;
    let follower = if leader_id == 1 { 2 } else { 1 };
    let addrs = cluster.addrs.clone();
    let https = |id: u32| format!("https://{}", addrs[&id]);
    let certs = cert_args(dir.path());
    let with_certs = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = certs.to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let run = |endpoint: &str, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        etcdctl(endpoint, &args, None)
    };

    // etcdctl with --cacert/--cert/--key: writes through the leader and through a follower
    // (forwarded to the leader over TLS, as this member), reads back from each.
    let out = run(
        &https(leader_id),
        with_certs(&["put", "tls-key", "over-tls"]),
    );
    assert!(
        out.success && out.stdout.trim() == "OK",
        "put via leader: {out:?}"
    );
    let out = run(
        &https(follower),
        with_certs(&["put", "tls-key2", "forwarded"]),
    );
    assert!(
        out.success && out.stdout.trim() == "OK",
        "put via follower: {out:?}\n{}",
        cluster.describe()
    );
    let out = run(&https(follower), with_certs(&["get", "tls-key"]));
    assert!(out.success, "{out:?}");
    assert_eq!(out.stdout, "tls-key\nover-tls\n", "{out:?}");
    let out = run(&https(leader_id), with_certs(&["get", "tls-key2"]));
    assert_eq!(out.stdout, "tls-key2\nforwarded\n", "{out:?}");

    // Client authentication is on: the CA alone is not enough.
    let cacert = certs[0].clone();
    let started = Instant::now();
    let out = run(
        &https(leader_id),
        vec![cacert, "get".into(), "tls-key".into()],
    );
    assert!(
        !out.success,
        "a client without a certificate was served: {out:?}"
    );
    assert!(
        out.stderr.contains("Unauthenticated")
            && out.stderr.contains("client certificate required"),
        "etcdctl says the certificate is missing: {out:?}"
    );
    eprintln!(
        "etcdctl without a client certificate: {}",
        out.stderr.trim()
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );

    // Plaintext against the TLS port: a clear failure within the dial timeout, not a hang.
    let started = Instant::now();
    let out = etcdctl(
        &format!("http://{}", cluster.addrs[&leader_id]),
        &["get", "tls-key"],
        None,
    );
    let took = started.elapsed();
    assert!(!out.success, "a plaintext client was served: {out:?}");
    assert!(
        took < Duration::from_secs(5),
        "plaintext client took {took:?}: {out:?}"
    );
    assert!(
        out.stderr.contains("serves TLS only"),
        "etcdctl says the node wants TLS: {out:?}"
    );
    eprintln!(
        "plaintext etcdctl failed after {took:?}: {}",
        out.stderr.trim()
    );

    // The forged AppendEntries of issue 16, with the right cluster id and a VALID client
    // certificate of the same CA: the certificate names no member, so the Raft service refuses.
    let cluster_id = rust_raft_log::config::ClusterConfig::load(&dir.path().join("cluster.yaml"))
        .expect("config")
        .cluster_id();
    let before = rt.block_on(answering(&mut cluster, &[1, 2, 3]));
    assert_eq!(before.len(), 3, "{}", cluster.describe());
    let target = follower;
    let term = leader.term.0;
    rt.block_on(async {
        let channel = Endpoint::from_shared(https(target))
            .expect("endpoint")
            .tls_config(client_tls(dir.path()))
            .expect("tls")
            .connect()
            .await
            .expect("a client certificate connects");
        let mut client = pb::raft_client::RaftClient::new(channel);
        let request = pb::AppendEntriesRequest {
            route: Some(pb::Route {
                from: 2,
                to: target,
            }),
            term: term + 100,
            leader_id: 2,
            prev_log_index: leader.last_log_index.0,
            prev_log_term: term,
            entries: vec![pb::LogEntry {
                term: term + 100,
                index: leader.last_log_index.0 + 1,
                entry_type: pb::EntryType::Normal as i32,
                payload: b"\xff\xfegarbage".to_vec(),
            }],
            leader_commit: leader.last_log_index.0 + 1,
            read_seq: 0,
        };
        let refused = client
            .append_entries(peer_request(request, Some(cluster_id)))
            .await
            .expect_err("a client certificate cannot send AppendEntries");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("members"), "{refused:?}");
        let vote = pb::RequestVoteRequest {
            route: Some(pb::Route {
                from: 2,
                to: target,
            }),
            term: term + 100,
            candidate_id: 2,
            last_log_index: u64::MAX / 2,
            last_log_term: term + 100,
            pre_vote: false,
            leader_transfer: false,
        };
        let refused = client
            .request_vote(peer_request(vote, Some(cluster_id)))
            .await
            .expect_err("a client certificate cannot send RequestVote");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

        // A member's certificate speaks only for that member: node `impostor`'s key cannot send
        // a vote request claiming to come from another node.
        let impostor = (1..=3).find(|&id| id != target).expect("another node");
        let claimed = (1..=3)
            .find(|&id| id != target && id != impostor)
            .expect("a third node");
        let certs = dir.path().join("certs");
        let read = |name: String| std::fs::read(certs.join(name)).expect("read cert");
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(
                "ca.pem".into(),
            )))
            .identity(tonic::transport::Identity::from_pem(
                read(format!("node{impostor}.pem")),
                read(format!("node{impostor}-key.pem")),
            ));
        let channel = Endpoint::from_shared(https(target))
            .expect("endpoint")
            .tls_config(tls)
            .expect("tls")
            .connect()
            .await
            .expect("a member certificate connects");
        let vote = pb::RequestVoteRequest {
            route: Some(pb::Route {
                from: claimed,
                to: target,
            }),
            term: term + 100,
            candidate_id: claimed,
            last_log_index: u64::MAX / 2,
            last_log_term: term + 100,
            pre_vote: false,
            leader_transfer: false,
        };
        let refused = pb::raft_client::RaftClient::new(channel)
            .request_vote(peer_request(vote, Some(cluster_id)))
            .await
            .expect_err("a member's certificate cannot speak for another member");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(
            refused
                .message()
                .contains(&format!("certificate names node {impostor}")),
            "{refused:?}"
        );
    });
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(500)).await });
    let after = rt.block_on(answering(&mut cluster, &[1, 2, 3]));
    let view = |s: &[rust_raft_log::driver::NodeStatus]| -> Vec<(u32, u64, Option<u32>)> {
        s.iter()
            .map(|s| (s.node_id.0, s.term.0, s.leader.map(|l| l.0)))
            .collect()
    };
    assert_eq!(view(&before), view(&after), "{}", cluster.describe());
    assert!(
        cluster
            .output(target)
            .contains("serves Raft RPCs only to members"),
        "node {target} logged the refusal\n{}",
        cluster.describe()
    );
}

#[test]
fn a_peer_with_a_certificate_of_another_ca_cannot_join() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("raftlog test CA");
    let other = Ca::new("some other CA");
    write_certs(dir.path(), &ca, Some((3, &other)));
    let rt = runtime();
    let mut cluster = Cluster::configure(dir.path(), 3, settings(false));
    cluster.client_tls = Some(client_tls(dir.path()));
    cluster.spawn(1);
    cluster.spawn(2);
    let leader = rt.block_on(cluster.wait_for_leader(LEADER_WAIT));
    let before = rt.block_on(answering(&mut cluster, &[1, 2]));
    // Node 3 trusts only the other CA and presents its certificate: it campaigns at ever
    // higher terms, and no RequestVote of its gets through.
    cluster.spawn(3);
    let started = Instant::now();
    let needle = "TLS handshake refused";
    while !(cluster.output(1).contains(needle) || cluster.output(2).contains(needle)) {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "nodes 1 and 2 never logged a refused handshake\n{}",
            cluster.describe()
        );
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
    }
    // Sleep inside the runtime: the harness's client connections answer the nodes' keepalive
    // pings meanwhile (a thread sleep lets the nodes drop them).
    rt.block_on(async { tokio::time::sleep(Duration::from_secs(3)).await });
    let after = rt.block_on(answering(&mut cluster, &[1, 2]));
    let view = |s: &[rust_raft_log::driver::NodeStatus]| -> Vec<(u32, u64, Option<u32>)> {
        s.iter()
            .filter(|s| s.node_id.0 != 3)
            .map(|s| (s.node_id.0, s.term.0, s.leader.map(|l| l.0)))
            .collect()
    };
    assert_eq!(view(&before), view(&after), "{}", cluster.describe());
    assert_eq!(view(&after).len(), 2, "{}", cluster.describe());
    // Node 3 says why on its side too: the peers' certificates are not of its CA.
    let text = cluster.output(3);
    assert!(
        text.contains("no TLS connection with peer") && text.to_lowercase().contains("certificate"),
        "node 3 never logged why it cannot reach its peers:\n{text}"
    );
    assert_eq!(
        leader.node_id,
        after
            .iter()
            .find(|s| s.node_id.0 != 3)
            .and_then(|s| s.leader)
            .expect("leader")
    );
}

#[test]
fn a_member_added_with_join_catches_up_and_leads_over_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("raftlog test CA");
    write_certs(dir.path(), &ca, None);
    // The new member's certificate, made as the others' are: its member name and the address
    // clients and peers dial, from the cluster's CA.
    let certs = dir.path().join("certs");
    let name = "raftlog-node-4";
    let (cert, key) = ca.leaf(name, &[name, "127.0.0.1"]);
    std::fs::write(certs.join("node4.pem"), cert).expect("write");
    std::fs::write(certs.join("node4-key.pem"), key).expect("write");
    std::fs::write(certs.join("ca4.pem"), ca.pem()).expect("write");
    let rt = runtime();
    let mut cluster = Cluster::configure(dir.path(), 3, settings(false));
    cluster.client_tls = Some(client_tls(dir.path()));
    for id in 1..=3 {
        cluster.spawn(id);
    }
    let leader = rt.block_on(cluster.wait_for_leader(LEADER_WAIT)).node_id.0;
    let tls_args = cert_args(dir.path());
    let run = |endpoint: &str, extra: &[&str]| {
        let mut args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        etcdctl(endpoint, &args, None)
    };
    let on_leader = format!("https://{}", cluster.addrs[&leader]);
    let out = run(&on_leader, &["put", "before-join", "1"]);
    assert!(out.success, "{out:?}");

    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], process_cluster::free_ports(1)[0]));
    let url = format!("https://{addr}");
    let out = run(
        &on_leader,
        &[
            "member",
            "add",
            "n4",
            &format!("--peer-urls={url}"),
            "--learner",
        ],
    );
    let hex = format!(
        "{:x}",
        rust_raft_log::etcd::members::member_id(rust_raft_log::types::NodeId(4))
    );
    assert!(
        out.success && out.stdout.starts_with(&format!("Member {hex} added")),
        "the new member is node 4: {out:?}"
    );
    cluster.spawn_joining(4, addr);

    // Promote once in sync (refused with etcd's text until then).
    let started = Instant::now();
    loop {
        let out = run(&on_leader, &["member", "promote", &hex]);
        if out.success {
            break;
        }
        assert!(
            out.stderr.contains("in sync with leader"),
            "promotion refused for another reason: {out:?}\n{}",
            cluster.describe()
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "node 4 never caught up over TLS: {out:?}\n{}",
            cluster.describe()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = run(&format!("https://{addr}"), &["get", "before-join"]);
    assert_eq!(
        out.stdout, "before-join\n1\n",
        "node 4 serves the state: {out:?}"
    );

    // Leadership moves to node 4: its RequestVote and AppendEntries reach nodes 1-3 through
    // their gates, on connections authenticated as node 4.
    let all: Vec<String> = [1, 2, 3, 4]
        .iter()
        .map(|n| format!("https://{}", cluster.addrs[n]))
        .collect();
    let out = run(&all.join(","), &["move-leader", &hex]);
    assert!(
        out.success && out.stdout.contains(&hex),
        "{out:?}\n{}",
        cluster.describe()
    );
    let out = run(
        &format!("https://{addr}"),
        &["put", "after-join", "led-by-4"],
    );
    assert!(out.success, "{out:?}");
    let out = run(
        &format!("https://{}", cluster.addrs[&1]),
        &["get", "after-join"],
    );
    assert_eq!(out.stdout, "after-join\nled-by-4\n", "{out:?}");
    let out = run(&format!("https://{addr}"), &["endpoint", "status"]);
    let fields: Vec<&str> = out.stdout.trim().split(", ").collect();
    assert_eq!(fields.get(4), Some(&"true"), "node 4 leads: {out:?}");
}
