//! kvbench against a real single-node rust-raft-log for about a second.
//!
//! ```text
//!   kvbench (this test's child) ──etcd v3 KV + Maintenance over HTTP/2──▶ rust-raft-log node 1
//!                                                                         127.0.0.1:<free port>
//! ```
//! 1. one put through `--target leader` proves leader discovery via Maintenance.Status works;
//! 2. ~1 s of puts over keys 0..100 in sequence from 4 clients on 2 connections: no errors;
//! 3. ~0.5 s of linearizable ranges over those keys: no errors and every range finds its key.
//!
//! The node binary is the workspace's release (or debug) build next to kvbench's own binary:
//! `cargo test --workspace` builds it first (the rust-raft-log package's tests need it). Running
//! this test alone needs `cargo build -p rust-raft-log` in the same profile first; the failure
//! message says so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

struct Node {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node_1.out")).unwrap_or_default()
    }
}

fn node_binary() -> PathBuf {
    let kvbench = Path::new(env!("CARGO_BIN_EXE_kvbench"));
    let node = kvbench.with_file_name("rust-raft-log");
    assert!(
        node.exists(),
        "{} is missing: build the node in the same profile first \
         (`cargo build --release -p rust-raft-log`, or run `cargo test --workspace --release`)",
        node.display()
    );
    node
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("an ephemeral port on 127.0.0.1")
        .port()
}

fn start_node() -> (Node, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let yaml = format!(
        "nodes:\n  - node_id: 1\n    ip_address: \"127.0.0.1\"\n    port: {port}\n\
         cluster_settings:\n  log_directory: \"raft_logs\"\n  log_segment_size: 1048576\n"
    );
    std::fs::write(dir.path().join("cluster.yaml"), yaml).expect("write config");
    let out = std::fs::File::create(dir.path().join("node_1.out")).expect("output file");
    let err = out.try_clone().expect("clone output file");
    let child = Command::new(node_binary())
        .args(["--node-id", "1", "--config", "cluster.yaml"])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn rust-raft-log");
    (Node { child, dir }, format!("127.0.0.1:{port}"))
}

fn kvbench(endpoint: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvbench"))
        .args([
            "--endpoints",
            endpoint,
            "--leader-wait",
            "20",
            "--timeout",
            "5",
        ])
        .args(args)
        .output()
        .expect("run kvbench")
}

/// The `key=value` pairs of the `kvbench-result` line.
fn result(output: &Output, node: &Node) -> std::collections::HashMap<String, String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kvbench failed ({}):\n{stdout}\n{}\nnode output:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        node.output()
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("kvbench-result "))
        .unwrap_or_else(|| panic!("no kvbench-result line in:\n{stdout}"));
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn puts_then_linearizable_ranges_against_one_node() {
    let (node, endpoint) = start_node();

    let first = kvbench(&endpoint, &["--op", "put", "--total", "1"]);
    let r = result(&first, &node);
    assert_eq!(
        (r["ok"].as_str(), r["errors"].as_str()),
        ("1", "0"),
        "{r:?}"
    );
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout.contains("(the leader: member"),
        "the leader was found via Maintenance.Status:\n{stdout}"
    );

    let puts = kvbench(
        &endpoint,
        &[
            "--op",
            "put",
            "--keys",
            "seq",
            "--key-space",
            "100",
            "--clients",
            "4",
            "--conns",
            "2",
            "--duration",
            "1",
        ],
    );
    let r = result(&puts, &node);
    assert_eq!(r["errors"], "0", "{r:?}");
    let ok: u64 = r["ok"].parse().expect("ok is a number");
    assert!(ok >= 100, "1 s of puts wrote every key of 0..100: {r:?}");

    let ranges = kvbench(
        &endpoint,
        &[
            "--op",
            "range",
            "--consistency",
            "l",
            "--key-space",
            "100",
            "--clients",
            "2",
            "--duration",
            "0.5",
        ],
    );
    let r = result(&ranges, &node);
    assert_eq!(r["errors"], "0", "{r:?}");
    assert_eq!(r["ranges_empty"], "0", "every key was written: {r:?}");
    assert!(r["ok"].parse::<u64>().expect("ok is a number") > 0, "{r:?}");
}

/// The `key=value` pairs of the `kvbench-wait` line (probe mode).
fn wait_line(output: &Output) -> std::collections::HashMap<String, String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("kvbench-wait "))
        .unwrap_or_else(|| panic!("no kvbench-wait line in:\n{stdout}"));
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Probe mode (`--wait-revision`): the current revision at once, a revision already served, and
/// one never reached (gives up with exit 1, milestones printed as `-`).
#[test]
fn wait_revision_probes_one_node() {
    let (node, endpoint) = start_node();
    let puts = kvbench(&endpoint, &["--op", "put", "--total", "20"]);
    let r = result(&puts, &node);
    assert_eq!(r["errors"], "0", "{r:?}");

    let now = kvbench(&endpoint, &["--wait-revision", "0", "--duration", "20"]);
    assert!(now.status.success(), "{now:?}\nnode:\n{}", node.output());
    let w = wait_line(&now);
    let revision: i64 = w["linearizable_revision"].parse().expect("a revision");
    assert!(revision >= 21, "20 puts after revision 1: {w:?}");

    let served = kvbench(
        &endpoint,
        &["--wait-revision", &revision.to_string(), "--duration", "20"],
    );
    assert!(served.status.success(), "{served:?}");
    let w = wait_line(&served);
    let started: u64 = w["started_unix_us"].parse().expect("a time");
    let serializable: u64 = w["serializable_unix_us"].parse().expect("a time");
    let linearizable: u64 = w["linearizable_unix_us"].parse().expect("a time");
    assert!(
        started <= serializable && serializable <= linearizable,
        "{w:?}"
    );
    assert_eq!(w["serializable_revision"], revision.to_string(), "{w:?}");

    let never = kvbench(
        &endpoint,
        &[
            "--wait-revision",
            &(revision + 1000).to_string(),
            "--duration",
            "0.3",
            "--probe-interval-ms",
            "20",
        ],
    );
    assert_eq!(never.status.code(), Some(1), "{never:?}");
    let w = wait_line(&never);
    assert_eq!(w["serializable_unix_us"], "-", "{w:?}");
    assert!(
        w["ranges_behind"].parse::<u64>().expect("a count") > 0,
        "{w:?}"
    );
}
