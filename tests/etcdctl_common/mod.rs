//! Shared by the etcdctl tests: running Debian's `etcdctl` (API v3) and a 3-node cluster of real
//! processes with etcd-like timing.
#![allow(dead_code)] // Each test binary uses a different part.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process_cluster::{Cluster, Settings};

pub const LEADER_WAIT: Duration = Duration::from_secs(20);

pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "success={} stdout:\n{}\nstderr:\n{}",
            self.success, self.stdout, self.stderr
        )
    }
}

/// Runs `etcdctl --endpoints=<endpoints> <args>` (API v3), feeding `stdin` if given.
pub fn etcdctl(endpoints: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = Command::new("etcdctl");
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=15s")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => panic!(
            "cannot run etcdctl ({e}): install Debian's etcd-client (`apt-get install -y \
             etcd-client`; .ci/run does it)"
        ),
    };
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes())
            .expect("write etcdctl stdin");
    }
    let out = child.wait_with_output().expect("etcdctl output");
    Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `etcdctl` that must succeed; returns stdout.
pub fn ok(endpoints: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoints, args, None);
    assert!(out.success, "etcdctl {args:?} against {endpoints}: {out:?}");
    out.stdout
}

/// Standard base64 (etcdctl's JSON output encodes keys and values with it).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Starts three nodes and waits for a leader; returns (cluster, leader id, a follower id).
///
/// Timing as etcd's defaults (heartbeat 100 ms, election 1-2 s) rather than the harness's 50 ms /
/// 150-500 ms: `check perf` fails on any error, and on a loaded shared 2-core machine a node or
/// its disk can stall for a few hundred milliseconds, which the short timeouts turn into an
/// election (seen once: "etcdserver: no leader" x129 during check perf at load ~10).
pub fn cluster(dir: &std::path::Path, rt: &tokio::runtime::Runtime) -> (Cluster, u32, u32) {
    let settings = Settings {
        election_min_ms: 1000,
        election_max_ms: 2000,
        heartbeat_ms: 100,
        ..Settings::default()
    };
    let mut cluster = Cluster::start(dir, 3, settings);
    let leader = rt.block_on(cluster.wait_for_leader(LEADER_WAIT)).node_id.0;
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    (cluster, leader, follower)
}
