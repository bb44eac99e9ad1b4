//! The harness network: one network namespace per node, each with a veth whose other end is
//! on a bridge in the host namespace. The bridge holds the harness's own address, so the
//! clients (in the host namespace) reach every node's client port, and nodes reach each other
//! through the bridge. Faults are nftables rules inside the node namespaces (table
//! `inet chaos`), never in the host namespace.
//!
//! Addresses: `10.77.0.0/24` exists only on this bridge and inside these namespaces; the
//! bridge is `10.77.0.1`, node `i` is `10.77.0.(10 + i)`. Because that subnet is fixed, only
//! one run may hold it: [`RunLock`] takes an exclusive `flock` for the run's lifetime.
//!
//! Names carry the harness's pid (`corum-chaos-<pid>-n<i>`, bridge `cc<pid>br`, host-side veth
//! `cc<pid>h<i>`), so [`cleanup_leftovers`] can remove what a dead run left behind without
//! touching a live run's resources.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use crate::nodes::PEER_PORT;
use crate::proxy::proxy_port;

/// Subnet prefix of the harness network (a /24).
pub const SUBNET: [u8; 3] = [10, 77, 0];
/// Prefix of every namespace the harness creates.
const NS_PREFIX: &str = "corum-chaos-";
/// The lock file that serialises runs (the subnet is shared).
const LOCK_PATH: &str = "/run/lock/corum-chaos.lock";

/// A failed network command, with what was run and what it printed.
#[derive(Debug)]
pub struct NetError(pub String);

impl std::fmt::Display for NetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NetError {}

/// Runs `cmd args...`, feeding `stdin` if given; an error names the command and its stderr.
pub fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NetError> {
    let mut c = Command::new(cmd);
    c.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .map_err(|e| NetError(format!("{cmd} {}: {e}", args.join(" "))))?;
    if let Some(text) = stdin {
        if let Some(mut pipe) = child.stdin.take() {
            pipe.write_all(text.as_bytes())
                .map_err(|e| NetError(format!("{cmd} {}: stdin: {e}", args.join(" "))))?;
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetError(format!("{cmd} {}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(NetError(format!(
            "{cmd} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Checks that the tools the harness needs are installed and that it runs as root.
pub fn preflight() -> Result<(), NetError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(NetError(
            "corum-chaos creates network namespaces and nftables rules: run it as root".into(),
        ));
    }
    for tool in ["ip", "nft"] {
        run(tool, &["-V"], None).map_err(|e| {
            NetError(format!(
                "`{tool}` is needed (apt-get install -y iproute2 nftables): {e}"
            ))
        })?;
    }
    Ok(())
}

/// An exclusive lock on the harness subnet, held while it lives.
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Takes the lock, or fails at once if another live run holds it.
    pub fn take() -> Result<Self, NetError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_PATH)
            .map_err(|e| NetError(format!("open {LOCK_PATH}: {e}")))?;
        // SAFETY: flock on an fd we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(NetError(format!(
                "another corum-chaos run holds {LOCK_PATH} (the 10.77.0.0/24 subnet); wait for it"
            )));
        }
        Ok(RunLock { _file: file })
    }
}

/// The address of node `id` (1-based).
pub fn node_addr(id: u64) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 10 + id as u8)
}

/// The bridge's (harness's) address.
pub fn bridge_addr() -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 1)
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and links left by runs whose harness process is gone (killed with -9,
/// a power cut): first every process still inside such a namespace, then the namespace, then
/// the bridge. Returns what it removed, for the log.
pub fn cleanup_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    let me = std::process::id();
    let list = run("ip", &["netns", "list"], None).unwrap_or_default();
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        if pid.is_some_and(|p| p != me && pid_alive(p)) {
            continue; // a live run's namespace
        }
        kill_all_in_ns(name);
        if run("ip", &["netns", "del", name], None).is_ok() {
            removed.push(format!("namespace {name}"));
        }
    }
    let links = run("ip", &["-o", "link", "show"], None).unwrap_or_default();
    for line in links.lines() {
        // "12: cc1234br: <...>" or "13: cc1234h1@if2: <...>"
        let Some(name) = line.split(':').nth(1).map(str::trim) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        let Some(rest) = name.strip_prefix("cc") else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let tail = &rest[digits.len()..];
        let ours = !digits.is_empty() && (tail == "br" || tail.starts_with('h'));
        let Ok(pid) = digits.parse::<u32>() else {
            continue;
        };
        if !ours || (pid != me && pid_alive(pid)) {
            continue;
        }
        if run("ip", &["link", "del", name], None).is_ok() {
            removed.push(format!("link {name}"));
        }
    }
    removed
}

/// SIGKILLs every process in namespace `ns` (SIGCONT first, so a stopped one dies at once).
fn kill_all_in_ns(ns: &str) {
    let pids = run("ip", &["netns", "pids", ns], None).unwrap_or_default();
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGCONT);
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// The namespaces, veths and bridge of one run. [`Net::teardown`] (also run on drop) removes
/// them; it is idempotent.
#[derive(Debug)]
pub struct Net {
    /// The bridge's name.
    pub bridge: String,
    /// Namespace name of node `i + 1`.
    pub namespaces: Vec<String>,
    pid: u32,
    /// Peer connections go through the harness's proxy ([`crate::proxy`]).
    proxied: bool,
    torn_down: bool,
}

/// The nftables table every node namespace starts with: empty chains the nemeses add rules to.
const BASE_RULESET: &str = "table inet chaos {
  chain input { type filter hook input priority 0; policy accept; }
  chain output { type filter hook output priority 0; policy accept; }
}
";

impl Net {
    /// Creates the bridge and one namespace per node; with `proxied`, every node's peer
    /// connections are redirected to the harness's proxy ([`crate::proxy`]). On error,
    /// whatever was created is removed again (the returned error is the first failure).
    pub fn create(nodes: u64, proxied: bool) -> Result<Net, NetError> {
        let pid = std::process::id();
        let mut net = Net {
            bridge: format!("cc{pid}br"),
            namespaces: (1..=nodes)
                .map(|i| format!("{NS_PREFIX}{pid}-n{i}"))
                .collect(),
            pid,
            proxied,
            torn_down: false,
        };
        match net.build() {
            Ok(()) => Ok(net),
            Err(e) => {
                net.teardown();
                Err(e)
            }
        }
    }

    fn build(&mut self) -> Result<(), NetError> {
        let pid = self.pid;
        let br = self.bridge.clone();
        let cidr = format!("{}/24", bridge_addr());
        run("ip", &["link", "add", &br, "type", "bridge"], None)?;
        run("ip", &["addr", "add", &cidr, "dev", &br], None)?;
        run("ip", &["link", "set", &br, "up"], None)?;
        for (i, ns) in self.namespaces.iter().enumerate() {
            let id = i as u64 + 1;
            let host = self.host_veth(id);
            let peer = format!("cc{pid}p{id}");
            let addr = format!("{}/24", node_addr(id));
            run("ip", &["netns", "add", ns], None)?;
            run(
                "ip",
                &["link", "add", &host, "type", "veth", "peer", "name", &peer],
                None,
            )?;
            run("ip", &["link", "set", &peer, "netns", ns], None)?;
            run("ip", &["link", "set", &host, "master", &br], None)?;
            run("ip", &["link", "set", &host, "up"], None)?;
            run(
                "ip",
                &["-n", ns, "link", "set", &peer, "name", "eth0"],
                None,
            )?;
            run("ip", &["-n", ns, "addr", "add", &addr, "dev", "eth0"], None)?;
            run("ip", &["-n", ns, "link", "set", "eth0", "up"], None)?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"], None)?;
            nft(ns, BASE_RULESET)?;
            if self.proxied {
                let n = self.namespaces.len() as u64;
                let mut rules = String::from(
                    "table ip chaosnat {\n  chain output { type nat hook output priority -100; policy accept; }\n}\n",
                );
                for to in (1..=n).filter(|&t| t != id) {
                    rules += &format!(
                        "add rule ip chaosnat output ip daddr {} tcp dport {PEER_PORT} dnat to {}:{}\n",
                        node_addr(to),
                        bridge_addr(),
                        proxy_port(id, to)
                    );
                }
                nft(ns, &rules)?;
            }
        }
        Ok(())
    }

    /// The host-side veth of node `id`.
    fn host_veth(&self, id: u64) -> String {
        format!("cc{}h{id}", self.pid)
    }

    /// Namespace of node `id`.
    pub fn ns(&self, id: u64) -> &str {
        &self.namespaces[id as usize - 1]
    }

    /// Node `id` stops receiving packets from every node in `from` (a one-way cut; call it on
    /// both sides for a full partition).
    pub fn drop_from(&self, id: u64, from: &[u64]) -> Result<(), NetError> {
        if from.is_empty() {
            return Ok(());
        }
        let addrs: Vec<String> = from.iter().map(|&f| node_addr(f).to_string()).collect();
        let rule = format!(
            "add rule inet chaos input ip saddr {{ {} }} drop\n",
            addrs.join(", ")
        );
        nft(self.ns(id), &rule)?;
        if self.proxied {
            // Through the proxy, `id` receives `f`'s frames from the bridge address; cut them
            // where they leave `f` instead (its connection to `id`'s proxy port; the filter
            // hook sees the address after DNAT).
            for &f in from {
                let rule = format!(
                    "add rule inet chaos output ip daddr {} tcp dport {} drop\n",
                    bridge_addr(),
                    proxy_port(f, id)
                );
                nft(self.ns(f), &rule)?;
            }
        }
        Ok(())
    }

    /// Node `id` drops `percent`% of the packets it receives from the subnet, at random
    /// (`numgen random`): peer traffic and the harness's client traffic alike.
    pub fn lossy(&self, id: u64, percent: u64) -> Result<(), NetError> {
        let rule = format!(
            "add rule inet chaos input ip saddr {}.{}.{}.0/24 numgen random mod 100 < {percent} drop\n",
            SUBNET[0], SUBNET[1], SUBNET[2]
        );
        nft(self.ns(id), &rule)
    }

    /// Node `id` drops every packet to or from the harness subnet (peers and clients).
    pub fn blackhole(&self, id: u64) -> Result<(), NetError> {
        let subnet = format!("{}.{}.{}.0/24", SUBNET[0], SUBNET[1], SUBNET[2]);
        let rules = format!(
            "add rule inet chaos input ip saddr {subnet} drop\nadd rule inet chaos output ip daddr {subnet} drop\n"
        );
        nft(self.ns(id), &rules)
    }

    /// Removes every fault rule in every namespace.
    pub fn heal(&self) -> Result<(), NetError> {
        let mut first = None;
        for ns in &self.namespaces {
            if let Err(e) = nft(
                ns,
                "flush chain inet chaos input\nflush chain inet chaos output\n",
            ) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The TCP sockets of node `id` with their timers (`ss -tino`): retransmission backoff and
    /// RTO of the peer connections, for diagnosing slow recovery after a fault.
    pub fn sockets(&self, id: u64) -> String {
        run("ip", &["netns", "exec", self.ns(id), "ss", "-tino"], None).unwrap_or_else(|e| e.0)
    }

    /// The rules now in node `id`'s table (for the report).
    pub fn ruleset(&self, id: u64) -> String {
        run(
            "ip",
            &[
                "netns",
                "exec",
                self.ns(id),
                "nft",
                "list",
                "table",
                "inet",
                "chaos",
            ],
            None,
        )
        .unwrap_or_else(|e| e.0)
    }

    /// Kills every process left in the namespaces, deletes them and the bridge. Idempotent.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        for (i, ns) in self.namespaces.iter().enumerate() {
            kill_all_in_ns(ns);
            // Deleting one end of a veth pair deletes both; done explicitly because the kernel
            // destroys a deleted namespace's devices asynchronously.
            let _ = run("ip", &["link", "del", &self.host_veth(i as u64 + 1)], None);
            let _ = run("ip", &["netns", "del", ns], None);
        }
        let _ = run("ip", &["link", "del", &self.bridge], None);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Loads `rules` into namespace `ns` with `nft -f -`.
fn nft(ns: &str, rules: &str) -> Result<(), NetError> {
    run("ip", &["netns", "exec", ns, "nft", "-f", "-"], Some(rules)).map(|_| ())
}
