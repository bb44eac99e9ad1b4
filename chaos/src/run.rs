//! One chaos run, start to verdict:
//!
//! 1. clean up what dead runs left, take the subnet lock, build the namespaces and bridge;
//! 2. start the nodes, wait (polling, with a deadline) until every partition has a leader;
//! 3. run the clients for `--seconds` while the nemesis follows its seeded schedule;
//! 4. heal everything (restart killed nodes, resume paused ones, flush the rules);
//! 5. liveness: every partition gets a leader again within `heal_timeout`;
//! 6. read back: every acknowledged set add (linearizable range, then a get of each key the
//!    range missed), and a final linearizable get of every register, added to the history;
//! 7. convergence: all replicas of each partition reach the same applied index, then hold the
//!    same keys, values and revisions (stale range at each replica);
//! 8. stop the cluster, check linearizability, and write the report.
//!
//! The cluster (processes, then namespaces) is torn down on every path: normal end, error,
//! Ctrl-C, and panic (drop).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use wire::client::{Client, ClientConfig, RangeOptions};
use wire::Consistency;

use crate::check::{self, KeyVerdict, PhantomRead};
use crate::nemesis::{self, Fault, Nemesis, Planned, Timing};
use crate::net::{self, Net, RunLock};
use crate::nodes::{client_endpoint, Layout, Nodes};
use crate::observe::{self, Divergence};
use crate::workload::{self, Kind, OpRecord, Recorder, WorkloadConfig};

/// The error of a run stopped by Ctrl-C / SIGTERM.
pub const INTERRUPTED: &str = "interrupted";

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Nodes (3 or 5).
    pub nodes: u64,
    /// Workload length in seconds.
    pub seconds: u64,
    /// The seed of the schedule and of the clients' choices.
    pub seed: u64,
    /// Enabled nemeses.
    pub nemeses: Vec<Nemesis>,
    /// Partitions of the cluster.
    pub partitions: u64,
    /// Client settings (`seed` is overwritten with the run's).
    pub workload: WorkloadConfig,
    /// The run directory.
    pub out: PathBuf,
    /// The corum binary.
    pub corum: PathBuf,
    /// Step budget of the linearizability search, per key.
    pub lin_budget: u64,
    /// How long the cluster may take to have a leader everywhere (at start and after healing).
    pub heal_timeout: Duration,
    /// Schedule bounds.
    pub timing: Timing,
}

/// A fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    /// The fault.
    pub fault: Fault,
    /// One line.
    pub description: String,
    /// Start, ms since the workload started.
    pub start_ms: u64,
    /// End (healed), ms since the workload started; `None` if the run was cut short.
    pub end_ms: Option<u64>,
    /// Commands that failed while applying or healing it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// ms from the heal until the first acknowledged write invoked after it returned: how long
    /// writes stayed unavailable after the fault ended. `None`: no such write.
    pub recovery_ms: Option<u64>,
}

/// A recovery slower than this is logged: two maximal election timeouts (2 x 2 s at the
/// default tuning) plus a client backoff.
pub const SLOW_RECOVERY_MS: u64 = 4_500;

/// Fills in [`FaultEvent::recovery_ms`] from the history.
pub fn recovery_times(faults: &mut [FaultEvent], history: &[OpRecord]) {
    for f in faults.iter_mut() {
        let Some(end_ms) = f.end_ms else { continue };
        let healed_us = end_ms * 1000;
        f.recovery_ms = history
            .iter()
            .filter(|o| matches!(o.kind, Kind::Put | Kind::Cas | Kind::Add))
            .filter(|o| o.status == workload::Status::Ok && o.start_us >= healed_us)
            .map(|o| (o.end_us - healed_us) / 1000)
            .min();
    }
}

/// The outcome of a run, as written to `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The command's settings, for the reader.
    pub nodes: u64,
    /// See [`RunConfig::seconds`].
    pub seconds: u64,
    /// See [`RunConfig::seed`].
    pub seed: u64,
    /// See [`RunConfig::nemeses`].
    pub nemeses: Vec<Nemesis>,
    /// Operations in the history (final reads included).
    pub ops: usize,
    /// Of which `ok`.
    pub ops_ok: usize,
    /// Of which `info` (unknown outcome).
    pub ops_info: usize,
    /// Of which `fail`.
    pub ops_fail: usize,
    /// Faults injected.
    pub faults: usize,
    /// Per-key linearizability verdicts.
    pub keys: Vec<KeyVerdict>,
    /// Keys whose search ran out of budget.
    pub keys_unknown: usize,
    /// Stale reads of values nobody wrote.
    pub phantom_reads: Vec<PhantomRead>,
    /// Acknowledged set adds.
    pub adds_acked: usize,
    /// Set keys present after healing (acknowledged or not).
    pub adds_present: usize,
    /// Acknowledged adds missing after healing.
    pub lost: Vec<String>,
    /// ms from the end of the workload until every partition had a leader; `None`: never.
    pub heal_ms: Option<u64>,
    /// Why the cluster was not healthy at the deadline.
    pub health_problems: Vec<String>,
    /// ms until every replica had applied the same index; `None`: never.
    pub converge_ms: Option<u64>,
    /// Why replicas had not converged at the deadline.
    pub convergence_problems: Vec<String>,
    /// Keys compared across replicas.
    pub keys_compared: usize,
    /// Partitions whose replicas hold different data.
    pub divergences: Vec<Divergence>,
    /// Node exits the harness did not cause.
    pub crashes: Vec<String>,
    /// Problems of the harness itself (a fault it could not inject, a read-back that failed).
    pub harness_errors: Vec<String>,
    /// Total violations: non-linearizable keys, phantom reads, divergent partitions, crashes,
    /// and a cluster without leaders or convergence after healing.
    pub violations: usize,
    /// True when the run was interrupted (Ctrl-C / SIGTERM).
    pub interrupted: bool,
    /// Clean: no violation, nothing lost, no unknown verdict, no harness error.
    pub clean: bool,
}

/// The processes and the network of a run; dropping it kills the processes, then removes the
/// namespaces (field order).
pub struct Cluster {
    /// The nodes.
    pub nodes: Nodes,
    /// The namespaces and bridge.
    pub net: Net,
    /// Link delays of the peer proxy, when the `delay` nemesis is enabled.
    pub delays: Option<Arc<crate::proxy::Delays>>,
}

impl Cluster {
    /// Applies `fault`; returns the commands that failed.
    fn apply(&mut self, fault: &Fault) -> Vec<String> {
        let mut errors = Vec::new();
        match fault {
            Fault::Kill { nodes } | Fault::KillAll { nodes } => {
                nodes.iter().for_each(|&n| self.nodes.kill(n))
            }
            Fault::Pause { nodes } => nodes.iter().for_each(|&n| self.nodes.pause(n, true)),
            Fault::Partition { side_a, side_b, .. } => {
                for &a in side_a {
                    if let Err(e) = self.net.drop_from(a, side_b) {
                        errors.push(e.0);
                    }
                }
                for &b in side_b {
                    if let Err(e) = self.net.drop_from(b, side_a) {
                        errors.push(e.0);
                    }
                }
            }
            Fault::OneWay { from, to } => {
                if let Err(e) = self.net.drop_from(*to, &[*from]) {
                    errors.push(e.0);
                }
            }
            Fault::Delay { nodes, ms } => match &self.delays {
                Some(d) => d.slow(nodes, *ms),
                None => errors.push("delay fault without the proxy".into()),
            },
            Fault::Blackhole { node } => {
                if let Err(e) = self.net.blackhole(*node) {
                    errors.push(e.0);
                }
            }
            Fault::Loss { percent } => {
                for id in 1..=self.net.namespaces.len() as u64 {
                    if let Err(e) = self.net.lossy(id, *percent) {
                        errors.push(e.0);
                    }
                }
            }
        }
        errors
    }

    /// Undoes every fault: rules flushed, delays cleared, paused nodes resumed, killed nodes
    /// restarted.
    fn heal_all(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some(d) = &self.delays {
            d.clear();
        }
        if let Err(e) = self.net.heal() {
            errors.push(e.0);
        }
        for id in 1..=self.net.namespaces.len() as u64 {
            if self.nodes.nodes[id as usize - 1].paused {
                self.nodes.pause(id, false);
            }
            if self.nodes.nodes[id as usize - 1].killed && !self.nodes.running(id) {
                if let Err(e) = self.nodes.start(&self.net, id) {
                    errors.push(format!("restart node {id}: {e}"));
                }
            }
        }
        errors
    }
}

fn lock(c: &Mutex<Cluster>) -> std::sync::MutexGuard<'_, Cluster> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// Polls `probe` every 200 ms until it returns no problems or `deadline` passes; returns the
/// time it took, or the last problems.
async fn poll_until<F, Fut>(deadline: Instant, mut probe: F) -> Result<Duration, Vec<String>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let start = Instant::now();
    loop {
        let problems = probe().await;
        if problems.is_empty() {
            return Ok(start.elapsed());
        }
        if Instant::now() >= deadline {
            return Err(problems);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn log(msg: impl AsRef<str>) {
    eprintln!("chaos: {}", msg.as_ref());
}

/// Runs the nemesis schedule until it ends or `cancel` fires.
async fn nemesis_loop(
    cluster: Arc<Mutex<Cluster>>,
    plan: Vec<Planned>,
    start: Instant,
    mut cancel: watch::Receiver<bool>,
    events: Arc<Mutex<Vec<FaultEvent>>>,
    sockets_dir: PathBuf,
) {
    let _ = std::fs::create_dir_all(&sockets_dir);
    for p in plan {
        tokio::select! {
            _ = tokio::time::sleep_until(start + Duration::from_millis(p.at_ms)) => {}
            _ = cancel.changed() => return,
        }
        let errors = lock(&cluster).apply(&p.fault);
        let start_ms = start.elapsed().as_millis() as u64;
        log(format!(
            "{:>6.1}s fault: {}",
            start_ms as f64 / 1000.0,
            p.fault.describe()
        ));
        let index = {
            let mut ev = events.lock().unwrap_or_else(|e| e.into_inner());
            ev.push(FaultEvent {
                description: p.fault.describe(),
                fault: p.fault.clone(),
                start_ms,
                end_ms: None,
                errors,
                recovery_ms: None,
            });
            ev.len() - 1
        };
        let cancelled = tokio::select! {
            _ = tokio::time::sleep_until(start + Duration::from_millis(p.at_ms + p.duration_ms)) => false,
            _ = cancel.changed() => true,
        };
        let (errors, sockets) = {
            let mut c = lock(&cluster);
            let errors = c.heal_all();
            let sockets: Vec<String> = (1..=c.net.namespaces.len() as u64)
                .map(|id| format!("== node {id}\n{}", c.net.sockets(id)))
                .collect();
            (errors, sockets)
        };
        let end_ms = start.elapsed().as_millis() as u64;
        log(format!("{:>6.1}s healed", end_ms as f64 / 1000.0));
        // The TCP state right after the heal: a peer connection in retransmission backoff
        // recovers only when its timer fires, which the per-fault recovery time then shows.
        let _ = std::fs::write(
            sockets_dir.join(format!("fault-{index:03}-after-heal.txt")),
            sockets.join("\n"),
        );
        let mut ev = events.lock().unwrap_or_else(|e| e.into_inner());
        ev[index].end_ms = Some(end_ms);
        ev[index].errors.extend(errors);
        if cancelled {
            return;
        }
    }
}

/// Watches for node exits the harness did not cause.
async fn crash_watch(
    cluster: Arc<Mutex<Cluster>>,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        for (_, what) in lock(&cluster)
            .nodes
            .reap_crashes(start.elapsed().as_millis() as u64)
        {
            log(format!("CRASH: {what}"));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Everything a run produced, for the report.
pub struct RunOutput {
    /// The verdict and counts.
    pub summary: Summary,
    /// The history.
    pub history: Vec<OpRecord>,
    /// The faults as they happened.
    pub faults: Vec<FaultEvent>,
    /// The schedule as planned.
    pub plan: Vec<Planned>,
    /// Workload length actually run, ms.
    pub workload_ms: u64,
}

/// Runs the whole thing. `cancel` turns true on Ctrl-C / SIGTERM.
pub async fn run(cfg: RunConfig, cancel: watch::Receiver<bool>) -> Result<RunOutput, String> {
    net::preflight().map_err(|e| e.0)?;
    let _lock = RunLock::take().map_err(|e| e.0)?;
    for what in net::cleanup_leftovers() {
        log(format!("removed leftover {what}"));
    }
    std::fs::create_dir_all(&cfg.out).map_err(|e| format!("{}: {e}", cfg.out.display()))?;
    let layout = Layout {
        nodes: cfg.nodes,
        partitions: cfg.partitions,
        replicas: 3.min(cfg.nodes),
    };
    let proxied = cfg.nemeses.contains(&Nemesis::Delay);
    let net = Net::create(cfg.nodes, proxied).map_err(|e| e.0)?;
    let delays = proxied.then(|| crate::proxy::Delays::new(cfg.nodes));
    let cluster = Arc::new(Mutex::new(Cluster {
        nodes: Nodes::new(&cfg.corum, &cfg.out, layout),
        net,
        delays: delays.clone(),
    }));
    // Whatever happens below, the cluster goes away with this guard.
    struct Teardown(Arc<Mutex<Cluster>>);
    impl Drop for Teardown {
        fn drop(&mut self) {
            let mut c = lock(&self.0);
            c.nodes.kill_all();
            c.net.teardown();
        }
    }
    let _teardown = Teardown(cluster.clone());
    if let Some(d) = delays {
        crate::proxy::start(cfg.nodes, d)
            .await
            .map_err(|e| format!("peer proxy: {e}"))?;
    }
    {
        let mut c = lock(&cluster);
        let Cluster { nodes, net, .. } = &mut *c;
        nodes
            .start_all(net)
            .map_err(|e| format!("start nodes: {e}"))?;
    }
    let endpoints: Vec<(u64, String)> = (1..=cfg.nodes).map(|i| (i, client_endpoint(i))).collect();
    let seeds: Vec<String> = endpoints.iter().map(|e| e.1.clone()).collect();
    log(format!(
        "{} nodes in namespaces {}..., endpoints {}",
        cfg.nodes,
        lock(&cluster).net.ns(1),
        seeds.join(",")
    ));

    // Ready: every node answers and every partition has a leader.
    let mut admin_cfg = ClientConfig::new(seeds.clone());
    admin_cfg.request_timeout = Duration::from_secs(2);
    let ready_deadline = Instant::now() + cfg.heal_timeout;
    let admin = loop {
        match Client::connect(admin_cfg.clone()).await {
            Ok(c) => break c,
            Err(e) if Instant::now() >= ready_deadline => {
                return Err(format!("cluster did not answer: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let ready = poll_until(ready_deadline, || async {
        observe::health_problems(&observe::statuses(&admin, &endpoints).await)
    })
    .await
    .map_err(|p| format!("cluster not ready: {}", p.join("; ")))?;
    log(format!("cluster ready after {} ms", ready.as_millis()));

    // Workload and nemesis.
    let mut wcfg = cfg.workload.clone();
    wcfg.seed = cfg.seed;
    let mut clients = Vec::new();
    for id in 1..=wcfg.clients {
        let mut c = ClientConfig::new(seeds.clone());
        c.request_timeout = wcfg.request_timeout;
        clients.push(
            Client::connect(c)
                .await
                .map_err(|e| format!("client {id}: {e}"))?,
        );
    }
    let run_ms = cfg.seconds * 1000;
    let plan = nemesis::schedule(cfg.seed, cfg.nodes, run_ms, &cfg.nemeses, cfg.timing);
    let start = Instant::now();
    let stop_at = start + Duration::from_millis(run_ms);
    let rec = Arc::new(Recorder::new(start));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let events = Arc::new(Mutex::new(Vec::new()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let crash_task = tokio::spawn(crash_watch(cluster.clone(), start, stop_rx.clone()));
    let nemesis_task = tokio::spawn(nemesis_loop(
        cluster.clone(),
        plan.clone(),
        start,
        cancel.clone(),
        events.clone(),
        cfg.out.join("sockets"),
    ));
    let mut tasks = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let mut cancel = cancel.clone();
        let fut = workload::client_loop(
            i as u64 + 1,
            client,
            rec.clone(),
            wcfg.clone(),
            stop_at,
            acked.clone(),
        );
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                _ = fut => {}
                _ = cancel.changed() => {}
            }
        }));
    }
    log(format!(
        "workload: {} clients for {} s, {} faults planned",
        wcfg.clients,
        cfg.seconds,
        plan.len()
    ));
    for t in tasks {
        t.await.map_err(|e| format!("client task: {e}"))?;
    }
    let workload_ms = start.elapsed().as_millis() as u64;
    nemesis_task
        .await
        .map_err(|e| format!("nemesis task: {e}"))?;
    let interrupted = *cancel.borrow();
    if interrupted {
        // The teardown guard stops the nodes and removes the namespaces.
        return Err(INTERRUPTED.to_string());
    }
    let mut harness_errors: Vec<String> = lock(&cluster).heal_all();
    log(format!(
        "workload done: {} ops; healing",
        rec.snapshot().len()
    ));

    // Liveness after healing.
    let heal_deadline = Instant::now() + cfg.heal_timeout;
    let (heal_ms, health_problems) = match poll_until(heal_deadline, || async {
        observe::health_problems(&observe::statuses(&admin, &endpoints).await)
    })
    .await
    {
        Ok(d) => (Some(d.as_millis() as u64), Vec::new()),
        Err(p) => (None, p),
    };
    log(match heal_ms {
        Some(ms) => format!("every partition has a leader {ms} ms after healing"),
        None => format!("NOT HEALTHY after healing: {}", health_problems.join("; ")),
    });

    // Read back the set and the registers.
    let mut reader_cfg = ClientConfig::new(seeds.clone());
    reader_cfg.request_timeout = Duration::from_secs(10);
    let reader = Client::connect(reader_cfg)
        .await
        .map_err(|e| format!("reader: {e}"))?;
    let acked: Vec<String> = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut present: HashSet<String> = HashSet::new();
    let mut after = Bytes::new();
    loop {
        let page = reader
            .range(RangeOptions {
                start: Bytes::from_static(workload::SET_PREFIX.as_bytes()),
                end: Bytes::from_static(workload::SET_END.as_bytes()),
                limit: 1000,
                keys_only: true,
                consistency: Consistency::Linearizable,
                after: after.clone(),
            })
            .await;
        match page {
            Ok(page) => {
                present.extend(
                    page.kvs
                        .iter()
                        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned()),
                );
                match page.next {
                    Some(n) => after = n,
                    None => break,
                }
            }
            Err(e) => {
                harness_errors.push(format!("set read-back range: {e}"));
                break;
            }
        }
    }
    // A key the range missed is read once more on its own before it counts as lost.
    for key in check::lost_adds(&acked, &present) {
        match reader.get(Bytes::from(key.clone())).await {
            Ok(Some(_)) => {
                present.insert(key);
            }
            Ok(None) => {}
            Err(e) => harness_errors.push(format!("read-back of {key}: {e}")),
        }
    }
    let lost = check::lost_adds(&acked, &present);
    for k in 0..wcfg.keys {
        workload::get(
            &rec,
            &reader,
            0,
            &workload::register_key(k),
            Kind::GetLinearizable,
            false,
        )
        .await;
    }

    // Convergence.
    let converge_deadline = Instant::now() + Duration::from_secs(30);
    let (converge_ms, convergence_problems) = match poll_until(converge_deadline, || async {
        observe::convergence_problems(&observe::statuses(&admin, &endpoints).await)
    })
    .await
    {
        Ok(d) => (Some(d.as_millis() as u64), Vec::new()),
        Err(p) => (None, p),
    };
    let status = observe::statuses(&admin, &endpoints).await;
    let hosted = observe::hosted(&status);
    let (keys_compared, divergences) =
        observe::compare_replicas(&hosted, client_endpoint, Duration::from_secs(5)).await;
    log(format!(
        "convergence: {} ({} keys compared across replicas, {} partitions differ)",
        match converge_ms {
            Some(ms) => format!("replicas at one applied index after {ms} ms"),
            None => format!("NOT CONVERGED: {}", convergence_problems.join("; ")),
        },
        keys_compared,
        divergences.len()
    ));

    // Stop the cluster before the (CPU-heavy) check.
    let _ = stop_tx.send(true);
    let _ = crash_task.await;
    let crashes: Vec<String> = {
        let mut c = lock(&cluster);
        c.nodes.reap_crashes(start.elapsed().as_millis() as u64);
        let crashes = c
            .nodes
            .nodes
            .iter()
            .flat_map(|n| n.crashes.clone())
            .collect();
        c.nodes.kill_all();
        c.net.teardown();
        crashes
    };
    let history = rec.snapshot();
    log(format!("checking {} operations", history.len()));
    let budget = cfg.lin_budget;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let keys = {
        let h = history.clone();
        tokio::task::spawn_blocking(move || check::linearizability(&h, budget, threads))
            .await
            .map_err(|e| format!("checker: {e}"))?
    };
    let phantom_reads = check::phantom_stale_reads(&history);
    let mut faults: Vec<FaultEvent> = events.lock().unwrap_or_else(|p| p.into_inner()).clone();
    recovery_times(&mut faults, &history);
    for f in &faults {
        if f.recovery_ms.is_some_and(|r| r > SLOW_RECOVERY_MS) {
            log(format!(
                "slow recovery: writes failed for {} ms after healing \"{}\" (at {:.1} s)",
                f.recovery_ms.unwrap_or_default(),
                f.description,
                f.end_ms.unwrap_or_default() as f64 / 1000.0
            ));
        }
    }
    for f in &faults {
        harness_errors.extend(f.errors.iter().cloned());
    }
    let not_lin = keys
        .iter()
        .filter(|k| k.verdict == "not linearizable")
        .count();
    let keys_unknown = keys.iter().filter(|k| k.verdict == "unknown").count();
    let violations = not_lin
        + phantom_reads.len()
        + divergences.len()
        + crashes.len()
        + usize::from(heal_ms.is_none())
        + usize::from(converge_ms.is_none());
    let count = |s: workload::Status| history.iter().filter(|o| o.status == s).count();
    let summary = Summary {
        nodes: cfg.nodes,
        seconds: cfg.seconds,
        seed: cfg.seed,
        nemeses: cfg.nemeses.clone(),
        ops: history.len(),
        ops_ok: count(workload::Status::Ok),
        ops_info: count(workload::Status::Info),
        ops_fail: count(workload::Status::Fail),
        faults: faults.len(),
        keys,
        keys_unknown,
        phantom_reads,
        adds_acked: acked.len(),
        adds_present: present.len(),
        clean: violations == 0
            && lost.is_empty()
            && keys_unknown == 0
            && harness_errors.is_empty()
            && !interrupted,
        lost,
        heal_ms,
        health_problems,
        converge_ms,
        convergence_problems,
        keys_compared,
        divergences,
        crashes,
        harness_errors,
        violations,
        interrupted,
    };
    Ok(RunOutput {
        summary,
        history,
        faults,
        plan,
        workload_ms,
    })
}
