//! The event loop: the one task that owns the consensus core, drives it, and drains its output.
//!
//! Inputs, in one `select!`: the tick timer (one tick = 1 ms, the core's unit), [`Inbound`]
//! items from the gRPC server and the peer clients (requests, responses, proposals, status
//! queries), completions of durable writes, and shutdown. After every input the loop drains every
//! `Ready` the core has, following the contract in [`crate::raft`]:
//!
//! 1. `messages` go out at once: requests to [`Peers`], responses to the RPC they answer. The
//!    leader's AppendEntries therefore leave before its own write starts (thesis §10.2.1).
//! 2. `truncate_from` / `entries` / `hard_state` become one [`WriteBatch`], submitted to the
//!    [`Durable`] store (one fdatasync per batch when `must_sync`). Batches complete in submission
//!    order; several may be in flight.
//! 3. When a batch is durable: the core's log view is updated ([`Durable::publish`]), the
//!    `persisted_messages` (votes, acknowledgements) go out, and `on_persisted` tells the core.
//!    A Ready with nothing to write still waits for the batches before it, so acknowledgements
//!    never overtake an earlier write.
//! 4. `committed_entries` are applied in order to the [`StateMachine`]; a proposal is answered
//!    once its entry is applied, with the state machine's response bytes, if the applied entry at
//!    its index has the term it was proposed in (otherwise another leader overwrote it and the
//!    client hears "outcome unknown").
//! 5. `read_states` (ReadIndex, thesis §6.4): a confirmed read is answered once the state machine
//!    has applied up to its read index; `dropped_reads` are answered at once with a retryable
//!    refusal. The loop only grants the read: the caller then reads the state machine itself
//!    (shared with it, see [`crate::node`]), at a state at least as new as the read index.
//!
//! Responses ride on the reply of the request's RPC. A request's reply handle waits in
//! [`ReplySlots`] keyed by (peer, kind); the core answers synchronously within `step`, so the
//! Readys drained right after a batch of requests contain every answer the core will give. A
//! response claims the oldest handle of its (peer, kind); handles left over are dropped, which the
//! requester sees as "declined" (the core ignored a stale request).
//!
//! A failed write is fatal (fsyncgate: never retry a failed fdatasync): the loop returns the error
//! and the node stops.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::grpc::server::{Applied, CommandRefused, ReadGrant, ReadRefused};
use crate::grpc::{Inbound, NodeStatus, Peers, ProposeOutcome, ProposeRefused};
use crate::raft::message::{Envelope, Message};
use crate::raft::{ProposeError, RaftNode, ReadIndexError, ReadState, Ready, Role, Storage};
pub use crate::state_machine::StateMachine;
pub use crate::storage::engine::{Durable, PersistFuture, WriteBatch};
use crate::types::{LogEntry, LogIndex, NodeId, Term};

/// The core as the loop drives it. [`RaftNode`] is the implementation; the trait exists so the
/// loop's ordering rules can be tested against a scripted core.
pub trait Consensus {
    type Log: Storage;
    fn tick(&mut self);
    fn step(&mut self, envelope: Envelope);
    fn propose(&mut self, payload: Vec<u8>) -> Result<(LogIndex, Term), ProposeError>;
    /// Registers a linearizable read `ctx` (ReadIndex); it comes back in `Ready::read_states` or
    /// `Ready::dropped_reads`.
    fn read_index(&mut self, ctx: u64) -> Result<(), ReadIndexError>;
    fn has_ready(&self) -> bool;
    fn ready(&mut self) -> Ready;
    fn on_persisted(&mut self, token: Option<(LogIndex, Term)>);
    fn id(&self) -> NodeId;
    fn role(&self) -> Role;
    fn term(&self) -> Term;
    fn leader(&self) -> Option<NodeId>;
    fn commit_index(&self) -> LogIndex;
    fn storage(&self) -> &Self::Log;
    fn storage_mut(&mut self) -> &mut Self::Log;
    /// The last index of the whole log (durable or not). Defaults to the durable log's.
    fn last_index(&self) -> LogIndex {
        self.storage().last_index()
    }
    /// The leader's view of each follower's `match_index`; empty elsewhere. Defaults to empty
    /// (for scripted cores).
    fn peer_match_indexes(&self) -> Vec<(NodeId, LogIndex)> {
        Vec::new()
    }
}

impl<S: Storage> Consensus for RaftNode<S> {
    type Log = S;
    fn tick(&mut self) {
        RaftNode::tick(self)
    }
    fn step(&mut self, envelope: Envelope) {
        RaftNode::step(self, envelope)
    }
    fn propose(&mut self, payload: Vec<u8>) -> Result<(LogIndex, Term), ProposeError> {
        RaftNode::propose(self, payload)
    }
    fn read_index(&mut self, ctx: u64) -> Result<(), ReadIndexError> {
        RaftNode::read_index(self, ctx)
    }
    fn has_ready(&self) -> bool {
        RaftNode::has_ready(self)
    }
    fn ready(&mut self) -> Ready {
        RaftNode::ready(self)
    }
    fn on_persisted(&mut self, token: Option<(LogIndex, Term)>) {
        RaftNode::on_persisted(self, token)
    }
    fn id(&self) -> NodeId {
        RaftNode::id(self)
    }
    fn role(&self) -> Role {
        RaftNode::role(self)
    }
    fn term(&self) -> Term {
        RaftNode::term(self)
    }
    fn leader(&self) -> Option<NodeId> {
        RaftNode::leader(self)
    }
    fn commit_index(&self) -> LogIndex {
        RaftNode::commit_index(self)
    }
    fn storage(&self) -> &S {
        RaftNode::storage(self)
    }
    fn storage_mut(&mut self) -> &mut S {
        RaftNode::storage_mut(self)
    }
    fn last_index(&self) -> LogIndex {
        RaftNode::last_index(self)
    }
    fn peer_match_indexes(&self) -> Vec<(NodeId, LogIndex)> {
        RaftNode::peer_match_indexes(self)
    }
}

/// The kind of request a reply handle answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Vote,
    Append,
}

impl RequestKind {
    /// The kind of a request message, `None` for responses.
    pub fn of_request(msg: &Message) -> Option<RequestKind> {
        match msg {
            Message::RequestVote(_) => Some(RequestKind::Vote),
            Message::AppendEntries(_) => Some(RequestKind::Append),
            Message::RequestVoteResponse(_) | Message::AppendEntriesResponse(_) => None,
        }
    }

    /// The kind of request a response message answers, `None` for requests.
    pub fn answered_by(msg: &Message) -> Option<RequestKind> {
        match msg {
            Message::RequestVoteResponse(_) => Some(RequestKind::Vote),
            Message::AppendEntriesResponse(_) => Some(RequestKind::Append),
            Message::RequestVote(_) | Message::AppendEntries(_) => None,
        }
    }
}

/// Reply handles of inbound requests, waiting for the core's responses.
#[derive(Debug, Default)]
pub struct ReplySlots {
    pending: HashMap<(NodeId, RequestKind), VecDeque<oneshot::Sender<Envelope>>>,
}

impl ReplySlots {
    pub fn register(&mut self, from: NodeId, kind: RequestKind, reply: oneshot::Sender<Envelope>) {
        self.pending
            .entry((from, kind))
            .or_default()
            .push_back(reply);
    }

    /// The oldest handle waiting for `response` (matched by recipient and kind).
    pub fn claim(&mut self, response: &Envelope) -> Option<oneshot::Sender<Envelope>> {
        let kind = RequestKind::answered_by(&response.msg)?;
        self.pending.get_mut(&(response.to, kind))?.pop_front()
    }

    /// Drops every waiting handle (their requesters see "declined"); returns how many.
    pub fn decline_all(&mut self) -> usize {
        let n = self.pending.values().map(VecDeque::len).sum();
        self.pending.clear();
        n
    }

    pub fn len(&self) -> usize {
        self.pending.values().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A Ready whose writes are in flight, with what must wait for them.
struct InFlight<E> {
    batch: Rc<WriteBatch>,
    /// `None` for a Ready with nothing to write (it only waits for the batches before it).
    write: Option<PersistFuture<E>>,
    /// Responses bound to their reply handles at Ready time, sent once durable.
    persisted: Vec<(Envelope, Option<oneshot::Sender<Envelope>>)>,
    /// Requests that must wait for durability too (rare: a vote request after a term change).
    persisted_requests: Vec<Envelope>,
    token: Option<(LogIndex, Term)>,
}

type ProposeReply = oneshot::Sender<Result<ProposeOutcome, ProposeRefused>>;
type CommandReply = oneshot::Sender<Result<Applied, CommandRefused>>;
type ReadReply = oneshot::Sender<Result<ReadGrant, ReadRefused>>;

/// Why [`EventLoop::propose_bounded`] did not propose (each service words it its own way).
enum Refusal {
    Overloaded {
        pending: usize,
    },
    NotLeader {
        leader_hint: Option<NodeId>,
    },
    TooLarge {
        payload_bytes: usize,
        max_bytes: u64,
    },
}

/// Who waits for a proposal: the Operator service (index and term) or a client API handler
/// (the state machine's response too).
enum Proposer {
    Operator(ProposeReply),
    Command(CommandReply),
}

/// Static facts the loop needs.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    pub tick: Duration,
    /// Addresses of every member, for NotLeader answers.
    pub addresses: HashMap<NodeId, SocketAddr>,
    /// The most inbound items handled before the loop drains the core's output (batching).
    pub inbound_batch_max: usize,
    /// The most proposals waiting for their commit; beyond it proposals are refused (not
    /// appended), so clients that outpace the cluster cannot grow the leader's memory unbounded.
    pub proposals_pending_max: usize,
    /// The most linearizable reads registered and not yet answered; beyond it reads are refused.
    pub reads_pending_max: usize,
}

/// Why the loop stopped other than by a clean shutdown.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// A durable write failed; the node must stop (its disk state is unknown).
    #[error("durable write failed, stopping the node: {0}")]
    Durable(Box<dyn std::error::Error + Send + Sync>),
    /// Every sender of the inbound channel is gone (the server stopped unexpectedly).
    #[error("the inbound channel closed while the node was running")]
    InboundClosed,
}

/// Counters the loop keeps (logged at shutdown, useful in tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoopStats {
    pub ticks: u64,
    pub readies: u64,
    pub batches_written: u64,
    pub requests_declined: u64,
    pub responses_without_request: u64,
    pub send_refused: u64,
}

/// The loop's state besides the core.
pub struct EventLoop<C: Consensus, D: Durable<Log = C::Log>, M: StateMachine> {
    core: C,
    durable: D,
    state_machine: M,
    peers: Peers,
    config: LoopConfig,
    slots: ReplySlots,
    in_flight: VecDeque<InFlight<D::Error>>,
    /// index -> (term proposed in, who waits).
    proposals: BTreeMap<LogIndex, (Term, Proposer)>,
    /// Reads registered with the core (ReadIndex), by ctx, not yet confirmed or dropped.
    reads_registered: HashMap<u64, ReadReply>,
    /// Confirmed reads waiting for the state machine to reach their read index.
    reads_confirmed: BTreeMap<LogIndex, Vec<ReadReply>>,
    reads_confirmed_len: usize,
    next_read_ctx: u64,
    applied_index: LogIndex,
    last_role: Role,
    stats: LoopStats,
}

impl<C: Consensus, D: Durable<Log = C::Log>, M: StateMachine> EventLoop<C, D, M> {
    /// `applied_index` is what the state machine already reflects (0 for the identity machine).
    pub fn new(
        core: C,
        durable: D,
        state_machine: M,
        peers: Peers,
        config: LoopConfig,
        applied_index: LogIndex,
    ) -> Self {
        EventLoop {
            core,
            durable,
            state_machine,
            peers,
            config,
            slots: ReplySlots::default(),
            in_flight: VecDeque::new(),
            proposals: BTreeMap::new(),
            reads_registered: HashMap::new(),
            reads_confirmed: BTreeMap::new(),
            reads_confirmed_len: 0,
            next_read_ctx: 0,
            applied_index,
            last_role: Role::Follower,
            stats: LoopStats::default(),
        }
    }

    /// Runs until `shutdown` completes (then finishes the in-flight writes) or a fatal error.
    pub async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<LoopStats, LoopError> {
        let mut ticker = tokio::time::interval(self.config.tick);
        // A stalled loop catches up on the ticks it missed: logical time must track real time,
        // or election timeouts would silently stretch under load.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                result = next_durable(&mut self.in_flight) => {
                    result.map_err(|e| LoopError::Durable(Box::new(e)))?;
                    self.complete_durable_prefix();
                }
                _ = ticker.tick() => {
                    self.stats.ticks += 1;
                    self.core.tick();
                }
                item = inbound.recv() => {
                    let Some(item) = item else { return Err(LoopError::InboundClosed) };
                    self.handle(item);
                    // Batch whatever else is already waiting, so one Ready (and one fdatasync)
                    // covers many requests.
                    for _ in 1..self.config.inbound_batch_max {
                        match inbound.try_recv() {
                            Ok(item) => self.handle(item),
                            Err(_) => break,
                        }
                    }
                }
            }
            self.drain_ready();
        }
        // Graceful stop: finish the writes already started so what was acknowledged stays
        // acknowledged, then let everything else go.
        while !self.in_flight.is_empty() {
            next_durable(&mut self.in_flight)
                .await
                .map_err(|e| LoopError::Durable(Box::new(e)))?;
            self.complete_durable_prefix();
        }
        self.peers.shutdown();
        tracing::info!(stats = ?self.stats, "event loop stopped");
        Ok(self.stats)
    }

    fn handle(&mut self, item: Inbound) {
        match item {
            Inbound::Request { envelope, reply } => {
                if let Message::AppendEntries(m) = &envelope.msg {
                    if let Some(last) = m.entries.last() {
                        crate::timeline::mark("f_step", last.index.0);
                    }
                }
                if let Some(kind) = RequestKind::of_request(&envelope.msg) {
                    self.slots.register(envelope.from, kind, reply);
                }
                self.core.step(envelope);
            }
            Inbound::Response(envelope) => {
                if let Message::AppendEntriesResponse(m) = &envelope.msg {
                    crate::timeline::mark("ack_in", m.last_log_index.0);
                }
                if let Message::RequestVoteResponse(m) = &envelope.msg {
                    tracing::debug!(
                        "📥 Vote response from node {}: granted={} term={}{}",
                        envelope.from,
                        m.vote_granted,
                        m.term,
                        if m.pre_vote { " (pre-vote)" } else { "" }
                    );
                }
                self.core.step(envelope);
            }
            Inbound::Propose { payload, reply } => match self.propose_bounded(payload) {
                Ok((index, term)) => {
                    self.proposals
                        .insert(index, (term, Proposer::Operator(reply)));
                }
                Err(Refusal::Overloaded { pending }) => {
                    let _ = reply.send(Err(ProposeRefused::Overloaded { pending }));
                }
                Err(Refusal::TooLarge {
                    payload_bytes,
                    max_bytes,
                }) => {
                    let _ = reply.send(Err(ProposeRefused::TooLarge {
                        payload_bytes,
                        max_bytes,
                    }));
                }
                Err(Refusal::NotLeader { leader_hint }) => {
                    let leader_address = leader_hint
                        .and_then(|l| self.config.addresses.get(&l))
                        .map(ToString::to_string);
                    let _ = reply.send(Ok(ProposeOutcome::NotLeader {
                        leader: leader_hint,
                        leader_address,
                    }));
                }
            },
            Inbound::Command { payload, reply } => match self.propose_bounded(payload) {
                Ok((index, term)) => {
                    self.proposals
                        .insert(index, (term, Proposer::Command(reply)));
                }
                Err(Refusal::Overloaded { pending }) => {
                    let _ = reply.send(Err(CommandRefused::Overloaded { pending }));
                }
                Err(Refusal::TooLarge {
                    payload_bytes,
                    max_bytes,
                }) => {
                    let _ = reply.send(Err(CommandRefused::TooLarge {
                        payload_bytes,
                        max_bytes,
                    }));
                }
                Err(Refusal::NotLeader { leader_hint }) => {
                    let _ = reply.send(Err(self.not_leader(leader_hint)));
                }
            },
            Inbound::Read {
                linearizable,
                reply,
            } => self.register_read(linearizable, reply),
            Inbound::Status { reply } => {
                let _ = reply.send(self.status());
            }
        }
    }

    /// Proposes `payload` unless [`LoopConfig::proposals_pending_max`] proposals already wait
    /// for their commit or this node does not lead.
    fn propose_bounded(&mut self, payload: Vec<u8>) -> Result<(LogIndex, Term), Refusal> {
        let pending = self.proposals.len();
        if pending >= self.config.proposals_pending_max {
            return Err(Refusal::Overloaded { pending });
        }
        self.core.propose(payload).map_err(|e| match e {
            ProposeError::NotLeader { leader_hint } => Refusal::NotLeader { leader_hint },
            ProposeError::TooLarge {
                payload_bytes,
                max_bytes,
            } => Refusal::TooLarge {
                payload_bytes,
                max_bytes,
            },
        })
    }

    fn not_leader(&self, leader_hint: Option<NodeId>) -> CommandRefused {
        CommandRefused::NotLeader {
            leader: leader_hint,
            leader_address: leader_hint.and_then(|l| self.config.addresses.get(&l).copied()),
        }
    }

    /// A serializable read is granted at once at the current applied index; a linearizable one
    /// is registered with the core (ReadIndex) and granted in [`Self::on_read_state`].
    fn register_read(&mut self, linearizable: bool, reply: ReadReply) {
        if !linearizable {
            let _ = reply.send(Ok(self.read_grant()));
            return;
        }
        let pending = self.reads_registered.len() + self.reads_confirmed_len;
        if pending >= self.config.reads_pending_max {
            let _ = reply.send(Err(ReadRefused::Overloaded { pending }));
            return;
        }
        self.next_read_ctx += 1;
        let ctx = self.next_read_ctx;
        match self.core.read_index(ctx) {
            Ok(()) => {
                self.reads_registered.insert(ctx, reply);
            }
            Err(ReadIndexError::NotLeader { leader_hint }) => {
                let refused = ReadRefused::NotLeader {
                    leader: leader_hint,
                    leader_address: leader_hint
                        .and_then(|l| self.config.addresses.get(&l).copied()),
                };
                let _ = reply.send(Err(refused));
            }
        }
    }

    fn read_grant(&self) -> ReadGrant {
        ReadGrant {
            applied_index: self.applied_index,
            term: self.core.term(),
            leader: self.core.leader(),
        }
    }

    /// Thesis §6.4 step 4: the read may be served once the state machine has applied up to the
    /// read index.
    fn on_read_state(&mut self, read: ReadState) {
        let Some(reply) = self.reads_registered.remove(&read.ctx) else {
            // Not ours (cannot happen: every ctx comes from register_read) or answered already.
            tracing::warn!(ctx = read.ctx, "a confirmed read nobody waits for");
            return;
        };
        if read.index <= self.applied_index {
            let _ = reply.send(Ok(self.read_grant()));
        } else {
            self.reads_confirmed
                .entry(read.index)
                .or_default()
                .push(reply);
            self.reads_confirmed_len += 1;
        }
    }

    fn on_read_dropped(&mut self, ctx: u64) {
        if let Some(reply) = self.reads_registered.remove(&ctx) {
            let _ = reply.send(Err(ReadRefused::LeadershipLost));
        }
    }

    /// Grants every confirmed read whose index the state machine has reached.
    fn grant_applied_reads(&mut self) {
        while let Some(first) = self.reads_confirmed.first_entry() {
            if *first.key() > self.applied_index {
                break;
            }
            let replies = first.remove();
            self.reads_confirmed_len -= replies.len();
            let grant = self.read_grant();
            for reply in replies {
                let _ = reply.send(Ok(grant));
            }
        }
    }

    fn status(&self) -> NodeStatus {
        let log = self.core.storage();
        NodeStatus {
            node_id: self.core.id(),
            role: self.core.role(),
            term: self.core.term(),
            leader: self.core.leader(),
            commit_index: self.core.commit_index(),
            applied_index: self.applied_index,
            first_log_index: log.first_index(),
            last_log_index: self.core.last_index(),
            peers: self.core.peer_match_indexes(),
        }
    }

    /// Step 1-4 of the module docs for every Ready the core has.
    fn drain_ready(&mut self) {
        while self.core.has_ready() {
            let ready = self.core.ready();
            self.stats.readies += 1;
            self.take_ready(ready);
        }
        // Every request handled above has been answered or ignored by now.
        let declined = self.slots.decline_all();
        self.stats.requests_declined += declined as u64;
        self.log_role_change();
    }

    fn take_ready(&mut self, ready: Ready) {
        let token = ready.persist_token();
        let Ready {
            messages,
            truncate_from,
            entries,
            hard_state,
            must_sync,
            persisted_messages,
            committed_entries,
            read_states,
            dropped_reads,
        } = ready;
        self.log_outbound(&messages);
        for envelope in messages {
            self.route(envelope, None);
        }
        let mut persisted = Vec::new();
        let mut persisted_requests = Vec::new();
        for envelope in persisted_messages {
            if RequestKind::answered_by(&envelope.msg).is_some() {
                // Bind the answer to its handle now, while the request's slot is still waiting.
                let slot = self.slots.claim(&envelope);
                persisted.push((envelope, slot));
            } else {
                persisted_requests.push(envelope);
            }
        }
        let batch = Rc::new(WriteBatch {
            truncate_from,
            entries,
            hard_state,
            must_sync,
        });
        let write = if batch.is_empty() {
            None
        } else {
            self.stats.batches_written += 1;
            Some(self.durable.persist(Rc::clone(&batch)))
        };
        self.in_flight.push_back(InFlight {
            batch,
            write,
            persisted,
            persisted_requests,
            token,
        });
        // Entries handed out as committed are durable locally (core contract), so they can be
        // applied now, before this Ready's own write completes.
        for entry in committed_entries {
            self.apply(entry);
        }
        // After applying: a read confirmed at an index this Ready's entries reached is granted
        // at once.
        for read in read_states {
            self.on_read_state(read);
        }
        for ctx in dropped_reads {
            self.on_read_dropped(ctx);
        }
        self.grant_applied_reads();
        // Readys with nothing to write complete as soon as everything before them has.
        self.complete_durable_prefix();
    }

    /// Completes, oldest first, every in-flight Ready whose write is done (or that had none) and
    /// that has no unfinished write before it.
    fn complete_durable_prefix(&mut self) {
        while self.in_flight.front().is_some_and(|f| f.write.is_none()) {
            if let Some(done) = self.in_flight.pop_front() {
                self.complete(done);
            }
        }
    }

    /// A Ready is durable: publish it, send what waited for it, tell the core.
    fn complete(&mut self, done: InFlight<D::Error>) {
        if !done.batch.is_empty() {
            self.durable.publish(self.core.storage_mut(), &done.batch);
        }
        for (envelope, slot) in done.persisted {
            self.deliver_response(envelope, slot);
        }
        for envelope in done.persisted_requests {
            self.route(envelope, None);
        }
        self.core.on_persisted(done.token);
    }

    fn route(&mut self, envelope: Envelope, slot: Option<oneshot::Sender<Envelope>>) {
        if RequestKind::of_request(&envelope.msg).is_some() {
            if let Err(e) = self.peers.send(envelope) {
                self.stats.send_refused += 1;
                tracing::warn!(error = %e, "core produced a message the transport refused");
            }
            return;
        }
        let slot = slot.or_else(|| self.slots.claim(&envelope));
        self.deliver_response(envelope, slot);
    }

    fn deliver_response(&mut self, envelope: Envelope, slot: Option<oneshot::Sender<Envelope>>) {
        match slot {
            // The requester may have given up (deadline); nothing to do then.
            Some(slot) => {
                if let Message::AppendEntriesResponse(m) = &envelope.msg {
                    crate::timeline::mark("f_ack_out", m.last_log_index.0);
                }
                let _ = slot.send(envelope);
            }
            None => {
                self.stats.responses_without_request += 1;
                tracing::debug!(to = %envelope.to, "dropping a response no request is waiting for");
            }
        }
    }

    fn apply(&mut self, entry: LogEntry) {
        assert_eq!(
            entry.index,
            self.applied_index.next(),
            "committed entries must be applied in order: applied {} got {}",
            self.applied_index,
            entry.index
        );
        let response = self.state_machine.apply(&entry);
        self.applied_index = entry.index;
        // Proposals at or below the applied index are decided now.
        let mut response = Some(response);
        while let Some(first) = self.proposals.first_entry() {
            if *first.key() > entry.index {
                break;
            }
            let (index, (term, proposer)) = first.remove_entry();
            if index == entry.index && term == entry.term {
                match proposer {
                    Proposer::Operator(reply) => {
                        let _ = reply.send(Ok(ProposeOutcome::Committed { index, term }));
                    }
                    Proposer::Command(reply) => {
                        let _ = reply.send(Ok(Applied {
                            index,
                            term,
                            response: response.take().unwrap_or_default(),
                        }));
                    }
                }
            }
            // Otherwise another leader's entry took that index: dropping the reply tells the
            // client the outcome is unknown (it was not committed under this proposal).
        }
    }

    fn log_outbound(&self, messages: &[Envelope]) {
        let mut heartbeats = 0usize;
        for envelope in messages {
            match &envelope.msg {
                Message::RequestVote(m) => tracing::debug!(
                    "📤 Requesting {} from node {} for term {}",
                    if m.pre_vote { "pre-vote" } else { "vote" },
                    envelope.to,
                    m.term
                ),
                Message::AppendEntries(m) if m.entries.is_empty() => heartbeats += 1,
                _ => {}
            }
        }
        if heartbeats > 0 {
            tracing::debug!("💓 Sending heartbeats to {heartbeats} followers...");
        }
    }

    fn log_role_change(&mut self) {
        let role = self.core.role();
        if role == self.last_role {
            return;
        }
        match role {
            Role::Leader => {
                tracing::info!(term = %self.core.term(), "👑 Won election! Becoming leader...")
            }
            Role::Candidate => tracing::info!(
                "🗳️ Election timeout: campaigning for term {}",
                self.core.term()
            ),
            Role::PreCandidate => tracing::debug!("pre-vote campaign started"),
            Role::Follower => match self.core.leader() {
                Some(leader) => {
                    tracing::info!("following leader {leader} in term {}", self.core.term())
                }
                None => tracing::info!("follower in term {}", self.core.term()),
            },
        }
        self.last_role = role;
    }
}

/// Waits for the oldest in-flight write; pending forever when there is none, so `select!` simply
/// never picks this branch then.
async fn next_durable<E>(in_flight: &mut VecDeque<InFlight<E>>) -> Result<(), E> {
    match in_flight.front_mut().and_then(|f| f.write.as_mut()) {
        Some(write) => {
            let result = write.as_mut().await;
            if let Some(front) = in_flight.front_mut() {
                // Completed: make sure it is not polled again.
                front.write = None;
            }
            result
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::message::{AppendEntriesResponse, RequestVoteResponse};
    use crate::raft::HardState;

    fn vote_response(from: u32, to: u32) -> Envelope {
        Envelope {
            from: NodeId(from),
            to: NodeId(to),
            msg: Message::RequestVoteResponse(RequestVoteResponse {
                term: Term(1),
                vote_granted: true,
                pre_vote: false,
            }),
        }
    }

    fn append_response(from: u32, to: u32, last: u64) -> Envelope {
        Envelope {
            from: NodeId(from),
            to: NodeId(to),
            msg: Message::AppendEntriesResponse(AppendEntriesResponse {
                term: Term(1),
                success: true,
                last_log_index: LogIndex(last),
                conflict_term: None,
                conflict_index: None,
                read_seq: 0,
            }),
        }
    }

    #[test]
    fn responses_claim_the_oldest_slot_of_their_peer_and_kind() {
        let mut slots = ReplySlots::default();
        let (a1, mut r_a1) = oneshot::channel();
        let (a2, mut r_a2) = oneshot::channel();
        let (v, mut r_v) = oneshot::channel();
        let (other, mut r_other) = oneshot::channel();
        slots.register(NodeId(2), RequestKind::Append, a1);
        slots.register(NodeId(2), RequestKind::Append, a2);
        slots.register(NodeId(2), RequestKind::Vote, v);
        slots.register(NodeId(3), RequestKind::Append, other);

        // Node 1 answering node 2's first AppendEntries: the oldest Append slot of node 2.
        let first = append_response(1, 2, 5);
        slots
            .claim(&first)
            .expect("a slot waits")
            .send(first.clone())
            .expect("receiver alive");
        assert_eq!(r_a1.try_recv(), Ok(first));
        assert!(
            r_a2.try_recv().is_err(),
            "the second append is still waiting"
        );
        let vote = vote_response(1, 2);
        slots
            .claim(&vote)
            .expect("vote slot")
            .send(vote.clone())
            .expect("alive");
        assert_eq!(r_v.try_recv(), Ok(vote));

        // What the core did not answer is declined: its requester sees a closed channel.
        assert_eq!(slots.decline_all(), 2);
        assert!(slots.is_empty());
        assert_eq!(r_a2.try_recv(), Err(oneshot::error::TryRecvError::Closed));
        assert_eq!(
            r_other.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        );
        assert!(slots.claim(&append_response(1, 3, 1)).is_none());
    }

    #[test]
    fn an_empty_batch_is_empty_and_sync_alone_does_not_make_it_a_write() {
        assert!(WriteBatch::default().is_empty());
        assert!(WriteBatch {
            must_sync: true,
            ..WriteBatch::default()
        }
        .is_empty());
        assert!(!WriteBatch {
            hard_state: Some(HardState::default()),
            ..WriteBatch::default()
        }
        .is_empty());
    }

    // ---- The loop against a scripted core and a gated durable store ----------------------------

    use std::cell::RefCell;

    use crate::grpc::{PeerConfig, Peers};
    use crate::raft::message::AppendEntries;
    use crate::raft::MemStorage;
    use crate::types::EntryType;

    /// A core that answers each input with the next scripted Readys and records what the loop
    /// told it.
    struct Scripted {
        script: VecDeque<Vec<Ready>>,
        pending: VecDeque<Ready>,
        log: MemStorage,
        events: Rc<RefCell<Vec<String>>>,
        next_proposal: VecDeque<(LogIndex, Term)>,
        /// Whether `read_index` accepts reads (as a leader) or refuses them (not the leader).
        accepts_reads: bool,
    }

    impl Scripted {
        fn input(&mut self, what: String) {
            self.events.borrow_mut().push(what);
            if let Some(readies) = self.script.pop_front() {
                self.pending.extend(readies);
            }
        }
    }

    impl Consensus for Scripted {
        type Log = MemStorage;
        fn tick(&mut self) {}
        fn step(&mut self, envelope: Envelope) {
            self.input(format!("step from {}", envelope.from));
        }
        fn propose(&mut self, _payload: Vec<u8>) -> Result<(LogIndex, Term), ProposeError> {
            self.input("propose".into());
            self.next_proposal
                .pop_front()
                .ok_or(ProposeError::NotLeader {
                    leader_hint: Some(NodeId(3)),
                })
        }
        fn read_index(&mut self, ctx: u64) -> Result<(), ReadIndexError> {
            if self.accepts_reads {
                self.input(format!("read_index {ctx}"));
                return Ok(());
            }
            Err(ReadIndexError::NotLeader {
                leader_hint: Some(NodeId(3)),
            })
        }
        fn has_ready(&self) -> bool {
            !self.pending.is_empty()
        }
        fn ready(&mut self) -> Ready {
            self.pending.pop_front().expect("has_ready was true")
        }
        fn on_persisted(&mut self, token: Option<(LogIndex, Term)>) {
            self.events
                .borrow_mut()
                .push(format!("on_persisted {:?}", token.map(|(i, t)| (i.0, t.0))));
        }
        fn id(&self) -> NodeId {
            NodeId(1)
        }
        fn role(&self) -> Role {
            Role::Leader
        }
        fn term(&self) -> Term {
            Term(1)
        }
        fn leader(&self) -> Option<NodeId> {
            Some(NodeId(1))
        }
        fn commit_index(&self) -> LogIndex {
            LogIndex(0)
        }
        fn storage(&self) -> &MemStorage {
            &self.log
        }
        fn storage_mut(&mut self) -> &mut MemStorage {
            &mut self.log
        }
    }

    /// Writes complete only when the test opens their gate, in submission order.
    struct Gated {
        gates: Rc<RefCell<VecDeque<oneshot::Sender<()>>>>,
        events: Rc<RefCell<Vec<String>>>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("gate dropped")]
    struct GateDropped;

    impl Durable for Gated {
        type Log = MemStorage;
        type Error = GateDropped;
        fn persist(&mut self, batch: Rc<WriteBatch>) -> PersistFuture<GateDropped> {
            let (open, opened) = oneshot::channel();
            self.gates.borrow_mut().push_back(open);
            self.events
                .borrow_mut()
                .push(format!("persist {} entries", batch.entries.len()));
            Box::pin(async move { opened.await.map_err(|_| GateDropped) })
        }
        fn publish(&mut self, log: &mut MemStorage, batch: &WriteBatch) {
            if let Some(from) = batch.truncate_from {
                log.truncate_suffix(from);
            }
            log.append(&batch.entries);
        }
    }

    fn entry(index: u64, term: u64) -> LogEntry {
        LogEntry {
            term: Term(term),
            index: LogIndex(index),
            entry_type: EntryType::Normal,
            payload: vec![index as u8],
        }
    }

    fn heartbeat(to: u32) -> Envelope {
        Envelope {
            from: NodeId(1),
            to: NodeId(to),
            msg: Message::AppendEntries(AppendEntries {
                term: Term(1),
                leader_id: NodeId(1),
                prev_log_index: LogIndex(0),
                prev_log_term: Term(0),
                entries: vec![],
                leader_commit: LogIndex(0),
                read_seq: 0,
            }),
        }
    }

    /// Lets the loop (and the peer workers) run until nothing is runnable.
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn the_loop_sends_before_persisting_and_acknowledges_only_after_durability() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async {
            let events = Rc::new(RefCell::new(Vec::new()));
            let gates = Rc::new(RefCell::new(VecDeque::new()));
            let script = VecDeque::from(vec![
                // Input 1 (vote request from 2): an AppendEntries to 3 that may go now, an entry
                // and hard state to write, and the vote answer that must wait for the write.
                vec![Ready {
                    messages: vec![heartbeat(3)],
                    entries: vec![entry(1, 1)],
                    hard_state: Some(HardState {
                        term: Term(1),
                        vote: Some(NodeId(2)),
                        commit: LogIndex(0),
                    }),
                    must_sync: true,
                    persisted_messages: vec![vote_response(1, 2)],
                    ..Ready::default()
                }],
                // Input 2 (append request from 2): nothing to write, but its acknowledgement must
                // still wait for the write of input 1.
                vec![Ready {
                    persisted_messages: vec![append_response(1, 2, 1)],
                    ..Ready::default()
                }],
                // Input 3 (append request from 2): the core ignores it.
                vec![],
                // Inputs 4 and 5 (proposals at index 2 and 3, term 1): nothing yet. (A third
                // proposal is refused by the loop's pending bound and never reaches the core.)
                vec![],
                vec![],
                // Input 6 (step from 3): entries 1..3 committed; index 3 holds another leader's
                // entry (term 2), so only the proposal at index 2 is answered as committed.
                vec![Ready {
                    committed_entries: vec![entry(1, 1), entry(2, 1), entry(3, 2)],
                    ..Ready::default()
                }],
            ]);
            let core = Scripted {
                script,
                pending: VecDeque::new(),
                log: MemStorage::default(),
                events: Rc::clone(&events),
                next_proposal: VecDeque::from(vec![(LogIndex(2), Term(1)), (LogIndex(3), Term(1))]),
                accepts_reads: false,
            };
            let durable = Gated {
                gates: Rc::clone(&gates),
                events: Rc::clone(&events),
            };
            // Peer 3 is a bare TCP listener: a connection arriving there shows that the
            // AppendEntries left while the write was still in flight.
            let peer_3 = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let (inbound_tx, inbound_rx) = mpsc::channel(16);
            let peers = Peers::start(
                NodeId(1),
                &[(NodeId(3), peer_3.local_addr().expect("addr"))],
                PeerConfig::default(),
                inbound_tx.clone(),
            )
            .expect("peers");
            let config = LoopConfig {
                tick: Duration::from_secs(3600),
                addresses: HashMap::from([(NodeId(3), "127.0.0.1:18003".parse().expect("addr"))]),
                inbound_batch_max: 1,
                proposals_pending_max: 2,
                reads_pending_max: 2,
            };
            let event_loop = EventLoop::new(core, durable, (), peers, config, LogIndex::ZERO);

            let (stop, stopped) = oneshot::channel::<()>();
            let handle = tokio::task::spawn_local(event_loop.run(inbound_rx, async move {
                let _ = stopped.await;
            }));

            let request = |from: u32, msg: Message| {
                let (reply, answer) = oneshot::channel();
                (
                    Inbound::Request {
                        envelope: Envelope {
                            from: NodeId(from),
                            to: NodeId(1),
                            msg,
                        },
                        reply,
                    },
                    answer,
                )
            };
            let vote = crate::raft::message::RequestVote {
                term: Term(1),
                candidate_id: NodeId(2),
                last_log_index: LogIndex(0),
                last_log_term: Term(0),
                pre_vote: false,
            };
            let append = match heartbeat(1).msg {
                Message::AppendEntries(m) => m,
                _ => unreachable!(),
            };

            let (item, mut vote_answer) = request(2, Message::RequestVote(vote));
            inbound_tx.send(item).await.expect("loop alive");
            settle().await;
            assert_eq!(gates.borrow().len(), 1, "one write in flight");
            assert_eq!(
                vote_answer.try_recv(),
                Err(oneshot::error::TryRecvError::Empty),
                "the vote must not leave before its write is durable"
            );
            let (_conn, _) = tokio::time::timeout(Duration::from_secs(5), peer_3.accept())
                .await
                .expect("the AppendEntries to peer 3 leaves before the write completes")
                .expect("accept");
            assert_eq!(gates.borrow().len(), 1, "the write is still in flight");

            let (item, mut ack_answer) = request(2, Message::AppendEntries(append.clone()));
            inbound_tx.send(item).await.expect("loop alive");
            settle().await;
            assert_eq!(
                ack_answer.try_recv(),
                Err(oneshot::error::TryRecvError::Empty),
                "an acknowledgement must not overtake an earlier write"
            );

            let open = gates.borrow_mut().pop_front().expect("gate");
            open.send(()).expect("write waiting");
            settle().await;
            assert_eq!(vote_answer.try_recv(), Ok(vote_response(1, 2)));
            assert_eq!(ack_answer.try_recv(), Ok(append_response(1, 2, 1)));

            let (item, mut ignored) = request(2, Message::AppendEntries(append));
            inbound_tx.send(item).await.expect("loop alive");
            settle().await;
            assert_eq!(
                ignored.try_recv(),
                Err(oneshot::error::TryRecvError::Closed),
                "a request the core ignores is declined"
            );

            let mut answers = Vec::new();
            for _ in 0..2 {
                let (reply, answer) = oneshot::channel();
                inbound_tx
                    .send(Inbound::Propose {
                        payload: vec![1],
                        reply,
                    })
                    .await
                    .expect("loop alive");
                answers.push(answer);
            }
            // The pending bound (2) is reached: refused at once, not appended.
            let (reply, mut overloaded) = oneshot::channel();
            inbound_tx
                .send(Inbound::Propose {
                    payload: vec![1],
                    reply,
                })
                .await
                .expect("loop alive");
            settle().await;
            assert_eq!(
                overloaded.try_recv(),
                Ok(Err(ProposeRefused::Overloaded { pending: 2 }))
            );
            let (item, _answer) = request(
                3,
                Message::AppendEntries(match heartbeat(1).msg {
                    Message::AppendEntries(m) => m,
                    _ => unreachable!(),
                }),
            );
            inbound_tx.send(item).await.expect("loop alive");
            settle().await;
            assert_eq!(
                answers[0].try_recv(),
                Ok(Ok(ProposeOutcome::Committed {
                    index: LogIndex(2),
                    term: Term(1)
                }))
            );
            assert_eq!(
                answers[1].try_recv(),
                Err(oneshot::error::TryRecvError::Closed),
                "index 3 was overwritten by another term: outcome unknown"
            );
            // With the proposals decided, the next one reaches the core, which is no leader.
            let (reply, mut not_leader) = oneshot::channel();
            inbound_tx
                .send(Inbound::Propose {
                    payload: vec![1],
                    reply,
                })
                .await
                .expect("loop alive");
            settle().await;
            assert_eq!(
                not_leader.try_recv(),
                Ok(Ok(ProposeOutcome::NotLeader {
                    leader: Some(NodeId(3)),
                    leader_address: Some("127.0.0.1:18003".into())
                }))
            );

            let (reply, mut status) = oneshot::channel();
            inbound_tx
                .send(Inbound::Status { reply })
                .await
                .expect("loop alive");
            settle().await;
            let status = status.try_recv().expect("status answered");
            assert_eq!(status.applied_index, LogIndex(3));
            assert_eq!(
                status.last_log_index,
                LogIndex(1),
                "entry 1 was published to the log"
            );

            stop.send(()).expect("loop alive");
            let stats = handle.await.expect("loop task").expect("clean stop");
            assert_eq!(stats.batches_written, 1);
            // The ignored AppendEntries from 2 and the one from 3 that only triggered a commit.
            assert_eq!(stats.requests_declined, 2);

            let events = events.borrow().clone();
            // The core heard about durability in Ready order, and the first write started right
            // after the step that asked for it.
            let persisted: Vec<&String> = events
                .iter()
                .filter(|e| e.starts_with("on_persisted"))
                .collect();
            assert_eq!(
                persisted,
                [
                    "on_persisted Some((1, 1))",
                    "on_persisted None",
                    "on_persisted None"
                ],
                "{events:?}"
            );
            let first_persist = events
                .iter()
                .position(|e| e.starts_with("persist"))
                .expect("a write");
            assert_eq!(events[first_persist - 1], "step from 2", "{events:?}");
        });
    }

    /// A statemachine that records what it applied and answers with the entry's payload reversed.
    #[derive(Default)]
    struct Recorder {
        applied: Rc<RefCell<Vec<u64>>>,
    }

    impl StateMachine for Recorder {
        fn apply(&mut self, entry: &LogEntry) -> Vec<u8> {
            self.applied.borrow_mut().push(entry.index.0);
            let mut response = entry.payload.clone();
            response.reverse();
            response
        }
    }

    #[test]
    fn reads_are_granted_once_applied_up_to_their_read_index_and_commands_get_apply_responses() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async {
            let events = Rc::new(RefCell::new(Vec::new()));
            let script = VecDeque::from(vec![
                // Input 1 (command at index 1): nothing yet.
                vec![],
                // Input 2 (read, ctx 1): confirmed at read index 1, not applied yet.
                vec![Ready {
                    read_states: vec![ReadState {
                        ctx: 1,
                        index: LogIndex(1),
                    }],
                    ..Ready::default()
                }],
                // Input 3 (read, ctx 2): the leader stepped down before confirming it.
                vec![Ready {
                    dropped_reads: vec![2],
                    ..Ready::default()
                }],
                // Input 4 (a peer's append): index 1 committed and applied.
                vec![Ready {
                    committed_entries: vec![LogEntry {
                        payload: vec![1, 2, 3],
                        ..entry(1, 1)
                    }],
                    ..Ready::default()
                }],
            ]);
            let core = Scripted {
                script,
                pending: VecDeque::new(),
                log: MemStorage::default(),
                events: Rc::clone(&events),
                next_proposal: VecDeque::from(vec![(LogIndex(1), Term(1))]),
                accepts_reads: true,
            };
            let durable = Gated {
                gates: Rc::new(RefCell::new(VecDeque::new())),
                events: Rc::clone(&events),
            };
            let (inbound_tx, inbound_rx) = mpsc::channel(16);
            let peers = Peers::start(NodeId(1), &[], PeerConfig::default(), inbound_tx.clone())
                .expect("peers");
            let config = LoopConfig {
                tick: Duration::from_secs(3600),
                addresses: HashMap::new(),
                inbound_batch_max: 1,
                proposals_pending_max: 8,
                reads_pending_max: 8,
            };
            let applied = Rc::new(RefCell::new(Vec::new()));
            let machine = Recorder {
                applied: Rc::clone(&applied),
            };
            let event_loop = EventLoop::new(core, durable, machine, peers, config, LogIndex::ZERO);
            let (stop, stopped) = oneshot::channel::<()>();
            let handle = tokio::task::spawn_local(event_loop.run(inbound_rx, async move {
                let _ = stopped.await;
            }));

            let (reply, mut command) = oneshot::channel();
            inbound_tx
                .send(Inbound::Command {
                    payload: vec![1, 2, 3],
                    reply,
                })
                .await
                .expect("loop alive");
            let (reply, mut confirmed) = oneshot::channel();
            inbound_tx
                .send(Inbound::Read {
                    linearizable: true,
                    reply,
                })
                .await
                .expect("loop alive");
            let (reply, mut dropped) = oneshot::channel();
            inbound_tx
                .send(Inbound::Read {
                    linearizable: true,
                    reply,
                })
                .await
                .expect("loop alive");
            settle().await;
            assert_eq!(
                confirmed.try_recv(),
                Err(oneshot::error::TryRecvError::Empty),
                "a confirmed read waits until the state machine reaches its read index"
            );
            assert_eq!(dropped.try_recv(), Ok(Err(ReadRefused::LeadershipLost)));
            // A serializable read is granted at once, at what is applied now (nothing).
            let (reply, mut local_read) = oneshot::channel();
            inbound_tx
                .send(Inbound::Read {
                    linearizable: false,
                    reply,
                })
                .await
                .expect("loop alive");
            settle().await;
            assert_eq!(
                local_read.try_recv().map(|r| r.map(|g| g.applied_index)),
                Ok(Ok(LogIndex(0)))
            );

            let (item_reply, _answer) = oneshot::channel();
            inbound_tx
                .send(Inbound::Request {
                    envelope: Envelope {
                        from: NodeId(2),
                        to: NodeId(1),
                        msg: heartbeat(1).msg,
                    },
                    reply: item_reply,
                })
                .await
                .expect("loop alive");
            settle().await;
            assert_eq!(*applied.borrow(), vec![1]);
            assert_eq!(
                command.try_recv(),
                Ok(Ok(Applied {
                    index: LogIndex(1),
                    term: Term(1),
                    response: vec![3, 2, 1],
                }))
            );
            assert_eq!(
                confirmed.try_recv().map(|r| r.map(|g| g.applied_index)),
                Ok(Ok(LogIndex(1)))
            );
            let reads: Vec<String> = events
                .borrow()
                .iter()
                .filter(|e| e.starts_with("read_index"))
                .cloned()
                .collect();
            assert_eq!(
                reads,
                ["read_index 1", "read_index 2"],
                "serializable reads skip the core"
            );
            stop.send(()).expect("loop alive");
            handle.await.expect("loop task").expect("clean stop");
        });
    }
}
