//! `lossyfs mount BACKING MOUNTPOINT`: serve BACKING at MOUNTPOINT in the foreground, keeping
//! unsynced data in memory (see the crate docs and README.md).
//!
//! Signals: SIGTERM or SIGINT is a clean shutdown (everything is made durable, then the mount
//! is detached); SIGUSR1 is a power loss (nothing more is made durable; the mount is
//! detached). SIGKILL is a power loss too, but leaves the dead mount for the caller to detach
//! (`fusermount3 -uz MOUNTPOINT`, or `lossyfs::mount::detach`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::{Parser, Subcommand};
use fuser::{Config, MountOption, Session};
use lossyfs::fs::{LossyFs, State};
use lossyfs::mount::{detach, READY_LINE_PREFIX};

#[derive(Parser)]
#[command(about = "A FUSE file system that loses unsynced data on a power loss")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve BACKING at MOUNTPOINT until a signal (SIGTERM: clean; SIGUSR1: power loss).
    Mount {
        backing: PathBuf,
        mountpoint: PathBuf,
    },
}

/// The signals the signal thread waits for; blocked in every thread so only `sigwait` sees them.
fn handled_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

fn main() {
    let cli = Cli::parse();
    let Cmd::Mount {
        backing,
        mountpoint,
    } = cli.cmd;
    // Absolute paths: the signal thread detaches the mount point by path.
    let (backing, mountpoint) = match (backing.canonicalize(), mountpoint.canonicalize()) {
        (Ok(b), Ok(m)) => (b, m),
        (b, m) => {
            eprintln!("lossyfs: backing {b:?}, mount point {m:?}: both must exist");
            std::process::exit(1);
        }
    };
    // Block before any thread starts, so every thread inherits the mask.
    let set = handled_signals();
    // SAFETY: sets this thread's signal mask from a valid set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    let state = match State::load(&backing) {
        Ok(s) => Arc::new(Mutex::new(s)),
        Err(e) => {
            eprintln!("lossyfs: cannot read {}: {e}", backing.display());
            std::process::exit(1);
        }
    };
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("lossyfs".into()),
        MountOption::Subtype("lossyfs".into()),
        MountOption::RW,
    ];
    let session = match Session::new(LossyFs::new(state.clone()), &mountpoint, &config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lossyfs: cannot mount {}: {e}", mountpoint.display());
            std::process::exit(1);
        }
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "{READY_LINE_PREFIX} {} at {}",
            backing.display(),
            mountpoint.display()
        );
        let _ = out.flush();
    }

    let signal_state = state.clone();
    let signal_mountpoint = mountpoint.clone();
    std::thread::spawn(move || loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: sigwait on a valid set, writing into our own int.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        let code = if sig == libc::SIGUSR1 {
            // Power loss: take no lock, flush nothing.
            eprintln!("lossyfs: power loss: unsynced data dropped");
            0
        } else {
            clean_shutdown(&signal_state)
        };
        if let Err(e) = detach(&signal_mountpoint) {
            eprintln!("lossyfs: detach {}: {e}", signal_mountpoint.display());
        }
        std::process::exit(code);
    });

    // Returns when the mount goes away from outside (umount): a normal unmount, so flush.
    if let Err(e) = session.run() {
        eprintln!("lossyfs: session ended: {e}");
    }
    std::process::exit(clean_shutdown(&state));
}

/// Makes everything durable; the exit code (0, or 1 if a sync failed).
fn clean_shutdown(state: &Arc<Mutex<State>>) -> i32 {
    let mut s = match state.lock() {
        Ok(s) => s,
        Err(_) => {
            eprintln!("lossyfs: state lock poisoned; nothing flushed");
            return 1;
        }
    };
    match s.sync_all() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("lossyfs: clean shutdown could not sync everything: {e:?}");
            1
        }
    }
}
