//! Regression test. The bug, found by corum-chaos: after a partition healed, corum's peer
//! connections recovered only when TCP's retransmission timer next fired, because the peer
//! dialer (`engine/src/server/net.rs`, `peer_dialer`) never gave up on a connection whose writes
//! stopped being acknowledged (no write deadline, no `TCP_USER_TIMEOUT`, no idle/heartbeat
//! check). After a long partition the retransmission timer had backed off exponentially, so the
//! cluster stayed without a leader for seconds after every node could reach every other again:
//! on ef39652 the first write came 6.1-8.0 s after the heal (6 runs), every peer socket at
//! `rto:13056 backoff:6`.
//!
//! FIXED by commit d755d0e ("engine: peer connections that stall are dropped and redialed
//! within a bound derived from the election timeout"): `TCP_USER_TIMEOUT` and a write timeout of
//! T (the peer timeout, 2 s with the defaults), keepalives after T/4 idle, connection attempts
//! bounded by T/4, redial backoff capped at T/8, silent and replaced incoming connections
//! closed. Since then: 0.7-1.05 s in 7 runs (`bench-results/2026-11-27-chaos-bugfixes.md`).
//!
//! Scenario: 3 nodes in namespaces; every node cut off from the other two (nftables) for
//! `CUT_S` seconds, so no partition has a quorum; then heal, and time the first acknowledged
//! write. Expected: within two maximal election timeouts plus a backoff
//! ([`chaos::run::SLOW_RECOVERY_MS`]); the socket state right before the heal (`ss -tino`:
//! `timer:(on,Ns,k)` with k retransmissions, `backoff:k`) is printed as evidence.
//!
//! Ignored in a plain `cargo test` (needs root, `ip` and `nft`, and a fresh
//! `target/release/corum`, which `cargo test -p chaos` does not build); `.ci/run` builds corum
//! and runs it (about 25 s). By hand:
//! `cargo build --release -p engine --bin corum && cargo test -p chaos --release --test peer_stall -- --ignored --nocapture`
//! (`CORUM_BIN=path/to/corum` runs another build of corum).

use std::path::PathBuf;
use std::time::Duration;

use chaos::net::{self, Net, RunLock};
use chaos::nodes::{client_endpoint, Layout, Nodes};
use chaos::observe;
use tokio::time::Instant;
use wire::client::{Client, ClientConfig};

/// How long every node is cut off.
const CUT_S: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, iproute2, nftables and target/release/corum"]
async fn writes_resume_soon_after_a_full_partition_heals() {
    // CORUM_BIN runs another build (e.g. an older commit, for a same-run A/B).
    let corum = std::env::var_os("CORUM_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/corum"),
        PathBuf::from,
    );
    assert!(
        corum.exists(),
        "build it first: cargo build --release -p engine"
    );
    net::preflight().expect("root, ip and nft");
    let _lock = RunLock::take().expect("no other corum-chaos run");
    net::cleanup_leftovers();
    let dir = std::env::temp_dir().join(format!("corum-peer-stall-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Declared before the nodes so it is dropped after them: processes die, then namespaces.
    let net = Net::create(3, false).expect("namespaces");
    let mut nodes = Nodes::new(
        &corum,
        &dir,
        Layout {
            nodes: 3,
            partitions: 8,
            replicas: 3,
        },
    );
    nodes.start_all(&net).expect("start");
    let endpoints: Vec<(u64, String)> = (1..=3).map(|i| (i, client_endpoint(i))).collect();
    let seeds: Vec<String> = endpoints.iter().map(|e| e.1.clone()).collect();
    let mut cfg = ClientConfig::new(seeds);
    cfg.request_timeout = Duration::from_secs(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        match Client::connect(cfg.clone()).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "cluster did not start: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    loop {
        let problems = observe::health_problems(&observe::statuses(&client, &endpoints).await);
        if problems.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no leaders: {problems:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Some traffic, so every peer connection is established and carries data.
    // (A loaded machine may time one out, or hold an election: each is retried until the
    // start deadline.)
    for i in 0..200 {
        while let Err(e) = client.put(format!("k{}", i % 16), format!("v{i}")).await {
            assert!(Instant::now() < deadline, "put before the cut: {e}");
        }
    }

    for id in 1..=3u64 {
        let others: Vec<u64> = (1..=3).filter(|&o| o != id).collect();
        net.drop_from(id, &others).expect("cut");
    }
    // Writes keep trying during the cut, so frames queue on the stalled connections.
    let cut_end = Instant::now() + Duration::from_secs(CUT_S);
    while Instant::now() < cut_end {
        let _ = client.put("during", "cut").await;
    }
    // The socket state is printed just before the heal (removing the rules changes no TCP
    // timer), so printing it does not count against the recovery time.
    for id in 1..=3 {
        println!("== node {id} right before the heal\n{}", net.sockets(id));
    }
    net.heal().expect("heal");
    let healed = Instant::now();
    let recovered = loop {
        if client.put("after", "heal").await.is_ok() {
            break healed.elapsed();
        }
        assert!(
            healed.elapsed() < Duration::from_secs(30),
            "no write succeeded within 30 s of healing"
        );
    };
    println!(
        "first acknowledged write {} ms after the heal",
        recovered.as_millis()
    );
    nodes.kill_all();
    drop(nodes);
    drop(net);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        recovered.as_millis() as u64 <= chaos::run::SLOW_RECOVERY_MS,
        "writes resumed only {} ms after a {CUT_S} s partition healed (expected <= {} ms)",
        recovered.as_millis(),
        chaos::run::SLOW_RECOVERY_MS
    );
}
