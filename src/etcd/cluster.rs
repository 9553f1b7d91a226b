//! etcd's `Cluster` service: `MemberList`, `MemberAdd` (voter or learner), `MemberRemove`,
//! `MemberUpdate` and `MemberPromote`, over the node's single-server membership changes
//! ([`crate::driver::Inbound::Member`]).
//!
//! What it owns: the etcd view of the configuration in effect. A member is a voter or a learner
//! of the core's configuration; its etcd member id is [`member_id`] of its node id (the same
//! function the config file's members use, so ids are stable across restarts and equal on every
//! node); its peer and client URL is the address recorded when it was added (the member address
//! registry, `src/kv/members.rs`) or, for a config file member, `http://ip:port` from the file.
//! Its name is `node<id>`.
//!
//! Changes are served by the leader; a follower forwards them once (as writes are forwarded) and
//! a change refused because another one is in flight, or because a new leader has not committed
//! an entry of its term yet, is retried until the request's time runs out. etcd's error texts:
//! `etcdserver: member not found`, `etcdserver: Peer URLs already exists`, `etcdserver: given
//! member URLs are invalid`, `etcdserver: can only promote a learner member`, `etcdserver: too
//! many learner members in cluster` (an add of a learner beyond `learners_max`, etcd's
//! `--max-learners`, default 1), and, while a
//! learner lags (its log holds less than 90% of the leader's), `etcdserver: can only promote a
//! learner member which is in sync with leader`.

use std::net::SocketAddr;

use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::members::member_id;
use super::server::{
    again, forward_failed, is_forwarded, not_leader, ClusterService, EtcdApi, Route,
    LEADER_CHANGED, OUTCOME_UNKNOWN, REQUEST_TIMEOUT, TOO_MANY_REQUESTS,
};
use crate::driver::{Inbound, MemberChanged, MemberRefused, MemberRequest};
use crate::etcdpb::etcdserverpb::{self as pb, cluster_client::ClusterClient, Member};
use crate::raft::Membership;
use crate::types::{NodeId, Term};

/// The client a follower forwards changes with.
type Client = ClusterClient<tonic::transport::Channel>;

/// A change's answer, whose header a relayed answer rewrites.
trait Headed {
    fn header(&mut self) -> &mut Option<pb::ResponseHeader>;
}

macro_rules! headed {
    ($($answer:ty),*) => {$(
        impl Headed for $answer {
            fn header(&mut self) -> &mut Option<pb::ResponseHeader> {
                &mut self.header
            }
        }
    )*};
}
headed!(
    pb::MemberAddResponse,
    pb::MemberRemoveResponse,
    pb::MemberUpdateResponse,
    pb::MemberPromoteResponse
);

/// etcd's texts (`rpctypes`).
pub const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
pub const PEER_URL_EXISTS: &str = "etcdserver: Peer URLs already exists";
pub const BAD_MEMBER_URLS: &str = "etcdserver: given member URLs are invalid";
pub const MEMBER_NOT_LEARNER: &str = "etcdserver: can only promote a learner member";
pub const TOO_MANY_LEARNERS: &str = "etcdserver: too many learner members in cluster";
pub const LEARNER_NOT_READY: &str =
    "etcdserver: can only promote a learner member which is in sync with leader";

impl EtcdApi {
    /// The configuration in effect on this node.
    pub(super) async fn membership(&self) -> Result<Membership, Status> {
        self.ask(
            |reply| Inbound::Membership { reply },
            "etcdserver: server stopped",
        )
        .await?
        .ok_or_else(|| Status::internal("this node's core does not track membership"))
    }

    /// `node`'s peer URLs: recorded when it was added, else the config file's address.
    fn urls_of(&self, node: NodeId) -> Vec<String> {
        let recorded = crate::state_machine::StateMachine::member_urls(
            &*self
                .store()
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if let Some(urls) = recorded.get(&node) {
            return urls.clone();
        }
        self.config_members()
            .members
            .iter()
            .find(|m| m.node_id == node)
            .map(|m| vec![m.url()])
            .unwrap_or_default()
    }

    /// Every member of `membership` as etcd shows it, voters first, each in id order.
    fn members_of(&self, membership: &Membership) -> Vec<Member> {
        membership
            .members()
            .map(|node| {
                let urls = self.urls_of(node);
                Member {
                    id: member_id(node),
                    name: format!("node{node}"),
                    peer_ur_ls: urls.clone(),
                    client_ur_ls: urls,
                    is_learner: membership.is_learner(node),
                }
            })
            .collect()
    }

    /// The node whose etcd member id is `id`, among the members of `membership`.
    pub(super) fn node_of(membership: &Membership, id: u64) -> Option<NodeId> {
        membership.members().find(|n| member_id(*n) == id)
    }

    /// Asks the loop for `request` until it is done, refused for good, or the time runs out.
    /// `Ok(Route::Leader(addr))`: this node does not lead; forward to `addr`.
    async fn change_members(
        &self,
        request: MemberRequest,
        forwarded: bool,
        deadline: Instant,
    ) -> Result<Route<(MemberChanged, Membership, Term)>, Status> {
        loop {
            let request = request.clone();
            let outcome = self
                .ask_until(
                    |reply| Inbound::Member { request, reply },
                    OUTCOME_UNKNOWN,
                    deadline,
                )
                .await?;
            let refused = match outcome {
                Ok(changed) => {
                    let membership = self.membership().await?;
                    let term = self.node_status().await?.term;
                    return Ok(Route::Here((changed, membership, term)));
                }
                Err(MemberRefused::NotLeader {
                    leader,
                    leader_address,
                }) => match not_leader::<()>(leader, leader_address, forwarded)? {
                    Route::Again(status) => status,
                    Route::Leader(addr) => return Ok(Route::Leader(addr)),
                    // `not_leader` never answers Here; were it to, asking again is safe.
                    Route::Here(()) => Status::unavailable(LEADER_CHANGED),
                },
                // One change at a time, and not before the leader committed in its term: wait
                // for the one in flight (or that commit), as etcd's clients would retry.
                Err(MemberRefused::InFlight { .. })
                | Err(MemberRefused::BeforeTermCommit)
                | Err(MemberRefused::Transferring { .. }) => Status::unavailable(LEADER_CHANGED),
                Err(MemberRefused::Overloaded { .. }) => {
                    return Err(Status::unavailable(TOO_MANY_REQUESTS))
                }
                Err(MemberRefused::NoSpace { .. }) => {
                    return Err(Status::resource_exhausted(
                        super::server::DATABASE_SPACE_EXCEEDED,
                    ))
                }
                Err(MemberRefused::NotFound(_)) => return Err(Status::not_found(MEMBER_NOT_FOUND)),
                Err(MemberRefused::TooManyLearners { learners, max }) => {
                    tracing::info!(
                        "refused to add a learner: the configuration holds {learners} \
                         (learners_max {max})"
                    );
                    return Err(Status::failed_precondition(TOO_MANY_LEARNERS));
                }
                Err(MemberRefused::LearnerNotReady {
                    node,
                    match_index,
                    last_index,
                }) => {
                    tracing::info!(
                        "refused to promote learner {node}: it holds entries up to \
                         {match_index}, the leader {last_index}"
                    );
                    return Err(Status::failed_precondition(LEARNER_NOT_READY));
                }
                // The core's own promotion check (the learner has not acknowledged the entry
                // that added it) uses etcd's words: the client gets etcd's exact text.
                Err(MemberRefused::Invalid(why))
                    if why.starts_with(LEARNER_NOT_READY.trim_start_matches("etcdserver: ")) =>
                {
                    tracing::info!("refused to promote a learner: {why}");
                    return Err(Status::failed_precondition(LEARNER_NOT_READY));
                }
                Err(refused @ (MemberRefused::Invalid(_) | MemberRefused::NoRegistry)) => {
                    return Err(Status::failed_precondition(format!(
                        "rust-raft-log: {refused}"
                    )))
                }
            };
            again(refused, forwarded, deadline).await?;
        }
    }

    fn cluster_client(&self, addr: SocketAddr) -> Result<Client, Status> {
        Ok(ClusterClient::new(self.channel(addr)?))
    }

    /// Forwards a change this node does not lead to the leader at `addr` (once: `call` sends
    /// `message` marked as forwarded) and relays its answer, or maps a failed forward as the KV
    /// handlers do.
    async fn forward_change<M, T, F, Fut>(
        &self,
        addr: SocketAddr,
        message: M,
        deadline: Instant,
        call: F,
    ) -> Result<Response<T>, Status>
    where
        T: Headed,
        F: FnOnce(Client, Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let client = self.cluster_client(addr)?;
        match call(client, self.forward_request(message, deadline)).await {
            Err(status) => Err(forward_failed(status, false).unwrap_or_else(|s| s)),
            answer => self.relay(answer, Headed::header),
        }
    }
}

/// Checks the peer URLs of an add or update: at least one, each `http(s)://IP:PORT`, none used
/// by another member.
fn check_urls(
    api: &EtcdApi,
    urls: &[String],
    membership: &Membership,
    except: Option<NodeId>,
) -> Result<(), Status> {
    if urls.is_empty()
        || urls
            .iter()
            .any(|u| crate::driver::parse_peer_url(u).is_err())
    {
        return Err(Status::invalid_argument(BAD_MEMBER_URLS));
    }
    for node in membership.members().filter(|n| Some(*n) != except) {
        if api.urls_of(node).iter().any(|u| urls.contains(u)) {
            return Err(Status::failed_precondition(PEER_URL_EXISTS));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    /// etcd's `MemberAdd`: the leader chooses the new member's node id (one above every id used
    /// so far); the answer's `member` carries its etcd id and its name `node<id>`, which is the
    /// `--node-id` to start it with (with `--join`).
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let add = request.into_inner();
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let membership = self.api.membership().await?;
        check_urls(&self.api, &add.peer_ur_ls, &membership, None)?;
        let change = MemberRequest::Add {
            peer_urls: add.peer_ur_ls.clone(),
            learner: add.is_learner,
        };
        match self.api.change_members(change, forwarded, deadline).await? {
            Route::Here((changed, membership, term)) => {
                let members = self.api.members_of(&membership);
                let member = members
                    .iter()
                    .find(|m| m.id == member_id(changed.node))
                    .cloned();
                let revision = self.api.store_revision();
                Ok(Response::new(pb::MemberAddResponse {
                    header: Some(self.api.header(revision, term)),
                    member,
                    members,
                }))
            }
            Route::Leader(addr) => {
                let call = |mut c: Client, r| async move { c.member_add(r).await };
                self.api.forward_change(addr, add, deadline, call).await
            }
            Route::Again(status) => Err(status),
        }
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let remove = request.into_inner();
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let membership = self.api.membership().await?;
        let node = EtcdApi::node_of(&membership, remove.id)
            .ok_or_else(|| Status::not_found(MEMBER_NOT_FOUND))?;
        match self
            .api
            .change_members(MemberRequest::Remove(node), forwarded, deadline)
            .await?
        {
            Route::Here((_, membership, term)) => Ok(Response::new(pb::MemberRemoveResponse {
                header: Some(self.api.header(self.api.store_revision(), term)),
                members: self.api.members_of(&membership),
            })),
            Route::Leader(addr) => {
                let call = |mut c: Client, r| async move { c.member_remove(r).await };
                self.api.forward_change(addr, remove, deadline, call).await
            }
            Route::Again(status) => Err(status),
        }
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let update = request.into_inner();
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let membership = self.api.membership().await?;
        let node = EtcdApi::node_of(&membership, update.id)
            .ok_or_else(|| Status::not_found(MEMBER_NOT_FOUND))?;
        check_urls(&self.api, &update.peer_ur_ls, &membership, Some(node))?;
        let change = MemberRequest::Update {
            node,
            peer_urls: update.peer_ur_ls.clone(),
        };
        match self.api.change_members(change, forwarded, deadline).await? {
            Route::Here((_, membership, term)) => Ok(Response::new(pb::MemberUpdateResponse {
                header: Some(self.api.header(self.api.store_revision(), term)),
                members: self.api.members_of(&membership),
            })),
            Route::Leader(addr) => {
                let call = |mut c: Client, r| async move { c.member_update(r).await };
                self.api.forward_change(addr, update, deadline, call).await
            }
            Route::Again(status) => Err(status),
        }
    }

    /// The configuration in effect on this node, learners marked (`IsLearner`). Served locally
    /// (etcd 3.4 does too): a follower that has not yet appended the newest change lists the
    /// configuration before it.
    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let membership = self.api.membership().await?;
        let status = self.api.node_status().await?;
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.api.header(self.api.store_revision(), status.term)),
            members: self.api.members_of(&membership),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let promote = request.into_inner();
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let membership = self.api.membership().await?;
        let node = EtcdApi::node_of(&membership, promote.id)
            .ok_or_else(|| Status::not_found(MEMBER_NOT_FOUND))?;
        if !membership.is_learner(node) {
            return Err(Status::failed_precondition(MEMBER_NOT_LEARNER));
        }
        match self
            .api
            .change_members(MemberRequest::Promote(node), forwarded, deadline)
            .await?
        {
            Route::Here((_, membership, term)) => Ok(Response::new(pb::MemberPromoteResponse {
                header: Some(self.api.header(self.api.store_revision(), term)),
                members: self.api.members_of(&membership),
            })),
            Route::Leader(addr) => {
                let call = |mut c: Client, r| async move { c.member_promote(r).await };
                self.api.forward_change(addr, promote, deadline, call).await
            }
            Route::Again(status) => Err(status),
        }
    }
}
