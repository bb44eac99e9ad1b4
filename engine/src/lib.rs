//! The corum server: thread-per-core Multi-Raft engine and the `corum` command.
//!
//! This crate currently holds the parts of the engine that depend on no other corum crate:
//!
//! - [`command`]: the command carried in a Raft log entry's data, with its versioned binary
//!   encoding and size limits;
//! - [`state_machine`]: one partition's replicated state (ordered map with etcd-like per-key
//!   metadata, revision counter, applied index / term) and the exactly-once session table
//!   (Raft thesis §6.3);
//! - [`snapshot`]: the partition state as a checksummed, versioned file;
//! - [`cli`]: the `corum` command (`serve`, `local`, `ctl`).
//!
//! The server (glommio shards, Raft groups, WAL, wire protocol) is built on top of these in the
//! engine issue.
#![deny(missing_docs)]

pub mod cli;
mod codec;
pub mod command;
pub mod config;
pub mod server;
pub mod snapshot;
pub mod state_machine;
