//! One partition's replica on a shard: its raftcore node, its state machine, the requests
//! waiting on it, and the rules that answer requests whose leader is gone.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use raftcore::{EntryKind, RawNode};
use wal::LogStore;
use wire::{Op, Response, ResponseHeader};

use super::SnapshotStore;
use crate::config::NodeConfig;
use crate::meta::META_PARTITION;
use crate::server::recover;
use crate::server::requests::{error_response, not_leader};
use crate::server::ServerError;
use crate::state_machine::{self as sm, ApplyError, StateMachine};

/// A request waiting for its entry to be applied.
pub struct Waiter<C> {
    pub conn: C,
    pub id: u64,
    /// The term the entry was proposed in (0 while queued).
    pub term: u64,
    pub op: Op,
    /// Deadline in ticks.
    pub deadline: u64,
}

/// A read waiting for its read index, then for the applied index to reach it.
pub struct PendingRead<C> {
    pub partition: u64,
    pub conn: C,
    pub id: u64,
    pub op: Op,
    /// Deadline in ticks.
    pub deadline: u64,
    /// Set once the read index is known.
    pub index: Option<u64>,
}

/// A leadership transfer waiting for its outcome (`corum ctl leader transfer`).
pub struct TransferWaiter<C> {
    pub conn: C,
    pub id: u64,
    /// The node that should lead.
    pub to: u64,
    /// The term the transfer started in.
    pub term: u64,
    /// Deadline in ticks.
    pub deadline: u64,
}

/// Waiters keyed by (log index, proposal term). Two waiters can share an index: a leader that
/// lost leadership and won it back proposes again at an index its older, uncommitted entry
/// held (finding 4 of issue 10: keying by index alone dropped the older waiter unanswered,
/// leaking its connection's in-flight slot). The older one is answered when its fate is known
/// (`apply`, `resolve_orphans`), never overwritten.
pub type Pending<C> = BTreeMap<(u64, u64), Waiter<C>>;

pub struct Partition<C> {
    pub id: u64,
    pub raft: RawNode,
    pub sm: StateMachine,
    pub pending: Pending<C>,
    /// Leadership transfers asked of this replica, answered by [`resolve_transfers`].
    pub transfers: Vec<TransferWaiter<C>>,
    /// Proposals gathered this turn.
    pub queued: Vec<(Bytes, Waiter<C>)>,
    pub queued_bytes: usize,
    /// Bytes of entries written since the last snapshot (drives snapshotting).
    pub log_bytes: u64,
    /// (applied term, term, leader) when `resolve_orphans` last looked: it scans only when
    /// one of them changed.
    pub orphans_seen: (u64, u64, u64),
    /// Sync generation of the group holding this partition's newest Ready not yet reported
    /// persisted; `<= durable_gen` when there is none (module docs of `server`, "Pipelining").
    pub pending_gen: u64,
    /// Readys of this partition whose step 4 (apply) waits for their sync: one that carried a
    /// snapshot, and every later one until it is applied.
    pub apply_deferred: usize,
    /// Sync generation of the group holding this partition's newest Ready that overwrote a
    /// conflicting suffix of the log (0: none). Earlier Readys of the partition are reported
    /// persisted only together with it.
    pub truncate_gen: u64,
    /// Readys of this partition whose records wait in the backlog (not yet in the log).
    pub backlogged: usize,
    /// A snapshot of this partition taken here, whose file the driver is writing.
    pub snapshot_writing: Option<LocalSnapshot>,
    /// (role, term, leader) when this shard last published the partition's status: elections
    /// and leader changes are counted from the changes between turns (`ShardCore::publish`).
    pub seen: (raftcore::Role, u64, u64),
    /// Copies held for backups being fetched (`backup`).
    pub backups: Vec<super::backup::BackupCopy>,
}

/// A snapshot taken locally, kept until its file is durable; then the log is compacted to it.
pub struct LocalSnapshot {
    pub index: u64,
    pub term: u64,
    pub data: Bytes,
}

impl<C> Partition<C> {
    /// The header of an answer served from this replica now.
    pub fn header(&self) -> ResponseHeader {
        ResponseHeader {
            partition: self.id,
            term: self.raft.term(),
            applied_index: self.sm.applied_index(),
        }
    }
}

/// Raft configuration of this node's replica of `partition`.
pub fn raft_config(config: &NodeConfig, partition: u64) -> raftcore::Config {
    let t = &config.tuning;
    let mut c = raftcore::Config::new(config.id);
    c.election_ticks_min = t.election_ticks_min;
    c.heartbeat_ticks = t.heartbeat_ticks;
    c.seed = config
        .id
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(partition);
    c.lease_reads = t.lease_reads;
    // An Append (or snapshot chunk) must fit in a peer frame with room to spare.
    c.msg_bytes_max = (t.frame_bytes_max as u64 / 4).clamp(4096, 1 << 20);
    c.uncommitted_bytes_max = (t.proposal_queue_bytes_max as u64).max(1 << 20) * 4;
    c
}

/// Recovers (or bootstraps) one partition with `voters` as its founding replicas. The meta
/// group's committed entries are applied at once, so the map it holds is known before any
/// shard chooses its partitions; raftcore hands them out again in the first Ready, and the
/// apply skips what the state machine already applied.
pub async fn open<C, L: LogStore, S: SnapshotStore>(
    i: usize,
    config: &NodeConfig,
    log: &L,
    snaps: &S,
    p: u64,
    voters: &[u64],
) -> Result<Partition<C>, ServerError> {
    let (state, mut sm) =
        recover::recover_partition(i, log, snaps, p, voters, &config.tuning).await?;
    if p == META_PARTITION {
        let commit = state.hard_state.commit;
        for e in state.entries.iter().filter(|e| e.index <= commit) {
            if e.index <= sm.applied_index() {
                continue;
            }
            apply_entry(&mut sm, e).map_err(|reason| ServerError::Recovery {
                shard: i,
                partition: p,
                reason,
            })?;
        }
    }
    let raft = RawNode::new(raft_config(config, p), state).map_err(|e| ServerError::Recovery {
        shard: i,
        partition: p,
        reason: e.to_string(),
    })?;
    Ok(Partition {
        id: p,
        raft,
        sm,
        pending: BTreeMap::new(),
        transfers: Vec::new(),
        queued: Vec::new(),
        queued_bytes: 0,
        log_bytes: 0,
        orphans_seen: (0, 0, 0),
        pending_gen: 0,
        apply_deferred: 0,
        truncate_gen: 0,
        backlogged: 0,
        snapshot_writing: None,
        seen: (raftcore::Role::Follower, 0, 0),
        backups: Vec::new(),
    })
}

/// Applies one committed entry to a state machine. Returns the command's result for a normal
/// entry; a no-op or membership entry only advances the applied index. Err: the state machine
/// refused the index (a bug: entries out of order).
pub fn apply_entry(
    sm: &mut StateMachine,
    e: &raftcore::Entry,
) -> Result<Option<Result<sm::Response, ApplyError>>, String> {
    match e.kind {
        EntryKind::Normal => Ok(Some(sm.apply_entry(e.index, e.term, &e.data))),
        EntryKind::Noop | EntryKind::ConfChange => sm
            .advance_applied(e.index, e.term)
            .map(|()| None)
            .map_err(|err| format!("advance applied to {}: {err}", e.index)),
    }
}

/// Answers the requests of `part` that lost their leader and will never be answered by an
/// apply or a read state:
/// - A write proposed in term `t` at index `j` above the applied index, once an entry of a
///   later term is applied: the entry at the applied index is committed, so every future
///   leader has it (Leader Completeness, Raft paper §5.4), and terms never decrease along a
///   log, so no future leader's log can hold a term-`t` entry after it. The write can never
///   commit: `NotLeader`, and a retry is a new attempt (safe even without a session).
///   (A write at or below the applied index was answered when that index was applied.)
///
/// Reads need no such rule: raftcore reports every read it will not confirm in
/// `Ready::read_failures` (finding 6 of issue 10: a rejected or unanswered ReadIndex used to
/// wait out the client's deadline).
///
/// Writes proposed after the last change cannot be orphaned by it, so this scans only when
/// (applied term, term, leader) changed since the previous call.
pub fn resolve_orphans<C>(part: &mut Partition<C>, replies: &mut Vec<(C, Response)>) {
    let applied = part.sm.applied_index();
    let applied_term = part.sm.applied_term();
    let (term, leader) = (part.raft.term(), part.raft.leader());
    if part.orphans_seen == (applied_term, term, leader) {
        return;
    }
    part.orphans_seen = (applied_term, term, leader);
    for w in take_waiters(&mut part.pending, (applied + 1, 0).., |w| {
        w.term < applied_term
    }) {
        replies.push((w.conn, error_response(w.id, not_leader(leader, None))));
    }
}

/// Answers the leadership transfers of `part` whose outcome is known (Raft thesis §3.10):
/// - `to` leads in a later term: done;
/// - this replica still leads in the transfer's term but no longer transfers: raftcore
///   abandoned it (the target did not win within an election timeout), `Unavailable`;
/// - another node than `to` leads in a later term: `Unavailable`, naming it.
///
/// Deadlines are checked with the other waiters' (`ShardCore::tick`).
pub fn resolve_transfers<C>(part: &mut Partition<C>, replies: &mut Vec<(C, Response)>) {
    if part.transfers.is_empty() {
        return;
    }
    let (term, leader, role) = (part.raft.term(), part.raft.leader(), part.raft.role());
    let transferring = part.raft.transferee();
    let header = part.header();
    let p = part.id;
    let mut i = 0;
    while i < part.transfers.len() {
        let t = &part.transfers[i];
        let outcome = if term > t.term && leader == t.to {
            Some(Ok(wire::Outcome::TransferLeader(
                wire::TransferLeaderResult {
                    partition: p,
                    leader_node: leader,
                    term,
                },
            )))
        } else if term == t.term && role == raftcore::Role::Leader && transferring != t.to {
            Some(Err(wire::ServerError::Unavailable {
                reason: format!(
                    "leadership transfer of partition {p} to node {} abandoned: it did not win                      an election within an election timeout (is it up and caught up?)",
                    t.to
                ),
            }))
        } else if term > t.term && leader != 0 && leader != t.to {
            Some(Err(wire::ServerError::Unavailable {
                reason: format!(
                    "leadership transfer of partition {p} to node {}: node {leader} won term                      {term} instead",
                    t.to
                ),
            }))
        } else {
            None
        };
        match outcome {
            Some(outcome) => {
                let t = part.transfers.swap_remove(i);
                replies.push((
                    t.conn,
                    Response {
                        id: t.id,
                        header,
                        outcome,
                    },
                ));
            }
            None => i += 1,
        }
    }
}

/// Removes and returns the waiters of `pending` in `range` that `pred` selects, in order.
pub fn take_waiters<C>(
    pending: &mut Pending<C>,
    range: impl std::ops::RangeBounds<(u64, u64)>,
    pred: impl Fn(&Waiter<C>) -> bool,
) -> Vec<Waiter<C>> {
    let keys: Vec<(u64, u64)> = pending
        .range(range)
        .filter(|(_, w)| pred(w))
        .map(|(k, _)| *k)
        .collect();
    keys.into_iter()
        .filter_map(|k| pending.remove(&k))
        .collect()
}

/// Removes and returns the pending reads that `pred` selects, in request-id order (so the
/// answers do not depend on the hash map's order: the simulator replays runs exactly).
pub fn take_reads<C>(
    reads: &mut HashMap<u64, PendingRead<C>>,
    pred: impl Fn(&PendingRead<C>) -> bool,
) -> Vec<PendingRead<C>> {
    let mut keys: Vec<u64> = reads
        .iter()
        .filter(|(_, r)| pred(r))
        .map(|(k, _)| *k)
        .collect();
    keys.sort_unstable();
    keys.into_iter().filter_map(|k| reads.remove(&k)).collect()
}
