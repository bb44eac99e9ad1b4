//! A 3-member etcd cluster on loopback that loadgen starts and stops itself.
//!
//! Each member gets its own data directory inside one temporary directory (on the filesystem of
//! `data_root`, by default the system temp dir, so etcd's fsyncs hit a real disk), and a client
//! and a peer port picked free by binding port 0 on 127.0.0.1. Members are started with
//! `PR_SET_PDEATHSIG = SIGTERM`, so they die with loadgen even if loadgen is killed; normally
//! [`LocalEtcd::stop`] (or dropping the value, e.g. after Ctrl-C) sends SIGTERM, waits up to
//! [`STOP_GRACE`], sends SIGKILL, and removes the temporary directory.
//!
//! When the `etcd` binary is missing, [`ensure_etcd_installed`] runs the project's
//! `scripts/install-etcd.sh` (Debian's `etcd-server` and `etcd-client` packages, 3.4).

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::target::TargetError;

/// Time given to members to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Time allowed for the cluster to elect a leader and answer a request.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Members in the local cluster.
pub const MEMBERS: usize = 3;

/// The install script, relative to the repository root.
const INSTALL_SCRIPT: &str = "scripts/install-etcd.sh";

/// Maps an I/O error to [`TargetError::Io`] naming what was being done.
pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TargetError {
    let what = what.into();
    move |source| TargetError::Io { what, source }
}

/// Asks the kernel to SIGTERM the child `cmd` starts if loadgen dies without cleaning up, so a
/// killed benchmark leaves no cluster behind.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure only calls prctl, which is async-signal-safe, between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Finds a program on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The repository root: the parent of this crate's directory.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Returns the path of the `etcd` binary, installing it with the project's script if missing.
pub fn ensure_etcd_installed() -> Result<PathBuf, TargetError> {
    if let Some(p) = which("etcd") {
        return Ok(p);
    }
    let script = repo_root().join(INSTALL_SCRIPT);
    tracing::info!(script = %script.display(), "etcd not found; installing it");
    eprintln!("etcd not found; running {}", script.display());
    let status = Command::new("bash")
        .arg(&script)
        .status()
        .map_err(io(format!("running {}", script.display())))?;
    if !status.success() {
        return Err(TargetError::Local(format!(
            "{} failed ({status})",
            script.display()
        )));
    }
    which("etcd").ok_or_else(|| {
        TargetError::Local(format!(
            "{} ran but `etcd` is still not on PATH",
            script.display()
        ))
    })
}

/// Picks `n` distinct free TCP ports on 127.0.0.1 (all listeners are held until every port is
/// chosen, so the ports differ; another process could still take one before etcd binds it, in
/// which case the start fails with etcd's message).
pub fn free_ports(n: usize) -> Result<Vec<u16>, TargetError> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(io("binding a free port"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(io("reading a bound port"))
}

/// A running local etcd cluster. Dropping it stops the members and removes their data.
#[derive(Debug)]
pub struct LocalEtcd {
    children: Vec<Child>,
    endpoints: Vec<String>,
    dir: PathBuf,
}

impl LocalEtcd {
    /// Starts [`MEMBERS`] members under a new directory in `data_root` and waits until the
    /// cluster answers a linearizable read.
    pub async fn start(data_root: &Path) -> Result<Self, TargetError> {
        let etcd = ensure_etcd_installed()?;
        let dir = data_root.join(format!("loadgen-etcd-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let ports = free_ports(2 * MEMBERS)?;
        let client = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i]);
        let peer = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
        let initial: Vec<String> = (0..MEMBERS).map(|i| format!("m{i}={}", peer(i))).collect();
        let initial = initial.join(",");
        let mut cluster = LocalEtcd {
            children: Vec::new(),
            endpoints: (0..MEMBERS).map(client).collect(),
            dir,
        };
        for i in 0..MEMBERS {
            let data = cluster.dir.join(format!("m{i}"));
            let log = File::create(cluster.dir.join(format!("m{i}.log")))
                .map_err(io("creating member log"))?;
            let log2 = log.try_clone().map_err(io("cloning member log"))?;
            let mut cmd = Command::new(&etcd);
            cmd.arg("--name")
                .arg(format!("m{i}"))
                .arg("--data-dir")
                .arg(&data)
                .arg("--listen-client-urls")
                .arg(client(i))
                .arg("--advertise-client-urls")
                .arg(client(i))
                .arg("--listen-peer-urls")
                .arg(peer(i))
                .arg("--initial-advertise-peer-urls")
                .arg(peer(i))
                .arg("--initial-cluster")
                .arg(&initial)
                .arg("--initial-cluster-state")
                .arg("new")
                .arg("--initial-cluster-token")
                .arg(
                    cluster
                        .dir
                        .file_name()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                )
                .arg("--logger")
                .arg("zap")
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2);
            die_with_parent(&mut cmd);
            let child = cmd
                .spawn()
                .map_err(io(format!("starting {}", etcd.display())))?;
            cluster.children.push(child);
        }
        cluster.wait_ready().await?;
        tracing::info!(endpoints = ?cluster.endpoints, dir = %cluster.dir.display(), "local etcd cluster up");
        Ok(cluster)
    }

    async fn wait_ready(&mut self) -> Result<(), TargetError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_err: String;
        loop {
            for (i, c) in self.children.iter_mut().enumerate() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(TargetError::Local(format!(
                        "etcd member m{i} exited during start-up ({status}); see {}",
                        self.dir.join(format!("m{i}.log")).display()
                    )));
                }
            }
            let ready = async {
                let mut c = etcd_client::Client::connect(&self.endpoints, None).await?;
                c.get("loadgen-ready-probe", None).await
            };
            match tokio::time::timeout(Duration::from_secs(2), ready).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => last_err = e.to_string(),
                Err(_) => last_err = "probe timed out".into(),
            }
            if Instant::now() >= deadline {
                return Err(TargetError::Local(format!(
                    "etcd cluster not ready after {START_TIMEOUT:?}: {last_err}; logs in {}",
                    self.dir.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Client endpoints, one per member.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Process ids of the members (for CPU accounting).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// The temporary directory holding the members' data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops every member (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and removes the data.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        for c in &self.children {
            // SAFETY: kill(2) on a pid we spawned and have not yet reaped.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for c in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        tracing::info!(
                            pid = c.id(),
                            "etcd member still running after SIGTERM; sending SIGKILL"
                        );
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        self.children.clear();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove etcd data");
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        if !self.children.is_empty() {
            self.shutdown();
        }
    }
}

fn unique() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        & 0xffff_ffff
}
