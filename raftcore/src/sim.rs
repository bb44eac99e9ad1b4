//! Deterministic cluster simulator: many nodes and many Raft groups in one thread, every
//! random choice drawn from one seed, so a failing seed replays exactly.
//!
//! Each node hosts one replica of every group. A replica is a [`RawNode`] driven exactly as the
//! [`crate::ready`] contract says, over a simulated disk and network:
//! - **disk**: every Ready's writes are queued as unsynced; a sync (random per tick) makes them
//!   durable, then sends the Ready's `persisted_messages` and calls `on_persisted`. A crash
//!   loses every unsynced write except a random prefix of them, the last one torn (a prefix of
//!   its entries survives, in the contract's order snapshot, entries, hard state);
//! - **network**: per-message drop, duplication, delay (hence reordering), rare long delays
//!   (5-40 ticks), symmetric or asymmetric partitions, isolation of a leader, partitions during
//!   joint consensus, and cuts between clients and nodes;
//! - **schedule**: crashes and restarts (some aimed at leaders, some at nodes whose vote is not
//!   durable yet), membership changes (learners, promotions, removals including of the leader,
//!   swaps through joint consensus) and leadership transfers, all during the faults; per seed,
//!   CheckQuorum may be off or slow and Pre-Vote off, and some seeds have no crashes at all;
//! - **clocks**: every node ticks at its own rate, within the lease allowance in lease-read
//!   seeds (`SimConfig::drift_beyond_allowance` is a negative control that leaves it);
//! - **clients** issue put / get / compare-and-set on a few keys (writes as proposals, reads via
//!   ReadIndex, some served by followers) and record a history with invocation and completion
//!   ticks; operations whose outcome is unknown (timeout, crash, cut, read failure) are
//!   recorded as such. Clients may find a new leader quickly, keep reading at an old one, or be
//!   pinned to an isolated leader.
//!
//! Checks: election safety (one leader per term, paper §5.2), leader completeness (a new leader
//! holds every entry committed in an earlier term, §5.4), state machine safety (every replica
//! applies the same entry at each index, §5.4.3), log matching (§5.3), `RawNode` invariants
//! after every tick, commit and applied indexes never go back, a leader's match index names an
//! entry the follower holds, commits are durable on a quorum of the configuration that counted
//! them (thesis §4.3), votes are durable before they are sent (thesis §3.8), each read gets
//! exactly one outcome and no read index is below what was applied when the read began,
//! liveness (after healing, every group commits a client write within a bounded number of
//! ticks) and linearizability of the client history ([`crate::linearizability::check_kv`]).
//! A panic inside raftcore fails the seed like any other check.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::linearizability::{check_kv, HistoryRecorder, KvInput, KvOutput, OpId, Outcome};
use crate::node::{RawNode, RestartState};
use crate::rng::SplitMix64;
use crate::types::{
    ConfChange, ConfChangeStep, ConfState, Entry, EntryKind, HardState, Message, MessageKind, Role,
    Snapshot,
};
use crate::Config;

/// Knobs of one simulation run. Fault rates are per million.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of nodes (each hosts one replica of every group).
    pub nodes: u64,
    /// Number of Raft groups.
    pub groups: u64,
    /// Voters each group starts with (nodes 1..=n rotated per group).
    pub initial_voters: u64,
    /// Ticks of the safety phase (faults on).
    pub safety_ticks: u64,
    /// Ticks allowed after healing for every group to commit a new client write.
    pub liveness_ticks: u64,
    /// Concurrent clients.
    pub clients: u64,
    /// Keys in the key space (key i belongs to group i % groups).
    pub keys: u64,
    /// Ticks after which a client gives up on an operation (outcome unknown).
    pub op_timeout_ticks: u64,
    /// Compact a replica once it has applied this many entries past its snapshot.
    pub compact_entries: u64,
    /// Step budget of the linearizability search per key.
    pub lin_step_budget: u64,
    /// Print a line per notable event (faults, crashes, new leaders, membership changes).
    pub trace: bool,
    /// Negative control, off by default: in lease-read seeds, clocks drift far past the lease
    /// allowance (some nodes run at 30-100% speed, others up to 2x). Lease reads are unsafe
    /// then, so seeds may fail on correct code; this shows the checks can see a stale lease
    /// read at all.
    pub drift_beyond_allowance: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 5,
            groups: 2,
            initial_voters: 3,
            safety_ticks: 500,
            liveness_ticks: 300,
            clients: 4,
            keys: 4,
            op_timeout_ticks: 60,
            compact_entries: 24,
            lin_step_budget: 2_000_000,
            trace: false,
            drift_beyond_allowance: false,
        }
    }
}

/// Fault rates drawn per seed (so seeds cover mild and harsh schedules).
#[derive(Clone, Debug)]
struct Faults {
    drop_ppm: u64,
    dup_ppm: u64,
    delay_max_ticks: u64,
    partition_ppm: u64,
    crash_ppm: u64,
    /// "Leader churn" schedules (Figure 8 of the paper is one): a leader crashes with this
    /// rate per tick and restarts quickly, leaving many short terms with uncommitted tails.
    leader_crash_ppm: u64,
    restart_ticks_max: u64,
    conf_change_ppm: u64,
    transfer_ppm: u64,
    sync_ppm: u64,
    /// A message is held 5-40 ticks instead of 1-4 (a slow link, a stalled queue): stale
    /// answers, snapshot chunks and TimeoutNow arrive long after their moment.
    long_delay_ppm: u64,
    /// Partitions between clients and nodes: a client cut off from a node cannot reach it and
    /// loses the operation it had pending there.
    client_cut_ppm: u64,
    /// Crashes aimed at the worst moment for durability: a node whose disk holds an unsynced
    /// hard state with a vote (thesis §3.8: a vote must be durable before it is sent).
    crash_unsynced_vote_ppm: u64,
}

/// Raft limits drawn per seed, so message splitting and windows vary across seeds.
#[derive(Clone, Copy, Debug)]
struct Tuning {
    lease_reads: bool,
    /// Off in some seeds without lease reads: a leader cut off from its quorum keeps leading
    /// (and answering clients that still reach it) until it hears of a newer term, which is
    /// the window in which a missing ReadIndex quorum round returns stale data.
    check_quorum: bool,
    /// CheckQuorum period (`Config::check_quorum_ticks`): 0 (an election timeout) or, in some
    /// seeds, several election timeouts, so an isolated leader keeps believing it leads (and
    /// serving lease reads, which must stay correct) long after a new leader took over.
    check_quorum_ticks: u32,
    /// Pre-Vote (thesis §9.6) off in some seeds: candidates then campaign at once, so
    /// elections in the same term collide more often (split votes), which is where a vote that
    /// was not durable before it was sent lets a restarted voter vote twice.
    pre_vote: bool,
    /// Clients ask a random reachable node who leads before each operation, so they move to a
    /// new leader quickly while an old, isolated one may still believe it leads.
    fast_discovery: bool,
    entries_per_msg_max: usize,
    msg_bytes_max: u64,
    inflight_msgs_max: usize,
}

/// A failed run: which seed, what broke, how to replay it.
#[derive(Debug, Clone)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// Tick at which the failure was detected.
    pub tick: u64,
    /// What was violated.
    pub what: String,
}

impl SimFailure {
    /// The command that replays this seed.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run --release -p raftcore --bin sim -- --seeds {}..{}",
            self.seed,
            self.seed + 1
        )
    }
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} failed at tick {}: {}\n  replay: {}",
            self.seed,
            self.tick,
            self.what,
            self.replay_command()
        )
    }
}

/// Counters of a successful run.
#[derive(Debug, Default, Clone)]
pub struct SimStats {
    /// Client operations that completed with a known result.
    pub ops_completed: u64,
    /// Client operations with unknown outcome.
    pub ops_unknown: u64,
    /// Entries applied (summed over replicas).
    pub entries_applied: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Membership changes accepted by a leader.
    pub conf_changes: u64,
    /// Leadership transfers started.
    pub transfers: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// True if the linearizability search ran out of budget (not counted as failure).
    pub lin_unknown: bool,
}

// ------------------------------------------------------------------ state machine

/// The replicated key-value state machine of the simulation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Kv {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Command layout (entry data): `{ op: u8 (1 put, 2 cas) | key_len: u8 | key | has_expected: u8
/// | exp_len: u16 LE | expected | value_len: u16 LE | value }`.
fn encode_cmd(input: &KvInput) -> Bytes {
    let mut out = Vec::new();
    match input {
        KvInput::Put { key, value } => {
            out.push(1);
            out.push(key.len() as u8);
            out.extend_from_slice(key);
            out.push(0);
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
            out.extend_from_slice(value);
        }
        KvInput::Cas { key, expected, new } => {
            out.push(2);
            out.push(key.len() as u8);
            out.extend_from_slice(key);
            let exp = expected.clone().unwrap_or_default();
            out.push(expected.is_some() as u8);
            out.extend_from_slice(&(exp.len() as u16).to_le_bytes());
            out.extend_from_slice(&exp);
            let v = new.clone().unwrap_or_default();
            out.extend_from_slice(&(v.len() as u16).to_le_bytes());
            out.extend_from_slice(&v);
        }
        _ => {}
    }
    Bytes::from(out)
}

fn decode_cmd(d: &[u8]) -> Option<KvInput> {
    let op = *d.first()?;
    let kl = *d.get(1)? as usize;
    let key = d.get(2..2 + kl)?.to_vec();
    let mut at = 2 + kl;
    let has_exp = *d.get(at)? == 1;
    at += 1;
    let el = u16::from_le_bytes([*d.get(at)?, *d.get(at + 1)?]) as usize;
    at += 2;
    let exp = d.get(at..at + el)?.to_vec();
    at += el;
    let vl = u16::from_le_bytes([*d.get(at)?, *d.get(at + 1)?]) as usize;
    at += 2;
    let value = d.get(at..at + vl)?.to_vec();
    match op {
        1 => Some(KvInput::Put { key, value }),
        2 => Some(KvInput::Cas {
            key,
            expected: has_exp.then_some(exp),
            new: Some(value),
        }),
        _ => None,
    }
}

impl Kv {
    fn apply(&mut self, input: &KvInput) -> KvOutput {
        match input {
            KvInput::Put { key, value } => {
                self.map.insert(key.clone(), value.clone());
                KvOutput::Put
            }
            KvInput::Cas { key, expected, new } => {
                if self.map.get(key) == expected.as_ref() {
                    match new {
                        Some(v) => self.map.insert(key.clone(), v.clone()),
                        None => self.map.remove(key),
                    };
                    KvOutput::Cas(true)
                } else {
                    KvOutput::Cas(false)
                }
            }
            KvInput::Delete { key } => {
                self.map.remove(key);
                KvOutput::Delete
            }
            KvInput::Get { key } => KvOutput::Get(self.map.get(key).cloned()),
        }
    }

    /// Snapshot layout: `{ count: u32 LE | count × { klen: u16 LE | key | vlen: u16 LE | value } }`.
    fn encode(&self) -> Bytes {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.map.len() as u32).to_le_bytes());
        for (k, v) in &self.map {
            out.extend_from_slice(&(k.len() as u16).to_le_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u16).to_le_bytes());
            out.extend_from_slice(v);
        }
        // Padding so snapshots span several chunks.
        out.extend_from_slice(&[0u8; 700]);
        Bytes::from(out)
    }

    fn decode(d: &[u8]) -> Option<Kv> {
        if d.is_empty() {
            return Some(Kv::default());
        }
        let n = u32::from_le_bytes(d.get(0..4)?.try_into().ok()?) as usize;
        let mut at = 4;
        let mut map = BTreeMap::new();
        for _ in 0..n {
            let kl = u16::from_le_bytes(d.get(at..at + 2)?.try_into().ok()?) as usize;
            at += 2;
            let k = d.get(at..at + kl)?.to_vec();
            at += kl;
            let vl = u16::from_le_bytes(d.get(at..at + 2)?.try_into().ok()?) as usize;
            at += 2;
            let v = d.get(at..at + vl)?.to_vec();
            at += vl;
            map.insert(k, v);
        }
        Some(Kv { map })
    }
}

fn hash_bytes(d: &[u8]) -> u64 {
    // FNV-1a: deterministic across runs (std's hasher is randomly keyed).
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in d {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

// ------------------------------------------------------------------ disk

#[derive(Debug)]
struct Write {
    number: u64,
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
    snapshot: Option<Snapshot>,
    persisted_messages: Vec<Message>,
}

#[derive(Debug, Default)]
struct Disk {
    hard_state: HardState,
    snapshot: Snapshot,
    entries: Vec<Entry>,
    unsynced: VecDeque<Write>,
}

impl Disk {
    /// Applies (part of) a write in the contract's order: snapshot, entries, hard state. The
    /// hard state is written only if every entry was, and then only if `hard_state_kept`.
    fn apply(&mut self, w: &Write, entries_kept: usize, hard_state_kept: bool) {
        if let Some(s) = &w.snapshot {
            let idx = s.meta.index;
            self.entries.retain(|e| e.index > idx);
            // The snapshot replaces a log that did not match it: drop the rest too.
            self.entries.clear();
            self.snapshot = s.clone();
        }
        if let Some(first) = w.entries.first() {
            let keep = first.index.saturating_sub(self.snapshot.meta.index + 1) as usize;
            self.entries.truncate(keep);
            for e in w.entries.iter().take(entries_kept) {
                if e.index == self.snapshot.meta.index + 1 + self.entries.len() as u64 {
                    self.entries.push(e.clone());
                }
            }
        }
        if entries_kept == w.entries.len() && hard_state_kept {
            if let Some(hs) = w.hard_state {
                self.hard_state = hs;
            }
        }
    }

    fn compact(&mut self, snap: Snapshot) {
        let idx = snap.meta.index;
        self.entries.retain(|e| e.index > idx);
        self.snapshot = snap;
    }
}

// ------------------------------------------------------------------ cluster

#[derive(Debug)]
struct Replica {
    raw: Option<RawNode>,
    disk: Disk,
    sm: Kv,
    applied: u64,
    /// index -> (term, client)
    pending_writes: BTreeMap<u64, (u64, u64)>,
    /// (request id, client, read index once known)
    pending_reads: Vec<(u64, u64, Option<u64>)>,
    leader_term_checked: u64,
    /// Reads asked on this incarnation without an outcome from raftcore yet: id -> tick asked.
    /// The Ready contract (item 6) promises each one exactly one ReadState or ReadFailure.
    reads_asked: BTreeMap<u64, u64>,
    /// Read id -> the highest index applied anywhere in the group when the read was asked.
    /// Everything applied was committed before the read began, so a linearizable read index
    /// (thesis §6.4) is at least that high: a lower one is a stale read, whether or not a
    /// client happens to observe a changed value.
    read_floors: BTreeMap<u64, u64>,
    /// Highest commit index and applied index seen on this incarnation (neither goes back).
    committed_seen: u64,
    applied_seen: u64,
    /// As leader: the term, configuration and commit index at which the commit quorum was
    /// last checked (see `check_commit_quorum`).
    quorum_checked: Option<(u64, ConfState, u64)>,
}

#[derive(Debug)]
struct Node {
    alive: bool,
    restart_at: u64,
    /// Clock rate: this node's ticks per simulated tick, in millionths (1_000_000 = exact;
    /// below it the node misses ticks, above it some simulated ticks give it two).
    clock_ppm: u64,
    /// Fraction of a tick accumulated (millionths).
    clock_acc: u64,
    incarnation: u64,
    replicas: Vec<Replica>,
}

#[derive(Debug)]
struct InFlight {
    at: u64,
    from: u64,
    to: u64,
    group: u64,
    msg: Message,
}

#[derive(Debug, Clone)]
struct ClientOp {
    op: OpId,
    node: u64,
    group: u64,
    deadline: u64,
    input: KvInput,
    read_id: u64,
}

#[derive(Debug)]
struct Client {
    pending: Option<ClientOp>,
    leader_guess: Vec<u64>,
    /// Reads only, always at its leader guess, and asks who leads only after an operation
    /// failed: it keeps talking to an old leader for as long as that node answers as leader
    /// (client 0 in seeds with fast discovery, where the other clients ask before every
    /// operation and move on to a new leader quickly).
    sticky_reader: bool,
    /// The last operation failed (timeout, crash, refusal): ask who leads before the next.
    rediscover: bool,
    /// (group, node): set when `node`, leader of `group`, is cut off from the other nodes. The
    /// client still reaches it and reads only there, keys of `group` only, until the network
    /// changes: a cut-off leader that answers it without a quorum or past its lease serves
    /// stale data while the others elect and use a new leader.
    pinned: Option<(usize, u64)>,
    seq: u64,
    last_seen: BTreeMap<Vec<u8>, Vec<u8>>,
}

#[derive(Debug, Default)]
struct GroupCheck {
    /// index -> (term, data hash) of the entry applied there.
    applied: BTreeMap<u64, (u64, u64)>,
    /// index -> the term of the first replica that applied it, at that moment: the entry was
    /// committed in that term or an earlier one (a replica learns of a commit from a leader of
    /// a term no later than its own).
    commit_term_bound: BTreeMap<u64, u64>,
    max_applied: u64,
    /// term -> leader.
    leaders: BTreeMap<u64, u64>,
    /// index -> state machine image hash at that index (from compactions).
    snapshots: BTreeMap<u64, u64>,
    write_after_heal: bool,
}

struct Sim {
    seed: u64,
    cfg: SimConfig,
    faults: Faults,
    tuning: Tuning,
    rng: SplitMix64,
    /// Decides whether a torn write that kept all its entries also kept its hard state
    /// (separate generator, so the rest of the fault schedule is unchanged).
    tear_rng: SplitMix64,
    now: u64,
    nodes: Vec<Node>,
    net: Vec<InFlight>,
    /// Directed links that drop everything: (from, to).
    blocked: Vec<(u64, u64)>,
    clients: Vec<Client>,
    history: HistoryRecorder<KvInput, KvOutput>,
    checks: Vec<GroupCheck>,
    /// Client-to-node cuts: (client, node) pairs that cannot reach each other.
    client_blocked: Vec<(u64, u64)>,
    /// Read ids that already got an outcome from raftcore (none may get a second).
    reads_answered: std::collections::BTreeSet<u64>,
    next_read_id: u64,
    healed: bool,
    stats: SimStats,
}

type SimResult<T> = Result<T, String>;

/// Runs one seed. `Ok` carries counters; `Err` says what was violated and how to replay.
/// A panic inside raftcore (a broken invariant, a second leader in a term) is a failure of the
/// seed like any other, reported with its message and the replay command.
pub fn run(seed: u64, cfg: &SimConfig) -> Result<SimStats, SimFailure> {
    let mut sim = Sim::new(seed, cfg.clone());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run()));
    let what = match result {
        Ok(Ok(())) => return Ok(sim.stats),
        Ok(Err(what)) => what,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(no message)".into());
            format!("panic: {msg}")
        }
    };
    Err(SimFailure {
        seed,
        tick: sim.now,
        what,
    })
}

fn node_config(node: u64, group: u64, seed: u64, incarnation: u64, t: &Tuning) -> Config {
    let mut c = Config::new(node);
    c.election_ticks_min = 10;
    c.heartbeat_ticks = 2;
    c.seed = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(node * 1_000_003 + group * 7919 + incarnation * 104_729);
    c.lease_reads = t.lease_reads;
    c.check_quorum = t.check_quorum;
    c.check_quorum_ticks = t.check_quorum_ticks;
    c.pre_vote = t.pre_vote;
    c.entries_per_msg_max = t.entries_per_msg_max;
    c.msg_bytes_max = t.msg_bytes_max;
    c.inflight_msgs_max = t.inflight_msgs_max;
    c.uncommitted_bytes_max = 16 << 10;
    c.read_requests_pending_max = 64;
    c
}

impl Sim {
    fn new(seed: u64, cfg: SimConfig) -> Self {
        let mut rng = SplitMix64::new(seed);
        let harsh = rng.below(3);
        let faults = Faults {
            drop_ppm: [0, 20_000, 100_000][harsh as usize],
            dup_ppm: [0, 10_000, 30_000][harsh as usize],
            delay_max_ticks: 1 + rng.below(4),
            partition_ppm: [5_000, 10_000, 20_000][harsh as usize],
            crash_ppm: [2_000, 5_000, 10_000][harsh as usize],
            leader_crash_ppm: [0, 0, 30_000, 100_000][rng.below(4) as usize],
            restart_ticks_max: [40, 15][rng.below(2) as usize],
            conf_change_ppm: 8_000 + rng.below(12_000),
            transfer_ppm: 3_000 + rng.below(8_000),
            sync_ppm: 100_000 + rng.below(800_000),
            long_delay_ppm: 0,
            client_cut_ppm: 0,
            crash_unsynced_vote_ppm: 0,
        };
        // Draws added after the original ones come from a separate generator, so seeds keep
        // the rest of their schedule shape.
        let mut shape_rng = SplitMix64::new(seed ^ 0x05ba_9e00_0000_0000);
        let mut faults = faults;
        faults.long_delay_ppm = [0, 2_000, 10_000][shape_rng.below(3) as usize];
        faults.client_cut_ppm = [0, 5_000, 20_000][shape_rng.below(3) as usize];
        faults.crash_unsynced_vote_ppm = [0, 100_000, 300_000][shape_rng.below(3) as usize];
        // Swarm testing: a quarter of the seeds have no crashes at all, so partitions (an
        // isolated leader that keeps serving next to a new one) play out undisturbed.
        if shape_rng.below(4) == 0 {
            faults.crash_ppm = 0;
            faults.leader_crash_ppm = 0;
            faults.crash_unsynced_vote_ppm = 0;
        }
        let lease_reads = rng.below(3) == 0;
        let check_quorum = lease_reads || shape_rng.below(2) == 0;
        let tuning = Tuning {
            lease_reads,
            check_quorum,
            check_quorum_ticks: [0, 0, 40, 80][shape_rng.below(4) as usize],
            fast_discovery: shape_rng.below(3) != 0,
            // Off only with CheckQuorum on: with neither, a removed voter that never learns of
            // its removal deposes every leader with its ever higher terms (thesis §4.2.3), a
            // known property of Raft without them, not a bug to look for.
            pre_vote: shape_rng.below(4) != 0 || !check_quorum,
            entries_per_msg_max: [1, 2, 3, 8][rng.below(4) as usize],
            msg_bytes_max: [64, 256, 1024][rng.below(3) as usize],
            inflight_msgs_max: 1 + rng.below(4) as usize,
        };
        let mut cfg = cfg;
        if cfg.initial_voters < cfg.nodes && rng.below(3) == 0 {
            cfg.initial_voters = cfg.nodes;
        }
        let mut nodes = Vec::new();
        for n in 1..=cfg.nodes {
            let mut replicas = Vec::new();
            for g in 0..cfg.groups {
                let voters: Vec<u64> = (0..cfg.initial_voters)
                    .map(|i| (g + i) % cfg.nodes + 1)
                    .collect();
                let state = if voters.contains(&n) {
                    RestartState::bootstrap(ConfState::with_voters(&voters), Kv::default().encode())
                } else {
                    RestartState::default()
                };
                let disk = Disk {
                    hard_state: state.hard_state,
                    snapshot: state.snapshot.clone(),
                    entries: Vec::new(),
                    unsynced: VecDeque::new(),
                };
                let applied = state.snapshot.meta.index;
                let raw = RawNode::new(node_config(n, g, seed, 0, &tuning), state).ok();
                replicas.push(Replica {
                    raw,
                    disk,
                    sm: Kv::default(),
                    applied,
                    pending_writes: BTreeMap::new(),
                    pending_reads: Vec::new(),
                    leader_term_checked: 0,
                    reads_asked: BTreeMap::new(),
                    read_floors: BTreeMap::new(),
                    committed_seen: 0,
                    applied_seen: 0,
                    quorum_checked: None,
                });
            }
            nodes.push(Node {
                alive: true,
                restart_at: 0,
                clock_ppm: 1_000_000,
                clock_acc: 0,
                incarnation: 0,
                replicas,
            });
        }
        // Clock drift (separate generator, so the fault schedule is unchanged). Without lease
        // reads, up to 3 of every 5 nodes run 2.5-5% slow. With lease reads, every node draws
        // a rate in [0.88, 1.05] ticks per simulated tick: rates differ by at most 16% of the
        // fastest, inside the lease allowance (`Config::lease_drift_ticks` = 2 of
        // `election_ticks_min` = 10, i.e. 20%), so lease reads must stay correct while the
        // drift uses most of the allowance. `drift_beyond_allowance` (a negative control)
        // draws rates in [0.3, 2.0] instead.
        let mut clock_rng = SplitMix64::new(seed ^ 0xc10c_d21f_7000_0000);
        for node in nodes.iter_mut() {
            node.clock_acc = clock_rng.below(1_000_000);
            if tuning.lease_reads && cfg.drift_beyond_allowance {
                node.clock_ppm = if clock_rng.below(2) == 0 {
                    300_000 + clock_rng.below(700_000)
                } else {
                    1_000_000 + clock_rng.below(1_000_000)
                };
            } else if tuning.lease_reads {
                node.clock_ppm = 880_000 + clock_rng.below(170_001);
            } else if clock_rng.below(5) < 3 {
                node.clock_ppm = 950_000 + clock_rng.below(25_001);
            }
        }
        let clients = (0..cfg.clients)
            .map(|c| Client {
                sticky_reader: c == 0 && tuning.fast_discovery,
                rediscover: true,
                pinned: None,
                pending: None,
                leader_guess: (0..cfg.groups).map(|g| g % cfg.nodes + 1).collect(),
                seq: 0,
                last_seen: BTreeMap::new(),
            })
            .collect();
        let checks = (0..cfg.groups).map(|_| GroupCheck::default()).collect();
        Sim {
            seed,
            cfg,
            faults,
            tuning,
            rng,
            tear_rng: SplitMix64::new(seed ^ 0x7ea2_0000_0000_0000),
            now: 0,
            nodes,
            net: Vec::new(),
            blocked: Vec::new(),
            clients,
            history: HistoryRecorder::new(),
            checks,
            client_blocked: Vec::new(),
            reads_answered: std::collections::BTreeSet::new(),
            next_read_id: 1,
            healed: false,
            stats: SimStats::default(),
        }
    }

    fn run(&mut self) -> SimResult<()> {
        self.trace(|| format!("tuning {:?}, faults {:?}", self.tuning, self.faults));
        let total = self.cfg.safety_ticks + self.cfg.liveness_ticks;
        while self.now < total {
            if self.now == self.cfg.safety_ticks {
                self.heal();
            }
            self.step_tick()?;
            self.now += 1;
        }
        for g in 0..self.cfg.groups as usize {
            if !self.checks[g].write_after_heal {
                return Err(format!(
                    "liveness: group {g} committed no client write within {} ticks after healing",
                    self.cfg.liveness_ticks
                ));
            }
        }
        self.check_log_matching()?;
        // Ready contract item 6: every read asked on a replica that stayed up got an outcome
        // (reads asked in the last ticks may still be in their round).
        for n in 0..self.nodes.len() {
            for g in 0..self.cfg.groups as usize {
                let rep = &self.nodes[n].replicas[g];
                if let Some((rid, at)) = rep.reads_asked.iter().find(|(_, &at)| at + 50 < self.now)
                {
                    return Err(format!(
                        "read contract: node {} group {g} never answered read {rid} asked at tick {at}",
                        n + 1
                    ));
                }
            }
        }
        // Everything still pending has an unknown outcome.
        for c in 0..self.clients.len() {
            if let Some(op) = self.clients[c].pending.take() {
                self.history.fail(op.op);
                self.stats.ops_unknown += 1;
            }
        }
        let history = std::mem::take(&mut self.history).finish();
        match check_kv(&history, self.cfg.lin_step_budget) {
            Outcome::Linearizable => Ok(()),
            Outcome::Unknown => {
                self.stats.lin_unknown = true;
                Ok(())
            }
            Outcome::NotLinearizable { detail } => {
                Err(format!("history not linearizable: {detail}"))
            }
        }
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.cfg.trace {
            println!("[seed {} tick {}] {}", self.seed, self.now, what());
        }
    }

    fn heal(&mut self) {
        self.trace(|| "heal: liveness phase starts".into());
        self.healed = true;
        self.unpin_clients();
        self.blocked.clear();
        self.client_blocked.clear();
        self.faults.long_delay_ppm = 0;
        self.faults.client_cut_ppm = 0;
        self.faults.crash_unsynced_vote_ppm = 0;
        self.faults.drop_ppm = 0;
        self.faults.dup_ppm = 0;
        self.faults.delay_max_ticks = 1;
        self.faults.sync_ppm = 1_000_000;
        for n in 0..self.nodes.len() {
            if !self.nodes[n].alive {
                self.nodes[n].restart_at = self.now;
            }
        }
    }

    fn step_tick(&mut self) -> SimResult<()> {
        self.restart_due()?;
        self.deliver()?;
        for n in 0..self.nodes.len() {
            let node = &mut self.nodes[n];
            if !node.alive {
                continue;
            }
            node.clock_acc += node.clock_ppm;
            let ticks = node.clock_acc / 1_000_000;
            node.clock_acc %= 1_000_000;
            for _ in 0..ticks {
                for g in 0..self.cfg.groups as usize {
                    if let Some(raw) = self.nodes[n].replicas[g].raw.as_mut() {
                        raw.tick();
                    }
                }
            }
        }
        self.process_all()?;
        self.sync_disks()?;
        self.process_all()?;
        self.clients_act()?;
        if !self.healed {
            self.inject_faults()?;
        }
        self.process_all()?;
        self.check_tick()?;
        if self.now % 100 == 99 {
            self.check_log_matching()?;
        }
        Ok(())
    }

    // ---------------------------------------------------------- network

    /// Thesis §3.8 at the network boundary: a vote leaves a node only once the hard state that
    /// holds it is on its disk (the term it was granted in, or a later one, is durable), so a
    /// crash cannot let the node vote again in that term.
    fn check_vote_durable(&self, from: u64, group: u64, msg: &Message) -> SimResult<()> {
        if msg.kind != MessageKind::VoteResponse || msg.reject {
            return Ok(());
        }
        let hs = self.nodes[(from - 1) as usize].replicas[group as usize]
            .disk
            .hard_state;
        if hs.term > msg.term || (hs.term == msg.term && hs.vote == msg.to) {
            return Ok(());
        }
        Err(format!(
            "vote durability: node {from} group {group} sent a vote for {} in term {} while its disk holds term {} vote {}",
            msg.to, msg.term, hs.term, hs.vote
        ))
    }

    fn send(&mut self, from: u64, group: u64, msg: Message) -> SimResult<()> {
        self.check_vote_durable(from, group, &msg)?;
        self.send_unchecked(from, group, msg);
        Ok(())
    }

    fn send_unchecked(&mut self, from: u64, group: u64, msg: Message) {
        let to = msg.to;
        if self.blocked.contains(&(from, to)) || self.rng.chance(self.faults.drop_ppm) {
            return;
        }
        let copies = if self.rng.chance(self.faults.dup_ppm) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut at = self.now + 1 + self.rng.below(self.faults.delay_max_ticks);
            if self.faults.long_delay_ppm > 0 && self.rng.chance(self.faults.long_delay_ppm) {
                at = self.now + 5 + self.rng.below(36);
            }
            let msg = msg.clone();
            self.net.push(InFlight {
                at,
                from,
                to,
                group,
                msg,
            });
        }
    }

    fn deliver(&mut self) -> SimResult<()> {
        let now = self.now;
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            if self.net[i].at <= now {
                due.push(self.net.swap_remove(i));
            } else {
                i += 1;
            }
        }
        // Random delivery order among the due messages (reordering).
        for i in (1..due.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            due.swap(i, j);
        }
        for f in due {
            if self.blocked.contains(&(f.from, f.to)) {
                continue;
            }
            let n = (f.to - 1) as usize;
            if n >= self.nodes.len() || !self.nodes[n].alive {
                continue;
            }
            if let Some(raw) = self.nodes[n].replicas[f.group as usize].raw.as_mut() {
                raw.step(f.msg);
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------- Ready handling

    fn process_all(&mut self) -> SimResult<()> {
        for _round in 0..3 {
            let mut any = false;
            for n in 0..self.nodes.len() {
                if !self.nodes[n].alive {
                    continue;
                }
                for g in 0..self.cfg.groups as usize {
                    let has = self.nodes[n].replicas[g]
                        .raw
                        .as_ref()
                        .is_some_and(|r| r.has_ready());
                    if has {
                        any = true;
                        self.process_ready(n, g)?;
                    }
                }
            }
            if !any {
                break;
            }
        }
        Ok(())
    }

    fn process_ready(&mut self, n: usize, g: usize) -> SimResult<()> {
        let node_id = n as u64 + 1;
        let Some(raw) = self.nodes[n].replicas[g].raw.as_mut() else {
            return Ok(());
        };
        let rd = raw.ready();
        for m in rd.messages {
            self.send(node_id, g as u64, m)?;
        }
        let rep = &mut self.nodes[n].replicas[g];
        rep.disk.unsynced.push_back(Write {
            number: rd.number,
            hard_state: rd.hard_state,
            entries: rd.entries,
            snapshot: rd.snapshot.clone(),
            persisted_messages: rd.persisted_messages,
        });
        if let Some(s) = rd.snapshot {
            let Some(kv) = Kv::decode(&s.data) else {
                return Err(format!("node {node_id} group {g}: undecodable snapshot"));
            };
            if let Some(&h) = self.checks[g].snapshots.get(&s.meta.index) {
                if h != hash_bytes(&s.data) {
                    return Err(format!(
                        "state machine safety: snapshot at {} differs from the state another replica had there",
                        s.meta.index
                    ));
                }
            }
            // A snapshot from the leader moves a replica forward only: raftcore hands one out
            // only above its commit index, hence above everything applied. Installing one at or
            // below the applied index would roll the state machine back.
            if s.meta.index <= rep.applied {
                return Err(format!(
                    "applied index regressed: node {node_id} group {g} was handed a snapshot at {} with {} already applied",
                    s.meta.index, rep.applied
                ));
            }
            rep.sm = kv;
            rep.applied = s.meta.index;
            self.stats.snapshots_installed += 1;
            // Writes waiting at or below the snapshot can no longer be matched to an entry.
            let lost: Vec<u64> = rep
                .pending_writes
                .range(..=s.meta.index)
                .map(|(_, (_, c))| *c)
                .collect();
            rep.pending_writes.retain(|i, _| *i > s.meta.index);
            for c in lost {
                self.fail_client(c);
            }
        }
        let mut completions = Vec::new();
        let applier_term = self.nodes[n].replicas[g]
            .raw
            .as_ref()
            .map_or(u64::MAX, |r| r.term());
        for e in &rd.committed_entries {
            let rep = &mut self.nodes[n].replicas[g];
            if e.index != rep.applied + 1 {
                return Err(format!(
                    "node {node_id} group {g}: applied {} then {} (gap)",
                    rep.applied, e.index
                ));
            }
            rep.applied = e.index;
            let h = hash_bytes(&e.data) ^ (e.kind as u64);
            let chk = &mut self.checks[g];
            match chk.applied.get(&e.index) {
                Some(&(t, hh)) if (t, hh) != (e.term, h) => {
                    return Err(format!(
                        "state machine safety: group {g} index {} applied as term {} on node {node_id} but term {t} elsewhere",
                        e.index, e.term
                    ));
                }
                Some(_) => {}
                None => {
                    chk.applied.insert(e.index, (e.term, h));
                    chk.commit_term_bound.insert(e.index, applier_term);
                }
            }
            chk.max_applied = chk.max_applied.max(e.index);
            self.stats.entries_applied += 1;
            let mut out = None;
            if e.kind == EntryKind::Normal {
                if let Some(input) = decode_cmd(&e.data) {
                    out = Some(rep.sm.apply(&input));
                }
            }
            if let Some((term, client)) = rep.pending_writes.remove(&e.index) {
                completions.push((client, if term == e.term { out } else { None }));
            }
        }
        let rep = &mut self.nodes[n].replicas[g];
        if let Some(raw) = rep.raw.as_mut() {
            raw.on_applied(rep.applied);
        }
        for (client, out) in completions {
            match out {
                Some(o) => self.complete_client(client, o, g),
                None => self.fail_client(client),
            }
        }
        // Reads: each id asked gets exactly one outcome (Ready contract item 6).
        let outcomes = rd
            .read_states
            .iter()
            .map(|r| r.request_id)
            .chain(rd.read_failures.iter().map(|f| f.request_id));
        for rs in &rd.read_states {
            let floor = self.nodes[n].replicas[g].read_floors.get(&rs.request_id);
            if let Some(&floor) = floor {
                if rs.index < floor {
                    return Err(format!(
                        "stale read: node {node_id} group {g} read {} got read index {} but {floor} was already applied when it was asked",
                        rs.request_id, rs.index
                    ));
                }
            }
        }
        for rid in outcomes {
            let rep = &mut self.nodes[n].replicas[g];
            rep.read_floors.remove(&rid);
            if rep.reads_asked.remove(&rid).is_none() || !self.reads_answered.insert(rid) {
                return Err(format!(
                    "read contract: node {node_id} group {g} reported read {rid} that it was not asked for or already answered"
                ));
            }
        }
        let mut failed_clients = Vec::new();
        let rep = &mut self.nodes[n].replicas[g];
        for f in &rd.read_failures {
            if let Some(at) = rep.pending_reads.iter().position(|r| r.0 == f.request_id) {
                failed_clients.push(rep.pending_reads.remove(at).1);
            }
        }
        for rs in rd.read_states {
            if let Some(r) = rep.pending_reads.iter_mut().find(|r| r.0 == rs.request_id) {
                r.2 = Some(rs.index);
            }
        }
        for c in failed_clients {
            // The read was never confirmed: it had no effect, its outcome is unknown.
            self.fail_client(c);
        }
        let rep = &mut self.nodes[n].replicas[g];
        let applied = rep.applied;
        let mut done = Vec::new();
        rep.pending_reads.retain(|r| match r.2 {
            Some(i) if i <= applied => {
                done.push(r.1);
                false
            }
            _ => true,
        });
        for c in done {
            let Some(op) = self.clients[c as usize].pending.clone() else {
                continue;
            };
            let out = self.nodes[n].replicas[g].sm.apply(&op.input);
            self.complete_client(c, out, g);
        }
        // Compaction.
        let rep = &mut self.nodes[n].replicas[g];
        if let Some(raw) = rep.raw.as_mut() {
            if rep.applied >= raw.first_index() + self.cfg.compact_entries {
                let data = rep.sm.encode();
                let h = hash_bytes(&data);
                match self.checks[g].snapshots.get(&rep.applied) {
                    Some(&old) if old != h => {
                        return Err(format!(
                            "state machine safety: group {g} state at {} differs between replicas",
                            rep.applied
                        ));
                    }
                    _ => {
                        self.checks[g].snapshots.insert(rep.applied, h);
                    }
                }
                raw.compact(rep.applied, data)
                    .map_err(|e| format!("compact failed: {e}"))?;
                rep.disk.compact(raw.snapshot().clone());
            }
        }
        Ok(())
    }

    fn sync_disks(&mut self) -> SimResult<()> {
        for n in 0..self.nodes.len() {
            if !self.nodes[n].alive || !self.rng.chance(self.faults.sync_ppm) {
                continue;
            }
            for g in 0..self.cfg.groups as usize {
                let writes: Vec<Write> =
                    self.nodes[n].replicas[g].disk.unsynced.drain(..).collect();
                let Some(last) = writes.last().map(|w| w.number) else {
                    continue;
                };
                let mut msgs = Vec::new();
                for mut w in writes {
                    let k = w.entries.len();
                    self.nodes[n].replicas[g].disk.apply(&w, k, true);
                    msgs.append(&mut w.persisted_messages);
                }
                for m in msgs {
                    self.send(n as u64 + 1, g as u64, m)?;
                }
                if let Some(raw) = self.nodes[n].replicas[g].raw.as_mut() {
                    raw.on_persisted(last)
                        .map_err(|e| format!("on_persisted: {e}"))?;
                }
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------- faults

    fn inject_faults(&mut self) -> SimResult<()> {
        let nn = self.cfg.nodes;
        if self.rng.chance(self.faults.partition_ppm) {
            match self.rng.below(6) {
                0 => {
                    self.unpin_clients();
                    self.blocked.clear();
                }
                4 | 5 => {
                    // Isolate the leader of a random group (both directions); one client stays
                    // with it (`Client::pinned`).
                    let g = self.rng.below(self.cfg.groups) as usize;
                    if let Some(l) = self.leader_of(g) {
                        let x = l as u64 + 1;
                        self.unpin_clients();
                        self.blocked.clear();
                        for o in 1..=nn {
                            if o != x {
                                self.blocked.push((x, o));
                                self.blocked.push((o, x));
                            }
                        }
                        let c = self.rng.below(self.cfg.clients) as usize;
                        self.clients[c].pinned = Some((g, x));
                    }
                }
                1 => {
                    // Symmetric split into two sides.
                    self.unpin_clients();
                    self.blocked.clear();
                    let side: Vec<bool> = (0..nn).map(|_| self.rng.below(2) == 0).collect();
                    for a in 1..=nn {
                        for b in 1..=nn {
                            if side[(a - 1) as usize] != side[(b - 1) as usize] {
                                self.blocked.push((a, b));
                            }
                        }
                    }
                }
                2 => {
                    // Asymmetric: one node can send but not receive (or the reverse).
                    let x = 1 + self.rng.below(nn);
                    let outgoing = self.rng.below(2) == 0;
                    for o in 1..=nn {
                        if o != x {
                            self.blocked.push(if outgoing { (x, o) } else { (o, x) });
                        }
                    }
                }
                _ => {
                    // One directed link.
                    let a = 1 + self.rng.below(nn);
                    let b = 1 + self.rng.below(nn);
                    if a != b {
                        self.blocked.push((a, b));
                    }
                }
            }
            self.trace(|| format!("partition: blocked links {:?}", self.blocked));
        }
        // A partition during joint consensus: the leader loses every outgoing voter, so only
        // C_new can still reach a majority. Nothing may commit then (thesis §4.3: C_old,new
        // needs both majorities); liveness is checked only after healing.
        if self.faults.partition_ppm > 0 {
            for g in 0..self.cfg.groups as usize {
                let Some(l) = self.leader_of(g) else {
                    continue;
                };
                let Some(conf) = self.nodes[l].replicas[g]
                    .raw
                    .as_ref()
                    .map(|r| r.conf().clone())
                else {
                    continue;
                };
                if !conf.is_joint() || !self.rng.chance(200_000) {
                    continue;
                }
                let x = l as u64 + 1;
                for &v in &conf.voters_outgoing {
                    for link in [(x, v), (v, x)] {
                        if v != x && !self.blocked.contains(&link) {
                            self.blocked.push(link);
                        }
                    }
                }
                self.trace(|| format!("group {g}: joint split, blocked links {:?}", self.blocked));
            }
        }
        if self.faults.client_cut_ppm > 0 && self.rng.chance(self.faults.client_cut_ppm) {
            match self.rng.below(3) {
                0 => self.client_blocked.clear(),
                1 => {
                    // Cut every client but one off from a group's leader: the others move on to
                    // a new leader while the one left may still read at the old one.
                    let g = self.rng.below(self.cfg.groups) as usize;
                    if let Some(l) = self.leader_of(g) {
                        let keep = self.rng.below(self.cfg.clients);
                        for c in 0..self.cfg.clients {
                            if c != keep {
                                self.cut_client(c, l as u64 + 1);
                            }
                        }
                    }
                }
                _ => {
                    let c = self.rng.below(self.cfg.clients);
                    let node = 1 + self.rng.below(self.cfg.nodes);
                    self.cut_client(c, node);
                }
            }
            self.trace(|| format!("client cuts: {:?}", self.client_blocked));
        }
        if self.faults.crash_unsynced_vote_ppm > 0 {
            let voted: Vec<usize> = (0..self.nodes.len())
                .filter(|&n| {
                    self.nodes[n].alive
                        && self.nodes[n].replicas.iter().any(|r| {
                            r.disk
                                .unsynced
                                .iter()
                                .any(|w| w.hard_state.is_some_and(|h| h.vote != 0))
                        })
                })
                .collect();
            let down = self.nodes.iter().filter(|n| !n.alive).count();
            if !voted.is_empty() && down < 2 && self.rng.chance(self.faults.crash_unsynced_vote_ppm)
            {
                let x = voted[self.rng.below(voted.len() as u64) as usize];
                self.crash(x)?;
                // A quick reboot: vote requests still in flight reach the restarted node.
                self.nodes[x].restart_at = self.now + 1;
            }
        }
        if self.rng.chance(self.faults.crash_ppm) {
            let down = self.nodes.iter().filter(|n| !n.alive).count();
            if down < 2 {
                // Half the crashes hit a leader.
                let g = self.rng.below(self.cfg.groups) as usize;
                let x = match self.leader_of(g) {
                    Some(l) if self.rng.below(2) == 0 => l,
                    _ => self.rng.below(nn) as usize,
                };
                if self.nodes[x].alive {
                    self.crash(x)?;
                }
            }
        }
        for g in 0..self.cfg.groups as usize {
            if self.rng.chance(self.faults.leader_crash_ppm) {
                let down = self.nodes.iter().filter(|n| !n.alive).count();
                if let Some(l) = self.leader_of(g) {
                    if down < 2 {
                        self.crash(l)?;
                    }
                }
            }
            if self.rng.chance(self.faults.conf_change_ppm) {
                self.random_conf_change(g);
            }
            if self.rng.chance(self.faults.transfer_ppm) {
                if let Some(l) = self.leader_of(g) {
                    let voters = self.nodes[l].replicas[g]
                        .raw
                        .as_ref()
                        .map(|r| r.conf().voters.clone())
                        .unwrap_or_default();
                    if !voters.is_empty() {
                        let t = voters[self.rng.below(voters.len() as u64) as usize];
                        if let Some(raw) = self.nodes[l].replicas[g].raw.as_mut() {
                            if raw.transfer_leader(t).is_ok() {
                                if self.cfg.trace {
                                    println!(
                                        "[seed {} tick {}] group {g}: transfer {} -> {t}",
                                        self.seed,
                                        self.now,
                                        l + 1
                                    );
                                }
                                self.stats.transfers += 1;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn leader_of(&self, g: usize) -> Option<usize> {
        (0..self.nodes.len()).find(|&n| {
            self.nodes[n].alive
                && self.nodes[n].replicas[g]
                    .raw
                    .as_ref()
                    .is_some_and(|r| r.role() == Role::Leader)
        })
    }

    fn random_conf_change(&mut self, g: usize) {
        let Some(l) = self.leader_of(g) else {
            return;
        };
        let Some(conf) = self.nodes[l].replicas[g]
            .raw
            .as_ref()
            .map(|r| r.conf().clone())
        else {
            return;
        };
        if conf.is_joint() {
            return;
        }
        let nn = self.cfg.nodes;
        let others: Vec<u64> = (1..=nn).filter(|n| !conf.members().contains(n)).collect();
        let pick = |rng: &mut SplitMix64, v: &[u64]| v[rng.below(v.len() as u64) as usize];
        // Pick among the changes that are possible now. Swaps weigh triple: they are the
        // changes where C_new's majority does not imply C_old's, so they exercise the joint
        // rule (thesis §4.3).
        let has_learners = !conf.learners.is_empty();
        let options: Vec<u8> = [
            (0, has_learners),
            (1, !others.is_empty()),
            (2, conf.voters.len() > 3),
            (3, has_learners),
            (4, has_learners),
            (4, has_learners),
            (4, has_learners),
        ]
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(k, _)| *k)
        .collect();
        if options.is_empty() {
            return;
        }
        let steps = match options[self.rng.below(options.len() as u64) as usize] {
            0 => vec![ConfChangeStep::AddVoter(pick(
                &mut self.rng,
                &conf.learners,
            ))],
            1 => vec![ConfChangeStep::AddLearner(pick(&mut self.rng, &others))],
            // May remove the leader itself.
            2 => vec![ConfChangeStep::Remove(pick(&mut self.rng, &conf.voters))],
            3 => vec![ConfChangeStep::Remove(pick(&mut self.rng, &conf.learners))],
            // Swap a voter (maybe the leader) for a learner in one joint change.
            _ => vec![
                ConfChangeStep::AddVoter(pick(&mut self.rng, &conf.learners)),
                ConfChangeStep::Remove(pick(&mut self.rng, &conf.voters)),
            ],
        };
        if let Some(raw) = self.nodes[l].replicas[g].raw.as_mut() {
            let cc = ConfChange { steps };
            if raw.propose_conf_change(&cc).is_ok() {
                if self.cfg.trace {
                    println!(
                        "[seed {} tick {}] group {g}: leader {} proposes {:?} (conf {:?})",
                        self.seed,
                        self.now,
                        l + 1,
                        cc.steps,
                        conf
                    );
                }
                self.stats.conf_changes += 1;
            }
        }
    }

    /// Kills node `n`. What raftcore called durable (`persisted()`, with the term its log holds
    /// there) must be on the disk afterwards (Ready contract, step 3, and L7): checked here
    /// against the torn disk, `Err` if it is not.
    fn crash(&mut self, n: usize) -> SimResult<()> {
        self.trace(|| format!("crash node {}", n + 1));
        self.stats.crashes += 1;
        let node = &mut self.nodes[n];
        node.alive = false;
        node.restart_at = self.now + 3 + self.rng.below(self.faults.restart_ticks_max);
        let mut lost_clients = Vec::new();
        let mut broken = None;
        for g in 0..node.replicas.len() {
            let rep = &mut node.replicas[g];
            let claim = rep
                .raw
                .take()
                .map(|r| (r.persisted(), r.log_term(r.persisted())));
            // Unsynced writes: a random prefix of them reached the disk anyway, the last of
            // those torn (only a prefix of its entries, and no hard state unless all entries;
            // the contract writes the hard state last, so even with all entries it may be
            // missing).
            let writes: Vec<Write> = rep.disk.unsynced.drain(..).collect();
            let survive = self.rng.below(writes.len() as u64 + 1) as usize;
            for (i, w) in writes.iter().enumerate().take(survive) {
                let (k, hs) = if i + 1 == survive {
                    let k = self.rng.below(w.entries.len() as u64 + 1) as usize;
                    (k, self.tear_rng.below(2) == 0)
                } else {
                    (w.entries.len(), true)
                };
                rep.disk.apply(w, k, hs);
            }
            if let Some((index, term)) = claim {
                // Below the in-memory snapshot the log has no term to name; the entry there was
                // committed, so some replica applied it: that is the term the disk must hold.
                let term = term.or_else(|| self.checks[g].applied.get(&index).map(|a| a.0));
                let d = &rep.disk;
                let snap = &d.snapshot.meta;
                let on_disk = if index == snap.index {
                    Some(snap.term)
                } else {
                    index
                        .checked_sub(snap.index + 1)
                        .and_then(|i| d.entries.get(i as usize))
                        .map(|e| e.term)
                };
                let wrong = match term {
                    Some(_) => on_disk != term,
                    // Applied nowhere yet: the disk must at least hold an entry there.
                    None => index > 0 && on_disk.is_none(),
                };
                if index >= snap.index && wrong && broken.is_none() {
                    broken = Some(format!(
                        "node {} group {g}: persisted {index} (term {term:?}) but the disk holds \
                         {on_disk:?} there after a crash",
                        n + 1
                    ));
                }
            }
            for (_, (_, c)) in std::mem::take(&mut rep.pending_writes) {
                lost_clients.push(c);
            }
            for (_, c, _) in std::mem::take(&mut rep.pending_reads) {
                lost_clients.push(c);
            }
            // The RawNode is gone with its reads; a restarted one owes them nothing.
            rep.reads_asked.clear();
            rep.read_floors.clear();
        }
        for c in lost_clients {
            self.fail_client(c);
        }
        broken.map_or(Ok(()), Err)
    }

    fn restart_due(&mut self) -> SimResult<()> {
        for n in 0..self.nodes.len() {
            if self.nodes[n].alive || self.nodes[n].restart_at > self.now {
                continue;
            }
            let node = &mut self.nodes[n];
            node.alive = true;
            if self.cfg.trace {
                println!(
                    "[seed {} tick {}] restart node {}",
                    self.seed,
                    self.now,
                    n + 1
                );
            }
            node.incarnation += 1;
            for g in 0..node.replicas.len() {
                let rep = &mut node.replicas[g];
                let state = RestartState {
                    hard_state: rep.disk.hard_state,
                    snapshot: rep.disk.snapshot.clone(),
                    entries: rep.disk.entries.clone(),
                };
                let cfg = node_config(
                    n as u64 + 1,
                    g as u64,
                    self.seed,
                    node.incarnation,
                    &self.tuning,
                );
                let raw = RawNode::new(cfg, state)
                    .map_err(|e| format!("node {} group {g}: restart failed: {e}", n + 1))?;
                rep.sm = Kv::decode(&rep.disk.snapshot.data)
                    .ok_or_else(|| format!("node {} group {g}: bad snapshot on disk", n + 1))?;
                rep.applied = rep.disk.snapshot.meta.index;
                rep.raw = Some(raw);
                rep.leader_term_checked = 0;
                rep.committed_seen = 0;
                rep.applied_seen = 0;
                rep.quorum_checked = None;
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------- clients

    fn unpin_clients(&mut self) {
        for c in self.clients.iter_mut() {
            c.pinned = None;
        }
    }

    /// A client asks a random node it can reach who leads group `g` (as a real client does
    /// after a NotLeader answer or a refresh), and takes the answer if it can reach that node.
    fn discover_leader(&mut self, c: usize, g: usize) {
        let asked = 1 + self.rng.below(self.cfg.nodes);
        let n = (asked - 1) as usize;
        if !self.nodes[n].alive || self.client_blocked.contains(&(c as u64, asked)) {
            return;
        }
        let Some(hint) = self.nodes[n].replicas[g].raw.as_ref().map(|r| r.leader()) else {
            return;
        };
        if hint != 0 && !self.client_blocked.contains(&(c as u64, hint)) {
            self.clients[c].leader_guess[g] = hint;
        }
    }

    /// Cuts client `c` off from node `node`: its operation pending there is lost (outcome
    /// unknown), and it will pick another node.
    fn cut_client(&mut self, c: u64, node: u64) {
        if !self.client_blocked.contains(&(c, node)) {
            self.client_blocked.push((c, node));
        }
        let Some(op) = self.clients[c as usize].pending.as_ref() else {
            return;
        };
        if op.node != node {
            return;
        }
        let (n, g, rid) = ((node - 1) as usize, op.group as usize, op.read_id);
        let rep = &mut self.nodes[n].replicas[g];
        rep.pending_writes.retain(|_, (_, cl)| *cl != c);
        rep.pending_reads.retain(|r| r.0 != rid);
        self.fail_client(c);
    }

    fn complete_client(&mut self, c: u64, out: KvOutput, g: usize) {
        let Some(op) = self.clients[c as usize].pending.take() else {
            return;
        };
        self.history.complete(op.op, self.now, out.clone());
        self.stats.ops_completed += 1;
        let key = op.input.key().to_vec();
        match (&op.input, &out) {
            (KvInput::Put { value, .. }, _) => {
                self.clients[c as usize]
                    .last_seen
                    .insert(key, value.clone());
            }
            (KvInput::Get { .. }, KvOutput::Get(Some(v))) => {
                self.clients[c as usize].last_seen.insert(key, v.clone());
            }
            (KvInput::Cas { new: Some(v), .. }, KvOutput::Cas(true)) => {
                self.clients[c as usize].last_seen.insert(key, v.clone());
            }
            _ => {}
        }
        if self.healed && !matches!(op.input, KvInput::Get { .. }) {
            self.checks[g].write_after_heal = true;
        }
    }

    fn fail_client(&mut self, c: u64) {
        self.clients[c as usize].rediscover = true;
        if let Some(op) = self.clients[c as usize].pending.take() {
            self.history.fail(op.op);
            self.stats.ops_unknown += 1;
        }
    }

    fn clients_act(&mut self) -> SimResult<()> {
        for c in 0..self.clients.len() {
            if let Some(op) = &self.clients[c].pending {
                if op.deadline <= self.now {
                    // Forget the op at the replica too, so a late completion is not misattributed.
                    let (n, g, rid) = ((op.node - 1) as usize, op.group as usize, op.read_id);
                    let rep = &mut self.nodes[n].replicas[g];
                    rep.pending_writes.retain(|_, (_, cl)| *cl != c as u64);
                    rep.pending_reads.retain(|r| r.0 != rid);
                    self.fail_client(c as u64);
                }
                continue;
            }
            if !self.rng.chance(500_000) {
                continue;
            }
            let pinned = self.clients[c].pinned;
            let key_i = match pinned {
                Some((g, _)) => {
                    g as u64 + self.cfg.groups * self.rng.below(self.cfg.keys / self.cfg.groups)
                }
                None => self.rng.below(self.cfg.keys),
            };
            let g = (key_i % self.cfg.groups) as usize;
            if let Some((_, x)) = pinned {
                self.clients[c].leader_guess[g] = x;
            }
            let sticky = self.clients[c].sticky_reader || pinned.is_some();
            if self.tuning.fast_discovery
                && pinned.is_none()
                && (!sticky || self.clients[c].rediscover)
            {
                self.clients[c].rediscover = false;
                self.discover_leader(c, g);
            }
            let key = format!("k{key_i}").into_bytes();
            let kind = if sticky { 5 } else { self.rng.below(10) };
            let cl = &mut self.clients[c];
            cl.seq += 1;
            let value = format!("c{c}v{}", cl.seq).into_bytes();
            let input = if kind < 4 {
                KvInput::Put { key, value }
            } else if kind < 7 {
                KvInput::Get { key }
            } else {
                let expected = if self.rng.below(4) == 0 {
                    None
                } else {
                    cl.last_seen.get(&key).cloned()
                };
                KvInput::Cas {
                    key,
                    expected,
                    new: Some(value),
                }
            };
            let is_read = matches!(input, KvInput::Get { .. });
            // Reads go to a random node half the time (follower reads via ReadIndex).
            let target = if is_read && !sticky && self.rng.below(2) == 0 {
                1 + self.rng.below(self.cfg.nodes)
            } else {
                self.clients[c].leader_guess[g]
            };
            let n = (target - 1) as usize;
            if !self.nodes[n].alive || self.client_blocked.contains(&(c as u64, target)) {
                self.clients[c].leader_guess[g] = 1 + self.rng.below(self.cfg.nodes);
                continue;
            }
            let now = self.now;
            let deadline = now + self.cfg.op_timeout_ticks;
            let Some(raw) = self.nodes[n].replicas[g].raw.as_mut() else {
                continue;
            };
            if is_read {
                let rid = self.next_read_id;
                if raw.read_index(rid).is_err() {
                    self.clients[c].leader_guess[g] = 1 + self.rng.below(self.cfg.nodes);
                    continue;
                }
                self.next_read_id += 1;
                let op = self.history.invoke(c as u64, now, input.clone());
                let rep = &mut self.nodes[n].replicas[g];
                rep.pending_reads.push((rid, c as u64, None));
                rep.reads_asked.insert(rid, now);
                rep.read_floors.insert(rid, self.checks[g].max_applied);
                self.clients[c].pending = Some(ClientOp {
                    op,
                    node: target,
                    group: g as u64,
                    deadline,
                    input,
                    read_id: rid,
                });
            } else {
                match raw.propose(&[encode_cmd(&input)]) {
                    Ok(p) => {
                        let op = self.history.invoke(c as u64, now, input.clone());
                        self.nodes[n].replicas[g]
                            .pending_writes
                            .insert(p.last_index, (p.term, c as u64));
                        self.clients[c].pending = Some(ClientOp {
                            op,
                            node: target,
                            group: g as u64,
                            deadline,
                            input,
                            read_id: 0,
                        });
                    }
                    Err(crate::Error::NotLeader { leader_hint }) if leader_hint != 0 => {
                        self.clients[c].leader_guess[g] = leader_hint;
                    }
                    Err(_) => {
                        self.clients[c].leader_guess[g] = 1 + self.rng.below(self.cfg.nodes);
                    }
                }
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------- checks

    fn check_tick(&mut self) -> SimResult<()> {
        for g in 0..self.cfg.groups as usize {
            for n in 0..self.nodes.len() {
                if !self.nodes[n].alive {
                    continue;
                }
                let rep = &self.nodes[n].replicas[g];
                let Some(raw) = rep.raw.as_ref() else {
                    continue;
                };
                raw.check_invariants()
                    .map_err(|e| format!("node {} group {g}: invariant: {e}", n + 1))?;
                // Within one incarnation neither the commit index nor the applied index goes
                // back (a snapshot below either would roll the replica back).
                if raw.committed() < rep.committed_seen || raw.applied() < rep.applied_seen {
                    return Err(format!(
                        "node {} group {g}: commit/applied went back from {}/{} to {}/{}",
                        n + 1,
                        rep.committed_seen,
                        rep.applied_seen,
                        raw.committed(),
                        raw.applied()
                    ));
                }
                let (committed, applied) = (raw.committed(), raw.applied());
                let rep = &mut self.nodes[n].replicas[g];
                rep.committed_seen = committed;
                rep.applied_seen = applied;
                let rep = &self.nodes[n].replicas[g];
                let Some(raw) = rep.raw.as_ref() else {
                    continue;
                };
                if raw.role() != Role::Leader {
                    continue;
                }
                self.check_leader_matches(n, g)?;
                self.check_commit_quorum(n, g)?;
                let rep = &self.nodes[n].replicas[g];
                let Some(raw) = rep.raw.as_ref() else {
                    continue;
                };
                let term = raw.term();
                // Election safety (paper §5.2): at most one leader per term.
                let chk = &mut self.checks[g];
                match chk.leaders.get(&term) {
                    Some(&l) if l != n as u64 + 1 => {
                        return Err(format!(
                            "election safety: group {g} term {term} has leaders {l} and {}",
                            n + 1
                        ));
                    }
                    _ => {
                        if chk.leaders.insert(term, n as u64 + 1).is_none() && self.cfg.trace {
                            println!(
                                "[seed {} tick {}] group {g}: node {} leads term {term}",
                                self.seed,
                                self.now,
                                n + 1
                            );
                        }
                    }
                }
                if rep.leader_term_checked == term {
                    continue;
                }
                // Leader completeness (paper §5.4): the leader holds every entry committed in
                // an earlier term (applied implies committed). A leader of an older term can
                // still be elected late (its last vote delayed on the network) after a newer
                // term committed entries; it need not hold those.
                for (&i, &(t, _)) in chk.applied.range(raw.first_index()..) {
                    if chk.commit_term_bound.get(&i).is_some_and(|&b| b >= term) {
                        continue;
                    }
                    if raw.log_term(i) != Some(t) {
                        return Err(format!(
                            "leader completeness: group {g} leader {} term {term} has term {:?} at {i}, committed term {t}",
                            n + 1,
                            raw.log_term(i)
                        ));
                    }
                }
                self.nodes[n].replicas[g].leader_term_checked = term;
            }
        }
        Ok(())
    }

    /// A leader's match index for a replica names an entry that replica really holds, with the
    /// leader's term for it (paper §5.3: an acknowledgement means the follower's log matches
    /// the leader's through that index). Checked for live replicas in the leader's own term
    /// only: a replica that moved to a newer term may have dropped entries the old leader
    /// still counts, which is legal.
    fn check_leader_matches(&self, n: usize, g: usize) -> SimResult<()> {
        let Some(leader) = self.nodes[n].replicas[g].raw.as_ref() else {
            return Ok(());
        };
        for id in leader.conf().members() {
            let f = (id - 1) as usize;
            if f == n || f >= self.nodes.len() || !self.nodes[f].alive {
                continue;
            }
            let Some((matched, _, _)) = leader.progress(id) else {
                continue;
            };
            let Some(follower) = self.nodes[f].replicas[g].raw.as_ref() else {
                continue;
            };
            if matched == 0 || follower.term() != leader.term() {
                continue;
            }
            let Some(want) = leader.log_term(matched) else {
                continue; // compacted on the leader
            };
            if matched < follower.first_index().saturating_sub(1) {
                continue; // covered by the follower's snapshot (committed)
            }
            let have = follower.log_term(matched);
            if have != Some(want) {
                return Err(format!(
                    "match index: group {g} leader {} term {} counts node {id} as holding {matched} (term {want}), but it holds {:?} there (last index {})",
                    n + 1,
                    leader.term(),
                    have,
                    follower.last_index()
                ));
            }
        }
        Ok(())
    }

    /// Every commit index a leader reaches is durable on a majority of each half of the
    /// configuration that counted it (paper §5.3: committed once stored on a majority;
    /// thesis §4.3: in C_old,new on separate majorities of both), read from the nodes'
    /// simulated disks. A membership change takes effect when its entry commits, so when the
    /// configuration changed since the last check, the newest ConfChange entry committed since
    /// then was counted under the previous configuration, and the commit index under the
    /// current one.
    fn check_commit_quorum(&mut self, n: usize, g: usize) -> SimResult<()> {
        let Some(leader) = self.nodes[n].replicas[g].raw.as_ref() else {
            return Ok(());
        };
        let (term, conf, committed) = (leader.term(), leader.conf().clone(), leader.committed());
        let prev = self.nodes[n].replicas[g].quorum_checked.clone();
        let mut todo: Vec<(u64, ConfState)> = Vec::new();
        let mut either: Option<(u64, ConfState, ConfState)> = None;
        if let Some((pterm, pconf, pcommitted)) = prev {
            if pterm == term && committed > pcommitted {
                if pconf == conf {
                    todo.push((committed, conf.clone()));
                } else {
                    let k = (pcommitted + 1..=committed).rev().find(|&i| {
                        leader
                            .log_entry(i)
                            .is_some_and(|e| e.kind == EntryKind::ConfChange)
                    });
                    // One advance counts everything it commits under the configuration in
                    // force before it; a second advance in the same tick counts under the new
                    // one. Entries after the change may have been counted under either.
                    match k {
                        Some(k) => {
                            todo.push((k, pconf.clone()));
                            if committed > k {
                                either = Some((committed, pconf, conf.clone()));
                            }
                        }
                        None => either = Some((committed, pconf, conf.clone())),
                    }
                }
            }
        }
        let todo: Vec<(u64, u64, ConfState)> = todo
            .into_iter()
            .filter_map(|(i, c)| leader.log_term(i).map(|t| (i, t, c)))
            .collect();
        let either = either.and_then(|(i, a, b)| leader.log_term(i).map(|t| (i, t, a, b)));
        self.nodes[n].replicas[g].quorum_checked = Some((term, conf, committed));
        for (index, want, conf) in todo {
            self.quorum_holds(g, index, want, &conf).map_err(|e| {
                format!(
                    "commit quorum: group {g} leader {} term {term} committed {index} but {e}",
                    n + 1
                )
            })?;
        }
        if let Some((index, want, a, b)) = either {
            if let (Err(e), Err(_)) = (
                self.quorum_holds(g, index, want, &a),
                self.quorum_holds(g, index, want, &b),
            ) {
                return Err(format!(
                    "commit quorum: group {g} leader {} term {term} committed {index} but {e}, nor under the new configuration {b:?}",
                    n + 1
                ));
            }
        }
        Ok(())
    }

    /// `Err` unless a majority of each half of `conf` holds (index, term) durably.
    fn quorum_holds(&self, g: usize, index: u64, term: u64, conf: &ConfState) -> SimResult<()> {
        let holds = |id: u64| {
            let d = &self.nodes[(id - 1) as usize].replicas[g].disk;
            d.snapshot.meta.index >= index
                || d.entries.iter().any(|e| e.index == index && e.term == term)
        };
        for half in [&conf.voters, &conf.voters_outgoing] {
            if half.is_empty() {
                continue;
            }
            let have = half.iter().filter(|&&id| holds(id)).count();
            if have <= half.len() / 2 {
                return Err(format!(
                    "only {have} of voters {half:?} hold it durably (configuration {conf:?})"
                ));
            }
        }
        Ok(())
    }

    /// Log Matching (paper §5.3): if two logs hold an entry with the same index and term, they
    /// are identical up to it.
    fn check_log_matching(&self) -> SimResult<()> {
        for g in 0..self.cfg.groups as usize {
            let raws: Vec<(usize, &RawNode)> = (0..self.nodes.len())
                .filter(|&n| self.nodes[n].alive)
                .filter_map(|n| self.nodes[n].replicas[g].raw.as_ref().map(|r| (n, r)))
                .collect();
            for a in 0..raws.len() {
                for b in a + 1..raws.len() {
                    let (ra, rb) = (raws[a].1, raws[b].1);
                    let lo = ra.first_index().max(rb.first_index());
                    let hi = ra.last_index().min(rb.last_index());
                    let mut i = hi;
                    let mut matched = false;
                    while i >= lo && i > 0 {
                        let (ea, eb) = (ra.log_entry(i), rb.log_entry(i));
                        if let (Some(ea), Some(eb)) = (ea, eb) {
                            if matched {
                                if ea != eb {
                                    return Err(format!(
                                        "log matching: group {g} nodes {} and {} differ at {i} below a common entry",
                                        raws[a].0 + 1,
                                        raws[b].0 + 1
                                    ));
                                }
                            } else if ea.term == eb.term {
                                matched = true;
                                if ea != eb {
                                    return Err(format!(
                                        "log matching: group {g} same term {} at {i} with different data",
                                        ea.term
                                    ));
                                }
                            }
                        }
                        i -= 1;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Parses `A..B` (half-open) into a range of seeds.
pub fn parse_seed_range(s: &str) -> Option<std::ops::Range<u64>> {
    if let Some((a, b)) = s.split_once("..") {
        let a: u64 = a.trim().parse().ok()?;
        let b: u64 = b.trim().parse().ok()?;
        (a < b).then_some(a..b)
    } else {
        let a: u64 = s.trim().parse().ok()?;
        Some(a..a + 1)
    }
}

/// Runs seeds `range`; returns the failures (empty = all passed).
pub fn run_seeds(range: std::ops::Range<u64>, cfg: &SimConfig) -> (u64, Vec<SimFailure>) {
    let mut passed = 0;
    let mut failed = Vec::new();
    for seed in range {
        match run(seed, cfg) {
            Ok(_) => passed += 1,
            Err(f) => failed.push(f),
        }
    }
    (passed, failed)
}
