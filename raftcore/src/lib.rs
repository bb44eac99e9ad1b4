//! Raft as a pure, deterministic state machine, and the cluster simulator that tests it.
#![deny(missing_docs)]
pub mod linearizability;
