//! The storage engine: the segmented Raft log and the persistent Raft state. docs/FORMAT.md is
//! the authoritative description of the bytes and of what each operation does for crash safety.
//!
//! Layers, top to bottom:
//! - [`writer`]: `LogWriter`, group commit over one `RaftLog` (one fdatasync per batch).
//! - [`log`]: `RaftLog`, the segments in a `BTreeMap` by base index: open and recovery, append,
//!   mmap reads, `truncate_suffix`, `compact_prefix`, rotation, poisoning.
//! - [`segment`]: `LogFileSegment` (one file) and `scan_segment`, the pure torn-vs-corrupt scan
//!   that recovery and `segdump` share.
//! - [`state`]: `RaftState` in `raft_state.meta`.
//! - [`format`](mod@format): the byte layouts (header, frame, naming), no I/O.
//! - [`file`](mod@file): the seam below all of it (`Vfs`, `LogFile`) and `SimFs`, the simulated disk for
//!   power-loss tests; [`uring`]: the production implementation (io_uring writes linked to
//!   fdatasync, mmap reads).
pub mod file;
pub mod format;
pub mod log;
pub mod segment;
pub mod state;
pub mod uring;
pub mod writer;
pub use log::{EntryRef, LogConfig, LogError, RaftLog};
pub use writer::{LogWriter, Pending};
