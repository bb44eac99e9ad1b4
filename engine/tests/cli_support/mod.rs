//! Harness for the process-level tests: real `corum` processes, real sockets, real files.
//!
//! Every process a test starts is owned by a guard that kills it (SIGKILL) and reaps it when
//! dropped, so a failing test leaves nothing running. Every wait polls a condition against an
//! explicit deadline and says what it was waiting for when the deadline passes.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `corum` binary under test.
pub const CORUM: &str = env!("CARGO_BIN_EXE_corum");

/// Timing used by every test cluster: 10 ms ticks, heartbeat every 3 ticks, election timeout
/// 150-300 ms. `EXTRA` is appended (e.g. `snapshot_log_bytes`).
pub fn tuning_toml(extra: &str) -> String {
    format!(
        "[tuning]\ntick_ms = 10\nheartbeat_ticks = 3\nelection_ticks_min = 15\n\
         wal_segment_bytes = 1048576\n{extra}"
    )
}

/// The longest randomized election timeout of [`tuning_toml`].
pub const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(300);

/// The process tests share two cores with each other and with builds: run them one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Polls `cond` every `every` until it returns `Some`, or panics naming `what` at `deadline`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut cond: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(every);
    }
}

/// A child process, SIGKILLed and reaped on drop.
pub struct Guard {
    /// The child (None once reaped).
    pub child: Option<Child>,
    /// For messages.
    pub name: String,
}

impl Guard {
    /// Spawns `cmd`.
    pub fn spawn(name: &str, cmd: &mut Command) -> Guard {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Guard {
            child: Some(child),
            name: name.to_owned(),
        }
    }

    /// The pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits for exit until `timeout`; None if still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: no memory is involved; the pid is a process this test started.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Whether `pid` exists (and is not a zombie we could tell apart: good enough for our nodes,
/// which `corum local` reaps).
pub fn pid_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Field 3 is the state; Z = zombie, X = dead.
    let leader_dead = match stat.rsplit_once(')') {
        Some((_, rest)) => matches!(rest.trim_start().chars().next(), Some('Z' | 'X') | None),
        None => true,
    };
    // A killed process's main thread turns zombie before its other threads have exited (one
    // may still be tearing down io_uring), and its sockets close only with the last of them:
    // a node restarted in between found its metrics port still bound. Dead means no thread
    // but the zombie leader is left.
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    !leader_dead || threads > 1
}

/// Runs `cmd` to completion with a deadline (killed at the deadline, then the test fails).
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut g = Guard::spawn("command", cmd);
    let mut child = g.child.take().expect("child");
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().expect("output"),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "{cmd:?} did not finish within {timeout:?}; stderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// A fresh directory under the cargo target's test directory.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("corum-process-tests")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

/// A port range for this test process, so concurrent runs on one machine rarely meet
/// (`corum local` skips busy ports anyway). Every range lies below 32768, where Linux's
/// default ephemeral range (`ip_local_port_range`, 32768-60999) starts: `corum local` checks
/// that a port is free before the node binds it, and an outgoing connection of another test
/// took a port in that gap once (a CI run failed with "bind client port 127.0.0.1:47080:
/// Address already in use").
pub fn base_port(slot: u16) -> u16 {
    assert!(slot < 10, "ten clusters per test binary");
    let base = 20_000 + ((std::process::id() % 60) as u16) * 200 + slot * 20;
    debug_assert!(base + 20 <= 32_768);
    base
}

/// A cluster started with `corum local`.
pub struct Cluster {
    /// The cluster directory.
    pub dir: PathBuf,
    /// `corum local`.
    pub local: Guard,
    /// Nodes restarted by the test with `corum serve`.
    pub restarted: Vec<Guard>,
    /// The last cluster.json read.
    pub info: Value,
}

impl Cluster {
    /// `corum local --nodes N --dir DIR ...` with the test tuning; waits until it is ready.
    pub fn start(
        dir: &Path,
        nodes: u64,
        shards: usize,
        partitions: u32,
        port: u16,
        extra: &str,
    ) -> Cluster {
        Self::start_with(dir, nodes, shards, partitions, port, extra, &[])
    }

    /// [`Cluster::start`] with more `corum local` flags (e.g. `--restore-from DIR`).
    pub fn start_with(
        dir: &Path,
        nodes: u64,
        shards: usize,
        partitions: u32,
        port: u16,
        extra: &str,
        flags: &[&str],
    ) -> Cluster {
        let tuning = dir.join("tuning.toml");
        std::fs::write(&tuning, tuning_toml(extra)).expect("write tuning");
        let cluster_dir = dir.join("cluster");
        let mut cmd = Command::new(CORUM);
        cmd.arg("local")
            .arg("--nodes")
            .arg(nodes.to_string())
            .arg("--dir")
            .arg(&cluster_dir)
            .arg("--shards")
            .arg(shards.to_string())
            .arg("--partitions")
            .arg(partitions.to_string())
            .arg("--base-port")
            .arg(port.to_string())
            .arg("--tuning")
            .arg(&tuning)
            .args(flags);
        Self::launch(cluster_dir, cmd)
    }

    /// `corum local --dir DIR` on an existing cluster directory (a restart).
    pub fn restart(cluster_dir: &Path) -> Cluster {
        let mut cmd = Command::new(CORUM);
        cmd.arg("local").arg("--dir").arg(cluster_dir);
        Self::launch(cluster_dir.to_owned(), cmd)
    }

    fn launch(dir: PathBuf, mut cmd: Command) -> Cluster {
        cmd.arg("--grace-ms")
            .arg("3000")
            .arg("--ready-timeout-ms")
            .arg("60000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let local = Guard::spawn("corum local", &mut cmd);
        let mut cluster = Cluster {
            dir,
            local,
            restarted: Vec::new(),
            info: Value::Null,
        };
        let pid = cluster.local.pid();
        let path = cluster.dir.join("cluster.json");
        let info = wait_for(
            "cluster.json with ready = true",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                assert!(cluster.local.alive(), "corum local exited during start-up");
                let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
                (v["supervisor_pid"] == pid && v["ready"] == true).then_some(v)
            },
        );
        cluster.info = info;
        cluster
    }

    /// All client endpoints, comma-separated (for `corum ctl --endpoints`).
    pub fn endpoints(&self) -> String {
        self.info["endpoints"]
            .as_str()
            .expect("endpoints")
            .to_owned()
    }

    /// The endpoints as a list (for the client's seeds).
    pub fn seeds(&self) -> Vec<String> {
        self.endpoints().split(',').map(str::to_owned).collect()
    }

    fn node(&self, id: u64) -> &Value {
        self.info["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["id"] == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// A node's current pid.
    pub fn pid(&self, id: u64) -> u32 {
        self.node(id)["pid"].as_u64().expect("pid") as u32
    }

    /// A node's config file.
    pub fn config_path(&self, id: u64) -> PathBuf {
        PathBuf::from(self.node(id)["config"].as_str().expect("config"))
    }

    /// A node's data directory.
    pub fn node_data_dir(&self, id: u64) -> String {
        self.node(id)["data_dir"]
            .as_str()
            .expect("data_dir")
            .to_owned()
    }

    /// A node's log file.
    pub fn log_path(&self, id: u64) -> PathBuf {
        PathBuf::from(self.node(id)["log"].as_str().expect("log"))
    }

    /// A node's base peer address.
    pub fn peer_addr(&self, id: u64) -> String {
        self.node(id)["peer_addr"]
            .as_str()
            .expect("peer")
            .to_owned()
    }

    /// A node's base client address.
    pub fn client_addr(&self, id: u64) -> String {
        self.node(id)["client_addr"]
            .as_str()
            .expect("client")
            .to_owned()
    }

    /// Node ids.
    pub fn ids(&self) -> Vec<u64> {
        self.info["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| n["id"].as_u64().expect("id"))
            .collect()
    }

    /// kill -9 a node and wait until it is gone.
    pub fn kill9(&mut self, id: u64) {
        let pid = self.current_pid(id);
        signal(pid, libc::SIGKILL);
        wait_for(
            &format!("node {id} (pid {pid}) to die"),
            Duration::from_secs(10),
            Duration::from_millis(10),
            || (!pid_alive(pid)).then_some(()),
        );
    }

    fn current_pid(&mut self, id: u64) -> u32 {
        // A node restarted by the test runs under its guard; otherwise under corum local.
        let name = format!("node {id}");
        match self.restarted.iter().find(|g| g.name == name) {
            Some(g) => g.pid(),
            None => self.pid(id),
        }
    }

    /// Restarts a killed node with `corum serve --config` (its log appended to corum.log).
    pub fn restart_node(&mut self, id: u64) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.log_path(id))
            .expect("open log");
        let log2 = log.try_clone().expect("log");
        let mut cmd = Command::new(CORUM);
        cmd.arg("serve")
            .arg("--config")
            .arg(self.config_path(id))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let name = format!("node {id}");
        self.restarted.retain(|g| g.name != name);
        self.restarted.push(Guard::spawn(&name, &mut cmd));
    }

    /// Every node process (started by corum local or by the test) that should be running.
    pub fn all_pids(&mut self) -> Vec<u32> {
        self.ids()
            .into_iter()
            .map(|id| self.current_pid(id))
            .collect()
    }

    /// Stops the whole cluster with SIGTERM to `corum local` and waits for it.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        signal(self.local.pid(), libc::SIGTERM);
        let status = self.local.wait_timeout(Duration::from_secs(15));
        assert!(
            status.is_some(),
            "corum local did not stop within 15 s of SIGTERM"
        );
        self.restarted.clear();
        status
    }

    /// Prints the last lines of every node's log (on failure).
    pub fn dump_logs(&self) {
        for id in self.ids() {
            let text = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!("---- node {id} log (last {} lines) ----", tail.len());
            for l in tail {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.info.is_null() {
            self.dump_logs();
        }
        // Kill every node we know of, then the supervisor (guards reap what is ours).
        if !self.info.is_null() {
            for pid in self.all_pids() {
                if pid_alive(pid) {
                    signal(pid, libc::SIGKILL);
                }
            }
        }
        self.restarted.clear();
        if let Some(c) = self.local.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `corum ctl --endpoints E ARGS...`, bounded at 30 s.
pub fn ctl(endpoints: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(CORUM);
    cmd.arg("ctl").arg("--endpoints").arg(endpoints).args(args);
    run_bounded(&mut cmd, Duration::from_secs(30))
}

/// stdout of an Output, trimmed.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}
