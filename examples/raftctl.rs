//! `raftctl`: a small operator client for a running node's Operator service.
//!
//! ```text
//! cargo run --release --example raftctl -- status  127.0.0.1:18001
//! cargo run --release --example raftctl -- propose 127.0.0.1:18001 "some payload"
//! ```
//! `propose` follows a NotLeader answer to the leader's address once, so any node may be named.
//! `status` prints the peers' progress; only the leader tracks it, so on a follower raftctl
//! finds the leader's address (the node's etcd member list) and prints the leader's view too.
//! `raftctl --help` prints the usage and exits 0.
//! Exit codes: 0 success, 1 the cluster refused or failed, 2 usage or connection error.

use std::process::ExitCode;
use std::time::Duration;

use rust_raft_log::grpc::proto::operator_client::OperatorClient;
use rust_raft_log::grpc::proto::{propose_response, ProposeRequest, Role, StatusRequest};
use tonic::transport::Channel;

const USAGE: &str = "usage: raftctl status <host:port> | raftctl propose <host:port> <payload>
  status   the node's role, term, leader, commit/applied indexes, log range, and every peer's
           match index (as the leader sees it; asked of the leader when the node follows)
  propose  proposes <payload> (bytes of the argument) and waits for its commit; follows a
           NotLeader answer to the leader once
exit codes: 0 success, 1 the cluster refused or failed, 2 usage or connection error";

async fn connect(address: &str) -> Result<OperatorClient<Channel>, String> {
    let channel = Channel::from_shared(format!("http://{address}"))
        .map_err(|e| format!("bad address {address}: {e}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("cannot reach {address}: {e}"))?;
    Ok(OperatorClient::new(channel))
}

async fn status(address: &str) -> Result<ExitCode, String> {
    let s = print_status(address).await?;
    if s.peers.is_empty() {
        if let Some(leader) = s.leader_id.filter(|l| *l != s.node_id) {
            let leader_address = member_address(address, leader).await?;
            println!("peers, as the leader (node {leader}, {leader_address}) sees them:");
            let l = print_status(&leader_address).await?;
            if l.peers.is_empty() {
                println!("  (node {leader} no longer leads: run raftctl status again)");
            }
        } else if s.leader_id.is_none() {
            println!("  no leader known: no peer progress to show");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The client address of node `id`, from the etcd member list `address` serves (members are
/// named `node<id>`; their client URL is the node's address).
async fn member_address(address: &str, id: u32) -> Result<String, String> {
    use rust_raft_log::etcdpb::etcdserverpb::cluster_client::ClusterClient;
    use rust_raft_log::etcdpb::etcdserverpb::MemberListRequest;
    let channel = Channel::from_shared(format!("http://{address}"))
        .map_err(|e| format!("bad address {address}: {e}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("cannot reach {address}: {e}"))?;
    let members = ClusterClient::new(channel)
        .member_list(MemberListRequest::default())
        .await
        .map_err(|e| format!("MemberList failed: {e}"))?
        .into_inner()
        .members;
    let name = format!("node{id}");
    members
        .iter()
        .find(|m| m.name == name)
        .and_then(|m| m.client_ur_ls.first())
        .map(|url| {
            url.trim_start_matches("http://")
                .trim_start_matches("https://")
                .to_string()
        })
        .ok_or_else(|| format!("{address} lists no member named {name}"))
}

/// Prints one node's status line and its peers; returns the status.
async fn print_status(address: &str) -> Result<rust_raft_log::grpc::proto::StatusResponse, String> {
    let mut client = connect(address).await?;
    let s = client
        .status(StatusRequest {})
        .await
        .map_err(|e| format!("Status failed: {e}"))?
        .into_inner();
    let role = Role::try_from(s.role).map_or("unknown", |r| match r {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre-candidate",
        Role::Unspecified => "unspecified",
    });
    let leader = s.leader_id.map_or("none".to_string(), |id| id.to_string());
    println!(
        "node {} {role} term {} leader {leader} commit {} applied {} log {}..={}",
        s.node_id, s.term, s.commit_index, s.applied_index, s.first_log_index, s.last_log_index
    );
    for p in &s.peers {
        println!("  peer {} match {}", p.node_id, p.match_index);
    }
    Ok(s)
}

async fn propose(address: &str, payload: &str) -> Result<ExitCode, String> {
    let mut target = address.to_string();
    for _ in 0..2 {
        let mut client = connect(&target).await?;
        let answer = client
            .propose(ProposeRequest {
                payload: payload.as_bytes().to_vec(),
            })
            .await
            .map_err(|e| format!("Propose to {target} failed: {e}"))?
            .into_inner();
        match answer.outcome {
            Some(propose_response::Outcome::Committed(c)) => {
                println!("committed at index {} term {}", c.index, c.term);
                return Ok(ExitCode::SUCCESS);
            }
            Some(propose_response::Outcome::NotLeader(n)) if !n.leader_address.is_empty() => {
                eprintln!("{target} is not the leader; trying {}", n.leader_address);
                target = n.leader_address;
            }
            Some(propose_response::Outcome::NotLeader(_)) => {
                eprintln!("{target} is not the leader and knows no leader yet; retry shortly");
                return Ok(ExitCode::from(1));
            }
            Some(propose_response::Outcome::Refused(r)) => {
                // Only ProposeStream answers carry refusals; the unary call fails with a status.
                return Err(format!("{target} refused the proposal: {}", r.message));
            }
            None => return Err(format!("{target} sent an empty Propose answer")),
        }
    }
    eprintln!("no leader accepted the proposal");
    Ok(ExitCode::from(1))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(
        args.first().map(String::as_str),
        Some("--help" | "-h" | "help")
    ) {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raftctl: cannot start a runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match args
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["status", address] => status(address).await,
            ["propose", address, payload] => propose(address, payload).await,
            _ => Err(USAGE.to_string()),
        }
    });
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("raftctl: {message}");
            ExitCode::from(2)
        }
    }
}
