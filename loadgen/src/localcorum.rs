//! A 3-node corum cluster on loopback that loadgen starts and stops itself, through the
//! `corum local` command of the engine crate.
//!
//! # Finding the `corum` binary
//! [`locate_corum`] tries, in order:
//! 1. the path given explicitly (`--corum-bin PATH`), else the `CORUM_BIN` environment variable;
//! 2. when the source tree loadgen was built from is still there (this crate's
//!    `CARGO_MANIFEST_DIR` and its parent workspace with `engine/`): it runs
//!    `cargo build --release -p engine --bin corum` in that workspace, into the same target
//!    directory loadgen itself runs from (found from the running executable: `<target>/<profile>/`
//!    or `<target>/<profile>/deps/`, the target directory holding cargo's `CACHEDIR.TAG`; else
//!    `$CARGO_TARGET_DIR`, else `<workspace>/target`), and uses `<target>/release/corum`. The
//!    cluster is always the release build, whatever profile loadgen was built with. Cargo does
//!    nothing when the binary is up to date, so this costs a fraction of a second after the first
//!    time. The cargo program is `$CARGO` (set by `cargo run` / `cargo test`), else `cargo`;
//! 3. `corum` next to the running executable, then on `PATH` (an installed loadgen).
//!
//! # Life cycle
//! [`LocalCorum::start`] makes a temporary directory inside `data_root` (so the nodes' WALs are
//! on that filesystem), runs `corum local --nodes 3 --dir DIR --base-port P --grace-ms 5000`
//! with its output in `DIR/local.log`, and waits until `DIR/cluster.json` says `"ready": true`
//! (every shard answers and every partition has a leader) and every client endpoint answers a
//! Status request and a linearizable read through the wire client. The base port is picked in
//! 20000..30000 (below Linux's ephemeral range, so outgoing connections never hold it); `corum
//! local` skips busy ports. The supervisor is started with `PR_SET_PDEATHSIG = SIGTERM`, and it
//! gives its nodes the same, so the whole cluster dies with loadgen even if loadgen is killed.
//!
//! [`LocalCorum::stop`] (or dropping the value) sends SIGTERM to the supervisor, which stops the
//! nodes (SIGTERM, SIGKILL after its 5 s grace); after [`STOP_GRACE`] loadgen SIGKILLs the
//! supervisor and any node still running, then removes the directory.
//!
//! # CPU accounting
//! [`LocalCorum::pids`] lists the supervisor and every node (from `cluster.json`): all corum
//! processes together, as issue 6 asks.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::localetcd::{die_with_parent, io, which};
use crate::target::TargetError;

/// Time given to the supervisor to stop its nodes after SIGTERM before loadgen SIGKILLs
/// everything (corum local's own grace, 5 s, plus slack).
pub const STOP_GRACE: Duration = Duration::from_secs(8);

/// Time allowed for the cluster to become ready (every partition has a leader).
pub const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Nodes in the local cluster.
pub const NODES: usize = 3;

/// `corum local`'s grace between SIGTERM and SIGKILL of its nodes, milliseconds.
const NODE_GRACE_MS: u64 = 5_000;

/// How to start the local corum cluster.
#[derive(Debug, Clone, Default)]
pub struct CorumLaunch {
    /// The `corum` binary; `None`: see [`locate_corum`].
    pub bin: Option<PathBuf>,
    /// Extra arguments for `corum local` (e.g. `--partitions 16`, `--tuning FILE`).
    pub local_args: Vec<String>,
}

/// The workspace loadgen was built from, if it is still on disk.
fn source_workspace() -> Option<PathBuf> {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    (ws.join("Cargo.toml").is_file() && ws.join("engine").join("Cargo.toml").is_file())
        .then_some(ws)
}

/// The cargo target directory the running executable lives in, if it looks like one.
fn own_target_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    if matches!(
        dir.file_name().and_then(|n| n.to_str()),
        Some("deps" | "examples")
    ) {
        dir = dir.parent()?;
    }
    let target = dir.parent()?;
    target
        .join("CACHEDIR.TAG")
        .is_file()
        .then(|| target.to_path_buf())
}

/// Finds (building it if need be) the `corum` binary; see the module documentation for the
/// order of the rules.
pub fn locate_corum(explicit: Option<&Path>) -> Result<PathBuf, TargetError> {
    let given = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("CORUM_BIN").map(PathBuf::from));
    if let Some(p) = given {
        return if p.is_file() {
            Ok(p)
        } else {
            Err(TargetError::Local(format!(
                "corum binary {} does not exist (from --corum-bin or CORUM_BIN)",
                p.display()
            )))
        };
    }
    if let Some(ws) = source_workspace() {
        let cargo = std::env::var_os("CARGO")
            .map(PathBuf::from)
            .or_else(|| which("cargo"));
        if let Some(cargo) = cargo {
            let target = own_target_dir()
                .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from))
                .unwrap_or_else(|| ws.join("target"));
            eprintln!(
                "loadgen: building corum (cargo build --release -p loadgen -p engine --bin corum, target {})",
                target.display()
            );
            let status = Command::new(&cargo)
                // With `-p loadgen` too, every dependency gets the features it has in loadgen's
                // own build (loadgen depends on engine for this), so nothing is rebuilt.
                .args([
                    "build",
                    "--release",
                    "-p",
                    "loadgen",
                    "-p",
                    "engine",
                    "--bin",
                    "corum",
                ])
                .current_dir(&ws)
                .env("CARGO_TARGET_DIR", &target)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .map_err(io(format!("running {}", cargo.display())))?;
            if !status.success() {
                return Err(TargetError::Local(format!(
                    "building corum failed ({status}); build it with \
                     `cargo build --release -p engine --bin corum` or pass --corum-bin"
                )));
            }
            let bin = target.join("release").join("corum");
            return if bin.is_file() {
                Ok(bin)
            } else {
                Err(TargetError::Local(format!(
                    "cargo built corum but {} is missing",
                    bin.display()
                )))
            };
        }
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("corum")))
        .filter(|p| p.is_file())
        .or_else(|| which("corum"))
        .ok_or_else(|| {
            TargetError::Local(
                "cannot find the corum binary: no source tree to build it from, none next to \
                 loadgen, none on PATH; pass --corum-bin PATH or set CORUM_BIN"
                    .into(),
            )
        })
}

/// `cluster.json` as written by `corum local` (the fields loadgen reads).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ClusterFile {
    /// Whether every shard answers and every partition has a leader.
    pub ready: bool,
    /// The `corum local` process.
    pub supervisor_pid: u32,
    /// Shards per node.
    pub shards: u32,
    /// The nodes.
    pub nodes: Vec<ClusterNode>,
}

/// One node of `cluster.json`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ClusterNode {
    /// Node id.
    pub id: u64,
    /// Process id of its `corum serve`.
    pub pid: u32,
    /// Client address of every shard.
    pub client_endpoints: Vec<String>,
}

/// A running local corum cluster. Stopped (and its directory removed) by [`LocalCorum::stop`]
/// or on drop.
#[derive(Debug)]
pub struct LocalCorum {
    supervisor: Option<Child>,
    cluster: ClusterFile,
    endpoints: Vec<String>,
    dir: PathBuf,
    bin: PathBuf,
}

fn unique() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Mix the pid in, so two loadgens started in the same nanosecond still differ.
    (t ^ (u64::from(std::process::id()) << 20)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 16
}

/// The last `n` lines of a log file, for error messages.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl LocalCorum {
    /// Starts `corum local` with 3 nodes in a new directory inside `data_root` and waits until
    /// the cluster answers.
    pub async fn start(data_root: &Path, launch: &CorumLaunch) -> Result<Self, TargetError> {
        let bin = locate_corum(launch.bin.as_deref())?;
        let id = unique();
        let dir = data_root.join(format!("loadgen-corum-{:x}", id & 0xffff_ffff));
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let base_port = 20_000 + (id % 9_000) as u16;
        let log_path = dir.join("local.log");
        let log = File::create(&log_path).map_err(io("creating corum local's log"))?;
        let log2 = log.try_clone().map_err(io("cloning corum local's log"))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("local")
            .arg("--nodes")
            .arg(NODES.to_string())
            .arg("--dir")
            .arg(&dir)
            .arg("--base-port")
            .arg(base_port.to_string())
            .arg("--grace-ms")
            .arg(NODE_GRACE_MS.to_string())
            .args(&launch.local_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(io(format!("starting {} local", bin.display())))?;
        tracing::info!(bin = %bin.display(), dir = %dir.display(), base_port, "corum local started");
        let mut local = LocalCorum {
            supervisor: Some(child),
            cluster: ClusterFile {
                ready: false,
                supervisor_pid: 0,
                shards: 0,
                nodes: Vec::new(),
            },
            endpoints: Vec::new(),
            dir,
            bin,
        };
        // On error `local` is dropped, which stops whatever started.
        local.wait_ready().await?;
        tracing::info!(endpoints = ?local.endpoints, dir = %local.dir.display(), "local corum cluster up");
        Ok(local)
    }

    async fn wait_ready(&mut self) -> Result<(), TargetError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let json_path = self.dir.join("cluster.json");
        let log_path = self.dir.join("local.log");
        let mut last_err = String::from("cluster.json not written yet");
        loop {
            if let Some(c) = self.supervisor.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.supervisor = None;
                    return Err(TargetError::Local(format!(
                        "`{} local` exited during start-up ({status}); its output:\n{}",
                        self.bin.display(),
                        tail(&log_path, 20)
                    )));
                }
            }
            match std::fs::read(&json_path) {
                Ok(bytes) => match serde_json::from_slice::<ClusterFile>(&bytes) {
                    Ok(c) => {
                        self.endpoints = c
                            .nodes
                            .iter()
                            .flat_map(|n| n.client_endpoints.iter().cloned())
                            .collect();
                        let ready = c.ready;
                        self.cluster = c;
                        if ready {
                            match tokio::time::timeout(Duration::from_secs(5), self.probe()).await {
                                Ok(Ok(())) => return Ok(()),
                                Ok(Err(e)) => last_err = e,
                                Err(_) => last_err = "probe timed out".into(),
                            }
                        } else {
                            last_err = "cluster.json says not ready".into();
                        }
                    }
                    Err(e) => last_err = format!("cluster.json: {e}"),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => last_err = format!("reading cluster.json: {e}"),
            }
            if Instant::now() >= deadline {
                return Err(TargetError::Local(format!(
                    "corum cluster not ready after {START_TIMEOUT:?}: {last_err}; output of \
                     corum local:\n{}",
                    tail(&log_path, 20)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every client endpoint answers Status, and a linearizable read succeeds.
    async fn probe(&self) -> Result<(), String> {
        let mut cfg = wire::client::ClientConfig::new(self.endpoints.clone());
        cfg.request_timeout = Duration::from_secs(3);
        let client = wire::client::Client::connect(cfg)
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        for e in &self.endpoints {
            client
                .status_of(e)
                .await
                .map_err(|err| format!("status of {e}: {err}"))?;
        }
        client
            .get("loadgen-ready-probe")
            .await
            .map_err(|e| format!("probe read: {e}"))?;
        Ok(())
    }

    /// Client endpoints: every shard of every node.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Process ids of every corum process: the `corum local` supervisor and each node.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.supervisor.iter().map(Child::id).collect();
        pids.extend(self.cluster.nodes.iter().map(|n| n.pid));
        pids
    }

    /// Process ids of the nodes only.
    pub fn node_pids(&self) -> Vec<u32> {
        self.cluster.nodes.iter().map(|n| n.pid).collect()
    }

    /// The cluster as `corum local` described it.
    pub fn cluster(&self) -> &ClusterFile {
        &self.cluster
    }

    /// The directory holding the cluster (configs, logs, data, `cluster.json`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The binary that runs the cluster.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Stops the cluster (see the module documentation) and removes its directory.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(mut sup) = self.supervisor.take() {
            // SAFETY: kill(2) on a pid we spawned and have not yet reaped.
            unsafe {
                libc::kill(sup.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + STOP_GRACE;
            loop {
                match sup.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        tracing::warn!(
                            pid = sup.id(),
                            "corum local still running after SIGTERM; sending SIGKILL"
                        );
                        let _ = sup.kill();
                        let _ = sup.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        // The supervisor reaps its nodes when it stops them; a node still there (the
        // supervisor was SIGKILLed) gets SIGKILL, if the pid is still a corum process.
        for n in &self.cluster.nodes {
            if is_corum(n.pid) {
                tracing::warn!(
                    node = n.id,
                    pid = n.pid,
                    "corum node outlived corum local; SIGKILL"
                );
                // SAFETY: kill(2) has no memory-safety preconditions; the pid was checked to be
                // a corum process (a node of this cluster) just above.
                unsafe {
                    libc::kill(n.pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
        self.cluster.nodes.clear();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove corum data");
        }
    }
}

/// Whether `pid` is a live (not zombie) process named `corum`.
fn is_corum(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].split_whitespace().next().unwrap_or("");
    comm == "corum" && state != "Z"
}

impl Drop for LocalCorum {
    fn drop(&mut self) {
        if self.supervisor.is_some() || !self.cluster.nodes.is_empty() {
            self.shutdown();
        }
    }
}
