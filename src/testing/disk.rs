//! The simulated disk's timing: how long each of a node's durable writes takes.
//!
//! Every node of the simulator writes through the real append engine
//! ([`crate::storage::engine`]) onto its own [`SimFs`](crate::storage::file::SimFs) in deferred
//! mode: a durable write lands in the page cache at once and its fdatasync completes when the
//! simulator says so. The simulator draws each write's latency from a [`DiskConfig`] and schedules
//! its completion; writes in flight together (the state file's and the log's, in one group)
//! complete in whatever order their latencies give. A crash is a power loss of the node's
//! `SimFs` (any subset of unsynced sectors survives, unsynced directory changes may be undone).

use crate::testing::rng::SimRng;

/// Write latency, in simulated microseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskConfig {
    /// Latency of the write itself.
    pub write_us_min: u64,
    pub write_us_max: u64,
    /// Extra latency of its fdatasync.
    pub sync_us_min: u64,
    pub sync_us_max: u64,
}

impl DiskConfig {
    /// A disk that completes every write at once (but still one event later).
    pub fn instant() -> DiskConfig {
        DiskConfig {
            write_us_min: 0,
            write_us_max: 0,
            sync_us_min: 0,
            sync_us_max: 0,
        }
    }

    /// The latency of one durable write (write + fdatasync), drawn from `rng`.
    pub fn latency_us(&self, rng: &mut SimRng) -> u64 {
        rng.range(self.write_us_min, self.write_us_max)
            + rng.range(self.sync_us_min, self.sync_us_max)
    }
}
