//! A second etcd client library, in another language: Python's `etcd3` (0.12.0, from PyPI, with
//! `protobuf==3.20.3` and `grpcio`) runs `tests/python/etcd3_lease.py` against a 3-node cluster of
//! real processes on loopback, through a follower (forwarded) and the leader.
//!
//! ```text
//!   python etcd3 ──gRPC──▶ follower F ──forwarded──▶ leader L
//!                └────────────────────────────────▶ leader L
//! ```
//! The client is installed with pip into a virtualenv under Cargo's `CARGO_TARGET_TMPDIR`, once;
//! later runs reuse it. Needs `python3` with the `venv` module and pip (Debian: `python3-venv`),
//! and PyPI; without them the test fails and says so. Locks and watches in Python are left for
//! after the Watch service.

mod etcdctl_common;
mod process_cluster;

use std::path::{Path, PathBuf};
use std::process::Command;

use etcdctl_common::{cluster, runtime};

const PACKAGES: &[&str] = &["etcd3==0.12.0", "protobuf==3.20.3", "grpcio"];

/// The virtualenv's python, with the packages installed (created on first use).
fn python_with_etcd3() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("etcd3-venv");
    let python = venv.join("bin").join("python");
    let ready = |python: &Path| {
        Command::new(python)
            .args(["-c", "import etcd3"])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if ready(&python) {
        return python;
    }
    let created = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): install python3 and python3-venv (.ci/run does it)")
        });
    assert!(
        created.status.success(),
        "python3 -m venv failed (Debian needs python3-venv): {}",
        String::from_utf8_lossy(&created.stderr)
    );
    let installed = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(PACKAGES)
        .output()
        .expect("run pip");
    assert!(
        installed.status.success(),
        "pip install {PACKAGES:?} failed (is PyPI reachable?): {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    assert!(ready(&python), "etcd3 does not import after installing it");
    python
}

#[test]
fn python_etcd3_grants_refreshes_inspects_and_revokes_leases() {
    let python = python_with_etcd3();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (cluster, leader, follower) = cluster(dir.path(), &rt);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/etcd3_lease.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(cluster.addrs[&follower].to_string())
        .arg(cluster.addrs[&leader].to_string())
        .output()
        .expect("run the python script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let expected = [
        "granted True 30",
        "get v1 True",
        "refresh True 30",
        "granted_ttl 30",
        "remaining_in_range True",
        "keys ['py/also', 'py/leased']",
        "leader_info 30 ['py/also', 'py/leased']",
        "after_revoke None None",
        "ttl_after_revoke -1",
        "missing_refresh 0",
        "revoke_missing NOT_FOUND etcdserver: requested lease not found",
        "chosen_id 0x1234 40",
        "duplicate PreconditionFailedError",
        "done",
    ];
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, expected, "stderr:\n{stderr}");
}
