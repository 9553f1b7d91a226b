//! Startup failures of the real `rust-raft-log` process that protect the port and the data.
//!
//! ```text
//!   this test ──holds── 127.0.0.1:<ephemeral>      rust-raft-log -n 1 ──bind──▶ refused
//!   this test ──flock── raft_logs/node_1/LOCK      rust-raft-log -n 1 ──lock──▶ refused
//! ```
//! Each case checks the exact error line on stderr and a non-zero exit code, in a temp dir, on
//! ephemeral loopback ports.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use rust_raft_log::node::DataDirLock;

fn run(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rust-raft-log"))
        .args(["--node-id", "1", "--config", "c.yaml"])
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .output()
        .expect("the rust-raft-log binary runs")
}

fn write_config(dir: &Path, port_1: u16, port_2: u16) {
    let text = format!(
        "nodes:
  - node_id: 1
    ip_address: \"127.0.0.1\"
    port: {port_1}
  - node_id: 2
    ip_address: \"127.0.0.1\"
    port: {port_2}
"
    );
    std::fs::write(dir.join("c.yaml"), text).expect("write config");
}

/// A port that was free a moment ago (the OS hands out ephemeral ports round-robin, so reuse
/// within the test's lifetime is unlikely).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port()
}

#[test]
fn a_port_in_use_fails_with_the_seed_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    write_config(dir.path(), port, free_port());
    let out = run(dir.path());
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        format!("Error: Failed to bind to 127.0.0.1:{port} - address already in use")
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("🚀 Starting Raft node 1 with config: c.yaml"),
        "{stdout}"
    );
    assert!(stdout.contains("📋 Cluster configuration:"), "{stdout}");
    assert!(stdout.contains("Cluster size: 2"), "{stdout}");
    // Nothing touched the data directory: the bind check comes first.
    assert!(!dir.path().join("raft_logs/node_1/LOCK").exists());
}

#[test]
fn a_second_process_on_the_same_data_directory_fails_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), free_port(), free_port());
    let node_dir = dir.path().join("raft_logs/node_1");
    // This test process plays the first node: it holds the directory's lock.
    let held = DataDirLock::acquire(&node_dir).expect("lock");
    let out = run(dir.path());
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "Error: data directory ./raft_logs/node_1 is in use by another process (pid {}); \
         lock file ./raft_logs/node_1/LOCK",
        std::process::id()
    );
    assert_eq!(stderr.trim_end(), expected);
    drop(held);
}
