//! The `rust-raft-log` binary: parse the arguments, load and validate the cluster config, start
//! the node. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rust_raft_log::config::ClusterConfig;

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
    let node = match config.node(args.node_id) {
        Ok(node) => node,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "🚀 Starting Raft node {} with config: {}",
        node.node_id,
        args.config.display()
    );
    println!("📋 Cluster configuration:");
    println!("   Node ID: {}", node.node_id);
    println!("   Address: {}", node.address());
    println!("   Cluster size: {}", config.nodes.len());
    println!(
        "   Log directory: {}",
        config.node_directory(node.node_id).display()
    );
    // The transport and event loop (issue 4) are not built yet; say so rather than pretend.
    eprintln!("Error: the node's transport and event loop are not implemented yet (issue 4)");
    ExitCode::from(2)
}
