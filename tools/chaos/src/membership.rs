//! Membership faults, run through etcd's Cluster API while the clients keep writing, so the
//! history the checker judges spans configuration changes:
//!
//! - [`replace`]: the operator's "replace a failed server" procedure (README, "Membership
//!   changes: replacing a failed server") on one slot (see [`crate::cluster`]): `MemberRemove`
//!   of the node it holds (a follower or the leader), SIGKILL, wipe its data directory,
//!   `MemberAdd` of a learner at the slot's peer URL (the leader chooses the new node id), start
//!   the new node with `--join`, and `MemberPromote` retried while the leader refuses it (etcd's
//!   "can only promote a learner member which is in sync with leader"), until it votes.
//! - [`grow`]: the second half of that on a dormant slot: `MemberAdd` of a learner, start it
//!   with `--join`, promote it; then the clients and watchers may use it.
//! - [`shrink`]: `MemberRemove` of the node a slot holds; the clients and watchers stop using
//!   it; the node must notice its removal and exit by itself with status 78
//!   (`rust_raft_log::node::EXIT_REMOVED`), within [`EXIT_MAX`]; its directory is wiped and the
//!   slot becomes dormant.
//!
//! Invariants: every request is retried until [`STEP_MAX`] passes, and a retry first checks
//! whether the previous attempt took effect (its answer may have been lost in a leader change):
//! a removed member is no longer listed, an added learner is listed at the slot's URL, a
//! promoted one is listed as a voter. In `replace` the slot is down between the kill and the
//! spawn, and holds the new node id from the spawn on; a failure leaves the slot as it is and
//! says which step failed, except in `shrink`, whose slot is dormant afterwards whatever
//! happened (a node that did not exit by itself is killed).

use std::time::{Duration, Instant};

use rust_raft_log::etcdpb::etcdserverpb as pb;

use crate::cluster::Cluster;

/// How long each step (remove, add, catch up and promote) may take.
pub const STEP_MAX: Duration = Duration::from_secs(30);
/// Pause between two attempts of a step.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Deadline of one Cluster API request.
const REQUEST_MAX: Duration = Duration::from_secs(3);

/// What a replacement did, for the runner's log.
#[derive(Clone, Debug)]
pub struct Replaced {
    pub slot: u32,
    pub removed: u32,
    /// The removed node led when the replacement began.
    pub was_leader: bool,
    pub added: u32,
    /// Promotions refused while the learner caught up.
    pub promote_refusals: u32,
    pub took: Duration,
}

/// How long a removed node may take to notice its removal and exit: it waits three maximum
/// election timeouts of evidence (1.5 s with the defaults) after it learns of it.
pub const EXIT_MAX: Duration = Duration::from_secs(20);

/// What a growth did, for the runner's log.
#[derive(Clone, Debug)]
pub struct Grown {
    pub slot: u32,
    pub added: u32,
    pub promote_refusals: u32,
    /// Voters the leader listed once the new one was promoted.
    pub voters: usize,
    pub took: Duration,
}

/// What a shrink did, for the runner's log.
#[derive(Clone, Debug)]
pub struct Shrunk {
    pub slot: u32,
    pub removed: u32,
    pub was_leader: bool,
    /// From `MemberRemove`'s answer to the process's exit.
    pub exit_after: Duration,
    pub took: Duration,
}

/// A step that did not complete within [`STEP_MAX`] (or failed outright).
#[derive(Debug, thiserror::Error)]
#[error("{fault} of slot {slot}: {step} did not complete in {} s: {last}", STEP_MAX.as_secs())]
pub struct MembershipError {
    /// The fault's name (`replace-member`, `grow`, `shrink`).
    pub fault: &'static str,
    pub slot: u32,
    pub step: &'static str,
    /// The last answer or error seen.
    pub last: String,
}

/// The members one running slot lists, or why it could not say.
async fn list(cluster: &mut Cluster, slot: u32) -> Result<Vec<pb::Member>, String> {
    let mut client = pb::cluster_client::ClusterClient::new(cluster.channel(slot));
    let ask = client.member_list(pb::MemberListRequest {
        linearizable: false,
    });
    match tokio::time::timeout(REQUEST_MAX, ask).await {
        Ok(Ok(answer)) => Ok(answer.into_inner().members),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err("no answer".into()),
    }
}

/// The slot to send requests to: the leader if one is known, else any running slot but
/// `except` (round robin on `attempt`).
async fn target(cluster: &mut Cluster, except: u32, attempt: u32) -> Option<u32> {
    if let Some(leader) = cluster.leader().await {
        if leader != except && attempt.is_multiple_of(2) {
            return Some(leader);
        }
    }
    let others: Vec<u32> = cluster
        .running()
        .into_iter()
        .filter(|s| *s != except && !cluster.is_paused(*s))
        .collect();
    (!others.is_empty()).then(|| others[attempt as usize % others.len()])
}

/// The node id `member list` gives `member` (its name is `node<id>`).
fn node_of(member: &pb::Member) -> Option<u32> {
    member.name.strip_prefix("node")?.parse().ok()
}

/// Runs `step` (one attempt, given the slot to ask and the attempt number) until it returns
/// `Ok(Some(_))` or [`STEP_MAX`] passes; `Ok(None)` and `Err` are retried.
async fn until_done<T, F>(
    cluster: &mut Cluster,
    fault: &'static str,
    slot: u32,
    name: &'static str,
    mut step: F,
) -> Result<T, MembershipError>
where
    F: for<'a> FnMut(
        &'a mut Cluster,
        u32,
        u32,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Option<T>, String>> + 'a>,
    >,
{
    let started = Instant::now();
    let mut last = String::from("no member answered");
    let mut attempt = 0u32;
    while started.elapsed() < STEP_MAX {
        if let Some(ask) = target(cluster, slot, attempt).await {
            match step(cluster, ask, attempt).await {
                Ok(Some(done)) => return Ok(done),
                Ok(None) => {}
                Err(why) => last = format!("slot {ask}: {why}"),
            }
        }
        attempt += 1;
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    Err(MembershipError {
        fault,
        slot,
        step: name,
        last,
    })
}

fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Replaces the node slot `slot` holds by a fresh member (module docs).
///
/// # Errors
/// [`MembershipError`] naming the step that did not complete.
pub async fn replace(cluster: &mut Cluster, slot: u32) -> Result<Replaced, MembershipError> {
    const FAULT: &str = "replace-member";
    let began = Instant::now();
    let removed = cluster.node_id(slot);
    let was_leader = cluster.leader().await == Some(slot);
    remove_member(cluster, FAULT, slot).await?;

    // Stop it and wipe its directory (a replacement server starts empty).
    cluster.kill(slot);
    wipe_slot(cluster, FAULT, slot)?;

    let added = add_learner(cluster, FAULT, slot).await?;
    cluster.replace_node(slot, added);
    start_joined(cluster, FAULT, slot)?;
    let promote_refusals = promote(cluster, FAULT, slot, added).await?;
    Ok(Replaced {
        slot,
        removed,
        was_leader,
        added,
        promote_refusals,
        took: began.elapsed(),
    })
}

/// Adds a member in dormant slot `slot` (module docs); the clients and watchers use it once it
/// votes.
///
/// # Errors
/// [`MembershipError`] naming the step that did not complete; the slot stays dormant if the
/// `MemberAdd` did not.
pub async fn grow(cluster: &mut Cluster, slot: u32) -> Result<Grown, MembershipError> {
    const FAULT: &str = "grow";
    let began = Instant::now();
    let added = add_learner(cluster, FAULT, slot).await?;
    cluster.grow_slot(slot, added);
    // A fresh id has no directory yet; an earlier run's leftovers must not be mistaken for one.
    wipe_slot(cluster, FAULT, slot)?;
    start_joined(cluster, FAULT, slot)?;
    let promote_refusals = promote(cluster, FAULT, slot, added).await?;
    let added_id = rust_raft_log::etcd::members::member_id(rust_raft_log::types::NodeId(added));
    // The leader's list with the new voter in it: how many vote now.
    let voters = until_done(
        cluster,
        FAULT,
        slot,
        "member list shows the promoted voter",
        |cluster, ask, _| {
            Box::pin(async move {
                let members = list(cluster, ask).await?;
                Ok(members
                    .iter()
                    .any(|m| m.id == added_id && !m.is_learner)
                    .then(|| members.iter().filter(|m| !m.is_learner).count()))
            })
        },
    )
    .await?;
    cluster.serve_clients(slot, true);
    Ok(Grown {
        slot,
        added,
        promote_refusals,
        voters,
        took: began.elapsed(),
    })
}

/// Removes the member slot `slot` holds and waits for it to exit by itself (module docs); the
/// slot is dormant afterwards, also on an error.
///
/// # Errors
/// [`MembershipError`]: the removal did not complete, or the node did not exit with status 78
/// within [`EXIT_MAX`].
pub async fn shrink(cluster: &mut Cluster, slot: u32) -> Result<Shrunk, MembershipError> {
    const FAULT: &str = "shrink";
    let began = Instant::now();
    let removed = cluster.node_id(slot);
    let was_leader = cluster.leader().await == Some(slot);
    remove_member(cluster, FAULT, slot).await?;
    // Clients learn the new member list: they stop sending to it (a client busy with it moves
    // on once it fails).
    cluster.serve_clients(slot, false);
    let removed_at = Instant::now();
    let mut problem = None;
    loop {
        if let Some(status) = cluster.reap(slot) {
            if status.code() != Some(i32::from(rust_raft_log::node::EXIT_REMOVED)) {
                problem = Some((
                    "exit with status 78",
                    format!(
                        "node {removed} exited {status}; its last lines:\n{}",
                        cluster.output_tail(slot, 15)
                    ),
                ));
            }
            break;
        }
        if !cluster.is_running(slot) {
            break;
        }
        if removed_at.elapsed() > EXIT_MAX {
            problem = Some((
                "exit by itself",
                format!(
                    "node {removed} still running {} s after its removal; killed",
                    EXIT_MAX.as_secs()
                ),
            ));
            cluster.kill(slot);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exit_after = removed_at.elapsed();
    let wiped = wipe_slot(cluster, FAULT, slot);
    cluster.make_dormant(slot);
    if let Some((step, last)) = problem {
        return Err(MembershipError {
            fault: FAULT,
            slot,
            step,
            last,
        });
    }
    wiped?;
    Ok(Shrunk {
        slot,
        removed,
        was_leader,
        exit_after,
        took: began.elapsed(),
    })
}

/// `MemberRemove` of the node slot `slot` holds, until no member lists it.
async fn remove_member(
    cluster: &mut Cluster,
    fault: &'static str,
    slot: u32,
) -> Result<(), MembershipError> {
    let removed = cluster.node_id(slot);
    let removed_id = rust_raft_log::etcd::members::member_id(rust_raft_log::types::NodeId(removed));
    until_done(
        cluster,
        fault,
        slot,
        "member remove",
        |cluster, ask, attempt| {
            Box::pin(async move {
                if attempt > 0 {
                    let members = list(cluster, ask).await?;
                    if !members.iter().any(|m| m.id == removed_id) {
                        return Ok(Some(()));
                    }
                }
                let mut client = pb::cluster_client::ClusterClient::new(cluster.channel(ask));
                let ask = client.member_remove(pb::MemberRemoveRequest { id: removed_id });
                match tokio::time::timeout(REQUEST_MAX, ask).await {
                    Ok(Ok(_)) => Ok(Some(())),
                    Ok(Err(status)) => Err(status_text(&status)),
                    Err(_) => Err("no answer".into()),
                }
            })
        },
    )
    .await
}

/// Empties the data directory of the node slot `slot` holds.
fn wipe_slot(cluster: &Cluster, fault: &'static str, slot: u32) -> Result<(), MembershipError> {
    let dir = cluster.data_dir(slot);
    wipe(&dir).map_err(|e| MembershipError {
        fault,
        slot,
        step: "wipe",
        last: format!("{}: {e}", dir.display()),
    })
}

/// `MemberAdd` of a learner at slot `slot`'s URL, until a member lists one there; its node id.
async fn add_learner(
    cluster: &mut Cluster,
    fault: &'static str,
    slot: u32,
) -> Result<u32, MembershipError> {
    let url = cluster.peer_url(slot);
    until_done(
        cluster,
        fault,
        slot,
        "member add --learner",
        |cluster, ask, attempt| {
            let url = url.clone();
            Box::pin(async move {
                if attempt > 0 {
                    let members = list(cluster, ask).await?;
                    if let Some(m) = members.iter().find(|m| m.peer_ur_ls.contains(&url)) {
                        return Ok(node_of(m));
                    }
                }
                let mut client = pb::cluster_client::ClusterClient::new(cluster.channel(ask));
                let ask = client.member_add(pb::MemberAddRequest {
                    peer_ur_ls: vec![url],
                    is_learner: true,
                });
                match tokio::time::timeout(REQUEST_MAX, ask).await {
                    Ok(Ok(answer)) => Ok(answer.into_inner().member.as_ref().and_then(node_of)),
                    Ok(Err(status)) => Err(status_text(&status)),
                    Err(_) => Err("no answer".into()),
                }
            })
        },
    )
    .await
}

/// Starts the node slot `slot` now holds (with `--join`: it holds a member added at run time).
fn start_joined(
    cluster: &mut Cluster,
    fault: &'static str,
    slot: u32,
) -> Result<(), MembershipError> {
    cluster.spawn(slot).map_err(|e| MembershipError {
        fault,
        slot,
        step: "start with --join",
        last: e.to_string(),
    })
}

/// `MemberPromote` of node `added`, refused while it catches up, until it is listed as a
/// voter; how many times the leader refused it as not in sync.
async fn promote(
    cluster: &mut Cluster,
    fault: &'static str,
    slot: u32,
    added: u32,
) -> Result<u32, MembershipError> {
    let added_id = rust_raft_log::etcd::members::member_id(rust_raft_log::types::NodeId(added));
    let refusals = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = std::sync::Arc::clone(&refusals);
    until_done(
        cluster,
        fault,
        slot,
        "member promote",
        move |cluster, ask, attempt| {
            let counted = std::sync::Arc::clone(&counted);
            Box::pin(async move {
                if attempt > 0 {
                    let members = list(cluster, ask).await?;
                    if members.iter().any(|m| m.id == added_id && !m.is_learner) {
                        return Ok(Some(()));
                    }
                }
                let mut client = pb::cluster_client::ClusterClient::new(cluster.channel(ask));
                let ask = client.member_promote(pb::MemberPromoteRequest { id: added_id });
                match tokio::time::timeout(REQUEST_MAX, ask).await {
                    Ok(Ok(_)) => Ok(Some(())),
                    Ok(Err(status)) => {
                        if status.message().contains("in sync with leader") {
                            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(status_text(&status))
                    }
                    Err(_) => Err("no answer".into()),
                }
            })
        },
    )
    .await?;
    Ok(refusals.load(std::sync::atomic::Ordering::Relaxed))
}

/// Empties `dir` (it may be a mount point, so the directory itself stays).
fn wipe(dir: &std::path::Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}
