//! rust-raft-log: a Raft consensus node for Linux built on a segmented io_uring + mmap log.
//!
//! # Module map
//! - [`config`]: the seed's YAML cluster config, its defaults and validation.
//! - [`types`]: `NodeId`, `Term`, `LogIndex`, `LogEntry`, shared by every layer.
//! - [`storage`]: the on-disk segmented log (`RaftLog`), the persistent Raft state (`RaftState`),
//!   the file seam below them (io_uring in production, a simulated disk in tests).
//! - [`raft`]: the pure consensus core (`RaftNode`): no I/O, clocks or global randomness.
//! - [`driver`]: the Ready driver (mailbox, reply slots, proposals, read grants, durability
//!   ordering) that the node's event loop and the simulator both run.
//! - [`testing`]: the deterministic cluster simulator and safety checkers (tests and benches only).
//! - [`etcdpb`]: the etcd v3 wire types generated from `proto/etcd/` (packages `mvccpb` and
//!   `etcdserverpb`): data only, used by the key-value store and the etcd API alike.
//! - [`etcd`]: the etcd v3 API the node serves (handlers, forwarding, member ids).
//! - [`grpc`]: the wire protocol (`proto/raft.proto`), core <-> proto conversion, the tonic server
//!   and the peer clients. No protocol logic.
//! - [`state_machine`]: the `StateMachine` trait the node applies committed entries to, and the
//!   `Snapshot` trait (a view of the whole state taken in O(1), written out as a stream on another
//!   thread, and read back from a stream).
//! - [`kv`]: the key-value state machine with etcd v3 semantics (`KvStore`), request validation
//!   with etcd's limits and errors, the command bytes in the log (responses are typed values).
//! - [`metrics`]: the node's Prometheus metrics and health endpoints on their own HTTP listener.
//! - [`timeline`]: the opt-in latency timeline (`RAFT_TIMELINE=<dir>`), marked by every layer.
//! - [`node`]: one process on the tokio-uring runtime: startup (bind, data directory lock,
//!   tracing), the event loop that drives the core, persists its output and answers RPCs.

pub mod config;
pub mod driver;
pub mod etcd;
pub mod etcdpb;
pub mod grpc;
pub mod kv;
pub mod metrics;
pub mod mutation;
pub mod node;
pub mod raft;
pub mod state_machine;
pub mod storage;
pub mod testing;
pub mod timeline;
pub mod types;
