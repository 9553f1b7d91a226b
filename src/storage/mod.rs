//! The storage engine. See docs/FORMAT.md.
pub mod format;
