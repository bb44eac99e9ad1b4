//! A real corum run: loadgen starts a 3-node corum cluster on loopback through `corum local`
//! (building the `corum` binary with cargo when needed, or `$CORUM_BIN`), checks every
//! operation of the target against it, drives a few seconds of puts, gets and open-loop
//! read-modify-writes, writes a report and reads it back (the histogram counts in the interval
//! log equal the operations counted), and stops the cluster.

mod support;

use std::time::Duration;

use loadgen::keys::Distribution;
use loadgen::runner::RunConfig;
use loadgen::suite::{LocalSystem, System};
use loadgen::target::{Connection, Consistency, Target};
use loadgen::workload::Workload;
use support::{alive, write_and_check_report};

/// Every operation of the corum target, with the answers a real cluster must give.
async fn operations(local: &LocalSystem) {
    let LocalSystem::Corum { target, .. } = local else {
        panic!("not a corum system")
    };
    let c = target.connect(0).await.expect("connect");
    let key = b"e2e/key".to_vec();
    assert_eq!(
        c.get(key.clone(), Consistency::Linearizable).await.unwrap(),
        None
    );
    // cas on "absent" (revision 0) creates the key; a second one with 0 loses.
    assert!(c.cas(key.clone(), 0, b"v1".to_vec()).await.unwrap());
    assert!(!c.cas(key.clone(), 0, b"v2".to_vec()).await.unwrap());
    let v1 = c
        .get(key.clone(), Consistency::Linearizable)
        .await
        .unwrap()
        .expect("written by cas");
    assert_eq!(v1.value, b"v1");
    assert!(v1.mod_revision > 0);
    c.put(key.clone(), b"v3".to_vec()).await.unwrap();
    // The put moved the revision, so a cas on v1's revision fails and leaves v3.
    assert!(!c
        .cas(key.clone(), v1.mod_revision, b"v4".to_vec())
        .await
        .unwrap());
    let v3 = c
        .get(key.clone(), Consistency::Follower)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v3.value, b"v3");
    assert!(v3.mod_revision > v1.mod_revision);
    assert!(c
        .cas(key.clone(), v3.mod_revision, b"v5".to_vec())
        .await
        .unwrap());
    // A stale read may lag, but it sees some write of this key.
    let stale = c.get(key.clone(), Consistency::Stale).await.unwrap();
    assert!(stale.is_none_or(|v| [&b"v1"[..], b"v3", b"v5"].contains(&v.value.as_slice())));
    for i in 0..5u8 {
        c.put(vec![b'r', b'/', b'0' + i], vec![i]).await.unwrap();
    }
    assert_eq!(
        c.range(
            b"r/".to_vec(),
            b"r0".to_vec(),
            100,
            Consistency::Linearizable
        )
        .await
        .unwrap(),
        5
    );
    assert_eq!(
        c.range(b"r/".to_vec(), b"r0".to_vec(), 3, Consistency::Linearizable)
            .await
            .unwrap(),
        3
    );
    assert!(c.delete(key.clone()).await.unwrap());
    assert!(!c.delete(key.clone()).await.unwrap());
    assert_eq!(c.get(key, Consistency::Linearizable).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_corum_run() {
    let data = tempfile::tempdir().unwrap();
    let local = LocalSystem::start(System::Corum, data.path())
        .await
        .expect("local corum cluster");
    let pids = local.pids();
    // The `corum local` supervisor and three nodes.
    assert_eq!(pids.len(), 4, "{pids:?}");
    assert!(pids.iter().all(|&p| alive(p)));

    operations(&local).await;

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
    let dir = match &local {
        LocalSystem::Corum { cluster, .. } => cluster.dir().to_path_buf(),
        _ => unreachable!(),
    };
    local.stop();
    // Every corum process is gone and the cluster's directory removed.
    assert!(
        pids.iter().all(|&p| !alive(p)),
        "corum processes still running"
    );
    assert!(!dir.exists(), "cluster directory not removed");
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
        // Every counted operation is in exactly one histogram of its kind.
        assert_eq!(r.all.len(), r.ops, "{}", r.config.name);
        assert_eq!(
            r.per_kind.values().map(|h| h.len()).sum::<u64>(),
            r.ops,
            "{}",
            r.config.name
        );
        let cpu = r.cpu.as_ref().expect("local servers' CPU is measured");
        assert!(cpu.cpu_us > 0 && r.cpu_us_per_op().unwrap() > 0.0);
    }
    assert_eq!(get.not_found, 0, "every preloaded key is found");
    // Open loop: exactly the schedule's requests, all answered.
    assert_eq!(rmw.scheduled, Some(600));
    assert_eq!(rmw.ops, 600);
    assert!(rmw.per_kind.keys().any(|k| k.name() == "rmw"));

    let out = tempfile::tempdir().unwrap();
    write_and_check_report(out.path(), "corum", data.path(), &[&put, &get, &rmw]);
}
