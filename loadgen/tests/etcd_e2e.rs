//! A real etcd run: loadgen starts a 3-member etcd cluster on loopback with its own code
//! (installing Debian's etcd through `scripts/install-etcd.sh` when missing), drives a few
//! seconds of puts, gets and read-modify-writes, writes a report and reads it back, and stops the
//! cluster.

mod support;

use std::time::Duration;

use loadgen::keys::Distribution;
use loadgen::runner::RunConfig;
use loadgen::suite::{LocalSystem, System};
use loadgen::workload::Workload;
use support::write_and_check_report;

fn alive(pid: u32) -> bool {
    // A zombie has no `State: Z` once reaped; a reaped pid has no /proc entry at all.
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| {
            !s.lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_etcd_run() {
    let data = tempfile::tempdir().unwrap();
    let local = LocalSystem::start(System::Etcd, data.path())
        .await
        .expect("local etcd cluster");
    let pids = local.pids();
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|&p| alive(p)));

    let base = RunConfig {
        keys: 2_000,
        key_bytes: 16,
        value_bytes: 128,
        connections: 4,
        concurrency: 32,
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(500),
        progress: false,
        ..RunConfig::default()
    };
    let put = local
        .run(&RunConfig {
            name: "put".into(),
            workload: Workload::Put,
            preload: false,
            ..base.clone()
        })
        .await
        .unwrap();
    let get = local
        .run(&RunConfig {
            name: "get".into(),
            workload: Workload::Get,
            preload: true,
            ..base.clone()
        })
        .await
        .unwrap();
    let rmw = local
        .run(&RunConfig {
            name: "f".into(),
            workload: Workload::YcsbF,
            distribution: Distribution::Zipfian,
            preload: false,
            rate: Some(300.0),
            ..base.clone()
        })
        .await
        .unwrap();
    local.stop();
    // The members are gone (SIGTERM, then SIGKILL at worst) and their data removed.
    assert!(
        pids.iter().all(|&p| !alive(p)),
        "etcd members still running"
    );
    assert_eq!(
        std::fs::read_dir(data.path()).unwrap().count(),
        0,
        "data directory not removed"
    );

    for r in [&put, &get, &rmw] {
        assert!(r.ops > 0, "{}: no operations", r.config.name);
        assert_eq!(
            r.error_count(),
            0,
            "{}: errors {:?}",
            r.config.name,
            r.errors
        );
        let cpu = r.cpu.as_ref().expect("local servers' CPU is measured");
        assert!(cpu.cpu_us > 0 && r.cpu_us_per_op().unwrap() > 0.0);
    }
    assert_eq!(get.not_found, 0, "every preloaded key is found");
    assert_eq!(rmw.scheduled, Some(600));
    assert_eq!(rmw.ops, 600);
    assert!(rmw.per_kind.keys().any(|k| k.name() == "rmw"));

    let out = tempfile::tempdir().unwrap();
    write_and_check_report(out.path(), "etcd", data.path(), &[&put, &get, &rmw]);
}
