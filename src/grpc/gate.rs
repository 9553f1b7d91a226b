//! The gate in front of the Raft service (issue 16): who may send this node Raft messages.
//!
//! This module owns the checks a peer RPC passes before anything reaches the core, so a refused
//! message can never move the term (the forged AppendEntries of issue 16 deposed the leader and
//! committed its entry on every node):
//! 1. at the start of every Raft RPC ([`PeerGate::admit`]): the request carries this cluster's id
//!    in the `raftlog-cluster-id` metadata ([`CLUSTER_ID_HEADER`]; derived from the member list,
//!    [`ClusterConfig::cluster_id`]); with TLS on, the connection's client certificate must
//!    authenticate a member ([`crate::grpc::tls::NodeTls::identify`]);
//! 2. on every message ([`PeerGate::check_sender`]): its `from` is a member of the configuration
//!    in effect on this node (the config file's members until the loop first sets the live one
//!    with [`PeerGate::set_members`]) and, with TLS on, the very member the certificate names.
//!    One exception: a node that is a learner or outside its own configuration (a member being
//!    added, still catching up: its view of the configuration lags the leader's) takes a
//!    leader's messages (AppendEntries, InstallSnapshot, TimeoutNow) from any sender of this
//!    cluster, because the leader may be a member added after the entries it has seen.
//!
//! The gate is stricter than the core: `RaftNode::step` answers vote requests from any server
//! (Raft's rule; the simulator found clusters that could elect no leader without it: a server
//! whose log holds a newer configuration can be the only one able to win, and a voter that has
//! not appended that configuration yet would ignore it). The gate still refuses a sender outside
//! this node's configuration, votes included, because those refusals are how a removed node that
//! never appended its own removal learns of it and stops (`crate::grpc::peers`). So on real
//! processes a voter that lags on the configuration refuses a candidate it does not know yet,
//! until it appends the entry that added it; docs/OPERATIONS.md says what an operator sees.
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

    /// Logs `status` once per remote address, kind and [`REFUSAL_LOG_INTERVAL`]; returns it.
    fn refuse(&self, conn: Option<&ConnInfo>, kind: &'static str, status: Status) -> Status {
        let remote = conn.and_then(|c| c.remote);
        let now = Instant::now();
        let mut logged = self.logged.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (remote.map(|r| r.ip()), kind);
        let due = logged
            .get(&key)
            .is_none_or(|at| now.duration_since(*at) >= REFUSAL_LOG_INTERVAL);
        if due {
            if logged.len() >= LOGGED_MAX {
                logged.clear();
            }
            logged.insert(key, now);
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

    /// The per-message check (module docs, step 2): `from` is a member, and the member the
    /// connection authenticated when TLS is on.
    ///
    /// # Errors
    /// `PermissionDenied` naming the claimed sender and the members (or the certificate's member).
    pub fn check_sender(
        &self,
        admitted: &Admitted,
        from: NodeId,
        leader_message: bool,
    ) -> Result<(), Status> {
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
        let admitted_by_view = {
            let view = self.view.read().unwrap_or_else(PoisonError::into_inner);
            view.members.contains(&from) || (leader_message && view.open_to_leaders)
        };
        if admitted_by_view && from != self.local {
            return Ok(());
        }
        Err(self.refuse(
            None,
            "not-a-member",
            Status::permission_denied(format!(
                "node {from} {NOT_A_MEMBER} node {} is in (cluster {}, members {}): a removed \
                 member, or one this node has not heard of yet",
                self.local,
                format_cluster_id(self.cluster_id),
                self.members_list()
            )),
        ))
    }
}
