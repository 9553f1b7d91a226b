//! Issue 15's "the put history of a membership change is linearizable", with real processes:
//! the runner's clients write, read and compare-and-set throughout while members are replaced
//! through etcd's Cluster API, and the whole history goes through the linearizability checker.
//!
//! ```text
//!   3 nodes (slots 1-3), 8 clients and 1 watcher all along; a fault every 8 s:
//!    8 s  replace-member: a random node (the leader or a follower) is removed (MemberRemove),
//!         killed, its directory wiped; a learner with a new node id is added at its address
//!         (MemberAdd), started with --join, promoted once in sync (MemberPromote, retried
//!         while refused)
//!   16 s  kill-leader (which may be a node that joined: it restarts with --join)
//!   24 s  replace-member   32 s  replace-member (three replacements: 6 node ids in all)
//!   then: linearizability of the history, HashKV equal on the three members, the watch
//!         stream checked against etcd's guarantees
//! ```
//!
//! A replacement that does not complete (a step still refused after 30 s) is a finding and
//! fails the test. Runs in network namespaces when it can (root, `ip`, `nft`), else on
//! 127.0.0.1 (`--loopback`: this fault needs no partition).

#[allow(dead_code)] // `can_run`: this test runs with or without namespaces.
mod common;

#[test]
fn replacing_members_under_load_leaves_a_linearizable_history_and_equal_members() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let seed = common::seed();
    let args = [
        "--faults",
        "replace-member,kill-leader,replace-member",
        "--duration",
        "40",
        "--interval",
        "8",
        "--hold",
        "3",
        "--watchers",
        "1",
    ];
    let loopback = common::loopback_unless_namespaces();
    let result = common::run(&[&args[..], loopback].concat(), &seed, dir.path());
    result.assert_passed(4, 1_000);
    result.assert_watches_kept(1);
}
