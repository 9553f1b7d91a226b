//! Helpers shared by the storage tests: a seeded RNG, entry builders, and a log on a simulated
//! disk.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use rust_raft_log::storage::file::SimFs;
use rust_raft_log::storage::{LogConfig, RaftLog};
use rust_raft_log::types::{EntryType, LogEntry, LogIndex, Term};

/// SplitMix64: tiny, seedable, good enough to drive test choices.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// The seed from `env` if set, else from the clock; printed so a failure can be reproduced.
pub fn seed_from_env(env: &str) -> u64 {
    let seed = match std::env::var(env) {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("{env}={s} is not a u64")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    eprintln!("seed {seed} (reproduce with {env}={seed})");
    seed
}

/// The payload of entry `index` written in `term`: its bytes identify both, so a read of the
/// wrong entry or a stale version is caught.
pub fn payload_for(index: u64, term: u64, len: usize) -> Vec<u8> {
    let mut r = Rng(index.wrapping_mul(31).wrapping_add(term));
    (0..len).map(|_| r.next_u64() as u8).collect()
}

pub fn entry(index: u64, term: u64, len: usize) -> LogEntry {
    LogEntry {
        term: Term(term),
        index: LogIndex(index),
        entry_type: if len % 7 == 3 {
            EntryType::NoOp
        } else {
            EntryType::Normal
        },
        payload: payload_for(index, term, len),
    }
}

pub fn sim_dir() -> PathBuf {
    PathBuf::from("/sim/node_1")
}

pub fn small_config(dir: PathBuf) -> LogConfig {
    let mut c = LogConfig::new(dir);
    c.segment_size_bytes = 64 << 10;
    c
}

pub fn open_sim(fs: &SimFs, segment_size_bytes: u64) -> RaftLog {
    let mut c = small_config(sim_dir());
    c.segment_size_bytes = segment_size_bytes;
    RaftLog::open_with(c, Arc::new(fs.clone())).unwrap_or_else(|e| panic!("open: {e}"))
}

/// Asserts the log holds exactly `expected[i]` at index `first + i` for every i.
pub fn assert_log_holds(log: &RaftLog, expected: &[LogEntry]) {
    for e in expected {
        let got = log
            .entry(e.index)
            .unwrap_or_else(|err| panic!("entry {}: {err}", e.index));
        assert_eq!(got.to_owned_entry(), *e, "entry {} differs", e.index);
    }
}
