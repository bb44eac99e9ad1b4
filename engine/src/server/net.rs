//! A shard's sockets: client connections, incoming peer connections, outgoing peer
//! connections. These tasks only move bytes and decode frames; every decision is taken by the
//! shard's event loop, which they feed through the [`ShardIo`] inbox and wake through a
//! capacity-1 channel.
//!
//! # Peer hello
//! The first frame on a peer connection (dialler -> listener) is a hello: a `PeerMessages` frame
//! whose batch holds exactly one message for the reserved partition [`HELLO_PARTITION`], kind
//! Heartbeat, with `from` = the dialling node's id, `to` = the listening node's id, `term` =
//! the dialler's shard count, `index` = the dialler's shard index, `context` =
//! [`HELLO_MAGIC`], and one entry whose data is the dialler's base client address (shard 0) as
//! UTF-8 `host:port`. The wire crate has no hello message; this reuses the peer schema so the
//! same decoder and verifier check it. A hello with another shard count, another shard index,
//! a wrong recipient or a bad address is refused with a logged reason and the connection
//! closed.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use wire::{
    BodyEncoder, FrameDecoder, FrameKind, Limits, PeerBatch, RaftMessage, Request, Response,
    ResponseBatch, ServerError as WireError,
};

use super::convert;
use super::shared::NodeShared;
use crate::config::NodeConfig;

/// Partition id reserved for the hello message (never a real partition).
pub const HELLO_PARTITION: u64 = u64::MAX;
/// `context` of a hello message: "CORUMHI1" in ASCII.
pub const HELLO_MAGIC: u64 = u64::from_le_bytes(*b"CORUMHI1");
/// Bytes read from a socket at a time.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Most frame-level error replies waiting on one connection; a client that keeps sending bad
/// frames without reading the replies is disconnected.
const FRAME_ERRORS_MAX: usize = 64;
/// Most responses encoded into one frame.
const RESPONSES_PER_FRAME_MAX: usize = 1024;
/// Most encoded frames queued for one peer; beyond it frames are dropped (Raft retransmits).
pub const PEER_QUEUE_FRAMES_MAX: usize = 1024;
/// Reconnect backoff bounds for outgoing peer connections.
const RECONNECT_MIN: Duration = Duration::from_millis(20);
const RECONNECT_MAX: Duration = Duration::from_millis(1000);

/// The output side of one client connection: responses waiting to be written.
pub struct ConnOut {
    responses: RefCell<Vec<Response>>,
    frame_errors: RefCell<Vec<(u64, WireError)>>,
    inflight: Cell<usize>,
    closed: Cell<bool>,
    notify: LocalSender<()>,
}

impl ConnOut {
    /// Queues the answer to a request that was counted in flight.
    pub fn respond(&self, r: Response) {
        self.inflight.set(self.inflight.get().saturating_sub(1));
        if self.closed.get() {
            return;
        }
        self.responses.borrow_mut().push(r);
        let _ = self.notify.try_send(());
    }

    fn respond_uncounted(&self, r: Response) {
        self.responses.borrow_mut().push(r);
        let _ = self.notify.try_send(());
    }

    fn frame_error(&self, frame_id: u64, e: WireError) {
        self.frame_errors.borrow_mut().push((frame_id, e));
        let _ = self.notify.try_send(());
    }
}

/// Work handed from the socket tasks to the shard's event loop.
#[derive(Default)]
pub struct Inbox {
    /// Peer messages: (partition, message).
    pub peer: Vec<(u64, raftcore::Message)>,
    /// Client requests with the connection to answer on.
    pub requests: Vec<(Rc<ConnOut>, Request)>,
    /// Peer messages dropped because the inbox was full (Raft retransmits).
    pub peer_dropped: u64,
}

/// What the socket tasks of one shard share with its event loop.
pub struct ShardIo {
    /// The shard index.
    pub shard: usize,
    /// The node configuration.
    pub config: Arc<NodeConfig>,
    /// Node-wide shared state.
    pub shared: Arc<NodeShared>,
    /// Incoming work.
    pub inbox: RefCell<Inbox>,
    wake: LocalSender<()>,
    connections: Cell<usize>,
    /// Wire limits (from the tuning).
    pub limits: Limits,
    /// Most peer messages waiting in the inbox.
    pub peer_inbox_max: usize,
    /// Set when the node stops.
    pub stop: Arc<AtomicBool>,
    /// Closed at shutdown: every socket task waits on it alongside its work, so closing it
    /// ends them all and drops their sockets (glommio does not drop detached tasks when an
    /// executor stops, and a listener left open would keep accepting connections).
    shutdown: glommio::sync::Semaphore,
    live_tasks: Cell<usize>,
}

impl ShardIo {
    /// A new I/O context and the receiver the event loop waits on.
    pub fn new(
        shard: usize,
        config: Arc<NodeConfig>,
        shared: Arc<NodeShared>,
        stop: Arc<AtomicBool>,
    ) -> (Rc<ShardIo>, LocalReceiver<()>) {
        let (wake, wake_rx) = local_channel::new_bounded(1);
        let t = &config.tuning;
        let limits = Limits {
            frame_bytes_max: t.frame_bytes_max,
            key_bytes_max: t.key_bytes_max,
            value_bytes_max: t.value_bytes_max,
            ..Limits::default()
        };
        let io = ShardIo {
            shard,
            shared,
            inbox: RefCell::new(Inbox::default()),
            wake,
            connections: Cell::new(0),
            limits,
            peer_inbox_max: 1 << 16,
            stop,
            config,
            shutdown: glommio::sync::Semaphore::new(0),
            live_tasks: Cell::new(0),
        };
        (Rc::new(io), wake_rx)
    }

    /// Spawns a socket task that ends at the latest at [`ShardIo::shutdown`].
    pub fn spawn(self: &Rc<Self>, f: impl std::future::Future<Output = ()> + 'static) {
        let io = self.clone();
        io.live_tasks.set(io.live_tasks.get() + 1);
        glommio::spawn_local(async move {
            futures_lite::future::or(f, async {
                let _ = io.shutdown.acquire(1).await;
            })
            .await;
            io.live_tasks.set(io.live_tasks.get() - 1);
        })
        .detach();
    }

    /// Ends every socket task (closing their sockets) and waits, up to a second, until they
    /// have all finished.
    pub async fn shutdown(&self) {
        self.shutdown.close();
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while self.live_tasks.get() > 0 && std::time::Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        if self.live_tasks.get() > 0 {
            tracing::warn!(
                shard = self.shard,
                tasks = self.live_tasks.get(),
                "socket tasks still running at shutdown"
            );
        }
    }

    /// Wakes the event loop (coalesced: one pending wake at most).
    pub fn wake(&self) {
        let _ = self.wake.try_send(());
    }
}

// ---------------------------------------------------------------- client side

/// Accepts client connections until the node stops.
pub async fn client_listener(listener: TcpListener, io: Rc<ShardIo>) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(shard = io.shard, error = %e, "client accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if io.stop.load(Ordering::Relaxed) {
            return;
        }
        if io.connections.get() >= io.config.tuning.connections_max {
            tracing::warn!(
                shard = io.shard,
                limit = io.config.tuning.connections_max,
                "client connection refused: connections_max reached"
            );
            drop(stream);
            continue;
        }
        io.connections.set(io.connections.get() + 1);
        let io2 = io.clone();
        io.spawn(async move {
            serve_client(stream, &io2).await;
            io2.connections.set(io2.connections.get() - 1);
        });
    }
}

async fn serve_client(stream: TcpStream, io: &Rc<ShardIo>) {
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let (notify, notify_rx) = local_channel::new_bounded(1);
    let out = Rc::new(ConnOut {
        responses: RefCell::new(Vec::new()),
        frame_errors: RefCell::new(Vec::new()),
        inflight: Cell::new(0),
        closed: Cell::new(false),
        notify,
    });
    let (mut rd, wr) = futures_lite::io::split(stream);
    let writer = glommio::spawn_local(client_writer(wr, out.clone(), notify_rx, io.limits));
    let decoder = FrameDecoder::new(io.limits);
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let inflight_max = io.config.tuning.connection_requests_max;
    let reason = 'conn: loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if frame.kind != FrameKind::ClientRequests {
                        tracing::warn!(client = %peer, kind = ?frame.kind, "client sent a non-request frame");
                        out.frame_error(
                            frame.request_id,
                            WireError::InvalidArgument {
                                reason: format!("frame kind {:?} on the client port", frame.kind),
                            },
                        );
                        if out.frame_errors.borrow().len() >= FRAME_ERRORS_MAX {
                            break 'conn "too many bad frames unanswered";
                        }
                        continue;
                    }
                    let requests = match wire::decode_requests(&frame.body, &io.limits) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(client = %peer, error = %e, "bad request frame body");
                            out.frame_error(frame.request_id, e.to_server_error());
                            if out.frame_errors.borrow().len() >= FRAME_ERRORS_MAX {
                                break 'conn "too many bad frames unanswered";
                            }
                            continue;
                        }
                    };
                    // Busy answers are not counted in flight: a client that floods requests
                    // without reading its answers is disconnected rather than buffered.
                    if out.responses.borrow().len() > 2 * inflight_max {
                        break 'conn "client does not read its responses";
                    }
                    let mut queued = false;
                    for r in requests {
                        if out.inflight.get() >= inflight_max {
                            out.respond_uncounted(Response {
                                id: r.id,
                                header: Default::default(),
                                outcome: Err(WireError::Busy),
                            });
                            continue;
                        }
                        out.inflight.set(out.inflight.get() + 1);
                        io.inbox.borrow_mut().requests.push((out.clone(), r));
                        queued = true;
                    }
                    if queued {
                        io.wake();
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(client = %peer, error = %e, "bad frame from client; closing");
                    if let Some(id) = e.request_id() {
                        out.frame_error(id, e.to_server_error());
                    }
                    break 'conn "bad frame";
                }
            }
        }
        match rd.read(&mut chunk).await {
            Ok(0) => break "closed by client",
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                tracing::debug!(client = %peer, error = %e, "client read failed");
                break "read failed";
            }
        }
    };
    tracing::debug!(client = %peer, reason, "client connection ends");
    out.closed.set(true);
    let _ = out.notify.try_send(());
    writer.await;
}

async fn client_writer(
    mut wr: futures_lite::io::WriteHalf<TcpStream>,
    out: Rc<ConnOut>,
    notify: LocalReceiver<()>,
    limits: Limits,
) {
    let mut enc = BodyEncoder::new();
    let mut buf = BytesMut::new();
    while notify.recv().await.is_some() {
        buf.clear();
        let errors: Vec<(u64, WireError)> = std::mem::take(&mut *out.frame_errors.borrow_mut());
        for (id, e) in errors {
            let batch = ResponseBatch {
                frame_error: Some(e),
                responses: Vec::new(),
            };
            let _ = enc.response_frame(&mut buf, id, &batch, &limits);
        }
        let responses: Vec<Response> = std::mem::take(&mut *out.responses.borrow_mut());
        encode_responses(&mut enc, &mut buf, responses, &limits);
        if !buf.is_empty() && wr.write_all(&buf).await.is_err() {
            out.closed.set(true);
            return;
        }
        if out.closed.get() {
            let _ = wr.close().await;
            return;
        }
    }
}

/// Encodes responses into frames of at most [`RESPONSES_PER_FRAME_MAX`], splitting further
/// when a frame would exceed the frame limit (a response too large alone becomes `TooLarge`).
fn encode_responses(
    enc: &mut BodyEncoder,
    buf: &mut BytesMut,
    responses: Vec<Response>,
    limits: &Limits,
) {
    let mut rest = responses;
    while !rest.is_empty() {
        let n = rest.len().min(RESPONSES_PER_FRAME_MAX);
        let tail = rest.split_off(n);
        encode_chunk(enc, buf, rest, limits);
        rest = tail;
    }
}

fn encode_chunk(enc: &mut BodyEncoder, buf: &mut BytesMut, chunk: Vec<Response>, limits: &Limits) {
    let batch = ResponseBatch {
        frame_error: None,
        responses: chunk,
    };
    if enc.response_frame(buf, 0, &batch, limits).is_ok() {
        return;
    }
    let mut chunk = batch.responses;
    if chunk.len() > 1 {
        let tail = chunk.split_off(chunk.len() / 2);
        encode_chunk(enc, buf, chunk, limits);
        encode_chunk(enc, buf, tail, limits);
        return;
    }
    for r in chunk {
        tracing::warn!(
            id = r.id,
            "response over the frame limit; answering TooLarge"
        );
        let small = ResponseBatch {
            frame_error: None,
            responses: vec![Response {
                id: r.id,
                header: r.header,
                outcome: Err(WireError::TooLarge {
                    limit: limits.frame_bytes_max as u64,
                }),
            }],
        };
        let _ = enc.response_frame(buf, 0, &small, limits);
    }
}

// ---------------------------------------------------------------- peer side

/// Accepts peer connections until the node stops.
pub async fn peer_listener(listener: TcpListener, io: Rc<ShardIo>) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(shard = io.shard, error = %e, "peer accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let io2 = io.clone();
        io.spawn(async move { serve_peer(stream, &io2).await });
    }
}

/// Checks a hello (layout in the module docs); returns (node, client base) or the reason.
fn check_hello(batch: &PeerBatch, io: &ShardIo) -> Result<(u64, SocketAddr), String> {
    let [(partition, m)] = batch.messages.as_slice() else {
        return Err(format!(
            "first frame has {} messages, not one hello",
            batch.messages.len()
        ));
    };
    if *partition != HELLO_PARTITION || m.context != HELLO_MAGIC {
        return Err("first frame is not a hello".into());
    }
    if m.to != io.config.id || batch.to_node != io.config.id {
        return Err(format!(
            "hello for node {}, this is node {}",
            m.to, io.config.id
        ));
    }
    if m.from == io.config.id || !io.config.peers.contains_key(&m.from) {
        return Err(format!("hello from node {}, not a peer", m.from));
    }
    if m.term != io.config.shards as u64 {
        return Err(format!(
            "node {} runs {} shards, this node runs {}; every node must run the same number",
            m.from, m.term, io.config.shards
        ));
    }
    if m.index != io.shard as u64 {
        return Err(format!(
            "hello from shard {} reached shard {}",
            m.index, io.shard
        ));
    }
    let addr = m
        .entries
        .first()
        .and_then(|e| std::str::from_utf8(&e.data).ok())
        .and_then(|s| s.parse::<SocketAddr>().ok())
        .ok_or_else(|| "hello without a valid client address".to_string())?;
    Ok((m.from, addr))
}

async fn serve_peer(stream: TcpStream, io: &Rc<ShardIo>) {
    let _ = stream.set_nodelay(true);
    let remote = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut rd = stream;
    let decoder = FrameDecoder::new(io.limits);
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut from_node: Option<u64> = None;
    let reason: String = 'conn: loop {
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => break 'conn format!("bad frame: {e}"),
            };
            if frame.kind != FrameKind::PeerMessages {
                break 'conn format!("frame kind {:?} on the peer port", frame.kind);
            }
            let batch = match wire::decode_peer_batch(&frame.body, &io.limits) {
                Ok(b) => b,
                Err(e) => break 'conn format!("bad peer batch: {e}"),
            };
            let Some(node) = from_node else {
                match check_hello(&batch, io) {
                    Ok((node, base)) => {
                        io.shared.learn_client_base(node, base);
                        tracing::info!(shard = io.shard, node, %remote, "peer connected");
                        from_node = Some(node);
                        continue;
                    }
                    Err(why) => break 'conn format!("hello refused: {why}"),
                }
            };
            if batch.from_node != node || batch.to_node != io.config.id {
                break 'conn format!(
                    "batch from node {} to {} on node {node}'s connection",
                    batch.from_node, batch.to_node
                );
            }
            let mut inbox = io.inbox.borrow_mut();
            for (partition, m) in batch.messages {
                if m.from != node {
                    tracing::warn!(
                        node,
                        from = m.from,
                        "peer message with a foreign sender; dropped"
                    );
                    continue;
                }
                match convert::from_wire(m) {
                    Ok(m) if inbox.peer.len() < io.peer_inbox_max => {
                        inbox.peer.push((partition, m))
                    }
                    Ok(_) => inbox.peer_dropped += 1,
                    Err(e) => tracing::warn!(node, error = %e, "bad peer message; dropped"),
                }
            }
            drop(inbox);
            io.wake();
        }
        match rd.read(&mut chunk).await {
            Ok(0) => break "closed by peer".into(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => break format!("read failed: {e}"),
        }
    };
    if reason.starts_with("closed") || reason.starts_with("read failed") {
        tracing::debug!(shard = io.shard, %remote, %reason, "peer connection ends");
    } else {
        tracing::warn!(shard = io.shard, %remote, %reason, "peer connection closed");
    }
}

/// Encodes the hello frame this shard sends to `to_node`.
pub fn hello_frame(io: &ShardIo, to_node: u64) -> Option<Bytes> {
    let mut m = RaftMessage::new(wire::MessageKind::Heartbeat);
    m.from = io.config.id;
    m.to = to_node;
    m.term = io.config.shards as u64;
    m.index = io.shard as u64;
    m.context = HELLO_MAGIC;
    m.entries.push(wire::Entry {
        index: 0,
        term: 0,
        kind: 0,
        data: Bytes::from(io.config.client_addr.to_string()),
    });
    let batch = PeerBatch {
        from_node: io.config.id,
        to_node,
        messages: vec![(HELLO_PARTITION, m)],
    };
    let mut out = BytesMut::new();
    BodyEncoder::new()
        .peer_frame(&mut out, 0, &batch, &io.limits)
        .ok()?;
    Some(out.freeze())
}

/// A bounded queue of encoded frames for one peer, with a coalescing wake-up.
pub struct PeerQueue {
    frames: RefCell<std::collections::VecDeque<Bytes>>,
    notify: LocalSender<()>,
    /// Frames dropped because the queue was full, since the last report.
    dropped: Cell<u64>,
}

impl PeerQueue {
    /// Queues a frame; drops it when [`PEER_QUEUE_FRAMES_MAX`] frames are waiting (Raft
    /// retransmits whatever matters).
    pub fn push(&self, frame: Bytes) {
        let mut q = self.frames.borrow_mut();
        if q.len() >= PEER_QUEUE_FRAMES_MAX {
            self.dropped.set(self.dropped.get() + 1);
            return;
        }
        q.push_back(frame);
        let _ = self.notify.try_send(());
    }
}

/// A new peer queue and the receiver its dialer waits on.
pub fn peer_queue() -> (Rc<PeerQueue>, LocalReceiver<()>) {
    let (notify, rx) = local_channel::new_bounded(1);
    (
        Rc::new(PeerQueue {
            frames: RefCell::new(std::collections::VecDeque::new()),
            notify,
            dropped: Cell::new(0),
        }),
        rx,
    )
}

/// Keeps a connection to shard `io.shard` of `node` at `addr` and writes the frames queued on
/// `queue`. Reconnects with exponential backoff; frames queued while disconnected are discarded
/// when a new connection starts (Raft retransmits what matters).
pub async fn peer_dialer(
    io: Rc<ShardIo>,
    node: u64,
    addr: SocketAddr,
    queue: Rc<PeerQueue>,
    notify: LocalReceiver<()>,
) {
    let mut backoff = RECONNECT_MIN;
    let mut logged_down = false;
    loop {
        if io.stop.load(Ordering::Relaxed) {
            return;
        }
        let mut stream = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => {
                if !logged_down {
                    tracing::info!(shard = io.shard, node, %addr, error = %e, "peer unreachable; retrying");
                    logged_down = true;
                }
                queue.frames.borrow_mut().clear();
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Drop whatever piled up while disconnected.
        queue.frames.borrow_mut().clear();
        let Some(hello) = hello_frame(&io, node) else {
            tracing::error!("hello frame does not fit the frame limit");
            return;
        };
        if stream.write_all(&hello).await.is_err() {
            glommio::timer::sleep(backoff).await;
            continue;
        }
        tracing::debug!(shard = io.shard, node, %addr, "connected to peer");
        backoff = RECONNECT_MIN;
        logged_down = false;
        let mut buf: Vec<u8> = Vec::new();
        loop {
            if queue.frames.borrow().is_empty() && notify.recv().await.is_none() {
                return;
            }
            let dropped = queue.dropped.replace(0);
            if dropped > 0 {
                tracing::debug!(
                    shard = io.shard,
                    node,
                    dropped,
                    "peer queue was full; frames dropped"
                );
            }
            buf.clear();
            {
                let mut q = queue.frames.borrow_mut();
                while buf.len() < (1 << 20) {
                    match q.pop_front() {
                        Some(f) => buf.extend_from_slice(&f),
                        None => break,
                    }
                }
            }
            if buf.is_empty() {
                continue;
            }
            if let Err(e) = stream.write_all(&buf).await {
                tracing::info!(shard = io.shard, node, error = %e, "peer connection lost; reconnecting");
                break;
            }
        }
    }
}
