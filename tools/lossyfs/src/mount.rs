//! The library side of a mount: start the `lossyfs` daemon on a directory, cut its power, or
//! shut it down cleanly.
//!
//! Owns: one daemon process per [`Mount`], and the mount point while it lives.
//!
//! Invariants: a [`Mount`] that is dropped or [`Mount::unmount`]ed leaves nothing mounted and no
//! daemon running; [`Mount::power_loss`] leaves the backing directory exactly as the daemon last
//! made it durable (the daemon is killed with SIGKILL, so no handler runs that could flush).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What went wrong while mounting or unmounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot find the lossyfs binary (set LOSSYFS_BIN, or build it: cargo build --release -p lossyfs)")]
    NoBinary,
    #[error("cannot start {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("lossyfs did not mount {mountpoint} within {waited:?}: {detail}")]
    NotMounted {
        mountpoint: PathBuf,
        waited: Duration,
        detail: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The line the daemon prints on stdout once the mount is live.
pub const READY_LINE_PREFIX: &str = "lossyfs: mounted";

/// How long [`Mount::start`] waits for the daemon's ready line.
const MOUNT_WAIT_MAX: Duration = Duration::from_secs(20);

/// How long a clean unmount may take before the daemon is killed.
const UNMOUNT_WAIT_MAX: Duration = Duration::from_secs(20);

/// Why FUSE cannot be used here, if it cannot (tests print it when they skip).
pub fn fuse_unavailable() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let has_fusermount = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").exists()));
    if !root && !has_fusermount {
        return Some("not root and no fusermount3 (Debian package fuse3)".into());
    }
    None
}

/// The daemon binary: `$LOSSYFS_BIN`, else `lossyfs` beside the running executable or one
/// directory up (an integration test runs from `target/<profile>/deps`).
pub fn daemon_binary() -> Option<PathBuf> {
    if let Some(b) = std::env::var_os("LOSSYFS_BIN") {
        return Some(PathBuf::from(b));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("lossyfs"), dir.parent()?.join("lossyfs")]
        .into_iter()
        .find(|p| p.is_file())
}

/// Detaches whatever is mounted at `mountpoint` (`umount2(MNT_DETACH)`, the same as
/// `fusermount3 -uz`); `Ok` if nothing was.
pub fn detach(mountpoint: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: umount2 reads the NUL-terminated path we own.
    let r = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // Not a mount point (already gone).
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(()),
        // Not root: fusermount3 may unmount what this user mounted.
        Some(libc::EPERM) => {
            let st = Command::new("fusermount3")
                .arg("-uz")
                .arg(mountpoint)
                .stderr(Stdio::null())
                .status()?;
            if st.success() {
                Ok(())
            } else {
                Err(e)
            }
        }
        _ => Err(e),
    }
}

/// One running `lossyfs` daemon serving `mountpoint` over `backing`.
#[derive(Debug)]
pub struct Mount {
    child: Option<Child>,
    backing: PathBuf,
    mountpoint: PathBuf,
}

impl Mount {
    /// Mounts `backing` at `mountpoint` with the binary [`daemon_binary`] finds.
    ///
    /// # Errors
    /// [`MountError`] if the binary is missing, does not start, or does not report the mount.
    pub fn start(backing: &Path, mountpoint: &Path) -> Result<Mount, MountError> {
        let bin = daemon_binary().ok_or(MountError::NoBinary)?;
        Mount::start_with_binary(&bin, backing, mountpoint)
    }

    /// Mounts `backing` at `mountpoint` with the daemon binary `bin`; returns once the mount is
    /// live (the daemon printed [`READY_LINE_PREFIX`]).
    ///
    /// # Errors
    /// [`MountError`] if the daemon does not start or does not report the mount in time.
    pub fn start_with_binary(
        bin: &Path,
        backing: &Path,
        mountpoint: &Path,
    ) -> Result<Mount, MountError> {
        // A daemon killed earlier leaves a dead mount ("Transport endpoint is not connected").
        detach(mountpoint).map_err(|source| MountError::Io {
            what: "detach stale mount",
            path: mountpoint.to_path_buf(),
            source,
        })?;
        let mut child = Command::new(bin)
            .arg("mount")
            .arg(backing)
            .arg(mountpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| MountError::Spawn {
                bin: bin.to_path_buf(),
                source,
            })?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(MountError::NotMounted {
                mountpoint: mountpoint.to_path_buf(),
                waited: Duration::ZERO,
                detail: "no stdout pipe".into(),
            });
        };
        // Read the ready line on a thread so the wait has a deadline.
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                let ready = line.starts_with(READY_LINE_PREFIX);
                if tx.send(line).is_err() || ready {
                    break;
                }
            }
            // Keep draining so the daemon never blocks on a full pipe.
            for _ in lines {}
        });
        let started = Instant::now();
        let mut seen = String::new();
        loop {
            let left = MOUNT_WAIT_MAX.saturating_sub(started.elapsed());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with(READY_LINE_PREFIX) => break,
                Ok(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait();
                    let _ = detach(mountpoint);
                    return Err(MountError::NotMounted {
                        mountpoint: mountpoint.to_path_buf(),
                        waited: started.elapsed(),
                        detail: format!("daemon {status:?}; its stdout: {seen:?}"),
                    });
                }
            }
        }
        Ok(Mount {
            child: Some(child),
            backing: backing.to_path_buf(),
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// The daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Cuts the power: kills the daemon (SIGKILL: every byte and name not yet synced is gone
    /// with its memory) and detaches the mount. Processes still using files there get errors
    /// (`ENOTCONN`); kill them first to model the node dying with the machine. The backing
    /// directory is then what a reboot would find; [`Mount::start`] mounts it again.
    ///
    /// # Errors
    /// [`MountError::Io`] if the mount cannot be detached.
    pub fn power_loss(mut self) -> Result<(), MountError> {
        self.kill_and_detach()
    }

    fn kill_and_detach(&mut self) -> Result<(), MountError> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        detach(&self.mountpoint).map_err(|source| MountError::Io {
            what: "detach",
            path: self.mountpoint.clone(),
            source,
        })
    }

    /// A clean shutdown: the daemon makes everything durable and unmounts (SIGTERM).
    ///
    /// # Errors
    /// [`MountError::Io`] if the daemon had to be killed and the mount cannot be detached.
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.stop_cleanly()
    }

    fn stop_cleanly(&mut self) -> Result<(), MountError> {
        let Some(c) = self.child.as_mut() else {
            return Ok(());
        };
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let started = Instant::now();
        while started.elapsed() < UNMOUNT_WAIT_MAX {
            if let Ok(Some(_)) = c.try_wait() {
                self.child = None;
                return detach(&self.mountpoint).map_err(|source| MountError::Io {
                    what: "detach",
                    path: self.mountpoint.clone(),
                    source,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!(
            "lossyfs: the daemon for {} did not stop within {UNMOUNT_WAIT_MAX:?}; killing it",
            self.mountpoint.display()
        );
        self.kill_and_detach()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.stop_cleanly() {
            eprintln!("lossyfs: unmount at drop: {e}");
        }
    }
}
