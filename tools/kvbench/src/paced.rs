//! What the side-by-side benches (`leasebench`, `watchbench`) share: puts at a fixed rate (open
//! loop), the servers' CPU read from /proc, endpoint URLs.
//!
//! Open loop: put k is due at `start + k/rate`; it is sent at its due time whatever happened to
//! the earlier ones, and its latency is measured from that due time, so a server stall shows in
//! every put that was due during it. Each put has a sequence number (a [`PutLoad`]'s numbers
//! continue across calls of [`puts`]); its key is `prefix` + the number (modulo `key_cycle` if
//! set) in 8 decimal digits, so an event can be traced back to its put ([`seq_of_key`]). With an
//! [`AckLog`], the moment each put was acknowledged is kept by sequence number.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rust_raft_log::etcdpb::etcdserverpb::{kv_client::KvClient, PutRequest};
use tonic::transport::Channel;

use crate::report::{latency_histogram, Percentiles};

/// `host:port` → `http://host:port` (an URL is kept as it is).
pub fn endpoint_url(endpoint: &str) -> String {
    if endpoint.starts_with("http://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// Parses a comma-separated pid list (empty entries skipped).
pub fn parse_pids(pids: &str) -> Result<Vec<u32>, String> {
    pids.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().map_err(|e| format!("bad pid {p}: {e}")))
        .collect()
}

/// user+system CPU of `pids` in µs (a pid that is gone counts 0).
pub fn cpu_us(pids: &[u32]) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    let mut ticks = 0u64;
    for pid in pids {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        ticks += stat_cpu_ticks(&stat);
    }
    ticks * 1_000_000 / hz
}

/// utime + stime from the text of `/proc/PID/stat`: the 12th and 13th fields after the command
/// name (which may hold spaces and parentheses, hence the last `") "`).
pub fn stat_cpu_ticks(stat: &str) -> u64 {
    let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    [11, 12]
        .iter()
        .map(|&i| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// When each put was acknowledged, by sequence number (for event delivery latency).
pub struct AckLog {
    epoch: Instant,
    /// Nanoseconds after `epoch` plus one; 0: not acknowledged (yet).
    nanos: Vec<AtomicU64>,
}

impl AckLog {
    /// Room for sequence numbers `0..capacity` (later ones are not logged).
    pub fn new(capacity: usize) -> Self {
        AckLog {
            epoch: Instant::now(),
            nanos: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn record(&self, seq: u64, at: Instant) {
        if let Some(slot) = usize::try_from(seq).ok().and_then(|i| self.nanos.get(i)) {
            let nanos = at.saturating_duration_since(self.epoch).as_nanos() as u64;
            slot.store(nanos + 1, Ordering::Release);
        }
    }

    pub fn get(&self, seq: u64) -> Option<Instant> {
        let slot = usize::try_from(seq).ok().and_then(|i| self.nanos.get(i))?;
        match slot.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.epoch + Duration::from_nanos(n - 1)),
        }
    }
}

/// One stream of paced puts: where its keys go, and what it measured.
pub struct PutLoad {
    pub hist: Mutex<Histogram<u64>>,
    pub errors: AtomicU64,
    next_seq: AtomicU64,
    prefix: String,
    /// Keys repeat every `key_cycle` puts (0: every put has its own key).
    key_cycle: u64,
    value_size: usize,
    acks: Option<Arc<AckLog>>,
}

impl PutLoad {
    pub fn new(
        prefix: &str,
        key_cycle: u64,
        value_size: usize,
        acks: Option<Arc<AckLog>>,
    ) -> Arc<Self> {
        Arc::new(PutLoad {
            hist: Mutex::new(latency_histogram()),
            errors: AtomicU64::new(0),
            next_seq: AtomicU64::new(0),
            prefix: prefix.to_string(),
            key_cycle,
            value_size,
            acks,
        })
    }

    /// The sequence number the next put will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed)
    }

    fn key(&self, seq: u64) -> Vec<u8> {
        let n = if self.key_cycle > 0 {
            seq % self.key_cycle
        } else {
            seq
        };
        format!("{}{n:08}", self.prefix).into_bytes()
    }

    /// Latency percentiles of the acknowledged puts, and how many there were.
    pub fn percentiles(&self) -> (Percentiles, u64) {
        let hist = self
            .hist
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| latency_histogram());
        (Percentiles::of(&hist), hist.len())
    }

    /// Starts a new histogram (and error count); sequence numbers go on.
    pub fn reset_stats(&self) {
        if let Ok(mut hist) = self.hist.lock() {
            hist.reset();
        }
        self.errors.store(0, Ordering::Relaxed);
    }
}

/// The sequence number in a key written by a [`PutLoad`] with this `prefix` (no key cycle).
pub fn seq_of_key(prefix: &[u8], key: &[u8]) -> Option<u64> {
    let digits = key.strip_prefix(prefix)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Puts at `rate` per second for `length`, latency measured from each put's due time; returns
/// once every put sent has been answered.
pub async fn puts(kv: KvClient<Channel>, rate: u64, length: Duration, load: Arc<PutLoad>) {
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    let mut due = start;
    while due < start + length {
        tokio::time::sleep_until(due).await;
        let mut kv = kv.clone();
        let load = Arc::clone(&load);
        let due_at = due;
        tasks.push(tokio::spawn(async move {
            let seq = load.next_seq.fetch_add(1, Ordering::Relaxed);
            let put = PutRequest {
                key: load.key(seq),
                value: vec![b'v'; load.value_size],
                ..PutRequest::default()
            };
            match kv.put(put).await {
                Ok(_) => {
                    let now = Instant::now();
                    if let Some(acks) = &load.acks {
                        acks.record(seq, now);
                    }
                    let us = due_at.elapsed().as_micros() as u64;
                    if let Ok(mut hist) = load.hist.lock() {
                        let _ = hist.record(us.max(1));
                    }
                }
                Err(_) => {
                    load.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        due += period;
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// A tokio multi-thread runtime running `run`; prints the error and fails if it fails.
pub fn main_with<F>(run: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = Result<(), String>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("Error: cannot start the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
