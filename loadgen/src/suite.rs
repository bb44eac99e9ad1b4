//! The standard suite of issue 6 and `loadgen compare`.
//!
//! The suite, on both clusters on loopback of the same machine:
//! 1. `write`: put-only, 16-byte uniform keys over 1M keys, 128-byte values, 256 in flight, 30 s;
//! 2. `read`: linearizable get over 100k preloaded keys, same concurrency;
//! 3. `mixed`: YCSB A (50/50 get/put), zipfian 0.99 over the same 100k keys;
//! 4. `latency`: open-loop put-only at a fixed rate etcd sustains (default 2,000/s).
//!
//! `--quick` runs each case for 3 s after a 1 s warm-up and uses 10k keys for the read and mixed
//! cases, so the preload is short; it is a smoke run, not a measurement.
//!
//! Systems are started once each and the cases alternate between them (corum's case `i`, then
//! etcd's case `i`), so slow drifts of a shared machine hit both alike.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::corum::CorumTarget;
use crate::etcd::EtcdTarget;
use crate::keys::Distribution;
use crate::localcorum::{CorumLaunch, LocalCorum};
use crate::localetcd::LocalEtcd;
use crate::report::{CaseSummary, Ratios};
use crate::runner::{run, RunConfig, RunError, RunResult};
use crate::target::{Consistency, TargetError};
use crate::workload::Workload;

/// A system loadgen can benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// corum, over its native protocol.
    Corum,
    /// etcd, over the v3 gRPC API.
    Etcd,
}

/// A local cluster loadgen started, with the target that reaches it. Stopped when dropped.
#[derive(Debug)]
pub enum LocalSystem {
    /// A 3-member etcd cluster.
    Etcd {
        /// The running members.
        cluster: LocalEtcd,
        /// The target over their endpoints.
        target: EtcdTarget,
    },
    /// A 3-node corum cluster run by `corum local`.
    Corum {
        /// The running cluster.
        cluster: LocalCorum,
        /// The target over its client endpoints.
        target: CorumTarget,
    },
}

/// How to start local clusters.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Where the clusters keep their data (a temporary directory is made inside).
    pub data_root: PathBuf,
    /// How to start corum (binary, extra `corum local` arguments).
    pub corum: CorumLaunch,
}

impl LocalOptions {
    /// Data under `data_root`, corum found by [`crate::localcorum::locate_corum`].
    pub fn new(data_root: &Path) -> Self {
        LocalOptions {
            data_root: data_root.to_path_buf(),
            corum: CorumLaunch::default(),
        }
    }
}

impl LocalSystem {
    /// Starts a local cluster of `system`, its data under `data_root` (corum found by
    /// [`crate::localcorum::locate_corum`]).
    pub async fn start(system: System, data_root: &Path) -> Result<Self, TargetError> {
        Self::start_with(system, &LocalOptions::new(data_root)).await
    }

    /// Starts a local cluster of `system` with these options.
    pub async fn start_with(system: System, o: &LocalOptions) -> Result<Self, TargetError> {
        match system {
            System::Corum => {
                let cluster = LocalCorum::start(&o.data_root, &o.corum).await?;
                let target = CorumTarget::new(cluster.endpoints().to_vec())?;
                Ok(LocalSystem::Corum { cluster, target })
            }
            System::Etcd => {
                let cluster = LocalEtcd::start(&o.data_root).await?;
                let target = EtcdTarget::new(cluster.endpoints().to_vec())?;
                Ok(LocalSystem::Etcd { cluster, target })
            }
        }
    }

    /// Server process ids (for CPU accounting).
    pub fn pids(&self) -> Vec<u32> {
        match self {
            LocalSystem::Etcd { cluster, .. } => cluster.pids(),
            LocalSystem::Corum { cluster, .. } => cluster.pids(),
        }
    }

    /// Runs one case against this system, measuring its server CPU time.
    pub async fn run(&self, cfg: &RunConfig) -> Result<RunResult, RunError> {
        let mut cfg = cfg.clone();
        cfg.server_pids = self.pids();
        match self {
            LocalSystem::Etcd { target, .. } => run(target, &cfg).await,
            LocalSystem::Corum { target, .. } => {
                let target = target.clone().with_request_timeout(cfg.op_timeout);
                run(&target, &cfg).await
            }
        }
    }

    /// Stops the cluster and removes its data.
    pub fn stop(self) {
        match self {
            LocalSystem::Etcd { cluster, .. } => cluster.stop(),
            LocalSystem::Corum { cluster, .. } => cluster.stop(),
        }
    }
}

/// Options of the standard suite.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// Run every case for a few seconds only.
    pub quick: bool,
    /// Open-loop rate of the `latency` case, requests per second.
    pub open_rate: f64,
    /// Where the clusters keep their data.
    pub data_root: PathBuf,
    /// Seed.
    pub seed: u64,
    /// Print progress lines.
    pub progress: bool,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        SuiteOptions {
            quick: false,
            open_rate: 2_000.0,
            data_root: std::env::temp_dir(),
            seed: 1,
            progress: true,
        }
    }
}

/// The four cases of the standard suite, in order: write, read, mixed, latency.
pub fn standard_cases(o: &SuiteOptions) -> Vec<RunConfig> {
    let (duration, warmup) = if o.quick {
        (Duration::from_secs(3), Duration::from_secs(1))
    } else {
        (Duration::from_secs(30), Duration::from_secs(5))
    };
    let read_keys = if o.quick { 10_000 } else { 100_000 };
    let base = RunConfig {
        duration,
        warmup,
        seed: o.seed,
        progress: o.progress,
        key_bytes: 16,
        value_bytes: 128,
        concurrency: 256,
        connections: 16,
        consistency: Consistency::Linearizable,
        ..RunConfig::default()
    };
    vec![
        RunConfig {
            name: "write".into(),
            workload: Workload::Put,
            distribution: Distribution::Uniform,
            keys: 1_000_000,
            preload: false,
            ..base.clone()
        },
        RunConfig {
            name: "read".into(),
            workload: Workload::Get,
            distribution: Distribution::Uniform,
            keys: read_keys,
            preload: true,
            ..base.clone()
        },
        RunConfig {
            name: "mixed".into(),
            workload: Workload::YcsbA,
            distribution: Distribution::Zipfian,
            zipf_theta: 0.99,
            keys: read_keys,
            // The read case loaded these keys on the same cluster.
            preload: false,
            ..base.clone()
        },
        RunConfig {
            name: "latency".into(),
            workload: Workload::Put,
            distribution: Distribution::Uniform,
            keys: 1_000_000,
            preload: false,
            rate: Some(o.open_rate),
            // Room for a stall of a second or two at the rate before requests queue.
            concurrency: 4096,
            ..base
        },
    ]
}

/// Starts a local cluster of each system, runs every case on each, alternating (case 1 on every
/// system, then case 2, ...), stops the clusters and returns the runs in that order.
///
/// `compare` passes `[Corum, Etcd]`: corum first, so a corum that cannot start (e.g. fails to
/// build) fails the call at once, before minutes of etcd load.
pub async fn run_cases(
    systems: &[System],
    cases: &[RunConfig],
    local: &LocalOptions,
) -> Result<Vec<RunResult>, RunError> {
    let mut locals = Vec::new();
    for s in systems {
        locals.push(LocalSystem::start_with(*s, local).await?);
    }
    let mut runs = Vec::new();
    for cfg in cases {
        for l in &locals {
            runs.push(l.run(cfg).await?);
        }
    }
    for l in locals {
        l.stop();
    }
    Ok(runs)
}

fn find<'a>(cases: &'a [CaseSummary], system: &str, name: &str) -> Option<&'a CaseSummary> {
    cases.iter().find(|c| c.system == system && c.name == name)
}

/// The compare ratios from the cases' summaries (corum over etcd for throughput, etcd over corum
/// for latency and CPU). `None` when a case is missing or a denominator is zero.
pub fn ratios(cases: &[CaseSummary]) -> Option<Ratios> {
    let get = |s: &str, n: &str| find(cases, s, n);
    let div = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    let write_ratio = div(
        get("corum", "write")?.ops_per_s,
        get("etcd", "write")?.ops_per_s,
    )?;
    let read_ratio = div(
        get("corum", "read")?.ops_per_s,
        get("etcd", "read")?.ops_per_s,
    )?;
    let p99_ratio = div(
        get("etcd", "latency")?.latency.p99_us as f64,
        get("corum", "latency")?.latency.p99_us as f64,
    )?;
    let cpu_ratio = match (
        get("etcd", "write")?.cpu_us_per_op,
        get("corum", "write")?.cpu_us_per_op,
    ) {
        (Some(e), Some(c)) => div(e, c),
        _ => None,
    };
    Some(Ratios {
        write_ratio,
        read_ratio,
        p99_ratio,
        cpu_ratio,
    })
}

/// The last line of `loadgen suite`: the headline figures of one system.
pub fn suite_json_line(cases: &[CaseSummary]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    if let Some(c) = cases.first() {
        m.insert("system".into(), c.system.clone().into());
    }
    for c in cases {
        m.insert(
            format!("{}_ops_per_s", c.name),
            ((c.ops_per_s * 10.0).round() / 10.0).into(),
        );
        m.insert(format!("{}_p50_us", c.name), c.latency.p50_us.into());
        m.insert(format!("{}_p99_us", c.name), c.latency.p99_us.into());
        m.insert(format!("{}_p999_us", c.name), c.latency.p999_us.into());
        m.insert(format!("{}_errors", c.name), c.errors.into());
        m.insert(
            format!("{}_cpu_us_per_op", c.name),
            c.cpu_us_per_op
                .map(|v| ((v * 10.0).round() / 10.0).into())
                .unwrap_or(serde_json::Value::Null),
        );
    }
    serde_json::Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Percentiles;

    fn case(
        system: &str,
        name: &str,
        ops_per_s: f64,
        p99_us: u64,
        cpu: Option<f64>,
    ) -> CaseSummary {
        let latency = Percentiles {
            count: 1,
            mean_us: 0.0,
            p50_us: 0,
            p90_us: 0,
            p99_us,
            p999_us: 0,
            p9999_us: 0,
            max_us: 0,
        };
        CaseSummary {
            system: system.into(),
            name: name.into(),
            config: serde_json::Value::Null,
            mode: "closed".into(),
            started_at_unix_s: 0.0,
            measured_s: 1.0,
            ops: 1,
            ops_per_s,
            latency,
            per_kind: Default::default(),
            errors: 0,
            errors_by_kind: Default::default(),
            not_found: 0,
            cas_conflicts: 0,
            scheduled: None,
            cpu_us: None,
            cpu_pids: vec![],
            cpu_us_per_op: cpu,
            loadgen_cpu_us_per_op: None,
            timeline: vec![],
        }
    }

    /// Throughput ratios are corum over etcd, latency and CPU ratios etcd over corum, so bigger
    /// is better for all four.
    #[test]
    fn ratio_directions() {
        let cases = vec![
            case("corum", "write", 50_000.0, 0, Some(20.0)),
            case("etcd", "write", 5_000.0, 0, Some(200.0)),
            case("corum", "read", 30_000.0, 0, None),
            case("etcd", "read", 3_000.0, 0, None),
            case("corum", "latency", 2_000.0, 1_000, None),
            case("etcd", "latency", 2_000.0, 100_000, None),
        ];
        let r = ratios(&cases).unwrap();
        assert_eq!(
            (r.write_ratio, r.read_ratio, r.p99_ratio, r.cpu_ratio),
            (10.0, 10.0, 100.0, Some(10.0))
        );
        assert!(
            ratios(&cases[1..]).is_none(),
            "a missing corum case gives no ratios"
        );
        assert_eq!(
            standard_cases(&SuiteOptions::default())
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            vec!["write", "read", "mixed", "latency"]
        );
    }
}
