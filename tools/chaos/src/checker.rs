//! Linearizability of a recorded [`crate::history`], per key (to be written).
