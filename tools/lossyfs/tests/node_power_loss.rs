//! One real rust-raft-log node with its log directory on lossyfs, killed at the moment the
//! power goes, again and again (issue 13: "a FUSE power-loss run with the node killed
//! mid-write loses no acknowledged write and every node restarts").
//!
//! ```text
//!  4 clients ──put c<cycle>-w<w>-<seq>──▶ node 1 (single-node cluster, 1 MiB segments)
//!                                              │ io_uring write + fdatasync, mmap reads
//!                                              ▼
//!                                    <tmp>/mnt/raft_logs (lossyfs) ──fsync only──▶ <tmp>/backing
//!  at a random moment: SIGKILL node + SIGKILL lossyfs (power loss) ─▶ remount ─▶ restart node
//!  check: the node serves again, and every put it acknowledged (in any cycle) reads back
//! ```
//!
//! Seeded (LOSSYFS_SEED; printed), LOSSYFS_CYCLES power losses (default 4). Needs FUSE (see
//! tests/power_loss.rs) and the node binary (`cargo build --release --bin rust-raft-log`, or
//! RAFT_NODE_BIN); without them it prints why and passes, except under CI=true.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lossyfs::Mount;
use rust_raft_log::etcdpb::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};
use tonic::transport::{Channel, Endpoint};

const CLIENTS: usize = 4;
/// How long a restarted node may take to serve a put.
const READY_WAIT_MAX: Duration = Duration::from_secs(60);

fn node_binary() -> Option<PathBuf> {
    if let Some(b) = std::env::var_os("RAFT_NODE_BIN") {
        return Some(PathBuf::from(b));
    }
    // target/<profile>/deps/<test> -> target/<profile>/rust-raft-log
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("rust-raft-log");
    p.is_file().then_some(p)
}

fn skip_or_fail(why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "node_power_loss: required under CI: {why}"
    );
    println!("node_power_loss: skipped: {why}");
}

/// splitmix64: every random choice of the run comes from the seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(3))
        .connect_lazy()
}

fn spawn_node(bin: &Path, dir: &Path) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.out"))
        .expect("node output file");
    let err = out.try_clone().expect("clone output file");
    Command::new(bin)
        .args(["--node-id", "1", "--config", "cluster.yaml"])
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn rust-raft-log")
}

fn output_tail(dir: &Path) -> String {
    let all = std::fs::read_to_string(dir.join("node.out")).unwrap_or_default();
    let lines: Vec<&str> = all.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Puts until one is acknowledged; `Err` with why if the node exits or the bound passes.
async fn wait_ready(node: &mut Child, addr: SocketAddr) -> Result<Duration, String> {
    let started = Instant::now();
    let mut client = KvClient::new(channel(addr));
    loop {
        if let Ok(Some(status)) = node.try_wait() {
            return Err(format!("the node exited: {status}"));
        }
        if started.elapsed() > READY_WAIT_MAX {
            return Err(format!("no put acknowledged within {READY_WAIT_MAX:?}"));
        }
        let put = PutRequest {
            key: b"probe".to_vec(),
            value: b"probe".to_vec(),
            ..Default::default()
        };
        if client.put(put).await.is_ok() {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every `c*` key the node holds (a linearizable range read).
async fn read_all(addr: SocketAddr) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, tonic::Status> {
    let answer = KvClient::new(channel(addr))
        .range(RangeRequest {
            key: b"c".to_vec(),
            range_end: b"d".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(answer
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect())
}

#[test]
fn a_node_killed_at_a_power_loss_restarts_and_keeps_every_acknowledged_put() {
    if let Some(why) = lossyfs::mount::fuse_unavailable() {
        return skip_or_fail(&why);
    }
    let Some(bin) = node_binary() else {
        return skip_or_fail("no rust-raft-log binary: cargo build --release --bin rust-raft-log");
    };
    let seed: u64 = std::env::var("LOSSYFS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let cycles: u32 = std::env::var("LOSSYFS_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    println!(
        "node_power_loss: seed {seed}, {cycles} power losses (reproduce with LOSSYFS_SEED={seed})"
    );
    let mut rng = Rng(seed);

    let dir = tempfile::tempdir().expect("tempdir");
    let backing = dir.path().join("backing");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&backing).expect("mkdir");
    std::fs::create_dir(&mnt).expect("mkdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    std::fs::write(
        dir.path().join("cluster.yaml"),
        format!(
            "nodes:\n  - node_id: 1\n    ip_address: \"127.0.0.1\"\n    port: {port}\n\
             cluster_settings:\n  log_directory: \"{}\"\n  log_segment_size: 1048576\n  \
             election_timeout_range:\n    min: 150\n    max: 500\n  heartbeat_interval: 50\n",
            mnt.join("raft_logs").display()
        ),
    )
    .expect("write config");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let acked: Arc<Mutex<Vec<Vec<u8>>>> = Arc::new(Mutex::new(Vec::new()));
    let fail = |what: String| -> ! {
        panic!(
            "{what}\nreproduce with LOSSYFS_SEED={seed}\nnode output (tail):\n{}",
            output_tail(dir.path())
        )
    };

    for cycle in 0..=cycles {
        let mount = Mount::start(&backing, &mnt).expect("mount");
        let mut node = spawn_node(&bin, dir.path());
        let ready = rt.block_on(wait_ready(&mut node, addr));
        let ready_after = match ready {
            Ok(d) => d,
            Err(why) => {
                let _ = node.kill();
                let _ = node.wait();
                drop(mount);
                fail(format!("cycle {cycle}: the node did not come back: {why}"));
            }
        };
        let held = match rt.block_on(read_all(addr)) {
            Ok(h) => h,
            Err(e) => fail(format!("cycle {cycle}: range read failed: {e}")),
        };
        let expected = acked.lock().expect("acked").clone();
        let lost: Vec<String> = expected
            .iter()
            .filter(|k| held.get(*k) != Some(*k))
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        println!(
            "cycle {cycle}: node serving after {ready_after:?}; {} acknowledged puts so far, {} held, {} lost",
            expected.len(),
            held.len(),
            lost.len()
        );
        if !lost.is_empty() {
            let _ = node.kill();
            let _ = node.wait();
            drop(mount);
            fail(format!(
                "cycle {cycle}: {} acknowledged puts lost, first: {:?}",
                lost.len(),
                &lost[..lost.len().min(5)]
            ));
        }
        if cycle == cycles {
            let _ = node.kill();
            let _ = node.wait();
            mount.unmount().expect("unmount");
            break;
        }

        // Clients put until the power goes.
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..CLIENTS {
            let (stop, acked) = (stop.clone(), acked.clone());
            tasks.push(rt.spawn(async move {
                let mut client = KvClient::new(channel(addr));
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("c{cycle:03}-w{w}-{seq:08}").into_bytes();
                    seq += 1;
                    let put = PutRequest {
                        key: key.clone(),
                        value: key.clone(),
                        ..Default::default()
                    };
                    if client.put(put).await.is_ok() {
                        acked.lock().expect("acked").push(key);
                    } else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }));
        }
        let run_ms = rng.range(200, 2500);
        std::thread::sleep(Duration::from_millis(run_ms));
        // The node dies with the machine: SIGKILL it, then cut the power under it at once.
        let _ = node.kill();
        mount.power_loss().expect("power loss");
        let _ = node.wait();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = rt.block_on(t);
        }
        println!(
            "cycle {cycle}: power lost after {run_ms} ms of puts; {} acknowledged in total",
            acked.lock().expect("acked").len()
        );
    }
}
