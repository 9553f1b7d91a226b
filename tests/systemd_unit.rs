//! The service unit (deploy/rust-raft-log.service) and the readiness it waits for.
//!
//! ```text
//!   systemd-analyze verify <the unit, ExecStart pointing at this build's binary>
//!     → exit 0 and not one warning about the unit
//!   a one-node cluster started with NOTIFY_SOCKET=<a datagram socket of the test>
//!     → "READY=1" arrives, and only after the node logs that its event loop starts;
//!       SIGTERM → "STOPPING=1" arrives and the node exits 0
//! ```
//! Without `systemd-analyze` (Debian package `systemd`) the first half is skipped with a printed
//! reason, unless `CI=true` (then it fails: .ci/run installs it).

mod process_cluster;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use process_cluster::free_ports;

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "systemd-analyze is missing (Debian package `systemd`; .ci/run installs it)"
        );
        println!("SKIPPED: systemd-analyze is not installed (apt-get install systemd)");
        return;
    }
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/rust-raft-log.service"),
    )
    .expect("read the unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/rust-raft-log "));
    // verify checks that ExecStart's binary exists: point it at this build's.
    let unit = unit.replace(
        "/usr/local/bin/rust-raft-log",
        env!("CARGO_BIN_EXE_rust-raft-log"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rust-raft-log.service");
    std::fs::write(&path, unit).expect("write the unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("rust-raft-log.service"))
        .collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

#[test]
fn the_node_notifies_ready_once_serving_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_ports(1)[0];
    std::fs::write(
        dir.path().join("cluster.yaml"),
        format!(
            "nodes:\n  - node_id: 1\n    ip_address: \"127.0.0.1\"\n    port: {port}\n\
             cluster_settings:\n  log_directory: \"raft_logs\"\n  log_segment_size: 1048576\n"
        ),
    )
    .expect("config");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let out_path = dir.path().join("node.out");
    let out = std::fs::File::create(&out_path).expect("output");
    let mut node = Command::new(env!("CARGO_BIN_EXE_rust-raft-log"))
        .args(["--node-id", "1", "--config", "cluster.yaml"])
        .current_dir(dir.path())
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(out.try_clone().expect("clone")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("start the node");
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY=1 within 30 s");
    let message = String::from_utf8_lossy(&buf[..n]).to_string();
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    assert!(message.starts_with("READY=1"), "{message:?}");
    assert!(
        output.contains("Starting Raft event loop"),
        "READY=1 before the loop started:\n{output}"
    );
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(node.id() as i32, libc::SIGTERM) };
    let n = socket.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = node.wait().expect("wait");
    assert!(status.success(), "{status}");
}
