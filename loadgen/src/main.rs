//! The `loadgen` command. See `loadgen --help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand, ValueEnum};

use loadgen::corum::CorumTarget;
use loadgen::etcd::EtcdTarget;
use loadgen::keys::Distribution;
use loadgen::localcorum::CorumLaunch;
use loadgen::report::{self, CaseSummary, Machine, Report};
use loadgen::runner::{run, RunConfig, RunResult};
use loadgen::suite::{self, LocalOptions, LocalSystem, SuiteOptions, System};
use loadgen::target::mem::MemTarget;
use loadgen::target::Consistency;
use loadgen::workload::Workload;

/// Load generator for corum and etcd: closed and open loop, HdrHistogram reports.
///
/// Without a subcommand, runs one workload against one target. Progress goes to stderr; the
/// summary table and, as the very last line, one JSON object go to stdout.
#[derive(Parser, Debug)]
#[command(name = "loadgen", version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Threads of loadgen's async runtime (default: one per CPU). Fewer threads mean fewer
    /// cross-thread wake-ups per request (cheaper at low rates); more are needed to saturate
    /// fast servers.
    #[arg(long, global = true)]
    client_threads: Option<usize>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run one workload (the default when no subcommand is given).
    Run(RunArgs),
    /// The standard suite (write, read, mixed, latency) against one local system.
    Suite(SuiteArgs),
    /// The standard suite against a local corum and a local etcd cluster, alternating, with
    /// ratios (corum over etcd for throughput, etcd over corum for latency and CPU).
    Compare(CompareArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetKind {
    /// corum, native protocol (the wire crate's client).
    Corum,
    /// etcd v3 gRPC API.
    Etcd,
    /// In-process map: measures loadgen's own overhead.
    Mem,
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// System under test.
    #[arg(long, value_enum, default_value = "corum")]
    target: TargetKind,
    /// Start a local 3-node cluster of the target on loopback, in a temporary directory, and
    /// stop it at the end (also on Ctrl-C).
    #[arg(long)]
    local: bool,
    /// Client endpoints of an existing cluster, comma-separated (`127.0.0.1:2379,...`).
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Operation mix.
    #[arg(long, value_enum, default_value = "ycsb-a")]
    workload: Workload,
    /// Key distribution.
    #[arg(long, value_enum, default_value = "uniform")]
    distribution: Distribution,
    /// Zipfian exponent, in (0, 1).
    #[arg(long, default_value_t = 0.99)]
    zipf_theta: f64,
    /// Key-space size.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Key length in bytes.
    #[arg(long, default_value_t = 16)]
    key_bytes: usize,
    /// Value length in bytes.
    #[arg(long, default_value_t = 128)]
    value_bytes: usize,
    /// Keys per range scan (`--workload range`).
    #[arg(long, default_value_t = 10)]
    scan_len: u64,
    /// Write every key before the run: auto = when the workload reads.
    #[arg(long, value_enum, default_value = "auto")]
    preload: Preload,
    /// Read consistency.
    #[arg(long, value_enum, default_value = "linearizable")]
    consistency: Consistency,
    /// Connections to the target.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Requests in flight in total (closed loop), or the most in flight (open loop).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Requests in flight per connection (pipelining depth); sets concurrency to
    /// connections x depth.
    #[arg(long)]
    depth: Option<usize>,
    /// Open loop at this many requests per second (latency from each request's intended send
    /// time). Without it, closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Measurement window (`30s`, `500ms`, `2m`).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    duration: Duration,
    /// Warm-up before the window, excluded from the results.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    warmup: Duration,
    /// Per-operation timeout; a timed-out operation is an error.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    op_timeout: Duration,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Local server process ids whose CPU time to measure (comma-separated); with `--local`
    /// the cluster's own processes are measured.
    #[arg(long, value_delimiter = ',')]
    server_pids: Vec<u32>,
    /// `--target corum --endpoints`: connect with TLS, trusting the CA in FILE (PEM).
    #[arg(long, value_name = "FILE")]
    cacert: Option<std::path::PathBuf>,
    /// Client certificate to present under TLS (PEM; with --key).
    #[arg(long, value_name = "FILE", requires_all = ["key", "cacert"])]
    cert: Option<std::path::PathBuf>,
    /// Key of --cert (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<std::path::PathBuf>,
    #[command(flatten)]
    out: OutArgs,
}

#[derive(Args, Debug, Clone)]
struct OutArgs {
    /// Report name: the report goes to `<out-dir>/<date>-<name>/`.
    #[arg(long)]
    name: Option<String>,
    /// Directory of reports.
    #[arg(long, default_value = "bench-results")]
    out_dir: PathBuf,
    /// Where local clusters keep their data (a temporary directory is made inside).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    data_root: PathBuf,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
    /// A note to record in the report (repeatable), e.g. that the machine was shared.
    #[arg(long)]
    note: Vec<String>,
    /// The `corum` binary for local corum clusters. Default: `$CORUM_BIN`, else built with
    /// `cargo build --release -p engine --bin corum` in the source tree loadgen came from, else
    /// `corum` next to loadgen or on PATH.
    #[arg(long)]
    corum_bin: Option<PathBuf>,
    /// An extra argument for `corum local` (repeatable), e.g. `--corum-local-arg=--partitions=16`.
    #[arg(long, allow_hyphen_values = true)]
    corum_local_arg: Vec<String>,
}

impl OutArgs {
    fn local_options(&self) -> LocalOptions {
        LocalOptions {
            data_root: self.data_root.clone(),
            corum: CorumLaunch {
                bin: self.corum_bin.clone(),
                local_args: self.corum_local_arg.clone(),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Preload {
    Auto,
    On,
    Off,
}

#[derive(Args, Debug)]
struct SuiteArgs {
    /// System to run the suite against (always a local cluster).
    #[arg(long, value_enum, default_value = "etcd")]
    system: System,
    #[command(flatten)]
    common: SuiteCommon,
}

#[derive(Args, Debug)]
struct CompareArgs {
    #[command(flatten)]
    common: SuiteCommon,
}

#[derive(Args, Debug)]
struct SuiteCommon {
    /// A few seconds per case (smoke run).
    #[arg(long)]
    quick: bool,
    /// Rate of the open-loop latency case, requests per second.
    #[arg(long, default_value_t = 2000.0)]
    open_rate: f64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Only these cases (comma-separated: write,read,mixed,latency); default all.
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// Override every case's measurement window.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Override every case's warm-up.
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// Override every case's number of connections (default 16; the concurrency stays, so
    /// this sets the pipelining depth per connection).
    #[arg(long)]
    connections: Option<usize>,
    #[command(flatten)]
    out: OutArgs,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}: expected e.g. 30s, 500ms, 2m"))?;
    let secs = match unit {
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("bad duration unit {unit:?} (use ms, s, m or h)")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Run(#[from] loadgen::runner::RunError),
    #[error(transparent)]
    Target(#[from] loadgen::target::TargetError),
    #[error("report: {0}")]
    Report(#[from] report::ReportError),
    #[error("{0}")]
    Usage(String),
    #[error("interrupted (Ctrl-C or SIGTERM); local clusters were stopped")]
    Interrupted,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOADGEN_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let result = rt.block_on(async move {
        let work = async {
            match cli.cmd {
                None => cmd_run(cli.run, &command).await,
                Some(Cmd::Run(a)) => cmd_run(a, &command).await,
                Some(Cmd::Suite(a)) => cmd_suite(Some(a.system), a.common, &command).await,
                Some(Cmd::Compare(a)) => cmd_suite(None, a.common, &command).await,
            }
        };
        // Dropping `work` on Ctrl-C or SIGTERM drops any local cluster, which stops it.
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            r = work => r,
            _ = tokio::signal::ctrl_c() => Err(CliError::Interrupted),
            _ = terminate => Err(CliError::Interrupted),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_config(a: &RunArgs, name: String) -> Result<RunConfig, CliError> {
    let concurrency = match a.depth {
        Some(d) => a
            .connections
            .checked_mul(d)
            .ok_or_else(|| CliError::Usage("depth too large".into()))?,
        None => a.concurrency,
    };
    Ok(RunConfig {
        name,
        workload: a.workload,
        distribution: a.distribution,
        zipf_theta: a.zipf_theta,
        keys: a.keys,
        key_bytes: a.key_bytes,
        value_bytes: a.value_bytes,
        scan_len: a.scan_len,
        preload: match a.preload {
            Preload::Auto => a.workload.reads(),
            Preload::On => true,
            Preload::Off => false,
        },
        consistency: a.consistency,
        connections: a.connections,
        concurrency,
        rate: a.rate,
        duration: a.duration,
        warmup: a.warmup,
        op_timeout: a.op_timeout,
        seed: a.seed,
        server_pids: a.server_pids.clone(),
        progress: !a.out.quiet,
    })
}

async fn cmd_run(a: RunArgs, command: &str) -> Result<(), CliError> {
    let system = match a.target {
        TargetKind::Corum => "corum",
        TargetKind::Etcd => "etcd",
        TargetKind::Mem => "mem",
    };
    let workload = a
        .workload
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    let name = a
        .out
        .name
        .clone()
        .unwrap_or_else(|| format!("{system}-{workload}"));
    let cfg = run_config(&a, name.clone())?;
    let result = match a.target {
        TargetKind::Corum | TargetKind::Etcd if a.local => {
            if !a.endpoints.is_empty() {
                return Err(CliError::Usage(
                    "--local and --endpoints exclude each other".into(),
                ));
            }
            let system = if a.target == TargetKind::Corum {
                System::Corum
            } else {
                System::Etcd
            };
            let local = LocalSystem::start_with(system, &a.out.local_options()).await?;
            let r = local.run(&cfg).await?;
            local.stop();
            r
        }
        TargetKind::Corum => {
            if a.endpoints.is_empty() {
                return Err(CliError::Usage(
                    "--target corum needs --endpoints or --local".into(),
                ));
            }
            let tls = match &a.cacert {
                None => None,
                Some(ca) => {
                    let cert_key = a.cert.as_deref().zip(a.key.as_deref());
                    Some(
                        wire::client::TlsClientConfig::from_pem_files(ca, cert_key)
                            .map_err(|e| CliError::Usage(format!("TLS: {e}")))?,
                    )
                }
            };
            let target = CorumTarget::new(a.endpoints.clone())?
                .with_request_timeout(cfg.op_timeout)
                .with_tls(tls);
            run(&target, &cfg).await?
        }
        TargetKind::Mem if a.local || !a.endpoints.is_empty() => {
            return Err(CliError::Usage(
                "--target mem takes neither --local nor --endpoints".into(),
            ))
        }
        TargetKind::Mem => run(&MemTarget::new(), &cfg).await?,
        TargetKind::Etcd => {
            if a.endpoints.is_empty() {
                return Err(CliError::Usage(
                    "--target etcd needs --endpoints or --local".into(),
                ));
            }
            run(&EtcdTarget::new(a.endpoints.clone())?, &cfg).await?
        }
    };
    let summary = CaseSummary::from_run(&result);
    let dir = write(
        &a.out,
        &name,
        command,
        vec![summary.clone()],
        None,
        &[&result],
    )?;
    println!("{}", report::summary_table(std::slice::from_ref(&summary)));
    println!("report: {}", dir.display());
    let mut line = summary.json_line();
    line["report_dir"] = dir.display().to_string().into();
    println!("{line}");
    Ok(())
}

fn write(
    out: &OutArgs,
    name: &str,
    command: &str,
    cases: Vec<CaseSummary>,
    ratios: Option<report::Ratios>,
    runs: &[&RunResult],
) -> Result<PathBuf, CliError> {
    let dir = report::create_report_dir(&out.out_dir, name)?;
    let rep = Report {
        name: name.to_string(),
        created_unix_s: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        commit: report::git_commit(),
        machine: Machine::describe(&out.data_root),
        command: command.to_string(),
        notes: out.note.clone(),
        cases,
        ratios,
    };
    report::write_report(&dir, &rep, runs)?;
    Ok(dir)
}

async fn cmd_suite(system: Option<System>, c: SuiteCommon, command: &str) -> Result<(), CliError> {
    let o = SuiteOptions {
        quick: c.quick,
        open_rate: c.open_rate,
        data_root: c.out.data_root.clone(),
        seed: c.seed,
        progress: !c.out.quiet,
    };
    let mut cases = suite::standard_cases(&o);
    if !c.cases.is_empty() {
        cases.retain(|k| c.cases.contains(&k.name));
        if cases.is_empty() {
            return Err(CliError::Usage(
                "--cases selected none of write,read,mixed,latency".into(),
            ));
        }
        // The mixed case relies on the read case's preload; preload itself if read is skipped.
        if !c.cases.iter().any(|n| n == "read") {
            for k in cases.iter_mut().filter(|k| k.name == "mixed") {
                k.preload = true;
            }
        }
    }
    for k in &mut cases {
        if let Some(d) = c.duration {
            k.duration = d;
        }
        if let Some(w) = c.warmup {
            k.warmup = w;
        }
        if let Some(n) = c.connections {
            k.connections = n;
        }
    }
    let systems: Vec<System> = match system {
        Some(s) => vec![s],
        // compare: corum first, so a corum that cannot start fails before any etcd load.
        None => vec![System::Corum, System::Etcd],
    };
    let runs = suite::run_cases(&systems, &cases, &c.out.local_options()).await?;
    let summaries: Vec<CaseSummary> = runs.iter().map(CaseSummary::from_run).collect();
    let ratios = if system.is_none() {
        suite::ratios(&summaries)
    } else {
        None
    };
    let name = c.out.name.clone().unwrap_or_else(|| match system {
        Some(s) => format!(
            "suite-{}{}",
            if s == System::Etcd { "etcd" } else { "corum" },
            if c.quick { "-quick" } else { "" }
        ),
        None => format!("compare{}", if c.quick { "-quick" } else { "" }),
    });
    let refs: Vec<&RunResult> = runs.iter().collect();
    let dir = write(&c.out, &name, command, summaries.clone(), ratios, &refs)?;
    println!("{}", report::summary_table(&summaries));
    println!("report: {}", dir.display());
    let line = match system {
        Some(_) => {
            let mut l = suite::suite_json_line(&summaries);
            l["report_dir"] = dir.display().to_string().into();
            l
        }
        None => {
            let r = ratios
                .ok_or_else(|| CliError::Usage("compare: a case is missing; no ratios".into()))?;
            serde_json::json!({
                "write_ratio": r.write_ratio,
                "read_ratio": r.read_ratio,
                "p99_ratio": r.p99_ratio,
                "cpu_ratio": r.cpu_ratio,
                "report_dir": dir.display().to_string(),
            })
        }
    };
    println!("{line}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("3d").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn cli_parses() {
        Cli::command_for_test();
        let c = Cli::try_parse_from(["loadgen", "--local"]).unwrap();
        assert!(c.run.local && c.cmd.is_none());
        let c = Cli::try_parse_from(["loadgen", "compare", "--quick"]).unwrap();
        assert!(matches!(
            c.cmd,
            Some(Cmd::Compare(CompareArgs {
                common: SuiteCommon { quick: true, .. }
            }))
        ));
    }

    impl Cli {
        fn command_for_test() {
            use clap::CommandFactory;
            Cli::command().debug_assert();
        }
    }
}
