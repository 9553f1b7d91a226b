//! Three nodes in one process, over the real gRPC stack on ephemeral loopback ports, with the real
//! consensus core, the binary's own wiring (`node::run_node`) and in-memory durable state
//! (`MemDurable`).
//!
//! ```text
//!   node 1 ◀──gRPC──▶ node 2 ◀──gRPC──▶ node 3 ◀──gRPC──▶ node 1     (one tokio-uring runtime)
//!      ▲ Operator client: Status until exactly one leader, then 200 proposals (16 concurrent)
//! ```
//! Checks: exactly one leader; every proposal answered `Committed` with distinct indexes; every
//! node's commit index reaches the last one; a follower answers a proposal with `NotLeader` naming
//! the leader's address.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rust_raft_log::config::ClusterConfig;
use rust_raft_log::driver::{NodeStatus, ProposeOutcome};
use rust_raft_log::grpc::{self, proto as pb};
use rust_raft_log::node;
use rust_raft_log::raft::{HardState, MemStorage, RaftNode, Role};
use rust_raft_log::storage::engine::MemDurable;
use rust_raft_log::types::{LogIndex, NodeId};
use tokio::sync::oneshot;

const PROPOSALS: usize = 200;
const CONCURRENCY: usize = 16;

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<node::LoopStats, node::NodeError>>,
}

/// One node through the same wiring the binary uses (`node::run_node`), on `MemDurable`.
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
    let task = tokio_uring::spawn(async move {
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
    Running { addr, stop, task }
}

async fn status(addr: SocketAddr) -> Option<NodeStatus> {
    let mut client = pb::operator_client::OperatorClient::connect(format!("http://{addr}"))
        .await
        .ok()?;
    let answer = client.status(pb::StatusRequest {}).await.ok()?.into_inner();
    grpc::convert::decode_status(answer).ok()
}

#[test]
fn three_in_process_nodes_elect_a_leader_and_commit_proposals() {
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

        // Exactly one leader, seen by Status, within a generous bound.
        let started = Instant::now();
        let leader = loop {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no single leader within 20 s"
            );
            let mut leaders = Vec::new();
            for n in &nodes {
                if let Some(s) = status(n.addr).await {
                    if s.role == Role::Leader {
                        leaders.push((s.node_id, s.term, n.addr));
                    }
                }
            }
            let terms: HashSet<_> = leaders.iter().map(|l| l.1).collect();
            assert_eq!(
                terms.len(),
                leaders.len(),
                "two leaders in one term: {leaders:?}"
            );
            if leaders.len() == 1 {
                break leaders[0];
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        eprintln!(
            "leader {} in term {} after {:?}",
            leader.0,
            leader.1,
            started.elapsed()
        );

        // Proposals through the leader, CONCURRENCY at a time.
        let client = pb::operator_client::OperatorClient::connect(format!("http://{}", leader.2))
            .await
            .expect("connect to the leader");
        let mut tasks = tokio::task::JoinSet::new();
        let per_task = PROPOSALS / CONCURRENCY + 1;
        let started = Instant::now();
        for t in 0..CONCURRENCY {
            let mut client = client.clone();
            tasks.spawn(async move {
                let mut got = Vec::new();
                for k in 0..per_task {
                    let n = t * per_task + k;
                    if n >= PROPOSALS {
                        break;
                    }
                    let answer = client
                        .propose(pb::ProposeRequest {
                            payload: vec![n as u8; 256],
                        })
                        .await
                        .expect("proposal answered")
                        .into_inner();
                    got.push(grpc::convert::decode_propose_outcome(answer).expect("outcome"));
                }
                got
            });
        }
        let mut indexes = HashSet::new();
        let mut last = LogIndex(0);
        while let Some(result) = tasks.join_next().await {
            for outcome in result.expect("proposer task") {
                match outcome {
                    ProposeOutcome::Committed { index, .. } => {
                        assert!(indexes.insert(index), "index {index} answered twice");
                        last = last.max(index);
                    }
                    other => panic!("a proposal to the leader was not committed: {other:?}"),
                }
            }
        }
        assert_eq!(indexes.len(), PROPOSALS);
        eprintln!(
            "{PROPOSALS} proposals ({CONCURRENCY} concurrent) committed in {:?}",
            started.elapsed()
        );

        // Every node learns the commit index (followers from the next heartbeat).
        let started = Instant::now();
        for n in &nodes {
            loop {
                let s = status(n.addr).await.expect("status");
                if s.commit_index >= last && s.applied_index >= last {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "node {} stuck at commit {} (want {last})",
                    s.node_id,
                    s.commit_index
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        // A follower redirects.
        let follower = nodes
            .iter()
            .find(|n| n.addr != leader.2)
            .expect("a follower");
        let mut client =
            pb::operator_client::OperatorClient::connect(format!("http://{}", follower.addr))
                .await
                .expect("connect to a follower");
        let answer = client
            .propose(pb::ProposeRequest { payload: vec![1] })
            .await
            .expect("answered")
            .into_inner();
        assert_eq!(
            grpc::convert::decode_propose_outcome(answer).expect("outcome"),
            ProposeOutcome::NotLeader {
                leader: Some(leader.0),
                leader_address: Some(leader.2.to_string()),
            }
        );

        // ProposeStream on the leader: answers in request order, an oversized proposal is
        // refused with the unary call's status and the stream goes on.
        let mut leader_client =
            pb::operator_client::OperatorClient::connect(format!("http://{}", leader.2))
                .await
                .expect("connect to the leader");
        let (requests, requests_rx) = tokio::sync::mpsc::channel(256);
        let mut answers = leader_client
            .propose_stream(tokio_stream::wrappers::ReceiverStream::new(requests_rx))
            .await
            .expect("stream opened")
            .into_inner();
        const STREAMED: usize = 100;
        const OVERSIZED_AT: usize = 40;
        for k in 0..STREAMED {
            let payload = if k == OVERSIZED_AT {
                vec![0u8; grpc::convert::ENTRY_PAYLOAD_BYTES_MAX + 1]
            } else {
                vec![k as u8; 64]
            };
            requests
                .send(pb::ProposeRequest { payload })
                .await
                .expect("stream open");
        }
        let mut previous = last;
        for k in 0..STREAMED {
            let answer = answers
                .message()
                .await
                .expect("stream alive")
                .expect("one answer per proposal");
            match grpc::convert::decode_propose_outcome(answer) {
                Ok(ProposeOutcome::Committed { index, .. }) => {
                    assert_ne!(k, OVERSIZED_AT, "the oversized proposal was committed");
                    assert!(
                        index > previous,
                        "streamed proposal {k} answered with index {index} after {previous}: \
                         answers are not in request order"
                    );
                    previous = index;
                }
                Err(grpc::ConvertError::Refused { code, message }) => {
                    assert_eq!(k, OVERSIZED_AT, "proposal {k} refused: {message}");
                    assert_eq!(code, tonic::Code::InvalidArgument, "{message}");
                    assert!(message.contains("above the limit"), "{message}");
                }
                other => panic!("streamed proposal {k}: {other:?}"),
            }
        }

        // ProposeStream on a follower: NotLeader, as the unary call.
        let mut follower_client =
            pb::operator_client::OperatorClient::connect(format!("http://{}", follower.addr))
                .await
                .expect("connect to a follower");
        let mut answers_f = follower_client
            .propose_stream(tokio_stream::iter(vec![pb::ProposeRequest {
                payload: vec![1],
            }]))
            .await
            .expect("stream opened")
            .into_inner();
        let answer = answers_f
            .message()
            .await
            .expect("stream alive")
            .expect("an answer");
        assert!(
            matches!(
                grpc::convert::decode_propose_outcome(answer),
                Ok(ProposeOutcome::NotLeader { leader: Some(l), .. }) if l == leader.0
            ),
            "a follower must answer a streamed proposal with NotLeader"
        );

        // Shutdown with the leader's stream still open (its request side never closes): the
        // stream ends, the nodes stop.
        drop(client);
        for n in nodes {
            let _ = n.stop.send(());
            tokio::time::timeout(Duration::from_secs(20), n.task)
                .await
                .expect("a node did not stop within 20 s")
                .expect("node task")
                .expect("node stopped cleanly");
        }
        drop(requests);
    });
}
