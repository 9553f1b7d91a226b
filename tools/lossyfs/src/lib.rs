//! lossyfs: a FUSE file system that loses unsynced data on a "power loss" (issue 13), in the
//! spirit of LazyFS.
//!
//! A daemon ([`fs::LossyFs`], served by the `lossyfs` binary) passes a backing directory through
//! a mount point, but keeps every write, size change and file name change in memory until the
//! application makes it durable (`fsync`/`fdatasync` of the file for data and size, `fsync` of
//! the directory for names). The backing directory only ever holds durable state, so killing the
//! daemon is a power loss: what it held in memory is gone, and a fresh mount shows what a
//! rebooted machine would find. README.md beside this crate states the model and its limits.
//!
//! Modules:
//! - [`overlay`]: one file's dirty bytes and size over its backing file (pure, unit tested);
//! - [`fs`]: the namespace, the inode table, and the `fuser::Filesystem` implementation;
//! - [`mount`]: [`Mount`], the library handle the tests and the chaos runner use
//!   (`start`, `power_loss`, `unmount`).

pub mod fs;
pub mod mount;
pub mod overlay;

pub use mount::{Mount, MountError};
