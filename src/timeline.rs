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
//!
//! [`ThreadSched`] reads a thread's scheduler counters (`/proc/thread-self/schedstat`: time on a
//! CPU, time runnable but waiting for one), so that a mark of lost time can say which part the
//! thread spent running, which part waiting for a core, and which part asleep or blocked
//! (the rest). Only the event loop uses it, and only while the timeline is on.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

/// The most events kept per process (32 MiB: 32 bytes each, reserved when the recorder starts).
pub const EVENTS_MAX: usize = 1 << 20;

struct Recorder {
    dir: std::path::PathBuf,
    events: Mutex<Vec<(u64, &'static str, u64)>>,
}

impl Recorder {
    /// The buffer is reserved whole up front: a `Vec` that doubled while marks were being
    /// recorded would copy up to 16 MiB inside one `mark`, a stall of tens of milliseconds on
    /// the thread that marks (seen: a 37.6 ms Ready drain on a leader at the 262,144th event).
    /// Reserving only maps address space; the pages are touched as the events fill them.
    fn new(dir: std::path::PathBuf) -> Recorder {
        Recorder {
            dir,
            events: Mutex::new(Vec::with_capacity(EVENTS_MAX)),
        }
    }
}

fn recorder() -> Option<&'static Recorder> {
    static RECORDER: OnceLock<Option<Recorder>> = OnceLock::new();
    RECORDER
        .get_or_init(|| std::env::var_os("RAFT_TIMELINE").map(|dir| Recorder::new(dir.into())))
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

/// A thread's scheduler counters at one moment, in nanoseconds since the thread started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedSample {
    /// Time spent running on a CPU.
    pub on_cpu_ns: u64,
    /// Time spent runnable, waiting on a run queue for a CPU.
    pub runq_ns: u64,
}

impl SchedSample {
    /// What the thread did between `earlier` and `self`, in microseconds: (on a CPU, waiting for
    /// one). Counters never go back; a pair taken out of order gives zeros.
    pub fn since_us(&self, earlier: &SchedSample) -> (u64, u64) {
        (
            self.on_cpu_ns.saturating_sub(earlier.on_cpu_ns) / 1_000,
            self.runq_ns.saturating_sub(earlier.runq_ns) / 1_000,
        )
    }
}

/// The scheduler counters of the thread that opened it (the file stays bound to that thread).
#[derive(Debug)]
pub struct ThreadSched {
    file: std::fs::File,
}

impl ThreadSched {
    /// Opens the calling thread's `/proc/thread-self/schedstat`; `None` when the timeline is off
    /// or the kernel does not provide the file (no `CONFIG_SCHED_INFO`).
    pub fn open() -> Option<ThreadSched> {
        if !enabled() {
            return None;
        }
        std::fs::File::open("/proc/thread-self/schedstat")
            .ok()
            .map(|file| ThreadSched { file })
    }

    /// The counters now (one `pread`); `None` if the read or its text fails.
    pub fn sample(&self) -> Option<SchedSample> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 96];
        let n = self.file.read_at(&mut buf, 0).ok()?;
        parse_schedstat(buf.get(..n)?)
    }
}

/// `schedstat`'s text: "<ns on cpu> <ns waiting on a run queue> <timeslices>".
fn parse_schedstat(text: &[u8]) -> Option<SchedSample> {
    let mut fields = std::str::from_utf8(text).ok()?.split_ascii_whitespace();
    let on_cpu_ns = fields.next()?.parse().ok()?;
    let runq_ns = fields.next()?.parse().ok()?;
    Some(SchedSample { on_cpu_ns, runq_ns })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorder_holds_every_event_it_keeps_without_growing() {
        let r = Recorder::new(std::path::PathBuf::from("/nonexistent"));
        let events = r.events.lock().unwrap_or_else(|e| e.into_inner());
        assert!(events.capacity() >= EVENTS_MAX, "{}", events.capacity());
    }

    #[test]
    fn schedstat_text_parses_into_cpu_and_run_queue_time() {
        assert_eq!(
            parse_schedstat(b"122716 1875357 2\n"),
            Some(SchedSample {
                on_cpu_ns: 122_716,
                runq_ns: 1_875_357
            })
        );
        assert_eq!(parse_schedstat(b""), None);
        assert_eq!(parse_schedstat(b"12 x 3\n"), None);
        let a = SchedSample {
            on_cpu_ns: 5_000,
            runq_ns: 9_000,
        };
        let b = SchedSample {
            on_cpu_ns: 2_005_000,
            runq_ns: 39_000,
        };
        assert_eq!(b.since_us(&a), (2_000, 30));
        assert_eq!(a.since_us(&b), (0, 0));
    }

    #[test]
    fn this_kernels_schedstat_counts_a_busy_threads_cpu_time() {
        // Read directly (the timeline is off in tests): the file the event loop samples exists
        // here and its first field grows while the thread spins.
        let file = match std::fs::File::open("/proc/thread-self/schedstat") {
            Ok(file) => file,
            Err(e) => panic!("/proc/thread-self/schedstat: {e}"),
        };
        let sched = ThreadSched { file };
        let before = sched.sample().expect("schedstat parses");
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < std::time::Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = sched.sample().expect("schedstat parses");
        let (cpu_us, runq_us) = after.since_us(&before);
        // 20 ms of wall time were either on a CPU or waiting for one (a loaded machine).
        assert!(
            cpu_us + runq_us >= 10_000,
            "cpu {cpu_us} µs, run queue {runq_us} µs"
        );
        assert!(cpu_us > 0);
    }
}
