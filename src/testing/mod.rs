//! Deterministic simulation of a Raft cluster and its safety checkers (tests, examples, benches).
//!
//! - [`rng`]: the one seeded random source a run draws every choice from.
//! - [`network`]: latency with jitter, loss, duplication, reordering, directed partitions.
//! - [`disk`]: in-order write completion with latency; what a crash leaves (a torn prefix).
//! - [`checker`]: the Raft safety properties, tagged with their paper sections, checked
//!   incrementally over per-index prefix hashes.
//! - [`cluster`]: N cores on one thread in simulated time, driven by the `Ready` contract.
//! - [`transfer`]: the leadership transfer scenario (thesis §3.10) the transfer tests sweep.
//! - [`sim`]: the randomized fault schedule, the liveness phase and the seed sweep that
//!   `tests/sim_*.rs` run.
//! - [`thread_cpu_ns`]: the clock of the in-process cost measurements (`kv::cost_tests`, the
//!   watch fan-out's cost test, `examples/kv_snapshot_cost.rs`).
//!
//! Nothing here is used by the production binary. See `docs/TESTING.md`.

pub mod checker;
pub mod cluster;
pub mod disk;
pub mod network;
pub mod rng;
pub mod sim;
pub mod transfer;

/// CPU time of the calling thread, in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`): what a cost
/// measurement reads instead of wall time, so that time the thread spends descheduled on a
/// shared machine does not land in whichever round it happened in.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
