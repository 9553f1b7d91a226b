//! Linearizability of a recorded [`crate::history`], per key (placeholder until the checker lands).

use crate::history::Operation;

/// The checker's answer.
#[derive(Debug)]
pub struct Verdict {
    pub operations: usize,
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        false
    }
}

pub fn check(history: &[Operation]) -> Verdict {
    Verdict {
        operations: history.len(),
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "placeholder ({} operations)", self.operations)
    }
}
