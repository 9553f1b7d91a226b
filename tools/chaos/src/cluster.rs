//! The cluster under test: real processes (rust-raft-log nodes, or etcd members for comparison),
//! one per network namespace of a [`Network`], started, killed, paused and restarted by the
//! fault schedule, and asked who leads through the etcd API only (`Maintenance.Status`), so
//! both flavours are driven by the same code.
//!
//! The runner's `id`s are *slots*: slot `s` is network namespace `s`, its address and its data
//! directory. A slot holds one node at a time; at the start slot `s` holds node `s`, and a
//! membership fault (`replace-member`, [`crate::membership`]) puts a fresh node id into a slot
//! whose node it removed ([`Cluster::replace_node`]): the new node listens at the slot's address
//! (a replacement server that takes over the failed one's address, as an operator would) and
//! is started with `--join`. Clients and watchers address slots, so they need not learn the new
//! ids; `Maintenance.Status` answers tell the runner which member id each slot holds now.
//!
//! Slots may also be *dormant* (`--spare N`, for the `grow` and `shrink` faults): they have a
//! namespace, an address and a place for data, but hold no node: the config file lists only
//! the initial members, and a dormant slot is not started, restarted or compared. `grow`
//! ([`crate::membership::grow`]) gives one a fresh node id ([`Cluster::grow_slot`]), started with
//! `--join`; `shrink` removes a member and makes its slot dormant again
//! ([`Cluster::make_dormant`]), so a later `grow` re-uses it under yet another id.
//!
//! The clients and the watchers address slots through [`Endpoints`], shared with the cluster:
//! the set of member slots they send to changes as members are added and removed, the way a
//! real etcd client learns the member list.
//!
//! Invariants: a slot is either running (a live child this module spawned) or down; a dormant
//! slot is down; `Drop` kills every child (SIGCONT first, so a paused one dies too) before the
//! network is removed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rust_raft_log::etcdpb::etcdserverpb as pb;
use tonic::transport::{Channel, Endpoint};

use crate::disks::{DiskError, DiskModel, Disks};
use crate::net::Network;

/// The etcd API port of every node (each has its own address in namespaces).
const CLIENT_PORT: u16 = 2379;
/// etcd's peer port.
const PEER_PORT: u16 = 2380;

/// Which server runs.
#[derive(Clone, Debug)]
pub enum Flavor {
    /// rust-raft-log nodes; `extra` is appended to `cluster_settings`.
    RustRaftLog { binary: PathBuf, extra: String },
    /// etcd members (Debian's `etcd-server`, or any etcd 3.4+).
    Etcd { binary: PathBuf },
}

impl Flavor {
    pub fn name(&self) -> &'static str {
        match self {
            Flavor::RustRaftLog { .. } => "rust-raft-log",
            Flavor::Etcd { .. } => "etcd",
        }
    }
}

/// Why the cluster could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot start node {id} ({binary}): {source}")]
    Spawn {
        id: u32,
        binary: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no leader within {0:?}")]
    NoLeader(Duration),
    #[error("disk: {0}")]
    Disk(#[from] DiskError),
}

/// The slots' client addresses and which of them hold members now, shared by the cluster (which
/// changes it) and the clients and watchers (which send only to members). Index `i` is slot
/// `i + 1`.
#[derive(Clone, Debug)]
pub struct Endpoints {
    addrs: Arc<Vec<SocketAddr>>,
    /// Bit `i` set: slot `i + 1` holds a member (at most 32 slots; the runner allows 9 + 9).
    members: Arc<AtomicU32>,
}

impl Endpoints {
    /// `addrs` with the first `members` of them members.
    pub fn new(addrs: Vec<SocketAddr>, members: usize) -> Endpoints {
        assert!(addrs.len() <= 32, "{} slots: at most 32", addrs.len());
        let mask = if members >= 32 {
            u32::MAX
        } else {
            (1u32 << members) - 1
        };
        Endpoints {
            addrs: Arc::new(addrs),
            members: Arc::new(AtomicU32::new(mask)),
        }
    }

    /// Slots, members or not.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Slot `index + 1`'s address.
    pub fn addr(&self, index: usize) -> SocketAddr {
        self.addrs[index]
    }

    pub fn is_member(&self, index: usize) -> bool {
        index < 32 && self.members.load(Ordering::Relaxed) & (1 << index) != 0
    }

    /// How many slots hold members.
    pub fn members(&self) -> usize {
        self.members.load(Ordering::Relaxed).count_ones() as usize
    }

    /// The first member slot at or after `index` (cyclically); `index` itself when none is.
    pub fn member_from(&self, index: usize) -> usize {
        let n = self.addrs.len();
        (0..n)
            .map(|k| (index + k) % n)
            .find(|&i| self.is_member(i))
            .unwrap_or(index % n)
    }

    /// The member slot after `index` (cyclically).
    pub fn next_member(&self, index: usize) -> usize {
        self.member_from(index + 1)
    }

    /// The member slots' indexes, in order.
    pub fn member_indexes(&self) -> Vec<usize> {
        (0..self.addrs.len())
            .filter(|&i| self.is_member(i))
            .collect()
    }

    fn set(&self, slot: u32, member: bool) {
        let bit = 1u32 << (slot - 1);
        if member {
            self.members.fetch_or(bit, Ordering::Relaxed);
        } else {
            self.members.fetch_and(!bit, Ordering::Relaxed);
        }
    }
}

/// A running (or down) cluster.
pub struct Cluster {
    // Field order matters: children are killed in Drop before `disks` (unmounted) and `net`
    // are dropped.
    children: BTreeMap<u32, Child>,
    paused: BTreeMap<u32, bool>,
    pub disks: Option<Disks>,
    pub net: Network,
    pub dir: PathBuf,
    flavor: Flavor,
    ports: Vec<(u16, u16)>,
    /// The member id each node reports in response headers, learned from Status.
    member_ids: BTreeMap<u64, u32>,
    channels: BTreeMap<u32, Channel>,
    /// The node id each slot holds when it is not its own number (a replacement).
    replaced: BTreeMap<u32, u32>,
    /// Slots that hold no node (module docs).
    dormant: BTreeSet<u32>,
    endpoints: Endpoints,
    /// Members at the start (`shrink` never goes below).
    initial_members: usize,
}

impl Cluster {
    /// Writes the configuration for the first `members` of `net.size()` slots into `dir`, puts
    /// each member's data directory on `disk` and starts every member; the other slots are
    /// dormant (module docs).
    pub fn start(
        dir: &Path,
        net: Network,
        flavor: Flavor,
        disk: DiskModel,
        members: usize,
    ) -> Result<Cluster, ClusterError> {
        let size = net.size();
        assert!(
            (1..=size).contains(&members),
            "{members} members in {size} slots"
        );
        let ports: Vec<(u16, u16)> = if net.partitions_supported() {
            vec![(CLIENT_PORT, PEER_PORT); size]
        } else {
            let free = free_ports(2 * size)?;
            free.chunks(2).map(|p| (p[0], p[1])).collect()
        };
        let addrs = (0..size)
            .map(|i| SocketAddr::from((net.ip(i as u32 + 1), ports[i].0)))
            .collect();
        let mut cluster = Cluster {
            children: BTreeMap::new(),
            paused: BTreeMap::new(),
            disks: None,
            net,
            dir: dir.to_path_buf(),
            flavor,
            ports,
            member_ids: BTreeMap::new(),
            channels: BTreeMap::new(),
            replaced: BTreeMap::new(),
            dormant: (members as u32 + 1..=size as u32).collect(),
            endpoints: Endpoints::new(addrs, members),
            initial_members: members,
        };
        if let Flavor::RustRaftLog { extra, .. } = &cluster.flavor {
            let mut yaml = String::from("nodes:\n");
            for id in cluster.ids() {
                yaml += &format!(
                    "  - node_id: {id}\n    ip_address: \"{}\"\n    port: {}\n",
                    cluster.net.ip(id),
                    cluster.ports[id as usize - 1].0
                );
            }
            yaml += &format!(
                "cluster_settings:\n  log_directory: \"{}\"\n",
                dir.join("data").display()
            );
            yaml += extra;
            std::fs::write(dir.join("cluster.yaml"), yaml)?;
        }
        let dirs = cluster
            .ids()
            .into_iter()
            .map(|id| (id, cluster.data_dir(id)))
            .collect();
        cluster.disks = Some(Disks::prepare(disk, dir, dirs)?);
        for id in cluster.ids() {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    /// The slots that hold members (module docs): 1 to the cluster's size but the dormant ones.
    pub fn ids(&self) -> Vec<u32> {
        self.slots()
            .into_iter()
            .filter(|s| !self.dormant.contains(s))
            .collect()
    }

    /// How many members the cluster started with.
    pub fn initial_members(&self) -> usize {
        self.initial_members
    }

    /// Every slot, dormant or not.
    pub fn slots(&self) -> Vec<u32> {
        (1..=self.net.size() as u32).collect()
    }

    /// The dormant slots.
    pub fn dormant(&self) -> Vec<u32> {
        self.dormant.iter().copied().collect()
    }

    /// The slots' addresses and member set, for the clients and watchers.
    pub fn endpoints(&self) -> Endpoints {
        self.endpoints.clone()
    }

    /// Dormant slot `slot` now holds node `node`, a member just added: it starts with `--join`
    /// (the caller spawns it). The clients and watchers are told once it is a voter
    /// ([`Cluster::serve_clients`]).
    pub fn grow_slot(&mut self, slot: u32, node: u32) {
        debug_assert!(self.dormant.contains(&slot), "slot {slot} is not dormant");
        self.dormant.remove(&slot);
        self.replace_node(slot, node);
    }

    /// Whether the clients and watchers send to slot `slot`.
    pub fn serve_clients(&self, slot: u32, serve: bool) {
        self.endpoints.set(slot, serve);
    }

    /// Slot `slot`'s node was removed and has stopped: the slot holds no node any more.
    pub fn make_dormant(&mut self, slot: u32) {
        debug_assert!(!self.is_running(slot), "slot {slot} is still running");
        self.endpoints.set(slot, false);
        self.dormant.insert(slot);
        self.channels.remove(&slot);
    }

    /// The node id slot `slot` holds now (its own number until a replacement).
    pub fn node_id(&self, slot: u32) -> u32 {
        self.replaced.get(&slot).copied().unwrap_or(slot)
    }

    /// Slot `slot`'s peer URL (rust-raft-log serves Raft and the etcd API on one port).
    pub fn peer_url(&self, slot: u32) -> String {
        format!("http://{}", self.client_addr(slot))
    }

    /// Slot `slot` now holds node `node`, a member added at run time: it starts with `--join`
    /// at the slot's address. The slot must be down (the caller removed and stopped the node
    /// it held and wiped its directory).
    pub fn replace_node(&mut self, slot: u32, node: u32) {
        debug_assert!(!self.is_running(slot), "slot {slot} is still running");
        self.replaced.insert(slot, node);
        self.channels.remove(&slot);
    }

    pub fn flavor(&self) -> &Flavor {
        &self.flavor
    }

    /// Node `id`'s etcd API address.
    pub fn client_addr(&self, id: u32) -> SocketAddr {
        SocketAddr::from((self.net.ip(id), self.ports[id as usize - 1].0))
    }

    /// Where slot `id`'s node keeps its data.
    pub fn data_dir(&self, id: u32) -> PathBuf {
        match &self.flavor {
            Flavor::RustRaftLog { .. } => self
                .dir
                .join("data")
                .join(format!("node_{}", self.node_id(id))),
            Flavor::Etcd { .. } => self.dir.join(format!("etcd_{id}")),
        }
    }

    pub fn is_running(&self, id: u32) -> bool {
        self.children.contains_key(&id)
    }

    pub fn running(&self) -> Vec<u32> {
        self.children.keys().copied().collect()
    }

    pub fn is_paused(&self, id: u32) -> bool {
        self.paused.get(&id).copied().unwrap_or(false)
    }

    /// Starts node `id` (it must be down).
    pub fn spawn(&mut self, id: u32) -> Result<(), ClusterError> {
        if self.children.contains_key(&id) {
            return Ok(());
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node_{id}.out")))?;
        let err = out.try_clone()?;
        let (binary, args) = self.command(id);
        let mut command = match self.net.namespace(id) {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        command
            .args(&args)
            .current_dir(&self.dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = command.spawn().map_err(|source| ClusterError::Spawn {
            id,
            binary: binary.display().to_string(),
            source,
        })?;
        self.children.insert(id, child);
        self.paused.insert(id, false);
        Ok(())
    }

    fn command(&self, id: u32) -> (PathBuf, Vec<String>) {
        match &self.flavor {
            Flavor::RustRaftLog { binary, .. } => {
                let mut args = vec![
                    "--node-id".into(),
                    self.node_id(id).to_string(),
                    "--config".into(),
                    self.dir.join("cluster.yaml").display().to_string(),
                ];
                if self.replaced.contains_key(&id) {
                    // Not in the config file: a member added at run time, at the slot's address.
                    args.extend(["--join".into(), self.peer_url(id)]);
                }
                (binary.clone(), args)
            }
            Flavor::Etcd { binary } => {
                let peer =
                    |i: u32| format!("http://{}:{}", self.net.ip(i), self.ports[i as usize - 1].1);
                let client = format!("http://{}", self.client_addr(id));
                let initial: Vec<String> = self
                    .ids()
                    .iter()
                    .map(|&i| format!("n{i}={}", peer(i)))
                    .collect();
                (
                    binary.clone(),
                    vec![
                        "--name".into(),
                        format!("n{id}"),
                        "--data-dir".into(),
                        self.data_dir(id).display().to_string(),
                        "--listen-client-urls".into(),
                        client.clone(),
                        "--advertise-client-urls".into(),
                        client,
                        "--listen-peer-urls".into(),
                        peer(id),
                        "--initial-advertise-peer-urls".into(),
                        peer(id),
                        "--initial-cluster".into(),
                        initial.join(","),
                        "--initial-cluster-state".into(),
                        "new".into(),
                        "--initial-cluster-token".into(),
                        "chaos".into(),
                    ],
                )
            }
        }
    }

    /// Sends `signal` to node `id` if it runs.
    fn signal(&self, id: u32, signal: libc::c_int) {
        if let Some(child) = self.children.get(&id) {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self, id: u32) {
        if let Some(mut child) = self.children.remove(&id) {
            self.signal_child(&child, libc::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused.remove(&id);
        self.channels.remove(&id);
    }

    /// Asks node `id` to stop (SIGCONT, then SIGTERM): a planned restart. The node is still
    /// counted as running until [`Cluster::reap`] sees it exit.
    pub fn terminate(&mut self, id: u32) {
        self.signal(id, libc::SIGCONT);
        self.paused.remove(&id);
        self.signal(id, libc::SIGTERM);
    }

    /// If node `id` has exited, forgets it (as [`Cluster::kill`] does) and returns its status.
    pub fn reap(&mut self, id: u32) -> Option<std::process::ExitStatus> {
        let status = self.children.get_mut(&id)?.try_wait().ok()??;
        self.children.remove(&id);
        self.channels.remove(&id);
        Some(status)
    }

    fn signal_child(&self, child: &Child, signal: libc::c_int) {
        // SAFETY: as in `signal`.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
    }

    /// Node `id` and its disk lose power together: SIGKILL, then everything it wrote and did not
    /// sync is dropped (`lossyfs`); the disk is back (durable state only) when this returns, the
    /// node stays down.
    pub fn power_loss(&mut self, id: u32) -> Result<(), ClusterError> {
        self.kill(id);
        match self.disks.as_mut() {
            Some(disks) => Ok(disks.power_loss(id)?),
            None => Err(DiskError::NotLossy(id).into()),
        }
    }

    /// SIGSTOP: the process stays, its sockets stay open, nothing answers.
    pub fn pause(&mut self, id: u32) {
        if self.children.contains_key(&id) {
            self.signal(id, libc::SIGSTOP);
            self.paused.insert(id, true);
        }
    }

    pub fn resume(&mut self, id: u32) {
        if self.is_paused(id) {
            self.signal(id, libc::SIGCONT);
            self.paused.insert(id, false);
        }
    }

    /// Nodes that exited on their own (not killed by the runner), with their status.
    pub fn exited(&mut self) -> Vec<(u32, std::process::ExitStatus)> {
        let mut gone = Vec::new();
        for (id, child) in self.children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                gone.push((*id, status));
            }
        }
        for (id, _) in &gone {
            self.children.remove(id);
        }
        gone
    }

    /// The last `lines` lines of node `id`'s output.
    pub fn output_tail(&self, id: u32, lines: usize) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("node_{id}.out"))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub(crate) fn channel(&mut self, id: u32) -> Channel {
        let addr = self.client_addr(id);
        self.channels
            .entry(id)
            .or_insert_with(|| {
                Endpoint::from_shared(format!("http://{addr}"))
                    .expect("an address is a valid URI")
                    .connect_timeout(Duration::from_millis(300))
                    .timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .connect_lazy()
            })
            .clone()
    }

    /// `Maintenance.Status` of node `id` (None if it does not answer within 500 ms).
    pub async fn status(&mut self, id: u32) -> Option<pb::StatusResponse> {
        if !self.is_running(id) || self.is_paused(id) {
            return None;
        }
        let mut client = pb::maintenance_client::MaintenanceClient::new(self.channel(id));
        let answer = tokio::time::timeout(
            Duration::from_millis(500),
            client.status(pb::StatusRequest {}),
        )
        .await
        .ok()?
        .ok()?
        .into_inner();
        if let Some(h) = &answer.header {
            self.member_ids.insert(h.member_id, id);
        }
        Some(answer)
    }

    /// The node that leads according to a majority of the answering nodes' `Status` (the leader
    /// field names a member; that member's own answer maps it to a node id).
    pub async fn leader(&mut self) -> Option<u32> {
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        for id in self.running() {
            if let Some(s) = self.status(id).await {
                if s.leader != 0 {
                    *votes.entry(s.leader).or_default() += 1;
                }
            }
        }
        let (member, _) = votes.into_iter().max_by_key(|(_, n)| *n)?;
        let id = *self.member_ids.get(&member)?;
        self.is_running(id).then_some(id)
    }

    /// Waits until some running node is named leader by the others.
    pub async fn wait_for_leader(&mut self, bound: Duration) -> Result<u32, ClusterError> {
        let started = Instant::now();
        while started.elapsed() < bound {
            if let Some(id) = self.leader().await {
                return Ok(id);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(ClusterError::NoLeader(bound))
    }

    /// Every node's (revision, HashKV hash) once they all answer with the same revision, or the
    /// last answers seen after `bound`.
    pub async fn hashes(&mut self, bound: Duration) -> BTreeMap<u32, (i64, u32)> {
        let started = Instant::now();
        let mut seen = BTreeMap::new();
        while started.elapsed() < bound {
            seen.clear();
            for id in self.ids() {
                let mut client = pb::maintenance_client::MaintenanceClient::new(self.channel(id));
                let ask = client.hash_kv(pb::HashKvRequest { revision: 0 });
                if let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_secs(2), ask).await {
                    let answer = answer.into_inner();
                    let revision = answer.header.map_or(0, |h| h.revision);
                    seen.insert(id, (revision, answer.hash));
                }
            }
            let revisions: std::collections::BTreeSet<i64> =
                seen.values().map(|(r, _)| *r).collect();
            if seen.len() == self.ids().len() && revisions.len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        seen
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in self.running() {
            self.kill(id);
        }
    }
}

/// `n` ports free a moment ago (all listeners held until every port is chosen).
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Endpoints;

    fn five_slots(members: usize) -> Endpoints {
        let addrs = (0..5)
            .map(|i| std::net::SocketAddr::from(([127, 0, 0, 1], 2379 + i)))
            .collect();
        Endpoints::new(addrs, members)
    }

    #[test]
    fn clients_move_among_members_only_and_follow_changes() {
        let e = five_slots(3);
        assert_eq!(e.member_indexes(), vec![0, 1, 2]);
        assert_eq!(e.next_member(2), 0, "dormant slots 4 and 5 are skipped");
        assert_eq!(e.member_from(4), 0);
        e.set(4, true); // slot 4 grew
        assert_eq!(e.next_member(2), 3);
        assert_eq!(e.members(), 4);
        e.set(1, false); // slot 1 shrank
        assert_eq!(e.next_member(3), 1, "slot 1 is no longer a member");
        assert_eq!(e.member_from(0), 1);
        assert_eq!(e.member_indexes(), vec![1, 2, 3]);
    }

    #[test]
    fn with_no_member_a_client_stays_where_it_is() {
        let e = five_slots(1);
        e.set(1, false);
        assert_eq!(e.members(), 0);
        assert_eq!(e.member_from(3), 3);
        assert_eq!(e.next_member(3), 4);
    }
}
