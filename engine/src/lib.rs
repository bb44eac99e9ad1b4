//! The corum server: thread-per-core Multi-Raft engine and the `corum` command.
//!
//! - [`command`]: the command carried in a Raft log entry's data, with its versioned binary
//!   encoding and size limits;
//! - [`state_machine`]: one partition's replicated state (ordered map with etcd-like per-key
//!   metadata, revision counter, applied index / term) and the exactly-once session table
//!   (Raft thesis §6.3);
//! - [`snapshot`]: the partition state as a checksummed, versioned file;
//! - [`backup`]: backups of every partition (manifest, verify, restore into a new cluster);
//! - [`config`]: the node configuration (`corum serve` flags / TOML);
//! - [`meta`]: the meta group (partition 0) and the cluster map it replicates;
//! - [`server`]: the node itself: thread-per-core glommio shards, each with its partitions'
//!   Raft groups and state machines, one group-commit WAL, client and peer listeners.
//!   [`server::run`] serves until SIGTERM/SIGINT; [`server::start`] returns a
//!   [`server::ServerHandle`] to stop it (tests, embedding);
//! - [`sim`]: the whole-node simulator (the real shard core on simulated disks, network and
//!   clients; `node-sim` runs it);
//! - [`cli`]: the `corum` command (`serve`, `local`, `ctl`; see `engine/CLI.md`).
#![deny(missing_docs)]

pub mod backup;
pub mod cli;
mod codec;
pub mod command;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod log_limit;
pub mod meta;
pub mod placement;
pub mod revision;
pub mod server;
pub mod sim;
pub mod snapshot;
pub mod state_machine;
