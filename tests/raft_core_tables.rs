//! Table-driven tests of the core's three local decisions: granting a vote (Raft §5.2, §5.4.1,
//! thesis §9.6 and §4.2.3), accepting an append (Figure 2 "AppendEntries RPC" and the conflict hint
//! of §5.3), and where a leader resumes after a rejection (fast backtracking). Each row states the
//! situation, the input and the expected outcome; a failing row prints its name.

use rust_raft_log::raft::{
    AppendEntries, AppendEntriesResponse, Config, Envelope, HardState, MemStorage, Message,
    RaftNode, Ready, RequestVote, RequestVoteResponse, Role,
};
use rust_raft_log::types::{EntryType, LogEntry, LogIndex, NodeId, Term};

fn config(id: u32) -> Config {
    Config {
        election_ticks_min: 10,
        election_ticks_max: 20,
        heartbeat_ticks: 3,
        ..Config::new(
            id_of(id),
            vec![NodeId(1), NodeId(2), NodeId(3)],
            u64::from(id),
        )
    }
}

fn id_of(id: u32) -> NodeId {
    NodeId(id)
}

fn entries_from(start: u64, terms: &[u64]) -> Vec<LogEntry> {
    terms
        .iter()
        .enumerate()
        .map(|(i, &t)| LogEntry {
            term: Term(t),
            index: LogIndex(start + i as u64),
            entry_type: EntryType::Normal,
            payload: vec![t as u8],
        })
        .collect()
}

fn storage(terms: &[u64]) -> MemStorage {
    let mut s = MemStorage::default();
    s.append(&entries_from(1, terms));
    s
}

fn terms_of(node: &RaftNode<MemStorage>) -> Vec<u64> {
    (1..=node.last_index().0)
        .map(|i| node.log_term(LogIndex(i)).expect("in range").0)
        .collect()
}

fn env(from: u32, to: u32, msg: Message) -> Envelope {
    Envelope {
        from: NodeId(from),
        to: NodeId(to),
        msg,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queue {
    /// `Ready::messages`
    Now,
    /// `Ready::persisted_messages`
    AfterPersist,
}

fn vote_reply(r: &Ready) -> Option<(Queue, bool, u64)> {
    let find = |ms: &[Envelope], q| {
        ms.iter().find_map(|m| match &m.msg {
            Message::RequestVoteResponse(RequestVoteResponse {
                term, vote_granted, ..
            }) => Some((q, *vote_granted, term.0)),
            _ => None,
        })
    };
    find(&r.messages, Queue::Now).or_else(|| find(&r.persisted_messages, Queue::AfterPersist))
}

struct VoteRow {
    name: &'static str,
    voter_log: &'static [u64],
    voter_term: u64,
    voter_vote: Option<u32>,
    /// Node 1 leads the voter's term and the voter heard from it a moment ago.
    leader_contact: bool,
    check_quorum: bool,
    /// (term, last index, last term, pre-vote) of node 3's request.
    req: (u64, u64, u64, bool),
    /// (queue, granted, response term), or None for "ignored".
    reply: Option<(Queue, bool, u64)>,
    /// The voter's term and vote afterwards.
    after: (u64, Option<u32>),
}

#[test]
fn vote_decisions() {
    use Queue::*;
    let rows = [
        VoteRow {
            name: "up-to-date candidate of a new term gets the vote, after persisting it",
            voter_log: &[1, 1],
            voter_term: 1,
            voter_vote: None,
            leader_contact: false,
            check_quorum: true,
            req: (2, 2, 1, false),
            reply: Some((AfterPersist, true, 2)),
            after: (2, Some(3)),
        },
        VoteRow {
            name: "§5.4.1: same last term, shorter log loses (the term is still adopted)",
            voter_log: &[1, 1],
            voter_term: 1,
            voter_vote: None,
            leader_contact: false,
            check_quorum: true,
            req: (2, 1, 1, false),
            reply: Some((AfterPersist, false, 2)),
            after: (2, None),
        },
        VoteRow {
            name: "§5.4.1: longer log with an older last term loses",
            voter_log: &[1, 2],
            voter_term: 2,
            voter_vote: None,
            leader_contact: false,
            check_quorum: true,
            req: (3, 9, 1, false),
            reply: Some((AfterPersist, false, 3)),
            after: (3, None),
        },
        VoteRow {
            name: "§5.2: one vote per term",
            voter_log: &[1],
            voter_term: 2,
            voter_vote: Some(1),
            leader_contact: false,
            check_quorum: true,
            req: (2, 1, 1, false),
            reply: Some((AfterPersist, false, 2)),
            after: (2, Some(1)),
        },
        VoteRow {
            name: "a repeated request from the same candidate is granted again",
            voter_log: &[1],
            voter_term: 2,
            voter_vote: Some(3),
            leader_contact: false,
            check_quorum: true,
            req: (2, 1, 1, false),
            reply: Some((AfterPersist, true, 2)),
            after: (2, Some(3)),
        },
        VoteRow {
            name: "a request of an older term is ignored",
            voter_log: &[1],
            voter_term: 3,
            voter_vote: None,
            leader_contact: false,
            check_quorum: true,
            req: (2, 5, 2, false),
            reply: None,
            after: (3, None),
        },
        VoteRow {
            name: "§4.2.3 lease: heard from the leader, a higher-term request is ignored",
            voter_log: &[1],
            voter_term: 1,
            voter_vote: Some(1),
            leader_contact: true,
            check_quorum: true,
            req: (5, 9, 1, false),
            reply: None,
            after: (1, Some(1)),
        },
        VoteRow {
            name: "without CheckQuorum there is no lease",
            voter_log: &[1],
            voter_term: 1,
            voter_vote: Some(1),
            leader_contact: true,
            check_quorum: false,
            req: (5, 9, 1, false),
            reply: Some((AfterPersist, true, 5)),
            after: (5, Some(3)),
        },
        VoteRow {
            name: "§9.6: a pre-vote is granted at once, carries the proposed term, changes nothing",
            voter_log: &[1, 1],
            voter_term: 1,
            voter_vote: Some(1),
            leader_contact: false,
            check_quorum: true,
            req: (2, 2, 1, true),
            reply: Some((Now, true, 2)),
            after: (1, Some(1)),
        },
        VoteRow {
            name: "§9.6: a pre-vote for a stale log is refused with the voter's term",
            voter_log: &[1, 1],
            voter_term: 1,
            voter_vote: None,
            leader_contact: false,
            check_quorum: true,
            req: (2, 1, 1, true),
            reply: Some((Now, false, 1)),
            after: (1, None),
        },
        VoteRow {
            name: "a pre-vote below the voter's term is refused with the voter's term",
            voter_log: &[1],
            voter_term: 3,
            voter_vote: None,
            leader_contact: false,
            check_quorum: true,
            req: (2, 5, 1, true),
            reply: Some((Now, false, 3)),
            after: (3, None),
        },
        VoteRow {
            name: "a pre-vote within the lease is ignored",
            voter_log: &[1],
            voter_term: 1,
            voter_vote: Some(1),
            leader_contact: true,
            check_quorum: true,
            req: (2, 9, 1, true),
            reply: None,
            after: (1, Some(1)),
        },
    ];
    for row in rows {
        let cfg = Config {
            check_quorum: row.check_quorum,
            ..config(2)
        };
        let hs = HardState {
            term: Term(row.voter_term),
            vote: row.voter_vote.map(NodeId),
            commit: LogIndex(0),
        };
        let mut node = RaftNode::new(cfg, hs, storage(row.voter_log)).expect("config");
        if row.leader_contact {
            let last = node.last_index();
            node.step(env(
                1,
                2,
                Message::AppendEntries(AppendEntries {
                    term: Term(row.voter_term),
                    leader_id: NodeId(1),
                    prev_log_index: last,
                    prev_log_term: node.log_term(last).expect("last"),
                    entries: Vec::new(),
                    leader_commit: LogIndex(0),
                    read_seq: 0,
                }),
            ));
            let _ = node.ready();
        }
        let (term, last_index, last_term, pre_vote) = row.req;
        node.step(env(
            3,
            2,
            Message::RequestVote(RequestVote {
                term: Term(term),
                candidate_id: NodeId(3),
                last_log_index: LogIndex(last_index),
                last_log_term: Term(last_term),
                pre_vote,
                leader_transfer: false,
            }),
        ));
        node.check_invariants();
        let ready = node.ready();
        assert_eq!(vote_reply(&ready), row.reply, "row {:?}: reply", row.name);
        assert_eq!(
            (node.term().0, node.hard_state().vote.map(|v| v.0)),
            row.after,
            "row {:?}: term and vote after",
            row.name
        );
        if let Some((AfterPersist, _, _)) = row.reply {
            let h = ready.hard_state.unwrap_or_else(|| HardState {
                term: Term(row.voter_term),
                vote: row.voter_vote.map(NodeId),
                commit: LogIndex(0),
            });
            assert_eq!(
                (h.term.0, h.vote.map(|v| v.0)),
                row.after,
                "row {:?}: the Ready that carries the reply persists the term and vote",
                row.name
            );
        }
    }
}

struct AppendRow {
    name: &'static str,
    follower_log: &'static [u64],
    follower_commit: u64,
    /// (prev index, prev term, first entry index, entry terms, leader commit); term 2 leader.
    ae: (u64, u64, u64, &'static [u64], u64),
    /// (success, last_log_index, conflict_term, conflict_index)
    reply: (bool, u64, Option<u64>, Option<u64>),
    log_after: &'static [u64],
    commit_after: u64,
    truncate_from: Option<u64>,
}

#[test]
fn append_decisions() {
    let rows = [
        AppendRow {
            name: "first entries on an empty log",
            follower_log: &[],
            follower_commit: 0,
            ae: (0, 0, 1, &[1, 1], 1),
            reply: (true, 2, None, None),
            log_after: &[1, 1],
            commit_after: 1,
            truncate_from: None,
        },
        AppendRow {
            name: "prev beyond our log: reject with our last index",
            follower_log: &[1, 1],
            follower_commit: 0,
            ae: (5, 1, 6, &[2], 0),
            reply: (false, 2, None, None),
            log_after: &[1, 1],
            commit_after: 0,
            truncate_from: None,
        },
        AppendRow {
            name: "§5.3 hint: conflicting term at prev and the first index we hold of it",
            follower_log: &[1, 1, 1, 1],
            follower_commit: 0,
            ae: (3, 2, 4, &[2], 0),
            reply: (false, 4, Some(1), Some(1)),
            log_after: &[1, 1, 1, 1],
            commit_after: 0,
            truncate_from: None,
        },
        AppendRow {
            name: "hint: the term's run is scanned back only to just above the commit index",
            follower_log: &[1, 1, 2, 2, 2],
            follower_commit: 2,
            ae: (5, 1, 6, &[], 0),
            reply: (false, 5, Some(2), Some(3)),
            log_after: &[1, 1, 2, 2, 2],
            commit_after: 2,
            truncate_from: None,
        },
        AppendRow {
            name: "Figure 2 step 3: a conflicting entry and all after it are replaced",
            follower_log: &[1, 1, 1],
            follower_commit: 0,
            ae: (1, 1, 2, &[2, 2], 0),
            reply: (true, 3, None, None),
            log_after: &[1, 2, 2],
            commit_after: 0,
            truncate_from: Some(2),
        },
        AppendRow {
            name: "a stale duplicate never truncates a matching suffix; ack covers only it",
            follower_log: &[1, 2, 2, 2],
            follower_commit: 0,
            ae: (1, 1, 2, &[2], 0),
            reply: (true, 2, None, None),
            log_after: &[1, 2, 2, 2],
            commit_after: 0,
            truncate_from: None,
        },
        AppendRow {
            name: "Figure 2 step 5: commit = min(leader commit, last new entry)",
            follower_log: &[1, 2, 2],
            follower_commit: 0,
            ae: (2, 2, 3, &[], 3),
            reply: (true, 2, None, None),
            log_after: &[1, 2, 2],
            commit_after: 2,
            truncate_from: None,
        },
        AppendRow {
            name: "entries at or below our commit index are skipped",
            follower_log: &[1, 1, 1],
            follower_commit: 3,
            ae: (1, 1, 2, &[1, 1, 2], 3),
            reply: (true, 4, None, None),
            log_after: &[1, 1, 1, 2],
            commit_after: 3,
            truncate_from: None,
        },
        AppendRow {
            name: "overlap then extend: no truncation",
            follower_log: &[1, 1],
            follower_commit: 0,
            ae: (1, 1, 2, &[1, 2, 2], 0),
            reply: (true, 4, None, None),
            log_after: &[1, 1, 2, 2],
            commit_after: 0,
            truncate_from: None,
        },
    ];
    for row in rows {
        let hs = HardState {
            term: Term(2),
            vote: None,
            commit: LogIndex(row.follower_commit),
        };
        let mut node = RaftNode::new(config(2), hs, storage(row.follower_log)).expect("config");
        let (prev, prev_term, first, terms, leader_commit) = row.ae;
        node.step(env(
            1,
            2,
            Message::AppendEntries(AppendEntries {
                term: Term(2),
                leader_id: NodeId(1),
                prev_log_index: LogIndex(prev),
                prev_log_term: Term(prev_term),
                entries: entries_from(first, terms),
                leader_commit: LogIndex(leader_commit),
                read_seq: 0,
            }),
        ));
        node.check_invariants();
        assert_eq!(node.role(), Role::Follower, "row {:?}", row.name);
        assert_eq!(node.leader(), Some(NodeId(1)), "row {:?}", row.name);
        let ready = node.ready();
        assert!(
            ready.messages.is_empty(),
            "row {:?}: append answers wait for persistence: {:?}",
            row.name,
            ready.messages
        );
        let reply = ready.persisted_messages.iter().find_map(|m| match &m.msg {
            Message::AppendEntriesResponse(r) => Some((
                r.success,
                r.last_log_index.0,
                r.conflict_term.map(|t| t.0),
                r.conflict_index.map(|i| i.0),
            )),
            _ => None,
        });
        assert_eq!(reply, Some(row.reply), "row {:?}: reply", row.name);
        assert_eq!(terms_of(&node), row.log_after, "row {:?}: log", row.name);
        assert_eq!(
            node.commit_index().0,
            row.commit_after,
            "row {:?}: commit",
            row.name
        );
        assert_eq!(
            ready.truncate_from.map(|i| i.0),
            row.truncate_from,
            "row {:?}: truncate_from",
            row.name
        );
        // The driver's write leaves storage equal to the log.
        let s = node.storage_mut();
        if let Some(t) = ready.truncate_from {
            s.truncate_suffix(t);
        }
        s.append(&ready.entries);
        let durable: Vec<u64> = s.entries.iter().map(|e| e.term.0).collect();
        assert_eq!(
            durable, row.log_after,
            "row {:?}: storage after the write",
            row.name
        );
        node.on_persisted(ready.persist_token());
        node.check_invariants();
    }
}

struct HintRow {
    name: &'static str,
    leader_log: &'static [u64],
    /// (last_log_index, conflict_term, conflict_index) of node 3's rejection.
    rejection: (u64, Option<u64>, Option<u64>),
    /// The prev_log_index of the leader's next append to node 3.
    next_prev: u64,
}

#[test]
fn leader_resumes_after_a_rejection_using_the_hint() {
    let rows = [
        HintRow {
            name: "leader lacks the conflicting term: resume at its first index there",
            leader_log: &[1, 1, 1, 3, 3, 3],
            rejection: (9, Some(2), Some(4)),
            next_prev: 3,
        },
        HintRow {
            name: "leader has the conflicting term: resume after its last entry of it",
            leader_log: &[1, 1, 3, 3, 5, 5, 5],
            rejection: (9, Some(3), Some(3)),
            next_prev: 4,
        },
        HintRow {
            name: "follower too short: resume right after its last index",
            leader_log: &[1, 1, 1, 3, 3, 3],
            rejection: (2, None, None),
            next_prev: 2,
        },
        HintRow {
            name: "term 1 shared up to index 2",
            leader_log: &[1, 1, 3, 3],
            rejection: (4, Some(1), Some(1)),
            next_prev: 2,
        },
        HintRow {
            name: "a hint beyond the probe never moves next_index forward",
            leader_log: &[1, 1, 3, 3, 5, 5, 5],
            rejection: (100, None, None),
            next_prev: 7,
        },
    ];
    for row in rows {
        let last_term = *row.leader_log.last().expect("non-empty");
        let hs = HardState {
            term: Term(last_term),
            vote: None,
            commit: LogIndex(0),
        };
        // Nodes 1 and 2 share the log; node 1 campaigns and wins with node 2's vote.
        let mut n1 = RaftNode::new(config(1), hs, storage(row.leader_log)).expect("config");
        let mut n2 = RaftNode::new(config(2), hs, storage(row.leader_log)).expect("config");
        let mut queue: Vec<Envelope> = Vec::new();
        for _ in 0..=20 {
            n1.tick();
        }
        for _ in 0..10 {
            for node in [&mut n1, &mut n2] {
                let mut r = node.ready();
                node.storage_mut().append(&r.entries);
                let token = r.persist_token();
                queue.append(&mut r.messages);
                queue.append(&mut r.persisted_messages);
                node.on_persisted(token);
            }
            for m in std::mem::take(&mut queue) {
                match m.to.0 {
                    1 => n1.step(m),
                    2 => n2.step(m),
                    _ => {} // node 3 is unreachable
                }
            }
        }
        assert_eq!(n1.role(), Role::Leader, "row {:?}", row.name);
        let term = n1.term();
        let _ = n1.ready();
        let (last, ct, ci) = row.rejection;
        n1.step(env(
            3,
            1,
            Message::AppendEntriesResponse(AppendEntriesResponse {
                term,
                success: false,
                last_log_index: LogIndex(last),
                conflict_term: ct.map(Term),
                conflict_index: ci.map(LogIndex),
                read_seq: 0,
            }),
        ));
        n1.check_invariants();
        let r = n1.ready();
        let prev = r.messages.iter().find_map(|m| match &m.msg {
            Message::AppendEntries(ae) if m.to == NodeId(3) => Some(ae.prev_log_index.0),
            _ => None,
        });
        assert_eq!(prev, Some(row.next_prev), "row {:?}", row.name);
    }
}

#[test]
fn malformed_appends_are_dropped_without_a_reply_or_a_panic() {
    /// (name, prev index, prev term, first entry index, entry terms, leader id)
    type Row = (&'static str, u64, u64, u64, &'static [u64], u32);
    let rows: [Row; 5] = [
        ("gap after prev", 1, 1, 3, &[2], 1),
        ("entry term above the message term", 1, 1, 2, &[3], 1),
        ("entry terms decrease", 1, 1, 2, &[2, 1], 1),
        ("entry term below prev term", 1, 2, 2, &[1], 1),
        ("leader id is not the sender", 1, 1, 2, &[2], 3),
    ];
    for (name, prev, prev_term, first, terms, leader) in rows {
        let hs = HardState {
            term: Term(2),
            vote: None,
            commit: LogIndex(0),
        };
        let mut node = RaftNode::new(config(2), hs, storage(&[1, 1])).expect("config");
        node.step(env(
            1,
            2,
            Message::AppendEntries(AppendEntries {
                term: Term(2),
                leader_id: NodeId(leader),
                prev_log_index: LogIndex(prev),
                prev_log_term: Term(prev_term),
                entries: entries_from(first, terms),
                leader_commit: LogIndex(0),
                read_seq: 0,
            }),
        ));
        node.check_invariants();
        assert!(
            !node.has_ready(),
            "row {name:?}: a malformed append changed something"
        );
        assert_eq!(terms_of(&node), vec![1, 1], "row {name:?}");
        assert_eq!(node.leader(), None, "row {name:?}");
    }
}
