//! Prometheus metrics and the health endpoints of one node, on their own HTTP listener.
//!
//! This module owns the node's [`NodeMetrics`] (one registry of counters, gauges and histograms
//! from the Prometheus org's `prometheus-client` crate) and the small HTTP/1 server that exposes
//! them ([`serve`]) beside etcd's health endpoints:
//!
//! | path       | answer                                                                       |
//! |------------|------------------------------------------------------------------------------|
//! | `/metrics` | the OpenMetrics text exposition (Prometheus scrapes it)                      |
//! | `/health`  | etcd's `{"health":"true","reason":""}`; 503 and `"false"` without a leader    |
//! | `/livez`   | `ok` while the process serves HTTP at all                                    |
//! | `/readyz`  | `ok` when a leader is known; 503 otherwise                                   |
//! | `/version` | etcd's `{"etcdserver":"3.4.0","etcdcluster":"3.4.0"}` (the API level served)  |
//!
//! Where a figure means what etcd's means it carries etcd's name, so existing dashboards and
//! alerts work; our own figures are under the `raftlog_` prefix. The table of every metric, with
//! where it is recorded, is in docs/OPERATIONS.md ("Metrics").
//!
//! How recording reaches the layers below the node without threading a handle through each of
//! them: the node installs its metrics as the *current* metrics of its runtime's thread
//! ([`install`]); the storage engine, the io_uring writer and the event loop all run on that one
//! thread and record through [`with_current`]. Invariants:
//! - one node per thread (the node runtime is single-threaded; in-process test clusters run each
//!   node on its own thread), so a thread's current metrics are its node's;
//! - with no metrics listener configured nothing is installed, and recording costs one
//!   thread-local read that finds `None`;
//! - recording never takes a lock per entry: counters and gauges are atomics; histograms (the
//!   crate guards each with an uncontended mutex) are observed once per write group, RPC round
//!   trip or snapshot, never per entry. BENCHMARKS.md ("Metrics on vs off") has the measured cost.

use std::cell::RefCell;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The etcd version our API answers as (the level `etcdctl` 3.4 expects); `/version` reports it.
pub const ETCD_API_VERSION: &str = "3.4.0";

/// Labels of one per-peer series (`To` is etcd's label name for the peer's id).
pub type PeerLabels = Vec<(String, String)>;

/// Every metric a node records. Cloning a metric clones a handle to the same series.
pub struct NodeMetrics {
    registry: Registry,
    /// `<log_directory>/node_<id>`: measured at scrape time for `etcd_mvcc_db_total_size_in_bytes`.
    data_dir: PathBuf,
    pub has_leader: Gauge,
    pub is_leader: Gauge,
    pub leader_changes_seen: Counter,
    pub proposals_committed: Counter,
    pub proposals_applied: Counter,
    pub proposals_pending: Gauge,
    pub proposals_failed: Counter,
    pub wal_fsync_seconds: Histogram,
    pub peer_round_trip_seconds: Family<PeerLabels, Histogram>,
    pub db_total_size_bytes: Gauge,
    pub grpc_server_handled: Family<PeerLabels, Counter>,
    pub group_commit_entries: Histogram,
    pub group_write_seconds: Histogram,
    pub follower_lag_entries: Family<PeerLabels, Gauge>,
    pub snapshot_save_seconds: Histogram,
    pub snapshot_install_seconds: Histogram,
}

/// etcd's disk histogram buckets: 1 ms doubling to ~8 s (`etcd_disk_wal_fsync_duration_seconds`).
fn disk_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

/// etcd's peer round-trip buckets: 0.1 ms doubling to ~0.8 s.
fn rtt_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 14))
}

impl NodeMetrics {
    /// The metrics of the node whose data directory is `data_dir`, every series registered at 0.
    pub fn new(data_dir: &Path) -> NodeMetrics {
        let mut registry = Registry::default();
        let m = NodeMetrics {
            registry: Registry::default(),
            data_dir: data_dir.to_path_buf(),
            has_leader: Gauge::default(),
            is_leader: Gauge::default(),
            leader_changes_seen: Counter::default(),
            proposals_committed: Counter::default(),
            proposals_applied: Counter::default(),
            proposals_pending: Gauge::default(),
            proposals_failed: Counter::default(),
            wal_fsync_seconds: disk_buckets(),
            peer_round_trip_seconds: Family::new_with_constructor(rtt_buckets),
            db_total_size_bytes: Gauge::default(),
            grpc_server_handled: Family::default(),
            group_commit_entries: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            group_write_seconds: disk_buckets(),
            follower_lag_entries: Family::default(),
            snapshot_save_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            snapshot_install_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
        };
        // prometheus-client appends `_total` to counter names (OpenMetrics), so counters are
        // registered without it.
        let r = &mut registry;
        r.register(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            m.has_leader.clone(),
        );
        r.register(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            m.is_leader.clone(),
        );
        r.register(
            "etcd_server_leader_changes_seen",
            "The number of leader changes seen.",
            m.leader_changes_seen.clone(),
        );
        r.register(
            "etcd_server_proposals_committed",
            "The total number of consensus proposals committed (the commit index's advance).",
            m.proposals_committed.clone(),
        );
        r.register(
            "etcd_server_proposals_applied",
            "The total number of consensus proposals applied (the applied index's advance).",
            m.proposals_applied.clone(),
        );
        r.register(
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            m.proposals_pending.clone(),
        );
        r.register(
            "etcd_server_proposals_failed",
            "The total number of failed proposals seen (refused, or lost to another leader).",
            m.proposals_failed.clone(),
        );
        r.register(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL (here: one log write linked to its \
             fdatasync, io_uring submission to completion).",
            m.wal_fsync_seconds.clone(),
        );
        r.register(
            "etcd_network_peer_round_trip_time_seconds",
            "Round-Trip-Time histogram between peers (AppendEntries sent to answer received).",
            m.peer_round_trip_seconds.clone(),
        );
        r.register(
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the data directory (log segments, state file, snapshots) in bytes.",
            m.db_total_size_bytes.clone(),
        );
        r.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            m.grpc_server_handled.clone(),
        );
        r.register(
            "raftlog_group_commit_entries",
            "Log entries made durable by one group commit (one write + fdatasync).",
            m.group_commit_entries.clone(),
        );
        r.register(
            "raftlog_group_write_seconds",
            "One group commit from the engine taking it to all of it durable (hard state included).",
            m.group_write_seconds.clone(),
        );
        r.register(
            "raftlog_follower_lag_entries",
            "On the leader: its last log index minus the follower's match index.",
            m.follower_lag_entries.clone(),
        );
        r.register(
            "raftlog_snapshot_save_seconds",
            "Time to write one snapshot of the state machine, durable.",
            m.snapshot_save_seconds.clone(),
        );
        r.register(
            "raftlog_snapshot_install_seconds",
            "Time to replace the state machine by a leader's snapshot.",
            m.snapshot_install_seconds.clone(),
        );
        NodeMetrics { registry, ..m }
    }

    /// The OpenMetrics text of every series, with the data directory measured now.
    pub fn encode(&self) -> String {
        self.db_total_size_bytes
            .set(i64::try_from(directory_bytes(&self.data_dir)).unwrap_or(i64::MAX));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// Whether the node knows a leader (what `/health` and `/readyz` report).
    pub fn knows_leader(&self) -> bool {
        self.has_leader.get() == 1
    }
}

/// Bytes of the regular files in `dir` and one level below (a node directory holds its files at
/// the top). Unreadable entries count as 0: a scrape must not fail because a segment was just
/// recycled.
fn directory_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() {
            total += meta.len();
        } else if meta.is_dir() {
            total += std::fs::read_dir(entry.path())
                .map(|inner| {
                    inner
                        .flatten()
                        .filter_map(|e| e.metadata().ok())
                        .filter(|m| m.is_file())
                        .map(|m| m.len())
                        .sum::<u64>()
                })
                .unwrap_or(0);
        }
    }
    total
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<NodeMetrics>>> = const { RefCell::new(None) };
}

/// Makes `metrics` the current metrics of this thread (the node's runtime thread; see the module
/// docs). `None` turns recording off.
pub fn install(metrics: Option<Arc<NodeMetrics>>) {
    CURRENT.with(|c| *c.borrow_mut() = metrics);
}

/// This thread's current metrics, if any.
pub fn current() -> Option<Arc<NodeMetrics>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Runs `f` on this thread's current metrics; nothing when metrics are off.
#[inline]
pub fn with_current(f: impl FnOnce(&NodeMetrics)) {
    CURRENT.with(|c| {
        if let Some(m) = c.borrow().as_deref() {
            f(m)
        }
    })
}

/// Records one io_uring write + fdatasync chain (`etcd_disk_wal_fsync_duration_seconds`).
#[inline]
pub fn observe_wal_fsync(elapsed: Duration) {
    with_current(|m| m.wal_fsync_seconds.observe(elapsed.as_secs_f64()));
}

/// The answer to one HTTP request on the metrics listener.
pub fn respond(metrics: &NodeMetrics, path: &str) -> http::Response<Full<Bytes>> {
    let healthy = metrics.knows_leader();
    let (status, content_type, body): (u16, &str, String) = match path {
        "/metrics" => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/health" => {
            let body = if healthy {
                r#"{"health":"true","reason":""}"#
            } else {
                r#"{"health":"false","reason":"RAFT NO LEADER"}"#
            };
            (
                if healthy { 200 } else { 503 },
                "application/json",
                body.into(),
            )
        }
        "/livez" => (200, "text/plain; charset=utf-8", "ok\n".into()),
        "/readyz" => {
            if healthy {
                (200, "text/plain; charset=utf-8", "ok\n".into())
            } else {
                (
                    503,
                    "text/plain; charset=utf-8",
                    "[-]leader failed: no leader\n".into(),
                )
            }
        }
        "/version" => (
            200,
            "application/json",
            format!(r#"{{"etcdserver":"{ETCD_API_VERSION}","etcdcluster":"{ETCD_API_VERSION}"}}"#),
        ),
        _ => (404, "text/plain; charset=utf-8", "not found\n".into()),
    };
    let mut response = http::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

/// Serves [`respond`] on `listener` (non-blocking, bound by the caller) until the runtime stops.
/// Must run on a tokio (or tokio-uring) runtime with a `LocalSet` (connections are local tasks).
///
/// # Errors
/// The listener cannot be registered with the runtime.
pub async fn serve(
    listener: std::net::TcpListener,
    metrics: Arc<NodeMetrics>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: a scrape fails, the node goes on.
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        tokio::task::spawn_local(async move {
            let service = hyper::service::service_fn(move |request: http::Request<_>| {
                let response = respond(&metrics, request.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_etcd_names_and_health_follows_the_leader_gauge() {
        let dir = std::env::temp_dir();
        let m = NodeMetrics::new(&dir);
        m.proposals_committed.inc_by(3);
        m.wal_fsync_seconds.observe(0.002);
        let text = m.encode();
        for name in [
            "etcd_server_has_leader 0",
            "etcd_server_proposals_committed_total 3",
            "etcd_disk_wal_fsync_duration_seconds_count 1",
            "etcd_server_leader_changes_seen_total 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert_eq!(respond(&m, "/health").status(), 503);
        assert_eq!(respond(&m, "/readyz").status(), 503);
        m.has_leader.set(1);
        assert_eq!(respond(&m, "/health").status(), 200);
        assert_eq!(respond(&m, "/livez").status(), 200);
        assert_eq!(respond(&m, "/nope").status(), 404);
    }

    #[test]
    fn recording_goes_to_the_installed_metrics_only() {
        observe_wal_fsync(Duration::from_millis(1));
        let m = Arc::new(NodeMetrics::new(&std::env::temp_dir()));
        install(Some(Arc::clone(&m)));
        observe_wal_fsync(Duration::from_millis(1));
        install(None);
        observe_wal_fsync(Duration::from_millis(1));
        let text = m.encode();
        assert!(
            text.contains("etcd_disk_wal_fsync_duration_seconds_count 1"),
            "{text}"
        );
    }
}
