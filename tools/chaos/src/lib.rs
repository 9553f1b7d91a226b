//! chaos: starts a cluster of real node processes (rust-raft-log, or etcd for comparison), drives
//! a client workload through the etcd v3 API, injects faults on a seeded schedule, records a
//! history in which every failed request is indeterminate, and checks it for linearizability.
//!
//! # Module map
//! - [`history`]: the recorded operations (the checker's input).
//! - [`checker`]: linearizability per key.

pub mod checker;
pub mod history;
