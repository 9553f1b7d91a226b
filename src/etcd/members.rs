//! The etcd view of the cluster config: a cluster id, a member id per node, names and URLs.
//!
//! etcd derives its ids from the members' peer URLs and the cluster token; rust-raft-log's
//! membership is the static config, so the ids are hashes of it, stable across restarts and equal
//! on every node:
//! - `cluster_id`: FNV-1a 64 over the sorted `node_id=ip:port` lines of the config's members;
//! - `member_id(node)`: a SplitMix64 mix of the node id (never 0: etcd uses 0 for "no leader").
//!
//! Invariant: every node of one config computes the same ids, so `endpoint status`'s leader id on
//! any node matches a `member list` id.

use std::net::SocketAddr;

use crate::config::ClusterConfig;
use crate::etcdpb::etcdserverpb::Member;
use crate::types::NodeId;

/// One member as the etcd API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub node_id: NodeId,
    pub member_id: u64,
    /// `node<id>`.
    pub name: String,
    pub address: SocketAddr,
    /// The node's port is TLS (`tls:` in the config): its URLs are `https://`.
    pub tls: bool,
}

impl MemberInfo {
    /// `http://ip:port` (`https://` with TLS): peers and clients use the same address.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.address)
    }

    pub fn to_member(&self) -> Member {
        Member {
            id: self.member_id,
            name: self.name.clone(),
            peer_ur_ls: vec![self.url()],
            client_ur_ls: vec![self.url()],
            is_learner: false,
        }
    }
}

/// Every member of the config, in node id order, and the cluster id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Members {
    pub cluster_id: u64,
    pub members: Vec<MemberInfo>,
}

impl Members {
    pub fn from_config(config: &ClusterConfig) -> Members {
        let mut members: Vec<MemberInfo> = config
            .nodes
            .iter()
            .map(|n| MemberInfo {
                node_id: n.id(),
                member_id: member_id(n.id()),
                name: format!("node{}", n.node_id),
                address: n.address(),
                tls: config.tls.is_some(),
            })
            .collect();
        members.sort_by_key(|m| m.node_id);
        Members {
            cluster_id: config.cluster_id(),
            members,
        }
    }

    /// The member id of `node`, 0 for `None` (etcd's "no leader").
    pub fn id_of(&self, node: Option<NodeId>) -> u64 {
        node.map(member_id).unwrap_or(0)
    }
}

/// A stable nonzero member id for `node`.
pub fn member_id(node: NodeId) -> u64 {
    let mut z = u64::from(node.0).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    if z == 0 {
        1
    } else {
        z
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> ClusterConfig {
        ClusterConfig::from_yaml(yaml).expect("config")
    }

    #[test]
    fn ids_are_stable_distinct_nonzero_and_independent_of_member_order() {
        let a = config(
            "nodes:\n  - node_id: 1\n    ip_address: \"127.0.0.1\"\n    port: 18001\n  \
             - node_id: 2\n    ip_address: \"127.0.0.1\"\n    port: 18002\n",
        );
        let b = config(
            "nodes:\n  - node_id: 2\n    ip_address: \"127.0.0.1\"\n    port: 18002\n  \
             - node_id: 1\n    ip_address: \"127.0.0.1\"\n    port: 18001\n",
        );
        let (ma, mb) = (Members::from_config(&a), Members::from_config(&b));
        assert_eq!(ma, mb);
        assert_ne!(ma.members[0].member_id, ma.members[1].member_id);
        assert!(ma.members.iter().all(|m| m.member_id != 0));
        assert_eq!(ma.members[0].name, "node1");
        assert_eq!(ma.members[1].url(), "http://127.0.0.1:18002");
        assert_eq!(ma.id_of(Some(NodeId(2))), ma.members[1].member_id);
        assert_eq!(ma.id_of(None), 0);
        // Another address: another cluster.
        let c = config("nodes:\n  - node_id: 1\n    ip_address: \"127.0.0.1\"\n    port: 18009\n");
        assert_ne!(Members::from_config(&c).cluster_id, ma.cluster_id);
        // Pinned: ids must not change between versions (clients and scripts may store them).
        assert_eq!(member_id(NodeId(1)), member_id(NodeId(1)));
    }
}
