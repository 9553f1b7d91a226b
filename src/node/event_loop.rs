//! The event loop: the one task that owns the node's [`Driver`] and feeds it.
//!
//! Inputs, in one `select!`: completions of durable writes ([`Driver::poll_durable`]), the tick
//! timer (one tick = 1 ms, the core's unit), [`Inbound`] items from the gRPC server and the peer
//! clients (up to `inbound_batch_max` per iteration, so one Ready and one fdatasync cover many
//! requests), and shutdown. After every input the driver drains every `Ready`
//! ([`crate::driver`] has the rules: what leaves at once, what waits for durability, how replies,
//! proposals and reads are matched). The driver's requests go to the peer clients ([`Peers`]).
//!
//! Snapshots ([`EventLoop::with_snapshots`]): once a Ready was drained and enough entries were
//! applied, the loop takes a consistent view of the state machine (cheap, on this thread) and a
//! [`Snapshotter`] thread writes it; when it is durable the core learns of it and the log is
//! compacted behind it (keeping the catch-up entries). The loop never waits for a snapshot.
//! A client may also ask for one ([`Inbound::Snapshot`], etcd's `Maintenance.Snapshot`): the
//! loop then takes one whatever the policy says, as soon as none is being written, and answers
//! with the path of the first finished snapshot that covers everything applied when the request
//! arrived (at once if the newest snapshot already does).
//!
//! After every iteration the loop's [`Watch`] records the metrics that follow the core (leader,
//! commit and applied indexes, pending and failed proposals, follower lag: [`crate::metrics`],
//! when the node has them), and, while the node knows no leader, logs every
//! [`NO_LEADER_LOG_INTERVAL`] who it has not heard from, so a node that cannot reach a majority
//! says why instead of staying silent.
//!
//! Shutdown on a leader (SIGTERM/SIGINT, or whatever `shutdown` future the host passes) first
//! hands leadership over (thesis §3.10, as etcd does): the loop asks its core to transfer to the
//! voter with the highest match index and keeps serving until this node follows a new leader or
//! [`LoopConfig::handover_max`] passes, then stops as any node does. Clients' writes meanwhile
//! are held (`Transferring`) and then forwarded to the new leader, not failed.
//!
//! A failed durable write is fatal (fsyncgate: never retry a failed fdatasync): the loop returns
//! the error and the node stops.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::driver::SnapshotRefused;
pub use crate::driver::{Consensus, DriverStats as LoopStats, Inbound, ReplySlots, RequestKind};
use crate::driver::{Driver, DriverConfig, DriverError, Outbox};
use crate::grpc::Peers;
use crate::node::snapshots::Snapshotter;
use crate::raft::message::{Envelope, Message};
use crate::raft::{Ready, Role, Storage};
use crate::state_machine::SnapshotSource;
pub use crate::state_machine::StateMachine;
pub use crate::storage::engine::{Durable, PersistFuture, WriteBatch};
use crate::types::{LogIndex, NodeId};

/// Without a leader for this long, the loop says who it waits for, and again every this long.
pub const NO_LEADER_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Follower lag is measured on the leader at most this often (it walks the progress map).
const LAG_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// With the latency timeline on ([`crate::timeline`]), a tick served this late or a Ready drain
/// this long is marked (`tick_late_us`, `drain_slow_us`), to attribute stalls. Each is followed
/// by how the thread spent the time (`*_cpu_us` on a CPU, `*_runq_us` waiting for one; the rest
/// it slept or was blocked): for a late tick, since the end of the loop's previous turn; for a
/// drain, during it.
const LOOP_SLOW_US: u64 = 2_000;

/// Takes a consistent view of the state machine for a snapshot (cheap: called on the loop).
pub type SnapshotView<M> = Box<dyn Fn(&M) -> Box<dyn SnapshotSource>>;

/// How the loop snapshots its state machine.
struct Snapshots<M> {
    snapshotter: Snapshotter,
    view: SnapshotView<M>,
    /// Clients waiting for a snapshot ([`Inbound::Snapshot`]), oldest first.
    waiters: Vec<SnapshotWaiter>,
}

/// A client waiting for a snapshot that covers `needed` (what was applied when it asked).
struct SnapshotWaiter {
    needed: LogIndex,
    reply: oneshot::Sender<Result<PathBuf, SnapshotRefused>>,
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
    /// How long a leader that is told to stop keeps running to hand leadership over (the node
    /// uses twice the maximum election timeout); zero stops at once.
    pub handover_max: Duration,
}

/// Why the loop stopped other than by a clean shutdown.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// A durable write failed; the node must stop (its disk state is unknown).
    #[error(transparent)]
    Durable(#[from] DriverError),
    /// Every sender of the inbound channel is gone (the server stopped unexpectedly).
    #[error("the inbound channel closed while the node was running")]
    InboundClosed,
    /// The node was removed from the cluster ([`EventLoop::with_removal_stop`]): it stopped.
    #[error(
        "node {node} was removed from the cluster: {why}. It stopped; its data directory is of \
         no further use (wipe it; to bring the machine back, `etcdctl member add` it: it gets a \
         new node id)"
    )]
    Removed { node: NodeId, why: String },
}

/// The node's outbox: requests go to the peer clients; every Ready's outbound traffic is logged
/// at debug level (the seed's 📤 and 💓 lines).
struct PeerOutbox {
    peers: Peers,
}

impl Outbox for PeerOutbox {
    fn send_request(&mut self, envelope: Envelope) -> bool {
        match self.peers.send(envelope) {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "core produced a message the transport refused");
                false
            }
        }
    }

    fn observe_ready(&mut self, ready: &Ready) {
        let mut heartbeats = 0usize;
        for envelope in &ready.messages {
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
}

/// The driver, its outbox and what the loop needs besides.
pub struct EventLoop<C: Consensus, D: Durable<Log = C::Log>, M: StateMachine> {
    driver: Driver<C, D, M>,
    outbox: PeerOutbox,
    tick: Duration,
    inbound_batch_max: usize,
    handover_max: Duration,
    last_role: Role,
    snapshots: Option<Snapshots<M>>,
    watch: Watch,
    members: MemberSync,
}

/// Keeps the peer connections and the gate in step with the configuration in effect
/// (membership changes take effect when appended, thesis ch. 4): a member added gets a
/// connection (its address from the member address registry, or the config file), a removed one
/// loses it, and the gate lets through exactly the members.
struct MemberSync {
    gate: Option<Arc<crate::grpc::gate::PeerGate>>,
    /// The driver's [`Driver::members_generation`] last synced.
    seen: u64,
    /// The configuration last synced, to log what changed.
    last: Option<crate::raft::Membership>,
    /// Stops a removed node ([`EventLoop::with_removal_stop`]); `None`: never.
    removal: Option<RemovalWatch>,
    /// Servers that left the configuration, by the loop tick at which their connection is
    /// dropped: kept for [`LEAVING_TICKS`] so that the core's last append to a removed follower
    /// (telling it its removal committed, so it stops at once) can still reach it.
    leaving: HashMap<NodeId, u64>,
}

/// How long (loop ticks, 1 ms) a connection to a server that left the configuration is kept.
const LEAVING_TICKS: u64 = 2_000;

/// How the loop learns that its node was removed from the cluster, so it stops (as etcd stops
/// a removed member) instead of waiting or campaigning forever. A removal this node knows is
/// committed stops it at once ([`RemovalWatch::committed_removal`]). Otherwise two kinds of
/// evidence, each of which must last `grace` (several election timeouts) so that an uncommitted
/// change a new leader truncates, or a member that has not appended this node's addition yet,
/// does not stop a member:
/// - **its own log**: a configuration without it is in effect, after it was a member of one
///   (its config file's, for a bootstrap member; one from the log, for a node that joined),
///   and no leader has put it back (a truncated removal would have);
/// - **its peers' gates**: a majority of the other voters of its own configuration that it has
///   an address for say it is "not a member" ([`crate::grpc::gate::NOT_A_MEMBER`]) without a
///   break: a voter's vote requests are answered marked `sender_not_member` (or refused, by a
///   peer of an older version) once it was removed; a learner, which never campaigns, asks
///   with MembershipProbe once it has heard from no one for `grace`, and is answered "no".
///   This is the usual case: a leader stops sending to a node once its removal is appended,
///   so a removed node seldom receives the entry that removes it. A learner whose leader is
///   down or that is cut off gets "yes" or no answer, which is no evidence.
///
/// A node restarted with the directory of a removed member meets the same evidence: its
/// persisted configuration does not list it (the first kind), or its campaigns are refused (the
/// second: it has the config file's addresses, and those of members added later once it
/// applies their records, which a removed node may never do, so the majority is counted among
/// the voters it has an address for).
struct RemovalWatch {
    grace: Duration,
    /// A configuration listing this node was in effect (see above).
    member_seen: bool,
    /// Loop ticks when a configuration without this node took effect (after `member_seen`).
    absent_since: Option<u64>,
    /// Loop ticks at the last check (checks run every [`REMOVAL_CHECK_TICKS`]).
    checked_at: u64,
}

impl RemovalWatch {
    /// One look at the evidence (the type's docs) at loop tick `now`: `membership` is the
    /// configuration in effect on node `me`, `from_log` whether it comes from the log (or a
    /// snapshot) rather than from how the node started, `reachable` the other voters it has an
    /// address for, `refusing` the peers whose gates have said it is not a member for
    /// `grace`. `Some(why)` when it was removed.
    fn observe(
        &mut self,
        now: u64,
        membership: &crate::raft::Membership,
        me: NodeId,
        from_log: bool,
        reachable: &[NodeId],
        refusing: &[NodeId],
    ) -> Option<String> {
        let grace_ticks = self.grace.as_millis() as u64;
        if membership.contains(me) {
            self.absent_since = None;
            if from_log {
                self.member_seen = true;
            }
            let refusing: Vec<NodeId> = refusing
                .iter()
                .copied()
                .filter(|p| reachable.contains(p))
                .collect();
            // A voter's evidence comes from its refused campaigns, a learner's from its
            // membership probes (`MemberSync::removed`).
            if !refusing.is_empty() && refusing.len() * 2 > reachable.len() {
                let list: Vec<String> = refusing.iter().map(|p| p.0.to_string()).collect();
                return Some(format!(
                    "the members {} of its configuration ({membership}) have said it is not a \
                     member for {} ms",
                    list.join(", "),
                    self.grace.as_millis()
                ));
            }
            return None;
        }
        if !self.member_seen {
            // A joining node replaying configurations from before its addition.
            return None;
        }
        let since = *self.absent_since.get_or_insert(now);
        (now - since >= grace_ticks).then(|| {
            format!(
                "the configuration in effect ({membership}) has not listed it for {} ms",
                self.grace.as_millis()
            )
        })
    }

    /// A configuration without this node, in effect since `index` (`None`: the one it started
    /// with), that is committed (`index <= commit`) can never be truncated, so it needs no grace:
    /// the node stops at once, as etcd stops a member that applies its own removal. Without
    /// this, a removed leader (it steps down when its removal commits) held its clients'
    /// requests for the whole grace, 1.5 s in the chaos runs, instead of sending them elsewhere.
    /// `listed_before`: whether the configuration before that entry listed this node (a node
    /// restarted on a removed member's directory has not seen itself listed in this run, but its
    /// log shows the entry that removed it).
    fn committed_removal(
        &self,
        membership: &crate::raft::Membership,
        me: NodeId,
        index: Option<LogIndex>,
        commit: LogIndex,
        listed_before: bool,
    ) -> Option<String> {
        let index = index?;
        let was_member = self.member_seen || listed_before;
        (was_member && !membership.contains(me) && index <= commit).then(|| {
            format!("its removal, the configuration {membership} at index {index}, is committed")
        })
    }
}

/// How often (in loop ticks, 1 ms) the loop looks for evidence of its removal.
const REMOVAL_CHECK_TICKS: u64 = 100;

impl MemberSync {
    /// `Some(why)` once the evidence of [`RemovalWatch`] says this node was removed.
    /// `last_heard`: the loop tick this node last heard from any peer.
    fn removed<C: Consensus, D: Durable<Log = C::Log>, M: StateMachine>(
        &mut self,
        driver: &Driver<C, D, M>,
        peers: &Peers,
        last_heard: Option<u64>,
    ) -> Option<String> {
        let watch = self.removal.as_mut()?;
        let now = driver.stats().ticks;
        if now < watch.checked_at + REMOVAL_CHECK_TICKS {
            return None;
        }
        watch.checked_at = now;
        let core = driver.core();
        let membership = core.membership()?;
        let me = core.id();
        // Its peers' gates, counted among the voters it has an address for: restarted with an
        // old directory, a removed node knows only the config file's addresses until it
        // applies the address records of members added since, which it never will (no leader
        // talks to it).
        let reachable: Vec<NodeId> = membership
            .voters
            .iter()
            .copied()
            .filter(|v| *v != me && peers.address(*v).is_some())
            .collect();
        let index = core.membership_index();
        let listed_before = index
            .and_then(|i| core.membership_at(i.prev()))
            .is_some_and(|m| m.contains(me));
        if let Some(why) =
            watch.committed_removal(&membership, me, index, core.commit_index(), listed_before)
        {
            return Some(why);
        }
        // Its log shows the entry that removed it (restarted on a removed member's directory,
        // whose commit index may not have reached that entry yet): it was a member.
        watch.member_seen |= listed_before;
        // A learner never campaigns, so no refusal tells it that it was removed before its
        // promotion (the leader simply stops sending to it): once it has heard from no one
        // (only a leader talks to a learner) for `grace`, it asks the voters it knows whether
        // it is still a member, and their "no"s are the same evidence as refused campaigns.
        // A leader that is down or a partition gets "yes" or no answer at all, which stops
        // nothing.
        let quiet_ticks = now.saturating_sub(last_heard.unwrap_or(0));
        if membership.is_learner(me) && quiet_ticks >= watch.grace.as_millis() as u64 {
            peers.probe_membership(&reachable);
        }
        let refusing = peers.refusing_as_non_member(watch.grace, watch.grace);
        watch.observe(
            now,
            &membership,
            me,
            core.membership_index().is_some(),
            &reachable,
            &refusing,
        )
    }

    fn sync<C: Consensus, D: Durable<Log = C::Log>, M: StateMachine>(
        &mut self,
        driver: &mut Driver<C, D, M>,
        peers: &mut Peers,
        watch: &mut Watch,
    ) {
        if !self.leaving.is_empty() {
            let now = driver.stats().ticks;
            self.leaving.retain(|node, until| {
                if now < *until {
                    return true;
                }
                if peers.remove(*node) {
                    tracing::info!("✂️  member {node} left the configuration: connection dropped");
                }
                false
            });
        }
        if driver.members_generation() == self.seen {
            return;
        }
        self.seen = driver.members_generation();
        let Some(membership) = driver.core().membership() else {
            return;
        };
        let me = driver.core().id();
        for (node, urls) in driver.state_machine().member_urls() {
            let Some(url) = urls.first() else { continue };
            match crate::driver::parse_peer_url(url) {
                Ok(address) => driver.set_address(node, address),
                Err(why) => tracing::warn!(node = %node, "member address not usable: {why}"),
            }
        }
        let addresses = driver.addresses().clone();
        for node in membership.members().filter(|n| *n != me) {
            match addresses.get(&node) {
                Some(address) => match peers.add(node, *address) {
                    Ok(true) => tracing::info!("🔗 connecting to member {node} at {address}"),
                    Ok(false) => {}
                    Err(e) => tracing::error!(node = %node, "cannot connect to member: {e}"),
                },
                None => tracing::warn!(
                    "member {node} has no known address yet (its address record is not applied \
                     here yet); no connection to it"
                ),
            }
        }
        let gone: Vec<NodeId> = peers.ids().filter(|p| !membership.contains(*p)).collect();
        let until = driver.stats().ticks + LEAVING_TICKS;
        for node in gone {
            self.leaving.entry(node).or_insert(until);
        }
        // Back in the configuration (the entry that removed it was truncated): keep it.
        self.leaving.retain(|node, _| !membership.contains(*node));
        if let Some(gate) = &self.gate {
            gate.set_members(membership.members().collect(), membership.is_voter(me));
        }
        watch.addresses = membership
            .members()
            .filter_map(|n| addresses.get(&n).map(|a| (n, *a)))
            .collect();
        if self.last.as_ref() != Some(&membership) {
            // At the first sync there is nothing to leave: a joining node starts outside its
            // configuration, and a restarted removed one was told at startup.
            let was_member = self.last.as_ref().is_some_and(|m| m.contains(me));
            if !membership.contains(me) && was_member {
                tracing::warn!(
                    "🚪 node {me} is no longer in the configuration ({membership}): it stops \
                     campaigning and serves no votes, and exits unless a leader lists it again \
                     within a few election timeouts (a removal that did not commit)"
                );
            } else {
                tracing::info!("👥 configuration in effect on node {me}: {membership}");
            }
            self.last = Some(membership);
        }
    }
}

/// A leader's handover at shutdown: to whom, since when, until when.
#[derive(Clone, Copy, Debug)]
struct Handover {
    target: NodeId,
    began: tokio::time::Instant,
    deadline: tokio::time::Instant,
}

/// Shutdown was asked: if this node leads a cluster with other voters, asks the core to hand
/// leadership to the one with the highest match index (the most up to date, so TimeoutNow goes
/// out soonest) and returns the handover to wait for; `None` to stop at once.
fn begin_handover<C: Consensus, D: Durable<Log = C::Log>, M: StateMachine>(
    driver: &mut Driver<C, D, M>,
    handover_max: Duration,
) -> Option<Handover> {
    let core = driver.core();
    if core.role() != Role::Leader || handover_max.is_zero() {
        return None;
    }
    let id = core.id();
    let (target, matched) = core
        .peer_match_indexes()
        .into_iter()
        .filter(|(peer, _)| *peer != id)
        .max_by_key(|(peer, matched)| (*matched, std::cmp::Reverse(*peer)))?;
    let (reply, mut answer) = oneshot::channel();
    driver.handle(Inbound::TransferLeader { target, reply });
    match answer.try_recv() {
        Ok(Ok(())) => {
            tracing::info!(
                "🤝 stopping as leader: handing leadership to node {target} (match index \
                 {matched}) before exit, waiting up to {} ms",
                handover_max.as_millis()
            );
            let began = tokio::time::Instant::now();
            Some(Handover {
                target,
                began,
                deadline: began + handover_max,
            })
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "stopping as leader without a handover");
            None
        }
        Err(_) => None,
    }
}

/// Completes at the handover's deadline; never without a handover.
async fn handover_deadline(handover: Option<Handover>) {
    match handover {
        Some(h) => tokio::time::sleep_until(h.deadline).await,
        None => std::future::pending().await,
    }
}

/// What the loop reports besides its work (see the module docs). Times are in ticks of the
/// loop's clock (`DriverStats::ticks`), so watching costs no clock reads.
struct Watch {
    metrics: Option<Arc<crate::metrics::NodeMetrics>>,
    addresses: HashMap<NodeId, SocketAddr>,
    tick: Duration,
    leader: Option<NodeId>,
    commit: LogIndex,
    applied: LogIndex,
    proposals_failed: u64,
    lag_sampled_at: u64,
    /// The tick at which each peer was last heard from (a request or a response).
    heard: HashMap<NodeId, u64>,
    /// The tick since which no leader is known, and when that was last logged.
    leaderless_since: Option<u64>,
    leaderless_logged: u64,
}

impl Watch {
    fn new(addresses: HashMap<NodeId, SocketAddr>, tick: Duration) -> Watch {
        Watch {
            metrics: crate::metrics::current(),
            addresses,
            tick,
            leader: None,
            commit: LogIndex::ZERO,
            applied: LogIndex::ZERO,
            proposals_failed: 0,
            lag_sampled_at: 0,
            heard: HashMap::new(),
            leaderless_since: Some(0),
            leaderless_logged: 0,
        }
    }

    fn ticks(&self, d: Duration) -> u64 {
        (d.as_micros() / self.tick.as_micros().max(1)) as u64
    }

    /// The loop tick this node last heard from any peer.
    fn last_heard(&self) -> Option<u64> {
        self.heard.values().copied().max()
    }

    fn heard_from<R>(&mut self, item: &Inbound<R>, now: u64) {
        if let Inbound::Request { envelope, .. } | Inbound::Response(envelope) = item {
            self.heard.insert(envelope.from, now);
        }
    }

    fn after_iteration<C: Consensus, D: Durable<Log = C::Log>, M: StateMachine>(
        &mut self,
        driver: &Driver<C, D, M>,
    ) {
        let stats = driver.stats();
        let now = stats.ticks;
        let core = driver.core();
        let leader = core.leader();
        if let Some(m) = &self.metrics {
            if leader != self.leader && leader.is_some() {
                m.leader_changes_seen.inc();
            }
            m.has_leader.set(i64::from(leader.is_some()));
            let leading = core.role() == Role::Leader;
            m.is_leader.set(i64::from(leading));
            let commit = core.commit_index();
            if commit > self.commit {
                m.proposals_committed.inc_by(commit.0 - self.commit.0);
                self.commit = commit;
            }
            let applied = driver.applied_index();
            if applied > self.applied {
                m.proposals_applied.inc_by(applied.0 - self.applied.0);
                self.applied = applied;
            }
            m.proposals_pending.set(driver.proposals_pending() as i64);
            if stats.proposals_failed > self.proposals_failed {
                m.proposals_failed
                    .inc_by(stats.proposals_failed - self.proposals_failed);
                self.proposals_failed = stats.proposals_failed;
            }
            if now >= self.lag_sampled_at + self.ticks(LAG_SAMPLE_INTERVAL) {
                self.lag_sampled_at = now;
                if leading {
                    let last = core.last_index();
                    for (peer, matched) in core.peer_match_indexes() {
                        if peer == core.id() {
                            continue;
                        }
                        m.follower_lag_entries
                            .get_or_create(&vec![("follower".to_string(), peer.to_string())])
                            .set(last.0.saturating_sub(matched.0) as i64);
                    }
                } else {
                    m.follower_lag_entries.clear();
                }
            }
        }
        self.leader = leader;
        self.log_while_leaderless(core, now);
    }

    /// Logs, now and then while no leader is known, who this node has not heard from.
    fn log_while_leaderless(&mut self, core: &impl Consensus, now: u64) {
        if self.leader.is_some() {
            self.leaderless_since = None;
            return;
        }
        let since = *self.leaderless_since.get_or_insert(now);
        let interval = self.ticks(NO_LEADER_LOG_INTERVAL);
        if now < since + interval || now < self.leaderless_logged + interval {
            return;
        }
        self.leaderless_logged = now;
        let mut peers: Vec<(&NodeId, &SocketAddr)> = self
            .addresses
            .iter()
            .filter(|(id, _)| **id != core.id())
            .collect();
        peers.sort();
        let heard: Vec<String> = peers
            .iter()
            .map(|(id, address)| match self.heard.get(id) {
                Some(at) => format!(
                    "node {id} ({address}) last heard {} s ago",
                    (now - at) * self.tick.as_millis() as u64 / 1000
                ),
                None => format!("node {id} ({address}) never heard from"),
            })
            .collect();
        let majority = self.addresses.len() / 2 + 1;
        tracing::warn!(
            "⏳ no leader for {} s (term {}, {:?}): an election needs {majority} of {} votes; {}",
            (now - since) * self.tick.as_millis() as u64 / 1000,
            core.term(),
            core.role(),
            self.addresses.len(),
            heard.join(", ")
        );
    }
}

impl<C: Consensus, D: Durable<Log = C::Log>, M: StateMachine> EventLoop<C, D, M> {
    /// `applied_index` is what the state machine already reflects (0 for one rebuilt from the
    /// log).
    pub fn new(
        core: C,
        durable: D,
        state_machine: M,
        peers: Peers,
        config: LoopConfig,
        applied_index: LogIndex,
    ) -> Self {
        let watch = Watch::new(config.addresses.clone(), config.tick);
        let driver = Driver::new(
            core,
            durable,
            state_machine,
            DriverConfig {
                addresses: config.addresses,
                proposals_pending_max: config.proposals_pending_max,
                reads_pending_max: config.reads_pending_max,
            },
            applied_index,
        );
        EventLoop {
            driver,
            outbox: PeerOutbox { peers },
            tick: config.tick,
            inbound_batch_max: config.inbound_batch_max,
            handover_max: config.handover_max,
            last_role: Role::Follower,
            snapshots: None,
            watch,
            members: MemberSync {
                gate: None,
                seen: 0,
                last: None,
                removal: None,
                leaving: HashMap::new(),
            },
        }
    }

    /// Keeps `gate` in step with the configuration in effect (see [`crate::grpc::gate`]).
    pub fn with_gate(mut self, gate: Arc<crate::grpc::gate::PeerGate>) -> Self {
        self.members.gate = Some(gate);
        self
    }

    /// The most learners a configuration may hold (`learners_max`; see
    /// [`Driver::set_learners_max`]).
    pub fn with_learners_max(mut self, learners_max: usize) -> Self {
        self.driver.set_learners_max(learners_max);
        self
    }

    /// Stops the loop with [`LoopError::Removed`] once the node learns it was removed from the
    /// cluster, each piece of evidence having lasted `grace` ([`RemovalWatch`]).
    /// `bootstrap_member`: the node is one of its config file's members (else it joined, and
    /// only a configuration from the log that lists it makes it a member).
    pub fn with_removal_stop(mut self, grace: Duration, bootstrap_member: bool) -> Self {
        self.members.removal = Some(RemovalWatch {
            grace,
            member_seen: bootstrap_member,
            absent_since: None,
            checked_at: 0,
        });
        self
    }

    /// Takes snapshots with `snapshotter` of the views `view` takes, and installs a leader's
    /// snapshots with `installer`.
    pub fn with_snapshots(
        mut self,
        snapshotter: Snapshotter,
        view: SnapshotView<M>,
        installer: crate::driver::SnapshotInstaller<M>,
    ) -> Self {
        self.driver.set_snapshot_installer(installer);
        self.snapshots = Some(Snapshots {
            snapshotter,
            view,
            waiters: Vec::new(),
        });
        self
    }

    /// Runs until `shutdown` completes (then finishes the in-flight writes) or a fatal error.
    pub async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound<M::Response>>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<LoopStats, LoopError> {
        let mut ticker = tokio::time::interval(self.tick);
        // A stalled loop catches up on the ticks it missed: logical time must track real time,
        // or election timeouts would silently stretch under load.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        tokio::pin!(shutdown);
        let EventLoop {
            driver,
            outbox,
            tick,
            inbound_batch_max,
            handover_max,
            last_role,
            snapshots,
            watch,
            members,
            ..
        } = &mut self;
        members.sync(driver, &mut outbox.peers, watch);
        // Set once shutdown was asked on a leader: the loop runs on until the handover is done.
        let mut handover: Option<Handover> = None;
        // Set when the node learns it was removed: the loop stops, then returns it.
        let mut removed: Option<String> = None;
        let timeline_on = crate::timeline::enabled();
        // The loop's thread's scheduler counters at the end of its last turn (timeline only).
        let sched = crate::timeline::ThreadSched::open();
        let mut turn_ended = sched.as_ref().and_then(|s| s.sample());
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown, if handover.is_none() => {
                    handover = begin_handover(driver, *handover_max);
                    if handover.is_none() {
                        break;
                    }
                }
                _ = handover_deadline(handover) => {
                    if let Some(h) = handover {
                        tracing::warn!(
                            "🤝 leadership was not handed to node {} within {} ms; stopping \
                             anyway (the cluster elects a leader after an election timeout)",
                            h.target,
                            h.began.elapsed().as_millis()
                        );
                    }
                    break;
                }
                result = std::future::poll_fn(|cx| driver.poll_durable(cx, outbox)) => result?,
                due = ticker.tick() => {
                    let late = due.elapsed();
                    if timeline_on && late.as_micros() as u64 >= LOOP_SLOW_US {
                        // How late the tick is served: a busy or descheduled loop (attribution
                        // of stalls, issue 18).
                        crate::timeline::mark("tick_late_us", late.as_micros() as u64);
                        mark_sched(&sched, turn_ended, "tick_late_cpu_us", "tick_late_runq_us");
                    }
                    if late >= *tick * 2 {
                        // A catch-up tick: the loop did not run for a while (busy, or not
                        // scheduled). What arrived meanwhile happened during that time, before
                        // this tick is counted: a leader's heartbeats waiting in the queue must
                        // reset the election timer before the missed ticks could fire it, or
                        // this node would campaign only because it was busy.
                        let now = driver.stats().ticks;
                        for _ in 0..*inbound_batch_max {
                            match inbound.try_recv() {
                                Ok(item) => {
                                    watch.heard_from(&item, now);
                                    handle(driver, snapshots, item)
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    driver.tick()
                }
                taken = wait_snapshot(snapshots) => on_snapshot(driver, snapshots, taken)?,
                item = inbound.recv() => {
                    let Some(item) = item else { return Err(LoopError::InboundClosed) };
                    let now = driver.stats().ticks;
                    watch.heard_from(&item, now);
                    handle(driver, snapshots, item);
                    // Batch whatever else is already waiting, so one Ready (and one fdatasync)
                    // covers many requests.
                    for _ in 1..*inbound_batch_max {
                        match inbound.try_recv() {
                            Ok(item) => {
                                watch.heard_from(&item, now);
                                handle(driver, snapshots, item)
                            }
                            Err(_) => break,
                        }
                    }
                }
            }
            let turn_started = timeline_on.then(std::time::Instant::now);
            let drain_sched = sched.as_ref().and_then(|s| s.sample());
            driver.drain_ready(outbox);
            if let Some(t) = turn_started {
                let busy_us = t.elapsed().as_micros() as u64;
                if busy_us >= LOOP_SLOW_US {
                    crate::timeline::mark("drain_slow_us", busy_us);
                    mark_sched(&sched, drain_sched, "drain_cpu_us", "drain_runq_us");
                }
                turn_ended = sched.as_ref().and_then(|s| s.sample());
            }
            members.sync(driver, &mut outbox.peers, watch);
            if let Some(why) = members.removed(driver, &outbox.peers, watch.last_heard()) {
                tracing::error!(
                    "🚪 node {} was removed from the cluster ({why}): stopping",
                    driver.core().id()
                );
                removed = Some(why);
                break;
            }
            log_role_change(driver.core(), last_role);
            watch.after_iteration(driver);
            maybe_start_snapshot(driver, snapshots);
            if let Some(h) = handover {
                let core = driver.core();
                // Done once this node follows a leader of a later term (normally the target).
                if core.role() != Role::Leader && core.leader().is_some_and(|l| l != core.id()) {
                    tracing::info!(
                        "🤝 handed leadership over to node {} in {:.1} ms (term {}); stopping",
                        core.leader().map_or(0, |l| l.0),
                        h.began.elapsed().as_secs_f64() * 1000.0,
                        core.term()
                    );
                    break;
                }
            }
        }
        // Graceful stop: finish the writes already started so what was acknowledged stays
        // acknowledged, then let everything else go.
        while driver.has_in_flight() {
            std::future::poll_fn(|cx| driver.poll_durable(cx, outbox)).await?;
        }
        driver.abandon();
        outbox.peers.shutdown();
        let stats = driver.stats();
        tracing::info!(stats = ?stats, "event loop stopped");
        if let Some(why) = removed {
            return Err(LoopError::Removed {
                node: driver.core().id(),
                why,
            });
        }
        Ok(stats)
    }
}

/// Completes when the snapshot being written is done; never without snapshots.
async fn wait_snapshot<M>(
    snapshots: &mut Option<Snapshots<M>>,
) -> Result<crate::node::snapshots::Taken, String> {
    match snapshots {
        Some(s) => s.snapshotter.finished().await,
        None => std::future::pending().await,
    }
}

/// Hands `item` to the driver, except a snapshot request, which the loop answers itself (the
/// driver keeps no snapshot files).
fn handle<C: Consensus, D: Durable<Log = C::Log>, M: StateMachine>(
    driver: &mut Driver<C, D, M>,
    snapshots: &mut Option<Snapshots<M>>,
    item: Inbound<M::Response>,
) {
    match item {
        Inbound::Snapshot { reply } => request_snapshot(driver, snapshots, reply),
        item => driver.handle(item),
    }
}

/// A client asked for a fresh snapshot: answered at once with the newest snapshot if it covers
/// everything applied now, otherwise queued for [`maybe_start_snapshot`] (which takes one as soon
/// as none is being written) and answered by [`on_snapshot`].
fn request_snapshot<C: Consensus, D: Durable<Log = C::Log>, M: StateMachine>(
    driver: &Driver<C, D, M>,
    snapshots: &mut Option<Snapshots<M>>,
    reply: oneshot::Sender<Result<PathBuf, SnapshotRefused>>,
) {
    let Some(s) = snapshots else {
        let _ = reply.send(Err(SnapshotRefused::NoSnapshots));
        return;
    };
    let Some(at) = driver.applied() else {
        let _ = reply.send(Err(SnapshotRefused::NothingApplied));
        return;
    };
    // The newest snapshot file of this directory: the last one written here, or a leader's that
    // was installed since (its file has the same name scheme).
    let installed = driver.core().snapshot().map_or(LogIndex::ZERO, |i| i.index);
    let newest = s.snapshotter.newest().max(installed);
    if newest == at.index && !s.snapshotter.is_running() {
        let _ = reply.send(Ok(s.snapshotter.path_of(newest)));
        return;
    }
    s.waiters.push(SnapshotWaiter {
        needed: at.index,
        reply,
    });
}

/// Marks how the loop's thread spent the time since `since` (timeline only): `cpu` the
/// microseconds on a CPU (the loop's own work or another task of its runtime), `runq` those
/// waiting for one (the machine's other threads had the cores).
fn mark_sched(
    sched: &Option<crate::timeline::ThreadSched>,
    since: Option<crate::timeline::SchedSample>,
    cpu: &'static str,
    runq: &'static str,
) {
    let (Some(sched), Some(since)) = (sched, since) else {
        return;
    };
    if let Some(now) = sched.sample() {
        let (cpu_us, runq_us) = now.since_us(&since);
        crate::timeline::mark(cpu, cpu_us);
        crate::timeline::mark(runq, runq_us);
    }
}

fn maybe_start_snapshot<C: Consensus, D: Durable<Log = C::Log>, M: StateMachine>(
    driver: &Driver<C, D, M>,
    snapshots: &mut Option<Snapshots<M>>,
) {
    let Some(s) = snapshots else { return };
    let (installed, applied_bytes) = (driver.core().snapshot(), driver.applied_payload_bytes());
    s.snapshotter.adopt_installed(installed, applied_bytes);
    let due = s
        .snapshotter
        .due(driver.applied_index(), installed, applied_bytes);
    // A client's request does not wait for the policy, only for the snapshot being written.
    let requested = !s.waiters.is_empty() && !s.snapshotter.is_running();
    if !due && !requested {
        return;
    }
    let Some(at) = driver.applied() else { return };
    let started = std::time::Instant::now();
    let source = (s.view)(driver.state_machine());
    tracing::debug!(index = %at.index, view_us = started.elapsed().as_micros() as u64, "snapshot started");
    let membership = driver.core().membership_at(at.index);
    crate::timeline::mark("snapshot_start", at.index.0);
    s.snapshotter.start(at, source, membership, applied_bytes);
}

fn on_snapshot<C: Consensus, D: Durable<Log = C::Log>, M: StateMachine>(
    driver: &mut Driver<C, D, M>,
    snapshots: &mut Option<Snapshots<M>>,
    taken: Result<crate::node::snapshots::Taken, String>,
) -> Result<(), DriverError> {
    let Some(s) = snapshots else { return Ok(()) };
    match taken {
        Ok(t) => {
            let keep = s.snapshotter.policy().catchup_entries;
            let first_before = driver.core().storage().first_index();
            // The write ended on the snapshot thread; the log's compaction behind it runs here,
            // on the loop's thread (issue 18's timeline attributes stalls to either).
            crate::timeline::mark("snapshot_done", t.snap.index.0);
            crate::timeline::mark("compact_start", t.snap.index.0);
            driver.snapshot_taken(t.snap, keep)?;
            crate::timeline::mark("compact_done", t.snap.index.0);
            crate::metrics::with_current(|m| {
                m.snapshot_save_seconds.observe(t.elapsed.as_secs_f64())
            });
            tracing::info!(
                "📸 Snapshot at index {} (term {}): {} payload bytes in {} ms; log now starts at {} (was {})",
                t.snap.index,
                t.snap.term,
                t.payload_bytes,
                t.elapsed.as_millis(),
                driver.core().storage().first_index(),
                first_before
            );
            // Those who asked before this snapshot's index was applied get it; those who asked
            // later wait for the next one (started by `maybe_start_snapshot`).
            let path = s.snapshotter.path_of(t.snap.index);
            let (served, waiting) = std::mem::take(&mut s.waiters)
                .into_iter()
                .partition(|w| w.needed <= t.snap.index);
            s.waiters = waiting;
            for w in served {
                let _ = w.reply.send(Ok(path.clone()));
            }
        }
        Err(why) => {
            tracing::error!("snapshot failed, the log is not compacted: {why}");
            s.snapshotter.postpone(driver.applied_index());
            // Retrying at once would likely fail the same way: every waiting client hears why.
            for w in s.waiters.drain(..) {
                let _ = w.reply.send(Err(SnapshotRefused::Failed(why.clone())));
            }
        }
    }
    Ok(())
}

fn log_role_change(core: &impl Consensus, last_role: &mut Role) {
    let role = core.role();
    if role == *last_role {
        return;
    }
    crate::timeline::mark(
        match role {
            Role::Leader => "role_leader",
            Role::Candidate => "role_candidate",
            Role::PreCandidate => "role_precandidate",
            Role::Follower => "role_follower",
        },
        core.term().0,
    );
    match role {
        Role::Leader => {
            tracing::info!(term = %core.term(), "👑 Won election! Becoming leader...")
        }
        Role::Candidate => {
            tracing::info!("🗳️ Election timeout: campaigning for term {}", core.term())
        }
        Role::PreCandidate => tracing::debug!("pre-vote campaign started"),
        Role::Follower => match core.leader() {
            Some(leader) => tracing::info!("following leader {leader} in term {}", core.term()),
            None => tracing::info!("follower in term {}", core.term()),
        },
    }
    *last_role = role;
}

#[cfg(test)]
mod tests {
    mod removal {
        //! [`super::super::RemovalWatch`]: when the evidence says the node was removed.
        use super::super::RemovalWatch;
        use crate::raft::Membership;
        use crate::types::{LogIndex, NodeId};
        use std::time::Duration;

        fn watch(bootstrap_member: bool) -> RemovalWatch {
            RemovalWatch {
                grace: Duration::from_millis(1000),
                member_seen: bootstrap_member,
                absent_since: None,
                checked_at: 0,
            }
        }

        fn ids(v: &[u32]) -> Vec<NodeId> {
            v.iter().copied().map(NodeId).collect()
        }

        #[test]
        fn a_configuration_without_the_node_stops_it_only_once_it_lasted_the_grace() {
            let mut w = watch(true);
            let me = NodeId(3);
            let with = Membership::new(ids(&[1, 2, 3]), []);
            let without = Membership::new(ids(&[1, 2]), []);
            assert_eq!(w.observe(0, &with, me, false, &ids(&[1, 2]), &[]), None);
            assert_eq!(w.observe(100, &without, me, true, &ids(&[]), &[]), None);
            assert_eq!(w.observe(1099, &without, me, true, &ids(&[]), &[]), None);
            // A new leader truncated the removal: the count starts again.
            assert_eq!(w.observe(1100, &with, me, false, &ids(&[1, 2]), &[]), None);
            assert_eq!(w.observe(1200, &without, me, true, &ids(&[]), &[]), None);
            assert_eq!(w.observe(2199, &without, me, true, &ids(&[]), &[]), None);
            let why = w.observe(2200, &without, me, true, &ids(&[]), &[]);
            assert!(why.is_some_and(|w| w.contains("has not listed it")));
        }

        #[test]
        fn a_committed_removal_stops_the_node_without_waiting_for_the_grace() {
            let me = NodeId(3);
            let with = Membership::new(ids(&[1, 2, 3]), []);
            let without = Membership::new(ids(&[1, 2]), []);
            let w = watch(true);
            // Appended, not committed: a new leader may still truncate it.
            assert_eq!(
                w.committed_removal(&without, me, Some(LogIndex(10)), LogIndex(9), false),
                None
            );
            let why = w.committed_removal(&without, me, Some(LogIndex(10)), LogIndex(10), false);
            assert!(why.is_some_and(|w| w.contains("index 10, is committed")));
            // A committed configuration that lists it, or none from the log: nothing to say.
            assert_eq!(
                w.committed_removal(&with, me, Some(LogIndex(10)), LogIndex(12), true),
                None
            );
            assert_eq!(
                w.committed_removal(&without, me, None, LogIndex(12), false),
                None
            );
            // A joining node replaying the committed configurations from before its addition.
            assert_eq!(
                watch(false).committed_removal(
                    &without,
                    me,
                    Some(LogIndex(10)),
                    LogIndex(12),
                    false
                ),
                None
            );
            // Restarted on a removed member's directory: the configuration before the removal
            // listed it.
            assert!(watch(false)
                .committed_removal(&without, me, Some(LogIndex(10)), LogIndex(12), true)
                .is_some());
        }

        #[test]
        fn a_joining_node_is_not_removed_by_configurations_from_before_its_addition() {
            let mut w = watch(false);
            let me = NodeId(4);
            let old = Membership::new(ids(&[1, 2, 3]), []);
            for now in [0, 5_000, 50_000] {
                assert_eq!(w.observe(now, &old, me, true, &[], &[]), None);
            }
            // Its addition, then its removal: now it is a removal.
            let added = Membership::new(ids(&[1, 2, 3]), ids(&[4]));
            assert_eq!(
                w.observe(60_000, &added, me, true, &ids(&[1, 2, 3]), &[]),
                None
            );
            assert_eq!(w.observe(61_000, &old, me, true, &[], &[]), None);
            assert!(w.observe(62_000, &old, me, true, &[], &[]).is_some());
        }

        #[test]
        fn refusals_stop_a_voter_only_from_a_majority_of_the_voters_it_reaches() {
            let me = NodeId(4);
            let five = Membership::new(ids(&[1, 2, 3, 4, 5]), []);
            let mut w = watch(true);
            let reachable = ids(&[1, 2, 3, 5]);
            assert_eq!(
                w.observe(0, &five, me, true, &reachable, &ids(&[1, 2])),
                None
            );
            // A refusing node that is not a voter it reaches does not count.
            assert_eq!(
                w.observe(0, &five, me, true, &reachable, &ids(&[1, 2, 9])),
                None
            );
            let why = w.observe(0, &five, me, true, &reachable, &ids(&[1, 2, 3]));
            assert!(why.is_some_and(|w| w.contains("1, 2, 3")));
            // Restarted with an old directory: only the config file's members have addresses.
            let why = w.observe(0, &five, me, true, &ids(&[1, 2]), &ids(&[1, 2]));
            assert!(why.is_some());
            // A learner's evidence (its membership probes answered "no") counts the same way.
            let learner = Membership::new(ids(&[1, 2, 3]), ids(&[4]));
            assert_eq!(
                w.observe(0, &learner, me, true, &ids(&[1, 2, 3]), &ids(&[1])),
                None
            );
            let why = w.observe(0, &learner, me, true, &ids(&[1, 2, 3]), &ids(&[1, 3]));
            assert!(why.is_some_and(|w| w.contains("1, 3")));
        }
    }

    use std::collections::VecDeque;
    use std::rc::Rc;

    use tokio::sync::oneshot;

    use super::*;
    use crate::driver::{Applied, ProposeOutcome, ProposeRefused, ReadRefused};
    use crate::raft::message::{AppendEntriesResponse, RequestVoteResponse};
    use crate::raft::{HardState, ProposeError, ReadIndexError, ReadState};
    use crate::types::{LogEntry, Term};

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
        /// Whether ticks are recorded as events ("tick").
        record_ticks: bool,
    }

    impl Scripted {
        /// A core that answers its inputs with `script` and its proposals with `next_proposal`,
        /// recording into `events`; it refuses reads and does not record ticks.
        fn new(
            events: &Rc<RefCell<Vec<String>>>,
            script: Vec<Vec<Ready>>,
            next_proposal: Vec<(LogIndex, Term)>,
        ) -> Self {
            Scripted {
                script: script.into(),
                pending: VecDeque::new(),
                log: MemStorage::default(),
                events: Rc::clone(events),
                next_proposal: next_proposal.into(),
                accepts_reads: false,
                record_ticks: false,
            }
        }

        fn input(&mut self, what: String) {
            self.events.borrow_mut().push(what);
            if let Some(readies) = self.script.pop_front() {
                self.pending.extend(readies);
            }
        }
    }

    impl Consensus for Scripted {
        type Log = MemStorage;
        fn tick(&mut self) {
            if self.record_ticks {
                self.events.borrow_mut().push("tick".into());
            }
        }
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

    impl Gated {
        /// A store recording into `events` whose writes wait for the gates the test opens.
        fn new(
            events: &Rc<RefCell<Vec<String>>>,
        ) -> (Self, Rc<RefCell<VecDeque<oneshot::Sender<()>>>>) {
            let gates = Rc::new(RefCell::new(VecDeque::new()));
            let store = Gated {
                gates: Rc::clone(&gates),
                events: Rc::clone(events),
            };
            (store, gates)
        }
    }

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
        fn compact(&mut self, log: &mut MemStorage, upto: LogIndex) -> Result<(), GateDropped> {
            log.compact_prefix(upto);
            Ok(())
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

    /// Runs `test` on a current-thread runtime inside a `LocalSet` (the loop is not `Send`).
    fn run_local(test: impl Future<Output = ()>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        tokio::task::LocalSet::new().block_on(&runtime, test);
    }

    /// The loop's settings in these tests: `tick`, `inbound_batch_max`, one bound for pending
    /// proposals and reads, no handover.
    fn loop_config(
        tick: Duration,
        addresses: HashMap<NodeId, std::net::SocketAddr>,
        inbound_batch_max: usize,
        pending_max: usize,
    ) -> LoopConfig {
        LoopConfig {
            tick,
            addresses,
            inbound_batch_max,
            proposals_pending_max: pending_max,
            reads_pending_max: pending_max,
            handover_max: Duration::ZERO,
        }
    }

    /// Starts `event_loop` on the local set; the loop stops when the returned sender is used.
    fn spawn_loop<M: StateMachine + 'static>(
        event_loop: EventLoop<Scripted, Gated, M>,
        inbound: mpsc::Receiver<Inbound<M::Response>>,
    ) -> (
        oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<LoopStats, LoopError>>,
    ) {
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::task::spawn_local(event_loop.run(inbound, async move {
            let _ = stopped.await;
        }));
        (stop, handle)
    }

    #[test]
    fn the_loop_sends_before_persisting_and_acknowledges_only_after_durability() {
        run_local(async {
            let events = Rc::new(RefCell::new(Vec::new()));
            let script = vec![
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
            ];
            let core = Scripted::new(
                &events,
                script,
                vec![(LogIndex(2), Term(1)), (LogIndex(3), Term(1))],
            );
            let (durable, gates) = Gated::new(&events);
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
            let config = loop_config(
                Duration::from_secs(3600),
                HashMap::from([(NodeId(3), "127.0.0.1:18003".parse().expect("addr"))]),
                1,
                2,
            );
            let event_loop = EventLoop::new(core, durable, (), peers, config, LogIndex::ZERO);

            let (stop, handle) = spawn_loop(event_loop, inbound_rx);

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
                leader_transfer: false,
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
        type Response = Vec<u8>;

        fn apply(&mut self, entry: &LogEntry) -> Vec<u8> {
            self.applied.borrow_mut().push(entry.index.0);
            let mut response = entry.payload.clone();
            response.reverse();
            response
        }
    }

    #[test]
    fn reads_are_granted_once_applied_up_to_their_read_index_and_commands_get_apply_responses() {
        run_local(async {
            let events = Rc::new(RefCell::new(Vec::new()));
            let script = vec![
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
            ];
            let core = Scripted {
                accepts_reads: true,
                ..Scripted::new(&events, script, vec![(LogIndex(1), Term(1))])
            };
            let (durable, _gates) = Gated::new(&events);
            let (inbound_tx, inbound_rx) = mpsc::channel(16);
            let peers = Peers::start(NodeId(1), &[], PeerConfig::default(), inbound_tx.clone())
                .expect("peers");
            let config = loop_config(Duration::from_secs(3600), HashMap::new(), 1, 8);
            let applied = Rc::new(RefCell::new(Vec::new()));
            let machine = Recorder {
                applied: Rc::clone(&applied),
            };
            let event_loop = EventLoop::new(core, durable, machine, peers, config, LogIndex::ZERO);
            let (stop, handle) = spawn_loop(event_loop, inbound_rx);

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

    /// A follower whose loop was stalled (here: its thread blocked for 10 ticks) finds, when it
    /// runs again, both the missed ticks and the leader's heartbeat that arrived meanwhile. The
    /// heartbeat must reach the core before the catch-up ticks, or those ticks alone could fire
    /// its election timer (issue 18: an election because the node was busy).
    #[test]
    fn after_a_stall_waiting_messages_reach_the_core_before_the_missed_ticks() {
        run_local(async {
            let events = Rc::new(RefCell::new(Vec::new()));
            let core = Scripted {
                record_ticks: true,
                ..Scripted::new(&events, vec![], vec![])
            };
            let (durable, _gates) = Gated::new(&events);
            let (inbound_tx, inbound_rx) = mpsc::channel(16);
            let peers = Peers::start(NodeId(1), &[], PeerConfig::default(), inbound_tx.clone())
                .expect("peers");
            let tick = Duration::from_millis(10);
            let config = loop_config(tick, HashMap::new(), 8, 8);
            let event_loop = EventLoop::new(core, durable, (), peers, config, LogIndex::ZERO);
            let (stop, handle) = spawn_loop(event_loop, inbound_rx);
            // Let a few ticks pass normally.
            tokio::time::sleep(tick * 3).await;
            // The heartbeat arrives while the loop's thread is busy for 10 ticks.
            let (reply, _answer) = oneshot::channel();
            inbound_tx
                .try_send(Inbound::Request {
                    envelope: heartbeat(1),
                    reply,
                })
                .expect("room in the queue");
            events.borrow_mut().push("stall".into());
            std::thread::sleep(tick * 10);
            tokio::time::sleep(tick).await;
            let events = events.borrow().clone();
            let stall = events.iter().position(|e| e == "stall").expect("marked");
            let after: Vec<&str> = events[stall + 1..].iter().map(String::as_str).collect();
            assert!(
                after.len() >= 2 && after[0] == "step from 1" && after[1] == "tick",
                "the heartbeat must be stepped before the missed ticks: {after:?}"
            );
            let _ = stop.send(());
            handle.await.expect("loop task").expect("loop result");
        });
    }
}
