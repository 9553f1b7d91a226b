//! The faults and their schedule: which fault, on which nodes, when it begins and when it is
//! undone. Targets are drawn from the run's seed, so a seed and a fault list name one schedule
//! (the moments the leader is looked up still depend on the run).
//!
//! Invariants: every fault is undone by [`Injector::recover`] (killed nodes restarted, paused
//! ones continued, cuts healed) before the next one begins, and by [`Injector::recover_all`] at
//! the end whatever happened; a node that exits on its own is recorded as a finding, never
//! restarted silently.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::disks::DiskModel;
use crate::workload::Rng;

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// SIGKILL the leader; restart it when the fault ends.
    KillLeader,
    /// A planned restart of the leader: SIGTERM (the node hands leadership over, then exits),
    /// restarted when the fault ends. Its baseline is `kill-leader`.
    RestartLeader,
    /// SIGKILL a random node.
    KillRandom,
    /// SIGKILL a minority (one of 3, two of 5) at once.
    KillMinority,
    /// SIGKILL every node, then restart them all.
    KillAll,
    /// SIGSTOP the leader for the fault's length (longer than an election timeout), then SIGCONT.
    PauseLeader,
    /// Split the nodes into a random minority and the majority, both ways.
    Partition,
    /// The leader's packets to every other node are dropped; theirs reach it.
    OneWayFromLeader,
    /// The leader is cut from its followers both ways; clients still reach it.
    IsolateLeader,
    /// The leader, then every node at once, in turn, loses power: the process is killed and
    /// every byte it wrote without syncing is dropped (`lossyfs` under the data directories);
    /// restarted over what was durable when the fault ends.
    PowerLoss,
    /// The leader's disk, then a random node's, in turn, fills up (a ballast file takes every
    /// free block of its own tmpfs); the ballast is removed when the fault ends.
    DiskFull,
    /// A membership change: a random node (follower or leader) is removed through the Cluster
    /// API, killed, its directory wiped, and a fresh member (a new node id, at the same
    /// address) is added as a learner, started with `--join` and promoted once in sync
    /// ([`crate::membership`]); all of it when the fault begins, nothing to undo.
    ReplaceMember,
    /// The cluster grows by one voter: a learner is added for a dormant slot (`--spare`),
    /// started with `--join` and promoted once in sync ([`crate::membership::grow`]); nothing
    /// to undo. Skipped (and said so) when no slot is dormant.
    Grow,
    /// The cluster shrinks by one voter: the leader (odd shrinks) or a random follower (even
    /// ones) is removed through the Cluster API, must exit by itself with status 78, and its
    /// slot becomes dormant ([`crate::membership::shrink`]). Skipped (and said so) when the
    /// cluster has no more members than it started with.
    Shrink,
}

impl FaultKind {
    pub const ALL: [FaultKind; 8] = [
        FaultKind::KillLeader,
        FaultKind::KillRandom,
        FaultKind::KillMinority,
        FaultKind::KillAll,
        FaultKind::PauseLeader,
        FaultKind::Partition,
        FaultKind::OneWayFromLeader,
        FaultKind::IsolateLeader,
    ];

    /// Faults that need a file system of their own under the data directories (not in `all`:
    /// each needs a different one, see [`crate::disks`]).
    pub const STORAGE: [FaultKind; 2] = [FaultKind::PowerLoss, FaultKind::DiskFull];

    /// Planned operations rather than failures (not in `all`: named on their own, usually to be
    /// compared with the failure they replace).
    pub const PLANNED: [FaultKind; 1] = [FaultKind::RestartLeader];

    /// Membership changes (not in `all`: rust-raft-log only, and each one changes which node
    /// ids the cluster has).
    pub const MEMBERSHIP: [FaultKind; 3] =
        [FaultKind::ReplaceMember, FaultKind::Grow, FaultKind::Shrink];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::RestartLeader => "restart-leader",
            FaultKind::KillRandom => "kill-random",
            FaultKind::KillMinority => "kill-minority",
            FaultKind::KillAll => "kill-all",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::Partition => "partition",
            FaultKind::OneWayFromLeader => "one-way-from-leader",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::PowerLoss => "power-loss",
            FaultKind::DiskFull => "disk-full",
            FaultKind::ReplaceMember => "replace-member",
            FaultKind::Grow => "grow",
            FaultKind::Shrink => "shrink",
        }
    }

    pub fn parse(name: &str) -> Option<FaultKind> {
        FaultKind::ALL
            .into_iter()
            .chain(FaultKind::STORAGE)
            .chain(FaultKind::PLANNED)
            .chain(FaultKind::MEMBERSHIP)
            .find(|k| k.name() == name)
    }

    /// The file system this fault needs under the data directories, if not the plain one.
    pub fn disk_model(self) -> Option<DiskModel> {
        match self {
            FaultKind::PowerLoss => Some(DiskModel::Lossy),
            FaultKind::DiskFull => Some(DiskModel::Tmpfs {
                size_bytes: TMPFS_BYTES,
            }),
            _ => None,
        }
    }

    pub fn needs_network(self) -> bool {
        matches!(
            self,
            FaultKind::Partition | FaultKind::OneWayFromLeader | FaultKind::IsolateLeader
        )
    }
}

/// Each node's tmpfs in a disk-full run: room for the log's open and prepared segments at the
/// runner's segment size, snapshots and the state file, small enough to fill in an instant.
pub const TMPFS_BYTES: u64 = 512 << 20;

/// How long a planned restart waits for the node to exit after SIGTERM: the node's own bound on
/// a handover is twice the longest election timeout, etcd's a few seconds.
pub const TERMINATE_WAIT: Duration = Duration::from_secs(10);

/// The disk model a list of faults needs.
///
/// # Errors
/// A message when two faults need different file systems.
pub fn disk_model_for(faults: &[FaultKind]) -> Result<DiskModel, String> {
    let mut model = DiskModel::Plain;
    for kind in faults {
        if let Some(m) = kind.disk_model() {
            if model != DiskModel::Plain && model != m {
                return Err(
                    "power-loss and disk-full need different file systems under the data \
                     directories (lossyfs does not model allocation): run them separately"
                        .into(),
                );
            }
            model = m;
        }
    }
    Ok(model)
}

/// One fault as it happened.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub targets: Vec<u32>,
    /// Run clock (ns) when it began and when it was undone.
    pub began: u64,
    pub ended: u64,
}

/// Applies and undoes faults on a cluster.
pub struct Injector {
    rng: Rng,
    killed: BTreeSet<u32>,
    paused: BTreeSet<u32>,
    full: BTreeSet<u32>,
    /// Storage faults so far (their targets alternate).
    power_losses: u64,
    disk_fills: u64,
    shrinks: u64,
    cut: bool,
    /// The most voters a `MemberList` showed after a `grow` (0: no growth).
    pub voters_max: usize,
    /// Membership faults (`shrink`, `replace-member`) that removed the node leading then.
    pub leaders_removed: u32,
    /// Findings: nodes that exited on their own, network commands that failed.
    pub findings: Vec<String>,
}

impl Injector {
    pub fn new(seed: u64) -> Injector {
        Injector {
            rng: Rng::new(seed ^ 0x5eed_fa17),
            killed: BTreeSet::new(),
            paused: BTreeSet::new(),
            full: BTreeSet::new(),
            power_losses: 0,
            disk_fills: 0,
            shrinks: 0,
            cut: false,
            voters_max: 0,
            leaders_removed: 0,
            findings: Vec::new(),
        }
    }

    fn pick(&mut self, from: &[u32], n: usize) -> Vec<u32> {
        let mut pool = from.to_vec();
        let mut chosen = Vec::new();
        while chosen.len() < n && !pool.is_empty() {
            let i = self.rng.below(pool.len() as u64) as usize;
            chosen.push(pool.swap_remove(i));
        }
        chosen.sort_unstable();
        chosen
    }

    /// The leader, or a random running node when none is known within 5 s.
    async fn leader_or_random(&mut self, cluster: &mut Cluster) -> u32 {
        match cluster.wait_for_leader(Duration::from_secs(5)).await {
            Ok(id) => id,
            Err(_) => {
                let running = cluster.running();
                self.pick(&running, 1).first().copied().unwrap_or(1)
            }
        }
    }

    /// Begins a fault; returns its targets.
    pub async fn apply(&mut self, kind: FaultKind, cluster: &mut Cluster) -> Vec<u32> {
        let ids = cluster.ids();
        let minority = (ids.len() - 1) / 2;
        match kind {
            FaultKind::KillLeader | FaultKind::KillRandom | FaultKind::KillMinority => {
                let targets = match kind {
                    FaultKind::KillLeader => vec![self.leader_or_random(cluster).await],
                    FaultKind::KillRandom => self.pick(&ids, 1),
                    _ => self.pick(&ids, minority),
                };
                for &id in &targets {
                    cluster.kill(id);
                    self.killed.insert(id);
                }
                targets
            }
            FaultKind::RestartLeader => {
                let id = self.leader_or_random(cluster).await;
                self.restart(cluster, id).await;
                vec![id]
            }
            FaultKind::KillAll => {
                for &id in &ids {
                    cluster.kill(id);
                    self.killed.insert(id);
                }
                ids
            }
            FaultKind::PauseLeader => {
                let id = self.leader_or_random(cluster).await;
                cluster.pause(id);
                self.paused.insert(id);
                vec![id]
            }
            FaultKind::Partition => {
                let side = self.pick(&ids, minority.max(1));
                for &a in &side {
                    for &b in ids.iter().filter(|b| !side.contains(b)) {
                        self.cut(cluster, a, b);
                        self.cut(cluster, b, a);
                    }
                }
                side
            }
            FaultKind::OneWayFromLeader | FaultKind::IsolateLeader => {
                let leader = self.leader_or_random(cluster).await;
                for &b in ids.iter().filter(|&&b| b != leader) {
                    self.cut(cluster, leader, b);
                    if kind == FaultKind::IsolateLeader {
                        self.cut(cluster, b, leader);
                    }
                }
                vec![leader]
            }
            FaultKind::PowerLoss => {
                self.power_losses += 1;
                let targets = if self.power_losses % 2 == 1 {
                    vec![self.leader_or_random(cluster).await]
                } else {
                    ids
                };
                // Every target dies before any disk loses its unsynced bytes: one power cut.
                for &id in &targets {
                    cluster.kill(id);
                    self.killed.insert(id);
                }
                for &id in &targets {
                    if let Err(e) = cluster.power_loss(id) {
                        self.findings
                            .push(format!("cannot cut node {id}'s power: {e}"));
                    }
                }
                targets
            }
            FaultKind::DiskFull => {
                self.disk_fills += 1;
                let id = if self.disk_fills % 2 == 1 {
                    self.leader_or_random(cluster).await
                } else {
                    self.pick(&ids, 1).first().copied().unwrap_or(1)
                };
                if let Some(disks) = cluster.disks.as_ref() {
                    match disks.fill(id) {
                        Ok(_) => {
                            self.full.insert(id);
                        }
                        Err(e) => self
                            .findings
                            .push(format!("cannot fill node {id}'s disk: {e}")),
                    }
                }
                vec![id]
            }
            FaultKind::ReplaceMember => {
                let running: Vec<u32> = ids
                    .iter()
                    .copied()
                    .filter(|&s| cluster.is_running(s))
                    .collect();
                let Some(&slot) = self.pick(&running, 1).first() else {
                    return Vec::new();
                };
                match crate::membership::replace(cluster, slot).await {
                    Ok(r) => {
                        self.leaders_removed += u32::from(r.was_leader);
                        eprintln!(
                        "chaos: slot {slot}: node {} removed{}, node {} added, promoted after {} \
                         refusals, {:.1} s",
                        r.removed,
                        if r.was_leader { " (the leader)" } else { "" },
                        r.added,
                        r.promote_refusals,
                        r.took.as_secs_f64()
                    )
                    }
                    Err(e) => self.findings.push(e.to_string()),
                }
                vec![slot]
            }
            FaultKind::Grow => {
                let Some(&slot) = cluster.dormant().first() else {
                    eprintln!("chaos: grow: no dormant slot (more --spare), skipped");
                    return Vec::new();
                };
                match crate::membership::grow(cluster, slot).await {
                    Ok(g) => {
                        self.voters_max = self.voters_max.max(g.voters);
                        eprintln!(
                            "chaos: slot {slot}: node {} added, promoted after {} refusals, {} \
                             voters, {:.1} s",
                            g.added,
                            g.promote_refusals,
                            g.voters,
                            g.took.as_secs_f64()
                        );
                    }
                    Err(e) => self.findings.push(e.to_string()),
                }
                vec![slot]
            }
            FaultKind::Shrink => {
                if ids.len() <= cluster.initial_members() {
                    eprintln!(
                        "chaos: shrink: {} members, as many as at the start, skipped",
                        ids.len()
                    );
                    return Vec::new();
                }
                self.shrinks += 1;
                let slot = if self.shrinks % 2 == 1 {
                    self.leader_or_random(cluster).await
                } else {
                    let leader = cluster.leader().await;
                    let followers: Vec<u32> = ids
                        .iter()
                        .copied()
                        .filter(|&s| Some(s) != leader && cluster.is_running(s))
                        .collect();
                    match self.pick(&followers, 1).first() {
                        Some(&s) => s,
                        None => return Vec::new(),
                    }
                };
                match crate::membership::shrink(cluster, slot).await {
                    Ok(r) => {
                        self.leaders_removed += u32::from(r.was_leader);
                        eprintln!(
                            "chaos: slot {slot}: node {} removed{}, exited by itself (78) {:.1} s \
                         later, {:.1} s",
                            r.removed,
                            if r.was_leader { " (the leader)" } else { "" },
                            r.exit_after.as_secs_f64(),
                            r.took.as_secs_f64()
                        )
                    }
                    Err(e) => self.findings.push(e.to_string()),
                }
                vec![slot]
            }
        }
    }

    /// SIGTERM node `id` and wait for it to exit (it is restarted by [`Injector::recover`]). A
    /// node that has not exited after [`TERMINATE_WAIT`], or exits with a failure, is a finding
    /// (and is then killed).
    async fn restart(&mut self, cluster: &mut Cluster, id: u32) {
        let asked = std::time::Instant::now();
        cluster.terminate(id);
        self.killed.insert(id);
        loop {
            if let Some(status) = cluster.reap(id) {
                eprintln!(
                    "chaos: node {id} exited {:.3} s after SIGTERM ({status})",
                    asked.elapsed().as_secs_f64()
                );
                // etcd re-raises SIGTERM once it has shut down, so dying of it is a clean exit.
                let by_term =
                    std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGTERM);
                if !status.success() && !by_term {
                    self.findings.push(format!(
                        "node {id} failed on SIGTERM ({status}); its last lines:\n{}",
                        cluster.output_tail(id, 15)
                    ));
                }
                return;
            }
            if asked.elapsed() > TERMINATE_WAIT {
                self.findings.push(format!(
                    "node {id} still running {} s after SIGTERM; killed",
                    TERMINATE_WAIT.as_secs()
                ));
                cluster.kill(id);
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn cut(&mut self, cluster: &Cluster, from: u32, to: u32) {
        self.cut = true;
        if let Err(e) = cluster.net.cut(from, to) {
            self.findings
                .push(format!("cannot cut {from} -> {to}: {e}"));
        }
    }

    /// Undoes the current fault: heal, continue, restart.
    pub fn recover(&mut self, cluster: &mut Cluster) {
        if self.cut {
            if let Err(e) = cluster.net.heal() {
                self.findings.push(format!("cannot heal the network: {e}"));
            }
            self.cut = false;
        }
        for id in std::mem::take(&mut self.paused) {
            cluster.resume(id);
        }
        for id in std::mem::take(&mut self.full) {
            if let Some(Err(e)) = cluster.disks.as_ref().map(|d| d.free(id)) {
                self.findings
                    .push(format!("cannot free node {id}'s disk: {e}"));
            }
        }
        self.note_exits(cluster);
        for id in std::mem::take(&mut self.killed) {
            if let Err(e) = cluster.spawn(id) {
                self.findings.push(format!("cannot restart node {id}: {e}"));
            }
        }
    }

    /// Undoes everything, including nodes found exited (which are restarted after being noted).
    pub fn recover_all(&mut self, cluster: &mut Cluster) {
        self.recover(cluster);
        for id in cluster.ids() {
            if !cluster.is_running(id) {
                if let Err(e) = cluster.spawn(id) {
                    self.findings.push(format!("cannot restart node {id}: {e}"));
                }
            }
        }
    }

    /// Records nodes that exited without being killed.
    pub fn note_exits(&mut self, cluster: &mut Cluster) {
        for (id, status) in cluster.exited() {
            self.findings.push(format!(
                "node {id} exited on its own ({status}); its last lines:\n{}",
                cluster.output_tail(id, 15)
            ));
        }
    }
}
