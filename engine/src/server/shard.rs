//! One shard: its partitions, its WAL, its event loop (module docs of `server` describe a turn
//! and the pipelining of turns across WAL syncs, with its invariants).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use glommio::channels::local_channel::LocalReceiver;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use raftcore::{EntryKind, Message, RawNode, Ready, Role};
use wal::{LogStore, SnapshotPoint, Wal, WalConfig};
use wire::{
    BodyEncoder, ClusterMap, Consistency, NodeStatus, Op, Outcome, PartitionStatus, PeerBatch,
    RaftMessage, Request, Response, ResponseHeader, ServerError as WireError,
};

use super::convert;
use super::net::{self, ConnOut, ShardIo};
use super::recover;
use super::shared::{Boot, NodeShared};
use super::{shard_dir, ServerError, IO_MEMORY_BYTES};
use crate::command::{self, Command, CommandOp, Session};
use crate::config::NodeConfig;
use crate::meta::{MetaMap, MAP_KEY, META_PARTITION};
use crate::snapshot;
use crate::state_machine::{self as sm, ApplyError, StateMachine};

/// Keys returned by one Range when the request's limit is 0.
const RANGE_KEYS_DEFAULT: usize = 10_000;
/// How long a request may wait for commit or for its read index before `Timeout`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest peer frame body this shard builds, as a fraction of the frame limit (headroom for
/// flatbuffers overhead beyond the payload estimate).
const PEER_FRAME_FILL_DIVISOR: usize = 2;
/// Most loop turns a shard runs while one WAL sync is in flight (module docs of `server`,
/// "Pipelining"); at the limit the next turn waits for that sync. Bounds the Readys (their
/// `persisted_messages`, and any apply deferred behind a snapshot) held until durable.
const PIPELINE_TURNS_MAX: u32 = 64;
/// Most bytes buffered in the WAL's next batch while a sync is in flight before the shard
/// waits for that sync instead of running another turn (the WAL's own `batch_bytes_max`, a
/// mid-turn sync, stays the hard limit).
const PIPELINE_BYTES_MAX: u64 = 4 << 20;

/// Entry point of a shard thread.
pub fn thread_main(
    i: usize,
    config: Arc<NodeConfig>,
    shared: Arc<NodeShared>,
    stop: Arc<AtomicBool>,
    ready_tx: std::sync::mpsc::Sender<(usize, Result<(), ServerError>)>,
) -> Result<(), ServerError> {
    // Shard 0 releases the shards waiting for its boot report however it ends (error or
    // panic); a report already made stays. Dropped after any error was sent on `ready_tx`.
    let _boot_guard = (i == 0).then(|| BootGuard(shared.clone()));
    let placement = if config.pin {
        Placement::Fixed(i)
    } else {
        Placement::Unbound
    };
    // No spin_before_park: an idle shard sleeps in the kernel (idle CPU target, issue 5).
    let ex = LocalExecutorBuilder::new(placement)
        .name(&format!("corum-n{}-s{i}", config.id))
        .io_memory(IO_MEMORY_BYTES)
        .make();
    let ex = match ex {
        Ok(ex) => ex,
        Err(e) => {
            let _ = ready_tx.send((
                i,
                Err(ServerError::Executor {
                    shard: i,
                    reason: e.to_string(),
                }),
            ));
            return Ok(());
        }
    };
    ex.run(async move {
        let opened = Shard::open(i, config, shared.clone(), stop).await;
        let (shard, wake_rx) = match opened {
            Ok(x) => x,
            Err(e) => {
                // Report the real cause before releasing the waiting shards (whose own
                // "shard 0 did not start" must not arrive first).
                let _ = ready_tx.send((i, Err(e)));
                if i == 0 {
                    shared.fail_boot();
                }
                return Ok(());
            }
        };
        let _ = ready_tx.send((i, Ok(())));
        shard.run(wake_rx).await
    })
}

/// Marks shard 0's boot as failed when dropped, unless it reported already.
struct BootGuard(Arc<NodeShared>);

impl Drop for BootGuard {
    fn drop(&mut self) {
        self.0.fail_boot();
    }
}

/// A request waiting for its entry to be applied.
struct Waiter {
    conn: Rc<ConnOut>,
    id: u64,
    term: u64,
    op: Op,
    deadline: Instant,
}

/// A read waiting for its read index, then for the applied index to reach it.
struct PendingRead {
    partition: u64,
    conn: Rc<ConnOut>,
    id: u64,
    op: Op,
    deadline: Instant,
    /// The partition's term and known leader when the read was asked for.
    term: u64,
    leader: u64,
    /// Set once the read index is known.
    index: Option<u64>,
}

struct Partition {
    id: u64,
    raft: RawNode,
    sm: StateMachine,
    /// Log index -> the request waiting on it.
    pending: BTreeMap<u64, Waiter>,
    /// Proposals gathered this turn.
    queued: Vec<(Bytes, Waiter)>,
    queued_bytes: usize,
    /// Bytes of entries written since the last snapshot (drives snapshotting).
    log_bytes: u64,
    /// (applied term, term, leader) when `resolve_orphans` last looked: it scans only when
    /// one of them changed.
    orphans_seen: (u64, u64, u64),
    /// Sync generation of the group holding this partition's newest Ready not yet reported
    /// persisted; `<= Shard::durable_gen` when there is none (module docs, "Pipelining").
    pending_gen: u64,
    /// Readys of this partition whose step 4 (apply) waits for their sync: one that carried a
    /// snapshot, and every later one until it is applied.
    apply_deferred: usize,
    /// Sync generation of the group holding this partition's newest Ready that overwrote a
    /// conflicting suffix of the log (0: none). Earlier Readys of the partition are reported
    /// persisted only together with it (`Shard::sync_done`).
    truncate_gen: u64,
}

/// What ended an idle wait of the event loop.
enum Woke {
    /// The sync in flight completed.
    Synced(Result<(), wal::WalError>),
    /// A socket task put something in the inbox (or a stale wake token).
    Inbox,
    /// The idle timer (ticks are due).
    Timer,
}

/// What is left of a Ready after its messages went out and its records were buffered in the
/// WAL: what must wait until the sync covering it completes.
struct Unpersisted {
    partition: u64,
    number: u64,
    persisted_messages: Vec<Message>,
    /// The Ready itself when its apply was deferred (`Partition::apply_deferred`); its
    /// `entries` and `messages` are already emptied.
    deferred: Option<Ready>,
}

/// The WAL sync in flight: a local task running `Wal::sync` (never cancelled while the shard
/// runs: a dropped sync poisons the WAL), and the Readys whose records its batch holds.
struct InFlightSync {
    gen: u64,
    task: glommio::Task<Result<(), wal::WalError>>,
    covers: Vec<Unpersisted>,
}

struct Shard {
    i: usize,
    config: Arc<NodeConfig>,
    io: Rc<ShardIo>,
    /// Shared with the sync task in flight.
    wal: Rc<Wal>,
    snap_dir: PathBuf,
    parts: BTreeMap<u64, Partition>,
    peers_out: BTreeMap<u64, Rc<net::PeerQueue>>,
    reads: HashMap<u64, PendingRead>,
    next_read_id: u64,
    enc: BodyEncoder,
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
    /// The sync in flight, if any (at most one: the WAL serialises them anyway).
    syncing: Option<InFlightSync>,
    /// Readys buffered in the WAL since the in-flight sync took its batch (or since the last
    /// sync when none is in flight), in collection order; the next sync covers them. Non-empty
    /// only if one of them has something to persist.
    unsynced: Vec<Unpersisted>,
    /// Generation the next sync gets (the one `unsynced` goes into); generations increase by
    /// one per sync, so the in-flight sync has `next_gen - 1`.
    next_gen: u64,
    /// Generation of the last completed sync: every Ready of a group `<= durable_gen` is durable.
    durable_gen: u64,
    /// Turns run since the in-flight sync started (bounded by `PIPELINE_TURNS_MAX`).
    turns_in_flight: u32,
}

fn wal_err(shard: usize) -> impl Fn(wal::WalError) -> ServerError {
    move |source| ServerError::Wal { shard, source }
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> ServerError {
    move |source| ServerError::Io { what, source }
}

/// Raft configuration of this node's replica of `partition`.
fn raft_config(config: &NodeConfig, partition: u64) -> raftcore::Config {
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

impl Shard {
    async fn open(
        i: usize,
        config: Arc<NodeConfig>,
        shared: Arc<NodeShared>,
        stop: Arc<AtomicBool>,
    ) -> Result<(Shard, LocalReceiver<()>), ServerError> {
        let dir = shard_dir(&config, i);
        let wal_dir = dir.join("wal");
        let snap_dir = dir.join("snapshots");
        std::fs::create_dir_all(&wal_dir)
            .map_err(io_err(format!("create {}", wal_dir.display())))?;
        std::fs::create_dir_all(&snap_dir)
            .map_err(io_err(format!("create {}", snap_dir.display())))?;
        if let Err(e) = snapshot::remove_stale_temp_files(&snap_dir) {
            tracing::warn!(shard = i, error = %e, "could not remove temporary snapshot files");
        }
        let wal_cfg = WalConfig {
            segment_bytes: config.tuning.wal_segment_bytes,
            // Room for the largest entry (a frame) and then some; at most 16 MiB of memory.
            batch_bytes_max: (config.tuning.wal_segment_bytes - 8192).min(16 << 20),
            ..WalConfig::default()
        };
        let wal = Wal::open(&wal_dir, wal_cfg).await.map_err(wal_err(i))?;
        let mut parts = BTreeMap::new();
        // The meta group first (shard 0): the map it holds decides which partitions every
        // shard opens (module docs of `meta`).
        let boot_map = if i == 0 {
            let voters: Vec<u64> = config.peers.keys().copied().collect();
            let part = open_partition(i, &config, &wal, &snap_dir, META_PARTITION, &voters).await?;
            let map = match part.sm.get(MAP_KEY) {
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
            shared.set_boot(Boot::Recovered(map.clone()));
            map
        } else {
            match shared.wait_boot(&stop) {
                Some(Boot::Recovered(map)) => map,
                _ => {
                    return Err(ServerError::Executor {
                        shard: i,
                        reason: "shard 0 (the meta group) did not start".into(),
                    })
                }
            }
        };
        let placement: Vec<(u64, Vec<u64>)> = match &boot_map {
            Some(map) => map
                .hosted(config.id, i)
                .into_iter()
                .map(|p| (p, map.voters(p).unwrap_or_default()))
                .collect(),
            None => (1..=u64::from(config.partitions))
                .filter(|&p| config.shard_of_partition(p) == i)
                .map(|p| (p, config.initial_replicas(p)))
                .filter(|(_, voters)| voters.contains(&config.id))
                .collect(),
        };
        for (p, voters) in placement {
            let part = open_partition(i, &config, &wal, &snap_dir, p, &voters).await?;
            parts.insert(p, part);
        }
        // Bootstrap records (snapshot points) become durable before anything else happens.
        wal.sync().await.map_err(wal_err(i))?;

        let (io, wake_rx) = ShardIo::new(i, config.clone(), shared, stop);
        let client_addr = config.shard_client_addr(i);
        let peer_addr = config.shard_peer_addr(i);
        let client_listener = TcpListener::bind(client_addr)
            .map_err(|e| io_err(format!("bind client port {client_addr}"))(e.into()))?;
        let peer_listener = TcpListener::bind(peer_addr)
            .map_err(|e| io_err(format!("bind peer port {peer_addr}"))(e.into()))?;
        io.spawn(net::client_listener(client_listener, io.clone()));
        io.spawn(net::peer_listener(peer_listener, io.clone()));
        let mut peers_out = BTreeMap::new();
        for (&node, &base) in &config.peers {
            if node == config.id {
                continue;
            }
            let (tx, rx) = net::peer_queue();
            let addr = crate::config::shard_addr(base, i);
            io.spawn(net::peer_dialer(io.clone(), node, addr, tx.clone(), rx));
            peers_out.insert(node, tx);
        }
        tracing::info!(
            shard = i,
            partitions = parts.len(),
            client = %client_addr,
            peer = %peer_addr,
            "shard serving"
        );
        let cmd_limits = command::Limits {
            key_bytes_max: config.tuning.key_bytes_max,
            value_bytes_max: config.tuning.value_bytes_max,
            ..command::Limits::default()
        };
        let mut shard = Shard {
            i,
            config,
            io,
            wal: Rc::new(wal),
            snap_dir,
            parts,
            peers_out,
            reads: HashMap::new(),
            next_read_id: 1,
            enc: BodyEncoder::new(),
            map: None,
            route_map: ClusterMap::default(),
            meta_seen_revision: 0,
            meta_boot_term: 0,
            cmd_limits,
            ticks: 0,
            syncing: None,
            unsynced: Vec::new(),
            next_gen: 1,
            durable_gen: 0,
            turns_in_flight: 0,
        };
        if let Some(m) = shard.parts.get(&META_PARTITION) {
            // The map key as recovered (from the snapshot or replayed log) is already known.
            shard.meta_seen_revision = m.sm.get(MAP_KEY).map_or(0, |kv| kv.mod_revision);
        }
        shard.adopt_map()?;
        shard.publish();
        Ok((shard, wake_rx))
    }

    /// Takes the node's newest applied map if it is newer than this shard's, after checking
    /// that this shard hosts exactly what the map places on it.
    fn adopt_map(&mut self) -> Result<(), ServerError> {
        let Some(map) = self.io.shared.map() else {
            return Ok(());
        };
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
            .map_err(|source| ServerError::Map {
                shard: self.i,
                source,
            })?;
        self.route_map = map.to_wire(|_, _| String::new(), |_| 0);
        tracing::info!(shard = self.i, epoch = map.epoch, "cluster map adopted");
        self.map = Some(map);
        Ok(())
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
        let map = MetaMap::initial(&self.config);
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

    /// Shard 0, after applying meta entries: publishes a map that changed.
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
        self.io.shared.set_map(Arc::new(map));
        Ok(())
    }

    async fn run(mut self, wake_rx: LocalReceiver<()>) -> Result<(), ServerError> {
        let tick = Duration::from_millis(self.config.tuning.tick_ms);
        // Idle wake-up interval. Raft time is counted in ticks, but a shard with no I/O need not
        // wake every tick: it sleeps one heartbeat interval and, when it wakes (timer, socket
        // or disk), calls `tick` once per tick elapsed in real time. Timeouts keep their
        // real-time length; the leader's heartbeats of all partitions then fall due in the same
        // turn and leave in one frame per node (coalesced heartbeats). Measured: this cut the
        // idle CPU of a 3-node cluster from 12% to under 2% of a core (bench-results).
        let idle_wait = tick * self.config.tuning.heartbeat_ticks;
        // Most ticks caught up at once (after a long stall, time beyond it is dropped rather
        // than replayed in a burst that could expire every election timer together).
        let catch_up_max = u64::from(self.config.tuning.heartbeat_ticks) * 2;
        let mut last_tick = Instant::now();
        loop {
            if self.io.stop.load(Ordering::Relaxed) {
                tracing::info!(shard = self.i, "shard stopping");
                // Let the sync in flight finish (dropping it would poison the WAL); nothing
                // waits for its outcome any more.
                if let Some(s) = self.syncing.take() {
                    let _ = s.task.await;
                }
                self.io.shutdown().await;
                return Ok(());
            }
            let now = Instant::now();
            let due =
                (now.saturating_duration_since(last_tick).as_nanos() / tick.as_nanos()) as u64;
            if due > 0 {
                for _ in 0..due.min(catch_up_max) {
                    self.tick(now);
                }
                last_tick = if due > catch_up_max {
                    now
                } else {
                    last_tick + tick * due as u32
                };
            }
            let worked = match self.turn().await {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!(shard = self.i, error = %e, "shard stopping on a fatal error");
                    self.io.shutdown().await;
                    return Err(e);
                }
            };
            if worked {
                // Let the sockets' tasks and the sync task run before deciding.
                futures_lite::future::yield_now().await;
            }
            // Sleep until a socket, the sync in flight or the timer wakes us, unless there is
            // work already. A wake-up finding the inbox empty (its token was left by messages
            // an earlier turn already took) goes back to sleep instead of running an empty turn.
            loop {
                if self.has_work() {
                    break;
                }
                let wait = (last_tick + idle_wait).saturating_duration_since(Instant::now());
                if wait.is_zero() {
                    break;
                }
                let syncing = &mut self.syncing;
                let woke = futures_lite::future::or(
                    async {
                        match syncing {
                            Some(s) => Woke::Synced((&mut s.task).await),
                            None => futures_lite::future::pending().await,
                        }
                    },
                    futures_lite::future::or(
                        async {
                            wake_rx.recv().await;
                            Woke::Inbox
                        },
                        async {
                            glommio::timer::sleep(wait).await;
                            Woke::Timer
                        },
                    ),
                )
                .await;
                match woke {
                    Woke::Inbox => continue,
                    Woke::Timer => break,
                    Woke::Synced(result) => {
                        if let Err(e) = self.sync_done(result).await {
                            tracing::error!(shard = self.i, error = %e, "shard stopping on a fatal error");
                            self.io.shutdown().await;
                            return Err(e);
                        }
                        break;
                    }
                }
            }
        }
    }

    /// True if a turn has something to do now: messages or requests in the inbox, or a
    /// partition with a Ready (e.g. after an apply changed the membership).
    fn has_work(&self) -> bool {
        let inbox = self.io.inbox.borrow();
        !inbox.peer.is_empty()
            || (!inbox.requests.is_empty() && self.syncing.is_none())
            || self.io.stop.load(Ordering::Relaxed)
            || self.parts.values().any(|p| p.raft.has_ready())
    }

    /// One loop turn after the ticks (module docs of `server`): report a completed sync, step
    /// peer messages, route requests, propose, collect and handle Readys, start the next sync.
    /// Returns whether there was work.
    async fn turn(&mut self) -> Result<bool, ServerError> {
        let mut worked = false;
        // A sync that completed while the shard was busy: its Readys first, in order.
        if let Some(s) = self.syncing.as_mut() {
            if let Some(result) = futures_lite::future::poll_once(&mut s.task).await {
                self.sync_done(result).await?;
                worked = true;
            }
        }
        let (peer, requests) = {
            let mut inbox = self.io.inbox.borrow_mut();
            if inbox.peer_dropped > 0 {
                tracing::warn!(
                    shard = self.i,
                    dropped = inbox.peer_dropped,
                    "peer inbox full; messages dropped"
                );
                inbox.peer_dropped = 0;
            }
            // While a sync is in flight, client requests wait in the inbox for its
            // completion: they then form one proposal batch, as large as without pipelining.
            let requests = if self.syncing.is_none() {
                std::mem::take(&mut inbox.requests)
            } else {
                Vec::new()
            };
            (std::mem::take(&mut inbox.peer), requests)
        };
        for (p, m) in peer {
            match self.parts.get_mut(&p) {
                Some(part) => part.raft.step(m),
                None => tracing::debug!(
                    shard = self.i,
                    partition = p,
                    "message for a partition not here"
                ),
            }
        }
        if self.io.shared.map_epoch() != self.map.as_ref().map_or(0, |m| m.epoch) {
            self.adopt_map()?;
        }
        for (conn, r) in requests {
            self.handle_request(conn, r);
        }
        self.maybe_bootstrap_map();
        self.flush_proposals();
        worked |= self.process_readies().await?;
        self.start_sync();
        // Bound the pipeline: past the limits, wait for the sync in flight before another turn
        // (the sockets' tasks keep reading into the inbox meanwhile).
        if self.syncing.is_some()
            && (self.turns_in_flight >= PIPELINE_TURNS_MAX
                || self.wal.buffered_bytes() >= PIPELINE_BYTES_MAX)
        {
            if let Some(s) = self.syncing.as_mut() {
                let result = (&mut s.task).await;
                self.sync_done(result).await?;
                self.start_sync();
                worked = true;
            }
        }
        Ok(worked)
    }

    /// Starts a sync of the WAL's buffered batch, covering the Readys in `unsynced`, unless one
    /// is in flight already or there is nothing to sync.
    fn start_sync(&mut self) {
        if self.syncing.is_some() || self.unsynced.is_empty() {
            return;
        }
        let gen = self.next_gen;
        self.next_gen += 1;
        let wal = self.wal.clone();
        let task = glommio::spawn_local(async move { wal.sync().await.map(|_| ()) });
        self.syncing = Some(InFlightSync {
            gen,
            task,
            covers: std::mem::take(&mut self.unsynced),
        });
        self.turns_in_flight = 0;
    }

    /// The sync in flight completed with `result`: steps 3 and 4 of the Ready contract for the
    /// Readys it covers, in order (module docs of `server`, "Pipelining").
    async fn sync_done(&mut self, result: Result<(), wal::WalError>) -> Result<(), ServerError> {
        let Some(done) = self.syncing.take() else {
            return Ok(());
        };
        // A failed fdatasync is fatal (wal crate docs): the shard stops with the error.
        result.map_err(wal_err(self.i))?;
        debug_assert!(done.gen > self.durable_gen);
        self.durable_gen = done.gen;
        // 3. Durable: report it (per partition, the highest Ready number covered: "every Ready
        //    up to n is durable"), then send what had to wait for it (vote grants, append
        //    acknowledgements; thesis §3.8).
        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
        let mut after: Vec<(u64, Message)> = Vec::new();
        let mut deferred: Vec<(u64, Ready)> = Vec::new();
        let mut carried: Vec<Unpersisted> = Vec::new();
        for u in done.covers {
            // A later, still pending Ready of this partition overwrote a conflicting suffix
            // (§5.3): report this earlier Ready together with the overwrite (it moves to the
            // front of that group). A second guard: raftcore clips pending Readys' last index
            // at the truncation already (`clip_pending`), so reporting it alone would not
            // count the replacement entries as durable either (module docs of `server`).
            if self
                .parts
                .get(&u.partition)
                .is_some_and(|p| p.truncate_gen > done.gen)
            {
                carried.push(u);
                continue;
            }
            let n = last.entry(u.partition).or_insert(u.number);
            debug_assert!(*n <= u.number, "Readys covered out of number order");
            *n = u.number;
            after.extend(u.persisted_messages.into_iter().map(|m| (u.partition, m)));
            if let Some(rd) = u.deferred {
                deferred.push((u.partition, rd));
            }
        }
        if !carried.is_empty() {
            // The overwriting Ready is in the next group (`unsynced`): it was buffered after
            // the sync that just completed had started.
            carried.append(&mut self.unsynced);
            self.unsynced = carried;
        }
        for (p, n) in last {
            let part = self.parts.get_mut(&p).ok_or_else(|| internal(self.i, p))?;
            part.raft
                .on_persisted(n)
                .map_err(|e| ServerError::Recovery {
                    shard: self.i,
                    partition: p,
                    reason: format!("on_persisted: {e}"),
                })?;
        }
        self.send(after);
        // 4. The applies that waited for this sync (a received snapshot and what followed it).
        for (p, rd) in deferred {
            let part = self.parts.get_mut(&p).ok_or_else(|| internal(self.i, p))?;
            part.apply_deferred -= 1;
            self.apply_ready(p, rd).await?;
        }
        self.meta_applied()?;
        self.publish();
        Ok(())
    }

    fn tick(&mut self, now: Instant) {
        self.ticks += 1;
        for part in self.parts.values_mut() {
            part.raft.tick();
        }
        // Expire waiters now and then (every 16 ticks): requests whose entry or read index
        // never came (leadership changed, partitioned away).
        if self.ticks % 16 == 0 {
            for part in self.parts.values_mut() {
                for w in take_waiters(&mut part.pending, .., |w| w.deadline <= now) {
                    w.conn.respond(error_response(w.id, WireError::Timeout));
                }
            }
            for r in take_reads(&mut self.reads, |r| r.deadline <= now) {
                r.conn.respond(error_response(r.id, WireError::Timeout));
            }
        }
    }

    fn not_leader(&self, part: &Partition) -> WireError {
        let leader = part.raft.leader();
        WireError::NotLeader {
            leader_node: leader,
            leader_endpoint: (leader != 0)
                .then(|| self.io.shared.client_endpoint(&self.config, leader, self.i)),
        }
    }

    fn node_status(&self) -> NodeStatus {
        let shared = &self.io.shared;
        let partitions = shared
            .hosted()
            .map(|(p, s)| {
                let leader = s.leader.load(Ordering::Relaxed);
                PartitionStatus {
                    partition: p,
                    term: s.term.load(Ordering::Relaxed),
                    leader_node: leader,
                    commit_index: s.commit.load(Ordering::Relaxed),
                    applied_index: s.applied.load(Ordering::Relaxed),
                    is_leader: leader == self.config.id,
                }
            })
            .collect();
        NodeStatus {
            node: self.config.id,
            shard: self.i as u32,
            map_epoch: shared.map_epoch(),
            partitions,
        }
    }

    /// The map as served to clients: endpoints, and leader hints for partitions hosted here.
    fn wire_map(&self, map: &MetaMap) -> ClusterMap {
        let shared = &self.io.shared;
        map.to_wire(
            |node, shard| shared.client_endpoint(&self.config, node, shard as usize),
            |p| {
                shared
                    .stat(p)
                    .filter(|s| s.hosted.load(Ordering::Relaxed))
                    .map_or(0, |s| s.leader.load(Ordering::Relaxed))
            },
        )
    }

    /// Routes one request (module docs of `server`): answers it at once, or queues a proposal
    /// or a read.
    fn handle_request(&mut self, conn: Rc<ConnOut>, req: Request) {
        let id = req.id;
        let partition = match &req.op {
            Op::Status => {
                let status = self.node_status();
                conn.respond(ok_response(
                    id,
                    ResponseHeader::default(),
                    Outcome::Status(status),
                ));
                return;
            }
            Op::ClusterMap => {
                let resp = match &self.map {
                    Some(map) => ok_response(
                        id,
                        ResponseHeader::default(),
                        Outcome::ClusterMap(self.wire_map(map)),
                    ),
                    None => error_response(id, no_map()),
                };
                conn.respond(resp);
                return;
            }
            _ if self.map.is_none() => {
                conn.respond(error_response(id, no_map()));
                return;
            }
            _ if req.map_epoch != 0 && req.map_epoch != self.route_map.epoch => {
                // Thesis-independent routing rule: a request routed with another placement
                // than ours may belong elsewhere. Older: the client refreshes. Newer: this
                // node has not applied the map yet; the client backs off and retries.
                let e = if req.map_epoch < self.route_map.epoch {
                    WireError::StaleMap {
                        epoch: self.route_map.epoch,
                    }
                } else {
                    WireError::Unavailable {
                        reason: format!(
                            "this node has map epoch {}, the request was routed with {}",
                            self.route_map.epoch, req.map_epoch
                        ),
                    }
                };
                conn.respond(error_response(id, e));
                return;
            }
            Op::Range(r) if r.partition == META_PARTITION => {
                conn.respond(error_response(
                    id,
                    WireError::InvalidArgument {
                        reason: "partition 0 is the meta group; it holds no keys".into(),
                    },
                ));
                return;
            }
            Op::Range(r) => r.partition,
            Op::Txn(t) => {
                let mut ps = t
                    .keys()
                    .filter_map(|k| self.route_map.partition_of_key(k).map(|p| p.id));
                let Some(first) = ps.next() else {
                    conn.respond(error_response(
                        id,
                        WireError::InvalidArgument {
                            reason: "transaction without keys".into(),
                        },
                    ));
                    return;
                };
                if let Some(other) = ps.find(|&p| p != first) {
                    conn.respond(error_response(
                        id,
                        WireError::CrossPartition {
                            reason: format!("keys in partitions {first} and {other}"),
                        },
                    ));
                    return;
                }
                first
            }
            op => match op
                .routing_key()
                .and_then(|k| self.route_map.partition_of_key(k))
            {
                Some(p) => p.id,
                None => {
                    conn.respond(error_response(
                        id,
                        WireError::InvalidArgument {
                            reason: "request without a routable key".into(),
                        },
                    ));
                    return;
                }
            },
        };
        let Some(part) = self.parts.get(&partition) else {
            conn.respond(error_response(
                id,
                WireError::WrongShard {
                    epoch: self.route_map.epoch,
                },
            ));
            return;
        };
        match &req.op {
            Op::Get { consistency, .. } => {
                self.read(conn, req.id, partition, req.op.clone(), *consistency)
            }
            Op::Range(r) => self.read(conn, req.id, partition, req.op.clone(), r.consistency),
            Op::Put(_) | Op::Delete { .. } | Op::Txn(_) => {
                if part.raft.role() != Role::Leader {
                    let e = self.not_leader(part);
                    conn.respond(error_response(id, e));
                    return;
                }
                let cmd = match to_command(&req) {
                    Ok(c) => c,
                    Err(e) => {
                        conn.respond(error_response(id, e));
                        return;
                    }
                };
                if let Err(e) = cmd.validate(&self.cmd_limits) {
                    let err = match e {
                        command::InvalidCommand::TooLarge { max, .. } => {
                            WireError::TooLarge { limit: max as u64 }
                        }
                        other => WireError::InvalidArgument {
                            reason: other.to_string(),
                        },
                    };
                    conn.respond(error_response(id, err));
                    return;
                }
                let data = cmd.encode();
                let limit = self.config.tuning.proposal_queue_bytes_max;
                let Some(part) = self.parts.get_mut(&partition) else {
                    return;
                };
                if part.queued_bytes + data.len() > limit && !part.queued.is_empty() {
                    conn.respond(error_response(id, WireError::Busy));
                    return;
                }
                part.queued_bytes += data.len();
                part.queued.push((
                    data,
                    Waiter {
                        conn,
                        id,
                        term: 0,
                        op: req.op,
                        deadline: Instant::now() + REQUEST_TIMEOUT,
                    },
                ));
            }
            Op::Status | Op::ClusterMap => {}
        }
    }

    fn read(&mut self, conn: Rc<ConnOut>, id: u64, partition: u64, op: Op, c: Consistency) {
        let Some(part) = self.parts.get_mut(&partition) else {
            return;
        };
        if c == Consistency::Stale {
            let r = serve_read(part, id, &op, &self.io);
            conn.respond(r);
            return;
        }
        if c == Consistency::Linearizable && part.raft.role() != Role::Leader {
            let e = WireError::NotLeader {
                leader_node: part.raft.leader(),
                leader_endpoint: (part.raft.leader() != 0).then(|| {
                    self.io
                        .shared
                        .client_endpoint(&self.config, part.raft.leader(), self.i)
                }),
            };
            conn.respond(error_response(id, e));
            return;
        }
        // Thesis §6.4: confirm leadership with a heartbeat round (all reads of this turn share
        // one), or, on a follower (§6.4.1), ask the leader for its commit index; then serve
        // once the local applied index reaches the read index.
        let rid = self.next_read_id;
        self.next_read_id += 1;
        match part.raft.read_index(rid) {
            Ok(()) => {
                self.reads.insert(
                    rid,
                    PendingRead {
                        partition,
                        conn,
                        id,
                        op,
                        deadline: Instant::now() + REQUEST_TIMEOUT,
                        term: part.raft.term(),
                        leader: part.raft.leader(),
                        index: None,
                    },
                );
            }
            Err(raftcore::Error::ReadQueueFull { .. }) => {
                conn.respond(error_response(id, WireError::Busy))
            }
            Err(e) => conn.respond(error_response(
                id,
                WireError::Unavailable {
                    reason: e.to_string(),
                },
            )),
        }
    }

    /// Proposes every partition's queued commands as one batch.
    fn flush_proposals(&mut self) {
        for part in self.parts.values_mut() {
            if part.queued.is_empty() {
                continue;
            }
            let queued = std::mem::take(&mut part.queued);
            part.queued_bytes = 0;
            let datas: Vec<Bytes> = queued.iter().map(|(d, _)| d.clone()).collect();
            match part.raft.propose(&datas) {
                Ok(p) => {
                    for (k, (_, mut w)) in queued.into_iter().enumerate() {
                        w.term = p.term;
                        part.pending.insert(p.first_index + k as u64, w);
                    }
                }
                Err(e) => {
                    let err = match e {
                        raftcore::Error::NotLeader { leader_hint } => WireError::NotLeader {
                            leader_node: leader_hint,
                            leader_endpoint: None,
                        },
                        raftcore::Error::UncommittedBytesLimit { .. }
                        | raftcore::Error::ProposalTooLarge { .. } => WireError::Busy,
                        other => WireError::Unavailable {
                            reason: other.to_string(),
                        },
                    };
                    for (_, w) in queued {
                        w.conn.respond(error_response(w.id, err.clone()));
                    }
                }
            }
        }
    }

    /// Collects and handles the Readys of every partition with work: sends their messages,
    /// buffers their records in the WAL's next batch (group commit: the next sync covers
    /// them), applies what may be applied at once, and reports at once the Readys that need
    /// no sync. Returns whether there was any.
    async fn process_readies(&mut self) -> Result<bool, ServerError> {
        let mut readies: Vec<(u64, Ready)> = Vec::new();
        for (&p, part) in self.parts.iter_mut() {
            if part.raft.has_ready() {
                readies.push((p, part.raft.ready()));
            }
        }
        if readies.is_empty() {
            return Ok(false);
        }
        if self.syncing.is_some() {
            self.turns_in_flight += 1;
        }
        // 1. Messages that may go at once (thesis §10.2.1: the leader's appends in parallel
        //    with its own disk write).
        let mut out: Vec<(u64, Message)> = Vec::new();
        for (p, rd) in readies.iter_mut() {
            out.extend(
                std::mem::take(&mut rd.messages)
                    .into_iter()
                    .map(|m| (*p, m)),
            );
        }
        self.send(out);
        // 2. Buffer every Ready's records in the WAL, in number order per partition: the
        //    WAL writes its batches in order, so Readys become durable in order.
        for (p, rd) in readies.iter() {
            if !rd.must_persist() {
                continue;
            }
            let part = self.parts.get_mut(p).ok_or_else(|| internal(self.i, *p))?;
            if let Some(s) = &rd.snapshot {
                // The file is durable (write_file fsyncs) before the WAL drops any entry.
                let name = snapshot::file_name(*p, s.meta.index, s.meta.term);
                write_snapshot_file(self.i, &self.snap_dir, name, s.data.clone()).await?;
                if self.wal.last_index(*p) > s.meta.index {
                    let from = s.meta.index + 1;
                    wal_op(self.i, &self.wal, |w| w.truncate(*p, from)).await?;
                }
                let point = SnapshotPoint {
                    index: s.meta.index,
                    term: s.meta.term,
                };
                wal_op(self.i, &self.wal, |w| w.compact(*p, point)).await?;
                part.log_bytes = 0;
            }
            if let Some(first) = rd.entries.first() {
                // Raft paper §5.3: a conflicting suffix is replaced by the leader's entries.
                if first.index <= self.wal.last_index(*p) {
                    self.wal
                        .truncate(*p, first.index)
                        .map_err(wal_err(self.i))?;
                    part.truncate_gen = self.next_gen;
                }
                let entries: Vec<wal::Entry> = rd.entries.iter().map(convert::to_wal).collect();
                append_entries(self.i, &self.wal, *p, &entries).await?;
                part.log_bytes += rd.entries.iter().map(|e| e.size_bytes()).sum::<u64>();
            }
            if let Some(hs) = rd.hard_state {
                let hs = wal::HardState {
                    term: hs.term,
                    vote: hs.vote,
                    commit: hs.commit,
                };
                wal_op(self.i, &self.wal, |w| w.put_hard_state(*p, hs)).await?;
            }
        }
        // 3. At once for the Readys that need no sync: a Ready with nothing to persist, of a
        //    partition with no Ready awaiting durability, is durable now ("every Ready up to
        //    n"). Every other Ready joins the group of the sync that will make it durable:
        //    the next sync if it has records, else the group of its partition's newest
        //    pending Ready (which that group's sync covers).
        let mut after: Vec<(u64, Message)> = Vec::new();
        let mut apply_now: Vec<(u64, Ready)> = Vec::with_capacity(readies.len());
        for (p, mut rd) in readies {
            let part = self.parts.get_mut(&p).ok_or_else(|| internal(self.i, p))?;
            let must_persist = rd.must_persist();
            if !must_persist && part.pending_gen <= self.durable_gen {
                debug_assert_eq!(part.apply_deferred, 0);
                after.extend(
                    std::mem::take(&mut rd.persisted_messages)
                        .into_iter()
                        .map(|m| (p, m)),
                );
                part.raft
                    .on_persisted(rd.number)
                    .map_err(|e| ServerError::Recovery {
                        shard: self.i,
                        partition: p,
                        reason: format!("on_persisted: {e}"),
                    })?;
                apply_now.push((p, rd));
                continue;
            }
            let gen = if must_persist {
                self.next_gen
            } else {
                part.pending_gen
            };
            part.pending_gen = gen;
            // 4. may run before the Ready is durable: its committed entries are committed and
            //    already durable here (raftcore hands out only entries up to what was reported
            //    persisted), so applying them and answering their clients acknowledges nothing
            //    that could be lost. Applies stay in order per partition: a Ready carrying a
            //    snapshot (restore only once the snapshot is durable) defers its own apply and
            //    every later one of the partition to its sync's completion.
            let defer = part.apply_deferred > 0 || rd.snapshot.is_some();
            let number = rd.number;
            let persisted_messages = std::mem::take(&mut rd.persisted_messages);
            let deferred = if defer {
                part.apply_deferred += 1;
                rd.entries = Vec::new();
                Some(rd)
            } else {
                apply_now.push((p, rd));
                None
            };
            let u = Unpersisted {
                partition: p,
                number,
                persisted_messages,
                deferred,
            };
            match &mut self.syncing {
                Some(s) if s.gen == gen => s.covers.push(u),
                _ => {
                    debug_assert_eq!(gen, self.next_gen);
                    self.unsynced.push(u);
                }
            }
        }
        self.send(after);
        for (p, rd) in apply_now {
            self.apply_ready(p, rd).await?;
        }
        self.meta_applied()?;
        self.publish();
        Ok(true)
    }

    async fn apply_ready(&mut self, p: u64, rd: Ready) -> Result<(), ServerError> {
        let i = self.i;
        let sm_config = recover::sm_config(p, &self.config.tuning);
        let snapshot_log_bytes = self.config.tuning.snapshot_log_bytes;
        let part = self.parts.get_mut(&p).ok_or_else(|| internal(i, p))?;
        if let Some(s) = rd.snapshot {
            let decoded =
                snapshot::decode(&s.data, &sm_config).map_err(|e| ServerError::Snapshot {
                    shard: i,
                    reason: format!("received snapshot of partition {p}: {e}"),
                })?;
            part.sm = decoded.state;
            // Requests waiting on entries the snapshot replaced: outcome unknown here.
            for w in take_waiters(&mut part.pending, ..=s.meta.index, |_| true) {
                w.conn.respond(error_response(
                    w.id,
                    WireError::Unavailable {
                        reason: "replaced by a snapshot; retry".into(),
                    },
                ));
            }
            recover::remove_older_snapshots(&self.snap_dir, p, s.meta.index);
            tracing::info!(
                shard = i,
                partition = p,
                index = s.meta.index,
                "installed snapshot"
            );
        }
        let mut last_applied = None;
        for e in rd.committed_entries {
            last_applied = Some(e.index);
            if e.index <= part.sm.applied_index() {
                // Applied already (the meta group's entries at startup, `open_partition`).
                continue;
            }
            let result = match apply_entry(&mut part.sm, &e) {
                Ok(r) => r,
                Err(reason) => {
                    tracing::error!(shard = i, partition = p, %reason, "apply");
                    None
                }
            };
            if let Some(w) = part.pending.remove(&e.index) {
                let header = ResponseHeader {
                    partition: p,
                    term: part.raft.term(),
                    applied_index: e.index,
                };
                let resp = match result {
                    Some(r) if w.term == e.term => to_response(w.id, header, &w.op, r),
                    // Another leader's entry took this index: ours was not committed
                    // (Raft paper §5.3 / §5.4.2).
                    _ => error_response(
                        w.id,
                        WireError::NotLeader {
                            leader_node: part.raft.leader(),
                            leader_endpoint: None,
                        },
                    ),
                };
                w.conn.respond(resp);
            }
        }
        if let Some(idx) = last_applied {
            part.raft.on_applied(idx);
        }
        // Reads: record read indexes, then serve every read whose index is applied.
        for rs in rd.read_states {
            if let Some(r) = self.reads.get_mut(&rs.request_id) {
                r.index = Some(rs.index);
            }
        }
        resolve_orphans(part, &mut self.reads);
        let applied = part.sm.applied_index();
        for r in take_reads(&mut self.reads, |r| {
            r.partition == p && r.index.is_some_and(|x| x <= applied)
        }) {
            r.conn.respond(serve_read(part, r.id, &r.op, &self.io));
        }
        // Snapshot when the retained log is large (Raft paper §7).
        if part.log_bytes >= snapshot_log_bytes && applied > part.raft.first_index() {
            take_snapshot(i, &self.snap_dir, &self.wal, part).await?;
        }
        Ok(())
    }

    /// Sends messages, batched into one frame per destination node (split when large).
    fn send(&mut self, msgs: Vec<(u64, Message)>) {
        if msgs.is_empty() {
            return;
        }
        let mut by_node: BTreeMap<u64, Vec<(u64, RaftMessage)>> = BTreeMap::new();
        for (p, m) in msgs {
            by_node
                .entry(m.to)
                .or_default()
                .push((p, convert::to_wire(m)));
        }
        let fill_max = self.io.limits.frame_bytes_max / PEER_FRAME_FILL_DIVISOR;
        for (node, messages) in by_node {
            let Some(tx) = self.peers_out.get(&node) else {
                tracing::warn!(shard = self.i, node, "message for an unknown node; dropped");
                continue;
            };
            let mut batch: Vec<(u64, RaftMessage)> = Vec::new();
            let mut bytes = 0usize;
            let mut frames: Vec<Vec<(u64, RaftMessage)>> = Vec::new();
            for (p, m) in messages {
                let size = 128
                    + m.entries.iter().map(|e| e.data.len() + 32).sum::<usize>()
                    + m.snapshot.as_ref().map_or(0, |s| s.data.len() + 64);
                if !batch.is_empty() && bytes + size > fill_max {
                    frames.push(std::mem::take(&mut batch));
                    bytes = 0;
                }
                bytes += size;
                batch.push((p, m));
            }
            if !batch.is_empty() {
                frames.push(batch);
            }
            for messages in frames {
                let pb = PeerBatch {
                    from_node: self.config.id,
                    to_node: node,
                    messages,
                };
                let mut buf = BytesMut::new();
                if let Err(e) = self.enc.peer_frame(&mut buf, 0, &pb, &self.io.limits) {
                    tracing::error!(shard = self.i, node, error = %e, "peer frame over the limit; dropped");
                    continue;
                }
                tx.push(buf.freeze());
            }
        }
    }

    fn publish(&self) {
        for part in self.parts.values() {
            self.io.shared.publish(
                part.id,
                part.raft.leader(),
                part.raft.term(),
                part.raft.committed(),
                part.sm.applied_index(),
            );
        }
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
/// - A read still waiting for its read index when the term or the known leader changed since
///   it was asked: raftcore drops pending ReadIndex requests whenever it resets its role
///   (a new term, or a leader stepping down in the same term by CheckQuorum), and a follower's
///   request to a leader that is gone is never answered. `Unavailable`; reads are safe to
///   retry.
///
/// Requests issued after the last change cannot be orphaned by it, so this scans only when
/// (applied term, term, leader) changed since the previous call.
fn resolve_orphans(part: &mut Partition, reads: &mut HashMap<u64, PendingRead>) {
    let applied = part.sm.applied_index();
    let applied_term = part.sm.applied_term();
    let (term, leader) = (part.raft.term(), part.raft.leader());
    if part.orphans_seen == (applied_term, term, leader) {
        return;
    }
    part.orphans_seen = (applied_term, term, leader);
    for w in take_waiters(&mut part.pending, applied + 1.., |w| w.term < applied_term) {
        w.conn.respond(error_response(
            w.id,
            WireError::NotLeader {
                leader_node: leader,
                leader_endpoint: None,
            },
        ));
    }
    let id = part.id;
    for r in take_reads(reads, |r| {
        r.partition == id && r.index.is_none() && (r.term != term || r.leader != leader)
    }) {
        r.conn.respond(error_response(
            r.id,
            WireError::Unavailable {
                reason: "leadership changed before the read index was known; retry".into(),
            },
        ));
    }
}

/// Removes and returns the waiters of `pending` in `range` that `pred` selects, in index order.
fn take_waiters(
    pending: &mut BTreeMap<u64, Waiter>,
    range: impl std::ops::RangeBounds<u64>,
    pred: impl Fn(&Waiter) -> bool,
) -> Vec<Waiter> {
    let keys: Vec<u64> = pending
        .range(range)
        .filter(|(_, w)| pred(w))
        .map(|(k, _)| *k)
        .collect();
    keys.into_iter()
        .filter_map(|k| pending.remove(&k))
        .collect()
}

/// Removes and returns the pending reads that `pred` selects.
fn take_reads(
    reads: &mut HashMap<u64, PendingRead>,
    pred: impl Fn(&PendingRead) -> bool,
) -> Vec<PendingRead> {
    let keys: Vec<u64> = reads
        .iter()
        .filter(|(_, r)| pred(r))
        .map(|(k, _)| *k)
        .collect();
    keys.into_iter().filter_map(|k| reads.remove(&k)).collect()
}

/// Recovers (or bootstraps) one partition with `voters` as its founding replicas. The meta
/// group's committed entries are applied at once, so the map it holds is known before any
/// shard chooses its partitions; raftcore hands them out again in the first Ready, and
/// `apply_ready` skips what the state machine already applied.
async fn open_partition(
    i: usize,
    config: &NodeConfig,
    wal: &Wal,
    snap_dir: &std::path::Path,
    p: u64,
    voters: &[u64],
) -> Result<Partition, ServerError> {
    let (state, mut sm) =
        recover::recover_partition(i, wal, snap_dir, p, voters, &config.tuning).await?;
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
        queued: Vec::new(),
        queued_bytes: 0,
        log_bytes: 0,
        orphans_seen: (0, 0, 0),
        pending_gen: 0,
        apply_deferred: 0,
        truncate_gen: 0,
    })
}

/// Applies one committed entry to a state machine. Returns the command's result for a normal
/// entry; a no-op or membership entry only advances the applied index. Err: the state machine
/// refused the index (a bug: entries out of order).
fn apply_entry(
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

fn internal(shard: usize, partition: u64) -> ServerError {
    ServerError::Recovery {
        shard,
        partition,
        reason: "partition vanished (bug)".into(),
    }
}

/// Runs a buffering WAL operation; when the WAL's batch is full (`batch_bytes_max`), makes the
/// batch durable first (after the sync in flight, if any: the WAL serialises them) and retries
/// once. Syncing in the middle of a turn keeps the order of Readys; they are still reported
/// persisted only when the sync their group belongs to completes (module docs of `server`).
async fn wal_op(
    shard: usize,
    wal: &Wal,
    f: impl Fn(&Wal) -> Result<(), wal::WalError>,
) -> Result<(), ServerError> {
    match f(wal) {
        Err(wal::WalError::BatchFull { bytes, bytes_max }) => {
            tracing::debug!(shard, bytes, bytes_max, "WAL batch full; syncing mid-turn");
            wal.sync().await.map_err(wal_err(shard))?;
            f(wal).map_err(wal_err(shard))
        }
        r => r.map_err(wal_err(shard)),
    }
}

/// Appends entries, splitting them when they do not fit in one WAL batch.
async fn append_entries(
    shard: usize,
    wal: &Wal,
    partition: u64,
    entries: &[wal::Entry],
) -> Result<(), ServerError> {
    match wal_op(shard, wal, |w| w.append(partition, entries)).await {
        Err(ServerError::Wal {
            source: wal::WalError::BatchFull { .. },
            ..
        }) if entries.len() > 1 => {
            let (a, b) = entries.split_at(entries.len() / 2);
            Box::pin(append_entries(shard, wal, partition, a)).await?;
            Box::pin(append_entries(shard, wal, partition, b)).await
        }
        r => r,
    }
}

/// Writes a snapshot file (write, fsync, rename, fsync the directory: `snapshot::write_file`)
/// on glommio's blocking thread pool, so the shard's other tasks (sockets) keep running while
/// the disk works. The shard's event loop still waits for it: the WAL must not drop entries
/// before the file is durable.
async fn write_snapshot_file(
    shard: usize,
    dir: &std::path::Path,
    name: String,
    data: Bytes,
) -> Result<(), ServerError> {
    let dir = dir.to_path_buf();
    glommio::executor()
        .spawn_blocking(move || snapshot::write_file(&dir, &name, &data).map(|_| ()))
        .await
        .map_err(|e| ServerError::Snapshot {
            shard,
            reason: e.to_string(),
        })
}

/// Writes a snapshot of `part` at its applied index, compacts Raft's log and the WAL behind it.
async fn take_snapshot(
    i: usize,
    snap_dir: &std::path::Path,
    wal: &Wal,
    part: &mut Partition,
) -> Result<(), ServerError> {
    let index = part.sm.applied_index();
    let term = part.sm.applied_term();
    let data = snapshot::encode(&part.sm, &convert::encode_conf(part.raft.conf()));
    let name = snapshot::file_name(part.id, index, term);
    write_snapshot_file(i, snap_dir, name, data.clone()).await?;
    let bytes = data.len();
    match part.raft.compact(index, data) {
        Ok(()) => {}
        Err(e) => {
            tracing::debug!(shard = i, partition = part.id, error = %e, "compaction skipped");
            return Ok(());
        }
    }
    wal_op(i, wal, |w| {
        w.compact(part.id, SnapshotPoint { index, term })
    })
    .await?;
    recover::remove_older_snapshots(snap_dir, part.id, index);
    part.log_bytes = 0;
    tracing::info!(
        shard = i,
        partition = part.id,
        index,
        bytes,
        "snapshot taken, log compacted"
    );
    Ok(())
}

fn no_map() -> WireError {
    WireError::Unavailable {
        reason: "no cluster map yet: the meta group has not committed one (cluster starting)"
            .into(),
    }
}

fn ok_response(id: u64, header: ResponseHeader, outcome: Outcome) -> Response {
    Response {
        id,
        header,
        outcome: Ok(outcome),
    }
}

fn error_response(id: u64, e: WireError) -> Response {
    Response {
        id,
        header: ResponseHeader::default(),
        outcome: Err(e),
    }
}

/// The command a write request proposes; the request's (session, seq) becomes the command's
/// session when the session is non-zero.
fn to_command(req: &Request) -> Result<Command, WireError> {
    let op = match &req.op {
        Op::Put(p) => CommandOp::Put(command::Put {
            key: p.key.clone(),
            value: p.value.clone(),
            if_absent: p.if_absent,
            return_prev: p.return_previous,
        }),
        Op::Delete {
            key,
            return_previous,
        } => CommandOp::Delete(command::Delete {
            key: key.clone(),
            return_prev: *return_previous,
        }),
        Op::Txn(t) => {
            let ops = |list: &[wire::TxnOp]| -> Result<Vec<command::TxnOp>, WireError> {
                list.iter()
                    .map(|o| match o {
                        wire::TxnOp::Get { key } => Ok(command::TxnOp::Get { key: key.clone() }),
                        wire::TxnOp::Put(p) if p.if_absent => Err(WireError::InvalidArgument {
                            reason: "put-if-absent inside a transaction (use a compare)".into(),
                        }),
                        wire::TxnOp::Put(p) => Ok(command::TxnOp::Put {
                            key: p.key.clone(),
                            value: p.value.clone(),
                            return_prev: p.return_previous,
                        }),
                        wire::TxnOp::Delete {
                            key,
                            return_previous,
                        } => Ok(command::TxnOp::Delete {
                            key: key.clone(),
                            return_prev: *return_previous,
                        }),
                    })
                    .collect()
            };
            CommandOp::Txn(command::Txn {
                compares: t
                    .compares
                    .iter()
                    .map(|c| command::Compare {
                        key: c.key.clone(),
                        cmp: match c.op {
                            wire::CompareOp::Equal => command::CompareOp::Equal,
                            wire::CompareOp::NotEqual => command::CompareOp::NotEqual,
                            wire::CompareOp::Less => command::CompareOp::Less,
                            wire::CompareOp::Greater => command::CompareOp::Greater,
                        },
                        target: match &c.target {
                            wire::CompareTarget::Value(v) => {
                                command::CompareTarget::Value(v.clone())
                            }
                            wire::CompareTarget::Version(v) => command::CompareTarget::Version(*v),
                            wire::CompareTarget::CreateRevision(v) => {
                                command::CompareTarget::CreateRevision(*v)
                            }
                            wire::CompareTarget::ModRevision(v) => {
                                command::CompareTarget::ModRevision(*v)
                            }
                            wire::CompareTarget::Exists(b) => command::CompareTarget::Exists(*b),
                        },
                    })
                    .collect(),
                success: ops(&t.success)?,
                failure: ops(&t.failure)?,
            })
        }
        _ => {
            return Err(WireError::Internal {
                reason: "not a write".into(),
            })
        }
    };
    let session = (req.session != 0 && !(req.seq == 0 && op.is_read_only())).then_some(Session {
        client_id: req.session,
        sequence: req.seq,
        first_unacked: req.first_unacked,
    });
    if session.is_some() && req.seq == 0 {
        return Err(WireError::InvalidArgument {
            reason: "a write with a session needs a sequence number >= 1".into(),
        });
    }
    Ok(Command { session, op })
}

fn kv_opt(key: &Bytes, kv: Option<sm::KeyValue>) -> Option<wire::KeyValue> {
    kv.map(|kv| convert::kv_to_wire(key.clone(), &kv))
}

/// Turns an applied command's result into the wire outcome.
fn to_response(
    id: u64,
    header: ResponseHeader,
    op: &Op,
    r: Result<sm::Response, ApplyError>,
) -> Response {
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            let err = match e {
                // The client already had an answer for this sequence, or gave up waiting for
                // it; not retryable, and the write's outcome is unknown to this request.
                ApplyError::SessionSequenceStale { .. } => WireError::OutcomeUnknown {
                    reason: e.to_string(),
                },
                other => WireError::Internal {
                    reason: other.to_string(),
                },
            };
            return Response {
                id,
                header,
                outcome: Err(err),
            };
        }
    };
    let outcome = match (op, r.op) {
        (Op::Put(p), sm::ResponseOp::Put { written, prev }) => Outcome::Put(wire::PutResult {
            written,
            previous: kv_opt(&p.key, prev),
            revision: if written { r.revision } else { 0 },
        }),
        (Op::Delete { key, .. }, sm::ResponseOp::Delete { deleted, prev }) => {
            Outcome::Delete(wire::DeleteResult {
                deleted,
                previous: kv_opt(key, prev),
                revision: if deleted { r.revision } else { 0 },
            })
        }
        (Op::Txn(t), sm::ResponseOp::Txn { succeeded, results }) => {
            let branch = if succeeded { &t.success } else { &t.failure };
            let mut wrote = false;
            let results = branch
                .iter()
                .zip(results)
                .map(|(o, res)| match res {
                    sm::OpResult::Get { kv } => wire::TxnOpResult::Get(kv_opt(o.key(), kv)),
                    sm::OpResult::Put { prev } => {
                        wrote = true;
                        wire::TxnOpResult::Put {
                            written: true,
                            previous: kv_opt(o.key(), prev),
                        }
                    }
                    sm::OpResult::Delete { deleted, prev } => {
                        wrote |= deleted;
                        wire::TxnOpResult::Delete {
                            deleted,
                            previous: kv_opt(o.key(), prev),
                        }
                    }
                })
                .collect();
            Outcome::Txn(wire::TxnResult {
                succeeded,
                results,
                revision: if wrote { r.revision } else { 0 },
            })
        }
        _ => {
            return Response {
                id,
                header,
                outcome: Err(WireError::Internal {
                    reason: "result does not match the request".into(),
                }),
            }
        }
    };
    ok_response(id, header, outcome)
}

/// Serves a read from the local state machine.
fn serve_read(part: &Partition, id: u64, op: &Op, io: &ShardIo) -> Response {
    let header = ResponseHeader {
        partition: part.id,
        term: part.raft.term(),
        applied_index: part.sm.applied_index(),
    };
    match op {
        Op::Get { key, .. } => {
            let kv = part
                .sm
                .get(key)
                .map(|kv| convert::kv_to_wire(key.clone(), kv));
            ok_response(id, header, Outcome::Get(kv))
        }
        Op::Range(r) => {
            // wire: [start, end) with end empty = no end, resuming strictly after `after`.
            // state machine: end == [0] means "no end"; the smallest key after `after` is
            // `after` followed by a zero byte.
            let start: Bytes = if r.after.is_empty() {
                r.start.clone()
            } else {
                let mut s = r.after.to_vec();
                s.push(0);
                let s = Bytes::from(s);
                if s > r.start {
                    s
                } else {
                    r.start.clone()
                }
            };
            let end: &[u8] = if r.end.is_empty() { &[0] } else { &r.end };
            let limit = if r.limit == 0 {
                RANGE_KEYS_DEFAULT
            } else {
                (r.limit as usize).min(RANGE_KEYS_DEFAULT)
            };
            let res = if !r.end.is_empty() && r.end <= start {
                sm::RangeResult::default()
            } else {
                part.sm
                    .range(&start, end, limit, r.keys_only, io.range_bytes_max())
            };
            let kvs = res
                .kvs
                .into_iter()
                .map(|(k, kv)| convert::kv_to_wire(k, &kv))
                .collect();
            ok_response(
                id,
                header,
                Outcome::Range(wire::RangeResult {
                    kvs,
                    more: res.more,
                }),
            )
        }
        _ => error_response(
            id,
            WireError::Internal {
                reason: "not a read".into(),
            },
        ),
    }
}
