//! One chaos run from start to verdict: build the network, start the cluster, wait for a leader,
//! start the watchers and the clients, inject the faults on schedule, undo everything, read every
//! key once more, compare the members' HashKV, let the watchers reach the final revision, and
//! check the history (linearizability) and the watch streams (etcd's watch guarantees).
//!
//! The schedule: a fault begins every `interval` (the first at `interval`), cycling through the
//! fault list, and is undone `hold` later; no fault begins unless it can be undone before
//! `duration` ends.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::checker;
use crate::cluster::{Cluster, ClusterError, Flavor};
use crate::faults::{FaultKind, FaultRecord, Injector};
use crate::history::Operation;
use crate::net::{self, NetError, Network};
use crate::watchers::{self, WatchControl, WatchRecord};
use crate::workload::{self, Clock, Failure, WorkloadPlan};

/// How long the watchers get, after the run, to reach its final revision.
const WATCH_CATCH_UP_MAX: Duration = Duration::from_secs(30);

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct RunPlan {
    pub flavor: Flavor,
    pub nodes: u32,
    pub workload: WorkloadPlan,
    pub duration: Duration,
    pub interval: Duration,
    pub hold: Duration,
    pub faults: Vec<FaultKind>,
    pub dir: PathBuf,
    /// Network namespaces (needed by partitions); loopback otherwise.
    pub namespaces: bool,
    /// Watch streams on the workload's prefix (0: none).
    pub watchers: u32,
    /// Dormant slots beyond the `nodes` members, for `grow` (see [`crate::cluster`]).
    pub spare: u32,
}

/// Why a run could not be made (a run that finds anomalies is not an error).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("network: {0}")]
    Net(#[from] NetError),
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
    #[error("fault {0} needs network namespaces: run as root with `ip` and `nft` (apt nftables)")]
    NeedsNamespaces(&'static str),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Plan(String),
}

/// What a run saw.
pub struct RunReport {
    pub plan: RunPlan,
    pub operations: Vec<Operation>,
    pub ok: u64,
    pub failures: Vec<Failure>,
    pub faults: Vec<FaultRecord>,
    /// Nodes that exited on their own, failed network commands, answers no server may give,
    /// members whose HashKV differs.
    pub findings: Vec<String>,
    pub verdict: checker::Verdict,
    /// Every watcher's records, watcher by watcher, each in arrival order.
    pub watches: Vec<WatchRecord>,
    pub watch_verdict: checker::watch::WatchVerdict,
    pub hashes: std::collections::BTreeMap<u32, (i64, u32)>,
    /// The most voters a `MemberList` showed after a `grow` (0: none grew).
    pub voters_max: usize,
    /// Membership faults that removed the node leading then.
    pub leaders_removed: u32,
    /// Members (slots) at the end.
    pub final_members: Vec<u32>,
    pub elapsed: Duration,
}

impl RunReport {
    /// No finding, a linearizable history and no watch anomaly.
    pub fn passed(&self) -> bool {
        self.findings.is_empty() && self.verdict.is_linearizable() && self.watch_verdict.passed()
    }
}

/// Runs the plan.
pub async fn run(plan: RunPlan) -> Result<RunReport, RunError> {
    let started = Instant::now();
    if !plan.namespaces {
        if let Some(k) = plan.faults.iter().find(|k| k.needs_network()) {
            return Err(RunError::NeedsNamespaces(k.name()));
        }
    }
    if let Some(k) = plan
        .faults
        .iter()
        .find(|k| FaultKind::MEMBERSHIP.contains(k))
    {
        if !matches!(plan.flavor, Flavor::RustRaftLog { .. }) {
            return Err(RunError::Plan(format!(
                "{} drives rust-raft-log's --join; not etcd",
                k.name()
            )));
        }
        if plan.faults.iter().any(|k| k.disk_model().is_some()) {
            return Err(RunError::Plan(format!(
                "{} gives a slot a new data directory, which storage faults' per-node file \
                 systems do not follow: run them separately",
                k.name()
            )));
        }
    }
    if plan.spare > 0 && plan.faults.iter().any(|k| k.disk_model().is_some()) {
        return Err(RunError::Plan(
            "--spare slots get no file system of their own: not with storage faults".into(),
        ));
    }
    if plan.faults.contains(&FaultKind::Grow) && plan.spare == 0 {
        return Err(RunError::Plan(
            "grow needs dormant slots to grow into: pass --spare N".into(),
        ));
    }
    std::fs::create_dir_all(&plan.dir)?;
    let slots = (plan.nodes + plan.spare) as usize;
    let net = if plan.namespaces {
        let pid = std::process::id();
        Network::create(
            slots,
            &format!("{:x}", pid & 0xffff),
            net::free_subnet((pid % 250) as u8),
        )?
    } else {
        Network::loopback(slots)
    };
    let disk = crate::faults::disk_model_for(&plan.faults).map_err(RunError::Plan)?;
    let mut cluster = Cluster::start(
        &plan.dir,
        net,
        plan.flavor.clone(),
        disk,
        plan.nodes as usize,
    )?;
    let mut injector = Injector::new(plan.workload.seed);
    cluster.wait_for_leader(Duration::from_secs(30)).await?;

    let clock = Clock(Instant::now());
    let stop = Arc::new(AtomicBool::new(false));
    let anomalies = Arc::new(Mutex::new(Vec::new()));
    // Every slot's address, and which hold members: `grow` and `shrink` change the latter.
    let endpoints = cluster.endpoints();
    // The watchers start before the clients, from revision 1: every write is in their range.
    let watch_control = WatchControl::default();
    let watch_tasks: Vec<_> = (0..plan.watchers)
        .map(|id| {
            tokio::spawn(watchers::run_watcher(
                id,
                endpoints.clone(),
                clock,
                watch_control.clone(),
            ))
        })
        .collect();
    let clients: Vec<_> = (0..plan.workload.clients)
        .map(|id| {
            tokio::spawn(workload::run_client(
                id,
                endpoints.clone(),
                plan.workload.clone(),
                clock,
                stop.clone(),
                anomalies.clone(),
            ))
        })
        .collect();

    let mut faults = Vec::new();
    let mut next = plan.interval;
    let mut kinds = plan.faults.iter().cycle();
    while !plan.faults.is_empty() && next + plan.hold < plan.duration {
        sleep_until(clock, next).await;
        let Some(&kind) = kinds.next() else { break };
        let began = clock.now();
        let targets = injector.apply(kind, &mut cluster).await;
        eprintln!(
            "chaos: {:>6.1} s  {} {:?}",
            began as f64 / 1e9,
            kind.name(),
            targets
        );
        sleep_until(clock, Duration::from_nanos(began) + plan.hold).await;
        injector.recover(&mut cluster);
        faults.push(FaultRecord {
            kind,
            targets,
            began,
            ended: clock.now(),
        });
        next += plan.interval;
    }
    sleep_until(clock, plan.duration).await;
    stop.store(true, Ordering::Relaxed);
    injector.recover_all(&mut cluster);

    let mut operations = Vec::new();
    let mut failures = Vec::new();
    let mut ok = 0;
    for client in clients {
        // A client task only ends by returning its log (it has no panicking paths).
        if let Ok(log) = client.await {
            operations.extend(log.operations);
            failures.extend(log.failures);
            ok += log.ok;
        }
    }
    let mut findings = std::mem::take(&mut injector.findings);
    if let Err(e) = cluster.wait_for_leader(Duration::from_secs(30)).await {
        findings.push(format!("after the run: {e}"));
    }
    operations.extend(
        workload::final_reads(&endpoints, plan.workload.keys, clock, plan.workload.clients).await,
    );
    let hashes = cluster.hashes(Duration::from_secs(20)).await;
    let distinct: std::collections::BTreeSet<_> = hashes.values().collect();
    let final_members = cluster.ids();
    if hashes.len() != final_members.len() || distinct.len() != 1 {
        findings.push(format!(
            "members disagree after the run (slot: (revision, HashKV)): {hashes:?}"
        ));
    }
    let final_revision = hashes
        .values()
        .map(|&(revision, _)| revision)
        .chain(operations.iter().filter_map(|o| o.revision))
        .max()
        .unwrap_or(0);
    let watches = collect_watches(watch_tasks, &watch_control, final_revision).await;
    injector.note_exits(&mut cluster);
    findings.append(&mut injector.findings);
    if let Ok(mut a) = anomalies.lock() {
        findings.extend(a.drain(..));
    }
    drop(cluster);
    operations.sort_by_key(|o| o.invoked);
    let verdict = checker::check(&operations);
    let watch_verdict = checker::watch::check(&operations, &watches, final_revision);
    Ok(RunReport {
        plan,
        operations,
        ok,
        failures,
        faults,
        findings,
        verdict,
        watches,
        watch_verdict,
        hashes,
        voters_max: injector.voters_max,
        leaders_removed: injector.leaders_removed,
        final_members,
        elapsed: started.elapsed(),
    })
}

/// Tells the watchers the final revision, gives them [`WATCH_CATCH_UP_MAX`] to reach it, then
/// stops them; returns their records, watcher by watcher.
async fn collect_watches(
    tasks: Vec<tokio::task::JoinHandle<Vec<WatchRecord>>>,
    control: &WatchControl,
    final_revision: i64,
) -> Vec<WatchRecord> {
    // A watcher with nothing to reach (no revision known) stops at once.
    control
        .done_at
        .store(final_revision.max(1), Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + WATCH_CATCH_UP_MAX;
    let mut records = Vec::new();
    for mut task in tasks {
        let joined = match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(joined) => joined,
            Err(_) => {
                // Late: what it has not seen by now shows as its missing tail.
                control.give_up.store(true, Ordering::Relaxed);
                task.await
            }
        };
        // A watcher task only ends by returning its records (it has no panicking paths).
        if let Ok(r) = joined {
            records.extend(r);
        }
    }
    records
}

async fn sleep_until(clock: Clock, at: Duration) {
    let now = Duration::from_nanos(clock.now());
    if at > now {
        tokio::time::sleep(at - now).await;
    }
}

/// Whether namespaces can be used here.
pub fn namespaces_available() -> bool {
    net::namespaces_available()
}
