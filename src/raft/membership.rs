//! Cluster membership and single-server configuration changes (thesis chapter 4).
//!
//! This module owns the [`Membership`] value (the voters and the learners of one configuration)
//! and [`ConfChange`], the payload of an [`EntryType::ConfChange`](crate::types::EntryType) log
//! entry, with its byte layout (docs/FORMAT.md, "Configuration entries").
//!
//! Invariants: a membership has at least one voter; no node is both a voter and a learner. A
//! change is applied to the configuration in effect just before its entry; a change that does not
//! fit that configuration ([`Membership::apply`] refuses it) is a no-op on every server alike,
//! since every server applies the same changes to the same configurations (Log Matching). The
//! leader refuses such a change before appending it, so in practice it never reaches a log.

use std::collections::BTreeSet;
use std::fmt;

use crate::types::NodeId;

/// The members of one configuration: voters elect leaders and count toward commit and read
/// quorums; learners only receive the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    /// A configuration of these voters and learners.
    pub fn new(
        voters: impl IntoIterator<Item = NodeId>,
        learners: impl IntoIterator<Item = NodeId>,
    ) -> Membership {
        Membership {
            voters: voters.into_iter().collect(),
            learners: learners.into_iter().collect(),
        }
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id)
    }

    /// A voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Every member, voters first, each once.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// A majority of the voters.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// The configuration after `change`.
    ///
    /// # Errors
    /// A text saying why the change does not fit this configuration: adding a member that is
    /// already one, promoting a node that is not a learner, removing a non-member or the last
    /// voter.
    pub fn apply(&self, change: ConfChange) -> Result<Membership, String> {
        let mut next = self.clone();
        match change {
            ConfChange::AddVoter(id) | ConfChange::AddLearner(id) if self.contains(id) => {
                return Err(format!("node {id} is already a member ({self})"));
            }
            ConfChange::AddVoter(id) => {
                next.voters.insert(id);
            }
            ConfChange::AddLearner(id) => {
                next.learners.insert(id);
            }
            ConfChange::PromoteLearner(id) => {
                if !next.learners.remove(&id) {
                    return Err(format!("node {id} is not a learner ({self})"));
                }
                next.voters.insert(id);
            }
            ConfChange::RemoveNode(id) => {
                if !next.voters.remove(&id) && !next.learners.remove(&id) {
                    return Err(format!("node {id} is not a member ({self})"));
                }
                if next.voters.is_empty() {
                    return Err(format!("removing {id} would leave no voter ({self})"));
                }
            }
        }
        Ok(next)
    }
}

impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |s: &BTreeSet<NodeId>| {
            s.iter()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(
            f,
            "voters [{}] learners [{}]",
            list(&self.voters),
            list(&self.learners)
        )
    }
}

/// One single-server change: the payload of a `ConfChange` entry.
///
/// Layout (5 bytes, little-endian): byte 0 the operation (1 add voter, 2 add learner, 3 promote
/// learner, 4 remove node), bytes 1..5 the node id (u32, never 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfChange {
    AddVoter(NodeId),
    AddLearner(NodeId),
    PromoteLearner(NodeId),
    RemoveNode(NodeId),
}

/// The encoded length of a [`ConfChange`].
pub const CONF_CHANGE_BYTES: usize = 5;

impl ConfChange {
    /// The node the change is about.
    pub fn node(self) -> NodeId {
        match self {
            ConfChange::AddVoter(id)
            | ConfChange::AddLearner(id)
            | ConfChange::PromoteLearner(id)
            | ConfChange::RemoveNode(id) => id,
        }
    }

    pub fn encode(self) -> Vec<u8> {
        let op: u8 = match self {
            ConfChange::AddVoter(_) => 1,
            ConfChange::AddLearner(_) => 2,
            ConfChange::PromoteLearner(_) => 3,
            ConfChange::RemoveNode(_) => 4,
        };
        let mut out = Vec::with_capacity(CONF_CHANGE_BYTES);
        out.push(op);
        out.extend_from_slice(&self.node().0.to_le_bytes());
        out
    }

    /// Decodes an entry's payload.
    ///
    /// # Errors
    /// A text naming what is wrong: the length, the operation byte or a zero node id.
    pub fn decode(bytes: &[u8]) -> Result<ConfChange, String> {
        let [op, a, b, c, d] = bytes else {
            return Err(format!(
                "a configuration change is {CONF_CHANGE_BYTES} bytes, got {}",
                bytes.len()
            ));
        };
        let id = NodeId(u32::from_le_bytes([*a, *b, *c, *d]));
        if id.0 == 0 {
            return Err("a configuration change names node 0 (node ids start at 1)".into());
        }
        match op {
            1 => Ok(ConfChange::AddVoter(id)),
            2 => Ok(ConfChange::AddLearner(id)),
            3 => Ok(ConfChange::PromoteLearner(id)),
            4 => Ok(ConfChange::RemoveNode(id)),
            other => Err(format!("unknown configuration change operation {other}")),
        }
    }
}

impl fmt::Display for ConfChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfChange::AddVoter(id) => write!(f, "add voter {id}"),
            ConfChange::AddLearner(id) => write!(f, "add learner {id}"),
            ConfChange::PromoteLearner(id) => write!(f, "promote learner {id}"),
            ConfChange::RemoveNode(id) => write!(f, "remove node {id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_and_bad_bytes_are_refused() {
        for c in [
            ConfChange::AddVoter(NodeId(7)),
            ConfChange::AddLearner(NodeId(u32::MAX)),
            ConfChange::PromoteLearner(NodeId(1)),
            ConfChange::RemoveNode(NodeId(300)),
        ] {
            assert_eq!(c.encode().len(), CONF_CHANGE_BYTES);
            assert_eq!(ConfChange::decode(&c.encode()), Ok(c));
        }
        assert!(ConfChange::decode(&[1, 2, 0, 0]).is_err());
        assert!(ConfChange::decode(&[9, 2, 0, 0, 0]).is_err());
        assert!(ConfChange::decode(&[1, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn apply_follows_the_single_server_rules() {
        let m = Membership::new([NodeId(1), NodeId(2)], []);
        let m = m
            .apply(ConfChange::AddLearner(NodeId(3)))
            .expect("new learner");
        assert!(m.is_learner(NodeId(3)) && !m.is_voter(NodeId(3)));
        assert!(m.apply(ConfChange::AddVoter(NodeId(3))).is_err());
        let m = m
            .apply(ConfChange::PromoteLearner(NodeId(3)))
            .expect("promote");
        assert!(m.is_voter(NodeId(3)) && m.quorum() == 2);
        assert!(m.apply(ConfChange::PromoteLearner(NodeId(3))).is_err());
        let m = m.apply(ConfChange::RemoveNode(NodeId(1))).expect("remove");
        let m = m.apply(ConfChange::RemoveNode(NodeId(2))).expect("remove");
        assert!(
            m.apply(ConfChange::RemoveNode(NodeId(3))).is_err(),
            "last voter"
        );
        assert!(m.apply(ConfChange::RemoveNode(NodeId(9))).is_err());
    }
}
