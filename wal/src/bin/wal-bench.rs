//! `wal-bench`: group-commit throughput and sync latency of the WAL on a real directory.
//!
//! ```text
//! wal-bench --dir DIR --entry-bytes N --batch K --seconds S [--partitions P] [--segment-mib M] [--prefill 0|1]
//! ```
//! Each round appends K entries of N bytes spread over P partitions (one `append` per partition
//! per round, as the engine does per Raft Ready), then awaits one `sync` (one write + one
//! fdatasync). Partitions are compacted now and then so old segments are deleted. The last line
//! printed is one JSON object: `appends_per_s`, `mb_per_s` (entry payload, MiB/s),
//! `device_mb_per_s` (bytes handed to the device, MiB/s), `syncs_per_s`, `sync_p50_us`,
//! `sync_p99_us`, `sync_max_us`, `sync_mean_us`, `other_us_per_round` (time per round outside
//! `sync`: building and buffering the batch), and the parameters.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wal::{Entry, LogStore, SnapshotPoint, Wal, WalConfig};

struct Args {
    dir: PathBuf,
    entry_bytes: usize,
    batch: usize,
    seconds: f64,
    partitions: u64,
    segment_mib: u64,
    prefill: bool,
}

fn usage(msg: &str) -> ! {
    eprintln!("wal-bench: {msg}\nusage: wal-bench --dir DIR --entry-bytes N --batch K --seconds S [--partitions P] [--segment-mib M] [--prefill 0|1]");
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut a = Args {
        dir: PathBuf::new(),
        entry_bytes: 1024,
        batch: 1,
        seconds: 10.0,
        partitions: 16,
        segment_mib: 64,
        prefill: true,
    };
    let mut dir = None;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let Some(v) = it.next() else {
            usage(&format!("{k} needs a value"))
        };
        let num = |v: &str| {
            v.parse::<f64>()
                .unwrap_or_else(|_| usage(&format!("{k}: not a number: {v}")))
        };
        match k.as_str() {
            "--dir" => dir = Some(PathBuf::from(v)),
            "--entry-bytes" => a.entry_bytes = num(&v) as usize,
            "--batch" => a.batch = num(&v) as usize,
            "--seconds" => a.seconds = num(&v),
            "--partitions" => a.partitions = num(&v) as u64,
            "--segment-mib" => a.segment_mib = num(&v) as u64,
            "--prefill" => a.prefill = num(&v) != 0.0,
            _ => usage(&format!("unknown option {k}")),
        }
    }
    a.dir = dir.unwrap_or_else(|| usage("--dir is required"));
    if a.batch == 0 || a.partitions == 0 || a.seconds <= 0.0 {
        usage("--batch, --partitions and --seconds must be positive");
    }
    a
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let args = parse_args();
    let io_memory = 32usize << 20;
    match wal::raise_memlock_limit(io_memory as u64 * 2) {
        Ok(l) => eprintln!("RLIMIT_MEMLOCK soft limit now {} KiB", l >> 10),
        Err(e) => eprintln!("could not raise RLIMIT_MEMLOCK: {e}"),
    }
    let dir = args.dir.join(format!("wal-bench-{}", std::process::id()));
    let dir2 = dir.clone();
    let res = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(io_memory)
        .spawn(move || async move { bench(args, dir2).await })
        .expect("spawn executor")
        .join();
    let _ = std::fs::remove_dir_all(&dir);
    match res {
        Ok(Ok(json)) => println!("{json}"),
        Ok(Err(e)) => {
            eprintln!("wal-bench: {e}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("wal-bench: executor failed: {e:?}");
            std::process::exit(1);
        }
    }
}

async fn bench(args: Args, dir: PathBuf) -> Result<String, wal::WalError> {
    let seg_bytes = args.segment_mib << 20;
    let cfg = WalConfig {
        segment_bytes: seg_bytes,
        batch_bytes_max: (seg_bytes / 2).min(32 << 20),
        cache_bytes_max: 8 << 20,
        prefill_segments: args.prefill,
    };
    let log = Wal::open(&dir, cfg).await?;
    let data = Bytes::from(
        (0..args.entry_bytes)
            .map(|i| (i * 7 + 3) as u8)
            .collect::<Vec<u8>>(),
    );
    let parts = args.partitions.min(args.batch as u64).max(1);
    let mut rr = 0u64; // round-robin start, so batch 1 rotates over partitions
    let mut lat_us: Vec<u64> = Vec::with_capacity(1 << 20);
    let mut appended = 0u64;
    let mut rounds = 0u64;
    let dur = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let stats0 = log.stats();
    while start.elapsed() < dur {
        let per = args.batch as u64 / parts;
        let extra = args.batch as u64 % parts;
        for j in 0..parts {
            let p = (rr + j) % args.partitions;
            let n = per + u64::from(j < extra);
            if n == 0 {
                continue;
            }
            let first = log.last_index(p) + 1;
            let es: Vec<Entry> = (0..n)
                .map(|i| Entry {
                    index: first + i,
                    term: 1,
                    kind: 0,
                    data: data.clone(),
                })
                .collect();
            log.append(p, &es)?;
            appended += n;
        }
        rr = (rr + parts) % args.partitions;
        let t = Instant::now();
        log.sync().await?;
        lat_us.push(t.elapsed().as_micros() as u64);
        rounds += 1;
        if rounds % 256 == 0 {
            // Snapshot everything: lets whole segments be deleted, as a live engine would.
            for p in 0..args.partitions {
                let last = log.last_index(p);
                if last > 0 {
                    log.compact(
                        p,
                        SnapshotPoint {
                            index: last,
                            term: 1,
                        },
                    )?;
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let st = log.stats();
    let sync_total_us: u64 = lat_us.iter().sum();
    let sync_mean_us = sync_total_us as f64 / rounds.max(1) as f64;
    // Time per round spent outside `sync` (building and buffering the batch).
    let other_us_per_round = (secs * 1e6 - sync_total_us as f64) / rounds.max(1) as f64;
    lat_us.sort_unstable();
    let mib = (1u64 << 20) as f64;
    let appends_per_s = appended as f64 / secs;
    let mb_per_s = appended as f64 * args.entry_bytes as f64 / mib / secs;
    let device_mb_per_s = (st.device_bytes - stats0.device_bytes) as f64 / mib / secs;
    let syncs_per_s = rounds as f64 / secs;
    eprintln!(
        "entry {} B, batch {}, {} partitions: {:.0} appends/s, {:.1} MiB/s payload ({:.1} MiB/s to device), {:.0} syncs/s, sync p50 {} us p99 {} us; {} segments deleted",
        args.entry_bytes,
        args.batch,
        args.partitions,
        appends_per_s,
        mb_per_s,
        device_mb_per_s,
        syncs_per_s,
        percentile(&lat_us, 0.5),
        percentile(&lat_us, 0.99),
        st.segments_deleted
    );
    Ok(format!(
        concat!(
            "{{\"entry_bytes\":{},\"batch\":{},\"partitions\":{},\"seconds\":{:.3},\"syncs\":{},\"appends\":{},",
            "\"appends_per_s\":{:.1},\"mb_per_s\":{:.2},\"device_mb_per_s\":{:.2},\"syncs_per_s\":{:.1},",
            "\"sync_p50_us\":{},\"sync_p99_us\":{},\"sync_max_us\":{},\"sync_mean_us\":{:.1},\"other_us_per_round\":{:.1},\"segment_mib\":{},\"prefill\":{}}}"
        ),
        args.entry_bytes,
        args.batch,
        args.partitions,
        secs,
        rounds,
        appended,
        appends_per_s,
        mb_per_s,
        device_mb_per_s,
        syncs_per_s,
        percentile(&lat_us, 0.5),
        percentile(&lat_us, 0.99),
        lat_us.last().copied().unwrap_or(0),
        sync_mean_us,
        other_us_per_round,
        args.segment_mib,
        args.prefill
    ))
}
