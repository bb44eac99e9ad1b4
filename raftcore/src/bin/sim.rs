//! `sim --seeds A..B`: runs the deterministic cluster simulator for seeds A (inclusive) to B
//! (exclusive). Ends with `sim: N seeds passed, M failed`; exits 1 on any failure after
//! printing each failing seed and the command that replays it.
//!
//! `--drift-beyond-allowance` is a negative control: clocks in lease-read seeds drift far past
//! the lease allowance, where lease reads are unsafe, so failures are expected there.

use raftcore::sim::{parse_seed_range, run, SimConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut range = 0..100;
    let mut verbose = false;
    let mut trace = false;
    let mut drift_beyond_allowance = false;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--seeds" | "--seed" => {
                let Some(r) = args.get(i + 1).and_then(|s| parse_seed_range(s)) else {
                    eprintln!(
                        "usage: sim --seeds A..B [--verbose] [--trace] [--drift-beyond-allowance]"
                    );
                    std::process::exit(2);
                };
                range = r;
                i += 1;
            }
            "--verbose" | "-v" => verbose = true,
            "--trace" => trace = true,
            "--drift-beyond-allowance" => drift_beyond_allowance = true,
            other => {
                eprintln!(
                    "unknown argument {other}; usage: sim --seeds A..B [--verbose] [--trace] [--drift-beyond-allowance]"
                );
                std::process::exit(2);
            }
        }
        i += 1;
    }
    let cfg = SimConfig {
        trace,
        drift_beyond_allowance,
        ..SimConfig::default()
    };
    let (mut passed, mut failed, mut lin_unknown) = (0u64, 0u64, 0u64);
    for seed in range {
        match run(seed, &cfg) {
            Ok(stats) => {
                passed += 1;
                if stats.lin_unknown {
                    // Not a failure, but not a verdict either: the history was not checked.
                    lin_unknown += 1;
                    println!("seed {seed}: linearizability search ran out of budget (unknown)");
                }
                if verbose {
                    println!("seed {seed}: ok {stats:?}");
                }
            }
            Err(f) => {
                failed += 1;
                println!("FAIL {f}");
            }
        }
    }
    if lin_unknown > 0 {
        println!("sim: {lin_unknown} of the passed seeds have no linearizability verdict");
    }
    println!("sim: {passed} seeds passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
