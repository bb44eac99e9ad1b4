//! The whole-node simulator over 300 seeds (engine::sim): the real shard core, state machine
//! and meta group under network, disk, crash and client faults. A failure prints the seed and
//! the command that replays it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use engine::sim::{run_seed, SimConfig};

const SEEDS: u64 = 300;

#[test]
fn three_hundred_seeds_pass() {
    let cfg = SimConfig::default();
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (next, failures, cfg) = (next.clone(), failures.clone(), cfg.clone());
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= SEEDS {
                    return;
                }
                if let Err(f) = run_seed(seed, &cfg) {
                    failures.lock().unwrap().push(f.to_string());
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a simulator thread panicked");
    }
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
