//! A 3-node cluster in one process (each node with its own shard threads, WAL files and
//! sockets, exactly as `corum serve` runs them), then:
//! 1. idle CPU: the CPU time of the nodes' shard threads (`/proc/self/task/*/stat`, threads
//!    named `corum-n*`) over `IDLE_SECS` with no client traffic;
//! 2. load: `WORKERS` tokio tasks, each with its own client and hash tag, doing puts back to
//!    back for `LOAD_SECS` (so `WORKERS` requests in flight); reports puts/s, latency
//!    percentiles and the nodes' CPU time per put.
//!
//! `cargo run --release -p engine --example cluster_bench -- [DIR] [WORKERS] [LOAD_SECS] [VALUE_BYTES]`
//! Prints one JSON object on stdout.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use engine::cli::local::free_port_block;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use engine::config::{NodeConfig, Tuning, PARTITIONS_DEFAULT};
use engine::server;
use wire::client::{Client, ClientConfig};

const IDLE_SECS: u64 = 10;
const SHARDS: usize = 2;

/// CPU seconds (user + system) of this process's threads whose name starts with `corum-n`.
fn shard_cpu_secs() -> f64 {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0u64;
    for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with("corum-n") {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // Fields after the name: state is index 0, utime index 11, stime index 12.
        let ut: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
        let st: u64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        total += ut + st;
    }
    total as f64 / ticks
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or_else(|| "target/cluster-bench".into()),
    );
    let workers: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(256);
    let load_secs: u64 = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(5);
    let value_bytes: usize = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(256);
    let _ = std::fs::remove_dir_all(&dir);
    let bases: Vec<(u16, u16)> = (0..3)
        .map(|_| {
            (
                free_port_block(SHARDS as u16),
                free_port_block(SHARDS as u16),
            )
        })
        .collect();
    let peers: BTreeMap<u64, SocketAddr> = bases
        .iter()
        .enumerate()
        .map(|(i, (_, p))| (i as u64 + 1, SocketAddr::from(([127, 0, 0, 1], *p))))
        .collect();
    let mut handles = Vec::new();
    let mut seeds = Vec::new();
    for (i, (c, p)) in bases.iter().enumerate() {
        let cfg = NodeConfig {
            id: i as u64 + 1,
            data_dir: dir.join(format!("node-{}", i + 1)),
            client_addr: SocketAddr::from(([127, 0, 0, 1], *c)),
            peer_addr: SocketAddr::from(([127, 0, 0, 1], *p)),
            peers: peers.clone(),
            shards: SHARDS,
            partitions: PARTITIONS_DEFAULT,
            replicas: 3,
            pin: false,
            metrics_addr: None,
            tuning: Tuning::default(),
            tls: None,
        };
        seeds.push(cfg.client_addr.to_string());
        handles.push(server::start(cfg).expect("node starts"));
    }
    // Let elections settle (default tuning: election timeout 1-2 s), then measure idle CPU.
    std::thread::sleep(Duration::from_secs(3));
    let c0 = shard_cpu_secs();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(IDLE_SECS));
    let idle_cpu = shard_cpu_secs() - c0;
    let idle_pct = 100.0 * idle_cpu / t0.elapsed().as_secs_f64();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (puts, lat, wall, load_cpu, errors) = rt.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..workers {
            let mut cfg = ClientConfig::new(seeds.clone());
            cfg.request_timeout = Duration::from_secs(20);
            clients.push(Client::connect(cfg).await.expect("client connects"));
        }
        let value = bytes::Bytes::from(vec![b'v'; value_bytes]);
        // Warm-up: one put per worker (leaders found, connections open).
        for (w, cl) in clients.iter().enumerate() {
            cl.put(format!("{{w{w}}}warm"), value.clone())
                .await
                .unwrap();
        }
        let c0 = shard_cpu_secs();
        let start = Instant::now();
        let end = start + Duration::from_secs(load_secs);
        let mut tasks = Vec::new();
        for (w, cl) in clients.into_iter().enumerate() {
            let value = value.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut k = 0u64;
                while Instant::now() < end {
                    let t = Instant::now();
                    match cl.put(format!("{{w{w}}}k{k}"), value.clone()).await {
                        Ok(_) => lat.push(t.elapsed().as_micros() as u64),
                        Err(_) => errors += 1,
                    }
                    k += 1;
                }
                (lat, errors)
            }));
        }
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await.unwrap();
            all.extend(l);
            errors += e;
        }
        let wall = start.elapsed().as_secs_f64();
        let cpu = shard_cpu_secs() - c0;
        all.sort_unstable();
        (all.len(), all, wall, cpu, errors)
    });
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"idle_secs\": {IDLE_SECS}, \"idle_cpu_percent_of_one_core\": {idle_pct:.2}, \"workers\": {workers}, \"value_bytes\": {value_bytes}, \"load_secs\": {wall:.2}, \"puts\": {puts}, \"errors\": {errors}, \"puts_per_sec\": {:.0}, \"latency_us\": {{\"p50\": {}, \"p90\": {}, \"p99\": {}, \"max\": {}}}, \"node_cpu_secs\": {load_cpu:.2}, \"node_cpu_us_per_put\": {:.1}, \"shards_per_node\": {SHARDS}, \"partitions\": {PARTITIONS_DEFAULT}}}",
        puts as f64 / wall,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        lat.last().copied().unwrap_or(0),
        load_cpu * 1e6 / puts.max(1) as f64,
    );
    for h in handles {
        h.stop().expect("node stops");
    }
}
