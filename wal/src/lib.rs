//! The per-shard, multiplexed Raft log in O_DIRECT segment files.
#![deny(missing_docs)]
