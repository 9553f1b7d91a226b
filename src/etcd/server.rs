//! The etcd v3 services a node serves: `KV` (Range, Put, DeleteRange, Txn, Compact),
//! `Maintenance` (Status, HashKV, Snapshot) and `Cluster.MemberList`, on the node's own gRPC
//! server, and the routing every etcd handler shares (`Lease` lives in [`super::lease`] and uses
//! the same proposals, reads and forwarding).
//!
//! Handlers hold no consensus state; like the Raft and Operator handlers they talk to the event
//! loop through `Inbound` items (the driver's mailbox):
//! - **Writes** (Put, DeleteRange, Txn, Compact): [`validate`] with etcd's limits and texts (a
//!   refused request is never proposed), then `Inbound::Command` with the encoded command; the
//!   answer comes once the entry is applied, carrying the store's response (a
//!   [`KvResponse`] value, handed over on the node's thread). Every Txn goes through the log,
//!   read-only ones included.
//! - **Reads** (Range): `Inbound::Read`. Linearizable by default: the loop grants the read once
//!   this node, as leader, has confirmed its leadership after the read arrived (ReadIndex, thesis
//!   §6.4) and applied up to the read index; then the handler reads the shared [`KvStore`].
//!   `serializable: true` is granted at once on any node (possibly stale, as in etcd).
//! - **On a follower**, writes and linearizable reads are forwarded to the leader over a cached
//!   tonic channel, marked with [`FORWARDED_HEADER`]; a forwarded request that reaches a node
//!   which is not the leader either (leadership moved meanwhile) is not forwarded again but
//!   answered with a retryable status.
//! - **During an election** a request is held, not failed: while this node knows no leader, while
//!   the leader it forwards to cannot be connected to (nothing was sent), and when a node it
//!   forwarded to answers that it is not the leader (marked [`NOT_PROPOSED_HEADER`]: nothing was
//!   proposed there), the handler waits [`RETRY_PAUSE`] and tries again, until a leader answers
//!   or the request's [`REQUEST_TIMEOUT`] runs out (then the last refusal is the answer). Reads
//!   are also tried again after any transport failure towards the leader; a write whose
//!   forwarded request may have reached the leader never is (it could be applied twice), and is
//!   answered with the failure.
//!
//! Errors clients retry on: etcd's clientv3 retries `Unavailable` (immutable requests always,
//! mutable ones when nothing was sent). So every "try again" answer is `Unavailable` with etcd's
//! text: "etcdserver: no leader", "etcdserver: leader changed", "etcdserver: request timed out"
//! (and "..., possibly due to previous leader failure" when the outcome is unknown), and
//! "etcdserver: too many requests" for an overloaded node (etcd sends that one as
//! `ResourceExhausted`; see docs/ETCD_COMPAT.md). A write to a leader whose disk is full is
//! refused with etcd's NOSPACE text, "etcdserver: mvcc: database space exceeded"
//! (`ResourceExhausted`, not retried by clients); reads keep working.
//!
//! Response headers: `cluster_id` and `member_id` from [`Members`] (this node's id, also on
//! forwarded answers), `raft_term` the node's current term, `revision` the store's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::driver::{Applied, CommandRefused, NodeStatus, ReadGrant, ReadRefused, SnapshotRefused};
use crate::etcd::members::Members;
use crate::etcdpb::etcdserverpb::{
    self as pb, cluster_client::ClusterClient, kv_client::KvClient,
    maintenance_client::MaintenanceClient, request_op, response_op, RequestOp, ResponseHeader,
};
use crate::kv::{self, encode_command, encode_compact, validate, KvLimits, KvResponse, KvStore};
use crate::raft::{Role, TransferError};
use crate::storage::sha256::Sha256;
use crate::storage::snapshot::{saved_padding_bytes, saved_suffix_bytes};
use crate::types::{NodeId, Term};

/// Metadata key marking a request a follower forwarded to the leader (never forwarded twice).
pub const FORWARDED_HEADER: &str = "x-raftlog-forwarded";
/// Metadata key on a refusal of a forwarded request that says nothing was proposed or read
/// there (the node was not the leader), so the forwarding node may try again.
pub const NOT_PROPOSED_HEADER: &str = "x-raftlog-not-proposed";
/// How long a request held during an election waits before it asks again whether a leader is
/// known (a few per election: elections take 150-500 ms with the default timeouts).
pub const RETRY_PAUSE: Duration = Duration::from_millis(15);
/// How long a request may wait for its commit or read grant before it is answered with etcd's
/// "request timed out" (etcd: 5 s plus two election timeouts by default).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);
/// The etcd API version this node speaks, reported by `Maintenance.Status`.
pub const ETCD_VERSION: &str = "3.4.0";
/// How long `Maintenance.Snapshot` waits for the snapshot file (the one being written, then a
/// fresh one): writing a large store takes longer than a request.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);
/// File bytes per `SnapshotResponse` (well under gRPC's usual 4 MiB message limit).
pub const SNAPSHOT_BLOB_BYTES: usize = 1 << 20;
/// `SnapshotResponse`s read ahead of the client.
const SNAPSHOT_BLOBS_QUEUED: usize = 2;

pub(super) const NO_LEADER: &str = "etcdserver: no leader";
pub(super) const LEADER_CHANGED: &str = "etcdserver: leader changed";
const TIMED_OUT: &str = "etcdserver: request timed out";
pub(super) const OUTCOME_UNKNOWN: &str =
    "etcdserver: request timed out, possibly due to previous leader failure";
pub(super) const TOO_MANY_REQUESTS: &str = "etcdserver: too many requests";
/// etcd's `Maintenance.MoveLeader` refusals and timeout (rpctypes `ErrGRPCNotLeader`,
/// `ErrGRPCBadLeaderTransferee`, etcdserver `ErrTimeoutLeaderTransfer`).
pub(super) const NOT_LEADER: &str = "etcdserver: not leader";
const BAD_LEADER_TRANSFEREE: &str = "etcdserver: bad leader transferee";
const LEADER_TRANSFER_TIMED_OUT: &str =
    "etcdserver: request timed out, leader transfer took too long";
/// etcd's text for a write refused while the NOSPACE alarm is raised (`ErrGRPCNoSpace`, sent as
/// `ResourceExhausted`): here, while the leader's log waits for space on a full disk.
pub const DATABASE_SPACE_EXCEEDED: &str = "etcdserver: mvcc: database space exceeded";

/// The mailbox of a node whose state machine is the key-value store.
type Inbound = crate::driver::Inbound<KvResponse>;

/// The key-value store shared by the event loop (which applies to it) and the handlers (which
/// read it after a grant). One thread runs both, so the lock is never contended; it exists
/// because tonic handlers must be `Send`.
pub type SharedStore = Arc<Mutex<KvStore>>;

pub(super) fn lock(store: &SharedStore) -> MutexGuard<'_, KvStore> {
    // A panic while holding the lock is a bug that already stopped the node's loop; the data is
    // still the last consistent state (apply is all-or-nothing), so reading it is fine.
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What every etcd handler shares.
#[derive(Clone)]
pub struct EtcdApi {
    inner: Arc<Inner>,
}

struct Inner {
    local_id: NodeId,
    members: Members,
    inbound: mpsc::Sender<Inbound>,
    store: SharedStore,
    limits: KvLimits,
    /// Channels to leaders, by address (tonic reconnects under a channel).
    channels: Mutex<HashMap<SocketAddr, Channel>>,
    /// Forward over TLS, as this member (its certificate), when the node's port is TLS.
    tls: Option<Arc<crate::grpc::tls::NodeTls>>,
}

/// Where a request ended up: answered here, to be forwarded to the leader at an address, or
/// refused before anything was proposed or read (no leader known, or leadership moved away from
/// the node a request was forwarded to): trying again is safe, and `Again`'s status is the
/// answer when the request's time runs out first.
pub(super) enum Route<T> {
    Here(T),
    Leader(SocketAddr),
    Again(Status),
}

impl EtcdApi {
    /// `tls`: the node's TLS material when its port is TLS (forwarded requests then go over
    /// TLS, presenting this member's certificate).
    pub fn new(
        local_id: NodeId,
        members: Members,
        inbound: mpsc::Sender<Inbound>,
        store: SharedStore,
        limits: KvLimits,
        tls: Option<Arc<crate::grpc::tls::NodeTls>>,
    ) -> EtcdApi {
        EtcdApi {
            inner: Arc::new(Inner {
                local_id,
                members,
                inbound,
                store,
                limits,
                channels: Mutex::new(HashMap::new()),
                tls,
            }),
        }
    }

    /// The three tonic services, ready to be added to the node's server.
    pub fn services(
        &self,
    ) -> (
        pb::kv_server::KvServer<KvService>,
        pb::maintenance_server::MaintenanceServer<MaintenanceService>,
        pb::cluster_server::ClusterServer<ClusterService>,
    ) {
        let max = self.inner.limits.transport_bytes_max();
        (
            pb::kv_server::KvServer::new(KvService { api: self.clone() })
                .max_decoding_message_size(max),
            pb::maintenance_server::MaintenanceServer::new(MaintenanceService {
                api: self.clone(),
            }),
            pb::cluster_server::ClusterServer::new(ClusterService { api: self.clone() }),
        )
    }

    /// The Maintenance service as an in-process handle (the JSON gateway).
    pub fn maintenance_service(&self) -> MaintenanceService {
        MaintenanceService { api: self.clone() }
    }

    /// The Cluster service as an in-process handle (the JSON gateway).
    pub fn cluster_service(&self) -> ClusterService {
        ClusterService { api: self.clone() }
    }

    /// The KV service as an in-process handle: the Lock and Election services
    /// ([`crate::etcd::concurrency`]) run etcd's recipes on it.
    pub fn kv_service(&self) -> KvService {
        KvService { api: self.clone() }
    }

    pub(super) fn header(&self, revision: i64, term: Term) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.inner.members.cluster_id,
            member_id: self.inner.members.id_of(Some(self.inner.local_id)),
            revision,
            raft_term: term.0,
        }
    }

    /// Completes a store-filled header (revision) with the node's ids and term.
    pub(super) fn fill(&self, header: &mut Option<ResponseHeader>, term: Term) {
        let revision = header.as_ref().map_or(0, |h| h.revision);
        *header = Some(self.header(revision, term));
    }

    /// Asks the event loop to hand leadership to `target` and waits until `target` leads
    /// (etcd's `MoveLeader`: the answer comes once the move is done). Polls the status every
    /// [`RETRY_PAUSE`] until [`REQUEST_TIMEOUT`].
    pub(super) async fn move_leader(&self, target: NodeId) -> Result<Term, Status> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let began = self
            .ask(
                |reply| Inbound::TransferLeader { target, reply },
                "etcdserver: server stopped",
            )
            .await?;
        match began {
            Ok(()) => {}
            // etcd answers a move to the leader itself with success at once.
            Err(TransferError::AlreadyLeader(_)) => return Ok(self.node_status().await?.term),
            Err(TransferError::NotLeader { .. }) => {
                return Err(Status::failed_precondition(NOT_LEADER))
            }
            Err(TransferError::NotAVoter { .. }) => {
                return Err(Status::failed_precondition(BAD_LEADER_TRANSFEREE))
            }
        }
        let started = std::time::Instant::now();
        loop {
            let status = self.node_status().await?;
            if status.leader == Some(target) && status.node_id != target {
                tracing::info!(
                    "leadership moved to node {target} in {:.1} ms (term {})",
                    started.elapsed().as_secs_f64() * 1000.0,
                    status.term
                );
                return Ok(status.term);
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(Status::unavailable(LEADER_TRANSFER_TIMED_OUT));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// The event loop's view of this node (role, term, leader, commit and applied index).
    pub(super) async fn node_status(&self) -> Result<NodeStatus, Status> {
        self.ask(
            |reply| Inbound::Status { reply },
            "etcdserver: server stopped",
        )
        .await
    }

    /// Sends `make(reply)` to the event loop and waits (bounded by [`REQUEST_TIMEOUT`]).
    pub(super) async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Inbound,
        dropped: &'static str,
    ) -> Result<T, Status> {
        self.ask_within(make, dropped, REQUEST_TIMEOUT).await
    }

    /// [`EtcdApi::ask`] bounded by what is left of a request's time.
    pub(super) async fn ask_until<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Inbound,
        dropped: &'static str,
        deadline: Instant,
    ) -> Result<T, Status> {
        let bound = deadline.saturating_duration_since(Instant::now());
        self.ask_within(make, dropped, bound).await
    }

    /// [`EtcdApi::ask`] with another bound than [`REQUEST_TIMEOUT`].
    async fn ask_within<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Inbound,
        dropped: &'static str,
        bound: Duration,
    ) -> Result<T, Status> {
        let (reply, answer) = oneshot::channel();
        let exchange = async {
            // A full inbound queue makes this wait (back-pressure), inside the same bound.
            self.inner
                .inbound
                .send(make(reply))
                .await
                .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
            answer.await.map_err(|_| Status::unavailable(dropped))
        };
        match tokio::time::timeout(bound, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Status::unavailable(TIMED_OUT)),
        }
    }

    /// Asks the event loop for a fresh snapshot file (see [`MaintenanceService::snapshot`]).
    async fn fresh_snapshot(&self) -> Result<PathBuf, Status> {
        let outcome = self
            .ask_within(
                |reply| Inbound::Snapshot { reply },
                "etcdserver: server stopped",
                SNAPSHOT_TIMEOUT,
            )
            .await?;
        outcome.map_err(|refused| match refused {
            SnapshotRefused::NoSnapshots => Status::failed_precondition(format!(
                "rust-raft-log: Maintenance.Snapshot is not available: {refused}"
            )),
            SnapshotRefused::NothingApplied => {
                Status::unavailable(format!("rust-raft-log: no snapshot yet: {refused}"))
            }
            SnapshotRefused::Failed(_) => Status::internal(format!("rust-raft-log: {refused}")),
        })
    }

    /// Proposes `payload` (an encoded, validated command) and waits for its application.
    pub(super) async fn propose(
        &self,
        payload: Vec<u8>,
        forwarded: bool,
        deadline: Instant,
    ) -> Result<Route<(kv::Applied, Term)>, Status> {
        let outcome = self
            .ask_until(
                |reply| Inbound::Command { payload, reply },
                OUTCOME_UNKNOWN,
                deadline,
            )
            .await?;
        match outcome {
            Ok(Applied { term, response, .. }) => {
                let applied = response.map_err(|e| e.to_status())?;
                Ok(Route::Here((applied, term)))
            }
            Err(CommandRefused::NotLeader {
                leader,
                leader_address,
            }) => not_leader(leader, leader_address, forwarded),
            Err(CommandRefused::Overloaded { .. }) => Err(Status::unavailable(TOO_MANY_REQUESTS)),
            Err(CommandRefused::TooLarge { .. }) => Err(kv::KvError::RequestTooLarge.to_status()),
            // etcd's answer while its NOSPACE alarm is raised, word for word, so that clients
            // recognise it (clientv3's `rpctypes.ErrNoSpace`; not retried); the node's log names
            // the directory.
            Err(CommandRefused::NoSpace { .. }) => {
                Err(Status::resource_exhausted(DATABASE_SPACE_EXCEEDED))
            }
            // A leadership transfer holds writes (nothing was proposed): wait and try again,
            // here or, once the target leads, forwarded to it. Should the transfer outlast the
            // request, the client gets etcd's retryable "leader changed".
            Err(CommandRefused::Transferring { .. }) => {
                Ok(Route::Again(Status::unavailable(LEADER_CHANGED)))
            }
        }
    }

    /// Waits for permission to read (see the module docs).
    pub(super) async fn read(
        &self,
        linearizable: bool,
        forwarded: bool,
        deadline: Instant,
    ) -> Result<Route<ReadGrant>, Status> {
        let outcome = self
            .ask_until(
                |reply| Inbound::Read {
                    linearizable,
                    reply,
                },
                LEADER_CHANGED,
                deadline,
            )
            .await?;
        match outcome {
            Ok(grant) => Ok(Route::Here(grant)),
            Err(ReadRefused::NotLeader {
                leader,
                leader_address,
            }) => not_leader(leader, leader_address, forwarded),
            // Nothing was read: a read may always be tried again.
            Err(ReadRefused::LeadershipLost) => {
                Ok(Route::Again(Status::unavailable(LEADER_CHANGED)))
            }
            Err(ReadRefused::Overloaded { .. }) => Err(Status::unavailable(TOO_MANY_REQUESTS)),
        }
    }

    /// The newest member added at run time whose recorded peer URL is `addr`.
    fn recorded_member_at(&self, addr: SocketAddr) -> Option<crate::types::NodeId> {
        let store = self.store().lock().unwrap_or_else(PoisonError::into_inner);
        crate::state_machine::StateMachine::member_urls(&*store)
            .into_iter()
            .filter(|(_, urls)| {
                urls.first()
                    .and_then(|u| crate::driver::parse_peer_url(u).ok())
                    == Some(addr)
            })
            .map(|(node, _)| node)
            .max()
    }

    /// A (cached) channel to the node at `addr`.
    pub(super) fn channel(&self, addr: SocketAddr) -> Result<Channel, Status> {
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(channel) = channels.get(&addr) {
            return Ok(channel.clone());
        }
        let scheme = if self.inner.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| Status::internal(format!("leader address {addr}: {e}")))?;
        let endpoint = match &self.inner.tls {
            None => endpoint,
            Some(tls) => {
                // The leader is verified as the member at that address, as peers verify peers:
                // a member added at run time is found in the replicated address records (the
                // newest id at that address: ids only grow, and a replacement may take a
                // removed member's address), a bootstrap member in the config file.
                let leader = self
                    .recorded_member_at(addr)
                    .or_else(|| {
                        self.inner
                            .members
                            .members
                            .iter()
                            .find(|m| m.address == addr)
                            .map(|m| m.node_id)
                    })
                    .ok_or_else(|| Status::internal(format!("no member at {addr}")))?;
                endpoint
                    .tls_config(tls.client_config(leader))
                    .map_err(|e| Status::internal(format!("TLS to the leader at {addr}: {e}")))?
            }
        };
        let endpoint = endpoint
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(1))
            .timeout(REQUEST_TIMEOUT);
        let channel = endpoint.connect_lazy();
        channels.insert(addr, channel.clone());
        Ok(channel)
    }

    /// Copies the client's request into a new one marked as forwarded, with what is left of
    /// its time as the gRPC deadline (the leader stops working on it when the client has).
    pub(super) fn forward_request<T>(&self, message: T, deadline: Instant) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(
            FORWARDED_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        request
    }

    /// The leader's answer, with this node's member id in the header (the client asked us).
    pub(super) fn relay<T>(
        &self,
        answer: Result<Response<T>, Status>,
        header: impl FnOnce(&mut T) -> &mut Option<ResponseHeader>,
    ) -> Result<Response<T>, Status> {
        let mut message = answer.map_err(relay_status)?.into_inner();
        if let Some(h) = header(&mut message).as_mut() {
            h.member_id = self.inner.members.id_of(Some(self.inner.local_id));
        }
        Ok(Response::new(message))
    }

    /// The store's current revision (for response headers).
    pub(super) fn store_revision(&self) -> i64 {
        lock(&self.inner.store).revision()
    }

    /// The config file's members (their etcd ids, names and addresses).
    pub(super) fn config_members(&self) -> &Members {
        &self.inner.members
    }

    /// The key-value store this node applies to (read it after a grant).
    pub(super) fn store(&self) -> &SharedStore {
        &self.inner.store
    }

    fn kv_client(&self, addr: SocketAddr) -> Result<KvClient<Channel>, Status> {
        let max = self.inner.limits.transport_bytes_max();
        Ok(KvClient::new(self.channel(addr)?)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(max))
    }
}

/// A refusal because this node is not the leader: forward, unless there is no leader or the
/// request was already forwarded once (then nothing was proposed or read: try again).
pub(super) fn not_leader<T>(
    leader: Option<NodeId>,
    leader_address: Option<SocketAddr>,
    forwarded: bool,
) -> Result<Route<T>, Status> {
    match (leader, leader_address) {
        (Some(_), Some(addr)) if !forwarded => Ok(Route::Leader(addr)),
        (Some(_), _) => Ok(Route::Again(Status::unavailable(LEADER_CHANGED))),
        (None, _) => Ok(Route::Again(Status::unavailable(NO_LEADER))),
    }
}

/// What a handler does with `Route::Again(status)`: a forwarded request goes back to the node
/// that forwarded it, marked so that it tries again; the client's own request waits
/// [`RETRY_PAUSE`] (`Ok`), unless its time would run out first (`Err(status)`, the answer).
pub(super) async fn again(
    status: Status,
    forwarded: bool,
    deadline: Instant,
) -> Result<(), Status> {
    if forwarded {
        let mut marked = Status::unavailable(status.message());
        marked.metadata_mut().insert(
            NOT_PROPOSED_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        return Err(marked);
    }
    if Instant::now() + RETRY_PAUSE >= deadline {
        return Err(status);
    }
    tokio::time::sleep(RETRY_PAUSE).await;
    Ok(())
}

/// How a failed forward is answered: `Ok(refusal)` when trying again is safe (the leader refused
/// without proposing, or the connection was never made; for an `idempotent` read, any
/// transport failure), otherwise `Err` with the failure itself (see [`relay_status`]).
pub(super) fn forward_failed(status: Status, idempotent: bool) -> Result<Status, Status> {
    let refused_there = status.metadata().get(NOT_PROPOSED_HEADER).is_some();
    // Made here by tonic (the cause is its source), not an answer that came over the wire.
    let transport = std::error::Error::source(&status).is_some();
    if refused_there || never_sent(&status) || (idempotent && transport) {
        tracing::debug!(%status, "forwarding to the leader failed; trying again");
        Ok(Status::unavailable(if refused_there {
            status.message().to_string()
        } else {
            LEADER_CHANGED.to_string()
        }))
    } else {
        Err(relay_status(status))
    }
}

/// Whether a forward failed while connecting (tonic's [`tonic::ConnectError`] in the status's
/// source chain): the request never left this node.
fn never_sent(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        source = error.source();
    }
    false
}

/// The leader's answer goes back as it is; a failure of the transport towards the leader (a
/// status tonic made here, with the cause as its source, not one that came over the wire) after
/// the request may have reached it is etcd's "possibly due to previous leader failure": the
/// outcome is unknown, and this node is fine.
pub(super) fn relay_status(status: Status) -> Status {
    if std::error::Error::source(&status).is_none() {
        status
    } else {
        tracing::debug!(%status, "forwarding to the leader failed");
        Status::unavailable(OUTCOME_UNKNOWN)
    }
}

pub(super) fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().get(FORWARDED_HEADER).is_some()
}

pub(super) fn wrong_response(expected: &str) -> Status {
    // The store answered an op with another kind: a bug, not a client error.
    tracing::error!("the key-value store answered a {expected} with another response kind");
    Status::internal(format!(
        "the store answered a {expected} with another response kind"
    ))
}

/// etcd's `KV` service.
#[derive(Clone)]
pub struct KvService {
    api: EtcdApi,
}

impl KvService {
    /// Validates and proposes one op; `Here` holds the op's response and the term.
    async fn write(
        &self,
        op: &RequestOp,
        forwarded: bool,
        deadline: Instant,
    ) -> Result<Route<(response_op::Response, Term)>, Status> {
        validate(op, &self.api.inner.limits).map_err(|e| e.to_status())?;
        match self
            .api
            .propose(encode_command(op), forwarded, deadline)
            .await?
        {
            Route::Here((kv::Applied::Op(response), term)) => match response.response {
                Some(r) => Ok(Route::Here((r, term))),
                None => Err(wrong_response("request")),
            },
            Route::Here(_) => Err(wrong_response("request")),
            Route::Leader(addr) => Ok(Route::Leader(addr)),
            Route::Again(status) => Ok(Route::Again(status)),
        }
    }

    /// The one path of Put, DeleteRange and Txn: validate, propose and answer once applied here,
    /// or forward the request unchanged to the leader and relay its answer; held while there is
    /// no leader (see the module docs).
    async fn write_request<W: WriteRequest>(
        &self,
        request: Request<W>,
    ) -> Result<Response<W::Response>, Status> {
        let started = Instant::now();
        let deadline = started + REQUEST_TIMEOUT;
        let forwarded = is_forwarded(&request);
        let op = RequestOp {
            request: Some(request.into_inner().into_op()),
        };
        loop {
            let refused = match self.write(&op, forwarded, deadline).await? {
                Route::Here((response, term)) => {
                    let mut r = W::response(response).ok_or_else(|| wrong_response(W::NAME))?;
                    self.api.fill(W::header(&mut r), term);
                    // The latency timeline (off unless RAFT_TIMELINE is set) keeps each answered
                    // write's latency, so a slow one can be matched to what overlapped it.
                    crate::timeline::mark("kv_write_us", started.elapsed().as_micros() as u64);
                    return Ok(Response::new(r));
                }
                Route::Leader(addr) => {
                    let message = op
                        .request
                        .clone()
                        .and_then(W::from_op)
                        .ok_or_else(|| wrong_response(W::NAME))?;
                    let client = self.api.kv_client(addr)?;
                    match W::forward(client, self.api.forward_request(message, deadline)).await {
                        Err(status) => forward_failed(status, false)?,
                        answer => return self.api.relay(answer, W::header),
                    }
                }
                Route::Again(status) => status,
            };
            again(refused, forwarded, deadline).await?;
        }
    }
}

/// A future that answers a forwarded request.
type Forwarded<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<T>, Status>> + Send>>;

/// What [`KvService::write_request`] needs to know about one kind of write request.
trait WriteRequest: Sized + Send + 'static {
    type Response: Send + 'static;
    /// The request's name in error messages.
    const NAME: &'static str;
    fn into_op(self) -> request_op::Request;
    /// Takes the request back out of the op [`WriteRequest::into_op`] made.
    fn from_op(op: request_op::Request) -> Option<Self>;
    fn response(response: response_op::Response) -> Option<Self::Response>;
    fn header(response: &mut Self::Response) -> &mut Option<ResponseHeader>;
    /// Sends the request to the leader's KV service.
    fn forward(client: KvClient<Channel>, request: Request<Self>) -> Forwarded<Self::Response>;
}

/// Implements [`WriteRequest`] for a request type from its `RequestOp`/`ResponseOp` variants
/// and its `KvClient` method.
macro_rules! write_request {
    ($request:ty, $response:ty, $name:literal, $variant:ident, $response_variant:ident, $method:ident) => {
        impl WriteRequest for $request {
            type Response = $response;
            const NAME: &'static str = $name;
            fn into_op(self) -> request_op::Request {
                request_op::Request::$variant(self)
            }
            fn from_op(op: request_op::Request) -> Option<Self> {
                match op {
                    request_op::Request::$variant(r) => Some(r),
                    _ => None,
                }
            }
            fn response(response: response_op::Response) -> Option<$response> {
                match response {
                    response_op::Response::$response_variant(r) => Some(r),
                    _ => None,
                }
            }
            fn header(response: &mut $response) -> &mut Option<ResponseHeader> {
                &mut response.header
            }
            fn forward(
                mut client: KvClient<Channel>,
                request: Request<Self>,
            ) -> Forwarded<$response> {
                Box::pin(async move { client.$method(request).await })
            }
        }
    };
}

write_request!(
    pb::PutRequest,
    pb::PutResponse,
    "put",
    RequestPut,
    ResponsePut,
    put
);
write_request!(
    pb::DeleteRangeRequest,
    pb::DeleteRangeResponse,
    "delete range",
    RequestDeleteRange,
    ResponseDeleteRange,
    delete_range
);
write_request!(
    pb::TxnRequest,
    pb::TxnResponse,
    "txn",
    RequestTxn,
    ResponseTxn,
    txn
);

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let range = request.into_inner();
        let op = RequestOp {
            request: Some(request_op::Request::RequestRange(range)),
        };
        validate(&op, &self.api.inner.limits).map_err(|e| e.to_status())?;
        let Some(request_op::Request::RequestRange(range)) = op.request else {
            unreachable!("built above as a range");
        };
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let refused = match self
                .api
                .read(!range.serializable, forwarded, deadline)
                .await?
            {
                Route::Here(grant) => {
                    let mut response = lock(&self.api.inner.store)
                        .range(&range)
                        .map_err(|e| e.to_status())?;
                    self.api.fill(&mut response.header, grant.term);
                    return Ok(Response::new(response));
                }
                Route::Leader(addr) => {
                    let answer = self
                        .api
                        .kv_client(addr)?
                        .range(self.api.forward_request(range.clone(), deadline))
                        .await;
                    match answer {
                        Err(status) => forward_failed(status, true)?,
                        answer => return self.api.relay(answer, |r| &mut r.header),
                    }
                }
                Route::Again(status) => status,
            };
            again(refused, forwarded, deadline).await?;
        }
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        self.write_request(request).await
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        self.write_request(request).await
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        self.write_request(request).await
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let compact = request.into_inner();
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let refused = match self
                .api
                .propose(encode_compact(&compact), forwarded, deadline)
                .await?
            {
                Route::Here((kv::Applied::Compact(mut r), term)) => {
                    self.api.fill(&mut r.header, term);
                    return Ok(Response::new(r));
                }
                Route::Here(_) => return Err(wrong_response("compaction")),
                Route::Leader(addr) => {
                    let answer = self
                        .api
                        .kv_client(addr)?
                        .compact(self.api.forward_request(compact, deadline))
                        .await;
                    match answer {
                        // Compacting twice to the same revision is refused the second time, so
                        // only a forward that was never sent is tried again.
                        Err(status) => forward_failed(status, false)?,
                        answer => return self.api.relay(answer, |r| &mut r.header),
                    }
                }
                Route::Again(status) => status,
            };
            again(refused, forwarded, deadline).await?;
        }
    }
}

/// etcd's `Maintenance` service: `Status`, `HashKV`, `Snapshot` and `MoveLeader`.
#[derive(Clone)]
pub struct MaintenanceService {
    api: EtcdApi,
}

/// The stream of a `Maintenance.Snapshot` answer.
pub type SnapshotStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

/// Sends a saved snapshot (docs/FORMAT.md, "Saved snapshot"): the first `len` bytes of `file`
/// (opened at `path`: the snapshot file, verbatim), then zero padding and the SHA-256 of
/// everything before it, as `SnapshotResponse`s of up to [`SNAPSHOT_BLOB_BYTES`]. Each blob is
/// read (and hashed) on the blocking pool, so at most [`SNAPSHOT_BLOBS_QUEUED`] + 1 blobs are in
/// memory. Stops quietly when the client goes away; a read failure (or a file shorter than `len`)
/// ends the stream with an error status, so the client never takes a cut file for a whole one.
async fn stream_file(
    mut file: std::fs::File,
    path: PathBuf,
    len: u64,
    header: ResponseHeader,
    out: mpsc::Sender<Result<pb::SnapshotResponse, Status>>,
) {
    use std::io::Read;
    let total = len + saved_suffix_bytes(len);
    let mut digest = Sha256::new();
    let mut sent = 0u64;
    while sent < len {
        let want = (len - sent).min(SNAPSHOT_BLOB_BYTES as u64) as usize;
        let read = tokio::task::spawn_blocking(move || {
            let mut blob = vec![0; want];
            let r = file.read_exact(&mut blob);
            if r.is_ok() {
                digest.update(&blob);
            }
            (file, digest, r.map(|()| blob))
        })
        .await;
        let blob = match read {
            Ok((f, d, Ok(blob))) => {
                (file, digest) = (f, d);
                blob
            }
            Ok((_, _, Err(e))) => {
                let message = format!(
                    "rust-raft-log: reading snapshot {} at offset {sent}: {e}",
                    path.display()
                );
                tracing::error!("{message}");
                let _ = out.send(Err(Status::internal(message))).await;
                return;
            }
            Err(e) => {
                let _ = out
                    .send(Err(Status::internal(format!(
                        "rust-raft-log: the snapshot read task failed: {e}"
                    ))))
                    .await;
                return;
            }
        };
        sent += blob.len() as u64;
        let response = pb::SnapshotResponse {
            header: Some(header),
            remaining_bytes: total - sent,
            blob,
        };
        if out.send(Ok(response)).await.is_err() {
            tracing::debug!("snapshot client went away after {sent} of {total} bytes");
            return;
        }
    }
    let mut suffix = vec![0u8; saved_padding_bytes(len) as usize];
    digest.update(&suffix);
    suffix.extend_from_slice(&digest.finish());
    let last = pb::SnapshotResponse {
        header: Some(header),
        remaining_bytes: 0,
        blob: suffix,
    };
    if out.send(Ok(last)).await.is_ok() {
        tracing::info!(
            "📸 Sent snapshot {} to a client ({total} bytes: the file's {len}, padding and SHA-256)",
            path.display()
        );
    }
}

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for MaintenanceService {
    type SnapshotStream = SnapshotStream;

    /// A fresh snapshot of this member, as `etcdctl snapshot save` fetches it: the event loop
    /// takes one now (whatever `snapshot_entries` says; after the one being written, if any),
    /// covering at least everything this member applied when the request arrived, and the file
    /// (docs/FORMAT.md, "Snapshot file", verbatim: not a bbolt database, see
    /// docs/ETCD_COMPAT.md) is streamed in [`SNAPSHOT_BLOB_BYTES`] blobs read on the blocking
    /// pool, followed, as etcd does, by a SHA-256 of the stream (after zero padding to a multiple
    /// of 512 bytes, which `etcdctl snapshot save` 3.4.23 and later insists on: "Saved
    /// snapshot"). Served from this member's state without a leader round trip, as etcd does. The file
    /// is opened before the stream starts, so pruning it meanwhile (two newer snapshots finished)
    /// does not cut the transfer. The header's revision is the store's when the stream starts.
    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let path = self.api.fresh_snapshot().await?;
        let status = self.api.node_status().await?;
        let revision = lock(&self.api.inner.store).revision();
        let header = self.api.header(revision, status.term);
        let opening = path.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&opening)?;
            let len = file.metadata()?.len();
            Ok::<_, std::io::Error>((file, len))
        })
        .await
        .map_err(|e| Status::internal(format!("rust-raft-log: opening the snapshot: {e}")))?;
        let (file, len) = opened.map_err(|e| {
            Status::internal(format!(
                "rust-raft-log: opening snapshot {}: {e}",
                path.display()
            ))
        })?;
        tracing::info!(
            "📸 Sending snapshot {} ({len} bytes) to a client",
            path.display()
        );
        let (tx, rx) = mpsc::channel(SNAPSHOT_BLOBS_QUEUED);
        tokio::spawn(stream_file(file, path, len, header, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let status = self.api.node_status().await?;
        let (revision, size) = {
            let store = lock(&self.api.inner.store);
            (store.revision(), store.size_bytes())
        };
        let members = &self.api.inner.members;
        // The leader as this node knows it; itself while it leads.
        let leader = if status.role == Role::Leader {
            Some(status.node_id)
        } else {
            status.leader
        };
        let mut errors = Vec::new();
        if leader.is_none() {
            errors.push(NO_LEADER.to_string());
        }
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.api.header(revision, status.term)),
            version: ETCD_VERSION.to_string(),
            db_size: size,
            leader: members.id_of(leader),
            raft_index: status.commit_index.0,
            raft_term: status.term.0,
            raft_applied_index: status.applied_index.0,
            errors,
            db_size_in_use: size,
            // A core that tracks no membership has no learners. A node outside its
            // configuration (joining, before the leader's log reached its own addition) does
            // not vote either: etcd's member added with `--learner` says learner from its start.
            is_learner: self
                .api
                .membership()
                .await
                .is_ok_and(|m| !m.is_voter(status.node_id)),
            ..pb::StatusResponse::default()
        }))
    }

    /// etcd's `MoveLeader`: served by the leader only (etcdctl sends it to the endpoint that
    /// reports itself leader), answered once the target leads. Errors as etcd words them: a
    /// non-leader answers "etcdserver: not leader", an id that is no member "etcdserver: bad
    /// leader transferee"; a move that has not happened within the request timeout "etcdserver:
    /// request timed out, leader transfer took too long". Writes are held, not failed, meanwhile.
    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let target_member = request.into_inner().target_id;
        // Any member of the configuration in effect (members added at run time included); the
        // core refuses a learner.
        let membership = self.api.membership().await?;
        let Some(target) = EtcdApi::node_of(&membership, target_member) else {
            return Err(Status::failed_precondition(BAD_LEADER_TRANSFEREE));
        };
        let term = self.api.move_leader(target).await?;
        let revision = lock(&self.api.inner.store).revision();
        Ok(Response::new(pb::MoveLeaderResponse {
            header: Some(self.api.header(revision, term)),
        }))
    }

    /// The hash of this member's applied key-value state up to a revision (0: the current one),
    /// as `docs/FORMAT.md` "HashKV" defines it: members that applied the same history answer the
    /// same hash, so `etcdctl endpoint hashkv --cluster` shows a diverged member. Served from this
    /// member's state without a leader round trip, as etcd does. The view is taken under the
    /// store's lock (constant time); the hashing runs on the blocking pool, so applies go on.
    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let revision = request.into_inner().revision;
        let status = self.api.node_status().await?;
        let view = lock(&self.api.inner.store).snapshot_view();
        let hashed = tokio::task::spawn_blocking(move || {
            let current = view.revision();
            view.hash_kv(revision).map(|hash| (hash, current))
        })
        .await
        .map_err(|error| {
            Status::internal(format!("hashing the key-value state failed: {error}"))
        })?;
        let (hash, current) = hashed.map_err(|error| error.to_status())?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.api.header(current, status.term)),
            hash: hash.hash,
            compact_revision: hash.compact_revision,
            hash_revision: hash.revision,
        }))
    }
}

/// etcd's `Cluster` service: see [`crate::etcd::cluster`].
#[derive(Clone)]
pub struct ClusterService {
    pub(super) api: EtcdApi,
}

/// Clients for every etcd service on one channel (tests and tools).
pub struct EtcdClients {
    pub kv: KvClient<Channel>,
    pub maintenance: MaintenanceClient<Channel>,
    pub cluster: ClusterClient<Channel>,
}

impl EtcdClients {
    pub fn new(channel: Channel) -> EtcdClients {
        EtcdClients {
            kv: KvClient::new(channel.clone()),
            maintenance: MaintenanceClient::new(channel.clone()),
            cluster: ClusterClient::new(channel),
        }
    }
}

/// The gRPC paths the node serves besides its own `raftlog.v1` services; anything else is
/// answered UNIMPLEMENTED with a message naming it ([`unimplemented_message`]).
pub const SERVED_ETCD_METHODS: &[&str] = &[
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.KV/Put",
    "/etcdserverpb.KV/DeleteRange",
    "/etcdserverpb.KV/Txn",
    "/etcdserverpb.KV/Compact",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/HashKV",
    "/etcdserverpb.Maintenance/Snapshot",
    "/etcdserverpb.Maintenance/MoveLeader",
    "/etcdserverpb.Cluster/MemberList",
    "/etcdserverpb.Cluster/MemberAdd",
    "/etcdserverpb.Cluster/MemberRemove",
    "/etcdserverpb.Cluster/MemberUpdate",
    "/etcdserverpb.Cluster/MemberPromote",
    "/v3lockpb.Lock/Lock",
    "/v3lockpb.Lock/Unlock",
    "/v3electionpb.Election/Campaign",
    "/v3electionpb.Election/Proclaim",
    "/v3electionpb.Election/Leader",
    "/v3electionpb.Election/Observe",
    "/v3electionpb.Election/Resign",
    "/etcdserverpb.Lease/LeaseGrant",
    "/etcdserverpb.Lease/LeaseRevoke",
    "/etcdserverpb.Lease/LeaseKeepAlive",
    "/etcdserverpb.Lease/LeaseTimeToLive",
    "/etcdserverpb.Lease/LeaseLeases",
    "/etcdserverpb.Watch/Watch",
];

/// Paths of etcd's JSON gateway ([`crate::etcd::gateway`] serves them; the filter lets them
/// through). Kept here, with the rest of what the filter serves, so that this module does not
/// import the gateway that is built on it.
pub fn is_gateway_path(path: &str) -> bool {
    path.starts_with("/v3/") || path == "/version"
}

/// Whether `path` (`/package.Service/Method`) is served.
pub fn is_served(path: &str) -> bool {
    path.starts_with("/raftlog.v1.") || SERVED_ETCD_METHODS.contains(&path) || is_gateway_path(path)
}

/// The UNIMPLEMENTED message for a path the node does not serve.
pub fn unimplemented_message(path: &str) -> String {
    let method = path.trim_start_matches('/');
    format!(
        "rust-raft-log does not implement {method} (served: KV Range/Put/DeleteRange/Txn/Compact, \
         Maintenance.Status/HashKV/Snapshot/MoveLeader, Cluster.MemberList, Lease, Watch, Lock, Election; \
         see docs/ETCD_COMPAT.md)"
    )
}

/// The server's path filter for a node that serves the etcd API.
pub const PATH_FILTER: crate::grpc::PathFilter = crate::grpc::PathFilter {
    served: is_served,
    unimplemented: unimplemented_message,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_served_methods_pass_and_the_rest_are_named() {
        assert!(is_served("/etcdserverpb.KV/Range"));
        assert!(is_served("/raftlog.v1.Raft/AppendEntries"));
        assert!(is_served("/etcdserverpb.Watch/Watch"));
        assert!(is_served("/etcdserverpb.Lease/LeaseGrant"));
        assert!(is_served("/v3lockpb.Lock/Lock"));
        assert!(!is_served("/etcdserverpb.Maintenance/Defragment"));
        assert!(is_served("/etcdserverpb.Lease/LeaseKeepAlive"));
        assert!(unimplemented_message("/etcdserverpb.Auth/Authenticate")
            .contains("etcdserverpb.Auth/Authenticate"));
    }

    #[test]
    fn not_leader_forwards_once_and_otherwise_answers_retryable_statuses() {
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        assert!(matches!(
            not_leader::<()>(Some(NodeId(2)), Some(addr), false),
            Ok(Route::Leader(a)) if a == addr
        ));
        let Ok(Route::Again(second_hop)) = not_leader::<()>(Some(NodeId(2)), Some(addr), true)
        else {
            panic!("a forwarded request is not forwarded a second time");
        };
        assert_eq!(second_hop.code(), tonic::Code::Unavailable);
        assert_eq!(second_hop.message(), LEADER_CHANGED);
        let Ok(Route::Again(none)) = not_leader::<()>(None, None, false) else {
            panic!("without a leader the request waits");
        };
        assert_eq!(none.code(), tonic::Code::Unavailable);
        assert_eq!(none.message(), NO_LEADER);
    }

    #[test]
    fn a_refused_connection_is_known_to_have_sent_nothing() {
        // A port nobody listens on (bound, then closed): the connection is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let status = runtime.block_on(async {
            let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                .expect("endpoint")
                .connect_lazy();
            KvClient::new(channel)
                .put(pb::PutRequest::default())
                .await
                .expect_err("nobody listens")
        });
        assert!(
            never_sent(&status),
            "not recognised as a connect failure: {status:?}"
        );
        // A write that failed this way is tried again; an etcd refusal is not.
        assert_eq!(
            forward_failed(status, false).expect("try again").message(),
            LEADER_CHANGED
        );
        let refused = Status::unavailable(OUTCOME_UNKNOWN);
        assert!(!never_sent(&refused));
        assert!(forward_failed(refused, false).is_err());
        // A transport failure after the request may have been sent: reads only.
        let reset = || Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert!(forward_failed(reset(), true).is_ok());
        assert!(forward_failed(reset(), false).is_err());
        // An answer from the leader is not a transport failure, even for a read.
        assert!(forward_failed(Status::unavailable(TIMED_OUT), true).is_err());
        // The client is told the outcome is unknown, in etcd's words.
        let broken = Status::from_error(Box::new(std::io::Error::other("stream reset")));
        assert_eq!(relay_status(broken).message(), OUTCOME_UNKNOWN);
        let answered = Status::unavailable(OUTCOME_UNKNOWN);
        assert_eq!(relay_status(answered).message(), OUTCOME_UNKNOWN);
    }

    #[test]
    fn a_forwarded_refusal_goes_back_marked_and_a_clients_request_waits_until_its_deadline() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let later = Instant::now() + Duration::from_secs(5);
            let marked = again(Status::unavailable(NO_LEADER), true, later)
                .await
                .expect_err("a forwarded request is answered at once");
            assert!(marked.metadata().get(NOT_PROPOSED_HEADER).is_some());
            let retried = forward_failed(marked, false).expect("the forwarder tries again");
            assert_eq!(retried.message(), NO_LEADER);
            assert!(again(Status::unavailable(NO_LEADER), false, later)
                .await
                .is_ok());
            let spent = again(Status::unavailable(NO_LEADER), false, Instant::now())
                .await
                .expect_err("no time left");
            assert_eq!(spent.message(), NO_LEADER);
            assert!(spent.metadata().get(NOT_PROPOSED_HEADER).is_none());
        });
    }
}
