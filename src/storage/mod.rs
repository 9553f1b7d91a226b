//! The storage engine. See docs/FORMAT.md.
pub mod format;
pub mod file;
pub mod uring;
pub mod state;
