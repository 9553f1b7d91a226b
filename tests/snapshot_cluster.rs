//! Snapshots with real processes (issue 12): a 3-node cluster that snapshots every 500 applied
//! entries and keeps 100 catch-up entries compacts its logs; a follower that was down while the
//! leader compacted catches up through InstallSnapshot (gRPC) and then holds exactly what the
//! others hold; a restarted node starts from its newest snapshot plus the log after it, and refuses
//! to start when every snapshot is damaged and the log no longer reaches back to index 1; kill -9
//! during snapshot writes and installs loses no acknowledged put.

mod process_cluster;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use process_cluster::{channel, kv_state, Cluster, Settings};
use rust_raft_log::etcdpb::etcdserverpb::{kv_client::KvClient, PutRequest};
use tonic::transport::Channel;

const PUTS: usize = 3000;
const KEYS: usize = 64;
const WAIT: Duration = Duration::from_secs(30);

/// `PUTS` puts of about 1 KiB over `KEYS` keys through node `addr`, 8 at a time: about 3 MiB of
/// log, three 1 MiB segments, so compaction has whole segments to free.
async fn put_load(addr: SocketAddr, first: usize) {
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let mut client = KvClient::new(channel(addr));
        tasks.push(tokio::spawn(async move {
            for i in (first + worker..first + PUTS).step_by(8) {
                let request = PutRequest {
                    key: format!("key-{:02}", i % KEYS).into_bytes(),
                    value: format!("value-{i}-{}", "x".repeat(1024)).into_bytes(),
                    ..PutRequest::default()
                };
                client.put(request).await.expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("put task");
    }
}

fn segment_bases(dir: &Path) -> Vec<u64> {
    let mut bases: Vec<u64> = std::fs::read_dir(dir)
        .expect("node dir")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("segment_")?
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .collect();
    bases.sort_unstable();
    bases
}

#[test]
fn a_follower_behind_the_compaction_catches_up_through_install_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings {
        segment_bytes: 1 << 20,
        extra: "  snapshot_entries: 500\n  snapshot_catchup_entries: 100\n".to_string(),
        ..Settings::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut cluster = Cluster::start(dir.path(), 3, settings);
    let leader = rt.block_on(cluster.wait_for_leader(WAIT)).node_id.0;
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    cluster.kill(follower);
    let leader_addr = cluster.addrs[&leader];
    rt.block_on(put_load(leader_addr, 0));

    // The leader snapshotted and compacted: its log no longer starts at index 1.
    cluster.wait_for_output(leader, "📸 Snapshot at index", WAIT);
    let bases = segment_bases(&cluster.node_dir(leader));
    assert!(
        bases.first().is_some_and(|b| *b > 1),
        "the leader's log was not compacted: segments {bases:?}"
    );
    let follower_bases = segment_bases(&cluster.node_dir(follower));
    let follower_last_segment = follower_bases.last().copied().unwrap_or(1);

    // The follower comes back: its next entry was compacted away, so it gets the snapshot.
    cluster.spawn(follower);
    cluster.wait_for_output(follower, "Installed the leader's snapshot", WAIT);
    let started = Instant::now();
    let expected = rt.block_on(kv_state(leader_addr, true));
    loop {
        let got = rt.block_on(kv_state(cluster.addrs[&follower], true));
        if got == expected {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "the follower never reached the leader's state (revision {} against {})",
            got.0,
            expected.0
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(expected.1.len(), KEYS);
    let bases = segment_bases(&cluster.node_dir(follower));
    assert!(
        bases.first().is_some_and(|b| *b > follower_last_segment),
        "the follower's old log is still there: {bases:?} (it had up to {follower_last_segment})"
    );

    // A restart starts from the newest snapshot and the log after it, and serves the same state.
    assert!(
        cluster.terminate(leader, WAIT).is_some(),
        "the leader stopped"
    );
    cluster.spawn(leader);
    cluster.wait_for_output(leader, "📸 Restored the snapshot at index", WAIT);
    let started = Instant::now();
    loop {
        let got = rt.block_on(kv_state(leader_addr, true));
        if got == expected {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "the restarted node serves another state (revision {} against {})",
            got.0,
            expected.0
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Every snapshot damaged while the log no longer reaches back to index 1: starting would
    // serve less than was acknowledged, so the node refuses, naming the way out.
    assert!(
        cluster.terminate(leader, WAIT).is_some(),
        "the leader stopped"
    );
    let node_dir = cluster.node_dir(leader);
    assert!(
        segment_bases(&node_dir).first().is_some_and(|b| *b > 1),
        "the log still starts at 1"
    );
    let mut damaged = 0;
    for entry in std::fs::read_dir(&node_dir).expect("node dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "snap") {
            let mut bytes = std::fs::read(&path).expect("read snapshot");
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
            std::fs::write(&path, bytes).expect("write snapshot");
            damaged += 1;
        }
    }
    assert!(damaged >= 1, "no snapshot file to damage");
    cluster.spawn(leader);
    let started = Instant::now();
    let status = loop {
        if let Some((_, status)) = cluster.exited().into_iter().find(|(id, _)| *id == leader) {
            break status;
        }
        assert!(
            started.elapsed() < WAIT,
            "a node with every snapshot damaged kept running:\n{}",
            cluster.output(leader)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = cluster.output(leader);
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("is damaged") && output.contains("starting would lose acknowledged writes"),
        "{output}"
    );
}

/// One put's outcome as its client saw it: acknowledged at `revision`, or not (failed or timed
/// out: indeterminate, it may or may not have been applied).
struct Acked {
    key: Vec<u8>,
    value: Vec<u8>,
    revision: i64,
}

/// `count` puts spread over `KEYS` keys, 4 at a time, each to a node of `addrs` in turn (a dead
/// node or a follower without a leader fails the put: indeterminate). Values name the round and
/// the put, so every acknowledged value is unique.
async fn tolerant_puts(addrs: Vec<SocketAddr>, round: u64, count: usize) -> Vec<Acked> {
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let addrs = addrs.clone();
        tasks.push(tokio::spawn(async move {
            let mut clients: Vec<KvClient<Channel>> =
                addrs.iter().map(|a| KvClient::new(channel(*a))).collect();
            let mut acked = Vec::new();
            for i in (worker..count).step_by(4) {
                let key = format!("key-{:02}", i % KEYS).into_bytes();
                let value = format!("round-{round}-put-{i}-{}", "y".repeat(512)).into_bytes();
                let client = &mut clients[i % addrs.len()];
                let request = PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    ..PutRequest::default()
                };
                let answer =
                    tokio::time::timeout(Duration::from_secs(2), client.put(request)).await;
                if let Ok(Ok(answer)) = answer {
                    if let Some(header) = answer.into_inner().header {
                        acked.push(Acked {
                            key,
                            value,
                            revision: header.revision,
                        });
                    }
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("put task"));
    }
    acked
}

/// kill -9 while snapshots are written and while they are installed: a 3-node cluster that
/// snapshots every 100 entries over 64 KiB segments, rounds of a put load during which a node
/// (any, the leader included) is killed at a random moment, or a follower is kept down until the
/// leader compacted past it and killed again a random few milliseconds after it came back (in
/// the middle of receiving or installing the snapshot, when the timing hits). At the end every
/// node serves the same state and no acknowledged put was lost: for each key the value read is
/// the newest acknowledged one, or a later write. `SNAPSHOT_CRASH_ROUNDS` (default 8) sets the
/// rounds, `SNAPSHOT_CRASH_SEED` replays a run (printed on failure).
#[test]
fn kill_nine_during_snapshot_writes_and_installs_loses_no_acknowledged_put() {
    let seed = std::env::var("SNAPSHOT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let rounds: u64 = std::env::var("SNAPSHOT_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let mut rng = seed | 1;
    let mut next = move |n: u64| {
        // xorshift64*: enough to pick victims and delays reproducibly.
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    };
    let ctx = format!("reproduce with SNAPSHOT_CRASH_SEED={seed} SNAPSHOT_CRASH_ROUNDS={rounds}");
    eprintln!("snapshot crash test: {ctx}");

    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings {
        segment_bytes: 64 << 10,
        extra: "  snapshot_entries: 100\n  snapshot_catchup_entries: 20\n".to_string(),
        ..Settings::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut cluster = Cluster::start(dir.path(), 3, settings);
    let ids = cluster.ids();
    let mut acked: Vec<Acked> = Vec::new();
    for round in 0..rounds {
        let leader = rt.block_on(cluster.wait_for_leader(WAIT)).node_id.0;
        let followers: Vec<u32> = ids.iter().copied().filter(|id| *id != leader).collect();
        let live: Vec<SocketAddr> = ids.iter().map(|id| cluster.addrs[id]).collect();
        if next(2) == 0 {
            // A kill during the load: whoever it hits may be writing a snapshot.
            let victim = ids[next(ids.len() as u64) as usize];
            let delay = Duration::from_millis(next(600));
            let load = rt.spawn(tolerant_puts(live, round, 600));
            std::thread::sleep(delay);
            cluster.kill(victim);
            acked.extend(rt.block_on(load).expect("load"));
            cluster.spawn(victim);
        } else {
            // A follower misses enough to need the snapshot, then dies while getting it.
            let victim = followers[next(followers.len() as u64) as usize];
            cluster.kill(victim);
            let others: Vec<SocketAddr> = ids
                .iter()
                .filter(|id| **id != victim)
                .map(|id| cluster.addrs[id])
                .collect();
            acked.extend(rt.block_on(tolerant_puts(others, round, 400)));
            cluster.spawn(victim);
            std::thread::sleep(Duration::from_millis(next(120)));
            cluster.kill(victim);
            cluster.spawn(victim);
        }
        let gone = cluster.exited();
        assert!(
            gone.is_empty(),
            "nodes exited on their own: {gone:?}\n{ctx}\n{}",
            cluster.describe()
        );
    }

    // Every node reaches one state, with every acknowledged put in it.
    let leader = rt.block_on(cluster.wait_for_leader(WAIT)).node_id.0;
    let expected = rt.block_on(kv_state(cluster.addrs[&leader], true));
    let started = Instant::now();
    for id in &ids {
        loop {
            let got = rt.block_on(kv_state(cluster.addrs[id], true));
            if got == expected {
                break;
            }
            assert!(
                started.elapsed() < WAIT,
                "node {id} never reached the leader's state (revision {} against {})\n{ctx}\n{}",
                got.0,
                expected.0,
                cluster.describe()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let mut newest: std::collections::HashMap<&[u8], &Acked> = std::collections::HashMap::new();
    for a in &acked {
        let slot = newest.entry(&a.key).or_insert(a);
        if a.revision > slot.revision {
            *slot = a;
        }
    }
    assert!(!newest.is_empty(), "no put was acknowledged\n{ctx}");
    for (key, a) in &newest {
        let found = expected.1.iter().find(|kv| kv.0 == *key);
        let Some((_, value, _, mod_revision, _)) = found else {
            panic!(
                "acknowledged key {} is gone\n{ctx}",
                String::from_utf8_lossy(key)
            );
        };
        assert!(
            *mod_revision > a.revision || (*mod_revision == a.revision && *value == a.value),
            "key {}: acknowledged at revision {}, the cluster holds revision {}\n{ctx}",
            String::from_utf8_lossy(key),
            a.revision,
            mod_revision
        );
    }
    let outputs: String = ids.iter().map(|id| cluster.output(*id)).collect();
    eprintln!(
        "{} rounds, {} acknowledged puts; node logs: {} snapshots taken, {} unfinished snapshot \
         files removed at start, {} snapshots installed from a leader, {} restored at start, {} \
         logs reset to a snapshot at start",
        rounds,
        acked.len(),
        outputs.matches("📸 Snapshot at index").count(),
        outputs.matches("(an unfinished snapshot)").count(),
        outputs.matches("Installed the leader's snapshot").count(),
        outputs.matches("📸 Restored the snapshot").count(),
        outputs.matches("resetting the log to it").count(),
    );
}
