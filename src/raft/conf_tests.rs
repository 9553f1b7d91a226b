//! Membership changes in the core (thesis ch. 4), driven through a small lossless in-memory
//! network: configurations take effect on append and are undone by truncation, one change at a
//! time, the new-leader rule, learners, a removed leader stepping down, and the membership
//! mutations of `crate::mutation` each caught by the check it breaks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::mutation::{self, Mutation};
use crate::raft::membership::{ConfChange, Membership};
use crate::raft::{
    AppendEntries, Config, Envelope, HardState, MemStorage, Message, ProposeError, RaftNode,
    RequestVote, RequestVoteResponse, Role, SnapshotId,
};
use crate::types::{EntryType, LogEntry, LogIndex, NodeId, Term};

/// Nodes on a network that delivers every message in order, except to and from nodes that are
/// down (those are dropped).
struct Net {
    nodes: BTreeMap<NodeId, RaftNode<MemStorage>>,
    queue: VecDeque<Envelope>,
    down: BTreeSet<NodeId>,
    /// Drop every AppendEntries answer (the leader never learns its entries are replicated).
    drop_acks: bool,
}

fn config(id: u32, voters: &[u32], learners: &[u32]) -> Config {
    // Node 1 times out first (and alone, for a while), so it is the first leader.
    let (min, max) = if id == 1 { (20, 20) } else { (200, 300) };
    Config {
        learners: learners.iter().map(|&n| NodeId(n)).collect(),
        election_ticks_min: min,
        election_ticks_max: max,
        heartbeat_ticks: 5,
        ..Config::new(
            NodeId(id),
            voters.iter().map(|&n| NodeId(n)).collect(),
            u64::from(id),
        )
    }
}

impl Net {
    /// `voters` and `learners` are the initial configuration; `extra` nodes start outside it
    /// (as learners of their own initial configuration, waiting to be added).
    fn new(voters: &[u32], learners: &[u32], extra: &[u32]) -> Net {
        let mut nodes = BTreeMap::new();
        for &id in voters.iter().chain(learners) {
            let n = RaftNode::new(
                config(id, voters, learners),
                HardState::default(),
                MemStorage::default(),
            )
            .expect("valid config");
            nodes.insert(NodeId(id), n);
        }
        for &id in extra {
            let n = RaftNode::new(
                config(id, voters, &[id]),
                HardState::default(),
                MemStorage::default(),
            )
            .expect("valid config");
            nodes.insert(NodeId(id), n);
        }
        Net {
            nodes,
            queue: VecDeque::new(),
            down: BTreeSet::new(),
            drop_acks: false,
        }
    }

    fn node(&self, id: u32) -> &RaftNode<MemStorage> {
        &self.nodes[&NodeId(id)]
    }

    fn node_mut(&mut self, id: u32) -> &mut RaftNode<MemStorage> {
        self.nodes.get_mut(&NodeId(id)).expect("a node of the net")
    }

    /// Persists and sends every node's Ready, then delivers messages until none is left.
    fn settle(&mut self) {
        loop {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                if self.down.contains(&id) {
                    continue;
                }
                let n = self.nodes.get_mut(&id).expect("listed");
                while n.has_ready() {
                    let mut r = n.ready();
                    let token = r.persist_token();
                    self.queue.extend(std::mem::take(&mut r.messages));
                    if let Some(snap) = r.install_snapshot {
                        // The driver's reset: the log becomes empty after the snapshot's index.
                        *n.storage_mut() = MemStorage {
                            snapshot_index: snap.index,
                            snapshot_term: snap.term,
                            entries: Vec::new(),
                        };
                    }
                    if let Some(from) = r.truncate_from {
                        n.storage_mut().truncate_suffix(from);
                    }
                    n.storage_mut().append(&r.entries);
                    n.on_persisted(token);
                    self.queue.extend(r.persisted_messages);
                    n.check_invariants();
                }
            }
            let Some(env) = self.queue.pop_front() else {
                return;
            };
            if self.down.contains(&env.to) || self.down.contains(&env.from) {
                continue;
            }
            if self.drop_acks && matches!(env.msg, Message::AppendEntriesResponse(_)) {
                continue;
            }
            if let Some(n) = self.nodes.get_mut(&env.to) {
                n.step(env);
                n.check_invariants();
            }
        }
    }

    fn tick(&mut self, ticks: usize) {
        for _ in 0..ticks {
            for (id, n) in &mut self.nodes {
                if !self.down.contains(id) {
                    n.tick();
                }
            }
            self.settle();
        }
    }

    fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(id, n)| !self.down.contains(id) && n.role() == Role::Leader)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Ticks until node 1 leads and has committed its term's NoOp.
    fn elect_1(&mut self) {
        for _ in 0..200 {
            self.tick(1);
            let n = self.node(1);
            if n.role() == Role::Leader && n.log_term(n.commit_index()) == Some(n.term()) {
                return;
            }
        }
        panic!("node 1 did not become leader with a committed entry of its term");
    }

    /// Proposes `cc` on node 1 and lets it commit.
    fn change(&mut self, cc: ConfChange) -> LogIndex {
        let (index, _) = self
            .node_mut(1)
            .propose_conf_change(cc)
            .unwrap_or_else(|e| panic!("{cc} refused: {e}"));
        self.tick(3);
        index
    }
}

fn members(voters: &[u32], learners: &[u32]) -> Membership {
    Membership::new(
        voters.iter().map(|&n| NodeId(n)),
        learners.iter().map(|&n| NodeId(n)),
    )
}

#[test]
fn a_learner_is_added_replicated_to_promoted_and_then_counts() {
    let mut net = Net::new(&[1, 2, 3], &[], &[4]);
    net.elect_1();
    let i = net.change(ConfChange::AddLearner(NodeId(4)));
    assert!(net.node(1).commit_index() >= i);
    let (p, _) = net.node_mut(1).propose(b"x".to_vec()).expect("leader");
    net.tick(3);
    assert_eq!(net.node(4).membership(), &members(&[1, 2, 3], &[4]));
    assert!(
        net.node(4).last_index() >= p,
        "the learner receives the log"
    );
    net.change(ConfChange::PromoteLearner(NodeId(4)));
    for id in 1..=4 {
        assert_eq!(net.node(id).membership(), &members(&[1, 2, 3, 4], &[]));
    }
    // Four voters: two down leave no majority, so nothing commits.
    net.down.extend([NodeId(2), NodeId(3)]);
    let (q, _) = net.node_mut(1).propose(b"y".to_vec()).expect("leader");
    net.tick(3);
    assert!(
        net.node(1).commit_index() < q,
        "1 and 4 are not a majority of 4 voters"
    );
    net.down.remove(&NodeId(3));
    net.tick(10);
    assert!(net.node(1).commit_index() >= q, "1, 3 and 4 are");
}

#[test]
fn a_configuration_takes_effect_when_appended_and_is_undone_by_truncation() {
    let mut net = Net::new(&[1, 2, 3], &[], &[]);
    net.elect_1();
    let n2 = net.node_mut(2);
    let last = n2.last_index();
    let term = n2.term();
    // An uncommitted removal of node 3 in node 2's log, from the leader of its term.
    let cc = LogEntry {
        term,
        index: last.next(),
        entry_type: EntryType::ConfChange,
        payload: ConfChange::RemoveNode(NodeId(3)).encode(),
    };
    n2.step(Envelope {
        from: NodeId(1),
        to: NodeId(2),
        msg: Message::AppendEntries(AppendEntries {
            term,
            leader_id: NodeId(1),
            prev_log_index: last,
            prev_log_term: n2.log_term(last).expect("held"),
            entries: vec![cc],
            leader_commit: n2.commit_index(),
            read_seq: 0,
        }),
    });
    assert_eq!(
        n2.membership(),
        &members(&[1, 2], &[]),
        "the removal is in effect on append, before it commits"
    );
    // A later leader's entry at that index replaces it: the removal is undone.
    let over = LogEntry {
        term: Term(term.0 + 1),
        index: last.next(),
        entry_type: EntryType::Normal,
        payload: b"z".to_vec(),
    };
    n2.step(Envelope {
        from: NodeId(3),
        to: NodeId(2),
        msg: Message::AppendEntries(AppendEntries {
            term: Term(term.0 + 1),
            leader_id: NodeId(3),
            prev_log_index: last,
            prev_log_term: n2.log_term(last).expect("held"),
            entries: vec![over],
            leader_commit: last,
            read_seq: 0,
        }),
    });
    assert_eq!(n2.membership(), &members(&[1, 2, 3], &[]));
    n2.check_invariants();
}

#[test]
fn one_change_at_a_time_and_none_before_the_leader_commits_in_its_term() {
    let mut net = Net::new(&[1, 2, 3], &[], &[4, 5]);
    // 1 leads, but no follower's acknowledgement arrives: its NoOp is not committed.
    net.drop_acks = true;
    for _ in 0..100 {
        net.tick(1);
        if net.node(1).role() == Role::Leader {
            break;
        }
    }
    assert_eq!(net.node(1).role(), Role::Leader);
    assert_ne!(
        net.node(1).log_term(net.node(1).commit_index()),
        Some(net.node(1).term())
    );
    assert_eq!(
        net.node_mut(1)
            .propose_conf_change(ConfChange::AddLearner(NodeId(4))),
        Err(ProposeError::ConfChangeBeforeTermCommit)
    );
    net.drop_acks = false;
    net.down.clear();
    net.tick(10);
    net.down.extend([NodeId(2), NodeId(3)]);
    let (first, _) = net
        .node_mut(1)
        .propose_conf_change(ConfChange::AddLearner(NodeId(4)))
        .expect("the first change is taken");
    assert_eq!(
        net.node_mut(1)
            .propose_conf_change(ConfChange::AddLearner(NodeId(5))),
        Err(ProposeError::ConfChangeInFlight { index: first })
    );
    assert!(matches!(
        net.node_mut(1)
            .propose_conf_change(ConfChange::PromoteLearner(NodeId(2))),
        Err(ProposeError::ConfChangeInFlight { .. })
    ));
    net.down.clear();
    net.tick(10);
    net.node_mut(1)
        .propose_conf_change(ConfChange::AddLearner(NodeId(5)))
        .expect("taken once the first committed");
    assert!(matches!(
        net.node_mut(2)
            .propose_conf_change(ConfChange::RemoveNode(NodeId(3))),
        Err(ProposeError::NotLeader { .. })
    ));
}

#[test]
fn learners_never_campaign_and_do_not_count_for_commit() {
    let mut net = Net::new(&[1, 2, 3], &[4], &[]);
    net.elect_1();
    net.down.insert(NodeId(1));
    net.down.insert(NodeId(2));
    net.tick(2_000);
    assert_eq!(
        net.node(4).role(),
        Role::Follower,
        "a learner never campaigns"
    );
    assert_eq!(
        net.node(4).term(),
        net.node(3).term().min(net.node(4).term())
    );
    net.down.clear();
    net.tick(1_000);
    let l = net.leaders();
    assert_eq!(l.len(), 1, "one leader again");
    assert_ne!(l[0], NodeId(4));
}

#[test]
fn a_removed_leader_steps_down_once_its_removal_commits() {
    let mut net = Net::new(&[1, 2, 3], &[], &[]);
    net.elect_1();
    let (i, _) = net
        .node_mut(1)
        .propose_conf_change(ConfChange::RemoveNode(NodeId(1)))
        .expect("taken");
    assert_eq!(
        net.node(1).role(),
        Role::Leader,
        "it leads until the removal commits"
    );
    net.tick(3);
    assert!(net.node(2).commit_index() >= i || net.node(3).commit_index() >= i);
    assert_ne!(net.node(1).role(), Role::Leader);
    net.tick(1_000);
    let l = net.leaders();
    assert_eq!(l.len(), 1);
    assert_ne!(l[0], NodeId(1), "the removed node never leads again");
    let (p, _) = net
        .node_mut(l[0].0)
        .propose(b"after".to_vec())
        .expect("leader");
    net.tick(10);
    assert!(
        net.node(l[0].0).commit_index() >= p,
        "2 and 3 commit on their own"
    );
}

/// Raft answers a vote request from any server (§5.1, thesis §4.1): a voter whose log does not
/// hold the configuration entry that made the candidate a voter yet must still answer it. The
/// core used to ignore such requests; in simulator seed 201 (issue 15) the one server that could
/// win (its log held the newest configuration, listing it) needed the vote of a server whose
/// older configuration did not list it, and the cluster stayed without a leader for good.
#[test]
fn a_vote_request_from_a_server_outside_the_configuration_is_answered() {
    let mut n2 = RaftNode::new(
        config(2, &[1, 2, 3], &[]),
        HardState::default(),
        MemStorage::default(),
    )
    .expect("valid config");
    for pre_vote in [true, false] {
        n2.step(Envelope {
            from: NodeId(4),
            to: NodeId(2),
            msg: Message::RequestVote(RequestVote {
                term: Term(1),
                candidate_id: NodeId(4),
                last_log_index: LogIndex(3),
                last_log_term: Term(1),
                pre_vote,
                leader_transfer: false,
            }),
        });
        let mut answers = Vec::new();
        while n2.has_ready() {
            let mut r = n2.ready();
            let token = r.persist_token();
            answers.append(&mut r.messages);
            n2.storage_mut().append(&r.entries);
            n2.on_persisted(token);
            answers.append(&mut r.persisted_messages);
        }
        let granted = answers.iter().any(|e| {
            e.to == NodeId(4)
                && matches!(
                    e.msg,
                    Message::RequestVoteResponse(RequestVoteResponse {
                        vote_granted: true,
                        pre_vote: p,
                        ..
                    }) if p == pre_vote
                )
        });
        assert!(
            granted,
            "node 2 grants {} to node 4, which its configuration does not list: {answers:?}",
            if pre_vote { "a pre-vote" } else { "its vote" }
        );
    }
    assert_eq!(n2.hard_state().vote, Some(NodeId(4)));
    n2.check_invariants();
}

/// A learner is promoted only once it acknowledged the entry that added it. Before, a learner
/// that joined with an empty disk (`Config::join`) grants no vote: promoted, it would be a voter
/// that cannot vote, and a configuration that needs its vote (voters 1 and 3 in simulator seed
/// 852 of issue 15, after the learner was promoted with 9 of 124 entries) elects no leader again
/// once the leader fails.
#[test]
fn a_learner_is_promoted_only_once_it_holds_the_entry_that_added_it() {
    let mut net = Net::new(&[1, 2, 3], &[], &[4]);
    net.elect_1();
    net.down.insert(NodeId(4));
    let added = net.change(ConfChange::AddLearner(NodeId(4)));
    assert!(net.node(1).commit_index() >= added, "1, 2 and 3 commit it");
    match net
        .node_mut(1)
        .propose_conf_change(ConfChange::PromoteLearner(NodeId(4)))
    {
        Err(ProposeError::BadConfChange(why)) => {
            assert!(why.contains("in sync with leader"), "{why}");
            assert!(why.contains(&format!("entry {added}")), "{why}");
        }
        other => panic!("a learner that never answered is promoted: {other:?}"),
    }
    assert!(net.node(1).membership().is_learner(NodeId(4)));
    net.down.clear();
    net.tick(10);
    assert!(net.node(4).last_index() >= added);
    net.change(ConfChange::PromoteLearner(NodeId(4)));
    assert!(net.node(1).membership().is_voter(NodeId(4)));
}

/// A leader that removed itself and was deposed before the removal committed campaigns again:
/// its log alone holds the removal, so the other voter (whose log is shorter) cannot win without
/// it and it must not wait for a leader that cannot come (simulator seeds 253, 703, 1188, 1899
/// of issue 15). Elected, it commits its removal and steps down, and the other voter leads.
#[test]
fn a_deposed_leader_whose_removal_is_uncommitted_campaigns_until_it_commits() {
    let mut net = Net::new(&[1, 2], &[], &[]);
    net.elect_1();
    net.down.insert(NodeId(2));
    let (removal, _) = net
        .node_mut(1)
        .propose_conf_change(ConfChange::RemoveNode(NodeId(1)))
        .expect("taken");
    // CheckQuorum: with 2 silent, 1 steps down; the removal is in its log only.
    net.tick(100);
    assert_ne!(net.node(1).role(), Role::Leader);
    assert!(net.node(1).commit_index() < removal);
    assert_eq!(net.node(1).membership(), &members(&[2], &[]));
    net.down.clear();
    net.tick(2_000);
    assert_eq!(
        net.leaders(),
        vec![NodeId(2)],
        "2 leads once 1 committed the removal"
    );
    assert!(net.node(2).commit_index() > removal);
    assert_eq!(net.node(2).membership(), &members(&[2], &[]));
    let (p, _) = net.node_mut(2).propose(b"after".to_vec()).expect("leader");
    net.tick(10);
    assert!(net.node(2).commit_index() >= p, "2 commits alone");
}

// ---------------------------------------------------------------------------------------------
// Mutations: each one breaks a check above, and the check notices.
// ---------------------------------------------------------------------------------------------

/// Whether the learner-commit check holds: with voters 2 and 3 down, nothing the leader proposes
/// may commit, whatever the learner acknowledges.
fn commit_needs_voters() -> bool {
    let mut net = Net::new(&[1, 2, 3], &[4], &[]);
    net.elect_1();
    net.down.extend([NodeId(2), NodeId(3)]);
    let (p, _) = net.node_mut(1).propose(b"x".to_vec()).expect("leader");
    net.tick(5);
    net.node(1).commit_index() < p
}

#[test]
fn learners_counted_for_commit_are_caught() {
    assert!(commit_needs_voters());
    assert!(
        !mutation::with(Some(Mutation::LearnerCountsForCommit), commit_needs_voters),
        "LearnerCountsForCommit not caught"
    );
}

/// Whether elections need a majority of voters: voters 2 and 3 commit an entry while 1 and the
/// learners 4 and 5 are down; then 2 and 3 go down and the others come back. Node 1 must not
/// lead (it lacks a committed entry); counting the learners' grants would let it.
fn election_needs_voters() -> bool {
    let mut net = Net::new(&[1, 2, 3], &[4, 5], &[]);
    net.elect_1();
    net.down.extend([NodeId(1), NodeId(4), NodeId(5)]);
    net.tick(600);
    let leader = net.leaders();
    assert_eq!(leader.len(), 1, "2 or 3 leads");
    let (p, _) = net
        .node_mut(leader[0].0)
        .propose(b"newer".to_vec())
        .expect("leader");
    assert!(net.node(1).last_index() < p);
    net.tick(5);
    assert!(net.node(leader[0].0).commit_index() >= p, "2 and 3 commit");
    net.down.clear();
    net.down.extend([NodeId(2), NodeId(3)]);
    // Only one voter is up: no one may be elected, least of all 1, which lacks the committed entry
    // (it would overwrite it with its own).
    // (1 comes back still leading its old term, which it leaves at its first CheckQuorum round;
    // what must not happen is a new term led by it.)
    let old_term = net.node(1).term();
    for _ in 0..800 {
        net.tick(1);
        let n1 = net.node(1);
        if n1.role() == Role::Leader && n1.term() > old_term {
            return false;
        }
    }
    true
}

#[test]
fn learners_that_vote_are_caught() {
    assert!(election_needs_voters());
    assert!(
        !mutation::with(Some(Mutation::LearnerVotes), election_needs_voters),
        "LearnerVotes not caught"
    );
}

/// Whether a second change is refused while the first is uncommitted (the check is the core's
/// own invariant, so the mutation shows up as a panic from `check_invariants` or as the second
/// change being taken).
fn second_change_refused() -> bool {
    let run = std::panic::catch_unwind(|| {
        let mut net = Net::new(&[1, 2, 3], &[], &[4, 5]);
        net.elect_1();
        net.down.extend([NodeId(2), NodeId(3)]);
        let n1 = net.node_mut(1);
        n1.propose_conf_change(ConfChange::AddLearner(NodeId(4)))
            .expect("first");
        let second = n1.propose_conf_change(ConfChange::AddLearner(NodeId(5)));
        n1.check_invariants();
        second.is_err()
    });
    run.unwrap_or(false)
}

#[test]
fn two_changes_in_flight_are_caught() {
    assert!(second_change_refused());
    assert!(
        !mutation::with(Some(Mutation::TwoChangesInFlight), second_change_refused),
        "TwoChangesInFlight not caught"
    );
}

/// Whether a follower's configuration follows what it appended: node 3 appends the removal of 2
/// (never committed anywhere, since 3's answer is not delivered) and must already count without
/// 2. Under apply-on-commit, 3 would still count 2 and, in a later election, could form a
/// majority with a configuration the leader had already left (thesis §4.1).
fn config_in_effect_on_append() -> bool {
    let mut net = Net::new(&[1, 2, 3], &[], &[]);
    net.elect_1();
    net.down.insert(NodeId(2));
    let (i, _) = net
        .node_mut(1)
        .propose_conf_change(ConfChange::RemoveNode(NodeId(2)))
        .expect("taken");
    // Deliver the append to 3 but not 3's answer: 3 holds the entry, uncommitted everywhere.
    let ready = net.node_mut(1).ready();
    for env in ready.messages {
        if env.to == NodeId(3) {
            net.node_mut(3).step(env);
        }
    }
    let n3 = net.node(3);
    n3.last_index() >= i && n3.commit_index() < i && !n3.membership().contains(NodeId(2))
}

#[test]
fn a_configuration_applied_on_commit_is_caught() {
    assert!(config_in_effect_on_append());
    assert!(
        !mutation::with(Some(Mutation::ConfigOnCommit), config_in_effect_on_append),
        "ConfigOnCommit not caught"
    );
}

/// Issue 15: a follower cut off while the configuration changed, and caught up by a snapshot
/// that covers the changes, must adopt the configuration the snapshot carries. Before the
/// InstallSnapshot message carried it, node 3 kept only its configuration entries up to its
/// commit index (none) and reported the initial voters 1, 2, 3 for good.
#[test]
fn a_follower_caught_up_by_a_snapshot_adopts_the_configuration_it_carries() {
    let mut net = Net::new(&[1, 2, 3], &[], &[4]);
    net.elect_1();
    net.down.insert(NodeId(3));
    net.change(ConfChange::AddLearner(NodeId(4)));
    net.change(ConfChange::PromoteLearner(NodeId(4)));
    net.change(ConfChange::RemoveNode(NodeId(2)));
    net.down.insert(NodeId(2));
    let n1 = net.node(1);
    let commit = n1.commit_index();
    assert_eq!(n1.membership(), &members(&[1, 3, 4], &[]));
    assert_eq!(n1.last_index(), commit, "every change committed on 1 and 4");
    // The leader snapshots everything and compacts its log: node 3 can only be caught up by
    // InstallSnapshot.
    let snap = SnapshotId {
        index: commit,
        term: n1.log_term(commit).expect("committed entry"),
    };
    let n1 = net.node_mut(1);
    n1.snapshot_created(snap);
    n1.storage_mut().compact_prefix(commit);
    assert_eq!(net.node(3).membership(), &members(&[1, 2, 3], &[]));
    net.down.remove(&NodeId(3));
    net.tick(20);
    let n3 = net.node(3);
    assert_eq!(n3.snapshot(), Some(snap), "node 3 installed the snapshot");
    assert_eq!(n3.commit_index(), commit);
    assert_eq!(
        n3.membership(),
        &members(&[1, 3, 4], &[]),
        "node 3 reports the configuration the snapshot carried"
    );
    // And the configuration counts: with node 2 gone, 1 and 3 are a majority of 1, 3, 4.
    let (index, _) = net.node_mut(1).propose(b"after".to_vec()).expect("leader");
    net.down.insert(NodeId(4));
    net.tick(5);
    assert!(net.node(1).commit_index() >= index, "1 and 3 commit");
}

#[test]
fn a_restart_derives_the_configuration_from_the_snapshot_and_the_log_after_it() {
    let cc = |index: u64, c: ConfChange| LogEntry {
        term: Term(1),
        index: LogIndex(index),
        entry_type: EntryType::ConfChange,
        payload: c.encode(),
    };
    let mut log = MemStorage::default();
    log.append(&[
        cc(1, ConfChange::AddLearner(NodeId(4))),
        cc(2, ConfChange::PromoteLearner(NodeId(4))),
        cc(3, ConfChange::RemoveNode(NodeId(2))),
    ]);
    // Without a snapshot: the config file's voters, then every entry.
    let n = RaftNode::new(
        config(1, &[1, 2, 3], &[]),
        HardState::default(),
        log.clone(),
    )
    .expect("valid");
    assert_eq!(n.membership(), &members(&[1, 3, 4], &[]));
    assert_eq!(n.membership_at(LogIndex(1)), &members(&[1, 2, 3], &[4]));
    // From a snapshot at 2 (which recorded voters 1-4): only entry 3 applies over it; entries 1
    // and 2 are already in the snapshot's configuration and must not apply twice.
    log.compact_prefix(LogIndex(1));
    let snap = crate::raft::SnapshotId {
        index: LogIndex(2),
        term: Term(1),
    };
    let n = RaftNode::restart(
        config(1, &[1, 2, 3, 4], &[]),
        HardState::default(),
        log,
        Some(snap),
    )
    .expect("valid");
    assert_eq!(n.membership(), &members(&[1, 3, 4], &[]));
    assert_eq!(n.membership_at(LogIndex(2)), &members(&[1, 2, 3, 4], &[]));
}

/// A leader stops replicating to a server as soon as the entry removing it is appended, so the
/// server never learned the removal had committed and stopped only after its peers' refusals
/// had lasted several election timeouts (issue 15: clients sending to it waited 1.6 s in the
/// chaos runs). Once the removal commits, the leader sends it one last append with the commit.
#[test]
fn a_removed_follower_is_told_that_its_removal_committed() {
    let mut net = Net::new(&[1, 2, 3], &[], &[]);
    net.elect_1();
    let i = net.change(ConfChange::RemoveNode(NodeId(3)));
    assert!(net.node(1).commit_index() >= i, "the removal committed");
    let n3 = net.node(3);
    assert!(
        !n3.membership().contains(NodeId(3)),
        "node 3 appended the configuration without it: {}",
        n3.membership()
    );
    assert!(
        n3.commit_index() >= i,
        "node 3 knows its removal (index {i}) is committed: its commit index is {}",
        n3.commit_index()
    );
    // Told once: the leader tracks it no more, and 2 and 1 go on without it.
    net.tick(50);
    let (p, _) = net.node_mut(1).propose(b"after".to_vec()).expect("leader");
    net.tick(5);
    assert!(net.node(2).commit_index() >= p);
    assert!(net.node(3).commit_index() < p, "no more entries for node 3");
}
