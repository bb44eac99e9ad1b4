//! `corum local`: a whole cluster on loopback, as child processes of `corum serve`.
//!
//! # Layout of `--dir DIR`
//! ```text
//! DIR/cluster.json          what is running (see below); rewritten with "ready": true
//! DIR/node-<id>/corum.toml  the node's full config (`corum serve --config` reads it)
//! DIR/node-<id>/corum.log   the node's stdout and stderr (its tracing log)
//! DIR/node-<id>/data/       the node's WAL and snapshots
//! DIR/tls/                  with --tls: ca.pem, client.pem, client-key.pem, node-<id>.pem,
//!                           node-<id>-key.pem (`super::certs`)
//! ```
//! When `DIR/node-1/corum.toml` already exists, `corum local` **restarts that cluster**: it reuses
//! every node's config (addresses, shards, partitions, tuning) and data, and ignores the layout
//! flags (`--nodes`, `--shards`, `--partitions`, `--replicas`, `--base-port`, `--tuning`).
//!
//! # Ports
//! Starting at `--base-port`, each node takes `shards` consecutive free client ports, then
//! `shards` consecutive free peer ports (a port is free when 127.0.0.1 can bind it now); ports in
//! use are skipped. After every node's client and peer ports, each node takes one free port for
//! its operations HTTP endpoint (`metrics_addr`: `/metrics`, `/health`, `/ready`), unless
//! `--no-metrics`.
//!
//! # cluster.json
//! ```json
//! { "version": 1, "ready": true, "supervisor_pid": 4242, "shards": 1, "partitions": 64,
//!   "replicas": 3, "endpoints": "127.0.0.1:7000,127.0.0.1:7002,127.0.0.1:7004",
//!   "nodes": [ { "id": 1, "pid": 4243, "client_addr": "127.0.0.1:7000",
//!                "peer_addr": "127.0.0.1:7001", "client_endpoints": ["127.0.0.1:7000"],
//!                "metrics_addr": "127.0.0.1:7006",
//!                "data_dir": "DIR/node-1/data", "config": "DIR/node-1/corum.toml",
//!                "log": "DIR/node-1/corum.log" }, ... ],
//!   "tls": null }
//! ```
//! With `--tls`, `"tls"` is `{ "ca": "DIR/tls/ca.pem", "cert": "DIR/tls/client.pem",
//! "key": "DIR/tls/client-key.pem" }`: what `corum ctl --cacert --cert --key` takes.
//! It is written (atomically, through a rename) once the children are started, with
//! `"ready": false`, and again with `"ready": true` once every shard of every node answers
//! Status and every partition has a leader.
//!
//! # Life cycle
//! - Children run in their own process group (so a terminal's Ctrl-C reaches only
//!   `corum local`, which then stops them in order) and get SIGTERM if `corum local` itself dies
//!   (`PR_SET_PDEATHSIG`).
//! - Ctrl-C (SIGINT) or SIGTERM: SIGTERM to every child, wait up to `--grace-ms`, then SIGKILL
//!   whatever is left. Exit 0.
//! - A child that exits before the cluster is ready is a start-up failure: the others are
//!   stopped and `corum local` exits 1 (see the node's `corum.log`).
//! - A child that exits after the cluster is ready is reported (with the command that restarts
//!   it) and **the others keep serving**: a cluster survives the loss of a minority, and being
//!   able to kill -9 a node and watch it recover is what a local cluster is for. When every child
//!   has exited, `corum local` exits 1.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::config::{NodeConfig, TlsFiles, Tuning};

/// Flags of `corum local`.
#[derive(Debug, Clone, Args)]
pub struct LocalArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Directory for the cluster (configs, logs, data, cluster.json); an existing cluster there
    /// is restarted.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Shards per node (1 by default, so several nodes share a small machine).
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// Partitions (Raft groups).
    #[arg(long, default_value_t = crate::config::PARTITIONS_DEFAULT)]
    pub partitions: u32,
    /// Replicas per partition [default: min(3, nodes)].
    #[arg(long)]
    pub replicas: Option<usize>,
    /// First port to try; busy ports are skipped.
    #[arg(long, default_value_t = 7000)]
    pub base_port: u16,
    /// TOML file with a [tuning] table (tick_ms, election_ticks_min, snapshot_log_bytes, ...)
    /// given to every node.
    #[arg(long, value_name = "FILE")]
    pub tuning: Option<PathBuf>,
    /// How long to wait for the cluster to become ready, in milliseconds.
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    pub ready_timeout_ms: u64,
    /// How long stopping nodes get between SIGTERM and SIGKILL, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    pub grace_ms: u64,
    /// Give the nodes no metrics port (`metrics_addr`); by default each gets one.
    #[arg(long)]
    pub no_metrics: bool,
    /// Start a new cluster from a backup (`corum ctl backup --out DIR`): every node's data
    /// directory is restored from it before the nodes start (`corum restore`). Refused when
    /// `--dir` already holds a cluster. `--partitions` must be the backup's.
    #[arg(long, value_name = "BACKUP_DIR")]
    pub restore_from: Option<PathBuf>,
    /// TLS on every client and peer port (peers with mutual TLS): a new test CA, node and
    /// client certificates are written to DIR/tls/ and listed in cluster.json.
    #[arg(long)]
    pub tls: bool,
}

/// Why `corum local` could not set up the cluster.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Bad flags or tuning file (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A file or process operation failed (exit 1).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalError {
    let what = what.into();
    move |source| LocalError::Io { what, source }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TuningFile {
    #[serde(default)]
    tuning: Tuning,
}

/// Reads a `--tuning` file: a TOML document with a `[tuning]` table.
pub fn read_tuning(path: &Path) -> Result<Tuning, LocalError> {
    let text = std::fs::read_to_string(path).map_err(io(format!("read {}", path.display())))?;
    let file: TuningFile = toml::from_str(&text)
        .map_err(|e| LocalError::Usage(format!("tuning file {}: {e}", path.display())))?;
    Ok(file.tuning)
}

/// `n` consecutive loopback ports that were free when checked, starting at a port the kernel
/// picked (so concurrent callers rarely collide, unlike a fixed `--base-port`). For tests and
/// examples that start nodes in-process; a port may still be taken between the check and the
/// bind.
pub fn free_port_block(n: u16) -> u16 {
    loop {
        let Ok(probe) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = probe.local_addr() else {
            continue;
        };
        drop(probe);
        let base = addr.port();
        if base > 60000 {
            continue;
        }
        let all: Vec<_> = (0..n)
            .map(|k| TcpListener::bind(("127.0.0.1", base + k)))
            .collect();
        if all.iter().all(|r| r.is_ok()) {
            return base;
        }
    }
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Finds `count` consecutive free ports at or after `*cursor` and moves the cursor past them.
fn take_ports(cursor: &mut u32, count: usize) -> Result<u16, LocalError> {
    loop {
        let start = *cursor;
        if start + count as u32 > u32::from(u16::MAX) {
            return Err(LocalError::Usage(
                "no free ports left below 65535; try another --base-port".into(),
            ));
        }
        match (0..count as u32).find(|i| !port_free((start + i) as u16)) {
            None => {
                *cursor = start + count as u32;
                return Ok(start as u16);
            }
            Some(busy) => *cursor = start + busy + 1,
        }
    }
}

/// The configs of a new cluster (ports chosen, nothing written).
pub fn plan(args: &LocalArgs) -> Result<Vec<NodeConfig>, LocalError> {
    if args.nodes == 0 || args.nodes > 100 {
        return Err(LocalError::Usage("--nodes must be 1..=100".into()));
    }
    let tuning = match &args.tuning {
        Some(path) => read_tuning(path)?,
        None => Tuning::default(),
    };
    let dir = absolute(&args.dir)?;
    let mut cursor = u32::from(args.base_port.max(1024));
    let mut addrs = Vec::new();
    for _ in 0..args.nodes {
        let client = take_ports(&mut cursor, args.shards.max(1))?;
        let peer = take_ports(&mut cursor, args.shards.max(1))?;
        addrs.push((
            SocketAddr::from(([127, 0, 0, 1], client)),
            SocketAddr::from(([127, 0, 0, 1], peer)),
        ));
    }
    let mut metrics = Vec::new();
    for _ in 0..args.nodes {
        metrics.push(
            (!args.no_metrics)
                .then(|| take_ports(&mut cursor, 1))
                .transpose()?
                .map(|port| SocketAddr::from(([127, 0, 0, 1], port))),
        );
    }
    let peers = (1..=args.nodes)
        .zip(&addrs)
        .map(|(id, (_, p))| (id, *p))
        .collect();
    let configs: Vec<NodeConfig> = (1..=args.nodes)
        .zip(addrs.iter().zip(&metrics))
        .map(|(id, ((client, peer), metrics_addr))| NodeConfig {
            id,
            data_dir: dir.join(format!("node-{id}")).join("data"),
            client_addr: *client,
            peer_addr: *peer,
            peers: std::collections::BTreeMap::clone(&peers),
            shards: args.shards,
            partitions: args.partitions,
            replicas: args
                .replicas
                .unwrap_or_else(|| (args.nodes as usize).min(3)),
            pin: false,
            metrics_addr: *metrics_addr,
            tuning: tuning.clone(),
            tls: args.tls.then(|| {
                let (cert, key) = super::certs::node_files(&dir.join("tls"), id);
                TlsFiles {
                    cert,
                    key,
                    ca: dir.join("tls").join("ca.pem"),
                }
            }),
        })
        .collect();
    for c in &configs {
        c.validate()
            .map_err(|e| LocalError::Usage(format!("node {}: {e}", c.id)))?;
    }
    Ok(configs)
}

fn absolute(path: &Path) -> Result<PathBuf, LocalError> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    let cwd = std::env::current_dir().map_err(io("current directory"))?;
    Ok(cwd.join(path))
}

fn config_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node-{id}")).join("corum.toml")
}

/// The configs of the cluster in `dir`: the existing ones if `dir` holds a cluster, else a new
/// plan written to `dir`. The flag says whether it is a restart.
pub fn prepare(args: &LocalArgs) -> Result<(Vec<NodeConfig>, bool), LocalError> {
    let dir = absolute(&args.dir)?;
    if config_path(&dir, 1).exists() {
        let mut configs = Vec::new();
        let mut id = 1;
        while config_path(&dir, id).exists() {
            let c = NodeConfig::from_toml_file(&config_path(&dir, id))
                .map_err(|e| LocalError::Usage(e.to_string()))?;
            configs.push(c);
            id += 1;
        }
        // Node 1's config names every node; a directory missing one is not a cluster to
        // start (written by a build that wrote node 1's config first, then failed).
        let named = configs[0].peers.len();
        if named != configs.len() {
            return Err(LocalError::Usage(format!(
                "{} is an incomplete cluster directory: node 1's config names {named} nodes, \
                 but only {} node configs (node-1 .. node-{}) are there; remove it and start \
                 a new cluster",
                dir.display(),
                configs.len(),
                configs.len()
            )));
        }
        if let Some(from) = &args.restore_from {
            return Err(LocalError::Usage(format!(
                "--restore-from {}: {} already holds a cluster; restore into a new --dir",
                from.display(),
                dir.display()
            )));
        }
        return Ok((configs, true));
    }
    let configs = plan(args)?;
    if let Some(from) = &args.restore_from {
        // Check the backup before writing anything, so a bad one leaves no half-made cluster.
        let (manifest, _) = crate::backup::verify(from)
            .map_err(|e| LocalError::Usage(format!("--restore-from: {e}")))?;
        for c in &configs {
            crate::backup::check_placement(&manifest, c)
                .map_err(|e| LocalError::Usage(format!("--restore-from: {e}")))?;
        }
    }
    // Every node's data first, the configs last: a directory with `corum.toml` files is a
    // cluster the next `corum local --dir` starts, so it must not hold a node whose restore
    // failed. On a failed restore the data directories this run created are removed again.
    let mut created = Vec::new();
    for c in &configs {
        if !c.data_dir.exists() {
            created.push(c.data_dir.clone());
        }
        let made = std::fs::create_dir_all(&c.data_dir)
            .map_err(io(format!("create {}", c.data_dir.display())));
        let restored = made.and_then(|()| match &args.restore_from {
            None => Ok(()),
            Some(from) => {
                let report = crate::backup::restore(from, c).map_err(|e| {
                    LocalError::Usage(format!("--restore-from: node {}: {e}", c.id))
                })?;
                eprintln!(
                    "corum local: node {}: restored {} partitions ({} keys) from {} (backup {})",
                    c.id,
                    report.written.len(),
                    report.keys,
                    from.display(),
                    report.backup_id
                );
                Ok(())
            }
        });
        if let Err(e) = restored {
            for d in &created {
                if let Err(rm) = std::fs::remove_dir_all(d) {
                    eprintln!("corum local: cannot remove {}: {rm}", d.display());
                }
            }
            return Err(e);
        }
    }
    if args.tls {
        let ids: Vec<u64> = configs.iter().map(|c| c.id).collect();
        super::certs::generate(&dir.join("tls"), &ids)
            .map_err(|e| LocalError::Usage(format!("--tls: {e}")))?;
    }
    // Node 1's config last, each one whole (a temporary file renamed into place): the
    // directory holds a cluster once `node-1/corum.toml` exists, so a write that fails leaves
    // no cluster that a later `corum local --dir` would start with nodes missing.
    for c in configs.iter().rev() {
        let text = toml::to_string(c)
            .map_err(|e| LocalError::Usage(format!("cannot write config: {e}")))?;
        let path = config_path(&dir, c.id);
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(io(format!("write {}", path.display())))?;
    }
    Ok((configs, false))
}

/// One running node.
struct Node {
    config: NodeConfig,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Child,
    exited: Option<std::process::ExitStatus>,
}

fn spawn(exe: &Path, dir: &Path, config: &NodeConfig) -> Result<Node, LocalError> {
    let node_dir = dir.join(format!("node-{}", config.id));
    let config_path = node_dir.join("corum.toml");
    let log_path = node_dir.join("corum.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(format!("open {}", log_path.display())))?;
    let log2 = log
        .try_clone()
        .map_err(io(format!("open {}", log_path.display())))?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            // The child gets SIGTERM when the thread that spawned it (our main thread) exits.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(io(format!("start node {}", config.id)))?;
    Ok(Node {
        config: config.clone(),
        config_path,
        log_path,
        child,
        exited: None,
    })
}

fn client_endpoints(c: &NodeConfig) -> Vec<String> {
    (0..c.shards)
        .map(|s| c.shard_client_addr(s).to_string())
        .collect()
}

/// The client's TLS files of a cluster whose nodes use `tls`: (CA, client certificate, key),
/// next to the CA (`super::certs`).
pub fn client_tls_files(tls: &TlsFiles) -> (PathBuf, PathBuf, PathBuf) {
    let dir = tls.ca.parent().unwrap_or(Path::new("."));
    (
        tls.ca.clone(),
        dir.join("client.pem"),
        dir.join("client-key.pem"),
    )
}

/// The client TLS settings for the cluster of `config` (None: plaintext).
fn client_tls(config: &NodeConfig) -> Result<Option<wire::client::TlsClientConfig>, LocalError> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    let (ca, cert, key) = client_tls_files(tls);
    let cert_key = (cert.exists() && key.exists()).then_some((cert.as_path(), key.as_path()));
    wire::client::TlsClientConfig::from_pem_files(&ca, cert_key)
        .map(Some)
        .map_err(|e| LocalError::Usage(format!("TLS: {e}")))
}

fn write_cluster_json(dir: &Path, nodes: &[Node], ready: bool) -> Result<(), LocalError> {
    let first = &nodes[0].config;
    let tls = first.tls.as_ref().map(|t| {
        let (ca, cert, key) = client_tls_files(t);
        json!({ "ca": ca, "cert": cert, "key": key })
    });
    let endpoints: Vec<String> = nodes
        .iter()
        .map(|n| n.config.client_addr.to_string())
        .collect();
    let doc = json!({
        "version": 1,
        "ready": ready,
        "supervisor_pid": std::process::id(),
        "shards": first.shards,
        "partitions": first.partitions,
        "replicas": first.replicas,
        "endpoints": endpoints.join(","),
        "nodes": nodes.iter().map(|n| json!({
            "id": n.config.id,
            "pid": n.child.id(),
            "client_addr": n.config.client_addr.to_string(),
            "peer_addr": n.config.peer_addr.to_string(),
            "client_endpoints": client_endpoints(&n.config),
            "metrics_addr": n.config.metrics_addr.map(|a| a.to_string()),
            "data_dir": n.config.data_dir,
            "config": n.config_path,
            "log": n.log_path,
        })).collect::<Vec<_>>(),
        "tls": tls,
    });
    let tmp = dir.join("cluster.json.tmp");
    let path = dir.join("cluster.json");
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
    std::fs::write(&tmp, text).map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io(format!("rename to {}", path.display())))
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our own, unreaped child.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Reaps children that exited; returns the ones that exited just now.
fn reap(nodes: &mut [Node]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, n) in nodes.iter_mut().enumerate() {
        if n.exited.is_none() {
            if let Ok(Some(status)) = n.child.try_wait() {
                n.exited = Some(status);
                out.push(i);
            }
        }
    }
    out
}

/// SIGTERM to every running child, wait up to `grace`, SIGKILL the rest, reap everyone.
fn stop_all(nodes: &mut [Node], grace: Duration) {
    for n in nodes.iter().filter(|n| n.exited.is_none()) {
        tracing::info!(node = n.config.id, pid = n.child.id(), "sending SIGTERM");
        signal(n.child.id(), libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while nodes.iter().any(|n| n.exited.is_none()) && Instant::now() < deadline {
        reap(nodes);
        std::thread::sleep(Duration::from_millis(20));
    }
    for n in nodes.iter_mut().filter(|n| n.exited.is_none()) {
        tracing::warn!(
            node = n.config.id,
            pid = n.child.id(),
            "grace period over, SIGKILL"
        );
        let _ = n.child.kill();
        n.exited = n.child.wait().ok();
    }
}

/// Whether every shard of every node answers Status and every partition has a leader.
async fn cluster_ready(
    endpoints: &[String],
    tls: Option<&wire::client::TlsClientConfig>,
) -> Result<bool, String> {
    let client = super::ctl::connect_with(endpoints, Duration::from_millis(500), tls.cloned())
        .await
        .map_err(|e| e.to_string())?;
    let status = super::ctl::cluster_status(&client).await;
    let expected: usize = endpoints.len();
    // Every endpoint we started must appear in the map and answer.
    let answered = status.shards.iter().filter(|s| s.status.is_ok()).count();
    Ok(status.healthy() && answered >= expected)
}

/// Runs `corum local`; returns the exit code.
pub fn run(args: LocalArgs) -> u8 {
    match run_inner(&args) {
        Ok(code) => code,
        Err(LocalError::Usage(m)) => {
            eprintln!("corum local: {m}");
            EXIT_USAGE
        }
        Err(e) => {
            eprintln!("corum local: {e}");
            EXIT_FAILED
        }
    }
}

fn run_inner(args: &LocalArgs) -> Result<u8, LocalError> {
    let dir = absolute(&args.dir)?;
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let (configs, restart) = prepare(args)?;
    let exe = std::env::current_exe().map_err(io("find the corum executable"))?;
    // Signals are handled by a tokio runtime on this (main) thread; children are spawned from
    // this thread too, so PR_SET_PDEATHSIG fires only when the supervisor really exits.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("start the runtime"))?;
    let mut nodes: Vec<Node> = Vec::new();
    for c in &configs {
        match spawn(&exe, &dir, c) {
            Ok(n) => nodes.push(n),
            Err(e) => {
                stop_all(&mut nodes, Duration::from_millis(args.grace_ms));
                return Err(e);
            }
        }
    }
    write_cluster_json(&dir, &nodes, false)?;
    println!(
        "{} {}-node cluster in {} ({} shard(s) per node, {} partitions)",
        if restart { "restarting" } else { "starting" },
        nodes.len(),
        dir.display(),
        configs[0].shards,
        configs[0].partitions
    );
    for n in &nodes {
        println!(
            "  node {}: pid {}, client {}, peer {}{}, log {}",
            n.config.id,
            n.child.id(),
            client_endpoints(&n.config).join(","),
            n.config.peer_addr,
            n.config
                .metrics_addr
                .map(|a| format!(", metrics http://{a}/metrics"))
                .unwrap_or_default(),
            n.log_path.display()
        );
    }
    let endpoints: Vec<String> = nodes
        .iter()
        .flat_map(|n| client_endpoints(&n.config))
        .collect();
    let tls = match client_tls(&configs[0]) {
        Ok(t) => t,
        Err(e) => {
            stop_all(&mut nodes, Duration::from_millis(args.grace_ms));
            return Err(e);
        }
    };
    let code = runtime.block_on(supervise(args, &dir, &mut nodes, &endpoints, tls.as_ref()));
    stop_all(&mut nodes, Duration::from_millis(args.grace_ms));
    code
}

async fn supervise(
    args: &LocalArgs,
    dir: &Path,
    nodes: &mut [Node],
    endpoints: &[String],
    tls: Option<&wire::client::TlsClientConfig>,
) -> Result<u8, LocalError> {
    use tokio::signal::unix::{signal as unix_signal, SignalKind};
    let mut sigterm =
        unix_signal(SignalKind::terminate()).map_err(io("install SIGTERM handler"))?;
    let mut sigint = unix_signal(SignalKind::interrupt()).map_err(io("install SIGINT handler"))?;
    let ready_deadline = Instant::now() + Duration::from_millis(args.ready_timeout_ms);
    let mut ready = false;
    let mut last_error = String::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = sigterm.recv() => {
                println!("SIGTERM: stopping the cluster");
                return Ok(EXIT_OK);
            }
            _ = sigint.recv() => {
                println!("interrupted: stopping the cluster");
                return Ok(EXIT_OK);
            }
            _ = tick.tick() => {}
        }
        for i in reap(nodes) {
            let n = &nodes[i];
            let status = n.exited.map(|s| s.to_string()).unwrap_or_default();
            if !ready {
                eprintln!(
                    "corum local: node {} exited during start-up ({status}); see {}",
                    n.config.id,
                    n.log_path.display()
                );
                return Ok(EXIT_FAILED);
            }
            eprintln!(
                "corum local: node {} (pid {}) exited ({status}); the others keep serving. \
                 Restart it with: {} serve --config {}",
                n.config.id,
                n.child.id(),
                std::env::current_exe().unwrap_or_default().display(),
                n.config_path.display()
            );
            tracing::warn!(node = n.config.id, %status, "node exited");
        }
        if nodes.iter().all(|n| n.exited.is_some()) {
            eprintln!("corum local: every node has exited");
            return Ok(EXIT_FAILED);
        }
        if !ready {
            match cluster_ready(endpoints, tls).await {
                Ok(true) => {
                    ready = true;
                    write_cluster_json(dir, nodes, true)?;
                    let tls_flags = nodes[0].config.tls.as_ref().map(|t| {
                        let (ca, cert, key) = client_tls_files(t);
                        format!(
                            " --cacert {} --cert {} --key {}",
                            ca.display(),
                            cert.display(),
                            key.display()
                        )
                    });
                    println!(
                        "cluster ready; try: corum ctl --endpoints {}{} status",
                        endpoints.join(","),
                        tls_flags.unwrap_or_default()
                    );
                }
                Ok(false) => last_error = "not every partition has a leader yet".into(),
                Err(e) => last_error = e,
            }
            if !ready && Instant::now() > ready_deadline {
                eprintln!(
                    "corum local: cluster not ready after {} ms (last: {last_error}); stopping",
                    args.ready_timeout_ms
                );
                return Ok(EXIT_FAILED);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> LocalArgs {
        LocalArgs {
            nodes: 3,
            dir: dir.to_owned(),
            shards: 2,
            partitions: 8,
            replicas: None,
            base_port: 23_000,
            tuning: None,
            ready_timeout_ms: 1000,
            grace_ms: 1000,
            no_metrics: false,
            restore_from: None,
            tls: false,
        }
    }

    #[test]
    fn plan_gives_distinct_free_ports_and_valid_configs() {
        let dir = std::env::temp_dir().join("corum-local-plan");
        // Hold a port in the range, to see it skipped.
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = busy.local_addr().unwrap().port();
        let mut a = args(&dir);
        a.base_port = port - 1;
        let configs = plan(&a).unwrap();
        assert_eq!(configs.len(), 3);
        let mut ports = Vec::new();
        for c in &configs {
            c.validate().unwrap();
            assert_eq!(c.replicas, 3);
            for s in 0..c.shards {
                ports.push(c.shard_client_addr(s).port());
                ports.push(c.shard_peer_addr(s).port());
            }
            ports.push(c.metrics_addr.expect("a metrics port by default").port());
        }
        let n = ports.len();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), n, "ports overlap");
        assert!(!ports.contains(&port), "busy port {port} was handed out");
        // Metrics ports come after every node's client and peer ports (so the client ports
        // stay where they were before nodes had metrics ports).
        let last_shard_port = configs
            .iter()
            .map(|c| c.shard_peer_addr(c.shards - 1).port())
            .max()
            .unwrap();
        assert!(configs
            .iter()
            .all(|c| c.metrics_addr.unwrap().port() > last_shard_port));
        a.no_metrics = true;
        assert!(plan(&a).unwrap().iter().all(|c| c.metrics_addr.is_none()));
    }

    /// A failed config write leaves no directory that a later run would start as a cluster
    /// with nodes missing; a directory missing a node's config is refused by name.
    #[test]
    fn a_failed_config_write_leaves_no_partial_cluster() {
        let dir = std::env::temp_dir().join(format!("corum-local-partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = args(&dir);
        // node-2's config path is a directory, so writing it fails.
        std::fs::create_dir_all(config_path(&dir, 2).join("in-the-way")).unwrap();
        assert!(prepare(&a).is_err());
        assert!(
            !config_path(&dir, 1).exists(),
            "node 1's config was written before node 2's failed"
        );
        // A directory with node 1's and node 2's configs but not node 3's is refused.
        std::fs::remove_dir_all(config_path(&dir, 2)).unwrap();
        let (configs, restart) = prepare(&a).unwrap();
        assert!(!restart);
        assert_eq!(configs.len(), 3);
        assert!(!config_path(&dir, 1).with_extension("toml.tmp").exists());
        std::fs::remove_file(config_path(&dir, 3)).unwrap();
        match prepare(&a) {
            Err(LocalError::Usage(e)) => assert!(
                e.contains("incomplete cluster directory") && e.contains("names 3 nodes"),
                "{e}"
            ),
            other => panic!("expected a refusal, got {other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tuning_file_is_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("corum-local-tuning-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(&path, "[tuning]\nsnapshot_log_bytes = 8192\ntick_ms = 2\n").unwrap();
        let t = read_tuning(&path).unwrap();
        assert_eq!(t.snapshot_log_bytes, 8192);
        assert_eq!(t.tick_ms, 2);
        std::fs::write(&path, "[tuning]\nbogus = 1\n").unwrap();
        assert!(matches!(read_tuning(&path), Err(LocalError::Usage(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
