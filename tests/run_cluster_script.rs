//! `run_cluster.sh` owns the nodes it starts and restarts (issue 16, "the first hour").
//!
//! ```text
//!   ./run_cluster.sh cfg.yaml        (3 nodes on free loopback ports, a temp log directory)
//!     → "node N is the leader"
//!   kill -9 node 2                   → the script prints "restart it with: <script> restart 2 cfg.yaml"
//!   <that command>                   → exit 0, node 2 runs again under a new pid
//!   ./run_cluster.sh cfg.yaml again  → exit 1, "still running", every node's output untouched
//!   SIGINT to the first script       → it stops every node, the restarted one included
//!   → no process of the five pids is left, and every port can be bound again
//! ```

mod process_cluster;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use process_cluster::free_ports;

const WAIT: Duration = Duration::from_secs(40);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("run_cluster.sh")
}

fn command(args: &[&str]) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(script());
    c.args(args)
        .env("RUN_CLUSTER_BIN", env!("CARGO_BIN_EXE_rust-raft-log"))
        .env("RUST_LOG", "info");
    // A test run started in the background by a non-interactive shell (`cargo test &`) inherits
    // SIGINT ignored, and bash cannot trap a signal ignored at its start: the script would never
    // see the Ctrl-C this test sends. Give it the default disposition, as a terminal would.
    // SAFETY: signal(2) is async-signal-safe, and nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    c
}

/// Whether `pid` is a live process: it exists and is not a zombie. (Not its command line, which
/// reads empty for a moment while a process just started execs, e.g. right after `restart`.)
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // "pid (comm) state ...": comm may hold spaces and parentheses, the state follows the
        // last ')'.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn pid_of(logs: &Path, id: u32) -> u32 {
    let text = std::fs::read_to_string(logs.join("run_cluster").join(format!("node_{id}.pid")))
        .expect("pid file");
    text.trim().parse().expect("a pid")
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT, "{what}:\n{}", context());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills the script and any node still running if the test fails midway.
struct Cleanup {
    script: Child,
    pids: Vec<u32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.script.kill();
        let _ = self.script.wait();
        for pid in &self.pids {
            if alive(*pid) {
                // SAFETY: kill(2) on a pid this test started (through the script).
                unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
            }
        }
    }
}

#[test]
fn run_cluster_restarts_and_stops_every_node_it_owns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    let ports = free_ports(3);
    let mut yaml = String::from("nodes:\n");
    for (i, port) in ports.iter().enumerate() {
        yaml += &format!(
            "  - node_id: {}\n    ip_address: \"127.0.0.1\"\n    port: {port}\n",
            i + 1
        );
    }
    yaml += &format!(
        "cluster_settings:\n  log_directory: \"{}\"\n  log_segment_size: 1048576\n",
        logs.display()
    );
    let config = dir.path().join("cfg.yaml");
    std::fs::write(&config, yaml).expect("config");
    let config = config.to_str().expect("utf-8 path").to_string();
    let out_path = dir.path().join("script.out");
    let out = std::fs::File::create(&out_path).expect("script output");
    let child = command(&[&config])
        .stdout(Stdio::from(out.try_clone().expect("clone")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("start run_cluster.sh");
    let script_pid = child.id();
    let mut cleanup = Cleanup {
        script: child,
        pids: Vec::new(),
    };
    let output = || std::fs::read_to_string(&out_path).unwrap_or_default();
    wait_until("no leader", || output().contains("is the leader"), output);
    cleanup.pids = (1..=3).map(|id| pid_of(&logs, id)).collect();

    // kill -9 node 2: the script names the exact restart command.
    let killed = pid_of(&logs, 2);
    // SAFETY: kill(2) on node 2's pid, which the script started.
    unsafe { libc::kill(killed as i32, libc::SIGKILL) };
    let expected = format!("restart it with: {} restart 2 {config}", script().display());
    wait_until(
        "no restart command",
        || output().contains(&expected),
        output,
    );

    let restart = command(&["restart", "2", &config])
        .output()
        .expect("run restart");
    assert!(restart.status.success(), "restart: {restart:?}");
    let restarted = pid_of(&logs, 2);
    assert_ne!(restarted, killed);
    cleanup.pids.push(restarted);
    assert!(
        alive(restarted),
        "the restarted node runs; restart printed {restart:?}; its output:\n{}",
        std::fs::read_to_string(logs.join("node_2.out")).unwrap_or_default()
    );

    // A second start refuses, and leaves the running nodes' output alone.
    let sizes = |id: u32| {
        std::fs::metadata(logs.join(format!("node_{id}.out")))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let before: Vec<u64> = (1..=3).map(sizes).collect();
    let second = command(&[&config]).output().expect("second run");
    let second_err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second start must refuse");
    assert!(second_err.contains("still running"), "{second_err}");
    let after: Vec<u64> = (1..=3).map(sizes).collect();
    for (b, a) in before.iter().zip(&after) {
        assert!(
            a >= b,
            "a node's output was truncated: {before:?} -> {after:?}"
        );
    }

    // Ctrl-C: the script stops every node, the restarted one too.
    // SAFETY: kill(2) on the script this test started.
    unsafe { libc::kill(script_pid as i32, libc::SIGINT) };
    let started = Instant::now();
    loop {
        if let Some(status) = cleanup.script.try_wait().expect("wait") {
            println!("run_cluster.sh exited with {status}");
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "the script did not stop:\n{}\nnode outputs:\n{}",
            output(),
            (1..=3)
                .map(
                    |id| std::fs::read_to_string(logs.join(format!("node_{id}.out")))
                        .unwrap_or_default()
                )
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in &cleanup.pids {
        wait_until(
            &format!("pid {pid} still runs after the script stopped"),
            || !alive(*pid),
            output,
        );
    }
    for port in &ports {
        std::net::TcpListener::bind(("127.0.0.1", *port))
            .unwrap_or_else(|e| panic!("port {port} still in use: {e}\n{}", output()));
    }
    println!("{}", output());
}
