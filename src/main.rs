//! The `rust-raft-log` binary: parse the arguments, load and validate the cluster config, start
//! the node. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rust_raft_log::config::ClusterConfig;

/// mimalloc instead of glibc's malloc: the node allocates per request and per message.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Raft consensus node built on a segmented io_uring + mmap log.
#[derive(Parser, Debug)]
#[command(name = "rust-raft-log", version)]
struct Args {
    /// The ID of this node (must exist in the config).
    #[arg(short = 'n', long = "node-id")]
    node_id: u32,
    /// Path to the YAML cluster configuration file.
    #[arg(short = 'c', long = "config")]
    config: PathBuf,
    /// Join a running cluster as a member added with `etcdctl member add` (etcd's
    /// `--initial-cluster-state existing`): listen at this peer URL (`http://IP:PORT`, the one
    /// given to `member add`), never bootstrap, and wait for the leader to send the membership
    /// and the state. The node id is the one `member add` chose (`etcdctl member list`: name
    /// `node<id>`); the config file is the cluster's, unchanged.
    #[arg(long = "join", value_name = "PEER_URL")]
    join: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match ClusterConfig::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let join = match args
        .join
        .as_deref()
        .map(rust_raft_log::driver::parse_peer_url)
    {
        None => None,
        Some(Ok(address)) => Some(address),
        Some(Err(e)) => {
            eprintln!("Error: --join: {e}");
            return ExitCode::FAILURE;
        }
    };
    rust_raft_log::node::logging::init_tracing();
    if let Err(e) = rust_raft_log::node::disable_transparent_huge_pages() {
        tracing::warn!("cannot turn transparent huge pages off for this process: {e}");
    }
    match rust_raft_log::node::run_joining(&config, args.node_id, &args.config, join) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            match e {
                rust_raft_log::node::NodeError::Loop(
                    rust_raft_log::node::event_loop::LoopError::Removed { .. },
                ) => ExitCode::from(rust_raft_log::node::EXIT_REMOVED),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
