//! One chaos run from start to verdict: build the network, start the cluster, wait for a leader,
//! start the clients, inject the faults on schedule, undo everything, read every key once more,
//! compare the members' HashKV, and check the history.
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
use crate::workload::{self, Clock, Failure, WorkloadPlan};

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
    pub hashes: std::collections::BTreeMap<u32, (i64, u32)>,
    pub elapsed: Duration,
}

impl RunReport {
    /// No finding and a linearizable history.
    pub fn passed(&self) -> bool {
        self.findings.is_empty() && self.verdict.is_linearizable()
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
    std::fs::create_dir_all(&plan.dir)?;
    let net = if plan.namespaces {
        let pid = std::process::id();
        Network::create(
            plan.nodes as usize,
            &format!("{:x}", pid & 0xffff),
            net::free_subnet((pid % 250) as u8),
        )?
    } else {
        Network::loopback(plan.nodes as usize)
    };
    let disk = crate::faults::disk_model_for(&plan.faults).map_err(RunError::Plan)?;
    let mut cluster = Cluster::start(&plan.dir, net, plan.flavor.clone(), disk)?;
    let mut injector = Injector::new(plan.workload.seed);
    cluster.wait_for_leader(Duration::from_secs(30)).await?;

    let clock = Clock(Instant::now());
    let stop = Arc::new(AtomicBool::new(false));
    let anomalies = Arc::new(Mutex::new(Vec::new()));
    let endpoints: Vec<_> = cluster
        .ids()
        .iter()
        .map(|&id| cluster.client_addr(id))
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
    if hashes.len() != plan.nodes as usize || distinct.len() != 1 {
        findings.push(format!(
            "members disagree after the run (node: (revision, HashKV)): {hashes:?}"
        ));
    }
    injector.note_exits(&mut cluster);
    findings.append(&mut injector.findings);
    if let Ok(mut a) = anomalies.lock() {
        findings.extend(a.drain(..));
    }
    drop(cluster);
    operations.sort_by_key(|o| o.invoked);
    let verdict = checker::check(&operations);
    Ok(RunReport {
        plan,
        operations,
        ok,
        failures,
        faults,
        findings,
        verdict,
        hashes,
        elapsed: started.elapsed(),
    })
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
