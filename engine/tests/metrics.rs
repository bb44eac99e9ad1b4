//! The operations port of real `corum serve` processes: Prometheus `/metrics` over real HTTP
//! (counters move with real writes, `promtool check metrics` accepts the scrape), `/health`,
//! `/ready` (503 before a leader exists and when a node's peers are down, 200 otherwise), junk
//! on the port, and the shipped `deploy/` files (`promtool check rules`, the dashboard's and
//! the alerts' metric names exist in a real scrape).
//!
//! promtool is looked for on PATH and in `target/tools/` (where `scripts/install-promtool.sh`,
//! which `.ci/run` runs before the tests, unpacks it); `cargo test` itself never installs
//! anything or needs the network. Without promtool the promtool checks are skipped, loudly.

mod cli_support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cli_support::*;
use engine::cli::ctl::connect;
use serde_json::Value;

const PUTS: usize = 300;

/// The repository root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_owned()
}

/// promtool, if installed: on PATH, or where `scripts/install-promtool.sh` puts it
/// (`$PROMTOOL_DIR`, default `target/tools/prometheus`). None, after a loud message, if not:
/// installing needs root and the network, which a test must not assume.
fn promtool() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    });
    let dir = std::env::var_os("PROMTOOL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/tools/prometheus"));
    let unpacked = Some(dir.join("usr/bin/promtool")).filter(|p| p.is_file());
    let found = on_path.or(unpacked);
    if found.is_none() {
        // Straight to stderr, not eprintln!: the test harness captures the macros' output of a
        // passing test, and this must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!! SKIPPING the promtool checks (scrape format, deploy/prometheus-alerts.yml): \
             promtool is neither on PATH nor in {}. Run scripts/install-promtool.sh (as .ci/run \
             does) to run them. !!!!!\n",
            dir.display()
        );
    }
    found
}

/// Sends `request` on a fresh connection, half-closes, reads the whole answer.
fn try_raw(addr: &str, request: &[u8]) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request)?;
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn raw(addr: &str, request: &[u8]) -> String {
    try_raw(addr, request).unwrap_or_else(|e| panic!("{addr}: {e}"))
}

/// (status, headers, body) of `GET path` with extra header lines.
fn get_with(addr: &str, path: &str, headers: &str) -> (u16, String, String) {
    let text = raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n")
            .as_bytes(),
    );
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, head.to_owned(), body.to_owned())
}

fn get(addr: &str, path: &str) -> (u16, String) {
    let (status, _, body) = get_with(addr, path, "");
    (status, body)
}

/// Sum of the samples of `name` whose labels include every `label="value"` in `with`.
fn sum(scrape: &str, name: &str, with: &[&str]) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = series.split_once('{').unwrap_or((series, ""));
            (n == name && with.iter().all(|w| labels.contains(w)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Every metric name in a scrape: sample names and `# TYPE` names.
fn names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(rest) => rest.split(' ').next(),
            None if !l.starts_with('#') => l.split(['{', ' ']).next(),
            None => None,
        })
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

fn metrics_addrs(cluster: &Cluster) -> Vec<String> {
    cluster.info["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            n["metrics_addr"]
                .as_str()
                .expect("corum local gives every node a metrics_addr")
                .to_owned()
        })
        .collect()
}

fn promtool_check_metrics(promtool: Option<&Path>, scrape: &str) {
    let Some(promtool) = promtool else { return };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape.as_bytes())
        .expect("write scrape");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- scrape ---\n{scrape}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_status(addr: &str, path: &str, want: u16, timeout: Duration) -> String {
    wait_for(
        &format!("{path} on {addr} to answer {want}"),
        timeout,
        Duration::from_millis(100),
        || {
            // The node may not listen yet.
            try_raw(addr, format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).ok()?;
            let (status, body) = get(addr, path);
            (status == want).then_some(body)
        },
    )
}

#[test]
fn metrics_health_and_ready_on_a_running_cluster() {
    let _serial = serial();
    let promtool = promtool();
    let dir = test_dir("metrics-cluster");
    let mut cluster = Cluster::start(&dir, 3, 1, 8, base_port(0), "");
    let addrs = metrics_addrs(&cluster);
    for a in &addrs {
        let (status, body) = get(a, "/health");
        assert_eq!((status, body.as_str()), (200, "ok\n"), "{a}");
        let body = wait_status(a, "/ready", 200, Duration::from_secs(20));
        assert!(body.starts_with("ready: map epoch 1, "), "{body}");
    }

    // Real writes through the client.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let client = rt
        .block_on(connect(&cluster.seeds(), Duration::from_secs(10)))
        .expect("connect");
    rt.block_on(async {
        for i in 0..PUTS {
            let r = client
                .put(format!("metrics/{i:04}"), format!("v{i}"))
                .await
                .expect("put");
            assert!(r.written);
        }
    });

    let scrapes: Vec<String> = addrs
        .iter()
        .map(|a| {
            let (status, head, body) = get_with(a, "/metrics", "");
            assert_eq!(status, 200, "{a}: {head}");
            assert!(
                head.contains("Content-Type: text/plain; version=0.0.4"),
                "{head}"
            );
            body
        })
        .collect();
    let total =
        |name: &str, with: &[&str]| -> f64 { scrapes.iter().map(|s| sum(s, name, with)).sum() };
    let puts_ok = total("corum_requests_total", &["kind=\"put\"", "result=\"ok\""]);
    assert!(puts_ok >= PUTS as f64, "puts answered ok: {puts_ok}");
    // Every answer the core gave a put is in the latency histogram (none were Busy here), and
    // a replicated, fdatasynced put takes more than nothing.
    let puts_all = total("corum_requests_total", &["kind=\"put\""]);
    let put_latencies = total("corum_request_duration_seconds_count", &["kind=\"put\""]);
    assert_eq!(
        put_latencies, puts_all,
        "put latency observations vs put answers"
    );
    let put_seconds = total("corum_request_duration_seconds_sum", &["kind=\"put\""]);
    assert!(put_seconds > 0.0, "put latency sum {put_seconds}");
    assert_eq!(
        total(
            "corum_request_duration_seconds_bucket",
            &["kind=\"put\"", "le=\"+Inf\""]
        ),
        puts_all
    );
    assert!(total("corum_proposals_total", &[]) >= PUTS as f64);
    assert!(total("corum_proposal_batch_size_count", &[]) >= 1.0);
    for (a, s) in addrs.iter().zip(&scrapes) {
        // Every node holds a replica of every partition (3 replicas, 3 nodes): every WAL
        // wrote and synced.
        assert!(sum(s, "corum_wal_written_bytes_total", &[]) > 0.0, "{a}");
        assert!(sum(s, "corum_wal_syncs_total", &[]) > 0.0, "{a}");
        let fsyncs = sum(s, "corum_wal_fdatasync_duration_seconds_count", &[]);
        assert!(fsyncs > 0.0, "{a}: fdatasync histogram count {fsyncs}");
        assert_eq!(
            sum(s, "corum_partitions", &[]),
            9.0,
            "{a}: 8 + the meta group"
        );
        assert_eq!(sum(s, "corum_node_healthy", &[]), 1.0, "{a}");
        assert_eq!(sum(s, "corum_map_epoch", &[]), 1.0, "{a}");
        assert!(sum(s, "corum_leader_changes_total", &[]) >= 9.0, "{a}");
        assert!(sum(s, "corum_shard_loop_turns_total", &[]) > 0.0, "{a}");
        assert!(sum(s, "process_cpu_seconds_total", &[]) > 0.0, "{a}");
        assert!(sum(s, "process_resident_memory_bytes", &[]) > 1e6, "{a}");
        assert!(
            sum(s, "corum_shard_cpu_seconds_total", &["shard=\"0\""]) > 0.0,
            "{a}"
        );
        promtool_check_metrics(promtool.as_deref(), s);
    }
    // The client's session is in the session table of every partition it wrote to.
    assert!(total("corum_sessions", &[]) >= 1.0);
    assert!(total("corum_client_connections", &[]) >= 1.0);
    // Leaders are unique: the nodes together lead each of the 9 groups once, and every
    // replica knows its leader. (Waited for: on a loaded machine an election may be running.)
    wait_for(
        "every partition led exactly once and every replica knowing its leader",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let scrapes: Vec<String> = addrs.iter().map(|a| get(a, "/metrics").1).collect();
            let led: f64 = scrapes
                .iter()
                .map(|s| sum(s, "corum_partitions_led", &[]))
                .sum();
            let ok = scrapes.iter().all(|s| {
                sum(s, "corum_partitions_without_leader", &[]) == 0.0
                    && sum(s, "corum_node_ready", &[]) == 1.0
            });
            (led == 9.0 && ok).then_some(())
        },
    );

    // OpenMetrics for Prometheus servers that ask for it.
    let (status, head, body) = get_with(
        &addrs[0],
        "/metrics",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
    );
    assert_eq!(status, 200);
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "{body}");

    // The shipped alerts and dashboard: valid, and every corum metric they use exists.
    if let Some(promtool) = &promtool {
        let out = run_bounded(
            Command::new(promtool)
                .args(["check", "rules"])
                .arg(repo().join("deploy/prometheus-alerts.yml")),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let exposed = names(&scrapes[0]);
    for file in [
        "deploy/prometheus-alerts.yml",
        "deploy/grafana-dashboard.json",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).expect(file);
        if file.ends_with(".json") {
            let v: Value = serde_json::from_str(&text).expect("dashboard is JSON");
            assert!(!v["panels"].as_array().expect("panels").is_empty());
        }
        let used: BTreeSet<String> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("corum_"))
            .map(str::to_owned)
            .collect();
        assert!(!used.is_empty(), "{file}");
        let missing: Vec<_> = used.difference(&exposed).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics no node exposes: {missing:?}"
        );
    }

    // Junk on the metrics port gets 400 (or 404/405 for well-formed requests it does not
    // serve), and the node keeps serving.
    let a = &addrs[0];
    for junk in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls hello?\r\n\r\n"[..],
        b"garbage\r\n\r\n",
        b"GET /metrics HTTP/1.0 junk\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /metrics HTTP/9.9\r\n\r\n",
        b"GET /metrics HTTP/1.0\r\nno-colon-header\r\n\r\n",
        b"GET /metrics HTTP/1.0\r\n", // head never finished: 400 when the client closes
    ] {
        let answer = raw(a, junk);
        assert!(
            answer.starts_with("HTTP/1.1 400 "),
            "{:?} -> {answer:?}",
            String::from_utf8_lossy(junk)
        );
    }
    let big = format!("GET /{} HTTP/1.0\r\n\r\n", "x".repeat(20_000));
    assert!(raw(a, big.as_bytes()).starts_with("HTTP/1.1 400 "));
    assert!(raw(a, b"POST /metrics HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 405 "));
    assert!(raw(a, b"GET /nope HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 404 "));
    let answer = raw(a, b"GET /health HTTP/1.0\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.1 200 ") && answer.ends_with("\r\n\r\nok\n"),
        "{answer:?}"
    );
    let answer = raw(a, b"HEAD /metrics HTTP/1.0\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.1 200 ") && answer.ends_with("\r\n\r\n"),
        "{answer:?}"
    );
    // Clients that connect and send nothing (port scanners, half-open checks) do not hold up
    // /health: a worker pool answers it meanwhile. (One connection at a time took 5 x 2 s.)
    let idle: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(a).expect("idle connection"))
        .collect();
    let t = Instant::now();
    let bound = Duration::from_secs(3);
    let mut s = TcpStream::connect(a).expect("connect");
    s.set_read_timeout(Some(bound)).expect("timeout");
    s.write_all(b"GET /health HTTP/1.0\r\n\r\n").expect("send");
    let mut answer = String::new();
    let read = s.read_to_string(&mut answer);
    assert!(
        read.is_ok() && answer.starts_with("HTTP/1.1 200 "),
        "/health behind 5 idle connections: {read:?} {answer:?} after {:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < bound, "{:?}", t.elapsed());
    drop(idle);
    rt.block_on(async {
        assert!(
            client
                .put("metrics/after-junk", "ok")
                .await
                .expect("put")
                .written
        );
    });
    promtool_check_metrics(promtool.as_deref(), &get(a, "/metrics").1);

    // A node whose peers are down: no partition keeps a quorum, so its replicas lose their
    // leader within an election timeout. Not ready, still healthy.
    drop(client);
    cluster.kill9(2);
    cluster.kill9(3);
    let body = wait_status(a, "/ready", 503, Duration::from_secs(15));
    assert!(body.contains("no known leader"), "{body}");
    assert_eq!(get(a, "/health"), (200, "ok\n".to_owned()));
    wait_for(
        "corum_node_ready 0 and partitions without leader",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let s = get(a, "/metrics").1;
            (sum(&s, "corum_node_ready", &[]) == 0.0
                && sum(&s, "corum_partitions_without_leader", &[]) == 9.0)
                .then_some(())
        },
    );
    // Peers back: ready again.
    cluster.restart_node(2);
    cluster.restart_node(3);
    for a in &addrs {
        wait_status(a, "/ready", 200, Duration::from_secs(30));
    }
    cluster.stop();
}

/// `corum serve --metrics-addr` on a fresh node of a 3-node cluster whose peers are not
/// started: healthy, but not ready (no leader, so no cluster map) until they are.
#[test]
fn ready_is_503_until_the_cluster_has_a_leader() {
    let _serial = serial();
    let dir = test_dir("metrics-fresh");
    let tuning = dir.join("tuning.toml");
    std::fs::write(&tuning, tuning_toml("")).expect("tuning");
    let base = engine::cli::local::free_port_block(9);
    let client = |id: u16| format!("127.0.0.1:{}", base + (id - 1) * 3);
    let peer = |id: u16| format!("127.0.0.1:{}", base + (id - 1) * 3 + 1);
    let metrics = |id: u16| format!("127.0.0.1:{}", base + (id - 1) * 3 + 2);
    let peers = (1..=3)
        .map(|id| format!("{id}={}", peer(id)))
        .collect::<Vec<_>>()
        .join(",");
    let start = |id: u16| {
        let log = std::fs::File::create(dir.join(format!("node-{id}.log"))).expect("log");
        let mut cmd = Command::new(CORUM);
        cmd.arg("serve")
            .arg("--config")
            .arg(&tuning)
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(dir.join(format!("node-{id}")))
            .args(["--client-addr", &client(id)])
            .args(["--peer-addr", &peer(id)])
            .args(["--peers", &peers])
            .args(["--shards", "1", "--partitions", "4"])
            .args(["--metrics-addr", &metrics(id)])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        Guard::spawn(&format!("node {id}"), &mut cmd)
    };
    let mut n1 = start(1);
    let m1 = metrics(1);
    wait_status(&m1, "/health", 200, Duration::from_secs(20));
    // Well past an election timeout: still no leader, so no map.
    std::thread::sleep(ELECTION_TIMEOUT_MAX * 3);
    let (status, body) = get(&m1, "/ready");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no cluster map"), "{body}");
    assert!(n1.alive());
    let _n2 = start(2);
    let _n3 = start(3);
    for id in 1..=3 {
        let body = wait_status(&metrics(id), "/ready", 200, Duration::from_secs(30));
        assert!(body.contains("5 partitions here"), "{body}");
    }
}
