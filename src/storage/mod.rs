//! The storage engine: the segmented Raft log and the persistent Raft state. docs/FORMAT.md is
//! the authoritative description of the bytes and of what each operation does for crash safety.
//!
//! Layers, top to bottom:
//! - [`engine`]: the durable append engine (`Engine` + `EngineTask`): group commit of a driver's
//!   write batches over one `RaftLog` and one `RaftState`, the one write path of the node, the
//!   benches, the crash tests and the simulator; `Durable`, the trait a Ready driver writes
//!   through (also implemented by the in-memory `MemDurable`).
//! - [`log`]: `RaftLog`, the segments in a `BTreeMap` by base index: open and recovery, append,
//!   mmap reads, `truncate_suffix`, `compact_prefix`, rotation, poisoning.
//! - [`segment`]: `LogFileSegment` (one file) and `scan_segment`, the pure torn-vs-corrupt scan
//!   that recovery and `segdump` share.
//! - [`state`]: `RaftState` in `raft_state.meta`.
//! - [`snapshot`]: snapshot files (`snapshot_<index>.snap`): the writer, the checking reader,
//!   the receiver of a transfer, and the directory helpers recovery uses; [`sha256`]: the
//!   digest after a snapshot saved through etcd's `Maintenance.Snapshot`.
//! - [`format`](mod@format): the byte layouts (header, frame, naming), no I/O.
//! - [`file`](mod@file): the seam below all of it (`Vfs`, `LogFile`, and `AppendFile` /
//!   `ReadFile` for files of unknown size); [`simfs`]: `SimFs`, the
//!   simulated disk of the power-loss tests and the simulator; [`uring`]: the production
//!   implementation (io_uring writes linked to fdatasync, mmap reads).
pub mod engine;
pub mod file;
pub mod format;
pub mod log;
pub mod segment;
pub mod sha256;
pub mod simfs;
pub mod snapshot;
pub mod state;
pub mod uring;
pub use log::{EntryRef, LogConfig, LogError, RaftLog};
