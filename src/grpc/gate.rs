//! The gate in front of the Raft service (issue 16): who may send this node Raft messages.
//!
//! This module owns the checks a peer RPC passes before anything reaches the core, so a refused
//! message can never move the term (the forged AppendEntries of issue 16 deposed the leader and
//! committed its entry on every node):
//! 1. at the start of every Raft RPC ([`PeerGate::admit`]): the request carries this cluster's id
//!    in the `raftlog-cluster-id` metadata ([`CLUSTER_ID_HEADER`]; derived from the member list,
//!    [`ClusterConfig::cluster_id`]); with TLS on, the connection's client certificate must
//!    authenticate a member ([`crate::grpc::tls::NodeTls::identify`]);
//! 2. on every message ([`PeerGate::check_sender`]): its `from` is a member of this config and,
//!    with TLS on, the very member the certificate names.
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
    members: Vec<NodeId>,
    /// TLS is on: every Raft RPC must come on a connection authenticated as a member.
    require_member_cert: bool,
    logged: Mutex<HashMap<(Option<std::net::IpAddr>, &'static str), Instant>>,
}

impl PeerGate {
    pub fn new(config: &ClusterConfig, local: NodeId, require_member_cert: bool) -> PeerGate {
        PeerGate {
            local,
            cluster_id: config.cluster_id(),
            members: config.nodes.iter().map(|n| n.id()).collect(),
            require_member_cert,
            logged: Mutex::new(HashMap::new()),
        }
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    fn members_list(&self) -> String {
        let ids: Vec<String> = self.members.iter().map(|m| m.0.to_string()).collect();
        ids.join(", ")
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
    pub fn check_sender(&self, admitted: &Admitted, from: NodeId) -> Result<(), Status> {
        if let Some(member) = admitted.member {
            if member == from {
                return Ok(());
            }
            return Err(self.refuse(
                None,
                "wrong-member",
                Status::permission_denied(format!(
                    "a message claiming to come from node {from} arrived on a connection whose \
                     certificate names node {member} (cluster {})",
                    format_cluster_id(self.cluster_id)
                )),
            ));
        }
        if self.members.contains(&from) && from != self.local {
            return Ok(());
        }
        Err(self.refuse(
            None,
            "not-a-member",
            Status::permission_denied(format!(
                "node {from} is not a peer of node {} in cluster {} (members {})",
                self.local,
                format_cluster_id(self.cluster_id),
                self.members_list()
            )),
        ))
    }
}
