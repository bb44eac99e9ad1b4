//! Driving load: closed loop, open loop, warm-up, the progress line and the accounting.
//!
//! Timeline of a run: connect -> preload (optional, not measured) -> warm-up (measured for the
//! progress line only) -> measurement window of `duration` -> drain (operations started in the
//! window are waited for and counted; nothing new starts).
//!
//! Which operations count: those whose *start* lies in the measurement window. In closed loop the
//! start is when the worker sent the request. In open loop it is the request's *intended* send
//! time on the fixed schedule `t_i = t_0 + i / rate`, and latency is measured from there too: if
//! the server stalls, requests that should have been sent during the stall are late, and the
//! lateness is in their latency (no coordinated omission, see Gil Tene, "How NOT to Measure
//! Latency"). The open loop never skips a scheduled request; the number of requests is exactly
//! the schedule's, `ceil(duration * rate)` in the window.
//!
//! Throughput is the number of successful counted operations divided by the time from the start
//! of the window to the later of its end and the last counted completion (so a server that falls
//! behind an open-loop rate shows a lower throughput, not the offered rate).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use crate::cpu::{CpuError, CpuSample};
use crate::keys::{Distribution, KeyError, KeySpace, Rng, ValuePool};
use crate::target::{Connection, Consistency, OpError, Target, TargetError};
use crate::workload::{execute, Op, OpKind, Outcome, Workload};

/// Significant figures of every latency histogram (0.1% resolution).
pub const HISTOGRAM_SIGFIG: u8 = 3;

/// Number of independently locked recording shards (workers map onto them by index).
const SHARDS: usize = 16;

/// Everything that defines a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunConfig {
    /// Name used in reports (`write`, `etcd-put`, ...).
    pub name: String,
    /// Operation mix.
    pub workload: Workload,
    /// Key distribution.
    pub distribution: Distribution,
    /// Zipfian exponent (used with `distribution = zipfian`).
    pub zipf_theta: f64,
    /// Key-space size.
    pub keys: u64,
    /// Key length in bytes.
    pub key_bytes: usize,
    /// Value length in bytes.
    pub value_bytes: usize,
    /// Keys per range scan.
    pub scan_len: u64,
    /// Write every key of the space before the run.
    pub preload: bool,
    /// Read consistency.
    pub consistency: Consistency,
    /// Connections opened to the target.
    pub connections: usize,
    /// Closed loop: requests in flight in total (each connection carries
    /// `concurrency / connections` of them: the pipelining depth). Open loop: the most requests
    /// in flight at once; a scheduled request that finds the limit reached waits, and the wait
    /// is part of its latency.
    pub concurrency: usize,
    /// Open loop at this many requests per second; `None` for closed loop.
    pub rate: Option<f64>,
    /// Measurement window.
    #[serde(serialize_with = "ser_secs")]
    pub duration: Duration,
    /// Warm-up before the window (not in the results).
    #[serde(serialize_with = "ser_secs")]
    pub warmup: Duration,
    /// Per-operation timeout (from the actual send); a timed-out operation counts as an error.
    #[serde(serialize_with = "ser_secs")]
    pub op_timeout: Duration,
    /// Seed of every random choice.
    pub seed: u64,
    /// Local server processes whose CPU time is measured.
    pub server_pids: Vec<u32>,
    /// Print a progress line to stderr every second.
    pub progress: bool,
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            name: "run".into(),
            workload: Workload::YcsbA,
            distribution: Distribution::Uniform,
            zipf_theta: 0.99,
            keys: 100_000,
            key_bytes: 16,
            value_bytes: 128,
            scan_len: 10,
            preload: true,
            consistency: Consistency::Linearizable,
            connections: 16,
            concurrency: 256,
            rate: None,
            duration: Duration::from_secs(30),
            warmup: Duration::from_secs(5),
            op_timeout: Duration::from_secs(10),
            seed: 1,
            server_pids: Vec::new(),
            progress: true,
        }
    }
}

/// Why a run could not be carried out (failed operations are not this: they are counted).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad key-space settings.
    #[error("key space: {0}")]
    Keys(#[from] KeyError),
    /// Connecting or starting the target failed.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// Settings that make no sense together.
    #[error("configuration: {0}")]
    Config(String),
    /// The preload could not write every key.
    #[error("preload failed: {0}")]
    Preload(String),
    /// Reading server CPU time failed.
    #[error("server CPU time: {0}")]
    Cpu(#[from] CpuError),
}

/// One second of the run, as shown on the progress line.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Second {
    /// Seconds since the end of connect/preload (the start of warm-up).
    pub t_s: f64,
    /// Length of this interval in seconds (1 except for the last, partial one).
    pub len_s: f64,
    /// Successful operations completed in the interval, per second.
    pub ops_per_s: f64,
    /// Median latency of those operations, microseconds.
    pub p50_us: u64,
    /// 99th percentile, microseconds.
    pub p99_us: u64,
    /// Failed operations completed in the interval.
    pub errors: u64,
    /// Whether the interval is (partly) warm-up.
    pub warmup: bool,
}

/// Latencies of the measured operations of one kind that completed in one progress interval:
/// the lines of the HdrHistogram interval log.
#[derive(Debug, Clone)]
pub struct Interval {
    /// Start, relative to the start of warm-up.
    pub start: Duration,
    /// Length.
    pub length: Duration,
    /// Operation kind.
    pub kind: OpKind,
    /// Latencies in microseconds.
    pub hist: Histogram<u64>,
}

/// Server CPU time over the measurement window.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CpuUsage {
    /// The processes measured.
    pub pids: Vec<u32>,
    /// Their CPU time, user + system, in microseconds.
    pub cpu_us: u64,
    /// Wall time over which it was measured, in microseconds.
    pub wall_us: u64,
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The target's system name.
    pub system: String,
    /// The configuration it ran with.
    pub config: RunConfig,
    /// Wall-clock time the warm-up started.
    pub started_at: SystemTime,
    /// Latency histograms (microseconds) of the counted successful operations, per kind.
    pub per_kind: BTreeMap<OpKind, Histogram<u64>>,
    /// All kinds merged.
    pub all: Histogram<u64>,
    /// Successful counted operations.
    pub ops: u64,
    /// Counted failures by error kind ([`OpError::kind`]).
    pub errors: BTreeMap<String, u64>,
    /// Successful reads that found no value.
    pub not_found: u64,
    /// Compare-and-sets that lost to a concurrent write (YCSB F).
    pub cas_conflicts: u64,
    /// Operations scheduled in the window (open loop only): must equal ops + errors.
    pub scheduled: Option<u64>,
    /// Length of the measurement, see the module documentation.
    pub measured: Duration,
    /// Per-second progress, warm-up included.
    pub timeline: Vec<Second>,
    /// Per-interval histograms of measured operations.
    pub intervals: Vec<Interval>,
    /// Server CPU time, when server pids were given.
    pub cpu: Option<CpuUsage>,
    /// loadgen's own CPU time over the same window, microseconds (it shares the machine with
    /// local servers, so this is what the servers could not use).
    pub loadgen_cpu_us: Option<u64>,
}

impl RunResult {
    /// Successful operations per second over the measurement.
    pub fn ops_per_s(&self) -> f64 {
        let s = self.measured.as_secs_f64();
        if s > 0.0 {
            self.ops as f64 / s
        } else {
            0.0
        }
    }

    /// Total counted failures.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Server CPU microseconds per successful operation.
    pub fn cpu_us_per_op(&self) -> Option<f64> {
        let cpu = self.cpu.as_ref()?;
        (self.ops > 0).then(|| cpu.cpu_us as f64 / self.ops as f64)
    }
}

/// A fresh latency histogram: auto-resizing, 1 us resolution floor, [`HISTOGRAM_SIGFIG`] digits.
pub fn new_histogram() -> Histogram<u64> {
    // Cannot fail: sigfig 3 is within 0..=5.
    Histogram::new(HISTOGRAM_SIGFIG).expect("valid histogram sigfig")
}

/// Records a latency; the histogram grows to fit it (auto-resize). Only a value beyond what
/// any histogram can hold would fail, and is then clamped to the largest trackable value.
fn record_us(h: &mut Histogram<u64>, us: u64) {
    if h.record(us).is_err() {
        h.saturating_record(us);
    }
}

#[derive(Debug)]
struct Shard {
    progress: Histogram<u64>,
    progress_errors: u64,
    interval: BTreeMap<OpKind, Histogram<u64>>,
    total: BTreeMap<OpKind, Histogram<u64>>,
    errors: BTreeMap<&'static str, u64>,
    not_found: u64,
    cas_conflicts: u64,
}

impl Shard {
    fn new() -> Self {
        Shard {
            progress: new_histogram(),
            progress_errors: 0,
            interval: BTreeMap::new(),
            total: BTreeMap::new(),
            errors: BTreeMap::new(),
            not_found: 0,
            cas_conflicts: 0,
        }
    }
}

/// Where every completed operation is recorded. Workers lock only their own shard, so the
/// locks are uncontended except for the once-a-second progress sweep.
struct Recorder {
    shards: Vec<Mutex<Shard>>,
    origin: Instant,
    window_start: Instant,
    window_end: Instant,
    /// Latest completion of a counted operation, in nanoseconds since `origin`.
    last_counted_ns: AtomicU64,
}

impl Recorder {
    fn new(origin: Instant, warmup: Duration, duration: Duration) -> Self {
        Recorder {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            origin,
            window_start: origin + warmup,
            window_end: origin + warmup + duration,
            last_counted_ns: AtomicU64::new(0),
        }
    }

    fn shard(&self, i: usize) -> std::sync::MutexGuard<'_, Shard> {
        // Recording never panics while holding the lock; recover the data if it ever did.
        self.shards[i % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn in_window(&self, start: Instant) -> bool {
        start >= self.window_start && start < self.window_end
    }

    fn record(
        &self,
        shard: usize,
        kind: OpKind,
        start: Instant,
        end: Instant,
        r: &Result<Outcome, OpError>,
    ) {
        let counted = self.in_window(start);
        let us = end.saturating_duration_since(start).as_micros().max(1) as u64;
        if counted {
            let ns = end.saturating_duration_since(self.origin).as_nanos() as u64;
            self.last_counted_ns.fetch_max(ns, Ordering::Relaxed);
        }
        let mut s = self.shard(shard);
        match r {
            Ok(outcome) => {
                record_us(&mut s.progress, us);
                if counted {
                    record_us(s.interval.entry(kind).or_insert_with(new_histogram), us);
                    record_us(s.total.entry(kind).or_insert_with(new_histogram), us);
                    s.not_found += outcome.not_found as u64;
                    s.cas_conflicts += outcome.cas_conflict as u64;
                }
            }
            Err(e) => {
                s.progress_errors += 1;
                if counted {
                    *s.errors.entry(e.kind()).or_insert(0) += 1;
                }
            }
        }
    }

    /// Takes the progress and interval histograms of every shard, resetting them.
    fn sweep(&self) -> (Histogram<u64>, u64, BTreeMap<OpKind, Histogram<u64>>) {
        let mut progress = new_histogram();
        let mut errors = 0;
        let mut intervals: BTreeMap<OpKind, Histogram<u64>> = BTreeMap::new();
        for i in 0..SHARDS {
            let mut s = self.shard(i);
            // Adding auto-resizing histograms cannot fail.
            let _ = progress.add(&s.progress);
            s.progress.reset();
            errors += std::mem::take(&mut s.progress_errors);
            for (kind, h) in std::mem::take(&mut s.interval) {
                let _ = intervals.entry(kind).or_insert_with(new_histogram).add(&h);
            }
        }
        (progress, errors, intervals)
    }
}

/// Progress bookkeeping shared by the ticker and the final flush.
struct Progress {
    last_tick: Instant,
    timeline: Vec<Second>,
    intervals: Vec<Interval>,
}

impl Progress {
    fn tick(&mut self, rec: &Recorder, now: Instant, print: bool, label: &str) {
        let (hist, errors, per_kind) = rec.sweep();
        let len = now.saturating_duration_since(self.last_tick);
        let start = self.last_tick.saturating_duration_since(rec.origin);
        let len_s = len.as_secs_f64().max(1e-9);
        let warmup = self.last_tick < rec.window_start;
        let sec = Second {
            t_s: start.as_secs_f64(),
            len_s,
            ops_per_s: hist.len() as f64 / len_s,
            p50_us: hist.value_at_quantile(0.5),
            p99_us: hist.value_at_quantile(0.99),
            errors,
            warmup,
        };
        // The last interval (the drain) can be a few milliseconds long: its rate means nothing.
        if print && len_s >= 0.25 {
            eprintln!(
                "[{label} {:>5.1}s] {:>9.0} ops/s  p50 {:>9}  p99 {:>9}  errors {}{}",
                (start + len).as_secs_f64(),
                sec.ops_per_s,
                fmt_us(sec.p50_us),
                fmt_us(sec.p99_us),
                errors,
                if warmup { "  (warm-up)" } else { "" }
            );
        }
        self.timeline.push(sec);
        for (kind, h) in per_kind {
            if !h.is_empty() {
                self.intervals.push(Interval {
                    start,
                    length: len,
                    kind,
                    hist: h,
                });
            }
        }
        self.last_tick = now;
    }
}

/// Formats microseconds for humans: `850us`, `12.3ms`, `1.20s`.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

/// Carries out one run against `target`.
pub async fn run<T: Target>(target: &T, cfg: &RunConfig) -> Result<RunResult, RunError> {
    if cfg.connections == 0 || cfg.concurrency == 0 {
        return Err(RunError::Config(
            "connections and concurrency must be at least 1".into(),
        ));
    }
    if cfg.concurrency < cfg.connections {
        return Err(RunError::Config(format!(
            "concurrency ({}) must be at least the number of connections ({})",
            cfg.concurrency, cfg.connections
        )));
    }
    if let Some(rate) = cfg.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(RunError::Config(format!(
                "rate must be a positive number, got {rate}"
            )));
        }
    }
    if cfg.duration.is_zero() {
        return Err(RunError::Config("duration must be positive".into()));
    }
    let keys = KeySpace::new(cfg.keys, cfg.key_bytes, cfg.distribution, cfg.zipf_theta)?;
    let values = ValuePool::new(cfg.value_bytes, cfg.seed);

    let mut conns = Vec::with_capacity(cfg.connections);
    for i in 0..cfg.connections {
        conns.push(target.connect(i).await?);
    }
    if cfg.preload {
        preload(&conns, cfg, &keys, &values).await?;
    }

    let origin = Instant::now();
    let started_at = SystemTime::now();
    let rec = Arc::new(Recorder::new(origin, cfg.warmup, cfg.duration));
    let label: Arc<str> = Arc::from(format!("{} {}", target.system(), cfg.name).as_str());

    // CPU sample at the start of the window (a task, so it is taken on time).
    let cpu_start = {
        let pids = cfg.server_pids.clone();
        let at = rec.window_start;
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let me = CpuSample::take(&[std::process::id()]).ok();
            let servers = (!pids.is_empty()).then(|| CpuSample::take(&pids));
            (servers, me, Instant::now())
        })
    };

    // Progress ticker.
    let progress = Arc::new(Mutex::new(Progress {
        last_tick: origin,
        timeline: Vec::new(),
        intervals: Vec::new(),
    }));
    let ticker = {
        let rec = rec.clone();
        let progress = progress.clone();
        let print = cfg.progress;
        let label = label.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval_at(
                (origin + Duration::from_secs(1)).into(),
                Duration::from_secs(1),
            );
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let t = iv.tick().await;
                let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                p.tick(&rec, t.into_std(), print, &label);
            }
        })
    };

    let scheduled = match cfg.rate {
        None => {
            closed_loop(&conns, cfg, &keys, &values, &rec).await;
            None
        }
        Some(rate) => Some(open_loop(&conns, cfg, rate, &keys, &values, &rec).await),
    };

    ticker.abort();
    let end = Instant::now();
    let cpu_end = (!cfg.server_pids.is_empty()).then(|| CpuSample::take(&cfg.server_pids));
    let own_end = CpuSample::take(&[std::process::id()]).ok();
    // The last, partial interval (the drain), then the whole record.
    let (timeline, intervals) = {
        let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
        p.tick(&rec, end, cfg.progress, &label);
        (
            std::mem::take(&mut p.timeline),
            std::mem::take(&mut p.intervals),
        )
    };

    let (cpu_start, own_start, t0) = match cpu_start.await {
        Ok((servers, me, t0)) => (servers, me, t0),
        Err(_) => (None, None, end),
    };
    let loadgen_cpu_us = match (own_start, own_end) {
        (Some(a), Some(b)) => Some(b.since(&a).as_micros() as u64),
        _ => None,
    };
    let cpu = match (cpu_start, cpu_end) {
        (Some(before), Some(after)) => {
            let (before, after) = (before?, after?);
            Some(CpuUsage {
                pids: cfg.server_pids.clone(),
                cpu_us: after.since(&before).as_micros() as u64,
                wall_us: end.saturating_duration_since(t0).as_micros() as u64,
            })
        }
        _ => None,
    };

    // Merge totals.
    let mut per_kind: BTreeMap<OpKind, Histogram<u64>> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut not_found, mut cas_conflicts) = (0, 0);
    for i in 0..SHARDS {
        let s = rec.shard(i);
        for (kind, h) in &s.total {
            let _ = per_kind.entry(*kind).or_insert_with(new_histogram).add(h);
        }
        for (k, v) in &s.errors {
            *errors.entry((*k).to_string()).or_insert(0) += v;
        }
        not_found += s.not_found;
        cas_conflicts += s.cas_conflicts;
    }
    let mut all = new_histogram();
    for h in per_kind.values() {
        let _ = all.add(h);
    }
    let last = origin + Duration::from_nanos(rec.last_counted_ns.load(Ordering::Relaxed));
    let measured = last
        .max(rec.window_end)
        .saturating_duration_since(rec.window_start);
    Ok(RunResult {
        system: target.system().to_string(),
        config: cfg.clone(),
        started_at,
        ops: all.len(),
        per_kind,
        all,
        errors,
        not_found,
        cas_conflicts,
        scheduled,
        measured,
        timeline,
        intervals,
        cpu,
        loadgen_cpu_us,
    })
}

async fn timed<C: Connection>(
    conn: &C,
    op: Op,
    keys: &KeySpace,
    values: &ValuePool,
    rng: &mut Rng,
    cfg_consistency: Consistency,
    op_timeout: Duration,
) -> Result<Outcome, OpError> {
    match tokio::time::timeout(
        op_timeout,
        execute(conn, op, keys, values, rng, cfg_consistency),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(OpError::Timeout),
    }
}

async fn closed_loop<C: Connection>(
    conns: &[C],
    cfg: &RunConfig,
    keys: &KeySpace,
    values: &ValuePool,
    rec: &Arc<Recorder>,
) {
    let mut set = JoinSet::new();
    for w in 0..cfg.concurrency {
        let conn = conns[w % conns.len()].clone();
        let (keys, values, rec) = (keys.clone(), values.clone(), rec.clone());
        let (workload, scan_len, consistency, op_timeout) =
            (cfg.workload, cfg.scan_len, cfg.consistency, cfg.op_timeout);
        let mut rng = Rng::new(
            cfg.seed
                .wrapping_mul(0x100_0000_01b3)
                .wrapping_add(w as u64),
        );
        set.spawn(async move {
            loop {
                let start = Instant::now();
                if start >= rec.window_end {
                    break;
                }
                let op = workload.next_op(&mut rng, &keys, scan_len);
                let r = timed(&conn, op, &keys, &values, &mut rng, consistency, op_timeout).await;
                rec.record(w, op.kind(), start, Instant::now(), &r);
                // A target whose operations complete without waiting (the in-process one) would
                // otherwise never yield, starving the progress ticker and the timers.
                tokio::task::consume_budget().await;
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// Returns the number of requests scheduled inside the measurement window.
async fn open_loop<C: Connection>(
    conns: &[C],
    cfg: &RunConfig,
    rate: f64,
    keys: &KeySpace,
    values: &ValuePool,
    rec: &Arc<Recorder>,
) -> u64 {
    // The schedule is kept by a plain thread: tokio's timers have a 1 ms granularity, which
    // would add up to 1 ms of loadgen lateness to every request; a thread sleeping with
    // `std::thread::sleep` (hrtimers) wakes within tens of microseconds. When a request is due
    // the thread spawns it straight onto the runtime (one wake-up per request, no relay task).
    // Lateness of the thread or of the runtime is still part of the latency, which is measured
    // from the intended time.
    let limit = Arc::new(tokio::sync::Semaphore::new(cfg.concurrency));
    // Wait group: every request task holds a sender; `recv` ends when all are dropped.
    let (wg, mut wg_done) = tokio::sync::mpsc::channel::<()>(1);
    let (result_tx, result_rx) = tokio::sync::oneshot::channel::<u64>();
    let stop = Arc::new(AtomicBool::new(false));
    // If this future is dropped (Ctrl-C), the schedule stops too.
    let _stop_on_drop = StopOnDrop(stop.clone());
    let handle = tokio::runtime::Handle::current();
    let conns = conns.to_vec();
    let (keys, values, rec) = (keys.clone(), values.clone(), rec.clone());
    let (workload, scan_len, consistency, op_timeout, seed) = (
        cfg.workload,
        cfg.scan_len,
        cfg.consistency,
        cfg.op_timeout,
        cfg.seed,
    );
    let clock = std::thread::Builder::new()
        .name("loadgen-schedule".into())
        .spawn(move || {
            let mut rng = Rng::new(seed.wrapping_mul(0x100_0000_01b3));
            let mut scheduled = 0u64;
            let mut i = 0u64;
            loop {
                let intended = rec.origin + Duration::from_secs_f64(i as f64 / rate);
                if intended >= rec.window_end || stop.load(Ordering::Relaxed) {
                    break;
                }
                let now = Instant::now();
                if intended > now {
                    std::thread::sleep(intended - now);
                }
                let op = workload.next_op(&mut rng, &keys, scan_len);
                let conn = conns[(i as usize) % conns.len()].clone();
                let (keys, values, task_rec, limit, wg) = (
                    keys.clone(),
                    values.clone(),
                    rec.clone(),
                    limit.clone(),
                    wg.clone(),
                );
                let mut op_rng = Rng::new(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let shard = i as usize;
                handle.spawn(async move {
                    let _wg = wg;
                    // Waiting for a slot is part of the latency: it is measured from `intended`.
                    let Ok(_permit) = limit.acquire_owned().await else {
                        return;
                    };
                    let r = timed(
                        &conn,
                        op,
                        &keys,
                        &values,
                        &mut op_rng,
                        consistency,
                        op_timeout,
                    )
                    .await;
                    task_rec.record(shard, op.kind(), intended, Instant::now(), &r);
                });
                if rec.in_window(intended) {
                    scheduled += 1;
                }
                i += 1;
            }
            let _ = result_tx.send(scheduled);
        });
    if let Err(e) = clock {
        tracing::error!(error = %e, "cannot start the open-loop schedule thread");
        return 0;
    }
    let scheduled = result_rx.await.unwrap_or(0);
    while wg_done.recv().await.is_some() {}
    scheduled
}

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Writes every key of the space once (in key order, `concurrency` requests in flight). A key
/// that fails is retried up to 3 times; the preload fails if any key cannot be written.
async fn preload<C: Connection>(
    conns: &[C],
    cfg: &RunConfig,
    keys: &KeySpace,
    values: &ValuePool,
) -> Result<(), RunError> {
    const ATTEMPTS_MAX: u32 = 4;
    let started = Instant::now();
    if cfg.progress {
        eprintln!(
            "preload: writing {} keys of {} bytes with {}-byte values",
            cfg.keys, cfg.key_bytes, cfg.value_bytes
        );
    }
    let next = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for w in 0..cfg.concurrency {
        let conn = conns[w % conns.len()].clone();
        let (keys, values, next) = (keys.clone(), values.clone(), next.clone());
        let op_timeout = cfg.op_timeout;
        let mut rng = Rng::new(cfg.seed ^ 0x097e_10ad ^ w as u64);
        set.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= keys.keys() {
                    return Ok(());
                }
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let put = conn.put(keys.key(index), values.value(&mut rng));
                    match tokio::time::timeout(op_timeout, put).await {
                        Ok(Ok(())) => break,
                        Ok(Err(e)) if attempt >= ATTEMPTS_MAX => {
                            return Err(format!("key {index}: {e}"));
                        }
                        Err(_) if attempt >= ATTEMPTS_MAX => {
                            return Err(format!("key {index}: timed out"))
                        }
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(RunError::Preload(e)),
            Err(e) => return Err(RunError::Preload(format!("preload task failed: {e}"))),
        }
    }
    if cfg.progress {
        let s = started.elapsed().as_secs_f64();
        eprintln!(
            "preload: {} keys in {s:.1}s ({:.0} puts/s)",
            cfg.keys,
            cfg.keys as f64 / s
        );
    }
    Ok(())
}
