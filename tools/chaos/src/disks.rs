//! What lies under each node's data directory: the machine's own file system, a `lossyfs` mount
//! (for power losses), or a small tmpfs of its own (for a full disk).
//!
//! - [`DiskModel::Lossy`]: every node's data directory is a `lossyfs` mount over a backing
//!   directory of the run (`backing/<name>`). A power loss kills the node and the daemon at the
//!   same moment: whatever the node wrote and had not synced is gone, exactly as
//!   docs/FORMAT.md's disk assumptions allow. The mount comes back over what was durable.
//! - [`DiskModel::Tmpfs`]: every node's data directory is its own tmpfs of a fixed size. A full
//!   disk is a ballast file that takes every free block (`fallocate`), removed when the fault ends.
//!
//! The two cannot be combined: `lossyfs` does not model allocation (a write it accepted could only
//! fail at the sync that flushes it, which is not a full disk but an I/O error), so a run uses one
//! model, chosen from its fault kinds.
//!
//! Invariants: a mount this module made is undone when the [`Disks`] value is dropped, after the
//! cluster has killed its processes (field order in `Cluster`); a power loss leaves the node's
//! directory mounted again (over the durable state) before it returns.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The file system under the data directories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskModel {
    /// The machine's file system (the data directories are plain directories).
    Plain,
    /// One `lossyfs` mount per node (power-loss faults).
    Lossy,
    /// One tmpfs of this many bytes per node (disk-full faults).
    Tmpfs { size_bytes: u64 },
}

/// Why a disk could not be set up or faulted.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("lossyfs for {path}: {source}")]
    Lossy {
        path: PathBuf,
        source: lossyfs::MountError,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("node {0}'s disk is not a tmpfs of its own: a full disk needs `DiskModel::Tmpfs`")]
    NotTmpfs(u32),
    #[error("node {0}'s disk is not a lossyfs mount: a power loss needs `DiskModel::Lossy`")]
    NotLossy(u32),
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DiskError + 'a {
    move |source| DiskError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The disks of one run.
pub struct Disks {
    model: DiskModel,
    /// Node id -> its data directory (the mount point).
    dirs: BTreeMap<u32, PathBuf>,
    /// Node id -> its live `lossyfs` mount (Lossy only).
    lossy: BTreeMap<u32, lossyfs::Mount>,
    /// Where each node's durable bytes live under `lossyfs`.
    backing: BTreeMap<u32, PathBuf>,
    /// Node ids whose tmpfs is mounted (Tmpfs only).
    tmpfs: Vec<u32>,
}

/// The ballast file name inside a full node's directory; no node file is named like this.
const BALLAST: &str = "chaos-disk-full.ballast";

impl Disks {
    /// Prepares `dirs` (node id -> data directory) under `model`; `run_dir` holds the backing
    /// directories of `lossyfs`.
    ///
    /// # Errors
    /// [`DiskError`] if a directory cannot be made or a mount fails (the mounts already made
    /// are undone by drop).
    pub fn prepare(
        model: DiskModel,
        run_dir: &Path,
        dirs: BTreeMap<u32, PathBuf>,
    ) -> Result<Disks, DiskError> {
        let mut disks = Disks {
            model,
            dirs,
            lossy: BTreeMap::new(),
            backing: BTreeMap::new(),
            tmpfs: Vec::new(),
        };
        let dirs: Vec<(u32, PathBuf)> = disks.dirs.clone().into_iter().collect();
        for (id, dir) in dirs {
            std::fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
            match model {
                DiskModel::Plain => {}
                DiskModel::Lossy => {
                    let backing = run_dir.join("backing").join(format!("node_{id}"));
                    std::fs::create_dir_all(&backing).map_err(io_error("create", &backing))?;
                    let mount = lossyfs::Mount::start(&backing, &dir).map_err(|source| {
                        DiskError::Lossy {
                            path: dir.clone(),
                            source,
                        }
                    })?;
                    disks.backing.insert(id, backing);
                    disks.lossy.insert(id, mount);
                }
                DiskModel::Tmpfs { size_bytes } => {
                    mount_tmpfs(&dir, size_bytes)?;
                    disks.tmpfs.push(id);
                }
            }
        }
        Ok(disks)
    }

    pub fn model(&self) -> DiskModel {
        self.model
    }

    /// Cuts node `id`'s power: the caller has just killed the node; the daemon dies now with
    /// every unsynced byte, and the directory is mounted again over what was durable.
    ///
    /// # Errors
    /// [`DiskError`] if this is not a `lossyfs` run or the mount cannot be made again.
    pub fn power_loss(&mut self, id: u32) -> Result<(), DiskError> {
        let (Some(mount), Some(backing), Some(dir)) = (
            self.lossy.remove(&id),
            self.backing.get(&id),
            self.dirs.get(&id),
        ) else {
            return Err(DiskError::NotLossy(id));
        };
        mount.power_loss().map_err(|source| DiskError::Lossy {
            path: dir.clone(),
            source,
        })?;
        let mount = lossyfs::Mount::start(backing, dir).map_err(|source| DiskError::Lossy {
            path: dir.clone(),
            source,
        })?;
        self.lossy.insert(id, mount);
        Ok(())
    }

    /// Fills node `id`'s tmpfs: a ballast file takes every free block. Returns the ballast's
    /// size in bytes.
    ///
    /// # Errors
    /// [`DiskError`] if this is not a tmpfs run or the ballast cannot be made.
    pub fn fill(&self, id: u32) -> Result<u64, DiskError> {
        let dir = self.tmpfs_dir(id)?;
        let path = dir.join(BALLAST);
        let free = free_bytes(dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error("create", &path))?;
        use std::os::fd::AsRawFd;
        // fallocate(2) reserves the blocks (tmpfs supports it); allocating all that is free may
        // fail for the last few pages other files take meanwhile, so back off until it fits.
        let mut size = free;
        while size > 0 {
            // SAFETY: fallocate on a descriptor we own; no memory is passed.
            let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as libc::off_t) };
            if r == 0 {
                return Ok(size);
            }
            size = size.saturating_sub(1 << 20);
        }
        Ok(0)
    }

    /// Removes node `id`'s ballast (space returns).
    ///
    /// # Errors
    /// [`DiskError`] if the ballast exists but cannot be removed.
    pub fn free(&self, id: u32) -> Result<(), DiskError> {
        let path = self.tmpfs_dir(id)?.join(BALLAST);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(DiskError::Io {
                what: "remove",
                path,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Bytes free on node `id`'s disk.
    ///
    /// # Errors
    /// [`DiskError::Io`] if statvfs fails.
    pub fn free_bytes(&self, id: u32) -> Result<u64, DiskError> {
        match self.dirs.get(&id) {
            Some(dir) => free_bytes(dir),
            None => Ok(0),
        }
    }

    fn tmpfs_dir(&self, id: u32) -> Result<&Path, DiskError> {
        match self.dirs.get(&id) {
            Some(dir) if self.tmpfs.contains(&id) => Ok(dir),
            _ => Err(DiskError::NotTmpfs(id)),
        }
    }
}

impl Drop for Disks {
    fn drop(&mut self) {
        // Clean unmounts: the data stays for a look after the run.
        for (_, mount) in std::mem::take(&mut self.lossy) {
            let _ = mount.unmount();
        }
        for id in std::mem::take(&mut self.tmpfs) {
            if let Some(dir) = self.dirs.get(&id) {
                let _ = unmount(dir);
            }
        }
    }
}

fn c_path(path: &Path) -> Result<CString, DiskError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| DiskError::Io {
        what: "path with a NUL byte",
        path: path.to_path_buf(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })
}

fn mount_tmpfs(dir: &Path, size_bytes: u64) -> Result<(), DiskError> {
    let target = c_path(dir)?;
    let options = CString::new(format!("size={size_bytes},mode=0755"))
        .unwrap_or_else(|_| c"mode=0755".to_owned());
    let source = c"chaos-tmpfs";
    let fstype = c"tmpfs";
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(DiskError::Io {
            what: "mount a tmpfs (needs root) on",
            path: dir.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn unmount(dir: &Path) -> Result<(), DiskError> {
    let target = c_path(dir)?;
    // SAFETY: umount2(2) with a NUL-terminated path; MNT_DETACH never blocks on busy files.
    let r = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    if r != 0 {
        return Err(DiskError::Io {
            what: "unmount",
            path: dir.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn free_bytes(dir: &Path) -> Result<u64, DiskError> {
    let path = c_path(dir)?;
    // SAFETY: statvfs fills a zeroed struct we own from a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    if r != 0 {
        return Err(DiskError::Io {
            what: "statvfs",
            path: dir.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(st.f_bavail * st.f_frsize)
}
