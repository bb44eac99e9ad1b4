//! The Rust client (tokio).
//!
//! ```no_run
//! # async fn demo() -> Result<(), wire::client::ClientError> {
//! use wire::client::{Client, ClientConfig};
//! let client = Client::connect(ClientConfig::new(vec!["127.0.0.1:7000".into()])).await?;
//! client.put("greeting", "hello").await?;
//! let kv = client.get("greeting").await?;
//! assert_eq!(kv.unwrap().value, "hello");
//! # Ok(()) }
//! ```
//!
//! # Routing
//! The client fetches the [`ClusterMap`] from a seed endpoint, hashes each key to a slot
//! ([`crate::slot_of`]), finds the slot's partition and sends the request straight to the
//! endpoint of the shard that leads it (the map's leader hint, else the first replica).
//!
//! # Pipelining
//! One connection per endpoint, shared by every caller (the client is `Clone` and cheap to
//! share across tasks). Requests issued concurrently are batched into one frame per writer
//! turn; responses are matched by request id, so thousands can be in flight on a connection.
//!
//! # Retries
//! Each call has a deadline ([`ClientConfig::request_timeout`]). Until it passes the client
//! retries on:
//! - `NotLeader`: follows the leader hint at once (a hint it cannot place refreshes the map);
//! - `StaleMap` / `WrongShard`: refreshes the map, then retries;
//! - `Unavailable`, `Busy`, `Timeout`, or a lost connection: backs off exponentially
//!   (`backoff_min` doubling up to `backoff_max`), refreshes the map after a lost connection,
//!   and retries.
//!
//! # Exactly-once writes
//! A client has a random session id; each write takes the next sequence number once, and every
//! retry of that write carries the same (session, seq), so the server's session table applies
//! it at most once (Raft thesis §6.3). Reads carry seq 0.
//!
//! Sequence numbers are unique and increasing in issue order per session, but one client
//! pipelines writes to many partitions at once, so a partition sees a subset of them and may
//! see them out of order (seq 7 applied before a retried seq 5). The server's session table
//! must therefore remember which numbers it applied (per session and partition, e.g. a
//! window above a low-water mark), not only the largest one.

mod conn;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::frame::Limits;
use crate::map::ClusterMap;
use crate::messages::{
    Compare, CompareOp, CompareTarget, Consistency, DeleteResult, KeyValue, NodeStatus, Op,
    Outcome, Put, PutResult, Range, Request, ResponseHeader, ServerError, Txn, TxnOp, TxnResult,
};
use crate::DecodeError;
pub use conn::ConnError;
use conn::Connection;

/// Client settings. Every limit has a default.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Endpoints (`host:port`) to fetch the cluster map from.
    pub seeds: Vec<String>,
    /// Deadline for one call, retries included. Default 5 s.
    pub request_timeout: Duration,
    /// First retry delay. Default 2 ms.
    pub backoff_min: Duration,
    /// Largest retry delay. Default 200 ms.
    pub backoff_max: Duration,
    /// Deadline for opening a connection. Default 1 s.
    pub connect_timeout: Duration,
    /// Frame and key/value limits. Default [`Limits::default`].
    pub limits: Limits,
    /// Requests queued per connection before callers wait. Default 4,096.
    pub queue_requests_max: usize,
    /// Requests per frame. Default 256.
    pub batch_requests_max: usize,
    /// Keys per partition per `range` page when the caller passes limit 0. Default 1,000.
    pub range_keys_default: u32,
}

impl ClientConfig {
    /// Defaults with the given seed endpoints.
    pub fn new(seeds: Vec<String>) -> Self {
        Self {
            seeds,
            request_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(2),
            backoff_max: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(1),
            limits: Limits::default(),
            queue_requests_max: 4096,
            batch_requests_max: 256,
            range_keys_default: 1000,
        }
    }
}

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error that retrying does not fix.
    #[error("server error: {0}")]
    Server(ServerError),
    /// The deadline passed; `last` describes the last failure seen.
    #[error("deadline passed after {attempts} attempts; last failure: {last}")]
    Timeout {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The request breaks a local limit (key, value or batch size) and was not sent.
    #[error("request refused locally: {0}")]
    Invalid(DecodeError),
    /// A transaction's keys are in more than one partition (refused locally, not sent).
    #[error("transaction spans partitions {0} and {1}")]
    CrossPartition(u64, u64),
    /// The server answered with a result of the wrong kind.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// One page of a [`Client::range`] scan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangePage {
    /// Key-values in key order.
    pub kvs: Vec<KeyValue>,
    /// Continuation token: pass it as `after` to get the next page; `None` when done.
    pub next: Option<Bytes>,
}

/// Options of a range scan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeOptions {
    /// First key (inclusive).
    pub start: Bytes,
    /// End key (exclusive); empty: no end.
    pub end: Bytes,
    /// Keys per page; 0: `ClientConfig::range_keys_default`.
    pub limit: u32,
    /// Omit values.
    pub keys_only: bool,
    /// How fresh.
    pub consistency: Consistency,
    /// Continuation token from the previous page.
    pub after: Bytes,
}

struct Inner {
    config: ClientConfig,
    session: u64,
    seq: AtomicU64,
    map: RwLock<Arc<ClusterMap>>,
    conns: Mutex<HashMap<String, Arc<Connection>>>,
    refresh: tokio::sync::Mutex<()>,
}

/// The corum client. Cheap to clone; clones share connections and the session.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("session", &self.inner.session)
            .finish_non_exhaustive()
    }
}

fn random_session() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish() | 1 // never 0, which means "no session"
}

/// Where a request goes.
enum Target {
    Key(Bytes),
    Partition(u64),
}

impl Client {
    /// Connects: fetches the cluster map from the first seed that answers.
    pub async fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        let client = Self {
            inner: Arc::new(Inner {
                session: random_session(),
                seq: AtomicU64::new(0),
                map: RwLock::new(Arc::new(ClusterMap::default())),
                conns: Mutex::new(HashMap::new()),
                refresh: tokio::sync::Mutex::new(()),
                config,
            }),
        };
        let deadline = Instant::now() + client.inner.config.request_timeout;
        client.refresh_map(0, deadline).await?;
        Ok(client)
    }

    /// This client's session id.
    pub fn session(&self) -> u64 {
        self.inner.session
    }

    /// The cluster map the client routes with.
    pub fn cluster_map(&self) -> Arc<ClusterMap> {
        self.inner
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads `key` linearizably.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<KeyValue>, ClientError> {
        self.get_with(key, Consistency::Linearizable).await
    }

    /// Reads `key` with the given consistency.
    pub async fn get_with(
        &self,
        key: impl Into<Bytes>,
        consistency: Consistency,
    ) -> Result<Option<KeyValue>, ClientError> {
        match self
            .execute(Op::Get {
                key: key.into(),
                consistency,
            })
            .await?
            .1
        {
            Outcome::Get(kv) => Ok(kv),
            other => Err(unexpected("Get", &other)),
        }
    }

    /// Writes `key`.
    pub async fn put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<PutResult, ClientError> {
        self.put_with(Put {
            key: key.into(),
            value: value.into(),
            if_absent: false,
            return_previous: false,
        })
        .await
    }

    /// Writes `key` only if it does not exist; `written` says whether it did.
    pub async fn put_if_absent(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<PutResult, ClientError> {
        self.put_with(Put {
            key: key.into(),
            value: value.into(),
            if_absent: true,
            return_previous: false,
        })
        .await
    }

    /// Writes with every option of [`Put`].
    pub async fn put_with(&self, put: Put) -> Result<PutResult, ClientError> {
        match self.execute(Op::Put(put)).await?.1 {
            Outcome::Put(r) => Ok(r),
            other => Err(unexpected("Put", &other)),
        }
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<DeleteResult, ClientError> {
        match self
            .execute(Op::Delete {
                key: key.into(),
                return_previous: false,
            })
            .await?
            .1
        {
            Outcome::Delete(r) => Ok(r),
            other => Err(unexpected("Delete", &other)),
        }
    }

    /// Compare-and-set: writes `new` if the key's value is `expected` (`None`: if the key does
    /// not exist). Returns whether it wrote.
    pub async fn cas(
        &self,
        key: impl Into<Bytes>,
        expected: Option<Bytes>,
        new: impl Into<Bytes>,
    ) -> Result<bool, ClientError> {
        let key = key.into();
        let mut compares = vec![Compare {
            key: key.clone(),
            op: CompareOp::Equal,
            target: CompareTarget::Exists(expected.is_some()),
        }];
        if let Some(v) = expected {
            compares.push(Compare {
                key: key.clone(),
                op: CompareOp::Equal,
                target: CompareTarget::Value(v),
            });
        }
        let put = Put {
            key,
            value: new.into(),
            if_absent: false,
            return_previous: false,
        };
        let txn = Txn {
            compares,
            success: vec![TxnOp::Put(put)],
            failure: Vec::new(),
        };
        Ok(self.txn(txn).await?.succeeded)
    }

    /// Runs a transaction. Every key must be in one partition (use `{hash tags}`); otherwise
    /// it fails locally with [`ClientError::CrossPartition`].
    pub async fn txn(&self, txn: Txn) -> Result<TxnResult, ClientError> {
        let map = self.cluster_map();
        let mut partition = None;
        for key in txn.keys() {
            if let Some(p) = map.partition_of_key(key) {
                match partition {
                    None => partition = Some(p.id),
                    Some(q) if q != p.id => return Err(ClientError::CrossPartition(q, p.id)),
                    Some(_) => {}
                }
            }
        }
        match self.execute(Op::Txn(txn)).await?.1 {
            Outcome::Txn(r) => Ok(r),
            other => Err(unexpected("Txn", &other)),
        }
    }

    /// One page of the keys in `[start, end)` across all partitions, in key order.
    /// Pass the page's `next` as `after` for the next page.
    pub async fn range(&self, opts: RangeOptions) -> Result<RangePage, ClientError> {
        let limit = if opts.limit == 0 {
            self.inner.config.range_keys_default
        } else {
            opts.limit
        };
        let map = self.cluster_map();
        let mut partitions: Vec<u64> = map.partitions.iter().map(|p| p.id).collect();
        partitions.sort_unstable();
        let mut kvs = Vec::new();
        // The smallest last key among partitions that have more: nothing past it may be
        // returned, or the next page (resuming after our last key) would skip that
        // partition's keys in between.
        let mut cutoff: Option<Bytes> = None;
        for p in partitions {
            let op = Op::Range(Range {
                partition: p,
                start: opts.start.clone(),
                end: opts.end.clone(),
                limit,
                keys_only: opts.keys_only,
                consistency: opts.consistency,
                after: opts.after.clone(),
            });
            let r = match self.execute_at(Target::Partition(p), op).await?.1 {
                Outcome::Range(r) => r,
                other => return Err(unexpected("Range", &other)),
            };
            if r.more {
                if let Some(last) = r.kvs.last() {
                    if cutoff.as_ref().is_none_or(|c| last.key < *c) {
                        cutoff = Some(last.key.clone());
                    }
                }
            }
            kvs.extend(r.kvs);
        }
        kvs.sort_by(|a, b| a.key.cmp(&b.key));
        let mut more = cutoff.is_some();
        if let Some(c) = &cutoff {
            kvs.retain(|kv| kv.key <= *c);
        }
        if kvs.len() > limit as usize {
            kvs.truncate(limit as usize);
            more = true;
        }
        let next = if more {
            kvs.last().map(|kv| kv.key.clone())
        } else {
            None
        };
        Ok(RangePage { kvs, next })
    }

    /// The status of every node endpoint in the map.
    pub async fn status(&self) -> Result<Vec<(String, NodeStatus)>, ClientError> {
        let map = self.cluster_map();
        let mut out = Vec::new();
        for endpoint in map.endpoints() {
            out.push((endpoint.to_owned(), self.status_of(endpoint).await?));
        }
        Ok(out)
    }

    /// The status of the node at `endpoint`.
    pub async fn status_of(&self, endpoint: &str) -> Result<NodeStatus, ClientError> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        match self.call_endpoint(endpoint, Op::Status, 0, deadline).await {
            Ok((_, Outcome::Status(s))) => Ok(s),
            Ok((_, other)) => Err(unexpected("Status", &other)),
            Err(e) => Err(e),
        }
    }

    /// Sends `op` to the leader of its key's partition, with retries (see the module docs),
    /// and returns the answering replica's header and the result. The building block of
    /// every other method; loadgen may use it directly.
    pub async fn execute(&self, op: Op) -> Result<(ResponseHeader, Outcome), ClientError> {
        let target = match op.routing_key() {
            Some(k) => Target::Key(k.clone()),
            None => match &op {
                Op::Range(r) => Target::Partition(r.partition),
                _ => {
                    return Err(ClientError::Protocol(
                        "status and map requests name an endpoint".into(),
                    ))
                }
            },
        };
        self.execute_at(target, op).await
    }

    async fn execute_at(
        &self,
        target: Target,
        op: Op,
    ) -> Result<(ResponseHeader, Outcome), ClientError> {
        let cfg = &self.inner.config;
        op.check(&cfg.limits).map_err(ClientError::Invalid)?;
        // Thesis §6.3: one sequence number per write, reused by every retry of it.
        let seq = if op.is_write() {
            self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            0
        };
        let deadline = Instant::now() + cfg.request_timeout;
        let mut backoff = cfg.backoff_min;
        let mut attempts = 0u32;
        let mut quick_retries = 0u32;
        let mut last = String::from("no attempt");
        loop {
            let map = self.cluster_map();
            let routed = match &target {
                Target::Key(k) => map
                    .route(k)
                    .map(|(p, r)| (p.id, r.node, r.endpoint.clone())),
                Target::Partition(id) => map.partition(*id).and_then(|p| {
                    p.leader()
                        .or_else(|| p.replicas.first())
                        .map(|r| (p.id, r.node, r.endpoint.clone()))
                }),
            };
            let mut retry_now = false;
            let mut refresh = false;
            match routed {
                None => {
                    last = format!("no route in map epoch {}", map.epoch);
                    refresh = true;
                }
                Some((partition, node, endpoint)) => {
                    attempts += 1;
                    let request = Request {
                        id: 0,
                        session: self.inner.session,
                        seq,
                        map_epoch: map.epoch,
                        op: op.clone(),
                    };
                    match self.send(&endpoint, request, deadline).await {
                        Ok(resp) => match resp.outcome {
                            Ok(outcome) => return Ok((resp.header, outcome)),
                            Err(ServerError::NotLeader {
                                leader_node,
                                leader_endpoint,
                            }) => {
                                last = format!(
                                    "not leader at node {node} ({endpoint}), hint {leader_node}"
                                );
                                if leader_node != 0
                                    && leader_node != node
                                    && self.set_leader(partition, leader_node)
                                {
                                    retry_now = true;
                                } else {
                                    let _ = leader_endpoint; // the map, not the hint, names endpoints
                                    refresh = true;
                                }
                            }
                            Err(
                                e @ (ServerError::StaleMap { .. } | ServerError::WrongShard { .. }),
                            ) => {
                                last = e.to_string();
                                refresh = true;
                            }
                            Err(
                                e @ (ServerError::Unavailable { .. }
                                | ServerError::Busy
                                | ServerError::Timeout),
                            ) => {
                                last = e.to_string();
                            }
                            Err(e) => return Err(ClientError::Server(e)),
                        },
                        Err(SendError::Deadline) => {
                            return Err(ClientError::Timeout { attempts, last })
                        }
                        Err(SendError::Conn(ConnError::FrameRefused(e))) => {
                            return Err(ClientError::Server(e))
                        }
                        Err(SendError::Conn(ConnError::Lost(why))) => {
                            last = format!("{endpoint}: {why}");
                            refresh = true;
                        }
                    }
                }
            }
            if refresh {
                // A failed refresh is not fatal: the next attempt (or its error) tells more.
                if let Err(e) = self.refresh_map(map.epoch, deadline).await {
                    tracing::debug!(error = %e, "cluster map refresh failed");
                }
            }
            // A new map or a usable leader hint is worth an immediate retry, but only a few in
            // a row, so two replicas pointing at each other cannot spin until the deadline.
            if refresh && self.cluster_map().epoch > map.epoch {
                retry_now = true;
            }
            if retry_now && quick_retries < 3 {
                quick_retries += 1;
                continue;
            }
            quick_retries = 0;
            let now = Instant::now();
            if now + backoff >= deadline {
                return Err(ClientError::Timeout { attempts, last });
            }
            tracing::debug!(attempts, backoff_us = backoff.as_micros() as u64, last = %last, "retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(cfg.backoff_max);
        }
    }

    /// Records a leader hint. False when the hinted node is not a replica in our map.
    fn set_leader(&self, partition: u64, node: u64) -> bool {
        let mut guard = self.inner.map.write().unwrap_or_else(|p| p.into_inner());
        let known = guard
            .partition(partition)
            .is_some_and(|p| p.replicas.iter().any(|r| r.node == node));
        if known {
            Arc::make_mut(&mut guard).set_leader(partition, node);
        }
        known
    }

    /// Fetches the map from the seeds and the map's endpoints, unless a newer map than
    /// `seen_epoch` arrived meanwhile. Keeps the newest map seen.
    async fn refresh_map(&self, seen_epoch: u64, deadline: Instant) -> Result<(), ClientError> {
        let _one_at_a_time = self.inner.refresh.lock().await;
        let current = self.cluster_map();
        if current.epoch > seen_epoch {
            return Ok(());
        }
        let mut endpoints: Vec<String> = self.inner.config.seeds.clone();
        for e in current.endpoints() {
            if !endpoints.iter().any(|s| s == e) {
                endpoints.push(e.to_owned());
            }
        }
        let mut last = String::from("no endpoint to ask");
        for endpoint in &endpoints {
            match self
                .call_endpoint(endpoint, Op::ClusterMap, 0, deadline)
                .await
            {
                Ok((_, Outcome::ClusterMap(map))) => {
                    let mut guard = self.inner.map.write().unwrap_or_else(|p| p.into_inner());
                    if map.epoch >= guard.epoch {
                        *guard = Arc::new(map);
                    }
                    return Ok(());
                }
                Ok((_, other)) => last = unexpected("ClusterMap", &other).to_string(),
                Err(e) => last = format!("{endpoint}: {e}"),
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(ClientError::Timeout {
            attempts: endpoints.len() as u32,
            last,
        })
    }

    /// One attempt at `endpoint`, no retry.
    async fn call_endpoint(
        &self,
        endpoint: &str,
        op: Op,
        seq: u64,
        deadline: Instant,
    ) -> Result<(ResponseHeader, Outcome), ClientError> {
        let epoch = self.cluster_map().epoch;
        let request = Request {
            id: 0,
            session: self.inner.session,
            seq,
            map_epoch: epoch,
            op,
        };
        match self.send(endpoint, request, deadline).await {
            Ok(resp) => resp
                .outcome
                .map(|o| (resp.header, o))
                .map_err(ClientError::Server),
            Err(SendError::Deadline) => Err(ClientError::Timeout {
                attempts: 1,
                last: "deadline".into(),
            }),
            Err(SendError::Conn(ConnError::FrameRefused(e))) => Err(ClientError::Server(e)),
            Err(SendError::Conn(e)) => Err(ClientError::Timeout {
                attempts: 1,
                last: e.to_string(),
            }),
        }
    }

    async fn send(
        &self,
        endpoint: &str,
        request: Request,
        deadline: Instant,
    ) -> Result<crate::Response, SendError> {
        let conn = match tokio::time::timeout_at(deadline, self.connection(endpoint)).await {
            Err(_) => return Err(SendError::Deadline),
            Ok(Err(e)) => {
                return Err(SendError::Conn(ConnError::Lost(format!(
                    "connect to {endpoint}: {e}"
                ))))
            }
            Ok(Ok(c)) => c,
        };
        match tokio::time::timeout_at(deadline, conn.call(request)).await {
            Err(_) => Err(SendError::Deadline),
            Ok(r) => r.map_err(SendError::Conn),
        }
    }

    async fn connection(&self, endpoint: &str) -> std::io::Result<Arc<Connection>> {
        {
            let conns = self.inner.conns.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = conns.get(endpoint) {
                if !c.is_dead() {
                    return Ok(c.clone());
                }
            }
        }
        let cfg = &self.inner.config;
        let fresh = tokio::time::timeout(
            cfg.connect_timeout,
            Connection::connect(
                endpoint,
                cfg.limits,
                cfg.queue_requests_max,
                cfg.batch_requests_max,
            ),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        let mut conns = self.inner.conns.lock().unwrap_or_else(|p| p.into_inner());
        // Another task may have connected meanwhile: keep one live connection per endpoint.
        match conns.get(endpoint) {
            Some(c) if !c.is_dead() => Ok(c.clone()),
            _ => {
                conns.insert(endpoint.to_owned(), fresh.clone());
                Ok(fresh)
            }
        }
    }
}

enum SendError {
    Deadline,
    Conn(ConnError),
}

fn unexpected(wanted: &str, got: &Outcome) -> ClientError {
    let got = match got {
        Outcome::Get(_) => "Get",
        Outcome::Put(_) => "Put",
        Outcome::Delete(_) => "Delete",
        Outcome::Txn(_) => "Txn",
        Outcome::Range(_) => "Range",
        Outcome::Status(_) => "Status",
        Outcome::ClusterMap(_) => "ClusterMap",
    };
    ClientError::Protocol(format!("expected a {wanted} result, got {got}"))
}
