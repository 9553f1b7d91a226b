//! Metrics and health, checked the way an operator meets them: a real Prometheus server (Debian's
//! `prometheus` 2.42) scrapes a 3-node cluster of real processes every second.
//!
//! ```text
//!   3 nodes, each with a metrics_address (its own loopback port)
//!   a leader is elected; 20 proposals are committed through it
//!   prometheus --web.listen-address=127.0.0.1:<free> (scrape interval 1 s, temp TSDB)
//!     /api/v1/query?query=etcd_server_has_leader              → 1 on each of the 3 targets
//!     /api/v1/query?query=etcd_disk_wal_fsync_duration_seconds_count → > 0 on each target
//!     /api/v1/query?query=etcd_server_is_leader               → 1 on exactly one target
//!     /api/v1/query?query=grpc_server_handled_total{grpc_method="Propose",grpc_code="OK"}
//!                                                             → >= 20 on the leader
//!   each node's /health → 200 {"health":"true","reason":""}; /livez, /readyz 200; /version
//!   prometheus stops
//!   two nodes are killed: the last one's /health turns 503 "false" and it logs, within its
//!   first NO_LEADER_LOG_INTERVAL, who it has not heard from
//! ```
//!
//! Without `prometheus` on the PATH the Prometheus half is skipped with a printed reason, unless
//! `CI=true` (then it fails: .ci/run installs it).

mod etcdctl_common;
mod process_cluster;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcdctl_common::{runtime, LEADER_WAIT};
use process_cluster::{free_ports, propose, Cluster, Settings};
use rust_raft_log::driver::ProposeOutcome;

const WAIT: Duration = Duration::from_secs(40);

/// One HTTP/1.0 GET: (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// `(instance, value)` of every sample in a Prometheus instant-query answer (the JSON of
/// `/api/v1/query`), read without a JSON library: each result is
/// `{"metric":{...,"instance":"<i>",...},"value":[<ts>,"<v>"]}`.
fn samples(json: &str) -> Vec<(String, f64)> {
    json.split("{\"metric\":")
        .skip(1)
        .filter_map(|result| {
            let instance = result
                .split("\"instance\":\"")
                .nth(1)?
                .split('"')
                .next()?
                .to_string();
            let value = result
                .split("\"value\":[")
                .nth(1)?
                .split(",\"")
                .nth(1)?
                .split('"')
                .next()?
                .parse()
                .ok()?;
            Some((instance, value))
        })
        .collect()
}

fn query(prometheus: SocketAddr, expr: &str) -> Vec<(String, f64)> {
    let encoded: String = expr
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    match http_get(prometheus, &format!("/api/v1/query?query={encoded}")) {
        Ok((200, body)) => samples(&body),
        _ => Vec::new(),
    }
}

/// Polls `expr` until `accept` likes its samples; panics with the last answer after [`WAIT`].
fn wait_for(prometheus: SocketAddr, expr: &str, accept: impl Fn(&[(String, f64)]) -> bool) {
    let started = Instant::now();
    loop {
        let got = query(prometheus, expr);
        if accept(&got) {
            println!("prometheus: {expr} = {got:?}");
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "prometheus never answered {expr} as expected; last: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The Prometheus server of the test; killed when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_prometheus(dir: &std::path::Path, targets: &[SocketAddr]) -> (Prometheus, SocketAddr) {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_ports(1)[0]));
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: raftlog\n    \
         static_configs:\n      - targets: [{}]\n",
        list.join(", ")
    );
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).expect("write prometheus.yml");
    let log = std::fs::File::create(dir.join("prometheus.out")).expect("log file");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(Stdio::from(log.try_clone().expect("clone")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start prometheus");
    (Prometheus(child), listen)
}

fn prometheus_available() -> bool {
    let found = Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "prometheus is not installed (Debian package `prometheus`; .ci/run installs it)"
        );
        println!("SKIPPED the Prometheus half: `prometheus` is not on the PATH (apt-get install prometheus)");
    }
    found
}

#[test]
fn prometheus_scrapes_every_node_and_health_follows_the_leader() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings {
        metrics: true,
        ..Settings::default()
    };
    let mut cluster = Cluster::start(dir.path(), 3, settings);
    let leader = rt.block_on(cluster.wait_for_leader(LEADER_WAIT)).node_id.0;
    let mut client = cluster.client(leader);
    for i in 0..20u32 {
        let outcome = rt
            .block_on(propose(&mut client, i.to_be_bytes().to_vec(), WAIT))
            .expect("propose");
        assert!(
            matches!(outcome, ProposeOutcome::Committed { .. }),
            "{outcome:?}"
        );
    }
    let targets: Vec<SocketAddr> = cluster.metrics_addrs.values().copied().collect();
    assert_eq!(targets.len(), 3);

    if prometheus_available() {
        let (prometheus, at) = start_prometheus(dir.path(), &targets);
        let every_target = |got: &[(String, f64)], ok: &dyn Fn(f64) -> bool| {
            targets
                .iter()
                .all(|t| got.iter().any(|(i, v)| *i == t.to_string() && ok(*v)))
        };
        wait_for(at, "etcd_server_has_leader", |got| {
            every_target(got, &|v| v == 1.0)
        });
        wait_for(at, "etcd_disk_wal_fsync_duration_seconds_count", |got| {
            every_target(got, &|v| v > 0.0)
        });
        wait_for(at, "etcd_server_is_leader", |got| {
            got.len() == 3 && got.iter().filter(|(_, v)| *v == 1.0).count() == 1
        });
        let leader_target = cluster.metrics_addrs[&leader].to_string();
        wait_for(
            at,
            "grpc_server_handled_total{grpc_method=\"Propose\",grpc_code=\"OK\"}",
            |got| got.iter().any(|(i, v)| *i == leader_target && *v >= 20.0),
        );
        drop(prometheus);
    }

    for (id, addr) in &cluster.metrics_addrs {
        let (status, body) = http_get(*addr, "/health").expect("GET /health");
        assert_eq!(
            (status, body.as_str()),
            (200, r#"{"health":"true","reason":""}"#),
            "node {id}"
        );
        assert_eq!(http_get(*addr, "/livez").expect("livez").0, 200);
        assert_eq!(http_get(*addr, "/readyz").expect("readyz").0, 200);
        let (status, body) = http_get(*addr, "/version").expect("GET /version");
        assert_eq!(
            (status, body.as_str()),
            (200, r#"{"etcdserver":"3.4.0","etcdcluster":"3.4.0"}"#)
        );
    }

    // Alone, the last node loses its leader: /health says so, and so does its log.
    let last = 3;
    for id in [1, 2] {
        cluster.kill(id);
    }
    let addr = cluster.metrics_addrs[&last];
    let started = Instant::now();
    loop {
        let (status, body) = http_get(addr, "/health").expect("GET /health");
        if status == 503 {
            assert_eq!(body, r#"{"health":"false","reason":"RAFT NO LEADER"}"#);
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "node {last} still reports a leader: {status} {body}\n{}",
            cluster.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http_get(addr, "/readyz").expect("readyz").0, 503);
    assert_eq!(http_get(addr, "/livez").expect("livez").0, 200);
    cluster.wait_for_output(last, "no leader for", Duration::from_secs(25));
    let output = cluster.output(last);
    let line = output
        .lines()
        .find(|l| l.contains("no leader for"))
        .unwrap_or_default();
    assert!(
        line.contains("needs 2 of 3 votes")
            && line.contains("node 1 (")
            && line.contains("node 2 ("),
        "{line}"
    );
    println!("the lone node says: {line}");
}
