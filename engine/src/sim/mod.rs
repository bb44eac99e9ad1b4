//! The whole-node simulator: N nodes × S shards of the real shard core
//! ([`crate::server::shard_core::ShardCore`]) with the real state machine, sessions, snapshots
//! and meta group, on [`wal::MemLog`], in one thread, every random choice drawn from one seed
//! so a failing seed replays exactly (raftcore's simulator does the same one level down;
//! TigerBeetle's VOPR and FoundationDB's simulator run their real servers this way).
//!
//! # What is simulated
//! - **time**: steps; every [`SimConfig::steps_per_tick`] steps each live shard gets one
//!   `tick`. Ticks drift: some nodes miss one tick in every 20 to 40.
//! - **network**: every peer message, client request and reply travels with a seeded delay
//!   (reordering), and may be dropped or duplicated; partitions cut node pairs (one-way or
//!   both ways) and client-node pairs; a crashed node's connections vanish.
//! - **disk**: each sync the core starts completes after a seeded delay, sometimes long
//!   (slow disk); the log is a `MemLog` whose batch limit is small on some seeds (the core's
//!   backlog path), snapshot files are written after a delay and survive crashes only once
//!   written. Faults: a failed fdatasync or a failed write (ENOSPC) stops the node, as on a
//!   real one; a crash loses everything not yet synced.
//! - **nodes**: crash and restart (recovery from the `MemLog` and snapshot files through the
//!   real recovery path), and stop on their own after a fatal WAL error.
//! - **clients**: sessions with sequence numbers and `first_unacked`, retries with the same
//!   (session, seq) on `Timeout`/`Unavailable`/`Busy`/lost replies, `NotLeader` hints followed
//!   at once, as the Rust client does (wire crate docs, "Retries"); clients that give up on an
//!   operation (outcome unknown) and clients that die and come back with a new session.
//!   Operations: put of a unique value, compare-and-set as a transaction, linearizable,
//!   follower and stale reads.
//!
//! # Checks
//! - every shard's raftcore invariants and the core's own after every step (a violated one
//!   stops the shard: a failure here, never a crash to recover from);
//! - linearizability of every key's history (`raftcore::linearizability::check_kv`): puts,
//!   compare-and-sets, linearizable and follower reads (stale reads are not checked);
//! - definite errors: a write answered with an error that says it was not applied must never
//!   be seen by any read (each put writes a unique value);
//! - no applied index goes back on any replica (snapshots included) while the node lives;
//! - after healing (liveness phase): every key takes a new write, every request a shard
//!   counted in flight is answered (`requests_waiting() == 0`, each request answered exactly
//!   once), and all replicas of each partition converge to the same data.

mod client;
#[cfg(test)]
mod script;
mod world;

pub use world::{run_seed, SimConfig, SimFailure, SimStats};
