//! The etcd v3 API of three nodes in one process (real gRPC on ephemeral loopback ports, the real
//! core, the binary's wiring `node::run_node`, in-memory durable state), through the generated
//! tonic clients.
//!
//! ```text
//!   writer ──Put k=1,2,3,..──▶ leader L
//!   readers ──Range k (linearizable)──▶ L, F1, F2   (each read must see every put acknowledged
//!                                                    before it started: no stale read)
//! ```
//! Checks: response headers (one cluster id, the contacted member's id, revisions, terms);
//! forwarding of writes, linearizable reads and compactions from a follower; serializable reads;
//! Txn; Maintenance.Snapshot refused by nodes without snapshot files; and a smoke test of
//! ReadIndex reads racing a writer on every node (real-time order and monotonic revisions).
//! Limitation, measured: on loopback the leader's commit notice reaches a follower before the
//! client's next read does, so even a follower serving reads locally (no ReadIndex) passes the
//! smoke test; what it guards is the grant and forwarding plumbing under concurrency. The
//! ReadIndex protocol itself is tested in the core (`src/raft`), the loop's grant-after-apply in
//! `src/node/event_loop.rs`.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use rust_raft_log::config::ClusterConfig;
use rust_raft_log::etcd::members::member_id;
use rust_raft_log::etcdpb::etcdserverpb::{
    compare, kv_client::KvClient, maintenance_client::MaintenanceClient, request_op,
    CompactionRequest, Compare, PutRequest, RangeRequest, RequestOp, SnapshotRequest,
    StatusRequest, TxnRequest,
};
use rust_raft_log::grpc;
use rust_raft_log::node;
use rust_raft_log::raft::{HardState, MemStorage, RaftNode};
use rust_raft_log::storage::engine::MemDurable;
use rust_raft_log::types::NodeId;
use tokio::sync::oneshot;
use tonic::transport::Channel;

const WRITES: u64 = 150;
const READERS_PER_NODE: usize = 2;

struct Running {
    id: u32,
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

fn start_node(config: &ClusterConfig, id: u32, listener: std::net::TcpListener) -> Running {
    let me = NodeId(id);
    let addr = listener.local_addr().expect("addr");
    let core = RaftNode::new(
        node::core_config(config, me, node::election_seed(me)),
        HardState::default(),
        MemStorage::default(),
    )
    .expect("core config");
    let (stop, stopped) = oneshot::channel::<()>();
    let config = config.clone();
    tokio_uring::spawn(async move {
        node::run_node(
            &config,
            me,
            listener,
            core,
            MemDurable::default(),
            node::Recovered::in_memory(),
            async move {
                let _ = stopped.await;
            },
        )
        .await
    });
    Running {
        id,
        addr,
        _stop: stop,
    }
}

fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .tcp_nodelay(true)
        .connect_lazy()
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..PutRequest::default()
    }
}

fn get(key: &str, serializable: bool) -> RangeRequest {
    RangeRequest {
        key: key.as_bytes().to_vec(),
        serializable,
        ..RangeRequest::default()
    }
}

/// The value of `key` as a number (0 when absent).
async fn read_number(client: &mut KvClient<Channel>, key: &str) -> (u64, i64) {
    let answer = client
        .range(get(key, false))
        .await
        .expect("linearizable range")
        .into_inner();
    let value = answer
        .kvs
        .first()
        .map(|kv| {
            String::from_utf8_lossy(&kv.value)
                .parse::<u64>()
                .expect("a number")
        })
        .unwrap_or(0);
    (value, answer.header.expect("header").revision)
}

#[test]
fn etcd_api_headers_forwarding_and_linearizable_reads_across_three_nodes() {
    tokio_uring::start(async {
        let listeners: Vec<std::net::TcpListener> = (0..3)
            .map(|_| grpc::bind("127.0.0.1:0".parse().expect("addr")).expect("bind"))
            .collect();
        let mut yaml = String::from("nodes:\n");
        for (i, l) in listeners.iter().enumerate() {
            let port = l.local_addr().expect("addr").port();
            yaml += &format!(
                "  - node_id: {}\n    ip_address: \"127.0.0.1\"\n    port: {port}\n",
                i + 1
            );
        }
        let config = ClusterConfig::from_yaml(&yaml).expect("valid config");
        let nodes: Vec<Running> = listeners
            .into_iter()
            .enumerate()
            .map(|(i, l)| start_node(&config, i as u32 + 1, l))
            .collect();

        // Wait until every node's Maintenance.Status names the same leader.
        let started = Instant::now();
        let (leader, cluster_id) = loop {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no agreed leader in 20 s"
            );
            let mut seen = Vec::new();
            for n in &nodes {
                let mut m = MaintenanceClient::new(channel(n.addr));
                if let Ok(s) = m.status(StatusRequest {}).await {
                    let s = s.into_inner();
                    let h = s.header.expect("header");
                    assert_eq!(h.member_id, member_id(NodeId(n.id)));
                    seen.push((s.leader, h.cluster_id));
                }
            }
            if seen.len() == 3 && seen[0].0 != 0 && seen.iter().all(|s| *s == seen[0]) {
                break seen[0];
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let leader = nodes
            .iter()
            .find(|n| member_id(NodeId(n.id)) == leader)
            .expect("the leader is a member");
        let followers: Vec<&Running> = nodes.iter().filter(|n| n.id != leader.id).collect();
        eprintln!("leader node {} after {:?}", leader.id, started.elapsed());

        // A put through a follower is forwarded; the answer carries the follower's member id, the
        // first write's revision (2: the empty store is at 1) and a term.
        let mut f1 = KvClient::new(channel(followers[0].addr));
        let mut f2 = KvClient::new(channel(followers[1].addr));
        let answer = f1
            .put(put("greeting", "hello"))
            .await
            .expect("put")
            .into_inner();
        let header = answer.header.expect("header");
        assert_eq!(header.cluster_id, cluster_id);
        assert_eq!(header.member_id, member_id(NodeId(followers[0].id)));
        assert_eq!(header.revision, 2);
        assert!(header.raft_term >= 1);

        // These nodes keep no snapshot files: Maintenance.Snapshot is refused, clearly, at once.
        let refused = MaintenanceClient::new(channel(leader.addr))
            .snapshot(SnapshotRequest {})
            .await
            .expect_err("an in-memory node has no snapshot to send");
        assert_eq!(
            refused.code(),
            tonic::Code::FailedPrecondition,
            "{refused:?}"
        );
        assert!(
            refused
                .message()
                .contains("this node keeps no snapshot files"),
            "{refused:?}"
        );

        // A linearizable read on the other follower sees it at once (forwarded to the leader,
        // which confirms its leadership before reading).
        let read = f2
            .range(get("greeting", false))
            .await
            .expect("range")
            .into_inner();
        assert_eq!(read.kvs.len(), 1);
        assert_eq!(read.kvs[0].value, b"hello");
        assert_eq!(read.header.expect("header").revision, 2);
        // A serializable read on a follower answers locally and catches up within a heartbeat.
        let started = Instant::now();
        loop {
            let local = f2
                .range(get("greeting", true))
                .await
                .expect("range")
                .into_inner();
            if local.kvs.len() == 1 {
                assert_eq!(local.kvs[0].value, b"hello");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "follower never applied"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // Txn through a follower: the compare holds, the success branch runs.
        let txn = TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Value as i32,
                key: b"greeting".to_vec(),
                target_union: Some(compare::TargetUnion::Value(b"hello".to_vec())),
                range_end: Vec::new(),
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(put("greeting", "bye"))),
            }],
            failure: Vec::new(),
        };
        let answer = f2.txn(txn).await.expect("txn").into_inner();
        assert!(answer.succeeded);
        assert_eq!(answer.header.expect("header").revision, 3);
        // Compaction through a follower.
        f1.compact(CompactionRequest {
            revision: 2,
            physical: false,
        })
        .await
        .expect("compact");
        let compacted = f1
            .range(RangeRequest {
                revision: 1,
                ..get("greeting", false)
            })
            .await
            .expect_err("revision 1 is compacted");
        assert_eq!(compacted.code(), tonic::Code::OutOfRange);
        assert_eq!(
            compacted.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );

        // Linearizability smoke test: one writer puts 1..=WRITES through the leader (its answer
        // comes back before the followers learn the commit, which is what a stale follower read
        // would expose); readers on every node read concurrently. A read that starts after the put of n was acknowledged must
        // return at least n, and each reader's revisions never go back.
        let acknowledged = Rc::new(Cell::new(0u64));
        let done = Rc::new(Cell::new(false));
        let mut readers = Vec::new();
        for n in &nodes {
            for _ in 0..READERS_PER_NODE {
                let mut client = KvClient::new(channel(n.addr));
                let acknowledged = Rc::clone(&acknowledged);
                let done = Rc::clone(&done);
                readers.push(tokio_uring::spawn(async move {
                    let mut reads = 0u64;
                    let mut last_revision = 0i64;
                    while !done.get() {
                        let floor = acknowledged.get();
                        let (value, revision) = read_number(&mut client, "counter").await;
                        assert!(
                            value >= floor,
                            "stale read: saw {value} after {floor} was acknowledged"
                        );
                        assert!(
                            revision >= last_revision,
                            "revision went back from {last_revision} to {revision}"
                        );
                        last_revision = revision;
                        reads += 1;
                    }
                    reads
                }));
            }
        }
        let started = Instant::now();
        let mut on_leader = KvClient::new(channel(leader.addr));
        for n in 1..=WRITES {
            on_leader
                .put(put("counter", &n.to_string()))
                .await
                .expect("put");
            acknowledged.set(n);
        }
        done.set(true);
        let mut reads = 0;
        for reader in readers {
            reads += reader.await.expect("reader task");
        }
        eprintln!(
            "{WRITES} puts and {reads} concurrent linearizable reads in {:?}",
            started.elapsed()
        );
        assert!(reads >= WRITES, "the readers made progress: {reads} reads");
        let (last, _) = read_number(&mut f2, "counter").await;
        assert_eq!(last, WRITES);
    });
}
