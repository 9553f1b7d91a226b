//! Membership faults: the operator's "replace a failed server" procedure (README, "Membership
//! changes: replacing a failed server") run through etcd's Cluster API while the clients keep
//! writing, so the history the checker judges spans configuration changes.
//!
//! [`replace`] takes one slot (see [`crate::cluster`]): `MemberRemove` of the node it holds
//! (a follower or the leader), SIGKILL, wipe its data directory, `MemberAdd` of a learner at the
//! slot's peer URL (the leader chooses the new node id), start the new node with `--join`, and
//! `MemberPromote` retried while the leader refuses it (etcd's "can only promote a learner
//! member which is in sync with leader"), until it votes.
//!
//! Invariants: every request is retried until [`STEP_MAX`] passes, and a retry first checks
//! whether the previous attempt took effect (its answer may have been lost in a leader change):
//! a removed member is no longer listed, an added learner is listed at the slot's URL, a
//! promoted one is listed as a voter. The slot is down between the kill and the spawn, and
//! holds the new node id from the spawn on; a failure leaves the slot as it is and says which
//! step failed.

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

/// A step that did not complete within [`STEP_MAX`].
#[derive(Debug, thiserror::Error)]
#[error("replace-member of slot {slot}: {step} did not complete in {} s: {last}", STEP_MAX.as_secs())]
pub struct ReplaceError {
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
    slot: u32,
    name: &'static str,
    mut step: F,
) -> Result<T, ReplaceError>
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
    Err(ReplaceError {
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
/// [`ReplaceError`] naming the step that did not complete.
pub async fn replace(cluster: &mut Cluster, slot: u32) -> Result<Replaced, ReplaceError> {
    let began = Instant::now();
    let removed = cluster.node_id(slot);
    let removed_id = rust_raft_log::etcd::members::member_id(rust_raft_log::types::NodeId(removed));
    let was_leader = cluster.leader().await == Some(slot);

    // 1. MemberRemove, until no member lists it.
    until_done(cluster, slot, "member remove", |cluster, ask, attempt| {
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
    })
    .await?;

    // 2. Stop it and wipe its directory (a replacement server starts empty).
    cluster.kill(slot);
    let dir = cluster.data_dir(slot);
    if let Err(e) = wipe(&dir) {
        return Err(ReplaceError {
            slot,
            step: "wipe",
            last: format!("{}: {e}", dir.display()),
        });
    }

    // 3. MemberAdd a learner at the slot's URL, until a member lists one there.
    let url = cluster.peer_url(slot);
    let added = until_done(
        cluster,
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
    .await?;

    // 4. Start it with --join at the slot's address.
    cluster.replace_node(slot, added);
    if let Err(e) = cluster.spawn(slot) {
        return Err(ReplaceError {
            slot,
            step: "start with --join",
            last: e.to_string(),
        });
    }

    // 5. MemberPromote, refused while it catches up, until it is listed as a voter.
    let added_id = rust_raft_log::etcd::members::member_id(rust_raft_log::types::NodeId(added));
    let refusals = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = std::sync::Arc::clone(&refusals);
    until_done(
        cluster,
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
    Ok(Replaced {
        slot,
        removed,
        was_leader,
        added,
        promote_refusals: refusals.load(std::sync::atomic::Ordering::Relaxed),
        took: began.elapsed(),
    })
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
