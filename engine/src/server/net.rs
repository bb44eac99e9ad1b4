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
//! closed. After the hello, a `PeerMessages` frame with an empty batch is a keepalive.
//!
//! # Stalled peer connections
//! Peer connections are one-way (the dialler writes, the listener reads), so nothing at the
//! application level acknowledges a write; a connection whose path died (a partition, heavy
//! loss, a peer host gone without a reset) would otherwise keep the dialler writing into its
//! send buffer while TCP retransmits with exponential backoff: after a 20 s partition the next
//! retransmission was up to 13 s away (`rto:13056 backoff:6`), so the cluster stayed without
//! leaders for seconds after the network healed (`chaos/tests/peer_stall.rs`). Every timing
//! below derives from one bound, the peer timeout T ([`Tuning::peer_timeout`]: `peer_timeout_ms`,
//! or by default the longest election timeout, 2 x `election_ticks_min` x `tick_ms`, at least
//! 1 s; 2 s with the defaults), see [`PeerTiming`]:
//! - dialler: `TCP_USER_TIMEOUT` = T, so the kernel closes the connection (ETIMEDOUT) once
//!   written bytes stay unacknowledged, or a zero window keeps them unsent, for T; glommio's
//!   write timeout T ends a write blocked that long. Either makes the dialler redial;
//! - dialler: a keepalive frame (an empty batch) when nothing was written for T/4 (at most
//!   250 ms, so a listener with a shorter T of its own still hears from it), so an idle
//!   connection carries bytes that must be acknowledged (the user timeout can fire) and the
//!   listener hears from it;
//! - dialler: a connection attempt gives up after T/4 (a SYN into a partition is otherwise
//!   retried for minutes), and the redial backoff doubles from 20 ms up to T/8 (250 ms by
//!   default), so a healed path is used within about T/4 + T/8;
//! - listener: an incoming connection on which nothing arrived for T is closed (its dialler
//!   is gone or cut off; closing also frees the task and socket), and a newer connection from
//!   the same node and shard that passed the hello replaces an older one, which is closed at
//!   once (one dialler per node and shard, so the older one is dead or about to be).
//!
//! Nothing here polls: each wait is a socket operation, a channel or a glommio timer armed only
//! while a task is waiting anyway.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use wire::{
    BodyEncoder, FrameDecoder, FrameKind, Limits, PeerBatch, RaftMessage, Request, Response,
    ResponseBatch, ServerError as WireError, BATCH_ENCODED_BYTES_MAX,
};

use super::convert;
use super::shared::NodeShared;
use crate::config::{NodeConfig, Tuning};

/// Partition id reserved for the hello message (never a real partition).
pub const HELLO_PARTITION: u64 = u64::MAX;
/// `context` of a hello message: "CORUMHI1" in ASCII.
pub const HELLO_MAGIC: u64 = u64::from_le_bytes(*b"CORUMHI1");
/// The first bytes of a TLS handshake record (content type 22, version 3.x): a TLS client on
/// a plaintext port.
const TLS_HANDSHAKE_PREFIX: [u8; 2] = [0x16, 0x03];
/// Bytes read from a socket at a time.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Most frame-level error replies waiting on one connection; a client that keeps sending bad
/// frames without reading the replies is disconnected.
const FRAME_ERRORS_MAX: usize = 64;
/// Most responses encoded into one frame (frames are also packed by size: `pack_responses`).
const RESPONSES_PER_FRAME_MAX: usize = 1024;
/// Most encoded frames queued for one peer; beyond it frames are dropped (Raft retransmits).
pub const PEER_QUEUE_FRAMES_MAX: usize = 1024;
/// First reconnect backoff of an outgoing peer connection (it doubles up to
/// [`PeerTiming::reconnect_max`]).
const RECONNECT_MIN: Duration = Duration::from_millis(20);
/// Longest interval between keepalives: a quarter of the least `peer_timeout_ms` a node
/// accepts (1 s), so a listener hears from every dialler within its own timeout whatever the
/// dialler's setting (nodes configured differently would otherwise close each other's idle
/// connections).
const KEEPALIVE_MAX: Duration = Duration::from_millis(250);

/// The timings of peer connections, all derived from one stall bound (module docs, "Stalled
/// peer connections").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerTiming {
    /// T: written bytes unacknowledged this long close a connection (`TCP_USER_TIMEOUT`), a
    /// write blocked this long fails, an incoming connection silent this long is closed.
    pub timeout: Duration,
    /// T/4, at most 250 ms: the dialler sends a keepalive frame after writing nothing for
    /// this long.
    pub keepalive: Duration,
    /// T/4: a connection attempt gives up after this long.
    pub connect: Duration,
    /// T/8, at least [`RECONNECT_MIN`]: the longest wait between two connection attempts.
    pub reconnect_max: Duration,
}

impl PeerTiming {
    /// The timings for a node's tuning ([`Tuning::peer_timeout`]).
    pub fn from_tuning(t: &Tuning) -> PeerTiming {
        let timeout = t.peer_timeout();
        PeerTiming {
            timeout,
            // At most KEEPALIVE_MAX apart whatever this node's timeout: the listener applies
            // its own bound (at least 1 s), which may be shorter than this node's.
            keepalive: (timeout / 4).min(KEEPALIVE_MAX),
            connect: timeout / 4,
            reconnect_max: (timeout / 8).max(RECONNECT_MIN),
        }
    }
}

/// Sets `TCP_USER_TIMEOUT` on a connected socket: the kernel closes the connection (pending and
/// later socket calls fail with ETIMEDOUT) once transmitted data has stayed unacknowledged, or
/// buffered data unsent behind a zero window, for `timeout` (tcp(7)).
fn set_tcp_user_timeout(stream: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    let ms = libc::c_uint::try_from(timeout.as_millis()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: setsockopt reads `size_of::<c_uint>()` bytes from `&ms`, a live local; the fd
    // belongs to `stream`, which is borrowed (so open) for the whole call.
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&ms as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

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
    pub requests: Vec<(Rc<ConnOut>, Request, Instant)>,
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
    /// Peer connection timings (from the tuning).
    pub peer_timing: PeerTiming,
    /// The current incoming connection of each peer node that passed the hello: its accept
    /// number and the sender whose drop tells its task it was replaced by a newer one.
    inbound: RefCell<BTreeMap<u64, (u64, LocalSender<()>)>>,
    /// Incoming peer connections accepted so far (numbers them).
    peer_accepts: Cell<u64>,
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
            peer_timing: PeerTiming::from_tuning(&config.tuning),
            inbound: RefCell::new(BTreeMap::new()),
            peer_accepts: Cell::new(0),
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
                crate::warn_limited!(error = %e, "client accept failed");
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
            crate::warn_limited!(
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
            let _ = stream.set_nodelay(true);
            let peer = stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            match io2.shared.tls() {
                None => serve_client(stream, peer, &io2).await,
                Some(tls) => match super::tls::accept_client(&tls, stream).await {
                    Ok(s) => serve_client(s, peer, &io2).await,
                    // A plaintext client, another CA's certificate, garbage: the node goes on.
                    Err(e) => crate::warn_limited!(
                        client = %peer, error = %e,
                        "client TLS handshake failed; connection closed"
                    ),
                },
            }
            io2.connections.set(io2.connections.get() - 1);
            let metrics = io2.shared.metrics.shard(io2.shard);
            metrics.client_connections.set(io2.connections.get() as u64);
        });
    }
}

/// Serves one client connection (plain TCP or TLS) until it closes.
async fn serve_client<S>(stream: S, peer: String, io: &Rc<ShardIo>)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
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
                        crate::warn_limited!(client = %peer, kind = ?frame.kind, "client sent a non-request frame");
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
                            crate::warn_limited!(client = %peer, error = %e, "bad request frame body");
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
                    // One clock read per frame: the requests of a frame arrived together.
                    let arrived = Instant::now();
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
                        io.inbox
                            .borrow_mut()
                            .requests
                            .push((out.clone(), r, arrived));
                        queued = true;
                    }
                    if queued {
                        io.wake();
                    }
                }
                Ok(None) => break,
                Err(_) if buf.starts_with(&TLS_HANDSHAKE_PREFIX) => {
                    crate::warn_limited!(client = %peer,
                        "a TLS handshake on the plaintext client port (this node has no \
                         --cert/--key/--ca); closing");
                    break 'conn "TLS on a plaintext port";
                }
                Err(e) => {
                    crate::warn_limited!(client = %peer, error = %e, "bad frame from client; closing");
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

async fn client_writer<S: AsyncWrite + Unpin>(
    mut wr: futures_lite::io::WriteHalf<S>,
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
                if write_flush(&mut wr, &buf).await.is_err() {
                    out.closed.set(true);
                    return;
                }
                buf.clear();
            }
        }
        if !buf.is_empty() && write_flush(&mut wr, &buf).await.is_err() {
            out.closed.set(true);
            return;
        }
        if out.closed.get() {
            let _ = wr.close().await;
            return;
        }
    }
}

/// Writes `buf` and flushes: TLS may keep written bytes buffered until flushed (the flush is a
/// no-op on glommio's TCP stream).
async fn write_flush<W: AsyncWrite + Unpin>(wr: &mut W, buf: &[u8]) -> std::io::Result<()> {
    wr.write_all(buf).await?;
    wr.flush().await
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

/// The largest data chunk of one backup reply (`Op::Backup`): what a frame's body holds
/// besides the batch and an empty backup result around it.
pub fn backup_chunk_bytes_max(limits: &Limits) -> usize {
    let empty = Response {
        id: 0,
        header: Default::default(),
        outcome: Ok(wire::Outcome::Backup(wire::BackupChunk::default())),
    };
    limits
        .body_bytes_max()
        .saturating_sub(BATCH_ENCODED_BYTES_MAX + empty.encoded_bytes_max() + 8)
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
                crate::warn_limited!(error = %e, "peer accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let accept_no = io.peer_accepts.get() + 1;
        io.peer_accepts.set(accept_no);
        let io2 = io.clone();
        io.spawn(async move { serve_peer(stream, accept_no, &io2).await });
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

/// Makes connection `accept_no` the current one of `node`. Returns the receiver that ends
/// (its sender dropped) when a newer connection of `node` replaces it, or `None` if a newer one
/// is current already (then this one is the stale one).
fn register_inbound(io: &ShardIo, node: u64, accept_no: u64) -> Option<LocalReceiver<()>> {
    let mut inbound = io.inbound.borrow_mut();
    if inbound.get(&node).is_some_and(|(no, _)| *no > accept_no) {
        return None;
    }
    let (tx, rx) = local_channel::new_bounded(1);
    // Dropping the previous sender ends the previous connection's task.
    if let Some((old, _)) = inbound.insert(node, (accept_no, tx)) {
        tracing::info!(
            node,
            old_connection = old,
            new_connection = accept_no,
            "newer peer connection from the same node; closing the older one"
        );
    }
    Some(rx)
}

async fn serve_peer(stream: TcpStream, accept_no: u64, io: &Rc<ShardIo>) {
    let _ = stream.set_nodelay(true);
    let timeout = io.peer_timing.timeout;
    // Also bounds a TLS handshake.
    if let Err(e) = stream.set_read_timeout(Some(timeout)) {
        tracing::warn!(error = %e, "cannot set the peer read timeout");
    }
    let remote = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    match io.shared.tls() {
        None => read_peer(stream, None, remote, accept_no, io).await,
        // The whole handshake within the peer timeout, not just each read (TLS review,
        // finding 2).
        Some(tls) => match super::tls::within(timeout, tls.peer_accept.accept(stream)).await {
            Ok(s) => {
                let chain: Vec<_> = s
                    .get_ref()
                    .1
                    .peer_certificates()
                    .unwrap_or_default()
                    .iter()
                    .map(|c| c.clone().into_owned())
                    .collect();
                read_peer(s, Some(chain), remote, accept_no, io).await
            }
            // No certificate, another CA's, a plaintext dialler: refused, logged, the node
            // goes on.
            Err(e) => crate::warn_limited!(
                %remote, error = %e,
                "peer TLS handshake failed; connection refused"
            ),
        },
    }
}

/// Reads one incoming peer connection until it ends. `chain`: the dialler's certificate chain
/// under TLS (already verified against the CA), which must name the node of the hello.
async fn read_peer<S: AsyncRead + Unpin>(
    mut rd: S,
    chain: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    remote: String,
    accept_no: u64,
    io: &Rc<ShardIo>,
) {
    let timeout = io.peer_timing.timeout;
    let decoder = FrameDecoder::new(io.limits);
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut from_node: Option<u64> = None;
    // Ends when a newer connection from the same node replaces this one.
    let mut replaced: Option<LocalReceiver<()>> = None;
    let end: PeerEnd = 'conn: loop {
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => break 'conn PeerEnd::BadFrame(e.to_string()),
            };
            if frame.kind != FrameKind::PeerMessages {
                break 'conn PeerEnd::FrameKind(frame.kind);
            }
            let batch = match wire::decode_peer_batch(&frame.body, &io.limits) {
                Ok(b) => b,
                Err(e) => break 'conn PeerEnd::BadBatch(e.to_string()),
            };
            let Some(node) = from_node else {
                let hello = check_hello(&batch, io).and_then(|(node, base)| match &chain {
                    Some(chain) => super::tls::check_peer_identity(chain, node)
                        .map(|()| (node, base))
                        .map_err(|why| format!("hello from node {node}: {why}")),
                    None => Ok((node, base)),
                });
                match hello {
                    Ok((node, base)) => {
                        let Some(rx) = register_inbound(io, node, accept_no) else {
                            break 'conn PeerEnd::Stale(node);
                        };
                        replaced = Some(rx);
                        io.shared.learn_client_base(node, base);
                        tracing::info!(node, %remote, "peer connected");
                        from_node = Some(node);
                        continue;
                    }
                    Err(why) => break 'conn PeerEnd::HelloRefused(why),
                }
            };
            if batch.from_node != node || batch.to_node != io.config.id {
                break 'conn PeerEnd::ForeignBatch {
                    from: batch.from_node,
                    to: batch.to_node,
                    node,
                };
            }
            if batch.messages.is_empty() {
                continue; // a keepalive
            }
            let mut inbox = io.inbox.borrow_mut();
            for (partition, m) in batch.messages {
                if m.from != node {
                    crate::warn_limited!(
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
                    Err(e) => crate::warn_limited!(node, error = %e, "bad peer message; dropped"),
                }
            }
            drop(inbox);
            io.wake();
        }
        let read = match &replaced {
            None => Some(rd.read(&mut chunk).await),
            // The replacement is polled first: a replaced connection stops at once, even with
            // bytes still to read (`or` prefers its first future when both are ready).
            Some(rx) => {
                futures_lite::future::or(
                    async {
                        let _ = rx.recv().await;
                        None
                    },
                    async { Some(rd.read(&mut chunk).await) },
                )
                .await
            }
        };
        match read {
            None => break PeerEnd::Replaced,
            Some(Ok(0)) => break PeerEnd::Closed,
            Some(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Some(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                break PeerEnd::Silent(timeout)
            }
            Some(Err(e)) => break PeerEnd::ReadFailed(e),
        }
    };
    if let Some(node) = from_node {
        let mut inbound = io.inbound.borrow_mut();
        if inbound.get(&node).is_some_and(|(no, _)| *no == accept_no) {
            inbound.remove(&node);
        }
    }
    log_peer_end(&remote, from_node, &end);
}

/// Why an incoming peer connection ended.
#[derive(Debug)]
enum PeerEnd {
    /// The peer closed it.
    Closed,
    /// A read failed.
    ReadFailed(std::io::Error),
    /// Nothing arrived for the peer timeout.
    Silent(Duration),
    /// A newer connection from the same node replaced it.
    Replaced,
    /// Its hello came after a newer connection's from the same node (this node id).
    Stale(u64),
    /// Refused: not a frame.
    BadFrame(String),
    /// Refused: a frame of another kind than `PeerMessages`.
    FrameKind(FrameKind),
    /// Refused: a peer frame whose batch does not decode.
    BadBatch(String),
    /// Refused: the first frame is not an acceptable hello (why).
    HelloRefused(String),
    /// Refused: a batch naming other nodes than the connection's (`node`, after its hello).
    ForeignBatch { from: u64, to: u64, node: u64 },
}

impl std::fmt::Display for PeerEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerEnd::Closed => write!(f, "closed by peer"),
            PeerEnd::ReadFailed(e) => write!(f, "read failed: {e}"),
            PeerEnd::Silent(t) => {
                write!(
                    f,
                    "nothing received for {} ms (peer timeout)",
                    t.as_millis()
                )
            }
            PeerEnd::Replaced => write!(f, "replaced by a newer connection from the same node"),
            PeerEnd::Stale(node) => {
                write!(
                    f,
                    "replaced: a newer connection from node {node} is current"
                )
            }
            PeerEnd::BadFrame(e) => write!(f, "bad frame: {e}"),
            PeerEnd::FrameKind(k) => write!(f, "frame kind {k:?} on the peer port"),
            PeerEnd::BadBatch(e) => write!(f, "bad peer batch: {e}"),
            PeerEnd::HelloRefused(why) => write!(f, "hello refused: {why}"),
            PeerEnd::ForeignBatch { from, to, node } => {
                write!(
                    f,
                    "batch from node {from} to {to} on node {node}'s connection"
                )
            }
        }
    }
}

/// Logs why an incoming peer connection from `remote` (node `from_node` once its hello
/// passed) ended: an ordinary end at debug, a dead or replaced connection at info, a refusal
/// as a warning. Anyone who can reach the peer port can repeat a refusal at will, so each kind
/// has its own rate-limited line (each `warn_limited!` call site is its own limiter): a flood
/// of one kind of bad input does not hide another kind. The shard is named by the span every
/// line of a shard thread is logged in (`driver::shard_span`), not by a field.
fn log_peer_end(remote: &str, from_node: Option<u64>, reason: &PeerEnd) {
    match reason {
        PeerEnd::Closed | PeerEnd::ReadFailed(_) => {
            tracing::debug!(%remote, %reason, "peer connection ends")
        }
        PeerEnd::Silent(_) | PeerEnd::Replaced | PeerEnd::Stale(_) => {
            tracing::info!(%remote, node = ?from_node, %reason, "peer connection closed")
        }
        PeerEnd::BadFrame(_) => {
            crate::warn_limited!(%remote, %reason, "peer connection closed")
        }
        PeerEnd::FrameKind(_) => {
            crate::warn_limited!(%remote, %reason, "peer connection closed")
        }
        PeerEnd::BadBatch(_) => {
            crate::warn_limited!(%remote, %reason, "peer connection closed")
        }
        PeerEnd::HelloRefused(_) => {
            crate::warn_limited!(%remote, %reason, "peer connection closed")
        }
        PeerEnd::ForeignBatch { .. } => {
            crate::warn_limited!(%remote, node = ?from_node, %reason, "peer connection closed")
        }
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

/// Encodes the keepalive frame this shard sends to `to_node`: a batch with no message.
fn keepalive_frame(io: &ShardIo, to_node: u64) -> Option<Bytes> {
    let batch = PeerBatch {
        from_node: io.config.id,
        to_node,
        messages: Vec::new(),
    };
    let mut out = BytesMut::new();
    BodyEncoder::new()
        .peer_frame(&mut out, 0, &batch, &io.limits)
        .ok()?;
    Some(out.freeze())
}

/// Keeps a connection to shard `io.shard` of `node` at `addr` and writes the frames queued on
/// `queue`. Redials when a connection fails or stalls (module docs, "Stalled peer
/// connections"), with a backoff from 20 ms up to [`PeerTiming::reconnect_max`]; frames queued
/// while disconnected are discarded when a new connection starts (Raft retransmits what
/// matters).
pub async fn peer_dialer(
    io: Rc<ShardIo>,
    node: u64,
    addr: SocketAddr,
    queue: Rc<PeerQueue>,
    notify: LocalReceiver<()>,
) {
    let timing = io.peer_timing;
    let (Some(hello), Some(keepalive)) = (hello_frame(&io, node), keepalive_frame(&io, node))
    else {
        tracing::error!("hello frame does not fit the frame limit");
        return;
    };
    let mut backoff = RECONNECT_MIN;
    let mut logged_down = false;
    loop {
        if io.stop.load(Ordering::Relaxed) {
            return;
        }
        let mut stream = match TcpStream::connect_timeout(addr, timing.connect).await {
            Ok(s) => s,
            Err(e) => {
                if !logged_down {
                    tracing::info!(node, %addr, error = %e, "peer unreachable; retrying");
                    logged_down = true;
                }
                queue.frames.borrow_mut().clear();
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(timing.reconnect_max);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if let Err(e) = set_tcp_user_timeout(&stream, timing.timeout).and_then(|()| {
            stream
                .set_write_timeout(Some(timing.timeout))
                .map_err(Into::into)
        }) {
            tracing::warn!(node, error = %e, "cannot set the peer connection timeouts");
        }
        logged_down = false;
        // Drop whatever piled up while disconnected.
        queue.frames.borrow_mut().clear();
        let connected = std::time::Instant::now();
        let why = match io.shared.tls() {
            None => dial_session(&io, node, &mut stream, &queue, &notify, &hello, &keepalive).await,
            Some(tls) => {
                // The handshake reads: bounded like the writes.
                let _ = stream.set_read_timeout(Some(timing.timeout));
                let name = rustls::pki_types::ServerName::try_from(super::tls::node_name(node))
                    .expect("node-<id> is a DNS name");
                match tls.peer_connect.connect(name, stream).await {
                    Ok(mut s) => {
                        dial_session(&io, node, &mut s, &queue, &notify, &hello, &keepalive).await
                    }
                    Err(e) => {
                        crate::warn_limited!(node, %addr, error = %e,
                            "peer TLS handshake failed");
                        Some(e)
                    }
                }
            }
        };
        let Some(why) = why else { return };
        tracing::info!(node, error = %why, "peer connection lost; reconnecting");
        // A connection that lasted is redialed at once; one that failed quickly (the peer
        // refuses us, or is restarting) waits, so a refusing peer is not redialed in a loop.
        if connected.elapsed() >= timing.timeout {
            backoff = RECONNECT_MIN;
        } else {
            glommio::timer::sleep(backoff).await;
            backoff = (backoff * 2).min(timing.reconnect_max);
        }
    }
}

/// Sends the hello, then the queued frames ([`write_frames`]); returns why the connection
/// ended (`None`: the shard stops).
async fn dial_session<S: AsyncWrite + Unpin>(
    io: &ShardIo,
    node: u64,
    stream: &mut S,
    queue: &PeerQueue,
    notify: &LocalReceiver<()>,
    hello: &[u8],
    keepalive: &Bytes,
) -> Option<std::io::Error> {
    if let Err(e) = write_flush(stream, hello).await {
        tracing::debug!(node, error = %e, "peer hello failed");
        return Some(e);
    }
    tracing::debug!(node, "connected to peer");
    write_frames(io, node, stream, queue, notify, keepalive).await
}

/// Writes the frames queued on `queue` to `stream`, and a keepalive after
/// [`PeerTiming::keepalive`] without a write, until a write fails (returns why) or the queue's
/// sender is gone (returns `None`: the shard stops).
async fn write_frames<S: AsyncWrite + Unpin>(
    io: &ShardIo,
    node: u64,
    stream: &mut S,
    queue: &PeerQueue,
    notify: &LocalReceiver<()>,
    keepalive: &Bytes,
) -> Option<std::io::Error> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if queue.frames.borrow().is_empty() {
            let woke =
                futures_lite::future::or(async { Some(notify.recv().await.is_some()) }, async {
                    glommio::timer::sleep(io.peer_timing.keepalive).await;
                    None
                })
                .await;
            match woke {
                Some(true) => {}
                Some(false) => return None,
                None => {
                    if let Err(e) = write_flush(stream, keepalive).await {
                        return Some(e);
                    }
                    continue;
                }
            }
        }
        let dropped = queue.dropped.replace(0);
        if dropped > 0 {
            tracing::debug!(node, dropped, "peer queue was full; frames dropped");
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
        if let Err(e) = write_flush(stream, &buf).await {
            return Some(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Instant;
    use wire::{Outcome, PutResult, RangeResult, ResponseHeader, TxnOpResult, TxnResult};

    // ------------------------------------------------ log lines

    /// A `tracing` writer into a shared buffer: the lines a test checks.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// The lines logged by `f` in a shard's span (as on a shard thread), through the text
    /// format the node uses, filtered at `level`.
    fn logged_in_shard(level: tracing::Level, f: impl FnOnce()) -> String {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false)
            .with_max_level(level)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let _span = super::super::driver::shard_span(1, 3).entered();
            f();
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text
    }

    /// Review finding (issue 17, ops nits 6): every refusal on the peer port went through one
    /// rate-limited line, so a flood of one kind of bad input (here garbage frames) hid
    /// another (a refused hello) for the rest of the window; and each line named the shard
    /// twice, once from the shard's span and once from its own field.
    #[test]
    fn peer_refusals_are_limited_per_kind_and_name_the_shard_once() {
        let burst = crate::log_limit::BURST as usize;
        let text = logged_in_shard(tracing::Level::INFO, || {
            for _ in 0..3 * burst {
                log_peer_end(
                    "10.0.0.9:5555",
                    None,
                    &PeerEnd::BadFrame("bad magic".into()),
                );
            }
            log_peer_end(
                "10.0.0.7:4444",
                None,
                &PeerEnd::HelloRefused("hello from node 9, not a peer".into()),
            );
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.iter().filter(|l| l.contains("bad magic")).count(),
            burst,
            "{text}"
        );
        assert!(
            lines.iter().any(|l| l.contains("hello refused")),
            "the refused hello was hidden by the flood:\n{text}"
        );
        for l in &lines {
            assert_eq!(l.matches("shard=").count(), 1, "{l}");
        }
        // Filtered at warn (the shard's span is not an info span that such a filter drops),
        // a warning still names its shard.
        let text = logged_in_shard(tracing::Level::WARN, || {
            log_peer_end(
                "10.0.0.8:3333",
                None,
                &PeerEnd::FrameKind(FrameKind::ClientRequests),
            );
        });
        assert!(
            text.contains("shard{node=1 shard=3}") && text.matches("shard=").count() == 1,
            "{text}"
        );
    }

    // ------------------------------------------------ stalled peer connections

    /// The stall bound the peer-connection tests run with.
    /// Short for quick tests, long enough that a late timer on a loaded machine (the keepalive
    /// loop below sleeps T/4 between frames) does not look like a silent peer.
    const PEER_TIMEOUT: Duration = Duration::from_millis(600);

    /// Node `id` of a one-shard cluster of `peers`, with [`PEER_TIMEOUT`].
    fn peer_config(id: u64, peers: &[(u64, SocketAddr)]) -> Arc<NodeConfig> {
        let peers: BTreeMap<u64, SocketAddr> = peers.iter().copied().collect();
        Arc::new(NodeConfig {
            id,
            data_dir: "/nonexistent".into(),
            client_addr: "127.0.0.1:1".parse().unwrap(),
            peer_addr: peers[&id],
            metrics_addr: None,
            peers,
            shards: 1,
            partitions: 1,
            replicas: 1,
            pin: false,
            tuning: Tuning {
                peer_timeout_ms: Some(PEER_TIMEOUT.as_millis() as u64),
                ..Tuning::default()
            },
            tls: None,
        })
    }

    /// Shard 0's socket context for `config` (call on the executor).
    fn peer_io(config: Arc<NodeConfig>) -> (Rc<ShardIo>, LocalReceiver<()>) {
        let shared = Arc::new(NodeShared::new(&config));
        ShardIo::new(0, config, shared, Arc::new(AtomicBool::new(false)))
    }

    /// Runs `f` on a fresh glommio executor thread, as a shard runs.
    fn on_executor<T, Fut>(
        f: impl FnOnce() -> Fut + Send + 'static,
    ) -> glommio::ExecutorJoinHandle<T>
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = T> + 'static,
    {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(crate::server::IO_MEMORY_BYTES)
            .spawn(f)
            .expect("executor")
    }

    /// `TCP_USER_TIMEOUT` is set on the socket as asked (read back with getsockopt).
    #[test]
    fn tcp_user_timeout_is_set_on_the_socket() {
        on_executor(|| async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let s = TcpStream::connect(addr).await.unwrap();
            set_tcp_user_timeout(&s, Duration::from_millis(1234)).unwrap();
            let mut ms: libc::c_uint = 0;
            let mut len = std::mem::size_of::<libc::c_uint>() as libc::socklen_t;
            // SAFETY: getsockopt writes at most `len` bytes into `ms`, a live local.
            let r = unsafe {
                libc::getsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_USER_TIMEOUT,
                    (&mut ms as *mut libc::c_uint).cast(),
                    &mut len,
                )
            };
            assert_eq!((r, ms), (0, 1234));
        })
        .join()
        .unwrap();
    }

    /// Regression (chaos: writes stayed unavailable for seconds after a partition healed): a
    /// dialer whose writes stop making progress must drop the connection and redial within
    /// the peer timeout. The fake peer accepts and never reads (its receive window closes; on
    /// a partitioned path the bytes would stay unacknowledged instead, which
    /// `TCP_USER_TIMEOUT` bounds the same way; `chaos/tests/peer_stall.rs` runs that case).
    /// Before the fix the dialer's write stayed blocked forever and it never redialed.
    #[test]
    fn a_dialer_redials_a_peer_that_stops_reading() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // A small receive buffer (inherited by accepted sockets) so the window closes soon.
        let rcvbuf: libc::c_int = 16 << 10;
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `&rcvbuf`, a live local, on
        // the listener's open socket.
        let r = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&rcvbuf as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        let addr = listener.local_addr().unwrap();
        let (accepted_tx, accepted) = std::sync::mpsc::channel();
        let done = Arc::new(AtomicBool::new(false));
        let done2 = done.clone();
        let peer = std::thread::spawn(move || {
            // Accept two connections, read nothing, hold them open until the second one.
            let mut held = Vec::new();
            for _ in 0..2 {
                let Ok((s, _)) = listener.accept() else { break };
                held.push(s);
                let _ = accepted_tx.send(Instant::now());
            }
            done2.store(true, Ordering::Relaxed);
        });
        let shard = on_executor(move || async move {
            let config = peer_config(1, &[(1, "127.0.0.1:9".parse().unwrap()), (2, addr)]);
            let (io, _wake) = peer_io(config);
            let (queue, notify) = peer_queue();
            io.spawn(peer_dialer(io.clone(), 2, addr, queue.clone(), notify));
            // Keep frames queued (paced by a timer, not spinning) until the peer has seen
            // its second connection, or 20 s.
            let frame = Bytes::from(vec![0xA5u8; 64 << 10]);
            let deadline = Instant::now() + Duration::from_secs(20);
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                while queue.frames.borrow().len() < 16 {
                    queue.push(frame.clone());
                }
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            io.shutdown().await;
        });
        let first = accepted
            .recv_timeout(Duration::from_secs(10))
            .expect("the dialer connects");
        let second = accepted.recv_timeout(Duration::from_secs(20));
        shard.join().unwrap();
        if second.is_err() {
            // Unblock the fake peer's second accept, so its thread ends.
            let _ = std::net::TcpStream::connect(addr);
        }
        peer.join().unwrap();
        let second = second.expect("the dialer never redialed a peer that stopped reading");
        let took = second - first;
        // The window closes within milliseconds on loopback; then PEER_TIMEOUT; slack for a
        // busy 2-core machine.
        assert!(
            took < PEER_TIMEOUT + Duration::from_secs(3),
            "redialed {took:?} after connecting (peer timeout {PEER_TIMEOUT:?})"
        );
        assert!(took >= PEER_TIMEOUT, "redialed after only {took:?}");
    }

    /// The accepting side: a connection that sends nothing for the peer timeout is closed (its
    /// dialer is gone or cut off), one that sends keepalives is not, and a newer connection
    /// from the same node replaces an older one at once (a half-dead older connection must not
    /// hold the node's place). Before the fix neither silent nor replaced connections were
    /// ever closed.
    #[test]
    fn the_listener_closes_silent_and_replaced_peer_connections() {
        on_executor(|| async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let peers = [(1, addr), (2, "127.0.0.1:9".parse().unwrap())];
            let (io, wake) = peer_io(peer_config(1, &peers));
            io.spawn(peer_listener(listener, io.clone()));
            // Node 2's frames, encoded as node 2's shard would.
            let (io2, _) = peer_io(peer_config(2, &peers));
            let hello = hello_frame(&io2, 1).unwrap();
            let keepalive = keepalive_frame(&io2, 1).unwrap();
            let mut heartbeat = RaftMessage::new(wire::MessageKind::Heartbeat);
            (heartbeat.from, heartbeat.to, heartbeat.term) = (2, 1, 1);
            let mut message = BytesMut::new();
            BodyEncoder::new()
                .peer_frame(
                    &mut message,
                    0,
                    &PeerBatch {
                        from_node: 2,
                        to_node: 1,
                        messages: vec![(1, heartbeat)],
                    },
                    &io.limits,
                )
                .unwrap();
            // How a connection ends, seen from node 2: closed by node 1 (EOF or reset), or
            // still open when `wait` has passed.
            async fn closed_within(s: &mut TcpStream, wait: Duration) -> Option<Duration> {
                s.set_read_timeout(Some(wait)).unwrap();
                let t = Instant::now();
                let mut b = [0u8; 64];
                match s.read(&mut b).await {
                    Ok(0) => Some(t.elapsed()),
                    Ok(n) => panic!("the listener wrote {n} bytes"),
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => None,
                    Err(_) => Some(t.elapsed()),
                }
            }

            // A: a live connection delivers messages.
            let mut a = TcpStream::connect(addr).await.unwrap();
            a.write_all(&hello).await.unwrap();
            a.write_all(&message).await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while io.inbox.borrow().peer.is_empty() {
                assert!(Instant::now() < deadline, "message not delivered");
                let left = deadline.saturating_duration_since(Instant::now());
                futures_lite::future::or(
                    async {
                        wake.recv().await;
                    },
                    glommio::timer::sleep(left),
                )
                .await;
            }
            // B from the same node replaces A: A is closed at once, long before the timeout.
            let mut b = TcpStream::connect(addr).await.unwrap();
            b.write_all(&hello).await.unwrap();
            // The listener's silence timer starts once it has read the hello, after this.
            let b_sent = Instant::now();
            let a_closed = closed_within(&mut a, PEER_TIMEOUT / 2).await;
            assert!(a_closed.is_some(), "the replaced connection is still open");
            // B then stays silent: closed after the peer timeout, not before.
            let b_closed = closed_within(&mut b, PEER_TIMEOUT * 10).await;
            b_closed.expect("a silent peer connection was never closed");
            let b_silent = b_sent.elapsed();
            assert!(
                b_silent >= PEER_TIMEOUT * 9 / 10,
                "silent connection closed after only {b_silent:?}"
            );
            // C sends a keepalive every quarter of the timeout: it stays open.
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(&hello).await.unwrap();
            for _ in 0..12 {
                glommio::timer::sleep(PEER_TIMEOUT / 4).await;
                c.write_all(&keepalive).await.unwrap();
            }
            assert_eq!(closed_within(&mut c, PEER_TIMEOUT / 4).await, None);
            assert_eq!(
                io.inbox.borrow().peer.len(),
                1,
                "keepalives deliver nothing"
            );
            io.shutdown().await;
        })
        .join()
        .unwrap();
    }

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

    /// A backup chunk of the largest size the shard hands out fits one frame, and goes through
    /// the frame round trip unchanged.
    #[test]
    fn a_full_backup_chunk_fits_a_frame() {
        for frame_bytes_max in [64 << 10, 4 << 20] {
            let limits = Limits {
                frame_bytes_max,
                ..Limits::default()
            };
            let n = backup_chunk_bytes_max(&limits);
            assert!(n > frame_bytes_max - 512, "{n} wastes most of the frame");
            let chunk = ok(
                3,
                Outcome::Backup(wire::BackupChunk {
                    partition: u64::MAX,
                    index: u64::MAX,
                    term: u64::MAX,
                    revision: u64::MAX,
                    total_bytes: u64::MAX,
                    offset: u64::MAX - n as u64,
                    data: Bytes::from(vec![7u8; n]),
                }),
            );
            assert_eq!(fit_frame(chunk.clone(), &limits).0, chunk);
            let (got, frames) = round_trip(vec![chunk.clone()], &limits);
            assert_eq!((got, frames), (vec![chunk], 1));
        }
    }
}
