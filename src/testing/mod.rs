//! Deterministic simulation of a Raft cluster and its safety checkers.
