//! The deterministic cluster: N cores, their simulated disks, the network between them, simulated
//! time, client proposals, crashes and restarts — and the safety checkers after every event.
//!
//! # Time and events
//! Time is a `u64` count of simulated microseconds. Every node ticks with its own period (clock
//! speeds differ by node); deliveries, disk completions and the scenario's timers sit in one
//! priority queue ordered by (time, sequence number), so ties break in insertion order and a run
//! is a pure function of its seed. [`Cluster::step`] processes exactly one event: a node's tick,
//! a message delivery, a disk write completing, or a scenario timer.
//!
//! # Driving a core (the contract of `src/raft/mod.rs`)
//! After every input the cluster drains every `Ready`: it sends `messages` at once, queues the
//! writes on the node's [`SimDisk`], applies `committed_entries`, then serves each of
//! `read_states` once the node's state machine reached its index. When a write completes it is
//! applied to the node's durable `MemStorage` (through `storage_mut`) and durable hard state,
//! then its `persisted_messages` leave and `on_persisted` is called.
//!
//! # What a crash loses
//! Everything but the durable log and hard state: the core, the in-memory state machine, every
//! in-flight write except a prefix of the oldest (see [`SimDisk::crash`]). Messages already sent
//! still arrive; messages to a node that is down are lost. The node restarts with
//! `RaftNode::new(config, durable hard state, durable log)` and a fresh RNG seed.
//!
//! # Checks
//! After each event, the node it touched is checked: `check_invariants()`, then the
//! [`SafetyChecker`] properties over the simulator's mirror of its log; every outgoing
//! acknowledgement and vote is checked against the sender's durable state; every applied entry
//! against every other node's; every confirmed and every served read against the writes
//! acknowledged before it was issued (Read linearizability, thesis §6.4). Nodes an event did not touch did not change, so checking only the
//! touched node after each event is the same as checking every node after every event. A panic
//! inside the core is caught and reported like a violation. Any failure panics with the property,
//! its paper section, the details, the seed, the last events and the replay command.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::raft::{
    Config, Envelope, HardState, MemStorage, Message, ProposeError, RaftNode, ReadIndexError,
    ReadState, Ready, Role,
};
use crate::testing::checker::{
    entry_hash, AckedProposal, LogMirror, Property, ReadFloor, SafetyChecker, Violation,
};
use crate::testing::disk::{DiskConfig, SimDisk, TornWrite};
use crate::testing::network::{NetConfig, SimNetwork};
use crate::testing::rng::SimRng;
use crate::types::{LogEntry, LogIndex, NodeId, Term};

/// How to build a cluster. Every node gets `core` with its own `id` and RNG seed.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub seed: u64,
    pub nodes: usize,
    /// A template: `id`, `voters` and `rng_seed` are filled in per node.
    pub core: Config,
    pub net: NetConfig,
    pub disk: DiskConfig,
    /// Each node's tick period in simulated microseconds (index = node).
    pub tick_us: Vec<u64>,
    /// Printed with every failure: how to replay this run.
    pub replay: String,
}

/// The node index of a `NodeId` (ids are `1..=n`).
pub fn node_index(id: NodeId) -> usize {
    assert!(id.0 >= 1, "NodeId 0 is not a simulator node");
    id.0 as usize - 1
}

/// The `NodeId` of node index `i`.
pub fn node_id(i: usize) -> NodeId {
    NodeId(i as u32 + 1)
}

/// What one event was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stepped {
    Tick(usize),
    Delivered {
        from: usize,
        to: usize,
    },
    Lost {
        from: usize,
        to: usize,
    },
    DiskDone(usize),
    /// A scenario timer with its tag.
    Timer(u64),
    /// Nothing left to do (every node down and no event queued).
    Idle,
}

/// A client proposal's outcome as the client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by a leader at (index, term); no answer yet.
    Pending { node: usize, index: u64, term: Term },
    /// The node it was sent to was not the leader.
    Rejected,
    /// The leader applied it: committed.
    Committed,
    /// The leader applied a different entry at its index: the proposal was lost (allowed).
    Lost,
    /// The leader crashed before answering.
    Unknown,
}

/// A client read's outcome (ReadIndex, thesis §6.4). `floor` is what the read must observe: the
/// acknowledged write with the highest index when it was issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Accepted by a leader; neither confirmed nor dropped yet.
    Pending {
        node: usize,
        floor: Option<ReadFloor>,
    },
    /// Confirmed at `index`; served once the node has applied up to it.
    Confirmed {
        node: usize,
        index: u64,
        floor: Option<ReadFloor>,
    },
    /// Served (and checked) from the node's state machine.
    Served { index: u64 },
    /// The node was not the leader (or was down).
    Rejected,
    /// The node stepped down before confirming it (the client would retry).
    Dropped,
    /// The node crashed before serving it.
    Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterStats {
    pub events: u64,
    pub ticks: u64,
    pub crashes: u64,
    pub restarts: u64,
    pub torn_writes: u64,
    pub proposals: u64,
    pub committed: u64,
    pub rejected: u64,
    pub lost: u64,
    pub unknown: u64,
    pub applied_entries: u64,
    pub reads: u64,
    pub reads_served: u64,
    pub reads_rejected: u64,
    pub reads_dropped: u64,
    pub reads_unknown: u64,
}

#[derive(Clone, Debug)]
enum EventKind {
    Deliver {
        from: usize,
        to: usize,
        env: Envelope,
    },
    DiskDone {
        node: usize,
        incarnation: u64,
        id: u64,
    },
    Timer(u64),
}

#[derive(Clone, Debug)]
struct Event {
    at_us: u64,
    seq: u64,
    kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.at_us, self.seq) == (other.at_us, other.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_us, self.seq).cmp(&(other.at_us, other.seq))
    }
}

/// One line of the bounded trace printed with a failure.
#[derive(Clone, Debug)]
enum TraceRec {
    Tick(usize),
    Deliver {
        from: usize,
        to: usize,
        msg: String,
    },
    Lost {
        from: usize,
        to: usize,
    },
    Disk {
        node: usize,
        entries: usize,
        hard_state: Option<HardState>,
    },
    Crash {
        node: usize,
        torn: Option<(Option<LogIndex>, usize, bool)>,
    },
    Restart {
        node: usize,
        hard_state: HardState,
        last_index: u64,
    },
    Propose {
        node: usize,
        result: String,
    },
    Read {
        node: usize,
        what: String,
    },
    Role {
        node: usize,
        role: Role,
        term: Term,
    },
    Note(String),
}

impl std::fmt::Display for TraceRec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TraceRec::Tick(i) => write!(f, "tick n{i}"),
            TraceRec::Deliver { from, to, msg } => write!(f, "n{from}->n{to} {msg}"),
            TraceRec::Lost { from, to } => {
                write!(f, "n{from}->n{to} lost (partition or node down)")
            }
            TraceRec::Disk {
                node,
                entries,
                hard_state,
            } => {
                write!(
                    f,
                    "n{node} write durable: {entries} entries, hard state {hard_state:?}"
                )
            }
            TraceRec::Crash { node, torn } => write!(
                f,
                "n{node} CRASH; torn prefix kept (truncate_from, entries, hard state): {torn:?}"
            ),
            TraceRec::Restart {
                node,
                hard_state,
                last_index,
            } => {
                write!(
                    f,
                    "n{node} restart from {hard_state:?}, durable last index {last_index}"
                )
            }
            TraceRec::Propose { node, result } => write!(f, "client -> n{node} propose {result}"),
            TraceRec::Read { node, what } => write!(f, "n{node} read {what}"),
            TraceRec::Role { node, role, term } => {
                write!(f, "n{node} is now {role:?} in term {term}")
            }
            TraceRec::Note(text) => write!(f, "{text}"),
        }
    }
}

const TRACE_LEN: usize = 60;

struct Slot {
    core: Option<RaftNode<MemStorage>>,
    /// The durable log while the node is down (the core owns it while up).
    down_log: Option<MemStorage>,
    durable_hs: HardState,
    durable: LogMirror,
    /// The node's whole log (durable + in flight), as the Readys described it.
    mirror: LogMirror,
    disk: SimDisk,
    incarnation: u64,
    tick_us: u64,
    next_tick_us: u64,
    ticks_paused: bool,
    /// The next index this incarnation must apply.
    next_apply: Option<u64>,
    last_role: Option<(Role, Term)>,
    /// When this node last sent AppendEntries to every peer in one Ready (a heartbeat round).
    last_broadcast_us: Option<u64>,
    /// Reads this incarnation accepted and has neither confirmed nor dropped.
    reads_pending: usize,
    /// Reads confirmed here and waiting for the state machine to reach their index.
    reads_waiting: Vec<u64>,
}

/// The simulated cluster. See the module docs.
pub struct Cluster {
    pub config: ClusterConfig,
    now_us: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Event>>,
    slots: Vec<Slot>,
    pub net: SimNetwork,
    rng: SimRng,
    pub checker: SafetyChecker,
    outcomes: Vec<Outcome>,
    /// (node, index) -> proposal id, for proposals a leader accepted and has not answered.
    pending: BTreeMap<(usize, u64), u64>,
    /// Every client read, indexed by its id (the `ctx` handed to the core).
    reads: Vec<ReadOutcome>,
    pub stats: ClusterStats,
    trace: VecDeque<(u64, u64, TraceRec)>,
    /// Record a trace (costs a little; on by default, off for the Figure 16 experiment).
    pub tracing: bool,
    /// How many events the failure report shows.
    pub trace_len: usize,
    /// Whether ticks go into the trace (they drown everything else at fine tick periods).
    pub trace_ticks: bool,
    /// `entries_blocked[to]`: AppendEntries carrying entries to `to` are lost (heartbeats pass).
    /// Lets an experiment give followers logs of different lengths while they still hear from
    /// the leader.
    entries_blocked: Vec<bool>,
}

impl Cluster {
    /// Builds and starts `config.nodes` fresh nodes.
    pub fn new(config: ClusterConfig) -> Cluster {
        let n = config.nodes;
        assert!(
            n >= 1 && config.tick_us.len() == n,
            "{n} nodes need {n} tick periods"
        );
        let rng = SimRng::new(config.seed);
        let mut slots = Vec::with_capacity(n);
        for i in 0..n {
            let tick_us = config.tick_us[i];
            assert!(tick_us > 0, "node {i} has a zero tick period");
            slots.push(Slot {
                core: None,
                down_log: Some(MemStorage::default()),
                durable_hs: HardState::default(),
                durable: LogMirror::default(),
                mirror: LogMirror::default(),
                disk: SimDisk::new(config.disk.clone()),
                incarnation: 0,
                tick_us,
                next_tick_us: 0,
                ticks_paused: false,
                next_apply: None,
                last_role: None,
                last_broadcast_us: None,
                reads_pending: 0,
                reads_waiting: Vec::new(),
            });
        }
        let net = SimNetwork::new(n, config.net.clone());
        let mut c = Cluster {
            config,
            now_us: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            slots,
            net,
            rng,
            checker: SafetyChecker::new(n),
            outcomes: Vec::new(),
            pending: BTreeMap::new(),
            reads: Vec::new(),
            stats: ClusterStats::default(),
            trace: VecDeque::with_capacity(TRACE_LEN),
            tracing: true,
            trace_ticks: true,
            trace_len: TRACE_LEN,
            entries_blocked: vec![false; n],
        };
        for i in 0..n {
            c.restart(i);
        }
        c.stats.restarts = 0;
        c
    }

    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    pub fn nodes(&self) -> usize {
        self.slots.len()
    }

    pub fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.slots[i].core.is_some()
    }

    pub fn core(&self, i: usize) -> Option<&RaftNode<MemStorage>> {
        self.slots[i].core.as_ref()
    }

    pub fn mirror(&self, i: usize) -> &LogMirror {
        &self.slots[i].mirror
    }

    pub fn last_broadcast_us(&self, i: usize) -> Option<u64> {
        self.slots[i].last_broadcast_us
    }

    pub fn outcome(&self, id: u64) -> Outcome {
        self.outcomes[id as usize]
    }

    pub fn read_outcome(&self, id: u64) -> ReadOutcome {
        self.reads[id as usize]
    }

    pub fn set_tick_period(&mut self, i: usize, tick_us: u64) {
        assert!(tick_us > 0);
        self.slots[i].tick_us = tick_us;
    }

    /// Stops or resumes a node's clock (it still receives messages).
    pub fn set_ticks_paused(&mut self, i: usize, paused: bool) {
        let s = &mut self.slots[i];
        if s.ticks_paused && !paused {
            // A random phase: real clocks are not aligned to each other's ticks.
            s.next_tick_us = self.now_us + 1 + self.rng.range(0, s.tick_us - 1);
        }
        s.ticks_paused = paused;
    }

    /// Loses (or stops losing) every AppendEntries with entries sent to node `to`; heartbeats
    /// still arrive.
    pub fn set_entries_blocked(&mut self, to: usize, blocked: bool) {
        self.entries_blocked[to] = blocked;
    }

    /// Schedules a scenario timer; [`Cluster::step`] returns `Stepped::Timer(tag)` when it fires.
    pub fn schedule_timer(&mut self, at_us: u64, tag: u64) {
        self.push(at_us.max(self.now_us), EventKind::Timer(tag));
    }

    fn push(&mut self, at_us: u64, kind: EventKind) {
        self.seq += 1;
        self.queue.push(Reverse(Event {
            at_us,
            seq: self.seq,
            kind,
        }));
    }

    fn note(&mut self, rec: TraceRec) {
        if !self.tracing {
            return;
        }
        if self.trace.len() >= self.trace_len {
            self.trace.pop_front();
        }
        self.trace.push_back((self.stats.events, self.now_us, rec));
    }

    /// The nodes that are up and believe they are leader, with their terms.
    pub fn leaders(&self) -> Vec<(usize, Term)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let c = s.core.as_ref()?;
                (c.role() == Role::Leader).then(|| (i, c.term()))
            })
            .collect()
    }

    /// A leader that a majority of the cluster (itself included) knows as leader of its term.
    pub fn leader_known_to_majority(&self) -> Option<usize> {
        let majority = self.slots.len() / 2 + 1;
        for (i, term) in self.leaders() {
            let id = node_id(i);
            let knowers = self
                .slots
                .iter()
                .enumerate()
                .filter(|(j, s)| {
                    s.core
                        .as_ref()
                        .is_some_and(|c| c.term() == term && (*j == i || c.leader() == Some(id)))
                })
                .count();
            if knowers >= majority {
                return Some(i);
            }
        }
        None
    }

    /// Panics with the violation, the seed, the recent trace and the replay command.
    pub fn fail(&self, v: Violation) -> ! {
        let mut msg = String::new();
        let _ = writeln!(msg, "SIMULATION FAILURE: {}", v.property);
        let _ = writeln!(msg, "  {}", v.details);
        let _ = writeln!(
            msg,
            "  seed={} nodes={} event={} time={:.3}ms",
            self.config.seed,
            self.slots.len(),
            self.stats.events,
            self.now_us as f64 / 1000.0
        );
        for (i, s) in self.slots.iter().enumerate() {
            match &s.core {
                Some(c) => {
                    let _ = writeln!(
                        msg,
                        "  node {i}: {:?} term {} leader {:?} commit {} last {} durable {} hs {:?}",
                        c.role(),
                        c.term(),
                        c.leader(),
                        c.commit_index(),
                        s.mirror.last_index(),
                        s.durable.last_index(),
                        s.durable_hs
                    );
                }
                None => {
                    let _ = writeln!(
                        msg,
                        "  node {i}: down, durable {} hs {:?}",
                        s.durable.last_index(),
                        s.durable_hs
                    );
                }
            }
        }
        let _ = writeln!(
            msg,
            "  last {} events (event#, ms, what):",
            self.trace.len()
        );
        for (n, t, rec) in &self.trace {
            let _ = writeln!(msg, "    #{n} {:.3} {rec}", *t as f64 / 1000.0);
        }
        let _ = writeln!(msg, "  replay: {}", self.config.replay);
        panic!("{msg}");
    }

    fn check(&self, r: Result<(), Violation>) {
        if let Err(v) = r {
            self.fail(v);
        }
    }

    /// Runs `f` on the core of node `i`, turning a panic inside the core into a reported failure.
    fn with_core<R>(
        &mut self,
        i: usize,
        what: &str,
        f: impl FnOnce(&mut RaftNode<MemStorage>) -> R,
    ) -> R {
        let core = self.slots[i]
            .core
            .as_mut()
            .unwrap_or_else(|| panic!("with_core({i}, {what}) on a node that is down"));
        match catch_unwind(AssertUnwindSafe(|| f(core))) {
            Ok(r) => r,
            Err(payload) => {
                let text = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "non-string panic".to_string());
                self.fail(Violation::new(
                    Property::NodeInvariants,
                    format!("node {i} panicked in {what}: {text}"),
                ))
            }
        }
    }

    /// Processes the next event. Returns what it was.
    pub fn step(&mut self) -> Stepped {
        // The earliest tick among running nodes, ties to the lowest index.
        let mut tick: Option<(u64, usize)> = None;
        for (i, s) in self.slots.iter().enumerate() {
            if s.core.is_some() && !s.ticks_paused && tick.is_none_or(|(t, _)| s.next_tick_us < t) {
                tick = Some((s.next_tick_us, i));
            }
        }
        let queued = self.queue.peek().map(|Reverse(e)| e.at_us);
        let take_tick = match (tick, queued) {
            (Some((t, _)), Some(q)) => t <= q,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return Stepped::Idle,
        };
        self.stats.events += 1;
        if take_tick {
            let (t, i) = tick.expect("tick chosen");
            self.now_us = t;
            self.slots[i].next_tick_us = t + self.slots[i].tick_us;
            self.stats.ticks += 1;
            if self.trace_ticks {
                self.note(TraceRec::Tick(i));
            }
            self.with_core(i, "tick", |c| c.tick());
            self.after_input(i);
            return Stepped::Tick(i);
        }
        let Reverse(ev) = self.queue.pop().expect("event chosen");
        self.now_us = ev.at_us;
        match ev.kind {
            EventKind::Deliver { from, to, env } => {
                if !self.net.deliverable(from, to) || self.slots[to].core.is_none() {
                    self.note(TraceRec::Lost { from, to });
                    return Stepped::Lost { from, to };
                }
                if self.tracing {
                    self.note(TraceRec::Deliver {
                        from,
                        to,
                        msg: brief(&env.msg),
                    });
                }
                let must_adopt = must_adopt_term(&env.msg);
                self.with_core(to, "step", |c| c.step(env));
                self.after_input(to);
                if let Some(t) = must_adopt {
                    let term = self.slots[to].core.as_ref().map_or(t, |c| c.term());
                    if term < t {
                        self.fail(Violation::new(
                            Property::TermAdoption,
                            format!(
                                "node {to} handled a message of term {t} from node {from} and \
                                 stayed in term {term}"
                            ),
                        ));
                    }
                }
                Stepped::Delivered { from, to }
            }
            EventKind::DiskDone {
                node,
                incarnation,
                id,
            } => {
                if self.slots[node].incarnation != incarnation || self.slots[node].core.is_none() {
                    return Stepped::DiskDone(node);
                }
                self.complete_write(node, id);
                Stepped::DiskDone(node)
            }
            EventKind::Timer(tag) => Stepped::Timer(tag),
        }
    }

    /// Drains every Ready of node `i`, then checks it.
    fn after_input(&mut self, i: usize) {
        loop {
            let has = self.with_core(i, "has_ready", |c| c.has_ready());
            if !has {
                break;
            }
            let rd = self.with_core(i, "ready", |c| c.ready());
            self.process_ready(i, rd);
        }
        self.check_node(i);
    }

    fn process_ready(&mut self, i: usize, rd: Ready) {
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
        } = rd;
        let token = entries.last().map(|e| (e.index, e.term));
        if let Some(from) = truncate_from {
            if entries.first().is_some_and(|e| e.index != from) {
                self.fail(Violation::new(
                    Property::ReadyContract,
                    format!(
                        "node {i}: Ready truncates from {from} but its entries start at {}",
                        entries[0].index
                    ),
                ));
            }
            self.slots[i].mirror.truncate_from(from);
        }
        for e in &entries {
            let appended = self.slots[i].mirror.append(e);
            match appended {
                Ok(prefix) => {
                    let r = self.checker.on_append(i, e, prefix);
                    self.check(r);
                }
                Err(expected) => self.fail(Violation::new(
                    Property::ReadyContract,
                    format!(
                        "node {i}: Ready entry at index {} (term {}) does not continue its log \
                         (expected index {expected}; truncate_from {truncate_from:?})",
                        e.index, e.term
                    ),
                )),
            }
        }
        let peers = self.slots.len() - 1;
        let appends = messages
            .iter()
            .filter(|m| matches!(m.msg, Message::AppendEntries(_)))
            .count();
        if peers > 0 && appends >= peers {
            self.slots[i].last_broadcast_us = Some(self.now_us);
        }
        for env in messages {
            self.send(i, env);
        }
        let (id, at) = {
            let s = &mut self.slots[i];
            s.disk.submit(
                self.now_us,
                &mut self.rng,
                truncate_from,
                entries,
                hard_state,
                must_sync,
                persisted_messages,
                token,
            )
        };
        let incarnation = self.slots[i].incarnation;
        self.push(
            at,
            EventKind::DiskDone {
                node: i,
                incarnation,
                id,
            },
        );
        for e in committed_entries {
            self.apply(i, e);
        }
        // After this Ready's entries are applied: a confirmed read may be served at once.
        for rs in read_states {
            self.on_read_confirmed(i, rs);
        }
        for ctx in dropped_reads {
            self.on_read_dropped(i, ctx);
        }
    }

    /// Node `i` confirmed a read: check its index against the writes acknowledged before it was
    /// issued, then serve it now or once the state machine reaches the index.
    fn on_read_confirmed(&mut self, i: usize, rs: ReadState) {
        let id = rs.ctx;
        let index = rs.index.0;
        let floor = match self.reads.get(id as usize) {
            Some(&ReadOutcome::Pending { node, floor }) if node == i => floor,
            other => self.fail(Violation::new(
                Property::ReadyContract,
                format!("node {i} confirmed read #{id} at index {index}, which is {other:?}"),
            )),
        };
        if self.tracing {
            self.note(TraceRec::Read {
                node: i,
                what: format!("#{id} confirmed at index {index}"),
            });
        }
        self.check(SafetyChecker::check_read_confirmed(i, id, index, floor));
        self.reads[id as usize] = ReadOutcome::Confirmed {
            node: i,
            index,
            floor,
        };
        self.slots[i].reads_pending -= 1;
        if self.applied_upto(i) >= index {
            self.serve_read(i, id);
        } else {
            self.slots[i].reads_waiting.push(id);
        }
    }

    fn on_read_dropped(&mut self, i: usize, id: u64) {
        match self.reads.get(id as usize) {
            Some(&ReadOutcome::Pending { node, .. }) if node == i => {}
            other => self.fail(Violation::new(
                Property::ReadyContract,
                format!("node {i} dropped read #{id}, which is {other:?}"),
            )),
        }
        if self.tracing {
            self.note(TraceRec::Read {
                node: i,
                what: format!("#{id} dropped"),
            });
        }
        self.reads[id as usize] = ReadOutcome::Dropped;
        self.slots[i].reads_pending -= 1;
        self.stats.reads_dropped += 1;
    }

    /// The last index node `i`'s state machine applied (this incarnation).
    fn applied_upto(&self, i: usize) -> u64 {
        self.slots[i].next_apply.map_or(0, |n| n - 1)
    }

    /// Serves a confirmed read from node `i`'s state machine, which must have applied up to its
    /// index and hold the write it must observe.
    fn serve_read(&mut self, i: usize, id: u64) {
        let ReadOutcome::Confirmed { index, floor, .. } = self.reads[id as usize] else {
            unreachable!("only confirmed reads are served");
        };
        let applied = self.applied_upto(i);
        let r =
            SafetyChecker::check_read_served(i, id, index, applied, &self.slots[i].mirror, floor);
        self.check(r);
        self.reads[id as usize] = ReadOutcome::Served { index };
        self.stats.reads_served += 1;
    }

    /// A client sends a linearizable read to node `i`. Returns the read's id.
    pub fn read(&mut self, i: usize) -> u64 {
        let id = self.reads.len() as u64;
        self.stats.reads += 1;
        if self.slots[i].core.is_none() {
            self.reads.push(ReadOutcome::Rejected);
            self.stats.reads_rejected += 1;
            return id;
        }
        let floor = self.checker.read_floor();
        let r = self.with_core(i, "read_index", |c| c.read_index(id));
        if self.tracing {
            self.note(TraceRec::Read {
                node: i,
                what: format!("#{id} issued: {r:?}"),
            });
        }
        match r {
            Ok(()) => {
                self.reads.push(ReadOutcome::Pending { node: i, floor });
                self.slots[i].reads_pending += 1;
            }
            Err(ReadIndexError::NotLeader { .. }) => {
                self.reads.push(ReadOutcome::Rejected);
                self.stats.reads_rejected += 1;
            }
        }
        self.after_input(i);
        id
    }

    /// Sends one message from node `i`, checking acknowledgements and votes against what is
    /// durable on `i` at this moment.
    fn send(&mut self, i: usize, env: Envelope) {
        let s = &self.slots[i];
        assert_eq!(
            node_index(env.from),
            i,
            "node {i} sent a message as {}",
            env.from
        );
        match &env.msg {
            Message::AppendEntriesResponse(r)
                if r.success && r.last_log_index.0 > s.durable.last_index() =>
            {
                self.fail(Violation::new(
                    Property::DurableBeforeAck,
                    format!(
                        "node {i} acknowledges entries up to {} in term {} to {} while only {} \
                         entries are durable",
                        r.last_log_index,
                        r.term,
                        env.to,
                        s.durable.last_index()
                    ),
                ));
            }
            Message::RequestVoteResponse(r) if r.vote_granted && !r.pre_vote => {
                let hs = s.durable_hs;
                if hs.term < r.term || (hs.term == r.term && hs.vote != Some(env.to)) {
                    self.fail(Violation::new(
                        Property::DurableBeforeVote,
                        format!(
                            "node {i} grants its term-{} vote to {} while its durable hard state \
                             is {hs:?}",
                            r.term, env.to
                        ),
                    ));
                }
            }
            _ => {}
        }
        let to = node_index(env.to);
        assert!(
            to < self.slots.len(),
            "node {i} sent to unknown node {}",
            env.to
        );
        if self.entries_blocked[to] {
            if let Message::AppendEntries(a) = &env.msg {
                if !a.entries.is_empty() {
                    return;
                }
            }
        }
        for at in self.net.send(self.now_us, &mut self.rng) {
            self.push(
                at,
                EventKind::Deliver {
                    from: i,
                    to,
                    env: env.clone(),
                },
            );
        }
    }

    fn complete_write(&mut self, i: usize, id: u64) {
        let w = self.slots[i].disk.complete(id);
        if self.tracing {
            self.note(TraceRec::Disk {
                node: i,
                entries: w.entries.len(),
                hard_state: w.hard_state,
            });
        }
        {
            let s = &mut self.slots[i];
            let core = s.core.as_mut().expect("write completes on a running node");
            if let Some(from) = w.truncate_from {
                core.storage_mut().truncate_suffix(from);
                s.durable.truncate_from(from);
            }
            core.storage_mut().append(&w.entries);
            for e in &w.entries {
                s.durable.append(e).unwrap_or_else(|exp| {
                    panic!(
                        "durable mirror of node {i}: expected {exp}, got {}",
                        e.index
                    )
                });
            }
            if let Some(hs) = w.hard_state {
                s.durable_hs = hs;
            }
        }
        for env in w.persisted_messages {
            self.send(i, env);
        }
        self.with_core(i, "on_persisted", |c| c.on_persisted(w.token));
        self.after_input(i);
    }

    fn apply(&mut self, i: usize, e: LogEntry) {
        let idx = e.index.0;
        let expected = self.slots[i].next_apply.replace(idx + 1);
        if let Some(next) = expected {
            if idx != next {
                self.fail(Violation::new(
                    Property::ReadyContract,
                    format!("node {i} applies index {idx} but the next to apply is {next}"),
                ));
            }
        }
        let s = &self.slots[i];
        if idx > s.durable.last_index() || s.durable.entry_hash_at(idx) != Some(entry_hash(&e)) {
            self.fail(Violation::new(
                Property::ReadyContract,
                format!(
                    "node {i} applies index {idx} (term {}) which is not durable locally (durable \
                     last index {})",
                    e.term,
                    s.durable.last_index()
                ),
            ));
        }
        self.stats.applied_entries += 1;
        let r = self.checker.on_apply(i, &e);
        self.check(r);
        if !self.slots[i].reads_waiting.is_empty() {
            let ready: Vec<u64> = self.slots[i]
                .reads_waiting
                .iter()
                .copied()
                .filter(|&id| {
                    matches!(self.reads[id as usize], ReadOutcome::Confirmed { index, .. } if index <= idx)
                })
                .collect();
            if !ready.is_empty() {
                self.slots[i].reads_waiting.retain(|id| !ready.contains(id));
                for id in ready {
                    self.serve_read(i, id);
                }
            }
        }
        if let Some(id) = self.pending.remove(&(i, idx)) {
            let Outcome::Pending { term, .. } = self.outcomes[id as usize] else {
                unreachable!("pending map holds only pending proposals");
            };
            if e.term == term && e.payload.get(..8) == Some(&id.to_le_bytes()[..]) {
                self.outcomes[id as usize] = Outcome::Committed;
                self.stats.committed += 1;
                let ack_term = self.slots[i]
                    .core
                    .as_ref()
                    .map(|c| c.term())
                    .unwrap_or(term);
                let ack = AckedProposal {
                    id,
                    index: idx,
                    entry_hash: entry_hash(&e),
                    ack_term,
                    prefix: self.slots[i].mirror.prefix_at(idx),
                };
                let slots = &self.slots;
                let leaders = slots.iter().enumerate().filter_map(|(j, s)| {
                    let c = s.core.as_ref()?;
                    (c.role() == Role::Leader).then(|| (j, c.term(), &s.mirror))
                });
                let r = self.checker.on_ack(ack, leaders);
                self.check(r);
            } else {
                self.outcomes[id as usize] = Outcome::Lost;
                self.stats.lost += 1;
            }
        }
    }

    fn check_node(&mut self, i: usize) {
        let s = &self.slots[i];
        let Some(core) = s.core.as_ref() else { return };
        let (role, term, commit) = (core.role(), core.term(), core.commit_index().0);
        if s.last_role != Some((role, term)) {
            self.slots[i].last_role = Some((role, term));
            self.note(TraceRec::Role {
                node: i,
                role,
                term,
            });
        }
        self.with_core(i, "check_invariants", |c| c.check_invariants());
        if role != Role::Leader && self.slots[i].reads_pending > 0 {
            self.fail(Violation::new(
                Property::ReadyContract,
                format!(
                    "node {i} is {role:?} in term {term} with {} reads neither confirmed nor \
                     dropped",
                    self.slots[i].reads_pending
                ),
            ));
        }
        let s = &self.slots[i];
        let r = self
            .checker
            .check_node(i, role == Role::Leader, term, commit, &s.mirror);
        self.check(r);
        let r = self.check_views(i);
        self.check(r);
    }

    /// The node's own view of its log, durability and application must match what the driver
    /// saw (cheap: last entry only).
    fn check_views(&self, i: usize) -> Result<(), Violation> {
        let s = &self.slots[i];
        let Some(core) = s.core.as_ref() else {
            return Ok(());
        };
        let last = core.last_index().0;
        if last != s.mirror.last_index() || core.log_term(LogIndex(last)) != s.mirror.term_at(last)
        {
            return Err(Violation::new(
                Property::MirrorFidelity,
                format!(
                    "node {i} reports last index {last} term {:?}; its Readys describe last index \
                     {} term {:?}",
                    core.log_term(LogIndex(last)),
                    s.mirror.last_index(),
                    s.mirror.term_at(s.mirror.last_index())
                ),
            ));
        }
        let p = core.persisted_index().0;
        if p > s.durable.last_index() || s.durable.term_at(p) != s.mirror.term_at(p) {
            return Err(Violation::new(
                Property::ReadyContract,
                format!(
                    "node {i} believes its log is durable up to {p}, but the durable log ends at \
                     {} (term there {:?} vs log term {:?})",
                    s.durable.last_index(),
                    s.durable.term_at(p),
                    s.mirror.term_at(p)
                ),
            ));
        }
        let applied = core.applied_index().0;
        let expected = s.next_apply.map_or(0, |n| n - 1);
        if applied != expected {
            return Err(Violation::new(
                Property::ReadyContract,
                format!("node {i} reports applied index {applied}, but handed out entries up to {expected}"),
            ));
        }
        Ok(())
    }

    /// Compares every entry of every running node's log with the driver's mirror (O(log size);
    /// run once at the end of a scenario).
    pub fn check_full_fidelity(&self) {
        for (i, s) in self.slots.iter().enumerate() {
            let Some(core) = s.core.as_ref() else {
                continue;
            };
            for idx in 1..=s.mirror.last_index() {
                let got = core.log_entry(LogIndex(idx)).map(|e| entry_hash(&e));
                if got != s.mirror.entry_hash_at(idx) {
                    self.fail(Violation::new(
                        Property::MirrorFidelity,
                        format!("node {i}: entry {idx} differs from the one its Readys described"),
                    ));
                }
            }
        }
    }

    /// A client sends a proposal carrying `extra` bytes to node `i`. Returns the proposal's id.
    pub fn propose(&mut self, i: usize, extra: &[u8]) -> u64 {
        let id = self.outcomes.len() as u64;
        self.stats.proposals += 1;
        let mut payload = id.to_le_bytes().to_vec();
        payload.extend_from_slice(extra);
        if self.slots[i].core.is_none() {
            self.outcomes.push(Outcome::Rejected);
            self.stats.rejected += 1;
            return id;
        }
        let r = self.with_core(i, "propose", |c| c.propose(payload));
        if self.tracing {
            self.note(TraceRec::Propose {
                node: i,
                result: format!("#{id} {r:?}"),
            });
        }
        match r {
            Ok((index, term)) => {
                self.outcomes.push(Outcome::Pending {
                    node: i,
                    index: index.0,
                    term,
                });
                self.pending.insert((i, index.0), id);
            }
            Err(ProposeError::NotLeader { .. } | ProposeError::TooLarge { .. }) => {
                self.outcomes.push(Outcome::Rejected);
                self.stats.rejected += 1;
            }
        }
        self.after_input(i);
        id
    }

    /// Crashes node `i` at this instant (no-op if it is down).
    pub fn crash(&mut self, i: usize) {
        let Some(core) = self.slots[i].core.take() else {
            return;
        };
        self.stats.crashes += 1;
        let mut log = core.storage().clone();
        drop(core);
        let torn = {
            let s = &mut self.slots[i];
            let torn = s.disk.crash(&mut self.rng);
            if let Some(TornWrite {
                truncate_from,
                entries,
                hard_state,
            }) = &torn
            {
                if let Some(from) = truncate_from {
                    log.truncate_suffix(*from);
                    s.durable.truncate_from(*from);
                }
                log.append(entries);
                for e in entries {
                    s.durable.append(e).unwrap_or_else(|exp| {
                        panic!("torn write of node {i}: expected {exp}, got {}", e.index)
                    });
                }
                if let Some(hs) = hard_state {
                    s.durable_hs = *hs;
                }
            }
            s.incarnation += 1;
            s.down_log = Some(log);
            s.mirror = s.durable.clone();
            s.last_role = None;
            torn.map(|t| (t.truncate_from, t.entries.len(), t.hard_state.is_some()))
        };
        if torn.is_some() {
            self.stats.torn_writes += 1;
        }
        self.note(TraceRec::Crash { node: i, torn });
        self.checker.on_crash(i);
        // The client's reads on this node get no answer either.
        self.slots[i].reads_pending = 0;
        self.slots[i].reads_waiting.clear();
        for r in self.reads.iter_mut() {
            let open_here = match *r {
                ReadOutcome::Pending { node, .. } | ReadOutcome::Confirmed { node, .. } => {
                    node == i
                }
                _ => false,
            };
            if open_here {
                *r = ReadOutcome::Unknown;
                self.stats.reads_unknown += 1;
            }
        }
        // The client's connection to this node is gone: its pending proposals get no answer.
        let lost: Vec<(usize, u64)> = self
            .pending
            .range((i, 0)..=(i, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in lost {
            if let Some(id) = self.pending.remove(&k) {
                self.outcomes[id as usize] = Outcome::Unknown;
                self.stats.unknown += 1;
            }
        }
    }

    /// Restarts node `i` from its durable state (no-op if it is up).
    pub fn restart(&mut self, i: usize) {
        let Some(log) = self.slots[i].down_log.take() else {
            return;
        };
        let mut config = self.config.core.clone();
        config.id = node_id(i);
        config.voters = (0..self.slots.len()).map(node_id).collect();
        config.rng_seed = self.rng.fork();
        let hs = self.slots[i].durable_hs;
        let last = log.entries.len() as u64 + log.snapshot_index.0;
        let core = match RaftNode::new(config, hs, log) {
            Ok(c) => c,
            // Either the plan built a bad config (a simulator bug) or the core refused the state
            // the simulated disk kept (a core or driver bug); both stop the run with the seed.
            Err(e) => self.fail(Violation::new(
                Property::NodeInvariants,
                format!("node {i} cannot restart from {hs:?} and a log of {last} entries: {e}"),
            )),
        };
        let s = &mut self.slots[i];
        s.core = Some(core);
        // After a restart the core re-delivers the committed prefix from index 1 (the state
        // machine is rebuilt from scratch).
        s.next_apply = Some(1);
        let offset = self.rng.range(0, s.tick_us - 1);
        s.next_tick_us = self.now_us + offset + 1;
        s.last_broadcast_us = None;
        self.stats.restarts += 1;
        self.note(TraceRec::Restart {
            node: i,
            hard_state: hs,
            last_index: last,
        });
        self.after_input(i);
    }

    /// Writes a free-form line into the trace.
    pub fn trace_note(&mut self, text: impl Into<String>) {
        if self.tracing {
            self.note(TraceRec::Note(text.into()));
        }
    }
}

/// The term a node must have adopted after handling `m` (Raft §5.1: a higher term in any request
/// or response makes a server update its term and become follower). `None` for the messages a
/// core may legitimately leave its term alone for: RequestVote (a server in a leader lease ignores
/// it, thesis §4.2.3; a pre-vote changes no state, §9.6) and granted pre-vote responses (they carry
/// the proposed term).
fn must_adopt_term(m: &Message) -> Option<Term> {
    match m {
        Message::RequestVote(_) => None,
        Message::RequestVoteResponse(r) if r.pre_vote && r.vote_granted => None,
        other => Some(other.term()),
    }
}

/// A one-line summary of a message for the trace.
fn brief(m: &Message) -> String {
    match m {
        Message::RequestVote(r) => format!(
            "{}Vote t{} last {}@t{}",
            if r.pre_vote { "Pre" } else { "Req" },
            r.term,
            r.last_log_index,
            r.last_log_term
        ),
        Message::RequestVoteResponse(r) => format!(
            "{}VoteResp t{} granted={}",
            if r.pre_vote { "Pre" } else { "" },
            r.term,
            r.vote_granted
        ),
        Message::AppendEntries(a) => format!(
            "Append t{} prev {}@t{} n={} commit {}",
            a.term,
            a.prev_log_index,
            a.prev_log_term,
            a.entries.len(),
            a.leader_commit
        ),
        Message::AppendEntriesResponse(r) => format!(
            "AppendResp t{} ok={} last {} conflict {:?}@{:?}",
            r.term, r.success, r.last_log_index, r.conflict_term, r.conflict_index
        ),
    }
}
