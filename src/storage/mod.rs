//! The storage engine. See docs/FORMAT.md.
