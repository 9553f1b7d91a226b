//! The transport through the real gRPC stack, inside `tokio_uring::start` as in the node.
//!
//! ```text
//!   node 1                                   node 2
//!   Peers ──RequestVote/AppendEntries──▶ server ──Inbound::Request──▶ responder task
//!     ▲                                                                   │ (plays the core)
//!     └── Inbound::Response ◀── RPC reply ◀── oneshot answer ◀────────────┘
//! ```
//! Each endpoint binds 127.0.0.1:0 (an ephemeral port) and everything started is stopped at the
//! end of each test.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rust_raft_log::driver;

/// The mailbox of these tests' nodes (no state machine responses).
type Inbound = driver::Inbound<()>;
use rust_raft_log::grpc::{self, proto as pb, PeerConfig, Peers, ServerConfig};
use rust_raft_log::raft::membership::Membership;
use rust_raft_log::raft::message::{
    AppendEntries, AppendEntriesResponse, Envelope, InstallSnapshot, Message, RequestVote,
    RequestVoteResponse, SnapshotId,
};
use rust_raft_log::storage::snapshot::{encode_header, SnapshotMeta, PAYLOAD_KIND_OPAQUE};
use rust_raft_log::types::{EntryType, LogEntry, LogIndex, NodeId, Term};
use tokio::sync::{mpsc, oneshot};

const TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs a test's body inside `tokio_uring::start`, as the node runs, failing it after
/// `TEST_TIMEOUT` instead of hanging.
fn within_test_timeout(body: impl std::future::Future<Output = ()>) {
    tokio_uring::start(async {
        tokio::time::timeout(TEST_TIMEOUT, body)
            .await
            .expect("test finished within its timeout");
    });
}

/// A running server with its inbound queue and a way to stop it.
struct Endpoint {
    addr: SocketAddr,
    inbound_tx: mpsc::Sender<Inbound>,
    inbound_rx: Option<mpsc::Receiver<Inbound>>,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), grpc::GrpcError>>,
}

impl Endpoint {
    fn start(id: u32) -> Endpoint {
        Self::start_at(id, "127.0.0.1:0".parse().expect("addr"))
    }

    fn start_at(id: u32, addr: SocketAddr) -> Endpoint {
        Self::start_with(id, addr, None)
    }

    fn start_with(
        id: u32,
        addr: SocketAddr,
        snapshots: Option<Arc<dyn grpc::SnapshotFiles>>,
    ) -> Endpoint {
        let listener = grpc::bind(addr).expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (inbound_tx, inbound_rx) = mpsc::channel(64);
        let (stop, stopped) = oneshot::channel::<()>();
        let config = ServerConfig {
            local_id: NodeId(id),
            limits: grpc::Limits::default(),
            snapshots,
            gate: None,
            tls: None,
        };
        let server = tokio_uring::spawn(grpc::serve(
            listener,
            config,
            inbound_tx.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Endpoint {
            addr,
            inbound_tx,
            inbound_rx: Some(inbound_rx),
            stop: Some(stop),
            server,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(5), self.server)
            .await
            .expect("server stops within 5 s")
            .expect("server task did not panic");
        result.expect("server ran without error");
    }
}

/// Plays the core of a follower: grants every vote, accepts every append, declines (drops the
/// reply of) AppendEntries whose term is 0. Forwards responses it receives to `responses`.
fn responder(
    id: u32,
    mut inbound: mpsc::Receiver<Inbound>,
    responses: mpsc::UnboundedSender<Envelope>,
) -> tokio::task::JoinHandle<()> {
    tokio_uring::spawn(async move {
        while let Some(item) = inbound.recv().await {
            match item {
                Inbound::Request { envelope, reply } => {
                    let msg = match envelope.msg {
                        Message::RequestVote(m) => {
                            Message::RequestVoteResponse(RequestVoteResponse {
                                term: m.term,
                                vote_granted: true,
                                pre_vote: m.pre_vote,
                            })
                        }
                        Message::AppendEntries(m) if m.term == Term(0) => {
                            drop(reply);
                            continue;
                        }
                        Message::AppendEntries(m) => {
                            Message::AppendEntriesResponse(AppendEntriesResponse {
                                term: m.term,
                                success: true,
                                last_log_index: LogIndex(
                                    m.prev_log_index.0 + m.entries.len() as u64,
                                ),
                                conflict_term: None,
                                conflict_index: None,
                                read_seq: 0,
                            })
                        }
                        Message::InstallSnapshot(m) => {
                            // The receiver filled the configuration from the received file's
                            // header (the snapshot tests write `snapshot_file_head`'s).
                            assert_eq!(
                                m.membership,
                                Membership::new([NodeId(1), NodeId(2), NodeId(3)], [NodeId(4)]),
                                "node {id}: the configuration of the snapshot's header"
                            );
                            Message::AppendEntriesResponse(AppendEntriesResponse {
                                term: m.term,
                                success: true,
                                last_log_index: m.snapshot.index,
                                conflict_term: None,
                                conflict_index: None,
                                read_seq: m.read_seq,
                            })
                        }
                        other => panic!("node {id} got a response as a request: {other:?}"),
                    };
                    let _ = reply.send(Envelope {
                        from: NodeId(id),
                        to: envelope.from,
                        msg,
                    });
                }
                Inbound::Response(e) => {
                    let _ = responses.send(e);
                }
                Inbound::SnapshotFailed { to } => {
                    panic!("node {id}: the snapshot transfer to {to} failed")
                }
                Inbound::TransferLeader { .. } => {
                    panic!("node {id}: no leadership transfer is asked in this test")
                }
                Inbound::Member { .. } | Inbound::Membership { .. } => {
                    panic!("node {id}: no membership change is asked in this test")
                }
                Inbound::Propose { payload, reply } => {
                    // A payload of 99 bytes plays an overloaded node.
                    let _ = reply.send(if payload.len() == 99 {
                        Err(driver::ProposeRefused::Overloaded { pending: 7 })
                    } else {
                        Ok(driver::ProposeOutcome::Committed {
                            index: LogIndex(payload.len() as u64),
                            term: Term(1),
                        })
                    });
                }
                Inbound::Status { reply } => {
                    let _ = reply.send(driver::NodeStatus {
                        node_id: NodeId(id),
                        role: rust_raft_log::raft::Role::Follower,
                        term: Term(1),
                        leader: None,
                        commit_index: LogIndex(0),
                        applied_index: LogIndex(0),
                        first_log_index: LogIndex(1),
                        last_log_index: LogIndex(0),
                        peers: vec![],
                        lead_transferee: None,
                    });
                }
                // The etcd API's items: this server serves no etcd services.
                Inbound::Command { .. } | Inbound::Read { .. } | Inbound::Snapshot { .. } => {
                    panic!("node {id} got an etcd item on a server without the etcd API")
                }
            }
        }
    })
}

fn vote(from: u32, to: u32, term: u64) -> Envelope {
    Envelope {
        from: NodeId(from),
        to: NodeId(to),
        msg: Message::RequestVote(RequestVote {
            term: Term(term),
            candidate_id: NodeId(from),
            last_log_index: LogIndex(3),
            last_log_term: Term(1),
            pre_vote: false,
            leader_transfer: false,
        }),
    }
}

fn append(from: u32, to: u32, term: u64, prev: u64, n: usize) -> Envelope {
    Envelope {
        from: NodeId(from),
        to: NodeId(to),
        msg: Message::AppendEntries(AppendEntries {
            term: Term(term),
            leader_id: NodeId(from),
            prev_log_index: LogIndex(prev),
            prev_log_term: Term(term),
            entries: (0..n as u64)
                .map(|i| LogEntry {
                    term: Term(term),
                    index: LogIndex(prev + 1 + i),
                    entry_type: if i == 0 {
                        EntryType::NoOp
                    } else {
                        EntryType::Normal
                    },
                    payload: vec![i as u8; 256],
                })
                .collect(),
            leader_commit: LogIndex(prev),
            read_seq: 0,
        }),
    }
}

fn fast_peers() -> PeerConfig {
    PeerConfig {
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        connect_timeout: Duration::from_millis(200),
        rpc_timeout: Duration::from_millis(500),
        ..PeerConfig::default()
    }
}

async fn next_response(rx: &mut mpsc::UnboundedReceiver<Envelope>) -> Envelope {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a response within 5 s")
        .expect("responder still running")
}

#[test]
fn two_endpoints_exchange_votes_and_appends_over_grpc() {
    exchange_votes_and_appends(true);
}

#[test]
fn two_endpoints_exchange_votes_and_appends_over_unary_rpcs() {
    exchange_votes_and_appends(false);
}

/// Votes, appends, a declined append and the operator service between two endpoints; appends
/// travel on the AppendEntries stream if `stream`, else on unary RPCs.
fn exchange_votes_and_appends(stream: bool) {
    let peer_config = PeerConfig {
        stream_append_entries: stream,
        ..fast_peers()
    };
    within_test_timeout(async {
        let mut one = Endpoint::start(1);
        let mut two = Endpoint::start(2);
        let (resp1_tx, mut resp1) = mpsc::unbounded_channel();
        let (resp2_tx, mut resp2) = mpsc::unbounded_channel();
        let r1 = responder(1, one.inbound_rx.take().expect("rx"), resp1_tx);
        let r2 = responder(2, two.inbound_rx.take().expect("rx"), resp2_tx);
        let peers1 = Peers::start(
            NodeId(1),
            &[(NodeId(2), two.addr)],
            peer_config.clone(),
            one.inbound_tx.clone(),
        )
        .expect("peers of 1");
        let peers2 = Peers::start(
            NodeId(2),
            &[(NodeId(1), one.addr)],
            peer_config.clone(),
            two.inbound_tx.clone(),
        )
        .expect("peers of 2");

        // 1 -> 2 RequestVote; the response comes back to node 1's event loop.
        peers1.send(vote(1, 2, 5)).expect("queued");
        let got = next_response(&mut resp1).await;
        assert_eq!(
            got,
            Envelope {
                from: NodeId(2),
                to: NodeId(1),
                msg: Message::RequestVoteResponse(RequestVoteResponse {
                    term: Term(5),
                    vote_granted: true,
                    pre_vote: false,
                }),
            }
        );

        // 2 -> 1 AppendEntries with entries (NoOp + Normal payloads) and the ack back.
        peers2.send(append(2, 1, 6, 10, 4)).expect("queued");
        let got = next_response(&mut resp2).await;
        assert_eq!(got.from, NodeId(1));
        assert_eq!(got.to, NodeId(2));
        match got.msg {
            Message::AppendEntriesResponse(m) => {
                assert!(m.success);
                assert_eq!(m.last_log_index, LogIndex(14));
                assert_eq!(m.term, Term(6));
            }
            other => panic!("expected an AppendEntriesResponse, got {other:?}"),
        }

        // A request the "core" declines: no response reaches node 1, the peer counts it.
        peers1.send(append(1, 2, 0, 0, 0)).expect("queued");
        // Then a normal one, which must still get through on the same connection.
        peers1.send(vote(1, 2, 7)).expect("queued");
        let got = next_response(&mut resp1).await;
        assert_eq!(got.msg.term(), Term(7));
        let stats = peers1.stats(NodeId(2)).expect("peer 2");
        assert_eq!(stats.declined, 1, "{stats:?}");
        assert_eq!(stats.delivered, 2, "{stats:?}");
        assert_eq!(stats.failed, 0, "{stats:?}");

        // Responses cannot be sent on their own, and unknown peers are refused.
        let resp = Envelope {
            from: NodeId(1),
            to: NodeId(2),
            msg: Message::RequestVoteResponse(RequestVoteResponse {
                term: Term(1),
                vote_granted: false,
                pre_vote: false,
            }),
        };
        assert!(peers1.send(resp).is_err());
        assert_eq!(
            peers1.send(vote(1, 9, 1)),
            Err(grpc::SendError::UnknownPeer(NodeId(9)))
        );

        // The operator service, through a plain client.
        let mut op = pb::operator_client::OperatorClient::connect(format!("http://{}", one.addr))
            .await
            .expect("operator connects");
        let answer = op
            .propose(pb::ProposeRequest {
                payload: vec![1; 33],
            })
            .await
            .expect("propose answered")
            .into_inner();
        assert_eq!(
            grpc::convert::decode_propose_outcome(answer),
            Ok(driver::ProposeOutcome::Committed {
                index: LogIndex(33),
                term: Term(1)
            })
        );
        let err = op
            .propose(pb::ProposeRequest {
                payload: vec![1; 99],
            })
            .await
            .expect_err("an overloaded node refuses");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("7 proposals"), "{}", err.message());
        let status = op
            .status(pb::StatusRequest {})
            .await
            .expect("status answered")
            .into_inner();
        let status = grpc::convert::decode_status(status).expect("valid status");
        assert_eq!(status.node_id, NodeId(1));

        drop(peers1);
        drop(peers2);
        drop(op);
        one.stop().await;
        two.stop().await;
        r1.abort();
        r2.abort();
    });
}

#[test]
fn malformed_and_misrouted_requests_are_refused_with_status_codes() {
    within_test_timeout(async {
        let mut one = Endpoint::start(1);
        let (resp_tx, _resp) = mpsc::unbounded_channel();
        let r = responder(1, one.inbound_rx.take().expect("rx"), resp_tx);
        let mut client = pb::raft_client::RaftClient::connect(format!("http://{}", one.addr))
            .await
            .expect("connects");

        // No route: INVALID_ARGUMENT naming the field.
        let err = client
            .request_vote(pb::RequestVoteRequest::default())
            .await
            .expect_err("missing route is refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("route"), "{}", err.message());

        // Unknown entry type: INVALID_ARGUMENT.
        let err = client
            .append_entries(pb::AppendEntriesRequest {
                route: Some(pb::Route { from: 2, to: 1 }),
                term: 1,
                leader_id: 2,
                entries: vec![pb::LogEntry {
                    term: 1,
                    index: 1,
                    entry_type: 42,
                    payload: vec![],
                }],
                ..Default::default()
            })
            .await
            .expect_err("unknown entry type is refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("entry_type"), "{}", err.message());

        // Routed to another node id: FAILED_PRECONDITION.
        let err = client
            .request_vote(pb::RequestVoteRequest {
                route: Some(pb::Route { from: 2, to: 3 }),
                ..Default::default()
            })
            .await
            .expect_err("misrouted request is refused");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);

        drop(client);
        one.stop().await;
        r.abort();
    });
}

#[test]
fn a_down_peer_does_not_block_sends_to_the_others() {
    within_test_timeout(async {
        let mut one = Endpoint::start(1);
        let mut two = Endpoint::start(2);
        let (resp1_tx, mut resp1) = mpsc::unbounded_channel();
        let (resp2_tx, _resp2) = mpsc::unbounded_channel();
        let r1 = responder(1, one.inbound_rx.take().expect("rx"), resp1_tx);
        let r2 = responder(2, two.inbound_rx.take().expect("rx"), resp2_tx);

        // Peer 3: nothing listens (connection refused). Peer 4: a socket that completes the
        // TCP handshake (kernel backlog) but never speaks HTTP/2 (a hung process).
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let black_hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let config = PeerConfig {
            queue_capacity: 16,
            inflight_rpcs_max: 4,
            ..fast_peers()
        };
        let peers = Peers::start(
            NodeId(1),
            &[
                (NodeId(2), two.addr),
                (NodeId(3), refused),
                (NodeId(4), black_hole.local_addr().expect("addr")),
            ],
            config,
            one.inbound_tx.clone(),
        )
        .expect("peers");

        // A leader's rhythm: each round sends to every peer, then waits for the live peer's
        // answer before the next round. The dead peers must not slow the rounds down.
        const ROUNDS: u64 = 200;
        let started = Instant::now();
        let mut send_time = Duration::ZERO;
        for round in 0..ROUNDS {
            let t = Instant::now();
            for to in [2, 3, 4] {
                peers.send(vote(1, to, round + 1)).expect("queued");
            }
            send_time += t.elapsed();
            let e = next_response(&mut resp1).await;
            assert_eq!(e.from, NodeId(2), "only peer 2 can answer: {e:?}");
            assert_eq!(e.msg.term(), Term(round + 1), "answers arrive in order");
        }
        let elapsed = started.elapsed();
        let s2 = peers.stats(NodeId(2)).expect("2");
        let s3 = peers.stats(NodeId(3)).expect("3");
        let s4 = peers.stats(NodeId(4)).expect("4");
        eprintln!(
            "600 sends took {send_time:?} in total; {ROUNDS} rounds with peer 2 took {elapsed:?}; \
             peer 2 {s2:?}; peer 3 {s3:?}; peer 4 {s4:?}"
        );
        // send() never waits for the network: 600 calls are pure queue pushes.
        assert!(
            send_time < Duration::from_millis(200),
            "sends took {send_time:?}"
        );
        assert!(elapsed < Duration::from_secs(10), "peer 2 took {elapsed:?}");
        assert_eq!(s2.dropped, 0, "the live peer lost messages: {s2:?}");
        // The dead peers' queues stay bounded and drop their oldest messages.
        for s in [s3, s4] {
            assert!(s.queue_len <= 16, "{s:?}");
            assert!(s.dropped > 0, "{s:?}");
            assert_eq!(s.delivered, 0, "{s:?}");
        }
        assert!(
            s3.failed > 0,
            "connection refused must count as failures: {s3:?}"
        );
        // The refused peer backs off: with a 5..50 ms backoff it cannot have tried more than
        // a few dozen times in this test, far fewer than the 200 messages queued for it.
        assert!(
            s3.failed < ROUNDS,
            "no backoff toward the refused peer: {s3:?}"
        );

        drop(peers);
        drop(black_hole);
        one.stop().await;
        two.stop().await;
        r1.abort();
        r2.abort();
    });
}

#[test]
fn a_port_in_use_gives_the_seed_message() {
    let first = grpc::bind("127.0.0.1:0".parse().expect("addr")).expect("bind port 0");
    let addr = first.local_addr().expect("addr");
    let err = grpc::bind(addr).expect_err("the port is taken");
    assert_eq!(
        err.to_string(),
        format!("Failed to bind to {addr} - address already in use")
    );
}

/// Sends a vote request every 10 ms until one is answered; returns how long that took.
async fn until_answered(
    peers: &Peers,
    responses: &mut mpsc::UnboundedReceiver<Envelope>,
    term: &mut u64,
) -> Duration {
    until_answered_with(peers, responses, term, |t| vote(1, 2, t)).await
}

#[test]
fn a_peer_that_comes_back_is_reached_again_after_backoff() {
    within_test_timeout(async {
        let mut one = Endpoint::start(1);
        let (resp1_tx, mut resp1) = mpsc::unbounded_channel();
        let r1 = responder(1, one.inbound_rx.take().expect("rx"), resp1_tx);
        // Reserve a port for node 2, which is down at first.
        let addr_2 = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let peers = Peers::start(
            NodeId(1),
            &[(NodeId(2), addr_2)],
            fast_peers(),
            one.inbound_tx.clone(),
        )
        .expect("peers");
        let mut term = 0;
        for _ in 0..5 {
            term += 1;
            peers.send(vote(1, 2, term)).expect("queued");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let down = peers.stats(NodeId(2)).expect("2");
        assert!(down.failed > 0 && down.delivered == 0, "{down:?}");

        // Node 2 starts: the same channel connects after at most one backoff period.
        let mut two = Endpoint::start_at(2, addr_2);
        let r2 = responder(
            2,
            two.inbound_rx.take().expect("rx"),
            mpsc::unbounded_channel().0,
        );
        let first = until_answered(&peers, &mut resp1, &mut term).await;

        // Node 2 stops (its connection breaks) and comes back on the same address.
        two.stop().await;
        r2.abort();
        for _ in 0..3 {
            term += 1;
            peers.send(vote(1, 2, term)).expect("queued");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let failed_before = peers.stats(NodeId(2)).expect("2").failed;
        assert!(
            failed_before > down.failed,
            "sends to the stopped peer must fail"
        );
        let mut two = Endpoint::start_at(2, addr_2);
        let r2 = responder(
            2,
            two.inbound_rx.take().expect("rx"),
            mpsc::unbounded_channel().0,
        );
        let second = until_answered(&peers, &mut resp1, &mut term).await;
        eprintln!(
            "reached again {first:?} after the first start and {second:?} after the restart; \
             {:?}",
            peers.stats(NodeId(2))
        );
        // The backoff is capped at 50 ms here; a second is far beyond any backoff step.
        assert!(first < Duration::from_secs(1), "{first:?}");
        assert!(second < Duration::from_secs(1), "{second:?}");

        drop(peers);
        two.stop().await;
        one.stop().await;
        r1.abort();
        r2.abort();
    });
}

/// Sends `make(term)` every 10 ms until a response arrives; returns how long that took.
async fn until_answered_with(
    peers: &Peers,
    responses: &mut mpsc::UnboundedReceiver<Envelope>,
    term: &mut u64,
    make: impl Fn(u64) -> Envelope,
) -> Duration {
    let started = Instant::now();
    loop {
        *term += 1;
        peers.send(make(*term)).expect("queued");
        if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(10), responses.recv()).await
        {
            assert_eq!(e.from, NodeId(2));
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "peer 2 was not reached again within 10 s: {:?}",
            peers.stats(NodeId(2))
        );
    }
}

/// A leader that sends its next append while the previous one is in flight: every append must go
/// out at once and be answered in order. Regression: the stream's reader once waited for the
/// peer's closing on the worker's own wake-up `Notify`; when it had registered first, the
/// notification of a new message woke the reader instead of the worker, and the message waited
/// in the queue for the next one (a heartbeat, 50 ms later in the node: 48 ms p90 commits).
#[test]
fn appends_on_the_stream_are_sent_and_answered_one_after_another() {
    within_test_timeout(async {
        let mut one = Endpoint::start(1);
        let mut two = Endpoint::start(2);
        let (resp1_tx, mut resp1) = mpsc::unbounded_channel();
        let r1 = responder(1, one.inbound_rx.take().expect("rx"), resp1_tx);
        let r2 = responder(
            2,
            two.inbound_rx.take().expect("rx"),
            mpsc::unbounded_channel().0,
        );
        let peers = Peers::start(
            NodeId(1),
            &[(NodeId(2), two.addr)],
            fast_peers(),
            one.inbound_tx.clone(),
        )
        .expect("peers");
        let mut prev = 0;
        for round in 0..50u64 {
            if round == 25 {
                // A declined request on the stream: counted, answered by nothing, and the
                // stream goes on.
                peers.send(append(1, 2, 0, 0, 0)).expect("queued");
            }
            peers.send(append(1, 2, 3, prev, 1)).expect("queued");
            // The second half follows while the first is in flight (a pipelining leader).
            tokio::task::yield_now().await;
            peers.send(append(1, 2, 3, prev + 1, 1)).expect("queued");
            let first = tokio::time::timeout(Duration::from_secs(2), resp1.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "append {round}a not answered within 2 s: {:?}",
                        peers.stats(NodeId(2))
                    )
                })
                .expect("responder running");
            assert!(
                matches!(first.msg, Message::AppendEntriesResponse(ref m) if m.last_log_index == LogIndex(prev + 1)),
                "{first:?}"
            );
            let got = tokio::time::timeout(Duration::from_secs(2), resp1.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "append {round} not answered within 2 s: {:?}",
                        peers.stats(NodeId(2))
                    )
                })
                .expect("responder running");
            match got.msg {
                Message::AppendEntriesResponse(m) => {
                    assert!(m.success);
                    assert_eq!(m.last_log_index, LogIndex(prev + 2), "answers in order");
                }
                other => panic!("expected an AppendEntriesResponse, got {other:?}"),
            }
            prev += 2;
        }
        let stats = peers.stats(NodeId(2)).expect("peer 2");
        assert_eq!(
            (stats.delivered, stats.declined, stats.failed),
            (100, 1, 0),
            "{stats:?}"
        );
        drop(peers);
        one.stop().await;
        two.stop().await;
        r1.abort();
        r2.abort();
    });
}

/// A follower that is stopped and started again: the broken stream counts as a failure, and the
/// appends reach the restarted follower on a new stream within a backoff step. Also: a server
/// with a leader's stream open still shuts down (the stream ends when shutdown begins).
#[test]
fn an_append_stream_broken_by_a_restart_is_opened_again() {
    within_test_timeout(async {
        let mut one = Endpoint::start(1);
        let (resp1_tx, mut resp1) = mpsc::unbounded_channel();
        let r1 = responder(1, one.inbound_rx.take().expect("rx"), resp1_tx);
        let mut two = Endpoint::start(2);
        let addr_2 = two.addr;
        let r2 = responder(
            2,
            two.inbound_rx.take().expect("rx"),
            mpsc::unbounded_channel().0,
        );
        let peers = Peers::start(
            NodeId(1),
            &[(NodeId(2), addr_2)],
            fast_peers(),
            one.inbound_tx.clone(),
        )
        .expect("peers");
        let mut term = 0;
        let heartbeat = |t| append(1, 2, t, 0, 0);
        let first = until_answered_with(&peers, &mut resp1, &mut term, heartbeat).await;
        // The stream is open now; stopping the server must not wait for it.
        two.stop().await;
        r2.abort();
        for _ in 0..3 {
            term += 1;
            peers.send(heartbeat(term)).expect("queued");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let failed = peers.stats(NodeId(2)).expect("2").failed;
        assert!(failed > 0, "appends to the stopped peer must fail");
        while resp1.try_recv().is_ok() {}
        let mut two = Endpoint::start_at(2, addr_2);
        let r2 = responder(
            2,
            two.inbound_rx.take().expect("rx"),
            mpsc::unbounded_channel().0,
        );
        let second = until_answered_with(&peers, &mut resp1, &mut term, heartbeat).await;
        eprintln!("answered {first:?} after start, {second:?} after the restart");
        assert!(second < Duration::from_secs(1), "{second:?}");
        drop(peers);
        two.stop().await;
        one.stop().await;
        r1.abort();
        r2.abort();
    });
}

/// A follower of an older version: serves unary AppendEntries but answers UNIMPLEMENTED to
/// the stream.
#[derive(Clone)]
struct UnaryOnlyFollower;

#[tonic::async_trait]
impl pb::raft_server::Raft for UnaryOnlyFollower {
    type AppendEntriesStreamStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<pb::AppendEntriesResponse, tonic::Status>>
                + Send,
        >,
    >;

    async fn request_vote(
        &self,
        _request: tonic::Request<pb::RequestVoteRequest>,
    ) -> Result<tonic::Response<pb::RequestVoteResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no votes here"))
    }

    async fn timeout_now(
        &self,
        _request: tonic::Request<pb::TimeoutNowRequest>,
    ) -> Result<tonic::Response<pb::TimeoutNowResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no transfers here"))
    }

    async fn membership_probe(
        &self,
        _request: tonic::Request<pb::MembershipProbeRequest>,
    ) -> Result<tonic::Response<pb::MembershipProbeResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no probes here"))
    }

    async fn append_entries(
        &self,
        request: tonic::Request<pb::AppendEntriesRequest>,
    ) -> Result<tonic::Response<pb::AppendEntriesResponse>, tonic::Status> {
        let r = request.into_inner();
        Ok(tonic::Response::new(pb::AppendEntriesResponse {
            route: Some(pb::Route { from: 2, to: 1 }),
            term: r.term,
            success: true,
            last_log_index: r.prev_log_index + r.entries.len() as u64,
            ..Default::default()
        }))
    }

    async fn install_snapshot(
        &self,
        _request: tonic::Request<tonic::Streaming<pb::InstallSnapshotChunk>>,
    ) -> Result<tonic::Response<pb::InstallSnapshotResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no snapshots here"))
    }

    async fn append_entries_stream(
        &self,
        _request: tonic::Request<tonic::Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<tonic::Response<Self::AppendEntriesStreamStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "raftlog.v1.Raft/AppendEntriesStream",
        ))
    }
}

#[test]
fn a_follower_without_the_stream_gets_unary_appends() {
    within_test_timeout(async {
        let mut one = Endpoint::start(1);
        let (resp1_tx, mut resp1) = mpsc::unbounded_channel();
        let r1 = responder(1, one.inbound_rx.take().expect("rx"), resp1_tx);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr_2 = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio_uring::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::raft_server::RaftServer::new(UnaryOnlyFollower))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async move {
                        let _ = stopped.await;
                    },
                ),
        );
        let peers = Peers::start(
            NodeId(1),
            &[(NodeId(2), addr_2)],
            fast_peers(),
            one.inbound_tx.clone(),
        )
        .expect("peers");
        let mut term = 0;
        // The first append is lost on the refused stream; a retransmission (as Raft's
        // heartbeat would send) goes unary and is answered.
        until_answered_with(&peers, &mut resp1, &mut term, |t| append(1, 2, t, 0, 1)).await;
        for prev in 1..20u64 {
            peers.send(append(1, 2, 9, prev, 1)).expect("queued");
            let got = next_response(&mut resp1).await;
            assert_eq!(
                got.msg,
                Message::AppendEntriesResponse(AppendEntriesResponse {
                    term: Term(9),
                    success: true,
                    last_log_index: LogIndex(prev + 1),
                    conflict_term: None,
                    conflict_index: None,
                    read_seq: 0,
                })
            );
        }
        let stats = peers.stats(NodeId(2)).expect("peer 2");
        assert_eq!(
            stats.failed, 0,
            "UNIMPLEMENTED is not a link failure: {stats:?}"
        );
        drop(peers);
        let _ = stop.send(());
        let _ = server.await;
        one.stop().await;
        r1.abort();
    });
}

/// A TCP proxy that forwards both ways until `frozen` is set, then swallows everything (a
/// partition: the sockets stay open, nothing arrives). It never closes the server's side itself;
/// it reports when the server closed it.
async fn freezing_proxy(
    listener: tokio::net::TcpListener,
    server: SocketAddr,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    server_closed: oneshot::Sender<Instant>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok((client, _)) = listener.accept().await else {
        return;
    };
    let Ok(upstream) = tokio::net::TcpStream::connect(server).await else {
        return;
    };
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = upstream.into_split();
    let up_frozen = std::sync::Arc::clone(&frozen);
    // Client -> server. At the client's EOF the server's side stays open: the server must find
    // out by itself.
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match client_rx.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    std::future::pending::<()>().await;
                }
                Ok(n) => {
                    if !up_frozen.load(Ordering::Relaxed)
                        && server_tx.write_all(&buf[..n]).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    // Server -> client, until the server closes its side.
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match server_rx.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = server_closed.send(Instant::now());
                return;
            }
            Ok(n) => {
                if !frozen.load(Ordering::Relaxed) {
                    let _ = client_tx.write_all(&buf[..n]).await;
                }
            }
        }
    }
}

/// A leader's AppendEntries stream outlives every request, so the follower must notice by itself
/// when the leader's host is cut off without a FIN (a partition, a power loss): its keepalive pings
/// go unanswered and it closes the connection, ending the stream and its tasks, within seconds.
#[test]
fn a_follower_closes_a_silent_leaders_stream_after_its_keepalive_pings_go_unanswered() {
    within_test_timeout(async {
        let mut one = Endpoint::start(1);
        let mut two = Endpoint::start(2);
        let (resp1_tx, mut resp1) = mpsc::unbounded_channel();
        let r1 = responder(1, one.inbound_rx.take().expect("rx"), resp1_tx);
        let r2 = responder(
            2,
            two.inbound_rx.take().expect("rx"),
            mpsc::unbounded_channel().0,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let proxy_addr = listener.local_addr().expect("addr");
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (closed_tx, closed_rx) = oneshot::channel();
        let proxy = tokio_uring::spawn(freezing_proxy(
            listener,
            two.addr,
            std::sync::Arc::clone(&frozen),
            closed_tx,
        ));
        let peers = Peers::start(
            NodeId(1),
            &[(NodeId(2), proxy_addr)],
            fast_peers(),
            one.inbound_tx.clone(),
        )
        .expect("peers");
        // The stream is up and answers through the proxy.
        peers.send(append(1, 2, 4, 0, 1)).expect("queued");
        next_response(&mut resp1).await;
        let cut = Instant::now();
        frozen.store(true, std::sync::atomic::Ordering::Relaxed);
        let closed_at = tokio::time::timeout(Duration::from_secs(10), closed_rx)
            .await
            .expect("the follower closed the silent connection within 10 s")
            .expect("proxy running");
        let after = closed_at.duration_since(cut);
        eprintln!("the follower closed the connection {after:?} after the cut");
        // Pings every 1 s, 2 s to answer: about 3 s; well under the 10 s bound above.
        assert!(
            after >= Duration::from_millis(1500),
            "closed too early: {after:?}"
        );
        drop(peers);
        proxy.abort();
        one.stop().await;
        two.stop().await;
        r1.abort();
        r2.abort();
    });
}

/// `ProposeStream`: every proposal is answered once, in request order, with what the unary
/// Propose would have answered; refusals (the node's overload bound, an outcome that became
/// unknown, an oversized payload) are answers and the stream goes on. A server with a client's
/// stream still open shuts down (the stream ends when shutdown begins).
#[test]
fn a_propose_stream_answers_in_order_and_ends_on_shutdown() {
    use rust_raft_log::driver::{ProposeOutcome, ProposeRefused};
    within_test_timeout(async {
        let mut one = Endpoint::start(1);
        let mut inbound = one.inbound_rx.take().expect("rx");
        // Plays the event loop: proposal k (payload [k, tag]) commits at index 100 + k,
        // except tag 1 (refused: overloaded) and tag 2 (reply dropped: outcome unknown).
        // Commits are answered in reverse arrival order of each pair, so that in-order
        // answers on the stream are the server's doing.
        let core = tokio_uring::spawn(async move {
            let mut held: Option<(u64, oneshot::Sender<_>)> = None;
            while let Some(item) = inbound.recv().await {
                let Inbound::Propose { payload, reply } = item else {
                    panic!("only proposals expected");
                };
                let k = u64::from(payload[0]);
                match payload[1] {
                    1 => {
                        let _ = reply.send(Err(ProposeRefused::Overloaded { pending: 7 }));
                    }
                    2 => drop(reply),
                    _ => match held.take() {
                        None => held = Some((k, reply)),
                        Some((earlier, earlier_reply)) => {
                            let commit = |k: u64| {
                                Ok(ProposeOutcome::Committed {
                                    index: LogIndex(100 + k),
                                    term: Term(3),
                                })
                            };
                            let _ = reply.send(commit(k));
                            let _ = earlier_reply.send(commit(earlier));
                        }
                    },
                }
            }
        });
        let mut client =
            pb::operator_client::OperatorClient::connect(format!("http://{}", one.addr))
                .await
                .expect("connect");
        let (requests, requests_rx) = mpsc::channel(64);
        let mut answers = client
            .propose_stream(tokio_stream::wrappers::ReceiverStream::new(requests_rx))
            .await
            .expect("stream opened")
            .into_inner();
        // Tags: 0 commit, 1 overloaded, 2 unknown, 3 oversized.
        let tags = [0u8, 0, 1, 0, 2, 3, 0, 0, 0];
        for (k, tag) in tags.iter().enumerate() {
            let mut payload = vec![k as u8, *tag];
            if *tag == 3 {
                payload.resize(grpc::convert::ENTRY_PAYLOAD_BYTES_MAX + 1, 0);
            }
            requests
                .send(pb::ProposeRequest { payload })
                .await
                .expect("stream open");
        }
        for (k, tag) in tags.iter().enumerate() {
            let answer = answers
                .message()
                .await
                .expect("stream alive")
                .expect("one answer per proposal");
            let got = grpc::convert::decode_propose_outcome(answer);
            match (tag, got) {
                (0, Ok(ProposeOutcome::Committed { index, term })) => {
                    assert_eq!(
                        (index, term),
                        (LogIndex(100 + k as u64), Term(3)),
                        "proposal {k}: answers out of request order"
                    );
                }
                (1, Err(grpc::ConvertError::Refused { code, message })) => {
                    assert_eq!(code, tonic::Code::ResourceExhausted, "{message}");
                    assert!(message.contains("7 proposals"), "{message}");
                }
                (2, Err(grpc::ConvertError::Refused { code, message })) => {
                    assert_eq!(code, tonic::Code::Aborted, "{message}");
                    assert!(message.contains("unknown"), "{message}");
                }
                (3, Err(grpc::ConvertError::Refused { code, message })) => {
                    assert_eq!(code, tonic::Code::InvalidArgument, "{message}");
                    assert!(message.contains("above the limit"), "{message}");
                }
                (tag, got) => panic!("proposal {k} (tag {tag}): {got:?}"),
            }
        }
        // The client keeps its side open; the server must still stop (Endpoint::stop bounds
        // it at 5 s).
        one.stop().await;
        let end = answers.message().await;
        assert!(
            !matches!(end, Ok(Some(_))),
            "no answer after the last one: {end:?}"
        );
        drop(requests);
        core.await.expect("core task");
    });
}

/// Snapshot files in memory: the leader's one file, and what a follower received. The follower
/// asks the leader to resume once, after `break_at` bytes (what a broken stream leads to).
#[derive(Default)]
struct MemSnapshots {
    file: Vec<u8>,
    received: Mutex<Vec<u8>>,
    break_at: Option<u64>,
    broke: Mutex<bool>,
    /// Every offset the follower was offered, in order.
    offers: Mutex<Vec<u64>>,
    finished: Mutex<Vec<Vec<u8>>>,
    /// How long the follower takes to store each chunk (a slow disk).
    accept_delay: Option<Duration>,
}

/// A snapshot file of `len` bytes for `snap`: a valid header (voters 1, 2, 3 and learner 4),
/// then bytes of `seed`'s pattern (the transport does not look past the header).
fn snapshot_file(snap: SnapshotId, len: u32, seed: u32) -> Vec<u8> {
    let mut file = encode_header(&SnapshotMeta {
        index: snap.index,
        term: snap.term,
        cluster_id: 1,
        payload_kind: PAYLOAD_KIND_OPAQUE,
        voters: vec![NodeId(1), NodeId(2), NodeId(3)],
        learners: vec![NodeId(4)],
    });
    let head = file.len() as u32;
    file.extend((head..len).map(|i| (i.wrapping_mul(seed) >> 24) as u8));
    file
}

impl grpc::SnapshotFiles for MemSnapshots {
    /// The leader's file; on the follower (no file of its own), the last one it finished.
    fn read(&self, _snap: SnapshotId, offset: u64, max: usize) -> Result<Vec<u8>, String> {
        let finished = self.finished.lock().expect("lock");
        let file = if self.file.is_empty() {
            finished.last().map_or(&[][..], |f| &f[..])
        } else {
            &self.file[..]
        };
        let start = (offset as usize).min(file.len());
        let end = (start + max).min(file.len());
        Ok(file[start..end].to_vec())
    }

    fn accept(
        &self,
        _from: NodeId,
        _snap: SnapshotId,
        offset: u64,
        data: &[u8],
    ) -> Result<(), grpc::AcceptError> {
        self.offers.lock().expect("lock").push(offset);
        if let Some(delay) = self.accept_delay {
            std::thread::sleep(delay);
        }
        let mut received = self.received.lock().expect("lock");
        let have = received.len() as u64;
        if offset != have {
            return Err(grpc::AcceptError::ResumeAt(have));
        }
        let mut broke = self.broke.lock().expect("lock");
        if let Some(at) = self.break_at {
            if !*broke && have >= at {
                *broke = true;
                // Stands for a stream that broke here: the next stream starts from 0 again.
                return Err(grpc::AcceptError::ResumeAt(have));
            }
        }
        received.extend_from_slice(data);
        Ok(())
    }

    fn finish(&self, _from: NodeId, _snap: SnapshotId) -> Result<(), String> {
        let received = std::mem::take(&mut *self.received.lock().expect("lock"));
        self.finished.lock().expect("lock").push(received);
        Ok(())
    }
}

#[test]
fn a_snapshot_streams_in_chunks_and_a_broken_transfer_resumes_where_it_stopped() {
    within_test_timeout(async {
        // 1.3 MB: several chunks; the follower breaks the transfer once, after 600 KB.
        let snap = SnapshotId {
            index: LogIndex(1234),
            term: Term(3),
        };
        let file = snapshot_file(snap, 1_300_000, 2_654_435_761);
        let leader_files = Arc::new(MemSnapshots {
            file: file.clone(),
            ..MemSnapshots::default()
        });
        let follower_files = Arc::new(MemSnapshots {
            break_at: Some(600_000),
            ..MemSnapshots::default()
        });
        let follower_dyn: Arc<dyn grpc::SnapshotFiles> = follower_files.clone();
        let mut two =
            Endpoint::start_with(2, "127.0.0.1:0".parse().expect("addr"), Some(follower_dyn));
        let mut one = Endpoint::start(1);
        let (resp1_tx, mut resp1) = mpsc::unbounded_channel();
        let (resp2_tx, _resp2) = mpsc::unbounded_channel();
        let r1 = responder(1, one.inbound_rx.take().expect("rx"), resp1_tx);
        let r2 = responder(2, two.inbound_rx.take().expect("rx"), resp2_tx);
        let leader_dyn: Arc<dyn grpc::SnapshotFiles> = leader_files.clone();
        let peers = Peers::start(
            NodeId(1),
            &[(NodeId(2), two.addr)],
            PeerConfig {
                snapshots: Some(leader_dyn),
                ..PeerConfig::default()
            },
            one.inbound_tx.clone(),
        )
        .expect("peers");
        peers
            .send(Envelope {
                from: NodeId(1),
                to: NodeId(2),
                msg: Message::InstallSnapshot(InstallSnapshot {
                    term: Term(4),
                    leader_id: NodeId(1),
                    snapshot: snap,
                    membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)], []),
                    read_seq: 9,
                }),
            })
            .expect("queued");
        let got = next_response(&mut resp1).await;
        match got.msg {
            Message::AppendEntriesResponse(m) => {
                assert!(m.success);
                assert_eq!(m.last_log_index, snap.index);
                assert_eq!(m.read_seq, 9);
            }
            other => panic!("expected the follower's answer, got {other:?}"),
        }
        let finished = follower_files.finished.lock().expect("lock").clone();
        assert_eq!(finished.len(), 1, "finished once");
        assert!(
            finished[0] == file,
            "the follower's file differs from the leader's"
        );
        // After the break the leader resumed where the follower stopped: no byte was offered
        // twice but the one chunk the break refused, and none from 0 again.
        let offers = follower_files.offers.lock().expect("lock").clone();
        let chunk = grpc::snapshot::CHUNK_BYTES as u64;
        assert!(
            offers.windows(2).all(|w| w[1] >= w[0]),
            "offers went back: {offers:?}"
        );
        let total: u64 = offers.len() as u64;
        assert!(
            total <= (file.len() as u64).div_ceil(chunk) + 2,
            "{total} chunks offered for a {}-byte file: {offers:?}",
            file.len()
        );
        peers.shutdown();
        one.stop().await;
        two.stop().await;
        r1.abort();
        r2.abort();
    });
}

/// hashicorp/raft#212 and etcd#3292: a transfer that takes longer than a timeout must not be
/// abandoned and restarted forever. Here the follower stores each 256 KiB chunk in 150 ms, so
/// the whole 1.3 MB takes about 0.9 s against an RPC timeout of 300 ms: it completes in one
/// stream, every chunk offered once, and the follower's answer comes back.
#[test]
fn a_transfer_longer_than_the_rpc_timeout_completes_without_starting_over() {
    within_test_timeout(async {
        let snap = SnapshotId {
            index: LogIndex(77),
            term: Term(2),
        };
        let file = snapshot_file(snap, 1_300_000, 2_246_822_519);
        let leader_files = Arc::new(MemSnapshots {
            file: file.clone(),
            ..MemSnapshots::default()
        });
        let follower_files = Arc::new(MemSnapshots {
            accept_delay: Some(Duration::from_millis(150)),
            ..MemSnapshots::default()
        });
        let follower_dyn: Arc<dyn grpc::SnapshotFiles> = follower_files.clone();
        let mut two =
            Endpoint::start_with(2, "127.0.0.1:0".parse().expect("addr"), Some(follower_dyn));
        let mut one = Endpoint::start(1);
        let (resp1_tx, mut resp1) = mpsc::unbounded_channel();
        let (resp2_tx, _resp2) = mpsc::unbounded_channel();
        let r1 = responder(1, one.inbound_rx.take().expect("rx"), resp1_tx);
        let r2 = responder(2, two.inbound_rx.take().expect("rx"), resp2_tx);
        let leader_dyn: Arc<dyn grpc::SnapshotFiles> = leader_files.clone();
        let rpc_timeout = Duration::from_millis(300);
        let peers = Peers::start(
            NodeId(1),
            &[(NodeId(2), two.addr)],
            PeerConfig {
                snapshots: Some(leader_dyn),
                rpc_timeout,
                ..PeerConfig::default()
            },
            one.inbound_tx.clone(),
        )
        .expect("peers");
        let started = std::time::Instant::now();
        peers
            .send(Envelope {
                from: NodeId(1),
                to: NodeId(2),
                msg: Message::InstallSnapshot(InstallSnapshot {
                    term: Term(2),
                    leader_id: NodeId(1),
                    snapshot: snap,
                    membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)], []),
                    read_seq: 1,
                }),
            })
            .expect("queued");
        let got = next_response(&mut resp1).await;
        let took = started.elapsed();
        match got.msg {
            Message::AppendEntriesResponse(m) => {
                assert!(m.success);
                assert_eq!(m.last_log_index, snap.index);
            }
            other => panic!("expected the follower's answer, got {other:?}"),
        }
        assert!(
            took > 2 * rpc_timeout,
            "the transfer took {took:?}: not longer than the timeout, the test proves nothing"
        );
        let finished = follower_files.finished.lock().expect("lock").clone();
        assert_eq!(finished.len(), 1, "finished once");
        assert!(finished[0] == file, "the follower's file differs");
        let offers = follower_files.offers.lock().expect("lock").clone();
        // Every chunk offered once, then the empty last one at the end of the file.
        let chunk = grpc::snapshot::CHUNK_BYTES as u64;
        let expected: Vec<u64> = (0..(file.len() as u64).div_ceil(chunk))
            .map(|k| k * chunk)
            .chain([file.len() as u64])
            .collect();
        assert_eq!(offers, expected, "a chunk was offered again");
        peers.shutdown();
        one.stop().await;
        two.stop().await;
        r1.abort();
        r2.abort();
    });
}
