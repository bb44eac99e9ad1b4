//! `corum-chaos run --nodes 3 --seconds 60 --seed 1 --nemesis kill,pause,partition,loss`
//!
//! Exit codes: 0 clean verdict, 1 a violation, a lost write, an unknown verdict or a harness
//! error, 2 usage error, 130 interrupted. The last line of output is always
//! `chaos: <ops> ops, <faults> faults, <violations> violations, <lost> lost acknowledged writes`
//! (when the run got as far as a history).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chaos::nemesis::{Nemesis, Timing};
use chaos::run::RunConfig;
use chaos::workload::WorkloadConfig;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "corum-chaos",
    about = "Fault injection against a real corum cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One run: start a cluster in network namespaces, run the workload under faults, heal,
    /// check, report.
    Run(RunArgs),
    /// Remove namespaces and links left by runs whose harness died (runs do this at start too).
    Cleanup,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Nodes (3 or 5).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=5))]
    nodes: u64,
    /// Length of the workload (faults included), seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seed of the fault schedule and of the clients' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Comma-separated nemeses: kill, pause, partition, loss; opt-in: kill-all (every node at
    /// once), blackhole (one node drops all packets, clients' included), delay (peer links
    /// through the harness's proxy, slowed by 20-1000 ms). Empty: no faults.
    #[arg(
        long,
        default_value = "kill,pause,partition,loss",
        value_delimiter = ','
    )]
    nemesis: Vec<String>,
    /// Partitions (Raft groups) of the cluster.
    #[arg(long, default_value_t = 8)]
    partitions: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: u64,
    /// Register keys shared by the clients.
    #[arg(long, default_value_t = 8)]
    keys: u64,
    /// Operations per second per client, at most.
    #[arg(long, default_value_t = 40)]
    rate: u64,
    /// Deadline of one client call (retries included), ms.
    #[arg(long, default_value_t = 4000)]
    request_timeout_ms: u64,
    /// Run directory; default target/chaos/<unix time>-seed<S>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The corum binary; default: next to this executable, else target/release/corum. Built
    /// with cargo if missing.
    #[arg(long)]
    corum: Option<PathBuf>,
    /// Linearizability search budget per key (steps).
    #[arg(long, default_value_t = 20_000_000)]
    lin_budget: u64,
    /// Deadline for every partition to have a leader, at start and after healing, seconds.
    #[arg(long, default_value_t = 60)]
    heal_timeout: u64,
    /// Shortest and longest fault, ms.
    #[arg(long, default_value_t = 3000)]
    fault_min_ms: u64,
    /// See --fault-min-ms.
    #[arg(long, default_value_t = 8000)]
    fault_max_ms: u64,
    /// Negative control: send every get as a stale read but check it as linearizable. With
    /// partitions the verdict must be NOT CLEAN; a clean one means the checks are blind.
    #[arg(long)]
    control_stale_reads: bool,
}

fn corum_binary(given: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return if p.exists() {
            Ok(p)
        } else {
            Err(format!("{}: no such file", p.display()))
        };
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("corum")));
    if let Some(p) = sibling.filter(|p| p.exists()) {
        return Ok(p);
    }
    let default = PathBuf::from("target/release/corum");
    if !default.exists() {
        eprintln!("chaos: {} missing; building it", default.display());
        let status = std::process::Command::new("cargo")
            .args(["build", "--release", "-p", "engine", "--bin", "corum"])
            .status()
            .map_err(|e| format!("cargo build: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build -p engine failed: {status}"));
        }
    }
    std::fs::canonicalize(&default).map_err(|e| format!("{}: {e}", default.display()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Cmd::Cleanup => {
            for what in chaos::net::cleanup_leftovers() {
                println!("removed {what}");
            }
            return ExitCode::SUCCESS;
        }
        Cmd::Run(a) => a,
    };
    let nemeses: Result<Vec<Nemesis>, String> = args
        .nemesis
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.parse())
        .collect();
    let nemeses = match nemeses {
        Ok(n) => n,
        Err(e) => {
            eprintln!("corum-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    if args.fault_min_ms == 0 || args.fault_max_ms <= args.fault_min_ms {
        eprintln!("corum-chaos: need 0 < --fault-min-ms < --fault-max-ms");
        return ExitCode::from(2);
    }
    let corum = match corum_binary(args.corum.clone()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("corum-chaos: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = args.out.clone().unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from(format!("target/chaos/{now}-seed{}", args.seed))
    });
    let command: Vec<String> = std::env::args().collect();
    let command = command.join(" ");
    let cfg = RunConfig {
        nodes: args.nodes,
        seconds: args.seconds,
        seed: args.seed,
        nemeses,
        partitions: args.partitions,
        workload: WorkloadConfig {
            clients: args.clients,
            keys: args.keys,
            rate_per_client: args.rate,
            seed: args.seed,
            request_timeout: Duration::from_millis(args.request_timeout_ms),
            control_stale_reads: args.control_stale_reads,
        },
        out: out.clone(),
        corum,
        lin_budget: args.lin_budget,
        heal_timeout: Duration::from_secs(args.heal_timeout),
        timing: Timing {
            fault_min_ms: args.fault_min_ms,
            fault_max_ms: args.fault_max_ms,
            ..Timing::default()
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("corum-chaos: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("chaos: interrupted; stopping the run and cleaning up");
            let _ = cancel_tx.send(true);
        });
        let mut interrupted = cancel_rx.clone();
        tokio::select! {
            r = chaos::run::run(cfg, cancel_rx) => r,
            // Outside the workload (start-up, the checks after healing) the run does not watch
            // for the signal: dropping it mid-way runs its teardown guard (nodes killed,
            // namespaces removed) at once.
            _ = interrupted.wait_for(|&c| c) => Err(chaos::run::INTERRUPTED.to_string()),
        }
    });
    let output = match result {
        Ok(o) => o,
        Err(e) if e == chaos::run::INTERRUPTED => {
            eprintln!("corum-chaos: interrupted; cluster stopped and namespaces removed");
            return ExitCode::from(130);
        }
        Err(e) => {
            eprintln!("corum-chaos: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = chaos::report::write(&out, &output, &command) {
        eprintln!("corum-chaos: writing the report: {e}");
    }
    let s = &output.summary;
    for k in s.keys.iter().filter(|k| k.verdict != "linearizable") {
        eprintln!(
            "chaos: key {} is {}: {}",
            k.key,
            k.verdict,
            k.detail.as_deref().unwrap_or("search budget exhausted")
        );
    }
    for line in s
        .crashes
        .iter()
        .chain(&s.health_problems)
        .chain(&s.convergence_problems)
        .chain(&s.harness_errors)
    {
        eprintln!("chaos: {line}");
    }
    if !s.lost.is_empty() {
        eprintln!("chaos: lost acknowledged writes: {:?}", s.lost);
    }
    println!(
        "chaos: report in {} (verdict: {})",
        out.display(),
        if s.clean { "clean" } else { "NOT CLEAN" }
    );
    println!(
        "chaos: {} ops, {} faults, {} violations, {} lost acknowledged writes",
        s.ops,
        s.faults,
        s.violations,
        s.lost.len()
    );
    if s.interrupted {
        ExitCode::from(130)
    } else if s.clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
