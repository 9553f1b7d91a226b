//! The short chaos schedule CI runs on every push: a 3-node cluster of real `rust-raft-log`
//! processes in network namespaces, every fault kind once (8 s apart, each held 3 s), the
//! runner's client workload throughout, then the linearizability check of the whole history and
//! the HashKV comparison of the members. The long form is in README.md ("Chaos runs").
//!
//! Needs root, `ip` and `nft` (Debian's iproute2 and nftables; `.ci/run` installs them). Without
//! them the test says why and passes, except under `CI=true`, where it fails: CI must run it.

use std::path::PathBuf;
use std::process::Command;

fn node_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chaos")).with_file_name("rust-raft-log")
}

#[test]
fn every_fault_kind_once_leaves_a_linearizable_history_and_equal_members() {
    if !chaos::run::namespaces_available() {
        let why = "needs root, `ip` and `nft` (network namespaces and nftables)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must run the chaos schedule: {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    let node = node_binary();
    assert!(
        node.exists(),
        "{} is missing: `cargo build --release --bin rust-raft-log` (cargo test --workspace \
         builds it)",
        node.display()
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let seed = std::env::var("CHAOS_SEED").unwrap_or_else(|_| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() % 1_000_000);
        now.to_string()
    });
    let output = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(["--faults", "all", "--duration", "68", "--interval", "8"])
        .args(["--hold", "3", "--seed", &seed])
        .arg("--binary")
        .arg(&node)
        .arg("--dir")
        .arg(dir.path().join("run"))
        .output()
        .expect("the chaos runner starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stderr}{stdout}");
    let result = stdout
        .lines()
        .find(|l| l.starts_with("chaos-result "))
        .unwrap_or_else(|| {
            panic!(
                "seed {seed}: no chaos-result line (exit {:?})",
                output.status
            )
        });
    let field = |name: &str| {
        result
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("seed {seed}: no {name}= in {result}"))
            .to_string()
    };
    assert_eq!(
        field("faults"),
        "8",
        "seed {seed}: every fault kind ran once"
    );
    let answered: u64 = field("answered").parse().expect("a count");
    assert!(
        answered > 1_000,
        "seed {seed}: only {answered} answered requests (reproduce: CHAOS_SEED={seed})"
    );
    assert_eq!(
        field("findings"),
        "0",
        "seed {seed}: the runner found problems (reproduce: CHAOS_SEED={seed})"
    );
    assert_eq!(
        field("verdict"),
        "linearizable",
        "seed {seed}: the history is not linearizable (reproduce: CHAOS_SEED={seed})"
    );
    assert!(
        output.status.success(),
        "seed {seed}: exit {:?}",
        output.status
    );
}
