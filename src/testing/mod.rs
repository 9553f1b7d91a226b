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
//!
//! Nothing here is used by the production binary. See `docs/TESTING.md`.

pub mod checker;
pub mod cluster;
pub mod disk;
pub mod network;
pub mod rng;
pub mod sim;
pub mod transfer;
