//! Per-shard counters, gauges and histograms, read by the metrics thread at scrape time.
//!
//! # Who writes, who reads
//! Every value in a [`ShardMetrics`] is written by exactly one thread: the shard's own (its
//! event loop, its core and its socket tasks all run on it). The metrics thread (`super::http`)
//! only reads them, when Prometheus scrapes. So an update is a relaxed load and a relaxed store
//! of an `AtomicU64` (two plain `mov`s on x86-64, no locked instruction, no lock), and the hot
//! path pays a few nanoseconds per event, not a shared cache line or a mutex. A reader may see
//! a histogram's buckets from slightly different instants; its `_count` is computed from the
//! buckets it read, so `_count` always equals the `+Inf` bucket.
//!
//! Answers are counted by the driver when it hands them to their connection (kind and result
//! of every request the core answered), and by the socket task for the `Busy` answers it gives
//! itself at a connection's in-flight limit. A reply the connection's writer must cut down to
//! fit a frame (`net.rs`, `fit_frame`) is counted with the outcome the core gave it.
//!
//! What is not counted here is read from state the node publishes anyway
//! ([`super::shared::NodeShared`]: leaders, terms, commit and applied indexes, session table
//! sizes per partition), at scrape time.
//!
//! # Clock
//! The sans-I/O core (`super::shard_core`) only counts (no clock); the driver measures time
//! (WAL write and fdatasync durations come from the WAL's own measurement, the loop heartbeat
//! is the driver's `Instant`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wire::{Op, ServerError as WireError};

/// A counter with a single writer (module docs): `add` is a relaxed load and store.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning shard's thread may call this (one writer: a load and a store
    /// cannot lose an update when nobody else stores).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// The current value (any thread).
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge with a single writer.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value (owning thread only).
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The current value (any thread).
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Most bucket bounds of a [`Histogram`] (the `+Inf` bucket comes on top).
pub const BOUNDS_MAX: usize = 16;

/// A histogram with fixed bucket bounds and a single writer. Values are `u64` in the
/// histogram's base unit (nanoseconds for durations, a count for sizes); the exposition
/// divides by `scale`. Its buckets are inline (no heap allocation another shard's data could
/// sit next to).
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds (inclusive), ascending, in the base unit; the last bucket is `+Inf`.
    bounds: &'static [u64],
    /// `bounds.len() + 1` used: the `+Inf` bucket last. Not cumulative.
    buckets: [AtomicU64; BOUNDS_MAX + 1],
    sum: AtomicU64,
    /// Base units per exposed unit (1e9 for nanoseconds -> seconds, 1 for counts).
    scale: f64,
}

/// A histogram's values at one instant, as the exposition wants them.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in the exposed unit, observations in this bucket: not cumulative);
    /// the last is `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of all observations, in the exposed unit.
    pub sum: f64,
    /// Number of observations (the sum of the buckets).
    pub count: u64,
}

impl Histogram {
    /// A histogram over `bounds` (ascending, base unit) exposed divided by `scale`.
    pub fn new(bounds: &'static [u64], scale: f64) -> Self {
        assert!(bounds.len() <= BOUNDS_MAX, "at most {BOUNDS_MAX} bounds");
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds ascend");
        Histogram {
            bounds,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
            scale,
        }
    }

    /// Records one observation of `v` base units (owning thread only).
    #[inline]
    pub fn observe(&self, v: u64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        let b = &self.buckets[i];
        b.store(b.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        self.sum.store(
            self.sum.load(Ordering::Relaxed).wrapping_add(v),
            Ordering::Relaxed,
        );
    }

    /// Records a duration (a histogram in nanoseconds).
    #[inline]
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The current values (any thread).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = Vec::with_capacity(self.bounds.len() + 1);
        let mut count = 0;
        for (i, b) in self.buckets[..=self.bounds.len()].iter().enumerate() {
            let n = b.load(Ordering::Relaxed);
            count += n;
            let le = match self.bounds.get(i) {
                Some(&bound) => bound as f64 / self.scale,
                None => f64::INFINITY,
            };
            buckets.push((le, n));
        }
        HistogramSnapshot {
            buckets,
            sum: self.sum.load(Ordering::Relaxed) as f64 / self.scale,
            count,
        }
    }

    /// The smallest bucket bound at or above the `q` quantile (0..=1) of what was observed,
    /// in the exposed unit; None when nothing was observed; `+Inf` when it is in the last
    /// bucket. (An upper bound of the quantile, as a bucketed histogram can give.)
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let s = self.snapshot();
        if s.count == 0 {
            return None;
        }
        let rank = ((s.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (le, n) in &s.buckets {
            seen += n;
            if seen >= rank {
                return Some(*le);
            }
        }
        Some(f64::INFINITY)
    }
}

/// Durations, nanoseconds: 25 us .. 5 s (then `+Inf`), for WAL writes and fdatasyncs and
/// client request latency. The device
/// here does a 4 KiB write + fdatasync in 80-200 us; a p99 in the 100 ms buckets means a
/// sick disk.
pub const DURATION_BOUNDS_NS: &[u64] = &[
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    5_000_000_000,
];

/// Commands per proposal batch: powers of two, 1 .. 4096.
pub const BATCH_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/// What a client request asks, for `corum_requests_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpKind {
    /// `Get`.
    Get,
    /// `Range`.
    Range,
    /// `Put`.
    Put,
    /// `Delete`.
    Delete,
    /// `Txn`.
    Txn,
    /// `Status`.
    Status,
    /// `ClusterMap`.
    ClusterMap,
    /// `TransferLeader`.
    TransferLeader,
    /// `Backup` (one chunk).
    Backup,
    /// `Events`.
    Events,
}

impl OpKind {
    /// Every kind, in label order.
    pub const ALL: [OpKind; 10] = [
        OpKind::Get,
        OpKind::Range,
        OpKind::Put,
        OpKind::Delete,
        OpKind::Txn,
        OpKind::Status,
        OpKind::ClusterMap,
        OpKind::TransferLeader,
        OpKind::Backup,
        OpKind::Events,
    ];

    /// The kind of a request.
    pub fn of(op: &Op) -> OpKind {
        match op {
            Op::Get { .. } => OpKind::Get,
            Op::Range(_) => OpKind::Range,
            Op::Put(_) => OpKind::Put,
            Op::Delete { .. } => OpKind::Delete,
            Op::Txn(_) => OpKind::Txn,
            Op::Status => OpKind::Status,
            Op::ClusterMap => OpKind::ClusterMap,
            Op::TransferLeader { .. } => OpKind::TransferLeader,
            Op::Backup { .. } => OpKind::Backup,
            Op::Events { .. } => OpKind::Events,
        }
    }

    /// The `kind` label value.
    pub fn label(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Range => "range",
            OpKind::Put => "put",
            OpKind::Delete => "delete",
            OpKind::Txn => "txn",
            OpKind::Status => "status",
            OpKind::ClusterMap => "cluster_map",
            OpKind::TransferLeader => "transfer_leader",
            OpKind::Backup => "backup",
            OpKind::Events => "events",
        }
    }
}

/// `result` label values of `corum_requests_total`: `ok`, then one per wire error.
pub const RESULTS: [&str; 14] = [
    "ok",
    "not_leader",
    "wrong_shard",
    "stale_map",
    "unavailable",
    "timeout",
    "too_large",
    "invalid_argument",
    "busy",
    "cross_partition",
    "internal",
    "outcome_unknown",
    "compacted",
    "future_revision",
];

/// Index into [`RESULTS`] of an answer's outcome (exhaustive: a new wire error must be named).
pub fn result_index(outcome: Result<(), &WireError>) -> usize {
    match outcome {
        Ok(()) => 0,
        Err(e) => match e {
            WireError::NotLeader { .. } => 1,
            WireError::WrongShard { .. } => 2,
            WireError::StaleMap { .. } => 3,
            WireError::Unavailable { .. } => 4,
            WireError::Timeout => 5,
            WireError::TooLarge { .. } => 6,
            WireError::InvalidArgument { .. } => 7,
            WireError::Busy => 8,
            WireError::CrossPartition { .. } => 9,
            WireError::Internal { .. } => 10,
            WireError::OutcomeUnknown { .. } => 11,
            WireError::Compacted { .. } => 12,
            WireError::FutureRevision { .. } => 13,
        },
    }
}

const KINDS: usize = OpKind::ALL.len();

/// One shard's metrics (module docs: the shard writes, the metrics thread reads). Everything
/// is inline and the struct is aligned to 128 bytes (two cache lines, as adjacent-line
/// prefetching pairs them), so the shards' metrics, which sit side by side in
/// [`NodeMetrics`], share no cache line: one shard's updates never invalidate another's.
#[derive(Debug)]
#[repr(align(128))]
pub struct ShardMetrics {
    /// Answers by (kind, result): `requests[kind * RESULTS.len() + result]`.
    requests: [Counter; KINDS * RESULTS.len()],
    /// Time from a request's frame being decoded by the shard's socket task to its answer
    /// being handed to the connection's writer, nanoseconds, by kind (`OpKind as usize`).
    /// Answers the socket task gives itself (`Busy` at the in-flight limit) are not in it.
    request_duration: [Histogram; KINDS],
    /// Client connections open now.
    pub client_connections: Gauge,
    /// Client connections accepted.
    pub client_connections_accepted: Counter,
    /// Client connections refused at `connections_max`.
    pub client_connections_refused: Counter,
    /// Commands proposed to raftcore.
    pub proposals: Counter,
    /// Commands per proposal batch (one batch per partition per turn).
    pub proposal_batch: Histogram,
    /// WAL batches written and synced.
    pub wal_syncs: Counter,
    /// Bytes handed to the device by WAL writes (padding and rewritten partial blocks
    /// included).
    pub wal_bytes: Counter,
    /// Duration of the WAL batch write (O_DIRECT, before the fdatasync), nanoseconds.
    pub wal_write: Histogram,
    /// Duration of the WAL fdatasync, nanoseconds.
    pub wal_fdatasync: Histogram,
    /// The slowest fdatasync lately, microseconds (`corum ctl status`).
    pub slowest_fsync: RecentMax,
    /// Snapshots sent to followers (raftcore snapshot messages).
    pub snapshots_sent: Counter,
    /// Bytes of snapshots sent.
    pub snapshot_sent_bytes: Counter,
    /// Snapshots received from a leader (installed once durable).
    pub snapshots_received: Counter,
    /// Bytes of snapshots received.
    pub snapshot_received_bytes: Counter,
    /// Snapshots taken locally (the log grew past `snapshot_log_bytes`).
    pub snapshots_taken: Counter,
    /// Replicas of this shard that saw a new leader (a new term's leader, the first included).
    pub leader_changes: Counter,
    /// Replicas of this shard that started an election (became candidate in a new term).
    pub elections: Counter,
    /// Replicas of this shard that started a pre-vote round.
    pub prevotes: Counter,
    /// Encoded frames for peers dropped because a peer's queue was full.
    pub peer_frames_dropped: Counter,
    /// Peer messages dropped because the shard's inbox was full.
    pub peer_messages_dropped: Counter,
    /// Event-loop turns.
    pub loop_turns: Counter,
    /// When the loop last turned: milliseconds since [`NodeMetrics::start`], plus one (0:
    /// never).
    last_turn_ms: AtomicU64,
    /// When the WAL sync in flight started: nanoseconds since [`NodeMetrics::start`], plus
    /// one (0: none in flight). A shard runs one sync at a time, so this is its oldest
    /// unfinished one; a hung fdatasync shows here while the loop keeps turning.
    wal_sync_started_ns: AtomicU64,
    /// The shard's loop runs (set once it serves; cleared when its thread ends).
    running: AtomicBool,
    /// The shard's loop ended (a fatal error, a panic, or the node stopping).
    stopped: AtomicBool,
    /// The shard thread's kernel thread id (for its CPU time; 0: not started).
    tid: AtomicU64,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            requests: std::array::from_fn(|_| Counter::default()),
            request_duration: std::array::from_fn(|_| Histogram::new(DURATION_BOUNDS_NS, 1e9)),
            client_connections: Gauge::default(),
            client_connections_accepted: Counter::default(),
            client_connections_refused: Counter::default(),
            proposals: Counter::default(),
            proposal_batch: Histogram::new(BATCH_BOUNDS, 1.0),
            wal_syncs: Counter::default(),
            wal_bytes: Counter::default(),
            wal_write: Histogram::new(DURATION_BOUNDS_NS, 1e9),
            wal_fdatasync: Histogram::new(DURATION_BOUNDS_NS, 1e9),
            slowest_fsync: RecentMax::default(),
            snapshots_sent: Counter::default(),
            snapshot_sent_bytes: Counter::default(),
            snapshots_received: Counter::default(),
            snapshot_received_bytes: Counter::default(),
            snapshots_taken: Counter::default(),
            leader_changes: Counter::default(),
            elections: Counter::default(),
            prevotes: Counter::default(),
            peer_frames_dropped: Counter::default(),
            peer_messages_dropped: Counter::default(),
            loop_turns: Counter::default(),
            last_turn_ms: AtomicU64::new(0),
            wal_sync_started_ns: AtomicU64::new(0),
            running: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            tid: AtomicU64::new(0),
        }
    }
}

/// The largest value observed in the current and the previous window of
/// [`RecentMax::WINDOW_MS`]: "the slowest lately", covering the last 60 to 120 s. Written by
/// one thread (the shard's), read by any.
#[derive(Debug, Default)]
pub struct RecentMax {
    /// The current window's number (milliseconds / `WINDOW_MS`).
    window: AtomicU64,
    cur: AtomicU64,
    prev: AtomicU64,
}

impl RecentMax {
    /// Window length.
    pub const WINDOW_MS: u64 = 60_000;

    fn roll(&self, now_ms: u64) {
        let w = now_ms / Self::WINDOW_MS;
        let old = self.window.load(Ordering::Relaxed);
        if w != old {
            let prev = if w == old + 1 {
                self.cur.load(Ordering::Relaxed)
            } else {
                0
            };
            self.prev.store(prev, Ordering::Relaxed);
            self.cur.store(0, Ordering::Relaxed);
            self.window.store(w, Ordering::Relaxed);
        }
    }

    /// Records `v` at `now_ms` (milliseconds on any steady clock).
    pub fn observe(&self, now_ms: u64, v: u64) {
        self.roll(now_ms);
        self.cur.fetch_max(v, Ordering::Relaxed);
    }

    /// The largest value recorded in the current and the previous window as of `now_ms`.
    pub fn get(&self, now_ms: u64) -> u64 {
        let w = now_ms / Self::WINDOW_MS;
        let at = self.window.load(Ordering::Relaxed);
        if w == at {
            self.cur
                .load(Ordering::Relaxed)
                .max(self.prev.load(Ordering::Relaxed))
        } else if w == at + 1 {
            self.cur.load(Ordering::Relaxed)
        } else {
            0
        }
    }
}

impl ShardMetrics {
    /// `Busy` answers so far, every kind of request together.
    pub fn busy_total(&self) -> u64 {
        let busy = result_index(Err(&WireError::Busy));
        (0..OpKind::ALL.len())
            .map(|k| self.requests[k * RESULTS.len() + busy].get())
            .sum()
    }

    /// Counts one answer to a request of `kind`.
    #[inline]
    pub fn answered(&self, kind: OpKind, outcome: Result<(), &WireError>) {
        self.requests[kind as usize * RESULTS.len() + result_index(outcome)].inc();
    }

    /// The latency histogram of `kind`'s answers (see the field).
    #[inline]
    pub fn request_duration(&self, kind: OpKind) -> &Histogram {
        &self.request_duration[kind as usize]
    }

    /// Answers of `kind` with result `RESULTS[result]`.
    pub fn requests(&self, kind: OpKind, result: usize) -> u64 {
        self.requests[kind as usize * RESULTS.len() + result].get()
    }

    /// The shard thread starts: remember its kernel thread id.
    pub fn thread_started(&self) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        self.tid.store(tid as u64, Ordering::Relaxed);
    }

    /// The shard's kernel thread id (0: not started).
    pub fn tid(&self) -> u64 {
        self.tid.load(Ordering::Relaxed)
    }

    /// The shard serves (its loop is about to turn).
    pub fn serving(&self) {
        self.running.store(true, Ordering::Release);
    }

    /// The shard's loop ended.
    pub fn loop_ended(&self) {
        self.running.store(false, Ordering::Release);
        self.stopped.store(true, Ordering::Release);
    }

    /// One loop turn at `now` (the driver's clock).
    #[inline]
    pub fn turned(&self, start: Instant, now: Instant) {
        self.loop_turns.inc();
        let ms = now.saturating_duration_since(start).as_millis() as u64 + 1;
        self.last_turn_ms.store(ms, Ordering::Relaxed);
    }

    /// A WAL sync (write and fdatasync) starts at `now`.
    #[inline]
    pub fn wal_sync_started(&self, start: Instant, now: Instant) {
        let ns = now.saturating_duration_since(start).as_nanos() as u64 + 1;
        self.wal_sync_started_ns.store(ns, Ordering::Relaxed);
    }

    /// The WAL sync in flight ended (durable or failed).
    #[inline]
    pub fn wal_sync_finished(&self) {
        self.wal_sync_started_ns.store(0, Ordering::Relaxed);
    }

    /// How long the WAL sync in flight has been running at `now` (None: none is).
    pub fn wal_sync_age(&self, start: Instant, now: Instant) -> Option<Duration> {
        let started = self.wal_sync_started_ns.load(Ordering::Relaxed);
        let now_ns = now.saturating_duration_since(start).as_nanos() as u64 + 1;
        (started != 0).then(|| Duration::from_nanos(now_ns.saturating_sub(started)))
    }

    /// The loop's state as the health check sees it.
    pub fn loop_state(&self, start: Instant, now: Instant) -> LoopState {
        if self.stopped.load(Ordering::Acquire) {
            return LoopState::Stopped;
        }
        let last = self.last_turn_ms.load(Ordering::Relaxed);
        if !self.running.load(Ordering::Acquire) || last == 0 {
            return LoopState::Starting;
        }
        let now_ms = now.saturating_duration_since(start).as_millis() as u64 + 1;
        LoopState::Turning {
            since: Duration::from_millis(now_ms.saturating_sub(last)),
        }
    }
}

/// A shard loop's state, for `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopState {
    /// Recovering, not serving yet.
    Starting,
    /// Serving; the last turn was `since` ago.
    Turning {
        /// Time since the last turn.
        since: Duration,
    },
    /// The loop ended.
    Stopped,
}

/// The metrics of every shard of a node.
#[derive(Debug)]
pub struct NodeMetrics {
    /// The instant the loop heartbeats count from.
    pub start: Instant,
    /// Unix time of `start`, seconds (for `process_start_time_seconds`).
    pub start_unix: f64,
    shards: Box<[ShardMetrics]>,
}

impl NodeMetrics {
    /// Metrics for `shards` shards.
    pub fn new(shards: usize) -> Self {
        NodeMetrics {
            start: Instant::now(),
            start_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            shards: (0..shards).map(|_| ShardMetrics::default()).collect(),
        }
    }

    /// Shard `i`'s metrics.
    pub fn shard(&self, i: usize) -> &ShardMetrics {
        &self.shards[i]
    }

    /// Every shard's, in order.
    pub fn shards(&self) -> &[ShardMetrics] {
        &self.shards
    }
}

// Shards' metrics never share a cache line (struct docs).
const _: () = assert!(std::mem::align_of::<ShardMetrics>() == 128);
const _: () = assert!(std::mem::size_of::<ShardMetrics>() % 128 == 0);
const _: () = assert!(DURATION_BOUNDS_NS.len() <= BOUNDS_MAX && BATCH_BOUNDS.len() <= BOUNDS_MAX);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_max_covers_the_current_and_the_previous_window() {
        let w = RecentMax::WINDOW_MS;
        let m = RecentMax::default();
        assert_eq!(m.get(5), 0);
        m.observe(10, 700);
        m.observe(20, 300);
        assert_eq!(m.get(30), 700);
        m.observe(w + 5, 200);
        assert_eq!(m.get(w + 6), 700, "the previous window still counts");
        assert_eq!(m.get(2 * w + 1), 200, "only the newer window is left");
        assert_eq!(m.get(3 * w + 1), 0, "both windows are old");
        m.observe(5 * w, 50);
        assert_eq!(
            m.get(5 * w + 1),
            50,
            "a gap of windows forgets the old ones"
        );
    }

    #[test]
    fn histogram_buckets_sum_and_quantile() {
        let h = Histogram::new(DURATION_BOUNDS_NS, 1e9);
        assert_eq!(h.quantile_bound(0.99), None);
        for _ in 0..98 {
            h.observe_duration(Duration::from_micros(80));
        }
        h.observe_duration(Duration::from_millis(30));
        h.observe_duration(Duration::from_secs(9));
        let s = h.snapshot();
        assert_eq!(s.count, 100);
        assert_eq!(s.buckets.len(), DURATION_BOUNDS_NS.len() + 1);
        assert_eq!(s.buckets[2], (100e-6, 98), "80 us falls in le=100us");
        assert_eq!(*s.buckets.last().unwrap(), (f64::INFINITY, 1));
        assert!((s.sum - (98.0 * 80e-6 + 0.03 + 9.0)).abs() < 1e-9);
        assert_eq!(h.quantile_bound(0.5), Some(100e-6));
        assert_eq!(h.quantile_bound(0.99), Some(0.05));
        assert_eq!(h.quantile_bound(1.0), Some(f64::INFINITY));
    }

    #[test]
    fn answers_are_counted_by_kind_and_result() {
        let m = ShardMetrics::default();
        m.answered(OpKind::Put, Ok(()));
        m.answered(OpKind::Put, Ok(()));
        m.answered(OpKind::Put, Err(&WireError::Busy));
        m.answered(OpKind::Get, Err(&WireError::Timeout));
        assert_eq!(m.requests(OpKind::Put, 0), 2);
        assert_eq!(m.requests(OpKind::Put, 8), 1);
        assert_eq!(RESULTS[8], "busy");
        assert_eq!(m.requests(OpKind::Get, 5), 1);
        assert_eq!(RESULTS[5], "timeout");
        assert_eq!(m.requests(OpKind::Delete, 0), 0);
    }

    #[test]
    fn loop_state_goes_starting_turning_stopped() {
        let m = ShardMetrics::default();
        let start = Instant::now();
        assert_eq!(m.loop_state(start, start), LoopState::Starting);
        m.serving();
        m.turned(start, start);
        let later = start + Duration::from_secs(3);
        assert_eq!(
            m.loop_state(start, later),
            LoopState::Turning {
                since: Duration::from_secs(3)
            }
        );
        m.loop_ended();
        assert_eq!(m.loop_state(start, later), LoopState::Stopped);
    }
}
