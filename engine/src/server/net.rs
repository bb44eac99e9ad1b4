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
    ResponseBatch, ServerError as WireError, BATCH_ENCODED_BYTES_MAX,
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
/// Most responses encoded into one frame (frames are also packed by size: `pack_responses`).
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
        let limits = wire_limits(&config);
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
        let metrics = io.shared.metrics.shard(io.shard);
        if io.connections.get() >= io.config.tuning.connections_max {
            metrics.client_connections_refused.inc();
            tracing::warn!(
                shard = io.shard,
                limit = io.config.tuning.connections_max,
                "client connection refused: connections_max reached"
            );
            drop(stream);
            continue;
        }
        io.connections.set(io.connections.get() + 1);
        metrics.client_connections_accepted.inc();
        metrics.client_connections.set(io.connections.get() as u64);
        let io2 = io.clone();
        io.spawn(async move {
            serve_client(stream, &io2).await;
            io2.connections.set(io2.connections.get() - 1);
            let metrics = io2.shared.metrics.shard(io2.shard);
            metrics.client_connections.set(io2.connections.get() as u64);
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
                            io.shared
                                .metrics
                                .shard(io.shard)
                                .answered(super::metrics::OpKind::of(&r.op), Err(&WireError::Busy));
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
        for frame in pack_responses(responses, &limits) {
            encode_frame(&mut enc, &mut buf, frame, &limits);
            // Write as we go: at most about two frames wait in `buf`, however many responses
            // were queued.
            if buf.len() >= limits.frame_bytes_max {
                if wr.write_all(&buf).await.is_err() {
                    out.closed.set(true);
                    return;
                }
                buf.clear();
            }
        }
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

/// The wire limits of a node (from its tuning).
pub fn wire_limits(config: &NodeConfig) -> Limits {
    let t = &config.tuning;
    Limits {
        frame_bytes_max: t.frame_bytes_max,
        key_bytes_max: t.key_bytes_max,
        value_bytes_max: t.value_bytes_max,
        ..Limits::default()
    }
}

/// The budget for the key-values of one range reply, as [`crate::state_machine::StateMachine::range`]
/// counts them: what a frame's body holds besides the batch and the response around them. A
/// page within it always fits one frame (the state machine counts every key-value at least as
/// large as its encoding, checked below).
pub fn range_bytes_max(limits: &Limits) -> usize {
    let empty = Response {
        id: 0,
        header: Default::default(),
        outcome: Ok(wire::Outcome::Range(wire::RangeResult::default())),
    };
    limits
        .body_bytes_max()
        .saturating_sub(BATCH_ENCODED_BYTES_MAX + empty.encoded_bytes_max())
}

// The state machine's range budget counts each key-value at least as large as the wire needs.
const _: () =
    assert!(wire::KV_ENCODED_OVERHEAD_BYTES <= crate::state_machine::RANGE_ENTRY_OVERHEAD_BYTES);

/// Splits `responses` into frames of at most [`RESPONSES_PER_FRAME_MAX`] and at most the frame
/// limit, by their encoded-size bounds ([`Response::encoded_bytes_max`]), before encoding
/// anything: no body over the limit is ever built. A response too large for a frame alone is
/// first cut down by [`fit_frame`].
fn pack_responses(responses: Vec<Response>, limits: &Limits) -> Vec<Vec<Response>> {
    let body_max = limits.body_bytes_max();
    let mut frames = Vec::new();
    let mut frame = Vec::new();
    let mut bytes = BATCH_ENCODED_BYTES_MAX;
    for r in responses {
        let (r, n) = fit_frame(r, limits);
        if !frame.is_empty() && (bytes + n > body_max || frame.len() == RESPONSES_PER_FRAME_MAX) {
            frames.push(std::mem::take(&mut frame));
            bytes = BATCH_ENCODED_BYTES_MAX;
        }
        bytes += n;
        frame.push(r);
    }
    if !frame.is_empty() {
        frames.push(frame);
    }
    frames
}

/// `r` as it can go alone in a frame, with its encoded-size bound. A response over the limit
/// is answered as honestly as fits:
/// - a range: its longest prefix that fits, with `more` set (the client pages on);
/// - a put, delete or transaction that changed state: `OutcomeUnknown` naming the revision it
///   was applied at. Never a definite error: the write was applied, and an application told
///   otherwise would apply it again;
/// - anything else (a read, or a conditional write that changed nothing): `TooLarge`, which is
///   definite and true, since nothing was changed.
///
/// With the configured limits (one key-value always fits a frame) only a transaction's
/// results, or a range page bounded by another node's larger frame limit, can get here.
fn fit_frame(r: Response, limits: &Limits) -> (Response, usize) {
    let room = limits
        .body_bytes_max()
        .saturating_sub(BATCH_ENCODED_BYTES_MAX);
    let n = r.encoded_bytes_max();
    if n <= room {
        return (r, n);
    }
    let r = cut_down(r, n, room, limits);
    let n = r.encoded_bytes_max();
    (r, n)
}

/// [`fit_frame`]'s answer for `r`, whose size bound `n` exceeds the `room` a frame has.
fn cut_down(r: Response, n: usize, room: usize, limits: &Limits) -> Response {
    let too_large = WireError::TooLarge {
        limit: limits.frame_bytes_max as u64,
    };
    let mut bytes = r.encoded_bytes_max_without_kvs();
    let Response {
        id,
        header,
        outcome,
    } = r;
    let outcome = match outcome {
        Ok(wire::Outcome::Range(mut range)) => {
            let keep = range
                .kvs
                .iter()
                .take_while(|kv| {
                    bytes += wire::kv_encoded_bytes_max(kv.key.len(), kv.value.len());
                    bytes <= room
                })
                .count();
            if keep == 0 {
                Err(too_large)
            } else {
                range.kvs.truncate(keep);
                range.more = true;
                Ok(wire::Outcome::Range(range))
            }
        }
        Ok(o @ (wire::Outcome::Put(_) | wire::Outcome::Delete(_) | wire::Outcome::Txn(_))) => {
            let applied = match &o {
                wire::Outcome::Put(p) if p.written => Some((p.revision, String::new())),
                wire::Outcome::Delete(d) if d.deleted => Some((d.revision, String::new())),
                wire::Outcome::Txn(t) if t.revision != 0 => Some((
                    t.revision,
                    format!(
                        " (the {} branch ran)",
                        if t.succeeded { "success" } else { "failure" }
                    ),
                )),
                _ => None,
            };
            match applied {
                Some((revision, branch)) => Err(WireError::OutcomeUnknown {
                    reason: format!(
                        "the write was applied at revision {revision}{branch}, but its reply \
                         (up to {n} bytes) does not fit a frame of {} bytes: read the keys for \
                         its result (ask for fewer previous values to keep replies small)",
                        limits.frame_bytes_max
                    ),
                }),
                None => Err(too_large),
            }
        }
        Ok(_) => Err(too_large),
        // Error replies are short; should one not fit, it must still not look definite.
        Err(_) => Err(WireError::OutcomeUnknown {
            reason: "the error reply does not fit a frame".into(),
        }),
    };
    tracing::warn!(
        id,
        bytes = n,
        limit = limits.frame_bytes_max,
        answer = ?outcome.as_ref().err(),
        "response over the frame limit; cut down"
    );
    Response {
        id,
        header,
        outcome,
    }
}

/// Encodes one packed frame. It fits by construction (its size bounds add up to at most the
/// limit); should the encoder disagree, that is a bug in the bounds: it is logged and every
/// response of the frame is answered alone, cut down to its minimum by [`fit_frame`] rules
/// (never a definite error for an applied write).
fn encode_frame(enc: &mut BodyEncoder, buf: &mut BytesMut, frame: Vec<Response>, limits: &Limits) {
    let batch = ResponseBatch {
        frame_error: None,
        responses: frame,
    };
    let Err(e) = enc.response_frame(buf, 0, &batch, limits) else {
        return;
    };
    tracing::error!(error = %e, responses = batch.responses.len(),
        "a response frame packed by its size bounds does not fit; the bounds are wrong");
    debug_assert!(false, "response size bounds too small: {e}");
    for r in batch.responses {
        let n = r.encoded_bytes_max();
        let single = ResponseBatch {
            frame_error: None,
            responses: vec![cut_down(r, n, 0, limits)],
        };
        let _ = enc.response_frame(buf, 0, &single, limits);
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
    /// retransmits whatever matters). Returns false when it was dropped.
    pub fn push(&self, frame: Bytes) -> bool {
        let mut q = self.frames.borrow_mut();
        if q.len() >= PEER_QUEUE_FRAMES_MAX {
            self.dropped.set(self.dropped.get() + 1);
            return false;
        }
        q.push_back(frame);
        let _ = self.notify.try_send(());
        true
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use wire::{Outcome, PutResult, RangeResult, ResponseHeader, TxnOpResult, TxnResult};

    fn kv(i: u32, value_bytes: usize) -> wire::KeyValue {
        wire::KeyValue {
            key: Bytes::from(format!("key-{i:04}")),
            value: Bytes::from(vec![b'v'; value_bytes]),
            create_revision: 1,
            mod_revision: 2,
            version: 1,
        }
    }

    fn ok(id: u64, outcome: Outcome) -> Response {
        Response {
            id,
            header: ResponseHeader::default(),
            outcome: Ok(outcome),
        }
    }

    /// Packs, encodes and decodes `responses`: every frame within the limit, every response
    /// answered once. Returns the decoded answers by id and the number of frames.
    fn round_trip(responses: Vec<Response>, limits: &Limits) -> (Vec<Response>, usize) {
        let frames = pack_responses(responses, limits);
        let count = frames.len();
        let mut enc = BodyEncoder::new();
        let mut buf = BytesMut::new();
        for f in frames {
            let batch = ResponseBatch {
                frame_error: None,
                responses: f,
            };
            assert!(batch.encoded_bytes_max() <= limits.body_bytes_max());
            enc.response_frame(&mut buf, 0, &batch, limits)
                .expect("a packed frame fits");
        }
        let dec = FrameDecoder::new(*limits);
        let mut got = Vec::new();
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            got.extend(wire::decode_responses(&f.body, limits).unwrap().responses);
        }
        got.sort_by_key(|r| r.id);
        (got, count)
    }

    /// Finding 1b: an applied write whose reply cannot fit a frame (a transaction returning
    /// five 1 MiB previous values) is answered `OutcomeUnknown` naming its revision, not the
    /// definite `TooLarge` of a request refused before it was proposed. A conditional write
    /// that changed nothing may be answered `TooLarge`: that is true and definite.
    #[test]
    fn an_applied_write_whose_reply_does_not_fit_is_outcome_unknown() {
        let limits = Limits::default();
        let big = |written| TxnResult {
            succeeded: true,
            results: (0..5)
                .map(|i| TxnOpResult::Put {
                    written,
                    previous: Some(kv(i, limits.value_bytes_max)),
                })
                .collect(),
            revision: if written { 9 } else { 0 },
        };
        let small = ok(
            3,
            Outcome::Put(PutResult {
                written: true,
                previous: None,
                revision: 8,
            }),
        );
        let (got, _) = round_trip(
            vec![
                ok(1, Outcome::Txn(big(true))),
                ok(2, Outcome::Txn(big(false))),
                small.clone(),
            ],
            &limits,
        );
        assert_eq!(got.len(), 3);
        assert!(
            matches!(&got[0].outcome, Err(WireError::OutcomeUnknown { reason })
                if reason.contains("applied at revision 9")),
            "{:?}",
            got[0].outcome
        );
        assert_eq!(
            got[1].outcome,
            Err(WireError::TooLarge {
                limit: limits.frame_bytes_max as u64
            })
        );
        assert_eq!(got[2], small);
    }

    /// Finding 2: responses are packed into frames by their size bounds before encoding (no
    /// body over the limit is built), and a range reply over the limit is cut to a page.
    #[test]
    fn responses_are_packed_by_size_and_a_range_is_cut_to_a_page() {
        let limits = Limits::default();
        let mut responses: Vec<Response> = (0..10)
            .map(|i| ok(i, Outcome::Get(Some(kv(i as u32, limits.value_bytes_max)))))
            .collect();
        responses.push(ok(
            10,
            Outcome::Range(RangeResult {
                kvs: (0..10).map(|i| kv(i, limits.value_bytes_max)).collect(),
                more: false,
            }),
        ));
        let (got, frames) = round_trip(responses, &limits);
        assert_eq!(got.len(), 11);
        assert!(
            frames >= 4,
            "ten 1 MiB values need at least four 4 MiB frames"
        );
        for r in &got[..10] {
            let Ok(Outcome::Get(Some(kv))) = &r.outcome else {
                panic!("{r:?}");
            };
            assert_eq!(kv.value.len(), limits.value_bytes_max);
        }
        let Ok(Outcome::Range(page)) = &got[10].outcome else {
            panic!("{:?}", got[10].outcome);
        };
        assert!(page.more);
        assert_eq!(page.kvs.len(), 3, "three 1 MiB values fit a 4 MiB frame");
        assert_eq!(page.kvs[0].key, "key-0000");

        // What the state machine is given for a range is what a reply frame can hold.
        let budget = range_bytes_max(&limits);
        let per_kv = 9 + limits.value_bytes_max + crate::state_machine::RANGE_ENTRY_OVERHEAD_BYTES;
        let page = ok(
            11,
            Outcome::Range(RangeResult {
                kvs: (0..(budget / per_kv) as u32)
                    .map(|i| kv(i, limits.value_bytes_max))
                    .collect(),
                more: true,
            }),
        );
        assert_eq!(fit_frame(page.clone(), &limits).0, page);
    }
}
