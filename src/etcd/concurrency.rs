//! etcd's server-side `Lock` (`v3lockpb`) and `Election` (`v3electionpb`) services: the
//! concurrency recipes etcd's client library runs, run here for clients that do not have it
//! (and for the JSON gateway's users).
//!
//! Both are built only from the node's own `KV` service, called in-process (so every step is an
//! ordinary linearizable Range or Txn, forwarded to the leader like any client's):
//! - a **candidate key** `<name>/<lease id in hex>` attached to the caller's lease, created by a
//!   Txn that only creates it if it does not exist (one lease holds one key per name: locking
//!   twice with the same lease is one acquisition, as in etcd);
//! - the **owner** is the key of the name with the lowest create revision; a candidate waits
//!   until every key of the name created before its own is gone (deleted by Unlock/Resign or by
//!   the expiry of its lease), then checks that its own key still exists (`mutex: session is
//!   expired` otherwise);
//! - a wait that ends early (the client went away, an error) deletes the candidate key, so that
//!   it does not block the candidates behind it.
//!
//! Waiting polls the name's keys (a linearizable Range every [`POLL`]): correct, and cheap at the
//! rate locks change hands, but an `Observe` stream sees the leader's value at each poll, so two
//! proclamations within one poll show as the second only (docs/ETCD_COMPAT.md).
//!
//! Invariant: these services write only keys under the names clients give them, through the KV
//! service's validation; they hold no state between requests.

use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::etcd::server::KvService;
use crate::etcdpb::etcdserverpb::{
    self as pb, compare, kv_server::Kv, range_request, request_op, Compare, RequestOp,
    ResponseHeader,
};
use crate::etcdpb::mvccpb::KeyValue;
use crate::etcdpb::v3electionpb::{
    self as el, election_server::Election, election_server::ElectionServer, LeaderKey,
};
use crate::etcdpb::v3lockpb::{self as lk, lock_server::Lock, lock_server::LockServer};

/// How often a waiting candidate (or an `Observe` stream) reads the name's keys again.
pub const POLL: Duration = Duration::from_millis(50);

/// etcd's texts (`concurrency` and `v3election` packages).
const SESSION_EXPIRED: &str = "mutex: session is expired";
const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";
const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";

/// The Lock and Election services over `kv`, ready to be added to the node's server.
pub fn services(kv: KvService) -> (LockServer<LockService>, ElectionServer<ElectionService>) {
    (
        LockServer::new(LockService { kv: kv.clone() }),
        ElectionServer::new(ElectionService { kv }),
    )
}

/// etcd's `Lock` service.
pub struct LockService {
    kv: KvService,
}

/// etcd's `Election` service.
pub struct ElectionService {
    kv: KvService,
}

/// `name/`: the prefix under which a name's candidate keys live.
fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// The candidate key of `lease` under `name` (etcd: `fmt.Sprintf("%s%x", prefix, lease)`).
fn candidate_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix_of(name);
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// The end of the range of keys that start with `prefix` (etcd's `GetPrefixRangeEnd`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

async fn range(kv: &KvService, request: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
    Ok(kv.range(Request::new(request)).await?.into_inner())
}

async fn txn(kv: &KvService, request: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
    Ok(kv.txn(Request::new(request)).await?.into_inner())
}

async fn delete(kv: &KvService, key: Vec<u8>) -> Result<pb::DeleteRangeResponse, Status> {
    let request = pb::DeleteRangeRequest {
        key,
        ..Default::default()
    };
    Ok(kv.delete_range(Request::new(request)).await?.into_inner())
}

/// The key of `prefix` with the lowest (`Ascend`) or, among those created at or before
/// `max_create_revision` (0: any), the highest (`Descend`) create revision.
fn by_create(
    prefix: &[u8],
    order: range_request::SortOrder,
    max_create_revision: i64,
) -> pb::RangeRequest {
    pb::RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: order as i32,
        sort_target: range_request::SortTarget::Create as i32,
        max_create_revision,
        ..Default::default()
    }
}

fn create_revision_is(key: &[u8], revision: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::CreateRevision(revision)),
        ..Default::default()
    }
}

fn op(request: request_op::Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

/// A candidate key that is deleted if the request ends before the key is handed to the client
/// (the client went away while waiting, or the wait failed).
struct Candidate {
    kv: KvService,
    key: Vec<u8>,
    armed: bool,
}

impl Candidate {
    /// The key now belongs to the client.
    fn keep(mut self) -> Vec<u8> {
        self.armed = false;
        std::mem::take(&mut self.key)
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let kv = self.kv.clone();
        let key = std::mem::take(&mut self.key);
        // Dropped inside a handler on the node's runtime; a failure leaves the key to its lease.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(status) = delete(&kv, key).await {
                    tracing::warn!(%status, "could not delete an abandoned lock/election key");
                }
            });
        }
    }
}

/// Creates `key` with `value` on `lease` unless it exists; answers the key's create revision,
/// its current value, and the header.
async fn create_candidate(
    kv: &KvService,
    key: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<(i64, Option<KeyValue>, ResponseHeader), Status> {
    let request = pb::TxnRequest {
        compare: vec![create_revision_is(key, 0)],
        success: vec![op(request_op::Request::RequestPut(pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        }))],
        failure: vec![op(request_op::Request::RequestRange(pb::RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        }))],
    };
    let answer = txn(kv, request).await?;
    let header = answer.header.unwrap_or_default();
    if answer.succeeded {
        return Ok((header.revision, None, header));
    }
    let existing = answer.responses.into_iter().find_map(|r| match r.response {
        Some(pb::response_op::Response::ResponseRange(r)) => r.kvs.into_iter().next(),
        _ => None,
    });
    match existing {
        Some(kv) => Ok((kv.create_revision, Some(kv), header)),
        // Deleted between the compare and the read of the same Txn cannot happen; a missing
        // answer is a store bug.
        None => Err(Status::internal(
            "the existing candidate key was not returned",
        )),
    }
}

/// Waits until no key of `prefix` created before `revision` exists, then checks that `key`
/// still exists (its lease may have expired meanwhile). Answers the last header.
async fn wait_for_turn(
    kv: &KvService,
    prefix: &[u8],
    key: &[u8],
    revision: i64,
) -> Result<ResponseHeader, Status> {
    loop {
        let earlier = range(
            kv,
            by_create(prefix, range_request::SortOrder::Descend, revision - 1),
        )
        .await?;
        if earlier.kvs.is_empty() {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let own = range(
        kv,
        pb::RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        },
    )
    .await?;
    match own.kvs.first() {
        Some(kv) if kv.create_revision == revision => Ok(own.header.unwrap_or_default()),
        _ => Err(Status::failed_precondition(SESSION_EXPIRED)),
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(
        &self,
        request: Request<lk::LockRequest>,
    ) -> Result<Response<lk::LockResponse>, Status> {
        let request = request.into_inner();
        let key = candidate_key(&request.name, request.lease);
        let (revision, _, _) = create_candidate(&self.kv, &key, b"", request.lease).await?;
        let candidate = Candidate {
            kv: self.kv.clone(),
            key,
            armed: true,
        };
        let header = wait_for_turn(
            &self.kv,
            &prefix_of(&request.name),
            &candidate.key,
            revision,
        )
        .await?;
        Ok(Response::new(lk::LockResponse {
            header: Some(header),
            key: candidate.keep(),
        }))
    }

    async fn unlock(
        &self,
        request: Request<lk::UnlockRequest>,
    ) -> Result<Response<lk::UnlockResponse>, Status> {
        let answer = delete(&self.kv, request.into_inner().key).await?;
        Ok(Response::new(lk::UnlockResponse {
            header: answer.header,
        }))
    }
}

/// The leader's key of election `name`, if any (the oldest candidate key).
async fn leader_of(
    kv: &KvService,
    name: &[u8],
) -> Result<(Option<KeyValue>, ResponseHeader), Status> {
    let answer = range(
        kv,
        by_create(&prefix_of(name), range_request::SortOrder::Ascend, 0),
    )
    .await?;
    let header = answer.header.unwrap_or_default();
    Ok((answer.kvs.into_iter().next(), header))
}

type ObserveStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<el::LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<el::CampaignRequest>,
    ) -> Result<Response<el::CampaignResponse>, Status> {
        let request = request.into_inner();
        let key = candidate_key(&request.name, request.lease);
        let (revision, existing, _) =
            create_candidate(&self.kv, &key, &request.value, request.lease).await?;
        let candidate = Candidate {
            kv: self.kv.clone(),
            key,
            armed: existing.is_none(),
        };
        // Campaigning again with the same lease keeps the candidacy and posts the new value.
        if existing.is_some_and(|kv| kv.value != request.value) {
            proclaim(&self.kv, &candidate.key, revision, &request.value).await?;
        }
        let header = wait_for_turn(
            &self.kv,
            &prefix_of(&request.name),
            &candidate.key,
            revision,
        )
        .await?;
        Ok(Response::new(el::CampaignResponse {
            header: Some(header),
            leader: Some(LeaderKey {
                name: request.name,
                key: candidate.keep(),
                rev: revision,
                lease: request.lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<el::ProclaimRequest>,
    ) -> Result<Response<el::ProclaimResponse>, Status> {
        let request = request.into_inner();
        let leader = request
            .leader
            .ok_or_else(|| Status::invalid_argument(MISSING_LEADER_KEY))?;
        let header = proclaim(&self.kv, &leader.key, leader.rev, &request.value).await?;
        Ok(Response::new(el::ProclaimResponse {
            header: Some(header),
        }))
    }

    async fn leader(
        &self,
        request: Request<el::LeaderRequest>,
    ) -> Result<Response<el::LeaderResponse>, Status> {
        match leader_of(&self.kv, &request.into_inner().name).await? {
            (Some(kv), header) => Ok(Response::new(el::LeaderResponse {
                header: Some(header),
                kv: Some(kv),
            })),
            (None, _) => Err(Status::not_found(NO_LEADER)),
        }
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<el::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let name = request.into_inner().name;
        let kv = self.kv.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            // The last (key, mod revision) sent: a new leader or a new proclamation differs.
            let mut sent: Option<(Vec<u8>, i64)> = None;
            loop {
                let next = match leader_of(&kv, &name).await {
                    Ok((Some(leader), header)) => {
                        let seen = (leader.key.clone(), leader.mod_revision);
                        if sent.as_ref() == Some(&seen) {
                            None
                        } else {
                            sent = Some(seen);
                            Some(Ok(el::LeaderResponse {
                                header: Some(header),
                                kv: Some(leader),
                            }))
                        }
                    }
                    Ok((None, _)) => None,
                    Err(status) => Some(Err(status)),
                };
                let failed = matches!(next, Some(Err(_)));
                if let Some(item) = next {
                    if tx.send(item).await.is_err() {
                        return; // the client went away
                    }
                }
                if failed {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(POLL) => {}
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        request: Request<el::ResignRequest>,
    ) -> Result<Response<el::ResignResponse>, Status> {
        let leader = request
            .into_inner()
            .leader
            .ok_or_else(|| Status::invalid_argument(MISSING_LEADER_KEY))?;
        let answer = txn(
            &self.kv,
            pb::TxnRequest {
                compare: vec![create_revision_is(&leader.key, leader.rev)],
                success: vec![op(request_op::Request::RequestDeleteRange(
                    pb::DeleteRangeRequest {
                        key: leader.key,
                        ..Default::default()
                    },
                ))],
                failure: Vec::new(),
            },
        )
        .await?;
        Ok(Response::new(el::ResignResponse {
            header: answer.header,
        }))
    }
}

/// Puts `value` on the leader's key if it is still the one created at `revision` (keeping its
/// lease); `election: not leader` otherwise.
async fn proclaim(
    kv: &KvService,
    key: &[u8],
    revision: i64,
    value: &[u8],
) -> Result<ResponseHeader, Status> {
    let answer = txn(
        kv,
        pb::TxnRequest {
            compare: vec![create_revision_is(key, revision)],
            success: vec![op(request_op::Request::RequestPut(pb::PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                ignore_lease: true,
                ..Default::default()
            }))],
            failure: Vec::new(),
        },
    )
    .await?;
    if !answer.succeeded {
        return Err(Status::failed_precondition(NOT_LEADER));
    }
    Ok(answer.header.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_keys_are_etcds() {
        // etcd's concurrency package: "<name>/" then the lease id in lowercase hex.
        assert_eq!(
            candidate_key(b"job", 0x694d_7ab4_23c5_a80a),
            b"job/694d7ab423c5a80a"
        );
        assert_eq!(candidate_key(b"", 255), b"/ff");
    }

    #[test]
    fn prefix_ends_follow_etcds_rule() {
        assert_eq!(prefix_end(b"job/"), b"job0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn waiting_asks_for_the_newest_key_created_before_ours() {
        let r = by_create(b"job/", range_request::SortOrder::Descend, 41);
        assert_eq!(r.max_create_revision, 41);
        assert_eq!(r.limit, 1);
        assert_eq!(r.sort_target, range_request::SortTarget::Create as i32);
        assert_eq!(r.sort_order, range_request::SortOrder::Descend as i32);
        assert_eq!(r.range_end, b"job0");
    }
}
