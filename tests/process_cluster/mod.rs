//! A cluster of real `rust-raft-log` processes on loopback, for the real-process tests and the
//! `propose` bench: ephemeral ports, one temp directory, the Operator service as the only window
//! into the nodes.
//!
//! Every process it starts is killed when the `Cluster` is dropped, even when an assertion
//! failed; [`Cluster::describe`] prints the ports, the directory and the end of every node's
//! output for failure messages.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rust_raft_log::driver::{NodeStatus, ProposeOutcome};
use rust_raft_log::grpc::{convert, proto as pb};
use rust_raft_log::raft::Role;
use rust_raft_log::types::{NodeId, Term};
use tonic::transport::{Channel, Endpoint};

pub type OperatorClient = pb::operator_client::OperatorClient<Channel>;

/// Extra `cluster_settings` lines; the log directory is always `raft_logs` inside the cluster's
/// directory.
#[derive(Clone, Debug)]
pub struct Settings {
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    pub heartbeat_ms: u64,
    pub segment_bytes: u64,
    /// `RUST_LOG` of the nodes.
    pub rust_log: String,
    /// More `cluster_settings` lines, each `"  field: value\n"`.
    pub extra: String,
    /// Give every node a `metrics_address` (`/metrics` and the health endpoints).
    pub metrics: bool,
}

impl Settings {
    /// etcd's timing (heartbeat 100 ms, elections 1-2 s), for tests that assert "no term moves":
    /// on a busy 2-core machine the default 150-500 ms elections can fire by themselves.
    pub fn etcd_timing() -> Settings {
        Settings {
            election_min_ms: 1000,
            election_max_ms: 2000,
            heartbeat_ms: 100,
            ..Settings::default()
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            election_min_ms: 150,
            election_max_ms: 500,
            heartbeat_ms: 50,
            segment_bytes: 1 << 20,
            rust_log: "info".into(),
            extra: String::new(),
            metrics: false,
        }
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    pub addrs: BTreeMap<u32, SocketAddr>,
    /// Each node's metrics listener (empty unless `Settings::metrics`).
    pub metrics_addrs: BTreeMap<u32, SocketAddr>,
    settings: Settings,
    children: HashMap<u32, Child>,
    clients: HashMap<u32, OperatorClient>,
    /// Every leader seen through Status, by term: two different leaders in one term panic.
    leaders_by_term: HashMap<Term, NodeId>,
    /// Set before the first [`Cluster::client`] call for a cluster with `tls:`: the harness's
    /// clients connect over TLS with it (tests/tls_cluster.rs).
    pub client_tls: Option<tonic::transport::ClientTlsConfig>,
}

/// `n` different ports that were free a moment ago. Every listener stays open until all `n` are
/// chosen, so the kernel cannot hand the same port out twice within one call (it did: two nodes of
/// one cluster were once given one port). Reuse by another process later is still possible but
/// unlikely: ephemeral ports are handed out in turn.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("ephemeral port").port())
        .collect()
}

impl Cluster {
    /// Writes `cluster.yaml` for `size` nodes into `dir` and starts every node.
    pub fn start(dir: &Path, size: u32, settings: Settings) -> Cluster {
        let mut cluster = Cluster::configure(dir, size, settings);
        for id in 1..=size {
            cluster.spawn(id);
        }
        cluster
    }

    /// Writes `cluster.yaml` for `size` nodes (on ports free now) into `dir` and starts none: the
    /// caller prepares their directories first, then [`Cluster::spawn`]s them.
    pub fn configure(dir: &Path, size: u32, settings: Settings) -> Cluster {
        let mut addrs = BTreeMap::new();
        let mut metrics_addrs = BTreeMap::new();
        let mut yaml = String::from("nodes:\n");
        // One call for every port, so that none is handed out twice.
        let ports = free_ports(size as usize * 2);
        for (id, pair) in (1..=size).zip(ports.chunks(2)) {
            let port = pair[0];
            addrs.insert(id, SocketAddr::from(([127, 0, 0, 1], port)));
            yaml +=
                &format!("  - node_id: {id}\n    ip_address: \"127.0.0.1\"\n    port: {port}\n");
            if settings.metrics {
                let metrics = SocketAddr::from(([127, 0, 0, 1], pair[1]));
                metrics_addrs.insert(id, metrics);
                yaml += &format!("    metrics_address: \"{metrics}\"\n");
            }
        }
        yaml += &format!(
            "cluster_settings:\n  log_directory: \"raft_logs\"\n  log_segment_size: {}\n  \
             election_timeout_range:\n    min: {}\n    max: {}\n  heartbeat_interval: {}\n",
            settings.segment_bytes,
            settings.election_min_ms,
            settings.election_max_ms,
            settings.heartbeat_ms
        );
        yaml += &settings.extra;
        std::fs::write(dir.join("cluster.yaml"), yaml).expect("write config");
        Cluster {
            dir: dir.to_path_buf(),
            addrs,
            metrics_addrs,
            settings,
            children: HashMap::new(),
            clients: HashMap::new(),
            leaders_by_term: HashMap::new(),
            client_tls: None,
        }
    }

    pub fn ids(&self) -> Vec<u32> {
        self.addrs.keys().copied().collect()
    }

    pub fn running(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.children.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    pub fn is_running(&self, id: u32) -> bool {
        self.children.contains_key(&id)
    }

    /// `<dir>/raft_logs/node_<id>`.
    pub fn node_dir(&self, id: u32) -> PathBuf {
        self.dir.join("raft_logs").join(format!("node_{id}"))
    }

    pub fn spawn(&mut self, id: u32) {
        self.spawn_with(id, &[]);
    }

    /// Starts node `id`, not in the config file, with `--join http://<addr>` (a member added at
    /// run time); it is known to the harness at `addr` from now on.
    pub fn spawn_joining(&mut self, id: u32, addr: SocketAddr) {
        self.addrs.insert(id, addr);
        let url = format!("http://{addr}");
        self.spawn_with(id, &["--join", &url]);
    }

    /// Forgets a node the harness no longer runs (a member removed from the cluster).
    pub fn forget(&mut self, id: u32) {
        self.kill(id);
        self.addrs.remove(&id);
        self.clients.remove(&id);
    }

    fn spawn_with(&mut self, id: u32, extra: &[&str]) {
        assert!(!self.children.contains_key(&id), "node {id} already runs");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node_{id}.out")))
            .expect("output file");
        let err = out.try_clone().expect("clone output file");
        // RAFT_NODE_BIN runs another build of the node (A/B comparisons in the propose bench).
        let bin = std::env::var_os("RAFT_NODE_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_rust-raft-log").into());
        let child = Command::new(bin)
            .args(["--node-id", &id.to_string(), "--config", "cluster.yaml"])
            .args(extra)
            .current_dir(&self.dir)
            .env("RUST_LOG", &self.settings.rust_log)
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn rust-raft-log");
        self.children.insert(id, child);
    }

    /// The nodes that were started and have exited since, with their status (a node the harness
    /// killed or terminated is not listed: it was removed then).
    pub fn exited(&mut self) -> Vec<(u32, ExitStatus)> {
        let mut gone: Vec<(u32, ExitStatus)> = self
            .children
            .iter_mut()
            .filter_map(|(id, child)| child.try_wait().ok().flatten().map(|s| (*id, s)))
            .collect();
        gone.sort_unstable_by_key(|(id, _)| *id);
        gone
    }

    /// SIGKILL: the process gets no chance to clean up (the page cache keeps its writes).
    pub fn kill(&mut self, id: u32) {
        if let Some(mut child) = self.children.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `bound` for the exit (SIGKILL after it, and the status says so
    /// by being `None`).
    pub fn terminate(&mut self, id: u32, bound: Duration) -> Option<ExitStatus> {
        let mut child = self.children.remove(&id)?;
        // SAFETY: kill(2) on the pid of a child this harness spawned and has not reaped yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let started = Instant::now();
        while started.elapsed() < bound {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn output(&self, id: u32) -> String {
        std::fs::read_to_string(self.dir.join(format!("node_{id}.out"))).unwrap_or_default()
    }

    /// Ports, directory and the last lines of every node's output.
    pub fn describe(&self) -> String {
        let mut text = format!("cluster in {} at {:?}\n", self.dir.display(), self.addrs);
        for id in self.ids() {
            let out = self.output(id);
            let lines: Vec<&str> = out.lines().collect();
            let tail = &lines[lines.len().saturating_sub(25)..];
            text += &format!("--- node {id} (last {} lines) ---\n", tail.len());
            for line in tail {
                text += line;
                text.push('\n');
            }
        }
        text
    }

    /// A lazily connected client of node `id` (tonic reconnects under it).
    pub fn client(&mut self, id: u32) -> OperatorClient {
        let addr = self.addrs[&id];
        let tls = self.client_tls.clone();
        self.clients
            .entry(id)
            .or_insert_with(|| {
                let endpoint = match tls {
                    None => Endpoint::from_shared(format!("http://{addr}")).expect("endpoint"),
                    Some(tls) => Endpoint::from_shared(format!("https://{addr}"))
                        .expect("endpoint")
                        .tls_config(tls)
                        .expect("client TLS config"),
                };
                let channel = endpoint
                    .connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .connect_lazy();
                OperatorClient::new(channel)
            })
            .clone()
    }

    pub async fn status(&mut self, id: u32) -> Option<NodeStatus> {
        let mut client = self.client(id);
        let ask = async move {
            let answer = client.status(pb::StatusRequest {}).await.ok()?.into_inner();
            convert::decode_status(answer).ok()
        };
        tokio::time::timeout(Duration::from_millis(500), ask)
            .await
            .ok()
            .flatten()
    }

    /// Polls the running nodes; records leaders by term and panics on two in one term.
    pub async fn poll(&mut self) -> Vec<NodeStatus> {
        let mut seen = Vec::new();
        for id in self.running() {
            if let Some(s) = self.status(id).await {
                if s.role == Role::Leader {
                    let first = *self.leaders_by_term.entry(s.term).or_insert(s.node_id);
                    assert_eq!(
                        first,
                        s.node_id,
                        "two leaders in term {}: {first} and {}\n{}",
                        s.term,
                        s.node_id,
                        self.describe()
                    );
                }
                seen.push(s);
            }
        }
        seen
    }

    /// Waits until exactly one running node is leader and every other running node that answers
    /// follows it; panics after `bound`.
    pub async fn wait_for_leader(&mut self, bound: Duration) -> NodeStatus {
        let started = Instant::now();
        loop {
            let seen = self.poll().await;
            let leaders: Vec<&NodeStatus> =
                seen.iter().filter(|s| s.role == Role::Leader).collect();
            if let [leader] = leaders[..] {
                let agreed = seen.len() == self.children.len()
                    && seen
                        .iter()
                        .all(|s| s.role == Role::Leader || s.leader == Some(leader.node_id));
                if agreed {
                    return leader.clone();
                }
            }
            assert!(
                started.elapsed() < bound,
                "no single leader within {bound:?}: {seen:?}\n{}",
                self.describe()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Leaders seen so far, by term.
    pub fn leaders_by_term(&self) -> &HashMap<Term, NodeId> {
        &self.leaders_by_term
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Never leave processes behind.
        for id in self.running() {
            self.kill(id);
        }
    }
}

/// One Propose RPC with a deadline. `Err` covers transport errors, refusals and "outcome unknown"
/// (ABORTED) alike: the caller does not know whether the entry was committed.
pub async fn propose(
    client: &mut OperatorClient,
    payload: Vec<u8>,
    deadline: Duration,
) -> Result<ProposeOutcome, String> {
    let call = client.propose(pb::ProposeRequest { payload });
    match tokio::time::timeout(deadline, call).await {
        Err(_) => Err(format!("no answer within {deadline:?}")),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Ok(Ok(answer)) => {
            convert::decode_propose_outcome(answer.into_inner()).map_err(|e| e.to_string())
        }
    }
}

/// What a [`StreamProposer`] caller waits on.
type StreamReply = tokio::sync::oneshot::Sender<Result<ProposeOutcome, String>>;

/// Proposals of many concurrent callers multiplexed over one `ProposeStream` (the way a client
/// library would share one stream among its callers). The node answers in request order, so the
/// callers' replies wait in a FIFO: a caller's reply is queued before its request is sent.
#[derive(Clone)]
pub struct StreamProposer {
    tx: tokio::sync::mpsc::Sender<(Vec<u8>, StreamReply)>,
}

impl StreamProposer {
    /// Opens a stream on `client`'s node.
    pub async fn open(client: &mut OperatorClient) -> Result<StreamProposer, String> {
        use std::collections::VecDeque;
        use std::sync::{Arc, Mutex};
        let (requests_tx, requests_rx) = tokio::sync::mpsc::channel::<pb::ProposeRequest>(1024);
        let answers = client
            .propose_stream(tokio_stream::wrappers::ReceiverStream::new(requests_rx))
            .await
            .map_err(|s| format!("ProposeStream: {:?}: {}", s.code(), s.message()))?;
        let mut answers = answers.into_inner();
        let waiting: Arc<Mutex<VecDeque<StreamReply>>> = Arc::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Vec<u8>, StreamReply)>(1024);
        let pump_waiting = Arc::clone(&waiting);
        tokio::spawn(async move {
            while let Some((payload, reply)) = rx.recv().await {
                pump_waiting
                    .lock()
                    .expect("no panics while locked")
                    .push_back(reply);
                if requests_tx
                    .send(pb::ProposeRequest { payload })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let end = loop {
                match answers.message().await {
                    Ok(Some(m)) => {
                        let reply = waiting.lock().expect("no panics while locked").pop_front();
                        let Some(reply) = reply else {
                            break "the node answered a proposal that was not asked".to_string();
                        };
                        let _ = reply
                            .send(convert::decode_propose_outcome(m).map_err(|e| e.to_string()));
                    }
                    Ok(None) => break "the node ended the stream".to_string(),
                    Err(s) => break format!("{:?}: {}", s.code(), s.message()),
                }
            };
            for reply in waiting.lock().expect("no panics while locked").drain(..) {
                let _ = reply.send(Err(end.clone()));
            }
        });
        Ok(StreamProposer { tx })
    }

    /// Proposes `payload` and waits (at most `deadline`) for its answer.
    pub async fn propose(
        &self,
        payload: Vec<u8>,
        deadline: Duration,
    ) -> Result<ProposeOutcome, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send((payload, reply))
            .await
            .map_err(|_| "the stream is closed".to_string())?;
        match tokio::time::timeout(deadline, answer).await {
            Err(_) => Err(format!("no answer within {deadline:?}")),
            Ok(Err(_)) => Err("the stream is closed".to_string()),
            Ok(Ok(r)) => r,
        }
    }
}

/// One key as a node serves it: key, value, create revision, mod revision, version.
pub type KvRecord = (Vec<u8>, Vec<u8>, i64, i64, i64);

/// A lazily connected channel to a node's gRPC address (the etcd API and the node's own).
pub fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_lazy()
}

/// Every key of node `addr`'s store with its value, revisions and version, and the store's
/// revision: from its own state (`serializable`) or through a linearizable read.
pub async fn kv_state(addr: SocketAddr, serializable: bool) -> (i64, Vec<KvRecord>) {
    use rust_raft_log::etcdpb::etcdserverpb::{kv_client::KvClient, RangeRequest};
    let answer = KvClient::new(channel(addr))
        .range(RangeRequest {
            key: b"\0".to_vec(),
            range_end: b"\0".to_vec(),
            serializable,
            ..RangeRequest::default()
        })
        .await
        .expect("range")
        .into_inner();
    let revision = answer.header.expect("header").revision;
    let kvs = answer
        .kvs
        .into_iter()
        .map(|kv| {
            (
                kv.key,
                kv.value,
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            )
        })
        .collect();
    (revision, kvs)
}

impl Cluster {
    /// Waits up to `bound` until node `id`'s output contains `needle` (panics with the output).
    pub fn wait_for_output(&self, id: u32, needle: &str, bound: Duration) {
        let started = Instant::now();
        while !self.output(id).contains(needle) {
            assert!(
                started.elapsed() < bound,
                "node {id} never logged {needle:?}:\n{}",
                self.output(id)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
