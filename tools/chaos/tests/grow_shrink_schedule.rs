//! Issue 15's "done when", with real processes: a 3-node cluster under a steady load (puts,
//! linearizable gets, compare-and-sets and deletes from 8 clients, and a watcher) grows to 5
//! voters (learner, then promote), replaces one member (remove it, wipe its directory, add a
//! fresh one), and shrinks back to 3, removing the leader once; then no acknowledged write is
//! lost and the history is linearizable (the checker, fed every request and a final read of
//! every key), HashKV agrees across the 3 final members, and the watch stream keeps etcd's
//! guarantees.
//!
//! ```text
//!   slots 1-3 members, slots 4-5 dormant (--spare 2); a fault every 5 s:
//!    5 s  grow: MemberAdd learner at slot 4, start it with --join, MemberPromote (retried
//!         while refused as not in sync): 4 voters
//!   10 s  grow: the same at slot 5: 5 voters (MemberList must show 5 non-learners)
//!   15 s  replace-member: a random member removed, killed, wiped; a fresh node id added at
//!         its address as a learner, started with --join, promoted
//!   20 s  shrink: MemberRemove of the leader; it must exit by itself with status 78; its
//!         slot becomes dormant: 4 voters
//!   25 s  shrink: the same for a random follower: 3 voters
//! ```
//!
//! A membership step still refused after 30 s, or a removed node that does not exit with
//! status 78 within 20 s, is a finding and fails the test. Runs in network namespaces when it
//! can (root, `ip`, `nft`), else on 127.0.0.1 (`--loopback`: these faults need no partition).
//! About 40 s on 2 cores.

#[allow(dead_code)] // `can_run`: this test runs with or without namespaces.
mod common;

#[test]
fn growing_to_five_replacing_and_shrinking_to_three_under_load_is_linearizable() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let seed = common::seed();
    let args = [
        "--faults",
        "grow,grow,replace-member,shrink,shrink",
        "--spare",
        "2",
        // Faults at 5, 10, 15, 20 and 25 s; the schedule never starts a sixth (30 + 1 > 30).
        "--duration",
        "30",
        "--interval",
        "5",
        "--hold",
        "1",
        "--watchers",
        "1",
    ];
    let loopback = common::loopback_unless_namespaces();
    let result = common::run(&[&args[..], loopback].concat(), &seed, dir.path());
    result.assert_passed(5, 1_000);
    result.assert_watches_kept(1);
    // Not vacuous: the membership really went through 5 voters, back to 3, and a leader was
    // among the removed.
    assert_eq!(
        result.field("voters_max"),
        "5",
        "seed {seed}: MemberList never showed 5 voters (reproduce: CHAOS_SEED={seed})"
    );
    assert_eq!(
        result.field("final_members"),
        "3",
        "seed {seed}: the cluster did not shrink back to 3 (reproduce: CHAOS_SEED={seed})"
    );
    let leaders_removed: u32 = result.field("leaders_removed").parse().expect("a count");
    assert!(
        leaders_removed >= 1,
        "seed {seed}: no removal took the leader (reproduce: CHAOS_SEED={seed})"
    );
}
