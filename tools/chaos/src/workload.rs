//! The clients: each sends one request at a time (put, linearizable get, compare-and-set through
//! `Txn`, delete) of a random key, through the etcd v3 API, and records every request in the
//! history.
//!
//! A client knows every member, as etcd's clientv3 does, and keeps sending to one until a request
//! to it fails; then it moves to the next member. The member set is the runner's
//! [`Endpoints`]: when a membership fault adds or removes one, the clients see it at their
//! next move, as clientv3 learns a new member list. It never retries a request: a failed write is
//! recorded as indeterminate (it may have been applied), a failed read is counted and dropped.
//!
//! Invariants: values are unique in a run (`client << 40 | sequence`, never 0); every request's
//! `invoked` is read before it is sent and `completed` after its answer arrived, on the one clock
//! of [`Clock`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rust_raft_log::etcdpb::etcdserverpb::{
    self as pb, compare, kv_client::KvClient, request_op, Compare, RequestOp,
};
use tonic::transport::{Channel, Endpoint};

use crate::cluster::Endpoints;
use crate::history::{Call, Operation, Ret};

/// The run's clock: nanoseconds since the run began.
#[derive(Clone, Copy)]
pub struct Clock(pub Instant);

impl Clock {
    pub fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// What the clients do.
#[derive(Clone, Debug)]
pub struct WorkloadPlan {
    pub clients: u32,
    pub keys: u32,
    /// Per-request deadline on the client side.
    pub request_timeout: Duration,
    pub seed: u64,
}

/// One failed request, for the per-fault report.
#[derive(Clone, Debug)]
pub struct Failure {
    pub at: u64,
    pub node: u32,
    /// gRPC code and message (shortened), or "timeout".
    pub reason: String,
    pub write: bool,
}

/// What one client recorded.
#[derive(Default)]
pub struct ClientLog {
    pub operations: Vec<Operation>,
    pub failures: Vec<Failure>,
    pub ok: u64,
}

/// The prefix of every key the workload touches (the watchers watch it).
pub const KEY_PREFIX: &str = "chaos/k";

/// The key's bytes in the store.
pub fn key_bytes(key: u32) -> Vec<u8> {
    format!("{KEY_PREFIX}{key:02}").into_bytes()
}

/// The key's index, from its bytes (the inverse of [`key_bytes`]); `None` for any other key.
pub fn key_index(bytes: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(bytes).ok()?;
    let digits = text.strip_prefix(KEY_PREFIX)?;
    let index: u32 = digits.parse().ok()?;
    (key_bytes(index) == bytes).then_some(index)
}

/// A small seeded generator (splitmix64): the workload's choices.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

fn channel(addr: SocketAddr, timeout: Duration) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("an address is a valid URI")
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout)
        .tcp_nodelay(true)
        .connect_lazy()
}

fn parse_value(bytes: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            format!(
                "a value that no client wrote: {:?}",
                String::from_utf8_lossy(bytes)
            )
        })
}

fn revision(header: Option<&pb::ResponseHeader>) -> Option<i64> {
    header.map(|h| h.revision).filter(|&r| r > 0)
}

/// Sends one call; the answer and its header revision (see [`Operation::revision`]), or why it
/// failed.
async fn send(
    client: &mut KvClient<Channel>,
    key: u32,
    call: Call,
) -> Result<Result<(Ret, Option<i64>), String>, tonic::Status> {
    let k = key_bytes(key);
    Ok(match call {
        Call::Put(v) => {
            let r = client
                .put(pb::PutRequest {
                    key: k,
                    value: v.to_string().into_bytes(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((Ret::Put, revision(r.header.as_ref())))
        }
        Call::Get => {
            let r = client
                .range(pb::RangeRequest {
                    key: k,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let at = revision(r.header.as_ref());
            match r.kvs.first() {
                None => Ok((Ret::Get(None), at)),
                Some(kv) => parse_value(&kv.value).map(|v| (Ret::Get(Some(v)), at)),
            }
        }
        Call::Cas { expect, new } => {
            let compare = match expect {
                Some(v) => Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Value as i32,
                    key: k.clone(),
                    range_end: Vec::new(),
                    target_union: Some(compare::TargetUnion::Value(v.to_string().into_bytes())),
                },
                None => Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Create as i32,
                    key: k.clone(),
                    range_end: Vec::new(),
                    target_union: Some(compare::TargetUnion::CreateRevision(0)),
                },
            };
            let r = client
                .txn(pb::TxnRequest {
                    compare: vec![compare],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(pb::PutRequest {
                            key: k,
                            value: new.to_string().into_bytes(),
                            ..Default::default()
                        })),
                    }],
                    failure: Vec::new(),
                })
                .await?
                .into_inner();
            Ok((Ret::Cas(r.succeeded), revision(r.header.as_ref())))
        }
        Call::Delete => {
            let r = client
                .delete_range(pb::DeleteRangeRequest {
                    key: k,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((Ret::Delete(r.deleted > 0), revision(r.header.as_ref())))
        }
    })
}

/// A failed request's reason, short enough to count by.
pub fn reason(status: &tonic::Status) -> String {
    let message = status.message();
    let short = if message.starts_with("etcdserver:") || message.starts_with("rust-raft-log:") {
        message.to_string()
    } else if message.contains("connect") || message.contains("transport") {
        "transport error (connection)".to_string()
    } else if message.contains("Timeout expired") || message.contains("deadline") {
        "client timeout".to_string()
    } else {
        message.chars().take(60).collect()
    };
    format!("{:?}: {short}", status.code())
}

/// Whether a failure is the server's answer (a status that came over the wire) rather than
/// this client's transport failing (tonic then keeps the cause as the status's source).
pub fn answered_by_server(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_none()
}

/// Runs one client until `stop`; `endpoints`' index `i` is slot `i + 1`.
pub async fn run_client(
    id: u32,
    endpoints: Endpoints,
    plan: WorkloadPlan,
    clock: Clock,
    stop: Arc<AtomicBool>,
    anomalies: Arc<std::sync::Mutex<Vec<String>>>,
) -> ClientLog {
    let mut rng = Rng::new(plan.seed ^ (u64::from(id) + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut clients: Vec<KvClient<Channel>> = (0..endpoints.len())
        .map(|i| KvClient::new(channel(endpoints.addr(i), plan.request_timeout)))
        .collect();
    let mut current = endpoints.member_from(id as usize % endpoints.len());
    let mut sequence: u64 = 0;
    // The last value this client saw per key: the expected value of its next compare-and-set.
    let mut last_seen: BTreeMap<u32, Option<u64>> = BTreeMap::new();
    let mut log = ClientLog::default();
    while !stop.load(Ordering::Relaxed) {
        let key = rng.below(u64::from(plan.keys)) as u32;
        sequence += 1;
        let value = (u64::from(id) + 1) << 40 | sequence;
        let call = match rng.below(100) {
            0..=29 => Call::Put(value),
            30..=69 => Call::Get,
            70..=89 => Call::Cas {
                expect: last_seen.get(&key).copied().flatten(),
                new: value,
            },
            _ => Call::Delete,
        };
        let node = current as u32 + 1;
        let invoked = clock.now();
        let answer = tokio::time::timeout(
            plan.request_timeout + Duration::from_millis(100),
            send(&mut clients[current], key, call),
        )
        .await;
        let completed = clock.now();
        let failure = match answer {
            Ok(Ok(Ok((ret, revision)))) => {
                log.ok += 1;
                match ret {
                    Ret::Get(v) => {
                        last_seen.insert(key, v);
                    }
                    Ret::Put | Ret::Cas(true) => {
                        if let Call::Put(v) | Call::Cas { new: v, .. } = call {
                            last_seen.insert(key, Some(v));
                        }
                    }
                    Ret::Delete(_) => {
                        last_seen.insert(key, None);
                    }
                    Ret::Cas(false) => {}
                }
                log.operations.push(Operation {
                    client: id,
                    key,
                    call,
                    invoked,
                    completed: Some(completed),
                    ret: Some(ret),
                    node,
                    revision,
                });
                None
            }
            Ok(Ok(Err(anomaly))) => {
                // An answer no correct server gives: reported as an anomaly by itself.
                if let Ok(mut a) = anomalies.lock() {
                    a.push(format!("client {id}, node {node}, key {key}: {anomaly}"));
                }
                None
            }
            Ok(Err(status)) => Some((reason(&status), answered_by_server(&status))),
            Err(_) => Some(("client timeout".to_string(), false)),
        };
        if let Some((reason, answered)) = failure {
            let write = call != Call::Get;
            if write {
                log.operations.push(Operation {
                    client: id,
                    key,
                    call,
                    invoked,
                    completed: None,
                    ret: None,
                    node,
                    revision: None,
                });
            }
            log.failures.push(Failure {
                at: invoked,
                node,
                reason,
                write,
            });
            // Like etcd's client balancer: a member that answered stays in use; one that could
            // not be reached (or did not answer in time) is left for the next.
            // A member that was removed is left too, whatever it answered.
            if !answered || !endpoints.is_member(current) {
                current = endpoints.next_member(current);
                // A fresh connection next time: a broken one may linger in the channel.
                clients[current] =
                    KvClient::new(channel(endpoints.addr(current), plan.request_timeout));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    log
}

/// Final linearizable reads of every key, from whichever member answers (recorded as
/// operations, so that a lost write shows as a read that misses it).
pub async fn final_reads(
    endpoints: &Endpoints,
    keys: u32,
    clock: Clock,
    client_id: u32,
) -> Vec<Operation> {
    let mut operations = Vec::new();
    for key in 0..keys {
        for i in endpoints.member_indexes() {
            let mut client = KvClient::new(channel(endpoints.addr(i), Duration::from_secs(5)));
            let invoked = clock.now();
            if let Ok(Ok((ret, revision))) = send(&mut client, key, Call::Get).await {
                operations.push(Operation {
                    client: client_id,
                    key,
                    call: Call::Get,
                    invoked,
                    completed: Some(clock.now()),
                    ret: Some(ret),
                    node: i as u32 + 1,
                    revision,
                });
                break;
            }
        }
    }
    operations
}
