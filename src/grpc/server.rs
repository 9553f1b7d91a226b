//! The tonic server: the `Raft` and `Operator` services on one listener.
//!
//! Handlers hold no node state. Each RPC is decoded ([`crate::grpc::convert`]), wrapped in an
//! [`Inbound`] with a oneshot for the answer, and handed over a bounded mpsc channel to the task that
//! owns the core and the log (tokio-uring futures are not `Send`, so a tonic handler can never touch
//! them itself). The handler then waits for the answer:
//! - the node answers through the oneshot: the handler encodes and returns it;
//! - the node drops the oneshot (a stale request the core ignored, a proposal whose outcome became
//!   unknown, shutdown): the handler returns an error status, never a made-up answer.
//!
//! Sending into the channel awaits when it is full, so an overloaded node pushes back on HTTP/2
//! flow control instead of growing a queue without bound.
//!
//! `AppendEntriesStream` does the same per message of a leader's long-lived stream: one task reads
//! requests and hands them to the loop (at most `STREAM_PENDING_MAX` waiting for answers),
//! another sends the answers in request order, a `declined` marker where the loop dropped the
//! oneshot. The streams end when the server begins its graceful shutdown (which would otherwise
//! wait for them forever).
//!
//! `ProposeStream` is the Operator's Propose for clients that multiplex many proposals over one
//! stream: the same two-task shape (at most `PROPOSE_STREAM_PENDING_MAX` unanswered), answers in
//! request order, and a refusal that the unary call would have returned as a status (oversized
//! payload, overload, outcome unknown) is an answer of its own, so the stream goes on. Per
//! proposal this costs one DATA frame each way instead of a whole HTTP/2 request; at 128 closed-loop
//! proposers the unary calls' HTTP/2 and tower work, not the log, is most of the leader's CPU
//! (`cargo bench --bench propose`, BENCHMARKS.md).

use std::future::Future;
use std::net::SocketAddr;

use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use crate::driver::{Inbound, ProposeOutcome, ProposeRefused};
use crate::grpc::authority::AuthorityRepair;
use crate::grpc::convert::{self, Limits};
use crate::grpc::front::PathFilter;
use crate::grpc::gate::{Admitted, Sender};
use crate::grpc::proto as pb;
use crate::grpc::GrpcError;
use crate::raft::message::Envelope;
use crate::types::NodeId;

/// What the services need to know about the node they front.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub local_id: NodeId,
    pub limits: Limits,
    /// Where received snapshots go; `None`: InstallSnapshot is answered UNIMPLEMENTED.
    pub snapshots: Option<std::sync::Arc<dyn crate::grpc::snapshot::SnapshotFiles>>,
    /// Who may send Raft messages ([`crate::grpc::gate`]); `None`: anyone (in-process tests and
    /// embedders that built the transport themselves).
    pub gate: Option<std::sync::Arc<crate::grpc::gate::PeerGate>>,
    /// TLS on the listener ([`crate::grpc::tls`]); `None`: plaintext.
    pub tls: Option<std::sync::Arc<crate::grpc::tls::NodeTls>>,
}

impl ServerConfig {
    /// The largest gRPC message the server accepts: the payload bound plus the per-entry framing
    /// (term, index, type, length prefixes: under 32 bytes each) plus slack for the header fields.
    pub fn max_decoding_message_bytes(&self) -> usize {
        let framing = self.limits.entries_per_message_max.saturating_mul(32);
        (self.limits.message_payload_bytes_max as usize)
            .saturating_add(framing)
            .saturating_add(4096)
    }
}

/// Binds the node's listening socket.
///
/// # Errors
/// [`GrpcError::Bind`], whose message for a port in use is the seed's:
/// `Failed to bind to 127.0.0.1:18001 - address already in use`.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, GrpcError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| GrpcError::Bind { addr, source })?;
    // tokio requires a non-blocking socket.
    listener
        .set_nonblocking(true)
        .map_err(|source| GrpcError::Bind { addr, source })?;
    Ok(listener)
}

/// Serves both services on `listener` until `shutdown` completes, then stops accepting and lets
/// in-flight RPCs finish. Must run inside a tokio (or tokio-uring) runtime.
///
/// # Errors
/// [`GrpcError::Serve`] if the listener cannot be registered or the server fails.
pub async fn serve<R: Send + 'static>(
    listener: std::net::TcpListener,
    config: ServerConfig,
    inbound: mpsc::Sender<Inbound<R>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GrpcError> {
    serve_with(
        listener,
        config,
        inbound,
        tonic::service::RoutesBuilder::default(),
        axum::Router::new(),
        PathFilter::RAFT_ONLY,
        shutdown,
    )
    .await
}

/// [`serve`] plus the services in `extra` (the etcd API) and the plain HTTP routes in `http` (etcd's
/// JSON gateway, HTTP/1.1 or 2) on the same listener. Every connection
/// goes through [`AuthorityRepair`] (etcdctl's URL-valued `:authority`), and every path `filter`
/// does not serve is answered UNIMPLEMENTED with a message naming it.
///
/// # Errors
/// [`GrpcError::Serve`] if the listener cannot be registered or the server fails.
pub async fn serve_with<R: Send + 'static>(
    listener: std::net::TcpListener,
    config: ServerConfig,
    inbound: mpsc::Sender<Inbound<R>>,
    mut extra: tonic::service::RoutesBuilder,
    http: axum::Router,
    filter: PathFilter,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GrpcError> {
    use tokio_stream::StreamExt;

    let local_addr = listener.local_addr().map_err(GrpcError::Serve)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(GrpcError::Serve)?;
    // The repair parses HTTP/2, so it wraps the decrypted stream: the accept side does the TLS
    // handshake itself (crate::grpc::tls), before tonic sees the connection.
    let incoming = crate::grpc::tls::incoming(listener, config.tls.clone())
        .map(|stream| stream.map(AuthorityRepair::new));
    let max_bytes = config.max_decoding_message_bytes();
    let policy = crate::grpc::front::TlsPolicy {
        tls: config.tls.is_some(),
        client_cert: config
            .tls
            .as_ref()
            .is_some_and(|t| t.requires_client_cert()),
    };
    // Graceful shutdown waits for every open stream to finish, and a leader's AppendEntries
    // stream never finishes by itself: the streams end (cleanly, after the answers already due)
    // when shutdown begins.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    let raft = pb::raft_server::RaftServer::new(RaftService {
        config: config.clone(),
        inbound: inbound.clone(),
        stopping: stopping.clone(),
    })
    .max_decoding_message_size(max_bytes);
    let operator = pb::operator_server::OperatorServer::new(OperatorService {
        config,
        inbound,
        stopping,
    })
    .max_decoding_message_size(max_bytes);
    extra.add_service(raft).add_service(operator);
    let router = extra
        .routes()
        .into_axum_router()
        .merge(http)
        .layer(crate::grpc::front::FrontLayer { policy, filter });
    tracing::debug!(%local_addr, "gRPC server accepting");
    tonic::transport::Server::builder()
        // HTTP/1.1 for the JSON gateway's clients (curl, Patroni); gRPC stays HTTP/2.
        .accept_http1(true)
        // A leader's AppendEntries stream outlives any single request: if its host goes away
        // without a FIN (a partition, a power loss), keepalive pings notice within ~3 s and the
        // stream's tasks end, instead of waiting for TCP's own timeouts (hours).
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(2)))
        .add_routes(tonic::service::Routes::from(router))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| GrpcError::Serve(std::io::Error::other(e)))
}

/// The peer-facing service. `R`: the state machine's response type (the mailbox's).
#[derive(Debug)]
pub struct RaftService<R> {
    config: ServerConfig,
    inbound: mpsc::Sender<Inbound<R>>,
    /// Becomes `true` when the server begins to shut down: AppendEntries streams end.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl<R> Clone for RaftService<R> {
    fn clone(&self) -> Self {
        RaftService {
            config: self.config.clone(),
            inbound: self.inbound.clone(),
            stopping: self.stopping.clone(),
        }
    }
}

impl<R: Send + 'static> RaftService<R> {
    /// The gate's checks at the start of an RPC (`None`: no gate configured).
    fn admit<T>(&self, request: &Request<T>) -> Result<Option<Admitted>, Status> {
        match &self.config.gate {
            None => Ok(None),
            Some(gate) => gate.admit(request).map(Some),
        }
    }

    /// The gate's per-message check of the claimed sender.
    fn check_sender(&self, admitted: Option<&Admitted>, envelope: &Envelope) -> Result<(), Status> {
        match (&self.config.gate, admitted) {
            (Some(gate), Some(admitted)) => {
                gate.check_sender(admitted, envelope.from, envelope.msg.term().0)
            }
            _ => Ok(()),
        }
    }

    /// Refuses a message meant for another node: a peer with a stale view of who listens here
    /// must not have the core process a message meant for another server.
    fn check_route(&self, envelope: &Envelope) -> Result<(), Status> {
        if envelope.to == self.config.local_id {
            return Ok(());
        }
        Err(Status::failed_precondition(format!(
            "message for node {} reached node {}",
            envelope.to, self.config.local_id
        )))
    }

    /// Decodes an AppendEntries (unary or streamed) and checks its route and sender.
    fn decode_append(
        &self,
        admitted: Option<&Admitted>,
        request: pb::AppendEntriesRequest,
    ) -> Result<Envelope, Status> {
        let envelope =
            convert::decode_append_entries(request, &self.config.limits).map_err(invalid)?;
        self.check_sender(admitted, &envelope)?;
        self.check_route(&envelope)?;
        if let crate::raft::message::Message::AppendEntries(m) = &envelope.msg {
            if let Some(last) = m.entries.last() {
                crate::timeline::mark("f_rpc_in", last.index.0);
            }
        }
        Ok(envelope)
    }

    /// Hands a decoded request to the node and waits for its response envelope.
    /// The caller has checked its route ([`RaftService::check_route`]).
    async fn exchange(&self, envelope: Envelope) -> Result<Envelope, Status> {
        ask(
            &self.inbound,
            |reply| Inbound::Request { envelope, reply },
            || Status::aborted("the node declined to answer this request"),
        )
        .await
    }
}

/// Hands the item `make` builds around a fresh oneshot to the event loop and waits for the answer.
/// `dropped` is the status when the loop drops the oneshot instead of answering.
async fn ask<T, R>(
    inbound: &mpsc::Sender<Inbound<R>>,
    make: impl FnOnce(oneshot::Sender<T>) -> Inbound<R>,
    dropped: impl FnOnce() -> Status,
) -> Result<T, Status> {
    let (reply, answer) = oneshot::channel();
    inbound
        .send(make(reply))
        .await
        .map_err(|_| Status::unavailable("node is shutting down"))?;
    answer.await.map_err(|_| dropped())
}

fn invalid(e: convert::ConvertError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn wrong_kind(expected: &str, got: &convert::WireMessage) -> Status {
    // A bug in the event loop, not in the peer: log it loudly, answer with INTERNAL.
    tracing::error!(
        ?got,
        "event loop answered a {expected} with the wrong message kind"
    );
    Status::internal(format!(
        "event loop answered a {expected} with another kind"
    ))
}

/// Reads a long-lived request stream and queues, in request order, the item each request's
/// answer will come from (`take`), for [`answer_in_order`]. `take` failing ends the stream with
/// its status, after the answers to the requests before it (`fail` makes that item). The reading
/// stops without an error item when the client closes its side, when the answer side is gone,
/// or when the server begins to shut down (graceful shutdown would otherwise wait for the stream
/// forever); the answers already due still go out.
async fn read_in_order<R, I, T>(
    mut requests: tonic::Streaming<R>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    pending: mpsc::Sender<I>,
    fail: fn(Status) -> I,
    mut take: impl FnMut(R) -> T,
) where
    T: Future<Output = Result<I, Status>>,
{
    let failure = loop {
        let message = tokio::select! {
            m = requests.message() => m,
            _ = stopping.wait_for(|stop| *stop) => Ok(None),
        };
        let request = match message {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(status) => break status,
        };
        let item = match take(request).await {
            Ok(item) => item,
            Err(status) => break status,
        };
        if pending.send(item).await.is_err() {
            return;
        }
    };
    let _ = pending.send(fail(failure)).await;
}

/// Sends the answer to each pending item of a stream, in order; an `Err` ends the stream after
/// the answers before it. Stops early when the client is gone.
async fn answer_in_order<I, M, A>(
    mut pending: mpsc::Receiver<I>,
    out: mpsc::Sender<Result<M, Status>>,
    answer: impl Fn(I) -> A,
) where
    A: Future<Output = Result<M, Status>>,
{
    while let Some(item) = pending.recv().await {
        let response = answer(item).await;
        let last = response.is_err();
        if out.send(response).await.is_err() || last {
            return;
        }
    }
}

/// Requests of one AppendEntries stream that may wait for their answers at once; the stream stops
/// reading (and HTTP/2 flow control holds the leader back) while this many are unanswered.
const STREAM_PENDING_MAX: usize = 64;

/// One request of an AppendEntries stream on its way to the answer, in request order.
enum StreamItem {
    /// Handed to the node: answered through the oneshot, or declined if it is dropped.
    Asked {
        from: NodeId,
        answer: oneshot::Receiver<Envelope>,
    },
    /// The stream ends here with this status (after the answers to earlier requests).
    Fail(Status),
}

impl<R: Send + 'static> RaftService<R> {
    /// Reads the requests of one AppendEntries stream, hands each to the node, and queues the
    /// pending answers in order for [`RaftService::stream_answers`]. When the stream ends (the
    /// leader closed its side, or this server is shutting down and the leader will open a new
    /// one to wherever this node comes back), the answers still pending go out first.
    async fn stream_requests(
        self,
        admitted: Option<Admitted>,
        requests: tonic::Streaming<pb::AppendEntriesRequest>,
        pending: mpsc::Sender<StreamItem>,
    ) {
        let this = &self;
        read_in_order(
            requests,
            self.stopping.clone(),
            pending,
            StreamItem::Fail,
            |request| async move {
                let envelope = this.decode_append(admitted.as_ref(), request)?;
                let from = envelope.from;
                let (reply, answer) = oneshot::channel();
                this.inbound
                    .send(Inbound::Request { envelope, reply })
                    .await
                    .map_err(|_| Status::unavailable("node is shutting down"))?;
                Ok(StreamItem::Asked { from, answer })
            },
        )
        .await;
    }

    /// Sends the answers of one AppendEntries stream in request order.
    async fn stream_answers(
        local_id: NodeId,
        pending: mpsc::Receiver<StreamItem>,
        out: mpsc::Sender<Result<pb::AppendEntriesResponse, Status>>,
    ) {
        answer_in_order(pending, out, |item| async move {
            match item {
                StreamItem::Asked { from, answer } => match answer.await {
                    Ok(envelope) => match convert::encode_envelope(envelope) {
                        convert::WireMessage::AppendEntriesResponse(m) => Ok(m),
                        other => Err(wrong_kind("AppendEntries", &other)),
                    },
                    Err(_) => Ok(convert::declined_append_entries_response(local_id, from)),
                },
                StreamItem::Fail(status) => Err(status),
            }
        })
        .await;
    }
}

#[tonic::async_trait]
impl<R: Send + 'static> pb::raft_server::Raft for RaftService<R> {
    type AppendEntriesStreamStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<pb::AppendEntriesResponse, Status>>
                + Send
                + 'static,
        >,
    >;

    async fn append_entries_stream(
        &self,
        request: Request<tonic::Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<Response<Self::AppendEntriesStreamStream>, Status> {
        let admitted = self.admit(&request)?;
        let (pending_tx, pending_rx) = mpsc::channel(STREAM_PENDING_MAX);
        let (out_tx, out_rx) = mpsc::channel(STREAM_PENDING_MAX);
        // Two tasks, so that reading the next request never waits for an earlier answer (the
        // follower's fdatasync): the requests of a pipelined leader reach the core at once.
        tokio::spawn(
            self.clone()
                .stream_requests(admitted, request.into_inner(), pending_tx),
        );
        tokio::spawn(Self::stream_answers(
            self.config.local_id,
            pending_rx,
            out_tx,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out_rx),
        )))
    }

    async fn request_vote(
        &self,
        request: Request<pb::RequestVoteRequest>,
    ) -> Result<Response<pb::RequestVoteResponse>, Status> {
        let admitted = self.admit(&request)?;
        let envelope = convert::decode_request_vote(request.into_inner()).map_err(invalid)?;
        // Votes pass from outside the configuration too (crate::grpc::gate, module docs): the
        // core answers them, and the answer tells an outsider that it is one.
        let sender = match (&self.config.gate, admitted.as_ref()) {
            (Some(gate), Some(admitted)) => gate.check_vote_sender(admitted, envelope.from)?,
            _ => Sender::Member,
        };
        self.check_route(&envelope)?;
        let candidate = envelope.from;
        let answer = match (self.exchange(envelope).await, &self.config.gate) {
            (Ok(answer), _) => answer,
            // The core declined (a higher-term vote request within its leader lease): nothing
            // moved here. An outsider is told what the gate used to tell it, so a removed node
            // that campaigns against a healthy cluster still learns that it was removed.
            (Err(status), Some(gate))
                if sender == Sender::Outsider && status.code() == tonic::Code::Aborted =>
            {
                return Err(gate.not_a_member(candidate));
            }
            (Err(status), _) => return Err(status),
        };
        match convert::encode_envelope(answer) {
            convert::WireMessage::RequestVoteResponse(mut m) => {
                m.sender_not_member = sender == Sender::Outsider;
                if let (Some(gate), true) = (&self.config.gate, m.sender_not_member) {
                    if m.vote_granted && !m.pre_vote {
                        // It may win this term: its AppendEntries must reach the core.
                        gate.vote_granted(candidate, m.term);
                    }
                }
                Ok(Response::new(m))
            }
            other => Err(wrong_kind("RequestVote", &other)),
        }
    }

    /// Answers whether the sender is a member of the configuration in effect here (see
    /// proto/raft.proto); the core is not involved.
    async fn membership_probe(
        &self,
        request: Request<pb::MembershipProbeRequest>,
    ) -> Result<Response<pb::MembershipProbeResponse>, Status> {
        let admitted = self.admit(&request)?;
        let (from, to) = convert::unroute(request.into_inner().route, "MembershipProbeRequest")
            .map_err(invalid)?;
        if to != self.config.local_id {
            return Err(Status::failed_precondition(format!(
                "message for node {to} reached node {}",
                self.config.local_id
            )));
        }
        let member = match (&self.config.gate, admitted.as_ref()) {
            (Some(gate), Some(admitted)) => gate.probe_answer(admitted, from)?,
            // Without a gate this node does not track who is a member: it says nothing.
            _ => {
                return Err(Status::unimplemented(
                    "this node has no peer gate and answers no membership probes",
                ))
            }
        };
        Ok(Response::new(pb::MembershipProbeResponse {
            route: Some(pb::Route {
                from: to.0,
                to: from.0,
            }),
            member,
        }))
    }

    /// Thesis §3.10: hands the leader's TimeoutNow to the event loop and answers at once; the
    /// election it starts is the real answer.
    async fn timeout_now(
        &self,
        request: Request<pb::TimeoutNowRequest>,
    ) -> Result<Response<pb::TimeoutNowResponse>, Status> {
        let admitted = self.admit(&request)?;
        let envelope = convert::decode_timeout_now(request.into_inner()).map_err(invalid)?;
        self.check_sender(admitted.as_ref(), &envelope)?;
        self.check_route(&envelope)?;
        let route = Some(pb::Route {
            from: envelope.to.0,
            to: envelope.from.0,
        });
        // The core never answers a TimeoutNow: the reply handle is dropped unread.
        let (reply, _unanswered) = oneshot::channel();
        self.inbound
            .send(Inbound::Request { envelope, reply })
            .await
            .map_err(|_| Status::unavailable("node is shutting down"))?;
        Ok(Response::new(pb::TimeoutNowResponse { route }))
    }

    async fn install_snapshot(
        &self,
        request: Request<tonic::Streaming<pb::InstallSnapshotChunk>>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        let admitted = self.admit(&request)?;
        let Some(files) = self.config.snapshots.clone() else {
            return Err(Status::unimplemented(
                "this node does not take snapshots over InstallSnapshot",
            ));
        };
        let local = self.config.local_id;
        let route = |from: NodeId| {
            Some(pb::Route {
                from: local.0,
                to: from.0,
            })
        };
        let envelope =
            match crate::grpc::snapshot::receive(local, files, request.into_inner()).await? {
                crate::grpc::snapshot::Received::ResumeAt(at) => {
                    return Ok(Response::new(pb::InstallSnapshotResponse {
                        route: None,
                        outcome: Some(pb::install_snapshot_response::Outcome::ResumeOffset(at)),
                    }))
                }
                crate::grpc::snapshot::Received::Complete(envelope) => envelope,
            };
        let from = envelope.from;
        self.check_sender(admitted.as_ref(), &envelope)?;
        let answer = self.exchange(envelope).await?;
        match convert::encode_envelope(answer) {
            convert::WireMessage::AppendEntriesResponse(m) => {
                Ok(Response::new(pb::InstallSnapshotResponse {
                    route: route(from),
                    outcome: Some(pb::install_snapshot_response::Outcome::Answer(m)),
                }))
            }
            other => Err(wrong_kind("InstallSnapshot", &other)),
        }
    }

    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let admitted = self.admit(&request)?;
        let envelope = self.decode_append(admitted.as_ref(), request.into_inner())?;
        let answer = self.exchange(envelope).await?;
        match convert::encode_envelope(answer) {
            convert::WireMessage::AppendEntriesResponse(m) => Ok(Response::new(m)),
            other => Err(wrong_kind("AppendEntries", &other)),
        }
    }
}

/// The operator-facing service.
#[derive(Debug)]
pub struct OperatorService<R> {
    config: ServerConfig,
    inbound: mpsc::Sender<Inbound<R>>,
    /// Becomes `true` when the server begins to shut down: ProposeStreams end.
    stopping: tokio::sync::watch::Receiver<bool>,
}

/// Proposals of one ProposeStream that may wait for their outcome at once; the stream stops
/// reading (and HTTP/2 flow control holds the client back) while this many are unanswered. The
/// node's own bound on pending proposals still applies (RESOURCE_EXHAUSTED refusals).
const PROPOSE_STREAM_PENDING_MAX: usize = 1024;

/// What the event loop answers a proposal with.
type ProposeAnswer = oneshot::Receiver<Result<ProposeOutcome, ProposeRefused>>;

/// One proposal of a ProposeStream on its way to its answer, in request order.
enum ProposeItem {
    /// Handed to the node.
    Asked(ProposeAnswer),
    /// Refused before it reached the node (the unary call's error status).
    Refused(Status),
    /// The stream ends here with this status (after the answers to earlier proposals).
    Fail(Status),
}

impl<R> Clone for OperatorService<R> {
    fn clone(&self) -> Self {
        OperatorService {
            config: self.config.clone(),
            inbound: self.inbound.clone(),
            stopping: self.stopping.clone(),
        }
    }
}

impl<R: Send + 'static> OperatorService<R> {
    /// Checks a proposal and hands it to the node; the receiver resolves to its outcome.
    async fn start_proposal(&self, payload: Vec<u8>) -> Result<ProposeAnswer, Status> {
        crate::timeline::mark("propose_rpc_in", 0);
        let max = self.config.limits.entry_payload_bytes_max;
        if payload.len() > max {
            return Err(Status::invalid_argument(format!(
                "payload of {} bytes is above the limit of {max}",
                payload.len()
            )));
        }
        let (reply, answer) = oneshot::channel();
        self.inbound
            .send(Inbound::Propose { payload, reply })
            .await
            .map_err(|_| Status::unavailable("node is shutting down"))?;
        Ok(answer)
    }

    /// The answer to a proposal, as the unary Propose returns it.
    async fn finish_proposal(answer: ProposeAnswer) -> Result<pb::ProposeResponse, Status> {
        let outcome = answer.await.map_err(|_| {
            Status::aborted(
                "the proposal's outcome is unknown (leadership changed or the node stopped \
                 before it committed)",
            )
        })?;
        match outcome {
            Ok(outcome) => {
                if let ProposeOutcome::Committed { index, .. } = &outcome {
                    crate::timeline::mark("propose_rpc_out", index.0);
                }
                Ok(convert::encode_propose_outcome(outcome))
            }
            Err(refused @ (ProposeRefused::Overloaded { .. } | ProposeRefused::NoSpace { .. })) => {
                Err(Status::resource_exhausted(refused.to_string()))
            }
            Err(refused @ ProposeRefused::TooLarge { .. }) => {
                Err(Status::invalid_argument(refused.to_string()))
            }
            // Nothing was appended; the operator may retry shortly (here or at the new leader).
            Err(refused @ ProposeRefused::Transferring { .. }) => {
                Err(Status::unavailable(refused.to_string()))
            }
        }
    }

    /// Reads the proposals of one ProposeStream, hands each to the node, and queues the pending
    /// answers in order for [`OperatorService::stream_outcomes`]. A proposal the unary call would
    /// refuse becomes a refusal answer; only a node that no longer takes proposals ends the
    /// stream (UNAVAILABLE).
    async fn stream_proposals(
        self,
        requests: tonic::Streaming<pb::ProposeRequest>,
        pending: mpsc::Sender<ProposeItem>,
    ) {
        let this = &self;
        read_in_order(
            requests,
            self.stopping.clone(),
            pending,
            ProposeItem::Fail,
            |request| async move {
                match this.start_proposal(request.payload).await {
                    Ok(answer) => Ok(ProposeItem::Asked(answer)),
                    Err(status) if status.code() == tonic::Code::Unavailable => Err(status),
                    Err(status) => Ok(ProposeItem::Refused(status)),
                }
            },
        )
        .await;
    }

    /// Sends the answers of one ProposeStream in request order.
    async fn stream_outcomes(
        pending: mpsc::Receiver<ProposeItem>,
        out: mpsc::Sender<Result<pb::ProposeResponse, Status>>,
    ) {
        answer_in_order(pending, out, |item| async move {
            match item {
                ProposeItem::Asked(answer) => match Self::finish_proposal(answer).await {
                    Ok(m) => Ok(m),
                    Err(status) => Ok(convert::encode_propose_refused(&status)),
                },
                ProposeItem::Refused(status) => Ok(convert::encode_propose_refused(&status)),
                ProposeItem::Fail(status) => Err(status),
            }
        })
        .await;
    }
}

#[tonic::async_trait]
impl<R: Send + 'static> pb::operator_server::Operator for OperatorService<R> {
    async fn propose(
        &self,
        request: Request<pb::ProposeRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        let answer = self.start_proposal(request.into_inner().payload).await?;
        Self::finish_proposal(answer).await.map(Response::new)
    }

    type ProposeStreamStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::ProposeResponse, Status>> + Send + 'static>,
    >;

    async fn propose_stream(
        &self,
        request: Request<tonic::Streaming<pb::ProposeRequest>>,
    ) -> Result<Response<Self::ProposeStreamStream>, Status> {
        let (pending_tx, pending_rx) = mpsc::channel(PROPOSE_STREAM_PENDING_MAX);
        let (out_tx, out_rx) = mpsc::channel(PROPOSE_STREAM_PENDING_MAX);
        // Two tasks, so that reading the next proposal never waits for an earlier one's commit.
        tokio::spawn(
            self.clone()
                .stream_proposals(request.into_inner(), pending_tx),
        );
        tokio::spawn(Self::stream_outcomes(pending_rx, out_tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out_rx),
        )))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let status = ask(
            &self.inbound,
            |reply| Inbound::Status { reply },
            || Status::unavailable("node is shutting down"),
        )
        .await?;
        Ok(Response::new(convert::encode_status(status)))
    }
}
