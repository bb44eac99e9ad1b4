//! The Ready contract: everything the caller must do, in one value.
//!
//! A [`crate::RawNode`] never performs I/O. Its inputs change its state and queue work; the
//! caller collects that work with [`crate::RawNode::ready`], which returns a [`Ready`] with a
//! number `n` (1, 2, 3, ...). For every Ready, in this order:
//!
//! 1. **Send `messages` now.** They do not depend on anything this node has not yet made
//!    durable (a leader's Append may go out in parallel with the leader's own write of the same
//!    entries, thesis §10.2.1; vote requests, heartbeats, snapshot chunks, rejections).
//! 2. **Persist**, in this order and as one ordered write: `snapshot` (if set: replace the
//!    durable log and state by it), then `entries` (if non-empty: the durable log becomes every
//!    durable entry with index `< entries[0].index`, followed by `entries`; a follower whose log
//!    conflicted with the leader's gets a suffix overwritten this way,
//!    [`Ready::truncate_from`]), then `hard_state` (if set). Readies must be made durable in
//!    number order; a Ready with nothing to persist still takes its place in that order.
//! 3. **When Ready n is durable**: send `persisted_messages` (vote grants and append
//!    acknowledgements: a node must not acknowledge what it could still lose, thesis §3.8 /
//!    §10.2.1), then call [`crate::RawNode::on_persisted`]`(n)` — meaning "every Ready up to n is
//!    durable". The leader counts its own log toward a commit quorum only up to what it reported
//!    durable, and a candidate counts its own vote only once that vote is durable.
//! 4. **Apply**: if `snapshot` is set, restore the state machine from it first; then apply
//!    `committed_entries` in order (every one of them is committed and already durable locally),
//!    and report progress with [`crate::RawNode::on_applied`]. `read_states` may be answered once
//!    the applied index reaches their `index`; `read_failures` (6 below) can be acted on at
//!    once. Entries of kind `ConfChange` need no action:
//!    raftcore applies a membership change itself as soon as it knows the entry committed (read
//!    the result with [`crate::RawNode::conf`]); `Noop` entries carry nothing.
//! 5. **Compaction** is the caller's choice: once it has a snapshot of its state machine at an
//!    applied index, it passes it to [`crate::RawNode::compact`], which drops the log up to there
//!    and sends that snapshot (in chunks) to followers that need the dropped entries.
//!
//! 6. **Reads end exactly once.** Every `request_id` for which [`crate::RawNode::read_index`]
//!    returned `Ok` appears in exactly one later Ready, either in `read_states` (confirmed: serve
//!    it once applied up to its index) or in `read_failures` (never confirmed: answer the client
//!    or retry; a read has no effect, so a retry is always safe). A read fails when
//!    - the leader it was forwarded to refuses it (it is not the leader in our term, or its
//!      read queue is full): [`crate::ReadFailReason::Rejected`];
//!    - a forwarded read has no answer after `election_ticks_min` ticks (a lost request or
//!      answer, a full peer queue), or a leader's read is not confirmed by a quorum within
//!      `election_ticks_min` ticks of reaching it (the leader is cut off or deposed without
//!      knowing it): [`crate::ReadFailReason::NoAnswer`]. It is not resent: the caller holds
//!      the client's deadline and decides where and whether to retry;
//!    - this node's role or term changes while the read is pending, which is the only time a
//!      leader drops its reads (it steps down, or is deposed by a higher term) and the time a
//!      follower stops trusting the leader it forwarded to (a new term, an election):
//!      [`crate::ReadFailReason::Abandoned`]. Reads forwarded *to* a leader that steps down are
//!      refused to their followers at the same moment, and fail there as `Rejected`, or as
//!      `Abandoned` when the refusal carries a newer term.
//!
//!    The caller therefore never infers lost reads from term or leader changes. A read is not
//!    reported twice: a late or duplicated answer after a failure is dropped. Limits: at most
//!    `read_requests_pending_max` reads wait on a leader and, separately, at most that many
//!    forwarded reads on a follower; beyond that `read_index` returns `ReadQueueFull` and
//!    reports nothing later. So every accepted read ends within about `election_ticks_min`
//!    ticks of the node's clock (plus a network delay for a forwarded read's answer).
//!
//! The caller may ask for Ready n+1 before Ready n is durable (pipelining); steps 2 and 3 must
//! still happen in number order. After a crash, everything not reported durable may be lost,
//! and the caller rebuilds the node from what it had made durable ([`crate::RestartState`]).

use crate::types::{Entry, HardState, Message, ReadFailure, ReadState, Snapshot};

/// Work for the caller; see the module documentation for the contract.
#[derive(Debug, Default)]
pub struct Ready {
    /// This Ready's number, to pass to `on_persisted` once it is durable.
    pub number: u64,
    /// Hard state to persist, if it changed since the previous Ready.
    pub hard_state: Option<HardState>,
    /// Entries to persist; the first one's index is where the durable log is overwritten.
    pub entries: Vec<Entry>,
    /// A snapshot received from the leader: persist it, then restore the state machine from it.
    pub snapshot: Option<Snapshot>,
    /// Messages that may be sent at once.
    pub messages: Vec<Message>,
    /// Messages that may be sent only after this Ready is durable.
    pub persisted_messages: Vec<Message>,
    /// Committed, locally durable entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Reads whose read index is now known.
    pub read_states: Vec<ReadState>,
    /// Reads that will never get a `ReadState` (contract item 6), in the order they failed.
    pub read_failures: Vec<ReadFailure>,
}

impl Ready {
    /// If `entries` overwrite part of the durable log, the first index overwritten: the caller
    /// drops every durable entry at or after it before writing `entries`. (Equal to the first
    /// entry's index; `None` without entries.)
    pub fn truncate_from(&self) -> Option<u64> {
        self.entries.first().map(|e| e.index)
    }

    /// True if there is something to make durable (snapshot, entries or hard state).
    pub fn must_persist(&self) -> bool {
        self.snapshot.is_some() || !self.entries.is_empty() || self.hard_state.is_some()
    }
}
