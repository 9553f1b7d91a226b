//! The short chaos schedule CI runs on every push: a 3-node cluster of real `rust-raft-log`
//! processes in network namespaces, every fault kind of `--faults all` once (8 s apart, each
//! held 3 s), the runner's client workload throughout, then the linearizability check of the
//! whole history and the HashKV comparison of the members, and 3 watch streams on the workload's
//! prefix (reconnecting to another member whenever theirs fails) checked against etcd's watch
//! guarantees and the history. The long form is in README.md
//! ("Chaos runs"); the storage faults are in `storage_faults.rs`.
//!
//! Needs root, `ip` and `nft` (Debian's iproute2 and nftables; `.ci/run` installs them). Without
//! them the test says why and passes, except under `CI=true`, where it fails: CI must run it.

mod common;

#[test]
fn every_fault_kind_once_leaves_a_linearizable_history_and_equal_members() {
    if !common::can_run(None) {
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let seed = common::seed();
    let args = ["--faults", "all", "--duration", "68", "--interval", "8"];
    let more = ["--hold", "3", "--watchers", "3"];
    let result = common::run(&[&args[..], &more[..]].concat(), &seed, dir.path());
    result.assert_passed(8, 1_000);
    result.assert_watches_kept(3);
}
