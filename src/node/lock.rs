//! The data directory lock: `<log_directory>/node_<id>/LOCK`.
//!
//! Two processes writing one node's log would corrupt it (both append at the same positions, both
//! rewrite `raft_state.meta`). The first process takes an exclusive `flock(2)` on the LOCK file and
//! holds it for its whole life; a second one fails at once with [`LockError::Held`], naming the
//! directory and the pid written by the holder.
//!
//! Why flock: the kernel releases it when the holder's file descriptor closes, including after
//! `kill -9` or a crash, so a stale LOCK file never needs manual cleanup. (flock is per open file
//! description, so two acquisitions inside one process conflict as well; the tests rely on it.)
//! The pid in the file is informative only: it is never used to decide who holds the lock.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside a node's directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "data directory {} is in use by another process{}; lock file {}",
        .directory.display(),
        .holder_pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        .directory.join(LOCK_FILE_NAME).display()
    )]
    Held {
        directory: PathBuf,
        holder_pid: Option<u32>,
    },
    #[error("cannot create data directory {}: {source}", .directory.display())]
    CreateDirectory {
        directory: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Holds the lock until dropped (or until the process ends, however it ends).
#[derive(Debug)]
pub struct DataDirLock {
    // Keeping the file open is what keeps the flock.
    _file: File,
    directory: PathBuf,
}

impl DataDirLock {
    /// Creates `directory` if needed and takes its lock.
    ///
    /// # Errors
    /// `Held` if another process (or another open in this one) holds it; `CreateDirectory` or `Io`
    /// for file system errors.
    pub fn acquire(directory: &Path) -> Result<DataDirLock, LockError> {
        std::fs::create_dir_all(directory).map_err(|source| LockError::CreateDirectory {
            directory: directory.to_path_buf(),
            source,
        })?;
        let path = directory.join(LOCK_FILE_NAME);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor this function owns; no memory is shared with the kernel.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                // Best effort: the holder may be rewriting the pid right now.
                let holder_pid = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(LockError::Held {
                    directory: directory.to_path_buf(),
                    holder_pid,
                });
            }
            return Err(io(err));
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DataDirLock {
            _file: file,
            directory: directory.to_path_buf(),
        })
    }

    pub fn directory(&self) -> &Path {
        &self.directory
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_acquisition_fails_naming_the_holder_and_the_lock_is_freed_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node_dir = dir.path().join("node_1");
        let first = DataDirLock::acquire(&node_dir).expect("first lock");
        match DataDirLock::acquire(&node_dir) {
            Err(LockError::Held {
                directory,
                holder_pid,
            }) => {
                assert_eq!(directory, node_dir);
                assert_eq!(holder_pid, Some(std::process::id()));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        DataDirLock::acquire(&node_dir).expect("free again after drop");
    }

    #[test]
    fn the_error_message_names_directory_pid_and_lock_file() {
        let err = LockError::Held {
            directory: PathBuf::from("raft_logs/node_2"),
            holder_pid: Some(42),
        };
        assert_eq!(
            err.to_string(),
            "data directory raft_logs/node_2 is in use by another process (pid 42); \
             lock file raft_logs/node_2/LOCK"
        );
    }
}
