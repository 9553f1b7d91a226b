//! Scenario tests for the consensus core, driving three (sometimes five) `RaftNode`s by hand.
//!
//! Each test sets up a situation from the Raft paper or thesis, delivers messages one by one
//! through a tiny hand-cranked network (links can be cut, a node's writes can be held back), and
//! asserts the behaviour it is named after. `check_invariants()` runs after every input.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rust_raft_log::raft::{
    AppendEntries, AppendEntriesResponse, Config, ConfigError, Envelope, HardState,
    InstallSnapshot, MemStorage, Membership, Message, ProposeError, RaftNode, Ready, RequestVote,
    Role, SnapshotId, Storage,
};
use rust_raft_log::types::{EntryType, LogEntry, LogIndex, NodeId, Term};

const ELECTION_MIN: u64 = 10;
const ELECTION_MAX: u64 = 20;
const HEARTBEAT: u64 = 3;

fn config(id: u32, n: u32) -> Config {
    Config {
        election_ticks_min: ELECTION_MIN,
        election_ticks_max: ELECTION_MAX,
        heartbeat_ticks: HEARTBEAT,
        ..Config::new(
            NodeId(id),
            (1..=n).map(NodeId).collect(),
            0xC0FFEE + u64::from(id),
        )
    }
}

fn entry(index: u64, term: u64) -> LogEntry {
    LogEntry {
        term: Term(term),
        index: LogIndex(index),
        entry_type: EntryType::Normal,
        payload: format!("e{index}t{term}").into_bytes(),
    }
}

/// A log whose entry `i` (1-based) has term `terms[i - 1]`.
fn storage(terms: &[u64]) -> MemStorage {
    let mut s = MemStorage::default();
    let es: Vec<LogEntry> = terms
        .iter()
        .enumerate()
        .map(|(i, &t)| entry(i as u64 + 1, t))
        .collect();
    s.append(&es);
    s
}

fn hs(term: u64) -> HardState {
    HardState {
        term: Term(term),
        vote: None,
        commit: LogIndex(0),
    }
}

/// A hand-cranked network of cores over `MemStorage`.
struct Net {
    nodes: BTreeMap<u32, RaftNode<MemStorage>>,
    queue: VecDeque<Envelope>,
    /// Directed links that drop everything.
    cut: BTreeSet<(u32, u32)>,
    /// Nodes whose Readys are held (not persisted) until `release_writes`.
    hold_writes: BTreeSet<u32>,
    held: BTreeMap<u32, VecDeque<Ready>>,
    /// Every entry each node applied, in order.
    applied: BTreeMap<u32, Vec<LogEntry>>,
    /// Every message handed to the network (delivered or not), in order.
    sent: Vec<Envelope>,
    /// Every snapshot a node's core told its driver to install, in order.
    installs: Vec<(u32, SnapshotId)>,
}

impl Net {
    fn new(n: u32) -> Net {
        Net::from_parts((1..=n).map(|id| (config(id, n), hs(0), MemStorage::default())))
    }

    fn from_parts(parts: impl IntoIterator<Item = (Config, HardState, MemStorage)>) -> Net {
        let mut nodes = BTreeMap::new();
        for (cfg, h, s) in parts {
            let id = cfg.id.0;
            nodes.insert(id, RaftNode::new(cfg, h, s).expect("valid test config"));
        }
        Net {
            nodes,
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            hold_writes: BTreeSet::new(),
            held: BTreeMap::new(),
            applied: BTreeMap::new(),
            sent: Vec::new(),
            installs: Vec::new(),
        }
    }

    /// The state machine of a snapshot ending at `snap`: the entries up to its index, as a node
    /// that applied that far applied them.
    fn snapshot_state(&self, snap: SnapshotId) -> Vec<LogEntry> {
        let source = self
            .applied
            .values()
            .find(|a| {
                a.iter()
                    .any(|e| e.index == snap.index && e.term == snap.term)
            })
            .expect("some node applied the snapshot's last entry");
        source
            .iter()
            .take_while(|e| e.index <= snap.index)
            .cloned()
            .collect()
    }

    /// What a driver does when it took a snapshot at its applied index: tell the core, then
    /// compact its log up to `keep` entries before it.
    fn snapshot_and_compact(&mut self, id: u32, keep: u64) -> SnapshotId {
        let node = self.node_mut(id);
        let index = node.applied_index();
        let snap = SnapshotId {
            index,
            term: node.log_term(index).expect("applied entry in the log"),
        };
        node.snapshot_created(snap);
        let upto = LogIndex(index.0.saturating_sub(keep));
        if upto >= node.storage().first_index() {
            node.storage_mut().compact_prefix(upto);
        }
        node.check_invariants();
        snap
    }

    fn node(&self, id: u32) -> &RaftNode<MemStorage> {
        &self.nodes[&id]
    }

    fn node_mut(&mut self, id: u32) -> &mut RaftNode<MemStorage> {
        self.nodes.get_mut(&id).expect("node exists")
    }

    fn isolate(&mut self, id: u32) {
        for &other in self.nodes.keys() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    fn post(&mut self, env: Envelope) {
        self.sent.push(env.clone());
        self.queue.push_back(env);
    }

    /// Drains every Ready of `id`: messages go out, writes are persisted (or held).
    fn process(&mut self, id: u32) {
        loop {
            let node = self.node_mut(id);
            node.check_invariants();
            if !node.has_ready() {
                return;
            }
            let mut ready = node.ready();
            node.check_invariants();
            for m in std::mem::take(&mut ready.messages) {
                self.post(m);
            }
            if let Some(snap) = ready.install_snapshot {
                // The state machine becomes the snapshot's: the entries up to its index as the
                // leader that sent it applied them (the snapshot's content, in this model).
                let state = self.snapshot_state(snap);
                self.applied.insert(id, state);
                self.installs.push((id, snap));
            }
            self.applied
                .entry(id)
                .or_default()
                .extend(std::mem::take(&mut ready.committed_entries));
            if self.hold_writes.contains(&id) {
                self.held.entry(id).or_default().push_back(ready);
            } else {
                self.persist(id, ready);
            }
        }
    }

    /// What the driver does once a Ready's writes are durable.
    fn persist(&mut self, id: u32, mut ready: Ready) {
        let node = self.node_mut(id);
        let s = node.storage_mut();
        if let Some(snap) = ready.install_snapshot {
            *s = MemStorage {
                snapshot_index: snap.index,
                snapshot_term: snap.term,
                entries: Vec::new(),
            };
        }
        if let Some(t) = ready.truncate_from {
            s.truncate_suffix(t);
        }
        s.append(&ready.entries);
        let token = ready.persist_token();
        for m in std::mem::take(&mut ready.persisted_messages) {
            self.post(m);
        }
        let node = self.node_mut(id);
        node.on_persisted(token);
        node.check_invariants();
    }

    fn release_writes(&mut self, id: u32) {
        self.hold_writes.remove(&id);
        while let Some(r) = self.held.entry(id).or_default().pop_front() {
            self.persist(id, r);
        }
        self.process(id);
    }

    fn step(&mut self, env: Envelope) {
        let to = env.to.0;
        self.node_mut(to).step(env);
        self.node(to).check_invariants();
        self.process(to);
    }

    /// Delivers the oldest queued message (dropping it if its link is cut); returns it.
    fn deliver_one(&mut self) -> Option<Envelope> {
        let env = self.queue.pop_front()?;
        if !self.cut.contains(&(env.from.0, env.to.0)) {
            self.step(env.clone());
        }
        Some(env)
    }

    fn deliver_all(&mut self) {
        for _ in 0..100_000 {
            if self.deliver_one().is_none() {
                return;
            }
        }
        panic!("the network never went quiet");
    }

    /// Delivers in order until a message matching `pred` was delivered; returns whether one was.
    fn deliver_until(&mut self, pred: impl Fn(&Envelope) -> bool) -> bool {
        while let Some(env) = self.deliver_one() {
            if pred(&env) {
                return true;
            }
        }
        false
    }

    fn tick(&mut self, id: u32, n: u64) {
        for _ in 0..n {
            self.node_mut(id).tick();
            self.node(id).check_invariants();
            self.process(id);
        }
    }

    /// Advances every node by `ticks`, delivering all messages after each tick.
    fn run(&mut self, ticks: u64) {
        let ids: Vec<u32> = self.nodes.keys().copied().collect();
        for _ in 0..ticks {
            for &id in &ids {
                self.tick(id, 1);
            }
            self.deliver_all();
        }
    }

    /// Ticks `id` until its election timer fires (it leaves the Follower role), then lets the
    /// campaign run to completion.
    fn campaign(&mut self, id: u32) {
        for _ in 0..=ELECTION_MAX {
            if self.node(id).role() != Role::Follower {
                break;
            }
            self.tick(id, 1);
        }
        assert_ne!(
            self.node(id).role(),
            Role::Follower,
            "node {id} never campaigned"
        );
        self.deliver_all();
    }

    fn leaders(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.role() == Role::Leader)
            .map(|(&id, _)| id)
            .collect()
    }

    fn log_of(&self, id: u32) -> Vec<(u64, u64)> {
        let n = self.node(id);
        (1..=n.last_index().0)
            .map(|i| (i, n.log_term(LogIndex(i)).expect("in range").0))
            .collect()
    }
}

fn is_append_to(env: &Envelope, to: u32) -> bool {
    env.to == NodeId(to) && matches!(env.msg, Message::AppendEntries(_))
}

/// An append carrying entries (not a heartbeat).
fn append_entries(env: &Envelope) -> Option<&AppendEntries> {
    match &env.msg {
        Message::AppendEntries(ae) if !ae.entries.is_empty() => Some(ae),
        _ => None,
    }
}

#[test]
fn election_makes_one_leader_that_commits_its_noop_everywhere() {
    let mut net = Net::new(3);
    net.campaign(1);
    assert_eq!(net.leaders(), vec![1]);
    let leader = net.node(1);
    assert_eq!(leader.term(), Term(1));
    // Raft §5.4.2 / §8: the new leader's first entry is a NoOp of its term.
    let noop = leader.log_entry(LogIndex(1)).expect("noop present");
    assert_eq!((noop.entry_type, noop.term), (EntryType::NoOp, Term(1)));
    for id in 1..=3 {
        let n = net.node(id);
        assert_eq!(n.term(), Term(1), "node {id}");
        assert_eq!(n.leader(), Some(NodeId(1)), "node {id}");
        assert_eq!(n.commit_index(), LogIndex(1), "node {id} commit");
        assert_eq!(net.applied[&id].len(), 1, "node {id} applied the NoOp");
    }
    assert_eq!(net.node(2).role(), Role::Follower);
    assert_eq!(net.node(3).role(), Role::Follower);
}

#[test]
fn minority_cannot_elect_and_pre_vote_keeps_its_term() {
    let mut net = Net::new(3);
    net.isolate(1);
    for _ in 0..5 {
        net.tick(1, ELECTION_MAX + 1);
        net.deliver_all();
    }
    assert!(net.leaders().is_empty());
    // Thesis §9.6: failed pre-votes never raise the term.
    assert_eq!(net.node(1).term(), Term(0));
    assert_eq!(net.node(1).role(), Role::PreCandidate);
}

#[test]
fn pre_vote_keeps_a_partitioned_node_from_disrupting_a_healthy_leader() {
    let mut net = Net::new(3);
    net.campaign(1);
    net.isolate(3);
    // Node 3 loses the leader and keeps timing out; the leader keeps its majority with node 2.
    net.run(10 * ELECTION_MAX);
    assert_eq!(
        net.node(3).term(),
        Term(1),
        "pre-vote failures must not raise the term"
    );
    assert_eq!(net.leaders(), vec![1]);
    // The partition heals while node 3 is in a pre-campaign: the leader's next heartbeat brings
    // it back, at the same term, without an election.
    net.heal();
    net.tick(3, ELECTION_MAX + 1);
    assert_eq!(net.node(3).role(), Role::PreCandidate);
    net.deliver_all();
    net.tick(1, HEARTBEAT);
    net.deliver_all();
    assert_eq!(net.leaders(), vec![1]);
    for id in 1..=3 {
        assert_eq!(net.node(id).term(), Term(1), "node {id}");
    }
    assert_eq!(net.node(3).role(), Role::Follower);
    assert_eq!(net.node(3).leader(), Some(NodeId(1)));
}

#[test]
fn a_follower_in_lease_ignores_a_higher_term_vote_request() {
    // Thesis §4.2.3, as etcd does with CheckQuorum: node 2 heard from leader 1 a tick ago, so a
    // RequestVote of a higher term (here from node 3, which runs without PreVote and lost the
    // leader's heartbeats on a one-way cut) neither raises its term nor gets its vote.
    let mut net = Net::from_parts((1..=3).map(|id| {
        let mut c = config(id, 3);
        if id == 3 {
            c.pre_vote = false;
        }
        (c, hs(0), MemStorage::default())
    }));
    net.campaign(1);
    net.cut.insert((1, 3));
    net.tick(3, ELECTION_MAX + 1);
    assert_eq!(net.node(3).role(), Role::Candidate);
    assert_eq!(net.node(3).term(), Term(2));
    net.tick(1, HEARTBEAT); // node 2 hears from the leader right before the vote request
    net.deliver_all();
    assert_eq!(
        net.node(2).term(),
        Term(1),
        "node 2 in lease must ignore term 2"
    );
    assert_eq!(net.node(2).hard_state().vote, Some(NodeId(1)));
    assert_eq!(net.leaders(), vec![1]);
    assert_eq!(net.node(1).term(), Term(1));
    assert_ne!(net.node(3).role(), Role::Leader);
}

#[test]
fn check_quorum_makes_an_isolated_leader_step_down() {
    let mut net = Net::new(3);
    net.campaign(1);
    // Connected, the leader keeps its role through many CheckQuorum rounds.
    net.run(10 * ELECTION_MIN);
    assert_eq!(net.node(1).role(), Role::Leader);
    net.isolate(1);
    // One full round without answers from anyone, then the check at the end of the next.
    net.tick(1, 2 * ELECTION_MIN);
    net.deliver_all();
    assert_eq!(
        net.node(1).role(),
        Role::Follower,
        "isolated leader must step down"
    );
    assert_eq!(
        net.node(1).term(),
        Term(1),
        "stepping down does not change the term"
    );
    assert_eq!(
        net.node_mut(1).propose(b"x".to_vec()),
        Err(ProposeError::NotLeader { leader_hint: None })
    );
}

#[test]
fn figure8_a_leader_never_commits_an_older_terms_entry_by_counting_replicas() {
    // Raft §5.4.2, Figure 8 with three servers. Node 1 holds index 2 from term 2, node 3 holds a
    // different index 2 from term 3, node 2 holds only index 1. Node 1 wins term 4 (votes from
    // 2) and copies its term-2 entry to node 2: a majority now stores index 2, but committing it
    // would be wrong — node 3 (last term 3) could still win an election with node 2's vote and
    // overwrite it. Only once the leader's own term-4 NoOp is on a majority may it commit.
    // One entry per append, so the term-2 entry and the NoOp travel separately.
    let mut net = Net::from_parts([
        (
            Config {
                max_entries_per_msg: 1,
                ..config(1, 3)
            },
            hs(3),
            storage(&[1, 2]),
        ),
        (config(2, 3), hs(3), storage(&[1])),
        (config(3, 3), hs(3), storage(&[1, 3])),
    ]);
    net.isolate(3);
    // Pre-vote and vote with node 2 only; stop as soon as node 1 leads.
    net.tick(1, ELECTION_MAX + 1);
    while net.node(1).role() != Role::Leader {
        assert!(net.deliver_one().is_some(), "node 1 was not elected");
    }
    assert_eq!(net.leaders(), vec![1]);
    assert_eq!(net.node(1).term(), Term(4));
    assert_eq!(net.log_of(1), vec![(1, 1), (2, 2), (3, 4)]);
    // Deliver until node 2 acknowledged index 2 (the term-2 entry), not yet the NoOp.
    let acked_2 = net.deliver_until(|env| {
        env.to == NodeId(1)
            && matches!(&env.msg, Message::AppendEntriesResponse(r)
                if r.success && r.last_log_index == LogIndex(2))
    });
    assert!(acked_2, "node 2 never acknowledged index 2");
    assert_eq!(net.log_of(2), vec![(1, 1), (2, 2)]);
    assert!(net.node(1).persisted_index() >= LogIndex(3));
    assert_eq!(
        net.node(1).commit_index(),
        LogIndex(0),
        "index 2 (term 2) is on a majority but must not be committed by counting"
    );
    // Once the NoOp of term 4 reaches node 2, everything up to it commits.
    net.deliver_all();
    assert_eq!(net.node(1).commit_index(), LogIndex(3));
    assert_eq!(net.log_of(2), vec![(1, 1), (2, 2), (3, 4)]);
}

#[test]
fn fast_backtracking_skips_a_long_divergent_suffix_in_few_round_trips() {
    // Node 2 holds 100 entries of term 2 that no one else has (an old leader's uncommitted
    // tail); leader 1 has 50 entries of term 3 at the same indexes. Entry by entry, the leader
    // would need ~50 rejected probes; with the conflict hint (§5.3: term 2, first index 6) it
    // needs one.
    let mut t1: Vec<u64> = vec![1; 5];
    t1.extend(std::iter::repeat_n(3, 50));
    let mut t2: Vec<u64> = vec![1; 5];
    t2.extend(std::iter::repeat_n(2, 100));
    let mut net = Net::from_parts([
        (config(1, 3), hs(3), storage(&t1)),
        (config(2, 3), hs(3), storage(&t2)),
        (config(3, 3), hs(3), storage(&[1; 5])),
    ]);
    net.campaign(1);
    assert_eq!(net.leaders(), vec![1]);
    let rejections = net
        .sent
        .iter()
        .filter(|e| {
            e.from == NodeId(2) && matches!(&e.msg, Message::AppendEntriesResponse(r) if !r.success)
        })
        .count();
    assert!(
        rejections <= 2,
        "{rejections} rejections from node 2 before its log matched"
    );
    assert_eq!(net.log_of(2), net.log_of(1));
    assert_eq!(net.node(2).last_index(), LogIndex(56));
    assert_eq!(net.node(1).commit_index(), LogIndex(56));

    // The other hint: a follower whose log is too short reports its last index and the leader
    // jumps straight there (node 3 had 5 entries; it must have been probed at most twice).
    let rejections_3 = net
        .sent
        .iter()
        .filter(|e| {
            e.from == NodeId(3) && matches!(&e.msg, Message::AppendEntriesResponse(r) if !r.success)
        })
        .count();
    assert!(rejections_3 <= 2, "{rejections_3} rejections from node 3");
    assert_eq!(net.log_of(3), net.log_of(1));
}

#[test]
fn pipelining_keeps_at_most_max_inflight_appends_per_follower() {
    let max_inflight = 3;
    let mut net = Net::from_parts((1..=3).map(|id| {
        (
            Config {
                max_entries_per_msg: 1,
                max_inflight_msgs: max_inflight,
                ..config(id, 3)
            },
            hs(0),
            MemStorage::default(),
        )
    }));
    net.campaign(1);
    assert_eq!(net.leaders(), vec![1]);
    let before = net.sent.len();
    for i in 0..10 {
        net.node_mut(1).propose(vec![i]).expect("leader");
    }
    net.process(1);
    let appends_to_2 = net.sent[before..]
        .iter()
        .filter(|e| e.to == NodeId(2) && append_entries(e).is_some())
        .count();
    // Pipelined: more than one append before any answer; bounded: no more than the limit.
    assert_eq!(appends_to_2, max_inflight);
    // Each acknowledgement frees one slot for one more append.
    let before = net.sent.len();
    let acked = net.deliver_until(|e| {
        e.to == NodeId(1)
            && e.from == NodeId(2)
            && matches!(&e.msg, Message::AppendEntriesResponse(r) if r.success)
    });
    assert!(acked);
    let more = net.sent[before..]
        .iter()
        .filter(|e| e.from == NodeId(1) && e.to == NodeId(2) && append_entries(e).is_some())
        .count();
    assert_eq!(
        more, 1,
        "one acknowledgement should release exactly one append"
    );
    net.deliver_all();
    for id in 1..=3 {
        assert_eq!(net.node(id).commit_index(), LogIndex(11), "node {id}");
        assert_eq!(net.applied[&id].len(), 11, "node {id}");
    }
}

#[test]
fn votes_and_acknowledgements_wait_for_the_durable_term_and_vote() {
    let mut node = RaftNode::new(config(2, 3), hs(0), MemStorage::default()).expect("config");
    node.step(Envelope {
        from: NodeId(1),
        to: NodeId(2),
        msg: Message::RequestVote(RequestVote {
            term: Term(1),
            candidate_id: NodeId(1),
            last_log_index: LogIndex(0),
            last_log_term: Term(0),
            pre_vote: false,
            leader_transfer: false,
        }),
    });
    let ready = node.ready();
    assert!(
        ready
            .messages
            .iter()
            .all(|m| !matches!(m.msg, Message::RequestVoteResponse(_))),
        "a vote must not leave before the vote is durable: {:?}",
        ready.messages
    );
    assert!(matches!(
        &ready.persisted_messages[..],
        [Envelope { msg: Message::RequestVoteResponse(r), .. }] if r.vote_granted && r.term == Term(1)
    ));
    assert_eq!(
        ready.hard_state,
        Some(HardState {
            term: Term(1),
            vote: Some(NodeId(1)),
            commit: LogIndex(0)
        }),
        "the vote's term and vote are persisted by the same Ready"
    );
    assert!(ready.must_sync);
    node.on_persisted(ready.persist_token());

    // An append: the acknowledgement rides with the entries it acknowledges.
    node.step(Envelope {
        from: NodeId(1),
        to: NodeId(2),
        msg: Message::AppendEntries(AppendEntries {
            term: Term(1),
            leader_id: NodeId(1),
            prev_log_index: LogIndex(0),
            prev_log_term: Term(0),
            entries: vec![entry(1, 1), entry(2, 1)],
            leader_commit: LogIndex(2),
            read_seq: 0,
        }),
    });
    let ready = node.ready();
    assert!(ready.messages.is_empty(), "{:?}", ready.messages);
    assert_eq!(ready.entries, vec![entry(1, 1), entry(2, 1)]);
    assert!(ready.must_sync);
    assert!(matches!(
        &ready.persisted_messages[..],
        [Envelope {
            msg: Message::AppendEntriesResponse(AppendEntriesResponse {
                success: true,
                last_log_index: LogIndex(2),
                ..
            }),
            ..
        }]
    ));
    // Committed (leader_commit 2) but not durable here yet: nothing to apply.
    assert_eq!(node.commit_index(), LogIndex(2));
    assert!(ready.committed_entries.is_empty());
    node.storage_mut().append(&ready.entries);
    node.on_persisted(ready.persist_token());
    let ready = node.ready();
    assert_eq!(ready.committed_entries, vec![entry(1, 1), entry(2, 1)]);
    node.check_invariants();
}

#[test]
fn a_candidate_asks_at_once_but_counts_its_own_vote_only_once_durable() {
    // As etcd does with asynchronous storage writes: RequestVote leaves in parallel with the
    // write of the new term and self-vote, but the self-vote counts only once that write is
    // durable. Node 2's grant plus an undurable self-vote would be a majority of three; winning
    // on it would let a crash erase the self-vote and node 1 vote again in the same term.
    let mut net = Net::from_parts((1..=3).map(|id| {
        (
            Config {
                pre_vote: false,
                ..config(id, 3)
            },
            hs(0),
            MemStorage::default(),
        )
    }));
    net.isolate(3);
    net.hold_writes.insert(1);
    net.tick(1, ELECTION_MAX + 1);
    assert_eq!(net.node(1).role(), Role::Candidate);
    let requests = net
        .queue
        .iter()
        .filter(|e| matches!(&e.msg, Message::RequestVote(rv) if !rv.pre_vote))
        .count();
    assert_eq!(
        requests, 2,
        "vote requests leave before the self-vote is durable"
    );
    let held = &net.held[&1];
    assert_eq!(
        held.front()
            .and_then(|r| r.hard_state)
            .map(|h| (h.term, h.vote)),
        Some((Term(1), Some(NodeId(1)))),
        "the first Ready persists the new term and self-vote"
    );
    // Node 2 grants; node 1 must not lead yet.
    net.deliver_all();
    assert_eq!(net.node(2).hard_state().vote, Some(NodeId(1)));
    assert_eq!(
        net.node(1).role(),
        Role::Candidate,
        "won on an undurable self-vote"
    );
    // Once its own write is durable, the self-vote counts and node 1 leads.
    net.release_writes(1);
    assert_eq!(net.node(1).role(), Role::Leader);
    assert_eq!(net.node(1).term(), Term(1));
}

#[test]
fn a_candidate_elected_by_the_others_alone_leads_only_once_its_term_is_durable() {
    // Five voters: the grants of nodes 2, 3 and 4 are a majority without node 1's own vote. Had
    // node 1 led at once, a crash before its term-1 write landed would restart it in term 0; it
    // could then win term 1 a second time (voters repeat a vote for the same candidate) and put
    // a different entry at the index its first leadership already sent out as (index, term 1).
    let mut net = Net::from_parts((1..=5).map(|id| {
        (
            Config {
                pre_vote: false,
                ..config(id, 5)
            },
            hs(0),
            MemStorage::default(),
        )
    }));
    net.hold_writes.insert(1);
    net.tick(1, ELECTION_MAX + 1);
    assert_eq!(net.node(1).role(), Role::Candidate);
    net.deliver_all();
    let grants = (2..=5)
        .filter(|&id| net.node(id).hard_state().vote == Some(NodeId(1)))
        .count();
    assert!(
        grants >= 3,
        "the others alone are a majority ({grants} grants)"
    );
    assert_eq!(
        net.node(1).role(),
        Role::Candidate,
        "leads a term that is not durable on its own disk"
    );
    assert!(
        !net.queue
            .iter()
            .any(|e| matches!(e.msg, Message::AppendEntries(_))),
        "no AppendEntries of the undurable term leaves"
    );
    net.release_writes(1);
    assert_eq!(net.node(1).role(), Role::Leader);
    assert_eq!(net.node(1).term(), Term(1));
}

#[test]
fn the_leaders_own_entries_count_toward_commit_only_once_durable() {
    let mut net = Net::new(3);
    net.campaign(1);
    net.isolate(3);
    net.hold_writes.insert(1);
    let (index, _) = net.node_mut(1).propose(b"x".to_vec()).expect("leader");
    net.process(1);
    // Its append left at once (in parallel with the held write)...
    assert!(net.queue.iter().any(|e| is_append_to(e, 2)));
    net.deliver_all();
    // ...node 2 acknowledged, but leader + node 2 is a majority only once the leader's write is
    // durable.
    assert_eq!(net.log_of(2).len() as u64, index.0);
    assert!(net.node(1).commit_index() < index);
    net.release_writes(1);
    assert_eq!(net.node(1).commit_index(), index);
}

#[test]
fn a_higher_term_in_a_response_makes_the_leader_step_down() {
    let mut net = Net::new(3);
    net.campaign(1);
    net.node_mut(1).step(Envelope {
        from: NodeId(2),
        to: NodeId(1),
        msg: Message::AppendEntriesResponse(AppendEntriesResponse {
            term: Term(7),
            success: false,
            last_log_index: LogIndex(1),
            conflict_term: None,
            conflict_index: None,
            read_seq: 0,
        }),
    });
    net.node(1).check_invariants();
    assert_eq!(net.node(1).role(), Role::Follower);
    assert_eq!(net.node(1).term(), Term(7));
    assert_eq!(net.node(1).hard_state().vote, None);
}

#[test]
fn a_vote_goes_only_to_a_candidate_whose_log_is_at_least_as_up_to_date() {
    // Raft §5.4.1. Node 2's log ends with term 2; candidate 3's with term 1 but longer.
    let mut node = RaftNode::new(config(2, 3), hs(2), storage(&[1, 2])).expect("config");
    let ask = |term, last_index, last_term| Envelope {
        from: NodeId(3),
        to: NodeId(2),
        msg: Message::RequestVote(RequestVote {
            term: Term(term),
            candidate_id: NodeId(3),
            last_log_index: LogIndex(last_index),
            last_log_term: Term(last_term),
            pre_vote: false,
            leader_transfer: false,
        }),
    };
    let granted = |r: &Ready| {
        r.persisted_messages
            .iter()
            .any(|m| matches!(&m.msg, Message::RequestVoteResponse(v) if v.vote_granted))
    };
    node.step(ask(3, 5, 1));
    let r = node.ready();
    assert!(!granted(&r), "longer log with an older last term must lose");
    assert_eq!(node.hard_state().vote, None);
    node.step(ask(3, 1, 2));
    let r = node.ready();
    assert!(!granted(&r), "same last term but shorter must lose");
    node.step(ask(3, 2, 2));
    let r = node.ready();
    assert!(granted(&r), "same last term and length wins");
    assert_eq!(node.hard_state().vote, Some(NodeId(3)));
    node.check_invariants();
}

#[test]
fn one_vote_per_term_survives_a_restart() {
    let mut node = RaftNode::new(config(2, 3), hs(0), MemStorage::default()).expect("config");
    let ask = |from: u32| Envelope {
        from: NodeId(from),
        to: NodeId(2),
        msg: Message::RequestVote(RequestVote {
            term: Term(1),
            candidate_id: NodeId(from),
            last_log_index: LogIndex(0),
            last_log_term: Term(0),
            pre_vote: false,
            leader_transfer: false,
        }),
    };
    node.step(ask(1));
    let r = node.ready();
    let durable = r.hard_state.expect("vote persisted");
    // Restart from what was durable, then node 3 asks for the same term.
    let mut node = RaftNode::new(config(2, 3), durable, MemStorage::default()).expect("config");
    node.step(ask(3));
    let r = node.ready();
    assert!(r.persisted_messages.iter().all(|m| !matches!(
        &m.msg,
        Message::RequestVoteResponse(v) if v.vote_granted
    )));
    assert_eq!(node.hard_state().vote, Some(NodeId(1)));
}

#[test]
fn proposals_off_the_leader_return_not_leader_with_a_hint() {
    let mut net = Net::new(3);
    assert_eq!(
        net.node_mut(2).propose(b"a".to_vec()),
        Err(ProposeError::NotLeader { leader_hint: None }),
        "no leader known yet"
    );
    net.campaign(1);
    assert_eq!(
        net.node_mut(2).propose(b"a".to_vec()),
        Err(ProposeError::NotLeader {
            leader_hint: Some(NodeId(1))
        })
    );
    assert_eq!(
        net.node_mut(3).propose(b"a".to_vec()),
        Err(ProposeError::NotLeader {
            leader_hint: Some(NodeId(1))
        })
    );
    let (index, term) = net.node_mut(1).propose(b"a".to_vec()).expect("leader");
    assert_eq!((index, term), (LogIndex(2), Term(1)));
}

/// Issue 11, finding 1: a payload the log cannot store is refused by the core itself (nothing is
/// appended, no AppendEntries leaves), and an AppendEntries that carries such an entry is dropped
/// as malformed, so no input reaches a durable write that must fail.
#[test]
fn a_payload_above_the_entry_limit_is_refused_and_never_replicated() {
    let small = |id| Config {
        max_entry_payload_bytes: 100,
        ..config(id, 3)
    };
    let mut net = Net::from_parts((1..=3).map(|id| (small(id), hs(0), MemStorage::default())));
    net.campaign(1);
    let last = net.node(1).last_index();
    assert_eq!(
        net.node_mut(1).propose(vec![0; 101]),
        Err(ProposeError::TooLarge {
            payload_bytes: 101,
            max_bytes: 100
        })
    );
    assert_eq!(net.node(1).last_index(), last, "nothing was appended");
    let (index, _) = net.node_mut(1).propose(vec![0; 100]).expect("fits");
    net.process(1);
    net.deliver_all();
    assert_eq!(net.log_of(2), net.log_of(1));
    assert_eq!(net.node(2).last_index(), index);
    // A (forged or misconfigured) leader's entry above the follower's limit is not stored.
    let forged = Envelope {
        from: NodeId(1),
        to: NodeId(2),
        msg: Message::AppendEntries(AppendEntries {
            term: net.node(1).term(),
            leader_id: NodeId(1),
            prev_log_index: index,
            prev_log_term: net.node(1).term(),
            entries: vec![LogEntry {
                payload: vec![0; 101],
                ..entry(index.0 + 1, net.node(1).term().0)
            }],
            leader_commit: index,
            read_seq: 0,
        }),
    };
    net.step(forged);
    assert_eq!(
        net.node(2).last_index(),
        index,
        "the oversized entry was dropped"
    );
}

#[test]
fn a_follower_truncates_a_conflicting_suffix_and_the_driver_is_told() {
    // Node 2 holds an uncommitted term-2 tail at indexes 2..=4; leader 1 of term 3 overwrites it.
    let mut net = Net::from_parts([
        (config(1, 3), hs(2), storage(&[1, 2])),
        (config(2, 3), hs(2), storage(&[1, 1, 1, 1])),
        (config(3, 3), hs(2), storage(&[1, 2])),
    ]);
    net.campaign(1);
    assert_eq!(net.leaders(), vec![1]);
    assert_eq!(net.log_of(2), net.log_of(1));
    assert_eq!(
        net.node(2)
            .storage()
            .entries
            .iter()
            .map(|e| (e.index.0, e.term.0))
            .collect::<Vec<_>>(),
        net.log_of(1),
        "durable storage must match the log after the truncation"
    );
}

#[test]
fn restart_keeps_term_vote_and_the_durable_log() {
    let mut net = Net::new(3);
    net.campaign(1);
    for i in 0..5 {
        net.node_mut(1).propose(vec![i]).expect("leader");
    }
    net.process(1);
    net.deliver_all();
    let (h, s) = (net.node(2).hard_state(), net.node(2).storage().clone());
    let restarted = RaftNode::new(config(2, 3), h, s).expect("restart");
    restarted.check_invariants();
    assert_eq!(restarted.term(), Term(1));
    assert_eq!(restarted.last_index(), LogIndex(6));
    assert_eq!(restarted.persisted_index(), LogIndex(6));
    assert_eq!(restarted.role(), Role::Follower);
}

#[test]
fn a_rejected_higher_term_vote_request_does_not_restart_the_election_timer() {
    // Figure 2 / §5.2 (simulator finding F1): learning a higher term from a candidate we refuse
    // (its log is stale) must not delay our own candidacy, or a stale node with a fast clock
    // keeps every server that could win from ever timing out first.
    let fixed = |id| Config {
        election_ticks_min: 20,
        election_ticks_max: 20,
        pre_vote: false,
        ..config(id, 3)
    };
    let mut node = RaftNode::new(fixed(2), hs(1), storage(&[1, 1])).expect("config");
    for _ in 0..15 {
        node.tick();
    }
    node.step(Envelope {
        from: NodeId(3),
        to: NodeId(2),
        msg: Message::RequestVote(RequestVote {
            term: Term(5),
            candidate_id: NodeId(3),
            last_log_index: LogIndex(1),
            last_log_term: Term(1),
            pre_vote: false,
            leader_transfer: false,
        }),
    });
    assert_eq!(node.term(), Term(5));
    assert_eq!(
        node.hard_state().vote,
        None,
        "stale candidate must not get the vote"
    );
    for _ in 0..5 {
        node.tick();
    }
    assert_eq!(
        node.role(),
        Role::Candidate,
        "the timer must fire 20 ticks after the last leader contact, not 20 after the refusal"
    );
    assert_eq!(node.term(), Term(6));
    node.check_invariants();
}

#[test]
fn proposals_between_two_readys_travel_as_one_append_per_follower() {
    let mut net = Net::new(3);
    net.campaign(1);
    let before = net.sent.len();
    for i in 0..10 {
        net.node_mut(1).propose(vec![i]).expect("leader");
    }
    net.process(1);
    for to in [2, 3] {
        let batches: Vec<usize> = net.sent[before..]
            .iter()
            .filter(|e| e.to == NodeId(to))
            .filter_map(|e| append_entries(e).map(|ae| ae.entries.len()))
            .collect();
        assert_eq!(batches, vec![10], "appends to node {to}");
    }
    net.deliver_all();
    assert_eq!(net.node(3).commit_index(), LogIndex(11));
}

#[test]
fn a_pipeline_whose_appends_were_all_lost_restarts_from_the_match_index() {
    let mut net = Net::new(3);
    net.campaign(1);
    net.run(HEARTBEAT); // node 2 is in Replicate
    net.cut.insert((1, 2));
    let (index, _) = net.node_mut(1).propose(b"lost".to_vec()).expect("leader");
    net.process(1);
    net.deliver_all(); // the append to node 2 is dropped; node 3 acknowledges
    assert_eq!(net.node(1).commit_index(), index);
    assert!(net.node(2).last_index() < index);
    net.heal();
    // No new proposal: heartbeats anchored at node 2's match index succeed, so only noticing
    // that the in-flight append went unanswered for too long gets the entry re-sent.
    net.run(4 * HEARTBEAT);
    assert_eq!(net.node(2).last_index(), index);
    assert_eq!(net.node(2).commit_index(), index);
}

#[test]
fn a_dead_follower_costs_only_empty_probes() {
    let mut net = Net::new(3);
    net.campaign(1);
    net.isolate(3);
    for i in 0..20 {
        net.node_mut(1).propose(vec![i; 100]).expect("leader");
        net.run(HEARTBEAT);
    }
    let with_entries: Vec<usize> = net
        .sent
        .iter()
        .filter(|e| e.to == NodeId(3))
        .filter_map(|e| append_entries(e).map(|ae| ae.entries.len()))
        .collect();
    // The appends sent before the first unanswered round, then only empty probes and heartbeats.
    let max_inflight = net.node(1).config().max_inflight_msgs;
    assert!(
        with_entries.len() <= max_inflight + 1,
        "{} appends with entries to a dead follower: {with_entries:?}",
        with_entries.len()
    );
    // Once it is back, it catches up.
    net.heal();
    net.run(4 * HEARTBEAT);
    assert_eq!(net.log_of(3), net.log_of(1));
}

#[test]
fn a_new_leader_counts_its_voters_as_active_for_the_first_check_quorum_round() {
    // Simulator finding F2: when a round trip is about as long as the minimum election timeout,
    // the first CheckQuorum round can end before any append is answered. The voters answered
    // moments ago, so the new leader must not step down.
    let mut net = Net::new(3);
    net.tick(1, ELECTION_MAX + 1);
    while net.node(1).role() != Role::Leader {
        assert!(net.deliver_one().is_some(), "node 1 was not elected");
    }
    // A whole CheckQuorum round passes before any append answer arrives.
    net.tick(1, ELECTION_MIN);
    assert_eq!(net.node(1).role(), Role::Leader);
    net.deliver_all();
    net.run(3 * ELECTION_MIN);
    assert_eq!(net.node(1).role(), Role::Leader);
}

// ---------------------------------------------------------------------------------------------
// Snapshots (Raft §7)
// ---------------------------------------------------------------------------------------------

fn install_snapshots_to(net: &Net, to: u32) -> Vec<InstallSnapshot> {
    net.sent
        .iter()
        .filter(|e| e.to == NodeId(to))
        .filter_map(|e| match &e.msg {
            Message::InstallSnapshot(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

/// The terms of `id`'s log from `from` to its last index.
fn terms_from(net: &Net, id: u32, from: u64) -> Vec<(u64, u64)> {
    let n = net.node(id);
    (from..=n.last_index().0)
        .map(|i| (i, n.log_term(LogIndex(i)).expect("in range").0))
        .collect()
}

/// Node 1 leads; node 3 is cut off while `n` entries commit; nodes 1 and 2 snapshot at their
/// applied index and compact everything but `keep` entries before it.
fn cluster_with_a_follower_behind_the_compaction(n: u8, keep: u64) -> (Net, SnapshotId) {
    let mut net = Net::new(3);
    net.campaign(1);
    net.isolate(3);
    for i in 0..n {
        net.node_mut(1).propose(vec![i; 10]).expect("leader");
        net.run(1);
    }
    net.run(HEARTBEAT);
    let snap = net.snapshot_and_compact(1, keep);
    net.snapshot_and_compact(2, keep);
    (net, snap)
}

#[test]
fn a_follower_behind_the_compacted_log_catches_up_through_install_snapshot() {
    let (mut net, snap) = cluster_with_a_follower_behind_the_compaction(20, 0);
    assert!(net.node(3).last_index().next() < net.node(1).storage().first_index());
    net.heal();
    net.run(4 * HEARTBEAT);
    let sent = install_snapshots_to(&net, 3);
    assert_eq!(
        sent.len(),
        1,
        "one InstallSnapshot, no retransmission: {sent:?}"
    );
    assert_eq!(sent[0].snapshot, snap);
    assert_eq!(net.installs, vec![(3, snap)]);
    // Node 3's log now starts after the snapshot, and it holds and applied what node 1 did.
    assert_eq!(net.node(3).storage().first_index(), snap.index.next());
    assert_eq!(net.node(3).log_term(snap.index), Some(snap.term));
    let (index, _) = net.node_mut(1).propose(b"after".to_vec()).expect("leader");
    net.process(1);
    net.run(2 * HEARTBEAT);
    assert_eq!(net.node(3).commit_index(), index);
    assert_eq!(
        terms_from(&net, 3, snap.index.0 + 1),
        terms_from(&net, 1, snap.index.0 + 1)
    );
    assert_eq!(net.applied[&3], net.applied[&1], "applied states differ");
}

#[test]
fn catch_up_entries_kept_after_the_snapshot_spare_a_follower_the_snapshot() {
    // Node 3 misses 20 entries; the leader keeps 30 before its snapshot point.
    let (mut net, _) = cluster_with_a_follower_behind_the_compaction(20, 30);
    net.heal();
    net.run(4 * HEARTBEAT);
    assert!(install_snapshots_to(&net, 3).is_empty());
    assert_eq!(net.node(3).last_index(), net.node(1).last_index());
    assert_eq!(net.applied[&3], net.applied[&1]);
}

#[test]
fn a_failed_snapshot_transfer_is_sent_again_once_the_follower_answers() {
    let (mut net, snap) = cluster_with_a_follower_behind_the_compaction(20, 0);
    net.heal();
    // Everything is delivered but the snapshot, whose transfer is lost.
    for _ in 0..12 * HEARTBEAT {
        for id in 1..=3 {
            net.tick(id, 1);
        }
        while let Some(env) = net.queue.pop_front() {
            if !matches!(env.msg, Message::InstallSnapshot(_)) {
                net.step(env);
            }
        }
    }
    // A lost transfer is not retried on a timer (a long transfer would be restarted forever),
    // only when the transport says it failed; heartbeats keep node 3 a follower meanwhile.
    assert_eq!(
        install_snapshots_to(&net, 3).len(),
        1,
        "retransmitted without a report"
    );
    assert_eq!(net.node(3).role(), Role::Follower);
    assert_eq!(net.node(1).role(), Role::Leader);
    net.node_mut(1).report_snapshot_failed(NodeId(3));
    net.heal();
    net.run(4 * HEARTBEAT);
    assert_eq!(install_snapshots_to(&net, 3).len(), 2);
    assert_eq!(net.installs, vec![(3, snap)]);
    assert_eq!(net.applied[&3], net.applied[&1]);
}

/// A follower whose log is `terms`, committed up to `commit`, that receives an InstallSnapshot
/// of `snap` from leader 1 in term 3; returns it and the Ready it produced.
fn follower_receiving(
    terms: &[u64],
    commit: u64,
    snap: SnapshotId,
) -> (RaftNode<MemStorage>, Ready) {
    let h = HardState {
        term: Term(3),
        vote: None,
        commit: LogIndex(commit),
    };
    let mut node = RaftNode::new(config(2, 3), h, storage(terms)).expect("valid");
    node.step(Envelope {
        from: NodeId(1),
        to: NodeId(2),
        msg: Message::InstallSnapshot(InstallSnapshot {
            term: Term(3),
            leader_id: NodeId(1),
            snapshot: snap,
            membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)], []),
            read_seq: 0,
        }),
    });
    node.check_invariants();
    let ready = node.ready();
    node.check_invariants();
    (node, ready)
}

fn acknowledged(ready: &Ready) -> Option<LogIndex> {
    ready.persisted_messages.iter().find_map(|e| match &e.msg {
        Message::AppendEntriesResponse(r) if r.success => Some(r.last_log_index),
        _ => None,
    })
}

#[test]
fn a_snapshot_whose_last_entry_the_follower_holds_keeps_the_log_after_it() {
    let snap = SnapshotId {
        index: LogIndex(4),
        term: Term(2),
    };
    let (node, ready) = follower_receiving(&[1, 1, 2, 2, 2, 3], 2, snap);
    assert_eq!(ready.install_snapshot, None);
    assert_eq!(
        node.last_index(),
        LogIndex(6),
        "the log after the snapshot was dropped"
    );
    assert_eq!(node.commit_index(), LogIndex(4));
    assert_eq!(acknowledged(&ready), Some(LogIndex(4)));
    // The entries up to the snapshot are applied from the log, as usual.
    let applied: Vec<u64> = ready.committed_entries.iter().map(|e| e.index.0).collect();
    assert_eq!(applied, vec![1, 2, 3, 4]);
}

#[test]
fn a_snapshot_at_or_below_the_commit_index_changes_nothing() {
    let snap = SnapshotId {
        index: LogIndex(3),
        term: Term(2),
    };
    let (node, ready) = follower_receiving(&[1, 1, 2, 2, 2], 5, snap);
    assert_eq!(ready.install_snapshot, None);
    assert_eq!(node.last_index(), LogIndex(5));
    assert_eq!(node.commit_index(), LogIndex(5));
    assert_eq!(acknowledged(&ready), Some(LogIndex(3)));
}

#[test]
fn a_snapshot_the_log_contradicts_replaces_the_whole_log() {
    // The follower's uncommitted entries 3..=5 are of term 2; the snapshot's entry 4 is term 3.
    let snap = SnapshotId {
        index: LogIndex(4),
        term: Term(3),
    };
    let (mut node, ready) = follower_receiving(&[1, 1, 2, 2, 2], 2, snap);
    assert_eq!(ready.install_snapshot, Some(snap));
    assert!(ready.must_sync);
    assert!(
        ready.committed_entries.is_empty(),
        "entries below a snapshot applied"
    );
    assert_eq!(node.last_index(), LogIndex(4));
    assert_eq!(node.log_term(LogIndex(4)), Some(Term(3)));
    assert_eq!(node.log_term(LogIndex(5)), None);
    assert_eq!(node.applied_index(), LogIndex(4));
    assert_eq!(node.commit_index(), LogIndex(4));
    assert_eq!(node.snapshot(), Some(snap));
    assert_eq!(acknowledged(&ready), Some(LogIndex(4)));
    // The driver resets its log; the node goes on from there.
    *node.storage_mut() = MemStorage {
        snapshot_index: snap.index,
        snapshot_term: snap.term,
        entries: Vec::new(),
    };
    node.on_persisted(ready.persist_token());
    node.check_invariants();
    assert_eq!(node.persisted_index(), LogIndex(4));
}

#[test]
fn restart_from_a_snapshot_applies_only_the_entries_after_it() {
    let mut s = storage(&[1, 1, 1, 2, 2, 2, 2, 2]);
    s.compact_prefix(LogIndex(3));
    let snap = SnapshotId {
        index: LogIndex(5),
        term: Term(2),
    };
    let h = HardState {
        term: Term(2),
        vote: None,
        commit: LogIndex(4),
    };
    let mut node = RaftNode::restart(config(1, 3), h, s, Some(snap)).expect("fits");
    assert_eq!(node.applied_index(), LogIndex(5));
    assert_eq!(
        node.commit_index(),
        LogIndex(5),
        "a snapshot's index is committed"
    );
    assert_eq!(node.snapshot(), Some(snap));
    node.check_invariants();
    assert!(node.ready().committed_entries.is_empty());
}

#[test]
fn restart_refuses_a_snapshot_that_the_log_does_not_hold() {
    let h = hs(2);
    for (terms, snap) in [
        (&[1u64, 1, 2][..], (5, 2)), // beyond the log
        (&[1, 1, 2][..], (3, 1)),    // another term there
    ] {
        let snap = SnapshotId {
            index: LogIndex(snap.0),
            term: Term(snap.1),
        };
        let err = RaftNode::restart(config(1, 3), h, storage(terms), Some(snap))
            .err()
            .expect("refused");
        assert!(matches!(err, ConfigError::SnapshotMismatch { .. }), "{err}");
    }
}
