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
//! The client fetches the [`ClusterMap`] (see "Map fetch"), hashes each key to a slot
//! ([`crate::slot_of`]) and finds the slot's partition; a `range` names each partition itself.
//! Then the request kind decides the replica:
//! - **Writes, transactions and `Linearizable` reads** go to the shard that leads the partition:
//!   the map's leader hint, else the first replica. Only the leader serves them.
//! - **`Follower` and `Stale` reads** (`get_with` and `range` with those consistencies) may be
//!   served by any replica (a follower read asks the leader for a read index, Raft thesis
//!   §6.4.1; a stale read is local), so they are spread over the replicas as
//!   [`ClientConfig::read_preference`] says. With the default, [`ReadPreference::Followers`],
//!   they go to the non-leader replicas and reach the leader only when every follower failed.
//!   Each such call takes the next value of a per-client counter and starts at that position
//!   of the candidate list (round robin), so consecutive reads, even of one hot key, land on
//!   different replicas; a hash of the key would pin a hot key to one replica instead.
//!
//! # Map fetch
//! [`Client::connect`], and every refresh during a call, asks the seeds and then every endpoint
//! of the current map, in order, for the map; it stops at the first that answers with one.
//! While every endpoint refuses the connection or answers `Unavailable`, `Busy`, `Timeout` or
//! `NotLeader` (a cluster that is starting: its meta group has not committed the map yet), the
//! client backs off exponentially (`backoff_min` doubling up to `backoff_max`) and asks again,
//! until the deadline of the call (for `connect`, [`ClientConfig::request_timeout`]), then
//! fails with [`ClientError::Timeout`]. An answer that retrying does not fix (another server
//! error, a wrong result kind) fails the fetch after that pass over the endpoints, without
//! backing off. A fetched map older than the client's is not installed: the client keeps the
//! newer one. One refresh runs at a time; callers that wait for it skip their own fetch when it
//! installed a map meanwhile (and, after `StaleMap`, the map is at least the server's epoch).
//!
//! # Retries
//! Each call has a deadline ([`ClientConfig::request_timeout`]). Until it passes the client
//! retries on:
//! - `NotLeader`: follows the leader hint at once, also when the hint names the node that
//!   answered (it leads now; the refused attempt was from an earlier term); a hint it cannot
//!   place refreshes the map;
//! - `StaleMap` with an epoch newer than the client's map, or `WrongShard`: refreshes the map
//!   (looking for a map at least as new as the server's), then retries;
//! - `Unavailable`, `Busy`, `Timeout`, `StaleMap` with an epoch the client already has (that
//!   server lags), or a lost connection: backs off exponentially (`backoff_min` doubling up to
//!   `backoff_max`), refreshes the map after a lost connection, and retries.
//!
//! A new map or a followed leader hint is retried at once, at most three times in a row before
//! backing off. Follower and stale reads differ in one way: when the chosen replica fails with
//! any of the errors above except a map refresh (`NotLeader`, whose hint is still recorded,
//! `Unavailable`, `Busy`, `Timeout`, an older `StaleMap`, a lost or refused connection), the
//! read goes at once to the next replica of its order, the leader included; only when every
//! replica of the partition has failed once does the client refresh the map (if a connection
//! was lost), back off and start over from the first replica of its order.
//!
//! # Exactly-once writes
//! A client has a random session id; each write takes the next sequence number once, and every
//! retry of that write carries the same (session, seq), so the server's session table applies
//! it at most once (Raft thesis §6.3). Transactions take a sequence number too, read-only ones
//! included: the server runs every transaction through the log, where a session needs one
//! ([`Op::is_logged`]). Gets and ranges carry seq 0. Writes are pipelined, so every write
//! also carries `first_unacked`, the lowest sequence number the client is still waiting for:
//! the server keeps the cached results of everything from there on and may forget the rest.
//! A write the caller stops waiting for (deadline, dropped future) stops holding it back.
//!
//! # Outcome unknown
//! [`ClientError::Timeout`] is the one answer that says "this call may or may not have taken
//! effect": the deadline passed while a write was in flight, or the server answered
//! `OutcomeUnknown` (a retry whose cached result its session had dropped, or an applied write
//! whose reply did not fit a frame; `last` then holds the server's reason). The client does not
//! retry `OutcomeUnknown`: the same (session, seq) would get the same answer, and a new
//! sequence number could apply the write twice. Find out (read the keys) before writing again.
//! Every other error means the call did not take effect (or, for `Server` errors of a write,
//! was refused before it was applied).
//!
//! Sequence numbers are unique and increasing in issue order per session, but one client
//! pipelines writes to many partitions at once, so a partition sees a subset of them and may
//! see them out of order (seq 7 applied before a retried seq 5). The server's session table
//! must therefore remember which numbers it applied (per session and partition, e.g. a
//! window above a low-water mark), not only the largest one.

mod conn;
pub mod events;
mod route;
pub mod tls;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::frame::Limits;
use crate::map::ClusterMap;
use crate::messages::{
    Compare, CompareOp, CompareTarget, Consistency, DeleteResult, KeyValue, NodeStatus, Op,
    Outcome, Put, PutResult, Range, Request, ResponseHeader, ServerError, TransferLeaderResult,
    Txn, TxnOp, TxnResult,
};
use crate::DecodeError;
use crate::{BackupChunk, Event, EventsResult};
pub use conn::ConnError;
use conn::Connection;
pub use route::ReadPreference;
use route::{Spread, Target};
pub use tls::{TlsClientConfig, TlsError};

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
    /// Most requests per frame. Default 256. A frame also holds at most
    /// `limits.frame_bytes_max` bytes: requests are packed by their encoded-size bounds.
    pub batch_requests_max: usize,
    /// Keys per partition per `range` page when the caller passes limit 0. Default 1,000.
    pub range_keys_default: u32,
    /// Which replicas serve `Follower` and `Stale` reads (gets and ranges); see "Routing" in
    /// the module docs. Default [`ReadPreference::Followers`].
    pub read_preference: ReadPreference,
    /// TLS to every endpoint ([`tls`] module docs). Default `None`: plain TCP.
    pub tls: Option<TlsClientConfig>,
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
            read_preference: ReadPreference::default(),
            tls: None,
        }
    }
}

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error that retrying does not fix.
    #[error("server error: {0}")]
    Server(ServerError),
    /// The outcome is unknown (module docs, "Outcome unknown"): the deadline passed, or the
    /// server answered `OutcomeUnknown`. A write may or may not have been applied. `last`
    /// describes the last failure seen (the server's reason for `OutcomeUnknown`).
    #[error("outcome unknown after {attempts} attempts (deadline passed or the server could not tell); last failure: {last}")]
    Timeout {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The request breaks a local limit (key, value or batch size, or its encoded size is over
    /// the frame limit: [`DecodeError::BodyTooLarge`]) and was not sent.
    #[error("request refused locally: {0}")]
    Invalid(DecodeError),
    /// A transaction's keys are in more than one partition (refused locally, not sent).
    #[error("transaction spans partitions {0} and {1}")]
    CrossPartition(u64, u64),
    /// The server answered with a result of the wrong kind.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// How a server's `InvalidArgument` reason starts when the backup copy a chunk was asked of is
/// no longer held (the client then takes a new copy; any other `InvalidArgument` is final).
pub const BACKUP_COPY_GONE: &str = "backup copy gone:";

/// The most memory [`Client::backup_partition`] reserves up front (the copy's announced
/// length is not trusted further; the buffer grows with the chunks received).
const BACKUP_RESERVE_MAX: usize = 64 << 20;

/// Times [`Client::backup_partition`] takes a new copy when the last one was dropped before
/// all of it was fetched.
pub const BACKUP_ATTEMPTS: usize = 4;

/// A consistent copy of one partition ([`Client::backup_partition`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionCopy {
    /// The partition.
    pub partition: u64,
    /// The copy's applied index and term.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// The partition's revision in the copy.
    pub revision: u64,
    /// The snapshot file's bytes.
    pub data: Bytes,
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
    seqs: Mutex<SeqTracker>,
    map: RwLock<Arc<ClusterMap>>,
    /// Maps installed so far: a caller that saw `n` skips its refresh when another caller
    /// installed one since.
    map_fetches: AtomicU64,
    /// Round-robin counter spreading follower and stale reads over replicas.
    read_rotation: AtomicU64,
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

/// The session's sequence numbers: the next one to hand out, and the writes still waiting for
/// their response (so every request can say which is the lowest unanswered one).
#[derive(Default)]
struct SeqTracker {
    last: u64,
    in_flight: BTreeSet<u64>,
}

/// One write's sequence number; dropping it (answered, failed, or the caller gave up) tells the
/// tracker the client no longer waits for that write.
struct SeqGuard<'a> {
    seqs: &'a Mutex<SeqTracker>,
    seq: u64,
}

impl<'a> SeqGuard<'a> {
    fn new(seqs: &'a Mutex<SeqTracker>) -> Self {
        let mut t = seqs.lock().unwrap_or_else(|p| p.into_inner());
        t.last += 1;
        let seq = t.last;
        t.in_flight.insert(seq);
        SeqGuard { seqs, seq }
    }

    /// The lowest sequence number still waiting; at most `self.seq`, which is waiting too.
    fn first_unacked(&self) -> u64 {
        let t = self.seqs.lock().unwrap_or_else(|p| p.into_inner());
        t.in_flight.first().copied().unwrap_or(self.seq)
    }
}

impl Drop for SeqGuard<'_> {
    fn drop(&mut self) {
        let mut t = self.seqs.lock().unwrap_or_else(|p| p.into_inner());
        t.in_flight.remove(&self.seq);
    }
}

impl Client {
    /// Connects: fetches the cluster map from the first seed that answers with one, retrying
    /// with backoff until [`ClientConfig::request_timeout`] while the seeds refuse connections
    /// or answer `Unavailable`, `Busy`, `Timeout` or `NotLeader` (a cluster that is starting).
    /// Fails with [`ClientError::Timeout`] at the deadline, or with the server's error when an
    /// endpoint answers one that retrying does not fix (and no endpoint answers a map).
    pub async fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        let client = Self {
            inner: Arc::new(Inner {
                session: random_session(),
                seqs: Mutex::new(SeqTracker::default()),
                map: RwLock::new(Arc::new(ClusterMap::default())),
                map_fetches: AtomicU64::new(0),
                read_rotation: AtomicU64::new(0),
                conns: Mutex::new(HashMap::new()),
                refresh: tokio::sync::Mutex::new(()),
                config,
            }),
        };
        let deadline = Instant::now() + client.inner.config.request_timeout;
        client.refresh_map(0, 0, deadline).await?;
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

    /// Reads `key` as it was at `revision` of its partition (0: now): `Ok(None)` when the key
    /// did not exist then; `ServerError::Compacted` below the partition's compaction point,
    /// `ServerError::FutureRevision` above its revision (a follower or stale read can be
    /// behind a revision the leader already has). Revisions are per partition until the
    /// cluster-wide revision lands (issue 16): use revisions this key's own reads and writes
    /// returned.
    pub async fn get_at(
        &self,
        key: impl Into<Bytes>,
        revision: u64,
        consistency: Consistency,
    ) -> Result<Option<KeyValue>, ClientError> {
        let key: Bytes = key.into();
        let partition = self
            .cluster_map()
            .partition_of_key(&key)
            .map(|p| p.id)
            .ok_or_else(|| {
                ClientError::Protocol("the cluster map covers no slot of the key".into())
            })?;
        let mut end = key.to_vec();
        end.push(0);
        let op = Op::Range(Range {
            partition,
            start: key.clone(),
            end: Bytes::from(end),
            limit: 1,
            keys_only: false,
            consistency,
            after: Bytes::new(),
            revision,
        });
        match self.execute_at(Target::Partition(partition), op).await?.1 {
            Outcome::Range(mut r) if r.kvs.len() <= 1 => Ok(r.kvs.pop()),
            other => Err(unexpected("Range", &other)),
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
                revision: 0,
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
        match self.call_endpoint(endpoint, Op::Status, deadline).await {
            Ok((_, Outcome::Status(s))) => Ok(s),
            Ok((_, other)) => Err(unexpected("Status", &other)),
            Err(e) => Err(e),
        }
    }

    /// Moves the leadership of `partition` to node `to_node` (Raft thesis §3.10) and returns
    /// once that node leads: sent to the partition's leader (following `NotLeader` hints, as
    /// any request). Partition 0, the meta group, is in no client map: its leader is found
    /// from the nodes' status. The server answers `Unavailable` when the transfer was
    /// abandoned (the target did not win within an election timeout) and `InvalidArgument`
    /// when `to_node` holds no voting replica of the partition.
    pub async fn transfer_leader(
        &self,
        partition: u64,
        to_node: u64,
    ) -> Result<TransferLeaderResult, ClientError> {
        let op = Op::TransferLeader { partition, to_node };
        let outcome = if partition == 0 {
            let deadline = Instant::now() + self.inner.config.request_timeout;
            let mut last = String::from("no node reports a leader of the meta group");
            let mut attempts = 0;
            loop {
                let mut leader_endpoint = None;
                let endpoints: Vec<String> = self
                    .cluster_map()
                    .endpoints()
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                for endpoint in endpoints {
                    // A node that does not answer is skipped: the leader may be elsewhere.
                    let Ok(st) = self.status_of(&endpoint).await else {
                        continue;
                    };
                    if st.shard == 0
                        && st
                            .partitions
                            .iter()
                            .any(|p| p.partition == 0 && p.is_leader)
                    {
                        leader_endpoint = Some(endpoint);
                    }
                }
                if let Some(endpoint) = leader_endpoint {
                    attempts += 1;
                    match self.call_endpoint(&endpoint, op.clone(), deadline).await {
                        Ok((_, outcome)) => break outcome,
                        Err(ClientError::Server(e @ ServerError::NotLeader { .. })) => {
                            last = format!("{endpoint}: {e}");
                        }
                        Err(e) => return Err(e),
                    }
                }
                if Instant::now() >= deadline {
                    return Err(ClientError::Timeout { attempts, last });
                }
                tokio::time::sleep(self.inner.config.backoff_min).await;
            }
        } else {
            self.execute_at(Target::Partition(partition), op).await?.1
        };
        match outcome {
            Outcome::TransferLeader(r) => Ok(r),
            other => Err(unexpected("TransferLeader", &other)),
        }
    }

    /// The events node `endpoint` holds after sequence number `after` (at most `limit`, 0: the
    /// server's limit), oldest first.
    pub async fn events_of(
        &self,
        endpoint: &str,
        after: u64,
        limit: u32,
    ) -> Result<EventsResult, ClientError> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        match self
            .call_endpoint(endpoint, Op::Events { after, limit }, deadline)
            .await
        {
            Ok((_, Outcome::Events(r))) => Ok(r),
            Ok((_, other)) => Err(unexpected("Events", &other)),
            Err(e) => Err(e),
        }
    }

    /// One stream of what happens in the whole cluster (`corum ctl events`): every node of
    /// the cluster map is asked for its new events every `every`, all nodes at once, each read
    /// to its newest event; events are sent in time order (node clocks, then node and sequence
    /// number) once the round that read them shows nothing older can still come (the
    /// `events` module docs give the exceptions: a node that did not answer, clocks that
    /// disagree). Besides the nodes' own events the stream has `node_down` (a node stopped
    /// answering; detail: the error), `node_up` (it answers again), `node_restarted` (its boot
    /// id changed: it is read from its first event again) and `events_missed` (a node dropped
    /// events before they were read). `from_start`: begin with every event the nodes still
    /// hold, else with the events stamped (by the nodes' clocks) from this call on. The
    /// polling task ends when the receiver is dropped.
    pub fn subscribe_events(
        &self,
        every: Duration,
        from_start: bool,
    ) -> tokio::sync::mpsc::Receiver<Event> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        // "From now" is this call, not when the task first runs or polls.
        let now_ms = events::unix_ms();
        tokio::spawn(self.clone().events_stream(every, from_start, now_ms, tx));
        rx
    }

    /// A consistent copy of `partition` (not 0): its snapshot (engine's `snapshot` file format)
    /// taken by its leader at a linearizable point, so it holds every write acknowledged before
    /// this call and none that was not committed. Fetched in chunks of at most one frame; when
    /// the node holding the copy dropped it (leader change, restart, a newer copy, or the copy
    /// outlived the server's `backup_copy_ttl_ms`) the copy is taken again, up to
    /// [`BACKUP_ATTEMPTS`] times.
    pub async fn backup_partition(&self, partition: u64) -> Result<PartitionCopy, ClientError> {
        let mut last = String::new();
        for _ in 0..BACKUP_ATTEMPTS {
            let first = self.backup_chunk(partition, 0, 0).await?;
            if first.offset != 0 || first.index == 0 || first.partition != partition {
                return Err(ClientError::Protocol(format!(
                    "backup of partition {partition}: the first chunk is partition {} at \
                     offset {} of index {}",
                    first.partition, first.offset, first.index
                )));
            }
            let total = usize::try_from(first.total_bytes).map_err(|_| {
                ClientError::Protocol(format!("backup copy of {} bytes", first.total_bytes))
            })?;
            let mut data = Vec::with_capacity(total.min(BACKUP_RESERVE_MAX));
            data.extend_from_slice(&first.data);
            let mut gone = None;
            while data.len() < total {
                let offset = data.len() as u64;
                match self.backup_chunk(partition, first.index, offset).await {
                    Ok(c) => {
                        if c.index != first.index
                            || c.partition != first.partition
                            || c.revision != first.revision
                            || c.term != first.term
                            || c.total_bytes != first.total_bytes
                            || c.offset != offset
                            || c.data.is_empty()
                        {
                            return Err(ClientError::Protocol(format!(
                                "backup of partition {partition}: asked for offset {offset} of \
                                 the copy at index {} ({total} bytes), got {} bytes at offset {} \
                                 of index {} ({} bytes)",
                                first.index,
                                c.data.len(),
                                c.offset,
                                c.index,
                                c.total_bytes
                            )));
                        }
                        data.extend_from_slice(&c.data);
                    }
                    // The copy is gone (module docs of the server's backup copies): take a
                    // new one.
                    Err(ClientError::Server(ServerError::InvalidArgument { reason }))
                        if reason.starts_with(BACKUP_COPY_GONE) =>
                    {
                        gone = Some(reason);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            match gone {
                None => {
                    return Ok(PartitionCopy {
                        partition,
                        index: first.index,
                        term: first.term,
                        revision: first.revision,
                        data: Bytes::from(data),
                    })
                }
                Some(reason) => {
                    tracing::info!(partition, reason = %reason, "backup copy gone; taking a new one");
                    last = reason;
                }
            }
        }
        Err(ClientError::Server(ServerError::Unavailable {
            reason: format!(
                "backup of partition {partition}: the copy was dropped {BACKUP_ATTEMPTS} times \
                 before it was fetched; last: {last}"
            ),
        }))
    }

    /// One chunk of a partition's copy ([`Op::Backup`]).
    pub async fn backup_chunk(
        &self,
        partition: u64,
        index: u64,
        offset: u64,
    ) -> Result<BackupChunk, ClientError> {
        if partition == 0 {
            // In no client map: it would wait for a route until the deadline.
            return Err(ClientError::Protocol(
                "partition 0 is the meta group; it holds no keys and is not backed up".into(),
            ));
        }
        let op = Op::Backup {
            partition,
            index,
            offset,
        };
        match self.execute_at(Target::Partition(partition), op).await?.1 {
            Outcome::Backup(c) => Ok(c),
            other => Err(unexpected("Backup", &other)),
        }
    }

    /// Sends `op` to its partition's leader, or for follower and stale reads to a replica
    /// chosen by [`ClientConfig::read_preference`], with retries (see the module docs),
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
        op.check_fits_frame(&cfg.limits)
            .map_err(ClientError::Invalid)?;
        // Thesis §6.3: one sequence number per write (per logged command: transactions too,
        // module docs), reused by every retry of it. Writes still in flight keep the session's
        // `first_unacked` at or below their number, so the server keeps their cached results
        // until the client has its answer.
        let guard = op.is_logged().then(|| SeqGuard::new(&self.inner.seqs));
        let seq = guard.as_ref().map_or(0, |g| g.seq);
        let mut spread = Spread::for_op(&op, cfg.read_preference, &self.inner.read_rotation);
        let deadline = Instant::now() + cfg.request_timeout;
        let mut backoff = cfg.backoff_min;
        let mut attempts = 0u32;
        let mut quick_retries = 0u32;
        let mut last = String::from("no attempt");
        loop {
            // Map first: `fetches` then counts the fetch that installed this map, so a later
            // refresh is skipped only for a map installed after this read, never for the one
            // this attempt used (at worst a refresh is redundant).
            let map = self.cluster_map();
            let fetches = self.map_fetches();
            let (next, replicas) = match route::pick(&map, &target, spread.as_ref()) {
                None => {
                    last = format!("no route in map epoch {}", map.epoch);
                    (Next::Refresh { want_epoch: 0 }, 0)
                }
                Some(routed) => {
                    attempts += 1;
                    let (partition, node) = (routed.partition.id, routed.replica.node);
                    let endpoint = routed.replica.endpoint.as_str();
                    let request = Request {
                        id: 0,
                        session: self.inner.session,
                        seq,
                        map_epoch: map.epoch,
                        op: op.clone(),
                        first_unacked: guard.as_ref().map_or(0, SeqGuard::first_unacked),
                    };
                    let next = match self.send(endpoint, request, deadline).await {
                        Ok(resp) => match resp.outcome {
                            Ok(outcome) => return Ok((resp.header, outcome)),
                            Err(e) => {
                                last = format!("node {node} ({endpoint}): {e}");
                                if matches!(e, ServerError::OutcomeUnknown { .. }) {
                                    // Not retried: the same seq gets the same answer, a new one
                                    // could apply the write twice. Module docs.
                                    return Err(ClientError::Timeout { attempts, last });
                                }
                                self.on_server_error(e, partition, &map, spread.is_some())?
                            }
                        },
                        Err(SendError::Deadline) => {
                            return Err(ClientError::Timeout { attempts, last })
                        }
                        Err(SendError::Conn(ConnError::FrameRefused(e))) => {
                            return Err(ClientError::Server(e))
                        }
                        Err(SendError::Conn(ConnError::Lost(why))) => {
                            last = format!("{endpoint}: {why}");
                            Next::ReplicaFailed { lost_conn: true }
                        }
                    };
                    (next, routed.partition.replicas.len())
                }
            };
            let mut retry_now = false;
            match next {
                Next::FollowHint => retry_now = true,
                Next::Refresh { want_epoch } => {
                    self.refresh_quietly(fetches, want_epoch, deadline).await;
                    // A new map is worth an immediate retry.
                    retry_now = self.cluster_map().epoch > map.epoch;
                }
                Next::ReplicaFailed { lost_conn } => {
                    let mut refresh = lost_conn;
                    if let Some(s) = spread.as_mut() {
                        if s.failed(replicas, lost_conn) {
                            continue; // the next replica in this call's order, at once
                        }
                        // Every replica failed once: refresh if any lost its connection, then
                        // back off and start over.
                        refresh = std::mem::take(&mut s.lost_conn);
                    }
                    if refresh {
                        // The endpoint may have moved: a new map is worth an immediate retry.
                        self.refresh_quietly(fetches, 0, deadline).await;
                        retry_now = self.cluster_map().epoch > map.epoch;
                    }
                }
            }
            // A new map or a usable leader hint is worth an immediate retry, but only a few in
            // a row, so two replicas pointing at each other cannot spin until the deadline.
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

    /// What to do after a replica of `partition` answered `e` to a request routed with `map`;
    /// `spread`: the request is a follower/stale read that any replica may serve.
    fn on_server_error(
        &self,
        e: ServerError,
        partition: u64,
        map: &ClusterMap,
        spread: bool,
    ) -> Result<Next, ClientError> {
        Ok(match e {
            ServerError::NotLeader { leader_node, .. } => {
                // The map, not the hint's endpoint, names endpoints: a hinted node missing from
                // our map needs a new map. A node naming itself leads now (it refused an
                // attempt that lost an earlier term, e.g. a write overwritten by another
                // leader's entry): retry there at once.
                let usable = leader_node != 0 && self.set_leader(partition, leader_node);
                if spread {
                    // Another replica can serve the read; the hint still helps later writes.
                    Next::ReplicaFailed { lost_conn: false }
                } else if usable {
                    Next::FollowHint
                } else {
                    Next::Refresh { want_epoch: 0 }
                }
            }
            ServerError::StaleMap { epoch } if epoch > map.epoch => {
                Next::Refresh { want_epoch: epoch }
            }
            // The server's map is older than ours: it has to catch up, not us.
            ServerError::StaleMap { .. } => Next::ReplicaFailed { lost_conn: false },
            ServerError::WrongShard { epoch } => Next::Refresh { want_epoch: epoch },
            ServerError::Unavailable { .. } | ServerError::Busy | ServerError::Timeout => {
                Next::ReplicaFailed { lost_conn: false }
            }
            e => return Err(ClientError::Server(e)),
        })
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

    /// How many maps have been fetched and installed so far.
    fn map_fetches(&self) -> u64 {
        self.inner.map_fetches.load(Ordering::Acquire)
    }

    /// [`Self::refresh_map`] inside a request's retry loop: a failure is not fatal there, the
    /// next attempt (or its error) tells more.
    async fn refresh_quietly(&self, seen_fetches: u64, want_epoch: u64, deadline: Instant) {
        if let Err(e) = self.refresh_map(seen_fetches, want_epoch, deadline).await {
            tracing::debug!(error = %e, "cluster map refresh failed");
        }
    }

    /// Fetches the cluster map from the seeds and the current map's endpoints, in that order
    /// (see "Map fetch" in the module docs), unless another caller installed one since this
    /// caller read `seen_fetches` and it is at least `want_epoch`. A pass over the endpoints
    /// stops at the first map of epoch `want_epoch` or newer; a pass that only got older maps
    /// installs the newest of them. While no endpoint answers a map, passes repeat with
    /// exponential backoff until `deadline`, unless some endpoint answered with an error that
    /// retrying does not fix: then that error is returned after the pass.
    async fn refresh_map(
        &self,
        seen_fetches: u64,
        want_epoch: u64,
        deadline: Instant,
    ) -> Result<(), ClientError> {
        let cfg = &self.inner.config;
        let Ok(_one_at_a_time) = tokio::time::timeout_at(deadline, self.inner.refresh.lock()).await
        else {
            return Err(ClientError::Timeout {
                attempts: 0,
                last: "deadline passed waiting for another map fetch".into(),
            });
        };
        if self.map_fetches() > seen_fetches && self.cluster_map().epoch >= want_epoch {
            return Ok(());
        }
        let mut backoff = cfg.backoff_min;
        let mut attempts = 0u32;
        let mut last = String::from("no endpoint to ask");
        loop {
            let mut best: Option<ClusterMap> = None;
            let mut fatal: Option<ClientError> = None;
            for endpoint in self.map_endpoints() {
                attempts += 1;
                match self.fetch_map_from(&endpoint, deadline).await {
                    Ok(map) => {
                        let enough = map.epoch >= want_epoch;
                        if !enough {
                            last = format!(
                                "{endpoint}: map epoch {} is older than {want_epoch}",
                                map.epoch
                            );
                        }
                        if best.as_ref().is_none_or(|b| map.epoch > b.epoch) {
                            best = Some(map);
                        }
                        if enough {
                            break;
                        }
                    }
                    Err(MapFetchError::Retryable(why)) => last = format!("{endpoint}: {why}"),
                    Err(MapFetchError::Fatal(e)) => {
                        last = format!("{endpoint}: {e}");
                        fatal.get_or_insert(e);
                    }
                    Err(MapFetchError::Deadline) => {
                        return Err(ClientError::Timeout { attempts, last })
                    }
                }
            }
            if let Some(map) = best {
                self.install_map(map);
                return Ok(());
            }
            if let Some(e) = fatal {
                return Err(e);
            }
            if Instant::now() + backoff >= deadline {
                return Err(ClientError::Timeout { attempts, last });
            }
            tracing::debug!(attempts, backoff_us = backoff.as_micros() as u64, last = %last, "retrying the map fetch");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(cfg.backoff_max);
        }
    }

    /// Where to ask for the map: the seeds, then the current map's other endpoints.
    fn map_endpoints(&self) -> Vec<String> {
        let mut endpoints: Vec<String> = self.inner.config.seeds.clone();
        for e in self.cluster_map().endpoints() {
            if !endpoints.iter().any(|s| s == e) {
                endpoints.push(e.to_owned());
            }
        }
        endpoints
    }

    /// Installs a fetched map, unless the client already has a newer one (a lagging endpoint
    /// must not roll the client back).
    fn install_map(&self, map: ClusterMap) {
        let mut guard = self.inner.map.write().unwrap_or_else(|p| p.into_inner());
        if map.epoch >= guard.epoch {
            *guard = Arc::new(map);
        } else {
            tracing::debug!(
                fetched = map.epoch,
                kept = guard.epoch,
                "fetched an older cluster map; keeping ours"
            );
        }
        self.inner.map_fetches.fetch_add(1, Ordering::Release);
    }

    /// One map request to `endpoint`, classified for [`Self::refresh_map`].
    async fn fetch_map_from(
        &self,
        endpoint: &str,
        deadline: Instant,
    ) -> Result<ClusterMap, MapFetchError> {
        let request = Request {
            id: 0,
            session: self.inner.session,
            seq: 0,
            map_epoch: self.cluster_map().epoch,
            op: Op::ClusterMap,
            first_unacked: 0,
        };
        match self.send(endpoint, request, deadline).await {
            Ok(resp) => match resp.outcome {
                Ok(Outcome::ClusterMap(map)) => Ok(map),
                Ok(other) => Err(MapFetchError::Fatal(unexpected("ClusterMap", &other))),
                Err(
                    e @ (ServerError::Unavailable { .. }
                    | ServerError::Busy
                    | ServerError::Timeout
                    | ServerError::NotLeader { .. }),
                ) => Err(MapFetchError::Retryable(e.to_string())),
                Err(e) => Err(MapFetchError::Fatal(ClientError::Server(e))),
            },
            Err(SendError::Deadline) => Err(MapFetchError::Deadline),
            Err(SendError::Conn(ConnError::FrameRefused(e))) => {
                Err(MapFetchError::Fatal(ClientError::Server(e)))
            }
            Err(SendError::Conn(ConnError::Lost(why))) => Err(MapFetchError::Retryable(why)),
        }
    }

    /// One attempt at `endpoint` with a read-only `op` (no sequence number), no retry.
    async fn call_endpoint(
        &self,
        endpoint: &str,
        op: Op,
        deadline: Instant,
    ) -> Result<(ResponseHeader, Outcome), ClientError> {
        let epoch = self.cluster_map().epoch;
        let request = Request {
            id: 0,
            session: self.inner.session,
            seq: 0,
            map_epoch: epoch,
            op,
            first_unacked: 0,
        };
        match self.send(endpoint, request, deadline).await {
            Ok(resp) => resp.outcome.map(|o| (resp.header, o)).map_err(|e| match e {
                ServerError::OutcomeUnknown { .. } => ClientError::Timeout {
                    attempts: 1,
                    last: format!("{endpoint}: {e}"),
                },
                e => ClientError::Server(e),
            }),
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
                cfg.tls.as_ref(),
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

/// What a request's retry loop does after a failed attempt.
enum Next {
    /// Retry at once: the server named a leader the map knows.
    FollowHint,
    /// Fetch a map (of at least this epoch; 0: any), then retry.
    Refresh {
        /// The server's epoch, when it named one.
        want_epoch: u64,
    },
    /// This replica cannot serve the request now: a spread read tries the next replica, anything
    /// else backs off. `lost_conn`: the connection failed (the map may be out of date).
    ReplicaFailed {
        /// The connection to the replica failed.
        lost_conn: bool,
    },
}

/// Why one map request failed.
enum MapFetchError {
    /// Not ready, overloaded, or unreachable: another endpoint or a later pass may answer.
    Retryable(String),
    /// An answer that retrying does not fix.
    Fatal(ClientError),
    /// The caller's deadline passed.
    Deadline,
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
        Outcome::TransferLeader(_) => "TransferLeader",
        Outcome::Backup(_) => "Backup",
        Outcome::Events(_) => "Events",
    };
    ClientError::Protocol(format!("expected a {wanted} result, got {got}"))
}
