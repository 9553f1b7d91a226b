//! An in-memory [`Durable`] over the core's [`MemStorage`], for tests and in-process clusters.
//!
//! Nothing survives the process: "durable" means "applied to the in-memory log". Every write
//! completes at the next poll, in submission order, so it exercises the event loop's ordering
//! without a disk. Production nodes use the storage engine (`RaftLog` + `RaftState`).

use std::convert::Infallible;
use std::rc::Rc;

use crate::node::event_loop::{Durable, PersistFuture, WriteBatch};
use crate::raft::{HardState, MemStorage};

/// Keeps the last hard state it was asked to persist, for inspection.
#[derive(Debug, Default)]
pub struct MemDurable {
    pub hard_state: HardState,
    pub batches: u64,
}

impl Durable for MemDurable {
    type Log = MemStorage;
    type Error = Infallible;

    fn persist(&mut self, batch: Rc<WriteBatch>) -> PersistFuture<Infallible> {
        if let Some(hs) = batch.hard_state {
            self.hard_state = hs;
        }
        self.batches += 1;
        Box::pin(std::future::ready(Ok(())))
    }

    fn publish(&mut self, log: &mut MemStorage, batch: &WriteBatch) {
        if let Some(from) = batch.truncate_from {
            log.truncate_suffix(from);
        }
        log.append(&batch.entries);
    }
}
