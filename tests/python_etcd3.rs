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
//! and PyPI; without them the test fails and says so. `tests/python/etcd3_watch.py` watches
//! (an iterator replaying history then live events, and a callback) and
//! `tests/python/etcd3_lock.py` takes etcd3's lock from two clients.

mod etcdctl_common;
mod process_cluster;

use std::path::{Path, PathBuf};
use std::process::Command;

use etcdctl_common::{cluster, runtime};

/// etcd3 0.12's `Lock.acquire` passes tenacity an old-style wait function, which tenacity 7
/// dropped (`tenacity.compat`): pinned to the last release that accepts it.
const PACKAGES: &[&str] = &[
    "etcd3==0.12.0",
    "protobuf==3.20.3",
    "grpcio",
    "tenacity==6.3.1",
];

/// The tests of this binary run in parallel; one of them creates the virtualenv.
static VENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The virtualenv's python, with the packages installed (created on first use).
fn python_with_etcd3() -> PathBuf {
    let _only_one = VENV
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("etcd3-venv");
    let python = venv.join("bin").join("python");
    let ready = |python: &Path| {
        Command::new(python)
            .args(["-c", "import etcd3, tenacity.compat"])
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

/// Runs `tests/python/SCRIPT` with a follower's and the leader's address; its stdout lines.
fn run_script(script: &str) -> Vec<String> {
    let python = python_with_etcd3();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (cluster, leader, follower) = cluster(dir.path(), &rt);
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = Command::new(&python)
        .arg(&script)
        .arg(cluster.addrs[&follower].to_string())
        .arg(cluster.addrs[&leader].to_string())
        .output()
        .expect("run the python script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    stdout.lines().map(str::to_string).collect()
}

#[test]
fn python_etcd3_watches_history_and_live_events_on_a_follower() {
    let lines = run_script("etcd3_watch.py");
    let expected = [
        "iterator PUT py/start 0 +0",
        "iterator PUT py/a 1 +1",
        "iterator PUT py/k v +2",
        "iterator DELETE py/a  +3",
        "iterator PUT py/k w +5",
        "callback PUT py/k v +2",
        "callback PUT py/k w +5",
        "done",
    ];
    assert_eq!(lines, expected);
}

#[test]
fn python_etcd3_locks_exclude_until_released() {
    let lines = run_script("etcd3_lock.py");
    let expected = [
        "first_acquired True",
        "second_while_held False",
        "second_after_release True",
        "second_holds True",
        "done",
    ];
    assert_eq!(lines, expected);
}
