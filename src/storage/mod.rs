//! The storage engine. See docs/FORMAT.md.
pub mod format;
pub mod file;
pub mod uring;
pub mod state;
pub mod log;
pub mod segment;
pub mod writer;
pub use log::{EntryRef, LogConfig, LogError, RaftLog};
pub use writer::{LogWriter, Pending};
