//! The binary's configuration and CLI errors: each seed message appears exactly, and the exit code
//! is non-zero. These run the real `rust-raft-log` executable.

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rust-raft-log"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the rust-raft-log binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const CONFIG: &str = "nodes:
  - node_id: 1
    ip_address: \"127.0.0.1\"
    port: 18001
  - node_id: 2
    ip_address: \"127.0.0.1\"
    port: 18002
";

#[test]
fn missing_config_file_prints_the_seed_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(
        &["--node-id", "1", "--config", "missing_config.yaml"],
        dir.path(),
    );
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim_end(),
        "Error: Configuration file not found: missing_config.yaml"
    );
}

#[test]
fn unknown_node_id_prints_the_seed_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("c.yaml"), CONFIG).expect("write config");
    let out = run(&["-n", "99", "-c", "c.yaml"], dir.path());
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim_end(),
        "Error: Node ID 99 not found in configuration file"
    );
}

#[test]
fn invalid_config_names_the_field_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = format!("{CONFIG}cluster_settings:\n  heartbeat_interval: 200\n");
    std::fs::write(dir.path().join("c.yaml"), bad).expect("write config");
    let out = run(&["-n", "1", "-c", "c.yaml"], dir.path());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.starts_with("Error: ") && err.contains("cluster_settings.heartbeat_interval"),
        "{err}"
    );
}

#[test]
fn malformed_yaml_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("c.yaml"), "nodes: [ {node_id: 1,").expect("write");
    let out = run(&["-n", "1", "-c", "c.yaml"], dir.path());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.starts_with("Error: Invalid configuration file c.yaml"),
        "{err}"
    );
}

#[test]
fn help_lists_the_seed_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(&["--help"], dir.path());
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["-n, --node-id", "-c, --config", "-h, --help"] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
}

#[test]
fn shipped_cluster_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster_config.yaml");
    let config = rust_raft_log::config::ClusterConfig::load(&path).expect("shipped config loads");
    assert_eq!(config.nodes.len(), 3);
    assert_eq!(
        config.node(3).expect("node 3").address().to_string(),
        "127.0.0.1:18003"
    );
}

#[test]
fn missing_tls_files_are_named_at_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = format!(
        "nodes:\n  - node_id: 1\n    ip_address: \"127.0.0.1\"\n    port: {port}\ntls:\n  \
         cert_file: \"certs/node{{id}}.pem\"\n"
    );
    std::fs::write(dir.path().join("c.yaml"), config).expect("write config");
    let out = run(&["-n", "1", "-c", "c.yaml"], dir.path());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("Error: tls.cert_file: cannot read certs/node1.pem"),
        "the error names the field and the file (with the node id filled in): {err}"
    );
}
