//! The corum server: thread-per-core Multi-Raft engine and the `corum` command.
#![deny(missing_docs)]
