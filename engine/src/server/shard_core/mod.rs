//! The shard core: every decision of one shard, with no socket, file, thread or clock inside.
//!
//! # Driver and core
//! A shard is split in two (the split raftcore makes one level down, STYLE.md §1 and §6):
//! - [`ShardCore`] (this module) decides: it routes client requests, batches proposals, steps
//!   peer messages, collects Readys, buffers their records in the log, keeps the durability
//!   bookkeeping of pipelined syncs, applies, answers clients and reads, resolves orphaned
//!   requests, takes and installs snapshots and adopts cluster maps. It is generic over the
//!   log ([`wal::LogStore`]: the real [`wal::Wal`] or the simulator's [`wal::MemLog`]), over
//!   the snapshot files it reads at recovery ([`SnapshotStore`]) and over the handle a reply
//!   goes to (`C`); time is a count of [`ShardCore::tick`] calls.
//! - A driver runs it: the glommio event loop of a real node (`super::driver`) or the
//!   whole-node simulator (`crate::sim`). A driver feeds events in and carries out what
//!   [`ShardCore::take_output`] asks for:
//!
//! | event in | method |
//! |---|---|
//! | a tick of Raft time elapsed | [`ShardCore::tick`] |
//! | a peer message arrived | [`ShardCore::step_peer`] |
//! | a client request arrived | [`ShardCore::request`] |
//! | the node applied a newer cluster map | [`ShardCore::adopt_map`] |
//! | run a turn (after a batch of the above) | [`ShardCore::turn`] |
//! | the sync of generation `g` returned | [`ShardCore::sync_done`] |
//! | a snapshot file is durable (or failed) | [`ShardCore::snapshot_written`] |
//!
//! | action out ([`Output`]) | what the driver does |
//! |---|---|
//! | `messages` | send each Raft message to the node `m.to` (batched per node) |
//! | `replies` | write each answer to its client connection |
//! | `start_sync: Some(g)` | start one `LogStore::sync` now (at most one in flight) and report it as `sync_done(g, result)` |
//! | `snapshot_writes` | write each file durably (write, fsync, rename, fsync dir), then `snapshot_written` |
//! | `map_committed` | publish the map to every shard of the node (shard 0, meta group) |
//!
//! The records of every Ready are buffered in the log by the core itself (the log's buffering
//! calls are synchronous); only `sync` is the driver's, so a driver decides when a sync really
//! completes and whether it fails (the simulator delays, fails and crashes them).
//!
//! # Turns and durability
//! The module docs of `super` ("The event loop of a shard", "Pipelining") describe a turn
//! and the invariants of pipelined syncs; `durability.rs` keeps them. Two additions of the
//! core: the log's batch filling up (`BatchFull`) and a snapshot file being written no longer
//! stop the shard in the middle of a turn: the Readys' records wait, in order, in a backlog
//! (`WalBacklog`) until the sync in flight or the file write completes. Everything after the
//! head of the backlog waits behind it, so records still reach the log in Ready order.
//!
//! # Metrics
//! The core counts what only it sees (commands proposed and their batch sizes, elections,
//! pre-votes and leader changes, snapshots received and taken) into its shard's
//! `super::metrics::ShardMetrics`: single-writer counters, no clock. Durations are the
//! driver's.
//!
//! # Invariants checked here (a violation stops the shard with a message)
//! - A Ready's records reach the log in number order per partition, and a Ready is reported
//!   persisted only after the sync that covers its last record returned `Ok`.
//! - Every request counted in flight gets exactly one answer: nothing is dropped silently.
//! - At most one sync and one snapshot-file write per partition in flight.

mod backup;
mod durability;
mod partition;
mod routing;

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use raftcore::{Message, Role};
use wal::LogStore;
use wire::{ClusterMap, Request, Response};

use super::shared::{NodeShared, Published};
use super::ServerError;
use crate::command::{self, Command, CommandOp};
use crate::config::NodeConfig;
use crate::meta::{MetaMap, MAP_KEY, META_PARTITION};

pub use durability::SnapshotWrite;
use durability::{Durability, WalBacklog};
use partition::{Partition, PendingRead};

/// Most loop turns a shard runs while one WAL sync is in flight (module docs of `server`,
/// "Pipelining"); at the limit the driver waits for that sync. Bounds the Readys (their
/// `persisted_messages`, and any apply deferred behind a snapshot) held until durable.
pub const PIPELINE_TURNS_MAX: u32 = 64;
/// Most bytes buffered in the log's next batch, or waiting in the backlog, while a sync is in
/// flight before the driver waits for that sync instead of running another turn.
pub const PIPELINE_BYTES_MAX: u64 = 4 << 20;
/// How often (in ticks) waiting requests are checked against their deadlines.
const EXPIRY_TICKS: u64 = 16;

/// Where a shard's snapshot files live, as the core reads them (recovery). Writing is an
/// action the driver carries out ([`Output::snapshot_writes`]).
pub trait SnapshotStore {
    /// The newest durable snapshot of `partition`: (index, term, the file's bytes). Err names
    /// the file that could not be read.
    fn newest(&self, partition: u64) -> Result<Option<(u64, u64, Bytes)>, String>;
    /// Deletes the snapshots of `partition` older than `keep_index` (best effort, logged).
    fn remove_older(&self, partition: u64, keep_index: u64);
}

/// What a driver must do after feeding events (module docs).
pub struct Output<C> {
    /// (partition, message), in the order raftcore produced them.
    pub messages: Vec<(u64, Message)>,
    /// Answers to client requests.
    pub replies: Vec<(C, Response)>,
    /// Start a sync of the log now; report it with this generation.
    pub start_sync: Option<u64>,
    /// Snapshot files to write durably.
    pub snapshot_writes: Vec<SnapshotWrite>,
    /// A newly committed cluster map (shard 0 only): publish it to the node.
    pub map_committed: Option<Arc<MetaMap>>,
}

impl<C> Default for Output<C> {
    fn default() -> Self {
        Output {
            messages: Vec::new(),
            replies: Vec::new(),
            start_sync: None,
            snapshot_writes: Vec::new(),
            map_committed: None,
        }
    }
}

/// One shard's decisions (module docs).
pub struct ShardCore<L: LogStore, S: SnapshotStore, C: Clone> {
    i: usize,
    config: Arc<NodeConfig>,
    shared: Arc<NodeShared>,
    log: Rc<L>,
    snaps: S,
    parts: BTreeMap<u64, Partition<C>>,
    reads: HashMap<u64, PendingRead<C>>,
    next_read_id: u64,
    /// The cluster map this shard routes with (None until the meta group committed one), and
    /// its slot ranges as a wire map (no endpoints) for key -> partition lookups.
    map: Option<Arc<MetaMap>>,
    route_map: ClusterMap,
    /// Shard 0: the meta state machine's revision when the map key was last read.
    meta_seen_revision: u64,
    /// Shard 0: the term in which this node last proposed the bootstrap map.
    meta_boot_term: u64,
    cmd_limits: command::Limits,
    ticks: u64,
    /// Ticks a request may wait before `Timeout`.
    request_timeout_ticks: u64,
    /// Byte budget of one range page (`net::range_bytes_max`).
    range_bytes_max: usize,
    /// Bytes of backup copies held by this shard's partitions (`backup` module docs).
    backup_bytes_held: u64,
    /// `Busy` answers counted when the last `busy` event was considered, and its tick.
    busy_seen: u64,
    busy_event_tick: u64,
    /// Bytes of one backup chunk (`net::backup_chunk_bytes_max`).
    backup_chunk_max: usize,
    /// Ticks an unused backup copy is kept (`Tuning::backup_copy_ttl_ms`).
    backup_ttl_ticks: u64,
    /// Client requests held while a sync is in flight (they form one proposal batch when it
    /// completes: module docs of `server`, "Pipelining").
    held: Vec<(C, Request)>,
    dur: Durability,
    backlog: WalBacklog,
    out: Output<C>,
}

impl<L: LogStore, S: SnapshotStore, C: Clone> ShardCore<L, S, C> {
    /// Recovers shard `i`: the meta group first when `i == 0` (and applies its committed log,
    /// so the map it holds is known before any partition is chosen), then the partitions
    /// `boot_map` places here (or, with no map yet, the configuration's initial placement).
    /// Shard 0 returns the map it recovered in [`ShardCore::map_recovered`]; the driver
    /// hands it to the other shards before they open. Buffers the bootstrap records: the
    /// driver syncs the log before serving (`start_sync` is set).
    pub async fn open(
        i: usize,
        config: Arc<NodeConfig>,
        shared: Arc<NodeShared>,
        log: Rc<L>,
        snaps: S,
        boot_map: Option<Arc<MetaMap>>,
    ) -> Result<Self, ServerError> {
        let mut parts = BTreeMap::new();
        let mut boot_map = boot_map;
        if i == 0 {
            let voters: Vec<u64> = config.peers.keys().copied().collect();
            let part = partition::open(i, &config, &*log, &snaps, META_PARTITION, &voters).await?;
            boot_map = match part.sm.get(MAP_KEY) {
                Some(kv) => Some(Arc::new(MetaMap::decode(&kv.value).map_err(|e| {
                    ServerError::Recovery {
                        shard: i,
                        partition: META_PARTITION,
                        reason: e.to_string(),
                    }
                })?)),
                None => None,
            };
            parts.insert(META_PARTITION, part);
        }
        let placement: Vec<(u64, Vec<u64>)> = match &boot_map {
            Some(map) => map
                .hosted(config.id, i)
                .into_iter()
                .map(|p| (p, map.voters(p).unwrap_or_default()))
                .collect(),
            None => crate::meta::initial_placement(&config, i),
        };
        for (p, voters) in placement {
            let part = partition::open(i, &config, &*log, &snaps, p, &voters).await?;
            parts.insert(p, part);
        }
        let cmd_limits = command::Limits {
            key_bytes_max: config.tuning.key_bytes_max,
            value_bytes_max: config.tuning.value_bytes_max,
            ..command::Limits::default()
        };
        let request_timeout_ticks =
            (config.tuning.request_timeout_ms / config.tuning.tick_ms.max(1)).max(1);
        let range_bytes_max = super::net::range_bytes_max(&super::net::wire_limits(&config));
        let backup_chunk_max =
            super::net::backup_chunk_bytes_max(&super::net::wire_limits(&config));
        let backup_ttl_ticks =
            (config.tuning.backup_copy_ttl_ms / config.tuning.tick_ms.max(1)).max(1);
        let mut core = ShardCore {
            i,
            config,
            shared,
            log,
            snaps,
            parts,
            reads: HashMap::new(),
            next_read_id: 1,
            map: None,
            route_map: ClusterMap::default(),
            meta_seen_revision: 0,
            meta_boot_term: 0,
            cmd_limits,
            ticks: 0,
            request_timeout_ticks,
            range_bytes_max,
            backup_chunk_max,
            backup_ttl_ticks,
            busy_seen: 0,
            busy_event_tick: 0,
            backup_bytes_held: 0,
            held: Vec::new(),
            dur: Durability::new(),
            backlog: WalBacklog::default(),
            out: Output::default(),
        };
        if let Some(m) = core.parts.get(&META_PARTITION) {
            // The map key as recovered (from the snapshot or replayed log) is already known.
            core.meta_seen_revision = m.sm.get(MAP_KEY).map_or(0, |kv| kv.mod_revision);
        }
        if let Some(map) = boot_map {
            if i == 0 {
                core.out.map_committed = Some(map.clone());
            }
            core.adopt_map(map)?;
        }
        // Bootstrap records (snapshot points) become durable before anything else happens.
        core.dur.force_sync(&mut core.out);
        core.publish();
        Ok(core)
    }

    /// The shard index.
    pub fn shard(&self) -> usize {
        self.i
    }

    /// The map this shard routes with.
    pub fn map(&self) -> Option<&Arc<MetaMap>> {
        self.map.as_ref()
    }

    /// The log (shared with the driver, which syncs it).
    pub fn log(&self) -> &Rc<L> {
        &self.log
    }

    /// Takes what the driver must do now.
    pub fn take_output(&mut self) -> Output<C> {
        std::mem::take(&mut self.out)
    }

    /// The partitions hosted here, ascending.
    pub fn partitions(&self) -> impl Iterator<Item = u64> + '_ {
        self.parts.keys().copied()
    }

    /// A hosted partition's raftcore node and state machine (tests and the simulator's
    /// checks).
    pub fn inspect(
        &self,
        p: u64,
    ) -> Option<(&raftcore::RawNode, &crate::state_machine::StateMachine)> {
        self.parts.get(&p).map(|x| (&x.raft, &x.sm))
    }

    /// Requests counted in flight and not yet answered: waiting for commit, for a read index,
    /// queued for proposal or held behind a sync. The simulator checks it drops to zero.
    pub fn requests_waiting(&self) -> usize {
        self.held.len()
            + self.reads.len()
            + self
                .parts
                .values()
                .map(|p| p.pending.len() + p.queued.len() + p.transfers.len())
                .sum::<usize>()
    }

    /// True if a turn has something to do now: peer work or requests it may route, or a
    /// partition with a Ready (e.g. after an apply changed the membership), or backlog
    /// records that fit again.
    pub fn has_work(&self) -> bool {
        (!self.held.is_empty() && !self.dur.syncing())
            || self
                .parts
                .values()
                .any(|p| p.raft.has_ready() || !p.queued.is_empty())
            || (!self.dur.syncing() && self.backlog.ready_to_pump())
    }

    /// True while a sync is in flight and the pipeline is at its bound: the driver should
    /// wait for the sync instead of running another turn.
    pub fn pipeline_full(&self) -> bool {
        self.dur.syncing()
            && (self.dur.turns_in_flight() >= PIPELINE_TURNS_MAX
                || self.log.buffered_bytes() + self.backlog.bytes() >= PIPELINE_BYTES_MAX)
    }

    /// One tick of Raft time: ticks every partition and, every [`EXPIRY_TICKS`], answers
    /// `Timeout` to requests past their deadline.
    pub fn tick(&mut self) {
        self.ticks += 1;
        for part in self.parts.values_mut() {
            part.raft.tick();
        }
        if self.ticks % EXPIRY_TICKS == 0 {
            let now = self.ticks;
            for part in self.parts.values_mut() {
                for w in partition::take_waiters(&mut part.pending, .., |w| w.deadline <= now) {
                    self.out
                        .replies
                        .push((w.conn, error_response(w.id, wire::ServerError::Timeout)));
                }
            }
            for part in self.parts.values_mut() {
                let (expired, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut part.transfers)
                    .into_iter()
                    .partition(|t| t.deadline <= now);
                part.transfers = waiting;
                for t in expired {
                    self.out
                        .replies
                        .push((t.conn, error_response(t.id, wire::ServerError::Timeout)));
                }
                if !part.backups.is_empty() {
                    backup::expire(part, now, &mut self.backup_bytes_held);
                }
            }
            for r in partition::take_reads(&mut self.reads, |r| r.deadline <= now) {
                self.out
                    .replies
                    .push((r.conn, error_response(r.id, wire::ServerError::Timeout)));
            }
            // `Busy` answers since the last `busy` event, at most one event per window.
            let window =
                super::events::BUSY_WINDOW.as_millis() as u64 / self.config.tuning.tick_ms.max(1);
            let total = self.shared.metrics.shard(self.i).busy_total();
            if total > self.busy_seen
                && (self.busy_event_tick == 0 || now >= self.busy_event_tick + window)
            {
                self.shared.events.record(
                    self.i,
                    0,
                    "busy",
                    format!(
                        "{} requests answered Busy since the last busy event (overloaded: a \
                         partition's proposal queue or a connection's in-flight limit was full)",
                        total - self.busy_seen
                    ),
                );
                self.busy_event_tick = now;
                self.busy_seen = total;
            }
        }
    }

    /// The limits of serving a backup copy now (`backup` module docs).
    fn backup_bounds(&self) -> backup::Bounds {
        backup::Bounds {
            chunk_max: self.backup_chunk_max,
            now: self.ticks,
            ttl_ticks: self.backup_ttl_ticks,
            bytes_max: self.config.tuning.backup_copy_bytes_max,
        }
    }

    /// A peer message for partition `p` arrived.
    pub fn step_peer(&mut self, p: u64, m: Message) {
        match self.parts.get_mut(&p) {
            Some(part) => part.raft.step(m),
            None => tracing::debug!(
                shard = self.i,
                partition = p,
                "message for a partition not here"
            ),
        }
    }

    /// A client request arrived (counted in flight by the driver: it gets exactly one reply).
    /// Routed at the next turn with no sync in flight.
    pub fn request(&mut self, conn: C, req: Request) {
        self.held.push((conn, req));
    }

    /// Takes the node's newest applied map if it is newer than this shard's, after checking
    /// that this shard hosts exactly what the map places on it.
    pub fn adopt_map(&mut self, map: Arc<MetaMap>) -> Result<(), ServerError> {
        if self.map.as_ref().is_some_and(|m| m.epoch >= map.epoch) {
            return Ok(());
        }
        let here: Vec<u64> = self
            .parts
            .keys()
            .copied()
            .filter(|&p| p != META_PARTITION)
            .collect();
        let voters: Vec<(u64, Vec<u64>)> = self
            .parts
            .iter()
            .filter(|(&p, _)| p != META_PARTITION)
            .map(|(&p, part)| (p, part.raft.conf().voters.clone()))
            .collect();
        map.check_node(&self.config, self.i, &here)
            .and_then(|()| map.check_voters(&voters))
            .and_then(|()| map.check_backup(self.shared.restored_backup_id()))
            .map_err(|source| ServerError::Map {
                shard: self.i,
                source,
            })?;
        self.route_map = map.to_wire(|_, _| String::new(), |_| 0);
        tracing::info!(shard = self.i, epoch = map.epoch, "cluster map adopted");
        self.map = Some(map);
        Ok(())
    }

    /// One loop turn after the events fed since the last one: route the held requests (unless
    /// a sync is in flight), propose, collect and handle Readys, buffer what the backlog lets
    /// through, start the next sync. Returns whether there was work.
    pub fn turn(&mut self) -> Result<bool, ServerError> {
        let mut worked = false;
        if !self.dur.syncing() && !self.held.is_empty() {
            for (conn, r) in std::mem::take(&mut self.held) {
                self.handle_request(conn, r);
            }
            worked = true;
        }
        self.maybe_bootstrap_map();
        self.flush_proposals();
        worked |= self.process_readies()?;
        // Transfers end on leadership changes and when raftcore abandons one on a tick
        // (which need not make a Ready): checked here, once per turn, for every partition
        // (`resolve_transfers` returns at once for a partition with none waiting).
        for part in self.parts.values_mut() {
            partition::resolve_transfers(part, &mut self.out.replies);
        }
        self.pump_backlog()?;
        self.dur.maybe_start_sync(&mut self.out);
        self.publish();
        Ok(worked)
    }

    /// Shard 0, meta group leader, no map committed yet: proposes the bootstrap map once per
    /// term, after this term's no-op is applied (module docs of `meta`).
    fn maybe_bootstrap_map(&mut self) {
        let Some(part) = self.parts.get_mut(&META_PARTITION) else {
            return;
        };
        let term = part.raft.term();
        if part.raft.role() != Role::Leader
            || self.meta_boot_term == term
            || part.sm.applied_term() != term
            || part.sm.get(MAP_KEY).is_some()
        {
            return;
        }
        let mut map = MetaMap::initial(&self.config);
        map.backup_id = Some(self.shared.restored_backup_id());
        if let Err(e) = map.validate() {
            // `NodeConfig::validate` refuses such configurations; never commit a map that
            // every node would refuse to read.
            tracing::error!(shard = self.i, error = %e, "bootstrap map is invalid; not proposed");
            self.meta_boot_term = term;
            return;
        }
        let cmd = Command {
            session: None,
            op: CommandOp::Put(command::Put {
                key: Bytes::from_static(MAP_KEY),
                value: map.encode(),
                if_absent: true,
                return_prev: false,
            }),
        };
        match part.raft.propose(&[cmd.encode()]) {
            Ok(_) => {
                self.meta_boot_term = term;
                tracing::info!(
                    shard = self.i,
                    term,
                    partitions = map.partitions.len(),
                    "proposed the bootstrap cluster map"
                )
            }
            // Retried next turn (e.g. a leadership transfer in progress).
            Err(e) => {
                tracing::debug!(shard = self.i, error = %e, "could not propose the bootstrap map")
            }
        }
    }

    /// Shard 0, after applying meta entries: a map that changed goes out to be published.
    fn meta_applied(&mut self) -> Result<(), ServerError> {
        let Some(part) = self.parts.get(&META_PARTITION) else {
            return Ok(());
        };
        let Some(kv) = part.sm.get(MAP_KEY) else {
            return Ok(());
        };
        if kv.mod_revision == self.meta_seen_revision {
            return Ok(());
        }
        self.meta_seen_revision = kv.mod_revision;
        let map = MetaMap::decode(&kv.value).map_err(|source| ServerError::Map {
            shard: self.i,
            source,
        })?;
        tracing::info!(
            epoch = map.epoch,
            partitions = map.partitions.len(),
            "cluster map committed by the meta group"
        );
        self.out.map_committed = Some(Arc::new(map));
        Ok(())
    }

    /// Publishes every partition's status to the node, and counts the elections, pre-votes
    /// and leader changes seen since the last publish (after every turn and every completed
    /// sync). Counted from what changed between two publishes, so a replica that campaigns
    /// twice between two of them (two election timeouts within one turn's ticks) counts once,
    /// and so does a pre-vote repeated while still pre-candidate.
    fn publish(&mut self) {
        let m = self.shared.metrics.shard(self.i);
        for part in self.parts.values_mut() {
            let (role, term, leader) = (part.raft.role(), part.raft.term(), part.raft.leader());
            if (role, term, leader) != part.seen {
                let (seen_role, seen_term, seen_leader) = part.seen;
                if role == Role::Candidate && (seen_role != Role::Candidate || seen_term != term) {
                    m.elections.inc();
                }
                if role == Role::PreCandidate && seen_role != Role::PreCandidate {
                    m.prevotes.inc();
                }
                if leader != 0 && (leader, term) != (seen_leader, seen_term) {
                    m.leader_changes.inc();
                }
                let events = &self.shared.events;
                if role == Role::Leader && (seen_role != Role::Leader || seen_term != term) {
                    events.record(self.i, part.id, "leader_elected", format!("term {term}"));
                } else if seen_role == Role::Leader && role != Role::Leader {
                    let by = if leader == 0 {
                        "no leader known yet".to_owned()
                    } else {
                        format!("node {leader} leads")
                    };
                    events.record(self.i, part.id, "leader_lost", format!("term {term}, {by}"));
                }
                part.seen = (role, term, leader);
            }
            self.shared.publish(
                part.id,
                Published {
                    leader,
                    term,
                    commit: part.raft.committed(),
                    applied: part.sm.applied_index(),
                    sessions: part.sm.sessions().len() as u64,
                },
            );
        }
    }

    /// `NotLeader` for a partition, with the leader's endpoint when known.
    fn not_leader(&self, part: &Partition<C>) -> wire::ServerError {
        let leader = part.raft.leader();
        super::requests::not_leader(
            leader,
            (leader != 0).then(|| self.shared.client_endpoint(&self.config, leader, self.i)),
        )
    }

    fn reply(&mut self, conn: C, r: Response) {
        self.out.replies.push((conn, r));
    }
}

use super::requests::error_response;

/// A violated internal invariant: the shard stops with this error (never clamped or logged
/// away, STYLE.md §4).
fn invariant(shard: usize, partition: u64, what: impl Into<String>) -> ServerError {
    ServerError::Invariant {
        shard,
        partition,
        what: what.into(),
    }
}
