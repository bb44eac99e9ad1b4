//! The operations port (`--metrics-addr`): Prometheus metrics, `/health` and `/ready`.
//!
//! # Threads
//! Plain `std` threads, never a shard: anything slow and rare stays off the shard cores (a
//! scrape encodes every metric and reads `/proc`). One thread ("corum-metrics") accepts connections and hands each to a fixed pool of
//! [`WORKERS`] threads ("corum-http-N") through a queue of at most [`QUEUED_MAX`]
//! connections; when the queue is full the accepting thread answers a canned 503 itself
//! (writing for at most [`BUSY_WRITE_TIMEOUT`]) and closes. A worker reads one HTTP/1.0 or 1.1
//! request head (at most [`REQUEST_HEAD_BYTES_MAX`] bytes, parsed by `httparse`, within
//! [`REQUEST_DEADLINE`] of the accept, or [`DEQUEUE_GRACE`] after a worker takes it if it
//! waited longer in the queue), answers it and closes the connection
//! (`Connection: close`; Prometheus reconnects each scrape). Reading the head, queueing and
//! writing the answer share one deadline, [`CONNECTION_DEADLINE`] after the accept, however
//! slowly the client reads. So threads and memory are bounded, and a connection holds up
//! another by at most one [`CONNECTION_DEADLINE`], and only once [`WORKERS`] connections are
//! already being served. A panic while answering is caught: logged at error, answered 500,
//! and the worker goes on.
//! The shards never wait for any of it: it only reads their metrics (`super::metrics`: relaxed
//! atomics each shard alone writes) and the status they publish (`super::shared`).
//! Put the port on an operations network, not the internet.
//!
//! # Endpoints
//! | path | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text format 0.0.4, or OpenMetrics 1.0 when the `Accept` header asks for `application/openmetrics-text` (Prometheus does), written by the `prometheus-client` crate |
//! | `GET /health` | 200 `ok`: the process is up and every shard's loop turned within [`stall_bound`] (a shard still recovering counts as up); 503 naming the stalled or stopped shard |
//! | `GET /ready` | 200 `ready`: every shard serves, this node applied a cluster map, and every partition with a replica here knows its leader; 503 saying which of these is missing. Not "caught up": a replica may still be far behind its leader |
//! | anything else | 404; a method other than GET/HEAD 405; a malformed request 400 (logged at warn, at most one line per [`LOG_EVERY`]) |
//!
//! Bodies of `/health` and `/ready` are one line of plain text.

use std::any::Any;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeCounterValue, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::metrics::{HistogramSnapshot, LoopState, OpKind, RESULTS};
use super::shared::NodeShared;
use super::ServerError;
use crate::config::NodeConfig;
use crate::log_limit::LogLimiter;

/// Threads answering connections. More than a handful of idle sockets (port scanners,
/// half-open load-balancer checks) must not delay `/health`; each thread is idle otherwise.
pub const WORKERS: usize = 8;
/// Accepted connections waiting for a worker, at most; more are answered 503 at once.
pub const QUEUED_MAX: usize = 32;
/// Longest request head (request line and headers) read.
pub const REQUEST_HEAD_BYTES_MAX: usize = 8 << 10;
/// Headers in a request head, at most (more: 400).
const HEADERS_MAX: usize = 32;
/// Time a client has, from the accept, to send its request head.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Time a connection may take in all, from the accept to the close: waiting for a worker,
/// reading the head and writing the answer, however slowly the client reads.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);
/// Time allowed to write the canned 503 when every worker is busy and the queue is full.
pub const BUSY_WRITE_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a worker still waits for the request head of a connection that waited in the
/// queue past its [`REQUEST_DEADLINE`]: a client that sent its request at once is answered
/// (within its [`CONNECTION_DEADLINE`]) instead of having its unread request reset.
pub const DEQUEUE_GRACE: Duration = Duration::from_millis(100);
/// Warn lines about clients (malformed requests, turned away) and accept errors: at most one
/// per this, each saying how many were suppressed since the last.
pub const LOG_EVERY: Duration = Duration::from_secs(5);
/// A shard whose loop has not turned for this long is reported stalled, at least (see
/// [`stall_bound`]).
pub const STALL_MIN: Duration = Duration::from_secs(5);
/// Partitions named in a `/ready` answer, at most.
const NAMED_MAX: usize = 10;
/// What a client gets when every worker is busy and the queue is full.
const BUSY_ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
    Content-Type: text/plain; charset=utf-8\r\nContent-Length: 26\r\nConnection: close\r\n\r\n\
    busy: too many connections";
const _: () = assert!(b"busy: too many connections".len() == 26);

/// How long a shard's loop may go without a turn before `/health` reports it stalled: an
/// idle loop turns at least every heartbeat interval (`tick_ms * heartbeat_ticks`), so four
/// of those, and never less than [`STALL_MIN`].
pub fn stall_bound(config: &NodeConfig) -> Duration {
    let idle = Duration::from_millis(
        config
            .tuning
            .tick_ms
            .saturating_mul(u64::from(config.tuning.heartbeat_ticks)),
    );
    (idle * 4).max(STALL_MIN)
}

/// The bounds of one server: the constants above, smaller in tests.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Worker threads ([`WORKERS`]).
    pub workers: usize,
    /// Queued connections ([`QUEUED_MAX`]).
    pub queued_max: usize,
    /// From the accept to the end of the request head ([`REQUEST_DEADLINE`]).
    pub request_deadline: Duration,
    /// From the accept to the close ([`CONNECTION_DEADLINE`]).
    pub connection_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            workers: WORKERS,
            queued_max: QUEUED_MAX,
            request_deadline: REQUEST_DEADLINE,
            connection_deadline: CONNECTION_DEADLINE,
        }
    }
}

/// Why a connection got no normal answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The head did not end within [`REQUEST_HEAD_BYTES_MAX`] bytes.
    #[error("request head longer than {REQUEST_HEAD_BYTES_MAX} bytes")]
    HeadTooLarge,
    /// The client closed, or the request deadline passed, in the middle of the head.
    #[error("request head incomplete (client closed or {0:?} passed)")]
    HeadIncomplete(Duration),
    /// Not an HTTP/1.x request head.
    #[error("malformed request head: {0}")]
    Malformed(#[from] httparse::Error),
    /// The request target is not a path.
    #[error("request target is not a path starting with /")]
    BadTarget,
    /// The connection's deadline passed while writing the answer.
    #[error("connection deadline passed while writing the answer")]
    DeadlinePassed,
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl HttpError {
    /// The client sent something that is not a request this server reads (answered 400).
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            HttpError::HeadTooLarge
                | HttpError::HeadIncomplete(_)
                | HttpError::Malformed(_)
                | HttpError::BadTarget
        )
    }
}

/// The running accepting thread and workers.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    listener: Arc<TcpListener>,
    acceptor: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    /// Connections the workers took off the queue.
    taken: Arc<AtomicU64>,
}

/// An accepted connection on its way to a worker.
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
}

/// What the threads share.
struct Context {
    endpoints: Endpoints,
    limits: Limits,
    /// Malformed requests and clients turned away.
    client_log: LogLimiter,
    accept_log: LogLimiter,
    panic_log: LogLimiter,
    /// Connections workers took off the queue (tests wait on it).
    taken: Arc<AtomicU64>,
}

impl MetricsServer {
    /// Binds `addr` (an error if it is taken) and starts the threads.
    pub fn start(
        addr: SocketAddr,
        config: Arc<NodeConfig>,
        shared: Arc<NodeShared>,
    ) -> Result<MetricsServer, ServerError> {
        Self::start_with(addr, config, shared, Limits::default())
    }

    /// [`Self::start`] with other bounds.
    pub fn start_with(
        addr: SocketAddr,
        config: Arc<NodeConfig>,
        shared: Arc<NodeShared>,
        limits: Limits,
    ) -> Result<MetricsServer, ServerError> {
        let node = config.id;
        let listener = TcpListener::bind(addr).map_err(|source| ServerError::Io {
            what: format!("bind metrics port {addr}"),
            source,
        })?;
        let addr = listener.local_addr().unwrap_or(addr);
        let listener = Arc::new(listener);
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Arc::new(Context {
            endpoints: Endpoints::new(config, shared),
            limits,
            client_log: LogLimiter::new(LOG_EVERY),
            accept_log: LogLimiter::new(LOG_EVERY),
            panic_log: LogLimiter::new(LOG_EVERY),
            taken: Arc::new(AtomicU64::new(0)),
        });
        let spawn_error = |source| ServerError::Io {
            what: "spawn a metrics thread".into(),
            source,
        };
        let mut server = MetricsServer {
            addr,
            stop: stop.clone(),
            listener: listener.clone(),
            acceptor: None,
            workers: Vec::with_capacity(limits.workers),
            taken: ctx.taken.clone(),
        };
        // On an error below, dropping `server` stops the threads started so far.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Conn>(limits.queued_max);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..limits.workers.max(1) {
            let (rx, stop, ctx) = (rx.clone(), stop.clone(), ctx.clone());
            let t = std::thread::Builder::new()
                .name(format!("corum-http-{i}"))
                .spawn(move || {
                    let _span = tracing::info_span!("ops", node).entered();
                    work(&rx, &stop, &ctx)
                })
                .map_err(spawn_error)?;
            server.workers.push(t);
        }
        let t = std::thread::Builder::new()
            .name("corum-metrics".into())
            .spawn(move || {
                let _span = tracing::info_span!("ops", node).entered();
                accept(&listener, &stop, &tx, &ctx)
            })
            .map_err(spawn_error)?;
        server.acceptor = Some(t);
        tracing::info!(metrics = %addr, "metrics and health endpoints serving");
        Ok(server)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the threads and waits for them (at most about one [`CONNECTION_DEADLINE`]: a
    /// worker finishes the connection it is answering).
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocked accept (Linux returns EINVAL from accept on a listening socket
        // that was shut down); the connect covers a kernel that does not.
        // SAFETY: the fd belongs to `self.listener`, alive until after the joins below.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
        if let Some(t) = self.acceptor.take() {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
            let _ = t.join();
        }
        // The accepting thread dropped the queue's sender: each worker's `recv` fails once the
        // queue is empty (queued connections are dropped unanswered, `stop` being set).
        for t in self.workers.drain(..) {
            let _ = t.join();
        }
    }
}

impl MetricsServer {
    /// Connections the workers have taken off the queue so far (answered or being answered).
    pub fn connections_taken(&self) -> u64 {
        self.taken.load(Ordering::SeqCst)
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if self.acceptor.is_some() || !self.workers.is_empty() {
            self.stop_inner();
        }
    }
}

fn accept(listener: &TcpListener, stop: &AtomicBool, queue: &SyncSender<Conn>, ctx: &Context) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                let conn = Conn {
                    stream,
                    peer,
                    accepted: Instant::now(),
                };
                match queue.try_send(conn) {
                    Ok(()) => {}
                    Err(TrySendError::Full(mut c)) => {
                        if let Some(suppressed) = ctx.client_log.admit(Instant::now()) {
                            tracing::warn!(peer = %c.peer, suppressed, workers = ctx.limits.workers,
                                queued = ctx.limits.queued_max,
                                "metrics port busy: every worker busy and the queue full, answered 503");
                        }
                        // Best effort: the answer fits a fresh socket's send buffer.
                        let _ = c.stream.set_write_timeout(Some(BUSY_WRITE_TIMEOUT));
                        let _ = c.stream.write_all(BUSY_ANSWER);
                        let _ = c.stream.shutdown(std::net::Shutdown::Write);
                    }
                    // Every worker is gone (they catch panics, so only at shutdown).
                    Err(TrySendError::Disconnected(_)) => return,
                }
            }
            Err(e) => {
                if let Some(suppressed) = ctx.accept_log.admit(Instant::now()) {
                    tracing::warn!(error = %e, suppressed, "metrics accept failed");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn work(queue: &Mutex<Receiver<Conn>>, stop: &AtomicBool, ctx: &Context) {
    loop {
        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(conn) = next else { return };
        ctx.taken.fetch_add(1, Ordering::SeqCst);
        if !stop.load(Ordering::SeqCst) {
            answer(conn, ctx);
        }
    }
}

/// A connection of the operations port: plain TCP, or TLS over it (`server::tls`; the socket
/// timeouts are set on the TCP stream under it).
trait HttpStream: Read + Write {
    fn tcp(&self) -> &TcpStream;
    /// Sends what is buffered above the socket, and TLS's close_notify.
    fn finish(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl HttpStream for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// A TCP stream whose every read and write gives up at one deadline. Under TLS one
/// `read` or `write` of the HTTP code can make rustls read the socket many times (a
/// handshake, a record trickling in a byte at a time), so a socket timeout set once per call
/// bounds only the gap between bytes, and a slow client could hold a worker for ever (TLS
/// review, finding 1, reproduced: 8 trickling connections kept /health from answering for
/// 25 s). This recomputes the timeout from the deadline before every socket call.
struct DeadlineTcp {
    tcp: TcpStream,
    deadline: Instant,
}

impl DeadlineTcp {
    fn left(&self) -> std::io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the connection's deadline passed",
            ));
        }
        Ok(left)
    }
}

impl Read for DeadlineTcp {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.left()?;
        self.tcp.set_read_timeout(Some(left))?;
        self.tcp.read(buf)
    }
}

impl Write for DeadlineTcp {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let left = self.left()?;
        self.tcp.set_write_timeout(Some(left))?;
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

impl HttpStream for rustls::StreamOwned<rustls::ServerConnection, DeadlineTcp> {
    fn tcp(&self) -> &TcpStream {
        &self.sock.tcp
    }
    fn finish(&mut self) -> std::io::Result<()> {
        self.conn.send_close_notify();
        self.flush()
    }
}

/// Answers one connection, over TLS when the node has it (its current certificates).
fn answer(conn: Conn, ctx: &Context) {
    let Conn {
        stream,
        peer,
        accepted,
    } = conn;
    match ctx.endpoints.shared.tls() {
        None => answer_on(stream, peer, accepted, ctx, false),
        Some(tls) => match rustls::ServerConnection::new(tls.http.clone()) {
            Ok(session) => answer_on(
                rustls::StreamOwned::new(
                    session,
                    DeadlineTcp {
                        tcp: stream,
                        deadline: accepted + ctx.limits.connection_deadline,
                    },
                ),
                peer,
                accepted,
                ctx,
                true,
            ),
            Err(e) => tracing::error!(error = %e, "cannot start a TLS session on the metrics port"),
        },
    }
}

/// Answers one connection; a panic is logged at error and answered 500, and never leaves
/// this function (the worker goes on).
fn answer_on(
    mut stream: impl HttpStream,
    peer: SocketAddr,
    accepted: Instant,
    ctx: &Context,
    tls: bool,
) {
    let conn_stream = &mut stream;
    let end = accepted + ctx.limits.connection_deadline;
    // A connection that waited in the queue past its head deadline still gets a short read:
    // its request is usually in the socket already.
    let head_by = (accepted + ctx.limits.request_deadline)
        .max(Instant::now() + DEQUEUE_GRACE)
        .min(end);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        match handle(conn_stream, head_by, end, &ctx.endpoints) {
            Err(e) if e.is_bad_request() => {
                if let Some(suppressed) = ctx.client_log.admit(Instant::now()) {
                    tracing::warn!(peer = %peer, error = %e, suppressed,
                        "malformed request on the metrics port, answered 400");
                }
                respond(
                    conn_stream,
                    400,
                    "text/plain",
                    &line(e.to_string()),
                    true,
                    end,
                )
            }
            r => r,
        }
    }));
    match outcome {
        Ok(Ok(())) => {}
        // A plaintext client or another CA's certificate on a TLS port: a stranger can do
        // that at will, so rate-limited.
        Ok(Err(HttpError::Io(e))) if tls && e.kind() == std::io::ErrorKind::InvalidData => {
            if let Some(suppressed) = ctx.client_log.admit(Instant::now()) {
                tracing::warn!(peer = %peer, error = %e, suppressed,
                    "TLS handshake failed on the metrics port; connection closed");
            }
        }
        Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "metrics connection failed"),
        Err(payload) => {
            if let Some(suppressed) = ctx.panic_log.admit(Instant::now()) {
                tracing::error!(peer = %peer, panic = panic_text(payload.as_ref()), suppressed,
                    "metrics request handler panicked, answered 500");
            }
            let _ = respond(
                &mut stream,
                500,
                "text/plain",
                b"internal error (logged)\n",
                true,
                end,
            );
        }
    }
}

/// The message of a panic payload.
fn panic_text(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic payload that is not a string)")
}

/// A request head as far as this server cares.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// The client accepts OpenMetrics.
    pub openmetrics: bool,
}

/// Parses the bytes received so far: Ok(None) if the head has not ended yet.
pub fn parse_head(buf: &[u8]) -> Result<Option<RequestHead>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    if req.parse(buf)?.is_partial() {
        return Ok(None);
    }
    // A complete parse sets the method and the path.
    let (method, target) = (req.method.unwrap_or_default(), req.path.unwrap_or_default());
    if !target.starts_with('/') {
        return Err(HttpError::BadTarget);
    }
    let openmetrics = req.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("accept")
            && h.value
                .windows(b"application/openmetrics-text".len())
                .any(|w| w == b"application/openmetrics-text")
    });
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Ok(Some(RequestHead {
        method: method.to_owned(),
        path: path.to_owned(),
        openmetrics,
    }))
}

/// Reads the request head by `deadline`: Ok(None) if the client closed, or the deadline
/// passed, before it sent a byte.
fn read_head(
    stream: &mut impl HttpStream,
    deadline: Instant,
) -> Result<Option<RequestHead>, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if !buf.is_empty() {
            if let Some(head) = parse_head(&buf)? {
                return Ok(Some(head));
            }
            if buf.len() >= REQUEST_HEAD_BYTES_MAX {
                return Err(HttpError::HeadTooLarge);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = if left.is_zero() {
            0
        } else {
            stream.tcp().set_read_timeout(Some(left))?;
            let room = (REQUEST_HEAD_BYTES_MAX - buf.len()).min(chunk.len());
            match stream.read(&mut chunk[..room]) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(HttpError::HeadIncomplete(REQUEST_DEADLINE))
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Writes all of `bytes` by `deadline`: each write may block only for the time left, so a
/// client that reads a little now and then cannot stretch the answer past the deadline.
fn write_all_by(
    stream: &mut impl HttpStream,
    mut bytes: &[u8],
    deadline: Instant,
) -> Result<(), HttpError> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError::DeadlinePassed);
        }
        stream.tcp().set_write_timeout(Some(left))?;
        match stream.write(bytes) {
            Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads the request by `head_by` and answers it by `end`. Err: nothing was answered (a bad
/// request is answered by the caller).
fn handle(
    stream: &mut impl HttpStream,
    head_by: Instant,
    end: Instant,
    endpoints: &Endpoints,
) -> Result<(), HttpError> {
    let Some(req) = read_head(stream, head_by)? else {
        return Ok(());
    };
    if req.method != "GET" && req.method != "HEAD" {
        return respond(
            stream,
            405,
            "text/plain",
            b"only GET and HEAD are served\n",
            true,
            end,
        );
    }
    let body_wanted = req.method == "GET";
    let now = Instant::now();
    let (status, content_type, body): (u16, &str, Vec<u8>) = match req.path.as_str() {
        "/metrics" => match endpoints.scrape(req.openmetrics) {
            Ok((ct, text)) => (200, ct, text.into_bytes()),
            Err(_) => (500, "text/plain", b"could not encode the metrics".to_vec()),
        },
        "/health" => {
            let (ok, text) = health(&endpoints.config, &endpoints.shared, now);
            (if ok { 200 } else { 503 }, "text/plain", line(text))
        }
        "/ready" => {
            let (ok, text) = ready(&endpoints.config, &endpoints.shared, now);
            (if ok { 200 } else { 503 }, "text/plain", line(text))
        }
        "/" => (
            200,
            "text/plain",
            b"corum operations port: /metrics /health /ready\n".to_vec(),
        ),
        // The hook of the test that a panic is caught (the unit tests only).
        #[cfg(test)]
        "/test/panic" => panic!("a test asked for a panic"),
        // Holds the worker, for the test of connections that wait in the queue.
        #[cfg(test)]
        "/test/slow" => {
            std::thread::sleep(Duration::from_millis(600));
            (200, "text/plain", b"slow\n".to_vec())
        }
        _ => (
            404,
            "text/plain",
            b"not found: /metrics /health /ready\n".to_vec(),
        ),
    };
    respond(stream, status, content_type, &body, body_wanted, end)
}

fn line(mut s: String) -> Vec<u8> {
    s.push('\n');
    s.into_bytes()
}

fn respond(
    stream: &mut impl HttpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    body_wanted: bool,
    end: Instant,
) -> Result<(), HttpError> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    let content_type = if content_type == "text/plain" {
        "text/plain; charset=utf-8"
    } else {
        content_type
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if body_wanted {
        bytes.extend_from_slice(body);
    }
    write_all_by(stream, &bytes, end)?;
    stream.finish()?;
    // Let the client read everything before the close (no RST over unread request bytes).
    let _ = stream.tcp().shutdown(std::net::Shutdown::Write);
    Ok(())
}

/// `/health` (module docs): (healthy, one line saying why).
pub fn health(config: &NodeConfig, shared: &NodeShared, now: Instant) -> (bool, String) {
    let m = &shared.metrics;
    let bound = stall_bound(config);
    let mut starting = Vec::new();
    for (i, s) in m.shards().iter().enumerate() {
        match s.loop_state(m.start, now) {
            LoopState::Stopped => return (false, format!("unhealthy: shard {i} stopped")),
            LoopState::Turning { since } if since > bound => {
                return (
                    false,
                    format!(
                        "unhealthy: shard {i} has not turned its loop for {:.1} s (bound {:.1} s)",
                        since.as_secs_f64(),
                        bound.as_secs_f64()
                    ),
                )
            }
            LoopState::Turning { .. } => {}
            LoopState::Starting => starting.push(i),
        }
    }
    if starting.is_empty() {
        (true, "ok".into())
    } else {
        (true, format!("ok (starting: shards {starting:?})"))
    }
}

/// `/ready` (module docs): (ready, one line saying why).
pub fn ready(config: &NodeConfig, shared: &NodeShared, now: Instant) -> (bool, String) {
    let (healthy, why) = health(config, shared, now);
    if !healthy {
        return (false, format!("not ready: {why}"));
    }
    let m = &shared.metrics;
    for (i, s) in m.shards().iter().enumerate() {
        if s.loop_state(m.start, now) == LoopState::Starting {
            return (false, format!("not ready: shard {i} is starting"));
        }
    }
    let epoch = shared.map_epoch();
    if epoch == 0 {
        return (
            false,
            "not ready: no cluster map applied yet (the meta group has not committed one)".into(),
        );
    }
    let mut hosted = 0;
    let mut leaderless = Vec::new();
    for (p, s) in shared.hosted() {
        hosted += 1;
        if s.leader.load(Ordering::Relaxed) == 0 {
            leaderless.push(p);
        }
    }
    if leaderless.is_empty() {
        return (
            true,
            format!("ready: map epoch {epoch}, {hosted} partitions here, each with a known leader"),
        );
    }
    let mut named = String::new();
    for (k, p) in leaderless.iter().take(NAMED_MAX).enumerate() {
        let _ = write!(named, "{}{p}", if k == 0 { "" } else { ", " });
    }
    if leaderless.len() > NAMED_MAX {
        named.push_str(", ...");
    }
    (
        false,
        format!(
            "not ready: {} of {hosted} partitions here have no known leader ({named}; 0 is the \
             meta group)",
            leaderless.len()
        ),
    )
}

/// What the thread serves from.
struct Endpoints {
    config: Arc<NodeConfig>,
    shared: Arc<NodeShared>,
    registry: Registry,
}

impl Endpoints {
    fn new(config: Arc<NodeConfig>, shared: Arc<NodeShared>) -> Endpoints {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(NodeCollector {
            config: config.clone(),
            shared: shared.clone(),
        }));
        Endpoints {
            config,
            shared,
            registry,
        }
    }

    /// (content type, text) of one scrape.
    fn scrape(&self, openmetrics: bool) -> Result<(&'static str, String), std::fmt::Error> {
        let mut out = String::with_capacity(32 << 10);
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
            Ok((
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                out,
            ))
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
            Ok((
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                out,
            ))
        }
    }
}

/// Encodes every metric at scrape time from the shards' metrics and published status.
#[derive(Debug)]
pub struct NodeCollector {
    config: Arc<NodeConfig>,
    shared: Arc<NodeShared>,
}

impl NodeCollector {
    /// A collector for one node.
    pub fn new(config: Arc<NodeConfig>, shared: Arc<NodeShared>) -> Self {
        NodeCollector { config, shared }
    }
}

type Labels = Vec<(&'static str, String)>;

fn shard_label(i: usize) -> Labels {
    vec![("shard", i.to_string())]
}

/// One counter family (`u64` counts or `f64` seconds), left out when there are no rows.
fn counters<N: EncodeCounterValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: Vec<(Labels, N)>,
) -> std::fmt::Result {
    if rows.is_empty() {
        return Ok(());
    }
    let mut me = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(me.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: Vec<(Labels, f64)>,
) -> std::fmt::Result {
    if rows.is_empty() {
        return Ok(());
    }
    let mut me = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(me.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histograms(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: Vec<(Labels, HistogramSnapshot)>,
) -> std::fmt::Result {
    let mut me = enc.encode_descriptor(name, help, unit, MetricType::Histogram)?;
    for (labels, h) in rows {
        me.encode_family(&labels)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                h.sum, h.count, &h.buckets, None,
            )?;
    }
    Ok(())
}

/// Per-shard sums and maxima of what the shards publish per partition.
#[derive(Default, Clone, Copy)]
struct PartitionTotals {
    hosted: u64,
    led: u64,
    leaderless: u64,
    apply_lag_max: u64,
    sessions: u64,
}

impl NodeCollector {
    fn partition_totals(&self) -> Vec<PartitionTotals> {
        let mut t = vec![PartitionTotals::default(); self.config.shards.max(1)];
        for (p, s) in self.shared.hosted() {
            let Some(x) = t.get_mut(crate::meta::shard_of_partition(&self.config, p)) else {
                continue;
            };
            let leader = s.leader.load(Ordering::Relaxed);
            x.hosted += 1;
            x.led += u64::from(leader == self.config.id);
            x.leaderless += u64::from(leader == 0);
            let lag = s
                .commit
                .load(Ordering::Relaxed)
                .saturating_sub(s.applied.load(Ordering::Relaxed));
            x.apply_lag_max = x.apply_lag_max.max(lag);
            x.sessions += s.sessions.load(Ordering::Relaxed);
        }
        t
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.shared.metrics;
        let shards = m.shards();
        let per = |f: &dyn Fn(&super::metrics::ShardMetrics) -> u64| -> Vec<(Labels, u64)> {
            shards
                .iter()
                .enumerate()
                .map(|(i, s)| (shard_label(i), f(s)))
                .collect()
        };
        let e = &mut enc;

        // Requests.
        let mut rows = Vec::new();
        for (i, s) in shards.iter().enumerate() {
            for kind in OpKind::ALL {
                for (r, result) in RESULTS.iter().enumerate() {
                    let v = s.requests(kind, r);
                    // Every kind's `ok` series always exists (rates start from 0); errors
                    // appear once they happened.
                    if v > 0 || r == 0 {
                        rows.push((
                            vec![
                                ("shard", i.to_string()),
                                ("kind", kind.label().to_owned()),
                                ("result", (*result).to_owned()),
                            ],
                            v,
                        ));
                    }
                }
            }
        }
        counters(
            e,
            "corum_requests",
            "Client requests answered, by kind and result (ok, or the error the client got).",
            None,
            rows,
        )?;
        let mut rows = Vec::new();
        for (i, s) in shards.iter().enumerate() {
            for kind in OpKind::ALL {
                rows.push((
                    vec![("shard", i.to_string()), ("kind", kind.label().to_owned())],
                    s.request_duration(kind).snapshot(),
                ));
            }
        }
        histograms(
            e,
            "corum_request_duration",
            "Time from a client request's frame being read by the shard to its answer being \
             queued to the connection's writer (every result; not the Busy answers a \
             connection at its in-flight limit gets at once), by kind.",
            Some(&Unit::Seconds),
            rows,
        )?;
        let mut rows = Vec::new();
        for (i, s) in shards.iter().enumerate() {
            for (reason, r) in [("busy", 8), ("too_large", 6)] {
                debug_assert_eq!(RESULTS[r], reason);
                let v: u64 = OpKind::ALL.iter().map(|&k| s.requests(k, r)).sum();
                rows.push((
                    vec![("shard", i.to_string()), ("reason", reason.to_owned())],
                    v,
                ));
            }
        }
        counters(
            e,
            "corum_requests_rejected",
            "Requests refused before proposing: busy (a queue or the connection's in-flight \
             limit is full) or too_large (over a size limit). The same answers are in \
             corum_requests_total by result.",
            None,
            rows,
        )?;
        gauges(
            e,
            "corum_client_connections",
            "Client connections open.",
            None,
            per(&|s| s.client_connections.get())
                .into_iter()
                .map(|(l, v)| (l, v as f64))
                .collect(),
        )?;
        counters(
            e,
            "corum_client_connections_accepted",
            "Client connections accepted.",
            None,
            per(&|s| s.client_connections_accepted.get()),
        )?;
        counters(
            e,
            "corum_client_connections_refused",
            "Client connections refused because connections_max were open.",
            None,
            per(&|s| s.client_connections_refused.get()),
        )?;

        // Proposals.
        counters(
            e,
            "corum_proposals",
            "Commands proposed to Raft (writes and transactions, on leaders).",
            None,
            per(&|s| s.proposals.get()),
        )?;
        histograms(
            e,
            "corum_proposal_batch_size",
            "Commands per proposal batch (one batch per partition per loop turn).",
            None,
            shards
                .iter()
                .enumerate()
                .map(|(i, s)| (shard_label(i), s.proposal_batch.snapshot()))
                .collect(),
        )?;

        // WAL.
        counters(
            e,
            "corum_wal_syncs",
            "WAL batches written and fdatasynced (group commit: one per batch of all the \
             shard's partitions).",
            None,
            per(&|s| s.wal_syncs.get()),
        )?;
        counters(
            e,
            "corum_wal_written",
            "Bytes written to the WAL device (padding and rewritten partial blocks included).",
            Some(&Unit::Bytes),
            per(&|s| s.wal_bytes.get()),
        )?;
        histograms(
            e,
            "corum_wal_write_duration",
            "Duration of one WAL batch write (O_DIRECT, before its fdatasync).",
            Some(&Unit::Seconds),
            shards
                .iter()
                .enumerate()
                .map(|(i, s)| (shard_label(i), s.wal_write.snapshot()))
                .collect(),
        )?;
        histograms(
            e,
            "corum_wal_fdatasync_duration",
            "Duration of one WAL fdatasync.",
            Some(&Unit::Seconds),
            shards
                .iter()
                .enumerate()
                .map(|(i, s)| (shard_label(i), s.wal_fdatasync.snapshot()))
                .collect(),
        )?;

        let now = Instant::now();
        gauges(
            e,
            "corum_wal_sync_oldest_age",
            "Time the shard's oldest unfinished WAL sync (batch write and fdatasync) has been \
             running; 0 when none is. A hung fdatasync grows it while the loop keeps turning.",
            Some(&Unit::Seconds),
            shards
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let age = s.wal_sync_age(m.start, now).unwrap_or_default();
                    (shard_label(i), age.as_secs_f64())
                })
                .collect(),
        )?;

        // Raft.
        let totals = self.partition_totals();
        let gauge_rows = |f: &dyn Fn(&PartitionTotals) -> u64| -> Vec<(Labels, f64)> {
            totals
                .iter()
                .enumerate()
                .map(|(i, t)| (shard_label(i), f(t) as f64))
                .collect()
        };
        gauges(
            e,
            "corum_partitions",
            "Partition replicas on this shard (the meta group, partition 0, on shard 0).",
            None,
            gauge_rows(&|t| t.hosted),
        )?;
        gauges(
            e,
            "corum_partitions_led",
            "Partitions this shard leads.",
            None,
            gauge_rows(&|t| t.led),
        )?;
        gauges(
            e,
            "corum_partitions_without_leader",
            "Partition replicas on this shard that know no leader (an election is running, or \
             no quorum).",
            None,
            gauge_rows(&|t| t.leaderless),
        )?;
        gauges(
            e,
            "corum_apply_lag_entries",
            "Largest commit index minus applied index of a partition replica on this shard \
             (entries committed, as this replica knows, but not yet applied).",
            None,
            gauge_rows(&|t| t.apply_lag_max),
        )?;
        gauges(
            e,
            "corum_sessions",
            "Client sessions in the session tables of this shard's partitions.",
            None,
            gauge_rows(&|t| t.sessions),
        )?;
        counters(
            e,
            "corum_leader_changes",
            "Times a partition replica on this shard learnt of a new leader (a new term's \
             leader, the first one included).",
            None,
            per(&|s| s.leader_changes.get()),
        )?;
        counters(
            e,
            "corum_elections_started",
            "Elections started by partition replicas on this shard (became candidate in a new \
             term).",
            None,
            per(&|s| s.elections.get()),
        )?;
        counters(
            e,
            "corum_prevotes_started",
            "Pre-vote rounds started by partition replicas on this shard.",
            None,
            per(&|s| s.prevotes.get()),
        )?;
        gauges(
            e,
            "corum_map_epoch",
            "Epoch of the cluster map this node applied (0: none yet).",
            None,
            vec![(vec![], self.shared.map_epoch() as f64)],
        )?;

        // Snapshots.
        counters(
            e,
            "corum_snapshots_sent",
            "Snapshots sent to lagging followers.",
            None,
            per(&|s| s.snapshots_sent.get()),
        )?;
        counters(
            e,
            "corum_snapshot_sent",
            "Bytes of snapshots sent.",
            Some(&Unit::Bytes),
            per(&|s| s.snapshot_sent_bytes.get()),
        )?;
        counters(
            e,
            "corum_snapshots_received",
            "Snapshots received from a leader.",
            None,
            per(&|s| s.snapshots_received.get()),
        )?;
        counters(
            e,
            "corum_snapshot_received",
            "Bytes of snapshots received.",
            Some(&Unit::Bytes),
            per(&|s| s.snapshot_received_bytes.get()),
        )?;
        counters(
            e,
            "corum_snapshots_taken",
            "Snapshots taken locally (a partition's log grew past snapshot_log_bytes).",
            None,
            per(&|s| s.snapshots_taken.get()),
        )?;

        // Peers.
        counters(
            e,
            "corum_peer_frames_dropped",
            "Frames for a peer dropped because its send queue was full (Raft retransmits).",
            None,
            per(&|s| s.peer_frames_dropped.get()),
        )?;
        counters(
            e,
            "corum_peer_messages_dropped",
            "Peer messages dropped because the shard's inbox was full (Raft retransmits).",
            None,
            per(&|s| s.peer_messages_dropped.get()),
        )?;

        // Shard loops.
        counters(
            e,
            "corum_shard_loop_turns",
            "Event-loop turns of the shard.",
            None,
            per(&|s| s.loop_turns.get()),
        )?;
        gauges(
            e,
            "corum_shard_last_turn_age",
            "Time since the shard's loop last turned (/health fails past its bound).",
            Some(&Unit::Seconds),
            shards
                .iter()
                .enumerate()
                .filter_map(|(i, s)| match s.loop_state(m.start, now) {
                    LoopState::Turning { since } => Some((shard_label(i), since.as_secs_f64())),
                    _ => None,
                })
                .collect(),
        )?;
        let tick = proc::clock_ticks_per_second();
        counters(
            e,
            "corum_shard_cpu",
            "CPU time of the shard's thread (user + system).",
            Some(&Unit::Seconds),
            shards
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let tid = s.tid();
                    let stat = proc::stat(&format!("/proc/self/task/{tid}/stat"))?;
                    (tid != 0).then(|| (shard_label(i), stat.cpu_ticks as f64 / tick))
                })
                .collect(),
        )?;

        // Process (the names every Prometheus client library uses).
        if let Some(stat) = proc::stat("/proc/self/stat") {
            counters(
                e,
                "process_cpu",
                "Total user and system CPU time spent.",
                Some(&Unit::Seconds),
                vec![(vec![], stat.cpu_ticks as f64 / tick)],
            )?;
            gauges(
                e,
                "process_resident_memory",
                "Resident memory size.",
                Some(&Unit::Bytes),
                vec![(vec![], (stat.rss_pages * proc::page_bytes()) as f64)],
            )?;
            gauges(
                e,
                "process_virtual_memory",
                "Virtual memory size.",
                Some(&Unit::Bytes),
                vec![(vec![], stat.vsize_bytes as f64)],
            )?;
            gauges(
                e,
                "process_threads",
                "Threads of the process.",
                None,
                vec![(vec![], stat.threads as f64)],
            )?;
            if let Some(boot) = proc::boot_time() {
                gauges(
                    e,
                    "process_start_time",
                    "Start time of the process since the Unix epoch.",
                    Some(&Unit::Seconds),
                    vec![(vec![], boot + stat.start_ticks as f64 / tick)],
                )?;
            }
        }
        if let Some(fds) = proc::open_fds() {
            gauges(
                e,
                "process_open_fds",
                "Open file descriptors.",
                None,
                vec![(vec![], fds as f64)],
            )?;
        }
        if let Some(max) = proc::max_fds() {
            gauges(
                e,
                "process_max_fds",
                "Limit on open file descriptors.",
                None,
                vec![(vec![], max as f64)],
            )?;
        }
        let (healthy, _) = health(&self.config, &self.shared, now);
        let (is_ready, _) = ready(&self.config, &self.shared, now);
        gauges(
            e,
            "corum_node_healthy",
            "1 when GET /health would answer 200 (every shard's loop turns), else 0.",
            None,
            vec![(vec![], f64::from(u8::from(healthy)))],
        )?;
        gauges(
            e,
            "corum_node_ready",
            "1 when GET /ready would answer 200 (map applied, every partition here has a known \
             leader), else 0.",
            None,
            vec![(vec![], f64::from(u8::from(is_ready)))],
        )?;
        gauges(
            e,
            "corum_build_info",
            "Always 1; the version label names the corum build.",
            None,
            vec![(vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1.0)],
        )?;
        gauges(
            e,
            "corum_node_id",
            "This node's id.",
            None,
            vec![(vec![], self.config.id as f64)],
        )?;
        Ok(())
    }
}

/// Reading `/proc` for the process and per-thread metrics.
mod proc {
    /// What the metrics use from a `stat` file (proc(5)).
    pub struct Stat {
        /// utime + stime, clock ticks.
        pub cpu_ticks: u64,
        /// Threads (`num_threads`).
        pub threads: u64,
        /// Start time after boot, clock ticks.
        pub start_ticks: u64,
        /// Virtual memory, bytes.
        pub vsize_bytes: u64,
        /// Resident set, pages.
        pub rss_pages: u64,
    }

    /// Parses a `/proc/.../stat` file; None if unreadable.
    pub fn stat(path: &str) -> Option<Stat> {
        let text = std::fs::read_to_string(path).ok()?;
        parse_stat(&text)
    }

    /// Parses the text of a stat file.
    pub fn parse_stat(text: &str) -> Option<Stat> {
        // The command name (field 2) is in parentheses and may hold spaces: fields count
        // from after the last ')'. Field 3 (state) is then index 0.
        let (_, rest) = text.rsplit_once(')')?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |field: usize| -> Option<u64> { f.get(field - 3)?.parse().ok() };
        Some(Stat {
            cpu_ticks: num(14)? + num(15)?,
            threads: num(20)?,
            start_ticks: num(22)?,
            vsize_bytes: num(23)?,
            rss_pages: num(24)?,
        })
    }

    /// `sysconf(_SC_CLK_TCK)`.
    pub fn clock_ticks_per_second() -> f64 {
        // SAFETY: sysconf has no preconditions.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 {
            t as f64
        } else {
            100.0
        }
    }

    /// `sysconf(_SC_PAGESIZE)`.
    pub fn page_bytes() -> u64 {
        // SAFETY: sysconf has no preconditions.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if p > 0 {
            p as u64
        } else {
            4096
        }
    }

    /// Boot time from `/proc/stat` (`btime`), seconds since the epoch.
    pub fn boot_time() -> Option<f64> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()
    }

    /// Entries of `/proc/self/fd`.
    pub fn open_fds() -> Option<usize> {
        Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
    }

    /// The soft RLIMIT_NOFILE.
    pub fn max_fds() -> Option<u64> {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `r` is a valid out-pointer.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
        (rc == 0).then_some(r.rlim_cur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_are_parsed_strictly() {
        let h = parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n").unwrap();
        assert_eq!(
            h,
            Some(RequestHead {
                method: "GET".into(),
                path: "/metrics".into(),
                openmetrics: true
            })
        );
        let h = parse_head(b"HEAD /health HTTP/1.0\n\n").unwrap().unwrap();
        assert_eq!(h.method, "HEAD");
        assert!(!h.openmetrics);
        // Not ended yet: read on.
        for partial in [
            &b"GET /metrics HTTP/1.1\r\nHost: a\r\n"[..],
            b"GET /met",
            b"G",
        ] {
            assert!(matches!(parse_head(partial), Ok(None)), "{partial:?}");
        }
        for bad in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls hello?\r\n\r\n"[..],
            b"\x00\x01\x02garbage\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"GET /metrics HTTP/9.9\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.0 extra\r\n\r\n",
            b"GET /metrics HTTP/1.0\r\nno colon here\r\n\r\n",
            b"\xff\xfe HTTP/1.0\r\n\r\n",
        ] {
            let e = parse_head(bad).expect_err(&String::from_utf8_lossy(bad));
            assert!(e.is_bad_request(), "{e}");
        }
        // More headers than HEADERS_MAX.
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X-A: b\r\n".repeat(HEADERS_MAX + 1)
        );
        assert!(parse_head(many.as_bytes()).is_err());
    }

    #[test]
    fn proc_stat_fields_are_read_after_the_command_name() {
        // A command name with spaces and a ')' inside, as proc(5) allows.
        let text = "1234 (corum n1 (s)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    7 0 12345 987654321 2048 18446744073709551615";
        let s = proc::parse_stat(text).unwrap();
        assert_eq!(s.cpu_ticks, 300);
        assert_eq!(s.threads, 7);
        assert_eq!(s.start_ticks, 12345);
        assert_eq!(s.vsize_bytes, 987654321);
        assert_eq!(s.rss_pages, 2048);
        assert!(proc::stat("/proc/self/stat").is_some());
    }

    fn config() -> NodeConfig {
        NodeConfig::for_tests(3, 2, 1)
    }

    /// A server on a free local port over a node whose shards are all starting (so `/health`
    /// answers 200).
    fn server() -> MetricsServer {
        let c = Arc::new(config());
        let shared = Arc::new(NodeShared::new(&c));
        MetricsServer::start("127.0.0.1:0".parse().unwrap(), c, shared).unwrap()
    }

    /// `GET path` on a fresh connection: the whole answer, or the error, within `timeout`.
    fn get_within(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// B1: idle connections (port scanners, half-open checks) do not hold up `/health`.
    /// With one connection served at a time, 5 idle ones delayed it by 5 x 2 s.
    #[test]
    fn idle_connections_do_not_block_health() {
        let server = server();
        let idle: Vec<TcpStream> = (0..5)
            .map(|_| TcpStream::connect(server.addr()).unwrap())
            .collect();
        let t = Instant::now();
        let bound = Duration::from_secs(3);
        let answer = get_within(server.addr(), "/health", bound)
            .unwrap_or_else(|e| panic!("/health after {:?}: {e}", t.elapsed()));
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
        assert!(t.elapsed() < bound, "{:?}", t.elapsed());
        drop(idle);
        server.stop();
    }

    /// B3: a panic while answering is caught: the client gets a 500 and the worker goes on.
    /// Without the catch, each panic ended a thread, and the port stopped answering.
    #[test]
    fn a_panic_is_answered_500_and_the_workers_survive() {
        let server = server();
        let bound = Duration::from_secs(5);
        // More panics than workers: if one worker died per panic, none would be left.
        for _ in 0..=WORKERS {
            let answer = get_within(server.addr(), "/test/panic", bound).unwrap();
            assert!(answer.starts_with("HTTP/1.1 500 "), "{answer:?}");
        }
        let answer = get_within(server.addr(), "/health", bound).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
        server.stop();
    }

    /// A connection that waited in the queue past its head deadline is still answered when its
    /// request is already there (review of the worker pool: the worker used to close it
    /// unread, which the client saw as a reset). The one worker is held 600 ms by a slow
    /// request, against a 100 ms head deadline.
    #[test]
    fn a_request_that_waited_in_the_queue_is_answered() {
        let c = Arc::new(config());
        let shared = Arc::new(NodeShared::new(&c));
        let limits = Limits {
            workers: 1,
            queued_max: 4,
            request_deadline: Duration::from_millis(100),
            connection_deadline: Duration::from_secs(10),
        };
        let server =
            MetricsServer::start_with("127.0.0.1:0".parse().unwrap(), c, shared, limits).unwrap();
        let bound = Duration::from_secs(10);
        let addr = server.addr();
        let slow = std::thread::spawn(move || get_within(addr, "/test/slow", bound));
        let deadline = Instant::now() + bound;
        while server.connections_taken() < 1 {
            assert!(
                Instant::now() < deadline,
                "the worker never took a connection"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let t = Instant::now();
        let answer = get_within(addr, "/health", bound).expect("answered, not reset");
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
        assert!(
            t.elapsed() >= Duration::from_millis(100),
            "it did wait past its head deadline: {:?}",
            t.elapsed()
        );
        let slow = slow.join().unwrap().unwrap();
        assert!(slow.starts_with("HTTP/1.1 200 "), "{slow:?}");
        server.stop();
    }

    /// A small server (1 worker, 1 queued connection, long deadlines so timing cannot change
    /// the outcome) turns a connection away at once with a 503 when both are taken, and
    /// serves again once they are free.
    #[test]
    fn a_full_queue_is_answered_503_at_once() {
        let c = Arc::new(config());
        let shared = Arc::new(NodeShared::new(&c));
        let limits = Limits {
            workers: 1,
            queued_max: 1,
            request_deadline: Duration::from_secs(60),
            connection_deadline: Duration::from_secs(60),
        };
        let server =
            MetricsServer::start_with("127.0.0.1:0".parse().unwrap(), c, shared, limits).unwrap();
        let bound = Duration::from_secs(5);
        // The worker waits for this one's head; the next waits in the queue. The server
        // accepts in order, and the third connection is accepted only after both.
        // Each waits until the worker holds the first one: connected before that, the second
        // could find the one queue slot still taken and be the one turned away.
        let busy_worker = TcpStream::connect(server.addr()).unwrap();
        let deadline = Instant::now() + bound;
        while server.connections_taken() < 1 {
            assert!(
                Instant::now() < deadline,
                "the worker never took a connection"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let queued = TcpStream::connect(server.addr()).unwrap();
        let mut turned_away = TcpStream::connect(server.addr()).unwrap();
        turned_away.set_read_timeout(Some(bound)).unwrap();
        let t = Instant::now();
        let mut out = Vec::new();
        turned_away.read_to_end(&mut out).unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.starts_with("HTTP/1.1 503 ") && out.ends_with("busy: too many connections"),
            "{out:?}"
        );
        assert!(t.elapsed() < bound, "{:?}", t.elapsed());
        // Closing both frees the worker (each client closed before sending a head); until
        // the worker has taken `queued` off the queue, a new connection may still be turned
        // away, so poll, up to a deadline.
        drop(busy_worker);
        drop(queued);
        let deadline = Instant::now() + bound;
        loop {
            let answer = get_within(server.addr(), "/health", bound).unwrap();
            if answer.starts_with("HTTP/1.1 200 ") {
                break;
            }
            assert!(
                answer.starts_with("HTTP/1.1 503 ") && Instant::now() < deadline,
                "{answer:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server.stop();
    }

    /// B2: one deadline covers the whole answer. A reader that takes a little now and then
    /// made every write() progress within its own timeout, so the old per-call timeout never
    /// fired; now the writer gives up at the deadline.
    #[test]
    fn a_slow_reader_cannot_stretch_an_answer_past_its_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut reader = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut writer, _) = listener.accept().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        // Reads 1 KiB every 20 ms (50 KiB/s) until told to stop, or for 30 s at most.
        let drip = std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(30);
            let mut b = [0u8; 1024];
            reader
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            while !stop2.load(Ordering::SeqCst) && Instant::now() < until {
                if let Ok(0) = reader.read(&mut b) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        // Far more than the socket buffers hold: at 50 KiB/s, minutes.
        let body = vec![b'x'; 64 << 20];
        let t = Instant::now();
        let deadline = t + Duration::from_millis(500);
        let r = write_all_by(&mut writer, &body, deadline);
        let took = t.elapsed();
        stop.store(true, Ordering::SeqCst);
        drip.join().unwrap();
        assert!(
            matches!(r, Err(HttpError::DeadlinePassed)),
            "{:?} after {took:?}",
            r.map_err(|e| e.to_string())
        );
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    /// B5: a WAL sync that has not finished shows as the age of the oldest unfinished sync,
    /// and goes back to 0 when it ends.
    #[test]
    fn an_unfinished_wal_sync_shows_its_age() {
        let c = Arc::new(config());
        let shared = Arc::new(NodeShared::new(&c));
        let endpoints = Endpoints::new(c, shared.clone());
        let age = |shard: &str| -> f64 {
            let (_, text) = endpoints.scrape(false).unwrap();
            let series = format!("corum_wal_sync_oldest_age_seconds{{shard=\"{shard}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
                .parse()
                .unwrap()
        };
        assert_eq!((age("0"), age("1")), (0.0, 0.0));
        let m = &shared.metrics;
        // Started an hour ago (as a start time before the node's: ages count from `start`).
        let later = m.start + Duration::from_secs(3600);
        m.shard(1).wal_sync_started(m.start, m.start);
        assert_eq!(
            m.shard(1).wal_sync_age(m.start, later),
            Some(Duration::from_secs(3600))
        );
        assert!(age("1") > 0.0);
        assert_eq!(age("0"), 0.0);
        m.shard(1).wal_sync_finished();
        assert_eq!(m.shard(1).wal_sync_age(m.start, later), None);
        assert_eq!(age("1"), 0.0);
    }

    #[test]
    fn health_and_ready_say_why() {
        let c = config();
        let shared = NodeShared::new(&c);
        let m = &shared.metrics;
        let t0 = m.start;
        let (ok, why) = health(&c, &shared, t0);
        assert!(ok, "{why}");
        assert!(why.contains("starting"), "{why}");
        let (ok, why) = ready(&c, &shared, t0);
        assert!(!ok && why.contains("shard 0 is starting"), "{why}");
        for s in m.shards() {
            s.serving();
            s.turned(t0, t0);
        }
        let (ok, why) = ready(&c, &shared, t0);
        assert!(!ok && why.contains("no cluster map"), "{why}");
        shared.set_map(Arc::new(crate::meta::MetaMap::initial(&c)));
        shared.publish(0, crate::server::shared::Published::default());
        shared.publish(
            1,
            crate::server::shared::Published {
                leader: 2,
                term: 1,
                ..Default::default()
            },
        );
        let (ok, why) = ready(&c, &shared, t0);
        assert!(
            !ok && why.contains("1 of 2 partitions") && why.contains("(0;"),
            "{why}"
        );
        shared.publish(
            0,
            crate::server::shared::Published {
                leader: 1,
                term: 1,
                ..Default::default()
            },
        );
        let (ok, why) = ready(&c, &shared, t0);
        assert!(ok, "{why}");
        // A loop that stops turning fails both.
        let later = t0 + stall_bound(&c) + Duration::from_secs(1);
        m.shard(0).turned(t0, later);
        let (ok, why) = health(&c, &shared, later);
        assert!(!ok && why.contains("shard 1 has not turned"), "{why}");
        let (ok, _) = ready(&c, &shared, later);
        assert!(!ok);
        m.shard(1).loop_ended();
        let (ok, why) = health(&c, &shared, t0);
        assert!(!ok && why.contains("shard 1 stopped"), "{why}");
    }
}
