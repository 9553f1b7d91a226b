//! The load itself: connections, leader discovery, and the client tasks of one phase.
//!
//! Every client is a tokio task with at most one request outstanding. Closed loop: it sends the
//! next request when the previous one answered. Open loop (`--rate R` over C clients): client i's
//! k-th request is due at `start + (k·C + i)/R`; the client sleeps until then if it is early and
//! sends at once if it is late, and the latency is measured from the due time. A server stall
//! therefore shows in the latency of every request that was due during it, not only the one that
//! waited (no coordinated omission). The offered rate is bounded by C requests in flight, which
//! the summary makes visible as a throughput below the rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rust_raft_log::etcdpb::etcdserverpb::{
    kv_client::KvClient, maintenance_client::MaintenanceClient, PutRequest, RangeRequest,
    StatusRequest,
};
use tonic::transport::{Channel, Endpoint};

use crate::args::{Consistency, KeyOrder, Op, Plan, Stop};
use crate::keys::{encode_key, SplitMix64};
use crate::report::Outcome;
use crate::KvbenchError;

/// Opens one HTTP/2 connection (tonic `Channel`) to `endpoint`.
pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Channel, KvbenchError> {
    let err = |reason: String| KvbenchError::Connect {
        endpoint: endpoint.to_string(),
        reason,
    };
    let ep = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    ep.connect().await.map_err(|e| err(format!("{e:?}")))
}

/// What Maintenance.Status said about one endpoint.
#[derive(Debug, Clone)]
pub struct EndpointStatus {
    pub endpoint: String,
    pub member_id: u64,
    pub leader: u64,
    pub raft_term: u64,
}

/// The leader's endpoint, found by asking every endpoint for Maintenance.Status until one of them
/// names a leader whose member id is one of the endpoints' own. Retries for `wait` (an election
/// may be in progress).
pub async fn find_leader(
    endpoints: &[String],
    wait: Duration,
    timeout: Duration,
) -> Result<EndpointStatus, KvbenchError> {
    let deadline = Instant::now() + wait;
    loop {
        let mut statuses = Vec::new();
        let mut problems = Vec::new();
        for endpoint in endpoints {
            match status(endpoint, timeout).await {
                Ok(s) => statuses.push(s),
                Err(e) => problems.push(e.to_string()),
            }
        }
        for s in &statuses {
            if s.leader != 0 {
                if let Some(leader) = statuses.iter().find(|t| t.member_id == s.leader) {
                    return Ok(leader.clone());
                }
            }
        }
        if Instant::now() >= deadline {
            let seen = statuses
                .iter()
                .map(|s| {
                    format!(
                        "{} is member {:x}, names leader {:x} (term {})",
                        s.endpoint, s.member_id, s.leader, s.raft_term
                    )
                })
                .chain(problems)
                .collect::<Vec<_>>()
                .join("; ");
            return Err(KvbenchError::NoLeader { waited: wait, seen });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status(endpoint: &str, timeout: Duration) -> Result<EndpointStatus, KvbenchError> {
    let channel = connect(endpoint, timeout).await?;
    let mut client = MaintenanceClient::new(channel);
    let answer = tokio::time::timeout(timeout, client.status(StatusRequest {}))
        .await
        .map_err(|_| KvbenchError::Status {
            endpoint: endpoint.to_string(),
            reason: format!("no answer in {timeout:?}"),
        })?
        .map_err(|s| KvbenchError::Status {
            endpoint: endpoint.to_string(),
            reason: format!("{:?}: {}", s.code(), s.message()),
        })?
        .into_inner();
    let member_id =
        answer
            .header
            .as_ref()
            .map(|h| h.member_id)
            .ok_or_else(|| KvbenchError::Status {
                endpoint: endpoint.to_string(),
                reason: "the response has no header (so no member id)".to_string(),
            })?;
    Ok(EndpointStatus {
        endpoint: endpoint.to_string(),
        member_id,
        leader: answer.leader,
        raft_term: answer.raft_term,
    })
}

/// The state shared by the clients of one phase.
struct Phase {
    plan: Arc<Plan>,
    stop: Stop,
    start: Instant,
    /// Requests claimed so far by all clients: the stop condition for `--total`, and the key
    /// number for `--keys seq`.
    issued: AtomicU64,
    value: Vec<u8>,
    record: bool,
}

/// Runs one phase: `plan.clients` clients over `channels` (client i uses channel i mod len)
/// until `stop`; `record: false` is a warm-up whose latencies are dropped.
pub async fn run_phase(plan: Arc<Plan>, channels: &[Channel], stop: Stop, record: bool) -> Outcome {
    assert!(!channels.is_empty(), "run_phase needs at least one channel");
    let cpu_before = process_cpu();
    let phase = Arc::new(Phase {
        value: vec![b'v'; plan.val_size],
        plan: plan.clone(),
        stop,
        start: Instant::now(),
        issued: AtomicU64::new(0),
        record,
    });
    let tasks: Vec<_> = (0..plan.clients)
        .map(|id| {
            let channel = channels[id % channels.len()].clone();
            tokio::spawn(client(id, channel, phase.clone()))
        })
        .collect();
    let mut outcome = Outcome::default();
    let mut last_done = phase.start;
    for task in tasks {
        match task.await {
            Ok((client_outcome, done)) => {
                outcome.merge(&client_outcome);
                last_done = last_done.max(done);
            }
            // A client task can only fail by panicking, which is a bug: make it loud.
            Err(e) => panic!("a kvbench client task failed: {e}"),
        }
    }
    outcome.elapsed = last_done - phase.start;
    outcome.cpu = process_cpu().saturating_sub(cpu_before);
    outcome
}

/// One client: returns its results and the time of its last completion.
async fn client(id: usize, channel: Channel, phase: Arc<Phase>) -> (Outcome, Instant) {
    let plan = &phase.plan;
    let mut kv = KvClient::new(channel);
    // Distinct, reproducible streams per client.
    let mut rng = SplitMix64::new(plan.seed ^ (id as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut outcome = Outcome::default();
    let mut key = Vec::with_capacity(plan.key_size);
    let mut sent_by_me = 0u64;
    let mut last_done = phase.start;
    let end = match phase.stop {
        Stop::Duration(d) => Some(phase.start + d),
        Stop::Total(_) => None,
    };
    loop {
        let n = phase.issued.fetch_add(1, Ordering::Relaxed);
        if let Stop::Total(total) = phase.stop {
            if n >= total {
                break;
            }
        }
        let due = match plan.rate {
            Some(rate) => {
                let slot = sent_by_me * plan.clients as u64 + id as u64;
                sent_by_me += 1;
                phase.start + Duration::from_secs_f64(slot as f64 / rate)
            }
            None => Instant::now(),
        };
        if end.is_some_and(|end| due >= end) {
            break;
        }
        // Sleep only when early: tokio rounds a deadline up to its next 1 ms tick, so sleeping
        // until "now" in the closed loop would add up to a millisecond to every request (and to
        // its measured latency, which starts at `due`).
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let key_number = match plan.keys {
            KeyOrder::Seq => n % plan.key_space,
            KeyOrder::Random => rng.below(plan.key_space),
        };
        encode_key(key_number, plan.key_size, &mut key);
        let answer = match plan.op {
            Op::Put => {
                let request = PutRequest {
                    key: key.clone(),
                    value: phase.value.clone(),
                    ..Default::default()
                };
                tokio::time::timeout(plan.timeout, kv.put(request))
                    .await
                    .map(|r| r.map(|_| false))
            }
            Op::Range => {
                let request = RangeRequest {
                    key: key.clone(),
                    serializable: plan.consistency == Consistency::S,
                    ..Default::default()
                };
                tokio::time::timeout(plan.timeout, kv.range(request))
                    .await
                    .map(|r| r.map(|answer| answer.into_inner().kvs.is_empty()))
            }
        };
        let done = Instant::now();
        last_done = done;
        if !phase.record {
            continue;
        }
        let us = u64::try_from(done.duration_since(due).as_micros()).unwrap_or(u64::MAX);
        let ok = matches!(answer, Ok(Ok(_)));
        match answer {
            Ok(Ok(empty)) => {
                outcome.hist.saturating_record(us.max(1));
                if empty {
                    outcome.ranges_empty += 1;
                }
            }
            Ok(Err(status)) => outcome.add_error(&format!("{:?}", status.code()), status.message()),
            Err(_) => outcome.add_error("timeout", &format!("no answer in {:?}", plan.timeout)),
        }
        if plan.timeline {
            let second = due.duration_since(phase.start).as_secs() as usize;
            let entry = outcome.second_mut(second);
            if ok {
                entry.ok += 1;
                entry.latency_sum_us += us;
                entry.latency_max_us = entry.latency_max_us.max(us);
            } else {
                entry.errors += 1;
            }
        }
    }
    (outcome, last_done)
}

/// User + system CPU time of this process so far (every thread).
fn process_cpu() -> Duration {
    // SAFETY: getrusage writes only into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
