//! The corum processes: `corum serve`, one per node, each started inside its node's network
//! namespace (`setns` between fork and exec) and tied to the harness with
//! `PR_SET_PDEATHSIG = SIGKILL`, so a harness that dies, however it dies, takes its nodes
//! with it.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::net::{node_addr, Net};

/// Client port of every node (shard 0; nodes run one shard each).
pub const CLIENT_PORT: u16 = 7000;
/// Peer port of every node.
pub const PEER_PORT: u16 = 7100;

/// Layout of the cluster under test.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Number of nodes.
    pub nodes: u64,
    /// Partitions (Raft groups) besides the meta group.
    pub partitions: u64,
    /// Replicas per partition.
    pub replicas: u64,
}

/// One node's process and its state as the nemeses left it.
#[derive(Debug)]
pub struct Node {
    /// Node id, 1-based.
    pub id: u64,
    child: Option<Child>,
    /// Stopped with SIGSTOP.
    pub paused: bool,
    /// Killed on purpose (by the kill nemesis), not yet restarted.
    pub killed: bool,
    /// Exits nobody asked for: (harness time in ms, exit status).
    pub crashes: Vec<String>,
    /// Times started.
    pub starts: u32,
}

/// Every node of the run.
#[derive(Debug)]
pub struct Nodes {
    corum: PathBuf,
    dir: PathBuf,
    layout: Layout,
    /// The nodes, index `id - 1`.
    pub nodes: Vec<Node>,
}

/// The client endpoint of node `id`.
pub fn client_endpoint(id: u64) -> String {
    format!("{}:{CLIENT_PORT}", node_addr(id))
}

impl Nodes {
    /// Plans the nodes; nothing is started yet.
    pub fn new(corum: &Path, dir: &Path, layout: Layout) -> Self {
        Nodes {
            corum: corum.to_path_buf(),
            dir: dir.to_path_buf(),
            nodes: (1..=layout.nodes)
                .map(|id| Node {
                    id,
                    child: None,
                    paused: false,
                    killed: false,
                    crashes: Vec::new(),
                    starts: 0,
                })
                .collect(),
            layout,
        }
    }

    /// Directory of node `id`: its `data/` and `corum.log`.
    pub fn node_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}"))
    }

    /// Starts node `id` in its namespace (again, after a kill: same data directory).
    pub fn start(&mut self, net: &Net, id: u64) -> std::io::Result<()> {
        let dir = self.node_dir(id);
        std::fs::create_dir_all(dir.join("data"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("corum.log"))?;
        let log2 = log.try_clone()?;
        let peers: Vec<String> = (1..=self.layout.nodes)
            .map(|p| format!("{p}={}:{PEER_PORT}", node_addr(p)))
            .collect();
        let ns_file = std::fs::File::open(format!("/run/netns/{}", net.ns(id)))?;
        let ns_fd = ns_file.as_raw_fd();
        let mut cmd = Command::new(&self.corum);
        cmd.arg("serve")
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--client-addr", &client_endpoint(id)])
            .args(["--peer-addr", &format!("{}:{PEER_PORT}", node_addr(id))])
            .args(["--peers", &peers.join(",")])
            .args(["--shards", "1"])
            .args(["--partitions", &self.layout.partitions.to_string()])
            .args(["--replicas", &self.layout.replicas.to_string()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        // SAFETY: setns and prctl are async-signal-safe and touch no memory of the parent;
        // `ns_fd` stays open (ns_file lives) until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The node dies with the thread that spawned it: the harness's runtime threads
                // live until the harness exits.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(ns_file);
        let node = &mut self.nodes[id as usize - 1];
        node.child = Some(child);
        node.paused = false;
        node.killed = false;
        node.starts += 1;
        Ok(())
    }

    /// Starts every node.
    pub fn start_all(&mut self, net: &Net) -> std::io::Result<()> {
        for id in 1..=self.layout.nodes {
            self.start(net, id)?;
        }
        Ok(())
    }

    fn pid(&self, id: u64) -> Option<i32> {
        self.nodes[id as usize - 1]
            .child
            .as_ref()
            .map(|c| c.id() as i32)
    }

    /// `kill -9` of node `id` (and reaping it).
    pub fn kill(&mut self, id: u64) {
        let node = &mut self.nodes[id as usize - 1];
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.killed = true;
        node.paused = false;
    }

    /// SIGSTOP (`pause` true) or SIGCONT to node `id`.
    pub fn pause(&mut self, id: u64, pause: bool) {
        if let Some(pid) = self.pid(id) {
            let sig = if pause { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
            unsafe {
                libc::kill(pid, sig);
            }
            self.nodes[id as usize - 1].paused = pause;
        }
    }

    /// Records nodes that exited without being killed by the harness (a crash is a finding).
    /// `now_ms`: harness time for the record.
    pub fn reap_crashes(&mut self, now_ms: u64) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let what = format!("node {} exited at {now_ms} ms: {status}", node.id);
                    node.crashes.push(what.clone());
                    node.child = None;
                    out.push((node.id, what));
                }
            }
        }
        out
    }

    /// Whether node `id` has a running (possibly paused) process.
    pub fn running(&self, id: u64) -> bool {
        self.nodes[id as usize - 1].child.is_some()
    }

    /// SIGCONT + SIGKILL to every node, and reaps them. Idempotent.
    pub fn kill_all(&mut self) {
        for id in 1..=self.layout.nodes {
            self.pause(id, false);
            let node = &mut self.nodes[id as usize - 1];
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.kill_all();
    }
}
