//! Runs the `chaos` binary for a test and reads its `chaos-result` line.

use std::path::PathBuf;
use std::process::Command;

/// The node binary cargo built beside the runner.
pub fn node_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chaos")).with_file_name("rust-raft-log")
}

/// Whether the test can run here; otherwise prints why and returns false, except under
/// `CI=true`, where it fails (CI must run it). `also` names a further requirement.
pub fn can_run(also: Option<&str>) -> bool {
    let why = if !chaos::run::namespaces_available() {
        Some("needs root, `ip` and `nft` (network namespaces and nftables)".to_string())
    } else {
        also.map(str::to_string)
    };
    match why {
        None => true,
        Some(why) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI must run the chaos schedule: {why}"
            );
            eprintln!("skipped: {why}");
            false
        }
    }
}

/// For schedules that need no partition: no extra flag where network namespaces work, else
/// `--loopback` (nodes on 127.0.0.1), saying so.
#[allow(dead_code)] // Only the schedules that need no partition use it.
pub fn loopback_unless_namespaces() -> &'static [&'static str] {
    if chaos::run::namespaces_available() {
        &[]
    } else {
        eprintln!("no network namespaces here (needs root, `ip`, `nft`): running on 127.0.0.1");
        &["--loopback"]
    }
}

/// The seed: `CHAOS_SEED`, or one from the clock (printed in every failure message).
pub fn seed() -> String {
    std::env::var("CHAOS_SEED").unwrap_or_else(|_| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() % 1_000_000);
        now.to_string()
    })
}

/// One run's `chaos-result` fields.
pub struct Result {
    pub seed: String,
    pub line: String,
    pub success: bool,
}

impl Result {
    pub fn field(&self, name: &str) -> String {
        self.line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("seed {}: no {name}= in {}", self.seed, self.line))
            .to_string()
    }

    /// The checks every run must pass: `faults` faults ran, more than `answered_min` requests
    /// were answered, no finding, a linearizable history, exit 0.
    pub fn assert_passed(&self, faults: usize, answered_min: u64) {
        let seed = &self.seed;
        assert_eq!(
            self.field("faults"),
            faults.to_string(),
            "seed {seed}: every fault ran"
        );
        let answered: u64 = self.field("answered").parse().expect("a count");
        assert!(
            answered > answered_min,
            "seed {seed}: only {answered} answered requests (reproduce: CHAOS_SEED={seed})"
        );
        assert_eq!(
            self.field("findings"),
            "0",
            "seed {seed}: the runner found problems (reproduce: CHAOS_SEED={seed})"
        );
        assert_eq!(
            self.field("verdict"),
            "linearizable",
            "seed {seed}: the history is not linearizable (reproduce: CHAOS_SEED={seed})"
        );
        assert!(self.success, "seed {seed}: the runner failed");
    }

    /// The watch checks: `watchers` streams ran, delivered events, and broke none of etcd's
    /// watch guarantees (the runner prints the anomalies; its run directory keeps
    /// `watches.jsonl`).
    pub fn assert_watches_kept(&self, watchers: u32) {
        let seed = &self.seed;
        assert_eq!(
            self.field("watchers"),
            watchers.to_string(),
            "seed {seed}: every watcher recorded"
        );
        let events: u64 = self.field("watch_events").parse().expect("a count");
        assert!(
            events > 0,
            "seed {seed}: the watchers received no event (reproduce: CHAOS_SEED={seed})"
        );
        assert_eq!(
            self.field("watch_anomalies"),
            "0",
            "seed {seed}: a watch guarantee was broken (reproduce: CHAOS_SEED={seed})"
        );
    }
}

/// Runs `chaos ARGS --seed SEED --binary NODE --dir DIR/run` and returns its result line.
pub fn run(args: &[&str], seed: &str, dir: &std::path::Path) -> Result {
    let node = node_binary();
    assert!(
        node.exists(),
        "{} is missing: `cargo build --release --bin rust-raft-log` (cargo test --workspace \
         builds it)",
        node.display()
    );
    let output = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(args)
        .args(["--seed", seed])
        .arg("--binary")
        .arg(&node)
        .arg("--dir")
        .arg(dir.join("run"))
        .output()
        .expect("the chaos runner starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stderr}{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("chaos-result "))
        .unwrap_or_else(|| {
            panic!(
                "seed {seed}: no chaos-result line (exit {:?})",
                output.status
            )
        })
        .to_string();
    Result {
        seed: seed.to_string(),
        line,
        success: output.status.success(),
    }
}
