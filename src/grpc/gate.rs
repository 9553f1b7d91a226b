//! The gate in front of the Raft service (issue 16): who may send this node Raft messages.
//!
//! This module owns the checks a peer RPC passes before anything reaches the core, so a refused
//! message can never move the term (the forged AppendEntries of issue 16 deposed the leader and
//! committed its entry on every node):
//! 1. at the start of every Raft RPC ([`PeerGate::admit`]): the request carries this cluster's id
//!    in the `raftlog-cluster-id` metadata ([`CLUSTER_ID_HEADER`]; derived from the member list,
//!    [`ClusterConfig::cluster_id`]); with TLS on, the connection's client certificate must
//!    authenticate a member ([`crate::grpc::tls::NodeTls::identify`]);
//! 2. on every message: its `from` is, with TLS on, the very member the certificate names, and
//!    never this node; then by kind of message:
//!    - a leader's message (AppendEntries, InstallSnapshot, TimeoutNow; [`PeerGate::check_sender`])
//!      passes only from a member of the configuration in effect on this node (the config
//!      file's members until the loop first sets the live one with [`PeerGate::set_members`]).
//!      One exception: a node that is a learner or outside its own configuration (a member
//!      being added, still catching up: its view of the configuration lags the leader's) takes
//!      a leader's messages from any sender of this cluster, because the leader may be a member
//!      added after the entries it has seen. Another: the sender outside the configuration
//!      this node last granted its vote (RequestVote, not PreVote), for messages of that term
//!      only ([`PeerGate::vote_granted`]): it may have won with that vote, and this voter must
//!      take its entries to learn the configuration that lists it;
//!    - a vote request (PreVote or RequestVote; [`PeerGate::check_vote_sender`]) passes from any
//!      sender of this cluster, member or not, and the core answers it as Raft requires; when
//!      the sender is not a member here, the answer says so (`sender_not_member`);
//!    - a MembershipProbe ([`PeerGate::probe_answer`]) is answered "member or not" here, without
//!      the core.
//!
//! Why votes pass from outside the configuration: `RaftNode::step` answers vote requests from
//! any server (Raft's rule; the simulator found clusters that could elect no leader without it:
//! a server whose log holds a newer configuration can be the only one able to win, and a voter
//! that has not appended that configuration yet must still answer it). The gate used to refuse
//! them, so on real processes a voter that lagged on the configuration refused such a candidate
//! (tests/membership_gate.rs shows it answers now). The refusal was also how a removed node that
//! never appended its own removal learns of it; the mark on the answer keeps that signal
//! (`crate::grpc::peers` counts it as it counted the refusal, `crate::node::event_loop` stops
//! the node). When the core declines to answer (a higher-term vote request within its leader
//! lease), an outsider gets the not-a-member refusal it always got, so a removed node that
//! campaigns against a healthy cluster still learns of its removal (`crate::grpc::server`).
//! Letting votes through does not let an outsider disrupt: a voter that heard from a leader
//! within the minimum election timeout neither answers a higher-term vote request nor moves its
//! term (the core's lease check), a pre-vote moves no term, and a removed node's log lacks the
//! entry that removed it, so the voters that appended it refuse its (pre-)votes. With
//! TLS on, the sender must still hold a certificate of the peer CA naming it, so a forged vote
//! request is refused as before; a forged leader's message from outside the configuration is
//! refused as before in both modes. In plaintext mode a vote request claiming an outside id,
//! sent when no leader holds a lease there (an election is under way), can move a voter's term,
//! as one claiming a member's id always could: plaintext guards against mistakes only (below).
//!
//! A refusal is `FailedPrecondition` (another cluster, no cluster id) or `PermissionDenied` (not
//! a member, or a certificate naming another member), with a message naming both sides. The
//! receiving node logs each kind of refusal once per remote address and [`REFUSAL_LOG_INTERVAL`],
//! not once per RPC (a misconfigured node retries every few milliseconds).
//!
//! In plaintext mode the cluster id is a guard against mistakes, not against an attacker: anyone
//! who can read the config can compute it (docs/SECURITY.md, "Threat model").

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tonic::{Request, Status};

use crate::config::ClusterConfig;
use crate::grpc::tls::ConnInfo;
use crate::types::NodeId;

/// The request metadata that carries the sender's cluster id (16 lowercase hex digits).
pub const CLUSTER_ID_HEADER: &str = "raftlog-cluster-id";
/// The words of the not-a-member refusal ([`PeerGate::check_sender`]) that the refused node
/// recognises (`crate::grpc::peers`): its peers' gates saying so for long enough is how a node
/// that never appended its own removal learns of it, and stops.
pub const NOT_A_MEMBER: &str = "is not a member of the configuration";

/// One log line per remote address and kind of refusal per this long.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Remote addresses remembered for that rate limit (forgotten all at once beyond this).
const LOGGED_MAX: usize = 1024;

/// A cluster id as it appears in messages and logs.
pub fn format_cluster_id(id: u64) -> String {
    format!("{id:016x}")
}

/// `message` as a request carrying `cluster_id` (when there is one) in its metadata.
pub fn peer_request<T>(message: T, cluster_id: Option<u64>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(id) = cluster_id {
        if let Ok(value) = format_cluster_id(id).parse() {
            request.metadata_mut().insert(CLUSTER_ID_HEADER, value);
        }
    }
    request
}

/// What [`PeerGate::admit`] learnt about an admitted RPC, for the per-message checks.
#[derive(Clone, Copy, Debug)]
pub struct Admitted {
    /// The member the connection's certificate authenticates (TLS on), else `None`.
    member: Option<NodeId>,
}

/// The checks of the module docs for one node.
#[derive(Debug)]
pub struct PeerGate {
    local: NodeId,
    cluster_id: u64,
    view: std::sync::RwLock<GateView>,
    /// TLS is on: every Raft RPC must come on a connection authenticated as a member.
    require_member_cert: bool,
    logged: Mutex<HashMap<(Option<std::net::IpAddr>, &'static str), Instant>>,
}

/// Who the gate lets through (module docs, step 2).
#[derive(Debug)]
struct GateView {
    members: Vec<NodeId>,
    /// This node is a learner or outside its own configuration: a leader's messages pass from
    /// any sender of this cluster.
    open_to_leaders: bool,
    /// The sender outside the configuration this node last granted its vote (a RequestVote,
    /// not a pre-vote), and the term: its leader's messages of that term pass
    /// ([`PeerGate::vote_granted`]).
    elected_outsider: Option<(NodeId, u64)>,
}

impl PeerGate {
    pub fn new(config: &ClusterConfig, local: NodeId, require_member_cert: bool) -> PeerGate {
        let members: Vec<NodeId> = config.nodes.iter().map(|n| n.id()).collect();
        let open_to_leaders = !members.contains(&local);
        PeerGate {
            local,
            cluster_id: config.cluster_id(),
            view: std::sync::RwLock::new(GateView {
                members,
                open_to_leaders,
                elected_outsider: None,
            }),
            require_member_cert,
            logged: Mutex::new(HashMap::new()),
        }
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    fn members_list(&self) -> String {
        let view = self.view.read().unwrap_or_else(PoisonError::into_inner);
        let ids: Vec<String> = view.members.iter().map(|m| m.0.to_string()).collect();
        ids.join(", ")
    }

    /// The configuration in effect on this node changed: `members` (voters and learners) are
    /// who may send Raft messages; `local_is_voter` whether this node votes in it (if not, a
    /// leader's messages pass from any sender of this cluster: module docs).
    pub fn set_members(&self, members: Vec<NodeId>, local_is_voter: bool) {
        let mut view = self.view.write().unwrap_or_else(PoisonError::into_inner);
        view.members = members;
        view.open_to_leaders = !local_is_voter;
    }

    /// Whether a line about `kind` from `remote` is due (once per [`REFUSAL_LOG_INTERVAL`]).
    fn log_due(&self, remote: Option<std::net::IpAddr>, kind: &'static str) -> bool {
        let now = Instant::now();
        let mut logged = self.logged.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (remote, kind);
        let due = logged
            .get(&key)
            .is_none_or(|at| now.duration_since(*at) >= REFUSAL_LOG_INTERVAL);
        if due {
            if logged.len() >= LOGGED_MAX {
                logged.clear();
            }
            logged.insert(key, now);
        }
        due
    }

    /// Logs `status` once per remote address, kind and [`REFUSAL_LOG_INTERVAL`]; returns it.
    fn refuse(&self, conn: Option<&ConnInfo>, kind: &'static str, status: Status) -> Status {
        let remote = conn.and_then(|c| c.remote);
        if self.log_due(remote.map(|r| r.ip()), kind) {
            let remote = remote.map_or_else(|| "?".to_string(), |r| r.to_string());
            tracing::warn!(
                %remote,
                code = ?status.code(),
                "refused a Raft RPC: {} (logged once per {}s for this address)",
                status.message(),
                REFUSAL_LOG_INTERVAL.as_secs()
            );
        }
        status
    }

    /// The checks at the start of a Raft RPC (module docs, step 1).
    ///
    /// # Errors
    /// `FailedPrecondition` for a missing or foreign cluster id, `PermissionDenied` for a
    /// connection not authenticated as a member when TLS is on.
    pub fn admit<T>(&self, request: &Request<T>) -> Result<Admitted, Status> {
        let conn = request.extensions().get::<ConnInfo>();
        let ours = format_cluster_id(self.cluster_id);
        match request.metadata().get(CLUSTER_ID_HEADER) {
            None => {
                return Err(self.refuse(
                    conn,
                    "no-cluster-id",
                    Status::failed_precondition(format!(
                        "node {} of cluster {ours} serves Raft RPCs only to requests that carry \
                         the cluster id ({CLUSTER_ID_HEADER}); this one carries none",
                        self.local
                    )),
                ))
            }
            Some(theirs) if theirs.as_bytes() != ours.as_bytes() => {
                let theirs = String::from_utf8_lossy(theirs.as_bytes()).into_owned();
                return Err(self.refuse(
                    conn,
                    "cluster-id",
                    Status::failed_precondition(format!(
                        "cluster id mismatch: node {} is in cluster {ours} (members {}), the \
                         sender is in cluster {theirs}; was it started with another cluster's \
                         config?",
                        self.local,
                        self.members_list()
                    )),
                ));
            }
            Some(_) => {}
        }
        if !self.require_member_cert {
            return Ok(Admitted { member: None });
        }
        match conn.and_then(|c| c.member) {
            Some(member) => Ok(Admitted {
                member: Some(member),
            }),
            None => Err(self.refuse(
                conn,
                "not-a-member-cert",
                Status::permission_denied(format!(
                    "node {} of cluster {ours} serves Raft RPCs only to members: the client \
                     certificate of this connection does not chain to the peer CA with a \
                     member name (raftlog-node-<id>, members {})",
                    self.local,
                    self.members_list()
                )),
            )),
        }
    }

    /// The per-message check (module docs, step 2) of a leader's message of `term`
    /// (AppendEntries, InstallSnapshot, TimeoutNow): `from` is a member, or this node is a
    /// learner or outside its configuration, or it granted `from` its vote in `term`; and it is
    /// the member the connection authenticated when TLS is on.
    ///
    /// # Errors
    /// `PermissionDenied` naming the claimed sender and the members (or the certificate's member).
    pub fn check_sender(&self, admitted: &Admitted, from: NodeId, term: u64) -> Result<(), Status> {
        self.check_identity(admitted, from)?;
        let admitted_by_view = {
            let view = self.view.read().unwrap_or_else(PoisonError::into_inner);
            view.members.contains(&from)
                || view.open_to_leaders
                || view.elected_outsider == Some((from, term))
        };
        if admitted_by_view {
            return Ok(());
        }
        Err(self.not_a_member(from))
    }

    /// The per-message check of a vote request (PreVote or RequestVote; module docs, step 2):
    /// the sender is authenticated as for every message, and passes whether or not it is a
    /// member, since the core must answer it (Raft's rule). [`Sender::Outsider`]: it is not a
    /// member of the configuration in effect here, and the response must say so
    /// (`sender_not_member`), which is how a removed node learns of its removal.
    ///
    /// # Errors
    /// `PermissionDenied` for a certificate naming another member, or a message claiming to come
    /// from this node.
    pub fn check_vote_sender(&self, admitted: &Admitted, from: NodeId) -> Result<Sender, Status> {
        self.check_identity(admitted, from)?;
        let member = {
            let view = self.view.read().unwrap_or_else(PoisonError::into_inner);
            view.members.contains(&from)
        };
        if member {
            return Ok(Sender::Member);
        }
        if self.log_due(None, "outsider-vote") {
            tracing::info!(
                "answering a vote request from node {from}, which {NOT_A_MEMBER} node {} is in \
                 (members {}): a candidate known only to a newer configuration, or a removed \
                 member (the answer tells it so); logged once per {}s",
                self.local,
                self.members_list(),
                REFUSAL_LOG_INTERVAL.as_secs()
            );
        }
        Ok(Sender::Outsider)
    }

    /// This node's core granted `from`, a sender outside its configuration
    /// ([`Sender::Outsider`]), its vote in `term` (a RequestVote, not a pre-vote): if `from`
    /// wins, its AppendEntries of that term must reach the core, or this voter, which lags on
    /// the configuration that lists `from`, would never receive that configuration from it and
    /// the new leader could not commit (a leader known only to a newer configuration).
    pub fn vote_granted(&self, from: NodeId, term: u64) {
        let mut view = self.view.write().unwrap_or_else(PoisonError::into_inner);
        view.elected_outsider = Some((from, term));
    }

    /// The answer to a MembershipProbe from `from`: whether it is a voter or a learner of the
    /// configuration in effect here. The sender is authenticated as for every message.
    ///
    /// # Errors
    /// As [`PeerGate::check_vote_sender`].
    pub fn probe_answer(&self, admitted: &Admitted, from: NodeId) -> Result<bool, Status> {
        self.check_identity(admitted, from)?;
        let view = self.view.read().unwrap_or_else(PoisonError::into_inner);
        Ok(view.members.contains(&from))
    }

    /// With TLS on, `from` is the member the connection's certificate names; never this node.
    fn check_identity(&self, admitted: &Admitted, from: NodeId) -> Result<(), Status> {
        if let Some(member) = admitted.member {
            if member != from {
                return Err(self.refuse(
                    None,
                    "wrong-member",
                    Status::permission_denied(format!(
                        "a message claiming to come from node {from} arrived on a connection \
                         whose certificate names node {member} (cluster {})",
                        format_cluster_id(self.cluster_id)
                    )),
                ));
            }
        }
        if from == self.local {
            return Err(self.refuse(
                None,
                "from-self",
                Status::permission_denied(format!(
                    "a message claiming to come from node {from} reached node {from} itself \
                     (cluster {})",
                    format_cluster_id(self.cluster_id)
                )),
            ));
        }
        Ok(())
    }

    /// The refusal of `from` as not a member ([`NOT_A_MEMBER`]), logged as the others.
    pub fn not_a_member(&self, from: NodeId) -> Status {
        self.refuse(
            None,
            "not-a-member",
            Status::permission_denied(format!(
                "node {from} {NOT_A_MEMBER} node {} is in (cluster {}, members {}): a removed \
                 member, or one this node has not heard of yet",
                self.local,
                format_cluster_id(self.cluster_id),
                self.members_list()
            )),
        )
    }
}

/// How a vote request's sender passed the gate ([`PeerGate::check_vote_sender`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// A member of the configuration in effect on this node.
    Member,
    /// Not a member of it: the answer carries `sender_not_member`.
    Outsider,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> PeerGate {
        let yaml = "nodes:\n  - node_id: 1\n    ip_address: \"127.0.0.1\"\n    port: 7001\n  - \
                    node_id: 2\n    ip_address: \"127.0.0.1\"\n    port: 7002\n  - node_id: 3\n    \
                    ip_address: \"127.0.0.1\"\n    port: 7003\n";
        let config = ClusterConfig::from_yaml(yaml).expect("config");
        PeerGate::new(&config, NodeId(1), false)
    }

    const PLAINTEXT: Admitted = Admitted { member: None };

    #[test]
    fn vote_requests_pass_from_outside_the_configuration_marked_as_such() {
        let gate = gate();
        assert_eq!(
            gate.check_vote_sender(&PLAINTEXT, NodeId(2))
                .expect("member"),
            Sender::Member
        );
        // Node 4 is known only to a newer configuration (or was removed): its vote request
        // reaches the core, and the answer says it is not a member here.
        assert_eq!(
            gate.check_vote_sender(&PLAINTEXT, NodeId(4))
                .expect("outsider"),
            Sender::Outsider
        );
        // A leader's message from it is still refused, with the words a removed node knows.
        let refused = gate
            .check_sender(&PLAINTEXT, NodeId(4), 7)
            .expect_err("a voter takes no leader's message from outside its configuration");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().contains(NOT_A_MEMBER), "{refused:?}");
        // Unless it granted node 4 its vote in that term: node 4 may have won it.
        gate.vote_granted(NodeId(4), 7);
        assert!(gate.check_sender(&PLAINTEXT, NodeId(4), 7).is_ok());
        for (other, term) in [(NodeId(4), 6), (NodeId(4), 8), (NodeId(5), 7)] {
            assert!(
                gate.check_sender(&PLAINTEXT, other, term).is_err(),
                "node {other} term {term}"
            );
        }
        // Once this node's configuration lists node 4, it is a member.
        gate.set_members(vec![NodeId(1), NodeId(2), NodeId(3), NodeId(4)], true);
        assert_eq!(
            gate.check_vote_sender(&PLAINTEXT, NodeId(4))
                .expect("member"),
            Sender::Member
        );
        // Never from this node itself.
        assert!(gate.check_vote_sender(&PLAINTEXT, NodeId(1)).is_err());
    }

    #[test]
    fn a_certificate_speaks_only_for_the_member_it_names_on_votes_and_probes() {
        let gate = gate();
        let cert_of_4 = Admitted {
            member: Some(NodeId(4)),
        };
        assert_eq!(
            gate.check_vote_sender(&cert_of_4, NodeId(4))
                .expect("node 4 itself"),
            Sender::Outsider
        );
        for claimed in [NodeId(2), NodeId(5)] {
            let refused = gate
                .check_vote_sender(&cert_of_4, claimed)
                .expect_err("another node's claim");
            assert_eq!(refused.code(), tonic::Code::PermissionDenied);
            assert!(refused.message().contains("certificate names node 4"));
            assert!(gate.probe_answer(&cert_of_4, claimed).is_err());
        }
    }

    #[test]
    fn a_probe_is_answered_with_the_configuration_in_effect() {
        let gate = gate();
        assert_eq!(gate.probe_answer(&PLAINTEXT, NodeId(3)).ok(), Some(true));
        assert_eq!(gate.probe_answer(&PLAINTEXT, NodeId(4)).ok(), Some(false));
        // A learner added, then removed.
        gate.set_members(vec![NodeId(1), NodeId(2), NodeId(3), NodeId(4)], true);
        assert_eq!(gate.probe_answer(&PLAINTEXT, NodeId(4)).ok(), Some(true));
        gate.set_members(vec![NodeId(1), NodeId(2), NodeId(3)], true);
        assert_eq!(gate.probe_answer(&PLAINTEXT, NodeId(4)).ok(), Some(false));
    }
}
