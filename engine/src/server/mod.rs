//! The server: one node of a corum cluster, thread-per-core Multi-Raft.
//!
//! # Threads and shards
//! [`start`] spawns one thread per shard (`config.shards`), each running one glommio
//! `LocalExecutor` (pinned to core `i` when `config.pin`; glommio's spin-before-park is left
//! off, so an idle shard sleeps in `io_uring_enter` until a socket, a disk completion or its
//! tick timer wakes it). A shard owns, with nothing shared on the hot path:
//! - the partitions the cluster map places on shard `i` of this node (partition `p` lives on
//!   shard `p % shards`; before a fresh cluster has committed its map, the configuration's
//!   initial placement [`crate::meta::initial_placement`], which the map is built from): a
//!   `raftcore::RawNode` and a [`StateMachine`](crate::state_machine::StateMachine) each;
//! - shard 0 also holds this node's replica of the meta group (partition 0, see
//!   [`crate::meta`]), which replicates the cluster map;
//! - one WAL in `data_dir/shard-<i>/wal/` and snapshot files in `data_dir/shard-<i>/snapshots/`;
//! - a client listener on [`NodeConfig::shard_client_addr`]`(i)` and a peer listener on
//!   [`NodeConfig::shard_peer_addr`]`(i)`;
//! - one outgoing peer connection to shard `i` of every other node (shard `i` talks only to
//!   shard `i`, DESIGN.md "Data placement").
//!
//! The only state shared between shards is [`shared::NodeShared`]: per-partition status
//! atomics (leader, term, commit, applied) each shard publishes after a loop turn, the client
//! endpoints learnt from peers' hellos, and the cluster map shard 0 applied from the meta
//! group; they serve `Status` and `ClusterMap` answers, which cover every partition of the
//! node whichever shard answers.
//!
//! # Driver and core
//! A shard is two parts (module docs of [`shard_core`] have the full table of events and
//! actions): [`shard_core::ShardCore`] takes every decision and touches no socket, file, thread
//! or clock; it is generic over the log (`wal::LogStore`), the snapshot files it reads at
//! recovery and the reply handle. `driver.rs` is the glommio loop that feeds it events
//! (ticks from the real clock, peer messages and client requests from `net.rs`, completed WAL
//! syncs and snapshot-file writes) and carries out its actions (send frames, write replies,
//! start a sync, write a snapshot file). The whole-node simulator (`crate::sim`) drives the
//! same core on `wal::MemLog` with simulated time, network and disks.
//!
//! # The event loop of a shard (`driver.rs` runs it, `shard_core` decides)
//! Each turn: report the WAL sync that completed, if one did (below); tick if the tick is
//! due; step every peer message received; route and propose the client requests received (one
//! `propose` batch per partition); collect the Readys of every partition with work; send their
//! `messages` at once, batched into one frame per destination node; buffer all their entries,
//! hard states, truncations and snapshot points in the WAL's next batch; apply the committed
//! entries they carry and answer the clients waiting on them and the reads whose read index
//! has been applied; start a sync of the batch unless one is in flight (group commit: ONE
//! write + fdatasync for everything buffered since the previous sync started).
//!
//! # Pipelining: turns keep running while a sync is in flight
//! The sync runs in a glommio local task holding an `Rc` of the WAL; the loop keeps that
//! task's handle and, when idle, sleeps on whichever comes first: the sync task, an inbox
//! wake-up, or the idle timer. While sync *k* is in flight the loop keeps running turns for
//! peer messages (a follower buffers the leader's appends into the next batch at once; a leader
//! counts acknowledgements, commits, applies and answers), and the Readys of those turns
//! send their `messages` at once and buffer their records behind batch *k*. Client requests
//! wait in the inbox until sync *k* completes, then form one proposal batch (measured: letting
//! every request start its own small turn cost more CPU per write than it saved, see
//! `bench-results/`). When sync *k* completes, the Readys it covers get step 3 of the Ready
//! contract in order (`on_persisted` with each partition's highest covered number, then their
//! `persisted_messages`), then their deferred applies; the next turn starts sync *k+1* for
//! what accumulated. Invariants (checked where they are kept, `shard_core/durability.rs`):
//! - at most one sync in flight (the WAL serialises them anyway), and it is never cancelled
//!   while the shard runs (a dropped sync poisons the WAL; on stop the loop awaits it);
//! - Readys are buffered in the WAL in number order per partition and the WAL writes batches
//!   in order, so they become durable in number order; each Ready joins the group of the
//!   first sync started after its last record was buffered (a Ready with nothing to persist
//!   joins the group of its partition's newest pending Ready, or is durable at once when its
//!   partition has none), and `on_persisted(n)` is called only when that group's sync
//!   returned `Ok`: nothing is reported durable, and no vote grant or append acknowledgement
//!   (`persisted_messages`) leaves, before it is durable (Raft thesis §3.8 / §10.2.1). While
//!   a Ready that overwrote a conflicting suffix (Raft paper §5.3) is pending, the earlier
//!   Readys of its partition are reported only together with it. This is a second guard:
//!   raftcore already clips the last index of every pending Ready at a truncation
//!   (`clip_pending` in raftcore's node.rs), so an earlier Ready reported alone would not make
//!   it count the replacement entries as durable; the guard costs a little latency only when
//!   a follower's log conflicts;
//! - committed entries are applied, and their clients answered, as soon as a Ready hands
//!   them out, even before that Ready's own records are durable: raftcore hands out only
//!   entries that are committed and already reported durable here, so the answer
//!   acknowledges nothing that could be lost. Applies stay in order per partition: a Ready
//!   carrying a received snapshot defers its apply (the restore) and every later apply of the
//!   partition until its sync completes; the snapshot file itself is written and fsynced
//!   before the WAL drops any entry for it, as before;
//! - a WAL batch that fills up mid-turn (`batch_bytes_max`) is synced inline (after the one
//!   in flight); this only makes Readys durable earlier than reported;
//! - bounded: at most `PIPELINE_TURNS_MAX` turns and `PIPELINE_BYTES_MAX` buffered bytes
//!   while a sync is in flight; past them the next turn waits for that sync;
//! - a failed sync is fatal: the shard stops with the error (wal crate docs);
//! - nothing busy-polls: a wake-up that finds the inbox empty goes back to sleep.
//!
//! # Cluster map
//! Kept in the meta group (partition 0, a voter on shard 0 of every node; [`crate::meta`]
//! describes the bootstrap and the encoding). Shard 0 publishes each newly applied map to
//! [`shared::NodeShared`]; every shard compares the published epoch with its own at the start
//! of a turn and adopts a newer map after checking it hosts exactly what the map places on it
//! (a node whose configuration disagrees stops with [`ServerError::Map`]). Served:
//! - `ClusterMap`: the map with each shard's client endpoint and, for partitions hosted here,
//!   the leader hint; `Unavailable` until this node has applied a map;
//! - data requests: `Unavailable` until a map is applied; a request routed with an older
//!   epoch gets `StaleMap`, with a newer one `Unavailable` (this node is behind); epoch 0
//!   (a client with no map) is routed by this node's map;
//! - `Range` on partition 0 is refused: the meta group holds no client keys.
//!
//! # Requests that lose their leader
//! A write is answered when its log index is applied: with its result if the applied entry is
//! the one it proposed (same term), else `NotLeader` (another leader's entry took the index,
//! so it never committed: Raft paper §5.4). A write above the applied index is answered
//! `NotLeader` as soon as an entry of a later term is applied (terms never decrease along a
//! log, so no future leader can commit it; `resolve_orphans` in `shard_core/partition.rs`). A
//! write whose leader's log reused its index for a newer term's entry keeps waiting (waiters are
//! keyed by index and term) until one of these rules answers it. A read waiting for
//! a read index from an earlier term is answered `Unavailable` (raftcore drops them on a term
//! change), and so is one asked at a leader that has since stepped down in the same term
//! (CheckQuorum: no quorum heard from for an election timeout) or at a follower whose leader
//! changed. Only writes at a leader cut off from a quorum, while it has not heard of a newer
//! leader, stay until the request timeout (`tuning.request_timeout_ms`, 10 s): their outcome is
//! genuinely unknown.
//!
//! # Metrics and health
//! With `config.metrics_addr`, a thread of its own (not a shard: `http`) serves Prometheus
//! `/metrics`, `/health` and `/ready`. The shards pay only for counting: each shard writes its
//! own counters (`metrics`, relaxed atomics no other thread writes), the core counts
//! proposals, elections and snapshots, the driver times nothing itself but records the WAL's
//! write and fdatasync durations and a heartbeat per loop turn; the metrics thread reads all of
//! it, and the status shards publish anyway, only when scraped.
//!
//! # Files and ports
//! ```text
//! data_dir/shard-<i>/wal/          the shard's WAL segments (wal crate format)
//! data_dir/shard-<i>/snapshots/    <partition>-<index>-<term> snapshot files (engine::snapshot),
//!                                  only the newest per partition is kept
//! client_addr.port() + i           shard i's client listener
//! peer_addr.port() + i             shard i's peer listener (shard i of every other node dials it)
//! metrics_addr                     the operations HTTP port (optional; one per node)
//! ```
//!
//! # Known limits of this version
//! - Snapshot files are encoded on the shard thread and written (+ fsync) on glommio's
//!   blocking thread pool while the shard keeps running turns; but a *received* snapshot's
//!   file blocks the shard's WAL backlog until it is durable (every later record of every
//!   partition of the shard waits behind it, so records stay in order), so a large received
//!   snapshot delays that shard's durability meanwhile.
//! - The WAL writes one batch at a time: the next batch's write waits for the previous
//!   batch's fdatasync (the shard's turns do not; see "Pipelining").
//! - Membership and placement are static: raftcore supports learners and joint consensus,
//!   but nothing proposes a change yet (roadmap phase 2), so the map epoch stays 1.
//! - glommio 0.9 binds listeners with `SO_REUSEPORT`: a second process configured with the
//!   same port binds it too, silently, and the kernel splits connections between the two.
//!
//! # Stopping
//! [`run`] blocks SIGINT and SIGTERM in every thread, waits for one of them, then stops the
//! shards like [`ServerHandle::stop`]: each shard notices the stop flag at its next wake-up
//! (at most one heartbeat interval, `heartbeat_ticks * tick_ms`, later), drops its sockets
//! and files, and its thread ends. Nothing needs flushing: every acknowledged write was made
//! durable before it was acknowledged. [`run`] also returns (with the shard's error) when a
//! shard stops on its own after a fatal error such as a failed `fdatasync`.

pub(crate) mod convert;
mod driver;
pub mod events;
pub mod http;
pub mod metrics;
mod net;
pub(crate) mod recover;
mod requests;
pub mod shard_core;
pub mod shared;
pub mod tls;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use thiserror::Error;

use crate::config::{ConfigError, NodeConfig};

/// Locked memory glommio reserves per executor for DMA buffers (`io_memory`). Small, so that
/// several shards (and several nodes in one test process) fit under an 8 MiB RLIMIT_MEMLOCK;
/// larger WAL buffers fall back to aligned heap allocations (wal crate docs).
pub const IO_MEMORY_BYTES: usize = 1 << 20;

/// Why the server could not start or had to stop.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// The TLS files cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// A socket, file or thread operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The WAL failed (at open: corrupt or unusable; later: a failed sync is fatal).
    #[error("shard {shard}: WAL: {source}")]
    Wal {
        /// The shard.
        shard: usize,
        /// The WAL's error.
        #[source]
        source: wal::WalError,
    },
    /// A snapshot file could not be written or read.
    #[error("shard {shard}: snapshot: {reason}")]
    Snapshot {
        /// The shard.
        shard: usize,
        /// What went wrong.
        reason: String,
    },
    /// Recovered state does not fit together (WAL vs snapshot files), or raftcore refused it.
    #[error("shard {shard}, partition {partition}: recovery: {reason}")]
    Recovery {
        /// The shard.
        shard: usize,
        /// The partition.
        partition: u64,
        /// What does not fit.
        reason: String,
    },
    /// glommio could not create the executor.
    #[error("shard {shard}: executor: {reason}")]
    Executor {
        /// The shard.
        shard: usize,
        /// glommio's error.
        reason: String,
    },
    /// The cluster map committed by the meta group cannot be read, or this node's
    /// configuration disagrees with it.
    #[error("shard {shard}: {source}")]
    Map {
        /// The shard.
        shard: usize,
        /// What is wrong.
        #[source]
        source: crate::meta::MetaError,
    },
    /// An internal invariant does not hold (a bug): the shard stops rather than go on with
    /// state it cannot trust (STYLE.md §4).
    #[error("shard {shard}, partition {partition}: internal invariant violated: {what}")]
    Invariant {
        /// The shard.
        shard: usize,
        /// The partition (0 when shard-wide).
        partition: u64,
        /// What does not hold.
        what: String,
    },
    /// A shard thread panicked (a bug).
    #[error("shard {0} panicked")]
    Panicked(usize),
}

/// A running node. Dropping it without [`ServerHandle::stop`] leaves the shards running until
/// the process exits.
#[derive(Debug)]
pub struct ServerHandle {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<(), ServerError>>>,
    shared: Arc<shared::NodeShared>,
    /// The operations HTTP thread (`config.metrics_addr`), stopped after the shards.
    metrics: Option<http::MetricsServer>,
}

impl ServerHandle {
    /// Stops every shard and waits for their threads. Returns the first error a shard hit
    /// while running (e.g. a fatal WAL sync failure), if any.
    pub fn stop(mut self) -> Result<(), ServerError> {
        self.stop.store(true, Ordering::SeqCst);
        let r = join_all(std::mem::take(&mut self.threads));
        if let Some(m) = self.metrics.take() {
            m.stop();
        }
        r
    }

    /// The address of the operations HTTP port, when it is served.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(http::MetricsServer::addr)
    }

    /// True once a shard has stopped on its own (after a fatal error).
    pub fn has_failed(&self) -> bool {
        self.threads.iter().any(|t| t.is_finished())
    }

    /// Per-partition status as this node last published it (for tests and `ctl`).
    pub fn shared(&self) -> &Arc<shared::NodeShared> {
        &self.shared
    }
}

fn join_all(threads: Vec<JoinHandle<Result<(), ServerError>>>) -> Result<(), ServerError> {
    let mut first = Ok(());
    for (i, t) in threads.into_iter().enumerate() {
        let r = t.join().unwrap_or(Err(ServerError::Panicked(i)));
        if let Err(e) = r {
            tracing::error!(shard = i, error = %e, "shard stopped with an error");
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}

/// Starts a node: validates `config`, raises RLIMIT_MEMLOCK, recovers every shard (WAL and
/// snapshots), binds its listeners and returns once every shard is serving (or the first
/// shard error, after stopping the others).
pub fn start(config: NodeConfig) -> Result<ServerHandle, ServerError> {
    config.validate()?;
    let executors = config.shards as u64;
    match wal::raise_memlock_limit(IO_MEMORY_BYTES as u64 * executors + (1 << 20)) {
        Ok(limit) => tracing::debug!(limit, "RLIMIT_MEMLOCK"),
        Err(e) => tracing::warn!(error = %e, "could not raise RLIMIT_MEMLOCK"),
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::Io {
        what: format!("create data dir {}", config.data_dir.display()),
        source,
    })?;
    crate::backup::check_no_unfinished_restore(&config.data_dir).map_err(|reason| {
        ServerError::Recovery {
            shard: 0,
            partition: 0,
            reason,
        }
    })?;
    // A restored node names its backup; the cluster map records it and every node checks it
    // (`crate::meta`, "Restored clusters"), so an unreadable record stops the node.
    let restored = match crate::backup::restored_from(&config.data_dir) {
        Ok(Some(r)) => {
            tracing::info!(
                backup_id = %r.backup_id,
                backup_started_unix_ms = r.started_unix_ms,
                from = %r.from.display(),
                "data directory restored from a backup"
            );
            r.backup_id.0
        }
        Ok(None) => 0,
        Err(reason) => {
            return Err(ServerError::Recovery {
                shard: 0,
                partition: 0,
                reason: format!(
                    "cannot read the restore record ({reason}); it names the backup this node \
                     was restored from, which the cluster checks"
                ),
            })
        }
    };
    let config = Arc::new(config);
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(shared::NodeShared::new(&config));
    shared.set_restored_backup_id(restored);
    if let Some(files) = &config.tls {
        shared.set_tls(Arc::new(tls::NodeTls::load(files, config.id)?));
    }
    // Before the shards, so `/health` answers while they recover (and a taken port fails the
    // start at once). Dropped (stopped) on any start failure below.
    let metrics = match config.metrics_addr {
        Some(addr) => Some(http::MetricsServer::start(
            addr,
            config.clone(),
            shared.clone(),
        )?),
        None => None,
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(usize, Result<(), ServerError>)>();
    let mut threads = Vec::with_capacity(config.shards);
    for i in 0..config.shards {
        let config = config.clone();
        let stop2 = stop.clone();
        let shared = shared.clone();
        let ready_tx = ready_tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("corum-n{}-s{i}", config.id))
            .spawn(move || driver::thread_main(i, config, shared, stop2, ready_tx));
        match spawned {
            Ok(t) => threads.push(t),
            Err(source) => {
                stop.store(true, Ordering::SeqCst);
                let _ = join_all(threads);
                return Err(ServerError::Io {
                    what: "spawn shard thread".into(),
                    source,
                });
            }
        }
    }
    drop(ready_tx);
    let mut failure = None;
    for _ in 0..config.shards {
        match ready_rx.recv() {
            Ok((_, Ok(()))) => {}
            Ok((i, Err(e))) => {
                tracing::error!(shard = i, error = %e, "shard failed to start");
                failure.get_or_insert(e);
                break;
            }
            Err(_) => {
                failure.get_or_insert(ServerError::Panicked(usize::MAX));
                break;
            }
        }
    }
    if let Some(e) = failure {
        stop.store(true, Ordering::SeqCst);
        let _ = join_all(threads);
        return Err(e);
    }
    tracing::info!(
        node = config.id,
        shards = config.shards,
        client = %config.client_addr,
        peer = %config.peer_addr,
        data_dir = %config.data_dir.display(),
        "corum node serving"
    );
    shared.events.record(
        0,
        0,
        "node_started",
        format!(
            "{} shards, client {}, peer {}",
            config.shards, config.client_addr, config.peer_addr
        ),
    );
    Ok(ServerHandle {
        stop,
        threads,
        shared,
        metrics,
    })
}

/// Runs a node until SIGTERM or SIGINT, then stops it cleanly; SIGHUP reloads the TLS files.
/// The `corum serve` entry point.
pub fn run(config: NodeConfig) -> Result<(), ServerError> {
    // Block the signals in this thread before any shard thread exists, so every thread
    // inherits the mask and only the sigwait below receives them.
    let set = signal_set();
    // SAFETY: `set` is a valid, initialised sigset_t; pthread_sigmask only reads it.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(ServerError::Io {
            what: "block SIGINT/SIGTERM/SIGHUP".into(),
            source: std::io::Error::from_raw_os_error(rc),
        });
    }
    let shards = config.shards;
    let (tls_files, id) = (config.tls.clone(), config.id);
    let handle = start(config)?;
    // systemd (Type=notify): ready once every shard serves, as `start` returns. A no-op
    // without $NOTIFY_SOCKET. Serving is not `/ready` (every partition knows a leader): a
    // node waiting for the rest of its cluster must still count as started, or the first
    // node of a cluster started one unit at a time would never finish starting.
    if let Err(e) = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&format!("serving on {shards} shards")),
        ],
    ) {
        tracing::warn!(error = %e, "sd_notify READY=1 failed");
    }
    loop {
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let timeout = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        // SAFETY: valid set, out-pointer and timeout.
        let sig = unsafe { libc::sigtimedwait(&set, &mut info, &timeout) };
        if sig == libc::SIGHUP {
            reload_tls(&handle, tls_files.as_ref(), id);
            continue;
        }
        if sig > 0 {
            tracing::info!(signal = sig, "stopping");
            handle
                .shared
                .events
                .record(0, 0, "node_stopping", format!("signal {sig}"));
            break;
        }
        // A shard that stopped on its own hit a fatal error (e.g. a failed fdatasync): stop
        // the whole process, restart recovers from what is on disk.
        if handle.has_failed() {
            tracing::error!("a shard stopped on a fatal error; stopping the node");
            break;
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    handle.stop()
}

/// SIGHUP: reads the TLS files again (`server::tls`). New connections use the new
/// certificates; open ones keep theirs. Files that do not load are refused with a log line
/// and the node keeps the ones it has.
fn reload_tls(handle: &ServerHandle, files: Option<&crate::config::TlsFiles>, id: u64) {
    let Some(files) = files else {
        tracing::info!("SIGHUP: no TLS configured; nothing to reload");
        return;
    };
    match tls::NodeTls::load(files, id) {
        Ok(t) => {
            handle.shared.set_tls(Arc::new(t));
            tracing::info!(cert = %files.cert.display(), "SIGHUP: TLS certificates reloaded");
            handle
                .shared
                .events
                .record(0, 0, "tls_reloaded", files.cert.display().to_string());
        }
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: TLS reload refused; the previous certificates stay")
        }
    }
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set; sigaddset adds valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Directory of shard `shard`'s files under `data_dir`.
pub fn shard_dir(config: &NodeConfig, shard: usize) -> PathBuf {
    config.data_dir.join(format!("shard-{shard}"))
}
