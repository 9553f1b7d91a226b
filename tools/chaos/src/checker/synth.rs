//! Linearizable histories made up for testing and measuring the checker: a sequential model of
//! the registers decides every answer at a linearization point, and each operation's interval is
//! then stretched at random around its point (one request in flight per client). Some writes are
//! made indeterminate; half of those take effect (at their point, possibly after the client gave
//! up on them), half never do.
//!
//! Invariants of what [`linearizable`] returns: it is linearizable by construction (the
//! linearization points are a witness), values are unique and never 0, it is sorted by
//! invocation, and it is a function of the [`Shape`] alone (seeded).

use crate::history::{Call, Operation, Ret};
use crate::workload::Rng;

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub operations: usize,
    pub clients: u32,
    pub keys: u32,
    /// Writes made indeterminate, per thousand operations.
    pub indeterminate_per_mille: u64,
    /// Mean time between two linearization points (ns).
    pub gap_ns: u64,
    /// How far an interval may stretch on each side of its point (ns).
    pub latency_ns: u64,
    /// Operations whose stretch is 20 times longer (a slow request), per thousand.
    pub slow_per_mille: u64,
    pub seed: u64,
}

impl Shape {
    /// The bench's shape: 8 clients on 8 keys, about 8 requests in flight at once (so about one
    /// per key, often two or three), 5% of writes indeterminate, 1% slow requests.
    pub fn bench(operations: usize, seed: u64) -> Shape {
        Shape {
            operations,
            clients: 8,
            keys: 8,
            indeterminate_per_mille: 50,
            gap_ns: 125_000,
            latency_ns: 1_000_000,
            slow_per_mille: 10,
            seed,
        }
    }
}

/// A linearizable history of `shape`.
pub fn linearizable(shape: &Shape) -> Vec<Operation> {
    let mut rng = Rng::new(shape.seed);
    let clients = shape.clients.max(1) as usize;
    let keys = shape.keys.max(1);
    let mut free_at = vec![0u64; clients];
    let mut state: Vec<Option<u64>> = vec![None; keys as usize];
    let mut written: Vec<Vec<u64>> = vec![Vec::new(); keys as usize];
    let mut next_value = 1u64;
    let mut t = 0u64;
    let mut ops = Vec::with_capacity(shape.operations);
    while ops.len() < shape.operations {
        t += 1 + rng.below(2 * shape.gap_ns.max(1));
        let start = rng.below(clients as u64) as usize;
        let Some(client) = (0..clients)
            .map(|i| (start + i) % clients)
            .find(|&c| free_at[c] <= t)
        else {
            t = free_at.iter().copied().min().unwrap_or(t);
            continue;
        };
        let key = rng.below(u64::from(keys)) as u32;
        let k = key as usize;
        let stretch = if rng.below(1000) < shape.slow_per_mille {
            shape.latency_ns * 20
        } else {
            shape.latency_ns
        };
        let earliest = free_at[client].max(t.saturating_sub(stretch));
        let invoked = earliest + rng.below(t - earliest + 1);
        let value = next_value;
        next_value += 1;
        let call = match rng.below(100) {
            0..=29 => Call::Put(value),
            30..=69 => Call::Get,
            70..=89 => Call::Cas {
                expect: match rng.below(10) {
                    0..=4 => state[k],
                    5..=6 => None,
                    _ if written[k].is_empty() => None,
                    _ => Some(written[k][rng.below(written[k].len() as u64) as usize]),
                },
                new: value,
            },
            _ => Call::Delete,
        };
        let indeterminate = call != Call::Get && rng.below(1000) < shape.indeterminate_per_mille;
        let takes_effect = !indeterminate || rng.below(2) == 0;
        let ret = if takes_effect {
            Some(apply(&mut state[k], &mut written[k], call))
        } else {
            None
        };
        let (completed, ret) = if indeterminate {
            // The client gives up some time after sending; the write may land later still.
            free_at[client] = invoked + 1 + rng.below(stretch + 1);
            (None, None)
        } else {
            let completed = t + rng.below(stretch + 1);
            free_at[client] = completed + 1;
            (Some(completed), ret)
        };
        ops.push(Operation {
            client: client as u32,
            key,
            call,
            invoked,
            completed,
            ret,
            node: client as u32 % 3 + 1,
            revision: None,
        });
    }
    ops.sort_by_key(|o| o.invoked);
    ops
}

/// The sequential register: applies `call` and returns its answer.
fn apply(state: &mut Option<u64>, written: &mut Vec<u64>, call: Call) -> Ret {
    match call {
        Call::Put(v) => {
            *state = Some(v);
            written.push(v);
            Ret::Put
        }
        Call::Get => Ret::Get(*state),
        Call::Cas { expect, new } => {
            let ok = *state == expect;
            if ok {
                *state = Some(new);
                written.push(new);
            }
            Ret::Cas(ok)
        }
        Call::Delete => Ret::Delete(state.take().is_some()),
    }
}
