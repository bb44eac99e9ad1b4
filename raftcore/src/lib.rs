//! Raft as a pure, deterministic state machine, and the cluster simulator that tests it.
//!
//! - [`RawNode`] is one replica of one Raft group. It has no clock (the caller calls
//!   [`RawNode::tick`]), no threads, no files, no sockets and no global randomness (election
//!   timeouts come from a PRNG seeded by [`Config::seed`]). The same inputs always give the same
//!   outputs.
//! - Inputs: [`RawNode::tick`], [`RawNode::step`], [`RawNode::propose`],
//!   [`RawNode::read_index`], [`RawNode::transfer_leader`], [`RawNode::propose_conf_change`],
//!   [`RawNode::on_persisted`], [`RawNode::on_applied`], [`RawNode::compact`].
//! - Output: a numbered [`Ready`]; its contract (what to send when, what to persist, what to
//!   apply) is documented in [`ready`].
//! - [`sim`] runs many nodes and groups in one thread from one seed, injects faults and checks
//!   safety and linearizability.
//!
//! References in comments: "paper" = Ongaro & Ousterhout 2014; "thesis" = Ongaro 2014.
#![deny(missing_docs)]

pub mod config;
pub mod error;
pub mod linearizability;
mod log;
pub mod node;
pub mod progress;
pub mod ready;
pub mod rng;
pub mod sim;
pub mod types;

pub use config::Config;
pub use error::Error;
pub use node::{apply_conf_change, Proposed, RawNode, RestartState};
pub use progress::ProgressState;
pub use ready::Ready;
pub use rng::SplitMix64;
pub use types::{
    ConfChange, ConfChangeStep, ConfState, Entry, EntryKind, HardState, Message, MessageKind,
    ReadFailReason, ReadFailure, ReadState, Role, Snapshot, SnapshotChunk, SnapshotMeta,
};
