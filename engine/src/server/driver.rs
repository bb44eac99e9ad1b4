//! The glommio driver of one shard: a thin loop that feeds the shard core (`super::core`)
//! events from sockets, timers and the disk, and carries out its actions (module docs of
//! `core`: the table of events and actions). Nothing here decides: routing, Readys,
//! durability, applies and answers are the core's; this file owns the executor, the WAL file,
//! the snapshot files, the sockets and the clock.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use glommio::channels::local_channel::LocalReceiver;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use raftcore::Message;
use wal::{LogStore, Wal, WalConfig};
use wire::{BodyEncoder, PeerBatch, RaftMessage};

use super::convert;
use super::metrics::{OpKind, ShardMetrics};
use super::net::{self, ConnOut, ShardIo};
use super::recover::FileSnapshots;
use super::shard_core::{Output, ShardCore, SnapshotWrite};
use super::shared::{Boot, NodeShared};
use super::{shard_dir, ServerError, IO_MEMORY_BYTES};
use crate::config::NodeConfig;
use crate::snapshot;

/// Largest peer frame body this shard builds, as a fraction of the frame limit (headroom for
/// flatbuffers overhead beyond the payload estimate).
const PEER_FRAME_FILL_DIVISOR: usize = 2;

type Core = ShardCore<Wal, FileSnapshots, ReplyTo>;

/// Where the core's answer to a request goes: the client connection, and the request's kind
/// (so the driver counts every answer by kind and result, `corum_requests_total`, without the
/// core knowing about metrics labels).
#[derive(Clone)]
pub struct ReplyTo {
    conn: Rc<ConnOut>,
    kind: OpKind,
    /// When the socket task decoded the request's frame (for the latency histogram).
    arrived: Instant,
}

/// Marks the shard's loop as ended in its metrics however the thread ends (error or panic),
/// so `/health` reports it.
struct LoopEndGuard(Arc<NodeShared>, usize);

impl Drop for LoopEndGuard {
    fn drop(&mut self) {
        self.0.metrics.shard(self.1).loop_ended();
    }
}

/// Entry point of a shard thread.
pub fn thread_main(
    i: usize,
    config: Arc<NodeConfig>,
    shared: Arc<NodeShared>,
    stop: Arc<AtomicBool>,
    ready_tx: std::sync::mpsc::Sender<(usize, Result<(), ServerError>)>,
) -> Result<(), ServerError> {
    // Shard 0 releases the shards waiting for its boot report however it ends (error or
    // panic); a report already made stays. Dropped after any error was sent on `ready_tx`.
    let _boot_guard = (i == 0).then(|| BootGuard(shared.clone()));
    shared.metrics.shard(i).thread_started();
    // Every line this shard logs names its node and shard (the executor runs only this
    // shard's tasks on this thread, so the span stays entered for the thread's life).
    let _span = shard_span(config.id, i).entered();
    let _loop_end = LoopEndGuard(shared.clone(), i);
    let placement = if config.pin {
        Placement::Fixed(i)
    } else {
        Placement::Unbound
    };
    // No spin_before_park: an idle shard sleeps in the kernel (idle CPU target, issue 5).
    let ex = LocalExecutorBuilder::new(placement)
        .name(&format!("corum-n{}-s{i}", config.id))
        .io_memory(IO_MEMORY_BYTES)
        .make();
    let ex = match ex {
        Ok(ex) => ex,
        Err(e) => {
            let _ = ready_tx.send((
                i,
                Err(ServerError::Executor {
                    shard: i,
                    reason: e.to_string(),
                }),
            ));
            return Ok(());
        }
    };
    ex.run(async move {
        let opened = Driver::open(i, config, shared.clone(), stop).await;
        let (driver, wake_rx) = match opened {
            Ok(x) => x,
            Err(e) => {
                // Report the real cause before releasing the waiting shards (whose own
                // "shard 0 did not start" must not arrive first).
                let _ = ready_tx.send((i, Err(e)));
                if i == 0 {
                    shared.fail_boot();
                }
                return Ok(());
            }
        };
        let _ = ready_tx.send((i, Ok(())));
        shared.metrics.shard(i).serving();
        driver.run(wake_rx).await
    })
}

/// The span every line of shard `shard`'s thread is logged in: it names the node and shard,
/// so those lines carry no `shard` field of their own (it would be printed twice). At level
/// ERROR, so any level filter that lets a line through keeps its span too (an INFO span
/// vanished from the warnings under `RUST_LOG=warn`); a span's level only filters it, it is
/// not printed.
pub(super) fn shard_span(node: u64, shard: usize) -> tracing::Span {
    tracing::error_span!("shard", node, shard)
}

/// Marks shard 0's boot as failed when dropped, unless it reported already.
struct BootGuard(Arc<NodeShared>);

impl Drop for BootGuard {
    fn drop(&mut self) {
        self.0.fail_boot();
    }
}

/// Disk work finished by a local task, waiting for the loop to hand it to the core.
#[derive(Default)]
struct Completions {
    sync: Option<(u64, Result<(), wal::WalError>)>,
    snapshots: Vec<(u64, u64, Result<(), String>)>,
}

struct Driver {
    i: usize,
    config: Arc<NodeConfig>,
    /// The node's shared state (this shard's metrics live in it).
    shared: Arc<NodeShared>,
    io: Rc<ShardIo>,
    core: Core,
    snap_dir: std::path::PathBuf,
    peers_out: BTreeMap<u64, Rc<net::PeerQueue>>,
    enc: BodyEncoder,
    done: Rc<RefCell<Completions>>,
    /// A sync task is running (never cancelled while the shard runs: a dropped sync poisons
    /// the WAL; on stop the loop waits for it).
    sync_running: Rc<Cell<bool>>,
    /// This shard's `slow_fsync` events, at most one per window (observed by the sync task,
    /// the end of a window checked on the tick).
    slow_fsync: Rc<RefCell<super::events::SlowFsyncEvents>>,
    /// This shard's `snapshot_sent` events, one per snapshot and follower.
    snapshot_sent: super::events::SnapshotSentEvents,
}

impl Driver {
    async fn open(
        i: usize,
        config: Arc<NodeConfig>,
        shared: Arc<NodeShared>,
        stop: Arc<AtomicBool>,
    ) -> Result<(Driver, LocalReceiver<()>), ServerError> {
        let dir = shard_dir(&config, i);
        let wal_dir = dir.join("wal");
        let snap_dir = dir.join("snapshots");
        std::fs::create_dir_all(&wal_dir)
            .map_err(io_err(format!("create {}", wal_dir.display())))?;
        std::fs::create_dir_all(&snap_dir)
            .map_err(io_err(format!("create {}", snap_dir.display())))?;
        if let Err(e) = snapshot::remove_stale_temp_files(&snap_dir) {
            tracing::warn!(error = %e, "could not remove temporary snapshot files");
        }
        let wal_cfg = WalConfig {
            segment_bytes: config.tuning.wal_segment_bytes,
            // Room for the largest entry (a frame) and then some; at most 16 MiB of memory.
            batch_bytes_max: (config.tuning.wal_segment_bytes - 8192).min(16 << 20),
            ..WalConfig::default()
        };
        let wal = Rc::new(
            Wal::open(&wal_dir, wal_cfg)
                .await
                .map_err(|source| ServerError::Wal { shard: i, source })?,
        );
        // The meta group first (shard 0): the map it holds decides which partitions every
        // shard opens (module docs of `meta`); the other shards wait for shard 0's report.
        let boot_map = if i == 0 {
            None
        } else {
            match shared.wait_boot(&stop) {
                Some(Boot::Recovered(map)) => map,
                _ => {
                    return Err(ServerError::Executor {
                        shard: i,
                        reason: "shard 0 (the meta group) did not start".into(),
                    })
                }
            }
        };
        let snaps = FileSnapshots {
            dir: snap_dir.clone(),
        };
        let mut core = Core::open(
            i,
            config.clone(),
            shared.clone(),
            wal.clone(),
            snaps,
            boot_map,
        )
        .await?;
        let mut first = core.take_output();
        if i == 0 {
            shared.set_boot(Boot::Recovered(first.map_committed.take()));
        }
        // Bootstrap records (snapshot points) become durable before anything else happens.
        if let Some(gen) = first.start_sync {
            let r = wal.sync().await.map(|_| ());
            core.sync_done(gen, r)?;
        }

        let (io, wake_rx) = ShardIo::new(i, config.clone(), shared.clone(), stop);
        let client_addr = config.shard_client_addr(i);
        let peer_addr = config.shard_peer_addr(i);
        let client_listener = TcpListener::bind(client_addr)
            .map_err(|e| io_err(format!("bind client port {client_addr}"))(e.into()))?;
        let peer_listener = TcpListener::bind(peer_addr)
            .map_err(|e| io_err(format!("bind peer port {peer_addr}"))(e.into()))?;
        io.spawn(net::client_listener(client_listener, io.clone()));
        io.spawn(net::peer_listener(peer_listener, io.clone()));
        let mut peers_out = BTreeMap::new();
        for (&node, &base) in &config.peers {
            if node == config.id {
                continue;
            }
            let (tx, rx) = net::peer_queue();
            let addr = crate::config::shard_addr(base, i);
            io.spawn(net::peer_dialer(io.clone(), node, addr, tx.clone(), rx));
            peers_out.insert(node, tx);
        }
        tracing::info!(
            partitions = core.partitions().count(),
            client = %client_addr,
            peer = %peer_addr,
            "shard serving"
        );
        let mut driver = Driver {
            i,
            config,
            shared,
            io,
            core,
            snap_dir,
            peers_out,
            enc: BodyEncoder::new(),
            done: Rc::new(RefCell::new(Completions::default())),
            sync_running: Rc::new(Cell::new(false)),
            slow_fsync: Rc::new(RefCell::new(super::events::SlowFsyncEvents::default())),
            snapshot_sent: super::events::SnapshotSentEvents::default(),
        };
        // Anything the sync at open produced (nothing is waiting yet).
        let out = driver.core.take_output();
        driver.carry_out(out);
        Ok((driver, wake_rx))
    }

    async fn run(mut self, wake_rx: LocalReceiver<()>) -> Result<(), ServerError> {
        let tick = Duration::from_millis(self.config.tuning.tick_ms);
        // Idle wake-up interval. Raft time is counted in ticks, but a shard with no I/O need not
        // wake every tick: it sleeps one heartbeat interval and, when it wakes (timer, socket
        // or disk), ticks once per tick elapsed in real time. Timeouts keep their real-time
        // length; the leader's heartbeats of all partitions then fall due in the same turn and
        // leave in one frame per node (coalesced heartbeats). Measured: this cut the idle CPU
        // of a 3-node cluster from 12% to under 2% of a core (bench-results).
        let idle_wait = tick * self.config.tuning.heartbeat_ticks;
        // Most ticks caught up at once (after a long stall, time beyond it is dropped rather
        // than replayed in a burst that could expire every election timer together).
        let catch_up_max = u64::from(self.config.tuning.heartbeat_ticks) * 2;
        let mut last_tick = Instant::now();
        let metrics_start = self.shared.metrics.start;
        loop {
            if self.io.stop.load(Ordering::Relaxed) {
                tracing::info!("shard stopping");
                self.shutdown().await;
                return Ok(());
            }
            let now = Instant::now();
            // The heartbeat `/health` checks (a relaxed store; the clock was read anyway).
            self.m().turned(metrics_start, now);
            let due =
                (now.saturating_duration_since(last_tick).as_nanos() / tick.as_nanos()) as u64;
            if due > 0 {
                for _ in 0..due.min(catch_up_max) {
                    self.core.tick();
                }
                // Slow syncs left out of a window that ended with none since: reported now,
                // not only with the next slow one (which may never come). The loop ticks at
                // least once per `idle_wait`, so they come at most that late.
                let ended = self.slow_fsync.borrow_mut().window_ended(now);
                if let Some(detail) = ended {
                    self.shared.events.record(self.i, 0, "slow_fsync", detail);
                }
                last_tick = if due > catch_up_max {
                    now
                } else {
                    last_tick + tick * due as u32
                };
            }
            let worked = match self.turn() {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!(error = %e, "shard stopping on a fatal error");
                    self.shutdown().await;
                    return Err(e);
                }
            };
            if worked {
                // Let the sockets' tasks and the disk tasks run before deciding.
                futures_lite::future::yield_now().await;
            }
            // Sleep until a socket, a disk task or the timer wakes us, unless there is work
            // already. Bounded pipeline: while the core says it is full, only a completion
            // (which wakes us) or the timer ends the wait.
            loop {
                if self.has_work() {
                    break;
                }
                let wait = (last_tick + idle_wait).saturating_duration_since(Instant::now());
                if wait.is_zero() {
                    break;
                }
                let woke = futures_lite::future::or(
                    async {
                        wake_rx.recv().await;
                        true
                    },
                    async {
                        glommio::timer::sleep(wait).await;
                        false
                    },
                )
                .await;
                if !woke {
                    break;
                }
            }
        }
    }

    /// True if a turn has something to do now.
    fn has_work(&self) -> bool {
        if self.io.stop.load(Ordering::Relaxed) {
            return true;
        }
        {
            let done = self.done.borrow();
            if done.sync.is_some() || !done.snapshots.is_empty() {
                return true;
            }
        }
        if self.core.pipeline_full() {
            return false;
        }
        let inbox = self.io.inbox.borrow();
        !inbox.peer.is_empty() || !inbox.requests.is_empty() || self.core.has_work()
    }

    /// One turn: hand completions and the inbox to the core, run its turn, carry out its
    /// actions. Returns whether there was work.
    fn turn(&mut self) -> Result<bool, ServerError> {
        let mut worked = false;
        let (sync, snaps) = {
            let mut d = self.done.borrow_mut();
            (d.sync.take(), std::mem::take(&mut d.snapshots))
        };
        if let Some((gen, r)) = sync {
            self.core.sync_done(gen, r)?;
            worked = true;
        }
        for (p, index, r) in snaps {
            self.core.snapshot_written(p, index, r)?;
            worked = true;
        }
        if !self.core.pipeline_full() {
            let (peer, requests) = {
                let mut inbox = self.io.inbox.borrow_mut();
                if inbox.peer_dropped > 0 {
                    self.shared
                        .metrics
                        .shard(self.i)
                        .peer_messages_dropped
                        .add(inbox.peer_dropped);
                    tracing::warn!(
                        dropped = inbox.peer_dropped,
                        "peer inbox full; messages dropped"
                    );
                    inbox.peer_dropped = 0;
                }
                (
                    std::mem::take(&mut inbox.peer),
                    std::mem::take(&mut inbox.requests),
                )
            };
            worked |= !peer.is_empty() || !requests.is_empty();
            for (p, m) in peer {
                self.core.step_peer(p, m);
            }
            for (conn, r, arrived) in requests {
                let kind = OpKind::of(&r.op);
                self.core.request(
                    ReplyTo {
                        conn,
                        kind,
                        arrived,
                    },
                    r,
                );
            }
        }
        if let Some(map) = self.io.shared.map() {
            if self.core.map().is_none_or(|m| m.epoch < map.epoch) {
                self.core.adopt_map(map)?;
            }
        }
        worked |= self.core.turn()?;
        let out = self.core.take_output();
        self.carry_out(out);
        Ok(worked)
    }

    /// Carries out the core's actions.
    fn carry_out(&mut self, out: Output<ReplyTo>) {
        self.send(out.messages);
        let m = self.shared.metrics.shard(self.i);
        let now = (!out.replies.is_empty()).then(Instant::now);
        for (to, r) in out.replies {
            m.answered(to.kind, r.outcome.as_ref().map(|_| ()));
            if let Some(now) = now {
                let ns = now.saturating_duration_since(to.arrived).as_nanos();
                m.request_duration(to.kind)
                    .observe(u64::try_from(ns).unwrap_or(u64::MAX));
            }
            to.conn.respond(r);
        }
        if let Some(map) = out.map_committed {
            self.io.shared.set_map(map);
        }
        if let Some(gen) = out.start_sync {
            self.start_sync(gen);
        }
        for w in out.snapshot_writes {
            self.write_snapshot(w);
        }
    }

    /// Runs one WAL sync in a local task; its result waits in `done` for the next turn.
    fn start_sync(&self, gen: u64) {
        assert!(
            !self.sync_running.get(),
            "shard {}: the core started sync {gen} while one is running",
            self.i
        );
        self.sync_running.set(true);
        self.m()
            .wal_sync_started(self.shared.metrics.start, Instant::now());
        let wal = self.core.log().clone();
        let done = self.done.clone();
        let running = self.sync_running.clone();
        let io = self.io.clone();
        let shared = self.shared.clone();
        let slow_fsync = self.slow_fsync.clone();
        let i = self.i;
        glommio::spawn_local(async move {
            let r = wal.sync().await;
            let m = shared.metrics.shard(i);
            m.wal_sync_finished();
            let r = r.map(|report| {
                // An empty batch wrote nothing (no device bytes): not a WAL write.
                if report.device_bytes > 0 {
                    m.wal_syncs.inc();
                    m.wal_bytes.add(report.device_bytes);
                    m.wal_write.observe_duration(report.write_time);
                    m.wal_fdatasync.observe_duration(report.fdatasync_time);
                    m.slowest_fsync.observe(
                        shared.metrics.start.elapsed().as_millis() as u64,
                        report.fdatasync_time.as_micros() as u64,
                    );
                    if report.fdatasync_time > super::events::SLOW_FSYNC {
                        if let Some(detail) = slow_fsync.borrow_mut().observe(
                            Instant::now(),
                            report.fdatasync_time,
                            report.device_bytes,
                        ) {
                            shared.events.record(i, 0, "slow_fsync", detail);
                        }
                    }
                }
            });
            done.borrow_mut().sync = Some((gen, r));
            running.set(false);
            io.wake();
        })
        .detach();
    }

    /// Writes a snapshot file (write, fsync, rename, fsync the directory:
    /// `snapshot::write_file`) on glommio's blocking thread pool, so the shard keeps running
    /// while the disk works; the core buffers nothing that depends on it meanwhile.
    fn write_snapshot(&self, w: SnapshotWrite) {
        let dir = self.snap_dir.clone();
        let done = self.done.clone();
        let io = self.io.clone();
        glommio::spawn_local(async move {
            let SnapshotWrite {
                partition,
                index,
                data,
                name,
                ..
            } = w;
            let r = glommio::executor()
                .spawn_blocking(move || snapshot::write_file(&dir, &name, &data).map(|_| ()))
                .await
                .map_err(|e| e.to_string());
            done.borrow_mut().snapshots.push((partition, index, r));
            io.wake();
        })
        .detach();
    }

    /// Stops: lets the sync in flight finish (dropping it would poison the WAL; nothing waits
    /// for its outcome any more), then closes the sockets.
    async fn shutdown(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.sync_running.get() && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        self.io.shutdown().await;
    }

    /// This shard's metrics.
    fn m(&self) -> &ShardMetrics {
        self.shared.metrics.shard(self.i)
    }

    /// Sends messages, batched into one frame per destination node (split when large).
    fn send(&mut self, msgs: Vec<(u64, Message)>) {
        if msgs.is_empty() {
            return;
        }
        let mut by_node: BTreeMap<u64, Vec<(u64, RaftMessage)>> = BTreeMap::new();
        let metrics = self.shared.metrics.shard(self.i);
        for (p, m) in msgs {
            if let Some(s) = &m.snapshot {
                metrics.snapshots_sent.inc();
                metrics.snapshot_sent_bytes.add(s.data.len() as u64);
                if s.offset == 0 && self.snapshot_sent.first_send(p, m.to, s.index) {
                    self.shared.events.record(
                        self.i,
                        p,
                        "snapshot_sent",
                        format!(
                            "to node {}: index {}, {} bytes",
                            m.to, s.index, s.total_bytes
                        ),
                    );
                }
            }
            by_node
                .entry(m.to)
                .or_default()
                .push((p, convert::to_wire(m)));
        }
        let fill_max = self.io.limits.frame_bytes_max / PEER_FRAME_FILL_DIVISOR;
        for (node, messages) in by_node {
            let Some(tx) = self.peers_out.get(&node) else {
                tracing::warn!(node, "message for an unknown node; dropped");
                continue;
            };
            let mut batch: Vec<(u64, RaftMessage)> = Vec::new();
            let mut bytes = 0usize;
            let mut frames: Vec<Vec<(u64, RaftMessage)>> = Vec::new();
            for (p, m) in messages {
                let size = 128
                    + m.entries.iter().map(|e| e.data.len() + 32).sum::<usize>()
                    + m.snapshot.as_ref().map_or(0, |s| s.data.len() + 64);
                if !batch.is_empty() && bytes + size > fill_max {
                    frames.push(std::mem::take(&mut batch));
                    bytes = 0;
                }
                bytes += size;
                batch.push((p, m));
            }
            if !batch.is_empty() {
                frames.push(batch);
            }
            for messages in frames {
                let pb = PeerBatch {
                    from_node: self.config.id,
                    to_node: node,
                    messages,
                };
                let mut buf = BytesMut::new();
                if let Err(e) = self.enc.peer_frame(&mut buf, 0, &pb, &self.io.limits) {
                    tracing::error!(node, error = %e, "peer frame over the limit; dropped");
                    continue;
                }
                if !tx.push(buf.freeze()) {
                    metrics.peer_frames_dropped.inc();
                }
            }
        }
    }
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> ServerError {
    move |source| ServerError::Io { what, source }
}
