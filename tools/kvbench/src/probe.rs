//! Probe mode (`--wait-revision`): how long until one endpoint serves a given revision.
//!
//! Used to time a node's restart from outside (`benches/snapshot_cost.sh`): the script spawns the
//! node and this probe together, and the probe records the wall-clock time of each milestone:
//! 1. the first accepted connection;
//! 2. the first *serializable* Range whose header revision is at least the target (the node has
//!    applied everything up to it and answers from its own store);
//! 3. after that, the first *linearizable* Range that succeeds with such a revision (the node
//!    also confirms its read with the leader).
//!
//! A linearizable read that succeeds on a node implies that the node's store had reached the
//! revision read, so probing the two kinds one after the other loses nothing but the probe
//! interval. Times are Unix microseconds (`SystemTime`), comparable with the spawn time a shell
//! takes from `$EPOCHREALTIME` and with the node's log timestamps.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rust_raft_log::etcdpb::etcdserverpb::{kv_client::KvClient, RangeRequest};
use tonic::transport::Channel;

use crate::args::Plan;
use crate::keys::encode_key;
use crate::load::connect;

/// What the probe saw; a `None` milestone was not reached before the deadline.
#[derive(Debug, Default, Clone)]
pub struct ProbeOutcome {
    pub endpoint: String,
    pub min_revision: i64,
    pub started_unix_us: u64,
    pub connected_unix_us: Option<u64>,
    pub serializable_unix_us: Option<u64>,
    pub serializable_revision: Option<i64>,
    pub linearizable_unix_us: Option<u64>,
    pub linearizable_revision: Option<i64>,
    /// Attempts of every kind (connections and ranges).
    pub attempts: u64,
    /// Ranges that failed or answered below the target, by kind.
    pub ranges_refused: u64,
    pub ranges_behind: u64,
    /// The last failure seen, for the printed summary.
    pub last_problem: Option<String>,
}

impl ProbeOutcome {
    pub fn complete(&self) -> bool {
        self.linearizable_unix_us.is_some()
    }

    /// The `kvbench-wait` line for scripts (absent milestones print as `-`).
    pub fn result_line(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let rev = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
        format!(
            "kvbench-wait endpoint={} min_revision={} started_unix_us={} connected_unix_us={} \
             serializable_unix_us={} serializable_revision={} linearizable_unix_us={} \
             linearizable_revision={} attempts={} ranges_refused={} ranges_behind={}",
            self.endpoint,
            self.min_revision,
            self.started_unix_us,
            opt(self.connected_unix_us),
            opt(self.serializable_unix_us),
            rev(self.serializable_revision),
            opt(self.linearizable_unix_us),
            rev(self.linearizable_revision),
            self.attempts,
            self.ranges_refused,
            self.ranges_behind
        )
    }
}

fn now_unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Probes `plan.endpoints[0]` until it serves `min_revision` (see the module docs) or
/// `deadline` passes.
pub async fn wait_serving(plan: &Plan, min_revision: i64, deadline: Duration) -> ProbeOutcome {
    let endpoint = plan.endpoints[0].clone();
    let mut out = ProbeOutcome {
        endpoint: endpoint.clone(),
        min_revision,
        started_unix_us: now_unix_us(),
        ..Default::default()
    };
    let end = Instant::now() + deadline;
    let mut key = Vec::with_capacity(plan.key_size);
    encode_key(0, plan.key_size, &mut key);
    let mut kv: Option<KvClient<Channel>> = None;
    while Instant::now() < end {
        out.attempts += 1;
        let remaining = end.saturating_duration_since(Instant::now());
        // A request may wait (a linearizable read on a node that has no leader yet) but never
        // past the deadline.
        let timeout = plan.timeout.min(remaining).max(Duration::from_millis(1));
        let client = match kv.as_mut() {
            Some(client) => client,
            None => match connect(&endpoint, timeout).await {
                Ok(channel) => {
                    out.connected_unix_us.get_or_insert_with(now_unix_us);
                    kv.insert(KvClient::new(channel))
                }
                Err(e) => {
                    out.last_problem = Some(e.to_string());
                    tokio::time::sleep(plan.probe_interval).await;
                    continue;
                }
            },
        };
        let serializable = out.serializable_unix_us.is_none();
        let request = RangeRequest {
            key: key.clone(),
            serializable,
            ..Default::default()
        };
        let answer = tokio::time::timeout(timeout, client.range(request)).await;
        let at = now_unix_us();
        match answer {
            Ok(Ok(answer)) => {
                let revision = answer.into_inner().header.map_or(0, |h| h.revision);
                if revision >= min_revision {
                    if serializable {
                        out.serializable_unix_us = Some(at);
                        out.serializable_revision = Some(revision);
                        // Straight on to the linearizable probe.
                        continue;
                    }
                    out.linearizable_unix_us = Some(at);
                    out.linearizable_revision = Some(revision);
                    return out;
                }
                out.ranges_behind += 1;
                out.last_problem = Some(format!(
                    "{} range answered revision {revision} < {min_revision}",
                    if serializable {
                        "a serializable"
                    } else {
                        "a linearizable"
                    }
                ));
            }
            Ok(Err(status)) => {
                out.ranges_refused += 1;
                out.last_problem = Some(format!("{:?}: {}", status.code(), status.message()));
            }
            Err(_) => {
                out.ranges_refused += 1;
                out.last_problem = Some(format!("no answer in {timeout:?}"));
            }
        }
        tokio::time::sleep(plan.probe_interval).await;
    }
    out
}

/// The printed summary: one human line per milestone, then the `kvbench-wait` line.
pub fn format_summary(out: &ProbeOutcome) -> String {
    let since = |t: Option<u64>| match t {
        Some(t) => format!(
            "{:.3} s after the probe started",
            t.saturating_sub(out.started_unix_us) as f64 / 1e6
        ),
        None => "not reached".to_string(),
    };
    let mut s = format!(
        "kvbench: probing {} until it serves revision >= {} (single-key ranges)\n",
        out.endpoint, out.min_revision
    );
    s += &format!("connected: {}\n", since(out.connected_unix_us));
    s += &format!(
        "serializable range at the revision: {} (revision {})\n",
        since(out.serializable_unix_us),
        out.serializable_revision
            .map_or("-".to_string(), |r| r.to_string())
    );
    s += &format!(
        "linearizable range at the revision: {} (revision {})\n",
        since(out.linearizable_unix_us),
        out.linearizable_revision
            .map_or("-".to_string(), |r| r.to_string())
    );
    if let Some(problem) = &out.last_problem {
        s += &format!("last refusal: {problem}\n");
    }
    s += &out.result_line();
    s.push('\n');
    s
}
