//! chaos: starts a cluster of real node processes (rust-raft-log, or etcd for comparison), drives
//! a client workload through the etcd v3 API, injects faults on a seeded schedule, records a
//! history in which every failed request is indeterminate, and checks it for linearizability.
//!
//! # Module map
//! - [`net`]: network namespaces, the bridge, nftables partitions.
//! - [`disks`]: what lies under the data directories (`lossyfs` for power losses, a tmpfs per
//!   node for a full disk).
//! - [`cluster`]: the server processes (start, kill, pause, restart) and `Maintenance.Status`.
//! - [`workload`]: the clients and what they record.
//! - [`watchers`]: the watch streams and what they record.
//! - [`faults`]: the fault kinds, their targets, undoing them.
//! - [`membership`]: the membership faults through the Cluster API (replace a member; grow
//!   into a dormant `--spare` slot; shrink, leaving one dormant).
//! - [`run`]: one run from start to verdict.
//! - [`history`]: the recorded operations (the checker's input).
//! - [`checker`]: linearizability per key; [`checker::watch`]: etcd's watch guarantees.
//! - [`report`]: the printed summary and the saved history.

pub mod checker;
pub mod cluster;
pub mod disks;
pub mod faults;
pub mod history;
pub mod membership;
pub mod net;
pub mod report;
pub mod run;
pub mod watchers;
pub mod workload;
