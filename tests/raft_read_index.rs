//! ReadIndex (thesis §6.4) in the pure core, scenario by scenario.
//!
//! Three cores (one in the single-voter test) are driven by hand through a tiny network whose
//! queue the tests can reorder, hold back or drop, so each test stages exactly the interleaving it
//! is named after:
//!
//! ```text
//!   client ──read_index(ctx)──▶ leader ──AppendEntries{read_seq: s}──▶ followers
//!                                  ▲                                      │
//!                                  └── AppendEntriesResponse{read_seq: s} ┘
//!   a majority (leader included) answered round s  ⇒  Ready.read_states += reads of rounds ≤ s
//!   the leader stepped down first                  ⇒  Ready.dropped_reads += their ctxs
//! ```
//!
//! PreVote and CheckQuorum are off unless a test needs them, so a new leader can be elected by
//! just cutting the old one off. `check_invariants()` runs after every input.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rust_raft_log::raft::{
    Config, Envelope, HardState, MemStorage, Message, RaftNode, ReadIndexError, ReadState, Role,
};
use rust_raft_log::types::{LogIndex, NodeId, Term};

const ELECTION_MIN: u64 = 10;
const ELECTION_MAX: u64 = 20;
const HEARTBEAT: u64 = 3;

fn config(id: u32, n: u32) -> Config {
    Config {
        election_ticks_min: ELECTION_MIN,
        election_ticks_max: ELECTION_MAX,
        heartbeat_ticks: HEARTBEAT,
        pre_vote: false,
        check_quorum: false,
        ..Config::new(
            NodeId(id),
            (1..=n).map(NodeId).collect(),
            0xBEEF + u64::from(id),
        )
    }
}

/// A hand-cranked network of cores whose writes complete at once.
struct Net {
    nodes: BTreeMap<u32, RaftNode<MemStorage>>,
    queue: VecDeque<Envelope>,
    /// Directed links that drop everything.
    cut: BTreeSet<(u32, u32)>,
    /// Every ReadState and dropped ctx each node's Readys carried, in order.
    read_states: BTreeMap<u32, Vec<ReadState>>,
    dropped: BTreeMap<u32, Vec<u64>>,
    /// Every message handed to the network, in order.
    sent: Vec<Envelope>,
}

impl Net {
    fn with_configs(configs: Vec<Config>) -> Net {
        let nodes = configs
            .into_iter()
            .map(|c| {
                let id = c.id.0;
                let node = RaftNode::new(c, HardState::default(), MemStorage::default())
                    .expect("valid test config");
                (id, node)
            })
            .collect();
        Net {
            nodes,
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            read_states: BTreeMap::new(),
            dropped: BTreeMap::new(),
            sent: Vec::new(),
        }
    }

    fn new(n: u32) -> Net {
        Net::with_configs((1..=n).map(|id| config(id, n)).collect())
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

    fn post(&mut self, env: Envelope) {
        self.sent.push(env.clone());
        self.queue.push_back(env);
    }

    /// Drains every Ready of `id`, persisting its writes at once.
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
            self.read_states
                .entry(id)
                .or_default()
                .extend(std::mem::take(&mut ready.read_states));
            self.dropped
                .entry(id)
                .or_default()
                .extend(std::mem::take(&mut ready.dropped_reads));
            let node = self.node_mut(id);
            let s = node.storage_mut();
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
    }

    fn step(&mut self, env: Envelope) {
        let to = env.to.0;
        self.node_mut(to).step(env);
        self.process(to);
    }

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

    /// Delivers everything except the messages matching `keep`, which stay queued.
    fn deliver_all_but(&mut self, keep: impl Fn(&Envelope) -> bool) {
        let mut kept = Vec::new();
        for _ in 0..100_000 {
            let Some(env) = self.queue.pop_front() else {
                self.queue.extend(kept);
                return;
            };
            if keep(&env) {
                kept.push(env);
            } else if !self.cut.contains(&(env.from.0, env.to.0)) {
                self.step(env);
            }
        }
        panic!("the network never went quiet");
    }

    /// Removes the queued messages matching `pred` (to deliver later, or never).
    fn take_queued(&mut self, pred: impl Fn(&Envelope) -> bool) -> Vec<Envelope> {
        let (taken, kept): (Vec<_>, Vec<_>) = self.queue.drain(..).partition(|e| pred(e));
        self.queue = kept.into();
        taken
    }

    fn tick(&mut self, id: u32, n: u64) {
        for _ in 0..n {
            self.node_mut(id).tick();
            self.process(id);
        }
    }

    /// Ticks `id` until it campaigns, then lets the election run to completion.
    fn elect(&mut self, id: u32) {
        for _ in 0..=ELECTION_MAX {
            if self.node(id).role() != Role::Follower {
                break;
            }
            self.tick(id, 1);
        }
        self.deliver_all();
        assert_eq!(
            self.node(id).role(),
            Role::Leader,
            "node {id} was not elected"
        );
    }

    fn read(&mut self, id: u32, ctx: u64) {
        self.node_mut(id)
            .read_index(ctx)
            .unwrap_or_else(|e| panic!("node {id} refused read {ctx}: {e}"));
        self.process(id);
    }

    fn confirmed(&self, id: u32) -> Vec<(u64, u64)> {
        self.read_states
            .get(&id)
            .map(|v| v.iter().map(|r| (r.ctx, r.index.0)).collect())
            .unwrap_or_default()
    }

    fn dropped(&self, id: u32) -> Vec<u64> {
        self.dropped.get(&id).cloned().unwrap_or_default()
    }

    /// The AppendEntries sent from message number `since` on: (to, read_seq, entries).
    fn appends_since(&self, since: usize) -> Vec<(u32, u64, usize)> {
        self.sent[since..]
            .iter()
            .filter_map(|e| match &e.msg {
                Message::AppendEntries(a) => Some((e.to.0, a.read_seq, a.entries.len())),
                _ => None,
            })
            .collect()
    }
}

fn is_append_response(e: &Envelope) -> bool {
    matches!(e.msg, Message::AppendEntriesResponse(_))
}

#[test]
fn reads_registered_together_share_one_heartbeat_round_and_later_reads_join_the_next() {
    let mut net = Net::new(3);
    net.elect(1);
    let commit = net.node(1).commit_index();
    assert_eq!(
        net.node(1).log_term(commit),
        Some(Term(1)),
        "the NoOp is committed"
    );

    // Five reads before the next Ready: one round, one empty append per follower.
    let mark = net.sent.len();
    for ctx in 1..=5 {
        net.node_mut(1).read_index(ctx).expect("leader");
    }
    net.process(1);
    let round1 = net.appends_since(mark);
    assert_eq!(
        round1,
        vec![(2, 1, 0), (3, 1, 0)],
        "one entry-less append per follower"
    );
    assert!(
        net.confirmed(1).is_empty(),
        "nothing is confirmed before a majority answers"
    );

    // Three more while round 1 is out: no new messages now.
    let mark = net.sent.len();
    for ctx in 6..=8 {
        net.read(1, ctx);
    }
    assert_eq!(
        net.appends_since(mark),
        vec![],
        "a read during a round waits for the next"
    );

    // The answers to round 1 confirm reads 1..=5 at the commit index they were registered at,
    // and round 2 begins for reads 6..=8.
    let mark = net.sent.len();
    net.deliver_all();
    let c = commit.0;
    let confirmed = net.confirmed(1);
    assert_eq!(
        confirmed,
        vec![
            (1, c),
            (2, c),
            (3, c),
            (4, c),
            (5, c),
            (6, c),
            (7, c),
            (8, c)
        ]
    );
    let rounds: BTreeSet<u64> = net
        .appends_since(mark)
        .iter()
        .map(|&(_, seq, _)| seq)
        .collect();
    assert_eq!(
        rounds,
        BTreeSet::from([2]),
        "8 reads took two rounds in all"
    );
}

#[test]
fn a_read_round_sends_no_entries_and_does_not_hold_back_a_proposal() {
    let mut net = Net::new(3);
    net.elect(1);
    let mark = net.sent.len();
    net.node_mut(1).read_index(1).expect("leader");
    let (idx, _) = net.node_mut(1).propose(b"w".to_vec()).expect("leader");
    net.process(1);
    // Per follower: the proposal's append (with its entry) and the round's heartbeat; both carry
    // the new round, and the proposal goes out in the same Ready as the round.
    let mut appends = net.appends_since(mark);
    appends.sort();
    assert_eq!(appends, vec![(2, 1, 0), (2, 1, 1), (3, 1, 0), (3, 1, 1)]);
    net.deliver_all();
    assert_eq!(net.node(1).commit_index(), idx);
    assert_eq!(
        net.confirmed(1),
        vec![(1, idx.0 - 1)],
        "the read index is the commit index when the read was registered, not later"
    );
}

#[test]
fn a_single_voter_confirms_a_read_at_once() {
    let mut net = Net::with_configs(vec![config(1, 1)]);
    net.elect(1);
    let commit = net.node(1).commit_index();
    assert!(commit >= LogIndex(1), "its NoOp committed");
    net.read(1, 42);
    assert_eq!(net.confirmed(1), vec![(42, commit.0)]);
    assert!(net.sent.is_empty(), "no peers, no messages");
}

#[test]
fn a_follower_refuses_reads_with_the_leader_hint() {
    let mut net = Net::new(3);
    net.elect(1);
    assert_eq!(
        net.node_mut(2).read_index(7),
        Err(ReadIndexError::NotLeader {
            leader_hint: Some(NodeId(1))
        })
    );
}

#[test]
fn a_leader_partitioned_away_cannot_confirm_and_drops_its_reads_on_stepping_down() {
    let mut net = Net::new(3);
    net.elect(1);
    let old_commit = net.node(1).commit_index();
    net.isolate(1);
    net.read(1, 1);
    // Node 1 keeps sending heartbeats (each a new chance for a round) and taking reads, but
    // hears nothing.
    for ctx in 10..15 {
        net.tick(1, HEARTBEAT);
        net.read(1, ctx);
        net.deliver_all();
    }
    assert!(
        net.confirmed(1).is_empty(),
        "no majority answered: nothing confirmed"
    );
    assert!(
        net.dropped(1).is_empty(),
        "still leader: nothing dropped yet"
    );

    // The others elect node 2, which commits a write the old leader never sees.
    net.elect(2);
    let (w, _) = net.node_mut(2).propose(b"new".to_vec()).expect("leader");
    net.process(2);
    net.deliver_all();
    assert!(net.node(2).commit_index() >= w && w > old_commit);

    // The partition heals: node 2's heartbeat deposes node 1, whose reads come back dropped.
    net.cut.clear();
    net.tick(2, HEARTBEAT);
    net.deliver_all();
    assert_eq!(net.node(1).role(), Role::Follower);
    let mut dropped = net.dropped(1);
    dropped.sort();
    assert_eq!(
        dropped,
        vec![1, 10, 11, 12, 13, 14],
        "every pending read is dropped once"
    );
    assert!(
        net.confirmed(1).is_empty(),
        "a dropped read is never confirmed"
    );
    assert!(net.node_mut(1).read_index(3).is_err());
}

#[test]
fn a_new_leader_defers_reads_until_its_noop_commits() {
    let mut net = Net::new(3);
    net.elect(1);
    for i in 0..3u8 {
        net.node_mut(1).propose(vec![i]).expect("leader");
    }
    net.process(1);
    net.deliver_all();
    let old_commit = net.node(1).commit_index();
    let old_last = net.node(1).last_index();
    assert_eq!(old_commit, old_last);

    // Node 2 wins term 2 without node 1. Hold back its NoOp's appends.
    net.isolate(1);
    for _ in 0..=ELECTION_MAX {
        if net.node(2).role() != Role::Follower {
            break;
        }
        net.tick(2, 1);
    }
    while net.node(2).role() != Role::Leader {
        assert!(net.deliver_one().is_some(), "node 2 never won");
    }
    let held = net.take_queued(|e| e.from == NodeId(2));
    assert!(!held.is_empty(), "the NoOp's appends were sent");
    // Node 2 may know less than was committed: its commit index is still from term 1 (here 0,
    // or at best node 1's), so a read index taken now could miss acknowledged writes.
    assert!(net.node(2).commit_index() <= old_commit);
    let mark = net.sent.len();
    net.read(2, 9);
    assert!(
        net.appends_since(mark).is_empty(),
        "no round before the NoOp commits"
    );
    net.tick(2, HEARTBEAT);
    assert!(
        net.appends_since(mark).iter().all(|&(_, seq, _)| seq == 0),
        "heartbeats carry no round while the read waits"
    );
    assert!(net.confirmed(2).is_empty());

    // The NoOp commits; then a round confirms the read at the NoOp's index.
    net.queue.extend(held);
    net.deliver_all();
    let noop = old_last.0 + 1;
    assert_eq!(net.node(2).log_term(LogIndex(noop)), Some(Term(2)));
    assert!(net.node(2).commit_index() >= LogIndex(noop));
    assert_eq!(net.confirmed(2), vec![(9, noop)]);
}

#[test]
fn a_stale_answer_of_an_earlier_round_does_not_confirm_a_later_read() {
    let mut net = Net::new(3);
    net.elect(1);
    let c = net.node(1).commit_index().0;

    // Round 1 (read 1) reaches the followers; their answers are held back.
    net.read(1, 1);
    net.deliver_all_but(is_append_response);
    let round1_answers = net.take_queued(is_append_response);
    assert_eq!(round1_answers.len(), 2);

    // Read 2 joins round 2, which the next heartbeat carries; those heartbeats are lost.
    net.read(1, 2);
    net.tick(1, HEARTBEAT);
    let lost = net.take_queued(|e| e.from == NodeId(1));
    assert!(lost.iter().all(|e| match &e.msg {
        Message::AppendEntries(a) => a.read_seq == 2,
        _ => false,
    }));

    // The old answers arrive, twice (duplicated): they confirm read 1 only.
    for a in round1_answers.iter().chain(round1_answers.iter()) {
        net.step(a.clone());
    }
    assert_eq!(net.confirmed(1), vec![(1, c)]);
    net.take_queued(|_| true);

    // A fresh heartbeat round is answered: now read 2 is confirmed.
    net.tick(1, HEARTBEAT);
    net.deliver_all();
    assert_eq!(net.confirmed(1), vec![(1, c), (2, c)]);
}

#[test]
fn an_answer_claiming_a_round_never_begun_confirms_nothing() {
    let mut net = Net::new(3);
    net.elect(1);
    net.read(1, 1);
    net.take_queued(|_| true);
    let term = net.node(1).term();
    for from in [2, 3] {
        net.step(Envelope {
            from: NodeId(from),
            to: NodeId(1),
            msg: Message::AppendEntriesResponse(rust_raft_log::raft::AppendEntriesResponse {
                term,
                success: false,
                last_log_index: LogIndex(0),
                conflict_term: None,
                conflict_index: None,
                read_seq: 99,
            }),
        });
    }
    assert!(net.confirmed(1).is_empty());
}
