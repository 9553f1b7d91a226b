//! kvbench: a load generator for the etcd v3 KV API, used to measure rust-raft-log and etcd with
//! the same client (`benches/compare_etcd.sh`).
//!
//! It speaks gRPC through the crate's generated etcd client (`rust_raft_log::etcdpb`), on a
//! tokio multi-thread runtime: it is an ordinary client and needs none of the node's runtime.
//!
//! # Module map
//! - [`args`]: flags, their validation, the [`args::Plan`] a run follows.
//! - [`keys`]: key encoding (zero-padded hex) and the seeded key choice.
//! - [`load`]: connections, leader discovery (Maintenance.Status), the client tasks.
//! - [`paced`]: paced (open-loop) puts, server CPU from /proc: shared by leasebench and watchbench.
//! - [`probe`]: `--wait-revision`, the time until one endpoint serves a revision (restarts).
//! - [`report`]: percentiles, the printed summary, the `kvbench-result` line, histogram files.
//!
//! A run: validate the flags → find the leader (with `--target leader`) → open `--conns`
//! connections → optional warm-up phase (not recorded) → the measured phase → print; write the
//! histogram if asked. Failed requests are counted by gRPC code and printed, never dropped.

pub mod args;
pub mod keys;
pub mod load;
pub mod paced;
pub mod probe;
pub mod report;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use args::{HistFormat, KeyOrder, Op, Plan, Stop, Target};
use report::Outcome;

/// Why a run could not be made (failed requests during a run are not errors: they are counted).
#[derive(Debug, thiserror::Error)]
pub enum KvbenchError {
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("Maintenance.Status on {endpoint} failed: {reason}")]
    Status { endpoint: String, reason: String },
    #[error("no leader among the endpoints after {waited:?}: {seen}")]
    NoLeader { waited: Duration, seen: String },
    #[error("cannot write the histogram to {path}: {source}")]
    HistogramWrite {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One line that says what is being measured, so a printed result carries its setup.
fn describe(plan: &Plan, destination: &str) -> String {
    let op = match (plan.op, plan.consistency) {
        (Op::Put, _) => "put".to_string(),
        (Op::Range, args::Consistency::L) => "range (linearizable)".to_string(),
        (Op::Range, args::Consistency::S) => "range (serializable)".to_string(),
    };
    let mode = match plan.rate {
        Some(rate) => format!("open loop at {rate} requests/s offered"),
        None => "closed loop".to_string(),
    };
    let keys = match plan.keys {
        KeyOrder::Seq => "in sequence",
        KeyOrder::Random => "at random",
    };
    let length = match plan.stop {
        Stop::Total(n) => format!("{n} requests"),
        Stop::Duration(d) => format!("{:.1} s", d.as_secs_f64()),
    };
    let values = match plan.op {
        Op::Put => format!(", {}-byte values", plan.val_size),
        Op::Range => String::new(),
    };
    format!(
        "kvbench: {op}, {} clients over {} HTTP/2 connections to {destination}; {mode}; \
         {}-byte keys {keys} over {} (seed {}){values}; {length} after {:.1} s warm-up",
        plan.clients,
        plan.conns,
        plan.key_size,
        plan.key_space,
        plan.seed,
        plan.warmup.as_secs_f64()
    )
}

/// Probe mode (`--wait-revision`): waits until the first endpoint serves the revision, prints
/// the milestones; returns whether every milestone was reached.
pub async fn wait(plan: Plan) -> bool {
    let min_revision = plan.wait_revision.unwrap_or(0);
    let deadline = match plan.stop {
        Stop::Duration(d) => d,
        // `--total` conflicts with `--wait-revision`; the default applies.
        Stop::Total(_) => args::DEFAULT_DURATION,
    };
    let outcome = probe::wait_serving(&plan, min_revision, deadline).await;
    print!("{}", probe::format_summary(&outcome));
    outcome.complete()
}

/// Runs `plan` and prints what it measured; returns the measured phase's outcome.
pub async fn run(plan: Plan) -> Result<Outcome, KvbenchError> {
    let (targets, destination) = match plan.target {
        Target::Leader => {
            let leader = load::find_leader(&plan.endpoints, plan.leader_wait, plan.timeout).await?;
            let destination = format!(
                "{} (the leader: member {:x}, term {}, found via Maintenance.Status)",
                leader.endpoint, leader.member_id, leader.raft_term
            );
            (vec![leader.endpoint], destination)
        }
        Target::All => (plan.endpoints.clone(), plan.endpoints.join(", ")),
    };
    let mut channels = Vec::with_capacity(plan.conns);
    for i in 0..plan.conns {
        channels.push(load::connect(&targets[i % targets.len()], plan.timeout).await?);
    }
    println!("{}", describe(&plan, &destination));
    let plan = Arc::new(plan);
    if !plan.warmup.is_zero() {
        let warm =
            load::run_phase(plan.clone(), &channels, Stop::Duration(plan.warmup), false).await;
        println!("warm-up: {:.1} s done", warm.elapsed.as_secs_f64());
    }
    let outcome = load::run_phase(plan.clone(), &channels, plan.stop, true).await;
    print!("{}", report::format_summary(&outcome, plan.op == Op::Range));
    if let Some(path) = &plan.hist_out {
        let write = || -> std::io::Result<()> {
            let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
            match plan.hist_format {
                HistFormat::Hgrm => report::write_hgrm(&outcome.hist, &mut file)?,
                HistFormat::V2 => report::write_v2(&outcome.hist, &mut file)?,
            }
            file.flush()
        };
        write().map_err(|source| KvbenchError::HistogramWrite {
            path: path.clone(),
            source,
        })?;
        println!("histogram written to {}", path.display());
    }
    let op = match plan.op {
        Op::Put => "put",
        Op::Range => "range",
    };
    println!(
        "{}",
        report::format_result_line(&outcome, op, plan.clients, plan.conns)
    );
    Ok(outcome)
}
