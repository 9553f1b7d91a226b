//! The safety checkers, run after every simulated event, and the log mirrors that make them cheap.
//!
//! Each node's log is mirrored by the simulator from the `Ready`s it drains ([`LogMirror`]): the
//! mirror keeps, per index, the entry's term, a hash of the entry and a hash of the whole prefix up
//! to it. Two logs agree up to index `i` exactly when their prefix hashes at `i` agree (up to hash
//! collisions, 2^-64 per comparison), so every property below is checked in O(1) or O(log n) per
//! event instead of by comparing whole logs:
//!
//! | property | paper | how |
//! |---|---|---|
//! | Election Safety | §5.2, Fig. 3 | the first leader seen for each term is remembered |
//! | Leader Append-Only | §5.3, Fig. 3 | a leader's (last index, prefix hash) is remembered and must still be a prefix of its log while it leads in that term |
//! | Log Matching | §5.3, Fig. 3 | every appended (index, term) is remembered with its prefix hash; any other log holding the same (index, term) must have the same prefix hash |
//! | Leader Completeness | §5.4.1, Fig. 3 | the highest index known committed by each term; a leader of a later term must hold that prefix |
//! | State Machine Safety | §5.4.3, Fig. 3 | every applied index is compared with the first entry applied there; commit indexes must agree on the committed prefix |
//! | Committed proposals survive | §8 (clients) | every proposal a client was told committed is in the log of every leader of a later term |
//! | Durable before acknowledged | Fig. 2, thesis §10.2.1 | an append acknowledgement or a vote leaving a node must be covered by that node's durable log / hard state |
//! | Term adoption | §5.1, Fig. 2 | after handling an AppendEntries, an append response or a vote response (except a granted pre-vote) of a higher term, a node is in at least that term |
//! | Read linearizability | thesis §6.4 | a read's [`ReadFloor`] is the acknowledged write with the highest index when the read was issued; the confirmed read index must be at least its index, and the node must serve the read from an applied prefix that holds it (prefix hash equal to the acknowledging node's) |
//!
//! "Committed by term t" is recorded with the term of the node that first reported the commit,
//! which is at least the term the entry was really committed in, so the Leader Completeness check
//! never fires on a correct run (it may check slightly less than the paper's statement allows).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::testing::rng::mix64;
use crate::types::{LogEntry, LogIndex, Term};

/// A property a run must keep, with the paper section that states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Property {
    ElectionSafety,
    LeaderAppendOnly,
    LogMatching,
    LeaderCompleteness,
    StateMachineSafety,
    CommittedProposalsSurvive,
    DurableBeforeAck,
    DurableBeforeVote,
    /// A node handled a message carrying a higher term and did not adopt it.
    TermAdoption,
    /// The core broke the driver contract (non-contiguous `Ready` entries, applying a non-durable
    /// or uncommitted entry, applying out of order).
    ReadyContract,
    /// The core's own `check_invariants()` or another assertion inside the core fired.
    NodeInvariants,
    /// The simulator's mirror of a node's log disagrees with the node's own accessors.
    MirrorFidelity,
    Liveness,
    /// A confirmed read missed a write acknowledged before it was issued.
    ReadLinearizability,
    /// After a crash and power loss, the storage engine's recovery lost (or changed) an entry or a
    /// hard state the engine had reported durable.
    Durability,
    /// A leader appended a configuration entry while an earlier one in its log was committed
    /// nowhere (one single-server change at a time).
    OneChangeAtATime,
}

impl Property {
    pub fn name(self) -> &'static str {
        match self {
            Property::ElectionSafety => "Election Safety",
            Property::LeaderAppendOnly => "Leader Append-Only",
            Property::LogMatching => "Log Matching",
            Property::LeaderCompleteness => "Leader Completeness",
            Property::StateMachineSafety => "State Machine Safety",
            Property::CommittedProposalsSurvive => "Committed proposals survive in later leaders",
            Property::DurableBeforeAck => "Append acknowledged only once durable",
            Property::DurableBeforeVote => "Vote granted only once term and vote are durable",
            Property::TermAdoption => "A higher term in a message is adopted",
            Property::ReadyContract => "Ready contract",
            Property::NodeInvariants => "Node invariants (check_invariants / core assertion)",
            Property::MirrorFidelity => "Simulator mirror matches the node's log",
            Property::Liveness => "Liveness after faults stop",
            Property::ReadLinearizability => "Linearizable reads (ReadIndex)",
            Property::Durability => "What was reported durable survives a power loss",
            Property::OneChangeAtATime => "One configuration change at a time",
        }
    }

    pub fn section(self) -> &'static str {
        match self {
            Property::ElectionSafety => "Raft §5.2, Figure 3",
            Property::LeaderAppendOnly => "Raft §5.3, Figure 3",
            Property::LogMatching => "Raft §5.3, Figure 3",
            Property::LeaderCompleteness => "Raft §5.4.1, Figure 3",
            Property::StateMachineSafety => "Raft §5.4.3, Figure 3",
            Property::CommittedProposalsSurvive => "Raft §8 / §5.4",
            Property::DurableBeforeAck => "Raft Figure 2 (persistent state), thesis §10.2.1",
            Property::DurableBeforeVote => "Raft Figure 2 (persistent state), §5.2",
            Property::TermAdoption => "Raft §5.1, Figure 2 (Rules for Servers)",
            Property::ReadyContract => "driver contract, src/raft/mod.rs",
            Property::NodeInvariants => "core invariants, STYLE practice 7",
            Property::MirrorFidelity => "simulator self-check",
            Property::Liveness => "Raft §5.2, §9.3 (issue 3 liveness target)",
            Property::ReadLinearizability => "thesis §6.4 (ReadIndex)",
            Property::Durability => "Raft Figure 2 (persistent state), docs/FORMAT.md",
            Property::OneChangeAtATime => "thesis §4.1 (single-server changes)",
        }
    }
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.section())
    }
}

/// A broken property and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub property: Property,
    pub details: String,
}

impl Violation {
    pub fn new(property: Property, details: impl Into<String>) -> Violation {
        Violation {
            property,
            details: details.into(),
        }
    }
}

/// A hash of one entry's identity and content.
pub fn entry_hash(e: &LogEntry) -> u64 {
    let mut h = mix64(e.term.0 ^ 0x7465_726d);
    h = mix64(h ^ e.index.0);
    h = mix64(h ^ e.entry_type as u64);
    h = mix64(h ^ e.payload.len() as u64);
    for chunk in e.payload.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = mix64(h ^ u64::from_le_bytes(word));
    }
    h
}

/// The driver's copy of one log: per index the term, the entry hash and the prefix hash.
#[derive(Clone, Debug, Default)]
pub struct LogMirror {
    terms: Vec<Term>,
    hashes: Vec<u64>,
    prefix: Vec<u64>,
}

impl LogMirror {
    pub fn last_index(&self) -> u64 {
        self.terms.len() as u64
    }

    /// The term at `index` (`Some(0)` for index 0, `None` past the end).
    pub fn term_at(&self, index: u64) -> Option<Term> {
        if index == 0 {
            return Some(Term::ZERO);
        }
        self.terms.get(index as usize - 1).copied()
    }

    pub fn entry_hash_at(&self, index: u64) -> Option<u64> {
        if index == 0 {
            return None;
        }
        self.hashes.get(index as usize - 1).copied()
    }

    /// The hash of entries `1..=index` (0 for index 0). Panics past the end.
    pub fn prefix_at(&self, index: u64) -> u64 {
        if index == 0 {
            return 0;
        }
        assert!(
            index <= self.last_index(),
            "prefix_at({index}) past the mirror's end {}",
            self.last_index()
        );
        self.prefix[index as usize - 1]
    }

    /// The term, entry hash and prefix hash at `index` (1-based), if the mirror reaches it.
    pub fn entry_at(&self, index: u64) -> Option<(Term, u64, u64)> {
        let at = (index as usize).checked_sub(1)?;
        Some((
            *self.terms.get(at)?,
            *self.hashes.get(at)?,
            *self.prefix.get(at)?,
        ))
    }

    /// A copy of the first `upto` entries (`upto` at most the last index).
    pub fn prefix_copy(&self, upto: u64) -> LogMirror {
        let mut copy = self.clone();
        copy.truncate_from(LogIndex(upto + 1));
        copy
    }

    fn push_raw(&mut self, term: Term, hash: u64, prefix: u64) {
        self.terms.push(term);
        self.hashes.push(hash);
        self.prefix.push(prefix);
    }

    /// Removes every entry with index >= `from`.
    pub fn truncate_from(&mut self, from: LogIndex) {
        let keep = from.0.saturating_sub(1) as usize;
        self.terms.truncate(keep);
        self.hashes.truncate(keep);
        self.prefix.truncate(keep);
    }

    /// Appends one entry; `Err` with the expected index if it does not continue the log exactly.
    pub fn append(&mut self, e: &LogEntry) -> Result<u64, u64> {
        let expected = self.last_index() + 1;
        if e.index.0 != expected {
            return Err(expected);
        }
        let h = entry_hash(e);
        let p = mix64(self.prefix.last().copied().unwrap_or(0) ^ h);
        self.terms.push(e.term);
        self.hashes.push(h);
        self.prefix.push(p);
        Ok(p)
    }
}

/// A client proposal the cluster reported committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckedProposal {
    pub id: u64,
    pub index: u64,
    pub entry_hash: u64,
    /// The term of the leader that reported the commit.
    pub ack_term: Term,
    /// The hash of the acknowledging node's log `1..=index` when it acknowledged.
    pub prefix: u64,
}

/// What a read issued now must observe: the acknowledged write with the highest index so far.
///
/// Every write acknowledged before the read lies at or below `index`, so a read index at least
/// `index` covers them all; and a state whose log prefix up to `index` hashes to `prefix` is the
/// acknowledging node's log at that moment, which (State Machine Safety, checked at every apply)
/// holds every earlier acknowledged write at its index too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadFloor {
    pub write_id: u64,
    pub index: u64,
    pub entry_hash: u64,
    pub prefix: u64,
}

/// "Index i is known committed by term t", kept as a staircase: terms ascending, indexes strictly
/// ascending, so the highest index committed by any term below `t` is one range lookup.
#[derive(Clone, Debug, Default)]
struct CommitStaircase {
    steps: BTreeMap<u64, u64>,
}

impl CommitStaircase {
    /// The highest index known committed in a term strictly below `term`.
    fn below(&self, term: Term) -> u64 {
        self.steps
            .range(..term.0)
            .next_back()
            .map(|(_, &i)| i)
            .unwrap_or(0)
    }

    fn insert(&mut self, term: Term, index: u64) {
        if self.below(Term(term.0 + 1)) >= index {
            return;
        }
        let dominated: Vec<u64> = self
            .steps
            .range(term.0..)
            .take_while(|(_, &i)| i <= index)
            .map(|(&t, _)| t)
            .collect();
        for t in dominated {
            self.steps.remove(&t);
        }
        self.steps.insert(term.0, index);
    }
}

/// What the checker remembers about a node that is leader.
#[derive(Clone, Copy, Debug)]
struct LeaderWatch {
    term: Term,
    last_index: u64,
    prefix: u64,
}

/// The cluster-wide safety state. Nodes are indexed `0..n`.
#[derive(Debug, Default)]
pub struct SafetyChecker {
    leader_of_term: BTreeMap<Term, usize>,
    /// (index, term) -> prefix hash of the first log seen holding it.
    matching: HashMap<(u64, u64), u64>,
    /// Prefix hashes of the committed log, `committed[i - 1]` for index i.
    committed: Vec<u64>,
    /// The committed log itself (term, entry and prefix hash per index): what a node that
    /// installs a snapshot, or restarts from one, holds up to the snapshot's index.
    committed_log: LogMirror,
    /// The state machine's digest after applying each index (`states[i - 1]`), as the first node
    /// that reached it reported it, through entries or through a snapshot.
    states: Vec<Option<u64>>,
    committed_by_term: CommitStaircase,
    /// Entry hash applied at each index (`applied[i - 1]`).
    applied: Vec<u64>,
    watch: Vec<Option<LeaderWatch>>,
    acked: Vec<AckedProposal>,
    read_floor: Option<ReadFloor>,
    pub leaders_seen: u64,
}

impl SafetyChecker {
    pub fn new(n: usize) -> SafetyChecker {
        SafetyChecker {
            watch: vec![None; n],
            ..SafetyChecker::default()
        }
    }

    pub fn committed_len(&self) -> u64 {
        self.committed.len() as u64
    }

    pub fn max_term_with_leader(&self) -> Term {
        self.leader_of_term
            .keys()
            .next_back()
            .copied()
            .unwrap_or(Term::ZERO)
    }

    pub fn acked(&self) -> &[AckedProposal] {
        &self.acked
    }

    /// What a read issued now must observe (`None` before any write was acknowledged).
    pub fn read_floor(&self) -> Option<ReadFloor> {
        self.read_floor
    }

    /// A node confirmed read `read` (issued when the floor was `floor`) at read index `index`.
    pub fn check_read_confirmed(
        node: usize,
        read: u64,
        index: u64,
        floor: Option<ReadFloor>,
    ) -> Result<(), Violation> {
        match floor {
            Some(f) if index < f.index => Err(Violation::new(
                Property::ReadLinearizability,
                format!(
                    "node {node} confirmed read #{read} at read index {index}, below index {} of \
                     write #{} acknowledged to a client before the read was issued",
                    f.index, f.write_id
                ),
            )),
            _ => Ok(()),
        }
    }

    /// A node serves read `read` with its state machine applied up to `applied`; `log` is the
    /// node's log, whose prefix up to `applied` is what it applied.
    pub fn check_read_served(
        node: usize,
        read: u64,
        index: u64,
        applied: u64,
        log: &LogMirror,
        floor: Option<ReadFloor>,
    ) -> Result<(), Violation> {
        if applied < index {
            return Err(Violation::new(
                Property::ReadLinearizability,
                format!(
                    "node {node} serves read #{read} (read index {index}) from a state applied \
                     only up to {applied}"
                ),
            ));
        }
        let Some(f) = floor else { return Ok(()) };
        if applied < f.index
            || log.entry_hash_at(f.index) != Some(f.entry_hash)
            || log.prefix_at(f.index) != f.prefix
        {
            return Err(Violation::new(
                Property::ReadLinearizability,
                format!(
                    "node {node} serves read #{read} from a state (applied up to {applied}) that \
                     lacks write #{} at index {}, acknowledged before the read was issued",
                    f.write_id, f.index
                ),
            ));
        }
        Ok(())
    }

    /// A node appended `e` at prefix hash `prefix` (Log Matching, §5.3).
    pub fn on_append(&mut self, node: usize, e: &LogEntry, prefix: u64) -> Result<(), Violation> {
        let key = (e.index.0, e.term.0);
        match self.matching.get(&key) {
            None => {
                self.matching.insert(key, prefix);
                Ok(())
            }
            Some(&p) if p == prefix => Ok(()),
            Some(&p) => Err(Violation::new(
                Property::LogMatching,
                format!(
                    "node {node} holds an entry at index {} term {} whose log differs from another \
                     log holding the same index and term (prefix hash {prefix:#x} vs {p:#x})",
                    e.index, e.term
                ),
            )),
        }
    }

    /// A node crashed: it leads nothing any more.
    pub fn on_crash(&mut self, node: usize) {
        self.watch[node] = None;
    }

    /// Checks one node's state after an event that touched it.
    pub fn check_node(
        &mut self,
        node: usize,
        is_leader: bool,
        term: Term,
        commit: u64,
        log: &LogMirror,
    ) -> Result<(), Violation> {
        self.check_commit(node, term, commit, log)?;
        if !is_leader {
            self.watch[node] = None;
            return Ok(());
        }
        // Election Safety: at most one leader per term.
        match self.leader_of_term.get(&term) {
            Some(&other) if other != node => {
                return Err(Violation::new(
                    Property::ElectionSafety,
                    format!("nodes {other} and {node} are both leader in term {term}"),
                ));
            }
            Some(_) => {}
            None => {
                self.leader_of_term.insert(term, node);
                self.leaders_seen += 1;
            }
        }
        let last = log.last_index();
        let new_term = match self.watch[node] {
            Some(w) if w.term == term => {
                // Leader Append-Only: what the leader held must still be a prefix of its log.
                if last < w.last_index || log.prefix_at(w.last_index) != w.prefix {
                    return Err(Violation::new(
                        Property::LeaderAppendOnly,
                        format!(
                            "leader {node} in term {term} held entries up to {} and now its log \
                             (last {last}) no longer starts with them",
                            w.last_index
                        ),
                    ));
                }
                false
            }
            _ => true,
        };
        self.watch[node] = Some(LeaderWatch {
            term,
            last_index: last,
            prefix: log.prefix_at(last),
        });
        // Leader Completeness: everything committed by an earlier term is in this leader's log.
        let must_hold = self.committed_by_term.below(term);
        if must_hold > 0
            && (last < must_hold
                || log.prefix_at(must_hold) != self.committed[must_hold as usize - 1])
        {
            return Err(Violation::new(
                Property::LeaderCompleteness,
                format!(
                    "leader {node} of term {term} (last index {last}) lacks the entries up to \
                     index {must_hold} committed in an earlier term"
                ),
            ));
        }
        if new_term {
            for a in self.acked.iter().filter(|a| a.ack_term < term) {
                Self::check_holds(node, term, log, a)?;
            }
        }
        Ok(())
    }

    fn check_holds(
        node: usize,
        term: Term,
        log: &LogMirror,
        a: &AckedProposal,
    ) -> Result<(), Violation> {
        if log.entry_hash_at(a.index) != Some(a.entry_hash) {
            return Err(Violation::new(
                Property::CommittedProposalsSurvive,
                format!(
                    "proposal #{} was reported committed at index {} in term {}, but leader {node} \
                     of later term {term} holds {} there",
                    a.id,
                    a.index,
                    a.ack_term,
                    match log.term_at(a.index) {
                        Some(t) => format!("a different entry (term {t})"),
                        None => "nothing".to_string(),
                    }
                ),
            ));
        }
        Ok(())
    }

    /// The node's commit index must name a prefix every other node agrees on (§5.4.3).
    fn check_commit(
        &mut self,
        node: usize,
        term: Term,
        commit: u64,
        log: &LogMirror,
    ) -> Result<(), Violation> {
        if commit == 0 {
            return Ok(());
        }
        if commit > log.last_index() {
            return Err(Violation::new(
                Property::NodeInvariants,
                format!(
                    "node {node} reports commit index {commit} beyond its last index {}",
                    log.last_index()
                ),
            ));
        }
        let known = self.committed.len() as u64;
        let check_at = commit.min(known);
        if check_at > 0 && log.prefix_at(check_at) != self.committed[check_at as usize - 1] {
            return Err(Violation::new(
                Property::StateMachineSafety,
                format!(
                    "node {node} (term {term}) commits up to {commit}, but its log up to {check_at} \
                     differs from the log another node committed (entry there has term {:?})",
                    log.term_at(check_at)
                ),
            ));
        }
        for i in known + 1..=commit {
            self.committed.push(log.prefix_at(i));
            let (t, h, p) = log
                .entry_at(i)
                .expect("commit <= last index, checked above");
            self.committed_log.push_raw(t, h, p);
        }
        self.committed_by_term.insert(term, commit);
        Ok(())
    }

    /// The committed log up to `index`, or `None` if no node reported that much committed.
    pub fn committed_prefix(&self, index: u64) -> Option<LogMirror> {
        (index <= self.committed_log.last_index()).then(|| self.committed_log.prefix_copy(index))
    }

    /// A node's state machine, after applying index `index` (entry by entry, or by installing or
    /// restarting from a snapshot at `index`), has digest `digest`: every node's state at one
    /// index must be the same (State Machine Safety, §5.4.3, for the state rather than the
    /// entries, which a node that got there by snapshot never saw).
    pub fn on_state(&mut self, node: usize, index: u64, digest: u64) -> Result<(), Violation> {
        if index == 0 {
            return Ok(());
        }
        let at = index as usize - 1;
        if self.states.len() <= at {
            self.states.resize(at + 1, None);
        }
        match self.states[at] {
            None => {
                self.states[at] = Some(digest);
                Ok(())
            }
            Some(d) if d == digest => Ok(()),
            Some(d) => Err(Violation::new(
                Property::StateMachineSafety,
                format!(
                    "node {node}'s state machine after index {index} has digest {digest:#x}, \
                     another node's had {d:#x} there"
                ),
            )),
        }
    }

    /// A node applied `e` (State Machine Safety, §5.4.3).
    pub fn on_apply(&mut self, node: usize, e: &LogEntry) -> Result<(), Violation> {
        let i = e.index.0 as usize;
        let h = entry_hash(e);
        if i <= self.applied.len() {
            if self.applied[i - 1] != h {
                return Err(Violation::new(
                    Property::StateMachineSafety,
                    format!(
                        "node {node} applied index {} (term {}) with an entry different from the \
                         one another node applied there",
                        e.index, e.term
                    ),
                ));
            }
        } else if i == self.applied.len() + 1 {
            self.applied.push(h);
        } else {
            // Another node applied less so far; remember nothing past the contiguous prefix.
            // The node's own contiguity is the driver's check.
            return Ok(());
        }
        Ok(())
    }

    /// A proposal was reported committed to its client; every leader of a later term must hold it.
    pub fn on_ack<'a>(
        &mut self,
        a: AckedProposal,
        leaders: impl Iterator<Item = (usize, Term, &'a LogMirror)>,
    ) -> Result<(), Violation> {
        for (node, term, log) in leaders {
            if term > a.ack_term {
                Self::check_holds(node, term, log, &a)?;
            }
        }
        if self.read_floor.is_none_or(|f| a.index > f.index) {
            self.read_floor = Some(ReadFloor {
                write_id: a.id,
                index: a.index,
                entry_hash: a.entry_hash,
                prefix: a.prefix,
            });
        }
        self.acked.push(a);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryType;

    fn e(index: u64, term: u64, byte: u8) -> LogEntry {
        LogEntry {
            term: Term(term),
            index: LogIndex(index),
            entry_type: EntryType::Normal,
            payload: vec![byte; 3],
        }
    }

    fn mirror(entries: &[(u64, u8)]) -> LogMirror {
        let mut m = LogMirror::default();
        for (i, &(t, b)) in entries.iter().enumerate() {
            m.append(&e(i as u64 + 1, t, b)).unwrap();
        }
        m
    }

    #[test]
    fn mirror_prefix_hashes_tell_equal_and_different_prefixes_apart() {
        let a = mirror(&[(1, 1), (1, 2), (2, 3)]);
        let b = mirror(&[(1, 1), (1, 2), (3, 3)]);
        assert_eq!(a.prefix_at(2), b.prefix_at(2));
        assert_ne!(a.prefix_at(3), b.prefix_at(3));
        let mut c = a.clone();
        c.truncate_from(LogIndex(3));
        assert_eq!(c.last_index(), 2);
        assert_eq!(c.append(&e(4, 1, 0)), Err(3), "a hole is refused");
    }

    #[test]
    fn two_leaders_in_one_term_break_election_safety() {
        let mut c = SafetyChecker::new(3);
        let m = mirror(&[(1, 1)]);
        c.check_node(0, true, Term(1), 0, &m).unwrap();
        c.check_node(0, true, Term(1), 0, &m).unwrap();
        let v = c.check_node(2, true, Term(1), 0, &m).unwrap_err();
        assert_eq!(v.property, Property::ElectionSafety);
        c.check_node(2, true, Term(2), 0, &m).unwrap();
    }

    #[test]
    fn a_leader_that_rewrites_its_log_breaks_append_only() {
        let mut c = SafetyChecker::new(3);
        let m = mirror(&[(1, 1), (1, 2)]);
        c.check_node(1, true, Term(1), 0, &m).unwrap();
        let longer = mirror(&[(1, 1), (1, 2), (1, 3)]);
        c.check_node(1, true, Term(1), 0, &longer).unwrap();
        let rewritten = mirror(&[(1, 1), (1, 9), (1, 3)]);
        let v = c.check_node(1, true, Term(1), 0, &rewritten).unwrap_err();
        assert_eq!(v.property, Property::LeaderAppendOnly);
    }

    #[test]
    fn same_index_and_term_with_different_history_breaks_log_matching() {
        let mut c = SafetyChecker::new(2);
        let a = mirror(&[(1, 1), (2, 2)]);
        let b = mirror(&[(1, 7), (2, 2)]);
        c.on_append(0, &e(2, 2, 2), a.prefix_at(2)).unwrap();
        c.on_append(0, &e(2, 2, 2), a.prefix_at(2)).unwrap();
        let v = c.on_append(1, &e(2, 2, 2), b.prefix_at(2)).unwrap_err();
        assert_eq!(v.property, Property::LogMatching);
    }

    #[test]
    fn a_later_leader_missing_a_committed_entry_breaks_leader_completeness() {
        let mut c = SafetyChecker::new(3);
        let full = mirror(&[(1, 1), (1, 2)]);
        c.check_node(0, true, Term(1), 2, &full).unwrap();
        // A stale leader of the same term need not hold more than it had.
        let short = mirror(&[(1, 1)]);
        c.check_node(1, false, Term(1), 1, &short).unwrap();
        let v = c.check_node(1, true, Term(2), 1, &short).unwrap_err();
        assert_eq!(v.property, Property::LeaderCompleteness);
        c.check_node(2, true, Term(3), 2, &full).unwrap();
    }

    #[test]
    fn different_commits_or_applies_at_one_index_break_state_machine_safety() {
        let mut c = SafetyChecker::new(2);
        let a = mirror(&[(1, 1), (1, 2)]);
        let b = mirror(&[(1, 1), (2, 5)]);
        c.check_node(0, false, Term(1), 2, &a).unwrap();
        c.check_node(1, false, Term(2), 1, &b).unwrap();
        let v = c.check_node(1, false, Term(2), 2, &b).unwrap_err();
        assert_eq!(v.property, Property::StateMachineSafety);

        c.on_apply(0, &e(1, 1, 1)).unwrap();
        c.on_apply(1, &e(1, 1, 1)).unwrap();
        let v = c.on_apply(1, &e(1, 2, 1)).unwrap_err();
        assert_eq!(v.property, Property::StateMachineSafety);
    }

    #[test]
    fn an_acked_proposal_missing_from_a_later_leader_is_caught_both_ways() {
        let mut c = SafetyChecker::new(3);
        let with = mirror(&[(1, 1), (1, 2)]);
        let without = mirror(&[(1, 1), (2, 8)]);
        let ack = AckedProposal {
            id: 7,
            index: 2,
            entry_hash: with.entry_hash_at(2).unwrap(),
            ack_term: Term(1),
            prefix: with.prefix_at(2),
        };
        // A leader of a later term already exists when the ack arrives.
        let v = c
            .on_ack(ack, [(2usize, Term(2), &without)].into_iter())
            .unwrap_err();
        assert_eq!(v.property, Property::CommittedProposalsSurvive);
        // Or it is elected afterwards.
        let mut c = SafetyChecker::new(3);
        c.on_ack(ack, std::iter::empty()).unwrap();
        c.check_node(0, true, Term(1), 0, &without).unwrap();
        let v = c.check_node(1, true, Term(2), 0, &without).unwrap_err();
        assert_eq!(v.property, Property::CommittedProposalsSurvive);
    }

    #[test]
    fn a_read_below_or_without_an_earlier_acked_write_breaks_read_linearizability() {
        let mut c = SafetyChecker::new(3);
        let log = mirror(&[(1, 1), (1, 2), (1, 3)]);
        let other = mirror(&[(1, 1), (2, 9), (2, 3)]);
        assert_eq!(c.read_floor(), None);
        for (id, index) in [(4, 2), (5, 1)] {
            let ack = AckedProposal {
                id,
                index,
                entry_hash: log.entry_hash_at(index).unwrap(),
                ack_term: Term(1),
                prefix: log.prefix_at(index),
            };
            c.on_ack(ack, std::iter::empty()).unwrap();
        }
        // The floor is the acknowledged write with the highest index, not the latest one.
        let floor = c.read_floor();
        assert_eq!(floor.map(|f| (f.write_id, f.index)), Some((4, 2)));
        SafetyChecker::check_read_confirmed(0, 1, 2, floor).unwrap();
        let v = SafetyChecker::check_read_confirmed(0, 1, 1, floor).unwrap_err();
        assert_eq!(v.property, Property::ReadLinearizability);
        SafetyChecker::check_read_served(0, 1, 2, 3, &log, floor).unwrap();
        // Applied less than the read index.
        let v = SafetyChecker::check_read_served(0, 1, 3, 2, &log, floor).unwrap_err();
        assert_eq!(v.property, Property::ReadLinearizability);
        // A state with another entry at the write's index.
        let v = SafetyChecker::check_read_served(1, 1, 2, 3, &other, floor).unwrap_err();
        assert_eq!(v.property, Property::ReadLinearizability);
        // Before any acknowledged write, any read index will do.
        SafetyChecker::check_read_confirmed(0, 1, 0, None).unwrap();
    }

    #[test]
    fn commit_staircase_answers_the_highest_index_committed_before_a_term() {
        let mut s = CommitStaircase::default();
        s.insert(Term(3), 10);
        s.insert(Term(5), 8); // dominated by (3, 10)
        s.insert(Term(6), 20);
        s.insert(Term(2), 4);
        assert_eq!(s.below(Term(2)), 0);
        assert_eq!(s.below(Term(3)), 4);
        assert_eq!(s.below(Term(4)), 10);
        assert_eq!(s.below(Term(6)), 10);
        assert_eq!(s.below(Term(7)), 20);
        s.insert(Term(1), 30); // dominates everything later
        assert_eq!(s.below(Term(2)), 30);
        assert_eq!(s.below(Term(9)), 30);
    }
}
