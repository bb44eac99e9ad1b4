//! The gateway against real etcd clients and a real corum cluster: a 3-node `corum local`
//! (three `corum` processes, built with `cargo build --release -p engine --bin corum` when
//! needed, see `loadgen::localcorum`), the gateway served in-process on a random port, and
//! `etcdctl` 3.4, the Rust `etcd-client` crate, python-etcd3 0.12
//! (`tests/python/etcd3_client.py`, run as a process) and raw connections driving it. One
//! cluster for the whole file keeps the test short.
//!
//! `etcdctl` is looked for on PATH (`scripts/install-etcd.sh` installs it; `.ci/run` runs it
//! before the tests) and python-etcd3 in the virtualenv `scripts/install-python-etcd3.sh` makes
//! (also run by `.ci/run`); without one of them its part is skipped, loudly: installing needs
//! root and the network, which a test must not assume.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::pb::etcdserverpb as epb;
use gateway::Gateway;
use loadgen::localcorum::{CorumLaunch, LocalCorum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::client::{Client, ClientConfig};

/// Deadline of every wait in this file.
const WAIT: Duration = Duration::from_secs(30);

/// `etcdctl` on PATH, if it is there. None, after a loud message, if not.
fn etcdctl_path() -> Option<String> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("etcdctl"))
            .find(|p| p.is_file())
    });
    if let Some(p) = found {
        return Some(p.display().to_string());
    }
    // Straight to stderr, not eprintln!: the test harness captures the macros' output of a
    // passing test, and this must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!! SKIPPING the etcdctl checks: no etcdctl on PATH. Run scripts/install-etcd.sh \
         (as .ci/run does) to run them. !!!!!\n"
    );
    None
}

/// The python of the virtualenv with python-etcd3 that `scripts/install-python-etcd3.sh` makes
/// (`$PYTHON_ETCD3_VENV`, default `target/tools/python-etcd3`), if it is there. None, after a
/// loud message, if not.
fn python_etcd3() -> Option<PathBuf> {
    let venv = std::env::var_os("PYTHON_ETCD3_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/python-etcd3")
        });
    let python = venv.join("bin/python");
    if python.is_file() {
        return Some(python);
    }
    // Straight to stderr, not eprintln!: the test harness captures the macros' output of a
    // passing test, and this must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!! SKIPPING the python-etcd3 checks: no virtualenv at {}. Run \
         scripts/install-python-etcd3.sh (as .ci/run does) to run them. !!!!!\n",
        venv.display()
    );
    None
}

struct Harness {
    /// Stops the gateway when dropped (the server's shutdown future completes).
    _stop: tokio::sync::oneshot::Sender<()>,
    corum: LocalCorum,
    client: Client,
    addr: String,
    /// None: not installed, the etcdctl parts are skipped.
    etcdctl: Option<String>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Harness {
        let etcdctl = etcdctl_path();
        let dir = tempfile::tempdir().expect("temporary directory");
        let corum = LocalCorum::start(dir.path(), &CorumLaunch::default())
            .await
            .expect("a 3-node corum cluster starts");
        let client = Client::connect(ClientConfig::new(corum.endpoints().to_vec()))
            .await
            .expect("the corum client connects");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let gw = Arc::new(Gateway::new(client.clone(), vec![format!("http://{addr}")]));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(gateway::serve(listener, gw, async {
            let _ = stopped.await;
        }));
        let h = Harness {
            _stop: stop,
            corum,
            client,
            addr,
            etcdctl,
            _dir: dir,
        };
        // The gateway serves once its gRPC health service says SERVING.
        let deadline = Instant::now() + WAIT;
        loop {
            match h.health().await {
                Ok(1) => break,
                other => assert!(
                    Instant::now() < deadline,
                    "waited {WAIT:?} for the gateway's health service to say SERVING; last: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        h
    }

    /// The overall status of `grpc.health.v1.Health` (1: SERVING).
    async fn health(&self) -> Result<i32, String> {
        use tonic_health::pb::health_client::HealthClient;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let mut c = HealthClient::new(channel);
        let r = c
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(r.into_inner().status)
    }

    /// Runs etcdctl (API 3) against the gateway; returns (success, stdout, stderr).
    async fn etcdctl_raw(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let etcdctl = self
            .etcdctl
            .as_deref()
            .expect("only called when etcdctl is there");
        let mut cmd = tokio::process::Command::new(etcdctl);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.addr))
            .arg("--command-timeout=10s")
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("etcdctl starts");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(text.as_bytes()).await.unwrap();
            drop(pipe);
        }
        let out = tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("etcdctl {args:?} did not finish within {WAIT:?}"))
            .expect("etcdctl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs etcdctl and requires success; returns stdout.
    async fn etcdctl(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.etcdctl_raw(args, None).await;
        assert!(ok, "etcdctl {args:?} failed:\nstdout: {out}\nstderr: {err}");
        out
    }

    /// The gateway's own generated KV client (tonic 0.14).
    async fn kv(&self) -> epb::kv_client::KvClient<tonic::transport::Channel> {
        epb::kv_client::KvClient::connect(format!("http://{}", self.addr))
            .await
            .expect("gRPC connection to the gateway")
    }

    /// The gateway still answers a linearizable read.
    async fn still_serves(&self, after: &str) {
        let r = self
            .kv()
            .await
            .range(epb::RangeRequest {
                key: "t/a".into(),
                ..Default::default()
            })
            .await;
        assert!(
            r.is_ok(),
            "the gateway stopped serving after {after}: {r:?}"
        );
    }
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_tools_and_libraries_work_through_the_gateway() {
    let h = Harness::start().await;
    let etcdctl = h.etcdctl.is_some();
    if etcdctl {
        etcdctl_kv(&h).await;
        etcdctl_txn(&h).await;
        etcdctl_cluster_and_maintenance(&h).await;
        etcdctl_refusals(&h).await;
    }
    etcd_client_crate(&h).await;
    cross_partition_txn(&h).await;
    python_etcd3_client(&h).await;
    bad_input(&h).await;
    if etcdctl {
        sort_without_order(&h).await;
    }
    many_keys(&h).await;
    // Last: it kills a node.
    if etcdctl {
        status_with_a_node_down(&h).await;
    }
    drop(h.corum);
}

async fn etcdctl_kv(h: &Harness) {
    for (k, v) in [("t/a", "3"), ("t/b", "1"), ("t/c", "2"), ("u/x", "9")] {
        assert_eq!(h.etcdctl(&["put", k, v]).await, "OK\n");
    }
    assert_eq!(lines(&h.etcdctl(&["get", "t/a"]).await), ["t/a", "3"]);
    assert_eq!(h.etcdctl(&["get", "t/none"]).await, "");
    assert_eq!(
        lines(&h.etcdctl(&["get", "--prefix", "t/"]).await),
        ["t/a", "3", "t/b", "1", "t/c", "2"]
    );
    assert_eq!(
        lines(&h.etcdctl(&["get", "--prefix", "t/", "--limit", "2"]).await),
        ["t/a", "3", "t/b", "1"]
    );
    assert_eq!(
        lines(&h.etcdctl(&["get", "--prefix", "t/", "--keys-only"]).await),
        ["t/a", "", "t/b", "", "t/c", ""]
    );
    assert_eq!(
        lines(&h.etcdctl(&["get", "--from-key", "t/b"]).await),
        ["t/b", "1", "t/c", "2", "u/x", "9"]
    );
    assert_eq!(
        lines(
            &h.etcdctl(&[
                "get",
                "--prefix",
                "t/",
                "--sort-by=VALUE",
                "--order=DESCEND"
            ])
            .await
        ),
        ["t/a", "3", "t/c", "2", "t/b", "1"]
    );
    assert_eq!(
        lines(&h.etcdctl(&["get", "t/a", "t/c"]).await),
        ["t/a", "3", "t/b", "1"],
        "an explicit range end is exclusive"
    );
    // count and more: the whole range is counted though only one key is returned. (etcdctl
    // 3.4 has no --count-only flag; the etcd-client part checks count_only.)
    let json = h
        .etcdctl(&["get", "--prefix", "t/", "--limit", "1", "-w", "json"])
        .await;
    assert!(json.contains("\"more\":true"), "{json}");
    assert!(json.contains("\"count\":3"), "{json}");
    // Serializable reads are corum stale reads: a follower may lag for a moment.
    let deadline = Instant::now() + WAIT;
    loop {
        let out = h
            .etcdctl(&["get", "t/a", "--consistency=s", "--print-value-only"])
            .await;
        if out == "3\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "waited {WAIT:?} for a serializable read of t/a to return 3; last: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // put --prev-kv
    assert_eq!(
        lines(&h.etcdctl(&["put", "t/a", "4", "--prev-kv"]).await),
        ["OK", "t/a", "3"]
    );
    // del: one key, then a prefix (with the deleted pairs).
    assert_eq!(h.etcdctl(&["del", "u/x"]).await, "1\n");
    assert_eq!(h.etcdctl(&["del", "u/x"]).await, "0\n");
    assert_eq!(
        lines(&h.etcdctl(&["del", "--prefix", "t/", "--prev-kv"]).await),
        ["3", "t/a", "4", "t/b", "1", "t/c", "2"]
    );
    assert_eq!(h.etcdctl(&["get", "--prefix", "t/"]).await, "");
    // Put t/a back for the "still serves" probes.
    h.etcdctl(&["put", "t/a", "3"]).await;
}

async fn etcdctl_txn(h: &Harness) {
    h.etcdctl(&["put", "{acct}balance", "10"]).await;
    // Interactive txn script on stdin: compares, blank line, success ops, blank line, failure
    // ops, blank line.
    let script = "value(\"{acct}balance\") = \"10\"\n\nput {acct}balance 20\nput {acct}log debit\n\nget {acct}balance\n\n";
    let (ok, out, err) = h.etcdctl_raw(&["txn", "-i"], Some(script)).await;
    assert!(ok, "txn failed: {out} {err}");
    assert!(out.contains("SUCCESS\n\nOK\n\nOK\n"), "{out}");
    // The same script again: the compare fails now, the failure branch reads the value.
    let (ok, out, err) = h.etcdctl_raw(&["txn"], Some(script)).await;
    assert!(ok, "txn failed: {out} {err}");
    assert_eq!(lines(&out), ["FAILURE", "", "{acct}balance", "20"]);
    // Version and mod-revision compares.
    let script =
        "version(\"{acct}balance\") = \"2\"\nmod(\"{acct}log\") > \"0\"\n\ndel {acct}log\n\n\n";
    let (ok, out, err) = h.etcdctl_raw(&["txn"], Some(script)).await;
    assert!(ok, "txn failed: {out} {err}");
    assert_eq!(lines(&out), ["SUCCESS", "", "1"]);
}

async fn etcdctl_cluster_and_maintenance(h: &Harness) {
    // etcdctl 3.4 prints the health line on stderr.
    let (ok, out, err) = h.etcdctl_raw(&["endpoint", "health"], None).await;
    assert!(ok, "endpoint health failed: {out} {err}");
    assert!(
        err.starts_with(&format!("{} is healthy", h.addr)),
        "{out} {err}"
    );
    // endpoint status: ENDPOINT, ID, VERSION, DB SIZE, IS LEADER, IS LEARNER, TERM, INDEX, ..
    let out = h.etcdctl(&["endpoint", "status"]).await;
    let fields: Vec<&str> = out.trim().split(", ").collect();
    assert_eq!(fields[0], h.addr, "{out}");
    assert_eq!(fields[2], gateway::VERSION, "{out}");
    // The gateway is not a corum member: its header names member 0, so it is never the
    // leader (the Status response's `leader` names the meta group's leader node).
    assert_eq!(fields[1], "0", "{out}");
    assert_eq!(fields[4], "false", "{out}");
    let members = h.etcdctl(&["member", "list"]).await;
    let url = format!("http://{}", h.addr);
    assert_eq!(
        lines(&members),
        [
            format!("1, started, node-1, , {url}, false"),
            format!("2, started, node-2, , {url}, false"),
            format!("3, started, node-3, , {url}, false"),
        ]
    );
    assert_eq!(h.etcdctl(&["alarm", "list"]).await, "");
    assert!(h
        .etcdctl(&["defrag"])
        .await
        .starts_with("Finished defragmenting"));
    assert_eq!(
        h.etcdctl(&["compaction", "1"]).await,
        "compacted revision 1\n"
    );
}

async fn etcdctl_refusals(h: &Harness) {
    for (args, want) in [
        (
            vec!["get", "t/a", "--rev", "1"],
            "reads at a past revision are not supported",
        ),
        (vec!["lease", "grant", "10"], "leases are not supported yet"),
        (vec!["member", "remove", "1"], "issue 11"),
        (vec!["watch", "t/a"], "watch is not supported yet"),
    ] {
        let (ok, out, err) = h.etcdctl_raw(&args, None).await;
        assert!(!ok, "etcdctl {args:?} succeeded: {out}");
        assert!(
            err.contains("Unimplemented") && err.contains(want),
            "etcdctl {args:?}: {err}"
        );
    }
}

async fn etcd_client_crate(h: &Harness) {
    use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
    let mut c = etcd_client::Client::connect([h.addr.as_str()], None)
        .await
        .expect("etcd-client connects to the gateway");
    c.put("{ec}1", "one", None).await.unwrap();
    c.put("{ec}2", "two", None).await.unwrap();
    let r = c
        .get("{ec}", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let got: Vec<(&str, &str)> = r
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap(), kv.value_str().unwrap()))
        .collect();
    assert_eq!(got, [("{ec}1", "one"), ("{ec}2", "two")]);
    assert_eq!(r.count(), 2);
    let r = c
        .get(
            "{ec}",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!((r.count(), r.kvs().len(), r.more()), (2, 0, false));
    // put --ignore-value keeps the value (and needs the key to exist).
    use etcd_client::PutOptions;
    let r = c
        .put(
            "{ec}1",
            "",
            Some(PutOptions::new().with_ignore_value().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(r.prev_key().unwrap().value_str().unwrap(), "one");
    let r = c.get("{ec}1", None).await.unwrap();
    assert_eq!(
        (r.kvs()[0].value_str().unwrap(), r.kvs()[0].version()),
        ("one", 2)
    );
    let err = c
        .put(
            "{ec}missing",
            "",
            Some(PutOptions::new().with_ignore_value()),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("etcdserver: key not found"),
        "{err}"
    );
    // Revision filters apply to the returned keys; count stays the whole range's, as in etcd.
    let mod1 = r.kvs()[0].mod_revision();
    let r = c
        .get(
            "{ec}",
            Some(GetOptions::new().with_prefix().with_min_mod_revision(mod1)),
        )
        .await
        .unwrap();
    // Both keys share the partition of the hash tag "ec", so their revisions are comparable:
    // {ec}1 was written (by the ignore-value put) after {ec}2, and only it passes.
    let keys: Vec<&[u8]> = r.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(keys, [&b"{ec}1"[..]], "{:?}", r.kvs());
    assert_eq!(r.count(), 2, "count is the range's, before the filters");
    // A compare-and-set on one key.
    let txn = Txn::new()
        .when([Compare::value("{ec}1", CompareOp::Equal, "one")])
        .and_then([TxnOp::put("{ec}1", "uno", None)])
        .or_else([TxnOp::get("{ec}1", None)]);
    assert!(c.txn(txn.clone()).await.unwrap().succeeded());
    assert!(!c.txn(txn).await.unwrap().succeeded());
    let r = c
        .delete(
            "{ec}",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(r.deleted(), 2);
    let members = c.member_list().await.unwrap();
    assert_eq!(members.members().len(), 3);
    let status = c.status().await.unwrap();
    assert_eq!(status.version(), gateway::VERSION);
    // An empty key gets etcd's exact error.
    let err = c.put("", "v", None).await.unwrap_err();
    assert!(
        err.to_string().contains("etcdserver: key is not provided"),
        "{err}"
    );
}

/// "x0" and a key the cluster map puts in another partition.
fn keys_in_two_partitions(h: &Harness) -> (String, String) {
    let map = h.client.cluster_map();
    let first = map.partition_of_key(b"x0").unwrap().id;
    let other = (1..1000)
        .map(|i| format!("x{i}"))
        .find(|k| map.partition_of_key(k.as_bytes()).unwrap().id != first)
        .expect("some key in another partition");
    ("x0".to_owned(), other)
}

async fn cross_partition_txn(h: &Harness) {
    let (first, other) = keys_in_two_partitions(h);
    let put = |k: &str| epb::RequestOp {
        request: Some(epb::request_op::Request::RequestPut(epb::PutRequest {
            key: k.to_owned().into(),
            value: "v".into(),
            ..Default::default()
        })),
    };
    let err = h
        .kv()
        .await
        .txn(epb::TxnRequest {
            compare: Vec::new(),
            success: vec![put(&first), put(&other)],
            failure: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    for key in [&first, &other] {
        assert!(
            err.message().contains(&format!("\"{key}\"")),
            "{}",
            err.message()
        );
    }
    assert!(err.message().contains("{hash tag}"), "{}", err.message());
    h.still_serves("a cross-partition transaction").await;
}

/// The checks of `tests/python/etcd3_client.py`, each printed as `ok: NAME` when it passes.
const PYTHON_CHECKS: [&str; 7] = [
    "put_get",
    "prefix_and_sort",
    "delete_and_delete_prefix",
    "transactions",
    "cross_partition_transaction",
    "cluster_and_maintenance",
    "refusals",
];

/// python-etcd3 0.12 (a real Python process): put/get, prefixes, sorting, deletes,
/// transactions with every compare target in both branches, replace(), put_if_not_exists(),
/// members, status, refusals and a cross-partition transaction's `FailedPrecondition`.
async fn python_etcd3_client(h: &Harness) {
    let Some(python) = python_etcd3() else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/etcd3_client.py");
    let (a, b) = keys_in_two_partitions(h);
    let child = tokio::process::Command::new(&python)
        .arg(&script)
        .args(["--endpoint", &h.addr, "--version", gateway::VERSION])
        .arg(format!("--cross-keys={a},{b}"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{} starts: {e}", python.display()));
    let out = tokio::time::timeout(2 * WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{} did not finish within {:?}", script.display(), 2 * WAIT))
        .expect("the python-etcd3 script runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = format!("{}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(out.status.success(), "python-etcd3 checks failed: {report}");
    for name in PYTHON_CHECKS {
        assert!(
            stdout.lines().any(|l| l == format!("ok: {name}")),
            "python-etcd3 check {name} did not pass: {report}"
        );
    }
    assert_eq!(
        stdout.lines().last(),
        Some(format!("python-etcd3: {} checks, 0 failed", PYTHON_CHECKS.len()).as_str()),
        "{report}"
    );
    h.still_serves("the python-etcd3 checks").await;
}

async fn bad_input(h: &Harness) {
    // An unknown method of a known service.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", h.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<epb::RangeRequest, epb::RangeResponse>::default();
    let err = grpc
        .unary(
            tonic::Request::new(epb::RangeRequest::default()),
            tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Nope"),
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    h.still_serves("an unknown method").await;

    // A value over corum's 1 MiB limit (the gRPC message is under the gateway's 2 MiB):
    // etcd's "request is too large". A message over the gateway's gRPC limit is refused by
    // the gRPC layer before any corum call.
    for (len, want) in [
        ((1 << 20) + 1, tonic::Code::InvalidArgument),
        (3 << 20, tonic::Code::OutOfRange),
    ] {
        let err = h
            .kv()
            .await
            .put(epb::PutRequest {
                key: "big".into(),
                value: vec![b'v'; len].into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), want, "{err:?}");
        if want == tonic::Code::InvalidArgument {
            assert_eq!(err.message(), "etcdserver: request is too large");
        } else {
            // tonic's decoder refused it before any corum call.
            assert!(
                err.message().contains("decoded message length too large"),
                "{err:?}"
            );
        }
        h.still_serves(&format!("a put of {len} bytes")).await;
    }

    // Garbage, then an HTTP/1 request, on the gRPC port: the connection is closed (or answered
    // with an error) and the gateway keeps serving.
    for (what, bytes) in [
        (
            "garbage",
            &b"\x00\xff\x13garbage\x00\x00\x00\x01\x02 not http/2 at all"[..],
        ),
        (
            "an HTTP/1 request",
            &b"GET /etcdserverpb.KV/Range HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        ),
    ] {
        let mut s = TcpStream::connect(&h.addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "waited {WAIT:?} for the gateway to close a connection that sent {what}"
        );
        h.still_serves(what).await;
    }
}

/// etcd sorts by a target other than the key without an order (etcdctl `--sort-by` without
/// `--order`) over the first `limit` + 1 keys in key order, not over the whole range.
async fn sort_without_order(h: &Harness) {
    // One partition (hash tag "so"), written in reverse key order: d has the smallest mod
    // revision, a the largest.
    for k in ["{so}d", "{so}c", "{so}b", "{so}a"] {
        h.etcdctl(&["put", k, "v"]).await;
    }
    assert_eq!(
        lines(
            &h.etcdctl(&[
                "get",
                "--prefix",
                "{so}",
                "--sort-by=MODIFY",
                "--limit",
                "2"
            ])
            .await
        ),
        ["{so}c", "v", "{so}b", "v"],
        "a, b, c read in key order, sorted by mod revision, cut to 2"
    );
    // With an order the whole range is sorted.
    assert_eq!(
        lines(
            &h.etcdctl(&[
                "get",
                "--prefix",
                "{so}",
                "--sort-by=MODIFY",
                "--order=ASCEND",
                "--limit",
                "2"
            ])
            .await
        ),
        ["{so}d", "v", "{so}c", "v"]
    );
    h.etcdctl(&["del", "--prefix", "{so}"]).await;
}

/// A range of more keys than one page (the gateway pages by 1000): count, more and limits at
/// the page boundary, count_only over several pages, and a prefix delete over several pages.
async fn many_keys(h: &Harness) {
    const N: usize = 2500;
    let mut puts = tokio::task::JoinSet::new();
    let mut next = 0;
    while next < N || !puts.is_empty() {
        while next < N && puts.len() < 64 {
            let client = h.client.clone();
            let key = format!("many/{next:05}");
            puts.spawn(async move { client.put(key, "v").await });
            next += 1;
        }
        if let Some(r) = puts.join_next().await {
            r.unwrap().expect("a put of a many/ key");
        }
    }
    let prefix = |limit: i64, count_only: bool| epb::RangeRequest {
        key: "many/".into(),
        range_end: "many0".into(),
        limit,
        count_only,
        ..Default::default()
    };
    let mut kv = h.kv().await;
    for limit in [999, 1000, 1001] {
        let r = kv.range(prefix(limit, false)).await.unwrap().into_inner();
        assert_eq!(
            (r.kvs.len(), r.count, r.more),
            (usize::try_from(limit).unwrap(), N as i64, true),
            "limit {limit}"
        );
        let want = format!("many/{:05}", limit - 1);
        assert_eq!(r.kvs.last().unwrap().key, want.as_bytes(), "limit {limit}");
    }
    let r = kv.range(prefix(0, false)).await.unwrap().into_inner();
    assert_eq!((r.kvs.len(), r.count, r.more), (N, N as i64, false));
    let r = kv.range(prefix(0, true)).await.unwrap().into_inner();
    assert_eq!((r.kvs.len(), r.count, r.more), (0, N as i64, false));
    if h.etcdctl.is_some() {
        let out = h.etcdctl(&["del", "--prefix", "many/"]).await;
        assert_eq!(out, format!("{N}\n"));
        let r = kv.range(prefix(0, true)).await.unwrap().into_inner();
        assert_eq!(r.count, 0, "nothing is left after del --prefix");
    }
}

/// `etcdctl endpoint status` keeps working with one corum node down (it asks every node and
/// skips the ones that do not answer).
async fn status_with_a_node_down(h: &Harness) {
    let pid = h.corum.node_pids()[0];
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success(), "kill -9 {pid}");
    // The meta group may have lost its leader: give it an election.
    let deadline = Instant::now() + WAIT;
    loop {
        let (ok, out, err) = h.etcdctl_raw(&["endpoint", "status"], None).await;
        if ok {
            assert!(out.starts_with(&h.addr), "{out}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "waited {WAIT:?} for endpoint status with a node down; last: {out} {err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
