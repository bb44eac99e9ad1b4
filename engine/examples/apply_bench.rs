//! Apply-rate benchmark of one partition's state machine: decode + apply of 128-byte puts, with
//! and without sessions, with and without the multi-version history, counting heap
//! allocations per command; reads of the current state and at past revisions (one key, and
//! 100-key ranges); then snapshot encode / decode.
//!
//! `cargo run -p engine --release --example apply_bench -- [puts] [distinct_keys] [value_bytes]`
//!
//! Prints one JSON object on stdout.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use engine::command::Command;
use engine::snapshot;
use engine::state_machine::{Config, StateMachine};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Phase {
    name: &'static str,
    ops: u64,
    secs: f64,
    allocs: u64,
}

impl Phase {
    fn json(&self) -> String {
        format!(
            "{{\"phase\":\"{}\",\"ops\":{},\"seconds\":{:.6},\"ops_per_sec\":{:.0},\"ns_per_op\":{:.1},\"allocs_per_op\":{:.3}}}",
            self.name,
            self.ops,
            self.secs,
            self.ops as f64 / self.secs,
            self.secs * 1e9 / self.ops as f64,
            self.allocs as f64 / self.ops as f64
        )
    }
}

fn entries(n: u64, keys: u64, value_bytes: usize, sessions: bool) -> Vec<Bytes> {
    (0..n)
        .map(|i| {
            let key = format!("key-{:012}", i % keys);
            let mut value = vec![0u8; value_bytes];
            value[..8].copy_from_slice(&i.to_le_bytes());
            let mut c = Command::put(key, value);
            if sessions {
                // 1,000 clients, each with its own sequence counter and 16 writes in flight.
                let seq = i / 1000 + 1;
                c = c.with_session(i % 1000, seq, seq.saturating_sub(16));
            }
            c.encode() // one buffer per entry, as the engine hands them in
        })
        .collect()
}

fn run(name: &'static str, sm: &mut StateMachine, entries: &[Bytes], first_index: u64) -> Phase {
    let a0 = ALLOCS.load(Ordering::Relaxed);
    let t = Instant::now();
    for (i, e) in entries.iter().enumerate() {
        let r = sm.apply_entry(first_index + i as u64, 1, e);
        std::hint::black_box(&r);
        if r.is_err() {
            eprintln!("apply failed: {r:?}");
            std::process::exit(1);
        }
    }
    let secs = t.elapsed().as_secs_f64();
    Phase {
        name,
        ops: entries.len() as u64,
        secs,
        allocs: ALLOCS.load(Ordering::Relaxed) - a0,
    }
}

/// `n` calls of `f` as one phase (each call's result kept from the optimizer).
fn read<T>(name: &'static str, n: u64, mut f: impl FnMut(u64) -> T) -> Phase {
    let a0 = ALLOCS.load(Ordering::Relaxed);
    let t = Instant::now();
    for i in 0..n {
        std::hint::black_box(f(i));
    }
    Phase {
        name,
        ops: n,
        secs: t.elapsed().as_secs_f64(),
        allocs: ALLOCS.load(Ordering::Relaxed) - a0,
    }
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric arguments"))
        .collect();
    let puts = args.first().copied().unwrap_or(1_000_000);
    let keys = args.get(1).copied().unwrap_or(100_000).min(puts);
    let value_bytes = args.get(2).copied().unwrap_or(128) as usize;

    let mut phases = vec![];
    let all = entries(puts, keys, value_bytes, false);
    let mut sm = StateMachine::new(Config {
        history_revisions: 1000,
        ..Config::new(1)
    });
    let (inserts, overwrites) = all.split_at(keys as usize);
    phases.push(run("put_new_key", &mut sm, inserts, 1));
    phases.push(run("put_overwrite", &mut sm, overwrites, 1 + keys));
    // Reads (issue 16): the current state, then at the current revision and halfway back to
    // the compaction point through the multi-version read path. Keys in a scattered order.
    let key = |i: u64| format!("key-{:012}", (i * 7919) % keys).into_bytes();
    let probes: Vec<Vec<u8>> = (0..keys.min(100_000)).map(key).collect();
    let reads = 1_000_000u64;
    let now = sm.revision();
    let past = now - (now - sm.compacted()) / 2;
    let n = probes.len() as u64;
    phases.push(read("get", reads, |i| {
        sm.get(&probes[(i % n) as usize]).is_some()
    }));
    phases.push(read("get_at_now", reads, |i| {
        sm.get_at(&probes[(i % n) as usize], now)
            .map(|kv| kv.is_some())
    }));
    phases.push(read("get_at_past", reads, |i| {
        sm.get_at(&probes[(i % n) as usize], past)
            .map(|kv| kv.is_some())
    }));
    let ranges = 20_000u64;
    phases.push(read("range_100", ranges, |i| {
        sm.range(&probes[(i % n) as usize], b"\xff", 100, false, usize::MAX)
            .kvs
            .len()
    }));
    phases.push(read("range_100_at_past", ranges, |i| {
        sm.range_at(
            &probes[(i % n) as usize],
            b"\xff",
            100,
            false,
            usize::MAX,
            past,
        )
        .map(|r| r.kvs.len())
    }));
    // The same overwrites with no history kept (tuning.history_revisions = 0): the cost of
    // the multi-version history in the same run (issue 16, increment 2).
    let mut off = StateMachine::new(Config {
        history_revisions: 0,
        ..Config::new(1)
    });
    phases.push(run("put_new_key_history_off", &mut off, inserts, 1));
    phases.push(run(
        "put_overwrite_history_off",
        &mut off,
        overwrites,
        1 + keys,
    ));
    drop(off);
    drop(all);

    let with_sessions = entries(puts, keys, value_bytes, true);
    let mut sm2 = StateMachine::new(Config::new(2));
    let (inserts, overwrites) = with_sessions.split_at(keys as usize);
    phases.push(run("put_new_key_session", &mut sm2, inserts, 1));
    phases.push(run("put_overwrite_session", &mut sm2, overwrites, 1 + keys));
    drop(with_sessions);

    let t = Instant::now();
    let snap = snapshot::encode(&sm2, b"membership");
    let encode_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let restored = snapshot::decode(&snap, &Config::new(2)).expect("decode");
    let decode_secs = t.elapsed().as_secs_f64();
    assert_eq!(restored.state, sm2);

    let mib = snap.len() as f64 / (1024.0 * 1024.0);
    println!(
        "{{\"puts\":{puts},\"distinct_keys\":{keys},\"value_bytes\":{value_bytes},\"phases\":[{}],\"snapshot\":{{\"bytes\":{},\"keys\":{},\"sessions\":{},\"encode_seconds\":{encode_secs:.6},\"encode_mib_per_sec\":{:.0},\"decode_seconds\":{decode_secs:.6},\"decode_mib_per_sec\":{:.0}}}}}",
        phases.iter().map(Phase::json).collect::<Vec<_>>().join(","),
        snap.len(),
        sm2.len(),
        sm2.sessions().len(),
        mib / encode_secs,
        mib / decode_secs,
    );
}
