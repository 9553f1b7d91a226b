//! etcd's `Lease` service (LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive,
//! LeaseLeases) and the leader's lease clock, which decides expiry.
//!
//! What lives where:
//! - **Replicated** (in the store, through the log, in snapshots): each lease's ID, granted TTL and
//!   attached keys (`crate::kv`). A grant and a revoke are log commands; a revoke deletes every
//!   attached key in one write transaction, at one revision (so watchers see ordinary deletes).
//! - **Not replicated** ([`LeaseClock`], this module): when each lease expires. Only the leader
//!   keeps deadlines, in memory, by its own monotonic clock: a grant or a keep-alive sets the
//!   lease's deadline to now + its TTL. Followers keep none and never expire anything.
//! - **Expiry** ([`run_expiry`]): every [`EXPIRY_CHECK_INTERVAL`] the task asks the event loop for
//!   the node's role and term. While this node leads, leases whose deadline has passed are
//!   revoked by proposing a revoke through the log (as etcd's leader does), one at a time so that
//!   mass expiry never floods the proposal queue. When this node becomes leader (a term it has
//!   not led in before), every lease's deadline is reset to now + its TTL: etcd's rule without
//!   checkpoints, so a leader change never expires a lease early; a lease granted by an earlier
//!   leader gets a deadline the first time the clock sees it, also now + its TTL.
//!
//! Invariant: a lease is only revoked for expiry by a node that was leader when it checked and
//! whose deadline for it, set at or after the start of its leadership, had passed; so no lease
//! ever expires before TTL seconds after its last keep-alive on the current leader, nor before
//! TTL seconds after that leader took over.
//!
//! Routing follows the KV handlers ([`super::server`]): grant and revoke are proposals (a
//! follower forwards them to the leader); keep-alive and time-to-live are answered by the leader
//! after a ReadIndex confirmation (its deadlines are the only ones), forwarded by followers;
//! LeaseLeases is answered from this member's applied state, as etcd does. The keep-alives of one
//! stream that arrive while it waits for a confirmation are answered together after the next one
//! (up to [`KEEPALIVE_BATCH_MAX`]), so a stream is not limited to one keep-alive per quorum round
//! trip; the core batches the confirmations of all streams into its heartbeat rounds.
//!
//! The minimum TTL is etcd's rule, `ceil(1.5 × election timeout)` in seconds (etcd:
//! `minTTL = 3 × electionTicks / 2 × tick`), computed from `election_timeout_range.max`
//! ([`min_lease_ttl_s`]); a smaller TTL is raised to it by the proposer, so the command in the log
//! carries the TTL every replica stores.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use super::server::{
    again, forward_failed, is_forwarded, lock, wrong_response, EtcdApi, Route, REQUEST_TIMEOUT,
};
use crate::etcdpb::etcdserverpb::{self as pb, lease_client::LeaseClient};
use crate::kv::{self, encode_lease_grant, encode_lease_revoke, KvError, LEASE_TTL_MAX_S};
use crate::raft::Role;
use crate::types::Term;

/// How often the expiry task looks at the deadlines (etcd's lessor checks every 500 ms). A lease
/// is revoked at most this long (plus one commit) after its deadline.
pub const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Keep-alive answers queued towards one client before the handler waits for it.
const KEEPALIVE_QUEUE: usize = 16;

/// Most keep-alives of one stream answered after one ReadIndex round (and the length of the
/// queue of a stream's requests waiting for it).
pub const KEEPALIVE_BATCH_MAX: usize = 256;

/// How many server-chosen IDs a grant tries when the one it chose is taken (63 random bits: a
/// second try is already a curiosity).
const GRANT_ID_TRIES: usize = 4;

/// etcd's minimum lease TTL for an election timeout of `election_timeout_max_ms`:
/// `ceil(1.5 × timeout)` in seconds, at least 1.
pub fn min_lease_ttl_s(election_timeout_max_ms: u64) -> i64 {
    let ms = election_timeout_max_ms.saturating_mul(3) / 2;
    i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX).max(1)
}

/// The leader's deadlines (see the module docs). Shared by the handlers (grant, keep-alive,
/// time-to-live) and the expiry task; every method takes the current instant, so tests drive it.
#[derive(Debug, Default)]
pub struct LeaseClock {
    state: Mutex<ClockState>,
}

#[derive(Debug, Default)]
struct ClockState {
    /// The term this node leads in and has reset its deadlines for; `None` while not leading.
    leading_term: Option<Term>,
    deadlines: HashMap<i64, Instant>,
}

impl LeaseClock {
    fn state(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A grant or keep-alive of lease `id` (granted `ttl_s`) on the leader: it lives `ttl_s` from
    /// `now`.
    pub fn renew(&self, id: i64, ttl_s: i64, now: Instant) {
        self.state().deadlines.insert(id, deadline(now, ttl_s));
    }

    /// The lease is gone (revoked): forget its deadline.
    pub fn forget(&self, id: i64) {
        self.state().deadlines.remove(&id);
    }

    /// Whole seconds left before lease `id` (granted `ttl_s`) expires, as etcd reports them
    /// (truncated); a lease without a deadline yet gets one now (now + TTL).
    pub fn remaining_s(&self, id: i64, ttl_s: i64, now: Instant) -> i64 {
        let mut state = self.state();
        let at = *state
            .deadlines
            .entry(id)
            .or_insert_with(|| deadline(now, ttl_s));
        i64::try_from(at.saturating_duration_since(now).as_secs()).unwrap_or(i64::MAX)
    }

    /// One check of the expiry task: `leading` is this node's term if it leads, `leases` every
    /// lease of the applied state as `(id, ttl)`. Returns the leases whose deadline has passed.
    /// A new leadership resets every deadline to now + TTL; leases the clock has not seen get
    /// now + TTL; deadlines of leases that are gone are dropped; not leading drops them all.
    pub fn check(
        &self,
        leading: Option<Term>,
        leases: impl Iterator<Item = (i64, i64)>,
        now: Instant,
    ) -> Vec<i64> {
        let mut state = self.state();
        let Some(term) = leading else {
            state.leading_term = None;
            state.deadlines.clear();
            return Vec::new();
        };
        let new_leadership = state.leading_term != Some(term);
        state.leading_term = Some(term);
        let mut deadlines = HashMap::with_capacity(state.deadlines.len());
        let mut expired = Vec::new();
        for (id, ttl_s) in leases {
            let at = match state.deadlines.get(&id) {
                Some(at) if !new_leadership => *at,
                _ => deadline(now, ttl_s),
            };
            if at <= now {
                expired.push(id);
            }
            deadlines.insert(id, at);
        }
        state.deadlines = deadlines;
        expired
    }
}

fn deadline(now: Instant, ttl_s: i64) -> Instant {
    let ttl = Duration::from_secs(u64::try_from(ttl_s).unwrap_or(0));
    // A TTL beyond what the clock can represent never expires (etcd's limit is 285 years).
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(u64::from(u32::MAX)))
}

/// The expiry task of one node (see the module docs); runs until the event loop stops.
pub async fn run_expiry(api: EtcdApi, clock: Arc<LeaseClock>) {
    let mut interval = tokio::time::interval(EXPIRY_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Ok(status) = api.node_status().await else {
            return; // the event loop has stopped
        };
        let leading = (status.role == Role::Leader).then_some(status.term);
        let expired = {
            let store = lock(api.store());
            clock.check(leading, store.leases(), Instant::now())
        };
        for id in expired {
            revoke_expired(&api, &clock, id).await;
        }
    }
}

/// Proposes the revoke of an expired lease (here only: never forwarded). A failure leaves the
/// deadline as it was, so the next check tries again if this node still leads.
async fn revoke_expired(api: &EtcdApi, clock: &LeaseClock, id: i64) {
    let payload = encode_lease_revoke(&pb::LeaseRevokeRequest { id });
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let outcome = api.propose(payload, true, deadline).await;
    if lock(api.store()).lease_ttl(id).is_none() {
        tracing::info!("⌛ Lease {id:016x} expired and was revoked");
        clock.forget(id);
    } else if let Err(status) = outcome {
        tracing::debug!(%status, "lease {id:016x} expired; its revoke was not applied");
    }
}

/// A lease ID for a grant that named none: 63 random bits, never 0 (etcd's proposer does the
/// same with its request-ID generator). Chosen before proposing and carried in the command, so
/// every replica stores the same one.
/// The generator is a SplitMix64 sequence seeded from the clock and the process ID: unique
/// within a process, and unlikely to meet another process's; a taken ID is retried anyway.
fn pick_lease_id() -> i64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static NEXT: OnceLock<AtomicU64> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        AtomicU64::new(nanos ^ (u64::from(std::process::id()) << 40))
    });
    loop {
        let mut z = next.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let id = ((z ^ (z >> 31)) >> 1) as i64;
        if id != 0 {
            return id;
        }
    }
}

/// etcd's `Lease` service.
#[derive(Clone)]
pub struct LeaseService {
    api: EtcdApi,
    clock: Arc<LeaseClock>,
    min_ttl_s: i64,
}

impl LeaseService {
    /// The service and the clock its expiry task ([`run_expiry`]) must share.
    pub fn new(
        api: EtcdApi,
        min_ttl_s: i64,
    ) -> (pb::lease_server::LeaseServer<Self>, Arc<LeaseClock>) {
        let clock = Arc::new(LeaseClock::default());
        let service = LeaseService {
            api,
            clock: Arc::clone(&clock),
            min_ttl_s,
        };
        (pb::lease_server::LeaseServer::new(service), clock)
    }

    /// The service itself and its clock (the JSON gateway calls it in-process).
    pub fn plain(api: EtcdApi, min_ttl_s: i64) -> (LeaseService, Arc<LeaseClock>) {
        let clock = Arc::new(LeaseClock::default());
        let service = LeaseService {
            api,
            clock: Arc::clone(&clock),
            min_ttl_s,
        };
        (service, clock)
    }

    /// One keep-alive, as the stream answers it (the JSON gateway's form).
    pub async fn keep_alive_once(
        &self,
        request: pb::LeaseKeepAliveRequest,
    ) -> Result<pb::LeaseKeepAliveResponse, Status> {
        let mut upstream = None;
        let answers = self
            .keep_alive_batch(&[request.id], false, &mut upstream)
            .await?;
        answers
            .into_iter()
            .next()
            .ok_or_else(|| Status::internal("no answer to a keep-alive"))
    }

    fn client(&self, addr: SocketAddr) -> Result<LeaseClient<Channel>, Status> {
        Ok(LeaseClient::new(self.api.channel(addr)?))
    }

    /// Proposes one grant; `Here` holds the applied answer.
    async fn propose_grant(
        &self,
        request: &pb::LeaseGrantRequest,
        forwarded: bool,
        deadline: Instant,
    ) -> Result<Route<(pb::LeaseGrantResponse, Term)>, Status> {
        let payload = encode_lease_grant(request);
        Ok(
            match self.api.propose(payload, forwarded, deadline).await? {
                Route::Here((kv::Applied::LeaseGrant(r), term)) => Route::Here((r, term)),
                Route::Here(_) => return Err(wrong_response("lease grant")),
                Route::Leader(addr) => Route::Leader(addr),
                Route::Again(status) => Route::Again(status),
            },
        )
    }

    /// A grant proposed here: the requested ID, or one chosen here (another if it is taken).
    async fn grant_here(
        &self,
        request: &pb::LeaseGrantRequest,
        forwarded: bool,
        deadline: Instant,
    ) -> Result<Route<(pb::LeaseGrantResponse, Term)>, Status> {
        let ttl = request.ttl.max(self.min_ttl_s);
        let mut tries = 0;
        loop {
            let id = if request.id == 0 {
                pick_lease_id()
            } else {
                request.id
            };
            let chosen = pb::LeaseGrantRequest { ttl, id };
            tries += 1;
            match self.propose_grant(&chosen, forwarded, deadline).await {
                Err(status)
                    if request.id == 0
                        && tries < GRANT_ID_TRIES
                        && status.message() == KvError::LeaseExists.to_string() => {}
                other => return other,
            }
        }
    }

    /// Serves keep-alives after one ReadIndex confirmation; `Here` holds an answer per ID, in
    /// order (TTL 0 for a lease that does not exist, as etcd answers).
    async fn keep_alive_here(
        &self,
        ids: &[i64],
        forwarded: bool,
        deadline: Instant,
    ) -> Result<Route<Vec<pb::LeaseKeepAliveResponse>>, Status> {
        Ok(match self.api.read(true, forwarded, deadline).await? {
            Route::Here(grant) => {
                let store = lock(self.api.store());
                let header = self.api.header(store.revision(), grant.term);
                let now = Instant::now();
                let answers = ids
                    .iter()
                    .map(|&id| {
                        let ttl = store.lease_ttl(id);
                        if let Some(ttl) = ttl {
                            self.clock.renew(id, ttl, now);
                        }
                        pb::LeaseKeepAliveResponse {
                            header: Some(header),
                            id,
                            ttl: ttl.unwrap_or(0),
                        }
                    })
                    .collect();
                Route::Here(answers)
            }
            Route::Leader(addr) => Route::Leader(addr),
            Route::Again(status) => Route::Again(status),
        })
    }

    /// Answers keep-alive requests of a client's stream that arrived together (one ReadIndex
    /// round for all of them): here if this node leads, else over `upstream`, a keep-alive stream
    /// of our own to the leader (opened on demand, reopened when the leader moves or the stream
    /// breaks; a keep-alive is safe to repeat).
    async fn keep_alive_batch(
        &self,
        ids: &[i64],
        forwarded: bool,
        upstream: &mut Option<Upstream>,
    ) -> Result<Vec<pb::LeaseKeepAliveResponse>, Status> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let refused = match self.keep_alive_here(ids, forwarded, deadline).await? {
                Route::Here(answers) => return Ok(answers),
                Route::Leader(addr) => {
                    match self
                        .keep_alive_upstream(addr, ids, upstream, deadline)
                        .await
                    {
                        Ok(mut answers) => {
                            let member_id = self.api.header(0, Term(0)).member_id;
                            for header in answers.iter_mut().filter_map(|a| a.header.as_mut()) {
                                header.member_id = member_id;
                            }
                            return Ok(answers);
                        }
                        Err(status) => {
                            *upstream = None;
                            forward_failed(status, true)?
                        }
                    }
                }
                Route::Again(status) => status,
            };
            again(refused, forwarded, deadline).await?;
        }
    }

    async fn keep_alive_upstream(
        &self,
        addr: SocketAddr,
        ids: &[i64],
        upstream: &mut Option<Upstream>,
        deadline: Instant,
    ) -> Result<Vec<pb::LeaseKeepAliveResponse>, Status> {
        let changed = || Status::unavailable("etcdserver: leader changed");
        let mut unsent = ids;
        if upstream.as_ref().is_none_or(|up| up.addr != addr) {
            let Some((&first, rest)) = ids.split_first() else {
                return Ok(Vec::new());
            };
            let (requests, receiver) = mpsc::channel(KEEPALIVE_QUEUE);
            // The first request is queued before the call is awaited: a gRPC server may send
            // the response headers only with its first answer.
            requests
                .send(pb::LeaseKeepAliveRequest { id: first })
                .await
                .map_err(|_| changed())?;
            let mut call = Request::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
            call.metadata_mut().insert(
                super::server::FORWARDED_HEADER,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            let responses = self
                .client(addr)?
                .lease_keep_alive(call)
                .await?
                .into_inner();
            *upstream = Some(Upstream {
                addr,
                requests,
                responses,
            });
            unsent = rest;
        }
        let Some(up) = upstream.as_mut() else {
            unreachable!("opened above");
        };
        for &id in unsent {
            up.requests
                .send(pb::LeaseKeepAliveRequest { id })
                .await
                .map_err(|_| changed())?;
        }
        let mut answers = Vec::with_capacity(ids.len());
        while answers.len() < ids.len() {
            let bound = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(bound, up.responses.message()).await {
                Ok(Ok(Some(response))) => answers.push(response),
                Ok(Ok(None)) => return Err(changed()),
                Ok(Err(status)) => return Err(status),
                Err(_) => return Err(Status::unavailable("etcdserver: request timed out")),
            }
        }
        Ok(answers)
    }
}

/// A follower's keep-alive stream to the leader, on behalf of one client stream.
struct Upstream {
    addr: SocketAddr,
    requests: mpsc::Sender<pb::LeaseKeepAliveRequest>,
    responses: Streaming<pb::LeaseKeepAliveResponse>,
}

/// The stream of `LeaseKeepAlive` answers.
pub type KeepAliveStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let grant = request.into_inner();
        // Refused before proposing (the store refuses it too, for commands already in a log).
        if grant.ttl > LEASE_TTL_MAX_S {
            return Err(KvError::LeaseTtlTooLarge.to_status());
        }
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let refused = match self.grant_here(&grant, forwarded, deadline).await? {
                Route::Here((mut response, term)) => {
                    self.clock.renew(response.id, response.ttl, Instant::now());
                    self.api.fill(&mut response.header, term);
                    return Ok(Response::new(response));
                }
                Route::Leader(addr) => {
                    let answer = self
                        .client(addr)?
                        .lease_grant(self.api.forward_request(grant, deadline))
                        .await;
                    match answer {
                        Err(status) => forward_failed(status, false)?,
                        answer => return self.api.relay(answer, |r| &mut r.header),
                    }
                }
                Route::Again(status) => status,
            };
            again(refused, forwarded, deadline).await?;
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let revoke = request.into_inner();
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let payload = encode_lease_revoke(&revoke);
            let refused = match self.api.propose(payload, forwarded, deadline).await? {
                Route::Here((kv::Applied::LeaseRevoke(mut response), term)) => {
                    self.clock.forget(revoke.id);
                    self.api.fill(&mut response.header, term);
                    return Ok(Response::new(response));
                }
                Route::Here(_) => return Err(wrong_response("lease revoke")),
                Route::Leader(addr) => {
                    let answer = self
                        .client(addr)?
                        .lease_revoke(self.api.forward_request(revoke, deadline))
                        .await;
                    match answer {
                        // A second revoke answers "not found": only a forward never sent is
                        // tried again.
                        Err(status) => forward_failed(status, false)?,
                        answer => return self.api.relay(answer, |r| &mut r.header),
                    }
                }
                Route::Again(status) => status,
            };
            again(refused, forwarded, deadline).await?;
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    /// Each request on the stream is answered in order, with the lease's granted TTL (its new
    /// time to live) or 0 for a lease that does not exist. A request that cannot be answered
    /// (no leader until the request's time ran out) ends the stream with that status, as etcd
    /// ends it on leader loss; clients open a new one.
    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let forwarded = is_forwarded(&request);
        let mut requests = request.into_inner();
        let (answers, receiver) = mpsc::channel(KEEPALIVE_QUEUE);
        // A reader moves the client's requests into a queue, so that the worker can take every
        // request that arrived while it waited and answer them after one ReadIndex round.
        let (queued, mut queue) = mpsc::channel::<i64>(KEEPALIVE_BATCH_MAX);
        tokio::spawn(async move {
            // Ends when the client closes its side or goes away, or the worker stopped.
            while let Ok(Some(request)) = requests.message().await {
                if queued.send(request.id).await.is_err() {
                    return;
                }
            }
        });
        let service = self.clone();
        tokio::spawn(async move {
            let mut upstream = None;
            let mut ids = Vec::with_capacity(KEEPALIVE_BATCH_MAX);
            while let Some(id) = queue.recv().await {
                ids.clear();
                ids.push(id);
                while ids.len() < KEEPALIVE_BATCH_MAX {
                    match queue.try_recv() {
                        Ok(id) => ids.push(id),
                        Err(_) => break,
                    }
                }
                match service
                    .keep_alive_batch(&ids, forwarded, &mut upstream)
                    .await
                {
                    Ok(batch) => {
                        for answer in batch {
                            if answers.send(Ok(answer)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(status) => {
                        let _ = answers.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let asked = request.into_inner();
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let refused = match self.api.read(true, forwarded, deadline).await? {
                Route::Here(grant) => {
                    let (ttl, keys, revision) = {
                        let store = lock(self.api.store());
                        let keys = if asked.keys {
                            store.lease_keys(asked.id)
                        } else {
                            Vec::new()
                        };
                        (store.lease_ttl(asked.id), keys, store.revision())
                    };
                    // etcd answers a lease that does not exist with TTL -1 (not an error).
                    let response = match ttl {
                        None => pb::LeaseTimeToLiveResponse {
                            header: Some(self.api.header(revision, grant.term)),
                            id: asked.id,
                            ttl: -1,
                            ..pb::LeaseTimeToLiveResponse::default()
                        },
                        Some(granted) => pb::LeaseTimeToLiveResponse {
                            header: Some(self.api.header(revision, grant.term)),
                            id: asked.id,
                            ttl: self.clock.remaining_s(asked.id, granted, Instant::now()),
                            granted_ttl: granted,
                            keys,
                        },
                    };
                    return Ok(Response::new(response));
                }
                Route::Leader(addr) => {
                    let answer = self
                        .client(addr)?
                        .lease_time_to_live(self.api.forward_request(asked, deadline))
                        .await;
                    match answer {
                        Err(status) => forward_failed(status, true)?,
                        answer => return self.api.relay(answer, |r| &mut r.header),
                    }
                }
                Route::Again(status) => status,
            };
            again(refused, forwarded, deadline).await?;
        }
    }

    /// Every lease of this member's applied state (etcd answers from the local lessor too).
    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let status = self.api.node_status().await?;
        let (leases, revision) = {
            let store = lock(self.api.store());
            let leases = store
                .leases()
                .map(|(id, _)| pb::LeaseStatus { id })
                .collect();
            (leases, store.revision())
        };
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(self.api.header(revision, status.term)),
            leases,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_ttl_is_etcds_rule() {
        // etcd's defaults: 10 ticks of 100 ms, minTTL = ceil(1.5 s) = 2 s.
        assert_eq!(min_lease_ttl_s(1000), 2);
        // This node's default election timeout (150-500 ms): ceil(0.75 s) = 1 s.
        assert_eq!(min_lease_ttl_s(500), 1);
        assert_eq!(min_lease_ttl_s(1), 1);
        assert_eq!(min_lease_ttl_s(4000), 6);
    }

    #[test]
    fn a_new_leadership_resets_every_deadline_to_a_full_ttl() {
        let clock = LeaseClock::default();
        let t0 = Instant::now();
        let leases = [(1i64, 10i64), (2, 3)];
        assert!(clock
            .check(Some(Term(2)), leases.into_iter(), t0)
            .is_empty());
        // Lease 2 (3 s) expires 3 s after this leadership began, lease 1 does not.
        let t3 = t0 + Duration::from_secs(3);
        assert_eq!(clock.check(Some(Term(2)), leases.into_iter(), t3), vec![2]);
        // Leadership lost: nothing expires on a follower, whatever the time.
        let t30 = t0 + Duration::from_secs(30);
        assert!(clock.check(None, leases.into_iter(), t30).is_empty());
        // Leading again (a new term): every lease gets its full TTL from now.
        assert!(clock
            .check(Some(Term(5)), leases.into_iter(), t30)
            .is_empty());
        assert_eq!(clock.remaining_s(1, 10, t30), 10);
        let almost = t30 + Duration::from_millis(2999);
        assert!(clock
            .check(Some(Term(5)), leases.into_iter(), almost)
            .is_empty());
    }

    #[test]
    fn a_keep_alive_pushes_the_deadline_and_gone_leases_are_forgotten() {
        let clock = LeaseClock::default();
        let t0 = Instant::now();
        assert!(clock
            .check(Some(Term(1)), [(7, 5)].into_iter(), t0)
            .is_empty());
        let t4 = t0 + Duration::from_secs(4);
        clock.renew(7, 5, t4);
        let t6 = t0 + Duration::from_secs(6);
        assert!(clock
            .check(Some(Term(1)), [(7, 5)].into_iter(), t6)
            .is_empty());
        assert_eq!(clock.remaining_s(7, 5, t6), 3);
        let t9 = t0 + Duration::from_secs(9);
        assert_eq!(
            clock.check(Some(Term(1)), [(7, 5)].into_iter(), t9),
            vec![7]
        );
        // The lease was revoked: its deadline goes with it.
        assert!(clock
            .check(Some(Term(1)), std::iter::empty(), t9)
            .is_empty());
        assert!(clock.state().deadlines.is_empty());
    }

    #[test]
    fn server_chosen_ids_are_positive() {
        for _ in 0..1000 {
            assert!(pick_lease_id() > 0);
        }
    }
}
