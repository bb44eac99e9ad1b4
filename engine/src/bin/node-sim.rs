//! `node-sim`: runs the whole-node simulator over a range of seeds (`engine::sim`).
//!
//! ```text
//! cargo run --release -p engine --bin node-sim -- --seeds 0..300 [--trace] [--threads N]
//! ```
//! Ends with `node-sim: N seeds passed, M failed`; exit 1 on any failure, each failure printed
//! with the line that replays it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::Parser;
use engine::sim::{run_seed, SimConfig, SimFailure};

#[derive(Parser)]
#[command(about = "Whole-node simulator: the real shard core under seeded faults")]
struct Args {
    /// Seeds to run, as A..B (B excluded) or a single seed.
    #[arg(long, default_value = "0..100")]
    seeds: String,
    /// Print every notable event of each run (use with one seed).
    #[arg(long)]
    trace: bool,
    /// Worker threads (default: the number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Steps of the safety phase (faults on).
    #[arg(long)]
    safety_steps: Option<u64>,
}

fn parse_seeds(s: &str) -> Result<(u64, u64), String> {
    match s.split_once("..") {
        Some((a, b)) => {
            let a: u64 = a.parse().map_err(|e| format!("--seeds {s}: {e}"))?;
            let b: u64 = b.parse().map_err(|e| format!("--seeds {s}: {e}"))?;
            if b <= a {
                return Err(format!("--seeds {s}: empty range"));
            }
            Ok((a, b))
        }
        None => {
            let a: u64 = s.parse().map_err(|e| format!("--seeds {s}: {e}"))?;
            Ok((a, a + 1))
        }
    }
}

fn main() {
    let args = Args::parse();
    let (lo, hi) = match parse_seeds(&args.seeds) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("node-sim: {e}");
            std::process::exit(2);
        }
    };
    let mut cfg = SimConfig {
        trace: args.trace,
        ..SimConfig::default()
    };
    if let Some(s) = args.safety_steps {
        cfg.safety_steps = s;
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let next = Arc::new(AtomicU64::new(lo));
    let failures: Arc<Mutex<Vec<SimFailure>>> = Arc::new(Mutex::new(Vec::new()));
    let ops = Arc::new(AtomicU64::new(0));
    let faults = Arc::new(AtomicU64::new(0));
    let transfers = Arc::new(AtomicU64::new(0));
    let transfers_done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (next, failures, ops, faults, cfg) = (
                next.clone(),
                failures.clone(),
                ops.clone(),
                faults.clone(),
                cfg.clone(),
            );
            let (transfers, transfers_done) = (transfers.clone(), transfers_done.clone());
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= hi {
                    return;
                }
                let r = std::panic::catch_unwind(|| run_seed(seed, &cfg));
                let r = match r {
                    Ok(r) => r,
                    Err(p) => Err(SimFailure {
                        seed,
                        step: 0,
                        what: format!(
                            "panicked: {}",
                            p.downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default()
                        ),
                    }),
                };
                match r {
                    Ok(stats) => {
                        ops.fetch_add(stats.ops, Ordering::Relaxed);
                        faults.fetch_add(stats.faults, Ordering::Relaxed);
                        transfers.fetch_add(stats.transfers, Ordering::Relaxed);
                        transfers_done.fetch_add(stats.transfers_done, Ordering::Relaxed);
                    }
                    Err(f) => {
                        eprintln!("{f}");
                        failures.lock().unwrap_or_else(|p| p.into_inner()).push(f);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let failed = failures.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
    let total = hi - lo;
    eprintln!(
        "node-sim: {} client ops, {} faults ({} leadership transfers asked, {} completed), {:.1} s",
        ops.load(Ordering::Relaxed),
        faults.load(Ordering::Relaxed),
        transfers.load(Ordering::Relaxed),
        transfers_done.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    );
    println!("node-sim: {} seeds passed, {failed} failed", total - failed);
    if failed > 0 {
        std::process::exit(1);
    }
}
