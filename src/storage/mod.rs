//! The storage engine. See docs/FORMAT.md.
pub mod file;
pub mod format;
pub mod log;
pub mod segment;
pub mod state;
pub mod uring;
pub mod writer;
pub use log::{EntryRef, LogConfig, LogError, RaftLog};
pub use writer::{LogWriter, Pending};
