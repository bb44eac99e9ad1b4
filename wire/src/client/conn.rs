//! One pipelined connection to one server endpoint.
//!
//! Callers hand requests to a bounded queue. One task owns the socket: its writer half takes
//! the requests waiting in the queue, in order, while they fit one frame (at most
//! `batch_requests_max` of them, and at most [`Limits::body_bytes_max`] by their encoded-size
//! bounds, [`Request::encoded_bytes_max`]), encodes them as one frame and writes it; the first
//! request that does not fit starts the next frame. Its reader half decodes response frames and
//! hands each response to the caller waiting on that request id. Any I/O or framing error ends
//! the task, closes the socket and fails every request in flight with [`ConnError::Lost`].
//! (The client refuses a request too large for a frame alone before it reaches the queue; one
//! that reaches it anyway fails alone with `FrameRefused(TooLarge)`.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::frame::{FrameDecoder, FrameKind, Limits};
use crate::messages::{decode_responses, BodyEncoder, Request, Response, ServerError};
use crate::size::BATCH_ENCODED_BYTES_MAX;

use super::tls::TlsClientConfig;

/// Why a request sent on a connection got no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    /// The connection closed or failed before the response arrived.
    #[error("connection lost: {0}")]
    Lost(String),
    /// The server refused the whole frame the request was in.
    #[error("frame refused: {0}")]
    FrameRefused(ServerError),
}

type Reply = oneshot::Sender<Result<Response, ConnError>>;

struct Pending {
    request: Request,
    reply: Reply,
}

/// `(closed, request id -> (frame id, waiter))`: closing and registering happen under one
/// lock, so no request is registered after the final drain.
type Waiting = (bool, HashMap<u64, (u64, Reply)>);

struct Shared {
    waiting: Mutex<Waiting>,
    dead: AtomicBool,
}

impl Shared {
    fn fail_all(&self, why: &str) {
        let drained: Vec<Reply> = {
            let mut g = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            g.0 = true;
            g.1.drain().map(|(_, (_, r))| r).collect()
        };
        self.dead.store(true, Ordering::Release);
        for r in drained {
            let _ = r.send(Err(ConnError::Lost(why.to_owned())));
        }
    }
}

/// A pipelined connection (see the module docs).
pub(crate) struct Connection {
    queue: mpsc::Sender<Pending>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
}

impl Connection {
    /// Connects to `endpoint` (over TLS when `tls` is given) and starts the connection task.
    pub(crate) async fn connect(
        endpoint: &str,
        tls: Option<&TlsClientConfig>,
        limits: Limits,
        queue_max: usize,
        batch_requests_max: usize,
    ) -> std::io::Result<Arc<Self>> {
        let stream = TcpStream::connect(endpoint).await?;
        stream.set_nodelay(true)?;
        let stream = match tls {
            Some(t) => Halves::Tls(Box::new(t.connect(endpoint, stream).await?)),
            None => Halves::Plain(stream),
        };
        Self::start(endpoint, stream, limits, queue_max, batch_requests_max)
    }

    fn start(
        endpoint: &str,
        stream: Halves,
        limits: Limits,
        queue_max: usize,
        batch_requests_max: usize,
    ) -> std::io::Result<Arc<Self>> {
        let (tx, rx) = mpsc::channel(queue_max.max(1));
        let shared = Arc::new(Shared {
            waiting: Mutex::new((false, HashMap::new())),
            dead: AtomicBool::new(false),
        });
        let task_shared = shared.clone();
        let endpoint_owned = endpoint.to_owned();
        tokio::spawn(async move {
            let batch_max = batch_requests_max.max(1);
            let why = match stream {
                Halves::Plain(s) => {
                    let (rd, wr) = s.into_split();
                    run(rd, wr, rx, &task_shared, limits, batch_max).await
                }
                Halves::Tls(s) => {
                    let (rd, wr) = tokio::io::split(s);
                    run(rd, wr, rx, &task_shared, limits, batch_max).await
                }
            };
            tracing::debug!(endpoint = %endpoint_owned, reason = %why, "client connection closed");
            task_shared.fail_all(&why);
        });
        Ok(Arc::new(Self {
            queue: tx,
            shared,
            next_id: AtomicU64::new(1),
        }))
    }

    /// Whether the connection has failed (a new one is needed).
    pub(crate) fn is_dead(&self) -> bool {
        self.shared.dead.load(Ordering::Acquire) || self.queue.is_closed()
    }

    /// Sends `request` (its id is replaced by a fresh one) and waits for its response.
    pub(crate) async fn call(&self, mut request: Request) -> Result<Response, ConnError> {
        request.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Pending { request, reply })
            .await
            .map_err(|_| ConnError::Lost("connection closed".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(ConnError::Lost("connection closed".into())))
    }
}

/// The socket a connection task runs on. Plain TCP splits with `into_split`, which needs no
/// lock between the halves; a TLS stream splits with `tokio::io::split`.
enum Halves {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The first bytes of a TLS alert record (content type 21, version 3.x): what a TLS server
/// answers a plaintext frame with.
const TLS_ALERT_PREFIX: [u8; 2] = [0x15, 0x03];
/// Why a plaintext connection to a TLS port failed.
const TLS_ONLY: &str = "the server answered with a TLS alert: it accepts TLS only (give the \
                        client the cluster CA, e.g. `corum ctl --cacert FILE`)";

async fn run(
    mut rd: impl AsyncRead + Unpin,
    mut wr: impl AsyncWrite + Unpin,
    mut rx: mpsc::Receiver<Pending>,
    shared: &Shared,
    limits: Limits,
    batch_requests_max: usize,
) -> String {
    let writer = async {
        let mut enc = BodyEncoder::new();
        let mut out = BytesMut::new();
        let mut batch: Vec<Request> = Vec::new();
        let mut frame_id = 0u64;
        let body_max = limits.body_bytes_max();
        // A request taken from the queue that did not fit the previous frame: it starts this
        // one.
        let mut carried: Option<Pending> = None;
        loop {
            let first = match carried.take() {
                Some(p) => p,
                None => {
                    let Some(p) = rx.recv().await else {
                        return "client dropped".to_owned();
                    };
                    // Let the callers that are ready run before draining the queue, so
                    // requests issued together leave in one frame (one write) instead of one
                    // frame each.
                    tokio::task::yield_now().await;
                    p
                }
            };
            frame_id += 1;
            let mut body_bytes = BATCH_ENCODED_BYTES_MAX + first.request.encoded_bytes_max();
            let mut pendings = vec![first];
            while pendings.len() < batch_requests_max {
                let Ok(p) = rx.try_recv() else { break };
                let n = p.request.encoded_bytes_max();
                if body_bytes + n > body_max {
                    carried = Some(p);
                    break;
                }
                body_bytes += n;
                pendings.push(p);
            }
            {
                let mut g = shared.waiting.lock().unwrap_or_else(|p| p.into_inner());
                if g.0 {
                    return "connection failed".to_owned();
                }
                batch.clear();
                for p in pendings {
                    g.1.insert(p.request.id, (frame_id, p.reply));
                    batch.push(p.request);
                }
            }
            out.clear();
            if let Err(e) = enc.request_frame(&mut out, frame_id, &batch, &limits) {
                // Only a single request over the frame limit gets here (several are packed by
                // their size bounds): the client checks that before queueing, so this is a
                // request that bypassed the check. Fail this batch only.
                let mut g = shared.waiting.lock().unwrap_or_else(|p| p.into_inner());
                for r in &batch {
                    if let Some((_, reply)) = g.1.remove(&r.id) {
                        let limit = limits.frame_bytes_max as u64;
                        let _ = reply.send(Err(ConnError::FrameRefused(ServerError::TooLarge {
                            limit,
                        })));
                    }
                }
                tracing::warn!(error = %e, "request batch over the frame limit");
                continue;
            }
            // The flush sends what TLS still buffers (a no-op on plain TCP).
            if let Err(e) = wr.write_all(&out).await {
                return format!("write failed: {e}");
            }
            if let Err(e) = wr.flush().await {
                return format!("write failed: {e}");
            }
        }
    };
    let reader = async {
        let decoder = FrameDecoder::new(limits);
        let mut buf = BytesMut::with_capacity(64 << 10);
        loop {
            loop {
                let frame = match decoder.decode(&mut buf) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(_) if buf.starts_with(&TLS_ALERT_PREFIX) => return TLS_ONLY.to_owned(),
                    Err(e) => return format!("bad frame from server: {e}"),
                };
                if frame.kind != FrameKind::ClientResponses {
                    return format!("unexpected frame kind {:?} from server", frame.kind);
                }
                let batch = match decode_responses(&frame.body, &limits) {
                    Ok(b) => b,
                    Err(e) => return format!("bad response body: {e}"),
                };
                let mut g = shared.waiting.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(err) = batch.frame_error {
                    let ids: Vec<u64> =
                        g.1.iter()
                            .filter(|(_, (f, _))| *f == frame.request_id)
                            .map(|(id, _)| *id)
                            .collect();
                    for id in ids {
                        if let Some((_, reply)) = g.1.remove(&id) {
                            let _ = reply.send(Err(ConnError::FrameRefused(err.clone())));
                        }
                    }
                }
                for resp in batch.responses {
                    match g.1.remove(&resp.id) {
                        Some((_, reply)) => {
                            let _ = reply.send(Ok(resp));
                        }
                        None => tracing::warn!(id = resp.id, "response for no request in flight"),
                    }
                }
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) if buf.starts_with(&TLS_ALERT_PREFIX) => return TLS_ONLY.to_owned(),
                Ok(0) => return "server closed the connection".to_owned(),
                Ok(_) => {}
                Err(e) => return format!("read failed: {e}"),
            }
        }
    };
    tokio::select! {
        why = writer => why,
        why = reader => why,
    }
}
