//! An opt-in latency timeline: where one proposal's time goes, across the three processes.
//!
//! Off unless the environment variable `RAFT_TIMELINE` names a directory when the process
//! starts. Then every [`mark`] records (monotonic clock in ns, event name, log index) in memory,
//! and [`flush`] (called when the node's durable store is dropped at shutdown) writes them to
//! `<dir>/timeline-<pid>.tsv`. `CLOCK_MONOTONIC` is one clock for every process of the machine,
//! so the files of a local cluster can be merged by time and joined by log index
//! (`tools/timeline.py` does that for a single proposer).
//!
//! Cost when off: one relaxed load of an initialised `OnceLock` per mark. When on: a
//! `clock_gettime` (vDSO) and an uncontended mutex per mark; at most [`EVENTS_MAX`] events are
//! kept (later ones are counted and dropped), so memory stays bounded.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

/// The most events kept per process (about 24 MiB).
pub const EVENTS_MAX: usize = 1 << 20;

struct Recorder {
    dir: std::path::PathBuf,
    events: Mutex<Vec<(u64, &'static str, u64)>>,
}

fn recorder() -> Option<&'static Recorder> {
    static RECORDER: OnceLock<Option<Recorder>> = OnceLock::new();
    RECORDER
        .get_or_init(|| {
            std::env::var_os("RAFT_TIMELINE").map(|dir| Recorder {
                dir: dir.into(),
                events: Mutex::new(Vec::new()),
            })
        })
        .as_ref()
}

/// Whether marks are recorded (the environment variable is set).
pub fn enabled() -> bool {
    recorder().is_some()
}

/// Nanoseconds of `CLOCK_MONOTONIC` (comparable across processes of one machine).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Records `what` happening now to the entry at `index` (0 when there is no index).
pub fn mark(what: &'static str, index: u64) {
    let Some(r) = recorder() else { return };
    let t = now_ns();
    let mut events = r.events.lock().unwrap_or_else(|e| e.into_inner());
    if events.len() < EVENTS_MAX {
        events.push((t, what, index));
    }
}

/// Writes the recorded events to `<dir>/timeline-<pid>.tsv` (appending) and clears them.
pub fn flush() {
    let Some(r) = recorder() else { return };
    let events = std::mem::take(&mut *r.events.lock().unwrap_or_else(|e| e.into_inner()));
    let path = r.dir.join(format!("timeline-{}.tsv", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(&r.dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let mut out = std::io::BufWriter::new(file);
        for (t, what, index) in events {
            writeln!(out, "{t}\t{what}\t{index}")?;
        }
        out.flush()
    })();
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the latency timeline");
    }
}
