//! The simulated world: nodes, shards, network, disks, clients, faults, checks.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use raftcore::linearizability::{check_kv, Event, KvOutput, Outcome as LinOutcome};
use raftcore::{Message, SplitMix64};
use wal::{FaultConfig, LogStore, MemLog};
use wire::{ClusterMap, Consistency, Op, Outcome, Request, Response};

use super::client::{self, Client, ClientOp, History, Verdict};
use crate::config::{NodeConfig, Tuning};
use crate::meta::{self, MetaMap};
use crate::server::shard_core::{ShardCore, SnapshotStore, SnapshotWrite};
use crate::server::shared::NodeShared;
use crate::server::ServerError;

/// Knobs of one run. Fault rates are drawn per seed from these ranges.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Steps of the safety phase (faults on).
    pub safety_steps: u64,
    /// Steps after healing in which every key must take a new write and every request must be
    /// answered.
    pub liveness_steps: u64,
    /// Steps per Raft tick.
    pub steps_per_tick: u64,
    /// Concurrent clients.
    pub clients: u64,
    /// Keys (spread over the partitions by the real slot map).
    pub keys: u64,
    /// Step budget of the linearizability search per key.
    pub lin_step_budget: u64,
    /// Print notable events.
    pub trace: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            safety_steps: 3_000,
            liveness_steps: 3_000,
            steps_per_tick: 4,
            clients: 5,
            keys: 6,
            lin_step_budget: 2_000_000,
            trace: false,
        }
    }
}

/// A failed run.
#[derive(Debug, Clone)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// Step at which it was detected.
    pub step: u64,
    /// What broke.
    pub what: String,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} failed at step {}: {}\n  replay: cargo run --release -p engine --bin node-sim -- --seeds {}..{} --trace",
            self.seed,
            self.step,
            self.what,
            self.seed,
            self.seed + 1
        )
    }
}

/// What a passing run did.
#[derive(Debug, Clone, Default)]
pub struct SimStats {
    /// Client operations completed.
    pub ops: u64,
    /// Faults injected (crashes, partitions, disk failures).
    pub faults: u64,
    /// Snapshots installed or taken (files written).
    pub snapshots: u64,
    /// Leadership transfers asked (`TransferLeader`).
    pub transfers: u64,
    /// Leadership transfers answered as completed.
    pub transfers_done: u64,
}

/// Fault rates of one seed, per million steps.
#[derive(Debug, Clone)]
struct Faults {
    drop_ppm: u64,
    dup_ppm: u64,
    delay_max: u64,
    partition_ppm: u64,
    crash_ppm: u64,
    sync_fail_ppm: u64,
    write_fail_ppm: u64,
    sync_delay_max: u64,
    slow_sync_ppm: u64,
    client_death_ppm: u64,
    drift: bool,
}

/// Files of one partition: index -> (term, bytes).
type SnapFiles = BTreeMap<u64, (u64, Bytes)>;

/// Snapshot files of one shard, kept across crashes once written.
#[derive(Clone, Default)]
pub(super) struct SimSnaps(Rc<RefCell<BTreeMap<u64, SnapFiles>>>);

impl SnapshotStore for SimSnaps {
    fn newest(&self, partition: u64) -> Result<Option<(u64, u64, Bytes)>, String> {
        Ok(self
            .0
            .borrow()
            .get(&partition)
            .and_then(|m| m.last_key_value())
            .map(|(i, (t, b))| (*i, *t, b.clone())))
    }

    fn remove_older(&self, partition: u64, keep_index: u64) {
        if let Some(m) = self.0.borrow_mut().get_mut(&partition) {
            m.retain(|&i, _| i >= keep_index);
        }
    }
}

/// Where a reply goes: a client's connection to a node incarnation.
#[derive(Clone, Debug)]
struct Conn {
    client: u64,
    node: u64,
    incarnation: u64,
    /// Unique per delivered request: checks each is answered exactly once.
    token: u64,
}

type Core = ShardCore<MemLog, SimSnaps, Conn>;

struct Shard {
    core: Core,
    /// (due step, generation) of the sync in flight.
    sync_due: Option<(u64, u64)>,
    /// Snapshot files being written: (due step, write).
    snap_due: Vec<(u64, SnapshotWrite)>,
}

struct Node {
    id: u64,
    config: Arc<NodeConfig>,
    logs: Vec<Rc<MemLog>>,
    snaps: Vec<SimSnaps>,
    shared: Arc<NodeShared>,
    /// Empty while down.
    shards: Vec<Shard>,
    incarnation: u64,
    restart_at: Option<u64>,
    /// Misses one tick in every `drift` (0: none).
    drift: u64,
    ticks: u64,
    /// Highest applied index seen per partition in this incarnation.
    applied_seen: BTreeMap<u64, u64>,
}

enum Packet {
    Peer {
        from: u64,
        to: u64,
        partition: u64,
        msg: Message,
    },
    Request {
        client: u64,
        node: u64,
        shard: usize,
        req: Request,
    },
    Reply {
        conn: Conn,
        resp: Response,
    },
}

struct World {
    seed: u64,
    cfg: SimConfig,
    rng: SplitMix64,
    faults: Faults,
    /// Leadership transfers (an operator's `corum ctl leader transfer`), drawn from their
    /// own generator so seeds without them replay exactly as before they existed.
    admin_rng: SplitMix64,
    transfer_ppm: u64,
    step: u64,
    nodes: Vec<Node>,
    net: BTreeMap<(u64, u64), Packet>,
    net_seq: u64,
    /// Directed node pairs that cannot talk (from, to).
    cut: BTreeSet<(u64, u64)>,
    /// (client, node) pairs cut.
    client_cut: BTreeSet<(u64, u64)>,
    heal_at: u64,
    healed: bool,
    clients: Vec<Client>,
    keys: Vec<Bytes>,
    route: ClusterMap,
    history: History,
    /// Requests delivered to a core and not yet answered: token -> (node, incarnation).
    open_requests: BTreeMap<u64, (u64, u64)>,
    next_token: u64,
    next_value: u64,
    stats: SimStats,
    /// A violation found where no error can be returned (a crash), reported after the step.
    violation: Option<String>,
    /// Partitions that took a client write after healing.
    written_after_heal: BTreeSet<u64>,
}

/// The client id of the operator asking for leadership transfers.
const ADMIN: u64 = u64::MAX;

fn fail(w: &World, what: impl Into<String>) -> SimFailure {
    SimFailure {
        seed: w.seed,
        step: w.step,
        what: what.into(),
    }
}

/// Runs one seed: a safety phase with faults, then healing and a liveness phase, then the
/// checks (module docs of `sim`).
pub fn run_seed(seed: u64, cfg: &SimConfig) -> Result<SimStats, SimFailure> {
    let mut w = World::new(seed, cfg.clone())?;
    let total = cfg.safety_steps + cfg.liveness_steps;
    while w.step < total {
        if !w.healed && w.step >= cfg.safety_steps {
            w.heal();
        }
        w.step()?;
    }
    w.finish()
}

impl World {
    fn new(seed: u64, cfg: SimConfig) -> Result<World, SimFailure> {
        let mut rng = SplitMix64::new(seed ^ 0x5eed_c0de);
        let n_nodes = if rng.below(4) == 0 { 5 } else { 3 };
        let shards = 1 + rng.below(2) as usize;
        let partitions = 1 + rng.below(4) as u32;
        let faults = Faults {
            drop_ppm: [0, 10_000, 50_000][rng.below(3) as usize],
            dup_ppm: [0, 10_000][rng.below(2) as usize],
            delay_max: 1 + rng.below(6),
            partition_ppm: [0, 1_000, 3_000][rng.below(3) as usize],
            crash_ppm: [0, 300, 1_000][rng.below(3) as usize],
            sync_fail_ppm: [0, 0, 100][rng.below(3) as usize],
            write_fail_ppm: [0, 0, 100][rng.below(3) as usize],
            sync_delay_max: 1 + rng.below(8),
            slow_sync_ppm: [0, 2_000][rng.below(2) as usize],
            client_death_ppm: [0, 500][rng.below(2) as usize],
            drift: rng.chance(300_000),
        };
        let batch_bytes_max = if rng.chance(300_000) { 4096 } else { 8 << 20 };
        let mut admin_rng = SplitMix64::new(seed ^ 0xad31_7a11);
        let transfer_ppm = [0, 0, 3_000][admin_rng.below(3) as usize];
        let snapshot_choice = rng.below(3) as usize;
        let tuning = Tuning {
            tick_ms: 10,
            heartbeat_ticks: 2,
            election_ticks_min: 10,
            snapshot_log_bytes: [2 << 10, 16 << 10, 1 << 20][snapshot_choice],
            // No history, a short one that compacts all the time, a long one: the history
            // travels in snapshots and must agree on every replica. Derived from the
            // snapshot draw, so seeds keep their schedules.
            history_revisions: [0, 3, 1000][snapshot_choice],
            sessions_max: 64,
            session_results_max: 64,
            connection_requests_max: 64,
            request_timeout_ms: 600,
            ..Tuning::default()
        };
        let peers: BTreeMap<u64, SocketAddr> = (1..=n_nodes)
            .map(|id| (id, addr(20_000 + id as u16 * 100)))
            .collect();
        let mut nodes = Vec::new();
        for id in 1..=n_nodes {
            let config = Arc::new(NodeConfig {
                id,
                data_dir: "/nonexistent".into(),
                client_addr: addr(10_000 + id as u16 * 100),
                peer_addr: peers[&id],
                peers: peers.clone(),
                shards,
                partitions,
                replicas: 3,
                pin: false,
                metrics_addr: None,
                tuning: tuning.clone(),
                tls: None,
            });
            let logs = (0..shards)
                .map(|s| {
                    let log = MemLog::new(FaultConfig {
                        seed: seed ^ (id << 8) ^ s as u64,
                        unsynced_survival_percent: 50,
                    });
                    log.set_batch_bytes_max(batch_bytes_max);
                    Rc::new(log)
                })
                .collect();
            nodes.push(Node {
                id,
                shared: Arc::new(NodeShared::new(&config)),
                config,
                logs,
                snaps: (0..shards).map(|_| SimSnaps::default()).collect(),
                shards: Vec::new(),
                incarnation: 0,
                restart_at: None,
                drift: if faults.drift && rng.chance(500_000) {
                    20 + rng.below(20)
                } else {
                    0
                },
                ticks: 0,
                applied_seen: BTreeMap::new(),
            });
        }
        let map = MetaMap::initial(&nodes[0].config);
        let route = map.to_wire(|_, _| String::new(), |_| 0);
        let keys: Vec<Bytes> = (0..cfg.keys)
            .map(|k| Bytes::from(format!("k{k}")))
            .collect();
        let clients = (0..cfg.clients)
            .map(|id| Client {
                id,
                sessionless: id % 3 == 2,
                session: 1 + rng.next_u64() % (u64::MAX - 1),
                next_seq: 1,
                next_req: 0,
                op: None,
                idle_until: 0,
                leaders: BTreeMap::new(),
                ops_done: 0,
            })
            .collect();
        let mut w = World {
            seed,
            cfg,
            rng,
            faults,
            admin_rng,
            transfer_ppm,
            step: 0,
            nodes,
            net: BTreeMap::new(),
            net_seq: 0,
            cut: BTreeSet::new(),
            client_cut: BTreeSet::new(),
            heal_at: 0,
            healed: false,
            clients,
            keys,
            route,
            history: History::default(),
            open_requests: BTreeMap::new(),
            next_token: 0,
            next_value: 0,
            stats: SimStats::default(),
            violation: None,
            written_after_heal: BTreeSet::new(),
        };
        if w.cfg.trace {
            eprintln!(
                "seed {seed}: {n_nodes} nodes x {shards} shards, {partitions} partitions, faults {:?}, batch {batch_bytes_max}",
                w.faults
            );
        }
        for n in 0..w.nodes.len() {
            w.start_node(n)?;
        }
        Ok(w)
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.cfg.trace {
            eprintln!("[{:6}] {}", self.step, what());
        }
    }

    // ---------------------------------------------------------------- node life

    /// Opens every shard of node `n` from its log and snapshot files (the real recovery path),
    /// shard 0 first (the meta group decides what the others open), as the driver does.
    fn start_node(&mut self, n: usize) -> Result<(), SimFailure> {
        let node = &mut self.nodes[n];
        node.incarnation += 1;
        node.shared = Arc::new(NodeShared::new(&node.config));
        node.applied_seen.clear();
        node.restart_at = None;
        let mut shards = Vec::new();
        for s in 0..node.config.shards {
            let boot = if s == 0 { None } else { node.shared.map() };
            let opened = futures_lite::future::block_on(ShardCore::open(
                s,
                node.config.clone(),
                node.shared.clone(),
                node.logs[s].clone(),
                node.snaps[s].clone(),
                boot,
            ));
            let mut core = match opened {
                Ok(c) => c,
                Err(e) => {
                    return Err(SimFailure {
                        seed: self.seed,
                        step: self.step,
                        what: format!("node {} shard {s} failed to open: {e}", node.id),
                    })
                }
            };
            let mut out = core.take_output();
            if let Some(map) = out.map_committed.take() {
                node.shared.set_map(map);
            }
            if let Some(gen) = out.start_sync {
                let r = futures_lite::future::block_on(node.logs[s].sync()).map(|_| ());
                core.sync_done(gen, r).map_err(|e| SimFailure {
                    seed: self.seed,
                    step: self.step,
                    what: format!("node {} shard {s}: sync at open: {e}", node.id),
                })?;
            }
            let rest = core.take_output();
            debug_assert!(rest.replies.is_empty());
            shards.push(Shard {
                core,
                sync_due: None,
                snap_due: Vec::new(),
            });
            let _ = rest;
        }
        node.shards = shards;
        let id = node.id;
        self.trace(|| format!("node {id} started"));
        Ok(())
    }

    /// Kills node `n`: everything not synced is lost; its connections vanish.
    fn crash_node(&mut self, n: usize, why: &str) {
        let down_for = 20 + self.rng.below(400);
        let node = &mut self.nodes[n];
        if node.shards.is_empty() {
            return;
        }
        // What raftcore was told is durable must survive the crash (Ready contract, step 3).
        let mut claims = Vec::new();
        for (si, sh) in node.shards.iter().enumerate() {
            for p in sh.core.partitions() {
                let (raft, _) = sh.core.inspect(p).expect("listed");
                let persisted = raft.persisted();
                claims.push((si, p, persisted, raft.log_term(persisted)));
            }
        }
        node.shards.clear();
        for log in &node.logs {
            log.crash();
        }
        for (si, p, persisted, term) in claims {
            let log = &node.logs[si];
            let snap = node.snaps[si].newest(p).ok().flatten().map_or(0, |x| x.0);
            if persisted <= snap || persisted <= log.snapshot_point(p).map_or(0, |x| x.index) {
                continue;
            }
            let got = log.term(p, persisted);
            if log.last_index(p) < persisted || (term.is_some() && got != term) {
                let what = format!(
                    "node {} shard {si} partition {p}: reported persisted {persisted} (term \
                     {term:?}) but after a crash the log ends at {} (term there {got:?})",
                    node.id,
                    log.last_index(p)
                );
                self.violation.get_or_insert(what);
            }
        }
        node.restart_at = Some(self.step + down_for);
        let (id, inc) = (node.id, node.incarnation);
        self.open_requests
            .retain(|_, (nd, i)| !(*nd == id && *i == inc));
        self.stats.faults += 1;
        self.trace(|| format!("node {id} crashed ({why})"));
    }

    // ---------------------------------------------------------------- the step

    fn step(&mut self) -> Result<(), SimFailure> {
        self.step += 1;
        let now = self.step;
        self.inject_faults();
        // Restarts.
        for n in 0..self.nodes.len() {
            if self.nodes[n].restart_at.is_some_and(|t| t <= now) {
                self.start_node(n)?;
            }
        }
        // Ticks.
        if now % self.cfg.steps_per_tick == 0 {
            for node in &mut self.nodes {
                node.ticks += 1;
                if node.drift > 0 && node.ticks % node.drift == 0 {
                    continue;
                }
                for s in &mut node.shards {
                    s.core.tick();
                }
            }
        }
        self.deliver()?;
        self.disk()?;
        for n in 0..self.nodes.len() {
            for s in 0..self.nodes[n].shards.len() {
                self.turn(n, s)?;
                if self.nodes[n].shards.is_empty() {
                    break; // the node stopped
                }
            }
        }
        self.check_step()?;
        if let Some(what) = self.violation.take() {
            return Err(fail(self, what));
        }
        self.clients_act();
        Ok(())
    }

    fn deliver(&mut self) -> Result<(), SimFailure> {
        let now = self.step;
        let due: Vec<(u64, u64)> = self.net.range(..(now + 1, 0)).map(|(k, _)| *k).collect();
        for k in due {
            let Some(p) = self.net.remove(&k) else {
                continue;
            };
            match p {
                Packet::Peer {
                    from,
                    to,
                    partition,
                    msg,
                } => {
                    let node = &mut self.nodes[(to - 1) as usize];
                    if node.shards.is_empty() || self.cut.contains(&(from, to)) {
                        continue;
                    }
                    let s = meta::shard_of_partition(&node.config, partition);
                    node.shards[s].core.step_peer(partition, msg);
                }
                Packet::Request {
                    client,
                    node,
                    shard,
                    req,
                } => {
                    if self.client_cut.contains(&(client, node)) {
                        continue;
                    }
                    let nd = &mut self.nodes[(node - 1) as usize];
                    if nd.shards.is_empty() {
                        continue;
                    }
                    self.next_token += 1;
                    let conn = Conn {
                        client,
                        node,
                        incarnation: nd.incarnation,
                        token: self.next_token,
                    };
                    self.open_requests
                        .insert(self.next_token, (node, nd.incarnation));
                    nd.shards[shard].core.request(conn, req);
                }
                Packet::Reply { conn, resp } => {
                    if self.client_cut.contains(&(conn.client, conn.node)) {
                        continue;
                    }
                    if conn.client == ADMIN {
                        if matches!(resp.outcome, Ok(Outcome::TransferLeader(_))) {
                            self.stats.transfers_done += 1;
                        }
                        continue;
                    }
                    self.client_reply(conn.client, resp);
                }
            }
        }
        Ok(())
    }

    /// Completes the syncs and snapshot-file writes that are due (or fails them).
    fn disk(&mut self) -> Result<(), SimFailure> {
        let now = self.step;
        for n in 0..self.nodes.len() {
            let mut s = 0;
            while s < self.nodes[n].shards.len() {
                let node = &mut self.nodes[n];
                let log = node.logs[s].clone();
                let shard = &mut node.shards[s];
                let mut result: Result<(), ServerError> = Ok(());
                if let Some((due, gen)) = shard.sync_due {
                    if due <= now {
                        shard.sync_due = None;
                        let r = futures_lite::future::block_on(log.sync()).map(|_| ());
                        result = shard.core.sync_done(gen, r);
                    }
                }
                let mut i = 0;
                while result.is_ok() && i < shard.snap_due.len() {
                    if shard.snap_due[i].0 <= now {
                        let (_, wr) = shard.snap_due.remove(i);
                        node.snaps[s]
                            .0
                            .borrow_mut()
                            .entry(wr.partition)
                            .or_default()
                            .insert(wr.index, (wr.term, wr.data.clone()));
                        self.stats.snapshots += 1;
                        result = shard.core.snapshot_written(wr.partition, wr.index, Ok(()));
                    } else {
                        i += 1;
                    }
                }
                if let Err(e) = result {
                    self.node_error(n, s, e)?;
                    break;
                }
                s += 1;
            }
        }
        Ok(())
    }

    /// A shard returned an error: injected disk faults stop the node (it restarts later, as
    /// systemd would restart it); anything else is a bug.
    fn node_error(&mut self, n: usize, s: usize, e: ServerError) -> Result<(), SimFailure> {
        match &e {
            ServerError::Wal {
                source:
                    wal::WalError::SyncFailed { .. }
                    | wal::WalError::Io { .. }
                    | wal::WalError::Poisoned(_),
                ..
            } => {
                self.crash_node(n, &format!("shard {s} stopped: {e}"));
                Ok(())
            }
            _ => Err(fail(
                self,
                format!("node {} shard {s} stopped: {e}", self.nodes[n].id),
            )),
        }
    }

    /// One turn of shard `s` of node `n`, and its actions.
    fn turn(&mut self, n: usize, s: usize) -> Result<(), SimFailure> {
        let now = self.step;
        let node = &mut self.nodes[n];
        if let Some(map) = node.shared.map() {
            let shard = &mut node.shards[s];
            if shard.core.map().is_none_or(|m| m.epoch < map.epoch) {
                if let Err(e) = shard.core.adopt_map(map) {
                    return self.node_error(n, s, e);
                }
            }
        }
        let shard = &mut node.shards[s];
        // A full pipeline feeds no new turn, but what the core already asked for is carried
        // out (a sync started by `sync_done`, say), as the driver does.
        if !shard.core.pipeline_full() {
            if let Err(e) = shard.core.turn() {
                return self.node_error(n, s, e);
            }
        }
        let out = shard.core.take_output();
        let from = node.id;
        let incarnation = node.incarnation;
        if let Some(map) = out.map_committed {
            node.shared.set_map(map);
        }
        if let Some(gen) = out.start_sync {
            if shard.sync_due.is_some() {
                return Err(fail(self, "a second sync started while one is in flight"));
            }
            let mut delay = 1 + self.rng.below(self.faults.sync_delay_max);
            if self.rng.chance(self.faults.slow_sync_ppm) {
                delay += 50;
            }
            if self.rng.chance(self.faults.sync_fail_ppm) {
                node.logs[s].fail_next_sync();
                self.stats.faults += 1;
            } else if self.rng.chance(self.faults.write_fail_ppm) {
                node.logs[s].fail_next_write();
                self.stats.faults += 1;
            }
            // The batch is the one buffered now (the real Wal takes it when the sync starts).
            node.logs[s].seal();
            shard.sync_due = Some((now + delay, gen));
        }
        for wr in out.snapshot_writes {
            let delay = 1 + self.rng.below(20);
            shard.snap_due.push((now + delay, wr));
        }
        for (p, m) in out.messages {
            let to = m.to;
            self.send(Packet::Peer {
                from,
                to,
                partition: p,
                msg: m,
            });
        }
        for (conn, resp) in out.replies {
            if self.open_requests.remove(&conn.token).is_none() {
                return Err(fail(
                    self,
                    format!(
                        "request answered twice or never delivered (client {}, node {}, id {})",
                        conn.client, conn.node, resp.id
                    ),
                ));
            }
            if conn.incarnation != incarnation {
                return Err(fail(self, "reply from another incarnation"));
            }
            self.send(Packet::Reply { conn, resp });
        }
        Ok(())
    }

    /// Queues a packet with a seeded delay, maybe dropping or duplicating it (not after
    /// healing). Only peer messages are duplicated: TCP never duplicates a connection's frames,
    /// but a peer connection's frames can be resent across reconnects.
    fn send(&mut self, p: Packet) {
        let faulty = !self.healed;
        if faulty && self.rng.chance(self.faults.drop_ppm) {
            return;
        }
        if faulty && self.rng.chance(self.faults.dup_ppm) {
            if let Packet::Peer {
                from,
                to,
                partition,
                msg,
            } = &p
            {
                let copy = Packet::Peer {
                    from: *from,
                    to: *to,
                    partition: *partition,
                    msg: msg.clone(),
                };
                self.enqueue(copy);
            }
        }
        self.enqueue(p);
    }

    fn enqueue(&mut self, p: Packet) {
        let delay = 1 + self.rng.below(self.faults.delay_max);
        self.net_seq += 1;
        self.net.insert((self.step + delay, self.net_seq), p);
    }

    // ---------------------------------------------------------------- faults

    fn inject_faults(&mut self) {
        if self.healed {
            return;
        }
        let now = self.step;
        if now >= self.heal_at && (!self.cut.is_empty() || !self.client_cut.is_empty()) {
            self.cut.clear();
            self.client_cut.clear();
            self.trace(|| "partitions healed".into());
        }
        if self.rng.chance(self.faults.partition_ppm) {
            let n = self.nodes.len() as u64;
            let kind = self.rng.below(4);
            let victim = 1 + self.rng.below(n);
            match kind {
                // Isolate one node both ways (often a leader: the clients keep talking to it
                // when they are not cut from it too).
                0 => {
                    for o in 1..=n {
                        if o != victim {
                            self.cut.insert((victim, o));
                            self.cut.insert((o, victim));
                        }
                    }
                }
                // One-way: the victim hears nobody.
                1 => {
                    for o in 1..=n {
                        if o != victim {
                            self.cut.insert((o, victim));
                        }
                    }
                }
                // Random halves.
                2 => {
                    let side: Vec<bool> = (0..n).map(|_| self.rng.chance(500_000)).collect();
                    for a in 1..=n {
                        for b in 1..=n {
                            if side[(a - 1) as usize] != side[(b - 1) as usize] {
                                self.cut.insert((a, b));
                            }
                        }
                    }
                }
                // Clients cut from a node (they must find the new leader elsewhere).
                _ => {
                    for c in 0..self.clients.len() as u64 {
                        if self.rng.chance(700_000) {
                            self.client_cut.insert((c, victim));
                        }
                    }
                }
            }
            self.heal_at = now + 50 + self.rng.below(600);
            self.stats.faults += 1;
            let (cut, cc) = (self.cut.len(), self.client_cut.len());
            self.trace(|| {
                format!("partition kind {kind} victim {victim}: {cut} cut links, {cc} client cuts")
            });
        }
        if self.rng.chance(self.faults.crash_ppm) {
            let n = self.rng.below(self.nodes.len() as u64) as usize;
            self.crash_node(n, "injected");
        }
        if self.admin_rng.chance(self.transfer_ppm) {
            self.ask_transfer();
        }
        for c in 0..self.clients.len() {
            if self.rng.chance(self.faults.client_death_ppm) && self.clients[c].op.is_some() {
                // The client dies mid-operation and comes back with a new session: the
                // operation's outcome stays unknown.
                let cl = &mut self.clients[c];
                cl.op = None;
                cl.session = 1 + self.rng.next_u64() % (u64::MAX - 1);
                cl.next_seq = 1;
                self.stats.faults += 1;
            }
        }
    }

    /// An operator asks the leader of a random partition (the meta group too) to hand its
    /// leadership to a random node (itself, another replica, or none that exists). Its
    /// answer is only counted; the checks that matter are the ones every request has
    /// (answered exactly once, nothing left in flight), and the safety checks under the
    /// leadership changes it causes.
    fn ask_transfer(&mut self) {
        let partitions = u64::from(self.nodes[0].config.partitions);
        let p = self.admin_rng.below(partitions + 1);
        let to = 1 + self.admin_rng.below(self.nodes.len() as u64 + 1);
        let leader = self.nodes.iter().find(|n| {
            !n.shards.is_empty()
                && n.shards.iter().any(|s| {
                    s.core
                        .inspect(p)
                        .is_some_and(|(r, _)| r.role() == raftcore::Role::Leader)
                })
        });
        let Some(node) = leader else { return };
        let shard = meta::shard_of_partition(&node.config, p);
        let req = Request {
            id: self.stats.transfers,
            session: 0,
            seq: 0,
            map_epoch: 0,
            op: Op::TransferLeader {
                partition: p,
                to_node: to,
            },
            first_unacked: 0,
        };
        let packet = Packet::Request {
            client: ADMIN,
            node: node.id,
            shard,
            req,
        };
        // Straight into the network (no drop or delay draw from the main generator).
        self.net_seq += 1;
        self.net.insert((self.step + 1, self.net_seq), packet);
        self.stats.transfers += 1;
        self.stats.faults += 1;
        self.trace(|| format!("transfer of partition {p} to node {to} asked"));
    }

    fn heal(&mut self) {
        self.healed = true;
        self.cut.clear();
        self.client_cut.clear();
        for n in 0..self.nodes.len() {
            if self.nodes[n].shards.is_empty() && self.nodes[n].restart_at.is_none() {
                self.nodes[n].restart_at = Some(self.step + 1);
            }
            if let Some(t) = self.nodes[n].restart_at {
                self.nodes[n].restart_at = Some(t.min(self.step + 1));
            }
            self.nodes[n].drift = 0;
        }
        self.trace(|| "healed: no more faults".into());
    }

    // ---------------------------------------------------------------- clients

    fn clients_act(&mut self) {
        let now = self.step;
        let quiet = self.cfg.safety_steps + self.cfg.liveness_steps / 2;
        for c in 0..self.clients.len() {
            let sessionless = self.clients[c].sessionless;
            // Timeouts and retries of the current op.
            if let Some(op) = &mut self.clients[c].op {
                if now >= op.deadline {
                    // Gives up: outcome unknown (the event keeps ret = None).
                    self.clients[c].op = None;
                    self.clients[c].idle_until = now + 5;
                    continue;
                }
                let resend = match op.retry_at {
                    Some(t) => t <= now,
                    None => now >= op.attempt_timeout,
                };
                if resend && op.is_write && sessionless && !op.attempts.is_empty() {
                    // No answer: without a session the client cannot retry safely.
                    self.clients[c].op = None;
                    self.clients[c].idle_until = now + 5;
                    continue;
                }
                if resend {
                    self.send_attempt(c);
                }
                continue;
            }
            if now < self.clients[c].idle_until || now >= quiet {
                continue;
            }
            self.new_op(c);
        }
    }

    fn new_op(&mut self, c: usize) {
        let now = self.step;
        let key = self.keys[self.rng.below(self.keys.len() as u64) as usize].clone();
        let Some(part) = self.route.partition_of_key(&key).map(|p| p.id) else {
            return;
        };
        let kind = self.rng.below(10);
        let cl = &mut self.clients[c];
        let (op, is_write, spread, checked, value) =
            match kind {
                0..=3 => {
                    self.next_value += 1;
                    let v = Bytes::from(format!("v{}", self.next_value));
                    (client::put(&key, v.clone()), true, false, true, Some(v))
                }
                4..=5 => {
                    // Cas from the value last read of this key, if any, else from absent.
                    let expected = self.history.events.iter().rev().find_map(|e| {
                        match (&e.input, &e.output) {
                            (
                                raftcore::linearizability::KvInput::Get { key: k },
                                Some(KvOutput::Get(v)),
                            ) if k.as_slice() == key.as_ref() => Some(v.clone()),
                            _ => None,
                        }
                    });
                    self.next_value += 1;
                    let v = Bytes::from(format!("v{}", self.next_value));
                    (
                        client::cas(&key, expected.flatten().map(Bytes::from), v.clone()),
                        true,
                        false,
                        true,
                        Some(v),
                    )
                }
                6..=7 => (
                    client::get(&key, Consistency::Linearizable),
                    false,
                    false,
                    true,
                    None,
                ),
                8 => (
                    client::get(&key, Consistency::Follower),
                    false,
                    true,
                    true,
                    None,
                ),
                _ => (
                    client::get(&key, Consistency::Stale),
                    false,
                    true,
                    false,
                    None,
                ),
            };
        let seq = if is_write {
            cl.next_seq += 1;
            cl.next_seq - 1
        } else {
            0
        };
        let event = if checked {
            client::input_of(&op).map(|input| {
                self.history.events.push(Event {
                    client: cl.id,
                    call: now,
                    ret: None,
                    input,
                    output: None,
                });
                self.history.events.len() - 1
            })
        } else {
            None
        };
        let replicas: Vec<u64> = self
            .route
            .partition(part)
            .map(|p| p.replicas.iter().map(|r| r.node).collect())
            .unwrap_or_default();
        let target = if spread {
            replicas[self.rng.below(replicas.len() as u64) as usize]
        } else {
            cl.leaders
                .get(&part)
                .copied()
                .unwrap_or(replicas[self.rng.below(replicas.len() as u64) as usize])
        };
        cl.op = Some(ClientOp {
            event,
            op,
            seq,
            partition: part,
            is_write,
            spread,
            deadline: now + 2_000,
            attempts: Vec::new(),
            attempt_timeout: 0,
            retry_at: Some(now),
            target,
            value,
        });
        self.send_attempt(c);
    }

    fn send_attempt(&mut self, c: usize) {
        let now = self.step;
        let Some(mut op) = self.clients[c].op.take() else {
            return;
        };
        let req = client::request(&mut self.clients[c], &op);
        op.attempts.push(req.id);
        op.retry_at = None;
        op.attempt_timeout = now + 400;
        let node = op.target;
        let shard = meta::shard_of_partition(&self.nodes[0].config, op.partition);
        let client = self.clients[c].id;
        self.clients[c].op = Some(op);
        self.send(Packet::Request {
            client,
            node,
            shard,
            req,
        });
    }

    fn client_reply(&mut self, c: u64, resp: Response) {
        let now = self.step;
        let healed = self.healed;
        let cl = &mut self.clients[c as usize];
        let Some(op) = cl.op.as_mut() else { return };
        if !op.attempts.contains(&resp.id) {
            return; // an answer to an operation given up on (stays unknown)
        }
        let sessionless_write = op.is_write && cl.sessionless;
        let (mut verdict, output) = client::judge(&resp, op.spread, sessionless_write);
        if sessionless_write && matches!(verdict, Verdict::Retry { .. }) {
            // Without a session a retry could apply the write twice: give up, outcome unknown.
            verdict = Verdict::Unknown;
        }
        match verdict {
            Verdict::Done => {
                if let Some(e) = op.event {
                    let ev = &mut self.history.events[e];
                    ev.ret = Some(now);
                    ev.output = output;
                }
                if op.is_write && healed {
                    self.written_after_heal.insert(op.partition);
                }
                cl.ops_done += 1;
                self.stats.ops += 1;
                cl.op = None;
                cl.idle_until = now + 1;
            }
            Verdict::Retry { target, delay } => {
                let replicas: Vec<u64> = self
                    .route
                    .partition(op.partition)
                    .map(|p| p.replicas.iter().map(|r| r.node).collect())
                    .unwrap_or_default();
                let next = match target {
                    Some(t) => {
                        cl.leaders.insert(op.partition, t);
                        t
                    }
                    None => replicas[self.rng.below(replicas.len() as u64) as usize],
                };
                op.target = next;
                op.retry_at = Some(now + delay);
            }
            Verdict::Unknown => {
                // The client stops waiting: the outcome stays unknown (ret = None).
                cl.op = None;
                cl.idle_until = now + 1;
            }
            Verdict::DefiniteError(why) => {
                if let Some(e) = op.event {
                    // Not applied: the operation is removed from the history (it did not
                    // happen), and a write's value must never be read.
                    self.history.events[e].ret = Some(now);
                    self.history.events[e].output = None;
                }
                if let Some(v) = &op.value {
                    self.history.failed_values.push((v.clone(), why));
                }
                cl.op = None;
                cl.idle_until = now + 1;
            }
        }
    }

    // ---------------------------------------------------------------- checks

    /// After every step: raftcore's invariants on every replica, applied indexes never go
    /// back within a node's life.
    fn check_step(&mut self) -> Result<(), SimFailure> {
        for n in 0..self.nodes.len() {
            let node = &mut self.nodes[n];
            let id = node.id;
            for s in &node.shards {
                for p in s.core.partitions().collect::<Vec<_>>() {
                    let (raft, sm) = s.core.inspect(p).expect("listed");
                    if let Err(e) = raft.check_invariants() {
                        let what = format!("node {id} partition {p}: raft invariant: {e}");
                        return Err(SimFailure {
                            seed: self.seed,
                            step: self.step,
                            what,
                        });
                    }
                    let applied = sm.applied_index();
                    let seen = node.applied_seen.entry(p).or_insert(0);
                    if applied < *seen {
                        let what = format!(
                            "node {id} partition {p}: applied index went back from {seen} to {applied}"
                        );
                        return Err(SimFailure {
                            seed: self.seed,
                            step: self.step,
                            what,
                        });
                    }
                    *seen = applied;
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<SimStats, SimFailure> {
        // Every request delivered to a live core was answered.
        for s in self.nodes.iter().flat_map(|n| n.shards.iter()) {
            let waiting = s.core.requests_waiting();
            if waiting != 0 {
                return Err(fail(
                    &self,
                    format!(
                        "shard {} still holds {waiting} unanswered requests after healing",
                        s.core.shard()
                    ),
                ));
            }
        }
        if !self.open_requests.is_empty() {
            return Err(fail(
                &self,
                format!(
                    "{} requests never answered after healing",
                    self.open_requests.len()
                ),
            ));
        }
        // Liveness: every partition holding a key took a client write after healing.
        let keyed: BTreeSet<u64> = self
            .keys
            .iter()
            .filter_map(|k| self.route.partition_of_key(k).map(|p| p.id))
            .collect();
        for p in keyed {
            if !self.written_after_heal.contains(&p) {
                return Err(fail(
                    &self,
                    format!("partition {p} took no write after healing"),
                ));
            }
        }
        // Convergence: every replica of a partition has the same data at the same index.
        type Seen = (u64, u64, Vec<(Bytes, Bytes)>);
        let mut seen: BTreeMap<u64, Seen> = BTreeMap::new();
        for node in &self.nodes {
            for s in &node.shards {
                for p in s.core.partitions().collect::<Vec<_>>() {
                    let (_, sm) = s.core.inspect(p).expect("listed");
                    let data: Vec<(Bytes, Bytes)> = sm
                        .range(b"", &[0], usize::MAX, false, usize::MAX)
                        .kvs
                        .into_iter()
                        .map(|(k, kv)| (k, kv.value))
                        .collect();
                    let idx = sm.applied_index();
                    match seen.get(&p) {
                        None => {
                            seen.insert(p, (node.id, idx, data));
                        }
                        Some((other, oidx, odata)) => {
                            if *oidx == idx && *odata != data {
                                return Err(fail(
                                    &self,
                                    format!("partition {p}: nodes {other} and {} differ at applied index {idx}", node.id),
                                ));
                            }
                        }
                    }
                }
            }
        }
        // Definite errors were not applied.
        for e in &self.history.events {
            if let Some(KvOutput::Get(Some(v))) = &e.output {
                if let Some((_, why)) = self
                    .history
                    .failed_values
                    .iter()
                    .find(|(f, _)| f.as_ref() == v.as_slice())
                {
                    return Err(fail(
                        &self,
                        format!("a read saw {:?}, written by a put answered with a definite error ({why})", String::from_utf8_lossy(v)),
                    ));
                }
            }
        }
        // Linearizability per key (operations with a definite error removed).
        let events: Vec<Event<_, _>> = self
            .history
            .events
            .iter()
            .filter(|e| !(e.ret.is_some() && e.output.is_none()))
            .cloned()
            .collect();
        match check_kv(&events, self.cfg.lin_step_budget) {
            LinOutcome::Linearizable | LinOutcome::Unknown => {}
            LinOutcome::NotLinearizable { detail } => {
                return Err(fail(&self, format!("history not linearizable: {detail}")))
            }
        }
        Ok(self.stats)
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
