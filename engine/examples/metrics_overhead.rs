//! What one metrics update costs a shard, in nanoseconds, measured in a tight loop on this
//! machine: the counting the hot path pays (`engine::server::metrics`; single-writer relaxed
//! atomics). `bench-results/2026-11-27-metrics-cost.md` multiplies these by the updates per
//! write.
//!
//! ```sh
//! cargo run --release -p engine --example metrics_overhead
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use engine::server::metrics::{OpKind, ShardMetrics};
use wire::ServerError;

const CALLS: u64 = 20_000_000;

fn time(what: &str, mut f: impl FnMut(u64)) -> f64 {
    // Warm up, then the best of five rounds (the machine is shared).
    for i in 0..CALLS / 10 {
        f(i);
    }
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for i in 0..CALLS {
            f(black_box(i));
        }
        best = best.min(t.elapsed().as_nanos() as f64 / CALLS as f64);
    }
    println!("{what:<48} {best:>6.2} ns/call");
    best
}

fn main() {
    let m = ShardMetrics::default();
    let start = Instant::now();
    let now = start + Duration::from_millis(1234);
    let busy = ServerError::Busy;
    time("empty loop (baseline)", |i| {
        black_box(i);
    });
    time("Counter::inc", |_| m.proposals.inc());
    time("answered(put, ok)", |_| m.answered(OpKind::Put, Ok(())));
    time("answered(get, busy)", |_| {
        m.answered(OpKind::Get, Err(&busy))
    });
    time("proposal_batch.observe(37)", |i| {
        m.proposal_batch.observe(37 + (i & 1))
    });
    time("wal_fdatasync.observe_duration(180 us)", |i| {
        m.wal_fdatasync
            .observe_duration(Duration::from_nanos(180_000 + (i & 1023)))
    });
    time("turned (loop heartbeat, clock already read)", |_| {
        m.turned(start, black_box(now))
    });
    black_box(&m);
}
