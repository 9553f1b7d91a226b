//! Peer clients: one persistent gRPC channel per peer, a bounded queue in front of it, and capped
//! exponential backoff after failures.
//!
//! This module owns outbound delivery of the core's requests (RequestVote, AppendEntries) and the
//! return path of their responses, which it hands to the event loop as `Inbound::Response`.
//!
//! Invariants, and why they hold:
//! - [`Peers::send`] never blocks and never awaits: it pushes onto the peer's queue and returns. So
//!   a down or slow peer cannot stall the event loop or the other peers.
//! - Each peer's queue holds at most [`PeerConfig::queue_capacity`] messages; when full, the
//!   *oldest* message is dropped and counted ([`PeerStats::dropped`]). Raft tolerates lost
//!   messages (the leader retransmits from its progress view on the next heartbeat), and the newest
//!   message carries the newest term and commit index, so dropping the oldest loses the least.
//!   With the core's per-message byte bound, a slow follower costs the leader bounded memory.
//! - At most [`PeerConfig::inflight_rpcs_max`] requests are outstanding per peer (pipelining
//!   without an unbounded number of streams or buffers): a slot is taken before a message leaves
//!   the queue and given back when its answer (or its failure) came back.
//! - AppendEntries travel on one long-lived `AppendEntriesStream` per peer (opened on first use,
//!   again after it broke, after the backoff), which answers every request exactly once and in
//!   order, so the oldest unanswered request's slot is the one an answer frees. Per message that
//!   is one HTTP/2 DATA frame each way instead of a whole RPC (headers, routing, trailers): the
//!   single-proposer commit p50 went from ~535 to ~400 µs on the 2-core machine
//!   (`tools/propose_ab.sh`, BENCHMARKS.md). A peer that answers UNIMPLEMENTED (an older
//!   version) gets unary AppendEntries from then on; RequestVote is always unary. Messages in a
//!   stream that breaks are lost, as on a failed RPC.
//! - After a failed RPC the peer's worker waits `min(backoff_initial * 2^(failures-1), backoff_max)`
//!   before the next attempt; a success resets it. Messages queued meanwhile are subject to the
//!   drop-oldest bound, so a peer that is down costs only its own (rare) retries.
//!
//! A response whose route does not say "from that peer, to this node" is dropped and logged: the
//! address answered with another server's identity (a misconfigured cluster).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::driver::Inbound;
use crate::grpc::convert::{self, Limits};
use crate::grpc::proto as pb;
use crate::grpc::server::ServerConfig;
use crate::grpc::GrpcError;
use crate::raft::message::{Envelope, Message};
use crate::types::NodeId;

/// Tuning of the peer clients. Every field is a bound (STYLE §11).
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// Messages waiting per peer before the oldest is dropped.
    pub queue_capacity: usize,
    /// Concurrent RPCs per peer.
    pub inflight_rpcs_max: usize,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    /// Deadline of one RPC, including the peer's fdatasync before it acknowledges.
    pub rpc_timeout: Duration,
    /// Bounds applied to responses and to the encoded size of requests.
    pub limits: Limits,
    /// Send AppendEntries on one long-lived `AppendEntriesStream` per peer instead of one unary
    /// RPC each (a peer that answers UNIMPLEMENTED gets unary RPCs from then on).
    pub stream_append_entries: bool,
    /// The snapshot files InstallSnapshot streams; `None`: InstallSnapshot is not sent.
    pub snapshots: Option<Arc<dyn crate::grpc::snapshot::SnapshotFiles>>,
    /// The cluster id every request carries ([`crate::grpc::gate`]); `None`: none (peers
    /// without a gate).
    pub cluster_id: Option<u64>,
    /// Connect to peers over TLS with this node's certificate; `None`: plaintext.
    pub tls: Option<Arc<crate::grpc::tls::NodeTls>>,
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            queue_capacity: 256,
            inflight_rpcs_max: 8,
            backoff_initial: Duration::from_millis(10),
            // A restarted follower is found again within this bound; a refused connect costs
            // microseconds, so a low cap is cheap.
            backoff_max: Duration::from_millis(200),
            connect_timeout: Duration::from_millis(500),
            rpc_timeout: Duration::from_secs(2),
            limits: Limits::default(),
            stream_append_entries: true,
            snapshots: None,
            cluster_id: None,
            tls: None,
        }
    }
}

/// Counters of one peer, for Status, logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Messages accepted by [`Peers::send`].
    pub queued: u64,
    /// Messages dropped because the queue was full (the oldest one each time).
    pub dropped: u64,
    /// RPCs that returned a response.
    pub delivered: u64,
    /// RPCs that failed (connection refused, timeout, peer error).
    pub failed: u64,
    /// RPCs the peer answered with "declined" (its core ignored the request).
    pub declined: u64,
    /// Messages waiting now.
    pub queue_len: u64,
}

/// Why [`Peers::send`] refused a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("node {0} is not a peer of this node")]
    UnknownPeer(NodeId),
    /// Responses travel on the reply of the request's RPC, never on their own.
    #[error("a {0} is answered on the request's RPC and cannot be sent on its own")]
    NotARequest(&'static str),
    /// The gRPC transport does not carry this message yet.
    #[error("the gRPC transport does not carry {0} messages")]
    NotCarried(&'static str),
}

/// What [`Peers::send`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queued {
    Queued,
    /// Queued, and the oldest waiting message was dropped to make room.
    QueuedDroppedOldest,
}

struct PeerShared {
    id: NodeId,
    addr: SocketAddr,
    capacity: usize,
    queue: Mutex<VecDeque<Envelope>>,
    /// Wakes the worker: a message was queued (or the peer is closing). Only the worker waits on
    /// it, so `notify_one` always reaches the worker.
    wake: Notify,
    closed: AtomicBool,
    /// Wakes every task waiting in [`wait_closed`] (the worker's backoff sleep, the stream
    /// session) when `closed` is set.
    closing: Notify,
    /// The peer answered UNIMPLEMENTED to `AppendEntriesStream`: unary RPCs only.
    stream_unsupported: AtomicBool,
    backoff: Mutex<Backoff>,
    queued: AtomicU64,
    dropped: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    declined: AtomicU64,
    /// When a refusal by this peer was last logged ([`record_failure`]).
    refusal_logged: Mutex<Option<Instant>>,
    /// Since when (first, latest) this peer's gate refuses this node as not a member of its
    /// configuration (`crate::grpc::gate::NOT_A_MEMBER`); cleared by any answer it delivers.
    /// What the loop reads to learn that this node was removed ([`Peers::refusing_as_non_member`]).
    /// Vote answers marked `sender_not_member` and "no" to a MembershipProbe count the same.
    not_member: Mutex<Option<(Instant, Instant)>>,
    /// Asks the peer whether this node is a member ([`Peers::probe_membership`]).
    probe_client: pb::raft_client::RaftClient<Channel>,
    /// A MembershipProbe to this peer is in flight (at most one at a time).
    probing: AtomicBool,
}

/// Capped exponential backoff state of one peer.
#[derive(Debug)]
struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
}

impl Backoff {
    fn delay(&self, initial: Duration, max: Duration) -> Duration {
        let shift = self.failures.saturating_sub(1).min(20);
        initial.saturating_mul(1u32 << shift).min(max)
    }
}

impl PeerShared {
    /// Stops the worker and the stream session of this peer.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
        self.closing.notify_waiters();
    }
}

/// Starts a peer's worker (see [`Peers::start`]).
type Spawner = Box<dyn Fn(NodeId, SocketAddr) -> Result<Arc<PeerShared>, GrpcError>>;

fn spawn_peer<R: Send + 'static>(
    local_id: NodeId,
    id: NodeId,
    addr: SocketAddr,
    config: &PeerConfig,
    inbound: &mpsc::Sender<Inbound<R>>,
) -> Result<Arc<PeerShared>, GrpcError> {
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let base = Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| {
        GrpcError::PeerAddress {
            peer: id,
            addr,
            message: e.to_string(),
        }
    })?;
    let base = match &config.tls {
        None => base,
        Some(tls) => {
            base.tls_config(tls.client_config(id))
                .map_err(|e| GrpcError::PeerAddress {
                    peer: id,
                    addr,
                    message: format!("TLS client configuration: {e}"),
                })?
        }
    };
    let base = base
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        // Notice a dead connection (peer host gone, not just the process) without waiting
        // for the kernel's TCP timeouts.
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true);
    let channel = base.clone().timeout(config.rpc_timeout).connect_lazy();
    let max_bytes = ServerConfig {
        local_id,
        limits: config.limits,
        snapshots: None,
        gate: None,
        tls: None,
    }
    .max_decoding_message_bytes();
    let client = pb::raft_client::RaftClient::new(channel)
        .max_decoding_message_size(max_bytes)
        .max_encoding_message_size(max_bytes);
    // Snapshot transfers get a connection of their own, without the per-call deadline (a
    // transfer may take longer than any RPC timeout; grpc::snapshot bounds each chunk),
    // which also keeps their bytes from delaying the appends. Connected on first use.
    let snapshot_channel = base.connect_lazy();
    let shared = Arc::new(PeerShared {
        id,
        addr,
        capacity: config.queue_capacity,
        queue: Mutex::new(VecDeque::with_capacity(config.queue_capacity)),
        wake: Notify::new(),
        closed: AtomicBool::new(false),
        closing: Notify::new(),
        stream_unsupported: AtomicBool::new(false),
        backoff: Mutex::new(Backoff {
            failures: 0,
            retry_at: None,
        }),
        queued: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        declined: AtomicU64::new(0),
        refusal_logged: Mutex::new(None),
        not_member: Mutex::new(None),
        probe_client: client.clone(),
        probing: AtomicBool::new(false),
    });
    let snapshot_client = pb::raft_client::RaftClient::new(snapshot_channel)
        .max_decoding_message_size(max_bytes)
        .max_encoding_message_size(max_bytes);
    tokio::spawn(worker(
        local_id,
        Arc::clone(&shared),
        client,
        snapshot_client,
        config.clone(),
        inbound.clone(),
    ));
    Ok(shared)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections below cannot panic halfway (push/pop and counters only), so a poisoned
    // lock still guards consistent data.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The outbound side of the transport: one worker task per peer.
pub struct Peers {
    local_id: NodeId,
    peers: HashMap<NodeId, Arc<PeerShared>>,
    /// Whether InstallSnapshot is carried (the config has snapshot files).
    snapshots_carried: bool,
    /// Starts the worker of a peer added later ([`Peers::add`]).
    spawn: Spawner,
    /// The cluster id requests carry ([`PeerConfig::cluster_id`]).
    cluster_id: Option<u64>,
}

impl Peers {
    /// Creates a lazily connected channel and a worker task per peer. Must be called inside a tokio
    /// (or tokio-uring) runtime; the workers run until [`Peers::shutdown`] or until `Peers` is
    /// dropped.
    ///
    /// # Errors
    /// [`GrpcError::PeerAddress`] if a peer's address does not form a valid URI.
    pub fn start<R: Send + 'static>(
        local_id: NodeId,
        peers: &[(NodeId, SocketAddr)],
        config: PeerConfig,
        inbound: mpsc::Sender<Inbound<R>>,
    ) -> Result<Peers, GrpcError> {
        assert!(
            config.queue_capacity > 0 && config.inflight_rpcs_max > 0,
            "PeerConfig bounds must be positive: {config:?}"
        );
        let snapshots_carried = config.snapshots.is_some();
        let cluster_id = config.cluster_id;
        let spawn: Spawner =
            Box::new(move |id, addr| spawn_peer(local_id, id, addr, &config, &inbound));
        let mut map = HashMap::new();
        for &(id, addr) in peers {
            assert_ne!(id, local_id, "node {local_id} listed as its own peer");
            map.insert(id, spawn(id, addr)?);
        }
        Ok(Peers {
            local_id,
            peers: map,
            snapshots_carried,
            spawn,
            cluster_id,
        })
    }

    /// Connects to a member added at run time (lazily, as at start); a peer already known at
    /// another address is replaced. Returns whether anything changed.
    ///
    /// # Errors
    /// [`GrpcError::PeerAddress`] if the address does not form a valid URI.
    pub fn add(&mut self, id: NodeId, addr: SocketAddr) -> Result<bool, GrpcError> {
        if id == self.local_id {
            return Ok(false);
        }
        if let Some(known) = self.peers.get(&id) {
            if known.addr == addr {
                return Ok(false);
            }
            known.close();
        }
        let shared = (self.spawn)(id, addr)?;
        self.peers.insert(id, shared);
        Ok(true)
    }

    /// Stops the worker of a member that left the configuration (its queued messages are
    /// dropped). Returns whether it was a peer.
    pub fn remove(&mut self, id: NodeId) -> bool {
        match self.peers.remove(&id) {
            Some(peer) => {
                peer.close();
                true
            }
            None => false,
        }
    }

    /// The peers whose gates have refused this node as not a member of their configuration
    /// without a break (no answer delivered in between) for at least `lasting`, the latest
    /// refusal no older than `recent`: evidence that this node was removed (the loop stops it).
    pub fn refusing_as_non_member(&self, lasting: Duration, recent: Duration) -> Vec<NodeId> {
        let now = Instant::now();
        let mut refusing: Vec<NodeId> = self
            .peers
            .values()
            .filter(|p| {
                lock(&p.not_member).is_some_and(|(first, latest)| {
                    now.duration_since(first) >= lasting && now.duration_since(latest) <= recent
                })
            })
            .map(|p| p.id)
            .collect();
        refusing.sort_unstable();
        refusing
    }

    /// Asks each of `ids` (peers; others are skipped) whether this node is a member of the
    /// configuration in effect there (the MembershipProbe RPC), unless a probe to it is still in
    /// flight. Never blocks: each answer arrives on a task of its own. A "no", like a vote answer
    /// marked `sender_not_member`, is evidence for [`Peers::refusing_as_non_member`]; a "yes"
    /// clears that peer's evidence; a failure (the peer is down, unreachable, or predates the
    /// RPC) says nothing. What a learner, which never campaigns, uses to learn that it was
    /// removed (`crate::node::event_loop`).
    pub fn probe_membership(&self, ids: &[NodeId]) {
        let cluster_id = self.cluster_id;
        for id in ids {
            let Some(peer) = self.peers.get(id) else {
                continue;
            };
            if peer.probing.swap(true, Ordering::AcqRel) {
                continue;
            }
            let peer = Arc::clone(peer);
            let local_id = self.local_id;
            tokio::spawn(async move {
                let mut client = peer.probe_client.clone();
                let request = pb::MembershipProbeRequest {
                    route: Some(pb::Route {
                        from: local_id.0,
                        to: peer.id.0,
                    }),
                };
                let answer = client
                    .membership_probe(crate::grpc::gate::peer_request(request, cluster_id))
                    .await;
                match answer {
                    Ok(r) => {
                        let r = r.into_inner();
                        let routed = r
                            .route
                            .is_some_and(|route| route.from == peer.id.0 && route.to == local_id.0);
                        if !routed {
                            tracing::warn!(
                                peer = %peer.id, addr = %peer.addr,
                                "dropping a membership probe answer with a foreign route \
                                 (misconfigured cluster?)"
                            );
                        } else if r.member {
                            *lock(&peer.not_member) = None;
                        } else {
                            note_not_member(&peer, "answered a membership probe");
                        }
                    }
                    Err(status)
                        if status.code() == Code::PermissionDenied
                            && status.message().contains(crate::grpc::gate::NOT_A_MEMBER) =>
                    {
                        note_not_member(&peer, "refused a membership probe");
                    }
                    Err(status) => tracing::debug!(
                        peer = %peer.id, addr = %peer.addr, code = ?status.code(),
                        message = status.message(), "membership probe failed"
                    ),
                }
                peer.probing.store(false, Ordering::Release);
            });
        }
    }

    /// The address `id` is reached at, if it is a peer.
    pub fn address(&self, id: NodeId) -> Option<SocketAddr> {
        self.peers.get(&id).map(|p| p.addr)
    }

    /// Queues a request for its recipient. Never blocks.
    ///
    /// # Errors
    /// `UnknownPeer` if `envelope.to` is not a peer; `NotARequest` for response messages.
    pub fn send(&self, envelope: Envelope) -> Result<Queued, SendError> {
        match envelope.msg {
            Message::RequestVote(_) | Message::AppendEntries(_) | Message::TimeoutNow(_) => {}
            Message::RequestVoteResponse(_) => {
                return Err(SendError::NotARequest("RequestVoteResponse"))
            }
            Message::AppendEntriesResponse(_) => {
                return Err(SendError::NotARequest("AppendEntriesResponse"))
            }
            Message::InstallSnapshot(_) if self.snapshots_carried => {}
            Message::InstallSnapshot(_) => return Err(SendError::NotCarried("InstallSnapshot")),
        }
        debug_assert_eq!(
            envelope.from, self.local_id,
            "sending another node's message"
        );
        let peer = self
            .peers
            .get(&envelope.to)
            .ok_or(SendError::UnknownPeer(envelope.to))?;
        let last_entry = match &envelope.msg {
            Message::AppendEntries(m) => m.entries.last().map(|e| e.index.0),
            _ => None,
        };
        let outcome = {
            let mut queue = lock(&peer.queue);
            let outcome = if queue.len() >= peer.capacity {
                queue.pop_front();
                peer.dropped.fetch_add(1, Ordering::Relaxed);
                Queued::QueuedDroppedOldest
            } else {
                Queued::Queued
            };
            queue.push_back(envelope);
            outcome
        };
        peer.queued.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = last_entry {
            crate::timeline::mark("ae_queued", i);
        }
        peer.wake.notify_one();
        Ok(outcome)
    }

    /// The counters of `peer`, if it is one.
    pub fn stats(&self, peer: NodeId) -> Option<PeerStats> {
        self.peers.get(&peer).map(|p| PeerStats {
            queued: p.queued.load(Ordering::Relaxed),
            dropped: p.dropped.load(Ordering::Relaxed),
            delivered: p.delivered.load(Ordering::Relaxed),
            failed: p.failed.load(Ordering::Relaxed),
            declined: p.declined.load(Ordering::Relaxed),
            queue_len: lock(&p.queue).len() as u64,
        })
    }

    /// The peers' ids, in no particular order.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.keys().copied()
    }

    /// Stops every worker after its current RPCs; queued messages are discarded.
    pub fn shutdown(&self) {
        for peer in self.peers.values() {
            peer.close();
        }
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The per-peer worker: waits for a free RPC slot, honours the backoff, pops the oldest message and
/// starts its RPC, or sends it on the peer's AppendEntries stream (opened on first use, and again
/// after it broke).
async fn worker<R: Send + 'static>(
    local_id: NodeId,
    peer: Arc<PeerShared>,
    client: pb::raft_client::RaftClient<Channel>,
    snapshot_client: pb::raft_client::RaftClient<Channel>,
    config: PeerConfig,
    inbound: mpsc::Sender<Inbound<R>>,
) {
    let slots = Arc::new(Semaphore::new(config.inflight_rpcs_max));
    let mut session: Option<mpsc::Sender<StreamRequest>> = None;
    loop {
        // Take a slot before a message, so that while every slot is busy messages stay queued
        // (where the drop-oldest bound applies) instead of piling up inside the channel. A slot
        // is held until the request's answer (or its failure) came back, on either path.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let retry_at = lock(&peer.backoff).retry_at;
        if let Some(at) = retry_at {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = wait_closed(&peer) => return,
            }
        }
        let envelope = loop {
            if peer.closed.load(Ordering::Acquire) {
                return;
            }
            // Register interest before looking, so a send between the check and the wait is
            // not missed.
            let notified = peer.wake.notified();
            if let Some(e) = lock(&peer.queue).pop_front() {
                break e;
            }
            notified.await;
        };
        let last_entry = match &envelope.msg {
            Message::AppendEntries(m) => m.entries.last().map(|e| e.index.0),
            _ => None,
        };
        let streamed = matches!(envelope.msg, Message::AppendEntries(_))
            && config.stream_append_entries
            && !peer.stream_unsupported.load(Ordering::Relaxed);
        if streamed {
            let convert::WireMessage::AppendEntries(request) = convert::encode_envelope(envelope)
            else {
                unreachable!("an AppendEntries envelope encodes as AppendEntries");
            };
            if session.as_ref().is_none_or(mpsc::Sender::is_closed) {
                session = Some(open_session(
                    local_id,
                    Arc::clone(&peer),
                    client.clone(),
                    config.clone(),
                    inbound.clone(),
                ));
            }
            let item = StreamRequest {
                request,
                slot,
                last_entry,
            };
            if let Some(tx) = &session {
                // Never waits long: the channel holds as many requests as there are slots.
                if tx.send(item).await.is_err() {
                    // The session ended meanwhile: this message is lost (Raft retransmits), the
                    // next one opens a new stream.
                    session = None;
                }
            }
            continue;
        }
        let peer = Arc::clone(&peer);
        let client = client.clone();
        let inbound = inbound.clone();
        let config = config.clone();
        if let (Message::InstallSnapshot(_), Some(files)) = (&envelope.msg, &config.snapshots) {
            // A transfer of its own: it may take long, and the appends and heartbeats behind it
            // in the queue must not wait for it.
            let files = Arc::clone(files);
            let to = envelope.to;
            let client = snapshot_client.clone();
            tokio::spawn(async move {
                let timeout = config.rpc_timeout;
                let cluster_id = config.cluster_id;
                match crate::grpc::snapshot::send_snapshot(
                    client, envelope, files, timeout, cluster_id,
                )
                .await
                {
                    Ok(answer) => deliver(local_id, &peer, answer, false, &inbound).await,
                    Err(status) => {
                        tracing::warn!(to = %to, "snapshot transfer failed: {status}");
                        record_failure(&peer, &config, &status);
                        let _ = inbound.send(Inbound::SnapshotFailed { to }).await;
                    }
                }
                drop(slot);
            });
            continue;
        }
        if let Some(i) = last_entry {
            crate::timeline::mark("ae_rpc_start", i);
        }
        let rtt = round_trip_histogram(envelope.to);
        tokio::spawn(async move {
            let sent_at = Instant::now();
            let result = call(client, envelope, config.cluster_id).await;
            if let (Some(h), Ok(_)) = (&rtt, &result) {
                h.observe(sent_at.elapsed().as_secs_f64());
            }
            if let Some(i) = last_entry {
                crate::timeline::mark("ae_rpc_done", i);
            }
            match result {
                Ok(Some((response, not_member))) => {
                    if not_member {
                        note_not_member(&peer, "answered a vote request");
                    }
                    deliver(local_id, &peer, response, not_member, &inbound).await
                }
                // A one-way message (TimeoutNow) reached the peer.
                Ok(None) => {
                    peer.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Err(status) if status.code() == Code::Aborted => {
                    // The peer is up; its core ignored the request. Not a link failure.
                    peer.declined.fetch_add(1, Ordering::Relaxed);
                }
                Err(status) => record_failure(&peer, &config, &status),
            }
            drop(slot);
        });
    }
}

/// Hands a peer's response to the event loop (after checking its route) and resets the backoff.
/// `not_member`: the peer marked it "the sender is not a member of my configuration" (then it
/// does not clear the evidence of [`Peers::refusing_as_non_member`]; the caller added to it).
async fn deliver<R>(
    local_id: NodeId,
    peer: &PeerShared,
    response: Envelope,
    not_member: bool,
    inbound: &mpsc::Sender<Inbound<R>>,
) {
    {
        let mut backoff = lock(&peer.backoff);
        backoff.failures = 0;
        backoff.retry_at = None;
    }
    if !not_member {
        *lock(&peer.not_member) = None;
    }
    peer.delivered.fetch_add(1, Ordering::Relaxed);
    if response.from != peer.id || response.to != local_id {
        tracing::warn!(
            peer = %peer.id, addr = %peer.addr, from = %response.from, to = %response.to,
            "dropping a response with a foreign route (misconfigured cluster?)"
        );
    } else if inbound.send(Inbound::Response(response)).await.is_err() {
        // The event loop is gone: the node is stopping.
        peer.close();
    }
}

/// Counts a failed RPC (or a broken stream) and schedules the next attempt after the backoff.
fn record_failure(peer: &PeerShared, config: &PeerConfig, status: &tonic::Status) {
    peer.failed.fetch_add(1, Ordering::Relaxed);
    if status.code() == Code::PermissionDenied
        && status.message().contains(crate::grpc::gate::NOT_A_MEMBER)
    {
        mark_not_member(peer);
    }
    let delay = {
        let mut backoff = lock(&peer.backoff);
        backoff.failures = backoff.failures.saturating_add(1);
        let delay = backoff.delay(config.backoff_initial, config.backoff_max);
        backoff.retry_at = Some(Instant::now() + delay);
        delay
    };
    if let Some((refused, why)) = refusal(status) {
        // A refusal (another cluster, not a member, a certificate the peer does not accept)
        // will not heal by retrying: say so loudly, but once per peer and interval, since the
        // worker retries after every backoff.
        if refusal_log_due(peer) {
            let what = if refused {
                format!("peer {} refused this node", peer.id)
            } else {
                format!("no TLS connection with peer {}", peer.id)
            };
            tracing::warn!(
                peer = %peer.id, addr = %peer.addr, code = ?status.code(),
                "{what}: {why} (logged once per {}s while it lasts)",
                REFUSAL_LOG_INTERVAL.as_secs()
            );
        }
    }
    tracing::debug!(
        peer = %peer.id, addr = %peer.addr, code = ?status.code(),
        message = status.message(), retry_in_ms = delay.as_millis() as u64,
        "RPC to peer failed"
    );
}

/// Whether a refusal by `peer` is to be logged now: the first, and then one per
/// [`REFUSAL_LOG_INTERVAL`] (its workers retry after every backoff); records the moment if so.
fn refusal_log_due(peer: &PeerShared) -> bool {
    let now = Instant::now();
    let mut last = lock(&peer.refusal_logged);
    let due = last.is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_INTERVAL);
    if due {
        *last = Some(now);
    }
    due
}

/// Adds to the evidence that `peer` does not count this node as a member (its first and latest
/// moment, [`Peers::refusing_as_non_member`]).
fn mark_not_member(peer: &PeerShared) {
    let now = Instant::now();
    let mut since = lock(&peer.not_member);
    let first = since.map_or(now, |(first, _)| first);
    *since = Some((first, now));
}

/// [`mark_not_member`] for an answer (not a refusal) that says so, logged once per peer and
/// [`REFUSAL_LOG_INTERVAL`] while it lasts (`how`: what the peer did).
fn note_not_member(peer: &PeerShared, how: &str) {
    mark_not_member(peer);
    if refusal_log_due(peer) {
        tracing::warn!(
            peer = %peer.id, addr = %peer.addr,
            "peer {} {how} and said this node {} its configuration (logged once per {}s while \
             it lasts)",
            peer.id,
            crate::grpc::gate::NOT_A_MEMBER,
            REFUSAL_LOG_INTERVAL.as_secs()
        );
    }
}

/// How often a peer's refusal of this node is logged while it lasts.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The reason, when `status` is not a peer that is merely down: `(true, why)` when the peer's
/// gate refused this node, `(false, why)` for a transport failure whose cause is TLS (a
/// handshake either side refused, a certificate either side does not trust).
fn refusal(status: &tonic::Status) -> Option<(bool, String)> {
    if matches!(
        status.code(),
        Code::FailedPrecondition | Code::PermissionDenied | Code::Unauthenticated
    ) {
        return Some((true, status.message().to_string()));
    }
    let mut chain = status.message().to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        // hyper and tonic repeat their cause in their own message: say each thing once.
        let text = e.to_string();
        if !chain.contains(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        source = e.source();
    }
    let lower = chain.to_ascii_lowercase();
    let tls = ["certificate", "handshake", "tls", "alert"]
        .iter()
        .any(|w| lower.contains(w));
    tls.then_some((false, chain))
}

/// One AppendEntries on its way into the peer's stream, with the slot it holds until its answer.
struct StreamRequest {
    request: pb::AppendEntriesRequest,
    slot: OwnedSemaphorePermit,
    last_entry: Option<u64>,
}

/// The slots (and timeline marks) of the requests sent on a stream and not answered yet, oldest
/// first: the stream answers every request exactly once, in order.
/// Requests on the stream not answered yet: their slot, last entry, and when they left (only
/// when the node records `etcd_network_peer_round_trip_time_seconds`).
type Unanswered = Arc<Mutex<VecDeque<(OwnedSemaphorePermit, Option<u64>, Option<Instant>)>>>;

/// This node's round-trip histogram for `peer`, when it records metrics (crate::metrics: the
/// peer tasks run on the node's thread). Taken once per stream or RPC, then observed lock-free
/// of the family.
fn round_trip_histogram(peer: NodeId) -> Option<prometheus_client::metrics::histogram::Histogram> {
    crate::metrics::current().map(|m| {
        m.peer_round_trip_seconds
            .get_or_create(&vec![("To".to_string(), peer.to_string())])
            .clone()
    })
}

/// Opens an `AppendEntriesStream` to the peer on a task of its own and returns the way in.
fn open_session<R: Send + 'static>(
    local_id: NodeId,
    peer: Arc<PeerShared>,
    client: pb::raft_client::RaftClient<Channel>,
    config: PeerConfig,
    inbound: mpsc::Sender<Inbound<R>>,
) -> mpsc::Sender<StreamRequest> {
    let (tx, rx) = mpsc::channel(config.inflight_rpcs_max);
    tokio::spawn(run_session(local_id, peer, client, config, inbound, rx));
    tx
}

/// Runs one AppendEntries stream until it breaks or the node stops: feeds it the requests from
/// `rx` and hands the answers to the event loop. A broken stream counts as a failed RPC (backoff
/// before the next one); the requests it still held are lost, which Raft tolerates.
async fn run_session<R: Send + 'static>(
    local_id: NodeId,
    peer: Arc<PeerShared>,
    mut client: pb::raft_client::RaftClient<Channel>,
    config: PeerConfig,
    inbound: mpsc::Sender<Inbound<R>>,
    rx: mpsc::Receiver<StreamRequest>,
) {
    use tokio_stream::StreamExt;

    let unanswered: Unanswered = Arc::new(Mutex::new(VecDeque::new()));
    let sent = Arc::clone(&unanswered);
    let rtt = round_trip_histogram(peer.id);
    let timed = rtt.is_some();
    let outbound = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |item| {
        if let Some(i) = item.last_entry {
            crate::timeline::mark("ae_rpc_start", i);
        }
        let sent_at = timed.then(Instant::now);
        lock(&sent).push_back((item.slot, item.last_entry, sent_at));
        item.request
    });
    let request = crate::grpc::gate::peer_request(outbound, config.cluster_id);
    let mut responses = match client.append_entries_stream(request).await {
        Ok(r) => r.into_inner(),
        Err(status) if status.code() == Code::Unimplemented => {
            tracing::info!(
                peer = %peer.id, addr = %peer.addr,
                "peer does not serve AppendEntriesStream; using unary AppendEntries"
            );
            peer.stream_unsupported.store(true, Ordering::Relaxed);
            return;
        }
        Err(status) => {
            record_failure(&peer, &config, &status);
            return;
        }
    };
    loop {
        if peer.closed.load(Ordering::Acquire) {
            return;
        }
        let message = tokio::select! {
            m = responses.message() => m,
            _ = wait_closed(&peer) => return,
        };
        match message {
            Ok(Some(m)) => {
                // Frees this request's slot.
                let answered = lock(&unanswered).pop_front();
                if let Some((_, Some(i), _)) = &answered {
                    crate::timeline::mark("ae_rpc_done", *i);
                }
                if let (Some(h), Some((_, _, Some(at)))) = (&rtt, &answered) {
                    h.observe(at.elapsed().as_secs_f64());
                }
                drop(answered);
                if m.declined {
                    peer.declined.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match convert::decode_append_entries_response(m) {
                    Ok(response) => deliver(local_id, &peer, response, false, &inbound).await,
                    Err(e) => {
                        let status = tonic::Status::internal(format!("bad response: {e}"));
                        record_failure(&peer, &config, &status);
                        return;
                    }
                }
            }
            // The peer ended the stream (it is stopping); the next request opens a new one.
            Ok(None) => return,
            Err(status) => {
                record_failure(&peer, &config, &status);
                return;
            }
        }
    }
}

async fn wait_closed(peer: &PeerShared) {
    loop {
        let notified = peer.closing.notified();
        if peer.closed.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

/// Sends one request on its RPC and decodes the response (`None` for a one-way message:
/// TimeoutNow, whose only answer is the election it starts), with whether the peer marked it
/// "the sender is not a member of my configuration" (vote answers only: `sender_not_member`).
async fn call(
    mut client: pb::raft_client::RaftClient<Channel>,
    envelope: Envelope,
    cluster_id: Option<u64>,
) -> Result<Option<(Envelope, bool)>, tonic::Status> {
    use crate::grpc::gate::peer_request;
    let invalid = |e: convert::ConvertError| tonic::Status::internal(format!("bad response: {e}"));
    match convert::encode_envelope(envelope) {
        convert::WireMessage::RequestVote(m) => {
            let response = client
                .request_vote(peer_request(m, cluster_id))
                .await?
                .into_inner();
            let not_member = response.sender_not_member;
            convert::decode_request_vote_response(response)
                .map(|e| Some((e, not_member)))
                .map_err(invalid)
        }
        convert::WireMessage::TimeoutNow(m) => {
            client.timeout_now(peer_request(m, cluster_id)).await?;
            Ok(None)
        }
        convert::WireMessage::AppendEntries(m) => {
            let response = client
                .append_entries(peer_request(m, cluster_id))
                .await?
                .into_inner();
            convert::decode_append_entries_response(response)
                .map(|e| Some((e, false)))
                .map_err(invalid)
        }
        // Peers::send lets only requests through.
        other => unreachable!("peer worker got a response message: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_initial_delay_and_stops_at_the_cap() {
        let initial = Duration::from_millis(10);
        let max = Duration::from_millis(500);
        let delays: Vec<u64> = (1..=10)
            .map(|failures| {
                Backoff {
                    failures,
                    retry_at: None,
                }
                .delay(initial, max)
                .as_millis() as u64
            })
            .collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 500, 500, 500, 500]);
        // Huge failure counts neither overflow nor exceed the cap.
        let b = Backoff {
            failures: u32::MAX,
            retry_at: None,
        };
        assert_eq!(b.delay(initial, max), max);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_message_and_counts_it() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            // Nothing answers on this socket; the queue is all that matters here.
            let black_hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let (inbound, _rx) = mpsc::channel::<Inbound<()>>(1);
            let peers = Peers::start(
                NodeId(1),
                &[(NodeId(2), black_hole.local_addr().expect("addr"))],
                PeerConfig {
                    queue_capacity: 4,
                    inflight_rpcs_max: 1,
                    ..PeerConfig::default()
                },
                inbound,
            )
            .expect("peers");
            let mut outcomes = Vec::new();
            // No await between the sends: the worker cannot take anything meanwhile.
            for term in 1..=20u64 {
                let vote = Envelope {
                    from: NodeId(1),
                    to: NodeId(2),
                    msg: Message::RequestVote(crate::raft::message::RequestVote {
                        term: crate::types::Term(term),
                        candidate_id: NodeId(1),
                        last_log_index: crate::types::LogIndex(0),
                        last_log_term: crate::types::Term(0),
                        pre_vote: false,
                        leader_transfer: false,
                    }),
                };
                outcomes.push(peers.send(vote).expect("queued"));
            }
            assert!(outcomes[..4].iter().all(|o| *o == Queued::Queued));
            assert!(outcomes[4..]
                .iter()
                .all(|o| *o == Queued::QueuedDroppedOldest));
            let shared = &peers.peers[&NodeId(2)];
            let terms: Vec<u64> = lock(&shared.queue).iter().map(|e| e.msg.term().0).collect();
            assert_eq!(terms, [17, 18, 19, 20], "the newest messages survive");
            let stats = peers.stats(NodeId(2)).expect("peer 2");
            assert_eq!((stats.queued, stats.dropped, stats.queue_len), (20, 16, 4));
        });
    }
}
