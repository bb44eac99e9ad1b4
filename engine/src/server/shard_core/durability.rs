//! Readys: sending, buffering in the log, the durability bookkeeping of pipelined syncs
//! (module docs of `server`, "Pipelining"), applying, and snapshots.
//!
//! # The backlog
//! Every Ready with records to persist becomes a [`WalWork`]: its ops, evaluated against the
//! log only when they are buffered (a truncation depends on what earlier work left in the
//! log). Works are buffered strictly in order; the head waits when
//! - its snapshot file is not durable yet (a received snapshot: the file must be durable
//!   before the log drops any entry for it), or
//! - the log's batch is full (`BatchFull`): the head waits for the next sync.
//!
//! A Ready joins a sync group when its last op is buffered: the group of the next sync to
//! start. A Ready with nothing to persist joins its partition's newest pending Ready (in the
//! backlog, it waits there behind it), or is durable at once when its partition has none.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use raftcore::{Message, Ready};
use wal::{LogStore, SnapshotPoint, WalError};
use wire::ResponseHeader;

use super::partition::{self, take_reads, take_waiters};
use super::{invariant, Output, ShardCore, SnapshotStore};
use crate::server::requests::{
    error_response, not_leader, outcome_unknown, serve_read, to_response,
};
use crate::server::{convert, recover, ServerError};
use crate::snapshot;

/// A snapshot file the driver must write durably (write, fsync, rename, fsync the directory),
/// then report with [`ShardCore::snapshot_written`].
#[derive(Debug, Clone)]
pub struct SnapshotWrite {
    /// The partition.
    pub partition: u64,
    /// Index and term of the last entry the snapshot covers.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// The file's bytes (`crate::snapshot` format).
    pub data: Bytes,
    /// The file name (`snapshot::file_name`).
    pub name: String,
}

/// What is left of a Ready after its messages went out: what must wait until the sync
/// covering it completes.
pub struct Unpersisted {
    partition: u64,
    number: u64,
    persisted_messages: Vec<Message>,
    /// The Ready itself when its apply was deferred (`Partition::apply_deferred`); its
    /// `entries` and `messages` are already emptied.
    deferred: Option<Ready>,
}

/// One record-level operation on the log, evaluated when buffered.
enum WalOp {
    /// A received snapshot: wait until its file is durable, then drop the log up to it (and a
    /// suffix that does not continue it).
    Snapshot {
        index: u64,
        term: u64,
        file_durable: bool,
    },
    /// Entries, overwriting a conflicting suffix (Raft paper §5.3).
    Entries(Vec<wal::Entry>),
    HardState(wal::HardState),
    /// A local compaction (after a snapshot file of ours became durable).
    Compact(SnapshotPoint),
}

/// A Ready's records waiting to be buffered, and the Ready's place in the sync groups.
struct WalWork {
    partition: u64,
    /// An op of this work overwrote a conflicting suffix of the log.
    truncated: bool,
    ops: VecDeque<WalOp>,
    bytes: u64,
    /// The Ready's part that waits for durability (None for a local compaction).
    unpersisted: Option<Unpersisted>,
}

/// Works waiting to be buffered, in order (module docs).
#[derive(Default)]
pub struct WalBacklog {
    works: VecDeque<WalWork>,
    bytes: u64,
    /// The head hit `BatchFull`: it waits for the next sync to complete.
    full: bool,
}

impl WalBacklog {
    /// Bytes of records waiting.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// True if the head could be buffered now (not waiting for a file or a sync).
    pub fn ready_to_pump(&self) -> bool {
        match self.works.front() {
            None => false,
            Some(_) if self.full => false,
            Some(w) => !matches!(
                w.ops.front(),
                Some(WalOp::Snapshot {
                    file_durable: false,
                    ..
                })
            ),
        }
    }
}

/// The sync in flight.
struct InFlight {
    gen: u64,
    covers: Vec<Unpersisted>,
}

/// Sync generations and groups.
pub struct Durability {
    syncing: Option<InFlight>,
    /// Readys buffered since the in-flight sync started (or since the last sync when none is
    /// in flight), in order; the next sync covers them.
    unsynced: Vec<Unpersisted>,
    /// Something was buffered in the log since the last sync started.
    dirty: bool,
    /// Generation the next sync gets; the in-flight sync has `next_gen - 1`.
    next_gen: u64,
    /// Generation of the last completed sync: every Ready of a group `<= durable_gen` is durable.
    durable_gen: u64,
    /// Turns that produced Readys since the in-flight sync started.
    turns_in_flight: u32,
}

impl Durability {
    pub fn new() -> Self {
        Durability {
            syncing: None,
            unsynced: Vec::new(),
            dirty: false,
            next_gen: 1,
            durable_gen: 0,
            turns_in_flight: 0,
        }
    }

    pub fn syncing(&self) -> bool {
        self.syncing.is_some()
    }

    pub fn turns_in_flight(&self) -> u32 {
        self.turns_in_flight
    }

    /// Asks for a sync whatever is buffered (bootstrap records at open).
    pub fn force_sync<C>(&mut self, out: &mut Output<C>) {
        self.dirty = true;
        self.maybe_start_sync(out);
    }

    /// Starts a sync of everything buffered, unless one is in flight or nothing is buffered.
    pub fn maybe_start_sync<C>(&mut self, out: &mut Output<C>) {
        if self.syncing.is_some() || (!self.dirty && self.unsynced.is_empty()) {
            return;
        }
        let gen = self.next_gen;
        self.next_gen += 1;
        self.syncing = Some(InFlight {
            gen,
            covers: std::mem::take(&mut self.unsynced),
        });
        self.dirty = false;
        self.turns_in_flight = 0;
        out.start_sync = Some(gen);
    }
}

fn wal_err(shard: usize) -> impl Fn(WalError) -> ServerError {
    move |source| ServerError::Wal { shard, source }
}

impl<L: LogStore, S: SnapshotStore, C: Clone> ShardCore<L, S, C> {
    /// Collects and handles the Readys of every partition with work: sends their messages,
    /// queues their records (group commit: the next sync covers them), applies what may be
    /// applied at once, and reports at once the Readys that need no sync. Returns whether
    /// there was any.
    pub(super) fn process_readies(&mut self) -> Result<bool, ServerError> {
        let mut readies: Vec<(u64, Ready)> = Vec::new();
        for (&p, part) in self.parts.iter_mut() {
            if part.raft.has_ready() {
                readies.push((p, part.raft.ready()));
            }
        }
        if readies.is_empty() {
            return Ok(false);
        }
        if self.dur.syncing() {
            self.dur.turns_in_flight += 1;
        }
        // 1. Messages that may go at once (thesis §10.2.1: the leader's appends in parallel
        //    with its own disk write).
        for (p, rd) in readies.iter_mut() {
            let p = *p;
            self.out
                .messages
                .extend(std::mem::take(&mut rd.messages).into_iter().map(|m| (p, m)));
        }
        // 2.-3. Records into the backlog in number order per partition; the Readys that need
        //    no sync are durable now ("every Ready up to n"): a Ready with nothing to persist,
        //    of a partition with no Ready awaiting durability.
        let mut apply_now: Vec<(u64, Ready)> = Vec::with_capacity(readies.len());
        for (p, mut rd) in readies {
            let i = self.i;
            let part = self
                .parts
                .get_mut(&p)
                .ok_or_else(|| invariant(i, p, "partition vanished"))?;
            let must_persist = rd.must_persist();
            if !must_persist && part.pending_gen <= self.dur.durable_gen && part.backlogged == 0 {
                if part.apply_deferred != 0 {
                    return Err(invariant(i, p, "apply deferred with no Ready pending"));
                }
                self.out.messages.extend(
                    std::mem::take(&mut rd.persisted_messages)
                        .into_iter()
                        .map(|m| (p, m)),
                );
                part.raft
                    .on_persisted(rd.number)
                    .map_err(|e| invariant(i, p, format!("on_persisted({}): {e}", rd.number)))?;
                apply_now.push((p, rd));
                continue;
            }
            // 4. may run before the Ready is durable: its committed entries are committed and
            //    already durable here (raftcore hands out only entries up to what was reported
            //    persisted), so applying them and answering their clients acknowledges nothing
            //    that could be lost. Applies stay in order per partition: a Ready carrying a
            //    snapshot (restore only once the snapshot is durable) defers its own apply and
            //    every later one of the partition to its sync's completion.
            let defer = part.apply_deferred > 0 || rd.snapshot.is_some();
            let mut ops = VecDeque::new();
            let mut bytes = 0u64;
            if let Some(s) = &rd.snapshot {
                let m = self.shared.metrics.shard(self.i);
                m.snapshots_received.inc();
                m.snapshot_received_bytes.add(s.data.len() as u64);
                self.out.snapshot_writes.push(SnapshotWrite {
                    partition: p,
                    index: s.meta.index,
                    term: s.meta.term,
                    data: s.data.clone(),
                    name: snapshot::file_name(p, s.meta.index, s.meta.term),
                });
                ops.push_back(WalOp::Snapshot {
                    index: s.meta.index,
                    term: s.meta.term,
                    file_durable: false,
                });
                bytes += 64;
            }
            if !rd.entries.is_empty() {
                let entries: Vec<wal::Entry> = rd.entries.iter().map(convert::to_wal).collect();
                let b: u64 = entries.iter().map(|e| e.data.len() as u64 + 32).sum();
                part.log_bytes += rd.entries.iter().map(|e| e.size_bytes()).sum::<u64>();
                bytes += b;
                ops.push_back(WalOp::Entries(entries));
            }
            if let Some(hs) = rd.hard_state {
                ops.push_back(WalOp::HardState(wal::HardState {
                    term: hs.term,
                    vote: hs.vote,
                    commit: hs.commit,
                }));
                bytes += 72;
            }
            let u = Unpersisted {
                partition: p,
                number: rd.number,
                persisted_messages: std::mem::take(&mut rd.persisted_messages),
                deferred: None,
            };
            let mut u = u;
            if defer {
                part.apply_deferred += 1;
                rd.entries = Vec::new();
                u.deferred = Some(rd);
            } else {
                apply_now.push((p, rd));
            }
            if must_persist || part.backlogged > 0 {
                // Into the backlog (a Ready with nothing to persist waits there behind its
                // partition's earlier Ready).
                part.backlogged += 1;
                self.backlog.bytes += bytes;
                self.backlog.works.push_back(WalWork {
                    partition: p,
                    truncated: false,
                    ops,
                    bytes,
                    unpersisted: Some(u),
                });
            } else {
                // Nothing to persist, behind a Ready already in a sync group: same group.
                let gen = part.pending_gen;
                match &mut self.dur.syncing {
                    Some(s) if s.gen == gen => s.covers.push(u),
                    _ if gen == self.dur.next_gen => self.dur.unsynced.push(u),
                    _ => {
                        return Err(invariant(
                            i,
                            p,
                            format!(
                                "pending Ready in group {gen}, neither in flight nor next ({})",
                                self.dur.next_gen
                            ),
                        ))
                    }
                }
            }
        }
        self.pump_backlog()?;
        for (p, rd) in apply_now {
            self.apply_ready(p, rd)?;
        }
        self.meta_applied()?;
        Ok(true)
    }

    /// Buffers backlog works into the log, in order, until the head must wait (module docs).
    pub(super) fn pump_backlog(&mut self) -> Result<(), ServerError> {
        let i = self.i;
        while let Some(work) = self.backlog.works.front_mut() {
            if self.backlog.full {
                return Ok(());
            }
            let p = work.partition;
            while let Some(op) = work.ops.front_mut() {
                let log = &*self.log;
                let r: Result<(), WalError> = match op {
                    WalOp::Snapshot {
                        file_durable: false,
                        ..
                    } => return Ok(()),
                    WalOp::Snapshot { index, term, .. } => {
                        let (index, term) = (*index, *term);
                        let mut r = Ok(());
                        if log.last_index(p) > index {
                            r = log.truncate(p, index + 1);
                        }
                        r.and_then(|()| log.compact(p, SnapshotPoint { index, term }))
                    }
                    WalOp::Entries(entries) => {
                        let first = entries[0].index;
                        let mut r = Ok(());
                        if first <= log.last_index(p) {
                            // Raft paper §5.3: a conflicting suffix is replaced by the
                            // leader's entries.
                            r = log.truncate(p, first);
                            if r.is_ok() {
                                work.truncated = true;
                                // The overwrite is in the next sync's batch: earlier Readys
                                // of the partition are reported only with it (second guard,
                                // module docs of `server`), also when the rest of this work
                                // waits for a later batch.
                                if let Some(part) = self.parts.get_mut(&p) {
                                    part.truncate_gen = self.dur.next_gen;
                                }
                            }
                        }
                        match r {
                            Ok(()) => append_fitting(log, p, entries),
                            Err(e) => Err(e),
                        }
                    }
                    WalOp::HardState(hs) => log.put_hard_state(p, *hs),
                    WalOp::Compact(point) => {
                        if log
                            .snapshot_point(p)
                            .is_some_and(|s| s.index >= point.index)
                        {
                            Ok(())
                        } else {
                            log.compact(p, *point)
                        }
                    }
                };
                match r {
                    Ok(()) => {
                        self.dur.dirty = true;
                        work.ops.pop_front();
                    }
                    Err(WalError::BatchFull { .. }) if self.log.buffered_bytes() > 0 => {
                        // The head waits for the next sync (started below, or after the one
                        // in flight).
                        self.dur.dirty = true;
                        self.backlog.full = true;
                        self.dur.maybe_start_sync(&mut self.out);
                        return Ok(());
                    }
                    Err(e) => return Err(wal_err(i)(e)),
                }
            }
            let work = self.backlog.works.pop_front().expect("front exists");
            self.backlog.bytes -= work.bytes;
            if let Some(u) = work.unpersisted {
                let part = self
                    .parts
                    .get_mut(&p)
                    .ok_or_else(|| invariant(i, p, "partition vanished"))?;
                part.backlogged -= 1;
                part.pending_gen = self.dur.next_gen;
                if work.truncated {
                    part.truncate_gen = self.dur.next_gen;
                }
                self.dur.unsynced.push(u);
            }
        }
        Ok(())
    }

    /// The sync of generation `gen` returned `result`: steps 3 and 4 of the Ready contract for
    /// the Readys it covers, in order (module docs of `server`, "Pipelining"). A failed sync is
    /// fatal (wal crate docs): the shard stops with the error.
    pub fn sync_done(&mut self, gen: u64, result: Result<(), WalError>) -> Result<(), ServerError> {
        let i = self.i;
        let done = match self.dur.syncing.take() {
            Some(d) if d.gen == gen => d,
            other => {
                return Err(invariant(
                    i,
                    0,
                    format!(
                        "sync {gen} reported, in flight: {:?}",
                        other.as_ref().map(|d| d.gen)
                    ),
                ))
            }
        };
        result.map_err(wal_err(i))?;
        if done.gen <= self.dur.durable_gen {
            return Err(invariant(i, 0, "sync generations out of order"));
        }
        self.dur.durable_gen = done.gen;
        self.backlog.full = false;
        // 3. Durable: report it (per partition, the highest Ready number covered: "every Ready
        //    up to n is durable"), then send what had to wait for it (vote grants, append
        //    acknowledgements; thesis §3.8).
        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
        let mut deferred: Vec<(u64, Ready)> = Vec::new();
        let mut carried: Vec<Unpersisted> = Vec::new();
        for u in done.covers {
            // A later, still pending Ready of this partition overwrote a conflicting suffix
            // (§5.3): report this earlier Ready together with the overwrite. A second guard:
            // raftcore clips pending Readys' last index at the truncation already.
            if self
                .parts
                .get(&u.partition)
                .is_some_and(|p| p.truncate_gen > done.gen)
            {
                carried.push(u);
                continue;
            }
            let n = last.entry(u.partition).or_insert(u.number);
            if *n > u.number {
                return Err(invariant(
                    i,
                    u.partition,
                    "Readys covered out of number order",
                ));
            }
            *n = u.number;
            let p = u.partition;
            self.out
                .messages
                .extend(u.persisted_messages.into_iter().map(|m| (p, m)));
            if let Some(rd) = u.deferred {
                deferred.push((u.partition, rd));
            }
        }
        if !carried.is_empty() {
            // The overwriting Ready is in the next group (`unsynced`): it was buffered after
            // the sync that just completed had started.
            carried.append(&mut self.dur.unsynced);
            self.dur.unsynced = carried;
        }
        for (p, n) in last {
            let part = self
                .parts
                .get_mut(&p)
                .ok_or_else(|| invariant(i, p, "partition vanished"))?;
            part.raft
                .on_persisted(n)
                .map_err(|e| invariant(i, p, format!("on_persisted({n}): {e}")))?;
        }
        // 4. The applies that waited for this sync (a received snapshot and what followed it).
        for (p, rd) in deferred {
            let part = self
                .parts
                .get_mut(&p)
                .ok_or_else(|| invariant(i, p, "partition vanished"))?;
            part.apply_deferred -= 1;
            self.apply_ready(p, rd)?;
        }
        self.meta_applied()?;
        // The next sync is started by the next turn, after it routed the requests held behind
        // this one (starting it here would hold them behind every sync while peer traffic
        // keeps the log busy).
        self.pump_backlog()?;
        self.publish();
        Ok(())
    }

    /// A snapshot file the driver was asked to write is durable (`Ok`) or could not be written
    /// (fatal: the shard stops, as for a failed fdatasync).
    pub fn snapshot_written(
        &mut self,
        p: u64,
        index: u64,
        result: Result<(), String>,
    ) -> Result<(), ServerError> {
        let i = self.i;
        result.map_err(|reason| ServerError::Snapshot {
            shard: i,
            reason: format!("partition {p}, index {index}: {reason}"),
        })?;
        let mut matched = false;
        for w in self.backlog.works.iter_mut().filter(|w| w.partition == p) {
            for op in w.ops.iter_mut() {
                if let WalOp::Snapshot {
                    index: x,
                    file_durable,
                    ..
                } = op
                {
                    if *x == index && !*file_durable {
                        *file_durable = true;
                        matched = true;
                    }
                }
            }
        }
        let local = self
            .parts
            .get(&p)
            .and_then(|x| x.snapshot_writing.as_ref())
            .is_some_and(|s| s.index == index);
        if local {
            matched = true;
            let part = self.parts.get_mut(&p).expect("checked above");
            let s = part.snapshot_writing.take().expect("checked above");
            match part.raft.compact(s.index, s.data) {
                Ok(()) => {
                    self.backlog.works.push_back(WalWork {
                        partition: p,
                        truncated: false,
                        ops: VecDeque::from([WalOp::Compact(SnapshotPoint {
                            index: s.index,
                            term: s.term,
                        })]),
                        bytes: 32,
                        unpersisted: None,
                    });
                    self.backlog.bytes += 32;
                    self.snaps.remove_older(p, s.index);
                    tracing::info!(
                        shard = i,
                        partition = p,
                        index,
                        "snapshot taken, log compacted"
                    );
                }
                Err(e) => {
                    tracing::debug!(shard = i, partition = p, error = %e, "compaction skipped")
                }
            }
        }
        if !matched {
            return Err(invariant(
                i,
                p,
                format!("snapshot file {index} written, none asked"),
            ));
        }
        self.pump_backlog()?;
        Ok(())
    }

    /// Step 4 of the Ready contract for one Ready.
    pub(super) fn apply_ready(&mut self, p: u64, rd: Ready) -> Result<(), ServerError> {
        let i = self.i;
        let sm_config = recover::sm_config(p, &self.config.tuning);
        let snapshot_log_bytes = self.config.tuning.snapshot_log_bytes;
        let replies = &mut self.out.replies;
        let part = self
            .parts
            .get_mut(&p)
            .ok_or_else(|| invariant(i, p, "partition vanished"))?;
        if let Some(s) = rd.snapshot {
            if s.meta.index <= part.sm.applied_index() {
                return Err(invariant(
                    i,
                    p,
                    format!(
                        "snapshot at {} would move the applied index back from {}",
                        s.meta.index,
                        part.sm.applied_index()
                    ),
                ));
            }
            let decoded =
                snapshot::decode(&s.data, &sm_config).map_err(|e| ServerError::Snapshot {
                    shard: i,
                    reason: format!("received snapshot of partition {p}: {e}"),
                })?;
            part.sm = decoded.state;
            part.log_bytes = 0;
            // Requests waiting on entries the snapshot replaced: their entries may or may not
            // be in it, so the outcome is unknown here.
            for w in take_waiters(&mut part.pending, ..=(s.meta.index, u64::MAX), |_| true) {
                replies.push((
                    w.conn,
                    error_response(w.id, outcome_unknown("replaced by a snapshot")),
                ));
            }
            self.snaps.remove_older(p, s.meta.index);
            tracing::info!(
                shard = i,
                partition = p,
                index = s.meta.index,
                "installed snapshot"
            );
            self.shared.events.record(
                i,
                p,
                "snapshot_installed",
                format!("index {}, term {}", s.meta.index, s.meta.term),
            );
        }
        let mut last_applied = None;
        for e in rd.committed_entries {
            last_applied = Some(e.index);
            if e.index <= part.sm.applied_index() {
                // Applied already (the meta group's entries at startup, `partition::open`).
                continue;
            }
            let mut result = partition::apply_entry(&mut part.sm, &e)
                .map_err(|reason| invariant(i, p, format!("apply: {reason}")))?;
            let header = ResponseHeader {
                partition: p,
                term: part.raft.term(),
                applied_index: e.index,
            };
            for w in take_waiters(
                &mut part.pending,
                (e.index, 0)..=(e.index, u64::MAX),
                |_| true,
            ) {
                let resp = match (w.term == e.term).then(|| result.take()).flatten() {
                    Some(r) => to_response(w.id, header, &w.op, r),
                    // Another leader's entry took this index: ours was not committed and
                    // never will be (Raft paper §5.3 / §5.4.2).
                    None => error_response(w.id, not_leader(part.raft.leader(), None)),
                };
                replies.push((w.conn, resp));
            }
        }
        if let Some(idx) = last_applied {
            part.raft.on_applied(idx);
        }
        // Reads: record read indexes, answer the reads raftcore gave up on (the Ready
        // contract, item 6: every read gets exactly one outcome), then serve every read whose
        // index is applied.
        for rs in rd.read_states {
            if let Some(r) = self.reads.get_mut(&rs.request_id) {
                r.index = Some(rs.index);
            }
        }
        for rf in rd.read_failures {
            if let Some(r) = self.reads.remove(&rf.request_id) {
                let reason = format!("read index not confirmed ({:?}); retry", rf.reason);
                replies.push((
                    r.conn,
                    error_response(r.id, wire::ServerError::Unavailable { reason }),
                ));
            }
        }
        partition::resolve_orphans(part, replies);
        let applied = part.sm.applied_index();
        let ready = take_reads(&mut self.reads, |r| {
            r.partition == p && r.index.is_some_and(|x| x <= applied)
        });
        for r in ready {
            let resp = match r.op {
                wire::Op::Backup { index, offset, .. } => {
                    let b = super::backup::Bounds {
                        chunk_max: self.backup_chunk_max,
                        now: self.ticks,
                        ttl_ticks: self.backup_ttl_ticks,
                        bytes_max: self.config.tuning.backup_copy_bytes_max,
                    };
                    let held = &mut self.backup_bytes_held;
                    super::backup::serve(part, r.id, index, offset, &b, held)
                }
                _ => serve_read(&part.sm, part.header(), r.id, &r.op, self.range_bytes_max),
            };
            replies.push((r.conn, resp));
        }
        // Snapshot when the retained log is large (Raft paper §7): the driver writes the
        // file; the log is compacted once it is durable (`snapshot_written`).
        if part.log_bytes >= snapshot_log_bytes
            && applied > part.raft.first_index()
            && part.snapshot_writing.is_none()
        {
            let index = applied;
            let term = part.sm.applied_term();
            let data = snapshot::encode(&part.sm, &convert::encode_conf(part.raft.conf()));
            self.shared.metrics.shard(i).snapshots_taken.inc();
            part.log_bytes = 0;
            part.snapshot_writing = Some(partition::LocalSnapshot {
                index,
                term,
                data: data.clone(),
            });
            self.out.snapshot_writes.push(SnapshotWrite {
                partition: p,
                index,
                term,
                data,
                name: snapshot::file_name(p, index, term),
            });
        }
        Ok(())
    }
}

/// Appends as many of `entries` as fit in the log's batch; the rest stay in `entries`.
/// `BatchFull` only when not even one more entry fits.
fn append_fitting<L: LogStore>(
    log: &L,
    p: u64,
    entries: &mut Vec<wal::Entry>,
) -> Result<(), WalError> {
    let mut n = entries.len();
    loop {
        match log.append(p, &entries[..n]) {
            Ok(()) => {
                entries.drain(..n);
                return if entries.is_empty() {
                    Ok(())
                } else {
                    Err(WalError::BatchFull {
                        bytes: log.buffered_bytes(),
                        bytes_max: log.buffered_bytes(),
                    })
                };
            }
            Err(WalError::BatchFull { .. }) if n > 1 => n /= 2,
            Err(e) => return Err(e),
        }
    }
}
