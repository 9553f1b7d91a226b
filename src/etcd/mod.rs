//! The etcd v3 API of the subset rust-raft-log serves.
//!
//! The wire types (messages, tonic services and clients) are [`crate::etcdpb`], a data module
//! below both this layer and the key-value store, which implements etcd's semantics on them.
//! - [`server`]: the `KV`, `Maintenance.Status` and `Cluster.MemberList` handlers on the node's
//!   gRPC server (validation, proposals, ReadIndex reads, forwarding to the leader), and the list
//!   of served paths the server's filter uses to answer every other method UNIMPLEMENTED by name.
//! - [`concurrency`]: the server-side `Lock` and `Election` services, etcd's recipes run on the
//!   node's own KV service.
//! - [`lease`]: the `Lease` service and the leader's lease clock, which decides expiry.
//! - [`gateway`]: etcd's JSON gateway (`POST /v3/...`, HTTP/1.1) on the same port, calling the
//!   same service methods in-process.
//! - [`members`]: cluster and member ids derived from the static config.
//! - [`watch`]: the `Watch` service and the node's watch hub (events pushed as the store
//!   applies, history replay, slow watchers, progress notifications).
//! - [`watch_frame`]: the wire form of watch responses (a revision's events encoded once for
//!   every watcher that selected them) and the gRPC codec that writes them.
//!
//! The key-value semantics live in [`crate::kv`]; docs/ETCD_COMPAT.md lists every difference.

pub mod cluster;
pub mod concurrency;
pub mod gateway;
pub mod lease;
pub mod members;
pub mod server;
pub mod watch;
pub mod watch_frame;
